"""Market and user streams against the simulator: every event type it emits arrives typed."""

from __future__ import annotations

from decimal import Decimal

import asyncio

import aiohttp
import pytest

from fleet.binance.client import BinanceClient
from fleet.binance.enums import OrderType, Side, TimeInForce
from fleet.binance.errors import InvalidListenKeyError
from fleet.binance.events import (
    AccountUpdate,
    AggTrade,
    BookTicker,
    DepthUpdate,
    FundingFee,
    ListenKeyExpired,
    MarkPrice,
    OrderUpdate,
    TradeLite,
)
from fleet.binance.models import OrderRequest
from fleet.binance.streams import MarketStream, UserStream

from .test_client_rest import SYMBOL, cid

MARKET_KINDS = {BookTicker, MarkPrice, DepthUpdate, AggTrade}


async def collect_until(stream, done, deadline: float = 15.0):
    """Events from ``stream`` until ``done(events)`` holds; fails after ``deadline`` seconds."""
    events = []

    async def run():
        async for event in stream:
            events.append(event)
            if done(events):
                return

    try:
        await asyncio.wait_for(run(), deadline)
    except asyncio.TimeoutError:
        raise AssertionError(f"stream did not deliver in {deadline}s; got {[type(e).__name__ for e in events]}")
    return events


async def sim_control(sim, path: str, **params):
    """POST one of the simulator's documented fault/control routes (``/sim/...``)."""
    async with aiohttp.ClientSession() as http:
        async with http.post(sim.rest_url + path, json=params) as resp:
            assert resp.status == 200, await resp.text()
            return await resp.json()


@pytest.mark.parametrize("layout", ["classic", "2026"])
async def test_market_stream_parses_every_market_event(sim_factory, layout):
    # the classic layout against a simulator that serves every stream unrouted, as the testnet does
    sim = await sim_factory(config={"legacy_paths": "all" if layout == "classic" else "public"})
    streams = ("bookTicker", "markPrice@1s", "depth5@100ms", "aggTrade")
    async with MarketStream(sim.ws_url, SYMBOL, streams=streams, layout=layout, idle_timeout=10) as stream:
        assert stream.connected
        events = await collect_until(stream, lambda ev: {type(e) for e in ev} >= MARKET_KINDS)
        assert stream.malformed == 0 and stream.unknown == 0
    assert not stream.connected
    book = next(e for e in events if isinstance(e, BookTicker))
    assert book.symbol == SYMBOL and 0 < book.bid < book.ask
    mark = next(e for e in events if isinstance(e, MarkPrice))
    assert mark.mark_price > 0 and mark.next_funding_time > 0
    depth = next(e for e in events if isinstance(e, DepthUpdate))
    assert len(depth.bids) == 5 and depth.bids[0][0] < depth.asks[0][0]


@pytest.mark.parametrize("layout", ["classic", "2026"])
async def test_user_stream_sees_orders_fills_account_updates(sim_factory, layout):
    sim = await sim_factory(config={"legacy_paths": "all" if layout == "classic" else "public"})
    name, key, secret = sim.accounts[0]
    async with BinanceClient(sim.rest_url, key, secret) as client:
        listen_key = await client.create_listen_key()
        filters = await client.symbol_filters(SYMBOL)
        async with UserStream(sim.ws_url, listen_key, layout=layout, idle_timeout=15) as stream:
            top = await client.book_ticker(SYMBOL)
            passive = OrderRequest(
                symbol=SYMBOL, side=Side.BUY, order_type=OrderType.LIMIT, quantity="0.010",
                price=filters.price_str(filters.price_ticks_floor(top.bid) - 300), time_in_force=TimeInForce.GTX,
                client_order_id=cid("us"),
            )
            placed = await client.place_order(passive)
            await client.cancel_order(SYMBOL, order_id=placed.order_id)
            taker = OrderRequest(symbol=SYMBOL, side=Side.BUY, order_type=OrderType.MARKET, quantity="0.010",
                                 client_order_id=cid("ust"))
            await client.place_order(taker)
            flat = OrderRequest(symbol=SYMBOL, side=Side.SELL, order_type=OrderType.MARKET, quantity="0.010",
                                reduce_only=True, client_order_id=cid("usf"))
            await client.place_order(flat)

            def seen_all(events):
                mine = [e for e in events if isinstance(e, OrderUpdate)]
                statuses = {(e.client_order_id, e.status) for e in mine}
                return (
                    (passive.client_order_id, "NEW") in statuses
                    and (passive.client_order_id, "CANCELED") in statuses
                    and (flat.client_order_id, "FILLED") in statuses
                    and any(isinstance(e, TradeLite) for e in events)
                    and any(isinstance(e, AccountUpdate) for e in events)
                )

            events = await collect_until(stream, seen_all)
            assert stream.malformed == 0
            fill = next(e for e in events if isinstance(e, OrderUpdate) and e.exec_type == "TRADE")
            assert fill.last_filled_qty > 0 and fill.last_filled_price > 0 and fill.commission >= 0
            lite = next(e for e in events if isinstance(e, TradeLite))
            assert lite.symbol == SYMBOL and lite.last_filled_qty > 0
            acct = next(e for e in events if isinstance(e, AccountUpdate))
            assert acct.reason == "ORDER" and any(p.symbol == SYMBOL for p in acct.positions)
        await client.close_listen_key()


