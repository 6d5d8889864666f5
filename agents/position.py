"""Position and P&L of one symbol: trades booked once by id, the exchange's position figures, drawdown.

The position moves by each trade frame once (by order and trade id) and is reset by the exchange's
figure (ACCOUNT_UPDATE, REST) plus the trades newer than it. Realized P&L and commission are booked
per trade as the exchange books them.

Same-millisecond fills: a trade frame whose time equals the newest position figure's may or may not
be inside it (the exchange sends a fill's ACCOUNT_UPDATE and ORDER_TRADE_UPDATE one after the other,
in an order it does not document). If the figure's move within that millisecond accounts for it, it
is inside; otherwise it is *unplaced* (never in the position; the store keeps its order's fill
pending) until the next figure, or a frame of a later millisecond, shows where it went. Placed
trades are handed back to the store (``place_unplaced``), which tells the order ledger.

Drawdown is the symbol's own: equity = ``risk.capital`` + realized + funding - commission +
unrealized, so a transfer on the shared wallet cannot move it. Its peak is tracked as the inputs
arrive (``track_equity``), from the first exchange position figure with a price on; reads never
change it. The price (mark, else mid) and the funding P&L are passed in by the store.
"""

from __future__ import annotations

import copy
from collections import OrderedDict, deque
from decimal import Decimal

from fleet.binance.events import BUY, OrderUpdate
from fleet.binance.filters import SymbolFilters
from fleet.config import SymbolParams

_TRADES_KEEP = 50_000  # trade ids remembered, so a duplicated fill is never booked twice

# ``book_trade``'s answers (None: a duplicate)
UNPLACED = 0  # not (yet) known to be inside the position: its fill stays pending
BOOKED = 1  # in the position (or inside the exchange's figure)
BOOKED_ALL = 2  # inside the figure, and so is every unplaced trade of its millisecond

Unplaced = tuple[int, str, int, int]  # (time, client id, order id, steps)


