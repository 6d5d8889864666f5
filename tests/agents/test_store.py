"""Store: in-flight orders, idempotent ordered updates, pending sizes, position, window, funding, P&L."""

from __future__ import annotations

import math
import random
import statistics
from decimal import Decimal as D

import pytest

from agents.orders import Amend, Cancel, Place
from agents.store import MISSING, PENDING_NEW, Store
from fleet.binance.events import BUY, SELL

from .test_core_support import (
    SYMBOL,
    account_update,
    book,
    eth_filters,
    funding_fee,
    mark,
    order_info,
    order_update,
    position_info,
    seed_params,
)


@pytest.fixture
def store() -> Store:
    return Store(SYMBOL, eth_filters(), seed_params())


def place(cid: str, side: str = BUY, px: int = 300_000, steps: int = 7, reason: str = "ladder") -> Place:
    return Place(cid, side, px, steps, "GTX", False, "LIMIT", reason, 0)


def assert_pending_consistent(s: Store) -> None:
    assert (s.pending_buy_steps, s.pending_sell_steps) == s.recompute_pending()
    assert s.pending_buy_steps >= 0 and s.pending_sell_steps >= 0


def test_an_order_counts_as_pending_from_the_moment_it_is_sent(store):
    store.on_sent(place("a", BUY, steps=7), 10)
    store.on_sent(place("b", SELL, steps=5), 10)
    assert store.pending_buy_size() == pytest.approx(0.007)
    assert store.pending_sell_size() == pytest.approx(0.005)
    assert store.orders["a"].status == PENDING_NEW
    assert store.worst_long_steps == 7 and store.worst_short_steps == -5


def test_an_order_signed_again_later_has_its_window_run_from_the_second_signature(store):
    """A -1021 (our clock behind) makes the client learn the offset again and resend: on the exchange's
    clock the request is signed later, so it may land later; only what is still pending moves."""
    store.on_sent(place("a"), 10)
    store.on_sent(place("b"), 10)
    store.apply(order_update("b", 102, BUY, 300_000, 7, t=11))
    store.on_signed_later(["a", "b", "gone"], 120_000)
    assert (store.orders["a"].sent_ms, store.orders["b"].sent_ms) == (120_010, 10)


def test_ack_keeps_pending_and_learns_the_exchange_id(store):
    store.on_sent(place("a"), 10)
    store.apply(order_update("a", 101, BUY, 300_000, 7, t=11))
    o = store.orders["a"]
    assert o.order_id == 101 and o.status == "NEW"
    assert store.pending_buy_steps == 7
    assert_pending_consistent(store)


def test_partial_fill_moves_quantity_from_pending_to_position(store):
    store.on_sent(place("a"), 10)
    store.apply(order_update("a", 101, BUY, 300_000, 7, t=11))
    store.apply(order_update("a", 101, BUY, 300_000, 7, status="PARTIALLY_FILLED", cum_steps=3, last_steps=3, t=12, trade_id=1))
    assert store.position_steps == 3
    assert store.pending_buy_steps == 4
    assert store.entry_price == pytest.approx(3000.0)
    store.apply(order_update("a", 101, BUY, 300_000, 7, status="FILLED", cum_steps=7, last_steps=4, t=13, trade_id=2))
    assert store.position_steps == 7
    assert store.pending_buy_steps == 0
    assert "a" not in store.orders and store.get("a").status == "FILLED"
    assert store.fills_buy == 2


def test_duplicate_and_older_updates_change_nothing(store):
    store.on_sent(place("a"), 10)
    new = order_update("a", 101, BUY, 300_000, 7, t=11)
    part = order_update("a", 101, BUY, 300_000, 7, status="PARTIALLY_FILLED", cum_steps=3, last_steps=3, t=12, trade_id=1)
    store.apply(new)
    assert store.apply(part)
    assert not store.apply(part)  # duplicate
    assert not store.apply(new)  # older
    assert store.position_steps == 3 and store.pending_buy_steps == 4
    assert store.stale_updates == 2


def test_fill_reported_before_its_new_event_is_applied_once(store):
    store.on_sent(place("a"), 10)
    store.apply(order_update("a", 101, BUY, 300_000, 7, status="FILLED", cum_steps=7, last_steps=4, t=12, trade_id=2))
    store.apply(order_update("a", 101, BUY, 300_000, 7, t=10))
    store.apply(order_update("a", 101, BUY, 300_000, 7, status="PARTIALLY_FILLED", cum_steps=3, last_steps=3, t=11, trade_id=1))
    assert store.position_steps == 7 and store.pending_buy_steps == 0
    assert not store.orders and store.fills_buy == 2


def test_a_view_with_more_filled_is_newer_whatever_its_time(store):
    # an amendment answered at t=15, then the fill the exchange stamped t=14: the order is filled,
    # and a look-up answering the same stays applied (no ghost order keeps counting)
    store.on_sent(place("a"), 10)
    store.apply(order_update("a", 101, BUY, 300_000, 7, t=11))
    store.on_order_info(order_info("a", 101, BUY, 300_010, 7, t=15))
    store.apply(order_update("a", 101, BUY, 300_010, 7, status="FILLED", cum_steps=7, last_steps=7, t=14, trade_id=1))
    assert store.position_steps == 7 and store.pending_buy_steps == 0 and not store.orders
    store.on_order_info(order_info("a", 101, BUY, 300_010, 7, t=16))  # an older answer, later stamp
    assert store.get("a").status == "FILLED" and not store.orders


def test_a_fill_the_account_update_already_holds_is_not_added_again_even_out_of_order(store):
    # trades: 3 at t=11, then the exchange's position figure (3) at t=12, then 4 more at t=13;
    # they arrive: the t=13 trade, the account update, the t=11 trade.
    store.on_sent(place("a"), 10)
    store.apply(order_update("a", 101, BUY, 300_000, 7, status="FILLED", cum_steps=7, last_steps=4, t=13, trade_id=2))
    store.apply(account_update(3, 3000.0, t=12))
    store.apply(order_update("a", 101, BUY, 300_000, 7, status="PARTIALLY_FILLED", cum_steps=3, last_steps=3, t=11, trade_id=1))
    assert store.position_steps == 7  # the t=12 figure (3) plus the t=13 trade it cannot hold yet
    store.apply(account_update(7, 3000.0, t=13))
    assert store.position_steps == 7 and store.pending_buy_steps == 0


