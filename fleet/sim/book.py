"""One symbol's book: the market model's mid, the synthetic levels around it, and the resting orders.

Synthetic sizes are a deterministic function of the distance from the touch (minus what takers ate
recently), so the book needs no per-level state to move with the mid.
"""

from __future__ import annotations

import math
from collections import deque
from decimal import Decimal
from typing import Any

from fleet.sim.brackets import Brackets
from fleet.sim.config import DEFAULT_FUNDING_CAP, SymbolSpec
from fleet.sim.market import MarketModel
from fleet.sim.orders import Order
from fleet.sim.streams import kline_next, kline_open
from fleet.sim.units import places, fixed, s8

PERPETUAL_DELIVERY_MS = 4133404800000   # a perpetual's deliveryDate while no settlement is planned

# The simulated index price sits this far below the mark (the mark is the mid): one constant basis,
# so the premium index is 1 / INDEX_RATIO - 1 (0.00005) at every moment.
INDEX_RATIO = 0.99995
PRICE_KLINE_KINDS = ("mark", "index", "premium")

NO_ASK = 1 << 62  # "no resting ask" sentinel
PROFILE_LEVELS = 64  # levels from the touch whose base size is precomputed
# A synthetic level's size grows with its distance from the touch up to this many ticks, and is its price's
# own from there (noise by price on one base): the book behind the touch does not change as the touch
# moves, as a real book's deep levels do not, so the diff depth stream says few levels deeper than its
# top 50 (engine.py DIFF_LEVELS, more than this) to keep a client's whole book exact (fleet/sim/streams.py)
DEEP_FROM = 40
# Trades a symbol keeps for trades, historicalTrades and aggTrades (Binance keeps them all): about 40
# minutes of the regime model's tape, so a client's backfill after a reconnect finds its gap; 2-3 MB a symbol
RECENT_TRADES_KEPT = 10_000
# Prices a depth read looks past 4 a level for its levels: a taker's sweep leaves a band of eaten levels
# (a read of 50 that met our bid above a band of 200 found 1 level, and the diff stream lost the rest)
SCAN_BEYOND = 1_000
# Closed orders the query routes find (order, allOrders): Binance lists one for 90 days, one cancelled or
# expired without a fill for 3; a book keeps the newest of each kind (about 0.5 kB an order), so an order
# with a fill is still found after a day of quoting (one bound on both kinds together dropped it within an
# hour of an agent's cancels at 5 orders a second)
CLOSED_UNFILLED_KEPT = 20_000
CLOSED_FILLED_KEPT = 50_000
DAY_MS = 86_400_000
LISTED_MS = 90 * DAY_MS
UNFILLED_LISTED_MS = 3 * DAY_MS


def still_listed(o: Order, now_ms: int) -> bool:
    """Whether the query routes still find the closed order ``o`` at ``now_ms``: not one created more than
    90 days ago, nor one cancelled or expired without a fill created more than 3 days ago."""
    age = now_ms - o.time
    return age <= LISTED_MS and (o.filled > 0 or age <= UNFILLED_LISTED_MS)



def _merge_candle(g: list[Any], c: list[Any]) -> None:
    """Fold the later 1-minute candle ``c`` into the aggregated candle ``g`` (same layout)."""
    g[2] = max(g[2], c[2])
    g[3] = min(g[3], c[3])
    g[4] = c[4]
    for i in range(5, 10):
        g[i] += c[i]
    if g[10] < 0:
        g[10] = c[10]
    if c[11] >= 0:
        g[11] = c[11]

