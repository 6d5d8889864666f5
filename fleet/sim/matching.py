"""A taker's walk through the other side of a book, best price first: at each price the book's size
queued ahead of each resting order, then the order (self-trade prevention as the taker's mode says; a
reduce-only maker only as far as it reduces its position), then the book's size behind them.

One walk, two ends: :class:`Fills` makes it happen (fills at both ends, the tape, expiries) and
:class:`DryRun` only counts what it would fill, for a FOK order's all-or-nothing check, so the check
and the fills cannot disagree.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fleet.sim.book import Book
from fleet.sim.orders import Order

if TYPE_CHECKING:
    from fleet.sim.engine import Engine

MAX_LEVELS = 100000   # the most prices one walk steps through


class Fills:
    """The walk made real at ``t``: fills, one trade each on the tape, expiries."""

    __slots__ = ("e", "b", "t")

    def __init__(self, e: Engine, b: Book, t: int) -> None:
        self.e, self.b, self.t = e, b, t

    @staticmethod
    def is_open(o: Order) -> bool:
        return o.is_open

    def self_trade(self, o: Order) -> None:
        """Self-trade prevention expires the maker ``o``."""
        self.e._expire(self.e.accounts[o.account], self.b, o, self.t, "1")

    def fillable(self, o: Order, qty: int) -> int:
        return self.e._fillable(self.b, o, qty, self.t)

    def trade(self, o: Order, taker: Order | None, p: int, qty: int, buy: bool) -> None:
        """The resting order ``o`` fills ``qty`` at ``p``: a trade of its own, on the tape and in both
        sides' fills under one id, as Binance's."""
        e, b, t = self.e, self.b, self.t
        trade_id = e._emit_agg(b, p, qty, t, not buy)
        e._fill(b, o, qty, p, True, t, trade_id)
        if taker is not None:
            e._fill(b, taker, qty, p, False, t, trade_id)

    def book_trade(self, p: int, qty: int, taker: Order | None, buy: bool) -> None:
        """The book's own size at ``p`` trades ``qty`` with the taker: one trade."""
        e, b, t = self.e, self.b, self.t
        trade_id = e._emit_agg(b, p, qty, t, not buy)
        if taker is not None:
            e._fill(b, taker, qty, p, False, t, trade_id)

    def book_eaten(self, resting: list[Order] | None, p: int, s_qty: int, eaten: int, buy: bool) -> None:
        """The book's own size at ``p`` (``s_qty`` of it) traded ``eaten`` in all: the orders resting
        there move up their queue."""
        b = self.b
        consumed = b.consumed_ask if buy else b.consumed_bid
        consumed[p] = consumed.get(p, 0) + eaten
        if b.diff_state:   # its level shrank, however deep the walk went: the diff streams say it
            b.note_price(not buy, p)
        if resting:
            for o in resting:
                a = o.ahead if o.ahead < s_qty else s_qty
                o.ahead = a - eaten if a > eaten else 0

    def stop(self, taker: Order) -> None:
        """Self-trade prevention stopped the taker: its remainder expires."""
        if taker.is_open:
            self.e._expire(self.e.accounts[taker.account], self.b, taker, self.t, "3" if taker.tif == "IOC" else "1")


class DryRun:
    """The walk counted, nothing changed: the positions it would leave (a reduce-only maker fills only as
    far as its account's position then allows) and the orders it would expire (self-trade prevention, a
    reduce-only order whose position reached zero or flipped), as :class:`Fills` would."""

    __slots__ = ("e", "b", "pos", "gone")

    def __init__(self, e: Engine, b: Book) -> None:
        self.e, self.b = e, b
        self.pos: dict[str, int] = {}   # account -> its position's amount as the walk leaves it
        self.gone: set[int] = set()     # the order ids the walk would expire

    def _amount(self, account: str) -> int:
        amount = self.pos.get(account)
        if amount is None:
            pos = self.e.accounts[account].positions.get(self.b.symbol)
            amount = pos.amount if pos else 0
        return amount

    def is_open(self, o: Order) -> bool:
        return o.is_open and o.order_id not in self.gone

    def self_trade(self, o: Order) -> None:
        self.gone.add(o.order_id)

    def fillable(self, o: Order, qty: int) -> int:
        """As ``Engine._fillable``: a reduce-only order never grows or flips its position."""
        amount = self._amount(o.account)
        cap = -amount * o.sign if amount * o.sign < 0 else 0
        if cap <= 0:
            self.gone.add(o.order_id)
            return 0
        return qty if qty < cap else cap

    def trade(self, o: Order, taker: Order | None, p: int, qty: int, buy: bool) -> None:
        self._move(o, qty)
        if taker is not None:
            self._move(taker, qty)

    def book_trade(self, p: int, qty: int, taker: Order | None, buy: bool) -> None:
        if taker is not None:
            self._move(taker, qty)

    def book_eaten(self, resting: list[Order] | None, p: int, s_qty: int, eaten: int, buy: bool) -> None:
        pass

    def stop(self, taker: Order) -> None:
        pass

    def _move(self, o: Order, qty: int) -> None:
        """``o`` fills ``qty``; a position that reaches zero or flips expires its account's reduce-only
        orders that would no longer reduce it (``Engine._cap_reduce_only`` after a fill)."""
        old = self._amount(o.account)
        new = old + o.sign * qty
        self.pos[o.account] = new
        if old and (new == 0 or (old > 0) != (new > 0)):
            for r in self.e.accounts[o.account].open.values():
                if r.symbol == self.b.symbol and r.reduce_only and (new == 0 or (new > 0) == (r.sign > 0)):
                    self.gone.add(r.order_id)


