"""The fleet as `up` runs it: simulator actor, controller, three agent actors and the endpoint on the
session's local Ray cluster. Every claim is checked at the exchange (the simulator's /sim/state and
signed allOrders over loopback); waits poll a deadline. Tests run in file order on one fleet and each
leaves it quoting again."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import signal
import time
import uuid
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlencode

import pytest
import requests
import yaml

from agents.orders import parse_client_order_id
from controller.controller import ControllerSettings, build_spec, find_controller
from fleet.config import FleetConfig
from fleet.ops.fleet_cli import FleetAlreadyRunning, start_fleet, stop_fleet
from journal.db import Target, make_engine, sqlite_path
from tests import polling
from fleet.ops.ports import free_port

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SYMBOLS = ("ETHUSDC", "BTCUSDT", "SOLUSDT")
DEMO_HARD_CAPS = {"BTCUSDT": 0.03, "SOLUSDT": 10.0}  # as configs/fleet.demo.yaml holds them (ETHUSDC: code's)
LEASE_S = ControllerSettings().lease_ttl_s


def poll(check: Callable[[], Any], timeout: float, what: str | Callable[[], str], interval: float = 0.25) -> Any:
    """:func:`tests.polling.poll`, an exception counting as "not yet" (an actor restarting)."""
    return polling.poll(check, timeout, what, interval, retry_errors=True)


def fleet_config(name: str, state_dir: Path, **extra: Any) -> FleetConfig:
    doc = {
        "name": name,
        "exchange": {"kind": "sim", "sim": {"seed": 5}},
        "accounts": [{"name": "main", "api_key_env": "MMFLEET_TEST_UNSET_KEY", "api_secret_env": "MMFLEET_TEST_UNSET_SECRET"}],
        "symbols": [{"symbol": s, "account": "main", "params_file": f"symbols/{s}.yaml",
                     "net_max_hard_cap": DEMO_HARD_CAPS.get(s)} for s in SYMBOLS],
        "api": {"host": "127.0.0.1", "port": free_port(), "token_env": None},
        "agent": {"num_cpus": 0.05},
        "state_dir": str(state_dir),
    }
    doc.update(extra)
    return FleetConfig.model_validate(doc)


class Exchange:
    """The simulator as the tests see it: admin state and signed allOrders."""

    def __init__(self, rest_url: str, key_file: str) -> None:
        self.rest_url = rest_url
        keys = yaml.safe_load(Path(key_file).read_text())
        self.key, self.secret = keys["api_key"], keys["api_secret"]

    def state(self, symbol: str) -> dict[str, Any]:
        r = requests.get(f"{self.rest_url}/sim/state", params={"account": "main", "symbol": symbol}, timeout=10)
        r.raise_for_status()
        return r.json()

    def open_orders(self, symbol: str) -> list[dict[str, Any]]:
        return self.state(symbol)["open_orders"]

    def position(self, symbol: str) -> float:
        return float(self.state(symbol)["positions"][symbol]["amount"])

    def set_position(self, symbol: str, amount: float, entry_price: float | None = None) -> None:
        body = {"account": "main", "symbol": symbol, "amount": str(amount)}
        if entry_price is not None:
            body["entry_price"] = str(entry_price)
        r = requests.post(f"{self.rest_url}/sim/position", json=body, timeout=10)
        r.raise_for_status()

    def signed_get(self, path: str, params: dict[str, Any]) -> Any:
        query = urlencode({**params, "timestamp": int(time.time() * 1000)})
        sig = hmac.new(self.secret.encode(), query.encode(), hashlib.sha256).hexdigest()
        r = requests.get(f"{self.rest_url}{path}?{query}&signature={sig}", headers={"X-MBX-APIKEY": self.key},
                         timeout=10)
        r.raise_for_status()
        return r.json()

    def all_orders(self, symbol: str, start_ms: int = 0) -> list[dict[str, Any]]:
        return self.signed_get("/fapi/v1/allOrders", {"symbol": symbol, "limit": 1000,
                                                       **({"startTime": start_ms} if start_ms else {})})

    def trade_sums(self, symbol: str, since_ms: int) -> tuple[float, float]:
        """The realized P&L and commission the exchange booked for the symbol's trades since ``since_ms``."""
        rows: list[dict[str, Any]] = []
        page = self.signed_get("/fapi/v1/userTrades", {"symbol": symbol, "startTime": since_ms, "limit": 1000})
        while True:
            rows += page
            if len(page) < 1000:
                break
            page = self.signed_get("/fapi/v1/userTrades", {"symbol": symbol, "fromId": int(page[-1]["id"]) + 1,
                                                            "limit": 1000})
        return sum(float(r["realizedPnl"]) for r in rows), sum(float(r["commission"]) for r in rows)

    def funding_sum(self, symbol: str, since_ms: int) -> float:
        """The funding fees the exchange booked for the symbol since ``since_ms`` (income, weight 30)."""
        rows = self.signed_get("/fapi/v1/income", {"symbol": symbol, "incomeType": "FUNDING_FEE",
                                                    "startTime": since_ms, "limit": 1000})
        return sum(float(r["income"]) for r in rows)

    def admin(self, path: str, body: dict[str, Any]) -> None:
        r = requests.post(f"{self.rest_url}{path}", json=body, timeout=10)
        r.raise_for_status()


class Fleet:
    def __init__(self, ray: Any, running: Any, cfg: FleetConfig) -> None:
        self.ray = ray
        self.running = running
        self.cfg = cfg
        self.ns = running.namespace
        self.url = running.api_url
        self.token = Path(running.cfg.api.token_file).read_text().strip()
        self.exchange = Exchange(running.sim_urls["rest_url"], running.cfg.accounts[0].key_file)

    def agent(self, symbol: str) -> Any:
        return self.ray.get_actor(f"agent.{symbol}", namespace=self.ns)

    def status(self, symbol: str) -> dict[str, Any]:
        return self.ray.get(self.agent(symbol).status.remote(), timeout=15)

    def controller(self) -> Any:
        return find_controller(self.ns)

    def http(self, method: str, path: str, **kw: Any) -> requests.Response:
        return requests.request(method, f"{self.url}{path}", headers={"Authorization": f"Bearer {self.token}"},
                                timeout=90, **kw)

    def quoting(self, symbol: str) -> bool:
        return self.status(symbol).get("state") == "quoting" and len(self.exchange.open_orders(symbol)) > 0

    def all_quoting(self, timeout: float = 30.0) -> None:
        def check() -> bool | dict[str, Any]:
            seen = {s: (self.status(s).get("state"), len(self.exchange.open_orders(s))) for s in SYMBOLS}
            return True if all(st == "quoting" and n > 0 for st, n in seen.values()) else seen

        def quoting() -> Any:
            got = check()
            if got is not True:
                self.last_seen = got
            return got is True

        poll(quoting, timeout, lambda: f"every agent quoting at the exchange ({getattr(self, 'last_seen', None)})")


