"""The controller's kill switches: kill, resume and what follows a kill (journal, emergency path).

A mixin of :class:`controller.controller.FleetController`, kept apart so that each stays readable; it
uses the controller's book, agents' handles, settings and applied spec. Kill, resume and the
endpoint's messages run in the ``kill`` concurrency group: its own thread and loop, never queued
behind ``apply`` or a lease call. A halt asked over Ray (the CLI) races the agent and the exchange per symbol
(controller/kill_path.py); an HTTP halt is run by the endpoint itself, which then tells the
controller (``kill_noted``, ``halt_unconfirmed``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from functools import partial
from typing import Any

import ray

from controller.emergency import KillOutcome, Outcome, with_hold
from controller.kill_path import AGENT_ROUTE, EXCHANGE_ROUTE, LATE_LANDING_S, READ_S, DurableKill, first_empty, flat_position, \
    halt_not_confirmed, keep_behind, kill_stopped, kill_unchanged, ms_since, raced_outcome, read_lease, \
    sweep_until_halted, write_kill_states
from controller.lease import Lease, kill_states_shown
from fleet.text import named_line
from fleet.vocabulary import CLOCK_SKEW_S, KillState

log = logging.getLogger("mmfleet.controller")

STATUS_READ_S = 3.0   # a resume reads the symbols' statuses (exchangeInfo) within this, or resumes as asked
RESUMABLE = frozenset({"TRADING", "PENDING_TRADING"})   # the statuses a resume is carried out in
KILL_GROUP = "kill"  # kill and resume: their own thread and loop, never queued behind apply or a lease call
CARRIED_WRITE_S = 3.0  # a carried kill's write waits this long (the read before it answered: the GCS is up)


def journal_record(controller: Any, kind: str, **kw: Any) -> None:
    """An operator/controller event in the trade journal (never in the way of the action itself)."""
    try:
        from journal.audit import record

        record(controller, kind, **kw)
    except Exception as exc:  # noqa: BLE001
        log.warning("journal: %s not recorded: %s", kind, named_line(exc))


def journal_cursor(controller: Any, symbol: str, account: str) -> int | None:
    """The newest trade id the journal holds for the symbol; None if none or not read (said)."""
    try:
        from journal.audit import trade_cursor

        return trade_cursor(controller, symbol, account)
    except Exception as exc:  # noqa: BLE001
        log.warning("journal: the newest fill of %s not read: %s", symbol, named_line(exc))
        return None


def journal_trades(controller: Any, symbol: str, account: str, trades: list[dict[str, Any]]) -> None:
    """Fills of the controller's own orders (userTrades rows) in the trade journal (idempotent by trade)."""
    try:
        from journal.audit import record_trades

        record_trades(controller, symbol, account, trades)
    except Exception as exc:  # noqa: BLE001
        log.warning("journal: %d fills of %s not recorded: %s", len(trades), symbol, named_line(exc))


def _by(by: dict[str, Any] | None) -> dict[str, Any]:
    by = by or {}
    return {"actor": str(by.get("actor") or "ray")[:16], "token_fp": by.get("token_fp")}


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


