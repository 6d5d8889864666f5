"""Every REST call of the client against the simulator over loopback, as Binance documents it."""

from __future__ import annotations

import itertools
import time
from decimal import Decimal

import aiohttp
import pytest

from fleet.binance.client import BinanceClient
from fleet.binance.enums import OrderType, Side, TimeInForce
from fleet.binance.errors import (
    BinanceError,
    InsufficientMarginError,
    InvalidListenKeyError,
    MinNotionalError,
    NotSentError,
    FilterRejectedError,
    PostOnlyRejectedError,
    ReduceOnlyRejectedError,
    TimestampError,
    UnknownOrderError,
)
from fleet.binance.models import ModifyRequest, OrderInfo, OrderRequest
from fleet.binance.ratelimit import Cost
from tests.polling import wait_for

SYMBOL = "ETHUSDC"
_ids = itertools.count(1)


def cid(tag: str) -> str:
    """A client order id unique within the test session (the agent puts its epoch here)."""
    return f"t-{tag}-{int(time.time() * 1000) % 10**9}-{next(_ids)}"


@pytest.fixture
async def client(sim):
    name, key, secret = sim.accounts[0]
    async with BinanceClient(sim.rest_url, key, secret) as c:
        await c.sync_time()
        yield c


@pytest.fixture
async def filters(client):
    return await client.symbol_filters(SYMBOL)


async def passive_bid(client, filters, ticks_away: int = 200) -> tuple[str, int]:
    """A bid price well below the touch (never fills), and its ticks."""
    top = await client.book_ticker(SYMBOL)
    ticks = filters.price_ticks_floor(top.bid) - ticks_away
    return filters.price_str(ticks), ticks


def limit_buy(price: str, qty: str = "0.010", tif: str = "GTX", tag: str = "buy", **kw) -> OrderRequest:
    return OrderRequest(symbol=SYMBOL, side=Side.BUY, order_type=OrderType.LIMIT, quantity=qty, price=price,
                        time_in_force=TimeInForce(tif), client_order_id=cid(tag), **kw)


# -- public data --------------------------------------------------------------------------------


async def test_server_time_and_clock_offset(client):
    server = await client.server_time()
    assert abs(server - time.time() * 1000) < 60_000
    assert abs(await client.sync_time()) < 60_000
    await client.ping()


async def test_exchange_info_gives_exact_filters(client, filters):
    info = await client.exchange_info()
    assert {s["symbol"] for s in info["symbols"]} >= {SYMBOL}
    assert filters.tick_size == Decimal("0.01") and filters.step_size == Decimal("0.001")
    assert filters.min_notional > 0
    with pytest.raises(BinanceError, match="NOPEUSDT"):
        await client.symbol_filters("NOPEUSDT")


async def test_depth_book_ticker_and_premium_index(client):
    depth = await client.depth(SYMBOL, limit=10)
    assert depth.bids and depth.asks and depth.bids[0][0] < depth.asks[0][0]
    assert len(depth.bids) <= 10
    top = await client.book_ticker(SYMBOL)
    assert top.symbol == SYMBOL and 0 < top.bid < top.ask
    prem = await client.premium_index(SYMBOL)
    assert prem.symbol == SYMBOL and prem.mark_price > 0 and prem.next_funding_time > 0


# -- orders -------------------------------------------------------------------------------------


async def test_place_query_modify_cancel_a_post_only_order(client, filters):
    price, ticks = await passive_bid(client, filters)
    req = limit_buy(price)
    placed = await client.place_order(req)
    assert isinstance(placed, OrderInfo)
    assert placed.status == "NEW" and placed.client_order_id == req.client_order_id
    assert placed.price == Decimal(price) and placed.orig_qty == Decimal("0.010")
    by_id = await client.query_order(SYMBOL, order_id=placed.order_id)
    by_cid = await client.query_order(SYMBOL, client_order_id=req.client_order_id)
    assert by_id.order_id == by_cid.order_id == placed.order_id
    assert placed.order_id in {o.order_id for o in await client.open_orders(SYMBOL)}

    new_price = filters.price_str(ticks - 1)
    modified = await client.modify_order(
        ModifyRequest(symbol=SYMBOL, side=Side.BUY, quantity="0.020", price=new_price, client_order_id=req.client_order_id)
    )
    assert modified.order_id == placed.order_id
    assert modified.price == Decimal(new_price) and modified.orig_qty == Decimal("0.020")

    cancelled = await client.cancel_order(SYMBOL, order_id=placed.order_id)
    assert cancelled.status == "CANCELED" and cancelled.is_closed
    with pytest.raises(UnknownOrderError) as info:
        await client.cancel_order(SYMBOL, order_id=placed.order_id)
    assert info.value.code == -2011 and info.value.http_status == 400
    with pytest.raises(UnknownOrderError) as info:
        await client.query_order(SYMBOL, client_order_id=cid("never-sent"))
    assert info.value.code == -2013


