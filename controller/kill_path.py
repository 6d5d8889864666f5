"""The kill path with no single slow link: the kill state made durable, then two routes per symbol.

For a halt, every symbol is acted on concurrently by two independent routes: the agent (stop
quoting, cancel, confirm) and the exchange directly (cancel all open orders of the symbol with the
account's own credentials, repeated until the exchange lists none). The first route to see 0 open
orders answers; the other goes on in the background. A busy, hung or dead agent therefore delays
nothing, and neither does the controller: the endpoint runs every HTTP halt itself
(:class:`DirectKill`: the durable kill state written straight into the GCS key-value store, the keys
read in the endpoint's own process) and tells the controller afterwards. The CLI asks the endpoint
through Ray; the controller runs the same path for a kill asked of it over Ray (the CLI, when the
fleet has no endpoint or it does not answer).

A flatten keeps its order (the agent flattens; its reduce-only orders must not be cancelled under
it) and goes to the controller first, which carries it out alone while it answers; only when it
does not, the endpoint's own route cancels at the exchange first, then asks the agent to flatten, and
closes the position at the exchange itself if the agent has not by the end of its lease.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from controller.emergency import EmergencyDesk, KillOutcome, Outcome, flat_position, with_hold
from controller.handles import AGENT_PREFIX
from controller.lease import GcsStore, KillRecord, Lease, LeaseBook, aget_many
from fleet.config import KILL_VERIFY_S, FleetConfig
from fleet.text import named_line
from fleet.vocabulary import KillState

if TYPE_CHECKING:  # controller.calls imports controller.controller, which imports this module
    from controller.calls import ActorCalls

log = logging.getLogger("mmfleet.kill")

AGENT_ROUTE = "agent"
EXCHANGE_ROUTE = "exchange"
PATH_OF = {AGENT_ROUTE: "agent", EXCHANGE_ROUTE: "emergency"}   # the answer's ``path`` words


def ms_since(started: float) -> float:
    """Milliseconds since ``started`` (monotonic), as the answers give them."""
    return round((time.monotonic() - started) * 1000, 1)


def agent_confirmed(answer: Any) -> bool:
    """The agent's own answer says the exchange lists 0 open orders of the symbol."""
    return isinstance(answer, dict) and answer.get("open_orders") == 0 and answer.get("outcome") != "not_started"


async def first_empty(routes: dict[str, asyncio.Future], started: float) -> tuple[str | None, float | None]:
    """The route that first saw 0 open orders and when (ms since ``started``); (None, None) if none did.

    A route's result is the agent's answer (a dict) or the exchange's count of open orders (an int);
    a route that raises simply did not get there. The routes still running are left running.
    """
    names = {task: name for name, task in routes.items()}
    pending = set(routes.values())
    while pending:
        done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task.cancelled() or task.exception() is not None:
                continue
            result = task.result()
            if result == 0 or agent_confirmed(result):
                return names[task], ms_since(started)
    return None, None


TELL_TIMEOUT_S = 120.0  # a message to a stopped or restarting controller waits this long
SWEEP_S = 0.5  # the symbol swept again this often while its agent has not confirmed the halt
FIRST_SWEEP_S = 0.1  # ... the first time this soon: an order the agent sent before it heard the halt lands
                     # just after the exchange route's 0 (bench run Y: 163 ms after the kill, swept by 1.3 s)
LEASE_MARGIN_S = 0.2  # ... and, if it never confirms, until this long after its lease's end
# An order the agent signed just before its gate closed (1 s before its lease's end) may execute until
# its timestamp plus recvWindow (5 s: a 503, a slow connection): up to 4 s after the lease's end. The
# sweeps that follow a lease go on this long past it (each weight 1).
LATE_LANDING_S = 4.5
READ_S = 1.0  # a GCS read the sweep makes (the lease, the kill record) waits this long (the GCS may be down)
VERIFY_S = KILL_VERIFY_S  # the kill path's requests tried this often (a client holds an idle connection 60 s)
VERIFY_MAX = 64          # ... at most this many symbols per account at once (the client's connection limit)


