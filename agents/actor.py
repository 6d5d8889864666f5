"""The thin Ray actor around one SymbolAgent: ``agent.<SYMBOL>``, named and detached.

Its constructor does no I/O and cannot fail (a constructor that raises during a restart kills the
actor for good): it only starts the agent's life on the default group's event loop, which fetches
the symbol's spec from the controller, reads the keys inside this process, and runs the agent,
starting over after any failure. Control calls run in their own concurrency group ("control"), with
their own thread and loop, so they answer while the trading loop is busy; kill commands (halt,
flatten, resume) have a group of their own ("kill"), so a burst of status or metrics calls never
queues them; calls that must act on the agent hop onto the trading loop with ``run_coroutine_threadsafe``.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any, Callable

import ray

from fleet.text import named_line
from fleet.vocabulary import KillState

log = logging.getLogger("mmfleet.actor")

CONTROL = "control"
KILL = "kill"

# Where an agent's start-up time goes, shown in status()["phases"] (wall clock, seconds since the
# epoch) and status()["phase_cpu"] (this process's CPU seconds by then): the process spawned by Ray,
# the actor constructed (Ray's worker start), the agent's modules imported, the spec fetched from the
# controller, the agent built, the lease granted, the start done (streams, snapshot, older epochs
# cancelled, dead-man armed), the first orders of its ladder sent (the last three sampled every 50 ms).
PHASES = ("process", "actor_init", "imported", "spec", "built", "owned", "started", "quoting")


def _process_started_at() -> float | None:
    """This process's start time (Linux /proc), or None elsewhere."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime"))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _holds_lease(agent: Any) -> bool:
    """The agent's lease is valid now by its own clock, and was never refused."""
    left = agent.lease.left(agent.clock.monotonic())
    return left is not None and left > 0 and not agent.ownership_lost


def _published(agent: Any, part: str) -> dict[str, Any]:
    """The agent's latest published snapshot (built whole on its loop, then only replaced): a copy of
    its status or exposure, read from the control thread without racing the trading loop. Before the
    first snapshot (the agent still starting), a careful live read."""
    snap = agent.published
    if snap is None:
        return _read_consistently(getattr(agent, part))
    return copy.deepcopy(getattr(snap, part))


def _seq(kill_seq: int | None) -> int | None:
    """A kill command's number as it travels (None: sent while its kill state was not durable)."""
    return None if kill_seq is None else int(kill_seq)


def _read_consistently(read: Callable[[], Any]) -> Any:
    """Read the agent's state from the control thread; retry if the loop mutated it mid-read."""
    for _ in range(5):
        try:
            return read()
        except RuntimeError:  # "dictionary changed size during iteration"
            time.sleep(0.001)
    return read()


# A start the exchange refused for a reason no retry changes (agents/agent_base.py FATAL_START_CODES: a
# wrong key or signature, a symbol it does not list) is tried again this seldom, not every 10 s: the desk
# fixes the key or the config. A symbol listed but not trading (-4108) is tried twice a minute: one
# about to list (PENDING_TRADING) quotes within 30 s of its opening, a closed one costs 2 weight a try;
# so is a position held in Hedge Mode (-4061), until the desk has switched the account to one-way mode.
FATAL_RETRY_S = 300.0
NOT_TRADING_RETRY_S = 30.0
# New parameters' answer waits this long for the worst case to come within a lowered cap (its orders
# cancelled at the exchange), then says what is still over it (``agents.snapshot.above_cap``).
CAP_CONFIRM_S = 10.0


def _retry_after(exc: BaseException) -> float | None:
    """How long to wait before the next start after ``exc``; None: the usual back-off."""
    from agents.agent_base import FATAL_START_CODES
    from fleet.binance.enums import ErrorCode
    from fleet.binance.errors import BinanceError

    if not isinstance(exc, BinanceError) or exc.code not in FATAL_START_CODES:
        return None
    soon = (ErrorCode.SYMBOL_NOT_TRADING, ErrorCode.POSITION_SIDE_NOT_MATCH)   # (the desk switches the account)
    return NOT_TRADING_RETRY_S if exc.code in soon else FATAL_RETRY_S


