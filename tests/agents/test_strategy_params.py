"""The parameters the core trades by: the seed's values by default and in ETHUSDC.yaml, and the seed's
prohibitions as validation errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fleet.config import ConfigError, SymbolParams, load_symbol_params

ROOT = Path(__file__).resolve().parents[2]

SEED = {
    ("base", "quote_interval_ms"): 220,
    ("base", "base_size"): 0.007,
    ("base", "net_max"): 0.20,
    ("base", "min_spread"): 0.00065,
    ("grid", "layer_spacing_mode"): "geometric",
    ("grid", "spacing_ratio"): 1.35,
    ("grid", "layer_size_decay"): 0.92,
    ("grid", "max_layers"): 14,
    ("worst_case", "multiplier"): 1.15,
    ("worst_case", "size_decay_k"): 3.8,
    ("funding", "sensitivity"): 2.2,
    ("funding", "predict_alpha"): 0.25,
    ("grinding", "enabled"): True,
    ("grinding", "trigger_ratio"): 0.87,
    ("grinding", "range_std_threshold"): 0.0038,
    ("grinding", "grind_size_pct"): 0.075,
    ("grinding", "reentry_spread_bps"): 4.2,
    ("grinding", "max_grind_per_hour"): 18,
    ("grinding", "min_interval_sec"): 42,
    ("grinding", "funding_boost"): True,
    ("grinding", "funding_favor_multiplier"): 1.4,
    ("drawdown", "drawdown_bands"): (6.0, 11.0, 17.0),
    ("drawdown", "reduce_fractions"): (0.25, 0.45, 0.80),
    ("drawdown", "twap_slices"): 4,
    ("drawdown", "twap_interval_ms"): 1200,
}


@pytest.mark.parametrize("params", ["defaults", "ETHUSDC.yaml"])
def test_every_seed_value_is_the_default_and_in_the_ethusdc_file(params):
    p = SymbolParams() if params == "defaults" else load_symbol_params(ROOT / "configs/symbols/ETHUSDC.yaml")
    for (group, name), value in SEED.items():
        assert getattr(getattr(p, group), name) == value, f"{group}.{name}"
    assert p.worst_cap == pytest.approx(0.23)
    assert p.grinding.interval_sec == 55


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "ETHUSDC.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "data, field",
    [
        ({"grinding": {"enabled": False}}, "grinding.enabled"),
        ({"base": {"net_max": 0.26}}, "net_max"),
        ({"grinding": {"interval_sec": 29}}, "grinding.interval_sec"),
        ({"drawdown": {"drawdown_bands": [6.0, 11.0], "reduce_fractions": [0.25, 0.45, 0.8]}}, "drawdown"),
        ({"grid": {"max_layers": 0}}, "grid.max_layers"),
        ({"base": {"base_sise": 0.01}}, "base.base_sise"),
        # infinity passes gt=0 and switches a check off; NaN passes a guardrail's `v < 30`
        ({"risk": {"capital": float("inf")}}, "risk.capital"),
        ({"base": {"net_max": "1e400"}}, "base.net_max"),
        ({"grinding": {"interval_sec": float("nan")}}, "grinding.interval_sec"),
        ({"base": {"base_size": True}}, "base.base_size"),
        ({"grid": {"max_layers": True}}, "grid.max_layers"),
        # bands that could never be reached, or none: no drawdown reduction at all
        ({"drawdown": {"drawdown_bands": [], "reduce_fractions": []}}, "drawdown"),
        ({"drawdown": {"drawdown_bands": [600, 1100, 1700]}}, "drawdown"),
        ({"drawdown": {"drawdown_bands": [6, 6, 17]}}, "drawdown"),
    ],
)
def test_the_seeds_prohibitions_are_errors_naming_the_field(tmp_path, data, field):
    with pytest.raises(ConfigError) as err:
        load_symbol_params(write(tmp_path, data))
    assert field in str(err.value)
    assert "ETHUSDC.yaml" in str(err.value)


# --- the hard cap on net_max: held by code and the fleet config, never by the symbol's params ----


def _fleet(tmp_path: Path, base: dict, entry_extra: dict | None = None, symbol: str = "ETHUSDC", **top) -> Path:
    (tmp_path / f"{symbol}.yaml").write_text(yaml.safe_dump({"base": base}))
    doc = {
        "name": "capped",
        "accounts": [{"name": "main", "api_key_env": "K", "api_secret_env": "S"}],
        "symbols": [{"symbol": symbol, "account": "main", "params_file": f"{symbol}.yaml", **(entry_extra or {})}],
        **top,
    }
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def _resolve(path: Path, symbol: str = "ETHUSDC"):
    from fleet.config import load_fleet_config, symbol_params

    return symbol_params(load_fleet_config(path), symbol, path)


def test_a_symbol_file_cannot_raise_its_own_hard_cap(tmp_path):
    path = _fleet(tmp_path, {"net_max": 5, "net_max_hard_cap": 10})
    with pytest.raises(ConfigError, match=r"base: .*net_max_hard_cap may not be set in a symbol's params") as err:
        _resolve(path)
    assert "ETHUSDC.yaml" in str(err.value) and "symbols[].net_max_hard_cap" in str(err.value)
    with pytest.raises(ConfigError, match="net_max_hard_cap may not be set"):
        load_symbol_params(write(tmp_path, {"base": {"net_max": 5, "net_max_hard_cap": 10}}))


def test_net_max_above_the_cap_code_holds_is_refused_naming_the_field_and_the_cap(tmp_path):
    with pytest.raises(ConfigError, match=r"base.net_max: net_max 5(\.0)? exceeds the hard cap net_max_hard_cap=0.25 "
                                          r"for ETHUSDC \(held by code"):
        _resolve(_fleet(tmp_path, {"net_max": 5}))
    # the fleet config may not lift the seed's cap for ETHUSDC, not even with its default
    with pytest.raises(ConfigError, match=r"ETHUSDC net_max_hard_cap 10(\.0)? is above the hard cap 0.25 held by code"):
        _resolve(_fleet(tmp_path, {"net_max": 5}, {"net_max_hard_cap": 10}))
    with pytest.raises(ConfigError, match="net_max_hard_cap=0.25 for ETHUSDC"):
        _resolve(_fleet(tmp_path, {"net_max": 5}, risk={"net_max_hard_cap": 10}))
    assert _resolve(_fleet(tmp_path, {"net_max": 0.25})).base.net_max == 0.25
    with pytest.raises(ConfigError, match=r"net_max 0.2 exceeds the hard cap net_max_hard_cap=0.1 for ETHUSDC"):
        _resolve(_fleet(tmp_path, {"net_max": 0.2}, {"net_max_hard_cap": 0.1}))  # ...but may lower it


def test_other_symbols_take_their_cap_from_the_fleet_config(tmp_path):
    path = _fleet(tmp_path, {"net_max": 8}, {"net_max_hard_cap": 10}, symbol="SOLUSDT")
    assert _resolve(path, "SOLUSDT").base.net_max == 8
    with pytest.raises(ConfigError, match=r"net_max 8(\.0)? exceeds the hard cap net_max_hard_cap=0.25 for SOLUSDT "
                                          r"\(held by risk.net_max_hard_cap"):
        _resolve(_fleet(tmp_path, {"net_max": 8}, symbol="SOLUSDT"), "SOLUSDT")
    assert _resolve(_fleet(tmp_path, {"net_max": 8}, symbol="SOLUSDT", risk={"net_max_hard_cap": 9}), "SOLUSDT")


def test_apply_refuses_params_over_the_cap_and_params_that_set_it():
    from controller.controller import build_spec, parse_spec
    from fleet.config import load_fleet_config

    demo = ROOT / "configs/fleet.demo.yaml"
    spec = build_spec(load_fleet_config(demo), str(demo))
    assert "net_max_hard_cap" not in spec["params"]["SOLUSDT"]["base"]
    over = {**spec, "params": {**spec["params"], "ETHUSDC": {"base": {"net_max": 5}}}}
    with pytest.raises(ValueError, match=r"base.net_max: net_max 5(\.0)? exceeds the hard cap net_max_hard_cap=0.25 for ETHUSDC"):
        parse_spec(over)
    own_cap = {**spec, "params": {**spec["params"], "ETHUSDC": {"base": {"net_max": 5, "net_max_hard_cap": 10}}}}
    with pytest.raises(ValueError, match="net_max_hard_cap may not be set in a symbol's params"):
        parse_spec(own_cap)
    lifted = {**spec, "fleet": {**spec["fleet"], "symbols": [
        {**e, "net_max_hard_cap": 100.0} if e["symbol"] == "SOLUSDT" else e for e in spec["fleet"]["symbols"]]}}
    assert parse_spec(lifted)[0].hard_cap("SOLUSDT") == (100.0, "symbols[SOLUSDT].net_max_hard_cap in the fleet config")


def test_a_spec_stored_before_the_rule_moves_its_caps_to_the_fleet_entries():
    from controller.controller import build_spec, parse_spec
    from fleet.config import load_fleet_config

    demo = ROOT / "configs/fleet.demo.yaml"
    spec = build_spec(load_fleet_config(demo), str(demo))
    for e in spec["fleet"]["symbols"]:
        e.pop("net_max_hard_cap", None)
    spec["params"]["SOLUSDT"]["base"]["net_max_hard_cap"] = 10.0
    spec["params"]["ETHUSDC"]["base"]["net_max_hard_cap"] = 0.25
    spec["params"]["BTCUSDT"]["base"]["net_max_hard_cap"] = 0.03
    cfg, params = parse_spec(spec, stored=True)
    assert cfg.hard_cap("SOLUSDT")[0] == 10.0 and params["SOLUSDT"].base.net_max == 8.0
