"""Notional and leverage brackets in the engine (fleet/sim/brackets.py): the table Binance publishes,
the allowance of each leverage (-2027), the checks of a leverage change (-4028, -2027, -2028, -4161),
and the maintenance margin of the position's bracket."""

from __future__ import annotations

from decimal import Decimal

import pytest

from fleet.sim.config import SimConfigError, load_sim_config
from fleet.sim.engine import Engine, SimApiError

T0 = 1_800_000_000_000
SYM = "BTCUSDT"   # the default table: 125x up to 50,000, 100x to 250,000, 50x to 3 M, 20x to 20 M, ...


def _engine(**spec) -> Engine:
    cfg = {"history": False, "symbols": [{"symbol": SYM, "base_asset": "BTC", "quote_asset": "USDT", "tick_size": "0.1",
                                          "start_price": 50000, "taker_rate": 0.0, "level_qty": 50, **spec}]}
    return Engine(load_sim_config(cfg), seed=5, now_ms=T0)


def _code(call) -> int:
    with pytest.raises(SimApiError) as err:
        call()
    return err.value.code


def _leverage(e: Engine, lev: int) -> dict:
    return e.set_leverage("main", {"symbol": SYM, "leverage": str(lev)}, T0)


def _limit(e: Engine, side: str, qty: str, ticks_away: int = 100, **extra) -> dict:
    b = e.books[SYM]
    price = b.best_bid() - ticks_away if side == "BUY" else b.best_ask() + ticks_away
    return e.new_order("main", {"symbol": SYM, "side": side, "type": "LIMIT", "timeInForce": "GTC",
                                "price": b.price_str(price), "quantity": qty, **extra}, T0)


def _market(e: Engine, side: str, qty: str, **extra) -> dict:
    return e.new_order("main", {"symbol": SYM, "side": side, "type": "MARKET", "quantity": qty, **extra}, T0)


def test_the_table_is_binances_with_each_cum_keeping_the_maintenance_continuous():
    b = _engine().books[SYM]
    rows = b.brackets.json()
    assert [(r["bracket"], r["initialLeverage"], r["notionalFloor"], r["notionalCap"]) for r in rows[:3]] == [
        (1, 125, 0, 50_000), (2, 100, 50_000, 250_000), (3, 50, 250_000, 3_000_000)]
    assert [r["cum"] for r in rows[:4]] == [0.0, 50.0, 1_300.0, 46_300.0]
    for lower, upper in zip(b.brackets.rows, b.brackets.rows[1:]):   # the same maintenance on both sides of a floor
        assert lower.cap == upper.floor
        assert lower.cap * lower.rate - lower.cum == upper.floor * upper.rate - upper.cum
    assert b.brackets.maintenance(Decimal(1_000_000)) == Decimal(1_000_000) * Decimal("0.01") - 1_300


def test_an_order_beyond_the_leverage_allowance_is_refused_and_one_that_reduces_is_not():
    e = _engine()
    e.accounts["main"].wallet["USDT"] = Decimal(1_000_000)
    assert _leverage(e, 125)["maxNotionalValue"] == "50000"
    _limit(e, "BUY", "0.5")                                   # ~25,000 resting on the bid side
    assert _code(lambda: _limit(e, "BUY", "0.6")) == -2027    # with it, over 50,000
    _limit(e, "SELL", "0.9")                                  # the other side has its own allowance
    _market(e, "BUY", "0.45")                                 # a long of ~22,500: with the bids, ~47,500
    assert _code(lambda: _market(e, "BUY", "0.1")) == -2027
    resting = _limit(e, "BUY", "0.05")                        # up to the allowance
    bigger = {"symbol": SYM, "orderId": str(resting["orderId"]), "side": "BUY", "quantity": "0.2",
              "price": resting["price"]}
    assert _code(lambda: e.modify_order("main", bigger, T0)) == -2027   # an amendment too
    _market(e, "SELL", "0.2", reduceOnly="true")              # reducing needs no room
    e.cancel_all("main", {"symbol": SYM}, T0)
    _market(e, "SELL", "1.0")                                 # a flip: 0.25 long to a 0.75 short (~37,500)
    assert e.position_risk("main", SYM, 3)[0]["positionAmt"] == "-0.750"
    assert _code(lambda: _market(e, "SELL", "0.3")) == -2027  # the short's side is full too