async def lease_end(book: LeaseBook, symbol: str) -> float:
    """When the symbol's agent can no longer trade (wall clock): its lease as stored once the kill state
    is durable, plus ``LEASE_MARGIN_S`` for a request it sent just before. A renewal granted after the
    kill state was written carries it, so no later lease need be waited for. A lease not read within
    ``READ_S`` (the GCS down: then no renewal is granted either) counts as granted just now."""
    try:
        lease = await read_lease(book, symbol)
    except Exception as exc:  # noqa: BLE001 - the longest lease the book grants is assumed
        log.warning("%s: the lease was not read (%s); swept for a whole lease", symbol, named_line(exc))
        return time.time() + book.lease_ttl_s + LEASE_MARGIN_S
    return (lease.expires_at if lease is not None else time.time()) + LEASE_MARGIN_S


async def read_lease(book: LeaseBook, symbol: str) -> Lease | None:
    """The symbol's stored lease, read asynchronously within ``READ_S`` (else the error is raised)."""
    return (await asyncio.wait_for(book.aleases([symbol]), READ_S)).get(symbol)


async def kill_unchanged(book: LeaseBook, symbol: str, seq: int) -> bool:
    """The symbol's kill record is still the one numbered ``seq`` (not resumed or killed again since);
    True when it cannot be read within ``READ_S``: sweeping a halted symbol once more is harmless."""
    return await _kill_record_says(book, symbol, lambda record: record.seq == seq)


async def kill_stopped(book: LeaseBook, symbol: str) -> bool:
    """The symbol is still halted or flattening; True when its record cannot be read within ``READ_S``."""
    return await _kill_record_says(book, symbol, lambda record: record.state != KillState.RUNNING)


async def _kill_record_says(book: LeaseBook, symbol: str, test: Callable[[KillRecord], bool]) -> bool:
    try:
        record = (await asyncio.wait_for(book.akill_records([symbol]), READ_S)).get(symbol)
    except Exception:  # noqa: BLE001 - the GCS down or slow: a sweep too many is harmless
        return True
    return record is not None and test(record)


async def sweep_until_halted(agent: asyncio.Future, sweep: Callable[[], Awaitable[Any]], durable: "DurableKill",
                             book: LeaseBook, symbol: str, every_s: float = SWEEP_S,
                             first_s: float = FIRST_SWEEP_S) -> int:
    """A halt its agent has not confirmed: the symbol's orders are cancelled again every ``every_s``
    (``DELETE allOpenOrders``, weight 1), the first time after ``first_s`` (if shorter). Until it hears
    the halt, an agent still sends what it decided, and quotes anew over the exchange route's cancels.

    While the agent's call runs: until it confirms (or had nothing to halt, or was superseded). If
    the call ends without that (timed out, failed: a busy, starved or hung agent): until its lease,
    read once the kill state is durable, has lapsed (:func:`lease_end`) and ``LATE_LANDING_S`` more
    (what it signed just before may land until then); a renewal granted after
    that write carries the kill state. While the write is still pending (the GCS down), no renewal
    can be granted either: swept until the lease read then has lapsed, then waiting for the write.
    Stops early once the symbol was resumed or killed again (that command's own routes take over).
    Returns the sweeps made."""
    sweeps = failed = 0
    ends: dict[bool, float] = {}   # the kill state still pending? -> when the agent's lease lapses, read then
    pause = min(first_s, every_s)
    while True:
        if agent.done():
            await asyncio.sleep(pause)
        else:
            await asyncio.wait({agent}, timeout=pause)
        pause = every_s
        end, pending = None, False
        if agent.done():
            if halt_settled(agent, durable.write.done()) or not await durable.unchanged(book, symbol):
                break
            pending = not durable.write.done()
            if pending not in ends:
                ends[pending] = await lease_end(book, symbol)
            end = ends[pending]
            if pending and time.time() >= end:
                continue   # its lease lapsed and cannot be renewed before the kill state lands
        sweeps += 1
        try:
            await sweep()
        except Exception as exc:  # noqa: BLE001 - the next sweep tries again; the agent's answer decides
            failed += 1
            if failed in (1, 10) or failed % 100 == 0:
                log.warning("%s: a sweep after the halt failed (%d of %d so far): %s", symbol, failed, sweeps,
                            named_line(exc))
        if end is not None and not pending and time.time() >= end + LATE_LANDING_S:
            break
    return sweeps


