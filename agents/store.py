"""The Store: one symbol's state, a thin facade over its parts.

Everything the strategy and the guard read comes from here, and everything the exchange or the
runtime reports goes in here, through one method per kind of input. The state lives in four parts,
each in its own module:

- ``agents/ledger.py`` ``OrderLedger``: the orders (``LiveOrder``), open and closed, their pending
  sums, ambiguous answers and look-ups, adoption. Order updates are idempotent and ordered per order
  by (update time, cumulative filled, stage), so duplicated, stale or reordered frames leave the
  order as the newest one says.
- ``agents/position.py`` ``Position``: trades booked once by id, the exchange's position figures with
  their time, same-millisecond fills, realized P&L and commission, drawdown equity and its peak. A
  fill the store has heard of but not booked keeps counting as pending, so ``position +
  pending_buy`` never understates what the exchange could hold.
- ``agents/market.py`` ``MarketState``: bid, ask, mid, mark and the 30-minute price window.
- ``agents/funding.py`` ``FundingBook``: the funding estimate, its EMA prediction, fees booked from
  frames and income rows.

The store routes each input to its parts and carries what crosses them: which unplaced trades a
position figure settles (the ledger stops counting their fills), the price and funding P&L the
drawdown is valued with, whether the symbol held a position when a symbol-less funding fee came.
``with_params`` hands every part over to new parameters with its state kept.
"""

from __future__ import annotations

import copy
from decimal import Decimal
from operator import attrgetter
from typing import Any, Iterable

from fleet.binance.enums import ADL_CLIENT_ORDER_ID, SETTLEMENT_CLIENT_ORDER_ID, ExecType
from fleet.binance.events import (
    AccountUpdate,
    AlgoUpdate,
    BookTicker,
    FundingFee,
    MarketEvent,
    MarkPrice,
    OrderUpdate,
    UserEvent,
)
from fleet.binance.filters import SymbolFilters
from fleet.binance.models import AlgoOrderInfo, OrderInfo
from fleet.config import SymbolParams

from .algos import heard_of, steps_of as algo_steps
from .funding import (
    FUNDING_LOOKBACK_MS,
    FUNDING_LOOKUP_HORIZON_MS,
    FUNDING_MATCH_MS,
    FundingBook,
)
from .ledger import LISTING_MARGIN_MS, MISSING, MODIFY_LIMIT_CODE, PENDING_NEW, REJECTED, LiveOrder, OrderLedger
from .market import SAMPLE_MS, WINDOW_MS, MarketState
from .orders import Amend, Cancel, Place
from .position import BOOKED_ALL, Position

__all__ = [
    "FUNDING_LOOKBACK_MS",
    "FUNDING_LOOKUP_HORIZON_MS",
    "FUNDING_MATCH_MS",
    "MISSING",
    "MODIFY_LIMIT_CODE",
    "PENDING_NEW",
    "REJECTED",
    "SAMPLE_MS",
    "WINDOW_MS",
    "LiveOrder",
    "Store",
]

_FILL_EXEC_TYPES = frozenset({ExecType.TRADE, ExecType.CALCULATED})  # CALCULATED: a liquidation fill


def _read(path: str, doc: str | None = None) -> property:
    """A read-only attribute of one of the store's parts (``"ledger.orders"``), read in C."""
    return property(attrgetter(path), doc=doc)


