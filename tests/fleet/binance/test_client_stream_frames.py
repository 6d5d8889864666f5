"""Streams against a tiny loopback WebSocket server of our own that sends bad frames on purpose.

The simulator only sends good frames; this server proves that malformed JSON, missing fields and
unknown events are counted and skipped while the stream stays up, that pings are answered, and
that silence and a server close end iteration with a clear exception.
"""

import asyncio
import time

import pytest
from websockets.asyncio.server import serve

from fleet.binance.events import BookTicker, ListenKeyExpired, MarkPrice, OrderUpdate, RawEvent
from fleet.binance.streams import (
    MarketStream,
    StreamClosedError,
    StreamSilentError,
    UserStream,
    market_urls,
    url_for,
)
from tests.polling import wait_for

from .test_client_parse import BOOK, EXPIRED, MARK, ORDER_NEW

BAD_FRAMES = [
    '{"e":"bookTicker","s":"BTCUSDT"',  # truncated JSON
    '{"e":"bookTicker","s":"BTCUSDT","u":1}',  # missing fields
    '{"e":"markPriceUpdate","E":1,"s":"BTCUSDT","p":"not-a-number"}',  # bad value
    b"\xff\xfe binary garbage",
]


class FrameServer:
    """Sends a script of frames to each connection, records paths, can ping and close on command."""

    def __init__(self, script):
        self.script = script
        self.paths = []
        self.pongs = []
        self.conns = []
        self.server = None

    async def handler(self, ws):
        self.paths.append(ws.request.path)
        self.conns.append(ws)
        for frame in self.script(ws.request.path):
            await ws.send(frame)
        await ws.wait_closed()

    async def __aenter__(self):
        self.server = await serve(self.handler, "127.0.0.1", 0, ping_interval=None)
        port = self.server.sockets[0].getsockname()[1]
        self.url = f"ws://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        await self.server.wait_closed()


async def next_of(stream, kind, deadline=10.0):
    async def find():
        async for event in stream:
            if isinstance(event, kind):
                return event
    return await asyncio.wait_for(find(), deadline)


async def test_malformed_frames_are_counted_and_skipped_and_the_stream_stays_up():
    def script(path):
        yield BOOK
        yield from BAD_FRAMES
        yield '{"e":"kline","E":1,"s":"BTCUSDT"}'  # unknown type: passed through
        yield '{"result":null,"id":1}'  # a control reply: not an event
        yield '{"stream":"btcusdt@markPrice@1s","data":' + MARK + "}"

    async with FrameServer(script) as srv:
        async with MarketStream(srv.url, "BTCUSDT", idle_timeout=10, layout="classic") as stream:
            got = []
            async for event in stream:
                got.append(event)
                if isinstance(event, MarkPrice):
                    break
            assert [type(e) for e in got] == [BookTicker, RawEvent, MarkPrice]
            assert got[1].event_type == "kline"
            assert stream.malformed == 4 and stream.unknown == 1 and stream.frames == 8
            assert stream.connected
            # still up: a later good frame arrives on the same connection
            await srv.conns[0].send(BOOK)
            assert isinstance(await next_of(stream, BookTicker), BookTicker)
        assert not stream.connected
    assert srv.paths == ["/stream?streams=btcusdt@bookTicker/btcusdt@markPrice@1s"]


async def test_user_stream_parses_and_reports_expiry_as_an_event():
    def script(path):
        yield ORDER_NEW
        yield "[not json"
        yield EXPIRED

    async with FrameServer(script) as srv:
        async with UserStream(srv.url, "WsCMN0a4", idle_timeout=10) as stream:
            assert isinstance(await next_of(stream, OrderUpdate), OrderUpdate)
            expired = await next_of(stream, ListenKeyExpired)
            assert expired.listen_key == "WsCMN0a4" and stream.malformed == 1
    assert srv.paths == ["/private/ws?listenKey=WsCMN0a4"]


async def test_server_pings_are_answered():
    async with FrameServer(lambda path: iter(())) as srv:
        async with UserStream(srv.url, "k", layout="classic") as stream:
            pong_waiter = await srv.conns[0].ping(b"hb")
            latency = await asyncio.wait_for(pong_waiter, 10)
            assert latency >= 0 and stream.connected


async def test_silence_ends_iteration_with_a_clear_error():
    async with FrameServer(lambda path: iter([BOOK])) as srv:
        async with MarketStream(srv.url, "BNBUSDT", streams=("bookTicker",), idle_timeout=0.3) as stream:
            assert isinstance(await next_of(stream, BookTicker), BookTicker)
            with pytest.raises(StreamSilentError, match="no frame for 0.3s"):
                await stream.__anext__()
            assert stream.silence_s >= 0.3