def test_cancel_in_flight_keeps_the_order_pending_until_the_exchange_closes_it(store):
    store.on_sent(place("a"), 10)
    store.apply(order_update("a", 101, BUY, 300_000, 7, t=11))
    store.on_cancel_sent(Cancel("a", 101), 12)
    assert store.pending_buy_steps == 7
    assert store.orders["a"].busy
    store.apply(order_update("a", 101, BUY, 300_000, 7, status="CANCELED", t=13))
    assert store.pending_buy_steps == 0 and not store.orders


def test_rejected_new_order_stops_counting(store):
    store.on_sent(place("a"), 10)
    store.on_rejected("a", -5022, 11)
    assert store.pending_buy_steps == 0 and not store.orders
    assert store.rejects == {-5022: 1}


def test_amend_counts_as_the_larger_of_old_and_new_until_acknowledged(store):
    store.on_sent(place("a", steps=7), 10)
    store.apply(order_update("a", 101, BUY, 300_000, 7, t=11))
    store.on_amend_sent(Amend("a", 101, BUY, 299_990, 10), 12)
    assert store.pending_buy_steps == 10
    store.apply(order_update("a", 101, BUY, 299_990, 10, exec_type="AMENDMENT", t=13))
    assert store.pending_buy_steps == 10 and not store.orders["a"].busy
    store.on_amend_sent(Amend("a", 101, BUY, 299_980, 4), 14)
    assert store.pending_buy_steps == 10  # larger of old (10) and new (4)
    store.on_order_info(order_info("a", 101, BUY, 299_980, 4, t=15))  # the REST answer of the modify
    assert store.pending_buy_steps == 4
    assert store.orders["a"].price_ticks == 299_980
    assert_pending_consistent(store)


def test_an_amendment_in_the_same_millisecond_as_a_partial_fill_is_applied(store):
    """Both views carry (t=20, 3 filled, PARTIALLY_FILLED): the amendment's frame and its REST answer were
    refused as stale, the order stayed busy for good and the ladder left it resting 2 % off the market."""
    store.on_sent(place("a", steps=10), 10)
    store.apply(order_update("a", 101, BUY, 300_000, 10, t=11))
    store.on_amend_sent(Amend("a", 101, BUY, 299_900, 20), 19)
    store.apply(order_update("a", 101, BUY, 300_000, 10, status="PARTIALLY_FILLED", cum_steps=3, last_steps=3,
                             t=20, trade_id=1))
    store.apply(order_update("a", 101, BUY, 299_900, 20, status="PARTIALLY_FILLED", exec_type="AMENDMENT",
                             cum_steps=3, t=20))
    o = store.orders["a"]
    assert (o.price_ticks, o.orig_steps, o.busy) == (299_900, 20, False)
    assert store.pending_buy_steps == 17 and store.position_steps == 3
    assert_pending_consistent(store)


def test_a_late_frame_of_an_earlier_amendment_does_not_end_the_count_of_the_one_in_flight(store):
    store.on_sent(place("a", steps=7), 10)
    store.apply(order_update("a", 101, BUY, 300_000, 7, t=11))
    store.on_amend_sent(Amend("a", 101, BUY, 299_990, 8), 12)
    store.on_order_info(order_info("a", 101, BUY, 299_990, 8, t=13))  # first modify answered by REST
    store.on_amend_sent(Amend("a", 101, BUY, 299_980, 20), 14)  # second modify in flight
    store.apply(order_update("a", 101, BUY, 299_990, 8, exec_type="AMENDMENT", t=13))  # the first, late
    assert store.pending_buy_steps == 20 and store.orders["a"].busy
    store.apply(order_update("a", 101, BUY, 299_980, 20, exec_type="AMENDMENT", t=15))
    assert store.pending_buy_steps == 20 and not store.orders["a"].busy


def test_a_fill_reported_by_cumulative_quantity_before_its_trade_frame_stays_counted(store):
    # 3 + 4 fill; the final frame (cum 7, last 4) arrives first: the first 3 are filled on the
    # exchange but not in our position yet, so they must still count as pending.
    store.on_sent(place("a", steps=7), 10)
    store.apply(order_update("a", 101, BUY, 300_000, 7, status="FILLED", cum_steps=7, last_steps=4, t=13, trade_id=2))
    assert store.position_steps == 4
    assert store.worst_long_steps == 7 and store.open_orders() == []
    store.apply(order_update("a", 101, BUY, 300_000, 7, status="PARTIALLY_FILLED", cum_steps=3, last_steps=3, t=12, trade_id=1))
    assert store.position_steps == 7 and store.pending_buy_steps == 0 and not store.orders


def test_an_account_figure_newer_than_an_orders_last_frame_settles_its_missing_trade_frames(store):
    store.on_sent(place("a", steps=7), 10)
    store.apply(order_update("a", 101, BUY, 300_000, 7, status="FILLED", cum_steps=7, last_steps=4, t=13, trade_id=2))
    assert store.pending_buy_steps == 3  # the first 3 are filled but their frame is missing
    store.apply(account_update(7, 3000.0, t=13))
    assert store.position_steps == 7 and store.pending_buy_steps == 0 and not store.orders
    store.apply(order_update("a", 101, BUY, 300_000, 7, status="PARTIALLY_FILLED", cum_steps=3, last_steps=3, t=12, trade_id=1))
    assert store.position_steps == 7 and store.pending_buy_steps == 0


def test_rejected_amend_leaves_the_order_as_it_was(store):
    store.on_sent(place("a", steps=7), 10)
    store.apply(order_update("a", 101, BUY, 300_000, 7, t=11))
    store.on_amend_sent(Amend("a", 101, BUY, 299_990, 12), 12)
    assert store.pending_buy_steps == 12
    store.on_amend_rejected("a", -4016, 101)   # a price filter's refusal
    assert store.pending_buy_steps == 7 and store.orders["a"].price_ticks == 300_000


