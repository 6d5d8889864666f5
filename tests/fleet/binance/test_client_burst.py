"""The rate budget under a burst of 2,000 order requests: the simulator never answers 429.

2,000 real orders at Binance's 300 / 10 s would take over a minute, so the burst is fired with
``wait=False`` by four agents sharing one account (share 0.25 each): each sends what its share
allows and refuses the rest locally. A second, smaller burst with ``wait=True`` shows the other
choice: requests wait for the window to slide and all go through, still without a 429. A third
test shows the budget reading the exchange's ``X-MBX-ORDER-COUNT-*`` headers to respect orders
sent by someone it does not know about. Each test starts its own simulator (``sim_factory``) so the
account's counters start at zero.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from decimal import Decimal

import aiohttp

from fleet.binance.client import BinanceClient
from fleet.binance.enums import OrderType, Side, TimeInForce
from fleet.binance.errors import BinanceError, BudgetExhaustedError, RateLimitedError
from fleet.binance.models import OrderInfo, OrderRequest
from fleet.binance.ratelimit import RateBudget

SYMBOL = "ETHUSDC"
AGENTS = 4
BURST = 2000


async def far_ioc_orders(client: BinanceClient, tag: str, n: int) -> list[OrderRequest]:
    """IOC bids far below the book: each counts as an order and expires at once (nothing rests)."""
    filters = await client.symbol_filters(SYMBOL)
    top = await client.book_ticker(SYMBOL)
    price = filters.price_str(filters.price_ticks_floor(top.bid * Decimal("0.97")))
    ids = itertools.count()
    return [
        OrderRequest(symbol=SYMBOL, side=Side.BUY, order_type=OrderType.LIMIT, quantity="0.010", price=price,
                     time_in_force=TimeInForce.IOC, client_order_id=f"{tag}-{next(ids)}")
        for _ in range(n)
    ]


def tally(results) -> dict[str, int]:
    out = {"placed": 0, "refused": 0, "rate_limited": 0, "other": 0}
    for r in results:
        if isinstance(r, OrderInfo):
            out["placed"] += 1
        elif isinstance(r, BudgetExhaustedError):
            out["refused"] += 1
        elif isinstance(r, RateLimitedError):
            out["rate_limited"] += 1
        else:
            out["other"] += 1
    return out


async def test_burst_of_2000_orders_split_among_agents_never_draws_a_429(sim_factory):
    sim = await sim_factory(symbols=[SYMBOL])
    name, key, secret = sim.accounts[0]
    clients = [BinanceClient(sim.rest_url, key, secret, budget=RateBudget(share=1 / AGENTS, reserve=0.0)) for _ in range(AGENTS)]
    for c in clients:
        await c.open()
    try:
        batches = [await far_ioc_orders(c, f"a{i}", BURST // AGENTS) for i, c in enumerate(clients)]
        results = await asyncio.gather(
            *(c.place_order(o, wait=False) for c, batch in zip(clients, batches) for o in batch),
            return_exceptions=True,
        )
        counts = tally(results)
        per_agent = clients[0].budget.limits["orders_10s"]  # 300 * 0.25 * 0.95 = 71
        assert counts == {"placed": AGENTS * per_agent, "refused": BURST - AGENTS * per_agent,
                          "rate_limited": 0, "other": 0}
        assert AGENTS * per_agent <= 300
        assert all(c.budget.rate_limited == 0 for c in clients)
    finally:
        for c in clients:
            await c.close()


async def test_burst_that_waits_goes_through_after_the_window_slides_without_a_429(sim_factory):
    # a low 10 s limit keeps the wait to one window; the budget is told the same limits
    config = {"rate_limits": {"orders_per_10s": 20, "orders_per_minute": 1200}}
    sim = await sim_factory(symbols=[SYMBOL], config=config)
    name, key, secret = sim.accounts[0]
    budget = RateBudget(orders_per_10s=20, orders_per_min=1200, reserve=0.0)
    async with BinanceClient(sim.rest_url, key, secret, budget=budget) as client:
        orders = await far_ioc_orders(client, "w", 30)  # 19 now, 11 once the first ones age out
        start = time.monotonic()
        results = await asyncio.gather(*(client.place_order(o, wait=True) for o in orders), return_exceptions=True)
        elapsed = time.monotonic() - start
        assert tally(results) == {"placed": 30, "refused": 0, "rate_limited": 0, "other": 0}
        assert elapsed >= 9.0  # it waited for the sliding window rather than sending into a 429
        assert budget.rate_limited == 0


async def test_headers_make_the_budget_respect_orders_it_did_not_send(sim_factory):
    # the simulator's clock is pinned so its 10 s window cannot roll over mid-test; the clients
    # stamp requests 30 s in the past with a 60 s recvWindow, which the exchange accepts
    pinned = int(time.time() * 1000)
    sim = await sim_factory(symbols=[SYMBOL], clock=lambda: pinned)
    name, key, secret = sim.accounts[0]
    other = BinanceClient(sim.rest_url, key, secret, recv_window=60_000)
    me = BinanceClient(sim.rest_url, key, secret, recv_window=60_000, budget=RateBudget(reserve=0.0))
    async with other, me:
        for c in (other, me):
            c.time_offset_ms = pinned - int(time.time() * 1000) - 30_000
        # someone else on the account (unknown to my budget) has used 250 of the 300 / 10 s
        theirs = await far_ioc_orders(other, "them", 250)
        done = await asyncio.gather(*(other.place_order(o) for o in theirs), return_exceptions=True)
        assert tally(done)["placed"] == 250
        mine = await far_ioc_orders(me, "me", 100)
        placed = refused = 0
        for order in mine:  # one at a time, so each answer's headers inform the next decision
            try:
                await me.place_order(order, wait=False)
                placed += 1
            except BudgetExhaustedError:
                refused += 1
            except BinanceError as exc:  # a 429 here would fail the test below
                raise AssertionError(f"exchange refused: {exc!r}") from exc
        assert me.budget.rate_limited == 0
        # the exchange's count (250 + mine) stays inside 95 % of 300: 35 more, then refusals
        assert (placed, refused) == (35, 65)


async def test_the_budget_follows_the_accounts_own_order_limit_and_a_lowered_weight(sim_factory):
    """Binance may hold an account to fewer orders than exchangeInfo lists (GET /fapi/v1/rateLimit/order)
    and may lower the IP's weight: the budget reads both, so a burst meets its own refusals, not the
    exchange's 429s (which, kept up, ban the IP: every agent's cancels with it)."""
    pinned = int(time.time() * 1000)   # one 10-second block throughout (the clients stamp 30 s back, as above)
    sim = await sim_factory(symbols=[SYMBOL], clock=lambda: pinned,
                            config={"accounts": [{"name": "main", "orders_per_10s": 20}]})
    name, key, secret = sim.accounts[0]
    async with BinanceClient(sim.rest_url, key, secret, recv_window=60_000, budget=RateBudget(reserve=0.0)) as client:
        client.time_offset_ms = pinned - int(time.time() * 1000) - 30_000
        assert await client.order_rate_limits() == {"orders_10s": 20, "orders_1m": 1200}
        orders = await far_ioc_orders(client, "own", 40)   # its exchangeInfo's 300 does not undo the account's 20
        results = await asyncio.gather(*(client.place_order(o, wait=False) for o in orders), return_exceptions=True)
        assert tally(results) == {"placed": 19, "refused": 21, "rate_limited": 0, "other": 0}   # 95 % of 20
        assert client.budget.rate_limited == 0 and sim.limiter.peaks("127.0.0.1", name)[0] == 19

        async with aiohttp.ClientSession() as http:
            async with http.post(sim.rest_url + "/sim/limits", json={"weight_per_minute": 100}) as r:
                assert r.status == 200
        await client.exchange_info()
        assert client.budget.limits == {"weight_1m": 95, "orders_10s": 19, "orders_1m": 1140, "funding_reads_5m": 475}
        assert client.budget.usage()["weight_1m"].exchange_limit == 100
