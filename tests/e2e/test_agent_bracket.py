"""A side the leverage's bracket allows no more of: the exchange refuses the orders that would take
the position and the orders resting on a side beyond the leverage's allowance (-2027), and the agent
holds them as it holds a margin shortfall (``MarginHold``; test_agent_margin_short.py)."""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal

import pytest

from fleet.sim.config import default_symbol_spec

from .test_agent_live import SYMBOL, exchange, make_agent, metric, wait_for  # noqa: F401 - fixtures

CAP = 60   # USDC: ETHUSDC's first bracket at 20x (the account's default leverage), and no more at 20x
BRACKETS = [{"notional_cap": str(CAP), "initial_leverage": 20, "maint_margin_ratio": "0.004"},
            {"notional_cap": "1000000", "initial_leverage": 10, "maint_margin_ratio": "0.01"}]


@pytest.fixture
async def sim(sim_factory):
    spec = default_symbol_spec(SYMBOL).model_dump() | {"brackets": BRACKETS}
    return await sim_factory(symbols=[SYMBOL], config={"symbols": [spec]})


async def test_a_ladder_beyond_the_leverage_bracket_is_held_like_a_margin_shortfall(make_agent, exchange, caplog):
    """What fits the bracket rests; the rest is held with the margin hold's back-off, said once a hold."""
    agent = await make_agent()
    await wait_for(lambda: agent.counters["margin_holds"] >= 1, 10, "a first -2027")
    rejects_at_first = metric(agent, "mm_rejects_total")
    await asyncio.sleep(3.0)   # an observation window: only upper bounds are asserted over it
    holds = agent.counters["margin_holds"]
    assert 1 <= holds <= 2, holds                               # 1 s, then 2 s: a 3rd starts by 3 s at the earliest
    ladder = 2 * agent.params.grid.max_layers
    assert metric(agent, "mm_rejects_total") - rejects_at_first <= (holds - 1) * ladder
    orders = (await exchange.state())["open_orders"]
    assert orders, "what fits the bracket rests"
    for side in ("BUY", "SELL"):   # the exchange's own truth: no side beyond the allowance
        assert sum(Decimal(o["price"]) * Decimal(o["origQty"]) for o in orders if o["side"] == side) <= CAP
    events = [r for r in caplog.records if getattr(r, "event", None) == "margin_short"]
    assert len(events) == holds and all(r.levelno == logging.WARNING for r in events)
    assert all("(-2027)" in r.getMessage() for r in events)
    assert not [r for r in caplog.records if getattr(r, "event", None) == "order_rejected"]   # said once a hold
