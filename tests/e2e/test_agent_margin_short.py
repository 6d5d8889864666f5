"""An account short of margin: the exchange refuses new orders with -2019, and the agent holds them
with a back-off (``MarginHold``) instead of sending them again at every book tick. The same hold for
a side the leverage's bracket allows no more of: test_agent_bracket.py."""

from __future__ import annotations

import asyncio
import logging

import pytest

from .test_agent_live import exchange, make_agent, metric, wait_for  # noqa: F401 - fixtures


@pytest.fixture
async def sim(sim_factory):
    """An account with 4 USDC: a ladder's first few orders fit its margin, the rest are refused (-2019)."""
    return await sim_factory(config={"accounts": [{"name": "main", "balances": {"USDC": "4", "USDT": "100000"}}]})


async def test_an_account_short_of_margin_holds_new_orders_with_a_back_off(make_agent, exchange, caplog):
    """Before the hold the agent sent the refused orders again at every book tick: 157 refusals in
    10 s on this account. Now a -2019 holds new orders 1 s, then 2, 4, 8 ... (reduce-only ones go
    on), so in 8 s after the first there are at most 4 holds and their batches' refusals."""
    agent = await make_agent()
    await wait_for(lambda: agent.counters["margin_holds"] >= 1, 10, "a first -2019")
    rejects_at_first = metric(agent, "mm_rejects_total")   # -2019 the only code refused
    await asyncio.sleep(8.0)   # an observation window: only upper bounds are asserted over it
    holds = agent.counters["margin_holds"]
    rejects = metric(agent, "mm_rejects_total")
    assert 1 <= holds <= 4, holds                               # 1 s, 2 s, 4 s: the 4th starts by 7 s
    ladder = 2 * agent.params.grid.max_layers
    assert rejects - rejects_at_first <= (holds - 1) * ladder, (rejects_at_first, rejects, holds)
    st = await exchange.state()
    assert st["open_orders"], "what fits the margin rests"
    events = [r for r in caplog.records if getattr(r, "event", None) == "margin_short"]
    assert len(events) == holds and all(r.levelno == logging.WARNING for r in events)
    assert not [r for r in caplog.records if getattr(r, "event", None) == "order_rejected"]   # said once a hold
