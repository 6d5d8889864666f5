"""What a simulated run produces: per symbol, a tuning table and columnar time series; plain data.

The run (``simulate.run``) fills these; the console table (``simulate.table``) and the HTML report
(``simulate.report``) read them. Every value is a plain float/int/str so a result crosses Ray and
JSON unchanged. Money is in the margin asset (e.g. USDC), sizes in base units.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Binance USD-M account limits the order rate is shown against: Binance's defaults, the simulator's in a run
# (fleet/binance/ratelimit.py holds the same; an account held to its own lower ones is not simulated).
ORDERS_PER_10S = 300
ORDERS_PER_MIN = 1200
WEIGHT_PER_MIN = 2400

# The seed's tuning threshold: "highest mm_worst_case_long often above 0.22" with a 0.23 cap
# (net_max 0.20 x multiplier 1.15); as a share of any cap.
WORST_CASE_ALERT_SHARE = 0.22 / 0.23


@dataclass
class Samples:
    """One row per sample interval of simulated time (columns of equal length).

    ``bid_quote`` / ``ask_quote`` are the ladder's inner (best) resting prices, None when that side
    rests nothing. ``drawdown`` is the fall of ``pnl_total`` from its running peak (>= 0). The order
    columns count what the agent sent in the window ending at the row: new orders + amends in the
    last 10 s and the last 60 s, and the request weight of the last 60 s.
    """

    t_ms: list[int] = field(default_factory=list)
    mid: list[float] = field(default_factory=list)
    bid_quote: list[float | None] = field(default_factory=list)
    ask_quote: list[float | None] = field(default_factory=list)
    position: list[float] = field(default_factory=list)
    worst_long: list[float] = field(default_factory=list)
    worst_short: list[float] = field(default_factory=list)
    pnl_spread: list[float] = field(default_factory=list)
    pnl_inventory: list[float] = field(default_factory=list)
    pnl_funding: list[float] = field(default_factory=list)
    pnl_fees: list[float] = field(default_factory=list)  # fees paid, as a negative P&L
    pnl_total: list[float] = field(default_factory=list)
    drawdown: list[float] = field(default_factory=list)
    orders_10s: list[int] = field(default_factory=list)
    orders_1m: list[int] = field(default_factory=list)
    weight_1m: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.t_ms)


@dataclass
class SymbolResult:
    """One symbol's run: its parameters, the tuning table, the advice, the series."""

    symbol: str
    params: dict[str, Any]  # the SymbolParams as applied (model_dump)
    cap: float  # the worst-case cap (net_max x worst_case.multiplier), base units
    table: dict[str, Any]  # see simulate.table.TABLE_FIELDS
    advice: list[str]  # the tuning rules that applied, as sentences
    samples: Samples


@dataclass
class RunResult:
    """A whole run: what was asked and what each symbol did."""

    seed: int
    hours: float
    overrides: dict[str, Any]  # parameter overrides of a sweep combination ({} for a plain run)
    symbols: list[SymbolResult]
    events: int  # exchange events processed (market steps, frames, requests)
    wall_s: float  # wall-clock seconds the run took (not part of determinism)
    log_tail: list[str] = field(default_factory=list)  # the agents' last warnings and errors (at most 20)
    replay: dict[str, Any] | None = None  # a replayed recording: what its reader skipped (ReplayMarket.view)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
