"""Requests the core builds and REST results it reads, as small frozen dataclasses.

Prices and quantities go out as the decimal strings :class:`~fleet.binance.filters.SymbolFilters`
built (a float is refused here, so it can never reach the wire) and come back as ``Decimal``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Mapping

from . import enums
from .enums import OrderStatus, OrderType, PositionSide, Side, TimeInForce
from .events import CLOSED_STATUSES

# Binance's rule for newClientOrderId.
CLIENT_ORDER_ID_RE = re.compile(r"^[.A-Z:/a-z0-9_-]{1,36}$")
_DECIMAL_RE = re.compile(r"^[0-9]+(\.[0-9]+)?$")
_SIDES = (Side.BUY, Side.SELL)


def _check_decimal_str(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a decimal string built from ticks/steps, got {type(value).__name__} {value!r}")
    if not _DECIMAL_RE.fullmatch(value):
        raise ValueError(f"{name} {value!r} is not a plain positive decimal string")


def exchange_decimal(value: Any, default: str = "0") -> Decimal:
    """A decimal field of an exchange answer (absent or empty: ``default``); one that is not a finite
    decimal ("NaN", "Infinity", "12,5") is a ValueError: a position or price of NaN would pass every
    comparison that guards an order."""
    if value is None or value == "":
        return Decimal(default)
    try:
        d = Decimal(str(value))
    except InvalidOperation as exc:
        raise ValueError(f"not a decimal: {value!r}") from exc
    if not d.is_finite():
        raise ValueError(f"not a finite decimal: {value!r}")
    return d


def _bool(value: Any) -> bool:
    if isinstance(value, str):
        return value.lower() == "true"
    return bool(value)


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderRequest:
    """A new order, as it will be sent: strings on the wire, a client order id chosen by the caller.

    Built by keyword only (``OrderRequest(symbol=..., side=Side.BUY, order_type=OrderType.LIMIT,
    ...)``): nine optional fields in a row are too easy to shift by one.
    """

    symbol: str
    side: Side
    order_type: OrderType
    quantity: str
    price: str | None = None
    time_in_force: TimeInForce | None = None
    reduce_only: bool = False
    client_order_id: str | None = None
    position_side: PositionSide | None = None
    new_order_resp_type: str | None = None
    price_match: str | None = None
    self_trade_prevention: str | None = None
    good_till_date: int | None = None

    def __post_init__(self) -> None:
        if self.side not in _SIDES:
            raise ValueError(f"side must be BUY or SELL, got {self.side!r}")
        _check_decimal_str("quantity", self.quantity)
        if self.price is not None:
            _check_decimal_str("price", self.price)
        if self.order_type == OrderType.LIMIT and (self.price is None and self.price_match is None):
            raise ValueError("a LIMIT order needs a price (or price_match)")
        if self.order_type == OrderType.LIMIT and self.time_in_force is None:
            raise ValueError("a LIMIT order needs time_in_force (GTC, IOC, FOK, GTX, GTD)")
        if self.client_order_id is not None and not CLIENT_ORDER_ID_RE.fullmatch(self.client_order_id):
            raise ValueError(f"client_order_id {self.client_order_id!r} does not match {CLIENT_ORDER_ID_RE.pattern}")

    def to_params(self) -> dict[str, str]:
        """The order's wire parameters, in a stable order (signature covers them as sent)."""
        params: dict[str, str] = {"symbol": self.symbol, "side": self.side, "type": self.order_type}
        if self.position_side:
            params["positionSide"] = self.position_side
        if self.time_in_force:
            params["timeInForce"] = self.time_in_force
        params["quantity"] = self.quantity
        if self.price is not None:
            params["price"] = self.price
        if self.reduce_only:
            params["reduceOnly"] = "true"
        if self.client_order_id:
            params["newClientOrderId"] = self.client_order_id
        if self.new_order_resp_type:
            params["newOrderRespType"] = self.new_order_resp_type
        if self.price_match:
            params["priceMatch"] = self.price_match
        if self.self_trade_prevention:
            params["selfTradePreventionMode"] = self.self_trade_prevention
        if self.good_till_date is not None:
            params["goodTillDate"] = str(int(self.good_till_date))
        return params


