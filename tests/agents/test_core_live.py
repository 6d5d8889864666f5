"""The seed's acceptance at the exchange: with 30 buy layers resting, worst-case long never exceeds 0.23.

A real SymbolAgent runs the core against the simulator over loopback; the exchange's own state
(``/sim/state``: position + open buys) is sampled throughout while the price crashes through the
bids again and again.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal

import aiohttp
import pytest

from agents.agent import ExchangeEndpoints, SymbolAgent
from agents.ownership import LockFileOwnership
from fleet.binance.credentials import Credentials
from fleet.config import RuntimeParams, SymbolParams
from tests.polling import wait_for

SYMBOL = "ETHUSDC"
# 30 layers whose sizes all stay above the simulator's min notional (5 USDC) and step (0.001):
# a gentle size decay, and a spacing that keeps the outer layer about 1 % from mid.
PARAMS = SymbolParams.model_validate(
    {
        "base": {"base_size": 0.01},
        "grid": {"max_layers": 30, "spacing_ratio": 1.1, "layer_size_decay": 0.98},
        "worst_case": {"size_decay_k": 0.5},
    }
)
RUNTIME = RuntimeParams(
    reconnect_backoff_initial_sec=0.3, reconnect_backoff_max_sec=2.0, deadman_heartbeat_sec=1.0,
    deadman_countdown_ms=5_000, market_stale_sec=600.0,
)


async def test_with_30_buy_layers_resting_worst_case_long_never_exceeds_0_23_at_the_exchange(sim, tmp_path):
    _, key, secret = sim.accounts[0]
    agent = SymbolAgent(
        fleet_name="acceptance", symbol=SYMBOL, params=PARAMS, runtime=RUNTIME,
        endpoints=ExchangeEndpoints(sim.rest_url, sim.ws_url, sim.ws_url), credentials=Credentials(key, secret),
        ownership=LockFileOwnership(tmp_path / "state", "acceptance", SYMBOL),
    )
    task = asyncio.create_task(agent.run())
    http = aiohttp.ClientSession()

    async def state() -> dict:
        async with http.get(f"{sim.rest_url}/sim/state", params={"account": "main", "symbol": SYMBOL}) as r:
            assert r.status == 200
            return await r.json()

    def worst_long(st: dict) -> Decimal:
        pos = Decimal(st["positions"][SYMBOL]["amount"])
        return pos + sum(
            (Decimal(o["origQty"]) - Decimal(o["executedQty"]) for o in st["open_orders"] if o["side"] == "BUY"),
            Decimal(0),
        )

    async def bids_resting() -> int:
        return sum(1 for o in (await state())["open_orders"] if o["side"] == "BUY")

    samples: list[Decimal] = []
    most_bids = 0
    done = asyncio.Event()

    async def sample() -> None:
        nonlocal most_bids
        while not done.is_set():
            st = await state()
            samples.append(worst_long(st))
            most_bids = max(most_bids, sum(1 for o in st["open_orders"] if o["side"] == "BUY"))
            await asyncio.sleep(0)

    try:
        await wait_for(lambda: task.done() or agent.status()["state"] == "quoting", 15, "the agent quoting")
        await wait_for(_at_least(bids_resting, 30), 15, "30 buy layers resting")
        # Only the jumps below move the price from here on; the streams keep flowing, so the
        # agent never pulls its quotes as stale.
        freeze = {"frozen": True, "symbol": SYMBOL, "mode": "price"}
        async with http.post(f"{sim.rest_url}/sim/market/freeze", json=freeze) as r:
            assert r.status == 200
        st = await state()  # the ladder as it rests before the first crash
        samples.append(worst_long(st))
        most_bids = sum(1 for o in st["open_orders"] if o["side"] == "BUY")
        sampler = asyncio.create_task(sample())
        try:
            for _ in range(5):  # the price crashes through every bid, again and again
                async with http.post(f"{sim.rest_url}/sim/market/jump", json={"symbol": SYMBOL, "pct": -1.5}) as r:
                    assert r.status == 200
                before = len(samples)
                await wait_for(lambda: len(samples) > before + 20, 15, "samples after a jump")
                await wait_for(lambda: not any(o.busy for o in agent.core.store.orders.values()), 15, "requests answered")
        finally:
            done.set()
            await sampler
        st = await state()
        cap = Decimal("0.23")
        assert most_bids >= 30
        assert len(samples) > 100
        assert max(samples) <= cap, f"worst-case long {max(samples)} over {cap}"
        assert Decimal(st["positions"][SYMBOL]["amount"]) >= cap * Decimal("0.5")  # the crashes really loaded it
    finally:
        await http.close()
        await agent.stop()
        await asyncio.wait_for(task, 25)


def _at_least(counter, n: int):
    async def check() -> bool:
        return await counter() >= n

    return check


pytestmark = pytest.mark.timeout(120)
