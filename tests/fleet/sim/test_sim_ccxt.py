"""A third-party Binance client (ccxt's binanceusdm) works against the simulator unchanged, URLs aside."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
import ccxt
import requests
import ccxt.pro

from fleet.sim.server import SimServer
from fleet.sim.thread import SimThread


def _client(sim: SimThread | SimServer, cls: type = ccxt.binanceusdm) -> Any:
    """``cls`` (ccxt's binanceusdm, or ccxt.pro's) with its REST URLs on the simulator."""
    _, key, secret = sim.accounts[0]
    ex = cls({"apiKey": key, "secret": secret, "enableRateLimit": False,
              "options": {"fetchCurrencies": False, "fetchMargins": False}})
    base = sim.rest_url
    api = dict(ex.urls["api"])
    for name in list(api):
        if name.startswith("fapi"):
            version = {"fapiPublicV2": "v2", "fapiPrivateV2": "v2", "fapiPublicV3": "v3",
                       "fapiPrivateV3": "v3"}.get(name, "v1")
            api[name] = f"{base}/fapi/{version}" if name != "fapiData" else f"{base}/futures/data"
    ex.urls["api"] = api
    return ex


def test_ccxt_binanceusdm_trades_against_the_simulator(sim_thread):
    ex = _client(sim_thread)
    markets = ex.load_markets()
    eth = markets["ETH/USDC:USDC"]
    assert eth["id"] == "ETHUSDC" and eth["precision"]["price"] == 0.01 and eth["limits"]["cost"]["min"] == 5
    book = ex.fetch_order_book("ETH/USDC:USDC", limit=5)
    bid, ask = book["bids"][0][0], book["asks"][0][0]
    assert 0 < bid < ask
    price = float(ex.price_to_precision("ETH/USDC:USDC", bid * 0.98))
    order = ex.create_order("ETH/USDC:USDC", "limit", "buy", 0.01, price, {"postOnly": True})
    assert order["status"] == "open" and order["price"] == price
    open_orders = ex.fetch_open_orders("ETH/USDC:USDC")
    assert [o["id"] for o in open_orders] == [order["id"]]
    assert open_orders[0]["postOnly"] is True
    cancelled = ex.cancel_order(order["id"], "ETH/USDC:USDC")
    assert cancelled["status"] == "canceled"
    assert ex.fetch_open_orders("ETH/USDC:USDC") == []
    market = ex.create_order("ETH/USDC:USDC", "market", "buy", 0.02)
    assert market["id"]
    fetched = ex.fetch_order(market["id"], "ETH/USDC:USDC")
    assert fetched["status"] == "closed" and fetched["filled"] == 0.02
    positions = ex.fetch_positions(["ETH/USDC:USDC"])
    pos = next(p for p in positions if p["symbol"] == "ETH/USDC:USDC")
    assert pos["contracts"] == 0.02 and pos["side"] == "long"
    balance = ex.fetch_balance()
    assert balance["USDT"]["total"] == 100000
    assert 99990 < balance["USDC"]["total"] < 100000  # the taker fee was charged


def test_ccxt_binanceusdm_cancels_several_orders_at_once(sim_thread):
    """ccxt's cancelOrders sends Binance's batch cancel with the lower-case spellings ``orderidlist`` and
    ``origclientorderidlist``, which Binance takes as it takes its documented camelCase ones."""
    ex = _client(sim_thread)
    ex.load_markets()
    bid = ex.fetch_order_book("ETH/USDC:USDC", limit=5)["bids"][0][0]
    prices = [float(ex.price_to_precision("ETH/USDC:USDC", bid * f)) for f in (0.97, 0.96, 0.95, 0.94)]
    orders = [ex.create_order("ETH/USDC:USDC", "limit", "buy", 0.01, p, {"clientOrderId": f"ccxt-batch-{i}"})
              for i, p in enumerate(prices)]
    by_id = ex.cancel_orders([o["id"] for o in orders[:2]], "ETH/USDC:USDC")
    assert sorted(o["id"] for o in by_id) == sorted(o["id"] for o in orders[:2])
    assert all(o["status"] == "canceled" for o in by_id)
    by_client_id = ex.cancel_orders([], "ETH/USDC:USDC", {"clientOrderIds": ["ccxt-batch-2", "ccxt-batch-3"]})
    assert sorted(o["clientOrderId"] for o in by_client_id) == ["ccxt-batch-2", "ccxt-batch-3"]
    assert all(o["status"] == "canceled" for o in by_client_id)
    assert ex.fetch_open_orders("ETH/USDC:USDC") == []


def test_ccxt_binanceusdm_reads_each_symbols_funding_interval():
    """fundingInfo as ccxt reads it: a symbol settling every 4 hours says so, and its next funding time
    is on its own schedule; one settling every 8 hours is not listed (ccxt takes 8 h for it)."""
    from fleet.sim.config import default_symbol_spec

    specs = [default_symbol_spec("ETHUSDC").model_dump(),
             default_symbol_spec("SOLUSDT").model_dump() | {"funding_interval_hours": 4}]
    thread = SimThread(symbols=["ETHUSDC", "SOLUSDT"], seed=7, host="127.0.0.1", port=0,
                       config={"symbols": specs}).start()
    try:
        ex = _client(thread)
        ex.load_markets()
        intervals = ex.fetch_funding_intervals()
        assert {s: i["interval"] for s, i in intervals.items()} == {"SOL/USDT:USDT": "4h"}
        sol, eth = ex.fetch_funding_rate("SOL/USDT:USDT"), ex.fetch_funding_rate("ETH/USDC:USDC")
        assert sol["fundingTimestamp"] % (4 * 3600_000) == 0 and eth["fundingTimestamp"] % (8 * 3600_000) == 0
        assert sol["fundingTimestamp"] - eth["fundingTimestamp"] in range(-8 * 3600_000, 1)
    finally:
        thread.stop()


def test_ccxt_binanceusdm_reads_mark_index_and_premium_candles(sim_thread):
    """What futures engines on ccxt read for funding: the mark's, the index's and the premium index's
    candles beside the trade candles."""
    ex = _client(sim_thread)
    ex.load_markets()
    freeze = f"{sim_thread.rest_url}/sim/market/freeze"
    requests.post(freeze, json={"frozen": True, "symbol": "ETHUSDC"}, timeout=10).raise_for_status()  # one minute
    try:
        trades = ex.fetch_ohlcv("ETH/USDC:USDC", "1m", limit=2)
        for price in ("mark", "index", "premiumIndex"):
            rows = ex.fetch_ohlcv("ETH/USDC:USDC", "1m", limit=2, params={"price": price})
            assert [r[0] for r in rows] == [r[0] for r in trades], price
            assert all(r[3] <= r[1] <= r[2] and r[3] <= r[4] <= r[2] for r in rows), (price, rows)
    finally:
        requests.post(freeze, json={"frozen": False, "symbol": "ETHUSDC"}, timeout=10).raise_for_status()


def test_ccxt_binanceusdm_reads_the_trading_statistics(sim_thread):
    """ccxt's open interest history and long/short ratio history read Binance's /futures/data routes
    (a 404 here before): points by period, oldest first, the ratio the longs' share over the shorts'."""
    ex = _client(sim_thread)
    ex.load_markets()
    history = ex.fetch_open_interest_history("BTC/USDT:USDT", "1h", limit=5)
    assert len(history) == 5 and [h["timestamp"] for h in history] == sorted(h["timestamp"] for h in history)
    assert all(h["openInterestAmount"] == 10000 and h["openInterestValue"] > 0 for h in history)
    ratios = ex.fetch_long_short_ratio_history("BTC/USDT:USDT", "5m", limit=3)
    assert len(ratios) == 3
    for r in ratios:
        info = r["info"]
        assert r["longShortRatio"] == float(info["longShortRatio"])
        assert abs(float(info["longAccount"]) / float(info["shortAccount"]) - r["longShortRatio"]) < 1e-4


async def test_ccxt_binanceusdm_trades_over_the_websocket_api(sim):
    """ccxt's WebSocket-API methods (create/edit/fetch/cancel_order_ws, fetch_balance_ws,
    fetch_positions_ws) against the simulator's /ws-fapi/v1, checked at the exchange."""
    ex = _client(sim, ccxt.pro.binanceusdm)
    api = ex.urls["api"]
    api["ws"] = {**api["ws"], "ws-api": {**api["ws"]["ws-api"], "linear": f"{sim.ws_url}/ws-fapi/v1"}}

    async def resting() -> list[dict]:
        async with aiohttp.ClientSession() as s, s.get(f"{sim.rest_url}/sim/state") as r:
            return (await r.json())["open_orders"]

    try:
        await ex.load_markets()
        bid = (await ex.fetch_order_book("ETH/USDC:USDC", limit=5))["bids"][0][0]
        price = float(ex.price_to_precision("ETH/USDC:USDC", bid * 0.98))
        order = await ex.create_order_ws("ETH/USDC:USDC", "limit", "buy", 0.01, price)
        assert order["status"] == "open" and order["price"] == price
        assert [(o["orderId"], o["origQty"]) for o in await resting()] == [(int(order["id"]), "0.010")]
        edited = await ex.edit_order_ws(order["id"], "ETH/USDC:USDC", "limit", "buy", 0.02, price)
        assert edited["amount"] == 0.02
        assert [o["origQty"] for o in await resting()] == ["0.020"]
        fetched = await ex.fetch_order_ws(order["id"], "ETH/USDC:USDC")
        assert fetched["status"] == "open" and fetched["amount"] == 0.02
        cancelled = await ex.cancel_order_ws(order["id"], "ETH/USDC:USDC")
        assert cancelled["status"] == "canceled" and await resting() == []
        assert (await ex.fetch_balance_ws())["USDC"]["total"] == 100000
        assert isinstance(await ex.fetch_positions_ws(["ETH/USDC:USDC"]), list)
    finally:
        await ex.close()


