"""The kill path with no single slow link, and a hung owner fenced: on a live fleet (the controller,
three real agent actors and the endpoint on the session's Ray cluster, the simulator over loopback).
Processes are frozen with SIGSTOP; every claim is checked at the exchange (/sim/state); waits poll a
deadline, no timing is asserted (the figures are bench/fleet_bench.py's)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import secrets
import signal
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests
import yaml

from agents.orders import parse_client_order_id
from controller.api import ApiSettings, deploy, undeploy
from controller.lease import GcsStore, LeaseBook
from fleet.config import AccountConfig, AgentPlacement, ApiConfig, ExchangeConfig, FleetConfig, RuntimeParams, SymbolEntry
from tests import polling
from tests.controller.test_api_fleet import AGENT_TIMEOUT_S, DEMO_CONFIG, DEMO_HARD_CAPS, SYMBOLS, Live, SimThread
from tests.controller.test_prometheus import free_port

LEASE_TTL_S = 3.0   # the controller's default
KILL_TIMEOUT_S = 0.5


def poll(check: Any, within_s: float, what: str) -> Any:
    return polling.poll(check, within_s, what, 0.1, retry_errors=True)


# --- the pure pieces ---------------------------------------------------------------------------------


def test_the_endpoints_kill_knows_the_fleet_as_applied_not_only_as_deployed(ray_cluster):
    """A symbol an ``apply`` added after the endpoint was deployed is killed too: the endpoint reads
    the applied spec from the GCS at each kill (and keeps the last one it read if that fails)."""
    from controller.kill_path import DirectKill
    from controller.spec import SPEC_DOC, build_spec

    entries = [SymbolEntry(symbol=s, account="main", params={"base": {"base_size": 0.01}}) for s in SYMBOLS]
    deployed = FleetConfig(name=f"kpspec{uuid.uuid4().hex[:6]}", accounts=(AccountConfig(name="main", key_file="/unused"),),
                           symbols=tuple(entries[:2]))
    direct = DirectKill(deployed, calls=None, halt_timeout_s=1.0)  # type: ignore[arg-type]
    assert asyncio.run(direct.refresh()).name == deployed.name and direct.symbols() == list(SYMBOLS[:2])
    applied = deployed.model_copy(update={"symbols": tuple(entries)})
    direct.book.put_doc(SPEC_DOC, build_spec(applied))
    asyncio.run(direct.refresh())
    assert direct.symbols() == list(SYMBOLS) and direct.fleet.entry(SYMBOLS[2]).account == "main"
    direct.book.store.put(f"doc/{SPEC_DOC}", "{not json")
    asyncio.run(direct.refresh())
    assert direct.symbols() == list(SYMBOLS)   # kept, and the failure logged
    direct.book.delete_doc(SPEC_DOC)


def test_the_kill_path_tries_its_requests_ahead_and_names_an_account_whose_key_fails(tmp_path, caplog):
    """Ahead of any kill, the endpoint looks up every symbol's open orders with its account's key (the
    kill's own confirmation): an account whose key the exchange refuses is found then, not in a kill."""
    from controller.kill_path import DirectKill

    api_key, api_secret = secrets.token_hex(32), secrets.token_hex(32)
    sim = SimThread(api_key, api_secret)
    try:
        files = {}
        for name, secret in (("good", api_secret), ("bad", secrets.token_hex(32))):
            files[name] = tmp_path / f"{name}.keys.yaml"
            files[name].write_text(yaml.safe_dump({"api_key": api_key, "api_secret": secret}))
            files[name].chmod(0o600)
        cfg = FleetConfig(
            name=f"kpv{uuid.uuid4().hex[:6]}",
            exchange=ExchangeConfig(kind="sim", rest_url=sim.server.rest_url, ws_market_url=sim.server.ws_url),
            accounts=tuple(AccountConfig(name=n, key_file=str(f)) for n, f in files.items()),
            symbols=(SymbolEntry(symbol=SYMBOLS[0], account="good"), SymbolEntry(symbol=SYMBOLS[1], account="good"),
                     SymbolEntry(symbol=SYMBOLS[2], account="bad")))
        direct = DirectKill(cfg, calls=None, halt_timeout_s=1.0)  # type: ignore[arg-type]

        async def verify() -> None:
            try:
                await direct._verify({"good": list(SYMBOLS[:2]), "bad": [SYMBOLS[2]]})
            finally:
                await direct.desk.close()

        with caplog.at_level("ERROR", logger="mmfleet.kill"):
            asyncio.run(verify())
        assert set(direct.unverified) == {"bad"} and "-1022" in direct.unverified["bad"], direct.unverified
        assert direct.connections == 2                      # the good account's two look-ups answered
        assert any("account bad" in r.getMessage() for r in caplog.records)
        assert api_secret not in caplog.text and api_key not in caplog.text
    finally:
        sim.stop()


def test_the_first_route_to_see_zero_answers_and_a_failed_route_does_not():
    from controller.kill_path import first_empty

    async def route(delay: float, result: Any) -> Any:
        await asyncio.sleep(delay)
        if isinstance(result, BaseException):
            raise result
        return result

    async def race(agent: tuple[float, Any], exchange: tuple[float, Any]) -> tuple[str | None, float | None]:
        tasks = {"agent": asyncio.ensure_future(route(*agent)), "exchange": asyncio.ensure_future(route(*exchange))}
        try:
            return await first_empty(tasks, time.monotonic())
        finally:
            for t in tasks.values():
                t.cancel()

    assert asyncio.run(race((0.0, {"open_orders": 0}), (0.2, 0)))[0] == "agent"
    assert asyncio.run(race((0.0, TimeoutError("hung")), (0.05, 0)))[0] == "exchange"
    assert asyncio.run(race((0.0, {"outcome": "not_started", "open_orders": None}), (0.05, 0)))[0] == "exchange"
    assert asyncio.run(race((0.0, {"open_orders": 2}), (0.0, 3))) == (None, None)


def test_the_symbol_is_swept_until_its_agent_confirms_the_halt_or_its_lease_lapsed():
    """The agent has not confirmed the halt: its symbol is cancelled again soon, then every sweep until it does;
    if its call ends without confirming (timed out, failed), until its lease has lapsed, and once more
    after; never after a resume or a later kill. While the kill state is not durable (the GCS down: no
    lease can be renewed either), the sweeping pauses once the lease read then has lapsed, and goes on
    once the state lands. The book is the controller's own (:class:`LeaseBook`) on an in-memory store."""
    from controller.kill_path import DurableKill, sweep_until_halted
    from controller.lease import LeaseBook, MemoryStore
    from fleet.vocabulary import KillState

    async def run(agent_s: float, answer: object = None, *, lease_s: float = 0.05, fail: bool = False,
                  resumed_after: int | None = None, gcs_back_s: float | None = None, every_s: float = 0.05,
                  first_s: float = 0.1) -> dict[str, Any]:
        book = LeaseBook(MemoryStore(), lease_ttl_s=lease_s)
        book.acquire("BTCUSDT", "agent-1", now=time.time())
        lock = asyncio.Lock()
        if gcs_back_s is not None:
            await lock.acquire()   # the kill state cannot be written until it is released
        durable = DurableKill(book, ["BTCUSDT"], KillState.HALTED, "drill", lock)
        calls: list[float] = []
        answered: list[float] = []

        async def sweep() -> None:
            calls.append(time.monotonic())
            if resumed_after is not None and len(calls) == resumed_after:
                book.set_kill_state("BTCUSDT", KillState.RUNNING, "resumed")
            if fail:
                raise ConnectionError("exchange unreachable")

        async def halt() -> dict:
            await asyncio.sleep(agent_s)
            answered.append(time.monotonic())
            if isinstance(answer, Exception):
                raise answer
            return {"open_orders": 0} if answer is None else answer  # type: ignore[return-value]

        async def gcs_back() -> float:
            await asyncio.sleep(gcs_back_s or 0.0)
            book.renew("BTCUSDT", "agent-1", 1, now=time.time())   # a renewal granted just before the state lands
            lock.release()
            return time.monotonic()

        back = asyncio.ensure_future(gcs_back()) if gcs_back_s is not None else None
        agent = asyncio.ensure_future(halt())
        started = time.monotonic()
        made = await sweep_until_halted(agent, sweep, durable, book, "BTCUSDT", every_s=every_s, first_s=first_s)
        agent.cancel()
        await asyncio.sleep(0.12)
        return {"made": made, "calls": calls, "answered": answered[0] if answered else math.inf,
                "started": started, "lease_end": started + lease_s, "back": await back if back else None}

    r = asyncio.run(run(0.3))
    assert r["made"] == len(r["calls"]) >= 1 and all(t <= r["answered"] for t in r["calls"])   # none after the answer
    r = asyncio.run(run(0.3, every_s=1.0, first_s=0.05))   # the first pass soon, for an order landing just after 0
    assert r["made"] == 1 and r["calls"][0] < r["answered"]
    assert asyncio.run(run(0.0))["made"] == 0                                  # answered at once: no sweep
    r = asyncio.run(run(0.6, fail=True))                                       # a failing sweep: sweeping goes on
    assert r["made"] == len(r["calls"]) >= 2
    # The call timed out (or failed, or did not confirm): swept on until the lease has lapsed, the last sweep after it.
    for answer in (TimeoutError("agent hung"), {"open_orders": 3}):
        r = asyncio.run(run(0.05, answer, lease_s=0.4))
        assert r["made"] == len(r["calls"]) >= 2 and r["calls"][-1] >= r["lease_end"], r
    # Superseded (a later command reached it) or not started (it reads the kill state with its
    # grant): nothing more to sweep for, though the lease still runs.
    for answer in ({"outcome": "superseded", "open_orders": None}, {"outcome": "not_started", "open_orders": None}):
        r = asyncio.run(run(0.12, answer, lease_s=5.0))
        assert r["made"] == len(r["calls"]) >= 1 and all(t <= r["answered"] for t in r["calls"])
    # Resumed (or killed again) since: that command's own routes take over.
    assert asyncio.run(run(0.05, TimeoutError("agent hung"), lease_s=5.0, resumed_after=3))["made"] == 3
    # The kill state not durable yet (the GCS down) and the agent's call timed out: swept until the
    # lease lapsed, then nothing while the state cannot be written (no renewal either); once it lands,
    # until the lease read then (renewed just before, without the kill state) has lapsed.
    r = asyncio.run(run(0.05, TimeoutError("agent hung"), lease_s=0.2, gcs_back_s=1.0))
    paused = [t for t in r["calls"] if r["lease_end"] + 0.3 < t < r["back"]]
    assert r["calls"][0] < r["lease_end"] and not paused and r["calls"][-1] >= r["back"] + 0.2, r
    # A not-started agent gets the kill state with its grant once it is durable: swept until then.
    r = asyncio.run(run(0.05, {"outcome": "not_started", "open_orders": None}, lease_s=0.2, gcs_back_s=1.0))
    assert r["calls"] and not [t for t in r["calls"] if r["lease_end"] + 0.3 < t], r


def test_a_lapsed_lease_is_judged_by_who_answers_for_the_actor():
    from controller.fence import GONE, HUNG, LATE, REPLACED, STARTING, STOPPING, verdict_of

    assert verdict_of(TimeoutError(), "h1") == HUNG                       # a stopped process
    assert verdict_of(LookupError("no actor"), "h1") == GONE
    assert verdict_of({"holder": "h2", "state": "starting"}, "h1") == REPLACED   # Ray restarted it already
    assert verdict_of({"holder": "h1", "state": "quoting", "blocks": ["lease"]}, "h1") == HUNG   # loop not renewing
    assert verdict_of({"holder": "h1", "state": "paused", "blocks": ["starting"]}, "h1") == STARTING
    assert verdict_of({"holder": "h1", "state": "stopping"}, "h1") == STOPPING
    # the same holder, its lease lapsed at t=100: is its trading loop running?
    late = {"holder": "h1", "state": "paused", "blocks": ["lease"]}
    assert verdict_of({**late, "loop_published_at": 100.4}, "h1", 100.0) == LATE   # yes: renewals late
    assert verdict_of({**late, "loop_published_at": 99.0}, "h1", 100.0) == HUNG    # not since it lapsed
    assert verdict_of({**late, "loop_published_at": True}, "h1", 100.0) == HUNG    # not a time


def test_an_owner_found_alive_is_fenced_again_if_its_lease_stays_lapsed():
    """The fence's watch, on a lease book in memory: a lapse is dealt with once; an owner whose loop
    runs (late) is looked at again only once ``late_patience_s`` passed without a renewal, and a
    renewal ends the patience."""
    from controller.fence import Fence
    from controller.lease import MemoryStore

    book = LeaseBook(MemoryStore(), lease_ttl_s=3.0)
    book.acquire("X", "h1", now=1000.0)
    fence = Fence(book, agents=None, desk=None, account_of=lambda s: None, late_patience_s=9.0)  # type: ignore[arg-type]
    fence.grace_until = 0.0
    lease = book.lease("X")
    assert fence.lapsed(["X"], 1002.9) == []                      # not lapsed yet
    assert fence.lapsed(["X"], 1003.1) == [("X", lease)]          # lapsed: dealt with once ...
    fence._dealt["X"] = (lease.epoch, lease.expires_at)
    fence.late["X"] = 1003.1                                      # ... and found alive, its renewals late
    assert fence.lapsed(["X"], 1011.0) == []                      # within the patience: left alone
    assert fence.lapsed(["X"], 1012.2) == [("X", lease)]          # past it, still lapsed: again (hung)
    book.renew("X", "h1", lease.epoch, now=1012.3)                # a renewal lands
    assert fence.lapsed(["X"], 1012.4) == [] and "X" not in fence.late


class StatusOnly:
    """The actors' registry as the fence sees it when an actor answers ``status`` but no actor can be
    looked up to kill (the answer given here: a start that never gets further)."""

    def __init__(self, status: dict) -> None:
        self.status = status

    async def call(self, symbol: str, method: str, *args, timeout: float) -> dict:
        assert method == "status"
        return self.status

    def get(self, symbol: str, fresh: bool = False) -> None:
        return None


def test_an_owner_still_starting_whose_lease_stays_lapsed_is_hung_after_all():
    """An owner that answers "starting" while its lease lapsed is left alone once (a start may be slow),
    but it renews from its grant on: still lapsed ``late_patience_s`` later, its start is stuck, and
    the fence revokes its lease to replace it. Before, "starting" was never looked at again, and the
    symbol stayed unowned with no successor."""
    from controller.fence import HUNG, STARTING, Fence
    from controller.lease import MemoryStore

    book = LeaseBook(MemoryStore(), lease_ttl_s=3.0)
    book.acquire("X", "h1", now=1000.0)
    lease = book.lease("X")
    starting = StatusOnly({"holder": "h1", "state": "starting", "blocks": ["starting"]})
    fence = Fence(book, agents=starting, desk=None, account_of=lambda s: None,  # type: ignore[arg-type]
                  late_patience_s=9.0)
    fence.grace_until = 0.0
    [first] = asyncio.run(fence.tick(["X"], 1003.5))
    assert first.verdict == STARTING and not book.lease("X").revoked
    assert asyncio.run(fence.tick(["X"], 1010.0)) == []            # within the patience: left alone
    [again] = asyncio.run(fence.tick(["X"], 1012.6))
    assert again.verdict == HUNG and book.lease("X").revoked and book.lease("X").epoch == lease.epoch


def test_a_lapsed_holder_that_is_no_longer_the_actor_is_revoked_and_barred():
    """The actor answers from another process (Ray restarted it, the old one out of its reach): the old
    holder's lapsed lease is revoked, so it cannot renew it back to life (a renewal does not look at the
    expiry), and the holder is barred: its acquire once stopped is refused, the actor's granted."""
    from controller.fence import REPLACED, Fence
    from controller.lease import MemoryStore

    book = LeaseBook(MemoryStore(), lease_ttl_s=3.0)
    old = book.acquire("X", "h1", now=1000.0)
    restarted = StatusOnly({"holder": "h2", "state": "starting", "blocks": ["starting"]})
    fence = Fence(book, agents=restarted, desk=None, account_of=lambda s: None)  # type: ignore[arg-type]
    fence.grace_until = 0.0
    [done] = asyncio.run(fence.tick(["X"], 1003.5))
    assert done.verdict == REPLACED and book.lease("X").revoked and book.barred("X") == ["h1"]
    assert not book.renew("X", "h1", old.epoch, now=1003.6).granted
    assert book.release("X", "h1", old.epoch)
    assert not book.acquire("X", "h1", now=1003.7).granted
    assert book.acquire("X", "h2", now=1003.8).epoch == old.epoch + 1


def test_a_revoked_lease_whose_owner_hung_is_fenced_too():
    """A lease revoked (by a kill's emergency path, or by a fence whose controller died before it
    killed the actor) and lapsed, its owner hung: fenced like any other lapse. It was skipped for good,
    the symbol left with no owner and only the dead-man switch to cancel what rested."""
    from controller.fence import HUNG, Fence
    from controller.lease import MemoryStore

    book = LeaseBook(MemoryStore(), lease_ttl_s=3.0)
    book.acquire("X", "h1", now=1000.0)
    book.revoke("X")
    fence = Fence(book, agents=None, desk=None, account_of=lambda s: None, probe_timeout_s=0.1)  # type: ignore[arg-type]
    fence.grace_until = 0.0
    assert asyncio.run(fence.tick(["X"], 1002.0)) == []          # revoked, not lapsed yet
    [done] = asyncio.run(fence.tick(["X"], 1004.0))
    assert done.verdict == HUNG and done.epoch == book.lease("X").epoch
    assert asyncio.run(fence.tick(["X"], 1004.5)) == []          # dealt with once


def test_a_hung_owner_whose_replacement_failed_is_retried_until_a_successor_owns_the_symbol():
    """The fence's replacement of a hung owner (revoke, kill its actor) raising (here: no actor
    registry at all, as a GCS failover would make it fail) is not forgotten with its lapse: each tick
    tries again, until the symbol has another owner."""
    from controller.fence import HUNG, Fence
    from controller.lease import MemoryStore

    book = LeaseBook(MemoryStore(), lease_ttl_s=3.0)
    book.acquire("X", "h1", now=1000.0)
    lease = book.lease("X")
    fence = Fence(book, agents=None, desk=None, account_of=lambda s: None, probe_timeout_s=0.1)  # type: ignore[arg-type]
    fence.grace_until = 0.0
    [done] = asyncio.run(fence.tick(["X"], 1004.0))
    assert done.verdict == HUNG and not done.killed
    assert fence.owed["X"].epoch == lease.epoch              # owed, though its lapse is dealt with
    assert asyncio.run(fence.tick(["X"], 1004.5)) == [] and "X" in fence.owed   # tried again, still failing
    book.acquire("X", "h2", now=1005.0)                      # a successor owns it
    asyncio.run(fence.tick(["X"], 1005.5))
    assert "X" not in fence.owed


# --- on a live fleet ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fleet(ray_cluster, tmp_path_factory):
    """Simulator + controller + 3 agents + the endpoint; the dead-man switch at its defaults (2 min), so
    only the fleet's own paths can empty a book within these tests' deadlines."""
    import ray

    from controller.controller import ControllerSettings, build_spec, get_or_create_controller, remove_controller

    work = tmp_path_factory.mktemp("killpaths")
    api_key, api_secret = secrets.token_hex(32), secrets.token_hex(32)
    key_file = work / "main.keys.yaml"
    key_file.write_text(yaml.safe_dump({"api_key": api_key, "api_secret": api_secret}))
    key_file.chmod(0o600)
    token = secrets.token_urlsafe(24)
    (work / "api.token").write_text(token)
    sim = SimThread(api_key, api_secret)
    cfg = FleetConfig(
        name=f"kp{uuid.uuid4().hex[:6]}",
        exchange=ExchangeConfig(kind="sim", rest_url=sim.server.rest_url, ws_market_url=sim.server.ws_url,
                                ws_user_url=sim.server.ws_url),
        accounts=(AccountConfig(name="main", key_file=str(key_file)),),
        symbols=tuple(SymbolEntry(symbol=s, account="main", params_file=f"symbols/{s}.yaml",
                                  net_max_hard_cap=DEMO_HARD_CAPS.get(s)) for s in SYMBOLS),
        api=ApiConfig(port=free_port(), token_env=None, token_file=str(work / "api.token")),
        agent=AgentPlacement(num_cpus=0),
        runtime=RuntimeParams(stop_timeout_sec=15.0),
    )
    assert cfg.runtime.deadman_countdown_ms >= 60_000
    # An agent that has not confirmed its halt within 0.5 s gets the emergency path (3 s by default),
    # so that a drill can freeze one for less than its lease and still reach that path.
    controller = get_or_create_controller(cfg, ControllerSettings(kill_timeout_s=KILL_TIMEOUT_S))
    ray.get(controller.apply.remote(build_spec(cfg, str(DEMO_CONFIG))), timeout=120)
    url = deploy(cfg, route_prefix=f"/{cfg.name}",
                 settings=ApiSettings(agent_timeout_s=AGENT_TIMEOUT_S, page_wait_s=AGENT_TIMEOUT_S, halt_timeout_s=KILL_TIMEOUT_S))
    live = Live(url=url, token=token, cfg=cfg, sim=sim, secrets=(api_key, api_secret, token))
    live.controller = controller
    live.wait_quoting(within_s=90)
    yield live
    try:
        undeploy(cfg)
        ray.get(controller.down.remote(False), timeout=120)
        remove_controller(cfg.namespace)   # and its spawner
    finally:
        sim.stop()


def console_snapshot_where(live: Live, check: Any, within_s: float) -> dict[str, Any]:
    """The first snapshot the console's stream pushes that passes ``check`` (signed in as a browser)."""
    from tests.controller.test_console import ConsoleClient

    client = ConsoleClient(live)
    assert client.sign_in().status_code == 303
    deadline = time.monotonic() + within_s
    seen: list[Any] = []
    ended = 0
    while time.monotonic() < deadline:   # (a stream the server ends is opened again)
        with client.http.get(f"{client.base}/events", stream=True, timeout=30) as r:
            assert r.status_code == 200, r.text
            event = "message"
            for line in r.iter_lines(decode_unicode=True):
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event == "snapshot":
                    seen.append(json.loads(line[5:]))
                    if check(seen[-1]):
                        return seen[-1]
                if time.monotonic() > deadline:
                    break
        ended += 1
    raise AssertionError(f"no console snapshot passed within {within_s} s ({len(seen)} seen, the stream "
                         f"ended {ended} times); the last: {seen[-1:]}")


def test_a_kill_while_the_controller_is_stopped_empties_every_book(fleet):
    import ray

    assert all(fleet.open_orders(s) > 0 for s in SYMBOLS)
    pid = ray.get(fleet.controller.__ray_call__.remote(lambda self: os.getpid()), timeout=30)
    os.kill(pid, signal.SIGSTOP)
    try:
        r = fleet.post("/kill", {"all": True, "mode": "halt", "reason": "controller stopped drill"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["confirmed"] is True and body["durable"] is True, body
        for sym in SYMBOLS:
            answer = body["symbols"][sym]
            assert answer["by"] == "endpoint" and answer["open_orders"] == 0, answer
            assert answer["first"] in ("agent", "exchange") and answer["confirmed_ms"] > 0, answer
            assert answer["confirmed_ms"] >= body["durable_ms"], (body["durable_ms"], answer)   # durable first
        # The exchange agrees, and an order an agent sent before it heard the halt (it can land after
        # the answer) is swept: by the time its lease has lapsed nothing is left, controller or not.
        poll(lambda: all(fleet.open_orders(s) == 0 for s in SYMBOLS), LEASE_TTL_S + 1.0, "every book empty")
        book = LeaseBook(GcsStore(fleet.cfg.name))                  # durable without the controller
        assert {book.kill_state(s) for s in SYMBOLS} == {"halted"}
        # /metrics shows them too (read from the GCS), and the controller down once its watch sees it.
        fams = poll(lambda: (lambda f: f if f["mmfleet_controller_up"].samples[0].value == 0 else None)(
            fleet.metric_families()), 2 * AGENT_TIMEOUT_S + 5.0, "mmfleet_controller_up 0")
        assert fams["mmfleet_agents_halted"].samples[0].value == len(SYMBOLS)
        assert {m.labels["symbol"]: m.labels["kill_state"] for m in fams["mmfleet_symbol_halted"].samples} \
            == dict.fromkeys(SYMBOLS, "halted")
        # So does the console (the kill states and leases read from the GCS), saying the controller is down.
        snap = console_snapshot_where(fleet, lambda snap: snap["controller_error"] is not None, 15.0)
        assert {r["symbol"]: (r["kill_state"], r["kill_reason"]) for r in snap["rows"]} \
            == dict.fromkeys(SYMBOLS, ("halted", "controller stopped drill")), snap   # the durable record's
        assert all(r["lease_epoch"] and r["lease_expires_in_s"] is not None for r in snap["rows"]), snap
        assert snap["kill_states_error"] is None and snap["totals"]["halted"] == len(SYMBOLS)
        # And /status: each symbol's lease and kill state as the GCS holds them.
        status = fleet.get("/status").json()
        assert status["controller"]["reachable"] is False and status["leases_from"] == "gcs", status
        for sym in SYMBOLS:
            lease = status["agents"][sym]["lease"]
            assert lease["epoch"] and lease["lease_holder"] and lease["kill_state"] == "halted", lease
    finally:
        os.kill(pid, signal.SIGCONT)
        # Thawed, the controller only journals the kill it missed: a resume right away holds.
        r = fleet.post("/resume", {"all": True, "reason": "drill over"})
    assert r.status_code == 200, r.text
    fleet.wait_quoting(within_s=90)
    assert {LeaseBook(GcsStore(fleet.cfg.name)).kill_state(s) for s in SYMBOLS} == {"running"}
    poll(lambda: fleet.metric_families()["mmfleet_controller_up"].samples[0].value == 1, 30, "mmfleet_controller_up 1")


def test_a_flatten_while_the_controller_is_stopped_ends_halted(fleet):
    """The endpoint carries out a flatten itself when the controller does not answer; once the agent has
    closed the position it writes the symbol halted, as the controller does after its own flattens
    (else the symbol would read flattening for good and flatten again at every restart)."""
    import ray

    sym = "ETHUSDC"
    fleet.wait_quoting(within_s=90)
    jump = requests.post(f"{fleet.sim.server.rest_url}/sim/market/jump", json={"symbol": sym, "pct": -0.5}, timeout=10)
    assert jump.status_code == 200, jump.text
    poll(lambda: float(fleet.sim.state(sym)["positions"][sym]["amount"]) != 0, 30, f"a position in {sym}")
    book = LeaseBook(GcsStore(fleet.cfg.name))
    pid = ray.get(fleet.controller.__ray_call__.remote(lambda self: os.getpid()), timeout=30)
    # With the controller stopped the agent's lease is not renewed, and an agent sends orders only while
    # it holds one: stop it just after a renewal, so that the flatten has the lease's whole span.
    poll(lambda: (lambda lease: lease is not None and lease.expires_at - time.time() >= LEASE_TTL_S - 0.3)(
        book.lease(sym, fresh=True)), 10, f"{sym}'s lease just renewed")
    os.kill(pid, signal.SIGSTOP)
    try:
        flattened_by_the_endpoint(fleet, book, sym, "flatten drill, controller stopped")
    finally:   # thawed and resumed whatever happened, so that the later tests find the fleet quoting
        os.kill(pid, signal.SIGCONT)
        resumed = fleet.post("/resume", {"symbols": [sym], "reason": "drill over"})
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["symbols"][sym]["outcome"] == "resumed", resumed.text
    fleet.wait_quoting(within_s=90)
    assert book.kill_state(sym) == "running"


def flattened_by_the_endpoint(fleet: Any, book: LeaseBook, sym: str, reason: str) -> dict[str, Any]:
    """A flatten over HTTP with the controller stopped: the endpoint's answer, once the exchange shows
    the symbol flat with no order and the GCS holds it halted with the flatten's reason."""
    r = fleet.post("/kill", {"symbols": [sym], "mode": "flatten", "reason": reason})
    assert r.status_code == 200, r.text
    answer = r.json()["symbols"][sym]
    assert answer["by"] == "endpoint" and answer["outcome"] == "flattened" and answer["open_orders"] == 0, answer
    truth = fleet.sim.state(sym)
    assert float(truth["positions"][sym]["amount"]) == 0 and truth["open_orders"] == [], truth
    record = poll(lambda: (lambda r: r if r.state == "halted" else None)(book.kill_record(sym)), 10,
                  f"{sym} written halted with the controller still stopped")
    assert record.reason == reason
    return answer


def test_a_flatten_whose_agent_is_hung_too_is_closed_at_the_exchange(fleet):
    """Controller and agent both stopped: the endpoint empties the book, waits for the agent only until
    its lease (not renewed meanwhile) has ended, and then closes the position itself with a reduce-only
    MARKET order; the exchange shows it flat and the symbol is written halted. A halt asked meanwhile
    (another operator) does not cancel the close: only a resume stops a flatten."""
    import ray

    sym = "SOLUSDT"
    fleet.wait_quoting(within_s=90)
    agent_pid = fleet.get("/status").json()["agents"][sym]["pid"]
    jump = requests.post(f"{fleet.sim.server.rest_url}/sim/market/jump", json={"symbol": sym, "pct": -0.5}, timeout=10)
    assert jump.status_code == 200, jump.text
    poll(lambda: float(fleet.sim.state(sym)["positions"][sym]["amount"]) != 0, 30, f"a position in {sym}")
    book = LeaseBook(GcsStore(fleet.cfg.name))
    pid = ray.get(fleet.controller.__ray_call__.remote(lambda self: os.getpid()), timeout=30)
    os.kill(pid, signal.SIGSTOP)
    os.kill(agent_pid, signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(1) as pool:
            flatten = pool.submit(fleet.post, "/kill", {"symbols": [sym], "mode": "flatten",
                                                         "reason": "flatten drill, agent hung"})
            poll(lambda: book.kill_record(sym).state == "flattening", 10, f"{sym} written flattening")
            halt = fleet.post("/kill", {"symbols": [sym], "mode": "halt", "reason": "a halt meanwhile"})
            assert halt.status_code == 200 and halt.json()["symbols"][sym]["open_orders"] == 0, halt.text
            r = flatten.result(timeout=60)
        assert r.status_code == 200 and r.json()["confirmed"] is True, r.text
        answer = r.json()["symbols"][sym]
        assert answer["path"] == "emergency" and float(answer["position"]) == 0, answer   # closed by the endpoint
        truth = fleet.sim.state(sym)
        assert float(truth["positions"][sym]["amount"]) == 0 and truth["open_orders"] == [], truth
        assert book.kill_record(sym).state == "halted"
    finally:   # thawed and resumed whatever happened, so that the later tests find the fleet quoting
        os.kill(agent_pid, signal.SIGCONT)
        os.kill(pid, signal.SIGCONT)
        resumed = fleet.post("/resume", {"symbols": [sym], "reason": "drill over"})
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["symbols"][sym]["outcome"] == "resumed", resumed.text
    fleet.wait_quoting(within_s=90)
    assert book.kill_state(sym) == "running"


def test_a_flatten_sent_while_the_agent_restarts_ends_halted(fleet):
    """A flatten that reaches the agent while it restarts (SIGKILLed just before; Ray runs the call on
    the new process, which is not trading yet): the exchange route closes the position, and once flat
    the symbol is written halted, as after an agent's own flatten. It read flattening for good, and its
    successor sat flattening until a resume."""
    import ray

    sym = "ETHUSDC"
    fleet.wait_quoting(within_s=90)
    held = requests.post(f"{fleet.sim.server.rest_url}/sim/position",
                         json={"account": "main", "symbol": sym, "amount": "0.050"}, timeout=10)
    assert held.status_code == 200, held.text   # a position to close (a jump's fills are left to chance)
    book = LeaseBook(GcsStore(fleet.cfg.name))
    os.kill(fleet.get("/status").json()["agents"][sym]["pid"], signal.SIGKILL)
    try:
        answer = ray.get(fleet.controller.kill.remote([sym], "flatten", "flatten drill, agent restarting", None,
                                                      time.time()), timeout=90)
        one = answer["symbols"][sym]
        assert one["outcome"] == "flattened" and one["open_orders"] == 0 and float(one["position"]) == 0, answer
        truth = fleet.sim.state(sym)
        assert float(truth["positions"][sym]["amount"]) == 0 and truth["open_orders"] == [], truth
        poll(lambda: book.kill_record(sym).state == "halted", 10, f"{sym} written halted once flat ({one['path']})")
        assert book.kill_record(sym).reason == "flatten drill, agent restarting"
    finally:   # resumed whatever happened, so that the later tests find the fleet quoting
        resumed = fleet.post("/resume", {"symbols": [sym], "reason": "drill over"})
    assert resumed.status_code == 200, resumed.text
    fleet.wait_quoting(within_s=90)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """``python -m fleet ARGS`` against the session's Ray cluster, as an operator's shell runs it."""
    import ray

    return subprocess.run([sys.executable, "-m", "fleet", *args, "--address", ray.get_runtime_context().gcs_address],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "RAY_AUTH_MODE": "disabled"})


def test_the_clis_kill_and_status_wait_on_no_stopped_controller(fleet):
    import ray

    assert fleet.open_orders("SOLUSDT") > 0
    pid = ray.get(fleet.controller.__ray_call__.remote(lambda self: os.getpid()), timeout=30)
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        done = run_cli("kill", "--fleet", fleet.cfg.name, "--symbol", "solusdt", "--reason", "cli drill")
        assert done.returncode == 0, (done.stdout, done.stderr)
        body = json.loads(done.stdout)
        print(f"\nthe CLI's kill, controller stopped: {time.monotonic() - started:.2f} s for the command, "
              f"0 confirmed {body['symbols']['SOLUSDT']['confirmed_ms']} ms after the endpoint got it")
        assert body["via"] == "endpoint" and body["confirmed"] is True, body
        assert body["symbols"]["SOLUSDT"]["open_orders"] == 0 and body["symbols"]["SOLUSDT"]["by"] == "endpoint"
        assert fleet.open_orders("SOLUSDT") == 0                                     # the exchange agrees
        assert LeaseBook(GcsStore(fleet.cfg.name)).kill_state("SOLUSDT") == "halted"   # durable
        # only what was asked (the kill states: not the others' books, whose leases lapse with the
        # controller stopped, from 2 s on: their agents then cancel the quotes their ladders would move)
        assert {LeaseBook(GcsStore(fleet.cfg.name)).kill_state(s) for s in SYMBOLS if s != "SOLUSDT"} == {"running"}
        # A request refused as asked says why, and nothing changes.
        for args, why in ((("--symbol", "XRPUSDT"), "unknown symbol(s): XRPUSDT"),
                          (("--symbol", "ETHUSDC", "--reason", "  "), "give a reason")):
            bad = run_cli("kill", "--fleet", fleet.cfg.name, *args)
            assert bad.returncode == 2 and why in bad.stderr, (args, bad.stdout, bad.stderr)
        # (Not the others' books: with the controller stopped their leases lapse, and an agent pulls its
        # quotes lease_pull_sec after that; CI's CLI runs took some 4 s each, 13 s in all. What a refused
        # request could change is the kill states.)
        assert {LeaseBook(GcsStore(fleet.cfg.name)).kill_state(s) for s in SYMBOLS if s != "SOLUSDT"} == {"running"}
        # The CLI's status says the controller does not answer and shows what the GCS holds.
        st = run_cli("status", "--json", "--fleet", fleet.cfg.name)
        assert st.returncode == 0, (st.stdout, st.stderr)
        shown = json.loads(st.stdout)
        assert shown["controller"]["answered"] is False and "does not answer" in st.stderr, shown
        assert {s: c["kill_state"] for s, c in shown["controller"]["symbols"].items()} \
            == {s: "halted" if s == "SOLUSDT" else "running" for s in SYMBOLS}
        assert all(c["epoch"] >= 1 for c in shown["controller"]["symbols"].values())
        assert shown["agents"]["SOLUSDT"]["state"] == "halted"   # the others pause once their leases lapse
        assert all(isinstance(a, dict) and a["epoch"] >= 1 for a in shown["agents"].values()), shown["agents"]
    finally:   # thawed and resumed whatever happened, so that the later tests find the fleet quoting
        os.kill(pid, signal.SIGCONT)
        resumed = fleet.post("/resume", {"symbols": ["SOLUSDT"], "reason": "drill over"})
    assert resumed.status_code == 200, resumed.text
    assert resumed.json()["symbols"]["SOLUSDT"]["outcome"] == "resumed", resumed.text
    fleet.wait_quoting(within_s=90)


def test_the_clis_halt_goes_to_the_controller_too_when_the_endpoint_is_hung(fleet):
    """The endpoint's replica SIGSTOPped (a hung or restarting endpoint): the CLI's halt asks the
    controller beside it once the endpoint has not answered within HALT_RACE_S, and takes its answer."""
    from controller.api import app_name
    from tests.controller.test_api_fleet import process_of_replica

    assert fleet.open_orders("SOLUSDT") > 0
    replica = process_of_replica(app_name(fleet.cfg.name))
    os.kill(replica, signal.SIGSTOP)
    try:
        started = time.monotonic()
        done = run_cli("kill", "--fleet", fleet.cfg.name, "--symbol", "SOLUSDT", "--reason", "endpoint hung")
        print(f"\nthe CLI's halt, endpoint hung: {time.monotonic() - started:.2f} s for the command")
    finally:
        os.kill(replica, signal.SIGCONT)
    try:
        assert done.returncode == 0, (done.stdout, done.stderr)
        assert "has not answered the halt within 2 s; asking the controller too" in done.stderr, done.stderr
        body = json.loads(done.stdout)
        assert body["via"] == "controller" and body["symbols"]["SOLUSDT"]["open_orders"] == 0, body
        assert fleet.open_orders("SOLUSDT") == 0                                     # the exchange agrees
        assert LeaseBook(GcsStore(fleet.cfg.name)).kill_state("SOLUSDT") == "halted"   # durable
    finally:
        resumed = fleet.post("/resume", {"symbols": ["SOLUSDT"], "reason": "drill over"})
    assert resumed.status_code == 200, resumed.text
    fleet.wait_quoting(within_s=90)


def test_a_flatten_the_controller_begins_past_its_callers_deadline_is_not_carried_out(fleet):
    """The endpoint gives the controller ``kill_deadline_s`` to begin a flatten, then carries it out itself.
    A controller that begins it later (stopped meanwhile, then thawed, with the call still queued) leaves
    it: run then, it flattened a second time, over the resume the operator had given since."""
    import ray

    sym = "BTCUSDT"
    fleet.wait_quoting(within_s=90)
    book = LeaseBook(GcsStore(fleet.cfg.name))
    before = book.kill_record(sym)
    asked = time.time() - 1.0
    answer = ray.get(fleet.controller.kill.remote([sym], "flatten", "late drill", None, asked, asked + 0.3), timeout=30)
    assert answer.get("expired") is True and answer["symbols"][sym]["outcome"] == "expired", answer
    assert book.kill_record(sym) == before                          # no kill state written
    assert fleet.get("/status").json()["agents"][sym]["state"] == "quoting" and fleet.open_orders(sym) > 0


def test_a_halt_the_controller_runs_after_a_resume_asked_later_is_not_carried_out(fleet):
    """The calls queued for a stopped controller run in any order once it is thawed (an async actor),
    and Ray retries a call on a restarted one: a halt asked before a resume but run after it must not
    undo it. Its kill state is not written over the resume's, no route acts, and the symbol quotes on."""
    import ray

    sym = "SOLUSDT"
    fleet.wait_quoting(within_s=90)
    asked = time.time() - 5.0   # the halt was asked 5 s ago; the resume below, now
    resumed = fleet.post("/resume", {"symbols": [sym], "reason": "asked after the halt"})
    assert resumed.status_code == 200 and resumed.json()["symbols"][sym]["outcome"] == "resumed", resumed.text
    book = LeaseBook(GcsStore(fleet.cfg.name))
    before = book.kill_record(sym)
    orders = {o["clientOrderId"] for o in fleet.sim.state(sym)["open_orders"]}
    answer = ray.get(fleet.controller.kill.remote([sym], "halt", "stale halt drill", None, asked), timeout=30)
    one = answer["symbols"][sym]
    assert one["outcome"] == "failed" and one["problem"] == "superseded by a later kill or resume", answer
    assert book.kill_record(sym) == before and before.state == "running"     # nothing written over the resume
    left = {o["clientOrderId"] for o in fleet.sim.state(sym)["open_orders"]}
    assert orders and orders & left, (orders, left)        # no cancel-all at the exchange: the ladder stayed
    assert fleet.get("/status").json()["agents"][sym]["state"] == "quoting"


def test_a_flatten_run_after_a_halt_asked_later_still_flattens(fleet):
    """Only a resume asked later makes a kill run late stand down: a halt asked later does not cancel an
    earlier flatten (the operator wants the symbol flat and halted)."""
    import ray

    sym = "BTCUSDT"
    fleet.wait_quoting(within_s=90)
    asked = time.time() - 5.0   # the flatten was asked 5 s ago; the halt below, now
    halted = fleet.post("/kill", {"symbols": [sym], "mode": "halt", "reason": "a later halt"})
    assert halted.status_code == 200, halted.text
    answer = ray.get(fleet.controller.kill.remote([sym], "flatten", "flatten asked first", None, asked), timeout=60)
    assert answer["symbols"][sym]["outcome"] == "flattened", answer
    truth = fleet.sim.state(sym)
    assert float(truth["positions"][sym]["amount"]) == 0 and truth["open_orders"] == [], truth
    book = LeaseBook(GcsStore(fleet.cfg.name))
    poll(lambda: book.kill_record(sym).state == "halted", 10, f"{sym} written halted once flat")
    resumed = fleet.post("/resume", {"symbols": [sym], "reason": "drill over"})
    assert resumed.status_code == 200 and resumed.json()["symbols"][sym]["outcome"] == "resumed", resumed.text
    fleet.wait_quoting(within_s=90)


def test_a_kill_with_the_controller_up_reports_the_first_route_per_symbol(fleet):
    r = fleet.post("/kill", {"symbols": ["ETHUSDC"], "mode": "halt", "reason": "two routes drill"})
    assert r.status_code == 200, r.text
    answer = r.json()["symbols"]["ETHUSDC"]
    assert answer["open_orders"] == 0 and answer["first"] in ("agent", "exchange"), answer
    assert answer["path"] == {"agent": "agent", "exchange": "emergency"}[answer["first"]]
    assert answer["by"] == "endpoint", answer     # a halt never waits for the controller
    assert fleet.open_orders("ETHUSDC") == 0
    assert fleet.post("/resume", {"symbols": ["ETHUSDC"]}).status_code == 200
    fleet.wait_quoting(within_s=60)


def test_a_halt_while_the_exchange_holds_the_ip_says_what_held_it_and_empties_the_book(fleet):
    """The exchange answered an agent of this host 429 on the IP's weight and the hold is shared: a kill
    then waits for it on both routes (a cancel sent into it is refused all the same, and a 429 after a
    429 brings the ban). Its answer said nothing of why it took that long; now it names the hold."""
    from controller.emergency import HELD_SAID_S
    from fleet.binance.host_holds import CHECK_EVERY_S, HostHolds

    HostHolds(fleet.sim.server.rest_url).hold(HELD_SAID_S + 1.5, "429")
    time.sleep(2 * CHECK_EVERY_S)   # every process reads the holds' file at most this long after it changed
    r = fleet.post("/kill", {"symbols": ["ETHUSDC"], "mode": "halt", "reason": "held drill"})
    assert r.status_code == 200, r.text
    answer = r.json()["symbols"]["ETHUSDC"]
    assert answer["open_orders"] == 0 and "(429)" in answer.get("held", ""), answer
    assert fleet.open_orders("ETHUSDC") == 0
    assert fleet.post("/resume", {"symbols": ["ETHUSDC"]}).status_code == 200
    fleet.wait_quoting(within_s=60)


def _epochs(orders: list[dict[str, Any]]) -> set[int | None]:
    return {(parse_client_order_id(o["clientOrderId"]) or (None,))[0] for o in orders}


def test_an_agent_stopped_past_its_lease_is_fenced_and_a_successor_quotes(fleet):
    sym = "BTCUSDT"
    before = fleet.get("/status").json()["agents"][sym]
    assert fleet.open_orders(sym) > 0
    os.kill(before["pid"], signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        # Its lease lapses unrenewed: the controller cancels that epoch's orders at the exchange.
        poll(lambda: fleet.open_orders(sym) == 0, LEASE_TTL_S + 1.0 + 20.0, f"{sym}'s orders gone")
        print(f"\n{sym}: orders gone {time.monotonic() - stopped_at:.2f} s after SIGSTOP (lease {LEASE_TTL_S:g} s)")

        def successor() -> dict[str, Any] | None:
            agent = fleet.get("/status").json()["agents"][sym]
            orders = fleet.sim.state(sym)["open_orders"]
            fresh = (agent.get("epoch") or 0) > before["epoch"] and agent.get("pid") != before["pid"]
            ok = fresh and agent.get("state") == "quoting" and orders and _epochs(orders) == {agent["epoch"]}
            return agent if ok else None

        agent = poll(successor, 90, f"a successor of {sym} quoting with a larger epoch")
        print(f"{sym}: successor quoting at epoch {agent['epoch']} {time.monotonic() - stopped_at:.2f} s after SIGSTOP")
    finally:
        try:
            os.kill(before["pid"], signal.SIGCONT)
        except ProcessLookupError:
            pass   # killed by the fence: Ray recreated the actor in a new process
    fleet.wait_quoting(within_s=60)


def test_a_hung_agent_the_kill_cannot_reach_is_reported_until_its_process_goes(fleet):
    """A node frozen whole (its raylet stopped with the agent): the fence cancels the hung epoch's orders
    and asks Ray to kill the actor, but Ray's kill goes through the node's raylet and nothing acts on it.
    The controller says so (``unkilled`` in the symbol's lease, an error in its log) instead of taking
    the kill as done; once the raylet resumes, the kill takes, a successor quotes and the report clears.
    (The raylet is frozen some 10 s, well under the GCS's health checks: 5 failures of 10 s each.)"""
    import ray
    from ray._private import ray_constants

    sym = "SOLUSDT"
    before = fleet.get("/status").json()["agents"][sym]
    assert fleet.open_orders(sym) > 0
    raylet = ray._private.worker._global_node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid
    os.kill(before["pid"], signal.SIGSTOP)
    os.kill(raylet, signal.SIGSTOP)
    try:
        def reported() -> dict[str, Any] | None:
            return (fleet.get("/status").json()["agents"][sym].get("lease") or {}).get("unkilled")

        unkilled = poll(reported, LEASE_TTL_S + 20.0, f"{sym}'s hung agent reported as not killed")
        assert unkilled["pid"] == before["pid"] and unkilled["epoch"] == before["epoch"], unkilled
        assert fleet.open_orders(sym) == 0   # the fence's cancel did not wait for the kill
        # /metrics (alert MmAgentUnkilled) and the console show it too, from the controller's ping
        def on_metrics() -> float | None:
            fams = fleet.metric_families()
            got = {m.labels["symbol"]: m.value for m in fams["mmfleet_agent_unkilled_seconds"].samples}
            return got if got.get(sym, 0) > 0 and set(got) == set(SYMBOLS) else None

        # (bounded tightly: the raylet stays frozen meanwhile, and the GCS declares a node dead after some 50 s)
        shown = poll(on_metrics, 8.0, f"mmfleet_agent_unkilled_seconds of {sym} above 0")
        assert all(v == 0 for s, v in shown.items() if s != sym), shown
        snap = console_snapshot_where(fleet, lambda snap: any(r["unkilled"] for r in snap["rows"]), 8.0)
        row = next(r for r in snap["rows"] if r["symbol"] == sym)
        assert (row["unkilled"]["epoch"], row["unkilled"]["pid"]) == (before["epoch"], before["pid"]), row
    finally:
        os.kill(raylet, signal.SIGCONT)
        try:
            os.kill(before["pid"], signal.SIGCONT)
        except ProcessLookupError:
            pass

    def successor() -> dict[str, Any] | None:
        agent = fleet.get("/status").json()["agents"][sym]
        fresh = (agent.get("epoch") or 0) > before["epoch"] and agent.get("pid") != before["pid"]
        ok = fresh and agent.get("state") == "quoting" and not (agent.get("lease") or {}).get("unkilled")
        return agent if ok else None

    agent = poll(successor, 90, f"a successor of {sym} quoting, the report cleared")
    assert _epochs(fleet.sim.state(sym)["open_orders"]) <= {agent["epoch"]}
    poll(lambda: all(m.value == 0 for m in fleet.metric_families()["mmfleet_agent_unkilled_seconds"].samples),
         2 * AGENT_TIMEOUT_S + 5.0, "mmfleet_agent_unkilled_seconds 0 again")
    fleet.wait_quoting(within_s=60)


def test_an_agent_slow_to_confirm_its_halt_keeps_its_lease_and_halts_at_the_same_epoch(fleet):
    """Frozen for less than its lease, an agent cannot answer the endpoint's halt in time: the
    exchange route empties the book and the controller, told, takes the emergency path, but keeps the lease
    (revoking it would restart a healthy agent). Thawed, the agent is halted at its own epoch, in its
    own process, and after a resume quotes again there."""
    import ray

    sym = SYMBOLS[-1]
    before = fleet.get("/status").json()["agents"][sym]
    assert fleet.open_orders(sym) > 0

    def emergencies() -> int:
        return ray.get(fleet.controller.status.remote(), timeout=10)["symbols"][sym]["emergencies"]

    taken = emergencies()
    os.kill(before["pid"], signal.SIGSTOP)
    try:
        r = fleet.post("/kill", {"symbols": [sym], "mode": "halt", "reason": "slow agent drill"})
        assert r.status_code == 200, r.text
        answer = r.json()["symbols"][sym]
        assert answer["open_orders"] == 0 and answer["first"] == "exchange", answer
        assert fleet.open_orders(sym) == 0
        poll(lambda: emergencies() > taken, LEASE_TTL_S, f"the controller's emergency path for {sym}")
    finally:
        os.kill(before["pid"], signal.SIGCONT)
    try:
        lease = LeaseBook(GcsStore(fleet.cfg.name)).lease(sym, fresh=True)
        assert lease is not None and not lease.revoked and lease.epoch == before["epoch"], lease
        halted = poll(lambda: (a := fleet.get("/status").json()["agents"][sym])["state"] == "halted" and a,
                      30, f"{sym} halted")
        assert (halted["pid"], halted["epoch"]) == (before["pid"], before["epoch"]), halted
        # The thawed agent shows "halted" as soon as its core stops quoting; its own cancel of what it
        # sent before the freeze (landed after the endpoint's sweeps) follows: the book empties.
        poll(lambda: fleet.open_orders(sym) == 0, 10, f"{sym}'s book emptied by the thawed agent's halt")
    finally:
        assert fleet.post("/resume", {"symbols": [sym]}).status_code == 200   # the next drills need it quoting
    fleet.wait_quoting(within_s=60)
    after = fleet.get("/status").json()["agents"][sym]
    assert (after["pid"], after["epoch"]) == (before["pid"], before["epoch"]), after
    assert _epochs(fleet.sim.state(sym)["open_orders"]) == {before["epoch"]}


def test_a_resume_older_than_the_kill_the_agent_knows_is_not_run(fleet):
    """Kill commands reach an agent from several callers, so out of order: a resume sent before a kill
    but delivered after it is refused (superseded) and the symbol stays halted at the exchange."""
    import ray

    from controller.handles import AGENT_PREFIX

    sym = SYMBOLS[0]
    assert fleet.post("/kill", {"symbols": [sym], "mode": "halt", "reason": "late resume drill"}).status_code == 200
    seq = LeaseBook(GcsStore(fleet.cfg.name)).kill_seq(sym)
    poll(lambda: fleet.get("/status").json()["agents"][sym]["state"] == "halted", 30, f"{sym} halted")
    agent = ray.get_actor(AGENT_PREFIX + sym, namespace=fleet.cfg.namespace)
    answer = ray.get(agent.resume.remote(seq - 1), timeout=30)
    assert answer["outcome"] == "superseded", answer
    held = float(fleet.sim.state(sym)["positions"][sym]["amount"])
    assert answer["position"] == pytest.approx(held), (answer, held)   # the position as the books hold it
    assert fleet.get("/status").json()["agents"][sym]["state"] == "halted"
    # Empty, and it stays so: a batch the agent sent just before it heard the halt may land after the
    # kill's count of 0 (the sim's REST latency; 13 orders once under load), and the halted agent's
    # pull cancels it. Had the resume run, the ladder would be placed again and never gone.
    poll(lambda: fleet.open_orders(sym) == 0, 10, f"{sym}'s book empty after the refused resume")
    assert fleet.get("/status").json()["agents"][sym]["state"] == "halted"
    assert fleet.post("/resume", {"symbols": [sym]}).status_code == 200
    fleet.wait_quoting(within_s=60)


def test_a_book_the_exchange_route_empties_first_is_not_quoted_again_the_renewal_carries_the_kill(fleet):
    """A kill is durable before either route acts; its exchange route may empty a book while its route
    to the agent is still on the way. The agent, seeing its orders cancelled by another hand, holds
    quoting and asks the controller (a lease renewal over Ray), whose answer reads the kill state from
    the GCS: the agent halts, and nothing is placed after the cancel. (Here the durable write and the
    cancel are made by the test, and the agent is told nothing. A routine renewal, every second, that
    lands between the write and the cancel carries the kill by itself and leaves nothing to ask: then
    the drill runs again, at most three times.)"""
    from fleet.sim.testkit import SimClient

    sym = SYMBOLS[0]

    async def cancel_all() -> int:
        async with SimClient.for_sim(fleet.sim.server) as c:
            await c.public("GET", "/fapi/v1/ping")   # the connection open before the kill state is written
            LeaseBook(GcsStore(fleet.cfg.name)).set_kill_state(sym, "halted", "the exchange route first, drill")
            assert (await c.signed("DELETE", "/fapi/v1/allOpenOrders", {"symbol": sym})).status == 200
            return (await c.public("GET", "/fapi/v1/time")).json["serverTime"]

    async def placed_since(ms: int) -> list[dict[str, Any]]:
        async with SimClient.for_sim(fleet.sim.server) as c:
            reply = await c.signed("GET", "/fapi/v1/allOrders", {"symbol": sym, "startTime": ms, "limit": 1000})
            assert reply.status == 200, reply.json
            return [o for o in reply.json if o["time"] >= ms]

    def agent() -> dict[str, Any]:
        return fleet.get("/status").json()["agents"][sym]

    seen: list[tuple[int, int]] = []   # (quote cycles, places sent) as the ladder was first seen whole

    def still() -> bool:
        """The ladder placed, nothing of it in flight, and two quote cycles since that placed nothing (a
        ladder still growing after a resume would place after the cancel what it decided before seeing it)."""
        a = agent()
        counters = a["counters"]
        now = (counters["quote_cycles"], counters["places_sent"])
        if not (a["state"] == "quoting" and a["requests_in_flight"] == 0
                and fleet.open_orders(sym) == a["open_orders"] > 0):
            seen.clear()
            return False
        if not seen or seen[0][1] != now[1]:
            seen[:] = [now]
            return False
        return now[0] >= seen[0][0] + 2

    freeze = f"{fleet.sim.server.rest_url}/sim/market/freeze"
    requests.post(freeze, json={"frozen": True, "symbol": sym}, timeout=10).raise_for_status()   # the ladder holds still
    resumed = True
    try:
        for _ in range(3):
            seen.clear()
            poll(still, 60, f"{sym}'s ladder resting, nothing in flight")
            before = agent()["counters"]["owner_asks"]
            resumed = False
            cancelled_at = fleet.sim.run(cancel_all())
            poll(lambda: agent()["state"] == "halted", 30, f"{sym} halted")
            assert fleet.sim.run(placed_since(cancelled_at)) == []
            assert fleet.open_orders(sym) == 0
            asked = agent()["counters"]["owner_asks"] > before
            resumed = fleet.post("/resume", {"symbols": [sym]}).status_code == 200
            assert resumed
            if asked:
                break
        assert asked, "three routine renewals in a row carried the kill before the cancel: no ask was ever needed"
    finally:
        if not resumed:   # a drill that failed halted leaves no halt to the tests after it
            fleet.post("/resume", {"symbols": [sym]})
        requests.post(freeze, json={"frozen": False, "symbol": sym}, timeout=10).raise_for_status()
    fleet.wait_quoting(within_s=60)


def test_a_liquidation_halts_the_symbol_durably_as_a_kill_with_its_reason(fleet):
    """The exchange liquidates an agent's position: the agent halts at once and carries the halt with
    its lease calls until the controller writes it. So the symbol's durable kill state is halted with
    the reason "liquidated by the exchange" (what GET /kill, the console and a restarted agent read),
    and the usual resume lifts it. The symbol is set up as a desk might have it: isolated at 125x,
    where a 1.5 % fall liquidates a long."""
    from fleet.sim.testkit import SimClient

    sym = SYMBOLS[2]
    sim = fleet.sim.server

    async def margin(margin_type: str, leverage: str) -> None:
        async with SimClient.for_sim(sim) as c:
            r = await c.signed("POST", "/fapi/v1/marginType", {"symbol": sym, "marginType": margin_type})
            assert r.status == 200 or r.json["code"] == -4046, r.json
            assert (await c.signed("POST", "/fapi/v1/leverage", {"symbol": sym, "leverage": leverage})).status == 200

    def admin(path: str, body: dict[str, Any]) -> None:
        requests.post(f"{sim.rest_url}{path}", json=body, timeout=10).raise_for_status()

    def kill_record() -> dict[str, Any]:
        return fleet.get("/kill").json()["kill_states"][sym]

    leverage = str(fleet.sim.state(sym)["positions"][sym]["leverage"])
    assert fleet.post("/kill", {"symbols": [sym], "mode": "halt", "reason": "set up isolated margin"}).status_code == 200
    try:
        admin("/sim/position", {"account": "main", "symbol": sym, "amount": "0"})   # what it traded so far
        fleet.sim.run(margin("ISOLATED", "125"))   # no order rests, no position: the margin type may change
        admin("/sim/market/freeze", {"frozen": True, "symbol": sym, "mode": "price"})
        admin("/sim/position", {"account": "main", "symbol": sym, "amount": "0.1"})
        assert fleet.post("/resume", {"symbols": [sym]}).status_code == 200
        fleet.wait_quoting(within_s=60)
        admin("/sim/market/jump", {"symbol": sym, "pct": -1.5})
        poll(lambda: fleet.sim.state(sym)["counters"]["liquidations"] == 1, 15, f"{sym} liquidated")
        record = poll(lambda: (r := kill_record())["state"] == "halted" and r, 15, "the halt written durably")
        assert record["reason"] == "liquidated by the exchange"
        status = fleet.get("/status").json()["agents"][sym]
        assert status["state"] == "halted" and status["halt_reason"] == "liquidated by the exchange"
        assert fleet.open_orders(sym) == 0
        assert float(fleet.sim.state(sym)["positions"][sym]["amount"]) == 0
    finally:
        fleet.post("/kill", {"symbols": [sym], "mode": "halt", "reason": "restore cross margin"})
        poll(lambda: fleet.open_orders(sym) == 0, 30, f"{sym} empty")
        admin("/sim/position", {"account": "main", "symbol": sym, "amount": "0"})
        fleet.sim.run(margin("CROSSED", leverage))
        admin("/sim/market/freeze", {"frozen": False, "symbol": sym, "mode": "price"})
        assert fleet.post("/resume", {"symbols": [sym]}).status_code == 200
    fleet.wait_quoting(within_s=60)
    assert kill_record()["state"] == "running"


def test_a_delisting_exit_is_a_durable_flatten_with_its_reason(fleet):
    """The exchange announces a delisting inside the agents' exit lead (30 min by default): the agent
    flattens the symbol at once and carries the flatten with its lease calls until the controller
    writes it. So the durable kill state is flattening, the delisting its reason, and the symbol is
    flat and empty at the exchange; taken back by the exchange and resumed, it quotes again."""
    sym = SYMBOLS[1]
    sim = fleet.sim.server

    def admin(path: str, body: dict[str, Any]) -> dict[str, Any]:
        r = requests.post(f"{sim.rest_url}{path}", json=body, timeout=10)
        r.raise_for_status()
        return r.json()

    def kill_record() -> dict[str, Any]:
        return fleet.get("/kill").json()["kill_states"][sym]

    def announced() -> Any:
        return fleet.get("/status").json()["agents"][sym].get("settles_at_ms")

    try:
        at = admin("/sim/delist", {"symbol": sym, "in_s": 600})["deliveryDate"]
        record = poll(lambda: (r := kill_record())["state"] == "flattening" and r, 20, "the flatten written durably")
        assert record["reason"].startswith(f"delisting: the exchange settles {sym} at ")
        poll(lambda: fleet.open_orders(sym) == 0 and float(fleet.sim.state(sym)["positions"][sym]["amount"]) == 0,
             20, f"{sym} flat and empty at the exchange")
        assert poll(lambda: announced() == at, 10, "the settlement time in the status")
    finally:
        admin("/sim/delist", {"symbol": sym, "at_ms": 4133404800000})   # the exchange takes it back
        poll(lambda: announced() is None, 20, "the retraction seen")
        assert fleet.post("/resume", {"symbols": [sym]}).status_code == 200
    fleet.wait_quoting(within_s=60)
    assert kill_record()["state"] == "running"


def test_a_resume_of_a_symbol_the_exchange_settled_is_refused_and_it_stays_halted(fleet):
    """(Last in the module: the exchange never trades a settled symbol again.) The exchange settles a
    symbol: its agent halts it, durably. A resume of the whole fleet is refused for that one, the
    exchange's status its reason, and carried out for the others; its kill state stays halted (resumed,
    the agent sat paused on a market with no book while the answer said "resumed")."""
    sym = SYMBOLS[2]
    others = tuple(s for s in SYMBOLS if s != sym)
    r = requests.post(f"{fleet.sim.server.rest_url}/sim/delist", json={"symbol": sym, "in_s": 2}, timeout=10)
    r.raise_for_status()

    def kill_record() -> dict[str, Any]:
        return fleet.get("/kill").json()["kill_states"][sym]

    poll(lambda: kill_record()["state"] == "halted", 30, f"{sym} halted durably once settled")
    listed = requests.get(f"{fleet.sim.server.rest_url}/fapi/v1/exchangeInfo", timeout=10).json()["symbols"]
    assert next(e["status"] for e in listed if e["symbol"] == sym) != "TRADING"
    answer = fleet.post("/resume", {"all": True, "reason": "after the settlement"})
    assert answer.status_code == 200
    outcomes = answer.json()["symbols"]
    assert outcomes[sym]["outcome"] == "refused"
    assert f"the exchange lists {sym} as " in outcomes[sym]["agent"] and "not TRADING" in outcomes[sym]["agent"]
    assert all(outcomes[s]["outcome"] == "resumed" for s in others), outcomes
    assert kill_record()["state"] == "halted"
    fleet.wait_quoting(within_s=60, symbols=others)
    assert kill_record()["state"] == "halted" and fleet.open_orders(sym) == 0
