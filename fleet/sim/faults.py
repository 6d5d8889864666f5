"""Injected faults: Binance's ambiguous and hostile REST answers (POST /sim/fault/rest) and stream frames
without fields or broken (POST /sim/fault/frame), see :mod:`fleet.sim.server`. Only data and validation
live here; the server applies them."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any
from fleet.sim.admin_input import MAX_TEXT, integer, only, text

ORDER = "/fapi/v1/order"
BATCH = "/fapi/v1/batchOrders"
ALGO = "/fapi/v1/algoOrder"
CANCEL_ALL = "/fapi/v1/allOpenOrders"
COUNTDOWN = "/fapi/v1/countdownCancelAll"
WRITE_ROUTES = frozenset((m, p) for m in ("POST", "PUT", "DELETE") for p in (ORDER, BATCH)) | {
    ("POST", ALGO), ("DELETE", ALGO), ("DELETE", CANCEL_ALL), ("POST", COUNTDOWN)}
BATCH_ROUTES = frozenset((m, BATCH) for m in ("POST", "PUT", "DELETE"))
# Binance's system-level protection (-1008) "applies to POST order, batchOrders and order/test"
THROTTLE_ROUTES = frozenset({("POST", ORDER), ("POST", BATCH), ("POST", ORDER + "/test")})

PRE_MODES = ("error", "429")  # answered before the request reaches the exchange (nothing executes)
EXEC_MODES = ("late", "exec_then_error", "batch_short", "batch_malformed", "batch_nonjson")  # writes only
BATCH_MODES = ("batch_short", "batch_malformed", "batch_nonjson")
MODES = ("error", "unknown", "429", "throttle") + EXEC_MODES
HTTP_METHODS = ("GET", "POST", "PUT", "DELETE")


def _html(status: int, reason: str) -> str:
    return (f"<html>\r\n<head><title>{status} {reason}</title></head>\r\n<body>\r\n<center><h1>{status} {reason}"
            f"</h1></center>\r\n</body>\r\n</html>\r\n")


# answer name -> (HTTP status, JSON body or an HTML page). "timeout" has no answer: hold, then disconnect.
ANSWERS: dict[str, tuple[int, Any]] = {
    # the 503 Binance documents as "execution status UNKNOWN"
    "503": (503, {"code": -1000, "msg": "Unknown error, please check your request or try again later."}),
    "500": (500, {"code": -1000, "msg": "An unknown error occurred while processing the request."}),
    # the same 503, as Binance's front has answered it: the message with no code (a client that reads the
    # code alone sees none; the message says the execution status is unknown)
    "503-nocode": (503, {"msg": "Unknown error, please check your request or try again later."}),
    # the 503 Binance documents as a 100% failure, safe to retry and not counted against the limits; its
    # code is not documented: the message alone. Offered before execution only (mode "error")
    "503-unavailable": (503, {"msg": "Service Unavailable."}),
    # a gateway in front of the API, not the API: an HTML page, not JSON
    "502": (502, _html(502, "Bad Gateway")),
    "504": (504, _html(504, "Gateway Time-out")),
    # a proxy's own 503 page: it names "Service Unavailable" but is not Binance's JSON answer of that
    # name (a definite failure); whether the request ran is unknown
    "503-html": (503, _html(503, "Service Unavailable")),
    # the same as a proxy's bare text: the words of Binance's definite failure, but not its JSON answer
    "503-text": (503, "Service Unavailable"),
    # a Binance-side (5XX) error; the reference gives no status for -1006, 503 is the 5XX Binance uses most
    "-1006": (503, {"code": -1006, "msg": "An unexpected response was received from the message bus. "
                                          "Execution status unknown."}),
    # "408: timeout waiting for the backend" (the reference's HTTP return codes) is what -1007 names
    "-1007": (408, {"code": -1007, "msg": "Timeout waiting for response from backend server. Send status "
                                          "unknown; execution status unknown."}),
    # the definite failure the `error` mode has always answered (resending is safe)
    "-1001": (503, {"code": -1001, "msg": "Internal error; unable to process your request. Please try again."}),
    # system-level protection: a definite failure, not counted against the rate limits
    "-1008": (503, {"code": -1008, "msg": "Request throttled by system-level protection. Reduce-only/close-position "
                                          "orders are exempt. Please try again."}),
    # the matching engine's own recvWindow (order place/amend, single and batch): a definite rejection,
    # nothing executed, safe to resend with a fresh timestamp
    "-5028": (400, {"code": -5028, "msg": "Timestamp for this request is outside of the ME recvWindow."}),
    # the signed timestamp outside the recvWindow (the gateway's own check): refused, nothing executed
    "-1021": (400, {"code": -1021, "msg": "Timestamp for this request is outside of the recvWindow."}),
    # the account's key refused: revoked, the caller's IP not on its list, or no permission for the action
    "-2015": (401, {"code": -2015, "msg": "Invalid API-key, IP, or permissions for action, request ip: 127.0.0.1"}),
    "timeout": (0, None),
}


# the mode 429's answers: the IP's weight (-1003, with Retry-After, as the reference's spot wording has it),
# or the account's orders (-1015) as Binance's derivatives docs describe it: "a 429 error without the
# Retry-After header", nor the order counts (a refused order is not said to carry them)
RATE_ANSWERS = ("-1003", "-1015")

# answers Binance documents as definite failures
NOT_EXECUTED_ANSWERS = ("503-unavailable", "-5028", "-2015", "-1021")


@dataclass
class RestFault:
    """A pending injected REST fault (see POST /sim/fault/rest). Shown as is in /sim/state."""

    mode: str
    count: int
    path: str | None = None
    method: str | None = None
    status: int | None = None  # overrides the answer's HTTP status
    answer: str | None = None  # a key of ANSWERS; None = the mode's default
    delay_ms: int = 400  # late: execution this long after the request arrived
    hold_ms: int = 500  # answer "timeout": how long the connection is held before it is closed
    entries: list[int] | None = None  # batch_short/batch_malformed: which answer entries (None = default)
    entry: Any = field(default_factory=dict)  # batch_malformed: what replaces each chosen entry

    def matches(self, method: str, path: str, params: dict[str, str] | None = None) -> bool:
        if self.path is not None and not path.startswith(self.path):
            return False
        if self.method is not None and self.method.upper() != method:
            return False
        if self.mode == "throttle":
            return (method, path) in THROTTLE_ROUTES and params is not None and not _reduce_only(path, params)
        if self.mode in BATCH_MODES:
            return (method, path) in BATCH_ROUTES
        if self.mode in EXEC_MODES:
            return (method, path) in WRITE_ROUTES
        return True

    def answer_name(self) -> str:
        if self.answer is not None:
            return self.answer
        if self.mode == "throttle":
            return "-1008"
        return "-1001" if self.mode == "error" else "503"

    def reshape_batch(self, result: list[Any]) -> list[Any]:
        """batch_short drops entries (default: the last); batch_malformed replaces them (default: all)."""
        n = len(result)
        if self.mode == "batch_short":
            drop = {i % n for i in self.entries} if self.entries and n else {n - 1}
            return [r for i, r in enumerate(result) if i not in drop]
        chosen = {i % n for i in self.entries} if self.entries and n else set(range(n))
        return [self.entry if i in chosen else r for i, r in enumerate(result)]


def _reduce_only(path: str, params: dict[str, str]) -> bool:
    """Exempt from the throttle: a reduce-only or close-position order, or a batch of only those (a
    batch holding one other order is refused whole)."""
    if path != BATCH:
        return "true" in (params.get("reduceOnly", "").lower(), params.get("closePosition", "").lower())
    try:
        orders = json.loads(params.get("batchOrders", ""))
    except (ValueError, RecursionError):
        return False
    return isinstance(orders, list) and bool(orders) and all(
        isinstance(o, dict) and "true" in (str(o.get("reduceOnly", "")).lower(), str(o.get("closePosition", "")).lower())
        for o in orders)


def parse_fault(body: dict[str, Any]) -> RestFault:
    """A RestFault from an admin body; ValueError names the bad field."""
    only(body, "/sim/fault/rest", "mode", "count", "answer", "status", "delay_ms", "hold_ms", "entries", "entry",
         "path", "method")
    mode = body.get("mode", "error")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}")
    count = integer(body, "count", 1, 1, 1_000_000)
    answer = body.get("answer")
    if answer is not None and mode == "429":
        answer = str(answer)
        if answer not in RATE_ANSWERS:
            raise ValueError(f"answer of the mode 429 must be one of {', '.join(RATE_ANSWERS)}")
    elif answer is not None:
        answer = str(answer)
        if answer not in ANSWERS:
            raise ValueError(f"answer must be one of {', '.join(ANSWERS)}")
        if mode not in ("error", "late", "exec_then_error"):
            raise ValueError("answer applies to the modes error, late and exec_then_error")
        if answer in NOT_EXECUTED_ANSWERS and mode != "error":
            raise ValueError(f"answer {answer} says nothing was executed: it applies to the mode error only")
    status = integer(body, "status", None, 100, 599)
    delay_ms = integer(body, "delay_ms", 400, 0, 600_000)
    hold_ms = integer(body, "hold_ms", 500, 0, 600_000)
    entries = body.get("entries")
    if entries is not None:
        if not isinstance(entries, list) or not all(isinstance(i, int) for i in entries):
            raise ValueError("entries must be a list of entry indices")
    if text(body, "method") is not None and body["method"].upper() not in HTTP_METHODS:
        raise ValueError(f"method must be one of {', '.join(HTTP_METHODS)}")
    return RestFault(mode, count, text(body, "path"), text(body, "method"), status, answer, delay_ms, hold_ms,
                     entries, body.get("entry", {}))


_MODE_ROUTES = {"throttle": ("POST order, batchOrders and order/test", THROTTLE_ROUTES),
                **{m: ("the batch routes", BATCH_ROUTES) for m in BATCH_MODES},
                **{m: ("writes (orders, batches, algo orders, cancel-all, countdown)", WRITE_ROUTES)
                   for m in EXEC_MODES if m not in BATCH_MODES}}


def check_reach(fault: RestFault, routes: Any) -> None:
    """ValueError when ``fault`` can match none of ``routes`` ((method, path) pairs): a misspelt path or
    method, or a mode whose routes the path and method leave out, would wait unseen for good."""
    method = fault.method.upper() if fault.method is not None else None
    reached = {(m, p) for m, p in routes if (fault.path is None or p.startswith(fault.path))
               and (method is None or m == method)}
    if not reached:
        raise ValueError(f"path {str(fault.path)[:60]!r}{' with method ' + method if method else ''} names no "
                         f"route of the simulator (a path or its beginning, e.g. /fapi/v1/order)")
    said, allowed = _MODE_ROUTES.get(fault.mode, ("", None))
    if allowed is not None and not reached & allowed:
        raise ValueError(f"mode {fault.mode} applies to {said} only: the path and method given reach none")


def check_path(path: Any, routes: Any) -> None:
    """ValueError unless ``path`` (a latency fault's) is a route of ``routes`` or its beginning."""
    if path is not None and not any(p.startswith(path) for _, p in routes):
        raise ValueError(f"path {str(path)[:60]!r} names no route of the simulator (a path or its beginning)")


@dataclass
class Deferred:
    """A write accepted by the gateway and executed later by the matching engine (mode `late`)."""

    due_ms: int
    expires_ms: int  # timestamp + recvWindow: past it the engine drops the request (-5028, unseen)
    method: str
    path: str
    account: str
    params: dict[str, str]
    run: Any  # the route handler (account, params, now)

    def view(self) -> dict[str, Any]:
        return {"method": self.method, "path": self.path, "account": self.account, "due_ms": self.due_ms,
                "expires_ms": self.expires_ms,
                "newClientOrderId": self.params.get("newClientOrderId") or self.params.get("clientAlgoId")}


# --- stream frames ------------------------------------------------------------------------------

FRAME_MODES = ("omit", "garbage", "truncate", "drop")
MAX_FIELDS = 50   # field paths one frame fault leaves out


@dataclass
class FrameFault:
    """A pending injected stream-frame fault (see POST /sim/fault/frame). Shown as is in /sim/state.

    ``omit``: the next ``count`` matching frames go out without the fields named in ``fields``
    (dotted paths into the frame, ``o.N``; a list on the way applies to each element, ``a.P.ps``), as
    Binance documents some (``N`` and ``n`` "will not push if no commission") and as any frame may
    come; ``garbage``: the frame is replaced by text that is not JSON; ``truncate``: the frame's JSON
    is cut in half; ``drop``: the frame is not sent, the connection stays (a diff depth event lost: the
    next one's ``pu`` is not the last ``u`` a client saw, the gap Binance tells it to resync on)."""

    stream: str                 # "user" or "market"
    count: int
    mode: str = "omit"
    event: str | None = None    # the frame's "e" (ORDER_TRADE_UPDATE, ACCOUNT_UPDATE, bookTicker ...)
    fields: list[str] = field(default_factory=list)
    account: str | None = None  # user frames: this account's only
    symbol: str | None = None   # this symbol's frames only ("s", or "o.s" of an order update)
    reason: str | None = None   # an ACCOUNT_UPDATE's reason ("a.m": FUNDING_FEE, ORDER ...) only

    def matches(self, stream: str, target: str, payload: Any) -> bool:
        if not isinstance(payload, dict):   # an array stream's frame (!markPrice@arr): no "e" nor "s"
            return self.event is None and self.symbol is None and stream == self.stream
        if stream != self.stream or (self.event is not None and payload.get("e") != self.event):
            return False
        if self.account is not None and stream == "user" and target != self.account:
            return False
        if self.reason is not None:
            inner = payload.get("a")
            if not isinstance(inner, dict) or inner.get("m") != self.reason:
                return False
        if self.symbol is not None:
            inner = payload.get("o")
            sym = payload.get("s") or (inner.get("s") if isinstance(inner, dict) else None)
            return sym == self.symbol
        return True

    def apply(self, payload: dict[str, Any]) -> dict[str, Any] | bytes | None:
        """The frame as it goes out: a copy without the fields, bytes that do not parse, or None (not sent)."""
        if self.mode == "drop":
            return None
        if self.mode == "garbage":
            return b"not json: {\"e\":"
        if self.mode == "truncate":
            raw = json.dumps(payload, separators=(",", ":")).encode()
            return raw[: len(raw) // 2]
        out = copy.deepcopy(payload)
        for path in self.fields:
            _omit(out, path.split("."))
        return out


def _omit(node: Any, keys: list[str]) -> None:
    if isinstance(node, list):
        for item in node:
            _omit(item, keys)
    elif isinstance(node, dict):
        if len(keys) == 1:
            node.pop(keys[0], None)
        elif keys[0] in node:
            _omit(node[keys[0]], keys[1:])


def parse_frame_fault(body: dict[str, Any]) -> FrameFault:
    """A FrameFault from an admin body; ValueError names the bad field."""
    only(body, "/sim/fault/frame", "stream", "mode", "count", "event", "fields", "account", "symbol", "reason")
    stream = body.get("stream")
    if stream not in ("user", "market"):
        raise ValueError("stream must be user or market")
    mode = body.get("mode", "omit")
    if mode not in FRAME_MODES:
        raise ValueError(f"mode must be one of {', '.join(FRAME_MODES)}")
    count = integer(body, "count", 1, 1, 1_000_000)
    fields = body.get("fields", [])
    if not isinstance(fields, list) or len(fields) > MAX_FIELDS or not all(
            isinstance(f, str) and len(f) <= MAX_TEXT and f.isprintable() and "" not in f.split(".") for f in fields):
        raise ValueError(f"fields must be a list of at most {MAX_FIELDS} dotted field paths of at most {MAX_TEXT} "
                         f"printable characters, e.g. [\"o.N\", \"o.n\"]")
    if mode == "omit" and not fields:
        raise ValueError("mode omit needs fields: the paths to leave out, e.g. [\"o.N\", \"o.n\"]")
    return FrameFault(stream, count, mode, text(body, "event"), list(fields), text(body, "account"),
                      text(body, "symbol"), text(body, "reason"))


def check_frame_reach(fault: FrameFault, accounts: Any, symbols: Any) -> FrameFault:
    """``fault``; ValueError when it names an account or a symbol the simulator does not have: it would wait
    unseen for good (as check_reach refuses a REST fault no route can reach)."""
    if fault.account is not None and fault.account not in accounts:
        raise ValueError(f"account {fault.account!r} is not one of the simulator's ({', '.join(accounts)})")
    if fault.symbol is not None and fault.symbol not in symbols:
        raise ValueError(f"symbol {fault.symbol!r} is not one of the simulator's ({', '.join(symbols)})")
    return fault


@dataclass(eq=False)
class Held:
    """A REST request that reached the exchange and is held by the latency fault before it is handled
    (listed in /sim/state "held": a test can act while a given request is on its way)."""

    method: str
    path: str
    arrived_ms: int
    body: bytes
    query: str

    def view(self) -> dict[str, Any]:
        from urllib.parse import parse_qsl

        params = dict(parse_qsl(self.query)) | dict(parse_qsl(self.body.decode("utf-8", "replace")))
        return {"method": self.method, "path": self.path, "arrived_ms": self.arrived_ms,
                "newClientOrderId": params.get("newClientOrderId") or params.get("origClientOrderId")}
