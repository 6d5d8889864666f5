"""The simulator's WebSocket side: stream paths (legacy and 2026), subscriptions, fan-out of engine
frames, server pings, connection lifetime and the incoming message limit. Mixed into SimServer."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, NamedTuple

import orjson
from aiohttp import WSMsgType, web

from fleet.sim.config import SimConfig
from fleet.sim.engine import Engine, render
from fleet.sim.errors import SimApiError
from fleet.sim.faults import FrameFault
from fleet.sim.streams import MARKET, PUBLIC, canonical_stream, path_allows, unlisted_stream
from fleet.sim.wsapi import HANDSHAKE_WEIGHT, METHODS, WsApiGateway, WsApiReply, WsSession, echoable_id, error_reply

log = logging.getLogger("fleet.sim")

MAX_QUEUED_FRAMES = 20_000
FLUSH_BEFORE_CLOSE_S = 1.0  # a connection closed for its message rate gets what was queued before, for so long
API = "api"  # a WebSocket API connection's path kind
# a WebSocket API connection's answer to a binary frame (counted as a bad message when sent)
API_BINARY_REPLY = error_reply(None, 400, -1013, "Invalid request: send JSON in text frames").frame
# "Rate limit for ping/pong frames: maximum 5 per second" (the WebSocket API's rate limits): one more
# in any second closes the connection
API_PINGS_PER_S = 5


def over_rate(times: deque, limit: int, now: float) -> bool:
    """``now`` noted among ``times``; whether it makes more than ``limit`` within one second, over any
    second (not per second of the clock: 19 messages in 15 ms across a second's edge are over 10)."""
    times.append(now)
    if len(times) > limit:
        return now - times.popleft() < 1.0
    return False


@dataclass(eq=False)
class Conn:
    """One WebSocket connection and what it listens to."""

    ws: web.WebSocketResponse
    transport: Any
    path_kind: str  # legacy | public | market | private | api
    combined: bool
    opened: float
    subs: dict[str, str] = field(default_factory=dict)  # canonical -> name as requested
    silent: dict[str, str] = field(default_factory=dict)  # accepted, never delivered: canonical -> name
    listen_keys: set[str] = field(default_factory=set)
    accounts: set[str] = field(default_factory=set)
    events: dict[str, set[str]] = field(default_factory=dict)  # listen key ("*": any) -> the events it delivers
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    last_pong: float = 0.0
    next_ping: float = 0.0
    ping_payload: bytes | None = None   # the server's last ping: the WebSocket API counts only its pong
    messages: deque = field(default_factory=deque)   # when the last incoming messages came (monotonic)
    pings: deque = field(default_factory=deque)      # ... the WebSocket API's ping and pong frames
    closed: bool = False

    @property
    def is_user(self) -> bool:
        """A user-data connection: its listen keys, or (silent, on an unrouted path) its accounts."""
        return bool(self.listen_keys) or (self.path_kind not in ("api",) and bool(self.accounts))


class Silent(NamedTuple):
    """A stream accepted and never delivered: ``why`` is "legacy" (a /market or user stream on an unrouted
    path; ``where``: a user stream's account), "unlisted" (a symbol the exchange does not list) or
    "misrouted" (a stream of the other route; ``where``: the route that serves it)."""

    key: str
    name: str
    why: str
    where: str = ""


def _enveloped(stream: str, payload: dict[str, Any] | bytes) -> bytes:
    """A combined stream's frame; one broken on purpose (a frame fault's bytes) is broken inside it."""
    if isinstance(payload, bytes):
        return b'{"stream":' + orjson.dumps(stream) + b',"data":' + payload + b"}"
    return orjson.dumps({"stream": stream, "data": payload})


class StreamGateway(WsApiGateway):
    """Owns the connections; needs the engine, the config, a stats dict, and (for the WebSocket API)
    the REST gateway's ``answer``, ``limiter``, ``latency_ms`` and ``clock``."""

    engine: Engine
    config: SimConfig
    conns: set[Conn]
    api_requests: set[asyncio.Task]
    market_subs: dict[str, set[Conn]]
    user_conns: dict[str, set[Conn]]
    symbols_lower: set[str]
    stats: dict[str, int]
    frame_faults: list[FrameFault]

    def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
        raise NotImplementedError  # pragma: no cover - provided by SimServer

    def _flush(self) -> None:
        out = self.engine.drain()
        if not out:
            return
        for kind, target, payload in out:
            if kind == "m":
                subs = self.market_subs.get(target)
                if not subs:
                    continue
                payload = render(payload)
                if self.frame_faults:
                    payload = self._frame_fault("market", target, payload)
                    if payload is None:   # dropped
                        continue
                raw = None
                for c in subs:
                    if c.combined:
                        self._send(c, _enveloped(c.subs.get(target, target), payload))
                    else:
                        if raw is None:
                            raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
                        self._send(c, raw)
            else:
                conns = self.user_conns.get(target)
                if not conns:
                    continue
                acct = self.engine.accounts[target]
                payload = render(payload)
                etype = payload.get("e")
                key = payload["listenKey"] if etype == "listenKeyExpired" else acct.listen_key
                if self.frame_faults:
                    payload = self._frame_fault("user", target, payload)
                    if payload is None:   # dropped
                        continue
                raw = enveloped = None  # encoded once, whatever the number of connections
                for c in conns:
                    if key not in c.listen_keys:
                        continue
                    allowed = c.events.get(key, c.events.get("*"))
                    if allowed is not None and etype not in allowed:
                        continue
                    if c.combined:
                        if enveloped is None:
                            enveloped = _enveloped(key, payload)
                        self._send(c, enveloped)
                    else:
                        if raw is None:
                            raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
                        self._send(c, raw)

    def _frame_fault(self, stream: str, target: str, payload: dict[str, Any]) -> dict[str, Any] | bytes | None:
        """The frame as the first pending frame fault that matches it sends it (POST /sim/fault/frame)."""
        for f in self.frame_faults:
            if f.matches(stream, target, payload):
                f.count -= 1
                if f.count <= 0:
                    self.frame_faults.remove(f)
                self.stats["frames_faulted"] += 1
                return f.apply(payload)
        return payload

    def _send(self, c: Conn, raw: bytes) -> None:
        if c.closed:
            return
        if c.queue.qsize() >= MAX_QUEUED_FRAMES:
            # a client that stops reading is disconnected, as the exchange does, not buffered forever
            log.warning("dropping a websocket that fell %d frames behind", MAX_QUEUED_FRAMES)
            self.stats["ws_slow_dropped"] += 1
            c.closed = True
            asyncio.ensure_future(self._close_conn(c, abort=True))
            return
        c.queue.put_nowait(raw)


    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if "" in path.split("/")[1:]:   # "/ at the end is no longer supported" (2023-08-19), nor an empty segment
            return self._json(404, {"code": -5000, "msg": f"Path {path} is invalid"})
        parts = path.split("/")[1:]
        path_kind = "legacy"
        if parts and parts[0] in (PUBLIC, MARKET, "private"):
            path_kind = parts[0]
            parts = parts[1:]
        if not parts:
            parts = ["ws"]
        mode = parts[0]
        if mode not in ("ws", "stream"):
            return self._json(404, {"code": -5000, "msg": f"Path {path} is invalid"})
        combined = mode == "stream"
        names: list[str] = []
        if mode == "ws" and len(parts) > 1:
            names = parts[1:]   # /public/ws/a@depth/b@depth: each segment a raw stream, one connection
            if len(names) == 1 and names[0].isdigit():
                names = []   # ccxt's connection number, not a stream nor a key (/ws/0): SUBSCRIBE fills it
        if request.query.get("streams"):
            names = [n for n in request.query["streams"].split("/") if n]
        events: dict[str, set[str]] = {}
        if path_kind in ("private", "legacy"):   # ?listenKey=K (silent on the unrouted /ws by default)
            names += self._listen_keys(request, events if path_kind == "private" else None)
        if len(names) > self.config.ws_max_streams:
            return self._json(400, {"code": -1130, "msg": f"At most {self.config.ws_max_streams} streams "
                                                          "per connection."})
        market: list[tuple[str, str]] = []
        users: list[tuple[str, str]] = []
        silent: list[Silent] = []
        for n in names:
            err = self._classify(n, path_kind, market, users, silent)
            if err:
                return self._json(400, {"code": -1121 if "stream" in err else -1125, "msg": err})
        ws = web.WebSocketResponse(autoping=False, max_msg_size=1 << 16)
        await ws.prepare(request)
        now = time.monotonic()
        c = Conn(ws=ws, transport=request.transport, path_kind=path_kind, combined=combined, opened=now,
                 events=events, last_pong=now, next_ping=now + self.config.ws_ping_interval_s)
        self.conns.add(c)
        self._accept(c, market, users, silent)
        binary = orjson.dumps({"error": {"code": 3, "msg": "Invalid JSON: binary frames are not accepted"},
                               "id": None})
        await self._serve(c, lambda data: self._on_message(c, data), binary)
        return ws

    @staticmethod
    def _listen_keys(request: web.Request, events: dict[str, set[str]] | None) -> list[str]:
        """The ``listenKey`` parameters in order; ``events`` (``/private`` only): each key's own
        ``events=A/B``, the one that follows it (``?listenKey=K1&events=A&listenKey=K2&events=B``); one
        before any key is the connection's (``"*"``: keys subscribed later too)."""
        keys: list[str] = []
        for name, value in request.query.items():
            if name == "listenKey" and value:
                keys.append(value)
            elif name == "events" and events is not None and value:
                events[keys[-1] if keys else "*"] = {e for e in value.split("/") if e}
        return keys

    async def _serve(self, c: Conn, on_text: Callable[[str], Awaitable[None]], binary_reply: bytes) -> None:
        """Read one connection until it closes: text to ``on_text``, pings answered, pongs noted,
        binary frames refused with ``binary_reply``; then forget it."""
        ws = c.ws
        writer = asyncio.create_task(self._writer(c))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await on_text(msg.data)
                elif msg.type in (WSMsgType.PING, WSMsgType.PONG) and c.path_kind == API \
                        and over_rate(c.pings, API_PINGS_PER_S, time.monotonic()):
                    log.info("closing a WebSocket API connection that sent more than %d ping/pong frames in a "
                             "second", API_PINGS_PER_S)
                    await self._close_conn(c, code=1008, message=b"Too many ping/pong frames")
                    break
                elif msg.type == WSMsgType.PING:
                    await ws.pong(msg.data)
                elif msg.type == WSMsgType.PONG:
                    # streams: any pong keeps the connection; the WebSocket API: "Unsolicited pong frames
                    # are allowed, but will not prevent disconnection", only the answer to its ping
                    if c.path_kind != API or (c.ping_payload is not None and msg.data == c.ping_payload):
                        c.last_pong = time.monotonic()
                elif msg.type == WSMsgType.BINARY:
                    self.stats["ws_bad_messages"] += 1
                    self._send(c, binary_reply)
                elif msg.type in (WSMsgType.ERROR, WSMsgType.CLOSE):
                    break
                if c.closed:
                    break
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._forget(c)
            writer.cancel()
            if not ws.closed:
                try:
                    await ws.close()
                except Exception:  # noqa: BLE001 - already broken
                    pass

    async def _ws_api(self, request: web.Request) -> web.StreamResponse:
        """A WebSocket API connection (``/ws-fapi/v1``, :mod:`fleet.sim.wsapi`): each request handled on
        its own, as it arrives (one held by a latency fault holds neither the next nor the pings: its
        answer may come after a later one's, matched by ``id``; a request received runs even if the
        connection closes before its answer); server pings, lifetime and drops as for the streams."""
        ip = request.remote or "127.0.0.1"
        try:
            self.limiter.charge_weight(ip, HANDSHAKE_WEIGHT, self.clock())
        except SimApiError as exc:
            return self._json(exc.http_status, exc.body())
        rate_limits = request.query.get("returnRateLimits", "true").lower() != "false"
        ws = web.WebSocketResponse(autoping=False, max_msg_size=1 << 16)
        await ws.prepare(request)
        now = time.monotonic()
        session = WsSession(self.clock())
        c = Conn(ws=ws, transport=request.transport, path_kind=API, combined=False, opened=now,
                 last_pong=now, next_ping=now + self.config.ws_ping_interval_s)
        self.conns.add(c)

        async def answer(data: str) -> None:
            try:
                reply = await self._ws_api_request(c, data, ip, session, rate_limits)
            except Exception as exc:  # noqa: BLE001 - a bug answers 500; the connection lives on
                log.error("websocket API request failed: %s", type(exc).__name__)
                reply = WsApiReply(orjson.dumps({"id": None, "status": 500, "error": {
                    "code": -1000, "msg": "An unknown error occurred while processing the request."}}))
            if reply.hold_ms is not None:  # no answer: hold, then drop the connection
                await asyncio.sleep(reply.hold_ms / 1000.0)
                await self._close_conn(c, abort=True)
                return
            self._send(c, reply.frame)  # type: ignore[arg-type]

        async def on_text(data: str) -> None:
            if c.closed:   # read after the simulator closed it (its stop): not handled
                return
            task = asyncio.create_task(answer(data))
            self.api_requests.add(task)   # cancelled only by the simulator's stop
            task.add_done_callback(self.api_requests.discard)

        await self._serve(c, on_text, API_BINARY_REPLY)  # type: ignore[arg-type]
        return ws

    async def _ws_api_request(self, c: Conn, raw: str, ip: str, session: WsSession, rate_limits: bool) -> WsApiReply:
        parsed = self.ws_api_parse(raw)
        if isinstance(parsed, WsApiReply):
            return parsed
        rid, method, params = parsed
        acct = self.engine.by_key.get(params.get("apiKey")) if isinstance(params.get("apiKey"), str) else None
        if acct is not None:
            c.accounts.add(acct.name)  # the connection now speaks for it (the drop fault's account filter)
        route = METHODS.get(method)
        lat_ms = self.latency_ms(route[1]) if route else 0
        if lat_ms:
            await asyncio.sleep(lat_ms / 1000.0)
        reply = self.ws_api_call(rid, method, params, ip, self.clock(), session, rate_limits)
        if session.api_key is not None:
            acct = self.engine.by_key.get(session.api_key)
            if acct is not None:
                c.accounts.add(acct.name)
        return reply

    def _classify(self, name: str, path_kind: str, market: list[tuple[str, str]],
                  users: list[tuple[str, str]], silent: list[Silent]) -> str | None:
        """Sort one requested name into ``market``, ``users`` or (accepted, never delivered) ``silent``;
        the refusal's reason, or None."""
        acct = self.engine.account_of_listen_key(name)
        if acct is not None:
            if path_kind in (PUBLIC, MARKET):
                return f"user data stream is served on /private, not /{path_kind}"
            if path_kind == "legacy" and self.config.legacy_paths == "public":
                silent.append(Silent(name, name, "legacy", acct.name))   # the unrouted paths carry /public only
            else:
                users.append((name, acct.name))
            return None
        canon = canonical_stream(name, self.symbols_lower)
        unlisted = canon is None and "@" in name and (canon := unlisted_stream(name)) is not None
        if canon is None:
            if "@" in name or name.startswith("!") or path_kind in (PUBLIC, MARKET):
                return f"Invalid stream name: {name}"
            return "This listenKey does not exist."
        if path_kind == "private":
            return f"stream {name} is not served on /private"
        if not path_allows(path_kind, canon[1]):
            # a book on /market or a mark on /public: Binance acknowledges it and never pushes it (it pushes
            # no stream of the other route on a connection; node-binance-api #991 after testing it)
            silent.append(Silent(canon[0], name, "misrouted", canon[1]))
        elif path_kind == "legacy" and canon[1] == MARKET and self.config.legacy_paths == "public":
            silent.append(Silent(canon[0], name, "legacy"))   # the unrouted paths carry /public streams only
        elif unlisted:   # accepted and silent, as Binance does
            silent.append(Silent(canon[0], name, "unlisted"))
        else:
            market.append((canon[0], name))
        return None

    def _accept(self, c: Conn, market: list[tuple[str, str]], users: list[tuple[str, str]],
                silent: list[Silent]) -> None:
        for canon, name in market:
            self._subscribe_market(c, canon, name)
        for key, acct in users:
            self._subscribe_user(c, key, acct)
        counts = {"legacy": 0, "unlisted": 0, "misrouted": 0}
        first: Silent | None = None   # the first stream of the other route: named in the log's one line
        for entry in silent:   # accepted, never delivered
            if entry.key in c.silent:
                continue
            c.silent[entry.key] = entry.name
            counts[entry.why] += 1
            if entry.why == "legacy" and entry.where:   # a user stream: its account, for the drop fault and counts
                c.accounts.add(entry.where)
            if entry.why == "misrouted" and counts["misrouted"] == 1:
                first = entry
        self.stats["ws_legacy_silent_streams"] += counts["legacy"]
        self.stats["ws_unlisted_symbol_streams"] += counts["unlisted"]
        self.stats["ws_misrouted_silent_streams"] += counts["misrouted"]
        if counts["legacy"]:
            log.warning("%d stream(s) on an unrouted path (/ws, /stream) accepted and silent: only /public "
                        "streams (books, trades) are served there (Binance since 2026-04-23); use /market or "
                        "/private, or start the simulator with --legacy-paths all", counts["legacy"])
        if counts["unlisted"]:
            log.info("%d stream(s) of symbols the exchange does not list accepted and silent", counts["unlisted"])
        if first is not None:
            log.warning("%d stream(s) on /%s accepted and silent, Binance serving them on another route: %r on "
                        "/%s only", counts["misrouted"], c.path_kind, first.name, first.where)

    def _subscribe_market(self, c: Conn, canon: str, name: str) -> None:
        c.subs[canon] = name
        self.market_subs.setdefault(canon, set()).add(c)
        if canon not in self.engine.interest:
            self.engine.watch(canon)

    def _subscribe_user(self, c: Conn, key: str, account: str) -> None:
        c.listen_keys.add(key)
        c.accounts.add(account)
        self.user_conns.setdefault(account, set()).add(c)

    def _unsubscribe_market(self, c: Conn, canon: str) -> None:
        c.subs.pop(canon, None)
        subs = self.market_subs.get(canon)
        if subs is not None:
            subs.discard(c)
            if not subs:
                del self.market_subs[canon]
                self.engine.unwatch(canon)

    def _forget(self, c: Conn) -> None:
        c.closed = True
        self.conns.discard(c)
        for canon in list(c.subs):
            self._unsubscribe_market(c, canon)
        for acct in c.accounts:
            s = self.user_conns.get(acct)
            if s is not None:
                s.discard(c)

    def _reply(self, c: Conn, body: Any) -> None:
        self._send(c, orjson.dumps(body))

    async def _on_message(self, c: Conn, data: str) -> None:
        if over_rate(c.messages, self.config.ws_max_incoming_per_s, time.monotonic()):
            log.info("closing a connection that sent more than %d messages in a second",
                     self.config.ws_max_incoming_per_s)
            self._forget(c)   # nothing more is queued; the answers to the messages before this one still go
            try:
                await asyncio.wait_for(c.queue.join(), FLUSH_BEFORE_CLOSE_S)
            except asyncio.TimeoutError:
                pass
            await self._close_conn(c, code=1008, message=b"Too many requests")
            return
        try:
            req = json.loads(data)
        except ValueError as exc:
            self.stats["ws_bad_messages"] += 1
            self._reply(c, {"error": {"code": 3, "msg": f"Invalid JSON: {exc}"}, "id": None})
            return
        if not isinstance(req, dict):
            self.stats["ws_bad_messages"] += 1
            self._reply(c, {"error": {"code": 2, "msg": "Invalid request: request must be a JSON object"},
                            "id": None})
            return
        if "method" not in req:
            self.stats["ws_bad_messages"] += 1
            self._reply(c, {"error": {"code": 2, "msg": "Invalid request: missing field `method`"}, "id": req.get("id")})
            return
        if "id" not in req:
            self.stats["ws_bad_messages"] += 1
            self._reply(c, {"error": {"code": 2, "msg": "Invalid request: request ID must be an unsigned integer"},
                            "id": None})
            return
        rid = req.get("id")
        # The docs say an unsigned INT; Binance's own USD-M SDK sends a UUID string (binance-common's
        # WebSocket streams, ``id_strict_int`` off but for Options, whose server refuses strings): both
        # are answered, with the id echoed. Anything else (null too: "not provided") is refused.
        if rid is None or not (echoable_id(rid) and (not isinstance(rid, int) or rid >= 0)):
            self.stats["ws_bad_messages"] += 1
            self._reply(c, {"error": {"code": 2, "msg": "Invalid request: request ID must be an unsigned "
                                                        "integer or a string"}, "id": None})
            return
        method = req.get("method")
        params = req.get("params", [])
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
                self._reply(c, {"error": {"code": 2, "msg": "Invalid request: params must be a list of "
                                                            "stream names"}, "id": rid})
                return
            if method == "SUBSCRIBE" and not params:   # (Binance's answer, as a client quoted it)
                self._reply(c, {"error": {"code": 2, "msg": "Invalid request: streams must have non-zero length"},
                                "id": rid})
                return
            if method == "SUBSCRIBE":
                market: list[tuple[str, str]] = []
                users: list[tuple[str, str]] = []
                silent: list[Silent] = []
                for n in params:
                    err = self._classify(n, c.path_kind, market, users, silent)
                    if err:
                        self._reply(c, {"error": {"code": 2, "msg": f"Invalid request: {err}"}, "id": rid})
                        return
                held = c.subs.keys() | c.silent.keys()   # a stream held already takes no second place
                new = {k for k, _ in market if k not in held} | {e.key for e in silent if e.key not in held}
                if len(held) + len(new) > self.config.ws_max_streams:
                    self._reply(c, {"error": {"code": 2, "msg": "Invalid request: too many streams"}, "id": rid})
                    return
                self._accept(c, market, users, silent)
            else:
                for n in params:
                    canon = canonical_stream(n, self.symbols_lower) or unlisted_stream(n)
                    if canon is not None:
                        self._unsubscribe_market(c, canon[0])
                        c.silent.pop(canon[0], None)
                    else:
                        c.listen_keys.discard(n)
                        c.silent.pop(n, None)
            self._reply(c, {"result": None, "id": rid})
        elif method == "LIST_SUBSCRIPTIONS":
            self._reply(c, {"result": list(c.subs.values()) + list(c.silent.values()) + sorted(c.listen_keys),
                            "id": rid})
        elif method in ("SET_PROPERTY", "GET_PROPERTY"):
            self._property(c, method, params, rid)
        else:
            self.stats["ws_bad_messages"] += 1
            self._reply(c, {"error": {"code": 2, "msg": f"Invalid request: unknown variant {str(method)[:64]!r}, "
                                                        "expected one of `SUBSCRIBE`, `UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`, "
                                                        "`SET_PROPERTY`, `GET_PROPERTY`"}, "id": rid})

    def _property(self, c: Conn, method: str, params: Any, rid: Any) -> None:
        """SET_PROPERTY ["combined", bool] / GET_PROPERTY ["combined"], with the error table of Binance's
        stream docs: no name or not a string, code 2; more parameters than the method takes, code 2;
        another name, code 0; a value not a boolean, code 1."""
        takes = 2 if method == "SET_PROPERTY" else 1
        if not isinstance(params, list) or not params or not isinstance(params[0], str):
            error = (2, "Invalid request: property name must be a string")
        elif len(params) > takes:
            error = (2, "Invalid request: too many parameters")
        elif params[0] != "combined":
            error = (0, "Unknown property")
        elif method == "GET_PROPERTY":
            self._reply(c, {"result": c.combined, "id": rid})
            return
        elif len(params) < 2 or not isinstance(params[1], bool):
            error = (1, "Invalid value type: expected Boolean")
        else:
            c.combined = params[1]
            self._reply(c, {"result": None, "id": rid})
            return
        self._reply(c, {"error": {"code": error[0], "msg": error[1]}, "id": rid})

    async def _writer(self, c: Conn) -> None:
        ws = c.ws
        try:
            while True:
                raw = await c.queue.get()
                try:
                    await ws.send_frame(raw, WSMsgType.TEXT)   # JSON is UTF-8 already: no decode and re-encode
                finally:
                    c.queue.task_done()
                self.stats["ws_frames_sent"] += 1
        except (ConnectionResetError, RuntimeError, asyncio.CancelledError):
            pass
        except Exception:  # noqa: BLE001 - a broken socket: drop it
            log.debug("websocket writer ended", exc_info=True)

    async def _close_conn(self, c: Conn, abort: bool = False, code: int = 1000, message: bytes = b"") -> None:
        self._forget(c)
        if abort and c.transport is not None:
            c.transport.abort()
            return
        try:
            await c.ws.close(code=code, message=message)
        except Exception:  # noqa: BLE001 - already gone
            if c.transport is not None:
                c.transport.abort()

    async def _housekeeping_loop(self) -> None:
        cfg = self.config
        while True:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            for c in list(self.conns):
                if c.closed:
                    continue
                if now - c.opened >= cfg.ws_max_lifetime_s:
                    await self._close_conn(c, code=1000, message=b"connection lifetime reached")
                    continue
                if now - c.last_pong > cfg.ws_pong_timeout_s + cfg.ws_ping_interval_s:
                    await self._close_conn(c, code=1002, message=b"no pong")
                    continue
                if now >= c.next_ping:
                    c.next_ping = now + cfg.ws_ping_interval_s
                    c.ping_payload = str(int(time.time() * 1000)).encode()
                    try:
                        await c.ws.ping(c.ping_payload)
                    except Exception:  # noqa: BLE001 - broken socket
                        await self._close_conn(c, abort=True)