def test_ccxt_binanceusdm_trades_in_isolated_margin_and_moves_its_margin(sim_thread):
    """A client that trades isolated (freqtrade's usual futures setting) sets the mode, opens a position
    whose collateral is its own, adds and reduces that margin and reads the moves back."""
    ex = _client(sim_thread)
    ex.load_markets()
    sym = "ETH/USDC:USDC"
    ex.set_margin_mode("isolated", sym)
    ex.set_leverage(5, sym)
    assert ex.fetch_margin_mode(sym)["marginMode"] == "isolated"
    ex.create_order(sym, "market", "buy", 0.5)
    pos = next(p for p in ex.fetch_positions([sym]) if p["symbol"] == sym)
    assert pos["marginMode"] == "isolated" and pos["contracts"] == 0.5
    entry = pos["entryPrice"]
    truth = requests.get(f"{sim_thread.rest_url}/sim/state", params={"symbol": "ETHUSDC"}, timeout=5).json()
    iw = float(truth["positions"]["ETHUSDC"]["isolated_wallet"])
    assert truth["positions"]["ETHUSDC"]["margin_type"] == "isolated"
    assert abs(iw - entry * 0.5 / 5) < 0.01                      # the initial margin of the fill, at 5x
    assert pos["collateral"] == pytest.approx(iw + pos["unrealizedPnl"], abs=2e-8)   # ccxt adds them as floats
    assert entry * 0.8 < pos["liquidationPrice"] < entry * 0.81   # 5x: some 20 % below, the maintenance nearer
    assert ex.add_margin(sym, 25)["status"] == "ok"
    assert ex.reduce_margin(sym, 10)["status"] == "ok"
    truth = requests.get(f"{sim_thread.rest_url}/sim/state", params={"symbol": "ETHUSDC"}, timeout=5).json()
    assert abs(float(truth["positions"]["ETHUSDC"]["isolated_wallet"]) - (iw + 15)) < 1e-8
    moves = ex.fetch_margin_adjustment_history(sym)
    assert [(m["type"], m["amount"]) for m in moves if m["info"]["deltaType"] == "USER_ADJUST"] == [
        ("add", 25.0), ("reduce", 10.0)]
    ex.create_order(sym, "market", "sell", 0.5, None, {"reduceOnly": True})
    ex.set_margin_mode("cross", sym)
    truth = requests.get(f"{sim_thread.rest_url}/sim/state", params={"symbol": "ETHUSDC"}, timeout=5).json()
    assert truth["positions"]["ETHUSDC"]["margin_type"] == "cross" and float(truth["positions"]["ETHUSDC"]["amount"]) == 0


