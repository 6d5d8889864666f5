"""The simulator's aiohttp server: Binance USD-M REST + WebSocket on one loopback port, plus /sim admin.

The only I/O around :class:`fleet.sim.engine.Engine`: it parses and signs-checks requests, counts
rate limits, injects faults, drives the engine with the wall clock every 10 ms and pushes the
engine's frames to the connected sockets.

Admin routes (never under /fapi; JSON body in, JSON out; no API key; HTTP 400 {"error": ...} on bad
input, 404 on an unknown route)::

    GET  /sim/state?account=main&symbol=ETHUSDC
         -> {"time", "account", "symbol",
             "open_orders": [{"orderId", "clientOrderId", "symbol", "side", "type", "timeInForce", "price",
                              "origQty", "executedQty", "status", "reduceOnly", "queueAhead", "time", "updateTime"}],
             "positions": {SYM: {"amount", "entry_price", "unrealized_pnl", "realized_pnl", "funding",
                                 "commission", "leverage", "countdown_deadline_ms"}},
             "balances": {ASSET: wallet}, "realized_pnl", "funding_paid", "commission_paid",
             "counters": {"orders_placed", "orders_cancelled", "orders_rejected", "orders_filled",
                          "orders_expired", "orders_amended", "trades", "countdown_fired"},
             "listen_key_active", "markets": {SYM: {"mid", "mark_price", "bid", "ask", "regime",
                                   "funding_rate", "funding_pinned", "frozen", "next_funding_time",
                                   "funding_history"}},
             "connections": {"market", "user", "total"}, "faults_pending": [...]}
         (symbol optional: all symbols; account default "main"; money fields are decimal strings)
    GET  /sim/accounts                -> [{"name", "api_key", "api_secret"}]
    POST /sim/fault/rest     {"mode": "error"|"unknown"|"429", "count": 1, "path": "/fapi/v1/order",
                              "method": "POST", "status": 503}
         error:   fail before executing: HTTP `status` (default 503) {"code": -1001, ...}
         unknown: execute, then answer 503 {"code": -1000, "msg": "Unknown error, please check your
                  request or try again later."} (the order really exists)
         429:     answer 429 {"code": -1003} with Retry-After: 1 (no ban)
         path (prefix) and method are optional filters; each matching request uses up one of `count`.
    POST /sim/fault/latency  {"ms": 200, "path": "/fapi/v1/order"}   delay matching REST calls (0 clears)
    POST /sim/fault/drop     {"target": "market"|"user"|"all", "account": "main"}
         abort matching WebSocket connections (TCP reset, no close frame) -> {"dropped": n}
    POST /sim/fault/clear    {}       clear REST faults and latency
    POST /sim/listenkey/expire {"account": "main"}
         expire the account's key now: listenKeyExpired is pushed -> {"listenKey": key or null}
    POST /sim/market/freeze  {"frozen": true, "symbol": "ETHUSDC"}
         stop (or restart with false) the symbol's market: no moves, no takers, no market frames;
         symbol optional = all -> {"symbols": [...]}
    POST /sim/market/jump    {"symbol": "ETHUSDC", "pct": -2.0}
         move the mid at once; resting orders the move crosses fill at their price -> {"mid": new mid}
    POST /sim/funding/rate   {"symbol": "ETHUSDC", "rate": "0.0005"}  pin the rate (null: wander again)
    POST /sim/funding/settle {"symbol": "ETHUSDC"}   settle now (symbol optional: all)
         -> {"charged": [{"account", "symbol", "fee", "mark_price", "rate", "position"}]}
    POST /sim/position       {"account": "main", "symbol": "ETHUSDC", "amount": "0.18", "entry_price": "3000"}
         set a position directly (entry optional: the mark); pushes ACCOUNT_UPDATE m=ADJUSTMENT
    POST /sim/countdown/check {}      run due dead-man switches now (the clock also wakes for them)
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qsl

import orjson
from aiohttp import WSMsgType, web

from fleet.sim.config import SimConfig, load_sim_config
from fleet.sim.engine import Engine, SimApiError, missing, render
from fleet.sim.ratelimit import RateLimiter
from fleet.sim.streams import MARKET, PUBLIC, canonical_stream, path_allows

log = logging.getLogger("fleet.sim")

NONE, SIGNED, KEY = "NONE", "SIGNED", "KEY"
MAX_QUEUED_FRAMES = 20_000


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass
class RestFault:
    mode: str
    count: int
    path: str | None = None
    method: str | None = None
    status: int = 503

    def matches(self, method: str, path: str) -> bool:
        return (self.path is None or path.startswith(self.path)) and (
            self.method is None or self.method.upper() == method)


@dataclass(eq=False)
class Conn:
    """One WebSocket connection and what it listens to."""

    ws: web.WebSocketResponse
    transport: Any
    path_kind: str  # legacy | public | market | private
    combined: bool
    opened: float
    subs: dict[str, str] = field(default_factory=dict)  # canonical -> name as requested
    listen_keys: set[str] = field(default_factory=set)
    accounts: set[str] = field(default_factory=set)
    events: set[str] | None = None
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    last_pong: float = 0.0
    next_ping: float = 0.0
    msg_window: int = 0
    msg_count: int = 0
    closed: bool = False


class SimServer:
    """The running simulator. ``async with SimServer(symbols=["ETHUSDC"], seed=7) as sim: ...``"""

    def __init__(self, symbols: list[str] | None = None, seed: int = 7, host: str = "127.0.0.1", port: int = 0,
                 config: SimConfig | dict[str, Any] | str | None = None, api_key: str | None = None,
                 api_secret: str | None = None, clock: Callable[[], int] | None = None) -> None:
        self.config = load_sim_config(config)
        self.host = host
        self.port = port
        self.clock = clock or _now_ms
        creds: dict[str, tuple[str | None, str | None]] = {}
        if api_key or api_secret:
            first = self.config.accounts[0]
            creds[first.name] = (api_key or first.api_key, api_secret or first.api_secret)
        for spec in self.config.accounts:
            k, s = creds.get(spec.name, (spec.api_key, spec.api_secret))
            creds[spec.name] = (k or secrets.token_hex(32), s or secrets.token_hex(32))
        self.engine = Engine(self.config, seed=seed, now_ms=self.clock(), symbols=symbols,
                             credentials=creds)  # type: ignore[arg-type]
        self.symbols_lower = {b.lower for b in self.engine.books.values()}
        self.limiter = RateLimiter(self.config.rate_limits)
        self.faults: list[RestFault] = []
        self.latency: tuple[int, str | None] = (0, None)
        self.conns: set[Conn] = set()
        self.market_subs: dict[str, set[Conn]] = {}
        self.user_conns: dict[str, set[Conn]] = {}
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task] = []
        self.rest_url = ""
        self.ws_url = ""
        self.stats = {"rest_requests": 0, "ws_frames_sent": 0, "ws_bad_messages": 0, "ws_slow_dropped": 0}
        self._routes = self._route_table()

    # -- lifecycle ------------------------------------------------------------------------------------

    @property
    def accounts(self) -> list[tuple[str, str, str]]:
        return [(a.name, a.api_key, a.api_secret) for a in self.engine.accounts.values()]

    async def start(self) -> "SimServer":
        app = web.Application(client_max_size=1 << 20)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        await site.start()
        sockets = site._server.sockets  # type: ignore[union-attr]
        self.port = sockets[0].getsockname()[1]
        self.rest_url = f"http://{self.host}:{self.port}"
        self.ws_url = f"ws://{self.host}:{self.port}"
        self._tasks.append(asyncio.create_task(self._clock_loop()))
        self._tasks.append(asyncio.create_task(self._housekeeping_loop()))
        return self

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down
                pass
        self._tasks.clear()
        for c in list(self.conns):
            await self._close_conn(c, abort=True)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> "SimServer":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop()

    # -- engine driving ------------------------------------------------------------------------------

    async def _clock_loop(self) -> None:
        while True:
            try:
                self.engine.advance(self.clock())
                self._flush()
            except Exception:  # noqa: BLE001 - the exchange must keep running; count and log
                log.exception("simulator clock step failed")
            wait = 0.01
            deadline = self.engine.next_countdown_ms()
            if deadline is not None:  # wake at a dead-man deadline, not up to 10 ms after it
                wait = min(wait, max(0.0, (deadline - self.clock()) / 1000.0))
            await asyncio.sleep(wait)

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
                raw = None
                for c in subs:
                    if c.combined:
                        self._send(c, orjson.dumps({"stream": c.subs.get(target, target), "data": payload}))
                    else:
                        if raw is None:
                            raw = orjson.dumps(payload)
                        self._send(c, raw)
            else:
                conns = self.user_conns.get(target)
                if not conns:
                    continue
                acct = self.engine.accounts[target]
                payload = render(payload)
                etype = payload.get("e")
                for c in conns:
                    if etype == "listenKeyExpired":
                        if payload["listenKey"] not in c.listen_keys:
                            continue
                    elif acct.listen_key not in c.listen_keys:
                        continue
                    if c.events is not None and etype not in c.events:
                        continue
                    if c.combined:
                        key = payload["listenKey"] if etype == "listenKeyExpired" else acct.listen_key
                        self._send(c, orjson.dumps({"stream": key, "data": payload}))
                    else:
                        self._send(c, orjson.dumps(payload))

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

    # -- REST ----------------------------------------------------------------------------------------

    def _route_table(self) -> dict[tuple[str, str], tuple[Callable[..., Any], str, Any]]:
        e = self.engine
        r: dict[tuple[str, str], tuple[Callable[..., Any], str, Any]] = {}

        def add(method: str, path: str, fn: Callable[..., Any], sec: str, weight: Any = 1) -> None:
            r[(method, path)] = (fn, sec, weight)

        v1 = "/fapi/v1"
        add("GET", v1 + "/ping", lambda a, p, n: {}, NONE)
        add("GET", v1 + "/time", lambda a, p, n: {"serverTime": n}, NONE)
        add("GET", v1 + "/exchangeInfo", lambda a, p, n: self._exchange_info(n), NONE)
        add("GET", v1 + "/depth", self._depth, NONE, self._depth_weight)
        add("GET", v1 + "/ticker/bookTicker", self._book_ticker, NONE, lambda p: 2 if p.get("symbol") else 5)
        add("GET", v1 + "/premiumIndex", self._premium_index, NONE)
        add("GET", v1 + "/fundingRate", self._funding_rate, NONE)
        add("GET", v1 + "/fundingInfo", lambda a, p, n: [], NONE, 0)
        add("GET", v1 + "/ticker/price", self._ticker_price, NONE, lambda p: 1 if p.get("symbol") else 2)
        add("GET", "/fapi/v2/ticker/price", self._ticker_price, NONE, lambda p: 1 if p.get("symbol") else 2)
        add("GET", v1 + "/ticker/24hr", self._ticker_24h, NONE, lambda p: 1 if p.get("symbol") else 40)
        add("GET", v1 + "/openInterest", lambda a, p, n: {"openInterest": "10000.000",
                                                         "symbol": e.book(p.get("symbol")).symbol, "time": n},
            NONE)
        add("GET", v1 + "/trades", self._trades, NONE, 5)
        add("GET", v1 + "/aggTrades", self._agg_trades, NONE, 20)
        add("GET", v1 + "/klines", self._klines, NONE, self._klines_weight)
        # trading
        add("POST", v1 + "/order", lambda a, p, n: e.new_order(a, p, n), SIGNED, (0, 1, 1))
        add("POST", v1 + "/order/test", lambda a, p, n: e.new_order(a, p, n, test=True), SIGNED, 1)
        add("PUT", v1 + "/order", lambda a, p, n: e.modify_order(a, p, n), SIGNED, (0, 1, 1))
        add("DELETE", v1 + "/order", lambda a, p, n: e.cancel_order(a, p, n), SIGNED)
        add("GET", v1 + "/order", lambda a, p, n: e.query_order(a, p), SIGNED)
        add("GET", v1 + "/openOrder", lambda a, p, n: e.query_order(a, p, open_only=True), SIGNED)
        add("GET", v1 + "/openOrders", lambda a, p, n: e.open_orders(a, p.get("symbol")), SIGNED,
            lambda p: 1 if p.get("symbol") else 40)
        add("GET", v1 + "/allOrders", lambda a, p, n: e.all_orders(a, p), SIGNED, 5)
        add("GET", v1 + "/userTrades", lambda a, p, n: e.user_trades(a, p), SIGNED, 5)
        add("POST", v1 + "/batchOrders", self._batch_new, SIGNED, (5, 5, 1))
        add("PUT", v1 + "/batchOrders", self._batch_modify, SIGNED, (5, 5, 1))
        add("DELETE", v1 + "/batchOrders", self._batch_cancel, SIGNED)
        add("DELETE", v1 + "/allOpenOrders", lambda a, p, n: e.cancel_all(a, p, n), SIGNED)
        add("POST", v1 + "/countdownCancelAll", lambda a, p, n: e.countdown_cancel_all(a, p, n), SIGNED, 10)
        # account
        for ver in (2, 3):
            add("GET", f"/fapi/v{ver}/positionRisk",
                lambda a, p, n, ver=ver: e.position_risk(a, p.get("symbol"), ver), SIGNED, 5)
            add("GET", f"/fapi/v{ver}/account", lambda a, p, n, ver=ver: e.account_info(a, ver), SIGNED, 5)
            add("GET", f"/fapi/v{ver}/balance", lambda a, p, n: e.balances(a), SIGNED, 5)
        add("POST", v1 + "/leverage", lambda a, p, n: e.set_leverage(a, p, n), SIGNED)
        add("POST", v1 + "/marginType", self._margin_type, SIGNED)
        add("GET", v1 + "/positionSide/dual", lambda a, p, n: {"dualSidePosition": False}, SIGNED, 30)
        add("POST", v1 + "/positionSide/dual", self._position_side, SIGNED)
        add("GET", v1 + "/multiAssetsMargin", lambda a, p, n: {"multiAssetsMargin": False}, SIGNED, 30)
        add("GET", v1 + "/commissionRate", self._commission_rate, SIGNED, 20)
        add("GET", v1 + "/income", lambda a, p, n: e.income(a, p), SIGNED, 30)
        add("GET", v1 + "/rateLimit/order", self._order_limits, SIGNED)
        add("GET", v1 + "/leverageBracket", self._leverage_bracket, SIGNED)
        add("GET", v1 + "/apiTradingStatus", lambda a, p, n: {"indicators": {}, "updateTime": n}, SIGNED)
        # user stream
        add("POST", v1 + "/listenKey", lambda a, p, n: {"listenKey": e.listen_key_start(a, n)}, KEY)
        add("PUT", v1 + "/listenKey", lambda a, p, n: {"listenKey": e.listen_key_keepalive(a, n)}, KEY)
        add("DELETE", v1 + "/listenKey", self._listen_key_close, KEY)
        return r

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path.startswith("/sim/"):
            return await self._admin(request)
        if path.startswith(("/ws", "/stream", "/public/", "/market/", "/private/")) or path in (
                "/public", "/market", "/private"):
            return await self._websocket(request)
        return await self._rest(request)

    def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
        return web.Response(status=status, body=orjson.dumps(body), content_type="application/json",
                            headers=headers)

    async def _rest(self, request: web.Request) -> web.Response:
        self.stats["rest_requests"] += 1
        method = request.method
        path = request.path
        route = self._routes.get((method, path))
        ip = request.remote or "127.0.0.1"
        now = self.clock()
        headers: dict[str, str] = {}
        if route is None:
            known = any(p == path for (_, p) in self._routes)
            if known:
                return self._json(405, {"code": -1000, "msg": f"Method {method} is not allowed for {path}."})
            return self._json(404, {"code": -5000, "msg": f"Path {path}, Method {method} is invalid"})
        fn, sec, weight_spec = route
        lat_ms, lat_path = self.latency
        if lat_ms and (lat_path is None or path.startswith(lat_path)):
            await asyncio.sleep(lat_ms / 1000.0)
            now = self.clock()
        fault = self._take_fault(method, path)
        if fault is not None and fault.mode == "error":
            return self._json(fault.status, {"code": -1001, "msg": "Internal error; unable to process your "
                                                                  "request. Please try again."})
        if fault is not None and fault.mode == "429":
            return self._json(429, {"code": -1003, "msg": "Too many requests; please use the websocket for "
                                                          "live updates."}, {"Retry-After": "1"})
        try:
            raw_body = (await request.read()).decode("utf-8") if request.body_exists else ""
        except UnicodeDecodeError:
            return self._json(400, {"code": -1100, "msg": "Illegal characters found in a parameter."})
        raw_query = request.rel_url.raw_query_string
        try:
            params = dict(parse_qsl(raw_body, keep_blank_values=True))
            params.update(parse_qsl(raw_query, keep_blank_values=True))
        except ValueError:
            return self._json(400, {"code": -1100, "msg": "Illegal characters found in a parameter."})
        if isinstance(weight_spec, tuple):
            ip_weight, o10, o1m = weight_spec
        else:
            ip_weight = weight_spec(params) if callable(weight_spec) else weight_spec
            o10 = o1m = 0
        try:
            used, _ = self.limiter.charge_weight(ip, ip_weight, now)
            headers["X-MBX-USED-WEIGHT-1M"] = str(used)
            account = None
            if sec != NONE:
                account = self._authenticate(request, sec, params, raw_query, raw_body, now)
            if o10 and account is not None:
                c10, c1m = self.limiter.charge_orders(account, o10, o1m, now)
                headers["X-MBX-ORDER-COUNT-10S"] = str(c10)
                headers["X-MBX-ORDER-COUNT-1M"] = str(c1m)
            result = fn(account, params, now)
        except SimApiError as exc:
            if exc.http_status in (429, 418):
                headers["Retry-After"] = str(getattr(exc, "retry_after", 60))
                if hasattr(exc, "used_weight"):
                    headers["X-MBX-USED-WEIGHT-1M"] = str(exc.used_weight)  # type: ignore[attr-defined]
            self._flush()
            return self._json(exc.http_status, exc.body(), headers)
        except Exception:  # noqa: BLE001 - a bug must answer 500 and keep the exchange up
            log.exception("simulator handler failed: %s %s", method, path)
            return self._json(500, {"code": -1000, "msg": "An unknown error occurred while processing the "
                                                          "request."}, headers)
        self._flush()
        if fault is not None and fault.mode == "unknown":
            return self._json(503, {"code": -1000, "msg": "Unknown error, please check your request or try "
                                                          "again later."}, headers)
        return self._json(200, result, headers)

    def _take_fault(self, method: str, path: str) -> RestFault | None:
        for f in self.faults:
            if f.count > 0 and f.matches(method, path):
                f.count -= 1
                if f.count == 0:
                    self.faults.remove(f)
                return f
        return None

    def _authenticate(self, request: web.Request, sec: str, params: dict[str, str], raw_query: str,
                      raw_body: str, now: int) -> str:
        key = request.headers.get("X-MBX-APIKEY")
        if not key:
            raise SimApiError(-2014, "API-key format invalid.", 401)
        acct = self.engine.by_key.get(key)
        if acct is None:
            raise SimApiError(-2015, "Invalid API-key, IP, or permissions for action.", 401)
        if sec == KEY:
            return acct.name
        sig = params.get("signature")
        if not sig:
            raise missing("signature")
        payload = _strip_signature(raw_query) + _strip_signature(raw_body)
        expected = hmac.new(acct.api_secret.encode(), payload.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, sig.lower()):
            raise SimApiError(-1022, "Signature for this request is not valid.")
        ts_raw = params.get("timestamp")
        if not ts_raw:
            raise missing("timestamp")
        try:
            ts = int(ts_raw)
        except ValueError as exc:
            raise missing("timestamp") from exc
        try:
            recv = int(params.get("recvWindow") or 5000)
        except ValueError:
            raise SimApiError(-1130, "Data sent for parameter 'recvWindow' is not valid.") from None
        if recv <= 0 or recv > self.config.recv_window_max_ms:
            raise SimApiError(-1130, "Data sent for parameter 'recvWindow' is not valid.")
        if ts >= now + 1000:
            raise SimApiError(-1021, "Timestamp for this request was 1000ms ahead of the server's time.")
        if now - ts > recv:
            raise SimApiError(-1021, "Timestamp for this request is outside of the recvWindow.")
        return acct.name

    # -- REST handlers that need the server -------------------------------------------------------

    def _exchange_info(self, now: int) -> dict[str, Any]:
        lim = self.config.rate_limits
        symbols = []
        assets = set()
        for b in self.engine.books.values():
            sp = b.spec
            assets.update({sp.quote_asset})
            symbols.append({
                "symbol": b.symbol, "pair": b.symbol, "contractType": "PERPETUAL", "deliveryDate": 4133404800000,
                "onboardDate": 1569398400000, "status": "TRADING", "maintMarginPercent": "2.5000",
                "requiredMarginPercent": "5.0000", "baseAsset": sp.base_asset, "quoteAsset": sp.quote_asset,
                "marginAsset": sp.margin_asset, "pricePrecision": b.price_precision,
                "quantityPrecision": b.qty_precision, "baseAssetPrecision": 8, "quotePrecision": 8,
                "underlyingType": "COIN", "underlyingSubType": [], "settlePlan": 0, "triggerProtect": "0.0500",
                "liquidationFee": "0.012500", "marketTakeBound": "0.05", "maxMoveOrderLimit": 10000,
                "filters": [
                    {"filterType": "PRICE_FILTER", "minPrice": b.price_str(1), "maxPrice": "10000000",
                     "tickSize": sp.tick_size},
                    {"filterType": "LOT_SIZE", "minQty": f"{b.min_qty:f}", "maxQty": sp.max_qty,
                     "stepSize": sp.step_size},
                    {"filterType": "MARKET_LOT_SIZE", "minQty": f"{b.min_qty:f}", "maxQty": sp.market_max_qty,
                     "stepSize": sp.step_size},
                    {"filterType": "MAX_NUM_ORDERS", "limit": sp.max_num_orders},
                    {"filterType": "MAX_NUM_ALGO_ORDERS", "limit": 10},
                    {"filterType": "MIN_NOTIONAL", "notional": sp.min_notional},
                    {"filterType": "PERCENT_PRICE", "multiplierUp": sp.multiplier_up,
                     "multiplierDown": sp.multiplier_down, "multiplierDecimal": "4"},
                ],
                "orderTypes": ["LIMIT", "MARKET"], "timeInForce": ["GTC", "IOC", "FOK", "GTX"],
                "permissionSets": ["GRID", "COPY"]})
        return {"timezone": "UTC", "serverTime": now, "futuresType": "U_MARGINED",
                "rateLimits": [
                    {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
                     "limit": lim.weight_per_minute},
                    {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1,
                     "limit": lim.orders_per_minute},
                    {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10,
                     "limit": lim.orders_per_10s}],
                "exchangeFilters": [],
                "assets": [{"asset": a, "marginAvailable": True, "autoAssetExchange": "0"} for a in sorted(assets)],
                "symbols": symbols}

    @staticmethod
    def _depth_weight(params: dict[str, str]) -> int:
        try:
            limit = int(params.get("limit") or 500)
        except ValueError:
            return 2
        return 2 if limit <= 50 else 5 if limit <= 100 else 10 if limit <= 500 else 20

    def _depth(self, account: Any, params: dict[str, str], now: int) -> dict[str, Any]:
        b = self.engine.book(params.get("symbol"))
        raw = params.get("limit") or "500"
        try:
            limit = int(raw)
        except ValueError:
            raise SimApiError(-1130, "Data sent for parameter 'limit' is not valid.") from None
        if limit not in (5, 10, 20, 50, 100, 500, 1000):
            raise SimApiError(-1130, "Data sent for parameter 'limit' is not valid.")
        bids, asks = b.depth(limit)
        return {"lastUpdateId": b.update_id, "E": now, "T": now, "bids": bids, "asks": asks}

    @staticmethod
    def _limit(params: dict[str, str], default: int, maximum: int) -> int:
        raw = params.get("limit") or str(default)
        try:
            limit = int(raw)
        except ValueError:
            raise SimApiError(-1130, "Data sent for parameter 'limit' is not valid.") from None
        if not 1 <= limit <= maximum:
            raise SimApiError(-1130, "Data sent for parameter 'limit' is not valid.")
        return limit

    @staticmethod
    def _int_param(params: dict[str, str], name: str) -> int | None:
        raw = params.get(name)
        if raw is None or raw == "":
            return None
        try:
            return int(raw)
        except ValueError:
            raise SimApiError(-1130, f"Data sent for parameter '{name}' is not valid.") from None

    def _trades(self, account: Any, params: dict[str, str], now: int) -> Any:
        b = self.engine.book(params.get("symbol"))
        limit = self._limit(params, 500, 1000)
        return [{"id": aid, "price": b.price_str(p), "qty": b.qty_str(q),
                 "quoteQty": f"{b.notional_unit * p * q:f}", "time": t, "isBuyerMaker": m}
                for aid, p, q, t, m in list(b.recent_trades)[-limit:]]

    def _agg_trades(self, account: Any, params: dict[str, str], now: int) -> Any:
        b = self.engine.book(params.get("symbol"))
        limit = self._limit(params, 500, 1000)
        from_id = self._int_param(params, "fromId")
        start, end = self._int_param(params, "startTime"), self._int_param(params, "endTime")
        rows = [r for r in b.recent_trades if (from_id is None or r[0] >= from_id)
                and (start is None or r[3] >= start) and (end is None or r[3] <= end)]
        rows = rows[:limit] if (from_id is not None or start is not None) else rows[-limit:]
        return [{"a": aid, "p": b.price_str(p), "q": b.qty_str(q), "nq": b.qty_str(q), "f": aid, "l": aid,
                 "T": t, "m": m} for aid, p, q, t, m in rows]

    _KLINE_MINUTES = {"1m": 1, "3m": 3, "5m": 5, "15m": 15, "30m": 30, "1h": 60, "2h": 120, "4h": 240,
                      "6h": 360, "8h": 480, "12h": 720, "1d": 1440}

    @staticmethod
    def _klines_weight(params: dict[str, str]) -> int:
        try:
            limit = int(params.get("limit") or 500)
        except ValueError:
            return 1
        return 1 if limit < 100 else 2 if limit < 500 else 5 if limit <= 1000 else 10

    def _klines(self, account: Any, params: dict[str, str], now: int) -> Any:
        b = self.engine.book(params.get("symbol"))
        interval = params.get("interval")
        if not interval:
            raise missing("interval")
        minutes = self._KLINE_MINUTES.get(interval)
        if minutes is None:
            raise SimApiError(-1120, "Invalid interval.")
        limit = self._limit(params, 500, 1500)
        return b.klines(minutes, self._int_param(params, "startTime"), self._int_param(params, "endTime"), limit)

    def _book_ticker(self, account: Any, params: dict[str, str], now: int) -> Any:
        e = self.engine
        if params.get("symbol"):
            return e.book_ticker(e.book(params["symbol"]))
        return [e.book_ticker(b) for b in e.books.values()]

    def _premium_index(self, account: Any, params: dict[str, str], now: int) -> Any:
        e = self.engine
        if params.get("symbol"):
            return e.premium_index(e.book(params["symbol"]))
        return [e.premium_index(b) for b in e.books.values()]

    def _ticker_price(self, account: Any, params: dict[str, str], now: int) -> Any:
        e = self.engine

        def one(b: Any) -> dict[str, Any]:
            return {"symbol": b.symbol, "price": b.price_str(round(b.last_price / b.tick_f)), "time": now}
        if params.get("symbol"):
            return one(e.book(params["symbol"]))
        return [one(b) for b in e.books.values()]

    def _ticker_24h(self, account: Any, params: dict[str, str], now: int) -> Any:
        e = self.engine

        def one(b: Any) -> dict[str, Any]:
            last = b.price_str(round(b.last_price / b.tick_f))
            open_ = f"{b.spec.start_price:.{b.price_places}f}"
            vol = b.qty_str(b.volume_steps)
            return {"symbol": b.symbol, "priceChange": f"{float(last) - float(open_):.{b.price_places}f}",
                    "priceChangePercent": f"{(float(last) / float(open_) - 1) * 100:.3f}",
                    "weightedAvgPrice": last, "lastPrice": last, "lastQty": b.qty_str(1), "openPrice": open_,
                    "highPrice": last, "lowPrice": last, "volume": vol,
                    "quoteVolume": f"{float(vol) * float(last):.2f}", "openTime": now - 86_400_000,
                    "closeTime": now, "firstId": 1, "lastId": b.agg_id, "count": b.agg_id}
        if params.get("symbol"):
            return one(e.book(params["symbol"]))
        return [one(b) for b in e.books.values()]

    def _funding_rate(self, account: Any, params: dict[str, str], now: int) -> Any:
        e = self.engine
        books = [e.book(params["symbol"])] if params.get("symbol") else list(e.books.values())
        rows = [r for b in books for r in b.funding_history]
        try:
            if params.get("startTime"):
                rows = [r for r in rows if r["fundingTime"] >= int(params["startTime"])]
            if params.get("endTime"):
                rows = [r for r in rows if r["fundingTime"] <= int(params["endTime"])]
            limit = int(params.get("limit") or 100)
        except ValueError:
            raise SimApiError(-1130, "Data sent for parameter 'startTime/endTime/limit' is not valid.") from None
        rows.sort(key=lambda r: r["fundingTime"])
        return rows[:limit] if params.get("startTime") else rows[-limit:]

    def _batch_new(self, account: str, params: dict[str, str], now: int) -> list[Any]:
        items = _batch_list(params, "batchOrders", 5)
        out: list[Any] = []
        for item in items:
            try:
                out.append(self.engine.new_order(account, _stringify(item), now))
            except SimApiError as exc:
                out.append(exc.body())
        return out

    def _batch_modify(self, account: str, params: dict[str, str], now: int) -> list[Any]:
        items = _batch_list(params, "batchOrders", 5)
        out: list[Any] = []
        for item in items:
            try:
                out.append(self.engine.modify_order(account, _stringify(item), now))
            except SimApiError as exc:
                out.append(exc.body())
        return out

    def _batch_cancel(self, account: str, params: dict[str, str], now: int) -> list[Any]:
        symbol = params.get("symbol")
        self.engine.book(symbol)
        if params.get("orderIdList"):
            ids = _batch_list(params, "orderIdList", 10)
            reqs = [{"symbol": symbol, "orderId": str(i)} for i in ids]
        elif params.get("origClientOrderIdList"):
            cids = _batch_list(params, "origClientOrderIdList", 10)
            reqs = [{"symbol": symbol, "origClientOrderId": str(c)} for c in cids]
        else:
            raise SimApiError(-1102, "Param 'orderIdList' or 'origClientOrderIdList' must be sent, but both "
                                     "were empty/null!")
        out: list[Any] = []
        for req in reqs:
            try:
                out.append(self.engine.cancel_order(account, req, now))  # type: ignore[arg-type]
            except SimApiError as exc:
                out.append(exc.body())
        return out

    def _margin_type(self, account: str, params: dict[str, str], now: int) -> Any:
        self.engine.book(params.get("symbol"))
        mt = params.get("marginType")
        if not mt:
            raise missing("marginType")
        if mt.upper() == "CROSSED":
            raise SimApiError(-4046, "No need to change margin type.")
        if mt.upper() == "ISOLATED":
            raise SimApiError(-4048, "Margin type cannot be changed: the simulator supports cross margin only.")
        raise SimApiError(-1130, "Data sent for parameter 'marginType' is not valid.")

    def _position_side(self, account: str, params: dict[str, str], now: int) -> Any:
        raw = (params.get("dualSidePosition") or "").lower()
        if raw == "false":
            raise SimApiError(-4059, "No need to change position side.")
        if raw == "true":
            raise SimApiError(-4068, "Position side cannot be changed: the simulator runs one-way mode only.")
        raise missing("dualSidePosition")

    def _commission_rate(self, account: str, params: dict[str, str], now: int) -> Any:
        b = self.engine.book(params.get("symbol"))
        return {"symbol": b.symbol, "makerCommissionRate": self.config.maker_commission,
                "takerCommissionRate": self.config.taker_commission}

    def _order_limits(self, account: str, params: dict[str, str], now: int) -> Any:
        lim = self.config.rate_limits
        return [{"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": lim.orders_per_10s},
                {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": lim.orders_per_minute}]

    def _leverage_bracket(self, account: str, params: dict[str, str], now: int) -> Any:
        e = self.engine
        books = [e.book(params["symbol"])] if params.get("symbol") else list(e.books.values())
        return [{"symbol": b.symbol, "brackets": [
            {"bracket": 1, "initialLeverage": 125, "notionalCap": 1_000_000_000, "notionalFloor": 0,
             "maintMarginRatio": 0.004, "cum": 0.0}]} for b in books]

    def _listen_key_close(self, account: str, params: dict[str, str], now: int) -> Any:
        acct = self.engine.accounts[account]
        key = acct.listen_key
        self.engine.listen_key_close(account)
        for c in list(self.user_conns.get(account, ())):
            if key in c.listen_keys:
                asyncio.ensure_future(self._close_conn(c))
        return {}

    # -- WebSocket -----------------------------------------------------------------------------------

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        parts = [p for p in path.split("/") if p]
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
            names = ["/".join(parts[1:])]
        if request.query.get("streams"):
            names = [n for n in request.query["streams"].split("/") if n]
        events: set[str] | None = None
        if path_kind == "private":
            key = request.query.get("listenKey")
            if key:
                names.append(key)
            if request.query.get("events"):
                events = {e for e in request.query["events"].split("/") if e}
        if len(names) > self.config.ws_max_streams:
            return self._json(400, {"code": -1130, "msg": f"At most {self.config.ws_max_streams} streams "
                                                          "per connection."})
        market: list[tuple[str, str]] = []
        users: list[tuple[str, str]] = []
        for n in names:
            err = self._classify(n, path_kind, market, users)
            if err:
                return self._json(400, {"code": -1121 if "stream" in err else -1125, "msg": err})
        ws = web.WebSocketResponse(autoping=False, max_msg_size=1 << 16)
        await ws.prepare(request)
        now = time.monotonic()
        c = Conn(ws=ws, transport=request.transport, path_kind=path_kind, combined=combined, opened=now,
                 events=events, last_pong=now, next_ping=now + self.config.ws_ping_interval_s)
        self.conns.add(c)
        for canon, name in market:
            self._subscribe_market(c, canon, name)
        for key, acct in users:
            self._subscribe_user(c, key, acct)
        writer = asyncio.create_task(self._writer(c))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    await self._on_message(c, msg.data)
                elif msg.type == WSMsgType.PING:
                    await ws.pong(msg.data)
                elif msg.type == WSMsgType.PONG:
                    c.last_pong = time.monotonic()
                elif msg.type == WSMsgType.BINARY:
                    self._reply(c, {"error": {"code": 3, "msg": "Invalid JSON: binary frames are not accepted"},
                                    "id": None})
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
        return ws

    def _classify(self, name: str, path_kind: str, market: list[tuple[str, str]],
                  users: list[tuple[str, str]]) -> str | None:
        acct = self.engine.account_of_listen_key(name)
        if acct is not None:
            if path_kind in (PUBLIC, MARKET):
                return f"user data stream is served on /private, not /{path_kind}"
            users.append((name, acct.name))
            return None
        canon = canonical_stream(name, self.symbols_lower)
        if canon is None:
            if "@" in name or name.startswith("!"):
                return f"Invalid stream name: {name}"
            return "This listenKey does not exist."
        if path_kind == "private" or not path_allows(path_kind, canon[1]):
            return f"stream {name} is not served on /{path_kind}"
        market.append((canon[0], name))
        return None

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
        second = int(time.monotonic())
        if second != c.msg_window:
            c.msg_window, c.msg_count = second, 0
        c.msg_count += 1
        if c.msg_count > self.config.ws_max_incoming_per_s:
            log.info("closing a connection that sent more than %d messages in a second",
                     self.config.ws_max_incoming_per_s)
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
        rid = req.get("id")
        if rid is not None and (not isinstance(rid, int) or isinstance(rid, bool) or rid < 0):
            self.stats["ws_bad_messages"] += 1
            self._reply(c, {"error": {"code": 2, "msg": "Invalid request: request ID must be an unsigned "
                                                        "integer"}, "id": None})
            return
        method = req.get("method")
        params = req.get("params", [])
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
                self._reply(c, {"error": {"code": 2, "msg": "Invalid request: params must be a list of "
                                                            "stream names"}, "id": rid})
                return
            if method == "SUBSCRIBE":
                market: list[tuple[str, str]] = []
                users: list[tuple[str, str]] = []
                for n in params:
                    err = self._classify(n, c.path_kind, market, users)
                    if err:
                        self._reply(c, {"error": {"code": 2, "msg": f"Invalid request: {err}"}, "id": rid})
                        return
                if len(c.subs) + len(market) > self.config.ws_max_streams:
                    self._reply(c, {"error": {"code": 2, "msg": "Invalid request: too many streams"}, "id": rid})
                    return
                for canon, name in market:
                    self._subscribe_market(c, canon, name)
                for key, acct in users:
                    self._subscribe_user(c, key, acct)
            else:
                for n in params:
                    canon = canonical_stream(n, self.symbols_lower)
                    if canon is not None:
                        self._unsubscribe_market(c, canon[0])
                    elif n in c.listen_keys:
                        c.listen_keys.discard(n)
            self._reply(c, {"result": None, "id": rid})
        elif method == "LIST_SUBSCRIPTIONS":
            self._reply(c, {"result": list(c.subs.values()) + sorted(c.listen_keys), "id": rid})
        elif method == "SET_PROPERTY":
            if not (isinstance(params, list) and len(params) == 2 and params[0] == "combined"):
                self._reply(c, {"error": {"code": 0, "msg": "Unknown property"}, "id": rid})
            elif not isinstance(params[1], bool):
                self._reply(c, {"error": {"code": 1, "msg": "Invalid value type: expected Boolean"}, "id": rid})
            else:
                c.combined = params[1]
                self._reply(c, {"result": None, "id": rid})
        elif method == "GET_PROPERTY":
            if isinstance(params, list) and params == ["combined"]:
                self._reply(c, {"result": c.combined, "id": rid})
            else:
                self._reply(c, {"error": {"code": 0, "msg": "Unknown property"}, "id": rid})
        else:
            self.stats["ws_bad_messages"] += 1
            self._reply(c, {"error": {"code": 2, "msg": f"Invalid request: unknown method {method!r}"},
                            "id": rid})

    async def _writer(self, c: Conn) -> None:
        ws = c.ws
        try:
            while True:
                raw = await c.queue.get()
                await ws.send_str(raw.decode())
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
                    try:
                        await c.ws.ping(str(int(time.time() * 1000)).encode())
                    except Exception:  # noqa: BLE001 - broken socket
                        await self._close_conn(c, abort=True)

    # -- admin -----------------------------------------------------------------------------------------

    async def _admin(self, request: web.Request) -> web.Response:
        path = request.path
        body: dict[str, Any] = {}
        if request.method == "POST":
            raw = await request.read()
            if raw:
                try:
                    body = json.loads(raw)
                except ValueError as exc:
                    return self._json(400, {"error": f"body is not JSON: {exc}"})
                if not isinstance(body, dict):
                    return self._json(400, {"error": "body must be a JSON object"})
        try:
            result = await self._admin_route(request.method, path, body, request.query)
        except SimApiError as exc:
            return self._json(400, {"error": exc.msg, "code": exc.code})
        except (KeyError, ValueError, TypeError) as exc:
            return self._json(400, {"error": f"bad admin request: {exc!s}"})
        if result is None:
            return self._json(404, {"error": f"no admin route {request.method} {path}"})
        self._flush()
        return self._json(200, result)

    async def _admin_route(self, method: str, path: str, body: dict[str, Any], query: Any) -> Any:
        e = self.engine
        now = self.clock()
        if method == "GET" and path == "/sim/state":
            st = e.state(query.get("account", "main"), query.get("symbol"))
            st["connections"] = {"market": sum(1 for c in self.conns if c.subs),
                                 "user": sum(1 for c in self.conns if c.listen_keys), "total": len(self.conns)}
            st["faults_pending"] = [vars(f) for f in self.faults]
            return st
        if method == "GET" and path == "/sim/accounts":
            return [{"name": n, "api_key": k, "api_secret": s} for n, k, s in self.accounts]
        if method != "POST":
            return None
        if path == "/sim/fault/rest":
            mode = body.get("mode", "error")
            if mode not in ("error", "unknown", "429"):
                raise ValueError("mode must be error, unknown or 429")
            count = int(body.get("count", 1))
            if count < 1:
                raise ValueError("count must be >= 1")
            self.faults.append(RestFault(mode, count, body.get("path"), body.get("method"),
                                         int(body.get("status", 503))))
            return {"ok": True, "pending": len(self.faults)}
        if path == "/sim/fault/latency":
            ms = int(body.get("ms", 0))
            if ms < 0:
                raise ValueError("ms must be >= 0")
            self.latency = (ms, body.get("path"))
            return {"ok": True}
        if path == "/sim/fault/clear":
            self.faults.clear()
            self.latency = (0, None)
            return {"ok": True}
        if path == "/sim/fault/drop":
            target = body.get("target", "all")
            if target not in ("market", "user", "all"):
                raise ValueError("target must be market, user or all")
            account = body.get("account")
            n = 0
            for c in list(self.conns):
                is_user = bool(c.listen_keys)
                is_market = bool(c.subs) or not is_user
                if target == "user" and not is_user:
                    continue
                if target == "market" and not is_market:
                    continue
                if account and account not in c.accounts:
                    continue
                await self._close_conn(c, abort=True)
                n += 1
            return {"dropped": n}
        if path == "/sim/listenkey/expire":
            return {"listenKey": e.expire_listen_key(body.get("account", "main"), now)}
        if path == "/sim/market/freeze":
            return {"symbols": e.set_frozen(body.get("symbol"), bool(body.get("frozen", True)))}
        if path == "/sim/market/jump":
            return {"mid": e.jump(body["symbol"], float(body["pct"]), now)}
        if path == "/sim/funding/rate":
            e.set_funding_rate(body["symbol"], body.get("rate"))
            return {"ok": True}
        if path == "/sim/funding/settle":
            return {"charged": e.settle_funding(now, body.get("symbol"))}
        if path == "/sim/position":
            e.set_position(body.get("account", "main"), body["symbol"], str(body["amount"]),
                           None if body.get("entry_price") is None else str(body["entry_price"]), now)
            return {"ok": True}
        if path == "/sim/countdown/check":
            e.advance(now)
            return {"ok": True}
        return None


def _strip_signature(raw: str) -> str:
    if "signature=" not in raw:
        return raw
    return "&".join(p for p in raw.split("&") if not p.startswith("signature="))


def _batch_list(params: dict[str, str], name: str, max_items: int) -> list[Any]:
    raw = params.get(name)
    if not raw:
        raise missing(name)
    try:
        items = json.loads(raw)
    except ValueError:
        raise SimApiError(-1130, f"Data sent for parameter '{name}' is not valid.") from None
    if not isinstance(items, list) or not items:
        raise SimApiError(-1130, f"Data sent for parameter '{name}' is not valid.")
    if len(items) > max_items:
        raise SimApiError(-1130, f"Data sent for parameter '{name}' is not valid: at most {max_items} items.")
    return items


def _stringify(item: Any) -> dict[str, str]:
    if not isinstance(item, dict):
        raise SimApiError(-1130, "Data sent for parameter 'batchOrders' is not valid.")
    out = {}
    for k, v in item.items():
        if isinstance(v, bool):
            out[k] = "true" if v else "false"
        else:
            out[k] = str(v)
    return out


class SimThread:
    """The simulator on a background thread, for synchronous code: ``start()`` blocks until ready."""

    def __init__(self, **kwargs: Any) -> None:
        self._kwargs = kwargs
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.server: SimServer | None = None
        self._error: BaseException | None = None

    def start(self, timeout: float = 15.0) -> "SimThread":
        self._thread = threading.Thread(target=self._run, name="fleet-sim", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("simulator thread did not start in time")
        if self._error is not None:
            raise RuntimeError(f"simulator failed to start: {self._error!r}") from self._error
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)

        async def main() -> None:
            self._stop = asyncio.Event()
            try:
                self.server = await SimServer(**self._kwargs).start()
            except BaseException as exc:  # noqa: BLE001 - handed to start()
                self._error = exc
                self._ready.set()
                return
            self._ready.set()
            await self._stop.wait()
            await self.server.stop()

        try:
            loop.run_until_complete(main())
        finally:
            loop.close()

    def call(self, fn: Callable[[], Awaitable[Any]], timeout: float = 10.0) -> Any:
        """Run a coroutine function on the simulator's loop and return its result."""
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(fn(), self._loop).result(timeout)

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)

    def __enter__(self) -> "SimThread":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def rest_url(self) -> str:
        assert self.server is not None
        return self.server.rest_url

    @property
    def ws_url(self) -> str:
        assert self.server is not None
        return self.server.ws_url

    @property
    def accounts(self) -> list[tuple[str, str, str]]:
        assert self.server is not None
        return self.server.accounts

    @property
    def engine(self) -> Engine:
        assert self.server is not None
        return self.server.engine
