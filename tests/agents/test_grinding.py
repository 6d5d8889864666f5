"""Grinding: trigger at 87 % of net_max in a ranging market, never trending, <= 18 an hour, >= 42 s apart."""

from __future__ import annotations

import math
import random

import pytest

from agents.core import AgentCore
from agents.grinding import GrindDecision, GrindingEngine, GrindSkip
from agents.orders import Place
from agents.store import Store
from fleet.binance.events import BUY, SELL

from .test_core_support import SYMBOL, account_update, book, eth_filters, mark, order_update, seed_params

HALF_HOUR = 30 * 60 * 1000


def engine(**grinding) -> GrindingEngine:
    return GrindingEngine(seed_params(grinding=grinding) if grinding else seed_params(), eth_filters())


def feed(store: Store, path, start_ms: int = 0) -> int:
    t = start_ms
    for k, p in enumerate(path):
        t = start_ms + k * 1_000
        store.apply(book(p, t=t, update_id=t + 1))
    return t


def ranging(n: int = 1_900, seed: int = 1) -> list[float]:
    rng = random.Random(seed)
    return [3000.0 + 3.0 * math.sin(k / 40.0) + rng.gauss(0, 0.5) for k in range(n)]


def trending(n: int = 1_900) -> list[float]:
    return [3000.0 * (1 + 0.00002 * k) for k in range(n)]  # +3.8 % over 32 minutes


def test_triggers_at_87_percent_of_net_max_in_a_ranging_market():
    store = Store(SYMBOL, eth_filters(), seed_params())
    t = feed(store, ranging())
    assert store.price_stddev_30m() < 0.0038
    eng = engine()
    res = eng.check(t, 174, store.mid, store.price_stddev_30m(), store.price_window_span_ms(), 0.0)
    assert isinstance(res, GrindDecision)
    assert res.side == SELL and res.reentry_side == BUY
    assert res.qty_steps == math.floor(174 * 0.075)  # 13 steps = 0.013
    eng2 = engine()
    assert eng2.check(t, 173, store.mid, store.price_stddev_30m(), store.price_window_span_ms(), 0.0) == GrindSkip(
        "below_trigger"
    )


def test_a_short_position_grinds_by_buying():
    eng = engine()
    res = eng.check(HALF_HOUR, -180, 3000.0, 0.001, HALF_HOUR, 0.0)
    assert res.side == BUY and res.reentry_side == SELL and res.qty_steps == 13


def test_never_triggers_in_a_trending_market():
    store = Store(SYMBOL, eth_filters(), seed_params())
    t = feed(store, trending())
    assert store.price_stddev_30m() >= 0.0038
    eng = engine()
    for k in range(60):  # an hour of checks, position far past the trigger
        res = eng.check(t + k * 55_000, 230, store.mid, store.price_stddev_30m(), store.price_window_span_ms(), 0.0)
        assert res == GrindSkip("trending")
    assert eng.count_total == 0


def test_a_short_window_is_not_trusted_as_a_range():
    eng = engine()
    assert eng.check(0, 200, 3000.0, 0.0001, 5 * 60 * 1000, 0.0) == GrindSkip("window_too_short")


def test_funding_that_favours_reducing_multiplies_the_size_by_1_4():
    eng = engine()
    long_pays = eng.check(HALF_HOUR, 200, 3000.0, 0.001, HALF_HOUR, 0.0001)
    assert long_pays.funding_boost and long_pays.qty_steps == math.floor(200 * 0.075 * 1.4)
    eng = engine()
    long_receives = eng.check(HALF_HOUR, 200, 3000.0, 0.001, HALF_HOUR, -0.0001)
    assert not long_receives.funding_boost and long_receives.qty_steps == 15
    eng = engine()
    short_receives_negative = eng.check(HALF_HOUR, -200, 3000.0, 0.001, HALF_HOUR, -0.0001)
    assert short_receives_negative.funding_boost


def test_a_boosted_size_above_the_position_grinds_the_whole_position():
    """grind_size_pct 0.75 x 1.4 is 1.05 of the position: a reduce-only order beyond it, refused by the
    guard at every check (no grind ever went); it is the position, no more."""
    eng = engine(grind_size_pct=0.75)
    res = eng.check(HALF_HOUR, 200, 3000.0, 0.001, HALF_HOUR, 0.0001)
    assert res.funding_boost and res.qty_steps == 200


def test_reentry_is_2_1_times_the_fill_4_2_bps_better_than_mid():
    eng = engine()
    dec = eng.check(HALF_HOUR, 200, 3000.0, 0.001, HALF_HOUR, 0.0)
    px, qty = eng.reentry(dec, 15, 3000.0)
    assert qty == 31  # 2.1 x 15 = 31.5 -> 31 steps
    assert px == math.floor(3000.0 * (1 - 0.00042) / 0.01 + 1e-9)  # 2998.74
    short = engine().check(HALF_HOUR, -200, 3000.0, 0.001, HALF_HOUR, 0.0)
    px, _ = eng.reentry(short, 15, 3000.0)
    assert px == 300_126  # 3000 * 1.00042 = 3001.26


