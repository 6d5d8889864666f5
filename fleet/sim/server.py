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
                                   "funding_rate", "funding_pinned", "frozen", "price_held", "next_funding_time",
                                   "funding_history"}},
             "connections": {"market", "user", "total"}, "faults_pending": [...],
             "deferred": [{"method", "path", "account", "due_ms", "expires_ms", "newClientOrderId"}],
             "server": {"rest_requests", "ws_frames_sent", "ws_bad_messages", "ws_slow_dropped",
                        "late_executed", "late_expired", "late_rejected"}}
         (symbol optional: all symbols; account default "main"; money fields are decimal strings)
    GET  /sim/accounts                -> [{"name", "api_key", "api_secret"}]
    POST /sim/fault/rest     {"mode": "error"|"unknown"|"429"|"late"|"exec_then_error"|"batch_short"|
                              "batch_malformed"|"batch_nonjson", "count": 1, "path": "/fapi/v1/order",
                              "method": "POST", "status": null, "answer": "503", "delay_ms": 400,
                              "hold_ms": 500, "entries": null, "entry": {}}
         path (prefix) and method are optional filters; each matching request uses up one of `count`;
         faults apply in the order they were posted (the first pending match takes the request).
         error:   fail before executing (nothing reaches the exchange). Without `answer`: HTTP 503
                  {"code": -1001, "msg": "Internal error; unable to process your request. Please try
                  again."} (Binance's resendable failure); with `answer`, that answer instead, so
                  "-1007 and not executed" is {"mode": "error", "answer": "-1007"}.
         unknown: execute, then answer 503 {"code": -1000, "msg": "Unknown error, please check your
                  request or try again later."} (the order really exists)
         429:     answer 429 {"code": -1003} with Retry-After: 1 (no ban)
         The modes below take only writes (POST/PUT/DELETE /fapi/v1/order and /fapi/v1/batchOrders; the
         batch_* ones only /fapi/v1/batchOrders) that passed the gateway (key, signature, timestamp,
         rate limits): a request rejected there is answered as usual and leaves the fault pending.
         late:    answer `answer` at once and execute the request `delay_ms` (default 400) after it
                  arrived, only if that is still within its timestamp + recvWindow (else the matching
                  engine drops it unseen: Binance's -5028 "outside of the ME recvWindow"). Binance: an
                  answer that is not a definite acceptance or rejection "may have executed, possibly
                  after the answer". Pending ones are listed in /sim/state "deferred"; the outcomes
                  count in /sim/state "server" late_executed / late_expired / late_rejected.
         exec_then_error: execute now (frames are pushed), then answer `answer` (also when the engine
                  rejected the request: that answer is lost too).
         answer (error, late, exec_then_error; default "-1001" for error, "503" for the others):
           "503":     HTTP 503 {"code":-1000,"msg":"Unknown error, please check your request or try again
                      later."} (Binance: execution status UNKNOWN)
           "500":     HTTP 500 {"code":-1000,"msg":"An unknown error occurred while processing the request."}
           "502", "504": HTTP 502/504 with a gateway's HTML page (text/html, not JSON, no X-MBX headers)
           "-1006":   HTTP 503 {"code":-1006,"msg":"An unexpected response was received from the message
                      bus. Execution status unknown."} (a 5XX: Binance-side; the reference gives no status)
           "-1007":   HTTP 408 {"code":-1007,"msg":"Timeout waiting for response from backend server. Send
                      status unknown; execution status unknown."} (408 = "timeout waiting for the backend")
           "-1001":   HTTP 503 {"code":-1001,"msg":"Internal error; unable to process your request. Please
                      try again."} (a definite failure; only meaningful with mode error)
           "timeout": no answer: the connection is held `hold_ms` (default 500) and then closed, so the
                      client sees a disconnect (or its own read timeout if that is shorter)
           `status` (optional) overrides the answer's HTTP status.
         batch_short:     the whole batch executes; HTTP 200 with a JSON list missing entries: those at
                          the indices `entries` (negative = from the end; default [-1], the last)
         batch_malformed: the whole batch executes; HTTP 200 with a full-length list whose entries at
                          `entries` (default: all) are replaced by `entry` (any JSON; default {})
         batch_nonjson:   the whole batch executes; HTTP 200 application/json whose body is the real
                          answer cut in half (not parseable)
         -> {"ok": true, "pending": n}
    POST /sim/fault/latency  {"ms": 200, "path": "/fapi/v1/order"}   delay matching REST calls (0 clears)
    POST /sim/fault/drop     {"target": "market"|"user"|"all", "account": "main"}
         abort matching WebSocket connections (TCP reset, no close frame) -> {"dropped": n}
    POST /sim/fault/clear    {}       clear REST faults; latency back to the configured rest_latency_ms
                                      (late writes already accepted still execute: they are in the exchange)
    POST /sim/limits         {"max_modifies_per_order": 3}
         PUT order answers -5026 "Exceed maximum modify order limit." once an order was modified this
         many times (default the config's max_modifies_per_order, 10000: Binance allows fewer than
         10000) -> {"max_modifies_per_order": n}; {} just reads it
    POST /sim/listenkey/expire {"account": "main"}
         expire the account's key now: listenKeyExpired is pushed -> {"listenKey": key or null}
    POST /sim/market/freeze  {"frozen": true, "symbol": "ETHUSDC", "mode": "data"}
         mode "data" (default): stop the symbol's market: no moves, no takers, no market frames (stale
         data, a fault); mode "price": hold the mid still while takers keep trading at the touch and
         bookTicker/depth/markPrice/aggTrade keep flowing (a quiet but live market).
         "frozen": false undoes the given mode; symbol optional = all -> {"symbols": [...]}
    POST /sim/market/jump    {"symbol": "ETHUSDC", "pct": -2.0}
         move the mid at once; resting orders the move crosses fill at their price -> {"mid": new mid}
    POST /sim/funding/rate   {"symbol": "ETHUSDC", "rate": "0.0005"}  pin the rate (null: wander again)
    POST /sim/funding/settle {"symbol": "ETHUSDC"}   settle now (symbol optional: all)
         -> {"charged": [{"account", "symbol", "fee", "mark_price", "rate", "position"}]}
         Each charge pushes the real cross-margin frame (Binance's captured example): no a.S, "P": [],
         B = the margin asset with the signed fee in bc:
         {"e":"ACCOUNT_UPDATE","T":t,"E":t,"a":{"B":[{"a":"USDC","wb":..,"cw":..,"bc":"-0.00085067"}],
          "P":[],"m":"FUNDING_FEE"}}, plus an income record {"symbol","incomeType":"FUNDING_FEE","income",
         "asset","info","time":t,"tranId","tradeId":""} (GET /fapi/v1/income: symbol, incomeType,
         startTime, endTime, limit) by which a client attributes it. Config funding_frame_symbol: true
         (global, or per account) adds the 2026 SDK's a.S. (The simulator is cross-only: marginType
         ISOLATED is refused, so Binance's isolated shape, B plus that position, does not occur.)
    POST /sim/position       {"account": "main", "symbol": "ETHUSDC", "amount": "0.18", "entry_price": "3000"}
         set a position directly (entry optional: the mark); pushes ACCOUNT_UPDATE m=ADJUSTMENT
    POST /sim/countdown/check {}      run due dead-man switches now (the clock also wakes for them)
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import time
from typing import Any, Callable
from urllib.parse import parse_qsl

import orjson
from aiohttp import web

from fleet.sim.admin import AdminRoutes
from fleet.sim.faults import ANSWERS, EXEC_MODES, Deferred, RestFault
from fleet.sim.config import SimConfig, load_sim_config
from fleet.sim.engine import Engine, SimApiError, missing
from fleet.sim.ratelimit import RateLimiter
from fleet.sim.rest import RestHandlers
from fleet.sim.ws import Conn, StreamGateway

__all__ = ["SimServer", "RestFault"]

log = logging.getLogger("fleet.sim")

NONE, SIGNED, KEY = "NONE", "SIGNED", "KEY"


def _now_ms() -> int:
    return int(time.time() * 1000)


class SimServer(RestHandlers, StreamGateway, AdminRoutes):
    """The running simulator. ``async with SimServer(symbols=["ETHUSDC"], seed=7) as sim: ...``

    symbols: names (unknown ones get a generic spec; None = the config's or the three defaults);
    config: a SimConfig, a dict or a YAML path; api_key/api_secret: fix the first account's keys;
    clock: ms since the epoch (default the wall clock; a test may pass its own). After ``start``:
    ``rest_url``, ``ws_url``, ``accounts`` [(name, api_key, api_secret)], ``engine``.
    """

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
        self.deferred: list[Deferred] = []  # late writes waiting for the matching engine
        self.latency: tuple[int, str | None] = (self.config.rest_latency_ms, None)
        self.conns: set[Conn] = set()
        self.market_subs: dict[str, set[Conn]] = {}
        self.user_conns: dict[str, set[Conn]] = {}
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task] = []
        self.rest_url = ""
        self.ws_url = ""
        self.stats = {"rest_requests": 0, "ws_frames_sent": 0, "ws_bad_messages": 0, "ws_slow_dropped": 0,
                      "late_executed": 0, "late_expired": 0, "late_rejected": 0}
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
                now = self.clock()
                self.engine.advance(now)
                self._flush()
                if self.deferred:
                    self._run_deferred(now)
            except Exception:  # noqa: BLE001 - the exchange must keep running; count and log
                log.exception("simulator clock step failed")
            wait = 0.01
            deadline = self.engine.next_countdown_ms()
            if self.deferred:
                due = self.deferred[0].due_ms
                deadline = due if deadline is None else min(deadline, due)
            if deadline is not None:  # wake at a dead-man deadline or a late write, not up to 10 ms after it
                wait = min(wait, max(0.0, (deadline - self.clock()) / 1000.0))
            await asyncio.sleep(wait)

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
        add("GET", v1 + "/symbolConfig", self._symbol_config, SIGNED, 5)
        add("GET", v1 + "/openAlgoOrders", self._open_algo_orders, SIGNED, lambda p: 1 if p.get("symbol") else 40)
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
        fault = self._match_fault(method, path) if self.faults else None
        if fault is not None and fault.mode not in EXEC_MODES:
            self._use_fault(fault)  # error, 429 and unknown take their turn whatever happens next
            if fault.mode == "error":
                return await self._fault_answer(request, fault, {})
            if fault.mode == "429":
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
        exec_fault = None
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
            if fault is not None and fault.mode in EXEC_MODES and fault.count > 0:  # (not used up meanwhile)
                # past the gateway (signed, in time, within limits): the fault takes this request
                exec_fault = fault
                self._use_fault(fault)
                if fault.mode == "late":
                    self._defer(fault, method, path, fn, account, params, now)  # type: ignore[arg-type]
                    return await self._fault_answer(request, fault, headers)
            result = fn(account, params, now)
        except SimApiError as exc:
            if exec_fault is not None and exec_fault.mode == "exec_then_error":
                self._flush()  # the engine answered (a rejection), but the answer is lost on the way back
                return await self._fault_answer(request, exec_fault, headers)
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
        if exec_fault is not None:
            if exec_fault.mode == "exec_then_error":
                return await self._fault_answer(request, exec_fault, headers)
            if exec_fault.mode == "batch_nonjson":  # a truncated body: executed, unreadable
                raw = orjson.dumps(result)
                return web.Response(status=200, body=raw[: max(1, len(raw) // 2)],
                                    content_type="application/json", headers=headers)
            if isinstance(result, list):  # batch_short / batch_malformed
                return self._json(200, exec_fault.reshape_batch(result), headers)
        return self._json(200, result, headers)

    # -- injected faults -----------------------------------------------------------------------------

    def _match_fault(self, method: str, path: str) -> RestFault | None:
        for f in self.faults:
            if f.count > 0 and f.matches(method, path):
                return f
        return None

    def _use_fault(self, f: RestFault) -> None:
        f.count -= 1
        if f.count <= 0 and f in self.faults:
            self.faults.remove(f)

    async def _fault_answer(self, request: web.Request, fault: RestFault,
                            headers: dict[str, str]) -> web.StreamResponse:
        """The fault's ambiguous answer: JSON, a gateway's HTML page, or (timeout) no answer at all."""
        name = fault.answer_name()
        if name == "timeout":
            await asyncio.sleep(fault.hold_ms / 1000.0)
            transport = request.transport
            if transport is not None:
                transport.close()  # the client sees a disconnect (or its own read timeout first)
            return web.Response(status=504)  # never reaches the client
        status, body = ANSWERS[name]
        if fault.status is not None:
            status = fault.status
        if isinstance(body, str):  # from a gateway: no Binance headers, not JSON
            return web.Response(status=status, text=body, content_type="text/html")
        return self._json(status, body, headers)

    def _defer(self, fault: RestFault, method: str, path: str, fn: Callable[..., Any], account: str,
               params: dict[str, str], now: int) -> None:
        """Queue a write for the matching engine ``delay_ms`` from now; it runs only while the request is
        still within its recvWindow (timestamp and recvWindow were checked at the gateway)."""
        expires = int(params["timestamp"]) + int(params.get("recvWindow") or 5000)
        self.deferred.append(Deferred(now + fault.delay_ms, expires, method, path, account, dict(params), fn))
        self.deferred.sort(key=lambda d: d.due_ms)

    def _run_deferred(self, now: int) -> None:
        while self.deferred and self.deferred[0].due_ms <= now:
            d = self.deferred.pop(0)
            if now > d.expires_ms:  # the engine's -5028 "outside of the ME recvWindow": nobody hears it
                self.stats["late_expired"] += 1
                continue
            try:
                d.run(d.account, d.params, now)
                self.stats["late_executed"] += 1
            except SimApiError:
                self.stats["late_rejected"] += 1
            except Exception:  # noqa: BLE001 - the exchange must keep running
                log.exception("deferred %s %s failed", d.method, d.path)
                self.stats["late_rejected"] += 1
        self._flush()

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


def _strip_signature(raw: str) -> str:
    if "signature=" not in raw:
        return raw
    return "&".join(p for p in raw.split("&") if not p.startswith("signature="))
