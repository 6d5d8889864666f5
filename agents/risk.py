"""RiskGuard (the one pre-trade check every order passes) and the drawdown bands with their TWAP plans.

The guard reads the store's position and pending sizes, so an order counts against the worst-case
cap from the moment it is sent; within one cycle the caller passes what it has already approved.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace
from enum import StrEnum

from fleet.binance.enums import OrderType, Side
from fleet.binance.filters import SymbolFilters
from fleet.config import DrawdownParams, SymbolParams
from fleet.vocabulary import KillState

from .orders import Amend, Place
from .store import LiveOrder, Store

# The guard's states are the kill states; these names are kept for agents/core.py and the tests.
RUNNING, HALTED, FLATTENING = KillState.RUNNING, KillState.HALTED, KillState.FLATTENING
# module names: an enum member read off its class costs ~10x a global in the guard's per-order checks
BUY, SELL, MARKET = Side.BUY, Side.SELL, OrderType.MARKET

_EPS = 1e-9


class Refusal(StrEnum):
    """Why the guard refused an order; the value is the ``reason`` label of ``mm_guard_refusals``."""

    BAD_QUANTITY = "bad_quantity"
    REDUCE_ONLY_NO_POSITION = "reduce_only_no_position"  # reduce-only, but nothing on that side to reduce
    REDUCE_ONLY_EXCEEDS_POSITION = "reduce_only_exceeds_position"
    HALTED = "halted"  # the kill state: nothing that adds exposure
    FLATTENING = "flattening"  # the kill state: reduce-only orders only
    REDUCE_ONLY_MODE = "reduce_only_mode"  # the fleet's notional is over its cap
    WORST_CASE_LONG = "worst_case_long"
    WORST_CASE_SHORT = "worst_case_short"
    NO_REFERENCE_PRICE = "no_reference_price"  # neither mark nor mid yet
    PRICE_BAND = "price_band"
    MAX_NOTIONAL = "max_notional"


class RiskGuard:
    """Pre-trade check: worst-case cap, halt state, fleet reduce-only mode, price band, max notional."""

    def __init__(self, params: SymbolParams, filters: SymbolFilters, store: Store) -> None:
        self.store = store
        self.filters = filters
        self._configure(params)
        self.state: KillState = RUNNING
        self.halt_reason = ""
        self.reduce_only_mode = False
        self.refusals: dict[str, int] = {}
        self.approved = 0

    def _configure(self, params: SymbolParams) -> None:
        step = float(self.filters.step_size)
        tick = float(self.filters.tick_size)
        self.cap_steps = int(math.floor(params.worst_cap / step + _EPS))
        self.band = params.risk.price_band
        self.max_notional = params.risk.max_order_notional
        self.notional_unit = tick * step
        self.tick = tick

    def with_params(self, params: SymbolParams, store: Store | None = None) -> "RiskGuard":
        """The guard under new limits (cap, price band, max notional), reading ``store`` (the store
        handed over to the same parameters; this one's if None): its halt state and reason, the
        fleet's reduce-only mode and its counts are kept."""
        new = copy.copy(self)
        new._configure(params)
        if store is not None:
            new.store = store
        return new

    # ------------------------------------------------------------------ modes

    def halt(self, reason: str = "operator") -> None:
        self.state = HALTED
        self.halt_reason = reason

    def flatten(self, reason: str = "operator") -> None:
        self.state = FLATTENING
        self.halt_reason = reason

    def resume(self) -> None:
        self.state = RUNNING
        self.halt_reason = ""

    def set_reduce_only(self, on: bool) -> None:
        """Set by the fleet while its total notional is over the cap."""
        self.reduce_only_mode = on

    @property
    def may_add_exposure(self) -> bool:
        return self.state == RUNNING and not self.reduce_only_mode

    # ------------------------------------------------------------------ checks

    def _refuse(self, reason: Refusal) -> Refusal:
        key = str(reason)  # counted under the plain label (the metrics and JSON edges take str keys)
        self.refusals[key] = self.refusals.get(key, 0) + 1
        return reason

    def _may_not_add(self) -> Refusal:
        """Why an order that adds exposure may not: the kill state, else the fleet's reduce-only mode."""
        return Refusal.REDUCE_ONLY_MODE if self.state == RUNNING else Refusal(self.state)

    def _price_notional(self, price_ticks: int, qty_steps: int, market: bool) -> Refusal | None:
        s = self.store
        ref = s.mark or s.mid
        if ref <= 0.0:
            return Refusal.NO_REFERENCE_PRICE
        if market:
            notional = ref * qty_steps * s.step
        else:
            price = price_ticks * self.tick
            if abs(price - ref) > self.band * ref:
                return Refusal.PRICE_BAND
            notional = price_ticks * qty_steps * self.notional_unit
        if notional > self.max_notional:
            return Refusal.MAX_NOTIONAL
        return None

    def check_place(self, p: Place, extra_buy: int = 0, extra_sell: int = 0, *, strict: bool = False) -> Refusal | None:
        """``None`` if the order may be sent, else the refusal reason (counted).

        ``extra_buy``/``extra_sell``: steps already approved this cycle but not yet recorded as sent.
        A reduce-only order skips the worst-case check: it can only shrink the position (the
        "except when reducing" of the worst-case invariant), but it must face a position it fits.
        ``strict``: it faces the worst case of its side all the same, as an order of choice (a grind)
        should: filled first, it leaves the orders of its side resting on a smaller position (a long
        0.18 sold 0.0135, then asks of 0.41 filled: short 0.2435 against a cap of 0.23).
        """
        s = self.store
        pos = s.position_steps
        q = p.qty_steps
        if q <= 0:
            return self._refuse(Refusal.BAD_QUANTITY)
        if p.reduce_only:
            if not ((p.side == SELL and pos > 0) or (p.side == BUY and pos < 0)):
                return self._refuse(Refusal.REDUCE_ONLY_NO_POSITION)
            if q > abs(pos):
                return self._refuse(Refusal.REDUCE_ONLY_EXCEEDS_POSITION)
            if strict and p.side == BUY and pos + s.pending_buy_steps + extra_buy + q > self.cap_steps:
                return self._refuse(Refusal.WORST_CASE_LONG)
            if strict and p.side == SELL and pos - s.pending_sell_steps - extra_sell - q < -self.cap_steps:
                return self._refuse(Refusal.WORST_CASE_SHORT)
        else:
            if self.state == FLATTENING:
                return self._refuse(Refusal.FLATTENING)
            if p.side == BUY:
                worst = pos + s.pending_buy_steps + extra_buy + q
                if not self.may_add_exposure:
                    # Only a buy that shrinks a short, and cannot flip it, may pass.
                    if pos >= 0 or worst > 0:
                        return self._refuse(self._may_not_add())
                if worst > self.cap_steps:
                    return self._refuse(Refusal.WORST_CASE_LONG)
            else:
                worst = pos - s.pending_sell_steps - extra_sell - q
                if not self.may_add_exposure:
                    if pos <= 0 or worst < 0:
                        return self._refuse(self._may_not_add())
                if worst < -self.cap_steps:
                    return self._refuse(Refusal.WORST_CASE_SHORT)
        why = self._price_notional(p.price_ticks, q, p.order_type == MARKET)
        if why is not None:
            return self._refuse(why)
        self.approved += 1
        return None

    def check_amend(self, a: Amend, order: LiveOrder, extra_buy: int = 0, extra_sell: int = 0) -> Refusal | None:
        """An amendment counts as the larger of old and new: only the growth is checked against the cap."""
        s = self.store
        pos = s.position_steps
        new_rem = a.qty_steps - order.filled_steps
        if new_rem <= 0:
            return self._refuse(Refusal.BAD_QUANTITY)
        growth = order.amend_growth(a.qty_steps)
        if order.reduce_only:
            if new_rem > abs(pos):
                return self._refuse(Refusal.REDUCE_ONLY_EXCEEDS_POSITION)
        elif self.state == FLATTENING:
            return self._refuse(Refusal.FLATTENING)
        elif a.side == BUY:
            worst = pos + s.pending_buy_steps + extra_buy + growth
            if growth and not self.may_add_exposure and (pos >= 0 or worst > 0):
                return self._refuse(self._may_not_add())
            if growth and worst > self.cap_steps:
                return self._refuse(Refusal.WORST_CASE_LONG)
        else:
            worst = pos - s.pending_sell_steps - extra_sell - growth
            if growth and not self.may_add_exposure and (pos <= 0 or worst < 0):
                return self._refuse(self._may_not_add())
            if growth and worst < -self.cap_steps:
                return self._refuse(Refusal.WORST_CASE_SHORT)
        why = self._price_notional(a.price_ticks, new_rem, False)
        if why is not None:
            return self._refuse(why)
        self.approved += 1
        return None

    def room_steps(self, side: Side, extra_buy: int = 0, extra_sell: int = 0) -> int:
        """How much more of ``side`` the worst-case cap allows now (for trimming an order)."""
        s = self.store
        if side == BUY:
            return max(0, self.cap_steps - (s.position_steps + s.pending_buy_steps + extra_buy))
        return max(0, self.cap_steps + (s.position_steps - s.pending_sell_steps - extra_sell))


# --- drawdown ---------------------------------------------------------------------------------


TWAP_MAX_TRIES = 5  # a slice the guard keeps refusing is dropped after this many attempts


@dataclass(frozen=True, slots=True)
class TwapSlice:
    due_ms: int
    side: Side
    qty_steps: int
    tries: int = 0  # attempts the guard refused so far


def respace(slices: list[TwapSlice], now_ms: int, interval_ms: int) -> list[TwapSlice]:
    """The slices still to send, spaced again from ``now_ms`` once a gap made them due too soon.

    Called after a slice was sent (or refused) at ``now_ms``: the next one may not go before
    ``now_ms + interval_ms``. If it would (a halt, a stream loss, a slow cycle left slices overdue),
    every remaining slice moves to ``now_ms + k * interval_ms`` (k = 1, 2, ...), so a block never
    turns into a burst of market orders; slices already due later keep their times.
    """
    if not slices or slices[0].due_ms >= now_ms + interval_ms:
        return slices
    return [
        sl if sl.due_ms >= now_ms + k * interval_ms else replace(sl, due_ms=now_ms + k * interval_ms)
        for k, sl in enumerate(slices, start=1)
    ]


@dataclass(frozen=True, slots=True)
class TwapPlan:
    """Reduce the position by ``total_steps`` in reduce-only market slices at their due times."""

    band: int
    drawdown_pct: float
    fraction: float
    side: Side
    total_steps: int
    slices: tuple[TwapSlice, ...]


class DrawdownBands:
    """At 6 / 11 / 17 % drawdown, reduce the position by 25 / 45 / 80 %, each band once per excursion.

    A band crossed while its fraction of the position is under one market step (or flat) is not spent:
    it acts once the excursion has built a position it can cut.

    An excursion ends when drawdown falls back under half the lowest band; the bands re-arm after
    ``cooldown_sec`` from the last action, so a drawdown hovering at a band cannot act again and
    again. A higher band crossed in the same excursion acts at once (it is a deeper loss).
    """

    def __init__(self, params: DrawdownParams, *, unit_steps: int = 1, min_steps: int = 1) -> None:
        # Slices are MARKET orders: whole multiples of ``unit_steps`` (the MARKET step, in LOT steps)
        # and at least ``min_steps`` (MARKET_LOT_SIZE minQty), so none is rounded away when sent.
        self.unit = max(1, unit_steps)
        self.min_steps = max(self.unit, min_steps)
        self._configure(params)
        self.acted = -1  # highest band acted on in this excursion
        self.last_action_ms: int | None = None
        self.plans = 0

    def with_params(self, params: DrawdownParams) -> "DrawdownBands":
        """The bands under new drawdown parameters (same market step and minimum): the excursion's
        highest band acted on (within the new bands), its last action time and the plan count are kept."""
        new = copy.copy(self)
        new._configure(params)
        new.acted = min(self.acted, len(new.bands) - 1)
        return new

    def _configure(self, params: DrawdownParams) -> None:
        self.bands = tuple(params.drawdown_bands)
        self.fractions = tuple(params.reduce_fractions)
        self.slices = params.twap_slices
        self.interval_ms = params.twap_interval_ms
        self.cooldown_ms = int(params.cooldown_sec * 1000)

    def check(self, drawdown_pct: float, position_steps: int, now_ms: int) -> TwapPlan | None:
        crossed = -1
        for i, b in enumerate(self.bands):
            if drawdown_pct >= b:
                crossed = i
        if crossed < 0:
            if (
                self.acted >= 0
                and drawdown_pct < self.bands[0] * 0.5
                and (self.last_action_ms is None or now_ms - self.last_action_ms >= self.cooldown_ms)
            ):
                self.acted = -1
            return None
        if crossed <= self.acted:
            return None
        fraction = self.fractions[crossed]
        unit = self.unit
        units = int(abs(position_steps) * fraction / unit + _EPS)
        total = units * unit
        if total <= 0 or total < self.min_steps:
            return None   # nothing to reduce yet: the band stays armed for a position the excursion builds
        self.acted = crossed
        self.last_action_ms = now_ms
        side = SELL if position_steps > 0 else BUY
        n = max(1, min(self.slices, total // self.min_steps))
        base, extra = divmod(units, n)
        slices = tuple(
            TwapSlice(now_ms + k * self.interval_ms, side, (base + (1 if k < extra else 0)) * unit) for k in range(n)
        )
        self.plans += 1
        return TwapPlan(crossed, drawdown_pct, fraction, side, total, slices)
