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
    ],
)
def test_the_seeds_prohibitions_are_errors_naming_the_field(tmp_path, data, field):
    with pytest.raises(ConfigError) as err:
        load_symbol_params(write(tmp_path, data))
    assert field in str(err.value)
    assert "ETHUSDC.yaml" in str(err.value)
