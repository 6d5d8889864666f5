"""An account another tool left in Hedge Mode: the agent's first order is refused -4061, and the symbol
halts, said once, until the account is back in one-way mode and an operator resumes."""

from __future__ import annotations

import logging

import pytest

from fleet.sim.testkit import SimClient

from .test_agent_live import SYMBOL, exchange, make_agent, wait_for  # noqa: F401 - fixtures


@pytest.fixture
async def sim(sim_factory):
    return await sim_factory(symbols=[SYMBOL], config={"accounts": [{"name": "main", "position_mode": "hedge"}]})


async def test_a_hedge_mode_account_halts_the_symbol_until_switched_and_resumed(make_agent, exchange, caplog):
    agent = await make_agent()
    await wait_for(lambda: agent.status()["state"] == "halted", 10, "halted by the first refusal")
    assert "Hedge Mode" in agent.status()["halt_reason"]
    events = [r for r in caplog.records if getattr(r, "event", None) == "hedge_mode"]
    assert len(events) == 1 and events[0].levelno == logging.ERROR
    assert not [r for r in caplog.records if getattr(r, "event", None) == "order_rejected"]   # said once, as hedge_mode
    placed = agent.core.orders_sent["place"]
    assert placed <= 2 * agent.params.grid.max_layers   # one cycle's worth at most, then nothing
    st = await exchange.state()
    assert st["open_orders"] == [] and st["counters"]["orders_placed"] == 0
    async with SimClient.for_sim(exchange.sim) as c:   # the desk switches the account, then resumes
        r = await c.signed("POST", "/fapi/v1/positionSide/dual", {"dualSidePosition": "false"})
        assert r.status == 200
    await agent.resume()

    async def resting() -> bool:
        return len((await exchange.state())["open_orders"]) > 0
    await wait_for(resting, 10, "the ladder resting once the account is one-way")
    assert agent.status()["state"] == "quoting"
    assert len([r for r in caplog.records if getattr(r, "event", None) == "hedge_mode"]) == 1


async def test_a_position_held_in_hedge_mode_is_never_read_as_flat(make_agent, exchange, caplog):
    """A LONG of 0.5 held in Hedge Mode: positionRisk lists the symbol by position side, with no one-way
    row. Read as flat, the agent started on a position of 0 and a flatten answered "flat" over 0.5
    held (an audit); now the read is refused naming Hedge Mode, and the start with it."""
    from fleet.binance.errors import BinanceError

    await exchange.post("/sim/position", {"account": "main", "symbol": SYMBOL, "amount": "0.5"})
    async with SimClient.for_sim(exchange.sim) as c:
        rows = (await c.signed("GET", "/fapi/v2/positionRisk", {"symbol": SYMBOL})).json
    assert sorted((r["positionSide"], r["positionAmt"]) for r in rows) == [("LONG", "0.500"), ("SHORT", "0.0")]
    with pytest.raises(BinanceError, match="Hedge Mode") as refused:
        await make_agent()
    assert refused.value.code == -4061
    fatal = [r for r in caplog.records if getattr(r, "event", None) == "start_fatal"]
    assert fatal and "LONG 0.500" in fatal[0].getMessage()
    st = await exchange.state()
    assert st["open_orders"] == [] and st["counters"]["orders_placed"] == 0