def keep_behind(behind: set[asyncio.Future], work: Awaitable[Any]) -> asyncio.Future:
    """``work`` run in the background, held in ``behind`` until it ends (what runs after an answer)."""
    task = asyncio.ensure_future(work)
    behind.add(task)
    task.add_done_callback(behind.discard)
    return task


def halt_settled(agent: asyncio.Future, durable: bool) -> bool:
    """A finished agent route that leaves nothing to sweep for: confirmed, superseded, or not trading
    yet, which reads the kill state with its grant (so only once the kill state is durable)."""
    if halt_not_confirmed(agent) is not None:
        return False
    answer = agent.result()
    return durable or not (isinstance(answer, dict) and answer.get("outcome") == "not_started")


def halt_not_confirmed(agent: asyncio.Future) -> str | None:
    """Why a finished agent route did not confirm its halt; None when it did, or had nothing to halt
    (not trading yet: it reads the kill state with its grant), or was superseded (resumed since)."""
    answer = None if agent.cancelled() or agent.exception() is not None else agent.result()
    if agent_confirmed(answer) or (isinstance(answer, dict) and answer.get("outcome") in ("not_started", "superseded")):
        return None
    return named_line(agent.exception()) if answer is None and not agent.cancelled() else f"answered {answer!r}"


def route_error(task: asyncio.Future) -> str | None:
    if not task.done():
        return "still running"
    if task.cancelled():
        return "cancelled"
    exc = task.exception()
    if exc is not None:
        return named_line(exc) if str(exc) else f"{type(exc).__name__}"
    result = task.result()
    return None if result == 0 or agent_confirmed(result) else f"answered {result!r}"


def raced_outcome(first: str | None, confirmed_ms: float | None, agent: asyncio.Future,
                  exchange: asyncio.Future, started: float) -> KillOutcome:
    """One symbol's answer to a raced halt: who confirmed 0 first and when, or why nobody did."""
    elapsed = ms_since(started)
    answer = agent.result() if agent.done() and not agent.cancelled() and agent.exception() is None else None
    position = answer.get("position") if isinstance(answer, dict) else None
    if first is not None:
        return KillOutcome(Outcome.HALTED, PATH_OF[first], 0, position, elapsed, first=first,
                           confirmed_ms=confirmed_ms)
    left = exchange.result() if exchange.done() and exchange.exception() is None else None
    return KillOutcome(Outcome.FAILED, "emergency", left if isinstance(left, int) else None, position, elapsed,
                       problem=f"agent: {route_error(agent)}", error=f"exchange: {route_error(exchange)}")


async def write_kill_states(book: LeaseBook, symbols: list[str], state: KillState, reason: str, *,
                            issued_at: float | None = None, unless_newer: bool = False,
                            unless_resumed: bool = False) -> dict[str, int]:
    """The kill state made durable for every symbol (asynchronous GCS writes, concurrently); the seqs of
    those written (``LeaseBook.set_kill_states``: ``issued_at`` is its ``now``)."""
    records = await book.set_kill_states(symbols, state, reason, now=issued_at, unless_newer=unless_newer,
                                         unless_resumed=unless_resumed)
    return {s: r.seq for s, r in records.items()}


DURABLE_WAIT_S = 1.0   # a kill's routes wait this long for its state to be durable; then they act, the write goes on
DURABLE_RETRY_S = 0.5  # a write the GCS refused is tried again after this long
GCS_DOWN_WAIT_S = 0.05  # the endpoint's kill, the GCS found down by its last read: its reads and write wait this long
PREPARE_READ_S = 2.0    # the kill path's upkeep reads the applied spec within this (else the GCS counts as down)