def test_ccxt_binanceusdm_reads_its_liquidations(sim_thread):
    """A 50x isolated long, a 3 % fall: the simulator liquidates it at the next mark tick, and ccxt's
    fetch_my_liquidations (GET /fapi/v1/forceOrders) reads the liquidation order back."""
    from tests.polling import poll

    ex = _client(sim_thread)
    ex.load_markets()
    sym = "ETH/USDC:USDC"
    ex.set_margin_mode("isolated", sym)
    ex.set_leverage(50, sym)
    ex.create_order(sym, "market", "buy", 0.5)
    requests.post(f"{sim_thread.rest_url}/sim/market/jump", json={"symbol": "ETHUSDC", "pct": -3}, timeout=5)

    def state() -> dict:
        return requests.get(f"{sim_thread.rest_url}/sim/state", params={"symbol": "ETHUSDC"}, timeout=5).json()

    poll(lambda: state()["counters"]["liquidations"] == 1, 10, "the liquidation")
    [liq] = ex.fetch_my_liquidations(sym)
    assert liq["side"] == "sell" and liq["contracts"] == 0.5 and liq["info"]["clientOrderId"].startswith("autoclose-")
    assert float(state()["positions"]["ETHUSDC"]["amount"]) == 0


def test_ccxt_binanceusdm_reads_the_leverage_tiers_and_meets_their_allowance(sim_thread):
    """fetch_leverage_tiers reads GET /fapi/v1/leverageBracket; at 125x an order beyond the first
    tier's 50,000 is refused with Binance's -2027, and set_leverage below what is held with -2027 too."""
    import pytest

    ex = _client(sim_thread)
    ex.load_markets()
    sym = "BTC/USDT:USDT"
    tiers = ex.fetch_leverage_tiers([sym])[sym]
    assert [(t["tier"], t["maxLeverage"], t["minNotional"], t["maxNotional"]) for t in tiers[:2]] == [
        (1, 125, 0, 50_000), (2, 100, 50_000, 250_000)]
    assert tiers[0]["maintenanceMarginRate"] == 0.004
    assert ex.set_leverage(125, sym)["maxNotionalValue"] == "50000"
    with pytest.raises(ccxt.ExchangeError, match="-2027"):
        ex.create_order(sym, "market", "buy", 1.0)            # ~60,000
    ex.set_leverage(20, sym)
    ex.create_order(sym, "market", "buy", 1.0)
    with pytest.raises(ccxt.ExchangeError, match="-2027"):
        ex.set_leverage(125, sym)
    ex.create_order(sym, "market", "sell", 1.0, params={"reduceOnly": True})


def test_ccxt_binanceusdm_reads_the_adl_rank_of_a_position_and_a_symbol(sim_thread):
    """fetch_positions_adl_rank (GET /fapi/v1/adlQuantile, one-way: BOTH) and fetch_adl_rank
    (GET /fapi/v1/symbolAdlRisk)."""
    ex = _client(sim_thread)
    ex.load_markets()
    sym = "ETH/USDC:USDC"
    assert ex.fetch_positions_adl_rank() == []
    ex.create_order(sym, "market", "buy", 0.1)
    [rank] = ex.fetch_positions_adl_rank([sym])
    assert rank["symbol"] == sym and rank["rank"] == 1 and rank["info"]["adlQuantile"]["LONG"] == 0
    assert ex.fetch_adl_rank(sym)["rating"] == "low"
    ex.create_order(sym, "market", "sell", 0.1, params={"reduceOnly": True})
