"""The account's margin as the exchange sees it: called and liquidated (short of it: test_agent_margin_short.py).

- A margin call (MARGIN_CALL): said and counted.
- A liquidation: the agent books it as the exchange did, says so, and holds the symbol halted until an
  operator resumes it. The account runs the symbol in isolated margin at 125x (a desk's setting the
  agent does not choose), so a 1 % move against a position the agent holds is a liquidation at the
  simulator's next mark tick, as on Binance: the open orders cancelled by the exchange, an
  ``autoclose-`` order of type LIQUIDATION filled as CALCULATED, the isolated wallet gone.
- An auto-deleveraging (ADL, an ``adl_autoclose`` order, CALCULATED too): booked, said, and quoting
  goes on with the position left; found in forceOrders too when its frame is lost.
"""

from __future__ import annotations

import logging
from decimal import Decimal

from fleet.sim.testkit import SimClient

from .test_agent_live import (  # noqa: F401 - fixtures
    SYMBOL,
    describe,
    exchange,
    in_sync,
    make_agent,
    metric,
    resting,
    wait_for,
)


async def _isolated_at_125x(sim) -> None:
    async with SimClient.for_sim(sim) as c:
        assert (await c.signed("POST", "/fapi/v1/marginType", {"symbol": SYMBOL, "marginType": "ISOLATED"})).status == 200
        assert (await c.signed("POST", "/fapi/v1/leverage", {"symbol": SYMBOL, "leverage": "125"})).status == 200


async def _long_at_125x_isolated(sim, make_agent, exchange):
    """The symbol isolated at 125x, an agent quoting on a held price, and a long of 0.1 it holds (under
    its cap) with the isolated margin of 125x."""
    await _isolated_at_125x(sim)
    agent = await make_agent()
    await exchange.post("/sim/market/freeze", {"frozen": True, "symbol": SYMBOL, "mode": "price"})
    await wait_for(lambda: resting(agent, exchange), 10, "a ladder resting on both sides")
    await exchange.post("/sim/position", {"account": "main", "symbol": SYMBOL, "amount": "0.1"})
    await wait_for(lambda: in_sync(agent, exchange), 10, "the position seen")
    return agent


async def test_a_liquidation_is_booked_as_the_exchange_did_and_halts_the_symbol(sim, make_agent, exchange, caplog):
    agent = await _long_at_125x_isolated(sim, make_agent, exchange)
    wallet = Decimal((await exchange.state())["balances"]["USDC"])
    isolated = Decimal((await exchange.state())["positions"][SYMBOL]["isolated_wallet"])
    assert isolated > 0
    await exchange.post("/sim/market/jump", {"symbol": SYMBOL, "pct": -1.5})

    async def liquidated() -> bool:
        return (await exchange.state())["counters"]["liquidations"] == 1 and agent.status()["state"] == "halted"

    await wait_for(liquidated, 10, "liquidated and halted")
    placed = agent.core.orders_sent["place"]

    async def nothing_rests() -> bool:   # orders sent before the CALCULATED frame may land after the
        return (await exchange.state())["open_orders"] == []   # exchange's cancels: the halt cancels them

    await wait_for(nothing_rests, 10, "nothing resting at the exchange")
    await wait_for(lambda: in_sync(agent, exchange), 10, "the agent's book equals the exchange's",
                   explain=lambda: describe(agent, exchange))
    st = await exchange.state()
    assert metric(agent, "mm_liquidations_total") == 1
    assert agent.status()["halt_reason"] == "liquidated by the exchange"
    events = [r for r in caplog.records if getattr(r, "event", None) == "liquidated"]
    assert [r.levelno for r in events] == [logging.ERROR]
    # what the liquidation cost is the exchange's: the wallet less the ladder's fills meanwhile
    assert Decimal(st["balances"]["USDC"]) < wallet
    liquidation = [o for o in await exchange.all_orders() if o["clientOrderId"].startswith("autoclose-")]
    assert len(liquidation) == 1 and liquidation[0]["type"] == "LIMIT"   # (LIQUIDATION on the user stream only)
    assert agent.core.orders_sent["place"] == placed   # halted: no order left the agent since, until resumed
    # the clearance fee the exchange charged (income INSURANCE_CLEAR; no trade frame carries it) is in the
    # agent's commission and so in its P&L, as the exchange booked the symbol
    truth = st["positions"][SYMBOL]
    assert Decimal(truth["clearance_fee"]) > 0
    paid = Decimal(truth["commission"]) + Decimal(truth["clearance_fee"])
    await wait_for(lambda: abs(Decimal(repr(agent.core.store.commission)) - paid) < Decimal("1e-6"), 10,
                   "the clearance fee booked", explain=lambda: f"{agent.core.store.commission} against {paid}")
    assert abs(Decimal(repr(agent.core.store.realized_pnl)) - Decimal(truth["realized_pnl"])) < Decimal("1e-6")
    [booked] = [r for r in caplog.records if getattr(r, "event", None) == "clearance_fee_booked"]
    assert booked.levelno == logging.WARNING and truth["clearance_fee"].rstrip("0") in booked.getMessage()
    await agent.resume()
    await wait_for(lambda: resting(agent, exchange), 10, "quoting again once resumed")


