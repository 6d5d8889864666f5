"""The seed's tuning procedure as rules over a run's table, in the seed's order.

The seed ("run 48 hours and look at..."): worst case long often above 0.22 of a 0.23 cap -> raise
``size_decay_k`` (3.8 -> 4.1); profit too low -> raise ``base_size`` (0.007 -> 0.008); funding losing
more than 5 USDC a day -> raise ``funding.sensitivity`` (2.2 -> 2.6); grinding eating the fees ->
lower ``grind_size_pct`` (0.075 -> 0.055). The thresholds the seed leaves open are stated here.
"""

from __future__ import annotations

from typing import Any

# "often": the worst case above the alert line for more than this share of the run.
OFTEN_SHARE = 0.05
# funding: "losing more than 5 USDC a day".
FUNDING_LOSS_PER_DAY = 5.0
# "profit too low": the total P&L per day at or below this, while the worst case kept its headroom
# (never above the alert line), so there is room for larger orders.
PROFIT_FLOOR_PER_DAY = 0.0


def _get(params: dict[str, Any], path: str) -> Any:
    node: Any = params
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _pct(x: float) -> str:
    return f"{100.0 * x:.1f} %"


def advice(table: dict[str, Any], params: dict[str, Any], cap: float) -> list[str]:
    """The rules that apply, as sentences naming the figure, the parameter and the step the seed takes."""
    out: list[str] = []
    share = max(table.get("worst_long_above_share", 0.0), table.get("worst_short_above_share", 0.0))
    side = "long" if table.get("worst_long_above_share", 0.0) >= table.get("worst_short_above_share", 0.0) else "short"
    k = _get(params, "worst_case.size_decay_k")
    if share > OFTEN_SHARE:
        out.append(f"worst case {side} above 0.22/0.23 of the cap for {_pct(share)} of the time: raise "
                   f"size_decay_k ({k} -> {round(k * 4.1 / 3.8, 2) if k else '+8 %'})")
    hours = table.get("hours") or 0.0
    per_day = table.get("pnl_total", 0.0) / (hours / 24.0) if hours else None
    base = _get(params, "base.base_size")
    if per_day is not None and per_day <= PROFIT_FLOOR_PER_DAY and share == 0.0 and table.get("fills", 0) > 0:
        # (a run without a fill says nothing of the profit: one too short to quote was told to raise base_size)
        out.append(f"profit {per_day:+.2f} a day with the worst case never above the alert line: raise "
                   f"base_size ({base} -> {round(base * 8 / 7, 6) if base else '+14 %'})")
    funding = table.get("funding_per_day", 0.0)
    sens = _get(params, "funding.sensitivity")
    if funding < -FUNDING_LOSS_PER_DAY:
        out.append(f"funding {funding:+.2f} a day (losing more than {FUNDING_LOSS_PER_DAY:g}): raise "
                   f"funding.sensitivity ({sens} -> {round(sens * 2.6 / 2.2, 2) if sens else '+18 %'})")
    taker_fees = table.get("taker_fees", 0.0)
    saved = table.get("grind_cost_saved", 0.0)
    pct = _get(params, "grinding.grind_size_pct")
    if table.get("grinds_per_hour", 0.0) > 0 and taker_fees > saved:
        out.append(f"grinding's market orders paid {taker_fees:.4f} in fees against {saved:.4f} saved: lower "
                   f"grind_size_pct ({pct} -> {round(pct * 0.055 / 0.075, 4) if pct else '-27 %'})")
    return out
