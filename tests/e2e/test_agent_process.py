"""``python -m fleet agent`` as a real process against the simulator: kill -9, restart, double start, signals."""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import re
import signal
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from fleet.sim.testkit import SimClient
from tests.polling import wait_for

REPO = Path(__file__).resolve().parents[2]
SYMBOL = "ETHUSDC"


def _die_with_parent() -> None:
    """In the child: SIGTERM it if the test process dies, so no agent outlives an interrupted run."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class AgentProcess:
    """One ``python -m fleet agent`` child with its stderr (JSON logs) collected as it runs."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.log_lines: list[str] = []
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            self.log_lines.append(raw.decode(errors="replace").rstrip())

    def events(self, name: str) -> list[dict]:
        out = []
        for line in self.log_lines:
            if line.startswith("{"):
                rec = json.loads(line)
                if rec.get("event") == name:
                    out.append(rec)
        return out

    async def finish(self, timeout: float = 30) -> tuple[int, str]:
        assert self.proc.stdout is not None
        out = await asyncio.wait_for(self.proc.stdout.read(), timeout)
        await asyncio.wait_for(self.proc.wait(), timeout)
        await self._reader
        return self.proc.returncode, out.decode()

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


@pytest.fixture
def fleet_config(tmp_path):
    def write(state: str = "state", **runtime: Any) -> Path:
        data = yaml.safe_load((REPO / "configs" / "fleet.demo.yaml").read_text())
        for sym in data["symbols"]:
            sym["params_file"] = str(REPO / "configs" / sym["params_file"])
        data["runtime"] = {"deadman_heartbeat_sec": 1, "deadman_countdown_ms": 30000, **runtime}
        data["state_dir"] = str(tmp_path / state)
        path = tmp_path / ("fleet.yaml" if state == "state" else f"fleet.{state}.yaml")
        path.write_text(yaml.safe_dump(data))
        return path

    return write


@pytest.fixture
async def spawn(sim):
    started: list[AgentProcess] = []
    _, key, secret = sim.accounts[0]

    async def start(config: Path, *extra: str, api_secret: str | None = None) -> AgentProcess:
        env = {**os.environ, "MMFLEET_MAIN_API_KEY": key, "MMFLEET_MAIN_API_SECRET": api_secret or secret}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "fleet", "agent", "--config", str(config), "--symbol", SYMBOL,
            "--rest-url", sim.rest_url, "--ws-url", sim.ws_url, "--metrics-port", "0", "--json-logs", *extra,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=str(REPO),
            preexec_fn=_die_with_parent,
        )
        child = AgentProcess(proc)
        started.append(child)
        return child

    yield start
    for child in started:
        child.kill()
        await child.finish()


async def sim_state(sim) -> dict:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{sim.rest_url}/sim/state", params={"account": "main", "symbol": SYMBOL}) as r:
            return await r.json()


def epoch_of(cid: str) -> int:
    m = re.match(r"^mm-[A-Z0-9]+-e(\d+)-\d+$", cid)
    assert m, cid
    return int(m.group(1))


async def quoting(sim, epoch: int) -> bool:
    orders = (await sim_state(sim))["open_orders"]
    return {o["side"] for o in orders if epoch_of(o["clientOrderId"]) == epoch} == {"BUY", "SELL"}


async def test_sigkill_leaves_the_dead_man_switch_to_cancel_within_the_countdown(sim, spawn, fleet_config):
    child = await spawn(fleet_config(deadman_countdown_ms=3000))
    await wait_for(lambda: quoting(sim, 1), 20, "the agent quoting")
    st = await sim_state(sim)
    assert st["positions"][SYMBOL]["countdown_deadline_ms"]  # armed
    child.proc.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    await child.finish()
    assert (await sim_state(sim))["open_orders"], "orders must outlive the process until the countdown"

    async def cancelled() -> bool:
        return not (await sim_state(sim))["open_orders"]

    await wait_for(cancelled, 3.0 + 3.0, "the exchange's countdown cancelling every order")
    assert time.monotonic() - killed <= 6.0


