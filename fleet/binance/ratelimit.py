"""The rate budget: spend an account's order counts and the IP's request weight before Binance does.

Two views are kept and both must allow a request:
- our own sliding windows, capped at ``share`` of each limit (several agents split one account);
- the exchange's count as last reported in ``X-MBX-*`` headers (which includes everybody else on
  the account/IP), plus what we spent since, capped at the full limit.
After a 429 every request waits out ``Retry-After``; after a 418 everything waits for the ban to end.
After a -1008 (Binance's system-level protection refusing new orders; reduce-only ones are exempt)
the quoting lane's orders wait ``THROTTLE_PAUSE_S``: the exchange is overloaded, and a quote sent again
at the next book tick would only be refused again.

Risk first: requests that reduce risk (cancels, amends that shrink an order or move it away from the
market, reduce-only orders, the dead-man heartbeat, look-ups of unknown outcomes) go in the ``risk``
lane, which may use the whole budget; everything else (quoting) sees only ``1 - reserve`` of each
limit, so a busy ladder can never hold back the request that takes risk off.
A sliding window is stricter than Binance's fixed windows, so staying inside it stays inside theirs.

The limits are Binance's defaults, or those the budget is built with, until the exchange lists its own
(``set_limits``: exchangeInfo's ``rateLimits``, the account's ``rateLimit/order``) or a 429 names a lower
one (its ceiling for ``NAMED_CEILING_S`` over a listing that did not move); a lower one is taken, never a
higher one than the budget was built with.

fundingRate and fundingInfo cost no weight but share a limit of their own, 500 requests per 5 minutes
per IP: a third window counts them (``Cost.funding_reads``, the same share), and a 429 on them, the IP's
weight not spent, holds only them.

The exchange's count lives in a fixed window aligned to its clock (the minute, the 10-second block):
it ends at the window's next boundary. A budget that knows the exchange's clock (the client learns
its offset from ``/fapi/v1/time``) waits for that boundary; one that does not waits a whole interval
from the report (up to 60 s instead of what is left of the minute).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .errors import BudgetExhaustedError
from .host_holds import HostHolds

log = logging.getLogger("fleet.binance.ratelimit")

# Past a window's boundary on the exchange's clock as we know it, its count is taken as gone only
# this much later: the error of the clock offset learned from /fapi/v1/time (half a round trip, and
# the drift since) stays well inside it.
BOUNDARY_MARGIN_S = 0.5
LOUD_WAIT_S = 1.0  # a request held longer than this for room is logged (reads wait; quoting does not)
THROTTLE_PAUSE_S = 1.0  # after a -1008 the quoting lane's orders wait this long (Binance sends no Retry-After)
THROTTLE_PAUSE_MAX_S = 8.0  # -1008s one after another double the wait up to this
THROTTLE_SHOWN_S = 5.0  # a -1008 is shown as a hold this long: the lane's short holds follow one another
# every hold ``RateBudget.holds`` may name (the status's exchange_holds, the gauge mm_exchange_hold)
HOLDS = ("rate_limited", "orders_limited", "throttled", "order_routes_failing", "funding_reads_limited",
         "order_budget_spent")
# a limit a 429 named holds this long over a listing that did not move (set_limits): a listing lagging behind
# costs a 429 every 2 minutes at most, and a limit lowered for seconds is not kept (for 15 minutes it held a
# fleet 15 minutes under a limit the exchange had raised again 7 s later, its dead-man countdowns running out)
NAMED_CEILING_S = 120.0


# The windows of Binance's ``rateLimits`` rows the budget keeps: (type, interval, intervalNum) -> name
_LISTED_WINDOWS = {("REQUEST_WEIGHT", "MINUTE", 1): "weight_1m", ("ORDERS", "SECOND", 10): "orders_10s",
                   ("ORDERS", "MINUTE", 1): "orders_1m"}


def listed_limits(rows: Any, *, weight: bool = True, orders: bool = True) -> dict[str, int]:
    """The limits an exchange answer lists (exchangeInfo's ``rateLimits``, ``rateLimit/order``), by the
    budget's window names; the weight's and the orders' as asked. Other windows, or malformed rows, left out."""
    found = {}
    for row in rows if isinstance(rows, list) else ():
        if not isinstance(row, dict) or type(row.get("limit")) is not int or row["limit"] < 1:
            continue
        window = _LISTED_WINDOWS.get((row.get("rateLimitType"), row.get("interval"), row.get("intervalNum")))
        if window is not None and (weight if window == "weight_1m" else orders):
            found[window] = row["limit"]
    return found


@dataclass(frozen=True, slots=True)
class Cost:
    """What one request spends: IP weight, and account order counts on each order window."""

    weight: int = 0
    orders_10s: int = 0
    orders_1m: int = 0
    funding_reads: int = 0   # fundingRate and fundingInfo's own limit, 500 per 5 minutes per IP

    def times(self, n: int) -> "Cost":
        """What ``n`` such requests spend together."""
        return Cost(self.weight * n, self.orders_10s * n, self.orders_1m * n, self.funding_reads * n)


@dataclass(frozen=True, slots=True)
class WindowUsage:
    """One window of the budget as the metrics show it."""

    used: int               # spent by this budget in its sliding window
    limit: int              # this budget's share of the limit (after the safety margin)
    exchange_used: int      # the exchange's last reported count plus what we spent since (0 once it rolled over)
    exchange_limit: int     # Binance's own limit for the window
    quoting_limit: int = 0  # the part of ``limit`` quoting may use (the rest is the risk lane's reserve)


class _Window:
    """A sliding window of charges over ``interval`` seconds."""

    __slots__ = ("interval", "limit", "_log", "_used", "total")

    def __init__(self, interval: float, limit: int) -> None:
        self.interval = interval
        self.limit = limit
        self._log: deque[tuple[float, int]] = deque()
        self._used = 0
        self.total = 0  # everything ever charged: the exchange's report is matched against it

    def _prune(self, now: float) -> None:
        edge = now - self.interval
        log = self._log
        while log and log[0][0] <= edge:
            self._used -= log.popleft()[1]

    def used(self, now: float) -> int:
        self._prune(now)
        return self._used

    def peek(self, now: float) -> int:
        """What the window holds at ``now``, without pruning it (safe from another thread's read)."""
        edge = now - self.interval
        return sum(charged for stamp, charged in tuple(self._log) if stamp > edge)

    def wait_for(self, amount: int, now: float, limit: int | None = None) -> float:
        """Seconds until ``amount`` fits under ``limit`` (default the window's own; 0 if it fits
        now, inf if it never can)."""
        limit = self.limit if limit is None else limit
        if amount <= 0:
            return 0.0
        if amount > limit:
            return math.inf
        self._prune(now)
        excess = self._used + amount - limit
        if excess <= 0:
            return 0.0
        freed = 0
        for stamp, charged in self._log:
            freed += charged
            if freed >= excess:
                return max(0.0, stamp + self.interval - now) + 1e-3
        return self.interval

    def charge(self, amount: int, now: float) -> None:
        if amount > 0:
            self._log.append((now, amount))
            self._used += amount
            self.total += amount


class _Reported:
    """The exchange's last reported count for one fixed window, when we saw it, and when its window ends."""

    __slots__ = ("interval", "limit", "count", "seen_at", "resets_at", "charged_at")

    def __init__(self, interval: float, limit: int) -> None:
        self.interval = interval
        self.limit = limit
        self.count = 0
        self.seen_at = -math.inf
        self.resets_at = -math.inf  # on our clock: the exchange's window holding ``count`` has ended
        self.charged_at = 0  # our window's total when the report arrived

    def estimate(self, local: _Window, now: float) -> int:
        if now >= self.resets_at:
            return 0  # the exchange's window has rolled over since
        return self.count + local.total - self.charged_at

    def observe(self, count: int, now: float, charged_at: int) -> None:
        self.count, self.seen_at, self.charged_at = count, now, charged_at
        self.resets_at = now + self.interval  # at the latest, whatever the window's alignment

    def align(self, now: float, server_ms: int) -> None:
        """The exchange's clock reads ``server_ms`` at ``now``: the count seen ends at the next boundary
        of its window at the latest. Never earlier than the truth: a count seen in an earlier window
        ended at an earlier boundary."""
        interval_ms = round(self.interval * 1000)
        to_boundary = (interval_ms - server_ms % interval_ms) / 1000.0
        self.resets_at = min(self.resets_at, now + to_boundary + BOUNDARY_MARGIN_S)


class _Says:
    """What a :class:`RateBudget` says of itself in words, for its agent's status and logs: the holds in
    force, and what holds a request back."""

    def holds(self: "RateBudget", now: float | None = None) -> list[str]:
        """The exchange's holds in force, for ``status()``: "rate_limited" (a 429 on the IP's weight or a
        418 ban: nothing goes out), "orders_limited" (an order-count 429: no new order goes out) and
        "throttled" (a -1008 in the last ``THROTTLE_SHOWN_S``: the quoting lane's orders wait),
        "order_routes_failing" (a quoting order's route failed: the quoting lane's orders wait),
        "funding_reads_limited" (a 429 on fundingRate and fundingInfo's own limit: they wait) and, none of
        these holding the quoting lane's orders, "order_budget_spent" (its own order counts leave it no
        room now: an agent that says "quoting" with nothing going out says why)."""
        now = self._clock() if now is None else now
        held = []
        if now < self._ip_blocked_until(now):
            held.append("rate_limited")
        if now < self._orders_blocked_until:
            held.append("orders_limited")
        if now < self._funding_until(now):
            held.append("funding_reads_limited")
        if now < self._throttled_at + THROTTLE_SHOWN_S or (now < self._quotes_blocked_until and not self._failing_hold):
            held.append("throttled")
        if now < self._quotes_blocked_until and self._failing_hold:
            held.append("order_routes_failing")
        lane = self._lane_limit   # (peek: the status may be read from another thread; an estimate changes nothing)
        if not {"rate_limited", "orders_limited", "throttled", "order_routes_failing"} & set(held) and any(
                window.peek(now) >= lane(window.limit, False)
                or reported.estimate(window, now) >= lane(reported.limit, False)
                for window, reported in ((self._orders_10s, self._rep_10s), (self._orders_1m, self._rep_1m))):
            held.append("order_budget_spent")
        return held

    def why_wait(self: "RateBudget", cost: Cost, now: float | None = None, *, risk: bool = False) -> str:
        """In words, what holds ``cost`` back now (the longest of the waits :meth:`wait_time` takes)."""
        now = self._clock() if now is None else now
        lim = self._lane_limit
        reasons: list[tuple[float, str]] = []
        if self._blocked_until > now:
            reasons.append((self._blocked_until - now, "a 429 or 418 pause of the exchange"))
        elif self._ip_blocked_until(now) > now:
            host = self.host
            reasons.append((self._ip_blocked_until(now) - now,
                            f"the IP's hold another process of this host was told of ({host.what if host else ''})"))
        if (cost.orders_10s > 0 or cost.orders_1m > 0) and self._orders_blocked_until > now:
            reasons.append((self._orders_blocked_until - now, "an order-count 429 pause of the exchange"))
        if (cost.orders_10s > 0 or cost.orders_1m > 0) and not risk and self._quotes_blocked_until > now:
            reasons.append((self._quotes_blocked_until - now,
                            "the exchange failing its order routes (a 5xx, -1001 or no answer)" if self._failing_hold
                            else "the exchange's system-level protection (-1008)"))
        if cost.funding_reads > 0:
            if self._funding_until(now) > now:
                reasons.append((self._funding_until(now) - now, "a 429 of fundingRate and fundingInfo's limit"))
            own = self._funding.wait_for(cost.funding_reads, now)
            if own > 0:
                reasons.append((own, f"this budget's share of fundingRate and fundingInfo's 5 minutes: "
                                     f"{self._funding.used(now)} + {cost.funding_reads} above {self._funding.limit}"))
        for name, window, reported, amount in (
            ("IP weight a minute", self._weight, self._rep_weight, cost.weight),
            ("account orders in 10 s", self._orders_10s, self._rep_10s, cost.orders_10s),
            ("account orders a minute", self._orders_1m, self._rep_1m, cost.orders_1m),
        ):
            if amount <= 0:
                continue
            own = window.wait_for(amount, now, lim(window.limit, risk))
            if own > 0:
                reasons.append((own, f"this budget's share of the {name}: {window.used(now)} + {amount} "
                                     f"above {lim(window.limit, risk)}"))
            est, rep_limit = reported.estimate(window, now), lim(reported.limit, risk)
            if est + amount > rep_limit:
                reasons.append((reported.resets_at - now, f"the {name} as the exchange counts it: {est} + "
                                                          f"{amount} above {rep_limit} until its window ends"))
        if cost.weight <= 0 and self._ip_weight_spent(now):
            ip_weight = self._rep_weight.estimate(self._weight, now)
            reasons.append((self._rep_weight.resets_at - now, f"the IP's minute of weight spent as the exchange "
                                                              f"counts it ({ip_weight} of {self._full[0]})"))
        if not reasons:
            return "nothing"
        left, what = max(reasons)
        return f"{what} (room in {left:.1f} s)"


class RateBudget(_Says):
    """Per-account order counts and per-IP request weight, shared out by ``share``.

    ``clock`` returns seconds (monotonic); injectable for tests.
    """

    def __init__(
        self,
        share: float = 1.0,
        weight_per_min: int = 2400,
        orders_per_10s: int = 300,
        orders_per_min: int = 1200,
        funding_reads_per_5min: int = 500,
        clock: Callable[[], float] = time.monotonic,
        safety: float = 0.95,
        reserve: float = 0.25,
        exchange_counts: bool = True,
    ) -> None:
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], got {share}")
        if not 0 < safety <= 1:
            raise ValueError(f"safety must be in (0, 1], got {safety}")
        if not 0 <= reserve < 1:
            raise ValueError(f"reserve must be in [0, 1), got {reserve}")
        self.reserve = reserve  # the share of every limit only the risk lane may use
        self.exchange_counts = exchange_counts  # False: only its own windows count (the headers are not read)
        self._clock = clock
        self._full = (int(weight_per_min), int(orders_per_10s), int(orders_per_min))
        self._built = self._full   # the most it takes, whatever the exchange lists (set_limits)
        self._listed: list[int | None] = [None, None, None]   # the exchange's last listing, per window
        self._ceilings: list[tuple[int, float] | None] = [None, None, None]   # a 429's named limit, until when
        self._funding_full = int(funding_reads_per_5min)
        self._funding = _Window(300.0, 1)   # this budget's own count only: no header reports the IP's
        self._funding_blocked_until = -math.inf   # fundingRate and fundingInfo only (a 429 on their limit)
        self._safety = safety
        self._weight = _Window(60.0, 1)
        self._orders_10s = _Window(10.0, 1)
        self._orders_1m = _Window(60.0, 1)
        self._rep_weight = _Reported(60.0, 1)
        self._rep_10s = _Reported(10.0, 1)
        self._rep_1m = _Reported(60.0, 1)
        self._blocked_until = -math.inf  # every request (IP weight 429, or a 418 ban)
        self._banned_until = -math.inf   # a 418 ban of the IP (part of the above)
        self._orders_blocked_until = -math.inf  # new orders only (account order-count 429, -1015)
        self._quotes_blocked_until = -math.inf  # the quoting lane's orders only (-1008, system protection)
        self._failing_hold = False   # the last hold of the quoting lane was a failing order route's, not a -1008
        self._failing_pause = 0.0
        self.throttled = 0  # -1008s seen
        self._throttled_at = -math.inf
        self._throttle_pause = 0.0  # the last -1008's wait
        self.share = share
        self.set_share(share)
        self.rate_limited = 0  # 429s seen
        self.banned = 0  # 418s seen (the IP banned: nothing goes out, cancels and heartbeats included)
        self.refused = 0  # requests refused locally (wait=False)
        self.waiting: dict[int, str] = {}  # requests held longer than LOUD_WAIT_S, now: what for
        self._waits = 0
        self.host: HostHolds | None = None  # the IP's holds this host's processes share (share_host_holds)
        self.funding_host: HostHolds | None = None   # and those of fundingRate and fundingInfo's own limit

    # -- configuration -------------------------------------------------------------------------

    def set_share(self, share: float) -> None:
        """Give this budget a new fraction of the account's limits (the fleet re-splits them)."""
        if not 0 < share <= 1:
            raise ValueError(f"share must be in (0, 1], got {share}")
        self.share = share
        weight, o10, o1m = self._full
        cap = self._safety
        self._weight.limit = max(1, math.floor(weight * share * cap))
        self._orders_10s.limit = max(1, math.floor(o10 * share * cap))
        self._orders_1m.limit = max(1, math.floor(o1m * share * cap))
        self._funding.limit = max(1, math.floor(self._funding_full * share * cap))
        self._rep_weight.limit = max(1, math.floor(weight * cap))
        self._rep_10s.limit = max(1, math.floor(o10 * cap))
        self._rep_1m.limit = max(1, math.floor(o1m * cap))

    def set_limits(self, weight_per_min: int | None = None, orders_per_10s: int | None = None,
                   orders_per_min: int | None = None, *, named: bool = False) -> list[str]:
        """The exchange's own limits (None: not given, kept), as it lists them (exchangeInfo's
        ``rateLimits``, the account's ``rateLimit/order``) or as a 429 ``named`` them: the budget's share
        and reserve are taken of them, never of more than it was built with, from now on (a limit Binance
        lowered, or an account's own, would otherwise be met by 429s, and kept up, an IP ban). A named one
        only ever lowers a limit, and stays its ceiling ``NAMED_CEILING_S`` unless the listing moves
        meanwhile (a listing that lags the 429 would raise it again a minute on, into the next 429).
        Returns what changed, as "orders_10s 300 -> 100"."""
        now = self._clock()
        new = list(self._full)
        for i, value in enumerate((weight_per_min, orders_per_10s, orders_per_min)):
            if value is None or value < 1:
                continue
            if named:
                if value <= new[i]:   # (named again: the ceiling lasts from now)
                    new[i] = value
                    self._ceilings[i] = (value, now + NAMED_CEILING_S)
                continue
            if value != self._listed[i]:
                self._ceilings[i] = None if self._listed[i] is not None else self._ceilings[i]
                self._listed[i] = value
            ceiling = self._ceilings[i]
            held = ceiling[0] if ceiling is not None and now < ceiling[1] else math.inf
            new[i] = int(min(value, self._built[i], held))
        changed = [f"{name} {old} -> {value}" for name, old, value in
                   zip(("weight_1m", "orders_10s", "orders_1m"), self._full, new) if old != value]
        if changed:
            self._full = tuple(new)   # type: ignore[assignment]
            self.set_share(self.share)
        return changed

    def relisted_orders(self) -> None:
        """The order limits are listed by another source from now on (the account's own, rather than
        exchangeInfo's for every account): its first listing is no move of the last (set_limits)."""
        self._listed[1] = self._listed[2] = None

    @property
    def lowered(self) -> frozenset[str]:
        """The windows whose limit is below the one it was built with (``set_limits``): it may come back."""
        return frozenset(name for name, now, built in zip(("weight_1m", "orders_10s", "orders_1m"), self._full,
                                                          self._built) if now < built)

    def share_host_holds(self, host: HostHolds, funding: HostHolds | None = None) -> None:
        """Share the IP's holds (a 429's, a ban's, a minute of weight spent) with this host's other
        processes that talk to the same exchange (fleet/binance/host_holds.py), and ``funding``'s (a 429
        on fundingRate and fundingInfo's own limit). A budget on the wall's clock only: a simulated run's
        time is its own."""
        self.host = host
        self.funding_host = funding

    def _funding_until(self, now: float) -> float:
        """Until when fundingRate and fundingInfo wait: this budget's own 429 on their limit, or the host's."""
        left = self.funding_host.left() if self.funding_host is not None else 0.0
        return max(self._funding_blocked_until, now + left) if left > 0 else self._funding_blocked_until

    def _ip_blocked_until(self, now: float) -> float:
        """Until when every request waits: this budget's own 429 or ban pause, or the host's."""
        host = self.host
        if host is None:
            return self._blocked_until
        left = host.left()
        return max(self._blocked_until, now + left) if left > 0 else self._blocked_until

    def _take_host_limit(self) -> None:
        """The IP's weight limit a 429 of the host's hold named, taken (each process took a 429 of its own
        to learn it). On the spending path only: the metrics scrape's thread reads, never sets."""
        host = self.host
        limit = host.weight_limit if host is not None else None
        if limit is not None and limit < self._full[0] and host.left() > 0:   # type: ignore[union-attr]
            changed = self.set_limits(limit, named=True)
            log.warning("another process of this host was told the IP's limit: the rate budget follows it (%s)",
                        ", ".join(changed))

    def _share_hold(self, seconds: float, what: str, weight_limit: int | None = None) -> None:
        if self.host is not None:
            self.host.hold(seconds, what, weight_limit)

    @property
    def limits(self) -> dict[str, int]:
        return {
            "weight_1m": self._weight.limit,
            "orders_10s": self._orders_10s.limit,
            "orders_1m": self._orders_1m.limit,
            "funding_reads_5m": self._funding.limit,
        }

    # -- queries -------------------------------------------------------------------------------

    def usage(self, now: float | None = None) -> dict[str, WindowUsage]:
        """Read-only, per window (``weight_1m``, ``orders_10s``, ``orders_1m``): what this budget spent
        in its sliding window against its share's limit, and the exchange's count (as last reported,
        plus what we spent since; everybody on the account or IP) against Binance's limit. Changes
        nothing, so the metrics scrape may call it from another thread."""
        now = self._clock() if now is None else now
        weight, o10, o1m = self._full
        out = {}
        for name, window, reported, full in (
            ("weight_1m", self._weight, self._rep_weight, weight),
            ("orders_10s", self._orders_10s, self._rep_10s, o10),
            ("orders_1m", self._orders_1m, self._rep_1m, o1m),
        ):
            used = window.peek(now)
            # the exchange counts ours too: never less than what this budget spent
            out[name] = WindowUsage(used, window.limit, max(used, reported.estimate(window, now)), full,
                                    self._lane_limit(window.limit, False))
        return out

    def _lane_limit(self, limit: int, risk: bool) -> int:
        """The part of ``limit`` a lane may use: all of it for risk, less the reserve for quoting."""
        return limit if risk else max(1, math.floor(limit * (1.0 - self.reserve)))

    def ip_weight_spent(self, now: float | None = None) -> bool:
        """Whether the IP's minute of weight is beyond Binance's limit as the exchange last reported it."""
        return self._ip_weight_spent(self._clock() if now is None else now)

    def _spent_as_listed(self, now: float) -> bool:
        """The IP's minute spent beyond the limit the exchange lists too (or none listed yet): a limit only a
        429 named, which the listing no longer shows, holds this process, not the host's others (it held
        every agent of a host minutes after the exchange had raised it again)."""
        listed = self._listed[0]
        return listed is None or self._rep_weight.estimate(self._weight, now) > listed

    def _ip_weight_spent(self, now: float) -> bool:
        """The IP's minute of weight beyond Binance's limit as the exchange reported it: a weight-0 request
        (an order) gets the 429 too."""
        return self._rep_weight.estimate(self._weight, now) > self._full[0]

    def orders_available(self, now: float | None = None, *, risk: bool = False) -> int:
        """How many single orders (of the quoting lane, unless ``risk``) could be sent right now."""
        now = self._clock() if now is None else now
        if now < max(self._ip_blocked_until(now), self._orders_blocked_until) or self._ip_weight_spent(now):
            return 0
        if not risk and now < self._quotes_blocked_until:
            return 0
        lim = self._lane_limit
        local = min(
            lim(self._orders_10s.limit, risk) - self._orders_10s.used(now),
            lim(self._orders_1m.limit, risk) - self._orders_1m.used(now),
        )
        reported = min(
            lim(self._rep_10s.limit, risk) - self._rep_10s.estimate(self._orders_10s, now),
            lim(self._rep_1m.limit, risk) - self._rep_1m.estimate(self._orders_1m, now),
        )
        return max(0, min(local, reported))

    def room(self, now: float | None = None, *, risk: bool = False) -> dict[str, float]:
        """Per window (``weight_1m``, ``orders_10s``, ``orders_1m``), the share of its lane limit still
        free, the smaller of our view and the exchange's report (below 0 when over)."""
        now = self._clock() if now is None else now
        lim = self._lane_limit
        out = {}
        for name, window, reported in (
            ("weight_1m", self._weight, self._rep_weight),
            ("orders_10s", self._orders_10s, self._rep_10s),
            ("orders_1m", self._orders_1m, self._rep_1m),
        ):
            own, theirs = lim(window.limit, risk), lim(reported.limit, risk)
            out[name] = min((own - window.used(now)) / own, (theirs - reported.estimate(window, now)) / theirs)
        return out

    def blocked_for(self, now: float | None = None) -> float:
        """Seconds left of a Retry-After / ban pause (0 when none)."""
        now = self._clock() if now is None else now
        return max(0.0, self._ip_blocked_until(now) - now)

    def wait_time(self, cost: Cost, now: float | None = None, *, risk: bool = False) -> float:
        """Seconds until ``cost`` fits every limit of its lane (0 = now; inf = never)."""
        now = self._clock() if now is None else now
        lim = self._lane_limit
        wait = max(0.0, self._ip_blocked_until(now) - now)
        if cost.orders_10s > 0 or cost.orders_1m > 0:
            wait = max(wait, self._orders_blocked_until - now)
            if not risk:
                wait = max(wait, self._quotes_blocked_until - now)
        if cost.funding_reads > 0:   # (the reserve is the risk lane's: no funding read takes risk off)
            wait = max(wait, self._funding_until(now) - now,
                       self._funding.wait_for(cost.funding_reads, now))
        pairs = (
            (self._weight, self._rep_weight, cost.weight),
            (self._orders_10s, self._rep_10s, cost.orders_10s),
            (self._orders_1m, self._rep_1m, cost.orders_1m),
        )
        for window, reported, amount in pairs:
            if amount <= 0:
                continue
            wait = max(wait, window.wait_for(amount, now, lim(window.limit, risk)))
            est = reported.estimate(window, now)
            rep_limit = lim(reported.limit, risk)
            if amount > rep_limit:
                return math.inf
            if est + amount > rep_limit:
                wait = max(wait, reported.resets_at - now + 1e-3)
        if cost.weight <= 0 and self._ip_weight_spent(now):
            # the IP's minute of weight spent (as reported): a weight-0 order still gets the 429 the
            # weight's requests would (each agent that sent one took its own; ten together, the IP's ban)
            wait = max(wait, self._rep_weight.resets_at - now + 1e-3)
        return wait

    # -- spending ------------------------------------------------------------------------------

    def try_charge(self, cost: Cost, now: float | None = None, *, risk: bool = False) -> float:
        """Charge ``cost`` if it fits now and return 0; otherwise charge nothing and return the wait."""
        now = self._clock() if now is None else now
        self._take_host_limit()
        wait = self.wait_time(cost, now, risk=risk)
        if wait > 0:
            return wait
        self._weight.charge(cost.weight, now)
        self._orders_10s.charge(cost.orders_10s, now)
        self._orders_1m.charge(cost.orders_1m, now)
        self._funding.charge(cost.funding_reads, now)
        return 0.0

    async def acquire(self, cost: Cost, *, wait: bool = True, max_wait: float = 120.0, risk: bool = False) -> None:
        """Spend ``cost`` in its lane, waiting for room if ``wait``; else raise :class:`BudgetExhaustedError`."""
        waited = 0.0
        while True:
            delay = self.try_charge(cost, risk=risk)
            if delay == 0:
                return
            if not wait or math.isinf(delay) or waited + delay > max_wait:
                self.refused += 1
                raise BudgetExhaustedError(
                    f"rate budget exhausted for {cost} (share {self.share}, limits {self.limits}); "
                    f"room in {delay:.3f}s",
                    wait_s=delay,
                )
            if delay >= LOUD_WAIT_S:
                why = self.why_wait(cost, risk=risk)
                log.warning("a request waits %.1f s for the rate budget: %s", delay, why)
                self._waits += 1
                key = self._waits
                self.waiting[key] = why
                try:
                    await asyncio.sleep(delay)
                finally:
                    del self.waiting[key]
            else:
                await asyncio.sleep(delay)
            waited += delay

    # -- corrections from the exchange ---------------------------------------------------------

    def observe_headers(self, headers: Mapping[str, str], now: float | None = None, *,
                        server_ms: int | None = None) -> None:
        """Take the exchange's counts from ``X-MBX-USED-WEIGHT-1M`` / ``X-MBX-ORDER-COUNT-*``; with
        ``server_ms``, the exchange's clock as the answer arrived (see :meth:`note_server_time`)."""
        if not self.exchange_counts:
            return
        now = self._clock() if now is None else now
        for name, reported, window in (
            ("X-MBX-USED-WEIGHT-1M", self._rep_weight, self._weight),
            ("X-MBX-ORDER-COUNT-10S", self._rep_10s, self._orders_10s),
            ("X-MBX-ORDER-COUNT-1M", self._rep_1m, self._orders_1m),
        ):
            raw = headers.get(name)
            if raw is None:
                raw = headers.get(name.lower())
            if raw is None:
                continue
            try:
                count = int(raw)
            except ValueError:
                continue
            reported.observe(count, now, window.total)
        if server_ms is not None:
            self.note_server_time(server_ms, now)
        if self.host is not None and self._ip_weight_spent(now) and self._spent_as_listed(now):
            self.host.hold(self._rep_weight.resets_at - now, "weight spent")   # every request of the IP: a 429

    def note_server_time(self, server_ms: int, now: float | None = None) -> None:
        """The exchange's clock reads ``server_ms`` at ``now``: every count it reported ends at its
        window's next boundary at the latest."""
        now = self._clock() if now is None else now
        for reported in (self._rep_weight, self._rep_10s, self._rep_1m):
            reported.align(now, server_ms)

    def note_retry_after(self, seconds: float, now: float | None = None, *, orders_only: bool = False,
                         funding_only: bool = False, weight_limit: int | None = None) -> None:
        """After a 429: nothing goes out until ``seconds`` have passed.

        ``orders_only`` (an account order-count 429, -1015) pauses new orders and amendments only,
        so cancels, which cost no order count, can still go out. ``funding_only`` (fundingRate or
        fundingInfo refused while the IP's weight is not spent: their own limit) pauses only them.
        ``weight_limit``: the IP's limit the 429 named, shared with the hold (the host's other processes
        take it).
        """
        now = self._clock() if now is None else now
        self.rate_limited += 1
        until = now + max(0.0, seconds)
        if orders_only:
            self._orders_blocked_until = max(self._orders_blocked_until, until)
        elif funding_only:
            self._funding_blocked_until = max(self._funding_blocked_until, until)
            if self.funding_host is not None:
                self.funding_host.hold(seconds, "429 on fundingRate and fundingInfo's limit")
        else:
            self._blocked_until = max(self._blocked_until, until)
            self._share_hold(seconds, "429", weight_limit)

    def note_throttled(self, seconds: float = THROTTLE_PAUSE_S, now: float | None = None,
                       failing: bool = False) -> float:
        """After a -1008: the quoting lane's orders wait ``seconds``, twice the last wait when the last
        -1008 came within ``THROTTLE_SHOWN_S`` of its end (Binance: "retry with backoff"; up to
        ``THROTTLE_PAUSE_MAX_S``); the risk lane (reduce-only orders, which the exchange exempts, cancels,
        amends away from the market) goes on. ``failing``: the same hold after a quoting order's route
        failed (a 5xx, -1001 or no answer: every quote cycle sent its orders again, four a second through
        an outage, until the rate budget ran out), not counted as a -1008, its doubling undone by an order
        route's answer (``note_orders_answered``: a flaky route's scattered failures do not add up). The
        hold's length."""
        now = self._clock() if now is None else now
        self._failing_hold = failing
        if failing:
            self._failing_pause = self._next_pause(seconds, now, self._failing_pause)
            self._quotes_blocked_until = max(self._quotes_blocked_until, now + self._failing_pause)
            return self._failing_pause
        self._throttle_pause = self._next_pause(seconds, now, self._throttle_pause)
        self.throttled += 1
        self._throttled_at = now
        self._quotes_blocked_until = max(self._quotes_blocked_until, now + self._throttle_pause)
        return self._throttle_pause

    def note_orders_answered(self) -> None:
        """An order route answered: the next failure's hold starts again at its shortest."""
        self._failing_pause = 0.0

    def _next_pause(self, seconds: float, now: float, last: float) -> float:
        """The quoting lane's next hold: ``seconds``, or ``last`` during a hold (an answer to a request sent
        before it: the same overload), or twice ``last`` shortly after one, up to ``THROTTLE_PAUSE_MAX_S``."""
        if now < self._quotes_blocked_until:
            seconds = max(seconds, last)
        elif now - self._quotes_blocked_until < THROTTLE_SHOWN_S and last > 0:
            seconds = max(seconds, min(THROTTLE_PAUSE_MAX_S, 2 * last))
        return max(0.0, seconds)

    @property
    def throttle_pause(self) -> float:
        """The last -1008's wait (s)."""
        return self._throttle_pause

    def note_banned(self, seconds: float, now: float | None = None) -> None:
        """After a 418: nothing goes out until the ban ends."""
        now = self._clock() if now is None else now
        self.banned += 1
        self._blocked_until = max(self._blocked_until, now + max(0.0, seconds))
        self._banned_until = max(self._banned_until, now + max(0.0, seconds))
        self._share_hold(seconds, "418 ban")

    def ban_left(self, now: float | None = None) -> float:
        """Seconds left of a 418 ban of the IP, this budget's own or one another process of the host was told
        of (0: none). A request waits it out in :meth:`acquire` (up to ``max_wait``); a kill must not."""
        now = self._clock() if now is None else now
        shared = self.host.left() if self.host is not None else 0.0   # (read first: it reads ``what`` too)
        if shared > 0 and not self.host.what.startswith("418"):   # type: ignore[union-attr]
            shared = 0.0
        return max(0.0, self._banned_until - now, shared)
