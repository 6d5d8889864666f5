"""OrderManager and client ids: keep within tolerance, amend the moved, place/cancel the rest, batches."""

from __future__ import annotations

import pytest

from agents.orders import (
    CLIENT_ORDER_ID_PATTERN,
    Amend,
    Cancel,
    ClientOrderIds,
    OrderManager,
    Place,
    make_batches,
    parse_client_order_id,
)
from agents.store import Store
from agents.strategy import Quote
from fleet.binance.events import BUY, SELL
from fleet.config import OrderParams

from .test_core_support import SYMBOL, eth_filters, order_update, seed_params


def test_client_order_ids_carry_epoch_and_sequence_and_match_binance_pattern():
    ids = ClientOrderIds("ETHUSDC", epoch=42)
    a, b = ids.next(), ids.next()
    assert a == "mm-ETHUSDC-e42-1" and b == "mm-ETHUSDC-e42-2"
    assert CLIENT_ORDER_ID_PATTERN.fullmatch(a)
    assert parse_client_order_id(a) == (42, 1)
    assert ids.is_ours(b) and not ClientOrderIds("ETHUSDC", 41).is_ours(b)


def test_client_order_ids_stay_within_36_characters_for_long_symbols_and_epochs():
    ids = ClientOrderIds("1000SHIBUSDCXYZ", epoch=9_999_999_999, start_seq=99_999_999)
    cid = ids.next()
    assert len(cid) <= 36 and CLIENT_ORDER_ID_PATTERN.fullmatch(cid)
    assert parse_client_order_id(cid) == (9_999_999_999, 100_000_000)


@pytest.mark.parametrize("cid", ["web_abc", "autoclose-123", "mm-ETHUSDC-ex-1", "mm-ETHUSDC-e1", "x" * 40, "",
                                 "mm-ETHUSDC-e1-1\n"])
def test_foreign_client_order_ids_do_not_parse(cid):
    assert parse_client_order_id(cid) is None


def test_bad_epoch_or_symbol_is_refused_with_a_clear_error():
    with pytest.raises(ValueError, match="epoch"):
        ClientOrderIds("ETHUSDC", -1)
    with pytest.raises(ValueError, match="symbol"):
        ClientOrderIds("eth-usdc", 1)


# --- the manager ------------------------------------------------------------------------------


def make(tolerance_ticks: int = 2, fraction: float = 0.25, size_tolerance: float = 0.2):
    store = Store(SYMBOL, eth_filters(), seed_params())
    ids = ClientOrderIds(SYMBOL, 1)
    mgr = OrderManager(OrderParams(tolerance_ticks=tolerance_ticks, tolerance_spacing_fraction=fraction, size_tolerance=size_tolerance), ids)
    return store, ids, mgr


def rest(store: Store, ids: ClientOrderIds, side: str, price_ticks: int, steps: int, oid: int) -> str:
    cid = ids.next()
    store.on_sent(Place(cid, side, price_ticks, steps), 1)
    store.apply(order_update(cid, oid, side, price_ticks, steps, t=2))
    return cid


def bids(*levels: tuple[int, int]) -> tuple[Quote, ...]:
    return tuple(Quote(BUY, i, p, q) for i, (p, q) in enumerate(levels))


def asks(*levels: tuple[int, int]) -> tuple[Quote, ...]:
    return tuple(Quote(SELL, i, p, q) for i, (p, q) in enumerate(levels))


def test_empty_book_places_every_layer():
    store, ids, mgr = make()
    d = mgr.diff(bids((29_990, 7), (29_980, 6)), asks((30_010, 7)), [], [], 30_000.0)
    assert [p.price_ticks for p in d.places] == [29_990, 29_980, 30_010]
    assert not d.amends and not d.cancels


def test_live_orders_within_tolerance_are_kept():
    store, ids, mgr = make(tolerance_ticks=2, fraction=0.0)
    rest(store, ids, BUY, 29_991, 7, 1)
    rest(store, ids, BUY, 29_978, 6, 2)
    d = mgr.diff(bids((29_990, 7), (29_980, 6)), (), store.ladder_view()[0], [], 30_000.0)
    assert d.requests == 0 and not d.cancels and d.kept == 2


def test_tolerance_is_a_fraction_of_the_layer_spacing_when_larger():
    store, ids, mgr = make(tolerance_ticks=0, fraction=0.25)
    rest(store, ids, BUY, 29_987, 7, 1)  # 3 ticks off; layer 0 sits 10 ticks from center -> tolerance 2.5
    d = mgr.diff(bids((29_990, 7)), (), store.ladder_view()[0], [], 30_000.0)
    assert len(d.amends) == 1
    rest2 = make(tolerance_ticks=0, fraction=0.25)
    store, ids, mgr = rest2
    rest(store, ids, BUY, 29_988, 7, 1)  # 2 ticks off: kept
    assert mgr.diff(bids((29_990, 7)), (), store.ladder_view()[0], [], 30_000.0).requests == 0


def test_a_moved_layer_is_amended_in_place_not_cancelled_and_replaced():
    store, ids, mgr = make(fraction=0.0)
    cid = rest(store, ids, BUY, 29_990, 7, 11)
    d = mgr.diff(bids((29_950, 7)), (), store.ladder_view()[0], [], 30_000.0)
    assert d.amends == (Amend(cid, 11, BUY, 29_950, 7, 0),)
    assert not d.places and not d.cancels


