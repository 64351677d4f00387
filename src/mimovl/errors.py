"""Mistakes a person makes in a command or a config, reported as one message instead of a traceback.

`UsageError`'s message names the key and the fix; `src/run.py` prints it and exits with status 2.
"""


class UsageError(Exception):
    """A wrong or missing setting: the message says which key and what to do about it."""