class KillSwitches:
    """Kill, resume and kill states of the fleet (mixed into the controller actor)."""

    @ray.method(concurrency_group=KILL_GROUP)
    async def kill(self, symbols: list[str] | None, mode: str = "halt", reason: str = "",
                   by: dict[str, Any] | None = None, asked_at: float | None = None,
                   expires_at: float | None = None) -> dict[str, Any]:
        """Halt or flatten; per symbol the outcome, open orders confirmed, time taken (from ``asked_at``, when
        the endpoint got it, wall clock). A halt races the agent and the exchange (controller/kill_path.py).
        ``expires_at``: not begun by then (wall clock), it is not carried out (outcome ``expired``): its
        caller carries it out itself (the endpoint, whose flatten this stopped controller did not take up
        in time; run once thawed, it would flatten again over whatever the operator did since)."""
        self._load(start_loops=False)
        self.kill_loop = asyncio.get_running_loop()
        if mode not in ("halt", "flatten"):
            raise ValueError(f"mode must be 'halt' or 'flatten', not {mode!r}")
        targets = self._targets(symbols)
        late = time.time() - float(expires_at) if expires_at is not None else 0.0
        if late > 0:
            log.warning("a %s of %s begun %.2f s after its caller's deadline: not carried out (its caller's)",
                        mode, ", ".join(targets), late)
            return {"mode": mode, "reason": reason, "expired": True,
                    "symbols": {s: {"outcome": "expired", "open_orders": None} for s in targets}}
        started = time.monotonic() - (max(0.0, time.time() - asked_at) if asked_at is not None else 0.0)
        state = KillState.HALTED if mode == "halt" else KillState.FLATTENING
        warm = asyncio.ensure_future(self.kill_desk.warm({a for s in targets if (a := self._account_of(s))}))
        # Durable first (a restart from then on comes back halted), unless the GCS cannot take it now.
        self.kill_lock = self.kill_lock or asyncio.Lock()
        durable = DurableKill(self.book, targets, state, reason, self.kill_lock, issued_at=asked_at)
        keep_behind(self.behind, durable.write)
        is_durable = await durable.wait(started)
        for s in targets:  # by: who asked ({"actor": "api", "token_fp": ...}); none: over Ray (the CLI)
            journal_record(self, "kill", symbol=s, reason=reason, detail={"mode": mode}, **_by(by))
        self.behind.add(warm)  # the exchange clients opening while the states are written; the routes share them
        warm.add_done_callback(self.behind.discard)
        stale = [s for s in targets if durable.superseded(s)]   # run late, after a resume asked later
        if stale:
            log.warning("a %s of %s asked %.1f s ago: a resume asked after it stands; not carried out",
                        mode, ", ".join(stale), time.time() - durable.issued_at)
        acting = [s for s in targets if s not in stale]
        held = {s: self.kill_desk.held(a) if (a := self._account_of(s)) else None for s in acting}   # why it waited
        if mode == "halt":
            results = await asyncio.gather(*(self._halt_one(s, reason, durable, started) for s in acting))
        else:
            results = await asyncio.gather(*(self._kill_one(s, mode, reason, durable.seq(s), started, durable.issued_at)
                                             for s in acting))
        done = {s: with_hold(r, held[s]) for s, r in zip(acting, results)}
        for s in stale:
            done[s] = KillOutcome(Outcome.FAILED, "controller", None, None, ms_since(started),
                                  problem="superseded by a later kill or resume")
        return {
            "mode": mode,
            "reason": reason,
            "durable": is_durable,         # false: the GCS did not take the kill states in time; the write goes on
            "durable_ms": durable.waited,  # the kill states written to the GCS (a restart from then on comes back halted)
            "elapsed_ms": ms_since(started),
            "symbols": {s: done[s].to_dict() for s in targets},
        }

    @ray.method(concurrency_group=KILL_GROUP)
    async def kill_noted(self, symbols: list[str], mode: str, reason: str, by: dict[str, Any] | None,
                         seqs: dict[str, int]) -> bool:
        """A kill the endpoint carried out itself (controller/kill_path.py), journaled here."""
        for s in symbols:
            journal_record(self, "kill", symbol=s, reason=reason, detail={"mode": mode, "by": "endpoint",
                                                                          "kill_seq": seqs.get(s)}, **_by(by))
        return True

    @ray.method(concurrency_group=KILL_GROUP)
    async def halt_unconfirmed(self, symbol: str, kill_seq: int | None) -> bool:
        """The endpoint's halt was not confirmed by the agent: the emergency path, unless resumed since."""
        self._load(start_loops=False)
        self.kill_loop = asyncio.get_running_loop()
        if symbol not in self._symbols() or self.book.kill_seq(symbol) != kill_seq:
            return False
        await self._emergency(symbol, "halt", revoke=False)
        return True

    def _take_up(self, symbol: str, carried: dict[str, Any] | None) -> None:
        """A lease call carried a kill the agent holds unwritten: ``kill_carried`` on the kill group (once at a time)."""
        if carried and symbol not in self.carrying:
            self.carrying.add(symbol)
            try:
                ray.get_runtime_context().current_actor.kill_carried.remote(symbol, carried)
            except Exception as exc:  # noqa: BLE001 - never in the way of the lease call; carried again next time
                self.carrying.discard(symbol)
                log.warning("%s: the kill its agent carries not taken up: %s", symbol, named_line(exc))

    @ray.method(concurrency_group=KILL_GROUP)
    async def kill_carried(self, symbol: str, carried: dict[str, Any]) -> bool:
        """Write the kill state an agent carries: a kill sent while the GCS was down, whose write was lost
        with the process that sent it (a controller stopped before the GCS came back), or the agent's own
        halt (a liquidation by the exchange, ``SymbolAgent.liquidated``). Not when a record
        numbered above what the agent knew (``after_seq``) has been written since: it is taken as newer
        (the window this leaves: docs/architecture.md, the kill path), unless that record was asked for
        more than ``CLOCK_SKEW_S`` before the kill (a resume whose write landed late).
        A halt or flatten only; under the kill lock, and not while a write of this process holds it (a
        kill's write retried through a GCS outage: it may be this very kill; the agent carries it again
        at its next lease call). Each GCS call bounded, so that it holds one of the kill group's few
        slots for seconds at most."""
        try:
            self._load(start_loops=False)
            state, after = KillState.parse(carried["state"]), int(carried["after_seq"])
            reason = str(carried.get("reason") or "")[:200]
            if symbol not in self._symbols() or state is KillState.RUNNING:
                return False
            self.kill_lock = self.kill_lock or asyncio.Lock()
            if self.kill_lock.locked():
                return False
            issued_at = carried.get("issued_at") if isinstance(carried.get("issued_at"), int | float) else None
            async with self.kill_lock:
                record = (await asyncio.wait_for(self.book.akill_records([symbol]), READ_S)).get(symbol)
                older = issued_at is not None and record is not None and record.since < issued_at - CLOCK_SKEW_S
                if record is not None and record.seq > after and not older:
                    return False   # a command written since the agent got the kill (not one asked for before it)
                seqs = await asyncio.wait_for(write_kill_states(
                    self.book, [symbol], state, reason, issued_at=issued_at, unless_newer=issued_at is not None),
                    CARRIED_WRITE_S)
                if symbol not in seqs:   # a command asked for after it was written meanwhile
                    return False
            log.warning("%s: kill state %s (%r) written as its agent carried it (the agent's own halt, or a kill "
                        "sent while the GCS was down whose write was lost); kill_seq %d", symbol, state, reason,
                        seqs[symbol])
            journal_record(self, "kill_state_carried", symbol=symbol, reason=reason,
                           detail={"state": str(state), "kill_seq": seqs[symbol], "after_seq": after})
            return True
        except Exception as exc:  # noqa: BLE001 - the GCS still down: the agent carries it again at its next renewal
            log.warning("%s: the kill state its agent carries not written yet: %s", symbol, named_line(exc))
            return False
        finally:
            self.carrying.discard(symbol)

    def _targets(self, symbols: list[str] | None) -> list[str]:
        known = self._symbols()
        if not symbols:
            return known
        unknown = [s for s in symbols if s not in known]
        if unknown:
            raise ValueError(f"unknown symbol(s) {', '.join(unknown)}; fleet {self.fleet_name} trades {', '.join(known)}")
        return list(dict.fromkeys(symbols))

    @ray.method(concurrency_group=KILL_GROUP)
    async def warm_kill_path(self) -> bool:
        """The kill group's exchange clients opened (keys read in this process) before any kill needs them."""
        self.kill_loop = asyncio.get_running_loop()
        await self.kill_desk.warm({a for s in self._symbols() if (a := self._account_of(s))})
        return True

    async def _halt_one(self, symbol: str, reason: str, durable: DurableKill, started: float) -> KillOutcome:
        """The agent and the exchange raced; answered by the first to see 0, the other left running."""
        agent = asyncio.ensure_future(
            self.agents.call(symbol, "halt", reason, durable.seq(symbol), durable.issued_at,
                             timeout=self.settings.kill_timeout_s))
        exchange = asyncio.ensure_future(self._exchange_route(symbol))
        first, confirmed_ms = await first_empty({AGENT_ROUTE: agent, EXCHANGE_ROUTE: exchange}, started)
        keep_behind(self.behind, self._after_halt(symbol, agent, exchange))
        if first != AGENT_ROUTE:  # the agent may not have heard the halt: it may still send, and quote anew
            keep_behind(self.behind, self._sweep_after_halt(symbol, durable, agent))
        return raced_outcome(first, confirmed_ms, agent, exchange, started)

    async def _sweep_after_halt(self, symbol: str, durable: DurableKill, agent: asyncio.Future) -> int:
        account = self._account_of(symbol)
        if account is None:   # the fleet changed under the kill: nothing of this fleet to sweep
            return 0
        return await sweep_until_halted(agent, partial(self.kill_desk.sweep, symbol, account), durable, self.book, symbol)

    async def _exchange_route(self, symbol: str) -> int:
        return await self.kill_desk.cancel_until_empty(symbol, self.cfg.entry(symbol).account)

    async def _after_halt(self, symbol: str, agent: asyncio.Future, exchange: asyncio.Future) -> None:
        """Once both routes are done, an agent that did not confirm its halt gets the emergency path, its lease
        kept: a slow one halts on its next renewal (it carries the kill state), a hung one is the fence's."""
        await asyncio.wait({agent, exchange})
        if not exchange.cancelled():
            exchange.exception()  # read: a failed exchange route is in the answer already
        why = halt_not_confirmed(agent)
        if why is None:
            return
        log.warning("%s: the agent did not confirm its halt (%s); emergency path", symbol, why)
        await self._emergency(symbol, "halt", revoke=False)

    async def _kill_one(self, symbol: str, mode: str, reason: str, kill_seq: int | None, started: float,
                        issued_at: float) -> KillOutcome:
        timeout = self.settings.kill_timeout_s if mode == "halt" else self.settings.flatten_timeout_s
        answer: Any = None
        problem: str | None = "superseded by a later kill or resume"
        try:
            answer = await self.agents.call(symbol, mode, reason, kill_seq, issued_at, timeout=timeout)
            if isinstance(answer, dict) and answer.get("outcome") == "superseded":  # not carried out, nor due
                return KillOutcome(Outcome.FAILED, "agent", None, answer.get("position"), ms_since(started),
                                   problem=problem)   # (the position as the resume found it)
            problem = None
        except asyncio.TimeoutError:
            problem = f"agent did not answer the {mode} within {timeout:g} s"
        except Exception as exc:  # noqa: BLE001 - any failure leads to the emergency path
            problem = f"agent failed the {mode}: {named_line(exc)}"
        open_orders = answer.get("open_orders") if isinstance(answer, dict) else None
        if problem is None and open_orders == 0 and mode == "flatten" and not flat_position(answer.get("position")):
            # its flatten ran out of time (a lapsed lease sends nothing; throttled or refused closes):
            # the orders are gone, the position is not, and the exchange route closes it
            problem = f"agent reported position {answer.get('position')!r} after the flatten"
        if problem is None and open_orders == 0:
            self._halt_when_flat(symbol, mode, kill_seq, reason, 0, answer.get("position"))
            return KillOutcome(Outcome.done(mode), "agent", 0, answer.get("position"), ms_since(started))
        if problem is None and isinstance(answer, dict) and answer.get("outcome") == "not_started":
            # Not trading yet (it gets the kill state with its grant): empty the book, keep its lease.
            result = await self._emergency(symbol, mode, revoke=False)
            carried_out = result.outcome == Outcome.EMERGENCY_CANCELLED and result.open_orders == 0 and (
                mode == "halt" or flat_position(result.position))
            outcome = Outcome.done(mode) if carried_out else result.outcome
            if carried_out:
                self._halt_when_flat(symbol, mode, kill_seq, reason, result.open_orders, result.position)
            return replace(result, outcome=outcome, path="controller", elapsed_ms=ms_since(started))
        if problem is None:
            problem = f"agent reported {open_orders!r} open orders after the {mode}"
        log.warning("%s: %s; cancelling at the exchange", symbol, problem)
        result = await self._emergency(symbol, mode)
        if result.outcome != Outcome.FAILED:
            self._halt_when_flat(symbol, mode, kill_seq, reason, result.open_orders, result.position)
        return replace(result, problem=problem, elapsed_ms=ms_since(started))

    def _halt_when_flat(self, symbol: str, mode: str, kill_seq: int | None, reason: str, open_orders: Any,
                        position: Any) -> None:
        """A flatten that left no order and a flat position, by whichever route (the agent's, or the
        exchange's when the agent was not trading or did not answer): the symbol halted from now on, so
        that it does not read flattening for good. Not when this kill's state is not durable yet."""
        if mode == "flatten" and kill_seq is not None and open_orders == 0 and flat_position(position):
            keep_behind(self.behind, self._flattened(symbol, kill_seq, reason))

    async def _flattened(self, symbol: str, kill_seq: int, reason: str) -> None:
        """A flatten done: the symbol halted from now on, never over a resume or kill that came since (read
        and written under the kill lock by asynchronous GCS calls, in the background: the GCS down holds
        neither the loop nor the answer; a read that times out counts as unchanged, the safe side)."""
        self.kill_lock = self.kill_lock or asyncio.Lock()
        try:
            async with self.kill_lock:
                if await kill_unchanged(self.book, symbol, kill_seq):
                    await write_kill_states(self.book, [symbol], KillState.HALTED, reason or "flattened")
        except Exception as exc:  # noqa: BLE001 - it stays flattening: the agent keeps it flat
            log.error("%s: flattened, but its kill state not written halted: %s", symbol, named_line(exc))

    async def _emergency(self, symbol: str, mode: str, *, revoke: bool = True) -> KillOutcome:
        """Cancel the symbol's orders and confirm (first: the way to the exchange waits on no GCS call),
        ``revoke`` its lease, and sweep again once the lease has lapsed."""
        self.emergencies[symbol] = self.emergencies.get(symbol, 0) + 1
        try:
            account = self.cfg.entry(symbol).account
        except Exception as exc:  # noqa: BLE001 - the fleet changed under the kill: reported, never raised
            return KillOutcome(Outcome.FAILED, "emergency", None, error=named_line(exc))
        result = await self.kill_desk.cancel(symbol, account, mode)
        lease = await self._revoke(symbol, mode) if revoke else await self._lease(symbol)
        if lease is not None and result.outcome != Outcome.FAILED:
            # The agent's lease was promised until expires_at: sweep again once it has lapsed.
            delay = max(0.0, lease.expires_at - time.time())
            for after in (0.2, LATE_LANDING_S):   # and once what it signed just before can no longer land
                self.kill_desk.sweep_later(symbol, account, delay + after, partial(kill_stopped, self.book, symbol))
        return result

    async def _revoke(self, symbol: str, mode: str) -> Lease | None:
        """The symbol's lease revoked (a GCS write, in a thread, waited for ``READ_S``); the lease as known
        when the GCS did not take it then (the write may still land; the lease lapses on its own)."""
        try:
            lease = await asyncio.wait_for(asyncio.to_thread(self.book.revoke, symbol), READ_S)
        except Exception as exc:  # noqa: BLE001 - logged; the cancel is done, the sweep follows the lease
            log.error("%s: the lease was not revoked within %g s (%s)", symbol, READ_S, named_line(exc))
            return await self._lease(symbol)
        journal_record(self, "lease_revoked", symbol=symbol, reason=f"emergency {mode}")
        return lease

    async def _lease(self, symbol: str) -> Lease | None:
        try:
            return await read_lease(self.book, symbol)
        except Exception as exc:  # noqa: BLE001 - no later sweep then; the fence and the dead-man switch remain
            log.error("%s: the lease was not read (%s): no sweep at its end", symbol, named_line(exc))
            return None

    @ray.method(concurrency_group=KILL_GROUP)
    async def resume(self, symbols: list[str] | None = None, by: dict[str, Any] | None = None,
                     asked_at: float | None = None, expires_at: float | None = None) -> dict[str, Any]:
        """Resume quoting. ``asked_at``: when the operator asked (wall clock; default now), so that a
        resume run late (queued behind kills, or retried by Ray after a controller restart) never
        writes over a kill asked for after it; ``expires_at``: when its caller stopped waiting (it
        was told nothing changed): past it the resume is not carried out."""
        self._load(start_loops=False)
        self.kill_loop = asyncio.get_running_loop()   # (the kill desk's clients are this loop's)
        targets = self._targets(symbols)
        now = time.time()
        asked_at = now if asked_at is None else float(asked_at)
        if expired := self._resume_expired(targets, asked_at, expires_at):
            return expired
        closed = await self._not_trading(targets)
        for s, why in closed.items():
            log.warning("a resume of %s refused: %s", s, why)
            journal_record(self, "resume_refused", symbol=s, reason=why, **_by(by))
        refused = {s: {"outcome": "refused", "agent": why} for s, why in closed.items()}
        targets = [s for s in targets if s not in closed]
        for s in targets:
            journal_record(self, "resume", symbol=s, reason=(by or {}).get("reason"), **_by(by))
        self.kill_lock = self.kill_lock or asyncio.Lock()
        async with self.kill_lock:
            to_write = targets
            stored = await self._stored_kills(targets, needed=asked_at < now)
            if asked_at < now and stored is not None:   # asked before it runs: a kill asked for since stands
                to_write = [s for s in targets if s not in stored or stored[s].state is KillState.RUNNING
                            or stored[s].since <= asked_at]
            if expired := self._resume_expired(targets, asked_at, expires_at):   # waited for the lock or the read
                return expired
            seqs = await write_kill_states(self.book, to_write, KillState.RUNNING, "resumed", issued_at=asked_at,
                                           unless_newer=True) if to_write else {}
        written = [s for s in targets if s in seqs]
        answers = await asyncio.gather(
            *(self.agents.call(s, "resume", seqs[s], asked_at, timeout=self.settings.kill_timeout_s) for s in written),
            return_exceptions=True,
        )
        out: dict[str, Any] = {s: {"outcome": "superseded", "agent": "a kill asked for after this resume stands"}
                               for s in targets if s not in seqs}
        out.update(refused)
        for s, a in zip(written, answers):
            if isinstance(a, BaseException):
                # The state is durable: the agent picks it up at its next lease renewal.
                out[s] = {"outcome": "resumed", "agent": f"not confirmed: {named_line(a)}"}
            else:
                out[s] = {"outcome": "resumed", "agent": a}
            if stored is not None and (s not in stored or stored[s].state is KillState.RUNNING):
                out[s]["was"] = "running"   # nothing to resume (a kill sent just after it stands, if any)
        return {"symbols": out}

    async def _stored_kills(self, symbols: list[str], needed: bool) -> dict[str, Any] | None:
        """The symbols' stored kill records before a resume (one without a record was never killed); a
        read that fails is raised only when ``needed`` (a resume run late), otherwise None: not known."""
        try:
            return await asyncio.wait_for(self.book.akill_records(symbols), READ_S)
        except Exception:  # noqa: BLE001 - only the answer's "was" is lost
            if needed:
                raise
            return None

    async def _not_trading(self, symbols: list[str]) -> dict[str, str]:
        """Of ``symbols``, those the exchange lists in a status that does not come back to TRADING (settling,
        closed, delivered, or no longer listed), each with why: resumed, such an agent sat paused on a
        market with no book, the answer saying "resumed". A symbol about to list (PENDING_TRADING) may be
        resumed: its agent quotes once it opens. Read from exchangeInfo, the accounts at once, within
        ``STATUS_READ_S``; a read that fails refuses nothing (said): an order on such a symbol is refused
        (-4108) and halts it."""
        by_account: dict[str, list[str]] = {}
        for s in symbols:
            if (account := self._account_of(s)) is not None:
                by_account.setdefault(account, []).append(s)
        reads = await asyncio.gather(*(asyncio.wait_for(self.kill_desk.statuses(account), STATUS_READ_S)
                                       for account in by_account), return_exceptions=True)
        out: dict[str, str] = {}
        for (account, named), listed in zip(by_account.items(), reads):
            if isinstance(listed, BaseException):
                log.warning("a resume of %s: the exchange's statuses not read (%s): resumed as asked",
                            ", ".join(named), named_line(listed))
                continue
            for s in named:
                status = listed.get(s)
                if status not in RESUMABLE:
                    out[s] = (f"the exchange lists {s} as {status}, not TRADING: it stays halted" if status
                              else f"the exchange no longer lists {s}: it stays halted")
        return out

    @staticmethod
    def _resume_expired(targets: list[str], asked_at: float, expires_at: float | None) -> dict[str, Any] | None:
        """The answer of a resume its caller stopped waiting for (it was told nothing changed), else None."""
        now = time.time()
        if expires_at is None or now <= float(expires_at):
            return None
        log.warning("a resume of %s asked %.1f s ago, after its caller stopped waiting: not carried out",
                    ", ".join(targets), now - asked_at)
        return {"symbols": {s: {"outcome": "expired", "agent": None} for s in targets}}

    async def kill_states(self) -> dict[str, Any]:
        self._load()
        stored = await asyncio.to_thread(self.book.kill_record_symbols)   # off the loop: leases renew there
        symbols = list(dict.fromkeys([*self._symbols(), *stored]))          # retired symbols' records too
        return kill_states_shown(symbols, await self.book.akill_records(symbols))