class DiffState:
    """What a diff depth stream's clients may hold: its last event's update id and levels, the levels a
    snapshot showed since (with their sizes), the prices of ours that changed since (any depth), and the
    lowest bid and highest ask it or a snapshot ever showed."""

    __slots__ = ("u", "bids", "asks", "shown_b", "shown_a", "dirty_b", "dirty_a", "deep_b", "deep_a", "low_bid",
                 "high_ask")

    def __init__(self, u: int, bids: list[tuple[int, int]], asks: list[tuple[int, int]]) -> None:
        self.u = u
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}
        self.shown_b: dict[int, int] = {}
        self.shown_a: dict[int, int] = {}
        self.dirty_b: set[int] = set()
        self.dirty_a: set[int] = set()
        self.deep_b: dict[int, int] = {}   # the levels deeper than the top 50 the last event said
        self.deep_a: dict[int, int] = {}
        self.low_bid: int | None = None
        self.high_ask: int | None = None
        self.advance(u, dict(bids), dict(asks), bids, asks)

    def advance(self, u: int, bids: dict[int, int], asks: dict[int, int], bid_levels: list[tuple[int, int]],
                ask_levels: list[tuple[int, int]]) -> None:
        """An event sent (or the stream's start): these are its levels now (as dicts, and in order)."""
        self.u, self.bids, self.asks = u, bids, asks
        self.shown_b, self.shown_a = {}, {}
        self.dirty_b, self.dirty_a = set(), set()
        self._reach(bid_levels, ask_levels)

    def show(self, bids: list[tuple[int, int]], asks: list[tuple[int, int]]) -> None:
        """A snapshot showed these levels."""
        self.shown_b.update(bids)
        self.shown_a.update(asks)
        self._reach(bids, asks)

    def told_deeper(self, bids: list[tuple[int, int]], asks: list[tuple[int, int]]) -> None:
        """Levels the event just sent said deeper than its top 50 (in no order): a client holds them now."""
        self.deep_b, self.deep_a = dict(bids), dict(asks)
        self._reach([(min(p for p, _ in bids), 0)] if bids else [], [(max(p for p, _ in asks), 0)] if asks else [])

    def _reach(self, bids: list[tuple[int, int]], asks: list[tuple[int, int]]) -> None:
        if bids:
            low = bids[-1][0]
            self.low_bid = low if self.low_bid is None else min(self.low_bid, low)
        if asks:
            high = asks[-1][0]
            self.high_ask = high if self.high_ask is None else max(self.high_ask, high)


