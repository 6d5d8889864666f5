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
from decimal import ROUND_CEILING

from fleet.binance.enums import Side
from fleet.binance.filters import SymbolFilters
from fleet.config import SymbolParams

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
        # MIN_NOTIONAL as an integer bound on price_ticks * qty_steps (exact).
        unit = filters.tick_size * filters.step_size
        self.min_notional_units = int((filters.min_notional / unit).to_integral_value(rounding=ROUND_CEILING))
        self.max_price_ticks = filters.price_ticks_floor(filters.max_price) if filters.max_price > 0 else 1 << 62
        self.min_price_ticks = max(1, filters.price_ticks_ceil(filters.min_price)) if filters.min_price > 0 else 1
        self.sensitivity = params.funding.sensitivity
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
        center = mid * (1.0 - self.sensitivity * predicted_funding_rate)
        center_ticks = center * self.inv_tick
        cap = self.cap_steps
        # Bids must stay below the best ask and asks above the best bid (post-only would reject).
        bid_ceiling = int(math.ceil(best_ask * self.inv_tick - _EPS)) - 1 if best_ask > 0 else 1 << 62
        ask_floor = int(math.floor(best_bid * self.inv_tick + _EPS)) + 1 if best_bid > 0 else 0

        exp = math.exp
        eps = _EPS
        new = tuple.__new__  # Quote(...) without the named tuple's Python-level __new__
        dps = self.decay_per_step
        mnu = self.min_notional_units
        mq = self.min_qty_steps

        # --- bids: worst_long grows with each proposed layer
        worst = position_steps + other_buy_steps
        decay_b = exp(-worst * dps) if worst > 0 else 1.0
        bids: list[Quote] = []
        room_b = cap - worst
        if buy_limit_steps is not None and buy_limit_steps < room_b:
            room_b = buy_limit_steps
        buy_suppressed = room_b <= 0
        if not buy_suppressed:
            prev = bid_ceiling + 1
            min_px = self.min_price_ticks
            for i, mult, base in self._bid_layers:
                size = int((base * exp(-worst * dps) if worst > 0 else base) + eps)
                if size > room_b:
                    size = room_b
                    buy_suppressed = True
                px = int(center_ticks * mult + eps)
                if px >= prev:
                    px = prev - 1
                if size < mq or px < min_px or px * size < mnu:
                    break  # outer layers are only smaller and lower: stop here
                bids.append(new(Quote, (Side.BUY, i, px, size)))
                prev = px
                worst += size
                room_b -= size
                if buy_suppressed or room_b <= 0:
                    buy_suppressed = True
                    break

        # --- asks: worst_short falls with each proposed layer
        worst_s = position_steps - other_sell_steps
        decay_s = exp(worst_s * dps) if worst_s < 0 else 1.0
        asks: list[Quote] = []
        room_s = cap + worst_s
        if sell_limit_steps is not None and sell_limit_steps < room_s:
            room_s = sell_limit_steps
        sell_suppressed = room_s <= 0
        if not sell_suppressed:
            prev = ask_floor - 1
            maxp = self.max_price_ticks
            for i, mult, base in self._ask_layers:
                size = int((base * exp(worst_s * dps) if worst_s < 0 else base) + eps)
                if size > room_s:
                    size = room_s
                    sell_suppressed = True
                raw = center_ticks * mult - eps
                px = int(raw)
                if px < raw:
                    px += 1  # asks round up
                if px <= prev:
                    px = prev + 1
                if size < mq or px > maxp or px * size < mnu:
                    break
                asks.append(new(Quote, (Side.SELL, i, px, size)))
                prev = px
                worst_s -= size
                room_s -= size
                if sell_suppressed or room_s <= 0:
                    sell_suppressed = True
                    break
        self._last_key = key
        self._last = Ladder(
            tuple(bids),
            tuple(asks),
            center,
            center_ticks,
            decay_b if decay_b < decay_s else decay_s,
            buy_suppressed,
            sell_suppressed,
            worst,
            worst_s,
        )
        return self._last