def test_a_leverage_change_keeps_to_the_table_and_to_what_the_account_holds():
    e = _engine()
    acct = e.accounts["main"]
    assert _code(lambda: _leverage(e, 126)) == -4028
    assert _leverage(e, 20) == {"leverage": 20, "maxNotionalValue": "20000000", "symbol": SYM}
    _market(e, "BUY", "6")                                    # ~300,000: beyond 125x's and 100x's allowance
    assert _code(lambda: _leverage(e, 125)) == -2027
    assert _code(lambda: _leverage(e, 100)) == -2027
    assert acct.leverage[SYM] == 20
    assert _leverage(e, 50)["maxNotionalValue"] == "3000000"
    acct.wallet["USDT"] = Decimal(12_000)                     # ~6,000 of initial margin held at 50x, ~6,000 free
    assert _code(lambda: _leverage(e, 10)) == -2028           # 10x would hold ~24,000 more
    assert acct.leverage[SYM] == 50
    assert _leverage(e, 30)["leverage"] == 30                 # ~4,000 more
    assert acct.leverage[SYM] == 30


def test_an_isolated_position_cannot_lower_its_leverage_but_may_raise_it():
    e = _engine()
    assert e.set_margin_type("main", {"symbol": SYM, "marginType": "ISOLATED"}, T0)["code"] == 200
    _leverage(e, 20)
    _market(e, "BUY", "0.1")
    assert _code(lambda: _leverage(e, 10)) == -4161
    assert _leverage(e, 25)["leverage"] == 25
    _market(e, "SELL", "0.1")
    assert _leverage(e, 5)["leverage"] == 5                   # flat: any leverage the table allows


def test_the_maintenance_margin_and_liquidation_price_are_the_positions_brackets():
    e = _engine()
    _leverage(e, 20)
    _market(e, "BUY", "10")                                   # ~500,000: the third bracket, 1 %, cum 1,300
    risk = e.position_risk("main", SYM, 3)[0]
    notional = Decimal(risk["notional"])
    assert 250_000 < notional < 3_000_000
    assert Decimal(risk["maintMargin"]) == notional * Decimal("0.01") - 1_300
    account = e.account_info("main", 2)
    assert next(p for p in account["positions"] if p["symbol"] == SYM)["maxNotional"] == "20000000"
    assert Decimal(account["totalMaintMargin"]) == Decimal(risk["maintMargin"])
    wallet = Decimal(next(r for r in e.balances("main") if r["asset"] == "USDT")["crossWalletBalance"])
    size, entry, liq = Decimal(10), Decimal(risk["entryPrice"]), Decimal(risk["liquidationPrice"])
    assert abs(wallet + size * (liq - entry) - (size * liq * Decimal("0.01") - 1_300)) < Decimal("0.001")


def test_a_symbol_brings_its_own_table_and_a_bad_one_is_refused_by_name():
    e = _engine(brackets=[{"notional_cap": "10000", "initial_leverage": 75, "maint_margin_ratio": "0.0065"},
                          {"notional_cap": "100000", "initial_leverage": 50, "maint_margin_ratio": "0.01"}])
    assert _code(lambda: _leverage(e, 100)) == -4028
    assert _leverage(e, 60)["maxNotionalValue"] == "10000"
    assert e.books[SYM].brackets.json()[1]["cum"] == 35.0     # 10,000 x (1 % - 0.65 %)
    with pytest.raises(SimConfigError, match="bracket 2: initial leverage 80"):
        _engine(brackets=[{"notional_cap": "10000", "initial_leverage": 75, "maint_margin_ratio": "0.0065"},
                          {"notional_cap": "100000", "initial_leverage": 80, "maint_margin_ratio": "0.01"}])
    with pytest.raises(SimConfigError, match="bracket 1: notional cap 'lots'"):
        _engine(brackets=[{"notional_cap": "lots", "initial_leverage": 75, "maint_margin_ratio": "0.0065"}])



