"""Trading semantics over loopback: modify, batches, IOC/FOK, queue position, sweeps, dead-man switch."""

from __future__ import annotations

import json
import time
from decimal import ROUND_HALF_UP, Decimal

import aiohttp
import pytest

from fleet.sim.testkit import SimClient

pytestmark = pytest.mark.asyncio

TWO_ACCOUNTS = {"accounts": [{"name": "main"}, {"name": "other"}]}


async def _book(c: SimClient, symbol: str = "ETHUSDC") -> dict:
    return (await c.public("GET", "/fapi/v1/depth", {"symbol": symbol, "limit": 5})).json


def _px(d: Decimal) -> str:
    return str(d.quantize(Decimal("0.01")))


async def _limit(c: SimClient, side: str, price: str, qty: str = "0.010", **extra) -> dict:
    r = await c.signed("POST", "/fapi/v1/order", {"symbol": "ETHUSDC", "side": side, "type": "LIMIT",
                                                  "timeInForce": extra.pop("tif", "GTC"), "price": price,
                                                  "quantity": qty, **extra})
    return r.json


async def test_modify_requeues_pushes_amendment_and_rejects_no_op(sim):
    async with SimClient.for_sim(sim) as c, aiohttp.ClientSession() as s:
        key = (await c.keyed("POST", "/fapi/v1/listenKey")).json["listenKey"]
        ws = await s.ws_connect(f"{sim.ws_url}/private/ws/{key}")
        await c.admin("POST", "/sim/market/freeze", {"symbol": "ETHUSDC"})
        bid = Decimal((await _book(c))["bids"][0][0])
        o = await _limit(c, "BUY", _px(bid * Decimal("0.99")), newClientOrderId="m-1")
        new_price = _px(bid * Decimal("0.995"))
        r = await c.signed("PUT", "/fapi/v1/order", {"symbol": "ETHUSDC", "orderId": o["orderId"], "side": "BUY",
                                                     "quantity": "0.020", "price": new_price})
        assert r.status == 200, r.json
        assert r.json["price"] == new_price and r.json["origQty"] == "0.020" and r.json["status"] == "NEW"
        frames = []
        while len(frames) < 2:
            f = json.loads((await ws.receive(timeout=10)).data)
            if f["e"] == "ORDER_TRADE_UPDATE":
                frames.append(f["o"])
        assert [f["x"] for f in frames] == ["NEW", "AMENDMENT"]
        assert Decimal(frames[1]["p"]) == Decimal(new_price) and frames[1]["q"] == "0.02" and frames[1]["X"] == "NEW"
        same = await c.signed("PUT", "/fapi/v1/order", {"symbol": "ETHUSDC", "origClientOrderId": "m-1",
                                                        "side": "BUY", "quantity": "0.020", "price": new_price})
        assert same.json["code"] == -5027
        missing = await c.signed("PUT", "/fapi/v1/order", {"symbol": "ETHUSDC", "orderId": o["orderId"],
                                                           "side": "BUY", "quantity": "0.020"})
        assert missing.json["code"] == -1102
        bad_tick = await c.signed("PUT", "/fapi/v1/order", {"symbol": "ETHUSDC", "orderId": o["orderId"],
                                                            "side": "BUY", "quantity": "0.020",
                                                            "price": new_price + "5"})
        assert bad_tick.json["code"] == -1111
        st = await c.state(symbol="ETHUSDC")
        assert st["open_orders"][0]["price"] == new_price  # a rejected modify leaves the order as it was
        assert st["counters"]["orders_amended"] == 1
        await ws.close()


async def test_an_orders_amendments_are_listed_with_before_after_and_count(sim):
    async with SimClient.for_sim(sim) as c:
        await c.admin("POST", "/sim/market/freeze", {"symbol": "ETHUSDC"})
        bid = Decimal((await _book(c))["bids"][0][0])
        prices = [_px(bid * Decimal(f)) for f in ("0.990", "0.992", "0.994")]
        o = await _limit(c, "BUY", prices[0], newClientOrderId="am-1")
        other = await _limit(c, "BUY", prices[0])
        steps = [(prices[1], "0.010"), (prices[1], "0.020"), (prices[2], "0.030")]
        for price, qty in steps:
            r = await c.signed("PUT", "/fapi/v1/order", {"symbol": "ETHUSDC", "orderId": o["orderId"], "side": "BUY",
                                                         "quantity": qty, "price": price})
            assert r.status == 200, r.json
        r = await c.signed("PUT", "/fapi/v1/order", {"symbol": "ETHUSDC", "orderId": o["orderId"], "side": "BUY",
                                                     "quantity": "0.030", "price": prices[2]})
        assert r.json["code"] == -5027  # refused: not an amendment
        got = await c.signed("GET", "/fapi/v1/orderAmendment", {"symbol": "ETHUSDC", "origClientOrderId": "am-1"})
        assert got.status == 200, got.json
        assert [(a["amendment"]["price"]["before"], a["amendment"]["price"]["after"], a["amendment"]["origQty"]["before"],
                 a["amendment"]["origQty"]["after"], a["amendment"]["count"]) for a in got.json] == [
            (prices[0], prices[1], "0.010", "0.010", 1), (prices[1], prices[1], "0.010", "0.020", 2),
            (prices[1], prices[2], "0.020", "0.030", 3)]
        assert {(a["orderId"], a["clientOrderId"], a["symbol"]) for a in got.json} == {(o["orderId"], "am-1", "ETHUSDC")}
        ids = [a["amendmentId"] for a in got.json]
        assert ids == sorted(ids) and len(set(ids)) == 3
        last = await c.signed("GET", "/fapi/v1/orderAmendment", {"symbol": "ETHUSDC", "orderId": o["orderId"],
                                                                 "limit": 1})
        assert [a["amendmentId"] for a in last.json] == ids[-1:]
        since = await c.signed("GET", "/fapi/v1/orderAmendment", {"symbol": "ETHUSDC", "orderId": o["orderId"],
                                                                  "startTime": got.json[-1]["time"] + 1})
        assert since.json == []
        none = await c.signed("GET", "/fapi/v1/orderAmendment", {"symbol": "ETHUSDC", "orderId": other["orderId"]})
        assert none.json == []
        unknown = await c.signed("GET", "/fapi/v1/orderAmendment", {"symbol": "ETHUSDC", "orderId": 999_999_999})
        assert unknown.json["code"] == -2013
        neither = await c.signed("GET", "/fapi/v1/orderAmendment", {"symbol": "ETHUSDC"})
        assert neither.json["code"] == -1102
        too_many = await c.signed("GET", "/fapi/v1/orderAmendment", {"symbol": "ETHUSDC", "orderId": o["orderId"],
                                                                     "limit": 101})
        assert too_many.status == 400
        cfg = await c.signed("GET", "/fapi/v1/accountConfig", {})
        assert cfg.json["dualSidePosition"] is False and cfg.json["multiAssetsMargin"] is False
        assert cfg.json["canTrade"] is True and cfg.json["feeTier"] == 0


