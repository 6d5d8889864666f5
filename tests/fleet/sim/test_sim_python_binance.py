"""python-binance (1.0.37) against the simulator, pointed at it as at Binance: its class URLs with only
the host replaced (``https://fapi.binance.com/fapi`` -> ``<sim>/fapi``, ``wss://fstream.binance.com/``
-> ``<sim>/``, ``wss://ws-fapi.binance.com/ws-fapi/v1`` -> ``<sim>/ws-fapi/v1``).

``AsyncClient.create()`` reads the spot host's ``/api/v3/ping`` and ``/api/v3/time`` first, even for
futures; the simulator answers both, so the documented constructor starts. Its socket manager takes the
2026 routed paths (``/public``, ``/market``, ``/private``), each stream on its own.
"""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal
from typing import Any

from binance import AsyncClient, BinanceSocketManager

from fleet.sim.server import SimServer
from fleet.sim.testkit import SimClient

SYMBOL = "ETHUSDC"
DEADLINE_S = 10.0


async def _client(sim: SimServer) -> AsyncClient:
    _, key, secret = sim.accounts[0]
    cls = type("SimAsyncClient", (AsyncClient,), {
        "API_URL": f"{sim.rest_url}/api", "FUTURES_URL": f"{sim.rest_url}/fapi",
        "FUTURES_DATA_URL": f"{sim.rest_url}/futures/data", "WS_FUTURES_URL": f"{sim.ws_url}/ws-fapi/v1"})
    client = await cls.create(key, secret)
    client.ws_future.TIMEOUT = 0.5   # its WebSocket API connection's read poll (10 s): a close waits for it
    return client


class Frames:
    """Reads one python-binance socket in the background into a list (a combined stream's frames
    unwrapped: python-binance asks its market streams on ``/stream?streams=``)."""

    def __init__(self, socket: Any) -> None:
        socket.TIMEOUT = 0.5   # its read loop's poll (10 s): leaving a quiet stream waits for it
        self.socket = socket
        self.got: list[dict[str, Any]] = []
        self.task: asyncio.Task | None = None

    async def __aenter__(self) -> "Frames":
        await self.socket.__aenter__()
        self.task = asyncio.create_task(self._run())
        return self

    async def _run(self) -> None:
        while True:
            frame = await self.socket.recv()   # None: nothing within its TIMEOUT
            if frame is not None:
                self.got.append(frame.get("data", frame) if "stream" in frame else frame)

    async def __aexit__(self, *exc: Any) -> None:
        assert self.task is not None
        self.task.cancel()
        await self.socket.__aexit__(None, None, None)

    async def until(self, test: Any, what: str) -> list[dict[str, Any]]:
        end = time.monotonic() + DEADLINE_S
        while not any(test(m) for m in self.got):
            assert time.monotonic() < end, f"no {what} within {DEADLINE_S} s: {self.got[-3:]}"
            await asyncio.sleep(0.02)
        return [m for m in self.got if test(m)]


def _order_update(kind: str, oid: int) -> Any:
    return lambda m: m.get("e") == "ORDER_TRADE_UPDATE" and m["o"]["x"] == kind and m["o"]["i"] == oid


async def test_python_binance_trades_over_rest_and_the_websocket_api_and_hears_every_frame(sim):
    c = await _client(sim)
    try:
        assert abs((await c.futures_time())["serverTime"] - c.timestamp_offset - time.time() * 1000) < 5_000
        info = await c.futures_exchange_info()
        assert SYMBOL in {s["symbol"] for s in info["symbols"]}
        bm = BinanceSocketManager(c)
        bm.FSTREAM_URL = f"{sim.ws_url}/"
        async with Frames(bm.futures_user_socket()) as user, \
                Frames(bm.symbol_ticker_futures_socket(SYMBOL)) as tickers, \
                Frames(bm.aggtrade_futures_socket(SYMBOL)) as trades:
            await tickers.until(lambda m: m.get("e") == "bookTicker" and m["s"] == SYMBOL, "book ticker")
            async with SimClient.for_sim(sim) as admin:   # the book holds still: the fill meets the ask read
                await admin.admin("POST", "/sim/market/freeze", {"symbol": SYMBOL})
            book = await c.futures_orderbook_ticker(symbol=SYMBOL)
            bid, ask = Decimal(book["bidPrice"]), Decimal(book["askPrice"])
            low = str((bid * Decimal("0.99")).quantize(Decimal("0.01")))
            placed = await c.futures_create_order(symbol=SYMBOL, side="BUY", type="LIMIT", timeInForce="GTX",
                                                  quantity="0.010", price=low)
            oid = placed["orderId"]
            lower = str((bid * Decimal("0.985")).quantize(Decimal("0.01")))
            amended = await c.futures_modify_order(symbol=SYMBOL, orderId=oid, side="BUY", quantity="0.020",
                                                   price=lower)
            assert (amended["price"], amended["origQty"]) == (lower, "0.020")
            assert (await c.futures_get_order(symbol=SYMBOL, orderId=oid))["status"] == "NEW"
            await c.futures_cancel_order(symbol=SYMBOL, orderId=oid)
            for kind in ("NEW", "AMENDMENT", "CANCELED"):
                await user.until(_order_update(kind, oid), f"{kind} frame")

            bought = await c.futures_create_order(symbol=SYMBOL, side="BUY", type="MARKET", quantity="0.010")
            [fill] = await user.until(_order_update("TRADE", bought["orderId"]), "fill frame")
            assert fill["o"]["X"] == "FILLED" and Decimal(fill["o"]["L"]) == ask
            await user.until(lambda m: m.get("e") == "ACCOUNT_UPDATE"
                             and any(p["s"] == SYMBOL and Decimal(p["pa"]) == Decimal("0.010") for p in m["a"]["P"]), "position")
            await trades.until(lambda m: m.get("e") == "aggTrade" and Decimal(m["q"]) >= Decimal("0.010"),
                               "our aggregate trade")

            # the WebSocket API: a place, a look-up and a cancel, then the position closed
            ws_placed = await c.ws_futures_create_order(symbol=SYMBOL, side="BUY", type="LIMIT",
                                                        timeInForce="GTC", quantity="0.010", price=low)
            assert (await c.ws_futures_get_order(symbol=SYMBOL, orderId=ws_placed["orderId"]))["status"] == "NEW"
            await c.ws_futures_cancel_order(symbol=SYMBOL, orderId=ws_placed["orderId"])
            await c.futures_create_order(symbol=SYMBOL, side="SELL", type="MARKET", quantity="0.010",
                                         reduceOnly="true")
            # positionRisk v3 lists a symbol with a position or an open order only
            assert await c.futures_position_information(symbol=SYMBOL) == []
    finally:
        await c.ws_future.close()   # close_connection() closes the spot WebSocket API's, not this one
        await c.close_connection()
    async with SimClient.for_sim(sim) as admin:
        truth = await admin.state(symbol=SYMBOL)
    assert truth["open_orders"] == [] and Decimal(truth["positions"].get(SYMBOL, {}).get("amount", "0")) == 0
