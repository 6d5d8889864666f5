"""A parameter sweep: one simulated run per combination, as Ray tasks on a running cluster.

Each task runs :func:`simulate.run.simulate` in a Ray worker with the combination's overrides; a
combination's numbers do not depend on where it ran (the run is deterministic per seed), so the
sweep's rows equal serial runs. The caller connects to Ray (``fleet.ops.simulate_cli`` starts a
loopback-only local cluster when no address is given). Rows are sorted by an objective: a table key
summed over the symbols (e.g. ``pnl_total``, or ``worst_long_above_share`` with ``minimize``).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

from simulate.result import RunResult
from simulate.run import RunOptions


def run_one(config_path: str, opts: RunOptions, overrides: dict[str, Any]) -> RunResult:
    """One combination (the body of a Ray task; also the serial path)."""
    from fleet.config import load_fleet_config
    from simulate.run import simulate

    cfg = load_fleet_config(config_path)
    return simulate(cfg, config_path, dataclasses.replace(opts, progress=None), overrides)


def _run_one_in_background(config_path: str, opts: RunOptions, overrides: dict[str, Any]) -> RunResult:
    """One combination as a Ray task, in the background CPU class (``fleet/sched.py``): a sweep on the
    running cluster yields every core to the fleet's kill path and shares with the agents by weight."""
    from fleet.sched import run_in_background

    run_in_background()
    return run_one(config_path, opts, overrides)


def run_sweep(config_path: str | Path, opts: RunOptions, combos: list[dict[str, Any]], *,
              on_done: Callable[[RunResult], None] | None = None) -> list[RunResult]:
    """Every combination as a Ray task (one CPU each); results in the order of ``combos``."""
    import ray

    # max_calls=1: the worker leaves with its task, so no later task of this job inherits its CPU class
    task = ray.remote(num_cpus=1, max_retries=0, max_calls=1)(_run_one_in_background)
    refs = [task.remote(str(config_path), dataclasses.replace(opts, progress=None), combo) for combo in combos]
    index = {ref: i for i, ref in enumerate(refs)}
    results: list[RunResult | None] = [None] * len(refs)
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for ref in done:
            r = ray.get(ref)
            results[index[ref]] = r
            if on_done is not None:
                on_done(r)
    return [r for r in results if r is not None]


# The figures of a symbol's table (simulate/observe.py's, then simulate/run.py's counters) a sweep may be
# sorted by; tests/simulate/test_simulate.py holds it to a run's table.
OBJECTIVES = frozenset({
    "hours", "worst_long_max", "worst_short_max", "worst_long_above_share", "worst_short_above_share", "fills",
    "maker_fills", "grinds_per_hour", "funding_per_day", "pnl_spread", "pnl_inventory", "pnl_funding", "pnl_fees",
    "pnl_total", "max_drawdown", "orders_per_min", "amends_per_min", "orders_10s_max", "orders_1m_max",
    "weight_1m_max", "unfilled_ratio", "cancels_within_5s_share", "position_max_abs", "taker_fees",
    "grind_cost_saved", "open_orders_after_stop", "user_stream_reconnects", "market_stream_reconnects", "resyncs",
    "unknown_outcomes", "unknown_outcomes_resolved", "listen_key_expired", "stale_market_pulls",
    "reconcile_repairs", "owner_asks", "margin_holds", "margin_calls", "liquidations", "quote_cycles",
    "stream_connections", "warnings_logged", "errors_logged",
})


def objective_of(result: RunResult, key: str) -> float:
    """``key`` summed over the run's symbols; a key no symbol has is an error naming the keys."""
    values = [s.table[key] for s in result.symbols if key in s.table]
    if not values and result.symbols:
        raise KeyError(f"no table key {key!r}; keys: {', '.join(sorted(result.symbols[0].table))}")
    return float(sum(values))


def rank(results: list[RunResult], key: str, minimize: bool = False) -> list[RunResult]:
    return sorted(results, key=lambda r: objective_of(r, key), reverse=not minimize)


def sweep_table(results: list[RunResult], key: str) -> str:
    """One row per combination: its overrides and the headline figures, best first."""
    if not results:
        return "(no runs)"
    names = sorted({k for r in results for k in r.overrides})
    heads = names + [key, "pnl_total", "worst_long_max", "worst_long_above", "fills", "wall_s"]
    rows = []
    for r in results:
        rows.append([str(r.overrides.get(n, "")) for n in names] + [
            f"{objective_of(r, key):.6g}", f"{objective_of(r, 'pnl_total'):+.4f}",
            f"{max((s.table['worst_long_max'] for s in r.symbols), default=0.0):.4f}",
            f"{100 * max((s.table['worst_long_above_share'] for s in r.symbols), default=0.0):.1f} %",
            str(sum(s.table["fills"] for s in r.symbols)), f"{r.wall_s:.1f}"])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(heads)]
    line = "  ".join(h.rjust(w) for h, w in zip(heads, widths))
    return "\n".join([line, "-" * len(line)] + ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in rows])
