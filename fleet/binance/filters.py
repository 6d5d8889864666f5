"""Symbol filters from exchangeInfo, and exact conversion between integer ticks/steps and wire strings.

The trading core thinks in integer ticks (prices) and steps (quantities); only this module turns
them into the decimal strings Binance reads, so a float never reaches the wire.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any

from .enums import PERPETUAL_DELIVERY_MS

# A float ratio this close to an integer is taken as that integer (absorbs 0.1 + 0.2 style noise).
_SNAP = 1e-9
# ...but never more than this many units, so a huge ratio cannot snap a real fraction of a tick.
_SNAP_MAX = 1e-6


class FilterError(ValueError):
    """A value is not on the symbol's grid (tick or step), or a filter entry is malformed."""


def _places(unit: Decimal) -> int:
    exponent = unit.normalize().as_tuple().exponent
    return max(0, -int(exponent))


def _to_units(value: float | Decimal | str, unit: Decimal, unit_f: float, mode: str) -> int:
    if isinstance(value, float):
        ratio = value / unit_f
        nearest = round(ratio)
        if abs(ratio - nearest) <= min(_SNAP_MAX, _SNAP * max(1.0, abs(ratio))):
            return int(nearest)
        return int(math.floor(ratio) if mode == "floor" else math.ceil(ratio))
    ratio_d = Decimal(value) / unit
    integral = ratio_d.to_integral_value(rounding="ROUND_FLOOR" if mode == "floor" else "ROUND_CEILING")
    return int(integral)


_DECIMALS = ("tick_size", "min_price", "max_price", "step_size", "min_qty", "max_qty", "market_step_size",
             "market_min_qty", "market_max_qty", "min_notional", "multiplier_up", "multiplier_down")


# The filters an agent's grid is built on (its prices and sizes are counted in their units: a change needs a
# new start), and the limits its orders are cut to (LOT_SIZE's and MARKET_LOT_SIZE's largest orders,
# PRICE_FILTER's range: taken as they change, ``AgentCore.take_limits``)
GRID_FIELDS = ("tick_size", "step_size", "min_qty", "min_notional", "market_step_size", "market_min_qty")
LIMIT_FIELDS = ("max_qty", "market_max_qty", "min_price", "max_price")


