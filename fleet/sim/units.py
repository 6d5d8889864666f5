"""Exact numbers: integer ticks/steps to wire strings and back, and 8-decimal money, without floats.

The hot paths (parsing an order, formatting a frame) avoid ``Decimal`` where plain integers are exact.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

ZERO = Decimal(0)
Q8 = Decimal("0.00000001")


def q8(d: Decimal) -> Decimal:
    return d.quantize(Q8, rounding=ROUND_HALF_UP)


def s8(d: Decimal) -> str:
    return f"{d.quantize(Q8, rounding=ROUND_HALF_UP):f}"


def places(unit: Decimal) -> int:
    return max(0, -unit.normalize().as_tuple().exponent)


def fixed(units: int, places: int) -> str:
    """``units`` x 10^-places as a decimal string, without touching Decimal (hot path)."""
    if places == 0:
        return str(units)
    if units < 0:
        return "-" + fixed(-units, places)
    digits = str(units)
    if len(digits) <= places:
        digits = "0" * (places - len(digits) + 1) + digits
    return digits[:-places] + "." + digits[-places:]


def plain(s: str) -> str:
    """A decimal string without trailing zeros (``"2313.00"`` -> ``"2313"``, ``"0.000"`` -> ``"0"``), as
    Binance writes the numbers of its user-stream order and position frames."""
    if "." not in s:
        return s
    s = s.rstrip("0").rstrip(".")
    return "0" if s in ("", "-0") else s


POW10 = [10 ** i for i in range(19)]


def fast_units(raw: str, places: int) -> int | None:
    """Plain ``123.45`` (ASCII digits, at most ``places`` decimals) as integer units of 10^-places;
    None for anything else, which then takes the careful Decimal path and its precise error codes."""
    ip, dot, fp = raw.partition(".")
    if (dot and not fp) or len(ip) > 20 or len(fp) > 20:   # "1." or over 20 digits: Binance's -1100
        return None
    if fp:
        fp = fp.rstrip("0")
    if len(fp) > places or not ip.isascii() or not ip.isdigit() or (fp and not (fp.isascii() and fp.isdigit())):
        return None
    return int(ip) * POW10[places] + (int(fp) * POW10[places - len(fp)] if fp else 0)


def decimals_in(s: str) -> int:
    if "." not in s:
        return 0
    return len(s.split(".", 1)[1].rstrip("0"))
