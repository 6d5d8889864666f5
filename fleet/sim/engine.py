"""The simulator's pure core: synthetic books, matching with queue position, accounts, funding.

No sockets and no wall clock: the server calls methods with parsed parameters and an injected
``now_ms`` and drains :attr:`Engine.outbox` for the frames to push, so the same engine runs live on
loopback or in accelerated time in-process. Prices are integer ticks and sizes integer steps inside;
money (balances, entry prices, P&L, fees) is ``Decimal`` so the books balance exactly.
"""

from __future__ import annotations

import heapq
import math
import random
import secrets
import string
from decimal import Decimal, InvalidOperation
from typing import Any

from fleet.sim.algo import TYPES as ALGO_TYPES, AlgoService
from fleet.sim.book import DEEP_FROM, NO_ASK, Book, DiffState, still_listed
from fleet.sim.config import SimConfig, check_credentials
from fleet.sim.errors import SimApiError, check_number, int_param, invalid, missing, parse_long
from fleet.sim.frames import (render, render_account_update, render_agg, render_bt, render_continuous_kline,
                              render_depth, render_diff, render_kline, render_list, render_mark, render_mini_ticker,
                              render_order_update, render_ticker, render_trade, render_trade_lite, ticker_24h)
from fleet.sim.funding import FundingSchedule
from fleet.sim.history import backfill
from fleet.sim.keys import ed25519_private_pem
from fleet.sim.delisting import Delisting, amend_not_trading, not_trading
from fleet.sim.liquidation import Liquidation
from fleet.sim.margin import IsolatedMargin
from fleet.sim.market import MarketModel
from fleet.sim.matching import DryRun, Fills, walk
from fleet.sim.orders import (CLIENT_ID_RE, DEFAULT_STP, PRICE_MATCH, PRICE_MATCH_WITHDRAWN, STP_MODES, Account, Order,
                              Position, Trade)
from fleet.sim.replay import ReplayMarket
from fleet.sim.streams import (ALL_BOOK_TICKERS_EVERY_MS, ALL_TICKERS_EVERY_MS, DEPTH_EVERY_MS, KLINE_EVERY_MS,
                               KLINE_MINUTES, TICKER_EVERY_MS, kline_next, kline_open)
from fleet.sim.units import ZERO, decimals_in, fast_units, q8, s8
from fleet.sim.views import EngineViews

__all__ = ["Engine", "SimApiError", "missing", "invalid", "render", "Order", "Account", "Book"]

FAR_MS = 1 << 62
DIFF_LEVELS = 50  # the diff depth stream keeps this many levels per side exact (absolute sizes, "0" = gone)
MAX_BAND = 5_000  # at most this many new levels behind a touch that moved past the last event's levels (all of a jump)
# a conditional order's parameters, refused on LIMIT and MARKET with -1106 ("sent when not required"), as
# Binance answers stopPrice on a LIMIT; closePosition only when "true" (its code there is not documented)
NOT_FOR_LIMIT_OR_MARKET = ("stopPrice", "activationPrice", "callbackRate", "closePosition")

LISTEN_KEY_ALPHABET = string.ascii_letters + string.digits


def _gone(last: dict[int, int], shown: set[int], now: dict[int, int], levels: list[tuple[int, int]],
          deeper: int, reach: int | None) -> list[tuple[int, int]]:
    """The "0"s of one side of a diff depth event (``deeper``: -1 bids, 1 asks): every price a client may
    hold a level at that has none now, from beyond the touch to the deepest level kept (``DIFF_LEVELS``).
    A client may hold the last event's levels, those a snapshot showed since, and any price out to
    ``reach``, the deepest this stream or a snapshot ever showed: a touch that jumps past the last
    event's levels sweeps past those too. Not a level that merely fell below the deepest kept: it stays
    in a client's book, as on Binance, where a 1000-level snapshot is the documented start."""
    maybe = set(shown).union(last) if shown else set(last)
    deepest = levels[-1][0] if len(levels) == DIFF_LEVELS else None
    if levels and reach is not None:
        touch = levels[0][0]
        kept = touch if deepest is None else deepest
        if deeper < 0:   # bids: from the deepest kept up through the touch to the last event's deepest
            top = max(touch, min(last) - 1) if last else touch
            maybe.update(range(max(kept, reach), top + 1))
        else:   # asks: from the last event's deepest down through the touch to the deepest kept
            bottom = min(touch, max(last) + 1) if last else touch
            maybe.update(range(bottom, min(kept, reach) + 1))
    return [(p, 0) for p in maybe if p not in now and (deepest is None or (p - deepest) * deeper <= 0)]


