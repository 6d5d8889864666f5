"""Delisting: the exchange settles a perpetual at an announced time, and the symbol trades no more.

Binance delists USD-M perpetuals with notice: the symbol's ``deliveryDate`` in exchangeInfo (a far
4133404800000 for a perpetual that is not leaving) becomes the settlement time, and ``!contractInfo``
pushes the change (``dt``; ``cs`` the contract's status; ``bks`` only when brackets change, never here).
At that time the exchange ends every open order of the symbol (``EXPIRED``, ``er`` "7", Binance's expire
reason "canceled as the symbol is delisted"; conditional ones ``EXPIRED``) and closes every position at its
settlement price by an order it writes itself, ``c`` ``settlement_autoclose-<ms><n>`` (Binance's
special client order id "for delisting or delivery"). The symbol's status leaves ``TRADING``: here
``SETTLING`` while it settles, then ``CLOSE``; each change is a ``!contractInfo`` frame. An order on a
symbol that is not ``TRADING`` is refused -4108; cancels and reads still answer.

What the simulator chooses where Binance's documents are silent: the settlement price is the mark at
the settlement time (Binance uses an average of the index before it); the closing order is written as
an ADL's (type ``LIQUIDATION``, filled at once as ``CALCULATED``, no fee, its trade on the tape, not
in ``forceOrders``); a closed symbol's market stops (no book, trade or mark frames; unfreezing, a jump or a replayed
line do not move it again) and stays listed.
``POST /sim/delist {"symbol", "in_s" | "at_ms"}`` announces a delisting (fleet/sim/server.py).

The other contract change ``!contractInfo`` pushes is a new bracket table (Binance adjusts a symbol's
brackets with notice): ``POST /sim/brackets {"symbol", "brackets": [{"notional_cap",
"initial_leverage", "maint_margin_ratio"}, ...]}`` replaces the table, and the frame carries ``bks``
(per bracket ``bs``, ``bnf`` floor, ``bnc`` cap, ``mmr``, ``cf`` its cum, ``mi``..``ma`` its leverage
range). From then on orders, amendments, leverage changes and the maintenance margin follow the new
table; a leverage set above its first bracket's is lowered to it (``ACCOUNT_CONFIG_UPDATE``); what
rests and what is held stay.
"""

from __future__ import annotations

from typing import Any, Callable

from fleet.sim.book import PERPETUAL_DELIVERY_MS, Book
from fleet.sim.brackets import Brackets
from fleet.sim.errors import SimApiError
from fleet.sim.orders import Account, Order, Position
from fleet.sim.units import ZERO

SETTLEMENT_CLIENT_ID = "settlement_autoclose-"
CONTRACT_INFO = "!contractInfo"
NEVER_MS = 1 << 62   # no settlement announced
ONBOARD_MS = 1569398400000   # exchangeInfo's onboardDate of every simulated symbol


def not_trading() -> SimApiError:
    """-4108: an order or a conditional order on a symbol that is not TRADING."""
    return SimApiError(-4108, "Symbol is on delivering or delivered or settle or closed or pre-trading.")


def amend_not_trading() -> SimApiError:
    """-5024: an amendment on a symbol that is not TRADING (MOVE_ORDER_NOT_ALLOWED_SYMBOL_REASON)."""
    return SimApiError(-5024, "Symbol is not in trading status. Order amendment is not permitted.")


