"""The pure engine in accelerated time: property tests of the books it keeps, queue position, the model."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet.sim.config import SimConfig, load_sim_config
from fleet.sim.engine import Engine, SimApiError
from fleet.sim.frames import ticker_24h
from fleet.sim.market import MarketModel, MarketParams
from fleet.sim.streams import kline_next, kline_open

T0 = 1_800_000_000_000


def _engine(**overrides) -> Engine:
    cfg = {"funding_interval_s": 5.0, "symbols": [{"symbol": "ETHUSDC", "base_asset": "ETH", "quote_asset": "USDC",
                                                   "start_price": 3000, "taker_rate": 30.0, "level_qty": 0.05,
                                                   "taker_mean_qty": 0.05}],
           "market": {"volatility": 2.0, "jump_rate_per_hour": 200.0}}
    cfg.update(overrides)
    return Engine(load_sim_config(cfg), seed=11, now_ms=T0)


side = st.sampled_from(["BUY", "SELL"])
op = st.one_of(
    st.tuples(st.just("limit"), side, st.integers(-15, 15), st.integers(2, 80), st.sampled_from(["GTC", "GTX", "IOC"]),
              st.booleans()),
    st.tuples(st.just("market"), side, st.integers(2, 80), st.booleans()),
    st.tuples(st.just("cancel"), st.integers(0, 50)),
    st.tuples(st.just("modify"), st.integers(0, 50), st.integers(-15, 15), st.integers(2, 80)),
    st.tuples(st.just("advance"), st.integers(10, 4000)),
    st.tuples(st.just("jump"), st.floats(-0.3, 0.3)),
    st.tuples(st.just("countdown"), st.integers(0, 3000)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op, min_size=1, max_size=50))
def test_engine_books_balance_whatever_happens(ops):
    e = _engine()
    b = e.books["ETHUSDC"]
    acct = e.accounts["main"]
    start_wallet = acct.wallet["USDC"]
    now = T0
    placed: list[int] = []
    cancelled_at: dict[int, int] = {}  # order id -> trades of it when cancelled
    for item in ops:
        kind = item[0]
        try:
            if kind == "limit":
                _, s, off, qty, tif, reduce = item
                ref = b.best_bid() if s == "BUY" else b.best_ask()
                price = ref + off if s == "BUY" else ref - off
                r = e.new_order("main", {"symbol": "ETHUSDC", "side": s, "type": "LIMIT", "timeInForce": tif,
                                         "price": b.price_str(price), "quantity": b.qty_str(qty),
                                         "reduceOnly": "true" if reduce else "false"}, now)
                placed.append(r["orderId"])
            elif kind == "market":
                _, s, qty, reduce = item
                r = e.new_order("main", {"symbol": "ETHUSDC", "side": s, "type": "MARKET", "quantity": b.qty_str(qty),
                                         "reduceOnly": "true" if reduce else "false"}, now)
                placed.append(r["orderId"])
            elif kind == "cancel" and placed:
                oid = placed[item[1] % len(placed)]
                e.cancel_order("main", {"symbol": "ETHUSDC", "orderId": str(oid)}, now)
                cancelled_at[oid] = sum(1 for t in acct.trades if t.order_id == oid)
            elif kind == "modify" and placed:
                oid = placed[item[1] % len(placed)]
                o = acct.open.get(oid)
                if o is not None:
                    ref = b.best_bid() if o.side == "BUY" else b.best_ask()
                    price = ref + item[2] if o.side == "BUY" else ref - item[2]
                    e.modify_order("main", {"symbol": "ETHUSDC", "orderId": str(oid), "side": o.side,
                                            "price": b.price_str(price), "quantity": b.qty_str(item[3])}, now)
                    if not o.is_open and o.status == "CANCELED":
                        cancelled_at[oid] = sum(1 for t in acct.trades if t.order_id == oid)
            elif kind == "advance":
                now += item[1]
                e.advance(now)
            elif kind == "jump":
                e.jump("ETHUSDC", item[1], now)
            elif kind == "countdown":
                e.countdown_cancel_all("main", {"symbol": "ETHUSDC", "countdownTime": str(item[1])}, now)
        except SimApiError:
            pass
        e.drain()
        _check(e, start_wallet, cancelled_at)
    # countdown-cancelled orders count as cancelled from then on
    for o in list(b.closed.values()):
        if o.status == "CANCELED" and o.order_id not in cancelled_at:
            cancelled_at[o.order_id] = sum(1 for t in acct.trades if t.order_id == o.order_id)
    now += 30_000
    e.advance(now)
    _check(e, start_wallet, cancelled_at)


def _check(e: Engine, start_wallet: Decimal, cancelled_at: dict[int, int]) -> None:
    b = e.books["ETHUSDC"]
    acct = e.accounts["main"]
    orders = list(acct.open.values()) + [o for o in b.closed.values()]
    fills: dict[int, Decimal] = {}
    for t in acct.trades:
        fills[t.order_id] = fills.get(t.order_id, Decimal(0)) + Decimal(t.qty)
    for o in orders:
        assert 0 <= o.filled <= o.orig, "a fill exceeded the order's quantity"
        assert fills.get(o.order_id, Decimal(0)) == b.step * o.filled
    signed = sum((Decimal(t.qty) if t.side == "BUY" else -Decimal(t.qty) for t in acct.trades), Decimal(0))
    pos = acct.positions.get("ETHUSDC")
    assert (b.step * pos.amount if pos else Decimal(0)) == signed, "position != signed sum of fills"
    realized = sum((Decimal(t.realized_pnl) for t in acct.trades), Decimal(0))
    fees = sum((Decimal(t.commission) for t in acct.trades), Decimal(0))
    funding = sum((Decimal(i["income"]) for i in acct.income if i["incomeType"] == "FUNDING_FEE"), Decimal(0))
    assert acct.wallet["USDC"] == start_wallet + realized - fees + funding
    assert sum((Decimal(i["income"]) for i in acct.income), Decimal(0)) == acct.wallet["USDC"] - start_wallet
    for oid, n in cancelled_at.items():
        assert sum(1 for t in acct.trades if t.order_id == oid) == n, "a cancelled order filled"
    for price, lst in b.bids.items():
        assert all(o.is_open and o.price == price and o.sign > 0 for o in lst)
    for price, lst in b.asks.items():
        assert all(o.is_open and o.price == price and o.sign < 0 for o in lst)


def test_resting_order_fills_only_after_the_volume_queued_ahead_has_traded():
    e = _engine(market={"volatility": 0.0, "jump_rate_per_hour": 0.0})
    b = e.books["ETHUSDC"]
    e.watch("ethusdc@aggTrade")
    price = b.bid_top
    r = e.new_order("main", {"symbol": "ETHUSDC", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC",
                             "price": b.price_str(price), "quantity": "0.020"}, T0)
    o = e.accounts["main"].open[r["orderId"]]
    ahead = o.ahead
    assert ahead == b.synth_bid(price) > 0
    e.drain()
    traded_at_price = 0
    now = T0
    first_fill = None
    while first_fill is None and now < T0 + 600_000:
        now += 50
        e.advance(now)
        for kind, target, payload in e.drain_rendered():
            if kind == "m" and payload["p"] == b.price_str(price) and payload["m"]:
                traded_at_price += round(float(payload["q"]) / b.step_f)
            if kind == "u" and payload["e"] == "ORDER_TRADE_UPDATE" and payload["o"]["x"] == "TRADE":
                first_fill = round(float(payload["o"]["l"]) / b.step_f)
    assert first_fill is not None, "the order never reached the front of the queue"
    assert traded_at_price >= ahead + first_fill  # everything ahead traded before us


def test_market_model_is_deterministic_and_visits_every_regime():
    params = MarketParams(start_price=3000, ranging_mean_s=60, trending_mean_s=60, jump_rate_per_hour=60)
    a = MarketModel(params, random.Random(5))
    b = MarketModel(params, random.Random(5))
    seen = set()
    mids = []
    for _ in range(36_000):  # one simulated hour at 100 ms
        mids.append(a.step(0.1))
        assert b.step(0.1) == mids[-1]
        seen.add(a.regime)
    assert seen == {"ranging", "trending", "jump"}
    assert 1500 < min(mids) and max(mids) < 6000
    assert MarketModel(params, random.Random(6)).step(0.1) != MarketModel(params, random.Random(5)).step(0.1)


def test_engine_is_deterministic_for_a_seed():
    def run() -> list:
        e = _engine()
        e.watch("ethusdc@bookTicker")
        now = T0
        out = []
        for _ in range(400):
            now += 50
            e.advance(now)
            out.extend(p for _, _, p in e.drain_rendered())
        return out
    assert run() == run()


def test_all_book_tickers_come_every_five_seconds_while_a_symbols_own_comes_at_each_change():
    """!bookTicker: each symbol's touch every 5 s if it moved since (Binance: "Update Speed: 5s", real time
    until 2023-12-12); <symbol>@bookTicker stays real time. An engine quoting off the all-market stream
    sees a touch up to 5 s old."""
    e = _engine()
    e.watch("ethusdc@bookTicker", "!bookTicker")
    now, own, every = T0, [], []
    while now < T0 + 20_000:
        now += 50
        e.advance(now)
        for _, stream, payload in e.drain_rendered():
            (every if stream == "!bookTicker" else own).append(payload)
    assert len(own) > 20 and 3 <= len(every) <= 5, (len(own), len(every))
    times = [f["E"] for f in every]
    assert all(t % 5000 == 0 for t in times[1:]) and len(set(times)) == len(times), times   # the first at once
    last = {f["E"]: f for f in own}
    for f in every:   # the touch as the symbol's own stream last said it
        said = max((t for t in last if t <= f["E"]), default=None)
        assert said is not None and (last[said]["b"], last[said]["a"]) == (f["b"], f["a"]), f


def test_unknown_symbol_gets_a_generic_spec_and_bad_config_names_the_field():
    e = Engine(SimConfig(), seed=1, now_ms=T0, symbols=["DOGEUSDT"])
    spec = e.books["DOGEUSDT"].spec
    assert (spec.base_asset, spec.quote_asset) == ("DOGE", "USDT")
    try:
        load_sim_config({"funding_interval_s": -1})
    except ValueError as exc:
        assert "funding_interval_s" in str(exc)
    else:
        raise AssertionError("a negative funding interval was accepted")


def test_a_price_filter_off_the_tick_or_upside_down_is_refused_by_the_config():
    base = {"symbol": "ETHUSDC", "base_asset": "ETH", "quote_asset": "USDC", "start_price": 3000}
    for bad in ({"min_price": "96.005"}, {"min_price": "0"}, {"min_price": "100", "max_price": "99.99"}):
        try:
            load_sim_config({"symbols": [{**base, **bad}]})
        except ValueError as exc:
            assert ("max_price" if "max_price" in bad else "min_price") in str(exc), (bad, exc)
        else:
            raise AssertionError(f"{bad} was accepted")
    b = Engine(load_sim_config({"symbols": [{**base, "min_price": "96.00"}]}), seed=1, now_ms=T0).books["ETHUSDC"]
    assert (b.min_price, b.max_price) == (Decimal("96.00"), Decimal("10000000"))


def test_accelerated_time_fires_the_dead_man_switch_at_its_deadline():
    e = _engine(market={"volatility": 0.0, "jump_rate_per_hour": 0.0})
    b = e.books["ETHUSDC"]
    price = b.price_str(b.bid_top - 100)
    e.new_order("main", {"symbol": "ETHUSDC", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "price": price,
                         "quantity": "0.010"}, T0)
    e.countdown_cancel_all("main", {"symbol": "ETHUSDC", "countdownTime": "1234"}, T0)
    e.drain()
    e.advance(T0 + 60_000)  # one jump of a minute
    cancels = [p for k, _, p in e.drain_rendered() if k == "u" and p["e"] == "ORDER_TRADE_UPDATE"]
    assert [(c["o"]["x"], c["E"]) for c in cancels] == [("CANCELED", T0 + 1234)]
    assert e.accounts["main"].counters["countdown_fired"] == 1 and not e.accounts["main"].open


def test_diff_depth_stream_keeps_a_local_book_in_sync_the_binance_way():
    e = _engine()
    b = e.books["ETHUSDC"]
    e.watch("ethusdc@depth@100ms")
    now = T0
    buffered: list[dict] = []

    def run(ms: int, trade_every: int = 7) -> None:
        nonlocal now
        for i in range(ms // 50):
            now += 50
            e.advance(now)
            if i % trade_every == 0:  # our own flow changes the book too
                side = "BUY" if i % 2 else "SELL"
                price = b.best_bid() - 3 if side == "BUY" else b.best_ask() + 3
                try:
                    e.new_order("main", {"symbol": "ETHUSDC", "side": side, "type": "LIMIT", "timeInForce": "GTC",
                                         "price": b.price_str(price), "quantity": "0.500"}, now)
                except SimApiError:
                    pass
            buffered.extend(p for k, _, p in e.drain_rendered() if k == "m")

    run(2000)
    snapshot_id = b.update_id  # GET /fapi/v1/depth?limit=1000 at this moment
    snap_bids, snap_asks = b.depth_levels(1000)
    local = {"b": {p: q for p, q in snap_bids}, "a": {p: q for p, q in snap_asks}}
    run(3000)
    applied = 0
    prev_u = None
    for ev in buffered:
        if ev["u"] < snapshot_id:
            continue
        if prev_u is None:
            assert ev["U"] <= snapshot_id <= ev["u"], "the first event must straddle the snapshot"
        else:
            assert ev["pu"] == prev_u, "a gap in the diff stream"
        for side in ("b", "a"):
            for p, q in ev[side]:
                ticks = round(float(p) / b.tick_f)
                steps = round(float(q) / b.step_f)
                if steps:
                    local[side][ticks] = steps
                else:
                    local[side].pop(ticks, None)
        prev_u = ev["u"]
        applied += 1
    assert applied >= 20
    bids, asks = b.depth_levels(20)
    assert sorted(local["b"].items(), reverse=True)[:20] == bids
    assert sorted(local["a"].items())[:20] == asks


junk = st.one_of(st.none(), st.text(max_size=12), st.sampled_from(
    ["", "0", "-1", "1e3", "NaN", "inf", "0.010", "3000.00", "BUY", "SELL", "LIMIT", "MARKET", "GTX", "true",
     "ETHUSDC", "ethusdc", "99999999999999999999", "1.2.3", " 1", "١٢", "1", "2", "ISOLATED", "CROSSED"]))
fields = ["symbol", "side", "type", "timeInForce", "price", "quantity", "reduceOnly", "newClientOrderId",
          "newOrderRespType", "orderId", "origClientOrderId", "countdownTime", "leverage", "limit", "startTime",
          "endTime", "incomeType", "positionSide"]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(params=st.dictionaries(st.sampled_from(fields), junk, max_size=10),
       symbol=st.one_of(st.just("ETHUSDC"), junk))
def test_malformed_parameters_always_answer_a_binance_error_never_crash(params, symbol):
    e = _engine()
    clean = {k: v for k, v in {**params, "symbol": symbol}.items() if v is not None}
    calls = [
        lambda: e.new_order("main", clean, T0), lambda: e.modify_order("main", clean, T0),
        lambda: e.cancel_order("main", clean, T0), lambda: e.query_order("main", clean),
        lambda: e.countdown_cancel_all("main", clean, T0), lambda: e.set_leverage("main", clean, T0),
        lambda: e.all_orders("main", clean), lambda: e.user_trades("main", clean), lambda: e.income("main", clean),
        lambda: e.cancel_all("main", clean, T0), lambda: e.open_orders("main", clean.get("symbol")),
    ]
    for call in calls:
        try:
            call()
        except SimApiError as exc:
            assert exc.code < 0 and exc.msg and 400 <= exc.http_status < 500


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(params=st.dictionaries(st.sampled_from(fields + ["interval", "fromId", "batchOrders", "orderIdList",
                                                        "origClientOrderIdList", "marginType", "dualSidePosition",
                                                        "amount"]),
                              st.one_of(junk, st.sampled_from(['[{"symbol":"ETHUSDC"}]', "[1,2]", "[]", "{}", "[",
                                                               '["a"]', "1m"])), max_size=8),
       symbol=st.one_of(st.just("ETHUSDC"), junk))
def test_every_rest_route_answers_malformed_input_with_a_binance_error(params, symbol):
    from fleet.sim.server import SimServer

    server = SimServer(symbols=["ETHUSDC"], seed=1, clock=lambda: T0)  # not started: handlers only
    clean = {k: v for k, v in {**params, "symbol": symbol}.items() if v is not None}
    for (method, path), (fn, _, weight) in server._routes.items():
        if callable(weight):
            assert isinstance(weight(clean), int)
        try:
            fn("main", clean, T0)
        except SimApiError as exc:
            assert exc.code < 0 and exc.msg, (method, path)


def test_kline_stream_pushes_the_open_candle_and_each_closed_one_once_as_rest_shows_it():
    e = _engine()
    b = e.books["ETHUSDC"]
    e.watch("ethusdc@kline_1m")
    frames: list[dict] = []
    now = T0
    while now < T0 + 130_000:   # two candles close (T0 is a whole minute)
        now += 50
        e.advance(now)
        frames.extend(p for k, s, p in e.drain_rendered() if k == "m" and s == "ethusdc@kline_1m")
    opens = [f for f in frames if not f["k"]["x"]]
    closed = [f for f in frames if f["k"]["x"]]
    assert 4 * 125 <= len(opens) <= 4 * 131   # every 250 ms
    assert [f["k"]["t"] for f in closed] == [T0, T0 + 60_000]   # each closed candle once
    rest = {row[0]: row for row in b.klines("1m", T0, None, 10)}
    for f in closed:
        k = f["k"]
        row = rest[k["t"]]
        assert (k["o"], k["h"], k["l"], k["c"], k["v"], k["n"], k["T"]) == (row[1], row[2], row[3], row[4], row[5],
                                                                            row[8], row[6])
        assert f["e"] == "kline" and k["i"] == "1m" and k["s"] == f["s"] == "ETHUSDC" and k["T"] == k["t"] + 59_999
        assert k["n"] > 0 and k["L"] - k["f"] + 1 == k["n"]   # the candle's aggregate trades, first to last
    assert closed[1]["k"]["f"] == closed[0]["k"]["L"] + 1
    for interval, start in (("1m", T0 + 60_000), ("5m", T0), ("1h", T0 - T0 % 3_600_000)):   # the walk back = REST's
        assert b.candle_group(start, kline_next(interval, start)) == b.candle_groups(interval, start, start, 1)[0]
    last = opens[-1]["k"]
    assert last["t"] == T0 + 120_000 and last["x"] is False
    e.unwatch("ethusdc@kline_1m")
    e.advance(now + 1000)
    assert not [p for k, s, p in e.drain_rendered() if s == "ethusdc@kline_1m"]


def test_ticker_streams_push_the_rolling_day_every_2_s_as_rest_shows_it():
    e = _engine(history=False)   # the day holds the run's candles and the two made below, nothing before
    b = e.books["ETHUSDC"]
    e.watch("ethusdc@ticker", "ethusdc@miniTicker")
    frames: dict[str, list[dict]] = {"ethusdc@ticker": [], "ethusdc@miniTicker": []}
    now = T0
    while now < T0 + 10_000:
        now += 50
        e.advance(now)
        for k, s, p in e.drain_rendered():
            if s in frames:
                frames[s].append(p)
    ticks, minis = frames["ethusdc@ticker"], frames["ethusdc@miniTicker"]
    assert [f["E"] for f in ticks] == [f["E"] for f in minis] and 5 <= len(ticks) <= 6   # every 2 s, together
    assert all(b2["E"] - a["E"] == 2000 for a, b2 in zip(ticks[1:], ticks[2:]))
    last = ticks[-1]
    assert last["e"] == "24hrTicker" and last["s"] == "ETHUSDC" and last["C"] == last["E"] == last["O"] + 86_400_000
    assert (last["ps"], last["st"]) == ("ETHUSDC", 1)   # the 2026 frames' pair and UM type
    assert minis[-1] == {"e": "24hrMiniTicker", "E": last["E"], "s": "ETHUSDC", "c": last["c"], "o": last["o"],
                         "h": last["h"], "l": last["l"], "v": last["v"], "q": last["q"], "ps": "ETHUSDC", "st": 1}
    rows = b.klines("1m", None, None, 1500)   # every candle of the run falls in the day
    assert Decimal(last["v"]) == sum(Decimal(r[5]) for r in rows) > 0
    assert last["n"] == sum(r[8] for r in rows) == last["L"] - last["F"] + 1
    assert Decimal(last["l"]) <= Decimal(last["c"]) <= Decimal(last["h"])
    assert Decimal(last["p"]) == Decimal(last["c"]) - Decimal(last["o"])
    # the window rolls: a candle opened more than a day ago is out, one opened 23 h ago is in
    old = [T0 - 25 * 3_600_000, 9000.0, 9500.0, 8500.0, 9000.0, 10**6, 9 * 10**11, 500, 0, 0, -1, -1]
    young = [T0 - 23 * 3_600_000, 2000.0, 2000.0, 1500.0, 1900.0, 7, 7 * 200_000, 1, 0, 0, -1, -1]
    b.candles.appendleft(young)
    b.candles.appendleft(old)
    day = ticker_24h(b, now)
    assert day["openPrice"] == "2000.00" and day["lowPrice"] == "1500.00" and Decimal(day["highPrice"]) < 9000
    assert Decimal(day["volume"]) == Decimal(last["v"]) + Decimal("0.007") and day["count"] == last["n"] + 1
    assert day["firstId"] == last["F"]   # the young candle had no trade id of its own
    e.unwatch("ethusdc@ticker", "ethusdc@miniTicker")
    e.advance(now + 4000)
    assert not [p for k, s, p in e.drain_rendered() if "icker" in s]


def test_price_match_takes_the_nth_level_of_either_side_at_placement_and_on_amendment():
    e = _engine()
    b = e.books["ETHUSDC"]
    e.advance(T0 + 1000)
    e.drain()

    def order(**kw) -> dict:
        return e.new_order("main", {"symbol": "ETHUSDC", "type": "LIMIT", "quantity": "0.050", **kw}, e.now_ms)

    bids, asks = b.depth_levels(20)
    queue = order(side="BUY", timeInForce="GTX", priceMatch="QUEUE", newOrderRespType="RESULT")
    assert queue["price"] == b.price_str(bids[0][0]) and queue["status"] == "NEW" and queue["priceMatch"] == "QUEUE"
    deep = order(side="SELL", timeInForce="GTC", priceMatch="QUEUE_5")
    assert deep["price"] == b.price_str(asks[4][0]) and deep["priceMatch"] == "QUEUE_5"
    frames = [p["o"] for k, s, p in e.drain_rendered() if k == "u" and p["e"] == "ORDER_TRADE_UPDATE"]
    assert [(f["x"], f["pm"]) for f in frames] == [("NEW", "QUEUE"), ("NEW", "QUEUE_5")]
    # OPPONENT is a taker's price: a post-only order is refused, an IOC one trades at the best ask
    try:
        order(side="BUY", timeInForce="GTX", priceMatch="OPPONENT")
        raise AssertionError("a post-only order at the other side's price was accepted")
    except SimApiError as exc:
        assert exc.code == -5022
    best_ask = b.best_ask()
    taker = order(side="BUY", timeInForce="IOC", priceMatch="OPPONENT", newOrderRespType="RESULT")
    assert taker["price"] == b.price_str(best_ask) and Decimal(taker["executedQty"]) > 0
    assert Decimal(taker["avgPrice"]) == Decimal(b.price_str(best_ask))
    # sent with a price, with a market order, or unknown: refused, nothing placed
    for bad, code in (({"priceMatch": "QUEUE", "price": queue["price"]}, -1106),
                      ({"priceMatch": "QUEUE_7"}, -5037), ({"priceMatch": "QUEUE", "type": "MARKET"}, -5038)):
        try:
            order(side="BUY", **({} if bad.get("type") == "MARKET" else {"timeInForce": "GTC"}), **bad)
            raise AssertionError(f"accepted {bad}")
        except SimApiError as exc:
            assert exc.code == code, (bad, exc)
    assert sorted(o.client_id for o in e.accounts["main"].open.values()) == sorted([queue["clientOrderId"],
                                                                                   deep["clientOrderId"]])
    # an amendment may take its price from priceMatch instead of price (one of the two is mandatory)
    bids, _ = b.depth_levels(10)
    moved = e.modify_order("main", {"symbol": "ETHUSDC", "orderId": str(queue["orderId"]), "side": "BUY",
                                    "quantity": "0.050", "priceMatch": "QUEUE_10"}, e.now_ms)
    assert moved["price"] == b.price_str(bids[9][0]) and moved["priceMatch"] == "QUEUE_10"
    try:
        e.modify_order("main", {"symbol": "ETHUSDC", "orderId": str(queue["orderId"]), "side": "BUY",
                                "quantity": "0.050"}, e.now_ms)
        raise AssertionError("an amendment with neither price nor priceMatch was accepted")
    except SimApiError as exc:
        assert exc.code == -1102


def test_depth_at_0ms_publishes_on_every_market_step_that_changes_the_book():
    e = _engine()
    e.watch("ethusdc@depth@0ms", "ethusdc@depth5@0ms", "ethusdc@depth@100ms")
    now = T0
    counts: dict[str, int] = {}
    for _ in range(200):   # 10 s of 50 ms steps
        now += 50
        e.advance(now)
        for k, s, _ in e.drain():
            counts[s] = counts.get(s, 0) + 1
    assert counts["ethusdc@depth5@0ms"] == 200                       # every step
    assert counts["ethusdc@depth@100ms"] <= 101 < counts["ethusdc@depth@0ms"] <= 200


def test_a_gtd_order_rests_until_its_date_then_expires_and_a_bad_date_is_refused():
    e = _engine()
    b = e.books["ETHUSDC"]
    far = b.price_str(b.best_bid() * 7 // 10)   # 30 % below: never filled within the test's 12 minutes

    def place(cid: str, **extra) -> dict:
        return e.new_order("main", {"symbol": "ETHUSDC", "side": "BUY", "type": "LIMIT", "price": far,
                                    "quantity": "0.100", "newClientOrderId": cid, **extra}, e.now_ms)

    for extra, code in (({"timeInForce": "GTD"}, -1102),
                        ({"timeInForce": "GTD", "goodTillDate": str(T0 + 600_000)}, -5040),   # not past 600 s
                        ({"timeInForce": "GTD", "goodTillDate": "253402300799000"}, -5040),
                        ({"timeInForce": "GTD", "goodTillDate": "soon"}, -1130)):
        try:
            place("bad", **extra)
        except SimApiError as err:
            assert err.code == code, (extra, err)
        else:
            raise AssertionError(f"{extra} was accepted")
    gtd = T0 + 700_000
    shown = place("gtd-1", timeInForce="GTD", goodTillDate=str(gtd + 789))   # the milliseconds are dropped
    assert shown["timeInForce"] == "GTD" and shown["goodTillDate"] == gtd and shown["status"] == "NEW"
    place("gtd-2", timeInForce="GTD", goodTillDate=str(gtd))
    e.cancel_order("main", {"symbol": "ETHUSDC", "origClientOrderId": "gtd-2"}, e.now_ms)
    e.drain()
    now = T0
    while now < gtd - 50:
        now += 1000 if now < gtd - 2000 else 50
        e.advance(now)
    assert e.order_json(b, e.accounts["main"].by_cid["gtd-1"])["status"] == "NEW"   # not before its time
    e.advance(gtd + 10)
    frames = [p for k, a, p in e.drain_rendered() if k == "u" and p.get("e") == "ORDER_TRADE_UPDATE"]
    assert [(f["o"]["c"], f["o"]["x"], f["o"]["X"], f["o"]["gtd"], f["T"]) for f in frames] \
        == [("gtd-1", "EXPIRED", "EXPIRED", gtd, gtd)]                       # once, at its date; the cancelled one not
    assert not e.accounts["main"].open and not e.gtd_heap


def test_gtd_orders_placed_and_cancelled_for_long_leave_the_expiry_heap_small():
    e = _engine()
    b = e.books["ETHUSDC"]
    far = b.price_str(b.best_bid() * 7 // 10)

    def place(cid: str, gtd: int) -> None:
        e.new_order("main", {"symbol": "ETHUSDC", "side": "BUY", "type": "LIMIT", "price": far, "quantity": "0.100",
                             "timeInForce": "GTD", "goodTillDate": str(gtd), "newClientOrderId": cid}, e.now_ms)

    place("anchor", T0 + 700_000)          # the heap's top, live throughout
    for i in range(3000):
        place(f"c{i}", T0 + 86_400_000)
        e.cancel_order("main", {"symbol": "ETHUSDC", "origClientOrderId": f"c{i}"}, e.now_ms)
    assert len(e.gtd_heap) <= 130, len(e.gtd_heap)   # the cancelled ones are dropped once they are most
    e.advance(T0 + 700_050)
    assert "anchor" not in e.accounts["main"].by_cid   # the anchor still expired at its date


def test_klines_stop_with_the_other_streams_under_a_data_fault():
    e = _engine()
    e.watch("ethusdc@kline_1m", "ethusdc@bookTicker")
    e.advance(T0 + 1000)
    assert any(s == "ethusdc@kline_1m" for _, s, _ in e.drain())
    e.set_frozen("ETHUSDC", True)
    e.advance(T0 + 5000)
    assert not [s for _, s, _ in e.drain() if s.startswith("ethusdc@")]


def test_the_past_is_drawn_apart_from_the_live_market():
    """A fresh engine starts with a day of candles and a month of funding (fleet/sim/history.py), the
    same for a seed every time; the live market that follows is the one the seed gives without it."""
    with_past, again, without = _engine(), _engine(), _engine(history=False)
    b, b2, bare = (e.books["ETHUSDC"] for e in (with_past, again, without))
    assert len(b.candles) == 1499 and not bare.candles and not bare.funding_history
    assert len(b.funding_history) == 1000   # a settlement every 5 s here: the page's 1,000, not 30 days of them
    assert list(b.candles) == list(b2.candles) and b.funding_history == b2.funding_history
    assert b.candles[-1][4] == b.candle[1] and b.candles[-1][0] + 60_000 == b.candle[0]   # it ends at the start
    assert b.candles[-1][11] + 1 == b.agg_id   # the live tape's ids follow the past's
    mids = {}
    for e in (with_past, without):
        now, path = T0, []
        while now < T0 + 10_000:
            now += 50
            e.advance(now)
            path.append(e.books["ETHUSDC"].mid)
        mids[e is without] = path
    assert mids[False] == mids[True]


resting = st.tuples(st.sampled_from(["main", "other"]), side, st.integers(0, 3), st.integers(2, 60), st.booleans())


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(positions=st.tuples(st.integers(-60, 60), st.integers(-60, 60)), makers=st.lists(resting, max_size=12),
       fok=st.tuples(st.sampled_from(["main", "other"]), side, st.integers(0, 3), st.integers(-3, 120),
                     st.booleans(), st.sampled_from(["NONE", "EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"])))
def test_a_fok_order_fills_whole_or_is_refused_without_a_trace(positions, makers, fok):
    """Whatever rests (both accounts' orders, reduce-only ones, the taker's own under each self-trade
    prevention mode), a FOK order for about what the book shows up to its price either fills its whole
    quantity or is refused -5021 with nothing traded, no frame and every order and position as it was."""
    e = _engine(accounts=[{"name": "main"}, {"name": "other"}], market={"volatility": 0.0, "jump_rate_per_hour": 0.0})
    b = e.books["ETHUSDC"]
    for name, steps in zip(("main", "other"), positions):
        e.set_position(name, "ETHUSDC", b.qty_str(steps) if steps >= 0 else "-" + b.qty_str(-steps), None, T0)
    for name, s, off, qty, reduce in makers:
        price = b.bid_top - off if s == "BUY" else b.ask_top + off
        try:
            e.new_order(name, {"symbol": "ETHUSDC", "side": s, "type": "LIMIT", "timeInForce": "GTC",
                               "price": b.price_str(price), "quantity": b.qty_str(qty),
                               "reduceOnly": "true" if reduce else "false"}, T0)
        except SimApiError:
            pass
    e.drain()
    name, s, off, short, reduce, stp = fok
    buy = s == "BUY"
    limit = b.ask_top + off if buy else b.bid_top - off
    prices = range(b.ask_top, limit + 1) if buy else range(limit, b.bid_top + 1)
    shown = sum(b.level_qty(not buy, p) for p in prices)   # what the depth shows up to its price
    qty = max(2, shown - short)
    before = _trading_state(e)
    try:
        r = e.new_order(name, {"symbol": "ETHUSDC", "side": s, "type": "LIMIT", "timeInForce": "FOK",
                               "price": b.price_str(limit), "quantity": b.qty_str(qty),
                               "reduceOnly": "true" if reduce else "false", "selfTradePreventionMode": stp,
                               "newOrderRespType": "RESULT"}, T0)
    except SimApiError as exc:
        if exc.code == -5021:
            assert _trading_state(e) == before and e.drain() == []
        return
    assert (r["status"], r["executedQty"]) == ("FILLED", b.qty_str(qty)), r


def _trading_state(e: Engine) -> tuple:
    """Every account's position, trades and open orders (id, status, filled), and the tape's next id."""
    b = e.books["ETHUSDC"]
    return (b.agg_id, tuple((name, a.positions["ETHUSDC"].amount if "ETHUSDC" in a.positions else 0, len(a.trades),
                             tuple(sorted((o.order_id, o.status, o.filled) for o in a.open.values())))
                            for name, a in sorted(e.accounts.items())))


def test_the_trade_and_order_histories_answer_by_the_week_as_binance_does():
    """userTrades and allOrders read by time answer a week at most: the last 7 days when no time is sent,
    the 7 days after a startTime sent alone, the 7 days before an endTime sent alone; by id (fromId,
    orderId) no week applies, and fromId with a time is refused. income without a time: the last 7 days.
    (The engine's clock is moved 8 days without stepping its market: what is under test is the window.)"""
    e = _engine()
    week = 7 * 86_400_000

    def market(side: str) -> dict:
        return e.new_order("main", {"symbol": "ETHUSDC", "side": side, "type": "MARKET", "quantity": "0.010"}, e.now_ms)

    old = market("BUY")
    t_old = e.now_ms
    e.now_ms += week + 86_400_000
    new = market("SELL")
    ids = lambda rows: sorted({r["orderId"] for r in rows})   # noqa: E731
    trades = lambda **p: e.user_trades("main", {"symbol": "ETHUSDC", **{k: str(v) for k, v in p.items()}})  # noqa: E731
    assert ids(trades()) == [new["orderId"]]
    assert ids(trades(startTime=t_old - 1000)) == [old["orderId"]]
    assert ids(trades(endTime=e.now_ms)) == [new["orderId"]]
    assert ids(trades(fromId=0)) == [old["orderId"], new["orderId"]]
    assert ids(trades(orderId=old["orderId"])) == [old["orderId"]]
    for both in ({"fromId": 0, "startTime": t_old}, {"fromId": 0, "endTime": e.now_ms}):
        try:
            trades(**both)
            raise AssertionError(f"accepted {both}")
        except SimApiError as exc:
            assert exc.code == -1106, exc
    orders = lambda **p: e.all_orders("main", {"symbol": "ETHUSDC", **{k: str(v) for k, v in p.items()}})  # noqa: E731
    assert ids(orders()) == [new["orderId"]]
    assert ids(orders(startTime=t_old - 1000)) == [old["orderId"]]
    assert ids(orders(orderId=old["orderId"])) == [old["orderId"], new["orderId"]]
    fees = e.income("main", {"symbol": "ETHUSDC", "incomeType": "COMMISSION"})
    assert fees and all(f["time"] > e.now_ms - week for f in fees)
    assert len(e.income("main", {"symbol": "ETHUSDC", "incomeType": "COMMISSION", "startTime": "0"})) == len(fees) + 1
    newest = e.income("main", {"symbol": "ETHUSDC", "incomeType": "COMMISSION", "limit": "1"})
    assert newest == fees[-1:]   # without a time, the newest of the week


def test_the_trade_history_routes_reach_back_past_the_last_thousand_trades_with_no_hole():
    """A client backfilling a reconnect's gap reads aggTrades from an id or a time minutes back (Binance
    keeps every trade): the tape holds RECENT_TRADES_KEPT trades (the last 1,000 covered under 4 minutes
    of the regime model's tape, and older reads answered ``[]`` or skipped ids unsaid)."""
    from fleet.sim.book import RECENT_TRADES_KEPT
    from fleet.sim.server import SimServer

    server = SimServer(symbols=["ETHUSDC"], seed=1, clock=lambda: T0)  # not started: handlers only
    now = T0 + 15 * 60_000
    server.engine.advance(now)
    tape = server.engine.books["ETHUSDC"].recent_trades
    assert 2_000 < len(tape) < RECENT_TRADES_KEPT and tape[0][3] < now - 10 * 60_000

    def get(path, **params):
        return server._routes[("GET", path)][0]("main", {"symbol": "ETHUSDC", **params}, now)

    first = tape[0][0]
    rows = get("/fapi/v1/aggTrades", fromId=str(first + 5), limit="1000")
    assert [r["a"] for r in rows] == list(range(first + 5, first + 1005))   # each id once, none skipped
    since = now - 12 * 60_000
    rows = get("/fapi/v1/aggTrades", startTime=str(since), endTime=str(since + 60_000))
    assert rows and all(since <= r["T"] <= since + 60_000 for r in rows)
    assert rows == [r for r in get("/fapi/v1/aggTrades", fromId=str(rows[0]["a"]), limit="1000")
                    if r["T"] <= since + 60_000]
    assert [r["id"] for r in get("/fapi/v1/historicalTrades", fromId=str(first), limit="3")] == \
        [first, first + 1, first + 2]
    latest = get("/fapi/v1/trades", limit="2")
    assert [r["id"] for r in latest] == [tape[-2][0], tape[-1][0]]
    assert get("/fapi/v1/aggTrades", endTime=str(since), limit="1")[0]["T"] <= since


def test_funding_rate_history_checks_its_limit_and_income_history_pages():
    """GET /fapi/v1/fundingRate: limit 100 by default, 1000 at most (1001, 0 and -5 answered the whole
    history or part of it); GET /fapi/v1/income takes Binance's ``page``: pages of ``limit`` rows, from a
    startTime on, else back from the newest (page 2 answered page 1's rows)."""
    from fleet.sim.server import SimServer

    server = SimServer(symbols=["ETHUSDC"], seed=1, clock=lambda: T0)  # not started: handlers only
    e = server.engine

    def get(path, **params):
        return server._routes[("GET", path)][0]("main", {"symbol": "ETHUSDC", **params}, T0)

    for bad in ("1001", "0", "-5", "x"):
        with pytest.raises(SimApiError) as err:
            get("/fapi/v1/fundingRate", limit=bad)
        assert err.value.code == -1130 and "limit" in err.value.msg
    assert len(get("/fapi/v1/fundingRate", limit="1000")) <= 1000
    acct = e.accounts["main"]
    for i in range(5):
        e._income(acct, "ETHUSDC", "FUNDING_FEE", Decimal(-i), "USDC", T0 - 5_000 + i, "")
    ids = [r["tranId"] for r in get("/fapi/v1/income", limit="2")]
    assert [r["tranId"] for r in get("/fapi/v1/income", limit="2", page="2")][-1] == ids[0] - 1
    assert [r["tranId"] for r in get("/fapi/v1/income", limit="2", page="3")] == [ids[0] - 3]
    assert get("/fapi/v1/income", limit="2", page="4") == []
    first = get("/fapi/v1/income", startTime=str(T0 - 5_000), limit="2", page="2")
    assert [r["time"] for r in first] == [T0 - 4_998, T0 - 4_997]
    with pytest.raises(SimApiError) as err:
        get("/fapi/v1/income", page="0")
    assert err.value.code == -1130 and "page" in err.value.msg


def test_a_book_built_from_a_1000_level_snapshot_and_the_diff_stream_equals_the_exchanges_at_every_depth():
    """Binance's documented local book (GET /fapi/v1/depth?limit=1000, then the diff events chained by
    pu) is the exchange's at every level it holds, not only the top 50: a level the touch moved away
    from, our own orders placed, amended and cancelled 70 and 300 levels behind the touch (their levels
    never came in an event: a cancelled one stayed in the client's book as a phantom), the levels behind
    a touch that jumped past 50 levels, and a taker's sweep beyond the top 50 refilling."""
    from fleet.sim.server import SimServer

    server = SimServer(symbols=["ETHUSDC"], seed=3, clock=lambda: T0)  # not started: handlers only
    e = server.engine
    b = e.books["ETHUSDC"]
    e.watch("ethusdc@depth@100ms")
    now = T0
    events: list[dict] = []
    deep: list[int] = []

    def run(ms: int) -> None:
        nonlocal now
        for i in range(ms // 50):
            now += 50
            e.advance(now)
            if i % 9 == 0:   # our orders deep behind the touch, placed and cancelled, and some amended
                behind = (70, 300)[len(deep) % 2]
                price = b.best_bid() - behind
                r = e.new_order("main", {"symbol": "ETHUSDC", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC",
                                         "price": b.price_str(price), "quantity": "1.000"}, now)
                deep.append(r["orderId"])
                if len(deep) > 3:
                    old = deep.pop(0)
                    try:   # (a jump may have filled it)
                        if old % 2:
                            e.cancel_order("main", {"symbol": "ETHUSDC", "orderId": str(old)}, now)
                        else:
                            e.modify_order("main", {"symbol": "ETHUSDC", "orderId": str(old), "side": "BUY",
                                                    "quantity": "0.500", "price": b.price_str(price - 5)}, now)
                    except SimApiError as exc:
                        assert exc.code in (-2011, -2013), exc
            events.extend(p for k, _, p in e.drain_rendered() if k == "m")

    depth = server._routes[("GET", "/fapi/v1/depth")][0]
    run(2000)
    snap = depth("main", {"symbol": "ETHUSDC", "limit": "1000"}, now)
    local = {side: {round(float(p) / b.tick_f): round(float(q) / b.step_f) for p, q in snap[key]}
             for side, key in (("b", "bids"), ("a", "asks"))}
    floor, ceiling = min(local["b"]), max(local["a"])   # what the snapshot reached: the client's book
    checked = 0
    for i in range(8):
        if i == 2:   # the touch jumps past 50 levels, and back: the levels behind it are new to the client
            e.jump("ETHUSDC", 0.4, now)
        elif i == 4:
            e.jump("ETHUSDC", -0.4, now)
        elif i == 6:   # a taker sweeps beyond the top 50; the eaten levels refill later
            e.new_order("main", {"symbol": "ETHUSDC", "side": "SELL", "type": "MARKET", "quantity": "40.000"}, now)
        run(1500)
        for ev in events:
            if ev["u"] < snap["lastUpdateId"]:
                continue
            for side in ("b", "a"):
                for p, q in ev[side]:
                    ticks, steps = round(float(p) / b.tick_f), round(float(q) / b.step_f)
                    if steps:
                        local[side][ticks] = steps
                    else:
                        local[side].pop(ticks, None)
        events.clear()
        bids, asks = b.depth_levels(1000)
        # the prices both hold: the snapshot's reach, and the exchange's 1000 levels now
        low, high = max(floor, bids[-1][0]), min(ceiling, asks[-1][0])
        truth_b = {p: q for p, q in bids if p >= low}
        truth_a = {p: q for p, q in asks if p <= high}
        held_b = {p: q for p, q in local["b"].items() if p >= low}
        held_a = {p: q for p, q in local["a"].items() if p <= high}
        assert held_b == truth_b and held_a == truth_a, i
        checked += len(truth_b) + len(truth_a)
    assert checked > 8 * 1000


def test_a_depth_read_finds_its_levels_past_a_band_takers_ate():
    """Takers sweep some 360 levels of bids, then our bid rests just under the synthetic touch (above the
    eaten band): a read of 50 levels looked 210 prices down and found 1 (the diff stream then zeroed the
    last event's levels, still on the book); it finds all 50."""
    from fleet.sim.server import SimServer

    rich = {"accounts": [{"name": "main", "balances": {"USDC": "1000000000"}}]}   # the sweeps' margin
    server = SimServer(symbols=["ETHUSDC"], seed=3, clock=lambda: T0, config=rich)  # not started: handlers only
    e = server.engine
    b = e.books["ETHUSDC"]
    e.set_frozen("ETHUSDC", True, "price")
    e.advance(T0 + 1000)
    for _ in range(8):
        for side in ("SELL", "BUY"):
            e.new_order("main", {"symbol": "ETHUSDC", "side": side, "type": "MARKET", "quantity": "2000.000"},
                        T0 + 1000)
    e.new_order("main", {"symbol": "ETHUSDC", "side": "BUY", "type": "LIMIT", "timeInForce": "GTC",
                         "price": b.price_str(b.bid_top - 1), "quantity": "100.000"}, T0 + 1000)
    bids, asks = b.depth_levels(50)
    assert len(bids) == len(asks) == 50 and bids[0][0] == b.bid_top - 1
    rest = server._routes[("GET", "/fapi/v1/depth")][0]("main", {"symbol": "ETHUSDC", "limit": "50"}, T0 + 1000)
    assert len(rest["bids"]) == 50 and rest["bids"][1][0] == b.price_str(b.synth_best_bid())


def test_a_filled_order_is_found_for_90_days_and_one_closed_without_a_fill_for_3_or_until_newer_push_it_out(
        monkeypatch):
    """Binance's query routes find a closed order for 90 days, one cancelled or expired without a fill for 3
    days. The engine keeps the newest closed orders of each kind: a bound on both together lost a filled
    order within an hour of a quoting agent's cancels (20,000 of them), and its reconciliation read a fill as
    an order that never was. (The bound is lowered here, and the clock moved without stepping the market.)"""
    import fleet.sim.book as book

    monkeypatch.setattr(book, "CLOSED_UNFILLED_KEPT", 50)
    e = _engine()
    b = e.books["ETHUSDC"]

    def order(cid: str, **p: str) -> dict:
        return e.new_order("main", {"symbol": "ETHUSDC", "quantity": "0.010", "newClientOrderId": cid, **p}, e.now_ms)

    def found(**p: str) -> bool:
        try:
            e.query_order("main", {"symbol": "ETHUSDC", **p})
            return True
        except SimApiError as exc:
            assert exc.code == -2013, exc
            return False

    filled = order("filled", side="BUY", type="MARKET")
    far = b.price_str(b.best_bid() - 200)
    cancelled = order("cancelled", side="BUY", type="LIMIT", timeInForce="GTC", price=far)
    e.cancel_order("main", {"symbol": "ETHUSDC", "orderId": str(cancelled["orderId"])}, e.now_ms)
    assert found(orderId=str(cancelled["orderId"])) and found(origClientOrderId="cancelled")
    for i in range(50):   # newer orders closed without a fill (IOCs far from the touch expire)
        order(f"ioc-{i}", side="BUY", type="LIMIT", timeInForce="IOC", price=far)
    assert not found(orderId=str(cancelled["orderId"])) and not found(origClientOrderId="cancelled")
    assert found(orderId=str(filled["orderId"])) and found(origClientOrderId="filled")
    listed = {o["orderId"] for o in e.all_orders("main", {"symbol": "ETHUSDC", "startTime": str(e.now_ms - 1000)})}
    assert filled["orderId"] in listed and cancelled["orderId"] not in listed and len(listed) == 51
    e.now_ms += 3 * book.DAY_MS + 1_000   # three days on: those without a fill are no longer found
    assert not found(origClientOrderId="ioc-49") and found(orderId=str(filled["orderId"]))
    assert [o["orderId"] for o in e.all_orders("main", {"symbol": "ETHUSDC", "orderId": "0"})] == [filled["orderId"]]
    e.now_ms += 87 * book.DAY_MS   # 90 days on: nor the filled one
    assert not found(orderId=str(filled["orderId"])) and not found(origClientOrderId="filled")
