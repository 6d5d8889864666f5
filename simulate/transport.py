"""The agent's transport to an in-process exchange (:class:`fleet.sim.local.LocalExchange`).

The agent's own client and streams run unchanged above one replaced seam each: the client's
:meth:`~fleet.binance.client.BinanceClient._http` (the request is encoded and signed as for the
wire, waits half the modelled REST latency, is answered by the exchange's gateway, waits the other
half) and the streams' connection (frames arrive as the decoded JSON the wire would carry and go
through the streams' own parser, counters and silence detector). A fault the gateway answers with
no answer (``timeout``) holds the request, then fails it as a lost connection, as over a socket.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Mapping, Sequence

from fleet.binance.client import BinanceClient, lost_answer
from fleet.binance.ratelimit import RateBudget
from fleet.binance.streams import _CLOSED, MarketStream, StreamClosedError, StreamError, UserStream
from fleet.sim.local import LocalExchange, Subscription, SubscriptionRefused

SIM_URL = "sim://in-process"


class LocalClient(BinanceClient):
    """:class:`BinanceClient` whose requests go to a :class:`LocalExchange` on the same loop."""

    def __init__(self, exchange: LocalExchange, api_key: str, api_secret: str, *, budget: RateBudget,
                 clock_ms: Callable[[], int], rest_latency_ms: float) -> None:
        super().__init__(SIM_URL, api_key, api_secret, budget=budget, clock_ms=clock_ms)
        self._exchange = exchange
        self._half_latency_s = max(0.0, rest_latency_ms) / 2000.0
        self._open = False

    async def open(self) -> None:
        self._open = True

    async def close(self) -> None:
        self._open = False

    async def _http(self, method: str, path: str, url: str, body: bytes | None, headers: dict[str, str],
                    mutating: bool) -> tuple[int, bytes, Mapping[str, str]]:
        if not self._open:
            raise RuntimeError("LocalClient is not open")
        _, _, query = url.partition("?")
        ex = self._exchange
        await asyncio.sleep(self._half_latency_s + ex.latency_ms(path) / 1000.0)
        answer = ex.request(method, path, query, body or b"", headers.get("X-MBX-APIKEY"))
        if answer.hold_ms is not None:  # the exchange never answers: the connection is closed after a while
            await asyncio.sleep(answer.hold_ms / 1000.0)
            raise lost_answer(method, path, "ServerDisconnectedError", mutating)
        await asyncio.sleep(self._half_latency_s)
        return answer.status, answer.body, answer.headers


class _LocalConnection:
    """The part of a stream that a socket would be: subscribe, receive, lose, close."""

    def _init_local(self, exchange: LocalExchange) -> None:
        self._exchange = exchange
        self._sub: Subscription | None = None
        self._lost = False
        self._ended = False
        self._queue = None

    def _subscribe(self) -> Subscription:
        raise NotImplementedError

    async def connect(self) -> None:
        if self._sub is not None:
            raise StreamError(f"{self.kind} already connected; streams do not reconnect, make a new one")
        self._queue = asyncio.Queue(self._max_queue)
        self._closing = False
        try:
            self._sub = self._subscribe()
        except SubscriptionRefused as exc:
            raise StreamClosedError(f"{self.kind}: cannot connect: {exc}") from exc
        self.last_frame_monotonic = self._mono()

    async def close(self) -> None:
        self._closing = True
        if self._sub is not None and not self._sub.closed:
            self._exchange.close(self._sub)
        self._end()  # as a socket's reader does: whoever iterates sees the end after what was queued

    @property
    def connected(self) -> bool:
        return self._sub is not None and not self._sub.closed and not self._closing and not self._lost

    async def send_json(self, text: str) -> None:
        raise StreamError(f"{self.kind}: control requests are not supported in-process")

    # the exchange's side (fleet.sim.local.Sink)

    def receive(self, frames: list[Any]) -> None:
        if self._closing:
            return
        now = self._mono()
        for frame in frames:
            self.frames += 1
            self.last_frame_monotonic = now
            events = self._events_of(frame, frame)
            if self._on_event is not None:
                self._hand_over(events, time.perf_counter_ns())  # (latency metrics only)
            else:
                for event in events:
                    if self._queue.full():  # the exchange drops a reader this far behind (as fleet.sim does)
                        self._exchange.stats["ws_slow_dropped"] += 1
                        self._exchange.close(self._sub)
                        self.lost("too slow: the exchange dropped the connection")
                        return
                    self._queue.put_nowait(event)

    def lost(self, reason: str) -> None:
        if self._lost:
            return
        self._lost = True
        self.close_reason = f"connection closed: {reason}"
        self._end()

    def _end(self) -> None:
        queue = self._queue
        if queue is None or self._ended:
            return
        self._ended = True
        if queue.full():
            queue.get_nowait()  # the connection is gone: the agent resyncs from REST after reconnecting
        queue.put_nowait(_CLOSED)


class LocalMarketStream(_LocalConnection, MarketStream):
    def __init__(self, exchange: LocalExchange, symbol: str, streams: Sequence[str], **kwargs: Any) -> None:
        MarketStream.__init__(self, SIM_URL.replace("sim", "ws"), symbol, streams, layout="classic", **kwargs)
        self._init_local(exchange)

    def _subscribe(self) -> Subscription:
        return self._exchange.subscribe_market(self.stream_names, self)


class LocalUserStream(_LocalConnection, UserStream):
    def __init__(self, exchange: LocalExchange, listen_key: str, **kwargs: Any) -> None:
        UserStream.__init__(self, SIM_URL.replace("sim", "ws"), listen_key, layout="classic", **kwargs)
        self._init_local(exchange)

    def _subscribe(self) -> Subscription:
        return self._exchange.subscribe_user(self.listen_key, self)


class LocalTransport:
    """:class:`agents.transport.Transport` to a :class:`LocalExchange`, on the loop's clock."""

    def __init__(self, exchange: LocalExchange, api_key: str, api_secret: str, *, clock: Any,
                 rest_latency_ms: float = 2.0) -> None:
        self.exchange = exchange
        self._key = api_key
        self._secret = api_secret
        self._clock = clock
        self.rest_latency_ms = rest_latency_ms

    def __repr__(self) -> str:  # never shows the key or the secret
        return "LocalTransport(in-process exchange)"

    def client(self, budget: RateBudget) -> BinanceClient:
        return LocalClient(self.exchange, self._key, self._secret, budget=budget, clock_ms=self._clock.time_ms,
                           rest_latency_ms=self.rest_latency_ms)

    def market_stream(self, symbol: str, streams: Sequence[str], on_event: Callable[[Any, int], None]) -> MarketStream:
        return LocalMarketStream(self.exchange, symbol, streams, on_event=on_event, clock=self._clock.monotonic)

    def user_stream(self, listen_key: str) -> UserStream:
        return LocalUserStream(self.exchange, listen_key, clock=self._clock.monotonic)