def test_cancel_rejected_as_unknown_keeps_counting_until_the_order_is_seen_to_end(store):
    store.on_sent(place("a", steps=7), 10)
    store.apply(order_update("a", 101, BUY, 300_000, 7, t=11))
    store.on_cancel_sent(Cancel("a", 101), 12)
    store.on_cancel_rejected("a", -2011, 101, now_ms=13)
    # It may have filled with the fill still on its way: still pending, and flagged for a lookup.
    assert store.pending_buy_steps == 7 and store.orders["a"].busy
    assert [o.client_order_id for o in store.unresolved_orders(now_ms=2_000, older_than_ms=1_000)] == ["a"]
    store.apply(order_update("a", 101, BUY, 300_000, 7, status="FILLED", cum_steps=7, last_steps=7, t=12, trade_id=5))
    assert store.position_steps == 7 and store.pending_buy_steps == 0 and not store.orders


def test_an_unknown_order_resolved_by_a_rest_lookup(store):
    store.on_sent(place("a", steps=7), 10)
    store.apply(order_update("a", 101, BUY, 300_000, 7, t=11))
    store.on_amend_rejected("a", -2013, 101, now_ms=12)
    assert store.pending_buy_steps == 7
    store.on_order_info(order_info("a", 101, BUY, 300_000, 7, status="CANCELED", t=12))
    assert store.pending_buy_steps == 0 and store.get("a").status == "CANCELED"


def test_an_unknown_order_the_exchange_has_no_record_of_is_closed(store):
    store.on_sent(place("a", steps=7), 10)
    store.apply(order_update("a", 101, BUY, 300_000, 7, t=11))
    store.on_cancel_rejected("a", -2011, 101, now_ms=12)
    store.on_query_unknown("a", 101)  # GET order: -2013
    assert store.pending_buy_steps == 0 and store.get("a").status == MISSING and not store.orders


def test_cancel_rejected_for_another_reason_can_be_retried(store):
    store.on_sent(place("a"), 10)
    store.apply(order_update("a", 101, BUY, 300_000, 7, t=11))
    store.on_cancel_sent(Cancel("a", 101), 12)
    store.on_cancel_rejected("a", -1008, 101)
    assert store.orders["a"].cancel_sent_ms is None and store.pending_buy_steps == 7


def test_account_update_is_the_truth_and_fills_it_already_includes_are_not_added_again(store):
    store.apply(account_update(20, 2990.0, t=100))
    assert store.position_steps == 20 and store.entry_price == pytest.approx(2990.0)
    store.apply(order_update("x", 7, SELL, 300_000, 5, status="FILLED", cum_steps=5, last_steps=5, t=100, trade_id=9))
    assert store.position_steps == 20  # already inside the t=100 position figure
    store.apply(order_update("y", 8, SELL, 300_000, 5, status="FILLED", cum_steps=5, last_steps=5, t=101, trade_id=10))
    assert store.position_steps == 15
    store.apply(account_update(99, 1.0, t=50))  # older: ignored
    assert store.position_steps == 15


def test_orders_of_other_symbols_are_ignored(store):
    ev = order_update("a", 1, BUY, 300_000, 7, t=1)
    from dataclasses import replace

    assert not store.apply(replace(ev, symbol="BTCUSDT"))
    assert not store.orders and store.foreign_events == 1


def test_unknown_open_orders_from_the_stream_count_as_pending(store):
    store.apply(order_update("manual-1", 55, SELL, 301_000, 9, t=5))
    assert store.pending_sell_steps == 9 and store.orders["manual-1"].reason == "external"


def test_an_order_under_the_client_id_of_one_that_closed_is_a_new_order_and_counts(store):
    """Binance keeps client ids unique among open orders only: another hand may place one again once
    its first order has closed. The new order (another order id) counts; it was taken for a late frame
    of the closed one, ignored, and never counted."""
    store.apply(order_update("grid-sell-1", 500, SELL, 301_000, 9, t=5))
    store.apply(order_update("grid-sell-1", 500, SELL, 301_000, 9, status="CANCELED", t=6))
    assert store.pending_sell_steps == 0
    store.apply(order_update("grid-sell-1", 501, SELL, 302_000, 20, t=7))
    assert store.pending_sell_steps == 20 and store.orders["grid-sell-1"].order_id == 501
    # a late view of the old one, even one with fills, changes nothing of the new one
    store.apply(order_update("grid-sell-1", 500, SELL, 301_000, 9, status="CANCELED", cum_steps=3, t=6))
    assert store.pending_sell_steps == 20 and store.orders["grid-sell-1"].filled_steps == 0
    assert_pending_consistent(store)


def test_snapshot_reset_closes_missing_orders_keeps_fresh_in_flight_and_sets_position(store):
    store.on_sent(place("gone"), 1_000)
    store.apply(order_update("gone", 1, BUY, 300_000, 7, t=1_001))
    store.on_sent(place("kept"), 1_000)
    store.apply(order_update("kept", 2, BUY, 299_000, 7, t=1_001))
    store.on_sent(place("fresh", SELL, 301_000, 4), 9_000)
    store.on_sent(place("old-in-flight", SELL, 302_000, 4), 1_000)
    snapshot = [
        order_info("kept", 2, BUY, 299_000, 7, status="PARTIALLY_FILLED", executed_steps=2, avg_ticks=299_000, t=5_000),
        order_info("other", 3, SELL, 305_000, 6, t=4_000),
    ]
    store.reset_from_snapshot(position_info(2, 2990.0, 5_000), snapshot, now_ms=10_000)
    assert set(store.orders) == {"kept", "other", "fresh"}
    assert store.get("gone").status == MISSING and store.get("old-in-flight").status == MISSING
    assert store.position_steps == 2
    assert store.pending_buy_steps == 5
    assert store.pending_sell_steps == 6 + 4
    assert_pending_consistent(store)


