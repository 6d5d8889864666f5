"""Binance's ambiguous and hostile answers over loopback: what the client receives for each injected
fault, and what really executed at the exchange (/sim/state) before and after.

Also the start-up endpoints a third-party engine calls (symbolConfig, openAlgoOrders), -5026 after
too many modifies, MARKET_LOT_SIZE enforcement and the real cross FUNDING_FEE frame without a.S.
"""

from __future__ import annotations

import asyncio
import json
import time
from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from fleet.sim.config import SimConfigError, load_sim_config
from fleet.sim.testkit import SimClient

pytestmark = pytest.mark.asyncio

ORDER, BATCH = "/fapi/v1/order", "/fapi/v1/batchOrders"

# answer name -> (HTTP status the client receives, the body: a dict for JSON, a str inside an HTML page)
ANSWERS: dict[str, tuple[int, Any]] = {
    "503": (503, {"code": -1000, "msg": "Unknown error, please check your request or try again later."}),
    "500": (500, {"code": -1000, "msg": "An unknown error occurred while processing the request."}),
    "502": (502, "502 Bad Gateway"),
    "504": (504, "504 Gateway Time-out"),
    "-1006": (503, {"code": -1006, "msg": "An unexpected response was received from the message bus. "
                                          "Execution status unknown."}),
    "-1007": (408, {"code": -1007, "msg": "Timeout waiting for response from backend server. Send status "
                                          "unknown; execution status unknown."}),
}


async def _far_buy(c: SimClient, cid: str, symbol: str = "ETHUSDC", qty: str = "0.010") -> dict[str, str]:
    """A LIMIT GTC buy 2% under the touch: it rests, so its presence at the exchange is easy to see."""
    bid = Decimal((await c.public("GET", "/fapi/v1/ticker/bookTicker", {"symbol": symbol})).json["bidPrice"])
    return {"symbol": symbol, "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": qty,
            "price": str((bid * Decimal("0.98")).quantize(Decimal("0.01"))), "newClientOrderId": cid}


def _cids(st: dict[str, Any]) -> list[str]:
    return [o["clientOrderId"] for o in st["open_orders"]]


def _assert_answer(r: Any, answer: str) -> None:
    status, body = ANSWERS[answer]
    assert r.status == status, (r.status, r.json)
    if isinstance(body, dict):
        assert r.json == body
        assert "X-MBX-USED-WEIGHT-1M" in r.headers  # on every answer of Binance's own, charged or not
    else:  # a gateway's page: not JSON, no Binance headers
        assert isinstance(r.json, str) and body in r.json and r.headers["Content-Type"].startswith("text/html")
        assert "X-MBX-USED-WEIGHT-1M" not in r.headers


@pytest.mark.parametrize("answer", list(ANSWERS))
async def test_late_answers_at_once_then_executes_after_the_delay(sim, answer):
    async with SimClient.for_sim(sim) as c:
        await c.admin("POST", "/sim/fault/rest", {"mode": "late", "answer": answer, "delay_ms": 2000,
                                                  "path": ORDER, "method": "POST"})
        params = await _far_buy(c, "late-1")
        t0 = time.monotonic()
        r = await c.signed("POST", ORDER, params)
        _assert_answer(r, answer)
        st = await c.state(symbol="ETHUSDC")
        assert time.monotonic() - t0 < 2.0  # still before the engine runs it (2 s: a loaded box's stalls)
        assert _cids(st) == []  # absent at answer time
        assert [d["newClientOrderId"] for d in st["deferred"]] == ["late-1"]
        assert st["faults_pending"] == []
        st = await c.wait_state(lambda s: _cids(s) == ["late-1"], symbol="ETHUSDC")  # present after it
        assert time.monotonic() - t0 >= 1.95
        assert st["deferred"] == [] and st["server"]["late_executed"] == 1


