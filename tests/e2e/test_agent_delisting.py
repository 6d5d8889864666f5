"""A delisting as the exchange runs it (agents/delisting.py, fleet/sim/delisting.py): announced by
``!contractInfo``, settled at its time by the exchange's own orders, the symbol closed after.

- With a lead, the agent flattens the symbol before the settlement: the exchange's settlement finds no
  position and no order of ours, and the flatten is durable.
- With no lead, the exchange's settlement order closes the position: the agent books it as the exchange
  did, halts, and a new agent refuses to start on the closed symbol.
- A delisting taken back is forgotten.
"""

from __future__ import annotations

import logging

import pytest

from fleet.binance.errors import BinanceError
from fleet.binance.enums import PERPETUAL_DELIVERY_MS, ErrorCode

from .test_agent_live import (  # noqa: F401 - fixtures
    FAST,
    SYMBOL,
    describe,
    exchange,
    in_sync,
    make_agent,
    metric,
    resting,
    wait_for,
)


async def _quoting_long(make_agent, exchange, lead_s: float):
    """An agent quoting on a held price with a long of 0.1 it holds (under its cap)."""
    agent = await make_agent(runtime=FAST.model_copy(update={"delisting_exit_lead_sec": lead_s}))
    await exchange.post("/sim/market/freeze", {"frozen": True, "symbol": SYMBOL, "mode": "price"})
    await wait_for(lambda: resting(agent, exchange), 10, "a ladder resting on both sides")
    await exchange.post("/sim/position", {"account": "main", "symbol": SYMBOL, "amount": "0.1"})
    await wait_for(lambda: in_sync(agent, exchange), 10, "the position seen")
    return agent


def _events(caplog, name: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if getattr(r, "event", None) == name]


async def test_an_announced_delisting_is_flattened_before_the_exchange_settles_it(make_agent, exchange, caplog):
    agent = await _quoting_long(make_agent, exchange, lead_s=10.0)
    at = (await exchange.post("/sim/delist", {"symbol": SYMBOL, "in_s": 14}))["deliveryDate"]
    await wait_for(lambda: metric(agent, "mm_delisting_timestamp_seconds") == at / 1000, 10, "the announcement seen")
    assert agent.status()["settles_at_ms"] == at   # the console's row shows it
    [announced] = _events(caplog, "delisting_scheduled")
    assert announced.levelno == logging.WARNING and "contractInfo" in announced.getMessage()

    async def flat_before_the_settlement() -> bool:
        st = await exchange.state()
        return st["positions"][SYMBOL]["amount"] == "0.000" and st["open_orders"] == [] and st["time"] < at

    await wait_for(flat_before_the_settlement, 10, "flat, nothing resting, before the settlement time")
    assert agent.status()["state"] in ("flattening", "flattened")
    assert agent.ownership.kill_state() == "flattening"   # durable: a restart does not quote again

    async def closed() -> bool:
        return (await exchange.state())["markets"][SYMBOL]["status"] == "CLOSE"

    await wait_for(closed, 10, "the exchange settled and closed the symbol")
    await wait_for(lambda: agent.status()["state"] == "halted", 10, "halted once the symbol is no longer trading")
    st = await exchange.state()
    assert st["counters"]["settled"] == 0   # nothing of ours left for the exchange to settle
    assert metric(agent, "mm_settled_total") == 0
    await wait_for(lambda: in_sync(agent, exchange), 10, "the agent's book equals the exchange's",
                   explain=lambda: describe(agent, exchange))
    assert [r.levelno for r in _events(caplog, "symbol_not_trading")] == [logging.ERROR]


async def test_a_settlement_that_finds_a_position_is_booked_and_the_closed_symbol_refuses_a_new_agent(
        make_agent, exchange, caplog):
    agent = await _quoting_long(make_agent, exchange, lead_s=0)   # the desk leaves the position to the settlement
    await exchange.post("/sim/delist", {"symbol": SYMBOL, "in_s": 2})

    async def settled() -> bool:
        return (await exchange.state())["counters"]["settled"] == 1

    await wait_for(settled, 10, "the exchange settled the position")
    await wait_for(lambda: metric(agent, "mm_settled_total") == 1, 10, "the settlement booked")
    await wait_for(lambda: agent.status()["state"] == "halted", 10, "halted")
    await wait_for(lambda: in_sync(agent, exchange), 10, "the agent's book equals the exchange's",
                   explain=lambda: describe(agent, exchange))
    st = await exchange.state()
    assert st["positions"][SYMBOL]["amount"] == "0.000" and st["open_orders"] == []
    [event] = _events(caplog, "settled")
    assert event.levelno == logging.ERROR and "settlement_autoclose-" in event.getMessage()
    assert metric(agent, "mm_liquidations_total") == 0
    placed = agent.core.orders_sent["place"]
    await agent.resume()   # an operator's mistake: every order is refused, said once, and the symbol halts again
    await wait_for(lambda: agent.status()["state"] == "halted", 10, "halted again by the first refusal")
    assert agent.core.orders_sent["place"] - placed <= agent.params.grid.max_layers * 2   # one cycle at most
    await agent.stop()
    with pytest.raises(BinanceError) as err:
        await make_agent()
    assert err.value.code == ErrorCode.SYMBOL_NOT_TRADING and "CLOSE" in str(err.value)


async def test_a_delisting_taken_back_before_its_time_is_forgotten(make_agent, exchange, caplog):
    """The exchange moves the deliveryDate back to a perpetual's (a delisting postponed sine die): the
    agent says so, clears the gauge, and quotes on past the lead it would have flattened at."""
    agent = await make_agent(runtime=FAST.model_copy(update={"delisting_exit_lead_sec": 60.0}))
    await wait_for(lambda: resting(agent, exchange), 10, "a ladder resting on both sides")
    at = (await exchange.post("/sim/delist", {"symbol": SYMBOL, "in_s": 120}))["deliveryDate"]
    await wait_for(lambda: metric(agent, "mm_delisting_timestamp_seconds") == at / 1000, 10, "the announcement seen")
    await exchange.post("/sim/delist", {"symbol": SYMBOL, "at_ms": PERPETUAL_DELIVERY_MS})
    await wait_for(lambda: metric(agent, "mm_delisting_timestamp_seconds") == 0, 10, "the announcement taken back")
    [taken_back] = _events(caplog, "delisting_cancelled")
    assert taken_back.levelno == logging.WARNING
    assert agent.contract.settles_at_ms is None and not agent.contract.exiting
    agent.contract.check(at)   # the watchdog at the old settlement time: nothing to do
    assert not _events(caplog, "delisting_exit") and agent.status()["state"] == "quoting"
    await wait_for(lambda: resting(agent, exchange), 10, "still quoting")
