"""The endpoint's Ray calls: to the controller and the agent actors, each with a timeout.

Every failure becomes an :class:`Answer` saying what went wrong (no actor, no answer in time, the
actor refused the arguments, the actor failed), so one stuck agent is reported instead of stalling
a page; :meth:`ActorCalls.from_controller` turns a failed controller call into the HTTP status it
deserves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

from fastapi import HTTPException

from agents.publish import read_published, read_snapshots
from controller.controller import AGENT_PREFIX, CONTROLLER_NAME
from fleet.text import first_line

log = logging.getLogger("mmfleet.api")

# Threads of the endpoint's own for looking actors up: a lookup waits on the GCS (up to 60 s while it is
# down or hung). On the event loop it held every route, a kill's exchange route among them; in the
# loop's default pool (6 threads on 2 cores) a few hung lookups held the kill state's write behind them.
# A call's lookup (a kill's) has threads apart from the pages' look-ups of every agent ahead of time.
LOOKUP_THREADS = 4
AHEAD_THREADS = 2
ABSENT_S = 2.0   # a name the GCS said has no actor is answered so, without asking again, this long


@dataclass(frozen=True)
class Answer:
    """One actor's answer to one call, or why there is none."""

    value: Any = None
    error: str | None = None
    elapsed_s: float = 0.0
    refused: bool = False   # the actor answered by refusing the arguments (ValueError, LookupError)
    raised: bool = False    # the actor answered by failing otherwise

    @property
    def ok(self) -> bool:
        return self.error is None

    def mapping(self) -> dict[str, Any] | None:
        """The answer when it is a mapping (what every view call returns), else None."""
        return self.value if self.ok and isinstance(self.value, dict) else None


