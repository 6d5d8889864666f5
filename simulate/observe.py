"""What a simulated run watches: the exchange's truth per symbol, sampled on the simulated clock.

:class:`SymbolWatch` takes the engine's fills (exact decimals, the mid at the fill), the account's
order frames (new, amended, cancelled, expired: the quantitative rules) and, every sample, the agent's
own worst-case figures (what ``mm_worst_case_long`` / ``_short`` show) and the exchange's position,
marks and order counters. :meth:`SymbolWatch.result` turns them into the tuning table.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from simulate.result import WORST_CASE_ALERT_SHARE, Samples, SymbolResult

ZERO = Decimal(0)
DAY_MS = 86_400_000
CANCEL_FAST_MS = 5000  # Binance's quantitative rules count cancels within 5 s of placement


class SymbolWatch:
    """One symbol's figures for the run (money in the margin asset, sizes in base units)."""

    def __init__(self, symbol: str, account: str, cap: float, params: dict[str, Any], series_every: int,
                 start_ms: int = 0) -> None:
        self.symbol = symbol
        self.account = account
        self.cap = cap
        self.params = params
        self.series_every = max(1, series_every)
        self.samples = Samples()
        self.spread = ZERO  # each fill's edge against the mid at the fill
        self.fees = ZERO
        self.fills = 0
        self.maker_fills = 0
        self.taker_fees = ZERO
        self.new_orders = 0
        self.amends = 0
        self.cancels = 0
        self.cancels_fast = 0
        self.unfilled = 0  # orders that ended without any fill
        self._born: dict[int, int] = {}  # open order id -> time it was placed
        self._filled: set[int] = set()
        self._n = 0  # 1-s samples taken
        self._above_long = 0
        self._above_short = 0
        self.worst_long_max = 0.0
        self.worst_short_max = 0.0
        self.position_max_abs = 0.0
        self._peak = 0.0
        self.max_drawdown = 0.0
        self.orders_10s_max = 0
        self.orders_1m_max = 0
        self.weight_1m_max = 0
        self._funding_seen_ms = start_ms   # the last settlement counted (the run's start: none yet)
        self.funding_covered_ms = 0        # the funding intervals the run's settlements paid for

    # -- the engine's side --------------------------------------------------------------------------

    def on_fill(self, b: Any, o: Any, qty: int, price: int, maker: bool, commission: Decimal) -> None:
        px = b.tick * price
        q = b.step * qty
        mid = Decimal(repr(b.mid))
        self.spread += ((mid - px) if o.side == "BUY" else (px - mid)) * q
        self.fees += commission
        self.fills += 1
        self._filled.add(o.order_id)
        if maker:
            self.maker_fills += 1
        else:
            self.taker_fees += commission

    def on_order_frame(self, o: dict[str, Any], t: int) -> None:
        """An ORDER_TRADE_UPDATE's order object (``o``) at exchange time ``t``."""
        x = o.get("x")
        oid = o.get("i")
        if x == "NEW":
            self.new_orders += 1
            self._born[oid] = t
        elif x == "AMENDMENT":
            self.amends += 1
        elif x in ("CANCELED", "EXPIRED"):
            born = self._born.pop(oid, None)
            if x == "CANCELED":
                self.cancels += 1
                if born is not None and t - born < CANCEL_FAST_MS:
                    self.cancels_fast += 1
            if oid in self._filled:
                self._filled.discard(oid)
            else:
                self.unfilled += 1
        elif o.get("X") == "FILLED":
            self._born.pop(oid, None)
            self._filled.discard(oid)

    # -- samples --------------------------------------------------------------------------------------

    def sample(self, t_ms: int, agent: Any, engine: Any, order_counts: tuple[int, int], weight: int) -> None:
        """One 1-second look; every ``series_every``-th goes into the series."""
        self._note_funding(engine.books[self.symbol])
        core = agent.core
        if core is None:
            return
        s = core.store
        worst_long = float(s.worst_long)
        worst_short = max(0.0, -float(s.worst_short))
        alert = WORST_CASE_ALERT_SHARE * self.cap
        self._n += 1
        self._above_long += worst_long > alert
        self._above_short += worst_short > alert
        self.worst_long_max = max(self.worst_long_max, worst_long)
        self.worst_short_max = max(self.worst_short_max, worst_short)
        book = engine.books[self.symbol]
        pos = engine.accounts[self.account].position(self.symbol)
        position = float(book.step * pos.amount)
        self.position_max_abs = max(self.position_max_abs, abs(position))
        pnl = self._pnl(book, pos)
        total = float(pnl["total"])
        self._peak = max(self._peak, total)
        drawdown = self._peak - total
        self.max_drawdown = max(self.max_drawdown, drawdown)
        c10, c1m = order_counts
        self.orders_10s_max = max(self.orders_10s_max, c10)
        self.orders_1m_max = max(self.orders_1m_max, c1m)
        self.weight_1m_max = max(self.weight_1m_max, weight)
        if (self._n - 1) % self.series_every:
            return
        bid, ask = _inner_quotes(core)
        self._append(t_ms, book.mid, bid, ask, position, worst_long, worst_short, pnl, drawdown, c10, c1m, weight)

    def _note_funding(self, book: Any) -> None:
        """The settlements since the last look (the exchange's funding history, newest last): the time each
        paid for, from the settlement before it (its interval when the history holds none)."""
        hist = book.funding_history
        i = len(hist)
        while i > 0 and hist[i - 1]["fundingTime"] > self._funding_seen_ms:
            i -= 1
        for k in range(i, len(hist)):
            t = hist[k]["fundingTime"]
            before = hist[k - 1]["fundingTime"] if k > 0 else t - book.funding_interval_ms
            self.funding_covered_ms += t - before
            self._funding_seen_ms = t

    def _append(self, t_ms: int, mid: float, bid: float | None, ask: float | None, position: float,
                worst_long: float, worst_short: float, pnl: dict[str, Decimal], drawdown: float, c10: int,
                c1m: int, weight: int) -> None:
        sm = self.samples
        sm.t_ms.append(t_ms)
        sm.mid.append(mid)
        sm.bid_quote.append(bid)
        sm.ask_quote.append(ask)
        sm.position.append(position)
        sm.worst_long.append(worst_long)
        sm.worst_short.append(worst_short)
        sm.pnl_spread.append(float(pnl["spread"]))
        sm.pnl_inventory.append(float(pnl["inventory"]))
        sm.pnl_funding.append(float(pnl["funding"]))
        sm.pnl_fees.append(float(pnl["fees"]))
        sm.pnl_total.append(float(pnl["total"]))
        sm.drawdown.append(drawdown)
        sm.orders_10s.append(c10)
        sm.orders_1m.append(c1m)
        sm.weight_1m.append(weight)

    def _pnl(self, book: Any, pos: Any) -> dict[str, Decimal]:
        """The split of the exchange's P&L so far: spread + inventory + funding + fees = total (exact)."""
        unrealized = ZERO
        if pos.amount:
            mark = Decimal(repr(book.mark))
            unrealized = (mark - pos.entry) * (book.step * pos.amount)
        trading = pos.realized + unrealized
        fees = pos.commission + pos.clearance   # a liquidation's clearance fee is a fee the position paid
        total = trading + pos.funding - fees
        return {"spread": self.spread, "inventory": trading - self.spread, "funding": pos.funding,
                "fees": -fees, "total": total}

    # -- the table ------------------------------------------------------------------------------------

    def table(self, hours: float, engine: Any, grinds: int) -> dict[str, Any]:
        book = engine.books[self.symbol]
        pos = engine.accounts[self.account].position(self.symbol)
        pnl = self._pnl(book, pos)
        self._note_funding(book)   # (a settlement in the run's last second)
        minutes = max(hours * 60.0, 1e-9)
        n = max(self._n, 1)
        return {
            "hours": hours,
            "worst_long_max": round(self.worst_long_max, 8),
            "worst_short_max": round(self.worst_short_max, 8),
            "worst_long_above_share": self._above_long / n,
            "worst_short_above_share": self._above_short / n,
            "fills": self.fills,
            "maker_fills": self.maker_fills,
            "grinds_per_hour": grinds / max(hours, 1e-9),
            # per day of the funding intervals the run's settlements paid for (not of the run: one settlement
            # in a 4-minute run read as 360 a day); 0 when none fell in the run
            "funding_per_day": (float(pnl["funding"]) * DAY_MS / self.funding_covered_ms
                                if self.funding_covered_ms else 0.0),
            "pnl_spread": float(pnl["spread"]),
            "pnl_inventory": float(pnl["inventory"]),
            "pnl_funding": float(pnl["funding"]),
            "pnl_fees": float(pnl["fees"]),
            "pnl_total": float(pnl["total"]),
            "max_drawdown": self.max_drawdown,
            "orders_per_min": self.new_orders / minutes,
            "amends_per_min": self.amends / minutes,
            "orders_10s_max": self.orders_10s_max,
            "orders_1m_max": self.orders_1m_max,
            "weight_1m_max": self.weight_1m_max,
            "unfilled_ratio": self.unfilled / max(self.new_orders, 1),
            "cancels_within_5s_share": self.cancels_fast / max(self.cancels, 1),
            "position_max_abs": self.position_max_abs,
            "taker_fees": float(self.taker_fees),
        }

    def result(self, hours: float, engine: Any, grinds: int, cost_saved: float) -> SymbolResult:
        from simulate.tuning import advice

        table = self.table(hours, engine, grinds)
        table["grind_cost_saved"] = cost_saved
        return SymbolResult(self.symbol, self.params, self.cap, table, advice(table, self.params, self.cap),
                            self.samples)


def _inner_quotes(core: Any) -> tuple[float | None, float | None]:
    """The best resting buy and sell prices of the agent's own ladder (None: that side rests nothing)."""
    bid = ask = None
    for o in core.store.orders.values():
        ticks = o.price_ticks
        if not ticks or o.order_type != "LIMIT":
            continue
        if o.side == "BUY":
            bid = ticks if bid is None or ticks > bid else bid
        else:
            ask = ticks if ask is None or ticks < ask else ask
    tick = core.store.tick
    return (None if bid is None else bid * tick), (None if ask is None else ask * tick)
