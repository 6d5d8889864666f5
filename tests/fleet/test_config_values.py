"""Fleet config values a process would refuse later (or never notice) are refused when the file is read,
naming the field: an empty params file, an exchange URL that is not one, a port out of range, a host
with a line break, an empty state directory, a negative resource."""

from __future__ import annotations

import json

import pytest

from fleet.config import ConfigError, load_fleet_config, symbol_params

BASE = {"name": "f", "accounts": [{"name": "main", "api_key_env": "K", "api_secret_env": "S"}],
        "symbols": [{"symbol": "ETHUSDC", "account": "main"}]}


@pytest.mark.parametrize("extra, field", [
    ({"exchange": {"kind": "binance", "rest_url": "not a url", "ws_market_url": "wss://x.example/market"}},
     "exchange"),
    ({"exchange": {"kind": "binance", "rest_url": "file:///etc", "ws_market_url": "wss://x.example/market"}},
     "exchange"),
    ({"agent": {"metrics_port": 99999}}, "agent.metrics_port"),
    ({"agent": {"resources": {"x": -1}}}, "agent.resources.x"),
    ({"api": {"host": "127.0.0.1\nX-Forged: 1"}}, "api.host"),
    ({"state_dir": ""}, "state_dir"),
    ({"journal": {"path": "/tmp"}}, "journal.path"),   # a directory: the writer spooled for the whole run
    ({"runtime": {"stream_max_lifetime_sec": 1e-6}}, "runtime.stream_max_lifetime_sec"),   # 57 reconnects in 15 s
    ({"runtime": {"market_stale_sec": 1e300}}, "runtime.market_stale_sec"),   # the check switched off
    ({"runtime": {"deadman_heartbeat_sec": 1e-9}}, "runtime.deadman_heartbeat_sec"),
])
def test_a_value_a_process_would_refuse_later_is_refused_now(tmp_path, extra, field):
    path = tmp_path / "fleet.yaml"
    path.write_text(json.dumps({**BASE, **extra}))
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_fleet_config(path)


def test_an_empty_params_file_is_refused_not_read_as_the_defaults(tmp_path):
    (tmp_path / "SOLUSDT.yaml").write_text("# nothing yet\n")
    doc = {**BASE, "symbols": [{"symbol": "SOLUSDT", "account": "main", "params_file": "SOLUSDT.yaml"}]}
    path = tmp_path / "fleet.yaml"
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="SOLUSDT.yaml of SOLUSDT holds no parameters"):
        symbol_params(load_fleet_config(path), "SOLUSDT", path)


def test_an_inline_param_error_names_where_it_is(tmp_path):
    doc = {**BASE, "symbols": [{"symbol": "ETHUSDC", "account": "main", "params": {"base": {"net_mx": 0.1}}}]}
    path = tmp_path / "fleet.yaml"
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=r"symbols\[0\]\.params of .*fleet.yaml"):
        symbol_params(load_fleet_config(path), "ETHUSDC", path)


def test_a_worst_case_multiplier_that_would_step_past_the_hard_cap_is_refused(tmp_path):
    """net_max is held under its hard cap (0.25 for ETHUSDC); a multiplier of 3 let the worst case, and so
    the position, reach 0.75 all the same."""
    doc = {**BASE, "symbols": [{"symbol": "ETHUSDC", "account": "main",
                                "params": {"base": {"net_max": 0.25}, "worst_case": {"multiplier": 3.0}}}]}
    path = tmp_path / "fleet.yaml"
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=r"worst_case\.multiplier"):
        symbol_params(load_fleet_config(path), "ETHUSDC", path)
