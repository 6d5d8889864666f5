"""Liquidation: a position whose margin no longer covers its maintenance is closed by the exchange.

Binance liquidates when a position's margin balance falls to its maintenance margin, at the mark
price: an isolated position alone (its isolated wallet and unrealized P&L against its own maintenance),
a margin asset's cross positions together (the cross wallet and their unrealized P&L against their
maintenance). The simulator checks every account at each mark-price tick (``mark_interval_ms``, 1 s),
``SimConfig.liquidation`` (on by default).

Before that, a margin ratio (maintenance over margin balance) of MARGIN_CALL_RATIO (80 %) or more
pushes a ``MARGIN_CALL`` user frame, at most once a minute for the same isolated position or cross
asset: ``cw`` (cross only) and per position ``s``, ``ps``, ``pa``, ``mt`` (``CROSSED`` or
``ISOLATED``, spelled so there), ``iw``, ``mp`` (the mark), ``up``, ``mm``. What a liquidation shows a
client, in order:

- its open orders ended by the exchange, ``EXPIRED`` with ``er`` "5" (Binance's expire reason "the
  account was liquidated"), conditional ones too (``EXPIRED``, the Algo Service's "canceled by the
  system"): an isolated position's symbol's, or every cross symbol's of the margin asset, flat ones
  included (an order resting there would fill into the emptied account);
- per position an order it never sent: ``c`` ``autoclose-<ms><n>``, type ``LIQUIDATION`` on the user
  stream and ``LIMIT`` in REST (Binance's forceOrders example: the limit is the order's price), IOC, filled
  at once with execution type ``CALCULATED`` (not ``TRADE``), at the mark price, or at the bankruptcy
  price (where the isolated wallet, or the cross wallet, is spent) when the mark has passed it: the
  insurance fund takes the rest of the loss, and the wallet ends at 0, never below (Binance's
  insurance fund covers "client accounts below 0"). Several cross positions share the cross wallet
  and their profits: the profitable ones close at the mark first, then each losing one no worse than
  the price at which it has spent its share of the cover, in proportion to its loss at the mark (the
  simulator's rule; Binance does not publish one). Its trade is on the public tape, and on
  ``<symbol>@forceOrder`` and ``!forceOrder@arr``;
- the liquidation clearance fee, income ``INSURANCE_CLEAR``: what margin is left after the close, at
  most the symbol's ``liquidationFee`` (1.25 %) of the notional; an isolated liquidation so costs the
  isolated wallet, neither more nor less (``/sim/state``: the position's ``clearance_fee``);
- an ``ACCOUNT_UPDATE`` with the position at 0: ``m`` ``INSURANCE_CLEAR`` (one of Binance's documented
  reasons) and the fee as the balance's ``bc`` when a fee was charged, else ``m`` ``ORDER``;
- the order in ``GET /fapi/v1/forceOrders`` (and allOrders, userTrades, the income of its realized
  P&L and fee).

Auto-deleveraging happens on demand only (``POST /sim/adl``: the market model has no counterparties
to go bankrupt): the exchange closes part or all of a position at the mark by an order ``c``
``adl_autoclose`` (Binance's spelling), type ``LIQUIDATION`` (``LIMIT`` in REST), GTC, filled as
``CALCULATED``, with no fee;
the rest of the position keeps its entry, an isolated one gives the closed share of its wallet back.
``GET /fapi/v1/forceOrders`` lists it under ``autoCloseType`` ADL. ``GET /fapi/v1/adlQuantile`` (and
positionRisk v3's ``adl``) estimate a position's place in the queue as Binance's 0-4: 0 flat; else by
the position's return on its initial margin (unrealized P&L over notional / leverage), the
simulator's own scale: 1 below 25 % (a loss too), 2 below 50 %, 3 below 100 %, 4 from there.
"""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation
from typing import Any, Callable

from fleet.sim.book import Book
from fleet.sim.errors import WEEK_MS, int_param, invalid, within_a_week
from fleet.sim.frames import render_force_order
from fleet.sim.margin import note_margin
from fleet.sim.orders import Account, Order, Position, Trade
from fleet.sim.streams import FORCE_ORDER_EVERY_MS
from fleet.sim.units import ZERO, q8, s8

