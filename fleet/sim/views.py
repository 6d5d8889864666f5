"""Read-only account and market views of the engine: the JSON of REST answers and of /sim/state."""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Callable

from fleet.sim.book import INDEX_RATIO, Book, still_listed
from fleet.sim.errors import WEEK_MS, SimApiError, int_param, invalid, week_window, within_a_week
from fleet.sim.orders import Account, Order, Position
from fleet.sim.units import Q8, ZERO, s8




# The fields each kind of REST order answer leaves out. Since Binance's CM-UM integration (effective
# 2026-06-30) the answer of a placement, an amendment or a cancel (single, batch, and the WebSocket
# API's order.place / modify / cancel) carries no avgPrice and no cumQuote: the fill price comes from a
# look-up or userTrades; nor, as the documented examples, time or cumBase, nor pair but in an
# amendment's (its documented example; Binance's SDK models of 2026-12 keep pair there, and the
# modifyId a caller sent, which the engine echoes). A
# placement asked for its RESULT (newOrderRespType) answers with how it ended, its average price and
# quote included. A look-up's (an order, the open ones, all of them, forceOrders) carries time, avgPrice
# and cumQuote, not cumQty, pair or cumBase.
_WRITE_ANSWER = ("time", "pair", "cumBase", "avgPrice", "cumQuote")
ORDER_SHAPES: dict[str, tuple[str, ...]] = {
    "new": _WRITE_ANSWER,
    "result": ("time", "pair", "cumBase"),
    "cancel": _WRITE_ANSWER,
    "amend": ("time", "cumBase", "avgPrice", "cumQuote"),
    "query": ("cumQty", "pair", "cumBase"),
}


def by_position_side(row: dict[str, Any], amount: Decimal) -> list[dict[str, Any]]:
    """A Hedge Mode account's rows of one symbol, as Binance lists them: a LONG and a SHORT, no BOTH
    (a position set by the admin route is on the side its sign names; the other row is flat)."""
    flat = {**row, "positionAmt": "0.0", "entryPrice": "0.0", "breakEvenPrice": "0.0", "unRealizedProfit": s8(ZERO),
            "notional": s8(ZERO), "isolatedMargin": s8(ZERO)}
    held = "LONG" if amount > 0 else "SHORT" if amount < 0 else None
    return [{**(row if side == held else flat), "positionSide": side} for side in ("LONG", "SHORT")]



def order_margin(held: Decimal, bids: Decimal, asks: Decimal, lev: int) -> Decimal:
    """A symbol's open orders' initial margin in one-way mode (Binance's margin FAQ): the position with the
    orders of the side that grows it most, ``max(|held + bids|, |held - asks|)``, beyond the position's own
    ``|held|`` (signed notional at the mark; orders at their prices), over the leverage. Orders that only
    reduce the position need none."""
    return max(ZERO, max(abs(held + bids), abs(held - asks)) - abs(held)) / lev

