"""Binance USD-M's wire vocabulary as enums: one definition of each word, translated in one place.

A ``StrEnum`` member *is* its wire string (``Side.BUY == "BUY"``, same hash, ``str()`` and JSON), so
a member goes on the wire unchanged and a plain string from elsewhere (a test, the simulator) still
compares equal. :func:`wire` is the one place a string read off the wire becomes a member: a word
this module does not know (a new time in force, a new status) stays the plain string, so a frame
that carries it is still read, never dropped.

``ErrorCode`` names the Binance codes the project branches on (names from the exchange's own error
table where it has one); :func:`error_code` turns an answer's code into its member, or leaves an
unknown code an ``int``.
"""

from __future__ import annotations

from enum import Enum, IntEnum, StrEnum
from typing import TypeVar


# The client order id of the exchange's auto-deleveraging orders (ADL; its liquidation orders' start
# with "autoclose-"), both filled with execution type CALCULATED.
ADL_CLIENT_ORDER_ID = "adl_autoclose"
# The start of the client order id of the exchange's settlement orders, "for delisting or delivery": they
# close every position of a symbol the exchange settles (its deliveryDate reached).
SETTLEMENT_CLIENT_ORDER_ID = "settlement_autoclose-"
# A perpetual's deliveryDate (exchangeInfo, ``!contractInfo``) while no settlement is planned: 2100-12-25 08:00 UTC.
PERPETUAL_DELIVERY_MS = 4133404800000


class Side(StrEnum):
    BUY = "BUY"
    SELL = "SELL"

    @property
    def opposite(self) -> "Side":
        return Side.SELL if self is Side.BUY else Side.BUY


class OrderType(StrEnum):
    LIMIT = "LIMIT"
    MARKET = "MARKET"
    STOP = "STOP"
    STOP_MARKET = "STOP_MARKET"
    TAKE_PROFIT = "TAKE_PROFIT"
    TAKE_PROFIT_MARKET = "TAKE_PROFIT_MARKET"
    TRAILING_STOP_MARKET = "TRAILING_STOP_MARKET"


class TimeInForce(StrEnum):
    GTC = "GTC"  # good till cancelled
    IOC = "IOC"  # immediate or cancel
    FOK = "FOK"  # fill or kill
    GTX = "GTX"  # post only: refused (-5022) if it would take
    GTD = "GTD"  # good till date


class OrderStatus(StrEnum):
    NEW = "NEW"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    CANCELED = "CANCELED"
    EXPIRED = "EXPIRED"
    EXPIRED_IN_MATCH = "EXPIRED_IN_MATCH"  # expired by self-trade prevention
    REJECTED = "REJECTED"


class ExecType(StrEnum):
    """``ORDER_TRADE_UPDATE``'s ``x``: what happened to the order in this report."""

    NEW = "NEW"
    CANCELED = "CANCELED"
    CALCULATED = "CALCULATED"  # liquidation / ADL
    EXPIRED = "EXPIRED"
    TRADE = "TRADE"
    AMENDMENT = "AMENDMENT"


class PositionSide(StrEnum):
    BOTH = "BOTH"  # one-way mode (the only mode the fleet trades)
    LONG = "LONG"
    SHORT = "SHORT"


