"""GrindingEngine: shave a large position in a ranging market, then re-enter passively.

Checked every ``interval_sec`` (55 s). Triggers when ``|position| >= trigger_ratio * net_max`` and the
30-minute *relative* stddev is under ``range_std_threshold``. It sells (long) or buys (short)
``grind_size_pct`` of the position reduce-only at market (x ``funding_favor_multiplier`` when the
predicted funding makes holding the position cost), then rests a post-only re-entry
``reentry_spread_bps`` better than mid for ``reentry_size_multiplier`` (2.1) x that size. At most
``max_grind_per_hour`` in any rolling hour and ``min_interval_sec`` apart.
"""

from __future__ import annotations

import copy
import math
from collections import deque
from dataclasses import dataclass

from fleet.binance.enums import Side
from fleet.binance.filters import SymbolFilters
from fleet.config import SymbolParams

_EPS = 1e-9
HOUR_MS = 3_600_000


@dataclass(frozen=True, slots=True)
class GrindDecision:
    """One grind: a reduce-only market order now, a post-only re-entry once it has filled."""

    side: Side  # of the market order
    qty_steps: int
    reentry_side: Side
    funding_boost: bool
    mid: float
    rel_stddev: float


@dataclass(frozen=True, slots=True)
class GrindSkip:
    """Why a due check did not grind (for logs and tests)."""

    reason: str


class GrindingEngine:
    """Decides grinds and enforces their limits; the core turns decisions into orders."""

    def __init__(self, params: SymbolParams, filters: SymbolFilters) -> None:
        self.filters = filters
        self.step = float(filters.step_size)
        self.tick = float(filters.tick_size)
        self.min_qty_steps = max(1, filters.min_qty_steps())
        self._configure(params)
        self.times: deque[int] = deque()  # when each grind of the last hour fired
        self.next_check_ms: int | None = None
        self.count_total = 0
        self.cost_saved = 0.0
        self.active = False
        self.last_skip = ""

    def _configure(self, params: SymbolParams) -> None:
        g = params.grinding
        self.p = g
        self.trigger_steps = params.base.net_max * g.trigger_ratio / self.step - 1e-6
        self.interval_ms = int(g.interval_sec * 1000)
        self.min_gap_ms = int(g.min_interval_sec * 1000)
        self.min_window_ms = int(g.min_window_sec * 1000)

    def with_params(self, params: SymbolParams) -> "GrindingEngine":
        """The engine under new grinding rules: the last hour's grinds, the next check's time, the
        totals, the grind in progress and the last skip reason are kept."""
        new = copy.copy(self)
        new._configure(params)
        return new

    def due(self, now_ms: int) -> bool:
        """The 55-second cadence (the first check runs at once)."""
        return self.next_check_ms is None or now_ms >= self.next_check_ms

    def grinds_last_hour(self, now_ms: int) -> int:
        t = self.times
        while t and t[0] <= now_ms - HOUR_MS:
            t.popleft()
        return len(t)

    def check(
        self,
        now_ms: int,
        position_steps: int,
        mid: float,
        rel_stddev: float,
        window_span_ms: int,
        predicted_funding_rate: float,
    ) -> GrindDecision | GrindSkip:
        """Run one check (and schedule the next); a decision is recorded as fired."""
        self.next_check_ms = now_ms + self.interval_ms
        why = self._blocked(now_ms, position_steps, mid, rel_stddev, window_span_ms)
        if why:
            self.last_skip = why
            return GrindSkip(why)
        p = self.p
        long = position_steps > 0
        favoured = p.funding_boost and (
            (long and predicted_funding_rate > 0) or (not long and predicted_funding_rate < 0)
        )
        pct = p.grind_size_pct * (p.funding_favor_multiplier if favoured else 1.0)
        qty = min(int(abs(position_steps) * pct + _EPS), abs(position_steps))   # (x1.4 of a pct above 0.71: the
        # whole position, not a reduce-only order beyond it that the guard refuses)
        if qty < self.min_qty_steps:
            self.last_skip = "below_min_qty"
            return GrindSkip("below_min_qty")
        self.times.append(now_ms)
        self.count_total += 1
        self.active = True
        self.last_skip = ""
        side = Side.SELL if long else Side.BUY
        return GrindDecision(side, qty, side.opposite, favoured, mid, rel_stddev)

    def _blocked(self, now_ms: int, pos: int, mid: float, rel_std: float, span_ms: int) -> str:
        p = self.p
        if self.active:
            return "grind_in_progress"
        if mid <= 0:
            return "no_mid"
        if abs(pos) < self.trigger_steps:
            return "below_trigger"
        if span_ms < self.min_window_ms:
            return "window_too_short"
        if rel_std >= p.range_std_threshold:
            return "trending"
        if self.times and now_ms - self.times[-1] < self.min_gap_ms:
            return "min_interval"
        if self.grinds_last_hour(now_ms) >= p.max_grind_per_hour:
            return "hourly_limit"
        return ""

    def reentry(self, decision: GrindDecision, filled_steps: int, mid: float) -> tuple[int, int]:
        """(price_ticks, qty_steps) of the re-entry: ``reentry_spread_bps`` better than mid, 2.1x the fill."""
        off = self.p.reentry_spread_bps / 10_000.0
        qty = int(filled_steps * self.p.reentry_size_multiplier + _EPS)
        if decision.reentry_side == Side.BUY:
            px = int(mid * (1.0 - off) / self.tick + _EPS)
        else:
            px = int(math.ceil(mid * (1.0 + off) / self.tick - _EPS))
        return px, qty

    def book_saving(self, decision: GrindDecision, filled_steps: int, reentry_steps: int, mid: float, rate: float) -> float:
        """Estimated quote-currency saving of one grind: the re-entry's edge over mid, plus one funding
        payment avoided on the ground-off size when funding favoured reducing."""
        edge = reentry_steps * self.step * mid * self.p.reentry_spread_bps / 10_000.0
        funding = filled_steps * self.step * mid * abs(rate) if decision.funding_boost else 0.0
        saved = edge + funding
        self.cost_saved += saved
        return saved

    def finish(self) -> None:
        """The grind is over (re-entry placed, or given up)."""
        self.active = False

    def undo(self, now_ms: int) -> None:
        """The last decision's market order was never sent (refused): it does not count."""
        if self.times and self.times[-1] == now_ms:
            self.times.pop()
            self.count_total -= 1
        self.active = False
