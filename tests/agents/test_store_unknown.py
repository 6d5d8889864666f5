"""Ambiguous answers: an order that may exist keeps counting until the exchange settles it.

Binance answers a write with "execution status unknown" (5xx, -1000, -1006, -1007, a timeout) and
may execute it later, within its recvWindow. The store keeps such orders counted, decides only on a
look-up past that window, and lets any later exchange frame reopen what it closed on inference.
"""

from __future__ import annotations

from agents.orders import Amend, Cancel, Place
from agents.reconcile import ReconcilePlan, reconcile_orders
from agents.sender import amend_answer
from agents.store import MISSING, PENDING_NEW, REJECTED, Store
from fleet.binance.client import _batch_results
from fleet.binance.errors import OutcomeUnknownError
from fleet.binance.events import BUY, SELL

from .test_core_support import SYMBOL, eth_filters, order_info, order_update, position_info, seed_params

WINDOW = 6_000


def make_store() -> Store:
    return Store(SYMBOL, eth_filters(), seed_params())


def place(cid: str, side: str = BUY, px: int = 300_000, steps: int = 7) -> Place:
    return Place(cid, side, px, steps, "GTX", False, "LIMIT", "ladder", 0)


def consistent(s: Store) -> None:
    assert (s.pending_buy_steps, s.pending_sell_steps) == s.recompute_pending()


def test_an_unknown_place_stays_pending_until_a_lookup_past_the_window():
    s = make_store()
    s.on_sent(place("a"), 1_000)
    s.on_outcome_unknown("a", 1_010)
    assert s.pending_buy_steps == 7
    assert s.due_lookups(1_010 + WINDOW - 1, WINDOW) == []
    # a look-up inside the window that finds nothing proves nothing: the request may still land
    assert s.on_lookup("a", None, 3_000, WINDOW) == "pending"
    assert s.orders["a"].status == PENDING_NEW and s.pending_buy_steps == 7
    assert [o.client_order_id for o in s.due_lookups(1_010 + WINDOW, WINDOW)] == ["a"]
    assert s.on_lookup("a", None, 1_010 + WINDOW, WINDOW) == "never_placed"
    assert "a" not in s.orders and s.pending_buy_steps == 0
    consistent(s)


def test_a_late_new_frame_reopens_an_order_closed_on_inference():
    s = make_store()
    s.on_sent(place("a"), 1_000)
    s.on_outcome_unknown("a", 1_000)
    s.on_lookup("a", None, 1_000 + WINDOW, WINDOW)
    assert s.get("a").status == REJECTED
    # ... and yet it executed: its frame is the exchange's truth
    assert s.apply(order_update("a", 77, BUY, 300_000, 7, t=8_000))
    assert s.orders["a"].status == "NEW" and s.orders["a"].order_id == 77
    assert s.pending_buy_steps == 7
    consistent(s)


def test_a_definite_rejection_is_not_reopened_by_an_older_frame():
    s = make_store()
    s.on_sent(place("a"), 1_000)
    s.apply(order_update("a", 77, BUY, 300_000, 7, t=1_001))
    s.apply(order_update("a", 77, BUY, 300_000, 7, status="CANCELED", t=1_005))
    assert not s.apply(order_update("a", 77, BUY, 300_000, 7, t=1_002))
    assert "a" not in s.orders


def test_a_new_order_read_as_refused_that_the_exchange_took_counts_again_on_its_frame_or_listing():
    """A 5xx read as a definite failure (-1001), the batch executed all the same: the order's NEW frame, or
    the listing that shows it, is the exchange's truth, and the order counts again (it stayed uncounted,
    resting at the exchange beside the ladder placed in its stead)."""
    s = make_store()
    s.on_sent(place("framed"), 1_000)
    s.on_sent(place("listed", steps=4), 1_000)
    s.on_rejected("framed", -1001, 1_010)
    s.on_rejected("listed", -1001, 1_010)
    assert s.pending_buy_steps == 0
    assert s.apply(order_update("framed", 77, BUY, 300_000, 7, t=1_005))
    assert s.orders["framed"].status == "NEW" and s.pending_buy_steps == 7
    assert s.adopt(order_info("listed", 78, BUY, 300_000, 4, t=1_006))
    assert s.orders["listed"].status == "NEW" and s.pending_buy_steps == 11
    consistent(s)


