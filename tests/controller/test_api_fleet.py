"""The fleet endpoint in front of a live fleet: the controller and three real agent actors on the
session's Ray cluster, trading on the simulator over loopback. Every figure the endpoint serves is
checked against the simulator's truth (/sim/state) or a real Prometheus; waits poll a deadline."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from controller.api import ApiSettings, deploy, undeploy
from controller.federation import SEED_METRIC_NAMES
from fleet.config import (
    AccountConfig,
    AgentPlacement,
    ApiConfig,
    ExchangeConfig,
    FleetConfig,
    RuntimeParams,
    SymbolEntry,
)
from tests.controller.test_prometheus import central_config, cluster_config, free_port, poll, start_prometheus

SYMBOLS = ("ETHUSDC", "BTCUSDT", "SOLUSDT")
DEMO_HARD_CAPS = {"BTCUSDT": 0.03, "SOLUSDT": 10.0}  # as configs/fleet.demo.yaml holds them (ETHUSDC: code's)
AGENT_TIMEOUT_S = 3.0   # generous: two shared cores under load; a stopped agent still costs only this
DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "fleet.demo.yaml"


class SimThread:
    """The simulator on its own event loop in a thread of the test process (agents reach it over TCP)."""

    def __init__(self, api_key: str, api_secret: str) -> None:
        from fleet.sim.server import SimServer

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="sim", daemon=True)
        self.thread.start()
        from fleet.sim.config import default_symbol_spec

        # SOLUSDT settles funding every 4 hours, as many alt perpetuals do (the console says so)
        specs = [default_symbol_spec(s).model_dump() | ({"funding_interval_hours": 4} if s == "SOLUSDT" else {})
                 for s in SYMBOLS]
        self.server = SimServer(symbols=list(SYMBOLS), seed=11, api_key=api_key, api_secret=api_secret,
                                config={"symbols": specs})
        self.run(self.server.start())

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def state(self, symbol: str) -> dict[str, Any]:
        r = requests.get(f"{self.server.rest_url}/sim/state", params={"account": "main", "symbol": symbol}, timeout=10)
        r.raise_for_status()
        return r.json()

    def stop(self) -> None:
        self.run(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@pytest.fixture(scope="module")
def live(ray_cluster, tmp_path_factory):
    """Simulator + controller + 3 agents + the endpoint; torn down with ``down`` (0 open orders)."""
    import ray

    from controller.controller import ControllerSettings, build_spec, get_or_create_controller, remove_controller

    work = tmp_path_factory.mktemp("live")
    api_key, api_secret = secrets.token_hex(32), secrets.token_hex(32)
    key_file = work / "main.keys.yaml"
    key_file.write_text(yaml.safe_dump({"api_key": api_key, "api_secret": api_secret}))
    key_file.chmod(0o600)
    token = secrets.token_urlsafe(24)
    token_file = work / "api.token"
    token_file.write_text(token)

    sim = SimThread(api_key, api_secret)
    cfg = FleetConfig(
        name=f"apilive{uuid.uuid4().hex[:6]}",
        exchange=ExchangeConfig(
            kind="sim", rest_url=sim.server.rest_url, ws_market_url=sim.server.ws_url, ws_user_url=sim.server.ws_url
        ),
        accounts=(AccountConfig(name="main", key_file=str(key_file)),),
        symbols=tuple(SymbolEntry(symbol=s, account="main", params_file=f"symbols/{s}.yaml",
                                  net_max_hard_cap=DEMO_HARD_CAPS.get(s)) for s in SYMBOLS),
        api=ApiConfig(port=free_port(), token_env=None, token_file=str(token_file),
                      metrics_publish_s=1.5, metrics_stale_s=6.0),  # a stopped agent goes stale in 6 s
        agent=AgentPlacement(num_cpus=0),
        runtime=RuntimeParams(deadman_heartbeat_sec=2.0, deadman_countdown_ms=10_000, stop_timeout_sec=15.0),
    )
    # This file's drills stop an agent to see it reported as not answering; the controller fencing a
    # stopped agent (and replacing it) is tests/controller/test_kill_paths.py's.
    controller = get_or_create_controller(cfg, ControllerSettings(fence_hung_agents=False))
    ray.get(controller.apply.remote(build_spec(cfg, str(DEMO_CONFIG))), timeout=120)
    url = deploy(cfg, route_prefix=f"/{cfg.name}",
                 settings=ApiSettings(agent_timeout_s=AGENT_TIMEOUT_S, page_wait_s=AGENT_TIMEOUT_S))
    fleet = Live(url=url, token=token, cfg=cfg, sim=sim, secrets=(api_key, api_secret, token))
    fleet.wait_quoting(within_s=90)
    yield fleet
    try:
        undeploy(cfg)
        ray.get(controller.down.remote(False), timeout=120)
        remove_controller(cfg.namespace)   # and its spawner
    finally:
        sim.stop()


class Live:
    def __init__(self, url: str, token: str, cfg: FleetConfig, sim: SimThread, secrets: tuple[str, ...]) -> None:
        self.url, self.token, self.cfg, self.sim, self.secrets = url, token, cfg, sim, secrets
        self.responses: list[requests.Response] = []

    def get(self, path: str, *, auth: bool = True, timeout: float = 30) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token}"} if auth else {}
        r = requests.get(f"{self.url}{path}", headers=headers, timeout=timeout)
        self.responses.append(r)
        return r

    def post(self, path: str, body: dict[str, Any], timeout: float = 60) -> requests.Response:
        r = requests.post(
            f"{self.url}{path}", json=body, headers={"Authorization": f"Bearer {self.token}"}, timeout=timeout
        )
        self.responses.append(r)
        return r

    def open_orders(self, symbol: str) -> int:
        return len(self.sim.state(symbol)["open_orders"])

    def wait_quoting(self, within_s: float, symbols: tuple[str, ...] = SYMBOLS) -> dict[str, Any]:
        seen: dict[str, Any] = {}

        def quoting() -> dict[str, Any] | None:
            body = self.get("/status").json()
            agents = body["agents"]
            book = (body.get("controller") or {}).get("symbols") or {}
            seen.update({s: ((agents[s].get("state"), agents[s].get("kill_state")) if isinstance(agents[s], dict)
                             else (agents[s], None), (book.get(s) or {}).get("kill_state"), self.open_orders(s))
                         for s in symbols})
            ok = all(agent[0] == "quoting" and orders > 0 for agent, _, orders in seen.values())
            return body if ok else None

        return poll(quoting, within_s=within_s, every_s=0.5,
                    what=lambda: f"{', '.join(symbols)} quoting; seen, per symbol: (the agent's state and kill "
                                 f"state), the stored kill state, open orders: {seen}")

    def metric_families(self) -> dict[str, Any]:
        r = self.get("/metrics", auth=False)
        assert r.status_code == 200, r.text
        return {f.name: f for f in text_string_to_metric_families(r.text)}


def test_status_shows_every_agent_quoting_with_its_epoch_and_lease(live):
    body = poll(lambda: (lambda b: b if b["agents_up"] == 3 else None)(live.get("/status").json()),
                within_s=30, what="every agent answering /status")
    assert body["agents_expected"] == 3
    assert body["controller"]["reachable"] is True and body["leases_from"] == "controller"
    for sym in SYMBOLS:
        agent = body["agents"][sym]
        assert agent["reachable"] is True and agent["state"] == "quoting"
        assert agent["epoch"] >= 1 and agent["lease"]["epoch"] == agent["epoch"]
        assert agent["user_stream_connected"] is True and agent["market_stream_connected"] is True
        assert agent["last_book_age_s"] is not None
        assert agent["restarts"] == 0


def process_of_replica(app: str) -> int:
    """The pid of the endpoint's Serve replica (its process title names the application)."""
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"ServeReplica:" + app.encode() + b":" in title:
            return pid
    raise AssertionError(f"no process of the Serve replica of {app}")