def test_a_snapshot_does_not_close_orders_acknowledged_after_its_listing_was_asked(store):
    """The listing asked at 5,000 cannot show an order the exchange acknowledged at 5,100: it stays
    counted (the reconciler's look-up settles it), where one it lacks from before is closed."""
    store.on_sent(place("late"), 1_000)
    store.apply(order_update("late", 5, BUY, 300_000, 7, t=5_100))
    store.on_sent(place("gone"), 1_000)
    store.apply(order_update("gone", 6, BUY, 299_000, 4, t=1_001))
    store.reset_from_snapshot(position_info(0, 0.0, 5_050), [], now_ms=10_000, listed_at_ms=5_000)
    assert store.get("gone").status == MISSING
    assert store.get("late").status != MISSING and store.pending_buy_steps == 7
    assert_pending_consistent(store)


def test_a_snapshot_keeps_orders_changed_within_the_clock_margin_before_its_listing(store):
    """The listing's time is this host's estimate of the exchange's clock, which may run ahead by up to
    a second unnoticed: an order acknowledged 20 ms before it by that estimate may have landed after the
    exchange read its book. It stays counted (the reconciliation looks it up); one from a second
    earlier is closed. A new order in flight counts its grace from the listing, not from the end of the
    snapshot's reads."""
    store.on_sent(place("landed"), 1_000)
    store.apply(order_update("landed", 5, BUY, 300_000, 7, t=4_980))
    store.on_sent(place("gone"), 1_000)
    store.apply(order_update("gone", 6, BUY, 299_000, 4, t=3_999))
    store.on_sent(place("in-flight", SELL, 301_000, 3), 4_000)
    store.reset_from_snapshot(position_info(0, 0.0, 5_050), [], now_ms=10_500, in_flight_grace_ms=6_000,
                              listed_at_ms=5_000)
    assert store.get("gone").status == MISSING
    assert store.get("landed").status != MISSING and store.pending_buy_steps == 7
    assert store.get("in-flight").status == PENDING_NEW and store.pending_sell_steps == 3
    assert_pending_consistent(store)


def test_fills_a_rest_answer_tells_of_at_or_before_the_position_figure_are_inside_it(store):
    """The fill frame of "a" was lost; the snapshot's position (as of 5,000) holds its fill, and the
    look-up that follows finds it FILLED at 4,000: inside the figure, not pending on top of it. A fill
    a REST answer reports after the figure counts until a frame or a newer figure places it."""
    store.on_sent(place("a", steps=7), 1_000)
    store.apply(order_update("a", 1, BUY, 300_000, 7, t=1_001))
    store.on_sent(place("b", steps=5), 1_000)
    store.apply(order_update("b", 2, BUY, 299_000, 5, t=1_001))
    store.reset_from_snapshot(position_info(7, 3000.0, 5_000), [order_info("b", 2, BUY, 299_000, 5, t=1_001)],
                              now_ms=5_100, listed_at_ms=4_990)
    store.on_lookup("a", order_info("a", 1, BUY, 300_000, 7, status="FILLED", executed_steps=7, avg_ticks=300_000,
                                    t=4_000), 9_000, 6_000)
    assert (store.position_steps, store.pending_buy_steps) == (7, 5)
    store.on_order_info(order_info("b", 2, BUY, 299_000, 5, status="FILLED", executed_steps=5, avg_ticks=299_000,
                                   t=6_000))
    assert (store.position_steps, store.pending_buy_steps) == (7, 5)   # after the figure: still pending
    assert_pending_consistent(store)

    # a stream figure holds only the fills before it within its millisecond: the figure of ms 8,000 (a
    # fill of another order of that ms); a REST answer tells of "d" filled in that ms too: still pending
    store.on_sent(place("d", steps=4), 7_000)
    store.apply(order_update("d", 4, BUY, 298_000, 4, t=7_001))
    store.apply(account_update(12, 3000.0, t=8_000))   # "a" 7 and "b" 5
    store.on_order_info(order_info("d", 4, BUY, 298_000, 4, status="FILLED", executed_steps=4, avg_ticks=298_000,
                                   t=8_000))
    assert (store.position_steps, store.pending_buy_steps) == (12, 4)   # "d" still pending
    assert_pending_consistent(store)


def test_after_a_snapshot_late_trade_frames_are_not_counted_twice(store):
    snap = [order_info("a", 7, BUY, 300_000, 10, status="PARTIALLY_FILLED", executed_steps=3, avg_ticks=300_000, t=4_000)]
    store.reset_from_snapshot(position_info(3, 3000.0, 4_000), snap, now_ms=5_000)
    assert store.position_steps == 3 and store.pending_buy_steps == 7
    # the frame of those 3 arrives late (buffered across the resync): already in both figures
    store.apply(order_update("a", 7, BUY, 300_000, 10, status="PARTIALLY_FILLED", cum_steps=3, last_steps=3, t=4_000, trade_id=1))
    assert store.position_steps == 3 and store.pending_buy_steps == 7
    store.apply(order_update("a", 7, BUY, 300_000, 10, status="PARTIALLY_FILLED", cum_steps=5, last_steps=2, t=6_000, trade_id=2))
    assert store.position_steps == 5 and store.pending_buy_steps == 5
    assert_pending_consistent(store)


def test_mid_book_and_mark_with_stale_book_updates_ignored(store):
    store.apply(book(3000.0, t=1_000, update_id=5))
    store.apply(book(2900.0, t=1_001, update_id=4))
    assert store.mid_price() == pytest.approx(3000.0)
    store.apply(mark(3001.0, t=1_000))
    assert store.mark == 3001.0


def test_price_stddev_30m_is_relative_and_matches_the_window(store):
    rng = random.Random(3)
    prices = []
    t = 0
    for k in range(4_000):  # one sample a second: 4000 s, window keeps the last 1800 s
        p = 3000.0 + rng.gauss(0, 4.0) + 0.002 * k
        t = k * 1_000
        store.apply(book(p, t=t, update_id=k + 1))
        prices.append((t, p))
    window = [p for (tt, p) in prices if tt >= t - 30 * 60 * 1000]
    expected = statistics.pstdev(window) / statistics.fmean(window)
    assert store.price_stddev_30m() == pytest.approx(expected, rel=1e-6)
    assert store.price_window_span_ms() == 30 * 60 * 1000


