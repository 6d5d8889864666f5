"""The REST endpoints the client calls: method, path, documented cost, and how each is authorised.

One row per endpoint, so the weights the rate budget charges are read in one table (Binance's own
figures: IP ``REQUEST_WEIGHT`` and the account's order counts on the 10-second and 1-minute
windows) and no path is spelled anywhere else in the client.

``signed``: HMAC-signed with ``timestamp`` and ``recvWindow`` (TRADE / USER_DATA); ``keyed``: the API
key header only (USER_STREAM). ``risk``: the request only ever takes risk off (a cancel, a look-up,
the dead-man switch), so it may use the rate budget's reserve; an order write decides per call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .ratelimit import Cost

# Costs, as documented.
W1 = Cost(weight=1)
ORDER = Cost(weight=0, orders_10s=1, orders_1m=1)  # POST / PUT order: no IP weight
BATCH_ORDERS = Cost(weight=5, orders_10s=5, orders_1m=1)  # POST / PUT batchOrders, whatever the size
ACCOUNT = Cost(weight=5)  # positionRisk, account, balance (v2 and v3)


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    path: str
    cost: Cost = W1
    signed: bool = False
    keyed: bool = False
    risk: bool = False

    @property
    def mutating(self) -> bool:
        """A write: an answer lost after sending leaves its outcome unknown."""
        return self.method != "GET"

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def _get(path: str, cost: Cost = W1, **kw: bool) -> Endpoint:
    return Endpoint("GET", path, cost, **kw)


# -- market data (public) -------------------------------------------------------------------------
PING = _get("/fapi/v1/ping")
TIME = _get("/fapi/v1/time")
EXCHANGE_INFO = _get("/fapi/v1/exchangeInfo")
DEPTH = _get("/fapi/v1/depth", Cost(weight=5))  # weight by limit: see depth_cost
BOOK_TICKER = _get("/fapi/v1/ticker/bookTicker", Cost(weight=2))  # one symbol
PREMIUM_INDEX = _get("/fapi/v1/premiumIndex")
# no weight: a limit of their own, 500 a 5 minutes per IP, fundingInfo and fundingRate together (an agent
# reads fundingInfo at the start, every hour, and at most once a minute after its funding schedule moved;
# fundingRate once at a start with a funding read on record)
FUNDING_READ = Cost(weight=0, funding_reads=1)
FUNDING_INFO = _get("/fapi/v1/fundingInfo", FUNDING_READ)
FUNDING_RATE = _get("/fapi/v1/fundingRate", FUNDING_READ)   # the settlements' history

# -- trading (signed) -----------------------------------------------------------------------------
NEW_ORDER = Endpoint("POST", "/fapi/v1/order", ORDER, signed=True)
MODIFY_ORDER = Endpoint("PUT", "/fapi/v1/order", ORDER, signed=True)
CANCEL_ORDER = Endpoint("DELETE", "/fapi/v1/order", W1, signed=True, risk=True)
QUERY_ORDER = _get("/fapi/v1/order", W1, signed=True, risk=True)
OPEN_ORDERS = _get("/fapi/v1/openOrders", W1, signed=True, risk=True)  # one symbol (40 without)
# conditional orders (the Algo Service): one symbol (40 without)
OPEN_ALGO_ORDERS = _get("/fapi/v1/openAlgoOrders", W1, signed=True, risk=True)
BATCH_PLACE = Endpoint("POST", "/fapi/v1/batchOrders", BATCH_ORDERS, signed=True)
BATCH_MODIFY = Endpoint("PUT", "/fapi/v1/batchOrders", BATCH_ORDERS, signed=True)
BATCH_CANCEL = Endpoint("DELETE", "/fapi/v1/batchOrders", W1, signed=True, risk=True)
CANCEL_ALL = Endpoint("DELETE", "/fapi/v1/allOpenOrders", W1, signed=True, risk=True)
COUNTDOWN_CANCEL_ALL = Endpoint("POST", "/fapi/v1/countdownCancelAll", Cost(weight=10), signed=True, risk=True)
# the writes that can open an order or move one: what a client's order gate holds back
ORDER_OPENERS = frozenset({NEW_ORDER, MODIFY_ORDER, BATCH_PLACE, BATCH_MODIFY})
BATCH_OPENERS = frozenset({BATCH_PLACE, BATCH_MODIFY})   # answered 200 whatever their entries' fate


def places_reduce_only(endpoint: Endpoint, params: Mapping[str, Any]) -> bool:
    """Whether a request of :data:`ORDER_OPENERS` places reduce-only orders and nothing else: a new
    order, or every order of a batch, with ``reduceOnly=true`` (an amend never counts)."""
    if endpoint == NEW_ORDER:
        return _reduce_only(params)
    if endpoint == BATCH_PLACE:
        orders = params.get("batchOrders")
        return isinstance(orders, list) and bool(orders) and all(_reduce_only(o) for o in orders)
    return False


def _orders_of(endpoint: Endpoint, params: Mapping[str, Any], single: Endpoint,
               batch: Endpoint) -> list[Mapping[str, Any]]:
    """The orders a write carries: ``single``'s parameters, or ``batch``'s list; none for another endpoint."""
    orders = [params] if endpoint == single else params.get("batchOrders") if endpoint == batch else None
    return [o for o in orders if isinstance(o, Mapping)] if isinstance(orders, list) else []


def placed_client_ids(endpoint: Endpoint, params: Mapping[str, Any]) -> list[str]:
    """The client order ids a new order or a batch of them places (none for another endpoint)."""
    return [str(o["newClientOrderId"]) for o in _orders_of(endpoint, params, NEW_ORDER, BATCH_PLACE)
            if o.get("newClientOrderId")]


def amended_orders(endpoint: Endpoint, params: Mapping[str, Any]) -> list[tuple[int | None, str | None]]:
    """The orders (order id, client id; either may be None) an amendment or a batch of them changes (none for
    another endpoint)."""
    return [(int(o["orderId"]) if str(o.get("orderId", "")).isdigit() else None,
             str(o["origClientOrderId"]) if o.get("origClientOrderId") else None)
            for o in _orders_of(endpoint, params, MODIFY_ORDER, BATCH_MODIFY)]


def _reduce_only(order: Any) -> bool:
    return isinstance(order, Mapping) and str(order.get("reduceOnly", "")).lower() == "true"


# -- account (signed) -----------------------------------------------------------------------------
POSITION_RISK_V3 = _get("/fapi/v3/positionRisk", ACCOUNT, signed=True)
POSITION_RISK_V2 = _get("/fapi/v2/positionRisk", ACCOUNT, signed=True)
ACCOUNT_V3 = _get("/fapi/v3/account", ACCOUNT, signed=True)
ACCOUNT_V2 = _get("/fapi/v2/account", ACCOUNT, signed=True)
BALANCE_V3 = _get("/fapi/v3/balance", ACCOUNT, signed=True)
BALANCE_V2 = _get("/fapi/v2/balance", ACCOUNT, signed=True)
INCOME = _get("/fapi/v1/income", Cost(weight=30), signed=True)
USER_TRADES = _get("/fapi/v1/userTrades", Cost(weight=5), signed=True)
FORCE_ORDERS = _get("/fapi/v1/forceOrders", Cost(weight=20), signed=True)   # with a symbol (50 without)
ORDER_RATE_LIMIT = _get("/fapi/v1/rateLimit/order", signed=True)   # the account's own order limits
COMMISSION_RATE = _get("/fapi/v1/commissionRate", Cost(weight=20), signed=True)
LEVERAGE = Endpoint("POST", "/fapi/v1/leverage", W1, signed=True)
SYMBOL_CONFIG = _get("/fapi/v1/symbolConfig", Cost(weight=5), signed=True)   # with a symbol

# -- listenKey (API key only) ---------------------------------------------------------------------
LISTEN_KEY_CREATE = Endpoint("POST", "/fapi/v1/listenKey", W1, keyed=True)
LISTEN_KEY_KEEPALIVE = Endpoint("PUT", "/fapi/v1/listenKey", W1, keyed=True)
LISTEN_KEY_CLOSE = Endpoint("DELETE", "/fapi/v1/listenKey", W1, keyed=True)


def depth_cost(limit: int) -> Cost:
    """GET depth's weight by ``limit``: 5-50 -> 2, 100 -> 5, 500 -> 10, 1000 -> 20."""
    if limit <= 50:
        return Cost(weight=2)
    if limit <= 100:
        return Cost(weight=5)
    if limit <= 500:
        return Cost(weight=10)
    return Cost(weight=20)