class ActorCalls:
    """Handles of one fleet's actors (cached, dropped when an actor is gone) and calls to them."""

    def __init__(self, namespace: str, agent_timeout_s: float, controller_timeout_s: float,
                 page_wait_s: float | None = None) -> None:
        self.namespace = namespace
        self.agent_timeout_s = agent_timeout_s
        self.controller_timeout_s = controller_timeout_s
        self.page_wait_s = agent_timeout_s if page_wait_s is None else page_wait_s   # a page's wait for each agent
        self.handles: dict[str, Any] = {}       # actor name -> handle
        self._lookups = ThreadPoolExecutor(LOOKUP_THREADS, thread_name_prefix="actor-lookup")
        self._ahead = ThreadPoolExecutor(AHEAD_THREADS, thread_name_prefix="actor-lookup-ahead")
        self._pending: dict[str, asyncio.Future[Any]] = {}   # a name's lookup under way, shared by its callers
        self._absent: dict[str, float] = {}     # name -> until when it is known to have no actor

    def absent(self, name: str) -> bool:
        """The GCS said, within ``ABSENT_S``, that ``name`` has no actor."""
        return self._absent.get(name, 0.0) > time.monotonic()

    async def handle(self, name: str, timeout: float, *, ahead: bool = False) -> Any:
        """The handle of actor ``name``: cached, or looked up in a lookup thread within ``timeout`` (ValueError:
        no such actor; asyncio.TimeoutError: no answer in time). One lookup a name at a time, its callers
        sharing it; it goes on past a caller's timeout and its answer is kept (a hung GCS holds at most
        one thread a name, and a call asked later finds it). ``ahead``: a look-up ahead of any call (in
        the threads kept for those)."""
        handle = self.handles.get(name)
        if handle is not None:
            return handle
        if self.absent(name):
            raise ValueError(f"no actor {name}")
        pending = self._pending.get(name)
        if pending is None:
            import ray

            look_up = partial(ray.get_actor, name, namespace=self.namespace)
            pending = asyncio.get_running_loop().run_in_executor(self._ahead if ahead else self._lookups, look_up)
            self._pending[name] = pending
            pending.add_done_callback(partial(self._looked_up, name))
        return await asyncio.wait_for(asyncio.shield(pending), timeout)

    def _looked_up(self, name: str, done: asyncio.Future[Any]) -> None:
        """A lookup's answer, kept (on the loop)."""
        self._pending.pop(name, None)
        if done.cancelled():
            return
        exc = done.exception()
        if exc is None:
            self.handles.setdefault(name, done.result())
            self._absent.pop(name, None)
        elif isinstance(exc, ValueError):
            self._absent[name] = time.monotonic() + ABSENT_S

    async def resolve(self, names: list[str], timeout: float | None = None) -> int:
        """Look up the handles of ``names`` not cached yet, within ``timeout`` (the agents' timeout by
        default; lookups not done by then go on), so that a call that cannot wait (a kill) finds them:
        a first lookup waits on the GCS and loads the actor's class (at 50 agents, some 100 ms of a
        first kill). How many of ``names`` have a handle now."""
        missing = [n for n in names if n not in self.handles]
        if missing:
            wait = self.agent_timeout_s if timeout is None else timeout
            await asyncio.gather(*(self.handle(n, wait, ahead=True) for n in missing), return_exceptions=True)
        return sum(1 for n in names if n in self.handles)

    async def call(self, name: str, method: str, timeout: float, *args: Any) -> Answer:
        """Call ``name.method(*args)``; every failure becomes an :class:`Answer` saying what went wrong."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        started = time.monotonic()

        def failed(msg: str, refused: bool = False, raised: bool = False) -> Answer:
            return Answer(error=msg, elapsed_s=time.monotonic() - started, refused=refused, raised=raised)

        try:
            handle = await self.handle(name, timeout)
        except ValueError:
            return failed(f"no actor {name} in namespace {self.namespace}")
        except asyncio.TimeoutError:
            return failed(f"{name} was not looked up within {timeout:g} s (the GCS busy, hung or down)")
        except Exception as exc:  # noqa: BLE001 - a lookup's own failure (the GCS, a shutdown) is reported too
            return failed(f"{name} was not looked up: {type(exc).__name__}: {first_line(exc)}")
        try:
            ref = getattr(handle, method).remote(*args)
            value = await asyncio.wait_for(ref, max(timeout - (time.monotonic() - started), 0.001))
        except RayActorError as exc:
            self.handles.pop(name, None)
            return failed(f"{name} is unavailable: {first_line(exc)}")
        except RayTaskError as exc:
            cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else exc
            if isinstance(cause, ValueError | LookupError):
                return failed(f"{name}.{method} refused: {first_line(cause)}", refused=True)
            return failed(f"{name}.{method} failed: {type(cause).__name__}: {first_line(cause)}", raised=True)
        except ray.exceptions.RayError as exc:   # (before TimeoutError: Ray's GetTimeoutError is one too)
            return failed(f"{name}.{method} failed: {first_line(exc)}")
        except asyncio.TimeoutError:
            return failed(f"{name}.{method} did not answer within {timeout:g} s")
        except Exception as exc:  # noqa: BLE001 - an agent's own error is reported, not raised
            return failed(f"{name}.{method} failed: {type(exc).__name__}: {first_line(exc)}")
        return Answer(value=value, elapsed_s=time.monotonic() - started)

    async def agents(self, method: str, symbols: tuple[str, ...],
                     alive: Mapping[str, int] | None = None) -> dict[str, Answer]:
        """``method`` of every symbol's agent, concurrently, each waited for ``page_wait_s``; with ``alive``
        (from :meth:`alive`), an agent Ray does not hold alive (its process not started yet, restarting,
        gone) is answered at once instead of waited for: while 50 agents start, a page is not held for
        the whole wait."""
        async def ask(s: str) -> Answer:
            if alive is not None and s not in alive:
                return Answer(error=f"no actor {AGENT_PREFIX}{s} alive in namespace {self.namespace} "
                                    "(not started yet, restarting or gone)")
            return await self.call(AGENT_PREFIX + s, method, self.page_wait_s)

        answers = await asyncio.gather(*(ask(s) for s in symbols))
        return dict(zip(symbols, answers))

    async def controller(self, method: str, *args: Any, timeout: float | None = None) -> Answer:
        return await self.call(CONTROLLER_NAME, method, timeout or self.controller_timeout_s, *args)

    async def from_controller(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        """The controller's answer, or the HTTP error it deserves (422 refused, 502 failed, 503 unreachable)."""
        return self.value_of(await self.controller(method, *args, timeout=timeout))

    @staticmethod
    def value_of(ans: Answer) -> Any:
        """A controller's answer's value, or the HTTP error it deserves."""
        if ans.refused:
            raise HTTPException(422, f"the fleet controller refused: {ans.error}")
        if ans.raised:
            raise HTTPException(502, f"the fleet controller failed: {ans.error}")
        if not ans.ok:
            raise HTTPException(503, f"fleet controller not reachable: {ans.error}")
        return ans.value

    async def published(self, fleet_name: str, symbols: tuple[str, ...]) -> dict[str, Any] | str:
        """The agents' published expositions (``agents/publish.py``: one GCS call), or why there are none."""
        return await self._read_published(read_published, "expositions", fleet_name, symbols)

    async def snapshots(self, fleet_name: str, symbols: tuple[str, ...]) -> dict[str, Any] | str:
        """The agents' published status and exposure (one GCS call), or why there are none."""
        return await self._read_published(read_snapshots, "statuses", fleet_name, symbols)

    async def last_published(self, fleet_name: str, silent: tuple[str, ...], context: str) -> dict[str, Any]:
        """What the ``silent`` agents last published (one GCS read); {} when none or unreadable (logged,
        ``context`` first)."""
        if not silent:
            return {}
        found = await self.snapshots(fleet_name, silent)
        if isinstance(found, str):
            log.warning("%s: %s", context, found)
            return {}
        return found

    async def _read_published(self, read: Any, what: str, fleet_name: str, symbols: tuple[str, ...]) -> dict[str, Any] | str:
        try:
            return await asyncio.wait_for(asyncio.to_thread(read, fleet_name, list(symbols)), self.agent_timeout_s)
        except asyncio.TimeoutError:
            return f"the published {what} were not read within {self.agent_timeout_s:g} s"
        except Exception as exc:  # noqa: BLE001 - the page still renders, without them
            return f"the published {what} were not readable: {first_line(exc)}"

    async def alive(self, symbols: tuple[str, ...]) -> dict[str, int] | None:
        """The symbols whose agent Ray holds ALIVE, with its restart count as the GCS records it (the
        agents themselves cannot know), in one GCS call; None when the GCS did not say."""
        names = [AGENT_PREFIX + s for s in symbols]
        await self.resolve(names)   # the handles not cached yet, looked up off the loop
        if any(n not in self.handles and not self.absent(n) for n in names):
            return None   # a lookup the GCS did not answer in time: it did not say
        ids = {s: h._actor_id.hex() for s in symbols if (h := self.handles.get(AGENT_PREFIX + s)) is not None}
        if not ids:
            return {}

        def lookup() -> dict[str, int]:
            from ray._private import state

            alive = state.actors(actor_state_name="ALIVE")   # one GCS call for the whole fleet
            return {
                sym: int(alive[actor_id].get("NumRestarts", 0)) for sym, actor_id in ids.items() if actor_id in alive
            }

        try:
            found = await asyncio.wait_for(asyncio.to_thread(lookup), self.agent_timeout_s)
        except Exception as exc:  # noqa: BLE001 - restarts are informative; the page still renders
            log.warning("restart counts unavailable: %s", first_line(exc))
            return None
        for sym in ids.keys() - found.keys():
            self.handles.pop(AGENT_PREFIX + sym, None)   # looked up afresh next time (a new actor, perhaps)
        return found

    async def restarts(self, symbols: tuple[str, ...]) -> dict[str, int]:
        """Restart counts of the agents Ray holds alive (see :meth:`alive`); empty when unknown."""
        return await self.alive(symbols) or {}


