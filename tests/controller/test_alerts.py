"""The alert rules (configs/prometheus/alerts.yml): `promtool check rules`, the unit tests in
alerts_test.yml through `promtool test rules`, and what every rule must carry. promtool ships in
Debian's prometheus package, which `make test` installs: a missing promtool fails, never skips.

That every alert expression returns data from a live fleet is checked in test_dashboard.py, next to
the dashboard's queries, against the same Prometheus."""

from __future__ import annotations

import http.server
import json
import shutil
import subprocess
import threading

import requests
import yaml

from fleet.ops.ports import free_port
from tests.controller.test_prometheus import CONFIG_DIR, cluster_config, poll, start_prometheus

ALERTS = CONFIG_DIR / "alerts.yml"
ALERTS_TEST = CONFIG_DIR / "alerts_test.yml"
CENTRAL = CONFIG_DIR / "central_alerts.yml"
CENTRAL_TEST = CONFIG_DIR / "central_alerts_test.yml"
# Alerts about the whole fleet or its endpoint rather than one symbol.
FLEET_WIDE = {"MmControllerDown", "MmEndpointScrapeFailing", "MmEndpointNotScraped", "MmWatchdog", "MmKillUnconfirmed"}
WATCHDOG = "MmWatchdog"   # always firing, for a dead man's switch outside the cluster: severity none


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
    assert names - silent == {WATCHDOG}, "alerts never tested silent"   # (the watchdog never is)


def test_every_alert_names_its_symbol_and_says_what_to_do():
    for name, rule in rules().items():
        ann = rule["annotations"]
        assert ann.get("summary") and ann.get("description"), name
        assert rule["labels"]["severity"] in (("none",) if name == WATCHDOG else ("warning", "critical")), name
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


ALERTMANAGER = CONFIG_DIR / "alertmanager.yml"


def test_the_shipped_alertmanager_config_passes_amtool():
    path = shutil.which("amtool")
    assert path, "amtool is not on PATH: `make test` installs Debian's prometheus-alertmanager package"
    out = subprocess.run([path, "check-config", ALERTMANAGER.name], capture_output=True, text=True, timeout=60,
                         cwd=CONFIG_DIR)
    assert out.returncode == 0, out.stdout + out.stderr
    for name in ("cluster.yml", "central.yml"):
        doc = yaml.safe_load((CONFIG_DIR / name).read_text())
        assert doc["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["127.0.0.1:9093"], name


class _Webhook(http.server.BaseHTTPRequestHandler):
    """What Alertmanager posts, by path (the receivers of alertmanager.yml)."""

    received: dict[str, list[dict]] = {}

    def do_POST(self) -> None:   # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.received.setdefault(self.path, []).append(body)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_the_watchdog_reaches_the_dead_mans_switch_through_the_shipped_configs(tmp_path):
    """cluster.yml's rules and alerting block, alertmanager.yml's routes: the always-firing watchdog
    arrives at the deadman receiver (and nowhere else), so the path that would carry a page is alive."""
    hook = http.server.HTTPServer(("127.0.0.1", 0), _Webhook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    am_port = free_port()
    am_cfg = ALERTMANAGER.read_text().replace("http://127.0.0.1:9095/", f"http://127.0.0.1:{hook.server_port}/")
    (tmp_path / "alertmanager.yml").write_text(am_cfg)
    binary = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    assert binary, "Alertmanager is not on PATH: `make test` installs Debian's prometheus-alertmanager package"
    log = open(tmp_path / "alertmanager.log", "wb")
    am = subprocess.Popen([binary, f"--config.file={tmp_path / 'alertmanager.yml'}", f"--storage.path={tmp_path / 'am'}",
                           f"--web.listen-address=127.0.0.1:{am_port}", "--cluster.listen-address="],
                          stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    prom = None
    try:
        poll(lambda: _ready(f"http://127.0.0.1:{am_port}/-/ready"), within_s=60, what="Alertmanager ready")
        cfg = cluster_config(f"http://127.0.0.1:{free_port()}")   # (no endpoint: only the watchdog is under test)
        cfg["alerting"]["alertmanagers"][0]["static_configs"] = [{"targets": [f"127.0.0.1:{am_port}"]}]
        # (its first send can come before it has found the Alertmanager; the next after the resend delay, 1 min)
        prom = start_prometheus(cfg, tmp_path / "prometheus", flags=("--rules.alert.resend-delay=2s",))
        poll(lambda: _Webhook.received.get("/deadman"), within_s=90, what="the watchdog at the deadman receiver")
        alerts = [a for body in _Webhook.received["/deadman"] for a in body["alerts"]]
        assert {a["labels"]["alertname"] for a in alerts} == {"MmWatchdog"}
        assert alerts[0]["status"] == "firing" and alerts[0]["labels"]["cluster"] == cfg["global"]["external_labels"]["cluster"]
        assert not [a for p in ("/desk", "/page") for body in _Webhook.received.get(p, []) for a in body["alerts"]
                    if a["labels"]["alertname"] == "MmWatchdog"]
    finally:
        if prom is not None:
            prom.stop()
        am.terminate()
        am.wait(timeout=15)
        log.close()
        hook.shutdown()


def _ready(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.ConnectionError:
        return False
