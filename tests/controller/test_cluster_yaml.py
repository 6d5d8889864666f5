"""cluster.yaml is a valid Ray cluster launcher file (Ray's own schema, after Ray's own config
preparation), and it keeps the fleet's rules: no agents on the head, token auth, keys only in the
trader nodes' environment."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray.autoscaler
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

CLUSTER_FILE = Path(__file__).resolve().parents[2] / "cluster.yaml"


class ClusterFileError(ValueError):
    """A cluster file Ray would refuse; the message names the file and the field."""


def _field(path: Any) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def validate_cluster_file(raw: dict[str, Any], where: str = "cluster.yaml") -> dict[str, Any]:
    """Check ``raw`` the way ``ray up`` does (schema, then Ray's preparation and checks), offline."""
    schema = json.loads(Path(ray.autoscaler.__file__).with_name("ray-schema.json").read_text())
    errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(raw), key=lambda e: list(e.absolute_path))
    if errors:
        raise ClusterFileError(
            f"{where} does not match Ray's schema:\n"
            + "\n".join(f"  {_field(e.absolute_path)}: {e.message}" for e in errors)
        )
    try:
        prepared = prepare_config(copy.deepcopy(raw))
        validate_config(prepared)
    except jsonschema.ValidationError as e:
        raise ClusterFileError(f"{where} after Ray's preparation: {_field(e.absolute_path)}: {e.message}") from None
    except (ValueError, KeyError, RuntimeError) as e:
        raise ClusterFileError(f"{where}: {e}") from None
    return prepared


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_FILE.read_text())


@pytest.fixture(scope="module")
def prepared(raw) -> dict[str, Any]:
    return validate_cluster_file(raw)


def test_cluster_file_validates_against_rays_schema_after_preparation(prepared):
    assert prepared["provider"]["region"] == "ap-northeast-1"
    assert set(prepared["available_node_types"]) == {"head", "trader"}
    assert prepared["head_node_type"] == "head"


def test_the_head_offers_no_cpu_so_no_agent_runs_there(prepared):
    head = prepared["available_node_types"]["head"]
    assert head["resources"].get("CPU") == 0
    start = " ".join(prepared["head_start_ray_commands"])
    assert "--head" in start and "--num-cpus=0" in start


def test_trader_nodes_offer_the_custom_resource_agents_ask_for(prepared):
    trader = prepared["available_node_types"]["trader"]
    assert trader["resources"]["mmfleet_trader"] >= 1
    assert trader["min_workers"] >= 1
    assert "InstanceMarketOptions" not in trader["node_config"], "traders must not run on spot"


def test_ray_token_auth_is_on_for_every_node(prepared):
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in prepared[key] if "ray start" in c]
        assert starts and all("RAY_AUTH_MODE=token" in c for c in starts), key
    assert any("~/.ray/auth_token" in c for c in prepared["setup_commands"])


def test_setup_installs_mmfleet_from_the_pinned_lock(prepared):
    setup = "\n".join(prepared["setup_commands"])
    assert "requirements.lock" in setup and "install -q --no-deps -e ~/mmfleet" in setup
    assert prepared["file_mounts"] == {"~/mmfleet": "."}


def test_exchange_keys_are_exported_at_ray_start_never_in_runtime_env(raw, prepared):
    for key in ("worker_start_ray_commands", "head_start_ray_commands"):
        start = next(c for c in prepared[key] if "ray start" in c)
        for var in ("MMFLEET_MAIN_API_KEY", "MMFLEET_MAIN_API_SECRET"):
            assert f"export {var}=" in start and start.index(f"export {var}=") < start.index("ray start"), key
        assert "mmfleet/binance/main" in start
    head = next(c for c in prepared["head_start_ray_commands"] if "ray start" in c)
    assert "export MMFLEET_API_TOKEN=" in head          # the endpoint's token: head only
    assert "MMFLEET_API_TOKEN" not in " ".join(prepared["worker_start_ray_commands"])
    assert "runtime_env" not in yaml.safe_dump(raw)
    # No literal secret: every secret is fetched on the node when Ray starts.
    assert not re.search(r"(API_KEY|API_SECRET|TOKEN)=[\"']?[A-Za-z0-9]{16,}", CLUSTER_FILE.read_text())


@pytest.mark.parametrize(
    "breakage,message",
    [
        (lambda c: c["provider"].pop("type"), "provider: 'type' is a required property"),
        (lambda c: c.__setitem__("max_workers", "four"), "max_workers: 'four' is not of type 'integer'"),
        (lambda c: c.__setitem__("head_start_ray_commands", "ray start --head"), "head_start_ray_commands: "),
        (lambda c: c.__setitem__("worker_nodes_count", 3), "Additional properties are not allowed ('worker_nodes_count'"),
        (lambda c: c.__setitem__("head_node_type", "leader"), "`head_node_type` must be one of `available_node_types`"),
        (
            lambda c: c["available_node_types"]["trader"].__setitem__("min_workers", 9),
            "global `max_workers` is smaller than the sum of `min_workers`",
        ),
    ],
)
def test_a_broken_copy_fails_with_a_message_naming_the_field(raw, tmp_path, breakage, message):
    broken = copy.deepcopy(raw)
    breakage(broken)
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(broken))
    with pytest.raises(ClusterFileError) as err:
        validate_cluster_file(yaml.safe_load(path.read_text()), where=str(path))
    assert message in str(err.value)
    assert str(path) in str(err.value)