@pytest.fixture(scope="module")
def fleet(ray_cluster, tmp_path_factory):
    state_dir = tmp_path_factory.mktemp("fleet")
    name = f"ft{uuid.uuid4().hex[:6]}"
    cfg = fleet_config(name, state_dir)
    spec = build_spec(cfg, str(CONFIGS / "fleet.demo.yaml"))
    running = start_fleet(cfg, spec, controller_settings=ControllerSettings(kill_timeout_s=2.0),
                          route_prefix=f"/{name}")
    f = Fleet(ray_cluster, running, cfg)
    f.spec = spec
    yield f
    stop_fleet(running.namespace, name)


def _epoch(order: dict[str, Any]) -> int | None:
    parsed = parse_client_order_id(order["clientOrderId"])
    return parsed[0] if parsed else None


def _no_duplicates(orders: list[dict[str, Any]], max_layers: int) -> bool:
    ids = [o["clientOrderId"] for o in orders]
    buys = sum(1 for o in orders if o["side"] == "BUY")
    return len(ids) == len(set(ids)) and buys <= max_layers and len(orders) - buys <= max_layers


# --- up -----------------------------------------------------------------------------------------


def test_up_quotes_every_symbol_within_30s_and_exposure_matches_the_exchange(fleet):
    fleet.all_quoting(timeout=30.0)

    def agreeing() -> dict[str, Any] | None:
        body = fleet.http("GET", "/exposure").json()
        for s in SYMBOLS:
            seen = body["symbols"][s]
            st = fleet.exchange.state(s)
            if abs(float(seen["position"]) - float(st["positions"][s]["amount"])) > 1e-9:
                return None
            if int(seen["open_orders"]) != len(st["open_orders"]):
                return None
        return body

    body = poll(agreeing, 20.0, "/exposure to agree with /sim/state on positions and open orders")
    assert body["totals"]["complete"] and body["totals"]["symbols_answered"] == 3
    for s in SYMBOLS:
        assert body["symbols"][s]["kill_state"] == "running"
        assert body["symbols"][s]["cap"] > 0


def test_agents_trade_at_rays_niceness_and_the_kill_path_above_them(fleet):
    """agent.cpu_class normal (the default): a started agent's threads stay ordinary at Ray's worker
    niceness (15); the controller, a kill path, runs at 0. (The background class is opt-in: on this
    shared box the test suite's other worker, ordinary work, starved SCHED_IDLE agents for minutes.)"""
    fleet.all_quoting(timeout=30.0)
    for s in SYMBOLS:
        st = poll(lambda: (lambda x: x if not x["cpu_class"].endswith("(not started)") else None)(fleet.status(s)),
                  10.0, f"{s}'s CPU class")
        assert st["cpu_class"] == "normal (niceness 15)", st["cpu_class"]
        assert os.sched_getscheduler(st["pid"]) == os.SCHED_OTHER
    controller = fleet.ray.get(fleet.controller().__ray_call__.remote(lambda _: os.getpid()))
    assert os.sched_getscheduler(controller) == os.SCHED_OTHER and os.getpriority(os.PRIO_PROCESS, controller) == 0


def test_a_second_up_refuses_and_says_how_to_apply_instead(fleet):
    spec = build_spec(fleet.cfg, str(CONFIGS / "fleet.demo.yaml"))
    with pytest.raises(FleetAlreadyRunning, match="python -m fleet apply"):
        start_fleet(fleet.cfg, spec)
    fleet.all_quoting()


def test_creating_an_agent_again_yields_the_same_actor(fleet):
    from agents.actor import AgentActor

    before = fleet.agent("ETHUSDC")
    again = AgentActor.options(name="agent.ETHUSDC", namespace=fleet.ns, lifetime="detached",
                               get_if_exists=True).remote(fleet.cfg.name, fleet.ns, "ETHUSDC")
    assert again._actor_id == before._actor_id
    assert fleet.ray.get(again.status.remote(), timeout=15)["holder"] == fleet.status("ETHUSDC")["holder"]


def test_no_secret_in_any_actor_record_or_runtime_env(fleet):
    """The GCS's actor table (what Ray's state API and dashboard show): no exchange key, no API token."""
    from ray._private import state

    from controller.lease import GcsStore

    canary = f"canary-{uuid.uuid4().hex}"

    @fleet.ray.remote(num_cpus=0)
    class Leaky:
        def ping(self) -> bool:
            return True

    leaky = Leaky.options(runtime_env={"env_vars": {"MMFLEET_CANARY": canary}}).remote()
    fleet.ray.get(leaky.ping.remote(), timeout=60)
    records = state.state._connect_and_get_accessor().get_actor_table(None, None)
    blob = b"".join(records)
    assert canary.encode() in blob, "the check must see runtime_env values (canary not found)"
    fleet.ray.kill(leaky)
    for secret in (fleet.exchange.key, fleet.exchange.secret, fleet.token):
        assert secret.encode() not in blob
    # ...nor in what the controller keeps in the GCS key-value store.
    store = GcsStore(fleet.cfg.name)
    for key in store.keys(""):
        value = store.get(key) or ""
        assert fleet.exchange.secret not in value and fleet.exchange.key not in value and fleet.token not in value


# --- apply ---------------------------------------------------------------------------------------


def _two_layers(spec: dict[str, Any]) -> dict[str, Any]:
    sol = spec["params"]["SOLUSDT"]
    return {**spec, "params": {**spec["params"], "SOLUSDT": {**sol, "grid": {**sol["grid"], "max_layers": 2}}}}


