"""Isolated margin in the engine: the margin type, the isolated wallet through fills, transfers and
funding, and every total Binance reports adding up (fleet/sim/margin.py states the bookkeeping)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from fleet.sim.config import load_sim_config
from fleet.sim.engine import Engine, SimApiError
from fleet.sim.units import q8

T0 = 1_800_000_000_000
SYM = "ETHUSDC"


def _engine() -> Engine:
    cfg = {"history": False, "symbols": [{"symbol": SYM, "base_asset": "ETH", "quote_asset": "USDC",
                                          "start_price": 3000, "taker_rate": 0.0, "level_qty": 0.5}]}
    return Engine(load_sim_config(cfg), seed=5, now_ms=T0)


def _code(call) -> int:
    with pytest.raises(SimApiError) as err:
        call()
    return err.value.code


def _market(e: Engine, side: str, qty: str) -> None:
    e.new_order("main", {"symbol": SYM, "side": side, "type": "MARKET", "quantity": qty}, T0)


def _isolate(e: Engine) -> None:
    assert e.set_margin_type("main", {"symbol": SYM, "marginType": "ISOLATED"}, T0) == {"code": 200, "msg": "success"}


def _usdc(e: Engine) -> dict[str, Decimal]:
    row = next(r for r in e.balances("main") if r["asset"] == "USDC")
    return {k: Decimal(row[k]) for k in ("balance", "crossWalletBalance", "crossUnPnl", "availableBalance")}


def _risk(e: Engine, version: int = 2) -> dict:
    return e.position_risk("main", SYM, version)[0]


def _updates(e: Engine) -> list[dict]:
    return [p for k, _, p in e.drain_rendered() if k == "u" and p["e"] == "ACCOUNT_UPDATE"]


def test_the_margin_type_changes_only_with_no_position_and_no_open_order():
    e = _engine()
    b = e.books[SYM]
    assert _code(lambda: e.set_margin_type("main", {"symbol": SYM, "marginType": "CROSSED"}, T0)) == -4046
    assert _code(lambda: e.set_margin_type("main", {"symbol": SYM, "marginType": "HALF"}, T0)) == -1130
    assert _code(lambda: e.set_margin_type("main", {"symbol": SYM}, T0)) == -1102
    e.new_order("main", {"symbol": SYM, "side": "BUY", "type": "LIMIT", "timeInForce": "GTC",
                         "price": b.price_str(b.best_bid() - 50), "quantity": "0.1"}, T0)
    assert _code(lambda: e.set_margin_type("main", {"symbol": SYM, "marginType": "ISOLATED"}, T0)) == -4047
    e.cancel_all("main", {"symbol": SYM}, T0)
    _market(e, "BUY", "0.1")
    assert _code(lambda: e.set_margin_type("main", {"symbol": SYM, "marginType": "ISOLATED"}, T0)) == -4048
    _market(e, "SELL", "0.1")
    e.drain()
    _isolate(e)
    assert _code(lambda: e.set_margin_type("main", {"symbol": SYM, "marginType": "ISOLATED"}, T0)) == -4046
    [update] = _updates(e)
    assert update["a"]["m"] == "MARGIN_TYPE_CHANGE" and update["a"]["P"][0]["mt"] == "isolated"
    assert _risk(e)["marginType"] == "isolated" and e.state("main", SYM)["positions"][SYM]["margin_type"] == "isolated"
    assert e.set_margin_type("main", {"symbol": SYM, "marginType": "CROSSED"}, T0)["code"] == 200
    assert _risk(e)["marginType"] == "cross"


def test_an_isolated_position_holds_its_fills_margin_apart_and_the_totals_add_up():
    e = _engine()
    acct = e.accounts["main"]
    start = _usdc(e)["balance"]
    _isolate(e)
    e.drain()
    _market(e, "BUY", "0.4")
    lev = e.leverage_of(acct, SYM)
    fills = [t for t in acct.trades if t.symbol == SYM]
    iw = sum((q8(Decimal(t.price) * Decimal(t.qty) / lev) for t in fills), Decimal(0))
    fees = sum((Decimal(t.commission) for t in fills), Decimal(0))
    money = _usdc(e)
    assert money["balance"] == start - fees                     # the wallet: every asset's money
    assert money["crossWalletBalance"] == money["balance"] - iw  # less the isolated wallet
    assert money["crossUnPnl"] == 0                             # the isolated position's P&L is its own
    assert money["availableBalance"] == money["crossWalletBalance"]
    risk = _risk(e)
    assert Decimal(risk["isolatedWallet"]) == iw
    assert Decimal(risk["isolatedMargin"]) == iw + Decimal(risk["unRealizedProfit"])
    # the isolated liquidation price reads the isolated wallet alone:
    # (iw + cum - size x entry) / (size x mmr - size), mmr and cum the position's bracket's
    size, entry = Decimal("0.4"), Decimal(risk["entryPrice"])
    liq = Decimal(risk["liquidationPrice"])
    bracket = e.books[SYM].brackets.of(size * Decimal(risk["markPrice"]))
    assert bracket.number == 1 and bracket.rate == Decimal("0.004")
    assert liq == q8((iw + bracket.cum - size * entry) / (size * bracket.rate - size))
    assert entry * (1 - Decimal(1) / lev) < liq < entry   # within the leverage's reach below the entry
    account = e.account_info("main", 2)
    row = next(p for p in account["positions"] if p["symbol"] == SYM)
    assert row["isolated"] is True and Decimal(row["isolatedWallet"]) == iw
    frame = _updates(e)[-1]["a"]
    assert frame["P"][0]["mt"] == "isolated" and Decimal(frame["P"][0]["iw"]) == iw
    assert Decimal(frame["B"][0]["cw"]) == Decimal(frame["B"][0]["wb"]) - iw
    # a fill that closes a quarter returns a quarter of the isolated wallet; the rest closes it all
    _market(e, "SELL", "0.1")
    assert Decimal(_risk(e)["isolatedWallet"]) == iw - q8(iw / 4)
    _market(e, "SELL", "0.3")
    money = _usdc(e)
    assert _risk(e)["isolatedWallet"] == "0.00000000" and money["crossWalletBalance"] == money["balance"]
    realized = sum((Decimal(t.realized_pnl) - Decimal(t.commission) for t in acct.trades), Decimal(0))
    assert money["balance"] == start + realized                 # nothing was lost in the transfers
    moves = e.margin_history("main", {"symbol": SYM})
    assert {m["deltaType"] for m in moves} == {"TRADE"}
    assert sum((Decimal(m["amount"]) * (1 if m["type"] == 1 else -1) for m in moves), Decimal(0)) == 0


def test_position_margin_moves_money_within_what_each_side_holds():
    e = _engine()

    def modify(kind: str, amount: str) -> dict:
        return e.modify_position_margin("main", {"symbol": SYM, "type": kind, "amount": amount}, T0)

    assert _code(lambda: modify("1", "10")) == -4049          # a cross symbol
    _isolate(e)
    assert _code(lambda: modify("1", "10")) == -4054          # no position
    _market(e, "SELL", "0.2")
    iw = Decimal(_risk(e)["isolatedWallet"])
    before = _usdc(e)
    assert _code(lambda: modify("1", str(before["availableBalance"] + 1))) == -4050
    assert _code(lambda: modify("3", "10")) == -1130
    assert _code(lambda: modify("1", "0")) == -4055
    assert _code(lambda: modify("1", "1.123456789")) == -1111
    assert _code(lambda: modify("1", "1e3")) == -1100
    e.drain()
    assert modify("1", "100") == {"amount": 100.0, "code": 200, "msg": "Successfully modify position margin.", "type": 1}
    after = _usdc(e)
    assert Decimal(_risk(e)["isolatedWallet"]) == iw + 100
    assert after["availableBalance"] == before["availableBalance"] - 100 and after["balance"] == before["balance"]
    [update] = _updates(e)
    assert update["a"]["m"] == "MARGIN_TRANSFER" and Decimal(update["a"]["P"][0]["iw"]) == iw + 100
    removable = e.removable_margin(e.accounts["main"], e.books[SYM], e.accounts["main"].positions[SYM])
    assert 90 < removable < iw + 100          # about the 100 added: the rest holds the initial margin
    assert _code(lambda: modify("2", str(q8(removable) + 1))) == -4051
    assert modify("2", "60")["type"] == 2
    assert Decimal(_risk(e)["isolatedWallet"]) == iw + 40
    history = e.margin_history("main", {"symbol": SYM})
    opened = sum((Decimal(h["amount"]) for h in history if h["deltaType"] == "TRADE"), Decimal(0))
    assert opened == iw and {h["type"] for h in history if h["deltaType"] == "TRADE"} == {1}   # the sale's fills
    assert [(h["type"], h["amount"]) for h in history if h["deltaType"] == "USER_ADJUST"] == [
        (1, "100.00000000"), (2, "60.00000000")]
    assert e.margin_history("main", {"symbol": SYM, "type": "2"}) == history[-1:]
    assert _code(lambda: e.margin_history("main", {"symbol": SYM, "startTime": "0",
                                                   "endTime": str(31 * 86_400_000)})) == -1127


def test_an_isolated_position_pays_its_funding_from_its_own_wallet():
    e = _engine()
    _isolate(e)
    _market(e, "BUY", "0.2")
    e.set_funding_rate(SYM, "0.001")
    iw = Decimal(_risk(e)["isolatedWallet"])
    wallet = _usdc(e)["balance"]
    e.drain()
    [charge] = e.settle_funding(T0 + 1000, SYM)
    fee = Decimal(charge["fee"])
    assert fee < 0                                               # a long pays a positive rate
    assert Decimal(_risk(e)["isolatedWallet"]) == iw + fee
    money = _usdc(e)
    assert money["balance"] == wallet + fee and money["crossWalletBalance"] == wallet - iw
    [update] = _updates(e)
    a = update["a"]
    assert a["m"] == "FUNDING_FEE" and Decimal(a["B"][0]["bc"]) == fee
    assert [(p["s"], p["mt"], Decimal(p["iw"])) for p in a["P"]] == [(SYM, "isolated", iw + fee)]


def test_an_order_takes_its_margin_from_the_cross_side_only():
    e = _engine()
    acct = e.accounts["main"]
    acct.wallet["USDC"] = Decimal(1000)
    e.set_leverage("main", {"symbol": SYM, "leverage": "10"}, T0)
    _isolate(e)
    _market(e, "BUY", "3")        # 9,000 of notional at 10x: some 900 of the 1,000 go to the isolated wallet
    avail = _usdc(e)["availableBalance"]
    assert 0 < avail < 100
    b = e.books[SYM]
    too_much = b.qty_str(int(avail * e.leverage_of(acct, SYM) / (b.mark_dec() * b.step)) + 10)
    assert _code(lambda: _market(e, "BUY", too_much)) == -2019


def _liquidation_frames(e: Engine) -> tuple[list[dict], list[dict]]:
    frames = e.drain_rendered()
    return ([p for k, _, p in frames if k == "u"], [p for k, s, p in frames if k == "m" and "forceOrder" in s])


def test_an_isolated_position_the_mark_puts_under_its_maintenance_is_liquidated_for_its_wallet_only():
    e = _engine()
    acct = e.accounts["main"]
    b = e.books[SYM]
    e.watch("ethusdc@forceOrder", "!forceOrder@arr")
    e.set_leverage("main", {"symbol": SYM, "leverage": "20"}, T0)
    _isolate(e)
    _market(e, "BUY", "1")
    resting = e.new_order("main", {"symbol": SYM, "side": "BUY", "type": "LIMIT", "timeInForce": "GTC",
                                   "price": b.price_str(b.best_bid() - 20000), "quantity": "0.1"}, T0)
    iw = Decimal(_risk(e)["isolatedWallet"])
    wallet = acct.wallet["USDC"]
    e.drain()
    e.advance(T0 + 3000)
    assert acct.counters["liquidations"] == 0                    # a quiet market: nothing yet
    e.jump(SYM, -4.0, T0 + 3000)                                 # 20x: 5 % less the maintenance would do it;
    e.advance(T0 + 5000)                                         # 4 % more the mark's next tick does not
    assert acct.counters["liquidations"] == 0
    e.jump(SYM, -1.5, T0 + 5000)
    e.advance(T0 + 7000)
    assert acct.counters["liquidations"] == 1
    user, public = _liquidation_frames(e)
    orders = [f["o"] for f in user if f["e"] == "ORDER_TRADE_UPDATE"]
    # ended by the exchange: EXPIRED, Binance's expire reason 5 "the account was liquidated"
    assert [(o["i"], o["x"], o["X"], o["er"]) for o in orders[:1]] == [(resting["orderId"], "EXPIRED", "EXPIRED", "5")]
    liq = orders[-1]
    assert (liq["o"], liq["ot"], liq["x"], liq["X"], liq["S"], liq["z"]) == (
        "LIQUIDATION", "LIQUIDATION", "CALCULATED", "FILLED", "SELL", "1")
    assert liq["c"].startswith("autoclose-")
    [update] = [f["a"] for f in user if f["e"] == "ACCOUNT_UPDATE"]
    assert update["P"][0]["pa"] == "0" and update["P"][0]["iw"] == "0.00000000"
    assert acct.wallet["USDC"] == wallet - iw                   # the isolated wallet, neither more nor less
    fee = next(i for i in acct.income if i["incomeType"] == "INSURANCE_CLEAR")
    realized = Decimal(liq["rp"])
    assert realized - Decimal(fee["income"]).copy_negate() == -iw and Decimal(fee["income"]) < 0
    # the fee's frame: Binance's reason INSURANCE_CLEAR, the fee as the balance change; the truth keeps it
    assert update["m"] == "INSURANCE_CLEAR" and Decimal(update["B"][0]["bc"]) == Decimal(fee["income"])
    assert Decimal(e.state("main", SYM)["positions"][SYM]["clearance_fee"]) == -Decimal(fee["income"])
    assert [f["o"]["S"] for f in public] == ["SELL", "SELL"]     # the symbol's stream and the market's
    assert e.state("main", SYM)["open_orders"] == [] and _risk(e)["positionAmt"] == "0.000"
    moves = e.margin_history("main", {"symbol": SYM})   # the fills' margin in, the whole wallet out
    assert sum((Decimal(m["amount"]) * (1 if m["type"] == 1 else -1) for m in moves), Decimal(0)) == 0
    trade = e.user_trades("main", {"symbol": SYM})[-1]
    assert trade["orderId"] == liq["i"] and Decimal(trade["realizedPnl"]) == realized
    listed = next(o for o in e.all_orders("main", {"symbol": SYM}) if o["orderId"] == liq["i"])
    assert (listed["type"], listed["origType"], listed["timeInForce"]) == ("LIMIT", "LIMIT", "IOC")   # REST: LIMIT
    assert e.query_order("main", {"symbol": SYM, "orderId": str(resting["orderId"])})["status"] == "EXPIRED"
    # GET /fapi/v1/forceOrders: the liquidation orders (ADL: none here; 7 days at most), as Binance's example
    [forced] = e.force_orders("main", {"symbol": SYM}, T0 + 7000)
    assert forced["orderId"] == liq["i"] and forced["status"] == "FILLED" and forced["executedQty"] == "1.000"
    assert (forced["type"], forced["origType"], forced["timeInForce"]) == ("LIMIT", "LIMIT", "IOC")
    assert e.force_orders("main", {"autoCloseType": "ADL"}, T0 + 7000) == []
    assert e.force_orders("main", {}, T0 + 8 * 86_400_000) == []                   # older than the week before now
    assert _code(lambda: e.force_orders("main", {"startTime": "0", "endTime": str(8 * 86_400_000)}, T0)) == -1127


def test_cross_positions_are_liquidated_together_when_the_cross_margin_runs_out():
    e = _engine()
    acct = e.accounts["main"]
    acct.wallet["USDC"] = Decimal(400)
    e.set_leverage("main", {"symbol": SYM, "leverage": "20"}, T0)
    _market(e, "SELL", "1")                                      # 3,000 short on 400: about 13 % to ruin
    liquidation = Decimal(_risk(e)["liquidationPrice"])
    e.jump(SYM, 11.0, T0)
    now = T0
    e.drain()
    calls = []
    while not acct.counters["liquidations"]:                     # the price creeps up 0.02 % a second
        assert e.books[SYM].mark < liquidation * Decimal("1.003") and now < T0 + 600_000
        e.jump(SYM, 0.02, now)
        now += 1000
        e.advance(now)
        calls += [p for k, _, p in e.drain_rendered() if k == "u" and p["e"] == "MARGIN_CALL"]
    assert _risk(e)["positionAmt"] == "0.000" and e.books[SYM].mark >= liquidation * Decimal("0.999")
    # the margin ratio passed 80 % on the way: one MARGIN_CALL (at most one a minute), the cross shape
    [call] = calls
    [row] = call["p"]
    assert set(call) == {"e", "E", "cw", "p"} and (row["s"], row["mt"], row["pa"], row["iw"]) == (SYM, "CROSSED", "-1.000", "0")
    assert Decimal(row["mm"]) >= Decimal("0.8") * (Decimal(call["cw"]) + Decimal(row["up"]))
    left = acct.wallet["USDC"]
    fee = -Decimal(next(i for i in acct.income if i["incomeType"] == "INSURANCE_CLEAR")["income"])
    assert left >= 0 and fee > 0 and left + fee <= Decimal("0.004") * 3500   # the maintenance, about, was left


def test_a_cross_position_the_mark_jumps_past_bankruptcy_leaves_the_wallet_at_zero_not_below():
    """A gap through the bankruptcy price: the liquidation fills at that price, the insurance fund takes
    the rest, and the account's wallet (and every figure Binance reports from it) ends at 0."""
    e = _engine()
    acct = e.accounts["main"]
    acct.wallet["USDC"] = Decimal(400)
    e.set_leverage("main", {"symbol": SYM, "leverage": "20"}, T0)
    _market(e, "SELL", "1")
    entry = acct.positions[SYM].entry
    e.jump(SYM, 30.0, T0)                        # 3,000 -> 3,900 in one step: 900 lost on 400
    e.advance(T0 + 2000)
    assert acct.counters["liquidations"] == 1 and _risk(e)["positionAmt"] == "0.000"
    trade = e.user_trades("main", {"symbol": SYM})[-1]
    price = Decimal(trade["price"])
    assert price < e.books[SYM].mark_dec()                           # better than the mark: the bankruptcy price
    assert Decimal(trade["realizedPnl"]) == (entry - price) * 1
    assert 0 <= acct.wallet["USDC"] < e.books[SYM].tick              # the wallet spent, to the tick
    usdc = _usdc(e)
    assert usdc["balance"] >= 0 and usdc["availableBalance"] >= 0
    assert Decimal(e.account_info("main", 3)["totalWalletBalance"]) >= 0


