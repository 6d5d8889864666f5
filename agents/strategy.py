"""GeometricV2: the desired quote ladder from the store's numbers, the symbol filters and the parameters.

Layer ``i`` quotes at ``center * (1 -/+ min_spread * spacing_ratio ** i)`` with
``center = mid * (1 - sensitivity * predicted_funding_rate)``; its size is
``base_size * exp(-worst / net_max * size_decay_k) * layer_size_decay ** i``, where ``worst`` is
the exposure that side adds to (``max(worst_long, 0)`` for bids, ``max(-worst_short, 0)`` for asks)
including the layers already proposed; a side stops at ``net_max * multiplier``.

The seed decayed both sides by ``|worst|``, which also starved the side that reduces the position:
with ETH's 0.001 step, from a position of about 0.12 no reducing quote survived the rounding, and a
book near its cap could not quote its way out. A side is therefore decayed only by the exposure it
adds to. Everything per layer that does not depend on the market is precomputed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple
from decimal import ROUND_CEILING, Decimal

from fleet.binance.enums import Side
from fleet.binance.filters import SymbolFilters
from fleet.config import SymbolParams

BUY, SELL = Side.BUY, Side.SELL  # module names: an enum member read off its class costs ~10x a global

_EPS = 1e-7  # in ticks/steps: absorbs float noise, far below one unit


class Quote(NamedTuple):
    """One desired layer: side, layer index (0 = innermost), price in ticks, size in steps.

    A named tuple rather than a dataclass: up to 56 are built per cycle, and this is the cheap kind.
    """

    side: Side
    layer: int
    price_ticks: int
    qty_steps: int


@dataclass(frozen=True, slots=True)
class Ladder:
    """The strategy's answer for one cycle (bids and asks inner to outer) and what it observed."""

    bids: tuple[Quote, ...]
    asks: tuple[Quote, ...]
    center: float
    center_ticks: float
    decay_factor: float  # exp(-|worst| / net_max * k) at layer 0, the stronger of the two sides
    buy_suppressed: bool  # the bid side stopped at the worst-case cap (or is not allowed)
    sell_suppressed: bool
    worst_long_steps: int  # position + other pending + proposed bids
    worst_short_steps: int

    @property
    def suppressed(self) -> bool:
        return self.buy_suppressed or self.sell_suppressed


EMPTY_LADDER = Ladder((), (), 0.0, 0.0, 1.0, True, True, 0, 0)