async def test_a_margin_call_for_the_symbol_is_said_and_counted(sim, make_agent, exchange, caplog):
    """The exchange's MARGIN_CALL (margin ratio at 80 %) reaches the agent before the liquidation: a
    WARNING event ``margin_call``, ``margin_calls`` in its status and ``mm_margin_calls_total``. The
    agent is halted first, so no ladder's fills move the margin between the two moves."""
    await _isolated_at_125x(sim)
    agent = await make_agent()
    await agent.halt("a quiet book for the test")
    await exchange.post("/sim/market/freeze", {"frozen": True, "symbol": SYMBOL, "mode": "price"})
    await exchange.post("/sim/position", {"account": "main", "symbol": SYMBOL, "amount": "0.1"})
    await wait_for(lambda: in_sync(agent, exchange), 10, "the position seen")
    # 125x isolated: the margin is 0.8 % of the notional, the maintenance 0.4 %: a fall of 0.35 % puts
    # the ratio between 80 and 100 %
    await exchange.post("/sim/market/jump", {"symbol": SYMBOL, "pct": -0.35})
    await wait_for(lambda: agent.status()["counters"]["margin_calls"] == 1, 10, "the margin call heard")
    assert metric(agent, "mm_margin_calls_total") == 1
    events = [r for r in caplog.records if getattr(r, "event", None) == "margin_call"]
    assert [r.levelno for r in events] == [logging.WARNING]
    assert (await exchange.state())["counters"]["liquidations"] == 0
    await exchange.post("/sim/market/jump", {"symbol": SYMBOL, "pct": -1.0})

    async def liquidated() -> bool:
        return (await exchange.state())["counters"]["liquidations"] == 1 and agent.core.store.position_steps == 0

    await wait_for(liquidated, 10, "liquidated, the agent's position 0")
    assert metric(agent, "mm_liquidations_total") == 1 and agent.status()["state"] == "halted"



async def test_a_liquidation_whose_frame_was_lost_with_the_stream_is_found_after_the_resync(
        sim, make_agent, exchange, caplog):
    """The user stream is down when the exchange liquidates (its reconnects refused a while): the
    CALCULATED frame never reaches the agent, and the resync's snapshot shows only a position gone.
    The agent reads forceOrders then, finds the liquidation and halts, as if it had seen the frame."""
    agent = await _long_at_125x_isolated(sim, make_agent, exchange)
    await exchange.post("/sim/fault/rest", {"mode": "error", "path": "/fapi/v1/listenKey", "method": "POST", "count": 4})
    assert (await exchange.post("/sim/fault/drop", {"target": "user"}))["dropped"] >= 1
    await exchange.post("/sim/market/jump", {"symbol": SYMBOL, "pct": -1.5})

    async def liquidated() -> bool:
        return (await exchange.state())["counters"]["liquidations"] == 1

    await wait_for(liquidated, 10, "liquidated at the exchange")
    assert agent.status()["counters"]["user_stream_reconnects"] >= 1 and not agent.user.connected
    await wait_for(lambda: agent.status()["state"] == "halted", 20, "halted once the resync read forceOrders")
    await wait_for(lambda: in_sync(agent, exchange), 10, "the agent's book equals the exchange's",
                   explain=lambda: describe(agent, exchange))
    assert agent.status()["halt_reason"] == "liquidated by the exchange"
    assert metric(agent, "mm_liquidations_total") == 1
    [event] = [r for r in caplog.records if getattr(r, "event", None) == "liquidated"]
    assert event.levelno == logging.ERROR and "seen in forceOrders" in event.getMessage()
    truth = (await exchange.state())["positions"][SYMBOL]   # the clearance fee read after the resync too
    paid = Decimal(truth["commission"]) + Decimal(truth["clearance_fee"])
    await wait_for(lambda: abs(Decimal(repr(agent.core.store.commission)) - paid) < Decimal("1e-6"), 10,
                   "the clearance fee booked", explain=lambda: f"{agent.core.store.commission} against {paid}")


async def test_an_auto_deleveraging_is_booked_and_said_and_quoting_goes_on(sim, make_agent, exchange, caplog):
    """The exchange closes part of the position by ADL: the agent books the fill as the exchange did,
    says so as a WARNING (not a liquidation), and quotes on; the same once more while its user stream
    is down, found in forceOrders by the resync (the market's price is held, its takers trade on)."""
    agent = await _long_at_125x_isolated(sim, make_agent, exchange)
    await exchange.post("/sim/adl", {"symbol": SYMBOL, "qty": "0.04"})
    await wait_for(lambda: metric(agent, "mm_deleveraged_total") == 1, 10, "the ADL booked")
    await wait_for(lambda: in_sync(agent, exchange), 10, "the agent's book equals the exchange's",
                   explain=lambda: describe(agent, exchange))
    assert agent.status()["state"] == "quoting"
    await exchange.post("/sim/fault/rest", {"mode": "error", "path": "/fapi/v1/listenKey", "method": "POST", "count": 4})
    assert (await exchange.post("/sim/fault/drop", {"target": "user"}))["dropped"] >= 1
    # a position of 0.05 whatever the takers filled meanwhile (unseen: the stream is down), 0.02 of it ADL'd
    await exchange.post("/sim/position", {"account": "main", "symbol": SYMBOL, "amount": "0.05"})
    await exchange.post("/sim/adl", {"symbol": SYMBOL, "qty": "0.02"})
    await wait_for(lambda: metric(agent, "mm_deleveraged_total") == 2, 20, "the second ADL found after the resync")
    await wait_for(lambda: in_sync(agent, exchange), 10, "the agent's book equals the exchange's",
                   explain=lambda: describe(agent, exchange))
    assert agent.status()["state"] == "quoting" and metric(agent, "mm_liquidations_total") == 0
    events = [r for r in caplog.records if getattr(r, "event", None) == "deleveraged"]
    assert [r.levelno for r in events] == [logging.WARNING] * 2 and "seen in forceOrders" in events[1].getMessage()
    assert not [r for r in caplog.records if getattr(r, "event", None) == "liquidated"]
    await wait_for(lambda: resting(agent, exchange), 10, "quoting on")
