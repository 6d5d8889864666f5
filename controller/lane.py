"""The endpoint's turns for every route but the kill's (``controller.api.kill_lane``).

Serve hands the replica every request at once (``SERVE_ONGOING``); every route but a kill's then waits
its turn here, ``AT_ONCE`` at a time, first come first served, so a kill never waits behind a flood.
The wait is bounded twice, or a flood would only move from Serve's queue to this one: at most
``QUEUE`` requests wait (beyond, a 503 at once), each at most ``WAIT_S`` (then a 503). Without the
bounds, 64 sign-ins whose body never came held every turn for good and each request behind them stayed
one of Serve's ongoing requests until its 4,096 were taken, and a kill waited in Serve's queue again.
The console's sign-in, the one route that reads a body without a token, has a lane of its own
(``SIGNIN``): sign-ins stalled on their bodies, each given up after ``bodies.BODY_WAIT_S`` and sent
again, starve only other sign-ins.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import AsyncIterator

log = logging.getLogger("mmfleet.api")

AT_ONCE = 64
QUEUE = 1024
WAIT_S = 15.0
SIGNIN = {"at_once": 8, "queue": 64, "wait_s": 5.0}
SAY_EVERY_S = 10.0   # the requests turned away are said at once, then at most this often


class Busy(Exception):
    """No turn for this request: ``reason`` says why, for the 503's body."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Lane:
    """``at_once`` turns, at most ``queue`` requests waiting for one, each at most ``wait_s``."""

    def __init__(self, name: str = "the endpoint", at_once: int = AT_ONCE, queue: int = QUEUE,
                 wait_s: float = WAIT_S) -> None:
        self.name = name
        self._turns = asyncio.Semaphore(at_once)
        self.queue = queue
        self.wait_s = wait_s
        self.waiting = 0
        self.turned_away = 0   # requests answered 503
        self._said = 0
        self._last = ""   # the last reason given
        self._saying: asyncio.TimerHandle | None = None

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        if self.waiting >= self.queue:
            raise self._busy(f"{self.name} is flooded: {self.waiting} requests wait for a turn; try again "
                             f"(a kill never waits)")
        self.waiting += 1
        try:
            async with asyncio.timeout(self.wait_s) as wait:
                await self._turns.acquire()
        except TimeoutError:
            if not wait.expired():
                raise
            raise self._busy(f"no turn of {self.name} within {self.wait_s:g} s ({self.waiting} requests "
                             f"waiting); try again (a kill never waits)") from None
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self._turns.release()

    def _busy(self, reason: str) -> Busy:
        """A request turned away: counted, and said in the log (the first at once, then every ``SAY_EVERY_S``
        while more come)."""
        self.turned_away += 1
        self._last = reason
        if self._saying is None:
            log.warning("a request turned away (503): %s", reason)
            self._said = self.turned_away
            self._saying = asyncio.get_running_loop().call_later(SAY_EVERY_S, self._say)
        return Busy(reason)

    def _say(self) -> None:
        self._saying = None
        if self.turned_away > self._said:
            log.warning("%d more requests turned away (503) in %g s; the last: %s", self.turned_away - self._said,
                        SAY_EVERY_S, self._last)
            self._said = self.turned_away
            self._saying = asyncio.get_running_loop().call_later(SAY_EVERY_S, self._say)
