"""Wire frames built lazily: the engine queues compact snapshots, frames are rendered only for a listener."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from fleet.sim.book import INDEX_RATIO, Book
from fleet.sim.orders import Order
from fleet.sim.units import Q8, ZERO, plain, s8

# The 2026 market frames' "st" (1 for USD-M) and, in book and 24 h ticker frames, "ps" (the pair: the symbol
# itself for a perpetual), as Binance's SDK models and live frames carry them.
UM = 1


def render(payload: Any) -> Any:
    """The wire frame (a dict, or a list for array streams) of one outbox payload."""
    if type(payload) is tuple:
        return payload[0](*payload[1:])
    return payload


def render_list(items: list[Any]) -> list[Any]:
    return [render(i) for i in items]


def render_agg(b: Book, aid: int, price: int, qty: int, t: int, buyer_maker: bool) -> dict[str, Any]:
    q = b.qty_str(qty)
    return {"e": "aggTrade", "E": t, "a": aid, "s": b.symbol, "p": b.price_str(price), "q": q, "nq": q,
            "f": aid, "l": aid, "T": t, "m": buyer_maker, "st": UM}


def render_force_order(b: Book, side: str, qty: int, price: int, t: int) -> dict[str, Any]:
    """``<symbol>@forceOrder`` / ``!forceOrder@arr``: a liquidation order, filled at once at ``price``."""
    q, p = b.qty_str(qty), b.price_str(price)
    return {"e": "forceOrder", "E": t, "o": {"s": b.symbol, "S": side, "o": "LIMIT", "f": "IOC", "q": q, "p": p,
                                             "ap": p, "X": "FILLED", "l": q, "z": q, "T": t}}


def render_trade(b: Book, tid: int, price: int, qty: int, t: int, buyer_maker: bool) -> dict[str, Any]:
    """``<symbol>@trade``; ``X`` is the taker's order type (MARKET, a liquidation's too; ADL never happens here)."""
    return {"e": "trade", "E": t, "T": t, "s": b.symbol, "t": tid, "p": b.price_str(price), "q": b.qty_str(qty),
            "X": "MARKET", "m": buyer_maker}


def render_kline(b: Book, interval: str, row: list[Any], first_id: int, last_id: int, t: int,
                 closed: bool) -> dict[str, Any]:
    """A ``<symbol>@kline_<interval>`` event from a kline array (``Book.kline_row``)."""
    return {"e": "kline", "E": t, "s": b.symbol, "k": {
        "t": row[0], "T": row[6], "s": b.symbol, "i": interval, "f": first_id, "L": last_id, "o": row[1],
        "c": row[4], "h": row[2], "l": row[3], "v": row[5], "n": row[8], "x": closed, "q": row[7],
        "V": row[9], "Q": row[10], "B": "0"}}


def render_continuous_kline(b: Book, interval: str, row: list[Any], first_id: int, last_id: int, t: int,
                            closed: bool) -> dict[str, Any]:
    """A ``<pair>_perpetual@continuousKline_<interval>`` event: the perpetual's candle, named by pair
    and contract type (no symbol)."""
    k = render_kline(b, interval, row, first_id, last_id, t, closed)["k"]
    del k["s"]
    return {"e": "continuous_kline", "E": t, "ps": b.symbol, "ct": "PERPETUAL", "k": k}


DAY_MS = 86_400_000


def ticker_24h(b: Book, t: int) -> dict[str, Any]:
    """The rolling 24 h statistics of ``b`` at ``t``, by REST ``/ticker/24hr``'s names: folded from the
    1-minute candles opened in the window (open, high and low of the mid, rounded to the tick), with the
    last trade's price and size. High and low always hold the open and the last price."""
    tick = b.tick_f
    last = round(b.last_price / tick)
    g = b.candle_group(t - DAY_MS + 1, t + 1)
    if g is None:
        open_ = high = low = last
        vol = quote_units = trades = 0
        first_id = last_id = -1
    else:
        open_ = round(g[1] / tick)
        high = max(round(g[2] / tick), open_, last)
        low = min(round(g[3] / tick), open_, last)
        vol, quote_units, trades, first_id, last_id = g[5], g[6], g[7], g[10], g[11]
    last_qty = b.recent_trades[-1][2] if b.recent_trades else 0
    pp = b.price_places
    avg = f"{quote_units / vol * tick:.{pp + 2}f}" if vol else b.price_str(last)
    return {"symbol": b.symbol, "priceChange": b.price_str(last - open_),
            "priceChangePercent": f"{(last / open_ - 1) * 100 if open_ else 0.0:.3f}", "weightedAvgPrice": avg,
            "lastPrice": b.price_str(last), "lastQty": b.qty_str(last_qty),
            "openPrice": b.price_str(open_), "highPrice": b.price_str(high), "lowPrice": b.price_str(low),
            "volume": b.qty_str(vol), "quoteVolume": f"{b.notional_unit * quote_units:f}",
            "openTime": t - DAY_MS, "closeTime": t, "firstId": first_id, "lastId": last_id, "count": trades}


