"""Market stream names: which ones exist, how they are spelled, and which 2026 path serves them.

Binance split its WebSocket host in 2026 into /public (books, trades) and /market (everything else), user
data on /private. Since 2026-04-23 the unrouted /ws and /stream paths deliver /public streams only: a
/market stream or a user stream there is accepted and never delivered ("This fails silently rather
than erroring", Binance's docs). So here by default (``SimConfig.legacy_paths``, ``public``); ``all``
serves every stream there, as the testnet still does. Names are case-insensitive on the symbol only.

Besides the documented depth speeds (250 ms by default, ``@500ms``, ``@100ms``), ``@0ms`` is served
too: Binance answers it and third-party engines ask for it by default; here it publishes on every
market step. ``<symbol>@kline_<interval>`` pushes the open candle every 250 ms and each candle once
more when it closes (``x: true``); a week's candle opens on Monday, a month's on its first day (UTC),
each built from the 1500 one-minute candles kept (25 hours); ``3d`` candles open at multiples of three
days since the epoch (an assumption: no statement of where Binance starts its three days was found).
``<pair>_perpetual@continuousKline_<interval>`` pushes the same candles as ``continuous_kline`` events
(named by pair and contract type). ``<symbol>@ticker`` and ``@miniTicker`` push the rolling 24 h
statistics every 2 s (those of REST ``/ticker/24hr``); ``!ticker@arr`` and ``!miniTicker@arr`` every
second, holding the symbols that traded since the last push (Binance: "only tickers that have changed
will be present in the array"), and nothing when none did. ``!bookTicker`` pushes each symbol's touch
every 5 s if it moved (``<symbol>@bookTicker`` at each change). ``<symbol>@forceOrder`` and
``!forceOrder@arr`` push a symbol's latest liquidation order of the simulated accounts, at most one a
second (fleet/sim/liquidation.py);
the synthetic market's own takers are never liquidated. ``!contractInfo`` pushes a symbol's contract
changes: a delisting announced, its settlement's SETTLING and CLOSE (fleet/sim/delisting.py). Served
and silent: ``!assetIndex@arr``, ``<assetSymbol>@assetIndex``, ``<symbol>@compositeIndex``,
``<symbol>@rpiDepth@500ms`` and ``tradingSession`` (Binance's SDK subscribes to them): accepted, listed,
and silent.
``<symbol>@trade`` is a /public stream (Binance lists it there, and its unrouted paths deliver it): one
frame per trade, the trade id that of the aggregate trade (each price a taker meets is one trade here).

The diff depth stream (``<symbol>@depth[@speed]``) keeps a client's whole book exact: each event
gives the top 50 levels a side at their absolute sizes, a "0" for every level gone from them or beyond
the touch since the last event, or since a REST depth snapshot showed it, and for every price the touch
swept when it jumped past the last event's 50 levels; and, deeper than those 50, every level whose size
changed since an event or the snapshot said it: a level the touch moved away from (a synthetic
level's size grows with its distance from the touch up to 40 ticks and is its price's own beyond:
fleet/sim/book.py DEEP_FROM), a level takers ate or that refills, and every price where an order of
ours was placed, amended, filled or cancelled, however deep; and the levels new to a client: those
between the deepest kept and the last event's touch when the touch moved further than 50 levels, and
those still within 40 ticks of the synthetic touch when our orders inside the spread fill the top 50.
A deep level once said is zeroed when the touch sweeps past it. So a book built the documented way (a snapshot of
up to 1000 levels, then the events chained by ``pu``) never crosses and equals the exchange's at every
level it holds. A stream's first event follows the book as it was when it was watched.

A number after ``/ws/``, ``/public/ws/`` or ``/market/ws/`` (ccxt puts its connection number there; a
listen key is never one) opens an empty connection for SUBSCRIBE to fill.

A well-formed stream of a symbol the exchange does not list is accepted and stays silent, as Binance
does (no error, no data); only a name no symbol could carry is refused (``unlisted_stream``).
"""

from __future__ import annotations

from datetime import datetime, timezone

PUBLIC = "public"
MARKET = "market"

_DEPTH_SPEEDS = {"": "", "@250ms": "", "@100ms": "@100ms", "@500ms": "@500ms", "@0ms": "@0ms"}
DEPTH_EVERY_MS = {"@0ms": 0, "@100ms": 100, "": 250, "@500ms": 500}   # canonical suffix -> cadence (0: every step)
KLINE_MINUTES = {"1m": 1, "3m": 3, "5m": 5, "15m": 15, "30m": 30, "1h": 60, "2h": 120, "4h": 240,
                 "6h": 360, "8h": 480, "12h": 720, "1d": 1440, "3d": 4320, "1w": 10080,
                 "1M": 43200}   # 1M: calendar months
