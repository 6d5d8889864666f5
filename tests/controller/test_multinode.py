"""The fleet on a local Ray cluster of several nodes: a head that runs no agents (0 CPU, no
``mmfleet_trader``) and two worker raylets offering ``mmfleet_trader``, all on 127.0.0.1 (the
loopback setting is in the environment before Ray is imported: tests/conftest.py).

The exchange is the simulator on a thread of this process, so it outlives any node; the controller
is created by this driver on the head. A worker node is then stopped (its raylet and workers,
``Cluster.remove_node``): its agents come back on the other worker with larger epochs, the old
epochs' orders are cancelled at the exchange, no client order id is used twice, and a kill during
and after the move empties the books at /sim/state. Last, a node's raylet hangs while its agents run
on (SIGSTOP of the raylet alone): Ray finds the node dead and restarts the agents elsewhere, and the
old processes, which go on renewing, are unseated: their leases revoked, their orders cancelled, the
restarted agents quoting with larger epochs, never two epochs on a book. (The head checks the nodes'
health every second here, a node dead after some 5 s without an answer; Ray's default takes a minute.)

This module needs a cluster of its own: it stops the session's local cluster (tests/controller/
conftest.py) for its duration and starts an equivalent one again afterwards. Waits poll generous
deadlines; nothing here asserts a duration.
"""

from __future__ import annotations

import collections
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

from controller.controller import ControllerSettings, build_spec, get_or_create_controller, remove_controller
from fleet.config import FleetConfig
from tests.controller.test_fleet import CONFIGS, DEMO_HARD_CAPS, Exchange, _epoch, free_port, poll

SYMBOLS = ("BTCUSDT", "SOLUSDT")
TRADER = "mmfleet_trader"
SETTLE_S = 90.0   # an agent moved to a new node: restart, lease, resync, quotes (two busy cores)
SMALL_STORE = 100 * 1024 * 1024  # each node's object store (Ray's default is 30 % of the memory)


def restore_session_cluster(was_up: bool) -> None:
    """Start the session's local cluster again (the same arguments as tests/controller/conftest.py)."""
    import ray

    if was_up and not ray.is_initialized():
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")


def own_cluster() -> bool:
    """Leave the session's cluster (if this process runs one) so that the driver can join another."""
    import ray

    was_up = ray.is_initialized()
    if was_up:
        ray.shutdown()
    return was_up


def fleet_doc(name: str, state_dir: Path, exchange: dict[str, Any], key_file: str,
              symbols: tuple[str, ...] = SYMBOLS) -> FleetConfig:
    return FleetConfig.model_validate({
        "name": name,
        "exchange": exchange,
        "accounts": [{"name": "main", "key_file": key_file}],
        "symbols": [{"symbol": s, "account": "main", "params_file": f"symbols/{s}.yaml",
                     "net_max_hard_cap": DEMO_HARD_CAPS.get(s)} for s in symbols],
        "api": {"host": "127.0.0.1", "port": free_port(), "token_env": None},
        # One agent slot each on the trader nodes; a sliver of CPU so that a 1-CPU node takes several.
        "agent": {"num_cpus": 0.05, "resources": {TRADER: 1}},
        "state_dir": str(state_dir),
    })


def start_exchange(state_dir: Path, symbols: tuple[str, ...]) -> tuple[Any, dict[str, Any], str]:
    """The simulator on a thread of the test process: (thread, the fleet's exchange section, key file)."""
    import yaml

    from fleet.sim.config import AccountSpec, load_sim_config
    from fleet.sim.thread import SimThread
    from fleet.ops.simhost import write_sim_keys

    key_file = str(write_sim_keys(state_dir / "main.sim-keys.yaml"))
    keys = yaml.safe_load(Path(key_file).read_text())
    config = load_sim_config(None).model_copy(update={"accounts": (
        AccountSpec(name="main", api_key=keys["api_key"], api_secret=keys["api_secret"]),)})
    sim = SimThread(symbols=list(symbols), seed=5, host="127.0.0.1", port=0, config=config).start()
    rest, ws = sim.server.rest_url, sim.server.ws_url
    exchange = {"kind": "sim", "sim": {"seed": 5}, "rest_url": rest, "ws_market_url": ws, "ws_user_url": ws}
    return sim, exchange, key_file