class Delisting:
    """Mixed into :class:`fleet.sim.engine.Engine`."""

    # the Engine's (and its other mixins')
    books: dict[str, Book]
    accounts: dict[str, Account]
    interest: frozenset[str]
    _seq: int
    next_delivery_ms: int
    _expire_all: Callable[[Account, Book, int, str], None]
    _emit_account_update: Callable[..., None]
    _emit_market: Callable[[str, Any], None]
    _emit_user: Callable[[str, Any], None]
    _isolated_fill: Callable[[Account, Book, Position, int, int, Any, int], None]
    _close_by_exchange: Callable[..., tuple[Order, Any]]
    book: Callable[[str | None], Book]

    def schedule_delisting(self, symbol: str, at_ms: int, now: int) -> dict[str, Any]:
        """Announce that ``symbol`` settles at ``at_ms``: its deliveryDate, a ``!contractInfo`` frame."""
        b = self.book(symbol)
        if b.status != "TRADING":
            raise ValueError(f"{b.symbol} is {b.status}, not TRADING")
        if at_ms <= now:
            raise ValueError(f"at_ms {at_ms} is not after now ({now})")
        b.delivery_ms = at_ms
        self.next_delivery_ms = min(self.next_delivery_ms, at_ms)
        self._contract_info(b, now)
        return {"symbol": b.symbol, "deliveryDate": at_ms, "status": b.status}

    def settle_due(self, t: int) -> None:
        """Settle every symbol whose delivery time has come (called as the exchange's time moves)."""
        for b in self.books.values():
            if b.status == "TRADING" and b.delivery_ms <= t:
                self._settle(b, t)
        self.next_delivery_ms = min((b.delivery_ms for b in self.books.values()
                                     if b.status == "TRADING" and b.delivery_ms < PERPETUAL_DELIVERY_MS),
                                    default=NEVER_MS)

    def _settle(self, b: Book, t: int) -> None:
        b.status = "SETTLING"
        self._contract_info(b, t)
        price = round(b.mark / b.tick_f)
        for acct in self.accounts.values():
            self._expire_all(acct, b, t, "7")
            pos = acct.positions.get(b.symbol)
            if pos is None or not pos.amount:
                continue
            acct.counters["settled"] += 1
            old = pos.amount
            o, _ = self._close_by_exchange(acct, b, pos, abs(old), price,   # the order's own sequence number
                                           f"{SETTLEMENT_CLIENT_ID}{t}{(self._seq + 1) % 1_000_000:06d}", t,
                                           forced=False)
            if b.symbol in acct.isolated:
                self._isolated_fill(acct, b, pos, old, -old, b.tick * o.price, t)
            self._emit_account_update(acct, b, "ORDER", t, ZERO)
        b.status = "CLOSE"
        b.frozen = True   # its market stops
        self._contract_info(b, t)

    def set_brackets(self, symbol: str, rows: list[tuple[str, int, str]], now: int) -> dict[str, Any]:
        """A new bracket table for ``symbol`` (ValueError naming a bad bracket), pushed with ``bks``."""
        b = self.book(symbol)
        b.brackets = Brackets(rows)
        top = b.brackets.max_leverage
        for acct in self.accounts.values():
            if acct.leverage.get(b.symbol, 0) > top:
                acct.leverage[b.symbol] = top
                self._emit_user(acct.name, {"e": "ACCOUNT_CONFIG_UPDATE", "E": now, "T": now,
                                            "ac": {"s": b.symbol, "l": top}})
        rs = b.brackets.rows
        # the cum an integer when whole, as Binance's frames show it ("cf":75): a client typing it int
        # (Binance's own SDK) drops a frame that says 75.0
        bks = [{"bs": r.number, "bnf": int(r.floor), "bnc": int(r.cap), "mmr": float(r.rate),
                "cf": int(r.cum) if r.cum == r.cum.to_integral_value() else float(r.cum),
                "mi": rs[i + 1].initial_leverage + 1 if i + 1 < len(rs) else 1, "ma": r.initial_leverage}
               for i, r in enumerate(rs)]
        self._contract_info(b, now, bks)
        return {"symbol": b.symbol, "brackets": b.brackets.json()}

    def _contract_info(self, b: Book, t: int, bks: list[dict[str, Any]] | None = None) -> None:
        if CONTRACT_INFO in self.interest:
            frame = {"e": "contractInfo", "E": t, "s": b.symbol, "ps": b.symbol, "ct": "PERPETUAL",
                     "dt": b.delivery_ms, "ot": ONBOARD_MS, "cs": b.status}
            if bks is not None:
                frame["bks"] = bks
            self._emit_market(CONTRACT_INFO, frame)

