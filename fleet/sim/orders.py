"""What the exchange keeps per account: orders, positions, trades, money, stream key and counters."""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable

from fleet.sim.config import AccountSpec
from fleet.sim.keys import ed25519_verifier
from fleet.sim.units import ZERO, q8

# GET /fapi/v1/orderAmendment answers from the latest amendments of an account (Binance keeps three
# months; an agent amends thousands of times an hour, so the simulator keeps a bounded number).
AMENDMENTS_KEPT = 20_000
FORCE_ORDERS_KEPT = 1_000
CLIENT_ID_RE = re.compile(r"^[\.A-Z\:/a-z0-9_-]{1,36}$")
# priceMatch: the order's price is the N-th best level of the other side (OPPONENT_N, a taker's price) or
# of its own side (QUEUE_N), at placement; Binance's "Counterparty N" and "Queue N" (BBO orders)
PRICE_MATCH = {"OPPONENT": (False, 1), "OPPONENT_5": (False, 5), "OPPONENT_10": (False, 10),
               "OPPONENT_20": (False, 20), "QUEUE": (True, 1), "QUEUE_5": (True, 5), "QUEUE_10": (True, 10),
               "QUEUE_20": (True, 20)}
# taken out of placing and amending orders (POST/PUT /fapi/v1/order and batchOrders) by Binance from
# 2025-10-23, "temporarily"; answered as an unknown mode (-5037). A conditional order keeps them.
PRICE_MATCH_WITHDRAWN = frozenset({"OPPONENT_10", "OPPONENT_20"})


@dataclass(frozen=True)
class Trade:
    """One fill of one order, as userTrades reports it."""

    trade_id: int
    order_id: int
    symbol: str
    side: str
    price: str
    qty: str
    quote_qty: str
    commission: str
    commission_asset: str
    realized_pnl: str
    maker: bool
    time: int


# selfTradePreventionMode: the taker's mode decides. EXPIRE_MAKER unless asked: what Binance's own
# frames show for an order placed without one ('V':'EXPIRE_MAKER', binance-usdm.md section 4); its docs
# say NONE (SimConfig.default_stp offers either).
STP_MODES = ("NONE", "EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH")
DEFAULT_STP = "EXPIRE_MAKER"


class Order:
    """A live or closed order of an account. Mutable: the engine owns it."""

    __slots__ = ("order_id", "client_id", "account", "symbol", "side", "sign", "type", "tif", "price",
                 "orig", "filled", "cum_quote", "status", "reduce_only", "time", "update_time",
                 "ahead", "seq", "modifies", "expire_reason", "gtd", "price_match", "stp")

    def __init__(self, order_id: int, client_id: str, account: str, symbol: str, side: str, otype: str,
                 tif: str, price: int, orig: int, reduce_only: bool, now: int, seq: int) -> None:
        self.order_id = order_id
        self.client_id = client_id
        self.account = account
        self.symbol = symbol
        self.side = side
        self.sign = 1 if side == "BUY" else -1
        self.type = otype
        self.tif = tif
        self.price = price
        self.orig = orig
        self.filled = 0
        self.cum_quote = ZERO
        self.status = "NEW"
        self.reduce_only = reduce_only
        self.time = now
        self.update_time = now
        self.ahead = 0
        self.seq = seq
        self.modifies = 0
        self.expire_reason = "0"
        self.gtd = 0   # GTD: when it expires (ms, whole seconds); 0 otherwise
        self.price_match = "NONE"   # the priceMatch mode its price was taken from (OPPONENT, QUEUE_5...)
        self.stp = DEFAULT_STP      # its selfTradePreventionMode: what happens when, as a taker, it meets its own

    @property
    def remaining(self) -> int:
        return self.orig - self.filled

    @property
    def is_open(self) -> bool:
        return self.status == "NEW" or self.status == "PARTIALLY_FILLED"


class Position:
    __slots__ = ("amount", "entry", "realized", "funding", "commission", "clearance", "update_time", "isolated_wallet",
                 "cost")

    def __init__(self) -> None:
        self.amount = 0  # steps, signed
        self.entry = ZERO
        self.realized = ZERO  # accumulated realized P&L (before fees)
        self.funding = ZERO  # accumulated funding (negative = paid)
        self.commission = ZERO  # accumulated commissions paid (positive)
        self.clearance = ZERO  # accumulated liquidation clearance fees paid (positive; income INSURANCE_CLEAR)
        self.update_time = 0
        self.isolated_wallet = ZERO  # the margin held by an isolated position (fleet.sim.margin)
        self.cost = ZERO  # the open position's share of the fees that opened it, and its funding paid (net)

    def break_even(self, step: Decimal) -> Decimal:
        """Binance's breakEvenPrice: the entry moved by what the open position has cost in fees and
        funding, per unit (up for a long, down for a short); the entry while it has cost nothing."""
        if not self.amount or not self.cost:
            return self.entry
        return q8(self.entry + self.cost / (step * self.amount))


class Account:
    """An account's money, positions, open orders, stream key and counters."""

    def __init__(self, spec: AccountSpec, api_key: str, api_secret: str) -> None:
        self.name = spec.name
        self.api_key = api_key
        self.api_secret = api_secret
        # an Ed25519 key: its signature check (None: HMAC)
        self.verify: Callable[[bytes, str], bool] | None = (
            ed25519_verifier(api_secret) if spec.key_type == "ED25519" else None)
        self.wallet: dict[str, Decimal] = {a: Decimal(v) for a, v in spec.balances.items()}
        self.default_leverage = spec.leverage
        self.funding_frame_symbol = spec.funding_frame_symbol  # None = the simulator's global switch
        self.dual_side = spec.position_mode == "hedge"  # Hedge Mode: the simulator refuses its orders (config.py)
        self.fee_burn = False   # POST /fapi/v1/feeBurn's switch (no fee is paid in BNB here)
        self.leverage: dict[str, int] = {}
        self.isolated: set[str] = set()  # the symbols in isolated margin mode (cross otherwise)
        self.margin_history: list[dict[str, Any]] = []  # POST /fapi/v1/positionMargin's transfers
        self.margin_calls: dict[str, int] = {}  # an isolated symbol, or a cross margin asset -> last MARGIN_CALL
        self.force_orders: deque[Order] = deque(maxlen=FORCE_ORDERS_KEPT)  # its liquidation orders (forceOrders)
        self.positions: dict[str, Position] = {}
        self.open: dict[int, Order] = {}
        self.by_cid: dict[str, Order] = {}  # open orders by clientOrderId
        self.open_units: dict[str, list[int]] = {}  # symbol -> [bid, ask] sum of price ticks x steps left
        self.open_count: dict[str, int] = {}
        self.listen_key: str | None = None
        self.listen_key_expiry = 0
        self.countdowns: dict[str, int] = {}
        self.income: list[dict[str, Any]] = []
        self.trades: list[Trade] = []
        # (amendmentId, orderId, time, price before, after, qty before, after, modify count, the caller's
        # modifyId or None), in ticks/steps
        self.amendments: deque[tuple[int, int, int, int, int, int, int, int, int | None]] = deque(
            maxlen=AMENDMENTS_KEPT)
        self.counters = {"orders_placed": 0, "orders_cancelled": 0, "orders_rejected": 0,
                         "orders_filled": 0, "orders_expired": 0, "orders_amended": 0, "trades": 0,
                         "countdown_fired": 0, "liquidations": 0, "deleveraged": 0, "settled": 0}

    def position(self, symbol: str) -> Position:
        pos = self.positions.get(symbol)
        if pos is None:
            pos = self.positions[symbol] = Position()
        return pos
