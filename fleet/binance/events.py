"""Typed exchange events: what the client parses off Binance's streams and the trading core consumes.

Money that the exchange books (order prices and quantities, positions, balances, fees, P&L) is
``Decimal``, parsed from the wire strings, so that sums stay exact. Market data (book, mark price,
trades, funding estimate) is ``float``: it only feeds arithmetic that is rounded to ticks later.
Times are exchange milliseconds since the epoch (``E`` = push time, ``T`` = engine time).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from .enums import ExecType, OrderStatus, OrderType, PositionSide, Side, TimeInForce

BUY = Side.BUY
SELL = Side.SELL

# Binance order statuses after which an order can no longer fill.
CLOSED_STATUSES = frozenset(
    {OrderStatus.FILLED, OrderStatus.CANCELED, OrderStatus.EXPIRED, OrderStatus.EXPIRED_IN_MATCH, OrderStatus.REJECTED}
)


# --- market streams ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BookTicker:
    """``<symbol>@bookTicker``: best bid and ask."""

    symbol: str
    update_id: int
    bid: float
    bid_qty: float
    ask: float
    ask_qty: float
    event_time: int
    transaction_time: int

    @property
    def mid(self) -> float:
        return (self.bid + self.ask) / 2.0


@dataclass(frozen=True, slots=True)
class DepthUpdate:
    """``<symbol>@depth<N>`` (partial book, top N levels) or the diff stream."""

    symbol: str
    event_time: int
    transaction_time: int
    first_update_id: int
    final_update_id: int
    prev_final_update_id: int
    bids: tuple[tuple[float, float], ...]
    asks: tuple[tuple[float, float], ...]


@dataclass(frozen=True, slots=True)
class MarkPrice:
    """``<symbol>@markPrice@1s``: mark price and the exchange's estimate of the next funding rate."""

    symbol: str
    event_time: int
    mark_price: float
    index_price: float
    estimated_settle_price: float
    funding_rate: float
    next_funding_time: int


@dataclass(frozen=True, slots=True)
class ContractInfo:
    """``!contractInfo``: a symbol's contract changed: its status (listing, delisting), its
    ``deliveryDate`` (a perpetual's settlement announced) or its brackets (``bks``: only said to be
    new here; symbolConfig gives what they allow the account)."""

    symbol: str
    event_time: int
    status: str              # cs: TRADING, SETTLING, CLOSE, PENDING_TRADING, ...
    delivery_ms: int         # dt: 4133404800000 for a perpetual with no settlement planned
    contract_type: str = ""  # ct: PERPETUAL, ...
    brackets_changed: bool = False   # the frame carries bks: a new bracket table


@dataclass(frozen=True, slots=True)
class AggTrade:
    """``<symbol>@aggTrade``: a public trade (aggregated by taker order)."""

    symbol: str
    event_time: int
    trade_time: int
    agg_id: int
    price: float
    qty: float
    buyer_is_maker: bool


# --- user data stream -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OrderUpdate:
    """``ORDER_TRADE_UPDATE``: one execution report for one order."""

    event_time: int
    transaction_time: int
    symbol: str
    client_order_id: str
    side: Side
    order_type: OrderType | str  # a type this client does not name stays its wire string
    time_in_force: TimeInForce | str
    orig_qty: Decimal
    price: Decimal
    avg_price: Decimal
    exec_type: ExecType | str
    status: OrderStatus | str
    order_id: int
    last_filled_qty: Decimal
    cum_filled_qty: Decimal
    last_filled_price: Decimal
    commission_asset: str
    commission: Decimal
    update_time: int  # o.T: the order's own update (trade) time
    trade_id: int
    is_maker: bool
    reduce_only: bool
    realized_pnl: Decimal
    position_side: PositionSide | str = PositionSide.BOTH
    expire_reason: str = "0"
    # of a trade's report, the trade's fields the frame lacked (read as 0): its trade id, price,
    # quantity, realized P&L or fee (Binance leaves the fee out when there is none); the exchange's own
    # trade list has them
    trade_fields_missing: tuple[str, ...] = ()

    @property
    def is_closed(self) -> bool:
        return self.status in CLOSED_STATUSES

    @property
    def remaining_qty(self) -> Decimal:
        return Decimal(0) if self.is_closed else self.orig_qty - self.cum_filled_qty