def test_the_kill_path_is_ready_before_any_kill_and_outranks_the_agents_for_cpu(live):
    from controller.api import app_name

    ready = poll(lambda: (lambda k: k if k.get("agents_ready") == 3 else None)(
        live.get("/health", auth=False).json()["kill_path"]), within_s=30, what="every agent's handle found")
    assert ready["symbols"] == 3 and ready["accounts"] == ready["accounts_open"] == 1, ready
    # The kill's own look-ups tried with the account's key: answered for all 3 symbols at once (as many
    # connections as a kill of them sends at once).
    assert ready["accounts_verified"] == 1 and ready["connections"] == 3, ready
    assert ready["checked_s_ago"] is not None and ready["checked_s_ago"] < 60
    # The endpoint pings the controller on its own (what /metrics reports as mmfleet_controller_up).
    seen = poll(lambda: (lambda c: c if c["up"] else None)(live.get("/health", auth=False).json()["controller"]),
                within_s=30, what="the controller answering the endpoint's ping")
    assert seen["error"] is None and seen["pinged_s_ago"] < 30, seen
    # The endpoint and the controller at the raylet's niceness (0), every agent at Ray's default for a
    # worker (15): the spawner that created them has no runtime_env for them to inherit.
    import ray

    from controller.controller import find_controller
    from controller.handles import find_spawner

    assert os.getpriority(os.PRIO_PROCESS, process_of_replica(app_name(live.cfg.name))) == 0
    ping = ray.get(find_controller(live.cfg.namespace).ping.remote(), timeout=30)
    assert os.getpriority(os.PRIO_PROCESS, ping["pid"]) == 0 and ping["agents_created_without_spawner"] == 0, ping
    assert os.getpriority(os.PRIO_PROCESS, ray.get(find_spawner(live.cfg.namespace).pid.remote(), timeout=30)) == 15
    # Created once, by the apply: the reconcile pass, running meanwhile, did not take them for gone.
    ctl_status = ray.get(find_controller(live.cfg.namespace).status.remote(), timeout=30)
    assert {s: v["recreated"] for s, v in ctl_status["symbols"].items()} == {s: 0 for s in SYMBOLS}
    agents = live.get("/status").json()["agents"]
    assert {s: os.getpriority(os.PRIO_PROCESS, agents[s]["pid"]) for s in SYMBOLS} == {s: 15 for s in SYMBOLS}