def _two_per_side(fleet: Fleet) -> bool:
    orders = fleet.exchange.open_orders("SOLUSDT")
    buys = sum(1 for o in orders if o["side"] == "BUY")
    return 0 < buys <= 2 and 0 < len(orders) - buys <= 2


def test_apply_changes_parameters_live_without_a_restart(fleet):
    fleet.all_quoting()
    ctl = fleet.controller()
    before = fleet.status("SOLUSDT")
    spec = fleet.ray.get(ctl.spec.remote(), timeout=15)
    result = fleet.ray.get(ctl.apply.remote(_two_layers(spec)), timeout=60)
    assert result["updated"] == ["SOLUSDT"] and not result["errors"] and not result["created"]
    poll(lambda: _two_per_side(fleet), 20.0, "SOLUSDT quoting at most 2 layers per side")
    after = fleet.status("SOLUSDT")
    assert (after["pid"], after["epoch"]) == (before["pid"], before["epoch"])  # live: no restart
    fleet.ray.get(ctl.apply.remote(spec), timeout=60)


def test_an_apply_lowering_a_cap_answers_once_the_exchange_holds_the_agent_within_it(fleet):
    """SOLUSDT long 0.9 with its ladder resting, its net_max lowered from 8 to 1 (a cap of 1.15) while
    the exchange answers every request a second late: the apply answered "updated" at once, with the
    old ladder resting over the new cap for seconds. Now it answers once the agent's worst case (orders
    resting or unconfirmed, as the exchange may fill them) is within the cap, and the exchange's truth
    agrees; a position alone above a cap is said (`above_cap`, "the position itself")."""
    ctl = fleet.controller()
    spec = fleet.ray.get(ctl.spec.remote(), timeout=15)
    sol = spec["params"]["SOLUSDT"]

    def with_net_max(net_max: float) -> dict:
        return {**spec, "params": {**spec["params"], "SOLUSDT": {**sol, "base": {**sol["base"], "net_max": net_max}}}}

    fleet.all_quoting()
    fleet.exchange.set_position("SOLUSDT", 0.9)
    poll(lambda: abs(fleet.ray.get(fleet.agent("SOLUSDT").exposure.remote(), timeout=15)["position"] - 0.9) < 1e-9
         and sum(float(o["origQty"]) for o in fleet.exchange.open_orders("SOLUSDT") if o["side"] == "BUY") > 0.25,
         20.0, "SOLUSDT long 0.9 with more than the new cap's room in bids")
    fleet.exchange.admin("/sim/fault/latency", {"ms": 1000, "path": "/fapi/v1/"})
    try:
        result = fleet.ray.get(ctl.apply.remote(with_net_max(1.0)), timeout=120)
        truth = fleet.exchange.state("SOLUSDT")
    finally:
        fleet.exchange.admin("/sim/fault/clear", {})
    try:
        assert result["updated"] == ["SOLUSDT"] and result["above_cap"] == {} and not result["errors"], result
        position = float(truth["positions"]["SOLUSDT"]["amount"])
        resting = {side: sum(float(o["origQty"]) - float(o["executedQty"]) for o in truth["open_orders"]
                             if o["side"] == side) for side in ("BUY", "SELL")}
        assert position + resting["BUY"] <= 1.15 + 1e-9 and position - resting["SELL"] >= -1.15 - 1e-9, truth
        fleet.exchange.set_position("SOLUSDT", 2.0)   # over the cap by itself: no cancel brings it within
        poll(lambda: fleet.ray.get(fleet.agent("SOLUSDT").exposure.remote(), timeout=15)["position"] == 2.0, 15.0,
             "SOLUSDT's agent to see its position of 2")
        result = fleet.ray.get(ctl.apply.remote(with_net_max(0.9)), timeout=120)
        over = result["above_cap"]["SOLUSDT"]
        assert over["why"] == "the position itself" and over["worst_long"] >= 2.0 and over["cap"] < 2.0, result
    finally:
        fleet.exchange.set_position("SOLUSDT", 0.0)
        fleet.ray.get(ctl.apply.remote(spec), timeout=120)
    fleet.all_quoting(timeout=30.0)


def test_parameters_applied_while_an_agent_restarts_reach_it(fleet):
    """A push that finds the agent being built (it read its spec before the apply) is applied once the
    agent is in place: it was answered "reads the new params from the controller" and lost."""
    fleet.all_quoting()
    ctl = fleet.controller()
    spec = fleet.ray.get(ctl.spec.remote(), timeout=15)
    pid = fleet.status("SOLUSDT")["pid"]
    os.kill(pid, signal.SIGKILL)
    poll(lambda: fleet.status("SOLUSDT")["pid"] != pid, 30.0, "SOLUSDT's agent restarted")
    try:
        result = fleet.ray.get(ctl.apply.remote(_two_layers(spec)), timeout=60)
        assert result["updated"] == ["SOLUSDT"] and not result["errors"], result
        poll(lambda: fleet.status("SOLUSDT")["state"] == "quoting" and _two_per_side(fleet), 40.0,
             "the restarted SOLUSDT quoting at most 2 layers per side")
    finally:
        fleet.ray.get(ctl.apply.remote(spec), timeout=60)
    fleet.all_quoting()


def test_fleet_notional_over_the_cap_puts_every_agent_into_reduce_only(fleet):
    ctl = fleet.controller()
    spec = fleet.ray.get(ctl.spec.remote(), timeout=15)
    fleet.exchange.set_position("ETHUSDC", 0.02)
    poll(lambda: abs(fleet.ray.get(fleet.agent("ETHUSDC").exposure.remote(), timeout=15)["position"] - 0.02) < 1e-9,
         15.0, "ETHUSDC agent to see its position")
    tight = {**spec, "fleet": {**spec["fleet"], "risk": {"max_total_notional": 1.0}}}
    fleet.ray.get(ctl.apply.remote(tight), timeout=60)

    def all_reduce_only() -> bool:
        return all(fleet.ray.get(fleet.agent(s).exposure.remote(), timeout=15).get("reduce_only") for s in SYMBOLS)

    poll(all_reduce_only, 15.0, "every agent reduce-only")
    assert fleet.ray.get(ctl.status.remote(), timeout=15)["reduce_only"] is True
    # Reduce-only: nothing that adds to the long ETHUSDC position stays on the book.
    poll(lambda: not any(o["side"] == "BUY" for o in fleet.exchange.open_orders("ETHUSDC")), 15.0,
         "no ETHUSDC buys while reduce-only and long")
    fleet.ray.get(ctl.apply.remote(spec), timeout=60)
    poll(lambda: not any(fleet.ray.get(fleet.agent(s).exposure.remote(), timeout=15).get("reduce_only")
                         for s in SYMBOLS), 15.0, "reduce-only lifted once back under the cap")
    fleet.all_quoting()


