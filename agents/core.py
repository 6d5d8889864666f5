"""AgentCore: the one synchronous step the runtime calls; store, strategy, guard, grinding, drawdown, orders.

The runtime feeds ``on_event(event, now_ms)`` with every stream event, calls ``quote(now_ms)`` every
``quote_interval_ms`` (or when ``should_quote`` says the mid moved), sends the returned batches in
order, and reports back: ``on_sent`` *before* awaiting a request, then ``on_order_info`` (REST
answer) or ``on_rejected`` (error code). Every order, whoever proposes it, passes the RiskGuard.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Iterator

from fleet.binance.enums import OrderType, TimeInForce
from fleet.binance.events import BUY, SELL, AccountUpdate, FundingFee, MarketEvent, MarkPrice, UserEvent
from fleet.binance.filters import SymbolFilters
from fleet.binance.models import AlgoOrderInfo, OrderInfo, PositionInfo
from fleet.config import SymbolParams

from .grinding import GrindDecision, GrindingEngine
from .orders import (
    Amend,
    Batch,
    Cancel,
    ClientOrderIds,
    Decision,
    OrderManager,
    OrderReason,
    Place,
    make_batches,
    parse_client_order_id,
)
from .risk import FLATTENING, RUNNING, TWAP_MAX_TRIES, DrawdownBands, RiskGuard, TwapSlice, respace
from .store import Store
from .strategy import GeometricV2, Ladder

GRIND_FILL_TIMEOUT_MS = 30_000
FLATTEN_UNKNOWN_MAX = 2   # flatten market orders answered "unknown" beside which no other goes


def flatten_in_flight(store: Store) -> bool:
    """Whether a flatten order in flight holds the next back: any does, but a market order answered
    "unknown" (its look-up is a recvWindow away, more than a stop's flatten has), up to
    ``FLATTEN_UNKNOWN_MAX`` of them: reduce-only, whichever executes second meets a smaller position and
    cannot turn it."""
    flattens = [o for o in store.orders.values() if o.reason == "flatten"]
    unknown = sum(1 for o in flattens if o.unknown_ms is not None and o.status == "PENDING_NEW"
                  and o.order_type == OrderType.MARKET)   # (one the exchange acknowledged has landed)
    return unknown < len(flattens) or unknown >= FLATTEN_UNKNOWN_MAX


@dataclass(frozen=True, slots=True)
class Actions:
    """One cycle's requests in sending order (batches), and the ladder they aim at."""

    batches: tuple[Batch, ...]
    ladder: Ladder | None = None
    refused: int = 0

    def __iter__(self) -> Iterator[Decision]:
        for b in self.batches:
            yield from b.items

    def __bool__(self) -> bool:
        return bool(self.batches)

    def __len__(self) -> int:
        return sum(len(b.items) for b in self.batches)




def market_pieces(filters: SymbolFilters, store: Store, max_notional: float, qty_steps: int) -> list[int]:
    """Reduce-only MARKET orders for ``qty_steps``: on MARKET_LOT_SIZE, and each within the guard's
    ``max_order_notional`` at the reference price (one order above it would be refused every cycle:
    a flatten or a drawdown cut of a big position would never go)."""
    ref = store.mark or store.mid
    cap = int(max_notional / (ref * store.step) * (1 - 1e-9)) if ref > 0.0 else None
    return filters.market_split(qty_steps, cap)


def rest_price_ticks(filters: SymbolFilters, ref: float, price_band: float, side: str, qty: int) -> int | None:
    """The price of a flatten's rest under one market step or minQty, a reduce-only IOC limit halfway to
    the price band's edge (inside the guard's band and PERCENT_PRICE); None if it cannot go."""
    if ref <= 0.0 or qty < filters.min_qty_steps():
        return None
    edge = price_band * 0.5
    px = filters.price_ticks_floor(ref * (1 - edge)) if side == SELL else filters.price_ticks_ceil(ref * (1 + edge))
    return px if px > 0 else None


class AgentCore:
    """The pure trading core of one symbol agent (no I/O, no clock: ``now_ms`` is passed in)."""

    def __init__(
        self,
        symbol: str,
        params: SymbolParams,
        filters: SymbolFilters,
        epoch: int,
        *,
        start_seq: int = 0,
    ) -> None:
        if filters.symbol != symbol:
            raise ValueError(f"filters are for {filters.symbol!r}, not for the agent's symbol {symbol!r}")
        self.symbol = symbol
        self.params = params
        self.filters = filters
        self.epoch = epoch
        self.store = Store(symbol, filters, params)
        self.strategy = GeometricV2(params, filters)
        self.guard = RiskGuard(params, filters, self.store)
        self.drawdown = self._drawdown_bands(params)
        self.grinding = GrindingEngine(params, filters)
        self.ids = ClientOrderIds(symbol, epoch, start_seq)
        self.manager = OrderManager(params.orders, self.ids)
        self.twap: list[TwapSlice] = []
        self.twap_dropped = 0  # slices given up after TWAP_MAX_TRIES refusals
        self.twap_requeued = 0  # slices put back in the plan: not sent (the budget, the order gate) or a 429
        self._plan_sent: set[str] = set()   # client ids of the plan's slices sent (``slice_back``)
        self._grind: tuple[GrindDecision, str, int] | None = None
        self.last_ladder: Ladder | None = None
        self.last_quote_ms = -(10**18)
        self._last_quote_mid = 0.0
        self._interval_ms = params.base.quote_interval_ms
        self._requote_move = params.base.requote_move_fraction * params.base.min_spread
        self.orders_sent = {"place": 0, "amend": 0, "cancel": 0}
        self.cycles = 0
        self.cap_cancels = 0  # orders cancelled because the worst case was already beyond the cap
        self.cancel_retries = 0  # cancels sent again after an ambiguous answer

    # ------------------------------------------------------------------ inputs

    def on_event(self, event: MarketEvent | UserEvent, now_ms: int) -> bool:
        """Apply one stream event; on mark/account changes also run the drawdown check."""
        changed = self.store.apply(event)
        if changed and isinstance(event, (MarkPrice, AccountUpdate, FundingFee)):
            self.check_drawdown(now_ms)
        return changed

    def check_drawdown(self, now_ms: int) -> None:
        s = self.store
        plan = self.drawdown.check(s.drawdown_pct(), s.position_steps, now_ms)
        if plan is not None:
            self.twap, self._plan_sent = list(plan.slices), set()

    def on_sent(self, decision: Decision, now_ms: int) -> None:
        """The runtime is sending ``decision`` (call before awaiting it): it counts as pending now."""
        if isinstance(decision, Place):
            self.store.on_sent(decision, now_ms)
            self.orders_sent["place"] += 1
        elif isinstance(decision, Amend):
            self.store.on_amend_sent(decision, now_ms)
            self.orders_sent["amend"] += 1
        else:
            self.store.on_cancel_sent(decision, now_ms)
            self.orders_sent["cancel"] += 1

    def on_rejected(self, decision: Decision, code: int, now_ms: int = 0) -> None:
        """The exchange refused ``decision`` with error ``code``."""
        if isinstance(decision, Place):
            self.store.on_rejected(decision.client_order_id, code, now_ms)
        elif isinstance(decision, Amend):
            self.store.on_amend_rejected(decision.client_order_id, code, decision.order_id, now_ms)
        else:
            self.store.on_cancel_rejected(decision.client_order_id, code, decision.order_id, now_ms)

    def on_outcome_unknown(self, decision: Decision, now_ms: int) -> None:
        """The answer to ``decision`` was ambiguous (it may have executed, even later): it stays
        counted until a frame or a look-up past its recvWindow settles it (never read as refused)."""
        self.store.on_outcome_unknown(decision.client_order_id, now_ms, isinstance(decision, Cancel))

    def slice_back(self, decision: Decision) -> bool:
        """A drawdown slice that did not reach the exchange (held by the budget or the order gate, a 429)
        goes back at the head of the plan, due at the next slice time. True if ``decision`` was one."""
        if not isinstance(decision, Place) or decision.client_order_id not in self._plan_sent:
            return False   # (a slice of a plan a deeper band replaced since: the new plan sized it already)
        self._plan_sent.discard(decision.client_order_id)
        due = self.last_quote_ms + max(self.drawdown.interval_ms, 1000)   # (a 0 interval: not every cycle)
        self.twap.insert(0, TwapSlice(due, decision.side, decision.qty_steps))
        self.twap_requeued += 1
        return True

    def on_not_sent(self, decision: Decision) -> None:
        """``on_sent`` was called but the request never left (rate budget, shutdown): undo it, without
        counting an exchange rejection."""
        self.store.on_not_sent(decision)
        kind = "place" if isinstance(decision, Place) else "amend" if isinstance(decision, Amend) else "cancel"
        self.orders_sent[kind] -= 1

    def on_order_info(self, info: OrderInfo) -> bool:
        """A REST order object (the answer to place/modify/cancel, or a query)."""
        return self.store.on_order_info(info)

    def reset_from_snapshot(
        self, position: PositionInfo | None, open_orders: Iterable[OrderInfo], now_ms: int,
        wallet_balance: float | None = None, listed_at_ms: int | None = None,
        algo_orders: Iterable[AlgoOrderInfo] | None = None,
    ) -> None:
        self.store.reset_from_snapshot(position, open_orders, now_ms, wallet_balance=wallet_balance,
                                       listed_at_ms=listed_at_ms, algo_orders=algo_orders)

    def apply_params(self, params: SymbolParams) -> None:
        """New parameters, live: strategy, guard limits, grinding and drawdown rules, tolerances and
        timers change; orders, position, prices, funding, halt state and the grinding/drawdown
        history stay. Each part hands itself over (``with_params``), carrying its own state."""
        self.params = params
        self.store = self.store.with_params(params)
        self.strategy = self.strategy.with_params(params)
        self.guard = self.guard.with_params(params, self.store)
        self.grinding = self.grinding.with_params(params)
        self.drawdown = self.drawdown.with_params(params.drawdown)
        self.manager = self.manager.with_params(params.orders)
        self._interval_ms = params.base.quote_interval_ms
        self._requote_move = params.base.requote_move_fraction * params.base.min_spread

    def take_limits(self, filters: SymbolFilters) -> None:
        """New limits the exchange lists on the same grid (``LIMIT_FIELDS``): the ladder's layers and a flatten's,
        a drawdown cut's and a grind's orders are cut to them from now on; the rest stays."""
        if not filters.same_grid(self.filters):
            raise ValueError(f"{filters.symbol}: a new grid, not new limits alone: it needs a new start")
        self.filters = self.grinding.filters = filters
        self.strategy = GeometricV2(self.params, filters)   # (it keeps no state but its last ladder)

    def _drawdown_bands(self, params: SymbolParams) -> DrawdownBands:
        f = self.filters
        return DrawdownBands(params.drawdown, unit_steps=f.market_unit_steps, min_steps=f.market_min_steps())

    # ------------------------------------------------------------------ modes

    def halt(self, reason: str = "operator") -> None:
        self.guard.halt(reason)

    def flatten(self, reason: str = "operator") -> None:
        self.guard.flatten(reason)

    def resume(self) -> None:
        self.guard.resume()

    def set_reduce_only(self, on: bool) -> None:
        self.guard.set_reduce_only(on)

    # ------------------------------------------------------------------ decisions

    def should_quote(self, now_ms: int) -> bool:
        """Quote interval elapsed, or the mid moved by ``requote_move_fraction`` of layer 0's spread."""
        if now_ms - self.last_quote_ms >= self._interval_ms:
            return True
        m0 = self._last_quote_mid
        mid = self.store.mid
        return bool(m0 and mid and abs(mid - m0) >= self._requote_move * m0)

    def quote(self, now_ms: int, budget: int | None = None) -> Actions:
        """One cycle: ladder (or halt handling), drawdown slices, grinding; every order guarded."""
        self.cycles += 1
        self.last_quote_ms = now_ms
        s = self.store
        g = self.guard
        self._last_quote_mid = s.market.mid
        cancels: list[Cancel] = []
        amends: list[Amend] = []
        places: list[Place] = []
        extra = [0, 0]  # approved this cycle, not yet sent: buy, sell
        refused = 0
        ladder: Ladder | None = None

        self._retry_cancels_into(cancels, now_ms)
        if g.state != RUNNING:
            self._cancel_all_into(cancels, keep_reduce_only=True)
            if g.state == FLATTENING:
                refused += self._flatten_into(places, extra)
        else:
            live_bids, live_asks, other_b, other_s = s.ledger.ladder_view()
            ladder = self._ladder(other_b, other_s)
            if ladder.bids or ladder.asks or live_bids or live_asks:
                diff = self.manager.diff(
                    ladder.bids, ladder.asks, live_bids, live_asks, ladder.center_ticks, budget
                )
                cancels.extend(diff.cancels)
                orders = s.orders
                for a in diff.amends:
                    o = orders.get(a.client_order_id)
                    if o is None:
                        continue
                    if g.check_amend(a, o, extra[0], extra[1]) is None:
                        extra[0 if a.side == BUY else 1] += o.amend_growth(a.qty_steps)
                        amends.append(a)
                    else:
                        refused += 1
                for p in diff.places:
                    if g.check_place(p, extra[0], extra[1]) is None:
                        extra[0 if p.side == BUY else 1] += p.qty_steps
                        places.append(p)
                    else:
                        refused += 1
            self._enforce_cap_into(cancels, amends, extra[0], extra[1])
            self.last_ladder = ladder

        refused += self._twap_into(places, now_ms, extra)
        refused += self._grinding_into(places, cancels, now_ms, extra)
        if g.state == RUNNING and any(p.reduce_only for p in places):   # (halted or flattening, every adding
            self._room_for_reducing(places, cancels, amends, extra)       # order is being cancelled already)
        if not (cancels or amends or places):
            return Actions((), ladder, refused)
        return Actions(make_batches(cancels, places, amends, s.position_steps), ladder, refused)

    def _ladder(self, other_b: int, other_s: int) -> Ladder:
        s = self.store
        m = s.market  # the parts read directly: this runs every cycle
        pos = s.position_book.position_steps
        buy_limit = sell_limit = None
        if not self.guard.may_add_exposure:
            buy_limit = max(0, -pos - other_b) if pos < 0 else 0
            sell_limit = max(0, pos - other_s) if pos > 0 else 0
        return self.strategy.quote(
            m.mid, pos, other_b, other_s, s.funding.shift_rate, m.bid, m.ask, buy_limit, sell_limit
        )

    def _enforce_cap_into(self, cancels: list[Cancel], amends: list[Amend], extra_buy: int = 0,
                          extra_sell: int = 0) -> None:
        """The worst case already beyond the cap: this epoch's adding orders cancelled (``cap_cancels``)."""
        pos = self.store.position_book.position_steps
        self.cap_cancels += cap_cancels(self.store.ledger, self.ids.is_ours, pos, self.guard.cap_steps, cancels,
                                        amends, extra_buy, extra_sell)

    def _room_for_reducing(self, places: list[Place], cancels: list[Cancel], amends: list[Amend],
                           extra: list[int]) -> None:
        """A drawdown slice filled first leaves the orders of its side resting on a smaller position:
        room is made in its own cycle (the next one would, a quote interval later), first by leaving
        out this cycle's new ladder orders of that side, outermost first, then by cancelling resting ones."""
        led, cap = self.store.ledger, self.guard.cap_steps
        pos = self.store.position_book.position_steps
        going = {c.client_order_id for c in cancels}
        reducing = [sum(p.qty_steps for p in places if p.reduce_only and p.side == side) for side in (BUY, SELL)]
        for i, side in enumerate((BUY, SELL)):
            if not reducing[i]:
                continue
            pending = led.pending_buy_steps if side == BUY else led.pending_sell_steps
            leaving = sum(o.contrib for o in led.orders.values() if o.client_order_id in going and o.side == side)
            excess = pending - leaving + extra[i] + reducing[i] - cap + (pos if side == BUY else -pos)
            extra[i] -= excess - trim_places(places, side, excess)   # (it leaves reduce-only orders in place)
        self._enforce_cap_into(cancels, amends, extra[0] + reducing[0], extra[1] + reducing[1])

    def _retry_cancels_into(self, cancels: list[Cancel], now_ms: int | None) -> None:
        """Cancels answered ambiguously go again (``LiveOrder.cancel_retry_due``), given the time."""
        again = self.store.cancels_due_again(now_ms) if now_ms is not None else []
        self.cancel_retries += len(again)
        cancels.extend(again)

    def _cancel_all_into(self, cancels: list[Cancel], keep_reduce_only: bool, in_flight: bool = False) -> None:
        """mmfleet's orders of the symbol (any epoch's): another hand's are counted in the worst case and
        left alone (the desk trading by hand while the agent is halted, another tool's orders); only a
        kill's or a stop's symbol-wide cancel-all at the exchange takes them."""
        going = {c.client_order_id for c in cancels}  # going again: ``_retry_cancels_into``
        for o in self.store.orders.values():
            if o.cancel_sent_ms is not None or o.client_order_id in going:
                continue  # already going
            if parse_client_order_id(o.client_order_id) is None:
                continue  # another hand's
            if not in_flight and (o.unresolved_ms is not None or o.status == "PENDING_NEW"):
                continue  # unknown to the exchange, or not acknowledged yet (next cycle)
            if keep_reduce_only and o.reduce_only:
                continue
            cancels.append(Cancel(o.client_order_id, o.order_id, "halt"))

    def _flatten_into(self, places: list[Place], extra: list[int]) -> int:
        """Reduce-only MARKET orders sized by MARKET_LOT_SIZE (split above its maxQty); what is
        left under one market step or minQty goes as a reduce-only IOC limit at the price band's
        edge (LOT_SIZE's grid), so a flatten can finish; not while one is in flight (``flatten_in_flight``)."""
        s = self.store
        pos = s.position_steps
        if pos == 0 or flatten_in_flight(s):
            return 0
        side = SELL if pos > 0 else BUY
        pieces = market_pieces(self.filters, self.store, self.guard.max_notional, abs(pos))
        orders = [Place(self.ids.next(), side, 0, q, "", True, OrderType.MARKET, OrderReason.FLATTEN) for q in pieces]
        rest = abs(pos) - sum(pieces)
        px = rest_price_ticks(self.filters, s.mark or s.mid, self.params.risk.price_band, side, rest) if rest else None
        if px is not None:
            orders.append(Place(self.ids.next(), side, px, rest, TimeInForce.IOC, True, OrderType.LIMIT,
                                OrderReason.FLATTEN))
        passed = [p for p in orders if self.guard.check_place(p, extra[0], extra[1]) is None]
        places.extend(passed)
        return len(orders) - len(passed)

    def _twap_into(self, places: list[Place], now_ms: int, extra: list[int]) -> int:
        """Send the drawdown slice that is due, as reduce-only MARKET orders (``market_pieces``), halted
        or not (risk off: a halt stops quoting, not the bands; a flatten closes all). One
        slice per slice time: after a gap (stream loss, a lapsed lease, ...) the overdue slices are spaced again
        from now at the plan's interval, never sent in one burst. A slice the guard refuses is tried
        again at the next slice time (up to ``TWAP_MAX_TRIES`` attempts)."""
        if not self.twap or self.twap[0].due_ms > now_ms:
            return 0
        refused = 0
        s = self.store
        interval = self.drawdown.interval_ms
        while self.twap and self.twap[0].due_ms <= now_ms:
            sl = self.twap.pop(0)
            pos = s.position_steps
            if (sl.side == SELL and pos <= 0) or (sl.side == BUY and pos >= 0):
                continue  # nothing left to reduce on that side (its time passes to the next slice)
            pieces = market_pieces(self.filters, self.store, self.guard.max_notional, min(sl.qty_steps, abs(pos)))
            if not pieces:
                continue  # under one market step / minQty of what is left: nothing to send
            ok: list[Place] = []
            for q in pieces:
                p = Place(self.ids.next(), sl.side, 0, q, "", True, OrderType.MARKET, OrderReason.DRAWDOWN)
                if self.guard.check_place(p, extra[0], extra[1]) is None:
                    ok.append(p)
            places.extend(ok)   # what passed; a refused rest waits for the next slice time
            self._plan_sent.update(p.client_order_id for p in ok)
            if len(ok) != len(pieces):
                refused += 1
                left = sl.qty_steps - sum(p.qty_steps for p in ok)
                if sl.tries + 1 < TWAP_MAX_TRIES and left > 0:
                    self.twap.insert(0, replace(sl, qty_steps=left, tries=sl.tries + 1))
                else:
                    self.twap_dropped += 1
            self.twap = respace(self.twap, now_ms, interval)
            if interval > 0 or self.twap and self.twap[0].tries > sl.tries:
                break  # one slice per slice time (a retry never runs in the same cycle)
        return refused

    def _grinding_into(self, places: list[Place], cancels: list[Cancel], now_ms: int, extra: list[int]) -> int:
        s = self.store
        eng = self.grinding
        if self._grind is not None:
            dec, cid, started = self._grind
            o = s.get(cid)
            if o is None or (not o.is_open and o.filled_steps == 0):
                self._grind = None
                eng.finish()
                return 0
            if o.is_open:
                if now_ms - started > GRIND_FILL_TIMEOUT_MS:
                    self._grind = None
                    eng.finish()
                return 0
            # The market order is done: re-enter post-only, trimmed to what the guard allows.
            self._grind = None
            eng.finish()
            px, qty = eng.reentry(dec, o.filled_steps, s.mid)
            side = dec.reentry_side
            room = self.guard.room_steps(side, extra[0], extra[1])
            qty = min(qty, room)
            if qty < self.strategy.min_qty_steps or not self.filters.tradable(px, qty):
                return 0
            p = Place(self.ids.next(), side, px, qty, TimeInForce.GTX, False, OrderType.LIMIT, OrderReason.GRIND_REENTRY)
            if self.guard.check_place(p, extra[0], extra[1]) is not None:
                return 1
            extra[0 if side == BUY else 1] += qty
            places.append(p)
            eng.book_saving(dec, o.filled_steps, qty, s.mid, s.predicted_funding)
            return 0
        if self.guard.state != RUNNING or not eng.due(now_ms):
            return 0
        res = eng.check(
            now_ms, s.position_steps, s.mid, s.price_stddev_30m(), s.price_window_span_ms(), s.predicted_funding
        )
        if not isinstance(res, GrindDecision):
            return 0
        # A MARKET order: on the market step, within MARKET_LOT_SIZE's maxQty (one order per grind).
        f = self.filters
        qty = f.market_qty_floor(min(res.qty_steps, f.market_max_steps()))
        if qty < f.market_min_steps():
            eng.undo(now_ms)
            eng.last_skip = "below_market_min_qty"
            return 0
        p = Place(self.ids.next(), res.side, 0, qty, "", True, OrderType.MARKET, OrderReason.GRIND)
        if self.guard.check_place(p, extra[0], extra[1], strict=True) is not None:
            eng.undo(now_ms)
            return 1
        for o in s.orders.values():
            if o.reason == "grind_reentry" and o.cancel_sent_ms is None and not o.cancel_doubt and o.status != "PENDING_NEW":
                cancels.append(Cancel(o.client_order_id, o.order_id, "grind"))
        places.append(p)
        self._grind = (res, p.client_order_id, now_ms)
        return 0

    def enforce_cap(self, now_ms: int | None = None, stale: bool = False) -> Actions:
        """Only the cancels that bring a worst case beyond the cap back inside, and those due again
        (for a runtime that may not quote now: a stream lost, a resync; taking risk off is allowed);
        ``stale``: also the quotes the ladder would move (a lapsed lease holds quoting: ``stale_quotes``)."""
        cancels: list[Cancel] = []
        self._retry_cancels_into(cancels, now_ms)
        if stale and self.guard.state == RUNNING:
            cancels.extend(stale_quotes(self, {c.client_order_id for c in cancels}))
        self._enforce_cap_into(cancels, [])
        if not cancels:
            return Actions(())
        return Actions(make_batches(cancels, (), (), self.store.position_steps))

    def cancel_all(self, in_flight: bool = False, now_ms: int | None = None) -> Actions:
        """Every open order we can cancel now (graceful stop; repeat until ``store.orders`` is empty).

        ``in_flight``: also orders not yet acknowledged or of unknown outcome (cancelled by client
        id; an "unknown order" answer then leaves them counted until they settle); and those due again."""
        cancels: list[Cancel] = []
        self._retry_cancels_into(cancels, now_ms)
        self._cancel_all_into(cancels, keep_reduce_only=False, in_flight=in_flight)
        return Actions(make_batches(cancels, (), (), self.store.position_steps))

    # ------------------------------------------------------------------ views

    @property
    def halt_state(self) -> str:
        return self.guard.state

    def status(self) -> dict[str, Any]:
        """A plain-data summary for the runtime's status endpoint."""
        s = self.store
        lad = self.last_ladder
        return {
            "symbol": self.symbol,
            "epoch": self.epoch,
            "halt_state": self.guard.state,
            "halt_reason": self.guard.halt_reason,
            "reduce_only": self.guard.reduce_only_mode,
            "position": s.position,
            "entry_price": s.entry_price,
            "pending_buy": s.pending_buy_size(),
            "pending_sell": s.pending_sell_size(),
            "worst_long": s.worst_long,
            "worst_short": s.worst_short,
            "mid": s.mid,
            "mark": s.mark,
            "open_orders": len(s.orders),
            "equity": s.equity(),
            "drawdown_pct": s.drawdown_pct(),
            "realized_pnl": s.realized_pnl,
            "unrealized_pnl": s.unrealized_pnl(),
            "funding_pnl": s.funding_pnl,
            "predicted_funding_rate": s.predicted_funding,
            "funding_interval_s": s.funding.interval_ms // 1000,
            "price_stddev_30m": s.price_stddev_30m(),
            "quote_suppressed": bool(lad.suppressed) if lad else False,
            "grind_count": self.grinding.count_total,
            "grind_active": self.grinding.active,
        }


def stale_quotes(core: AgentCore, going: set[str]) -> list[Cancel]:
    """While a lapsed lease holds quoting (nothing may be placed or amended until it is renewed or the
    quotes are pulled, ``lease_pull_sec`` later): the resting quotes the ladder would move or drop, as
    cancels, so that a moving market does not pick off quotes nobody re-prices; those it would keep
    rest on. ``going``: already being cancelled."""
    s = core.store
    live_bids, live_asks, other_b, other_s = s.ledger.ladder_view()
    ladder = core._ladder(other_b, other_s)
    seq = core.ids.seq
    diff = core.manager.diff(ladder.bids, ladder.asks, live_bids, live_asks, ladder.center_ticks, None)
    core.ids.seq = seq   # the diff's places are not sent: their ids are not spent
    moved = [a for a in diff.amends if (o := s.orders.get(a.client_order_id)) is not None
             and a.price_ticks != o.price_ticks]
    return [Cancel(c.client_order_id, c.order_id, OrderReason.STALE)
            for c in (*diff.cancels, *moved) if c.client_order_id not in going]


def cap_cancels(led: Any, ours: Callable[[str], bool], pos: int, cap: int, cancels: list[Cancel],
                amends: list[Amend], extra_buy: int = 0, extra_sell: int = 0) -> int:
    """The worst case already beyond the cap (the position moved from outside, a fill, an order
    adopted; ``extra_*``: reduce-only orders of this cycle besides): cancel this epoch's adding
    orders until it is back inside (another epoch's are the runtime's to fence), also ones the
    ladder may not touch now (an amend or cancel awaiting its answer, an order not yet acknowledged):
    a cancel by id is always safe, and such an order would otherwise rest until its answer settles.
    Appended to ``cancels``; returns how many."""
    excesses = ((BUY, pos + led.pending_buy_steps + extra_buy - cap),
                (SELL, led.pending_sell_steps + extra_sell - pos - cap))
    if excesses[0][1] <= 0 and excesses[1][1] <= 0:
        return 0  # the common case, every cycle
    going = {c.client_order_id for c in cancels}
    amending = {a.client_order_id: a for a in amends}
    added = 0
    for side, excess in excesses:
        if excess <= 0:
            continue
        adding = [
            o for o in led.orders.values()
            if o.side == side and o.is_open and not o.reduce_only
            and (o.cancel_sent_ms is None or o.client_order_id in going) and ours(o.client_order_id)
        ]
        excess -= sum(o.contrib for o in adding if o.client_order_id in going)
        rest = [o for o in adding if o.client_order_id not in going]
        # the ones the ladder cannot touch first, then the outermost; this cycle's amended ones last: their
        # amend is dropped for the cancel (a drawdown slice on a side the moving mid re-prices whole)
        rest.sort(key=lambda o: (o.client_order_id in amending, not o.busy,
                                 o.price_ticks if side == BUY else -o.price_ticks))
        for o in rest:
            if excess <= 0:
                break
            if (a := amending.pop(o.client_order_id, None)) is not None:
                amends.remove(a)
                excess -= o.amend_growth(a.qty_steps)   # (counted in ``extra_*`` by the caller)
            cancels.append(Cancel(o.client_order_id, o.order_id, "cap"))
            excess -= o.contrib
            added += 1
    return added


def trim_places(places: list[Place], side: str, excess: int) -> int:
    """This cycle's new ladder orders of ``side`` left out, outermost first, while ``excess`` is above 0;
    what is left of it."""
    if excess <= 0:
        return excess
    ladder = [p for p in places if p.side == side and p.reason == OrderReason.LADDER and not p.reduce_only]
    ladder.sort(key=lambda p: p.price_ticks if side == BUY else -p.price_ticks)   # the lowest bid, the highest ask
    for p in ladder:
        if excess <= 0:
            break
        places.remove(p)
        excess -= p.qty_steps
    return excess
