"""Binance's trading statistics, ``GET /futures/data/...``: open interest, long/short ratios, taker volumes, basis.

Binance publishes them per period (5m to 1d) for the last 30 days, from its whole market: one point a
period, ``limit`` 30 by default and at most 500, with ``startTime`` the first ones from it, else the latest
up to ``endTime``, oldest first. Weight 0; a limit of their own, 1,000 requests per 5 minutes per IP
(``fleet/sim/ratelimit.py``). The simulator has one modelled market and its own accounts, so it derives
what its candles hold (the 25 hours ``fleet/sim/history.py`` draws before the start and the live minutes
since; a period older than those has no point) and draws the rest:

- ``openInterestHist``: the open interest ``/fapi/v1/openInterest`` answers (constant here), valued at
  the period's close; ``CMCCirculatingSupply`` a figure drawn per symbol;
- ``takerlongshortRatio``: the period's taker buy and sell volumes (base asset) from its candles;
- ``globalLongShortAccountRatio``, ``topLongShortAccountRatio``, ``topLongShortPositionRatio``: no model of
  the other accounts; the long share drawn per symbol, kind and period from the seed, 0.35 to 0.65 (the
  same seed, the same figures), 4 places as Binance's;
- ``basis`` (by ``pair`` and ``contractType``; a perpetual's only): the period's close against the index
  (``INDEX_RATIO`` below the mid); ``annualizedBasisRate`` empty, as Binance's is for a perpetual.

A point's ``timestamp`` is its period's open; only closed periods have one. The field layouts are those
of Binance's answers (captured from its test server, 2026-10): decimals as strings, the time a number.
"""

from __future__ import annotations

import random
from typing import Any, Callable

from fleet.sim.book import INDEX_RATIO, Book
from fleet.sim.engine import SimApiError
from fleet.sim.errors import int_param, missing
from fleet.sim.streams import kline_next

# The periods Binance's statistics take
PERIODS = ("5m", "15m", "30m", "1h", "2h", "4h", "6h", "12h", "1d")
OPEN_INTEREST = 10_000   # the open interest of every simulated symbol, in its base asset (constant)
RATIOS = ("globalLongShortAccountRatio", "topLongShortAccountRatio", "topLongShortPositionRatio")
LONG_SHARE = (0.35, 0.65)


def _f(value: float, places: int) -> str:
    return f"{value:.{places}f}"


class Statistics:
    """The ``/futures/data`` routes of one engine's books; ``book`` finds one by name (-1121 if none)."""

    def __init__(self, book: Callable[[str | None], Book], seed: int) -> None:
        self.book = book
        self.seed = seed

    def routes(self) -> dict[str, Callable[[Any, dict[str, str], int], Any]]:
        """``path -> handler(account, params, now)`` for the gateway."""
        out: dict[str, Callable[[Any, dict[str, str], int], Any]] = {
            "/futures/data/openInterestHist": self._open_interest,
            "/futures/data/takerlongshortRatio": self._taker_ratio,
            "/futures/data/basis": self._basis,
        }
        for kind in RATIOS:
            out[f"/futures/data/{kind}"] = lambda a, p, n, kind=kind: self._ratio(kind, p, n)
        return out

    def _periods(self, b: Book, params: dict[str, str], now: int) -> list[list[Any]]:
        """The closed periods' aggregated candles the query asks for, oldest first."""
        period = params.get("period")
        if not period:
            raise missing("period")
        if period not in PERIODS:
            raise SimApiError(-1130, "Data sent for parameter 'period' is not valid.")
        limit = int_param(params, "limit", 30)
        if limit is None or not 1 <= limit <= 500:
            raise SimApiError(-1130, "Data sent for parameter 'limit' is not valid.")
        start, end = int_param(params, "startTime"), int_param(params, "endTime")
        if start is not None and end is not None and start > end:
            raise SimApiError(-1023, "Start time is greater than end time.")
        held = b.candles[0][0] if b.candles else b.candle[0] if b.candle is not None else now
        rows = [g for g in b.candle_groups(period, start, end, 10**6)   # whole periods, closed, the candles held
                if g[0] >= held and kline_next(period, g[0]) <= now]
        return rows[:limit] if start is not None else rows[-limit:]

    def _open_interest(self, account: Any, params: dict[str, str], now: int) -> list[dict[str, Any]]:
        b = self.book(params.get("symbol"))
        supply = random.Random(f"{self.seed}:{b.symbol}:supply").uniform(1e7, 1e9)
        return [{"symbol": b.symbol, "sumOpenInterest": _f(OPEN_INTEREST, 8),
                 "sumOpenInterestValue": _f(OPEN_INTEREST * g[4], 8), "CMCCirculatingSupply": _f(round(supply), 8),
                 "timestamp": g[0]} for g in self._periods(b, params, now)]

    def _taker_ratio(self, account: Any, params: dict[str, str], now: int) -> list[dict[str, Any]]:
        b = self.book(params.get("symbol"))
        out = []
        for g in self._periods(b, params, now):
            buy, sell = float(b.qty_str(g[8])), float(b.qty_str(g[5] - g[8]))
            out.append({"buySellRatio": _f(buy / sell if sell else 0.0, 4), "sellVol": _f(sell, 4),
                        "buyVol": _f(buy, 4), "timestamp": g[0]})
        return out

    def _ratio(self, kind: str, params: dict[str, str], now: int) -> list[dict[str, Any]]:
        b = self.book(params.get("symbol"))
        out = []
        for g in self._periods(b, params, now):
            long = round(random.Random(f"{self.seed}:{b.symbol}:{kind}:{g[0]}").uniform(*LONG_SHARE), 4)
            short = round(1.0 - long, 4)
            out.append({"symbol": b.symbol, "longAccount": _f(long, 4), "longShortRatio": _f(long / short, 4),
                        "shortAccount": _f(short, 4), "timestamp": g[0]})
        return out

    def _basis(self, account: Any, params: dict[str, str], now: int) -> list[dict[str, Any]]:
        pair = params.get("pair")
        if not pair:
            raise missing("pair")
        contract = params.get("contractType")
        if not contract:
            raise missing("contractType")
        if contract not in ("PERPETUAL", "CURRENT_QUARTER", "NEXT_QUARTER"):
            raise SimApiError(-1130, "Data sent for parameter 'contractType' is not valid.")
        b = self.book(pair)
        if contract != "PERPETUAL":
            raise SimApiError(-1121, "Invalid symbol.")   # no delivery contract of the pair is listed
        out = []
        for g in self._periods(b, params, now):
            futures = b.price_str(round(g[4] / b.tick_f))
            index = g[4] * INDEX_RATIO
            basis = float(futures) - index
            out.append({"indexPrice": _f(index, 8), "contractType": "PERPETUAL", "basisRate": _f(basis / index, 4),
                        "futuresPrice": futures, "annualizedBasisRate": "", "basis": _f(basis, 8), "pair": b.symbol,
                        "timestamp": g[0]})
        return out
