"""The agent's start on the simulated clock against the in-process exchange: what it takes for another
owner's orders, and what it does not.

A kill (a flatten) that reaches an agent between two tries of its start sends the agent's own reduce-only
close; answered ambiguously, it stays counted in the store as open. The start's check for another
owner's orders (``Starter.refuse_other_owners``) took it for another process's and refused every later
try for good: no dead-man switch, no quoting, an ERROR blaming another process.
"""

from __future__ import annotations

import asyncio
import logging
import random
from pathlib import Path

from agents.agent import ExchangeEndpoints, SymbolAgent
from fleet.binance.models import OrderRequest
from fleet.binance.ratelimit import RateBudget
from fleet.config import load_fleet_config, symbol_params
from fleet.sim.faults import parse_fault
from fleet.sim.local import LocalExchange
from simulate.clock import SimClock, run_simulated
from simulate.run import START_MS, LocalLease, RunOptions, sim_config_for
from simulate.transport import SIM_URL, LocalTransport

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "fleet.demo.yaml"
CFG = load_fleet_config(CONFIG)
SYMBOL = "ETHUSDC"


async def _flatten_between_tries() -> tuple[SymbolAgent, list[tuple[float, str]]]:
    clock = SimClock(asyncio.get_running_loop(), START_MS)
    ex = LocalExchange(clock_ms=clock.time_ms, symbols=[SYMBOL], seed=1,
                       config=sim_config_for(CFG, RunOptions(hours=1)))
    running = asyncio.create_task(ex.run())
    _, key, secret = ex.accounts[0]
    transport = LocalTransport(ex, key, secret, clock=clock)
    hand = transport.client(RateBudget(clock=clock.monotonic))
    await hand.open()
    await hand.place_order(OrderRequest(symbol=SYMBOL, side="BUY", order_type="MARKET", quantity="0.050"))
    quiet = logging.getLogger("tests.simulate.agent_start")
    quiet.setLevel(logging.CRITICAL)
    agent = SymbolAgent(fleet_name=CFG.name, symbol=SYMBOL, params=symbol_params(CFG, SYMBOL, CONFIG),
                        runtime=CFG.runtime, endpoints=ExchangeEndpoints(SIM_URL, SIM_URL, SIM_URL),
                        credentials=None, ownership=LocalLease(), logger=quiet, clock=clock,
                        rng=random.Random(1), transport=transport)
    events: list[tuple[float, str]] = []
    agent.log.listener = lambda event, msg, fields: events.append((clock.monotonic(), event))
    # the first try fails at its last step (the dead-man switch's heartbeat refused -1001), after a mark came
    ex.faults.append(parse_fault({"mode": "error", "path": "/fapi/v1/countdownCancelAll", "count": 1}))
    ex.latency = (1500, "/fapi/v1/countdownCancelAll")
    life = asyncio.create_task(agent.run())
    while not any(e == "start_failed" for _, e in events):
        await asyncio.sleep(0.01)
    ex.latency = (ex.config.rest_latency_ms, None)
    # the kill's flatten, between the tries: its close executes, its answer is a 503 "status unknown"
    ex.faults.append(parse_fault({"mode": "exec_then_error", "path": "/fapi/v1/order", "method": "POST", "count": 1}))
    await agent.flatten("a kill during the start")
    await asyncio.sleep(30)
    await agent.resume()
    await asyncio.sleep(30)
    await agent.stop()
    life.cancel()
    running.cancel()
    return agent, events


def test_the_agent_s_own_close_answered_ambiguously_during_its_start_is_not_another_owner_s():
    agent, events = run_simulated(_flatten_between_tries())
    assert not [e for _, e in events if e == "other_owner_orders"]
    assert agent.counters["start_attempts"] == 2 and "quoting_started" in [e for _, e in events]
