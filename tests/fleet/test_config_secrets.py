"""A secret pasted where the config names where to read it from is refused, and never repeated back."""

from __future__ import annotations

import json

import pytest

from fleet.config import ConfigError, load_fleet_config

KEY = "vmPUZE6mv9SD5VNHk4HlWFsOr6aKE2zvsw0MuIgwCIPy6utIco14y7Ju91duEh8A"   # the shape of a Binance key


@pytest.mark.parametrize("where, field", [
    ({"accounts": [{"name": "main", "api_key_env": KEY, "api_secret_env": "S"}]}, "api_key_env"),
    ({"accounts": [{"name": "main", "key_file": KEY}]}, "key_file"),
    ({"api": {"token_env": KEY}}, "api.token_env"),
    ({"api": {"token_file": KEY}}, "api.token_file"),
    ({"journal": {"enabled": True, "password_env": KEY}}, "journal.password_env"),
    ({"journal": {"enabled": True, "password_file": KEY}}, "journal.password_file"),
])
def test_a_secret_where_its_variable_or_file_is_named_is_refused_unrepeated(tmp_path, where, field):
    doc = {"name": "f", "accounts": [{"name": "main", "api_key_env": "K", "api_secret_env": "S"}],
           "symbols": [{"symbol": "ETHUSDC", "account": "main"}], **where}
    path = tmp_path / "fleet.yaml"
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError) as err:
        load_fleet_config(path)
    assert field in str(err.value) and KEY not in str(err.value), str(err.value)
    assert "never goes in the config" in str(err.value)


def test_names_and_paths_pass(tmp_path):
    doc = {"name": "f", "accounts": [{"name": "main", "api_key_env": "MMFLEET_KEY_1", "api_secret_env": "_S"},
                                     {"name": "b", "key_file": "keys/b.yaml"}, {"name": "c", "key_file": "./c"}],
           "symbols": [{"symbol": "ETHUSDC", "account": "main"}], "api": {"token_file": "~/.mmfleet/api.token"}}
    path = tmp_path / "fleet.yaml"
    path.write_text(json.dumps(doc))
    assert load_fleet_config(path).accounts[2].key_file == "./c"