# --- restarts and kill switches ----------------------------------------------------------------


def test_sigkilled_agent_comes_back_with_a_new_epoch_and_no_duplicate_orders(fleet):
    max_layers = fleet.spec["params"]["BTCUSDT"]["grid"]["max_layers"]
    fleet.all_quoting()
    before = fleet.status("BTCUSDT")
    old_epoch = before["epoch"]
    assert {_epoch(o) for o in fleet.exchange.open_orders("BTCUSDT")} == {old_epoch}
    killed_at = time.monotonic()
    os.kill(before["pid"], signal.SIGKILL)

    def back() -> dict[str, Any] | None:
        st = fleet.status("BTCUSDT")
        orders = fleet.exchange.open_orders("BTCUSDT")
        if st["pid"] != before["pid"] and st["state"] == "quoting" and orders:
            return {"status": st, "orders": orders}
        return None

    seen = poll(back, 30.0, "BTCUSDT quoting again after SIGKILL")
    recovery = time.monotonic() - killed_at
    assert seen["status"]["epoch"] > old_epoch
    orders = seen["orders"]
    assert all(_epoch(o) == seen["status"]["epoch"] for o in orders), "older-epoch orders left on the book"
    assert _no_duplicates(orders, max_layers)
    print(f"recovery after SIGKILL: {recovery:.2f} s")


def test_a_restarted_agent_carries_its_books_as_the_exchange_booked_them(fleet):
    """Realized P&L, commission and the drawdown's depth survive a SIGKILL of the agent: its successor
    starts from the books it published and the trades the exchange lists after them, equal to the
    exchange's own record since the run began."""
    sym = "SOLUSDT"
    fleet.all_quoting()
    agent_exposure = lambda: fleet.ray.get(fleet.agent(sym).exposure.remote(), timeout=15)  # noqa: E731
    since = agent_exposure()["pnl_since_ms"]
    assert isinstance(since, int) and since > 0
    # a long bought 5 % above the market, a funding fee on it, then flattened by the kill switch: a loss, a
    # taker fee, a drawdown
    mark = float(fleet.exchange.state(sym)["markets"][sym]["mark_price"])
    fleet.exchange.set_position(sym, 1.0, entry_price=round(mark * 1.05, 2))
    fleet.exchange.admin("/sim/funding/rate", {"symbol": sym, "rate": "0.001"})
    fleet.exchange.admin("/sim/funding/settle", {"symbol": sym})

    def funding_agrees() -> bool:
        paid = fleet.exchange.funding_sum(sym, since)
        return paid != 0 and abs(agent_exposure()["funding_pnl"] - paid) < 1e-6

    poll(funding_agrees, 30.0, f"{sym}'s funding fee booked", interval=1.0)
    r = fleet.http("POST", "/kill", json={"symbols": [sym], "mode": "flatten", "reason": "books drill"})
    assert r.status_code == 200, r.text
    poll(lambda: fleet.exchange.position(sym) == 0.0, 20.0, f"{sym} flat at the exchange")

    def agreeing(pid: int | None = None) -> Callable[[], dict[str, Any] | None]:
        def check() -> dict[str, Any] | None:
            if pid is not None and fleet.status(sym)["pid"] == pid:
                return None
            seen = agent_exposure()
            realized, commission = fleet.exchange.trade_sums(sym, since)
            if seen.get("starting") or abs(seen["realized_pnl"] - realized) > 1e-6 \
                    or abs(seen["commission"] - commission) > 1e-6 or not seen["mark"]:
                return None   # (and a price: the peak moves with the books valued at one)
            return seen
        return check

    from agents.carry import read_carry

    # the books published hold the fee (the successor must not book it again from a look-up)
    poll(lambda: (c := read_carry(fleet.cfg.name, sym)) is not None and float(c.funding) != 0, 15.0,
         f"{sym}'s published books holding the funding fee")
    try:
        pid = fleet.status(sym)["pid"]
        os.kill(pid, signal.SIGKILL)   # at once: the flatten's trade may be newer than the last books published
        after = poll(agreeing(pid), 40.0, f"{sym}'s successor with the exchange's realized P&L and commission")
        assert after["pnl_since_ms"] == since
        assert after["realized_pnl"] < 0 and after["commission"] > 0
        # the loss, 5 % of 1 SOL's price, is a drawdown from the peak before it, on 1,000 of capital
        assert after["drawdown_pct"] > 0.5 and after["max_drawdown_pct"] >= after["drawdown_pct"], str(after)
        assert abs(after["funding_pnl"] - fleet.exchange.funding_sum(sym, since)) < 1e-6, str(after)
        # another fee within the minute: the successor's look-up of a cross-margin fee reads a minute back,
        # over the fee its carried books already hold; each counts once
        fleet.exchange.set_position(sym, 1.0)
        fleet.exchange.admin("/sim/funding/settle", {"symbol": sym})
        poll(lambda: funding_agrees() and len(fleet.exchange.signed_get("/fapi/v1/income", {
            "symbol": sym, "incomeType": "FUNDING_FEE", "startTime": since})) == 2, 30.0,
            f"{sym}'s two funding fees, each once", interval=1.0)
        fleet.exchange.set_position(sym, 0.0)
    finally:
        r = fleet.http("POST", "/resume", json={"symbols": [sym]})
    assert r.status_code == 200, r.text
    fleet.all_quoting()


def test_http_kill_halts_the_fleet_durably_across_restarts_until_resumed(fleet):
    fleet.all_quoting()
    try:
        halted_across_restarts(fleet)
    finally:   # the fleet quotes again for the tests after this one, whatever happened here
        r = fleet.http("POST", "/resume", json={"all": True})
    assert r.status_code == 200, r.text
    fleet.all_quoting(timeout=30.0)