class DurableKill:
    """A kill state being made durable: written at once, and tried again until the GCS takes it.

    The kill waits at most ``DURABLE_WAIT_S`` for it. With the GCS down or restarting (a GCS fault
    tolerance failover takes seconds), a kill that waited on the write would cancel nothing until the
    GCS came back: the routes act meanwhile, the agents' halts carry no ``kill_seq`` (an agent ranks
    such a command above every number it knows: ``LeaseOwnership.note_direct_kill_state``), and the
    answer says ``durable: false``.
    ``lock``: the process's kill-state writes one at a time, held across the retries, so that they
    land in the order they were asked (the controller's resume takes it too: a resume asked after a
    kill is never overwritten by that kill's late write). A retry does not write over a record asked
    for after ``issued_at`` (a resume the controller wrote while this process could not reach the GCS);
    no write, the first included, goes over a resume asked after it (``unless_resumed``: one that ran
    before this kill though asked after it, as a stopped controller runs the calls queued for it in any
    order). Such a symbol is ``superseded``: its kill is not carried out.
    """

    def __init__(self, book: LeaseBook, symbols: list[str], state: KillState, reason: str,
                 lock: asyncio.Lock, issued_at: float | None = None) -> None:
        self.what = f"kill state {state} of {', '.join(symbols)}"
        self.issued_at = time.time() if issued_at is None else issued_at   # the records' since (wall clock)
        self.write = asyncio.ensure_future(self._write(book, symbols, state, reason, lock))
        self.waited: float | None = None   # how long the kill waited for it (ms), when it was durable by then

    async def _write(self, book: LeaseBook, symbols: list[str], state: KillState, reason: str,
                     lock: asyncio.Lock) -> dict[str, int]:
        async with lock:   # held across the retries: the writes land in the order they were asked
            failures = 0
            while True:
                try:
                    seqs = await write_kill_states(book, symbols, state, reason, issued_at=self.issued_at,
                                                   unless_newer=failures > 0, unless_resumed=True)
                except Exception as exc:  # noqa: BLE001 - the GCS down or restarting: tried until it takes it
                    failures += 1
                    if failures in (1, 10) or failures % 100 == 0:
                        log.error("%s not durable (%d attempts so far): %s", self.what, failures, named_line(exc))
                    await asyncio.sleep(DURABLE_RETRY_S)
                    continue
                if failures:
                    log.warning("%s durable after %d failed attempts", self.what, failures)
                return seqs

    async def wait(self, started: float, timeout: float = DURABLE_WAIT_S) -> bool:
        """Wait for the write up to ``timeout``; whether it is durable (logged when not)."""
        await asyncio.wait({self.write}, timeout=timeout)
        if self.write.done():
            self.waited = ms_since(started)
            return True
        log.error("%s not durable within %g s (the GCS down?): the kill acts meanwhile; the write goes on",
                  self.what, timeout)
        return False

    def seq(self, symbol: str) -> int | None:
        """The symbol's kill_seq once the state is durable, else None."""
        return self.write.result().get(symbol) if self.write.done() and not self.write.cancelled() else None

    def superseded(self, symbol: str) -> bool:
        """The write is done and left ``symbol`` alone: a resume asked after this kill stands (on a
        retry, any record asked after it)."""
        return self.write.done() and not self.write.cancelled() and symbol not in self.write.result()

    async def seq_when_durable(self, symbol: str) -> int | None:
        seqs = await asyncio.shield(self.write)
        return seqs.get(symbol)

    async def unchanged(self, book: LeaseBook, symbol: str) -> bool:
        """``kill_unchanged`` for this kill (True while its own write is still going)."""
        seq = self.seq(symbol)
        return True if seq is None else await kill_unchanged(book, symbol, seq)