def test_a_size_change_beyond_tolerance_is_amended_with_the_filled_part_kept():
    store, ids, mgr = make(size_tolerance=0.2)
    cid = rest(store, ids, BUY, 29_990, 10, 11)
    store.apply(order_update(cid, 11, BUY, 29_990, 10, status="PARTIALLY_FILLED", cum_steps=4, last_steps=4, t=3, trade_id=1))
    d = mgr.diff(bids((29_990, 10)), (), store.ladder_view()[0], [], 30_000.0)
    # remaining 6 vs desired 10: amend to a total of 4 filled + 10 remaining
    assert d.amends == (Amend(cid, 11, BUY, 29_990, 14, 0),)


def test_extra_live_orders_are_cancelled_and_missing_layers_placed():
    store, ids, mgr = make(fraction=0.0)
    a = rest(store, ids, SELL, 30_010, 7, 1)
    b = rest(store, ids, SELL, 30_050, 5, 2)
    c = rest(store, ids, SELL, 30_090, 4, 3)
    d = mgr.diff((), asks((30_010, 7), (30_050, 5)), [], store.ladder_view()[1], 30_000.0)
    assert d.cancels == (Cancel(c, 3),)
    d2 = mgr.diff((), asks((30_010, 7), (30_050, 5), (30_090, 4), (30_130, 3)), [], store.ladder_view()[1], 30_000.0)
    assert [p.price_ticks for p in d2.places] == [30_130] and not d2.cancels
    assert {a, b, c} == {o.client_order_id for o in store.ladder_view()[1]}


def test_orders_in_flight_are_left_alone_for_a_cycle():
    store, ids, mgr = make(fraction=0.0)
    cid = ids.next()
    store.on_sent(Place(cid, BUY, 29_990, 7), 1)  # not acknowledged yet
    d = mgr.diff(bids((29_900, 7)), (), store.ladder_view()[0], [], 30_000.0)
    assert d.requests == 0 and not d.cancels


def test_when_the_budget_is_short_inner_layers_win():
    store, ids, mgr = make()
    desired_b = bids(*[(29_990 - 10 * i, 5) for i in range(6)])
    desired_a = asks(*[(30_010 + 10 * i, 5) for i in range(6)])
    d = mgr.diff(desired_b, desired_a, [], [], 30_000.0, budget=4)
    assert sorted(p.layer for p in d.places) == [0, 0, 1, 1]


def test_batches_are_binance_sized_cancels_first_then_reducing_then_adding():
    cancels = [Cancel(f"c{i}", i) for i in range(12)]
    places = [Place(f"p{i}", BUY, 100, 1, layer=i) for i in range(6)] + [Place(f"s{i}", SELL, 200, 1, layer=i) for i in range(2)]
    places.append(Place("ro", SELL, 0, 1, "", True, "MARKET", "drawdown"))
    amends = [Amend(f"a{i}", i, SELL, 201, 1, i) for i in range(3)]
    batches = make_batches(cancels, places, amends, position_steps=10)  # long: sells reduce
    kinds = [(b.kind, len(b.items)) for b in batches]
    assert kinds == [("cancel", 10), ("cancel", 2), ("place", 1), ("amend", 3), ("place", 2), ("place", 5), ("place", 1)]
    assert batches[2].items[0].client_order_id == "ro"
    assert all(len(b.items) <= (10 if b.kind == "cancel" else 5) for b in batches)


def test_a_steady_ladder_needs_no_requests_cycle_after_cycle():
    store, ids, mgr = make()
    desired = bids(*[(29_990 - 10 * i, 5) for i in range(14)])
    d = mgr.diff(desired, (), [], [], 30_000.0)
    for n, p in enumerate(d.places):
        store.on_sent(p, 1)
        store.apply(order_update(p.client_order_id, 100 + n, BUY, p.price_ticks, p.qty_steps, t=2))
    for _ in range(3):
        assert mgr.diff(desired, (), store.ladder_view()[0], [], 30_000.0).requests == 0


def test_an_order_refused_a_modify_with_5026_is_cancelled_and_replaced_never_amended_again():
    store, ids, mgr = make(fraction=0.0)
    moved = rest(store, ids, BUY, 29_990, 7, 11)
    resized = rest(store, ids, BUY, 29_980, 6, 12)
    want = bids((29_950, 7), (29_980, 20))
    first = mgr.diff(want, (), store.ladder_view()[0], [], 30_000.0)
    assert {a.client_order_id for a in first.amends} == {moved, resized}  # amended while allowed
    for a in first.amends:
        store.on_amend_sent(a, 3)
        store.on_amend_rejected(a.client_order_id, -5026, a.order_id, 4)
    assert store.orders[moved].amend_blocked and store.orders[resized].amend_blocked
    assert not store.orders[moved].busy and store.rejects == {-5026: 2}
    for _ in range(2):  # every later cycle: cancel and place, never the same amend again
        d = mgr.diff(want, (), store.ladder_view()[0], [], 30_000.0)
        assert not d.amends
        assert {c.client_order_id for c in d.cancels} == {moved, resized}
        assert [(p.price_ticks, p.qty_steps, p.layer) for p in d.places] == [(29_950, 7, 0), (29_980, 20, 1)]


def test_other_amend_refusals_do_not_block_amending():
    store, ids, mgr = make(fraction=0.0)
    cid = rest(store, ids, BUY, 29_990, 7, 11)
    a = mgr.diff(bids((29_950, 7)), (), store.ladder_view()[0], [], 30_000.0).amends[0]
    store.on_amend_sent(a, 3)
    store.on_amend_rejected(cid, -5028, 11, 4)  # a transient refusal
    assert not store.orders[cid].amend_blocked
    assert mgr.diff(bids((29_950, 7)), (), store.ladder_view()[0], [], 30_000.0).amends == (a,)