async def test_server_close_ends_iteration_and_clears_connected():
    async with FrameServer(lambda path: iter([BOOK])) as srv:
        stream = MarketStream(srv.url, "BNBUSDT", streams=("bookTicker",), idle_timeout=10)
        await stream.connect()
        assert isinstance(await next_of(stream, BookTicker), BookTicker)
        await srv.conns[0].close(code=1001, reason="going away")
        with pytest.raises(StreamClosedError, match="1001"):
            await asyncio.wait_for(stream.__anext__(), 10)
        assert not stream.connected
        await stream.close()


async def test_2026_layout_splits_public_and_market_routes_and_merges_events():
    def script(path):
        yield BOOK if path.startswith("/public/") else MARK

    async with FrameServer(script) as srv:
        async with MarketStream(srv.url, "BTCUSDT", streams=("bookTicker", "markPrice@1s"), layout="2026") as stream:
            kinds = set()
            async for event in stream:
                kinds.add(type(event))
                if kinds == {BookTicker, MarkPrice}:
                    break
    assert sorted(srv.paths) == [
        "/market/stream?streams=btcusdt@markPrice@1s",
        "/public/stream?streams=btcusdt@bookTicker",
    ]


def test_url_helpers_cover_both_layouts():
    base = "wss://fstream.binance.com"
    assert url_for(base, ["btcusdt@aggTrade"], layout="classic") == f"{base}/stream?streams=btcusdt@aggTrade"
    assert url_for(base, listen_key="abc", layout="classic") == f"{base}/ws/abc"
    # auto: the split paths, wherever (Binance's unrouted paths carry book streams only since 2026-04-23)
    assert url_for(base, ["btcusdt@aggTrade"]) == f"{base}/market/stream?streams=btcusdt@aggTrade"
    assert url_for(base, listen_key="abc") == f"{base}/private/ws?listenKey=abc"
    assert url_for("ws://127.0.0.1:5000", listen_key="abc") == "ws://127.0.0.1:5000/private/ws?listenKey=abc"
    assert url_for("wss://fstream.binancefuture.com", ["x@aggTrade"]) == (
        "wss://fstream.binancefuture.com/market/stream?streams=x@aggTrade")
    assert url_for(base, listen_key="abc", layout="2026", events=["ORDER_TRADE_UPDATE", "listenKeyExpired"]) == (
        f"{base}/private/ws?listenKey=abc&events=ORDER_TRADE_UPDATE/listenKeyExpired"
    )
    assert market_urls(base, ["btcusdt@depth5@100ms", "btcusdt@aggTrade", "btcusdt@trade"], "2026") == [
        f"{base}/market/stream?streams=btcusdt@aggTrade",
        f"{base}/public/stream?streams=btcusdt@depth5@100ms/btcusdt@trade",   # trades are /public's, as the book
    ]
    with pytest.raises(ValueError, match="layout"):
        url_for(base, ["x"], layout="2025")
    with pytest.raises(ValueError, match="span routes"):
        url_for(base, ["btcusdt@bookTicker", "btcusdt@aggTrade"], layout="2026")


async def test_connecting_to_nothing_is_a_clear_error():
    with pytest.raises(StreamClosedError, match="cannot connect"):
        async with MarketStream("ws://127.0.0.1:9", "BTCUSDT", open_timeout=5):
            pass


async def test_on_event_hands_events_over_in_order_and_survives_a_raising_handler():
    book2 = BOOK.replace('"u":400900217', '"u":400900218')

    def script(path):
        yield BOOK
        yield BAD_FRAMES[0]
        yield MARK
        yield book2

    got = []

    def on_event(event, read_ns):
        got.append((event, read_ns))
        if isinstance(event, MarkPrice):
            raise RuntimeError("handler bug")

    async with FrameServer(script) as srv:
        stream = MarketStream(srv.url, "BTCUSDT", idle_timeout=10, on_event=on_event, layout="classic")
        await stream.connect()
        await wait_for(lambda: len(got) == 3, what="three events", interval=0.01)
        assert [type(e) for e, _ in got] == [BookTicker, MarkPrice, BookTicker]
        assert [e.update_id for e, _ in got if isinstance(e, BookTicker)] == [400900217, 400900218]
        stamps = [t for _, t in got]
        assert stamps == sorted(stamps) and stamps[-1] <= time.perf_counter_ns()
        assert stream.handler_errors == 1 and stream.malformed == 1 and stream.events == 3
        assert stream.connected  # the raising handler did not end the feed
        await srv.conns[0].send(BOOK)
        await wait_for(lambda: len(got) == 4, what="four events", interval=0.01)
        # iteration reports only the stream's end, never an event
        await srv.conns[0].close(code=1001, reason="going away")
        with pytest.raises(StreamClosedError, match="1001"):
            await asyncio.wait_for(stream.__anext__(), 10)
        await stream.close()
