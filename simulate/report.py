"""The HTML report of a simulated run: ``python -m fleet simulate --report out.html``.

Pure: a :class:`~simulate.result.RunResult` in, one self-contained file out. The page holds the run's
header, the sweep combination (if any), and per symbol the tuning table (``simulate.table``'s rows),
the advice and six plotly charts: price with the ladder's inner quotes, position against the cap,
worst case against the cap and the alert line, P&L by component, drawdown, order rate against
Binance's limits. plotly.js is inlined once, in the head, so the file opens offline; every chart is a
``<div>`` whose id names it (``chart-<name>-<SYMBOL>``) and a ``Plotly.newPlot`` call.

Long series are downsampled to at most ``MAX_POINTS_PER_CHART`` points per chart by a min/max
envelope (see :func:`envelope`): the highest worst case or the deepest drawdown of a 48 h run stays
on the chart, which a plain stride could skip. Every string of the run put into the page (symbols,
parameters, advice, the title) goes through ``html.escape``; the figures' JSON is escaped by plotly.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import plotly
import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from simulate.result import (
    ORDERS_PER_10S,
    ORDERS_PER_MIN,
    WEIGHT_PER_MIN,
    WORST_CASE_ALERT_SHARE,
    RunResult,
    SymbolResult,
)
from simulate.table import overrides_line, run_line, table_rows

MAX_POINTS_PER_CHART = 5000  # shared by the chart's sampled series (a constant line costs 2)
CHART_NAMES = ("price", "position", "worst", "pnl", "drawdown", "orders")
_CONFIG = {"responsive": True, "displaylogo": False}
_HEIGHT = 340
_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.2em; border-top: 1px solid #ccc; padding-top: .8em; }
table { border-collapse: collapse; margin: .5em 0; }
td, th { padding: 2px 10px; text-align: left; border-bottom: 1px solid #eee; }
td.v { text-align: right; font-variant-numeric: tabular-nums; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(560px, 1fr)); gap: 8px; }
.chart { height: 340px; }
.advice li { margin: .2em 0; }
"""


