"""Error classes through the simulator's fault routes, and idempotent order entry.

Faults come from ``/sim/fault/*`` (documented in ``fleet/sim/server.py``). The rate-limit and ban
tests start a simulator with low limits (``sim_factory``), so a real 429/418 comes quickly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time

import aiohttp
import pytest

from fleet.binance.client import BinanceClient
from fleet.binance.enums import OrderType, Side, TimeInForce
from fleet.binance.errors import (
    BannedError,
    BinanceError,
    BudgetExhaustedError,
    OutcomeUnknownError,
    RateLimitedError,
    ServerError,
)
from fleet.binance.models import OrderInfo, OrderRequest
from fleet.binance.ratelimit import Cost, RateBudget

from tests.polling import wait_for

from .test_client_rest import SYMBOL, cid


async def admin(sim, method: str, path: str, body: dict | None = None, params: dict | None = None):
    async with aiohttp.ClientSession() as http:
        async with http.request(method, sim.rest_url + path, json=body, params=params) as resp:
            data = await resp.json(content_type=None)
            assert resp.status == 200, data
            return data


async def fault(sim, **spec):
    return await admin(sim, "POST", "/sim/fault/rest", spec)


async def orders_with_client_id(sim, account: str, client_order_id: str) -> list[dict]:
    state = await admin(sim, "GET", "/sim/state", params={"account": account, "symbol": SYMBOL})
    return [o for o in state["open_orders"] if o.get("clientOrderId") == client_order_id]


@pytest.fixture
async def own_client(sim):
    """A client on the simulator's first account; faults are cleared afterwards."""
    name, key, secret = sim.accounts[0]
    async with BinanceClient(sim.rest_url, key, secret, timeout=5) as c:
        await c.sync_time()
        c.account_name = name
        yield c
    await admin(sim, "POST", "/sim/fault/clear", {})


QUOTE = Cost(orders_10s=1, orders_1m=1)   # one order's cost


async def passive_order(client, tag: str) -> OrderRequest:
    filters = await client.symbol_filters(SYMBOL)
    top = await client.book_ticker(SYMBOL)
    price = filters.price_str(filters.price_ticks_floor(top.bid) - 250)
    return OrderRequest(symbol=SYMBOL, side=Side.BUY, order_type=OrderType.LIMIT, quantity="0.010", price=price,
                        time_in_force=TimeInForce.GTX, client_order_id=cid(tag))


# -- 5xx and unknown outcomes -------------------------------------------------------------------


async def test_a_failing_order_route_holds_quoting_orders_but_a_reduce_only_ones_failure_holds_nothing(
        sim, own_client):
    """A reduce-only order goes in the risk lane whoever sends it (the controller's emergency close sent it
    in the quoting lane: held behind another symbol's failed close); its 503 holds nothing, a quoting
    order's holds the quoting lane."""
    order = await passive_order(own_client, "ro")
    await fault(sim, mode="error", count=2, path="/fapi/v1/order", method="POST", answer="-1001")
    closing = dataclasses.replace(order, side=Side.SELL, order_type=OrderType.MARKET, price=None, time_in_force=None,
                                  reduce_only=True, client_order_id=cid("ro-close"))
    with pytest.raises(BinanceError):
        await own_client.place_order(closing)
    assert own_client.budget.holds() == []
    with pytest.raises(BinanceError):
        await own_client.place_order(order)
    assert own_client.budget.holds() == ["order_routes_failing"]


