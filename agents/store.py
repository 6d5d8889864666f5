"""The Store: one symbol's orders, pending sizes, position, prices, 30-minute window, funding, P&L.

Everything the strategy and the guard read comes from here, and everything the exchange or the
runtime reports goes in here, through one method per kind of input. Order updates are idempotent
and ordered per order by (update time, cumulative filled, stage), so duplicated, stale or reordered
frames leave the order as the newest one says. The position moves by each trade frame once (by
trade id) and is reset by the exchange's figure (ACCOUNT_UPDATE, REST) plus the trades newer than
it; a fill the store has heard of but not booked keeps counting as pending, so
``position + pending_buy`` never understates what the exchange could hold.

Funding: the exchange's estimate (markPrice stream, every second) is sampled into the EMA
prediction once per ``funding.predict_sample_sec`` (60 s), with weight ``predict_alpha``. Funding
P&L is booked from the exchange's fees: a FUNDING_FEE frame that names this symbol (``a.S``), or,
for the cross-margin frame that names none, the account's FUNDING_FEE income rows that the runtime
reads when the store asks (``funding_lookup_start`` / ``on_funding_income``), once per ``tranId``.

Same-millisecond fills: a trade frame whose time equals the newest position figure's may or may not
be inside it (the exchange sends a fill's ACCOUNT_UPDATE and ORDER_TRADE_UPDATE one after the other,
in an order it does not document). If the figure's move within that millisecond accounts for it, it
is inside; otherwise it stays pending (never in the position) until the next figure, or a frame of
a later millisecond, shows where it went.

Drawdown is the symbol's own: equity = ``risk.capital`` + realized + funding - commission +
unrealized, all booked here, so a transfer on the shared wallet cannot move it. Its peak is tracked
as the inputs arrive, from the first exchange position figure with a price on; reads never change it.
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
)
from fleet.binance.filters import SymbolFilters
from fleet.config import SymbolParams

from .orders import Amend, Cancel, Place

PENDING_NEW = "PENDING_NEW"  # sent, not yet acknowledged
MISSING = "MISSING"  # not among the open orders of a REST snapshot
REJECTED = "REJECTED"
_CLOSED = CLOSED_STATUSES | {MISSING}
_UNKNOWN_ORDER_CODES = frozenset({-2011, -2013})
MODIFY_LIMIT_CODE = -5026  # "Exceed maximum modify order limit": this order can never be amended again
_FILL_EXEC_TYPES = frozenset({"TRADE", "CALCULATED"})  # CALCULATED: a liquidation fill

WINDOW_MS = 30 * 60 * 1000
SAMPLE_MS = 1000  # the price window takes at most one mid per second
_CLOSED_KEEP = 4096  # closed orders remembered, so their late duplicates are recognised
_FUNDING_KEEP = 512
# A frame and the income row of one funding fee carry the same settlement time (the simulator: the
# same millisecond); fees of one symbol are at least the funding interval apart.
FUNDING_MATCH_MS = 5_000
# A fee without a symbol is looked up if this symbol held a position at most this long before it;
# income rows are read from this long before the fee's frame.
FUNDING_LOOKBACK_MS = 60_000
# A look-up no income row has answered is given up once a fee this much newer needs one.
FUNDING_LOOKUP_HORIZON_MS = 3_600_000
_FUNDING_LOOKUPS_KEEP = 32
_TRADES_KEEP = 50_000  # trade ids remembered, so a duplicated fill is never booked twice
_STAGE_NEW, _STAGE_AMEND, _STAGE_PARTIAL, _STAGE_FINAL = 0, 1, 2, 3


def _stage(status: str, exec_type: str = "") -> int:
    if status in _CLOSED:
        return _STAGE_FINAL
    if status == "PARTIALLY_FILLED":
        return _STAGE_PARTIAL
    if exec_type == "AMENDMENT":
        return _STAGE_AMEND
    return _STAGE_NEW


def _price(o: "LiveOrder") -> int:
    return o.price_ticks


def _neg_price(o: "LiveOrder") -> int:
    return -o.price_ticks


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
        "amend_sent_ms",
        "cancel_sent_ms",
        "unresolved_ms",
        "booked_steps",
        "contrib",
        "amend_blocked",
        "unknown_ms",
        "inferred",
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
        self.amend_sent_ms = 0
        self.cancel_sent_ms: int | None = None
        self.unresolved_ms: int | None = None  # the exchange said "unknown order": filled or gone?
        self.booked_steps = 0  # trades of this order already in the position
        self.contrib = 0
        self.amend_blocked = False  # the exchange refused to modify it again (-5026): replace it instead
        self.unknown_ms: int | None = None  # a request about it got an ambiguous answer at this time
        self.inferred = False  # closed on the store's own inference, not on the exchange's word

    @property
    def is_open(self) -> bool:
        return self.status not in _CLOSED

    @property
    def settled(self) -> bool:
        """Closed, and every fill of it is in the position."""
        return self.status in _CLOSED and self.booked_steps >= self.filled_steps

    @property
    def remaining_steps(self) -> int:
        return self.orig_steps - self.filled_steps if self.status not in _CLOSED else 0

    @property
    def busy(self) -> bool:
        """Not yet acknowledged, or an amendment or cancel is in flight: not to be touched now."""
        return (
            self.status == PENDING_NEW
            or self.amend_orig_steps is not None
            or self.cancel_sent_ms is not None
            or self.unresolved_ms is not None
            or self.unknown_ms is not None
        )

    def pending_steps(self) -> int:
        """What may still fill, plus what has filled but is not in the position yet.

        Open: the order's quantity (the larger of old and new while an amend is in flight) less the
        trades already booked into the position. Closed: fills the exchange reported (cumulative
        quantity) whose trade frames have not arrived. So position + pending never understates
        what the exchange holds, whatever order the frames arrive in.
        """
        if self.status in _CLOSED:
            rem = self.filled_steps - self.booked_steps
        else:
            top = self.orig_steps
            if self.amend_orig_steps is not None and self.amend_orig_steps > top:
                top = self.amend_orig_steps
            rem = top - self.booked_steps
        return rem if rem > 0 else 0

    def amend_growth(self, new_qty_steps: int) -> int:
        """How much an amendment to a total of ``new_qty_steps`` adds to this order's pending count."""
        top = self.orig_steps if self.orig_steps > new_qty_steps else new_qty_steps
        if self.amend_orig_steps is not None and self.amend_orig_steps > top:
            top = self.amend_orig_steps
        grown = top - self.booked_steps - self.contrib
        return grown if grown > 0 else 0

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
        self.position_confirmed = False  # an exchange figure of the position has been applied
        self._figure_closes_ms = False  # the figure (a REST snapshot) holds every trade of its millisecond
        self._figure_steps = 0  # the newest stream figure, and the position just before its millisecond,
        self._ms_base = 0  # and the trades of that millisecond seen so far: what the figure's move
        self._ms_seen = 0  # within the millisecond accounts for
        self._ambiguous: list[tuple[int, str, int, int]] = []  # (time, client id, order id, steps) unplaced
        self._nonflat_ms = -1  # the latest exchange time at which the position was known not to be flat
        self._trades_since: deque[tuple[int, int]] = deque()  # (time, signed steps) booked after it
        self.realized_pnl = 0.0
        self.commission = 0.0
        self._trade_ids: OrderedDict[tuple[int, int], None] = OrderedDict()
        self.fills_buy = 0
        self.fills_sell = 0
        self.wallet_balance: float | None = None  # the shared account's wallet (informational)
        self._peak_pnl: float | None = None  # the symbol's own P&L at its peak, once confirmed
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
        self._funding_total = Decimal(0)
        self._funding_seen: OrderedDict[tuple[int, str], None] = OrderedDict()  # frames already booked
        # booked fees: [time, amount, source ("frame" / "income"), paired with the other source]
        self._funding_booked: deque[list[Any]] = deque(maxlen=_FUNDING_KEEP)
        self._income_seen: OrderedDict[int, None] = OrderedDict()  # income tranIds already booked
        self._funding_lookups: deque[int] = deque(maxlen=_FUNDING_LOOKUPS_KEEP)  # times of symbol-less fees
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

    def pnl(self) -> float:
        """This symbol's own P&L: realized + funding - commission (as the exchange booked them) + unrealized."""
        return self.realized_pnl + self.funding_pnl - self.commission + self.unrealized_pnl()

    def equity(self) -> float:
        """The symbol's equity for its drawdown: its capital (``risk.capital``) plus its own P&L.

        Not the account's wallet: the wallet is shared by every symbol and moves with transfers.
        """
        return self.params.risk.capital + self.pnl()

    @property
    def peak_equity(self) -> float | None:
        """The highest equity since the store had a confirmed baseline (None before)."""
        return None if self._peak_pnl is None else self.params.risk.capital + self._peak_pnl

    def drawdown_pct(self) -> float:
        """Percent below the peak equity (0 at a peak, and before a confirmed baseline). A pure read."""
        peak_pnl = self._peak_pnl
        if peak_pnl is None:
            return 0.0
        peak = self.params.risk.capital + peak_pnl
        if peak <= 0:
            return 0.0
        dd = (peak_pnl - self.pnl()) / peak * 100.0
        return dd if dd > 0.0 else 0.0

    def _track_equity(self) -> None:
        """Move the peak (and the deepest drawdown) by the current equity, once the baseline is
        confirmed: an exchange figure of the position, and a price to value it at."""
        if not self.position_confirmed or not (self.mark or self.mid):
            return
        pnl = self.pnl()
        if self._peak_pnl is None or pnl > self._peak_pnl:
            self._peak_pnl = pnl
        dd = self.drawdown_pct()
        if dd > self.max_drawdown_pct:
            self.max_drawdown_pct = dd

    # ------------------------------------------------------------------ order views

    def ladder_orders(self, side: str) -> list[LiveOrder]:
        """Open ladder orders of one side, inner to outer (bids high to low, asks low to high)."""
        out = [
            o
            for o in self.orders.values()
            if o.side == side and o.reason == "ladder" and o.cancel_sent_ms is None and o.status not in _CLOSED
        ]
        out.sort(key=(lambda o: -o.price_ticks) if side == BUY else (lambda o: o.price_ticks))
        return out

    def ladder_view(self) -> tuple[list[LiveOrder], list[LiveOrder], int, int]:
        """One pass for a quote cycle: live ladder bids and asks (inner to outer), and the pending
        (buy, sell) steps of everything else (other orders, cancels in flight, unbooked fills)."""
        bids: list[LiveOrder] = []
        asks: list[LiveOrder] = []
        ob = os_ = 0
        closed = _CLOSED
        for o in self.orders.values():
            if o.reason == "ladder" and o.cancel_sent_ms is None and o.status not in closed:
                (bids if o.side == BUY else asks).append(o)
            elif o.side == BUY:
                ob += o.contrib
            else:
                os_ += o.contrib
        bids.sort(key=_neg_price)
        asks.sort(key=_price)
        return bids, asks, ob, os_

    def other_pending(self) -> tuple[int, int]:
        """Pending (buy, sell) steps of open orders that are not the ladder's (or are being cancelled)."""
        b = s = 0
        for o in self.orders.values():
            if o.reason != "ladder" or o.cancel_sent_ms is not None or o.status in _CLOSED:
                if o.side == BUY:
                    b += o.contrib
                else:
                    s += o.contrib
        return b, s

    def get(self, client_order_id: str) -> LiveOrder | None:
        return self.orders.get(client_order_id) or self.closed.get(client_order_id)

    def open_orders(self) -> list[LiveOrder]:
        """Orders that may still fill (in flight or open on the exchange)."""
        return [o for o in self.orders.values() if o.status not in _CLOSED]

    def stale_in_flight(self, now_ms: int, older_than_ms: int) -> list[LiveOrder]:
        """Orders whose new order, amendment or cancel has gone unanswered for too long, and orders
        the exchange called unknown: the runtime looks them up by REST (``on_order_info``)."""
        out = []
        for o in self.orders.values():
            if o.unknown_ms is not None:
                continue  # looked up once its request can no longer execute (``due_lookups``)
            since = o.sent_ms if o.status == PENDING_NEW else None
            for t in (o.amend_sent_ms if o.amend_orig_steps is not None else None, o.cancel_sent_ms, o.unresolved_ms):
                if t is not None and (since is None or t < since):
                    since = t
            if since is not None and now_ms - since > older_than_ms:
                out.append(o)
        return out

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
        """Re-derive one order's pending contribution; file it under ``closed`` once it has ended
        and all its fills are in the position (or back under ``orders`` if that stops being so)."""
        new = o.pending_steps()
        d = new - o.contrib
        if d:
            if o.side == BUY:
                self.pending_buy_steps += d
            else:
                self.pending_sell_steps += d
            o.contrib = new
        cid = o.client_order_id
        if o.status in _CLOSED:
            o.amend_orig_steps = o.amend_price_ticks = None
            o.cancel_sent_ms = o.unresolved_ms = o.unknown_ms = None
            if o.booked_steps >= o.filled_steps:
                if cid in self.orders:
                    del self.orders[cid]
                    if o.order_id is not None:
                        self._by_id.pop(o.order_id, None)
                    self.closed[cid] = o
                    if len(self.closed) > _CLOSED_KEEP:
                        self.closed.popitem(last=False)
                return
        if cid not in self.orders:
            self.closed.pop(cid, None)
            self.orders[cid] = o
            if o.order_id is not None:
                self._by_id[o.order_id] = o

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
        o.amend_sent_ms = now_ms
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

    def on_amend_rejected(self, client_order_id: str, code: int, order_id: int | None = None, now_ms: int = 0) -> None:
        """A modify was refused: the order stays as it was (see ``on_cancel_rejected`` for unknown orders).

        -5026 (the order's modify limit is reached) marks it ``amend_blocked``: never amended again."""
        self.rejects[code] = self.rejects.get(code, 0) + 1
        o = self._find(client_order_id, order_id)
        if o is None or not o.is_open:
            return
        o.amend_price_ticks = o.amend_orig_steps = None
        if code == MODIFY_LIMIT_CODE:
            o.amend_blocked = True  # the order manager cancels and replaces it from now on
        if code in _UNKNOWN_ORDER_CODES and o.status != PENDING_NEW:
            o.unresolved_ms = now_ms
        self._refresh(o)

    def on_cancel_rejected(self, client_order_id: str, code: int, order_id: int | None = None, now_ms: int = 0) -> None:
        """A cancel was refused. For "unknown order" the order is no longer open on the exchange, but
        it may have *filled* with the fill still on its way: it keeps counting as pending (unresolved)
        until its final frame or a REST answer says how it ended. Other codes: it may be retried."""
        self.rejects[code] = self.rejects.get(code, 0) + 1
        o = self._find(client_order_id, order_id)
        if o is None or not o.is_open:
            return
        o.cancel_sent_ms = None
        if code in _UNKNOWN_ORDER_CODES and o.status != PENDING_NEW:
            o.unresolved_ms = now_ms
        self._refresh(o)

    def unresolved_orders(self, now_ms: int, older_than_ms: int = 0) -> list[LiveOrder]:
        """Orders the exchange called unknown whose end we have not seen: the runtime looks them up
        (GET order) and passes the answer to ``on_order_info``, or resyncs from a snapshot."""
        return [
            o
            for o in self.orders.values()
            if o.unresolved_ms is not None and now_ms - o.unresolved_ms >= older_than_ms
        ]

    def on_query_unknown(self, client_order_id: str, order_id: int | None = None) -> None:
        """A lookup (GET order) answered "order does not exist" (-2013): the exchange never had it,
        or it ended too long ago to matter; either way it cannot fill now and owes us no fills."""
        o = self._find(client_order_id, order_id)
        if o is None or not o.is_open and o.booked_steps >= o.filled_steps:
            return
        o.status = MISSING
        o.inferred = True
        o.booked_steps = o.filled_steps
        self._refresh(o)

    # ------------------------------------------------------------------ unknown outcomes

    def on_outcome_unknown(self, client_order_id: str, now_ms: int) -> None:
        """A request about this order (place, amend or cancel) got an ambiguous answer: it may have
        executed, even later. Nothing changes in what the order counts: a new order stays pending,
        an amendment keeps the larger of old and new, a cancel keeps the order counted, until a
        frame or a look-up past the request's recvWindow (``on_lookup``) settles it."""
        o = self.orders.get(client_order_id)
        if o is not None and o.is_open:
            o.unknown_ms = now_ms if o.unknown_ms is None else max(o.unknown_ms, now_ms)

    def due_lookups(self, now_ms: int, window_ms: int) -> list[LiveOrder]:
        """Orders with an ambiguous answer whose request can no longer execute (``window_ms`` =
        recvWindow plus a margin has passed since the answer): a look-up now settles them."""
        return [o for o in self.orders.values() if o.unknown_ms is not None and now_ms - o.unknown_ms >= window_ms]

    def on_lookup(self, client_order_id: str, info: Any | None, now_ms: int, window_ms: int) -> str:
        """The answer to a look-up by client order id (``info``; None for "order does not exist").

        Before ``window_ms`` has passed since the send (or the ambiguous answer) a request may still
        land, so only what the exchange shows is taken; after it, what did not land never will:
        an unplaced order is closed, an amendment or cancel that did not take is forgotten.
        Returns what was concluded (for the log): "found", "pending", "never_placed", "gone".
        """
        o = self._find(client_order_id, None)
        if o is None:
            if info is not None:
                self.on_order_info(info)
            return "found" if info is not None else "gone"
        since = o.unknown_ms if o.unknown_ms is not None else o.sent_ms
        if o.status == PENDING_NEW and o.unknown_ms is None:
            since = o.sent_ms
        final = now_ms - since >= window_ms
        if info is not None:
            self.on_order_info(info)
            if o.is_open and final:
                if o.amend_orig_steps is not None and (
                    self.steps(info.orig_qty) != o.amend_orig_steps or self.ticks(info.price) != o.amend_price_ticks
                ):
                    o.amend_orig_steps = o.amend_price_ticks = None  # the amendment did not take
                if o.cancel_sent_ms is not None:
                    o.cancel_sent_ms = None  # still open: the cancel did not take; the next cycle decides
                o.unknown_ms = None
                self._refresh(o)
            return "found"
        if o.status == PENDING_NEW:
            if not final:
                return "pending"
            o.status = REJECTED
            o.inferred = True
            self._refresh(o)
            return "never_placed"
        if not o.is_open:
            return "gone"
        self.on_query_unknown(client_order_id, o.order_id)
        return "gone"

    def adopt(self, info: Any) -> bool:
        """An order the exchange lists as open (reconciliation): True if the store did not count it
        (unknown here, or closed on our own inference), and it counts now. An order the exchange
        itself reported closed is left closed: the listing is older than that report."""
        o = self._find(info.client_order_id, int(info.order_id))
        if o is not None and o.is_open:
            self.on_order_info(info)
            return False
        if o is not None and not o.inferred:
            return False
        if o is not None:
            o.key = (-1, 0, -1)  # whatever we inferred, the exchange's listing wins
        self.on_order_info(info)
        return True

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
            status=status,
            update_time=int(info.update_time),
            stage=stage,
            order_type=getattr(info, "type", "LIMIT"),
            tif=getattr(info, "time_in_force", ""),
            reduce_only=bool(getattr(info, "reduce_only", False)),
        )

    # ------------------------------------------------------------------ stream events

    def apply(self, event: Any, now_ms: int | None = None) -> bool:
        """Apply one stream event; returns whether it changed anything."""
        if isinstance(event, BookTicker):
            changed = self._on_book(event)
            if changed and not self.mark:
                self._track_equity()  # valued at the mid until a mark price arrives
            return changed
        if isinstance(event, MarkPrice):
            changed = self._on_mark(event)
        elif isinstance(event, OrderUpdate):
            changed = self._on_order_update(event)
        elif isinstance(event, AccountUpdate):
            changed = self._on_account(event)
        elif isinstance(event, FundingFee):
            changed = self._on_funding_fee(event)
        else:
            return False
        if changed:
            self._track_equity()
        return changed

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
        if self._ambiguous:
            self._settle_ambiguous(u.transaction_time if u.transaction_time > u.update_time else u.update_time)
        changed = self._apply_order(
            client_order_id=u.client_order_id,
            order_id=u.order_id,
            side=u.side,
            price=u.price,
            orig_qty=u.orig_qty,
            cum_qty=u.cum_filled_qty,
            status=u.status,
            update_time=u.update_time,
            stage=_stage(u.status, u.exec_type),
            order_type=u.order_type,
            tif=u.time_in_force,
            reduce_only=u.reduce_only,
        )
        if u.exec_type in _FILL_EXEC_TYPES and u.last_filled_qty > 0:
            placed = self._book_trade(u)
            if placed is None:
                return changed  # a duplicate
            if placed:
                o = self._find(u.client_order_id, u.order_id)
                if o is not None:
                    self._mark_booked(o, self.steps(u.last_filled_qty))
            return True
        return changed

    def _mark_booked(self, o: LiveOrder, steps: int) -> None:
        # Capped at the order's filled quantity: after a snapshot reset its fills so far already
        # count as booked, and a late trade frame must not count them twice.
        booked = o.booked_steps + steps
        o.booked_steps = booked if booked < o.filled_steps else o.filled_steps
        self._refresh(o)

    def _book_trade(self, u: OrderUpdate) -> bool | None:
        """Book one trade once (by order and trade id): into the position, or as inside the exchange's
        position figure (True), or as not yet placed (False: it keeps counting as pending); None for a
        duplicate. Each trade carries its own quantity and time, so the position is exact whatever
        order the trades of one order arrive in."""
        key = (u.order_id, u.trade_id or -self.steps(u.cum_filled_qty))
        if key in self._trade_ids:
            return None
        self._trade_ids[key] = None
        if len(self._trade_ids) > _TRADES_KEEP:
            self._trade_ids.popitem(last=False)
        if u.commission_asset == self.margin_asset or not self.margin_asset:
            self.commission += float(u.commission)
        self.realized_pnl += float(u.realized_pnl)  # as the exchange books it, per trade
        steps = self.steps(u.last_filled_qty)
        if self._on_fill(u.side, steps, float(u.last_filled_price), u.update_time):
            return True
        self._ambiguous.append((u.update_time, u.client_order_id, u.order_id, steps))
        return False

    def _apply_order(
        self,
        *,
        client_order_id: str,
        order_id: int,
        side: str,
        price: Decimal,
        orig_qty: Decimal,
        cum_qty: Decimal,
        status: str,
        update_time: int,
        stage: int,
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
        elif o.status in _CLOSED and stage != _STAGE_FINAL and not o.inferred:
            # Closed here on the exchange's word; a late, older frame must not reopen it. (One the
            # store closed on its own inference is reopened by any exchange frame: the frame is truth.)
            self.stale_updates += 1
            if cum > o.filled_steps:
                o.filled_steps = cum
                self._refresh(o)
            return False
        self._index_id(o, order_id)
        if cum > o.filled_steps:
            o.filled_steps = cum
        o.key = key
        o.status = status
        o.inferred = False
        o.side = side
        if order_type != "MARKET":
            o.price_ticks = self.ticks(price)
        o.orig_steps = self.steps(orig_qty)
        if o.amend_orig_steps is not None and o.orig_steps == o.amend_orig_steps and o.price_ticks == o.amend_price_ticks:
            # Only a frame showing the amendment's own values answers it: an AMENDMENT frame of an
            # earlier modify, arriving late, must not end the count of the one still in flight.
            o.amend_orig_steps = o.amend_price_ticks = None
        self._refresh(o)
        return True

    def _on_fill(self, side: str, qty_steps: int, price: float, t: int) -> bool:
        """Move the position (and the average entry) by one trade newer than the exchange's position
        figure. An older trade is inside the figure. One of the figure's own millisecond is inside it
        if the figure's move within that millisecond accounts for it (or the figure is a snapshot,
        which holds its whole millisecond); otherwise it is unplaced (returns False): the caller keeps
        it pending until the next figure or a frame of a later millisecond places it."""
        if side == BUY:
            self.fills_buy += 1
        else:
            self.fills_sell += 1
        signed = qty_steps if side == BUY else -qty_steps
        if t < self.position_time:
            return True
        if t == self.position_time:
            if self._figure_closes_ms:
                return True
            self._ms_seen += signed
            if self._figure_steps - self._ms_base == self._ms_seen:
                self._place_ambiguous()  # everything of this millisecond seen so far is inside
                return True
            return False
        if self.position_steps and t > self._nonflat_ms:
            self._nonflat_ms = t
        self._trades_since.append((t, signed))
        if len(self._trades_since) > _TRADES_KEEP:
            self._trades_since.popleft()
        pos = self.position_steps
        new = pos + signed
        if pos == 0 or (pos > 0) == (signed > 0):
            self.entry_price = (abs(pos) * self.entry_price + abs(signed) * price) / abs(new)
        elif new == 0:
            self.entry_price = 0.0
        elif (new > 0) != (pos > 0):
            self.entry_price = price
        self.position_steps = new
        if new and t > self._nonflat_ms:
            self._nonflat_ms = t
        return True

    def _place_ambiguous(self, until_ms: int | None = None) -> None:
        """Unplaced trades (of times up to ``until_ms``; all if None) are inside the exchange's figure:
        they stop counting as pending."""
        keep = []
        for item in self._ambiguous:
            t, cid, oid, steps = item
            if until_ms is not None and t > until_ms:
                keep.append(item)
                continue
            o = self._find(cid, oid)
            if o is not None:
                self._mark_booked(o, steps)
        self._ambiguous = keep

    def _settle_ambiguous(self, frame_ms: int) -> None:
        """A user frame of a later millisecond: no figure of the unplaced trades' millisecond is
        still to come (the stream is in order), so the last one held them."""
        if self._ambiguous and frame_ms > self.position_time:
            self._place_ambiguous(frame_ms - 1)

    def _on_account(self, ev: AccountUpdate) -> bool:
        changed = False
        if self._ambiguous:
            self._settle_ambiguous(ev.transaction_time or ev.event_time)
        for b in ev.balances:
            if b.asset == self.margin_asset:
                self.wallet_balance = float(b.wallet_balance)
                changed = True
        for p in ev.positions:
            if p.symbol == self.symbol and p.position_side in ("BOTH", ""):
                changed |= self._set_position(p.amount, p.entry_price, ev.transaction_time or ev.event_time)
        return changed

    def set_position(self, amount: Decimal, entry_price: Decimal, update_time: int) -> bool:
        """The exchange's position figure (REST positionRisk, say) holding every trade up to and
        including ``update_time``; ignored if older than the one we hold; trades booked here after
        that time stay added on top."""
        return self._set_position(Decimal(amount), Decimal(entry_price), int(update_time), snapshot=True)

    def _set_position(self, amount: Decimal, entry_price: Decimal, t: int, snapshot: bool = False) -> bool:
        """A stream figure (ACCOUNT_UPDATE) as of its frame's time: a later figure of the same
        millisecond is newer. A snapshot figure holds its whole millisecond: frames of it are older."""
        pt = self.position_time
        if t < pt or (t == pt and self._figure_closes_ms and not snapshot):
            self.stale_updates += 1
            return False
        if self.position_steps and t > self._nonflat_ms:
            self._nonflat_ms = t
        if snapshot or t > pt:
            # trades of this millisecond booked already, and the position just before it
            seen = sum(q for tq, q in self._trades_since if tq == t)
            self._ms_base = self.position_steps - sum(q for tq, q in self._trades_since if tq >= t)
            self._ms_seen = seen
        self.position_time = t
        self._figure_closes_ms = snapshot
        self.position_confirmed = True
        # Trades not placed yet arrived before this figure: it holds them.
        if self._ambiguous:
            self._place_ambiguous(t)
        # Trades booked here that are newer than the exchange's figure are not in it yet.
        later = deque(tr for tr in self._trades_since if tr[0] > t)
        self._trades_since = later
        fig = self.steps(amount)
        self._figure_steps = fig
        self.position_steps = fig + sum(q for _, q in later)
        self.entry_price = float(entry_price) if self.position_steps else 0.0
        if self.position_steps and t > self._nonflat_ms:
            self._nonflat_ms = t
        # Fills we know of (an order's cumulative quantity as of its newest frame) that are no newer
        # than the figure are inside it, even if their trade frames have not arrived: stop counting
        # them as pending (their late frames are then capped and skipped).
        for o in list(self.orders.values()):
            if o.booked_steps < o.filled_steps and o.key[0] <= t:
                o.booked_steps = o.filled_steps
                self._refresh(o)
        return True

    def _on_funding_fee(self, ev: FundingFee) -> bool:
        if ev.symbol is not None and ev.symbol != self.symbol:
            self.foreign_events += 1
            return False
        t = ev.transaction_time or ev.event_time
        if self._ambiguous:
            self._settle_ambiguous(t)
        if ev.asset == self.margin_asset:
            self.wallet_balance = float(ev.wallet_balance)
        for p in ev.positions:
            if p.symbol == self.symbol:
                self._set_position(p.amount, p.entry_price, t)
        if self.margin_asset and ev.asset != self.margin_asset:
            return False  # a fee in another asset is another symbol's
        if ev.symbol is None:
            # The cross-margin frame names no symbol: if this symbol held a position then, its fee is
            # among the account's FUNDING_FEE income rows, which the runtime reads for us.
            held = self.position_steps != 0 or self._nonflat_ms >= t - FUNDING_LOOKBACK_MS
            if held and t not in self._funding_lookups:
                while self._funding_lookups and self._funding_lookups[0] < t - FUNDING_LOOKUP_HORIZON_MS:
                    self._funding_lookups.popleft()
                self._funding_lookups.append(t)
                return True
            return False
        key = (t, str(ev.amount))
        if key in self._funding_seen:
            return False
        self._funding_seen[key] = None
        if len(self._funding_seen) > _FUNDING_KEEP:
            self._funding_seen.popitem(last=False)
        if self._pair_funding(t, ev.amount, "income"):
            return False  # already booked from its income row
        self._book_funding(t, ev.amount, "frame")
        return True

    # ------------------------------------------------------------------ funding from income rows

    def funding_lookup_start(self) -> int | None:
        """Exchange ms from which the runtime should read this symbol's FUNDING_FEE income rows
        (``GET /fapi/v1/income``) for fees whose frame named no symbol; None when nothing is due."""
        if not self._funding_lookups:
            return None
        return min(self._funding_lookups) - FUNDING_LOOKBACK_MS

    def on_funding_income(self, rows: Iterable[Any]) -> int:
        """Income rows (Binance's ``{"symbol","incomeType","income","asset","time","tranId"}``): this
        symbol's FUNDING_FEE rows are booked once each, by ``tranId``. A row whose fee was already
        booked from a frame naming the symbol (no tranId there: the same amount, within
        ``FUNDING_MATCH_MS``, paired one to one) is not booked again. A row settles the look-ups of
        its time. Returns how many rows were booked."""
        booked = 0
        for r in rows:
            if r.get("incomeType") != "FUNDING_FEE" or r.get("symbol") != self.symbol:
                continue
            if self.margin_asset and r.get("asset", self.margin_asset) != self.margin_asset:
                continue
            try:
                tran = int(r["tranId"])
                t = int(r["time"])
                amount = Decimal(str(r["income"]))
            except (KeyError, TypeError, ValueError, ArithmeticError):
                continue
            for lt in [x for x in self._funding_lookups if abs(x - t) <= FUNDING_MATCH_MS]:
                self._funding_lookups.remove(lt)
            if tran in self._income_seen:
                continue
            self._income_seen[tran] = None
            if len(self._income_seen) > _FUNDING_KEEP:
                self._income_seen.popitem(last=False)
            if self._pair_funding(t, amount, "frame"):
                continue  # its frame named the symbol and was booked
            self._book_funding(t, amount, "income")
            booked += 1
        if booked:
            self._track_equity()
        return booked

    def _pair_funding(self, t: int, amount: Decimal, source: str) -> bool:
        """Pair a fee with the nearest unpaired one of ``source`` booked with the same amount within
        ``FUNDING_MATCH_MS``: the same fee, seen the other way."""
        best = None
        for entry in self._funding_booked:
            if entry[2] == source and not entry[3] and entry[1] == amount and abs(entry[0] - t) <= FUNDING_MATCH_MS:
                if best is None or abs(entry[0] - t) < abs(best[0] - t):
                    best = entry
        if best is None:
            return False
        best[3] = True
        return True

    def _book_funding(self, t: int, amount: Decimal, source: str) -> None:
        self._funding_booked.append([t, amount, source, False])
        self._funding_total += amount
        self.funding_pnl = float(self._funding_total)

    # ------------------------------------------------------------------ REST snapshot

    def reset_from_snapshot(
        self,
        position: Any | None,
        open_orders: Iterable[Any],
        now_ms: int,
        in_flight_grace_ms: int = 6_000,
        wallet_balance: float | None = None,
    ) -> None:
        """Make the exchange's REST view the truth (after a reconnect or at start).

        ``position`` has ``amount``, ``entry_price``, ``update_time``; orders have Binance's REST
        order fields (``client_order_id``, ``order_id``, ``side``, ``price``, ``orig_qty``,
        ``executed_qty``, ``avg_price``, ``status``, ``update_time``). Orders we hold that the
        snapshot lacks are closed (on inference: a later frame reopens them), except new orders
        sent within ``in_flight_grace_ms`` (the request's recvWindow plus a margin: they may still
        land) and orders with an unsettled ambiguous answer (their look-up decides).
        """
        if position is not None:
            # The figure holds every trade up to its own time (the position's last change) and up to
            # the request (``as_of``, the exchange time it was sent: the exchange answered later). A
            # figure without a time of its own (flat: v3 omits the symbol) is as of the request. The
            # millisecond of the request itself is left to the frames of that millisecond.
            own = int(getattr(position, "update_time", 0) or 0)
            as_of = int(getattr(position, "as_of", 0) or 0)
            t = max(own, as_of - 1) if as_of > 0 else (own if own > 0 else now_ms)
            # Ignored if the stream already gave a newer figure (the stream was live meanwhile).
            self._set_position(Decimal(position.amount), Decimal(position.entry_price), t, snapshot=True)
        else:
            t = None
        if wallet_balance is not None:
            self.wallet_balance = wallet_balance
        snap = [o for o in open_orders if getattr(o, "symbol", self.symbol) == self.symbol]
        present_cids = {o.client_order_id for o in snap}
        present_ids = {int(o.order_id) for o in snap}
        for o in list(self.orders.values()):
            if o.client_order_id in present_cids or (o.order_id is not None and o.order_id in present_ids):
                continue
            if o.status == PENDING_NEW and (now_ms - o.sent_ms <= in_flight_grace_ms or o.unknown_ms is not None):
                continue
            o.status = MISSING
            o.inferred = True
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
        # The snapshot's position holds the fills up to its time: nothing of these orders is unbooked.
        # An order with a frame (or REST answer) newer than the figure may have filled after it: its
        # fills not booked keep counting as pending until a frame or a later figure places them.
        for o in list(self.orders.values()):
            if o.booked_steps < o.filled_steps and (t is None or o.key[0] <= self.position_time):
                o.booked_steps = o.filled_steps
                self._refresh(o)
        b, s = self.recompute_pending()
        self.pending_buy_steps, self.pending_sell_steps = b, s