async def test_restart_after_sigkill_cancels_older_epochs_before_quoting(sim, spawn, fleet_config):
    config = fleet_config()  # 30 s countdown: the dead agent's orders are still resting at restart
    first = await spawn(config)
    await wait_for(lambda: quoting(sim, 1), 20, "the first agent quoting")
    first.proc.send_signal(signal.SIGKILL)
    await first.finish()
    assert all(epoch_of(o["clientOrderId"]) == 1 for o in (await sim_state(sim))["open_orders"])
    second = await spawn(config)
    await wait_for(lambda: quoting(sim, 2), 20, "the restarted agent quoting at epoch 2")
    async with SimClient.for_sim(sim) as c:
        reply = await c.signed("GET", "/fapi/v1/allOrders", {"symbol": SYMBOL, "limit": 1000})
    orders = reply.json
    old = [o for o in orders if epoch_of(o["clientOrderId"]) == 1]
    new = [o for o in orders if epoch_of(o["clientOrderId"]) == 2]
    assert old and new
    assert all(o["status"] != "NEW" and o["status"] != "PARTIALLY_FILLED" for o in old)
    first_new = min(o["time"] for o in new)
    assert max(o["updateTime"] for o in old) <= first_new, "an epoch-1 order was still open after epoch 2 quoted"
    assert second.events("old_epoch_cancel")
    second.proc.send_signal(signal.SIGTERM)
    code, _ = await second.finish()
    assert code == 0


async def _all_orders(sim) -> list[dict]:
    async with SimClient.for_sim(sim) as c:
        return (await c.signed("GET", "/fapi/v1/allOrders", {"symbol": SYMBOL, "limit": 1000})).json


async def test_an_agent_on_another_state_dir_does_not_quote_beside_a_live_one_and_its_stop_leaves_them(
        sim, spawn, fleet_config):
    """Started by hand on another state directory, a second agent took a lock of its own and epoch 1
    too: the two cancelled each other's orders as strays, used ids twice and crashed on 'already open'.
    It now finds mmfleet's orders of its epoch resting though it placed none, and does not quote; its
    stop leaves the live agent's book, and its exit says mmfleet's orders rest."""
    owner = await spawn(fleet_config())
    await wait_for(lambda: quoting(sim, 1), 20, "the first agent quoting")
    intruder = await spawn(fleet_config(state="other"))
    refused = await wait_for(lambda: intruder.events("other_owner_orders"), 20, "the second agent refusing")
    assert refused[0]["level"] == "ERROR"
    cancel_alls = (await sim_state(sim))["weight_by_route"].get("DELETE /fapi/v1/allOpenOrders", 0)
    intruder.proc.send_signal(signal.SIGTERM)
    code, out = await intruder.finish()
    # exit 1, saying the orders are another's (it counted them as its own leftovers, "of this agent's epoch")
    assert code == 1 and json.loads(out)["exchange_own_orders"] == 0 and json.loads(out)["other_owner_orders"] > 0
    assert any("this agent never quoted" in line for line in intruder.log_lines)
    # the owner's book untouched by the intruder's stop: no cancel-all, no cancel of the owner's orders
    assert (await sim_state(sim))["weight_by_route"].get("DELETE /fapi/v1/allOpenOrders", 0) == cancel_alls
    assert await quoting(sim, 1)
    assert not owner.events("orphan_cancelled") and not owner.events("task_failed")
    owner.proc.send_signal(signal.SIGTERM)
    code, _ = await owner.finish()
    assert code == 0 and (await sim_state(sim))["open_orders"] == []


async def test_an_agent_whose_epoch_was_lost_waits_out_its_predecessors_book(sim, spawn, fleet_config):
    """A predecessor at epoch 2 killed, a successor on a fresh state directory (epoch 1): it read the
    epoch-2 orders as a successor's, left them resting and its heartbeat kept their dead-man switch from
    ever firing (18 orders still resting 65 s later). It now waits: their countdown empties the book,
    then it quotes."""
    config = fleet_config(deadman_countdown_ms=3000)
    first = await spawn(config)
    await wait_for(lambda: quoting(sim, 1), 20, "the first agent quoting at epoch 1")
    first.proc.send_signal(signal.SIGTERM)
    assert (await first.finish())[0] == 0
    second = await spawn(config)
    await wait_for(lambda: quoting(sim, 2), 20, "the second agent quoting at epoch 2")
    second.proc.send_signal(signal.SIGKILL)
    await second.finish()
    fresh = await spawn(fleet_config(state="fresh", deadman_countdown_ms=3000))
    await wait_for(lambda: quoting(sim, 1), 30, "the agent on a fresh state directory quoting at epoch 1")
    assert fresh.events("other_owner_orders")
    orders = await _all_orders(sim)
    old = [o for o in orders if epoch_of(o["clientOrderId"]) == 2]
    since = min(o["time"] for o in old)
    new = [o for o in orders if epoch_of(o["clientOrderId"]) == 1 and o["time"] > since]
    assert old and new and all(o["status"] not in ("NEW", "PARTIALLY_FILLED") for o in old)
    assert max(o["updateTime"] for o in old) <= min(o["time"] for o in new), "quoted beside the predecessor's book"
    fresh.proc.send_signal(signal.SIGTERM)
    assert (await fresh.finish())[0] == 0


