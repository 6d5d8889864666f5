"""Symbol filters: exchangeInfo parsing and exact ticks/steps <-> wire strings (hypothesis)."""

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet.binance.filters import FilterError, SymbolFilters

LIVE_BTCUSDT = {
    "symbol": "BTCUSDT", "pair": "BTCUSDT", "contractType": "PERPETUAL", "status": "TRADING",
    "baseAsset": "BTC", "quoteAsset": "USDT", "marginAsset": "USDT", "pricePrecision": 2, "quantityPrecision": 3,
    "filters": [
        {"filterType": "PRICE_FILTER", "minPrice": "556.80", "maxPrice": "4529764", "tickSize": "0.10"},
        {"filterType": "LOT_SIZE", "minQty": "0.001", "maxQty": "1000", "stepSize": "0.001"},
        {"filterType": "MARKET_LOT_SIZE", "minQty": "0.001", "maxQty": "120", "stepSize": "0.001"},
        {"filterType": "MAX_NUM_ORDERS", "limit": 200},
        {"filterType": "MIN_NOTIONAL", "notional": "50"},
        {"filterType": "PERCENT_PRICE", "multiplierUp": "1.0500", "multiplierDown": "0.9500", "multiplierDecimal": "4"},
        {"filterType": "POSITION_RISK_CONTROL", "positionControlSide": "NONE"},
    ],
}

UNITS = ["0.1", "0.10", "0.01", "0.25", "0.5", "1", "10", "0.001", "0.00001", "0.0000001", "0.00000001"]


def filters_with(tick: str, step: str) -> SymbolFilters:
    entry = dict(LIVE_BTCUSDT)
    entry["filters"] = [
        {"filterType": "PRICE_FILTER", "minPrice": "0", "maxPrice": "0", "tickSize": tick},
        {"filterType": "LOT_SIZE", "minQty": step, "maxQty": "1000000", "stepSize": step},
    ]
    return SymbolFilters.from_exchange_info(entry)


def test_live_exchange_info_entry_is_read_exactly():
    f = SymbolFilters.from_exchange_info(LIVE_BTCUSDT)
    assert f.tick_size == Decimal("0.10") and f.step_size == Decimal("0.001")
    assert f.min_notional == Decimal("50") and f.max_num_orders == 200
    assert f.market_max_qty == Decimal("120") and f.multiplier_up == Decimal("1.0500")
    assert f.price_str(900001) == "90000.1"
    assert f.qty_str(1) == "0.001"
    assert f.tradable(f.price_ticks_floor("90000"), 1)
    assert not f.tradable(f.price_ticks_floor("40000"), 1)  # 40 < 50 notional: dropped, not bumped


def test_malformed_entry_names_the_symbol():
    with pytest.raises(FilterError, match="BTCUSDT"):
        SymbolFilters.from_exchange_info({"symbol": "BTCUSDT", "filters": [{"filterType": "LOT_SIZE"}]})


@pytest.mark.parametrize("filter_type, field", [("PRICE_FILTER", "minPrice"), ("LOT_SIZE", "stepSize"),
                                                ("MIN_NOTIONAL", "notional"), ("PERCENT_PRICE", "multiplierUp")])
def test_a_filter_that_is_not_a_finite_number_is_refused_by_name(filter_type, field):
    """Decimal reads "NaN", and every comparison after it fails: refused at the start, naming the field."""
    entry = {**LIVE_BTCUSDT, "filters": [dict(f, **({field: "NaN"} if f["filterType"] == filter_type else {}))
                                         for f in LIVE_BTCUSDT["filters"]]}
    with pytest.raises(FilterError, match="not a finite number"):
        SymbolFilters.from_exchange_info(entry)


def test_point_one_plus_point_two_is_three_ticks():
    f = filters_with("0.1", "0.1")
    assert f.price_ticks_floor(0.1 + 0.2) == 3
    assert f.price_ticks_ceil(0.1 + 0.2) == 3
    assert f.qty_steps_floor(0.1 + 0.2) == 3
    assert f.price_str(f.price_ticks_floor(0.1 + 0.2)) == "0.3"


def test_tiny_steps_print_without_exponent():
    f = filters_with("0.00000001", "0.00000001")
    assert f.qty_str(3) == "0.00000003"
    assert f.price_str(123456789) == "1.23456789"
    assert f.qty_steps_floor(3e-8) == 3


def test_off_grid_values_are_refused_by_exact_conversion():
    f = filters_with("0.01", "0.001")
    with pytest.raises(FilterError, match="tick"):
        f.price_ticks_exact("2317.305")
    with pytest.raises(FilterError, match="step"):
        f.qty_steps_exact("0.0015")


@settings(max_examples=300, deadline=None)
@given(unit=st.sampled_from(UNITS), units=st.integers(min_value=0, max_value=10**9))
def test_ticks_round_trip_through_wire_strings_and_floats(unit, units):
    f = filters_with(unit, unit)
    text = f.price_str(units)
    assert "e" not in text.lower()
    assert Decimal(text) == Decimal(unit) * units
    assert f.price_ticks_exact(text) == units
    assert f.qty_steps_exact(f.qty_str(units)) == units
    # the float the core may hold for that price maps back onto the same tick both ways
    assert f.price_ticks_floor(float(text)) == units
    assert f.price_ticks_ceil(float(text)) == units
    assert f.qty_steps_floor(float(text)) == units