async def test_an_amendments_modify_id_comes_back_and_its_reduce_only_only_validates(sim):
    """``modifyId`` (the caller's, not checked for uniqueness) is in the answer, the AMENDMENT frame
    (``M``) and the amendment's history; ``reduceOnly`` on an amendment skips MIN_NOTIONAL for a
    reduce-only order, is refused -5047 for another, and without it MIN_NOTIONAL applies to both."""
    async with SimClient.for_sim(sim) as c, aiohttp.ClientSession() as s:
        key = (await c.keyed("POST", "/fapi/v1/listenKey")).json["listenKey"]
        ws = await s.ws_connect(f"{sim.ws_url}/private/ws/{key}")
        await c.admin("POST", "/sim/market/freeze", {"symbol": "ETHUSDC"})
        book = await _book(c)
        bid, ask = Decimal(book["bids"][0][0]), Decimal(book["asks"][0][0])
        o = await _limit(c, "BUY", _px(bid * Decimal("0.99")), newClientOrderId="mi-1")

        def amend(order: dict, qty: str, price: str, **extra) -> dict:
            return {"symbol": "ETHUSDC", "orderId": order["orderId"], "side": order["side"], "quantity": qty,
                    "price": price, **extra}

        r = await c.signed("PUT", "/fapi/v1/order", amend(o, "0.020", _px(bid * Decimal("0.99")), modifyId=77))
        assert r.status == 200 and r.json["modifyId"] == 77, r.json
        plain = await c.signed("PUT", "/fapi/v1/order", amend(o, "0.030", _px(bid * Decimal("0.99"))))
        assert plain.status == 200 and "modifyId" not in plain.json
        for wrong in ("7x", str(2**63)):   # a LONG, checked before anything else (a no-op amendment too)
            bad = await c.signed("PUT", "/fapi/v1/order", amend(o, "0.030", _px(bid * Decimal("0.99")), modifyId=wrong))
            assert bad.status == 400 and "modifyId" in bad.json["msg"], bad.json
        frames = []
        while len(frames) < 2:
            f = json.loads((await ws.receive(timeout=10)).data)
            if f["e"] == "ORDER_TRADE_UPDATE" and f["o"]["x"] == "AMENDMENT":
                frames.append(f["o"])
        assert frames[0]["M"] == "77" and "M" not in frames[1]
        history = (await c.signed("GET", "/fapi/v1/orderAmendment", {"symbol": "ETHUSDC", "orderId": o["orderId"]})).json
        assert [a["amendment"].get("modifyId") for a in history] == [77, None]

        await c.signed("POST", "/fapi/v1/order", {"symbol": "ETHUSDC", "side": "BUY", "type": "MARKET",
                                                  "quantity": "0.010"})
        ro = await _limit(c, "SELL", _px(ask * Decimal("1.01")), reduceOnly="true")
        assert ro["reduceOnly"] is True, ro
        tiny = await c.signed("PUT", "/fapi/v1/order", amend(ro, "0.001", _px(ask * Decimal("1.01"))))
        assert tiny.json["code"] == -5029                      # MIN_NOTIONAL without reduceOnly
        ok = await c.signed("PUT", "/fapi/v1/order", amend(ro, "0.001", _px(ask * Decimal("1.01")), reduceOnly="true"))
        assert ok.status == 200 and ok.json["origQty"] == "0.001" and ok.json["reduceOnly"] is True, ok.json
        wrong = await c.signed("PUT", "/fapi/v1/order", amend(o, "0.050", _px(bid * Decimal("0.99")), reduceOnly="true"))
        assert wrong.json["code"] == -5047
        held = {x["orderId"]: x for x in (await c.state(symbol="ETHUSDC"))["open_orders"]}
        assert held[o["orderId"]]["origQty"] == "0.030" and held[ro["orderId"]]["origQty"] == "0.001"
        await ws.close()


async def test_modify_of_post_only_that_would_cross_cancels_it(sim):
    async with SimClient.for_sim(sim) as c:
        await c.admin("POST", "/sim/market/freeze", {"symbol": "ETHUSDC"})
        book = await _book(c)
        bid, ask = Decimal(book["bids"][0][0]), Decimal(book["asks"][0][0])
        o = await _limit(c, "BUY", _px(bid * Decimal("0.99")), tif="GTX")
        r = await c.signed("PUT", "/fapi/v1/order", {"symbol": "ETHUSDC", "orderId": o["orderId"], "side": "BUY",
                                                     "quantity": "0.010", "price": _px(ask + Decimal("0.05"))})
        assert r.status == 200 and r.json["status"] == "CANCELED"
        st = await c.state(symbol="ETHUSDC")
        assert st["open_orders"] == [] and st["positions"]["ETHUSDC"]["amount"] == "0.000"


