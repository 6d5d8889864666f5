"""Errors the simulator answers the way Binance does: a code, Binance's message, an HTTP status."""

from __future__ import annotations

import re
from typing import Any


class SimApiError(Exception):
    """An error the simulator answers the way Binance would: code, message, HTTP status."""

    def __init__(self, code: int, msg: str, http_status: int = 400) -> None:
        super().__init__(f"[{code}] {msg}")
        self.code = code
        self.msg = msg
        self.http_status = http_status

    def body(self) -> dict[str, Any]:
        return {"code": self.code, "msg": self.msg}


def missing(name: str) -> SimApiError:
    return SimApiError(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")


NUMBER_RANGE = r"^([0-9]{1,20})(\.[0-9]{1,20})?$"   # what Binance's -1100 names as a price's or quantity's legal range
_NUMBER = re.compile(NUMBER_RANGE)


def check_number(raw: str, name: str) -> None:
    """A price or quantity as Binance takes it (plain digits, an optional fraction): ``1e-05``, ``.01``,
    ``+1`` or a padded ``1 `` (a trailing newline too) is -1100 there, as a client formatting floats finds out."""
    if not _NUMBER.fullmatch(raw):
        raise SimApiError(-1100, f"Illegal characters found in parameter '{name}'; legal range is '{NUMBER_RANGE}'.")


def invalid(name: str) -> SimApiError:
    return SimApiError(-1130, f"Data sent for parameter '{name}' is not valid.")


def parse_long(raw: str) -> int:
    """An integer as Binance reads a LONG: at most 20 plain ASCII digits, optionally signed with ``-``;
    ValueError for anything else (Python's ``int`` also takes ``+1``, `` 1``, ``1\\n``, ``1_000`` and
    other scripts' digits, which Binance refuses)."""
    digits = raw[1:] if raw[:1] == "-" else raw
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 20:   # Binance's LONG: ^[0-9]{1,20}$
        raise ValueError(f"not an integer: {raw!r}")
    return int(raw)


def int_param(params: dict[str, str], name: str, default: int | None = None) -> int | None:
    """An optional integer parameter: at most 20 plain ASCII digits (optionally signed), else -1130 naming it."""
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return parse_long(raw)
    except ValueError:
        raise invalid(name) from None


WEEK_MS = 7 * 86_400_000


def within_a_week(start: int | None, end: int | None) -> None:
    """allOrders, userTrades and allAlgoOrders take a startTime-endTime window of 7 days at most."""
    if start is not None and end is not None and end - start > WEEK_MS:
        raise SimApiError(-1127, "More than 168 hours between startTime and endTime.")


def week_window(start: int | None, end: int | None, now: int) -> tuple[int, int]:
    """The window such a history answers: the 7 days before now when neither end is sent ("the last 7
    days' data"), the 7 days after a startTime sent alone (live: a startTime a month back answers
    nothing), the 7 days before an endTime sent alone; -1127 when both span more."""
    within_a_week(start, end)
    end = end if end is not None else (start + WEEK_MS if start is not None else now)
    return (start if start is not None else end - WEEK_MS), end
