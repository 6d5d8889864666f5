"""GeometricV2: the seed's grid prices, size decay with worst-case, funding shift, cap stop, rounding."""

from __future__ import annotations

import math
from dataclasses import replace
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

import pytest

from agents.strategy import GeometricV2
from fleet.binance.events import BUY, SELL

from .test_core_support import eth_filters, seed_params


def test_layer_prices_follow_the_geometric_grid_bids_down_asks_up():
    strat = GeometricV2(seed_params(), eth_filters())
    lad = strat.quote(3000.0, 0)
    assert [q.layer for q in lad.bids] == list(range(len(lad.bids)))
    for q in lad.bids:
        exact = Decimal(3000) * (1 - Decimal("0.00065") * Decimal("1.35") ** q.layer) / Decimal("0.01")
        assert q.price_ticks == int(exact.to_integral_value(rounding=ROUND_FLOOR))
    for q in lad.asks:
        exact = Decimal(3000) * (1 + Decimal("0.00065") * Decimal("1.35") ** q.layer) / Decimal("0.01")
        assert q.price_ticks == int(exact.to_integral_value(rounding=ROUND_CEILING))
    assert lad.bids[0].price_ticks == 299_805  # 3000 * (1 - 0.00065) = 2998.05
    assert lad.asks[0].price_ticks == 300_195


def test_sizes_decay_with_layer_and_with_worst_case_exposure_including_proposed_layers():
    strat = GeometricV2(seed_params(), eth_filters())
    lad = strat.quote(3000.0, 0)
    worst = 0.0
    for q in lad.bids:
        expected = math.floor(0.007 * math.exp(-abs(worst) / 0.20 * 3.8) * 0.92**q.layer / 0.001 + 1e-9)
        assert q.qty_steps == expected
        worst += q.qty_steps * 0.001
    assert lad.bids[0].qty_steps == 7
    assert lad.worst_long_steps == sum(q.qty_steps for q in lad.bids)


def fine_filters(min_notional: str = "0.1"):
    return replace(eth_filters(min_notional), step_size=Decimal("0.0001"), min_qty=Decimal("0.0001"))


def test_position_shrinks_the_adding_side_and_grows_the_reducing_side():
    strat = GeometricV2(seed_params(), fine_filters())
    lad = strat.quote(3000.0, 1000)  # long 0.1 (steps of 0.0001)
    assert lad.decay_factor == pytest.approx(math.exp(-0.1 / 0.2 * 3.8))
    worst = 0.1
    for q in lad.bids:
        assert q.qty_steps == math.floor(0.007 * math.exp(-worst / 0.2 * 3.8) * 0.92**q.layer / 0.0001 + 1e-7)
        worst += q.qty_steps * 0.0001
    # Asks: worst_short starts at +0.1 and falls as asks are proposed; while it is not short, the
    # asks reduce the position and are not decayed; past zero they decay by the short they add.
    worst = 0.1
    for q in lad.asks:
        short = max(-worst, 0.0)
        assert q.qty_steps == math.floor(0.007 * math.exp(-short / 0.2 * 3.8) * 0.92**q.layer / 0.0001 + 1e-7)
        worst -= q.qty_steps * 0.0001
    assert sum(q.qty_steps for q in lad.asks) > sum(q.qty_steps for q in lad.bids)


def test_near_the_cap_the_reducing_side_still_quotes_full_size():
    # Long 0.15 ETH (step 0.001): the seed's |worst| decay would shrink every ask below one step.
    strat = GeometricV2(seed_params(), eth_filters())
    lad = strat.quote(3000.0, 150)
    assert lad.asks, "the side that reduces the position must keep quoting"
    assert lad.asks[0].qty_steps == 7  # base_size 0.007, undecayed
    assert sum(q.qty_steps for q in lad.bids) <= 230 - 150  # the adding side stays under the cap
    short = strat.quote(3000.0, -150)
    assert short.bids and short.bids[0].qty_steps == 7


def test_positive_funding_rate_leans_the_book_short():
    strat = GeometricV2(seed_params(), eth_filters())
    flat = strat.quote(3000.0, 0, predicted_funding_rate=0.0)
    paying = strat.quote(3000.0, 0, predicted_funding_rate=0.0005)
    assert paying.center == pytest.approx(3000.0 * (1 - 2.2 * 0.0005))
    assert paying.bids[0].price_ticks < flat.bids[0].price_ticks
    assert paying.asks[0].price_ticks < flat.asks[0].price_ticks