_MONDAY_MS = 4 * 86_400_000   # weekly candles open on Monday 00:00 UTC; 1970-01-05 was the first Monday
KLINE_EVERY_MS = 250   # a kline stream's cadence
TICKER_EVERY_MS = 2000   # <symbol>@ticker and @miniTicker: "Update Speed: 2000ms" (USD-M docs)
ALL_TICKERS_EVERY_MS = 1000   # !ticker@arr and !miniTicker@arr: "Update Speed: 1000ms" (USD-M docs)
# !bookTicker: each symbol's touch if it moved, every 5 s ("Update Speed: 5s"; real time until 2023-12-12;
# <symbol>@bookTicker stays real time)
ALL_BOOK_TICKERS_EVERY_MS = 5000
# <symbol>@forceOrder and !forceOrder@arr: "only the latest one liquidation order within 1000ms will be
# pushed as the snapshot" for each symbol
FORCE_ORDER_EVERY_MS = 1000
# Served and silent: nothing in the simulated market changes an asset index, a composite index or a
# trading session, and no order is RPI (!contractInfo is served here too: fleet/sim/delisting.py).
_SILENT_ALL = {"!contractinfo": "!contractInfo", "!assetindex@arr": "!assetIndex@arr"}


def kline_open(interval: str, t: int) -> int:
    """The open time (ms) of the ``interval`` candle holding ``t``: a multiple of its length since the
    epoch, a week from Monday, a month from its first day (UTC)."""
    if interval == "1M":
        d = datetime.fromtimestamp(t / 1000, timezone.utc)
        return int(datetime(d.year, d.month, 1, tzinfo=timezone.utc).timestamp()) * 1000
    span = KLINE_MINUTES[interval] * 60_000
    return t - (t - _MONDAY_MS) % span if interval == "1w" else t - t % span


def kline_next(interval: str, open_ms: int) -> int:
    """The open time of the candle after the one opening at ``open_ms``."""
    if interval == "1M":
        d = datetime.fromtimestamp(open_ms / 1000, timezone.utc)
        year, month = (d.year + 1, 1) if d.month == 12 else (d.year, d.month + 1)
        return int(datetime(year, month, 1, tzinfo=timezone.utc).timestamp()) * 1000
    return open_ms + KLINE_MINUTES[interval] * 60_000


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
        if low == "!forceorder@arr":
            return "!forceOrder@arr", MARKET
        if low in _SILENT_ALL:
            return _SILENT_ALL[low], MARKET
        if low == "!ticker@arr":
            return "!ticker@arr", MARKET
        if low == "!miniticker@arr":
            return "!miniTicker@arr", MARKET
        return None
    if name == "tradingSession":
        return name, MARKET
    sym, sep, rest = name.partition("@")
    sym = sym.lower()
    if sep and sym.endswith("_perpetual") and sym[:-10] in symbols_lower and rest.startswith("continuousKline_") \
            and rest[16:] in KLINE_MINUTES:
        return f"{sym}@{rest}", MARKET
    if not sep or sym not in symbols_lower:
        return None
    if rest in ("compositeIndex", "assetIndex", "rpiDepth@500ms"):
        return f"{sym}@{rest}", PUBLIC if rest == "rpiDepth@500ms" else MARKET
    if rest in ("bookTicker", "trade"):
        return f"{sym}@{rest}", PUBLIC
    if rest in ("markPrice", "markPrice@3s"):
        return f"{sym}@markPrice", MARKET
    if rest == "markPrice@1s":
        return f"{sym}@markPrice@1s", MARKET
    if rest == "aggTrade":
        return f"{sym}@aggTrade", MARKET
    if rest in ("forceOrder", "ticker", "miniTicker"):
        return f"{sym}@{rest}", MARKET
    if rest.startswith("kline_") and rest[6:] in KLINE_MINUTES:
        return f"{sym}@{rest}", MARKET
    if rest == "depth" or (rest.startswith("depth@") and rest[5:] in _DEPTH_SPEEDS):
        return f"{sym}@depth{_DEPTH_SPEEDS[rest[5:]]}", PUBLIC  # the diff stream
    for levels in ("5", "10", "20"):
        head = "depth" + levels
        if rest.startswith(head):
            speed = rest[len(head):]
            if speed in _DEPTH_SPEEDS:
                return f"{sym}@{head}{_DEPTH_SPEEDS[speed]}", PUBLIC
    return None


def unlisted_stream(name: str) -> tuple[str, str] | None:
    """``(canonical name, category)`` of a well-formed stream whatever its symbol, or None for a name no
    symbol could carry (an unknown stream type, interval or speed)."""
    sym = name.partition("@")[0].lower()
    if not (sym.isascii() and sym.replace("_", "").isalnum()):
        return None
    return canonical_stream(name, {sym, sym.removesuffix("_perpetual")})


def path_allows(path_kind: str, category: str) -> bool:
    """The unrouted paths take every stream (a /market one stays silent there unless ``legacy_paths``
    is ``all``); /public only books; /market everything but books."""
    if path_kind == "legacy":
        return True
    return path_kind == category