def test_price_window_samples_at_most_once_a_second(store):
    for k in range(100):
        store.apply(book(3000.0 + (k % 2), t=k * 100, update_id=k + 1))
    assert store.market.window_samples == 10


def test_funding_prediction_is_an_ema_sampled_once_a_minute(store):
    store.apply(mark(3000.0, t=0, rate=0.0001))
    assert store.predicted_funding_rate() == pytest.approx(0.0001)
    store.apply(mark(3000.0, t=30_000, rate=0.0009))  # inside the minute: estimate kept, no sample
    assert store.funding_rate_estimate == 0.0009
    assert store.predicted_funding_rate() == pytest.approx(0.0001)
    store.apply(mark(3000.0, t=60_000, rate=0.0005))
    assert store.predicted_funding_rate() == pytest.approx(0.25 * 0.0005 + 0.75 * 0.0001)


def test_funding_pnl_sums_the_exchanges_fee_events_with_their_sign(store):
    store.apply(funding_fee("-0.00085067", t=1, wallet="38.17806885"))
    store.apply(funding_fee("0.0021", t=2))
    store.apply(funding_fee("0.0021", t=2))  # the same event again
    store.apply(funding_fee("5", t=3, symbol="BTCUSDT"))
    store.apply(funding_fee("7", t=4, symbol=None))  # cannot be attributed
    assert store.funding_pnl == pytest.approx(-0.00085067 + 0.0021)


def test_realized_pnl_as_booked_unrealized_at_mark_and_drawdown_from_peak(store):
    store.apply(order_update("a", 1, BUY, 300_000, 10, status="FILLED", cum_steps=10, last_steps=10, t=1, trade_id=1))
    store.apply(order_update("b", 2, SELL, 310_000, 4, status="FILLED", cum_steps=4, last_steps=4, t=2, trade_id=2, realized="0.4"))
    store.apply(order_update("b", 2, SELL, 310_000, 4, status="FILLED", cum_steps=4, last_steps=4, t=2, trade_id=2, realized="0.4"))
    assert store.position_steps == 6 and store.entry_price == pytest.approx(3000.0)
    assert store.realized_pnl == pytest.approx(0.4)  # the exchange's figure, booked once
    store.apply(mark(3100.0, t=3))
    assert store.unrealized_pnl() == pytest.approx(0.006 * 100)
    store.apply(account_update(6, 3000.0, t=4, wallet="1000"))
    assert store.equity() == pytest.approx(1000 + 0.4 + 0.6)  # capital + the symbol's own P&L
    assert store.drawdown_pct() == pytest.approx(0.0)
    store.apply(mark(2000.0, t=5))
    assert store.drawdown_pct() == pytest.approx((1001.0 - (1000 + 0.4 - 6.0)) / 1001.0 * 100)


def test_pending_never_negative_under_random_lifecycles(store):
    rng = random.Random(11)
    t = 1
    for n in range(300):
        cid = f"o{n}"
        side = rng.choice([BUY, SELL])
        steps = rng.randint(1, 20)
        store.on_sent(place(cid, side, 300_000, steps), t)
        t += 1
        oid = 1000 + n
        if rng.random() < 0.2:
            store.on_rejected(cid, -5022)
            continue
        store.apply(order_update(cid, oid, side, 300_000, steps, t=t))
        cum = 0
        for _ in range(rng.randint(0, 3)):
            t += 1
            d = rng.randint(0, steps - cum)
            if d == 0:
                continue
            cum += d
            status = "FILLED" if cum == steps else "PARTIALLY_FILLED"
            store.apply(order_update(cid, oid, side, 300_000, steps, status=status, cum_steps=cum, last_steps=d, t=t, trade_id=t))
            assert_pending_consistent(store)
        if cum < steps and rng.random() < 0.5:
            t += 1
            store.apply(order_update(cid, oid, side, 300_000, steps, status="CANCELED", cum_steps=cum, t=t))
        assert_pending_consistent(store)
    assert math.isfinite(store.realized_pnl)


# --- issue 9: drawdown of the symbol's own, funding without a symbol, exact resyncs, same-ms fills ---


def test_a_read_of_the_drawdown_before_a_confirmed_position_seeds_no_peak(store):
    store.apply(mark(3000.0, t=1))
    assert store.drawdown_pct() == 0.0 and store.equity() == pytest.approx(1000.0)  # a scrape: reads only
    assert store.peak_equity is None
    # the first figure comes with a 500 USDC wallet: the symbol's own equity has not moved
    store.reset_from_snapshot(position_info(200, 3000.0, 2), [], now_ms=3, wallet_balance=500.0)
    store.apply(mark(3000.0, t=4))
    assert store.peak_equity == pytest.approx(1000.0)
    assert store.drawdown_pct() == 0.0 and store.max_drawdown_pct == 0.0


def test_a_wallet_transfer_does_not_move_the_symbols_equity(store):
    store.apply(account_update(200, 3000.0, t=1, wallet="1000"))
    store.apply(mark(3000.0, t=2))
    from fleet.binance.events import AccountUpdate, BalanceUpdate
    from decimal import Decimal as D

    transfer = AccountUpdate(3, 3, "WITHDRAW", (BalanceUpdate("USDC", D("300"), D("300"), D("-700")),), ())
    assert store.apply(transfer) and store.wallet_balance == 300.0
    assert store.drawdown_pct() == 0.0 and store.equity() == pytest.approx(1000.0)
    store.apply(mark(2970.0, t=4))  # the symbol's own loss: 0.2 x 30 = 6 USDC
    assert store.drawdown_pct() == pytest.approx(0.6)


REAL_CROSS_FUNDING_FRAME = (
    '{"e":"ACCOUNT_UPDATE","T":1776787203246,"E":1776787203246,"a":{"B":[{"a":"USDC",'
    '"wb":"38.17806885","cw":"38.17806885","bc":"-0.00085067"}],"P":[],"m":"FUNDING_FEE"}}'
)