async def test_late_timeout_holds_then_disconnects_and_the_order_appears_later(sim):
    async with SimClient.for_sim(sim) as c:
        await c.admin("POST", "/sim/fault/rest", {"mode": "late", "answer": "timeout", "hold_ms": 200,
                                                  "delay_ms": 2000, "path": ORDER})
        params = await _far_buy(c, "late-to")
        t0 = time.monotonic()
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await c.signed("POST", ORDER, params)
        assert 0.19 <= time.monotonic() - t0 < 2.0
        assert _cids(await c.state(symbol="ETHUSDC")) == []
        await c.wait_state(lambda s: _cids(s) == ["late-to"], symbol="ETHUSDC")
        # a client whose own read timeout is shorter than the hold: it gives up, the order still lands
        await c.admin("POST", "/sim/fault/rest", {"mode": "late", "answer": "timeout", "hold_ms": 3000,
                                                  "delay_ms": 300, "path": ORDER})
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(c.signed("POST", ORDER, await _far_buy(c, "late-to2")), 0.2)
        await c.wait_state(lambda s: _cids(s) == ["late-to", "late-to2"], symbol="ETHUSDC")


async def test_late_past_the_recv_window_never_executes(sim):
    async with SimClient.for_sim(sim) as c:
        await c.admin("POST", "/sim/fault/rest", {"mode": "late", "answer": "-1007", "delay_ms": 600,
                                                  "path": ORDER})
        r = await c.signed("POST", ORDER, {**await _far_buy(c, "late-old"), "recvWindow": 300})
        assert (r.status, r.json["code"]) == (408, -1007)
        st = await c.wait_state(lambda s: s["server"]["late_expired"] == 1, symbol="ETHUSDC")
        assert _cids(st) == [] and st["deferred"] == [] and st["server"]["late_executed"] == 0
        assert st["counters"]["orders_placed"] == 0


async def test_late_cancel_and_late_batch(sim):
    async with SimClient.for_sim(sim) as c:
        params = await _far_buy(c, "keep-1")
        assert (await c.signed("POST", ORDER, params)).status == 200
        await c.admin("POST", "/sim/fault/rest", {"mode": "late", "answer": "503", "delay_ms": 2000,
                                                  "method": "DELETE"})
        r = await c.signed("DELETE", ORDER, {"symbol": "ETHUSDC", "origClientOrderId": "keep-1"})
        assert r.status == 503 and r.json["code"] == -1000
        assert _cids(await c.state(symbol="ETHUSDC")) == ["keep-1"]  # not cancelled yet
        await c.wait_state(lambda s: _cids(s) == [], symbol="ETHUSDC")  # cancelled after the delay
        await c.admin("POST", "/sim/fault/rest", {"mode": "late", "answer": "502", "delay_ms": 2000, "path": BATCH})
        batch = [await _far_buy(c, f"lb-{i}") for i in range(3)]
        r = await c.signed("POST", BATCH, {"batchOrders": json.dumps(batch)})
        assert r.status == 502 and "Bad Gateway" in r.json
        assert _cids(await c.state(symbol="ETHUSDC")) == []
        await c.wait_state(lambda s: _cids(s) == ["lb-0", "lb-1", "lb-2"], symbol="ETHUSDC")


@pytest.mark.parametrize("answer", list(ANSWERS) + ["timeout"])
async def test_exec_then_error_executes_before_the_ambiguous_answer(sim, answer):
    async with SimClient.for_sim(sim) as c:
        await c.admin("POST", "/sim/fault/rest", {"mode": "exec_then_error", "answer": answer, "hold_ms": 100,
                                                  "path": ORDER, "method": "POST"})
        params = await _far_buy(c, "ete-1")
        if answer == "timeout":
            with pytest.raises(aiohttp.ServerDisconnectedError):
                await c.signed("POST", ORDER, params)
        else:
            _assert_answer(await c.signed("POST", ORDER, params), answer)
        st = await c.state(symbol="ETHUSDC")
        assert _cids(st) == ["ete-1"] and st["deferred"] == []  # already at the exchange


async def test_error_with_an_ambiguous_answer_does_not_execute(sim):
    async with SimClient.for_sim(sim) as c:
        for answer in ("-1007", "-1006", "503", "504", "timeout"):
            await c.admin("POST", "/sim/fault/rest", {"mode": "error", "answer": answer, "hold_ms": 50,
                                                      "path": ORDER, "method": "POST"})
            params = await _far_buy(c, f"err{answer}")
            if answer == "timeout":
                with pytest.raises(aiohttp.ServerDisconnectedError):
                    await c.signed("POST", ORDER, params)
            else:
                _assert_answer(await c.signed("POST", ORDER, params), answer)
        await asyncio.sleep(0)  # nothing is scheduled: the state is final at once
        st = await c.state(symbol="ETHUSDC")
        assert _cids(st) == [] and st["deferred"] == [] and st["counters"]["orders_placed"] == 0
        # `status` overrides the answer's HTTP status
        params = await _far_buy(c, "err-s")
        await c.admin("POST", "/sim/fault/rest", {"mode": "error", "answer": "-1007", "status": 503})
        r = await c.signed("POST", ORDER, params)
        assert (r.status, r.json["code"]) == (503, -1007)


