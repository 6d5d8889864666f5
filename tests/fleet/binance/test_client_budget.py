"""The rate budget's arithmetic on an injected clock (the simulator tests prove it on the wire)."""

import pytest

from fleet.binance.errors import BudgetExhaustedError
from fleet.binance.ratelimit import NAMED_CEILING_S, THROTTLE_SHOWN_S, Cost, RateBudget

ORDER = Cost(orders_10s=1, orders_1m=1)
MINUTE = 1_796_000_040_000  # a minute's boundary on the exchange's clock (ms)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_orders_stop_at_the_10s_bucket_and_resume_when_it_slides():
    clock = Clock()
    budget = RateBudget(orders_per_10s=300, orders_per_min=1200, clock=clock, safety=1.0, reserve=0.0)
    for _ in range(300):
        assert budget.try_charge(ORDER) == 0
    assert budget.orders_available() == 0
    wait = budget.try_charge(ORDER)
    assert 9.9 < wait <= 10.01
    clock.t += wait
    assert budget.try_charge(ORDER) == 0


def test_share_splits_the_account_limits():
    clock = Clock()
    budget = RateBudget(share=0.25, clock=clock, safety=1.0, reserve=0.0)
    assert budget.limits == {"weight_1m": 600, "orders_10s": 75, "orders_1m": 300, "funding_reads_5m": 125}
    assert budget.orders_available() == 75
    budget.set_share(0.5)
    assert budget.orders_available() == 150
    with pytest.raises(ValueError, match="share"):
        budget.set_share(0)


def test_exchange_headers_count_other_agents_usage():
    clock = Clock()
    budget = RateBudget(share=0.5, clock=clock, safety=1.0, reserve=0.0)
    # our own half is untouched, but the exchange reports the account nearly full
    budget.observe_headers({"X-MBX-ORDER-COUNT-10S": "295", "X-MBX-USED-WEIGHT-1M": "10"})
    assert budget.orders_available() == 5
    for _ in range(5):
        assert budget.try_charge(ORDER) == 0
    assert budget.try_charge(ORDER) > 0
    clock.t += 5.0
    assert budget.orders_available() == 0  # the exchange's window still holds 300
    clock.t += 5.0  # the exchange's 10 s window has rolled over, and so has ours
    assert budget.orders_available() == 150


def test_retry_after_blocks_every_request():
    clock = Clock()
    budget = RateBudget(clock=clock)
    budget.note_retry_after(3.0)
    assert budget.try_charge(Cost(weight=1)) == pytest.approx(3.0)
    assert budget.orders_available() == 0
    clock.t += 3.0
    assert budget.try_charge(Cost(weight=1)) == 0


def test_a_cost_above_the_limit_is_refused_not_waited_for():
    budget = RateBudget(share=0.01, clock=Clock())
    assert budget.wait_time(Cost(weight=5, orders_10s=5, orders_1m=1)) == float("inf")


async def test_wait_false_refuses_without_charging():
    clock = Clock()
    budget = RateBudget(orders_per_10s=2, clock=clock, safety=1.0, reserve=0.0)
    await budget.acquire(ORDER, wait=False)
    await budget.acquire(ORDER, wait=False)
    with pytest.raises(BudgetExhaustedError, match="rate budget exhausted") as info:
        await budget.acquire(ORDER, wait=False)
    assert info.value.wait_s > 0 and budget.refused == 1


def test_an_order_count_429_pauses_orders_but_not_cancels():
    clock = Clock()
    budget = RateBudget(clock=clock)
    budget.note_retry_after(4.0, orders_only=True)
    assert budget.try_charge(ORDER) == pytest.approx(4.0)
    assert budget.try_charge(Cost(weight=1)) == 0  # a cancel still goes out
    assert budget.orders_available() == 0
    clock.t += 4.0
    assert budget.try_charge(ORDER) == 0


def test_a_throttle_holds_the_quoting_lanes_orders_a_second_but_not_the_risk_lane_nor_reads():
    clock = Clock()
    budget = RateBudget(clock=clock)
    budget.note_throttled()   # -1008: the exchange's system-level protection
    assert budget.wait_time(ORDER) == pytest.approx(1.0)
    assert budget.orders_available() == 0
    assert "system-level protection" in budget.why_wait(ORDER)
    assert budget.try_charge(ORDER, risk=True) == 0   # reduce-only orders are exempt at the exchange
    assert budget.orders_available(risk=True) > 0
    assert budget.try_charge(Cost(weight=1)) == 0   # a cancel or a read
    clock.t += 1.0
    assert budget.try_charge(ORDER) == 0 and budget.throttled == 1
    budget.note_throttled()   # again once the hold ended: twice the wait (Binance: "retry with backoff")
    assert budget.wait_time(ORDER) == pytest.approx(2.0)
    clock.t += 0.5
    budget.note_throttled()   # an answer to a request sent before the hold: the same overload, not doubled
    assert budget.wait_time(ORDER) == pytest.approx(2.0)
    clock.t += 2.0   # that hold's end
    budget.note_throttled()
    assert budget.wait_time(ORDER) == pytest.approx(4.0)
    clock.t += 4.0 + 5.0   # quiet for a while: back to a second
    budget.note_throttled()
    assert budget.wait_time(ORDER) == pytest.approx(1.0)


