"""Limits the exchange imposes, met by a real agent over sockets: on single orders, -5026 (an order's
modify limit reached) and MARKET_LOT_SIZE (a coarser step and a smaller maximum for MARKET orders); on
the account, its own order limits (GET /fapi/v1/rateLimit/order)."""

from __future__ import annotations

import dataclasses
import logging
from decimal import Decimal

import pytest

from agents import delisting
from agents.ownership import Grant, LockFileOwnership

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


async def test_an_order_limits_read_that_failed_at_the_start_is_tried_again_soon(make_agent, exchange, monkeypatch):
    """A 503 on the start's rateLimit/order read left the budget on Binance's default for the 15 minutes
    until the periodic read: an account held to fewer orders met 429s all that time (a review)."""
    monkeypatch.setattr(delisting, "ORDER_LIMITS_RETRY_S", 1.0)
    await exchange.post("/sim/limits", {"account": "main", "orders_per_10s": 25})
    await exchange.post("/sim/fault/rest", {"mode": "error", "status": 503, "path": "/fapi/v1/rateLimit/order",
                                            "count": 1})
    agent = await make_agent(runtime=RUNTIME)
    assert agent.budget.usage()["orders_10s"].exchange_limit == 300   # the start's read failed
    await wait_for(lambda: agent.budget.usage()["orders_10s"].exchange_limit == 25, 10, "the limits read again")


class QuarterShare(LockFileOwnership):
    """An owner granting a quarter of the account's limits, as a controller does each of four agents."""

    async def acquire(self) -> Grant:
        self._grant = dataclasses.replace(await super().acquire(), rate_share=0.25)
        return self._grant


async def test_an_agents_share_of_a_held_account_that_fits_no_batch_sends_its_orders_one_by_one(
        make_agent, exchange, sim):
    """Four agents on an account held to 25 orders a 10 seconds: each may send 5 of them, 3 to quote. A
    batch spends 5 of the count whatever its size, so no batch ever fitted: the agent said "quoting" with
    nothing resting, its orders refused by its own budget (a review). They go one by one now."""
    await exchange.post("/sim/limits", {"account": "main", "orders_per_10s": 25})
    agent = await make_agent(runtime=RUNTIME, ownership_class=QuarterShare)
    assert agent.budget.limits["orders_10s"] == 5

    async def resting() -> int:
        return len((await exchange.state())["open_orders"])

    await wait_for(lambda: resting() if agent.status()["state"] == "quoting" else False, 10, "orders resting")
    most_in_10s = sim.limiter.peaks("127.0.0.1", "main")[0]
    assert most_in_10s <= 25 and agent.budget.rate_limited == 0, (most_in_10s, agent.budget.rate_limited)


async def test_limits_the_exchange_raises_again_are_followed_within_a_minute(make_agent, exchange, monkeypatch):
    """The IP's weight and the account's order limits lowered, then raised again: the budget took the
    raise only at its 15-minute read (a hostile run: agents starved 14 minutes, the dead-man countdown
    running out 21 times meanwhile). Lowered limits are read again every minute (1 s here)."""
    monkeypatch.setattr(delisting, "ORDER_LIMITS_RETRY_S", 1.0)
    await exchange.post("/sim/limits", {"weight_per_minute": 1200})
    await exchange.post("/sim/limits", {"account": "main", "orders_per_10s": 25})
    agent = await make_agent(runtime=RUNTIME)
    usage = agent.budget.usage()
    assert (usage["weight_1m"].exchange_limit, usage["orders_10s"].exchange_limit) == (1200, 25) and agent.budget.lowered
    await exchange.post("/sim/limits", {"weight_per_minute": 2400})
    await exchange.post("/sim/limits", {"account": "main", "orders_per_10s": 300})
    await wait_for(lambda: not agent.budget.lowered, 10, "the limits raised again, followed")
    usage = agent.budget.usage()
    assert (usage["weight_1m"].exchange_limit, usage["orders_10s"].exchange_limit) == (2400, 300)


async def test_a_lowered_weights_reads_do_not_hold_back_the_periodic_order_limits_read(make_agent, exchange,
                                                                                       monkeypatch):
    """The IP's weight listed lower for good: its minute re-reads of exchangeInfo pushed the periodic read
    back at each, and rateLimit/order, read with it, was never read again (a review: an hour, 59
    exchangeInfo reads, no rateLimit/order)."""
    monkeypatch.setattr(delisting, "ORDER_LIMITS_RETRY_S", 0.5)
    await exchange.post("/sim/limits", {"weight_per_minute": 1200})
    agent = await make_agent(runtime=RUNTIME.model_copy(update={"exchange_info_reread_sec": 3.0}))
    assert agent.budget.lowered == {"weight_1m"}
    await exchange.post("/sim/limits", {"account": "main", "orders_per_10s": 250})   # (more than it sends: no 429)
    await wait_for(lambda: agent.budget.usage()["orders_10s"].exchange_limit == 250, 10, "the periodic read")
