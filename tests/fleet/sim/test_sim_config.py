"""A simulator config beyond what a market can be is refused at start, naming the field; one at the edges
starts and serves a sane book. Before: an infinite volatility, drift or jump, a volatility of 10^6 or a
start price of 1e-300 broke the start or every clock step (a 500 to every request, tracebacks a hundred a
second); a tick of 1e-30 served a crossed book; a balance of 1e400 or a funding interval of 1e300 made
/sim/state a 500; two specs of one symbol or two accounts of one name were taken, the last winning."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from fleet.sim.config import SimConfigError, load_sim_config
from fleet.sim.engine import Engine

REPO = Path(__file__).resolve().parents[3]
T0 = 1_800_000_000_000
ETH = {"symbol": "ETHUSDC", "base_asset": "ETH", "quote_asset": "USDC"}
PEM_LIKE = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIsecretsecretsecret\n-----END PRIVATE KEY-----\n"

BAD = [
    ({"market": {"volatility": float("inf")}}, "market.volatility", "finite"),
    ({"market": {"volatility": 1_000_000}}, "market.volatility", "less than or equal to 20"),
    ({"market": {"trend_drift_per_hour": float("inf")}}, "market.trend_drift_per_hour", "finite"),
    ({"market": {"jump_size": float("inf")}}, "market.jump_size", "finite"),
    ({"market": {"jump_size": 5.0}}, "market.jump_size", "less than"),
    ({"market": {"start_price": 1e300}}, "market.start_price", "less than"),
    ({"symbols": [{**ETH, "start_price": 1e-300}]}, "symbols.0.start_price", "greater than"),
    ({"symbols": [{**ETH, "start_price": 1e300}]}, "symbols.0.start_price", "less than"),
    ({"symbols": [{**ETH, "volatility": float("inf")}]}, "symbols.0.volatility", "finite"),
    ({"symbols": [{**ETH, "tick_size": "1e-30"}]}, "symbols.0.tick_size", "at least 0.00000001"),
    ({"symbols": [{**ETH, "step_size": "1e-30"}]}, "symbols.0.step_size", "at least 0.00000001"),
    # a tick of 1e-8 up to a max_price of 1e9 is 10^17 ticks: beyond what a float holds exactly
    ({"symbols": [{**ETH, "tick_size": "0.00000001", "max_price": "1000000000"}]}, "symbols.0", "max_price is 1e+17 ticks"),
    ({"symbols": [{**ETH, "start_price": 0.001}]}, "symbols.0", "start_price 0.001 must be from min_price"),
    ({"symbols": [{**ETH, "level_qty": 1e300}]}, "symbols.0", "level_qty is"),
    ({"symbols": [{**ETH, "step_size": "100", "max_qty": "1"}]}, "symbols.0", "max_qty must be at least a step"),
    ({"symbols": [{**ETH, "multiplier_up": "0.5", "multiplier_down": "2"}]}, "symbols.0", "multiplier_up"),
    ({"symbols": [{**ETH, "funding_rate": "1e30"}]}, "symbols.0.funding_rate", "from -1 to 1"),
    ({"symbols": [{**ETH, "spread_ticks": 100_000_000}]}, "symbols.0.spread_ticks", "less than"),
    ({"symbols": [{**ETH, "price_precision": -3}]}, "symbols.0.price_precision", "greater than"),
    ({"symbols": [{**ETH, "base_asset": "E\nT\x1bH"}]}, "symbols.0.base_asset", "pattern"),
    ({"symbols": [ETH, {**ETH, "start_price": 5}]}, "symbols", "symbol 'ETHUSDC' is given twice"),
    ({"accounts": [{"name": "main"}, {"name": "main"}]}, "accounts", "account 'main' is given twice"),
    ({"accounts": [{"name": "a", "api_key": "k" * 64}, {"name": "b", "api_key": "k" * 64}]}, "accounts",
     "same api_key"),
    ({"accounts": [{"name": "main", "balances": {"USDT": "1e400"}}]}, "accounts.0.balances", "from 0 to 1e+15"),
    ({"accounts": [{"name": "main", "api_key": "ab\ncd"}]}, "accounts.0", "account 'main': api_key must be"),
    ({"accounts": [{"name": "main", "key_type": "ED25519", "api_secret": PEM_LIKE}]}, "accounts.0",
     "account 'main': api_secret (ED25519) is not an Ed25519 key"),
    ({"funding_interval_s": 1e300}, "funding_interval_s", "from 1 second to a week"),
    ({"taker_commission": "1e30"}, "taker_commission", "from -0.01 to 0.01"),
    ({"maker_commission": "-0.5"}, "maker_commission", "from -0.01 to 0.01"),
    ({"mark_interval_ms": 10**21}, "mark_interval_ms", "less than"),
    ({"rate_limits": {"ban_base_s": 1e300}}, "rate_limits.ban_base_s", "less than"),
]


@pytest.mark.parametrize(("config", "field", "why"), BAD, ids=[f"{f}:{w}" for _, f, w in BAD])
def test_a_config_beyond_a_market_is_refused_naming_the_field(config, field, why):
    with pytest.raises(SimConfigError) as err:
        load_sim_config(config)
    said = str(err.value)
    assert f"field '{field}'" in said and why in said, said
    assert "secretsecret" not in said and "ab\ncd" not in said and "\n" not in said, said


async def test_a_config_at_the_edges_starts_and_serves_a_sane_book_and_state(sim_factory):
    tiny = {"symbol": "TINYUSDT", "base_asset": "TINY", "quote_asset": "USDT", "tick_size": "0.00000001",
            "step_size": "1", "max_qty": "1000000000", "market_max_qty": "1000000000", "start_price": 1e-6,
            "volatility": 20.0, "min_notional": "0.00001"}
    big = {"symbol": "BIGUSDT", "base_asset": "BIG", "quote_asset": "USDT", "tick_size": "1", "step_size":
           "0.00000001", "max_price": "1000000000", "start_price": 1e9, "min_notional": "5"}
    config = {"symbols": [tiny, big], "funding_interval_s": 7 * 86_400.0, "market": {
        "volatility": 20.0, "trend_drift_per_hour": 1.0, "jump_size": 0.5, "jump_rate_per_hour": 3600.0},
        "accounts": [{"name": "main", "balances": {"USDT": "1e15"}}]}
    e = Engine(load_sim_config(config), seed=3, now_ms=T0)
    for step in range(1, 200):
        e.advance(T0 + step * 50)
    for b in e.books.values():
        assert 0 < b.bid_top < b.ask_top, (b.symbol, b.bid_top, b.ask_top)
    sim = await sim_factory(symbols=None, config=config)
    async with aiohttp.ClientSession() as s:
        async with s.get(f"{sim.rest_url}/sim/state") as r:
            assert r.status == 200, await r.text()
            state = await r.json()
        async with s.get(f"{sim.rest_url}/fapi/v1/ticker/bookTicker") as r:
            tickers = await r.json()
    assert state["balances"]["USDT"] == "1000000000000000.00000000", state["balances"]
    for t in tickers:
        assert 0 < float(t["bidPrice"]) < float(t["askPrice"]), t


def test_the_simulator_refuses_a_bad_ed25519_key_in_one_line_naming_the_account_not_the_key(tmp_path):
    cfg = tmp_path / "sim.yaml"
    cfg.write_text("accounts:\n  - name: desk\n    key_type: ED25519\n    api_secret: |\n"
                   + "".join(f"      {line}\n" for line in PEM_LIKE.splitlines()))
    proc = subprocess.run([sys.executable, "-m", "fleet", "sim", "--json", "--config", str(cfg)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stdout == "", (proc.returncode, proc.stdout)
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "account 'desk'" in proc.stderr and "Ed25519" in proc.stderr and "secretsecret" not in proc.stderr


def test_a_symbol_spec_as_binance_lists_it_needs_no_start_price():
    """Copied from exchangeInfo (a replay's config takes the recording's first mid as its start), a spec
    whose price filter excludes the default start price of 100 is read; a start price given outside it
    is not."""
    from fleet.sim.config import SimConfig, SymbolSpec

    doge = {"symbol": "DOGEUSDT", "base_asset": "DOGE", "quote_asset": "USDT", "tick_size": "0.000010",
            "step_size": "1", "min_price": "0.002440", "max_price": "30", "min_qty": "1"}
    assert SimConfig.model_validate({"symbols": [doge], "replay": "/a/recording"}).symbols[0].symbol == "DOGEUSDT"
    with pytest.raises(ValueError, match="symbols.0.start_price 100 .the default unless given. must be from"):
        SimConfig.model_validate({"symbols": [doge]})   # the model market would start outside the filter
    with pytest.raises(ValueError, match="start_price 100 must be from min_price"):
        SymbolSpec.model_validate({**doge, "start_price": 100})
