"""The order ledger: every order of one symbol as the store knows it, and their pending sums.

Orders are tracked from the moment they are sent (``PENDING_NEW``) until the exchange proves them
closed and every fill of them is in the position; then they move to ``closed`` (remembered, so late
duplicates are recognised). Updates are idempotent and ordered per order by cumulative filled (it
only grows, whatever the stamps say), then update time, then stage. ``pending_buy_steps`` /
``pending_sell_steps`` are kept incrementally: each order
contributes what may still fill plus what has filled but is not in the position yet
(``LiveOrder.pending_steps``); ``recompute_pending`` is the invariant they must equal.

Ambiguous answers keep an order counted until a frame or a look-up past the request's recvWindow
settles it; an order the exchange lists that the ledger does not count is adopted. The position
is not here (``agents/position.py``): the store tells the ledger which fills it has booked
(``mark_booked``, ``book_known_fills``).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from decimal import Decimal
from typing import Any, Callable, Iterable

from fleet.binance.enums import ErrorCode, OrderStatus, OrderType, TimeInForce
from fleet.binance.events import BUY, CLOSED_STATUSES, OrderUpdate
from fleet.binance.filters import SymbolFilters
from fleet.binance.models import OrderInfo
from fleet.binance.signing import AHEAD_REFUSED_MS
from fleet.config import SymbolParams

from .algos import OtherAlgos
from .orders import Amend, Cancel, OrderReason, Place

# The listing's time is this host's estimate of the exchange's clock, which may run up to about a
# second ahead unnoticed (the exchange refuses a timestamp only 1,000 ms ahead): an order changed
# within this much before it may have changed after the exchange read its book, so a listing that
# lacks it does not close it (the reconciliation looks it up instead).
LISTING_MARGIN_MS = AHEAD_REFUSED_MS

# How soon a cancel answered ambiguously is sent again (see ``LiveOrder.cancel_retry_due``): one
# weight per retry (a batch of up to 10 cancels also weighs 1) while the order may still rest.
CANCEL_RETRY_MS = 500

PENDING_NEW = "PENDING_NEW"  # sent, not yet acknowledged
MISSING = "MISSING"  # not among the open orders of a REST snapshot
REJECTED = "REJECTED"
_CLOSED = CLOSED_STATUSES | {MISSING}
_UNKNOWN_ORDER_CODES = frozenset({ErrorCode.CANCEL_REJECTED, ErrorCode.NO_SUCH_ORDER})
SAME_ORDER_CODE = ErrorCode.SAME_ORDER  # -5027, "No need to modify the order": it has the values sent already
MODIFY_LIMIT_CODE = ErrorCode.EXCEED_MAXIMUM_MODIFY_ORDER_LIMIT  # -5026, "Exceed maximum modify order limit": this order can never be amended again
_CLOSED_KEEP = 4096  # closed orders remembered, so their late duplicates are recognised
_STAGE_NEW, _STAGE_AMEND, _STAGE_PARTIAL, _STAGE_FINAL = 0, 1, 2, 3


def _reopens(o: LiveOrder) -> bool:
    """Whether the exchange's word that the order is open (a frame, a listing) reopens it, closed here: one
    closed on our own inference, or a new order the exchange's answer refused (never acknowledged: a frame
    or a listing of it proves the exchange took it, whatever its answer said, as a 5xx after execution
    may; not one refused here, never sent)."""
    return o.inferred or (o.status == REJECTED and o.order_id is None and o.refused_code is not None)


def _stage(status: str, exec_type: str = "") -> int:
    if status in _CLOSED:
        return _STAGE_FINAL
    if status == "PARTIALLY_FILLED":
        return _STAGE_PARTIAL
    if exec_type == "AMENDMENT":
        return _STAGE_AMEND
    return _STAGE_NEW


def _answers_amend(o: "LiveOrder", price_ticks: int, orig_steps: int, key: tuple[int, int, int]) -> bool:
    """A view of the order with the amendment in flight's own price and quantity, of the same millisecond
    and filled quantity as the view held: the amendment's answer (a partial fill and an amendment in one
    millisecond share a key; the answer was refused as stale, the order stayed busy for good, the ladder
    unable to move it)."""
    return (o.amend_orig_steps is not None and key[:2] == o.key[:2] and key[2] != _STAGE_FINAL
            and orig_steps == o.amend_orig_steps and price_ticks == o.amend_price_ticks)


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
        "framed_steps",
        "contrib",
        "amend_blocked",
        "unknown_ms",
        "cancel_doubt",
        "inferred",
        "refused_code",
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
        self.order_type: str = OrderType.LIMIT
        self.time_in_force: str = TimeInForce.GTC
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
        self.framed_steps = 0  # its fills whose trade frames came (or it had when first seen here)
        self.contrib = 0
        self.amend_blocked = False  # the exchange refused to modify it again (-5026): replace it instead
        self.unknown_ms: int | None = None  # a request about it got an ambiguous answer at this time
        self.cancel_doubt = False  # our cancel of it was answered ambiguously: it is sent again
        self.inferred = False  # closed on the store's own inference, not on the exchange's word
        self.refused_code: int | None = None  # the exchange's refusal of the new order (on_rejected)

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

    def cancel_retry_due(self, now_ms: int) -> bool:
        """Our cancel of it was answered ambiguously (it may or may not have taken, even later) and
        none is out now, or the last went ``CANCEL_RETRY_MS`` ago: send it again. A cancel is
        idempotent at the exchange (a second one takes, or is refused as "unknown order"), so
        nothing is waited for; new orders and amendments are never resent, they are looked up."""
        sent = self.cancel_sent_ms
        return self.cancel_doubt and (sent is None or now_ms - sent >= CANCEL_RETRY_MS)

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


def _another_order(o: LiveOrder, order_id: int | None) -> bool:
    """``order_id`` names another order than ``o``, under the same client id: Binance keeps client ids
    unique among open orders only, so another hand on the account may use one again once it closed."""
    return order_id is not None and o.order_id is not None and o.order_id != order_id


class _Outcomes:
    """The ledger's requests of open outcome: answered ambiguously, looked up, refused -1021 and sent again
    (mixed into :class:`OrderLedger`)."""

    orders: dict[str, LiveOrder]
    closed: OrderedDict[str, LiveOrder]
    _doubtful: dict[str, None]
    refresh: Callable[[LiveOrder], None]
    find: Callable[[str, int | None], LiveOrder | None]
    on_order_info: Callable[[OrderInfo], bool]
    on_query_unknown: Callable[..., None]

    def on_outcome_unknown(self, client_order_id: str, now_ms: int, cancel: bool = False) -> None:
        """A request about this order (place, amend or cancel) got an ambiguous answer: it may have
        executed, even later. Nothing changes in what the order counts: a new order stays pending,
        an amendment keeps the larger of old and new, a cancel keeps the order counted, until a
        frame or a look-up past the request's recvWindow (``on_lookup``) settles it."""
        o = self.orders.get(client_order_id)
        if o is not None and o.is_open:
            o.unknown_ms = now_ms if o.unknown_ms is None else max(o.unknown_ms, now_ms)
            o.cancel_doubt = o.cancel_doubt or cancel
            self._doubtful[client_order_id] = None

    def _doubtful_orders(self) -> list[LiveOrder]:
        """Open orders with an ambiguous answer not yet settled (the set is pruned here, lazily)."""
        if not self._doubtful:
            return []
        live = [o for cid in self._doubtful if (o := self.orders.get(cid)) is not None and o.unknown_ms is not None]
        self._doubtful = dict.fromkeys(o.client_order_id for o in live)
        return live

    def cancels_due_again(self, now_ms: int) -> list[Cancel]:
        """Orders whose last cancel was answered ambiguously ``CANCEL_RETRY_MS`` ago: cancel again
        (such an order still counts, and may still rest, until a look-up past the window)."""
        return [Cancel(o.client_order_id, o.order_id, OrderReason.RECANCEL)
                for o in self._doubtful_orders() if o.cancel_retry_due(now_ms)]

    def due_lookups(self, now_ms: int, window_ms: int) -> list[LiveOrder]:
        """Orders with an ambiguous answer whose request can no longer execute (``window_ms`` =
        recvWindow plus a margin has passed since the answer): a look-up now settles them."""
        return [o for o in self._doubtful_orders() if now_ms - o.unknown_ms >= window_ms]  # type: ignore[operator]

    def on_lookup(self, client_order_id: str, info: OrderInfo | None, now_ms: int, window_ms: int) -> str:
        """The answer to a look-up by client order id (``info``; None for "order does not exist").

        Before ``window_ms`` has passed since the send (or the ambiguous answer) a request may still
        land, so only what the exchange shows is taken; after it, what did not land never will:
        an unplaced order is closed, an amendment or cancel that did not take is forgotten.
        Returns what was concluded (for the log): "found", "pending", "never_placed", "gone".
        """
        o = self.find(client_order_id, None)
        if o is None:
            if info is not None:
                self.on_order_info(info)
            return "found" if info is not None else "gone"
        since = o.unknown_ms if o.unknown_ms is not None else o.sent_ms
        if o.amend_orig_steps is not None:   # an amendment in flight may land until its own window ends
            since = max(since, o.amend_sent_ms)
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
                o.cancel_doubt = False
                self.refresh(o)
            return "found"
        if o.status == PENDING_NEW:
            if not final:
                return "pending"
            o.status = REJECTED
            o.inferred = True
            self.refresh(o)
            return "never_placed"
        if not o.is_open:
            return "gone"
        self.on_query_unknown(client_order_id, o.order_id)
        return "gone"

    def on_signed_later(self, client_order_ids: Iterable[str], by_ms: int) -> None:
        """These new orders' request was signed when our clock said ``by_ms`` less than it says now (another
        request's -1021 learned the offset again meanwhile): their window runs that much later."""
        for cid in client_order_ids:
            o = self.orders.get(cid)
            if o is not None and o.status == PENDING_NEW:
                o.sent_ms += by_ms

    def on_amend_resigned(self, amended: Iterable[tuple[int | None, str | None]], at_ms: int) -> str | None:
        """Amendments (of these orders: order id, client id) refused -1021, about to go again signed with
        timestamp ``at_ms``: they count until that signature's window closes; None, or, if one no longer
        counts here (its order closed, or the amendment judged not taken), why they must not go again."""
        found = [self.find(cid or "", oid) for oid, cid in amended]
        if any(o is None or not o.is_open or o.amend_orig_steps is None for o in found):
            return "an order it amends is closed here, or its amendment no longer counts"
        for o in found:
            o.amend_sent_ms = max(o.amend_sent_ms, at_ms)   # type: ignore[union-attr]
        return None

    def on_resigned(self, client_order_ids: list[str], at_ms: int) -> str | None:
        """New orders whose request, refused -1021 (unexecuted), is about to go again signed with timestamp
        ``at_ms``: the exchange may take them until that signature's recvWindow closes, so their window runs
        from then. None; or, if one of them no longer counts here (closed on our own inference while the
        first request was held on its way past its window: a resync's listing, a look-up; and the ladder
        placed again since), why the request must not go again: landing now, it would rest beside what
        replaced it, uncounted."""
        gone = [cid for cid in client_order_ids
                if (o := self.orders.get(cid)) is None or o.status != PENDING_NEW]
        if gone:
            return f"{len(gone)} of its orders closed here since it was first signed ({gone[0]})"
        for cid in client_order_ids:
            o = self.orders[cid]
            o.sent_ms = max(o.sent_ms, at_ms)
        return None


