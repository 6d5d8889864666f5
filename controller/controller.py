"""FleetController: the fleet's desired state turned into one named detached agent actor per symbol.

It keeps every symbol's epoch, lease and kill state in Ray's GCS key-value store (see
``controller/lease.py``), so a controller restart loses nothing; reconciles (recreates agents that
died for good, splits each account's order-rate limits among its agents); puts the whole fleet into
reduce-only while its total absolute notional is over the cap. Its kill switches
(``controller/kill_switches.py``, in their own concurrency group ``kill``): a halt asked over Ray
races the agent and the exchange itself (cancel all, keys read in ITS process) per symbol; an HTTP
halt is the endpoint's, which tells it afterwards. A lease that lapses unrenewed is fenced: that
epoch's orders cancelled, a hung actor replaced.

Its rooms: the applied spec (``controller/spec.py``, pure), the agents' handles
(``controller/handles.py``), the lease book (``controller/lease.py``), the exchange path
(``controller/emergency.py``), the kill's two routes (``controller/kill_path.py``), the fence
(``controller/fence.py``). Results inside are frozen dataclasses; dicts only at the Ray edge.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import ray

from agents.publish import forget_published
from controller.emergency import EmergencyDesk
from controller.fence import Fence, Fenced
from controller.handles import (AGENT_PREFIX, HEAD_NODE_RESOURCE, AgentHandles, above_agents_env, agent_name,
                                find_spawner, get_or_create_spawner, named_actor)
from controller.kill_path import ms_since
from controller.kill_switches import KILL_GROUP, KillSwitches, _num, journal_cursor, journal_record, journal_trades
from controller.lease import NO_LEASE_SHOWN, GcsStore, LeaseAnswer, LeaseBook, WriteThroughStore
from controller.owed import (OwedWork, PendingApply, down_accounts, empty_also, empty_books, hold_added, key_refused,
                            plan_apply, refuse_flattening)
from controller.spec import LAST_DOWN_DOC, SPEC_DOC, agent_basis, build_spec, endpoints_of, parse_spec, rate_shares
from fleet.config import FleetConfig, SymbolParams
from fleet.text import named_line
from fleet.vocabulary import KillState

log = logging.getLogger("mmfleet.controller")

CONTROLLER_NAME = "controller"
FLAGS_DOC = "fleet_flags"

# Imported from here by the commands, the bench and the tests.
__all__ = ["AGENT_PREFIX", "CONTROLLER_NAME", "ControllerSettings", "FleetController", "agent_name", "build_spec",
           "endpoints_of", "find_controller", "get_or_create_controller", "parse_spec", "rate_shares",
           "remove_controller"]


@dataclass(frozen=True)
class ControllerSettings:
    """Timings of ownership and control; plain values so they travel as actor arguments."""

    lease_ttl_s: float = 3.0          # a lease lasts this long from the renew request
    renew_interval_s: float = 1.0     # agents renew this often
    reconcile_interval_s: float = 2.0
    kill_timeout_s: float = 3.0       # an agent that has not confirmed a halt by then: emergency path
    flatten_timeout_s: float = 15.0   # ... a flatten
    agent_call_timeout_s: float = 2.0  # status / exposure / params pushes
    stop_timeout_s: float = 25.0      # graceful stop of one agent on down/remove
    fence_hung_agents: bool = True    # a lease lapsed unrenewed: cancel its epoch, replace a hung actor



@dataclass(frozen=True)
class FleetRisk:
    """The fleet's gross notional against its cap; each symbol's notional counted, and the symbols whose
    agent gave no figure of its own (counted at their last known notional)."""

    gross_notional: float
    over: bool
    notional: dict[str, float]
    unknown: tuple[str, ...] = ()


def _known_notional(answer: Any) -> float | None:
    """An agent's gross notional, or None where its answer gives none: no answer (timed out, failed), a
    start not done (no core, no snapshot of the exchange yet), a position without a price yet."""
    if not isinstance(answer, dict) or answer.get("starting") or "notional" not in answer:
        return None
    if _num(answer.get("position")) != 0 and not (_num(answer.get("mark")) or _num(answer.get("mid"))):
        return None
    return abs(_num(answer.get("notional")))


def symbols_of(pairs: set[tuple[str, Any]]) -> list[str]:
    return sorted({symbol for symbol, _ in pairs})


def fleet_risk(symbols: list[str], exposures: list[Any], max_total_notional: float,
               last_known: dict[str, float], listed: dict[str, float] | None = None) -> FleetRisk:
    """Each agent's answer, or where it gave none what the exchange ``listed`` for the symbol, else its
    last known notional: its position stays at the exchange meanwhile (read as 0, an agent restarting
    took a fleet over its cap back "under" it, and reduce-only went off for every agent)."""
    notional: dict[str, float] = {}
    unknown: list[str] = []
    for symbol, answer in zip(symbols, exposures):
        n = _known_notional(answer)
        if n is None and listed and symbol in listed:
            n = listed[symbol]
        elif n is None:
            unknown.append(symbol)
            n = last_known.get(symbol, 0.0)
        notional[symbol] = n
    gross = sum(notional.values())
    return FleetRisk(gross, gross > max_total_notional, notional, tuple(unknown))


def reduce_only_change(risk: FleetRisk, on: bool, cap: float, said: tuple[str, ...]) -> tuple[bool | None, str | None]:
    """The fleet's reduce-only flag to set (None: as it is) and what to say. Over the cap it goes on; it
    goes off only once every agent, or the exchange, has given a figure (not a last known one). ``said``:
    the symbols without one that the last pass saw (said once)."""
    gross = risk.gross_notional
    if not risk.over and on and risk.unknown:
        return None, None if risk.unknown == said else (
            f"fleet gross notional {gross:.2f} under cap {cap:.2f}, but reduce-only stays on until "
            f"{', '.join(risk.unknown)} give figures of their own (counted at their last known)")
    if risk.over != on:
        return risk.over, (f"fleet gross notional {gross:.2f} {'over' if risk.over else 'back under'} cap "
                           f"{cap:.2f}: reduce-only {'on' if risk.over else 'off'}")
    return None, None


async def listed_notionals(desk: EmergencyDesk, accounts: dict[str, str | None]) -> dict[str, float]:
    """What the exchange lists for these symbols (``EmergencyDesk.notional``), those it answered for."""
    named = [(s, a) for s, a in accounts.items() if a]
    answers = await asyncio.gather(*(desk.notional(s, a) for s, a in named), return_exceptions=True)
    return {s: n for (s, _), n in zip(named, answers) if isinstance(n, float)}


def reduce_only_behind(symbols: list[str], exposures: list[Any], flag: bool) -> list[str]:
    """The agents to tell the fleet's reduce-only flag: those whose exposure does not show it (a
    restarted agent learns it at once, not at its next renew), not all of them every pass."""
    return [s for s, a in zip(symbols, exposures) if not isinstance(a, dict) or a.get("reduce_only", flag) != flag]


async def close_left(ctl: Any, symbol: str, account: str, summary: Any) -> float:
    """A flatten's position read at the exchange once its agent is gone (an order of the agent's may
    have landed after its stop read it), and closed by the controller if it is still open; its fills
    written to the journal (no agent of the symbol is left to read them from the exchange)."""
    before, after = await ctl.desk.close_position(symbol, account)
    named = account.split("#")[0]   # the journal's word for it (a retire's own key: owed.retire_account)
    if before:
        said = summary.get("exchange_position") if isinstance(summary, dict) else "nothing"
        log.warning("%s: the flatten left a position of %s (the agent's stop said %s): closed by the "
                    "controller, %s left", symbol, before, said, after)
        journal_record(ctl, "position_closed", symbol=symbol, account=named, reason="down --flatten",
                       detail={"before": before, "after": after, "agent_said": said})
        try:   # after the journal's newest fill of the symbol (a hung agent's last fills too), else a day's
            if not ctl.cfg.journal.enabled:
                return after
            newest = await asyncio.to_thread(journal_cursor, ctl, symbol, named)
            since = int((time.time() - ctl.cfg.journal.backfill_lookback_hours * 3600) * 1000)
            journal_trades(ctl, symbol, named, await ctl.desk.trades_since(symbol, account, since, newest))
        except Exception as exc:  # noqa: BLE001 - the close is done; the journal lacks its fills, said
            log.error("%s: the controller's closing fills not read for the journal: %s", symbol, named_line(exc))
    return after


async def forget_exposition(fleet_name: str, symbol: str) -> None:
    """A retired symbol's published exposition removed (off /metrics at once)."""
    try:
        await asyncio.to_thread(forget_published, fleet_name, symbol)
    except Exception as exc:  # noqa: BLE001 - it would age out past api.metrics_stale_s anyway
        log.warning("%s: published exposition not removed: %s", symbol, named_line(exc))