async def test_an_agent_whose_state_directory_is_removed_stops_and_leaves_the_next_agents_book(
        sim, spawn, fleet_config):
    """The state directory removed under a quoting agent (a clean-up, a reset), a new agent started on
    it at once takes epoch 1 again. The first one halted and lived on: its lease pull, then its stop at
    Ctrl-C, cancelled the new agent's orders of the same epoch as its own. It now stops once it finds
    its lock gone, cancelling only the orders it sent, and exits 1 saying so; the new agent quotes on."""
    import shutil

    config = fleet_config()
    first = await spawn(config)
    await wait_for(lambda: quoting(sim, 1), 20, "the first agent quoting")
    shutil.rmtree(config.parent / "state")
    second = await spawn(config)
    code, _ = await first.finish(timeout=40)
    assert code == 1 and any("lost its ownership" in line for line in first.log_lines), first.log_lines[-5:]
    assert first.events("stopping_unowned")
    await wait_for(lambda: quoting(sim, 1), 30, "the second agent quoting at epoch 1")
    # (whether the second read the first one's book, other_owner_orders, or found it gone is the processes' race)
    for _ in range(3):   # what rests now is the second agent's alone, and stays (the first one is gone)
        await asyncio.sleep(1.0)
        assert await quoting(sim, 1)
    assert not second.events("asking_owner"), "its orders were cancelled by another hand"
    second.proc.send_signal(signal.SIGTERM)
    assert (await second.finish())[0] == 0 and (await sim_state(sim))["open_orders"] == []


async def test_a_stop_while_the_start_waits_on_the_ips_minute_ends_the_process_with_the_stop(sim, spawn, fleet_config):
    """The IP's minute near its limit when the agent starts: its start's reads wait (the rate budget holds
    them until the minute ends). A SIGTERM's stop finished in 3 s, but the process lived on until the
    held read went, up to a minute: past a supervisor's grace, its exit code lost to a SIGKILL."""
    async with SimClient.for_sim(sim) as c:
        now = (await c.public("GET", "/fapi/v1/time", {})).json["serverTime"]
        if now % 60_000 > 40_000:   # the burn and the start in one minute of the exchange, with 20 s to spare
            await asyncio.sleep((60_000 - now % 60_000) / 1000 + 0.2)
        used = 0
        while used < 2_100:   # unsigned, 40 weight each
            used = int((await c.public("GET", "/fapi/v1/ticker/24hr", {})).headers["X-MBX-USED-WEIGHT-1M"])
    child = await spawn(fleet_config())
    await wait_for(lambda: any("waits" in line and "for the rate budget" in line for line in child.log_lines), 20,
                   "the start's read held by the rate budget")
    child.proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    code, _ = await child.finish(timeout=60)
    assert time.monotonic() - sent < 15, "the process outlived its stop"
    assert code in (0, 1) and (await sim_state(sim))["open_orders"] == []