@dataclass
class Fleet:
    """A fleet driven through its controller (no HTTP endpoint: the Ray calls are the subject here)."""

    ray: Any
    cfg: FleetConfig
    spec: dict[str, Any]
    exchange: Exchange
    controller: Any = None
    symbols: tuple[str, ...] = SYMBOLS
    last_seen: dict[str, Any] = field(default_factory=dict)

    def start(self, settings: ControllerSettings) -> None:
        self.controller = get_or_create_controller(self.cfg, settings)
        self.ray.get(self.controller.apply.remote({**self.spec, "fleet": self.cfg.model_dump(mode="json")}),
                     timeout=180)

    def stop(self) -> None:
        try:
            self.ray.get(self.controller.down.remote(False), timeout=120)
        finally:
            remove_controller(self.cfg.namespace)   # and its spawner

    def agent(self, symbol: str) -> Any:
        return self.ray.get_actor(f"agent.{symbol}", namespace=self.cfg.namespace)

    def status(self, symbol: str) -> dict[str, Any]:
        return self.ray.get(self.agent(symbol).status.remote(), timeout=15)

    def node_of(self, symbol: str) -> str:
        """The Ray node id the symbol's agent runs on now."""
        return self.ray.get(self.agent(symbol).__ray_call__.remote(
            lambda self: __import__("ray").get_runtime_context().get_node_id()), timeout=15)

    def kill(self, symbols: list[str] | None = None, reason: str = "test drill") -> dict[str, Any]:
        return self.ray.get(self.controller.kill.remote(symbols, "halt", reason), timeout=120)

    def resume(self, symbols: list[str] | None = None) -> dict[str, Any]:
        return self.ray.get(self.controller.resume.remote(symbols), timeout=60)

    def kill_states(self) -> dict[str, Any]:
        return self.ray.get(self.controller.kill_states.remote(), timeout=30)

    def quoting(self, symbols: tuple[str, ...] | None = None, *, newer_than: dict[str, int] | None = None,
                timeout: float = SETTLE_S) -> dict[str, dict[str, Any]]:
        """Poll until every symbol's agent quotes at the exchange with only its own epoch's orders."""
        wanted = symbols or self.symbols

        def check() -> dict[str, dict[str, Any]] | None:
            seen = {}
            for s in wanted:
                st = self.status(s)
                orders = self.exchange.open_orders(s)
                seen[s] = {"state": st.get("state"), "epoch": st.get("epoch"), "orders": len(orders),
                           "epochs": sorted({_epoch(o) for o in orders}, key=str)}
                if st.get("state") != "quoting" or not orders or not st.get("epoch"):
                    break
                if newer_than and st["epoch"] <= newer_than.get(s, 0):
                    break
                if any(_epoch(o) != st["epoch"] for o in orders):
                    break
                seen[s].update(status=st, open_orders=orders)
            else:
                return seen
            self.last_seen = seen
            return None

        return poll(check, timeout, lambda: f"every agent quoting with its own epoch only ({self.last_seen})")

    def books_empty(self, timeout: float = 60.0) -> None:
        def empty() -> bool:
            left = {s: len(self.exchange.open_orders(s)) for s in self.symbols}
            self.last_seen = left
            return not any(left.values())

        poll(empty, timeout, lambda: f"every book empty at /sim/state ({self.last_seen})")


def no_duplicate_ids(exchange: Exchange, symbol: str, since_ms: int) -> collections.Counter[str]:
    """Client order ids the exchange saw more than once for the symbol since ``since_ms``."""
    counts = collections.Counter(o["clientOrderId"] for o in exchange.all_orders(symbol, since_ms))
    return collections.Counter({cid: n for cid, n in counts.items() if n > 1})


@dataclass
class Nodes:
    cluster: Any
    head_id: str
    workers: list[Any]


@pytest.fixture(scope="module")
def multinode(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Nodes, Fleet]]:
    import ray
    from ray.cluster_utils import Cluster

    was_up = own_cluster()
    cluster = None
    sim = None
    fleet = None
    try:
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "include_dashboard": False, "object_store_memory": SMALL_STORE,
            # Always the least used feasible node (Ray packs a node up to half its resources first):
            # the two agents land on different workers.
            "_system_config": {"scheduler_spread_threshold": 0.0, "health_check_period_ms": 1000,
                               "health_check_timeout_ms": 1000, "health_check_failure_threshold": 5}})
        workers = [cluster.add_node(num_cpus=1, resources={TRADER: 2}, object_store_memory=SMALL_STORE)
                   for _ in range(2)]
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
        head_id = cluster.head_node.node_id
        assert cluster.head_node.node_ip_address == "127.0.0.1"
        assert all(w.node_ip_address == "127.0.0.1" for w in workers)

        state_dir = tmp_path_factory.mktemp("multinode")
        sim, exchange, key_file = start_exchange(state_dir, SYMBOLS)
        cfg = fleet_doc(f"mn{uuid.uuid4().hex[:6]}", state_dir, exchange, key_file)
        spec = build_spec(cfg, str(CONFIGS / "fleet.demo.yaml"))
        fleet = Fleet(ray, cfg, spec, Exchange(exchange["rest_url"], key_file))
        fleet.start(ControllerSettings(kill_timeout_s=2.0))
        yield Nodes(cluster, head_id, workers), fleet
    finally:
        try:
            if fleet is not None and fleet.controller is not None:
                fleet.stop()
        finally:
            if sim is not None:
                sim.stop()
            if ray.is_initialized():
                ray.shutdown()
            if cluster is not None:
                cluster.shutdown()
            restore_session_cluster(was_up)


