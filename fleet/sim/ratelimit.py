"""Binance's request-weight and order-count limits, with 429 then growing 418 bans; pure, clocked by the caller.

An IP over its weight gets 429s; one that keeps sending after ``ban_after_429s`` of them in a minute is
banned (418, "banned until" a fixed time); requests during a ban get the same 418 and do not lengthen
it (a client with requests in flight would otherwise be locked out for days); each later ban of the
IP lasts twice the last ("scale in duration for repeat offenders, from 2 minutes to 3 days").
fundingRate and fundingInfo share a limit of their own (500 requests per 5 minutes per IP, no weight), and
so do the trading statistics of ``/futures/data`` (1,000): past either, the same 429s, counted towards the
same ban.

Windows are fixed and aligned (the minute, the 10-second block), as the exchange counts them, so the
X-MBX-USED-WEIGHT-1M header a client sees is the number the next request is judged against.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fleet.sim.config import RateLimits
from fleet.sim.engine import SimApiError

FUNDING_WINDOW_MS = 300_000   # fundingRate and fundingInfo's own limit counts in 5-minute blocks


def too_many_requests(ip: str, weight_per_minute: int) -> str:
    """Binance's -1003 message, the IP and its minute's limit named."""
    return (f"Too many requests; current limit of IP({ip}) is {weight_per_minute} requests per minute. Please "
            "use the websocket for live updates to avoid polling the API.")


@dataclass
class _Window:
    start: int = 0
    used: int = 0
    peak: int = 0   # the most any window held (a look each second misses a window's last second)

    def count(self, now_ms: int, length_ms: int, n: int) -> int:
        start = now_ms - now_ms % length_ms
        if start != self.start:
            self.start = start
            self.used = 0
        self.used += n
        if self.used > self.peak:
            self.peak = self.used
        return self.used

    def peek(self, now_ms: int, length_ms: int) -> int:
        return self.used if now_ms - now_ms % length_ms == self.start else 0


@dataclass
class _IpState:
    weight: _Window = field(default_factory=_Window)
    funding: _Window = field(default_factory=_Window)   # fundingRate and fundingInfo, 5-minute blocks
    stats: _Window = field(default_factory=_Window)     # the /futures/data statistics, 5-minute blocks
    banned_until: int = 0
    bans: int = 0
    throttled_window: int = -1  # the minute in which this IP got its last 429
    throttled: int = 0          # how many 429s it got in that minute


@dataclass
class _AccountState:
    ten_s: _Window = field(default_factory=_Window)
    minute: _Window = field(default_factory=_Window)


class RateLimiter:
    """Counts weight per IP and orders per account; raises :class:`SimApiError` with 429/418."""

    def __init__(self, limits: RateLimits, own_orders: dict[str, tuple[int | None, int | None]] | None = None) -> None:
        self.limits = limits   # replaced whole by ``change`` (POST /sim/limits): the exchange changed its limits
        self._own_orders = dict(own_orders or {})   # account -> its own (10-second, minute) order limits, if any
        self._ips: dict[str, _IpState] = {}
        self._accounts: dict[str, _AccountState] = {}

    def order_limits(self, account: str | None) -> tuple[int, int]:
        """The account's order limits (10 seconds, minute): its own where it has one, else the exchange's."""
        lim = self.limits
        o10, o1m = self._own_orders.get(account or "", (None, None))
        return (o10 or lim.orders_per_10s), (o1m or lim.orders_per_minute)

    def change(self, account: str | None = None, **limits: int) -> None:
        """New limits from now on (counts kept): the IP weight and the order limits, or ``account``'s own
        order limits (``orders_per_10s``, ``orders_per_minute``)."""
        if account is None:
            self.limits = self.limits.model_copy(update=limits)
            return
        o10, o1m = self._own_orders.get(account, (None, None))
        self._own_orders[account] = (limits.get("orders_per_10s", o10), limits.get("orders_per_minute", o1m))

    def drop_own(self, account: str) -> None:
        """``account`` is held to the exchange's order limits again."""
        self._own_orders.pop(account, None)

    def used_weight(self, ip: str, now_ms: int) -> int:
        st = self._ips.get(ip)
        return st.weight.peek(now_ms, 60_000) if st else 0

    def order_counts(self, account: str, now_ms: int) -> tuple[int, int]:
        st = self._accounts.get(account)
        if st is None:
            return 0, 0
        return st.ten_s.peek(now_ms, 10_000), st.minute.peek(now_ms, 60_000)

    def peaks(self, ip: str, account: str) -> tuple[int, int, int]:
        """The most the account's 10-s and minute order windows and the IP's minute of weight ever held."""
        st, ips = self._accounts.get(account), self._ips.get(ip)
        return (st.ten_s.peak if st else 0, st.minute.peak if st else 0, ips.weight.peak if ips else 0)

    def charge_weight(self, ip: str, weight: int, now_ms: int) -> tuple[int, int | None]:
        """Count ``weight`` for ``ip``; returns (used, retry_after_s) or raises 429/418."""
        st = self._ips.setdefault(ip, _IpState())
        lim = self.limits
        if now_ms < st.banned_until:
            raise self._banned(ip, st, now_ms)
        used = st.weight.count(now_ms, 60_000, weight)
        if used > lim.weight_per_minute:
            err = SimApiError(-1003, too_many_requests(ip, lim.weight_per_minute), 429)
            raise self._throttle(ip, st, now_ms, err, 60_000)
        return used, None

    def charge_funding_read(self, ip: str, now_ms: int) -> int:
        """Count one request of fundingRate or fundingInfo against their shared limit (500 per 5 minutes per
        IP, apart from the weight); returns the count or raises 429 (418 once the IP keeps sending)."""
        st = self._ips.setdefault(ip, _IpState())
        return self._own_limit(ip, st, st.funding, now_ms, self.limits.funding_reads_per_5min,
                               "fundingRate and fundingInfo")

    def charge_stats_read(self, ip: str, now_ms: int) -> int:
        """Count one request of the ``/futures/data`` statistics against their shared limit (1,000 per 5
        minutes per IP, no weight); returns the count or raises 429 (418 once the IP keeps sending)."""
        st = self._ips.setdefault(ip, _IpState())
        return self._own_limit(ip, st, st.stats, now_ms, self.limits.stats_reads_per_5min, "futures data")

    def _own_limit(self, ip: str, st: _IpState, window: _Window, now_ms: int, limit: int, what: str) -> int:
        used = window.count(now_ms, FUNDING_WINDOW_MS, 1)
        if used > limit:
            err = SimApiError(-1003, f"Too many requests; current limit of IP({ip}) is {limit} requests per 5 "
                                     f"minutes for {what}.", 429)
            raise self._throttle(ip, st, now_ms, err, FUNDING_WINDOW_MS)
        return used

    def _throttle(self, ip: str, st: _IpState, now_ms: int, err: SimApiError, window_ms: int) -> SimApiError:
        """A 429 (``err``, Retry-After to its window's end), or the IP's ban once it has had
        ``ban_after_429s`` of them this minute and still sends."""
        lim = self.limits
        minute = now_ms - now_ms % 60_000
        if st.throttled_window != minute:
            st.throttled_window, st.throttled = minute, 0
        if st.throttled >= lim.ban_after_429s:
            duration_ms = int(min(lim.ban_max_s, lim.ban_base_s * (2 ** st.bans)) * 1000)
            st.bans += 1
            st.banned_until = now_ms + duration_ms
            st.throttled = 0   # the ban is the sanction: after it, 429s again before another
            return self._banned(ip, st, now_ms)
        st.throttled += 1
        err.retry_after = int((window_ms - now_ms % window_ms + 999) // 1000)  # type: ignore[attr-defined]
        err.used_weight = st.weight.peek(now_ms, 60_000)  # type: ignore[attr-defined]
        return err

    @staticmethod
    def _banned(ip: str, st: _IpState, now_ms: int) -> SimApiError:
        err = SimApiError(-1003, f"Way too many requests; IP({ip}) banned until {st.banned_until}. "
                                 "Please use the websocket for live updates to avoid bans.", 418)
        err.retry_after = int((st.banned_until - now_ms + 999) // 1000)  # type: ignore[attr-defined]
        err.used_weight = st.weight.peek(now_ms, 60_000)  # type: ignore[attr-defined]
        return err

    def charge_orders(self, account: str, n10: int, n1m: int, now_ms: int) -> tuple[int, int]:
        """Count new orders for ``account``; raises 429 -1015 when over either window."""
        st = self._accounts.setdefault(account, _AccountState())
        per_10s, per_minute = self.order_limits(account)
        c10 = st.ten_s.count(now_ms, 10_000, n10)
        c1m = st.minute.count(now_ms, 60_000, n1m)
        err = None
        if c10 > per_10s:
            err = SimApiError(-1015, f"Too many new orders; current limit is {per_10s} orders per 10 SECOND.", 429)
            err.retry_after = int((10_000 - now_ms % 10_000 + 999) // 1000)  # type: ignore[attr-defined]
        elif c1m > per_minute:
            err = SimApiError(-1015, f"Too many new orders; current limit is {per_minute} orders per MINUTE.", 429)
            err.retry_after = int((60_000 - now_ms % 60_000 + 999) // 1000)  # type: ignore[attr-defined]
        if err is not None:
            err.order_counts = (c10, c1m)  # type: ignore[attr-defined]  # the refusal carries the counts' headers too
            raise err
        return c10, c1m
