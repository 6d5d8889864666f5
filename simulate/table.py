"""The tuning table of a simulated run, as console text; its rows are shared with the HTML report.

Pure: a :class:`~simulate.result.RunResult` in, strings out. ``TABLE_FIELDS`` names the figures the
run computes, in the order shown, with how each is formatted; a key of ``SymbolResult.table`` that it
does not name is still shown, after them, formatted by what its name and value look like.

``format_table`` prints nothing that varies between two runs of one seed (no wall-clock seconds), so
the determinism test can compare its text.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

from simulate.result import (
    ORDERS_PER_10S,
    ORDERS_PER_MIN,
    WEIGHT_PER_MIN,
    WORST_CASE_ALERT_SHARE,
    RunResult,
    SymbolResult,
)


@dataclass(frozen=True)
class Field:
    """One figure of the table: its key, its label, how to format it, what to set it against."""

    key: str
    label: str
    kind: str  # size | share | count | rate | money (signed) | amount (money, unsigned) | plain
    against: str | None = None  # "cap", "alert", or a limit: "10s", "1m", "w1m"


TABLE_FIELDS: tuple[Field, ...] = (
    Field("worst_long_max", "worst case long, highest", "size", "cap"),
    Field("worst_short_max", "worst case short, highest", "size", "cap"),
    Field("worst_long_above_share", "time worst long above alert", "share", "alert"),
    Field("worst_short_above_share", "time worst short above alert", "share", "alert"),
    Field("position_max_abs", "position, largest", "size", "cap"),
    Field("fills", "fills", "count"),
    Field("maker_fills", "maker fills", "count"),
    Field("grinds_per_hour", "grinds per hour", "rate"),
    Field("funding_per_day", "funding P&L per day", "money"),
    Field("pnl_spread", "P&L spread capture", "money"),
    Field("pnl_inventory", "P&L inventory", "money"),
    Field("pnl_funding", "P&L funding", "money"),
    Field("pnl_fees", "P&L fees", "money"),
    Field("pnl_total", "P&L total", "money"),
    Field("max_drawdown", "max drawdown", "amount"),
    Field("orders_per_min", "orders per minute", "rate"),
    Field("amends_per_min", "amends per minute", "rate"),
    Field("orders_10s_max", "orders in 10 s, highest", "count", "10s"),
    Field("orders_1m_max", "orders in 1 min, highest", "count", "1m"),
    Field("weight_1m_max", "weight in 1 min, highest", "count", "w1m"),
    Field("unfilled_ratio", "unfilled ratio", "share"),
    Field("cancels_within_5s_share", "cancels within 5 s of placing", "share"),
)
_BY_KEY = {f.key: f for f in TABLE_FIELDS}
_LIMITS = {"10s": (ORDERS_PER_10S, "10 s"), "1m": (ORDERS_PER_MIN, "min"), "w1m": (WEIGHT_PER_MIN, "min")}


def field_of(key: str, value: Any) -> Field:
    """The field of a key: the named one, or one guessed from the key and value (the table may grow)."""
    if key in _BY_KEY:
        return _BY_KEY[key]
    label = key.replace("_", " ")
    if key.endswith(("_share", "_ratio")):
        return Field(key, label, "share")
    if "drawdown" in key:
        return Field(key, label, "amount")
    if key.startswith("pnl_") or "funding" in key or "fee" in key:
        return Field(key, label, "money")
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return Field(key, label, "count")
    return Field(key, label, "rate" if key.endswith(("per_min", "per_hour", "per_day")) else "plain")


def money(value: float, sign: bool = True) -> str:
    """Money: 4 decimals below 100 in size, 2 from there (e.g. +0.1234, -1,234.57), signed or not."""
    return f"{value:{'+' if sign else ''},.{4 if abs(value) < 100 else 2}f}"


def format_value(field: Field, value: Any) -> str:
    """One value as the table shows it; None, NaN and text shown as they are."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return str(value)
    if not math.isfinite(value):
        return str(value)
    if field.kind == "size":
        return f"{value:,.4f}"
    if field.kind == "share":
        return f"{value * 100:.1f} %"
    if field.kind == "count":
        return f"{round(value):,}"
    if field.kind == "rate":
        return f"{value:,.2f}"
    if field.kind in ("money", "amount"):
        return money(value, sign=field.kind == "money")
    return f"{value:,}" if isinstance(value, numbers.Integral) else f"{value:,.6g}"


