"""Agent metrics: the seed's twelve names exactly, a symbol label on every series, no _created series."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agents.core import AgentCore
from agents.metrics import SEED_METRICS, AgentMetrics
from fleet.binance.events import BUY

from .test_core_support import SYMBOL, book, eth_filters, funding_fee, mark, order_update, seed_params


def samples(body: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for fam in text_string_to_metric_families(body.decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def sample_names(body: bytes) -> set[str]:
    return {name for (name, _) in samples(body)}


def active_core() -> AgentCore:
    core = AgentCore(SYMBOL, seed_params(), eth_filters(), epoch=1)
    core.on_event(book(3000.0, t=1_000), 1_000)
    core.on_event(mark(3000.0, t=1_000, rate=0.0001), 1_000)
    return core


def test_the_twelve_seed_series_appear_with_their_exact_names():
    m = AgentMetrics(SYMBOL, active_core())
    names = sample_names(m.render())
    for name in SEED_METRICS:
        assert name in names, name
    text = m.render().decode()
    for name in SEED_METRICS:
        assert f'\n{name}{{symbol="{SYMBOL}"}} ' in text


def test_the_seed_series_exist_before_a_core_is_bound():
    names = sample_names(AgentMetrics(SYMBOL).render())
    assert set(SEED_METRICS) <= names


def test_every_series_is_labelled_by_symbol_and_no_created_series_exist():
    m = AgentMetrics(SYMBOL, active_core())
    m.observe_tick_to_order(0.0004)
    body = m.render()
    for (name, labels) in samples(body):
        assert dict(labels).get("symbol") == SYMBOL, name
        assert not name.endswith("_created"), name


def test_values_follow_the_core():
    core = active_core()
    m = AgentMetrics(SYMBOL, core)
    acts = core.quote(1_000)
    for d in acts:
        core.on_sent(d, 1_000)
    first_bid = next(d for d in acts if d.side == BUY)
    core.on_event(
        order_update(first_bid.client_order_id, 1, BUY, first_bid.price_ticks, first_bid.qty_steps, status="FILLED",
                     cum_steps=first_bid.qty_steps, last_steps=first_bid.qty_steps, t=1_001, trade_id=1),
        1_001,
    )
    core.on_event(funding_fee("-0.25", t=1_002), 1_002)
    core.store.on_rejected("nope", -5022)
    core.guard.check_place(type(first_bid)("x", BUY, 1, 0))
    m.set_ws_connected(True)
    m.inc_rest_fallback()
    m.inc_rest_fallback()
    m.observe_tick_to_order(0.0002)
    m.observe_tick_to_order(0.3)
    s = samples(m.render())
    sym = (("symbol", SYMBOL),)
    st = core.store
    assert s[("mm_worst_case_long", sym)] == st.worst_long
    assert s[("mm_worst_case_short", sym)] == st.worst_short
    assert s[("mm_position", sym)] == st.position > 0
    assert s[("mm_pending_buy", sym)] == st.pending_buy_size()
    assert s[("mm_funding_pnl_acc", sym)] == -0.25
    assert s[("mm_predicted_funding_rate", sym)] == 0.0001
    assert s[("mm_ws_connected", sym)] == 1
    assert s[("mm_rest_fallback_count", sym)] == 2
    assert s[("mm_grind_count_total", sym)] == 0
    assert s[("mm_orders_sent_total", (("action", "place"), ("symbol", SYMBOL)))] == len(acts)
    assert s[("mm_fills_total", (("side", "BUY"), ("symbol", SYMBOL)))] == 1
    assert s[("mm_rejects_total", (("code", "-5022"), ("symbol", SYMBOL)))] == 1
    assert s[("mm_guard_refusals_total", (("reason", "bad_quantity"), ("symbol", SYMBOL)))] == 1
    assert s[("mm_tick_to_order_seconds_count", sym)] == 2
    assert s[("mm_tick_to_order_seconds_bucket", (("le", "0.00025"), ("symbol", SYMBOL)))] == 1
    assert s[("mm_tick_to_order_seconds_bucket", (("le", "+Inf"), ("symbol", SYMBOL)))] == 2
    assert s[("mm_halt_state", (("state", "running"), ("symbol", SYMBOL)))] == 1
    core.halt("test")
    s = samples(m.render())
    assert s[("mm_halt_state", (("state", "halted"), ("symbol", SYMBOL)))] == 1


def test_two_agents_in_one_process_keep_separate_registries():
    a = AgentMetrics("ETHUSDC")
    b = AgentMetrics("BTCUSDT")
    a.inc_rest_fallback()
    assert b"mm_rest_fallback_count{symbol=\"BTCUSDT\"} 0.0" in b.render()
    assert b"BTCUSDT" not in a.render()


def test_a_scrape_before_the_position_is_known_seeds_no_drawdown_peak():
    from .test_core_support import position_info

    core = active_core()  # book and mark known, no exchange figure of the position yet
    m = AgentMetrics(SYMBOL, core)
    s = samples(m.render())
    assert s[("mm_drawdown_pct", (("symbol", SYMBOL),))] == 0.0
    assert core.store.peak_equity is None
    # the first snapshot: 0.2 long, a 500 USDC wallet (the old peak would have been 1000)
    core.reset_from_snapshot(position_info(200, 3000.0, 1_100), [], 1_200, wallet_balance=500.0)
    core.on_event(mark(3000.0, t=1_300), 1_300)
    samples(m.render())
    core.on_event(mark(2999.0, t=1_400), 1_400)
    assert core.twap == []
    assert core.store.drawdown_pct() == pytest.approx(0.2 / 1000 * 100)
    assert samples(m.render())[("mm_equity", (("symbol", SYMBOL),))] == pytest.approx(999.8)


def test_funding_booked_from_income_rows_shows_in_the_seed_metric():
    from .test_core_support import account_update

    core = active_core()
    m = AgentMetrics(SYMBOL, core)
    core.on_event(account_update(20, 3000.0, t=1_100), 1_100)
    core.on_event(funding_fee("-0.75", t=1_200, symbol=None), 1_200)
    assert samples(m.render())[("mm_funding_pnl_acc", (("symbol", SYMBOL),))] == 0.0
    core.store.on_funding_income([{"symbol": SYMBOL, "incomeType": "FUNDING_FEE", "income": "-0.75",
                                   "asset": "USDC", "time": 1_200, "tranId": 7}])
    assert samples(m.render())[("mm_funding_pnl_acc", (("symbol", SYMBOL),))] == -0.75


def test_the_funding_interval_is_published_only_once_the_exchange_listed_it():
    """Until fundingInfo answers, the core's 8 h is a guess: published, a 1 h symbol's series would read
    8 h and then 1 h at every start, which the interval-change alert takes for the exchange's change."""
    core = active_core()
    m = AgentMetrics(SYMBOL, core)
    assert "mm_funding_interval_seconds" not in sample_names(m.render())
    core.store.funding.set_interval(3_600_000)
    core.store.funding.interval_read = True
    assert samples(m.render())[("mm_funding_interval_seconds", (("symbol", SYMBOL),))] == 3600
