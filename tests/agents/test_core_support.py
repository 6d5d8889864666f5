"""Shared builders for the trading-core tests: ETHUSDC filters, the seed's params, typed events.

No tests here; the events are the same frozen dataclasses the client parses off the wire.
"""

from __future__ import annotations

from decimal import Decimal as D

from fleet.binance.events import (
    AccountUpdate,
    BalanceUpdate,
    BookTicker,
    FundingFee,
    MarkPrice,
    OrderUpdate,
    PositionUpdate,
)
from fleet.binance.filters import SymbolFilters
from fleet.binance.models import OrderInfo, PositionInfo
from fleet.config import SymbolParams

SYMBOL = "ETHUSDC"


def eth_filters(min_notional: str = "5") -> SymbolFilters:
    return SymbolFilters(
        symbol=SYMBOL,
        tick_size=D("0.01"),
        min_price=D("0.01"),
        max_price=D("1000000"),
        step_size=D("0.001"),
        min_qty=D("0.001"),
        max_qty=D("10000"),
        market_step_size=D("0.001"),
        market_min_qty=D("0.001"),
        market_max_qty=D("10000"),
        min_notional=D(min_notional),
        max_num_orders=200,
        multiplier_up=D("1.05"),
        multiplier_down=D("0.95"),
        base_asset="ETH",
        quote_asset="USDC",
        margin_asset="USDC",
    )


def seed_params(**groups) -> SymbolParams:
    """The seed's parameters, with some groups overridden, e.g. ``grid={"max_layers": 30}``."""
    return SymbolParams.model_validate(groups)


def book(mid: float, t: int, update_id: int | None = None, half_spread: float = 0.05) -> BookTicker:
    return BookTicker(SYMBOL, update_id if update_id is not None else t, mid - half_spread, 1.0, mid + half_spread, 1.0, t, t)


def mark(price: float, t: int, rate: float = 0.0) -> MarkPrice:
    return MarkPrice(SYMBOL, t, price, price, price, rate, t + 3_600_000)


def qty(steps: int, step: D = D("0.001")) -> D:
    return D(steps) * step


def price(ticks: int) -> D:
    return D(ticks) * D("0.01")


def order_update(
    cid: str,
    oid: int,
    side: str,
    price_ticks: int,
    orig_steps: int,
    *,
    status: str = "NEW",
    exec_type: str | None = None,
    cum_steps: int = 0,
    last_steps: int = 0,
    fill_ticks: int | None = None,
    avg_ticks: int | None = None,
    t: int = 1,
    trade_id: int = 0,
    order_type: str = "LIMIT",
    reduce_only: bool = False,
    commission: str = "0",
    realized: str = "0",
    step: D = D("0.001"),
) -> OrderUpdate:
    if exec_type is None:
        exec_type = "TRADE" if last_steps else ("CANCELED" if status == "CANCELED" else "NEW")
    fp = fill_ticks if fill_ticks is not None else price_ticks
    ap = avg_ticks if avg_ticks is not None else (fp if cum_steps else 0)
    return OrderUpdate(
        event_time=t,
        transaction_time=t,
        symbol=SYMBOL,
        client_order_id=cid,
        side=side,
        order_type=order_type,
        time_in_force="GTX" if order_type == "LIMIT" else "GTC",
        orig_qty=qty(orig_steps, step),
        price=price(price_ticks),
        avg_price=price(ap),
        exec_type=exec_type,
        status=status,
        order_id=oid,
        last_filled_qty=qty(last_steps, step),
        cum_filled_qty=qty(cum_steps, step),
        last_filled_price=price(fp) if last_steps else D(0),
        commission_asset="USDC",
        commission=D(commission),
        update_time=t,
        trade_id=trade_id,
        is_maker=True,
        reduce_only=reduce_only,
        realized_pnl=D(realized),
    )


def order_info(
    cid: str,
    oid: int,
    side: str,
    price_ticks: int,
    orig_steps: int,
    *,
    status: str = "NEW",
    executed_steps: int = 0,
    avg_ticks: int = 0,
    t: int = 1,
    order_type: str = "LIMIT",
) -> OrderInfo:
    return OrderInfo(
        symbol=SYMBOL,
        order_id=oid,
        client_order_id=cid,
        side=side,
        type=order_type,
        time_in_force="GTX",
        price=price(price_ticks),
        orig_qty=qty(orig_steps),
        executed_qty=qty(executed_steps),
        avg_price=price(avg_ticks),
        status=status,
        reduce_only=False,
        update_time=t,
    )


def position_info(steps: int, entry: float, t: int) -> PositionInfo:
    return PositionInfo(SYMBOL, qty(steps), D(str(entry)), D(0), D(str(entry)), t)


def account_update(
    position_steps: int, entry: float, t: int, wallet: str | None = None, step: D = D("0.001")
) -> AccountUpdate:
    balances = (BalanceUpdate("USDC", D(wallet), D(wallet), D(0)),) if wallet is not None else ()
    return AccountUpdate(
        t,
        t,
        "ORDER",
        balances,
        (PositionUpdate(SYMBOL, qty(position_steps, step), D(str(entry)), D(str(entry)), D(0), D(0), "cross"),),
    )


def funding_fee(amount: str, t: int, wallet: str = "1000", symbol: str | None = SYMBOL) -> FundingFee:
    return FundingFee(t, t, symbol, "USDC", D(amount), D(wallet))