def render_ticker(b: Book, s: dict[str, Any], t: int) -> dict[str, Any]:
    """A ``<symbol>@ticker`` event from :func:`ticker_24h`'s statistics."""
    return {"e": "24hrTicker", "E": t, "s": b.symbol, "p": s["priceChange"], "P": s["priceChangePercent"],
            "w": s["weightedAvgPrice"], "c": s["lastPrice"], "Q": s["lastQty"], "o": s["openPrice"],
            "h": s["highPrice"], "l": s["lowPrice"], "v": s["volume"], "q": s["quoteVolume"], "O": s["openTime"],
            "C": s["closeTime"], "F": s["firstId"], "L": s["lastId"], "n": s["count"], "ps": b.symbol, "st": UM}


def render_mini_ticker(b: Book, s: dict[str, Any], t: int) -> dict[str, Any]:
    """A ``<symbol>@miniTicker`` event from :func:`ticker_24h`'s statistics."""
    return {"e": "24hrMiniTicker", "E": t, "s": b.symbol, "c": s["lastPrice"], "o": s["openPrice"],
            "h": s["highPrice"], "l": s["lowPrice"], "v": s["volume"], "q": s["quoteVolume"], "ps": b.symbol,
            "st": UM}


def render_bt(b: Book, update_id: int, bt: tuple[int, int, int, int], t: int) -> dict[str, Any]:
    return {"e": "bookTicker", "u": update_id, "s": b.symbol, "ps": b.symbol, "b": b.price_str(bt[0]),
            "B": b.qty_str(bt[1]), "a": b.price_str(bt[2]), "A": b.qty_str(bt[3]), "T": t, "E": t, "st": UM}


def render_depth(b: Book, first: int, last: int, prev: int,
                 levels: tuple[list[tuple[int, int]], list[tuple[int, int]]], t: int) -> dict[str, Any]:
    ps, qs = b.price_str, b.qty_str
    return {"e": "depthUpdate", "E": t, "T": t, "s": b.symbol, "ps": b.symbol, "st": UM, "U": first, "u": last,
            "pu": prev, "b": [[ps(p), qs(q)] for p, q in levels[0]],
            "a": [[ps(p), qs(q)] for p, q in levels[1]]}


def render_mark(b: Book, mark: float, rate: Decimal, next_funding: int, t: int) -> dict[str, Any]:
    m = f"{mark:.8f}"
    idx = f"{mark * INDEX_RATIO:.8f}"
    return {"e": "markPriceUpdate", "E": t, "s": b.symbol, "p": m, "ap": m, "P": idx, "i": idx,
            "r": f"{rate:.8f}", "T": next_funding, "st": UM}


def render_trade_lite(b: Book, o: Order, orig: int, price: int, fill_price: int, qty: int, trade_id: int,
                       maker: bool, t: int) -> dict[str, Any]:
    return {"e": "TRADE_LITE", "E": t, "T": t, "s": b.symbol, "q": b.qty_str(orig),
            "p": b.price_str(price) if price else "0", "m": maker, "c": o.client_id, "S": o.side,
            "L": b.price_str(fill_price), "l": b.qty_str(qty), "t": trade_id, "i": o.order_id}