def income_row(amount: str, t: int, tran: int, symbol: str = SYMBOL, kind: str = "FUNDING_FEE") -> dict:
    return {"symbol": symbol, "incomeType": kind, "income": amount, "asset": "USDC", "info": kind, "time": t,
            "tranId": tran, "tradeId": ""}


def test_the_real_cross_margin_fee_frame_is_booked_from_its_income_row_once(store):
    from fleet.binance.parse import decode, parse_user

    t = 1776787203246
    store.apply(account_update(20, 3000.0, t=t - 3_600_000))
    fee = parse_user(decode(REAL_CROSS_FUNDING_FRAME))
    assert fee.symbol is None
    assert store.apply(fee)
    assert store.funding_pnl == 0.0
    assert store.funding_lookup_start() == t - 60_000  # the runtime reads income rows from here
    rows = [
        income_row("-0.00085067", t, 901),
        income_row("-0.5", t, 902, symbol="BTCUSDT"),  # another symbol's fee on the same account
        income_row("0.3", t, 903, kind="REALIZED_PNL"),
    ]
    assert store.on_funding_income(rows) == 1
    assert store.funding_pnl == pytest.approx(-0.00085067)
    assert store.funding_lookup_start() is None
    assert store.on_funding_income(rows) == 0  # the same rows again: each tranId once
    assert store.funding_pnl == pytest.approx(-0.00085067)
    assert store.on_funding_income([income_row("NaN", t + 1, 904), income_row("Infinity", t + 2, 905)]) == 0
    assert store.funding_pnl == pytest.approx(-0.00085067)   # a fee that is not a number is not booked


def test_another_symbols_symbol_less_fee_frame_is_let_go_once_a_late_enough_read_holds_no_row_of_ours(store):
    """A cross account's fee frames name no symbol: another symbol's (settling at another time) left this
    symbol's look-up due until its own next settlement, an income read of weight 30 at every beat."""
    t = 1_776_787_200_000
    store.apply(account_update(20, 3000.0, t=t - 3_600_000))
    assert store.apply(funding_fee("-0.2", t=t + 40_000, symbol=None))   # another symbol's, 40 s off ours
    assert store.funding_lookup_start() == t + 40_000 - 60_000
    theirs = [income_row("-0.2", t + 40_000, 950, symbol="BTCUSDC")]
    assert store.on_funding_income(theirs, read_at_ms=t + 45_000) == 0
    assert store.funding_lookup_start() is not None   # read too soon after to tell: asked again
    assert store.on_funding_income(theirs, read_at_ms=t + 40_000 + 61_000) == 0
    assert store.funding_lookup_start() is None


def test_a_fee_without_a_symbol_while_this_symbol_is_and_was_flat_asks_for_nothing(store):
    assert not store.apply(funding_fee("-0.1", t=100_000, symbol=None))
    assert store.funding_lookup_start() is None
    # held until 30 s before the fee: the fee may be ours (the settlement came before the close)
    store.apply(account_update(5, 3000.0, t=170_000))
    store.apply(account_update(0, 0.0, t=200_000))
    assert store.apply(funding_fee("-0.1", t=230_000, symbol=None))
    assert store.funding_lookup_start() == 170_000


def test_a_fee_booked_from_a_frame_naming_the_symbol_is_not_booked_again_from_its_income_row(store):
    store.apply(account_update(20, 3000.0, t=1))
    store.apply(funding_fee("-0.25", t=28_800_000))
    store.apply(funding_fee("-0.25", t=28_800_000))  # the frame twice
    assert store.funding_pnl == pytest.approx(-0.25)
    store.apply(funding_fee("-0.25", t=57_600_003, symbol=None))  # the next one names no symbol
    rows = [income_row("-0.25", 28_800_000, 11), income_row("-0.25", 57_600_000, 12)]
    assert store.on_funding_income(rows) == 1  # the first was booked from its frame
    assert store.funding_pnl == pytest.approx(-0.5)
    assert store.funding_lookup_start() is None
    # the other way round: the income row first, then a frame of the same fee naming the symbol
    store.on_funding_income([income_row("0.125", 86_400_000, 13)])
    assert not store.apply(funding_fee("0.125", t=86_400_001))
    assert store.funding_pnl == pytest.approx(-0.375)


def test_a_flat_snapshot_without_its_own_time_holds_every_trade_before_the_request(store):
    from fleet.binance.client import _pick_position

    store.apply(account_update(0, 0.0, t=500))
    store.apply(order_update("a", 1, BUY, 300_000, 7, status="FILLED", cum_steps=7, last_steps=7, t=1_000, trade_id=1))
    assert store.position_steps == 7
    # the position was closed by frames that were lost; v3 positionRisk omits a flat symbol
    flat = _pick_position([], SYMBOL, as_of=5_000)
    assert flat.amount == 0 and flat.update_time == 0
    store.reset_from_snapshot(flat, [], now_ms=5_300)
    assert store.position_steps == 0 and store.pending_buy_steps == 0
    # a trade after the request: its frames come after the snapshot and count on top of it
    store.apply(account_update(-3, 3000.0, t=5_100))
    store.apply(order_update("b", 2, SELL, 300_000, 3, status="FILLED", cum_steps=3, last_steps=3, t=5_100, trade_id=2))
    assert store.position_steps == -3 and store.pending_sell_steps == 0


def test_a_snapshot_older_than_the_streams_figure_leaves_the_newer_figure(store):
    # the stream stayed live while the REST call ran: a trade after the request, frames already in
    store.apply(account_update(0, 0.0, t=500))
    store.apply(account_update(4, 3000.0, t=5_100))
    store.apply(order_update("a", 1, BUY, 300_000, 4, status="FILLED", cum_steps=4, last_steps=4, t=5_100, trade_id=1))
    from fleet.binance.models import PositionInfo

    store.reset_from_snapshot(PositionInfo.flat(SYMBOL, as_of=5_000), [], now_ms=5_300)  # sent before the trade
    assert store.position_steps == 4