class ErrorCode(IntEnum):
    """Binance error codes the project branches on (reference: the exchange's error table)."""

    UNKNOWN = -1000  # execution status unknown
    DISCONNECTED = -1001  # "Internal error; unable to process your request" (a 5xx; documented as not executed)
    UNAUTHORIZED = -1002
    TOO_MANY_REQUESTS = -1003  # 429 / 418 on the IP's weight
    UNEXPECTED_RESP = -1006  # execution status unknown
    TIMEOUT = -1007  # send and execution status unknown
    REQUEST_THROTTLED = -1008  # a definite failure (503): nothing executed
    FILTER_FAILURE = -1013
    TOO_MANY_ORDERS = -1015  # 429 on the account's order count
    INVALID_TIMESTAMP = -1021
    INVALID_SIGNATURE = -1022
    MANDATORY_PARAM_EMPTY_OR_MALFORMED = -1102
    BAD_PRECISION = -1111
    BAD_SYMBOL = -1121
    INVALID_LISTEN_KEY = -1125
    INVALID_PARAMETER = -1130
    CANCEL_REJECTED = -2011  # "Unknown order sent."
    NO_SUCH_ORDER = -2013  # "Order does not exist."
    BAD_API_KEY_FMT = -2014
    REJECTED_MBX_KEY = -2015
    MARGIN_NOT_SUFFICIEN = -2019  # sic: Binance's own spelling
    ORDER_WOULD_IMMEDIATELY_TRIGGER = -2021
    REDUCE_ONLY_REJECT = -2022
    MAX_LEVERAGE_RATIO = -2027  # "Exceeded the maximum allowable position at current leverage."
    SYMBOL_NOT_TRADING = -4108  # "Symbol is on delivering or delivered or settle or closed or pre-trading."
    QTY_LESS_THAN_ZERO = -4003
    QTY_LESS_THAN_MIN_QTY = -4004
    QTY_GREATER_THAN_MAX_QTY = -4005
    PRICE_LESS_THAN_MIN_PRICE = -4013
    PRICE_NOT_INCREASED_BY_TICK_SIZE = -4014
    INVALID_CL_ORD_ID_LEN = -4015
    PRICE_HIGHTER_THAN_MULTIPLIER_UP = -4016
    QTY_NOT_INCREASED_BY_STEP_SIZE = -4023
    PRICE_LOWER_THAN_MULTIPLIER_DOWN = -4024
    POSITION_SIDE_NOT_MATCH = -4061
    DUPLICATED_CLIENT_ORDER_ID = -4116
    MIN_NOTIONAL = -4164
    FOK_ORDER_REJECT = -5021
    GTX_ORDER_REJECT = -5022  # a post-only order would have taken
    EXCEED_MAXIMUM_MODIFY_ORDER_LIMIT = -5026  # the engine will never modify this order again
    AMEND_NOT_TRADING = -5024  # "Symbol is not in trading status. Order amendment is not permitted."
    SAME_ORDER = -5027  # "No need to modify the order."
    MODIFICATION_MIN_NOTIONAL = -5029  # an amendment below MIN_NOTIONAL
    ME_INVALID_TIMESTAMP = -5028  # outside the matching engine's recvWindow


E = TypeVar("E", bound=Enum)

_MAPS: dict[type, dict[str, Enum]] = {}


def _map(enum: type[E]) -> dict[str, E]:
    m = _MAPS.get(enum)
    if m is None:
        m = _MAPS[enum] = {member.value: member for member in enum}  # type: ignore[misc]
    return m  # type: ignore[return-value]


_SIDE = _map(Side)
_ORDER_TYPE = _map(OrderType)
_TIF = _map(TimeInForce)
_STATUS = _map(OrderStatus)
_EXEC = _map(ExecType)
_POSITION_SIDE = _map(PositionSide)


def wire(enum: type[E], value: str) -> E | str:
    """``value`` read off the wire as a member of ``enum``; a word it does not know stays a string."""
    return _map(enum).get(value, value)


def side(value: str) -> Side:
    """A side off the wire; anything but BUY/SELL is a malformed answer (``ValueError``)."""
    try:
        return _SIDE[value]
    except (KeyError, TypeError):
        raise ValueError(f"side must be BUY or SELL, got {value!r}") from None


def order_type(value: str) -> OrderType | str:
    return _ORDER_TYPE.get(value, value)


def time_in_force(value: str) -> TimeInForce | str:
    return _TIF.get(value, value)


def order_status(value: str) -> OrderStatus | str:
    return _STATUS.get(value, value)


def exec_type(value: str) -> ExecType | str:
    return _EXEC.get(value, value)


def position_side(value: str) -> PositionSide | str:
    return _POSITION_SIDE.get(value, value)


_CODES: dict[int, ErrorCode] = {c.value: c for c in ErrorCode}


def error_code(code: int) -> ErrorCode | int:
    """An answer's ``code`` as its :class:`ErrorCode`, or the plain ``int`` of a code not named here."""
    return _CODES.get(code, code)