def render_account_update(b: Book, reason: str, wallet: Decimal, cross: Decimal, change: Decimal, amount: int,
                          entry: Decimal, realized: Decimal, mark: float, t: int,
                          isolated_wallet: Decimal | None, break_even: Decimal) -> dict[str, Any]:
    """``cross``: the cross wallet (the wallet less the isolated positions' wallets); ``isolated_wallet``:
    the position's, None when its symbol is in cross margin; ``break_even``: ``Position.break_even``."""
    if amount:
        upnl = (Decimal(f"{mark:.8f}") - entry) * (b.step * amount)
        ep, bep = f"{entry:f}", f"{break_even:f}"
    else:
        upnl = ZERO
        ep = bep = "0"
    return {"e": "ACCOUNT_UPDATE", "E": t, "T": t, "a": {
        "m": reason, "B": [{"a": b.spec.margin_asset, "wb": s8(wallet), "cw": s8(cross), "bc": s8(change)}],
        "P": [{"s": b.symbol, "pa": plain(b.qty_str(amount)), "ep": plain(ep), "bep": plain(bep), "cr": s8(realized),
               "up": s8(upnl),
               "mt": "cross" if isolated_wallet is None else "isolated",
               "iw": "0" if isolated_wallet is None else s8(isolated_wallet), "ps": "BOTH",
               "ma": b.spec.margin_asset}]}}


def render_order_update(b: Book, o: Order, exec_type: str, status: str, orig: int, price: int, filled: int,
                         cum_quote: Decimal, bid_units: int, ask_units: int, last_qty: int, last_price: int,
                         commission: Decimal, trade_id: int, maker: bool, realized: Decimal, expire_reason: str,
                         t: int, modify_id: int | None = None) -> dict[str, Any]:
    if filled:
        avg = f"{(cum_quote / (b.step * filled)).quantize(Q8, rounding=ROUND_HALF_UP).normalize():f}"
    else:
        avg = "0"
    frame = {"e": "ORDER_TRADE_UPDATE", "E": t, "T": t, "o": {
        "s": b.symbol, "c": o.client_id, "S": o.side, "o": o.type, "f": o.tif, "q": plain(b.qty_str(orig)),
        "p": plain(b.price_str(price)) if o.type == "LIMIT" or o.type == "LIQUIDATION" else "0", "ap": avg, "sp": "0",
        "x": exec_type, "X": status, "i": o.order_id, "l": plain(b.qty_str(last_qty)), "z": plain(b.qty_str(filled)),
        "L": plain(b.price_str(last_price)) if last_qty else "0", "N": b.spec.margin_asset,
        "n": s8(commission) if commission else "0", "T": t, "t": trade_id,
        "b": plain(b.notional_str8(bid_units)), "a": plain(b.notional_str8(ask_units)), "m": maker, "R": o.reduce_only,
        "wt": "CONTRACT_PRICE", "ot": o.type, "ps": "BOTH", "cp": False, "rp": s8(realized) if realized else "0",
        "pP": False, "si": 0, "ss": 0, "V": o.stp, "pm": o.price_match, "gtd": o.gtd, "er": expire_reason}}
    if modify_id is not None:   # an AMENDMENT's, when the amendment named one (a string here)
        frame["o"]["M"] = str(modify_id)
    return frame


def render_diff(b: Book, first: int, final: int, prev: int, bids: list[tuple[int, int]],
                 asks: list[tuple[int, int]], t: int) -> dict[str, Any]:
    ps, qs = b.price_str, b.qty_str
    return {"e": "depthUpdate", "E": t, "T": t, "s": b.symbol, "ps": b.symbol, "st": UM, "U": first, "u": final, "pu": prev,
            "b": [[ps(p), qs(q)] for p, q in bids], "a": [[ps(p), qs(q)] for p, q in asks]}
