"""The agent's tasks: its loops and one-off jobs spawned and named, a loop that fails logged and
restarted (after its quotes are pulled), the timers' sleeps that the stop cuts short, and the end.

A part of :class:`agents.agent.SymbolAgent`; it owns the task list and the sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any, Awaitable, Callable

if TYPE_CHECKING:
    from .agent import SymbolAgent

# The loops of a started agent, in the order they are spawned; "renew" starts with the grant.
LOOPS = ("market", "user", "quote", "deadman", "keepalive", "watchdog", "reconcile", "renew")
# The stop cancels a task that has not ended this long after its cancellation again, so many times at most.
CANCEL_AGAIN_S = 1.0
CANCEL_ROUNDS = 5


class Tasks:
    """Spawned, named, restarted when a loop fails, cancelled together at the stop."""

    def __init__(self, agent: SymbolAgent) -> None:
        self.agent = agent
        self._tasks: list[asyncio.Task] = []
        self._sleepers: set[asyncio.Future] = set()

    def loop(self, name: str) -> Callable[[], Awaitable[None]]:
        """The coroutine function of one of the ``LOOPS``."""
        a = self.agent
        return {
            "market": a.market.loop, "user": a.user.loop, "quote": a.timers.quote_loop,
            "deadman": a.timers.deadman_loop, "keepalive": a.user.keepalive_loop,
            "watchdog": a.timers.watchdog_loop, "reconcile": a.reconciler.loop, "renew": a.timers.renew_loop,
        }[name]

    def spawn(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.append(task)
        task.add_done_callback(self._done)

    def named(self, *names: str) -> list[asyncio.Task]:
        return [t for t in self._tasks if t.get_name() in names]

    def _done(self, task: asyncio.Task) -> None:
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)
        if task.cancelled():
            return
        exc = task.exception()
        a = self.agent
        if exc is not None and not a.stopping:
            name = task.get_name()
            a.log.event("task_failed", f"task {name} failed: {exc!r}", level=logging.ERROR)
            if name in LOOPS:
                # a loop must never die silently: stop quoting, then restart it
                a.sender.pull_quotes(f"{name} loop failed")
                self.spawn(self.loop(name)(), name)

    async def sleep(self, seconds: float, wake: asyncio.Event | None = None) -> bool:
        """Sleep ``seconds`` on the injected clock, or less: the stop wakes every such sleep at once,
        and ``wake``, if given, once it is set. Whether ``wake`` ended it."""
        if wake is not None and wake.is_set():
            return True
        if self.agent.stopping or seconds <= 0:
            return False
        sleep = asyncio.ensure_future(self.agent.clock.sleep(seconds))
        self._sleepers.add(sleep)
        woken = asyncio.ensure_future(wake.wait()) if wake is not None else None
        try:
            # returns when the sleep ends, the stop cancels it or ``wake`` is set
            await asyncio.wait((sleep, woken) if woken is not None else (sleep,), return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._sleepers.discard(sleep)
            sleep.cancel()  # (this task itself was cancelled)
            if woken is not None:
                woken.cancel()
        return woken is not None and woken.done() and not woken.cancelled()

    def wake_sleepers(self) -> None:
        """The stop: the timers' loops see it now, not at their next beat."""
        for sleep in list(self._sleepers):
            sleep.cancel()

    async def cancel_all(self, also: set[asyncio.Task]) -> None:
        """The stop's end: every task of the agent, and ``also`` (requests in flight), cancelled and awaited.

        A task may swallow a cancellation: ``asyncio.wait_for`` on Python 3.11 returns the result of an
        inner call that finished as the cancellation came (the lease's renewal: its loop then went on
        renewing, and a stop waited for it until the controller gave up, 25 s, in a drill). What has not
        ended ``CANCEL_AGAIN_S`` later is cancelled again, ``CANCEL_ROUNDS`` times at most, then named."""
        tasks = [*self._tasks, *also]
        left = {t for t in tasks if not t.done()}
        for _ in range(CANCEL_ROUNDS):
            if not left:
                break
            for task in left:
                task.cancel()
            _, left = await asyncio.wait(left, timeout=CANCEL_AGAIN_S)
        for task in tasks:
            if task.done() and not task.cancelled():
                task.exception()   # retrieved: the stop has no use for it
        if left:
            names = ", ".join(sorted(t.get_name() for t in left))
            self.agent.log.event("tasks_not_ended", f"tasks still running after the stop cancelled them "
                                 f"{CANCEL_ROUNDS} times: {names}", level=logging.ERROR)
