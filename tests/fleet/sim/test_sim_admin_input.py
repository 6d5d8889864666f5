"""Bad input to the simulator gets a 4xx naming what is wrong and changes nothing: its /sim admin
routes (a field of the wrong type, not finite, out of range, unknown; a body nested too deeply) and
its Binance routes (an integer parameter longer than Binance's 20 digits, a batch nested too deeply).
Each bad request is followed by a look at the exchange: it still answers, and nothing moved."""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import pytest

from fleet.sim.testkit import SimClient

SYMBOL = "ETHUSDC"

BAD_ADMIN = [
    ("/sim/market/jump", b'{"symbol": "ETHUSDC", "pct": NaN}', "not JSON"),
    ("/sim/market/jump", b'{"symbol": "ETHUSDC", "pct": Infinity}', "not JSON"),
    ("/sim/market/jump", b'{"symbol": "ETHUSDC", "pct": 1e308}', "pct"),
    ("/sim/market/jump", b'{"symbol": "ETHUSDC", "pct": -100}', "pct"),
    ("/sim/market/jump", b'{"symbol": "ETHUSDC", "pct": "0.5"}', "pct"),
    ("/sim/market/jump", b'{"symbol": 5, "pct": 0.5}', "symbol"),
    ("/sim/market/freeze", b'{"symbol": "ETHUSDC", "frozen": "false"}', "frozen"),
    ("/sim/market/freeze", b'{"symbols": "ETHUSDC", "frozen": true}', "'symbols'"),
    ("/sim/fault/rest", b'{"mode": "error", "path": 5}', "path"),
    ("/sim/fault/rest", b'{"mode": "error", "method": 5}', "method"),
    ("/sim/fault/rest", b'{"mode": "error", "count": 1000000000000000000000000000000}', "count"),
    ("/sim/fault/rest", b'{"mode": "error", "status": 1e400}', "status"),   # (JSON's 1e400 is a float's inf)
    ("/sim/fault/rest", b'{"mode": "error", "status": 503.5}', "status"),
    # a fault no request could meet waited, unseen, for good: a misspelt path or method, a mode's routes missed
    ("/sim/fault/rest", b'{"mode": "error", "path": "/fapi/v1/ordr"}', "names no route"),
    ("/sim/fault/rest", b'{"mode": "error", "method": "YEET"}', "method must be one of"),
    ("/sim/fault/rest", b'{"mode": "429", "answer": "-1001"}', "answer of the mode 429"),
    ("/sim/fault/rest", b'{"mode": "late", "path": "/fapi/v1/openOrders"}', "applies to writes"),
    ("/sim/fault/rest", b'{"mode": "batch_short", "path": "/fapi/v1/order"}', "the batch routes"),
    ("/sim/fault/frame", b'{"stream": "user", "mode": "garbage", "cnt": 2}', "'cnt'"),
    # a frame fault's names are text as every admin route's (no newline or escape to forge a log line, at
    # most 200 characters), and an account or symbol the simulator lacks would wait, unseen, for good
    ("/sim/fault/frame", b'{"stream": "user", "mode": "drop", "event": "ACCOUNT_UPDATE\\n2026 CRITICAL x"}', "event"),
    ("/sim/fault/frame", b'{"stream": "market", "mode": "drop", "event": "\\u001b[31mbookTicker"}', "event"),
    ("/sim/fault/frame", b'{"stream": "user", "mode": "drop", "reason": "FUNDING_FEE\\r"}', "reason"),
    ("/sim/fault/frame", b'{"stream": "user", "mode": "omit", "fields": ["o.N\\n"]}', "fields"),
    ("/sim/fault/frame", b'{"stream": "user", "mode": "omit", "fields": ["' + b"o" * 100_000 + b'"]}', "fields"),
    ("/sim/fault/frame", b'{"stream": "user", "mode": "drop", "account": "' + b"a" * 100_000 + b'"}', "account"),
    ("/sim/fault/frame", b'{"stream": "user", "mode": "drop", "account": "nobody"}', "account 'nobody' is not"),
    ("/sim/fault/frame", b'{"stream": "market", "mode": "drop", "symbol": "DOGEUSDT"}', "symbol 'DOGEUSDT' is not"),
    ("/sim/fault/frame", b'{"stream": "market", "mode": "drop", "symbol": "ethusdc"}', "symbol 'ethusdc' is not"),
    ("/sim/fault/latency", b'{"ms": 10, "path": 5}', "path"),
    ("/sim/fault/latency", b'{"ms": 10, "path": "/fapi/v9"}', "names no route"),
    ("/sim/fault/latency", b'{"ms": true}', "ms"),
    ("/sim/limits", b'{"max_modifies_per_order": 1000000000000000000000000000000}', "max_modifies_per_order"),
    ("/sim/limits", b'{"max_modifies_per_order": 2.9}', "max_modifies_per_order"),
    ("/sim/limits", b'{"weight_per_minute": 600, "orders_per_10s": -1}', "orders_per_10s"),
    ("/sim/limits", b'{"orders_per_10s": 50, "account": "nobody"}', "account 'nobody' is not"),
    ("/sim/limits", b'{"orders_per_10s": 50, "account": "main", "weight_per_minute": 600}', "own order limits"),
    ("/sim/delist", b'{"symbol": "ETHUSDC", "at_ms": 1000000000000000000000000000000}', "at_ms"),
    ("/sim/delist", b'{"symbol": "ETHUSDC", "in_s": Infinity}', "not JSON"),
    ("/sim/funding/interval", b'{"symbol": "ETHUSDC", "hours": 4, "next_ms": 1000000000000000000000000000000}',
     "next_ms"),
    ("/sim/position", b'{"symbol": "ETHUSDC", "amount": "0.1", "entry_price": "NaN"}', "entry_price"),
    ("/sim/position", b'{"symbol": "ETHUSDC", "amount": "Infinity"}', "amount"),
    ("/sim/position", b'{"symbol": "ETHUSDC", "amount": "1e999999"}', "amount"),
    ("/sim/adl", b'{"symbol": "ETHUSDC", "qty": "Infinity"}', "qty"),
    ("/sim/brackets", b'{"symbol": "ETHUSDC", "brackets": [{"notional_cap": "Infinity", "initial_leverage": 20, '
                      b'"maint_margin_ratio": "0.01"}]}', "notional_cap"),
    ("/sim/brackets", b'{"symbol": "ETHUSDC", "brackets": [{"notional_cap": "1e999999", "initial_leverage": 20, '
                      b'"maint_margin_ratio": "0.01"}]}', "notional_cap"),
    ("/sim/brackets", b'{"symbol": "ETHUSDC", "brackets": [{"notional_cap": "50000", "initial_leverage": 1e400, '
                      b'"maint_margin_ratio": "0.01"}]}', "initial_leverage"),
    ("/sim/fault/clear", b'{"everything": true}', "'everything'"),
    ("/sim/market/jump", b"[" * 100_000, "nested"),
]