def test_a_failing_order_route_holds_the_quoting_lane_apart_from_the_throttle_and_an_answer_undoes_its_doubling():
    """A quoting order's route failing (a 5xx, -1001, no answer) holds the quoting lane as a -1008 does,
    shown as its own hold and not counted as a -1008; failures one after another double it; an order
    route's answer in between starts it again at a second (a flaky route's scattered failures held the
    lane most of the time, a review's model)."""
    clock = Clock()
    budget = RateBudget(clock=clock)
    assert budget.note_throttled(failing=True) == pytest.approx(1.0)
    assert budget.holds() == ["order_routes_failing"] and budget.throttled == 0
    assert "failing its order routes" in budget.why_wait(ORDER)
    assert budget.try_charge(ORDER, risk=True) == 0   # reduce-only orders and cancels go on
    clock.t += 1.0
    assert budget.note_throttled(failing=True) == pytest.approx(2.0)   # again right after: twice
    clock.t += 2.0
    budget.note_orders_answered()   # an order went through
    assert budget.note_throttled(failing=True) == pytest.approx(1.0)
    clock.t += 1.0
    assert budget.holds() == [] and budget.try_charge(ORDER) == 0


def test_holds_name_what_the_exchange_refuses_for_now_and_a_throttle_stays_shown_between_its_short_holds():
    clock = Clock()
    budget = RateBudget(clock=clock)
    assert budget.holds() == []
    budget.note_throttled()
    budget.note_retry_after(2.0, orders_only=True)
    budget.note_banned(3.0)
    assert budget.holds() == ["rate_limited", "orders_limited", "throttled"]
    clock.t += 3.0
    assert budget.holds() == ["throttled"]   # its 1 s hold is over, but it came 3 s ago: quotes are refused
    clock.t += THROTTLE_SHOWN_S - 3.0
    assert budget.holds() == []


def test_a_quoting_lane_its_own_order_counts_leave_no_room_is_shown_as_its_budget_spent():
    """An account held to few orders: the agent said "quoting", nothing held, while none went out."""
    clock = Clock()
    budget = RateBudget(orders_per_10s=4, clock=clock, safety=1.0)   # the quoting lane: 3 of them
    for _ in range(3):
        assert budget.try_charge(ORDER) == 0
    assert budget.holds() == ["order_budget_spent"] and budget.orders_available(risk=True) == 1
    budget.note_throttled()
    assert budget.holds() == ["throttled"]   # a hold of the exchange's says it first
    clock.t += 10.0
    assert budget.holds() == []


def test_a_limit_a_429_names_only_lowers_and_holds_over_a_listing_that_did_not_move():
    """A 429 is no evidence that a limit rose (a -1015 naming the default raised an account's listed 25 to
    300); a listing that lags the 429 would raise its limit again a minute on, into the next 429. The
    named limit stays the ceiling for NAMED_CEILING_S unless the listing moves."""
    clock = Clock()
    budget = RateBudget(clock=clock, safety=1.0, reserve=0.0)
    budget.set_limits(2400, 25, 1200)   # listed: the account held to 25 a 10 s
    assert budget.set_limits(orders_per_10s=300, named=True) == [] and budget.limits["orders_10s"] == 25
    assert budget.set_limits(1200, named=True) == ["weight_1m 2400 -> 1200"]
    assert budget.set_limits(2400) == [] and budget.lowered == {"weight_1m", "orders_10s"}   # the listing lags
    clock.t += NAMED_CEILING_S
    assert budget.set_limits(2400) == ["weight_1m 1200 -> 2400"]   # long enough: the listing is taken
    budget.set_limits(1200, named=True)
    assert budget.set_limits(1800) == ["weight_1m 1200 -> 1800"]   # the listing moved: it is the exchange's now
    assert budget.set_limits(2400, 300) == ["weight_1m 1800 -> 2400", "orders_10s 25 -> 300"] and not budget.lowered
    # named again, the ceiling lasts from then; the account's own listing first read is no move of exchangeInfo's
    budget.set_limits(orders_per_10s=25, named=True)
    clock.t += NAMED_CEILING_S - 10
    budget.set_limits(orders_per_10s=25, named=True)
    clock.t += 20
    budget.relisted_orders()
    assert budget.set_limits(orders_per_10s=50) == [] and budget.limits["orders_10s"] == 25


