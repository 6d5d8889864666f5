"""The simulator's aiohttp server: Binance USD-M REST + WebSocket on one loopback port, plus /sim admin.

WebSocket: the market and user-data streams (``/ws``, ``/stream``, ``/public``, ``/market``,
``/private``; :mod:`fleet.sim.ws`) and the WebSocket API for orders and account reads
(``/ws-fapi/v1``; :mod:`fleet.sim.wsapi`: its methods, signature and replies). REST faults posted
for a route also take the WebSocket API's method that mirrors it.

The only I/O around :class:`fleet.sim.engine.Engine`: it parses and signs-checks requests, counts
rate limits, injects faults, drives the engine with the wall clock every 10 ms and pushes the
engine's frames to the connected sockets. The market is the engine's regime model, or a recording
replayed (config ``replay``: a recording directory, docs/recording.md; it starts when the server is
constructed).

Admin routes (never under /fapi; JSON body in, JSON out; no API key; HTTP 400 {"error": ...} naming the
field on bad input, checked before anything changes: a field of the wrong JSON type, NaN, Infinity or a
number out of its range, a field the route does not take (fleet/sim/admin_input.py); 404 on an unknown
route; on a loopback address, 400 to a request whose Host is not a loopback name: a DNS-rebinding page
in a browser on the machine reads no key and injects no fault)::

    GET  /sim/state?account=main&symbol=ETHUSDC
         -> {"time", "account", "symbol",
             "open_orders": [{"orderId", "clientOrderId", "symbol", "side", "type", "timeInForce", "price",
                              "origQty", "executedQty", "status", "reduceOnly", "queueAhead", "time", "updateTime"}],
             "open_algo_orders": [conditional orders waiting for their trigger, as GET /fapi/v1/algoOrder shows them],
             "positions": {SYM: {"amount", "entry_price", "unrealized_pnl", "realized_pnl", "funding",
                                 "commission", "clearance_fee", "leverage", "countdown_deadline_ms"}},
             "balances": {ASSET: wallet}, "realized_pnl", "funding_paid", "commission_paid",
             "counters": {"orders_placed", "orders_cancelled", "orders_rejected", "orders_filled",
                          "orders_expired", "orders_amended", "trades", "countdown_fired"},
             "listen_key_active", "markets": {SYM: {"mid", "mark_price", "bid", "ask", "regime",
                                   "funding_rate", "funding_pinned", "frozen", "price_held", "next_funding_time",
                                   "funding_interval_ms", "funding_history"}},
             "replay": null, or for a replayed market {"directory", "symbols", "start_ms", "shift_ms",
                       "position_ms", "lines_applied", "done", "malformed", "out_of_order", "cut_short",
                       "ignored", "duplicates", "gaps", "missing_files", "empty_files"},
             "connections": {"market", "user", "total"}, "faults_pending": [...], "frame_faults_pending": [...],
             "deferred": [{"method", "path", "account", "due_ms", "expires_ms", "newClientOrderId"}],
             "held": [{"method", "path", "arrived_ms", "newClientOrderId"}] (requests the latency fault
                     holds before handling them; one whose client gave up meanwhile is still handled),
             "server": {"rest_requests", "ws_frames_sent", "ws_bad_messages", "ws_slow_dropped",
                        "ws_unlisted_symbol_streams", "ws_legacy_silent_streams",
                        "ws_misrouted_silent_streams", "late_executed", "late_expired", "late_rejected",
                        "throttled", "frames_faulted"},
             "weight_by_route": {"METHOD /path": IP weight charged since the start, every IP together}}
         (symbol optional: all symbols; account default "main"; money fields are decimal strings)
    GET  /sim/accounts                -> [{"name", "api_key", "api_secret"}]
    POST /sim/fault/rest     {"mode": "error"|"unknown"|"429"|"throttle"|"late"|"exec_then_error"|
                              "batch_short"|"batch_malformed"|"batch_nonjson", "count": 1, "path": "/fapi/v1/order",
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
         429:     answer 429 {"code": -1003} with Retry-After: 1 (no ban); with "answer": "-1015", the
                  account's order count's 429 without Retry-After or order counts, as Binance's
                  derivatives docs describe it
         throttle: Binance's system-level protection: a new order (POST /fapi/v1/order, order/test,
                  batchOrders) is refused unexecuted, HTTP 503 {"code": -1008, "msg": "Request throttled
                  by system-level protection. Reduce-only/close-position orders are exempt. Please try
                  again."}, charged no weight nor order count; a reduce-only or close-position order (a
                  batch of only those) passes and leaves the fault pending, as do cancels and amends.
                  Counted in /sim/state "server" throttled.
         The modes below take only writes (POST/PUT/DELETE /fapi/v1/order and /fapi/v1/batchOrders, POST/DELETE
         /fapi/v1/algoOrder, DELETE /fapi/v1/allOpenOrders, POST /fapi/v1/countdownCancelAll; the
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
           "503-html": HTTP 503 with a proxy's HTML page titled "503 Service Unavailable" (not Binance's
                      JSON "Service Unavailable.": the execution status is unknown)
           "503-text": the same as the bare text "Service Unavailable" (text/plain)
           "-1006":   HTTP 503 {"code":-1006,"msg":"An unexpected response was received from the message
                      bus. Execution status unknown."} (a 5XX: Binance-side; the reference gives no status)
           "-1007":   HTTP 408 {"code":-1007,"msg":"Timeout waiting for response from backend server. Send
                      status unknown; execution status unknown."} (408 = "timeout waiting for the backend")
           "-1001":   HTTP 503 {"code":-1001,"msg":"Internal error; unable to process your request. Please
                      try again."} (a definite failure; only meaningful with mode error)
           "-1008":   HTTP 503, the throttle's answer (a definite failure; with mode error it spares no
                      order, reduce-only ones included)
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
    POST /sim/fault/frame    {"stream": "user"|"market", "mode": "omit"|"garbage"|"truncate"|"drop", "count": 1,
                              "event": "ORDER_TRADE_UPDATE", "fields": ["o.N", "o.n"], "account": "main",
                              "symbol": "ETHUSDC", "reason": "FUNDING_FEE"}
         the next `count` stream frames that match (event: the frame's "e"; account: a user frame's;
         symbol: its "s" or "o.s"; reason: an ACCOUNT_UPDATE's "a.m"; each optional) go out broken:
         omit: without the `fields` (dotted paths; a list on the way applies to each element,
         "a.P.pa"), as Binance pushes an order
         update with no "N" and "n" "if no commission" and as any field may be missing; garbage: text
         that is not JSON; truncate: the frame's JSON cut in half; drop: not sent at all, the connection
         kept (a diff depth event lost: the next one's pu says the gap). A frame is broken once for all the
         connections it goes to. Pending ones are listed in /sim/state "frame_faults_pending", those
         used counted in "server" frames_faulted; /sim/fault/clear drops them -> {"ok": true, "pending": n}
    POST /sim/fault/latency  {"ms": 200, "path": "/fapi/v1/order"}   delay matching REST calls (0 clears)
    POST /sim/fault/drop     {"target": "market"|"user"|"api"|"all", "account": "main", "route": null}
         abort matching WebSocket connections (TCP reset, no close frame; "api": the WebSocket API's,
         which match `account` once one of their requests named that account's apiKey); `route`
         ("public", "market" or "legacy") keeps to the connections of that path, e.g. one of an
         agent's two market connections
         -> {"dropped": n}
    POST /sim/fault/clear    {}       clear REST and frame faults; latency back to the configured rest_latency_ms
                                      (late writes already accepted still execute: they are in the exchange)
    POST /sim/limits         {"max_modifies_per_order": 3, "weight_per_minute": 1200, "orders_per_10s": 100,
                              "orders_per_minute": 600, "account": "main", "own": false}   (every field optional)
         PUT order answers -5026 "Exceed maximum modify order limit." once an order was modified this
         many times (default the config's max_modifies_per_order, 9999: Binance allows fewer than
         10000); the IP's weight a minute and the order limits change as Binance may announce (with
         "account": that account's own order limits only, as GET /fapi/v1/rateLimit/order lists them;
         "account" with "own": false and no limit drops them: the exchange's hold it again);
         exchangeInfo's rateLimits and the WebSocket API's list the new ones, the counts so far kept
         -> {"max_modifies_per_order", "weight_per_minute", "orders_per_10s", "orders_per_minute"}
         (the account's, if named); {} just reads them
    POST /sim/listenkey/expire {"account": "main"}
         expire the account's key now: listenKeyExpired is pushed -> {"listenKey": key or null}
    POST /sim/market/freeze  {"frozen": true, "symbol": "ETHUSDC", "mode": "data"}
         mode "data" (default): stop the symbol's market: no moves, no takers, no market frames (stale
         data, a fault); mode "price": hold the mid still while takers keep trading at the touch and
         bookTicker/depth/markPrice/aggTrade keep flowing (a quiet but live market).
         "frozen": false undoes the given mode; symbol optional = all -> {"symbols": [...]}
    POST /sim/market/jump    {"symbol": "ETHUSDC", "pct": -2.0}
         move the mid at once; resting orders the move crosses fill at their price -> {"mid": new mid}
         (a replayed market cannot jump: 400)
    POST /sim/filters        {"symbol": "ETHUSDC", "tick_size": "0.05", "min_notional": "20", "min_qty": "0.002",
                              "max_qty": "500", "market_max_qty": "100"}  (any of them, at least one)
         the exchange changes the symbol's filters, as it announces: a coarser tick (a whole multiple of its
         spec's; an order or amend off it is refused -4014; the book and resting orders stay on the finer
         grid), MIN_NOTIONAL (an order below it -4164, an amendment -5029, reduce-only orders exempt),
         LOT_SIZE's minQty and maxQty (whole steps: -4004, -4005), MARKET_LOT_SIZE's maxQty (Binance announces
         new largest MARKET orders; in force no more than LOT_SIZE's: a MARKET order above it -4005);
         exchangeInfo lists them, what rests stays
         -> {"symbol", "tick_size", "min_notional", "min_qty", "max_qty", "market_max_qty"}
    POST /sim/funding/rate   {"symbol": "ETHUSDC", "rate": "0.0005"}  pin the rate, within the symbol's
         cap and floor (null: wander again) -> {"ok", "rate" (as pinned: a rate beyond the cap is the cap),
         "pinned"}
    POST /sim/funding/interval {"symbol": "ETHUSDC", "hours": 4, "next_ms": optional}  the exchange moves the
         symbol to settle every 4 hours: the next settlement is the first whole multiple of the interval
         after now (or next_ms); mark frames' T and premiumIndex follow at once, and GET
         /fapi/v1/fundingInfo lists the symbol -> {"symbol", "fundingIntervalHours", "nextFundingTime"}
         (fleet/sim/funding.py)
    POST /sim/funding/settle {"symbol": "ETHUSDC"}   settle now (symbol optional: all)
         -> {"charged": [{"account", "symbol", "fee", "mark_price", "rate", "position"}]}
         Each charge pushes the real cross-margin frame (Binance's captured example): no a.S, "P": [],
         B = the margin asset with the signed fee in bc:
         {"e":"ACCOUNT_UPDATE","T":t,"E":t,"a":{"B":[{"a":"USDC","wb":..,"cw":..,"bc":"-0.00085067"}],
          "P":[],"m":"FUNDING_FEE"}}, plus an income record {"symbol","incomeType":"FUNDING_FEE","income",
         "asset","info","time":t,"tranId","tradeId":""} (GET /fapi/v1/income: symbol, incomeType,
         startTime, endTime, limit) by which a client attributes it. Config funding_frame_symbol: true
         (global, or per account) adds the 2026 SDK's a.S. A symbol in isolated margin (POST
         /fapi/v1/marginType) gets Binance's isolated shape instead: B plus that position, whose isolated
         wallet paid it (fleet/sim/margin.py).
    POST /sim/position       {"account": "main", "symbol": "ETHUSDC", "amount": "0.18", "entry_price": "3000"}
    POST /sim/adl            {"account": "main", "symbol": "ETHUSDC", "qty": "0.05"} (no qty: all) ADL at the mark
         set a position directly (entry optional: the mark); pushes ACCOUNT_UPDATE m=ADJUSTMENT
    POST /sim/delist         {"symbol": "ETHUSDC", "in_s": 3600} (or "at_ms") announce a delisting; the
         exchange settles the symbol at that time (fleet/sim/delisting.py)
    POST /sim/brackets       {"symbol": "ETHUSDC", "brackets": [{"notional_cap": "5000", "initial_leverage": 50,
         "maint_margin_ratio": "0.01"}, ...]} a new bracket table, pushed on !contractInfo with bks
    POST /sim/countdown/check {}      run due dead-man switches now (the clock also wakes for them)
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any, Callable

import orjson
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from fleet.sim.admin import AdminRoutes
from fleet.sim.config import SimConfig, load_sim_config
from fleet.sim.engine import Engine
from fleet.sim.faults import Held, RestFault
from fleet.sim.gateway import ExchangeGateway
from fleet.sim.keys import ed25519_private_pem
from fleet.sim.ws import Conn, StreamGateway

__all__ = ["SimServer", "RestFault"]

log = logging.getLogger("fleet.sim")

def _now_ms() -> int:
    return int(time.time() * 1000)


class BadRequestLog(logging.LoggerAdapter):
    """aiohttp's server logger, but for a request aiohttp could not read (an HttpProcessingError: a request
    line over 64 kB, a bare CR in it, an escape in a header), which it answers 400: the client's fault, not
    the server's. aiohttp logged each at ERROR with a traceback (any client could flood the log at ERROR);
    here each is counted (``stats["bad_http_requests"]``, /sim/state "server") and said in one WARNING line,
    the client's bytes repr-escaped and cut, at most one a second (the next says how many it left out)."""

    def __init__(self, stats: dict[str, int]) -> None:
        super().__init__(logging.getLogger("aiohttp.server"), {})
        self.stats = stats
        self._said_at = -1.0
        self._unsaid = 0

    def exception(self, msg: object, *args: Any, exc_info: Any = True, **kwargs: Any) -> None:
        if not isinstance(exc_info, HttpProcessingError):   # the server's own fault: as aiohttp says it
            self.logger.exception(msg, *args, exc_info=exc_info, **kwargs)
            return
        self.stats["bad_http_requests"] = self.stats.get("bad_http_requests", 0) + 1
        now = time.monotonic()
        if now - self._said_at < 1.0:
            self._unsaid += 1
            return
        remote = args[0] if args else "?"
        more = f" ({self._unsaid} more since the last said)" if self._unsaid else ""
        self._said_at, self._unsaid = now, 0
        log.warning("a request from %s aiohttp could not read, answered 400: %s %.300r%s", remote,
                    type(exc_info).__name__, str(exc_info.message), more)