async def _still_whole(c: SimClient, before: dict) -> None:
    """The exchange answers every kind of request, and nothing the bad request named moved."""
    st = await c.state(symbol=SYMBOL)
    m, was = st["markets"][SYMBOL], before["markets"][SYMBOL]
    assert (m["mid"], m["frozen"]) == (was["mid"], was["frozen"])
    assert st["positions"][SYMBOL]["amount"] == before["positions"][SYMBOL]["amount"]
    assert st["positions"][SYMBOL]["entry_price"] == before["positions"][SYMBOL]["entry_price"]
    assert st["faults_pending"] == [] and st["frame_faults_pending"] == []
    for path in ("/fapi/v1/ping", "/fapi/v1/exchangeInfo", "/fapi/v1/leverageBracket"):
        reply = await (c.public if path != "/fapi/v1/leverageBracket" else c.signed)("GET", path)
        assert reply.status == 200, (path, reply.json)
    assert (await c.public("GET", "/fapi/v1/premiumIndex", {"symbol": SYMBOL})).status == 200
    assert (await c.admin("POST", "/sim/limits", {})) == before["limits"]


@pytest.mark.parametrize(("path", "body", "named"), BAD_ADMIN, ids=[f"{p}:{b[:40]!r}" for p, b, _ in BAD_ADMIN])
async def test_a_bad_admin_request_is_a_400_naming_the_problem_and_changes_nothing(sim, path, body, named):
    async with SimClient.for_sim(sim) as c, aiohttp.ClientSession() as s:
        await c.admin("POST", "/sim/position", {"symbol": SYMBOL, "amount": "0.010", "entry_price": "3000"})
        await c.admin("POST", "/sim/market/freeze", {"symbol": SYMBOL, "frozen": True})
        before = await c.state(symbol=SYMBOL)
        before["limits"] = await c.admin("POST", "/sim/limits", {})
        async with s.post(sim.rest_url + path, data=body, headers={"Content-Type": "application/json"}) as resp:
            answer = await resp.json()
            assert resp.status == 400, (resp.status, answer)
        assert named in answer["error"], answer
        await _still_whole(c, before)