async def test_batch_answers_short_malformed_and_not_json_while_all_orders_execute(sim):
    async with SimClient.for_sim(sim) as c:
        async def batch(tag: str) -> tuple[Any, list[str]]:
            items = [await _far_buy(c, f"{tag}-{i}") for i in range(3)]
            return await c.signed("POST", BATCH, {"batchOrders": json.dumps(items)}), [i["newClientOrderId"]
                                                                                       for i in items]
        placed: list[str] = []
        await c.admin("POST", "/sim/fault/rest", {"mode": "batch_short"})  # default: the last entry missing
        r, cids = await batch("bs")
        placed += cids
        assert r.status == 200 and [o["clientOrderId"] for o in r.json] == ["bs-0", "bs-1"]
        assert _cids(await c.state(symbol="ETHUSDC")) == placed
        await c.admin("POST", "/sim/fault/rest", {"mode": "batch_short", "entries": [0, 1]})
        r, cids = await batch("bt")
        placed += cids
        assert [o["clientOrderId"] for o in r.json] == ["bt-2"]
        assert _cids(await c.state(symbol="ETHUSDC")) == placed
        await c.admin("POST", "/sim/fault/rest", {"mode": "batch_malformed", "entries": [1], "entry": None})
        r, cids = await batch("bm")
        placed += cids
        assert r.status == 200 and len(r.json) == 3 and r.json[1] is None
        assert [r.json[0]["clientOrderId"], r.json[2]["clientOrderId"]] == ["bm-0", "bm-2"]
        await c.admin("POST", "/sim/fault/rest", {"mode": "batch_malformed"})  # default: all entries {}
        r, cids = await batch("bn")
        placed += cids
        assert r.json == [{}, {}, {}]
        await c.admin("POST", "/sim/fault/rest", {"mode": "batch_nonjson"})
        r, cids = await batch("bj")
        placed += cids
        assert r.status == 200 and isinstance(r.json, str) and r.json.startswith("[{")
        with pytest.raises(ValueError):
            json.loads(r.json)
        st = await c.state(symbol="ETHUSDC")
        assert _cids(st) == placed and st["faults_pending"] == []


async def test_write_faults_skip_reads_and_requests_the_gateway_rejects(sim):
    async with SimClient.for_sim(sim) as c:
        await c.admin("POST", "/sim/fault/rest", {"mode": "late", "answer": "503"})  # any write
        assert (await c.signed("GET", "/fapi/v1/openOrders", {"symbol": "ETHUSDC"})).status == 200
        assert (await c.signed("POST", "/fapi/v1/order/test", await _far_buy(c, "t"))).status == 200
        r = await c.signed("POST", ORDER, await _far_buy(c, "bad-sig"), secret="0" * 64)
        assert r.json["code"] == -1022  # rejected at the gateway: answered as usual, fault still pending
        assert len((await c.state())["faults_pending"]) == 1
        r = await c.signed("POST", ORDER, await _far_buy(c, "ok"))
        assert r.status == 503
        await c.wait_state(lambda s: _cids(s) == ["ok"], symbol="ETHUSDC")
        # batch modes take only /fapi/v1/batchOrders
        await c.admin("POST", "/sim/fault/rest", {"mode": "batch_short"})
        assert (await c.signed("POST", ORDER, await _far_buy(c, "single"))).status == 200
        assert len((await c.state())["faults_pending"]) == 1
        async with aiohttp.ClientSession() as s:
            for body in ({"mode": "late", "answer": "418"}, {"mode": "unknown", "answer": "503"},
                         {"mode": "late", "delay_ms": -1}, {"mode": "batch_short", "entries": "last"}):
                async with s.post(f"{sim.rest_url}/sim/fault/rest", json=body) as resp:
                    assert resp.status == 400 and "error" in await resp.json()