def test_a_snapshot_position_with_its_own_time_keeps_later_trades_on_top(store):
    store.apply(order_update("a", 1, BUY, 300_000, 10, status="PARTIALLY_FILLED", cum_steps=3, last_steps=3, t=900, trade_id=1))
    store.apply(order_update("a", 1, BUY, 300_000, 10, status="PARTIALLY_FILLED", cum_steps=5, last_steps=2, t=6_000, trade_id=2))
    snap = [order_info("a", 1, BUY, 300_000, 10, status="PARTIALLY_FILLED", executed_steps=5, avg_ticks=300_000, t=6_000)]
    pos = position_info(3, 3000.0, 900)
    from dataclasses import replace

    store.reset_from_snapshot(replace(pos, as_of=5_000), snap, now_ms=6_100)
    assert store.position_steps == 5  # 3 as of the request, the t=6000 trade after it
    assert store.pending_buy_steps == 5
    assert_pending_consistent(store)


def test_a_fill_just_after_the_read_stays_on_top_of_a_figure_however_far_ahead_our_clock_ran(store):
    # the figure's own time 900; this host's estimate of the exchange's clock ran 750 ms ahead (learned
    # through a slow way in): the request "sent at 6,000" was read at 5,250. A fill at 5,500 is after it.
    from dataclasses import replace

    store.on_sent(place("a", BUY, steps=10), 5_000)
    store.apply(order_update("a", 1, BUY, 300_000, 10, t=5_001))
    store.apply(order_update("a", 1, BUY, 300_000, 10, status="PARTIALLY_FILLED", cum_steps=4, last_steps=4,
                             t=5_500, trade_id=1))
    snap = [order_info("a", 1, BUY, 300_000, 10, status="NEW", executed_steps=0, t=5_001)]
    pos = replace(position_info(3, 3000.0, 900), as_of=6_000, read_after=5_000)
    store.reset_from_snapshot(pos, snap, now_ms=6_100)
    assert store.position_steps == 7 and store.pending_buy_steps == 6   # the 4 not lost from both
    assert_pending_consistent(store)


def test_a_flat_figure_without_its_own_time_is_as_of_its_request(store):
    from fleet.binance.models import PositionInfo

    # the stream's last figure +5 at 10,000; a fill flattened it at 10,200 and its frames were lost
    store.apply(account_update(5, 3000.0, t=10_000))
    store.reset_from_snapshot(PositionInfo.flat(SYMBOL, as_of=10_600, read_after=9_600), [], now_ms=10_650)
    assert store.position_steps == 0   # not taken for older than the stream's figure
    # a sell booked at 10,300 from its trade frame, its figure's frame malformed: the read holds it
    store.apply(account_update(5, 3000.0, t=10_700))
    store.on_sent(place("s", SELL, steps=5), 10_710)
    store.apply(order_update("s", 7, SELL, 300_000, 5, t=10_711))
    store.apply(order_update("s", 7, SELL, 300_000, 5, status="FILLED", cum_steps=5, last_steps=5, t=11_300,
                             trade_id=3))
    store.reset_from_snapshot(PositionInfo.flat(SYMBOL, as_of=11_500, read_after=10_500), [], now_ms=11_560)
    assert store.position_steps == 0   # not counted again on top of the flat figure


def sweep_frames(order: str) -> list:
    """Three bids swept in one millisecond (t=2000), from a flat position: each fill's
    ACCOUNT_UPDATE and ORDER_TRADE_UPDATE, in the given order ("account_first" as the simulator and
    Binance's observed frames; "trade_first" the other way round). Returns (frame, exchange position)."""
    frames = []
    pos = 0
    for k, steps in enumerate((5, 4, 3)):
        pos += steps
        acct = account_update(pos, 3000.0, t=2_000)
        fill = order_update(f"b{k}", 10 + k, BUY, 300_000 - k, steps, status="FILLED", cum_steps=steps, last_steps=steps,
                            t=2_000, trade_id=100 + k)
        pair = (acct, fill) if order == "account_first" else (fill, acct)
        frames += [(pair[0], pos), (pair[1], pos)]
    return frames


@pytest.mark.parametrize("order", ["account_first", "trade_first"])
def test_a_same_millisecond_sweep_is_never_understated_and_ends_exact(store, order):
    store.apply(account_update(0, 0.0, t=1_000))
    for k, steps in enumerate((5, 4, 3)):
        store.on_sent(place(f"b{k}", BUY, 300_000 - k, steps), 1_000)
        store.apply(order_update(f"b{k}", 10 + k, BUY, 300_000 - k, steps, t=1_001 + k))
    for ev, exchange in sweep_frames(order):
        store.apply(ev)
        assert store.position_steps + store.pending_buy_steps >= exchange
        assert store.position_steps <= exchange
        assert_pending_consistent(store)
    assert store.position_steps == 12
    if order == "account_first":  # each trade frame is accounted for by the figure before it
        assert store.pending_buy_steps == 0 and not store.orders
    store.apply(order_update("next", 20, SELL, 301_000, 5, t=2_001))  # any frame of a later millisecond
    assert store.position_steps == 12 and store.pending_buy_steps == 0
    assert set(store.orders) == {"next"}


def test_a_resync_in_the_middle_of_a_same_millisecond_sweep_never_goes_back(store):
    store.apply(account_update(0, 0.0, t=1_000))
    for k, steps in enumerate((5, 4, 3)):
        store.on_sent(place(f"b{k}", BUY, 300_000 - k, steps), 1_000)
        store.apply(order_update(f"b{k}", 10 + k, BUY, 300_000 - k, steps, t=1_001 + k))
    # the snapshot sees the whole sweep (its position last changed at 2000); the sweep's frames were
    # buffered and come after it
    store.reset_from_snapshot(position_info(12, 3000.0, 2_000), [], now_ms=2_100)
    assert store.position_steps == 12
    for ev, _ in sweep_frames("account_first"):
        store.apply(ev)
        assert store.position_steps + store.pending_buy_steps >= 12
    assert store.position_steps == 12 and store.pending_buy_steps == 0