def test_a_side_stops_at_net_max_times_multiplier():
    strat = GeometricV2(seed_params(worst_case={"size_decay_k": 0.0}), eth_filters())
    lad = strat.quote(3000.0, 200)  # long 0.20; the cap is 0.23
    assert sum(q.qty_steps for q in lad.bids) == 30
    assert lad.worst_long_steps == 230
    assert lad.buy_suppressed and lad.suppressed
    assert not lad.sell_suppressed
    at_cap = strat.quote(3000.0, 230)
    assert at_cap.bids == () and at_cap.buy_suppressed


def test_other_pending_orders_count_toward_the_cap():
    strat = GeometricV2(seed_params(worst_case={"size_decay_k": 0.0}), eth_filters())
    lad = strat.quote(3000.0, 0, other_buy_steps=225)
    assert sum(q.qty_steps for q in lad.bids) == 5 and lad.buy_suppressed


def test_layers_below_min_notional_are_dropped_never_bumped():
    strat = GeometricV2(seed_params(), eth_filters(min_notional="20"))
    lad = strat.quote(3000.0, 0)
    assert [q.qty_steps for q in lad.bids] == [7]  # 0.007 * 2998 = 20.99; 0.006 * 2997 < 20
    assert all(q.price_ticks * q.qty_steps * 0.01 * 0.001 >= 20 for q in lad.bids + lad.asks)


def test_quotes_never_cross_the_book_and_stay_strictly_ordered():
    strat = GeometricV2(seed_params(), eth_filters())
    lad = strat.quote(3000.0, 0, predicted_funding_rate=-0.01, best_bid=2999.99, best_ask=3000.01)
    assert lad.bids[0].price_ticks <= 300_000
    prices = [q.price_ticks for q in lad.bids]
    assert prices == sorted(prices, reverse=True) and len(set(prices)) == len(prices)
    prices = [q.price_ticks for q in lad.asks]
    assert prices == sorted(prices) and len(set(prices)) == len(prices)
    assert lad.asks[0].price_ticks >= 300_000


def test_reduce_only_limits_hold_a_side_to_its_allowance():
    strat = GeometricV2(seed_params(), eth_filters())
    lad = strat.quote(3000.0, 50, buy_limit_steps=0, sell_limit_steps=12)
    assert lad.bids == () and lad.buy_suppressed
    assert sum(q.qty_steps for q in lad.asks) <= 12


def test_28_layers_with_the_earlier_rounds_spacing_on_a_fine_step():
    strat = GeometricV2(seed_params(grid={"max_layers": 28, "spacing_ratio": 1.185}), fine_filters())
    lad = strat.quote(3000.0, 0)
    assert len(lad.bids) == 28 and len(lad.asks) == 28
    assert all(q.side == BUY for q in lad.bids) and all(q.side == SELL for q in lad.asks)


def test_no_mid_no_quotes():
    strat = GeometricV2(seed_params(), eth_filters())
    lad = strat.quote(0.0, 0)
    assert lad.bids == () and lad.asks == ()


def test_a_layer_above_lot_sizes_largest_order_is_cut_to_it():
    """LOT_SIZE's maxQty under the ladder's sizes (the exchange lowered it): each layer is cut to the
    largest order the exchange takes (one above it was refused -4005 at every quote), never dropped;
    the filters' own check refuses a size above it."""
    filters = replace(eth_filters(), max_qty=Decimal("0.005"))
    lad = GeometricV2(seed_params(), filters).quote(3000.0, 0)
    full = GeometricV2(seed_params(), eth_filters()).quote(3000.0, 0)
    assert full.bids[0].qty_steps == 7 and lad.bids[0].qty_steps == 5 and lad.asks[0].qty_steps == 5
    assert all(q.qty_steps <= 5 for q in lad.bids + lad.asks) and len(lad.bids) >= len(full.bids)
    assert lad.worst_long_steps == sum(q.qty_steps for q in lad.bids)   # the cut sizes are what is counted
    assert filters.max_qty_steps() == 5
    assert filters.tradable(300_000, 5) and not filters.tradable(300_000, 6)