def test_a_place_refused_minus_1021_goes_again_only_while_its_orders_still_count_and_moves_their_window():
    """The client resends a write refused -1021 (held on its way past its recvWindow, or our clock behind)
    with a new timestamp: the exchange may take it until that one's window closes. Orders closed here
    meanwhile (a resync's listing after their first window, the ladder placed again since) must not go again:
    landing, they would rest beside their replacements, uncounted (1.9x the cap at the exchange)."""
    s = make_store()
    s.on_sent(place("a"), 1_000)
    s.on_sent(place("b", steps=4), 1_000)
    assert s.on_resigned(["a", "b"], 10_000) is None
    assert s.orders["a"].sent_ms == s.orders["b"].sent_ms == 10_000 and s.pending_buy_steps == 11
    s.reset_from_snapshot(position_info(0, 0.0, 16_500), [], now_ms=17_000, in_flight_grace_ms=6_000,
                          listed_at_ms=16_500)
    assert s.get("a").status == MISSING and s.pending_buy_steps == 0
    why = s.on_resigned(["a"], 17_000)
    assert why is not None and "closed here" in why and s.pending_buy_steps == 0
    consistent(s)


def amend_in_flight() -> Store:
    """Order "a" (id 77, 5 steps at 300,000) with an amendment to 9 at 300,010 sent at 2,000."""
    s = make_store()
    s.on_sent(place("a", steps=5), 1_000)
    s.apply(order_update("a", 77, BUY, 300_000, 5, t=1_001))
    s.on_amend_sent(Amend("a", 77, BUY, 300_010, 9, 0), 2_000)
    return s


def test_an_amend_refused_minus_1021_goes_again_only_while_it_still_counts_and_moves_its_window():
    s = amend_in_flight()
    assert s.on_amend_resigned([(77, None)], 9_000) is None and s.orders["a"].amend_sent_ms == 9_000
    s.on_amend_rejected("a", -2011, 77, 9_500)   # the amendment no longer counts (here: refused)
    assert s.on_amend_resigned([(77, None)], 10_000) is not None
    assert s.on_amend_resigned([(None, "nosuch")], 10_000) is not None and s.pending_buy_steps == 5
    consistent(s)


def test_an_order_a_listing_reopens_is_found_by_its_id_and_one_never_sent_is_not_reopened_by_a_frame():
    """A listing that closed an order on inference and a later one that shows it again: found by its order id
    again (an amendment's resend names only that, and was refused as of a closed order). An order refused
    here and never sent is not the exchange's: a frame under its client id does not make it ours."""
    s = make_store()
    s.on_sent(place("a"), 1_000)
    s.apply(order_update("a", 77, BUY, 300_000, 7, t=1_001))
    s.reset_from_snapshot(position_info(0, 0.0, 9_000), [], now_ms=9_500, listed_at_ms=9_000)
    assert s.get("a").status == MISSING
    s.reset_from_snapshot(position_info(0, 0.0, 10_000), [order_info("a", 77, BUY, 300_000, 7, t=1_001)],
                          now_ms=10_500, listed_at_ms=10_000)
    assert s.ledger.find("", 77) is s.orders["a"]
    s.on_amend_sent(Amend("a", 77, BUY, 300_010, 9, 0), 11_000)
    assert s.on_amend_resigned([(77, None)], 12_000) is None
    s.on_sent(place("withheld"), 13_000)
    s.on_not_sent(place("withheld"))
    assert not s.apply(order_update("withheld", 99, BUY, 300_000, 7, t=13_001))
    assert "withheld" not in s.orders
    consistent(s)


def test_an_unknown_amend_keeps_the_larger_size_until_settled():
    s = amend_in_flight()
    s.on_outcome_unknown("a", 2_001)
    assert s.pending_buy_steps == 9
    # inside the window the exchange still shows the old order: the amendment may yet land
    s.on_lookup("a", order_info("a", 77, BUY, 300_000, 5, t=1_001), 3_000, WINDOW)
    assert s.pending_buy_steps == 9
    # past it, it did not take: back to the order as the exchange shows it
    s.on_lookup("a", order_info("a", 77, BUY, 300_000, 5, t=1_001), 2_001 + WINDOW, WINDOW)
    assert s.pending_buy_steps == 5 and s.orders["a"].unknown_ms is None
    consistent(s)


def test_a_lookup_of_an_old_order_keeps_its_amendment_in_flight_counted():
    """The reconciler looks an order up (the listing lacked it) while an upsize of it is in flight:
    the order is old, the amendment is not, and it may still land within its own window."""
    s = make_store()
    s.on_sent(place("a", steps=5), 1_000)
    s.apply(order_update("a", 77, BUY, 300_000, 5, t=1_001))
    s.on_amend_sent(Amend("a", 77, BUY, 300_010, 9, 0), 20_000)
    s.on_lookup("a", order_info("a", 77, BUY, 300_000, 5, t=1_001), 20_100, WINDOW)
    assert s.pending_buy_steps == 9 and s.orders["a"].amend_orig_steps is not None
    s.on_lookup("a", order_info("a", 77, BUY, 300_000, 5, t=1_001), 20_000 + WINDOW, WINDOW)
    assert s.pending_buy_steps == 5   # past the amendment's window: it did not take
    consistent(s)