def walk(fx: Fills | DryRun, b: Book, buy: bool, qty: int, taker: Order | None, limit: int | None) -> int:
    """A taker of ``qty`` steps (``taker`` None: the market's own) walks the opposite side up to the price
    ``limit`` (None: no limit); returns the quantity left."""
    v = qty
    if buy:
        p, levels, synth, direction = b.best_ask(), b.asks, b.synth_ask, 1
    else:
        p, levels, synth, direction = b.best_bid(), b.bids, b.synth_bid, -1
    walked = 0
    while v > 0 and walked < MAX_LEVELS and p > 0:
        if limit is not None and (p > limit if buy else p < limit):
            break
        s_qty = synth(p)
        resting = levels.get(p)
        eaten, v, stopped = _meet(fx, resting, s_qty, v, taker, p, buy) if resting else (0, v, False)
        if v > 0 and s_qty > eaten and not stopped:
            behind = s_qty - eaten
            take = behind if behind < v else v
            fx.book_trade(p, take, taker, buy)
            eaten += take
            v -= take
        if eaten:
            fx.book_eaten(levels.get(p), p, s_qty, eaten, buy)
        if stopped:
            fx.stop(taker)   # type: ignore[arg-type] - only a taker stops so
            return v
        p += direction
        walked += 1
    return v


def _meet(fx: Fills | DryRun, resting: list[Order], s_qty: int, v: int, taker: Order | None, p: int,
          buy: bool) -> tuple[int, int, bool]:
    """The orders resting at ``p``, in queue order, met by a taker with ``v`` left: (the book's size it
    ate ahead of them, the quantity left, whether self-trade prevention stopped it). Each part of the
    book's size queued ahead of an order trades before that order does, as on the exchange's tape."""
    eaten = 0
    for o in list(resting):
        if o is taker or not fx.is_open(o):   # gone earlier in this walk (filled, reduce-only capped, STP)
            continue
        # the book's size queued ahead of this order trades first: a taker it stops short of this
        # order never meets it, whoever's it is
        ahead = o.ahead if o.ahead < s_qty else s_qty
        gap = ahead - eaten
        if gap > 0:
            take = gap if gap < v else v
            fx.book_trade(p, take, taker, buy)
            eaten += take
            v -= take
            if v == 0:
                break
        if taker is not None and o.account == taker.account and taker.stp != "NONE" and taker.tif != "FOK":
            # NONE, and any mode on a FOK taker (Binance: STP takes effect only for GTC, IOC and GTD): it
            # trades with itself, as with anyone. Otherwise self-trade prevention, as the taker's mode
            # says: the maker expires (EXPIRE_MAKER, EXPIRE_BOTH) and the walk goes on past it
            # (EXPIRE_MAKER) or the taker's remainder expires (EXPIRE_TAKER, EXPIRE_BOTH)
            if taker.stp != "EXPIRE_TAKER":
                fx.self_trade(o)
            if taker.stp != "EXPIRE_MAKER":
                return eaten, v, True
            continue
        fill = o.orig - o.filled
        if fill > v:
            fill = v
        if o.reduce_only:
            fill = fx.fillable(o, fill)
            if not fill:
                continue
        v -= fill
        fx.trade(o, taker, p, fill, buy)
        if v == 0:
            break
    return eaten, v, False