def halted_across_restarts(fleet: Fleet) -> None:
    r = fleet.http("POST", "/kill", json={"all": True, "mode": "halt", "reason": "test drill"})
    assert r.status_code == 200, r.text
    result = r.json()["symbols"]
    for s in SYMBOLS:
        assert result[s]["open_orders"] == 0, result[s]
    # The answer says the exchange listed 0; an order an agent sent before it heard the halt can land
    # after that (CI saw a ladder land so, once). The endpoint sweeps such a symbol until its agent
    # confirms the halt, so every book is empty soon after, and stays so.
    poll(lambda: all(fleet.exchange.open_orders(s) == [] for s in SYMBOLS), LEASE_S + 1.0,
         "every book empty after the kill")
    # An agent restart comes back halted (new epoch, nothing quoted).
    st = fleet.status("ETHUSDC")
    os.kill(st["pid"], signal.SIGKILL)
    restarted = poll(lambda: (lambda x: x if x["pid"] != st["pid"] and x.get("epoch") and x["epoch"] > st["epoch"]
                              and x["state"] == "halted" else None)(fleet.status("ETHUSDC")),
                     30.0, "ETHUSDC restarted and halted")
    assert restarted["kill_state"] == "halted"
    assert restarted["halt_reason"] == "durable kill state: test drill"   # the operator's reason, not a stand-in
    # A controller restart keeps the kill state too.
    ctl_pid = fleet.ray.get(fleet.controller().__ray_call__.remote(lambda self: os.getpid()), timeout=15)
    os.kill(ctl_pid, signal.SIGKILL)
    states = poll(lambda: fleet.ray.get(fleet.controller().kill_states.remote(), timeout=10), 30.0,
                  "the restarted controller's kill states")
    assert {s: states[s]["state"] for s in SYMBOLS} == {s: "halted" for s in SYMBOLS}
    states = fleet.http("GET", "/kill").json()["kill_states"]     # the endpoint's own read of the GCS agrees
    assert {s: states[s]["state"] for s in SYMBOLS} == {s: "halted" for s in SYMBOLS}
    for s in SYMBOLS:
        assert fleet.exchange.open_orders(s) == []
        assert fleet.status(s)["state"] == "halted"


def test_a_hung_agent_is_emptied_by_the_controllers_emergency_path(fleet):
    fleet.all_quoting()
    try:
        hung_agent_emptied(fleet)
    finally:   # the fleet quotes again for the tests after this one, whatever happened here
        r = fleet.http("POST", "/resume", json={"symbols": ["SOLUSDT"]})
    assert r.status_code == 200, r.text
    fleet.all_quoting(timeout=30.0)


def hung_agent_emptied(fleet: Fleet) -> None:
    assert fleet.ray.get(fleet.agent("SOLUSDT").freeze_loop.remote(6.0), timeout=15)
    r = fleet.http("POST", "/kill", json={"symbols": ["SOLUSDT"], "mode": "halt", "reason": "hung agent drill"})
    assert r.status_code == 200, r.text
    sol = r.json()["symbols"]["SOLUSDT"]
    assert sol["path"] == "emergency" and sol["open_orders"] == 0, sol
    # A request the agent sent just before its loop froze may land after the answer's 0; the endpoint
    # sweeps the symbol until the agent's lease has lapsed.
    poll(lambda: fleet.exchange.open_orders("SOLUSDT") == [], LEASE_S + 1.0, "SOLUSDT's book empty after the kill")
    # Once the loop thaws, the agent's lease is refused: it comes back as a new, halted incarnation.
    old_epoch = fleet.ray.get(fleet.controller().status.remote(), timeout=15)["symbols"]["SOLUSDT"]["epoch"]
    poll(lambda: (fleet.status("SOLUSDT").get("epoch") or 0) > old_epoch
         and fleet.status("SOLUSDT")["state"] == "halted", 30.0, "SOLUSDT re-acquired, halted")
    assert fleet.exchange.open_orders("SOLUSDT") == []


def test_flatten_closes_every_position_at_the_exchange(fleet):
    fleet.all_quoting()
    fleet.exchange.set_position("ETHUSDC", 0.05)
    fleet.exchange.set_position("SOLUSDT", -2.0)
    r = fleet.http("POST", "/kill", json={"all": True, "mode": "flatten", "reason": "flatten drill"})
    assert r.status_code == 200, r.text
    for s, res in r.json()["symbols"].items():
        assert res["open_orders"] == 0, (s, res)
    for s in SYMBOLS:
        assert fleet.exchange.position(s) == 0.0
        assert fleet.exchange.open_orders(s) == []
    # once flat, halted (a restart then does not flatten again), the reason kept; written after the answer
    def halted_after_the_flatten() -> bool:
        states = fleet.http("GET", "/kill").json()["kill_states"]
        return {s: (states[s]["state"], states[s]["reason"]) for s in SYMBOLS} == {
            s: ("halted", "flatten drill") for s in SYMBOLS}

    poll(halted_after_the_flatten, 15.0, "every symbol halted with the flatten's reason")
    fleet.http("POST", "/resume", json={"all": True}).raise_for_status()
    fleet.all_quoting(timeout=30.0)


def test_an_agent_that_died_for_good_is_recreated_by_the_reconcile_loop(fleet):
    fleet.all_quoting()
    old = fleet.agent("BTCUSDT")
    fleet.ray.kill(old, no_restart=True)  # dead for good: Ray will not restart it
    poll(lambda: fleet.agent("BTCUSDT")._actor_id != old._actor_id, 20.0, "a new agent.BTCUSDT actor")
    fleet.all_quoting(timeout=30.0)
    assert fleet.ray.get(fleet.controller().status.remote(), timeout=15)["symbols"]["BTCUSDT"]["recreated"] >= 1


