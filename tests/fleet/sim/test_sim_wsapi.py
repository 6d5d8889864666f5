"""The simulator's WebSocket API (``/ws-fapi/v1``): orders placed, amended, looked up and cancelled
over one connection, checked at the exchange (``/sim/state``); signatures, rate limits, malformed
requests, the session methods, and the REST faults it shares."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp
import orjson

from fleet.sim.wsapi import sign

SYMBOL = "ETHUSDC"


class Api:
    """A bare ws-fapi client: one connection, requests signed as Binance documents."""

    def __init__(self, sim: Any, ws: aiohttp.ClientWebSocketResponse) -> None:
        _, self.key, self.secret = sim.accounts[0]
        self.ws = ws
        self.n = 0

    async def call(self, method: str, params: dict[str, Any] | None = None, signed: bool = True,
                   secret: str | None = None) -> dict[str, Any]:
        self.n += 1
        p = dict(params or {})
        if signed:
            p.update(apiKey=self.key, timestamp=int(time.time() * 1000))
            p["signature"] = sign(secret or self.secret, p)
        await self.ws.send_str(orjson.dumps({"id": f"r{self.n}", "method": method, "params": p}).decode())
        reply = orjson.loads((await self.ws.receive(timeout=5)).data)
        assert reply["id"] == f"r{self.n}"
        return reply


async def state(s: aiohttp.ClientSession, sim: Any) -> dict[str, Any]:
    async with s.get(f"{sim.rest_url}/sim/state", params={"symbol": SYMBOL}) as r:
        return await r.json()


async def below_bid(s: aiohttp.ClientSession, sim: Any, ticks: int) -> str:
    st = await state(s, sim)
    return f"{float(st['markets'][SYMBOL]['bid']) - ticks * 0.01:.2f}"


async def test_an_order_placed_amended_looked_up_and_cancelled_over_the_websocket_api(sim):
    async with aiohttp.ClientSession() as s, s.ws_connect(f"{sim.ws_url}/ws-fapi/v1") as ws:
        api = Api(sim, ws)
        price = await below_bid(s, sim, 300)
        placed = await api.call("order.place", {"symbol": SYMBOL, "side": "BUY", "type": "LIMIT",
                                                "timeInForce": "GTX", "quantity": "0.010", "price": price,
                                                "newClientOrderId": "ws-1"})
        assert placed["status"] == 200, placed
        order = placed["result"]
        assert order["status"] == "NEW" and order["clientOrderId"] == "ws-1" and order["price"] == price
        limits = {(x["rateLimitType"], x["interval"], x["intervalNum"]): x for x in placed["rateLimits"]}
        assert limits[("ORDERS", "SECOND", 10)]["limit"] == 300 and limits[("ORDERS", "SECOND", 10)]["count"] >= 1
        assert limits[("ORDERS", "MINUTE", 1)]["limit"] == 1200
        assert limits[("REQUEST_WEIGHT", "MINUTE", 1)]["limit"] == 2400
        [rest] = (await state(s, sim))["open_orders"]
        assert (rest["orderId"], rest["price"], rest["origQty"]) == (order["orderId"], price, "0.010")

        new_price = await below_bid(s, sim, 200)
        amended = await api.call("order.modify", {"symbol": SYMBOL, "orderId": order["orderId"], "side": "BUY",
                                                  "quantity": "0.020", "price": new_price})
        assert amended["status"] == 200 and amended["result"]["price"] == new_price, amended
        [rest] = (await state(s, sim))["open_orders"]
        assert (rest["price"], rest["origQty"]) == (new_price, "0.020")

        looked_up = await api.call("order.status", {"symbol": SYMBOL, "origClientOrderId": "ws-1"})
        assert looked_up["result"]["origQty"] == "0.020" and looked_up["result"]["status"] == "NEW"
        versioned = await api.call("v1/order.status", {"symbol": SYMBOL, "origClientOrderId": "ws-1"})  # "v1/" prefix
        assert versioned["status"] == 200 and versioned["result"]["orderId"] == looked_up["result"]["orderId"]
        # the exchange holds this account to order limits of its own: the answers list them
        async with s.post(f"{sim.rest_url}/sim/limits", json={"account": "main", "orders_per_10s": 250}) as r:
            assert r.status == 200
        moved = await api.call("order.modify", {"symbol": SYMBOL, "orderId": order["orderId"], "side": "BUY",
                                                "quantity": "0.020", "price": price})
        limits = {(x["rateLimitType"], x["interval"]): x["limit"] for x in moved["rateLimits"]}
        assert limits == {("REQUEST_WEIGHT", "MINUTE"): 2400, ("ORDERS", "SECOND"): 250, ("ORDERS", "MINUTE"): 1200}
        cancelled = await api.call("order.cancel", {"symbol": SYMBOL, "orderId": order["orderId"]})
        assert cancelled["result"]["status"] == "CANCELED"
        assert (await state(s, sim))["open_orders"] == []
        again = await api.call("order.cancel", {"symbol": SYMBOL, "orderId": order["orderId"]})
        assert again["status"] == 400 and again["error"]["code"] == -2011
        algo = await api.call("algoOrder.place", {"algoType": "CONDITIONAL", "symbol": SYMBOL, "side": "SELL",
                                                  "type": "STOP_MARKET", "triggerPrice": price, "quantity": "0.010"})
        assert algo["status"] == 200 and algo["result"]["algoStatus"] == "NEW", algo
        gone = await api.call("algoOrder.cancel", {"algoId": algo["result"]["algoId"]})
        assert gone["status"] == 200 and gone["result"]["code"] == "200", gone

        positions = await api.call("v2/account.position", {"symbol": SYMBOL})
        assert positions["status"] == 200 and isinstance(positions["result"], list)
        balances = await api.call("account.balance")
        assert any(b["asset"] == "USDC" for b in balances["result"])
        book = await api.call("ticker.book", {"symbol": SYMBOL}, signed=False)
        assert float(book["result"]["bidPrice"]) < float(book["result"]["askPrice"])
        key = await api.call("userDataStream.start", {"apiKey": api.key}, signed=False)
        async with s.post(f"{sim.rest_url}/fapi/v1/listenKey", headers={"X-MBX-APIKEY": api.key}) as r:
            assert key["status"] == 200 and key["result"]["listenKey"] == (await r.json())["listenKey"]
        kept = await api.call("userDataStream.ping", {"apiKey": api.key}, signed=False)
        assert kept["result"]["listenKey"] == key["result"]["listenKey"]


async def test_a_bad_signature_or_no_key_changes_nothing_and_says_why(sim):
    async with aiohttp.ClientSession() as s, s.ws_connect(f"{sim.ws_url}/ws-fapi/v1") as ws:
        api = Api(sim, ws)
        order = {"symbol": SYMBOL, "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.010",
                 "price": await below_bid(s, sim, 300)}
        forged = await api.call("order.place", order, secret="0" * 64)
        assert forged["status"] == 400 and forged["error"]["code"] == -1022, forged
        unsigned = await api.call("order.place", order, signed=False)
        assert unsigned["status"] == 401 and unsigned["error"]["code"] == -2014, unsigned
        stale = dict(order, apiKey=api.key, timestamp=int(time.time() * 1000) - 60_000)
        stale["signature"] = sign(api.secret, stale)
        late = await api.call("order.place", stale, signed=False)
        assert late["error"]["code"] == -1021, late
        assert (await state(s, sim))["open_orders"] == []


async def test_malformed_requests_unknown_methods_and_the_session_methods(sim):
    async with aiohttp.ClientSession() as s, s.ws_connect(f"{sim.ws_url}/ws-fapi/v1?returnRateLimits=false") as ws:
        await ws.send_str("{not json")
        bad = orjson.loads((await ws.receive(timeout=5)).data)
        assert bad["id"] is None and bad["status"] == 400 and bad["error"]["code"] == -1013
        await ws.send_str(orjson.dumps({"id": 7, "method": "order.place", "params": ["x"]}).decode())
        bad = orjson.loads((await ws.receive(timeout=5)).data)
        assert bad == {"id": 7, "status": 400, "error": bad["error"]} and bad["error"]["code"] == -1013
        api = Api(sim, ws)
        unknown = await api.call("order.teleport", {})
        assert unknown["status"] == 400 and unknown["error"]["code"] == -1020
        logon = await api.call("session.logon")
        assert logon["status"] == 400 and logon["error"]["code"] == -4056  # Ed25519 keys only
        assert "rateLimits" not in logon                     # the connection's returnRateLimits=false
        logon = await api.call("session.logon", {"returnRateLimits": True})
        assert logon["error"]["code"] == -4056 and logon["rateLimits"][0]["count"] > 0   # said, as any refusal's
        status = await api.call("session.status", signed=False)
        assert status["status"] == 200 and status["result"]["apiKey"] is None
        placed = await api.call("order.place", {"symbol": SYMBOL, "side": "BUY", "type": "LIMIT",
                                                "timeInForce": "GTC", "quantity": "0.010",
                                                "price": await below_bid(s, sim, 300)})
        assert placed["status"] == 200 and "rateLimits" not in placed  # returnRateLimits=false on the URL
        assert len((await state(s, sim))["open_orders"]) == 1
        order = {"symbol": SYMBOL, "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.010",
                 "price": await below_bid(s, sim, 300), "apiKey": api.key, "timestamp": int(time.time() * 1000)}
        for frame in (json.dumps({"id": 10**30, "method": "order.place", "params": order}),  # no reply could carry it
                      "[" * 60_000,  # nested past any parser's depth
                      json.dumps({"id": 8, "method": "order.place",  # a lone surrogate: no signed text has it
                                  "params": dict(order, symbol="\ud800", signature="0" * 64)})):
            await ws.send_str(frame)
            bad = orjson.loads((await ws.receive(timeout=5)).data)
            assert bad["status"] == 400 and bad["error"]["code"] in (-1013, -1100, -1102, -1121), bad
        assert len((await state(s, sim))["open_orders"]) == 1  # none of them placed anything
        signed = dict(order, returnRateLimits=True)  # a client signs it with the rest (ccxt does)
        signed["signature"] = sign(api.secret, signed)
        await ws.send_str(orjson.dumps({"id": 9, "method": "order.place", "params": signed}).decode())
        placed = orjson.loads((await ws.receive(timeout=5)).data)
        assert placed["status"] == 200 and placed["rateLimits"], placed


async def test_the_rest_faults_reach_the_websocket_api_too(sim):
    """An order placed and then answered 503 exists at the exchange; one whose answer never comes
    (timeout) costs the connection, and executes late."""
    async with aiohttp.ClientSession() as s:
        async with s.ws_connect(f"{sim.ws_url}/ws-fapi/v1") as ws:
            api = Api(sim, ws)
            order = {"symbol": SYMBOL, "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.010",
                     "price": await below_bid(s, sim, 300)}
            await s.post(f"{sim.rest_url}/sim/fault/rest", json={"mode": "exec_then_error", "answer": "503",
                                                                 "path": "/fapi/v1/order", "method": "POST"})
            unknown = await api.call("order.place", order)
            assert unknown["status"] == 503 and unknown["error"]["code"] == -1000, unknown
            assert len((await state(s, sim))["open_orders"]) == 1  # it executed
            await s.post(f"{sim.rest_url}/sim/fault/rest", json={"mode": "exec_then_error", "answer": "502",
                                                                 "path": "/fapi/v1/order", "method": "POST"})
            gateway = await api.call("order.place", order)
            assert gateway["status"] == 503 and gateway["error"]["code"] == -1006, gateway  # no HTML over WS
            # the gateway's page carried no counts, but the request was counted: the reply says so, not 0
            counts = {(x["rateLimitType"], x["interval"]): x["count"] for x in gateway["rateLimits"]}
            before = {(x["rateLimitType"], x["interval"]): x["count"] for x in unknown["rateLimits"]}
            assert counts[("ORDERS", "SECOND")] == before[("ORDERS", "SECOND")] + 1, (before, counts)
            assert counts[("REQUEST_WEIGHT", "MINUTE")] >= before[("REQUEST_WEIGHT", "MINUTE")] > 0, (before, counts)
            await s.post(f"{sim.rest_url}/sim/fault/rest", json={"mode": "late", "answer": "timeout", "hold_ms": 200,
                                                                 "delay_ms": 100, "path": "/fapi/v1/order"})
            p = dict(order, apiKey=api.key, timestamp=int(time.time() * 1000))
            p["signature"] = sign(api.secret, p)
            await ws.send_str(orjson.dumps({"id": "t", "method": "order.place", "params": p}).decode())
            msg = await ws.receive(timeout=5)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR), msg
        for _ in range(50):
            if len((await state(s, sim))["open_orders"]) == 3:
                break
            await asyncio.sleep(0.05)
        assert len((await state(s, sim))["open_orders"]) == 3  # the unanswered one executed late


async def test_a_request_held_on_its_way_holds_neither_the_next_request_nor_the_pings(sim):
    """Requests in flight on one connection are handled each on its own, as Binance's ids to match
    answers imply: an order held by a latency fault is answered after a price asked later and after
    the pong of a ping sent later, and executes all the same."""
    async with aiohttp.ClientSession() as s, s.ws_connect(f"{sim.ws_url}/ws-fapi/v1", autoping=False) as ws:
        api = Api(sim, ws)
        await s.post(f"{sim.rest_url}/sim/fault/latency", json={"ms": 1500, "path": "/fapi/v1/order"})
        p = {"symbol": SYMBOL, "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.010",
             "price": await below_bid(s, sim, 300), "apiKey": api.key, "timestamp": int(time.time() * 1000)}
        p["signature"] = sign(api.secret, p)
        await ws.send_str(orjson.dumps({"id": "slow", "method": "order.place", "params": p}).decode())
        await ws.send_str(orjson.dumps({"id": "fast", "method": "ticker.price", "params": {"symbol": SYMBOL}}).decode())
        await ws.ping(b"behind")
        seen = []
        while len(seen) < 3:
            msg = await ws.receive(timeout=10)
            if msg.type == aiohttp.WSMsgType.PING:
                await ws.pong(msg.data)
            elif msg.type == aiohttp.WSMsgType.PONG:
                seen.append(msg.data.decode())
            else:
                reply = orjson.loads(msg.data)
                assert reply["status"] == 200, reply
                seen.append(reply["id"])
        assert seen[2] == "slow" and set(seen[:2]) == {"fast", "behind"}
        assert len((await state(s, sim))["open_orders"]) == 1


async def test_the_simulators_stop_leaves_no_websocket_api_request_running(sim_factory):
    sim = await sim_factory()
    async with aiohttp.ClientSession() as s, s.ws_connect(f"{sim.ws_url}/ws-fapi/v1") as ws:
        await s.post(f"{sim.rest_url}/sim/fault/latency", json={"ms": 30_000, "path": "/fapi/v1/ticker/price"})
        await ws.send_str(orjson.dumps({"id": 1, "method": "ticker.price", "params": {"symbol": SYMBOL}}).decode())
        for _ in range(100):
            if sim.api_requests:
                break
            await asyncio.sleep(0.01)
        [held] = sim.api_requests
        await sim.stop()
        assert held.cancelled() and not sim.api_requests


async def test_a_connection_costs_five_weight_and_the_drop_fault_reaches_it(sim):
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{sim.rest_url}/fapi/v1/ping") as r:
            before = int(r.headers["X-MBX-USED-WEIGHT-1M"])
        async with s.ws_connect(f"{sim.ws_url}/ws-fapi/v1") as ws:
            async with s.get(f"{sim.rest_url}/fapi/v1/ping") as r:
                assert int(r.headers["X-MBX-USED-WEIGHT-1M"]) == before + 5 + 1
            async with s.post(f"{sim.rest_url}/sim/fault/drop", json={"target": "market"}) as r:
                assert (await r.json())["dropped"] == 0  # not a market stream
            async with s.post(f"{sim.rest_url}/sim/fault/drop", json={"target": "api", "account": "main"}) as r:
                assert (await r.json())["dropped"] == 0  # no request has named an account yet
            assert (await Api(sim, ws).call("account.balance"))["status"] == 200
            async with s.post(f"{sim.rest_url}/sim/fault/drop", json={"target": "api", "account": "main"}) as r:
                assert (await r.json())["dropped"] == 1
            msg = await ws.receive(timeout=5)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)


async def test_an_ed25519_key_signs_rest_and_websocket_requests_and_logs_a_session_on(sim_factory):
    from urllib.parse import quote, urlencode

    from fleet.sim.keys import ed25519_sign

    sim = await sim_factory(config={"accounts": [{"name": "main", "key_type": "ED25519"}]})
    _, key, pem = sim.accounts[0]
    assert pem.startswith("-----BEGIN PRIVATE KEY-----")
    async with aiohttp.ClientSession() as s:
        query = urlencode({"timestamp": int(time.time() * 1000)})
        for sig, status in ((ed25519_sign(pem, query), 200), (sign(pem, {"timestamp": 1}), 400)):
            async with s.get(f"{sim.rest_url}/fapi/v3/balance?{query}&signature={quote(sig)}",
                             headers={"X-MBX-APIKEY": key}) as r:   # base64 Ed25519 signs; a hex HMAC does not
                body = await r.json()
                assert r.status == status and (status == 200 or body["code"] == -1022), body
        async with s.ws_connect(f"{sim.ws_url}/ws-fapi/v1") as ws:
            n = 0

            async def call(method: str, params: dict[str, Any], signed: bool) -> dict[str, Any]:
                nonlocal n
                n += 1
                p = {**params, "timestamp": int(time.time() * 1000)}
                if signed:
                    p["apiKey"] = key
                    p["signature"] = ed25519_sign(pem, "&".join(f"{k}={v}" for k, v in sorted(p.items())))
                await ws.send_str(orjson.dumps({"id": n, "method": method, "params": p}).decode())
                return orjson.loads((await ws.receive(timeout=5)).data)

            order = {"symbol": SYMBOL, "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.010",
                     "price": await below_bid(s, sim, 300)}
            assert (await call("order.place", {**order, "newClientOrderId": "ed-1"}, signed=True))["status"] == 200
            unsigned = await call("order.place", {**order, "newClientOrderId": "ed-2"}, signed=False)
            assert unsigned["status"] == 401 and unsigned["error"]["code"] == -2014
            logon = await call("session.logon", {}, signed=True)
            assert logon["status"] == 200 and logon["result"]["apiKey"] == key, logon
            # logged on: no key, no signature, only the timestamp
            assert (await call("order.place", {**order, "newClientOrderId": "ed-3"}, signed=False))["status"] == 200
            status = await call("session.status", {}, signed=False)
            assert status["result"]["apiKey"] == key and status["result"]["authorizedSince"] is not None
            assert (await call("session.logout", {}, signed=False))["result"]["apiKey"] is None
            after = await call("order.place", {**order, "newClientOrderId": "ed-4"}, signed=False)
            assert after["status"] == 401 and after["error"]["code"] == -2014
        assert sorted(o["clientOrderId"] for o in (await state(s, sim))["open_orders"]) == ["ed-1", "ed-3"]


async def test_unsolicited_pongs_keep_a_stream_but_not_a_websocket_api_connection(sim_factory):
    """The WebSocket API: "Unsolicited pong frames are allowed, but will not prevent disconnection";
    only the pong to the server's ping counts. A market stream takes any pong."""
    import asyncio

    sim = await sim_factory(config={"ws_ping_interval_s": 0.2, "ws_pong_timeout_s": 0.3})
    async with aiohttp.ClientSession() as s:
        api = await s.ws_connect(f"{sim.ws_url}/ws-fapi/v1", autoping=False)
        stream = await s.ws_connect(f"{sim.ws_url}/market/ws/ethusdc@markPrice@1s", autoping=False)

        async def pong_unasked(ws: aiohttp.ClientWebSocketResponse, every_s: float) -> aiohttp.WSMessage:
            while True:   # never answers a ping; sends its own pong every so often
                await ws.pong(b"unasked")
                try:
                    msg = await ws.receive(timeout=every_s)
                except asyncio.TimeoutError:
                    continue
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                    return msg

        keeping = asyncio.ensure_future(pong_unasked(stream, 0.1))
        closed = await asyncio.wait_for(pong_unasked(api, 0.25), timeout=10)   # (under its 5 a second)
        assert api.close_code == 1002 and closed.extra == "no pong", closed
        assert not keeping.done() and not stream.closed   # the same pongs keep the stream
        keeping.cancel()
        await stream.close()


