"""Funding, rate limits and injected faults over loopback: what a market maker must survive."""

from __future__ import annotations

import json
import time
from decimal import ROUND_HALF_UP, Decimal

import aiohttp
import pytest

from fleet.sim.testkit import ManualClock, SimClient

pytestmark = pytest.mark.asyncio


async def test_funding_settlement_charges_exact_fee_and_pushes_the_real_cross_frame(sim_factory):
    sim = await sim_factory(config={"funding_interval_s": 1.0})
    async with SimClient.for_sim(sim) as c, aiohttp.ClientSession() as s:
        key = (await c.keyed("POST", "/fapi/v1/listenKey")).json["listenKey"]
        ws = await s.ws_connect(f"{sim.ws_url}/private/ws/{key}")
        await c.admin("POST", "/sim/funding/rate", {"symbol": "ETHUSDC", "rate": "0.00050000"})
        await c.admin("POST", "/sim/funding/rate", {"symbol": "BTCUSDT", "rate": "0.00030000"})
        await c.admin("POST", "/sim/position", {"account": "main", "symbol": "ETHUSDC", "amount": "0.200",
                                                "entry_price": "3000"})
        await c.admin("POST", "/sim/position", {"account": "main", "symbol": "BTCUSDT", "amount": "-0.010",
                                                "entry_price": "60000"})
        by_asset: dict[str, dict] = {}
        deadline = time.monotonic() + 10
        while len(by_asset) < 2 and time.monotonic() < deadline:
            f = json.loads((await ws.receive(timeout=10)).data)
            if f["e"] == "ACCOUNT_UPDATE" and f["a"]["m"] == "FUNDING_FEE":
                by_asset.setdefault(f["a"]["B"][0]["a"], f)
        assert set(by_asset) == {"USDC", "USDT"}
        for frame in by_asset.values():  # the real cross frame: the margin asset only, no a.S, P empty
            assert list(frame["a"]) == ["B", "P", "m"] and frame["a"]["P"] == [] and frame["T"] == frame["E"]
        # a symbol-less frame is attributed through the income history: same time, asset and amount
        income = (await c.signed("GET", "/fapi/v1/income", {"incomeType": "FUNDING_FEE"})).json
        fees = {}
        for frame in by_asset.values():
            bal = frame["a"]["B"][0]
            [rec] = [i for i in income if i["time"] == frame["E"] and i["asset"] == bal["a"]
                     and i["income"] == bal["bc"]]
            assert isinstance(rec["tranId"], int) and rec["incomeType"] == "FUNDING_FEE"
            fees[rec["symbol"]] = frame
        assert set(fees) == {"ETHUSDC", "BTCUSDT"}
        for symbol, pa, rate, asset in (("ETHUSDC", "0.200", "0.0005", "USDC"), ("BTCUSDT", "-0.010", "0.0003", "USDT")):
            frame = fees[symbol]
            hist = (await c.public("GET", "/fapi/v1/fundingRate", {"symbol": symbol})).json
            settled = next(h for h in hist if h["fundingTime"] == frame["E"])
            assert Decimal(settled["fundingRate"]) == Decimal(rate)
            expected = (-Decimal(pa) * Decimal(settled["markPrice"]) * Decimal(rate)).quantize(Decimal("0.00000001"), ROUND_HALF_UP)
            bal = frame["a"]["B"][0]
            assert bal["a"] == asset and Decimal(bal["bc"]) == expected and frame["a"]["P"] == []
            assert frame["E"] % 1000 == 0  # settlements sit on the interval grid
        # a positive rate: the long pays, the short receives
        assert Decimal(fees["ETHUSDC"]["a"]["B"][0]["bc"]) < 0 < Decimal(fees["BTCUSDT"]["a"]["B"][0]["bc"])
        income = (await c.signed("GET", "/fapi/v1/income", {"incomeType": "FUNDING_FEE"})).json
        assert {i["symbol"] for i in income} == {"ETHUSDC", "BTCUSDT"}
        st = await c.state()
        assert Decimal(st["positions"]["ETHUSDC"]["funding"]) == sum(
            Decimal(i["income"]) for i in income if i["symbol"] == "ETHUSDC")
        mp = (await c.public("GET", "/fapi/v1/premiumIndex", {"symbol": "ETHUSDC"})).json
        assert mp["lastFundingRate"] == "0.00050000" and mp["nextFundingTime"] % 1000 == 0
        await ws.close()