async def test_symbol_config_and_open_algo_orders(sim):
    async with SimClient.for_sim(sim) as c:
        r = await c.signed("POST", "/fapi/v1/leverage", {"symbol": "BTCUSDT", "leverage": 7})
        assert r.status == 200
        r = await c.signed("GET", "/fapi/v1/symbolConfig")
        assert r.status == 200
        rows = {row["symbol"]: row for row in r.json}
        assert set(rows) == {"ETHUSDC", "BTCUSDT", "SOLUSDT"}
        assert rows["BTCUSDT"] == {"symbol": "BTCUSDT", "marginType": "CROSSED", "isAutoAddMargin": False,
                                   "leverage": 7, "maxNotionalValue": "40000000"}   # 10x's bracket: 7x up to 40 M
        assert rows["ETHUSDC"]["leverage"] == 20 and rows["ETHUSDC"]["isAutoAddMargin"] is False
        used = int(r.headers["X-MBX-USED-WEIGHT-1M"])
        r = await c.signed("GET", "/fapi/v1/symbolConfig", {"symbol": "ETHUSDC"})
        assert [row["symbol"] for row in r.json] == ["ETHUSDC"]
        assert int(r.headers["X-MBX-USED-WEIGHT-1M"]) == used + 5
        r = await c.signed("GET", "/fapi/v1/openAlgoOrders")
        assert (r.status, r.json) == (200, [])
        r = await c.signed("GET", "/fapi/v1/openAlgoOrders", {"symbol": "ETHUSDC"})
        assert (r.status, r.json) == (200, [])
        assert (await c.signed("GET", "/fapi/v1/openAlgoOrders", {"symbol": "NOPE"})).json["code"] == -1121
        assert (await c.public("GET", "/fapi/v1/symbolConfig")).json["code"] == -2014  # signed


async def test_modify_limit_answers_5026_after_n_modifies(sim):
    async with SimClient.for_sim(sim) as c:
        assert (await c.admin("POST", "/sim/limits", {}))["max_modifies_per_order"] == 9999
        assert (await c.admin("POST", "/sim/limits", {"max_modifies_per_order": 3}))["max_modifies_per_order"] == 3
        params = await _far_buy(c, "mod-1")
        assert (await c.signed("POST", ORDER, params)).status == 200
        price = Decimal(params["price"])
        for i in range(1, 4):
            r = await c.signed("PUT", ORDER, {"symbol": "ETHUSDC", "origClientOrderId": "mod-1", "side": "BUY",
                                              "quantity": "0.010", "price": str(price - i)})
            assert r.status == 200 and Decimal(r.json["price"]) == price - i
        r = await c.signed("PUT", ORDER, {"symbol": "ETHUSDC", "origClientOrderId": "mod-1", "side": "BUY",
                                          "quantity": "0.010", "price": str(price - 4)})
        assert (r.status, r.json) == (400, {"code": -5026, "msg": "Exceed maximum modify order limit."})
        [o] = (await c.state(symbol="ETHUSDC"))["open_orders"]
        assert Decimal(o["price"]) == price - 3  # the refused modify left the order as it was
        # a fresh order has its own count
        assert (await c.signed("POST", ORDER, await _far_buy(c, "mod-2"))).status == 200
        r = await c.signed("PUT", ORDER, {"symbol": "ETHUSDC", "origClientOrderId": "mod-2", "side": "BUY",
                                          "quantity": "0.020", "price": str(price)})
        assert r.status == 200


