"""Order decisions and the OrderManager: desired ladder vs live orders -> the fewest requests.

Decisions are small frozen dataclasses in integer ticks/steps; the runtime turns them into wire
strings with :class:`~fleet.binance.filters.SymbolFilters` and sends them in Binance-sized batches
(5 places or amends, 10 cancels), in the order given here: exposure-reducing first.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Sequence

from fleet.binance.enums import OrderType, Side, TimeInForce
from fleet.config import OrderParams

_BUY, _SELL = Side.BUY, Side.SELL  # module names: an enum member read off its class costs ~10x a global
PLACE_BATCH_MAX = 5
AMEND_BATCH_MAX = 5
CANCEL_BATCH_MAX = 10

# Binance's pattern for newClientOrderId, and ours inside it: mm-<symbol>-e<epoch>-<seq>.
CLIENT_ORDER_ID_PATTERN = re.compile(r"^[\.A-Z\:/a-z0-9_-]{1,36}$")
_OUR_ID = re.compile(r"^mm-([A-Z0-9]{1,10})-e([0-9]{1,10})-([0-9]{1,10})$")
_SYMBOL_SHORT = 10  # mm- + 10 + -e + 10-digit epoch + - + 10-digit seq = 36


# --- decisions --------------------------------------------------------------------------------


class OrderReason(StrEnum):
    """Why an order was placed or cancelled (logs, the journal, the store's ledger)."""

    LADDER = "ladder"  # the quote ladder
    GRIND = "grind"  # a grind's reduce-only market order (or a cancel making room for it)
    GRIND_REENTRY = "grind_reentry"  # a grind's post-only re-entry
    DRAWDOWN = "drawdown"  # a drawdown band's TWAP slice
    FLATTEN = "flatten"  # flattening the position (operator or stop)
    HALT = "halt"  # cancelled because the symbol is halted
    CAP = "cap"  # cancelled because the worst case is beyond the cap
    RECANCEL = "recancel"  # a cancel sent again: the last one's answer was ambiguous
    RECONCILE = "reconcile"  # cancelled by the reconciliation: an earlier epoch's, or one no ladder of ours wants
    MODIFY_LIMIT = "modify_limit"  # cancelled to be replaced: the exchange will not amend it again (-5026)
    STALE = "stale"  # cancelled while a lapsed lease holds quoting: the ladder would move it, nothing may re-price it
    EXTERNAL = "external"  # adopted from the exchange's listing: not placed by this agent


class BatchKind(StrEnum):
    """What one batch call does."""

    CANCEL = "cancel"
    PLACE = "place"
    AMEND = "amend"


@dataclass(frozen=True, slots=True)
class Place:
    """A new order. ``price_ticks`` is 0 for MARKET; ``layer`` is the ladder layer (-1: none).

    ``time_in_force`` is ``""`` for MARKET (Binance takes none).
    """

    client_order_id: str
    side: Side
    price_ticks: int
    qty_steps: int
    time_in_force: TimeInForce | str = TimeInForce.GTX
    reduce_only: bool = False
    order_type: OrderType = OrderType.LIMIT
    reason: OrderReason = OrderReason.LADDER
    layer: int = -1


@dataclass(frozen=True, slots=True)
class Amend:
    """A modify (PUT order): new price and new *total* quantity, as Binance's modify takes them."""

    client_order_id: str
    order_id: int | None
    side: Side
    price_ticks: int
    qty_steps: int
    layer: int = -1


@dataclass(frozen=True, slots=True)
class Cancel:
    """A cancel by exchange id when known, else by client order id."""

    client_order_id: str
    order_id: int | None
    reason: OrderReason = OrderReason.LADDER


Decision = Place | Amend | Cancel


@dataclass(frozen=True, slots=True)
class Batch:
    """Requests the runtime sends as one batch call of one :class:`BatchKind`."""

    kind: BatchKind
    items: tuple[Decision, ...]


def adds_exposure(side: Side, position_steps: int) -> bool:
    """A buy adds exposure unless short, a sell unless long."""
    return position_steps <= 0 if side == _SELL else position_steps >= 0


def _layer(d: Place | Amend) -> int:
    return d.layer


def make_batches(
    cancels: Sequence[Cancel], places: Sequence[Place], amends: Sequence[Amend], position_steps: int
) -> tuple[Batch, ...]:
    """Group into Binance-sized batches, exposure-reducing first.

    Order: cancels; reduce-only places; then amends and places that reduce exposure; then the
    ones that add it (inner layers before outer ones).
    """
    out: list[Batch] = []
    for i in range(0, len(cancels), CANCEL_BATCH_MAX):
        out.append(Batch(BatchKind.CANCEL, tuple(cancels[i : i + CANCEL_BATCH_MAX])))
    reducing_only = [p for p in places if p.reduce_only]
    for i in range(0, len(reducing_only), PLACE_BATCH_MAX):
        out.append(Batch(BatchKind.PLACE, tuple(reducing_only[i : i + PLACE_BATCH_MAX])))
    # Reducing amends and places first, then adding ones (inner layers first); each kind in its own batches.
    groups: tuple[list, list, list, list] = ([], [], [], [])  # reducing amends, reducing places, adding ...
    for a in amends:
        groups[2 if adds_exposure(a.side, position_steps) else 0].append(a)
    for p in places:
        if not p.reduce_only:
            groups[3 if adds_exposure(p.side, position_steps) else 1].append(p)
    kinds = (BatchKind.AMEND, BatchKind.PLACE, BatchKind.AMEND, BatchKind.PLACE)
    for kind, g in zip(kinds, groups):
        if not g:
            continue
        g.sort(key=_layer)
        size = AMEND_BATCH_MAX if kind == BatchKind.AMEND else PLACE_BATCH_MAX
        for i in range(0, len(g), size):
            out.append(Batch(kind, tuple(g[i : i + size])))
    return tuple(out)


# --- client order ids -------------------------------------------------------------------------


def symbol_short(symbol: str) -> str:
    return symbol[:_SYMBOL_SHORT]


class ClientOrderIds:
    """``mm-<SYMBOL>-e<epoch>-<seq>``: the agent's epoch in every id, so a new owner finds old orders."""

    def __init__(self, symbol: str, epoch: int, start_seq: int = 0) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        short = symbol_short(symbol)
        if not re.fullmatch(r"[A-Z0-9]{1,10}", short):
            raise ValueError(f"symbol {symbol!r} must be upper-case letters and digits")
        self.symbol = symbol
        self.epoch = epoch
        self.seq = start_seq
        self._prefix = f"mm-{short}-e{epoch}-"
        if len(self._prefix) + 1 > 36:
            raise ValueError(f"epoch {epoch} too large for a 36-character client order id")

    def next(self) -> str:
        self.seq += 1
        cid = self._prefix + str(self.seq)
        if len(cid) > 36:
            raise ValueError(f"client order id {cid!r} exceeds 36 characters")
        return cid

    def is_ours(self, cid: str) -> bool:
        """Issued under this epoch (by this owner)."""
        return cid.startswith(self._prefix)


def parse_client_order_id(cid: str) -> tuple[int, int] | None:
    """``(epoch, seq)`` of one of our ids, ``None`` for anything else (manual, liquidation, ...)."""
    m = _OUR_ID.fullmatch(cid)
    if m is None:
        return None
    return int(m.group(2)), int(m.group(3))


# --- the manager ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OrderDiff:
    """What it takes to turn the live ladder into the desired one (before the RiskGuard)."""

    cancels: tuple[Cancel, ...]
    amends: tuple[Amend, ...]
    places: tuple[Place, ...]
    kept: int

    @property
    def requests(self) -> int:
        return len(self.amends) + len(self.places)


class OrderManager:
    """Keeps live orders within tolerance of their target; amends the moved; places and cancels the rest.

    An order the exchange will not modify again (``amend_blocked``: an amend was refused with -5026)
    is cancelled and replaced instead of amended.

    Matching is a two-pointer walk per side, inner to outer, so a cycle costs O(layers).
    """

    def __init__(self, params: OrderParams, ids: ClientOrderIds, time_in_force: TimeInForce = TimeInForce.GTX) -> None:
        self._configure(params)
        self.ids = ids
        self.time_in_force = time_in_force

    def _configure(self, params: OrderParams) -> None:
        self.tol_ticks = params.tolerance_ticks
        self.tol_fraction = params.tolerance_spacing_fraction
        self.size_tol = params.size_tolerance

    def with_params(self, params: OrderParams) -> "OrderManager":
        """The manager under new tolerances: the same client order ids (their sequence goes on) and
        time in force."""
        new = copy.copy(self)
        new._configure(params)
        return new

    def tolerances(self, desired: Sequence, center_ticks: float) -> list[float]:
        """Per layer: max(tolerance_ticks, fraction x the gap to the inner neighbour (or center))."""
        out = []
        prev = center_ticks
        frac = self.tol_fraction
        floor = self.tol_ticks
        for q in desired:
            p = q.price_ticks
            t = abs(p - prev) * frac
            out.append(t if t > floor else floor)
            prev = p
        return out

    def diff(
        self,
        bids: Sequence,
        asks: Sequence,
        live_bids: Sequence,
        live_asks: Sequence,
        center_ticks: float,
        budget: int | None = None,
    ) -> OrderDiff:
        """``bids``/``asks``: desired quotes inner to outer; ``live_*``: open ladder orders, inner to outer.

        ``budget`` caps amends + places (inner layers win); cancels are never held back.
        """
        cancels: list[Cancel] = []
        amends: list[Amend] = []
        places: list[Place] = []
        kept = self._side(bids, live_bids, _BUY, -1, center_ticks, cancels, amends, places)
        kept += self._side(asks, live_asks, _SELL, 1, center_ticks, cancels, amends, places)
        if budget is not None and len(amends) + len(places) > budget:
            reqs: list[Amend | Place] = sorted([*amends, *places], key=lambda d: d.layer)[: max(budget, 0)]
            amends = [d for d in reqs if isinstance(d, Amend)]
            places = [d for d in reqs if isinstance(d, Place)]
        return OrderDiff(tuple(cancels), tuple(amends), tuple(places), kept)

    def _side(self, desired, live, side, sign, center_ticks, cancels, amends, places) -> int:
        """One side, inner to outer (``sign``: -1 for bids, 1 for asks); returns how many orders stay.

        Each desired layer is matched to a live order within its tolerance (:meth:`_match`); what is
        left is paired inner with inner (:meth:`_pair`); live orders left over are cancelled and
        desired layers left over placed, with the layers whose order may not be amended.
        """
        replace: list[int] = []  # desired layers whose order may not be amended: placed anew
        kept, free_d, free_l = self._match(desired, live, side, sign, center_ticks, cancels, amends, replace)
        if not (free_d or free_l or replace):
            return kept  # every layer matched: the usual cycle on a quiet book
        n_pair = min(len(free_d), len(free_l))
        kept += self._pair(desired, free_d, free_l, n_pair, side, cancels, amends, replace)
        for o in free_l[n_pair:]:
            if not o.busy:
                cancels.append(Cancel(o.client_order_id, o.order_id))
        if replace:
            replace.extend(free_d[n_pair:])
            replace.sort()
            self._place(desired, replace, side, places)
        else:
            self._place(desired, free_d[n_pair:], side, places)
        return kept

    def _match(self, desired, live, side, sign, center_ticks, cancels, amends, replace) -> tuple[int, list[int], list]:
        """The two-pointer walk: a live order within its layer's price tolerance is kept (its size
        within tolerance, or busy), amended to size, or cancelled to be replaced (``amend_blocked``).

        Returns the orders kept, and the desired layers (indices) and live orders left unmatched.
        """
        size_tol = self.size_tol
        frac = self.tol_fraction
        floor = self.tol_ticks
        nd, nl = len(desired), len(live)
        i = j = kept = 0
        free_d: list[int] = []
        free_l: list = []
        prev = center_ticks
        tol = 0.0
        tol_i = -1
        while i < nd and j < nl:
            d = desired[i]
            o = live[j]
            if tol_i != i:  # this layer's tolerance: a fraction of its gap to the inner neighbour
                p = d.price_ticks
                tol = (p - prev if p > prev else prev - p) * frac
                if tol < floor:
                    tol = floor
                prev = p
                tol_i = i
            diff = sign * (o.price_ticks - d.price_ticks)
            if -tol <= diff <= tol:
                want = d.qty_steps
                gap = o.orig_steps - o.filled_steps - want
                if -size_tol * want <= gap <= size_tol * want or o.busy:
                    kept += 1
                elif o.amend_blocked:  # the exchange will not modify it again (-5026): replace it
                    cancels.append(Cancel(o.client_order_id, o.order_id, OrderReason.MODIFY_LIMIT))
                    replace.append(i)
                else:
                    amends.append(Amend(o.client_order_id, o.order_id, side, d.price_ticks, o.filled_steps + want, d.layer))
                i += 1
                j += 1
            elif diff < 0:
                free_l.append(o)
                j += 1
            else:
                free_d.append(i)
                i += 1
        while i < nd:
            free_d.append(i)
            i += 1
        while j < nl:
            free_l.append(live[j])
            j += 1
        return kept, free_d, free_l

    def _pair(self, desired, free_d, free_l, n_pair, side, cancels, amends, replace) -> int:
        """Pair the first ``n_pair`` unmatched layers and orders, inner with inner: a moved order is
        amended, not cancelled and replaced. Returns the pairs left alone for a cycle (order busy)."""
        skipped = 0
        for k in range(n_pair):
            o = free_l[k]
            d = desired[free_d[k]]
            if o.busy:
                # In flight (new or amend not yet acknowledged): leave it and its slot for a cycle.
                skipped += 1
                continue
            if o.amend_blocked:
                cancels.append(Cancel(o.client_order_id, o.order_id, OrderReason.MODIFY_LIMIT))
                replace.append(free_d[k])
                continue
            amends.append(Amend(o.client_order_id, o.order_id, side, d.price_ticks, o.filled_steps + d.qty_steps, d.layer))
        return skipped

    def _place(self, desired, layers, side, places) -> None:
        """A new ladder order for each desired layer in ``layers`` (indices, inner to outer)."""
        tif = self.time_in_force
        limit, ladder = OrderType.LIMIT, OrderReason.LADDER
        ids = self.ids
        for idx in layers:
            d = desired[idx]
            places.append(Place(ids.next(), side, d.price_ticks, d.qty_steps, tif, False, limit, ladder, d.layer))