class GeometricV2:
    """The seed's geometric grid with exponential size decay, funding shift and worst-case stop."""

    def __init__(self, params: SymbolParams, filters: SymbolFilters) -> None:
        self.params = params
        self.filters = filters
        base, grid, wc = params.base, params.grid, params.worst_case
        step = float(filters.step_size)
        self.tick = float(filters.tick_size)
        self.inv_tick = 1.0 / self.tick
        self.layers = grid.max_layers
        self.offsets = tuple(base.min_spread * grid.spacing_ratio**i for i in range(self.layers))
        self.base_steps = base.base_size / step
        self.layer_decay = tuple(grid.layer_size_decay**i for i in range(self.layers))
        self.decay_per_step = wc.size_decay_k * step / base.net_max
        self.cap_steps = int(math.floor(params.worst_cap / step + _EPS))
        self.min_qty_steps = max(1, filters.min_qty_steps())
        self.max_qty_steps = filters.max_qty_steps()   # LOT_SIZE's maxQty: a larger layer is cut to it
        # MIN_NOTIONAL as an integer bound on price_ticks * qty_steps (exact).
        unit = filters.tick_size * filters.step_size
        self.min_notional_units = int((filters.min_notional / unit).to_integral_value(rounding=ROUND_CEILING))
        self.max_price_ticks = filters.price_ticks_floor(filters.max_price) if filters.max_price > 0 else 1 << 62
        self.min_price_ticks = max(1, filters.price_ticks_ceil(filters.min_price)) if filters.min_price > 0 else 1
        self.sensitivity = params.funding.sensitivity
        self.max_shift = params.funding.max_shift
        self._last_key: tuple | None = None
        self._last = EMPTY_LADDER
        # Per layer: (index, price multiplier, base size x layer decay), one tuple per side.
        self._bid_layers = tuple(
            (i, 1.0 - self.offsets[i], self.base_steps * self.layer_decay[i]) for i in range(self.layers)
        )
        self._ask_layers = tuple(
            (i, 1.0 + self.offsets[i], self.base_steps * self.layer_decay[i]) for i in range(self.layers)
        )

    def with_params(self, params: SymbolParams) -> "GeometricV2":
        """The strategy under new parameters: it keeps no state but the memo of its last ladder,
        which the new parameters make stale, so it is a new strategy on the same filters."""
        return GeometricV2(params, self.filters)

    def quote(
        self,
        mid: float,
        position_steps: int,
        other_buy_steps: int = 0,
        other_sell_steps: int = 0,
        predicted_funding_rate: float = 0.0,
        best_bid: float = 0.0,
        best_ask: float = 0.0,
        buy_limit_steps: int | None = None,
        sell_limit_steps: int | None = None,
    ) -> Ladder:
        """The desired ladder.

        ``other_*_steps``: pending orders outside the ladder (grinding re-entry, cancels in flight);
        ``*_limit_steps``: a cap on a side's total (reduce-only modes), ``None`` = no cap.
        """
        if mid <= 0.0:
            return EMPTY_LADDER
        key = (mid, position_steps, other_buy_steps, other_sell_steps, predicted_funding_rate, best_bid, best_ask,
               buy_limit_steps, sell_limit_steps)
        if key == self._last_key:
            return self._last  # a still book: the same inputs give the same ladder
        shift = self.sensitivity * predicted_funding_rate
        if not -self.max_shift <= shift <= self.max_shift:
            shift = self.max_shift if shift > 0 else -self.max_shift
        center = mid * (1.0 - shift)
        center_ticks = center * self.inv_tick
        worst_long = position_steps + other_buy_steps
        worst_short = position_steps - other_sell_steps
        bids, buy_suppressed, worst_long_after = self._bids(center_ticks, worst_long, best_ask, buy_limit_steps)
        asks, sell_suppressed, worst_short_after = self._asks(center_ticks, worst_short, best_bid, sell_limit_steps)
        dps = self.decay_per_step
        decay_b = math.exp(-worst_long * dps) if worst_long > 0 else 1.0
        decay_s = math.exp(worst_short * dps) if worst_short < 0 else 1.0
        self._last_key = key
        self._last = Ladder(
            bids,
            asks,
            center,
            center_ticks,
            decay_b if decay_b < decay_s else decay_s,
            buy_suppressed,
            sell_suppressed,
            worst_long_after,
            worst_short_after,
        )
        return self._last

    def _bids(
        self, center_ticks: float, worst: int, best_ask: float, limit_steps: int | None
    ) -> tuple[tuple[Quote, ...], bool, int]:
        """The bid side, inner to outer: ``worst`` (the long worst case) grows with each layer proposed.

        Returns the bids, whether the side stopped at its cap (or may not quote at all), and the
        worst case with the bids in it. Bids stay below the best ask (post-only would reject).
        """
        room = self.cap_steps - worst
        if limit_steps is not None and limit_steps < room:
            room = limit_steps
        if room <= 0:
            return (), True, worst
        exp = math.exp
        eps = _EPS
        new = tuple.__new__  # Quote(...) without the named tuple's Python-level __new__
        dps = self.decay_per_step
        mnu = self.min_notional_units
        mq = self.min_qty_steps
        top = self.max_qty_steps
        min_px = self.min_price_ticks
        suppressed = False
        bids: list[Quote] = []
        ceiling = int(math.ceil(best_ask * self.inv_tick - _EPS)) - 1 if best_ask > 0 else 1 << 62
        prev = ceiling + 1  # the inner neighbour's price: the first bid is at most the ceiling
        for i, mult, base in self._bid_layers:
            size = int((base * exp(-worst * dps) if worst > 0 else base) + eps)
            if size > top:
                size = top
            if size > room:
                size = room
                suppressed = True
            px = int(center_ticks * mult + eps)
            if px >= prev:
                px = prev - 1
            if size < mq or px < min_px or px * size < mnu:
                break  # outer layers are only smaller and lower: stop here
            bids.append(new(Quote, (BUY, i, px, size)))
            prev = px
            worst += size
            room -= size
            if suppressed or room <= 0:
                suppressed = True
                break
        return tuple(bids), suppressed, worst

    def _asks(
        self, center_ticks: float, worst: int, best_bid: float, limit_steps: int | None
    ) -> tuple[tuple[Quote, ...], bool, int]:
        """The ask side, inner to outer: ``worst`` (the short worst case, negative when short) falls
        with each layer proposed. Returns as :meth:`_bids` does; asks stay above the best bid."""
        room = self.cap_steps + worst
        if limit_steps is not None and limit_steps < room:
            room = limit_steps
        if room <= 0:
            return (), True, worst
        exp = math.exp
        eps = _EPS
        new = tuple.__new__
        dps = self.decay_per_step
        mnu = self.min_notional_units
        mq = self.min_qty_steps
        top = self.max_qty_steps
        maxp = self.max_price_ticks
        suppressed = False
        asks: list[Quote] = []
        floor = int(math.floor(best_bid * self.inv_tick + _EPS)) + 1 if best_bid > 0 else 0
        prev = floor - 1  # the inner neighbour's price: the first ask is at least the floor
        for i, mult, base in self._ask_layers:
            size = int((base * exp(worst * dps) if worst < 0 else base) + eps)
            if size > top:
                size = top
            if size > room:
                size = room
                suppressed = True
            raw = center_ticks * mult - eps
            px = int(raw)
            if px < raw:
                px += 1  # asks round up
            if px <= prev:
                px = prev + 1
            if size < mq or px > maxp or px * size < mnu:
                break  # outer layers are only smaller and higher: stop here
            asks.append(new(Quote, (SELL, i, px, size)))
            prev = px
            worst -= size
            room -= size
            if suppressed or room <= 0:
                suppressed = True
                break
        return tuple(asks), suppressed, worst


def size_problem(params: SymbolParams, filters: SymbolFilters) -> str | None:
    """Why the ladder could never place an order of the symbol (its largest layer, the first, or the
    worst-case bound under the exchange's smallest order; the largest order's notional under its
    smallest), else None: the agent says so instead of quoting nothing in silence."""
    size = Decimal(str(params.base.base_size))
    smallest = max(filters.min_qty, filters.step_size)
    if size < smallest:
        return (f"base.base_size {size:f} is under {filters.symbol}'s smallest order of {smallest}: the ladder would "
                f"place nothing")
    cap = Decimal(str(params.worst_cap))
    if cap < smallest:
        return (f"the worst-case bound base.net_max x worst_case.multiplier = {cap:f} is under {filters.symbol}'s "
                f"smallest order of {smallest}: the guard would let no order through")
    notional = Decimal(str(params.risk.max_order_notional))
    if notional < filters.min_notional:
        return (f"risk.max_order_notional {notional:f} is under {filters.symbol}'s smallest notional of "
                f"{filters.min_notional}: no order could be placed")
    return None
