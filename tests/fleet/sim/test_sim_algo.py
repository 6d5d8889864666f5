"""The simulator's Algo Service in accelerated time: conditional orders wait outside the book, trigger at
their price, hand an order to the matching engine and report each status as ALGO_UPDATE."""

from __future__ import annotations

from decimal import Decimal

import pytest

from fleet.sim.config import load_sim_config
from fleet.sim.engine import Engine, SimApiError

T0 = 1_800_000_000_000


def _engine() -> Engine:
    cfg = {"symbols": [{"symbol": "ETHUSDC", "base_asset": "ETH", "quote_asset": "USDC", "start_price": 3000,
                        "taker_rate": 30.0, "level_qty": 0.05, "taker_mean_qty": 0.05}],
           "market": {"volatility": 0.5, "jump_rate_per_hour": 0.0}}
    e = Engine(load_sim_config(cfg), seed=5, now_ms=T0)
    e.advance(T0 + 2000)
    e.drain()
    return e


def _algo(e: Engine, **kw: str) -> dict:
    return e.algo.place("main", {"algoType": "CONDITIONAL", "symbol": "ETHUSDC", **kw}, e.now_ms)


def _updates(e: Engine) -> list[dict]:
    return [p for k, _, p in e.drain_rendered() if k == "u" and p["e"] == "ALGO_UPDATE"]


def _run(e: Engine, ms: int) -> None:
    end = e.now_ms + ms
    while e.now_ms < end:
        e.advance(e.now_ms + 50)


def _refused(code: int, fn, *args, **kw) -> None:
    with pytest.raises(SimApiError) as err:
        fn(*args, **kw)
    assert err.value.code == code, err.value


def test_a_stop_market_close_all_triggers_at_the_mark_and_closes_the_position():
    e = _engine()
    b = e.books["ETHUSDC"]
    e.new_order("main", {"symbol": "ETHUSDC", "side": "BUY", "type": "MARKET", "quantity": "0.100"}, e.now_ms)
    assert e.accounts["main"].position("ETHUSDC").amount > 0
    stop = b.price_str(round(b.mark * 0.98 / b.tick_f))
    placed = _algo(e, side="SELL", type="STOP_MARKET", triggerPrice=stop, closePosition="true",
                   workingType="MARK_PRICE", clientAlgoId="stop-1")
    assert placed["algoStatus"] == "NEW" and placed["triggerPrice"] == stop and placed["closePosition"] is True
    assert placed["timeInForce"] == "GTE_GTC"
    assert [u["o"]["X"] for u in _updates(e)] == ["NEW"]
    # one close-all per side and type (a take-profit beside it is fine)
    _refused(-4130, _algo, e, side="SELL", type="STOP_MARKET", triggerPrice=b.price_str(round(b.mark * 0.97 / b.tick_f)),
             closePosition="true", workingType="MARK_PRICE")
    _algo(e, side="SELL", type="TAKE_PROFIT_MARKET", triggerPrice=b.price_str(round(b.mark * 1.5 / b.tick_f)),
          closePosition="true", workingType="MARK_PRICE", clientAlgoId="tp-1")
    e.algo.cancel("main", {"clientAlgoId": "tp-1"}, e.now_ms)
    e.drain_rendered()
    assert e.open_orders("main", "ETHUSDC") == []   # not in the book
    _run(e, 1000)
    assert [u["o"]["X"] for u in _updates(e)] == []   # not reached: waits
    e.jump("ETHUSDC", -3.0, e.now_ms)
    _run(e, 100)
    frames = [p for k, _, p in e.drain_rendered() if k == "u" and p["e"] in ("ALGO_UPDATE", "ORDER_TRADE_UPDATE")]
    algo = [f["o"] for f in frames if f["e"] == "ALGO_UPDATE"]
    assert [u["X"] for u in algo] == ["TRIGGERING", "TRIGGERED", "FINISHED"]
    assert algo[0]["ai"] == "" and (algo[0]["ap"], algo[0]["aq"], algo[0]["act"]) == ("0.00000", "0.00000", "0")
    assert algo[0]["tt"] > 0 and algo[0]["f"] == "GTE_GTC"   # a close-all lives as long as the position
    order_id = algo[1]["ai"]
    assert algo[1]["act"] == "MARKET" and order_id and algo[2]["aq"] == "0.100" and Decimal(algo[2]["ap"]) > 0
    fills = [f["o"] for f in frames if f["e"] == "ORDER_TRADE_UPDATE"]
    assert {f["c"] for f in fills} == {"stop-1"} and str(fills[0]["i"]) == order_id and fills[-1]["X"] == "FILLED"
    assert fills[0]["R"] is True   # a close-all is reduce-only
    assert e.accounts["main"].position("ETHUSDC").amount == 0
    q = e.algo.query("main", {"clientAlgoId": "stop-1"})
    assert (q["algoStatus"], q["actualOrderId"], q["actualType"], q["actualQty"]) == ("FINISHED", order_id,
                                                                                     "MARKET", "0.100")
    assert (q["tpTriggerPrice"], q["slPrice"], q["tpOrderType"]) == ("0.000", "0.000", "")   # Binance's fields
    assert e.algo.open_orders("main", {}) == []


