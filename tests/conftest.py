"""Shared fixtures: the exchange simulator on a free loopback port, for every area's tests.

``make test`` runs the suite on two pytest-xdist workers (most tests wait on sockets and timers, not
the CPU). Each worker takes whole modules, so a module's fixtures are made once; the modules in
``RAY_MODULES`` (every test that joins or starts a Ray cluster) go to one worker together and run one
after another: one cluster at a time on two cores.

``sim`` is a running :class:`fleet.sim.server.SimServer` (ETHUSDC, BTCUSDT, SOLUSDT; seed 7; account
"main"); ``sim_factory(**kwargs)`` starts one with special config (same arguments as SimServer);
``sim_thread`` is the same simulator on a background thread, for synchronous code.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

# Every Ray cluster the tests start (in this process or in a `python -m fleet up` child) listens on
# loopback only: Ray reads this when it is imported (see fleet.ops.fleet_cli.LOOPBACK_ENV).
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
# The IP's holds the agents of a host share (fleet/binance/host_holds.py) stay the test run's own: a
# simulator's ban is not read by a later run's simulator on the same port.
os.environ.setdefault("MMFLEET_HOST_HOLDS_DIR", tempfile.mkdtemp(prefix="mmfleet-holds-"))

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


# The modules whose tests start or join a Ray cluster (``ray_cluster``, a cluster of their own, or a
# ``fleet up`` child that starts one).
RAY_MODULES = frozenset(f"tests/{m}.py" for m in (
    "controller/test_api", "controller/test_api_fleet", "controller/test_console", "controller/test_controller_leases",
    "controller/test_dashboard",
    "controller/test_fleet", "controller/test_fleet_cli", "controller/test_fleet_down_killed",
    "controller/test_fleet_up_cli", "controller/test_fleet_zombie",
    "controller/test_gcs_ft", "controller/test_kill_paths", "controller/test_multinode", "simulate/test_sweep",
))
RAY_UNIT = "ray"


def work_unit(nodeid: str) -> str:
    """What one xdist worker runs as a whole: the Ray modules together, any other module by itself."""
    module = nodeid.split("::", 1)[0]
    return RAY_UNIT if module in RAY_MODULES else module


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    from xdist.scheduler import LoadScopeScheduling

    class ByWorkUnit(LoadScopeScheduling):
        """Units go out largest first (by test count): the Ray unit, the longest, starts at once."""

        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return ByWorkUnit(config, log)


def pytest_runtest_setup(item: pytest.Item) -> None:
    if "ray_cluster" in getattr(item, "fixturenames", ()) and work_unit(item.nodeid) != RAY_UNIT:
        pytest.fail(f"{item.nodeid} uses ray_cluster: add its module to RAY_MODULES in tests/conftest.py")


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