async def test_batch_place_modify_and_cancel_split_into_exchange_sized_requests(client, filters, sim):
    # the mid held still (takers trade on): the bid priced to cross still crosses when the batch lands
    async with aiohttp.ClientSession() as http, http.post(f"{sim.rest_url}/sim/market/freeze",
                                                          json={"symbol": SYMBOL, "mode": "price"}) as frozen:
        assert frozen.status == 200
    price, ticks = await passive_bid(client, filters, ticks_away=300)
    top = await client.book_ticker(SYMBOL)
    crossing = filters.price_str(filters.price_ticks_ceil(top.ask) + 5)
    orders = [limit_buy(filters.price_str(ticks - i), tag="batch") for i in range(7)]
    orders[3] = limit_buy(crossing, tag="cross")  # a post-only bid above the ask: rejected in place
    sent_before = client.requests_sent
    results = await client.batch_place(orders)
    assert client.requests_sent - sent_before == 2  # 5 + 2
    assert isinstance(results[3], PostOnlyRejectedError) and results[3].code == -5022
    placed = [r for r in results if isinstance(r, OrderInfo)]
    assert len(placed) == 6
    assert [r.client_order_id for r in placed] == [o.client_order_id for i, o in enumerate(orders) if i != 3]

    modifies = [
        ModifyRequest(symbol=SYMBOL, side=Side.BUY, quantity="0.011", price=filters.price_str(ticks - 10 - i), order_id=o.order_id)
        for i, o in enumerate(placed)
    ]
    modified = await client.batch_modify(modifies)
    assert all(isinstance(m, OrderInfo) and m.orig_qty == Decimal("0.011") for m in modified)

    sent_before = client.requests_sent
    ids = [o.client_order_id for o in placed] + [cid(f"ghost{i}") for i in range(6)]
    cancelled = await client.batch_cancel(SYMBOL, client_order_ids=ids)
    assert client.requests_sent - sent_before == 2  # 10 + 2
    assert [c.status for c in cancelled[:6]] == ["CANCELED"] * 6
    assert all(isinstance(c, UnknownOrderError) for c in cancelled[6:])
    open_ids = {o.client_order_id for o in await client.open_orders(SYMBOL)}
    assert not open_ids & set(ids)


async def test_orders_go_alone_while_the_ips_weight_is_the_scarcest_window(client, filters):
    """A batch call spends 5 IP weight, 5 of the account's 10-second count and 1 of its minute's; a
    single call no IP weight and 1 of each. Several orders go alone only while weight is the
    budget's scarcest window (many agents behind one IP); a lone order always goes alone."""
    _, ticks = await passive_bid(client, filters, ticks_away=350)

    async def place(n: int, tag: str) -> tuple[int, list]:
        before = client.requests_sent
        results = await client.place_orders([limit_buy(filters.price_str(ticks - i), tag=tag) for i in range(n)])
        assert all(isinstance(r, OrderInfo) for r in results), results
        return client.requests_sent - before, results

    sent, five = await place(5, "calm")
    assert sent == 1
    weight = client.budget.usage()["weight_1m"].used
    sent, one = await place(1, "lone")
    assert sent == 1 and client.budget.usage()["weight_1m"].used == weight  # POST order: no IP weight
    client.budget.try_charge(Cost(weight=1500))  # the IP's weight: the scarcest window now
    sent, three = await place(3, "weight")
    assert sent == 3
    modified = await client.modify_orders([
        ModifyRequest(symbol=SYMBOL, side=Side.BUY, quantity="0.011", price=filters.price_str(ticks - 20 - i),
                      order_id=o.order_id) for i, o in enumerate(three)])
    assert [m.orig_qty for m in modified] == [Decimal("0.011")] * 3
    client.budget.try_charge(Cost(orders_1m=800))  # now the account's minute is the scarcer
    sent, two = await place(2, "minute")
    assert sent == 1
    placed = {o.client_order_id for o in five + one + three + two}
    assert placed <= {o.client_order_id for o in await client.open_orders(SYMBOL)}
    await client.batch_cancel(SYMBOL, client_order_ids=sorted(placed))


