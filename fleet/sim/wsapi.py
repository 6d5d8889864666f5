"""Binance's WebSocket API (ws-fapi, ``/ws-fapi/v1``), sans I/O: one JSON request in, one reply out.

Each method mirrors a REST route (Binance: "WebSocket API and REST API are functionally equivalent:
they provide the same features, accept the same parameters, return the same status and error
codes") and goes through the same gateway (:meth:`fleet.sim.gateway.ExchangeGateway.answer`): the
same weights and order counts, shared with REST; the same engine; the same injected faults (a fault
posted for ``/fapi/v1/order`` also takes ``order.place``, ``order.modify``, ``order.cancel``). What
differs is the frame and the signature:

- request ``{"id": any, "method": "order.place", "params": {...}}``; reply ``{"id", "status",
  "result" | "error": {"code", "msg"}, "rateLimits": [...]}`` (``status`` the REST answer's HTTP
  status; ``rateLimits`` left out with ``returnRateLimits=false`` on the connection or in params);
- signed methods carry ``apiKey``, ``timestamp`` and ``signature`` in ``params``: hex HMAC-SHA256 of
  every param but ``signature`` (``apiKey`` included), sorted by name, as ``k=v`` joined with ``&``;
  INT params as JSON numbers, DECIMAL ones as JSON strings (both are taken; a JSON ``true`` is signed
  as ``true``);
- an account whose key is Ed25519 (``AccountSpec.key_type``) signs with base64 Ed25519 signatures
  instead, and may ``session.logon`` (signed as any request): the connection's later requests then
  need neither ``apiKey`` nor ``signature`` (a ``timestamp`` still); an HMAC key's logon is refused
  (-4056); ``session.status`` and ``session.logout`` answer the session as it is;
- an answer no WebSocket frame can carry (a gateway's HTML page, faults "502"/"504") becomes status
  503 -1006 "An unexpected response was received from the message bus. Execution status unknown.";
  the fault "timeout" sends nothing and closes the connection after its ``hold_ms``.

Malformed requests (not JSON, too deeply nested, not an object, ``params`` not an object, no
method, an ``id`` no reply can carry back: longer than 256 characters, past 64 bits, not text) get
status 400 -1013 and an unknown method 400 -1020 (the documents state neither; these are the codes'
own meanings), with the request's ``id`` when it could be read. A request the simulator fails on
answers 500 -1000 and the connection stays.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

import orjson

from fleet.sim.engine import SimApiError
from fleet.sim.gateway import Answer, by_session

__all__ = ["METHODS", "HANDSHAKE_WEIGHT", "WsApiGateway", "WsApiReply", "WsSession"]

HANDSHAKE_WEIGHT = 5  # "WebSocket handshake attempt costs 5 weight"

# method -> the REST route it mirrors
METHODS: dict[str, tuple[str, str]] = {
    "order.place": ("POST", "/fapi/v1/order"),
    "order.modify": ("PUT", "/fapi/v1/order"),
    "order.cancel": ("DELETE", "/fapi/v1/order"),
    "order.status": ("GET", "/fapi/v1/order"),
    "algoOrder.place": ("POST", "/fapi/v1/algoOrder"),
    "algoOrder.cancel": ("DELETE", "/fapi/v1/algoOrder"),
    "account.position": ("GET", "/fapi/v2/positionRisk"),
    "v2/account.position": ("GET", "/fapi/v3/positionRisk"),
    "account.balance": ("GET", "/fapi/v2/balance"),
    "v2/account.balance": ("GET", "/fapi/v3/balance"),
    "account.status": ("GET", "/fapi/v2/account"),
    "v2/account.status": ("GET", "/fapi/v3/account"),
    "userDataStream.start": ("POST", "/fapi/v1/listenKey"),
    "userDataStream.ping": ("PUT", "/fapi/v1/listenKey"),
    "userDataStream.stop": ("DELETE", "/fapi/v1/listenKey"),
    "depth": ("GET", "/fapi/v1/depth"),
    "ticker.price": ("GET", "/fapi/v1/ticker/price"),
    "ticker.book": ("GET", "/fapi/v1/ticker/bookTicker"),
}
_ORDER_METHODS = frozenset({"order.place", "order.modify", "algoOrder.place"})
_SESSION_WEIGHT = 2
_UNEXPECTED = {"code": -1006, "msg": "An unexpected response was received from the message bus. "
                                     "Execution status unknown."}


@dataclass
class WsSession:
    """One WebSocket API connection: since when, and the key it logged on with (``session.logon``,
    Ed25519 keys only), whose requests then need neither ``apiKey`` nor ``signature``."""

    connected_ms: int
    api_key: str | None = None
    authorized_since: int | None = None


@dataclass
class WsApiReply:
    """What to do with one request: send ``frame``; or (``hold_ms`` set) send nothing, hold the
    connection that long and close it."""

    frame: bytes | None
    hold_ms: int | None = None


def error_reply(rid: Any, status: int, code: int, msg: str) -> WsApiReply:
    """A request refused: its id, the HTTP-like status and Binance's code and message."""
    msg = msg.encode("utf-8", "backslashreplace").decode("utf-8")  # a client's text, made encodable
    return WsApiReply(orjson.dumps({"id": rid, "status": status, "error": {"code": code, "msg": msg}}))