@ray.remote(concurrency_groups={CONTROL: 8, KILL: 2})
class AgentActor:
    """One symbol's agent as a Ray actor. Methods are JSON in/out and idempotent."""

    def __init__(self, fleet_name: str, namespace: str, symbol: str) -> None:
        self.fleet_name = fleet_name
        self.namespace = namespace
        self.symbol = symbol
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.started_at = time.time()
        self.phases: dict[str, float] = {"actor_init": self.started_at}
        self.phase_cpu: dict[str, float] = {"process": 0.0, "actor_init": time.process_time()}
        if (spawned := _process_started_at()) is not None:
            self.phases["process"] = spawned
        self.agent: Any = None
        self.ownership: Any = None
        self.stopping = False
        self.stop_summary: dict[str, Any] | None = None
        self.incarnations = 0
        # parameters the controller pushed (apply): counted, the newest kept; an agent built from a spec
        # read before a push gets it once it is in place (a push that found no agent was otherwise lost)
        self.pushes, self.last_pushed, self.push_lock = 0, None, threading.Lock()
        self.build_pushes = 0
        self.last_error: str | None = None
        self.secret_filter: Any = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.life: asyncio.Task | None = None
        self.publisher: asyncio.Task | None = None
        self.publish_s = 5.0  # api.metrics_publish_s, from the spec
        self.cpu_class = "normal"  # agent.cpu_class, from the spec, with the controller's node for "auto"
        self.controller_node: str | None = None
        self.scheduled: str | None = None   # the CPU class this process trades in (fleet/sched.py), once started
        try:
            self.loop = asyncio.get_running_loop()
            self.life = self.loop.create_task(self._live())
        except Exception as exc:  # noqa: BLE001 - never fail construction; ensure_started retries
            self.last_error = named_line(exc)

    # --- the agent's life (default group: the trading loop) -----------------------------------

    async def ensure_started(self) -> bool:
        if self.life is None:
            self.loop = asyncio.get_running_loop()
            self.life = self.loop.create_task(self._live())
        return True

    async def _live(self) -> None:
        if self.publisher is None:
            self.publisher = asyncio.ensure_future(self._publish_forever())
        backoff = 0.5
        while not self.stopping:
            began = time.monotonic()
            wait: float | None = None
            try:
                agent = await self._build()
                if self.stopping:
                    break
                with self.push_lock:
                    self.agent = agent
                    missed = self.last_pushed if self.pushes != self.build_pushes else None
                if missed is not None:
                    await agent.apply_params(missed)
                self.incarnations += 1
                await self._run_until_owned_or_stopped(agent)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - retried forever: the actor must stay up
                self.last_error = named_line(exc)
                wait = _retry_after(exc)   # a wrong key, a symbol not listed, or not trading
                if wait is not None:
                    self.last_error += f" (tried again every {wait:.0f} s)"
                log.error("%s: agent failed: %s", self.symbol, self.last_error)
            finally:
                if self.ownership is not None and not self.stopping:
                    await self.ownership.release()
            if self.stopping:
                break
            if time.monotonic() - began > 30:
                backoff = 0.5
            await asyncio.sleep(backoff if wait is None else wait)
            backoff = min(backoff * 2, 10.0)

    async def _run_until_owned_or_stopped(self, agent: Any) -> None:
        """Run the agent; if the controller refuses its lease (revoked, superseded), stop it (fenced:
        it cancels only its own orders) so the next incarnation acquires a new epoch."""
        run = asyncio.ensure_future(agent.run())
        frozen = False
        try:
            while not run.done():
                await asyncio.wait({run}, timeout=0.25 if "quoting" in self.phases else 0.05)
                self._note_phases(agent)
                if not frozen and agent.started:
                    # What exists once the agent has started (modules, config, client, core) lives as
                    # long as this incarnation: out of the collector's reach, a full collection scans
                    # only what trading makes. bench/agent_bench.py: tick-to-order p99.9 41 ms -> 2.8 ms
                    # (a 39 ms full collection every ~40 s, gone).
                    gc.collect()
                    gc.freeze()
                    frozen = True
                    self._enter_cpu_class()
                if not self.stopping and agent.ownership_lost:
                    log.warning("%s: lease lost; stopping this incarnation and acquiring again", self.symbol)
                    await agent.stop()
                    await asyncio.wait({run}, timeout=5.0)
                    break
            if run.done() and not run.cancelled() and run.exception() is not None:
                raise run.exception()
            if not self.stopping:
                log.warning("%s: the agent's run ended without a stop; starting over", self.symbol)
        finally:
            if not run.done():
                run.cancel()
            if frozen:
                gc.unfreeze()  # this incarnation's objects may be garbage now: collectable again

    def _enter_cpu_class(self) -> None:
        """Once started, trade in the class ``agent.cpu_class`` says (``fleet/sched.py``): in the
        background, a process sharing its node with the kill path (the endpoint, the controller, a
        hosted simulator) takes a core before this one the moment it wakes. The first start ran as an
        ordinary worker, ahead of the agents already trading. Checked at every start of the agent;
        leaving the background class takes a new process (the kernel lets only a privileged one out)."""
        if self.scheduled is not None and self.scheduled.startswith("SCHED_IDLE"):
            return
        try:
            from fleet.sched import run_in_background, wanted_class

            wanted = wanted_class(self.cpu_class, ray.get_runtime_context().get_node_id(), self.controller_node)
            if wanted != "background":
                self.scheduled = f"normal (niceness {os.getpriority(os.PRIO_PROCESS, 0)})"
                return   # as asked: nothing to warn of
            self.scheduled = run_in_background()
        except Exception as exc:  # noqa: BLE001 - a class not entered must not end the agent's run
            self.scheduled = f"unchanged ({named_line(exc)})"
        if not self.scheduled.startswith("SCHED_IDLE (") or "refused" in self.scheduled:
            log.warning("%s: not (wholly) in the background CPU class: %s", self.symbol, self.scheduled)

    async def _publish_forever(self) -> None:
        """The agent's exposition rendered on this (the trading) loop and published for /metrics
        (``agents/publish.py``) every ``publish_s``, and at once when the agent has started; with it its
        last status and exposure, for the pages to show when the agent does not answer in time. A
        frozen loop publishes nothing, so the endpoint soon shows the agent down."""
        from agents.carry import carry_of, publish_carry
        from agents.publish import PublishedExposition, PublishedSnapshot, publish

        last, last_started, failures = 0.0, False, 0
        while not self.stopping:
            await asyncio.sleep(0.25)
            agent = self.agent
            if agent is None:
                continue
            started = bool(agent.started)
            if time.monotonic() - last < self.publish_s and started == last_started:
                continue
            last, last_started = time.monotonic(), started
            try:
                text = agent.metrics_text()
                now = time.time()
                record = PublishedExposition(self.symbol, self.holder, now,
                                             text.decode() if isinstance(text, bytes | bytearray) else str(text))
                snap = agent.published   # built whole on this loop, never changed after: safe in the thread
                snapshot = None if snap is None else PublishedSnapshot(
                    self.symbol, self.holder, now - (agent.clock.monotonic() - snap.at),  # when it was built
                    self._status_of(snap.status), snap.exposure)
                carry = carry_of(agent)
                await asyncio.to_thread(publish, self.fleet_name, record, snapshot)
                if carry is not None and _holds_lease(agent):   # checked after the wait: a zombie waking up
                    await asyncio.to_thread(publish_carry, self.fleet_name, carry)   # must not overwrite its successor's
                failures = 0
            except Exception as exc:  # noqa: BLE001 - the next beat tries again; the age shows it
                failures += 1
                if failures in (1, 10) or failures % 100 == 0:
                    log.warning("%s: exposition and status not published (%d in a row): %s", self.symbol,
                                failures, named_line(exc))

    def _note(self, phase: str) -> None:
        if phase not in self.phases:
            self.phases[phase] = time.time()
            self.phase_cpu[phase] = time.process_time()

    def _note_phases(self, agent: Any) -> None:
        """This process's first agent's start-up phases, sampled on the trading loop."""
        if "quoting" in self.phases:
            return
        if agent.grant is not None:
            self._note("owned")
        if agent.started:
            self._note("started")
            status = agent.status()  # on the trading loop: read live
            if status.get("state") == "quoting" and status.get("open_orders"):
                self._note("quoting")

    async def _spec(self) -> dict[str, Any]:
        """The symbol's current spec from the controller (fresh params after a restart)."""
        while True:
            try:
                controller = ray.get_actor("controller", namespace=self.namespace)
                return await asyncio.wait_for(controller.agent_spec.remote(self.symbol), 10.0)
            except Exception as exc:  # noqa: BLE001 - the controller may be restarting
                self.last_error = f"waiting for the controller: {named_line(exc)}"
                await asyncio.sleep(1.0)

    async def _carried(self) -> Any:
        """The books the symbol's last agent left (``agents/carry.py``): this process's last incarnation's
        as they stand now, else the last record published (another process's, before a restart)."""
        from agents.carry import carry_of, read_carry

        last = self.agent
        if last is not None and (mine := carry_of(last) or last.carried) is not None:
            return mine   # its books, or those it was handed and never took in (its start failed)
        try:
            return await asyncio.to_thread(read_carry, self.fleet_name, self.symbol)
        except Exception as exc:  # noqa: BLE001 - the books then start at 0, and the log says why
            log.warning("%s: the last agent's books not read, they start at 0: %s", self.symbol, named_line(exc))
            return None

    async def _build(self) -> Any:
        from agents.agent import ExchangeEndpoints, SymbolAgent
        from agents.logging import configure_logging, redact_in_process_logs
        from agents.lease_client import LeaseOwnership
        from fleet.binance.credentials import load_credentials
        from fleet.config import AccountConfig, RuntimeParams, SymbolParams

        self._note("imported")
        self.build_pushes = self.pushes   # the spec read next holds these pushes' parameters, or newer
        spec = await self._spec()
        self._note("spec")
        self.publish_s = float(spec.get("metrics_publish_s", self.publish_s))
        self.cpu_class = str(spec.get("cpu_class", self.cpu_class))
        self.controller_node = spec.get("controller_node")
        account = AccountConfig.model_validate(spec["account"])
        credentials = load_credentials(account)  # inside this process: env vars or key file
        if self.secret_filter is None:
            _, self.secret_filter = configure_logging(level=logging.INFO, logger_names=("mmfleet",))
            # the client's and the libraries' own warnings through a redacting handler too (they reached
            # the worker's stderr by Python's last resort, unredacted)
            configure_logging(level=logging.WARNING, logger_names=("fleet", "websockets", "aiohttp", "asyncio"))
        redact_in_process_logs(credentials.api_key, credentials.api_secret)
        controller = ray.get_actor("controller", namespace=self.namespace)
        before = self.ownership
        self.ownership = LeaseOwnership(controller, self.symbol, self.holder,
                                        renew_interval_s=float(spec.get("renew_interval_s", 1.0)))
        if before is not None:   # what the last incarnation knew of kill commands (a kill it carries unwritten too)
            self.ownership.inherit(before)
        agent = SymbolAgent(
            fleet_name=self.fleet_name,
            symbol=self.symbol,
            params=SymbolParams.model_validate(spec["params"]),
            runtime=RuntimeParams.model_validate(spec["runtime"]),
            endpoints=ExchangeEndpoints(**spec["endpoints"]),
            credentials=credentials,
            ownership=self.ownership,
            logger=logging.getLogger(f"mmfleet.agent.{self.symbol}"),
            rate_share=float(spec.get("rate_share", 1.0)),
        )
        agent.account_name = account.name
        agent.carried = await self._carried()
        if (spec.get("journal") or {}).get("enabled"):
            # the trade journal, when the spec has one: imported only then (SQLAlchemy costs every
            # agent process some 0.1 CPU-s, 5 of 2 cores' seconds when 50 agents start at once)
            from journal.recorder import attach_from_spec

            attach_from_spec(agent, spec, self.fleet_name)
        self._note("built")
        return agent

    # --- hopping onto the trading loop ---------------------------------------------------------

    async def _on_loop(self, make: Callable[[], Any], timeout: float = 60.0) -> Any:
        if self.loop is None:
            raise RuntimeError("the trading loop is not running")
        fut = asyncio.run_coroutine_threadsafe(make(), self.loop)
        return await asyncio.wait_for(asyncio.wrap_future(fut), timeout)

    def _base(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "holder": self.holder,
            "pid": os.getpid(),
            "node": socket.gethostname(),
            "incarnations": self.incarnations,
            "actor_started_at": self.started_at,
            "phases": {k: round(self.phases[k], 3) for k in PHASES if k in self.phases},
            "phase_cpu": {k: round(self.phase_cpu[k], 3) for k in PHASES if k in self.phase_cpu},
            "last_error": self.last_error,
            "cpu_class": self.scheduled or f"{self.cpu_class} (not started)",
        }

    def _note_direct(self, kill_seq: int | None, state: KillState, reason: str = "",
                     issued_at: float | None = None) -> None:
        """Tell the lease client a kill command arrived directly, so a stale renewal cannot undo it."""
        own = self.ownership
        if own is not None and self.loop is not None:
            self.loop.call_soon_threadsafe(own.note_direct_kill_state, _seq(kill_seq), state, reason, issued_at)

    async def _current(self, kill_seq: int | None, state: KillState, command: Callable[[], Any],
                       reason: str = "", issued_at: float | None = None) -> Any:
        """On the trading loop: ``command`` runs unless a newer kill command already reached the agent
        (directly or with a grant): a resume delivered after a later kill must not undo it. Answered
        superseded with the position the books hold, as a command a resume ends midway is."""
        own = self.ownership
        if own is not None and not own.note_direct_kill_state(_seq(kill_seq), state, reason, issued_at):
            agent = self.agent
            if agent is not None:
                agent.log.event("kill_command_superseded", f"{state} of kill_seq {kill_seq} superseded: not run",
                                level=logging.WARNING)
            core = agent.core if agent is not None else None
            return {"outcome": "superseded", "open_orders": None,
                    "position": core.store.position if core is not None else None}
        agent = self.agent
        if agent is not None:   # a core not built yet starts in this state unless its grant is newer
            agent.kill_wanted_seq = None if kill_seq is None else int(kill_seq)
        return await command()

    # --- control calls (own thread and loop) ----------------------------------------------------

    @ray.method(concurrency_group=CONTROL)
    async def status(self) -> dict[str, Any]:
        out = self._base()
        if self.agent is None:
            out["state"] = "stopped" if self.stopping else "starting"
            return out
        out = self._status_of(_published(self.agent, "status"))
        snap = self.agent.published
        if snap is not None:  # when its trading loop last published (wall clock): the fence's sign of life
            out["loop_published_at"] = time.time() - (self.agent.clock.monotonic() - snap.at)
        return out

    def _status_of(self, agent_status: dict[str, Any]) -> dict[str, Any]:
        """The actor's status around the agent's own: who and where, its phases; stopping for good."""
        out = {**self._base(), **agent_status}
        if self.stopping:
            out["state"] = "stopped" if self.stop_summary is not None else "stopping"
        return out

    @ray.method(concurrency_group=CONTROL)
    async def exposure(self) -> dict[str, Any]:
        if self.agent is None:   # no figures: the views show what it last published
            return {"symbol": self.symbol, "state": "starting", "starting": True}
        return _published(self.agent, "exposure")

    @ray.method(concurrency_group=CONTROL)
    async def metrics(self) -> str:
        if self.agent is None:
            return ""
        text = _read_consistently(self.agent.metrics_text)
        return text.decode() if isinstance(text, bytes | bytearray) else str(text)

    @ray.method(concurrency_group=KILL)
    async def halt(self, reason: str = "", kill_seq: int | None = None,
                   issued_at: float | None = None) -> dict[str, Any]:
        """``issued_at``: when the kill was asked for (wall clock; its kill state's ``since``)."""
        return await self._stop_command(kill_seq, KillState.HALTED, lambda agent: agent.halt(reason), reason, issued_at)

    @ray.method(concurrency_group=KILL)
    async def flatten(self, reason: str = "", kill_seq: int | None = None,
                      issued_at: float | None = None) -> dict[str, Any]:
        return await self._stop_command(kill_seq, KillState.FLATTENING, lambda agent: agent.flatten(reason), reason,
                                        issued_at)

    async def _stop_command(self, kill_seq: int | None, state: KillState, command: Callable[[Any], Any],
                            reason: str, issued_at: float | None) -> dict[str, Any]:
        """A halt or flatten, on the trading loop unless superseded (see ``_current``)."""
        agent = self.agent
        if agent is None:
            self._note_direct(kill_seq, state, reason, issued_at)
            return {"outcome": "not_started", "open_orders": None}
        run = lambda: self._current(kill_seq, state, lambda: command(agent), reason, issued_at)  # noqa: E731
        if getattr(agent, "core", None) is not None:
            return await self._on_loop(run)
        # Not trading yet: the agent holds the command for its start (and the durable kill state
        # comes with its grant); the controller confirms the book at the exchange itself.
        done = await self._on_loop(run, timeout=5.0)
        return done if done.get("outcome") == "superseded" else {"outcome": "not_started", "open_orders": None}

    @ray.method(concurrency_group=KILL)
    async def resume(self, kill_seq: int | None = None, issued_at: float | None = None) -> dict[str, Any]:
        if self.agent is None:
            self._note_direct(kill_seq, KillState.RUNNING, issued_at=issued_at)
            return {"outcome": "not_started"}
        agent = self.agent
        return await self._on_loop(lambda: self._current(kill_seq, KillState.RUNNING, agent.resume,
                                                         issued_at=issued_at))

    @ray.method(concurrency_group=CONTROL)
    async def apply_params(self, params: dict[str, Any]) -> dict[str, Any]:
        from agents.snapshot import above_cap
        from fleet.config import SymbolParams

        parsed = SymbolParams.model_validate(params)
        with self.push_lock:
            self.pushes += 1
            self.last_pushed = parsed
            agent = self.agent
        if agent is None:
            return {"applied": False, "reason": "agent starting: applied once it is built"}
        await self._on_loop(lambda: agent.apply_params(parsed))
        above = await self._on_loop(lambda: above_cap(agent, CAP_CONFIRM_S), timeout=CAP_CONFIRM_S + 10.0)
        return {"applied": True, **({"above_cap": above} if above else {})}

    @ray.method(concurrency_group=CONTROL)
    async def set_reduce_only(self, on: bool) -> bool:
        agent = self.agent
        if agent is not None and self.loop is not None:
            self.loop.call_soon_threadsafe(agent.set_reduce_only, bool(on))
        return bool(on)

    @ray.method(concurrency_group=CONTROL)
    async def set_rate_share(self, share: float) -> float:
        agent = self.agent
        if agent is not None and self.loop is not None:
            self.loop.call_soon_threadsafe(agent.set_rate_share, float(share))
        return float(share)

    @ray.method(concurrency_group=CONTROL)
    async def stop(self, flatten: bool = False) -> dict[str, Any]:
        """Stop for good (the controller removes the actor next); idempotent."""
        if self.stop_summary is not None:
            return self.stop_summary
        self.stopping = True
        agent = self.agent
        summary: dict[str, Any] = {"symbol": self.symbol, "state": "stopped", "open_orders": None}
        if agent is not None:
            summary = await self._on_loop(lambda: agent.stop(flatten=flatten), timeout=120.0)
        if self.ownership is not None:
            own = self.ownership
            await self._on_loop(lambda: own.release(), timeout=10.0)
        self.stop_summary = summary
        return summary

    @ray.method(concurrency_group=CONTROL)
    async def loop_answers(self, within_s: float = 3.0) -> bool:
        """The trading loop runs a no-op within ``within_s`` (one blocked does not, nor a stopped
        process): the controller's sign of a hung agent (``status`` answers from this thread's own
        loop, the published snapshot)."""
        if self.loop is not None:
            await self._on_loop(lambda: asyncio.sleep(0), timeout=within_s)
        return True

    @ray.method(concurrency_group=CONTROL)
    async def freeze_loop(self, seconds: float) -> bool:
        """Fault drill: block the trading loop for ``seconds`` (a hung agent), control calls still answer."""
        if self.loop is None:
            return False
        self.loop.call_soon_threadsafe(time.sleep, float(seconds))
        return True
