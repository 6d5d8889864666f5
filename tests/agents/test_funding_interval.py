"""The funding interval: the quotes' funding shift scales the predicted rate to the 8 hours the
parameters speak of, and a next settlement time off the interval asks the runtime to read it again."""

from __future__ import annotations

from decimal import Decimal

import pytest

from agents.core import AgentCore
from agents.funding import HOUR_MS, FundingBook
from fleet.binance.events import MarkPrice

from .test_core_support import SYMBOL, book, eth_filters, seed_params


def _mark(price: float, t: int, rate: float, next_ms: int) -> MarkPrice:
    return MarkPrice(SYMBOL, t, price, price, price, rate, next_ms)


@pytest.mark.parametrize("hours, scale", [(8, 1.0), (4, 2.0), (1, 8.0)])
def test_the_quotes_center_takes_the_predicted_rate_scaled_to_8_hours(hours, scale):
    params = seed_params()
    core = AgentCore(SYMBOL, params, eth_filters(), 1)
    assert core.store.funding.set_interval(hours * HOUR_MS) is (hours != 8)
    rate, mid = 0.0002, 3000.0
    core.on_event(book(mid, t=1_000), 1_000)
    core.on_event(_mark(mid, 1_000, rate, 8 * HOUR_MS), 1_000)
    core.quote(1_000)
    ladder = core.last_ladder
    assert ladder is not None
    assert core.store.predicted_funding == rate   # the exchange's units
    assert ladder.center == pytest.approx(mid * (1 - params.funding.sensitivity * rate * scale))
    assert core.status()["funding_interval_s"] == hours * 3600


def test_a_schedule_on_its_interval_asks_nothing_a_moved_one_asks_once():
    f = FundingBook(seed_params())
    t0 = 10 * 8 * HOUR_MS
    for i in range(3):   # settlements every 8 hours, each frame repeating the next time
        f.on_schedule(t0 + i * 8 * HOUR_MS)
        f.on_schedule(t0 + i * 8 * HOUR_MS)
    assert not f.schedule_moved
    f.on_schedule(t0 + 2 * 8 * HOUR_MS - 4 * HOUR_MS)   # moved before its time: an interval of 4 hours
    assert f.schedule_moved
    f.schedule_moved = False
    assert f.set_interval(4 * HOUR_MS) and not f.set_interval(4 * HOUR_MS)
    f.on_schedule(f.next_funding_ms + 4 * HOUR_MS)
    assert not f.schedule_moved
    f.on_schedule(0)   # a frame without its T says nothing
    assert not f.schedule_moved and f.next_funding_ms > 0


def test_frames_lost_across_settlements_ask_once_and_a_schedule_fundinginfo_cannot_state_asks_once():
    f = FundingBook(seed_params())
    f.on_schedule(8 * HOUR_MS)
    f.on_schedule(24 * HOUR_MS)   # two settlements passed unseen
    assert f.schedule_moved
    f.schedule_moved = False
    f.on_schedule(32 * HOUR_MS)
    assert not f.schedule_moved
    g = FundingBook(seed_params())   # an exchange settling every 30 s (the demo's simulator)
    for i in range(1, 6):
        g.on_schedule(i * 30_000)
        if i == 2:
            assert g.schedule_moved
            g.schedule_moved = False
    assert not g.schedule_moved and g.interval_ms == 8 * HOUR_MS


def test_a_move_by_another_interval_binance_uses_stays_unexplained_until_the_interval_read_says_it():
    f = FundingBook(seed_params())
    f.on_schedule(8 * HOUR_MS)
    f.on_schedule(12 * HOUR_MS)   # 4 hours on: fundingInfo may not list it yet
    assert f.unexplained()
    f.set_interval(4 * HOUR_MS)
    assert not f.unexplained()
    g = FundingBook(seed_params())
    g.on_schedule(30_000)
    g.on_schedule(60_000)   # 30 s: no interval Binance uses, nothing to read again
    assert not g.unexplained()


def test_the_funding_shift_is_bounded_by_max_shift():
    """An hourly symbol near a 2 % cap: 2.2 x 2 % x 8 would move the center by a third of the mid."""
    params = seed_params()
    params = params.model_copy(update={"funding": params.funding.model_copy(update={"max_shift": 0.01})})
    core = AgentCore(SYMBOL, params, eth_filters(), 1)
    core.store.funding.set_interval(HOUR_MS)
    mid = 3000.0
    for rate, center in ((0.02, mid * 0.99), (-0.02, mid * 1.01), (0.0002, mid * (1 - 2.2 * 0.0002 * 8))):
        core.on_event(book(mid, t=1_000), 1_000)
        core.store.funding.predicted_funding = rate
        core.quote(1_000)
        assert core.last_ladder.center == pytest.approx(center)


def test_a_settlement_passed_with_a_position_held_looks_up_its_fee_only_if_no_frame_booked_it():
    """The mark frames move on to the next settlement before the fee's frame comes (seconds after):
    a look-up only once the grace is over without a fee of that time (an income read of weight 30 at
    each settlement of every symbol held, else)."""
    from decimal import Decimal

    from agents.funding import FEE_FRAME_GRACE_MS, FUNDING_LOOKBACK_MS

    n1, n2 = 8 * 3_600_000, 16 * 3_600_000
    for frame_came in (True, False):
        f = FundingBook(seed_params())
        f.on_schedule(n1, n1 - 1000)
        f.on_schedule(n2, n1 + 200)           # the settlement at n1 passed
        f.expect_fee(n1, held=True)
        f.check_expected(n1 + 1000, lambda t: True)
        assert f.lookup_start() is None        # within the grace: the frame may still come
        if frame_came:
            assert f.on_fee(n1 + 300, Decimal("-0.5"))
        f.check_expected(n1 + FEE_FRAME_GRACE_MS, lambda t: True)
        assert f.lookup_start() == (None if frame_came else n1 - FUNDING_LOOKBACK_MS)
    f = FundingBook(seed_params())
    f.expect_fee(n1, held=False)               # flat at the settlement: no fee to look for
    f.check_expected(n1 + FEE_FRAME_GRACE_MS, lambda t: False)
    assert f.lookup_start() is None


def test_fees_waiting_through_a_long_starvation_are_all_looked_up():
    """Settlements every 30 s (a short interval) whose fee rows could not be read for 20 minutes (the rate
    budget starved): the oldest of the look-ups due fell out of a list of 32 and the read started after
    them, so their fees were never booked. Within the look-up horizon (an hour) every one is read."""
    fb = FundingBook(seed_params())
    times = [1_000_000 + 30_000 * i for i in range(40)]
    for t in times:
        assert fb.ask_lookup(t, held=True)
    assert fb.lookup_start() == times[0] - 60_000
    fb.on_income([{"incomeType": "FUNDING_FEE", "symbol": SYMBOL, "income": "-0.01", "asset": "USDC",
                   "time": t, "tranId": i} for i, t in enumerate(times)], SYMBOL, "USDC")
    assert fb.lookup_start() is None and fb.total == -40 * Decimal("0.01")
