"""The Grafana dashboard (configs/grafana/mmfleet.json, built by configs/grafana/build.py) and the
alert rules, against a real Prometheus scraping a live fleet: every dashboard query, every template
variable and every alert expression (its comparisons made ``bool``, so it returns every series it
looks at, not only the firing ones) returns data."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard

from tests.controller.test_api_fleet import SYMBOLS, live  # noqa: F401 - the module's live fleet
from tests.controller.test_prometheus import CONFIG_DIR, cluster_config, poll, start_prometheus

GRAFANA_DIR = CONFIG_DIR.parent / "grafana"
DASHBOARD = GRAFANA_DIR / "mmfleet.json"
RATE_INTERVAL = "10s"   # for $__rate_interval: ten scrapes at the test's 1 s interval


def load_builder() -> Any:
    spec = importlib.util.spec_from_file_location("mmfleet_grafana_build", GRAFANA_DIR / "build.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module   # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panel_queries(board: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) of every query, rows' collapsed panels included."""
    out = []
    for panel in board["panels"]:
        for p in [panel, *panel.get("panels", [])]:
            for t in p.get("targets", []):
                out.append((p["title"], t["expr"]))
    return out


def variables(board: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in board["templating"]["list"]}


def alert_rules() -> dict[str, str]:
    groups = yaml.safe_load((CONFIG_DIR / "alerts.yml").read_text())["groups"]
    return {r["alert"]: r["expr"] for g in groups for r in g["rules"]}


_COMPARISON = re.compile(r"==|!=|>=|<=|>|<")


def without_thresholds(expr: str) -> str:
    """``expr`` with every comparison outside label matchers made ``bool``: 0/1 for every series."""
    out, i, depth, quote = [], 0, 0, None
    while i < len(expr):
        c = expr[i]
        if quote:
            out.append(c)
            if c == "\\":
                out.append(expr[i + 1])
                i += 1
            elif c == quote:
                quote = None
            i += 1
            continue
        if c in "\"'`":
            quote = c
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        elif depth == 0 and (m := _COMPARISON.match(expr, i)):
            out.append(m.group(0))
            i = m.end()
            if not re.match(r"\s*bool\b", expr[i:]):
                out.append(" bool")
            continue
        out.append(c)
        i += 1
    return "".join(out)


def concrete(expr: str, fleet: str) -> str:
    """Grafana's variables as the dashboard would send them for every symbol of ``fleet``."""
    return (
        expr.replace("$__rate_interval", RATE_INTERVAL)
        .replace("$symbol", "|".join(SYMBOLS))
        .replace("$fleet", fleet)
    )


# --- offline -------------------------------------------------------------------------------------


def test_the_committed_dashboard_is_what_build_py_builds():
    builder = load_builder()
    assert DASHBOARD.read_text() == builder.render(), "run: .venv/bin/python configs/grafana/build.py"
    assert builder.main(["--check"]) == 0


def test_the_dashboard_round_trips_through_grafanas_dashboard_model():
    board = dashboard()
    again = json.loads(JSONEncoder(sort_keys=True).encode(Dashboard.from_json(board)))
    assert again == board
    assert board["uid"] and board["schemaVersion"] >= 39
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for p in board["panels"]:
        assert p["gridPos"]["x"] + p["gridPos"]["w"] <= 24, p["title"]


def test_fleet_and_symbol_variables_come_from_label_values():
    v = variables(dashboard())
    assert v["datasource"]["type"] == "datasource" and v["datasource"]["query"] == "prometheus"
    assert v["fleet"]["query"] == "label_values(mmfleet_agents_expected, fleet)"
    assert v["symbol"]["query"] == 'label_values(mmfleet_agent_up{fleet=~"$fleet"}, symbol)'
    assert v["symbol"]["multi"] and v["symbol"]["includeAll"]
    for title, expr in panel_queries(dashboard()):
        if expr.startswith("mm_") or "(mm_" in expr:
            assert '"$symbol"' in expr, title