@dataclass(frozen=True)
class RetireOutcome:
    """One agent stopped for good: whether it answered, what the exchange lists after, its summary."""

    stopped: bool
    open_orders: int | None
    summary: dict[str, Any] | None
    error: str | None
    elapsed_ms: float
    position: float | None = None   # a flatten's: what the exchange lists after it (None: not read)
    key_refused: bool = False       # the exchange check refused the account's key (or its source is gone)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# A flatten's agent that does not answer its status this long is hung (stopped, its loop blocked): the
# controller empties its book and closes its position instead of waiting out its stop (25 s).
HUNG_AFTER_S = 3.0


async def stop_agent(desk: EmergencyDesk, symbol: str, handle: Any, flatten: bool, account: str | None,
                     timeout_s: float) -> tuple[Any, str | None, Any]:
    """The agent's stop, waited for up to ``timeout_s``: its summary, the error if it failed, and
    (with ``account``: a flatten's, the agent's own work, so no cancel at the exchange beside it) the
    cancel begun there for an agent whose trading loop does not run a no-op within ``HUNG_AFTER_S``
    (``loop_answers``; its status answers from the snapshot it published). That one is hung (stopped,
    its loop blocked) and is not waited for: its ladder rested, and filled, until the stop timed out
    (fills at +14 s, a fault audit); the controller closes the position."""
    async def stopped() -> Any:
        return await asyncio.wait_for(handle.stop.remote(flatten), timeout_s)

    async def answers() -> Any:   # (submitted in here: a call that fails to go is the retire's error)
        return await asyncio.wait_for(handle.loop_answers.remote(HUNG_AFTER_S), HUNG_AFTER_S)

    stop = asyncio.ensure_future(stopped())
    hung = None
    if account is not None:
        check = asyncio.ensure_future(answers())
        await asyncio.wait({stop, check}, return_when=asyncio.FIRST_COMPLETED)
        if not stop.done() and (check.cancelled() or check.exception() is not None):
            stop.cancel()
            log.error("%s: its agent's trading loop did not answer within %.0f s (hung): not waited for; its "
                      "orders cancelled and its position closed by the controller", symbol, HUNG_AFTER_S)
            hung = asyncio.ensure_future(desk.confirm_empty(symbol, account, cancel_first=True))
        check.cancel()
    try:
        return await stop, None, hung
    except asyncio.CancelledError:
        if hung is None:
            raise
        return None, f"agent hung: no answer within {HUNG_AFTER_S:.0f} s", hung
    except Exception as exc:  # noqa: BLE001 - the caller falls back to the exchange
        return None, named_line(exc), hung


