"""Market and user-data WebSocket streams, yielding typed events.

A stream connects, parses, counts and reports silence; it never reconnects (the agent owns that
policy, because a lost user stream means resyncing orders from REST first). Malformed frames are
logged, counted and skipped; unknown event types are passed through as ``RawEvent`` and counted.
Both URL layouts are supported: the classic ``/ws`` + ``/stream`` paths and the 2026 split into
``/public`` (book), ``/market`` (everything else) and ``/private`` (user data). ``layout="auto"``
(the default) is the split: since 2026-04-23 Binance's unrouted paths deliver /public streams only (a
mark price or a user stream there is accepted and never arrives), and the simulator does the same;
the testnet answers on both. ``classic`` is for a server that still serves every stream unrouted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Sequence
from urllib.parse import quote

import websockets
from websockets.asyncio.client import ClientConnection, connect

from .events import MarketEvent, RawEvent, UserEvent
from .parse import FrameError, decode, parse_market, parse_user, unwrap

log = logging.getLogger("fleet.binance.streams")

LAYOUTS = ("classic", "2026")
# a close's wait for the server's answer (websockets' default, 10 s a connection one after another: an
# exchange gone silent held an agent's stop 29 s past its cancels, beyond a supervisor's 30 s grace)
CLOSE_TIMEOUT_S = 1.0


def resolve_layout(ws_url: str, layout: str) -> str:
    """``"auto"`` -> ``"2026"`` whatever ``ws_url``: Binance's unrouted paths carry /public streams only
    since 2026-04-23 (the argument stays for a host that would differ)."""
    if layout == "auto":
        return "2026"
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS} or 'auto', got {layout!r}")
    return layout
_PUBLIC_MARKERS = ("@depth", "@bookticker", "!bookticker", "rpidepth", "@trade")   # @trade: not @aggTrade


class StreamError(Exception):
    """The stream cannot go on; the agent decides whether and how to reconnect."""


class StreamClosedError(StreamError):
    """The server (or the network) closed the connection."""


class StreamSilentError(StreamError, TimeoutError):
    """No frame arrived within ``idle_timeout`` seconds: the feed is stale."""


def route_of(stream_name: str) -> str:
    """The 2026 route (``public`` or ``market``) that serves a market stream name."""
    low = stream_name.lower()
    return "public" if any(m in low for m in _PUBLIC_MARKERS) else "market"


def stream_names(symbol: str, streams: Sequence[str]) -> list[str]:
    """``("bookTicker", "markPrice@1s")`` -> ``["ethusdc@bookTicker", "ethusdc@markPrice@1s"]``."""
    sym = symbol.lower()
    return [s if s.startswith("!") or s.lower().startswith(sym + "@") else f"{sym}@{s}" for s in streams]


def url_for(
    ws_url: str,
    streams: Sequence[str] = (),
    *,
    layout: str = "auto",
    listen_key: str | None = None,
    events: Sequence[str] | None = None,
) -> str:
    """The WebSocket URL of combined market ``streams`` or of a user stream (``listen_key``).

    Under the 2026 layout all market streams of one URL must share a route; use
    :func:`market_urls` to split a mixed set.
    """
    layout = resolve_layout(ws_url, layout)
    base = ws_url.rstrip("/")
    if listen_key is not None:
        if streams:
            raise ValueError("give either market streams or a listen_key, not both")
        if layout == "classic":
            return f"{base}/ws/{listen_key}"
        url = f"{base}/private/ws?listenKey={quote(listen_key, safe='')}"
        if events:
            url += "&events=" + "/".join(events)
        return url
    if not streams:
        raise ValueError("no streams given")
    joined = "/".join(streams)
    if layout == "classic":
        return f"{base}/stream?streams={joined}"
    routes = {route_of(s) for s in streams}
    if len(routes) > 1:
        raise ValueError(f"streams {list(streams)} span routes {sorted(routes)}; use market_urls()")
    return f"{base}/{routes.pop()}/stream?streams={joined}"


def market_urls(ws_url: str, streams: Sequence[str], layout: str = "auto") -> list[str]:
    """One URL for the classic layout; one per route (public, market) for the 2026 layout."""
    layout = resolve_layout(ws_url, layout)
    if layout == "classic":
        return [url_for(ws_url, streams, layout=layout)]
    by_route: dict[str, list[str]] = {}
    for s in streams:
        by_route.setdefault(route_of(s), []).append(s)
    return [url_for(ws_url, names, layout=layout) for _, names in sorted(by_route.items())]


_CLOSED = object()


# (event, read time): the perf_counter_ns at which the event's frame came off the socket.
EventHandler = Callable[[Any, int], None]


class _FrameStream:
    """Connections -> one queue of parsed events, with counters and a silence detector.

    With ``on_event`` the queue hop is skipped: each event is handed to the handler as its frame is
    read (latency-critical consumers), and iteration only reports the stream's end. A handler that
    raises is logged and counted in ``handler_errors``; the stream stays up.
    """

    kind = "stream"

    def __init__(
        self,
        urls: Sequence[str],
        parser: Callable[[Any], Any],
        *,
        idle_timeout: float | None = None,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        open_timeout: float = 10.0,
        max_queue: int = 10_000,
        on_event: EventHandler | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.urls = list(urls)
        self._mono = clock or time.monotonic  # seconds; a simulated run injects its clock
        self._parser = parser
        self._on_event = on_event
        self.idle_timeout = idle_timeout
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._open_timeout = open_timeout
        self._max_queue = max_queue
        self._conns: list[ClientConnection] = []
        self._readers: list[asyncio.Task[None]] = []
        self._queue: asyncio.Queue[Any] | None = None
        self._closing = False
        self.frames = 0
        self.events = 0
        self.malformed = 0
        self.on_malformed: Callable[[], None] | None = None   # told of each frame skipped as malformed
        self.unknown = 0
        self.handler_errors = 0
        # The thread's CPU clock (thread_time_ns) when the frame being handed to ``on_event`` was
        # read: lets a consumer tell its own work from time the thread was preempted.
        self.frame_read_cpu_ns = 0
        self.last_frame_monotonic: float | None = None
        self.close_reason: str | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(connected={self.connected}, frames={self.frames})"

    # -- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self):
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        if self._conns:
            raise StreamError(f"{self.kind} already connected; streams do not reconnect, make a new one")
        self._queue = asyncio.Queue(self._max_queue)
        self._closing = False
        try:
            for url in self.urls:
                conn = await connect(
                    url,
                    compression=None,
                    proxy=None,
                    open_timeout=self._open_timeout,
                    ping_interval=self._ping_interval,
                    ping_timeout=self._ping_timeout,
                    close_timeout=CLOSE_TIMEOUT_S,
                    max_size=2**22,
                )
                self._conns.append(conn)
        except (OSError, asyncio.TimeoutError, websockets.exceptions.WebSocketException) as exc:
            await self.close()
            raise StreamClosedError(f"{self.kind}: cannot connect: {type(exc).__name__}: {exc}") from exc
        self.last_frame_monotonic = self._mono()
        self._readers = [asyncio.create_task(self._read(c), name=f"{self.kind}-reader") for c in self._conns]

    async def close(self) -> None:
        self._closing = True
        await asyncio.gather(*(conn.close() for conn in self._conns), return_exceptions=True)
        for task in self._readers:
            task.cancel()
        for task in self._readers:
            try:
                await task
            except (asyncio.CancelledError, Exception):  # the reader's end is already recorded
                pass
        self._readers = []
        self._conns = []

    @property
    def connected(self) -> bool:
        return bool(self._conns) and not self._closing and all(
            c.state is websockets.protocol.State.OPEN for c in self._conns
        )

    @property
    def silence_s(self) -> float:
        """Seconds since the last frame (0 before connecting)."""
        if self.last_frame_monotonic is None:
            return 0.0
        return self._mono() - self.last_frame_monotonic

    # -- reading -------------------------------------------------------------------------------

    async def _read(self, conn: ClientConnection) -> None:
        assert self._queue is not None
        reason = "closed"
        try:
            async for message in conn:
                self.frames += 1
                self.last_frame_monotonic = self._mono()
                if self._on_event is not None:
                    self._deliver(message)
                    continue
                for item in self._handle(message):
                    await self._queue.put(item)
            reason = f"connection closed (code {conn.close_code}, reason {conn.close_reason!r})"
        except websockets.exceptions.ConnectionClosed as exc:
            reason = f"connection closed: {exc}"
        except Exception as exc:  # noqa: BLE001 - reported to the consumer, never swallowed
            reason = f"reader failed: {type(exc).__name__}: {exc}"
            log.exception("%s reader failed", self.kind)
        if self.close_reason is None:   # the first connection to end says why; close() ends the others
            path = getattr(getattr(conn, "request", None), "path", None) or ""
            self.close_reason = f"{path.split('?')[0]}: {reason}" if path else reason
        await self._queue.put(_CLOSED)  # after the events already queued (cancelled by close())

    def _handle(self, message: str | bytes) -> list[Any]:
        try:
            obj = decode(message)
        except FrameError as exc:
            self._bad(message, exc)
            return []
        return self._events_of(obj, message)

    def _events_of(self, obj: Any, message: Any) -> list[Any]:
        """The events of one decoded frame (a combined-stream envelope, an event or a list of them)."""
        obj = unwrap(obj)
        items = obj if isinstance(obj, list) else [obj]
        out = []
        for item in items:
            if isinstance(item, dict) and "e" not in item and "id" in item and ("result" in item or "code" in item):
                continue  # a reply to a control request, not an event
            try:
                event = self._parser(item)
            except FrameError as exc:
                self._bad(message, exc)
                continue
            except Exception as exc:  # noqa: BLE001 - a parser bug must not take the stream down
                log.exception("%s: parser failed on a frame; counted as malformed", self.kind)
                self._bad(message, exc)
                continue
            if isinstance(event, RawEvent):
                self.unknown += 1
                log.debug("%s: unknown event type %r passed through", self.kind, event.event_type)
            out.append(event)
        return out

    def _deliver(self, message: str | bytes) -> None:
        """Hand the frame's events to ``on_event`` at once, stamped with the frame's read time."""
        read_ns = time.perf_counter_ns()
        self.frame_read_cpu_ns = time.thread_time_ns()
        self._hand_over(self._handle(message), read_ns)

    def _hand_over(self, events: list[Any], read_ns: int) -> None:
        handler = self._on_event
        assert handler is not None
        for event in events:
            self.events += 1
            try:
                handler(event, read_ns)
            except Exception:  # noqa: BLE001 - one bad event must not end the feed; counted, logged
                self.handler_errors += 1
                log.exception("%s: event handler failed on %s", self.kind, type(event).__name__)

    def _bad(self, message: str | bytes, exc: Exception) -> None:
        self.malformed += 1
        if isinstance(message, (bytes, bytearray)):
            text = message.decode("utf-8", "replace")
        else:
            text = message if isinstance(message, str) else repr(message)
        log.warning("%s: skipped malformed frame (%s): %.200s", self.kind, exc, text)
        if self.on_malformed is not None:
            try:
                self.on_malformed()
            except Exception:  # noqa: BLE001 - the listener's failure must not end the feed
                log.exception("%s: the malformed-frame listener failed", self.kind)

    def __aiter__(self):
        return self

    async def __anext__(self):
        if self._queue is None:
            raise StreamError(f"{self.kind} is not connected: use `async with` or await connect()")
        if self._closing and self._queue.empty():
            raise StopAsyncIteration
        item = await self._next_item()
        if item is _CLOSED:
            if self._closing:
                raise StopAsyncIteration
            await self.close()
            raise StreamClosedError(f"{self.kind}: {self.close_reason}")
        if self._on_event is None:
            self.events += 1
        return item

    async def _next_item(self) -> Any:
        """The next queued item; silence is measured from the last frame (events may bypass the queue)."""
        assert self._queue is not None
        if self.idle_timeout is None:
            return await self._queue.get()
        if self._on_event is None:
            try:
                return await asyncio.wait_for(self._queue.get(), self.idle_timeout)
            except asyncio.TimeoutError:
                raise StreamSilentError(f"{self.kind}: no frame for {self.idle_timeout}s") from None
        while True:
            left = self.idle_timeout - self.silence_s
            if left <= 0 and self._queue.empty():
                raise StreamSilentError(f"{self.kind}: no frame for {self.idle_timeout}s")
            try:
                return await asyncio.wait_for(self._queue.get(), max(left, 0.0))
            except asyncio.TimeoutError:
                continue  # re-check: frames handed to on_event keep the stream fresh

    async def send_json(self, text: str, route: str | None = None) -> None:
        """Send a control request (SUBSCRIBE etc.): on the connection of ``route`` (``public`` or
        ``market``, under the split layout), else on the first one."""
        if not self._conns:
            raise StreamError(f"{self.kind} is not connected")
        if route is not None:
            for conn in self._conns:
                if f"/{route}/" in (getattr(getattr(conn, "request", None), "path", None) or ""):
                    await conn.send(text)
                    return
        await self._conns[0].send(text)


class MarketStream(_FrameStream):
    """Combined market streams of one symbol: ``async for event in stream`` yields market events."""

    kind = "market-stream"

    def __init__(
        self,
        ws_url: str,
        symbol: str,
        streams: Sequence[str] = ("bookTicker", "markPrice@1s"),
        layout: str = "auto",
        **kwargs: Any,
    ) -> None:
        self.symbol = symbol
        self.stream_names = stream_names(symbol, streams)
        super().__init__(market_urls(ws_url, self.stream_names, layout), parse_market, **kwargs)

    async def __anext__(self) -> MarketEvent:
        return await super().__anext__()


class UserStream(_FrameStream):
    """The user data stream of one listenKey: order, account, funding and listenKey events."""

    kind = "user-stream"

    def __init__(
        self,
        ws_url: str,
        listen_key: str,
        layout: str = "auto",
        events: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> None:
        self.listen_key = listen_key
        self.symbol: str | None = None
        self._on_foreign: Callable[[], None] | None = None
        self.foreign = 0
        super().__init__([url_for(ws_url, layout=layout, listen_key=listen_key, events=events)], parse_user, **kwargs)

    def keep_only(self, symbol: str, on_foreign: Callable[[], None] | None = None) -> None:
        """Skip, unparsed, the order events of other symbols (``ORDER_TRADE_UPDATE``, ``TRADE_LITE``,
        ``ALGO_UPDATE``).

        An account's user stream carries every symbol's orders; an agent trading one of ten symbols
        on the account would parse and queue ten frames for each of its own. A skipped frame still
        counts as a frame (the connection is alive) and in ``foreign``; ``on_foreign`` is told of each.
        Account, funding and listenKey events always pass: they concern the whole account."""
        self.symbol = symbol
        self._on_foreign = on_foreign

    def _events_of(self, obj: Any, message: Any) -> list[Any]:
        if self.symbol is not None and _order_symbol(unwrap(obj)) not in (None, self.symbol):
            self.foreign += 1
            if self._on_foreign is not None:
                self._on_foreign()
            return []
        return super()._events_of(obj, message)

    async def __anext__(self) -> UserEvent:
        return await super().__anext__()


def _order_symbol(item: Any) -> str | None:
    """The symbol of an order event read off the raw frame, or None (not one, or malformed: the
    parser then judges it)."""
    if not isinstance(item, dict):
        return None
    kind = item.get("e")
    if kind in ("ORDER_TRADE_UPDATE", "ALGO_UPDATE"):
        order = item.get("o")
        symbol = order.get("s") if isinstance(order, dict) else None
    elif kind == "TRADE_LITE":
        symbol = item.get("s")
    else:
        return None
    return symbol if isinstance(symbol, str) else None
