"""GCS fault tolerance backed by a real Redis: the fleet survives a GCS restart.

Debian's ``redis-server`` (``make test`` installs it when missing) runs on a free loopback port with
a temporary directory; the Ray head is started with ``RAY_REDIS_ADDRESS`` pointing at it (GCS
storage in Redis), 0 CPU and no ``mmfleet_trader``, beside one trader worker node, all on 127.0.0.1.
One symbol is halted, then the cluster's ``gcs_server`` process is SIGKILLed and started again
(same port, same Redis). Throughout, the exchange never sees an order beyond a symbol's cap or a
client order id twice. While the GCS is down the other symbol is killed: the kill empties its book
at once though its state cannot be written yet; then the controller that sent it is SIGKILLed, its
write lost, and the state is durable once the GCS is back all the same (its halted agent carries the
kill with its lease calls, and the restarted controller writes it). Afterwards both are halted with
empty books (the restarted controller reads the kill states back from the GCS), and resume and kill work.
Then the endpoint is deployed and the GCS killed again: the endpoint's ``/health`` names the GCS
down, an HTTP kill of every symbol answers with every book empty (``durable: false``), and the kill
states read halted once the GCS is back.

Like tests/controller/test_multinode.py this module runs a cluster of its own and starts the
session's local cluster again afterwards. Waits poll generous deadlines; no duration is asserted.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from controller.controller import ControllerSettings, build_spec
from tests.controller.test_fleet import CONFIGS, Exchange, free_port, poll
from tests.controller.test_multinode import (
    SETTLE_S, SMALL_STORE, SYMBOLS, TRADER, Fleet, fleet_doc, no_duplicate_ids, own_cluster,
    restore_session_cluster, start_exchange,
)

HALTED, QUOTING = SYMBOLS  # one symbol halted across the restart, one quoting through it
OUTAGE_S = 6.0             # the GCS stays down this long (two lease lifetimes of 3 s)
OUTAGE_KILL = "killed while the GCS is down"


def redis_server_binary() -> str:
    found = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)
    if found is None:
        pytest.fail("redis-server is missing: `make test` installs Debian's redis-server package "
                    "(apt-get install redis-server)")
    return found


def start_redis(workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A private Redis on 127.0.0.1 (no persistence, no other client): (process, host:port)."""
    port = free_port()
    proc = subprocess.Popen(
        [redis_server_binary(), "--bind", "127.0.0.1", "--port", str(port), "--dir", str(workdir),
         "--save", "", "--appendonly", "no", "--daemonize", "no", "--logfile", str(workdir / "redis.log")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def answers() -> bool:
        return redis_command(f"127.0.0.1:{port}", "PING") == "+PONG"

    poll(answers, 20.0, f"redis-server answering on 127.0.0.1:{port}")
    return proc, f"127.0.0.1:{port}"


def gcs_pid(head: Any) -> int:
    """The PID of this cluster's gcs_server process (the head node's record of what it started)."""
    from ray._private import ray_constants

    [info] = head.all_processes[ray_constants.PROCESS_TYPE_GCS_SERVER]
    return info.process.pid


def gcs_gone(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().split()[2] == "Z"


def gcs_down(head: Any) -> bool:
    """The head has no live gcs_server (a test failed while it was down, or between kill and start)."""
    from ray._private import ray_constants

    started = head.all_processes.get(ray_constants.PROCESS_TYPE_GCS_SERVER) or []
    return not started or gcs_gone(started[0].process.pid)


def restart_gcs(head: Any) -> int:
    """Start the head's gcs_server again (same port, same Redis) after it died; its new PID."""
    head.kill_gcs_server(check_alive=False)   # forget the dead process
    head.start_gcs_server()
    return gcs_pid(head)


def redis_command(address: str, command: str) -> str:
    """One inline Redis command over a plain socket; the first line of the answer."""
    host, port = address.split(":")
    with socket.create_connection((host, int(port)), timeout=2) as sock:
        sock.sendall(command.encode() + b"\r\n")
        answer = b""
        while not answer.endswith(b"\r\n"):
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return answer.decode().strip()


def redis_keys(address: str) -> int:
    return int(redis_command(address, "DBSIZE").lstrip(":"))


def within_caps(fleet: Fleet, caps: dict[str, float]) -> dict[str, Any] | None:
    """Per symbol at the exchange: position plus resting buys (and minus sells) within the cap.

    None when every symbol is within; else what was seen.
    """
    bad = {}
    for s, cap in caps.items():
        st = fleet.exchange.state(s)
        pos = float(st["positions"][s]["amount"])
        rest = {side: sum(float(o["origQty"]) - float(o["executedQty"]) for o in st["open_orders"]
                          if o["side"] == side) for side in ("BUY", "SELL")}
        long_, short = pos + rest["BUY"], -pos + rest["SELL"]
        if long_ > cap + 1e-9 or short > cap + 1e-9:
            bad[s] = {"position": pos, "worst_long": long_, "worst_short": short, "cap": cap}
    return bad or None


@pytest.fixture(scope="module")
def ft(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    import ray
    from ray.cluster_utils import Cluster

    workdir = tmp_path_factory.mktemp("gcs-ft")
    was_up = own_cluster()
    redis_proc = cluster = sim = fleet = None
    try:
        redis_proc, redis_address = start_redis(workdir)
        before = os.environ.get("RAY_REDIS_ADDRESS")
        os.environ["RAY_REDIS_ADDRESS"] = redis_address  # the head's GCS keeps its tables in this Redis
        try:
            cluster = Cluster(initialize_head=True, head_node_args={
                "num_cpus": 0, "include_dashboard": False, "object_store_memory": SMALL_STORE})
        finally:
            if before is None:
                os.environ.pop("RAY_REDIS_ADDRESS", None)
            else:
                os.environ["RAY_REDIS_ADDRESS"] = before
        worker = cluster.add_node(num_cpus=1, resources={TRADER: 2}, object_store_memory=SMALL_STORE)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False, logging_level="ERROR")
        assert cluster.head_node.redis_address == redis_address
        assert redis_keys(redis_address) > 0, "the GCS wrote nothing to Redis"

        state_dir = workdir / "fleet"
        sim, exchange, key_file = start_exchange(state_dir, SYMBOLS)
        cfg = fleet_doc(f"gf{uuid.uuid4().hex[:6]}", state_dir, exchange, key_file)
        spec = build_spec(cfg, str(CONFIGS / "fleet.demo.yaml"))
        fleet = Fleet(ray, cfg, spec, Exchange(exchange["rest_url"], key_file))
        fleet.start(ControllerSettings(kill_timeout_s=2.0))
        yield {"cluster": cluster, "worker": worker, "fleet": fleet, "redis": redis_address}
    finally:
        if cluster is not None and gcs_down(cluster.head_node):
            restart_gcs(cluster.head_node)  # a test that failed while it was down: the teardown needs it
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
            if redis_proc is not None:
                redis_proc.terminate()
                redis_proc.wait(10)
            restore_session_cluster(was_up)


def test_a_gcs_restart_keeps_agents_quoting_safely_and_the_kill_state_intact(ft):
    fleet: Fleet = ft["fleet"]
    head = ft["cluster"].head_node
    since_ms = int(time.time() * 1000) - 600_000
    fleet.quoting()
    caps = {s: float(fleet.ray.get(fleet.agent(s).exposure.remote(), timeout=15)["cap"]) for s in SYMBOLS}
    pids = {s: fleet.status(s)["pid"] for s in SYMBOLS}

    result = fleet.kill([HALTED], reason="halted across a GCS restart")
    assert result["symbols"][HALTED]["open_orders"] == 0, result
    # The exchange route may answer before the agent heard the halt (a busy machine); until then the
    # agent may quote again and be swept (tests/controller/test_kill_paths.py). Here the subject is
    # the restart, so it starts from an agent that has halted.
    assert poll(lambda: fleet.status(HALTED)["state"] == "halted", SETTLE_S, f"{HALTED} halted")
    assert fleet.exchange.open_orders(HALTED) == []

    quoting_agent = fleet.agent(QUOTING)   # handles and the controller's process, found while the GCS is up
    ctl_pid = fleet.ray.get(fleet.controller.__ray_call__.remote(lambda self: os.getpid()), timeout=SETTLE_S)
    pid = gcs_pid(head)
    os.kill(pid, signal.SIGKILL)
    poll(lambda: gcs_gone(pid), 10.0, f"gcs_server {pid} gone")
    # While the GCS is down: nothing beyond a cap, no second use of an id, the halted book stays empty.
    down_until = time.monotonic() + OUTAGE_S
    samples = 0
    while time.monotonic() < down_until:
        assert within_caps(fleet, caps) is None, within_caps(fleet, caps)
        assert fleet.exchange.open_orders(HALTED) == []
        samples += 1
        time.sleep(0.5)
    # A kill while the GCS is down (its lease lapsed; its agent pulls its own quotes only after
    # lease_pull_sec, so they may still rest) is carried out at once; its state cannot be written yet.
    result = fleet.kill([QUOTING], reason=OUTAGE_KILL)
    assert result["durable"] is False and result["symbols"][QUOTING]["open_orders"] == 0, result
    fleet.books_empty()
    # Its agent halts and carries the kill, unwritten; the controller that would write it dies before
    # the GCS is back, so only the agent's lease calls can have it written.
    assert poll(lambda: fleet.ray.get(quoting_agent.status.remote(), timeout=15)["state"] == "halted",
                SETTLE_S, f"{QUOTING} halted")
    carried = fleet.ray.get(quoting_agent.__ray_call__.remote(lambda self: self.ownership.unwritten), timeout=15)
    assert carried is not None and carried["state"] == "halted", carried
    os.kill(ctl_pid, signal.SIGKILL)
    new_pid = restart_gcs(head)
    assert new_pid != pid

    # After the restart: the kill states are read back from the GCS's storage (the controller was
    # restarted, so it holds nothing in memory), the outage's kill among them, and no book has an order.

    def both_halted() -> dict[str, Any] | None:
        states = fleet.kill_states()
        return states if all(states[s]["state"] == "halted" for s in SYMBOLS) else None

    states = poll(both_halted, SETTLE_S, "both symbols halted in the kill states after the GCS restart")
    assert fleet.ray.get(fleet.controller.__ray_call__.remote(lambda self: os.getpid()), timeout=30) != ctl_pid
    assert states[QUOTING]["reason"] == OUTAGE_KILL, states
    assert poll(lambda: all(fleet.status(s)["state"] == "halted" for s in SYMBOLS), SETTLE_S, "both agents halted")
    fleet.books_empty()
    assert within_caps(fleet, caps) is None, within_caps(fleet, caps)
    for s in SYMBOLS:
        assert not no_duplicate_ids(fleet.exchange, s, since_ms), f"{s}: a client order id was used twice"

    fleet.resume([QUOTING])
    after = fleet.quoting((QUOTING,))
    fleet.resume([HALTED])
    fleet.quoting()
    assert within_caps(fleet, caps) is None, within_caps(fleet, caps)
    result = fleet.kill()
    assert all(r["open_orders"] == 0 for r in result["symbols"].values()), result
    fleet.books_empty()
    fleet.resume()
    restarted = {s: fleet.status(s)["pid"] != pids[s] for s in SYMBOLS}
    print(f"GCS {pid} -> {new_pid}; {samples} samples while down; {QUOTING} epoch "
          f"{after[QUOTING]['status']['epoch']}; agent processes restarted: {restarted}")


HTTP_OUTAGE_KILL = "killed over HTTP while the GCS is down"


def test_an_http_kill_while_the_gcs_is_down_empties_every_book_and_is_durable_once_it_is_back(ft, tmp_path):
    """The desk's kill switch is the endpoint's HTTP kill: with the GCS down it still answers at once,
    every book empty at the exchange (the answer says ``durable: false``); once the GCS is back the
    kill states read halted with its reason."""
    import requests

    from controller.api import ApiSettings, deploy, undeploy

    fleet: Fleet = ft["fleet"]
    head = ft["cluster"].head_node
    token = uuid.uuid4().hex
    (tmp_path / "api.token").write_text(token)
    cfg = fleet.cfg.model_copy(update={"api": fleet.cfg.api.model_copy(update={"token_file": str(tmp_path / "api.token")})})
    url = deploy(cfg, route_prefix=f"/{cfg.name}", settings=ApiSettings(halt_timeout_s=2.0))
    auth = {"Authorization": f"Bearer {token}"}
    try:
        fleet.quoting()
        assert requests.get(f"{url}/kill", headers=auth, timeout=30).status_code == 200   # the endpoint ready
        pid = gcs_pid(head)
        os.kill(pid, signal.SIGKILL)
        poll(lambda: gcs_gone(pid), 10.0, f"gcs_server {pid} gone")
        # The endpoint finds the GCS down at its next read (every few seconds; a read waits up to 10 s)
        # and says so; a kill then waits on no GCS call.
        died = time.monotonic()
        why = poll(lambda: requests.get(f"{url}/health", timeout=5).json()["kill_path"]["gcs_error"], SETTLE_S,
                   "the endpoint's health naming the GCS down")
        seen_s = time.monotonic() - died
        r = requests.post(f"{url}/kill", json={"all": True, "mode": "halt", "reason": HTTP_OUTAGE_KILL},
                          headers=auth, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["durable"] is False, body
        assert all(body["symbols"][s]["open_orders"] == 0 for s in SYMBOLS), body
        fleet.books_empty()
        print(f"the endpoint's health, {seen_s:.1f} s after the GCS died: {why}")
        print(f"HTTP kill with the GCS down: answered in {r.elapsed.total_seconds() * 1000:.0f} ms; to 0 "
              f"{ {s: body['symbols'][s].get('confirmed_ms') for s in SYMBOLS} } ms")
        restart_gcs(head)

        def both_halted() -> dict[str, Any] | None:
            states = fleet.kill_states()
            return states if all(states[s]["state"] == "halted" for s in SYMBOLS) else None

        states = poll(both_halted, SETTLE_S, "both symbols halted in the kill states after the GCS restart")
        assert {s: states[s]["reason"] for s in SYMBOLS} == dict.fromkeys(SYMBOLS, HTTP_OUTAGE_KILL), states
        fleet.books_empty()
        assert requests.post(f"{url}/resume", json={"all": True, "reason": "drill over"}, headers=auth,
                             timeout=60).status_code == 200
        fleet.quoting()
    finally:
        if gcs_down(head):
            restart_gcs(head)
        undeploy(cfg)


def test_with_the_gcs_hung_a_lookup_holds_no_event_loop_and_the_cli_says_what_it_waits_for(ft):
    """A call to an agent whose handle is not cached (the endpoint drops one whose actor is gone, and has
    none before its first look-up) asks the GCS for it: with the GCS hung (SIGSTOP) the lookup waits up to
    Ray's 60 s, and made on the event loop it held every route, a kill's exchange route among them (a
    hostile run: an HTTP kill answered after 38.7 s, one book resting meanwhile). The endpoint's and the
    controller's calls look it up in a thread, within the call's timeout: a request to the exchange made
    meanwhile is answered while both still wait, and each answers in its time, saying why. (The name asked
    for is one this process never looked up: a process answers a name it has looked up itself without the
    GCS; the endpoint's dropped handles are not so answered.) A command of the
    CLI, which connects through the GCS, gives up after MMFLEET_CONNECT_TIMEOUT_S saying what it waited for
    (Ray's connect alone retries for a minute and more, with Ray's warnings only)."""
    import asyncio

    from controller.calls import ActorCalls
    from controller.handles import AgentHandles, agent_name
    from fleet.sim.testkit import SimClient

    fleet: Fleet = ft["fleet"]
    head = ft["cluster"].head_node
    fleet.quoting()
    ns, exchange = fleet.cfg.namespace, fleet.exchange
    pid = gcs_pid(head)
    unseen = "BNBUSDT"   # no agent this process has looked up

    async def drill() -> tuple[Any, tuple[bool, bool], Any, BaseException | None]:
        endpoint_calls = ActorCalls(ns, agent_timeout_s=3.0, controller_timeout_s=3.0)   # nothing cached
        controller_calls = AgentHandles(fleet.cfg.name, ns, call_timeout_s=3.0)
        os.kill(pid, signal.SIGSTOP)
        try:
            from_endpoint = asyncio.ensure_future(endpoint_calls.call(agent_name(unseen), "status", 3.0))
            from_controller = asyncio.ensure_future(controller_calls.call(unseen, "status", timeout=3.0))
            async with SimClient(exchange.rest_url, exchange.key, exchange.secret) as c:
                await asyncio.sleep(0)   # both calls under way
                reply = await c.signed("GET", "/fapi/v1/openOrders", {"symbol": QUOTING})
            waiting = (from_endpoint.done(), from_controller.done())
            answer = await from_endpoint
            raised = (await asyncio.gather(from_controller, return_exceptions=True))[0]
            return reply, waiting, answer, raised if isinstance(raised, BaseException) else None
        finally:
            os.kill(pid, signal.SIGCONT)   # (the lookups' threads end once the GCS answers)

    try:
        reply, waiting, answer, raised = asyncio.run(drill())
        assert reply.status == 200, reply.json
        assert waiting == (False, False), "a call to an agent held the loop on its lookup"
        assert answer.error == f"agent.{unseen} was not looked up within 3 s (the GCS busy, hung or down)", answer
        assert isinstance(raised, asyncio.TimeoutError), raised

        os.kill(pid, signal.SIGSTOP)
        cli = subprocess.run(
            [sys.executable, "-m", "fleet", "status", "--fleet", fleet.cfg.name, "--address", ft["cluster"].address],
            capture_output=True, text=True, timeout=120, env={**os.environ, "MMFLEET_CONNECT_TIMEOUT_S": "3"})
    finally:
        os.kill(pid, signal.SIGCONT)
    assert cli.returncode == 4, (cli.returncode, cli.stderr[-2000:])
    assert f"the Ray cluster at {ft['cluster'].address} did not answer within 3 s" in cli.stderr, cli.stderr[-2000:]
    assert "POST /kill" in cli.stderr
    fleet.quoting()
