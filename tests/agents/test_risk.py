"""RiskGuard refusals (each with its reason, counted) and the drawdown bands' TWAP plans."""

from __future__ import annotations

import pytest

from agents.orders import Amend, Place
from agents.risk import FLATTENING, HALTED, DrawdownBands, RiskGuard, TwapSlice, respace
from agents.store import Store
from fleet.binance.events import BUY, SELL
from fleet.config import DrawdownParams

from .test_core_support import SYMBOL, account_update, book, eth_filters, mark, order_update, seed_params


@pytest.fixture
def guard() -> RiskGuard:
    store = Store(SYMBOL, eth_filters(), seed_params())
    store.apply(book(3000.0, t=1))
    store.apply(mark(3000.0, t=1))
    return RiskGuard(seed_params(), eth_filters(), store)


def buy(steps: int, px: int = 299_000, cid: str = "b") -> Place:
    return Place(cid, BUY, px, steps)


def sell(steps: int, px: int = 301_000, cid: str = "s") -> Place:
    return Place(cid, SELL, px, steps)


def market(side: str, steps: int, cid: str = "m") -> Place:
    return Place(cid, side, 0, steps, "", True, "MARKET", "drawdown")


def test_buy_that_would_take_worst_long_past_0_23_is_refused(guard):
    guard.store.apply(account_update(200, 3000.0, t=2))
    assert guard.check_place(buy(30)) is None  # 0.20 + 0.03 = 0.23: at the cap
    assert guard.check_place(buy(31)) == "worst_case_long"
    assert guard.refusals == {"worst_case_long": 1}


def test_pending_orders_and_those_approved_this_cycle_count(guard):
    guard.store.on_sent(buy(200, cid="x"), 1)
    assert guard.check_place(buy(30), extra_buy=0) is None
    assert guard.check_place(buy(30), extra_buy=1) == "worst_case_long"


def test_sell_that_would_take_worst_short_past_minus_0_23_is_refused(guard):
    guard.store.apply(account_update(-100, 3000.0, t=2))
    guard.store.on_sent(sell(100, cid="x"), 1)
    assert guard.check_place(sell(30)) is None
    assert guard.check_place(sell(31)) == "worst_case_short"


def test_amend_checks_only_its_growth_over_the_larger_of_old_and_new(guard):
    s = guard.store
    s.on_sent(buy(220, cid="a"), 1)
    s.apply(order_update("a", 1, BUY, 299_000, 220, t=2))
    o = s.orders["a"]
    assert guard.check_amend(Amend("a", 1, BUY, 298_000, 220), o) is None  # price move, same size
    assert guard.check_amend(Amend("a", 1, BUY, 298_000, 230), o) is None  # +10 -> 0.23
    assert guard.check_amend(Amend("a", 1, BUY, 298_000, 231), o) == "worst_case_long"


def test_amend_growth_counts_fills_not_yet_in_the_position(guard):
    s = guard.store
    s.on_sent(sell(21, cid="a"), 1)
    # the exchange filled 10 and then applied a modify to a total of 21; the trade frame is late
    s.apply(order_update("a", 1, SELL, 301_000, 21, status="PARTIALLY_FILLED", exec_type="AMENDMENT", cum_steps=10, t=5))
    o = s.orders["a"]
    assert o.contrib == 21  # 10 filled but not booked + 11 open
    s.on_sent(sell(209, cid="b"), 1)
    # a modify to a total of 31 adds 10 to what may end up short: 21 + 209 + 10 > 230
    assert guard.check_amend(Amend("a", 1, SELL, 301_000, 31), o) == "worst_case_short"
    assert guard.check_amend(Amend("a", 1, SELL, 301_000, 21), o) is None


def test_orders_outside_the_price_band_around_mark_are_refused(guard):
    assert guard.check_place(buy(5, px=284_900)) == "price_band"  # more than 5 % below 3000
    assert guard.check_place(buy(5, px=285_100)) is None
    assert guard.check_place(sell(5, px=315_100)) == "price_band"


def test_orders_above_max_notional_are_refused():
    params = seed_params(risk={"max_order_notional": 100.0})
    store = Store(SYMBOL, eth_filters(), params)
    store.apply(mark(3000.0, t=1))
    g = RiskGuard(params, eth_filters(), store)
    assert g.check_place(buy(33, px=300_000)) is None  # 99 USDC
    assert g.check_place(buy(34, px=300_000)) == "max_notional"


def test_without_a_reference_price_nothing_is_sent():
    store = Store(SYMBOL, eth_filters(), seed_params())
    g = RiskGuard(seed_params(), eth_filters(), store)
    assert g.check_place(buy(5)) == "no_reference_price"


def test_halted_refuses_what_adds_exposure_but_lets_reduction_through(guard):
    guard.store.apply(account_update(50, 3000.0, t=2))
    guard.halt("operator")
    assert guard.state == HALTED
    assert guard.check_place(buy(5)) == "halted"
    assert guard.check_place(sell(50)) is None  # reduces the long to 0
    assert guard.check_place(sell(51)) == "halted"  # would flip it short
    assert guard.check_place(market(SELL, 20)) is None
    guard.resume()
    assert guard.check_place(buy(5)) is None


def test_flattening_lets_only_reduce_only_orders_through(guard):
    guard.store.apply(account_update(-40, 3000.0, t=2))
    guard.flatten()
    assert guard.state == FLATTENING
    assert guard.check_place(buy(10)) == "flattening"
    assert guard.check_place(market(BUY, 40)) is None
    assert guard.check_place(market(BUY, 41)) == "reduce_only_exceeds_position"
    assert guard.check_place(market(SELL, 1)) == "reduce_only_no_position"