def test_exposure_matches_the_exchange(live):
    def matches() -> dict[str, Any] | None:
        body = live.get("/exposure").json()
        truth = {s: float(live.sim.state(s)["positions"][s]["amount"]) for s in SYMBOLS}
        got = {s: body["symbols"][s]["position"] for s in SYMBOLS}
        return body if all(abs(got[s] - truth[s]) < 1e-9 for s in SYMBOLS) else None

    body = poll(matches, within_s=30, what="/exposure positions equal to /sim/state")
    totals = body["totals"]
    assert totals["complete"] is True and totals["symbols_answered"] == 3
    gross = sum(abs(body["symbols"][s]["notional"]) for s in SYMBOLS)
    assert totals["gross_notional"] == pytest.approx(gross)
    for sym in SYMBOLS:
        entry = body["symbols"][sym]
        assert entry["kill_state"] == "running"
        assert entry["worst_long"] <= entry["cap"] + 1e-9 and entry["worst_short"] <= entry["cap"] + 1e-9


def test_metrics_page_has_the_twelve_seed_names_for_every_symbol(live):
    def all_up() -> dict[str, Any] | None:
        fams = live.metric_families()
        up = {s.labels["symbol"]: s.value for s in fams["mmfleet_agent_up"].samples}
        return fams if up == dict.fromkeys(SYMBOLS, 1.0) else None

    fams = poll(all_up, within_s=30, what="every agent answering /metrics")
    names: dict[str, set[str]] = {}
    for fam in fams.values():
        for s in fam.samples:
            if "symbol" in s.labels:
                names.setdefault(s.labels["symbol"], set()).add(s.name)
    for sym in SYMBOLS:
        missing = [n for n in SEED_METRIC_NAMES if n not in names.get(sym, set())]
        assert missing == [], f"{sym} lacks {missing}"
    assert fams["mmfleet_agents_halted"].samples[0].value == 0
    # The agents publish their expositions (the endpoint asks none of them at scrape time); each
    # page says how old each one is, within the bound past which it would be left off.
    ages = {s.labels["symbol"]: s.value for s in fams["mmfleet_agent_exposition_age_seconds"].samples}
    assert set(ages) == set(SYMBOLS) and all(0 <= a <= live.cfg.api.metrics_stale_s for a in ages.values()), ages


def test_a_real_prometheus_scrapes_the_page_and_a_central_one_federates_it(live, tmp_path):
    cluster = start_prometheus(cluster_config(live.url), tmp_path / "cluster")
    try:
        central = start_prometheus(central_config(cluster.url), tmp_path / "central")
        try:
            def worst_long_everywhere() -> dict[str, dict[str, str]] | None:
                rows = central.query("mm_worst_case_long")
                found = {r["metric"].get("symbol"): r["metric"] for r in rows}
                return found if set(SYMBOLS) <= set(found) else None

            found = poll(worst_long_everywhere, within_s=90, every_s=1.0,
                         what="mm_worst_case_long for every symbol on the central Prometheus")
            for labels in found.values():
                assert labels["job"] == "mmfleet" and labels["cluster"] == "mmfleet-tokyo"
            up = {r["metric"]["symbol"]: r["value"][1] for r in central.query("mmfleet_agent_up")}
            assert up == dict.fromkeys(SYMBOLS, "1")
        finally:
            central.stop()
    finally:
        cluster.stop()