async def test_a_websocket_api_connection_sending_more_than_5_pings_a_second_is_closed(sim_factory):
    """"Rate limit for ping/pong frames: maximum 5 per second" (the WebSocket API): a client pinging 20
    times a second kept its connection; the sixth frame within a second closes it."""
    sim = await sim_factory()
    async with aiohttp.ClientSession() as s:
        calm = await s.ws_connect(f"{sim.ws_url}/ws-fapi/v1", autoping=False)
        flood = await s.ws_connect(f"{sim.ws_url}/ws-fapi/v1", autoping=False)
        for _ in range(5):
            await calm.ping(b"calm")
            assert (await calm.receive(timeout=5)).type == aiohttp.WSMsgType.PONG
        for _ in range(6):
            await flood.ping(b"flood")
        pongs = 0
        while (msg := await flood.receive(timeout=5)).type == aiohttp.WSMsgType.PONG:
            pongs += 1
        assert pongs == 5 and msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1008, msg
        assert msg.extra == "Too many ping/pong frames"
        assert not calm.closed
        await calm.close()


async def test_a_binary_frame_is_a_bad_message_and_a_connection_is_none(sim):
    """``ws_bad_messages`` counted one at every WebSocket API connection opened (its reply to binary frames
    made ahead), none sent: 13 in a third-party engine's run that sent no bad message. A binary frame
    is counted, on either kind of connection, and answered."""
    async def bad() -> int:
        async with s.get(f"{sim.rest_url}/sim/state") as r:
            return (await r.json())["server"]["ws_bad_messages"]

    async with aiohttp.ClientSession() as s:
        before = await bad()
        async with s.ws_connect(f"{sim.ws_url}/ws-fapi/v1") as ws:
            assert await bad() == before
            await ws.send_bytes(b"{}")
            reply = orjson.loads((await ws.receive(timeout=5)).data)
            assert reply["status"] == 400 and reply["error"]["code"] == -1013
        async with s.ws_connect(f"{sim.ws_url}/public/ws") as ws:
            await ws.send_bytes(b"{}")
            assert orjson.loads((await ws.receive(timeout=5)).data)["error"]["code"] == 3
        assert await bad() == before + 2