# -- the simulator's own frames (its engine, rendered and parsed as on the wire) --------------------

SIM_T0 = 1_800_000_000_000


def _sim_sweep(store: Store):
    """Three bids of ours on the simulator, then a 1 % drop that fills all three in one millisecond.
    Returns the engine and the user frames of the sweep, parsed as the client parses them."""
    from fleet.binance.parse import parse_user
    from fleet.sim.config import load_sim_config
    from fleet.sim.engine import Engine

    cfg = {"symbols": [{"symbol": SYMBOL, "base_asset": "ETH", "quote_asset": "USDC", "start_price": 3000}]}
    e = Engine(load_sim_config(cfg), seed=11, now_ms=SIM_T0)
    b = e.books[SYMBOL]
    for k, qty in enumerate(("0.005", "0.004", "0.003")):
        cid = f"s{k}"
        store.on_sent(place(cid, BUY, b.best_bid() - k, int(D(qty) / D("0.001"))), SIM_T0)
        e.new_order("main", {"symbol": SYMBOL, "side": BUY, "type": "LIMIT", "timeInForce": "GTX",
                             "price": b.price_str(b.best_bid() - k), "quantity": qty, "newClientOrderId": cid}, SIM_T0)
    for kind, _, frame in e.drain_rendered():
        if kind == "u":
            store.apply(parse_user(frame))
    e.jump(SYMBOL, -1.0, SIM_T0 + 5)
    frames = [parse_user(f) for kind, _, f in e.drain_rendered() if kind == "u"]
    return e, frames


def _exchange_steps(e) -> int:
    return e.accounts["main"].positions[SYMBOL].amount


def test_the_simulators_same_millisecond_sweep_frames_keep_position_and_pending_exact(store):
    from fleet.binance.events import OrderUpdate, TradeLite

    e, frames = _sim_sweep(store)
    assert _exchange_steps(e) == 12
    held = 0  # the exchange's position as each frame leaves it: a fill's TRADE_LITE comes first
    for ev in frames:
        if isinstance(ev, TradeLite):
            held += int(ev.last_filled_qty / D("0.001"))
        store.apply(ev)
        assert store.position_steps + store.pending_buy_steps >= held
        assert store.position_steps <= held
    assert [type(ev).__name__ for ev in frames[:3]] == ["TradeLite", "AccountUpdate", "OrderUpdate"]
    assert len({ev.transaction_time for ev in frames if isinstance(ev, OrderUpdate)}) == 1
    assert store.position_steps == 12 and store.pending_buy_steps == 0 and not store.orders


def test_a_resync_across_the_simulators_same_millisecond_sweep_never_goes_back(store):
    from fleet.binance.client import _pick_position
    from fleet.binance.models import OrderInfo

    e, frames = _sim_sweep(store)  # frames buffered: the snapshot is taken after the sweep
    pos = _pick_position(e.position_risk("main", SYMBOL, 3), SYMBOL)
    assert pos.update_time == SIM_T0 + 5  # the sweep's millisecond
    store.reset_from_snapshot(pos, [OrderInfo.from_api(o) for o in e.open_orders("main", SYMBOL)], SIM_T0 + 9)
    assert store.position_steps == 12
    for ev in frames:
        store.apply(ev)
        assert store.position_steps + store.pending_buy_steps >= 12
    assert store.position_steps == 12 and store.pending_buy_steps == 0


def test_a_position_held_with_no_entry_price_is_not_read_as_an_entry_of_0(store):
    """Read as 0, a 0.2 long at 3000 was a phantom profit of 600: the drawdown's peak rose for good and
    the next true figure read as a 37.5 % drawdown (its band sold the position). The store refuses it
    (the runtime resyncs); another symbol's row so is not its concern."""
    import dataclasses

    from fleet.binance.events import PositionUpdate

    store.apply(account_update(200, 3000.0, t=100))
    blank = dataclasses.replace(account_update(200, 0.0, t=200), positions=(
        PositionUpdate(SYMBOL, D("0.2"), D(0), D(0), D(0), D(0), "cross",
                       entry_missing=True),))
    with pytest.raises(ValueError, match="no entry price"):
        store.apply(blank)
    assert store.position_book.entry_price == 3000.0
    other = dataclasses.replace(blank, positions=(dataclasses.replace(blank.positions[0], symbol="BTCUSDT"),))
    store.apply(other)


def test_a_position_figure_no_trade_frame_explains_is_flagged_until_one_does(store):
    """A figure's move within its millisecond that the trades seen do not explain flags the millisecond
    (the reconciliation then reads the trades, agents/reconciler.py); its trade frame clears it. A buy
    and a sell of one size in one millisecond net to 0: a figure explained by that net clears nothing,
    or the lost frame's P&L would be gone for good."""
    pos = store.position_book
    store.reset_from_snapshot(position_info(0, 0.0, 1000), [], 1000)
    for cid, side in (("a", BUY), ("b", SELL)):
        store.on_sent(place(cid, side), 1000)
    store.apply(order_update("a", 101, BUY, 300_000, 7, t=1001))
    store.apply(order_update("b", 102, SELL, 300_000, 7, t=1001))
    store.apply(account_update(7, 3000.0, t=2000))   # the buy's figure, before its trade frame
    assert pos.unexplained_ms == 2000
    store.apply(order_update("a", 101, BUY, 300_000, 7, status="FILLED", cum_steps=7, last_steps=7, t=2000,
                             trade_id=1))
    assert pos.unexplained_ms is None
    store.apply(account_update(0, 0.0, t=3000))      # the sell's figure; its frame lost
    assert pos.unexplained_ms == 3000
    store.apply(account_update(7, 3000.0, t=3000))   # a buy in the same millisecond, its frame lost too: net
    store.apply(account_update(0, 0.0, t=3000))      # ... and the sell's again: the net 0 clears nothing
    assert pos.unexplained_ms == 3000
    store.apply(funding_fee(-0.01, t=4000))          # a funding frame moves nothing: no new flag
    assert pos.unexplained_ms == 3000