def test_http_kill_halts_with_zero_open_orders_at_the_exchange_and_resume_quotes_again(live):
    r = live.post("/kill", {"symbols": ["ETHUSDC", "SOLUSDT"], "mode": "halt", "reason": "api test drill"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["confirmed"] is True and set(body["symbols"]) == {"ETHUSDC", "SOLUSDT"}
    for sym in ("ETHUSDC", "SOLUSDT"):
        assert body["symbols"][sym]["open_orders"] == 0
        assert live.open_orders(sym) == 0                       # the exchange agrees
    poll(lambda: live.open_orders("BTCUSDT") > 0, within_s=10, what="BTCUSDT still quoting")  # not killed

    states = live.get("/kill").json()["kill_states"]
    assert states["ETHUSDC"]["state"] == "halted" and states["ETHUSDC"]["reason"] == "api test drill"
    assert states["BTCUSDT"]["state"] == "running"
    fams = live.metric_families()
    assert fams["mmfleet_agents_halted"].samples[0].value == 2
    count = next(s.value for s in fams["mmfleet_kill_latency_seconds"].samples if s.name.endswith("_count"))
    assert count == 1

    r = live.post("/resume", {"symbols": ["ETHUSDC", "SOLUSDT"], "reason": "drill over"})
    assert r.status_code == 200, r.text
    assert {v["outcome"] for v in r.json()["symbols"].values()} == {"resumed"}
    live.wait_quoting(within_s=60)
    # the audit trail: the endpoint's own lines, timed and levelled, in its Ray worker's stderr file
    import re

    import ray

    from controller.api import app_name

    logs = Path(ray._private.worker._global_node.get_logs_dir_path())
    pid = process_of_replica(app_name(live.cfg.name))
    text = "".join(p.read_text(errors="replace") for p in logs.glob(f"worker-*-{pid}.err"))
    stamp = r"^\d\d:\d\d:\d\d\.\d{3} (INFO|WARN)"
    assert re.search(stamp + r".*kill halt of \['ETHUSDC', 'SOLUSDT'\] requested: api test drill$", text, re.M), text[-3000:]
    assert re.search(stamp + r".*resume of .* requested: drill over$", text, re.M), text[-3000:]


def test_a_resume_run_after_a_later_kill_never_undoes_it(live):
    """A resume queued or retried by Ray (a controller restart, a busy kill group) runs after a kill
    the operator asked for later: the kill stands. One whose caller stopped waiting is not carried out."""
    import ray

    from controller.controller import find_controller

    ctl = find_controller(live.cfg.namespace)
    asked = time.time()
    r = live.post("/kill", {"symbols": ["ETHUSDC"], "mode": "halt", "reason": "late resume drill"})
    assert r.status_code == 200 and r.json()["confirmed"] is True, r.text
    late = ray.get(ctl.resume.remote(["ETHUSDC"], None, asked, None), timeout=60)
    assert late["symbols"]["ETHUSDC"]["outcome"] == "superseded", late
    now = time.time()
    expired = ray.get(ctl.resume.remote(["ETHUSDC"], None, now - 120, now - 60), timeout=60)
    assert expired["symbols"]["ETHUSDC"]["outcome"] == "expired", expired
    assert live.get("/kill").json()["kill_states"]["ETHUSDC"]["state"] == "halted"
    # The kill answered once the first route saw the book empty: the exchange's may beat the agent's
    # own halt (and its next published status), so the agent is given a moment to report it.
    poll(lambda: live.get("/status").json()["agents"]["ETHUSDC"]["kill_state"] == "halted",
         within_s=10, what="the agent reporting ETHUSDC halted")
    assert live.get("/kill").json()["kill_states"]["ETHUSDC"]["state"] == "halted"
    assert live.open_orders("ETHUSDC") == 0

    r = live.post("/resume", {"symbols": ["ETHUSDC"], "reason": "drill over"})
    assert r.status_code == 200 and r.json()["symbols"]["ETHUSDC"]["outcome"] == "resumed", r.text
    live.wait_quoting(within_s=60)


def test_http_flatten_leaves_no_position_and_no_orders_at_the_exchange(live):
    # Push the market through ETHUSDC's bids so the agent holds a position at the exchange.
    jump = requests.post(f"{live.sim.server.rest_url}/sim/market/jump", json={"symbol": "ETHUSDC", "pct": -0.5}, timeout=10)
    assert jump.status_code == 200, jump.text
    poll(lambda: float(live.sim.state("ETHUSDC")["positions"]["ETHUSDC"]["amount"]) != 0,
         within_s=30, what="a position in ETHUSDC at the exchange")

    r = live.post("/kill", {"symbols": ["ETHUSDC"], "mode": "flatten", "reason": "api flatten drill"})
    assert r.status_code == 200, r.text
    result = r.json()["symbols"]["ETHUSDC"]
    assert result["outcome"] == "flattened" and result["open_orders"] == 0, result
    truth = live.sim.state("ETHUSDC")
    assert float(truth["positions"]["ETHUSDC"]["amount"]) == 0 and truth["open_orders"] == []
    assert live.get("/kill").json()["kill_states"]["ETHUSDC"]["state"] == "halted"

    assert live.post("/resume", {"symbols": ["ETHUSDC"]}).status_code == 200
    live.wait_quoting(within_s=60)


def test_an_agent_that_does_not_answer_is_reported_and_the_rest_still_served(live):
    before = live.get("/status").json()["agents"]["SOLUSDT"]
    pid = before["pid"]
    os.kill(pid, signal.SIGSTOP)
    try:
        # The stopped agent publishes nothing: once its last exposition is older than the bound it is
        # down on every scrape, never up again while stopped; the others stay up (polled: the box is shared).
        stale_s = live.cfg.api.metrics_stale_s
        seen_down = []

        def reported() -> dict[str, Any] | None:
            r = live.get("/metrics", auth=False)
            assert r.status_code == 200
            fams = {f.name: f for f in text_string_to_metric_families(r.text)}
            up = {s.labels["symbol"]: s.value for s in fams["mmfleet_agent_up"].samples}
            age = {s.labels["symbol"]: s.value for s in fams["mmfleet_agent_exposition_age_seconds"].samples}
            if abs(age["SOLUSDT"] - stale_s) > 0.01:   # up exactly while its exposition is within the bound
                assert up["SOLUSDT"] == (1.0 if age["SOLUSDT"] < stale_s else 0.0), (up, age)
            assert not (seen_down and up["SOLUSDT"] == 1.0), "a stopped agent came back up on /metrics"
            if up["SOLUSDT"] == 0.0:
                seen_down.append(age["SOLUSDT"])
            return fams if up == {"ETHUSDC": 1.0, "BTCUSDT": 1.0, "SOLUSDT": 0.0} else None

        fams = poll(reported, within_s=30, what="SOLUSDT down, the others up on /metrics")
        present = {s.labels["symbol"] for s in fams["mm_worst_case_long"].samples}
        assert present == {"ETHUSDC", "BTCUSDT"}
        status = live.get("/status").json()
        assert status["agents"]["SOLUSDT"]["reachable"] is False
        assert status["agents"]["SOLUSDT"]["error"] == f"agent.SOLUSDT.status did not answer within {AGENT_TIMEOUT_S:g} s"
        # ... with what it last published and how old that is (older than the bound: it went down)
        last = status["agents"]["SOLUSDT"]["last_published"]
        assert last["holder"] == before["holder"] and last["pid"] == pid and last["symbol"] == "SOLUSDT"
        assert last["epoch"] == before["epoch"] and last["ownership_lost"] is False
        assert last["age_s"] >= seen_down[0] - 0.5 and last["state"] in ("quoting", "halted", "starting")
        assert status["agents_up"] == 2 and all(status["agents"][s]["reachable"] for s in ("ETHUSDC", "BTCUSDT"))
        exposure = live.get("/exposure").json()
        assert exposure["symbols"]["SOLUSDT"]["reachable"] is False
        assert exposure["symbols"]["SOLUSDT"]["last_published"]["symbol"] == "SOLUSDT"
        assert exposure["symbols"]["SOLUSDT"]["last_published"]["age_s"] >= seen_down[0] - 0.5
        assert exposure["totals"]["symbols_missing"] == ["SOLUSDT"]   # a last publication is not in the totals
    finally:
        os.kill(pid, signal.SIGCONT)
    live.wait_quoting(within_s=60)


def test_a_restarted_agent_is_counted_in_status_and_metrics(live):
    pid = live.get("/status").json()["agents"]["BTCUSDT"]["pid"]
    os.kill(pid, signal.SIGKILL)

    def back() -> dict[str, Any] | None:
        agent = live.get("/status").json()["agents"]["BTCUSDT"]
        return agent if agent.get("restarts") == 1 and agent.get("pid") != pid else None

    poll(back, within_s=60, what="BTCUSDT's agent restarted by Ray")
    live.wait_quoting(within_s=60)
    fams = live.metric_families()
    restarts = {s.labels["symbol"]: s.value for s in fams["mmfleet_agent_restarts"].samples}
    assert restarts == {"ETHUSDC": 0.0, "BTCUSDT": 1.0, "SOLUSDT": 0.0}


def test_no_response_contains_the_token_or_the_exchange_keys(live):
    live.get("/docs", auth=False)
    live.get("/openapi.json", auth=False)
    live.post("/kill", {"symbols": ["NOPEUSDT"], "reason": "x"})
    assert len(live.responses) > 10
    for r in live.responses:
        for secret in live.secrets:
            assert secret not in r.text, f"a secret in the response to {r.request.method} {r.url}"
            assert all(secret not in v for v in r.headers.values())


def test_no_log_of_the_session_contains_the_token_or_the_exchange_keys(live):
    import ray

    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    agent_logs = [p for p in logs.glob("worker-*") if b"SOLUSDT" in p.read_bytes()]
    assert agent_logs, f"no agent log under {logs}"
    leaked = {
        str(p.relative_to(logs))
        for p in logs.rglob("*")
        if p.is_file() and any(secret.encode() in p.read_bytes() for secret in live.secrets)
    }
    assert leaked == set()


def test_pnl_comes_from_the_journal_and_its_split_adds_up(live):
    assert live.get("/pnl", auth=False).status_code == 401
    # the market pushed through ETHUSDC's asks: its fills are in the journal once its writer has drained
    # (the test's own, whatever ran before it)
    jump = requests.post(f"{live.sim.server.rest_url}/sim/market/jump", json={"symbol": "ETHUSDC", "pct": 0.5},
                         timeout=10)
    assert jump.status_code == 200, jump.text
    body = poll(lambda: (lambda b: b if b.get("symbols", {}).get("ETHUSDC", {}).get("fills") else None)(
        live.get("/pnl").json()), within_s=30, every_s=1.0, what="ETHUSDC fills in the journal")
    assert body["fleet"] and set(body["symbols"]) <= set(SYMBOLS)
    for sym, row in body["symbols"].items():
        split = row["split"]
        parts = split["spread"] + split["inventory"] + split["funding"] + split["fees"]
        assert abs(parts - row["total"]) < 1e-9, (sym, row)
    only = live.get("/pnl?symbol=ethusdc").json()
    assert set(only["symbols"]) == {"ETHUSDC"}
    assert live.get("/pnl?since=notanumber").status_code == 422
    assert live.get("/pnl?symbol=ETH%00USDC").status_code == 422   # not a symbol: refused, not a 503 of the journal
    # a symbol the fleet never traded is a 404 naming it (it was a 200 with nothing in it)
    r = live.get("/pnl?symbol=XRPUSDT")
    assert r.status_code == 404 and "XRPUSDT" in r.text, r.text
    # a repeated name (the last one won in silence), a negative or out-of-range since, one in seconds: 422s
    r = live.get("/pnl?symbol=ETHUSDC&symbol=BTCUSDT")
    assert r.status_code == 422 and "'symbol' given 2 times" in r.text, r.text
    for since in ("-5", "99999999999999999999999", "1700000000"):
        r = live.get(f"/pnl?since={since}")
        assert r.status_code == 422 and "since" in r.text, (since, r.text)
    assert live.get("/pnl?since=1700000000000").status_code == 200


def test_no_process_of_the_fleet_listens_beyond_loopback(live):
    """The cluster, the agents, the controller, the endpoint (its HTTP proxy and its replica's
    inter-deployment gRPC server, which Ray Serve binds to every interface) and the simulator: nothing
    the project started on this machine can be reached from the network."""
    import ray

    assert live.get("/health", auth=False).status_code == 200   # the endpoint's replica is up
    session = ray.get_runtime_context().gcs_address and ray._private.worker.global_worker.node.get_session_dir_path()
    from tests.listening import listeners_beyond_loopback

    ours = [item for item in listeners_beyond_loopback() if "ray" in item[3] or session in item[3]]
    assert ours == [], ours
