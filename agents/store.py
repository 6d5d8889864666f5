"""The Store: one symbol's orders, pending sizes, position, prices, 30-minute window, funding, P&L.

Everything the strategy and the guard read comes from here, and everything the exchange or the
runtime reports goes in here, through one method per kind of input. Updates are idempotent and
ordered per order by (update time, cumulative filled, stage), so duplicated, stale or reordered
stream frames leave the state as the newest one says.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from decimal import Decimal
from typing import Any, Iterable

from fleet.binance.events import (
    BUY,
    CLOSED_STATUSES,
    AccountUpdate,
    BookTicker,
    FundingFee,
    MarkPrice,
    OrderUpdate,
    SELL,
)
from fleet.binance.filters import SymbolFilters
from fleet.config import SymbolParams

from .orders import Amend, Cancel, Place

PENDING_NEW = "PENDING_NEW"  # sent, not yet acknowledged
MISSING = "MISSING"  # the exchange says it does not know the order (REST snapshot or -2011/-2013)
REJECTED = "REJECTED"
_CLOSED = CLOSED_STATUSES | {MISSING}
_UNKNOWN_ORDER_CODES = frozenset({-2011, -2013})

WINDOW_MS = 30 * 60 * 1000
SAMPLE_MS = 1000  # the price window takes at most one mid per second
_CLOSED_KEEP = 4096  # closed orders remembered, so their late duplicates are recognised
_FUNDING_KEEP = 512
_STAGE_NEW, _STAGE_AMEND, _STAGE_PARTIAL, _STAGE_FINAL = 0, 1, 2, 3


def _stage(status: str, exec_type: str = "") -> int:
    if status in _CLOSED:
        return _STAGE_FINAL
    if status == "PARTIALLY_FILLED":
        return _STAGE_PARTIAL
    if exec_type == "AMENDMENT":
        return _STAGE_AMEND
    return _STAGE_NEW


class LiveOrder:
    """One order as the store knows it (mutable inside the store only; others read it)."""

    __slots__ = (
        "client_order_id",
        "order_id",
        "side",
        "price_ticks",
        "orig_steps",
        "filled_steps",
        "status",
        "reduce_only",
        "order_type",
        "time_in_force",
        "reason",
        "layer",
        "sent_ms",
        "key",
        "amend_price_ticks",
        "amend_orig_steps",
        "cancel_sent_ms",
        "contrib",
        "filled_notional",
    )

    def __init__(self, client_order_id: str, side: str, price_ticks: int, orig_steps: int) -> None:
        self.client_order_id = client_order_id
        self.order_id: int | None = None
        self.side = side
        self.price_ticks = price_ticks
        self.orig_steps = orig_steps
        self.filled_steps = 0
        self.status = PENDING_NEW
        self.reduce_only = False
        self.order_type = "LIMIT"
        self.time_in_force = "GTC"
        self.reason = "external"
        self.layer = -1
        self.sent_ms = 0
        self.key: tuple[int, int, int] = (-1, 0, -1)
        self.amend_price_ticks: int | None = None
        self.amend_orig_steps: int | None = None
        self.cancel_sent_ms: int | None = None
        self.contrib = 0
        self.filled_notional = 0.0  # sum of fill price x quantity in quote units (for avg price)

    @property
    def is_open(self) -> bool:
        return self.status not in _CLOSED

    @property
    def remaining_steps(self) -> int:
        return self.orig_steps - self.filled_steps if self.status not in _CLOSED else 0

    @property
    def busy(self) -> bool:
        """Not yet acknowledged, or an amendment or cancel is in flight: not to be touched now."""
        return self.status == PENDING_NEW or self.amend_orig_steps is not None or self.cancel_sent_ms is not None

    def pending_steps(self) -> int:
        """What may still fill: the remainder, or the larger of old and new while an amend is in flight."""
        if self.status in _CLOSED:
            return 0
        rem = self.orig_steps - self.filled_steps
        if self.amend_orig_steps is not None:
            new_rem = self.amend_orig_steps - self.filled_steps
            if new_rem > rem:
                rem = new_rem
        return rem if rem > 0 else 0

    def __repr__(self) -> str:
        return (
            f"LiveOrder({self.client_order_id} #{self.order_id} {self.side} {self.filled_steps}/{self.orig_steps}"
            f"@{self.price_ticks} {self.status} pend={self.contrib})"
        )


class Store:
    """One symbol's state. Quantities in integer steps, prices of orders in integer ticks."""

    def __init__(self, symbol: str, filters: SymbolFilters, params: SymbolParams) -> None:
        self.symbol = symbol
        self.filters = filters
        self.params = params
        self.step = float(filters.step_size)
        self.tick = float(filters.tick_size)
        self._step_d = filters.step_size
        self._tick_d = filters.tick_size
        self.margin_asset = filters.margin_asset or filters.quote_asset
        # orders
        self.orders: dict[str, LiveOrder] = {}  # open (incl. in flight), by client id
        self._by_id: dict[int, LiveOrder] = {}
        self.closed: OrderedDict[str, LiveOrder] = OrderedDict()
        self.pending_buy_steps = 0
        self.pending_sell_steps = 0
        # position and P&L
        self.position_steps = 0
        self.entry_price = 0.0
        self.position_time = -1  # exchange time of the last authoritative position figure
        self.realized_pnl = 0.0
        self.commission = 0.0
        self._trade_ids: OrderedDict[tuple[int, int], None] = OrderedDict()
        self.fills_buy = 0
        self.fills_sell = 0
        self.wallet_balance: float | None = None
        self.peak_equity: float | None = None
        self.max_drawdown_pct = 0.0
        # market
        self.bid = 0.0
        self.ask = 0.0
        self.mid = 0.0
        self.mark = 0.0
        self._book_update_id = -1
        self._book_time = -1
        self._mark_time = -1
        self.last_market_ms = -1
        # price window: deque of (t, price - ref), with running sums for O(1) mean/stddev
        self._win: deque[tuple[int, float]] = deque()
        self._ref = 0.0
        self._sum = 0.0
        self._sumsq = 0.0
        self._last_sample = -(10**18)
        self._since_rebase = 0
        # funding
        self.funding_rate_estimate = 0.0
        self.predicted_funding = 0.0
        self._funding_samples = 0
        self._last_funding_sample = -(10**18)
        self._funding_sample_ms = int(params.funding.predict_sample_sec * 1000)
        self._alpha = params.funding.predict_alpha
        self.funding_pnl = 0.0
        self._funding_seen: OrderedDict[tuple[int, str], None] = OrderedDict()
        # counters the metrics read
        self.rejects: dict[int, int] = {}
        self.stale_updates = 0
        self.foreign_events = 0

    # ------------------------------------------------------------------ unit conversion

    def steps(self, qty: Decimal | float | str) -> int:
        """Steps of an exchange quantity (the nearest step: exchange quantities lie on the grid)."""
        if isinstance(qty, float):
            return int(round(qty / self.step))
        return int((Decimal(qty) / self._step_d).to_integral_value())

    def ticks(self, price: Decimal | float | str) -> int:
        if isinstance(price, float):
            return int(round(price / self.tick))
        return int((Decimal(price) / self._tick_d).to_integral_value())

    # ------------------------------------------------------------------ the seed's read API

    @property
    def position(self) -> float:
        return self.position_steps * self.step

    def pending_buy_size(self) -> float:
        return self.pending_buy_steps * self.step

    def pending_sell_size(self) -> float:
        return self.pending_sell_steps * self.step

    def mid_price(self) -> float:
        return self.mid

    def price_stddev_30m(self) -> float:
        """Relative standard deviation (stddev / mean) of the mids in the last 30 minutes."""
        n = len(self._win)
        if n < 2:
            return 0.0
        mean_x = self._sum / n
        var = self._sumsq / n - mean_x * mean_x
        mean = self._ref + mean_x
        if var <= 0.0 or mean <= 0.0:
            return 0.0
        return math.sqrt(var) / mean

    def price_window_span_ms(self) -> int:
        if not self._win:
            return 0
        return self._win[-1][0] - self._win[0][0]

    def predicted_funding_rate(self) -> float:
        return self.predicted_funding

    @property
    def worst_long_steps(self) -> int:
        return self.position_steps + self.pending_buy_steps

    @property
    def worst_short_steps(self) -> int:
        return self.position_steps - self.pending_sell_steps

    @property
    def worst_long(self) -> float:
        return self.worst_long_steps * self.step

    @property
    def worst_short(self) -> float:
        return self.worst_short_steps * self.step

    # ------------------------------------------------------------------ P&L

    def unrealized_pnl(self) -> float:
        price = self.mark or self.mid
        if not price or not self.position_steps:
            return 0.0
        return self.position_steps * self.step * (price - self.entry_price)

    def equity(self) -> float:
        """Wallet balance (as the exchange books it) plus this symbol's unrealized P&L.

        Until a wallet balance is known: the configured capital plus P&L booked here.
        """
        if self.wallet_balance is not None:
            return self.wallet_balance + self.unrealized_pnl()
        return (
            self.params.risk.capital + self.realized_pnl + self.funding_pnl - self.commission + self.unrealized_pnl()
        )

    def drawdown_pct(self) -> float:
        """Percent below the peak equity seen (0 at a new peak)."""
        eq = self.equity()
        if self.peak_equity is None or eq > self.peak_equity:
            self.peak_equity = eq
        peak = self.peak_equity
        if peak <= 0:
            return 0.0
        dd = (peak - eq) / peak * 100.0
        if dd > self.max_drawdown_pct:
            self.max_drawdown_pct = dd
        return dd

    # ------------------------------------------------------------------ order views

    def ladder_orders(self, side: str) -> list[LiveOrder]:
        """Open ladder orders of one side, inner to outer (bids high to low, asks low to high)."""
        out = [o for o in self.orders.values() if o.side == side and o.reason == "ladder" and o.cancel_sent_ms is None]
        out.sort(key=(lambda o: -o.price_ticks) if side == BUY else (lambda o: o.price_ticks))
        return out

    def other_pending(self) -> tuple[int, int]:
        """Pending (buy, sell) steps of open orders that are not the ladder's (or are being cancelled)."""
        b = s = 0
        for o in self.orders.values():
            if o.reason != "ladder" or o.cancel_sent_ms is not None:
                if o.side == BUY:
                    b += o.contrib
                else:
                    s += o.contrib
        return b, s

    def get(self, client_order_id: str) -> LiveOrder | None:
        return self.orders.get(client_order_id) or self.closed.get(client_order_id)

    def open_orders(self) -> list[LiveOrder]:
        return list(self.orders.values())

    def stale_in_flight(self, now_ms: int, older_than_ms: int) -> list[LiveOrder]:
        """Orders sent but unanswered for too long: the runtime should look them up by REST."""
        return [o for o in self.orders.values() if o.status == PENDING_NEW and now_ms - o.sent_ms > older_than_ms]

    def recompute_pending(self) -> tuple[int, int]:
        """The pending sums from scratch (the invariant the incremental sums must equal)."""
        b = s = 0
        for o in self.orders.values():
            if o.side == BUY:
                b += o.pending_steps()
            else:
                s += o.pending_steps()
        return b, s

    # ------------------------------------------------------------------ bookkeeping

    def _refresh(self, o: LiveOrder) -> None:
        """Re-derive one order's pending contribution and move it to ``closed`` when it ends."""
        new = o.pending_steps()
        d = new - o.contrib
        if d:
            if o.side == BUY:
                self.pending_buy_steps += d
            else:
                self.pending_sell_steps += d
            o.contrib = new
        if o.status in _CLOSED and o.client_order_id in self.orders:
            del self.orders[o.client_order_id]
            if o.order_id is not None:
                self._by_id.pop(o.order_id, None)
            o.amend_orig_steps = o.amend_price_ticks = None
            o.cancel_sent_ms = None
            self.closed[o.client_order_id] = o
            if len(self.closed) > _CLOSED_KEEP:
                self.closed.popitem(last=False)

    def _index_id(self, o: LiveOrder, order_id: int) -> None:
        if o.order_id != order_id:
            o.order_id = order_id
            if o.status not in _CLOSED:
                self._by_id[order_id] = o

    def _find(self, client_order_id: str, order_id: int | None) -> LiveOrder | None:
        o = self.orders.get(client_order_id)
        if o is None and order_id is not None:
            o = self._by_id.get(order_id)
        if o is None:
            o = self.closed.get(client_order_id)
        return o

    # ------------------------------------------------------------------ what the runtime sent

    def on_sent(self, place: Place, now_ms: int) -> LiveOrder:
        """A new order was sent: it is pending from this moment on."""
        o = LiveOrder(place.client_order_id, place.side, place.price_ticks, place.qty_steps)
        o.reduce_only = place.reduce_only
        o.order_type = place.order_type
        o.time_in_force = place.time_in_force
        o.reason = place.reason
        o.layer = place.layer
        o.sent_ms = now_ms
        existing = self.orders.get(place.client_order_id)
        if existing is not None:
            raise ValueError(f"client order id {place.client_order_id} is already open")
        self.orders[o.client_order_id] = o
        self._refresh(o)
        return o

    def on_amend_sent(self, amend: Amend, now_ms: int) -> None:
        """An amendment was sent: until answered the order counts as the larger of old and new."""
        o = self._find(amend.client_order_id, amend.order_id)
        if o is None or not o.is_open:
            return
        o.amend_price_ticks = amend.price_ticks
        o.amend_orig_steps = amend.qty_steps
        o.layer = amend.layer if amend.layer >= 0 else o.layer
        self._refresh(o)

    def on_cancel_sent(self, cancel: Cancel, now_ms: int) -> None:
        """A cancel was sent: the order still counts as pending until the exchange closes it."""
        o = self._find(cancel.client_order_id, cancel.order_id)
        if o is not None and o.is_open:
            o.cancel_sent_ms = now_ms

    def on_rejected(self, client_order_id: str, code: int, now_ms: int = 0) -> None:
        """A new order was refused by the exchange: it never existed."""
        self.rejects[code] = self.rejects.get(code, 0) + 1
        o = self.orders.get(client_order_id)
        if o is not None and o.status == PENDING_NEW:
            o.status = REJECTED
            self._refresh(o)

    def on_amend_rejected(self, client_order_id: str, code: int, order_id: int | None = None) -> None:
        """A modify was refused: the order stays as it was (or is gone, for unknown-order codes)."""
        self.rejects[code] = self.rejects.get(code, 0) + 1
        o = self._find(client_order_id, order_id)
        if o is None or not o.is_open:
            return
        o.amend_price_ticks = o.amend_orig_steps = None
        if code in _UNKNOWN_ORDER_CODES and o.status != PENDING_NEW:
            o.status = MISSING
        self._refresh(o)

    def on_cancel_rejected(self, client_order_id: str, code: int, order_id: int | None = None) -> None:
        """A cancel was refused: unknown order means it is already closed; otherwise it may be retried."""
        self.rejects[code] = self.rejects.get(code, 0) + 1
        o = self._find(client_order_id, order_id)
        if o is None or not o.is_open:
            return
        o.cancel_sent_ms = None
        if code in _UNKNOWN_ORDER_CODES and o.status != PENDING_NEW:
            o.status = MISSING
        self._refresh(o)

    def on_order_info(self, info: Any) -> bool:
        """A REST answer (place/modify/cancel/query): an order object with Binance's REST fields."""
        if getattr(info, "symbol", self.symbol) != self.symbol:
            return False
        status = info.status
        stage = _stage(status)
        return self._apply_order(
            client_order_id=info.client_order_id,
            order_id=int(info.order_id),
            side=info.side,
            price=info.price,
            orig_qty=info.orig_qty,
            cum_qty=info.executed_qty,
            avg_price=info.avg_price,
            status=status,
            update_time=int(info.update_time),
            stage=stage,
            amended=False,
            order_type=getattr(info, "type", "LIMIT"),
            tif=getattr(info, "time_in_force", ""),
            reduce_only=bool(getattr(info, "reduce_only", False)),
        )

    # ------------------------------------------------------------------ stream events

    def apply(self, event: Any, now_ms: int | None = None) -> bool:
        """Apply one stream event; returns whether it changed anything."""
        if isinstance(event, BookTicker):
            return self._on_book(event)
        if isinstance(event, MarkPrice):
            return self._on_mark(event)
        if isinstance(event, OrderUpdate):
            return self._on_order_update(event)
        if isinstance(event, AccountUpdate):
            return self._on_account(event)
        if isinstance(event, FundingFee):
            return self._on_funding_fee(event)
        return False

    def _on_book(self, ev: BookTicker) -> bool:
        if ev.symbol != self.symbol:
            self.foreign_events += 1
            return False
        if ev.update_id < self._book_update_id:
            self.stale_updates += 1
            return False
        if ev.bid <= 0 or ev.ask <= 0 or ev.ask < ev.bid:
            return False
        self._book_update_id = ev.update_id
        self.bid = ev.bid
        self.ask = ev.ask
        self.mid = (ev.bid + ev.ask) * 0.5
        t = ev.transaction_time or ev.event_time
        self._book_time = t
        self.last_market_ms = t
        if t - self._last_sample >= SAMPLE_MS:
            self._sample(t, self.mid)
        return True

    def _sample(self, t: int, price: float) -> None:
        self._last_sample = t
        if not self._win:
            self._ref = price
            self._sum = self._sumsq = 0.0
        x = price - self._ref
        self._win.append((t, x))
        self._sum += x
        self._sumsq += x * x
        cutoff = t - WINDOW_MS
        win = self._win
        while win[0][0] < cutoff:
            _, old = win.popleft()
            self._sum -= old
            self._sumsq -= old * old
        self._since_rebase += 1
        if self._since_rebase >= 2 * WINDOW_MS // SAMPLE_MS:
            self._rebase()

    def _rebase(self) -> None:
        """Re-centre the running sums on the current mean, so float error cannot accumulate."""
        self._since_rebase = 0
        n = len(self._win)
        if not n:
            return
        shift = self._sum / n
        self._ref += shift
        self._win = deque((t, x - shift) for t, x in self._win)
        self._sum = sum(x for _, x in self._win)
        self._sumsq = sum(x * x for _, x in self._win)

    def _on_mark(self, ev: MarkPrice) -> bool:
        if ev.symbol != self.symbol:
            self.foreign_events += 1
            return False
        if ev.event_time < self._mark_time:
            self.stale_updates += 1
            return False
        self._mark_time = ev.event_time
        self.mark = ev.mark_price
        self.funding_rate_estimate = ev.funding_rate
        if ev.event_time - self._last_funding_sample >= self._funding_sample_ms:
            self._last_funding_sample = ev.event_time
            if self._funding_samples == 0:
                self.predicted_funding = ev.funding_rate
            else:
                a = self._alpha
                self.predicted_funding = a * ev.funding_rate + (1.0 - a) * self.predicted_funding
            self._funding_samples += 1
        if not self.mid:
            self.last_market_ms = ev.event_time
        return True

    def _on_order_update(self, u: OrderUpdate) -> bool:
        if u.symbol != self.symbol:
            self.foreign_events += 1
            return False
        if u.exec_type == "TRADE" and u.trade_id:
            key = (u.order_id, u.trade_id)
            if key not in self._trade_ids:
                self._trade_ids[key] = None
                if len(self._trade_ids) > _CLOSED_KEEP:
                    self._trade_ids.popitem(last=False)
                if u.commission_asset == self.margin_asset or not self.margin_asset:
                    self.commission += float(u.commission)
        return self._apply_order(
            client_order_id=u.client_order_id,
            order_id=u.order_id,
            side=u.side,
            price=u.price,
            orig_qty=u.orig_qty,
            cum_qty=u.cum_filled_qty,
            avg_price=u.avg_price,
            status=u.status,
            update_time=u.update_time,
            stage=_stage(u.status, u.exec_type),
            amended=u.exec_type == "AMENDMENT",
            order_type=u.order_type,
            tif=u.time_in_force,
            reduce_only=u.reduce_only,
        )

    def _apply_order(
        self,
        *,
        client_order_id: str,
        order_id: int,
        side: str,
        price: Decimal,
        orig_qty: Decimal,
        cum_qty: Decimal,
        avg_price: Decimal,
        status: str,
        update_time: int,
        stage: int,
        amended: bool,
        order_type: str,
        tif: str,
        reduce_only: bool,
    ) -> bool:
        cum = self.steps(cum_qty)
        key = (update_time, cum, stage)
        o = self._find(client_order_id, order_id)
        if o is None:
            o = LiveOrder(client_order_id, side, self.ticks(price), self.steps(orig_qty))
            o.order_type = order_type
            o.time_in_force = tif
            o.reduce_only = reduce_only
            o.status = "NEW"
            self.orders[client_order_id] = o
        elif key <= o.key:
            self.stale_updates += 1
            return False
        self._index_id(o, order_id)
        delta = cum - o.filled_steps
        if delta > 0:
            # The notional of this delta, from the average prices before and after (exact per order).
            total = float(avg_price) * cum * self.step
            fill_notional = total - o.filled_notional
            o.filled_notional = total
            o.filled_steps = cum
            self._on_fill(side, delta, fill_notional / (delta * self.step), update_time)
        o.key = key
        o.status = status
        o.side = side
        if order_type != "MARKET":
            o.price_ticks = self.ticks(price)
        o.orig_steps = self.steps(orig_qty)
        if o.amend_orig_steps is not None and (
            amended or (o.orig_steps == o.amend_orig_steps and o.price_ticks == o.amend_price_ticks)
        ):
            o.amend_orig_steps = o.amend_price_ticks = None
        self._refresh(o)
        return True

    def _on_fill(self, side: str, qty_steps: int, price: float, t: int) -> None:
        if side == BUY:
            self.fills_buy += 1
        else:
            self.fills_sell += 1
        signed = qty_steps if side == BUY else -qty_steps
        pos = self.position_steps
        # Realized P&L on the part that closes the position, average entry for the part that opens.
        if pos == 0 or (pos > 0) == (signed > 0):
            new = pos + signed
            self.entry_price = (abs(pos) * self.entry_price + abs(signed) * price) / abs(new)
        else:
            closing = min(abs(signed), abs(pos))
            direction = 1 if pos > 0 else -1
            self.realized_pnl += closing * self.step * (price - self.entry_price) * direction
            new = pos + signed
            if new == 0:
                self.entry_price = 0.0
            elif (new > 0) != (pos > 0):
                self.entry_price = price
        if t <= self.position_time:
            # The exchange's position figure already includes this fill.
            return
        self.position_steps = new

    def _on_account(self, ev: AccountUpdate) -> bool:
        changed = False
        for b in ev.balances:
            if b.asset == self.margin_asset:
                self.wallet_balance = float(b.wallet_balance)
                changed = True
        for p in ev.positions:
            if p.symbol == self.symbol and p.position_side in ("BOTH", ""):
                changed |= self._set_position(p.amount, p.entry_price, ev.transaction_time or ev.event_time)
        return changed

    def _set_position(self, amount: Decimal, entry_price: Decimal, t: int) -> bool:
        if t < self.position_time:
            self.stale_updates += 1
            return False
        self.position_time = t
        self.position_steps = self.steps(amount)
        self.entry_price = float(entry_price) if self.position_steps else 0.0
        return True

    def _on_funding_fee(self, ev: FundingFee) -> bool:
        if ev.symbol is not None and ev.symbol != self.symbol:
            self.foreign_events += 1
            return False
        if ev.asset == self.margin_asset:
            self.wallet_balance = float(ev.wallet_balance)
        for p in ev.positions:
            if p.symbol == self.symbol:
                self._set_position(p.amount, p.entry_price, ev.transaction_time or ev.event_time)
        if ev.symbol is None:
            return False  # a cross-margin fee without a symbol cannot be attributed to this one
        key = (ev.transaction_time, str(ev.amount))
        if key in self._funding_seen:
            return False
        self._funding_seen[key] = None
        if len(self._funding_seen) > _FUNDING_KEEP:
            self._funding_seen.popitem(last=False)
        self.funding_pnl += float(ev.amount)
        return True

    # ------------------------------------------------------------------ REST snapshot

    def reset_from_snapshot(
        self,
        position: Any | None,
        open_orders: Iterable[Any],
        now_ms: int,
        in_flight_grace_ms: int = 5_000,
        wallet_balance: float | None = None,
    ) -> None:
        """Make the exchange's REST view the truth (after a reconnect or at start).

        ``position`` has ``amount``, ``entry_price``, ``update_time``; orders have Binance's REST
        order fields (``client_order_id``, ``order_id``, ``side``, ``price``, ``orig_qty``,
        ``executed_qty``, ``avg_price``, ``status``, ``update_time``). Orders we hold that the
        snapshot lacks are closed, except ones sent within ``in_flight_grace_ms``.
        """
        if position is not None:
            t = int(getattr(position, "update_time", 0) or 0)
            self.position_time = -1
            self._set_position(Decimal(position.amount), Decimal(position.entry_price), t)
        if wallet_balance is not None:
            self.wallet_balance = wallet_balance
        snap = [o for o in open_orders if getattr(o, "symbol", self.symbol) == self.symbol]
        present_cids = {o.client_order_id for o in snap}
        present_ids = {int(o.order_id) for o in snap}
        for o in list(self.orders.values()):
            if o.client_order_id in present_cids or (o.order_id is not None and o.order_id in present_ids):
                continue
            if o.status == PENDING_NEW and now_ms - o.sent_ms <= in_flight_grace_ms:
                continue
            o.status = MISSING
            self._refresh(o)
        for info in snap:
            o = self._find(info.client_order_id, int(info.order_id))
            if o is not None and not o.is_open:
                # We had closed it (e.g. -2011) but the exchange still lists it: reopen as listed.
                self.closed.pop(o.client_order_id, None)
                o.status = info.status
                o.key = (-1, 0, -1)
                o.contrib = 0
                self.orders[o.client_order_id] = o
            self.on_order_info(info)
        b, s = self.recompute_pending()
        self.pending_buy_steps, self.pending_sell_steps = b, s