class SimServer(ExchangeGateway, StreamGateway, AdminRoutes):
    """The running simulator. ``async with SimServer(symbols=["ETHUSDC"], seed=7) as sim: ...``

    symbols: names (unknown ones get a generic spec; None = the config's or the three defaults);
    config: a SimConfig, a dict or a YAML path (its ``replay``: a recording directory replayed as the
    market, its first line now; symbols None = the recording's); api_key/api_secret: fix the first
    account's keys;
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
            if not s:   # an Ed25519 account's secret is its PEM private key
                s = ed25519_private_pem(secrets.token_bytes(32)) if spec.key_type == "ED25519" else secrets.token_hex(32)
            creds[spec.name] = (k or secrets.token_hex(32), s)
        engine = Engine(self.config, seed=seed, now_ms=self.clock(), symbols=symbols,
                        credentials=creds)  # type: ignore[arg-type]
        self._init_gateway(self.config, engine)
        self.symbols_lower = {b.lower for b in self.engine.books.values()}
        self.conns: set[Conn] = set()
        self.held: list[Held] = []   # requests the latency fault holds before they are handled
        self.api_requests: set[asyncio.Task] = set()   # WebSocket API requests being handled
        self.market_subs: dict[str, set[Conn]] = {}
        self.user_conns: dict[str, set[Conn]] = {}
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task] = []
        self.rest_url = ""
        self.ws_url = ""

    # -- lifecycle ------------------------------------------------------------------------------------

    @property
    def accounts(self) -> list[tuple[str, str, str]]:
        return [(a.name, a.api_key, a.api_secret) for a in self.engine.accounts.values()]

    async def start(self) -> "SimServer":
        app = web.Application(client_max_size=1 << 20)
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        # A combined stream of up to ws_max_streams (1024) names is a ~20 kB request line: aiohttp's
        # 8 kB default refused it as plain text before the simulator's own -1130 check saw it.
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, logger=BadRequestLog(self.stats),
                                     max_line_size=65536, max_field_size=65536,
                                     shutdown_timeout=1.0)   # a stop cuts requests held by latency (60 s by default)
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
        for c in list(self.conns):   # closed first: no WebSocket API request starts after this
            await self._close_conn(c, abort=True)
        for t in list(self.api_requests):
            t.cancel()
        await asyncio.gather(*self.api_requests, return_exceptions=True)
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

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path.startswith("/sim/"):
            return await self._admin(request)
        if path == "/ws-fapi/v1":
            return await self._ws_api(request)
        if path.startswith(("/ws", "/stream", "/public/", "/market/", "/private/")) or path in (
                "/public", "/market", "/private"):
            return await self._websocket(request)
        return await self._rest(request)

    def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
        return web.Response(status=status, body=orjson.dumps(body), content_type="application/json",
                            headers=headers)

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        method, path = request.method, request.path
        # The body first: a request sent is in flight whatever its client does next. One the client gives
        # up on during the latency below (a timeout, a cancelled task: the connection closes) is still
        # executed, as Binance executes a request that reached it; it was dropped here unread.
        raw_body = await request.read() if request.body_exists else b""
        if self.route_known(method, path):
            lat_ms = self.latency_ms(path)
            if lat_ms:
                held = Held(method, path, self.clock(), raw_body, request.rel_url.raw_query_string)
                self.held.append(held)
                try:
                    await asyncio.sleep(lat_ms / 1000.0)
                finally:
                    self.held.remove(held)
        answer = self.handle(method, path, request.rel_url.raw_query_string, raw_body,
                             request.headers.get("X-MBX-APIKEY"), request.remote or "127.0.0.1", self.clock())
        if answer.hold_ms is not None:  # no answer: hold the connection, then close it
            await asyncio.sleep(answer.hold_ms / 1000.0)
            transport = request.transport
            if transport is not None:
                transport.close()  # the client sees a disconnect (or its own read timeout first)
            return web.Response(status=504)  # never reaches the client
        return web.Response(status=answer.status, body=answer.body, content_type=answer.content_type,
                            headers=answer.headers or None)