async def retire_agent(ctl: Any, symbol: str, flatten: bool, account: str | None = None) -> RetireOutcome:
    """Stop one agent gracefully, confirm its book is empty at the exchange, remove the actor. Without
    a flatten (the agent's own work) its book is emptied at the exchange at once too, beside the stop:
    a hung agent's orders do not rest (and fill) while the stop waits out ``stop_timeout_s``; with a
    flatten, an agent found hung is not waited for (``stop_agent``)."""
    started = time.monotonic()
    summary: Any = None
    error = None
    account = account or ctl._account_of(symbol)
    early = None if flatten or not account else \
        asyncio.ensure_future(ctl.desk.confirm_empty(symbol, account, cancel_first=True))
    try:
        handle = ctl.agents.get(symbol, fresh=True)
    except Exception as exc:  # noqa: BLE001 - its book is still emptied; a renewal refuses a left-over agent
        handle, error = None, f"agent not looked up: {named_line(exc)}"
    ctl.agents.drop(symbol)
    if handle is not None:
        summary, error, hung = await stop_agent(ctl.desk, symbol, handle, flatten, account if flatten else None,
                                               ctl.settings.stop_timeout_s)
        early = early or hung
        try:
            ray.kill(handle, no_restart=True)
        except Exception as exc:  # noqa: BLE001 - reported; a renewal refuses a left-over agent
            error = (error + "; " if error else "") + f"not killed: {named_line(exc)}"
    open_orders, refused = None, False
    if early is not None:
        try:
            await early
        except Exception as exc:  # noqa: BLE001 - reported, and the check below cancels first
            error = (error + "; " if error else "") + f"early cancel failed: {named_line(exc)}"
    try:
        if account:
            cancel_first = error is not None or bool(isinstance(summary, dict) and summary.get("open_orders"))
            open_orders = await ctl.desk.confirm_empty(symbol, account, cancel_first=cancel_first)
    except Exception as exc:  # noqa: BLE001
        error = (error + "; " if error else "") + f"exchange check failed: {named_line(exc)}"
        refused = key_refused(exc)
    position = None
    if flatten and account:   # the agent's flatten, or this one where it failed (hung, dead, out of time)
        try:
            position = await close_left(ctl, symbol, account, summary)
        except Exception as exc:  # noqa: BLE001
            error = (error + "; " if error else "") + f"position not closed: {named_line(exc)}"
    try:
        ctl.book.forget(symbol)
        await forget_exposition(ctl.fleet_name, symbol)
    except Exception as exc:  # noqa: BLE001 - the stop is done; what the GCS keeps of it is reported
        error = (error + "; " if error else "") + f"not forgotten: {named_line(exc)}"
    return RetireOutcome(handle is not None, open_orders, summary if isinstance(summary, dict) else None,
                         error, ms_since(started), position, refused)


# --- the actor -------------------------------------------------------------------------------------


