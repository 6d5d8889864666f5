"""The simulation's report and console table, from a synthetic run (seeded random walks, two symbols).

The report must open offline (plotly.js inlined once, nothing fetched), hold every chart of every
symbol by its id, the tuning table and the escaped advice, and stay a few MB for 48 h at 1 s samples.
"""

from __future__ import annotations

import numpy as np
from plotly.offline import get_plotlyjs

from simulate.report import CHART_NAMES, MAX_POINTS_PER_CHART, chart_id, envelope, render_report, write_report
from simulate.result import RunResult, Samples, SymbolResult
from simulate.table import format_table

CAP = 0.23
ADVICE = "worst long above 0.22 for 14.0 % of the time: raise <b>size_decay_k</b> 3.8 -> 4.1 & rerun"


def _samples(n: int, seed: int, step_ms: int = 1000, mid0: float = 3000.0) -> Samples:
    rng = np.random.default_rng(seed)
    mid = mid0 + np.cumsum(rng.normal(0.0, mid0 * 1e-4, n))
    position = np.clip(np.cumsum(rng.normal(0.0, 0.002, n)), -CAP, CAP)
    bid = mid - 0.3
    bid[n // 3: n // 3 + n // 50] = np.nan  # a stretch with no bid resting
    spread = np.cumsum(np.abs(rng.normal(0.0, 0.001, n)))
    inventory = np.cumsum(rng.normal(0.0, 0.002, n))
    funding = np.cumsum(rng.normal(0.0, 0.0002, n))
    fees = -np.cumsum(np.abs(rng.normal(0.0, 0.0003, n)))
    total = spread + inventory + funding + fees
    return Samples(
        t_ms=[1_700_000_000_000 + i * step_ms for i in range(n)],
        mid=mid.tolist(),
        bid_quote=[None if np.isnan(b) else float(b) for b in bid],
        ask_quote=(mid + 0.3).tolist(),
        position=position.tolist(),
        worst_long=np.minimum(position + 0.05, CAP).tolist(),
        worst_short=np.maximum(position - 0.05, -CAP).tolist(),
        pnl_spread=spread.tolist(), pnl_inventory=inventory.tolist(), pnl_funding=funding.tolist(),
        pnl_fees=fees.tolist(), pnl_total=total.tolist(),
        drawdown=(np.maximum.accumulate(total) - total).tolist(),
        orders_10s=rng.poisson(20, n).tolist(), orders_1m=rng.poisson(110, n).tolist(),
        weight_1m=rng.poisson(300, n).tolist(),
    )


def _table(scale: float) -> dict:
    return {
        "worst_long_max": 0.215, "worst_short_max": 0.19, "worst_long_above_share": 0.14,
        "worst_short_above_share": 0.031, "fills": 1234, "maker_fills": 1200, "grinds_per_hour": 2.5,
        "funding_per_day": -5.4321, "pnl_spread": 20.5 * scale, "pnl_inventory": -3.25, "pnl_funding": -1.5,
        "pnl_fees": -3.4044, "pnl_total": 12.3456 * scale, "max_drawdown": 4.75, "orders_per_min": 61.25,
        "amends_per_min": 40.5, "orders_10s_max": 150, "orders_1m_max": 700, "weight_1m_max": 1800,
        "unfilled_ratio": 0.925, "cancels_within_5s_share": 0.4, "position_max_abs": 0.2,
        "stream_drops": 3, "queue_wait_share": 0.25,  # keys the table does not name yet
    }


def _result(n: int, overrides: dict | None = None) -> RunResult:
    symbols = [
        SymbolResult(symbol=sym, params={"base_size": 0.007, "size_decay_k": 3.8, "funding": {"sensitivity": 2.2}},
                     cap=CAP, table=_table(scale), advice=advice, samples=_samples(n, seed, mid0=mid0))
        for sym, scale, advice, seed, mid0 in (("ETHUSDC", 1.0, [ADVICE], 1, 3000.0),
                                               ("BTCUSDT", 10.0, [], 2, 90000.0))
    ]
    return RunResult(seed=7, hours=n / 3600, overrides=overrides or {}, symbols=symbols,
                     events=123_456, wall_s=4.2)


def test_the_report_holds_every_chart_the_table_and_the_escaped_advice_and_opens_offline(tmp_path):
    path = write_report(_result(3000), tmp_path / "out.html", title="run <7>")
    page = path.read_text(encoding="utf-8")
    for sym in ("ETHUSDC", "BTCUSDT"):
        for name in CHART_NAMES:
            assert page.count(f'id="{chart_id(name, sym)}"') == 1, (name, sym)
        assert f'id="symbol-{sym}"' in page and f'id="table-{sym}"' in page
    assert {chart_id(n, "ETHUSDC") for n in CHART_NAMES} >= {"chart-price-ETHUSDC", "chart-worst-ETHUSDC"}
    assert page.count("Plotly.newPlot(") == 2 * len(CHART_NAMES)
    bundle = get_plotlyjs()
    assert page.count(bundle[:400]) == 1 and page.count(bundle[-400:]) == 1
    assert page.count("plotly.js v") == 1
    assert '<script src="http' not in page and 'src="http' not in page and "<link" not in page
    # the table: named figures, notes against the cap and the limits, keys it does not name
    for text in ("+12.3456", "+123.46", "14.0 %", "0.2150", "93.5 % of cap", "1,234", "-5.4321",
                 "of 300 / 10 s (50.0 %)", "of 2,400 / min (75.0 %)", "92.5 %", "stream drops", "25.0 %"):
        assert text in page, text
    assert "&lt;b&gt;size_decay_k&lt;/b&gt; 3.8 -&gt; 4.1 &amp; rerun" in page
    assert "<b>size_decay_k</b>" not in page
    assert "<title>run &lt;7&gt;</title>" in page and "run <7>" not in page
    assert "No tuning rule applied." in page  # BTCUSDT has no advice
    assert "seed 7" in page and "123,456" in page and "4.2" in page  # the run header
    assert 'id="sweep"' not in page
    assert len(page.encode()) < 6_500_000


def test_a_sweep_combination_gets_its_header():
    page = render_report(_result(500, {"size_decay_k": 4.1, "base_size": 0.008}))
    assert 'id="sweep"' in page and "base_size=0.008 size_decay_k=4.1" in page


def test_symbol_names_are_escaped_and_ids_stay_safe():
    result = _result(200)
    result.symbols[0].symbol = "ETH<USDC>"
    page = render_report(result)
    assert "ETH&lt;USDC&gt;" in page and "ETH<USDC>" not in page
    assert 'id="chart-price-ETH_USDC_"' in page


def test_a_run_without_samples_still_has_its_charts():
    result = _result(10)
    result.symbols[0].samples = Samples()
    page = render_report(result)
    assert all(f'id="{chart_id(name, "ETHUSDC")}"' in page for name in CHART_NAMES)


def test_a_48_hour_run_at_1_s_samples_stays_a_few_mb(tmp_path):
    path = write_report(_result(48 * 3600), tmp_path / "48h.html")
    size = path.stat().st_size
    assert size < 8_000_000, size


def test_the_envelope_keeps_peaks_and_troughs_within_its_budget():
    n = 48 * 3600
    x = np.arange(n, dtype=float)
    y = np.zeros(n)
    y[100_001], y[150_007] = 5.0, -3.0
    y[10_000:12_000] = np.nan
    xs, ys = envelope(x, y, MAX_POINTS_PER_CHART)
    assert len(xs) <= MAX_POINTS_PER_CHART and np.all(np.diff(xs) > 0)
    assert np.nanmax(ys) == 5.0 and np.nanmin(ys) == -3.0
    assert 100_001.0 in xs and 150_007.0 in xs
    assert np.isnan(ys).any()  # a bucket with nothing resting stays a gap
    short = np.arange(10.0)
    assert envelope(short, short, 100)[1] is short


def test_the_console_table_has_each_symbol_its_figures_and_advice_and_no_wall_time():
    result = _result(300, {"size_decay_k": 4.1})
    text = format_table(result)
    for part in ("ETHUSDC", "BTCUSDT", "seed 7", "sweep: size_decay_k=4.1", "P&L total", "+12.3456", "+123.46",
                 "14.0 %", "93.5 % of cap", "of 1,200 / min", "stream drops", "- " + ADVICE,
                 "advice: none (no tuning rule applied)"):
        assert part in text, part
    assert " 4.7500" in text and "+4.7500" not in text  # a drawdown is a size, not a signed P&L
    result.wall_s = 99.0
    assert format_table(result) == text  # two runs of one seed print the same table
    block = text.split("\n\n")[1].splitlines()
    ends = {line.index(value) + len(value) for line in block
            for value in ("+12.3456", "1,234", "0.2150") if f" {value} " in line or line.endswith(f" {value}")}
    assert len(ends) == 1, block  # the values' column is right-aligned