async def test_batch_cancel_by_order_id_and_cancel_all(client, filters):
    price, ticks = await passive_bid(client, filters, ticks_away=400)
    results = await client.batch_place([limit_buy(filters.price_str(ticks - i), tag="ca") for i in range(3)])
    ids = [r.order_id for r in results if isinstance(r, OrderInfo)]
    assert len(ids) == 3
    cancelled = await client.batch_cancel(SYMBOL, order_ids=ids[:1])
    assert cancelled[0].order_id == ids[0] and cancelled[0].status == "CANCELED"
    answer = await client.cancel_all(SYMBOL)
    assert answer.get("code") == 200
    assert not {o.order_id for o in await client.open_orders(SYMBOL)} & set(ids)


async def test_cancel_listed_sends_every_batch_when_one_is_refused(client, filters, sim):
    """Twelve listed orders go in two batch cancels: the first refused (-1001, nothing executed), the
    second is sent all the same and cancels its two; the refusal is raised after."""
    _, ticks = await passive_bid(client, filters, ticks_away=450)
    results = await client.batch_place([limit_buy(filters.price_str(ticks - i), tag="cl") for i in range(12)])
    ids = {r.order_id for r in results if isinstance(r, OrderInfo)}
    assert len(ids) == 12
    async with aiohttp.ClientSession() as http, http.post(
            f"{sim.rest_url}/sim/fault/rest",
            json={"mode": "error", "count": 1, "path": "/fapi/v1/batchOrders", "method": "DELETE"}) as fault:
        assert fault.status == 200
    with pytest.raises(BinanceError) as refused:
        await client.cancel_listed(SYMBOL, keep=lambda o: o.order_id in ids)
    assert refused.value.code == -1001
    left = {o.order_id for o in await client.open_orders(SYMBOL)} & ids
    assert len(left) == 10
    await client.batch_cancel(SYMBOL, order_ids=sorted(left))


async def test_the_client_knows_an_outage_of_the_exchanges_rest_and_its_end(client, sim):
    """A 503 starts an outage (its event unset), a refusal of the request itself is the service
    answering (an unknown order: -2013), the next answer ends the outage and sets its event."""
    assert not client.rest_failing
    with pytest.raises(UnknownOrderError):
        await client.query_order(SYMBOL, client_order_id=cid("never"))
    assert not client.rest_failing
    async with aiohttp.ClientSession() as http, http.post(
            f"{sim.rest_url}/sim/fault/rest", json={"mode": "error", "count": 2, "answer": "503"}) as fault:
        assert fault.status == 200
    with pytest.raises(BinanceError) as failed:
        await client.server_time()
    assert failed.value.http_status == 503 and client.rest_failing
    outage = client.rest_back
    with pytest.raises(BinanceError):
        await client.server_time()
    assert client.rest_back is outage and not outage.is_set()   # one outage, one event
    await client.server_time()
    assert outage.is_set() and not client.rest_failing


async def test_countdown_cancel_all_cancels_when_not_renewed(client, filters):
    price, _ = await passive_bid(client, filters, ticks_away=500)
    order = await client.place_order(limit_buy(price, tag="dms"))
    armed = await client.countdown_cancel_all(SYMBOL, 400)
    assert armed["symbol"] == SYMBOL and str(armed["countdownTime"]) == "400"

    async def gone():
        return order.order_id not in {o.order_id for o in await client.open_orders(SYMBOL)}

    await wait_for(gone, what="the order gone")
    assert (await client.query_order(SYMBOL, order_id=order.order_id)).status == "CANCELED"
    await client.countdown_cancel_all(SYMBOL, 0)  # disarmed: a new order stays
    kept = await client.place_order(limit_buy(price, tag="dms2"))
    assert (await client.query_order(SYMBOL, order_id=kept.order_id)).status == "NEW"
    await client.cancel_order(SYMBOL, order_id=kept.order_id)


# -- account ------------------------------------------------------------------------------------


async def test_position_follows_a_fill(sim, filters):
    name, key, secret = sim.accounts[-1]
    async with BinanceClient(sim.rest_url, key, secret) as client:
        before = await client.position(SYMBOL)
        top = await client.book_ticker(SYMBOL)
        ioc = OrderRequest(
            symbol=SYMBOL, side=Side.BUY, order_type=OrderType.LIMIT, quantity="0.010",
            price=filters.price_str(filters.price_ticks_ceil(top.ask) + 20), time_in_force=TimeInForce.IOC,
            client_order_id=cid("fill"),
        )
        filled = await client.place_order(ioc)
        assert filled.order_id > 0

        async def moved():
            pos = await client.position(SYMBOL)
            return pos if pos.amount == before.amount + Decimal("0.010") else None

        pos = await wait_for(moved, what="the position moved")
        assert pos.symbol == SYMBOL and pos.entry_price > 0 and pos.mark_price > 0
        back = OrderRequest(symbol=SYMBOL, side=Side.SELL, order_type=OrderType.MARKET, quantity="0.010", reduce_only=True,
                            client_order_id=cid("flat"))
        await client.place_order(back)
        await wait_for(lambda: _amount_is(client, before.amount), what="the position back")