def test_quoting_leaves_the_reserve_to_risk_reducing_requests():
    clock = Clock()
    budget = RateBudget(orders_per_10s=100, orders_per_min=1200, weight_per_min=400, clock=clock, safety=1.0,
                        reserve=0.25)
    # a ladder spends everything its lane offers ...
    assert budget.orders_available() == 75
    for _ in range(75):
        assert budget.try_charge(ORDER) == 0
    assert budget.orders_available() == 0 and budget.try_charge(ORDER) > 0
    # ... and the amend that shrinks an order near the cap still goes out at once
    assert budget.orders_available(risk=True) == 25
    for _ in range(25):
        assert budget.try_charge(ORDER, risk=True) == 0
    assert budget.try_charge(ORDER, risk=True) > 0
    # weight too: quoting reads stop at 300 of 400, cancels may use the rest
    for _ in range(300 - 0):
        if budget.try_charge(Cost(weight=1)) > 0:
            break
    assert budget.try_charge(Cost(weight=1)) > 0
    assert budget.try_charge(Cost(weight=1), risk=True) == 0


def test_the_exchange_count_keeps_the_reserve_too():
    clock = Clock()
    budget = RateBudget(share=1.0, clock=clock, safety=1.0, reserve=0.25)
    budget.observe_headers({"X-MBX-ORDER-COUNT-10S": "225"})  # others on the account quoted 225 of 300
    assert budget.orders_available() == 0
    assert budget.orders_available(risk=True) == 75


def test_reserve_is_checked():
    with pytest.raises(ValueError, match="reserve"):
        RateBudget(reserve=1.0)


def test_room_is_each_windows_lane_left_by_the_tighter_of_both_views():
    clock = Clock()
    budget = RateBudget(clock=clock, safety=1.0, reserve=0.0)  # 2,400 weight, 300 / 10 s, 1,200 / min
    assert ORDER.times(3) == Cost(0, 3, 3)
    assert budget.room() == {"weight_1m": 1.0, "orders_10s": 1.0, "orders_1m": 1.0}
    budget.try_charge(Cost(weight=5, orders_10s=5, orders_1m=1))
    assert budget.room() == pytest.approx({"weight_1m": 2395 / 2400, "orders_10s": 295 / 300, "orders_1m": 1199 / 1200})
    # every agent behind the IP has spent its weight: the exchange's count is the tighter view
    budget.observe_headers({"X-MBX-USED-WEIGHT-1M": "2390"})
    assert budget.room()["weight_1m"] == pytest.approx(10 / 2400)
    clock.t += 60.0  # both minutes rolled over
    assert budget.room() == {"weight_1m": 1.0, "orders_10s": 1.0, "orders_1m": 1.0}
    quoting = RateBudget(clock=clock, safety=1.0, reserve=0.25)
    quoting.try_charge(Cost(weight=900))
    assert quoting.room()["weight_1m"] == pytest.approx(900 / 1800)  # of the quoting lane's 1,800
    assert quoting.room(risk=True)["weight_1m"] == pytest.approx(1500 / 2400)


def test_a_count_the_exchange_reported_ends_at_its_windows_boundary_on_the_exchanges_clock():
    clock = Clock()
    weight = Cost(weight=5)
    blind = RateBudget(clock=clock, safety=1.0, reserve=0.0)  # 2,400 a minute, the exchange's clock unknown
    knows = RateBudget(clock=clock, safety=1.0, reserve=0.0)
    # the exchange's clock reads 12:00:57.5 as the report arrives: its minute ends in 2.5 s
    server_ms = MINUTE - 2_500
    blind.observe_headers({"X-MBX-USED-WEIGHT-1M": "2398"})
    knows.observe_headers({"X-MBX-USED-WEIGHT-1M": "2398"}, server_ms=server_ms)
    assert blind.wait_time(weight) == pytest.approx(60.0, abs=0.01)  # a whole minute from the report
    assert knows.wait_time(weight) == pytest.approx(2.5 + 0.5, abs=0.01)  # the boundary, and the margin
    assert "IP weight a minute as the exchange counts it: 2398 + 5 above 2400" in knows.why_wait(weight)
    clock.t += 3.0
    assert knows.try_charge(weight) == 0 and blind.try_charge(weight) > 50
    # learning the clock later (the client's first answer comes before it knows the offset) aligns
    # a count already seen, and never to a boundary earlier than the window it was seen in
    late = RateBudget(clock=clock, safety=1.0, reserve=0.0)
    late.observe_headers({"X-MBX-USED-WEIGHT-1M": "2398"})
    late.note_server_time(server_ms + 3_000)  # the next minute, 0.5 s in: the count's minute ended
    assert late.wait_time(weight) == pytest.approx(59.5 + 0.5, abs=0.01)  # at most the next boundary
    late.note_server_time(server_ms + 1_000)  # a reading from the report's own minute: 1.5 s left
    assert late.wait_time(weight) == pytest.approx(1.5 + 0.5, abs=0.01)


