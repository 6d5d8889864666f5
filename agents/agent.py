"""SymbolAgent: the asyncio shell around one symbol's trading core; the only part of an agent that awaits.

It owns the connections (REST client, market stream, user stream), the timers (quote, dead-man
heartbeat, listenKey keepalive, ownership renewal, staleness watchdog) and the fault policy; every
trading decision comes from :class:`~agents.core.AgentCore`. This module holds the public API, the
start and resync, and ownership; each other concern is one part in its own module, mixed in:
``agent_streams`` (market and user feeds), ``agent_timers`` (quote loop, dead-man switch, lease
renewal, watchdog), ``agent_orders`` (the order flow), ``agent_reconcile`` (the reconciliation
backstop), ``agent_stop`` (halt, flatten, stop); constants and helpers in ``agent_base``. Quoting is allowed only while nothing blocks it:
a lost user stream, stale market data, a resync in progress or a lapsed lease each add a block.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections import deque
from typing import Any, Awaitable, Callable

from fleet.vocabulary import KillState
from fleet.binance.client import BinanceClient
from fleet.binance.errors import BinanceError
from fleet.binance.filters import SymbolFilters
from fleet.binance.models import OrderInfo
from fleet.binance.ratelimit import RateBudget
from fleet.binance.streams import MarketStream, UserStream
from fleet.config import RuntimeParams, SymbolParams
from journal.sink import NULL_SINK, JournalSink

from .clock import WALL_CLOCK, Clock
from .core import AgentCore
from .snapshot import Snapshot, build_exposure, build_status
from .transport import NetworkTransport, Transport
from .logging import AgentLog
from .metrics import AgentMetrics
from .ownership import Grant, Ownership
from .lifecycle import LeaseClock, derive_state
from .agent_base import (  # noqa: F401 - ExchangeEndpoints, Backoff, TICK_READ, Tick: re-exported
    _TRANSIENT,
    BLOCK_LEASE,
    BLOCK_RESYNC,
    BLOCK_STARTING,
    COUNTERS,
    FATAL_START_CODES,
    LATENCY_KEEP,
    LATENCY_RECENT,
    LEASE_MARGIN_S,
    TICK_READ,
    Backoff,
    ExchangeEndpoints,
    Tick,
    _older_epoch,
)
from .agent_streams import Streams
from .agent_orders import OrderFlow
from .agent_reconcile import Reconciliation
from .agent_stop import Shutdown
from .agent_timers import Timers


class SymbolAgent(Streams, Timers, OrderFlow, Reconciliation, Shutdown):
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
        clock: Clock = WALL_CLOCK,
        transport: Transport | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.clock = clock  # every time read and sleep of the runtime goes through it
        self.rng = rng or random.Random()  # back-off jitter; a simulated run seeds it
        # the client and the streams come from the transport (real sockets unless one is injected)
        self.transport: Transport = transport or NetworkTransport(endpoints, credentials)
        self.fleet_name = fleet_name
        self.symbol = symbol
        self.params = params
        self.runtime = runtime
        self.endpoints = endpoints
        self._ownership = ownership
        self.log = AgentLog(logger or logging.getLogger("mmfleet.agent"), symbol)
        self.metrics = AgentMetrics(symbol)
        self.budget = RateBudget(share=rate_share, clock=clock.monotonic)
        self.journal: JournalSink = NULL_SINK  # the trade journal (journal.recorder.attach_journal)
        # what the start learns: the trading core, the symbol's filters, the lease grant
        self.core: AgentCore | None = None
        self.filters: SymbolFilters | None = None
        self.grant: Grant | None = None
        self._init_connections()
        self._init_life()
        self._init_order_flow()
        self._init_status()

    def _init_connections(self) -> None:
        """The REST client and the streams, opened by the start; what the feeds know of them."""
        self._client: BinanceClient | None = None
        self._market: MarketStream | None = None
        self._user: UserStream | None = None
        self._user_connected = self._market_connected = False
        self._last_book_mono: float | None = None
        self._user_lost_at: float | None = None
        self._user_stream_opened: float = 0.0
        self._market_stream_opened: float = 0.0
        self._user_reconnect = asyncio.Event()
        self._streams: list[Any] = []  # every stream not yet folded into the frame counts below
        self._frames_retired = {"malformed_frames": 0, "unknown_events": 0}

    def _init_life(self) -> None:
        """Start to stop: what blocks quoting, the lease clock, the loops and the control asked for."""
        self._blocks: set[str] = {BLOCK_STARTING}
        self._lease = LeaseClock(LEASE_MARGIN_S)
        self._started = self._stopping = self._stopped = False
        self._done: asyncio.Event | None = None
        self._stop_task: asyncio.Task | None = None
        self._stop_summary: dict | None = None
        self._tasks: list[asyncio.Task] = []
        self._sleepers: set[asyncio.Future] = set()  # timers' sleeps, cut short by the stop
        self._kill_wanted: str | None = None  # a halt/flatten/resume asked for before the core existed
        self._reduce_only_wanted: bool | None = None
        self._resync_lock = asyncio.Lock()
        self._rearming = False  # a dead-man re-arm is under way before the lease block is lifted

    def _init_order_flow(self) -> None:
        """Requests out, look-ups and quote pulls (``agent_orders``)."""
        self._inflight: set[asyncio.Task] = set()
        self._lookups: dict[str, float] = {}
        self._sending: dict[str, int] = {}  # client order id -> requests about it still awaiting an answer
        self._pull_task: asyncio.Task | None = None

    def _init_status(self) -> None:
        """What the agent shows: latencies, counters, the published snapshot, the last repair."""
        self.latencies_ns: deque[int] = deque(maxlen=LATENCY_KEEP)
        self._recent_latencies: deque[int] = deque(maxlen=LATENCY_RECENT)
        self._sorted_latencies: list[int] = []  # their sorted copy (``_latency_ms``)
        self._latencies_sorted_at = -math.inf
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._started_mono = self.clock.monotonic()
        self.published: Snapshot | None = None  # the latest snapshot the loop published (publish())
        self._last_repair: dict[str, Any] | None = None  # the reconciliation's last repair, for status
        self._position_mismatch = False  # the last position check disagreed (a second one resyncs)

    # ================================================================== public API

    async def run(self) -> None:
        """The whole life: own, start (retried on transient errors), trade, until :meth:`stop` is done."""
        self._done = asyncio.Event()
        if self._stopping:
            self._done.set()
            return
        send = self.clock.monotonic()
        grant = await self._ownership.acquire()  # OwnershipRefused propagates: never trade unowned
        if self._stopping:  # stopped while waiting for the symbol: give it straight back
            await self._ownership.release()
            self._done.set()
            return
        self._take_grant(grant, send)
        self.log.epoch = grant.epoch
        self.log.event("ownership_acquired", f"owned {self.symbol} at epoch {grant.epoch}", state=grant.kill_state)
        # Renewed from the grant on, not from the end of the start: a start slowed by a busy machine
        # (50 agents starting on 2 cores) must not let the lease lapse and get the agent fenced as hung.
        self._spawn(self._renew_loop(), "renew")
        self._client = self.transport.client(self.budget)
        await self._client.open()
        backoff = Backoff(self.runtime.reconnect_backoff_initial_sec, self.runtime.reconnect_backoff_max_sec,
                          rng=self.rng)
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
            self._spawn(self._watchdog_loop(), "watchdog")
            self._spawn(self._reconcile_loop(), "reconcile")
            self.log.event("quoting_started", f"{self.symbol} started: state {self.publish().status['state']}")
        await self._done.wait()

    async def stop(self, flatten: bool = False) -> dict:
        """Stop quoting, cancel all, optionally flatten, disarm, close, release; idempotent."""
        if self._stop_task is None:
            self._stop_task = asyncio.ensure_future(self._stop(flatten))
        return await asyncio.shield(self._stop_task)

    async def halt(self, reason: str = "") -> dict:
        """Stop quoting and cancel every open order; report the count the exchange confirms."""
        t0 = self.clock.monotonic()
        self._record_kill_state(KillState.HALTED)
        self._kill_wanted = KillState.HALTED
        if self.core is not None:
            self.core.halt(reason or "operator")
        self.log.event("halted", f"halted: {reason or 'operator'}", level=logging.WARNING)
        open_n = await self._cancel_all_confirmed(deadline_s=self.runtime.stop_timeout_sec / 2)
        self._keep_pulling("halt")  # a request of ours still in flight may land after this count
        return {"open_orders": open_n, "elapsed_ms": int((self.clock.monotonic() - t0) * 1000),
                "state": self.publish().status["state"]}

    async def flatten(self, reason: str = "") -> dict:
        """Halt, then close the position with reduce-only market orders (they pass the guard)."""
        t0 = self.clock.monotonic()
        out = await self.halt(reason or "flatten")
        self._record_kill_state(KillState.FLATTENING)
        self._kill_wanted = KillState.FLATTENING
        if self.core is not None:
            self.core.flatten(reason or "operator")
        position = await self._flatten_confirmed(deadline_s=self.runtime.stop_timeout_sec / 2)
        out.update({"position": position, "elapsed_ms": int((self.clock.monotonic() - t0) * 1000),
                    "state": self.publish().status["state"]})
        return out

    async def resume(self) -> dict:
        self._record_kill_state(KillState.RUNNING)
        self._kill_wanted = KillState.RUNNING
        if self.core is not None:
            self.core.resume()
        self.log.event("resumed", "resumed quoting")
        return self.publish().status

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
        """JSON-serialisable state: lifecycle, epoch, streams, staleness, counters (fresh, on the loop)."""
        return build_status(self)

    def exposure(self) -> dict:
        """JSON-serialisable exposure: position, mark, notional, pending, worst case, cap, P&L, kill state."""
        return build_exposure(self)

    def publish(self) -> Snapshot:
        """Build status and exposure on the trading loop and publish them as one immutable snapshot, so
        another thread (the Ray actor's control calls) reads a finished object, never a half-changed one."""
        snap = Snapshot(at=self.clock.monotonic(), status=self.status(), exposure=self.exposure())
        self.published = snap
        return snap

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

                # the first reconnect is immediate (market data has no state to resync); failures back off

    # ================================================================== order flow

    # ================================================================== reconciliation

    # ================================================================== halt, flatten, stop

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
        if kill_state == KillState.HALTED:
            core.halt("durable kill state")
        elif kill_state == KillState.FLATTENING:
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
        return self._lease.ok(self.clock.monotonic())

    def _state(self) -> str:
        core = self.core
        return derive_state(
            self._blocks, started=self._started, stopped=self._stopped, stopping=self._stopping,
            ownership_lost=self._lease.lost, kill_state=core.halt_state if core is not None else KillState.RUNNING,
        ).value

    def _latency_ms(self, q: float) -> float | None:
        """A quantile of the recent tick-to-order latencies, as of at most a second ago: the loop
        publishes a snapshot four times a second, and sorting the window each time cost 5 % of a
        simulated run's CPU."""
        now = self.clock.monotonic()
        if now - self._latencies_sorted_at >= 1.0:
            self._sorted_latencies = sorted(self._recent_latencies)
            self._latencies_sorted_at = now
        data = self._sorted_latencies
        if not data:
            return None
        return round(data[min(len(data) - 1, int(q * len(data)))] / 1e6, 4)

    def _offset(self) -> int:
        return self._client.time_offset_ms if self._client is not None else 0

    def _exchange_ms(self) -> int:
        return self.clock.time_ms() + self._offset()

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
        """Sleep ``seconds`` on the injected clock, or less: the stop wakes every such sleep at once."""
        if self._stopping or seconds <= 0:
            return
        sleep = asyncio.ensure_future(self.clock.sleep(seconds))
        self._sleepers.add(sleep)
        try:
            await asyncio.wait((sleep,))  # returns when the sleep ends or the stop cancels it
        finally:
            self._sleepers.discard(sleep)
            sleep.cancel()  # (this task itself was cancelled)

    def _require_client(self) -> BinanceClient:
        if self._client is None:
            raise RuntimeError("the agent has no client yet: call run()")
        return self._client

    def _require_core(self) -> AgentCore:
        if self.core is None:
            raise RuntimeError("the agent has no core yet: it has not started")
        return self.core