def test_provisioning_files_point_at_the_dashboard_and_a_prometheus():
    (provider,) = yaml.safe_load((GRAFANA_DIR / "provisioning/dashboards/mmfleet.yml").read_text())["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    (ds,) = yaml.safe_load((GRAFANA_DIR / "provisioning/datasources/prometheus.yml").read_text())["datasources"]
    assert ds["type"] == "prometheus" and ds["url"].startswith("http")


def alert_probes(expr: str) -> list[str]:
    """What must return data from a healthy fleet for ``expr`` to mean anything: the expression without its
    thresholds; for ``a unless on(...) b`` both sides apart, and for ``absent(x)`` x (on a healthy fleet
    the whole is empty by design)."""
    expr = " ".join(expr.split())
    m = re.fullmatch(r"absent\((.*)\)", expr)
    if m:
        return [m.group(1)]
    m = re.fullmatch(r"\((.*)\) unless on\([\w, ]*\) (.*)", expr)
    if m:
        return [without_thresholds(m.group(1)), without_thresholds(m.group(2))]
    return [without_thresholds(expr)]


def test_alert_probes_take_apart_what_a_healthy_fleet_leaves_empty():
    assert alert_probes('absent(up{job="mmfleet"})') == ['up{job="mmfleet"}']
    assert alert_probes("(a == 1) unless on(fleet, symbol) b") == ["a == bool 1", "b"]
    assert alert_probes("a > 0") == ["a > bool 0"]


def test_thresholds_are_dropped_only_from_comparisons():
    assert without_thresholds('mm_ws_connected == 0') == "mm_ws_connected == bool 0"
    assert without_thresholds('a{s!="x",t=~"a|b"} >= ignoring(band) b{band="1"}') == (
        'a{s!="x",t=~"a|b"} >= bool ignoring(band) b{band="1"}'
    )
    assert without_thresholds("(a / b > 0.95) or (-c / b > bool 0.95)") == "(a / b > bool 0.95) or (-c / b > bool 0.95)"


# --- against a live fleet -------------------------------------------------------------------------


def label_values(prom: Any, label: str, match: str) -> list[str]:
    r = requests.get(f"{prom.url}/api/v1/label/{label}/values", params={"match[]": match}, timeout=10)
    r.raise_for_status()
    return r.json()["data"]


def test_every_dashboard_query_and_alert_expression_returns_data_from_a_live_fleet(live, tmp_path):  # noqa: F811
    fleet = live.cfg.name
    cfg = cluster_config(live.url)
    cfg["rule_files"] = [str(CONFIG_DIR / f) for f in cfg.get("rule_files", [])]
    assert cfg["rule_files"], "cluster.yml loads no rule files"
    prom = start_prometheus(cfg, tmp_path / "prometheus")
    try:
        queries = {f"panel {title!r}: {expr}": concrete(expr, fleet) for title, expr in panel_queries(dashboard())}
        queries.update({f"alert {name} ({i}): {expr}": q for name, expr in alert_rules().items()
                        for i, q in enumerate(alert_probes(expr))})
        started = time.monotonic()
        pending = dict(queries)

        def all_answered() -> bool:
            for what, q in list(pending.items()):
                if prom.query(q):
                    del pending[what]
            return not pending

        try:
            poll(all_answered, within_s=45, every_s=1.0, what="every query returning data")
        except AssertionError:
            pytest.fail("no data for:\n" + "\n".join(pending))
        assert time.monotonic() - started < 45

        # the template variables list this fleet and its symbols
        v = variables(dashboard())
        m = re.fullmatch(r"label_values\((.*), (\w+)\)", v["fleet"]["query"])
        assert fleet in label_values(prom, m.group(2), m.group(1))
        m = re.fullmatch(r"label_values\((.*), (\w+)\)", v["symbol"]["query"])
        assert sorted(label_values(prom, m.group(2), concrete(m.group(1), fleet))) == sorted(SYMBOLS)

        # the rules loaded and evaluate without errors
        def evaluated() -> list[dict[str, Any]] | None:
            groups = requests.get(f"{prom.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            done = rules and all(not r.get("lastEvaluation", "0001-").startswith("0001-") for r in rules)
            return rules if done else None

        rules = poll(evaluated, within_s=15, what="every rule evaluated")
        assert {r["name"] for r in rules} == set(alert_rules())
        assert [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []
    finally:
        prom.stop()