class Position:
    """Signed position in steps, average entry, realized P&L, commission, fills, drawdown peak."""

    def __init__(self, filters: SymbolFilters, params: SymbolParams) -> None:
        self.step = float(filters.step_size)
        self.capital = params.risk.capital
        self.position_steps = 0
        self.entry_price = 0.0
        self.position_time = -1  # exchange time of the last authoritative position figure
        self.position_confirmed = False  # an exchange figure of the position has been applied
        self._figure_closes_ms = False  # the figure (a REST snapshot) holds every trade of its millisecond
        self._figure_steps = 0  # the newest stream figure, and the position just before its millisecond,
        self._ms_base = 0  # and the trades of that millisecond seen so far: what the figure's move
        self._ms_seen = 0  # within the millisecond accounts for
        self.unplaced: list[Unplaced] = []  # trades of the figure's millisecond not known to be inside
        self._nonflat_ms = -1  # the latest exchange time at which the position was known not to be flat
        self._trades_since: deque[tuple[int, int]] = deque()  # (time, signed steps) booked after it
        self.realized_pnl = 0.0
        self.commission = 0.0
        self._trade_ids: OrderedDict[tuple[int, int], None] = OrderedDict()
        self._carried: set[tuple[int, int]] = set()  # trades whose P&L came with the carried books
        # trades whose frame lacked its P&L fields (``rp``, ``n``, ...): the position moved, the P&L waits
        # for the exchange's trade list (``carry_trade``); by key, with the trade's time
        self.owed: dict[tuple[int, int], int] = {}
        self._clearances: set[int] = set()  # liquidation clearance fees booked, by income id (agents/clearance.py)
        self.clearance_ms = 0  # the newest of them (exchange time; carried: agents/carry.py)
        # a stream figure's time whose move within its millisecond no trade frame explains (yet): a trade
        # frame lost on a live connection (the reconciliation then reads the trades, agents/reconciler.py)
        self.unexplained_ms: int | None = None
        # fills a REST answer told of (an order's executed steps, when told) that its trade frames have not
        # reached yet, by client order id: their frames lost with the position's, only the trade list has
        # their P&L (the reconciliation reads it once they stay so a while, agents/reconciler.py)
        self.unframed: dict[str, tuple[int, int]] = {}
        self.last_trade_id: int | None = None  # the newest trade booked, and its orders booked (agents/carry.py)
        self.last_trade_orders: list[int] = []
        self.fills_buy = 0
        self.fills_sell = 0
        self._peak_pnl: float | None = None  # the symbol's own P&L at its peak, once confirmed
        self.max_drawdown_pct = 0.0
        self.stale_updates = 0

    def with_params(self, params: SymbolParams) -> "Position":
        """The position under new parameters (a new ``risk.capital`` for the equity): every trade,
        figure, P&L figure and the peak are kept (this one is handed over: use the returned one)."""
        new = copy.copy(self)
        new.capital = params.risk.capital
        return new

    # ------------------------------------------------------------------ P&L

    def unrealized_pnl(self, price: float) -> float:
        if not price or not self.position_steps:
            return 0.0
        return self.position_steps * self.step * (price - self.entry_price)

    def pnl(self, price: float, funding_pnl: float) -> float:
        """This symbol's own P&L: realized + funding - commission + unrealized at ``price``."""
        return self.realized_pnl + funding_pnl - self.commission + self.unrealized_pnl(price)

    @property
    def peak_pnl(self) -> float | None:
        return self._peak_pnl

    @property
    def peak_equity(self) -> float | None:
        """The highest equity since a confirmed baseline (None before)."""
        return None if self._peak_pnl is None else self.capital + self._peak_pnl

    def drawdown_pct(self, price: float, funding_pnl: float) -> float:
        """Percent below the peak equity (0 at a peak, and before a confirmed baseline). A pure read."""
        peak_pnl = self._peak_pnl
        if peak_pnl is None:
            return 0.0
        peak = self.capital + peak_pnl
        if peak <= 0:
            return 0.0
        dd = (peak_pnl - self.pnl(price, funding_pnl)) / peak * 100.0
        return dd if dd > 0.0 else 0.0

    def track_equity(self, price: float, funding_pnl: float) -> None:
        """Move the peak (and the deepest drawdown) by the current equity, once the baseline is
        confirmed: an exchange figure of the position, and a price to value it at."""
        if not self.position_confirmed or not price:
            return
        pnl = self.pnl(price, funding_pnl)
        if self._peak_pnl is None or pnl > self._peak_pnl:
            self._peak_pnl = pnl
        dd = self.drawdown_pct(price, funding_pnl)
        if dd > self.max_drawdown_pct:
            self.max_drawdown_pct = dd

    def held_within(self, t: int, lookback_ms: int) -> bool:
        """The position is not flat, or was not at some time in the ``lookback_ms`` before ``t``."""
        return self.position_steps != 0 or self._nonflat_ms >= t - lookback_ms

    # ------------------------------------------------------------------ trades

    def book_trade(
        self, key: tuple[int, int], u: OrderUpdate, steps: int, count_commission: bool, pnl_known: bool = True
    ) -> int | None:
        """Book one trade once (by ``key``: order and trade id): its commission (if in the margin
        asset) and realized P&L, and its quantity into the position (``BOOKED``, ``BOOKED_ALL``) or
        as unplaced (``UNPLACED``); None for a duplicate. Each trade carries its own quantity and
        time, so the position is exact whatever order the trades of one order arrive in."""
        if key in self._trade_ids:
            return None
        self._remember(key)
        if key in self._carried:   # its P&L and fill came with the carried books: only the position moves
            self._carried.discard(key)
        elif not pnl_known:   # (read as 0, a closing fill's loss was gone from the drawdown for good)
            self.owed[key] = u.update_time
        else:   # as the exchange books it, per trade
            self._book(float(u.realized_pnl), float(u.commission) if count_commission else 0.0, u.side == BUY)
        placed = self._on_fill(u.side, steps, float(u.last_filled_price), u.update_time)
        if placed == UNPLACED:
            self.unplaced.append((u.update_time, u.client_order_id, u.order_id, steps))
        return placed

    def _remember(self, key: tuple[int, int]) -> None:
        self._trade_ids[key] = None
        if len(self._trade_ids) > _TRADES_KEEP:
            self._trade_ids.popitem(last=False)
        self._mark_newest(key)

    def _mark_newest(self, key: tuple[int, int]) -> None:
        """The newest trade booked, and its orders (a frame without a trade id has none to mark)."""
        order_id, trade_id = key
        if trade_id > 0:
            if self.last_trade_id is None or trade_id > self.last_trade_id:
                self.last_trade_id, self.last_trade_orders = trade_id, [order_id]
            elif trade_id == self.last_trade_id and order_id not in self.last_trade_orders:
                self.last_trade_orders.append(order_id)

    # ------------------------------------------------------------------ books carried (agents/carry.py)

    def restore(self, realized: float, commission: float, fills_buy: int, fills_sell: int,
                peak_pnl: float | None, max_drawdown_pct: float, trade_id: int | None = None,
                trade_orders: tuple[int, ...] = ()) -> None:
        """The books a previous agent of the symbol left, taken in before any trade of this one, with
        the newest trade they hold (the next record names it, whether or not this agent trades)."""
        for order_id in trade_orders if trade_id is not None else ():
            self._mark_newest((order_id, trade_id))   # type: ignore[arg-type]
        self.realized_pnl += realized
        self.commission += commission
        self.fills_buy += fills_buy
        self.fills_sell += fills_sell
        if peak_pnl is not None and (self._peak_pnl is None or peak_pnl > self._peak_pnl):
            self._peak_pnl = peak_pnl
        self.max_drawdown_pct = max(self.max_drawdown_pct, max_drawdown_pct)

    def carry_trade(self, key: tuple[int, int], realized: float, commission: float, buy: bool) -> bool:
        """A trade the exchange lists after the carried books (``userTrades``): its P&L and commission
        added once, unless a frame booked it already; a frame of it later moves only the position."""
        if self.owed.pop(key, None) is not None:   # its frame moved the position without its P&L
            self._book(realized, commission, buy)
            return True
        if key in self._trade_ids or key in self._carried:
            return False
        self._carried.add(key)
        self._mark_newest(key)
        self._book(realized, commission, buy)
        return True

    def book_clearance(self, tran_id: int, fee: float, t: int) -> bool:
        """A liquidation's clearance fee (income INSURANCE_CLEAR at ``t``, ``fee`` paid, positive) into
        the commission, once by its income id."""
        if tran_id in self._clearances:
            return False
        self._clearances.add(tran_id)
        self.commission += fee
        self.clearance_ms = max(self.clearance_ms, t)
        return True

    def _book(self, realized: float, commission: float, buy: bool) -> None:
        """One trade's realized P&L, commission (in the margin asset) and fill."""
        self.realized_pnl += realized
        self.commission += commission
        if buy:
            self.fills_buy += 1
        else:
            self.fills_sell += 1

    def _on_fill(self, side: str, qty_steps: int, price: float, t: int) -> int:
        """Move the position (and the average entry) by one trade newer than the exchange's position
        figure. An older trade is inside the figure. One of the figure's own millisecond is inside it
        if the figure's move within that millisecond accounts for it (or the figure is a snapshot,
        which holds its whole millisecond): then everything of that millisecond seen so far is inside
        (``BOOKED_ALL``); otherwise it is ``UNPLACED``."""
        signed = qty_steps if side == BUY else -qty_steps
        if t < self.position_time:
            return BOOKED
        if t == self.position_time:
            if self._figure_closes_ms:
                return BOOKED
            self._ms_seen += signed
            if self._figure_steps - self._ms_base == self._ms_seen:
                self._note_explained(t, True)
                return BOOKED_ALL
            return UNPLACED
        if self.position_steps and t > self._nonflat_ms:
            self._nonflat_ms = t
        self._trades_since.append((t, signed))
        if len(self._trades_since) > _TRADES_KEEP:
            self._trades_since.popleft()
        pos = self.position_steps
        new = pos + signed
        if pos == 0 or (pos > 0) == (signed > 0):
            self.entry_price = (abs(pos) * self.entry_price + abs(signed) * price) / abs(new)
        elif new == 0:
            self.entry_price = 0.0
        elif (new > 0) != (pos > 0):
            self.entry_price = price
        self.position_steps = new
        if new and t > self._nonflat_ms:
            self._nonflat_ms = t
        return BOOKED

    def note_unframed(self, client_order_id: str, executed_steps: int, at_ms: int) -> None:
        """A REST answer at ``at_ms`` told of ``executed_steps`` filled on the order, beyond what its trade
        frames brought: owed until they reach it (``store._framed``)."""
        told = self.unframed.get(client_order_id)
        if told is None or executed_steps > told[0]:
            self.unframed[client_order_id] = (executed_steps, at_ms if told is None else min(told[1], at_ms))

    def forget_unframed(self, since_ms: int, until_ms: int) -> None:
        """Entries told between ``since_ms`` and ``until_ms``: a read of the trade list covered them."""
        for cid in [c for c, (_, at) in self.unframed.items() if since_ms <= at <= until_ms]:
            del self.unframed[cid]

    def unframed_due(self, now_ms: int, grace_ms: int) -> int | None:
        """The earliest time of fills told ``grace_ms`` or longer ago whose frames never came (forgotten
        here: the caller reads the trades from then), or None."""
        due = [cid for cid, (_, at) in self.unframed.items() if now_ms - at >= grace_ms]
        return min(self.unframed.pop(cid)[1] for cid in due) if due else None

    def _note_explained(self, t: int, explained: bool) -> None:
        """Whether the trades of millisecond ``t`` seen so far explain the stream figure's move then."""
        if explained:
            if self.unexplained_ms == t:
                self.unexplained_ms = None
        elif self.unexplained_ms is None or t < self.unexplained_ms:
            self.unexplained_ms = t

    def place_unplaced(self, until_ms: int | None = None) -> list[Unplaced]:
        """Unplaced trades (of times up to ``until_ms``; all if None) are inside the exchange's
        figure: they are handed back (their fills stop counting as pending) and forgotten here."""
        keep: list[Unplaced] = []
        out: list[Unplaced] = []
        for item in self.unplaced:
            (keep if until_ms is not None and item[0] > until_ms else out).append(item)
        self.unplaced = keep
        return out

    # ------------------------------------------------------------------ the exchange's figures

    def holds(self, t: int) -> bool:
        """Whether the exchange's position figure holds every fill of time ``t``: one older than it, or
        of its millisecond when it holds the whole millisecond (a snapshot)."""
        return t < self.position_time or t == self.position_time and self._figure_closes_ms

    def set_figure(self, fig_steps: int, entry_price: Decimal, t: int, snapshot: bool = False) -> bool:
        """The exchange's position figure as of ``t``: a stream figure (ACCOUNT_UPDATE) as of its
        frame's time (a later figure of the same millisecond is newer), or a snapshot holding its
        whole millisecond (frames of it are older). Ignored (False) if older than the one held;
        trades booked here after ``t`` stay added on top. The caller then places the unplaced
        trades up to ``t`` (the figure holds them)."""
        pt = self.position_time
        if t < pt or (t == pt and self._figure_closes_ms and not snapshot):
            self.stale_updates += 1
            return False
        if self.position_steps and t > self._nonflat_ms:
            self._nonflat_ms = t
        if snapshot or t > pt:
            # trades of this millisecond booked already, and the position just before it
            seen = sum(q for tq, q in self._trades_since if tq == t)
            self._ms_base = self.position_steps - sum(q for tq, q in self._trades_since if tq >= t)
            self._ms_seen = seen
        self.position_time = t
        self._figure_closes_ms = snapshot
        self.position_confirmed = True
        # Trades booked here that are newer than the exchange's figure are not in it yet.
        later = deque(tr for tr in self._trades_since if tr[0] > t)
        self._trades_since = later
        self._figure_steps = fig_steps
        if not snapshot and fig_steps - self._ms_base != self._ms_seen:
            # (a figure explained by the net of what was seen clears nothing: a buy and a sell of one size
            # in its millisecond net to 0 with either frame lost)
            self._note_explained(t, False)
        self.position_steps = fig_steps + sum(q for _, q in later)
        self.entry_price = float(entry_price) if self.position_steps else 0.0
        if self.position_steps and t > self._nonflat_ms:
            self._nonflat_ms = t
        return True
