"""``python -m fleet agent``: a bad config or a missing key is refused with a message naming the culprit."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fleet.ops.agent_cli import AgentSetupError, add_arguments, prepare

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "configs" / "fleet.demo.yaml"


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def _fleet_yaml(tmp_path: Path, **overrides) -> Path:
    data = yaml.safe_load(DEMO.read_text())
    for sym in data["symbols"]:
        sym["params_file"] = str(REPO / "configs" / sym["params_file"])
    for key, value in overrides.items():
        data[key] = value
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


URLS = ("--rest-url", "http://127.0.0.1:9", "--ws-url", "ws://127.0.0.1:9")


def test_demo_config_prepares_with_sim_urls(tmp_path):
    prep = prepare(_args("--config", str(DEMO), "--symbol", "ethusdc", *URLS, "--flatten-on-stop"))
    assert prep["symbol"] == "ETHUSDC"
    assert prep["params"].base.net_max == pytest.approx(0.20)
    assert prep["endpoints"].ws_user_url == "ws://127.0.0.1:9"
    assert prep["runtime"].flatten_on_stop is True


def test_symbol_params_over_the_hard_cap_name_the_field(tmp_path):
    path = _fleet_yaml(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["symbols"][0]["params"] = {"base": {"net_max": 0.4}}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(AgentSetupError, match=r"base.net_max: net_max 0.4 exceeds the hard cap net_max_hard_cap=0.25 for ETHUSDC"):
        prepare(_args("--config", str(path), "--symbol", "ETHUSDC", *URLS))


def test_disabled_grinding_is_refused_naming_the_field(tmp_path):
    path = _fleet_yaml(tmp_path)
    data = yaml.safe_load(path.read_text())
    data["symbols"][0]["params"] = {"grinding": {"enabled": False}}
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(AgentSetupError, match=r"grinding.enabled: .*may not be disabled"):
        prepare(_args("--config", str(path), "--symbol", "ETHUSDC", *URLS))


def test_runtime_field_error_names_the_field(tmp_path):
    path = _fleet_yaml(tmp_path, runtime={"deadman_heartbeat_sec": 40, "deadman_countdown_ms": 30000})
    with pytest.raises(AgentSetupError, match=r"runtime: .*deadman_heartbeat_sec must be shorter"):
        prepare(_args("--config", str(path), "--symbol", "ETHUSDC", *URLS))


def test_unknown_symbol_lists_the_configured_ones():
    with pytest.raises(AgentSetupError, match=r"DOGEUSDT is not in .*ETHUSDC, BTCUSDT, SOLUSDT"):
        prepare(_args("--config", str(DEMO), "--symbol", "DOGEUSDT", *URLS))


def test_sim_exchange_needs_urls():
    with pytest.raises(AgentSetupError, match=r"--rest-url and --ws-url"):
        prepare(_args("--config", str(DEMO), "--symbol", "ETHUSDC"))


def test_wrong_url_scheme_is_named():
    with pytest.raises(AgentSetupError, match=r"--ws-url 'http://x' must start with ws:// or wss://"):
        prepare(_args("--config", str(DEMO), "--symbol", "ETHUSDC", "--rest-url", "http://x", "--ws-url", "http://x"))


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(AgentSetupError, match=r"config .*nope.yaml cannot be read"):
        prepare(_args("--config", str(tmp_path / "nope.yaml"), "--symbol", "ETHUSDC", *URLS))


def _run_cli(*argv: str, env_extra: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MMFLEET_")}
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "fleet", "agent", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=cwd or REPO,
    )


def test_cli_bad_config_exits_2_naming_the_field_and_does_not_start(tmp_path):
    path = _fleet_yaml(tmp_path, runtime={"user_stream_grace_sec": -1})
    proc = _run_cli("--config", str(path), "--symbol", "ETHUSDC", *URLS, "--state-dir", str(tmp_path / "st"))
    assert proc.returncode == 2
    assert "runtime.user_stream_grace_sec" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "st").exists()  # nothing was locked: the agent never started


def test_cli_missing_key_env_names_the_variable_never_a_value(tmp_path):
    proc = _run_cli(
        "--config", str(DEMO), "--symbol", "ETHUSDC", *URLS, "--metrics-port", "-1", "--state-dir", str(tmp_path),
        env_extra={"MMFLEET_MAIN_API_KEY": "k" * 64},
    )
    assert proc.returncode == 2
    assert "MMFLEET_MAIN_API_SECRET" in proc.stderr
    assert "k" * 64 not in proc.stderr + proc.stdout


def test_cli_metrics_port_in_use_is_named_and_the_lock_released(tmp_path):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = _run_cli(
            "--config", str(DEMO), "--symbol", "ETHUSDC", *URLS, "--metrics-port", str(port), "--state-dir", str(tmp_path),
            env_extra={"MMFLEET_MAIN_API_KEY": "k" * 64, "MMFLEET_MAIN_API_SECRET": "s" * 64},
        )
    assert proc.returncode == 2
    assert f"--metrics-port {port}: cannot listen" in proc.stderr
    assert not (tmp_path / "demo.ETHUSDC.pid").exists()  # ownership given back on the way out


@pytest.mark.parametrize("flag, value, said", [("--metrics-port", "99999", "--metrics-port must be from 0 to 65535"),
                                               ("--log-level", "BOGUS", "--log-level must be one of")])
def test_cli_bad_flag_exits_2_naming_it_before_anything_starts(tmp_path, flag, value, said):
    proc = _run_cli("--config", str(DEMO), "--symbol", "ETHUSDC", *URLS, "--state-dir", str(tmp_path / "st"), flag, value)
    assert proc.returncode == 2 and said in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "st").exists()   # no lock taken, no key read


def test_cli_a_state_directory_it_cannot_use_exits_2_naming_it_before_anything_trades(tmp_path):
    """An epoch file that holds no epoch (it restarted at 1 and repeated earlier order ids), or a state
    directory that is a file: one line naming it, exit 2, no traceback, no order."""
    keys = {"MMFLEET_MAIN_API_KEY": "k" * 64, "MMFLEET_MAIN_API_SECRET": "s" * 64}
    state = tmp_path / "st"
    state.mkdir()
    (state / "demo.ETHUSDC.epoch").write_text("garbage\n")
    proc = _run_cli("--config", str(DEMO), "--symbol", "ETHUSDC", *URLS, "--metrics-port", "-1",
                    "--state-dir", str(state), env_extra=keys)
    assert proc.returncode == 2 and "holds 'garbage', not an epoch" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and (state / "demo.ETHUSDC.epoch").read_text() == "garbage\n"
    (tmp_path / "file").write_text("")
    proc = _run_cli("--config", str(DEMO), "--symbol", "ETHUSDC", *URLS, "--metrics-port", "-1",
                    "--state-dir", str(tmp_path / "file"), env_extra=keys)
    assert proc.returncode == 2 and "cannot hold the lock file" in proc.stderr and "Traceback" not in proc.stderr