def test_a_take_profit_limit_rests_once_triggered_and_finishes_with_its_order():
    e = _engine()
    b = e.books["ETHUSDC"]
    trigger = b.price_str(round(b.mark * 0.99 / b.tick_f))
    limit = b.price_str(round(b.mark * 0.95 / b.tick_f))
    placed = _algo(e, side="BUY", type="TAKE_PROFIT", triggerPrice=trigger, price=limit, quantity="0.050",
                   workingType="MARK_PRICE", timeInForce="GTC")
    assert placed["price"] == limit and placed["orderType"] == "TAKE_PROFIT"
    assert [a["algoId"] for a in e.algo.open_orders("main", {"symbol": "ETHUSDC"})] == [placed["algoId"]]
    e.jump("ETHUSDC", -2.0, e.now_ms)
    _run(e, 100)
    assert [u["o"]["X"] for u in _updates(e)] == ["NEW", "TRIGGERING", "TRIGGERED"]
    [resting] = e.open_orders("main", "ETHUSDC")
    assert resting["type"] == "LIMIT" and resting["price"] == limit
    assert resting["clientOrderId"] == placed["clientAlgoId"]
    e.cancel_order("main", {"symbol": "ETHUSDC", "orderId": str(resting["orderId"])}, e.now_ms)
    _run(e, 100)
    [finished] = _updates(e)
    assert finished["o"]["X"] == "FINISHED" and Decimal(finished["o"]["aq"]) == 0