class Store:
    """One symbol's state. Quantities in integer steps, prices of orders in integer ticks."""

    def __init__(self, symbol: str, filters: SymbolFilters, params: SymbolParams) -> None:
        self.symbol = symbol
        self.filters = filters
        self.params = params
        self.step = float(filters.step_size)
        self.tick = float(filters.tick_size)
        self.margin_asset = filters.margin_asset or filters.quote_asset
        self.ledger = OrderLedger(symbol, filters)
        self.position_book = Position(filters, params)
        self.market = MarketState()
        self.funding = FundingBook(params)
        self.wallet_balance: float | None = None  # the shared account's wallet (informational)
        self.foreign_events = 0
        self.liquidations = 0  # fills of the exchange's liquidation orders (execution type CALCULATED)
        self.deleveraged = 0   # fills of its auto-deleveraging orders (CALCULATED, ``adl_autoclose``)
        self.settled = 0       # fills of its settlement orders (``settlement_autoclose-``: a delisting)

    def with_params(self, params: SymbolParams) -> "Store":
        """The store under new parameters, every part's state kept (orders, position and P&L, the
        drawdown peak, prices and the window, funding): use the returned store from now on."""
        new = copy.copy(self)
        new.params = params
        new.ledger = self.ledger.with_params(params)
        new.position_book = self.position_book.with_params(params)
        new.market = self.market.with_params(params)
        new.funding = self.funding.with_params(params)
        return new

    # ------------------------------------------------------------------ the parts' state, read

    orders = _read("ledger.orders", doc="Open orders (in flight included), by client id.")
    closed = _read("ledger.closed", doc="Recently closed orders, by client id.")
    pending_buy_steps = _read("ledger.pending_buy_steps")
    pending_sell_steps = _read("ledger.pending_sell_steps")
    rejects = _read("ledger.rejects", doc="Exchange rejections by error code.")
    position_steps = _read("position_book.position_steps")
    entry_price = _read("position_book.entry_price")
    position_time = _read("position_book.position_time")
    position_confirmed = _read("position_book.position_confirmed")
    realized_pnl = _read("position_book.realized_pnl")
    commission = _read("position_book.commission")
    fills_buy = _read("position_book.fills_buy")
    fills_sell = _read("position_book.fills_sell")
    max_drawdown_pct = _read("position_book.max_drawdown_pct")
    bid = _read("market.bid")
    ask = _read("market.ask")
    mid = _read("market.mid")
    mark = _read("market.mark")
    last_market_ms = _read("market.last_market_ms")
    funding_rate_estimate = _read("funding.funding_rate_estimate")
    predicted_funding = _read("funding.predicted_funding")
    funding_pnl = _read("funding.funding_pnl")

    @property
    def stale_updates(self) -> int:
        """Duplicate or older exchange frames skipped (orders, position figures, book and mark)."""
        return self.ledger.stale_updates + self.position_book.stale_updates + self.market.stale_updates

    # ------------------------------------------------------------------ unit conversion

    def steps(self, qty: Decimal | float | str) -> int:
        """Steps of an exchange quantity (the nearest step: exchange quantities lie on the grid)."""
        return self.ledger.steps(qty)

    def ticks(self, price: Decimal | float | str) -> int:
        return self.ledger.ticks(price)

    # ------------------------------------------------------------------ the seed's read API

    @property
    def position(self) -> float:
        return self.position_book.position_steps * self.step

    def pending_buy_size(self) -> float:
        return self.ledger.pending_buy_steps * self.step

    def pending_sell_size(self) -> float:
        return self.ledger.pending_sell_steps * self.step

    def mid_price(self) -> float:
        return self.market.mid

    def price_stddev_30m(self) -> float:
        """Relative standard deviation (stddev / mean) of the mids in the last 30 minutes."""
        return self.market.price_stddev_30m()

    def price_window_span_ms(self) -> int:
        return self.market.price_window_span_ms()

    def predicted_funding_rate(self) -> float:
        return self.funding.predicted_funding

    @property
    def worst_long_steps(self) -> int:
        return self.position_book.position_steps + self.ledger.pending_buy_steps

    @property
    def worst_short_steps(self) -> int:
        return self.position_book.position_steps - self.ledger.pending_sell_steps

    @property
    def worst_long(self) -> float:
        return self.worst_long_steps * self.step

    @property
    def worst_short(self) -> float:
        return self.worst_short_steps * self.step

    # ------------------------------------------------------------------ P&L

    def unrealized_pnl(self) -> float:
        return self.position_book.unrealized_pnl(self.market.price)

    def pnl(self) -> float:
        """This symbol's own P&L: realized + funding - commission (as the exchange booked them) + unrealized."""
        return self.position_book.pnl(self.market.price, self.funding.funding_pnl)

    def equity(self) -> float:
        """The symbol's equity for its drawdown: its capital (``risk.capital``) plus its own P&L.

        Not the account's wallet: the wallet is shared by every symbol and moves with transfers.
        """
        return self.params.risk.capital + self.pnl()

    @property
    def peak_equity(self) -> float | None:
        """The highest equity since the store had a confirmed baseline (None before)."""
        return self.position_book.peak_equity

    def drawdown_pct(self) -> float:
        """Percent below the peak equity (0 at a peak, and before a confirmed baseline). A pure read."""
        return self.position_book.drawdown_pct(self.market.price, self.funding.funding_pnl)

    def track_equity(self) -> None:
        self.position_book.track_equity(self.market.price, self.funding.funding_pnl)

    # ------------------------------------------------------------------ order views (the ledger's)

    def ladder_view(self) -> tuple[list[LiveOrder], list[LiveOrder], int, int]:
        """Live ladder bids and asks (inner to outer), and the pending (buy, sell) steps of the rest."""
        return self.ledger.ladder_view()

    def get(self, client_order_id: str) -> LiveOrder | None:
        return self.ledger.get(client_order_id)

    def open_orders(self) -> list[LiveOrder]:
        """Orders that may still fill (in flight or open on the exchange)."""
        return self.ledger.open_orders()

    def stale_in_flight(self, now_ms: int, older_than_ms: int) -> list[LiveOrder]:
        return self.ledger.stale_in_flight(now_ms, older_than_ms)

    def recompute_pending(self) -> tuple[int, int]:
        """The pending sums from scratch (the invariant the incremental sums must equal)."""
        return self.ledger.recompute_pending()

    def unresolved_orders(self, now_ms: int, older_than_ms: int = 0) -> list[LiveOrder]:
        """Orders the exchange called unknown whose end we have not seen: the runtime looks them up
        (GET order) and passes the answer to ``on_order_info``, or resyncs from a snapshot."""
        return [o for o in self.ledger.orders.values()
                if o.unresolved_ms is not None and now_ms - o.unresolved_ms >= older_than_ms]

    def due_lookups(self, now_ms: int, window_ms: int) -> list[LiveOrder]:
        return self.ledger.due_lookups(now_ms, window_ms)

    # ------------------------------------------------------------------ what the runtime sent or heard

    def on_sent(self, place: Place, now_ms: int) -> LiveOrder:
        """A new order was sent: it is pending from this moment on."""
        return self.ledger.on_sent(place, now_ms)

    def on_amend_sent(self, amend: Amend, now_ms: int) -> None:
        self.ledger.on_amend_sent(amend, now_ms)

    def on_cancel_sent(self, cancel: Cancel, now_ms: int) -> None:
        self.ledger.on_cancel_sent(cancel, now_ms)

    def on_not_sent(self, decision: Place | Amend | Cancel) -> None:
        """A request counted as sent never left: undo it (no exchange rejection counted)."""
        self.ledger.on_not_sent(decision)

    # a request refused -1021 and signed again, or signed before the clock's offset was learned anew
    on_signed_later = _read("ledger.on_signed_later")
    on_resigned = _read("ledger.on_resigned")
    on_amend_resigned = _read("ledger.on_amend_resigned")

    def on_rejected(self, client_order_id: str, code: int, now_ms: int = 0) -> None:
        self.ledger.on_rejected(client_order_id, code, now_ms)

    def on_amend_rejected(self, client_order_id: str, code: int, order_id: int | None = None, now_ms: int = 0) -> None:
        self.ledger.on_amend_rejected(client_order_id, code, order_id, now_ms)

    def on_cancel_rejected(self, client_order_id: str, code: int, order_id: int | None = None, now_ms: int = 0) -> None:
        self.ledger.on_cancel_rejected(client_order_id, code, order_id, now_ms)

    def on_query_unknown(self, client_order_id: str, order_id: int | None = None) -> None:
        self.ledger.on_query_unknown(client_order_id, order_id)

    def on_outcome_unknown(self, client_order_id: str, now_ms: int, cancel: bool = False) -> None:
        self.ledger.on_outcome_unknown(client_order_id, now_ms, cancel)

    def cancels_due_again(self, now_ms: int) -> list[Cancel]:
        return self.ledger.cancels_due_again(now_ms)

    def on_lookup(self, client_order_id: str, info: OrderInfo | None, now_ms: int, window_ms: int) -> str:
        """The answer to a look-up by client order id: "found", "pending", "never_placed" or "gone"."""
        if info is not None:
            _unframed_fills(self, info)
        outcome = self.ledger.on_lookup(client_order_id, info, now_ms, window_ms)
        if info is not None:
            _fills_inside_figure(self, info)
        return outcome

    def adopt(self, info: OrderInfo) -> bool:
        """An order the exchange lists as open: True if it was not counted here, and it counts now."""
        newly = self.ledger.adopt(info)
        if newly and self.ledger.algos.open:
            self.ledger.algos.on_order(self.ledger, int(info.order_id))   # a triggered conditional order's
        return newly

    def on_order_info(self, info: OrderInfo) -> bool:
        """A REST answer (place/modify/cancel/query): an order object with Binance's REST fields."""
        _unframed_fills(self, info)
        changed = self.ledger.on_order_info(info)
        if changed:
            _fills_inside_figure(self, info)
            if self.ledger.algos.open:
                self.ledger.algos.on_order(self.ledger, int(info.order_id))
        return changed

    # ------------------------------------------------------------------ stream events

    def apply(self, event: MarketEvent | UserEvent, now_ms: int | None = None) -> bool:
        """Apply one stream event; returns whether it changed anything."""
        if isinstance(event, BookTicker):
            if event.symbol != self.symbol:
                self.foreign_events += 1
                return False
            changed = self.market.on_book(event)
            if changed and not self.market.mark:
                self.track_equity()  # valued at the mid until a mark price arrives
            return changed
        if isinstance(event, OrderUpdate):
            return self._on_order_update(event)  # equity moves with its fills only: tracked there
        if isinstance(event, MarkPrice):
            changed = self._on_mark(event)
        elif isinstance(event, AccountUpdate):
            changed = self._on_account(event)
        elif isinstance(event, FundingFee):
            changed = self._on_funding_fee(event)
        elif isinstance(event, AlgoUpdate):
            return self._on_algo(event)
        else:
            return False
        if changed:
            self.track_equity()
        return changed

    def _on_algo(self, ev: AlgoUpdate) -> bool:
        """Another hand's conditional order changed (``agents/algos.py``): counted while it may still
        send an order to the book."""
        if ev.symbol != self.symbol:
            self.foreign_events += 1
            return False
        return self.ledger.algos.on_update(self.ledger, ev, algo_steps(ev.quantity, self.filters.step_size))

    def sync_algos(self, listed: Iterable[AlgoOrderInfo], listed_at_ms: int | None) -> None:
        """The symbol's conditional orders as ``GET openAlgoOrders`` listed them, asked at ``listed_at_ms``."""
        listed = [a for a in listed if a.symbol == self.symbol]
        step = self.filters.step_size
        led = self.ledger
        led.algos.sync_listing(listed, {a.algo_id: algo_steps(a.quantity, step) for a in listed}, listed_at_ms,
                               LISTING_MARGIN_MS, lambda order_id: heard_of(led, order_id))
        led.reset_pending()

    def _on_mark(self, ev: MarkPrice) -> bool:
        if ev.symbol != self.symbol:
            self.foreign_events += 1
            return False
        if not self.market.on_mark(ev):
            return False
        self.funding.on_estimate(ev.event_time, ev.funding_rate)
        settled = self.funding.next_funding_ms
        self.funding.on_schedule(ev.next_funding_time, ev.event_time)
        if 0 < settled <= ev.event_time < self.funding.next_funding_ms:   # the settlement at ``settled`` passed
            self.funding.expect_fee(settled, self._held_at(settled))
        self.funding.check_expected(ev.event_time, self._held_at)
        return True

    def _held_at(self, t: int) -> bool:
        return self.position_book.held_within(t, FUNDING_LOOKBACK_MS)

    def _on_order_update(self, u: OrderUpdate) -> bool:
        if u.symbol != self.symbol:
            self.foreign_events += 1
            return False
        pos = self.position_book
        if pos.unplaced:
            self._settle_unplaced(u.transaction_time if u.transaction_time > u.update_time else u.update_time)
        led = self.ledger
        changed = led.on_order_update(u)
        if led.algos.open:
            led.algos.on_order(led, u.order_id)   # a triggered conditional order's order, now counted as itself
        if u.exec_type in _FILL_EXEC_TYPES and u.last_filled_qty > 0:
            key = (u.order_id, u.trade_id or -led.steps(u.cum_filled_qty))
            steps = led.steps(u.last_filled_qty)
            counts = u.commission_asset == self.margin_asset or not self.margin_asset
            placed = pos.book_trade(key, u, steps, counts, pnl_known=not u.trade_fields_missing)
            if placed is None:
                return changed  # a duplicate
            _framed(self, u.client_order_id, u.order_id, steps)
            if u.client_order_id.startswith(SETTLEMENT_CLIENT_ORDER_ID):   # whatever its execution type
                self.settled += 1
            elif u.exec_type == ExecType.CALCULATED:
                if u.client_order_id.startswith(ADL_CLIENT_ORDER_ID):
                    self.deleveraged += 1
                else:
                    self.liquidations += 1
            if placed == BOOKED_ALL:
                self._place_unplaced(None)  # everything of this millisecond seen so far is inside
            if placed:
                led.mark_booked(u.client_order_id, u.order_id, steps)
            self.track_equity()
            return True
        return changed

    def _place_unplaced(self, until_ms: int | None) -> None:
        """Unplaced trades (up to ``until_ms``; all if None) are inside the exchange's figure: their
        fills stop counting as pending."""
        led = self.ledger
        for _, cid, oid, steps in self.position_book.place_unplaced(until_ms):
            led.mark_booked(cid, oid, steps)

    def _settle_unplaced(self, frame_ms: int) -> None:
        """A user frame of a later millisecond: no figure of the unplaced trades' millisecond is
        still to come (the stream is in order), so the last one held them."""
        if frame_ms > self.position_book.position_time:
            self._place_unplaced(frame_ms - 1)

    def _on_account(self, ev: AccountUpdate) -> bool:
        changed = False
        if self.position_book.unplaced:
            self._settle_unplaced(ev.transaction_time or ev.event_time)
        for b in ev.balances:
            if b.asset == self.margin_asset:
                self.wallet_balance = float(b.wallet_balance)
                changed = True
        for p in ev.positions:
            if p.symbol == self.symbol and p.position_side in ("BOTH", ""):
                if p.entry_missing:   # (an entry of 0: a phantom profit lifted the drawdown's peak for good, then
                    # a phantom drawdown sold the position): not applied; the runtime resyncs
                    raise ValueError(f"{self.symbol}'s position {p.amount} came with no entry price")
                changed |= self._set_position(p.amount, p.entry_price, ev.transaction_time or ev.event_time)
        return changed

    def set_position(self, amount: Decimal, entry_price: Decimal, update_time: int) -> bool:
        """The exchange's position figure (REST positionRisk, say) holding every trade up to and
        including ``update_time``; ignored if older than the one we hold; trades booked here after
        that time stay added on top."""
        return self._set_position(Decimal(amount), Decimal(entry_price), int(update_time), snapshot=True)

    def _set_position(self, amount: Decimal, entry_price: Decimal, t: int, snapshot: bool = False) -> bool:
        """A position figure as of ``t`` (``Position.set_figure``). Trades not placed yet arrived
        before it: it holds them. Fills known here no newer than it are inside it too, even if their
        trade frames have not arrived: they stop counting as pending."""
        if not self.position_book.set_figure(self.ledger.steps(amount), entry_price, t, snapshot):
            return False
        if self.position_book.unplaced:
            self._place_unplaced(t)
        self.ledger.book_known_fills(t)
        if self.ledger.algos.open:
            self.ledger.algos.on_figure(self.ledger, t)
        return True

    def _on_funding_fee(self, ev: FundingFee) -> bool:
        if ev.symbol is not None and ev.symbol != self.symbol:
            self.foreign_events += 1
            return False
        t = ev.transaction_time or ev.event_time
        if self.position_book.unplaced:
            self._settle_unplaced(t)
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
            return self.funding.ask_lookup(t, self.position_book.held_within(t, FUNDING_LOOKBACK_MS))
        return self.funding.on_fee(t, ev.amount)

    # ------------------------------------------------------------------ funding from income rows

    def funding_lookup_start(self) -> int | None:
        """Exchange ms from which the runtime should read this symbol's FUNDING_FEE income rows
        (``GET /fapi/v1/income``) for fees whose frame named no symbol; None when nothing is due."""
        return self.funding.lookup_start()

    def on_funding_income(self, rows: Iterable[Any], read_at_ms: int | None = None) -> int:
        """This symbol's FUNDING_FEE income rows, booked once each (``FundingBook.on_income``)."""
        booked = self.funding.on_income(rows, self.symbol, self.margin_asset, read_at_ms)
        if booked:
            self.track_equity()
        return booked

    # ------------------------------------------------------------------ REST snapshot

    def reset_from_snapshot(
        self,
        position: Any | None,
        open_orders: Iterable[Any],
        now_ms: int,
        in_flight_grace_ms: int = 6_000,
        wallet_balance: float | None = None,
        listed_at_ms: int | None = None,
        algo_orders: Iterable[AlgoOrderInfo] | None = None,
    ) -> None:
        """Make the exchange's REST view the truth (after a reconnect or at start).

        ``position`` has ``amount``, ``entry_price``, ``update_time``; orders have Binance's REST
        order fields (``client_order_id``, ``order_id``, ``side``, ``price``, ``orig_qty``,
        ``executed_qty``, ``avg_price``, ``status``, ``update_time``). Orders we hold that the
        snapshot lacks are closed (on inference: a later frame reopens them), except new orders
        sent within ``in_flight_grace_ms`` (the request's recvWindow plus a margin: they may still
        land), orders with an unsettled ambiguous answer (their look-up decides) and orders changed
        at or after ``listed_at_ms``, the exchange time the listing was asked for (read the listing
        before the position: an order that fills between the two is then counted twice, never
        missed). ``algo_orders``, the symbol's conditional orders listed with the open orders, replace
        what frames said of them (``agents/algos.py``).
        """
        if position is not None:
            t = _figure_time(position, now_ms)
            # Ignored if the stream already gave a newer figure (the stream was live meanwhile).
            self._set_position(Decimal(position.amount), Decimal(position.entry_price), t, snapshot=True)
        if wallet_balance is not None:
            self.wallet_balance = wallet_balance
        self.ledger.sync_listing(open_orders, now_ms, in_flight_grace_ms, listed_at_ms)
        if algo_orders is not None:
            self.sync_algos(algo_orders, listed_at_ms)
        # The snapshot's position holds the fills up to its time: nothing of these orders is unbooked.
        # An order with a frame (or REST answer) newer than the figure may have filled after it: its
        # fills not booked keep counting as pending until a frame or a later figure places them.
        self.ledger.book_known_fills(self.position_book.position_time if position is not None else None)
        self.ledger.reset_pending()