class OrderLedger(_Outcomes):
    """One symbol's orders: open (in flight included) and recently closed, and their pending sums."""

    def __init__(self, symbol: str, filters: SymbolFilters) -> None:
        self.symbol = symbol
        self.step = float(filters.step_size)
        self.tick = float(filters.tick_size)
        self._step_d = filters.step_size
        self._tick_d = filters.tick_size
        self.orders: dict[str, LiveOrder] = {}  # open (incl. in flight), by client id
        self._by_id: dict[int, LiveOrder] = {}
        self.closed: OrderedDict[str, LiveOrder] = OrderedDict()
        self.pending_buy_steps = 0
        self.pending_sell_steps = 0
        self.rejects: dict[int, int] = {}
        self.stale_updates = 0
        self._doubtful: dict[str, None] = {}  # client ids once answered ambiguously, in order (pruned as they settle)
        self.algos = OtherAlgos()   # other hands' conditional orders, in the pending sums too

    def with_params(self, params: SymbolParams) -> "OrderLedger":
        """The ledger under new parameters: no parameter shapes it, so every order and sum is kept
        as is (this ledger is handed over: use the returned one from now on)."""
        return copy.copy(self)

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

    # ------------------------------------------------------------------ order views

    def ladder_view(self) -> tuple[list[LiveOrder], list[LiveOrder], int, int]:
        """One pass for a quote cycle: live ladder bids and asks (inner to outer), and the pending
        (buy, sell) steps of everything else (other orders, cancels in flight, unbooked fills,
        other hands' conditional orders)."""
        bids: list[LiveOrder] = []
        asks: list[LiveOrder] = []
        ob, os_ = self.algos.buy_steps, self.algos.sell_steps
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
        b, s = self.algos.buy_steps, self.algos.sell_steps
        for o in self.orders.values():
            if o.side == BUY:
                b += o.pending_steps()
            else:
                s += o.pending_steps()
        return b, s

    def reset_pending(self) -> None:
        """Set the incremental sums to ``recompute_pending`` (after a snapshot)."""
        self.pending_buy_steps, self.pending_sell_steps = self.recompute_pending()

    # ------------------------------------------------------------------ bookkeeping

    def refresh(self, o: LiveOrder) -> None:
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
            o.cancel_doubt = False
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

    def find(self, client_order_id: str, order_id: int | None) -> LiveOrder | None:
        o = self.orders.get(client_order_id)
        if o is None and order_id is not None:
            o = self._by_id.get(order_id)
        if o is None and (o := self.closed.get(client_order_id)) is not None and _another_order(o, order_id):
            return None
        return o

    def mark_booked(self, client_order_id: str, order_id: int | None, steps: int) -> None:
        """``steps`` of this order's fills are in the position now."""
        o = self.find(client_order_id, order_id)
        if o is None:
            return
        # Capped at the order's filled quantity: after a snapshot reset its fills so far already
        # count as booked, and a late trade frame must not count them twice.
        booked = o.booked_steps + steps
        o.booked_steps = booked if booked < o.filled_steps else o.filled_steps
        self.refresh(o)

    def book_known_fills(self, until_ms: int | None) -> None:
        """Fills known here (an order's cumulative quantity as of its newest frame) no newer than
        ``until_ms`` (all if None) are inside the exchange's position figure, even if their trade
        frames have not arrived: they stop counting as pending (their late frames are then capped)."""
        for o in list(self.orders.values()):
            if o.booked_steps < o.filled_steps and (until_ms is None or o.key[0] <= until_ms):
                o.booked_steps = o.filled_steps
                self.refresh(o)

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
        self.refresh(o)
        return o

    def on_amend_sent(self, amend: Amend, now_ms: int) -> None:
        """An amendment was sent: until answered the order counts as the larger of old and new."""
        o = self.find(amend.client_order_id, amend.order_id)
        if o is None or not o.is_open:
            return
        o.amend_price_ticks = amend.price_ticks
        o.amend_orig_steps = amend.qty_steps
        o.amend_sent_ms = now_ms
        o.layer = amend.layer if amend.layer >= 0 else o.layer
        self.refresh(o)

    def on_cancel_sent(self, cancel: Cancel, now_ms: int) -> None:
        """A cancel was sent: the order still counts as pending until the exchange closes it."""
        o = self.find(cancel.client_order_id, cancel.order_id)
        if o is not None and o.is_open:
            o.cancel_sent_ms = now_ms

    def on_not_sent(self, decision: Place | Amend | Cancel) -> None:
        """``on_*_sent`` was called but the request never left (rate budget, shutdown): undo it,
        without counting an exchange rejection."""
        o = self.orders.get(decision.client_order_id)
        if o is None:
            return
        if isinstance(decision, Place):
            if o.status == PENDING_NEW:
                o.status = REJECTED
                self.refresh(o)
        elif isinstance(decision, Amend):
            if o.amend_orig_steps is not None:
                o.amend_orig_steps = o.amend_price_ticks = None
                self.refresh(o)
        else:
            o.cancel_sent_ms = None

    def on_rejected(self, client_order_id: str, code: int, now_ms: int = 0) -> None:
        """A new order was refused by the exchange: it never existed."""
        self.rejects[code] = self.rejects.get(code, 0) + 1
        o = self.orders.get(client_order_id)
        if o is not None and o.status == PENDING_NEW:
            o.status = REJECTED
            o.refused_code = code
            self.refresh(o)

    def on_amend_rejected(self, client_order_id: str, code: int, order_id: int | None = None, now_ms: int = 0) -> None:
        """A modify was refused: the order stays as it was (see ``on_cancel_rejected`` for unknown orders).

        -5026 (the order's modify limit is reached) marks it ``amend_blocked``: never amended again.
        -5027 ("No need to modify the order") is the exchange's word that the order has the price and
        quantity sent: the store takes them (its view was older, e.g. an earlier amendment the exchange
        applied while its answer was lost and its frame stale; kept, the ladder would send the same
        amendment every cycle and count the order at its old size)."""
        self.rejects[code] = self.rejects.get(code, 0) + 1
        o = self.find(client_order_id, order_id)
        if o is None or not o.is_open:
            return
        if code == SAME_ORDER_CODE and o.amend_orig_steps is not None and o.amend_price_ticks is not None:
            o.price_ticks, o.orig_steps = o.amend_price_ticks, o.amend_orig_steps
        o.amend_price_ticks = o.amend_orig_steps = None
        if code == MODIFY_LIMIT_CODE:
            o.amend_blocked = True  # the order manager cancels and replaces it from now on
        if code in _UNKNOWN_ORDER_CODES and o.status != PENDING_NEW:
            o.unresolved_ms = now_ms
        self.refresh(o)

    def on_cancel_rejected(self, client_order_id: str, code: int, order_id: int | None = None, now_ms: int = 0) -> None:
        """A cancel was refused. For "unknown order" the order is no longer open on the exchange, but
        it may have *filled* with the fill still on its way: it keeps counting as pending (unresolved)
        until its final frame or a REST answer says how it ended. Other codes: it may be retried."""
        self.rejects[code] = self.rejects.get(code, 0) + 1
        o = self.find(client_order_id, order_id)
        if o is None or not o.is_open:
            return
        o.cancel_sent_ms = None
        if code in _UNKNOWN_ORDER_CODES:
            o.cancel_doubt = False  # not open at the exchange: nothing to cancel again
            if o.status != PENDING_NEW:
                o.unresolved_ms = now_ms
        self.refresh(o)

    def on_query_unknown(self, client_order_id: str, order_id: int | None = None) -> None:
        """A lookup (GET order) answered "order does not exist" (-2013): the exchange never had it,
        or it ended too long ago to matter; either way it cannot fill now and owes us no fills."""
        o = self.find(client_order_id, order_id)
        if o is None or not o.is_open and o.booked_steps >= o.filled_steps:
            return
        o.status = MISSING
        o.inferred = True
        o.booked_steps = o.filled_steps
        self.refresh(o)

    def adopt(self, info: OrderInfo) -> bool:
        """An order the exchange lists as open (reconciliation): True if the store did not count it
        (unknown here, closed on our own inference, or read as refused), and it counts now. An order the
        exchange itself reported closed is left closed: the listing is older than that report."""
        o = self.find(info.client_order_id, int(info.order_id))
        if o is not None and o.is_open:
            self.on_order_info(info)
            return False
        if o is not None and not _reopens(o):
            return False
        if o is not None:
            o.key = (-1, 0, -1)  # whatever we inferred, the exchange's listing wins
        self.on_order_info(info)
        return True

    def sync_listing(self, listed: Iterable[Any], now_ms: int, grace_ms: int, listed_at_ms: int | None = None) -> None:
        """A REST snapshot's open orders (this symbol's) are the truth: orders it lacks are closed (on
        inference: a later frame reopens them), except new ones sent within ``grace_ms``, those of an
        unsettled ambiguous answer and those changed since ``listed_at_ms`` (when the listing was asked
        for, exchange time as estimated here: ``LISTING_MARGIN_MS`` earlier); listed ones are applied
        (and reopened if closed here)."""
        snap = [o for o in listed if getattr(o, "symbol", self.symbol) == self.symbol]
        present_cids = {o.client_order_id for o in snap}
        present_ids = {int(o.order_id) for o in snap}
        ref_ms = now_ms if listed_at_ms is None else min(now_ms, listed_at_ms)
        for o in list(self.orders.values()):
            if o.client_order_id in present_cids or (o.order_id is not None and o.order_id in present_ids):
                continue
            if o.status == PENDING_NEW and (ref_ms - o.sent_ms <= grace_ms or o.unknown_ms is not None) \
                    or listed_at_ms is not None and o.key[0] >= listed_at_ms - LISTING_MARGIN_MS:
                continue
            o.status = MISSING
            o.inferred = True
            self.refresh(o)
        for info in snap:
            o = self.find(info.client_order_id, int(info.order_id))
            if o is not None and not o.is_open:
                # We had closed it (e.g. -2011) but the exchange still lists it: reopen as listed.
                self.closed.pop(o.client_order_id, None)
                o.status = info.status
                o.key = (-1, 0, -1)
                o.contrib = 0
                self.orders[o.client_order_id] = o
                if o.order_id is not None:
                    self._by_id[o.order_id] = o   # (found by its id again: an amendment names only that)
            self.on_order_info(info)

    # ------------------------------------------------------------------ the exchange's word

    def on_order_info(self, info: OrderInfo) -> bool:
        """A REST answer (place/modify/cancel/query): an order object with Binance's REST fields."""
        if getattr(info, "symbol", self.symbol) != self.symbol:
            return False
        status = info.status
        return self.apply_order(
            info.client_order_id, int(info.order_id), info.side, info.price, info.orig_qty, info.executed_qty,
            status, int(info.update_time), _stage(status), getattr(info, "type", OrderType.LIMIT),
            getattr(info, "time_in_force", ""), bool(getattr(info, "reduce_only", False)),
        )

    def on_order_update(self, u: OrderUpdate) -> bool:
        """An ORDER_TRADE_UPDATE frame of this symbol (its trade, if any, is the position's)."""
        return self.apply_order(
            u.client_order_id, u.order_id, u.side, u.price, u.orig_qty, u.cum_filled_qty, u.status,
            u.update_time, _stage(u.status, u.exec_type), u.order_type, u.time_in_force, u.reduce_only,
        )

    def apply_order(
        self, client_order_id: str, order_id: int, side: str, price: Decimal, orig_qty: Decimal, cum_qty: Decimal,
        status: str, update_time: int, stage: int, order_type: str, tif: str, reduce_only: bool,
    ) -> bool:
        """One exchange view of an order, applied if newer than the one held; returns whether it
        changed anything. Newer: more of the order filled (its filled quantity only grows, whatever
        the stamps say), else a later update time, else a later stage of the order's life."""
        cum = self.steps(cum_qty)
        key = (update_time, cum, stage)
        o = self.find(client_order_id, order_id)
        if o is None:
            o = LiveOrder(client_order_id, side, self.ticks(price), self.steps(orig_qty))
            o.framed_steps = cum   # (its fills so far: a gap's read, or no concern of this agent's P&L)
            o.order_type = order_type
            o.time_in_force = tif
            o.reduce_only = reduce_only
            o.status = OrderStatus.NEW
            self.orders[client_order_id] = o
        elif _another_order(o, order_id) or cum < o.key[1] or (cum == o.key[1] and key <= o.key
                                                                and not _answers_amend(o, self.ticks(price),
                                                                                       self.steps(orig_qty), key)):
            self.stale_updates += 1   # (another order: a late view of one closed before this one was placed)
            return False
        elif o.status in _CLOSED and stage != _STAGE_FINAL and not _reopens(o):
            # Closed here on the exchange's word; a late, older frame must not reopen it. (One the
            # store closed on its own inference, or read as refused, is reopened by any exchange frame:
            # the frame is truth.)
            self.stale_updates += 1
            if cum > o.filled_steps:
                o.filled_steps = cum
                self.refresh(o)
            return False
        self._index_id(o, order_id)
        if cum > o.filled_steps:
            o.filled_steps = cum
        o.key = key
        o.status = status
        o.inferred = False
        o.side = side
        if order_type != OrderType.MARKET:
            o.price_ticks = self.ticks(price)
        o.orig_steps = self.steps(orig_qty)
        if o.amend_orig_steps is not None and o.orig_steps == o.amend_orig_steps and o.price_ticks == o.amend_price_ticks:
            # Only a frame showing the amendment's own values answers it: an AMENDMENT frame of an
            # earlier modify, arriving late, must not end the count of the one still in flight.
            o.amend_orig_steps = o.amend_price_ticks = None
        self.refresh(o)
        return True