@dataclass(frozen=True, slots=True, kw_only=True)
class ModifyRequest:
    """An amendment of a LIMIT order (Binance needs both price and quantity, and the side); by keyword."""

    symbol: str
    side: Side
    quantity: str
    price: str
    order_id: int | None = None
    client_order_id: str | None = None

    def __post_init__(self) -> None:
        if self.side not in _SIDES:
            raise ValueError(f"side must be BUY or SELL, got {self.side!r}")
        _check_decimal_str("quantity", self.quantity)
        _check_decimal_str("price", self.price)
        if self.order_id is None and not self.client_order_id:
            raise ValueError("a modify needs order_id or client_order_id")

    def to_params(self) -> dict[str, str]:
        params: dict[str, str] = {"symbol": self.symbol, "side": self.side}
        if self.order_id is not None:
            params["orderId"] = str(int(self.order_id))
        else:
            params["origClientOrderId"] = str(self.client_order_id)
        params["quantity"] = self.quantity
        params["price"] = self.price
        return params


@dataclass(frozen=True, slots=True)
class OrderInfo:
    """One order as the REST API reports it (place, modify, cancel, query, open orders)."""

    symbol: str
    order_id: int
    client_order_id: str
    side: Side
    type: OrderType | str  # a type this client does not name stays its wire string
    time_in_force: TimeInForce | str
    price: Decimal
    orig_qty: Decimal
    executed_qty: Decimal
    avg_price: Decimal
    status: OrderStatus | str
    reduce_only: bool
    update_time: int
    position_side: PositionSide | str = PositionSide.BOTH

    @property
    def is_closed(self) -> bool:
        return self.status in CLOSED_STATUSES

    @property
    def remaining_qty(self) -> Decimal:
        return Decimal(0) if self.is_closed else self.orig_qty - self.executed_qty

    @classmethod
    def from_api(cls, obj: Mapping[str, Any]) -> "OrderInfo":
        try:
            return cls(
                symbol=str(obj["symbol"]),
                order_id=int(obj["orderId"]),
                client_order_id=str(obj.get("clientOrderId", "")),
                side=enums.side(obj["side"]),
                type=enums.order_type(str(obj.get("type", obj.get("origType", "")))),
                time_in_force=enums.time_in_force(str(obj.get("timeInForce", ""))),
                price=exchange_decimal(obj.get("price")),
                orig_qty=exchange_decimal(obj.get("origQty")),
                executed_qty=exchange_decimal(obj.get("executedQty")),
                avg_price=exchange_decimal(obj.get("avgPrice")),
                status=enums.order_status(str(obj["status"])),
                reduce_only=_bool(obj.get("reduceOnly", False)),
                update_time=int(obj.get("updateTime") or obj.get("time") or 0),
                position_side=enums.position_side(str(obj.get("positionSide", "BOTH"))),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed order object from exchange: {exc!r} in {dict(obj)!r}") from exc


@dataclass(frozen=True, slots=True)
class AlgoOrderInfo:
    """One conditional order as ``GET /fapi/v1/openAlgoOrders`` lists it (the Algo Service's orders
    wait outside the book: ``openOrders`` does not show them). ``quantity`` is 0 for a close-position
    order."""

    symbol: str
    algo_id: int
    client_algo_id: str
    side: Side
    order_type: str
    quantity: Decimal
    status: str
    reduce_only: bool
    close_position: bool
    update_time: int

    @classmethod
    def from_api(cls, obj: Mapping[str, Any]) -> "AlgoOrderInfo":
        try:
            quantity = exchange_decimal(obj.get("quantity"))
            if quantity < 0:
                raise ValueError(f"quantity below 0: {quantity}")
            return cls(
                symbol=str(obj["symbol"]),
                algo_id=int(obj["algoId"]),
                client_algo_id=str(obj.get("clientAlgoId", "")),
                side=enums.side(obj["side"]),
                order_type=str(obj.get("orderType", "")),
                quantity=quantity,
                status=str(obj["algoStatus"]),
                reduce_only=_bool(obj.get("reduceOnly", False)),
                close_position=_bool(obj.get("closePosition", False)),
                update_time=int(obj.get("updateTime") or obj.get("createTime") or 0),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed algo order object from exchange: {exc!r} in {dict(obj)!r}") from exc


@dataclass(frozen=True, slots=True)
class PositionInfo:
    """The exchange's view of one symbol's (one-way mode) position.

    ``update_time`` is the position's own time (its last change; 0 when the exchange gives none, as
    for a flat symbol that v3 positionRisk omits). ``as_of`` is this host's estimate of the exchange
    time the request was sent, ``read_after`` the earliest exchange time the read can have been made
    (``as_of`` less the 1,000 ms by which the estimate may run ahead unnoticed); 0 if unknown.
    """

    symbol: str
    amount: Decimal  # signed: long > 0
    entry_price: Decimal
    unrealized_pnl: Decimal
    mark_price: Decimal
    update_time: int
    break_even_price: Decimal = Decimal(0)
    position_side: PositionSide | str = PositionSide.BOTH
    as_of: int = 0
    read_after: int = 0

    @classmethod
    def flat(cls, symbol: str, as_of: int = 0, read_after: int = 0) -> "PositionInfo":
        return cls(symbol, Decimal(0), Decimal(0), Decimal(0), Decimal(0), 0, as_of=as_of, read_after=read_after)

    @classmethod
    def from_api(cls, obj: Mapping[str, Any]) -> "PositionInfo":
        try:
            return cls(
                symbol=str(obj["symbol"]),
                amount=exchange_decimal(obj.get("positionAmt")),
                entry_price=exchange_decimal(obj.get("entryPrice")),
                unrealized_pnl=exchange_decimal(obj.get("unRealizedProfit", obj.get("unrealizedProfit"))),
                mark_price=exchange_decimal(obj.get("markPrice")),
                update_time=int(obj.get("updateTime") or 0),
                break_even_price=exchange_decimal(obj.get("breakEvenPrice")),
                position_side=enums.position_side(str(obj.get("positionSide", "BOTH"))),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed position object from exchange: {exc!r}") from exc


@dataclass(frozen=True, slots=True)
class CommissionRate:
    symbol: str
    maker: Decimal
    taker: Decimal


@dataclass(frozen=True, slots=True)
class SymbolConfig:
    """GET /fapi/v1/symbolConfig, one symbol: the account's margin type and leverage for it, and the
    notional the leverage's bracket allows a side (``maxNotionalValue``)."""

    symbol: str
    margin_type: str
    leverage: int
    max_notional: Decimal


@dataclass(frozen=True, slots=True)
class FundingTerms:
    """GET /fapi/v1/fundingInfo, one symbol's row: its funding interval and the rate's cap and floor.
    Only symbols with terms of their own are listed; the others settle every 8 hours."""

    symbol: str
    interval_hours: int
    cap: Decimal
    floor: Decimal


@dataclass(frozen=True, slots=True)
class BookTop:
    """REST bookTicker: best bid/ask as strings turned into Decimal."""

    symbol: str
    bid: Decimal
    bid_qty: Decimal
    ask: Decimal
    ask_qty: Decimal
    time: int


@dataclass(frozen=True, slots=True)
class PremiumIndex:
    """REST premiumIndex: mark price and the current funding estimate."""

    symbol: str
    mark_price: Decimal
    index_price: Decimal
    estimated_settle_price: Decimal
    last_funding_rate: Decimal
    interest_rate: Decimal
    next_funding_time: int
    time: int


@dataclass(frozen=True, slots=True)
class DepthSnapshot:
    """REST depth: a snapshot to seed a local book (levels as Decimal pairs)."""

    last_update_id: int
    event_time: int
    transaction_time: int
    bids: tuple[tuple[Decimal, Decimal], ...]
    asks: tuple[tuple[Decimal, Decimal], ...]