def test_refusals_cancel_expiry_and_the_history():
    e = _engine()
    b = e.books["ETHUSDC"]
    last = round(b.last_price / b.tick_f)
    # a stop that would trigger at once, a conditional type on /order, a close-all with a quantity
    _refused(-2021, _algo, e, side="BUY", type="STOP_MARKET", triggerPrice=b.price_str(last - 50), quantity="0.050")
    _refused(-4120, e.new_order, "main", {"symbol": "ETHUSDC", "side": "BUY", "type": "STOP_MARKET",
                                          "stopPrice": b.price_str(last + 50), "quantity": "0.050"}, e.now_ms)
    _refused(-4137, _algo, e, side="SELL", type="STOP_MARKET", triggerPrice=b.price_str(last - 50),
             closePosition="true", quantity="0.050")
    _refused(-1106, _algo, e, side="SELL", type="STOP_MARKET", triggerPrice=b.price_str(last - 50), quantity="0.050",
             price=b.price_str(last))
    _refused(-1102, _algo, e, side="SELL", type="STOP", triggerPrice=b.price_str(last - 50), quantity="0.050")
    _refused(-5038, _algo, e, side="SELL", type="STOP_MARKET", triggerPrice=b.price_str(last - 50), quantity="0.050",
             priceMatch="OPPONENT")
    _refused(-5037, _algo, e, side="SELL", type="STOP", triggerPrice=b.price_str(last - 50), quantity="0.050",
             priceMatch="QUEUE_7")
    _refused(-1130, e.algo.place, "main", {"algoType": "VP", "symbol": "ETHUSDC"}, e.now_ms)
    assert e.algo.open_orders("main", {}) == [] and _updates(e) == []   # nothing placed, nothing pushed
    # a cancel, by id; a second one finds nothing
    a = _algo(e, side="BUY", type="STOP_MARKET", triggerPrice=b.price_str(last + 500), quantity="0.050")
    assert e.algo.cancel("main", {"algoId": str(a["algoId"])}, e.now_ms)["code"] == "200"
    _refused(-2011, e.algo.cancel, "main", {"algoId": str(a["algoId"])}, e.now_ms)
    assert e.algo.query("main", {"algoId": str(a["algoId"])})["algoStatus"] == "CANCELED"
    _refused(-2013, e.algo.query, "main", {"algoId": "1"})
    # GTD: expired at its date, on the clock
    gtd = (e.now_ms // 1000 + 700) * 1000
    g = _algo(e, side="SELL", type="STOP", triggerPrice=b.price_str(last - 500), price=b.price_str(last - 500),
              quantity="0.050", timeInForce="GTD", goodTillDate=str(gtd))
    _run(e, gtd - e.now_ms + 100)
    assert [u["o"]["X"] for u in _updates(e)] == ["NEW", "CANCELED", "NEW", "EXPIRED"]
    assert e.algo.query("main", {"algoId": str(g["algoId"])})["algoStatus"] == "EXPIRED"
    # cancel-all of a symbol; the history holds every one, the oldest first
    for i in range(3):
        _algo(e, side="BUY", type="STOP_MARKET", triggerPrice=b.price_str(last + 500 + i), quantity="0.050")
    assert e.algo.cancel_all("main", {"symbol": "ETHUSDC"}, e.now_ms)["code"] == 200
    rows = e.algo.all_orders("main", {"symbol": "ETHUSDC"}, e.now_ms)
    assert [r["algoStatus"] for r in rows] == ["CANCELED", "EXPIRED"] + ["CANCELED"] * 3
    assert e.algo.all_orders("main", {"symbol": "ETHUSDC", "algoId": str(rows[2]["algoId"])}, e.now_ms) == rows[2:]


def test_a_trailing_stop_follows_the_high_and_triggers_on_the_pullback():
    e = _engine()
    b = e.books["ETHUSDC"]
    placed = _algo(e, side="SELL", type="TRAILING_STOP_MARKET", callbackRate="1", quantity="0.050",
                   workingType="MARK_PRICE")
    assert placed["callbackRate"] == "1" and placed["activatePrice"] and placed["triggerPrice"] == "0"
    _refused(-1130, _algo, e, side="SELL", type="TRAILING_STOP_MARKET", callbackRate="25", quantity="0.050")
    _refused(-2021, _algo, e, side="SELL", type="TRAILING_STOP_MARKET", callbackRate="1", quantity="0.050",
             workingType="MARK_PRICE", activatePrice=b.price_str(round(b.mark * 0.9 / b.tick_f)))
    e.jump("ETHUSDC", 3.0, e.now_ms)   # a new high: no trigger
    _run(e, 200)
    assert [u["o"]["X"] for u in _updates(e)] == ["NEW"]
    high = b.mark
    e.jump("ETHUSDC", -2.0, e.now_ms)  # 2 % off the high: more than the 1 % callback
    _run(e, 100)
    algo = [u["o"] for u in _updates(e)]
    assert [u["X"] for u in algo] == ["TRIGGERING", "TRIGGERED", "FINISHED"] and algo[0]["ia"] is True
    assert b.mark <= high * 0.99 and e.accounts["main"].position("ETHUSDC").amount < 0


def test_a_buy_stop_on_the_last_trade_and_a_sell_take_profit_trigger_from_below():
    e = _engine()
    b = e.books["ETHUSDC"]
    last = round(b.last_price / b.tick_f)
    stop = _algo(e, side="BUY", type="STOP_MARKET", triggerPrice=b.price_str(last + 30), quantity="0.050")
    tp = _algo(e, side="SELL", type="TAKE_PROFIT_MARKET", triggerPrice=b.price_str(last + 30), quantity="0.050",
               workingType="MARK_PRICE")
    assert stop["workingType"] == "CONTRACT_PRICE"
    e.jump("ETHUSDC", 2.0, e.now_ms)   # the mark at once; the last trade once takers trade up there
    _run(e, 3000)
    assert b.last_price >= (last + 30) * b.tick_f
    done = {u["o"]["aid"]: u["o"] for u in _updates(e) if u["o"]["X"] == "FINISHED"}
    assert set(done) == {stop["algoId"], tp["algoId"]}
    assert all(Decimal(o["aq"]) == Decimal("0.050") for o in done.values())
    assert e.accounts["main"].position("ETHUSDC").amount == 0   # bought 0.05, sold 0.05


def test_rejected_at_the_engine_expired_close_all_limits_and_duplicates():
    e = _engine()
    b = e.books["ETHUSDC"]
    mark = round(b.mark / b.tick_f)
    # a post-only limit that crosses once triggered: refused by the engine, REJECTED with its reason
    gtx = _algo(e, side="BUY", type="TAKE_PROFIT", triggerPrice=b.price_str(mark - 20),
                price=b.price_str(mark + 400), quantity="0.050", timeInForce="GTX", workingType="MARK_PRICE")
    # a close-all needs a position; once the position is closed it EXPIRES
    _refused(-4509, _algo, e, side="SELL", type="STOP_MARKET", triggerPrice=b.price_str(mark - 20),
             closePosition="true", workingType="MARK_PRICE")
    e.set_position("main", "ETHUSDC", "0.050", None, e.now_ms)
    close = _algo(e, side="SELL", type="STOP_MARKET", triggerPrice=b.price_str(mark - 20), closePosition="true",
                  workingType="MARK_PRICE")
    _refused(-2021, _algo, e, side="SELL", type="TAKE_PROFIT_MARKET", triggerPrice=b.price_str(mark - 20),
             closePosition="true", workingType="MARK_PRICE")
    e.set_position("main", "ETHUSDC", "0", None, e.now_ms)
    e.jump("ETHUSDC", -1.0, e.now_ms)
    _run(e, 100)
    final = {u["o"]["aid"]: u["o"] for u in _updates(e)}
    assert final[gtx["algoId"]]["X"] == "REJECTED" and "Post Only" in final[gtx["algoId"]]["rm"]
    assert final[close["algoId"]]["X"] == "EXPIRED" and final[close["algoId"]]["rm"] == "position closed"
    assert e.open_orders("main", "ETHUSDC") == []
    # a clientAlgoId is unique among open ones; 200 open per account
    _algo(e, side="BUY", type="STOP_MARKET", triggerPrice=b.price_str(mark + 900), quantity="0.050",
          clientAlgoId="dup")
    _refused(-4116, _algo, e, side="BUY", type="STOP_MARKET", triggerPrice=b.price_str(mark + 901),
             quantity="0.050", clientAlgoId="dup")
    for i in range(199):
        _algo(e, side="BUY", type="STOP_MARKET", triggerPrice=b.price_str(mark + 1000 + i), quantity="0.050")
    _refused(-4045, _algo, e, side="BUY", type="STOP_MARKET", triggerPrice=b.price_str(mark + 2000),
             quantity="0.050")
    opened = e.algo.open_orders("main", {})
    assert len(opened) == 200
    one = e.algo.open_orders("main", {"algoId": str(opened[7]["algoId"])})
    assert [o["algoId"] for o in one] == [opened[7]["algoId"]]
    _refused(-1127, e.algo.all_orders, "main", {"symbol": "ETHUSDC", "startTime": "0",
                                                "endTime": str(8 * 86_400_000)}, e.now_ms)
    assert len(e.algo.all_orders("main", {"symbol": "ETHUSDC", "limit": "5"}, e.now_ms)) == 5


def test_a_gtd_limit_stop_triggered_in_its_last_600_s_reaches_the_book_with_its_date():
    e = _engine()
    b = e.books["ETHUSDC"]
    mark = round(b.mark / b.tick_f)
    gtd = (e.now_ms // 1000 + 700) * 1000
    a = _algo(e, side="SELL", type="STOP", triggerPrice=b.price_str(mark * 95 // 100),
              price=b.price_str(mark * 94 // 100), quantity="0.050", timeInForce="GTD", goodTillDate=str(gtd),
              workingType="MARK_PRICE")
    _run(e, 300_000)   # 400 s before its date
    e.jump("ETHUSDC", -8.0, e.now_ms)   # through the trigger and below the limit: the sell order rests
    _run(e, 100)
    assert [u["o"]["X"] for u in _updates(e) if u["o"]["aid"] == a["algoId"]] == ["NEW", "TRIGGERING", "TRIGGERED"]
    [resting] = e.open_orders("main", "ETHUSDC")
    assert resting["timeInForce"] == "GTD" and resting["goodTillDate"] == gtd
    _run(e, gtd - e.now_ms + 1000)   # the engine expires it at its date; the algo order is FINISHED
    assert e.open_orders("main", "ETHUSDC") == []
    assert e.algo.query("main", {"algoId": str(a["algoId"])})["algoStatus"] == "FINISHED"


def test_a_buy_trailing_stop_with_an_activation_price_waits_for_it():
    e = _engine()
    b = e.books["ETHUSDC"]
    act = b.price_str(round(b.mark * 0.98 / b.tick_f))
    a = _algo(e, side="BUY", type="TRAILING_STOP_MARKET", callbackRate="0.5", activatePrice=act, quantity="0.050",
              workingType="MARK_PRICE")
    assert a["activatePrice"] == act
    e.jump("ETHUSDC", 1.0, e.now_ms)   # a rise before activation: nothing
    _run(e, 100)
    assert [u["o"]["X"] for u in _updates(e)] == ["NEW"]
    e.jump("ETHUSDC", -4.0, e.now_ms)  # through the activation price: active, the low followed
    _run(e, 100)
    assert _updates(e) == []
    e.jump("ETHUSDC", 1.0, e.now_ms)   # 1 % up from the low: more than the 0.5 % callback
    _run(e, 100)
    algo = [u["o"] for u in _updates(e)]
    assert [u["X"] for u in algo] == ["TRIGGERING", "TRIGGERED", "FINISHED"] and algo[0]["ia"] is True
    assert e.accounts["main"].position("ETHUSDC").amount > 0
