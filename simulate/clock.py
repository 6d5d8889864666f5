"""Simulated time: an asyncio event loop whose clock jumps to the next timer instead of waiting.

The agent's runtime awaits ``asyncio.sleep``, ``asyncio.wait_for`` and its injected
:class:`~agents.clock.Clock`; on :class:`VirtualTimeLoop` all of them run on the loop's own clock,
which stands still while callbacks run and, when nothing is ready, moves straight to the earliest
scheduled timer. Nothing in the run touches a socket, so a simulated hour costs only the work done
in it. The order of callbacks is asyncio's (ready queue, then timers by due time), with ties of due
time broken in the order the timers were scheduled (:class:`_Timer`; asyncio's heap leaves them to
its shape, so one more timer anywhere, a progress bar's, reordered others and changed a seed's
numbers), so a run is deterministic for a given seed, whatever else watches it.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import selectors
from asyncio import events
from typing import Any, Callable, Coroutine, TypeVar

T = TypeVar("T")


class SimulationStalled(RuntimeError):
    """Nothing is ready and no timer is set: in simulated time the run would wait forever."""


class _VirtualSelector(selectors.BaseSelector):
    """The real selector polled without waiting; a wait is a jump of the loop's clock."""

    def __init__(self) -> None:
        self._real = selectors.DefaultSelector()
        self.loop: VirtualTimeLoop | None = None

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def get_map(self) -> Any:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        # Nothing here waits on a socket: the only registered file is the loop's self-pipe, which
        # wakes a blocked select after call_soon_threadsafe (the callback is already in the ready
        # queue), so it is never polled and a select costs no system call.
        if timeout == 0:
            return []
        loop = self.loop
        assert loop is not None
        if timeout is None:
            raise SimulationStalled("no callback is ready and no timer is set: the simulated run cannot go on")
        loop._advance_to_next_timer(timeout)
        return []


class _Timer(events.TimerHandle):
    """A timer ordered by due time, then by the order it was scheduled in (``heapq`` reads ``<`` only)."""

    __slots__ = ("_seq",)

    def __init__(self, when: float, callback: Callable[..., Any], args: tuple, loop: Any, context: Any,
                 seq: int) -> None:
        super().__init__(when, callback, args, loop, context)
        self._seq = seq

    def __lt__(self, other: Any) -> bool:
        return self._when < other._when or (self._when == other._when and self._seq < other._seq)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop on simulated seconds, starting at ``start`` (seconds, any origin)."""

    def __init__(self, start: float = 0.0) -> None:
        selector = _VirtualSelector()
        super().__init__(selector)
        selector.loop = self
        self._now = float(start)
        self._timer_seq = itertools.count()

    def time(self) -> float:
        return self._now

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any, context: Any = None) -> _Timer:
        """asyncio's ``call_at`` (``call_later`` and every sleep come here), its timer a :class:`_Timer`."""
        if when is None:
            raise TypeError("when cannot be None")
        self._check_closed()
        if self._debug:
            self._check_thread()
            self._check_callback(callback, "call_at")
        timer = _Timer(when, callback, args, self, context, next(self._timer_seq))
        if timer._source_traceback:
            del timer._source_traceback[-1]
        heapq.heappush(self._scheduled, timer)
        timer._scheduled = True
        return timer

    def _advance_to_next_timer(self, timeout: float) -> None:
        scheduled = self._scheduled  # asyncio's heap of TimerHandles (cancelled heads already popped)
        target = self._now + timeout
        if scheduled:
            target = max(target, scheduled[0].when())  # land exactly on the due time, float-safe
        self._now = target


class SimClock:
    """:class:`agents.clock.Clock` on a :class:`VirtualTimeLoop`: exchange milliseconds from ``epoch_ms``."""

    def __init__(self, loop: VirtualTimeLoop, epoch_ms: int) -> None:
        self._loop = loop
        self._origin = loop.time()
        self.epoch_ms = int(epoch_ms)

    def monotonic(self) -> float:
        return self._loop.time()

    def time_ms(self) -> int:
        return self.epoch_ms + int(round((self._loop.time() - self._origin) * 1000.0))

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def run_simulated(main: Coroutine[Any, Any, T], start: float = 0.0) -> T:
    """``asyncio.run`` on a :class:`VirtualTimeLoop`: run ``main``, then cancel what it left running."""
    loop = VirtualTimeLoop(start)
    try:
        return loop.run_until_complete(main)
    finally:
        try:
            loop.run_until_complete(_cancel_others())
        finally:
            loop.close()


async def _cancel_others() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
