"""A recorded market as the simulator's market: ``SimConfig.replay`` = a recording directory.

Instead of :class:`fleet.sim.market.MarketModel` and its synthetic takers, the engine's books follow
a recording (docs/recording.md) event by event, at the recorded receive times shifted so that the
recording's first line falls on the engine's start (``shift_ms = engine start - first line``; a run
whose clock starts at the recording's start sees the recorded times unchanged):

- bookTicker: the touch is the recorded best bid and ask with their sizes, and the engine publishes
  it at that time (so the mid path is the recording's). Our orders queue behind the recorded size at
  their price: an order joining the touch has the recorded size ahead of it, one inside the spread
  nothing; the queue ahead only shrinks (to the recorded size when that falls, to 0 when the touch
  moves behind the order). A recorded book that crosses a resting order fills it at its own price,
  for as much as the recorded touch on the other side holds.
- aggTrade: published as recorded, then a taker of the recorded side, price and size (``nq`` when
  given: the part the visible book held): our orders at a better price than the trade's first (the
  taker would have hit them first), then at its price it eats the recorded size ahead of our orders
  and fills them in time order, never more than its size in all. The reader hands a symbol's lines
  over in the exchange's order (a trade before the book it changed, received after it or not).
- markPrice: the mark price, the funding rate and the next funding time; funding settles at the
  recorded next funding time with the latest rate (then every interval until a frame names another
  time: the symbol's, as the step of the recorded times after a settlement shows it, else the spec's
  ``funding_interval_hours`` or ``funding_interval_s``; fundingInfo lists a recorded symbol that does
  not settle every 8 hours).

Not modelled: depth beyond the touch (the levels behind it are the simulator's synthetic profile, for
our own market orders), and our own impact (what our orders take from the book lasts until the next
recorded bookTicker; recorded trades never see our orders as liquidity that was not there). Before a
symbol's first bookTicker its book is that first one, held still; after the recording's last line
every book holds still (no trades), marks and funding rates stay as last recorded.
"""

from __future__ import annotations

import logging
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

from fleet.sim.book import SCAN_BEYOND, Book
from fleet.sim.config import SimConfig, SymbolSpec
from fleet.sim.errors import SimApiError
from fleet.sim.frames import render_list, render_mark
from fleet.sim.funding import DAY_MS, HOUR_MS
from fleet.sim.orders import Order
from fleet.sim.recording import BOOK, MARK, TRADE, Line, ReadStats, Recording, RecordingError
from fleet.sim.units import fast_units

if TYPE_CHECKING:
    from fleet.sim.engine import Engine

log = logging.getLogger("fleet.sim.replay")

FAR_MS = 1 << 62
MAX_RATE = Decimal("0.1")   # a recorded funding rate beyond 10 % an interval is not one (Binance's caps: a few %)
PRESCAN_LINES = 100_000  # how far past a symbol's first bookTicker its first markPrice is looked for


def grid_units(raw: Any, places: int, mult: int) -> int | None:
    """A decimal string as whole ticks (or steps) of a grid of ``mult`` units of 10^-places; None when
    it is not a non-negative decimal on that grid."""
    if type(raw) is not str:
        return None
    units = fast_units(raw, places)
    if units is None:  # more decimals than the grid, an exponent, a sign: the careful path
        try:
            d = Decimal(raw)
        except InvalidOperation:
            return None
        if not d.is_finite() or d < 0:
            return None
        scaled = d.scaleb(places)
        if scaled != scaled.to_integral_value():
            return None
        units = int(scaled)
    if units % mult:
        return None
    return units // mult


def _read_mark(d: dict[str, Any], recorded_ms: int) -> tuple[float, Decimal | None, int | None] | str:
    """A markPrice frame's mark, funding rate (None: not given) and next funding time (None: not given),
    or why the frame is malformed: a mark that is not a positive price, a rate that is not a decimal
    within ``MAX_RATE``, a next funding time that is not a time within a day or so of the frame."""
    raw = d.get("p")
    try:
        mark = float(raw) if type(raw) is str else 0.0
    except ValueError:
        mark = 0.0
    if not 0 < mark < float("inf"):
        return f"markPrice p={raw!r} is not a price"
    rate, value = d.get("r"), None
    if rate is not None and rate != "":   # "" for a contract that pays no funding
        try:
            value = Decimal(rate) if type(rate) is str else None
        except InvalidOperation:
            pass
        if value is None or not value.is_finite() or abs(value) > MAX_RATE:
            return f"markPrice r={rate!r} is not a funding rate (a decimal within +-{MAX_RATE})"
    at = d.get("T")
    if at is not None and at != 0:
        if type(at) is not int or not recorded_ms - DAY_MS < at <= recorded_ms + 2 * DAY_MS:
            return f"markPrice T={at!r} is not a next funding time near the frame's time ({recorded_ms})"
    return mark, value, at or None


