"""Another hand's conditional orders (the Algo Service, ``ALGO_UPDATE``): counted in the worst case
until the order they send reaches the book, and then as that order (``agents/algos.py``)."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from agents.store import Store
from fleet.binance.events import BUY, SELL, AlgoUpdate
from fleet.binance.models import AlgoOrderInfo
from fleet.binance.parse import FrameError, parse_user

from .test_core import started
from .test_core_support import SYMBOL, account_update, eth_filters, order_update, position_info, seed_params


@pytest.fixture
def store() -> Store:
    return Store(SYMBOL, eth_filters(), seed_params())


def algo(aid: int, status: str, t: int, *, side: str = BUY, qty: str = "0.050", ai: int | None = None,
         close: bool = False, reduce: bool = False, symbol: str = SYMBOL) -> AlgoUpdate:
    return AlgoUpdate(t, t, symbol, aid, f"desk-stop-{aid}", side, "STOP_MARKET", D(qty), status, reduce, close, ai)


def listed(aid: int, t: int, *, side: str = BUY, qty: str = "0.050", status: str = "NEW") -> AlgoOrderInfo:
    return AlgoOrderInfo(SYMBOL, aid, f"desk-stop-{aid}", side, "STOP_MARKET", D(qty), status, False, False, t)


def consistent(s: Store) -> None:
    assert (s.pending_buy_steps, s.pending_sell_steps) == s.recompute_pending()


def test_a_waiting_conditional_order_counts_on_its_side_until_it_ends(store):
    assert store.apply(algo(1, "NEW", 10))
    assert store.apply(algo(2, "NEW", 11, side=SELL, qty="0.020", reduce=True))   # reduce-only: counted too
    assert (store.pending_buy_steps, store.pending_sell_steps) == (50, 20)
    assert store.worst_long_steps == 50 and store.worst_short_steps == -20
    consistent(store)
    assert store.apply(algo(1, "CANCELED", 12))
    assert store.apply(algo(2, "EXPIRED", 13, side=SELL, qty="0.020"))
    assert (store.pending_buy_steps, store.pending_sell_steps) == (0, 0)
    assert not store.apply(algo(1, "NEW", 9))   # a late frame of an ended one counts it no more
    assert store.pending_buy_steps == 0
    consistent(store)


def test_a_close_position_order_adds_nothing_and_a_frame_of_another_symbol_is_skipped(store):
    store.apply(algo(1, "NEW", 10, qty="0", close=True))
    assert 1 in store.ledger.algos.open and store.pending_buy_steps == 0
    assert not store.apply(algo(2, "NEW", 10, symbol="BTCUSDT"))
    assert store.pending_buy_steps == 0 and store.foreign_events == 1


def test_a_triggered_order_counts_until_the_ledger_hears_of_the_order_it_sent(store):
    store.apply(algo(1, "NEW", 10))
    store.apply(algo(1, "TRIGGERING", 20))
    assert store.pending_buy_steps == 50
    store.apply(algo(1, "TRIGGERED", 21, ai=7001))   # its order's frame has not come yet
    assert store.pending_buy_steps == 50
    store.apply(order_update("desk-stop-1", 7001, BUY, 0, 50, t=21, order_type="MARKET"))
    assert store.pending_buy_steps == 50   # now as the book's order (its fill not yet booked)
    assert not store.ledger.algos.open
    consistent(store)
    store.apply(order_update("desk-stop-1", 7001, BUY, 0, 50, status="FILLED", cum_steps=50, last_steps=50, t=22,
                             order_type="MARKET", trade_id=1))
    assert store.pending_buy_steps == 0 and store.position_steps == 50
    assert not store.apply(algo(1, "FINISHED", 23, ai=7001))
    consistent(store)


def test_a_triggered_frame_after_its_orders_frame_ends_the_count_at_once(store):
    store.apply(algo(1, "NEW", 10, qty="0.030"))
    store.apply(order_update("desk-stop-1", 7001, BUY, 290_000, 30, t=21))   # the LIMIT it sent rests
    assert store.pending_buy_steps == 60   # both, for a moment: never fewer
    store.apply(algo(1, "TRIGGERED", 21, ai=7001))
    assert store.pending_buy_steps == 30
    consistent(store)


def test_a_listing_replaces_what_frames_said_but_not_a_word_near_or_after_it(store):
    """The listing asked at 5,000 (this host's estimate of the exchange's clock: 1 s of doubt) is the
    truth for what it lacks from before 4,000; an algo order heard of since then is kept, and so is a
    triggered one whose book order the ledger has not heard of. One the listing dropped is counted
    again by a later frame (never remembered as ended)."""
    store.apply(algo(1, "NEW", 1_000))                 # gone by the listing: its CANCELED frame lost
    store.apply(algo(3, "NEW", 4_500, side=SELL))      # placed just before the listing, by this host's clock
    store.apply(algo(5, "NEW", 5_100, qty="0.002"))    # placed after the listing was asked for
    store.apply(algo(6, "TRIGGERED", 3_000, qty="0.007", ai=9_006))   # its order not heard of yet
    store.reset_from_snapshot(position_info(0, 0.0, 5_000), [], 5_200, listed_at_ms=5_000,
                              algo_orders=[listed(2, 900, qty="0.011"), listed(4, 800, status="TRIGGERED")])
    assert set(store.ledger.algos.open) == {2, 3, 5, 6}
    assert (store.pending_buy_steps, store.pending_sell_steps) == (11 + 2 + 7, 50)
    consistent(store)
    assert store.apply(algo(1, "TRIGGERING", 5_300))   # the listing missed it (a clock further off): counted again
    assert store.pending_buy_steps == 11 + 2 + 7 + 50
    consistent(store)


def test_a_finished_order_counts_until_its_book_order_is_heard_of_or_a_later_figure_holds_it(store):
    """FINISHED may come before the frames of the order it sent: it counts on until the ledger hears of
    that order, or until a position figure later than its end (which holds its fills)."""
    store.apply(algo(1, "NEW", 1_000))
    store.apply(algo(1, "TRIGGERED", 2_000, ai=7_001))
    store.apply(algo(1, "FINISHED", 2_001, ai=7_001))
    assert store.pending_buy_steps == 50
    store.apply(account_update(0, 0.0, t=2_001))   # a figure of its end's own millisecond: not yet
    assert store.pending_buy_steps == 50
    store.apply(account_update(50, 3000.0, t=2_002))
    assert (store.position_steps, store.pending_buy_steps) == (50, 0)
    consistent(store)


def test_a_quantity_off_the_step_grid_is_rounded_up(store):
    store.apply(algo(1, "NEW", 10, qty="0.0101"))
    assert store.pending_buy_steps == 11


def test_the_core_makes_room_for_another_hands_conditional_order():
    """The worst case the guard checks holds the conditional order: bids resting when it comes are
    cancelled and new ones are left out, so that position + bids + the stop's quantity stays within the
    cap at the exchange; the asks quote on."""
    core, ex = started()
    ex.send(core.quote(2_000))
    cap = core.guard.cap_steps
    assert ex.exchange_worst_long() > 20
    stop = cap - 20
    core.on_event(algo(1, "NEW", 2_100, qty=str(D(stop) * core.filters.step_size)), 2_100)
    for t in (2_400, 2_700, 3_000):
        ex.send(core.quote(t), t)
        assert ex.exchange_worst_long() + stop <= cap
    assert any(o[1] == SELL for o in ex.book.values())
    core.on_event(algo(1, "CANCELED", 3_100, qty=str(D(stop) * core.filters.step_size)), 3_100)
    ex.send(core.quote(3_400), 3_400)
    assert ex.exchange_worst_long() > 20   # the bids come back once it is gone


def test_algo_update_frames_parse_and_a_malformed_one_is_a_frame_error():
    frame = {"e": "ALGO_UPDATE", "T": 5, "E": 6, "o": {
        "caid": "desk-1", "aid": 77, "at": "CONDITIONAL", "o": "STOP_MARKET", "s": SYMBOL, "S": "SELL", "ps": "BOTH",
        "f": "GTC", "q": "0.020", "X": "TRIGGERED", "ai": "9001", "tp": "2900", "p": "0", "cp": False, "R": "true"}}
    ev = parse_user(frame)
    assert isinstance(ev, AlgoUpdate)
    assert (ev.algo_id, ev.side, ev.quantity, ev.status, ev.order_id, ev.reduce_only, ev.close_position) == (
        77, SELL, D("0.020"), "TRIGGERED", 9001, True, False)
    frame["o"]["q"] = "-1"
    with pytest.raises(FrameError):
        parse_user(frame)
    del frame["o"]["aid"]
    with pytest.raises(FrameError):
        parse_user(frame)