async def test_queue_position_partial_fill_and_modify_below_executed_cancels(sim_factory):
    sim = await sim_factory(config=TWO_ACCOUNTS)
    async with SimClient.for_sim(sim, 0) as maker, SimClient.for_sim(sim, 1) as taker:
        await maker.admin("POST", "/sim/market/freeze", {"symbol": "ETHUSDC"})
        book = await _book(maker)
        ask, ask_qty = Decimal(book["asks"][0][0]), Decimal(book["asks"][0][1])
        bid = Decimal(book["bids"][0][0])
        joined = await _limit(maker, "SELL", str(ask), "0.100")
        improving_price = _px(bid + (ask - bid) / 2) if ask - bid > Decimal("0.01") else None
        st = await maker.state(symbol="ETHUSDC")
        ahead = Decimal(st["open_orders"][0]["queueAhead"])
        assert ahead == ask_qty  # the synthetic size already at the level trades first
        if improving_price:
            improving = await _limit(maker, "SELL", improving_price, "0.010")
            st = await maker.state(symbol="ETHUSDC")
            assert st["open_orders"][1]["queueAhead"] == "0.000"
            await maker.signed("DELETE", "/fapi/v1/order", {"symbol": "ETHUSDC", "orderId": improving["orderId"]})
        # a taker buying everything ahead plus 0.040 fills 0.040 of our order, no more
        qty = ahead + Decimal("0.040")
        r = await taker.signed("POST", "/fapi/v1/order", {"symbol": "ETHUSDC", "side": "BUY", "type": "MARKET",
                                                          "quantity": str(qty), "newOrderRespType": "RESULT"})
        assert r.json["status"] == "FILLED" and Decimal(r.json["avgPrice"]) == ask
        st = await maker.state(symbol="ETHUSDC")
        o = st["open_orders"][0]
        assert (o["status"], o["executedQty"], o["queueAhead"]) == ("PARTIALLY_FILLED", "0.040", "0.000")
        assert st["positions"]["ETHUSDC"]["amount"] == "-0.040"
        fee = (ask * Decimal("0.040") * Decimal("0.0002")).quantize(Decimal("0.00000001"), ROUND_HALF_UP)
        assert Decimal(st["positions"]["ETHUSDC"]["commission"]) == fee  # maker rate
        r = await maker.signed("PUT", "/fapi/v1/order", {"symbol": "ETHUSDC", "orderId": joined["orderId"],
                                                         "side": "SELL", "quantity": "0.040", "price": str(ask)})
        assert r.json["status"] == "CANCELED"


async def test_ioc_expires_remainder_and_fok_rejects_when_book_too_thin(sim):
    async with SimClient.for_sim(sim) as c:
        await c.admin("POST", "/sim/market/freeze", {"symbol": "ETHUSDC"})
        book = await _book(c)
        bid, ask = Decimal(book["bids"][0][0]), Decimal(book["asks"][0][0])
        r = await _limit(c, "BUY", str(bid), tif="IOC", newOrderRespType="RESULT")
        assert r["status"] == "EXPIRED" and r["executedQty"] == "0.000"
        top_qty = Decimal(book["asks"][0][1])
        r = await _limit(c, "BUY", str(ask), qty=str(top_qty + 1), tif="IOC", newOrderRespType="RESULT")
        assert r["status"] == "EXPIRED" and Decimal(r["executedQty"]) == top_qty
        book = await _book(c)
        ask = Decimal(book["asks"][0][0])
        r = await _limit(c, "BUY", str(ask), qty="500.000", tif="FOK")
        assert r["code"] == -5021
        st = await c.state(symbol="ETHUSDC")
        assert Decimal(st["positions"]["ETHUSDC"]["amount"]) == top_qty


async def test_price_jump_sweeps_through_resting_orders(sim):
    async with SimClient.for_sim(sim) as c:
        await c.admin("POST", "/sim/market/freeze", {"symbol": "ETHUSDC"})
        bid = Decimal((await _book(c))["bids"][0][0])
        near = await _limit(c, "BUY", _px(bid * Decimal("0.99")), "0.010")
        far = await _limit(c, "BUY", _px(bid * Decimal("0.96")), "0.010")
        res = await c.admin("POST", "/sim/market/jump", {"symbol": "ETHUSDC", "pct": -2.0})
        assert res["mid"] < float(bid) * 0.985
        st = await c.state(symbol="ETHUSDC")
        assert [o["orderId"] for o in st["open_orders"]] == [far["orderId"]]
        assert st["positions"]["ETHUSDC"]["amount"] == "0.010"
        assert Decimal(st["positions"]["ETHUSDC"]["entry_price"]) == Decimal(near["price"])  # own price, maker
        q = await c.signed("GET", "/fapi/v1/order", {"symbol": "ETHUSDC", "orderId": near["orderId"]})
        assert q.json["status"] == "FILLED"


async def test_batch_orders_place_modify_cancel_with_errors_in_place(sim):
    async with SimClient.for_sim(sim) as c:
        bid = Decimal((await _book(c))["bids"][0][0])
        p1, p2 = _px(bid * Decimal("0.98")), _px(bid * Decimal("0.97"))
        items = [{"symbol": "ETHUSDC", "side": "BUY", "type": "LIMIT", "timeInForce": "GTX", "price": p1,
                  "quantity": "0.010", "newClientOrderId": "b-1"},
                 {"symbol": "ETHUSDC", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "price": p2,
                  "quantity": "0.010", "reduceOnly": "true"},
                 {"symbol": "ETHUSDC", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "price": p2,
                  "quantity": "0.010", "newClientOrderId": "b-3"}]
        r = await c.signed("POST", "/fapi/v1/batchOrders", {"batchOrders": json.dumps(items)})
        assert r.status == 200
        assert r.json[0]["clientOrderId"] == "b-1" and r.json[1] == {"code": -2022, "msg": "ReduceOnly Order is rejected."}
        assert r.json[2]["clientOrderId"] == "b-3"
        assert r.headers["X-MBX-ORDER-COUNT-10S"] == "5"
        too_many = await c.signed("POST", "/fapi/v1/batchOrders", {"batchOrders": json.dumps(items * 2)})
        assert (too_many.status, too_many.json["code"]) == (400, -4082)   # INVALID_BATCH_PLACE_ORDER_SIZE
        mods = [{"symbol": "ETHUSDC", "orderId": r.json[0]["orderId"], "side": "BUY", "quantity": "0.020",
                 "price": p1},
                {"symbol": "ETHUSDC", "orderId": 12345, "side": "BUY", "quantity": "0.020", "price": p1}]
        m = await c.signed("PUT", "/fapi/v1/batchOrders", {"batchOrders": json.dumps(mods)})
        assert m.json[0]["origQty"] == "0.020" and m.json[1]["code"] == -2013
        ids = [r.json[0]["orderId"], r.json[2]["orderId"], 999]
        d = await c.signed("DELETE", "/fapi/v1/batchOrders", {"symbol": "ETHUSDC", "orderIdList": json.dumps(ids)})
        assert [x.get("status") for x in d.json[:2]] == ["CANCELED", "CANCELED"]
        assert d.json[2] == {"code": -2011, "msg": "Unknown order sent."}
        big = await c.signed("DELETE", "/fapi/v1/batchOrders", {"symbol": "ETHUSDC",
                                                               "orderIdList": json.dumps(list(range(11)))})
        assert big.json["code"] == -4032   # EXCEED_MAX_CANCEL_ORDER_SIZE
        o = await _limit(c, "BUY", p2, newClientOrderId="b-4")
        # ids written as strings: "unsupported" (Binance's change log of 2023-06-16), nothing cancelled
        d = await c.signed("DELETE", "/fapi/v1/batchOrders", {"symbol": "ETHUSDC",
                                                             "orderIdList": json.dumps([str(o["orderId"])])})
        assert (d.status, d.json["code"]) == (400, -1130), d.json
        d = await c.signed("DELETE", "/fapi/v1/batchOrders", {"symbol": "ETHUSDC",
                                                             "origClientOrderIdList": json.dumps(["b-4"])})
        assert d.json[0]["orderId"] == o["orderId"]
        assert (await c.state(symbol="ETHUSDC"))["open_orders"] == []


