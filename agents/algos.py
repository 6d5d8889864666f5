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
``TRIGGERED`` its order is in the book under the order id ``ai``: it keeps counting until the ledger
has heard of that order (its own frames then count it) or the order has ended (``FINISHED``); the
frames' order between the two streams of events is not documented. Any other status ends it.

:class:`OtherAlgos` (the ledger's ``algos``) keeps them and adds its sums into the ledger's pending
sums, so every check of the worst case (the guard, the trims, the exposure the fleet reports) sees
them with no change of its own. A REST listing (``GET /fapi/v1/openAlgoOrders``, at the start and every resync) replaces what
frames said, but for algo orders with a frame at or after the listing was asked for.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Iterable

from fleet.binance.events import BUY, AlgoUpdate
from fleet.binance.models import AlgoOrderInfo

if TYPE_CHECKING:
    from .ledger import OrderLedger

WAITING = frozenset({"NEW", "TRIGGERING"})   # not in the book yet: counted here
TRIGGERED = "TRIGGERED"   # its order is in the book: counted here until the ledger knows that order
ENDED_KEPT = 1_000   # ended algo ids remembered, so a late or repeated frame does not count one again


@dataclass(slots=True)
class OtherAlgo:
    """One conditional order of another hand: its side, the steps it counts, the time of its newest
    word (exchange ms) and, once triggered, the id of its order in the book."""

    algo_id: int
    client_algo_id: str
    side: str
    steps: int
    time_ms: int
    order_id: int | None = None


class OtherAlgos:
    """The symbol's conditional orders of other hands, and their pending steps by side."""

    def __init__(self) -> None:
        self.open: dict[int, OtherAlgo] = {}
        self._ended: OrderedDict[int, int] = OrderedDict()   # algo id -> the time it ended
        self.buy_steps = 0
        self.sell_steps = 0

    def on_update(self, led: OrderLedger, ev: AlgoUpdate, steps: int) -> bool:
        """One ``ALGO_UPDATE`` of the symbol (``steps``: its quantity in steps), its change added to
        ``led``'s pending sums; whether it changed what counts. A frame older than the algo order's
        newest word changes nothing."""
        t = ev.transaction_time or ev.event_time
        known = self.open.get(ev.algo_id)
        if known is not None and t < known.time_ms or ev.algo_id in self._ended:
            led.stale_updates += 1
            return False
        waiting = ev.status in WAITING
        if waiting or ev.status == TRIGGERED and ev.order_id and not led.find("", ev.order_id):
            algo = OtherAlgo(ev.algo_id, ev.client_algo_id, ev.side, 0 if ev.close_position else steps, t,
                             None if waiting else ev.order_id)
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

    def sync_listing(self, listed: Iterable[AlgoOrderInfo], steps_of: dict[int, int], listed_at_ms: int | None) -> None:
        """A REST listing of the symbol's open algo orders is the truth as of ``listed_at_ms``: what it
        lacks has ended, unless a frame at or after that time said otherwise. The caller resets the
        ledger's pending sums afterwards (``OrderLedger.reset_pending``)."""
        at = listed_at_ms if listed_at_ms is not None else 0
        fresh = {a.algo_id: a for a in self.open.values() if a.time_ms >= at and listed_at_ms is not None}
        for info in listed:
            if info.algo_id in fresh or info.status not in WAITING or info.algo_id in self._ended:
                continue
            fresh[info.algo_id] = OtherAlgo(info.algo_id, info.client_algo_id, info.side,
                                            0 if info.close_position else steps_of[info.algo_id], info.update_time)
        for algo_id in set(self.open) - set(fresh):
            self._ended[algo_id] = at
        self.open = fresh
        self._trim_ended()
        self.buy_steps = sum(a.steps for a in fresh.values() if a.side == BUY)
        self.sell_steps = sum(a.steps for a in fresh.values() if a.side != BUY)

    def _set(self, led: OrderLedger, algo: OtherAlgo) -> None:
        self._add(led, self.open.get(algo.algo_id), -1)
        self.open[algo.algo_id] = algo
        self._add(led, algo, 1)

    def _end(self, led: OrderLedger, algo_id: int, t: int) -> None:
        self._add(led, self.open.pop(algo_id, None), -1)
        self._ended[algo_id] = t
        self._trim_ended()

    def _trim_ended(self) -> None:
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
