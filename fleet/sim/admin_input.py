"""Reading the /sim admin routes' JSON bodies: each field of the kind and range its route takes.

A bad field is a :class:`ValueError` naming it (the route answers 400 and changes nothing): a field
of the wrong JSON type (``"false"`` for a flag, ``true`` or ``2.9`` for a count, ``5`` for a
symbol), a number that is not finite or out of its range, a field the route does not know (a typo
such as ``symbols`` would otherwise act on every symbol). Every check runs before the route acts.
"""

from __future__ import annotations

import json
import math
from decimal import Decimal, InvalidOperation
from typing import Any

YEAR_MS = 366 * 86_400_000
LATEST_MS = 2**53   # a time in ms beyond any contract's (a perpetual's deliveryDate is 4133404800000, in 2100)
MAX_TEXT = 200   # characters of a name, path or mode


class _Missing:
    pass


REQUIRED: Any = _Missing()


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON: numbers must be finite")


def loads(raw: bytes) -> Any:
    """The body as JSON: NaN and Infinity (which Python's parser takes) refused, nesting too deep for
    the parser a ValueError too."""
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def only(body: dict[str, Any], route: str, *allowed: str) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        expected = ", ".join(allowed) if allowed else "none"
        raise ValueError(f"{route} takes no field {', '.join(map(repr, unknown))} (it takes: {expected})")


def _get(body: dict[str, Any], name: str, default: Any) -> Any:
    if name in body and body[name] is not None:
        return body[name]
    if default is REQUIRED:
        raise ValueError(f"{name} is required")
    return default


def text(body: dict[str, Any], name: str, default: Any = None) -> Any:
    """A name, path or mode: a non-empty string of printable characters (no newline, no escape: it is
    echoed in answers, /sim/state and logs), at most MAX_TEXT of them."""
    value = _get(body, name, default)
    if value is not None and (not isinstance(value, str) or not value or len(value) > MAX_TEXT
                              or not value.isprintable()):
        raise ValueError(f"{name} must be a non-empty string of at most {MAX_TEXT} printable characters")
    return value


def flag(body: dict[str, Any], name: str, default: bool) -> bool:
    value = _get(body, name, default)
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false")
    return value


def integer(body: dict[str, Any], name: str, default: Any, lo: int, hi: int) -> Any:
    value = _get(body, name, default)
    if value is None:
        return None
    if type(value) is not int or not lo <= value <= hi:
        raise ValueError(f"{name} must be a whole number from {lo} to {hi}")
    return value


def number(body: dict[str, Any], name: str, default: Any, lo: float, hi: float) -> Any:
    value = _get(body, name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not lo <= value <= hi:
        raise ValueError(f"{name} must be a finite number from {lo:g} to {hi:g}")
    return float(value)


def decimal(body: dict[str, Any], name: str, default: Any, lo: Decimal, hi: Decimal) -> Any:
    """A decimal sent as a string or a number, within [lo, hi]; returned as its string."""
    value = _get(body, name, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, float)) or isinstance(value, str) and len(value) > 40:
        raise ValueError(f"{name} must be a decimal (a string or a number) from {lo} to {hi}")
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{name} must be a decimal from {lo} to {hi}, got {value!r}") from None
    if not d.is_finite() or not lo <= d <= hi:
        raise ValueError(f"{name} must be a finite decimal from {lo} to {hi}, got {value!r}")
    return str(value)