def test_cross_positions_past_bankruptcy_share_the_wallet_and_the_profits_in_proportion_to_their_loss():
    cfg = {"history": False, "symbols": [
        {"symbol": s, "base_asset": s[:-4], "quote_asset": "USDC", "start_price": p, "taker_rate": 0.0}
        for s, p in (("ETHUSDC", 3000), ("SOLUSDC", 150), ("LTCUSDC", 100))]}
    e = Engine(load_sim_config(cfg), seed=5, now_ms=T0)
    acct = e.accounts["main"]
    acct.wallet["USDC"] = Decimal(2500)
    for sym, side, qty in (("ETHUSDC", "BUY", "5"), ("SOLUSDC", "BUY", "100"), ("LTCUSDC", "SELL", "100")):
        e.set_leverage("main", {"symbol": sym, "leverage": "20"}, T0)
        e.new_order("main", {"symbol": sym, "side": side, "type": "MARKET", "quantity": qty}, T0)
    entries = {s: acct.positions[s].entry for s in ("ETHUSDC", "SOLUSDC", "LTCUSDC")}
    wallet = acct.wallet["USDC"]
    e.jump("ETHUSDC", -20.0, T0)                 # about 3,000 lost
    e.jump("SOLUSDC", -20.0, T0)                 # about 3,000 lost
    e.jump("LTCUSDC", -10.0, T0)                 # about 1,000 won by the short
    e.advance(T0 + 1000)                         # the mark's next tick
    assert acct.counters["liquidations"] == 1
    assert all(p.amount == 0 for p in acct.positions.values())
    trades = {s: e.user_trades("main", {"symbol": s})[-1] for s in entries}
    realized = {s: Decimal(t["realizedPnl"]) for s, t in trades.items()}
    assert realized["LTCUSDC"] > 0                                   # the profit at the mark
    assert Decimal(trades["LTCUSDC"]["price"]) == e.books["LTCUSDC"].tick * round(
        e.books["LTCUSDC"].mark / e.books["LTCUSDC"].tick_f)
    for sym in ("ETHUSDC", "SOLUSDC"):                               # the losses no worse than their share
        assert Decimal(trades[sym]["price"]) > e.books[sym].mark_dec() and realized[sym] < 0
        assert realized[sym] == (Decimal(trades[sym]["price"]) - entries[sym]) * Decimal(trades[sym]["qty"])
    loss = {s: (e.books[s].tick * round(e.books[s].mark / e.books[s].tick_f) - entries[s])
            * Decimal(trades[s]["qty"]) for s in ("ETHUSDC", "SOLUSDC")}
    share = (wallet + realized["LTCUSDC"]) / sum(-v for v in loss.values())
    for sym in ("ETHUSDC", "SOLUSDC"):                               # within a tick's worth of the share
        assert abs(realized[sym] - loss[sym] * share) <= e.books[sym].tick * Decimal(trades[sym]["qty"])
    assert 0 <= acct.wallet["USDC"] < 1                              # spent, never below 0