async def test_a_user_stream_kept_to_one_symbol_skips_the_other_symbols_orders_unparsed(sim):
    """An account's stream carries every symbol's orders; kept to one symbol, the others' order events
    are skipped and counted, while that symbol's orders and the account's updates still arrive."""
    name, key, secret = sim.accounts[0]
    other = "SOLUSDT"
    skipped = []
    async with BinanceClient(sim.rest_url, key, secret) as client:
        listen_key = await client.create_listen_key()
        filters = await client.symbol_filters(SYMBOL)
        async with UserStream(sim.ws_url, listen_key, idle_timeout=15) as stream:
            stream.keep_only(SYMBOL, lambda: skipped.append(1))
            for side, reduce in ((Side.BUY, False), (Side.SELL, True)):   # a fill on the other symbol, flat after
                await client.place_order(OrderRequest(symbol=other, side=side, order_type=OrderType.MARKET,
                                                      quantity="1", reduce_only=reduce, client_order_id=cid("ko")))
            top = await client.book_ticker(SYMBOL)
            mine = OrderRequest(symbol=SYMBOL, side=Side.BUY, order_type=OrderType.LIMIT, quantity="0.010",
                                price=filters.price_str(filters.price_ticks_floor(top.bid) - 300),
                                time_in_force=TimeInForce.GTX, client_order_id=cid("km"))
            placed = await client.place_order(mine)
            await client.cancel_order(SYMBOL, order_id=placed.order_id)

            def cancelled(events):   # delivered in order: the other symbol's frames came before
                return any(isinstance(e, OrderUpdate) and e.client_order_id == mine.client_order_id
                           and e.status == "CANCELED" for e in events)

            events = await collect_until(stream, cancelled)
        await client.close_listen_key()
    orders = [e for e in events if isinstance(e, OrderUpdate | TradeLite)]
    assert orders and {e.symbol for e in orders} == {SYMBOL}
    # the other symbol's two fills: NEW and TRADE each (ORDER_TRADE_UPDATE) and a TRADE_LITE each
    assert stream.foreign >= 4 and len(skipped) == stream.foreign
    assert stream.malformed == 0 and stream.frames >= stream.foreign + len(events)
    accounts = [e for e in events if isinstance(e, AccountUpdate)]
    assert any(p.symbol == other for a in accounts for p in a.positions)   # the account's updates all pass


async def test_user_stream_sees_funding_fees_and_listen_key_expiry(sim):
    name, key, secret = sim.accounts[0]
    symbol = "SOLUSDT"
    async with BinanceClient(sim.rest_url, key, secret) as client:
        listen_key = await client.create_listen_key()
        async with UserStream(sim.ws_url, listen_key, idle_timeout=15) as stream:
            await sim_control(sim, "/sim/position", account=name, symbol=symbol, amount="2", entry_price="150")
            await sim_control(sim, "/sim/funding/rate", symbol=symbol, rate="0.0005")
            try:
                await sim_control(sim, "/sim/funding/settle", symbol=symbol)
                events = await collect_until(
                    stream, lambda ev: any(isinstance(e, FundingFee) for e in ev)
                )
            finally:
                await sim_control(sim, "/sim/funding/rate", symbol=symbol, rate=None)
                await sim_control(sim, "/sim/position", account=name, symbol=symbol, amount="0")
            fee = next(e for e in events if isinstance(e, FundingFee))
            # Binance's cross-margin frame names no symbol (no a.S, "P": []): the income record does
            assert fee.symbol is None and fee.positions == ()
            assert fee.amount < 0 and fee.asset == "USDT"  # a long pays a positive rate
            assert fee.wallet_balance > 0
            rows = await client.income(symbol=symbol, income_type="FUNDING_FEE")
            assert [Decimal(str(r["income"])) for r in rows][-1:] == [fee.amount]

            await sim_control(sim, "/sim/listenkey/expire", account=name)
            events = await collect_until(stream, lambda ev: any(isinstance(e, ListenKeyExpired) for e in ev))
            expired = next(e for e in events if isinstance(e, ListenKeyExpired))
            assert expired.listen_key == listen_key and expired.event_time > 0
            assert stream.connected  # expiry is an event, not a disconnect
            assert stream.malformed == 0
        with pytest.raises(InvalidListenKeyError):
            await client.keepalive_listen_key()


async def test_the_classic_layout_on_binances_unrouted_paths_hears_the_book_and_never_the_mark(sim):
    """Since 2026-04-23 (and in the simulator by default) the unrouted paths carry book streams only:
    the mark price is accepted and never arrives. Judged on the exchange's own clock: 1.5 s of book
    tickers and not one mark price, which comes every second when served."""
    async with MarketStream(sim.ws_url, SYMBOL, streams=("bookTicker", "markPrice@1s"), layout="classic",
                            idle_timeout=10) as stream:
        events = await collect_until(
            stream, lambda ev: len(ev) > 1 and ev[-1].event_time - ev[0].event_time >= 1500)
    assert {type(e) for e in events} == {BookTicker}
    async with aiohttp.ClientSession() as http, http.get(sim.rest_url + "/sim/state") as r:
        assert (await r.json())["server"]["ws_legacy_silent_streams"] == 1
