"""The fleet CLI and the controller's pure helpers, without Ray: config checks with clear errors,
the apply document, rate-share splits and the live table."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from controller.controller import build_spec, endpoints_of, parse_spec, rate_shares
from fleet.cli import main
from fleet.config import FleetConfig
from fleet.fleet_cli import render_summary, render_table

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def fleet(symbols: dict[str, str], accounts: dict[str, float], **extra) -> FleetConfig:
    return FleetConfig.model_validate({
        "accounts": [{"name": a, "key_file": "/nonexistent/keys.yaml", "rate_share": share} for a, share in accounts.items()],
        "symbols": [{"symbol": s, "account": a} for s, a in symbols.items()],
        **extra,
    })


def test_rate_shares_split_each_accounts_limits_evenly_among_its_agents():
    cfg = fleet({"ETHUSDC": "a", "BTCUSDT": "a", "SOLUSDT": "b"}, {"a": 1.0, "b": 0.5})
    assert rate_shares(cfg) == {"ETHUSDC": 0.5, "BTCUSDT": 0.5, "SOLUSDT": 0.5}
    fewer = fleet({"ETHUSDC": "a"}, {"a": 0.8, "b": 0.5})
    assert rate_shares(fewer) == {"ETHUSDC": 0.8}


def test_spec_resolves_params_files_and_round_trips():
    from fleet.config import load_fleet_config

    path = CONFIGS / "fleet.demo.yaml"
    cfg = load_fleet_config(path)
    spec = build_spec(cfg, str(path))
    assert set(spec["params"]) == {"ETHUSDC", "BTCUSDT", "SOLUSDT"}
    again, params = parse_spec(spec)
    assert again == cfg
    assert params["BTCUSDT"].base.net_max == spec["params"]["BTCUSDT"]["base"]["net_max"]


def test_spec_with_params_for_an_unknown_symbol_is_refused():
    cfg = fleet({"ETHUSDC": "a"}, {"a": 1.0})
    spec = build_spec(cfg)
    spec["params"]["XRPUSDT"] = spec["params"]["ETHUSDC"]
    with pytest.raises(ValueError, match="XRPUSDT"):
        parse_spec(spec)


def test_agents_need_exchange_urls():
    with pytest.raises(ValueError, match="rest_url"):
        endpoints_of(fleet({"ETHUSDC": "a"}, {"a": 1.0}))


def test_validate_accepts_the_shipped_configs(capsys):
    for name in ("fleet.demo.yaml", "fleet.testnet.yaml"):
        assert main(["validate", "--config", str(CONFIGS / name)]) == 0
        assert capsys.readouterr().out.strip().endswith("ok")


def test_validate_names_the_bad_field(tmp_path, capsys):
    bad = yaml.safe_load((CONFIGS / "fleet.demo.yaml").read_text())
    bad["symbols"][0]["params"] = {"base": {"net_max": 0.9}}
    path = tmp_path / "bad.yaml"
    bad["symbols"] = [{**e, "params_file": str(CONFIGS / e["params_file"])} for e in bad["symbols"]]
    path.write_text(yaml.safe_dump(bad))
    assert main(["validate", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "net_max" in err and "hard cap" in err


def test_up_with_a_missing_config_fails_before_touching_ray(tmp_path, capsys):
    assert main(["up", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "cannot read config" in capsys.readouterr().err


def test_table_shows_position_worst_case_pnl_fills_grinds_and_kill_state():
    rows = {
        "ETHUSDC": {"status": {"state": "quoting", "epoch": 3},
                    "exposure": {"position": 0.05, "worst_long": 0.1, "worst_short": -0.02, "cap": 0.23,
                                 "realized_pnl": 1.5, "unrealized_pnl": -0.5, "funding_pnl": 0.0,
                                 "kill_state": "running"},
                    "fills": 7, "grinds": 1, "error": None},
        "BTCUSDT": {"status": {}, "exposure": {}, "fills": 0, "grinds": 0, "error": "no actor"},
    }
    table = render_table(rows)
    eth = next(line for line in table.splitlines() if line.startswith("ETHUSDC"))
    for text in ("quoting", "0.0500", "0.100/-0.020 vs 0.230", "1.00", " 7 ", " 1 ", "running"):
        assert text in eth
    assert "no actor" in table and "agents quoting 1/2" in table
    summary = render_summary({"fleet": "f", "symbols": {"ETHUSDC": {"open_orders": 0, "summary": None, "error": None}}},
                             rows, 12.0)
    assert "fleet f stopped after 12 s" in summary and "ETHUSDC" in summary