def _note(field: Field, value: Any, cap: float) -> str:
    """What a value is set against: a share of the cap, the alert line, a Binance limit."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or field.against is None:
        return ""
    if not math.isfinite(value):
        return ""
    if field.against == "cap":
        return f"{abs(value) / cap * 100:.1f} % of cap" if cap > 0 else ""
    if field.against == "alert":
        return f"of the time above {WORST_CASE_ALERT_SHARE * cap:,.4f} ({WORST_CASE_ALERT_SHARE * 100:.1f} % of cap)"
    limit, per = _LIMITS[field.against]
    return f"of {limit:,} / {per} ({value / limit * 100:.1f} %)"


def table_rows(sym: SymbolResult) -> list[tuple[str, str, str]]:
    """The table of one symbol as (label, value, note) rows: the named fields first, then the rest."""
    keys = [f.key for f in TABLE_FIELDS if f.key in sym.table]
    keys += [k for k in sym.table if k not in _BY_KEY]
    rows = []
    for key in keys:
        value = sym.table[key]
        field = field_of(key, value)
        rows.append((field.label, format_value(field, value), _note(field, value, sym.cap)))
    return rows


def run_line(result: RunResult) -> str:
    """The run in one line, without wall-clock time: seed, simulated hours, events."""
    return f"seed {result.seed}, {result.hours:g} h simulated, {result.events:,} events"


def overrides_line(result: RunResult) -> str:
    """The sweep combination, e.g. ``base_size=0.008 size_decay_k=4.1`` ('' for a plain run)."""
    return " ".join(f"{k}={v}" for k, v in sorted(result.overrides.items()))


def _symbol_block(sym: SymbolResult) -> list[str]:
    rows = table_rows(sym)
    wl = max((len(label) for label, _, _ in rows), default=0)
    wv = max((len(value) for _, value, _ in rows), default=0)
    lines = [f"{sym.symbol}  (cap {sym.cap:,.4f})"]
    lines += [f"  {label:<{wl}}  {value:>{wv}}  {note}".rstrip() for label, value, note in rows]
    if sym.advice:
        lines.append("  advice:")
        lines += [f"    - {sentence}" for sentence in sym.advice]
    else:
        lines.append("  advice: none (no tuning rule applied)")
    return lines


REPLAY_COUNTS = ("malformed", "duplicates", "out_of_order", "cut_short", "gaps", "missing_files", "empty_files",
                 "recorder_reconnects", "recorder_malformed")


def replay_line(view: dict[str, Any]) -> str:
    """What the replayed recording's reader skipped or found missing (each also logged with its file)."""
    said = [f"{view[k]:,} {k.replace('_', ' ')}" for k in REPLAY_COUNTS if view.get(k)]
    return (f"replay: {view.get('lines_applied', 0):,} recorded lines of {view.get('directory')}; "
            + (", ".join(said) if said else "nothing skipped, no gap over a minute"))


def format_table(result: RunResult) -> str:
    """The console table: the run's line, the sweep combination if any, one block per symbol."""
    lines = [run_line(result)]
    if result.overrides:
        lines.append(f"sweep: {overrides_line(result)}")
    if result.replay is not None:
        lines.append(replay_line(result.replay))
    for sym in result.symbols:
        lines.append("")
        lines += _symbol_block(sym)
    return "\n".join(lines) + "\n"
