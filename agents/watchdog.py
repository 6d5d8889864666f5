"""The watchdog's decisions: what the runtime's clock says must happen now, as a list of actions.

Pure: :func:`watch` takes what the runtime knows (``Seen``, times on its monotonic clock) and the
timing parameters, and returns the actions; the runtime carries each one out (and updates the times
it keeps, e.g. a swapped stream's opening time). It is asked every ``WATCHDOG_S``.

Rules, checked in this order:

1. lease: lapsed while not blocked by it -> ``LEASE_LAPSED`` (block quoting); still lapsed
   ``lease_pull_sec`` after that, its quotes not yet pulled -> ``LEASE_PULL`` (cancel this epoch's
   orders: quotes nobody re-prices must not wait for the dead-man countdown; a successor's are never
   touched); valid again while blocked by it, ownership not lost and no re-arm under way -> ``REARM``
   (re-arm the dead-man switch, then unblock: the countdown may have fired meanwhile);
2. market: connected but silent (no book, nor a new connection) for 3x ``market_stale_sec`` ->
   ``SWAP_MARKET`` (a half-dead connection: a fresh one costs nothing); the same when no mark price
   came for 3x ``market_stale_sec`` while books do (the book and the marks come on two connections,
   ``/public`` and ``/market``: one route can fall silent alone); no book for
   ``market_stale_sec`` (since the last book, or since the connection opened if none came yet) while
   connected and not yet blocked -> ``MARKET_STALE`` (block, pull quotes);
   a book again while blocked -> ``MARKET_FRESH``;
3. user stream lost for ``user_stream_grace_sec`` -> ``REST_FALLBACK`` (cancel through REST);
4. a stream open longer than ``stream_max_lifetime_sec`` (the exchange cuts at 24 h) ->
   ``SWAP_USER`` / ``SWAP_MARKET`` (planned, without a gap);
5. dead-man switch: its countdown run out (no heartbeat taken for ``deadman_countdown_ms``: a ban, a
   refused or lost ``countdownCancelAll``) while the lease holds and it does not block yet ->
   ``DEADMAN_EXPIRED`` (block, pull quotes: the exchange has cancelled, or is about to cancel, every
   order, and an order placed after that rests with no switch armed); a heartbeat taken unblocks.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Act(StrEnum):
    LEASE_LAPSED = "lease_lapsed"
    LEASE_PULL = "lease_pull"
    REARM = "rearm"
    SWAP_MARKET = "swap_market"
    MARKET_STALE = "market_stale"
    MARKET_FRESH = "market_fresh"
    REST_FALLBACK = "rest_fallback"
    SWAP_USER = "swap_user"
    DEADMAN_EXPIRED = "deadman_expired"


@dataclass(frozen=True, slots=True)
class Timing:
    market_stale_sec: float
    user_stream_grace_sec: float
    stream_max_lifetime_sec: float
    lease_pull_sec: float


@dataclass(frozen=True, slots=True)
class Seen:
    """What the runtime knows at ``now`` (seconds, monotonic)."""

    now: float
    lease_ok: bool
    lease_blocked: bool
    ownership_lost: bool
    rearming: bool
    last_book: float | None  # when the last book frame was read (None: never)
    market_opened: float  # when the current market connection opened
    market_connected: bool
    market_stale_blocked: bool
    user_lost_at: float | None  # when the user stream was lost (None: it is up, or the fallback ran)
    user_opened: float
    user_connected: bool
    last_mark: float | None = None  # when the last mark price was read (None: never)
    lease_lapsed_at: float | None = None  # when quoting was blocked by the lease, lapsed or lost (None: it holds)
    lease_pulled: bool = False  # this lapse's quotes already pulled
    deadman_left: float | None = None  # seconds the exchange's countdown has left at least (None: not armed yet)
    deadman_blocked: bool = False


def watch(s: Seen, t: Timing) -> list[Act]:
    """The actions due now (rules in the module docstring)."""
    out: list[Act] = []
    if not s.lease_ok and not s.lease_blocked:
        out.append(Act.LEASE_LAPSED)
    elif (not s.lease_ok and s.lease_blocked and not s.lease_pulled and s.lease_lapsed_at is not None
          and s.now - s.lease_lapsed_at >= t.lease_pull_sec):
        out.append(Act.LEASE_PULL)
    elif s.lease_ok and s.lease_blocked and not s.ownership_lost and not s.rearming:
        out.append(Act.REARM)
    silent = s.now - max(s.last_book or 0.0, s.market_opened)
    # no book yet: the connection has market_stale_sec from its opening to deliver the first one
    stale = s.now - (s.last_book if s.last_book is not None else s.market_opened) > t.market_stale_sec
    marks_silent = s.now - max(s.last_mark or 0.0, s.market_opened)
    swap_market = s.market_connected and max(silent, marks_silent) > 3 * t.market_stale_sec
    if swap_market:
        out.append(Act.SWAP_MARKET)
    if stale and s.market_connected and not s.market_stale_blocked:
        out.append(Act.MARKET_STALE)
    elif not stale and s.market_stale_blocked:
        out.append(Act.MARKET_FRESH)
    if s.user_lost_at is not None and s.now - s.user_lost_at >= t.user_stream_grace_sec:
        out.append(Act.REST_FALLBACK)
    if s.user_connected and s.now - s.user_opened > t.stream_max_lifetime_sec:
        out.append(Act.SWAP_USER)
    if not swap_market and s.market_connected and s.now - s.market_opened > t.stream_max_lifetime_sec:
        out.append(Act.SWAP_MARKET)
    if s.lease_ok and s.deadman_left is not None and s.deadman_left <= 0 and not s.deadman_blocked:
        out.append(Act.DEADMAN_EXPIRED)
    return out