def _deeper(b: Book, buy: bool, held: tuple[dict[int, int], ...], dirty: set[int],
            now: dict[int, int], levels: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """The levels of one side of a diff depth event deeper than the top DIFF_LEVELS whose size a client
    may hold wrong or not at all: one the last event or a snapshot gave that has changed since (the touch
    moved away from it: it left the levels whose size grows with the distance, fleet/sim/book.py
    DEEP_FROM); every price between the deepest kept and the last event's touch when the touch moved
    further than the levels kept (new to the client); every level still within DEEP_FROM of the
    synthetic touch (our orders inside the spread can fill the top 50 before it); and every price of
    ours that changed (an order placed, amended, filled or cancelled there)."""
    if len(levels) < DIFF_LEVELS:
        return []
    deepest, sign = levels[-1][0], (-1 if buy else 1)
    out: dict[int, int] = {}
    for told in held:
        for p, q in told.items():
            if (p - deepest) * sign > 0 and p not in out:
                now_q = b.level_qty(buy, p)
                if now_q != q:
                    out[p] = now_q
    last = held[0]
    if last:   # the touch moved past the last event's levels: the levels behind the new ones are new
        best = max(last) if buy else min(last)
        if (best - deepest) * sign > 0:   # (as many as a snapshot holds)
            _new_levels(b, buy, range(deepest + sign, best, sign), out, MAX_BAND)
    ramp_end = (b.bid_top - DEEP_FROM) if buy else (b.ask_top + DEEP_FROM)
    if (ramp_end - deepest) * sign > 0:   # sizes that still move with the touch, behind the levels kept
        _new_levels(b, buy, range(deepest + sign, ramp_end + sign, sign), out, DEEP_FROM + 1)
    for p in dirty:
        if (p - deepest) * sign > 0 and p not in now:
            out[p] = b.level_qty(buy, p)
    return list(out.items())


def _new_levels(b: Book, buy: bool, prices: range, out: dict[int, int], most: int) -> None:
    """Up to ``most`` levels with size at ``prices`` (in order; at most 4 prices a level looked at) into
    ``out``."""
    found = 0
    for p in prices[:most * 4]:
        q = out.get(p) or b.level_qty(buy, p)
        if q:
            out[p] = q
            found += 1
            if found >= most:
                return


class Engine(EngineViews, IsolatedMargin, Liquidation, Delisting, FundingSchedule):
    """The exchange: call its methods with an account name, parameters and ``now_ms``."""

    def __init__(self, config: SimConfig, seed: int = 7, now_ms: int = 0,
                 symbols: list[str] | None = None,
                 credentials: dict[str, tuple[str, str]] | None = None) -> None:
        self.config = config
        self.seed = seed
        self.rng = random.Random(seed)
        self.id_rng = random.Random(seed * 7919 + 1)
        self.now_ms = now_ms
        self.outbox: list[tuple[str, str, Any]] = []
        self.events_emitted = 0
        self.interest: frozenset[str] = frozenset()
        self.books: dict[str, Book] = {}
        self._seq = 0
        self._amend_id = 0  # GET orderAmendment's amendmentId
        self.maker_rate = Decimal(config.maker_commission)
        self.taker_rate = Decimal(config.taker_commission)
        # the market: the model (default), or a recording replayed (config.replay; fleet/sim/replay.py)
        self.replay = ReplayMarket(config, symbols, seed, now_ms) if config.replay else None
        if self.replay is not None:
            self.books.update(self.replay.books)
        for i, spec in enumerate(() if self.replay is not None else config.symbol_specs(symbols)):
            mp = config.market.model_copy(update={
                "start_price": spec.start_price,
                **({"volatility": spec.volatility} if spec.volatility is not None else {}),
            })
            model = MarketModel(mp, random.Random(f"{seed}:{spec.symbol}"))
            self.books[spec.symbol] = Book(spec, model, salt=(seed * 131 + i * 977) & 0xFFFF,
                                           base_order_id=(i + 1) * 1_000_000_000 + 1)
        for b in self.books.values():
            b.roll_candle(now_ms)
        self.accounts: dict[str, Account] = {}
        self.by_key: dict[str, Account] = {}
        credentials = credentials or {}
        for spec in config.accounts:
            key, secret = credentials.get(spec.name, (spec.api_key, spec.api_secret))
            key = key or self._token(64)
            if spec.key_type == "ED25519":
                secret = secret or ed25519_private_pem(bytes.fromhex(self._token(64)))
            secret = secret or self._token(64)
            check_credentials(spec.name, spec.key_type, key, secret)   # one given beside the config (--api-key)
            acct = Account(spec, key, secret)
            self.accounts[spec.name] = acct
            self.by_key[key] = acct
        self.step_ms = config.step_ms
        self.next_step_ms = (now_ms // self.step_ms + 1) * self.step_ms
        self._init_funding(now_ms)   # every symbol's schedule (fleet/sim/funding.py)
        if self.replay is not None:
            self.replay.funding_known(self)   # the recording's next funding times
        if config.history and self.replay is None:   # the day before the start (fleet/sim/history.py)
            for b in self.books.values():
                backfill(b, now_ms, b.model.params.volatility, b.funding_interval_ms, config.funding_rate_wander,
                         random.Random(f"{seed}:{b.symbol}:history"))
        self.next_mark_ms = (now_ms // config.mark_interval_ms + 1) * config.mark_interval_ms
        self.next_mark3_ms = (now_ms // 3000 + 1) * 3000
        self.depth_due: dict[str, int] = {}
        self.depth_sent_u: dict[str, int] = {}   # partial depth: the book's update id last sent (u)
        self.kline_streams: list[tuple[Book, str, str, Any]] = []   # (book, stream, interval, renderer) listened to
        self.kline_open: dict[str, int] = {}   # stream -> the open time of the candle it last pushed
        self.ticker_streams: list[tuple[Book, str, Any]] = []   # (book, stream, renderer) listened to
        self.next_timed_ms = FAR_MS   # the next kline or ticker push (FAR_MS: nobody listens to one)
        self.next_ticker_ms = 0
        self.all_ticker_streams: list[tuple[str, Any]] = []   # (!ticker@arr or !miniTicker@arr, renderer) listened to
        self.next_all_ticker_ms = 0
        self.all_ticker_seen: dict[str, int] = {}   # symbol -> its next trade id at the last all-market push
        self._step_count = 0
        self.want_all_bt = False
        self._deadline = FAR_MS
        self.gtd_heap: list[tuple[int, int, Order]] = []   # (expiry, seq, order) of resting GTD orders
        self.tran_id = 1
        self.max_modifies = config.max_modifies_per_order  # -5026 past this many modifies of one order
        # an observer of every fill (b, order, qty steps, price ticks, maker, t, commission, realized), e.g.
        # a simulated run's spread capture against the mid at the fill; None = nobody watches
        self.on_fill: Any = None
        self.algo = AlgoService(self)   # conditional orders, outside the book until their trigger
        self.next_delivery_ms = FAR_MS   # the earliest announced settlement (fleet/sim/delisting.py)

    # -- small helpers ----------------------------------------------------------------------------

    def _token(self, n: int) -> str:
        return f"{self.id_rng.getrandbits(4 * n):0{n}x}"

    def _emit_user(self, account: str, payload: dict[str, Any]) -> None:
        self.outbox.append(("u", account, payload))
        self.events_emitted += 1

    def _emit_market(self, stream: str, payload: Any) -> None:
        self.outbox.append(("m", stream, payload))
        self.events_emitted += 1

    def drain(self) -> list[tuple[str, str, Any]]:
        """The frames produced since the last drain, unrendered: pass each payload to :func:`render`."""
        out, self.outbox = self.outbox, []
        return out

    def drain_rendered(self) -> list[tuple[str, str, Any]]:
        return [(k, target, render(p)) for k, target, p in self.drain()]

    def watch(self, *streams: str) -> None:
        """Produce frames for these market streams (canonical names, e.g. ``ethusdc@depth5@100ms``)."""
        self.set_interest(set(self.interest) | set(streams))

    def unwatch(self, *streams: str) -> None:
        self.set_interest(set(self.interest) - set(streams))

    def set_interest(self, streams: set[str]) -> None:
        """Market frames are only built for streams someone listens to; cache what each book publishes."""
        self.interest = frozenset(streams)
        every_of = DEPTH_EVERY_MS
        self.kline_streams = [(b, name, i, render) for b in self.books.values() for i in KLINE_MINUTES
                              for name, render in ((f"{b.lower}@kline_{i}", render_kline),
                                                   (f"{b.lower}_perpetual@continuousKline_{i}", render_continuous_kline))
                              if name in self.interest]
        self.kline_open = {s: t for s, t in self.kline_open.items() if s in self.interest}
        before = {stream for _, stream, _ in self.ticker_streams}
        self.ticker_streams = [(b, f"{b.lower}@{kind}", render) for b in self.books.values()
                               for kind, render in (("ticker", render_ticker), ("miniTicker", render_mini_ticker))
                               if f"{b.lower}@{kind}" in self.interest]
        if any(stream not in before for _, stream, _ in self.ticker_streams):
            self.next_ticker_ms = 0   # a new listener hears the day at once, not up to 2 s later
        self.all_ticker_streams = [(stream, render) for stream, render in (("!ticker@arr", render_ticker),
                                                                          ("!miniTicker@arr", render_mini_ticker))
                                   if stream in self.interest]
        if not (self.kline_streams or self.ticker_streams or self.all_ticker_streams):
            self.next_timed_ms = FAR_MS
        elif self.next_timed_ms == FAR_MS:
            self.next_timed_ms = 0   # the first push comes at once
        for b in self.books.values():
            b.want_bt = b.lower + "@bookTicker" in self.interest
            b.want_agg = b.lower + "@aggTrade" in self.interest
            b.want_trade = b.lower + "@trade" in self.interest
            b.depth_streams = [(f"{b.lower}@depth{n}{sfx}", n, every) for n in (5, 10, 20)
                               for sfx, every in every_of.items() if f"{b.lower}@depth{n}{sfx}" in self.interest]
            b.diff_streams = [(f"{b.lower}@depth{sfx}", every) for sfx, every in every_of.items()
                              if f"{b.lower}@depth{sfx}" in self.interest]
            for stale in [k for k in b.diff_state if k not in self.interest]:
                del b.diff_state[stale]
            for stream, _ in b.diff_streams:
                if stream not in b.diff_state:   # the first event follows the book as it is now
                    b.diff_state[stream] = DiffState(b.update_id, *b.depth_levels(DIFF_LEVELS))
        self.want_all_bt = "!bookTicker" in self.interest

    def book(self, symbol: str | None) -> Book:
        if not symbol:
            raise missing("symbol")
        b = self.books.get(symbol.upper())
        if b is None:
            raise SimApiError(-1121, "Invalid symbol.")
        return b

    def account(self, name: str) -> Account:
        acct = self.accounts.get(name)
        if acct is None:
            raise SimApiError(-2015, "Invalid API-key, IP, or permissions for action.", 401)
        return acct

    def leverage_of(self, acct: Account, symbol: str) -> int:
        """The symbol's leverage: as set, else the account's default within the symbol's table (a
        symbol whose brackets stop below it starts at their most, as Binance's do)."""
        lev = acct.leverage.get(symbol)
        if lev is None:
            lev = min(acct.default_leverage, self.books[symbol].brackets.max_leverage)
        return lev

    # -- time -------------------------------------------------------------------------------------

    def advance(self, now_ms: int) -> None:
        """Move the exchange to ``now_ms``: market steps, mark/funding, countdowns, key expiry, each at its
        own time (so accelerated runs fire a dead-man switch at its deadline, not at the end of a jump).
        A replayed market moves by its recorded lines instead (:meth:`ReplayMarket.advance`)."""
        if self.replay is not None:
            self.replay.advance(self, now_ms)
            return
        if now_ms < self.next_step_ms and now_ms < self._deadline:
            if now_ms > self.now_ms:
                self.now_ms = now_ms
            return
        while True:
            t = self.next_step_ms
            if self._deadline <= now_ms and self._deadline <= t:
                d = self._deadline
                if d > self.now_ms:
                    self.now_ms = d
                self._fire_countdowns(d)
                self._expire_listen_keys(d)
                self._expire_gtd(d)
                self._recompute_deadline()
                continue
            if t > now_ms:
                break
            self.now_ms = t
            self._step_market(t, self.step_ms / 1000.0)
            if self.algo.live:
                self.algo.check(t)
            if t >= self.next_mark_ms:
                self._publish_mark(t, "@1s", self.config.mark_interval_ms / 1000.0)
                self.next_mark_ms += self.config.mark_interval_ms
                if self.config.liquidation:
                    self._check_liquidations(t)
            if t >= self.next_mark3_ms:
                self._publish_mark(t, "", 0.0)
                self.next_mark3_ms += 3000
            if t >= self.next_timed_ms:
                self.publish_timed(t)
            if t >= self.next_funding_ms:
                self.settle_due_funding(t)
            if t >= self.next_delivery_ms:
                self.settle_due(t)
            self.next_step_ms += self.step_ms
        if now_ms > self.now_ms:
            self.now_ms = now_ms

    def _recompute_deadline(self) -> None:
        """The earliest dead-man deadline, listenKey expiry or GTD expiry: ``advance`` is cheap until then."""
        heap = self.gtd_heap
        while heap and not heap[0][2].is_open:   # closed since (filled, cancelled): forgotten
            heapq.heappop(heap)
        d = heap[0][0] if heap else FAR_MS
        for acct in self.accounts.values():
            for v in acct.countdowns.values():
                if v < d:
                    d = v
            if acct.listen_key and acct.listen_key_expiry < d:
                d = acct.listen_key_expiry
        self._deadline = d

    def next_countdown_ms(self) -> int | None:
        """The earliest armed dead-man deadline, so the clock can wake for it exactly."""
        deadlines = [d for acct in self.accounts.values() for d in acct.countdowns.values()]
        return min(deadlines) if deadlines else None

    def _fire_countdowns(self, now: int) -> None:
        for acct in self.accounts.values():
            if not acct.countdowns:
                continue
            for symbol, deadline in list(acct.countdowns.items()):
                if now >= deadline:
                    del acct.countdowns[symbol]
                    acct.counters["countdown_fired"] += 1
                    self._cancel_all(acct, self.books[symbol], now)

    def _gtd_push(self, o: Order) -> None:
        """A resting GTD order into the expiry heap. Orders closed since (filled, cancelled) stay in it
        until they reach its top, or until they are most of it: then it is rebuilt without them, so a
        long run that places and cancels GTD orders keeps it small."""
        heap = self.gtd_heap
        if len(heap) >= 64 and len(heap) % 64 == 0:   # every 64 entries: the closed ones dropped if most
            still_open = [entry for entry in heap if entry[2].is_open]
            if 2 * len(still_open) < len(heap):
                heap[:] = still_open
                heapq.heapify(heap)
        heapq.heappush(heap, (o.gtd, o.seq, o))
        if o.gtd < self._deadline:
            self._deadline = o.gtd

    def _expire_gtd(self, now: int) -> None:
        """GTD orders whose time has come expire (``X: EXPIRED``), as Binance cancels them."""
        heap = self.gtd_heap
        while heap and heap[0][0] <= now:
            _, _, o = heapq.heappop(heap)
            if o.is_open:
                self._expire(self.accounts[o.account], self.books[o.symbol], o, now, "0")

    def _expire_listen_keys(self, now: int) -> None:
        for acct in self.accounts.values():
            if acct.listen_key and now >= acct.listen_key_expiry:
                self.expire_listen_key(acct.name, now)

    # -- market -------------------------------------------------------------------------------------

    def _step_market(self, t: int, dt: float) -> None:
        self._step_count += 1
        decay = self._step_count % 20 == 0
        for b in self.books.values():
            if b.frozen:
                continue
            old_bid = b.bid_top
            mid = b.mid if b.price_held else b.model.step(dt)
            b.mid = b.mark = mid
            b._mark_dec = None
            bid_top = int(mid * b.inv_tick - b.half_spread + 1e-9)  # floor: prices are positive
            b.update_id += 1
            c = b.candle
            if c is None or t >= c[0] + 60_000:
                b.roll_candle(t)
            else:
                if mid > c[2]:
                    c[2] = mid
                elif mid < c[3]:
                    c[3] = mid
                c[4] = mid
            b.bid_top = bid_top
            b.ask_top = bid_top + b.spread_ticks
            if decay:  # takers' marks fade: halve, forget the spent ones and those past the touch
                if b.diff_state and (b.consumed_bid or b.consumed_ask):
                    b.note_refill()   # their levels' sizes change, however deep the touch left them
                if b.consumed_bid:
                    b.consumed_bid = {p: c // 2 for p, c in b.consumed_bid.items() if p <= bid_top and c > 1}
                if b.consumed_ask:
                    top = b.ask_top
                    b.consumed_ask = {p: c // 2 for p, c in b.consumed_ask.items() if p >= top and c > 1}
            elif bid_top != old_bid:  # forget the levels past the new touch; most moves leave none (no rebuild)
                cb = b.consumed_bid
                if cb and max(cb) > bid_top:
                    b.consumed_bid = {p: c for p, c in cb.items() if p <= bid_top}
                ca = b.consumed_ask
                if ca:
                    top = b.ask_top
                    if min(ca) < top:
                        b.consumed_ask = {p: c for p, c in ca.items() if p >= top}
            if b.our_bid >= b.ask_top or b.our_ask <= b.bid_top:
                self._sweep_crossed(b, t)
            rate = b.spec.taker_rate * dt
            if rate > 0:
                # Poisson arrivals by inversion: cheap for small rates
                u = self.rng.random()
                if rate != b.poisson_rate:
                    b.poisson_rate, b.poisson_p0 = rate, math.exp(-rate)
                p = b.poisson_p0
                if u <= p:
                    self._publish_book(b, t)
                    continue
                cdf = p
                n = 0
                while u > cdf and n < 50:
                    n += 1
                    p *= rate / n
                    cdf += p
                for _ in range(n):
                    self._synthetic_taker(b, t)
            self._publish_book(b, t)

    def _sweep_crossed(self, b: Book, t: int) -> None:
        """Resting orders the market moved through fill at their own price, as makers, whole: the
        model's price path has no market impact (an order larger than the book around it does not
        hold the price back as it would on Binance, where takers must eat it first)."""
        if b.our_bid >= b.ask_top:
            ask = b.synth_best_ask()
            for price in sorted((p for p in b.bids if p >= ask), reverse=True):
                for o in list(b.bids.get(price, ())):
                    qty = self._fillable(b, o, o.remaining, t)
                    if qty:
                        self._fill(b, o, qty, price, True, t, self._emit_agg(b, price, qty, t, True))
        if b.our_ask <= b.bid_top:
            bid = b.synth_best_bid()
            for price in sorted(p for p in b.asks if p <= bid):
                for o in list(b.asks.get(price, ())):
                    qty = self._fillable(b, o, o.remaining, t)
                    if qty:
                        self._fill(b, o, qty, price, True, t, self._emit_agg(b, price, qty, t, False))

    def _fillable(self, b: Book, o: Order, qty: int, t: int) -> int:
        """How much of ``qty`` the order may fill: a reduce-only order never grows or flips the position
        (with nothing left to reduce it expires, reason 4)."""
        if not o.reduce_only:
            return qty
        pos = self.accounts[o.account].positions.get(b.symbol)
        amount = pos.amount if pos else 0
        cap = -amount * o.sign if amount * o.sign < 0 else 0
        if cap <= 0:
            self._expire(self.accounts[o.account], b, o, t, "4")
            return 0
        return qty if qty < cap else cap

    def _synthetic_taker(self, b: Book, t: int) -> None:
        rng = self.rng
        qty = int(rng.expovariate(1.0 / b.taker_mean_steps)) + 1
        if rng.random() < 0.03:
            qty *= 10
        buy = rng.random() < 0.5 + 0.15 * b.model.trend_sign  # informed flow leans with a trend
        self._walk(b, buy, qty, None, None, t)

    def _walk(self, b: Book, buy: bool, qty: int, taker: Order | None, limit: int | None, t: int) -> int:
        """A taker of ``qty`` steps walks the opposite side (fleet/sim/matching.py); returns the quantity left."""
        return walk(Fills(self, b, t), b, buy, qty, taker, limit)

    def _emit_agg(self, b: Book, price: int, qty: int, t: int, buyer_maker: bool) -> int:
        """One trade on the public tape (``@aggTrade``, ``@trade``, the REST trade lists, the candle); its
        id, which the fills of the orders in it carry (``t``, userTrades ``id``): one sequence a symbol."""
        b.last_price = price * b.tick_f
        b.volume_steps += qty
        aid = b.agg_id
        b.agg_id += 1
        b.recent_trades.append((aid, price, qty, t, buyer_maker))
        b.update_id += 1
        c = b.candle
        if c is not None:
            c[5] += qty
            c[6] += price * qty
            c[7] += 1
            if c[10] < 0:
                c[10] = aid
            c[11] = aid
            if not buyer_maker:
                c[8] += qty
                c[9] += price * qty
        if b.want_agg:
            self._emit_market(b.lower + "@aggTrade", (render_agg, b, aid, price, qty, t, buyer_maker))
        if b.want_trade:
            self._emit_market(b.lower + "@trade", (render_trade, b, aid, price, qty, t, buyer_maker))
        return aid

    def publish_timed(self, t: int) -> None:
        """The streams pushed on a schedule: klines every 250 ms, tickers every 2 s, the all-market
        tickers every second."""
        self.next_timed_ms = t - t % KLINE_EVERY_MS + KLINE_EVERY_MS
        if self.kline_streams:
            self._publish_klines(t)
        if self.ticker_streams and t >= self.next_ticker_ms:
            self.next_ticker_ms = t - t % TICKER_EVERY_MS + TICKER_EVERY_MS
            stats: dict[str, dict[str, Any]] = {}
            for b, stream, render in self.ticker_streams:
                if b.frozen:   # a "data" fault: the symbol's streams stop
                    continue
                s = stats.get(b.symbol)
                if s is None:
                    s = stats[b.symbol] = ticker_24h(b, t)
                self._emit_market(stream, (render, b, s, t))
        if self.all_ticker_streams and t >= self.next_all_ticker_ms:
            self.next_all_ticker_ms = t - t % ALL_TICKERS_EVERY_MS + ALL_TICKERS_EVERY_MS
            self._publish_all_tickers(t)

    def _publish_all_tickers(self, t: int) -> None:
        """``!ticker@arr`` and ``!miniTicker@arr``: the symbols that traded since the last push ("only
        tickers that have changed will be present in the array"); nothing when none did."""
        changed = []
        seen = self.all_ticker_seen
        for b in self.books.values():
            if b.frozen or seen.get(b.symbol) == b.agg_id:
                continue
            seen[b.symbol] = b.agg_id
            changed.append((b, ticker_24h(b, t)))
        if changed:
            for stream, render in self.all_ticker_streams:
                self._emit_market(stream, (render_list, [(render, b, s, t) for b, s in changed]))

    def _publish_klines(self, t: int) -> None:
        """Each kline stream listened to: its open candle, after the one it last pushed if that has closed
        since (once more, ``x: true``)."""
        for b, stream, interval, render in self.kline_streams:
            if b.frozen:   # a "data" fault: the symbol's streams stop
                continue
            start = kline_open(interval, t)
            last = self.kline_open.get(stream)
            if last is not None and last != start and (g := b.candle_group(last, kline_next(interval, last))) is not None:
                row = b.kline_row(g, interval)
                self._emit_market(stream, (render, b, interval, row, g[10], g[11], t, True))
            self.kline_open[stream] = start
            if (g := b.candle_group(start, kline_next(interval, start))) is not None:
                row = b.kline_row(g, interval)
                self._emit_market(stream, (render, b, interval, row, g[10], g[11], t, False))

    def _publish_book(self, b: Book, t: int) -> None:
        want_bt = b.want_bt or self.want_all_bt
        if not want_bt and not b.depth_streams and not b.diff_streams:
            return
        top = b.bid_top
        s = b.synth_best_bid() if top in b.consumed_bid else top
        if b.our_bid > s:
            bb = b.our_bid
            bq = 0
            for o in b.bids[bb]:
                bq += o.orig - o.filled
        else:
            bb = s
            bq = b.synth_bid(bb)
            if b.our_bid == bb:
                for o in b.bids[bb]:
                    bq += o.orig - o.filled
        top = b.ask_top
        s = b.synth_best_ask() if top in b.consumed_ask else top
        if b.our_ask < s:
            ba = b.our_ask
            aq = 0
            for o in b.asks[ba]:
                aq += o.orig - o.filled
        else:
            ba = s
            aq = b.synth_ask(ba)
            if b.our_ask == ba:
                for o in b.asks[ba]:
                    aq += o.orig - o.filled
        bt = (bb, bq, ba, aq)
        if bt != b.last_bt:
            b.last_bt = bt
            if b.want_bt:
                self._emit_market(b.lower + "@bookTicker", (render_bt, b, b.update_id, bt, t))
        if self.want_all_bt and t >= b.all_bt_due:   # the touch as it is, every 5 s, if it moved since
            b.all_bt_due = t - t % ALL_BOOK_TICKERS_EVERY_MS + ALL_BOOK_TICKERS_EVERY_MS
            if bt != b.all_bt_sent:
                b.all_bt_sent = bt
                self._emit_market("!bookTicker", (render_bt, b, b.update_id, bt, t))
        for stream, levels, every in b.depth_streams:
            last_u = self.depth_sent_u.get(stream)
            if not every:   # @0ms: every change of the book, once
                if last_u == b.update_id:
                    continue
            elif t < self.depth_due.get(stream, 0):
                continue
            else:
                self.depth_due[stream] = t - t % every + every
            # U..u: the updates since the last push, pu: its u (as the diff stream); unchanged: U = u = pu
            self.depth_sent_u[stream] = b.update_id
            prev = b.update_id - 1 if last_u is None else min(last_u, b.update_id)
            self._emit_market(stream, (render_depth, b, min(prev + 1, b.update_id), b.update_id, prev,
                                       b.depth_levels(levels), t))
        for stream, every in b.diff_streams:
            if every:   # @0ms: every change (an unchanged book is skipped below)
                if t < self.depth_due.get(stream, 0):
                    continue
                self.depth_due[stream] = t - t % every + every
            d = b.diff_state[stream]
            last_u = d.u
            if last_u == b.update_id:
                continue
            bids, asks = b.depth_levels(DIFF_LEVELS)
            now_bids, now_asks = dict(bids), dict(asks)
            gone_b = _gone(d.bids, d.shown_b, now_bids, bids, -1, d.low_bid)
            gone_a = _gone(d.asks, d.shown_a, now_asks, asks, 1, d.high_ask)
            deep_b = _deeper(b, True, (d.bids, d.shown_b, d.deep_b), d.dirty_b, now_bids, bids)
            deep_a = _deeper(b, False, (d.asks, d.shown_a, d.deep_a), d.dirty_a, now_asks, asks)
            d.advance(b.update_id, now_bids, now_asks, bids, asks)
            d.told_deeper(deep_b, deep_a)   # held by the clients from now, however deep: zeroed when swept
            self._emit_market(stream, (render_diff, b, last_u + 1, b.update_id, last_u, bids + gone_b + deep_b,
                                       asks + gone_a + deep_a, t))

    def note_depth_snapshot(self, b: Book, levels: int) -> None:
        """A depth snapshot of ``levels`` is being served: the next event of each diff stream zeroes the
        levels it showed that have gone by then (one may have come and gone between two events, our
        order placed and cancelled meanwhile: without its "0" a client's book would keep it, and could
        cross)."""
        if b.diff_streams:
            bids, asks = b.depth_levels(levels)
            for stream, _ in b.diff_streams:
                b.diff_state[stream].show(bids, asks)

    def _publish_mark(self, t: int, suffix: str, dt_s: float) -> None:
        arr: list[Any] = []
        all_stream = "!markPrice@arr" + suffix
        want_all = all_stream in self.interest
        for b in self.books.values():
            if dt_s > 0 and not b.rate_pinned and self.config.funding_rate_wander > 0:
                self.wander_rate(b, dt_s)
            if b.frozen:
                continue
            stream = b.lower + "@markPrice" + suffix
            if stream in self.interest or want_all:
                frame = (render_mark, b, b.mark, b.funding_rate, b.next_funding_ms, t)
                if stream in self.interest:
                    self._emit_market(stream, frame)
                arr.append(frame)
        if want_all and arr:
            self._emit_market(all_stream, (render_list, arr))

    # -- faults and truth --------------------------------------------------------------------------

    def jump(self, symbol: str, pct: float, now: int) -> float:
        """Move the mid by ``pct`` percent at once; resting orders crossed by the move fill."""
        b = self.book(symbol)
        if not -100 < pct <= 10_000:   # (NaN too): the mid would not be a price
            raise invalid("pct")
        if b.status != "TRADING":
            raise ValueError(f"{b.symbol} is {b.status}: its market is closed")
        b.mid = b.model.jump(math.log1p(pct / 100.0))
        b.mark = b.mid
        b._mark_dec = None
        b.set_tops()
        b.update_id += 1   # a new book: a snapshot taken now must not share the last event's id
        if b.diff_state:
            b.note_refill()
        b.consumed_bid.clear()
        b.consumed_ask.clear()
        self._sweep_crossed(b, now)
        self._publish_book(b, now)
        return b.mid

    def set_position(self, account: str, symbol: str, amount: str, entry_price: str | None, now: int) -> None:
        acct = self.account(account)
        b = self.book(symbol)
        try:
            steps = int(Decimal(amount) / b.step)
            entry = Decimal(entry_price) if entry_price is not None else b.mark_dec()
        except (InvalidOperation, TypeError) as exc:
            raise invalid("amount") from exc
        pos = acct.position(b.symbol)
        pos.amount = steps
        pos.entry = entry if steps else ZERO
        pos.cost = ZERO
        pos.update_time = now
        if b.symbol in acct.isolated:   # the initial margin at the entry, from the cross wallet
            pos.isolated_wallet = q8(abs(entry * b.step * steps) / self.leverage_of(acct, b.symbol))
        self._emit_account_update(acct, b, "ADJUSTMENT", now, ZERO)

    def set_frozen(self, symbol: str | None, frozen: bool, mode: str = "data") -> list[str]:
        """mode "data": the market stops and its streams go silent (stale data, a fault).
        mode "price": the mid holds still while takers keep trading and frames keep flowing."""
        if mode not in ("data", "price"):
            raise invalid("mode")
        books = [self.book(symbol)] if symbol else list(self.books.values())
        for b in books:
            if b.status != "TRADING":
                continue   # a delisted symbol's market stays stopped (fleet/sim/delisting.py)
            if mode == "data":
                b.frozen = frozen
            else:
                b.price_held = frozen
            b.last_bt = None
        return [b.symbol for b in books]

    def _income(self, acct: Account, symbol: str, kind: str, amount: Decimal, asset: str, t: int,
                trade_id: str) -> None:
        self.tran_id += 1
        acct.income.append({"symbol": symbol, "incomeType": kind, "income": s8(amount), "asset": asset,
                            "info": kind if kind != "FUNDING_FEE" else "FUNDING_FEE", "time": t,
                            "tranId": self.tran_id, "tradeId": trade_id})
        if len(acct.income) > 100000:
            del acct.income[:20000]

    # -- fills and positions -----------------------------------------------------------------------

    def _fill(self, b: Book, o: Order, qty: int, price: int, maker: bool, t: int, trade_id: int) -> None:
        if qty <= 0:
            return
        acct = self.accounts[o.account]
        pos = acct.position(b.symbol)
        px = b.tick * price
        q_dec = b.step * qty
        old = pos.amount
        sign = o.sign
        realized = ZERO
        rate = self.maker_rate if maker else self.taker_rate
        commission = q8(px * q_dec * rate)
        if old == 0 or (old > 0) == (sign > 0):
            total = abs(old) + qty
            pos.entry = q8((pos.entry * abs(old) + px * qty) / total)
            pos.cost += commission
        else:
            closed = qty if qty < abs(old) else abs(old)
            realized = q8((px - pos.entry) * (b.step * closed) * (1 if old > 0 else -1))
            if qty > abs(old):   # a flip: the new side's cost is its share of this fill's fee
                pos.entry = px
                pos.cost = q8(commission * (qty - abs(old)) / qty)
            elif qty == abs(old):
                pos.entry = ZERO
                pos.cost = ZERO
            else:                # the closed share's cost goes with it
                pos.cost = q8(pos.cost * (abs(old) - qty) / abs(old))
        pos.amount = old + sign * qty
        if acct.isolated and b.symbol in acct.isolated:
            self._isolated_fill(acct, b, pos, old, sign * qty, px, t)
        pos.realized += realized
        pos.update_time = t
        pos.commission += commission
        asset = b.spec.margin_asset
        acct.wallet[asset] = acct.wallet.get(asset, ZERO) + realized - commission
        if o.type == "LIMIT" and o.order_id in acct.open:
            acct.open_units[o.symbol][0 if sign > 0 else 1] -= o.price * qty
        o.filled += qty
        o.cum_quote += px * q_dec
        o.update_time = t
        if b.diff_state:
            b.note_ours(o)
        if o.filled >= o.orig:
            o.status = "FILLED"
            self._remove_resting(b, o)
            acct.counters["orders_filled"] += 1
        else:
            o.status = "PARTIALLY_FILLED"
        acct.counters["trades"] += 1
        if realized:
            self._income(acct, b.symbol, "REALIZED_PNL", realized, asset, t, str(trade_id))
        if commission:
            self._income(acct, b.symbol, "COMMISSION", -commission, asset, t, str(trade_id))
        acct.trades.append(Trade(trade_id, o.order_id, b.symbol, o.side, b.price_str(price), b.qty_str(qty),
                                 s8(px * q_dec), s8(commission), asset, s8(realized), maker, t))
        if len(acct.trades) > 100000:
            del acct.trades[:20000]
        if self.on_fill is not None:
            self.on_fill(b, o, qty, price, maker, t, commission, realized)
        self._emit_user(acct.name, (render_trade_lite, b, o, o.orig, o.price, price, qty, trade_id, maker, t))
        self._emit_account_update(acct, b, "ORDER", t, ZERO)
        self._emit_order_update(acct, b, o, "TRADE", t, last_qty=qty, last_price=price, commission=commission,
                                trade_id=trade_id, maker=maker, realized=realized)
        if old and (pos.amount == 0 or (old > 0) != (pos.amount > 0)):
            self._cap_reduce_only(acct, b, t)

    def _emit_account_update(self, acct: Account, b: Book, reason: str, t: int, change: Decimal) -> None:
        pos = acct.position(b.symbol)
        asset = b.spec.margin_asset
        cross = self.cross_wallet(acct, asset) if acct.isolated else acct.wallet.get(asset, ZERO)
        self._emit_user(acct.name, (render_account_update, b, reason, acct.wallet.get(asset, ZERO), cross,
                                    change, pos.amount, pos.entry, pos.realized, b.mark, t,
                                    self.isolated_wallet(acct, b.symbol), pos.break_even(b.step)))

    @staticmethod
    def _open_insert(acct: Account, o: Order) -> None:
        acct.open[o.order_id] = o
        acct.by_cid[o.client_id] = o
        acct.open_count[o.symbol] = acct.open_count.get(o.symbol, 0) + 1
        if o.type == "LIMIT":
            units = acct.open_units.get(o.symbol)
            if units is None:
                units = acct.open_units[o.symbol] = [0, 0]
            units[0 if o.sign > 0 else 1] += o.price * (o.orig - o.filled)

    @staticmethod
    def _open_remove(acct: Account, o: Order) -> None:
        if acct.open.pop(o.order_id, None) is None:
            return
        if acct.by_cid.get(o.client_id) is o:
            del acct.by_cid[o.client_id]
        acct.open_count[o.symbol] -= 1
        if o.type == "LIMIT":
            acct.open_units[o.symbol][0 if o.sign > 0 else 1] -= o.price * (o.orig - o.filled)

    def _emit_order_update(self, acct: Account, b: Book, o: Order, exec_type: str, t: int, *,
                           last_qty: int = 0, last_price: int = 0, commission: Decimal = ZERO,
                           trade_id: int = 0, maker: bool = False, realized: Decimal = ZERO,
                           modify_id: int | None = None) -> None:
        units = acct.open_units.get(b.symbol) or (0, 0)
        self._emit_user(acct.name, (render_order_update, b, o, exec_type, o.status, o.orig, o.price, o.filled,
                                    o.cum_quote, units[0], units[1], last_qty, last_price, commission, trade_id,
                                    maker, realized, o.expire_reason, t, modify_id))

    def _remove_resting(self, b: Book, o: Order, closing: bool = True) -> None:
        b.update_id += 1
        if b.diff_state:
            b.note_ours(o)
        levels = b.bids if o.sign > 0 else b.asks
        lst = levels.get(o.price)
        if lst is not None:
            try:
                lst.remove(o)
            except ValueError:
                pass
            if not lst:
                del levels[o.price]
                if o.sign > 0:
                    if o.price == b.our_bid:
                        b.our_bid = max(levels) if levels else 0
                elif o.price == b.our_ask:
                    b.our_ask = min(levels) if levels else NO_ASK
        self._open_remove(self.accounts[o.account], o)
        if closing:
            b.keep_closed(o)

    def _rest(self, b: Book, o: Order) -> None:
        b.update_id += 1
        if b.diff_state:
            b.note_ours(o)
        if o.sign > 0:
            o.ahead = b.synth_bid(o.price)
            b.bids.setdefault(o.price, []).append(o)
            if o.price > b.our_bid:
                b.our_bid = o.price
        else:
            o.ahead = b.synth_ask(o.price)
            b.asks.setdefault(o.price, []).append(o)
            if o.price < b.our_ask:
                b.our_ask = o.price

    # -- parameter parsing --------------------------------------------------------------------------

    @staticmethod
    def _price_ticks(b: Book, raw: str | None, name: str = "price") -> int:
        """A price in ticks: well formed, within the precision, on the tick; an order's ``price`` also
        within PRICE_FILTER's minPrice and maxPrice (-4013, -4002)."""
        if raw is None or raw == "":
            raise missing(name)
        units = fast_units(raw, b.price_places)
        if units:  # the common, well-formed case without Decimal; anything else takes the careful path
            if name == "price":
                Engine._price_range(units, b.min_price_units, b.max_price_units)
            if units % (b.price_mult * b.tick_multiple):
                raise SimApiError(-4014, "Price not increased by tick size.")
            return units // b.price_mult
        check_number(raw, name)
        try:
            d = Decimal(raw)
        except InvalidOperation as exc:
            raise missing(name) from exc
        if not d.is_finite() or d <= 0:
            raise SimApiError(-4001 if name == "price" else -1102, "Price less than 0." if name == "price"
                              else f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed.")
        if decimals_in(raw) > b.price_precision:
            raise SimApiError(-1111, "Precision is over the maximum defined for this asset.")
        if name == "price":
            Engine._price_range(d, b.min_price, b.max_price)
        ratio = d / b.tick
        if ratio != ratio.to_integral_value() or int(ratio) % b.tick_multiple:
            raise SimApiError(-4014, "Price not increased by tick size.")
        return int(ratio)

    @staticmethod
    def _price_range(price: int | Decimal, low: int | Decimal, high: int | Decimal) -> None:
        """PRICE_FILTER: price >= minPrice (``low``), price <= maxPrice (``high``), all in one unit."""
        if price < low:
            raise SimApiError(-4013, "Price less than min price.")
        if price > high:
            raise SimApiError(-4002, "Price greater than max price.")

    @staticmethod
    def _match_price(b: Book, buy: bool, pm: str, params: dict[str, str]) -> int:
        """The price ``priceMatch`` gives an order of this side now (it is sent instead of ``price``)."""
        where = PRICE_MATCH.get(pm)
        if where is None:
            raise SimApiError(-5037, "Invalid price match")
        if params.get("price"):
            raise SimApiError(-1106, "Parameter 'price' sent when not required.")
        queue, n = where
        price = b.nth_price(buy if queue else not buy, n)
        if price is None:   # pragma: no cover - the synthetic book always holds levels
            raise invalid("priceMatch")
        return price

    @staticmethod
    def _qty_steps(b: Book, raw: str | None, market: bool) -> int:
        if raw is None or raw == "":
            raise missing("quantity")
        units = fast_units(raw, b.qty_places)
        if units:
            if units % b.qty_mult:
                raise SimApiError(-4023, "Qty not increased by step size.")
            steps = units // b.qty_mult
            if market:
                return Engine._market_lot(b, steps)
            if steps < b.min_qty_steps:
                raise SimApiError(-4004, "Quantity less than min quantity.")
            if steps > b.max_steps:
                raise SimApiError(-4005, "Quantity greater than max quantity.")
            return steps
        check_number(raw, "quantity")
        try:
            d = Decimal(raw)
        except InvalidOperation as exc:
            raise missing("quantity") from exc
        if not d.is_finite() or d <= 0:
            raise SimApiError(-4003, "Quantity less than or equal to zero.")
        if decimals_in(raw) > b.qty_precision:
            raise SimApiError(-1111, "Precision is over the maximum defined for this asset.")
        ratio = d / b.step
        if ratio != ratio.to_integral_value():
            raise SimApiError(-4023, "Qty not increased by step size.")
        if market:
            return Engine._market_lot(b, int(ratio))
        if d < b.min_qty:
            raise SimApiError(-4004, "Quantity less than min quantity.")
        if d > b.max_qty:
            raise SimApiError(-4005, "Quantity greater than max quantity.")
        return int(ratio)

    @staticmethod
    def _market_lot(b: Book, steps: int) -> int:
        """MARKET_LOT_SIZE, checked like LOT_SIZE (same codes) on its own step, minimum and maximum."""
        if b.market_step_mult != 1 and steps % b.market_step_mult:
            raise SimApiError(-4023, "Qty not increased by step size.")
        if steps < b.market_min_steps:
            raise SimApiError(-4003 if steps <= 0 else -4004,
                              "Quantity less than or equal to zero." if steps <= 0 else "Quantity less than min quantity.")
        if steps > b.market_max_steps:
            raise SimApiError(-4005, "Quantity greater than max quantity.")
        return steps

    @staticmethod
    def _bool(params: dict[str, str], name: str) -> bool:
        raw = params.get(name)
        if raw is None or raw == "":
            return False
        low = raw.lower()
        if low == "true":
            return True
        if low == "false":
            return False
        raise invalid(name)

    def _find(self, acct: Account, b: Book, params: dict[str, str]) -> Order:
        oid = params.get("orderId")
        cid = params.get("origClientOrderId")
        if oid:
            try:
                order_id = int_param(params, "orderId")
            except SimApiError:
                raise missing("orderId") from None  # Binance: "...was not sent, was empty/null, or malformed."
            o = acct.open.get(order_id)
            if o is None and (o := b.closed.get(order_id)) is not None and not still_listed(o, self.now_ms):
                o = None
            if o is None or o.account != acct.name or o.symbol != b.symbol:
                raise SimApiError(-2013, "Order does not exist.")
            return o
        if cid:
            o = acct.by_cid.get(cid)
            if o is not None and o.symbol == b.symbol:
                return o
            o = b.closed_by_cid.get((acct.name, cid))
            if o is not None and still_listed(o, self.now_ms):
                return o
            raise SimApiError(-2013, "Order does not exist.")
        raise SimApiError(-1102, "Param 'orderId' or 'origClientOrderId' must be sent, but both were empty/null!")

    # -- margin -------------------------------------------------------------------------------------

    def _available_fast(self, acct: Account, asset: str) -> float:
        """available_balance in floats: the pre-trade margin check runs on every order."""
        isolated = acct.isolated
        avail = float(self.cross_wallet(acct, asset) if isolated else acct.wallet.get(asset, ZERO))
        books = self.books
        for symbol, pos in acct.positions.items():
            if pos.amount and not (isolated and symbol in isolated):
                b = books[symbol]
                if b.spec.margin_asset == asset:
                    qty = pos.amount * b.step_f
                    avail += (b.mark - float(pos.entry)) * qty - abs(qty) * b.mark / self.leverage_of(acct, symbol)
        for symbol, units in acct.open_units.items():
            if units[0] or units[1]:
                b = books[symbol]
                if b.spec.margin_asset == asset:
                    avail -= self._orders_margin_f(acct, b) / self.leverage_of(acct, symbol)
        return avail

    def _orders_margin_f(self, acct: Account, b: Book, sign: int = 0, add_f: float = 0.0) -> float:
        """The symbol's open orders' initial margin in floats, times the leverage (views.order_margin), with
        ``add_f`` more notional on the side of ``sign``."""
        units = acct.open_units.get(b.symbol) or (0, 0)
        unit = b.tick_f * b.step_f
        bids = units[0] * unit + (add_f if sign > 0 else 0.0)
        asks = units[1] * unit + (add_f if sign < 0 else 0.0)
        pos = acct.positions.get(b.symbol)
        held = pos.amount * b.step_f * b.mark if pos is not None else 0.0
        return max(0.0, max(abs(held + bids), abs(held - asks)) - abs(held))

    # -- trading ------------------------------------------------------------------------------------

    def new_order(self, account: str, params: dict[str, str], now: int, test: bool = False) -> dict[str, Any]:
        """POST /fapi/v1/order: the response JSON (the ACK snapshot or the RESULT after matching)."""
        acct = self.account(account)
        try:
            o, ack = self._new_order(acct, params, now, test, True)
        except SimApiError:
            acct.counters["orders_rejected"] += 1
            raise
        if o is None:
            return {}
        return ack if ack is not None else self.order_json(self.books[o.symbol], o, "result")

    def place_order(self, account: str, params: dict[str, str], now: int) -> Order:
        """The in-process path: like :meth:`new_order`, returning the live Order instead of JSON."""
        acct = self.account(account)
        try:
            o, _ = self._new_order(acct, params, now, False, False)
        except SimApiError:
            acct.counters["orders_rejected"] += 1
            raise
        assert o is not None
        return o

    @staticmethod
    def check_order_head(params: dict[str, str], dual_side: bool = False) -> tuple[str, str]:
        """An order's side and type (present, the side valid), its position side (against the account's
        mode) and response type: as every order route refuses them. Returns (side, type)."""
        side = params.get("side")
        if not side:
            raise missing("side")
        if side not in ("BUY", "SELL"):
            raise SimApiError(-1117, "Invalid side.")
        otype = params.get("type")
        if not otype:
            raise missing("type")
        ps = params.get("positionSide", "BOTH")
        if ps not in ("BOTH", "LONG", "SHORT"):
            raise SimApiError(-4060, "Invalid position side.")
        if (ps == "BOTH") == dual_side:
            raise SimApiError(-4061, "Order's position side does not match user's setting.")
        if dual_side:
            raise SimApiError(-1020, "Hedge Mode positions are not simulated: switch the account to one-way mode "
                                     "(POST /fapi/v1/positionSide/dual dualSidePosition=false).")
        if params.get("newOrderRespType", "ACK") not in ("ACK", "RESULT"):
            raise SimApiError(-1136, "Invalid newOrderRespType.")
        if params.get("selfTradePreventionMode", DEFAULT_STP) not in STP_MODES:
            raise SimApiError(-5039, "Invalid self trade prevention mode.")
        return side, otype

    def _new_order(self, acct: Account, params: dict[str, str], now: int, test: bool,
                   want_json: bool, triggered: bool = False) -> tuple[Order | None, dict[str, Any] | None]:
        """A new order; ``triggered``: one a conditional order placed when it triggered (its goodTillDate
        and priceMatch were checked when the conditional order was placed)."""
        b = self.book(params.get("symbol"))
        side, otype = self.check_order_head(params, acct.dual_side)
        if b.status != "TRADING":
            raise not_trading()
        if otype not in ("LIMIT", "MARKET"):
            if otype in ALGO_TYPES:
                raise SimApiError(-4120, "Order type not supported for this endpoint. Please use the Algo Order API endpoints instead.")
            raise SimApiError(-1116, "Invalid orderType.")
        resp_type = params.get("newOrderRespType", "ACK")
        reduce_only = self._bool(params, "reduceOnly")
        cid = params.get("newClientOrderId")
        if cid is not None:
            if not CLIENT_ID_RE.fullmatch(cid):
                raise SimApiError(-4015, "Client order id is not valid.")
            if cid in acct.by_cid:
                raise SimApiError(-4116, "ClientOrderId is duplicated.")
        market = otype == "MARKET"
        pm = params.get("priceMatch")
        if pm == "NONE":
            pm = None
        if pm in PRICE_MATCH_WITHDRAWN and not triggered:   # (a conditional order keeps them)
            raise SimApiError(-5037, "Invalid price match")
        for name in NOT_FOR_LIMIT_OR_MARKET:   # a conditional order's parameters (the Algo Service's now)
            if params.get(name) and (name != "closePosition" or params[name].lower() == "true"):
                raise SimApiError(-1106, f"Parameter '{name}' sent when not required.")
        if market:
            tif = "GTC"
            if params.get("timeInForce"):
                raise SimApiError(-1106, "Parameter 'timeInForce' sent when not required.")
            if params.get("price"):
                raise SimApiError(-1106, "Parameter 'price' sent when not required.")
            if pm:
                raise SimApiError(-5038, "Price match only supports order type: LIMIT, STOP AND TAKE_PROFIT")
            price = 0
        else:
            tif = params.get("timeInForce")
            if not tif:
                raise missing("timeInForce")
            if tif not in ("GTC", "IOC", "FOK", "GTX", "GTD"):
                raise SimApiError(-1115, "Invalid timeInForce.")
            price = (self._match_price(b, side == "BUY", pm, params) if pm
                     else self._price_ticks(b, params.get("price")))
        gtd = (int(params["goodTillDate"]) if triggered else self._good_till(params, now)) if tif == "GTD" else 0
        qty = self._qty_steps(b, params.get("quantity"), market)
        sign = 1 if side == "BUY" else -1
        pos = acct.position(b.symbol)
        self._admit(acct, b, sign, market, price, qty, reduce_only)
        if tif == "GTX":
            if (sign > 0 and price >= b.best_ask()) or (sign < 0 and price <= b.best_bid()):
                raise SimApiError(-5022, "Due to the order could not be executed as maker, the Post Only order will be rejected.")
        stp = params.get("selfTradePreventionMode") or self.config.default_stp
        if tif == "FOK" and not self._fills_whole(acct, b, side, price, qty, reduce_only, stp, now):
            raise SimApiError(-5021, "Due to the order could not be filled immediately, the FOK order has been rejected.")
        if test:
            return None, None
        if cid is None:
            cid = self._token(22)
        self._seq += 1
        o = Order(b.next_order_id, cid, acct.name, b.symbol, side, otype, tif, price, qty, reduce_only, now,
                  self._seq)
        o.gtd = gtd
        o.stp = stp
        if pm:
            o.price_match = pm
        b.next_order_id += 1
        self._open_insert(acct, o)
        acct.counters["orders_placed"] += 1
        ack = self.order_json(b, o, "new") if want_json and resp_type == "ACK" else None
        self._emit_order_update(acct, b, o, "NEW", now)
        crosses = market or (sign > 0 and price >= b.best_ask()) or (sign < 0 and price <= b.best_bid())
        if crosses:
            walk_qty = min(qty, abs(pos.amount)) if reduce_only else qty
            left = self._walk(b, sign > 0, walk_qty, o, None if market else price, now) + qty - walk_qty
            if left > 0 and o.is_open:
                if market or tif in ("IOC", "FOK"):
                    self._expire(acct, b, o, now, "2" if tif == "IOC" else "9")
                else:
                    self._rest(b, o)
            elif o.is_open:  # pragma: no cover - defensive, a walk that left nothing fills the order
                self._rest(b, o)
        elif tif == "IOC" or tif == "FOK":
            self._expire(acct, b, o, now, "2")
        else:
            self._rest(b, o)
        if reduce_only and o.is_open:
            self._cap_reduce_only(acct, b, now)
        if gtd and o.is_open:
            self._gtd_push(o)
        return o, ack

    @staticmethod
    def _good_till(params: dict[str, str], now: int) -> int:
        """A GTD order's ``goodTillDate``: mandatory, whole seconds (the milliseconds are dropped), more
        than 600 s ahead and before 253402300799000 (year 9999)."""
        gtd = int_param(params, "goodTillDate")
        if gtd is None:
            raise missing("goodTillDate")
        gtd -= gtd % 1000
        if gtd <= now + 600_000 or gtd >= 253402300799000:
            raise SimApiError(-5040, "The goodTillDate timestamp must be greater than the current time plus 600 "
                                     "seconds and smaller than 253402300799000")
        return gtd

    def _admit(self, acct: Account, b: Book, sign: int, market: bool, price: int, qty: int,
               reduce_only: bool) -> None:
        """A new order's checks of MIN_NOTIONAL, PERCENT_PRICE, reduce-only, the open order count, the
        leverage bracket and margin."""
        mark = b.mark
        if market:
            notional_f = mark * qty * b.step_f
            notional_ok = notional_f >= b.min_notional_f
        else:  # exact, in integer units of tick x step
            notional_f = price * b.tick_f * qty * b.step_f
            notional_ok = price * qty * b.notional_mult >= b.min_notional_units
        if not reduce_only and not notional_ok:
            raise SimApiError(-4164, f"Order's notional must be no smaller than {b.min_notional:f} (unless you choose reduce only).")
        if not market:
            if sign > 0 and price * b.tick_f > mark * b.mult_up_f:
                raise SimApiError(-4016, "Price is higher than mark price multiplier cap.")
            if sign < 0 and price * b.tick_f < mark * b.mult_down_f:
                raise SimApiError(-4024, "Price is lower than mark price multiplier floor.")
        pos = acct.position(b.symbol)
        if reduce_only and (pos.amount == 0 or (pos.amount > 0) == (sign > 0)):
            raise SimApiError(-2022, "ReduceOnly Order is rejected.")
        if acct.open_count.get(b.symbol, 0) >= b.spec.max_num_orders and not market:
            raise SimApiError(-2025, "Reach max open order limit.")
        if not reduce_only:
            self._within_bracket(acct, b, sign, notional_f)   # the side's orders count, the position nets
            # what the order adds to the symbol's orders' margin: nothing while it only offsets the position
            # and the other side's orders need more (Binance's margin FAQ, one-way mode)
            need = self._orders_margin_f(acct, b, sign, notional_f) - self._orders_margin_f(acct, b)
            if need > 0 and need / self.leverage_of(acct, b.symbol) > self._available_fast(acct, b.spec.margin_asset):
                raise SimApiError(-2019, "Margin is insufficient.")

    def _fills_whole(self, acct: Account, b: Book, side: str, price: int, qty: int, reduce_only: bool,
                     stp: str, now: int) -> bool:
        """Whether a FOK order would fill whole at once: the walk it would take, run dry
        (fleet/sim/matching.py). What lies beyond its price and what a reduce-only maker may not fill do
        not count (self-trade prevention takes no effect on a FOK: its own orders fill it); a reduce-only
        FOK larger than its position cannot fill whole."""
        if reduce_only and qty > abs(acct.position(b.symbol).amount):
            return False
        taker = Order(0, "", acct.name, b.symbol, side, "LIMIT", "FOK", price, qty, reduce_only, now, 0)
        taker.stp = stp
        return walk(DryRun(self, b), b, taker.sign > 0, qty, taker, price) == 0

    def _cap_reduce_only(self, acct: Account, b: Book, now: int) -> None:
        """Reduce-only orders may never add up past the position; the excess ones expire."""
        pos = acct.position(b.symbol).amount
        for o in sorted((o for o in acct.open.values() if o.symbol == b.symbol and o.reduce_only),
                        key=lambda o: o.seq):
            if pos == 0 or (pos > 0) == (o.sign > 0):
                self._expire(acct, b, o, now, "4")

    def _expire(self, acct: Account, b: Book, o: Order, now: int, reason: str) -> None:
        # status EXPIRED_IN_MATCH when self-trade prevention expired it ("1" STP, "3" IOC + STP), as
        # Binance's order statuses say; the execution type (x) is EXPIRED either way
        o.status = "EXPIRED_IN_MATCH" if reason in ("1", "3") else "EXPIRED"
        o.expire_reason = reason
        o.update_time = now
        self._remove_resting(b, o)
        acct.counters["orders_expired"] += 1
        self._emit_order_update(acct, b, o, "EXPIRED", now)

    def _cancel(self, acct: Account, b: Book, o: Order, now: int) -> None:
        o.status = "CANCELED"
        o.update_time = now
        self._remove_resting(b, o)
        acct.counters["orders_cancelled"] += 1
        self._emit_order_update(acct, b, o, "CANCELED", now)

    def _cancel_all(self, acct: Account, b: Book, now: int) -> int:
        orders = sorted((o for o in acct.open.values() if o.symbol == b.symbol), key=lambda o: o.seq)
        for o in orders:
            self._cancel(acct, b, o, now)
        return len(orders)

    def _expire_all(self, acct: Account, b: Book, now: int, reason: str) -> None:
        """The exchange itself ends every open order of ``acct`` on ``b``: EXPIRED with Binance's expire
        reason (``er`` "5" the account liquidated, "7" the symbol delisted), its conditional orders
        EXPIRED too (the Algo Service's "canceled by the system"; CANCELED is the user's)."""
        for o in sorted((o for o in acct.open.values() if o.symbol == b.symbol), key=lambda o: o.seq):
            self._expire(acct, b, o, now, reason)
        for a in [a for a in self.algo.open.values() if a.account == acct.name and a.symbol == b.symbol]:
            self.algo._close(a, "EXPIRED", now)

    def cancel_order(self, account: str, params: dict[str, str], now: int) -> dict[str, Any]:
        o = self.cancel(account, params, now)
        return self.order_json(self.books[o.symbol], o, "cancel")

    def cancel(self, account: str, params: dict[str, str], now: int) -> Order:
        """The in-process path of DELETE /fapi/v1/order: returns the cancelled Order."""
        acct = self.account(account)
        b = self.book(params.get("symbol"))
        try:
            o = self._find(acct, b, params)
        except SimApiError as exc:
            if exc.code == -2013:
                raise SimApiError(-2011, "Unknown order sent.") from None
            raise
        if not o.is_open:
            raise SimApiError(-2011, "Unknown order sent.")
        self._cancel(acct, b, o, now)
        return o

    def cancel_all(self, account: str, params: dict[str, str], now: int) -> dict[str, Any]:
        acct = self.account(account)
        b = self.book(params.get("symbol"))
        self._cancel_all(acct, b, now)
        return {"code": 200, "msg": "The operation of cancel all open order is done."}

    def modify_order(self, account: str, params: dict[str, str], now: int) -> dict[str, Any]:
        acct = self.account(account)
        b = self.book(params.get("symbol"))
        side = params.get("side")
        if not side:
            raise missing("side")
        if side not in ("BUY", "SELL"):
            raise SimApiError(-1117, "Invalid side.")
        if not params.get("quantity"):
            raise missing("quantity")
        pm = params.get("priceMatch")
        if pm == "NONE":
            pm = None
        if pm in PRICE_MATCH_WITHDRAWN:
            raise SimApiError(-5037, "Invalid price match")
        if not pm and not params.get("price"):
            raise missing("price")
        modify_id = int_param(params, "modifyId")   # the caller's own, echoed (not checked for uniqueness)
        if modify_id is not None and not -(2**63) <= modify_id < 2**63:   # a LONG
            raise invalid("modifyId")
        # reduceOnly on an amendment only validates: true skips MIN_NOTIONAL for a reduce-only order
        # (as its placement did), and is refused for another; omitted or false, MIN_NOTIONAL applies
        reduce_only = self._bool(params, "reduceOnly")
        if b.status != "TRADING":
            raise amend_not_trading()
        o = self._find(acct, b, params)
        if not o.is_open:
            raise SimApiError(-2013, "Order does not exist.")
        if o.type != "LIMIT":
            raise SimApiError(-4120, "Only LIMIT orders can be modified.")
        if side != o.side:
            raise SimApiError(-4061, "Order side does not match the original order.")
        price = self._match_price(b, o.sign > 0, pm, params) if pm else self._price_ticks(b, params.get("price"))
        qty = self._qty_steps(b, params.get("quantity"), False)
        if price == o.price and qty == o.orig:
            raise SimApiError(-5027, "No need to modify the order.")
        if o.modifies >= self.max_modifies:
            raise SimApiError(-5026, "Exceed maximum modify order limit.")
        if reduce_only and not o.reduce_only:
            raise SimApiError(-5047, "The original order is not a reduce-only order")
        if not reduce_only and price * qty * b.notional_mult < b.min_notional_units:
            raise SimApiError(-5029, f"Order's notional must be no smaller than {b.min_notional:f}")  # an amendment's own code
        if o.sign > 0 and price * b.tick_f > b.mark * b.mult_up_f:
            raise SimApiError(-4016, "Price is higher than mark price multiplier cap.")
        if o.sign < 0 and price * b.tick_f < b.mark * b.mult_down_f:
            raise SimApiError(-4024, "Price is lower than mark price multiplier floor.")
        if not o.reduce_only and price * (qty - o.filled) > o.price * o.remaining:
            self._amend_margin(acct, b, o, price, qty)
        o.modifies += 1
        acct.counters["orders_amended"] += 1
        crosses = (o.sign > 0 and price >= b.best_ask()) or (o.sign < 0 and price <= b.best_bid())
        if qty <= o.filled or (o.tif == "GTX" and crosses):
            self._cancel(acct, b, o, now)
            return self._amended_json(b, o, modify_id)
        self._remove_resting(b, o, closing=False)   # (it rests again, amended)
        self._amend_id += 1
        acct.amendments.append((self._amend_id, o.order_id, now, o.price, price, o.orig, qty, o.modifies, modify_id))
        o.price = price
        o.orig = qty
        o.price_match = pm or "NONE"
        self._open_insert(acct, o)
        o.update_time = now
        self._seq += 1
        o.seq = self._seq
        self._emit_order_update(acct, b, o, "AMENDMENT", now, modify_id=modify_id)
        if crosses:
            left = self._walk(b, o.sign > 0, o.remaining, o, price, now)
            if left > 0 and o.is_open:
                self._rest(b, o)
        else:
            self._rest(b, o)
        return self._amended_json(b, o, modify_id)

    def _amended_json(self, b: Book, o: Order, modify_id: int | None) -> dict[str, Any]:
        """An amendment's answer: the order, and the caller's ``modifyId`` when it sent one."""
        out = self.order_json(b, o, "amend")
        return out if modify_id is None else {**out, "modifyId": modify_id}

    def _amend_margin(self, acct: Account, b: Book, o: Order, price: int, qty: int) -> None:
        """An amendment that holds more notional than the order did must fit the leverage's allowance
        (-2027) and needs what it adds to the orders' initial margin, as a new order does: -2019 otherwise."""
        extra = (price * (qty - o.filled) - o.price * o.remaining) * b.tick_f * b.step_f
        self._within_bracket(acct, b, o.sign, extra)
        need = self._orders_margin_f(acct, b, o.sign, extra) - self._orders_margin_f(acct, b)
        if need > 0 and need / self.leverage_of(acct, b.symbol) > self._available_fast(acct, b.spec.margin_asset):
            raise SimApiError(-2019, "Margin is insufficient.")

    def _within_bracket(self, acct: Account, b: Book, sign: int, add_f: float) -> None:
        """-2027 when ``add_f`` more notional on the side of ``sign`` would take the position and the
        orders resting on that side beyond what the leverage allows (fleet/sim/brackets.py). Reduce-only
        orders resting on the side count, as they do for margin. In floats, as the margin check: half a
        unit of tick x step of slack keeps an order landing on the cap exactly from being refused."""
        units = acct.open_units.get(b.symbol)
        resting = units[0 if sign > 0 else 1] * b.tick_f * b.step_f if units else 0.0
        held = sign * acct.position(b.symbol).amount * b.step_f * b.mark
        cap = b.brackets.max_notional_f(self.leverage_of(acct, b.symbol))
        if held + resting + add_f > cap + b.half_unit_f:
            raise SimApiError(-2027, "Exceeded the maximum allowable position at current leverage.")

    def countdown_cancel_all(self, account: str, params: dict[str, str], now: int) -> dict[str, Any]:
        acct = self.account(account)
        b = self.book(params.get("symbol"))
        raw = params.get("countdownTime")
        if raw is None or raw == "":
            raise missing("countdownTime")
        try:
            ms = parse_long(raw)
        except ValueError as exc:
            raise missing("countdownTime") from exc
        if ms < 0:
            raise invalid("countdownTime")
        if ms == 0:
            acct.countdowns.pop(b.symbol, None)
        else:
            acct.countdowns[b.symbol] = now + ms
        self._recompute_deadline()
        return {"symbol": b.symbol, "countdownTime": str(ms)}

    def query_order(self, account: str, params: dict[str, str], open_only: bool = False) -> dict[str, Any]:
        acct = self.account(account)
        b = self.book(params.get("symbol"))
        o = self._find(acct, b, params)
        if open_only and not o.is_open:
            raise SimApiError(-2013, "Order does not exist.")
        return self.order_json(b, o)

    def set_leverage(self, account: str, params: dict[str, str], now: int) -> dict[str, Any]:
        acct = self.account(account)
        b = self.book(params.get("symbol"))
        raw = params.get("leverage")
        if not raw:
            raise missing("leverage")
        try:
            lev = parse_long(raw)
        except ValueError as exc:
            raise missing("leverage") from exc
        if not 1 <= lev <= b.brackets.max_leverage:
            raise SimApiError(-4028, f"Leverage {lev} is not valid")
        old = self.leverage_of(acct, b.symbol)
        if lev != old:
            self._leverage_allows(acct, b, old, lev)
        acct.leverage[b.symbol] = lev
        self._emit_user(acct.name, {"e": "ACCOUNT_CONFIG_UPDATE", "E": now, "T": now,
                                    "ac": {"s": b.symbol, "l": lev}})
        return {"leverage": lev, "maxNotionalValue": f"{b.brackets.max_notional(lev):f}", "symbol": b.symbol}

    def _leverage_allows(self, acct: Account, b: Book, old: int, lev: int) -> None:
        """A new leverage must allow what the account holds on each side (-2027) and, lower, find the
        margin it takes more: -4161 with an isolated position, -2028 when the cross side lacks it."""
        held = b.mark_dec() * b.step * acct.position(b.symbol).amount
        units = acct.open_units.get(b.symbol) or (0, 0)
        bids, asks = b.notional_unit * units[0], b.notional_unit * units[1]
        if max(held + bids, asks - held) > b.brackets.max_notional(lev):
            raise SimApiError(-2027, "Exceeded the maximum allowable position at current leverage.")
        if lev > old:
            return
        if held and b.symbol in acct.isolated:
            raise SimApiError(-4161, "Leverage reduction is not supported in Isolated Margin Mode with open positions")
        more = max(abs(held + bids), abs(held - asks)) * (Decimal(1) / lev - Decimal(1) / old)
        if more > self.available_balance(acct, b.spec.margin_asset):
            raise SimApiError(-2028, "Leverage is smaller than permitted: insufficient margin balance.")

    # -- listen keys --------------------------------------------------------------------------------

    def listen_key_start(self, account: str, now: int) -> str:
        acct = self.account(account)
        if not acct.listen_key or now >= acct.listen_key_expiry:
            # 64 letters and digits of both cases, as Binance's; drawn anew at every start (one seed drew the
            # same keys in every run: a client's key saved from the last run was taken as its own)
            acct.listen_key = "".join(secrets.choice(LISTEN_KEY_ALPHABET) for _ in range(64))
        acct.listen_key_expiry = now + int(self.config.listen_key_ttl_s * 1000)
        self._recompute_deadline()
        return acct.listen_key

    def listen_key_keepalive(self, account: str, now: int) -> str:
        acct = self.account(account)
        if not acct.listen_key or now >= acct.listen_key_expiry:
            raise SimApiError(-1125, "This listenKey does not exist.")
        acct.listen_key_expiry = now + int(self.config.listen_key_ttl_s * 1000)
        self._recompute_deadline()
        return acct.listen_key

    def listen_key_close(self, account: str) -> None:
        acct = self.account(account)
        acct.listen_key = None
        acct.listen_key_expiry = 0
        self._recompute_deadline()

    def expire_listen_key(self, account: str, now: int) -> str | None:
        acct = self.account(account)
        key = acct.listen_key
        if key is None:
            return None
        self._emit_user(acct.name, {"e": "listenKeyExpired", "E": str(now), "listenKey": key})   # a string, as sent
        acct.listen_key = None
        acct.listen_key_expiry = 0
        self._recompute_deadline()
        return key

    def account_of_listen_key(self, key: str) -> Account | None:
        for acct in self.accounts.values():
            if acct.listen_key == key and self.now_ms < acct.listen_key_expiry:
                return acct
        return None