def test_orders_on_the_side_opposite_a_position_count_against_that_sides_allowance():
    """A sell while long is checked too: the short side's exposure is its asks less the long."""
    e = _engine()
    e.accounts["main"].wallet["USDT"] = Decimal(1_000_000)
    _leverage(e, 125)
    _market(e, "BUY", "0.9")                                  # a long of ~45,000
    _limit(e, "SELL", "0.9")                                  # reduces it all: no short exposure
    _limit(e, "SELL", "0.9")                                  # ~45,000 short once both fill
    assert _code(lambda: _limit(e, "SELL", "0.2")) == -2027   # ~55,000
    risk = e.position_risk("main", SYM, 3)[0]
    assert Decimal(risk["askNotional"]) - Decimal(risk["notional"]) <= 50_000


def test_an_order_landing_on_the_allowance_exactly_is_accepted():
    """At 160.00 with tick and step 0.01, 312.50 makes 50,000 exactly: it fits 125x's allowance,
    one step more does not (the floats' rounding once refused the exact fit)."""
    e = _engine(tick_size="0.01", step_size="0.01", start_price=170)
    _leverage(e, 125)
    b = e.books[SYM]
    price = b.price_str(int(Decimal(160) / b.tick))
    for qty in ("1.28", "311.22"):                            # 204.80 + 49,795.20
        e.new_order("main", {"symbol": SYM, "side": "BUY", "type": "LIMIT", "timeInForce": "GTC",
                             "price": price, "quantity": qty}, T0)
    assert Decimal(e.position_risk("main", SYM, 3)[0]["bidNotional"]) == 50_000
    assert _code(lambda: _limit(e, "BUY", "0.05")) == -2027   # the least the minimum notional allows


def test_an_accounts_default_leverage_above_a_symbols_table_starts_at_the_tables_most():
    e = _engine(brackets=[{"notional_cap": "100000", "initial_leverage": 10, "maint_margin_ratio": "0.01"}])
    assert e.leverage_of(e.accounts["main"], SYM) == 10       # the account's default is 20
    assert e.position_risk("main", SYM, 2)[0]["maxNotionalValue"] == "100000"
    _limit(e, "BUY", "0.5")                                   # not refused for a leverage the table lacks


def test_a_new_table_is_pushed_with_its_brackets_and_holds_from_then_on():
    """Binance adjusts a symbol's brackets with notice: !contractInfo carries the new table (bks), a
    leverage above its first bracket's comes down to it (ACCOUNT_CONFIG_UPDATE), and orders follow it."""
    e = _engine()
    e.watch("!contractInfo")
    _leverage(e, 100)
    e.drain()
    rows = [("20000", 50, "0.01"), ("100000", 20, "0.025"), ("1000000", 5, "0.1")]
    answer = e.set_brackets(SYM, rows, T0 + 1000)
    assert [b["notionalCap"] for b in answer["brackets"]] == [20000, 100000, 1000000]
    frames = e.drain_rendered()
    [info] = [p for k, s, p in frames if s == "!contractInfo"]
    assert (info["s"], info["cs"], info["dt"]) == (SYM, "TRADING", 4133404800000)
    assert [(x["bs"], x["bnf"], x["bnc"], x["mmr"], x["mi"], x["ma"]) for x in info["bks"]] == [
        (1, 0, 20000, 0.01, 21, 50), (2, 20000, 100000, 0.025, 6, 20), (3, 100000, 1000000, 0.1, 1, 5)]
    assert info["bks"][1]["cf"] == 20000 * (0.025 - 0.01)   # the cum keeps the maintenance continuous
    assert type(info["bks"][0]["cf"]) is int and type(info["bks"][1]["cf"]) is int   # 0 and 300, not 0.0
    assert [p["ac"] for k, a, p in frames if k == "u" and p["e"] == "ACCOUNT_CONFIG_UPDATE"] == [{"s": SYM, "l": 50}]
    assert e.leverage_of(e.accounts["main"], SYM) == 50
    assert _code(lambda: _limit(e, "BUY", "0.5")) == -2027   # ~25,000 of bids: beyond 50x's 20,000 now
    _limit(e, "BUY", "0.3")
    assert _code(lambda: _leverage(e, 51)) == -4028
    with pytest.raises(ValueError, match="bracket 2"):
        e.set_brackets(SYM, [("20000", 50, "0.01"), ("10000", 20, "0.025")], T0 + 2000)