class EngineViews:
    """Mixed into :class:`fleet.sim.engine.Engine`; needs its books, accounts and clock."""

    books: dict[str, Book]
    accounts: dict[str, Account]
    now_ms: int
    next_funding_ms: int
    replay: Any  # a ReplayMarket when the market replays a recording, else None
    algo: Any    # the AlgoService: conditional orders
    cross_wallet: Callable[[Account, str], Decimal]   # fleet.sim.margin.IsolatedMargin's
    adl_quantile: Callable[[Account, Book], int]      # fleet.sim.liquidation.Liquidation's

    def book(self, symbol: str | None) -> Book:  # pragma: no cover - provided by Engine
        raise NotImplementedError

    def account(self, name: str) -> Account:  # pragma: no cover - provided by Engine
        raise NotImplementedError

    def leverage_of(self, acct: Account, symbol: str) -> int:  # pragma: no cover - provided by Engine
        raise NotImplementedError

    def available_balance(self, acct: Account, asset: str) -> Decimal:
        """The cross side's: its wallet and positions, less every open order's initial margin."""
        wallet = self.cross_wallet(acct, asset)
        used = ZERO
        upnl = ZERO
        for symbol, pos in acct.positions.items():
            b = self.books[symbol]
            if b.spec.margin_asset != asset or not pos.amount or symbol in acct.isolated:
                continue
            lev = self.leverage_of(acct, symbol)
            notional = b.step * abs(pos.amount) * b.mark_dec()
            used += notional / lev
            upnl += (b.mark_dec() - pos.entry) * (b.step * pos.amount)
        for symbol, units in acct.open_units.items():
            b = self.books[symbol]
            if b.spec.margin_asset != asset or not (units[0] or units[1]):
                continue
            pos = acct.positions.get(symbol)
            held = b.mark_dec() * b.step * pos.amount if pos is not None else ZERO
            used += order_margin(held, b.notional_unit * units[0], b.notional_unit * units[1],
                                 self.leverage_of(acct, symbol))
        return wallet + upnl - used

    def transferable(self, acct: Account, asset: str) -> Decimal:
        """What may leave the cross side (withdrawn, or added to an isolated position), Binance's margin
        FAQ: max(0, min(cross wallet - isolated open orders' initial margin - cross maintenance margin,
        available balance)); a profit not realized is not among it."""
        iso_oim = cross_mm = ZERO
        for b in self.books.values():
            if b.spec.margin_asset == asset:
                v = self._position_view(acct, b)
                if v["isolated"]:
                    iso_oim += v["oim"]
                else:
                    cross_mm += v["mm"]
        return max(ZERO, min(self.cross_wallet(acct, asset) - iso_oim - cross_mm, self.available_balance(acct, asset)))

    def _open_notional(self, acct: Account, symbol: str) -> tuple[Decimal, Decimal]:
        units = acct.open_units.get(symbol)
        if not units:
            return ZERO, ZERO
        unit = self.books[symbol].notional_unit
        return unit * units[0], unit * units[1]

    @staticmethod
    def _avg_str(b: Book, o: Order) -> str:
        if not o.filled:
            return "0"
        avg = o.cum_quote / (b.step * o.filled)
        return f"{avg.quantize(Q8, rounding=ROUND_HALF_UP).normalize():f}"

    def open_orders(self, account: str, symbol: str | None) -> list[dict[str, Any]]:
        acct = self.account(account)
        if symbol:
            self.book(symbol)
            symbol = symbol.upper()
        return [self.order_json(self.books[o.symbol], o) for o in sorted(acct.open.values(), key=lambda o: o.seq)
                if symbol is None or o.symbol == symbol]

    def all_orders(self, account: str, params: dict[str, str]) -> list[dict[str, Any]]:
        """GET /fapi/v1/allOrders: one symbol's orders, or without ``symbol`` (optional since Binance's
        2026-08-25 change; its SDK types it so) every symbol's, by time; ``orderId`` (an id of one
        symbol's) still needs the symbol."""
        acct = self.account(account)
        from_id = int_param(params, "orderId")
        books = [self.book(params.get("symbol"))] if "symbol" in params or from_id is not None \
            else list(self.books.values())
        now = self.now_ms
        orders = [o for b in books for o in b.closed.values() if o.account == acct.name and still_listed(o, now)]
        orders += [o for o in acct.open.values() if any(o.symbol == b.symbol for b in books)]
        orders.sort(key=(lambda o: o.order_id) if len(books) == 1 else (lambda o: (o.time, o.order_id)))
        start, end = int_param(params, "startTime"), int_param(params, "endTime")
        if from_id is not None:   # from an id, within startTime..endTime when sent
            within_a_week(start, end)
            orders = [o for o in orders if o.order_id >= from_id and (start is None or o.time >= start)
                      and (end is None or o.time <= end)]
        else:   # "the query time period must be less than 7 days (default as the recent 7 days)"
            lo, hi = week_window(start, end, self.now_ms)
            orders = [o for o in orders if lo <= o.time <= hi]
        limit = _limit(params, 500, 1000)
        # "If orderId is set, it will get orders >= that orderId. Otherwise most recent orders are
        # returned": from orderId (or startTime) on, the oldest first, so a client can page forward
        orders = orders[:limit] if from_id is not None or start is not None else orders[-limit:]
        return [self.order_json(self.books[o.symbol], o) for o in orders]

    def order_amendments(self, account: str, params: dict[str, str]) -> list[dict[str, Any]]:
        """GET /fapi/v1/orderAmendment: one order's amendments (by orderId or origClientOrderId), the
        latest ``limit`` (50, at most 100) within startTime..endTime, oldest first."""
        acct = self.account(account)
        b = self.book(params.get("symbol"))
        o = self._find(acct, b, params)
        start, end = int_param(params, "startTime"), int_param(params, "endTime")
        limit = _limit(params, 50, 100)
        rows = [a for a in acct.amendments if a[1] == o.order_id and (start is None or a[2] >= start)
                and (end is None or a[2] <= end)]
        return [{"amendmentId": aid, "symbol": b.symbol, "pair": b.symbol, "orderId": oid, "clientOrderId": o.client_id,
                 "time": t, "amendment": {"price": {"before": b.price_str(p0), "after": b.price_str(p1)},
                                          "origQty": {"before": b.qty_str(q0), "after": b.qty_str(q1)},
                                          "count": count, **({} if mid is None else {"modifyId": mid})}}
                for aid, oid, t, p0, p1, q0, q1, count, mid in rows[-limit:]]

    def account_config(self, account: str, now: int) -> dict[str, Any]:
        """GET /fapi/v1/accountConfig: the position mode, single-asset, fee tier 0 (the simulator's only settings)."""
        acct = self.account(account)
        return {"feeTier": 0, "canTrade": True, "canDeposit": True, "canWithdraw": True,
                "dualSidePosition": acct.dual_side,
                "updateTime": 0, "multiAssetsMargin": False, "tradeGroupId": -1}

    def user_trades(self, account: str, params: dict[str, str]) -> list[dict[str, Any]]:
        acct = self.account(account)
        b = self.book(params.get("symbol"))
        trades = [t for t in acct.trades if t.symbol == b.symbol]
        start, end = int_param(params, "startTime"), int_param(params, "endTime")
        order_id, from_id = int_param(params, "orderId"), int_param(params, "fromId")
        if from_id is not None and (start is not None or end is not None):   # "fromId cannot be sent with
            raise SimApiError(-1106, f"Parameter '{'startTime' if start is not None else 'endTime'}' sent when "
                                     f"not required.")                          # startTime or endTime"
        if from_id is None and order_id is None:   # by time: a week at most (by id: no window)
            lo, hi = week_window(start, end, self.now_ms)
            trades = [t for t in trades if lo <= t.time <= hi]
        else:
            within_a_week(start, end)
            trades = [t for t in trades if (start is None or t.time >= start) and (end is None or t.time <= end)]
        if order_id is not None:
            trades = [t for t in trades if t.order_id == order_id]
        if from_id is not None:
            trades = [t for t in trades if t.trade_id >= from_id]
        limit = _limit(params, 500, 1000)
        # Binance: from startTime or fromId on, the oldest first; otherwise the newest ones
        trades = trades[:limit] if start is not None or from_id is not None else trades[-limit:]
        return [{"buyer": t.side == "BUY", "commission": t.commission, "commissionAsset": t.commission_asset,
                 "id": t.trade_id, "maker": t.maker, "orderId": t.order_id, "price": t.price, "qty": t.qty,
                 "quoteQty": t.quote_qty, "realizedPnl": t.realized_pnl, "side": t.side, "positionSide": "BOTH",
                 "symbol": t.symbol, "time": t.time} for t in trades]

    def order_json(self, b: Book, o: Order, shape: str = "query") -> dict[str, Any]:
        """The REST order object, with the fields Binance's answer of that kind carries (``ORDER_SHAPES``)."""
        filled = b.qty_str(o.filled)
        otype = "LIMIT" if o.type == "LIQUIDATION" else o.type   # the user stream's type only (forceOrders)
        out = {"orderId": o.order_id, "symbol": b.symbol, "pair": b.symbol, "status": o.status,
               "clientOrderId": o.client_id, "price": b.price_str(o.price) if o.price else "0",
               "avgPrice": self._avg_str(b, o), "origQty": b.qty_str(o.orig), "executedQty": filled,
               "cumQty": filled, "cumQuote": s8(o.cum_quote), "cumBase": filled, "timeInForce": o.tif,
               "type": otype, "reduceOnly": o.reduce_only, "closePosition": False, "side": o.side,
               "positionSide": "BOTH", "stopPrice": "0", "workingType": "CONTRACT_PRICE",
               "priceProtect": False, "origType": otype, "priceMatch": o.price_match,
               "selfTradePreventionMode": o.stp, "goodTillDate": o.gtd, "time": o.time,
               "updateTime": o.update_time}
        for name in ORDER_SHAPES[shape]:
            del out[name]
        return out

    # -- account views --------------------------------------------------------------------------------

    def _position_view(self, acct: Account, b: Book) -> dict[str, Any]:
        pos = acct.positions.get(b.symbol) or Position()
        mark = b.mark_dec()
        amt = b.step * pos.amount
        upnl = (mark - pos.entry) * amt if pos.amount else ZERO
        lev = self.leverage_of(acct, b.symbol)
        notional = mark * amt
        bids, asks = self._open_notional(acct, b.symbol)
        isolated = b.symbol in acct.isolated
        return {"symbol": b.symbol, "amt": amt, "entry": pos.entry if pos.amount else ZERO, "upnl": upnl,
                "mark": mark, "lev": lev, "notional": notional, "bids": bids, "asks": asks,
                "update": pos.update_time, "im": abs(notional) / lev, "oim": order_margin(notional, bids, asks, lev),
                "mm": b.brackets.maintenance(notional), "isolated": isolated,
                "iw": pos.isolated_wallet if isolated else ZERO, "bep": pos.break_even(b.step)}

    def _liquidation_price(self, acct: Account, b: Book, v: dict[str, Any]) -> str:
        """Where the position of ``b`` would be liquidated, by Binance's single-asset formula:
        (wallet - others' maintenance + others' unrealized P&L + cum - side x size x entry) /
        (size x maintenance rate - side x size). Cross: the wallet is the cross wallet and the others
        are the margin asset's other cross positions; isolated: the wallet is the position's isolated
        wallet and there are no others. The maintenance rate and cum are those of the position's
        bracket (fleet/sim/brackets.py).
        "0" when flat, or when no price would do it (a long whose margin outlasts a fall to 0). The
        mark reaching it liquidates the position (fleet/sim/liquidation.py)."""
        if not v["amt"]:
            return "0"
        asset = b.spec.margin_asset
        if v["isolated"]:
            wallet, others = v["iw"], []
        else:
            wallet = self.cross_wallet(acct, asset)
            others = [self._position_view(acct, self.books[sym]) for sym, pos in acct.positions.items()
                      if pos.amount and sym != b.symbol and sym not in acct.isolated
                      and self.books[sym].spec.margin_asset == asset]   # flat ones add 0
        size = abs(v["amt"])
        side = 1 if v["amt"] > 0 else -1
        bracket = b.brackets.of(v["notional"])
        free = (wallet - sum((o["mm"] for o in others), ZERO)
                + sum((o["upnl"] for o in others), ZERO) + bracket.cum - side * size * v["entry"])
        price = free / (size * bracket.rate - side * size)
        return s8(price) if price > 0 else "0"

    def position_risk(self, account: str, symbol: str | None, version: int) -> list[dict[str, Any]]:
        acct = self.account(account)
        books = [self.book(symbol)] if symbol else list(self.books.values())
        out = []
        for b in books:
            v = self._position_view(acct, b)
            has_orders = any(o.symbol == b.symbol for o in acct.open.values())
            if version >= 3 and v["amt"] == 0 and not has_orders:
                continue   # v3: "only symbol that has position or open orders will be returned", named or not
            entry = f"{v['entry']:f}" if v["amt"] else "0.0"
            common = {"symbol": b.symbol, "positionSide": "BOTH", "positionAmt": f"{v['amt']:f}",
                      "entryPrice": entry, "breakEvenPrice": f"{v['bep']:f}" if v["amt"] else "0.0",
                      "markPrice": f"{v['mark']:f}",
                      "unRealizedProfit": s8(v["upnl"]), "liquidationPrice": self._liquidation_price(acct, b, v),
                      "isolatedMargin": s8(v["iw"] + v["upnl"] if v["isolated"] else ZERO),
                      "notional": s8(v["notional"]), "isolatedWallet": s8(v["iw"]) if v["isolated"] else "0",
                      "updateTime": v["update"]}
            if version >= 3:
                common.update({"marginAsset": b.spec.margin_asset, "initialMargin": s8(v["im"] + v["oim"]),
                               "maintMargin": s8(v["mm"]), "positionInitialMargin": s8(v["im"]),
                               "openOrderInitialMargin": s8(v["oim"]), "adl": self.adl_quantile(acct, b),
                               "bidNotional": s8(v["bids"]), "askNotional": s8(v["asks"])})
            else:
                common.update({"marginType": "isolated" if v["isolated"] else "cross", "isAutoAddMargin": "false",
                               "leverage": str(v["lev"]),
                               "maxNotionalValue": f"{b.brackets.max_notional(v['lev']):f}"})
            out.extend(by_position_side(common, v["amt"]) if acct.dual_side else [common])
        return out

    def balances(self, account: str) -> list[dict[str, Any]]:
        acct = self.account(account)
        out = []
        for asset in sorted(acct.wallet):
            wallet = acct.wallet[asset]
            upnl = sum((v["upnl"] for v in (self._position_view(acct, b) for b in self.books.values()
                                            if b.spec.margin_asset == asset) if not v["isolated"]), ZERO)
            avail = self.available_balance(acct, asset)
            out.append({"accountAlias": "SimAccount", "asset": asset, "balance": s8(wallet),
                        "crossWalletBalance": s8(self.cross_wallet(acct, asset)), "crossUnPnl": s8(upnl),
                        "availableBalance": s8(avail), "maxWithdrawAmount": s8(self.transferable(acct, asset)),
                        "marginAvailable": True, "updateTime": self.now_ms})
        return out

    def account_info(self, account: str, version: int) -> dict[str, Any]:
        acct = self.account(account)
        assets = []
        tot = {k: ZERO for k in ("wallet", "upnl", "im", "oim", "mm", "avail", "cross", "cross_upnl", "withdraw")}
        for asset in sorted(acct.wallet):
            wallet = acct.wallet[asset]
            views = [self._position_view(acct, b) for b in self.books.values() if b.spec.margin_asset == asset]
            upnl = sum((v["upnl"] for v in views), ZERO)
            cross, cross_upnl = self.cross_wallet(acct, asset), sum((v["upnl"] for v in views if not v["isolated"]), ZERO)
            im = sum((v["im"] for v in views), ZERO)
            oim = sum((v["oim"] for v in views), ZERO)
            mm = sum((v["mm"] for v in views), ZERO)
            avail = self.available_balance(acct, asset)
            withdraw = self.transferable(acct, asset)
            assets.append({"asset": asset, "walletBalance": s8(wallet), "unrealizedProfit": s8(upnl),
                           "marginBalance": s8(wallet + upnl), "maintMargin": s8(mm),
                           "initialMargin": s8(im + oim), "positionInitialMargin": s8(im),
                           "openOrderInitialMargin": s8(oim), "crossWalletBalance": s8(cross),
                           "crossUnPnl": s8(cross_upnl), "availableBalance": s8(avail),
                           "maxWithdrawAmount": s8(withdraw), "marginAvailable": True,
                           "updateTime": self.now_ms})
            if asset != "USDT":   # single-asset mode: the account's totals are "only for USDT asset"
                continue
            for k, v in (("wallet", wallet), ("upnl", upnl), ("im", im), ("oim", oim), ("mm", mm),
                         ("avail", avail), ("cross", cross), ("cross_upnl", cross_upnl), ("withdraw", withdraw)):
                tot[k] += v
        positions = []
        for b in self.books.values():
            v = self._position_view(acct, b)
            has_orders = any(o.symbol == b.symbol for o in acct.open.values())
            if version >= 3 and v["amt"] == 0 and not has_orders:
                continue
            p = {"symbol": b.symbol, "positionSide": "BOTH", "positionAmt": f"{v['amt']:f}",
                 "unrealizedProfit": s8(v["upnl"]),
                 "isolatedMargin": s8(v["iw"] + v["upnl"]) if v["isolated"] else "0", "notional": s8(v["notional"]),
                 "isolatedWallet": s8(v["iw"]) if v["isolated"] else "0",
                 "initialMargin": s8(v["im"] + v["oim"]), "maintMargin": s8(v["mm"]),
                 "updateTime": v["update"]}
            if version < 3:
                p.update({"positionInitialMargin": s8(v["im"]), "openOrderInitialMargin": s8(v["oim"]),
                          "leverage": str(v["lev"]), "isolated": v["isolated"],
                          "entryPrice": f"{v['entry']:f}" if v["amt"] else "0.0",
                          "breakEvenPrice": f"{v['bep']:f}" if v["amt"] else "0.0",
                          "maxNotional": f"{b.brackets.max_notional(v['lev']):f}", "bidNotional": s8(v["bids"]),
                          "askNotional": s8(v["asks"])})
            positions.append(p)
        out: dict[str, Any] = {}
        if version < 3:
            out.update({"feeTier": 0, "feeBurn": acct.fee_burn, "canTrade": True, "canDeposit": True,
                        "canWithdraw": True, "updateTime": 0, "multiAssetsMargin": False, "tradeGroupId": -1})
        out.update({"totalInitialMargin": s8(tot["im"] + tot["oim"]), "totalMaintMargin": s8(tot["mm"]),
                    "totalWalletBalance": s8(tot["wallet"]), "totalUnrealizedProfit": s8(tot["upnl"]),
                    "totalMarginBalance": s8(tot["wallet"] + tot["upnl"]),
                    "totalPositionInitialMargin": s8(tot["im"]),
                    "totalOpenOrderInitialMargin": s8(tot["oim"]),
                    "totalCrossWalletBalance": s8(tot["cross"]), "totalCrossUnPnl": s8(tot["cross_upnl"]),
                    "availableBalance": s8(tot["avail"]), "maxWithdrawAmount": s8(tot["withdraw"]),
                    "assets": assets, "positions": positions})
        return out

    def income(self, account: str, params: dict[str, str]) -> list[dict[str, Any]]:
        acct = self.account(account)
        items = acct.income
        sym = params.get("symbol")
        if sym:
            sym = self.book(sym).symbol
            items = [i for i in items if i["symbol"] == sym]
        kind = params.get("incomeType")
        if kind:
            items = [i for i in items if i["incomeType"] == kind]
        start, end = int_param(params, "startTime"), int_param(params, "endTime")
        lo = start if start is not None or end is not None else self.now_ms - WEEK_MS   # "the recent 7-day data"
        if lo is not None:
            items = [i for i in items if i["time"] >= lo]
        if end is not None:
            items = [i for i in items if i["time"] <= end]
        limit = _limit(params, 100, 1000)
        page = int_param(params, "page", 1)   # pages of ``limit`` rows: from a startTime on, else back from the newest
        assert page is not None
        if page < 1:
            raise invalid("page")
        skip = (page - 1) * limit
        if start is not None:
            return items[skip:skip + limit]
        return items[max(len(items) - skip - limit, 0):max(len(items) - skip, 0)]

    # -- public views -------------------------------------------------------------------------------

    def premium_index(self, b: Book) -> dict[str, Any]:
        mark = f"{b.mark:.8f}"
        return {"symbol": b.symbol, "markPrice": mark, "indexPrice": f"{b.mark * INDEX_RATIO:.8f}",
                "estimatedSettlePrice": f"{b.mark * INDEX_RATIO:.8f}", "lastFundingRate": f"{b.funding_rate:.8f}",
                "interestRate": "0.00010000", "nextFundingTime": b.next_funding_ms, "time": self.now_ms}

    def book_ticker(self, b: Book) -> dict[str, Any]:
        bb, ba = b.best_bid(), b.best_ask()
        return {"symbol": b.symbol, "bidPrice": b.price_str(bb), "bidQty": b.qty_str(b.level_qty(True, bb)),
                "askPrice": b.price_str(ba), "askQty": b.qty_str(b.level_qty(False, ba)),
                "time": self.now_ms, "lastUpdateId": b.update_id}

    def state(self, account: str, symbol: str | None) -> dict[str, Any]:
        """The exchange's truth for tests and benchmarks."""
        acct = self.account(account)
        books = [self.book(symbol)] if symbol else list(self.books.values())
        syms = {b.symbol for b in books}
        positions = {}
        for b in books:
            pos = acct.positions.get(b.symbol) or Position()
            mark = b.mark_dec()
            positions[b.symbol] = {
                "amount": b.qty_str(pos.amount), "entry_price": f"{pos.entry:f}" if pos.amount else "0",
                "unrealized_pnl": s8((mark - pos.entry) * (b.step * pos.amount) if pos.amount else ZERO),
                "realized_pnl": s8(pos.realized), "funding": s8(pos.funding),
                "commission": s8(pos.commission), "clearance_fee": s8(pos.clearance),
                "leverage": self.leverage_of(acct, b.symbol),
                "margin_type": "isolated" if b.symbol in acct.isolated else "cross",
                "isolated_wallet": s8(pos.isolated_wallet) if b.symbol in acct.isolated else "0",
                "countdown_deadline_ms": acct.countdowns.get(b.symbol)}
        orders = []
        for o in sorted(acct.open.values(), key=lambda o: o.seq):
            if o.symbol not in syms:
                continue
            b = self.books[o.symbol]
            orders.append({"orderId": o.order_id, "clientOrderId": o.client_id, "symbol": o.symbol,
                           "side": o.side, "type": o.type, "timeInForce": o.tif, "price": b.price_str(o.price),
                           "origQty": b.qty_str(o.orig), "executedQty": b.qty_str(o.filled),
                           "status": o.status, "reduceOnly": o.reduce_only, "queueAhead": b.qty_str(o.ahead),
                           "time": o.time, "updateTime": o.update_time})
        markets = {b.symbol: {"mid": b.mid, "mark_price": f"{b.mark:.8f}",
                              "bid": b.price_str(b.best_bid()), "ask": b.price_str(b.best_ask()),
                              "status": b.status, "delivery_date": b.delivery_ms,
                              "regime": b.model.regime, "funding_rate": f"{b.funding_rate:.8f}",
                              "funding_pinned": b.rate_pinned, "frozen": b.frozen, "price_held": b.price_held,
                              "next_funding_time": b.next_funding_ms,
                              "funding_interval_ms": b.funding_interval_ms,
                              "funding_history": b.funding_history[-20:]} for b in books}
        return {"time": self.now_ms, "account": acct.name, "symbol": symbol.upper() if symbol else None,
                "open_orders": orders, "positions": positions,
                "open_algo_orders": [self.algo.order_json(a) for a in self.algo.open.values()
                                     if a.account == acct.name and a.symbol in syms],
                "balances": {a: s8(v) for a, v in sorted(acct.wallet.items())},
                "realized_pnl": s8(sum((p["realized_pnl"] and Decimal(p["realized_pnl"])
                                         for p in positions.values()), ZERO)),
                "funding_paid": s8(sum((Decimal(p["funding"]) for p in positions.values()), ZERO)),
                "commission_paid": s8(sum((Decimal(p["commission"]) for p in positions.values()), ZERO)),
                "counters": dict(acct.counters),
                "listen_key_active": acct.listen_key is not None,
                "markets": markets,
                "replay": self.replay.view() if self.replay is not None else None}


def _limit(params: dict[str, str], default: int, maximum: int) -> int:
    limit = int_param(params, "limit", default)
    assert limit is not None
    if not 1 <= limit <= maximum:
        raise invalid("limit")
    return limit