@ray.remote(max_restarts=-1, max_task_retries=-1, concurrency_groups={KILL_GROUP: 4})
class FleetController(KillSwitches):
    """One per fleet, named ``controller`` in the fleet's namespace. All methods are JSON in/out."""

    def __init__(self, fleet_name: str, namespace: str, settings: dict[str, float] | None = None) -> None:
        # No I/O that can fail here: a constructor that raises during a restart kills the actor for good.
        from agents.logging import log_process_records

        log_process_records()   # this process's mmfleet records: timed, redacted, control characters escaped
        self.fleet_name = fleet_name
        self.namespace = namespace
        self.settings = ControllerSettings(**(settings or {}))
        only_it_writes = ("lease/", "epoch/", "barred/")
        self.book = LeaseBook(WriteThroughStore(GcsStore(fleet_name), only_it_writes),
                              lease_ttl_s=self.settings.lease_ttl_s)
        self.agents = AgentHandles(fleet_name, namespace, self.settings.agent_call_timeout_s)
        self.barred_said: set[tuple[str, str]] = set()   # (symbol, holder) whose refused acquire was logged
        self.creating = asyncio.Lock()   # apply and reconcile look for missing agents and create them one at a time
        self.applying = asyncio.Lock()   # one apply at a time (and the reconcile pass's finishing of one)
        self.owed = OwedWork(self)       # what the applied spec's apply (or a down) still owes
        # The exchange client's modules (aiohttp and all, some 0.3 CPU-s) imported now, in a thread, while
        # the endpoint deploys: imported by the first apply's warm-up, they held the GIL against this
        # actor's loop while the agents started (17 % of its samples in a 50-symbol start).
        threading.Thread(target=importlib.import_module, args=("fleet.binance.client",),
                         name="import-exchange-client", daemon=True).start()
        # the default loop's: retire, fence (and the accounts of agents retired that the spec reaches no more)
        self.desk = EmergencyDesk(lambda: self.cfg, lambda: self.owed.pending.accounts)
        self.kill_desk = EmergencyDesk(lambda: self.cfg)   # the kill group's: its own clients and budget
        self.kill_loop: asyncio.AbstractEventLoop | None = None
        self.behind: set[asyncio.Future] = set()           # kill routes still running after the answer
        self.kill_lock: asyncio.Lock | None = None         # kill and resume write their states in call order
        self.carrying: set[str] = set()                    # symbols whose carried kill is being written
        self.fence = Fence(self.book, self.agents, self.desk, self._account_of)
        self.cfg: FleetConfig | None = None
        self.params: dict[str, SymbolParams] = {}
        self.shares: dict[str, float] = {}
        self.reduce_only = False
        self.gross_notional = 0.0
        self.notional_seen: dict[str, float] = {}   # each symbol's last known notional (fleet_risk)
        self.notional_unknown: tuple[str, ...] = ()   # the symbols counted at it in the last pass
        self.stopping = False
        self.started_at = time.time()
        self.reconciles = 0
        self.recreated: dict[str, int] = {}
        self.emergencies: dict[str, int] = {}
        self.last_down: dict[str, Any] | None = None   # what the last down did, for a call made again after it
        self.last_error: str | None = None
        self.loaded = False
        self.reconciler: asyncio.Task | None = None
        self.fencer: asyncio.Task | None = None
        try:
            self._start_loops()
        except RuntimeError as exc:  # no loop yet: the first call starts it
            self.last_error = named_line(exc)

    # --- state --------------------------------------------------------------------------------

    def _start_loops(self) -> None:
        loop = asyncio.get_running_loop()
        self.reconciler = loop.create_task(self._reconcile_forever())
        self.fencer = loop.create_task(self.fence.run(self._fenced_symbols, self._fenced))

    def _load(self, *, start_loops: bool = True) -> None:
        """Read the applied spec and fleet flags back from the GCS (after a restart)."""
        if self.reconciler is None and start_loops:  # the constructor found no running loop: start them now
            self._start_loops()
        if self.loaded:
            return
        doc = self.book.get_doc(SPEC_DOC)
        if doc is not None:
            self.cfg, self.params = parse_spec(doc, stored=True)
            self.shares = rate_shares(self.cfg)
            self.owed.read(doc)
            self.stopping = self.owed.pending.down is not None   # a down under way: no agent is created again
        else:   # a down that finished: its outcome, for a call made again (Ray's retry of a killed one)
            self.last_down = self.book.get_doc(LAST_DOWN_DOC)
        flags = self.book.get_doc(FLAGS_DOC) or {}
        self.reduce_only = bool(flags.get("reduce_only", False))
        self.loaded = True

    def _symbols(self) -> list[str]:
        return [e.symbol for e in self.cfg.symbols] if self.cfg else []

    def _account_of(self, symbol: str) -> str | None:
        try:
            return self.cfg.entry(symbol).account if self.cfg else None
        except Exception:  # noqa: BLE001 - the fleet changed under the caller
            return None

    # --- apply / reconcile --------------------------------------------------------------------

    async def apply(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Make the fleet look like ``spec``: create, update live, remove; returns what changed.

        The work an apply owes (agents to retire, parameters to push) is stored with the spec, in one
        write, before any of it is done, and cleared once done: a controller killed midway (Ray runs the
        call again on its successor, which reads that spec back as the fleet's) finishes it, and so does
        the reconcile pass when nobody calls again. Applies run one at a time."""
        self._load()
        cfg, params = parse_spec(spec)
        if cfg.name != self.fleet_name:
            raise ValueError(f"this controller runs fleet {self.fleet_name!r}, not {cfg.name!r}")
        endpoints_of(cfg)  # refuse a spec agents could not trade with, before anything changes
        async with self.applying:
            return await self._apply(spec, cfg, params)

    async def _apply(self, spec: dict[str, Any], cfg: FleetConfig, params: dict[str, SymbolParams]) -> dict[str, Any]:
        old_cfg, owed, live = self.cfg, self.owed.pending, self.agents.live()
        before = self.owed.owing()   # owed already: said apart in the answer (still_owed)
        plan = plan_apply(old_cfg, dict(self.params), cfg, params, owed, live)
        await refuse_flattening(self, sorted(set(plan.retire) - set(owed.retire)))
        retire, new_symbols = plan.retire, {e.symbol for e in cfg.symbols}
        removed, traded = sorted(retire), [e.symbol for e in old_cfg.symbols] if old_cfg else []
        # before the spec names them (a failure applies nothing; a record left over holds, the safe side)
        held = await hold_added(self, traded, sorted(new_symbols - set(traded)))
        if self.last_down is not None:   # a fleet brought up again: a down is a new one
            self.book.delete_doc(LAST_DOWN_DOC)
            self.last_down = None
        self.owed.store(cfg, params, PendingApply(retire, plan.updated, accounts=plan.accounts,   # before memory
                                                  books=plan.books))
        self.owed.holding = False
        self.cfg, self.params, self.shares = cfg, params, rate_shares(cfg)
        self.stopping = False
        journal_record(self, "apply", content=spec, detail={"symbols": sorted(new_symbols), "removed": removed,
                                                            "restarted": plan.restarted, "held": held})

        async def retire_then_create() -> tuple[list[RetireOutcome], list[str], dict[str, str]]:
            stops = await asyncio.gather(*(self.owed.retire(s, retire[s], again=s in new_symbols) for s in removed))
            try:
                return stops, await self._create_missing(), {}
            except Exception as exc:  # noqa: BLE001 - reported; the reconcile pass creates them
                return stops, [], {s: f"not created yet (the reconcile pass tries again): {named_line(exc)}"
                                   for s in self._symbols() if s not in live or s in retire}

        # new parameters (a lower cap) reach the agents beside the retires, not after a stop that hangs
        (stops, created, errors), (pushed, above) = await asyncio.gather(retire_then_create(),
                                                                         self._push_params(plan.updated))
        errors.update(pushed)   # (a push that failed is reported, as before)
        books = await empty_books(self.desk, plan.books)   # old books still owed: emptied at the exchange only
        left = self.owed.keep(cfg, params, {s: retire[s] for s in removed}, stops, plan.accounts, books)
        await self.desk.drop({k: d for k, d in plan.accounts.items() if k not in left.accounts})   # (none owed)
        await self._push_shares()
        ray.get_runtime_context().current_actor.warm_kill_path.remote()  # the first kill need not open clients
        outcomes = dict(zip(removed, stops))
        return {
            "fleet": self.fleet_name,
            "created": created,
            "updated": plan.updated,
            "unchanged": plan.unchanged,
            "restarted": {s: r.to_dict() for s, r in outcomes.items() if s in new_symbols},   # (a retried one's too)
            "held": held,   # added to a fleet halted as a whole: halted until resumed
            "removed": {s: r.to_dict() for s, r in outcomes.items() if s not in new_symbols},
            "unconfirmed": symbols_of(self.owed.owing() - before), "still_owed": symbols_of(self.owed.owing() & before),
            "above_cap": above,   # updated, the worst case still over the new cap: why, and the figures
            "errors": errors,
            "rate_shares": self.shares,
        }

    async def _push_params(self, symbols: list[str]) -> tuple[dict[str, str], dict[str, Any]]:
        """New parameters to the agents, live: the ones that failed, with why; and the agents whose worst
        case is still above their (lowered) cap once each answered (``agents.snapshot.above_cap``)."""
        pushes = await asyncio.gather(
            *(self.agents.call(s, "apply_params", self.params[s].model_dump(mode="json"),
                               timeout=self.settings.stop_timeout_s) for s in symbols),
            return_exceptions=True,
        )
        above = {s: r["above_cap"] for s, r in zip(symbols, pushes) if isinstance(r, dict) and r.get("above_cap")}
        for symbol, over in above.items():
            log.warning("%s: above its cap after the new parameters (%s): worst long %s, short %s, cap %s", symbol,
                        over.get("why"), over.get("worst_long"), over.get("worst_short"), over.get("cap"))
        return {s: named_line(r) for s, r in zip(symbols, pushes) if isinstance(r, BaseException)}, above

    async def _push_shares(self) -> None:
        await asyncio.gather(
            *(self.agents.call(s, "set_rate_share", share) for s, share in self.shares.items()),
            return_exceptions=True,
        )

    async def _reconcile_forever(self) -> None:
        while True:
            try:
                await self.reconcile()
            except Exception as exc:  # noqa: BLE001 - the loop must outlive any one bad pass
                self.last_error = named_line(exc)
                log.exception("reconcile failed")
            await asyncio.sleep(self.settings.reconcile_interval_s)

    def _fenced_symbols(self) -> list[str]:
        """What the fence watches now: nothing without a spec, while stopping, or when turned off."""
        return self._symbols() if self.settings.fence_hung_agents and not self.stopping else []

    def _fenced(self, done: Fenced) -> None:
        journal_record(self, "lease_fenced", symbol=done.symbol, reason=f"epoch {done.epoch} lapsed: {done.verdict}")

    async def reconcile(self) -> dict[str, Any]:
        """One pass: recreate agents that died for good; fleet risk; returns what it did."""
        self._load()
        self.reconciles += 1
        if self.cfg is not None:
            self.owed.beside()   # the work a killed controller's apply or down left, and stray agents
        if self.cfg is None or self.stopping:
            return {"recreated": [], "reduce_only": self.reduce_only}
        try:
            recreated = await self._create_missing(gone=True)
        except Exception as exc:  # noqa: BLE001 - the next pass tries again; the fleet's risk is checked anyway
            recreated = []
            self.last_error = named_line(exc)
            log.error("recreating agents failed: %s", self.last_error)
        for symbol in recreated:
            self.recreated[symbol] = self.recreated.get(symbol, 0) + 1
        if recreated:
            await self._push_shares()
        await self._fleet_risk()
        return {"recreated": recreated, "reduce_only": self.reduce_only, "gross_notional": self.gross_notional}

    async def _create_missing(self, *, gone: bool = False) -> list[str]:
        """The traded symbols whose agent Ray does not hold, created (by the spawner); what was created.
        One pass at a time (apply and the reconcile pass). Creating awaits the spawner, so a symbol may
        stop being traded meanwhile (an apply removed it, a ``down`` began, either finding no actor to
        retire): its new actor is removed at once, before it could get a spec and trade."""
        async with self.creating:
            if self.cfg is None or self.stopping:
                return []
            live = self.agents.live()
            missing = [s for s in self._symbols() if s not in live]
            if not missing:
                return []
            if gone:
                log.warning("agents gone: recreating %s", ", ".join(agent_name(s) for s in missing))
            await self.agents.create(missing, self.cfg.agent)
            traded = set() if self.stopping else set(self._symbols())
            for symbol in (s for s in missing if s not in traded):
                log.warning("%s is no longer traded: its agent, created meanwhile, is removed", symbol)
                handle = self.agents.get(symbol)
                self.agents.drop(symbol)
                if handle is not None:
                    ray.kill(handle, no_restart=True)
            return [s for s in missing if s in traded]

    async def _fleet_risk(self) -> None:
        symbols = self._symbols()
        answers = await asyncio.gather(*(self.agents.call(s, "exposure") for s in symbols), return_exceptions=True)
        cap = self.cfg.risk.max_total_notional
        risk = fleet_risk(symbols, list(answers), cap, self.notional_seen)
        if risk.unknown and self.reduce_only and not risk.over:   # the exchange's word for those agents
            listed = await listed_notionals(self.desk, {s: self._account_of(s) for s in risk.unknown})
            risk = fleet_risk(symbols, list(answers), cap, self.notional_seen, listed)
        self.gross_notional, self.notional_seen = risk.gross_notional, risk.notional
        change, say = reduce_only_change(risk, self.reduce_only, cap, self.notional_unknown)
        self.notional_unknown = risk.unknown
        if say:
            log.warning("%s", say)
        if change is not None:
            self.reduce_only = change
            self.book.put_doc(FLAGS_DOC, {"reduce_only": change})
        await asyncio.gather(*(self.agents.call(s, "set_reduce_only", self.reduce_only)
                               for s in reduce_only_behind(symbols, answers, self.reduce_only)), return_exceptions=True)

    # --- leases (called by the agents) --------------------------------------------------------

    async def acquire_lease(self, symbol: str, holder: str, carried: dict[str, Any] | None = None) -> dict[str, Any]:
        self._load()
        if self.owed.holding:
            return self._going_down(symbol, holder)
        self._take_up(symbol, carried)
        answer = self.book.acquire(symbol, holder, now=time.time(), reduce_only=self.reduce_only,
                                   rate_share=self.shares.get(symbol, 1.0))
        if not answer.granted and answer.owner and answer.owner != holder and await self.fence.unseat(symbol, holder):
            answer = self.book.acquire(symbol, holder, now=time.time(), reduce_only=self.reduce_only,
                                       rate_share=self.shares.get(symbol, 1.0))
        if not answer.granted and (symbol, holder) not in self.barred_said and holder in self.book.barred(symbol):
            self.barred_said.add((symbol, holder))   # said once: it asks again every second
            log.warning("%s: lease refused to %s, barred (fenced, no longer the symbol's actor); it asks again "
                        "until its process ends", symbol, holder)
        return answer.to_dict()

    async def renew_lease(self, symbol: str, holder: str, epoch: int,
                          carried: dict[str, Any] | None = None) -> dict[str, Any]:
        """``carried``: a kill the agent holds whose state it has not seen written (``kill_carried``).
        A symbol the applied spec no longer has is refused: an agent that outlived its retirement (its
        stop failed, say a GCS blip during ``apply``) stops trading at its next renewal. While its retire
        is under way its stop keeps the lease (a symbol-wide cancel-all, the dead-man switch disarmed)."""
        self._load()
        if self.owed.holding:
            return self._going_down(symbol, holder)
        if self.cfg is not None and symbol not in self.params and not self.owed.retiring(symbol):
            log.error("%s: lease renewal refused: not part of fleet %s (an agent left over)", symbol, self.fleet_name)
            return LeaseAnswer(granted=False, symbol=symbol, owner=holder,
                               reason=f"{symbol} is not part of fleet {self.fleet_name}").to_dict()
        self._take_up(symbol, carried)
        return self.book.renew(symbol, holder, int(epoch), now=time.time(), reduce_only=self.reduce_only,
                               rate_share=self.shares.get(symbol, 1.0)).to_dict()

    def _going_down(self, symbol: str, holder: str) -> dict[str, Any]:
        why = f"fleet {self.fleet_name} is going down (a down cut short is being finished)"
        return LeaseAnswer(granted=False, symbol=symbol, owner=holder, wait_s=1.0, reason=why).to_dict()

    async def release_lease(self, symbol: str, holder: str, epoch: int | None = None) -> bool:
        return self.book.release(symbol, holder, epoch)

    async def agent_spec(self, symbol: str) -> dict[str, Any]:
        """What ``agent.<symbol>`` trades by, fetched by the actor at every (re)start (no secrets)."""
        self._load()
        if self.cfg is None or symbol not in self.params:
            raise LookupError(f"{symbol} is not part of fleet {self.fleet_name}")
        return {
            "fleet_name": self.fleet_name,
            "symbol": symbol,
            "params": self.params[symbol].model_dump(mode="json"),
            **agent_basis(self.cfg, symbol),   # runtime, endpoints, account, journal, metrics_publish_s, cpu_class
            "renew_interval_s": self.settings.renew_interval_s,
            "reduce_only": self.reduce_only,
            "rate_share": self.shares.get(symbol, 1.0),
            "controller_node": ray.get_runtime_context().get_node_id(),
        }

    # --- views --------------------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        self._load()
        traded = self._symbols()   # once: an apply may change them while the kill records are read
        kill_records = await self.book.akill_records(traded)
        now = time.time()
        symbols = {}
        for s in traded:
            lease = self.book.lease(s)
            symbols[s] = {
                "epoch": self.book.epoch(s),
                **(lease.shown(now) if lease else NO_LEASE_SHOWN),
                "kill_state": kill_records[s].state if s in kill_records else KillState.RUNNING,
                "rate_share": self.shares.get(s),
                "recreated": self.recreated.get(s, 0),
                "emergencies": self.emergencies.get(s, 0),
                "fenced_epoch": self.fence.fenced.get(s),
                "unkilled": self.fence.unkilled.get(s),   # a hung agent Ray was asked to kill, still running
            }
        return {
            "fleet": self.fleet_name,
            "namespace": self.namespace,
            "applied": self.cfg is not None,
            "stopping": self.stopping,
            "reduce_only": self.reduce_only,
            "gross_notional": self.gross_notional,
            "notional_unknown": list(self.notional_unknown),   # counted at their last known notional
            "max_total_notional": self.cfg.risk.max_total_notional if self.cfg else None,
            "reconciles": self.reconciles,
            "uptime_s": round(now - self.started_at, 1),
            "last_error": self.last_error,
            "symbols": symbols,
        }

    async def spec(self) -> dict[str, Any] | None:
        self._load()
        return self.book.get_doc(SPEC_DOC)

    # --- shutdown -----------------------------------------------------------------------------

    async def down(self, flatten: bool = False) -> dict[str, Any]:
        """Stop every agent (optionally flattening), confirm 0 open orders, forget the applied spec."""
        self._load()
        self.stopping = True
        async with self.applying:   # an apply under way finishes first: it would write its spec back
            self.stopping = True     # (again: an apply queued before this down cleared it)
            self.owed.holding = self.owed.holding and not flatten   # a flatten's agents need their leases
            if self.cfg is not None:
                try:   # a controller killed midway comes back stopping, and finishes it
                    owed = self.owed.pending
                    self.owed.store(self.cfg, self.params, PendingApply(dict(owed.retire), [], flatten,
                                                                        dict(owed.accounts), list(owed.books)))
                except Exception as exc:  # noqa: BLE001 - the down goes on; only a restart would forget it
                    log.warning("the down under way not stored: %s", named_line(exc))
            return await self._down(flatten)

    async def _down(self, flatten: bool) -> dict[str, Any]:
        # with the agents an unfinished apply was retiring and any other of this fleet's namespace
        traded = self._symbols()
        accounts, also = down_accounts(await self.owed.strays(set(traded)), self.owed.pending.retire,
                                       {s: self._account_of(s) for s in traded})
        symbols = sorted(accounts)
        if not symbols and self.last_down is not None:   # called again (a retry, the operator) after it finished
            return {**self.last_down, "finished_earlier": True}
        results = await asyncio.gather(*(retire_agent(self, s, flatten, account=accounts[s]) for s in symbols))
        close = partial(close_left, self) if flatten else None
        await empty_also(self.desk, also, close)
        for symbol, account in self.owed.pending.books:   # old books of symbols made anew elsewhere
            await empty_also(self.desk, {symbol: account}, close)
        outcomes = {s: r.to_dict() for s, r in zip(symbols, results)}
        journal_record(self, "down", detail={"flatten": flatten, "symbols": {
            s: {k: o[k] for k in ("open_orders", "position", "error")} for s, o in outcomes.items()}})
        last_down = {"fleet": self.fleet_name, "flatten": flatten, "symbols": outcomes}
        self.book.put_doc(LAST_DOWN_DOC, last_down)   # before the spec goes: a retried down answers with it
        self.book.delete_doc(SPEC_DOC)
        await self.desk.close()
        if self.kill_loop is not None and self.kill_loop is not asyncio.get_running_loop():
            closing = asyncio.run_coroutine_threadsafe(self.kill_desk.close(), self.kill_loop)
            await asyncio.wait_for(asyncio.wrap_future(closing), 10.0)
        else:
            await self.kill_desk.close()
        self.cfg, self.params, self.shares, self.owed.pending = None, {}, {}, PendingApply({}, [])
        self.last_down = last_down
        audit, self._journal_audit = getattr(self, "_journal_audit", None), None   # (no new one: cfg is None)
        if audit is not None:   # drained before the controller is removed (its events would die with it)
            try:
                await asyncio.to_thread(audit.close)
            except Exception as exc:  # noqa: BLE001 - the down is done; its record may be short
                log.warning("journal: the audit log not drained: %s", named_line(exc))
        return self.last_down

    async def ping(self) -> dict[str, Any]:
        return {"fleet": self.fleet_name, "uptime_s": round(time.time() - self.started_at, 1), "pid": os.getpid(),
                "agents_created_without_spawner": self.agents.unspawned,
                # hung agents Ray was asked to kill, still running (the endpoint's metrics and console show them)
                "unkilled": dict(self.fence.unkilled)}


def get_or_create_controller(cfg: FleetConfig, settings: ControllerSettings | None = None) -> Any:
    """The fleet's controller (created detached if missing), above the agents for CPU, and its agents'
    spawner (``controller/handles.py``). Needs a Ray connection, from a process without a ``runtime_env``."""
    get_or_create_spawner(cfg.namespace)
    return FleetController.options(
        name=CONTROLLER_NAME,
        namespace=cfg.namespace,
        lifetime="detached",
        get_if_exists=True,
        num_cpus=0,
        resources={HEAD_NODE_RESOURCE: 0.001},   # on the head, as the endpoint (controller/handles.py)
        runtime_env=above_agents_env(),
    ).remote(cfg.name, cfg.namespace, asdict(settings or ControllerSettings()))


def remove_controller(namespace: str) -> None:
    """The fleet's controller and spawner killed for good (``down`` has stopped the agents before)."""
    for handle in (find_controller(namespace), find_spawner(namespace)):
        if handle is not None:
            ray.kill(handle, no_restart=True)


def forget_last_down(fleet_name: str) -> None:
    """The stored outcome of the fleet's last down removed (once its caller has it)."""
    LeaseBook(GcsStore(fleet_name)).delete_doc(LAST_DOWN_DOC)


def find_controller(namespace: str) -> Any | None:
    return named_actor(CONTROLLER_NAME, namespace)
