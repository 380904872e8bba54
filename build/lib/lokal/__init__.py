"""lokal: fine-tune pretrained models on your own local data.

Importing this package stays cheap (no torch): heavy libraries are imported inside
the functions that need them, so `train.py --help` answers fast.
"""

__version__ = "0.1.0"


class LokalError(Exception):
    """A problem with the user's input: the message says what is wrong and how to fix it."""
