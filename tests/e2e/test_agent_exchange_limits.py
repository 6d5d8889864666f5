"""Limits the exchange imposes on single orders, met by a real agent over sockets: -5026 (an order's
modify limit reached) and MARKET_LOT_SIZE (a coarser step and a smaller maximum for MARKET orders)."""

from __future__ import annotations

import logging
from decimal import Decimal

import pytest

from .test_agent_live import SYMBOL, exchange, in_sync, make_agent, wait_for  # noqa: F401 - fixtures
from .test_agent_ambiguity import RUNTIME, settled

# ETHUSDC as the built-in spec has it, but MARKET orders on a 0.01 step and at most 0.05 each
ETH_COARSE_MARKET = {
    "symbol": "ETHUSDC", "base_asset": "ETH", "quote_asset": "USDC", "tick_size": "0.01", "step_size": "0.001",
    "min_notional": "5", "start_price": 3000.0, "market_max_qty": "0.05", "market_step_size": "0.01",
}


@pytest.fixture
async def sim(sim_factory):
    return await sim_factory(config={"symbols": [ETH_COARSE_MARKET]}, symbols=["ETHUSDC", "BTCUSDT", "SOLUSDT"])


async def test_an_order_at_its_modify_limit_is_replaced_not_amended_again(make_agent, exchange, caplog):
    caplog.set_level(logging.WARNING, logger="mmfleet.agent")
    agent = await make_agent(runtime=RUNTIME)
    await settled(agent, exchange)
    await exchange.post("/sim/limits", {"max_modifies_per_order": 1})

    def refusals() -> list[str]:
        return [r.client_order_id for r in caplog.records
                if getattr(r, "client_order_id", None) and "-5026" in r.getMessage()]

    pct = 0.04
    for _ in range(30):  # small moves, each followed by the agent's answer: the ladder amends its orders
        if len(refusals()) >= 2:
            break
        pct = -pct
        await exchange.post("/sim/market/jump", {"symbol": SYMBOL, "pct": pct})
        await settled(agent, exchange)
    refused = refusals()
    assert refused, "the drill never reached the modify limit"
    assert len(refused) == len(set(refused)), f"an order was amended again after -5026: {refused}"
    # a move every order must follow: the ones at their limit are cancelled and replaced
    await exchange.post("/sim/market/jump", {"symbol": SYMBOL, "pct": 0.6})
    await settled(agent, exchange)
    resting = {o["clientOrderId"] for o in (await exchange.state())["open_orders"]}
    assert not resting & set(refused), "an order at its modify limit still rests after the market moved away"
    assert {o.side for o in agent.core.store.orders.values()} == {"BUY", "SELL"}


async def test_a_flatten_sends_market_orders_on_the_market_lot_size(make_agent, exchange):
    agent = await make_agent(runtime=RUNTIME)
    await settled(agent, exchange)
    await exchange.post("/sim/position", {"account": "main", "symbol": SYMBOL, "amount": "0.137"})
    await wait_for(lambda: agent.core.store.position_steps == 137, 10, "the agent sees the position")
    out = await agent.flatten("drill")
    assert out["position"] == 0.0
    st = await exchange.state()
    assert Decimal(st["positions"][SYMBOL]["amount"]) == 0 and not st["open_orders"]
    markets = [o for o in await exchange.all_orders() if o["type"] == "MARKET"]
    assert markets and all(Decimal(o["origQty"]) <= Decimal("0.05") for o in markets)
    assert all(Decimal(o["origQty"]) % Decimal("0.01") == 0 for o in markets)
    rejected = agent.core.store.rejects
    assert not {code: n for code, n in rejected.items() if code in (-4005, -4023, -1111)}, rejected


async def test_an_account_held_to_fewer_orders_than_binances_default_quotes_inside_them(make_agent, exchange, sim):
    """Binance may hold an account to order limits of its own (GET /fapi/v1/rateLimit/order, below
    exchangeInfo's 300 a 10 seconds). The agent reads them at its start and its budget keeps inside them
    while jumps make it re-price the whole ladder: the exchange counted no order past them (no 429)."""
    await exchange.post("/sim/limits", {"account": "main", "orders_per_10s": 25})
    agent = await make_agent(runtime=RUNTIME)
    await settled(agent, exchange)
    assert agent.budget.usage()["orders_10s"].exchange_limit == 25
    for pct in (0.5, -0.5, 0.5, -0.5, 0.5, -0.5):
        await exchange.post("/sim/market/jump", {"symbol": SYMBOL, "pct": pct})
        await wait_for(lambda: agent.status()["requests_in_flight"] == 0, 10, "the agent's answer to the jump")
    await settled(agent, exchange, timeout=40)
    most_in_10s = sim.limiter.peaks("127.0.0.1", "main")[0]
    assert most_in_10s <= 25 and agent.budget.rate_limited == 0, (most_in_10s, agent.budget.rate_limited)
    assert -1015 not in agent.core.store.rejects