class WsApiGateway:
    """The WebSocket API's requests; mixed into a gateway (``answer``, ``limiter``, ``config``)."""

    def ws_api_parse(self, raw: str | bytes) -> tuple[Any, str, dict[str, Any]] | WsApiReply:
        """A request frame read: (id, method, params), or the error reply to send instead."""
        try:
            req = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            return self._ws_error(None, 400, -1013, f"Invalid JSON: {str(exc)[:200]}")
        if not isinstance(req, dict):
            return self._ws_error(None, 400, -1013, "Invalid request: a request is a JSON object")
        rid = req.get("id")
        if not echoable_id(rid):
            return self._ws_error(None, 400, -1013, "Invalid request: 'id' must be a string of at most 256 "
                                                    "characters, a 64-bit integer or null")
        method = req.get("method")
        params = req.get("params") or {}
        if not isinstance(method, str) or not method:
            return self._ws_error(rid, 400, -1013, "Invalid request: 'method' must be a non-empty string")
        if not isinstance(params, dict):
            return self._ws_error(rid, 400, -1013, "Invalid request: 'params' must be an object")
        return rid, method, params

    def ws_api_call(self, rid: Any, method: str, params: dict[str, Any], ip: str, now: int, session: WsSession,
                    rate_limits: bool = True) -> WsApiReply:
        """One parsed request at ``now`` (``METHODS[method]``'s injected REST latency already waited). A
        name may carry its version (``v1/order.place``); ``v2/account.*`` are methods of their own."""
        if method not in METHODS and method.startswith("v1/"):
            method = method[3:]
        route = METHODS.get(method)
        if route is None and not method.startswith("session."):
            return self._ws_error(rid, 400, -1020, f"This operation is not supported: unknown method {method[:64]!r}")
        flat: dict[str, str] = {}
        for k, v in params.items():
            if v is None:
                continue
            if not isinstance(v, (bool, int, float, str)):
                return self._ws_error(rid, 400, -1130, f"Data sent for parameter '{str(k)[:64]}' is not valid.")
            flat[k] = _text(v)
        payload = "&".join(f"{k}={v}" for k, v in sorted(flat.items()) if k != "signature")  # all but it
        returns = flat.pop("returnRateLimits", None)
        if returns is not None:
            rate_limits = returns == "true"
        api_key = flat.pop("apiKey", None)
        if route is None:
            return self._ws_session(rid, method, flat, payload, api_key, ip, now, session, rate_limits)
        http_method, path = route
        answer = self.answer(http_method, path, flat, payload, api_key, ip, now,  # type: ignore[attr-defined]
                             session.api_key)
        # the account the request was judged as (the gateway's _authenticate)
        key = session.api_key if by_session(api_key, flat, session.api_key) else api_key
        acct = self.engine.by_key.get(key or "")  # type: ignore[attr-defined]
        limits = self._rate_limits(answer, acct.name if method in _ORDER_METHODS and acct else None, ip,
                                   now) if rate_limits else None
        return self._ws_reply(rid, answer, limits)

    # -- replies ---------------------------------------------------------------------------------

    def _ws_reply(self, rid: Any, answer: Answer, limits: list[dict[str, Any]] | None) -> WsApiReply:
        """The answer as a WebSocket API reply, with the ``rateLimits`` given (None: left out)."""
        if answer.hold_ms is not None:
            return WsApiReply(None, answer.hold_ms)
        try:
            body = orjson.loads(answer.body) if answer.content_type == "application/json" else None
        except orjson.JSONDecodeError:
            body = None  # a cut answer (batch_nonjson): not for these routes, but never a broken frame
        out: dict[str, Any] = {"id": rid}
        if answer.status == 200 and body is not None:
            out["status"] = 200
            out["result"] = body
        elif isinstance(body, dict) and "code" in body:
            out["status"] = answer.status
            out["error"] = {"code": body["code"], "msg": body.get("msg", "")}
        else:
            out["status"] = 503
            out["error"] = dict(_UNEXPECTED)
        if limits is not None:
            out["rateLimits"] = limits
        return WsApiReply(orjson.dumps(out))

    def _rate_limits(self, answer: Answer, orders_of: str | None, ip: str, now: int) -> list[dict[str, Any]]:
        """The limits and the counts after the request: its answer's headers, or the limiter's own when a
        gateway's error page (a 5xx without them) answered a request counted all the same; an order
        method's counts only when it was counted for the account (``orders_of``)."""
        limiter, headers = self.limiter, answer.headers  # type: ignore[attr-defined]
        used = headers.get("X-MBX-USED-WEIGHT-1M")
        out = [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
                "limit": limiter.limits.weight_per_minute,
                "count": int(used) if used is not None else limiter.used_weight(ip, now)}]
        counted = "X-MBX-ORDER-COUNT-10S" in headers
        if orders_of is not None and (counted or answer.status >= 500):
            per_10s, per_minute = limiter.order_limits(orders_of)
            c10, c1m = (int(headers["X-MBX-ORDER-COUNT-10S"]), int(headers["X-MBX-ORDER-COUNT-1M"])) if counted \
                else limiter.order_counts(orders_of, now)
            out.append({"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10,
                        "limit": per_10s, "count": c10})
            out.append({"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1,
                        "limit": per_minute, "count": c1m})
        return out

    def _ws_error(self, rid: Any, status: int, code: int, msg: str) -> WsApiReply:
        self.stats["ws_bad_messages"] += 1  # type: ignore[attr-defined]
        return error_reply(rid, status, code, msg)

    def _ws_session(self, rid: Any, method: str, params: dict[str, str], payload: str, api_key: str | None,
                    ip: str, now: int, session: WsSession, rate_limits: bool) -> WsApiReply:
        """session.logon (an Ed25519 key, signed as any request; an HMAC key is refused with -4056),
        session.status, session.logout; each answers the session as it then is."""
        if method not in ("session.logon", "session.status", "session.logout"):
            return self._ws_error(rid, 400, -1020, f"This operation is not supported: unknown method {method[:64]!r}")
        try:
            used, _ = self.limiter.charge_weight(ip, _SESSION_WEIGHT, now)  # type: ignore[attr-defined]
        except SimApiError as exc:  # 429 / 418
            return WsApiReply(orjson.dumps({"id": rid, "status": exc.http_status, "error": exc.body()}))
        limits = [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
                   "limit": self.limiter.limits.weight_per_minute,  # type: ignore[attr-defined]
                   "count": used}] if rate_limits else None

        def reply(out: dict[str, Any]) -> WsApiReply:   # the weight it cost, refused or not
            return WsApiReply(orjson.dumps(out if limits is None else {**out, "rateLimits": limits}))

        if method == "session.logon":
            acct = self.engine.by_key.get(api_key) if api_key else None  # type: ignore[attr-defined]
            if acct is not None and acct.verify is None:
                return reply({"id": rid, "status": 400, "error": {"code": -4056, "msg": "Invalid api key type."}})
            try:
                self._authenticate(api_key, "SIGNED", params, payload, now)  # type: ignore[attr-defined]
            except SimApiError as exc:
                return reply({"id": rid, "status": exc.http_status, "error": exc.body()})
            session.api_key, session.authorized_since = api_key, now
        elif method == "session.logout":
            session.api_key = session.authorized_since = None
        return reply({"id": rid, "status": 200, "result": {
            "apiKey": session.api_key, "authorizedSince": session.authorized_since,
            "connectedSince": session.connected_ms, "returnRateLimits": rate_limits, "serverTime": now}})


def echoable_id(rid: Any) -> bool:
    """An id the reply can carry back as it came: null, a short string, a 64-bit integer."""
    if rid is None:
        return True
    if isinstance(rid, str):
        return len(rid) <= 256 and rid.encode("utf-8", "surrogatepass").decode("utf-8", "ignore") == rid
    return isinstance(rid, int) and not isinstance(rid, bool) and -(2**63) <= rid < 2**64


def _text(v: bool | int | float | str) -> str:
    """A JSON parameter as the signed text holds it (a JSON ``true`` is ``true``)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def sign(secret: str, params: dict[str, Any]) -> str:
    """The signature a client sends: hex HMAC-SHA256 of the sorted ``k=v`` pairs (tests, examples)."""
    payload = "&".join(f"{k}={_text(v)}" for k, v in sorted(params.items()) if k != "signature")
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()
