"""Errors the simulator answers the way Binance does: a code, Binance's message, an HTTP status."""

from __future__ import annotations

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


def invalid(name: str) -> SimApiError:
    return SimApiError(-1130, f"Data sent for parameter '{name}' is not valid.")


def int_param(params: dict[str, str], name: str, default: int | None = None) -> int | None:
    """An optional integer parameter: plain ASCII digits (optionally signed), else -1130 naming it."""
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    digits = raw[1:] if raw[:1] == "-" else raw
    if not (digits.isascii() and digits.isdigit()):
        raise invalid(name)
    return int(raw)