def test_apply_removes_unlisted_symbols_and_resplits_the_accounts_rate_limits(fleet):
    ctl = fleet.controller()
    spec = fleet.ray.get(ctl.spec.remote(), timeout=15)
    fewer_fleet = {**spec["fleet"], "symbols": [e for e in spec["fleet"]["symbols"] if e["symbol"] != "SOLUSDT"]}
    fewer = {"fleet": fewer_fleet, "params": {s: p for s, p in spec["params"].items() if s != "SOLUSDT"}}
    fleet.all_quoting()
    fleet.exchange.admin("/sim/fault/latency", {"ms": 1000, "path": "/fapi/v1/allOpenOrders"})
    try:   # a stop slower than a renewal: the removed agent keeps its lease until it released it
        result = fleet.ray.get(ctl.apply.remote(fewer), timeout=120)
    finally:
        fleet.exchange.admin("/sim/fault/clear", {})
    assert result["removed"]["SOLUSDT"]["open_orders"] == 0
    assert result["rate_shares"] == {"ETHUSDC": 0.5, "BTCUSDT": 0.5}
    # ... so it disarmed its dead-man switch, which only an owner may do
    assert fleet.exchange.state("SOLUSDT")["positions"]["SOLUSDT"]["countdown_deadline_ms"] in (None, 0)
    with pytest.raises(ValueError):
        fleet.ray.get_actor("agent.SOLUSDT", namespace=fleet.ns)
    assert fleet.exchange.open_orders("SOLUSDT") == []
    # an agent that outlived its retirement (its stop failed) would stop at its next renewal
    refused = fleet.ray.get(ctl.renew_lease.remote("SOLUSDT", "left-over", 1), timeout=15)
    assert not refused["granted"] and "not part of fleet" in refused["reason"]
    poll(lambda: all(fleet.status(s)["rate_share"] == 0.5 for s in ("ETHUSDC", "BTCUSDT")), 10.0,
         "the two remaining agents at half the account's limits each")
    result = fleet.ray.get(ctl.apply.remote(spec), timeout=120)
    assert result["created"] == ["SOLUSDT"]
    poll(lambda: all(abs(fleet.status(s)["rate_share"] - 1 / 3) < 1e-9 for s in SYMBOLS), 20.0,
         "three agents at a third each")
    fleet.all_quoting(timeout=30.0)


def test_a_retire_the_exchange_does_not_confirm_stays_owed_until_it_lists_no_order(fleet):
    """An apply removes SOLUSDT while the exchange refuses every cancel (503 on each DELETE: the
    cancel-all, the batch and the single routes). The retire cannot see its book emptied, so it stays
    owed with the spec (it was written off as done, and nothing reached those orders again: no kill or
    down reaches a symbol the spec does not name), a left-over agent still gets no lease, and the
    controller tries again until the exchange lists none."""
    ctl = fleet.controller()
    spec = fleet.ray.get(ctl.spec.remote(), timeout=15)
    fewer = {"fleet": {**spec["fleet"], "symbols": [e for e in spec["fleet"]["symbols"] if e["symbol"] != "SOLUSDT"]},
             "params": {s: p for s, p in spec["params"].items() if s != "SOLUSDT"}}
    fleet.all_quoting()
    fleet.exchange.admin("/sim/fault/rest", {"mode": "error", "count": 1_000_000, "status": 503,
                                             "method": "DELETE", "path": "/fapi/v1/"})
    try:
        result = fleet.ray.get(ctl.apply.remote(fewer), timeout=120)
        assert result["unconfirmed"] == ["SOLUSDT"], result
        assert result["removed"]["SOLUSDT"]["open_orders"] != 0, result
        assert fleet.exchange.open_orders("SOLUSDT")   # the exchange's truth: the refusals left them
        assert fleet.ray.get(ctl.spec.remote(), timeout=15)["pending"]["retire"] == {"SOLUSDT": "main"}
        refused = fleet.ray.get(ctl.renew_lease.remote("SOLUSDT", "left-over", 1), timeout=15)
        assert not refused["granted"] and "not part of fleet" in refused["reason"], refused
    finally:
        fleet.exchange.admin("/sim/fault/clear", {})
    poll(lambda: "pending" not in fleet.ray.get(ctl.spec.remote(), timeout=15), 40.0,
         "the retire tried again until confirmed, then no longer owed")
    assert fleet.exchange.open_orders("SOLUSDT") == []
    result = fleet.ray.get(ctl.apply.remote(spec), timeout=120)
    assert result["created"] == ["SOLUSDT"] and result["unconfirmed"] == [], result
    fleet.all_quoting(timeout=30.0)


def test_a_runtime_change_makes_every_agent_anew_with_it(fleet):
    """An agent reads its runtime once, at its start: an apply that shortens the dead-man countdown is
    not pushed (it was answered "updated" and waited for the next restart); each agent is retired,
    its book confirmed empty, and made anew, whose switch the exchange then holds at the new length."""
    ctl = fleet.controller()
    spec = fleet.ray.get(ctl.spec.remote(), timeout=15)
    fleet.all_quoting()
    runtime = {**spec["fleet"].get("runtime", {}), "deadman_countdown_ms": 60_000, "deadman_heartbeat_sec": 15.0}
    shorter = {**spec, "fleet": {**spec["fleet"], "runtime": runtime}}
    result = fleet.ray.get(ctl.apply.remote(shorter), timeout=180)
    try:
        assert sorted(result["restarted"]) == sorted(SYMBOLS) and result["updated"] == [], result
        assert all(r["open_orders"] == 0 and not r["error"] for r in result["restarted"].values()), result
        assert not result["removed"], result   # (created by the apply, or by the reconcile pass before it)
        fleet.all_quoting(timeout=45.0)

        def armed_within_60s() -> bool:
            now_ms = time.time() * 1000
            deadlines = [fleet.exchange.state(s)["positions"][s]["countdown_deadline_ms"] for s in SYMBOLS]
            return all(d and d - now_ms <= 60_000 + 1_000 for d in deadlines)

        poll(armed_within_60s, 20.0, "every agent's dead-man switch armed at 60 s at the exchange")
    finally:
        result = fleet.ray.get(fleet.controller().apply.remote(spec), timeout=180)
    assert sorted(result["restarted"]) == sorted(SYMBOLS), result
    fleet.all_quoting(timeout=45.0)


