"""`python -m fleet up` as the desk (and `make demo`) runs it: a subprocess that starts its own local
Ray cluster, the simulator, the controller, three agents and the endpoint, shows the table, stops
cleanly at the end of --duration and prints the summary: 0 open orders at the exchange, exit 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.controller.test_fleet import free_port

ROOT = Path(__file__).resolve().parents[2]


def test_up_runs_the_demo_fleet_for_its_duration_and_ends_with_a_clean_summary(tmp_path):
    demo = yaml.safe_load((ROOT / "configs" / "fleet.demo.yaml").read_text())
    demo["api"] = {"host": "127.0.0.1", "port": free_port(), "token_env": None}
    demo["state_dir"] = str(tmp_path / "state")
    demo["symbols"] = [{**e, "params_file": str(ROOT / "configs" / e["params_file"])} for e in demo["symbols"]]
    demo["exchange"]["sim"]["config"] = str(ROOT / "configs" / demo["exchange"]["sim"]["config"])
    config = tmp_path / "fleet.yaml"
    config.write_text(yaml.safe_dump(demo))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run(
        [sys.executable, "-m", "fleet", "up", "--config", str(config), "--address", "local", "--duration", "25",
         "--refresh", "5"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )
    out = done.stdout
    assert done.returncode == 0, (out[-3000:], done.stderr[-3000:])
    assert "starting agents: 3/3 quoting" in out and "WARNING: not quoting" not in out
    assert "token in file" in out and str(tmp_path / "state") in out
    summary = out[out.index("fleet demo stopped after"):]
    rows = [line.split() for line in summary.splitlines()[2:5]]
    assert {r[0] for r in rows} == {"ETHUSDC", "BTCUSDT", "SOLUSDT"}
    assert all(r[1] == "0" for r in rows), summary  # open orders confirmed at the exchange
    token = (tmp_path / "state" / "demo.api.token").read_text().strip()
    assert token not in out and token not in done.stderr
    key_file = tmp_path / "state" / "demo.main.sim-keys.yaml"
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    secret = yaml.safe_load(key_file.read_text())["api_secret"]
    assert secret not in out and secret not in done.stderr


def test_up_with_a_symbol_the_exchange_does_not_list_starts_nothing(tmp_path):
    demo = yaml.safe_load((ROOT / "configs" / "fleet.demo.yaml").read_text())
    demo["state_dir"] = str(tmp_path / "state")
    demo["symbols"] = [{**e, "params_file": str(ROOT / "configs" / e["params_file"])} for e in demo["symbols"]]
    demo["symbols"].append({"symbol": "NOSUCHCOIN", "account": "main"})
    demo["exchange"]["sim"]["config"] = str(ROOT / "configs" / demo["exchange"]["sim"]["config"])
    config = tmp_path / "fleet.yaml"
    config.write_text(yaml.safe_dump(demo))
    done = subprocess.run(
        [sys.executable, "-m", "fleet", "up", "--config", str(config), "--address", "local", "--duration", "5"],
        cwd=tmp_path, env={**os.environ, "RAY_AUTH_MODE": "disabled"}, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "NOSUCHCOIN is not listed by the simulator" in done.stderr and "nothing started" in done.stderr
    assert done.stdout == ""                       # no Ray, no simulator, no agent, no endpoint
    assert not (tmp_path / "state").exists()