async def test_a_stop_while_the_start_waits_on_the_exchange_cancels_the_predecessors_book(sim, spawn, fleet_config):
    """SIGTERM while the start waited for exchangeInfo (before the symbol's core existed): the stop
    cancelled nothing and exited 0, the killed predecessor's 18 orders resting (two filled 16 s later).
    The older epochs' orders the start was to cancel now go."""
    config = fleet_config()   # 30 s countdown: the predecessor's book rests through the test
    first = await spawn(config)
    await wait_for(lambda: quoting(sim, 1), 20, "the first agent quoting")
    first.proc.send_signal(signal.SIGKILL)
    await first.finish()
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{sim.rest_url}/sim/fault/latency", json={"ms": 8000, "path": "/fapi/v1/exchangeInfo"}) as r:
            assert r.status == 200
        second = await spawn(config)

        async def held() -> bool:
            return any(h["path"] == "/fapi/v1/exchangeInfo" for h in (await sim_state(sim)).get("held", []))

        await wait_for(held, 20, "the start waiting for exchangeInfo")
        second.proc.send_signal(signal.SIGTERM)
        code, out = await second.finish()
        async with http.post(f"{sim.rest_url}/sim/fault/clear", json={}) as r:
            assert r.status == 200
    assert code == 0, out
    assert json.loads(out)["exchange_own_orders"] == 0
    assert (await sim_state(sim))["open_orders"] == []
    assert second.events("stop_during_start")


async def test_second_agent_is_refused_naming_the_owner_pid_and_ctrl_c_stops_clean(sim, spawn, fleet_config):
    config = fleet_config()
    owner = await spawn(config)
    await wait_for(lambda: quoting(sim, 1), 20, "the first agent quoting")
    intruder = await spawn(config)
    code, out = await intruder.finish()
    assert code == 3
    assert f"PID {owner.proc.pid}" in "\n".join(intruder.log_lines)
    assert all(epoch_of(o["clientOrderId"]) == 1 for o in (await sim_state(sim))["open_orders"])

    # the owner serves its metrics; the user stream is connected
    serving = await wait_for(lambda: owner.events("metrics_serving"), 10, "metrics served")
    port = serving[0]["port"]
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/metrics") as r:
            text = await r.text()
    assert re.search(r'^mm_ws_connected\{symbol="ETHUSDC"\} 1\.0$', text, re.M)
    assert owner.events("user_stream_connected")

    owner.proc.send_signal(signal.SIGINT)  # Ctrl-C
    code, out = await owner.finish()
    assert code == 0
    summary = json.loads(out)
    assert summary["state"] == "stopped" and summary["exchange_open_orders"] == 0
    assert (await sim_state(sim))["open_orders"] == []
    _, key, secret = sim.accounts[0]
    for value in (key, secret):  # never in the summary, the logs or the metrics
        assert value not in out and value not in text and all(value not in line for line in owner.log_lines)


async def test_sigterm_with_flatten_closes_the_position_within_20s(sim, spawn, fleet_config):
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{sim.rest_url}/sim/position", json={"symbol": SYMBOL, "amount": "0.060"}) as r:
            assert r.status == 200
    child = await spawn(fleet_config(), "--flatten-on-stop")
    await wait_for(lambda: quoting(sim, 1), 20, "the agent quoting")
    child.proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    code, out = await child.finish()
    assert time.monotonic() - t0 <= 20.0
    assert code == 0
    st = await sim_state(sim)
    assert st["open_orders"] == [] and Decimal(st["positions"][SYMBOL]["amount"]) == 0
    summary = json.loads(out)
    assert summary["flattened"] is True and summary["exchange_position"] == 0.0


async def test_a_wrong_secret_is_refused_at_start_with_the_exchanges_reason(sim, spawn, fleet_config):
    child = await spawn(fleet_config(), api_secret="0" * 64)
    code, out = await child.finish()
    assert code == 1
    text = "\n".join(child.log_lines)
    assert "-1022" in text and "Signature for this request is not valid" in text
    assert "0" * 64 not in text
    assert (await sim_state(sim))["open_orders"] == []