def test_a_symbol_added_to_a_fleet_halted_as_a_whole_stays_halted_until_resumed(fleet):
    """The desk halts the whole fleet, then applies a config with one more symbol: it starts halted,
    nothing of it at the exchange, until the fleet is resumed (before, it quoted at once)."""
    ctl = fleet.controller()
    spec = fleet.ray.get(ctl.spec.remote(), timeout=15)
    fewer = {"fleet": {**spec["fleet"], "symbols": [e for e in spec["fleet"]["symbols"] if e["symbol"] != "SOLUSDT"]},
             "params": {s: p for s, p in spec["params"].items() if s != "SOLUSDT"}}
    fleet.all_quoting()
    assert fleet.ray.get(ctl.apply.remote(fewer), timeout=120)["removed"]["SOLUSDT"]["open_orders"] == 0
    r = fleet.http("POST", "/kill", json={"all": True, "mode": "halt", "reason": "desk halt"})
    assert r.status_code == 200 and r.json()["confirmed"], r.text
    try:
        result = fleet.ray.get(ctl.apply.remote(spec), timeout=120)
        assert result["held"] == ["SOLUSDT"], result
        poll(lambda: fleet.status("SOLUSDT")["state"] == "halted", 30.0, "SOLUSDT's new agent up, halted")
        assert fleet.exchange.open_orders("SOLUSDT") == []
        state = fleet.http("GET", "/kill").json()["kill_states"]["SOLUSDT"]
        assert state["state"] == "halted" and "added while the fleet was halted (desk halt)" in state["reason"]
    finally:
        r = fleet.http("POST", "/resume", json={"all": True})
    assert r.status_code == 200, r.text
    fleet.all_quoting(timeout=30.0)


def test_an_apply_whose_controller_is_killed_midway_is_finished_by_its_successor(fleet):
    """The controller SIGKILLed while an apply retires SOLUSDT (its cancels held 4 s by the exchange) and
    lowers ETHUSDC's net_max: Ray runs the call again on the restarted controller, which reads the new
    spec back as the fleet's. The work owed is stored with the spec, so the retried apply still retires
    SOLUSDT (no agent left, nothing at the exchange) and gives ETHUSDC its lower cap."""
    ctl = fleet.controller()
    spec = fleet.ray.get(ctl.spec.remote(), timeout=15)
    fleet.all_quoting()
    cap_before = fleet.ray.get(fleet.agent("ETHUSDC").exposure.remote(), timeout=15)["cap"]
    eth = {**spec["params"]["ETHUSDC"], "base": {**spec["params"]["ETHUSDC"]["base"], "net_max": 0.1}}
    changed = {"fleet": {**spec["fleet"], "symbols": [e for e in spec["fleet"]["symbols"] if e["symbol"] != "SOLUSDT"]},
               "params": {**{s: p for s, p in spec["params"].items() if s != "SOLUSDT"}, "ETHUSDC": eth}}
    fleet.exchange.admin("/sim/fault/latency", {"ms": 4000, "path": "/fapi/v1/allOpenOrders"})
    try:
        pid = fleet.ray.get(ctl.__ray_call__.remote(lambda self: os.getpid()), timeout=15)
        ref = ctl.apply.remote(changed)
        poll(lambda: fleet.status("SOLUSDT")["state"] == "stopping", 30.0, "the apply stopping SOLUSDT's agent")
        os.kill(pid, signal.SIGKILL)
        result = fleet.ray.get(ref, timeout=120)
    finally:
        fleet.exchange.admin("/sim/fault/clear", {})
    assert result["removed"]["SOLUSDT"]["open_orders"] == 0, result
    assert "ETHUSDC" in result["updated"] and not result["errors"], result
    assert fleet.ray.get(fleet.controller().__ray_call__.remote(lambda self: os.getpid()), timeout=15) != pid
    with pytest.raises(ValueError):
        fleet.ray.get_actor("agent.SOLUSDT", namespace=fleet.ns)
    assert fleet.exchange.open_orders("SOLUSDT") == []
    cap = lambda: fleet.ray.get(fleet.agent("ETHUSDC").exposure.remote(), timeout=15)["cap"]  # noqa: E731
    poll(lambda: abs(cap() - 0.1 * 1.15) < 1e-9, 10.0, lambda: f"ETHUSDC's cap lowered from {cap_before} ({cap()})")
    assert "pending" not in fleet.ray.get(fleet.controller().spec.remote(), timeout=15)
    result = fleet.ray.get(fleet.controller().apply.remote(spec), timeout=120)
    assert result["created"] == ["SOLUSDT"] and "ETHUSDC" in result["updated"]
    fleet.all_quoting(timeout=30.0)


