"""A side the leverage's bracket allows no more of: the exchange refuses the orders that would take
the position and the orders resting on a side beyond the leverage's allowance (-2027), and the agent
holds them as it holds a margin shortfall (``MarginHold``; test_agent_margin_short.py)."""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal

import pytest

from fleet.sim.config import default_symbol_spec
from fleet.sim.testkit import SimClient

from .test_agent_live import SYMBOL, exchange, make_agent, metric, wait_for  # noqa: F401 - fixtures

CAP = 60   # USDC: ETHUSDC's first bracket at 20x (the account's default leverage), and no more at 20x
BRACKETS = [{"notional_cap": str(CAP), "initial_leverage": 20, "maint_margin_ratio": "0.004"},
            {"notional_cap": "1000000", "initial_leverage": 10, "maint_margin_ratio": "0.01"}]


@pytest.fixture
async def sim(sim_factory, request):
    """ETHUSDC whose first bracket (20x) stops at ``CAP``, or at the test's parameter."""
    brackets = [dict(BRACKETS[0], notional_cap=str(getattr(request, "param", CAP))), BRACKETS[1]]
    spec = default_symbol_spec(SYMBOL).model_dump() | {"brackets": brackets}
    return await sim_factory(symbols=[SYMBOL], config={"symbols": [spec]})


async def test_a_ladder_beyond_the_leverage_bracket_is_held_like_a_margin_shortfall(make_agent, exchange, caplog):
    """What fits the bracket rests; the rest is held with the margin hold's back-off, said once a hold."""
    agent = await make_agent()
    await wait_for(lambda: agent.counters["margin_holds"] >= 1, 10, "a first -2027")
    rejects_at_first = metric(agent, "mm_rejects_total")
    await asyncio.sleep(2.5)   # an observation window: only upper bounds are asserted over it
    holds = agent.counters["margin_holds"]
    assert 1 <= holds <= 2, holds                               # 1 s, then 2 s: a 3rd starts by 3 s at the earliest
    ladder = 2 * agent.params.grid.max_layers
    assert metric(agent, "mm_rejects_total") - rejects_at_first <= (holds - 1) * ladder
    st = await exchange.state()
    assert st["open_orders"], "what fits the bracket rests"
    # the exchange's own truth: no side beyond the allowance, the position netted at the mark
    held = Decimal(st["positions"][SYMBOL]["amount"]) * Decimal(st["markets"][SYMBOL]["mark_price"])

    def side(name: str) -> Decimal:
        return sum((Decimal(o["price"]) * (Decimal(o["origQty"]) - Decimal(o["executedQty"]))
                    for o in st["open_orders"] if o["side"] == name), Decimal(0))

    assert held + side("BUY") <= CAP and side("SELL") - held <= CAP
    events = [r for r in caplog.records if getattr(r, "event", None) == "margin_short"]
    assert len(events) == holds and all(r.levelno == logging.WARNING for r in events)
    assert all("(-2027)" in r.getMessage() for r in events)
    assert not [r for r in caplog.records if getattr(r, "event", None) == "order_rejected"]   # said once a hold
    # and said at the start: the worst-case cap is worth more than the leverage allows a side
    assert metric(agent, "mm_max_notional") == CAP and metric(agent, "mm_leverage") == 20
    await wait_for(lambda: [r for r in caplog.records if getattr(r, "event", None) == "cap_beyond_leverage"], 5,
                   "the cap said to be beyond the leverage's allowance")
    [said] = [r for r in caplog.records if getattr(r, "event", None) == "cap_beyond_leverage"]
    assert said.levelno == logging.WARNING and f"the {CAP} the exchange allows a side at 20x" in said.getMessage()



@pytest.mark.parametrize("sim", [160], indirect=True)
async def test_a_full_side_holds_that_side_alone_and_the_other_side_quotes_on(sim, make_agent, exchange, caplog):
    """Long near 20x's allowance of 160 on the bid side, with room on the ask side: the bids the
    exchange refuses (-2027) hold the BUY side alone, said so; the ask ladder rests and its amends go
    on during the hold."""
    st = await exchange.state()
    mark = Decimal(st["markets"][SYMBOL]["mark_price"])
    long = (Decimal(150) / mark).quantize(Decimal("0.001"))   # ~150 of 160: a bid or two more at most
    await exchange.post("/sim/position", {"account": "main", "symbol": SYMBOL, "amount": f"{long:f}"})
    agent = await make_agent()
    await wait_for(lambda: agent.counters["margin_holds"] >= 1, 10, "a first -2027")
    hold = agent.sender.margin_hold
    amends = agent.core.orders_sent["amend"]
    await wait_for(lambda: agent.core.orders_sent["amend"] > amends and hold.left(agent.clock.monotonic()) > 0
                   and hold.side == "BUY", 10, "asks moved during the BUY side's hold")
    asks = [o for o in (await exchange.state())["open_orders"] if o["side"] == "SELL"]
    assert len(asks) >= agent.params.grid.max_layers // 2, "the ask ladder rests"
    events = [r for r in caplog.records if getattr(r, "event", None) == "margin_short"]
    assert events and all("BUY side" in r.getMessage() for r in events)


async def test_new_brackets_and_a_new_leverage_are_read_again_and_the_cap_checked_again(make_agent, exchange, caplog):
    """The exchange pushes a new table (!contractInfo with bks) whose first bracket allows the cap; then
    the account's leverage is raised at the exchange (ACCOUNT_CONFIG_UPDATE): symbolConfig is read again
    each time, the gauges follow, and the cap is said beyond the allowance only while it is."""
    caplog.set_level(logging.INFO, logger="mmfleet.agent")
    agent = await make_agent()
    await wait_for(lambda: metric(agent, "mm_max_notional") == CAP, 10, "the start's symbolConfig")
    await wait_for(lambda: [r for r in caplog.records if getattr(r, "event", None) == "cap_beyond_leverage"], 5,
                   "the cap said to be beyond the start's allowance")
    await exchange.post("/sim/brackets", {"symbol": SYMBOL, "brackets": [
        {"notional_cap": "100000", "initial_leverage": 20, "maint_margin_ratio": "0.004"},
        {"notional_cap": "1000000", "initial_leverage": 10, "maint_margin_ratio": "0.01"}]})
    await wait_for(lambda: metric(agent, "mm_max_notional") == 100000, 10, "the new table's allowance read")
    async with SimClient.for_sim(exchange.sim) as c:   # 10x allows the second bracket's cap
        assert (await c.signed("POST", "/fapi/v1/leverage", {"symbol": SYMBOL, "leverage": "10"})).status == 200
    await wait_for(lambda: metric(agent, "mm_leverage") == 10 and metric(agent, "mm_max_notional") == 1000000, 10,
                   "the new leverage's allowance read")
    said = [r for r in caplog.records if getattr(r, "event", None) == "cap_beyond_leverage"]
    assert len(said) == 1   # at the start only (60 < the cap's notional); not under the new tables
    assert len([r for r in caplog.records if getattr(r, "event", None) == "allowance_changed"]) == 2