async def test_a_batch_items_null_field_is_not_sent(sim):
    """A client that writes its optional fields as null: Binance reads null as not sent (-1102's words, "not
    sent, was empty/null"), as the WebSocket API's parameters are; the simulator took it as the text "None"
    (two orders with the client id "None", the second refused -4116 as a duplicate)."""
    async with SimClient.for_sim(sim) as c:
        bid = Decimal((await _book(c))["bids"][0][0])
        item = {"symbol": "ETHUSDC", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC",
                "price": _px(bid * Decimal("0.98")), "quantity": "0.010", "newClientOrderId": None,
                "reduceOnly": None, "priceMatch": None, "selfTradePreventionMode": None}
        r = await c.signed("POST", "/fapi/v1/batchOrders", {"batchOrders": json.dumps([item, item])})
        assert r.status == 200 and all("orderId" in x for x in r.json), r.json
        cids = {x["clientOrderId"] for x in r.json}
        assert len(cids) == 2 and "None" not in cids
        assert all(x["reduceOnly"] is False and x["priceMatch"] == "NONE" for x in r.json)
        assert len((await c.state(symbol="ETHUSDC"))["open_orders"]) == 2
        await c.signed("DELETE", "/fapi/v1/allOpenOrders", {"symbol": "ETHUSDC"})


async def test_a_batch_items_decimal_as_a_json_number_is_refused_in_place(sim):
    """Binance reads a batch order's decimals only as strings: ``"price": 2913.24`` is answered in place
    -1102 (an SDK that sent numbers saw it live); the simulator took ``str()`` of it. Nothing is placed
    or amended by such an item; the others of its batch are."""
    async with SimClient.for_sim(sim) as c:
        bid = Decimal((await _book(c))["bids"][0][0])
        px = _px(bid * Decimal("0.98"))
        good = {"symbol": "ETHUSDC", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "price": px,
                "quantity": "0.010"}
        r = await c.signed("POST", "/fapi/v1/batchOrders", {"batchOrders": json.dumps(
            [good, {**good, "price": float(px)}, {**good, "quantity": 1}])})
        assert r.status == 200 and "orderId" in r.json[0]
        assert r.json[1:] == [{"code": -1102, "msg": f"Mandatory parameter '{name}' was not sent, was empty/null, "
                                                     f"or malformed."} for name in ("price", "quantity")]
        oid = r.json[0]["orderId"]
        m = await c.signed("PUT", "/fapi/v1/batchOrders", {"batchOrders": json.dumps(
            [{"symbol": "ETHUSDC", "orderId": oid, "side": "BUY", "quantity": 0.02, "price": px}])})
        assert m.json[0]["code"] == -1102
        [order] = (await c.state(symbol="ETHUSDC"))["open_orders"]
        assert (order["orderId"], Decimal(order["origQty"])) == (oid, Decimal("0.010"))
        await c.signed("DELETE", "/fapi/v1/allOpenOrders", {"symbol": "ETHUSDC"})


async def test_cancel_all_open_orders(sim):
    async with SimClient.for_sim(sim) as c:
        bid = Decimal((await _book(c))["bids"][0][0])
        for i in range(3):
            await _limit(c, "BUY", _px(bid * Decimal("0.98") - i))
        r = await c.signed("DELETE", "/fapi/v1/allOpenOrders", {"symbol": "ETHUSDC"})
        assert r.json == {"code": 200, "msg": "The operation of cancel all open order is done."}
        assert (await c.signed("GET", "/fapi/v1/openOrders")).json == []


async def test_countdown_cancel_all_fires_after_expiry_and_zero_disarms(sim):
    async with SimClient.for_sim(sim) as c, aiohttp.ClientSession() as s:
        key = (await c.keyed("POST", "/fapi/v1/listenKey")).json["listenKey"]
        ws = await s.ws_connect(f"{sim.ws_url}/private/ws/{key}")
        eth_bid = Decimal((await _book(c))["bids"][0][0])
        sol_bid = Decimal((await _book(c, "SOLUSDT"))["bids"][0][0])
        await _limit(c, "BUY", _px(eth_bid * Decimal("0.98")))
        sol = await c.signed("POST", "/fapi/v1/order", {"symbol": "SOLUSDT", "side": "BUY", "type": "LIMIT",
                                                        "timeInForce": "GTC", "price": _px(sol_bid * Decimal("0.98")),
                                                        "quantity": "1.00"})
        assert sol.status == 200
        armed = await c.signed("POST", "/fapi/v1/countdownCancelAll", {"symbol": "SOLUSDT", "countdownTime": 300})
        assert armed.json == {"symbol": "SOLUSDT", "countdownTime": "300"}
        await c.signed("POST", "/fapi/v1/countdownCancelAll", {"symbol": "SOLUSDT", "countdownTime": 0})
        t0 = int(time.time() * 1000)
        r = await c.signed("POST", "/fapi/v1/countdownCancelAll", {"symbol": "ETHUSDC", "countdownTime": 600})
        assert r.status == 200
        st = await c.state(symbol="ETHUSDC")
        deadline = st["positions"]["ETHUSDC"]["countdown_deadline_ms"]
        assert t0 - 50 <= deadline - 600 <= int(time.time() * 1000)
        st = await c.wait_state(lambda st: st["counters"]["countdown_fired"] == 1, timeout=10)
        cancel = None
        while cancel is None:
            f = json.loads((await ws.receive(timeout=10)).data)
            if f["e"] == "ORDER_TRADE_UPDATE" and f["o"]["x"] == "CANCELED":
                cancel = f
        assert cancel["o"]["s"] == "ETHUSDC" and cancel["E"] >= deadline
        sol_open = (await c.state(symbol="SOLUSDT"))["open_orders"]
        assert len(sol_open) == 1  # disarmed with 0: still resting
        await ws.close()


