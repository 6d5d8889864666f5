"""The runtime's clock, injected: the agent reads time and sleeps only through it.

:class:`WallClock` is the real one (a monotonic clock for intervals, the wall clock in exchange
milliseconds, ``asyncio.sleep``). A simulated clock implements the same three methods to run the
agent's own timing (leases, dead-man heartbeats, staleness, look-ups past recvWindow) faster than
real time.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (intervals, deadlines)."""
        ...

    def time_ms(self) -> int:
        """Milliseconds since the epoch (the exchange's time, before the learned offset)."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class WallClock:
    """The real clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time_ms(self) -> int:
        return int(time.time() * 1000)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


WALL_CLOCK = WallClock()
