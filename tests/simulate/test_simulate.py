"""A simulated run: the agents' own code on a simulated clock against the in-process exchange.

Checked against the exchange's truth (the engine's accounts), as the live tests check /sim/state:
the P&L split adds up to the exchange's P&L, the book is empty after the stop, the cap held; a seed
gives identical tables; scheduled faults are survived.
"""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

import pytest

from fleet.config import load_fleet_config, symbol_params
from simulate.report import CHART_NAMES, chart_id, write_report
from simulate.run import RunOptions, simulate
from simulate.schedule import ScheduleError, check_run, load_schedule
from simulate.sweep import OBJECTIVES
from simulate.table import format_table

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "fleet.demo.yaml"
CFG = load_fleet_config(CONFIG)


def _run(minutes: float, seed: int = 1, **kwargs):
    opts = RunOptions(hours=minutes / 60.0, seed=seed, symbols=kwargs.pop("symbols", ["ETHUSDC"]), **kwargs)
    return simulate(CFG, CONFIG, opts)


def test_the_same_seed_prints_the_same_table_and_another_seed_does_not():
    """b with a progress bar (the command's default; a sweep runs without): its timers reordered the
    agent's timers due at the same instant, and a seed printed other numbers with it (33 fills against 37)."""
    a, b, c = _run(8, seed=5), _run(8, seed=5, progress=lambda done, wall: None), _run(8, seed=6)
    assert format_table(a) == format_table(b)
    assert a.symbols[0].table == b.symbols[0].table
    assert a.symbols[0].samples == b.symbols[0].samples
    assert a.symbols[0].table != c.symbols[0].table
    assert set(a.symbols[0].table) == OBJECTIVES   # every figure a sweep may be sorted by, and no other


def test_the_split_adds_up_to_the_exchange_and_the_book_is_empty_after_the_stop(tmp_path):
    result = _run(20, seed=2)
    sym = result.symbols[0]
    t = sym.table
    assert t["fills"] > 0 and t["open_orders_after_stop"] == 0
    parts = t["pnl_spread"] + t["pnl_inventory"] + t["pnl_funding"] + t["pnl_fees"]
    assert parts == pytest.approx(t["pnl_total"], abs=1e-9)
    s = sym.samples
    for i in range(len(s)):  # every row adds up too
        row = s.pnl_spread[i] + s.pnl_inventory[i] + s.pnl_funding[i] + s.pnl_fees[i]
        assert row == pytest.approx(s.pnl_total[i], abs=1e-9)
    assert t["worst_long_max"] <= sym.cap + 1e-9 and t["worst_short_max"] <= sym.cap + 1e-9
    assert len(s) > 100 and s.t_ms == sorted(s.t_ms)
    assert any(b is not None for b in s.bid_quote) and any(a is not None for a in s.ask_quote)
    page = write_report(result, tmp_path / "run.html").read_text()  # the report of a real run
    assert all(chart_id(name, "ETHUSDC") in page for name in CHART_NAMES)
    assert 'src="http' not in page and f"{t['fills']}" in page


def test_scheduled_faults_are_survived():
    schedule = load_schedule([
        {"at": "2m", "do": "drop", "target": "user"},
        {"at": "3m", "do": "rest_fault", "mode": "unknown", "count": 3, "path": "/fapi/v1/batchOrders"},
        {"at": "4m", "do": "jump", "symbol": "ETHUSDC", "pct": -1.5},
        {"at": "5m", "do": "freeze", "symbol": "ETHUSDC", "seconds": 15},
        {"at": "7m", "do": "expire_listen_key"},
    ])
    result = _run(12, seed=3, schedule=schedule)
    t = result.symbols[0].table
    assert t["user_stream_reconnects"] >= 2  # the drop and the expired key
    assert t["unknown_outcomes"] >= 1 and t["stale_market_pulls"] >= 1
    assert t["open_orders_after_stop"] == 0
    assert t["worst_long_max"] <= result.symbols[0].cap + 1e-9