async def test_a_batch_whose_every_entry_failed_holds_quoting_orders_and_a_1008_entry_holds_them_as_a_throttle(
        sim, own_client):
    """A batch is answered 200 whatever its orders' fate. Every entry -1001 (the route failing, as a 5xx
    says of a whole call) held nothing, so each quote cycle sent the orders again; now it holds the
    quoting lane as a failing route's answer does, and a -1008 entry as a whole call's -1008 does."""
    busy = {"code": -1001, "msg": "Internal error; unable to process your request. Please try again."}
    await fault(sim, mode="batch_malformed", entry=busy, path="/fapi/v1/batchOrders", method="POST", count=1)
    failed = await own_client.batch_place([await passive_order(own_client, "bf") for _ in range(2)])
    assert [r.code for r in failed] == [-1001, -1001]
    assert own_client.budget.holds() == ["order_routes_failing"] and own_client.budget.wait_time(QUOTE) > 0
    assert own_client.budget.wait_time(QUOTE, risk=True) == 0   # cancels and reduce-only orders go on
    throttled = {"code": -1008, "msg": "Request throttled by system-level protection. Reduce-only/close-position "
                                       "orders are exempted. Please try again."}
    await fault(sim, mode="batch_malformed", entry=throttled, entries=[0], path="/fapi/v1/batchOrders",
                method="POST", count=1)
    results = await own_client.place_orders([await passive_order(own_client, "bt") for _ in range(2)])
    assert results[0].code == -1008 and isinstance(results[1], OrderInfo), results
    assert "throttled" in own_client.budget.holds() and own_client.budget.throttled == 1
    await own_client.cancel_all(SYMBOL)


async def test_server_errors_are_retryable_server_errors(sim, own_client):
    await fault(sim, mode="error", count=1, path="/fapi/v1/openOrders", status=503)
    with pytest.raises(ServerError) as info:
        await own_client.open_orders(SYMBOL)
    assert info.value.http_status == 503 and not isinstance(info.value, OutcomeUnknownError)
    await fault(sim, mode="error", count=1, path="/fapi/v1/order", method="POST", status=500)
    order = await passive_order(own_client, "srv")
    with pytest.raises(ServerError):
        await own_client.place_order(order)
    assert await orders_with_client_id(sim, own_client.account_name, order.client_order_id) == []
    assert isinstance(await own_client.open_orders(SYMBOL), list)  # the next request goes through


async def test_unknown_outcome_is_resolved_by_client_id_not_by_resend(sim, own_client):
    order = await passive_order(own_client, "unk")
    await fault(sim, mode="unknown", count=1, path="/fapi/v1/order", method="POST")
    with pytest.raises(OutcomeUnknownError) as info:
        await own_client.place_order(order)
    assert info.value.http_status == 503
    # the exchange did execute it: the query by client id finds it
    found = await own_client.query_order(SYMBOL, client_order_id=order.client_order_id)
    assert found.status == "NEW"
    await own_client.cancel_order(SYMBOL, order_id=found.order_id)


async def test_idempotent_place_finds_the_lost_order_and_does_not_place_twice(sim, own_client):
    order = await passive_order(own_client, "idem")
    await fault(sim, mode="unknown", count=1, path="/fapi/v1/order", method="POST")
    sent_before = own_client.requests_sent
    placed = await own_client.place_order_idempotent(order)
    assert isinstance(placed, OrderInfo) and placed.client_order_id == order.client_order_id
    assert own_client.requests_sent - sent_before == 2  # the lost place + one query, no resend
    live = await orders_with_client_id(sim, own_client.account_name, order.client_order_id)
    assert len(live) == 1
    await own_client.cancel_order(SYMBOL, order_id=placed.order_id)


async def test_idempotent_place_resends_only_when_the_exchange_has_no_such_order(sim, own_client):
    order = await passive_order(own_client, "idem2")
    # 408: the gateway gave up; here the order never reached the engine
    await fault(sim, mode="error", count=1, path="/fapi/v1/order", method="POST", status=408)
    placed = await own_client.place_order_idempotent(order, backoff_s=0.05)
    assert placed.client_order_id == order.client_order_id and placed.status == "NEW"
    live = await orders_with_client_id(sim, own_client.account_name, order.client_order_id)
    assert len(live) == 1
    await own_client.cancel_order(SYMBOL, order_id=placed.order_id)


