"""Builds the fleet's Grafana dashboard, configs/grafana/mmfleet.json, with grafana-foundation-sdk.

    .venv/bin/python configs/grafana/build.py            # write mmfleet.json
    .venv/bin/python configs/grafana/build.py --check    # exit 1 if mmfleet.json is not what this builds

The JSON is committed (provisioning and import read it); tests/controller/test_dashboard.py checks it
is up to date and runs every query against a real Prometheus scraping a live fleet. Queries use only
the series the fleet endpoint serves (agents/metrics.py, controller/federation.py) and the variables
``$fleet``, ``$symbol`` (multi-value, regex-matched) and Grafana's ``$__rate_interval``.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.builders.common import GraphThresholdsStyleConfig, ReduceDataOptions, VizLegendOptions
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.common import (
    BigValueColorMode,
    BigValueGraphMode,
    GraphThresholdsStyleMode,
    LegendDisplayMode,
    LegendPlacement,
)
from grafana_foundation_sdk.models.dashboard import (
    DashboardCursorSync,
    DataSourceRef,
    Threshold,
    ThresholdsMode,
    VariableRefresh,
    VariableSort,
)

OUT = Path(__file__).resolve().parent / "mmfleet.json"
UID = "mmfleet-fleet"
DS = DataSourceRef(type_val="prometheus", uid="${datasource}")

FLEET = 'fleet=~"$fleet"'
SYM = FLEET + ',symbol=~"$symbol"'   # every series of the merged page carries its fleet and its symbol
RI = "$__rate_interval"


@dataclass(frozen=True)
class Q:
    """One query: PromQL and its legend."""

    expr: str
    legend: str = "{{symbol}}"


@dataclass(frozen=True)
class P:
    """One panel: ``kind`` is "stat" or "ts"; ``w``/``h`` on Grafana's 24-column grid."""

    title: str
    queries: tuple[Q, ...]
    description: str = ""
    kind: str = "ts"
    unit: str = "short"
    w: int = 8
    h: int = 8
    # (value, color) steps after the base green; for a time series drawn as lines at those values
    thresholds: tuple[tuple[float, str], ...] = ()
    min: float | None = None
    max: float | None = None
    decimals: int | None = None
    stack: bool = False


@dataclass(frozen=True)
class Row:
    title: str
    panels: tuple[P, ...] = field(default_factory=tuple)


def pnl(sel: str) -> str:
    """A symbol's P&L as the store books it: realized + funding - commission + unrealized."""
    return (
        f"mm_realized_pnl{{{sel}}} + mm_funding_pnl_acc{{{sel}}}"
        f" - mm_commission{{{sel}}} + mm_unrealized_pnl{{{sel}}}"
    )


