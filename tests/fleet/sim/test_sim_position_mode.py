"""An account another tool left in Hedge Mode (``position_mode: hedge``): what it refuses, and how it is
switched back to one-way mode (``POST /fapi/v1/positionSide/dual``), with Binance's checks."""

from __future__ import annotations

import pytest

from fleet.sim.testkit import SimClient

pytestmark = pytest.mark.asyncio

SYMBOL = "ETHUSDC"


async def test_a_hedge_mode_account_refuses_one_way_orders_and_switches_back_only_when_flat(sim_factory):
    sim = await sim_factory(symbols=[SYMBOL], config={"accounts": [{"name": "main", "position_mode": "hedge"}]})
    async with SimClient.for_sim(sim) as c:
        assert (await c.signed("GET", "/fapi/v1/positionSide/dual")).json == {"dualSidePosition": True}
        assert (await c.signed("GET", "/fapi/v1/accountConfig")).json["dualSidePosition"] is True
        order = {"symbol": SYMBOL, "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "price": "2000",
                 "quantity": "0.010"}
        for extra, code in (({}, -4061), ({"positionSide": "BOTH"}, -4061), ({"positionSide": "LONG"}, -1020),
                            ({"positionSide": "UP"}, -4060)):
            r = await c.signed("POST", "/fapi/v1/order", {**order, **extra})
            assert (r.status, r.json["code"]) == (400, code), extra
        r = await c.signed("POST", "/fapi/v1/algoOrder", {"algoType": "CONDITIONAL", "symbol": SYMBOL, "side": "SELL",
                                                           "type": "STOP_MARKET", "triggerPrice": "1000",
                                                           "quantity": "0.010"})
        assert r.json["code"] == -4061
        assert (await c.state())["counters"]["orders_placed"] == 0
        # back to one-way: refused while a position is held, then done once flat
        await c.admin("POST", "/sim/position", {"account": "main", "symbol": SYMBOL, "amount": "0.010"})
        r = await c.signed("POST", "/fapi/v1/positionSide/dual", {"dualSidePosition": "false"})
        assert r.json["code"] == -4068
        await c.admin("POST", "/sim/position", {"account": "main", "symbol": SYMBOL, "amount": "0"})
        for bad in ("", "yes"):
            r = await c.signed("POST", "/fapi/v1/positionSide/dual", {"dualSidePosition": bad})
            assert r.status == 400 and r.json["code"] in (-1102, -1130)
        r = await c.signed("POST", "/fapi/v1/positionSide/dual", {"dualSidePosition": "true"})
        assert r.json["code"] == -4059   # already
        r = await c.signed("POST", "/fapi/v1/positionSide/dual", {"dualSidePosition": "false"})
        assert (r.status, r.json) == (200, {"code": 200, "msg": "success"})
        assert (await c.signed("GET", "/fapi/v1/positionSide/dual")).json == {"dualSidePosition": False}
        r = await c.signed("POST", "/fapi/v1/order", order)
        assert r.status == 200 and r.json["status"] == "NEW"
        r = await c.signed("POST", "/fapi/v1/positionSide/dual", {"dualSidePosition": "true"})
        assert (r.status, r.json["code"]) == (400, -1020)   # the simulator does not enter Hedge Mode (not -4068:
        assert "not supported" in r.json["msg"]              # that code says a position exists)
        await c.signed("DELETE", "/fapi/v1/allOpenOrders", {"symbol": SYMBOL})
        r = await c.signed("POST", "/fapi/v1/positionSide/dual", {"dualSidePosition": "true"})
        assert (r.status, r.json["code"]) == (400, -1020)   # flat and without orders, still not entered


async def test_the_asset_mode_switch_answers_as_binance_for_the_single_asset_mode_the_simulator_keeps(sim_factory):
    """POST /fapi/v1/multiAssetsMargin was a 405 answered -1000 (Binance's code for an execution status
    unknown): now -4171 to stay in single-asset mode, -1020 for Multi-Assets mode, and Binance's parameter
    errors; the mode reads false throughout."""
    sim = await sim_factory(symbols=[SYMBOL])
    async with SimClient.for_sim(sim) as c:
        r = await c.signed("POST", "/fapi/v1/multiAssetsMargin", {"multiAssetsMargin": "false"})
        assert (r.status, r.json["code"]) == (400, -4171)
        r = await c.signed("POST", "/fapi/v1/multiAssetsMargin", {"multiAssetsMargin": "true"})
        assert (r.status, r.json["code"]) == (400, -1020) and "single-asset" in r.json["msg"]
        for bad, code in (({}, -1102), ({"multiAssetsMargin": "yes"}, -1130)):
            r = await c.signed("POST", "/fapi/v1/multiAssetsMargin", bad)
            assert (r.status, r.json["code"]) == (400, code)
        assert (await c.signed("GET", "/fapi/v1/multiAssetsMargin")).json == {"multiAssetsMargin": False}
