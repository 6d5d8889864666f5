"""The mid-price model: regimes of ranging (mean-reverting), trending and jumps, seeded and pure.

A market maker earns in ranges and bleeds in trends and jumps; a model with all three lets tests and
benchmarks see both. Time is passed in (``step(dt_s)``), so it runs live or thirty minutes in a blink.
"""

from __future__ import annotations

import math
import random

from pydantic import BaseModel, ConfigDict, Field

SECONDS_PER_YEAR = 365.0 * 24 * 3600
MAX_VOLATILITY = 20.0   # annualised: a market at its wildest (a crash's day) and then some

RANGING = "ranging"
TRENDING = "trending"
JUMP = "jump"


class MarketParams(BaseModel):
    """How one symbol's mid moves. Volatility is annualised; lengths are mean seconds. Every number is
    finite and within what a market can do (an infinite drift or jump broke every clock step; a
    volatility of 10^6 overflowed the start's history), so a config beyond it is refused at start."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    start_price: float = Field(3000.0, ge=1e-8, le=1e9)
    volatility: float = Field(0.8, ge=0, le=MAX_VOLATILITY, description="annualised volatility of log price "
                                                                       "(20: about 21 % an hour)")
    ranging_mean_s: float = Field(900.0, ge=0.001, le=SECONDS_PER_YEAR, description="mean length of a ranging regime")
    trending_mean_s: float = Field(300.0, ge=0.001, le=SECONDS_PER_YEAR, description="mean length of a trending regime")
    trend_probability: float = Field(0.35, ge=0, le=1, description="chance the next regime trends")
    trend_drift_per_hour: float = Field(0.01, ge=0, le=1, description="log drift of a trend per hour")
    reversion_per_s: float = Field(0.003, ge=0, le=1, description="ranging pull towards the regime anchor")
    jump_rate_per_hour: float = Field(0.5, ge=0, le=3600)
    jump_size: float = Field(0.004, ge=0, le=0.5, description="mean absolute log size of a jump")
    jump_duration_s: float = Field(5.0, gt=0, le=3600, description="how long the 'jump' regime label lasts")
    jump_vol_multiplier: float = Field(3.0, ge=1, le=100)


class MarketModel:
    """One symbol's mid price. Deterministic for a given ``rng`` seed and sequence of ``dt``."""

    __slots__ = ("params", "_rng", "_x", "_anchor", "_regime", "_left_s", "_drift_s", "_sigma_s",
                 "_jump_p_s", "_after_jump")

    def __init__(self, params: MarketParams, rng: random.Random) -> None:
        self.params = params
        self._rng = rng
        self._x = 0.0  # log(mid / start)
        self._anchor = 0.0
        self._regime = RANGING
        self._left_s = rng.expovariate(1.0 / params.ranging_mean_s)
        self._drift_s = 0.0
        self._sigma_s = params.volatility / math.sqrt(SECONDS_PER_YEAR)
        self._jump_p_s = params.jump_rate_per_hour / 3600.0
        self._after_jump = RANGING

    @property
    def mid(self) -> float:
        return self.params.start_price * math.exp(self._x)

    @property
    def regime(self) -> str:
        return self._regime

    @property
    def trend_sign(self) -> int:
        """+1 / -1 while trending up / down, else 0: takers lean with a trend (adverse selection)."""
        if self._regime != TRENDING or self._drift_s == 0:
            return 0
        return 1 if self._drift_s > 0 else -1

    def jump(self, log_size: float) -> float:
        """Force a jump of ``log_size`` (e.g. -0.01 = about -1 %); returns the new mid."""
        self._x += log_size
        self._anchor = self._x
        if self._regime != JUMP:
            self._after_jump = self._regime
        self._regime = JUMP
        self._left_s = self.params.jump_duration_s
        return self.mid

    def _next_regime(self) -> None:
        p = self.params
        rng = self._rng
        self._anchor = self._x
        self._drift_s = 0.0
        if rng.random() < p.trend_probability:
            self._regime = TRENDING
            self._left_s = rng.expovariate(1.0 / p.trending_mean_s)
            sign = 1.0 if rng.random() < 0.5 else -1.0
            self._drift_s = sign * p.trend_drift_per_hour / 3600.0
        else:
            self._regime = RANGING
            self._left_s = rng.expovariate(1.0 / p.ranging_mean_s)
            self._drift_s = 0.0

    def step(self, dt_s: float) -> float:
        """Advance the model by ``dt_s`` seconds and return the new mid."""
        if dt_s <= 0:
            return self.mid
        rng = self._rng
        p = self.params
        sigma = self._sigma_s
        regime = self._regime
        if regime == JUMP:
            sigma *= p.jump_vol_multiplier
            dx = -p.reversion_per_s * (self._x - self._anchor) * dt_s
        elif regime == TRENDING:
            dx = self._drift_s * dt_s
        else:
            dx = -p.reversion_per_s * (self._x - self._anchor) * dt_s
        dx += sigma * math.sqrt(dt_s) * rng.gauss(0.0, 1.0)
        self._x += dx
        if self._jump_p_s > 0 and rng.random() < self._jump_p_s * dt_s:
            size = rng.expovariate(1.0 / p.jump_size) if p.jump_size > 0 else 0.0
            self.jump(size if rng.random() < 0.5 else -size)
            return self.mid
        self._left_s -= dt_s
        if self._left_s <= 0:
            if regime == JUMP:
                self._regime = self._after_jump
                self._anchor = self._x
                self._left_s = rng.expovariate(1.0 / (p.trending_mean_s if self._regime == TRENDING
                                                      else p.ranging_mean_s))
            else:
                self._next_regime()
        return p.start_price * math.exp(self._x)  # the mid, without the property call