def test_fleet_reduce_only_mode_refuses_adding_orders(guard):
    guard.store.apply(account_update(30, 3000.0, t=2))
    guard.set_reduce_only(True)
    assert guard.check_place(buy(1)) == "reduce_only_mode"
    assert guard.check_place(sell(30)) is None
    assert guard.check_place(sell(31)) == "reduce_only_mode"
    assert guard.refusals == {"reduce_only_mode": 2}


def test_refusals_are_counted_by_reason(guard):
    for _ in range(3):
        guard.check_place(buy(0))
    guard.check_place(buy(5, px=1))
    assert guard.refusals == {"bad_quantity": 3, "price_band": 1}


# --- drawdown ---------------------------------------------------------------------------------


def test_drawdown_bands_reduce_25_45_80_percent_in_4_slices_1200_ms_apart():
    bands = DrawdownBands(DrawdownParams())
    assert bands.check(5.9, 200, now_ms=0) is None
    plan = bands.check(6.0, 200, now_ms=1_000)
    assert plan is not None and plan.band == 0 and plan.fraction == 0.25 and plan.side == SELL
    assert plan.total_steps == 50
    assert [(s.due_ms, s.qty_steps) for s in plan.slices] == [(1_000, 13), (2_200, 13), (3_400, 12), (4_600, 12)]
    plan = bands.check(11.0, 150, now_ms=5_000)
    assert plan.fraction == 0.45 and plan.total_steps == 67
    plan = bands.check(17.5, 80, now_ms=6_000)
    assert plan.fraction == 0.80 and plan.total_steps == 64
    assert sum(s.qty_steps for s in plan.slices) == 64


def test_each_band_acts_once_per_excursion():
    bands = DrawdownBands(DrawdownParams())
    assert bands.check(7.0, 200, now_ms=0) is not None
    assert bands.check(8.0, 150, now_ms=1_000) is None
    assert bands.check(6.5, 150, now_ms=2_000) is None
    assert bands.check(10.9, 150, now_ms=3_000) is None


def test_a_jump_past_several_bands_acts_on_the_deepest_once():
    bands = DrawdownBands(DrawdownParams())
    plan = bands.check(12.0, 100, now_ms=0)
    assert plan.band == 1 and plan.total_steps == 45
    assert bands.check(11.5, 55, now_ms=10) is None
    assert bands.check(17.0, 55, now_ms=20).band == 2


def test_bands_rearm_after_recovery_and_cooldown():
    bands = DrawdownBands(DrawdownParams(cooldown_sec=300))
    assert bands.check(6.0, 100, now_ms=0) is not None
    assert bands.check(1.0, 75, now_ms=60_000) is None  # recovered, but inside the cooldown
    assert bands.check(6.0, 75, now_ms=70_000) is None
    assert bands.check(2.9, 75, now_ms=300_000) is None  # recovered (< 3 %) after the cooldown: re-armed
    plan = bands.check(6.0, 75, now_ms=310_000)
    assert plan is not None and plan.total_steps == 18


def test_a_short_position_is_reduced_by_buying():
    plan = DrawdownBands(DrawdownParams()).check(6.0, -40, now_ms=0)
    assert plan.side == BUY and plan.total_steps == 10


def test_a_flat_position_needs_no_plan():
    assert DrawdownBands(DrawdownParams()).check(20.0, 0, now_ms=0) is None


def test_slices_made_overdue_by_a_gap_are_spaced_again_from_now_at_the_plans_interval():
    slices = [TwapSlice(2_200, SELL, 13), TwapSlice(3_400, SELL, 12), TwapSlice(9_000, SELL, 12)]
    # a slice went at 5_000 after a block: the next may not follow before 6_200
    assert [sl.due_ms for sl in respace(slices, 5_000, 1_200)] == [6_200, 7_400, 9_000]
    on_time = [TwapSlice(3_400, SELL, 12), TwapSlice(4_600, SELL, 12)]
    assert respace(on_time, 2_200, 1_200) == on_time  # nothing overdue: the plan's times stay
    assert respace([], 5_000, 1_200) == []


def test_twap_slices_are_whole_market_steps_and_at_least_the_market_min_qty():
    # market step 0.01 = 10 LOT steps of 0.001, minQty 0.02 = 20 steps
    plan = DrawdownBands(DrawdownParams(), unit_steps=10, min_steps=20).check(6.0, 2_037, now_ms=0)
    assert plan.total_steps == 500  # 25 % of 2.037 = 0.509 -> 0.50 on the market step
    assert [s.qty_steps for s in plan.slices] == [130, 130, 120, 120]
    few = DrawdownBands(DrawdownParams(), unit_steps=10, min_steps=20).check(6.0, 250, now_ms=0)
    assert [s.qty_steps for s in few.slices] == [20, 20, 20]  # 0.06: three slices, none under minQty 0.02
    assert DrawdownBands(DrawdownParams(), unit_steps=10, min_steps=20).check(6.0, 70, now_ms=0) is None


def test_a_band_crossed_while_flat_acts_once_the_excursion_builds_a_position():
    bands = DrawdownBands(DrawdownParams(), unit_steps=10, min_steps=20)
    assert bands.check(7.0, 0, now_ms=0) is None        # flat: nothing to cut
    assert bands.check(7.0, 50, now_ms=1_000) is None   # 25 % of 0.05 is under minQty 0.02
    plan = bands.check(7.0, 400, now_ms=2_000)          # the grid bought more, still 7 % down
    assert plan is not None and plan.band == 0 and plan.total_steps == 100
    assert bands.check(7.0, 800, now_ms=3_000) is None  # the band has acted: once per excursion