def test_a_hung_agents_book_is_emptied_at_once_when_its_symbol_is_removed(fleet):
    """SOLUSDT's agent SIGSTOPped, then removed by an apply: the controller empties its book at the
    exchange beside the stop it waits for (up to stop_timeout_s), not after it."""
    ctl = fleet.controller()
    spec = fleet.ray.get(ctl.spec.remote(), timeout=15)
    fleet.all_quoting()
    pid = fleet.status("SOLUSDT")["pid"]
    fewer = {"fleet": {**spec["fleet"], "symbols": [e for e in spec["fleet"]["symbols"] if e["symbol"] != "SOLUSDT"]},
             "params": {s: p for s, p in spec["params"].items() if s != "SOLUSDT"}}
    os.kill(pid, signal.SIGSTOP)
    try:
        ref = ctl.apply.remote(fewer)
        poll(lambda: fleet.exchange.open_orders("SOLUSDT") == [], 10.0, "SOLUSDT's book emptied at the exchange")
        ready, _ = fleet.ray.wait([ref], timeout=0)
        assert not ready, "the apply no longer waits for the hung agent's stop: this test proves nothing"
        result = fleet.ray.get(ref, timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    assert result["removed"]["SOLUSDT"]["open_orders"] == 0 and fleet.exchange.open_orders("SOLUSDT") == []
    assert fleet.ray.get(fleet.controller().apply.remote(spec), timeout=120)["created"] == ["SOLUSDT"]
    fleet.all_quoting(timeout=30.0)


def test_an_agent_of_a_symbol_the_fleet_does_not_trade_is_retired(fleet):
    """An agent actor in the fleet's namespace for a symbol the spec does not name (left by an apply
    whose controller died before this rule, or made by hand) is retired by the reconcile pass."""
    from agents.actor import AgentActor

    stray = AgentActor.options(name="agent.XRPUSDT", namespace=fleet.ns, lifetime="detached",
                               num_cpus=0.05).remote(fleet.cfg.name, fleet.ns, "XRPUSDT")
    try:
        fleet.ray.get(stray.status.remote(), timeout=60)
    except fleet.ray.exceptions.ActorDiedError as exc:   # the reconcile pass retired it before it answered
        assert "killed by `ray.kill`" in str(exc), exc

    def gone() -> bool:
        try:
            fleet.ray.get_actor("agent.XRPUSDT", namespace=fleet.ns)
        except ValueError:
            return True
        return False

    poll(gone, 30.0, "the stray agent retired")
    fleet.all_quoting()


def test_cli_status_exposure_kill_and_resume_talk_to_the_running_fleet(fleet, capsys):
    import json

    from fleet.ops.cli import main

    fleet.all_quoting()
    assert main(["status", "--fleet", fleet.cfg.name, "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert set(status["controller"]["symbols"]) == set(SYMBOLS)
    assert all(a["state"] == "quoting" for a in status["agents"].values())
    assert main(["exposure", "--fleet", fleet.cfg.name]) == 0
    table = capsys.readouterr().out
    assert all(s in table for s in SYMBOLS) and "agents quoting 3/3" in table
    assert main(["kill", "--fleet", fleet.cfg.name, "--symbol", "BTCUSDT", "--reason", "cli drill"]) == 0
    killed = json.loads(capsys.readouterr().out)
    assert killed["symbols"]["BTCUSDT"]["open_orders"] == 0 and list(killed["symbols"]) == ["BTCUSDT"]
    assert fleet.exchange.open_orders("BTCUSDT") == []
    assert main(["kill", "--fleet", fleet.cfg.name, "--symbol", "XRPUSDT"]) == 2
    assert "unknown symbol" in capsys.readouterr().err
    assert main(["resume", "--fleet", fleet.cfg.name, "--symbol", "BTCUSDT"]) == 0
    capsys.readouterr()
    fleet.all_quoting(timeout=30.0)
    assert main(["status", "--fleet", "no-such-fleet"]) == 4
    assert "not running" in capsys.readouterr().err


def test_cli_apply_refuses_a_symbol_the_running_exchange_does_not_list_and_changes_nothing(fleet, tmp_path, capsys):
    """As `up` and `validate` do: a symbol the running exchange does not list (the simulator `up`
    started serves its symbols) is refused before anything changes. Applied, it swapped an agent for
    one that never starts, and the account's kill path failed on its -1121."""
    from fleet.ops.cli import main

    doc = fleet.cfg.model_dump(mode="json", exclude_none=True)
    doc["symbols"] = [{"symbol": s, "account": "main", "params_file": str(CONFIGS / "symbols" / f"{p}.yaml"),
                       "net_max_hard_cap": DEMO_HARD_CAPS.get(p)}
                      for s, p in (("ETHUSDC", "ETHUSDC"), ("BTCUSDT", "BTCUSDT"), ("DOGEUSDT", "SOLUSDT"))]
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(doc))
    ctl = fleet.controller()
    before = fleet.ray.get(ctl.spec.remote(), timeout=15)
    assert main(["apply", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "DOGEUSDT is not listed by the exchange" in err and "nothing applied" in err, err
    assert fleet.ray.get(ctl.spec.remote(), timeout=15) == before
    fleet.all_quoting(timeout=30.0)


# --- down ----------------------------------------------------------------------------------------


def test_a_flatten_down_leaves_no_position_no_order_no_agent_and_no_endpoint(fleet):
    """``down --flatten`` while the exchange holds every cancel-all 4 s: each stop outlasts the agent's
    3 s lease, which it keeps renewing until it has released it, so its flatten still goes out. SOLUSDT's
    agent is hung (SIGSTOPped): once its stop timed out and the actor is gone, the controller closes it."""
    from ray import serve

    from controller.api import app_name

    fleet.all_quoting()
    for symbol, amount in (("ETHUSDC", 0.05), ("BTCUSDT", -0.002), ("SOLUSDT", 1.0)):
        fleet.exchange.set_position(symbol, amount)
    hung = fleet.status("SOLUSDT")["pid"]
    fleet.exchange.admin("/sim/fault/latency", {"ms": 4000, "path": "/fapi/v1/allOpenOrders"})
    t0 = int(time.time() * 1000)
    os.kill(hung, signal.SIGSTOP)
    try:
        result = fleet.ray.get(fleet.controller().down.remote(True), timeout=120)
    finally:
        fleet.exchange.admin("/sim/fault/clear", {})
        with contextlib.suppress(ProcessLookupError):
            os.kill(hung, signal.SIGCONT)
    assert {s: r["open_orders"] for s, r in result["symbols"].items()} == {s: 0 for s in SYMBOLS}, result
    assert {s: fleet.exchange.position(s) for s in SYMBOLS} == {s: 0.0 for s in SYMBOLS}
    assert {s: r["position"] for s, r in result["symbols"].items()} == {s: 0.0 for s in SYMBOLS}, result
    assert result["symbols"]["SOLUSDT"]["summary"] is None   # its stop never answered: the controller closed it
    # found hung, it was not waited for (its ladder rested and filled until its stop timed out)
    assert result["symbols"]["SOLUSDT"]["error"].startswith("agent hung: no answer within 3 s"), result
    # the controller's closing fills are in the journal: no agent of SOLUSDT is left to read them
    traded = {t["id"] for t in fleet.exchange.signed_get("/fapi/v1/userTrades", {"symbol": "SOLUSDT", "startTime": t0})}
    engine = make_engine(Target(url=f"sqlite:///{sqlite_path(fleet.cfg.state_dir, fleet.cfg.name)}"))
    with engine.connect() as conn:
        journaled = {r for (r,) in conn.exec_driver_sql("SELECT trade_id FROM fills WHERE symbol = 'SOLUSDT'")}
    engine.dispose()
    assert traded and traded <= journaled, (traded, journaled)
    assert all(result["symbols"][s]["summary"]["exchange_position"] == 0.0 for s in ("ETHUSDC", "BTCUSDT"))
    for s in SYMBOLS:
        assert fleet.exchange.open_orders(s) == []
        with pytest.raises(ValueError):
            fleet.ray.get_actor(f"agent.{s}", namespace=fleet.ns)
    stop_fleet(fleet.ns, fleet.cfg.name)  # the endpoint, the controller and the simulator
    assert find_controller(fleet.ns) is None
    from controller.handles import find_spawner

    assert find_spawner(fleet.ns) is None   # the agents' spawner goes with it
    assert app_name(fleet.cfg.name) not in serve.status().applications
