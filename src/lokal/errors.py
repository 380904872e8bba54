"""The one exception lokal raises for the user's input (no heavy imports: everything uses it)."""


class LokalError(Exception):
    """A problem with the user's input: the message says what is wrong and how to fix it."""


def find_lokal_error(err: BaseException | None) -> LokalError | None:
    """The LokalError behind `err`, if any: Hydra's instantiate wraps errors raised in constructors."""
    seen = set()
    while err is not None and not isinstance(err, LokalError) and id(err) not in seen:
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return err