LIQUIDATION_FEE_RATE = Decimal("0.0125")   # exchangeInfo's liquidationFee
MARGIN_CALL_RATIO = Decimal("0.8")
MARGIN_CALL_EVERY_MS = 60_000
ADL_CLIENT_ID = "adl_autoclose"
ADL_EDGES = (Decimal("0.25"), Decimal("0.5"), Decimal(1))   # return on initial margin: quantile 1 | 2 | 3 | 4


class Liquidation:
    """Mixed into :class:`fleet.sim.engine.Engine`."""

    # the Engine's (and its other mixins')
    books: dict[str, Book]
    accounts: dict[str, Account]
    interest: frozenset[str]
    on_fill: Any
    _seq: int
    cross_wallet: Callable[[Account, str], Decimal]
    _expire_all: Callable[[Account, Book, int, str], None]
    _income: Callable[[Account, str, str, Decimal, str, int, str], None]
    _emit_account_update: Callable[[Account, Book, str, int, Decimal], None]
    _emit_order_update: Callable[..., None]
    _emit_agg: Callable[[Book, int, int, int, bool], int]
    _emit_market: Callable[[str, Any], None]
    _emit_user: Callable[[str, Any], None]
    _isolated_fill: Callable[[Account, Book, Position, int, int, Decimal, int], None]
    _cap_reduce_only: Callable[[Account, Book, int], None]
    account: Callable[[str], Account]
    book: Callable[[str | None], Book]
    leverage_of: Callable[[Account, str], int]
    order_json: Callable[[Book, Order], dict[str, Any]]

    def _check_liquidations(self, t: int) -> None:
        """Liquidate what the mark has put under its maintenance margin."""
        for acct in self.accounts.values():
            if not acct.positions:
                continue
            cross: dict[str, list[tuple[Book, Position]]] = {}
            for symbol, pos in acct.positions.items():
                if not pos.amount:
                    continue
                b = self.books[symbol]
                if symbol in acct.isolated:
                    self._check(acct, symbol, [(b, pos)], pos.isolated_wallet, pos.isolated_wallet, t)
                else:
                    cross.setdefault(b.spec.margin_asset, []).append((b, pos))
            for asset, held in cross.items():
                self._check(acct, asset, held, self.cross_wallet(acct, asset), None, t)
        self._push_force_orders(t)

    def _check(self, acct: Account, key: str, held: list[tuple[Book, Position]], wallet: Decimal,
               isolated_wallet: Decimal | None, t: int) -> None:
        """``held``: one isolated position (``isolated_wallet`` its wallet) or an asset's cross positions."""
        balance = wallet + sum((_upnl(b, p) for b, p in held), ZERO)
        maint = sum((_maint(b, p) for b, p in held), ZERO)
        if balance <= maint:
            acct.margin_calls.pop(key, None)
            self._liquidate(acct, held, isolated_wallet, t)
        elif maint >= MARGIN_CALL_RATIO * balance and t - acct.margin_calls.get(key, -MARGIN_CALL_EVERY_MS) \
                >= MARGIN_CALL_EVERY_MS:
            acct.margin_calls[key] = t
            self._emit_user(acct.name, _margin_call(held, isolated_wallet, wallet, t))

    def force_orders(self, account: str, params: dict[str, str], now: int) -> list[dict[str, Any]]:
        """GET /fapi/v1/forceOrders: the account's liquidation and ADL orders (``autoCloseType``
        LIQUIDATION or ADL; both when not sent), of one symbol or all, within startTime..endTime (7
        days at most; without startTime, the 7 days before endTime or now), the latest ``limit`` (50,
        at most 100)."""
        acct = self.account(account)
        symbol = self.book(params["symbol"]).symbol if params.get("symbol") else None
        kind = params.get("autoCloseType")
        if kind not in (None, "", "LIQUIDATION", "ADL"):
            raise invalid("autoCloseType")
        start, end = int_param(params, "startTime"), int_param(params, "endTime")
        within_a_week(start, end)
        end = now if end is None else end
        start = end - WEEK_MS if start is None else start
        limit = int_param(params, "limit", 50)
        assert limit is not None
        if not 1 <= limit <= 100:
            raise invalid("limit")
        rows = [o for o in acct.force_orders if (symbol is None or o.symbol == symbol) and start <= o.time <= end
                and (not kind or (o.client_id == ADL_CLIENT_ID) == (kind == "ADL"))]
        return [self.order_json(self.books[o.symbol], o) for o in rows[-limit:]]

    def adl_quantile(self, acct: Account, b: Book) -> int:
        """The position's estimated auto-deleveraging quantile, 0-4 (the module's scale)."""
        pos = acct.positions.get(b.symbol)
        if pos is None or not pos.amount:
            return 0
        notional = abs(b.mark_dec() * b.step * pos.amount)
        roe = _upnl(b, pos) * self.leverage_of(acct, b.symbol) / notional
        return 1 + sum(roe >= edge for edge in ADL_EDGES)

    def adl_quantiles(self, account: str, params: dict[str, str]) -> list[dict[str, Any]]:
        """GET /fapi/v1/adlQuantile: one-way mode, so ``BOTH`` carries the quantile and ``LONG`` and
        ``SHORT`` are 0 (as live answers show); every symbol with a position, or the one asked for."""
        acct = self.account(account)
        if params.get("symbol"):
            books = [self.book(params["symbol"])]
        else:
            books = [self.books[sym] for sym, pos in acct.positions.items() if pos.amount]
        return [{"symbol": b.symbol, "adlQuantile": {"LONG": 0, "SHORT": 0, "BOTH": self.adl_quantile(acct, b)}}
                for b in books]

    def deleverage(self, account: str, symbol: str, qty: str | None, t: int) -> dict[str, Any]:
        """POST /sim/adl: the exchange closes ``qty`` (all when None) of the position at the mark."""
        acct = self.account(account)
        b = self.book(symbol)
        pos = acct.position(b.symbol)
        try:
            steps = abs(pos.amount) if qty is None else int(Decimal(qty) / b.step)
        except (InvalidOperation, TypeError) as exc:
            raise invalid("qty") from exc
        if not 0 < steps <= abs(pos.amount):
            raise invalid("qty")
        acct.counters["deleveraged"] += 1
        old = pos.amount
        o, _ = self._close_by_exchange(acct, b, pos, steps, round(b.mark / b.tick_f), ADL_CLIENT_ID, t)
        if b.symbol in acct.isolated:
            self._isolated_fill(acct, b, pos, old, pos.amount - old, b.tick * o.price, t)
        self._emit_account_update(acct, b, "ORDER", t, ZERO)
        if pos.amount == 0:
            self._cap_reduce_only(acct, b, t)
        return self.order_json(b, o)

    def symbol_adl_risk(self, params: dict[str, str], now: int) -> Any:
        """GET /fapi/v1/symbolAdlRisk: each symbol's ADL risk, LOW here where ADL never happens."""
        books = [self.book(params["symbol"])] if params.get("symbol") else list(self.books.values())
        rows = [{"symbol": b.symbol, "adlRisk": "LOW", "updateTime": now - now % 60_000} for b in books]
        return rows[0] if params.get("symbol") else rows

    def _liquidate(self, acct: Account, held: list[tuple[Book, Position]], isolated_wallet: Decimal | None,
                   t: int) -> None:
        """End the symbols' orders, close each position by a LIQUIDATION order, charge the fee."""
        acct.counters["liquidations"] += 1
        asset = held[0][0].spec.margin_asset
        if isolated_wallet is not None:   # an isolated position: its symbol's orders
            books = [held[0][0]]
        else:                             # the cross side: every cross symbol of the asset, flat ones too
            books = [b for b in self.books.values() if b.spec.margin_asset == asset and b.symbol not in acct.isolated]
        for b in books:
            self._expire_all(acct, b, t, "5")
        left = isolated_wallet if isolated_wallet is not None else self.cross_wallet(acct, asset)
        bankrupt = _bankruptcy(held, left)
        closes = []
        for b, pos in sorted(held, key=lambda h: _upnl_at_close(*h) < 0):   # the profits first
            realized, notional = self._close_by_liquidation(acct, b, pos, bankrupt.get(b.symbol), t)
            left += realized
            closes.append((b, pos, notional))
        for b, pos, notional in closes:
            fee = max(min(left, q8(notional * LIQUIDATION_FEE_RATE)), ZERO)
            left -= fee
            if fee:
                acct.wallet[asset] -= fee
                pos.clearance += fee
                self._income(acct, b.symbol, "INSURANCE_CLEAR", -fee, asset, t, "")
            if pos.isolated_wallet:
                note_margin(acct, b, 2, "TRADE", pos.isolated_wallet, t)   # the whole wallet leaves it
            pos.isolated_wallet = ZERO
            self._emit_account_update(acct, b, "INSURANCE_CLEAR" if fee else "ORDER", t, -fee)

    def _close_by_liquidation(self, acct: Account, b: Book, pos: Position, bankrupt: Decimal | None,
                              t: int) -> tuple[Decimal, Decimal]:
        """Close ``pos`` at the mark, no worse than its ``bankrupt`` price (ticks) if any: the order, its
        fill and trade, the realized P&L into the wallet. Returns (realized, notional)."""
        old = pos.amount
        amt = b.step * old
        price = round(b.mark / b.tick_f)
        if bankrupt is not None:
            price = max(price, math.ceil(bankrupt)) if old > 0 else min(price, math.floor(bankrupt))
        _, realized = self._close_by_exchange(acct, b, pos, abs(old), price,   # the order's own sequence number
                                              f"autoclose-{t}{(self._seq + 1) % 1_000_000:06d}", t)
        b.force_held = (render_force_order, b, "SELL" if old > 0 else "BUY", abs(old), price, t)   # the latest
        return realized, abs(b.tick * price * amt)

    def _push_force_orders(self, t: int) -> None:
        """Each symbol's latest liquidation order not pushed yet, on its forceOrder streams, at most one a
        symbol a second (Binance: "only the latest one liquidation order within 1000ms will be pushed")."""
        for b in self.books.values():
            if b.force_held is None or t < b.force_due:
                continue
            frame, b.force_held = b.force_held, None
            b.force_due = t - t % FORCE_ORDER_EVERY_MS + FORCE_ORDER_EVERY_MS
            if b.lower + "@forceOrder" in self.interest:
                self._emit_market(b.lower + "@forceOrder", frame)
            if "!forceOrder@arr" in self.interest:
                self._emit_market("!forceOrder@arr", frame)

    def _close_by_exchange(self, acct: Account, b: Book, pos: Position, steps: int, price: int, client_id: str,
                           t: int, forced: bool = True) -> tuple[Order, Decimal]:
        """The exchange's own closing order of ``steps`` of ``pos`` at ``price`` (ticks): filled at once as
        CALCULATED, no fee, its trade on the tape, the realized P&L into the wallet; a ``forced`` one (a
        liquidation or an ADL, not a settlement) listed in forceOrders. Returns the order and the
        realized P&L."""
        old = pos.amount
        px = b.tick * price
        closed = b.step * (steps if old > 0 else -steps)
        realized = q8((px - pos.entry) * closed)
        self._seq += 1
        side = "SELL" if old > 0 else "BUY"
        tif = "IOC" if client_id.startswith("autoclose-") else "GTC"   # (forceOrders: a liquidation's, an ADL's)
        o = Order(b.next_order_id, client_id, acct.name, b.symbol, side, "LIQUIDATION", tif, price, steps, False,
                  t, self._seq)
        b.next_order_id += 1
        o.filled = o.orig
        o.cum_quote = px * abs(closed)
        o.status = "FILLED"
        b.keep_closed(o)
        if forced:
            acct.force_orders.append(o)
        trade_id = self._emit_agg(b, price, steps, t, side == "SELL")
        pos.amount = old - (steps if old > 0 else -steps)
        if pos.amount:
            pos.cost = q8(pos.cost * abs(pos.amount) / abs(old))
        else:
            pos.entry = ZERO
            pos.cost = ZERO
        pos.realized += realized
        pos.update_time = t
        asset = b.spec.margin_asset
        acct.wallet[asset] = acct.wallet.get(asset, ZERO) + realized
        acct.counters["trades"] += 1
        acct.counters["orders_filled"] += 1
        if self.on_fill is not None:
            self.on_fill(b, o, o.orig, price, False, t, ZERO, realized)
        if realized:
            self._income(acct, b.symbol, "REALIZED_PNL", realized, asset, t, str(trade_id))
        acct.trades.append(Trade(trade_id, o.order_id, b.symbol, side, b.price_str(price), b.qty_str(o.orig),
                                 s8(o.cum_quote), s8(ZERO), asset, s8(realized), False, t))
        self._emit_order_update(acct, b, o, "CALCULATED", t, last_qty=o.orig, last_price=price,
                                trade_id=trade_id, realized=realized)
        return o, realized


