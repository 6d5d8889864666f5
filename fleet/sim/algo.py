"""Binance's Algo Service: conditional orders (STOP, STOP_MARKET, TAKE_PROFIT, TAKE_PROFIT_MARKET,
TRAILING_STOP_MARKET), which left ``/fapi/v1/order`` in December 2025 (it answers -4120 for them).

An algo order waits outside the book, with no margin check, until its trigger: the latest price, the
last trade's (``workingType`` CONTRACT_PRICE, the default) or the mark (MARK_PRICE), reaching
``triggerPrice``: a BUY STOP at or above, a BUY TAKE_PROFIT at or below, the SELL ones the other way; a
trailing stop once the price has come back ``callbackRate`` percent from its extreme since it was
placed, the extreme having passed ``activatePrice``. A close-all order (``closePosition``) is GTE_GTC:
it needs a position to be placed (-4509), one per side and type (-4130), and EXPIRES as soon as the
position is closed. Then it is TRIGGERING, an order goes to the
matching engine (MARKET, or LIMIT at ``price`` or ``priceMatch``; its clientOrderId the clientAlgoId),
and it is TRIGGERED (the order's id in ``ai``), then FINISHED once that order is closed; REJECTED with
the reason in ``rm`` if the engine refuses it; EXPIRED at its ``goodTillDate``, or when a close-all
finds no position. Each status is pushed as ALGO_UPDATE on the user stream. At most 200 are open per
account (-4045). A stop or take-profit that would trigger at once is refused (-2021). The checks run
after each market step, and after each replayed line of the order's symbol.
"""

from __future__ import annotations

import logging
from collections import deque
from itertools import chain
from typing import TYPE_CHECKING, Any, Iterable

from fleet.sim.delisting import not_trading
from fleet.sim.errors import SimApiError, int_param, invalid, missing, week_window
from fleet.sim.orders import CLIENT_ID_RE, DEFAULT_STP, PRICE_MATCH, STP_MODES, Account

if TYPE_CHECKING:
    from fleet.sim.book import Book
    from fleet.sim.engine import Engine

log = logging.getLogger("fleet.sim")

TYPES = ("STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET", "TRAILING_STOP_MARKET")
MAX_OPEN = 200   # "The conditional order limits is 200 across all symbols" (change log, 2025-12-29)
CALLBACK_RANGE = (0.1, 20.0)   # percent; the maximum was raised from 10 to 20 on 2026-10-23
HISTORY = 10_000   # closed algo orders kept per account for the queries (the open ones are all kept)


def _zero(raw: str) -> bool:
    try:
        return float(raw) == 0
    except ValueError:
        raise invalid("quantity") from None


class AlgoOrder:
    """One conditional order of an account. Prices in ticks, quantity in steps (0 for a close-all)."""

    __slots__ = ("algo_id", "client_id", "account", "symbol", "side", "sign", "type", "tif", "qty", "price",
                 "price_match", "trigger", "trigger_f", "rising", "working", "reduce_only", "close_all",
                 "protect", "stp", "activate", "callback", "back", "extreme", "active", "status", "created",
                 "updated", "triggered_at", "gtd", "order", "reason")

    def __init__(self, client_id: str, account: str, symbol: str, side: str, otype: str) -> None:
        self.algo_id = 0
        self.client_id = client_id
        self.account = account
        self.symbol = symbol
        self.side = side
        self.sign = 1 if side == "BUY" else -1
        self.type = otype
        self.tif = "GTC"
        self.qty = 0
        self.price = 0
        self.price_match = "NONE"
        self.trigger = 0
        self.trigger_f = 0.0         # the trigger as a price
        self.rising = False          # triggers when the price rises to it: BUY STOP, SELL TAKE_PROFIT
        self.working = "CONTRACT_PRICE"
        self.reduce_only = False
        self.close_all = False
        self.protect = False
        self.stp = DEFAULT_STP
        self.activate = 0            # ticks; trailing stops only
        self.callback = ""           # percent as sent; trailing stops only
        self.back = 0.0              # the callback as a fraction
        self.extreme = 0.0           # trailing: the lowest (BUY) or highest (SELL) price since placement
        self.active = False          # trailing: the extreme has passed activatePrice
        self.status = "NEW"
        self.created = self.updated = self.triggered_at = 0
        self.gtd = 0
        self.order: Any = None       # the matching engine's order once triggered
        self.reason = ""