def test_an_unknown_cancel_keeps_the_order_counted_and_is_forgotten_if_it_did_not_take():
    s = make_store()
    s.on_sent(place("a", SELL, steps=4), 1_000)
    s.apply(order_update("a", 77, SELL, 300_000, 4, t=1_001))
    s.on_cancel_sent(Cancel("a", 77, "ladder"), 2_000)
    s.on_outcome_unknown("a", 2_000)
    assert s.pending_sell_steps == 4
    s.on_lookup("a", order_info("a", 77, SELL, 300_000, 4, t=1_001), 2_000 + WINDOW, WINDOW)
    o = s.orders["a"]
    assert o.cancel_sent_ms is None and not o.busy and s.pending_sell_steps == 4


def test_a_snapshot_keeps_unknown_and_recent_orders_and_its_closures_are_reopenable():
    s = make_store()
    s.on_sent(place("old"), 1_000)
    s.on_sent(place("unk", px=299_000), 1_000)
    s.on_outcome_unknown("unk", 1_000)
    s.on_sent(place("new", px=298_000), 9_000)
    s.reset_from_snapshot(position_info(0, 0.0, 9_500), [], 10_000)
    assert s.get("old").status == "MISSING" and "old" not in s.orders
    assert {"unk", "new"} <= set(s.orders)
    # the old one was only missing from a listing: a frame brings it back
    s.apply(order_update("old", 5, BUY, 300_000, 7, t=10_100))
    assert "old" in s.orders and s.pending_buy_steps == 21
    consistent(s)


def test_reconciliation_adopts_only_what_the_store_does_not_count():
    s = make_store()
    s.on_sent(place("a"), 1_000)
    s.apply(order_update("a", 77, BUY, 300_000, 7, t=1_001))
    assert s.adopt(order_info("a", 77, BUY, 300_000, 7, t=1_001)) is False  # tracked
    assert s.adopt(order_info("x", 78, SELL, 301_000, 3, t=1_002)) is True  # unknown: counted now
    assert s.pending_sell_steps == 3
    s.apply(order_update("a", 77, BUY, 300_000, 7, status="CANCELED", t=1_100))
    assert s.adopt(order_info("a", 77, BUY, 300_000, 7, t=1_001)) is False  # the listing is older
    consistent(s)


def test_the_reconciliation_plans_one_cancel_per_order_until_it_is_answered():
    """An earlier epoch's order and an order of this epoch the agent has no record of placing are
    cancelled; once a cancel of one is out (sent, or answered ambiguously: it goes again by itself),
    the next round does not send another."""
    s = make_store()
    old, stray = f"mm-{SYMBOL}-e1-4", f"mm-{SYMBOL}-e2-99"
    listed = [order_info(old, 11, BUY, 299_000, 5, t=900), order_info(stray, 12, SELL, 301_000, 3, t=950)]

    def plan() -> ReconcilePlan:
        return reconcile_orders(s, listed, epoch=2, listed_at_ms=1_000, quoting=True, may_cancel=True)

    first = plan()
    assert first.old_epoch == (old,) and first.adopted == (stray,)
    assert first.cancel == ((old, 11), (stray, 12))
    assert plan().cancel == first.cancel   # nothing sent yet: planned again
    s.on_cancel_sent(Cancel(old, 11), 1_100)
    s.on_cancel_sent(Cancel(stray, 12), 1_100)
    assert plan().cancel == ()   # both under way
    s.on_outcome_unknown(old, 1_200, True)   # ambiguous: the store sends it again when due
    assert s.get(old).cancel_doubt
    assert plan().cancel == ()
    assert reconcile_orders(s, listed, epoch=2, listed_at_ms=1_000, quoting=True, may_cancel=False).cancel == ()
    consistent(s)


def test_minus_5027_is_the_exchange_saying_the_order_has_the_amendments_values():
    """An amendment the exchange applied while the store kept the old view (its answer read as refused,
    its frame lost): the ladder sends it again and Binance answers -5027 "No need to modify the order".
    That is the exchange's word on the order's price and quantity: taken, the order counts 9, not 5."""
    s = amend_in_flight()
    s.on_amend_rejected("a", -2021, 77, 2_050)   # a refusal: the order stays as it was
    assert s.pending_buy_steps == 5
    s.on_amend_sent(Amend("a", 77, BUY, 300_010, 9, 0), 2_300)
    s.on_amend_rejected("a", -5027, 77, 2_310)
    o = s.orders["a"]
    assert (o.orig_steps, o.price_ticks, s.pending_buy_steps) == (9, 300_010, 9)
    assert not o.busy
    consistent(s)