ROWS: tuple[Row, ...] = (
    Row("Fleet overview", (
        P("Agents up", (Q(f"sum(mmfleet_agents_up{{{FLEET}}})", "up"),
                        Q(f"sum(mmfleet_agents_expected{{{FLEET}}})", "expected")),
          "Agents that answered the endpoint's last metrics request, against the symbols the fleet trades.",
          kind="stat", w=4, h=4),
        P("Halted", (Q(f"count(max by (fleet, symbol) (mmfleet_symbol_halted{{{SYM}}} == 1) or "
                         f"max by (fleet, symbol) (mm_halt_state{{{SYM},state!=\"running\"}} == 1)) or vector(0)",
                         "halted"),),
          "Symbols shown that are halted or flattening, by kill switch or by their agent (a liquidation, "
          "a delisting), as the console counts them.", kind="stat", w=3, h=4, thresholds=((1, "orange"),)),
        P("Controller", (Q(f"min(mmfleet_controller_up{{{FLEET}}})", "up"),),
          "1 if the fleet endpoint reached the controller.", kind="stat", w=3, h=4,
          thresholds=((0, "red"), (1, "green"))),
        P("Fleet P&L", (Q(f"sum({pnl(SYM)})", "P&L"),),
          "Realized + funding - commission + unrealized, summed over the selected symbols (quote currency).",
          kind="stat", w=5, h=4, decimals=2),
        P("Gross notional", (Q(f"sum(abs(mm_position{{{SYM}}} * mm_mark_price{{{SYM}}}))", "gross"),),
          "Sum of |position x mark| over the selected symbols.", kind="stat", w=5, h=4, decimals=0),
        P("Net notional", (Q(f"sum(mm_position{{{SYM}}} * mm_mark_price{{{SYM}}})", "net"),),
          "Sum of position x mark (long positive).", kind="stat", w=4, h=4, decimals=0),
        P("Agent up by symbol", (Q(f"mmfleet_agent_up{{{SYM}}}"),),
          "1 while the symbol's agent answers the endpoint.", min=0, max=1, w=6),
        P("Agent restarts", (Q(f"mmfleet_agent_restarts{{{SYM}}}"),),
          "Restarts of each agent's actor, as Ray records them.", w=6),
        P("Hung agent outliving its kill", (Q(f"mmfleet_agent_unkilled_seconds{{{SYM}}}"),),
          "Seconds a hung agent has run on since the fence found Ray's kill not acted on (its node frozen): "
          "its orders were cancelled, no successor quotes meanwhile. 0 normally; alert MmAgentUnkilled.",
          unit="s", thresholds=((1, "red"),), w=6),
        P("P&L by symbol", (Q(pnl(SYM)),),
          "Realized + funding - commission + unrealized, per symbol (quote currency).", w=6),
    )),
    Row("Per symbol", (
        P("Worst case / cap", (Q(f"mm_worst_case_long{{{SYM}}} / mm_worst_case_cap{{{SYM}}}", "{{symbol}} long"),
                               Q(f"-mm_worst_case_short{{{SYM}}} / mm_worst_case_cap{{{SYM}}}", "{{symbol}} short")),
          "Each side's worst case (long: position + pending buys; short: -(position - pending sells)) "
          "against the cap net_max x worst_case.multiplier. The alert fires above 95 %.",
          unit="percentunit", thresholds=((0.95, "red"),), w=8),
        P("Position", (Q(f"mm_position{{{SYM}}}"),
                       Q(f"mm_worst_case_cap{{{SYM}}}", "{{symbol}} cap")),
          "Signed position (base units) and the worst-case cap.", w=8),
        P("P&L components", (Q(f"mm_realized_pnl{{{SYM}}}", "{{symbol}} realized"),
                             Q(f"mm_unrealized_pnl{{{SYM}}}", "{{symbol}} unrealized"),
                             Q(f"-mm_commission{{{SYM}}}", "{{symbol}} commission")),
          "Quote currency.", w=8),
        P("Funding P&L", (Q(f"mm_funding_pnl_acc{{{SYM}}}"),),
          "Funding booked from FUNDING_FEE (quote currency).", w=8),
        P("Predicted funding rate", (Q(f"mm_predicted_funding_rate{{{SYM}}}"),
                                     Q(f"mm_predicted_funding_rate{{{SYM}}} * 28800 / mm_funding_interval_seconds{{{SYM}}}",
                                       "{{symbol}} per 8 h")),
          "EMA prediction of the next funding rate (per the symbol's interval), and the same over 8 hours: what "
          "the quotes' funding shift takes (a symbol settling every hour counts its rate 8 times).",
          unit="percentunit", decimals=4, w=8),
        P("Drawdown", (Q(f"mm_drawdown_pct{{{SYM}}}"),
                       Q(f'mm_drawdown_band_pct{{{SYM},band="1"}}', "{{symbol}} first band")),
          "Percent below the symbol's peak equity, and its first drawdown band (the alert fires there).",
          unit="percent", w=8),
        P("Grinds", (Q(f"increase(mm_grind_count_total{{{SYM}}}[{RI}])", "{{symbol}} fired"),
                     Q(f"mm_grind_active{{{SYM}}}", "{{symbol}} active")),
          "Grinds fired per interval, and 1 while one awaits its fill and re-entry.", w=8),
        P("Grind cost saved", (Q(f"mm_grind_cost_saved{{{SYM}}}"),),
          "Estimated quote-currency saving of all grinds.", w=8),
        P("Decay factor", (Q(f"mm_dynamic_decay_factor{{{SYM}}}"),),
          "exp(-|worst| / net_max x size_decay_k) of the last ladder: 1 = full size.", min=0, max=1, w=8),
        P("Quote suppression", (Q(f"mm_quote_suppressed{{{SYM}}}"),),
          "1 while a side is stopped at the worst-case cap.", min=0, max=1, w=8),
        P("Halt state", (Q(f'mm_halt_state{{{SYM},state!="running"}}', "{{symbol}} {{state}}"),
                         Q(f"mm_reduce_only{{{SYM}}}", "{{symbol}} reduce-only")),
          "1 while the symbol is halted or flattening, or held reduce-only.", min=0, max=1, w=8),
        P("Price volatility (30 min)", (Q(f"mm_price_stddev_30m{{{SYM}}}"),),
          "Relative stddev of 30 minutes of mids (grinding's range test).", unit="percentunit", w=8),
    )),
    Row("Order rates against Binance's limits", (
        P("Budget used (quoting's part)",
          (Q(f"mm_rate_budget_used{{{SYM}}} / mm_rate_budget_quoting_limit{{{SYM}}}", "{{symbol}} {{window}}"),),
          "Used / the part of each agent's share quoting may use (the rest is kept for cancels and reduce-only "
          "orders), per 10 s and 1 min order count and 1 min IP weight: new quotes are held at 100 %. The alert "
          "(MmRateBudgetHigh) fires above 90 %.", unit="percentunit", thresholds=((0.9, "red"),), w=8),
        P("Exchange count / Binance limit",
          (Q(f"max by (window) (mm_rate_exchange_used{{{SYM}}} / mm_rate_exchange_limit{{{SYM}}})", "{{window}}"),),
          "The exchange's count (X-MBX-* headers plus what was spent since) against Binance's own limits: "
          "everybody on the account or IP, the busiest symbol's view.",
          unit="percentunit", thresholds=((0.9, "red"),), w=8),
        P("Orders sent", (Q(f"sum by (symbol, action) (rate(mm_orders_sent_total{{{SYM}}}[{RI}]))",
                            "{{symbol}} {{action}}"),),
          "Requests per second, by action.", unit="reqps", w=8),
        P("Order counts (10 s)", (Q(f'mm_rate_budget_used{{{SYM},window="orders_10s"}}', "{{symbol}} used"),
                                  Q(f'mm_rate_budget_limit{{{SYM},window="orders_10s"}}', "{{symbol}} share")),
          "Orders in the sliding 10 s window and the agent's share of Binance's 300"
          " (less a 5 % safety margin).", w=8),
        P("Order counts (1 min)", (Q(f'mm_rate_budget_used{{{SYM},window="orders_1m"}}', "{{symbol}} used"),
                                   Q(f'mm_rate_budget_limit{{{SYM},window="orders_1m"}}', "{{symbol}} share")),
          "Orders in the sliding 1 min window and the agent's share of Binance's 1,200"
          " (less a 5 % safety margin).", w=8),
        P("Request weight (1 min)", (Q(f'mm_rate_budget_used{{{SYM},window="weight_1m"}}', "{{symbol}} used"),
                                     Q(f'mm_rate_budget_limit{{{SYM},window="weight_1m"}}', "{{symbol}} share")),
          "IP weight in the sliding 1 min window and the agent's share of Binance's 2,400"
          " (less a 5 % safety margin).", w=8),
        P("429s and refusals", (Q(f"increase(mm_rate_limited_total{{{SYM}}}[{RI}])", "{{symbol}} 429"),
                                Q(f"increase(mm_rate_budget_refused_total{{{SYM}}}[{RI}])", "{{symbol}} refused")),
          "Rate-limit answers waited out, and requests the budget refused for want of room.", w=8),
        P("Unknown outcomes and quote cycles",
          (Q(f"increase(mm_unknown_outcomes_total{{{SYM}}}[{RI}])", "{{symbol}} unknown outcome"),
           Q(f"increase(mm_quote_cycles_total{{{SYM}}}[{RI}])", "{{symbol}} quote cycles")),
          "Requests answered with execution status unknown, and quote cycles run, per interval.", w=8),
        P("Symbols held, by hold", (Q(f"sum by (hold) (mm_exchange_hold{{{SYM}}})", "{{hold}}"),),
          "Symbols whose orders a hold keeps back now (mm_exchange_hold, per symbol; the console names them): "
          "rate_limited (a 429 on the IP's weight or a 418: nothing goes out), orders_limited (an order-count "
          "429), throttled (-1008), order_routes_failing (5xx), funding_reads_limited, order_budget_spent (the "
          "agent's own share). An agent held says \"quoting\" with little or nothing resting.", min=0, w=8),
    )),
    Row("Streams and reconciliation", (
        P("User stream connected", (Q(f"mm_ws_connected{{{SYM}}}"),),
          "1 while the user data stream is connected. The alert fires after 30 s at 0.", min=0, max=1, w=8),
        P("REST resyncs (reconnects, gaps)", (Q(f"increase(mm_rest_fallback_count{{{SYM}}}[{RI}])"),),
          "Resyncs of orders and position from REST per interval: each reconnect, gap or unknown order state.",
          w=8),
        P("Reconciliation repairs",
          (Q(f"sum by (symbol, kind) (increase(mm_reconcile_discrepancies_total{{{SYM}}}[{RI}]))", "{{symbol}} {{kind}}"),),
          "Differences between the exchange and the store, found and repaired, by kind.", w=8),
        P("Stale and foreign frames", (Q(f"increase(mm_stale_frames_total{{{SYM}}}[{RI}])", "{{symbol}} stale"),
                                       Q(f"increase(mm_foreign_frames_total{{{SYM}}}[{RI}])", "{{symbol}} foreign")),
          "Duplicate or older frames, and frames for another symbol, skipped per interval.", w=8),
        P("Tick to order p99", (Q(f"histogram_quantile(0.99, sum by (symbol, le) "
                                  f"(rate(mm_tick_to_order_seconds_bucket{{{SYM}}}[{RI}])))"),),
          "From a market event to the order request leaving the core.", unit="s", w=8),
        P("Age of each agent's exposition", (Q(f"mmfleet_agent_exposition_age_seconds{{{SYM}}}"),),
          "How old each agent's last published exposition was at the scrape (past api.metrics_stale_s "
          "it is left off and the agent shown down).", unit="s", w=8),
    )),
    Row("Kill switch", (
        P("Kill latency", (Q(f"histogram_quantile(0.5, sum by (le) (rate(mmfleet_kill_latency_seconds_bucket{{{FLEET}}}[5m])))",
                             "p50"),
                           Q(f"histogram_quantile(0.99, sum by (le) (rate(mmfleet_kill_latency_seconds_bucket{{{FLEET}}}[5m])))",
                             "p99")),
          "HTTP kill: request to every symbol confirmed with 0 open orders at the exchange (5 min windows; "
          "empty when no kill was served).", unit="s", thresholds=((0.25, "red"),), w=16),
        P("Kills served", (Q(f"sum(mmfleet_kill_latency_seconds_count{{{FLEET}}})", "kills"),),
          "HTTP kills the endpoint has served since it started.", kind="stat", w=8),
    )),
)