def _placement(fleet: Fleet) -> dict[str, str]:
    return {s: fleet.node_of(s) for s in fleet.symbols}


def test_agents_run_on_the_trader_nodes_never_on_the_head_and_the_controller_on_the_head(multinode):
    """The agents on the trader nodes; the controller and the agents' spawner on the head, never on a trader
    node (one there whose raylet hung was restarted by Ray elsewhere while it went on fencing: two
    controllers, a healthy agent killed, in a hostile run)."""
    from controller.handles import find_spawner

    nodes, fleet = multinode
    fleet.quoting()
    where = _placement(fleet)
    worker_ids = {w.node_id for w in nodes.workers}
    assert set(where.values()) == worker_ids, f"one agent on each worker: {where}"
    assert nodes.head_id not in where.values()
    node_id = lambda self: __import__("ray").get_runtime_context().get_node_id()  # noqa: E731
    ctl_node = fleet.ray.get(fleet.controller.__ray_call__.remote(node_id), timeout=15)
    spawner_node = fleet.ray.get(find_spawner(fleet.cfg.namespace).__ray_call__.remote(node_id), timeout=15)
    assert (ctl_node, spawner_node) == (nodes.head_id, nodes.head_id), (ctl_node, spawner_node, nodes.head_id)
    print(f"placement: {where} (head {nodes.head_id[:8]}; workers {sorted(i[:8] for i in worker_ids)})")


def test_a_lost_node_moves_its_agents_with_new_epochs_and_cancels_the_old_epochs_orders(multinode):
    nodes, fleet = multinode
    since_ms = int(time.time() * 1000) - 600_000
    before = fleet.quoting()
    where = _placement(fleet)
    # The node of the first symbol's agent goes; every agent on it must move to the other worker.
    victim = next(w for w in nodes.workers if w.node_id == where[SYMBOLS[0]])
    survivor = next(w for w in nodes.workers if w is not victim)
    moved = [s for s, n in where.items() if n == victim.node_id]
    old = {s: before[s]["status"]["epoch"] for s in moved}
    old_ids = {s: {o["clientOrderId"] for o in before[s]["open_orders"]} for s in moved}

    nodes.cluster.remove_node(victim)
    nodes.workers.remove(victim)

    after = fleet.quoting(newer_than=old)
    for s in moved:
        assert fleet.node_of(s) == survivor.node_id
        assert after[s]["status"]["epoch"] > old[s]
        # Every order the old owner left resting is gone from the exchange (cancelled, or filled meanwhile).
        still_open = {o["clientOrderId"] for o in fleet.exchange.open_orders(s)}
        assert not (old_ids[s] & still_open), f"{s}: epoch {old[s]}'s orders still open"
        assert {_epoch(o) for o in fleet.exchange.open_orders(s)} <= {after[s]["status"]["epoch"]}
    for s in fleet.symbols:
        assert not no_duplicate_ids(fleet.exchange, s, since_ms), f"{s}: a client order id was used twice"

    # The kill switch after the move: every book empty at the exchange, then quoting again on resume.
    result = fleet.kill()
    assert {s: r["open_orders"] for s, r in result["symbols"].items()} == {s: 0 for s in fleet.symbols}, result
    fleet.books_empty()
    fleet.resume()
    fleet.quoting()
    print(f"moved {moved} from {victim.node_id[:8]} to {survivor.node_id[:8]}; epochs {old} -> "
          f"{ {s: after[s]['status']['epoch'] for s in moved} }")


