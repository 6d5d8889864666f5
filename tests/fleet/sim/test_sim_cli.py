"""``python -m fleet sim`` as a subprocess, and SimThread for synchronous callers."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from websockets.sync.client import connect

from fleet.sim.thread import SimThread


def test_cli_prints_one_json_line_when_ready_and_stops_on_sigterm():
    proc = subprocess.Popen([sys.executable, "-m", "fleet", "sim", "--json", "--symbols", "ETHUSDC,DOGEUSDT",
                             "--seed", "3", "--api-key", "k" * 64, "--api-secret", "s" * 64,
                             "--funding-interval", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        info = json.loads(line)
        assert set(info) == {"rest_url", "ws_url", "accounts"}
        assert info["accounts"] == [{"name": "main", "api_key": "k" * 64, "api_secret": "s" * 64}]
        assert info["rest_url"].startswith("http://127.0.0.1:") and info["ws_url"].startswith("ws://127.0.0.1:")
        with urllib.request.urlopen(info["rest_url"] + "/fapi/v1/exchangeInfo", timeout=10) as r:
            symbols = [s["symbol"] for s in json.load(r)["symbols"]]
        assert symbols == ["ETHUSDC", "DOGEUSDT"]
        with urllib.request.urlopen(info["rest_url"] + "/fapi/v1/premiumIndex?symbol=ETHUSDC", timeout=10) as r:
            assert json.load(r)["nextFundingTime"] % 60_000 == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_accounts_and_legacy_paths_flags():
    proc = subprocess.Popen([sys.executable, "-m", "fleet", "sim", "--json", "--symbols", "ETHUSDC",
                             "--accounts", "main,hedge", "--legacy-paths", "all"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        info = json.loads(proc.stdout.readline())
        assert [a["name"] for a in info["accounts"]] == ["main", "hedge"]
        assert info["accounts"][0]["api_key"] != info["accounts"][1]["api_key"]
        with connect(info["ws_url"] + "/ws/ethusdc@markPrice@1s", open_timeout=10) as ws:   # served unrouted too
            assert json.loads(ws.recv(timeout=10))["e"] == "markPriceUpdate"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_rejects_a_bad_config_naming_the_field(tmp_path):
    bad = tmp_path / "sim.yaml"
    bad.write_text("funding_interval_s: -5\n")
    proc = subprocess.run([sys.executable, "-m", "fleet", "sim", "--config", str(bad)], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode != 0 and "funding_interval_s" in proc.stderr


def test_sim_thread_serves_synchronous_callers():
    with SimThread(symbols=["SOLUSDT"], seed=1) as sim:
        with urllib.request.urlopen(sim.rest_url + "/fapi/v1/time", timeout=10) as r:
            assert abs(json.load(r)["serverTime"] - time.time() * 1000) < 5000
        with urllib.request.urlopen(sim.rest_url + "/sim/accounts", timeout=10) as r:
            [acct] = json.load(r)
        assert (acct["name"], acct["api_key"]) == (sim.accounts[0][0], sim.accounts[0][1])


@pytest.mark.parametrize(("args", "said"), [
    (["--accounts", "a b"], "--accounts: 'a b' is not an account name"),
    (["--log-level", "LOUD"], "--log-level: 'LOUD' is not a level (one of DEBUG, INFO, WARNING, ERROR, CRITICAL)"),
    (["--api-key", "abc\nSECRETKEY"], "--api-key: 1-256 printable characters"),
    (["--api-secret", "abc\x1bSECRETKEY"], "account 'main': api_secret (HMAC) must be"),
    (["--funding-interval", "1e300"], "--funding-interval: seconds, from 1 to a week"),
])
def test_a_bad_option_is_refused_in_one_line_naming_it_without_echoing_a_key(args, said):
    """Before: pydantic's raw multi-line error with its web address, LOUD taken as WARNING, a key with a
    newline taken, a funding interval of 1e300 taken (then /sim/state answered 500)."""
    proc = subprocess.run([sys.executable, "-m", "fleet", "sim", "--json", *args], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1 and proc.stdout == "", (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and said in lines[0], proc.stderr
    assert "SECRETKEY" not in proc.stderr and "pydantic" not in proc.stderr
