"""The shipped Prometheus configs, and a real Prometheus (Debian's package) for tests.

The end-to-end run (a cluster Prometheus scraping a live fleet's /metrics, a central one federating
from it, ``mm_worst_case_long`` for every symbol out of the central one's query API) is in
test_api_fleet.py, next to the live fleet it needs."""

from __future__ import annotations

import copy
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
import yaml

from tests import polling
from fleet.ops.ports import free_port

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "prometheus"


# --- a real Prometheus for tests -----------------------------------------------------------------


@dataclass(frozen=True)
class PrometheusServer:
    url: str
    process: subprocess.Popen
    log_path: Path

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant query through the HTTP API; the result vector."""
        r = requests.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        r.raise_for_status()
        body = r.json()
        assert body["status"] == "success", body
        return body["data"]["result"]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


def prometheus_binary() -> str:
    path = shutil.which("prometheus")
    if path is None:
        raise RuntimeError("prometheus is not on PATH: `make test` installs Debian's prometheus package")
    return path


def start_prometheus(config: dict[str, Any], workdir: Path, *, ready_within_s: float = 60.0,
                     flags: tuple[str, ...] = ()) -> PrometheusServer:
    """Start Prometheus with ``config`` (and command-line ``flags``) and wait until it reports ready."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    log_path = workdir / "prometheus.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [
            prometheus_binary(),
            f"--config.file={config_path}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle",
            "--log.level=warn",
            *flags,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    log.close()
    server = PrometheusServer(f"http://127.0.0.1:{port}", proc, log_path)
    deadline = time.monotonic() + ready_within_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prometheus exited with {proc.returncode}: {log_path.read_text()[-2000:]}")
        try:
            if requests.get(f"{server.url}/-/ready", timeout=2).status_code == 200:
                return server
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"prometheus not ready within {ready_within_s} s: {log_path.read_text()[-2000:]}")


def poll(condition, *, within_s: float, every_s: float = 0.5, what: str = "condition"):
    """:func:`tests.polling.poll` under the keyword names the Prometheus, dashboard and console tests use."""
    return polling.poll(condition, within_s, what, every_s)


# --- the shipped configs, pointed at the test's servers -------------------------------------------


def cluster_config(endpoint_url: str) -> dict[str, Any]:
    """configs/prometheus/cluster.yml with the fleet job aimed at ``endpoint_url``, scraping every second."""
    cfg = yaml.safe_load((CONFIG_DIR / "cluster.yml").read_text())
    cfg["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    parts = urlsplit(endpoint_url)
    jobs = [j for j in cfg["scrape_configs"] if j["job_name"] == "mmfleet"]
    assert len(jobs) == 1, "cluster.yml must have exactly one job named mmfleet"
    job = copy.deepcopy(jobs[0])
    job["static_configs"] = [{"targets": [parts.netloc]}]
    job["metrics_path"] = f"{parts.path.rstrip('/')}{job['metrics_path']}"
    cfg["scrape_configs"] = [job]      # Ray's own job is for real clusters; not under test here
    cfg["rule_files"] = [str(CONFIG_DIR / f) for f in cfg.get("rule_files", [])]   # beside the config no more
    return cfg


def central_config(cluster_url: str) -> dict[str, Any]:
    """configs/prometheus/central.yml federating from ``cluster_url``, every second."""
    cfg = yaml.safe_load((CONFIG_DIR / "central.yml").read_text())
    cfg["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    (job,) = cfg["scrape_configs"]
    job["static_configs"] = [{"targets": [urlsplit(cluster_url).netloc]}]
    cfg["rule_files"] = [str(CONFIG_DIR / f) for f in cfg.get("rule_files", [])]
    return cfg


def test_shipped_configs_pass_promtool():
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not on PATH: `make test` installs Debian's prometheus package"
    out = subprocess.run(
        [promtool, "check", "config", str(CONFIG_DIR / "cluster.yml"), str(CONFIG_DIR / "central.yml")],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_central_config_federates_with_honor_labels():
    (job,) = yaml.safe_load((CONFIG_DIR / "central.yml").read_text())["scrape_configs"]
    assert job["metrics_path"] == "/federate"
    assert job["honor_labels"] is True
    assert '{job="mmfleet"}' in job["params"]["match[]"]