# --- building -------------------------------------------------------------------------------------


def _thresholds(steps: tuple[tuple[float, str], ...]) -> dash.ThresholdsConfig:
    return dash.ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(
        [Threshold(value=None, color="green")] + [Threshold(value=v, color=c) for v, c in steps]
    )


def _panel(p: P) -> Any:
    if p.kind == "stat":
        b = (
            stat.Panel()
            .graph_mode(BigValueGraphMode.AREA)
            .color_mode(BigValueColorMode.VALUE)
            .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        )
    else:
        b = (
            timeseries.Panel()
            .legend(VizLegendOptions().display_mode(LegendDisplayMode.LIST).placement(LegendPlacement.BOTTOM)
                    .show_legend(True))
            .line_width(1)
            .fill_opacity(10)
        )
        if p.thresholds:
            b = b.thresholds_style(GraphThresholdsStyleConfig().mode(GraphThresholdsStyleMode.LINE))
    b = b.title(p.title).description(p.description).datasource(DS).unit(p.unit).span(p.w).height(p.h)
    b = b.thresholds(_thresholds(p.thresholds))
    if p.min is not None:
        b = b.min(p.min)
    if p.max is not None:
        b = b.max(p.max)
    if p.decimals is not None:
        b = b.decimals(p.decimals)
    for i, q in enumerate(p.queries):
        b = b.with_target(
            prometheus.Dataquery().expr(q.expr).legend_format(q.legend).ref_id(chr(ord("A") + i)).datasource(DS)
        )
    return b


