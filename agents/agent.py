"""SymbolAgent: one symbol's live runtime, a facade over its parts; the core decides, the parts do I/O.

The agent holds what every part shares (the injected clock and transport, the REST client, the
trading core, the blocks on quoting, the lease clock, the counters) and its public API; each concern
is one part with its own state, in its own module:

========================  =====================================================================
part                      what it does
========================  =====================================================================
``starter.Starter``        the start and the resync: filters, REST snapshot, older epochs cancelled
``market_feed.MarketFeed`` the market stream: book frames to the core, a quote on a large move
``user_feed.UserFeed``     the user stream and its listenKey's life; its loss and the REST fallback
``sender.OrderSender``     decisions sent and answers applied; look-ups; quote pulls
``timers.Timers``          the quote loop, the dead-man switch, lease renewal, the watchdog
``reconciler.Reconciler``  the reconciliation backstop
``shutdown.Shutdown``      cancel-all confirmed, flatten until flat, the ordered stop
========================  =====================================================================

Every loop reads the same way: await I/O (a frame, an answer, the clock), feed a pure piece (the
core, the watchdog, the reconciliation plan, the lifecycle table), carry out what it returns.
Quoting is allowed only while nothing blocks it: a lost user stream, stale market data, a resync
in progress or a lapsed lease each add a block (``agents/lifecycle.py``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from typing import Any, Callable, Mapping

from fleet.vocabulary import KillState
from fleet.binance.client import BinanceClient
from fleet.binance.endpoints import Endpoint, places_reduce_only
from fleet.binance.enums import ErrorCode
from fleet.binance.errors import BinanceError
from fleet.binance.filters import SymbolFilters
from fleet.binance.ratelimit import RateBudget
from fleet.config import RuntimeParams, SymbolParams
from journal.sink import NULL_SINK, JournalSink

from .carry import Carry, Gap
from .clock import WALL_CLOCK, Clock
from .core import AgentCore
from .strategy import size_problem
from .snapshot import Snapshot, build_exposure, build_status
from .transport import NetworkTransport, Transport
from .logging import AgentLog
from .metrics import AgentMetrics
from .ownership import Grant, Ownership
from .lifecycle import LeaseClock, derive_state
from .agent_base import (  # noqa: F401 - ExchangeEndpoints, Backoff, TICK_READ, Tick: re-exported
    _TRANSIENT,
    BLOCK_ASKING,
    BLOCK_KEY_REFUSED,
    BLOCK_LEASE,
    BLOCK_STARTING,
    COUNTERS,
    FATAL_START_CODES,
    LEASE_MARGIN_S,
    TICK_READ,
    Backoff,
    ExchangeEndpoints,
    FrameCounts,
    LatencyWindow,
    Tick,
)
from .starter import Starter
from .delisting import ContractWatch
from .market_feed import MarketFeed
from .user_feed import UserFeed
from .sender import OrderSender
from .timers import Timers
from .reconciler import Reconciler
from .shutdown import Shutdown
from .tasks import LOOPS, Tasks

LIQUIDATED = "liquidated by the exchange"   # the halt reason a liquidation gives


def grant_moves_core(previous: Grant | None, grant: Grant, core: AgentCore) -> bool:
    """Whether a grant's kill state is applied to the core: one the grant changed; or a halt or flatten
    the grant holds while the core quotes (the previous grant may say the same where a direct resume came
    between: it changes the core, not the grant, and a kill asked after that resume must still stop it;
    only ever towards stopping: stand-in owners that always say running undo nothing); or a halt the
    owner wrote over a flatten done (flat): a halted symbol flattened by a direct command between two
    grants that both said halted read flattening for good."""
    state, now = grant.kill_state, core.halt_state
    return previous is None or previous.kill_state != state or (
        state != KillState.RUNNING and now == KillState.RUNNING) or (
        state == KillState.HALTED and now == KillState.FLATTENING and core.store.position == 0)


class SymbolAgent:
    """One symbol, live, end to end: start, quote, survive faults, stop (docs/architecture.md)."""

    carry_gap: Gap | None = None   # what the exchange booked after carried books, not read yet (agents/carry.py)

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
        self.fleet_name, self.symbol, self.account_name = fleet_name, symbol, ""   # the account's name: the actor's
        self.params, self.runtime, self.endpoints, self.ownership = params, runtime, endpoints, ownership
        self.log = AgentLog(logger or logging.getLogger("mmfleet.agent"), symbol)
        self.metrics = AgentMetrics(symbol)
        self.budget = RateBudget(share=rate_share, clock=clock.monotonic)
        self.metrics.bind_budget(self.budget)  # the rate budget's windows on /metrics
        self.journal: JournalSink = NULL_SINK  # the trade journal (journal.recorder.attach_journal)
        # what the start learns: the REST client, the trading core, the symbol's filters, the lease grant
        self.client: BinanceClient | None = None
        self.core: AgentCore | None = None
        self.filters: SymbolFilters | None = None
        self.grant: Grant | None = None
        # start to stop: what blocks quoting, the lease clock, the loops
        self.blocks: set[str] = {BLOCK_STARTING}
        self.lease = LeaseClock(LEASE_MARGIN_S)
        self.started = self.stopping = self.stopped = False
        self.kill_wanted: str | None = None  # a halt/flatten/resume asked for before the core existed
        self.kill_wanted_seq: int | None = None  # its kill_seq, when it carried one (see starter.held_kill_state)
        self._resumes = 0  # resumes so far, by command or grant (``_note_kill_change``)
        self.reduce_only_wanted: bool | None = None
        self.asked_at = -math.inf   # when the owner was last asked (``ask_owner``), monotonic
        self._done: asyncio.Event | None = None
        # what it shows
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.latency = LatencyWindow()
        self.frames = FrameCounts()
        self.metrics.bind_frames(self.frames.counts)
        self.started_mono = clock.monotonic()
        self.published: Snapshot | None = None  # the latest snapshot the loop published (publish())
        self.carried: Carry | None = None   # the books a previous agent of the symbol left (agents/carry.py)
        self.books_since_ms: int | None = None   # since when they count (exchange ms), once the start took them in
        # the parts
        self.tasks = Tasks(self)
        self.starter = Starter(self)
        self.market = MarketFeed(self)
        self.user = UserFeed(self)
        self.sender = OrderSender(self)
        self.timers = Timers(self)
        self.reconciler = Reconciler(self)
        self.shutdown, self.contract = Shutdown(self), ContractWatch(self)

    # ================================================================== public API

    async def run(self) -> None:
        """The whole life: own, start (retried on transient errors), trade, until :meth:`stop` is done."""
        self._done = asyncio.Event()
        if self.stopping:
            self._done.set()
            return
        send = self.clock.monotonic()
        grant = await self.ownership.acquire()  # OwnershipRefused propagates: never trade unowned
        if self.stopping:  # stopped while waiting for the symbol: give it straight back
            await self.ownership.release()
            self._done.set()
            return
        self.take_grant(grant, send + grant.waited_s)   # counted from the request granted, not the first try
        self.log.epoch = grant.epoch
        self.log.event("ownership_acquired", f"owned {self.symbol} at epoch {grant.epoch}", state=grant.kill_state)
        # Renewed from the grant on, not from the end of the start: a start slowed by a busy machine
        # (50 agents starting on 2 cores) must not let the lease lapse and get the agent fenced as hung.
        self.tasks.spawn(self.timers.renew_loop(), "renew")
        self.client = client = self.transport.client(self.budget)
        client.order_gate = self.order_gate  # asked before any order is signed, resends included
        self.metrics.bind_exchange_clock(lambda: (client.time_offset_ms, client.clock_resyncs))
        await self.client.open()
        if await self._start_until_done():
            self.started = True
            self.blocks.discard(BLOCK_STARTING)
            for name in LOOPS[:-1]:
                self.tasks.spawn(self.tasks.loop(name)(), name)
            self.log.event("quoting_started", f"{self.symbol} started: state {self.publish().status['state']}")
        await self._done.wait()

    async def _start_until_done(self) -> bool:
        """The start, retried with back-off on transient errors; False if stopped meanwhile."""
        backoff = Backoff(self.runtime.reconnect_backoff_initial_sec, self.runtime.reconnect_backoff_max_sec,
                          rng=self.rng)
        while not self.stopping:
            self.counters["start_attempts"] += 1
            try:
                await self.starter.start()
                return not self.stopping
            except Exception as exc:
                if self.stopping:
                    return False  # stop() closed what the start was using
                fatal = isinstance(exc, BinanceError) and exc.code in FATAL_START_CODES
                if fatal or not isinstance(exc, _TRANSIENT):
                    self.log.event("start_fatal", f"start failed: {exc!r}", level=logging.ERROR)
                    await self.stop()
                    raise
                delay = backoff.next()
                self.log.event("start_failed", f"start failed ({exc!r}); retrying in {delay:.1f}s", level=logging.WARNING)
                await self.close_streams()
                await self.tasks.sleep(delay)
        return False

    async def stop(self, flatten: bool = False) -> dict:
        """Stop quoting, cancel all, optionally flatten, disarm, close, release; idempotent."""
        return await self.shutdown.stop(flatten)

    def liquidated(self, what: str, client_order_id: str, order_id: int) -> None:
        """The exchange closed (part of) the position by liquidation (``UserFeed.liquidation``): said
        loudly, and the symbol halted (recorded where the ownership can) until an operator resumes it.
        Quoting on would trade the same margin into the next liquidation."""
        self.log.event(
            "liquidated",
            f"liquidated by the exchange: {what} ({client_order_id}); position "
            f"{self.core.store.position if self.core else '?'}; halted until resumed", level=logging.ERROR,
            client_order_id=client_order_id, order_id=order_id)
        self.halt_by_exchange(LIQUIDATED, "liquidation-halt")

    def halt_by_exchange(self, reason: str, task: str) -> None:
        """A halt the exchange's own act calls for (a liquidation, a settlement, a symbol no longer
        trading): now, confirmed in the background, and made durable as an operator's halt is."""
        mark = self._halted_now(reason)
        # what rests is cancelled and confirmed, as an operator's halt does: orders sent before the
        # exchange's frame may land after its own cancels
        self.tasks.spawn(self._halt_confirmed(self.clock.monotonic(), mark), task)
        self.carry_kill_state(KillState.HALTED, reason)

    def carry_kill_state(self, state: KillState, reason: str) -> None:
        """The fleet's lease: a kill state the agent decided itself is carried with every lease call until
        the controller has written it (``kill_carried``), so it is durable and shown like any kill, and a
        restart keeps it."""
        carry = getattr(self.ownership, "note_direct_kill_state", None)
        if carry is not None:
            carry(None, state, reason, issued_at=self.clock.time_ms() / 1000.0)

    def deleveraged(self, what: str, client_order_id: str, order_id: int) -> None:
        """The exchange auto-deleveraged (part of) the position (ADL: it closes profitable positions
        when a liquidation's loss outruns its insurance fund): the fill is booked as any, said loudly
        and counted (``mm_deleveraged_total``). Not a margin failure of this account: quoting goes on
        with the position that is left."""
        self.log.event(
            "deleveraged",
            f"auto-deleveraged by the exchange: {what} ({client_order_id}); position now "
            f"{self.core.store.position if self.core else '?'}; quoting on", level=logging.WARNING,
            client_order_id=client_order_id, order_id=order_id)

    def margin_short(self, code: int, side: str | None) -> None:
        """The exchange refused an order or an amendment of ``side`` that adds exposure: no margin for
        it (-2019: both sides held), or the leverage's bracket allows that side no more (-2027: that
        side held). The sender holds its quoting lane but for the places that reduce the position
        (``MarginHold``)."""
        one_side = side if code == ErrorCode.MAX_LEVERAGE_RATIO else None
        hold = self.sender.margin_hold.short(self.clock.monotonic(), one_side)
        if hold is not None:
            self.counters["margin_holds"] += 1
            why = (f"the position allowed at this leverage reached on the {one_side} side" if one_side
                   else "margin insufficient")
            self.log.event("margin_short", f"{why} ({code}): quoting held {hold:.0f} s"
                                           f"{' on that side' if one_side else ''} but for orders that reduce "
                                           "the position", level=logging.WARNING)

    def key_refused(self, code: int) -> None:
        """The exchange refused the account's key while trading (``KEY_REFUSALS``: revoked, its IP not
        allowed, no permission for the action): quoting paused (``key_refused``) for a hold that starts
        at 5 s and doubles up to a minute while the refusals go on, then tried again; said once a hold.
        (Every request was refused again, some 8 a second, each a WARNING, the agent saying "quoting";
        its orders stay at the exchange, and the dead-man switch, whose heartbeat is refused too,
        cancels them.)"""
        hold = self.sender.key_hold.short(self.clock.monotonic())
        if hold is None:
            return   # held already: answers to requests sent before it
        self.counters["key_holds"] += 1
        self.blocks.add(BLOCK_KEY_REFUSED)
        self.log.event("key_refused", f"the exchange refuses the account's API key ({code}: invalid key, IP or "
                                      f"permissions for the action): quoting paused {hold:.0f} s, then tried again; "
                                      "the dead-man switch cancels the orders resting if it goes on",
                       level=logging.ERROR)
        self.tasks.spawn(self._lift_key_hold(), "key-hold")

    async def _lift_key_hold(self) -> None:
        while (left := self.sender.key_hold.left(self.clock.monotonic())) > 0:   # (a later hold lasts longer)
            await self.tasks.sleep(left)
        self.blocks.discard(BLOCK_KEY_REFUSED)   # the next quote cycle tries the key again

    async def halt(self, reason: str = "") -> dict:
        """Stop quoting and cancel every open order; report the count the exchange confirms, or
        ``superseded`` when a resume came while it waited (``_note_kill_change``)."""
        t0 = self.clock.monotonic()
        mark = self._halted_now(reason or "operator")
        return await self._halt_confirmed(t0, mark)

    async def flatten(self, reason: str = "") -> dict:
        """Halt, then close the position with reduce-only market orders (they pass the guard). A resume
        that comes meanwhile ends it, answered ``superseded``: carrying on would set the symbol
        flattening over the later command, and close the position it resumed quoting around."""
        t0 = self.clock.monotonic()
        mark = self._halted_now(reason or "flatten")
        out = await self._halt_confirmed(t0, mark)
        if self._resumes != mark or self.contract.closed():
            return out   # superseded; or the exchange closed the symbol meanwhile: it stays halted
        self._want_kill_state(KillState.FLATTENING)
        if self.core is not None:
            self.core.flatten(reason or "operator")
        position = await self.shutdown.flatten_confirmed(deadline_s=self.runtime.stop_timeout_sec / 2,
                                                         until=lambda: self._resumes != mark)
        if self._resumes != mark:
            return self._superseded("flatten")
        out.update({"position": position, "elapsed_ms": int((self.clock.monotonic() - t0) * 1000),
                    "state": self.publish().status["state"]})
        return out

    def _halted_now(self, reason: str) -> int:
        """The halt itself (the wait for the exchange's count follows); the resumes counted so far."""
        self._want_kill_state(KillState.HALTED)
        if self.core is not None:
            self.core.halt(reason)
            self.publish()   # the status says halted now, not after the next cycle
        self.log.event("halted", f"halted: {reason}", level=logging.WARNING)
        return self._resumes

    async def _halt_confirmed(self, t0: float, mark: int) -> dict:
        open_n = await self.shutdown.cancel_all_confirmed(deadline_s=self.runtime.stop_timeout_sec / 2,
                                                          until=lambda: self._resumes != mark)
        if self._resumes != mark:
            return self._superseded("halt")
        self.sender.keep_pulling("halt")  # a request of ours still in flight may land after this count
        return {"open_orders": open_n, "elapsed_ms": int((self.clock.monotonic() - t0) * 1000),
                "state": self.publish().status["state"]}

    def _superseded(self, what: str) -> dict:
        """A halt or flatten a resume ended midway: said, and answered with the position as the books
        have it then (a flatten's close may have filled before the resume came)."""
        self.log.event("kill_command_superseded", f"{what} superseded midway by a resume: not carried on",
                       level=logging.WARNING)
        return {"outcome": "superseded", "open_orders": None,
                "position": self.core.store.position if self.core is not None else None}

    async def resume(self) -> dict:
        self._want_kill_state(KillState.RUNNING)
        if self.core is not None:
            self.core.resume()
        self.log.event("resumed", "resumed quoting")
        return self.publish().status

    async def apply_params(self, params: SymbolParams) -> None:
        """New parameters, live: the core keeps orders, position, kill state and grinding history. A size
        the exchange cannot trade is said (the fleet's commands refuse it before it gets here)."""
        problem = size_problem(params, self.filters) if self.filters is not None else None
        if problem:
            self.log.event("size_below_minimum", problem, level=logging.ERROR)
        self.params = params
        if self.core is not None:
            self.core.apply_params(params)
        self.log.event("params_applied", "parameters applied live")

    def set_reduce_only(self, on: bool) -> None:
        self.reduce_only_wanted = on
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
        return self.lease.lost

    @property
    def latencies_ns(self) -> Any:
        """Every tick-to-order latency kept (ns), for the benchmarks."""
        return self.latency.all

    # ================================================================== ownership and kill state

    def take_grant(self, grant: Grant, send_time: float) -> None:
        """A grant (or renewal) answered a request sent at ``send_time``: the lease, the rate share,
        and a kill state or reduce-only mode the controller changed meanwhile."""
        previous = self.grant
        self.grant = grant
        self.lease.granted(send_time, grant.lease_ttl_s)
        if abs(self.budget.share - grant.rate_share) > 1e-12:
            self.budget.set_share(grant.rate_share)
        if self.core is not None and not self.stopping:   # (the stop renews its lease, nothing more)
            if grant_moves_core(previous, grant, self.core):
                self.apply_kill_state(grant.kill_state, grant.kill_reason)
            if previous is None or previous.reduce_only != grant.reduce_only:
                self.core.set_reduce_only(grant.reduce_only)
        if send_time >= self.asked_at:   # the owner answered (``ask_owner``): a renewal sent before the
            self.blocks.discard(BLOCK_ASKING)   # ask may have read the kill state before the kill's write

    def apply_kill_state(self, kill_state: str, reason: str = "") -> None:
        core = self.core
        if core is None or core.halt_state == kill_state:
            return
        self._note_kill_change(kill_state)
        why = f"durable kill state: {reason}" if reason else "durable kill state"
        if kill_state == KillState.HALTED:
            core.halt(why)
        elif kill_state == KillState.FLATTENING:
            core.flatten(why)
        else:
            core.resume()
        self.log.event("kill_state", f"kill state {kill_state}", level=logging.WARNING)

    def _want_kill_state(self, state: KillState) -> None:
        """An operator's kill state: recorded durably (when the ownership can), and kept for a core not built yet."""
        self._note_kill_change(state)
        self.kill_wanted = state
        record: Callable[[str], None] | None = getattr(self.ownership, "record_kill_state", None)
        if record is not None:
            try:
                record(state)
            except OSError as exc:
                self.log.event("kill_state_unsaved", f"kill state not saved: {exc!r}", level=logging.ERROR)

    def _note_kill_change(self, state: str) -> None:
        """Count a resume (a command, or a grant with a resume stored since): a halt or flatten still
        waiting on the exchange stops when one came after it started. A later halt or flatten (or the
        grant carrying this very kill) does not stop it: both want the book empty."""
        now = self.core.halt_state if self.core is not None else self.kill_wanted
        if state == KillState.RUNNING and now != KillState.RUNNING:
            self._resumes += 1

    def ask_owner(self, why: str) -> None:
        """Orders of ours cancelled by another hand while we quote (a kill's exchange route, the fence,
        the dead-man switch): a renewal sent now (after any under way), and quoting held until a grant
        is taken (``take_grant``; this one or the loop's). A kill's state is durable before its routes
        act, so the answer carries it, and a book the kill emptied is not quoted again before the kill
        reaches this agent by its own route. A renewal that fails lifts nothing; if the owner stays
        silent, the lease's clock stops quoting for good."""
        if BLOCK_ASKING in self.blocks or self.stopping:
            return
        self.blocks.add(BLOCK_ASKING)
        self.asked_at = self.clock.monotonic()
        self.counters["owner_asks"] += 1
        self.log.event("asking_owner", f"{why}: quoting held until the owner answers", level=logging.WARNING)
        self.tasks.spawn(self.timers.renew_once(), "ask-owner")

    def on_ownership_lost(self, why: str) -> None:
        self.lease.lose()
        self.blocks.add(BLOCK_LEASE)
        if self.stopping:   # the owner retiring this agent: the stop goes on, cancelling only its own epoch
            self.log.event("ownership_lost", f"ownership lost during the stop ({why}): only this epoch's orders "
                           "are cancelled from now on", level=logging.WARNING)
        else:
            self.log.event("ownership_lost", f"ownership lost ({why}): quoting stopped; the dead-man switch cancels",
                           level=logging.ERROR)

    # ================================================================== what the parts share

    def lease_ok(self) -> bool:
        return self.lease.ok(self.clock.monotonic())

    def order_gate(self, endpoint: Endpoint, params: Mapping[str, Any]) -> str | None:
        """Why an order about to be signed must not go (None: it may): none under a lapsed lease, and
        once the agent is stopping, the symbol is halted or flattening, or its dead-man countdown has run
        out, or its owner is asked (``ask_owner``), none but reduce-only places. An order decided before a
        halt and sent after it would rest on the book the halt empties; one decided before a kill's exchange
        route emptied the book and sent after the agent saw it, likewise; one sent after the countdown ran
        out, with no switch armed; one resent in a stop (a -1021's) after the stop saw nothing left that
        could land."""
        if not self.lease_ok():
            return "the lease has lapsed"
        if places_reduce_only(endpoint, params):
            return None
        if self.stopping:
            return "the agent is stopping: reduce-only places only"
        if (left := self.timers.countdown_left()) is not None and left <= 0:   # (before the watchdog's block)
            return "the dead-man countdown has run out, no heartbeat taken: reduce-only places only"
        if BLOCK_ASKING in self.blocks:   # decided before our orders were seen cancelled by another hand
            return "orders of ours were cancelled by another hand, the owner asked: reduce-only places only"
        core = self.core
        if core is None or core.halt_state == KillState.RUNNING:
            return None
        return f"{self.symbol} is {core.halt_state}: reduce-only places only"

    def quoting_live(self) -> bool:
        core = self.core
        return core is not None and not self.blocks and core.halt_state == KillState.RUNNING and self.lease_ok()

    def state(self) -> str:
        core = self.core
        return derive_state(
            self.blocks, started=self.started, stopped=self.stopped, stopping=self.stopping,
            ownership_lost=self.lease.lost, kill_state=core.halt_state if core is not None else KillState.RUNNING,
        ).value

    def offset_ms(self) -> int:
        return self.client.time_offset_ms if self.client is not None else 0

    def exchange_ms(self) -> int:
        return self.clock.time_ms() + self.offset_ms()

    def require_client(self) -> BinanceClient:
        if self.client is None:
            raise RuntimeError("the agent has no client yet: call run()")
        return self.client

    def require_core(self) -> AgentCore:
        if self.core is None:
            raise RuntimeError("the agent has no core yet: it has not started")
        return self.core

    async def close_streams(self) -> None:
        # Only our sockets: the listenKey is the account's, shared with the other agents on it. Together: a
        # silent exchange's close waits its timeout once.
        await asyncio.gather(self.market.close(), self.user.close())

    def done(self) -> None:
        if self._done is not None:
            self._done.set()
