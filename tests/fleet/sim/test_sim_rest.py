"""The simulator's REST surface over loopback: public data, signed trading, account views, error codes."""

from __future__ import annotations

import json
import time
from datetime import datetime, timezone
from datetime import time as dt_time
from decimal import ROUND_HALF_UP, Decimal
from urllib.parse import quote

import aiohttp
import orjson
import pytest

from fleet.sim import wsapi
from fleet.sim.testkit import ManualClock, SimClient, sign

pytestmark = pytest.mark.asyncio


async def _touch(c: SimClient, symbol: str = "ETHUSDC") -> tuple[Decimal, Decimal]:
    r = await c.public("GET", "/fapi/v1/ticker/bookTicker", {"symbol": symbol})
    return Decimal(r.json["bidPrice"]), Decimal(r.json["askPrice"])


async def _far_bid(c: SimClient, symbol: str = "ETHUSDC", frac: str = "0.98") -> str:
    bid, _ = await _touch(c, symbol)
    tick = {"ETHUSDC": Decimal("0.01"), "BTCUSDT": Decimal("0.10"), "SOLUSDT": Decimal("0.01")}[symbol]
    return str((bid * Decimal(frac) / tick).quantize(Decimal(1)) * tick)


@pytest.mark.parametrize("after_ms", [0, 30_000, 59_999, 60_000, 3_600_000])
async def test_the_funding_history_ends_just_before_the_next_settlement_whenever_it_starts(sim_factory, after_ms):
    """A simulator started in the first minute after a settlement (00:00 UTC here) had that settlement
    neither in its history nor to come: the history ended 16:00, the next was 08:00."""
    clock = ManualClock()
    eight_h = 8 * 3600 * 1000
    clock.now = (clock.now // eight_h) * eight_h + after_ms
    sim = await sim_factory(clock=clock)
    async with SimClient.for_sim(sim) as c:
        pi = (await c.public("GET", "/fapi/v1/premiumIndex", {"symbol": "ETHUSDC"})).json
        funding = (await c.public("GET", "/fapi/v1/fundingRate", {"symbol": "ETHUSDC"})).json
    assert funding[-1]["fundingTime"] == pi["nextFundingTime"] - eight_h <= clock.now < pi["nextFundingTime"]


async def test_public_endpoints_answer_in_binance_shapes(sim):
    async with SimClient.for_sim(sim) as c:
        assert (await c.public("GET", "/fapi/v1/ping")).json == {}
        t = (await c.public("GET", "/fapi/v1/time")).json["serverTime"]
        assert abs(t - time.time() * 1000) < 5000
        info = (await c.public("GET", "/fapi/v1/exchangeInfo")).json
        assert [s["symbol"] for s in info["symbols"]] == ["ETHUSDC", "BTCUSDT", "SOLUSDT"]
        eth = info["symbols"][0]
        filters = {f["filterType"]: f for f in eth["filters"]}
        assert filters["PRICE_FILTER"]["tickSize"] == "0.01"
        assert filters["LOT_SIZE"]["stepSize"] == "0.001"
        assert filters["MIN_NOTIONAL"]["notional"] == "5"
        assert {"MARKET_LOT_SIZE", "PERCENT_PRICE", "MAX_NUM_ORDERS"} <= set(filters)
        assert filters["POSITION_RISK_CONTROL"] == {"filterType": "POSITION_RISK_CONTROL", "positionControlSide": "NONE"}
        assert eth["orderTypes"] == ["LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET",
                                     "TRAILING_STOP_MARKET"]   # as live lists them: the Algo Service's too
        assert eth["marginAsset"] == "USDC"
        limits = {(x["rateLimitType"], x["interval"], x["intervalNum"]): x["limit"] for x in info["rateLimits"]}
        assert limits == {("REQUEST_WEIGHT", "MINUTE", 1): 2400, ("ORDERS", "MINUTE", 1): 1200,
                          ("ORDERS", "SECOND", 10): 300}
        btc = {f["filterType"]: f for f in info["symbols"][1]["filters"]}
        assert btc["PRICE_FILTER"]["tickSize"] == "0.10" and btc["MIN_NOTIONAL"]["notional"] == "50"
        depth = (await c.public("GET", "/fapi/v1/depth", {"symbol": "BTCUSDT", "limit": 10})).json
        assert len(depth["bids"]) == 10 and len(depth["asks"]) == 10
        bids = [Decimal(p) for p, _ in depth["bids"]]
        asks = [Decimal(p) for p, _ in depth["asks"]]
        assert bids == sorted(bids, reverse=True) and asks == sorted(asks) and bids[0] < asks[0]
        assert 50000 < bids[0] < 70000
        bt = (await c.public("GET", "/fapi/v1/ticker/bookTicker", {"symbol": "SOLUSDT"})).json
        assert Decimal(bt["bidPrice"]) < Decimal(bt["askPrice"]) and bt["symbol"] == "SOLUSDT"
        pi = (await c.public("GET", "/fapi/v1/premiumIndex", {"symbol": "ETHUSDC"})).json
        assert 2500 < float(pi["markPrice"]) < 3500
        assert pi["nextFundingTime"] % (8 * 3600 * 1000) == 0 and pi["nextFundingTime"] > t
        all_pi = (await c.public("GET", "/fapi/v1/premiumIndex")).json
        assert len(all_pi) == 3
        # the past a fresh start comes with (fleet/sim/history.py): a month of settlements, a day of candles
        funding = (await c.public("GET", "/fapi/v1/fundingRate", {"symbol": "ETHUSDC"})).json
        eight_h = 8 * 3600 * 1000
        assert len(funding) == 90 and funding[-1]["fundingTime"] == pi["nextFundingTime"] - eight_h
        assert all(b["fundingTime"] - a["fundingTime"] == eight_h for a, b in zip(funding, funding[1:]))
        assert all(set(r) == {"symbol", "fundingRate", "fundingTime", "markPrice", "rateType"} for r in funding)
        assert all(abs(Decimal(r["fundingRate"])) < Decimal("0.003") and 1000 < float(r["markPrice"]) < 9000
                   for r in funding)
        day = (await c.public("GET", "/fapi/v1/klines", {"symbol": "ETHUSDC", "interval": "1m", "limit": 1500})).json
        assert len(day) == 1500 and all(b[0] - a[0] == 60_000 for a, b in zip(day, day[1:]))
        assert day[-2][4] == day[-1][1]   # the past ends where the market started
        assert all(Decimal(r[3]) <= min(Decimal(r[1]), Decimal(r[4])) and Decimal(r[2]) >= max(Decimal(r[1]), Decimal(r[4]))
                   and Decimal(r[5]) > 0 and r[8] > 0 for r in day[:-1])
        ticker = (await c.public("GET", "/fapi/v1/ticker/24hr", {"symbol": "ETHUSDC"})).json
        assert ticker["count"] == ticker["lastId"] - ticker["firstId"] + 1 > 1000


async def test_weight_header_counts_each_request_by_endpoint_weight(sim_factory):
    sim = await sim_factory(clock=ManualClock())
    async with SimClient.for_sim(sim) as c:
        used = []
        for path, params in (("/fapi/v1/time", {}), ("/fapi/v1/depth", {"symbol": "ETHUSDC", "limit": 100}),
                             ("/fapi/v1/depth", {"symbol": "ETHUSDC", "limit": 1000}),
                             ("/fapi/v1/ticker/bookTicker", {}), ("/fapi/v1/exchangeInfo", {}),
                             ("/fapi/v1/premiumIndex", {"symbol": "ETHUSDC"}), ("/fapi/v1/premiumIndex", {})):
            used.append(int((await c.public("GET", path, params)).headers["X-MBX-USED-WEIGHT-1M"]))
        assert used == [1, 6, 26, 31, 32, 33, 43]   # premiumIndex: 1 with a symbol, 10 without


async def test_the_book_with_rpi_orders_is_the_depth_none_resting_here(sim_factory):
    """GET /fapi/v1/rpiDepth: 1,000 levels, the one limit Binance takes, weight 20; no one rests an RPI
    order in the simulator, so it is the depth's book (a manual clock: both read the same moment)."""
    sim = await sim_factory(clock=ManualClock())
    async with SimClient.for_sim(sim) as c:
        rpi = await c.public("GET", "/fapi/v1/rpiDepth", {"symbol": "ETHUSDC"})
        assert rpi.status == 200 and rpi.headers["X-MBX-USED-WEIGHT-1M"] == "20"
        depth = (await c.public("GET", "/fapi/v1/depth", {"symbol": "ETHUSDC", "limit": 1000})).json
        assert rpi.json["bids"] == depth["bids"] and rpi.json["asks"] == depth["asks"]
        assert rpi.json["lastUpdateId"] == depth["lastUpdateId"]
        assert (await c.public("GET", "/fapi/v1/rpiDepth", {"symbol": "ETHUSDC", "limit": 1000})).status == 200
        assert (await c.public("GET", "/fapi/v1/rpiDepth", {"symbol": "ETHUSDC", "limit": 500})).json["code"] == -1130
        assert (await c.public("GET", "/fapi/v1/rpiDepth", {})).json["code"] == -1102


async def test_answers_refused_before_any_weight_is_charged_carry_the_weight_header_too(sim_factory):
    """X-MBX-USED-WEIGHT-1M is on every answer: an unknown path (404 -5000), a method a path does not
    take (405), a parameter named twice (-1101) and a body that is not text (-1100) charge nothing and
    say the weight used so far."""
    sim = await sim_factory(clock=ManualClock())
    async with SimClient.for_sim(sim) as c:
        assert (await c.public("GET", "/fapi/v1/depth", {"symbol": "ETHUSDC", "limit": 100})).headers[
            "X-MBX-USED-WEIGHT-1M"] == "5"
        unknown = await c.public("GET", "/fapi/v1/nothing")
        wrong_method = await c.public("PATCH", "/fapi/v1/time")
        twice = await c.signed_raw("GET", "/fapi/v2/balance", "recvWindow=5000&recvWindow=6000")
        async with c.session.post(sim.rest_url + "/fapi/v1/order", data=b"symbol=ETH\xff",
                                  headers={"Content-Type": "application/x-www-form-urlencoded"}) as r:
            not_text = (r.status, await r.json(content_type=None), r.headers.get("X-MBX-USED-WEIGHT-1M"))
        assert (unknown.status, unknown.json["code"], unknown.headers.get("X-MBX-USED-WEIGHT-1M")) == (404, -5000, "5")
        assert (wrong_method.status, wrong_method.headers.get("X-MBX-USED-WEIGHT-1M")) == (405, "5")
        assert (twice.status, twice.json["code"], twice.headers.get("X-MBX-USED-WEIGHT-1M")) == (400, -1101, "5")
        assert (not_text[0], not_text[1]["code"], not_text[2]) == (400, -1100, "5")
        assert (await c.public("GET", "/fapi/v1/time")).headers["X-MBX-USED-WEIGHT-1M"] == "6"


async def test_signature_vector_from_binance_docs_matches_our_signer():
    secret = "2b5eb11e18796d12d88f13dc27dbbd02c2cc51ff7059765ed9821957d82bb4d9"
    payload = ("symbol=BTCUSDT&side=BUY&type=LIMIT&quantity=1&price=9000&timeInForce=GTC"
               "&recvWindow=5000&timestamp=1591702613943")
    assert sign(secret, payload) == "3c661234138461fcc7a7d8746c6558c9842d4e10870d2ecbedf7777cad694af9"


async def test_docs_vector_is_accepted_as_query_or_body_with_the_docs_keys(sim_factory):
    key = "dbefbc809e3e83c283a984c3a1459732ea7db1360ca80c5c2c8867408d28cc83"
    secret = "2b5eb11e18796d12d88f13dc27dbbd02c2cc51ff7059765ed9821957d82bb4d9"
    sim = await sim_factory(api_key=key, api_secret=secret)
    async with SimClient(sim.rest_url, key, secret) as c:
        # the docs' timestamp is years old: the signature passes, then the recvWindow check answers -1021
        payload = ("symbol=BTCUSDT&side=BUY&type=LIMIT&quantity=1&price=9000&timeInForce=GTC"
                   "&recvWindow=5000&timestamp=1591702613943")
        sig = "3c661234138461fcc7a7d8746c6558c9842d4e10870d2ecbedf7777cad694af9"
        for query, body in ((payload + "&signature=" + sig, ""), ("", payload + "&signature=" + sig)):
            r = await c._do("POST", "/fapi/v1/order", query, body, {"X-MBX-APIKEY": key})
            assert r.status == 400 and r.json["code"] == -1021
        # mixed query + body: signed over query + body with no '&' in between
        q = "symbol=BTCUSDT&side=BUY&type=LIMIT&timeInForce=GTC"
        ts = int(time.time() * 1000)
        b = f"quantity=0.001&price=50000.0&recvWindow=5000&timestamp={ts}"
        r = await c._do("POST", "/fapi/v1/order", q, b + "&signature=" + sign(secret, q + b), {"X-MBX-APIKEY": key})
        assert r.status == 200, r.json
        assert r.json["status"] == "NEW" and r.json["price"] == "50000.00"[:-1]


async def test_auth_errors_have_binance_codes(sim):
    async with SimClient.for_sim(sim) as c:
        r = await c.signed("GET", "/fapi/v2/balance", api_key="")
        assert (r.status, r.json["code"]) == (401, -2014)
        r = await c.signed("GET", "/fapi/v2/balance", api_key="nope")
        assert (r.status, r.json["code"]) == (401, -2015)
        r = await c.signed("GET", "/fapi/v2/balance", secret="wrong")
        assert (r.status, r.json["code"]) == (400, -1022)
        r = await c.signed("GET", "/fapi/v2/balance", timestamp=int(time.time() * 1000) - 10_000)
        assert r.json["code"] == -1021 and "recvWindow" in r.json["msg"]
        r = await c.signed("GET", "/fapi/v2/balance", timestamp=int(time.time() * 1000) + 5_000)
        assert r.json["code"] == -1021 and "ahead" in r.json["msg"]
        r = await c.keyed("GET", "/fapi/v2/balance", {"timestamp": int(time.time() * 1000)})
        assert r.json["code"] == -1102 and "signature" in r.json["msg"]
        ok = await c.signed("GET", "/fapi/v2/balance", {"recvWindow": 10000})
        assert ok.status == 200
        # Binance's maximum is unverified (the docs' RSA example sends 9999999): none unless configured
        assert (await c.signed("GET", "/fapi/v2/balance", {"recvWindow": 9999999})).status == 200
        for bad in ("0", "-5", "soon"):
            r = await c.signed("GET", "/fapi/v2/balance", {"recvWindow": bad})
            assert (r.status, r.json["code"]) == (400, -1130), bad


async def test_a_signature_that_is_not_the_last_parameter_is_refused(sim):
    """The signature must be the last parameter of the query string or of the body: one anywhere else
    is -1022, as a wrong one is, even when it signs the rest; last in either part it is taken."""
    async with SimClient.for_sim(sim) as c:
        payload = f"symbol=ETHUSDC&countdownTime=0&timestamp={int(time.time() * 1000)}"
        sig = "signature=" + sign(c.api_secret, payload)
        key = {"X-MBX-APIKEY": c.api_key}
        first, middle = f"{sig}&{payload}", payload.replace("&", f"&{sig}&", 1)
        for query, body in ((first, ""), (middle, ""), ("", first), ("", middle)):
            r = await c._do("POST", "/fapi/v1/countdownCancelAll", query, body, key)
            assert (r.status, r.json) == (400, {"code": -1022, "msg": "Signature for this request is not valid."}), (
                query, body)
        for query, body in ((f"{payload}&{sig}", ""), ("", f"{payload}&{sig}")):
            r = await c._do("POST", "/fapi/v1/countdownCancelAll", query, body, key)
            assert r.status == 200, (query, body, r.json)


async def test_a_configured_recv_window_maximum_is_enforced(sim_factory):
    sim = await sim_factory(config={"recv_window_max_ms": 60000})
    async with SimClient.for_sim(sim) as c:
        assert (await c.signed("GET", "/fapi/v2/balance", {"recvWindow": 60000})).status == 200
        r = await c.signed("GET", "/fapi/v2/balance", {"recvWindow": 60001})
        assert (r.status, r.json["code"]) == (400, -1130)


async def test_each_kind_of_order_answer_carries_the_fields_binances_does(sim):
    """Since the CM-UM integration (2026-06-30) a placement's, an amendment's and a cancel's answer carry
    no avgPrice and no cumQuote (the fill price is a look-up's), nor time or cumBase, nor pair but in an
    amendment's (its documented example, Binance's SDK models); a look-up's (the order, the open ones,
    all of them) carries time, avgPrice and cumQuote, not cumQty, pair or cumBase (every answer carried
    every field)."""
    written = {"time", "pair", "cumBase", "avgPrice", "cumQuote"}
    async with SimClient.for_sim(sim) as c:
        price = await _far_bid(c)
        order = {"symbol": "ETHUSDC", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "price": price,
                 "quantity": "0.010"}
        placed = (await c.signed("POST", "/fapi/v1/order", order)).json
        batch = (await c.signed("POST", "/fapi/v1/batchOrders", {"batchOrders": json.dumps([order])})).json[0]
        ids = {"symbol": "ETHUSDC", "orderId": placed["orderId"]}
        amended = (await c.signed("PUT", "/fapi/v1/order", {**ids, "side": "BUY", "quantity": "0.011",
                                                             "price": price})).json
        moved = (await c.signed("PUT", "/fapi/v1/batchOrders", {"batchOrders": json.dumps([
            {"symbol": "ETHUSDC", "orderId": batch["orderId"], "side": "BUY", "quantity": "0.011", "price": price}])})).json
        for answer in (amended, *moved):
            assert answer["pair"] == "ETHUSDC" and not (written - {"pair"}) & set(answer), answer
        looked = [(await c.signed("GET", "/fapi/v1/order", ids)).json,
                  (await c.signed("GET", "/fapi/v1/openOrders", {"symbol": "ETHUSDC"})).json[0],
                  (await c.signed("GET", "/fapi/v1/allOrders", {"symbol": "ETHUSDC"})).json[0]]
        for row in looked:
            assert {"time", "avgPrice", "cumQuote"} <= set(row) and not {"cumQty", "pair", "cumBase"} & set(row), row
        cancelled = (await c.signed("DELETE", "/fapi/v1/order", ids)).json
        other = (await c.signed("DELETE", "/fapi/v1/batchOrders",
                                {"symbol": "ETHUSDC", "orderIdList": json.dumps([batch["orderId"]])})).json[0]
        assert cancelled["status"] == other["status"] == "CANCELED"
        for answer in (placed, batch, cancelled, other):
            assert {"cumQty", "executedQty", "updateTime"} <= set(answer) and not written & set(answer), answer


async def test_limit_order_lifecycle_query_open_orders_cancel(sim):
    async with SimClient.for_sim(sim) as c:
        price = await _far_bid(c)
        r = await c.signed("POST", "/fapi/v1/order", {"symbol": "ETHUSDC", "side": "BUY", "type": "LIMIT",
                                                      "timeInForce": "GTC", "price": price, "quantity": "0.010",
                                                      "newClientOrderId": "e1.q-1"})
        assert r.status == 200, r.json
        assert r.headers["X-MBX-ORDER-COUNT-10S"] == "1" and r.headers["X-MBX-ORDER-COUNT-1M"] == "1"
        oid = r.json["orderId"]
        assert r.json["clientOrderId"] == "e1.q-1" and r.json["status"] == "NEW" and r.json["price"] == price
        q = await c.signed("GET", "/fapi/v1/order", {"symbol": "ETHUSDC", "origClientOrderId": "e1.q-1"})
        assert q.json["orderId"] == oid
        oo = await c.signed("GET", "/fapi/v1/openOrders", {"symbol": "ETHUSDC"})
        assert [o["orderId"] for o in oo.json] == [oid]
        st = await c.state(symbol="ETHUSDC")
        assert st["open_orders"][0]["clientOrderId"] == "e1.q-1"
        dup = await c.signed("POST", "/fapi/v1/order", {"symbol": "ETHUSDC", "side": "BUY", "type": "LIMIT",
                                                        "timeInForce": "GTC", "price": price, "quantity": "0.010",
                                                        "newClientOrderId": "e1.q-1"})
        assert dup.json["code"] == -4116
        x = await c.signed("DELETE", "/fapi/v1/order", {"symbol": "ETHUSDC", "orderId": oid})
        assert x.json["status"] == "CANCELED"
        again = await c.signed("DELETE", "/fapi/v1/order", {"symbol": "ETHUSDC", "orderId": oid})
        assert (again.status, again.json["code"]) == (400, -2011)
        gone = await c.signed("GET", "/fapi/v1/openOrder", {"symbol": "ETHUSDC", "orderId": oid})
        assert gone.json["code"] == -2013
        closed = await c.signed("GET", "/fapi/v1/order", {"symbol": "ETHUSDC", "orderId": oid})
        assert closed.json["status"] == "CANCELED"
        st = await c.state(symbol="ETHUSDC")
        assert st["open_orders"] == [] and st["counters"]["orders_cancelled"] == 1
        assert st["counters"]["orders_rejected"] == 1


async def test_filter_violations_answer_binance_codes(sim):
    async with SimClient.for_sim(sim) as c:
        bid, ask = await _touch(c)
        base = {"symbol": "ETHUSDC", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC"}
        far = await _far_bid(c)

        async def code(**kw):
            r = await c.signed("POST", "/fapi/v1/order", {**base, **kw})
            assert r.status == 400, r.json
            return r.json["code"]

        assert await code(price=far + "1", quantity="0.010") == -1111  # 3 decimals on a 0.01 tick
        assert await code(price=far, quantity="0.0101") == -1111
        bt = (await c.public("GET", "/fapi/v1/ticker/bookTicker", {"symbol": "BTCUSDT"})).json
        btc_price = str((Decimal(bt["bidPrice"]) * Decimal("0.98")).quantize(Decimal("0.1")) + Decimal("0.05"))
        r = await c.signed("POST", "/fapi/v1/order", {**base, "symbol": "BTCUSDT", "price": btc_price,
                                                      "quantity": "0.001"})
        assert r.json["code"] == -4014  # within BTC's 2-decimal precision but off the 0.10 tick
        assert await code(price=far, quantity="0.001") == -4164  # 3 USDC < MIN_NOTIONAL 5
        assert await code(price=str((ask * Decimal("1.10")).quantize(Decimal("0.01"))), quantity="0.010") == -4016
        r = await c.signed("POST", "/fapi/v1/order", {**base, "side": "SELL", "quantity": "0.010",
                                                      "price": str((bid * Decimal("0.90")).quantize(Decimal("0.01")))})
        assert r.json["code"] == -4024
        assert await code(price=far, quantity="0.010", reduceOnly="true") == -2022
        assert await code(price=far, quantity="900.000") == -2019  # 2.6M notional on 100k at 20x
        for bad_id in ("bad id!", "ok\n", "x" * 36 + "\n"):   # ^[.A-Z:/a-z0-9_-]{1,36}$, the newline too
            assert await code(price=far, quantity="0.010", newClientOrderId=bad_id) == -4015, bad_id
        assert await code(price=far) == -1102
        assert await code(price=far, quantity="0.010", timeInForce="XYZ") == -1115
        assert await code(price=far, quantity="0.010", positionSide="FOO") == -4060        # INVALID_POSITION_SIDE
        assert await code(price=far, quantity="0.010", newOrderRespType="FULL") == -1136   # a spot value
        for bad in ("1e-2", ".01", "+0.010", "0.010 ", "0.010\n", "1.", "0.010" + "0" * 20):   # outside its range
            assert await code(price=far, quantity=bad) == -1100, bad
        assert await code(price=f" {far}", quantity="0.010") == -1100
        assert await code(price=far, quantity="0.010", side="UP") == -1117
        r = await c.signed("POST", "/fapi/v1/order", {**base, "symbol": "NOPEUSDT", "price": "1", "quantity": "1"})
        assert r.json["code"] == -1121
        # a reduce-only order below MIN_NOTIONAL is allowed when it reduces
        await c.admin("POST", "/sim/position", {"account": "main", "symbol": "ETHUSDC", "amount": "0.005"})
        r = await c.signed("POST", "/fapi/v1/order", {**base, "side": "SELL", "quantity": "0.001",
                                                      "price": str((ask * Decimal("1.02")).quantize(Decimal("0.01"))),
                                                      "reduceOnly": "true"})
        assert r.status == 200, r.json
        st = await c.state(symbol="ETHUSDC")
        assert st["counters"]["orders_rejected"] == 25 and st["counters"]["orders_placed"] == 1


async def test_a_price_outside_the_price_filter_is_refused_on_every_order_route(sim_factory):
    """PRICE_FILTER: a price below minPrice is -4013, one above maxPrice -4002 (a SELL above maxPrice
    passes PERCENT_PRICE, so nothing else refuses it), on a new order, a test order, an amendment (the
    order stays as it was), either batch (in place) and the WebSocket API; the bounds themselves are
    taken, and exchangeInfo lists them."""
    spec = {"symbol": "XYZUSDT", "base_asset": "XYZ", "quote_asset": "USDT", "start_price": 100, "volatility": 0.0,
            "min_price": "96.00", "max_price": "104.00"}
    sim = await sim_factory(symbols=["XYZUSDT"], config={"symbols": [spec]})
    low = {"code": -4013, "msg": "Price less than min price."}
    high = {"code": -4002, "msg": "Price greater than max price."}
    async with SimClient.for_sim(sim) as c:
        await c.admin("POST", "/sim/market/freeze", {"symbol": "XYZUSDT"})
        [info] = (await c.public("GET", "/fapi/v1/exchangeInfo")).json["symbols"]
        [pf] = [f for f in info["filters"] if f["filterType"] == "PRICE_FILTER"]
        assert (pf["minPrice"], pf["maxPrice"], pf["tickSize"]) == ("96.00", "104.00", "0.01")
        order = {"symbol": "XYZUSDT", "type": "LIMIT", "timeInForce": "GTC", "quantity": "1.000"}
        too_low, too_high = {**order, "side": "BUY", "price": "95.99"}, {**order, "side": "SELL", "price": "104.01"}
        for path in ("/fapi/v1/order/test", "/fapi/v1/order"):
            for params, want in ((too_low, low), (too_high, high), ({**too_high, "price": "104.010"}, high)):
                r = await c.signed("POST", path, params)
                assert (r.status, r.json) == (400, want), (path, params)
        at_low = (await c.signed("POST", "/fapi/v1/order", {**too_low, "price": "96.00"})).json
        at_high = (await c.signed("POST", "/fapi/v1/order", {**too_high, "price": "104.00"})).json
        assert (at_low["status"], at_high["status"]) == ("NEW", "NEW"), (at_low, at_high)
        moves = [{"symbol": "XYZUSDT", "orderId": o["orderId"], "side": o["side"], "quantity": "2.000", "price": p}
                 for o, p in ((at_low, "95.99"), (at_high, "104.01"))]
        for move, want in zip(moves, (low, high)):
            r = await c.signed("PUT", "/fapi/v1/order", move)
            assert (r.status, r.json) == (400, want), move
        r = await c.signed("PUT", "/fapi/v1/batchOrders", {"batchOrders": json.dumps(moves)})
        assert r.json == [low, high]
        r = await c.signed("POST", "/fapi/v1/batchOrders", {"batchOrders": json.dumps([too_low, too_high])})
        assert r.json == [low, high]
        async with aiohttp.ClientSession() as s, s.ws_connect(f"{sim.ws_url}/ws-fapi/v1") as ws:
            _, key, secret = sim.accounts[0]
            for params, want in ((too_low, low), (too_high, high)):
                p = {**params, "apiKey": key, "timestamp": int(time.time() * 1000)}
                p["signature"] = wsapi.sign(secret, p)
                await ws.send_str(orjson.dumps({"id": 1, "method": "order.place", "params": p}).decode())
                reply = orjson.loads((await ws.receive(timeout=5)).data)
                assert (reply["status"], reply["error"]) == (400, want), reply
        st = await c.state(symbol="XYZUSDT")
        assert sorted((o["price"], o["origQty"]) for o in st["open_orders"]) == [("104.00", "1.000"),
                                                                                ("96.00", "1.000")]
        assert st["positions"]["XYZUSDT"]["amount"] == "0.000"


async def test_a_sell_above_the_listed_max_price_is_refused(sim):
    """exchangeInfo lists maxPrice 10000000 for the built-in symbols: a SELL above it (which PERCENT_PRICE
    lets through) is -4002 and rests nowhere; one at it is taken."""
    async with SimClient.for_sim(sim) as c:
        info = (await c.public("GET", "/fapi/v1/exchangeInfo")).json
        [info] = [x for x in info["symbols"] if x["symbol"] == "ETHUSDC"]
        assert [f["maxPrice"] for f in info["filters"] if f["filterType"] == "PRICE_FILTER"] == ["10000000"]
        sell = {"symbol": "ETHUSDC", "side": "SELL", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.001"}
        r = await c.signed("POST", "/fapi/v1/order", {**sell, "price": "10000000.01"})
        assert (r.status, r.json) == (400, {"code": -4002, "msg": "Price greater than max price."})
        r = await c.signed("POST", "/fapi/v1/order", {**sell, "price": "10000000.00"})
        assert r.status == 200 and r.json["status"] == "NEW", r.json
        assert [o["price"] for o in (await c.state(symbol="ETHUSDC"))["open_orders"]] == ["10000000.00"]


async def test_parameters_an_order_type_does_not_take_or_a_name_given_twice_are_refused(sim):
    """Binance refuses what a LIMIT or MARKET order does not take (-1106: timeInForce on a MARKET order,
    a conditional order's stopPrice, trailing or closePosition terms) instead of trading without them,
    and a parameter named twice in the query or in the body (-1101); nothing is placed."""
    async with SimClient.for_sim(sim) as c:
        far = await _far_bid(c)
        limit = {"symbol": "ETHUSDC", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "price": far,
                 "quantity": "0.010"}
        market = {"symbol": "ETHUSDC", "side": "BUY", "type": "MARKET", "quantity": "0.010"}
        for order, name, value in ((market, "timeInForce", "GTC"), (market, "timeInForce", "GTX"),
                                   (limit, "stopPrice", "1000"), (market, "closePosition", "true"),
                                   (limit, "activationPrice", "1000"), (limit, "callbackRate", "1")):
            r = await c.signed("POST", "/fapi/v1/order", {**order, name: value})
            assert (r.status, r.json) == (400, {"code": -1106, "msg": f"Parameter '{name}' sent when not required."})
        assert (await c.signed("POST", "/fapi/v1/order", {**limit, "closePosition": "false"})).status == 200
        dup = await c.signed_raw("POST", "/fapi/v1/order", "&".join(f"{k}={v}" for k, v in limit.items())
                                 + "&price=2803")
        assert (dup.status, dup.json) == (400, {"code": -1101, "msg": "Duplicate values for a parameter detected."})
        st = await c.state(symbol="ETHUSDC")
        assert len(st["open_orders"]) == 1 and st["positions"]["ETHUSDC"]["amount"] == "0.000"


async def test_post_only_that_would_cross_is_rejected_without_a_trace(sim):
    async with SimClient.for_sim(sim) as c:
        before = await c.state(symbol="ETHUSDC")
        _, ask = await _touch(c)
        r = await c.signed("POST", "/fapi/v1/order", {"symbol": "ETHUSDC", "side": "BUY", "type": "LIMIT",
                                                      "timeInForce": "GTX", "quantity": "0.010",
                                                      "price": str(ask + Decimal("1.00")),
                                                      "newClientOrderId": "gtx-1"})
        assert (r.status, r.json["code"]) == (400, -5022)
        q = await c.signed("GET", "/fapi/v1/order", {"symbol": "ETHUSDC", "origClientOrderId": "gtx-1"})
        assert q.json["code"] == -2013
        after = await c.state(symbol="ETHUSDC")
        assert after["open_orders"] == [] and after["positions"] == before["positions"]


async def test_market_order_walks_the_book_and_books_position_fees_and_pnl(sim):
    async with SimClient.for_sim(sim) as c:
        await c.admin("POST", "/sim/market/freeze", {"frozen": True, "symbol": "ETHUSDC"})
        depth = (await c.public("GET", "/fapi/v1/depth", {"symbol": "ETHUSDC", "limit": 20})).json
        asks = [(Decimal(p), Decimal(q)) for p, q in depth["asks"]]
        qty = asks[0][1] + asks[1][1] + asks[2][1] / 2  # sweeps into the third level
        qty = qty.quantize(Decimal("0.001"))
        r = await c.signed("POST", "/fapi/v1/order", {"symbol": "ETHUSDC", "side": "BUY", "type": "MARKET",
                                                      "quantity": str(qty), "newOrderRespType": "RESULT"})
        assert r.json["status"] == "FILLED", r.json
        expected_quote = asks[0][0] * asks[0][1] + asks[1][0] * asks[1][1] + asks[2][0] * (qty - asks[0][1] - asks[1][1])
        assert Decimal(r.json["cumQuote"]) == expected_quote
        assert Decimal(r.json["avgPrice"]) > asks[0][0]  # slippage
        st = await c.state(symbol="ETHUSDC")
        pos = st["positions"]["ETHUSDC"]
        assert Decimal(pos["amount"]) == qty
        fee = sum((p * q * Decimal("0.0005")).quantize(Decimal("0.00000001"), ROUND_HALF_UP)
                  for p, q in ((asks[0][0], asks[0][1]), (asks[1][0], asks[1][1]),
                               (asks[2][0], qty - asks[0][1] - asks[1][1])))
        assert Decimal(pos["commission"]) == fee
        assert Decimal(st["balances"]["USDC"]) == Decimal(100000) - fee
        # close half at the bid: realized P&L = (exit - entry) * qty, taker fee again
        half = (qty / 2).quantize(Decimal("0.001"))
        bid = Decimal((await c.public("GET", "/fapi/v1/depth", {"symbol": "ETHUSDC", "limit": 5})).json["bids"][0][0])
        entry = Decimal(pos["entry_price"])
        r = await c.signed("POST", "/fapi/v1/order", {"symbol": "ETHUSDC", "side": "SELL", "type": "MARKET",
                                                      "quantity": str(half), "reduceOnly": "true",
                                                      "newOrderRespType": "RESULT"})
        assert r.json["status"] == "FILLED"
        st2 = await c.state(symbol="ETHUSDC")
        assert Decimal(st2["positions"]["ETHUSDC"]["amount"]) == qty - half
        assert Decimal(st2["positions"]["ETHUSDC"]["entry_price"]) == entry
        realized = Decimal(st2["positions"]["ETHUSDC"]["realized_pnl"])
        assert realized == ((Decimal(r.json["avgPrice"]) - entry) * half).quantize(Decimal("0.00000001"), ROUND_HALF_UP) or \
            realized < 0  # several bid levels: at least the sign and the wallet identity below
        assert realized < 0 and Decimal(r.json["avgPrice"]) <= bid
        wallet = Decimal(st2["balances"]["USDC"])
        assert wallet == Decimal(100000) + realized - Decimal(st2["positions"]["ETHUSDC"]["commission"])
        trades = await c.signed("GET", "/fapi/v1/userTrades", {"symbol": "ETHUSDC"})
        assert sum(Decimal(t["qty"]) for t in trades.json if t["side"] == "BUY") == qty
        income = await c.signed("GET", "/fapi/v1/income", {"symbol": "ETHUSDC"})
        kinds = {i["incomeType"] for i in income.json}
        assert kinds == {"COMMISSION", "REALIZED_PNL"}
        assert sum(Decimal(i["income"]) for i in income.json) == wallet - Decimal(100000)


async def test_account_views_v2_v3_balance_leverage_commission(sim):
    async with SimClient.for_sim(sim) as c:
        await c.admin("POST", "/sim/position", {"account": "main", "symbol": "BTCUSDT", "amount": "-0.010",
                                                "entry_price": "60000"})
        v2 = (await c.signed("GET", "/fapi/v2/positionRisk")).json
        assert {p["symbol"] for p in v2} == {"ETHUSDC", "BTCUSDT", "SOLUSDT"}
        btc = next(p for p in v2 if p["symbol"] == "BTCUSDT")
        assert btc["positionAmt"] == "-0.010" and Decimal(btc["entryPrice"]) == 60000 and btc["leverage"] == "20"
        assert Decimal(btc["unRealizedProfit"]) == ((Decimal(btc["markPrice"]) - 60000) * Decimal("-0.010")).quantize(
            Decimal("0.00000001"))
        v3 = (await c.signed("GET", "/fapi/v3/positionRisk")).json
        assert [p["symbol"] for p in v3] == ["BTCUSDT"] and "leverage" not in v3[0]
        assert v3[0]["marginAsset"] == "USDT"
        for ver in (2, 3):
            acct = (await c.signed("GET", f"/fapi/v{ver}/account")).json
            assets = {a["asset"]: a for a in acct["assets"]}
            assert assets["USDT"]["walletBalance"] == "100000.00000000"
            assert "totalWalletBalance" in acct and "positions" in acct
            # single-asset mode: the totals are the USDT asset's alone (the USDC wallet is not in them)
            assert acct["totalWalletBalance"] == assets["USDT"]["walletBalance"]
        bal = (await c.signed("GET", "/fapi/v3/balance")).json
        assert {b["asset"] for b in bal} == {"USDT", "USDC"}
        lev = (await c.signed("POST", "/fapi/v1/leverage", {"symbol": "BTCUSDT", "leverage": 5})).json
        assert lev == {"leverage": 5, "maxNotionalValue": "100000000", "symbol": "BTCUSDT"}  # bracket 6: 5x up to 100 M
        bad = (await c.signed("POST", "/fapi/v1/leverage", {"symbol": "BTCUSDT", "leverage": 200})).json
        assert bad["code"] == -4028
        cr = (await c.signed("GET", "/fapi/v1/commissionRate", {"symbol": "ETHUSDC"})).json
        assert cr == {"symbol": "ETHUSDC", "makerCommissionRate": "0.0002", "takerCommissionRate": "0.0005",
                      "rpiCommissionRate": "0.0002"}
        assert (await c.signed("GET", "/fapi/v1/feeBurn")).json == {"feeBurn": False}   # the BNB discount switch
        assert (await c.signed("POST", "/fapi/v1/feeBurn", {"feeBurn": "true"})).json == {"code": 200, "msg": "success"}
        assert (await c.signed("GET", "/fapi/v1/feeBurn")).json == {"feeBurn": True}
        assert (await c.signed("GET", "/fapi/v2/account")).json["feeBurn"] is True   # the account says it too
        assert (await c.signed("POST", "/fapi/v1/feeBurn", {"feeBurn": "yes"})).json["code"] == -1130
        assert (await c.signed("POST", "/fapi/v1/feeBurn", {})).json["code"] == -1102
        assert (await c.signed("GET", "/fapi/v1/positionSide/dual")).json == {"dualSidePosition": False}


@pytest.mark.parametrize("amount, entry, has_one", [("-0.010", "60000", True), ("-30.000", "60000", True),
                                                    ("30.000", "60000", True), ("0.010", "60000", False)])
async def test_position_risk_names_the_cross_liquidation_price(sim_factory, amount, entry, has_one):
    """Binance's single-asset cross formula: at the price, the wallet plus the position's loss is its
    maintenance margin (notional x rate - cum, of the position's bracket). A long the wallet carries
    to a price of 0 has none ("0"), a short always has one."""
    sim = await sim_factory(symbols=["BTCUSDT", "ETHUSDC"])
    async with SimClient.for_sim(sim) as c:
        await c.admin("POST", "/sim/position", {"account": "main", "symbol": "BTCUSDT", "amount": amount,
                                                "entry_price": entry})
        await c.admin("POST", "/sim/position", {"account": "main", "symbol": "ETHUSDC", "amount": "1.000"})  # another asset's
        wallet = next(Decimal(b["crossWalletBalance"]) for b in (await c.signed("GET", "/fapi/v2/balance")).json
                      if b["asset"] == "USDT")
        size, side = abs(Decimal(amount)), (1 if Decimal(amount) > 0 else -1)
        table = (await c.signed("GET", "/fapi/v1/leverageBracket", {"symbol": "BTCUSDT"})).json[0]["brackets"]
        mark = Decimal((await c.public("GET", "/fapi/v1/premiumIndex", {"symbol": "BTCUSDT"})).json["markPrice"])
        row = next(r for r in table if r["notionalFloor"] <= size * mark < r["notionalCap"])
        rate, cum = Decimal(str(row["maintMarginRatio"])), Decimal(str(row["cum"]))
        assert (row["bracket"] == 1) == (size < 1)   # 0.01 BTC in the first; 30 BTC (1.8 M) in the third
        expected = (wallet + cum - side * size * Decimal(entry)) / (size * rate - side * size)
        for version in (2, 3):
            btc = next(p for p in (await c.signed("GET", f"/fapi/v{version}/positionRisk")).json
                       if p["symbol"] == "BTCUSDT")
            liq = Decimal(btc["liquidationPrice"])
            if expected > 0:
                assert abs(liq - expected) < Decimal("0.00000001"), (btc, expected)
                equity = wallet + side * size * (liq - Decimal(entry))
                assert abs(equity - (size * liq * rate - cum)) < Decimal("0.001")   # maintenance, no more
            else:
                assert btc["liquidationPrice"] == "0"
        assert (expected > 0) == has_one   # a short always; a long only when the wallet cannot carry it to 0


async def test_unknown_path_and_malformed_parameters_get_4xx_and_the_sim_keeps_running(sim):
    async with SimClient.for_sim(sim) as c:
        r = await c.public("GET", "/fapi/v1/nothing")
        assert r.status == 404
        r = await c.public("GET", "/fapi/v1/depth", {"symbol": "ETHUSDC", "limit": "abc"})
        assert (r.status, r.json["code"]) == (400, -1130)
        for limit in (25, 7, 400):   # a number that is not one of the depths: INVALID_DEPTH_LIMIT
            r = await c.public("GET", "/fapi/v1/depth", {"symbol": "ETHUSDC", "limit": limit})
            assert (r.status, r.json) == (400, {"code": -4021, "msg": f"{limit} is not valid depth limit."})
        r = await c.public("GET", "/fapi/v1/depth", {"symbol": "XXX"})
        assert r.json["code"] == -1121
        r = await c.public("GET", "/fapi/v1/depth")
        assert r.json["code"] == -1102
        r = await c.signed("POST", "/fapi/v1/batchOrders", {"batchOrders": "[{not json"})
        assert r.json["code"] == -1130
        r = await c.signed("GET", "/fapi/v1/order", {"symbol": "ETHUSDC"})
        assert r.json["code"] == -1102
        r = await c.signed("GET", "/fapi/v1/order", {"symbol": "ETHUSDC", "orderId": "x1"})
        assert r.json["code"] == -1102
        assert (await c.public("GET", "/fapi/v1/ping")).status == 200


async def test_public_trades_agg_trades_and_klines(sim_factory):
    sim = await sim_factory(symbols=["SOLUSDT"])
    async with SimClient.for_sim(sim) as c:
        r = await c.signed("POST", "/fapi/v1/order", {"symbol": "SOLUSDT", "side": "BUY", "type": "MARKET",
                                                      "quantity": "2.00", "newOrderRespType": "RESULT"})
        assert r.json["status"] == "FILLED"
        trades = (await c.public("GET", "/fapi/v1/trades", {"symbol": "SOLUSDT", "limit": 5})).json
        assert trades and {"id", "price", "qty", "quoteQty", "time", "isBuyerMaker"} <= set(trades[-1])
        assert trades[-1]["isBuyerMaker"] is False  # our market buy was the taker
        agg = (await c.public("GET", "/fapi/v1/aggTrades", {"symbol": "SOLUSDT"})).json
        hour = {"symbol": "SOLUSDT", "startTime": agg[-1]["T"] - 3_600_000, "endTime": agg[-1]["T"]}
        assert (await c.public("GET", "/fapi/v1/aggTrades", hour)).json[-1] == agg[-1]
        wide = await c.public("GET", "/fapi/v1/aggTrades", {**hour, "startTime": hour["startTime"] - 1})
        assert (wide.status, wide.json["code"]) == (400, -1127)   # a window of an hour at most, as Binance's
        assert agg[-1]["a"] == trades[-1]["id"] and agg[-1]["m"] is False
        # the old trades lookup takes the API key (MARKET_DATA), no signature
        unkeyed = await c.public("GET", "/fapi/v1/historicalTrades", {"symbol": "SOLUSDT"})
        assert (unkeyed.status, unkeyed.json["code"]) == (401, -2014)
        old = (await c.keyed("GET", "/fapi/v1/historicalTrades", {"symbol": "SOLUSDT",
                                                                  "fromId": trades[-1]["id"], "limit": 1})).json
        assert old == trades[-1:]
        k = (await c.public("GET", "/fapi/v1/klines", {"symbol": "SOLUSDT", "interval": "1m", "limit": 3})).json
        assert 1 <= len(k) <= 3
        open_time, o, h, low, close, volume, close_time = k[-1][:7]
        assert close_time == open_time + 59_999 and Decimal(low) <= Decimal(o) <= Decimal(h)
        info = (await c.public("GET", "/fapi/v1/exchangeInfo")).json
        tick = next(f["tickSize"] for s in info["symbols"] if s["symbol"] == "SOLUSDT" for f in s["filters"]
                    if f["filterType"] == "PRICE_FILTER")
        assert all(Decimal(x) % Decimal(tick) == 0 for x in (o, h, low, close))   # on the tick, as trades are
        assert Decimal(volume) >= Decimal("2.00")
        three_days = (await c.public("GET", "/fapi/v1/klines", {"symbol": "SOLUSDT", "interval": "3d"})).json[-1]
        assert three_days[0] % (3 * 86_400_000) == 0 and three_days[6] == three_days[0] + 3 * 86_400_000 - 1
        for interval, weekday in (("1w", 0), ("1M", None)):   # a week opens on Monday, a month on its 1st (UTC)
            row = (await c.public("GET", "/fapi/v1/klines", {"symbol": "SOLUSDT", "interval": interval})).json[-1]
            opened, closed = (datetime.fromtimestamp(ms / 1000, timezone.utc) for ms in (row[0], row[6] + 1))
            assert opened.time() == closed.time() == dt_time(0) and Decimal(row[5]) >= Decimal("2.00")
            if weekday is None:
                assert opened.day == closed.day == 1 and (closed.month - opened.month) % 12 == 1
            else:
                assert opened.weekday() == weekday and (closed - opened).days == 7
        bad = await c.public("GET", "/fapi/v1/klines", {"symbol": "SOLUSDT", "interval": "7m"})
        assert bad.json["code"] == -1120
        now_ms = int(time.time() * 1000)
        for path, key in (("/fapi/v1/klines", "symbol"), ("/fapi/v1/markPriceKlines", "symbol"),
                          ("/fapi/v1/indexPriceKlines", "pair")):   # a window upside down: refused, not []
            bad = await c.public("GET", path, {key: "SOLUSDT", "interval": "1m", "startTime": now_ms,
                                               "endTime": now_ms - 600_000})
            assert (bad.status, bad.json) == (400, {"code": -1023, "msg": "Start time is greater than end time."})
        bad = await c.public("GET", "/fapi/v1/trades", {"symbol": "SOLUSDT", "limit": 5000})
        assert bad.json["code"] == -1130


async def test_continuous_mark_index_and_premium_klines(sim_factory):
    """The kline families Binance serves beside /klines (engines read the mark's candles for funding):
    the perpetual's continuous candles are its klines; the mark's follow the mid (the mark), the
    index's sit INDEX_RATIO below them, the premium index's is the constant basis between the two."""
    sim = await sim_factory(symbols=["SOLUSDT"])
    async with SimClient.for_sim(sim) as c:
        await c.admin("POST", "/sim/market/freeze", {"frozen": True, "symbol": "SOLUSDT"})   # one minute, one mark

        async def get(path: str, **params: str) -> object:
            return (await c.public("GET", f"/fapi/v1/{path}", {"interval": "1m", "limit": "3", **params})).json

        plain = await get("klines", symbol="SOLUSDT")
        cont = await get("continuousKlines", pair="SOLUSDT", contractType="PERPETUAL")
        assert cont == plain
        mark, index = await get("markPriceKlines", symbol="SOLUSDT"), await get("indexPriceKlines", pair="SOLUSDT")
        premium = await get("premiumIndexKlines", symbol="SOLUSDT")
        for rows in (mark, index, premium):
            assert [r[0] for r in rows] == [r[0] for r in plain]
            assert all(len(r) == 12 and r[6] == r[0] + 59_999 and r[5] == "0" for r in rows)
        for m, i in zip(mark, index):
            assert Decimal(m[3]) <= Decimal(m[1]) <= Decimal(m[2]) and Decimal(m[3]) <= Decimal(m[4]) <= Decimal(m[2])
            assert abs(Decimal(i[4]) - Decimal(m[4]) * Decimal("0.99995")) < Decimal("0.00000002")
        assert {r[4] for r in premium} == {"0.00005000"}
        live = (await c.public("GET", "/fapi/v1/premiumIndex", {"symbol": "SOLUSDT"})).json
        assert (mark[-1][4], index[-1][4]) == (live["markPrice"], live["indexPrice"])   # the open candle's close: now
        for path, params, code in (("continuousKlines", {"pair": "SOLUSDT", "contractType": "CURRENT_QUARTER"}, -1121),
                                   ("continuousKlines", {"pair": "SOLUSDT", "contractType": "CURRENT_MONTH"}, -1130),
                                   ("continuousKlines", {"pair": "SOLUSDT", "contractType": "SOON"}, -1130),
                                   ("continuousKlines", {"pair": "SOLUSDT"}, -1102),
                                   ("indexPriceKlines", {"symbol": "SOLUSDT"}, -1102),
                                   ("markPriceKlines", {"symbol": "SOLUSDT", "interval": "7m"}, -1120),
                                   ("premiumIndexKlines", {"symbol": "NOPEUSDT"}, -1121)):
            bad = await c.public("GET", f"/fapi/v1/{path}", {"interval": "1m", **params})
            assert bad.status == 400 and bad.json["code"] == code, (path, params, bad.json)


async def test_order_test_all_orders_tickers_and_account_settings(sim):
    async with SimClient.for_sim(sim) as c:
        price = await _far_bid(c)
        order = {"symbol": "ETHUSDC", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "price": price,
                 "quantity": "0.010"}
        assert (await c.signed("POST", "/fapi/v1/order/test", order)).json == {}
        assert (await c.signed("POST", "/fapi/v1/order/test", {**order, "quantity": "0.001"})).json["code"] == -4164
        assert (await c.state(symbol="ETHUSDC"))["open_orders"] == []  # a test order is never placed
        placed = (await c.signed("POST", "/fapi/v1/order", order)).json
        await c.signed("DELETE", "/fapi/v1/order", {"symbol": "ETHUSDC", "orderId": placed["orderId"]})
        history = (await c.signed("GET", "/fapi/v1/allOrders", {"symbol": "ETHUSDC"})).json
        assert [(o["orderId"], o["status"]) for o in history] == [(placed["orderId"], "CANCELED")]
        more = [(await c.signed("POST", "/fapi/v1/order", order)).json["orderId"] for _ in range(2)]
        newest = (await c.signed("GET", "/fapi/v1/allOrders", {"symbol": "ETHUSDC", "limit": 1})).json
        assert [o["orderId"] for o in newest] == more[-1:]   # no orderId: the most recent
        page = (await c.signed("GET", "/fapi/v1/allOrders", {"symbol": "ETHUSDC", "orderId": placed["orderId"],
                                                             "limit": 2})).json
        assert [o["orderId"] for o in page] == [placed["orderId"], more[0]]   # from orderId on, oldest first
        # without a symbol (optional since 2026-08-25): every symbol's, by time; an orderId still needs one
        sol_mark = (await c.public("GET", "/fapi/v1/ticker/price", {"symbol": "SOLUSDT"})).json["price"]
        sol_price = str(round(float(sol_mark) * 0.8, 2))
        sol = (await c.signed("POST", "/fapi/v1/order", {**order, "symbol": "SOLUSDT", "price": sol_price,
                                                         "quantity": "1"})).json
        every = (await c.signed("GET", "/fapi/v1/allOrders")).json
        assert [(o["symbol"], o["orderId"]) for o in every] == [("ETHUSDC", placed["orderId"])] + [
            ("ETHUSDC", i) for i in more] + [("SOLUSDT", sol["orderId"])], every
        newest = (await c.signed("GET", "/fapi/v1/allOrders", {"limit": 1})).json
        assert [o["orderId"] for o in newest] == [sol["orderId"]]
        alone = await c.signed("GET", "/fapi/v1/allOrders", {"orderId": placed["orderId"]})
        assert (alone.status, alone.json["code"]) == (400, -1102), alone.json
        await c.signed("DELETE", "/fapi/v1/order", {"symbol": "SOLUSDT", "orderId": sol["orderId"]})
        week = 7 * 86_400_000
        for path in ("/fapi/v1/allOrders", "/fapi/v1/userTrades"):   # a window of 7 days at most
            t = placed["updateTime"]
            assert (await c.signed("GET", path, {"symbol": "ETHUSDC", "startTime": t - week, "endTime": t})).status == 200
            wide = await c.signed("GET", path, {"symbol": "ETHUSDC", "startTime": t - week - 1, "endTime": t})
            assert (wide.status, wide.json["code"]) == (400, -1127), (path, wide.json)
        amend = await c.signed("PUT", "/fapi/v1/order", {"symbol": "ETHUSDC", "orderId": more[0], "side": "BUY",
                                                         "quantity": "0.001", "price": price})
        assert amend.json["code"] == -5029   # an amendment's own MIN_NOTIONAL code
        await c.signed("DELETE", "/fapi/v1/allOpenOrders", {"symbol": "ETHUSDC"})
        used = int((await c.public("GET", "/fapi/v1/premiumIndex", {"symbol": "ETHUSDC"})).headers["X-MBX-USED-WEIGHT-1M"])
        r = await c.public("GET", "/fapi/v1/premiumIndex")   # every symbol: weight 10
        assert int(r.headers["X-MBX-USED-WEIGHT-1M"]) - used == 10
        tp = (await c.public("GET", "/fapi/v1/ticker/price", {"symbol": "ETHUSDC"})).json
        assert tp["symbol"] == "ETHUSDC" and 2500 < float(tp["price"]) < 3500
        t24 = (await c.public("GET", "/fapi/v1/ticker/24hr")).json
        assert {t["symbol"] for t in t24} == {"ETHUSDC", "BTCUSDT", "SOLUSDT"}
        limits = (await c.signed("GET", "/fapi/v1/rateLimit/order")).json
        assert {(x["interval"], x["limit"]) for x in limits} == {("SECOND", 300), ("MINUTE", 1200)}
        r = await c.signed("POST", "/fapi/v1/marginType", {"symbol": "ETHUSDC", "marginType": "CROSSED"})
        assert r.json["code"] == -4046  # already cross
        r = await c.signed("POST", "/fapi/v1/positionSide/dual", {"dualSidePosition": "false"})
        assert r.json["code"] == -4059  # already one-way
        r = await c.signed("POST", "/fapi/v1/order", {**order, "positionSide": "LONG"})
        assert r.json["code"] == -4061


async def test_limits_the_exchange_changes_are_listed_and_judged_by_and_an_account_may_have_its_own(sim_factory):
    """Binance may lower the IP's weight or the order limits (announced), and holds some accounts to
    order limits of their own (GET /fapi/v1/rateLimit/order): exchangeInfo and rateLimit/order list the
    limits the requests are judged by, the counts so far kept."""
    clock = ManualClock()   # one 10-second block and one minute throughout
    sim = await sim_factory(clock=clock, config={"accounts": [{"name": "main"}, {"name": "held", "orders_per_10s": 3,
                                                                                  "orders_per_minute": 100}]})
    main, held = (SimClient(sim.rest_url, key, secret) for _, key, secret in sim.accounts[:2])
    async with main, held:
        def order(tag: str, price: str) -> dict[str, str]:
            return {"symbol": "ETHUSDC", "side": "BUY", "type": "LIMIT", "timeInForce": "GTX", "quantity": "0.010",
                    "price": price, "newClientOrderId": tag}

        price = await _far_bid(main)
        own = (await held.signed("GET", "/fapi/v1/rateLimit/order", timestamp=clock.now)).json
        assert {(x["interval"], x["intervalNum"], x["limit"]) for x in own} == {("SECOND", 10, 3), ("MINUTE", 1, 100)}
        answers = [await held.signed("POST", "/fapi/v1/order", order(f"h{i}", price), timestamp=clock.now) for i in range(4)]
        assert [a.status for a in answers] == [200, 200, 200, 429]
        assert answers[3].json == {"code": -1015, "msg": "Too many new orders; current limit is 3 orders per 10 SECOND."}
        assert (await main.signed("POST", "/fapi/v1/order", order("m0", price), timestamp=clock.now)).status == 200   # main keeps 300

        changed = await main.admin("POST", "/sim/limits", {"weight_per_minute": 600, "orders_per_10s": 100})
        assert changed == {"max_modifies_per_order": 9999, "weight_per_minute": 600, "orders_per_10s": 100,
                           "orders_per_minute": 1200}
        info = (await main.public("GET", "/fapi/v1/exchangeInfo")).json
        listed = {(x["rateLimitType"], x["interval"]): x["limit"] for x in info["rateLimits"]}
        assert listed == {("REQUEST_WEIGHT", "MINUTE"): 600, ("ORDERS", "SECOND"): 100, ("ORDERS", "MINUTE"): 1200}
        assert {x["limit"] for x in (await held.signed("GET", "/fapi/v1/rateLimit/order", timestamp=clock.now)).json} == {3, 100}
        assert await main.admin("POST", "/sim/limits", {"account": "held", "orders_per_10s": 50}) == {
            "max_modifies_per_order": 9999, "weight_per_minute": 600, "orders_per_10s": 50, "orders_per_minute": 100}
        assert (await held.signed("POST", "/fapi/v1/order", order("h4", price), timestamp=clock.now)).status == 200   # 5 of 50 now
        # an injected -1015 names the limit of the key's account
        await main.admin("POST", "/sim/fault/rest", {"mode": "429", "answer": "-1015", "path": "/fapi/v1/order"})
        refused = await held.signed("POST", "/fapi/v1/order", order("h5", price), timestamp=clock.now)
        assert (refused.status, refused.json["msg"]) == (429, "Too many new orders; current limit is 100 orders per MINUTE.")
        # its own limits dropped: the exchange's (100 a 10 s, 1,200 a minute, as changed above) hold it again
        assert await main.admin("POST", "/sim/limits", {"account": "held", "own": False}) == {
            "max_modifies_per_order": 9999, "weight_per_minute": 600, "orders_per_10s": 100, "orders_per_minute": 1200}
        own = (await held.signed("GET", "/fapi/v1/rateLimit/order", timestamp=clock.now)).json
        assert {(x["interval"], x["limit"]) for x in own} == {("SECOND", 100), ("MINUTE", 1200)}

        # the weight: a read past 600 in the minute is refused, naming the new limit
        heavy = None
        for _ in range(40):
            heavy = await main.public("GET", "/fapi/v1/depth", {"symbol": "ETHUSDC", "limit": 1000})   # 20 each
            if heavy.status != 200:
                break
        assert heavy is not None and heavy.status == 429 and "is 600 requests per minute" in heavy.json["msg"]

        for bad, why in (({"account": "held", "weight_per_minute": 10}, "own order limits"),
                         ({"own": False}, "own: false takes an account"),
                         ({"account": "held", "own": False, "orders_per_10s": 5}, "own: false takes an account"),
                         ({"orders_per_10s": 0}, "orders_per_10s must be"), ({"weight": 5}, "takes no field")):
            async with aiohttp.ClientSession() as http:
                async with http.post(sim.rest_url + "/sim/limits", json=bad) as r:
                    assert r.status == 400 and why in (await r.json())["error"], bad
        assert (await main.admin("POST", "/sim/limits", {}))["weight_per_minute"] == 600   # unchanged by them


async def test_parameters_are_read_as_binance_reads_them_not_as_python_does(sim):
    """Integers are plain ASCII digits (Python's int() also takes '+1', ' 1', '1\\n', '1_000' and other
    scripts' digits), and a GET's parameters are its query string's only: a client whose formatting or
    transport has such a bug is refused here as it would be live, not served."""
    async with SimClient.for_sim(sim) as c:
        key = {"X-MBX-APIKEY": c.api_key}
        now = int(time.time() * 1000)
        for ts in (f" {now}", f"{now}\n", f"+{now}", f"{now:_}", "".join(chr(0x660 + int(d)) for d in str(now))):
            payload = f"timestamp={quote(ts)}"
            r = await c._do("GET", "/fapi/v2/balance", f"{payload}&signature={sign(c.api_secret, payload)}", "", key)
            assert (r.status, r.json["code"]) == (400, -1102), (ts, r.json)
        for recv in ("+5000", " 5000", "5000\n", "5_000"):
            r = await c.signed("GET", "/fapi/v2/balance", {"recvWindow": recv})
            assert (r.status, r.json["code"]) == (400, -1130), (recv, r.json)
        r = await c.signed("POST", "/fapi/v1/countdownCancelAll", {"symbol": "ETHUSDC", "countdownTime": "1_000"})
        assert (r.status, r.json["code"]) == (400, -1102), r.json
        r = await c.signed("POST", "/fapi/v1/leverage", {"symbol": "ETHUSDC", "leverage": "1\n"})
        assert (r.status, r.json["code"]) == (400, -1102), r.json
        r = await c.signed("GET", "/fapi/v1/allOrders", {"symbol": "ETHUSDC", "limit": "+5"})
        assert (r.status, r.json["code"]) == (400, -1130), r.json
        # a signed GET sent whole in a body: its query is empty, so nothing of it is read
        r = await c.signed("GET", "/fapi/v2/balance", in_body=True)
        assert (r.status, r.json["code"]) == (400, -1102), r.json
        # the same parameters in the query string are served; a POST's body is read
        assert (await c.signed("GET", "/fapi/v2/balance")).status == 200
        r = await c.signed("POST", "/fapi/v1/countdownCancelAll", {"symbol": "ETHUSDC", "countdownTime": "0"},
                           in_body=True)
        assert r.status == 200, r.json


async def test_opponent_10_and_20_are_refused_when_placing_and_amending(sim):
    """Binance took priceMatch OPPONENT_10 and OPPONENT_20 out of placing and amending orders (single and
    batch) on 2025-10-23: an engine crossing deep with them is refused as an unknown mode (-5037),
    nothing placed or changed; OPPONENT_5 and the QUEUE modes are taken."""
    async with SimClient.for_sim(sim) as c:
        base = {"symbol": "ETHUSDC", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.010"}
        for pm in ("OPPONENT_10", "OPPONENT_20"):
            r = await c.signed("POST", "/fapi/v1/order", {**base, "priceMatch": pm})
            assert (r.status, r.json) == (400, {"code": -5037, "msg": "Invalid price match"}), (pm, r.json)
            r = await c.signed("POST", "/fapi/v1/batchOrders",
                               {"batchOrders": json.dumps([{**base, "priceMatch": pm}])})
            assert r.status == 200 and r.json[0]["code"] == -5037, r.json
        placed = await c.signed("POST", "/fapi/v1/order", {**base, "priceMatch": "QUEUE_20"})
        assert placed.status == 200 and placed.json["priceMatch"] == "QUEUE_20", placed.json
        oid = placed.json["orderId"]
        for pm in ("OPPONENT_10", "OPPONENT_20"):
            r = await c.signed("PUT", "/fapi/v1/order", {"symbol": "ETHUSDC", "orderId": oid, "side": "BUY",
                                                         "quantity": "0.010", "priceMatch": pm})
            assert (r.status, r.json["code"]) == (400, -5037), (pm, r.json)
        st = await c.state(symbol="ETHUSDC")
        assert [(o["orderId"], o["price"]) for o in st["open_orders"]] == [(oid, placed.json["price"])]
        assert st["counters"]["orders_placed"] == 1