@dataclass(frozen=True, slots=True)
class BalanceUpdate:
    """One entry of ``ACCOUNT_UPDATE.a.B``."""

    asset: str
    wallet_balance: Decimal
    cross_wallet_balance: Decimal
    balance_change: Decimal  # change except P&L and commission (the fee, for FUNDING_FEE)


@dataclass(frozen=True, slots=True)
class PositionUpdate:
    """One entry of ``ACCOUNT_UPDATE.a.P``: the exchange's truth about one position."""

    symbol: str
    amount: Decimal  # signed: long > 0
    entry_price: Decimal
    breakeven_price: Decimal
    accumulated_realized: Decimal
    unrealized_pnl: Decimal
    margin_type: str
    position_side: PositionSide | str = PositionSide.BOTH
    entry_missing: bool = False   # held (amount not 0) with no entry price: not an entry of 0


@dataclass(frozen=True, slots=True)
class AccountUpdate:
    """``ACCOUNT_UPDATE`` with reason ``m`` (ORDER, DEPOSIT, ...). Funding is :class:`FundingFee`."""

    event_time: int
    transaction_time: int
    reason: str
    balances: tuple[BalanceUpdate, ...]
    positions: tuple[PositionUpdate, ...]


@dataclass(frozen=True, slots=True)
class FundingFee:
    """``ACCOUNT_UPDATE`` with ``m=FUNDING_FEE``: a funding settlement booked on the wallet.

    ``amount`` is the signed balance change as the exchange books it (negative = paid).
    ``symbol`` is ``a.S`` when the exchange names it (the 2026 SDK field; Binance's real cross-margin
    frame, the simulator's default, has none and ``"P": []``): then the fee is attributed through the
    account's income records (``GET /fapi/v1/income``, ``incomeType=FUNDING_FEE``, by ``symbol``).
    """

    event_time: int
    transaction_time: int
    symbol: str | None
    asset: str
    amount: Decimal
    wallet_balance: Decimal
    positions: tuple[PositionUpdate, ...] = ()


@dataclass(frozen=True, slots=True)
class TradeLite:
    """``TRADE_LITE``: a fast, reduced fill report, followed by the full ORDER_TRADE_UPDATE."""

    event_time: int
    transaction_time: int
    symbol: str
    client_order_id: str
    order_id: int
    side: Side
    orig_qty: Decimal
    price: Decimal
    last_filled_price: Decimal
    last_filled_qty: Decimal
    trade_id: int
    is_maker: bool


@dataclass(frozen=True, slots=True)
class ListenKeyExpired:
    """``listenKeyExpired``: no further user events arrive on this key."""

    event_time: int
    listen_key: str


@dataclass(frozen=True, slots=True)
class MarginCall:
    """``MARGIN_CALL``: positions close to liquidation."""

    event_time: int
    cross_wallet_balance: Decimal | None
    positions: tuple[dict[str, Any], ...]


@dataclass(frozen=True, slots=True)
class AlgoUpdate:
    """``ALGO_UPDATE``: a conditional order of the Algo Service changed status (``NEW``, ``CANCELED``,
    ``TRIGGERING``, ``TRIGGERED``, ``FINISHED``, ``REJECTED``, ``EXPIRED``). Once triggered, ``order_id``
    (``ai``) is the id of the order it sent to the book; ``close_position`` orders carry no quantity."""

    event_time: int
    transaction_time: int
    symbol: str
    algo_id: int
    client_algo_id: str
    side: Side
    order_type: str
    quantity: Decimal
    status: str
    reduce_only: bool
    close_position: bool
    order_id: int | None = None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class RawEvent:
    """An event type the client does not know: passed through untouched, and counted."""

    event_type: str
    data: dict[str, Any] = field(hash=False, compare=False)


MarketEvent = BookTicker | DepthUpdate | MarkPrice | AggTrade | ContractInfo | RawEvent
UserEvent = (
    OrderUpdate
    | AccountUpdate
    | FundingFee
    | TradeLite
    | ListenKeyExpired
    | MarginCall
    | AlgoUpdate
    | RawEvent
)