async def test_forced_settlement_now(sim):
    async with SimClient.for_sim(sim) as c:
        await c.admin("POST", "/sim/funding/rate", {"symbol": "SOLUSDT", "rate": "0.001"})
        await c.admin("POST", "/sim/position", {"account": "main", "symbol": "SOLUSDT", "amount": "-10.00"})
        res = await c.admin("POST", "/sim/funding/settle", {"symbol": "SOLUSDT"})
        [charge] = res["charged"]
        expected = (Decimal("10") * Decimal(charge["mark_price"]) * Decimal("0.001")).quantize(Decimal("0.00000001"), ROUND_HALF_UP)
        assert Decimal(charge["fee"]) == expected > 0  # shorts receive when the rate is positive
        st = await c.state(symbol="SOLUSDT")
        assert Decimal(st["balances"]["USDT"]) == Decimal(100000) + expected


async def test_weight_limit_answers_429_then_growing_418_bans(sim_factory):
    clock = ManualClock()
    sim = await sim_factory(config={"rate_limits": {"weight_per_minute": 10, "ban_base_s": 2, "ban_after_429s": 3}},
                            clock=clock)
    async with SimClient.for_sim(sim) as c:
        for i in range(10):
            r = await c.public("GET", "/fapi/v1/time")
            assert r.status == 200 and r.headers["X-MBX-USED-WEIGHT-1M"] == str(i + 1)
        for _ in range(3):   # up to ban_after_429s answers of 429
            r = await c.public("GET", "/fapi/v1/time")
            assert (r.status, r.json["code"]) == (429, -1003)
            assert int(r.headers["Retry-After"]) == 59
        r = await c.public("GET", "/fapi/v1/time")  # kept going after them: banned
        assert r.status == 418 and "banned until" in r.json["msg"]
        until = r.json["msg"].split("banned until ")[1].split(".")[0]
        assert r.headers["Retry-After"] == "2"
        clock.now += 1_000
        r = await c.public("GET", "/fapi/v1/time")  # during the ban: the same ban, not a longer one
        assert r.status == 418 and r.headers["Retry-After"] == "1" and until in r.json["msg"]
        clock.now += 1_500  # the ban over, the minute not: over the limit still, 429s, then a ban twice as long
        for _ in range(3):
            assert (await c.public("GET", "/fapi/v1/time")).status == 429
        r = await c.public("GET", "/fapi/v1/time")
        assert r.status == 418 and r.headers["Retry-After"] == "4"
        clock.now += 60_000  # ban over, new minute: served again
        r = await c.public("GET", "/fapi/v1/time")
        assert r.status == 200 and r.headers["X-MBX-USED-WEIGHT-1M"] == "1"