def run_hours(eng: GrindingEngine, hours: float, rng: random.Random) -> list[int]:
    """Checks every 55 s (jittered), each grind's fill and re-entry done at once; returns fire times."""
    fired = []
    t = HALF_HOUR
    end = t + int(hours * 3_600_000)
    while t < end:
        if eng.due(t):
            res = eng.check(t, 220, 3000.0, 0.001, HALF_HOUR, 0.0)
            if isinstance(res, GrindDecision):
                fired.append(t)
                eng.finish()
        t += rng.randint(1_000, 60_000)
    return fired


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_never_more_than_18_in_any_rolling_hour_and_never_closer_than_42_s(seed):
    eng = engine()
    fired = run_hours(eng, 5, random.Random(seed))
    assert len(fired) >= 18 * 4  # the limit, not the cadence, is what binds
    for i, t in enumerate(fired):
        in_hour = [u for u in fired if t - 3_600_000 < u <= t]
        assert len(in_hour) <= 18
        if i:
            assert t - fired[i - 1] >= 42_000


def test_checks_run_on_the_55_second_cadence():
    eng = engine()
    assert eng.due(0)
    eng.check(0, 0, 3000.0, 0.001, HALF_HOUR, 0.0)
    assert not eng.due(54_999) and eng.due(55_000)


def test_min_interval_holds_even_if_checked_more_often():
    eng = engine(min_interval_sec=42)
    assert isinstance(eng.check(HALF_HOUR, 220, 3000.0, 0.001, HALF_HOUR, 0.0), GrindDecision)
    eng.finish()
    assert eng.check(HALF_HOUR + 41_999, 220, 3000.0, 0.001, HALF_HOUR, 0.0) == GrindSkip("min_interval")
    assert isinstance(eng.check(HALF_HOUR + 42_000, 220, 3000.0, 0.001, HALF_HOUR, 0.0), GrindDecision)


def test_an_active_grind_blocks_the_next():
    eng = engine()
    eng.check(HALF_HOUR, 220, 3000.0, 0.001, HALF_HOUR, 0.0)
    assert eng.active
    assert eng.check(HALF_HOUR + 60_000, 220, 3000.0, 0.001, HALF_HOUR, 0.0) == GrindSkip("grind_in_progress")


# --- through the core -------------------------------------------------------------------------


def ranging_core(position_steps: int) -> tuple[AgentCore, int]:
    core = AgentCore(SYMBOL, seed_params(), eth_filters(), epoch=5)
    t = 0
    for k, p in enumerate(ranging()):
        t = k * 1_000
        core.on_event(book(p, t=t, update_id=t + 1), t)
    core.on_event(mark(core.store.mid, t=t), t)
    core.on_event(account_update(position_steps, 3000.0, t=t, wallet="10000"), t)
    return core, t


def test_core_grinds_with_a_reduce_only_market_order_then_a_post_only_reentry_through_the_guard():
    core, t = ranging_core(180)
    acts = core.quote(t)
    grind = [d for d in acts if isinstance(d, Place) and d.reason == "grind"]
    assert len(grind) == 1
    g = grind[0]
    assert g.order_type == "MARKET" and g.reduce_only and g.side == SELL and g.qty_steps == 13
    assert acts.batches[0].kind == "place" and acts.batches[0].items[0] is g  # reducing first
    for d in acts:
        core.on_sent(d, t)
    assert core.grinding.active and core.grinding.count_total == 1
    core.on_event(
        order_update(g.client_order_id, 900, SELL, 0, 13, status="FILLED", cum_steps=13, last_steps=13,
                     fill_ticks=299_990, t=t + 5, trade_id=1, order_type="MARKET", reduce_only=True),
        t + 5,
    )
    assert core.store.position_steps == 167
    acts = core.quote(t + 220)
    reentry = [d for d in acts if isinstance(d, Place) and d.reason == "grind_reentry"]
    assert len(reentry) == 1
    r = reentry[0]
    assert r.side == BUY and r.time_in_force == "GTX" and not r.reduce_only
    assert r.price_ticks == math.floor(core.store.mid * (1 - 0.00042) / 0.01 + 1e-9)
    # 2.1 x 13 = 27 steps, trimmed to the room the worst-case cap leaves (ladder bids count too)
    approved_bids = sum(d.qty_steps for d in acts if isinstance(d, Place) and d.side == BUY and d.reason == "ladder")
    room = 230 - (167 + core.store.pending_buy_steps + approved_bids)
    assert r.qty_steps == min(27, room)
    assert not core.grinding.active and core.grinding.cost_saved > 0


def test_core_refused_grind_does_not_count_against_the_limits():
    core, t = ranging_core(180)
    core.set_reduce_only(False)
    core.guard.max_notional = 1.0  # every order is over it now
    acts = core.quote(t)
    assert not [d for d in acts if isinstance(d, Place) and d.reason == "grind"]
    assert core.grinding.count_total == 0 and not core.grinding.active
    assert core.guard.refusals.get("max_notional", 0) >= 1