class ControllerWatch:
    """The endpoint's own ping of the controller every ``every_s``, so that ``/metrics`` says whether it
    answers without waiting on it (a stopped controller cost every scrape ``timeout_s``): its last
    answer, and when."""

    def __init__(self, calls: ActorCalls, timeout_s: float, every_s: float = 2.0) -> None:
        self.calls = calls
        self.timeout_s = timeout_s
        self.every_s = every_s
        self.seen: tuple[Answer, float] | None = None

    async def ping(self) -> Answer:
        """The controller pinged; its handle looked up in a thread (a GCS call must not hold the loop,
        which runs the kills), so one that is gone is answered without a call."""
        if await self.calls.resolve([CONTROLLER_NAME]):
            answer = await self.calls.controller("ping", timeout=self.timeout_s)
        else:
            answer = Answer(error=f"no actor {CONTROLLER_NAME} in namespace {self.calls.namespace}")
        self.seen = (answer, time.time())
        return answer

    async def run(self) -> None:
        failures = 0
        while True:
            try:
                await self.ping()
                failures = 0
            except Exception as exc:  # noqa: BLE001 - the watch outlives any one failure; the page shows it
                failures += 1
                self.seen = (Answer(error=f"the ping failed: {first_line(exc)}"), time.time())
                if failures in (1, 10) or failures % 100 == 0:
                    log.warning("controller watch: the ping failed (%d in a row): %s", failures, first_line(exc))
            await asyncio.sleep(self.every_s)

    def up(self) -> bool:
        """The controller answered its last ping, and that ping is recent (the watch runs)."""
        if self.seen is None:
            return False
        answer, at = self.seen
        return answer.ok and time.time() - at <= 2 * self.every_s + self.timeout_s

    def unkilled(self) -> dict[str, dict[str, Any]]:
        """The hung agents the controller's last ping named as outliving Ray's kill (symbol -> epoch, pid,
        node, since); none known while the controller does not answer."""
        if not self.up():
            return {}
        found = (self.seen[0].mapping() or {}).get("unkilled") if self.seen else None
        return {s: v for s, v in found.items() if isinstance(v, dict)} if isinstance(found, dict) else {}

    def view(self) -> dict[str, Any]:
        if self.seen is None:
            return {"up": False, "pinged_s_ago": None, "error": "not pinged yet"}
        answer, at = self.seen
        return {"up": self.up(), "pinged_s_ago": round(time.time() - at, 1), "error": answer.error}
