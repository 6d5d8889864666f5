"""Delisting in the engine: the announcement, the settlement at its time, and a symbol that trades no
more (fleet/sim/delisting.py states what Binance does and what the simulator chooses)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from fleet.sim.config import load_sim_config
from fleet.sim.engine import Engine, SimApiError
from fleet.sim.units import q8

T0 = 1_800_000_000_000
SYM = "ETHUSDC"
OTHER = "BTCUSDC"


def _engine() -> Engine:
    cfg = {"history": False, "accounts": [{"name": "main"}, {"name": "desk2"}],
           "symbols": [{"symbol": SYM, "base_asset": "ETH", "quote_asset": "USDC", "start_price": 3000,
                        "taker_rate": 0.0, "level_qty": 0.5},
                       {"symbol": OTHER, "base_asset": "BTC", "quote_asset": "USDC", "start_price": 60000,
                        "taker_rate": 0.0}]}
    e = Engine(load_sim_config(cfg), seed=5, now_ms=T0)
    e.watch("!contractInfo")
    return e


def _code(call) -> int:
    with pytest.raises(SimApiError) as err:
        call()
    return err.value.code


def _limit(e: Engine, account: str, side: str, price: str, qty: str = "0.1", t: int = T0) -> dict:
    return e.new_order(account, {"symbol": SYM, "side": side, "type": "LIMIT", "timeInForce": "GTC",
                                 "price": price, "quantity": qty}, t)


def _contract_frames(e: Engine) -> list[dict]:
    return [p for k, s, p in e.drain_rendered() if k == "m" and s == "!contractInfo"]


def test_a_delisting_is_announced_then_settles_every_account_at_its_time_and_the_symbol_trades_no_more():
    e = _engine()
    b = e.books[SYM]
    e.new_order("main", {"symbol": SYM, "side": "BUY", "type": "MARKET", "quantity": "0.5"}, T0)
    e.set_margin_type("desk2", {"symbol": SYM, "marginType": "ISOLATED"}, T0)
    e.new_order("desk2", {"symbol": SYM, "side": "SELL", "type": "MARKET", "quantity": "0.3"}, T0)
    resting = _limit(e, "main", "BUY", "2000")
    e.drain()
    at = T0 + 60_000
    assert e.schedule_delisting(SYM, at, T0) == {"symbol": SYM, "deliveryDate": at, "status": "TRADING"}
    assert [(f["s"], f["dt"], f["cs"], f["ct"]) for f in _contract_frames(e)] == [(SYM, at, "TRADING", "PERPETUAL")]
    assert e.state("main", SYM)["markets"][SYM]["delivery_date"] == at
    with pytest.raises(ValueError):
        e.schedule_delisting(SYM, T0 - 1, T0)   # not in the past

    # before the time: the symbol trades as before
    _limit(e, "main", "BUY", "2001", t=T0 + 1000)
    wallet = {a: e.accounts[a].wallet["USDC"] for a in ("main", "desk2")}
    entry = {a: e.accounts[a].positions[SYM].entry for a in ("main", "desk2")}
    assert e.accounts["desk2"].positions[SYM].isolated_wallet > 0
    e.advance(at - 1)
    assert b.status == "TRADING"
    e.drain()
    e.advance(at + e.step_ms)
    assert b.status == "CLOSE"
    px = b.mark_dec().quantize(b.tick)
    frames = e.drain_rendered()
    assert [(p["cs"], p["dt"]) for k, s, p in frames if s == "!contractInfo"] == [("SETTLING", at), ("CLOSE", at)]
    for account, amount, side in (("main", Decimal("0.5"), "SELL"), ("desk2", Decimal("-0.3"), "BUY")):
        st = e.state(account, SYM)
        assert st["open_orders"] == [] and st["positions"][SYM]["amount"] == "0.000"
        orders = [p["o"] for k, a, p in frames if k == "u" and a == account and p["e"] == "ORDER_TRADE_UPDATE"]
        closes = [o for o in orders if o["c"].startswith("settlement_autoclose-")]
        assert [(o["S"], o["X"], o["x"], Decimal(o["z"]), o["n"]) for o in closes] == [
            (side, "FILLED", "CALCULATED", abs(Decimal(amount)), "0")]
        assert Decimal(closes[0]["L"]) == px
        realized = q8((px - entry[account]) * amount)
        assert e.accounts[account].wallet["USDC"] == wallet[account] + realized   # no fee
        assert e.accounts[account].positions[SYM].isolated_wallet == 0   # desk2's went back to the cross side
        assert e.accounts[account].counters["settled"] == 1
        assert e.force_orders(account, {}, at + 1000) == []   # not a liquidation, not an ADL
    # ended by the exchange: EXPIRED, Binance's expire reason 7 "canceled as the symbol is delisted"
    main_ended = [p["o"]["i"] for k, a, p in frames if k == "u" and a == "main" and p["e"] == "ORDER_TRADE_UPDATE"
                  and (p["o"]["x"], p["o"]["X"], p["o"]["er"]) == ("EXPIRED", "EXPIRED", "7")]
    assert resting["orderId"] in main_ended and len(main_ended) == 2

    # after: no order, amendment (-5024, MOVE_ORDER_NOT_ALLOWED_SYMBOL_REASON) or conditional order; cancels and
    # reads still answer; the market stands
    assert _code(lambda: _limit(e, "main", "BUY", "2000", t=at + 2000)) == -4108
    assert _code(lambda: e.new_order("main", {"symbol": SYM, "side": "SELL", "type": "MARKET", "quantity": "0.1",
                                              "reduceOnly": "true"}, at + 2000)) == -4108
    assert _code(lambda: e.modify_order("main", {"symbol": SYM, "orderId": str(resting["orderId"]), "side": "BUY",
                                                 "quantity": "0.1", "price": "2002"}, at + 2000)) == -5024
    assert _code(lambda: e.algo.place("main", {"symbol": SYM, "algoType": "CONDITIONAL", "side": "SELL",
                                               "type": "STOP_MARKET", "triggerPrice": "1000", "quantity": "0.1"},
                                      at + 2000)) == -4108
    assert e.cancel_all("main", {"symbol": SYM}, at + 2000)["code"] == 200
    mid = b.mid
    assert e.set_frozen(None, False) == [SYM, OTHER]   # an unfreeze of every symbol does not reopen it
    with pytest.raises(ValueError):
        e.jump(SYM, 1.0, at + 2000)
    e.advance(at + 10_000)
    assert b.mid == mid and not [s for k, s, _ in e.drain() if k == "m" and s.startswith(SYM.lower())]
    # the other symbol trades on
    e.new_order("main", {"symbol": OTHER, "side": "BUY", "type": "MARKET", "quantity": "0.01"}, at + 10_000)
    with pytest.raises(ValueError):
        e.schedule_delisting(SYM, at + 100_000, at + 10_000)   # already closed