@settings(max_examples=300, deadline=None)
@given(
    unit=st.sampled_from(UNITS),
    units=st.integers(min_value=0, max_value=10**8),
    frac=st.decimals(min_value=Decimal("0.001"), max_value=Decimal("0.999"), places=3),
)
def test_bids_round_down_and_asks_round_up(unit, units, frac):
    f = filters_with(unit, unit)
    price = (Decimal(units) + frac) * Decimal(unit)
    lo = f.price_ticks_floor(str(price))
    hi = f.price_ticks_ceil(str(price))
    assert (lo, hi) == (units, units + 1)
    # the same through a float (what the strategy computes), far from float noise
    lo_f = f.price_ticks_floor(float(price))
    hi_f = f.price_ticks_ceil(float(price))
    assert f.price_of(lo_f) <= price <= f.price_of(hi_f)
    assert hi_f - lo_f == 1


@settings(max_examples=200, deadline=None)
@given(a=st.integers(1, 10**6), b=st.integers(1, 10**6), unit=st.sampled_from(["0.1", "0.01", "0.001"]))
def test_sums_of_float_prices_snap_to_the_exact_tick(a, b, unit):
    f = filters_with(unit, unit)
    tick = float(unit)
    total = a * tick + b * tick  # accumulates float noise like 0.1 + 0.2
    assert f.price_ticks_floor(total) == a + b
    assert f.price_ticks_ceil(total) == a + b


def _with_market(lot: dict, market: dict | None) -> SymbolFilters:
    entry = dict(LIVE_BTCUSDT)
    entry["filters"] = [
        {"filterType": "PRICE_FILTER", "minPrice": "0.01", "maxPrice": "1000000", "tickSize": "0.01"},
        {"filterType": "LOT_SIZE", **lot},
        *([{"filterType": "MARKET_LOT_SIZE", **market}] if market is not None else []),
    ]
    return SymbolFilters.from_exchange_info(entry)


def test_market_lot_size_is_parsed_and_falls_back_to_lot_size_when_absent():
    f = _with_market({"minQty": "0.001", "maxQty": "1000", "stepSize": "0.001"},
                     {"minQty": "0.01", "maxQty": "120", "stepSize": "0.01"})
    assert (f.market_step_size, f.market_min_qty, f.market_max_qty) == (Decimal("0.01"), Decimal("0.01"), Decimal("120"))
    assert f.market_unit_steps == 10 and f.market_min_steps() == 10 and f.market_max_steps() == 120_000
    g = _with_market({"minQty": "0.001", "maxQty": "1000", "stepSize": "0.001"}, None)
    assert (g.market_step_size, g.market_min_qty, g.market_max_qty) == (Decimal("0.001"), Decimal("0.001"), Decimal("1000"))
    assert g.market_unit_steps == 1 and g.market_max_steps() == 1_000_000


def test_market_quantities_are_on_the_market_step_and_split_above_its_max_qty():
    f = _with_market({"minQty": "0.001", "maxQty": "1000", "stepSize": "0.001"},
                     {"minQty": "0.02", "maxQty": "1.5", "stepSize": "0.01"})
    assert f.market_qty_floor(1_234) == 1_230  # 1.234 -> 1.23: rounded down onto 0.01
    assert f.market_split(1_234) == [1_230]
    assert f.market_split(15) == []  # 0.01 after rounding: under minQty 0.02
    pieces = f.market_split(4_009)  # 4.009 -> 4.00, max 1.5 each: three orders
    assert pieces == [1_340, 1_330, 1_330] and sum(pieces) == 4_000
    assert all(p % 10 == 0 and p <= 1_500 for p in pieces)
    assert [f.qty_str(p) for p in pieces] == ["1.340", "1.330", "1.330"]
    assert all(Decimal(f.qty_str(p)) % f.market_step_size == 0 for p in pieces)


def test_a_market_step_finer_than_the_lot_step_keeps_lot_steps_and_an_odd_ratio_uses_both_grids():
    finer = _with_market({"minQty": "0.01", "maxQty": "1000", "stepSize": "0.01"},
                         {"minQty": "0.001", "maxQty": "5", "stepSize": "0.001"})
    assert finer.market_unit_steps == 1 and finer.market_min_steps() == 1 and finer.market_max_steps() == 500
    odd = _with_market({"minQty": "0.002", "maxQty": "1000", "stepSize": "0.002"},
                       {"minQty": "0.003", "maxQty": "1", "stepSize": "0.003"})
    assert odd.market_unit_steps == 3  # 0.006: the smallest quantity on both grids
    assert odd.market_split(10) == [9] and odd.qty_str(9) == "0.018"


def test_a_notional_cap_on_market_pieces_keeps_each_piece_at_least_min_qty():
    """``max_steps`` (a notional's worth) splits finer than maxQty; a cap under twice minQty cannot split
    evenly, so whole caps go and what is left under minQty is left to the caller (none was sent before)."""
    f = _with_market({"minQty": "0.001", "maxQty": "1000", "stepSize": "0.001"},
                     {"minQty": "0.010", "maxQty": "100", "stepSize": "0.001"})
    assert f.market_split(40, 12) == [10, 10, 10, 10]   # an even split under the cap
    assert f.market_split(13, 12) == [12] and f.market_split(25, 12) == [12, 12]
    assert f.market_split(13, 5) == [13]      # a cap under minQty is not applied (the guard says why)
    assert f.market_split(4_009) == [4_009]