async def test_timeout_after_send_is_an_unknown_outcome_resolved_without_doubling(sim, own_client):
    order = await passive_order(own_client, "slow")
    await admin(sim, "POST", "/sim/fault/latency", {"ms": 1500, "path": "/fapi/v1/order"})
    own_client.timeout = 0.3
    await own_client.close()
    await own_client.open()
    try:
        with pytest.raises(OutcomeUnknownError, match="after the request was sent"):
            await own_client.place_order(order)
    finally:
        await admin(sim, "POST", "/sim/fault/latency", {"ms": 0})
    own_client.timeout = 5
    await own_client.close()
    await own_client.open()
    # whether or not the slow request landed, the idempotent path ends with exactly one order
    placed = await own_client.place_order_idempotent(order)
    assert placed.client_order_id == order.client_order_id
    live = await orders_with_client_id(sim, own_client.account_name, order.client_order_id)
    assert len(live) == 1
    await own_client.cancel_order(SYMBOL, order_id=placed.order_id)


# -- 429 and 418 ------------------------------------------------------------------------------


async def test_429_backs_off_as_told_then_goes_on(sim, own_client):
    order = await passive_order(own_client, "blocked")
    await fault(sim, mode="429", count=1, path="/fapi/v1/openOrders")
    with pytest.raises(RateLimitedError) as info:
        await own_client.open_orders(SYMBOL)
    assert info.value.http_status == 429 and info.value.retry_after == 1.0
    assert own_client.budget.blocked_for() > 0.5
    with pytest.raises(BudgetExhaustedError):  # refused locally while the pause lasts, nothing sent
        await own_client.place_order(order, wait=False)
    start = time.monotonic()
    assert isinstance(await own_client.open_orders(SYMBOL), list)  # waits out Retry-After, then sends
    assert time.monotonic() - start >= 0.5