def dashboard() -> dict[str, Any]:
    d = (
        dash.Dashboard("mmfleet")
        .uid(UID)
        .description("Market-making fleet on Binance USD-M perpetuals: agents, risk per symbol, order rates "
                     "against Binance's limits, streams, kill switch. Built by configs/grafana/build.py.")
        .tags(["mmfleet", "trading"])
        .editable()
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .refresh("30s")
        .time("now-3h", "now")
        .timezone("browser")
        .annotation(
            dash.AnnotationQuery().name("Annotations & Alerts").built_in(1).enable(True).hide(True)
            .icon_color("rgba(0, 211, 255, 1)").type("dashboard")
            .datasource(DataSourceRef(type_val="grafana", uid="-- Grafana --"))
        )
        .with_variable(
            dash.DatasourceVariable("datasource").label("Prometheus").type("prometheus")
        )
        .with_variable(
            dash.QueryVariable("fleet").label("Fleet").datasource(DS)
            .query("label_values(mmfleet_agents_expected, fleet)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_ASC)
            .multi(False).include_all(False)
        )
        .with_variable(
            dash.QueryVariable("symbol").label("Symbol").datasource(DS)
            .query(f"label_values(mmfleet_agent_up{{{FLEET}}}, symbol)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED).sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True).include_all(True)
        )
    )
    ids = iter(range(1, 1000))
    for row in ROWS:
        d = d.with_row(dash.Row(row.title).id(next(ids)))
        for p in row.panels:
            d = d.with_panel(_panel(p).id(next(ids)))
    return json.loads(JSONEncoder(sort_keys=True).encode(d.build()))


def render() -> str:
    return json.dumps(dashboard(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if mmfleet.json is not what this builds")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