async def _amount_is(client, amount):
    return (await client.position(SYMBOL)).amount == amount


async def test_account_balance_income_commission_leverage(client):
    account = await client.account()
    assert "totalWalletBalance" in account and isinstance(account["assets"], list)
    balances = await client.balance()
    assert any(b["asset"] == "USDC" and Decimal(b["balance"]) > 0 for b in balances)
    income = await client.income(symbol=SYMBOL, limit=10)
    assert isinstance(income, list)
    rate = await client.commission_rate(SYMBOL)
    assert rate.symbol == SYMBOL and 0 <= rate.maker <= rate.taker
    lev = await client.set_leverage(SYMBOL, 7)
    assert lev["leverage"] == 7 and lev["symbol"] == SYMBOL
    await client.set_leverage(SYMBOL, 20)


async def test_listen_key_create_keepalive_close(client):
    key = await client.create_listen_key()
    assert key and await client.create_listen_key() == key  # the same key while it is alive
    assert await client.keepalive_listen_key() in (key, None)
    await client.close_listen_key()
    with pytest.raises(InvalidListenKeyError) as info:
        await client.keepalive_listen_key()
    assert info.value.code == -1125


# -- rejections ---------------------------------------------------------------------------------


async def test_rejections_raise_their_own_classes(client, filters):
    price, ticks = await passive_bid(client, filters)
    top = await client.book_ticker(SYMBOL)
    with pytest.raises(PostOnlyRejectedError) as info:
        await client.place_order(limit_buy(filters.price_str(filters.price_ticks_ceil(top.ask) + 1)))
    assert info.value.code == -5022
    with pytest.raises(MinNotionalError):
        await client.place_order(limit_buy(price, qty="0.001"))
    with pytest.raises(ReduceOnlyRejectedError):
        await client.place_order(
            OrderRequest(symbol=SYMBOL, side=Side.SELL, order_type=OrderType.MARKET, quantity="0.010", reduce_only=True,
                         client_order_id=cid("ro"))
        )
    with pytest.raises(InsufficientMarginError):
        await client.place_order(limit_buy(price, qty="3000.000", tif="GTC"))   # 9 M: within 20x's 20 M
    with pytest.raises(FilterRejectedError):
        await client.place_order(limit_buy(price + "5"))  # one decimal more than the tick allows
    with pytest.raises(FilterRejectedError):
        await client.place_order(limit_buy(price, qty="0.0105"))


async def test_clock_skew_is_learned_again_on_minus_1021(client, filters):
    client.time_offset_ms = -120_000  # as if our clock ran two minutes behind the exchange
    client.resync_on_skew = False
    with pytest.raises(TimestampError) as info:
        await client.open_orders(SYMBOL)
    assert info.value.code == -1021
    client.resync_on_skew = True
    assert isinstance(await client.open_orders(SYMBOL), list)  # re-synced, then sent again
    assert abs(client.time_offset_ms) < 60_000 and client.clock_resyncs == 1


async def test_the_order_gate_holds_back_a_resend_after_minus_1021(client, filters):
    """An agent's gate is its lease and kill state: an order refused -1021 is sent again after the clock re-sync,
    one round trip later; if the gate closed meanwhile it is not sent at all."""
    price, _ = await passive_bid(client, filters)
    asked = []

    def gate(endpoint, params) -> str | None:
        asked.append((endpoint.path, params.get("newClientOrderId")))
        return None if len(asked) == 1 else "closed by the test"   # open for the first send, closed for the resend

    client.order_gate = gate
    client.time_offset_ms = -120_000  # the first send is refused -1021
    order = limit_buy(price, tag="gated")
    with pytest.raises(NotSentError, match=r"order gate is closed \(closed by the test\)"):
        await client.place_order(order)
    assert asked == [("/fapi/v1/order", order.client_order_id)] * 2
    with pytest.raises(UnknownOrderError):   # the exchange never saw it
        await client.query_order(SYMBOL, client_order_id=order.client_order_id)
    assert isinstance(await client.open_orders(SYMBOL), list)   # reads and cancels pass a closed gate
    client.order_gate = lambda endpoint, params: None
    placed = await client.place_order(limit_buy(price, tag="gate-open"))
    assert placed.status == "NEW"
    await client.cancel_order(SYMBOL, order_id=placed.order_id)


