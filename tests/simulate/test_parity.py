"""Parity: the same seed, run for the same span through the simulated clock and through the live
runtime over sockets against the simulator, makes the same decisions where timing allows.

Both runs see the same market path (the simulator's mid model is seeded per symbol and steps every
50 ms from the engine's start, whatever the clock). The funding rate is held at 0 so that the
agent's funding prediction (sampled on its own timer) is the same in both, and the market is calm
so that fills, whose timing differs, seldom move the position the ladders start from. Decisions are compared by their inputs: every
ladder the strategy computed in either run is keyed by what it was computed from (mid, position,
other pending, funding prediction, best bid and ask, side limits); for every key both runs met, the
ladders (prices and sizes) must be equal, and the runs must have met many. Counts depend on timing
(live: loopback round trips of ~0.3 ms and the machine's scheduling; simulated: the modelled 2 ms and
1 ms), so they are compared within a stated tolerance: orders placed, amends and fills within a
factor of two of each other.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from agents.agent import SymbolAgent
from agents.agent_base import ExchangeEndpoints
from agents.strategy import GeometricV2
from fleet.binance.credentials import Credentials
from fleet.config import load_fleet_config, symbol_params
from fleet.sim.config import SimConfig, default_symbol_spec
from fleet.sim.market import MarketParams
from fleet.sim.server import SimServer
from simulate.run import LocalLease, RunOptions, simulate

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "fleet.demo.yaml"
CFG = load_fleet_config(CONFIG)
SEED = 21
SPAN_S = 25.0
FACTOR = 2.0  # counts agree within this factor
SIM = SimConfig(symbols=(default_symbol_spec("ETHUSDC").model_copy(update={"funding_rate": "0"}),),
                funding_rate_wander=0.0, market=MarketParams(volatility=0.3))


@pytest.fixture
def ladders(monkeypatch):
    """Every ladder GeometricV2 computes, keyed by its inputs, per run (an observer: it calls through)."""
    seen: dict[str, dict[tuple, tuple]] = {"live": {}, "simulated": {}}
    current = {"run": "live"}
    original = GeometricV2.quote

    def recording(self, *args, **kwargs):
        ladder = original(self, *args, **kwargs)
        key = args + tuple(sorted(kwargs.items()))
        seen[current["run"]][key] = (tuple((q.price_ticks, q.qty_steps) for q in ladder.bids),
                                     tuple((q.price_ticks, q.qty_steps) for q in ladder.asks))
        return ladder

    monkeypatch.setattr(GeometricV2, "quote", recording)
    return seen, current


async def _live_run() -> dict[str, int]:
    params = symbol_params(CFG, "ETHUSDC", CONFIG)
    async with SimServer(symbols=["ETHUSDC"], seed=SEED, config=SIM) as sim:
        _, key, secret = sim.accounts[0]
        agent = SymbolAgent(fleet_name="parity", symbol="ETHUSDC", params=params, runtime=CFG.runtime,
                            endpoints=ExchangeEndpoints(sim.rest_url, sim.ws_url, sim.ws_url),
                            credentials=Credentials(key, secret), ownership=LocalLease(), rng=random.Random(SEED))
        task = asyncio.create_task(agent.run())
        await asyncio.sleep(SPAN_S)
        await agent.stop()
        await asyncio.wait_for(task, 30)
        c = sim.engine.accounts["main"].counters
        return {"placed": c["orders_placed"], "amended": c["orders_amended"], "fills": c["trades"]}


def test_the_simulated_clock_decides_as_the_live_runtime(ladders):
    seen, current = ladders
    live = asyncio.run(_live_run())
    current["run"] = "simulated"
    result = simulate(CFG, CONFIG, RunOptions(hours=SPAN_S / 3600.0, seed=SEED, symbols=["ETHUSDC"], sim_config=SIM))
    t = result.symbols[0].table
    minutes = SPAN_S / 60.0
    simulated = {"placed": round(t["orders_per_min"] * minutes), "amended": round(t["amends_per_min"] * minutes),
                 "fills": t["fills"]}
    common = seen["live"].keys() & seen["simulated"].keys()
    differ = [k for k in common if seen["live"][k] != seen["simulated"][k]]
    print(f"ladders: live {len(seen['live'])}, simulated {len(seen['simulated'])}, same inputs {len(common)}; "
          f"counts live {live}, simulated {simulated}")
    assert len(common) >= 0.5 * min(len(seen["live"]), len(seen["simulated"])) >= 20, "the runs hardly met"
    assert not differ, f"{len(differ)} ladders differ for the same inputs"
    for name in ("placed", "amended"):
        lo, hi = sorted((live[name], simulated[name]))
        assert hi <= FACTOR * max(lo, 1), (name, live, simulated)
    assert abs(live["fills"] - simulated["fills"]) <= max(5, (FACTOR - 1) * max(live["fills"], simulated["fills"]))