@pytest.mark.parametrize("move", [0.5, 0.0, -0.5])
def test_a_wallet_already_below_zero_is_brought_back_to_zero_by_the_liquidation(move):
    """A cross wallet an earlier close left below 0 (-50) with a long of 1 that wins, is flat or loses a
    little at the mark: the liquidation (once) closes it past the mark, at the price that spends the
    wallet to 0, the insurance fund covering the rest; never a crash of the engine."""
    e = _engine()
    acct = e.accounts["main"]
    e.set_leverage("main", {"symbol": SYM, "leverage": "20"}, T0)
    _market(e, "BUY", "1")
    entry = acct.positions[SYM].entry
    acct.wallet["USDC"] = Decimal(-50)
    if move:
        e.jump(SYM, move, T0)
    e.advance(T0 + 1000)
    e.advance(T0 + 3000)
    assert acct.counters["liquidations"] == 1 and acct.positions[SYM].amount == 0
    trade = e.user_trades("main", {"symbol": SYM})[-1]
    assert Decimal(trade["price"]) > max(entry, e.books[SYM].mark_dec())   # past the mark: the bankruptcy price
    assert 0 <= acct.wallet["USDC"] < e.books[SYM].tick


def test_no_liquidation_when_the_simulator_is_told_so():
    cfg = {"history": False, "liquidation": False,
           "symbols": [{"symbol": SYM, "base_asset": "ETH", "quote_asset": "USDC", "start_price": 3000}]}
    e = Engine(load_sim_config(cfg), seed=5, now_ms=T0)
    e.accounts["main"].wallet["USDC"] = Decimal(400)
    _market(e, "SELL", "1")
    e.jump(SYM, 20.0, T0)
    e.advance(T0 + 2000)
    assert e.accounts["main"].counters["liquidations"] == 0 and _risk(e)["positionAmt"] == "-1.000"