def _margin_call(held: list[tuple[Book, Position]], isolated_wallet: Decimal | None, wallet: Decimal,
                 t: int) -> dict[str, Any]:
    frame: dict[str, Any] = {"e": "MARGIN_CALL", "E": t}
    if isolated_wallet is None:
        frame["cw"] = s8(wallet)
    frame["p"] = [{"s": b.symbol, "ps": "BOTH", "pa": b.qty_str(p.amount),
                   "mt": "CROSSED" if isolated_wallet is None else "ISOLATED",
                   "iw": "0" if isolated_wallet is None else s8(isolated_wallet), "mp": s8(b.mark_dec()),
                   "up": s8(_upnl(b, p)), "mm": s8(_maint(b, p))} for b, p in held]
    return frame


def _mark_price(b: Book) -> Decimal:
    """The mark rounded to the tick: a liquidation order's price when the wallet covers it."""
    return b.tick * round(b.mark / b.tick_f)


def _upnl_at_close(b: Book, pos: Position) -> Decimal:
    """The P&L of closing ``pos`` at the mark rounded to the tick."""
    return (_mark_price(b) - pos.entry) * (b.step * pos.amount)


def _bankruptcy(held: list[tuple[Book, Position]], wallet: Decimal) -> dict[str, Decimal]:
    """The positions' bankruptcy prices (ticks, unrounded) when ``wallet`` (an isolated position's own,
    or the cross wallet) and the positions' profits at the mark do not cover their losses: the prices
    at which the wallet is spent to exactly 0, the insurance fund taking the rest. The losing positions
    share the cover in proportion to their loss at the mark (a cover below 0, from a wallet funding or
    an earlier close drove negative, makes them close past their entry); with none losing, every
    position closes past the mark by its share of the notional. One position's is its own bankruptcy
    price; several cross positions' sharing is the simulator's rule (Binance publishes none). Empty
    when covered."""
    pnl = {b.symbol: _upnl_at_close(b, p) for b, p in held}
    loss = -sum((v for v in pnl.values() if v < 0), ZERO)
    cover = wallet + sum((v for v in pnl.values() if v > 0), ZERO)
    if loss <= cover:
        return {}
    if loss:
        target = {b.symbol: pnl[b.symbol] * cover / loss for b, p in held if pnl[b.symbol] < 0}
    else:
        notional = {b.symbol: abs(_mark_price(b) * b.step * p.amount) for b, p in held}
        total = sum(notional.values(), ZERO)
        target = {b.symbol: pnl[b.symbol] - cover * notional[b.symbol] / total for b, p in held}
    return {b.symbol: (p.entry + target[b.symbol] / (b.step * p.amount)) / b.tick for b, p in held
            if b.symbol in target}


def _upnl(b: Book, pos: Position) -> Decimal:
    return (b.mark_dec() - pos.entry) * (b.step * pos.amount)


def _maint(b: Book, pos: Position) -> Decimal:
    return b.brackets.maintenance(b.mark_dec() * b.step * pos.amount)