async def test_market_lot_size_is_enforced_apart_from_lot_size(sim_factory):
    spec = {"symbol": "ETHUSDC", "base_asset": "ETH", "quote_asset": "USDC", "start_price": 3000.0,
            "market_step_size": "0.01", "market_min_qty": "0.01", "market_max_qty": "5"}
    sim = await sim_factory(symbols=["ETHUSDC", "BTCUSDT"], config={"symbols": [spec]})
    async with SimClient.for_sim(sim) as c:
        info = (await c.public("GET", "/fapi/v1/exchangeInfo")).json
        filters = {s["symbol"]: {f["filterType"]: f for f in s["filters"]} for s in info["symbols"]}
        assert filters["ETHUSDC"]["LOT_SIZE"]["stepSize"] == "0.001"
        assert {k: filters["ETHUSDC"]["MARKET_LOT_SIZE"][k] for k in ("minQty", "maxQty", "stepSize")} == {
            "minQty": "0.01", "maxQty": "5", "stepSize": "0.01"}
        assert filters["BTCUSDT"]["LOT_SIZE"]["maxQty"] == "1000"  # Binance's BTCUSDT: LOT 1000, MARKET 120
        assert filters["BTCUSDT"]["MARKET_LOT_SIZE"]["maxQty"] == "120"

        async def market(symbol: str, qty: str) -> Any:
            return await c.signed("POST", ORDER, {"symbol": symbol, "side": "BUY", "type": "MARKET",
                                                  "quantity": qty, "newOrderRespType": "RESULT"})
        r = await market("ETHUSDC", "0.015")  # on the LOT step, off the MARKET step
        assert (r.status, r.json) == (400, {"code": -4023, "msg": "Qty not increased by step size."})
        r = await market("ETHUSDC", "6")
        assert (r.status, r.json) == (400, {"code": -4005, "msg": "Quantity greater than max quantity."})
        r = await market("BTCUSDT", "121")
        assert r.json == {"code": -4005, "msg": "Quantity greater than max quantity."}
        assert (await c.state())["counters"]["orders_placed"] == 0
        r = await market("ETHUSDC", "0.02")
        assert r.status == 200 and r.json["status"] == "FILLED"
        r = await c.signed("POST", ORDER, await _far_buy(c, "lot-ok", qty="0.015"))  # LIMIT: LOT_SIZE only
        assert r.status == 200
        r = await c.signed("POST", ORDER, {**await _far_buy(c, "lot-big", qty="6"), "price": "2000.00"})
        assert r.json.get("code") != -4005  # 6 is within LOT_SIZE (it fails on margin, if at all)
    with pytest.raises(SimConfigError):
        load_sim_config({"symbols": [{**spec, "market_step_size": "0.0015"}]})


async def test_funding_frame_is_the_real_cross_frame_unless_asked_for_the_symbol(sim_factory):
    accounts = [{"name": "main"}, {"name": "sdk", "funding_frame_symbol": True}]
    sim = await sim_factory(config={"accounts": accounts})
    async with SimClient.for_sim(sim, 0) as main, SimClient.for_sim(sim, 1) as sdk, \
            aiohttp.ClientSession() as s:
        sockets = []
        for c, name in ((main, "main"), (sdk, "sdk")):
            key = (await c.keyed("POST", "/fapi/v1/listenKey")).json["listenKey"]
            sockets.append(await s.ws_connect(f"{sim.ws_url}/private/ws/{key}"))
            await c.admin("POST", "/sim/position", {"account": name, "symbol": "ETHUSDC", "amount": "0.500"})
        await main.admin("POST", "/sim/funding/rate", {"symbol": "ETHUSDC", "rate": "0.0004"})
        [charge, _] = (await main.admin("POST", "/sim/funding/settle", {"symbol": "ETHUSDC"}))["charged"]
        frames = []
        for ws in sockets:
            deadline = time.monotonic() + 10
            while True:
                f = json.loads((await ws.receive(timeout=max(0.1, deadline - time.monotonic()))).data)
                if f["e"] == "ACCOUNT_UPDATE" and f["a"]["m"] == "FUNDING_FEE":
                    frames.append(f)
                    break
            await ws.close()
        plain, with_symbol = frames
        t = plain["E"]
        assert plain == {"e": "ACCOUNT_UPDATE", "T": t, "E": t, "a": {
            "B": [{"a": "USDC", "wb": plain["a"]["B"][0]["wb"], "cw": plain["a"]["B"][0]["wb"],
                   "bc": charge["fee"]}], "P": [], "m": "FUNDING_FEE"}}
        assert Decimal(charge["fee"]) < 0  # a long pays a positive rate
        assert with_symbol["a"]["S"] == "ETHUSDC" and with_symbol["a"]["B"] == plain["a"]["B"]
        # the income history attributes the symbol-less frame; its filters
        rows = (await main.signed("GET", "/fapi/v1/income", {"symbol": "ETHUSDC", "incomeType": "FUNDING_FEE",
                                                             "startTime": t, "endTime": t, "limit": 10})).json
        assert rows == [{"symbol": "ETHUSDC", "incomeType": "FUNDING_FEE", "income": charge["fee"],
                         "asset": "USDC", "info": "FUNDING_FEE", "time": t, "tranId": rows[0]["tranId"],
                         "tradeId": ""}]
        assert (await main.signed("GET", "/fapi/v1/income", {"symbol": "BTCUSDT",
                                                             "incomeType": "FUNDING_FEE"})).json == []
        assert (await main.signed("GET", "/fapi/v1/income", {"incomeType": "FUNDING_FEE",
                                                             "startTime": t + 1})).json == []
    sim = await sim_factory(config={"funding_frame_symbol": True})  # the global switch
    async with SimClient.for_sim(sim) as c, aiohttp.ClientSession() as s:
        key = (await c.keyed("POST", "/fapi/v1/listenKey")).json["listenKey"]
        ws = await s.ws_connect(f"{sim.ws_url}/private/ws/{key}")
        await c.admin("POST", "/sim/position", {"account": "main", "symbol": "SOLUSDT", "amount": "-3.00"})
        await c.admin("POST", "/sim/funding/settle", {"symbol": "SOLUSDT"})
        while True:
            f = json.loads((await ws.receive(timeout=10)).data)
            if f["e"] == "ACCOUNT_UPDATE" and f["a"]["m"] == "FUNDING_FEE":
                break
        assert f["a"]["S"] == "SOLUSDT" and f["a"]["P"] == []
        await ws.close()