class AlgoService:
    """The algo orders of every account, checked against the market steps of their symbol."""

    def __init__(self, engine: Engine) -> None:
        self.e = engine
        self.next_id = 2_000_000
        self.open: dict[int, AlgoOrder] = {}       # NEW orders waiting for their trigger
        self.placed: dict[int, AlgoOrder] = {}     # TRIGGERED orders whose engine order is still open
        self.closed: dict[str, deque[AlgoOrder]] = {}   # account -> its closed algo orders, oldest first

    @property
    def live(self) -> bool:
        return bool(self.open or self.placed)

    # -- requests -----------------------------------------------------------------------------------

    def place(self, account: str, params: dict[str, str], now: int) -> dict[str, Any]:
        """POST /fapi/v1/algoOrder."""
        e = self.e
        acct = e.account(account)
        if not params.get("algoType"):
            raise missing("algoType")
        if params["algoType"] != "CONDITIONAL":
            raise invalid("algoType")
        b = e.book(params.get("symbol"))
        side, otype = e.check_order_head(params, acct.dual_side)
        if b.status != "TRADING":
            raise not_trading()
        if otype not in TYPES:
            raise SimApiError(-1116, "Invalid orderType.")
        cid = params.get("clientAlgoId")
        if cid is not None:
            if not CLIENT_ID_RE.fullmatch(cid):
                raise SimApiError(-4015, "Client order id is not valid.")
            if any(a.client_id == cid and a.account == acct.name for a in chain(self.open.values(),
                                                                                 self.placed.values())):
                raise SimApiError(-4116, "ClientOrderId is duplicated.")
        if sum(1 for a in self.open.values() if a.account == acct.name) >= MAX_OPEN:
            raise SimApiError(-4045, "Reach max stop order limit.")
        a = AlgoOrder("", acct.name, b.symbol, side, otype)
        self._terms(a, b, params, now)
        self._check_placeable(a, b)
        a.client_id = cid or e._token(22)
        a.algo_id = self.next_id
        self.next_id += 1
        a.created = a.updated = now
        self.open[a.algo_id] = a
        self._push(a, now)
        return self.placed_json(b, a)

    def _terms(self, a: AlgoOrder, b: Book, params: dict[str, str], now: int) -> None:
        """The order's terms from the request, each refused the way Binance refuses it."""
        e = self.e
        market = a.type.endswith("_MARKET")
        trailing = a.type == "TRAILING_STOP_MARKET"
        a.close_all = e._bool(params, "closePosition")
        a.tif = params.get("timeInForce") or ("GTE_GTC" if a.close_all else "GTC")
        if a.tif not in ("GTC", "IOC", "FOK", "GTX", "GTD", "GTE_GTC"):
            raise SimApiError(-1115, "Invalid timeInForce.")
        if a.close_all:
            a.tif = "GTE_GTC"   # a close-all lives as long as the position: Binance lists it GTE_GTC
        if a.tif == "GTD":
            a.gtd = e._good_till(params, now)
        a.reduce_only = e._bool(params, "reduceOnly")
        a.protect = e._bool(params, "priceProtect")
        if a.close_all:
            if a.type not in ("STOP_MARKET", "TAKE_PROFIT_MARKET"):
                raise SimApiError(-1106, "Parameter 'closePosition' sent when not required.")
            if (raw := params.get("quantity")) and not _zero(raw):
                raise SimApiError(-4137, "Quantity must be zero with closePosition equals true.")
            if a.reduce_only:
                raise SimApiError(-1106, "Parameter 'reduceOnly' sent when not required.")
        else:
            a.qty = e._qty_steps(b, params.get("quantity"), market)
        pm = params.get("priceMatch")
        if pm and pm != "NONE":
            if market:   # (STOP_MARKET, TAKE_PROFIT_MARKET, TRAILING_STOP_MARKET)
                raise SimApiError(-5038, "Price match only supports order type: LIMIT, STOP AND TAKE_PROFIT")
            if pm not in PRICE_MATCH:
                raise SimApiError(-5037, "Invalid price match")
            if params.get("price"):
                raise SimApiError(-1106, "Parameter 'price' sent when not required.")
            a.price_match = pm
        elif market:
            if params.get("price"):
                raise SimApiError(-1106, "Parameter 'price' sent when not required.")
        else:
            a.price = e._price_ticks(b, params.get("price"))
        a.working = params.get("workingType") or "CONTRACT_PRICE"
        if a.working not in ("CONTRACT_PRICE", "MARK_PRICE"):
            raise invalid("workingType")
        a.stp = params.get("selfTradePreventionMode") or e.config.default_stp
        if a.stp not in STP_MODES:
            raise SimApiError(-5039, "Invalid self trade prevention mode.")
        for name in (("triggerPrice",) if trailing else ("activatePrice", "callbackRate")):
            if params.get(name):
                raise SimApiError(-1106, f"Parameter '{name}' sent when not required.")
        if trailing:
            self._trailing_terms(a, b, params)
        else:
            a.trigger = e._price_ticks(b, params.get("triggerPrice"), "triggerPrice")
            a.trigger_f = a.trigger * b.tick_f
            a.rising = a.type.startswith("STOP") == (a.sign > 0)

    def _trailing_terms(self, a: AlgoOrder, b: Book, params: dict[str, str]) -> None:
        raw = params.get("callbackRate")
        if not raw:
            raise missing("callbackRate")
        try:
            rate = float(raw)
        except ValueError:
            raise invalid("callbackRate") from None
        if not CALLBACK_RANGE[0] <= rate <= CALLBACK_RANGE[1]:
            raise invalid("callbackRate")
        a.callback, a.back = raw, rate / 100.0
        latest = self._latest(b, a.working)
        a.extreme = latest
        if params.get("activatePrice"):
            a.activate = self.e._price_ticks(b, params["activatePrice"], "activatePrice")
        else:   # the latest price: active at once
            a.activate, a.active = round(latest / b.tick_f), True

    def _check_placeable(self, a: AlgoOrder, b: Book) -> None:
        acct = self.e.accounts[a.account]
        if a.tif == "GTE_GTC" and not acct.position(a.symbol).amount:
            raise SimApiError(-4509, "Time in Force (TIF) GTE can only be used with open positions.")
        if a.close_all and any(o.close_all and o.account == a.account and o.symbol == a.symbol and o.side == a.side
                               and o.type == a.type for o in self.open.values()):
            raise SimApiError(-4130, "An open stop or take profit order with GTE and closePosition in the direction "
                                     "is existing.")
        latest = self._latest(b, a.working)
        if a.type == "TRAILING_STOP_MARKET":
            if not a.active:   # an activatePrice was sent: BUY below the latest price, SELL above
                act = a.activate * b.tick_f
                if (a.sign > 0 and act > latest) or (a.sign < 0 and act < latest):
                    raise SimApiError(-2021, "Order would immediately trigger.")
                a.active = act == latest
        elif (latest >= a.trigger_f) if a.rising else (latest <= a.trigger_f):
            raise SimApiError(-2021, "Order would immediately trigger.")

    def cancel(self, account: str, params: dict[str, str], now: int) -> dict[str, Any]:
        """DELETE /fapi/v1/algoOrder: a NEW one only (a triggered one is the engine's order now)."""
        a = self._find(self.e.account(account), params, self.open.values())
        if a is None:
            raise SimApiError(-2011, "Unknown order sent.")
        self._close(a, "CANCELED", now)
        return {"algoId": a.algo_id, "clientAlgoId": a.client_id, "code": "200", "msg": "success"}

    def cancel_all(self, account: str, params: dict[str, str], now: int) -> dict[str, Any]:
        """DELETE /fapi/v1/algoOpenOrders: every NEW one of the symbol."""
        acct = self.e.account(account)
        b = self.e.book(params.get("symbol"))
        for a in [a for a in self.open.values() if a.account == acct.name and a.symbol == b.symbol]:
            self._close(a, "CANCELED", now)
        return {"code": 200, "msg": "The operation of cancel all open order is done."}

    def query(self, account: str, params: dict[str, str]) -> dict[str, Any]:
        """GET /fapi/v1/algoOrder."""
        acct = self.e.account(account)
        a = self._find(acct, params, self._every(acct.name))
        if a is None:
            raise SimApiError(-2013, "Order does not exist.")
        return self.order_json(a)

    def open_orders(self, account: str, params: dict[str, str]) -> list[dict[str, Any]]:
        """GET /fapi/v1/openAlgoOrders (symbol and algoId optional)."""
        acct = self.e.account(account)
        symbol = self.e.book(params["symbol"]).symbol if params.get("symbol") else None
        algo_id = int_param(params, "algoId")
        return [self.order_json(a) for a in self.open.values() if a.account == acct.name
                and (symbol is None or a.symbol == symbol) and (algo_id is None or a.algo_id == algo_id)]

    def all_orders(self, account: str, params: dict[str, str], now: int) -> list[dict[str, Any]]:
        """GET /fapi/v1/allAlgoOrders: one symbol's, from algoId on, or within at most 7 days (the last 7
        by default), the oldest first; ``limit`` 500 by default, 1000 at most."""
        acct = self.e.account(account)
        b = self.e.book(params.get("symbol"))
        limit = int_param(params, "limit", 500)
        if limit is None or not 1 <= limit <= 1000:
            raise invalid("limit")
        rows = sorted((a for a in self._every(acct.name) if a.symbol == b.symbol), key=lambda a: a.algo_id)
        from_id = int_param(params, "algoId")
        if from_id is not None:
            return [self.order_json(a) for a in rows if a.algo_id >= from_id][:limit]
        start, end = int_param(params, "startTime"), int_param(params, "endTime")
        start, end = week_window(start, end, now)
        rows = [a for a in rows if start <= a.created <= end]
        return [self.order_json(a) for a in rows[-limit:]]

    # -- the clock ----------------------------------------------------------------------------------

    def check(self, now: int, symbol: str | None = None) -> None:
        """After a market step (of ``symbol`` only, when given): finish what the engine has closed, expire
        what is past its date, trigger what has reached its price."""
        for a in [a for a in self.placed.values() if not a.order.is_open]:
            del self.placed[a.algo_id]
            a.status = "FINISHED"
            a.updated = now
            self._keep(a)
            self._push(a, now)
        for a in [a for a in self.open.values() if symbol is None or a.symbol == symbol]:
            if a.gtd and now >= a.gtd:
                self._close(a, "EXPIRED", now)
                continue
            if a.tif == "GTE_GTC" and not self.e.accounts[a.account].position(a.symbol).amount:
                a.reason = "position closed"   # a GTE order lives as long as the position
                self._close(a, "EXPIRED", now)
                continue
            b = self.e.books[a.symbol]
            if not b.frozen and self._due(a, b):
                try:
                    self._trigger(a, b, now)
                except Exception:  # noqa: BLE001 - a bug must not stop the exchange's clock
                    log.exception("algo order %d: the trigger failed", a.algo_id)
                    self.placed.pop(a.algo_id, None)
                    a.status, a.reason = "REJECTED", "internal error"
                    self._keep(a)
                    self._push(a, now)

    def _due(self, a: AlgoOrder, b: Book) -> bool:
        latest = b.mark if a.working == "MARK_PRICE" else b.last_price
        if a.type != "TRAILING_STOP_MARKET":
            return latest >= a.trigger_f if a.rising else latest <= a.trigger_f
        if (a.sign > 0 and latest < a.extreme) or (a.sign < 0 and latest > a.extreme):
            a.extreme = latest
        if not a.active:
            act = a.activate * b.tick_f
            a.active = (a.sign > 0 and a.extreme <= act) or (a.sign < 0 and a.extreme >= act)
            if not a.active:
                return False
        return latest >= a.extreme * (1 + a.back) if a.sign > 0 else latest <= a.extreme * (1 - a.back)

    def _trigger(self, a: AlgoOrder, b: Book, now: int) -> None:
        e = self.e
        acct = e.accounts[a.account]
        del self.open[a.algo_id]
        a.status = "TRIGGERING"
        a.triggered_at = a.updated = now
        self._push(a, now)
        qty = a.qty
        if a.close_all:
            pos = acct.position(a.symbol).amount
            qty = abs(pos) if pos and (pos > 0) != (a.sign > 0) else 0
            if not qty:
                a.status, a.reason = "EXPIRED", "no position to close"
                self._keep(a)
                self._push(a, now)
                return
        params = {"symbol": a.symbol, "side": a.side, "quantity": b.qty_str(qty), "newClientOrderId": a.client_id,
                  "reduceOnly": "true" if a.reduce_only or a.close_all else "false"}
        if a.type.endswith("_MARKET"):
            params["type"] = "MARKET"
        else:
            params.update(type="LIMIT", timeInForce=a.tif)
            if a.tif == "GTD":
                params["goodTillDate"] = str(a.gtd)
            if a.price_match != "NONE":
                params["priceMatch"] = a.price_match
            else:
                params["price"] = b.price_str(a.price)
        params["selfTradePreventionMode"] = a.stp
        try:
            # its date was checked at placement: the order may reach the engine in its last 600 s
            a.order, _ = e._new_order(acct, params, now, False, False, triggered=True)
        except SimApiError as exc:
            acct.counters["orders_rejected"] += 1
            a.status, a.reason = "REJECTED", exc.msg
            self._keep(a)
            self._push(a, now)
            return
        a.status = "TRIGGERED"
        self._push(a, now)
        if a.order.is_open:
            self.placed[a.algo_id] = a
        else:
            a.status = "FINISHED"
            self._keep(a)
            self._push(a, now)

    # -- helpers ------------------------------------------------------------------------------------

    @staticmethod
    def _latest(b: Book, working: str) -> float:
        return b.mark if working == "MARK_PRICE" else b.last_price

    def _every(self, account: str) -> Iterable[AlgoOrder]:
        """The account's algo orders: waiting, triggered and open in the engine, closed (newest last)."""
        return chain((a for a in self.open.values() if a.account == account),
                     (a for a in self.placed.values() if a.account == account), self.closed.get(account, ()))

    @staticmethod
    def _find(acct: Account, params: dict[str, str], among: Iterable[AlgoOrder]) -> AlgoOrder | None:
        algo_id = int_param(params, "algoId")
        cid = params.get("clientAlgoId")
        if algo_id is None and not cid:
            raise SimApiError(-1102, "Param 'algoId' or 'clientAlgoId' must be sent, but both were empty/null!")
        found = None
        for a in among:
            if a.account == acct.name and (a.algo_id == algo_id if algo_id is not None else a.client_id == cid):
                found = a   # the newest of a reused clientAlgoId
        return found

    def _close(self, a: AlgoOrder, status: str, now: int) -> None:
        del self.open[a.algo_id]
        a.status = status
        a.updated = now
        self._keep(a)
        self._push(a, now)

    def _keep(self, a: AlgoOrder) -> None:
        kept = self.closed.get(a.account)
        if kept is None:
            kept = self.closed[a.account] = deque(maxlen=HISTORY)
        kept.append(a)

    def _push(self, a: AlgoOrder, now: int) -> None:
        """An ALGO_UPDATE frame on the account's user stream."""
        b = self.e.books[a.symbol]
        o: dict[str, Any] = {
            "caid": a.client_id, "aid": a.algo_id, "at": "CONDITIONAL", "o": a.type, "s": a.symbol, "S": a.side,
            "ps": "BOTH", "f": a.tif, "q": b.qty_str(a.qty), "X": a.status,
            "ai": str(a.order.order_id) if a.order is not None else ""}
        if a.order is not None:
            o.update(ap=self.e._avg_str(b, a.order), aq=b.qty_str(a.order.filled), act=a.order.type)
        else:   # as Binance's example shows them before a trigger
            o.update(ap="0.00000", aq="0.00000", act="0")
        o.update({"tp": b.price_str(a.trigger) if a.trigger else "0", "p": b.price_str(a.price) if a.price else "0",
                  "V": a.stp, "wt": a.working, "pm": a.price_match, "cp": a.close_all, "pP": a.protect,
                  "R": a.reduce_only, "tt": a.triggered_at, "gtd": a.gtd})
        if a.type == "TRAILING_STOP_MARKET":
            o["ia"] = a.active
        if a.reason:
            o["rm"] = a.reason
        self.e._emit_user(a.account, {"e": "ALGO_UPDATE", "T": now, "E": now, "o": o})

    def placed_json(self, b: Book, a: AlgoOrder) -> dict[str, Any]:
        """The answer to a placement."""
        trailing = a.type == "TRAILING_STOP_MARKET"
        return {"algoId": a.algo_id, "clientAlgoId": a.client_id, "algoType": "CONDITIONAL", "orderType": a.type,
                "symbol": a.symbol, "side": a.side, "positionSide": "BOTH", "timeInForce": a.tif,
                "quantity": b.qty_str(a.qty), "algoStatus": a.status,
                "triggerPrice": b.price_str(a.trigger) if a.trigger else "0",
                "price": b.price_str(a.price) if a.price else "0", "icebergQuantity": None,
                "selfTradePreventionMode": a.stp, "workingType": a.working, "priceMatch": a.price_match,
                "closePosition": a.close_all, "priceProtect": a.protect, "reduceOnly": a.reduce_only,
                "activatePrice": b.price_str(a.activate) if trailing else "",
                "callbackRate": a.callback if trailing else "", "createTime": a.created, "updateTime": a.updated,
                "triggerTime": a.triggered_at, "goodTillDate": a.gtd,
                # the attached take-profit / stop-loss fields of Binance's answers (none here)
                "tpTriggerPrice": "0.000", "tpPrice": "0.000", "slTriggerPrice": "0.000", "slPrice": "0.000",
                "tpOrderType": ""}

    def order_json(self, a: AlgoOrder) -> dict[str, Any]:
        """As the queries show it: the placement's fields, and the engine's order once triggered."""
        b = self.e.books[a.symbol]
        out = self.placed_json(b, a)
        o = a.order
        out["actualOrderId"] = str(o.order_id) if o is not None else ""
        out["actualPrice"] = self.e._avg_str(b, o) if o is not None else "0"
        if o is not None:
            out["actualType"] = o.type
            if o.filled:
                out["actualQty"] = b.qty_str(o.filled)
        return out
