"""Isolated margin: a symbol's margin type, its position's isolated wallet and the transfers to it.

Binance lets each symbol of an account be in cross margin (the default) or isolated margin
(POST /fapi/v1/marginType), and an isolated position's margin be added to or reduced
(POST /fapi/v1/positionMargin). Binance publishes the totals, not how a fill splits them; the
simulator's bookkeeping, which keeps every total Binance reports exact:

- An asset's wallet balance is its cross wallet plus the isolated wallets of that asset's isolated
  positions. Realized P&L and commissions change the wallet balance, so they land in the cross wallet.
- A fill that opens an isolated position (or adds to it) moves the initial margin of what it opens,
  fill price x quantity / leverage, from the cross wallet into the position's isolated wallet. A fill that
  reduces it returns the closed share of the isolated wallet, all of it when the position is flat.
  Both are rows of the position's margin history (deltaType TRADE), as a user's transfers are
  (USER_ADJUST).
- An isolated position's funding is paid from (or into) its isolated wallet.
- The available balance is the cross wallet's: an isolated position's margin and unrealized P&L are
  its own, and every order's initial margin comes from the cross side.
- An isolated position's liquidation price reads its isolated wallet alone (views.py), and so does its
  liquidation (liquidation.py): it costs the isolated wallet, the cross side keeps the rest.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any, Callable

from fleet.sim.book import Book
from fleet.sim.errors import SimApiError, check_number, int_param, invalid, missing
from fleet.sim.orders import Account, Position
from fleet.sim.units import ZERO, q8, s8

MARGIN_TYPES = {"ISOLATED": True, "CROSSED": False}
# GET /fapi/v1/positionMargin/history: a startTime-endTime window of 30 days at most
MONTH_MS = 30 * 86_400_000
HISTORY_KEPT = 10_000


class IsolatedMargin:
    """Mixed into :class:`fleet.sim.engine.Engine`; needs its books, accounts, algo service and frames."""

    # the Engine's (and its views')
    books: dict[str, Book]
    algo: Any
    book: Callable[[str | None], Book]
    account: Callable[[str], Account]
    leverage_of: Callable[[Account, str], int]
    available_balance: Callable[[Account, str], Decimal]
    transferable: Callable[[Account, str], Decimal]
    _emit_account_update: Callable[[Account, Book, str, int, Decimal], None]

    def cross_wallet(self, acct: Account, asset: str) -> Decimal:
        """The wallet balance of ``asset`` less its isolated positions' wallets."""
        wallet = acct.wallet.get(asset, ZERO)
        for symbol in acct.isolated:
            pos = acct.positions.get(symbol)
            if pos is not None and self.books[symbol].spec.margin_asset == asset:
                wallet -= pos.isolated_wallet
        return wallet

    def isolated_wallet(self, acct: Account, symbol: str) -> Decimal | None:
        """The isolated wallet of ``symbol``'s position; None when the symbol is in cross margin."""
        if symbol not in acct.isolated:
            return None
        pos = acct.positions.get(symbol)
        return pos.isolated_wallet if pos is not None else ZERO

    def set_margin_type(self, account: str, params: dict[str, str], now: int) -> dict[str, Any]:
        """POST /fapi/v1/marginType: ISOLATED or CROSSED, refused while the symbol has open orders
        (conditional ones too) or a position."""
        acct = self.account(account)
        b = self.book(params.get("symbol"))
        raw = params.get("marginType")
        if not raw:
            raise missing("marginType")
        isolated = MARGIN_TYPES.get(raw.upper())
        if isolated is None:
            raise invalid("marginType")
        if isolated == (b.symbol in acct.isolated):
            raise SimApiError(-4046, "No need to change margin type.")
        if acct.open_count.get(b.symbol) or any(a.account == acct.name and a.symbol == b.symbol
                                                 for a in self.algo.open.values()):
            raise SimApiError(-4047, "Margin type cannot be changed if there exists open orders.")
        pos = acct.positions.get(b.symbol)
        if pos is not None and pos.amount:
            raise SimApiError(-4048, "Margin type cannot be changed if there exists position.")
        if isolated:
            acct.isolated.add(b.symbol)
        else:
            acct.isolated.discard(b.symbol)
        if pos is not None:
            pos.isolated_wallet = ZERO
        self._emit_account_update(acct, b, "MARGIN_TYPE_CHANGE", now, ZERO)
        return {"code": 200, "msg": "success"}

    def modify_position_margin(self, account: str, params: dict[str, str], now: int) -> dict[str, Any]:
        """POST /fapi/v1/positionMargin: ``type`` 1 adds ``amount`` to an isolated position's margin from
        the cross side's available balance, 2 takes it back (while the position keeps its initial margin
        at the mark, its loss counted)."""
        acct = self.account(account)
        b = self.book(params.get("symbol"))
        kind = params.get("type")
        if not kind:
            raise missing("type")
        if kind not in ("1", "2"):
            raise invalid("type")
        amount = _amount(params.get("amount"))
        if params.get("positionSide", "BOTH") != "BOTH":
            raise SimApiError(-4061, "Order's position side does not match user's setting.")
        if b.symbol not in acct.isolated:
            raise SimApiError(-4049, "Add margin only support for isolated position.")
        pos = acct.positions.get(b.symbol)
        if pos is None or not pos.amount:
            raise SimApiError(-4054, "Cannot add position margin: position is 0.")
        asset = b.spec.margin_asset
        if kind == "1":
            if amount > self.transferable(acct, asset):
                raise SimApiError(-4050, "Cross balance insufficient.")
            pos.isolated_wallet += amount
        else:
            if amount > self.removable_margin(acct, b, pos):
                raise SimApiError(-4051, "Isolated balance insufficient.")
            pos.isolated_wallet -= amount
        note_margin(acct, b, int(kind), "USER_ADJUST", amount, now)
        self._emit_account_update(acct, b, "MARGIN_TRANSFER", now, ZERO)
        return {"amount": float(amount), "code": 200, "msg": "Successfully modify position margin.",
                "type": int(kind)}

    def removable_margin(self, acct: Account, b: Book, pos: Position) -> Decimal:
        """What type 2 may take, Binance's margin FAQ: max(0, min(isolated wallet - maintenance margin,
        isolated wallet + unrealized P&L - initial margin at the mark))."""
        mark = b.mark_dec()
        amt = b.step * pos.amount
        iw = pos.isolated_wallet
        return max(ZERO, min(iw - b.brackets.maintenance(mark * amt),
                             iw + (mark - pos.entry) * amt - abs(mark * amt) / self.leverage_of(acct, b.symbol)))

    def margin_history(self, account: str, params: dict[str, str]) -> list[dict[str, Any]]:
        """GET /fapi/v1/positionMargin/history: one symbol's moves (a user's transfers, USER_ADJUST, and
        the fills', TRADE; funding paid from the isolated wallet is not a row), optionally of one
        ``type``, within startTime..endTime (30 days at most): ``limit`` (500) of them, the first from
        startTime on, else the latest."""
        acct = self.account(account)
        b = self.book(params.get("symbol"))
        kind = int_param(params, "type")
        start, end = int_param(params, "startTime"), int_param(params, "endTime")
        if start is not None and end is not None and end - start > MONTH_MS:
            raise SimApiError(-1127, "More than 30 days between startTime and endTime.")
        limit = int_param(params, "limit", 500)
        assert limit is not None
        if limit < 1:
            raise invalid("limit")
        rows = [r for r in acct.margin_history if r["symbol"] == b.symbol and (kind is None or r["type"] == kind)
                and (start is None or r["time"] >= start) and (end is None or r["time"] <= end)]
        return rows[:limit] if start is not None else rows[-limit:]   # from startTime on, else the latest

    def _isolated_fill(self, acct: Account, b: Book, pos: Position, old: int, delta: int, px: Decimal,
                       t: int) -> None:
        """An isolated position's wallet after a fill of ``delta`` signed steps at ``px`` (``old``: the
        amount before it): the closed share returns to the cross wallet, what opens brings its margin.
        Each move is in the position's margin history (deltaType TRADE)."""
        opened = abs(delta)
        if old and (old > 0) != (delta > 0):
            closed = min(opened, abs(old))
            iw = pos.isolated_wallet
            back = iw if closed == abs(old) else q8(iw * closed / abs(old))
            pos.isolated_wallet = iw - back
            opened -= closed
            if back:
                note_margin(acct, b, 2, "TRADE", back, t)
        if opened:
            margin = q8(px * (b.step * opened) / self.leverage_of(acct, b.symbol))
            pos.isolated_wallet += margin
            note_margin(acct, b, 1, "TRADE", margin, t)


def note_margin(acct: Account, b: Book, kind: int, delta_type: str, amount: Decimal, t: int) -> None:
    """A row of GET /fapi/v1/positionMargin/history: type 1 added to the isolated wallet, 2 taken out."""
    acct.margin_history.append({"symbol": b.symbol, "type": kind, "deltaType": delta_type, "amount": s8(amount),
                                "asset": b.spec.margin_asset, "time": t, "positionSide": "BOTH",
                                "clientTranId": ""})
    if len(acct.margin_history) > HISTORY_KEPT:
        del acct.margin_history[:HISTORY_KEPT // 5]


def _amount(raw: str | None) -> Decimal:
    """positionMargin's ``amount``: a positive number with at most 8 decimals."""
    if not raw:
        raise missing("amount")
    check_number(raw, "amount")
    try:
        amount = Decimal(raw)
    except InvalidOperation as exc:  # pragma: no cover - check_number admits only plain decimals
        raise invalid("amount") from exc
    if amount != q8(amount):
        raise SimApiError(-1111, "Precision is over the maximum defined for this asset.")
    if amount <= 0:
        raise SimApiError(-4055, "Amount must be positive.")
    return amount
