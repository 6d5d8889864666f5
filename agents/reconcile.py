"""The reconciliation backstop's decisions: the exchange's open orders against the store's.

Streams and REST answers can lose or misstate things (an answer of "unknown" that executed later, a
frame never sent); every few seconds the runtime lists the symbol's open orders and hands them here.
Pure: the store and the listing in, a plan out (the runtime carries it out and logs it):

- an order the exchange lists that the store does not count (unknown here, or closed on our own
  inference) is adopted: it counts from now on. An order of ours that no ladder of ours wants (an
  earlier epoch's; this epoch's that the store knows only from the exchange; one adopted while
  quoting is stopped) is cancelled too;
- an order of a later epoch belongs to a successor: counted, never touched;
- an order whose client id is not mmfleet's (placed by hand) is counted and left alone;
- an order the store counts as open that the listing lacks is looked up by client id, unless it may
  simply not have landed yet (still unacknowledged), changed after the listing was taken, or has
  its own answer or look-up pending.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from fleet.binance.models import OrderInfo

from .orders import OrderReason, parse_client_order_id
from .store import PENDING_NEW, Store


@dataclass(frozen=True, slots=True)
class ReconcilePlan:
    """What one comparison found: ids adopted, (client id, order id) to cancel, ids to look up."""

    adopted: tuple[str, ...] = ()
    cancel: tuple[tuple[str, int], ...] = ()
    old_epoch: tuple[str, ...] = ()
    lookup: tuple[str, ...] = ()
    foreign: tuple[str, ...] = ()

    @property
    def discrepancies(self) -> int:
        return len(self.adopted) + len(self.lookup) + len(self.old_epoch)


def reconcile_orders(
    store: Store,
    listed: Iterable[OrderInfo],
    *,
    epoch: int,
    listed_at_ms: int,
    quoting: bool,
    may_cancel: bool,
) -> ReconcilePlan:
    """Compare ``listed`` (the exchange's open orders, requested at ``listed_at_ms``) with ``store``.

    ``quoting``: the ladder is live (not halted, nothing blocks it); otherwise any order of this
    epoch the store had to adopt is cancelled. ``may_cancel``: the lease holds (a lapsed one may have
    a successor: then nothing is cancelled here).
    """
    adopted: list[str] = []
    cancel: list[tuple[str, int]] = []
    old: list[str] = []
    foreign: list[str] = []
    seen_cids: set[str] = set()
    seen_ids: set[int] = set()
    for info in listed:
        if getattr(info, "symbol", store.symbol) != store.symbol:
            continue
        cid = info.client_order_id
        oid = int(info.order_id)
        seen_cids.add(cid)
        seen_ids.add(oid)
        newly = store.adopt(info)
        parsed = parse_client_order_id(cid)
        if parsed is None:
            if newly:
                foreign.append(cid)
            continue
        if parsed[0] > epoch:
            continue  # a successor's order: its exposure is counted, the order is not ours to touch
        o = store.get(cid)
        if parsed[0] < epoch:
            old.append(cid)
            if may_cancel and not _cancel_out(o):
                cancel.append((cid, oid))
            continue
        unplanned = o is None or o.reason == OrderReason.EXTERNAL  # ours by its id, but this agent has no record of placing it
        if newly:
            adopted.append(cid)
        if may_cancel and (unplanned or (newly and not quoting)) and not _cancel_out(o):
            cancel.append((cid, oid))
    lookup: list[str] = []
    for o in store.open_orders():
        if o.client_order_id in seen_cids or (o.order_id is not None and o.order_id in seen_ids):
            continue
        if o.unknown_ms is not None or o.cancel_sent_ms is not None or o.unresolved_ms is not None:
            continue  # its own look-up or answer settles it
        if o.status == PENDING_NEW or o.key[0] >= listed_at_ms:
            continue  # may not have landed yet (the in-flight look-ups cover it), or changed since the listing
        lookup.append(o.client_order_id)
    return ReconcilePlan(tuple(adopted), tuple(cancel), tuple(old), tuple(lookup), tuple(foreign))


def _cancel_out(o: Any) -> bool:
    """A cancel of ``o`` is under way: sent and unanswered, or answered ambiguously (it goes again by
    itself, ``Store.cancels_due_again``)."""
    return o is not None and (o.cancel_sent_ms is not None or o.cancel_doubt)
