"""ccxt.pro's binanceusdm *watch* methods against the simulator, pointed at it as at Binance.

ccxt 4.5.90 keeps one WebSocket base for USD-M, ``urls['api']['ws']['linear'] =
'wss://fstream.binance.com/ws'``, and rewrites it per stream category (ccxt/pro/binance.py
``get_ws_url`` / ``get_future_ws_category`` / ``get_private_ws_url``):

- books, bookTicker, trade:          ``<base>/public/ws/<n>``  then ``SUBSCRIBE [...]``
- ticker, kline, markPrice, ...:     ``<base>/market/ws/<n>``  then ``SUBSCRIBE [...]``
- user data:                         ``<base>/private/ws?listenKey=<key>`` (no SUBSCRIBE)

``<n>`` is ccxt's connection index (``binance.stream()``: "0", "1", ... up to ``streamLimits``),
put in the path where Binance documents ``/ws/<streamName>``; ccxt has connected to
``.../ws/<n>`` on Binance since ccxt PR #15737 (2022) and to ``.../public|market/ws/<n>`` since the
2026 split (ccxt issue #28083). Here only the host is replaced by the simulator's ``ws_url``.

Two things ccxt needs of the simulator, both as Binance does them: a path segment after ``/ws/``
that names no stream opens an empty connection for SUBSCRIBE to fill (``fleet/sim/ws.py``), and the
diff depth stream's events zero every level gone since the last event or since a snapshot showed it,
so a book built the documented way (snapshot, then events) never keeps a stale level
(``Engine._publish_book``, ``Engine.note_depth_snapshot``).

User-data watch_* calls are armed before the REST call that triggers them: a user stream pushes
once per change, so a call made after the frames arrived would wait for a next change.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any, Awaitable, Callable

import aiohttp
import ccxt.pro

from fleet.sim.server import SimServer
from fleet.sim.testkit import SimClient, wait_for
from tests.fleet.sim.test_sim_ccxt import _client

ETH = "ETH/USDC:USDC"
BTC = "BTC/USDT:USDT"
SOL = "SOL/USDT:USDT"
WATCH_S = 10.0   # deadline of one watch_* call
JUMPS = {3: -0.5, 6: 1.0, 9: -0.3}   # after the n-th event applied: a jump of the market, in percent


def _pro(sim: SimServer) -> Any:
    """ccxt.pro.binanceusdm with REST on the simulator (as test_sim_ccxt) and its USD-M WebSocket
    base ``wss://fstream.binance.com/ws`` with only the host replaced; every frame it handles is
    recorded in ``ex.frames`` as (url, message)."""
    ex = _client(sim, ccxt.pro.binanceusdm)
    ws = dict(ex.urls["api"]["ws"])
    assert ws["linear"] == "wss://fstream.binance.com/ws"   # what ccxt uses against Binance
    ws["linear"] = f"{sim.ws_url}/ws"
    ws["ws-api"] = {**ws["ws-api"], "linear": f"{sim.ws_url}/ws-fapi/v1"}
    ex.urls["api"]["ws"] = ws
    ex.frames = []
    handle = ex.handle_message

    def record(client: Any, message: Any) -> Any:
        ex.frames.append((client.url, message))
        return handle(client, message)

    ex.handle_message = record
    return ex


def _evidence(ex: Any) -> str:
    frames = [f"{url} {json.dumps(m)[:300]}" for url, m in ex.frames[:4]]
    return f"ccxt urls opened: {sorted(u for u in ex.clients if '://' in u)}; first frames: {frames}"


async def _handshake_answer(message: str) -> str:
    """For a refused handshake ("400, message='Invalid response status', url='ws://...'"), what the
    server answers a plain GET of that URL (the simulator's JSON error)."""
    m = re.search(r"url='(ws://[^']+)'", message)
    if not m:
        return ""
    async with aiohttp.ClientSession() as s, s.get("http" + m.group(1)[2:]) as r:
        return f"; GET {m.group(1)} -> HTTP {r.status} {await r.text()}"


async def _watch(ex: Any, what: str, call: Callable[[], Awaitable[Any]], timeout: float = WATCH_S) -> Any:
    """One watch_* call with a deadline; a failure names the URLs ccxt opened and the frames it got."""
    try:
        return await asyncio.wait_for(call(), timeout)
    except Exception as exc:  # noqa: BLE001 - reported with the evidence
        raise AssertionError(f"{what} failed: {type(exc).__name__}: {exc}{await _handshake_answer(str(exc))}; "
                             f"{_evidence(ex)}") from exc


async def _private_socket_open(ex: Any) -> str:
    """The user-data socket ccxt opened (``/private/ws?listenKey=``), once it is connected."""
    def opened() -> bool:
        return any("/private/ws?listenKey=" in u and c.connected.done() and not c.connected.exception()
                   for u, c in ex.clients.items())
    await wait_for(opened, timeout=WATCH_S, what="ccxt's user-data socket")
    return next(u for u in ex.clients if "/private/ws?listenKey=" in u)


async def _collect_until(ex: Any, what: str, call: Callable[[], Awaitable[list]],
                         done: Callable[[list], bool], timeout: float = WATCH_S) -> list:
    """Call a market watch_* repeatedly, gathering what it returns, until ``done(gathered)`` (a
    market stream keeps pushing, so a call that starts late still resolves)."""
    got: list = []
    deadline = time.monotonic() + timeout
    while not done(got):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{what}: condition not met within {timeout}s; got {got}; {_evidence(ex)}")
        got.extend(await _watch(ex, what, call, timeout=left))
    return got


async def _settle(ex: Any, what: str, armed: asyncio.Future, done: Callable[[Any], bool],
                  cache: Callable[[], Any]) -> Any:
    """A user-data watch_* call ``armed`` before the REST action that triggers it: its answer if
    ``done`` with it; else (later frames of the same burst were handled while no call was waiting,
    and a user stream pushes nothing more) the ccxt cache that watch_* answers from, once ``done``."""
    first = await _watch(ex, what, lambda: armed)
    if done(first):
        return first
    await wait_for(lambda: done(cache()), timeout=WATCH_S, what=f"{what}: {_evidence(ex)}")
    return cache()


# -- the connection and the book, without ccxt ------------------------------------------------


async def test_a_routed_ws_path_with_a_connection_number_opens_an_empty_connection(sim):
    """ccxt connects to ``/public/ws/0`` and ``/market/ws/0`` and then SUBSCRIBEs; the "0" is not a
    stream name. ccxt's watch methods connect to Binance this way (ccxt PR #15737, issue #28083)."""
    async with aiohttp.ClientSession() as s:
        for path, stream, event in (("/public/ws/0", "ethusdc@bookTicker", "bookTicker"),
                                    ("/market/ws/0", "ethusdc@markPrice@1s", "markPriceUpdate")):
            try:
                ws = await s.ws_connect(sim.ws_url + path)
            except aiohttp.WSServerHandshakeError as exc:
                async with s.get(sim.rest_url + path) as r:
                    body = await r.text()
                raise AssertionError(f"{path}: handshake refused: HTTP {exc.status} {body}") from exc
            async with ws:
                await ws.send_str(json.dumps({"method": "SUBSCRIBE", "params": [stream], "id": 1}))
                assert json.loads((await ws.receive(timeout=5)).data) == {"result": None, "id": 1}
                assert json.loads((await ws.receive(timeout=5)).data)["e"] == event


async def test_a_book_built_from_a_snapshot_and_the_diff_events_never_keeps_a_gone_level(sim):
    """Binance's local-book procedure without ccxt: open the diff stream, take the REST snapshot
    before the first event, apply the events whose ``u`` >= lastUpdateId (chained by ``pu``): never
    crossed, and equal to a later snapshot at the same update id, through jumps of the market beyond the
    stream's 50 levels (the snapshot's 1000 levels are zeroed as the touch sweeps past them). (The first
    event of a newly watched stream used to claim to follow the update before it without a "0" for the
    levels gone since; a jump left the snapshot's deep levels standing on the wrong side.)"""
    async with SimClient.for_sim(sim) as c, aiohttp.ClientSession() as s:
        ws = await s.ws_connect(f"{sim.ws_url}/public/ws")
        await ws.send_str(json.dumps({"method": "SUBSCRIBE", "params": ["ethusdc@depth@100ms"], "id": 1}))
        assert json.loads((await ws.receive(timeout=5)).data) == {"result": None, "id": 1}
        snap = (await c.public("GET", "/fapi/v1/depth", {"symbol": "ETHUSDC", "limit": 1000})).json
        bids = {p: q for p, q in snap["bids"]}
        asks = {p: q for p, q in snap["asks"]}
        last_u = snap["lastUpdateId"]
        applied = 0
        deadline = time.monotonic() + WATCH_S
        while True:
            assert time.monotonic() < deadline, "no event at a REST lastUpdateId"
            ev = json.loads((await ws.receive(timeout=5)).data)
            if ev["u"] < snap["lastUpdateId"]:
                continue
            assert applied or ev["U"] <= last_u + 1, f"a gap after the snapshot: {last_u} then {ev['U']}"
            assert not applied or ev["pu"] == last_u
            for side, levels in ((bids, ev["b"]), (asks, ev["a"])):
                for p, q in levels:
                    if float(q) == 0:
                        side.pop(p, None)
                    else:
                        side[p] = q
            last_u = ev["u"]
            applied += 1
            if applied in JUMPS:   # 0.5 % is 1,500 ticks of 0.01: far past the 50 levels kept exact
                await c.admin("POST", "/sim/market/jump", {"symbol": "ETHUSDC", "pct": JUMPS[applied]})
            best_bid, best_ask = max(bids, key=float), min(asks, key=float)
            assert float(best_bid) < float(best_ask), (
                f"crossed after event U={ev['U']} u={ev['u']} pu={ev['pu']} (snapshot {snap['lastUpdateId']}, "
                f"top bid {snap['bids'][0]}): bid {best_bid} >= ask {best_ask}; the event's bids run "
                f"{ev['b'][0]} .. {ev['b'][-1]}")
            rest = (await c.public("GET", "/fapi/v1/depth", {"symbol": "ETHUSDC", "limit": 1000})).json
            if applied > max(JUMPS) and rest["lastUpdateId"] == last_u:
                break
        top = lambda side, rev: sorted(((float(p), float(q)) for p, q in side.items()), reverse=rev)[:50]  # noqa: E731
        assert top(bids, True) == [(float(p), float(q)) for p, q in rest["bids"][:50]]
        assert top(asks, False) == [(float(p), float(q)) for p, q in rest["asks"][:50]]
        await ws.close()


# -- market data (/public and /market) ----------------------------------------------------------


async def test_watch_order_book(sim):
    """watch_order_book: ``<symbol>@depth@100ms`` on ``/public/ws/0``, a REST snapshot, then the
    diffs; never crossed, and at a REST lastUpdateId it equals GET /fapi/v1/depth (top 20 levels;
    the simulator keeps DIFF_LEVELS = 50 levels a side exact on the diff stream)."""
    ex = _pro(sim)
    try:
        await ex.load_markets()
        deadline = time.monotonic() + 3 * WATCH_S
        nonces: list[int] = []
        while True:
            book = await _watch(ex, "watch_order_book", lambda: ex.watch_order_book(ETH))
            nonces.append(book["nonce"])
            assert book["bids"][0][0] < book["asks"][0][0], (
                f"crossed book at nonce {book['nonce']}: bid {book['bids'][0]} ask {book['asks'][0]}")
            rest = await ex.fapiPublicGetDepth({"symbol": "ETHUSDC", "limit": 1000})
            if len(nonces) >= 10 and int(rest["lastUpdateId"]) == book["nonce"]:
                break
            assert time.monotonic() < deadline, f"no book at the REST lastUpdateId; nonces {nonces}"
        assert nonces == sorted(nonces)
        assert [(float(p), float(q)) for p, q in rest["bids"][:20]] == [tuple(x) for x in book["bids"][:20]]
        assert [(float(p), float(q)) for p, q in rest["asks"][:20]] == [tuple(x) for x in book["asks"][:20]]
        assert ex.frames[0][0].endswith("/public/ws/0")
    finally:
        await ex.close()


async def test_watch_trades(sim):
    """watch_trades: ``<symbol>@trade`` on ``/public/ws/0``; each trade is in GET /fapi/v1/trades
    with the same price, quantity and side."""
    ex = _pro(sim)
    try:
        await ex.load_markets()
        trades = await _collect_until(ex, "watch_trades", lambda: ex.watch_trades(ETH), lambda g: len(g) >= 3)
        assert {t["info"]["e"] for t in trades} == {"trade"}
        rest = {r["id"]: r for r in await ex.fapiPublicGetTrades({"symbol": "ETHUSDC", "limit": 1000})}
        for t in trades:
            r = rest[int(t["id"])]
            assert t["symbol"] == ETH
            assert (t["price"], t["amount"]) == (float(r["price"]), float(r["qty"]))
            assert t["side"] == ("sell" if r["isBuyerMaker"] else "buy")
    finally:
        await ex.close()


async def test_watch_ticker(sim):
    """watch_ticker: ``<symbol>@miniTicker`` (ccxt's default) on ``/market/ws/0``; it agrees with
    GET /fapi/v1/ticker/24hr."""
    ex = _pro(sim)
    try:
        await ex.load_markets()
        ticker = await _watch(ex, "watch_ticker", lambda: ex.watch_ticker(ETH))
        assert ticker["symbol"] == ETH and ticker["info"]["e"] == "24hrMiniTicker"
        rest = await ex.fapiPublicGetTicker24hr({"symbol": "ETHUSDC"})
        assert ticker["open"] == float(rest["openPrice"])
        assert abs(ticker["last"] / float(rest["lastPrice"]) - 1) < 0.005
        assert ex.frames[0][0].endswith("/market/ws/0")
    finally:
        await ex.close()


async def test_watch_tickers_all(sim):
    """watch_tickers(): ``!miniTicker@arr`` on ``/market/ws/0``; only listed symbols, each near
    its REST 24 h ticker."""
    ex = _pro(sim)
    try:
        await ex.load_markets()
        tickers = await _watch(ex, "watch_tickers()", lambda: ex.watch_tickers())
        assert tickers and set(tickers) <= {ETH, BTC, SOL}
        for symbol, t in tickers.items():
            rest = await ex.fapiPublicGetTicker24hr({"symbol": ex.market(symbol)["id"]})
            assert abs(t["last"] / float(rest["lastPrice"]) - 1) < 0.005
    finally:
        await ex.close()


async def test_watch_tickers_symbols(sim):
    """watch_tickers([ETH, BTC]): ``ethusdc@miniTicker`` + ``btcusdt@miniTicker``; only those come
    back, and both reach ccxt's ticker cache (the two are pushed together every 2 s, so a call
    answers with the first and the other lands in the cache before the next call)."""
    ex = _pro(sim)
    try:
        await ex.load_markets()
        got = await _watch(ex, "watch_tickers([ETH, BTC])", lambda: ex.watch_tickers([ETH, BTC]))
        assert got and set(got) <= {ETH, BTC}
        await wait_for(lambda: {ETH, BTC} <= set(ex.tickers), timeout=WATCH_S, what=f"both tickers; {_evidence(ex)}")
        assert {m["s"] for _, m in ex.frames if isinstance(m, dict) and "s" in m} == {"ETHUSDC", "BTCUSDT"}
        for symbol in (ETH, BTC):
            rest = await ex.fapiPublicGetTicker24hr({"symbol": ex.market(symbol)["id"]})
            assert abs(ex.tickers[symbol]["last"] / float(rest["lastPrice"]) - 1) < 0.005
    finally:
        await ex.close()


async def test_watch_bids_asks(sim):
    """watch_bids_asks([ETH]) (``ethusdc@bookTicker``) and watch_bids_asks() (``!bookTicker``) on
    ``/public/ws/<n>``; the touch equals GET /fapi/v1/ticker/bookTicker at the same update id."""
    ex = _pro(sim)
    try:
        await ex.load_markets()
        deadline = time.monotonic() + 3 * WATCH_S
        while True:
            got = await _watch(ex, "watch_bids_asks([ETH])", lambda: ex.watch_bids_asks([ETH]))
            t = got[ETH]
            rest = await ex.fapiPublicGetTickerBookTicker({"symbol": "ETHUSDC"})
            if int(rest.get("lastUpdateId", -1)) == int(t["info"]["u"]):
                break
            assert time.monotonic() < deadline, f"no bookTicker at the REST update id; last {t['info']}, {rest}"
        assert (t["bid"], t["bidVolume"], t["ask"], t["askVolume"]) == (
            float(rest["bidPrice"]), float(rest["bidQty"]), float(rest["askPrice"]), float(rest["askQty"]))
        every = await _watch(ex, "watch_bids_asks()", lambda: ex.watch_bids_asks())
        assert every and set(every) <= {ETH, BTC, SOL}
        assert all(v["bid"] < v["ask"] for v in every.values())
    finally:
        await ex.close()


async def test_watch_ohlcv(sim):
    """watch_ohlcv(ETH, 1m): ``ethusdc@kline_1m`` on ``/market/ws/0``; the candle is REST's last."""
    ex = _pro(sim)
    try:
        await ex.load_markets()
        candles = await _watch(ex, "watch_ohlcv", lambda: ex.watch_ohlcv(ETH, "1m"))
        ts, o, h, low, c, v = candles[-1]
        rest = await ex.fapiPublicGetKlines({"symbol": "ETHUSDC", "interval": "1m", "limit": 2})
        row = next(r for r in rest if int(r[0]) == ts)
        assert o == float(row[1]) and low <= min(o, c) <= max(o, c) <= h
    finally:
        await ex.close()


async def test_watch_mark_price(sim):
    """watch_mark_price: ``ethusdc@markPrice@1s`` on ``/market/ws/0``; near GET /fapi/v1/premiumIndex,
    same next funding time."""
    ex = _pro(sim)
    try:
        await ex.load_markets()
        mark = await _watch(ex, "watch_mark_price", lambda: ex.watch_mark_price(ETH))
        rest = await ex.fapiPublicGetPremiumIndex({"symbol": "ETHUSDC"})
        assert mark["symbol"] == ETH and mark["info"]["e"] == "markPriceUpdate"
        assert abs(mark["markPrice"] / float(rest["markPrice"]) - 1) < 0.005
        assert int(mark["info"]["T"]) == int(rest["nextFundingTime"])
    finally:
        await ex.close()


# -- user data (/private/ws?listenKey=) ----------------------------------------------------------


async def test_watch_orders_follows_place_cancel_and_fill(sim):
    """watch_orders: a resting post-only buy (NEW), its cancel (CANCELED), then a market buy
    (NEW, FILLED), each as fetch_order and /sim/state tell."""
    ex = _pro(sim)

    def cached() -> list:
        return [o for o in (ex.orders or []) if o["symbol"] == ETH]

    def has(order_id: str, status: str) -> Callable[[list], bool]:
        return lambda got: any(o["id"] == order_id and o["status"] == status for o in got)

    try:
        await ex.load_markets()
        armed = asyncio.ensure_future(ex.watch_orders(ETH))
        url = await _private_socket_open(ex)
        assert url.startswith(f"{sim.ws_url}/private/ws?listenKey=")
        bid = (await ex.fetch_order_book(ETH, limit=5))["bids"][0][0]
        price = float(ex.price_to_precision(ETH, bid * 0.98))
        placed = await ex.create_order(ETH, "limit", "buy", 0.01, price, {"postOnly": True})
        got = await _settle(ex, "watch_orders (new)", armed, has(placed["id"], "open"), cached)
        o = next(x for x in got if x["id"] == placed["id"])
        assert (o["status"], o["side"], o["type"], o["price"], o["amount"], o["filled"], o["postOnly"]) == (
            "open", "buy", "limit", price, 0.01, 0.0, True)
        async with SimClient.for_sim(sim) as sc:
            st = await sc.state(symbol="ETHUSDC")
        assert [(r["orderId"], r["status"]) for r in st["open_orders"]] == [(int(placed["id"]), "NEW")]

        armed = asyncio.ensure_future(ex.watch_orders(ETH))
        await ex.cancel_order(placed["id"], ETH)
        await _settle(ex, "watch_orders (cancel)", armed, has(placed["id"], "canceled"), cached)
        assert (await ex.fetch_order(placed["id"], ETH))["status"] == "canceled"

        armed = asyncio.ensure_future(ex.watch_orders(ETH))
        market = await ex.create_order(ETH, "market", "buy", 0.02)
        got = await _settle(ex, "watch_orders (fill)", armed, has(market["id"], "closed"), cached)
        filled = next(x for x in got if x["id"] == market["id"])
        truth = await ex.fetch_order(market["id"], ETH)
        assert (filled["filled"], filled["remaining"], filled["average"], filled["side"], filled["type"]) == (
            truth["filled"], 0.0, truth["average"], "buy", "market")
        assert filled["filled"] == 0.02
    finally:
        await ex.close()


async def test_watch_my_trades_match_the_exchanges_fills(sim):
    """watch_my_trades: a market buy's fills, as GET /fapi/v1/userTrades lists them (id, order,
    price, amount, fee, taker)."""
    ex = _pro(sim)
    try:
        await ex.load_markets()
        armed = asyncio.ensure_future(ex.watch_my_trades(ETH))
        await _private_socket_open(ex)
        order = await ex.create_order(ETH, "market", "buy", 0.02)
        got = await _settle(ex, "watch_my_trades", armed,
                            lambda g: sum(t["amount"] for t in g if t["order"] == order["id"]) >= 0.02,
                            lambda: list(ex.myTrades or []))
        mine = [t for t in got if t["order"] == order["id"]]
        truth = {t["id"]: t for t in await ex.fetch_my_trades(ETH) if t["order"] == order["id"]}
        assert sorted(t["id"] for t in mine) == sorted(truth)
        for t in mine:
            r = truth[t["id"]]
            assert (t["symbol"], t["side"], t["price"], t["amount"], t["takerOrMaker"]) == (
                ETH, "buy", r["price"], r["amount"], "taker")
            assert t["fee"]["currency"] == r["fee"]["currency"] == "USDC"
            assert abs(t["fee"]["cost"] - r["fee"]["cost"]) < 1e-9
    finally:
        await ex.close()


async def test_watch_balance_follows_a_fill(sim):
    """watch_balance: the ACCOUNT_UPDATE of a market buy; the USDC total is the exchange's wallet."""
    ex = _pro(sim)
    try:
        await ex.load_markets()
        first = asyncio.ensure_future(ex.watch_balance())
        await _private_socket_open(ex)
        await ex.create_order(ETH, "market", "buy", 0.02)
        bal = await _watch(ex, "watch_balance", lambda: first)
        async with SimClient.for_sim(sim) as sc:
            st = await sc.state()
        assert bal["info"]["e"] == "ACCOUNT_UPDATE" and bal["info"]["a"]["m"] == "ORDER"
        assert bal["USDC"]["total"] == float(st["balances"]["USDC"]) < 100000
        # ccxt's REST total is marginBalance (wallet + unrealized PnL); its stream total is "wb"
        # (options["wallet"]): compare with the REST walletBalance
        rest = (await ex.fetch_balance())["info"]["assets"]
        assert bal["USDC"]["total"] == float(next(a["walletBalance"] for a in rest if a["asset"] == "USDC"))
    finally:
        await ex.close()


async def test_watch_positions_snapshot_then_a_fill(sim):
    """watch_positions: first the REST snapshot (no position), then the ACCOUNT_UPDATE of a market
    buy: long 0.02 at the exchange's entry price."""
    ex = _pro(sim)
    try:
        await ex.load_markets()
        snapshot = await _watch(ex, "watch_positions (snapshot)", lambda: ex.watch_positions([ETH]))
        assert snapshot == []   # ccxt answers the first call from REST, before it opens the socket
        nxt = asyncio.ensure_future(ex.watch_positions([ETH]))
        await _private_socket_open(ex)
        await ex.create_order(ETH, "market", "buy", 0.02)
        positions = await _watch(ex, "watch_positions", lambda: nxt)
        p = next(x for x in positions if x["symbol"] == ETH)
        async with SimClient.for_sim(sim) as sc:
            truth = (await sc.state(symbol="ETHUSDC"))["positions"]["ETHUSDC"]
        assert (p["side"], p["contracts"], p["marginMode"], p["hedged"]) == ("long", 0.02, "cross", False)
        assert p["entryPrice"] == float(truth["entry_price"])
        assert float(truth["amount"]) == 0.02
    finally:
        await ex.close()