async def test_max_open_orders_and_reduce_only_capping(sim_factory):
    sim = await sim_factory(config={"symbols": [{"symbol": "ETHUSDC", "base_asset": "ETH", "quote_asset": "USDC",
                                                 "start_price": 3000, "max_num_orders": 3}]}, symbols=["ETHUSDC"])
    async with SimClient.for_sim(sim) as c:
        bid = Decimal((await _book(c))["bids"][0][0])
        for i in range(3):
            assert "orderId" in await _limit(c, "BUY", _px(bid * Decimal("0.98") - i))
        assert (await _limit(c, "BUY", _px(bid * Decimal("0.97"))))["code"] == -2025


async def test_reduce_only_never_flips_and_expires_when_nothing_is_left(sim):
    async with SimClient.for_sim(sim) as c:
        await c.admin("POST", "/sim/market/freeze", {"symbol": "ETHUSDC"})
        await c.admin("POST", "/sim/position", {"account": "main", "symbol": "ETHUSDC", "amount": "0.010"})
        ask = Decimal((await _book(c))["asks"][0][0])
        resting = await _limit(c, "SELL", _px(ask * Decimal("1.02")), "0.010", reduceOnly="true")
        assert resting["status"] == "NEW"
        r = await c.signed("POST", "/fapi/v1/order", {"symbol": "ETHUSDC", "side": "SELL", "type": "MARKET",
                                                      "quantity": "0.050", "reduceOnly": "true",
                                                      "newOrderRespType": "RESULT"})
        assert (r.json["status"], r.json["executedQty"]) == ("EXPIRED", "0.010")
        st = await c.state(symbol="ETHUSDC")
        assert st["positions"]["ETHUSDC"]["amount"] == "0.000"
        assert st["open_orders"] == []  # the resting reduce-only order had nothing left to reduce
        q = await c.signed("GET", "/fapi/v1/order", {"symbol": "ETHUSDC", "orderId": resting["orderId"]})
        assert q.json["status"] == "EXPIRED"


async def test_quantity_off_the_step_within_precision_is_4023(sim_factory):
    sim = await sim_factory(symbols=["XRPUSDT"], config={"symbols": [
        {"symbol": "XRPUSDT", "base_asset": "XRP", "quote_asset": "USDT", "tick_size": "0.0001", "step_size": "0.5",
         "quantity_precision": 1, "start_price": 0.6}]})
    async with SimClient.for_sim(sim) as c:
        bid = Decimal((await _book(c, "XRPUSDT"))["bids"][0][0])
        params = {"symbol": "XRPUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC",
                  "price": str((bid * Decimal("0.99")).quantize(Decimal("0.0001")))}
        r = await c.signed("POST", "/fapi/v1/order", {**params, "quantity": "20.2"})
        assert r.json["code"] == -4023
        r = await c.signed("POST", "/fapi/v1/order", {**params, "quantity": "20.25"})
        assert r.json["code"] == -1111
        r = await c.signed("POST", "/fapi/v1/order", {**params, "quantity": "20.5"})
        assert r.json["status"] == "NEW"


async def test_quantity_under_the_minimum_is_4004_and_zero_is_4003(sim_factory):
    sim = await sim_factory(symbols=["XRPUSDT"], config={"symbols": [
        {"symbol": "XRPUSDT", "base_asset": "XRP", "quote_asset": "USDT", "tick_size": "0.0001", "step_size": "0.5",
         "min_qty": "10", "quantity_precision": 1, "start_price": 0.6}]})
    async with SimClient.for_sim(sim) as c:
        bid = Decimal((await _book(c, "XRPUSDT"))["bids"][0][0])
        params = {"symbol": "XRPUSDT", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC",
                  "price": str((bid * Decimal("0.99")).quantize(Decimal("0.0001")))}
        for qty, code in (("9.5", -4004), ("0", -4003)):
            r = await c.signed("POST", "/fapi/v1/order", {**params, "quantity": qty})
            assert r.json["code"] == code, (qty, r.json)
        r = await c.signed("POST", "/fapi/v1/order", {**params, "quantity": "10"})
        assert r.json["status"] == "NEW"


async def test_self_trade_prevention_expires_the_resting_order(sim):
    async with SimClient.for_sim(sim) as c:
        await c.admin("POST", "/sim/market/freeze", {"symbol": "ETHUSDC"})
        ask, queued = ((Decimal(x) for x in (await _book(c))["asks"][0]))
        own = await _limit(c, "SELL", str(ask), "0.010")
        qty = queued + Decimal("0.100")   # through the others' size queued ahead of our order, onto it
        r = await c.signed("POST", "/fapi/v1/order", {"symbol": "ETHUSDC", "side": "BUY", "type": "MARKET",
                                                      "quantity": str(qty), "newOrderRespType": "RESULT"})
        assert r.json["status"] == "FILLED"
        q = await c.signed("GET", "/fapi/v1/order", {"symbol": "ETHUSDC", "orderId": own["orderId"]})
        assert (q.json["status"], q.json["executedQty"]) == ("EXPIRED_IN_MATCH", "0.000")   # expired by STP
        st = await c.state(symbol="ETHUSDC")
        assert Decimal(st["positions"]["ETHUSDC"]["amount"]) == qty  # all bought from others, none from itself


