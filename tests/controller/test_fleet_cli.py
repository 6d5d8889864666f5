"""The fleet CLI and the controller's pure helpers, without Ray: config checks with clear errors,
the apply document, rate-share splits and the live table."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from controller.controller import build_spec, endpoints_of, parse_spec, rate_shares
from fleet.ops.cli import main
from fleet.config import FleetConfig
from fleet.ops.fleet_cli import render_summary, render_table

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


def test_validate_refuses_a_size_under_the_symbols_smallest_order(tmp_path, capsys):
    """An agent with such a base_size would place nothing: validate (and up, and apply, before anything
    changes) name it against the exchange's LOT_SIZE, here the simulator's spec."""
    bad = yaml.safe_load((CONFIGS / "fleet.demo.yaml").read_text())
    bad["symbols"] = [{**e, "params_file": str(CONFIGS / e["params_file"])} for e in bad["symbols"]]
    bad["symbols"][0]["params"] = {"base": {"base_size": 0.0001}}
    bad["exchange"]["sim"]["config"] = str(CONFIGS / bad["exchange"]["sim"]["config"])
    path = tmp_path / "small.yaml"
    path.write_text(yaml.safe_dump(bad))
    assert main(["validate", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{bad['symbols'][0]['symbol']}'s base.base_size 0.0001 is under its smallest order of 0.001" in err
    for params, says in (({"base": {"net_max": 0.0001}}, "net_max x worst_case.multiplier = 0.0001"),
                         ({"risk": {"max_order_notional": 0.01}}, "max_order_notional 0.01 is under the exchange's")):
        bad["symbols"][0]["params"] = params   # limits no order fits in: the agent would place nothing either
        path.write_text(yaml.safe_dump(bad))
        assert main(["validate", "--config", str(path)]) == 2
        assert says in capsys.readouterr().err, says


def test_up_with_a_missing_config_fails_before_touching_ray(tmp_path, capsys):
    assert main(["up", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml cannot be read" in capsys.readouterr().err


def test_table_shows_position_worst_case_pnl_net_of_fees_fills_grinds_and_kill_state():
    rows = {
        "ETHUSDC": {"status": {"state": "quoting", "epoch": 3},
                    "exposure": {"position": 0.05, "worst_long": 0.1, "worst_short": -0.02, "cap": 0.23,
                                 "realized_pnl": 1.5, "unrealized_pnl": -0.5, "funding_pnl": 0.25,
                                 "commission": 0.25, "kill_state": "running"},
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
    assert "FEES" in summary and "fleet P&L 1.00 (net of fees)" in summary  # as the journal and the console count


# --- symbols checked against the exchange's list ----------------------------------------------------


def sim_fleet_file(tmp_path: Path, symbols: list[str], sim_config: dict | None = None,
                   exchange: dict | None = None) -> Path:
    doc = {
        "name": "symcheck",
        "exchange": exchange or {"kind": "sim"},
        "accounts": [{"name": "main", "api_key_env": "MMFLEET_TEST_KEY", "api_secret_env": "MMFLEET_TEST_SECRET"}],
        "symbols": [{"symbol": s, "account": "main"} for s in symbols],
        "state_dir": str(tmp_path / "state"),
    }
    if sim_config is not None:
        (tmp_path / "sim.yaml").write_text(yaml.safe_dump(sim_config))
        doc["exchange"] = {"kind": "sim", "sim": {"config": "sim.yaml"}}
    path = tmp_path / "fleet.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def nothing_may_start(monkeypatch):
    """Fail the test if up gets as far as Ray, the simulator or the fleet."""
    import fleet.ops.fleet_cli as cli

    def forbidden(*_a, **_k):
        raise AssertionError("up started something although a symbol was refused")

    for name in ("connect", "start_simulator", "start_fleet"):
        monkeypatch.setattr(cli, name, forbidden)


def test_validate_refuses_a_symbol_the_simulator_does_not_list(tmp_path, capsys):
    path = sim_fleet_file(tmp_path, ["ETHUSDC", "NOSUCHCOIN"])
    assert main(["validate", "--config", str(path)]) == 2
    captured = capsys.readouterr()
    assert "NOSUCHCOIN is not listed by the simulator" in captured.err
    assert "ETHUSDC, BTCUSDT, SOLUSDT" in captured.err
    assert not captured.out.strip().endswith("ok")


def test_up_refuses_an_unknown_symbol_before_anything_starts(tmp_path, capsys, nothing_may_start):
    path = sim_fleet_file(tmp_path, ["NOSUCHCOIN", "ETHUSDC", "DOGEUSDT"])
    assert main(["up", "--config", str(path), "--address", "local", "--duration", "1"]) == 2
    err = capsys.readouterr().err
    assert "NOSUCHCOIN is not listed" in err and "DOGEUSDT is not listed" in err
    assert "ETHUSDC is not listed" not in err
    assert "nothing started" in err
    assert not (tmp_path / "state").exists()      # not even the simulator's key files


def test_the_simulators_config_adds_the_symbols_it_lists(tmp_path, capsys):
    sim = {"symbols": [{"symbol": "DOGEUSDT", "base_asset": "DOGE", "quote_asset": "USDT", "tick_size": "0.00001",
                        "step_size": "0.001", "start_price": 0.1}]}   # (a step of 1 would refuse base_size 0.007)
    path = sim_fleet_file(tmp_path, ["DOGEUSDT", "ETHUSDC"], sim_config=sim)
    assert main(["validate", "--config", str(path)]) == 0
    assert "symbols: all 2 listed by the simulator" in capsys.readouterr().out
    # a built-in symbol the simulator's config gives terms of its own is listed once
    sim["symbols"].append({"symbol": "ETHUSDC", "base_asset": "ETH", "quote_asset": "USDC", "tick_size": "0.01",
                           "step_size": "0.001", "start_price": 3000.0})
    path = sim_fleet_file(tmp_path, ["ETHUSDC", "NOSUCHCOIN"], sim_config=sim)
    assert main(["validate", "--config", str(path)]) == 2
    assert "(it lists ETHUSDC, BTCUSDT, SOLUSDT, DOGEUSDT:" in capsys.readouterr().err


def test_validate_and_up_check_symbols_against_binance_exchange_info(tmp_path, capsys, nothing_may_start):
    from fleet.sim.thread import SimThread

    with SimThread(symbols=["ETHUSDC", "XRPUSDT"], seed=1) as sim:
        exchange = {"kind": "binance", "rest_url": sim.rest_url, "ws_market_url": "ws://127.0.0.1:1"}
        good = sim_fleet_file(tmp_path, ["XRPUSDT", "ETHUSDC"], exchange=exchange)
        assert main(["validate", "--config", str(good)]) == 0
        assert f"symbols: all 2 listed by the exchange ({sim.rest_url}/fapi/v1/exchangeInfo)" in capsys.readouterr().out
        bad = sim_fleet_file(tmp_path, ["ETHUSDC", "BTCUSDT", "NOSUCHCOIN"], exchange=exchange)
        assert main(["validate", "--config", str(bad)]) == 2
        err = capsys.readouterr().err
        assert "BTCUSDT is not listed by the exchange" in err and "NOSUCHCOIN is not listed" in err
        assert main(["up", "--config", str(bad), "--address", "local"]) == 2
        err = capsys.readouterr().err
        assert "NOSUCHCOIN is not listed by the exchange" in err and "nothing started" in err


def test_an_unreachable_exchange_is_said_by_validate_and_refused_by_up(tmp_path, capsys, nothing_may_start):
    import socket

    with socket.socket() as s:   # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exchange = {"kind": "binance", "rest_url": f"http://127.0.0.1:{port}", "ws_market_url": "ws://127.0.0.1:1"}
    path = sim_fleet_file(tmp_path, ["ETHUSDC"], exchange=exchange)
    assert main(["validate", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "exchange not reachable" in out and "symbols NOT checked" in out
    assert main(["up", "--config", str(path), "--address", "local"]) == 1
    err = capsys.readouterr().err
    assert "cannot check the symbols" in err and f"127.0.0.1:{port}" in err and "nothing started" in err


def test_every_command_joining_a_loopback_cluster_takes_the_loopback_setting(monkeypatch, tmp_path):
    """A cluster `up --detach` started listens on 127.0.0.1; `kill`, `status`, `apply` and `down` join
    it with address "auto". A driver without the loopback setting looks for it at the machine's
    network address and hangs (a kill that never comes): each takes the setting, whatever it does."""
    from fleet.ops.fleet_cli import loopback_wanted

    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert loopback_wanted("auto") and loopback_wanted("local")   # no cluster: one starts here, on loopback
    (tmp_path / "ray").mkdir()
    current = tmp_path / "ray" / "ray_current_cluster"
    current.write_text("127.0.0.1:30346\n")   # what `ray start --node-ip-address=127.0.0.1` leaves
    assert loopback_wanted("auto")
    current.write_text("192.0.2.2:30346\n")   # a cluster of the network: joined as it is
    assert not loopback_wanted("auto")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert loopback_wanted("auto")
    assert loopback_wanted("127.0.0.1:6379") and loopback_wanted("localhost:6379")
    assert not loopback_wanted("10.0.0.5:6379")


def test_a_local_cluster_listens_on_loopback_only(ray_cluster):
    """Every Ray cluster the project starts on one machine binds 127.0.0.1 (fleet_cli.LOOPBACK_ENV)."""
    import ray

    nodes = ray.nodes()
    assert nodes and all(n["NodeManagerAddress"] == "127.0.0.1" for n in nodes)
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    # and no Ray process listens on another address (Linux: every listening TCP socket of the machine)
    from tests.listening import listening_addresses

    listening = listening_addresses()
    ray_ports = {int(n["NodeManagerPort"]) for n in nodes} | {int(ray.get_runtime_context().gcs_address.split(":")[1])}
    assert ray_ports <= {port for _, port in listening}
    assert all(host in ("127.0.0.1", "::ffff:127.0.0.1", "::1") for host, port in listening if port in ray_ports)


def test_validate_prints_the_upkeep_weight_and_warns_past_what_one_ip_holds(tmp_path, capsys):
    from fleet.config import JournalConfig, RuntimeParams, upkeep_weight

    # the defaults: countdownCancelAll every 30 s (20), openOrders every 5 s (12), positionRisk every
    # 6th (10) with openAlgoOrders (2), listenKey keep-alive every 25 min (0.04), userTrades every 60 s (5),
    # income hourly (0.5), exchangeInfo and rateLimit/order every 15 min (0.13),
    # and the endpoint trying the symbol's kill look-up ahead (its open orders every 45 s: 1.33)
    assert upkeep_weight(RuntimeParams(), JournalConfig()) == pytest.approx(51.01, abs=0.01)
    assert upkeep_weight(RuntimeParams(), JournalConfig(enabled=False)) == pytest.approx(45.51, abs=0.01)
    assert main(["validate", "--config", str(CONFIGS / "fleet.demo.yaml")]) == 0
    out = capsys.readouterr().out
    # the demo re-arms the dead-man switch every 10 s: 60 of its 91.0
    assert "upkeep weight: 91.0 a minute per agent, 273 for 3" in out and "WARNING" not in out
    many = yaml.safe_load((CONFIGS / "fleet.demo.yaml").read_text())
    many.pop("runtime")  # the defaults
    entry = many["symbols"][0]
    many["symbols"] = [{**entry, "symbol": f"X{i}USDT", "params_file": str(CONFIGS / entry["params_file"])}
                       for i in range(40)]
    cfg = FleetConfig.model_validate(many)
    from fleet.ops.fleet_cli import upkeep_lines

    lines = upkeep_lines(cfg)
    assert "2040 for 40" in lines[0] and "Run at most 35 per address" in lines[1], lines


def test_a_min_notional_filter_that_does_not_read_leaves_that_symbol_unchecked_not_the_listing_failed():
    from fleet.ops.fleet_cli import _min_notionals

    def entry(symbol: str, **f: str) -> dict:
        return {"symbol": symbol, "filters": [{"filterType": "MIN_NOTIONAL", **f}]}

    got = _min_notionals([entry("A", notional="5"), entry("B", minNotional="20"), entry("C", notional="x"),
                          entry("D"), {"symbol": "E"}])
    assert got == {"A": Decimal("5"), "B": Decimal("20")}
