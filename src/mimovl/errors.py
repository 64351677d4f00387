"""Mistakes a person makes in a command or a config, reported as one message instead of a traceback.

`UsageError`'s message names the key and the fix; `src/run.py` prints it and exits with status 2.
"""


class UsageError(Exception):
    """A wrong or missing setting: the message says which key and what to do about it."""


def require(ok: bool, key: str, value, rule: str) -> None:
    """Raises `UsageError("key=value: rule")` unless `ok`: a setting checked where it is read."""
    if not ok:
        raise UsageError(f"{key}={value}: {rule}")