class ReplayModel:
    """Stands in for MarketModel in a replayed book: the recorded mid; no regimes, no jumps."""

    regime = "replay"
    trend_sign = 0

    def __init__(self, mid: float) -> None:
        self.mid = mid

    def step(self, dt_s: float) -> float:
        return self.mid

    def jump(self, log_size: float) -> float:
        raise SimApiError(-1130, "The market replays a recording: it cannot jump.")


class ReplayBook(Book):
    """A book whose touch (prices and sizes) is the recording's; levels behind it are synthetic."""

    def __init__(self, spec: SymbolSpec, touch: tuple[int, int, int, int], salt: int, base_order_id: int) -> None:
        model = ReplayModel((touch[0] + touch[2]) * 0.5 * float(Decimal(spec.tick_size)))
        super().__init__(spec, model, salt, base_order_id)  # type: ignore[arg-type]
        self.bid_qty = self.ask_qty = 0
        self.swept = {True: (0, 0), False: (0, 0)}   # per side of ours: the crossing touch's price, how much taken
        self.mark_follows_mid = True  # until the recording's first markPrice
        self.set_touch(*touch)

    def set_touch(self, bid: int, bid_qty: int, ask: int, ask_qty: int) -> None:
        self.bid_top, self.bid_qty, self.ask_top, self.ask_qty = bid, bid_qty, ask, ask_qty
        self.mid = self.model.mid = (bid + ask) * 0.5 * self.tick_f
        if self.diff_state:
            self.note_refill()   # (its levels refill, however deep: the diff streams say them)
        self.consumed_bid.clear()  # what our orders took lasts until the next recorded book
        self.consumed_ask.clear()
        self.update_id += 1
        if self.mark_follows_mid:
            self.mark = self.mid
            self._mark_dec = None

    def synth_bid(self, price: int) -> int:
        dist = self.bid_top - price
        if dist < 0:
            return 0
        q = self.bid_qty if dist == 0 else self._profile(dist, price)
        if self.consumed_bid:
            q -= self.consumed_bid.get(price, 0)
        return q if q > 0 else 0

    def synth_ask(self, price: int) -> int:
        dist = price - self.ask_top
        if dist < 0:
            return 0
        q = self.ask_qty if dist == 0 else self._profile(dist, price)
        if self.consumed_ask:
            q -= self.consumed_ask.get(price, 0)
        return q if q > 0 else 0

    def _side_levels(self, levels: int, buy: bool) -> list[tuple[int, int]]:
        side: list[tuple[int, int]] = []
        p, step = (self.best_bid(), -1) if buy else (self.best_ask(), 1)
        for _ in range(levels * 4 + SCAN_BEYOND):
            if p <= 0:
                break
            q = self.level_qty(buy, p)
            if q > 0:
                side.append((p, q))
                if len(side) == levels:
                    break
            p += step
        return side

    def requeue(self) -> None:
        """The queue ahead of our orders only shrinks: to the recorded size at the touch, to nothing in
        front of it."""
        top, size = self.bid_top, self.bid_qty
        for price, orders in self.bids.items():
            if price >= top:
                cap = size if price == top else 0
                for o in orders:
                    if o.ahead > cap:
                        o.ahead = cap
        top, size = self.ask_top, self.ask_qty
        for price, orders in self.asks.items():
            if price <= top:
                cap = size if price == top else 0
                for o in orders:
                    if o.ahead > cap:
                        o.ahead = cap


def _first_frames(rec: Recording, symbol: str) -> tuple[int, Line, Line | None]:
    """The symbol's first line time, first bookTicker and first markPrice (None if none comes soon)."""
    first_r: int | None = None
    book: Line | None = None
    mark: Line | None = None
    after = 0
    for line in rec.lines(symbol, ReadStats(quiet=True)):
        if first_r is None:
            first_r = line[0]
        if line[1] == BOOK and book is None:
            book = line
        elif line[1] == MARK and mark is None:
            mark = line
        if book is not None:
            after += 1
            if mark is not None or after > PRESCAN_LINES:
                break
    if book is None or first_r is None:
        raise RecordingError(f"replay: {symbol} has no readable bookTicker line in {rec.directory}")
    return first_r, book, mark