async def test_the_default_mode_may_be_none_as_binances_docs_say_and_then_an_order_trades_with_its_own(sim_factory):
    """Binance's frames show EXPIRE_MAKER for an order sent without selfTradePreventionMode, its New Order
    and Place Multiple Orders pages say NONE: ``default_stp`` offers the other reading, under which a
    taker trades with the account's own resting order (a fill each side, both fees paid)."""
    sim = await sim_factory(config={"default_stp": "NONE"})
    async with SimClient.for_sim(sim) as c:
        await c.admin("POST", "/sim/market/freeze", {"symbol": "ETHUSDC"})
        ask, queued = ((Decimal(x) for x in (await _book(c))["asks"][0]))
        own = await _limit(c, "SELL", str(ask), "0.010")
        assert own["selfTradePreventionMode"] == "NONE", own
        qty = queued + Decimal("0.100")   # through the others' size queued ahead of our order, onto it
        r = await c.signed("POST", "/fapi/v1/order", {"symbol": "ETHUSDC", "side": "BUY", "type": "MARKET",
                                                      "quantity": str(qty), "newOrderRespType": "RESULT"})
        assert (r.json["status"], r.json["selfTradePreventionMode"]) == ("FILLED", "NONE"), r.json
        q = await c.signed("GET", "/fapi/v1/order", {"symbol": "ETHUSDC", "orderId": own["orderId"]})
        assert (q.json["status"], q.json["executedQty"]) == ("FILLED", "0.010")   # sold to itself
        st = await c.state(symbol="ETHUSDC")
        assert Decimal(st["positions"]["ETHUSDC"]["amount"]) == qty - Decimal("0.010")
        trades = (await c.signed("GET", "/fapi/v1/userTrades", {"symbol": "ETHUSDC"})).json
        mine = [t for t in trades if t["orderId"] == own["orderId"]]
        assert len(mine) == 1 and mine[0]["maker"] is True and Decimal(mine[0]["commission"]) > 0, mine


async def test_the_size_queued_ahead_trades_before_the_order_behind_it(sim):
    """Price-time order on the tape and in the frames: a taker through the others' size queued ahead of
    the account's order and onto it fills against that size first (the lower trade id), then meets the
    order: a fill (self-trade prevention NONE) or, under EXPIRE_MAKER, the maker's EXPIRED_IN_MATCH
    frame after the taker's fill against the size ahead."""
    async with SimClient.for_sim(sim) as c, aiohttp.ClientSession() as s:
        key = (await c.keyed("POST", "/fapi/v1/listenKey")).json["listenKey"]
        ws = await s.ws_connect(f"{sim.ws_url}/private/ws/{key}")
        await c.admin("POST", "/sim/market/freeze", {"symbol": "ETHUSDC"})
        for mode in ("NONE", "EXPIRE_MAKER"):
            ask, queued = ((Decimal(x) for x in (await _book(c))["asks"][0]))
            own = await _limit(c, "SELL", str(ask), "0.010")
            r = await c.signed("POST", "/fapi/v1/order", {
                "symbol": "ETHUSDC", "side": "BUY", "type": "LIMIT", "timeInForce": "IOC", "price": str(ask),
                "quantity": str(queued + Decimal("0.010")), "selfTradePreventionMode": mode})
            taker = r.json["orderId"]
            frames: list[dict] = []   # this round's: the maker's NEW, the taker's NEW, the match, the taker's end
            while not frames or frames[-1]["i"] != taker or frames[-1]["X"] not in ("FILLED", "EXPIRED"):
                f = json.loads((await ws.receive(timeout=10)).data)
                if f["e"] == "ORDER_TRADE_UPDATE":
                    frames.append(f["o"])
            matched = [(f["i"], f["x"], f["l"], f.get("t")) for f in frames if f["x"] in ("TRADE", "EXPIRED")]
            if mode == "NONE":
                book, maker, mine = matched[0], matched[1], matched[2]
                assert (book[0], Decimal(book[2])) == (taker, queued), matched
                assert (maker[0], mine[0], Decimal(mine[2])) == (own["orderId"], taker, Decimal("0.010")), matched
                assert book[3] < maker[3] == mine[3], matched   # the size ahead traded first
            else:
                assert [(i, x) for i, x, _, _ in matched] == [
                    (taker, "TRADE"), (own["orderId"], "EXPIRED"), (taker, "EXPIRED")], matched
                assert Decimal(matched[0][2]) == queued, matched


async def test_a_taker_that_stops_short_of_its_own_resting_order_never_meets_it(sim):
    """Self-trade prevention acts only on a match: a taker filled by the others' size queued ahead of
    the account's own order at that price leaves it resting, whatever its mode (EXPIRE_TAKER no
    longer kills a taker that would have filled)."""
    async with SimClient.for_sim(sim) as c:
        await c.admin("POST", "/sim/market/freeze", {"symbol": "ETHUSDC"})
        ask, queued = ((Decimal(x) for x in (await _book(c))["asks"][0]))
        assert queued > Decimal("0.030")
        own = await _limit(c, "SELL", str(ask), "0.010")
        for mode in ("EXPIRE_MAKER", "EXPIRE_TAKER", "EXPIRE_BOTH"):
            r = await c.signed("POST", "/fapi/v1/order", {
                "symbol": "ETHUSDC", "side": "BUY", "type": "LIMIT", "timeInForce": "IOC", "price": str(ask),
                "quantity": "0.010", "newOrderRespType": "RESULT", "selfTradePreventionMode": mode})
            assert (r.json["status"], r.json["executedQty"]) == ("FILLED", "0.010"), (mode, r.json)
            q = await c.signed("GET", "/fapi/v1/order", {"symbol": "ETHUSDC", "orderId": own["orderId"]})
            assert (q.json["status"], q.json["executedQty"]) == ("NEW", "0.000"), (mode, q.json)