class DirectKill:
    """The endpoint's own kill: every halt at once, and a flatten the controller does not take up in time.

    The endpoint acts on a halt itself, without waiting for the controller: at 50 symbols the
    controller, busy with 50 agents' leases, never answered within a 300 ms deadline, so every kill
    paid that wait and then ran its routes twice. The controller is told afterwards, in the
    background: it journals the kill (``kill_noted``) and takes its emergency path for an agent that
    did not confirm its halt (``halt_unconfirmed``). Its symbols and accounts are the fleet as the
    controller last applied it (read from the GCS), so a symbol added by an ``apply`` is killed too.
    """

    def __init__(self, deployed: FleetConfig, calls: "ActorCalls", halt_timeout_s: float,
                 flatten_timeout_s: float = 15.0) -> None:
        self.book = LeaseBook(GcsStore(deployed.name))
        self.fleet = deployed               # as applied (from the GCS), else as deployed
        self.applied: str | None = None     # the applied spec document it was read from
        self.desk = EmergencyDesk(lambda: self.fleet)   # its own clients and budget: kills only, in the risk lane
        self.calls = calls
        self.halt_timeout_s = halt_timeout_s
        self.flatten_timeout_s = flatten_timeout_s
        self.behind: set[asyncio.Future] = set()   # routes and messages still running after the answer
        self.write_lock = asyncio.Lock()            # its kill-state writes, in order (``DurableKill``)
        self.verified_at = -math.inf                # when prepare last tried the kill's requests
        self.connections = 0                        # requests answered then (connections held open)
        self.unverified: dict[str, str] = {}        # account -> why its kill requests failed then
        self.refresh_error: str | None = None       # why the applied spec was last not read (logged once)

    async def refresh(self, wait_s: float | None = None) -> FleetConfig:
        """The fleet as the controller last applied it; on any failure, or no answer within ``wait_s``
        (a kill does not wait on a GCS that is down), the last one known (logged)."""
        from controller.spec import SPEC_DOC, parse_spec

        try:
            raw = (await asyncio.wait_for(aget_many(self.book.store, [f"doc/{SPEC_DOC}"]), wait_s))[f"doc/{SPEC_DOC}"]
            if raw is not None and raw != self.applied:
                self.fleet, _ = parse_spec(json.loads(raw), stored=True)
                self.applied = raw
        except Exception as exc:  # noqa: BLE001 - the kill goes on with the fleet it knows
            why = (f"the GCS did not answer within {wait_s:g} s" if isinstance(exc, asyncio.TimeoutError)
                   else named_line(exc))
            if why != self.refresh_error:   # read every second while the console is open: logged once a cause
                log.warning("the applied spec was not read (%s); the fleet as last known is used", why)
            self.refresh_error = why
        else:
            if self.refresh_error is not None:
                log.warning("the applied spec was read again")
            self.refresh_error = None
        return self.fleet

    def symbols(self) -> list[str]:
        return [e.symbol for e in self.fleet.symbols]

    def gcs_wait(self, normal_s: float) -> float:
        """How long a kill waits on the GCS: ``normal_s``, or ``GCS_DOWN_WAIT_S`` while the last read of
        the applied spec failed (the GCS down: measured, a kill of the whole fleet then answered after
        2 s, its 1 s read and its 1 s durable wait one after the other)."""
        return GCS_DOWN_WAIT_S if self.refresh_error is not None else normal_s

    async def prepare(self, now: float) -> dict[str, int]:
        """The kill path made ready ahead of a kill (run every few seconds): the fleet as applied, its
        accounts' exchange clients open, its agents' handles looked up, and, every ``VERIFY_S``, the
        kill's own confirmation tried for every symbol (``EmergencyDesk.verify``: 1.33 weight a minute
        per symbol, in ``upkeep_weight``), so a revoked key or a skewed clock is found before a kill
        needs it (logged, and counted in ``/health``). What is ready."""
        await self.refresh(PREPARE_READ_S)
        symbols = self.symbols()
        await self.warm(symbols)
        agents = await self.calls.resolve([AGENT_PREFIX + s for s in symbols])
        per_account: dict[str, list[str]] = {}
        for e in self.fleet.symbols:
            per_account.setdefault(e.account, []).append(e.symbol)
        if now - self.verified_at >= VERIFY_S:
            self.verified_at = now
            await self._verify(per_account)
        return {"symbols": len(symbols), "agents_ready": agents, "accounts": len(per_account),
                "accounts_open": len(set(per_account) & set(self.desk.clients)),
                "accounts_verified": len(set(per_account) - set(self.unverified)), "connections": self.connections}

    async def _verify(self, per_account: dict[str, list[str]]) -> None:
        answered = await asyncio.gather(*(self.desk.verify(a, s[:VERIFY_MAX]) for a, s in per_account.items()),
                                        return_exceptions=True)
        unverified: dict[str, str] = {}
        for account, answer in zip(per_account, answered):
            if isinstance(answer, BaseException):
                unverified[account] = named_line(answer)
                if self.unverified.get(account) != unverified[account]:
                    log.error("account %s: the kill path's requests fail (%s): a kill would reach its "
                              "symbols only through their agents", account, unverified[account])
            elif account in self.unverified:
                log.warning("account %s: the kill path's requests answered again", account)
        self.unverified = unverified
        self.connections = sum(a for a in answered if isinstance(a, int))

    async def warm(self, symbols: list[str]) -> None:
        """The exchange clients opened (keys read) ahead of a kill that will need them."""
        accounts = set()
        for s in symbols:
            try:
                accounts.add(self.fleet.entry(s).account)
            except Exception:  # noqa: BLE001 - a symbol the fleet no longer trades: its route reports it
                continue
        await self.desk.warm(accounts)

    async def kill(self, symbols: list[str], mode: str, reason: str, started: float | None = None,
                   by: dict[str, Any] | None = None) -> dict[str, Any]:
        """``started``: when the kill was asked for (monotonic; default now), the origin of its times;
        ``by``: who asked, for the controller's journal."""
        started = time.monotonic() if started is None else started
        state = KillState.HALTED if mode == "halt" else KillState.FLATTENING
        durable = DurableKill(self.book, symbols, state, reason, self.write_lock,   # durable first, unless the GCS cannot take it
                              issued_at=time.time() - (time.monotonic() - started))
        self._keep(durable.write)
        is_durable = await durable.wait(started, self.gcs_wait(DURABLE_WAIT_S))
        self._tell("kill_noted", symbols, mode, reason, by,
                   {s: q for s in symbols if (q := durable.seq(s)) is not None})
        one: Callable[[str], Awaitable[KillOutcome]] = (
            (lambda s: self._halt(s, reason, durable, started)) if mode == "halt"
            else (lambda s: self._flatten(s, reason, durable, started)))
        held = {s: self._held(s) for s in symbols}   # the answer says why it waited
        results = await asyncio.gather(*(one(s) for s in symbols))
        return {"mode": mode, "reason": reason, "by": "endpoint", "durable": is_durable, "durable_ms": durable.waited,
                "elapsed_ms": ms_since(started),
                "symbols": {s: {**with_hold(r, held[s]).to_dict(), "by": "endpoint"} for s, r in zip(symbols, results)}}

    async def routed(self, symbols: list[str], mode: str, reason: str, started: float, by: dict[str, Any], *,
                     kill_timeout_s: float, kill_deadline_s: float) -> Any:
        """A kill asked of the endpoint (HTTP, the console, the CLI), timed from ``started``. A halt: these
        routes at once, the controller told afterwards. A flatten: the controller's, which carries it out
        alone while it answers (never two flatteners); these routes only if it does not answer within
        ``kill_deadline_s`` (stopped, gone) or answers that it began past that deadline and left it."""
        if mode == "halt":
            return await self.kill(symbols, mode, reason, started, by)
        sent_at = time.time()   # the deadline runs from the call, not from the request (the spec's read came between)
        ctl = asyncio.ensure_future(self.calls.controller(
            "kill", symbols, mode, reason, by, sent_at - (time.monotonic() - started), sent_at + kill_deadline_s,
            timeout=kill_timeout_s))
        self._keep(asyncio.ensure_future(self.warm(symbols)))   # meanwhile, just in case
        done, _ = await asyncio.wait({ctl}, timeout=kill_deadline_s)
        if not done:
            alive = await self.calls.controller("ping", timeout=kill_deadline_s)
            if alive.ok:
                await ctl
                done = {ctl}
        if done:  # an answer, or a definite failure (no such actor: the fleet is not up) as before
            answer = self.calls.value_of(ctl.result())
            if not (isinstance(answer, dict) and answer.get("expired")):
                return answer
            log.warning("flatten (%s): the controller began it past its deadline (%g s) and left it; the "
                        "endpoint's own routes", by.get("actor"), kill_deadline_s)
        else:
            # Past its deadline the controller does not carry it out (its kill's ``expires_at``): a
            # stopped one, thawed, would otherwise flatten again over a resume given since.
            self._keep(ctl)
            log.warning("flatten (%s): no answer from the controller within %g s; the endpoint's own routes",
                        by.get("actor"), kill_deadline_s)
        return await self.kill(symbols, mode, reason, started, by)

    def _tell(self, method: str, *args: Any) -> None:
        """A message to the controller, in the background; a stopped one gets it when it runs again."""
        async def send() -> None:
            ans = await self.calls.controller(method, *args, timeout=TELL_TIMEOUT_S)
            if not ans.ok:
                log.warning("the controller was not told (%s): %s", method, ans.error)

        self._keep(asyncio.ensure_future(send()))

    def _keep(self, task: asyncio.Future) -> None:
        if not task.done():
            self.behind.add(task)
            task.add_done_callback(self._settled)

    async def _agent(self, symbol: str, method: str, timeout: float, *args: Any) -> Any:
        ans = await self.calls.call(AGENT_PREFIX + symbol, method, timeout, *args)
        if not ans.ok:
            raise RuntimeError(ans.error)
        return ans.value

    def _account(self, symbol: str) -> str:
        return self.fleet.entry(symbol).account

    def _held(self, symbol: str) -> str | None:
        """What holds the symbol's account's requests back as the kill begins (``EmergencyDesk.held``); a
        symbol the fleet no longer names: nothing said (its exchange route reports the failure)."""
        try:
            return self.desk.held(self._account(symbol))
        except KeyError:
            return None

    async def _exchange(self, symbol: str) -> int:
        return await self.desk.cancel_until_empty(symbol, self._account(symbol))

    async def _halt(self, symbol: str, reason: str, durable: DurableKill, started: float) -> KillOutcome:
        agent = asyncio.ensure_future(self._agent(symbol, "halt", self.halt_timeout_s, reason, durable.seq(symbol),
                                                  durable.issued_at))
        exchange = asyncio.ensure_future(self._exchange(symbol))
        first, confirmed_ms = await first_empty({AGENT_ROUTE: agent, EXCHANGE_ROUTE: exchange}, started)
        for task in (agent, exchange):
            self._keep(task)
        self._keep(asyncio.ensure_future(self._after_halt(symbol, durable, agent)))
        if first != AGENT_ROUTE:
            self._keep(asyncio.ensure_future(self._sweep_after_halt(symbol, durable, agent)))
        return raced_outcome(first, confirmed_ms, agent, exchange, started)

    async def _sweep_after_halt(self, symbol: str, durable: DurableKill, agent: asyncio.Future) -> int:
        """``sweep_until_halted``, on its own: it needs no controller."""
        account = self._account(symbol)
        return await sweep_until_halted(agent, lambda: self.desk.sweep(symbol, account), durable, self.book, symbol)

    async def _after_halt(self, symbol: str, durable: DurableKill, agent: asyncio.Future) -> None:
        """An agent that did not confirm its halt (hung, slow, failed): the controller is told, for its
        emergency path, once the kill state is durable (the sweep goes on meanwhile: ``_sweep_after_halt``)."""
        await asyncio.wait({agent})
        why = halt_not_confirmed(agent)
        if why is None:
            return
        log.warning("%s: the agent did not confirm its halt (%s); swept until its lease lapses, and the "
                    "controller's emergency path", symbol, why)
        self._tell("halt_unconfirmed", symbol, await durable.seq_when_durable(symbol))

    def _settled(self, task: asyncio.Future) -> None:
        self.behind.discard(task)
        if not task.cancelled():
            task.exception()   # read, so a failed background route is not reported as never retrieved

    async def _flattened(self, symbol: str, seq: int, reason: str) -> None:
        """A flatten these routes carried out: the symbol halted from now on (as the controller writes
        after its own flattens), in the background, after this process's earlier kill-state writes (its
        write lock). Only over this kill's own record, read first: resumes are the controller's, under
        its lock, not this one, so a record that cannot be read is left alone (flattening: the agent
        keeps the symbol flat). A resume landing between the read and the write is the one window left."""
        try:
            async with self.write_lock:
                record = (await asyncio.wait_for(self.book.akill_records([symbol]), READ_S)).get(symbol)
                if record is not None and record.seq == seq:
                    await write_kill_states(self.book, [symbol], KillState.HALTED, reason or "flattened")
        except Exception as exc:  # noqa: BLE001 - it stays flattening: the agent keeps it flat
            log.error("%s: flattened, but its kill state not written halted: %s", symbol, named_line(exc))

    async def _flatten(self, symbol: str, reason: str, durable: DurableKill, started: float) -> KillOutcome:
        """The book emptied at the exchange, then the agent asked to flatten. An agent that has not done it
        by the end of its lease (stored, plus ``LEASE_MARGIN_S``; no renewal comes while the controller is
        stopped) can no longer send an order: the position is closed at the exchange with a reduce-only
        MARKET order, as the controller's emergency path does (two reduce-only closes never overshoot)."""
        seq = durable.seq(symbol)
        exchange_error: str | None = None
        try:
            left: int | None = await self._exchange(symbol)
        except Exception as exc:  # noqa: BLE001 - the agent is asked all the same (its own IP, its own client)
            left, exchange_error = None, named_line(exc)
            log.warning("%s: the exchange route's cancel failed (%s); asking the agent to flatten", symbol,
                        exchange_error)
        confirmed_ms = ms_since(started) if left == 0 else None
        first = EXCHANGE_ROUTE if left == 0 else None   # the route that saw 0 open orders first
        agent = asyncio.ensure_future(self._agent(symbol, "flatten", self.flatten_timeout_s, reason, seq,
                                                  durable.issued_at))
        window = min(self.flatten_timeout_s, max(0.0, await lease_end(self.book, symbol) - time.time()))
        await asyncio.wait({agent}, timeout=window)
        problem = route_error(agent) if agent.done() else f"no answer from the agent within its lease ({window:.1f} s)"
        answer = agent.result() if agent.done() and not agent.cancelled() and agent.exception() is None else None
        self._keep(agent)
        seq = durable.seq(symbol)   # again: the state may have become durable during the wait
        position = answer.get("position") if isinstance(answer, dict) else None
        if problem is None and flat_position(position):
            if seq is not None:
                self._keep(asyncio.ensure_future(self._flattened(symbol, seq, reason)))
            return KillOutcome(Outcome.FLATTENED, "agent", 0, position, ms_since(started),
                               first=first or AGENT_ROUTE, confirmed_ms=confirmed_ms,
                               error=exchange_error and f"exchange: {exchange_error}")
        # Only a resume stops a flatten: a halt (or flatten) asked since still wants the position closed.
        if (isinstance(answer, dict) and answer.get("outcome") == "superseded") or \
                (seq is not None and not await kill_stopped(self.book, symbol)):
            return KillOutcome(Outcome.FAILED, "agent", left, position, ms_since(started), first=first,
                               problem="superseded by a later resume", confirmed_ms=confirmed_ms)
        problem = problem or f"the agent answered position {position!r}"
        log.warning("%s: the agent did not flatten (%s); closing at the exchange", symbol, problem)
        closed = await self.desk.cancel(symbol, self._account(symbol), "flatten")
        flat = closed.outcome != Outcome.FAILED and closed.open_orders == 0 and flat_position(closed.position)
        if flat and seq is not None:
            self._keep(asyncio.ensure_future(self._flattened(symbol, seq, reason)))
        return KillOutcome(Outcome.FLATTENED if flat else closed.outcome, "emergency", closed.open_orders,
                           closed.position, ms_since(started), problem=problem, error=closed.error, first=first,
                           confirmed_ms=confirmed_ms)