def _first_touch(spec: SymbolSpec, line: Line) -> tuple[int, int, int, int]:
    """The first recorded book in ticks and steps of the spec, or an error naming the grid to configure."""
    tick, step = Decimal(spec.tick_size), Decimal(spec.step_size)
    out = []
    for key, unit, name in (("b", tick, "tick_size"), ("B", step, "step_size"), ("a", tick, "tick_size"),
                            ("A", step, "step_size")):
        places = max(0, -unit.normalize().as_tuple().exponent)  # type: ignore[operator]
        v = grid_units(line[3].get(key), places, int(unit.scaleb(places)))
        if v is None:
            raise RecordingError(
                f"replay: {spec.symbol}'s recorded {key}={line[3].get(key)!r} ({line[4]} line {line[5]}) is not on "
                f"the simulator's {name} {unit}: configure symbols[].{name} of {spec.symbol} as Binance has it")
        out.append(v)
    if out[0] <= 0 or out[2] <= out[0]:
        raise RecordingError(f"replay: {spec.symbol}'s first recorded book ({line[4]} line {line[5]}) is not a "
                             f"book: bid {line[3].get('b')!r}, ask {line[3].get('a')!r}")
    return out[0], out[1], out[2], out[3]


class ReplayMarket:
    """Feeds a recording into an engine's books. The engine builds it from ``SimConfig.replay`` and its
    ``advance(now_ms)`` runs :meth:`advance`: recorded lines, dead-man deadlines, listenKey expiries and
    funding, each at its own time."""

    def __init__(self, config: SimConfig, symbols: list[str] | None, seed: int, now_ms: int) -> None:
        assert config.replay, "SimConfig.replay names the recording"
        self.recording = rec = Recording(config.replay)
        names = [s.upper() for s in symbols] if symbols else list(rec.symbols)
        absent = [s for s in names if s not in rec.symbols]
        if absent:
            raise RecordingError(f"replay: {', '.join(absent)} not in the recording {rec.directory} "
                                 f"(it holds {', '.join(rec.symbols)})")
        firsts = {s: _first_frames(rec, s) for s in names}
        self.start_ms = min(f[0] for f in firsts.values())
        end = rec.manifest.get("end_ms")
        if type(end) is int and end <= self.start_ms:   # as `fleet simulate --replay` refuses it
            raise RecordingError(f"replay: {rec.directory}: its manifest's end ({end}) is not after its first line "
                                 f"({self.start_ms})")
        self.shift_ms = now_ms - self.start_ms
        self.stats = ReadStats()
        self.books: dict[str, ReplayBook] = {}
        self.funding_at: dict[str, int] = {}  # per symbol, the next settlement (engine time)
        self.settled: dict[str, int] = {}
        self.mark3_due: dict[str, int] = {}
        self.next_funding_ms = FAR_MS
        for i, spec in enumerate(config.symbol_specs(names)):
            self.books[spec.symbol] = self._book(spec, firsts[spec.symbol], seed, i)
        self.applied = 0
        self.position_ms: int | None = None  # the recorded time of the last line applied
        self._events = rec.events(names, self.stats)
        self._next: Line | None = None
        self._next_t = FAR_MS
        self._pull()
        log.info("replaying %s: %s from %d, shifted by %d ms", rec.directory, ", ".join(names), self.start_ms,
                 self.shift_ms)

    def _book(self, spec: SymbolSpec, first: tuple[int, Line, Line | None], seed: int, i: int) -> ReplayBook:
        _, book_line, mark_line = first
        touch = _first_touch(spec, book_line)
        spec = spec.model_copy(update={"start_price": (touch[0] + touch[2]) * 0.5 * float(Decimal(spec.tick_size))})
        b = ReplayBook(spec, touch, salt=(seed * 131 + i * 977) & 0xFFFF, base_order_id=(i + 1) * 1_000_000_000 + 1)
        self.funding_at[b.symbol] = FAR_MS
        self.settled[b.symbol] = 0
        self.mark3_due[b.symbol] = 0
        if mark_line is not None:
            mark = _read_mark(mark_line[3], mark_line[0])
            if not isinstance(mark, str):   # (a malformed one is counted when its line is applied)
                self._take_mark(b, mark)
        return b

    @property
    def done(self) -> bool:
        """Every recorded line has been applied: the books hold still from here on."""
        return self._next is None

    @property
    def next_event_ms(self) -> int:
        """The engine time of the next recorded line (a simulated clock may jump to it); huge when done."""
        return self._next_t

    def view(self) -> dict[str, Any]:
        return {"directory": str(self.recording.directory), "symbols": list(self.books),
                "start_ms": self.start_ms, "shift_ms": self.shift_ms, "position_ms": self.position_ms,
                "lines_applied": self.applied, "done": self.done, **self.stats.view(),
                # what the recorder itself lost (its manifest's counts): frames between a connection's end
                # and the next, frames it could not read
                "recorder_reconnects": _count(self.recording.manifest.get("reconnects")),
                "recorder_malformed": _count(self.recording.manifest.get("malformed_frames"))}

    # -- time ---------------------------------------------------------------------------------------

    def advance(self, e: Engine, now_ms: int) -> None:
        """Move the engine to ``now_ms``: each recorded line, dead-man deadline, listenKey expiry, GTD
        expiry, delisting settlement, funding settlement and kline or ticker push at its own time, in time
        order (deadlines first at a tie, then a settlement)."""
        while True:
            t, f, d = self._next_t, self.next_funding_ms, e._deadline
            k, v = e.next_timed_ms, e.next_delivery_ms
            if k <= now_ms and k <= t and k <= f and k < d and k < v:
                if k > e.now_ms:
                    e.now_ms = k
                e.publish_timed(e.now_ms)   # a first push, or one after a long sleep, comes now: once
                continue
            if d <= now_ms and d <= t and d <= f and d <= v:
                if d > e.now_ms:
                    e.now_ms = d
                e._fire_countdowns(d)
                e._expire_listen_keys(d)
                e._expire_gtd(d)
                e._recompute_deadline()
                continue
            if v <= now_ms and v <= t and v <= f:
                if v > e.now_ms:
                    e.now_ms = v
                e.settle_due(e.now_ms)   # a delisting announced (fleet/sim/delisting.py)
                continue
            if f <= now_ms and f <= t:
                if f > e.now_ms:
                    e.now_ms = f
                self._settle(e, f)
                continue
            if t > now_ms:
                break
            if t > e.now_ms:
                e.now_ms = t
            line = self._next
            assert line is not None
            self._pull()
            self._apply(e, line, e.now_ms)
            if e.algo.live:
                e.algo.check(e.now_ms, line[2])   # the conditional orders of the line's symbol
        if now_ms > e.now_ms:
            e.now_ms = now_ms
        if e.algo.live:   # every symbol's: finished orders and dates, after the last line too
            e.algo.check(e.now_ms)
        # when the market next moves, for a clock that sleeps until then (at least every step_ms)
        e.next_step_ms = min(self._next_t, self.next_funding_ms, e.now_ms + e.step_ms,
                             e.next_timed_ms, e.next_delivery_ms)

    def _pull(self) -> None:
        line = next(self._events, None)
        self._next = line
        if line is None:
            self._next_t = FAR_MS
            log.info("replay of %s: the last recorded line is applied; the books hold still (%s)",
                     self.recording.directory, self.stats.view())
        else:
            self._next_t = line[0] + self.shift_ms

    def _settle(self, e: Engine, t: int) -> None:
        for symbol, at in self.funding_at.items():
            if at <= t:
                e.settle_funding(at, symbol)
                self.settled[symbol] = at
                self.funding_at[symbol] = at + e.books[symbol].funding_interval_ms
        self._funding_changed(e)

    def _learn_interval(self, b: ReplayBook, at: int) -> None:
        """The recorded next funding time after a settlement: the step is the symbol's interval, when it is a
        whole number of hours dividing 24 (a frame lost across two settlements is not); fundingInfo lists
        a symbol that does not settle every 8 hours, as Binance's does."""
        step = at - self.settled[b.symbol]
        if self.settled[b.symbol] and step % HOUR_MS == 0 and DAY_MS % step == 0 and step != b.funding_interval_ms:
            b.funding_interval_ms = step
            b.funding_listed = b.funding_listed or step != 8 * HOUR_MS
            b.funding_info_ms = at - step

    def funding_known(self, e: Engine) -> None:
        """The engine's books take the recording's next funding times (the model's where it has none)."""
        self._funding_changed(e)

    def _funding_changed(self, e: Engine | None) -> None:
        self.next_funding_ms = min(self.funding_at.values())
        if e is not None:
            for symbol, at in self.funding_at.items():
                if at < FAR_MS:
                    e.books[symbol].next_funding_ms = at
            if self.next_funding_ms < FAR_MS:
                e.next_funding_ms = self.next_funding_ms

    # -- lines --------------------------------------------------------------------------------------

    def _apply(self, e: Engine, line: Line, t: int) -> None:
        _, kind, symbol, d, path, lineno = line
        self.position_ms = line[0]
        b = self.books[symbol]
        if b.frozen:  # a data fault: the symbol's market stands still and silent
            return
        bad = self.stats.malformed
        self.applied += 1   # (taken back below for a line found malformed here: it was counted twice)
        self._apply_kind(e, b, kind, d, t, path, lineno)
        if self.stats.malformed != bad:
            self.applied -= 1

    def _apply_kind(self, e: Engine, b: ReplayBook, kind: str, d: dict[str, Any], t: int, path: Any,
                    lineno: int) -> None:
        if kind == BOOK:
            self._on_book(e, b, d, t, path, lineno)
        elif kind == TRADE:
            self._on_trade(e, b, d, t, path, lineno)
        elif kind == MARK:
            mark = _read_mark(d, self.position_ms)
            if isinstance(mark, str):
                self.stats.bad(path, lineno, mark)
                return
            self._take_mark(b, mark, e)
            self._publish_mark(e, b, t)
            if e.config.liquidation:
                e._check_liquidations(t)

    def _on_book(self, e: Engine, b: ReplayBook, d: dict[str, Any], t: int, path: Any, lineno: int) -> None:
        pp, pm, qp, qm = b.price_places, b.price_mult, b.qty_places, b.qty_mult
        bid, ask = grid_units(d.get("b"), pp, pm), grid_units(d.get("a"), pp, pm)
        bid_qty, ask_qty = grid_units(d.get("B"), qp, qm), grid_units(d.get("A"), qp, qm)
        if bid is None or ask is None or bid_qty is None or ask_qty is None:
            self.stats.bad(path, lineno, f"bookTicker b/B/a/A {d.get('b')!r}/{d.get('B')!r}/{d.get('a')!r}/"
                                         f"{d.get('A')!r} are not decimals on {b.symbol}'s tick {b.tick} and "
                                         f"step {b.step}")
            return
        if bid <= 0 or ask <= bid:
            self.stats.bad(path, lineno, f"bookTicker is not a book: bid {d.get('b')!r}, ask {d.get('a')!r}")
            return
        if b.price_held:  # "price" freeze: the touch holds, recorded trades go on
            return
        b.set_touch(bid, bid_qty, ask, ask_qty)
        c = b.candle
        if c is None or t >= c[0] + 60_000:
            b.roll_candle(t)
        else:
            c[2], c[3], c[4] = max(c[2], b.mid), min(c[3], b.mid), b.mid
        b.requeue()
        if b.our_bid >= b.ask_top or b.our_ask <= b.bid_top:
            _sweep_crossed(e, b, t)  # the recorded book went through a resting order: it fills at its price
        e._publish_book(b, t)

    def _on_trade(self, e: Engine, b: ReplayBook, d: dict[str, Any], t: int, path: Any, lineno: int) -> None:
        price = grid_units(d.get("p"), b.price_places, b.price_mult)
        qty = grid_units(d.get("q"), b.qty_places, b.qty_mult)
        sell = d.get("m")  # the buyer is the maker: the taker sold into the bids
        if price is None or qty is None or price <= 0 or qty <= 0 or type(sell) is not bool:
            self.stats.bad(path, lineno, f"aggTrade p/q/m {d.get('p')!r}/{d.get('q')!r}/{sell!r} is not a trade "
                                         f"on {b.symbol}'s tick {b.tick} and step {b.step}")
            return
        # What the taker took from the visible book: "nq" leaves out the trades against RPI orders, which
        # the books never show (so never queued ahead of ours); "q" when the frame has no readable "nq"
        visible = grid_units(d.get("nq"), b.qty_places, b.qty_mult)
        visible = qty if visible is None or visible > qty else visible
        trade_id = e._emit_agg(b, price, qty, t, sell)
        if visible and ((b.our_bid >= price) if sell else (b.our_ask <= price)):
            if self._take(e, b, price, visible, sell, t, trade_id):
                e._publish_book(b, t)

    def _take(self, e: Engine, b: ReplayBook, price: int, qty: int, sell: bool, t: int, trade_id: int) -> bool:
        """The recorded taker against our orders, for at most its own size: through our better prices first
        (the taker would have hit them first; a trade each), then at its price behind the recorded queue
        (within the recorded trade ``trade_id``). True if anything filled."""
        levels = b.bids if sell else b.asks
        crossed = sorted((p for p in levels if (p >= price if sell else p <= price)), reverse=sell)
        filled = False
        left = qty
        for p in crossed:
            orders = levels.get(p)
            if not orders or left <= 0:
                continue
            if p == price:
                filled = _queue_fill(e, b, orders, price, left, t, trade_id) or filled
                continue
            for o in list(orders):  # the trade went through this price: the order was hit first
                n = e._fillable(b, o, min(o.remaining, left), t)
                if n:
                    left -= n
                    e._fill(b, o, n, p, True, t, e._emit_agg(b, p, n, t, sell))
                    filled = True
                    if left <= 0:
                        break
        return filled

    def _take_mark(self, b: ReplayBook, mark: tuple[float, Decimal | None, int | None],
                   e: Engine | None = None) -> None:
        """Mark price, funding rate (unless pinned) and next funding time of a markPrice frame (read by
        :func:`_read_mark`)."""
        b.mark, rate, at = mark
        b._mark_dec = None
        b.mark_follows_mid = False
        if rate is not None and not b.rate_pinned:
            b.funding_rate = rate
        if at is not None:
            at += self.shift_ms
            if at > self.settled[b.symbol] and at != self.funding_at[b.symbol]:
                self.funding_at[b.symbol] = at
                self._learn_interval(b, at)
                self._funding_changed(e)

    def _publish_mark(self, e: Engine, b: ReplayBook, t: int) -> None:
        interest = e.interest
        at = self.funding_at[b.symbol]
        frame = (render_mark, b, b.mark, b.funding_rate, at if at < FAR_MS else b.next_funding_ms, t)
        streams = [(b.lower + "@markPrice@1s", "!markPrice@arr@1s")]
        if t >= self.mark3_due[b.symbol]:  # the 3 s stream: at most one frame per 3 s
            self.mark3_due[b.symbol] = t + 3000
            streams.append((b.lower + "@markPrice", "!markPrice@arr"))
        for one, every in streams:
            if one in interest:
                e._emit_market(one, frame)
            if every in interest:
                e._emit_market(every, (render_list, [frame]))