async def test_funding_rate_and_funding_info_share_a_limit_of_their_own_apart_from_the_weight(sim_factory):
    clock = ManualClock()
    sim = await sim_factory(config={"rate_limits": {"funding_reads_per_5min": 4, "ban_after_429s": 2}}, clock=clock)
    async with SimClient.for_sim(sim) as c:
        for path in ("/fapi/v1/fundingRate", "/fapi/v1/fundingInfo") * 2:
            r = await c.public("GET", path, {"symbol": "ETHUSDC"} if path.endswith("Rate") else None)
            assert r.status == 200 and r.headers["X-MBX-USED-WEIGHT-1M"] == "0"   # no weight
        block_left_s = (300_000 - clock.now % 300_000 + 999) // 1000
        for path in ("/fapi/v1/fundingInfo", "/fapi/v1/fundingRate"):   # the fifth read in 5 minutes, either
            r = await c.public("GET", path)
            assert (r.status, r.json["code"]) == (429, -1003) and "5 minutes" in r.json["msg"]
            assert int(r.headers["Retry-After"]) == block_left_s
        r = await c.public("GET", "/fapi/v1/time")   # the weight's requests go on
        assert r.status == 200 and r.headers["X-MBX-USED-WEIGHT-1M"] == "1"
        r = await c.public("GET", "/fapi/v1/fundingInfo")   # kept reading after its 429s: the IP is banned
        assert r.status == 418 and "banned until" in r.json["msg"]
        assert (await c.public("GET", "/fapi/v1/time")).status == 418
        clock.now += max(block_left_s * 1000, 120_000)   # the ban and the 5-minute block over
        r = await c.public("GET", "/fapi/v1/fundingInfo")
        assert r.status == 200


async def test_order_count_limit_answers_429_with_the_counters(sim_factory):
    clock = ManualClock()
    sim = await sim_factory(config={"rate_limits": {"orders_per_10s": 3}}, clock=clock)
    async with SimClient.for_sim(sim) as c:
        bid = Decimal((await c.public("GET", "/fapi/v1/ticker/bookTicker", {"symbol": "ETHUSDC"})).json["bidPrice"])
        params = {"symbol": "ETHUSDC", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.010",
                  "price": str((bid * Decimal("0.98")).quantize(Decimal("0.01")))}
        for i in range(3):
            r = await c.signed("POST", "/fapi/v1/order", params, timestamp=clock.now)
            assert r.status == 200 and r.headers["X-MBX-ORDER-COUNT-10S"] == str(i + 1)
        r = await c.signed("POST", "/fapi/v1/order", params, timestamp=clock.now)
        assert (r.status, r.json["code"]) == (429, -1015) and "10 SECOND" in r.json["msg"]
        # the refusal says the counts too: a client that throttles on them needs them most now
        assert (r.headers["X-MBX-ORDER-COUNT-10S"], r.headers["X-MBX-ORDER-COUNT-1M"]) == ("4", "4")
        clock.now += 10_000
        r = await c.signed("POST", "/fapi/v1/order", params, timestamp=clock.now)
        assert r.status == 200 and r.headers["X-MBX-ORDER-COUNT-10S"] == "1"
        assert r.headers["X-MBX-ORDER-COUNT-1M"] == "5"