class Book:
    """One symbol: its market model, synthetic book around the mid, and the resting orders."""

    def __init__(self, spec: SymbolSpec, model: MarketModel, salt: int, base_order_id: int) -> None:
        self.spec = spec
        self.symbol = spec.symbol
        self.brackets = Brackets(spec.bracket_rows())
        self.lower = spec.symbol.lower()
        self.model = model
        self.tick = Decimal(spec.tick_size)
        self.step = Decimal(spec.step_size)
        self.tick_f = float(self.tick)
        self.step_f = float(self.step)
        self.price_places = places(self.tick)
        self.qty_places = places(self.step)
        self.price_mult = int(self.tick * (10 ** self.price_places))
        # the tick the exchange lists and takes orders on, in ticks of the spec's (``/sim/filters``: the
        # exchange coarsened it; the book and the resting orders stay on the spec's finer grid)
        self.tick_multiple = 1
        self.qty_mult = int(self.step * (10 ** self.qty_places))
        self.notional_unit = self.tick * self.step
        self.notional_mult = self.price_mult * self.qty_mult
        self.half_unit_f = float(self.notional_unit) / 2
        self.notional_places = self.price_places + self.qty_places
        self.price_precision = spec.price_precision if spec.price_precision is not None else self.price_places
        self.qty_precision = spec.quantity_precision if spec.quantity_precision is not None else self.qty_places
        # PRICE_FILTER's range, also in units of 10^-price_places (int() floors) for prices parsed without Decimal
        self.min_price_ticks = int(Decimal(spec.min_price) / self.tick) if spec.min_price else 1
        self.min_price, self.max_price = self.tick * self.min_price_ticks, Decimal(spec.max_price)
        self.min_price_units = self.min_price_ticks * self.price_mult
        self.max_price_units = int(self.max_price * 10 ** self.price_places)
        self.mult_up = Decimal(spec.multiplier_up)
        self.mult_down = Decimal(spec.multiplier_down)
        self.mult_up_f = float(self.mult_up)
        self.mult_down_f = float(self.mult_down)
        # MARKET_LOT_SIZE: its step in LOT steps (1 = the same grid); its limits (set_filters) in LOT steps
        self.market_step = Decimal(spec.market_step_size) if spec.market_step_size else self.step
        self.market_step_mult = int(self.market_step / self.step)
        self.set_filters(Decimal(spec.min_qty) if spec.min_qty else self.step, Decimal(spec.max_qty),
                         Decimal(spec.min_notional), Decimal(spec.market_max_qty))
        price = spec.start_price
        self.level_steps = max(1, int((spec.level_qty or 20000.0 / price) / self.step_f))
        self.taker_mean_steps = max(1.0, (spec.taker_mean_qty or 5000.0 / price) / self.step_f)
        self.base_profile = [self.level_steps * (1.0 + 0.15 * min(d, DEEP_FROM)) for d in range(PROFILE_LEVELS)]
        self.deep_base = self.level_steps * (1.0 + 0.15 * DEEP_FROM)   # a level's base from DEEP_FROM on
        self.salt = salt
        self.inv_tick = 1.0 / self.tick_f
        self.spread_ticks = spec.spread_ticks
        self.half_spread = spec.spread_ticks / 2.0
        self.bids: dict[int, list[Order]] = {}
        self.asks: dict[int, list[Order]] = {}
        self.our_bid = 0  # best resting bid of any account (0: none)
        self.our_ask = NO_ASK  # best resting ask of any account
        self.consumed_bid: dict[int, int] = {}
        self.consumed_ask: dict[int, int] = {}
        self.mid = model.mid
        self.bid_top = 0
        self.ask_top = 0
        self.set_tops()
        self.mark = self.mid
        self._mark_dec: Decimal | None = None
        self.next_order_id = base_order_id
        self.update_id = 1_000_000
        self.agg_id = 1
        cap = Decimal(spec.funding_rate_cap or DEFAULT_FUNDING_CAP)
        self.rate_cap = float(cap)   # the rate's bound, both ways
        self.funding_rate = max(-cap, min(cap, Decimal(spec.funding_rate)))
        self.base_rate = self.funding_rate
        self.rate_pinned = False
        # the funding schedule, set by the engine: the spec's interval, else the simulator's; the next settlement
        self.funding_interval_ms = 0
        self.next_funding_ms = 0
        self.funding_info_ms = 0   # when the interval or the cap was last set (fundingInfo's updateTime)
        # listed by fundingInfo: an interval or a cap of its own (the spec's, or an interval changed since)
        self.funding_listed = spec.funding_interval_hours is not None or spec.funding_rate_cap is not None
        self.frozen = False  # market stopped and silent
        self.status = "TRADING"   # exchangeInfo's; SETTLING, then CLOSE, once delisted (fleet/sim/delisting.py)
        self.delivery_ms = PERPETUAL_DELIVERY_MS   # deliveryDate: the settlement time once a delisting is announced
        self.price_held = False  # mid held still, market alive
        self.last_bt: tuple[int, int, int, int] | None = None
        self.all_bt_sent: tuple[int, int, int, int] | None = None   # the touch !bookTicker last pushed
        self.all_bt_due = 0   # when !bookTicker pushes it next (every 5 s)
        self.force_held: tuple[Any, ...] | None = None   # the latest liquidation order not pushed yet
        self.force_due = 0   # when its forceOrder streams may push the next (one a second)
        self.want_bt = False
        self.poisson_rate = -1.0
        self.poisson_p0 = 1.0
        self.want_agg = False
        self.want_trade = False
        self.depth_streams: list[tuple[str, int, int]] = []
        self.diff_streams: list[tuple[str, int]] = []
        self.diff_state: dict[str, DiffState] = {}   # diff depth stream -> what its clients may hold
        self.funding_history: list[dict[str, Any]] = []
        self.closed: dict[int, Order] = {}   # closed orders by id (keep_closed): the newest of each kind
        self.closed_by_cid: dict[tuple[str, str], Order] = {}   # (account, client id): the newest closed
        self._kept_filled: deque[int] = deque()
        self._kept_unfilled: deque[int] = deque()
        # (id, price, qty, time, buyer maker): the tape the trade-history routes read (fleet/sim/rest.py)
        self.recent_trades: deque[tuple[int, int, int, int, bool]] = deque(maxlen=RECENT_TRADES_KEPT)
        # 1-minute candles of the mid: [open_time, o, h, l, c, volume, quote units, trades, taker buy
        # volume, taker buy quote units, first and last aggregate trade id (-1: none)]; volumes in steps,
        # quote in price ticks x steps
        self.candles: deque[list[Any]] = deque(maxlen=1500)
        self.candle: list[Any] | None = None
        self.last_price = self.mid
        self.volume_steps = 0

    def keep_closed(self, o: Order) -> None:
        """``o`` closed: the query routes find it, until newer closed orders of its kind (with or without a
        fill) push it out."""
        self.closed[o.order_id] = o
        self.closed_by_cid[(o.account, o.client_id)] = o
        kept, bound = ((self._kept_filled, CLOSED_FILLED_KEPT) if o.filled
                       else (self._kept_unfilled, CLOSED_UNFILLED_KEPT))
        kept.append(o.order_id)
        if len(kept) > bound:
            gone = self.closed.pop(kept.popleft(), None)
            if gone is not None and self.closed_by_cid.get(key := (gone.account, gone.client_id)) is gone:
                del self.closed_by_cid[key]

    def note_ours(self, o: Order) -> None:
        """Our order changed the size at its price: every diff stream's next event says that level,
        however deep (its clients may hold it from a snapshot)."""
        self.note_price(o.sign > 0, o.price)

    def note_price(self, bid: bool, price: int) -> None:
        """The size at ``price`` changed: every diff stream's next event says that level, however deep."""
        for d in self.diff_state.values():
            (d.dirty_b if bid else d.dirty_a).add(price)

    def note_refill(self) -> None:
        """The levels takers ate refill: every diff stream's next event says them, however deep."""
        for d in self.diff_state.values():
            d.dirty_b.update(self.consumed_bid)
            d.dirty_a.update(self.consumed_ask)

    # -- synthetic book -------------------------------------------------------------------------

    def set_tops(self) -> None:
        self.bid_top = math.floor(self.mid * self.inv_tick - self.half_spread + 1e-9)
        self.ask_top = self.bid_top + self.spread_ticks

    def _profile(self, dist: int, price: int) -> int:
        noise = 0.5 + ((price * 2654435761 + self.salt) & 1023) / 1024.0
        return max(1, int(self.level_steps * (1.0 + 0.15 * min(dist, DEEP_FROM)) * noise))

    def synth_bid(self, price: int) -> int:
        # _profile inlined (with the precomputed base sizes): this runs for every level a taker walks
        dist = self.bid_top - price
        if dist < 0:
            return 0
        base = self.base_profile
        q = int((base[dist] if dist < PROFILE_LEVELS else self.deep_base)
                * (0.5 + ((price * 2654435761 + self.salt) & 1023) / 1024.0))
        if q < 1:
            q = 1
        consumed = self.consumed_bid
        if consumed:
            q -= consumed.get(price, 0)
            if q < 0:
                return 0
        return q

    def synth_ask(self, price: int) -> int:
        dist = price - self.ask_top
        if dist < 0:
            return 0
        base = self.base_profile
        q = int((base[dist] if dist < PROFILE_LEVELS else self.deep_base)
                * (0.5 + ((price * 2654435761 + self.salt) & 1023) / 1024.0))
        if q < 1:
            q = 1
        consumed = self.consumed_ask
        if consumed:
            q -= consumed.get(price, 0)
            if q < 0:
                return 0
        return q

    def roll_candle(self, t: int) -> None:
        """Close the current 1-minute candle and open the one holding ``t``."""
        if self.candle is not None:
            self.candles.append(self.candle)
        m = self.mid
        self.candle = [t - t % 60_000, m, m, m, m, 0, 0, 0, 0, 0, -1, -1]

    def candle_groups(self, interval: str, start: int | None, end: int | None, limit: int) -> list[list[Any]]:
        """Candles of ``interval`` aggregated from the 1-minute ones (same layout), oldest first."""
        src = list(self.candles) + ([self.candle] if self.candle is not None else [])
        groups: dict[int, list[Any]] = {}
        for c in src:
            key = kline_open(interval, c[0])
            if (start is not None and key < start) or (end is not None and key > end):
                continue
            g = groups.get(key)
            if g is None:
                groups[key] = [key, *c[1:]]
            else:
                _merge_candle(g, c)
        rows = [g for _, g in sorted(groups.items())]
        return rows[:limit] if start is not None else rows[-limit:]

    def candle_group(self, start: int, end: int) -> list[Any] | None:
        """The candle of the 1-minute ones opening in [``start``, ``end``), as :meth:`candle_groups` builds
        it, or None when none does. Walks back from the newest: it costs the candle's minutes, not the
        history's (a kline stream asks four times a second)."""
        parts = [self.candle] if self.candle is not None and start <= self.candle[0] < end else []
        for c in reversed(self.candles):
            if c[0] < start:
                break
            if c[0] < end:
                parts.append(c)
        if not parts:
            return None
        parts.reverse()
        g = [start, *parts[0][1:]]
        for c in parts[1:]:
            _merge_candle(g, c)
        return g

    def kline_row(self, g: list[Any], interval: str) -> list[Any]:
        """One aggregated candle as Binance's kline array (12 elements); its prices, those of the mid,
        rounded to the tick as a trade's are."""
        unit, tick, px = self.notional_unit, self.tick_f, self.price_str
        return [g[0], px(round(g[1] / tick)), px(round(g[2] / tick)), px(round(g[3] / tick)), px(round(g[4] / tick)),
                self.qty_str(g[5]),
                kline_next(interval, g[0]) - 1, f"{unit * g[6]:f}", g[7], self.qty_str(g[8]), f"{unit * g[9]:f}", "0"]

    def klines(self, interval: str, start: int | None, end: int | None, limit: int) -> list[list[Any]]:
        """Candles of ``interval`` (aggregated from 1-minute ones), Binance's kline arrays."""
        return [self.kline_row(g, interval) for g in self.candle_groups(interval, start, end, limit)]

    def price_klines(self, kind: str, interval: str, start: int | None, end: int | None,
                     limit: int) -> list[list[Any]]:
        """``/markPriceKlines``, ``/indexPriceKlines`` or ``/premiumIndexKlines`` (``kind``): the mark's
        candles (the mark is the mid), the index's (``INDEX_RATIO`` below it) or the premium index's
        (constant here), as Binance's 12-element arrays: no volume, the seconds of the candle in place
        of a count, the "ignore" fields "0"."""
        if kind not in PRICE_KLINE_KINDS:
            raise ValueError(f"price kline kind must be one of {PRICE_KLINE_KINDS}, not {kind!r}")
        premium = f"{1.0 / INDEX_RATIO - 1.0:.8f}"
        ratio = INDEX_RATIO if kind == "index" else 1.0
        rows = []
        for g in self.candle_groups(interval, start, end, limit):
            close = kline_next(interval, g[0])
            o, h, lo, c = (premium,) * 4 if kind == "premium" else (f"{v * ratio:.8f}" for v in g[1:5])
            rows.append([g[0], o, h, lo, c, "0", close - 1, "0", (close - g[0]) // 1000, "0", "0", "0"])
        return rows

    def synth_best_bid(self) -> int:
        """Highest synthetic bid with size left (takers may have eaten the top levels)."""
        p = self.bid_top
        if p in self.consumed_bid:
            floor = p - 100000
            while p > floor and p > 0 and self.synth_bid(p) == 0:
                p -= 1
        return p

    def synth_best_ask(self) -> int:
        p = self.ask_top
        if p in self.consumed_ask:
            ceil = p + 100000
            while p < ceil and self.synth_ask(p) == 0:
                p += 1
        return p

    def best_bid(self) -> int:
        s = self.synth_best_bid()
        b = self.our_bid
        return b if b > s else s

    def best_ask(self) -> int:
        s = self.synth_best_ask()
        a = self.our_ask
        return a if a < s else s

    def level_qty(self, side_buy: bool, price: int) -> int:
        if side_buy:
            q = self.synth_bid(price)
            for o in self.bids.get(price, ()):
                q += o.orig - o.filled
        else:
            q = self.synth_ask(price)
            for o in self.asks.get(price, ()):
                q += o.orig - o.filled
        return q

    def depth(self, levels: int) -> tuple[list[list[str]], list[list[str]]]:
        bids: list[list[str]] = []
        asks: list[list[str]] = []
        p = self.best_bid()
        floor = p - levels * 4 - SCAN_BEYOND
        while len(bids) < levels and p > floor and p > 0:
            q = self.level_qty(True, p)
            if q > 0:
                bids.append([self.price_str(p), self.qty_str(q)])
            p -= 1
        p = self.best_ask()
        ceil = p + levels * 4 + SCAN_BEYOND
        while len(asks) < levels and p < ceil:
            q = self.level_qty(False, p)
            if q > 0:
                asks.append([self.price_str(p), self.qty_str(q)])
            p += 1
        return bids, asks

    def nth_price(self, buy: bool, n: int) -> int | None:
        """The price of the ``n``-th best level of the bids (``buy``) or the asks (the deepest there is
        if fewer), None for an empty side."""
        levels = self._side_levels(n, buy)
        return levels[-1][0] if levels else None

    def depth_levels(self, levels: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """The top ``levels`` of each side as (price ticks, size steps), for lazy rendering."""
        return self._side_levels(levels, True), self._side_levels(levels, False)

    def _side_levels(self, levels: int, buy: bool) -> list[tuple[int, int]]:
        side: list[tuple[int, int]] = []
        if buy:
            p, step, top, ours, consumed = self.best_bid(), -1, self.bid_top, self.bids, self.consumed_bid
        else:
            p, step, top, ours, consumed = self.best_ask(), 1, self.ask_top, self.asks, self.consumed_ask
        base, salt = self.base_profile, self.salt
        n_base = len(base)
        append = side.append
        for _ in range(levels * 4 + SCAN_BEYOND):
            if p <= 0:   # (no price below the lowest tick)
                break
            dist = (p - top) * step
            if dist >= 0:
                q = int((base[dist] if dist < n_base else self.deep_base)
                        * (0.5 + ((p * 2654435761 + salt) & 1023) / 1024.0))
                if q < 1:
                    q = 1
                if consumed:
                    q -= consumed.get(p, 0)
                    if q < 0:
                        q = 0
            else:
                q = 0
            if ours and p in ours:
                for o in ours[p]:
                    q += o.orig - o.filled
            if q > 0:
                append((p, q))
                if len(side) == levels:
                    break
            p += step
        return side

    def mark_dec(self) -> Decimal:
        if self._mark_dec is None:
            self._mark_dec = Decimal(f"{self.mark:.8f}")
        return self._mark_dec

    def set_filters(self, min_qty: Decimal, max_qty: Decimal, min_notional: Decimal, market_max_qty: Decimal) -> None:
        """LOT_SIZE's minQty and maxQty, MIN_NOTIONAL and MARKET_LOT_SIZE's maxQty (``/sim/filters``: the
        exchange changed them, as it announces; what rests stays, new orders and amendments meet them)."""
        self.min_qty, self.max_qty, self.min_notional = min_qty, max_qty, min_notional
        self.min_notional_units = int((min_notional * 10 ** self.notional_places).to_integral_value(
            rounding="ROUND_CEILING"))
        self.min_notional_f = float(min_notional)
        self.min_qty_steps = int((min_qty / self.step).to_integral_value(rounding="ROUND_CEILING"))
        self.max_steps = int((max_qty / self.step).to_integral_value(rounding="ROUND_FLOOR"))
        # MARKET_LOT_SIZE: its minimum LOT_SIZE's unless the spec sets one, its maximum no more than LOT_SIZE's
        spec = self.spec
        self.market_max_set = market_max_qty   # as set; in force, no more than LOT_SIZE's maxQty
        self.market_min_qty = Decimal(spec.market_min_qty) if spec.market_min_qty else min_qty
        self.market_min_steps = int((self.market_min_qty / self.step).to_integral_value(rounding="ROUND_CEILING"))
        self.market_max_qty = min(market_max_qty, max_qty)
        self.market_max_steps = int((self.market_max_qty / self.step).to_integral_value(rounding="ROUND_FLOOR"))

    def price_str(self, ticks: int) -> str:
        return fixed(ticks * self.price_mult, self.price_places)

    def qty_str(self, steps: int) -> str:
        return fixed(steps * self.qty_mult, self.qty_places)

    def notional_str8(self, units: int) -> str:
        """price ticks x qty steps as an 8-decimal string (the b/a fields of order updates)."""
        places = self.notional_places
        if places <= 8:
            return fixed(units * self.notional_mult * 10 ** (8 - places), 8)
        return s8(self.notional_unit * units)
