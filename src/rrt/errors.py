"""Errors every layer may raise. `UsageError` is bad input from the user (a flag, a file,
a config value): the CLI prints it as one line and exits 2."""
from __future__ import annotations


class UsageError(Exception):
    """Bad input: reported as a one-line message naming the flag, key, file or value."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (libraries put tracebacks-worth of text in
    theirs), or its type name when it has none."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