def envelope(x: np.ndarray, y: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` of (x, y): per bucket of consecutive samples, its lowest and its highest.

    The series is cut into ``max_points // 2`` equal buckets; each keeps the rows of its minimum and
    its maximum, in time order (one row when they coincide), so peaks and troughs survive. NaN (a
    side that rests nothing) is skipped; a bucket of NaN only keeps one NaN row, a gap in the line.
    """
    n = len(y)
    if n <= max_points:
        return x, y
    buckets = max(1, max_points // 2)
    size = math.ceil(n / buckets)
    padded = np.concatenate([y, np.full(buckets * size - n, np.nan)]).reshape(buckets, size)
    nan = np.isnan(padded)
    lo = np.argmin(np.where(nan, np.inf, padded), axis=1)
    hi = np.argmax(np.where(nan, -np.inf, padded), axis=1)
    base = np.arange(buckets) * size
    idx = np.unique(np.concatenate([base + lo, base + hi]))
    idx = idx[idx < n]
    return x[idx], y[idx]


def _column(values: Sequence[float | None]) -> np.ndarray:
    return np.array(values, dtype=float)  # None -> NaN


def _hours(sym: SymbolResult) -> np.ndarray:
    t = np.array(sym.samples.t_ms, dtype=float)
    return (t - t[0]) / 3_600_000.0 if len(t) else t


def _span(x: np.ndarray, hours: float) -> list[float]:
    return [float(x[0]), float(x[-1])] if len(x) else [0.0, float(hours)]


def _series(fig: go.Figure, x: np.ndarray, columns: list[tuple[str, Sequence[Any], str]], **kw: Any) -> None:
    """Add sampled series (name, values, colour) sharing the chart's point budget."""
    per = max(2, MAX_POINTS_PER_CHART // max(1, len(columns)))
    for name, values, color in columns:
        xs, ys = envelope(x, _column(values), per)
        fig.add_trace(go.Scatter(x=xs, y=ys, name=name, mode="lines", line={"color": color, "width": 1.3}, **kw))


def _level(fig: go.Figure, span: list[float], y: float, name: str, color: str) -> None:
    """A constant line (cap, alert, limit) across the run, shown in the legend."""
    fig.add_trace(go.Scatter(x=span, y=[y, y], name=name, mode="lines", hoverinfo="name+y",
                             line={"color": color, "width": 1, "dash": "dash"}))


def _figure(title: str, y_title: str) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(title={"text": title, "x": 0.01}, template="plotly_white", height=_HEIGHT,
                      margin={"l": 60, "r": 20, "t": 40, "b": 40}, hovermode="x unified",
                      legend={"orientation": "h", "y": -0.18}, xaxis_title="simulated hours",
                      yaxis_title=y_title)
    return fig


def _charts(sym: SymbolResult, hours: float) -> dict[str, go.Figure]:
    """The six figures of one symbol, by chart name."""
    s, cap, name = sym.samples, sym.cap, html.escape(sym.symbol)
    x = _hours(sym)
    span = _span(x, hours)
    alert = WORST_CASE_ALERT_SHARE * cap
    figs = {}
    figs["price"] = fig = _figure(f"{name}: mid and the ladder's inner quotes", "price")
    _series(fig, x, [("mid", s.mid, "#444"), ("inner bid", s.bid_quote, "#2a9d55"),
                     ("inner ask", s.ask_quote, "#d1495b")], connectgaps=False)
    figs["position"] = fig = _figure(f"{name}: position against the cap", "base units")
    _series(fig, x, [("position", s.position, "#3366cc")])
    _level(fig, span, cap, f"+cap {cap:g}", "#d1495b")
    _level(fig, span, -cap, f"-cap {-cap:g}", "#d1495b")
    figs["worst"] = fig = _figure(f"{name}: worst case against the cap", "base units")
    _series(fig, x, [("worst long", s.worst_long, "#2a9d55"), ("worst short", s.worst_short, "#d1495b")])
    _level(fig, span, cap, f"cap {cap:g}", "#000")
    _level(fig, span, -cap, f"-cap {-cap:g}", "#000")
    _level(fig, span, alert, f"alert {alert:.4g} ({WORST_CASE_ALERT_SHARE:.1%} of cap)", "#f28e2b")
    _level(fig, span, -alert, f"-alert {-alert:.4g}", "#f28e2b")
    figs["pnl"] = fig = _figure(f"{name}: P&L by component", "margin asset")
    _series(fig, x, [("spread", s.pnl_spread, "#2a9d55"), ("inventory", s.pnl_inventory, "#3366cc"),
                     ("funding", s.pnl_funding, "#9467bd"), ("fees", s.pnl_fees, "#d1495b"),
                     ("total", s.pnl_total, "#000")])
    figs["drawdown"] = fig = _figure(f"{name}: drawdown from the P&L's peak", "margin asset")
    _series(fig, x, [("drawdown", s.drawdown, "#d1495b")], fill="tozeroy")
    figs["orders"] = fig = _figure(f"{name}: order rate against Binance's limits", "count / weight")
    _series(fig, x, [("orders in 10 s", s.orders_10s, "#3366cc"), ("orders in 1 min", s.orders_1m, "#2a9d55"),
                     ("weight in 1 min", s.weight_1m, "#f28e2b")])
    _level(fig, span, ORDERS_PER_10S, f"limit {ORDERS_PER_10S} / 10 s", "#3366cc")
    _level(fig, span, ORDERS_PER_MIN, f"limit {ORDERS_PER_MIN} / min", "#2a9d55")
    _level(fig, span, WEIGHT_PER_MIN, f"limit {WEIGHT_PER_MIN} weight / min", "#f28e2b")
    return figs


def chart_id(name: str, slug: str) -> str:
    """The HTML id of one chart, e.g. ``chart-price-ETHUSDC``."""
    return f"chart-{name}-{slug}"


def _slugs(symbols: Sequence[str]) -> list[str]:
    """Each symbol as an id-safe word ([A-Za-z0-9_-]), unique within the page."""
    seen: set[str] = set()
    out = []
    for symbol in symbols:
        slug = re.sub(r"[^A-Za-z0-9_-]", "_", symbol) or "symbol"
        base, i = slug, 2
        while slug in seen:
            slug, i = f"{base}-{i}", i + 1
        seen.add(slug)
        out.append(slug)
    return out


def _chart_div(fig: go.Figure, div_id: str) -> str:
    return pio.to_html(fig, include_plotlyjs=False, full_html=False, div_id=div_id, config=_CONFIG,
                       default_height=_HEIGHT, default_width="100%", validate=False)


def _rows_html(rows: Sequence[tuple[str, ...]], cls: str = "") -> str:
    body = "".join(
        "<tr>" + "".join(f'<td class="{"v" if i == 1 else ""}">{html.escape(str(c))}</td>' for i, c in enumerate(row))
        + "</tr>\n" for row in rows)
    return f'<table class="{cls}">\n{body}</table>\n'


def _flat(params: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Nested parameters as (dotted key, value) rows."""
    out: list[tuple[str, str]] = []
    for key, value in params.items():
        if isinstance(value, dict):
            out += _flat(value, f"{prefix}{key}.")
        else:
            out.append((f"{prefix}{key}", str(value)))
    return out


def _advice_html(sym: SymbolResult, slug: str) -> str:
    if not sym.advice:
        return f'<p id="advice-{slug}" class="advice">No tuning rule applied.</p>\n'
    items = "".join(f"<li>{html.escape(sentence)}</li>\n" for sentence in sym.advice)
    return f'<ul id="advice-{slug}" class="advice">\n{items}</ul>\n'


def _symbol_html(sym: SymbolResult, slug: str, hours: float) -> str:
    """One symbol's section: heading, tuning table, advice, parameters, the six charts."""
    name = html.escape(sym.symbol)
    parts = [f'<section id="symbol-{slug}">\n<h2>{name} <small>(cap {sym.cap:,.4f})</small></h2>\n',
             f'<div id="table-{slug}">', _rows_html(table_rows(sym), "tuning"), "</div>\n",
             "<h3>Advice</h3>\n", _advice_html(sym, slug)]
    if sym.params:
        parts += ["<details><summary>Parameters as applied</summary>\n",
                  _rows_html(_flat(sym.params), "params"), "</details>\n"]
    figs = _charts(sym, hours)
    parts.append('<div class="charts">\n')
    parts += [f'<div class="chart">{_chart_div(figs[n], chart_id(n, slug))}</div>\n' for n in CHART_NAMES]
    parts.append("</div>\n</section>\n")
    return "".join(parts)


def _header_html(result: RunResult, slugs: Sequence[str]) -> str:
    """The run header (seed, hours, events, wall seconds), the sweep combination, the symbols' links."""
    wall = result.wall_s
    rows = [("seed", str(result.seed)), ("simulated hours", f"{result.hours:g}"),
            ("events", f"{result.events:,}"), ("wall seconds", f"{wall:,.1f}")]
    if wall > 0:
        rows += [("simulated hours per wall second", f"{result.hours / wall:,.2f}"),
                 ("events per wall second", f"{result.events / wall:,.0f}")]
    parts = [f'<section id="run">\n<p>{html.escape(run_line(result))}</p>\n', _rows_html(rows, "run"), "</section>\n"]
    if result.overrides:
        sweep = [(str(k), str(v)) for k, v in sorted(result.overrides.items())]
        parts += ['<section id="sweep">\n<h2>Sweep combination</h2>\n',
                  f"<p><code>{html.escape(overrides_line(result))}</code></p>\n",
                  _rows_html(sweep, "sweep"), "</section>\n"]
    links = " | ".join(f'<a href="#symbol-{slug}">{html.escape(sym.symbol)}</a>'
                       for sym, slug in zip(result.symbols, slugs))
    parts.append(f"<nav>{links}</nav>\n")
    return "".join(parts)


def render_report(result: RunResult, *, title: str | None = None) -> str:
    """The whole page as one string: plotly.js once in the head, then the header and the symbols."""
    title = title or f"mmfleet simulation: seed {result.seed}, {result.hours:g} h"
    slugs = _slugs([sym.symbol for sym in result.symbols])
    sections = "".join(_symbol_html(sym, slug, result.hours) for sym, slug in zip(result.symbols, slugs))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n"
        f'<script type="text/javascript">{get_plotlyjs()}</script>\n</head>\n<body>\n'
        f"<h1>{html.escape(title)}</h1>\n{_header_html(result, slugs)}{sections}"
        f"<footer><small>charts: plotly {html.escape(plotly.__version__)}, inlined; each series at most "
        f"{MAX_POINTS_PER_CHART:,} points per chart (min/max envelope)</small></footer>\n"
        "</body>\n</html>\n"
    )


def write_report(result: RunResult, path: str | Path, *, title: str | None = None) -> Path:
    """Write the report of ``result`` to ``path`` (UTF-8, one offline file); return the path."""
    out = Path(path)
    out.write_text(render_report(result, title=title), encoding="utf-8")
    return out
