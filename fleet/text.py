"""How an exception is shown in one line (logs, answers, the CLI): its message's first non-blank line."""

from __future__ import annotations

LINE_MAX = 300   # characters of a message shown


def first_line(exc: BaseException) -> str:
    """The first non-blank line of the message (at most ``LINE_MAX`` characters), else the type's name."""
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:LINE_MAX]


def named_line(exc: BaseException) -> str:
    """``first_line`` after the exception type's name: ``TimeoutError: no answer``."""
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0][:LINE_MAX]}" if lines else type(exc).__name__