async def test_a_client_told_429_never_reaches_418_but_an_uncoordinated_one_is_banned(sim_factory):
    config = {"rate_limits": {"weight_per_minute": 40, "ban_base_s": 5, "ban_after_429s": 1}}
    # the simulator's clock is pinned inside one minute, so the 429 and the ban share a window
    pinned = (int(time.time() * 1000) // 60_000 + 1) * 60_000 + 1_000
    small = await sim_factory(symbols=[SYMBOL], config=config, clock=lambda: pinned)
    async with BinanceClient(small.rest_url) as a, BinanceClient(small.rest_url) as b:
        with pytest.raises(RateLimitedError) as info:
            for _ in range(30):
                await a.book_ticker(SYMBOL)  # weight 2 each: the 21st breaks 40/min
        assert info.value.retry_after >= 1 and a.budget.rate_limited == 1
        assert a.budget.limits["weight_1m"] == 38   # the IP's limit the refusal names (40), never read before
        # A keeps asking: its budget refuses locally until Retry-After, instead of sending into a ban
        for _ in range(5):
            with pytest.raises(BudgetExhaustedError):
                await a.budget.acquire(Cost(weight=2), wait=False)
        # B, on the same IP but not sharing A's budget, sends on and is banned
        with pytest.raises(BannedError) as banned:
            await b.book_ticker(SYMBOL)
        assert banned.value.http_status == 418 and banned.value.until_ms == pinned + 5_000
        assert b.budget.blocked_for() > 1


async def test_a_429_one_process_is_told_holds_every_process_of_the_host_before_it_sends(sim_factory, tmp_path):
    """Two agents' clients of one host (each its own budget, as two processes), the IP's weight spent: the
    one told 429 writes the hold beside them (fleet/binance/host_holds.py) and the other sends nothing
    into it: no 429 of its own, no ban (the same setting banned an uncoordinated one at its first
    request, above)."""
    from fleet.binance.host_holds import HostHolds

    config = {"rate_limits": {"weight_per_minute": 40, "ban_base_s": 5, "ban_after_429s": 1}}
    pinned = (int(time.time() * 1000) // 60_000 + 1) * 60_000 + 1_000
    small = await sim_factory(symbols=[SYMBOL], config=config, clock=lambda: pinned)
    budgets = [RateBudget(), RateBudget()]
    for budget in budgets:
        budget.share_host_holds(HostHolds(small.rest_url, tmp_path))
    async with BinanceClient(small.rest_url, "K", "S", budget=budgets[0]) as a, \
            BinanceClient(small.rest_url, "K", "S", budget=budgets[1]) as b:
        with pytest.raises(RateLimitedError):
            for _ in range(30):
                await a.book_ticker(SYMBOL)
        assert b.budget.holds() == ["rate_limited"] and b.budget.blocked_for() > 1
        assert "another process of this host" in b.budget.why_wait(Cost(weight=2))
        with pytest.raises(BudgetExhaustedError):
            await b.budget.acquire(Cost(weight=2), wait=False)
        assert (b.budget.rate_limited, b.budget.banned) == (0, 0)
        # the IP's limit the 429 named (40) is B's too: it would otherwise learn it by a 429 of its own
        assert a.budget.limits["weight_1m"] == b.budget.limits["weight_1m"] == 38 and b.budget.lowered
        [hold] = tmp_path.glob("ip-*.hold")
        doc = json.loads(hold.read_text())
        assert set(doc) == {"until", "for", "what", "limit"} and doc["limit"] == 40   # times, a word, a number: never a key


async def test_a_429_on_the_funding_reads_own_limit_holds_only_them_and_they_never_wait_for_room(sim_factory):
    """fundingRate and fundingInfo share 500 requests a 5 minutes per IP apart from the weight; others on the
    IP spent them (the simulator's limit is 2 here): the 429 holds those two, not the IP's other requests, and
    a funding read held is refused at once (its callers read again later), never sent into the 429."""
    small = await sim_factory(symbols=[SYMBOL], config={"rate_limits": {"funding_reads_per_5min": 2}})
    async with BinanceClient(small.rest_url, "K", "S") as client:
        await client.funding_terms(SYMBOL)
        await client.funding_times(SYMBOL, 0)
        with pytest.raises(RateLimitedError) as info:
            await client.funding_terms(SYMBOL)
        assert info.value.http_status == 429 and info.value.said_when
        assert client.budget.holds() == ["funding_reads_limited"] and client.budget.blocked_for() == 0
        assert (await client.book_ticker(SYMBOL)).symbol == SYMBOL   # the weight's requests go on
        with pytest.raises(BudgetExhaustedError):
            await client.funding_times(SYMBOL, 0)
        assert client.budget.rate_limited == 1   # nothing more sent into the 429


async def test_an_order_count_429_pauses_new_orders_but_cancels_still_go_out(sim_factory):
    # the account's own limit, 5 a 10 seconds, is not read: the budget assumes exchangeInfo's 300
    small = await sim_factory(symbols=[SYMBOL], config={"accounts": [{"name": "main", "orders_per_10s": 5}]})
    name, key, secret = small.accounts[0]
    async with BinanceClient(small.rest_url, key, secret) as client:
        first = await client.place_order(await passive_order(client, "cnt"))
        with pytest.raises(RateLimitedError) as info:
            for _ in range(10):
                await client.place_order(await passive_order(client, "cnt"))
        assert info.value.code == -1015 and info.value.http_status == 429
        assert client.budget.limits["orders_10s"] == 4   # the limit the refusal names, followed (95 % of 5)
        with pytest.raises(BudgetExhaustedError):
            await client.place_order(await passive_order(client, "cnt"), wait=False)
        cancelled = await client.cancel_order(SYMBOL, order_id=first.order_id)  # not held back
        assert cancelled.status == "CANCELED"


async def test_an_order_count_429_without_retry_after_holds_new_orders_to_its_window_s_end(sim):
    """Binance's derivatives docs: too many orders is "a 429 error without the Retry-After header". The
    client paused 1 s, and a quoting agent's next orders met the same 429 until the minute ended, ten
    of them the IP's ban. It now waits to the end of the window the answer names, on the exchange's clock."""
    name, key, secret = sim.accounts[0]
    async with BinanceClient(sim.rest_url, key, secret) as client:
        order = await passive_order(client, "nra")
        await fault(sim, mode="429", answer="-1015", count=1, path="/fapi/v1/order", method="POST")
        with pytest.raises(RateLimitedError) as info:
            await client.place_order(order)
        server_ms = client.clock_ms() + client.time_offset_ms
        to_minute_end = (60_000 - server_ms % 60_000) / 1000
        assert info.value.code == -1015 and not info.value.said_when
        assert to_minute_end - 1 < client.budget.wait_time(Cost(orders_10s=1, orders_1m=1)) <= to_minute_end + 1
        assert client.budget.wait_time(Cost(weight=1)) == 0   # reads and cancels go on


async def test_a_proxys_429_page_without_retry_after_pauses_a_second_not_the_minute(sim):
    """Not Binance's JSON answer: no window it names. Held to the minute's end, it held every request
    (cancels, the dead-man heartbeat, a kill's cancel-all) for up to a minute."""
    name, key, secret = sim.accounts[0]
    async with BinanceClient(sim.rest_url, key, secret) as client:
        await fault(sim, mode="error", answer="503-html", status=429, count=1, path="/fapi/v1/openOrders")
        with pytest.raises(RateLimitedError) as info:
            await client.open_orders(SYMBOL)
        assert not info.value.said_when and not info.value.json_answer
        assert 0 < client.budget.blocked_for() <= 1.0


async def test_a_throttled_order_is_a_definite_failure_and_holds_quoting_but_not_a_reduce_only_order(sim):
    name, key, secret = sim.accounts[0]
    await admin(sim, "POST", "/sim/position", {"account": name, "symbol": SYMBOL, "amount": "0.050"})
    await admin(sim, "POST", "/sim/fault/rest", {"mode": "throttle", "count": 100})
    async with BinanceClient(sim.rest_url, key, secret) as client:
        order = await passive_order(client, "thr")
        with pytest.raises(ServerError) as info:   # not OutcomeUnknownError: nothing executed
            await client.place_order(order)
        assert (info.value.code, info.value.http_status) == (-1008, 503)
        with pytest.raises(BudgetExhaustedError):   # held locally, not sent to be refused again
            await client.place_order(dataclasses.replace(order, client_order_id=cid("thr")), wait=False)
        top = await client.book_ticker(SYMBOL)   # reads go on
        filters = await client.symbol_filters(SYMBOL)
        reducing = OrderRequest(symbol=SYMBOL, side=Side.SELL, order_type=OrderType.LIMIT, quantity="0.010",
                                price=filters.price_str(filters.price_ticks_floor(top.ask) + 250),
                                time_in_force=TimeInForce.GTX, reduce_only=True, client_order_id=cid("thr"))
        placed = await client.place_order(reducing, wait=False, risk=True)
        assert placed.status == "NEW" and placed.reduce_only
        assert client.budget.throttled == 1
        state = await admin(sim, "GET", "/sim/state", params={"symbol": SYMBOL})
        assert [o["clientOrderId"] for o in state["open_orders"]] == [reducing.client_order_id]
        assert state["server"]["throttled"] == 1
        await admin(sim, "POST", "/sim/fault/clear", {})
        await client.cancel_all(SYMBOL)


async def test_a_refused_later_batch_request_is_reported_in_place_not_raised(sim):
    name, key, secret = sim.accounts[0]
    budget = RateBudget(orders_per_10s=6, reserve=0.0)  # 95 %: room for exactly one batch of 5
    async with BinanceClient(sim.rest_url, key, secret, budget=budget) as client:
        base = await passive_order(client, "chunk")
        orders = [
            dataclasses.replace(base, client_order_id=cid("chunk"))
            for _ in range(7)
        ]
        results = await client.batch_place(orders, wait=False)
        assert [type(r) for r in results] == [OrderInfo] * 5 + [BudgetExhaustedError] * 2
        with pytest.raises(BudgetExhaustedError):  # nothing got through: raised, as for one order
            await client.batch_place(orders[5:], wait=False)
        await client.cancel_all(SYMBOL)


async def test_a_read_held_by_the_ips_weight_goes_at_the_exchanges_next_minute_and_says_why(sim_factory):
    # The simulator's clock runs 4 s before a minute's boundary; others on the IP have spent most of
    # the minute's weight. A fresh client, which learns the exchange's clock first, holds its read
    # until that minute ends (not a whole minute from the count it saw), says why while it waits,
    # and the exchange counts the read in the new minute.
    start = int(time.time() * 1000)
    boundary = (start // 60_000 + 2) * 60_000
    shift = boundary - 4_000 - start
    small = await sim_factory(symbols=[SYMBOL], config={"rate_limits": {"weight_per_minute": 1000}},
                              clock=lambda: int(time.time() * 1000) + shift)
    async with BinanceClient(small.rest_url, budget=RateBudget(weight_per_min=1000)) as others:
        for _ in range(40):
            await others.book_ticker(SYMBOL)  # weight 2 each: 80 of the IP's minute
    budget = RateBudget(weight_per_min=100)  # its quoting lane: 71 of Binance's (here 100) a minute
    async with BinanceClient(small.rest_url, budget=budget) as client:
        await client.sync_time()
        assert budget.usage()["weight_1m"].exchange_used == 81  # the exchange's count, with our sync
        left_s = (boundary - client._timestamp()) / 1000
        assert 0 < left_s < 4
        assert budget.wait_time(Cost(weight=2)) == pytest.approx(left_s + 0.5, abs=0.25)
        read = asyncio.ensure_future(client.book_ticker(SYMBOL))
        waits = await wait_for(lambda: list(budget.waiting.values()), what="the read held, and why")
        assert "IP weight a minute as the exchange counts it: 81 + 2 above 71" in waits[0]
        await read
        assert budget.waiting == {}
    async with aiohttp.ClientSession() as http:  # the exchange's own count: the read is in a new minute
        async with http.get(small.rest_url + "/fapi/v1/ping") as resp:
            assert resp.headers["X-MBX-USED-WEIGHT-1M"] == "3"  # the read's 2 and this ping's 1


async def test_a_clock_learned_over_a_slow_way_in_is_never_ahead_of_the_exchange(sim, own_client):
    """/fapi/v1/time's request held 2.4 s on its way in (a congested link), its answer back at once:
    the middle of the round trip put the offset 1,200 ms ahead, so every signed request was refused
    -1021 "ahead" and each re-sync learned the same. The offset is learned at most 500 ms ahead."""
    from fleet.binance.signing import AHEAD_AT_MOST_MS

    await admin(sim, "POST", "/sim/fault/latency", {"ms": 2400, "path": "/fapi/v1/time"})
    offset = await own_client.sync_time()   # the simulator's clock is this host's: the true offset is 0
    assert -50 <= offset <= AHEAD_AT_MOST_MS, offset
    await admin(sim, "POST", "/sim/fault/clear", {})
    resyncs = own_client.clock_resyncs
    assert await own_client.open_orders(SYMBOL) == [] and own_client.clock_resyncs == resyncs   # taken first time


async def test_a_timestamp_refused_again_after_a_resync_is_an_error_said(sim, own_client, caplog):
    """-1021 twice: the clock re-learned and the request sent once more, then the refusal is raised and
    said as an ERROR (a stuck clock was a WARNING a request, the agent saying "quoting")."""
    import logging

    from fleet.binance.errors import TimestampError

    await fault(sim, mode="error", answer="-1021", count=2, path="/fapi/v1/openOrders")
    with caplog.at_level(logging.WARNING, logger="fleet.binance.client"), pytest.raises(TimestampError):
        await own_client.open_orders(SYMBOL)
    said = [r for r in caplog.records if r.name == "fleet.binance.client"]
    assert [r.levelno for r in said] == [logging.WARNING, logging.ERROR], [r.getMessage() for r in said]
    assert "timestamp refused again after re-learning" in said[-1].getMessage()
    assert await own_client.open_orders(SYMBOL) == []   # the faults spent: taken
