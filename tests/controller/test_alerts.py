"""The alert rules (configs/prometheus/alerts.yml): `promtool check rules`, the unit tests in
alerts_test.yml through `promtool test rules`, and what every rule must carry. promtool ships in
Debian's prometheus package, which `make test` installs: a missing promtool fails, never skips.

That every alert expression returns data from a live fleet is checked in test_dashboard.py, next to
the dashboard's queries, against the same Prometheus."""

from __future__ import annotations

import shutil
import subprocess

import yaml

from tests.controller.test_prometheus import CONFIG_DIR

ALERTS = CONFIG_DIR / "alerts.yml"
ALERTS_TEST = CONFIG_DIR / "alerts_test.yml"
CENTRAL = CONFIG_DIR / "central_alerts.yml"
CENTRAL_TEST = CONFIG_DIR / "central_alerts_test.yml"
# Alerts about the whole fleet or its endpoint rather than one symbol.
FLEET_WIDE = {"MmControllerDown", "MmEndpointScrapeFailing"}


def promtool(*args: str) -> subprocess.CompletedProcess:
    path = shutil.which("promtool")
    assert path, "promtool is not on PATH: `make test` installs Debian's prometheus package"
    return subprocess.run([path, *args], capture_output=True, text=True, timeout=120, cwd=CONFIG_DIR)


def rules() -> dict[str, dict]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"]}


def test_promtool_check_rules_passes():
    out = promtool("check", "rules", ALERTS.name)
    assert out.returncode == 0, out.stdout + out.stderr


def test_promtool_unit_tests_of_every_alert_pass():
    out = promtool("test", "rules", ALERTS_TEST.name)
    assert out.returncode == 0, out.stdout + out.stderr


def test_every_alert_is_unit_tested_both_firing_and_silent():
    firing: set[str] = set()
    silent: set[str] = set()
    doc = yaml.safe_load(ALERTS_TEST.read_text())
    assert doc["rule_files"] == [ALERTS.name]
    for case in doc["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    names = set(rules())
    assert names - firing == set(), "alerts never tested firing"
    assert names - silent == set(), "alerts never tested silent"


def test_every_alert_names_its_symbol_and_says_what_to_do():
    for name, rule in rules().items():
        ann = rule["annotations"]
        assert ann.get("summary") and ann.get("description"), name
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        if name not in FLEET_WIDE:
            assert "{{ $labels.symbol }}" in ann["summary"], name
            assert "{{ $labels.symbol }}" in ann["description"], name


def test_the_cluster_prometheus_loads_the_alert_rules():
    cluster = yaml.safe_load((CONFIG_DIR / "cluster.yml").read_text())
    assert ALERTS.name in cluster["rule_files"]
    out = promtool("check", "config", "cluster.yml")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS: 1 rule files found" in out.stdout


def test_the_central_prometheus_alerts_on_a_cluster_it_cannot_federate():
    """Each cluster Prometheus evaluates the fleet's alerts: when it (or the way to it) fails, the central
    one, which Grafana reads, must say so itself."""
    for args in (("check", "rules", CENTRAL.name), ("test", "rules", CENTRAL_TEST.name),
                 ("check", "config", "central.yml")):
        out = promtool(*args)
        assert out.returncode == 0, out.stdout + out.stderr
    assert CENTRAL.name in yaml.safe_load((CONFIG_DIR / "central.yml").read_text())["rule_files"]
    job = yaml.safe_load(CENTRAL.read_text())["groups"][0]["rules"][0]["expr"]
    assert 'up{job="federate-mmfleet"}' in job   # the job central.yml names
