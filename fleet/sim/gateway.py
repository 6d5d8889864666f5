"""Binance's REST gateway, sans I/O: route, weigh, authenticate, inject faults, call the engine.

:class:`ExchangeGateway` turns one request (method, path, raw query and body, API key, caller's IP)
into an :class:`Answer` at an injected ``now``. The aiohttp server (:mod:`fleet.sim.server`) feeds it
requests from sockets; the in-process exchange (:mod:`fleet.sim.local`) feeds it requests from a
client on a simulated clock. Both get the same routes, weights, rate limits, signature checks and
injected faults (documented in :mod:`fleet.sim.server`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import parse_qsl

import orjson

from fleet.sim.config import SimConfig
from fleet.sim.engine import Engine, SimApiError, missing
from fleet.sim.errors import parse_long
from fleet.sim.faults import ANSWERS, EXEC_MODES, Deferred, FrameFault, RestFault
from fleet.sim.ratelimit import RateLimiter, too_many_requests
from fleet.sim.rest import RestHandlers
from fleet.sim.stats import Statistics

__all__ = ["Answer", "ExchangeGateway"]

log = logging.getLogger("fleet.sim")

NONE, SIGNED, KEY = "NONE", "SIGNED", "KEY"
# the routes of a limit of their own, 500 requests per 5 minutes per IP (no weight)
FUNDING_LIMITED = frozenset({"GET /fapi/v1/fundingRate", "GET /fapi/v1/fundingInfo"})
STATS_PREFIX = "/futures/data/"   # the trading statistics: 1,000 requests per 5 minutes per IP (no weight)


@dataclass
class Answer:
    """One REST answer. ``hold_ms`` set: no answer at all, the connection is held that long, then closed."""

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    hold_ms: int | None = None


def by_session(api_key: str | None, params: dict[str, str], session_key: str | None) -> bool:
    """Whether a request is judged as a logged-on WebSocket API session's account: it names no key and
    sends no signature."""
    return session_key is not None and api_key is None and "signature" not in params


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Answer:
    return Answer(status, orjson.dumps(body), "application/json", headers or {})


class ExchangeGateway(RestHandlers):
    """The REST side of the exchange. Subclasses provide ``_flush`` (push the engine's frames)."""

    def _init_gateway(self, config: SimConfig, engine: Engine) -> None:
        self.config = config
        self.engine = engine
        self.limiter = RateLimiter(config.rate_limits, {a.name: (a.orders_per_10s, a.orders_per_minute)
                                                        for a in config.accounts})
        self.faults: list[RestFault] = []
        self.frame_faults: list[FrameFault] = []   # stream frames sent without fields, or broken
        self.deferred: list[Deferred] = []  # late writes waiting for the matching engine
        self.latency: tuple[int, str | None] = (config.rest_latency_ms, None)
        self.stats = {"rest_requests": 0, "ws_frames_sent": 0, "ws_bad_messages": 0, "ws_slow_dropped": 0,
                      "ws_unlisted_symbol_streams": 0, "ws_legacy_silent_streams": 0,
                      "ws_misrouted_silent_streams": 0, "late_executed": 0, "late_expired": 0,
                      "late_rejected": 0, "throttled": 0, "frames_faulted": 0, "bad_http_requests": 0}
        self.weight_by_route: dict[str, int] = {}  # IP weight charged since start, per "METHOD path"
        self._routes = self._route_table()

    _flush: Callable[[], None]  # push the engine's frames: the server's sockets, or the in-process streams

    def latency_ms(self, path: str) -> int:
        """The injected REST latency for ``path`` (POST /sim/fault/latency, or the configured one)."""
        ms, only = self.latency
        return ms if ms and (only is None or path.startswith(only)) else 0

    def route_known(self, method: str, path: str) -> bool:
        return (method, path) in self._routes

    @property
    def routes(self) -> frozenset[tuple[str, str]]:
        """Every (method, path) the REST side answers."""
        return frozenset(self._routes)

    def _route_table(self) -> dict[tuple[str, str], tuple[Callable[..., Any], str, Any]]:
        e = self.engine
        r: dict[tuple[str, str], tuple[Callable[..., Any], str, Any]] = {}

        def add(method: str, path: str, fn: Callable[..., Any], sec: str, weight: Any = 1) -> None:
            r[(method, path)] = (fn, sec, weight)

        v1 = "/fapi/v1"
        add("GET", v1 + "/ping", lambda a, p, n: {}, NONE)
        add("GET", v1 + "/time", lambda a, p, n: {"serverTime": n}, NONE)
        # the spot host's ping and clock, which python-binance's AsyncClient.create() reads first even
        # for futures: a client pointed at the simulator for both hosts starts
        add("GET", "/api/v3/ping", lambda a, p, n: {}, NONE)
        add("GET", "/api/v3/time", lambda a, p, n: {"serverTime": n}, NONE)
        add("GET", v1 + "/exchangeInfo", lambda a, p, n: self._exchange_info(n), NONE)
        add("GET", v1 + "/depth", self._depth, NONE, self._depth_weight)
        add("GET", v1 + "/rpiDepth", self._rpi_depth, NONE, 20)
        add("GET", v1 + "/ticker/bookTicker", self._book_ticker, NONE, lambda p: 2 if p.get("symbol") else 5)
        add("GET", v1 + "/premiumIndex", self._premium_index, NONE, lambda p: 1 if p.get("symbol") else 10)
        add("GET", v1 + "/fundingRate", self._funding_rate, NONE, 0)   # no weight: the limit below
        add("GET", v1 + "/fundingInfo", lambda a, p, n: e.funding_info(), NONE, 0)
        add("GET", v1 + "/ticker/price", self._ticker_price, NONE, lambda p: 1 if p.get("symbol") else 2)
        add("GET", "/fapi/v2/ticker/price", self._ticker_price, NONE, lambda p: 1 if p.get("symbol") else 2)
        add("GET", v1 + "/ticker/24hr", self._ticker_24h, NONE, lambda p: 1 if p.get("symbol") else 40)
        add("GET", v1 + "/openInterest", lambda a, p, n: {"openInterest": "10000.000",
                                                         "symbol": e.book(p.get("symbol")).symbol, "time": n},
            NONE)
        add("GET", v1 + "/trades", self._trades, NONE, 5)
        add("GET", v1 + "/historicalTrades", self._historical_trades, KEY, 20)
        add("GET", v1 + "/aggTrades", self._agg_trades, NONE, 20)
        add("GET", v1 + "/klines", self._klines, NONE, self._klines_weight)
        add("GET", v1 + "/continuousKlines", self._continuous_klines, NONE, self._klines_weight)
        add("GET", v1 + "/markPriceKlines", self._price_klines("mark", "symbol"), NONE, self._klines_weight)
        add("GET", v1 + "/indexPriceKlines", self._price_klines("index", "pair"), NONE, self._klines_weight)
        add("GET", v1 + "/premiumIndexKlines", self._price_klines("premium", "symbol"), NONE, self._klines_weight)
        for path, handler in Statistics(e.book, e.seed).routes().items():   # the trading statistics
            add("GET", path, handler, NONE, 0)   # no weight: a limit of their own (below)
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
        add("POST", v1 + "/marginType", lambda a, p, n: e.set_margin_type(a, p, n), SIGNED)
        add("POST", v1 + "/positionMargin", lambda a, p, n: e.modify_position_margin(a, p, n), SIGNED)
        add("GET", v1 + "/positionMargin/history", lambda a, p, n: e.margin_history(a, p), SIGNED)
        add("GET", v1 + "/forceOrders", lambda a, p, n: e.force_orders(a, p, n), SIGNED,
            lambda p: 20 if p.get("symbol") else 50)
        add("GET", v1 + "/adlQuantile", lambda a, p, n: e.adl_quantiles(a, p), SIGNED, 5)
        add("GET", v1 + "/symbolAdlRisk", lambda a, p, n: e.symbol_adl_risk(p, n), NONE)
        add("GET", v1 + "/positionSide/dual", lambda a, p, n: {"dualSidePosition": e.account(a).dual_side}, SIGNED,
            30)
        add("POST", v1 + "/positionSide/dual", self._position_side, SIGNED)
        add("GET", v1 + "/multiAssetsMargin", lambda a, p, n: {"multiAssetsMargin": False}, SIGNED, 30)
        add("POST", v1 + "/multiAssetsMargin", self._multi_assets, SIGNED)
        add("GET", v1 + "/commissionRate", self._commission_rate, SIGNED, 20)
        add("GET", v1 + "/feeBurn", lambda a, p, n: {"feeBurn": e.account(a).fee_burn}, SIGNED, 30)
        add("POST", v1 + "/feeBurn", self._fee_burn, SIGNED)
        add("GET", v1 + "/income", lambda a, p, n: e.income(a, p), SIGNED, 30)
        add("GET", v1 + "/rateLimit/order", self._order_limits, SIGNED)
        add("GET", v1 + "/leverageBracket", self._leverage_bracket, SIGNED)
        add("GET", v1 + "/symbolConfig", self._symbol_config, SIGNED, 5)
        add("GET", v1 + "/accountConfig", lambda a, p, n: e.account_config(a, n), SIGNED, 5)
        add("GET", v1 + "/orderAmendment", lambda a, p, n: e.order_amendments(a, p), SIGNED)
        add("POST", v1 + "/algoOrder", lambda a, p, n: e.algo.place(a, p, n), SIGNED, (0, 1, 1))
        add("DELETE", v1 + "/algoOrder", lambda a, p, n: e.algo.cancel(a, p, n), SIGNED)
        add("GET", v1 + "/algoOrder", lambda a, p, n: e.algo.query(a, p), SIGNED)
        add("GET", v1 + "/openAlgoOrders", lambda a, p, n: e.algo.open_orders(a, p), SIGNED,
            lambda p: 1 if p.get("symbol") else 40)
        add("GET", v1 + "/allAlgoOrders", lambda a, p, n: e.algo.all_orders(a, p, n), SIGNED, 5)
        add("DELETE", v1 + "/algoOpenOrders", lambda a, p, n: e.algo.cancel_all(a, p, n), SIGNED)
        add("GET", v1 + "/apiTradingStatus", lambda a, p, n: {"indicators": {}, "updateTime": n}, SIGNED,
            lambda p: 1 if p.get("symbol") else 10)
        # user stream
        add("POST", v1 + "/listenKey", lambda a, p, n: {"listenKey": e.listen_key_start(a, n)}, KEY)
        add("PUT", v1 + "/listenKey", lambda a, p, n: {"listenKey": e.listen_key_keepalive(a, n)}, KEY)
        add("DELETE", v1 + "/listenKey", self._listen_key_close, KEY)
        return r

    def handle(self, method: str, path: str, raw_query: str, raw_body: bytes, api_key: str | None, ip: str,
               now: int) -> Answer:
        """Answer one REST request arriving at ``now`` (any injected latency already waited). A GET's
        parameters are its query string's only: a body sent with it is not read (Binance: "for GET
        endpoints, parameters must be sent as a query string")."""
        self.stats["rest_requests"] += 1
        if method == "GET":
            raw_body = b""
        try:
            body_text = raw_body.decode("utf-8")
            body_pairs = parse_qsl(body_text, keep_blank_values=True)
            query_pairs = parse_qsl(raw_query, keep_blank_values=True)
        except (UnicodeDecodeError, ValueError):
            body_pairs, query_pairs, body_text = None, None, ""
        if body_pairs is None or query_pairs is None:
            params = None
        else:
            # a name twice in the query, or twice in the body, is refused; in both, the query's wins
            twice = _twice(query_pairs) or _twice(body_pairs)
            if twice is not None and any(p == path for (_, p) in self._routes):
                return _json(400, {"code": -1101, "msg": "Duplicate values for a parameter detected."},
                             self._used(ip, now))
            params = dict(body_pairs)
            params.update(query_pairs)
        # signed: the query string followed by the body, as received, without the signature (the last
        # parameter of either)
        payload = _strip_signature(raw_query) + _strip_signature(body_text)
        return self.answer(method, path, params, payload, api_key, ip, now)

    def answer(self, method: str, path: str, params: dict[str, str] | None, payload: str, api_key: str | None,
               ip: str, now: int, session_key: str | None = None) -> Answer:
        """One request at ``now``: ``params`` read from it (None: unreadable), ``payload`` the text its
        signature signs, ``session_key`` the key a WebSocket API session logged on with. REST and the
        WebSocket API (``fleet.sim.wsapi``) both come through here."""
        route = self._routes.get((method, path))
        if route is None:
            if any(p == path for (_, p) in self._routes):
                return _json(405, {"code": -1000, "msg": f"Method {method} is not allowed for {path}."},
                             self._used(ip, now))
            return _json(404, {"code": -5000, "msg": f"Path {path}, Method {method} is invalid"}, self._used(ip, now))
        fn, sec, weight_spec = route
        headers: dict[str, str] = {}
        fault = self._match_fault(method, path, params) if self.faults else None
        if fault is not None and fault.mode not in EXEC_MODES:
            self._use_fault(fault)  # error, 429, throttle and unknown take their turn whatever happens next
            # refused before the gateway: nothing charged, but the weight header is on every answer
            used = self._used(ip, now)
            if fault.mode == "throttle":
                self.stats["throttled"] += 1
                return self._fault_answer(fault, used)
            if fault.mode == "error":
                return self._fault_answer(fault, used)
            if fault.mode == "429" and fault.answer == "-1015":   # the key's account's limit (its own, if any)
                acct = self.engine.by_key.get(
                    (session_key if by_session(api_key, params or {}, session_key) else api_key) or "")
                per_minute = self.limiter.order_limits(acct.name if acct else None)[1]
                return _json(429, {"code": -1015, "msg": f"Too many new orders; current limit is {per_minute} orders "
                                                         "per MINUTE."}, used)
            if fault.mode == "429":
                return _json(429, {"code": -1003, "msg": too_many_requests(ip, self.limiter.limits.weight_per_minute)},
                             {"Retry-After": "1", **used})
        if params is None:
            return _json(400, {"code": -1100, "msg": "Illegal characters found in a parameter."}, self._used(ip, now))
        exec_fault: RestFault | None = None
        try:
            # The matching engine is sequential: the market moves up to ``now`` before the request
            # runs, so nothing it does later (a fill from the next step, a replayed trade) carries an
            # earlier time than the request's own answer.
            self.engine.advance(now)
            account = self._gateway_checks(f"{method} {path}", sec, weight_spec, params, payload, api_key, ip,
                                           now, headers, session_key)
            if fault is not None and fault.mode in EXEC_MODES and fault.count > 0:  # (not used up meanwhile)
                # past the gateway (signed, in time, within limits): the fault takes this request
                exec_fault = fault
                self._use_fault(fault)
                if fault.mode == "late":
                    self._defer(fault, method, path, fn, account, params, now)  # type: ignore[arg-type]
                    return self._fault_answer(fault, headers)
            result = fn(account, params, now)
        except SimApiError as exc:
            return self._refused(exc, exec_fault, headers)
        except Exception:  # noqa: BLE001 - a bug must answer 500 and keep the exchange up
            log.exception("simulator handler failed: %s %s", method, path)
            return _json(500, {"code": -1000, "msg": "An unknown error occurred while processing the request."},
                         {**self._used(ip, now), **headers})
        self._flush()
        if fault is not None and fault.mode == "unknown":
            return _json(503, {"code": -1000, "msg": "Unknown error, please check your request or try again "
                                                     "later."}, headers)
        if exec_fault is not None:
            return self._reshaped(exec_fault, result, headers)
        return _json(200, result, headers)

    def _used(self, ip: str, now: int) -> dict[str, str]:
        """The weight header of an answer refused before the gateway charges anything: the weight the IP
        has used this minute."""
        return {"X-MBX-USED-WEIGHT-1M": str(self.limiter.used_weight(ip, now))}

    def _gateway_checks(self, route: str, sec: str, weight_spec: Any, params: dict[str, str], payload: str,
                        api_key: str | None, ip: str, now: int, headers: dict[str, str],
                        session_key: str | None = None) -> str | None:
        """Charge the IP's weight, authenticate, charge the account's order counts; the account name."""
        if isinstance(weight_spec, tuple):
            ip_weight, o10, o1m = weight_spec
        else:
            ip_weight = weight_spec(params) if callable(weight_spec) else weight_spec
            o10 = o1m = 0
        by_route = self.weight_by_route
        by_route[route] = by_route.get(route, 0) + ip_weight
        used, _ = self.limiter.charge_weight(ip, ip_weight, now)
        headers["X-MBX-USED-WEIGHT-1M"] = str(used)
        if route in FUNDING_LIMITED:
            self.limiter.charge_funding_read(ip, now)
        elif route.startswith("GET " + STATS_PREFIX):
            self.limiter.charge_stats_read(ip, now)
        account = None
        if sec != NONE:
            account = self._authenticate(api_key, sec, params, payload, now, session_key)
        if o10 and account is not None:
            try:
                c10, c1m = self.limiter.charge_orders(account, o10, o1m, now)
            except SimApiError as exc:   # -1015: the answer still says the counts
                c10, c1m = getattr(exc, "order_counts", (0, 0))
                headers["X-MBX-ORDER-COUNT-10S"], headers["X-MBX-ORDER-COUNT-1M"] = str(c10), str(c1m)
                raise
            headers["X-MBX-ORDER-COUNT-10S"] = str(c10)
            headers["X-MBX-ORDER-COUNT-1M"] = str(c1m)
        return account

    def _refused(self, exc: SimApiError, exec_fault: RestFault | None, headers: dict[str, str]) -> Answer:
        if exec_fault is not None and exec_fault.mode == "exec_then_error":
            self._flush()  # the engine answered (a rejection), but the answer is lost on the way back
            return self._fault_answer(exec_fault, headers)
        if exc.http_status in (429, 418):
            headers["Retry-After"] = str(getattr(exc, "retry_after", 60))
            if hasattr(exc, "used_weight"):
                headers["X-MBX-USED-WEIGHT-1M"] = str(exc.used_weight)  # type: ignore[attr-defined]
        self._flush()
        return _json(exc.http_status, exc.body(), headers)

    def _reshaped(self, exec_fault: RestFault, result: Any, headers: dict[str, str]) -> Answer:
        """An executed write whose answer the fault spoils."""
        if exec_fault.mode == "exec_then_error":
            return self._fault_answer(exec_fault, headers)
        if exec_fault.mode == "batch_nonjson":  # a truncated body: executed, unreadable
            raw = orjson.dumps(result)
            return Answer(200, raw[: max(1, len(raw) // 2)], "application/json", headers)
        if isinstance(result, list):  # batch_short / batch_malformed
            return _json(200, exec_fault.reshape_batch(result), headers)
        return _json(200, result, headers)

    # -- injected faults -----------------------------------------------------------------------------

    def _match_fault(self, method: str, path: str, params: dict[str, str] | None) -> RestFault | None:
        for f in self.faults:
            if f.count > 0 and f.matches(method, path, params):
                return f
        return None

    def _use_fault(self, f: RestFault) -> None:
        f.count -= 1
        if f.count <= 0 and f in self.faults:
            self.faults.remove(f)

    def _fault_answer(self, fault: RestFault, headers: dict[str, str]) -> Answer:
        """The fault's ambiguous answer: JSON, a gateway's HTML page, or (timeout) no answer at all."""
        name = fault.answer_name()
        if name == "timeout":
            return Answer(504, b"", "text/plain", {}, hold_ms=fault.hold_ms)  # never reaches the client
        status, body = ANSWERS[name]
        if fault.status is not None:
            status = fault.status
        if isinstance(body, str):  # from a gateway: no Binance headers, not JSON
            return Answer(status, body.encode(), "text/html" if body.startswith("<") else "text/plain", {})
        return _json(status, body, headers)

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

    @staticmethod
    def _check_signature(acct: Any, sig: str | None, payload: str) -> None:
        """HMAC: hex of HMAC-SHA256 over the payload; Ed25519: base64 of its Ed25519 signature."""
        if not sig:
            raise missing("signature")
        try:
            signed = payload.encode()
        except UnicodeEncodeError:  # a lone surrogate (the WebSocket API's JSON can carry one)
            raise SimApiError(-1100, "Illegal characters found in a parameter.") from None
        if acct.verify is not None:
            ok = sig.isascii() and acct.verify(signed, sig)
        else:
            expected = hmac.new(acct.api_secret.encode(), signed, hashlib.sha256).hexdigest()
            ok = sig.isascii() and hmac.compare_digest(expected, sig.lower())
        if not ok:
            raise SimApiError(-1022, "Signature for this request is not valid.")

    def _authenticate(self, api_key: str | None, sec: str, params: dict[str, str], payload: str, now: int,
                      session_key: str | None = None) -> str:
        session_judged = by_session(api_key, params, session_key)
        key = session_key if session_judged else api_key
        if not key:
            raise SimApiError(-2014, "API-key format invalid.", 401)
        acct = self.engine.by_key.get(key)
        if acct is None:
            raise SimApiError(-2015, "Invalid API-key, IP, or permissions for action.", 401)
        if sec == KEY:
            return acct.name
        if not session_judged:
            self._check_signature(acct, params.get("signature"), payload)
        ts_raw = params.get("timestamp")
        if not ts_raw:
            raise missing("timestamp")
        try:
            ts = parse_long(ts_raw)
        except ValueError as exc:
            raise missing("timestamp") from exc
        try:
            recv = parse_long(params.get("recvWindow") or "5000")
        except ValueError:
            raise SimApiError(-1130, "Data sent for parameter 'recvWindow' is not valid.") from None
        most = self.config.recv_window_max_ms
        if recv <= 0 or (most is not None and recv > most):
            raise SimApiError(-1130, "Data sent for parameter 'recvWindow' is not valid.")
        if ts >= now + 1000:
            raise SimApiError(-1021, "Timestamp for this request was 1000ms ahead of the server's time.")
        if now - ts > recv:
            raise SimApiError(-1021, "Timestamp for this request is outside of the recvWindow.")
        return acct.name



def _twice(pairs: list[tuple[str, str]]) -> str | None:
    """A parameter name given more than once, if any."""
    seen: set[str] = set()
    for name, _ in pairs:
        if name in seen:
            return name
        seen.add(name)
    return None


def _strip_signature(raw: str) -> str:
    """``raw`` without its last parameter if that is the signature. A signature anywhere else stays in
    the text it must sign, so it cannot match (-1022): Binance takes it only as the last parameter of
    the query string or of the body."""
    head, _, last = raw.rpartition("&")
    return head if last.startswith("signature=") else raw