def test_the_10s_order_count_ends_at_its_10s_block():
    clock = Clock()
    budget = RateBudget(clock=clock, safety=1.0, reserve=0.0)
    budget.observe_headers({"X-MBX-ORDER-COUNT-10S": "300"}, server_ms=MINUTE + 7_000)  # 3 s left of the block
    assert budget.wait_time(ORDER) == pytest.approx(3.0 + 0.5, abs=0.01)
    assert "account orders in 10 s as the exchange counts it" in budget.why_wait(ORDER)
    assert budget.why_wait(Cost(weight=1)) == "nothing"


def test_a_budget_told_not_to_read_the_exchanges_counts_spends_only_its_own_windows():
    clock = Clock()
    own = RateBudget(clock=clock, safety=1.0, reserve=0.0, exchange_counts=False)  # the kill path's
    own.observe_headers({"X-MBX-USED-WEIGHT-1M": "2400"}, server_ms=MINUTE - 30_000)
    assert own.try_charge(Cost(weight=1)) == 0


def test_an_ip_whose_minute_of_weight_is_spent_holds_weight_0_orders_too():
    """POST order weighs 0 on the IP: the budget held reads for the rest of the minute it knew spent, yet
    sent orders into the IP's 429 (each agent took its own; ten together were the IP's ban)."""
    clock = Clock()
    budget = RateBudget(share=1 / 12, clock=clock)
    budget.observe_headers({"X-MBX-USED-WEIGHT-1M": "2401", "X-MBX-ORDER-COUNT-10S": "0"})
    assert budget.wait_time(Cost(weight=1)) > 50
    assert budget.wait_time(ORDER) > 50 and budget.wait_time(ORDER, risk=True) > 50
    assert "the IP's minute of weight spent" in budget.why_wait(ORDER)
    assert budget.orders_available() == 0 and budget.orders_available(risk=True) == 0
    budget.observe_headers({"X-MBX-USED-WEIGHT-1M": "2400"})
    assert budget.wait_time(ORDER) == 0   # at the limit, not beyond it: a weight-0 order is taken


def test_funding_reads_count_in_a_5_minute_window_of_their_own_and_its_429_holds_only_them(tmp_path):
    from fleet.binance.host_holds import HostHolds

    clock = Clock()
    budget = RateBudget(share=0.5, funding_reads_per_5min=10, clock=clock, safety=1.0, reserve=0.25)
    other = RateBudget(clock=clock)   # another process of the host
    for b in (budget, other):
        b.share_host_holds(HostHolds("http://127.0.0.1:1", tmp_path),
                           funding=HostHolds("http://127.0.0.1:1", tmp_path, kind="funding"))
    read = Cost(funding_reads=1)
    assert budget.limits["funding_reads_5m"] == 5
    for _ in range(5):   # the whole share: no funding read takes risk off, the reserve is not theirs
        assert budget.try_charge(read) == 0
    clock.t += 100.0
    assert 199.9 < budget.wait_time(read) <= 200.01   # until the first slides out of its 5 minutes
    assert "fundingRate and fundingInfo's 5 minutes: 5 + 1 above 5" in budget.why_wait(read)
    assert budget.wait_time(Cost(weight=1)) == 0 and budget.orders_available() > 0   # nothing else held
    clock.t += 200.0
    assert budget.try_charge(read) == 0
    budget.note_retry_after(30.0, funding_only=True)   # the exchange's count (others on the IP) spent
    for b in (budget, other):   # the host's other processes hold them too, before their own 429
        assert b.holds() == ["funding_reads_limited"] and b.blocked_for() == 0
        assert 29.0 < b.wait_time(read) <= 30.0 and b.wait_time(Cost(weight=1)) == 0
        assert "a 429 of fundingRate and fundingInfo's limit" in b.why_wait(read)
