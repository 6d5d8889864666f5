"""Shared fixtures: the exchange simulator on a free loopback port, for every area's tests.

``sim`` is a running :class:`fleet.sim.server.SimServer` (ETHUSDC, BTCUSDT, SOLUSDT; seed 7; account
"main"); ``sim_factory(**kwargs)`` starts one with special config (same arguments as SimServer);
``sim_thread`` is the same simulator on a background thread, for synchronous code.
"""

from __future__ import annotations

import os
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

# Every Ray cluster the tests start (in this process or in a `python -m fleet up` child) listens on
# loopback only: Ray reads this when it is imported (see fleet.ops.fleet_cli.LOOPBACK_ENV).
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"

import pytest
import pytest_asyncio

from fleet.sim.server import SimServer
from fleet.sim.thread import SimThread

DEFAULT_SYMBOLS = ["ETHUSDC", "BTCUSDT", "SOLUSDT"]


@pytest_asyncio.fixture
async def sim_factory() -> AsyncIterator[Callable[..., Awaitable[SimServer]]]:
    started: list[SimServer] = []

    async def make(**kwargs: Any) -> SimServer:
        kwargs.setdefault("symbols", DEFAULT_SYMBOLS)
        kwargs.setdefault("host", "127.0.0.1")
        kwargs.setdefault("port", 0)
        server = await SimServer(**kwargs).start()
        started.append(server)
        return server

    yield make
    for server in started:
        await server.stop()


@pytest_asyncio.fixture
async def sim(sim_factory: Callable[..., Awaitable[SimServer]]) -> SimServer:
    return await sim_factory()


@pytest.fixture
def sim_thread() -> Iterator[SimThread]:
    thread = SimThread(symbols=DEFAULT_SYMBOLS, seed=7, host="127.0.0.1", port=0).start()
    try:
        yield thread
    finally:
        thread.stop()


@pytest.fixture(scope="session")
def ray_cluster():
    """One private local Ray cluster for the whole session (starting Ray costs ~8 s on two cores; tests
    isolate themselves by fleet name / namespace); never attaches to a developer's running cluster."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")
    yield ray
    ray.shutdown()
