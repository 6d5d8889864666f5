"""The user feed and its listenKey's life: order, account and funding events to the core; the key
kept alive, renewed when expired or refused, and the stream swapped before the exchange's 24-hour
cut; its loss (quoting blocked, a REST cancel after the grace, reconnect, resync, older epochs
cancelled) and the funding look-up a symbol-less fee frame asks for.

A part of :class:`agents.agent.SymbolAgent`; it owns the user stream and what is known of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from fleet.binance.enums import (ADL_CLIENT_ORDER_ID, SETTLEMENT_CLIENT_ORDER_ID, ExecType, OrderStatus, OrderType,
                                 TimeInForce)
from fleet.binance.errors import BinanceError, InvalidListenKeyError
from fleet.binance.events import AlgoUpdate, FundingFee, ListenKeyExpired, MarginCall, OrderUpdate, RawEvent, TradeLite
from fleet.binance.models import OrderInfo
from fleet.binance.streams import StreamError, UserStream

from .carry import backfill_trades, book_funding_income
from .clearance import book_clearance_fees
from .orders import parse_client_order_id
from .agent_base import (BLOCK_USER_STREAM, Backoff, _ListenKeyGone, _TRANSIENT, _older_epoch, _same_epoch, outage_of,
                         outage_said)

if TYPE_CHECKING:
    from .agent import SymbolAgent


# a gap's trades are read from this long before it: a lost stream is found only after its silence
TRADES_LOOKBACK_MS = 300_000
OWED_LISTED_MS = 30_000   # a trade the exchange's list does not hold this long after it is not coming
DRAIN_S = 0.5  # a stream a planned swap replaced is read on while a frame comes within this
OLDER_EPOCHS_RETRY_S = (0.0, 2.0, 5.0, 10.0, 20.0, 40.0)   # the fallback's cancel of earlier epochs' orders
FOREIGN_SAY_S = 600.0  # an order another hand rests on the symbol is said at most this often (each counted)


def _rests(ev: OrderUpdate | OrderInfo) -> bool:
    """A limit order that stays on the book (not IOC or FOK)."""
    kind = ev.order_type if isinstance(ev, OrderUpdate) else ev.type
    return kind == OrderType.LIMIT and ev.time_in_force not in (TimeInForce.IOC, TimeInForce.FOK)


def _not_ours(client_order_id: str) -> bool:
    """Placed by another hand than mmfleet's and than the exchange's own (liquidation, ADL, settlement)."""
    return parse_client_order_id(client_order_id) is None and not client_order_id.startswith(
        ("autoclose-", ADL_CLIENT_ORDER_ID, SETTLEMENT_CLIENT_ORDER_ID))


class UserFeed:
    """One agent's user stream (the account's listenKey) and its life."""

    def __init__(self, agent: SymbolAgent) -> None:
        self.agent = agent
        self.stream: UserStream | None = None
        self.connected = False
        self.opened_at: float = 0.0  # when the current connection opened (monotonic)
        self.lost_at: float | None = None  # when it was lost (None: up, or the REST fallback ran)
        self.last_lost_ms: int | None = None  # the exchange's time when it was last lost (never reset)
        self.liquidations_seen: set[int] = set()  # liquidation orders handled, from a frame or forceOrders
        self._new_key = asyncio.Event()  # the keepalive was refused: the consumer takes a new key
        self._foreign_said = -FOREIGN_SAY_S  # when an order of another hand was last said
        self._resync_owed = False   # a resync after an event that could not be applied is on its way
        self.trades_gap_ms: int | None = None   # fills may have been missed from then (look_up_trades)
        self._gaps = 0            # gaps said so far, and the earliest time said since a read began
        self._read_gap_ms = 0

    async def connect(self) -> None:
        self.stream = await self._open()
        self.opened_at = self.agent.clock.monotonic()
        self._set_connected(True)
        self.agent.log.event("user_stream_connected", "WebSocket UserStream connected")

    async def _open(self) -> UserStream:
        """A new listenKey and a connected stream on it (counted for the frame totals)."""
        a = self.agent
        key = await a.require_client().create_listen_key()
        stream = a.transport.user_stream(key)
        stream.keep_only(a.symbol, self._foreign)
        stream.on_malformed = self._owe_resync   # a skipped frame may have held a fill or a position change
        a.frames.track(stream)
        await stream.connect()
        return stream

    async def loop(self) -> None:
        """Consume the user stream; on loss: block, cancel via REST after the grace, reconnect, resync."""
        a = self.agent
        backoff = Backoff(a.runtime.reconnect_backoff_initial_sec, a.runtime.reconnect_backoff_max_sec, rng=a.rng)
        early = 0   # the tries in a row that came early, at the end of a REST outage (``outage_of``)
        while not a.stopping:
            stream = self.stream
            if stream is not None:
                try:
                    await self._consume(stream)
                    continue  # returned: a planned swap put a new stream in place
                except StreamError as exc:
                    if a.stopping:
                        return
                    if stream is not self.stream:
                        continue  # replaced by a planned swap
                    await self._lost(stream, f"{exc}")
                    await a.tasks.sleep(backoff.next())
                    continue
                except _ListenKeyGone as exc:
                    await self._lost(stream, str(exc))
                    continue  # a new key at once
            if a.stopping:
                return
            try:
                await self._reconnect()
                backoff.reset()
                early = 0
            except Exception as exc:  # noqa: BLE001 - whatever failed, the next try starts from a new stream
                # (a stream left open would be consumed by the next pass with its block never cleared)
                outage = outage_of(exc, a.client, early)
                self._set_connected(False)
                await self.close()
                delay = backoff.next()
                a.counters["user_reconnect_failures"] += 1
                level = logging.WARNING if isinstance(exc, _TRANSIENT) else logging.ERROR
                a.log.event("user_reconnect_failed", f"{exc!r}; next try in {delay:.1f}s"
                            + (outage_said(early, exc) if outage is not None else ""), level=level)
                # a long REST outage grew the back-off to a minute: the agent kept unquoting that long after
                early = early + 1 if await a.tasks.sleep(delay, wake=outage) else 0

    async def _reconnect(self) -> None:
        """A new key and stream, the snapshot made the truth, a zombie predecessor's late orders gone."""
        a = self.agent
        await self.connect()
        await a.starter.resync()
        await a.starter.cancel_older_epochs()
        self.lost_at = None
        a.blocks.discard(BLOCK_USER_STREAM)
        self.look_up_trades()

    async def _consume(self, stream: UserStream) -> None:
        """``stream``'s events, until it ends; one a planned swap replaced is read to its end too (what
        it read before the swap: a fill, another hand's order), for at most ``DRAIN_S`` a frame."""
        a = self.agent
        while True:
            try:
                ev = await (stream.__anext__() if stream is self.stream
                            else asyncio.wait_for(stream.__anext__(), DRAIN_S))
            except (StopAsyncIteration, asyncio.TimeoutError):
                if stream is not self.stream:
                    return  # replaced by a planned swap, and read to its end
                if self._new_key.is_set():
                    self._new_key.clear()
                    raise _ListenKeyGone("listenKey refused: new key and resync") from None
                raise StreamError("user stream closed") from None
            if isinstance(ev, ListenKeyExpired):
                if stream is not self.stream:
                    return   # the key the new stream uses too: that stream says it, and is handled then
                a.counters["listen_key_expired"] += 1
                raise _ListenKeyGone("listenKeyExpired: new key and resync")
            try:
                self.on_event(ev)
            except Exception as exc:  # noqa: BLE001 - one event must not end the feed: logged, counted, repaired
                self._not_applied(stream, ev, exc)

    def _not_applied(self, stream: UserStream, ev: Any, exc: Exception) -> None:
        """An event that parsed but could not be applied (a value the store cannot take): counted with
        the malformed frames, said, and the store made the exchange's truth again by a resync (what it
        applied of the event before it failed is not known to be whole)."""
        a = self.agent
        stream.malformed += 1
        a.log.event("user_event_failed", f"a user stream {type(ev).__name__} could not be applied ({exc!r:.300}): "
                    f"skipped, and the store is read again from the exchange", level=logging.ERROR)
        self._owe_resync()

    def _owe_resync(self) -> None:
        """The store made the exchange's truth again by a resync: after an event that could not be
        applied, or a frame skipped as malformed (a fill or another hand's position change in it would
        be missed until the reconciliation's position check, seconds on). One owed at a time."""
        a = self.agent
        self.note_gap(a.exchange_ms())
        if not a.stopping and not self._resync_owed:   # a run of bad frames, one resync
            self._resync_owed = True
            a.tasks.spawn(self._resync_after_failure(), "resync-after-bad-event")

    async def _resync_after_failure(self) -> None:
        self._resync_owed = False   # from here a new failure owes another (this one may read before it)
        if not self.agent.stopping:
            with contextlib.suppress(Exception):   # a failed resync is counted, said and retried by the starter
                await self.agent.starter.resync()
                self.look_up_trades()

    def note_gap(self, at_ms: int) -> None:
        """Fills may have been missed from ``at_ms`` (the resync sets the position, not the P&L; the
        reconciliation finds some too)."""
        self.trades_gap_ms = at_ms if self.trades_gap_ms is None else min(self.trades_gap_ms, at_ms)
        self._gaps += 1
        self._read_gap_ms = min(self._read_gap_ms, at_ms)

    def _foreign(self) -> None:
        self.agent.counters["foreign_events"] += 1

    def on_event(self, ev: Any) -> None:
        a = self.agent
        core = a.core
        if core is None:
            return
        sym = getattr(ev, "symbol", None)
        if isinstance(ev, (OrderUpdate, TradeLite)) and sym != a.symbol:
            a.counters["foreign_events"] += 1
            return
        if isinstance(ev, FundingFee) and sym is not None and sym != a.symbol:
            a.counters["foreign_events"] += 1
            return
        if isinstance(ev, TradeLite):
            return  # the full ORDER_TRADE_UPDATE follows
        if isinstance(ev, MarginCall):
            self._margin_call(ev)
            return
        if isinstance(ev, RawEvent) and ev.event_type == "ACCOUNT_CONFIG_UPDATE":
            ac = ev.data.get("ac")
            if isinstance(ac, dict) and ac.get("s") == a.symbol:   # the symbol's leverage changed
                a.contract.allowance_changed(f"the leverage set to {ac.get('l')}")
        if isinstance(ev, OrderUpdate) and ev.status == OrderStatus.CANCELED and a.quoting_live():
            o = core.store.get(ev.client_order_id)
            if o is not None and o.is_open and o.cancel_sent_ms is None and o.amend_orig_steps is None \
                    and _same_epoch(ev.client_order_id, core.epoch):
                a.ask_owner(f"{ev.client_order_id} cancelled by another hand")
        store = core.store
        closes = store.liquidations + store.deleveraged + store.settled
        foreign = isinstance(ev, OrderUpdate) and ev.status == OrderStatus.NEW and _rests(ev) \
            and _not_ours(ev.client_order_id) and store.get(ev.client_order_id) is None
        algos = store.ledger.algos.open
        new_algo = isinstance(ev, AlgoUpdate) and ev.algo_id not in algos
        core.on_event(ev, a.clock.time_ms() + a.offset_ms())
        if foreign:
            self.foreign_order(ev.client_order_id, f"{ev.side} {ev.orig_qty} at {ev.price}")
        elif new_algo and ev.algo_id in algos:
            self.foreign_algo(ev.client_algo_id, f"{ev.order_type} {ev.side} {ev.quantity}")
        if store.liquidations + store.deleveraged + store.settled != closes:
            self.liquidation(ev.order_id, ev.client_order_id, True,
                             f"{ev.side} {ev.last_filled_qty} @ {ev.last_filled_price}, realized {ev.realized_pnl}",
                             ev.transaction_time)
        a.journal.on_user_event(a, ev)
        if isinstance(ev, FundingFee):
            self.look_up_funding()
        if isinstance(ev, OrderUpdate):
            self._log_order_update(ev)

    def foreign_order(self, client_order_id: str, what: str, *, say: bool = True,
                      left: str = "a kill, or a stop while the lease holds, cancels every order of the symbol") -> None:
        """An order mmfleet did not place rests on the symbol (another tool on the same account): counted,
        and said as a WARNING at most every ``FOREIGN_SAY_S`` (a grid bot beside us would flood the log)."""
        a = self.agent
        a.counters["foreign_orders"] += 1
        now = a.clock.monotonic()
        if not say or now - self._foreign_said < FOREIGN_SAY_S:
            return
        self._foreign_said = now
        a.log.event("foreign_order", f"an order mmfleet did not place rests on {a.symbol}: {client_order_id!r} {what}, "
                    f"counted in the worst case and left alone ({left}): one owner per symbol",
                    level=logging.WARNING)

    def foreign_algo(self, client_algo_id: str, what: str) -> None:
        """A conditional order of another hand waits on the symbol (``agents/algos.py``): said and
        counted as another hand's order is."""
        self.foreign_order(client_algo_id, f"{what}, a conditional order of the Algo Service",
                           left="it counts until it reaches the book; a kill leaves it, as the exchange's "
                           "cancel-all does: DELETE /fapi/v1/algoOpenOrders cancels it")

    def foreign_listed(self, info: OrderInfo) -> None:
        """An order a snapshot listed that the store did not hold: said if another hand rests it."""
        if _rests(info) and _not_ours(info.client_order_id):
            self.foreign_order(info.client_order_id, f"{info.side} {info.orig_qty} at {info.price}, listed")

    def liquidation(self, order_id: int, client_order_id: str, booked: bool, what: str, at_ms: int) -> None:
        """A liquidation, auto-deleveraging or settlement order of the exchange, seen in its frame
        (``booked``: the store counted its fill) or, when that frame was lost with the stream, in
        forceOrders after the resync (``at_ms``: its exchange time): once per order, a liquidation halts
        the agent and has its clearance fee read (agents/clearance.py), an ADL is said, a settlement
        halts the symbol as no longer trading (agents/delisting.py)."""
        if order_id in self.liquidations_seen:
            return
        self.liquidations_seen.add(order_id)
        a = self.agent
        adl = client_order_id.startswith(ADL_CLIENT_ORDER_ID)
        settled = client_order_id.startswith(SETTLEMENT_CLIENT_ORDER_ID)
        if not booked and a.core is not None:   # the snapshot took the position; the fill was never a frame
            if settled:
                a.core.store.settled += 1
            elif adl:
                a.core.store.deleveraged += 1
            else:
                a.core.store.liquidations += 1
        if settled:
            a.contract.settled(what, client_order_id, order_id)
        elif adl:
            a.deleveraged(what, client_order_id, order_id)
        else:
            a.liquidated(what, client_order_id, order_id)
            a.tasks.spawn(book_clearance_fees(a, at_ms), f"clearance-fee-{order_id}")

    def _margin_call(self, ev: MarginCall) -> None:
        """The exchange warns that positions are close to liquidation: this symbol's is said loudly and
        counted (alert ``MmMarginCall``); another symbol's is its own agent's."""
        a = self.agent
        mine = [p for p in ev.positions if p.get("s") == a.symbol]
        if not mine:
            a.counters["foreign_events"] += 1
            return
        p = mine[0]
        a.counters["margin_calls"] += 1
        a.metrics.inc_margin_call()
        a.log.event(
            "margin_call",
            f"margin call: the position {p.get('pa')} ({p.get('mt')}) is close to liquidation: maintenance "
            f"{p.get('mm')} at the mark {p.get('mp')}, unrealized {p.get('up')}",
            level=logging.WARNING,
        )

    def _log_order_update(self, ev: OrderUpdate) -> None:
        a = self.agent
        if ev.exec_type == ExecType.TRADE:
            a.log.event(
                "fill",
                f"fill {ev.side} {ev.last_filled_qty} @ {ev.last_filled_price} ({ev.status}), "
                f"position {a.core.store.position if a.core else '?'}",
                client_order_id=ev.client_order_id, order_id=ev.order_id, side=ev.side,
            )
        else:
            a.log.event(
                "order_update", f"{ev.side} {ev.exec_type} {ev.status} {ev.cum_filled_qty}/{ev.orig_qty} @ {ev.price}",
                level=logging.DEBUG, client_order_id=ev.client_order_id, order_id=ev.order_id,
            )

    async def _lost(self, stream: UserStream, why: str) -> None:
        a = self.agent
        self._set_connected(False)
        a.blocks.add(BLOCK_USER_STREAM)
        self.lost_at = a.clock.monotonic()
        self.last_lost_ms = a.exchange_ms()
        self.note_gap(self.last_lost_ms)
        a.counters["user_stream_reconnects"] += 1
        a.log.event("user_stream_lost", f"user stream lost: {why}; quoting stopped", level=logging.WARNING)
        with contextlib.suppress(Exception):
            await stream.close()
        self.stream = None

    async def keepalive_loop(self) -> None:
        a = self.agent
        while not a.stopping:
            await a.tasks.sleep(a.runtime.listen_key_keepalive_sec)
            if a.stopping:
                return
            try:
                await a.require_client().keepalive_listen_key()
                a.counters["listen_key_renewals"] += 1
            except InvalidListenKeyError:
                a.log.event("listen_key_invalid", "listenKey keepalive: -1125; new key", level=logging.WARNING)
                self._new_key.set()
                if self.stream is not None:
                    await self.stream.close()  # wakes the consumer, which reconnects with a new key
            except BinanceError as exc:
                a.log.event("keepalive_failed", f"listenKey keepalive failed: {exc!r}", level=logging.WARNING)

    def swap(self, now: float) -> None:
        """The watchdog's ``SWAP_USER``: the stream nears the exchange's 24-hour cut."""
        self.opened_at = now
        self.agent.tasks.spawn(self._planned_swap(), "user-swap")

    async def _planned_swap(self) -> None:
        """Open a new user stream, then drop the old (no gap)."""
        a = self.agent
        before = self.stream
        if before is None or not self.connected:
            return   # lost meanwhile: the reconnect opens a new stream and resyncs
        stream = await self._open()
        if self.stream is not before or not self.connected:
            # Lost (or reconnected) while the new one opened: the reconnect owns the stream, its
            # resync and the block; installing this one would leave the block set with no owner.
            with contextlib.suppress(Exception):
                await stream.close()
            a.log.event("user_swap_abandoned", "planned user stream swap dropped: the stream was lost meanwhile")
            return
        old, self.stream = self.stream, stream
        self.opened_at = a.clock.monotonic()
        a.log.event("user_stream_swapped", "planned user stream reconnect")
        if old is not None:
            await old.close()  # its consumer drains what it queued, then moves to the new one

    def fall_back(self) -> None:
        """The watchdog's ``REST_FALLBACK``: the stream stayed down past the grace."""
        self.lost_at = None
        self.agent.tasks.spawn(self._rest_fallback_cancel(), "rest-fallback")

    async def _rest_fallback_cancel(self) -> None:
        """The store's orders pulled through the order flow (their cancels marked as sent, so a CANCELED
        frame after the reconnect is ours, not another hand's; answered, counted and journaled as any
        cancel), the pull re-listing and cancelling until none of this epoch rests or may land. While the
        lease holds, the listed orders an earlier epoch of mmfleet left that the store does not hold are
        cancelled too, by the batch route (a later epoch's are a successor's). Another hand's are left (a
        symbol-wide cancel-all took the desk's and other tools' orders at every stream outage)."""
        a = self.agent
        if self.connected or a.stopping or a.lease.lost:
            return
        epoch = a.require_core().epoch
        a.counters["rest_fallback_cancels"] += 1
        a.metrics.inc_rest_fallback()
        n = a.sender.pull_quotes("user stream down past grace")
        a.log.event("rest_fallback_cancel", f"user stream down past grace: {n} orders of ours cancelled via REST "
                    "(another hand's left)", level=logging.WARNING)
        store = a.require_core().store
        for delay in OLDER_EPOCHS_RETRY_S:   # (the pull goes on meanwhile; the reconnect cancels them too)
            await a.tasks.sleep(delay)
            if self.connected or a.stopping or not a.lease_ok():
                return   # back, or stopping; or a successor may own the other epochs' orders
            try:
                n = await a.require_client().cancel_listed(
                    a.symbol, keep=lambda o: _older_epoch(o.client_order_id, epoch) and store.get(o.client_order_id) is None)
            except BinanceError as exc:
                if delay == OLDER_EPOCHS_RETRY_S[0]:
                    a.log.event("rest_fallback_failed", f"an earlier epoch's orders not listed or cancelled via REST: "
                                f"{exc!r}; tried again with back-off", level=logging.WARNING)
                continue
            if n:
                a.log.event("rest_fallback_cancel", f"{n} orders of an earlier epoch cancelled via REST",
                            level=logging.WARNING)
            return

    def look_up_trades(self) -> None:
        """Start reading the trades the store's P&L misses (since a gap of the stream, a frame skipped,
        or a trade frame without its P&L fields) if any and no read is under way (after a resync, and on
        every reconciliation beat)."""
        a = self.agent
        core = a.core
        if core is None or (self.trades_gap_ms is None and not core.store.position_book.owed):
            return
        if not a.tasks.named("trades-backfill"):
            a.tasks.spawn(self._backfill_trades(), "trades-backfill")

    async def _backfill_trades(self) -> None:
        """The trades since the gap (less ``TRADES_LOOKBACK_MS``) read and added once; an owed trade the
        exchange does not list by then (its frame lacked its id: it came under its own) is let go."""
        a = self.agent
        for delay in (0.0, 2.0, 10.0):
            await a.tasks.sleep(delay)
            core = a.core
            if core is None or a.stopping:
                return
            pos = core.store.position_book
            gap = self.trades_gap_ms
            since = min([*([gap] if gap is not None else []), *pos.owed.values()], default=None)
            if since is None:
                return
            asked_at, gaps = a.exchange_ms(), self._gaps
            self._read_gap_ms = asked_at   # (a gap said during the read is read again, from the earliest)
            try:
                added = await backfill_trades(a, since - TRADES_LOOKBACK_MS)
            except BinanceError as exc:
                a.log.event("trades_unavailable", f"the trades since {since} not read: {exc!r}", level=logging.WARNING)
                continue
            self.trades_gap_ms = None if self._gaps == gaps else self._read_gap_ms
            pos = a.require_core().store.position_book
            pos.forget_unframed(since - TRADES_LOOKBACK_MS, asked_at - OWED_LISTED_MS)
            for key in [k for k, t in pos.owed.items() if t < asked_at - OWED_LISTED_MS]:
                del pos.owed[key]   # (the list holds a trade within seconds: one not there came under another key)
            if added:
                a.log.event("trades_backfilled", f"{added} trade(s) since {since} booked from the exchange's list "
                            f"(the stream missed them or their P&L)", level=logging.WARNING)
            if not pos.owed and self.trades_gap_ms is None:
                return

    def look_up_funding(self) -> None:
        """Start reading this symbol's FUNDING_FEE income rows if the store waits for some and no
        read is under way (after a symbol-less fee frame, and on every reconciliation beat)."""
        a = self.agent
        core = a.core
        if core is None or core.store.funding_lookup_start() is None:
            return
        if not a.tasks.named("funding-income"):
            a.tasks.spawn(book_funding_income(a), "funding-income")

    async def close(self) -> None:
        stream, self.stream = self.stream, None
        self._set_connected(False)
        if stream is not None:
            with contextlib.suppress(Exception):
                await stream.close()

    def _set_connected(self, on: bool) -> None:
        self.connected = on
        self.agent.metrics.set_ws_connected(on)
