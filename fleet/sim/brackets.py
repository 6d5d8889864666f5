"""Notional and leverage brackets: how large a position a leverage allows, and its maintenance margin.

Binance splits each symbol's position notional into brackets (GET /fapi/v1/leverageBracket). A
bracket has a floor and a cap of notional, the highest initial leverage it allows and a maintenance
margin rate; its ``cum`` (maintenance amount) makes the maintenance margin continuous across the
floors: maintenance = notional x rate - cum, with cum(n) = cum(n-1) + floor(n) x (rate(n) - rate(n-1)).

What the simulator enforces with them, as Binance does:

- the leverage is at most the first bracket's (-4028 above it);
- the notional a leverage allows is the cap of the last bracket whose initial leverage is at least
  that leverage (``maxNotionalValue``); an order or amendment that would take the position and the
  orders resting on its side beyond it is refused with -2027, and so is a leverage whose allowance
  is below what the account already holds on a side;
- the maintenance margin of a position is that of the bracket its notional falls in, and so are
  the rate and ``cum`` of its liquidation price.

The default table is the one Binance published for BTCUSDT (125x up to 50,000, ..., 1x up to
500,000,000); a symbol may bring its own (``SymbolSpec.brackets``).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Sequence

# (notional cap, initial leverage, maintenance margin rate), lowest bracket first
DEFAULT_BRACKETS: tuple[tuple[str, int, str], ...] = (
    ("50000", 125, "0.004"),
    ("250000", 100, "0.005"),
    ("3000000", 50, "0.01"),
    ("20000000", 20, "0.025"),
    ("40000000", 10, "0.05"),
    ("100000000", 5, "0.1"),
    ("120000000", 4, "0.125"),
    ("200000000", 3, "0.15"),
    ("300000000", 2, "0.25"),
    ("500000000", 1, "0.5"),
)


@dataclass(frozen=True)
class Bracket:
    number: int
    floor: Decimal
    cap: Decimal
    initial_leverage: int
    rate: Decimal   # maintenance margin rate
    cum: Decimal

    def json(self) -> dict[str, Any]:
        return {"bracket": self.number, "initialLeverage": self.initial_leverage, "notionalCap": int(self.cap),
                "notionalFloor": int(self.floor), "maintMarginRatio": float(self.rate), "cum": float(self.cum)}


MAX_CAP = Decimal(10) ** 15   # notional: far above any real bracket (Binance's top ones are near 10^9)


def check_rows(rows: Sequence[tuple[str, int, str]]) -> None:
    """Raise ValueError naming what is wrong with a bracket table (config validation)."""
    if not rows:
        raise ValueError("a bracket table needs at least one bracket")
    prev_cap, prev_lev, prev_rate = Decimal(0), 126, Decimal(0)
    for n, (cap_s, lev, rate_s) in enumerate(rows, 1):
        try:
            cap, rate = Decimal(cap_s), Decimal(rate_s)
        except InvalidOperation:
            raise ValueError(f"bracket {n}: notional cap {cap_s!r} and maintenance rate {rate_s!r} must be "
                             "decimal strings") from None
        if not cap.is_finite() or not rate.is_finite() or cap > MAX_CAP:
            raise ValueError(f"bracket {n}: notional cap {cap_s!r} must be a finite decimal of at most {MAX_CAP:,}, "
                             f"maintenance rate {rate_s!r} finite")
        if cap <= prev_cap:
            raise ValueError(f"bracket {n}: notional cap {cap_s} must be above the bracket before's ({prev_cap})")
        if not 1 <= lev < prev_lev:
            raise ValueError(f"bracket {n}: initial leverage {lev} must be 1..125 and below the bracket before's")
        if not prev_rate < rate < 1:
            raise ValueError(f"bracket {n}: maintenance rate {rate_s} must be below 1 and above the bracket before's")
        prev_cap, prev_lev, prev_rate = cap, lev, rate


class Brackets:
    """One symbol's table."""

    def __init__(self, rows: Sequence[tuple[str, int, str]] = DEFAULT_BRACKETS) -> None:
        check_rows(rows)
        out: list[Bracket] = []
        floor, cum, rate_before = Decimal(0), Decimal(0), Decimal(0)
        for n, (cap_s, lev, rate_s) in enumerate(rows, 1):
            rate = Decimal(rate_s)
            cum += floor * (rate - rate_before)
            out.append(Bracket(n, floor, Decimal(cap_s), lev, rate, cum))
            floor, rate_before = Decimal(cap_s), rate
        self.rows = tuple(out)
        self.max_leverage = out[0].initial_leverage
        # the allowance of each leverage 1..max, in floats for the per-order check
        self._cap_f = [0.0] + [float(self.max_notional(lev)) for lev in range(1, self.max_leverage + 1)]

    def of(self, notional: Decimal) -> Bracket:
        """The bracket a position of ``notional`` (absolute) falls in; the last one beyond its cap."""
        n = abs(notional)
        for b in self.rows:
            if n < b.cap:
                return b
        return self.rows[-1]

    def maintenance(self, notional: Decimal) -> Decimal:
        b = self.of(notional)
        return max(abs(notional) * b.rate - b.cum, Decimal(0))

    def max_notional(self, leverage: int) -> Decimal:
        """The largest position (and same-side orders) ``leverage`` allows: 0 above the table's."""
        cap = Decimal(0)
        for b in self.rows:
            if b.initial_leverage >= leverage:
                cap = b.cap
        return cap

    def max_notional_f(self, leverage: int) -> float:
        return self._cap_f[leverage] if 0 < leverage <= self.max_leverage else 0.0

    def json(self) -> list[dict[str, Any]]:
        return [b.json() for b in self.rows]
