"""Config, simulator config and schedule files read strictly (fleet/yamlfile.py): a key given twice,
a file that is not UTF-8 or nested too deeply, and an error that never shows the line's text."""

from __future__ import annotations

import pytest

from fleet import yamlfile
from fleet.config import ConfigError, load_fleet_config
from fleet.sim.config import SimConfigError, load_sim_config
from simulate.schedule import ScheduleError, load_schedule

FLEET = """\
name: dup
accounts: [{name: main, api_key_env: K, api_secret_env: S}]
risk: {max_total_notional: 20000}
symbols: [{symbol: ETHUSDC, account: main}]
risk: {net_max_hard_cap: 0.2}
"""


def test_a_key_given_twice_is_refused_naming_it_and_its_line(tmp_path):
    # yaml.safe_load kept the second risk block: the fleet's notional cap went back to its default
    path = tmp_path / "fleet.yaml"
    path.write_text(FLEET)
    with pytest.raises(ConfigError, match=r"fleet.yaml is not valid YAML: key 'risk' given twice .*\(line 5, column 1\)"):
        load_fleet_config(path)
    path.write_text(FLEET.replace("risk: {net_max_hard_cap: 0.2}", "").replace(
        "{max_total_notional: 20000}", "{max_total_notional: 20000, max_total_notional: 1000000}"))
    with pytest.raises(ConfigError, match="key 'max_total_notional' given twice"):
        load_fleet_config(path)


def test_a_merge_may_still_be_overridden():
    assert yamlfile.loads("base: &b {a: 1, b: 2}\nover: {<<: *b, b: 3}\n")["over"] == {"a": 1, "b": 3}


def test_an_error_names_the_line_never_its_text(tmp_path):
    secret = "sEcReT0123456789abcdef"
    path = tmp_path / "sim.yaml"
    path.write_text(f'accounts:\n  - name: main\n    api_secret: "{secret}\n    api_key: k\n')
    with pytest.raises(SimConfigError) as err:
        load_sim_config(path)
    assert "not valid YAML" in str(err.value) and "line" in str(err.value) and secret not in str(err.value)


@pytest.mark.parametrize("raw, why", [
    (b"name: t\xff\n", "is not UTF-8 text (byte 0xff at offset 7)"),
    (b"a: " + b"[" * 20000 + b"]" * 20000 + b"\n", "nested too deeply"),
    (b"\x00\x01", "not valid YAML"),
    # 330 bytes of anchors in a schedule's fault entry stood for 531,441 values (2.5 MB in each answer)
    (b"- {at: 60, do: rest_fault, mode: batch_malformed, path: /fapi/v1/batchOrders, entry: {"
     b"a: &a [x,x,x,x,x,x,x,x,x], b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a], c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b], "
     b"d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c], e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d], "
     b"f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]}}\n", "its aliases add over 100,000 values to it"),
])
def test_a_file_that_is_not_yaml_text_is_refused_naming_the_file(tmp_path, raw, why):
    path = tmp_path / "bad.yaml"
    path.write_bytes(raw)
    for load, error in ((load_fleet_config, ConfigError), (load_sim_config, SimConfigError),
                        (load_schedule, ScheduleError)):
        with pytest.raises(error) as err:
            load(path)
        assert "bad.yaml" in str(err.value) and why in str(err.value), str(err.value)


@pytest.mark.parametrize("field, value", [
    ("tick_size", "NaN"), ("tick_size", "abc"), ("min_notional", "Infinity"), ("min_qty", "-1"),
    ("funding_rate", "x"), ("multiplier_up", "0"), ("start_price", float("inf")),
])
def test_a_simulator_symbol_with_a_number_that_is_not_one_is_refused_naming_the_field(field, value):
    spec = {"symbol": "ETHUSDC", "base_asset": "ETH", "quote_asset": "USDC", field: value}
    with pytest.raises(SimConfigError, match=rf"symbols\.0\.{field}"):
        load_sim_config({"symbols": [spec]})


@pytest.mark.parametrize("top", [{"funding_interval_s": float("inf")}, {"funding_interval_s": 1e-7},
                                 {"maker_commission": "abc"}, {"accounts": [{"name": "m", "balances": {"USDT": "-5"}}]}])
def test_a_simulator_config_with_an_unusable_number_is_refused(top):
    with pytest.raises(SimConfigError):
        load_sim_config(top)


def test_an_anchored_mapping_merged_before_it_is_read_is_not_taken_for_a_repeat():
    # PyYAML flattens an anchored mapping in place when another merges it: its own override looked repeated
    doc = "common: &common {x: 1}\nprofiles: {slow: &slow {<<: *common, x: 5}}\nfast: {<<: *slow}\n"
    assert yamlfile.loads(doc)["fast"] == {"x": 5}


@pytest.mark.parametrize("doc, said, hidden", [
    ("api_secret: *AbCdEfGhIjKlMnOpQrStUv\n", "undefined alias <22 characters>", "AbCdEfGhIj"),
    ("state_dir: 2024-13-01\n", "a value YAML cannot read as its type", "2024"),
    ("api_secret: !!int SECRETVALUE123\n", "a value YAML cannot read as its type", "SECRETVALUE"),
    ("a: \x07\n", "a character YAML does not allow", "\x07"),
])
def test_what_yaml_cannot_read_is_said_without_its_text(doc, said, hidden):
    with pytest.raises(yamlfile.YamlFileError) as err:
        yamlfile.loads(doc)
    assert said in str(err.value) and hidden not in str(err.value), str(err.value)
