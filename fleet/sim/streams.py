"""Market stream names: which ones exist, how they are spelled, and which 2026 path serves them.

Binance split its WebSocket host in 2026 into /public (books) and /market (everything else); the
legacy /ws and /stream paths serve both. Names are case-insensitive on the symbol only.
"""

from __future__ import annotations

PUBLIC = "public"
MARKET = "market"

_DEPTH_SPEEDS = {"": "", "@250ms": "", "@100ms": "@100ms", "@500ms": "@500ms"}


def canonical_stream(name: str, symbols_lower: set[str]) -> tuple[str, str] | None:
    """``(canonical name, category)`` of a market stream, or None if the simulator has no such stream."""
    if name.startswith("!"):
        low = name.lower()
        if low == "!bookticker":
            return "!bookTicker", PUBLIC
        if low == "!markprice@arr":
            return "!markPrice@arr", MARKET
        if low == "!markprice@arr@1s":
            return "!markPrice@arr@1s", MARKET
        return None
    sym, sep, rest = name.partition("@")
    sym = sym.lower()
    if not sep or sym not in symbols_lower:
        return None
    if rest == "bookTicker":
        return f"{sym}@bookTicker", PUBLIC
    if rest in ("markPrice", "markPrice@3s"):
        return f"{sym}@markPrice", MARKET
    if rest == "markPrice@1s":
        return f"{sym}@markPrice@1s", MARKET
    if rest == "aggTrade":
        return f"{sym}@aggTrade", MARKET
    if rest == "depth" or (rest.startswith("depth@") and rest[5:] in _DEPTH_SPEEDS):
        return f"{sym}@depth{_DEPTH_SPEEDS[rest[5:]]}", PUBLIC  # the diff stream
    for levels in ("5", "10", "20"):
        head = "depth" + levels
        if rest.startswith(head):
            speed = rest[len(head):]
            if speed in _DEPTH_SPEEDS:
                return f"{sym}@{head}{_DEPTH_SPEEDS[speed]}", PUBLIC
    return None


def path_allows(path_kind: str, category: str) -> bool:
    """The legacy paths serve every stream; /public only books; /market everything but books."""
    if path_kind == "legacy":
        return True
    return path_kind == category