def _sweep_crossed(e: Engine, b: ReplayBook, t: int) -> None:
    """Our resting orders a recorded book went through fill at their own price, as makers, for as much
    as the recorded touch on the other side holds (those orders would have met ours; the levels behind
    it are synthetic), our best price first. A touch that stays at its price over several recorded books
    is taken once: later books fill only what its size grew by."""
    for buy in (True, False):
        levels = b.bids if buy else b.asks
        touch = b.ask_top if buy else b.bid_top
        size = b.ask_qty if buy else b.bid_qty
        swept_price, taken = b.swept[buy]
        if swept_price != touch:
            taken = 0
        left = size - taken
        for price in sorted((p for p in levels if (p >= touch if buy else p <= touch)), reverse=buy):
            for o in list(levels.get(price, ())):
                n = e._fillable(b, o, min(o.remaining, left), t) if left > 0 else 0
                if n:
                    left -= n
                    taken += n
                    e._fill(b, o, n, price, True, t, e._emit_agg(b, price, n, t, buy))
        b.swept[buy] = (touch, min(taken, size))


def _queue_fill(e: Engine, b: Book, orders: list[Order], price: int, qty: int, t: int, trade_id: int) -> bool:
    """A recorded trade of ``qty`` at our orders' price: it eats the recorded size ahead of each order
    first, then fills the orders in time order. True if anything filled."""
    eaten = 0  # the recorded size this trade took at this price
    left = qty
    filled = False
    for o in list(orders):
        gap = o.ahead - eaten
        if gap > 0:
            take = gap if gap < left else left
            eaten += take
            left -= take
            if left == 0:
                break
        n = e._fillable(b, o, o.remaining if o.remaining < left else left, t)
        if n:
            left -= n
            e._fill(b, o, n, price, True, t, trade_id)
            filled = True
            if left == 0:
                break
    for o in orders:  # the ones still resting moved up the queue
        o.ahead = o.ahead - eaten if o.ahead > eaten else 0
    return filled


def _count(value: Any) -> int:
    """A manifest's count (0 when it has none or not a count: an older or killed recorder's)."""
    return value if type(value) is int and value >= 0 else 0
