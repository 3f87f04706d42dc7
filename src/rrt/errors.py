"""Errors every layer may raise. `UsageError` is bad input from the user (a flag, a file,
a config value): the CLI prints it as one line and exits 2. `NonFiniteError`: a metric
that came out NaN or infinite (exit 1, like any other failure). `Paused` is not a failure: a
long job stopped on purpose with its state saved; the CLI exits 75 (EX_TEMPFAIL)."""
from __future__ import annotations


class UsageError(Exception):
    """Bad input: reported as a one-line message naming the flag, key, file or value."""


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (libraries put tracebacks-worth of text in
    theirs), or its type name when it has none."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


class NonFiniteError(ValueError):
    """A number that came out NaN or infinite where a result must be finite (a perplexity,
    an accuracy, a loss): an error naming it, never a value written as a result."""


class Paused(Exception):
    """A long job stopped early on purpose (a time limit, a signal) with a checkpoint to
    continue from: rerun to go on."""

    exit_code = 75  # EX_TEMPFAIL: "try again later"