def test_a_scheduled_delisting_is_flattened_ahead_of_its_settlement_on_the_simulated_clock():
    """Announced at 1 min for 6 min, with a 2 min lead: the agent quotes until 4 min, then is flat and
    quotes nothing; the exchange's settlement at 6 min finds nothing of it, and the run ends clean."""
    cfg = CFG.model_copy(update={"runtime": CFG.runtime.model_copy(update={"delisting_exit_lead_sec": 120.0})})
    schedule = load_schedule([{"at": "1m", "do": "delist", "symbol": "ETHUSDC", "in": "5m"}])
    result = simulate(cfg, CONFIG, RunOptions(hours=8 / 60, seed=3, symbols=["ETHUSDC"], schedule=schedule))
    s, t = result.symbols[0].samples, result.symbols[0].table
    start = s.t_ms[0]
    before = [i for i, ms in enumerate(s.t_ms) if ms - start < 3.5 * 60_000]
    after = [i for i, ms in enumerate(s.t_ms) if ms - start > 4.5 * 60_000]
    assert before and after
    assert any(s.bid_quote[i] is not None for i in before)
    assert all(s.position[i] == 0 and s.bid_quote[i] is None and s.ask_quote[i] is None for i in after)
    assert t["open_orders_after_stop"] == 0 and t["liquidations"] == 0
    assert any("flattening now" in line for line in result.log_tail)
    assert any("as SETTLING" in line for line in result.log_tail)


def test_a_delisting_announced_while_the_market_stream_is_down_is_read_from_exchange_info_after_it():
    """The announcement's frame goes out while the agent's market stream is cut (both at the same
    simulated instant): the agent learns of it from exchangeInfo once reconnected, and flattens."""
    cfg = CFG.model_copy(update={"runtime": CFG.runtime.model_copy(update={"delisting_exit_lead_sec": 120.0})})
    schedule = load_schedule([{"at": "1m", "do": "drop", "target": "market"},
                              {"at": "1m", "do": "delist", "symbol": "ETHUSDC", "in": "5m"}])
    result = simulate(cfg, CONFIG, RunOptions(hours=6 / 60, seed=3, symbols=["ETHUSDC"], schedule=schedule))
    t = result.symbols[0].table
    assert t["market_stream_reconnects"] == 1 and t["open_orders_after_stop"] == 0
    assert any("exchangeInfo after a market stream gap" in line for line in result.log_tail)
    assert not any("settles ETHUSDC at" in line and "(contractInfo)" in line for line in result.log_tail)
    assert any("flattening now" in line for line in result.log_tail)