def test_a_cross_liquidation_takes_every_cross_symbol_of_the_asset_and_spares_an_isolated_one():
    """Two cross positions and a flat cross symbol with an order resting, beside an isolated position,
    all in USDC: the cross side's ruin closes both cross positions, cancels every cross order (the flat
    symbol's, and a conditional one: an order left there would fill into the emptied account), and
    leaves the isolated position, its order and its wallet alone."""
    cfg = {"history": False, "symbols": [
        {"symbol": s, "base_asset": s[:-4], "quote_asset": "USDC", "start_price": p, "taker_rate": 0.0}
        for s, p in (("ETHUSDC", 3000), ("SOLUSDC", 150), ("XRPUSDC", 2), ("BNBUSDC", 600))]}
    e = Engine(load_sim_config(cfg), seed=5, now_ms=T0)
    acct = e.accounts["main"]
    acct.wallet["USDC"] = Decimal(2000)
    e.set_margin_type("main", {"symbol": "BNBUSDC", "marginType": "ISOLATED"}, T0)
    for sym, qty in (("ETHUSDC", "5"), ("SOLUSDC", "20"), ("BNBUSDC", "1")):
        e.new_order("main", {"symbol": sym, "side": "BUY", "type": "MARKET", "quantity": qty}, T0)

    def limit(sym: str, qty: str) -> dict:
        b = e.books[sym]
        return e.new_order("main", {"symbol": sym, "side": "BUY", "type": "LIMIT", "timeInForce": "GTC",
                                    "price": b.price_str(b.best_bid() * 8 // 10), "quantity": qty}, T0)

    flat_order, isolated_order = limit("XRPUSDC", "10"), limit("BNBUSDC", "0.05")
    stop = e.algo.place("main", {"algoType": "CONDITIONAL", "symbol": "XRPUSDC", "side": "BUY",
                                 "type": "STOP_MARKET", "triggerPrice": "3", "quantity": "50"}, T0)
    bnb_wallet = acct.positions["BNBUSDC"].isolated_wallet
    now = T0
    while not acct.counters["liquidations"]:          # ETH and SOL fall 0.5 % a second
        assert now < T0 + 300_000
        e.jump("ETHUSDC", -0.5, now)
        e.jump("SOLUSDC", -0.5, now)
        now += 1000
        e.advance(now)
    assert acct.counters["liquidations"] == 1
    assert acct.positions["ETHUSDC"].amount == 0 and acct.positions["SOLUSDC"].amount == 0
    open_ids = {o.order_id for o in acct.open.values()}
    assert flat_order["orderId"] not in open_ids and isolated_order["orderId"] in open_ids
    assert not [a for a in e.algo.open.values() if a.account == "main"]
    # ended by the exchange: EXPIRED (the Algo Service's "canceled by the system"), the order's er 5
    assert [a.status for a in e.algo.closed["main"] if a.algo_id == stop["algoId"]] == ["EXPIRED"]
    assert e.query_order("main", {"symbol": "XRPUSDC", "orderId": str(flat_order["orderId"])})["status"] == "EXPIRED"
    bnb = e.books["BNBUSDC"]
    assert bnb.step * acct.positions["BNBUSDC"].amount == 1 and acct.positions["BNBUSDC"].isolated_wallet == bnb_wallet
    assert e.cross_wallet(acct, "USDC") >= 0


def test_an_amendment_that_needs_more_margin_than_is_left_is_refused():
    e = _engine()
    acct = e.accounts["main"]
    acct.wallet["USDC"] = Decimal(100)
    b = e.books[SYM]
    o = e.new_order("main", {"symbol": SYM, "side": "BUY", "type": "LIMIT", "timeInForce": "GTC",
                             "price": b.price_str(b.best_bid() - 500), "quantity": "0.5"}, T0)   # 1,500 of 2,000 at 20x
    amend = {"symbol": SYM, "orderId": str(o["orderId"]), "side": "BUY", "price": o["price"]}
    assert _code(lambda: e.modify_order("main", {**amend, "quantity": "0.7"}, T0)) == -2019
    assert e.modify_order("main", {**amend, "quantity": "0.6"}, T0)["origQty"] == "0.600"   # 1,800: it fits
    assert e.modify_order("main", {**amend, "quantity": "0.2"}, T0)["origQty"] == "0.200"   # smaller: always


def test_the_adl_quantile_estimates_the_positions_place_by_its_return_on_margin():
    e = _engine()
    flat = {"symbol": SYM, "adlQuantile": {"LONG": 0, "SHORT": 0, "BOTH": 0}}
    assert e.adl_quantiles("main", {"symbol": SYM}) == [flat] and e.adl_quantiles("main", {}) == []
    e.set_leverage("main", {"symbol": SYM, "leverage": "20"}, T0)
    _market(e, "SELL", "1")
    assert e.adl_quantiles("main", {}) == [{"symbol": SYM, "adlQuantile": {"LONG": 0, "SHORT": 0, "BOTH": 1}}]
    e.jump(SYM, -2.0, T0)                 # 20x: some 40 % on the margin
    e.advance(T0 + 2000)
    [row] = e.adl_quantiles("main", {"symbol": SYM})
    assert row["adlQuantile"] == {"LONG": 0, "SHORT": 0, "BOTH": 2} and _risk(e, 3)["adl"] == 2
    e.jump(SYM, -5.0, T0 + 2000)          # some 140 %
    e.advance(T0 + 4000)
    assert e.adl_quantiles("main", {})[0]["adlQuantile"]["BOTH"] == 4 and _risk(e, 3)["adl"] == 4


def test_the_break_even_price_moves_the_entry_by_the_open_positions_fees_and_funding():
    """Binance's examples: an entry of 58,039.5 breaks even at 58,062.7158 (x 1.0004, their taker fee; the
    simulator's default taker fee is 0.05 %)."""
    e = _engine()
    acct = e.accounts["main"]
    _market(e, "BUY", "1")
    fee = sum((Decimal(t.commission) for t in acct.trades), Decimal(0))
    risk, entry = _risk(e, 3), Decimal(_risk(e, 3)["entryPrice"])
    assert Decimal(risk["breakEvenPrice"]) == q8(entry + fee)
    assert abs(fee - entry * Decimal("0.0005")) <= Decimal("0.00000002")   # the fills' fee, the taker's
    assert _risk(e, 2)["breakEvenPrice"] == risk["breakEvenPrice"]
    update = _updates(e)[-1]
    assert Decimal(update["a"]["P"][0]["bep"]) == Decimal(risk["breakEvenPrice"]) != Decimal(update["a"]["P"][0]["ep"])
    _market(e, "SELL", "0.5")                    # the closed half takes half the cost: the same per unit
    assert abs(Decimal(_risk(e)["breakEvenPrice"]) - (entry + fee)) <= Decimal("0.00000002")
    e.set_funding_rate(SYM, "0.001")
    [charge] = e.settle_funding(T0 + 1000, SYM)  # the long pays: its break-even rises by the fee per unit
    paid = -Decimal(charge["fee"])
    assert paid > 0
    assert abs(Decimal(_risk(e)["breakEvenPrice"]) - (entry + fee + paid / Decimal("0.5"))) <= Decimal("0.00000004")
    before = len(acct.trades)
    _market(e, "SELL", "1.5")                    # a flip to a short of 1: the fees of what opened it, below its entry
    long_left, opened_fee = Decimal("0.5"), Decimal(0)
    for t in acct.trades[before:]:
        qty = Decimal(t.qty)
        if qty > long_left:
            opened_fee += Decimal(t.commission) * (qty - long_left) / qty
        long_left = max(long_left - qty, Decimal(0))
    short = _risk(e, 3)
    assert short["positionAmt"] == "-1.000" and opened_fee > 0
    assert abs(Decimal(short["breakEvenPrice"]) - (Decimal(short["entryPrice"]) - opened_fee)) <= Decimal("0.00000004")
    _market(e, "BUY", "1")
    assert _risk(e, 2)["breakEvenPrice"] == "0.0"


def test_auto_deleveraging_closes_part_of_a_position_at_the_mark_without_a_fee():
    e = _engine()
    acct = e.accounts["main"]
    b = e.books[SYM]
    _isolate(e)
    _market(e, "BUY", "1")
    iw = Decimal(_risk(e)["isolatedWallet"])
    wallet, entry = acct.wallet["USDC"], Decimal(_risk(e)["entryPrice"])
    e.drain()
    order = e.deleverage("main", SYM, "0.4", T0 + 1000)
    assert order["clientOrderId"] == "adl_autoclose"   # REST as Binance's forceOrders example: LIMIT, GTC
    assert (order["type"], order["origType"], order["timeInForce"]) == ("LIMIT", "LIMIT", "GTC")
    assert order["status"] == "FILLED" and order["executedQty"] == "0.400"
    px = Decimal(order["avgPrice"])
    assert px == b.mark_dec().quantize(b.tick)
    assert acct.wallet["USDC"] == wallet + q8((px - entry) * Decimal("0.4"))   # the realized P&L, no fee
    risk = _risk(e)
    assert risk["positionAmt"] == "0.600" and Decimal(risk["entryPrice"]) == entry
    assert Decimal(risk["isolatedWallet"]) == iw - q8(iw * Decimal("0.4"))     # the closed share went back
    frames = [p for k, _, p in e.drain_rendered() if k == "u" and p["e"] == "ORDER_TRADE_UPDATE"]
    assert [(f["o"]["c"], f["o"]["x"], f["o"]["X"], f["o"]["n"]) for f in frames] == [
        ("adl_autoclose", "CALCULATED", "FILLED", "0")]
    assert [o["clientOrderId"] for o in e.force_orders("main", {"autoCloseType": "ADL"}, T0 + 2000)] == ["adl_autoclose"]
    assert e.force_orders("main", {"autoCloseType": "LIQUIDATION"}, T0 + 2000) == []
    assert len(e.force_orders("main", {}, T0 + 2000)) == 1 and acct.counters["deleveraged"] == 1
    assert _code(lambda: e.deleverage("main", SYM, "0.7", T0 + 2000)) == -1130   # more than is held
    e.deleverage("main", SYM, None, T0 + 3000)
    assert _risk(e)["positionAmt"] == "0.000" and Decimal(_risk(e)["isolatedWallet"]) == 0


def test_open_orders_take_margin_for_the_side_that_grows_the_position_most_and_a_profit_is_not_withdrawable():
    """Binance's margin FAQ, one-way mode: a symbol's orders need max(|P + bids|, |P - asks|) - |P| over the
    leverage (its worked example: a long of 10,000 at 2x, a bid of 1,900 and an ask of 2,200: 950 beside the
    position's 5,000). The simulator added both sides (2,050), and refused a market maker's orders Binance
    takes. A profit not realized is neither withdrawable nor addable to an isolated position; what an
    isolated position gives back counts its profit, less its maintenance (FAQ 360038447311)."""
    e = _engine()
    acct = e.accounts["main"]
    b = e.books[SYM]
    e.set_leverage("main", {"symbol": SYM, "leverage": "2"}, T0)
    e.set_position("main", SYM, "2", None, T0)
    mark = b.mark_dec()
    held = 2 * mark

    def limit(side: str, price: Decimal, qty: str) -> dict:
        return e.new_order("main", {"symbol": SYM, "side": side, "type": "LIMIT", "timeInForce": "GTC",
                                    "price": b.price_str(int(price / b.tick)), "quantity": qty}, T0)

    before = _usdc(e)["availableBalance"]
    bid, ask = limit("BUY", mark * Decimal("0.95"), "0.2"), limit("SELL", mark * Decimal("1.05"), "0.3")
    bids = Decimal(bid["price"]) * Decimal("0.2")
    asks = Decimal(ask["price"]) * Decimal("0.3")
    risk = _risk(e, 3)
    faq = q8(max(abs(held + bids), abs(held - asks)) - held) / 2
    assert Decimal(risk["openOrderInitialMargin"]) == faq == q8(bids / 2)
    assert _usdc(e)["availableBalance"] == before - q8(bids / 2)   # the ask only reduces the long: no margin
    reducing = limit("SELL", mark * Decimal("1.06"), "1.5")        # asks 1.8 of a long of 2: still none
    assert _usdc(e)["availableBalance"] == before - q8(bids / 2)
    e.cancel_order("main", {"symbol": SYM, "orderId": str(reducing["orderId"])}, T0)
    # the whole cross side on a bid: refused by the old sum of both sides, taken by the FAQ's margin
    room = _usdc(e)["availableBalance"] * 2 / (mark * Decimal("0.95"))
    qty = (room * Decimal("0.99")).quantize(Decimal("0.001"))
    assert limit("BUY", mark * Decimal("0.95"), str(qty))["status"] == "NEW"
    # a profit: withdrawable up to the cross wallet less maintenance, never the profit
    e.cancel_all("main", {"symbol": SYM}, T0)
    e.set_leverage("main", {"symbol": SYM, "leverage": "20"}, T0)
    e.set_position("main", SYM, "20", str(mark / 2), T0)
    row = next(r for r in e.balances("main") if r["asset"] == "USDC")
    assert Decimal(row["availableBalance"]) > Decimal(row["crossWalletBalance"]) >= Decimal(row["maxWithdrawAmount"])
    account = e.account_info("main", 2)
    assert Decimal(account["maxWithdrawAmount"]) <= Decimal(account["totalCrossWalletBalance"])


def test_liquidation_streams_push_each_symbols_latest_liquidation_once_a_second():
    """Binance: "for each symbol, only the latest one liquidation order within 1000ms will be pushed as
    the snapshot". Two accounts liquidated at one mark tick: one frame a stream, the later one; a third
    liquidated at a tick later in the same second waits for the next second's push."""
    cfg = {"history": False, "mark_interval_ms": 250, "accounts": [{"name": "main"}, {"name": "b"}, {"name": "c"}],
           "symbols": [{"symbol": SYM, "base_asset": "ETH", "quote_asset": "USDC", "start_price": 3000,
                        "taker_rate": 0.0, "level_qty": 0.5}]}
    e = Engine(load_sim_config(cfg), seed=5, now_ms=T0)
    e.watch("ethusdc@forceOrder", "!forceOrder@arr")
    e.set_position("main", SYM, "200", "3000", T0)
    e.set_position("b", SYM, "150", "3000", T0)
    e.drain()
    e.jump(SYM, -60.0, T0 + 100)
    e.advance(T0 + 250)   # the mark's tick: both liquidated
    assert (e.accounts["main"].counters["liquidations"], e.accounts["b"].counters["liquidations"]) == (1, 1)
    _, public = _liquidation_frames(e)
    assert [(f["o"]["q"], f["o"]["S"]) for f in public] == [("150.000", "SELL")] * 2, public   # each stream once
    e.set_position("c", SYM, "100", "3000", T0 + 300)   # beyond its margin at the mark
    e.advance(T0 + 750)
    assert e.accounts["c"].counters["liquidations"] == 1 and _liquidation_frames(e)[1] == []   # held
    e.advance(T0 + 1000)
    assert [f["o"]["q"] for f in _liquidation_frames(e)[1]] == ["100.000"] * 2
