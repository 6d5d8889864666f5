"""The simulator on a background thread, for synchronous callers (Ray drivers, ccxt, plain scripts)."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Awaitable, Callable

from fleet.sim.engine import Engine
from fleet.sim.server import SimServer


class SimThread:
    """The simulator on a background thread, for synchronous code: ``start()`` blocks until ready."""

    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = kwargs
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.server: Any = None
        self._error: BaseException | None = None

    def start(self, timeout: float = 15.0) -> "SimThread":
        self._thread = threading.Thread(target=self._run, name="fleet-sim", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("simulator thread did not start in time")
        if self._error is not None:
            raise RuntimeError(f"simulator failed to start: {self._error!r}") from self._error
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)

        async def main() -> None:
            self._stop = asyncio.Event()
            try:
                self.server = await SimServer(**self._kwargs).start()
            except BaseException as exc:  # noqa: BLE001 - handed to start()
                self._error = exc
                self._ready.set()
                return
            self._ready.set()
            await self._stop.wait()
            await self.server.stop()

        try:
            loop.run_until_complete(main())
        finally:
            loop.close()

    def call(self, fn: Callable[[], Awaitable[Any]], timeout: float = 10.0) -> Any:
        """Run a coroutine function on the simulator's loop and return its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(fn(), self._loop).result(timeout)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)

    def __enter__(self) -> "SimThread":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def rest_url(self) -> str:
        assert self.server is not None
        return self.server.rest_url

    @property
    def ws_url(self) -> str:
        assert self.server is not None
        return self.server.ws_url

    @property
    def accounts(self) -> list[tuple[str, str, str]]:
        assert self.server is not None
        return self.server.accounts

    @property
    def engine(self) -> Engine:
        """The engine lives on the simulator's thread: read it only for inspection, change it through the
        /sim routes (or :meth:`call`), never directly from another thread."""
        assert self.server is not None
        return self.server.engine
