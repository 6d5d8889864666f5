"""Shared by the journal's tests: an in-process agent with a journal, the exchange's truth, checks."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

from sqlalchemy import select

from agents.agent import ExchangeEndpoints, SymbolAgent
from agents.ownership import LockFileOwnership
from fleet.binance.credentials import Credentials
from fleet.config import JournalConfig, RuntimeParams, SymbolParams
from fleet.sim.testkit import SimClient
from journal import pnl
from journal.db import Target, make_engine
from journal.recorder import attach_journal
from journal.schema import fills, funding
from tests.polling import wait_for  # noqa: F401 - the journal tests import it from here

FAST = RuntimeParams(
    reconnect_backoff_initial_sec=0.3, reconnect_backoff_max_sec=2.0, deadman_heartbeat_sec=1.0,
    deadman_countdown_ms=5_000, market_stale_sec=600.0, stop_timeout_sec=20.0,
)
SETTINGS = JournalConfig(snapshot_interval_sec=1.0, backfill_interval_sec=5.0, flush_interval_sec=0.1)


def make_agent(sim: Any, target: Target, state_dir: Any, symbol: str, fleet: str = "t",
               settings: JournalConfig = SETTINGS) -> SymbolAgent:
    _, key, secret = sim.accounts[0]
    agent = SymbolAgent(
        fleet_name=fleet, symbol=symbol, params=SymbolParams(), runtime=FAST,
        endpoints=ExchangeEndpoints(sim.rest_url, sim.ws_url, sim.ws_url), credentials=Credentials(key, secret),
        ownership=LockFileOwnership(state_dir, fleet, symbol),
    )
    attach_journal(agent, target, fleet=fleet, account="main", symbol=symbol, settings=settings)
    return agent


async def exchange_trades(sim: Any, symbol: str) -> list[dict]:
    out: list[dict] = []
    async with SimClient.for_sim(sim) as c:
        from_id = 0
        while True:
            reply = await c.signed("GET", "/fapi/v1/userTrades", {"symbol": symbol, "fromId": from_id, "limit": 1000})
            assert reply.status == 200, reply.json
            out += reply.json
            if len(reply.json) < 1000:
                return out
            from_id = max(int(t["id"]) for t in reply.json) + 1


def journal_sums(target: Target, symbol: str) -> dict[str, Any]:
    engine = make_engine(target)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(fills.c.trade_id, fills.c.side, fills.c.realized_pnl, fills.c.fee)
                                .where(fills.c.symbol == symbol)).all()
            fund = conn.execute(select(funding.c.amount).where(funding.c.symbol == symbol)).scalars().all()
        report = pnl.compute(engine, symbols=[symbol])
    finally:
        engine.dispose()
    return {
        "fills": sorted((r.trade_id, r.side) for r in rows),   # a self-trade: both sides, one trade id
        "realized": sum((Decimal(r.realized_pnl) for r in rows), Decimal(0)),
        "commission": sum((Decimal(r.fee) for r in rows), Decimal(0)),
        "funding": sum((Decimal(a) for a in fund), Decimal(0)),
        "report": report,
    }


def assert_equals_exchange(state: dict, sums: dict, symbol: str, trades: list[dict]) -> None:
    pos = state["positions"][symbol]
    cent = Decimal("0.01")
    assert sums["realized"].quantize(cent) == Decimal(pos["realized_pnl"]).quantize(cent), (sums["realized"], pos)
    assert sums["commission"].quantize(cent) == Decimal(pos["commission"]).quantize(cent), (sums["commission"], pos)
    assert sums["funding"].quantize(cent) == Decimal(pos["funding"]).quantize(cent), (sums["funding"], pos)
    # exact, not only to the cent
    assert sums["realized"] == Decimal(pos["realized_pnl"]) and sums["commission"] == Decimal(pos["commission"])
    assert sums["funding"] == Decimal(pos["funding"])
    assert sums["fills"] == sorted((int(t["id"]), t["side"]) for t in trades), "a fill twice or missing"


def assert_split_adds_up(report: dict) -> None:
    for name, d in [*report["symbols"].items(), ("fleet", report["fleet"])]:
        s = d["split"]
        parts = s["spread"] + s["inventory"] + s["funding"] + s["fees"]
        assert abs(parts - d["total"]) < 1e-6, (name, d)
        assert abs(d["realized"] + d["unrealized"] + d["funding"] - d["fees"] - d["total"]) < 1e-6, (name, d)


async def post(sim: Any, http: Any, path: str, body: dict) -> dict:
    async with http.post(f"{sim.rest_url}{path}", json=body) as r:
        data = await r.json()
        assert r.status == 200, data
        return data


async def stopped_as_the_exchange(sim: Any, http: Any, agent: Any, task: Any, target: Target,
                                  symbol: str) -> tuple[dict, list[dict], dict]:
    """Stop the agent, then check the journal equals the exchange's record: (its state, its trades, the sums)."""
    await agent.stop()
    await asyncio.wait_for(task, 30)
    state = await sim_state(sim, http, symbol)
    trades = await exchange_trades(sim, symbol)
    sums = journal_sums(target, symbol)
    assert_equals_exchange(state, sums, symbol, trades)
    return state, trades, sums


async def sim_state(sim: Any, http: Any, symbol: str) -> dict:
    async with http.get(f"{sim.rest_url}/sim/state", params={"account": "main", "symbol": symbol}) as r:
        assert r.status == 200
        return await r.json()
