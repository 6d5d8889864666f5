"""The agent's two streams: the market feed (bookTicker, markPrice) applied as frames are read, and the
user feed with its listenKey's life (keepalive, expiry, planned swap before the exchange's 24-hour cut),
its loss (quoting blocked, a REST cancel after the grace) and the funding look-up it may ask for.

A part of :class:`agents.agent.SymbolAgent` (it holds the state these methods use).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from fleet.binance.enums import ExecType
from fleet.binance.errors import (
    BinanceError,
    InvalidListenKeyError,
)
from fleet.binance.events import (
    BookTicker,
    FundingFee,
    ListenKeyExpired,
    MarkPrice,
    OrderUpdate,
    TradeLite,
)
from fleet.binance.streams import MarketStream, StreamError, UserStream

from .agent_base import BLOCK_MARKET_STALE, BLOCK_MARKET_STREAM, BLOCK_USER_STREAM, Backoff, Tick, _ListenKeyGone, _TRANSIENT


class Streams:
    """The market and user feeds of one symbol, the listenKey's life, and stream loss."""

    async def _connect_user(self) -> None:
        client = self._require_client()
        key = await client.create_listen_key()
        stream = self.transport.user_stream(key)
        self._streams.append(stream)
        await stream.connect()
        self._user = stream
        self._user_stream_opened = self.clock.monotonic()
        self._set_user_connected(True)
        self.log.event("user_stream_connected", "WebSocket UserStream connected")

    async def _connect_market(self) -> None:
        def on_event(ev: Any, read_ns: int) -> None:
            # applied as the frame is read (no queue hop); the read time starts the tick-to-order clock
            try:
                self._on_market_event((read_ns, stream.frame_read_cpu_ns), ev)
            except Exception as exc:  # noqa: BLE001 - recorded here, counted by the stream (handler_errors)
                self.log.event("market_event_failed", f"market event not applied: {exc!r}", level=logging.ERROR)
                raise

        stream = self.transport.market_stream(self.symbol, ("bookTicker", "markPrice@1s"), on_event)
        self._streams.append(stream)
        await stream.connect()
        if self._market is not None:
            old, self._market = self._market, stream
            await old.close()
        else:
            self._market = stream
        self._market_stream_opened = self.clock.monotonic()
        self._market_connected = True
        self._blocks.discard(BLOCK_MARKET_STREAM)
        self.log.event("market_stream_connected", "WebSocket MarketStream connected")

    async def _market_loop(self) -> None:
        backoff = Backoff(self.runtime.reconnect_backoff_initial_sec, self.runtime.reconnect_backoff_max_sec,
                          rng=self.rng)
        while not self._stopping:
            stream = self._market
            if stream is None:
                try:
                    await self._connect_market()
                    backoff.reset()
                except _TRANSIENT as exc:
                    self.log.event("market_reconnect_failed", repr(exc), level=logging.WARNING)
                    await self._sleep_unless_stopping(backoff.next())
                continue
            try:
                await self._consume_market(stream)
            except StreamError as exc:
                if self._stopping:
                    return
                if stream is not self._market:
                    continue  # a planned swap replaced it
                self._market_connected = False
                self._blocks.add(BLOCK_MARKET_STREAM)
                self.counters["market_stream_reconnects"] += 1
                self.log.event("market_stream_lost", f"market stream lost: {exc}", level=logging.WARNING)
                self._market = None
                with contextlib.suppress(Exception):
                    await stream.close()
                self._pull_quotes("market_stream_lost")

    async def _consume_market(self, stream: MarketStream) -> None:
        """Events are applied as they are read (:meth:`_on_market_event`); this only waits for the end."""
        while stream is self._market:
            try:
                await stream.__anext__()
            except StopAsyncIteration:
                if stream is not self._market:
                    return  # closed by a planned swap
                raise StreamError("market stream closed") from None

    def _on_market_event(self, t_read: Tick, ev: Any) -> None:
        """One market event, straight off the socket: store it, and quote at once on a large move."""
        core = self.core
        if core is None or self._stopped:
            return
        if isinstance(ev, BookTicker):
            if ev.symbol != self.symbol:
                return
            now_ms = self.clock.time_ms() + self._offset()
            self._last_book_mono = self.clock.monotonic()
            changed = core.on_event(ev, now_ms)
            blocks = self._blocks
            if blocks:
                if BLOCK_MARKET_STALE in blocks:
                    blocks.discard(BLOCK_MARKET_STALE)
                    self.log.event("market_fresh", "market data fresh again")
                if blocks:
                    return
            if changed and core.should_quote(now_ms):
                self._quote(now_ms, t_read)
        elif isinstance(ev, MarkPrice):
            if ev.symbol == self.symbol:
                core.on_event(ev, self.clock.time_ms() + self._offset())

    async def _user_loop(self) -> None:
        """Consume the user stream; on loss: block, cancel via REST after the grace, reconnect, resync."""
        backoff = Backoff(self.runtime.reconnect_backoff_initial_sec, self.runtime.reconnect_backoff_max_sec,
                          rng=self.rng)
        while not self._stopping:
            stream = self._user
            if stream is not None:
                try:
                    await self._consume_user(stream)
                    continue  # returned: a planned swap put a new stream in place
                except StreamError as exc:
                    if self._stopping:
                        return
                    if stream is not self._user:
                        continue  # replaced by a planned swap
                    self._on_user_lost(f"{exc}")
                    with contextlib.suppress(Exception):
                        await stream.close()
                    self._user = None
                    await self._sleep_unless_stopping(backoff.next())
                    continue
                except _ListenKeyGone as exc:
                    self._on_user_lost(str(exc))
                    with contextlib.suppress(Exception):
                        await stream.close()
                    self._user = None
                    continue  # a new key at once
            if self._stopping:
                return
            try:
                await self._connect_user()
                await self._resync()
                await self._cancel_older_epochs()  # a zombie predecessor's late orders, if any
                self._user_lost_at = None
                self._blocks.discard(BLOCK_USER_STREAM)
                backoff.reset()
            except _TRANSIENT as exc:
                self._set_user_connected(False)
                if self._user is not None:
                    with contextlib.suppress(Exception):
                        await self._user.close()
                    self._user = None
                delay = backoff.next()
                self.log.event("user_reconnect_failed", f"{exc!r}; next try in {delay:.1f}s", level=logging.WARNING)
                await self._sleep_unless_stopping(delay)

    async def _consume_user(self, stream: UserStream) -> None:
        while stream is self._user:
            try:
                ev = await stream.__anext__()
            except StopAsyncIteration:
                if self._user_reconnect.is_set():
                    self._user_reconnect.clear()
                    raise _ListenKeyGone("listenKey refused: new key and resync") from None
                if stream is not self._user:
                    return  # closed by a planned swap
                raise StreamError("user stream closed") from None
            if isinstance(ev, ListenKeyExpired):
                self.counters["listen_key_expired"] += 1
                raise _ListenKeyGone("listenKeyExpired: new key and resync")
            self._on_user_event(ev)

    def _on_user_event(self, ev: Any) -> None:
        core = self.core
        if core is None:
            return
        sym = getattr(ev, "symbol", None)
        if isinstance(ev, (OrderUpdate, TradeLite)) and sym != self.symbol:
            self.counters["foreign_events"] += 1
            return
        if isinstance(ev, FundingFee) and sym is not None and sym != self.symbol:
            self.counters["foreign_events"] += 1
            return
        if isinstance(ev, TradeLite):
            return  # the full ORDER_TRADE_UPDATE follows
        core.on_event(ev, self.clock.time_ms() + self._offset())
        self.journal.on_user_event(self, ev)
        if isinstance(ev, FundingFee):
            self._look_up_funding()
        if isinstance(ev, OrderUpdate) and ev.exec_type == ExecType.TRADE:
            self.log.event(
                "fill",
                f"fill {ev.side} {ev.last_filled_qty} @ {ev.last_filled_price} ({ev.status}), "
                f"position {self.core.store.position if self.core else '?'}",
                client_order_id=ev.client_order_id,
                order_id=ev.order_id,
                side=ev.side,
            )
        elif isinstance(ev, OrderUpdate):
            self.log.event(
                "order_update",
                f"{ev.side} {ev.exec_type} {ev.status} {ev.cum_filled_qty}/{ev.orig_qty} @ {ev.price}",
                level=logging.DEBUG,
                client_order_id=ev.client_order_id,
                order_id=ev.order_id,
            )

    def _on_user_lost(self, why: str) -> None:
        self._set_user_connected(False)
        self._blocks.add(BLOCK_USER_STREAM)
        self._user_lost_at = self.clock.monotonic()
        self.counters["user_stream_reconnects"] += 1
        self.log.event("user_stream_lost", f"user stream lost: {why}; quoting stopped", level=logging.WARNING)

    async def _keepalive_loop(self) -> None:
        while not self._stopping:
            await self._sleep_unless_stopping(self.runtime.listen_key_keepalive_sec)
            if self._stopping:
                return
            try:
                await self._require_client().keepalive_listen_key()
                self.counters["listen_key_renewals"] += 1
            except InvalidListenKeyError:
                self.log.event("listen_key_invalid", "listenKey keepalive: -1125; new key", level=logging.WARNING)
                self._user_reconnect.set()
                if self._user is not None:
                    await self._user.close()  # wakes the consumer, which reconnects with a new key
            except BinanceError as exc:
                self.log.event("keepalive_failed", f"listenKey keepalive failed: {exc!r}", level=logging.WARNING)

    async def _planned_user_swap(self) -> None:
        """Before the exchange's 24-hour cut: open a new user stream, then drop the old (no gap)."""
        client = self._require_client()
        key = await client.create_listen_key()
        stream = self.transport.user_stream(key)
        self._streams.append(stream)
        await stream.connect()
        old, self._user = self._user, stream
        self._user_stream_opened = self.clock.monotonic()
        self.log.event("user_stream_swapped", "planned user stream reconnect")
        if old is not None:
            await old.close()  # its consumer drains what it queued, then moves to the new one

    async def _rest_fallback_cancel(self) -> None:
        """The user stream stayed down past the grace: cancel everything through REST (counted)."""
        if self._user_connected or self._stopping or self._lease.lost:
            return
        try:
            await self._cancel_fenced(self._require_client())
        except BinanceError as exc:
            self.log.event("rest_fallback_failed", f"cancel-all via REST failed: {exc!r}", level=logging.ERROR)
            self._user_lost_at = self.clock.monotonic()  # try again after another grace
            return
        self.counters["rest_fallback_cancels"] += 1
        self.metrics.inc_rest_fallback()
        self.log.event("rest_fallback_cancel", "user stream down past grace: cancelled all via REST", level=logging.WARNING)

    def _look_up_funding(self) -> None:
        """Start reading this symbol's FUNDING_FEE income rows if the store waits for some and no
        read is under way (after a symbol-less fee frame, and on every reconciliation beat)."""
        core = self.core
        if core is None or core.store.funding_lookup_start() is None:
            return
        if not any(t.get_name() == "funding-income" for t in self._tasks):
            self._spawn(self._book_funding_income(), "funding-income")

    async def _book_funding_income(self) -> None:
        """A FUNDING_FEE frame that names no symbol (cross margin): the store asked for this symbol's
        FUNDING_FEE income rows; they are read and booked once per tranId. A few tries, as the
        record may trail the frame, none of them waiting for rate-budget room (a busy ladder may hold
        the weight: then the next try, or the reconciliation's next beat, asks again)."""
        for delay in (0.0, 2.0, 10.0, 30.0):
            await self._sleep_unless_stopping(delay)
            core = self.core
            start = core.store.funding_lookup_start() if core is not None and not self._stopping else None
            if start is None:
                return
            try:
                rows = await self._require_client().income(
                    self.symbol, "FUNDING_FEE", start_time=start, limit=1000, wait=False
                )
            except BinanceError as exc:
                self.log.event("funding_income_unavailable", f"funding income not read: {exc!r}", level=logging.WARNING)
                continue
            self.journal.on_income_rows(self, rows)  # the journal need not read them again
            if core is self.core:
                booked = core.store.on_funding_income(rows)
                if booked:
                    total = core.store.funding_pnl
                    self.log.event("funding_booked", f"{booked} funding fee(s) booked from income rows, total {total}")

    async def _close_streams(self) -> None:
        # Only our sockets: the listenKey is the account's, shared with the other agents on it.
        for stream in (self._market, self._user):
            if stream is not None:
                with contextlib.suppress(Exception):
                    await stream.close()
        self._market = None
        self._user = None
        self._market_connected = False
        self._set_user_connected(False)

    def _frame_counts(self) -> dict[str, int]:
        """Bad frames skipped and unknown events passed through, over every stream this agent opened."""
        out = dict(self._frames_retired)
        for stream in tuple(self._streams):
            out["malformed_frames"] += stream.malformed
            out["unknown_events"] += stream.unknown
        return out

    def _fold_streams(self) -> None:
        """Streams no longer in use: their counts go into the totals, the objects are let go."""
        live = []
        for stream in self._streams[:-2]:  # the newest two may still be connecting
            if stream is self._market or stream is self._user:
                live.append(stream)
            else:
                self._frames_retired["malformed_frames"] += stream.malformed
                self._frames_retired["unknown_events"] += stream.unknown
        self._streams = live + self._streams[-2:]

    def _set_user_connected(self, on: bool) -> None:
        self._user_connected = on
        self.metrics.set_ws_connected(on)