async def test_self_trade_prevention_follows_the_takers_mode(sim):
    """The taker's ``selfTradePreventionMode`` decides: EXPIRE_TAKER expires the taker's remainder and
    leaves its own maker resting, EXPIRE_BOTH expires both, NONE trades with itself; the mode is echoed
    (REST and ``V``); an unknown one is -5039."""
    async with SimClient.for_sim(sim) as c:
        await c.admin("POST", "/sim/market/freeze", {"symbol": "ETHUSDC"})
        ask = Decimal((await _book(c))["asks"][0][0])
        bad = await c.signed("POST", "/fapi/v1/order", {"symbol": "ETHUSDC", "side": "BUY", "type": "MARKET",
                                                        "quantity": "0.010", "selfTradePreventionMode": "BOGUS"})
        assert bad.json == {"code": -5039, "msg": "Invalid self trade prevention mode."}
        for mode, maker_after, taker_status in (("EXPIRE_TAKER", "NEW", "EXPIRED_IN_MATCH"),
                                                ("EXPIRE_BOTH", "EXPIRED_IN_MATCH", "EXPIRED_IN_MATCH"),
                                                ("NONE", "FILLED", "FILLED")):
            own = await _limit(c, "SELL", str(ask), "0.010")
            before = Decimal((await c.state(symbol="ETHUSDC"))["positions"]["ETHUSDC"]["amount"])
            r = await c.signed("POST", "/fapi/v1/order", {
                "symbol": "ETHUSDC", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "price": str(ask),
                "quantity": "100.000", "newOrderRespType": "RESULT", "selfTradePreventionMode": mode})
            assert r.status == 200 and r.json["selfTradePreventionMode"] == mode, r.json
            assert r.json["status"] == taker_status if mode != "NONE" else r.json["status"] in ("NEW", "PARTIALLY_FILLED")
            maker = (await c.signed("GET", "/fapi/v1/order", {"symbol": "ETHUSDC", "orderId": own["orderId"]})).json
            assert maker["status"] == maker_after and maker["selfTradePreventionMode"] == "EXPIRE_MAKER", (mode, maker)
            truth = await c.state(symbol="ETHUSDC")
            bought = Decimal(truth["positions"]["ETHUSDC"]["amount"]) - before
            # the others' volume queued ahead of our maker at the touch was taken either way; NONE also
            # bought our own 0.010 (the position nets it: the maker sold what the taker bought)
            assert bought == Decimal(r.json["executedQty"]) - (Decimal("0.010") if mode == "NONE" else 0), (mode, r.json)
            await c.signed("DELETE", "/fapi/v1/allOpenOrders", {"symbol": "ETHUSDC"})


FOK_REJECT = {"code": -5021,
              "msg": "Due to the order could not be filled immediately, the FOK order has been rejected."}


async def test_a_fok_order_trades_with_its_own_account_whatever_its_stp_mode(sim):
    """Binance: self-trade prevention takes effect only for GTC, IOC and GTD orders, never for FOK. A FOK
    that needs the account's own order at the touch fills whole against it under every mode, filling
    that order (a self-trade, not an expiry), and the position nets the two out."""
    async with SimClient.for_sim(sim) as c, aiohttp.ClientSession() as s:
        key = (await c.keyed("POST", "/fapi/v1/listenKey")).json["listenKey"]
        ws = await s.ws_connect(f"{sim.ws_url}/private/ws/{key}")
        await c.admin("POST", "/sim/market/freeze", {"symbol": "ETHUSDC"})
        bought = Decimal(0)
        for mode in ("EXPIRE_MAKER", "EXPIRE_TAKER", "EXPIRE_BOTH", "NONE"):
            ask, queued = (Decimal(x) for x in (await _book(c))["asks"][0])
            own = await _limit(c, "SELL", str(ask), "0.010", newClientOrderId=f"own-{mode}")
            whole = str(queued + Decimal("0.010"))   # what the depth shows at the touch: the others' and its own
            r = await _limit(c, "BUY", str(ask), whole, tif="FOK", selfTradePreventionMode=mode,
                             newOrderRespType="RESULT", newClientOrderId=f"fok-{mode}")
            assert (r["status"], r["executedQty"]) == ("FILLED", whole), (mode, r)
            bought += queued
            st = await c.state(symbol="ETHUSDC")
            assert Decimal(st["positions"]["ETHUSDC"]["amount"]) == bought, mode   # its own 0.010 nets out
            q = (await c.signed("GET", "/fapi/v1/order", {"symbol": "ETHUSDC", "orderId": own["orderId"]})).json
            assert (q["status"], q["executedQty"]) == ("FILLED", "0.010"), (mode, q)
        frames = []
        while not frames or frames[-1] != ("fok-NONE", "TRADE", "FILLED"):
            f = json.loads((await ws.receive(timeout=10)).data)
            if f["e"] == "ORDER_TRADE_UPDATE":
                frames.append((f["o"]["c"], f["o"]["x"], f["o"]["X"]))
        assert not [f for f in frames if f[1] == "EXPIRED"], frames   # nothing expired by STP
        await ws.close()


async def test_fok_counts_a_reduce_only_maker_only_as_far_as_it_reduces(sim_factory):
    """A reduce-only order resting on the book fills only what reduces its position: a FOK order that
    needs more of it is refused -5021, and nothing trades; a FOK within what it can fill fills whole. A
    reduce-only FOK larger than its own position cannot fill whole: -5021 too, the position kept."""
    sim = await sim_factory(config=TWO_ACCOUNTS)
    async with SimClient.for_sim(sim, 0) as maker, SimClient.for_sim(sim, 1) as taker:
        await maker.admin("POST", "/sim/market/freeze", {"symbol": "ETHUSDC"})
        await maker.admin("POST", "/sim/position", {"account": "main", "symbol": "ETHUSDC", "amount": "-0.005"})
        bid, queued = (Decimal(x) for x in (await _book(maker))["bids"][0])
        ro = await _limit(maker, "BUY", str(bid), "0.010", reduceOnly="true")
        assert ro["status"] == "NEW", ro
        r = await _limit(taker, "SELL", str(bid), str(queued + Decimal("0.010")), tif="FOK")
        assert r == FOK_REJECT, r
        st = await taker.state("other", symbol="ETHUSDC")
        assert st["positions"]["ETHUSDC"]["amount"] == "0.000" and st["counters"]["trades"] == 0
        st = await maker.state(symbol="ETHUSDC")
        assert [(o["status"], o["executedQty"]) for o in st["open_orders"]] == [("NEW", "0.000")]
        assert st["positions"]["ETHUSDC"]["amount"] == "-0.005"
        r = await _limit(taker, "SELL", str(bid), str(queued + Decimal("0.005")), tif="FOK", newOrderRespType="RESULT")
        assert (r["status"], Decimal(r["executedQty"])) == ("FILLED", queued + Decimal("0.005")), r
        st = await maker.state(symbol="ETHUSDC")
        assert st["positions"]["ETHUSDC"]["amount"] == "0.000" and st["open_orders"] == []
        await maker.admin("POST", "/sim/position", {"account": "other", "symbol": "ETHUSDC", "amount": "0.010"})
        r = await _limit(taker, "SELL", str(bid), "0.020", tif="FOK", reduceOnly="true")
        assert r == FOK_REJECT, r
        st = await taker.state("other", symbol="ETHUSDC")
        assert st["positions"]["ETHUSDC"]["amount"] == "0.010"


