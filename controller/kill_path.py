"""The kill path with no single slow link: the kill state made durable, then two routes per symbol.

For a halt, every symbol is acted on concurrently by two independent routes: the agent (stop
quoting, cancel, confirm) and the exchange directly (cancel all open orders of the symbol with the
account's own credentials, repeated until the exchange lists none). The first route to see 0 open
orders answers; the other goes on in the background. A busy, hung or dead agent therefore delays
nothing, and the controller is not needed either: :class:`DirectKill` is the same path run by the
endpoint itself when the controller does not answer within its deadline (the durable kill state
written straight into the GCS key-value store, the keys read in the endpoint's own process).

A flatten keeps its order (the agent flattens; its reduce-only orders must not be cancelled under
it): the endpoint's own route cancels at the exchange first, then asks the agent to flatten.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from controller.emergency import EmergencyDesk, KillOutcome, Outcome, first_line
from controller.handles import AGENT_PREFIX
from controller.lease import GcsStore, LeaseBook
from fleet.config import FleetConfig
from fleet.vocabulary import KillState

if TYPE_CHECKING:  # controller.calls imports controller.controller, which imports this module
    from controller.calls import ActorCalls

AGENT_ROUTE = "agent"
EXCHANGE_ROUTE = "exchange"
PATH_OF = {AGENT_ROUTE: "agent", EXCHANGE_ROUTE: "emergency"}   # the answer's ``path`` words


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
                return names[task], round((time.monotonic() - started) * 1000, 1)
    return None, None


SWEEP_S = 0.5  # the symbol swept again this often while its agent has not answered the halt


async def sweep_until_halted(agent: asyncio.Future, sweep: Callable[[], Awaitable[Any]],
                             every_s: float = SWEEP_S) -> int:
    """After the exchange route saw 0 first, the agent may not have heard the halt yet (busy, starved)
    and may still send an order it decided before: the symbol's orders are cancelled again every
    ``every_s`` (``DELETE allOpenOrders``, weight 1) until the agent's halt call ends, however it ends
    (a hung agent's call times out; its lease's fence does the rest). Returns the sweeps made."""
    sweeps = 0
    while not agent.done():
        await asyncio.wait({agent}, timeout=every_s)
        if agent.done():
            break
        sweeps += 1
        try:
            await sweep()
        except Exception:  # noqa: BLE001 - the next sweep tries again; the agent's answer decides
            pass
    return sweeps


def keep_behind(behind: set[asyncio.Future], work: Awaitable[Any]) -> asyncio.Future:
    """``work`` run in the background, held in ``behind`` until it ends (what runs after an answer)."""
    task = asyncio.ensure_future(work)
    behind.add(task)
    task.add_done_callback(behind.discard)
    return task


def route_error(task: asyncio.Future) -> str | None:
    if not task.done():
        return "still running"
    if task.cancelled():
        return "cancelled"
    exc = task.exception()
    if exc is not None:
        return first_line(exc) if str(exc) else f"{type(exc).__name__}"
    result = task.result()
    return None if result == 0 or agent_confirmed(result) else f"answered {result!r}"


def raced_outcome(first: str | None, confirmed_ms: float | None, agent: asyncio.Future,
                  exchange: asyncio.Future, started: float) -> KillOutcome:
    """One symbol's answer to a raced halt: who confirmed 0 first and when, or why nobody did."""
    elapsed = round((time.monotonic() - started) * 1000, 1)
    answer = agent.result() if agent.done() and not agent.cancelled() and agent.exception() is None else None
    position = answer.get("position") if isinstance(answer, dict) else None
    if first is not None:
        return KillOutcome(Outcome.HALTED, PATH_OF[first], 0, position, elapsed, first=first,
                           confirmed_ms=confirmed_ms)
    left = exchange.result() if exchange.done() and exchange.exception() is None else None
    return KillOutcome(Outcome.FAILED, "emergency", left if isinstance(left, int) else None, position, elapsed,
                       problem=f"agent: {route_error(agent)}", error=f"exchange: {route_error(exchange)}")


async def write_kill_states(book: LeaseBook, symbols: list[str], state: KillState, reason: str) -> dict[str, int]:
    """The kill state made durable for every symbol (GCS writes in threads, concurrently); their seqs."""
    records = await asyncio.gather(*(asyncio.to_thread(book.set_kill_state, s, state, reason) for s in symbols))
    return {s: r.seq for s, r in zip(symbols, records)}


