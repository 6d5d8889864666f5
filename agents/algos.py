"""Conditional orders of other hands on the symbol: counted in the worst case until they reach the book.

Since December 2025 Binance keeps conditional orders (STOP, STOP_MARKET, TAKE_PROFIT,
TAKE_PROFIT_MARKET, TRAILING_STOP_MARKET) in its Algo Service, outside the book: ``GET
/fapi/v1/openOrders`` does not list them and their statuses come as ``ALGO_UPDATE`` frames, not
``ORDER_TRADE_UPDATE``. mmfleet never places one, so each is another hand's (a desk's stop beside the
fleet on the same account). Once triggered it sends an order to the book that may fill: until then
its quantity is pending on its side, as another hand's resting order is (``agents/user_feed.py``),
whether it is reduce-only or not (the safe side). A close-position order carries no quantity: it
only ever brings the position to 0, so it adds nothing.

An algo order counts while it waits (``NEW``) or is being triggered (``TRIGGERING``). Once
``TRIGGERED`` (or ``FINISHED``) its order is in the book under the order id ``ai``: it keeps counting
until the ledger has heard of that order (its own frames or a listing then count it), or, finished,
until a position figure later than its end holds that order's fills; the order of the two kinds of
frames is not documented. Any other status ends it.

:class:`OtherAlgos` (the ledger's ``algos``) keeps them and adds its sums into the ledger's pending
sums, so every check of the worst case (the guard, the trims, the exposure the fleet reports) sees
them with no change of its own. A REST listing (``GET /fapi/v1/openAlgoOrders``, at the start, every resync and every 6th
reconciliation) replaces what frames said, but for algo orders with a word within the clock's margin
before the listing or after it, and triggered ones whose order the ledger has not heard of yet.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Callable, Iterable

from fleet.binance.events import BUY, AlgoUpdate
from fleet.binance.models import AlgoOrderInfo

if TYPE_CHECKING:
    from .ledger import OrderLedger

WAITING = frozenset({"NEW", "TRIGGERING"})   # not in the book yet: counted here
SENT = frozenset({"TRIGGERED", "FINISHED"})   # its order went to the book (its id in ``ai``)
TRIGGERED_KEPT_MS = 60_000   # a listing keeps a triggered one whose order the ledger has not heard of this long
ENDED_KEPT = 1_000   # algo ids frames ended, remembered, so a late or repeated frame does not count one again


@dataclass(slots=True)
class OtherAlgo:
    """One conditional order of another hand: its side, the steps it counts, the time of its newest
    word (exchange ms) and, once triggered, the id of its order in the book (and, once that order has
    ended, when)."""

    algo_id: int
    client_algo_id: str
    side: str
    steps: int
    time_ms: int
    order_id: int | None = None
    finished_ms: int | None = None


def heard_of(led: OrderLedger, order_id: int) -> bool:
    """Whether the ledger has a view of the book order ``order_id`` (open, or closed and remembered)."""
    return led.find("", order_id) is not None or any(o.order_id == order_id for o in led.closed.values())


class OtherAlgos:
    """The symbol's conditional orders of other hands, and their pending steps by side."""

    def __init__(self) -> None:
        self.open: dict[int, OtherAlgo] = {}
        self._ended: OrderedDict[int, int] = OrderedDict()   # algo id -> the time a frame ended it
        self.buy_steps = 0
        self.sell_steps = 0

    def on_update(self, led: OrderLedger, ev: AlgoUpdate, steps: int) -> bool:
        """One ``ALGO_UPDATE`` of the symbol (``steps``: its quantity in steps), its change added to
        ``led``'s pending sums; whether it changed what counts. A frame older than the algo order's
        newest word changes nothing. Triggered or finished, it counts on until the ledger has heard of
        the order it sent (``on_order``), or, finished, until a position figure after it holds that
        order's fills (``on_figure``): the two kinds of frames come in no documented order."""
        t = ev.transaction_time or ev.event_time
        known = self.open.get(ev.algo_id)
        if ev.algo_id in self._ended or known is not None and t < known.time_ms:
            led.stale_updates += 1
            return False
        waiting = ev.status in WAITING
        if waiting or ev.status in SENT and ev.order_id is not None and not heard_of(led, ev.order_id):
            algo = OtherAlgo(ev.algo_id, ev.client_algo_id, ev.side, 0 if ev.close_position else steps, t,
                             None if waiting else ev.order_id, t if ev.status == "FINISHED" else None)
            self._set(led, algo)
            return known is None or known.steps != algo.steps
        self._end(led, ev.algo_id, t)
        return known is not None

    def on_order(self, led: OrderLedger, order_id: int) -> None:
        """The ledger heard of a book order: a triggered algo order that sent it stops counting here."""
        for algo in self.open.values():
            if algo.order_id == order_id:
                self._end(led, algo.algo_id, algo.time_ms)
                return

    def on_figure(self, led: OrderLedger, figure_ms: int) -> None:
        """An exchange position figure as of ``figure_ms``: a finished algo order's order (its fills
        ended by then) is inside it once the figure is later than its end."""
        for algo in [a for a in self.open.values() if a.finished_ms is not None and a.finished_ms < figure_ms]:
            self._end(led, algo.algo_id, algo.finished_ms)   # type: ignore[arg-type]

    def sync_listing(self, listed: Iterable[AlgoOrderInfo], steps_of: dict[int, int], listed_at_ms: int | None,
                     margin_ms: int, ledger_heard_of: Callable[[int], bool]) -> None:
        """A REST listing of the symbol's waiting algo orders, asked at ``listed_at_ms`` (this host's
        estimate of the exchange's clock: ``margin_ms`` of doubt). What it lacks stops counting, but for
        algo orders with a word since ``margin_ms`` before it, and triggered ones whose order the ledger
        has not heard of (the listing shows waiting ones only), for ``TRIGGERED_KEPT_MS``. Not
        remembered as ended: a later frame counts one again. The caller resets the ledger's pending
        sums afterwards (``OrderLedger.reset_pending``)."""
        keep: dict[int, OtherAlgo] = {}
        for a in self.open.values():
            if a.order_id is not None:
                if not ledger_heard_of(a.order_id) and (listed_at_ms is None
                                                        or a.time_ms >= listed_at_ms - TRIGGERED_KEPT_MS):
                    keep[a.algo_id] = a
            elif listed_at_ms is not None and a.time_ms >= listed_at_ms - margin_ms:
                keep[a.algo_id] = a
        for info in listed:
            if info.algo_id in keep or info.status not in WAITING or info.algo_id in self._ended:
                continue
            keep[info.algo_id] = OtherAlgo(info.algo_id, info.client_algo_id, info.side,
                                           0 if info.close_position else steps_of[info.algo_id], info.update_time)
        self.open = keep
        self.buy_steps = sum(a.steps for a in keep.values() if a.side == BUY)
        self.sell_steps = sum(a.steps for a in keep.values() if a.side != BUY)

    def _set(self, led: OrderLedger, algo: OtherAlgo) -> None:
        self._add(led, self.open.get(algo.algo_id), -1)
        self.open[algo.algo_id] = algo
        self._add(led, algo, 1)

    def _end(self, led: OrderLedger, algo_id: int, t: int) -> None:
        self._add(led, self.open.pop(algo_id, None), -1)
        self._ended[algo_id] = t
        while len(self._ended) > ENDED_KEPT:
            self._ended.popitem(last=False)

    def _add(self, led: OrderLedger, algo: OtherAlgo | None, sign: int) -> None:
        if algo is None or not algo.steps:
            return
        d = sign * algo.steps
        if algo.side == BUY:
            self.buy_steps += d
            led.pending_buy_steps += d
        else:
            self.sell_steps += d
            led.pending_sell_steps += d


def steps_of(quantity: Decimal, step: Decimal) -> int:
    """Steps of an algo order's quantity, rounded up: a quantity off the grid is never undercounted."""
    q = quantity / step
    n = int(q.to_integral_value())
    return n + 1 if n < q else n
