"""SymbolAgent: the asyncio shell around one symbol's trading core; the only part of an agent that awaits.

It owns the connections (REST client, market stream, user stream), the timers (quote, dead-man
heartbeat, listenKey keepalive, ownership renewal, staleness watchdog) and the fault policy; every
decision comes from :class:`~agents.core.AgentCore`. Quoting is allowed only while nothing blocks it:
a lost user stream, stale market data, a resync in progress or a lapsed lease each add a block.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import random
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from fleet.binance.client import BinanceClient
from fleet.binance.errors import (
    BinanceError,
    BudgetExhaustedError,
    InvalidListenKeyError,
    OutcomeUnknownError,
    RateLimitedError,
    UnknownOrderError,
)
from fleet.binance.events import (
    BookTicker,
    FundingFee,
    ListenKeyExpired,
    MarkPrice,
    OrderUpdate,
    TradeLite,
)
from fleet.binance.filters import SymbolFilters
from fleet.binance.models import ModifyRequest, OrderInfo, OrderRequest
from fleet.binance.ratelimit import RateBudget
from fleet.binance.streams import MarketStream, StreamError, UserStream
from fleet.config import RuntimeParams, SymbolParams
from journal.sink import NULL_SINK, JournalSink

from .core import Actions, AgentCore
from .logging import AgentLog
from .metrics import AgentMetrics
from .orders import Amend, Batch, Cancel, Place, parse_client_order_id
from .ownership import Grant, Ownership, OwnershipLost
from .lifecycle import Block, LeaseClock, derive_state
from .reconcile import reconcile_orders
from .watchdog import Act, Seen, Timing, watch


# Reasons quoting is blocked (any one blocks; the kill state is the core's, not a block).
BLOCK_STARTING = Block.STARTING
BLOCK_USER_STREAM = Block.USER_STREAM
BLOCK_MARKET_STREAM = Block.MARKET_STREAM
BLOCK_MARKET_STALE = Block.MARKET_STALE
BLOCK_RESYNC = Block.RESYNC
BLOCK_LEASE = Block.LEASE
BLOCK_STOPPING = Block.STOPPING

LEASE_MARGIN_S = 1.0  # the lease is treated as lapsed this long before it really does
# An ambiguous answer is settled by a look-up this long past the request's recvWindow: by then the
# matching engine refuses the request (-5028), so what the look-up does not find never lands.
LOOKUP_MARGIN_MS = 1_000
# A quote pull re-lists the exchange's open orders (weight 1) until none of ours rest: first after
# 0.5 s, then less often (x2 each round, at most every 5 s), so a long outage of market data across
# many agents on one IP does not spend the IP's weight on listings.
PULL_REPEAT_S = (0.5, 5.0)

IN_FLIGHT_QUERY_MS = 3_000  # an order unanswered this long is looked up by client order id
UNRESOLVED_QUERY_MS = 1_000  # an order the exchange called unknown, with no final frame this long: looked up
WATCHDOG_S = 0.25
LATENCY_KEEP = 20_000  # tick-to-order samples kept for the benchmark (bounded memory)
LATENCY_RECENT = 2_048  # the window status() summarises (cheap enough to sort on every call)

_TRANSIENT = (BinanceError, StreamError, OSError, asyncio.TimeoutError)
# Answers that no retry will change: a wrong key or signature, a symbol the exchange does not list.
FATAL_START_CODES = frozenset({-1002, -1022, -1121, -2014, -2015})

# When the book frame behind the request being sent in this task was read: (perf_counter_ns,
# thread_time_ns), for anything below the client that wants tick-to-wire latency (the benchmark's
# aiohttp trace hook); the thread's CPU clock separates the agent's own work from time preempted.
Tick = tuple[int, int]
TICK_READ: contextvars.ContextVar[Tick | None] = contextvars.ContextVar("mmfleet_tick_read", default=None)


@dataclass(frozen=True)
class ExchangeEndpoints:
    """Where the exchange is: REST base URL and WebSocket base URLs (market and user)."""

    rest_url: str
    ws_market_url: str
    ws_user_url: str


class Backoff:
    """Growing, jittered delays: initial, 2x, 4x ... capped; ``reset`` after a success."""

    def __init__(self, initial: float, cap: float, jitter: float = 0.2, rng: random.Random | None = None) -> None:
        self.initial = initial
        self.cap = max(cap, initial)
        self.jitter = jitter
        self.attempt = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        base = min(self.cap, self.initial * (2**self.attempt))
        self.attempt += 1
        return base * (1.0 + self._rng.uniform(-self.jitter, self.jitter))

    def reset(self) -> None:
        self.attempt = 0


def _now_ms() -> int:
    return int(time.time() * 1000)


class SymbolAgent:
    """One symbol, live, end to end: start, quote, survive faults, stop (see DESIGN "The agent's life")."""

    def __init__(
        self,
        *,
        fleet_name: str,
        symbol: str,
        params: SymbolParams,
        runtime: RuntimeParams,
        endpoints: ExchangeEndpoints,
        credentials: Any,
        ownership: Ownership,
        logger: logging.Logger | None = None,
        rate_share: float = 1.0,
    ) -> None:
        self.fleet_name = fleet_name
        self.symbol = symbol
        self.params = params
        self.runtime = runtime
        self.endpoints = endpoints
        self._credentials = credentials
        self._ownership = ownership
        self.log = AgentLog(logger or logging.getLogger("mmfleet.agent"), symbol)
        self.metrics = AgentMetrics(symbol)
        self.budget = RateBudget(share=rate_share)
        self.core: AgentCore | None = None
        self.filters: SymbolFilters | None = None
        self.grant: Grant | None = None
        self._client: BinanceClient | None = None
        self._market: MarketStream | None = None
        self._user: UserStream | None = None
        self._user_connected = False
        self._market_connected = False
        self._blocks: set[str] = {BLOCK_STARTING}
        self._lease = LeaseClock(LEASE_MARGIN_S)
        self._started = False
        self._stopping = False
        self._stopped = False
        self._done: asyncio.Event | None = None
        self._stop_task: asyncio.Task | None = None
        self._stop_summary: dict | None = None
        self._tasks: list[asyncio.Task] = []
        self._inflight: set[asyncio.Task] = set()
        self._lookups: dict[str, float] = {}
        self._sending: dict[str, int] = {}  # client order id -> requests about it still awaiting an answer
        self._last_book_mono: float | None = None
        self._user_lost_at: float | None = None
        self._user_stream_opened: float = 0.0
        self._market_stream_opened: float = 0.0
        self._user_reconnect = asyncio.Event()
        self._kill_wanted: str | None = None  # a halt/flatten/resume asked for before the core existed
        self._reduce_only_wanted: bool | None = None
        self._resync_lock = asyncio.Lock()
        self._rearming = False  # a dead-man re-arm is under way before the lease block is lifted
        self.latencies_ns: deque[int] = deque(maxlen=LATENCY_KEEP)
        self._recent_latencies: deque[int] = deque(maxlen=LATENCY_RECENT)
        self.counters: dict[str, int] = {
            "user_stream_reconnects": 0,
            "market_stream_reconnects": 0,
            "resyncs": 0,
            "rest_fallback_cancels": 0,
            "listen_key_renewals": 0,
            "listen_key_expired": 0,
            "deadman_heartbeats": 0,
            "unknown_outcomes": 0,
            "unknown_outcomes_resolved": 0,
            "reconciliations": 0,
            "reconcile_repairs": 0,
            "quote_pulls_confirmed": 0,
            "stale_market_pulls": 0,
            "foreign_events": 0,
            "start_attempts": 0,
            "rate_limited": 0,
        }
        self._started_mono = time.monotonic()
        self._last_repair: dict[str, Any] | None = None  # the reconciliation's last repair, for status
        self._pull_task: asyncio.Task | None = None
        self._position_mismatch = False  # the last position check disagreed (a second one resyncs)
        self._streams: list[Any] = []  # every stream not yet folded into the frame counts below
        self._frames_retired = {"malformed_frames": 0, "unknown_events": 0}
        self.journal: JournalSink = NULL_SINK  # the trade journal (journal.recorder.attach_journal)

    # ================================================================== public API

    async def run(self) -> None:
        """The whole life: own, start (retried on transient errors), trade, until :meth:`stop` is done."""
        self._done = asyncio.Event()
        if self._stopping:
            self._done.set()
            return
        send = time.monotonic()
        grant = await self._ownership.acquire()  # OwnershipRefused propagates: never trade unowned
        if self._stopping:  # stopped while waiting for the symbol: give it straight back
            await self._ownership.release()
            self._done.set()
            return
        self._take_grant(grant, send)
        self.log.epoch = grant.epoch
        self.log.event("ownership_acquired", f"owned {self.symbol} at epoch {grant.epoch}", state=grant.kill_state)
        self._client = BinanceClient(
            self.endpoints.rest_url, self._credentials.api_key, self._credentials.api_secret, budget=self.budget
        )
        await self._client.open()
        backoff = Backoff(self.runtime.reconnect_backoff_initial_sec, self.runtime.reconnect_backoff_max_sec)
        while not self._stopping:
            self.counters["start_attempts"] += 1
            try:
                await self._start()
                break
            except Exception as exc:
                if self._stopping:
                    break  # stop() closed what the start was using
                fatal = isinstance(exc, BinanceError) and exc.code in FATAL_START_CODES
                if fatal or not isinstance(exc, _TRANSIENT):
                    self.log.event("start_fatal", f"start failed: {exc!r}", level=logging.ERROR)
                    await self.stop()
                    raise
                delay = backoff.next()
                self.log.event("start_failed", f"start failed ({exc!r}); retrying in {delay:.1f}s", level=logging.WARNING)
                await self._close_streams()
                await self._sleep_unless_stopping(delay)
        if not self._stopping:
            self._started = True
            self._blocks.discard(BLOCK_STARTING)
            self._spawn(self._market_loop(), "market")
            self._spawn(self._user_loop(), "user")
            self._spawn(self._quote_loop(), "quote")
            self._spawn(self._deadman_loop(), "deadman")
            self._spawn(self._keepalive_loop(), "keepalive")
            self._spawn(self._renew_loop(), "renew")
            self._spawn(self._watchdog_loop(), "watchdog")
            self._spawn(self._reconcile_loop(), "reconcile")
            self.log.event("quoting_started", f"{self.symbol} started: state {self.status()['state']}")
        await self._done.wait()

    async def stop(self, flatten: bool = False) -> dict:
        """Stop quoting, cancel all, optionally flatten, disarm, close, release; idempotent."""
        if self._stop_task is None:
            self._stop_task = asyncio.ensure_future(self._stop(flatten))
        return await asyncio.shield(self._stop_task)

    async def halt(self, reason: str = "") -> dict:
        """Stop quoting and cancel every open order; report the count the exchange confirms."""
        t0 = time.monotonic()
        self._record_kill_state("halted")
        self._kill_wanted = "halted"
        if self.core is not None:
            self.core.halt(reason or "operator")
        self.log.event("halted", f"halted: {reason or 'operator'}", level=logging.WARNING)
        open_n = await self._cancel_all_confirmed(deadline_s=self.runtime.stop_timeout_sec / 2)
        self._keep_pulling("halt")  # a request of ours still in flight may land after this count
        return {"open_orders": open_n, "elapsed_ms": int((time.monotonic() - t0) * 1000), "state": self.status()["state"]}

    async def flatten(self, reason: str = "") -> dict:
        """Halt, then close the position with reduce-only market orders (they pass the guard)."""
        t0 = time.monotonic()
        out = await self.halt(reason or "flatten")
        self._record_kill_state("flattening")
        self._kill_wanted = "flattening"
        if self.core is not None:
            self.core.flatten(reason or "operator")
        position = await self._flatten_confirmed(deadline_s=self.runtime.stop_timeout_sec / 2)
        out.update({"position": position, "elapsed_ms": int((time.monotonic() - t0) * 1000), "state": self.status()["state"]})
        return out

    async def resume(self) -> dict:
        self._record_kill_state("running")
        self._kill_wanted = "running"
        if self.core is not None:
            self.core.resume()
        self.log.event("resumed", "resumed quoting")
        return self.status()

    async def apply_params(self, params: SymbolParams) -> None:
        """New parameters, live: the core keeps orders, position, kill state and grinding history."""
        self.params = params
        if self.core is not None:
            self.core.apply_params(params)
        self.log.event("params_applied", "parameters applied live")

    def set_reduce_only(self, on: bool) -> None:
        self._reduce_only_wanted = on
        if self.core is not None:
            self.core.set_reduce_only(on)

    def set_rate_share(self, share: float) -> None:
        self.budget.set_share(share)

    def status(self) -> dict:
        """JSON-serialisable state: lifecycle, epoch, streams, staleness, counters."""
        now = time.monotonic()
        core = self.core
        return {
            "symbol": self.symbol,
            "fleet": self.fleet_name,
            "state": self._state(),
            "stopping": self._stopping and not self._stopped,
            "epoch": self.grant.epoch if self.grant else None,
            "ownership_lost": self._lease.lost,
            "kill_state": core.halt_state if core else (self.grant.kill_state if self.grant else "running"),
            "blocks": sorted(self._blocks),
            "user_stream_connected": self._user_connected,
            "market_stream_connected": self._market_connected,
            "last_book_age_s": round(now - self._last_book_mono, 3) if self._last_book_mono else None,
            "lease_left_s": None if (left := self._lease.left(now)) is None else round(left, 3),
            "open_orders": len(core.store.orders) if core else 0,
            "requests_in_flight": len(self._sending),
            "position": core.store.position if core else 0.0,
            "uptime_s": round(now - self._started_mono, 3),
            "tick_to_order_p50_ms": self._latency_ms(0.5),
            "tick_to_order_p99_ms": self._latency_ms(0.99),
            "rate_share": self.budget.share,
            "last_reconcile_repair": self._last_repair,
            "counters": {**self.counters, **self._frame_counts()},
        }

    def exposure(self) -> dict:
        """JSON-serialisable exposure: position, mark, notional, pending, worst case, cap, P&L, kill state."""
        core = self.core
        cap = self.params.worst_cap
        if core is None:
            return {
                "symbol": self.symbol, "position": 0.0, "mark": 0.0, "notional": 0.0, "pending_buy": 0.0,
                "pending_sell": 0.0, "worst_long": 0.0, "worst_short": 0.0, "cap": cap, "realized_pnl": 0.0,
                "unrealized_pnl": 0.0, "funding_pnl": 0.0, "kill_state": self.grant.kill_state if self.grant else "running",
                "open_orders": 0, "epoch": self.grant.epoch if self.grant else None,
            }
        s = core.store
        price = s.mark or s.mid
        return {
            "symbol": self.symbol,
            "epoch": core.epoch,
            "position": s.position,
            "entry_price": s.entry_price,
            "mark": s.mark,
            "mid": s.mid,
            "notional": s.position * price,
            "pending_buy": s.pending_buy_size(),
            "pending_sell": s.pending_sell_size(),
            "worst_long": s.worst_long,
            "worst_short": s.worst_short,
            "cap": cap,
            "realized_pnl": s.realized_pnl,
            "unrealized_pnl": s.unrealized_pnl(),
            "funding_pnl": s.funding_pnl,
            "commission": s.commission,
            "kill_state": core.halt_state,
            "reduce_only": core.guard.reduce_only_mode,
            "open_orders": len(s.orders),
        }

    def metrics_text(self) -> bytes:
        return self.metrics.render()

    @property
    def ownership_lost(self) -> bool:
        """True once the owner refused a renewal: this incarnation must not trade again."""
        return self._lease.lost

    # ================================================================== start and resync

    async def _start(self) -> None:
        """Filters, user stream (buffering), snapshot, old epochs cancelled, market streams, dead-man."""
        client = self._require_client()
        await client.sync_time()
        self.filters = await client.symbol_filters(self.symbol)
        if self.core is None:
            self.core = AgentCore(self.symbol, self.params, self.filters, self.grant.epoch)  # type: ignore[union-attr]
            self.metrics.bind(self.core)
            # an explicit call made while starting wins over the grant read at acquire
            self._apply_kill_state(self._kill_wanted or self.grant.kill_state)  # type: ignore[union-attr]
            reduce_only = self._reduce_only_wanted
            if reduce_only is None:
                reduce_only = bool(self.grant and self.grant.reduce_only)
            self.core.set_reduce_only(reduce_only)
        await self._connect_user()
        await self._resync(initial=True)
        await self._cancel_older_epochs()
        await self._connect_market()
        await self._heartbeat()

    async def _connect_user(self) -> None:
        client = self._require_client()
        key = await client.create_listen_key()
        stream = UserStream(self.endpoints.ws_user_url, key)
        self._streams.append(stream)
        await stream.connect()
        self._user = stream
        self._user_stream_opened = time.monotonic()
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

        stream = MarketStream(
            self.endpoints.ws_market_url,
            self.symbol,
            ("bookTicker", "markPrice@1s"),
            on_event=on_event,
        )
        self._streams.append(stream)
        await stream.connect()
        if self._market is not None:
            old, self._market = self._market, stream
            await old.close()
        else:
            self._market = stream
        self._market_stream_opened = time.monotonic()
        self._market_connected = True
        self._blocks.discard(BLOCK_MARKET_STREAM)
        self.log.event("market_stream_connected", "WebSocket MarketStream connected")

    async def _resync(self, initial: bool = False) -> None:
        """REST snapshot (position, open orders, wallet) made the truth, then the buffered user events."""
        async with self._resync_lock:
            await self._resync_locked(initial)

    async def _resync_locked(self, initial: bool) -> None:
        client = self._require_client()
        core = self._require_core()
        self._blocks.add(BLOCK_RESYNC)
        position = await client.position(self.symbol)
        orders = await client.open_orders(self.symbol)
        wallet = await self._wallet_balance()
        # The user events buffered meanwhile are applied next by the consumer, in order; the store
        # keeps per order the newest (update time, filled, stage), so the older ones change nothing.
        core.reset_from_snapshot(position, orders, self._exchange_ms(), wallet_balance=wallet)
        if not initial:
            self.counters["resyncs"] += 1
            self.metrics.inc_rest_fallback()
        self._blocks.discard(BLOCK_RESYNC)
        self.journal.on_resync(self, initial)
        self.log.event(
            "resynced",
            f"snapshot: position {core.store.position}, {len(orders)} open orders",
            position=core.store.position,
        )

    async def _wallet_balance(self) -> float | None:
        asset = self.filters.margin_asset if self.filters else ""
        try:
            rows = await self._require_client().balance()
        except BinanceError as exc:
            self.log.event("balance_unavailable", f"wallet balance not read: {exc!r}", level=logging.WARNING)
            return None
        for row in rows:
            if row.get("asset") == asset:
                try:
                    return float(row.get("balance", row.get("walletBalance", 0)))
                except (TypeError, ValueError):
                    return None
        return None

    async def _book_funding_income(self) -> None:
        """A FUNDING_FEE frame that names no symbol (cross margin): the store asked for this symbol's
        FUNDING_FEE income rows; they are read and booked once per tranId. A few tries, as the
        record may trail the frame; what is still missing is asked for again at the next fee."""
        for delay in (0.0, 2.0, 10.0, 30.0):
            await self._sleep_unless_stopping(delay)
            core = self.core
            start = core.store.funding_lookup_start() if core is not None and not self._stopping else None
            if start is None:
                return
            try:
                rows = await self._require_client().income(self.symbol, "FUNDING_FEE", start_time=start, limit=1000)
            except BinanceError as exc:
                self.log.event("funding_income_unavailable", f"funding income not read: {exc!r}", level=logging.WARNING)
                continue
            if core is self.core:
                booked = core.store.on_funding_income(rows)
                if booked:
                    total = core.store.funding_pnl
                    self.log.event("funding_booked", f"{booked} funding fee(s) booked from income rows, total {total}")

    async def _cancel_older_epochs(self) -> None:
        """Orders of an older epoch (a previous owner of this symbol) are cancelled before any quote."""
        core = self._require_core()
        client = self._require_client()
        stale: list[tuple[str, int | None]] = []
        for o in list(core.store.orders.values()):
            if _older_epoch(o.client_order_id, core.epoch):
                stale.append((o.client_order_id, o.order_id))
        if not stale:
            return
        self.log.event("old_epoch_cancel", f"cancelling {len(stale)} orders of older epochs", level=logging.WARNING)
        ids = [oid for _, oid in stale if oid is not None]
        if ids:
            results = await client.batch_cancel(self.symbol, order_ids=ids)
            for (cid, oid), res in zip([s for s in stale if s[1] is not None], results):
                if isinstance(res, OrderInfo):
                    core.on_order_info(res)
                else:
                    core.store.on_cancel_rejected(cid, res.code, oid, self._exchange_ms())
        # What the exchange still lists must be gone before quoting starts.
        left = [o for o in await client.open_orders(self.symbol) if _older_epoch(o.client_order_id, core.epoch)]
        if left:
            raise BinanceError(0, f"{len(left)} older-epoch orders still open after cancel", None)

    # ================================================================== loops

    async def _market_loop(self) -> None:
        backoff = Backoff(self.runtime.reconnect_backoff_initial_sec, self.runtime.reconnect_backoff_max_sec)
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
                # the first reconnect is immediate (market data has no state to resync); failures back off

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
            now_ms = _now_ms() + self._offset()
            self._last_book_mono = time.monotonic()
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
                core.on_event(ev, _now_ms() + self._offset())

    async def _user_loop(self) -> None:
        """Consume the user stream; on loss: block, cancel via REST after the grace, reconnect, resync."""
        backoff = Backoff(self.runtime.reconnect_backoff_initial_sec, self.runtime.reconnect_backoff_max_sec)
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
        core.on_event(ev, _now_ms() + self._offset())
        self.journal.on_user_event(self, ev)
        if (
            isinstance(ev, FundingFee)
            and core.store.funding_lookup_start() is not None
            and not any(t.get_name() == "funding-income" for t in self._tasks)
        ):
            self._spawn(self._book_funding_income(), "funding-income")
        if isinstance(ev, OrderUpdate) and ev.exec_type == "TRADE":
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
        self._user_lost_at = time.monotonic()
        self.counters["user_stream_reconnects"] += 1
        self.log.event("user_stream_lost", f"user stream lost: {why}; quoting stopped", level=logging.WARNING)

    async def _quote_loop(self) -> None:
        interval = self.params.base.quote_interval_ms / 1000.0
        while not self._stopping:
            await asyncio.sleep(interval)
            core = self.core
            if core is None:
                continue
            if self._blocks:
                if BLOCK_STARTING not in self._blocks and self._lease_ok():
                    # no quoting, but what adds beyond the cap still goes at once (a cancel is always safe)
                    actions = core.enforce_cap()
                    if actions:
                        self._execute(actions, self._exchange_ms(), None)
                continue
            now_ms = _now_ms() + self._offset()
            if core.should_quote(now_ms):
                self._quote(now_ms, None)
            interval = self.params.base.quote_interval_ms / 1000.0

    async def _deadman_loop(self) -> None:
        while not self._stopping:
            await self._sleep_unless_stopping(self.runtime.deadman_heartbeat_sec)
            if self._stopping:
                return
            if not self._lease_ok():
                continue  # a lapsed lease: let the exchange's countdown cancel
            try:
                await self._heartbeat()
            except BinanceError as exc:
                self.log.event("deadman_failed", f"dead-man heartbeat failed: {exc!r}", level=logging.WARNING)

    async def _rearm_then_unblock(self) -> None:
        """The lease is back: arm the dead-man switch first, then let quoting resume."""
        try:
            if self._stopping:
                return  # the stop disarms; arming now could outlive it
            await self._heartbeat()
        except BinanceError as exc:  # still blocked: the watchdog tries again on its next tick
            self.log.event("deadman_failed", f"dead-man re-arm failed: {exc!r}", level=logging.WARNING)
            return
        finally:
            self._rearming = False
        if self._lease_ok() and not self._lease.lost:
            self._blocks.discard(BLOCK_LEASE)
            self.log.event("lease_regained", "lease valid again: dead-man switch re-armed, quoting resumes")

    async def _heartbeat(self) -> None:
        await self._require_client().countdown_cancel_all(self.symbol, self.runtime.deadman_countdown_ms)
        self.counters["deadman_heartbeats"] += 1

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

    async def _renew_loop(self) -> None:
        own = self._ownership
        while not self._stopping and not self._lease.lost:
            await self._sleep_unless_stopping(own.renew_interval_s)
            if self._stopping:
                return
            send = time.monotonic()
            try:
                grant = await own.renew()
            except OwnershipLost as exc:
                self._on_ownership_lost(str(exc))
                return
            except Exception as exc:  # noqa: BLE001 - the lease check decides; keep trying
                self.log.event("renew_failed", f"ownership renew failed: {exc!r}", level=logging.WARNING)
                continue
            self._take_grant(grant, send)

    async def _watchdog_loop(self) -> None:
        """Every ``WATCHDOG_S``: the watchdog's actions (``agents/watchdog.py``), then look-ups."""
        timing = Timing(self.runtime.market_stale_sec, self.runtime.user_stream_grace_sec,
                        self.runtime.stream_max_lifetime_sec)
        while not self._stopping:
            await asyncio.sleep(WATCHDOG_S)
            now = time.monotonic()
            for act in watch(self._seen(now), timing):
                self._carry_out(act, now)
            core = self.core
            if core is not None:
                self._start_lookups(core, now)
                if len(self._lookups) > 1000:
                    self._lookups = {k: v for k, v in self._lookups.items() if k in core.store.orders}
            if len(self._streams) > 4:
                self._fold_streams()

    def _seen(self, now: float) -> Seen:
        return Seen(
            now=now, lease_ok=self._lease_ok(), lease_blocked=BLOCK_LEASE in self._blocks,
            ownership_lost=self._lease.lost, rearming=self._rearming, last_book=self._last_book_mono,
            market_opened=self._market_stream_opened, market_connected=self._market_connected and self._market is not None,
            market_stale_blocked=BLOCK_MARKET_STALE in self._blocks, user_lost_at=self._user_lost_at,
            user_opened=self._user_stream_opened, user_connected=self._user_connected,
        )

    def _carry_out(self, act: Act, now: float) -> None:
        if act is Act.LEASE_LAPSED:
            self._blocks.add(BLOCK_LEASE)
            self.log.event("lease_lapsed", "lease lapsed: quoting stopped", level=logging.ERROR)
        elif act is Act.REARM:
            self._rearming = True
            self._spawn(self._rearm_then_unblock(), "deadman-rearm")
        elif act is Act.SWAP_MARKET:
            silent = now - max(self._last_book_mono or 0.0, self._market_stream_opened)
            self._market_stream_opened = now
            self.log.event("market_swap", f"market stream reconnected (no book for {silent:.0f} s, or its lifetime)",
                           level=logging.WARNING)
            self._spawn(self._connect_market(), "market-swap")
        elif act is Act.MARKET_STALE:
            self._blocks.add(BLOCK_MARKET_STALE)
            self.counters["stale_market_pulls"] += 1
            self.log.event("market_stale", "no book update: quotes pulled", level=logging.WARNING)
            self._pull_quotes("market_stale")
        elif act is Act.MARKET_FRESH:
            self._blocks.discard(BLOCK_MARKET_STALE)
        elif act is Act.REST_FALLBACK:
            self._user_lost_at = None
            self._spawn(self._rest_fallback_cancel(), "rest-fallback")
        elif act is Act.SWAP_USER:
            self._user_stream_opened = now
            self._spawn(self._planned_user_swap(), "user-swap")

    def _start_lookups(self, core: AgentCore, now: float) -> None:
        """Look up, by client id, orders whose request went unanswered, that the exchange called
        unknown, or whose answer was ambiguous and whose recvWindow has now passed."""
        ex_now = self._exchange_ms()
        window = self._window_ms()
        due = (
            (core.store.stale_in_flight(ex_now, IN_FLIGHT_QUERY_MS), IN_FLIGHT_QUERY_MS),
            (core.store.unresolved_orders(ex_now, UNRESOLVED_QUERY_MS), UNRESOLVED_QUERY_MS),
            (core.store.due_lookups(ex_now, window), UNRESOLVED_QUERY_MS),
        )
        for orders, spacing_ms in due:
            for o in orders:
                if o.client_order_id in self._sending:
                    continue  # its request is still out: its answer (or its resolution) will tell
                last = self._lookups.get(o.client_order_id, -math.inf)
                if now - last >= spacing_ms / 1000:
                    self._lookups[o.client_order_id] = now
                    self._spawn(self._resolve(o.client_order_id), "resolve")

    async def _planned_user_swap(self) -> None:
        """Before the exchange's 24-hour cut: open a new user stream, then drop the old (no gap)."""
        client = self._require_client()
        key = await client.create_listen_key()
        stream = UserStream(self.endpoints.ws_user_url, key)
        self._streams.append(stream)
        await stream.connect()
        old, self._user = self._user, stream
        self._user_stream_opened = time.monotonic()
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
            self._user_lost_at = time.monotonic()  # try again after another grace
            return
        self.counters["rest_fallback_cancels"] += 1
        self.metrics.inc_rest_fallback()
        self.log.event("rest_fallback_cancel", "user stream down past grace: cancelled all via REST", level=logging.WARNING)

    # ================================================================== order flow

    def _quote(self, now_ms: int, tick: Tick | None) -> None:
        """One quote cycle: decide synchronously, count as pending, send concurrently."""
        core = self.core
        if core is None or not self._lease_ok():
            return
        actions = core.quote(now_ms, self.budget.orders_available())
        if actions:
            self._execute(actions, now_ms, tick)

    def _pull_quotes(self, why: str) -> None:
        """Cancel every order of ours, in flight ones included (by client id), and keep at it until
        the exchange lists none of this epoch's (a late-landing request is caught on a later round)."""
        core = self.core
        if core is None:
            return
        actions = core.cancel_all(in_flight=True)
        if actions:
            self.log.event("quotes_pulled", f"pulling {len(actions)} orders: {why}")
            self._execute(actions, self._exchange_ms(), None)
        self._keep_pulling(why)

    def _keep_pulling(self, why: str) -> None:
        """Until quoting is live again, re-list and cancel what of ours rests or lands late."""
        if self._stopping:
            return
        if self._pull_task is None or self._pull_task.done():
            self._pull_task = asyncio.ensure_future(self._pull_until_clear(why))
            self._inflight.add(self._pull_task)
            self._pull_task.add_done_callback(self._inflight.discard)

    def _quoting_live(self) -> bool:
        core = self.core
        return core is not None and not self._blocks and core.halt_state == "running" and self._lease_ok()

    async def _pull_until_clear(self, why: str) -> None:
        """Re-list and cancel until no order of this epoch rests and none may still land, or until
        quoting is live again (the ladder then owns its orders)."""
        client = self._client
        core = self.core
        if client is None or core is None:
            return
        delay, longest = PULL_REPEAT_S
        while not self._stopping and not self._quoting_live():
            await asyncio.sleep(delay)
            delay = min(longest, delay * 2)
            if self._stopping or self._quoting_live():
                return
            try:
                listed = await client.open_orders(self.symbol)
            except BinanceError as exc:
                self.log.event("pull_list_failed", f"open orders not listed: {exc!r}", level=logging.WARNING)
                continue
            mine = [o for o in listed if _same_epoch(o.client_order_id, core.epoch)]
            for info in mine:
                if core.store.adopt(info):
                    self._note_repair("untracked", info.client_order_id, "listed while quotes were pulled")
            actions = core.cancel_all(in_flight=True)
            if actions:
                self._execute(actions, self._exchange_ms(), None)
            landing = self._may_still_land()
            if not mine and not landing:
                self.counters["quote_pulls_confirmed"] += 1
                self.log.event("quotes_pulled_confirmed", f"no order of epoch {core.epoch} rests ({why})")
                return

    def _may_still_land(self) -> list[str]:
        """Client ids of ours that the exchange may yet accept: unacknowledged and inside their window."""
        core = self.core
        if core is None:
            return []
        now = self._exchange_ms()
        window = self._window_ms()
        return [
            o.client_order_id for o in core.store.orders.values()
            if o.status == "PENDING_NEW" and (o.unknown_ms is not None or now - o.sent_ms < window)
        ]

    def _window_ms(self) -> int:
        """How long after sending a request may still execute: its recvWindow, plus a margin."""
        recv = self._client.recv_window if self._client is not None else 5_000
        return int(recv) + LOOKUP_MARGIN_MS

    def _execute(self, actions: Actions, now_ms: int, tick: Tick | None) -> None:
        core = self._require_core()
        for batch in actions.batches:
            if not self._lease_ok():
                if batch.kind != "cancel":
                    continue
                # A lapsed lease may have a successor whose orders the store learned from the
                # account's user stream: cancel only this epoch's own.
                own = tuple(d for d in batch.items if _same_epoch(d.client_order_id, core.epoch))
                if not own:
                    continue
                if len(own) != len(batch.items):
                    batch = Batch(batch.kind, own)
            for part, risk in self._lanes(batch):
                self.journal.on_sent(self, part)
                sending = self._sending
                for d in part.items:
                    core.on_sent(d, now_ms)
                    sending[d.client_order_id] = sending.get(d.client_order_id, 0) + 1
                task = asyncio.ensure_future(self._send_batch(part, tick, risk))
                self._inflight.add(task)
                task.add_done_callback(lambda t, items=part.items: self._sent(t, items))

    def _lanes(self, batch: Batch) -> list[tuple[Batch, bool]]:
        """Split a batch by rate-budget lane: what takes risk off (cancels, reduce-only orders,
        amends that shrink an order or move it away from the market) may use the reserve."""
        if batch.kind == "cancel":
            return [(batch, True)]
        if batch.kind == "place":
            return [(batch, all(p.reduce_only for p in batch.items))]  # type: ignore[union-attr]
        orders = self._require_core().store.orders
        risk, other = [], []
        for a in batch.items:
            o = orders.get(a.client_order_id)
            (risk if o is not None and _reduces(a, o) else other).append(a)  # type: ignore[arg-type]
        out = []
        if risk:
            out.append((Batch(batch.kind, tuple(risk)), True))
        if other:
            out.append((Batch(batch.kind, tuple(other)), False))
        return out

    def _sent(self, task: asyncio.Task, items: tuple[Any, ...]) -> None:
        self._inflight.discard(task)
        sending = self._sending
        for d in items:
            n = sending.get(d.client_order_id, 0) - 1
            if n > 0:
                sending[d.client_order_id] = n
            else:
                sending.pop(d.client_order_id, None)
        if not task.cancelled() and task.exception() is not None and not self._stopping:
            self.log.event("send_failed", f"sending failed: {task.exception()!r}", level=logging.ERROR)

    async def _send_batch(self, batch: Batch, tick: Tick | None, risk: bool = False) -> None:
        client = self._require_client()
        core = self._require_core()
        items = batch.items
        TICK_READ.set(tick)  # this task's own context
        try:
            if batch.kind == "place":
                reqs = [self._order_request(p) for p in items]  # type: ignore[arg-type]
                self._mark_latency(tick)
                if len(reqs) == 1:
                    results: list[Any] = [await self._try(client.place_order(reqs[0], wait=False, risk=risk))]
                else:
                    results = await client.batch_place(reqs, wait=False, risk=risk)
            elif batch.kind == "amend":
                mods = [self._modify_request(a) for a in items]  # type: ignore[arg-type]
                self._mark_latency(tick)
                if len(mods) == 1:
                    results = [await self._try(client.modify_order(mods[0], wait=False, risk=risk))]
                else:
                    results = await client.batch_modify(mods, wait=False, risk=risk)
            else:
                results = await self._cancel_items(items)  # type: ignore[arg-type]
        except OutcomeUnknownError as exc:
            self._outcome_unknown(batch.kind, items, exc)
            return
        except BudgetExhaustedError as exc:
            for d in items:
                core.on_not_sent(d)  # refused locally, nothing left: not an exchange rejection
            self.log.event("budget_refused", f"{batch.kind} x{len(items)} not sent: {exc.msg}", level=logging.DEBUG)
            return
        except RateLimitedError as exc:
            self.counters["rate_limited"] += 1
            for d in items:
                core.on_rejected(d, exc.code, self._exchange_ms())
            self.log.event("rate_limited", f"429: pausing {exc.retry_after}s", level=logging.WARNING)
            return
        except BinanceError as exc:
            for d in items:
                core.on_rejected(d, exc.code, self._exchange_ms())
            self.log.event("request_failed", f"{batch.kind} x{len(items)}: {exc!r}", level=logging.WARNING)
            return
        self.journal.on_results(self, batch, results)
        unknown = [d for d, res in zip(items, results) if isinstance(res, OutcomeUnknownError)]
        if unknown:
            first = next(r for r in results if isinstance(r, OutcomeUnknownError))
            self._outcome_unknown(batch.kind, tuple(unknown), first)
        for d, res in zip(items, results):
            if isinstance(res, OrderInfo):
                core.on_order_info(res)
                if isinstance(d, Place) and d.reason != "ladder":
                    self.log.event(
                        "order_placed", f"{d.reason}: {d.side} {res.orig_qty} {d.order_type} -> {res.status}",
                        client_order_id=res.client_order_id, order_id=res.order_id,
                    )
            elif isinstance(res, OutcomeUnknownError):
                continue
            elif isinstance(res, BinanceError):
                core.on_rejected(d, res.code, self._exchange_ms())
                if res.code not in (-5022, -2011, -2013, -5027):
                    self.log.event(
                        "order_rejected", f"{batch.kind} refused: {res!r}", level=logging.WARNING,
                        client_order_id=d.client_order_id,
                    )

    def _outcome_unknown(self, kind: str, items: tuple[Any, ...], exc: BinanceError) -> None:
        """Ambiguous answers: the requests may have executed (even later). They stay counted, and
        a look-up once their recvWindow has passed settles them (the watchdog starts it)."""
        core = self._require_core()
        now = self._exchange_ms()
        for d in items:
            core.on_outcome_unknown(d, now)
        self.counters["unknown_outcomes"] += len(items)
        self.metrics.inc_unknown_outcome(len(items))
        self.log.event(
            "outcome_unknown",
            f"{kind} x{len(items)}: {exc.msg or exc!r} (HTTP {exc.http_status}); kept counted until settled",
            level=logging.WARNING,
            client_order_id=items[0].client_order_id if items else None,
        )

    async def _try(self, aw: Awaitable[OrderInfo]) -> OrderInfo | BinanceError:
        # One send: a request of unknown outcome is looked up later by client id, never resent here;
        # if it did not land, the next quote cycle decides again, after its lease check.
        try:
            return await aw
        except (OutcomeUnknownError, BudgetExhaustedError, RateLimitedError):
            raise
        except BinanceError as exc:
            return exc

    async def _cancel_items(self, items: tuple[Cancel, ...]) -> list[OrderInfo | BinanceError]:
        client = self._require_client()
        by_id = [c for c in items if c.order_id is not None]
        by_cid = [c for c in items if c.order_id is None]
        out: dict[str, OrderInfo | BinanceError] = {}
        if len(by_id) == 1 and not by_cid:
            c = by_id[0]
            out[c.client_order_id] = await self._try(client.cancel_order(self.symbol, order_id=c.order_id))
        elif by_id:
            res = await client.batch_cancel(self.symbol, order_ids=[c.order_id for c in by_id])  # type: ignore[misc]
            out.update({c.client_order_id: r for c, r in zip(by_id, res)})
        if by_cid:
            res = await client.batch_cancel(self.symbol, client_order_ids=[c.client_order_id for c in by_cid])
            out.update({c.client_order_id: r for c, r in zip(by_cid, res)})
        return [out[c.client_order_id] for c in items]

    async def _resolve(self, client_order_id: str) -> None:
        """Look an order up by client order id (never resend); the store decides what the answer
        proves (``Store.on_lookup``: before the request's window has passed, "not found" proves nothing)."""
        core = self.core
        if core is None or self._client is None:
            return
        try:
            info: OrderInfo | None = await self._client.query_order(self.symbol, client_order_id=client_order_id)
        except UnknownOrderError:
            info = None
        except BinanceError as exc:
            self.log.event("resolve_failed", f"lookup failed: {exc!r}; will retry", level=logging.WARNING, client_order_id=client_order_id)
            return
        verdict = core.store.on_lookup(client_order_id, info, self._exchange_ms(), self._window_ms())
        if verdict == "pending":
            return
        self.counters["unknown_outcomes_resolved"] += 1
        level = logging.WARNING if verdict == "gone" else logging.INFO
        detail = {
            "found": f"found at the exchange: {info.status if info else '?'}",
            "never_placed": "not at the exchange past its recvWindow: never placed",
            "gone": "the exchange has no record of it: closed",
        }[verdict]
        self.log.event("outcome_resolved", detail, level=level, client_order_id=client_order_id)

    # ================================================================== reconciliation

    async def _reconcile_loop(self) -> None:
        """The backstop: every ``reconcile_interval_sec`` the exchange's open orders against the
        store (and, every Nth time, the position against positionRisk); differences are repaired,
        logged, counted (``mm_reconcile_discrepancies_total``) and shown in status."""
        n = 0
        while not self._stopping:
            await self._sleep_unless_stopping(self.runtime.reconcile_interval_sec)
            if self._stopping or self.core is None or self._client is None:
                return
            if BLOCK_RESYNC in self._blocks or BLOCK_USER_STREAM in self._blocks:
                continue  # a resync is the stronger repair, and is under way
            n += 1
            try:
                await self._reconcile_orders()
                if n % self.runtime.reconcile_position_every == 0:
                    await self._reconcile_position()
            except BinanceError as exc:
                self.log.event("reconcile_failed", f"reconciliation skipped: {exc!r}", level=logging.WARNING)

    async def _reconcile_orders(self) -> None:
        client = self._require_client()
        core = self._require_core()
        listed_at = self._exchange_ms()
        listed = await client.open_orders(self.symbol)
        self.counters["reconciliations"] += 1
        plan = reconcile_orders(
            core.store, listed, epoch=core.epoch, listed_at_ms=listed_at,
            quoting=self._quoting_live(), may_cancel=self._lease_ok(),
        )
        for cid in plan.adopted:
            self._note_repair("untracked", cid, "open at the exchange, not counted here: adopted")
        for cid in plan.foreign:
            self._note_repair("untracked", cid, "an order not placed by mmfleet: counted, left alone")
        for cid in plan.old_epoch:
            self._note_repair("old_epoch", cid, "an earlier epoch's order still open")
        for cid in plan.lookup:
            self._note_repair("missing", cid, "counted here, not listed by the exchange: looked up")
            self._spawn(self._resolve(cid), "resolve")
        if plan.cancel:
            results = await client.batch_cancel(self.symbol, order_ids=[oid for _, oid in plan.cancel])
            for (cid, oid), res in zip(plan.cancel, results):
                if isinstance(res, OrderInfo):
                    core.on_order_info(res)
                    self._note_repair("orphan_cancelled", cid, "cancelled: no ladder of ours wants it")
                elif isinstance(res, BinanceError) and not isinstance(res, OutcomeUnknownError):
                    core.store.on_cancel_rejected(cid, res.code, oid, self._exchange_ms())

    async def _reconcile_position(self) -> None:
        """A position that differs from positionRisk twice in a row (one may be a fill in flight) is
        repaired by a resync from REST."""
        core = self._require_core()
        pos = await self._require_client().position(self.symbol)
        if core.store.steps(pos.amount) == core.store.position_steps:
            self._position_mismatch = False
            return
        if not self._position_mismatch:
            self._position_mismatch = True
            return
        self._position_mismatch = False
        self._note_repair("position", None, f"position {core.store.position} here, {pos.amount} at the exchange: resync")
        await self._resync()

    def _note_repair(self, kind: str, client_order_id: str | None, detail: str) -> None:
        self.counters["reconcile_repairs"] += 1
        self.metrics.inc_discrepancy(kind)
        self._last_repair = {"kind": kind, "client_order_id": client_order_id, "detail": detail, "time_ms": self._exchange_ms()}
        self.log.event("reconcile_repair", f"{kind}: {detail}", level=logging.WARNING, client_order_id=client_order_id)

    def _order_request(self, p: Place) -> OrderRequest:
        f = self.filters
        assert f is not None
        if p.order_type == "MARKET":
            return OrderRequest(
                symbol=self.symbol, side=p.side, order_type="MARKET", quantity=f.qty_str(p.qty_steps),
                reduce_only=p.reduce_only, client_order_id=p.client_order_id,
            )
        return OrderRequest(
            symbol=self.symbol, side=p.side, order_type="LIMIT", quantity=f.qty_str(p.qty_steps),
            price=f.price_str(p.price_ticks), time_in_force=p.time_in_force or "GTC",
            reduce_only=p.reduce_only, client_order_id=p.client_order_id,
        )

    def _modify_request(self, a: Amend) -> ModifyRequest:
        f = self.filters
        assert f is not None
        return ModifyRequest(
            symbol=self.symbol, side=a.side, quantity=f.qty_str(a.qty_steps), price=f.price_str(a.price_ticks),
            order_id=a.order_id, client_order_id=None if a.order_id is not None else a.client_order_id,
        )

    def _mark_latency(self, tick: Tick | None) -> None:
        if tick is None:
            return
        dt = time.perf_counter_ns() - tick[0]
        self.latencies_ns.append(dt)
        self._recent_latencies.append(dt)
        self.metrics.observe_tick_to_order(dt / 1e9)

    # ================================================================== halt, flatten, stop

    async def _cancel_all_confirmed(self, deadline_s: float) -> int:
        """Cancel-all at the exchange, then poll open orders until none (or the deadline); returns the count."""
        client = self._client
        if client is None or self.core is None:
            return 0
        end = time.monotonic() + deadline_s
        n = -1
        while True:
            try:
                # Fenced cleanup: once the lease has lapsed a new owner may be quoting this symbol,
                # so a symbol-wide cancel could hit its orders; cancel only the ones we placed.
                fenced = await self._cancel_fenced(client)
                listed = await client.open_orders(self.symbol)
                if fenced:
                    listed = [o for o in listed if _same_epoch(o.client_order_id, self.core.epoch)]
                for info in listed:
                    self.core.store.adopt(info)  # counted, even if the store had closed it on inference
                n = len(listed)
            except BinanceError as exc:
                self.log.event("cancel_all_failed", f"cancel-all: {exc!r}", level=logging.WARNING)
                if exc.code in FATAL_START_CODES:
                    break  # a wrong key or signature: no retry will get through
            if n == 0 or time.monotonic() >= end:
                break
            await asyncio.sleep(0.2)
        return n if n >= 0 else len(self.core.store.orders)

    async def _cancel_fenced(self, client: BinanceClient) -> bool:
        """Cancel-all while the lease holds; once it lapsed, only this epoch's orders (True then).

        A lapsed lease may have a successor quoting this symbol, whose orders a symbol-wide cancel would hit.
        """
        if self._lease_ok():
            await client.cancel_all(self.symbol)
            return False
        core = self._require_core()
        epoch = core.epoch  # the store also tracks other epochs' orders (they are exposure)
        mine = [
            o.order_id for o in core.store.open_orders()
            if o.order_id is not None and _same_epoch(o.client_order_id, epoch)
        ]
        if mine:
            await client.batch_cancel(self.symbol, order_ids=mine)
        return True

    async def _flatten_confirmed(self, deadline_s: float) -> float:
        """Reduce-only market orders through the guard until the exchange reports flat (or the deadline)."""
        client = self._client
        core = self.core
        if client is None or core is None or self.filters is None:
            return 0.0
        end = time.monotonic() + deadline_s
        while True:
            try:
                pos = await client.position(self.symbol)
                listed = await client.open_orders(self.symbol)
            except BinanceError as exc:
                self.log.event("flatten_failed", f"position read failed: {exc!r}", level=logging.WARNING)
                pos = None
            if pos is not None:
                # the exchange's word on what is left to close (the stream may lag behind a market fill)
                core.reset_from_snapshot(pos, listed, self._exchange_ms())
                if pos.amount == 0:
                    return 0.0
                if not any(o.reason == "flatten" for o in core.store.orders.values()) and self._lease_ok():
                    actions = core.quote(_now_ms() + self._offset(), None)
                    if actions:
                        self._execute(actions, _now_ms() + self._offset(), None)
                        await self._wait_inflight(2.0)
            if time.monotonic() >= end:
                return float(pos.amount) if pos is not None else core.store.position
            await asyncio.sleep(0.25)

    async def _stop(self, flatten: bool) -> dict:
        t0 = time.monotonic()
        self._stopping = True
        self._blocks.add(BLOCK_STOPPING)
        self.log.event("stopping", f"stopping (flatten={flatten})")
        budget = self.runtime.stop_timeout_sec
        open_n = None
        position = None
        try:
            await asyncio.wait_for(self._stop_trading(flatten, t0), timeout=max(1.0, budget - 2.0))
        except asyncio.TimeoutError:
            self.log.event("stop_slow", "graceful stop ran out of time: forcing cancel-all", level=logging.ERROR)
            if self._client is not None and self._lease_ok():
                try:
                    await asyncio.wait_for(self._client.cancel_all(self.symbol), 1.5)
                except (BinanceError, OSError, asyncio.TimeoutError) as exc:  # the dead-man switch is the last net
                    self.log.event("stop_cancel_failed", f"forced cancel-all failed: {exc!r}", level=logging.ERROR)
        if self._client is not None:
            with contextlib.suppress(Exception):
                open_n = len(await asyncio.wait_for(self._client.open_orders(self.symbol), 1.5))
            with contextlib.suppress(Exception):
                position = float((await asyncio.wait_for(self._client.position(self.symbol), 1.5)).amount)
        for task in self._tasks:
            task.cancel()
        for task in list(self._inflight):
            task.cancel()
        await asyncio.gather(*self._tasks, *self._inflight, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.journal.on_stop(self), 8.0)  # last backfill and flush; client open
        await self._close_streams()
        if self._client is not None:
            await self._client.close()
        try:
            await self._ownership.release()
        except Exception as exc:  # noqa: BLE001 - the lease then runs out on its own; say so
            self.log.event("release_failed", f"ownership not released: {exc!r}", level=logging.WARNING)
        self._stopped = True
        summary = {
            **self.status(),
            "exposure": self.exposure(),
            "exchange_open_orders": open_n,
            "exchange_position": position,
            "flattened": bool(flatten),
            "stop_elapsed_ms": int((time.monotonic() - t0) * 1000),
        }
        if open_n is not None:
            summary["open_orders"] = open_n  # the exchange's count, not the store's last view
        if position is not None:
            summary["position"] = position
        self._stop_summary = summary
        self.log.event("stopped", f"stopped in {summary['stop_elapsed_ms']} ms: {open_n} open orders, position {position}")
        if self._done is not None:
            self._done.set()
        return summary

    async def _stop_trading(self, flatten: bool, t0: float) -> None:
        for task in self._tasks:
            if task.get_name() in ("quote", "watchdog"):
                task.cancel()
        await self._wait_inflight(2.0)
        if self._client is None or self.core is None:
            return  # nothing of ours can be resting: the start never got as far as the symbol
        if not self._started and self.grant is not None:
            self.log.event("stop_during_start", "stopped while starting: cancelling whatever rests", level=logging.WARNING)
        budget = self.runtime.stop_timeout_sec
        await self._cancel_all_confirmed(deadline_s=budget / 3)
        if flatten and self._lease_ok():
            self.core.flatten("stop")
            await self._flatten_confirmed(deadline_s=budget / 3)
            await self._cancel_all_confirmed(deadline_s=2.0)
        if self._lease_ok():  # a lapsed lease may have a successor whose dead-man switch this would disarm
            try:
                await self._client.countdown_cancel_all(self.symbol, 0)  # disarm the dead-man switch
            except BinanceError as exc:  # still armed: it fires on an already emptied book
                self.log.event(
                    "deadman_disarm_failed", f"dead-man switch not disarmed: {exc!r}", level=logging.WARNING
                )

    async def _wait_inflight(self, timeout: float) -> None:
        if self._inflight:
            await asyncio.wait(list(self._inflight), timeout=timeout)

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

    # ================================================================== ownership and helpers

    def _take_grant(self, grant: Grant, send_time: float) -> None:
        previous = self.grant
        self.grant = grant
        self._lease.granted(send_time, grant.lease_ttl_s)
        if abs(self.budget.share - grant.rate_share) > 1e-12:
            self.budget.set_share(grant.rate_share)
        if self.core is not None:
            if previous is None or previous.kill_state != grant.kill_state:
                self._apply_kill_state(grant.kill_state)
            if previous is None or previous.reduce_only != grant.reduce_only:
                self.core.set_reduce_only(grant.reduce_only)

    def _apply_kill_state(self, kill_state: str) -> None:
        core = self.core
        if core is None or core.halt_state == kill_state:
            return
        if kill_state == "halted":
            core.halt("durable kill state")
        elif kill_state == "flattening":
            core.flatten("durable kill state")
        else:
            core.resume()
        self.log.event("kill_state", f"kill state {kill_state}", level=logging.WARNING)

    def _record_kill_state(self, state: str) -> None:
        record: Callable[[str], None] | None = getattr(self._ownership, "record_kill_state", None)
        if record is not None:
            try:
                record(state)
            except OSError as exc:
                self.log.event("kill_state_unsaved", f"kill state not saved: {exc!r}", level=logging.ERROR)

    def _on_ownership_lost(self, why: str) -> None:
        self._lease.lose()
        self._blocks.add(BLOCK_LEASE)
        self.log.event("ownership_lost", f"ownership lost ({why}): quoting stopped; the dead-man switch cancels", level=logging.ERROR)

    def _lease_ok(self) -> bool:
        return self._lease.ok(time.monotonic())

    def _state(self) -> str:
        core = self.core
        return derive_state(
            self._blocks, started=self._started, stopped=self._stopped, stopping=self._stopping,
            ownership_lost=self._lease.lost, kill_state=core.halt_state if core is not None else "running",
        ).value

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

    def _latency_ms(self, q: float) -> float | None:
        data = sorted(tuple(self._recent_latencies))
        if not data:
            return None
        return round(data[min(len(data) - 1, int(q * len(data)))] / 1e6, 4)

    def _offset(self) -> int:
        return self._client.time_offset_ms if self._client is not None else 0

    def _exchange_ms(self) -> int:
        return _now_ms() + self._offset()

    def _spawn(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.append(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task) -> None:
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and not self._stopping:
            self.log.event("task_failed", f"task {task.get_name()} failed: {exc!r}", level=logging.ERROR)
            if task.get_name() in ("market", "user", "quote", "watchdog", "deadman", "renew", "keepalive", "reconcile"):
                # a loop must never die silently: stop quoting, then restart it
                self._pull_quotes(f"{task.get_name()} loop failed")
                restart = {
                    "market": self._market_loop, "user": self._user_loop, "quote": self._quote_loop,
                    "watchdog": self._watchdog_loop, "deadman": self._deadman_loop, "renew": self._renew_loop,
                    "keepalive": self._keepalive_loop, "reconcile": self._reconcile_loop,
                }[task.get_name()]
                self._spawn(restart(), task.get_name())

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self._stopping:
            left = end - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(left, 0.1))

    def _require_client(self) -> BinanceClient:
        if self._client is None:
            raise RuntimeError("the agent has no client yet: call run()")
        return self._client

    def _require_core(self) -> AgentCore:
        if self.core is None:
            raise RuntimeError("the agent has no core yet: it has not started")
        return self.core


def _reduces(a: Amend, o: Any) -> bool:
    """An amend that takes risk off: no larger, and smaller or further from the market."""
    if a.qty_steps > o.orig_steps:
        return False
    away = a.price_ticks < o.price_ticks if a.side == "BUY" else a.price_ticks > o.price_ticks
    return a.qty_steps < o.orig_steps or away


def _older_epoch(client_order_id: str, epoch: int) -> bool:
    parsed = parse_client_order_id(client_order_id)
    return parsed is not None and parsed[0] < epoch


def _same_epoch(client_order_id: str, epoch: int) -> bool:
    parsed = parse_client_order_id(client_order_id)
    return parsed is not None and parsed[0] == epoch


class _ListenKeyGone(Exception):
    """The listenKey expired or was refused: a new key, a new stream, and a resync."""