async def test_rest_faults_error_unknown_429_and_latency(sim):
    async with SimClient.for_sim(sim) as c:
        bid = Decimal((await c.public("GET", "/fapi/v1/ticker/bookTicker", {"symbol": "ETHUSDC"})).json["bidPrice"])
        params = {"symbol": "ETHUSDC", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.010",
                  "price": str((bid * Decimal("0.98")).quantize(Decimal("0.01")))}
        await c.admin("POST", "/sim/fault/rest", {"mode": "error", "count": 2, "path": "/fapi/v1/order",
                                                  "method": "POST"})
        assert (await c.public("GET", "/fapi/v1/time")).status == 200  # filters: other paths unaffected
        for _ in range(2):
            r = await c.signed("POST", "/fapi/v1/order", {**params, "newClientOrderId": "f-err"})
            assert r.status == 503 and "X-MBX-USED-WEIGHT-1M" in r.headers
        assert (await c.state(symbol="ETHUSDC"))["open_orders"] == []  # nothing executed
        await c.admin("POST", "/sim/fault/rest", {"mode": "unknown", "count": 1})
        r = await c.signed("POST", "/fapi/v1/order", {**params, "newClientOrderId": "f-unk"})
        assert r.status == 503 and r.json["msg"].startswith("Unknown error")
        st = await c.state(symbol="ETHUSDC")
        assert [o["clientOrderId"] for o in st["open_orders"]] == ["f-unk"]  # but it was executed
        await c.admin("POST", "/sim/fault/rest", {"mode": "429", "count": 1, "path": "/fapi/v1/depth"})
        r = await c.public("GET", "/fapi/v1/depth", {"symbol": "ETHUSDC"})
        assert r.status == 429 and r.headers["Retry-After"] == "1" and r.json["code"] == -1003
        assert int(r.headers["X-MBX-USED-WEIGHT-1M"]) > 0   # on every answer; this one charged nothing
        assert r.json["msg"].startswith("Too many requests; current limit of IP(127.0.0.1) is 2400 requests")
        assert (await c.public("GET", "/fapi/v1/depth", {"symbol": "ETHUSDC"})).status == 200
        await c.admin("POST", "/sim/fault/latency", {"ms": 300, "path": "/fapi/v1/ping"})
        t0 = time.monotonic()
        assert (await c.public("GET", "/fapi/v1/ping")).status == 200
        assert time.monotonic() - t0 >= 0.3
        await c.admin("POST", "/sim/fault/clear", {})
        st = await c.state()
        assert st["faults_pending"] == []


async def test_the_503s_binance_documents_by_their_message_alone(sim):
    """"Service Unavailable." (a definite failure: nothing executed) and the unknown-outcome 503 with no
    code (executed when the fault says so); the definite failure is not offered after an execution."""
    async with SimClient.for_sim(sim) as c:
        bid = Decimal((await c.public("GET", "/fapi/v1/ticker/bookTicker", {"symbol": "ETHUSDC"})).json["bidPrice"])
        params = {"symbol": "ETHUSDC", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.010",
                  "price": str((bid * Decimal("0.98")).quantize(Decimal("0.01")))}
        await c.admin("POST", "/sim/fault/rest", {"mode": "error", "answer": "503-unavailable", "count": 1,
                                                  "path": "/fapi/v1/order"})
        r = await c.signed("POST", "/fapi/v1/order", {**params, "newClientOrderId": "f-una"})
        assert (r.status, r.json) == (503, {"msg": "Service Unavailable."})
        await c.admin("POST", "/sim/fault/rest", {"mode": "exec_then_error", "answer": "503-nocode", "count": 1,
                                                  "path": "/fapi/v1/order"})
        r = await c.signed("POST", "/fapi/v1/order", {**params, "newClientOrderId": "f-noc"})
        assert (r.status, r.json) == (503, {"msg": "Unknown error, please check your request or try again later."})
        st = await c.state(symbol="ETHUSDC")
        assert [o["clientOrderId"] for o in st["open_orders"]] == ["f-noc"]
        with pytest.raises(AssertionError, match="mode error only"):
            await c.admin("POST", "/sim/fault/rest", {"mode": "late", "answer": "503-unavailable"})
        # the matching engine's recvWindow: a definite rejection, nothing executed
        await c.admin("POST", "/sim/fault/rest", {"mode": "error", "answer": "-5028", "count": 1,
                                                  "path": "/fapi/v1/order"})
        r = await c.signed("POST", "/fapi/v1/order", {**params, "newClientOrderId": "f-me"})
        assert (r.status, r.json["code"]) == (400, -5028) and "ME recvWindow" in r.json["msg"]
        st = await c.state(symbol="ETHUSDC")
        assert [o["clientOrderId"] for o in st["open_orders"]] == ["f-noc"]


