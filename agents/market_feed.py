"""The market feed: bookTicker and markPrice frames applied to the core as they are read (no queue
hop; the read time starts the tick-to-order clock), a quote at once on a move the core calls large,
the stream's loss (quotes pulled, reconnect with back-off) and its swap (planned, or when silent).
``!contractInfo`` frames of the symbol go to its contract watch (agents/delisting.py).

A part of :class:`agents.agent.SymbolAgent`; it owns the market stream and what is known of it.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

from fleet.binance.events import BookTicker, ContractInfo, MarkPrice
from fleet.binance.streams import MarketStream, StreamError

from .agent_base import BLOCK_MARKET_LAG, BLOCK_MARKET_STALE, BLOCK_MARKET_STREAM, Backoff, Tick, _TRANSIENT

if TYPE_CHECKING:
    from .agent import SymbolAgent

# the book, the mark, and every symbol's contract changes (a delisting announced, a status changed)
MARKET_STREAMS = ("bookTicker", "markPrice@1s", "!contractInfo")


class MarketFeed:
    """One symbol's market stream and its life."""

    def __init__(self, agent: SymbolAgent) -> None:
        self.agent = agent
        self.stream: MarketStream | None = None
        self.connected = False
        self.opened_at: float = 0.0  # when the current connection opened (monotonic)
        self.last_book: float | None = None  # when the last book frame was read (monotonic)
        self.last_mark: float | None = None  # when the last mark price was read (monotonic)

    async def connect(self) -> None:
        """A new connection; one already open is closed once the new one is up (a swap has no gap)."""
        a = self.agent

        def on_event(ev: Any, read_ns: int) -> None:
            try:
                self.on_event((read_ns, stream.frame_read_cpu_ns), ev)
            except Exception as exc:  # noqa: BLE001 - recorded here, counted by the stream (handler_errors)
                a.log.event("market_event_failed", f"market event not applied: {exc!r}", level=logging.ERROR)
                raise

        stream = a.transport.market_stream(a.symbol, MARKET_STREAMS, on_event)
        a.frames.track(stream)
        await stream.connect()
        old, self.stream = self.stream, stream
        if old is not None:
            await old.close()
        self.opened_at = a.clock.monotonic()
        self.connected = True
        a.blocks.discard(BLOCK_MARKET_STREAM)
        a.log.event("market_stream_connected", "WebSocket MarketStream connected")

    def swap(self, now: float) -> None:
        """The watchdog's ``SWAP_MARKET``: a fresh connection (silent too long, or its lifetime ends)."""
        a = self.agent
        silent = now - max(self.last_book or 0.0, self.opened_at)
        self.opened_at = now
        a.log.event("market_swap", f"market stream reconnected (no book for {silent:.0f} s, or its lifetime)",
                    level=logging.WARNING)
        a.tasks.spawn(self.connect(), "market-swap")

    async def loop(self) -> None:
        """Read until the stream ends; on loss: pull quotes, reconnect (the first try at once)."""
        a = self.agent
        backoff = Backoff(a.runtime.reconnect_backoff_initial_sec, a.runtime.reconnect_backoff_max_sec, rng=a.rng)
        while not a.stopping:
            stream = self.stream
            if stream is None:
                try:
                    await self.connect()
                    backoff.reset()
                    a.tasks.spawn(a.contract.recheck("a market stream gap"), "contract-recheck")
                except _TRANSIENT as exc:
                    a.log.event("market_reconnect_failed", repr(exc), level=logging.WARNING)
                    await a.tasks.sleep(backoff.next())
                continue
            try:
                await self._consume(stream)
            except StreamError as exc:
                if a.stopping:
                    return
                if stream is not self.stream:
                    continue  # a planned swap replaced it
                self.connected = False
                a.blocks.add(BLOCK_MARKET_STREAM)
                a.counters["market_stream_reconnects"] += 1
                a.log.event("market_stream_lost", f"market stream lost: {exc}", level=logging.WARNING)
                self.stream = None
                with contextlib.suppress(Exception):
                    await stream.close()
                a.sender.pull_quotes("market_stream_lost")

    async def _consume(self, stream: MarketStream) -> None:
        """Events are applied as they are read (:meth:`on_event`); this only waits for the end."""
        while stream is self.stream:
            try:
                await stream.__anext__()
            except StopAsyncIteration:
                if stream is not self.stream:
                    return  # closed by a planned swap
                raise StreamError("market stream closed") from None

    def _lagging(self, lag_ms: int) -> None:
        """A book older at the exchange than ``market_lag_max_ms``: this agent is behind its feed (its
        process starved of CPU or paused, frames queued) or the feed lags. Quotes priced on it would be
        stale however fresh the read: pulled, and quoting waits for a frame within the limit."""
        a = self.agent
        if BLOCK_MARKET_LAG in a.blocks:
            return
        a.blocks.add(BLOCK_MARKET_LAG)
        a.counters["stale_market_pulls"] += 1
        a.log.event("market_lag", f"a book {lag_ms} ms old at the exchange (limit {a.runtime.market_lag_max_ms} ms): "
                    "quotes pulled", level=logging.WARNING)
        a.sender.pull_quotes("market_lag")

    def on_event(self, t_read: Tick, ev: Any) -> None:
        """One market event, straight off the socket: store it, and quote at once on a large move."""
        a = self.agent
        core = a.core
        if core is None or a.stopped:
            return
        if isinstance(ev, BookTicker):
            if ev.symbol != a.symbol:
                return
            now_ms = a.clock.time_ms() + a.offset_ms()
            self.last_book = a.clock.monotonic()
            changed = core.on_event(ev, now_ms)
            at_exchange = ev.transaction_time or ev.event_time
            if at_exchange and now_ms - at_exchange > a.runtime.market_lag_max_ms:
                self._lagging(now_ms - at_exchange)
                return
            blocks = a.blocks
            if blocks:
                if BLOCK_MARKET_STALE in blocks:
                    blocks.discard(BLOCK_MARKET_STALE)
                    a.log.event("market_fresh", "market data fresh again")
                if BLOCK_MARKET_LAG in blocks:
                    blocks.discard(BLOCK_MARKET_LAG)
                    a.log.event("market_fresh", "book frames within market_lag_max_ms of the exchange again")
                if blocks:
                    return
            if changed and core.should_quote(now_ms):
                a.sender.quote(now_ms, t_read)
        elif isinstance(ev, MarkPrice):
            if ev.symbol == a.symbol:
                self.last_mark = a.clock.monotonic()
                core.on_event(ev, a.clock.time_ms() + a.offset_ms())
        elif isinstance(ev, ContractInfo):
            if ev.symbol == a.symbol:
                a.contract.seen(ev.status, ev.delivery_ms, "contractInfo")
                if ev.brackets_changed:
                    a.contract.allowance_changed("the exchange's new brackets")

    async def close(self) -> None:
        stream, self.stream = self.stream, None
        self.connected = False
        if stream is not None:
            with contextlib.suppress(Exception):
                await stream.close()