async def test_a_resend_after_minus_1021_is_asked_of_the_caller_with_its_new_timestamp_before_it_goes(client, filters):
    """The caller (an agent's sender) is asked, as the resend is signed, with the new timestamp: the window in
    which the exchange may take the write runs from it, not from the first signature (the first may have been
    held on its way for seconds); a reason keeps the resend here."""
    from fleet.binance.client import RESIGNING

    price, _ = await passive_bid(client, filters)
    asked = []

    def resigned(endpoint, params, at_ms) -> str | None:
        asked.append((endpoint.path, params.get("newClientOrderId"), at_ms))
        return "closed by the test" if len(asked) == 1 else None

    told = RESIGNING.set(resigned)
    try:
        client.time_offset_ms = -120_000  # the first send is refused -1021
        vetoed = limit_buy(price, tag="resign-no")
        with pytest.raises(NotSentError, match="not sent again after -1021: closed by the test"):
            await client.place_order(vetoed)
        with pytest.raises(UnknownOrderError):   # the exchange never saw it
            await client.query_order(SYMBOL, client_order_id=vetoed.client_order_id)
        client.time_offset_ms -= 120_000
        placed = await client.place_order(limit_buy(price, tag="resign-yes"))
        assert placed.status == "NEW"
        server_ms = await client.server_time()
        assert [(path, c) for path, c, _ in asked] == [("/fapi/v1/order", vetoed.client_order_id),
                                                       ("/fapi/v1/order", placed.client_order_id)]
        assert all(server_ms - 5_000 < at <= server_ms + 1_000 for _, _, at in asked)   # the exchange's clock
    finally:
        RESIGNING.reset(told)
    await client.cancel_order(SYMBOL, order_id=placed.order_id)


async def test_unsigned_client_refuses_signed_calls_before_sending(sim):
    async with BinanceClient(sim.rest_url) as anon:
        assert (await anon.book_ticker(SYMBOL)).symbol == SYMBOL
        with pytest.raises(BinanceError, match="needs an API key"):
            await anon.open_orders(SYMBOL)
        assert "secret" not in repr(anon)


async def test_v2_fallback_when_v3_paths_are_missing_and_no_algo_service(sim):
    """A loopback proxy in front of the simulator answers 404 on /fapi/v3 and on the Algo Service's
    routes (as an older deployment would): the v2 paths are used, and no conditional orders exist."""
    import aiohttp
    from aiohttp import web

    async def forward(request: web.Request) -> web.Response:
        if request.path.startswith("/fapi/v3/") or request.path == "/fapi/v1/openAlgoOrders":
            return web.json_response({"code": -5000, "msg": f"Path {request.path}, Method GET is invalid"}, status=404)
        headers = {k: v for k, v in request.headers.items() if k in ("X-MBX-APIKEY", "Content-Type")}
        url = sim.rest_url + request.path + ("?" + request.rel_url.raw_query_string if request.query_string else "")
        async with aiohttp.ClientSession() as http:
            from yarl import URL

            async with http.request(request.method, URL(url, encoded=True), data=await request.read(),
                                    headers=headers) as resp:
                return web.Response(status=resp.status, body=await resp.read(), content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        name, key, secret = sim.accounts[0]
        async with BinanceClient(f"http://127.0.0.1:{port}", key, secret) as old, BinanceClient(
            sim.rest_url, key, secret
        ) as new:
            assert (await old.position(SYMBOL)).amount == (await new.position(SYMBOL)).amount
            assert (old.position_api, new.position_api) == ("v2", "v3")
            assert "totalWalletBalance" in await old.account()
            assert any(b["asset"] == "USDC" for b in await old.balance())
            assert await old.open_algo_orders(SYMBOL) == []
            sent = old.requests_sent
            assert await old.open_algo_orders(SYMBOL) == [] and old.requests_sent == sent   # not asked again
            assert await new.open_algo_orders(SYMBOL) == []   # the simulator has the service: none open
    finally:
        await runner.cleanup()


async def test_a_position_carries_its_request_time_and_the_earliest_its_read_can_be(client):
    # read_after: the request's timestamp less the 1,000 ms by which the exchange lets it run ahead,
    # since this host's estimate of the exchange's clock may be that wrong
    client.time_offset_ms += 900   # learned ahead (half an uneven round trip) and never refused
    before = int(time.time() * 1000) + client.time_offset_ms
    pos = await client.position(SYMBOL)
    after = int(time.time() * 1000) + client.time_offset_ms
    read_by = await client.server_time()   # the exchange's own clock, after it read the position
    assert before <= pos.as_of <= after   # this host's estimate of when it was sent
    assert pos.as_of - 1_000 == pos.read_after <= read_by