async def test_freeze_stops_the_market_and_bad_admin_input_is_a_400(sim):
    async with SimClient.for_sim(sim) as c, aiohttp.ClientSession() as s:
        res = await c.admin("POST", "/sim/market/freeze", {"frozen": True, "symbol": "ETHUSDC"})
        assert res == {"symbols": ["ETHUSDC"]}
        before = (await c.state(symbol="ETHUSDC"))["markets"]["ETHUSDC"]
        ws = await s.ws_connect(f"{sim.ws_url}/market/ws/btcusdt@markPrice@1s")
        for _ in range(2):  # at least a second of market time passes
            assert json.loads((await ws.receive(timeout=10)).data)["s"] == "BTCUSDT"
        after = (await c.state(symbol="ETHUSDC"))["markets"]["ETHUSDC"]
        assert after["mid"] == before["mid"] and after["frozen"] is True
        await c.admin("POST", "/sim/market/freeze", {"frozen": False, "symbol": "ETHUSDC"})
        for body in ({"mode": "bogus"}, {"mode": "error", "count": 0}):
            async with s.post(f"{sim.rest_url}/sim/fault/rest", json=body) as r:
                assert r.status == 400 and "error" in await r.json()
        async with s.post(f"{sim.rest_url}/sim/market/jump", data="not json") as r:
            assert r.status == 400
        async with s.post(f"{sim.rest_url}/sim/market/jump", json={"symbol": "NOPE", "pct": 1}) as r:
            assert r.status == 400
        async with s.get(f"{sim.rest_url}/sim/nothing") as r:
            assert r.status == 404
        await ws.close()


async def test_price_hold_keeps_the_market_alive_without_moving_the_mid(sim):
    async with SimClient.for_sim(sim) as c, aiohttp.ClientSession() as s:
        await c.admin("POST", "/sim/market/freeze", {"frozen": True, "symbol": "ETHUSDC", "mode": "price"})
        before = (await c.state(symbol="ETHUSDC"))["markets"]["ETHUSDC"]
        ws = await s.ws_connect(f"{sim.ws_url}/market/stream?streams=ethusdc@markPrice@1s/ethusdc@aggTrade")
        seen = set()
        while {"ethusdc@markPrice@1s", "ethusdc@aggTrade"} - seen:  # frames keep flowing
            seen.add(json.loads((await ws.receive(timeout=10)).data)["stream"])
        after = (await c.state(symbol="ETHUSDC"))["markets"]["ETHUSDC"]
        assert after["mid"] == before["mid"] and after["price_held"] is True and after["frozen"] is False
        await c.admin("POST", "/sim/market/freeze", {"frozen": False, "symbol": "ETHUSDC", "mode": "price"})
        async with s.post(f"{sim.rest_url}/sim/market/freeze", json={"mode": "nope"}) as r:
            assert r.status == 400
        await ws.close()


async def test_configured_rest_latency_applies_to_every_call(sim_factory):
    sim = await sim_factory(config={"rest_latency_ms": 150})
    async with SimClient.for_sim(sim) as c:
        t0 = time.monotonic()
        assert (await c.public("GET", "/fapi/v1/time")).status == 200
        assert time.monotonic() - t0 >= 0.15