def test_an_unknown_amendment_and_a_fill_of_its_millisecond_are_settled_by_its_frame_in_either_order():
    """A fill at the old price and the amendment in one millisecond share a key (time, filled, stage). While
    the amendment's outcome is unknown (the sender reads any 5xx so, -1001 too), its AMENDMENT frame after
    the fill's still answers it, whether the answer came before the fill's frame or after it: the order
    counts the 8 the exchange has left."""
    fill = order_update("a", 77, BUY, 300_000, 5, status="PARTIALLY_FILLED", cum_steps=1, last_steps=1,
                        fill_ticks=300_000, t=2_001, trade_id=5)
    amended = order_update("a", 77, BUY, 300_010, 9, status="PARTIALLY_FILLED", exec_type="AMENDMENT",
                           cum_steps=1, t=2_001)
    for answer_first in (True, False):
        s = amend_in_flight()
        if answer_first:
            s.on_outcome_unknown("a", 2_050)
        s.apply(fill)
        if not answer_first:
            s.on_outcome_unknown("a", 2_050)
        assert s.pending_buy_steps == 8   # the larger of old and new, less the fill
        assert s.apply(amended)
        o = s.orders["a"]
        assert (o.orig_steps, o.price_ticks, o.filled_steps, s.pending_buy_steps) == (9, 300_010, 1, 8)
        assert o.amend_orig_steps is None   # answered (the look-up past the window still settles the doubt)
        consistent(s)


def test_a_batch_amendments_entry_answered_minus_1001_is_of_unknown_outcome():
    """A batch call answered 200 carries each refusal as its entry's code alone: -1001 there (a 5xx for a
    whole call) was read as refused, and an amendment the exchange applied all the same beside a fill of its
    millisecond counted 4 where the exchange held 8. It is of unknown outcome, settled by its frame (above)."""
    internal = {"code": -1001, "msg": "Internal error; unable to process your request. Please try again."}
    throttled = {"code": -1008, "msg": "Request throttled by system-level protection."}
    answers = _batch_results([internal, throttled, {"code": -4016, "msg": "Limit price can't be higher."}], 3)
    assert [type(amend_answer(a)) is OutcomeUnknownError for a in answers] == [True, True, False]


def test_fills_an_answer_tells_of_are_owed_until_their_own_trade_frames_come():
    """A bid and an ask each filled 3 of 7, their trade and position frames lost on a live connection:
    still listed, neither is looked up, and the amendments' answers tell of the fills. The position nets
    to 0 (the check agrees), so only these answers say the P&L misses two trades: owed until their frames
    come, due to be read from the exchange's list a while later (``Reconciler._unexplained_moves``). A
    later fill's frame (cumulative 5) brings its own 2, not the 3 lost."""
    s = make_store()
    for cid, oid, side in (("b", 71, BUY), ("a", 72, SELL)):
        s.on_sent(place(cid, side=side), 1_000)
        s.apply(order_update(cid, oid, side, 300_000, 7, t=1_001))
    s.on_order_info(order_info("b", 71, BUY, 300_010, 7, status="PARTIALLY_FILLED", executed_steps=3, t=5_000))
    s.on_order_info(order_info("a", 72, SELL, 300_010, 7, status="PARTIALLY_FILLED", executed_steps=3, t=5_010))
    pos = s.position_book
    assert pos.unframed == {"b": (3, 5_000), "a": (3, 5_010)}
    assert pos.unframed_due(6_000, 2_000) is None   # a while for frames on their way
    # the bid's trade frame comes late: its fills are framed
    s.apply(order_update("b", 71, BUY, 300_000, 7, status="PARTIALLY_FILLED", cum_steps=3, last_steps=3,
                         fill_ticks=300_000, t=4_990, trade_id=9))
    # the ask fills 2 more, framed: cumulative 5, but the first 3 never came
    s.apply(order_update("a", 72, SELL, 300_010, 7, status="PARTIALLY_FILLED", cum_steps=5, last_steps=2,
                         fill_ticks=300_010, t=5_500, trade_id=11))
    assert set(pos.unframed) == {"a"}
    assert pos.unframed_due(7_010, 2_000) == 5_010 and not pos.unframed