@dataclass(frozen=True)
class SymbolFilters:
    """The trading rules of one symbol, as exchangeInfo publishes them."""

    symbol: str
    tick_size: Decimal
    min_price: Decimal
    max_price: Decimal
    step_size: Decimal
    min_qty: Decimal
    max_qty: Decimal
    market_step_size: Decimal
    market_min_qty: Decimal
    market_max_qty: Decimal
    min_notional: Decimal
    max_num_orders: int
    multiplier_up: Decimal
    multiplier_down: Decimal
    base_asset: str = ""
    quote_asset: str = ""
    margin_asset: str = ""
    status: str = "TRADING"   # the symbol's status: TRADING, or SETTLING, CLOSE, PENDING_TRADING, ...
    delivery_ms: int = PERPETUAL_DELIVERY_MS   # deliveryDate: a settlement time once a delisting is announced

    # -- construction --------------------------------------------------------------------------

    @classmethod
    def from_exchange_info(cls, entry: dict[str, Any]) -> "SymbolFilters":
        """Build from one element of exchangeInfo ``symbols``."""
        try:
            filters = {f["filterType"]: f for f in entry["filters"]}
            price = filters["PRICE_FILTER"]
            lot = filters["LOT_SIZE"]
            market = filters.get("MARKET_LOT_SIZE", lot)
            notional = filters.get("MIN_NOTIONAL", {"notional": "0"})
            percent = filters.get("PERCENT_PRICE", {"multiplierUp": "0", "multiplierDown": "0"})
            max_orders = filters.get("MAX_NUM_ORDERS", {"limit": 200})
            return cls(
                symbol=entry["symbol"],
                tick_size=Decimal(price["tickSize"]),
                min_price=Decimal(price["minPrice"]),
                max_price=Decimal(price["maxPrice"]),
                step_size=Decimal(lot["stepSize"]),
                min_qty=Decimal(lot["minQty"]),
                max_qty=Decimal(lot["maxQty"]),
                market_step_size=Decimal(market["stepSize"]),
                market_min_qty=Decimal(market["minQty"]),
                market_max_qty=Decimal(market["maxQty"]),
                min_notional=Decimal(notional.get("notional", notional.get("minNotional", "0"))),
                max_num_orders=int(max_orders["limit"]),
                multiplier_up=Decimal(percent["multiplierUp"]),
                multiplier_down=Decimal(percent["multiplierDown"]),
                base_asset=entry.get("baseAsset", ""),
                quote_asset=entry.get("quoteAsset", ""),
                margin_asset=entry.get("marginAsset", entry.get("quoteAsset", "")),
                status=str(entry.get("status", "TRADING")),
                delivery_ms=int(entry.get("deliveryDate", PERPETUAL_DELIVERY_MS)),
            )
        except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
            raise FilterError(f"malformed exchangeInfo entry for {entry.get('symbol')!r}: {exc!r}") from exc

    def __post_init__(self) -> None:
        for name in _DECIMALS:
            if not getattr(self, name).is_finite():   # "NaN" reads as a Decimal, and fails every comparison after
                raise FilterError(f"{self.symbol}: {name} is not a finite number ({getattr(self, name)})")
        if self.tick_size <= 0 or self.step_size <= 0:
            raise FilterError(f"{self.symbol}: tick_size and step_size must be positive")
        if self.market_step_size <= 0:
            raise FilterError(f"{self.symbol}: MARKET_LOT_SIZE stepSize must be positive")
        # MARKET orders lie on both grids (the store counts LOT steps): the smallest whole number of
        # LOT steps that is also a multiple of the market step, exactly (Fraction of two Decimals).
        ratio = Fraction(self.market_step_size) / Fraction(self.step_size)
        unit = ratio.numerator
        object.__setattr__(self, "_market_unit", unit)
        min_units = max(1, math.ceil(Fraction(self.market_min_qty) / (Fraction(self.step_size) * unit)))
        object.__setattr__(self, "_market_min_steps", min_units * unit)
        object.__setattr__(
            self, "_market_max_steps", math.floor(Fraction(self.market_max_qty) / (Fraction(self.step_size) * unit)) * unit
        )
        # LOT_SIZE's largest order in steps (none listed, 0: no limit of ours)
        object.__setattr__(self, "_max_steps", int(self.max_qty // self.step_size) if self.max_qty > 0 else 1 << 62)
        object.__setattr__(self, "_tick_f", float(self.tick_size))
        object.__setattr__(self, "_step_f", float(self.step_size))
        object.__setattr__(self, "_price_places", _places(self.tick_size))
        object.__setattr__(self, "_qty_places", _places(self.step_size))

    # -- prices --------------------------------------------------------------------------------

    @property
    def tick(self) -> float:
        return self._tick_f

    @property
    def step(self) -> float:
        return self._step_f

    def price_ticks_floor(self, price: float | Decimal | str) -> int:
        """Ticks of the highest grid price at or below ``price`` (bids round down)."""
        return _to_units(price, self.tick_size, self._tick_f, "floor")

    def price_ticks_ceil(self, price: float | Decimal | str) -> int:
        """Ticks of the lowest grid price at or above ``price`` (asks round up)."""
        return _to_units(price, self.tick_size, self._tick_f, "ceil")

    def price_ticks_exact(self, price: Decimal | str) -> int:
        """Ticks of a price that must lie on the grid; raises :class:`FilterError` otherwise."""
        ratio = Decimal(price) / self.tick_size
        if ratio != ratio.to_integral_value():
            raise FilterError(f"{self.symbol}: price {price} is not a multiple of tick {self.tick_size}")
        return int(ratio)

    def price_of(self, ticks: int) -> Decimal:
        return self.tick_size * ticks

    def price_str(self, ticks: int) -> str:
        """The wire string of ``ticks`` ticks, e.g. ``"2317.30"`` for tick 0.01."""
        return f"{self.tick_size * ticks:.{self._price_places}f}"

    # -- quantities ----------------------------------------------------------------------------

    def qty_steps_floor(self, qty: float | Decimal | str) -> int:
        """Steps of the largest grid quantity at or below ``qty`` (sizes round down)."""
        return _to_units(qty, self.step_size, self._step_f, "floor")

    def qty_steps_exact(self, qty: Decimal | str) -> int:
        ratio = Decimal(qty) / self.step_size
        if ratio != ratio.to_integral_value():
            raise FilterError(f"{self.symbol}: quantity {qty} is not a multiple of step {self.step_size}")
        return int(ratio)

    def qty_of(self, steps: int) -> Decimal:
        return self.step_size * steps

    def qty_str(self, steps: int) -> str:
        return f"{self.step_size * steps:.{self._qty_places}f}"

    # -- rules ---------------------------------------------------------------------------------

    def same_grid(self, other: "SymbolFilters") -> bool:
        """The same symbol on the same grid (``GRID_FIELDS``): only limits (``LIMIT_FIELDS``) may differ."""
        return self.symbol == other.symbol and all(getattr(self, f) == getattr(other, f) for f in GRID_FIELDS)

    def min_qty_steps(self) -> int:
        return _to_units(self.min_qty, self.step_size, float(self.step_size), "ceil")

    def max_qty_steps(self) -> int:
        """LOT_SIZE's largest order (maxQty), in steps: a limit order above it is refused -4005."""
        return self._max_steps

    # -- MARKET orders (MARKET_LOT_SIZE) -------------------------------------------------------
    # Quantities stay in LOT steps; a MARKET quantity must also be a multiple of the market step,
    # at least its minQty and at most its maxQty (often far below LOT_SIZE's).

    @property
    def market_unit_steps(self) -> int:
        """LOT steps per unit of a MARKET quantity (1 when both filters share a step)."""
        return self._market_unit

    def market_min_steps(self) -> int:
        """The smallest MARKET quantity, in LOT steps (on both grids, at least minQty)."""
        return self._market_min_steps

    def market_max_steps(self) -> int:
        """The largest MARKET quantity, in LOT steps (on both grids, at most maxQty)."""
        return self._market_max_steps

    def market_qty_floor(self, qty_steps: int) -> int:
        """``qty_steps`` rounded down onto the MARKET grid (sizes round down)."""
        return qty_steps - qty_steps % self._market_unit if qty_steps > 0 else 0

    def market_split(self, qty_steps: int, max_steps: int | None = None) -> list[int]:
        """``qty_steps`` as MARKET orders: rounded down onto the market step, split evenly into the
        fewest orders of at most maxQty (and at most ``max_steps``, a notional's worth, when that
        leaves at least minQty); none below minQty (what rounds away is left to the caller)."""
        unit = self._market_unit
        lo, hi = self._market_min_steps, self._market_max_steps
        if max_steps is not None and lo <= max_steps - max_steps % unit < hi:
            hi = max_steps - max_steps % unit
        q = self.market_qty_floor(qty_steps)
        if q < lo or hi < lo:
            return []
        n = -(-q // hi)
        base, extra = divmod(q // unit, n)
        pieces = [(base + 1) * unit] * extra + [base * unit] * (n - extra)
        if base * unit < lo:   # a cap under twice minQty: whole caps, and the rest if it reaches minQty
            pieces = [hi] * (q // hi) + ([q % hi] if q % hi >= lo else [])
        return [x for x in pieces if x >= lo]

    def notional_ok(self, price_ticks: int, qty_steps: int) -> bool:
        """MIN_NOTIONAL: price * quantity >= notional (exact)."""
        return self.price_of(price_ticks) * self.qty_of(qty_steps) >= self.min_notional

    def tradable(self, price_ticks: int, qty_steps: int) -> bool:
        """A layer that passes min qty, max qty and min notional; outside them it is dropped, never bumped."""
        return (qty_steps >= self.min_qty_steps() and 0 < qty_steps <= self._max_steps
                and self.notional_ok(price_ticks, qty_steps))