async def test_a_restarted_standalone_agent_carries_its_books_from_the_last_one(sim, spawn, fleet_config):
    """The single-symbol command began its books at 0 at every start: its realized P&L and commission
    (and the drawdown's peak) forgot what the symbol had made. They now come from the record the last
    agent kept in the state directory and the trades after it, equal to the exchange's."""
    config = fleet_config()
    first = await spawn(config)
    await wait_for(lambda: quoting(sim, 1), 20, "the first agent quoting")
    async with aiohttp.ClientSession() as http:
        for path, body in (("/sim/market/freeze", {"frozen": True, "symbol": SYMBOL}),
                           ("/sim/market/jump", {"symbol": SYMBOL, "pct": -0.2}),
                           ("/sim/market/jump", {"symbol": SYMBOL, "pct": 0.35}),
                           ("/sim/market/freeze", {"frozen": False, "symbol": SYMBOL})):
            async with http.post(f"{sim.rest_url}{path}", json=body) as r:
                assert r.status == 200, await r.text()
            await asyncio.sleep(0.5)
    record = config.parent / "state" / "demo.ETHUSDC.carry"

    def carried_fills() -> int:
        return record.exists() and (lambda d: d["fills_buy"] + d["fills_sell"])(json.loads(record.read_text()))

    await wait_for(carried_fills, 20, "the books written with fills")
    first.proc.send_signal(signal.SIGTERM)
    assert (await first.finish())[0] == 0
    truth = (await sim_state(sim))["positions"][SYMBOL]
    assert Decimal(truth["realized_pnl"]) != 0 and Decimal(truth["commission"]) > 0
    second = await spawn(config)
    serving = await wait_for(lambda: second.events("metrics_serving"), 20, "metrics served")

    seen: list[Any] = []

    async def books_equal_the_exchanges() -> bool:   # (it quotes meanwhile: both read again until they agree)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{serving[0]['port']}/status") as r:
                doc = await r.json()
        now = (await sim_state(sim))["positions"][SYMBOL]
        seen[:] = [doc["status"].get("state"), doc["exposure"], now]
        return doc["status"].get("state") == "quoting" and all(
            abs(Decimal(repr(doc["exposure"][k] or 0.0)) - Decimal(now[t])) < Decimal("1e-6")
            for k, t in (("realized_pnl", "realized_pnl"), ("commission", "commission")))

    async def said() -> str:
        return repr(seen)

    await wait_for(books_equal_the_exchanges, 30, "the second agent's books equal to the exchange's", explain=said)
    second.proc.send_signal(signal.SIGTERM)
    assert (await second.finish())[0] == 0
    doc = json.loads(record.read_text())   # another exchange's books (a fresh simulator, testnet for live) are not taken
    assert doc["exchange"] == sim.rest_url.rstrip("/")
    record.write_text(json.dumps({**doc, "exchange": "http://127.0.0.1:1"}))
    third = await spawn(config)
    await wait_for(lambda: third.events("carry_refused"), 30, "the other exchange's books refused")
    third.proc.send_signal(signal.SIGTERM)
    assert (await third.finish())[0] == 0


async def test_a_refused_start_stopped_while_the_other_owners_book_is_empty_leaves_its_dead_man_switch(
        sim, spawn, fleet_config):
    """Another process trades the symbol at this agent's epoch (its own state directory): the start
    refuses. The other's book empty for a moment (pulled), a stop then took the plain path: a cancel-all
    that would reach what the other places next, and its dead-man switch disarmed. Now it cancels only
    older epochs' orders and leaves the switch armed."""
    async with SimClient.for_sim(sim) as c:
        book = (await c.public("GET", "/fapi/v1/depth", {"symbol": SYMBOL, "limit": 5})).json
        placed = await c.signed("POST", "/fapi/v1/order", {
            "symbol": SYMBOL, "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.010",
            "price": str((Decimal(book["bids"][0][0]) * Decimal("0.97")).quantize(Decimal("0.01"))),
            "newClientOrderId": "mm-ETHUSDC-e1-900"})   # the other owner's order, at epoch 1
        assert placed.status == 200, placed.json
        armed = await c.signed("POST", "/fapi/v1/countdownCancelAll", {"symbol": SYMBOL, "countdownTime": 120000})
        assert armed.status == 200, armed.json
        intruder = await spawn(fleet_config(state="other"))
        await wait_for(lambda: intruder.events("other_owner_orders"), 20, "the start refusing")
        gone = await c.signed("DELETE", "/fapi/v1/order", {"symbol": SYMBOL, "origClientOrderId": "mm-ETHUSDC-e1-900"})
        assert gone.status == 200, gone.json   # the other's book empty for a moment
        deadline = (await sim_state(sim))["positions"][SYMBOL]["countdown_deadline_ms"]
        intruder.proc.send_signal(signal.SIGTERM)
        code, out = await intruder.finish()
    assert deadline and (await sim_state(sim))["positions"][SYMBOL]["countdown_deadline_ms"] == deadline
    assert "DELETE /fapi/v1/allOpenOrders" not in (await sim_state(sim))["weight_by_route"]
    assert code == 0 and json.loads(out)["exchange_own_orders"] == 0, out