async def test_system_throttle_refuses_new_orders_but_not_reduce_only_ones_cancels_or_amends(sim):
    async with SimClient.for_sim(sim) as c:
        bid = Decimal((await c.public("GET", "/fapi/v1/ticker/bookTicker", {"symbol": "ETHUSDC"})).json["bidPrice"])
        low, high = (str((bid * Decimal(k)).quantize(Decimal("0.01"))) for k in ("0.97", "1.03"))
        buy = {"symbol": "ETHUSDC", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.010",
               "price": low}
        reducing = {**buy, "side": "SELL", "price": high, "reduceOnly": "true"}
        await c.admin("POST", "/sim/position", {"account": "main", "symbol": "ETHUSDC", "amount": "0.050"})
        first = await c.signed("POST", "/fapi/v1/order", {**buy, "newClientOrderId": "t-before"})
        counted = int(first.headers["X-MBX-ORDER-COUNT-10S"])
        await c.admin("POST", "/sim/fault/rest", {"mode": "throttle", "count": 4})
        refused = [await c.signed("POST", "/fapi/v1/order", {**buy, "newClientOrderId": "t-new"}),
                   await c.signed("POST", "/fapi/v1/order/test", buy),
                   await c.signed("POST", "/fapi/v1/batchOrders", {"batchOrders": json.dumps(
                       [{**reducing, "newClientOrderId": "t-b1"}, {**buy, "newClientOrderId": "t-b2"}])})]
        for r in refused:   # a batch holding one order that is not reduce-only is refused whole
            assert (r.status, r.json["code"]) == (503, -1008) and "Reduce-only" in r.json["msg"]
        # exempt, and the fault stays pending: a reduce-only order, a batch of them, an amend, a cancel
        passed = await c.signed("POST", "/fapi/v1/order", {**reducing, "newClientOrderId": "t-ro"})
        assert passed.status == 200 and int(passed.headers["X-MBX-ORDER-COUNT-10S"]) == counted + 1
        batch = await c.signed("POST", "/fapi/v1/batchOrders", {"batchOrders": json.dumps(
            [{**reducing, "newClientOrderId": "t-rb"}])})
        assert batch.status == 200 and batch.json[0]["clientOrderId"] == "t-rb"
        amended = await c.signed("PUT", "/fapi/v1/order", {"symbol": "ETHUSDC", "origClientOrderId": "t-before",
                                                           "side": "BUY", "quantity": "0.020", "price": low})
        assert amended.status == 200 and amended.json["origQty"] == "0.020"
        cancelled = await c.signed("DELETE", "/fapi/v1/order", {"symbol": "ETHUSDC", "origClientOrderId": "t-ro"})
        assert cancelled.status == 200
        st = await c.state(symbol="ETHUSDC")
        assert sorted(o["clientOrderId"] for o in st["open_orders"]) == ["t-before", "t-rb"]  # nothing refused ran
        assert [f["count"] for f in st["faults_pending"]] == [1] and st["server"]["throttled"] == 3
        last = await c.signed("POST", "/fapi/v1/order", {**buy, "newClientOrderId": "t-last"})
        assert last.json["code"] == -1008
        again = await c.signed("POST", "/fapi/v1/order", {**buy, "newClientOrderId": "t-after"})
        assert again.status == 200   # the fault used up: orders pass again
        st = await c.state(symbol="ETHUSDC")
        assert st["faults_pending"] == [] and st["server"]["throttled"] == 4


async def test_frame_faults_send_frames_without_fields_or_broken_then_whole_again(sim):
    """POST /sim/fault/frame: the next matching frames go out without the named fields (Binance pushes
    no N or n "if no commission"), as text that is not JSON, or cut in half; the rest stay whole."""
    async with SimClient.for_sim(sim) as c, aiohttp.ClientSession() as s:
        key = (await c.keyed("POST", "/fapi/v1/listenKey")).json["listenKey"]
        ws = await s.ws_connect(f"{sim.ws_url}/private/ws?listenKey={key}&events=ORDER_TRADE_UPDATE")
        book = await ws_book(s, sim)
        await c.admin("POST", "/sim/fault/frame", {"stream": "user", "event": "ORDER_TRADE_UPDATE",
                                                   "fields": ["o.N", "o.n"], "count": 1})
        await c.admin("POST", "/sim/fault/frame", {"stream": "user", "mode": "garbage", "count": 1})
        await c.admin("POST", "/sim/fault/frame", {"stream": "user", "mode": "truncate", "count": 1,
                                                   "symbol": "ETHUSDC"})
        assert len((await c.state())["frame_faults_pending"]) == 3
        for i in range(4):
            r = await c.signed("POST", "/fapi/v1/order", {"symbol": "ETHUSDC", "side": "BUY", "type": "LIMIT",
                                                          "timeInForce": "GTC", "quantity": "0.010",
                                                          "price": book, "newClientOrderId": f"ff-{i}"})
            assert r.status == 200, r.json
        texts = [(await ws.receive(timeout=10)).data for _ in range(4)]
        first = json.loads(texts[0])
        assert first["o"]["c"] == "ff-0" and "N" not in first["o"] and "n" not in first["o"] and "X" in first["o"]
        for broken in texts[1:3]:
            with pytest.raises(ValueError):
                json.loads(broken)
        whole = json.loads(texts[3])
        assert whole["o"]["c"] == "ff-3" and whole["o"]["N"] == "USDC" and whole["o"]["n"] == "0"
        st = await c.state()
        assert st["frame_faults_pending"] == [] and st["server"]["frames_faulted"] == 3
        for body in ({"stream": "nowhere"}, {"stream": "user", "mode": "omit"}, {"stream": "user", "count": 0,
                                                                                 "fields": ["o.N"]},
                     {"stream": "market", "fields": ["b", ""]}, {"stream": "user", "mode": "burn"},
                     {"stream": "user", "mode": "drop", "reason": 7}):
            async with s.post(f"{sim.rest_url}/sim/fault/frame", json=body) as r:
                assert r.status == 400 and "error" in await r.json(), body
        await ws.close()