def test_a_symbol_moved_to_hourly_funding_is_read_again_and_its_quotes_shift_by_the_hourly_rate():
    """The rate pinned at 0.02 % an interval; at 3 min the exchange moves ETHUSDC from 8-hourly (here
    every 30 s) to hourly funding: the agent reads fundingInfo again and its bids sit lower against the
    mid by about sensitivity x 0.02 % x 7 (the rate now counts 8 times)."""
    schedule = load_schedule([{"at": 0, "do": "funding_rate", "symbol": "ETHUSDC", "rate": "0.0002"},
                              {"at": "3m", "do": "funding_interval", "symbol": "ETHUSDC", "hours": 1}])
    result = _run(7, seed=3, schedule=schedule)
    s, t = result.symbols[0].samples, result.symbols[0].table
    start = s.t_ms[0]

    def bid_over_mid(lo: float, hi: float) -> float:
        ratios = sorted(s.bid_quote[i] / s.mid[i] for i, ms in enumerate(s.t_ms)
                        if lo * 60_000 <= ms - start < hi * 60_000 and s.bid_quote[i] is not None)
        assert ratios, (lo, hi)
        return ratios[len(ratios) // 2]

    expected = symbol_params(CFG, "ETHUSDC", CONFIG).funding.sensitivity * 0.0002 * 7
    assert bid_over_mid(1, 3) - bid_over_mid(4, 7) == pytest.approx(expected, rel=0.3)
    assert any("settles funding every 1 h (its next funding time moved)" in line for line in result.log_tail)
    assert t["open_orders_after_stop"] == 0


def test_planned_stream_swaps_keep_the_agent_in_step():
    """The runtime replaces its streams before the exchange's 24 h cut (here every 100 s): the old user
    stream ends for its reader after what it queued, the new one carries on, nothing is missed."""
    cfg = CFG.model_copy(update={"runtime": CFG.runtime.model_copy(update={"stream_max_lifetime_sec": 100.0})})
    result = simulate(cfg, CONFIG, RunOptions(hours=0.1, seed=4, symbols=["ETHUSDC"]))
    t = result.symbols[0].table
    assert t["stream_connections"] >= 2 + 2 * 3  # the first two, then at least three swaps of each
    assert t["resyncs"] == 0 and t["reconcile_repairs"] == 0 and t["errors_logged"] == 0 and t["owner_asks"] == 0
    assert t["user_stream_reconnects"] == 0 and t["market_stream_reconnects"] == 0
    assert max(result.symbols[0].samples.orders_1m[-30:]) > 0 and t["fills"] > 0  # still quoting at the end


@pytest.mark.parametrize("events, message", [
    ([{"at": "2x", "do": "drop"}], "at"),
    ([{"at": 10, "do": "explode"}], "do"),
    ([{"at": 10, "do": "rest_fault", "mode": "nonsense"}], "mode"),
    ({"at": 10}, "list of events"),
    ([{"at": 10, "do": "freeze", "symbol": "ETHUSDC", "secods": 600}], "freeze takes mode, seconds, symbol, not 'secods'"),
    ([{"at": 10, "do": "jump", "symbol": "ETHUSDC", "pct": float("nan")}], "pct must be a finite number"),
    ([{"at": 10, "do": "jump", "symbol": "ETHUSDC", "pct": -100}], "pct must be from -99.99 to 10000"),
    ([{"at": 10, "do": "jump", "symbol": "ETHUSDC", "pct": -99.9999999}], "pct must be from"),   # (mid-run: "0")
    ([{"at": 10, "do": "jump", "symbol": "ETHUSDC", "pct": 1000000}], "pct must be from"),   # (mid-run: -1130)
    ([{"at": 10, "do": "jump", "symbol": "ETHUSDC"}], "jump needs pct"),
    ([{"at": 10, "do": "funding_rate", "symbol": "ETHUSDC", "rate": "abc"}], "rate must be a finite decimal"),
    ([{"at": 10, "do": "latency", "ms": 0.5}], "whole number of milliseconds"),
    ([{"at": 10, "do": "latency", "ms": 10**8}], "from 0 to 600000"),
    ([{"at": 10, "do": "latency", "ms": 300, "path": 42}], "path must be a non-empty string"),   # (a traceback)
    ([{"at": 10, "do": "jump", "symbol": "ETHUSDC", "pct": "abc"}], "pct must be a number"),
    ([{"at": 10, "do": "jump", "symbol": "ETHUSDC", "pct": 10**400}], "pct must be a number"),   # (OverflowError)
    ([{"at": 10, "do": "freeze", "symbol": "ETHUSDC", "mode": "sideways"}], "mode must be data"),   # (mid-run)
    ([{"at": 10, "do": "rest_fault", "mode": "error", "method": "YEET"}], "method must be one of"),
])
def test_a_bad_schedule_is_refused_naming_the_problem(events, message):
    with pytest.raises(ScheduleError, match=re.escape(message) if "'" in message else message):
        load_schedule(events)


@pytest.mark.parametrize("event, message", [
    ({"at": 10, "do": "jump", "symbol": "BTCUSDT", "pct": 1}, "symbol 'BTCUSDT' is not one of the run's (ETHUSDC)"),
    ({"at": 10, "do": "drop", "account": "nobody"}, "account 'nobody' is not one of the run's (main)"),
    ({"at": "2h", "do": "drop"}, "at 7200 s is after the run's end (1 h)"),
    ({"at": 0, "do": "drop"}, "comes before the agents' streams and listen keys exist"),   # (reached nothing)
    ({"at": 0.5, "do": "expire_listen_key"}, "comes before the agents' streams and listen keys exist"),
])
def test_an_event_the_run_could_not_carry_out_is_refused_before_it(event, message):
    with pytest.raises(ScheduleError, match=re.escape(message)):
        check_run(load_schedule([event]), ["ETHUSDC"], 1.0, ["main"])


@pytest.mark.parametrize("event, message", [
    ({"at": 10, "do": "jump", "symbol": "ETHUSDC", "pct": 1}, "replays a recording"),
    ({"at": 10, "do": "funding_interval", "symbol": "ETHUSDC", "hours": 1}, "replays a recording"),
    ({"at": 10, "do": "expire_listen_key"}, "the run has no account 'main'"),   # (-2015 mid-run)
    ({"at": 10, "do": "expire_listen_key", "account": "desk2"}, "account 'desk2' is not one of the run's"),
])
def test_an_event_a_replay_or_the_run_s_accounts_cannot_take_is_refused_before_it(event, message):
    with pytest.raises(ScheduleError, match=re.escape(message)):
        check_run(load_schedule([event]), ["ETHUSDC"], 1.0, ["desk1"], replay=True)


@pytest.mark.parametrize("fault, message", [
    ({"mode": "error", "path": "/fapi/v1/ordr"}, "names no route"),
    ({"mode": "late", "path": "/fapi/v1/openOrders"}, "mode late applies to writes"),
    ({"mode": "batch_short", "path": "/fapi/v1/order"}, "mode batch_short applies to the batch routes"),
    ({"mode": "error", "path": "/fapi/v1/time", "method": "POST"}, "names no route"),
])
def test_a_fault_no_request_could_meet_is_refused_before_the_run(fault, message):
    """It was taken and waited, unseen, for good: the run's table was not the schedule's (0 unknown
    outcomes) and nothing said so."""
    events = load_schedule([{"at": 5, "do": "rest_fault", **fault}])
    with pytest.raises(ScheduleError, match=r"schedule event 0 \(rest_fault\): .*" + message):
        _run(0.5, schedule=events)


def test_an_event_that_fails_during_the_run_fails_the_run_naming_it():
    """An event the checks could not foresee (a jump the engine refuses: the symbol was delisted) ends the
    run: its table would not be the schedule's, and the events after it would never happen (they were
    dropped silently)."""
    events = load_schedule([{"at": 2, "do": "delist", "symbol": "ETHUSDC", "in": "2s"},
                            {"at": 10, "do": "jump", "symbol": "ETHUSDC", "pct": 1}, {"at": 12, "do": "drop"}])
    with pytest.raises(ScheduleError, match=r"schedule event 1 \(jump at 10 s\) failed: ValueError: ETHUSDC is "):
        _run(0.5, schedule=events)


def test_funding_per_day_counts_the_intervals_the_settlements_paid_for_not_the_run():
    """Hourly funding, a 4-minute run across one settlement: its fee is an hour's, a day is 24 of them
    (the run's length made it 360)."""
    from simulate.run import START_MS
    import yaml

    sim = {**yaml.safe_load((CONFIG.parent / "sim.demo.yaml").read_text()), "funding_interval_s": 3600.0}
    start = (START_MS // 3_600_000 + 1) * 3_600_000 - 120_000   # two minutes before a whole hour
    rate = load_schedule([{"at": 10, "do": "funding_rate", "symbol": "ETHUSDC", "rate": "0.003"}])
    t = _run(4, seed=1, start_ms=start, sim_config=sim, schedule=rate).symbols[0].table
    assert t["pnl_funding"] != 0
    assert t["funding_per_day"] == pytest.approx(t["pnl_funding"] * 24)
    quiet = _run(1, seed=1, start_ms=start - 600_000, sim_config=sim).symbols[0].table   # no settlement in it
    assert quiet["pnl_funding"] == 0 and quiet["funding_per_day"] == 0


def test_the_busiest_windows_are_the_limiter_s_own_not_a_look_each_second():
    """The exchange's order windows are fixed (:00 to :59.999); a look each second at :60.000 already
    saw the next one, so the table's busiest minute missed its last second (403 for 406)."""
    from fleet.sim.config import RateLimits
    from fleet.sim.ratelimit import RateLimiter

    lim = RateLimiter(RateLimits())
    lim.charge_orders("main", 5, 5, 59_999)
    lim.charge_orders("main", 1, 1, 60_000)
    assert lim.order_counts("main", 60_000) == (1, 1)   # what the look at :60.000 saw
    assert lim.peaks("127.0.0.1", "main") == (5, 5, 0)
    t = _run(3, seed=2).symbols[0]
    assert t.table["orders_1m_max"] >= max(t.samples.orders_1m) and t.table["orders_10s_max"] >= max(t.samples.orders_10s)


def test_an_agent_behind_its_feed_does_not_quote_on_old_books():
    """Every frame reaching the agent 2.5 s after the exchange sent it (market_lag_max_ms is 2 s): however
    fresh the read, the books are old, so the agent pulls its quotes and places no order; 1 s late, it
    quotes."""
    late = _run(3, seed=2, stream_latency_ms=2500.0).symbols[0].table
    assert late["stale_market_pulls"] >= 1
    assert late["orders_per_min"] == 0 and late["fills"] == 0 and late["open_orders_after_stop"] == 0
    behind = _run(3, seed=2, stream_latency_ms=1000.0).symbols[0].table
    assert behind["stale_market_pulls"] == 0 and behind["orders_per_min"] > 0


@pytest.mark.parametrize("extra, message", [
    (["--hours", "nan"], "--hours must be above 0"), (["--hours", "1e300"], "at most 8760"),
    (["--rest-latency-ms", "-5"], "--rest-latency-ms must be from 0"), (["--points", "0"], "--points must be"),
    (["--set", "base_size=0.01,0.02"], "--set takes one value"), (["--sweep", "base_size=,"], "an empty value"),
    (["--sweep", "base_size=0.01,0.02", "base_size=0.03"], "base.base_size is given twice"),
    (["--sweep", "size_decay_k=1,1.0"], "lists 1"),   # (two identical runs)
    (["--sweep", "size_decay_k=" + ",".join(str(1 + i / 100) for i in range(40)),
      "base_size=" + ",".join(f"0.0{i:02d}" for i in range(10, 40))], "1,200 combinations, over 1,000"),
    (["--sweep", "base_size=0.01,0.02", "--objective", "pnl_totl"], "is not a figure of the table"),
    (["--set", "base_size=0.01", "--sweep", "base_size=0.01,0.02"], "base.base_size is given by --set and --sweep"),
    (["--sweep", "net_max=0.2,0.3"], "net_max 0.3 exceeds the hard cap"),
    (["--set", "base_size=0.0000001"], "base.base_size 0.0000001 is under its smallest order of 0.001"),
    (["--set", "net_max=0.0001"], "net_max x worst_case.multiplier = 0.0001"),   # (the guard lets nothing by)
    (["--set", "max_order_notional=0.01"], "risk.max_order_notional 0.01 is under the exchange's smallest notional"),
    (["--set", "price_band=1e-12"], "price_band"), (["--set", "size_decay_k=1e308"], "size_decay_k"),
    (["--report", "/nonexistent/r.html"], "its directory /nonexistent does not exist"),
    (["--json", "/tmp"], "is a directory"),
    (["--symbols", ","], "--symbols names no symbol"),   # (it ran every symbol of the config)
])
def test_simulate_refuses_bad_arguments_before_it_runs(extra, message, capsys):
    """Before any simulated hour is spent (and before a sweep's Ray tasks start): a result that could not
    be written, a sweep combination the caps refuse or an objective no table has was found only after."""
    from fleet.ops.cli import main

    assert main(["simulate", "--config", str(CONFIG), "--symbols", "ETHUSDC", "--hours", "0.01", "--no-progress",
                 *extra]) == 2
    assert message in capsys.readouterr().err


def test_a_size_the_exchange_cannot_trade_is_said_by_the_agent():
    """A first layer under the symbol's smallest order: the agent quoted nothing, forever, and said
    nothing (818 quote cycles, 0 orders, 0 warnings). Now it says so at its start, an ERROR; it still
    runs (it guards what the symbol holds), and the commands refuse such a size before it runs."""
    result = simulate(CFG, CONFIG, RunOptions(hours=0.01, seed=1, symbols=["ETHUSDC"]), {"base.base_size": 1e-7})
    t = result.symbols[0].table
    assert t["errors_logged"] >= 1 and t["orders_per_min"] == 0
    assert any("base.base_size 0.0000001 is under ETHUSDC's smallest order of 0.001" in line
               for line in result.log_tail), result.log_tail


def test_the_tuning_rules_say_nothing_of_profit_from_a_run_without_a_fill():
    """A run too short to quote (1e-7 h: 0 quote cycles, 0 fills) was told to raise base_size."""
    from simulate.tuning import advice

    table = {"hours": 1e-7, "fills": 0, "pnl_total": 0.0, "worst_long_above_share": 0.0,
             "worst_short_above_share": 0.0}
    assert advice(table, {"base": {"base_size": 0.007}}, 0.23) == []
    assert "raise base_size" in advice({**table, "fills": 3, "pnl_total": -0.1}, {"base": {"base_size": 0.007}},
                                       0.23)[0]