class DirectKill:
    """The endpoint's own kill route, for when the controller does not answer within its deadline."""

    def __init__(self, fleet_name: str, config: Callable[[], FleetConfig], calls: "ActorCalls",
                 agent_timeout_s: float, flatten_timeout_s: float = 15.0) -> None:
        self.book = LeaseBook(GcsStore(fleet_name))
        self.config = config
        self.desk = EmergencyDesk(config)   # its own clients and budget: kills only, in the risk lane
        self.calls = calls
        self.agent_timeout_s = agent_timeout_s
        self.flatten_timeout_s = flatten_timeout_s
        self.behind: set[asyncio.Future] = set()   # routes still running after the answer

    async def warm(self, symbols: list[str]) -> None:
        """The exchange clients opened (keys read) while the controller is still given its chance."""
        accounts = set()
        for s in symbols:
            try:
                accounts.add(self.config().entry(s).account)
            except Exception:  # noqa: BLE001 - a symbol added after deploy: its route reports it
                continue
        await self.desk.warm(accounts)

    async def kill(self, symbols: list[str], mode: str, reason: str, started: float | None = None) -> dict[str, Any]:
        """``started``: when the kill was asked for (monotonic; default now), the origin of its times."""
        started = time.monotonic() if started is None else started
        state = KillState.HALTED if mode == "halt" else KillState.FLATTENING
        seqs = await write_kill_states(self.book, symbols, state, reason)   # durable first
        one: Callable[[str], Awaitable[KillOutcome]] = (
            (lambda s: self._halt(s, reason, seqs[s], started)) if mode == "halt"
            else (lambda s: self._flatten(s, reason, seqs[s], started)))
        results = await asyncio.gather(*(one(s) for s in symbols))
        return {"mode": mode, "reason": reason, "by": "endpoint",
                "elapsed_ms": round((time.monotonic() - started) * 1000, 1),
                "symbols": {s: {**r.to_dict(), "by": "endpoint"} for s, r in zip(symbols, results)}}

    async def _agent(self, symbol: str, method: str, timeout: float, *args: Any) -> Any:
        ans = await self.calls.call(AGENT_PREFIX + symbol, method, timeout, *args)
        if not ans.ok:
            raise RuntimeError(ans.error)
        return ans.value

    async def _exchange(self, symbol: str) -> int:
        return await self.desk.cancel_until_empty(symbol, self.config().entry(symbol).account)

    async def _halt(self, symbol: str, reason: str, seq: int, started: float) -> KillOutcome:
        agent = asyncio.ensure_future(self._agent(symbol, "halt", self.agent_timeout_s, reason, seq))
        exchange = asyncio.ensure_future(self._exchange(symbol))
        first, confirmed_ms = await first_empty({AGENT_ROUTE: agent, EXCHANGE_ROUTE: exchange}, started)
        background = [agent, exchange]
        if first == EXCHANGE_ROUTE and not agent.done():
            account = self.config().entry(symbol).account
            background.append(asyncio.ensure_future(
                sweep_until_halted(agent, lambda: self.desk.sweep(symbol, account))))
        for task in background:
            if not task.done():
                self.behind.add(task)
                task.add_done_callback(self._settled)
        return raced_outcome(first, confirmed_ms, agent, exchange, started)

    def _settled(self, task: asyncio.Future) -> None:
        self.behind.discard(task)
        if not task.cancelled():
            task.exception()   # read, so a failed background route is not reported as never retrieved

    async def _flatten(self, symbol: str, reason: str, seq: int, started: float) -> KillOutcome:
        try:
            left = await self._exchange(symbol)
        except Exception as exc:  # noqa: BLE001 - reported per symbol
            return KillOutcome(Outcome.FAILED, "emergency", None, error=first_line(exc))
        confirmed_ms = round((time.monotonic() - started) * 1000, 1) if left == 0 else None
        try:
            answer = await self._agent(symbol, "flatten", self.flatten_timeout_s, reason, seq)
        except Exception as exc:  # noqa: BLE001 - the book is empty; the flatten is reported as not done
            return KillOutcome(Outcome.EMERGENCY_CANCELLED, "emergency", left, None,
                               round((time.monotonic() - started) * 1000, 1), problem=first_line(exc),
                               first=EXCHANGE_ROUTE, confirmed_ms=confirmed_ms)
        done = agent_confirmed(answer)
        told = answer.get("open_orders") if isinstance(answer, dict) else None   # None: superseded, not started
        return KillOutcome(Outcome.FLATTENED if done else Outcome.EMERGENCY_CANCELLED, "agent" if done else "emergency",
                           left if told is None else told,
                           answer.get("position") if isinstance(answer, dict) else None,
                           round((time.monotonic() - started) * 1000, 1), first=EXCHANGE_ROUTE,
                           confirmed_ms=confirmed_ms)