def test_a_kill_during_a_move_empties_the_books_and_the_moved_agents_start_halted(multinode):
    nodes, fleet = multinode
    since_ms = int(time.time() * 1000) - 600_000
    spare = nodes.cluster.add_node(num_cpus=1, resources={TRADER: 2}, object_store_memory=SMALL_STORE)
    nodes.cluster.wait_for_nodes()
    before = fleet.quoting()
    old = {s: before[s]["status"]["epoch"] for s in fleet.symbols}
    [victim] = nodes.workers  # it runs every agent now

    nodes.cluster.remove_node(victim)
    nodes.workers[:] = [spare]
    # The kill lands while the agents are gone or restarting: the exchange route empties the books.
    result = fleet.kill(reason="kill during a node loss")
    assert set(result["symbols"]) == set(fleet.symbols)
    fleet.books_empty()
    assert {s: r["state"] for s, r in fleet.kill_states().items()} == {s: "halted" for s in fleet.symbols}

    def halted_on_the_spare() -> dict[str, Any] | None:
        seen = {s: fleet.status(s) for s in fleet.symbols}
        ok = all(st.get("state") == "halted" and (st.get("epoch") or 0) > old[s] for s, st in seen.items())
        return seen if ok and all(fleet.node_of(s) == spare.node_id for s in fleet.symbols) else None

    seen = poll(halted_on_the_spare, SETTLE_S, "the moved agents up and halted on the new node")
    fleet.books_empty(timeout=5.0)   # and nothing came back while they started
    fleet.resume()
    after = fleet.quoting(newer_than={s: seen[s]["epoch"] - 1 for s in fleet.symbols})
    for s in fleet.symbols:
        assert after[s]["status"]["epoch"] > old[s]
        assert not no_duplicate_ids(fleet.exchange, s, since_ms), f"{s}: a client order id was used twice"
    result = fleet.kill(reason="after the move")
    fleet.books_empty()
    assert all(r["open_orders"] == 0 for r in result["symbols"].values()), result


def test_agents_whose_raylet_hangs_are_unseated_once_ray_restarts_them_elsewhere(multinode):
    """A node's raylet hangs, its agents' processes run on (a raylet stuck, or the node cut off from the
    head): Ray finds the node dead and restarts the agents on another node, while the old processes go on
    renewing their leases with the controller. Before the fix the restarted agents waited 'starting' for
    ever and the old ones kept trading, out of Ray's reach (a hostile run). The controller unseats a
    holder that is no longer the symbol's actor: its lease revoked, its epoch's orders cancelled, the
    restarted agents quoting with larger epochs; at no sample two epochs' orders on one book, and the old
    processes, barred, never trade another epoch."""
    import os
    import signal
    import threading

    from ray._private import ray_constants

    nodes, fleet = multinode
    since_ms = int(time.time() * 1000) - 600_000
    spare = nodes.cluster.add_node(num_cpus=1, resources={TRADER: 2}, object_store_memory=SMALL_STORE)
    nodes.cluster.wait_for_nodes()
    fleet.resume()   # (the test before ends halted)
    before = fleet.quoting()
    old = {s: before[s]["status"]["epoch"] for s in fleet.symbols}
    victim = next(w for w in nodes.workers if w.node_id == fleet.node_of(SYMBOLS[0]))
    raylet = victim.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process
    two_epochs: list[tuple[str, set[Any]]] = []
    watching = threading.Event()

    def watch() -> None:   # every 0.2 s: the epochs of each book's resting orders
        while not watching.is_set():
            for s in fleet.symbols:
                epochs = {_epoch(o) for o in fleet.exchange.open_orders(s)}
                if len(epochs) > 1:
                    two_epochs.append((s, epochs))
            time.sleep(0.2)

    sampler = threading.Thread(target=watch, daemon=True)
    sampler.start()
    hung_ms = int(time.time() * 1000)
    os.kill(raylet.pid, signal.SIGSTOP)
    try:
        after = fleet.quoting(newer_than=old, timeout=SETTLE_S)
    finally:
        os.kill(raylet.pid, signal.SIGCONT)   # (found dead, it exits; its workers with it)
        watching.set()
        sampler.join(10)
    for s in fleet.symbols:
        assert fleet.node_of(s) != victim.node_id
        assert after[s]["status"]["epoch"] > old[s]
        assert {_epoch(o) for o in fleet.exchange.open_orders(s)} <= {after[s]["status"]["epoch"]}
        assert not no_duplicate_ids(fleet.exchange, s, since_ms), f"{s}: a client order id was used twice"
        # the old process, its renewal refused, stops and asks for the lease again: refused, it never
        # trades another epoch (before, it could win one ahead of the restarted actor and quote with it)
        used = {_epoch(o) for o in fleet.exchange.all_orders(s, hung_ms)}
        assert used <= {old[s], after[s]["status"]["epoch"]}, f"{s}: epochs used since the hang {used}"
    assert not two_epochs, two_epochs[:5]
    nodes.workers[:] = [w for w in nodes.workers if w is not victim] + [spare]
    print(f"raylet {raylet.pid} hung: epochs {old} -> { {s: after[s]['status']['epoch'] for s in fleet.symbols} }")