async def test_a_dropped_diff_depth_event_leaves_the_gap_binance_tells_a_client_to_resync_on(sim):
    """mode drop: the frame is not sent and the connection stays, so the next diff event's pu is not the
    u the client saw last (Binance: re-initialise the local book then); a dropped user frame is simply
    missing (a new order's NEW frame, the next order's comes)."""
    async with SimClient.for_sim(sim) as c, aiohttp.ClientSession() as s:
        ws = await s.ws_connect(f"{sim.ws_url}/public/ws/ethusdc@depth@100ms")
        first = json.loads((await ws.receive(timeout=10)).data)
        await c.admin("POST", "/sim/fault/frame", {"stream": "market", "mode": "drop", "event": "depthUpdate",
                                                   "symbol": "ETHUSDC", "count": 1})
        events = [first] + [json.loads((await ws.receive(timeout=10)).data) for _ in range(6)]
        gaps = [(a["u"], b["pu"]) for a, b in zip(events, events[1:]) if b["pu"] != a["u"]]
        assert len(gaps) == 1 and gaps[0][1] > gaps[0][0]
        await ws.close()
        key = (await c.keyed("POST", "/fapi/v1/listenKey")).json["listenKey"]
        ws = await s.ws_connect(f"{sim.ws_url}/private/ws?listenKey={key}&events=ORDER_TRADE_UPDATE")
        book = await ws_book(s, sim)
        await c.admin("POST", "/sim/fault/frame", {"stream": "user", "mode": "drop", "count": 1})
        for i in range(2):
            r = await c.signed("POST", "/fapi/v1/order", {"symbol": "ETHUSDC", "side": "BUY", "type": "LIMIT",
                                                          "timeInForce": "GTC", "quantity": "0.010",
                                                          "price": book, "newClientOrderId": f"fd-{i}"})
            assert r.status == 200, r.json
        frame = json.loads((await ws.receive(timeout=10)).data)
        assert frame["o"]["c"] == "fd-1" and not ws.closed
        assert (await c.state())["server"]["frames_faulted"] >= 2
        await c.signed("DELETE", "/fapi/v1/allOpenOrders", {"symbol": "ETHUSDC"})
        await ws.close()


async def ws_book(s: aiohttp.ClientSession, sim) -> str:
    """A bid price well below ETHUSDC's touch, from its book ticker (the order rests, no fill)."""
    ws = await s.ws_connect(f"{sim.ws_url}/public/ws/ethusdc@bookTicker")
    bid = Decimal(json.loads((await ws.receive(timeout=10)).data)["b"])
    await ws.close()
    return str((bid * Decimal("0.98")).quantize(Decimal("0.01")))