async def test_filters_the_exchange_changes_are_listed_met_by_new_orders_and_leave_what_rests(sim):
    """``/sim/filters``: a raised MIN_NOTIONAL and new LOT_SIZE limits, as Binance announces them; an order
    below the minimum notional is refused -4164, an amendment -5029; quantities
    outside minQty / maxQty -4004 / -4005; the order resting from before stays as it was."""
    async with SimClient.for_sim(sim) as c:
        await c.admin("POST", "/sim/market/freeze", {"symbol": "ETHUSDC"})
        bid = Decimal((await _book(c))["bids"][0][0])
        price = _px(bid * Decimal("0.99"))
        before = await _limit(c, "BUY", price, qty="0.010")
        small = Decimal(price) * Decimal("0.010")
        r = await c.admin("POST", "/sim/filters", {"symbol": "ETHUSDC", "min_notional": str(small * 3),
                                                    "min_qty": "0.002", "max_qty": "50"})
        assert r["min_notional"] == f"{small * 3:f}" and r["max_qty"] == "50"
        listed = next(s for s in (await c.public("GET", "/fapi/v1/exchangeInfo")).json["symbols"]
                      if s["symbol"] == "ETHUSDC")
        filters = {f["filterType"]: f for f in listed["filters"]}
        assert filters["MIN_NOTIONAL"]["notional"] == f"{small * 3:f}"
        assert (filters["LOT_SIZE"]["minQty"], filters["LOT_SIZE"]["maxQty"]) == ("0.002", "50")
        # MARKET_LOT_SIZE follows: LOT_SIZE's minimum (the spec sets none of its own), no more than its maximum
        assert (filters["MARKET_LOT_SIZE"]["minQty"], filters["MARKET_LOT_SIZE"]["maxQty"]) == ("0.002", "50")
        market = {"symbol": "ETHUSDC", "side": "BUY", "type": "MARKET"}
        assert (await c.signed("POST", "/fapi/v1/order", {**market, "quantity": "0.001"})).json["code"] == -4004
        assert (await c.signed("POST", "/fapi/v1/order", {**market, "quantity": "51"})).json["code"] == -4005
        assert (await _limit(c, "BUY", price, qty="0.010"))["code"] == -4164
        assert (await _limit(c, "BUY", price, qty="0.001"))["code"] == -4004
        assert (await _limit(c, "BUY", price, qty="50.001"))["code"] == -4005
        amend = await c.signed("PUT", "/fapi/v1/order", {"symbol": "ETHUSDC", "orderId": before["orderId"],
                                                         "side": "BUY", "quantity": "0.011", "price": price})
        assert amend.json["code"] == -5029
        assert (await _limit(c, "BUY", price, qty="0.040"))["status"] == "NEW"
        resting = {o["orderId"]: o for o in (await c.state(symbol="ETHUSDC"))["open_orders"]}
        assert resting[before["orderId"]]["origQty"] == "0.010"   # what rests from before stays
        for bad, named in (({"symbol": "ETHUSDC"}, "at least one"), ({"symbol": "ETHUSDC", "min_qty": "0.0015"}, "step"),
                           ({"symbol": "ETHUSDC", "min_qty": "2", "max_qty": "1"}, "above max_qty")):
            async with c.session.post(c.rest_url + "/sim/filters", json=bad) as refused:
                assert refused.status == 400 and named in (await refused.json())["error"]


async def test_the_largest_market_order_the_exchange_lowers_is_listed_and_met(sim):
    """``/sim/filters`` ``market_max_qty``: MARKET_LOT_SIZE's maxQty alone lowered (Binance announces new
    largest MARKET orders per symbol); a MARKET order above it is refused -4005, a LIMIT order of that size
    still goes (LOT_SIZE's maxQty is unchanged); a maximum off the market step or under its minimum is a
    400 naming it, and nothing changes."""
    async with SimClient.for_sim(sim) as c:
        r = await c.admin("POST", "/sim/filters", {"symbol": "ETHUSDC", "market_max_qty": "0.5"})
        assert r["market_max_qty"] == "0.5" and Decimal(r["max_qty"]) > 1
        listed = next(s for s in (await c.public("GET", "/fapi/v1/exchangeInfo")).json["symbols"]
                      if s["symbol"] == "ETHUSDC")
        filters = {f["filterType"]: f for f in listed["filters"]}
        assert filters["MARKET_LOT_SIZE"]["maxQty"] == "0.5" and filters["LOT_SIZE"]["maxQty"] == r["max_qty"]
        market = {"symbol": "ETHUSDC", "side": "BUY", "type": "MARKET"}
        assert (await c.signed("POST", "/fapi/v1/order", {**market, "quantity": "0.6"})).json["code"] == -4005
        bid = Decimal((await _book(c))["bids"][0][0])
        assert (await _limit(c, "BUY", _px(bid * Decimal("0.99")), qty="0.600"))["status"] == "NEW"
        assert (await c.signed("POST", "/fapi/v1/order", {**market, "quantity": "0.5"})).json["status"] == "NEW"
        for bad, named in (({"symbol": "ETHUSDC", "market_max_qty": "0.0005"}, "market_max_qty"),
                           ({"symbol": "ETHUSDC", "market_max_qty": "0"}, "market_max_qty"),
                           ({"symbol": "ETHUSDC", "min_qty": "0.05", "market_max_qty": "0.02"}, "below the market minQty")):
            async with c.session.post(c.rest_url + "/sim/filters", json=bad) as refused:
                assert refused.status == 400 and named in (await refused.json())["error"]
        r = await c.admin("POST", "/sim/filters", {"symbol": "ETHUSDC", "min_notional": "5"})
        assert r["market_max_qty"] == "0.5"   # another field changed: the market maximum set stays
