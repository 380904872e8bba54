"""The one exception lokal raises for the user's input (no heavy imports: everything uses it)."""


class LokalError(Exception):
    """A problem with the user's input: the message says what is wrong and how to fix it."""