async def test_the_client_never_resends_a_dropped_cancel_or_modify(sim):
    """A kept-alive connection dropped after a DELETE or PUT is an unknown outcome, not a silent resend."""
    from fleet.binance.client import BinanceClient
    from fleet.binance.errors import OutcomeUnknownError
    from fleet.binance.enums import OrderType, Side, TimeInForce
    from fleet.binance.models import OrderRequest

    name, key, secret = sim.accounts[0]
    async with aiohttp.ClientSession() as http, BinanceClient(sim.rest_url, key, secret) as client:
        top = await client.book_ticker("ETHUSDC")
        f = await client.symbol_filters("ETHUSDC")
        px = f.price_str(f.price_ticks_floor(top.bid) - 300)
        placed = await client.place_order(OrderRequest(symbol="ETHUSDC", side=Side.BUY, order_type=OrderType.LIMIT,
                                                       quantity="0.010", price=px, time_in_force=TimeInForce.GTX,
                                                       client_order_id="resend-check-1"))
        before = (await (await http.get(sim.rest_url + "/sim/state")).json())["server"]["rest_requests"]
        await http.post(sim.rest_url + "/sim/fault/rest", json={"mode": "exec_then_error", "answer": "timeout",
                                                                 "hold_ms": 100, "path": ORDER, "method": "DELETE"})
        with pytest.raises(OutcomeUnknownError):
            await client.cancel_order("ETHUSDC", order_id=placed.order_id)
        after = (await (await http.get(sim.rest_url + "/sim/state")).json())["server"]["rest_requests"]
        assert after - before == 1  # the cancel was sent once, never resent


async def test_a_conditional_order_answered_5xx_may_be_at_the_exchange_at_once_or_later(sim):
    async with SimClient.for_sim(sim) as c:
        bt = (await c.public("GET", "/fapi/v1/ticker/bookTicker", {"symbol": "ETHUSDC"})).json
        far = str((Decimal(bt["askPrice"]) * Decimal("1.05")).quantize(Decimal("0.01")))

        def stop(cid: str) -> dict:
            return {"algoType": "CONDITIONAL", "symbol": "ETHUSDC", "side": "BUY", "type": "STOP_MARKET",
                    "triggerPrice": far, "quantity": "0.010", "clientAlgoId": cid}

        def algo_ids(st: dict) -> list[str]:
            return [a["clientAlgoId"] for a in st["open_algo_orders"]]

        await c.admin("POST", "/sim/fault/rest", {"mode": "exec_then_error", "answer": "503",
                                                  "path": "/fapi/v1/algoOrder", "method": "POST"})
        r = await c.signed("POST", "/fapi/v1/algoOrder", stop("ete-algo"))
        assert r.status == 503 and r.json["code"] == -1000
        assert algo_ids(await c.state(symbol="ETHUSDC")) == ["ete-algo"]   # placed all the same
        await c.admin("POST", "/sim/fault/rest", {"mode": "late", "answer": "503", "delay_ms": 2000,
                                                  "path": "/fapi/v1/algoOrder", "method": "POST"})
        r = await c.signed("POST", "/fapi/v1/algoOrder", stop("late-algo"))
        assert r.status == 503 and algo_ids(await c.state(symbol="ETHUSDC")) == ["ete-algo"]
        await c.wait_state(lambda s: algo_ids(s) == ["ete-algo", "late-algo"], symbol="ETHUSDC")