def _figure_time(position: Any, now_ms: int) -> int:
    """The exchange time up to which a REST position figure holds every trade.

    A figure with a time of its own (the position's last change: nothing changed it after that until
    the read) holds the trades up to it, and up to ``read_after`` (the earliest the read can have been
    made, so that a fill just after the read is never taken for one inside it, however far ahead this
    host's estimate of the exchange's clock runs). A figure without one (flat with nothing open: v3
    omits the symbol) is as of the request's estimated time, ``as_of``: dated at ``read_after`` it
    would lose to a stream figure of the second before the read, or take a fill of that second booked
    without its figure for one on top of it; on that estimate a fill of an order landing just after
    the read may be taken for one inside it (the reconciliation's position check repairs it). The
    millisecond of the bound itself is left to the frames of that millisecond."""
    own = int(getattr(position, "update_time", 0) or 0)
    as_of = int(getattr(position, "as_of", 0) or 0)
    read_after = int(getattr(position, "read_after", 0) or 0) or as_of
    if own > 0:
        return max(own, read_after - 1) if read_after > 0 else own
    return as_of - 1 if as_of > 0 else now_ms


def _unframed_fills(store: Store, info: OrderInfo) -> None:
    """Fills a REST answer (a look-up, a cancel's or an amendment's) tells of that no trade frame booked:
    their frames may be lost (on a live connection, with the position's frames: nothing else says so,
    and a partial fill of each side nets to no position change), and the P&L would miss them for good (a
    resync then takes them as known): their trades are read unless their frames come
    (``Position.note_unframed``)."""
    o = store.ledger.find(info.client_order_id, int(info.order_id))
    executed = store.ledger.steps(info.executed_qty)
    if o is not None and o.framed_steps < executed and info.update_time > 0:
        store.position_book.note_unframed(o.client_order_id, executed, int(info.update_time))


def _framed(store: Store, client_order_id: str, order_id: int, steps: int) -> None:
    """A trade frame of the order came: its fills so framed grow, and fills a REST answer told of are no
    longer owed once the frames reach them (each frame brings its own fill: a later one of a larger
    cumulative quantity does not stand for an earlier one lost)."""
    o = store.ledger.find(client_order_id, order_id)
    if o is None:
        return
    o.framed_steps += steps
    told = store.position_book.unframed.get(o.client_order_id)
    if told is not None and o.framed_steps >= told[0]:
        del store.position_book.unframed[o.client_order_id]


def _fills_inside_figure(store: Store, info: OrderInfo) -> None:
    """A REST answer told of fills whose trade frames never came (a frame lost or refused): those the
    exchange's position figure holds (older than it, or of its millisecond when it is a snapshot:
    ``Position.holds``) stop counting as pending; later ones count until a frame or a newer figure
    places them."""
    o = store.ledger.find(info.client_order_id, int(info.order_id))
    if o is not None and o.booked_steps < o.filled_steps and store.position_book.holds(o.key[0]):
        o.booked_steps = o.filled_steps
        store.ledger.refresh(o)