async def test_binance_routes_refuse_an_integer_longer_than_20_digits_and_a_batch_nested_too_deeply(sim):
    async with SimClient.for_sim(sim) as c:
        long_id = await c.signed("GET", "/fapi/v1/order", {"symbol": SYMBOL, "orderId": "9" * 5000})
        assert (long_id.status, long_id.json["code"]) == (400, -1102), long_id.json   # (the simulator's word for a
        assert "orderId" in long_id.json["msg"]                                        # malformed parameter)
        assert (await c.signed("GET", "/fapi/v1/order", {"symbol": SYMBOL, "orderId": "9" * 21})).json["code"] == -1102
        nested = await c.signed("POST", "/fapi/v1/batchOrders", {"batchOrders": "[" * 3000}, in_body=True)
        assert (nested.status, nested.json["code"]) == (400, -1130), nested.json
        await c.admin("POST", "/sim/fault/rest", {"mode": "throttle", "count": 1})   # its reduce-only check reads the batch
        unsigned = await c.keyed("POST", "/fapi/v1/batchOrders", {"batchOrders": "[" * 3000})
        assert (unsigned.status, unsigned.json["code"]) == (503, -1008), unsigned.json   # throttled, not a 500
        await c.admin("POST", "/sim/fault/clear", {})
        assert (await c.public("GET", "/fapi/v1/ping")).status == 200


async def test_the_admin_routes_answer_only_a_loopback_host(sim):
    """A page whose name its DNS points at 127.0.0.1 reaches the port from a browser on this machine: it
    reads no account's keys and injects no fault. Binance's own routes answer any Host, as Binance does."""
    port = sim.rest_url.rsplit(":", 1)[1]
    async with SimClient.for_sim(sim) as c:
        await c.admin("POST", "/sim/market/freeze", {"symbol": SYMBOL, "frozen": True})
        mid = (await c.state(symbol=SYMBOL))["markets"][SYMBOL]["mid"]
    async with aiohttp.ClientSession() as s:
        for host in ("attacker.example", f"attacker.example:{port}", "127.0.0.1.nip.io", "[::2]"):
            for method, path in (("GET", "/sim/accounts"), ("POST", "/sim/market/jump")):
                async with s.request(method, f"{sim.rest_url}{path}", headers={"Host": host},
                                     json={"symbol": SYMBOL, "pct": 5.0}) as r:
                    body = await r.text()
                    assert r.status == 400 and "loopback" in body and "api_key" not in body, (host, path, body)
        for host in (f"127.0.0.1:{port}", f"localhost:{port}", "[::1]", "localhost"):
            async with s.get(f"{sim.rest_url}/sim/accounts", headers={"Host": host}) as r:
                assert r.status == 200, host
        async with s.get(f"{sim.rest_url}/fapi/v1/time", headers={"Host": "attacker.example"}) as r:
            assert r.status == 200
    async with SimClient.for_sim(sim) as c:   # the jumps refused moved nothing
        assert (await c.state(symbol=SYMBOL))["markets"][SYMBOL]["mid"] == mid


async def _raw_request(url: str, data: bytes) -> bytes:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    await writer.drain()
    answer = await reader.read()   # (aiohttp closes a connection after a request it could not read)
    writer.close()
    return answer


async def test_a_request_aiohttp_cannot_read_is_a_400_and_a_counted_warning_not_an_error_with_a_traceback(
        sim, caplog):
    """aiohttp logged every request it could not parse at ERROR with a traceback: any client could flood the
    log at ERROR. Each is a 400, counted in /sim/state, and said in one WARNING line at most once a second."""
    bad = [b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",   # a request line over 64 kB
           b"GET /fapi/v1/time\rHTTP/1.1\r\nHost: x\r\n\r\n",          # a bare CR in the request line
           b"GET /fapi/v1/time HTTP/1.1\r\nHost: x\r\nX-A: a\x1b[31mb\r\n\r\n"]   # an escape in a header
    caplog.set_level(logging.DEBUG)
    for data in bad * 10:
        answer = await _raw_request(sim.rest_url, data)
        assert answer.startswith(b"HTTP/1.") and b" 400 " in answer.split(b"\r\n")[0], answer[:80]
    async with SimClient.for_sim(sim) as c:
        assert (await c.state())["server"]["bad_http_requests"] == 30
        assert (await c.public("GET", "/fapi/v1/ping")).status == 200
    assert [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info] == []
    said = [r.getMessage() for r in caplog.records if "could not read" in r.getMessage()]
    assert 1 <= len(said) <= 2 and all("\n" not in m and "\x1b" not in m and len(m) < 600 for m in said), said
