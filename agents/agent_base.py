"""Shared by the agent runtime's parts: its constants, the exchange endpoints, back-off, the latency
window, the streams' frame counts, and small helpers."""

from __future__ import annotations

import asyncio
import bisect
import contextvars
import math
import random
from collections import deque
from dataclasses import dataclass
from typing import Any

from fleet.binance.enums import ErrorCode, Side
from fleet.binance.errors import BinanceError
from fleet.binance.streams import StreamError

from .orders import Amend, parse_client_order_id
from .lifecycle import Block


# Reasons quoting is blocked (any one blocks; the kill state is the core's, not a block).
BLOCK_STARTING = Block.STARTING
BLOCK_USER_STREAM = Block.USER_STREAM
BLOCK_MARKET_STREAM = Block.MARKET_STREAM
BLOCK_MARKET_STALE = Block.MARKET_STALE
BLOCK_MARKET_LAG = Block.MARKET_LAG
BLOCK_RESYNC = Block.RESYNC
BLOCK_LEASE = Block.LEASE
BLOCK_ASKING = Block.ASKING
BLOCK_STOPPING = Block.STOPPING
BLOCK_DEADMAN = Block.DEADMAN
BLOCK_KEY_REFUSED = Block.KEY_REFUSED

LEASE_MARGIN_S = 1.0  # the lease is treated as lapsed this long before it really does
# An ambiguous answer is settled by a look-up this long past the request's recvWindow: by then the
# matching engine refuses the request (-5028), so what the look-up does not find never lands.
LOOKUP_MARGIN_MS = 1_000
# A quote pull re-lists the exchange's open orders (weight 1) until none of ours rest: first after
# 0.5 s, then less often (x2 each round, at most every 5 s), so a long outage of market data across
# many agents on one IP does not spend the IP's weight on listings.
PULL_REPEAT_S = (0.5, 5.0)

IN_FLIGHT_QUERY_MS = 3_000  # an order unanswered this long is looked up by client order id
UNRESOLVED_QUERY_MS = 1_000  # an order the exchange called unknown, with no final frame this long: looked up
WATCHDOG_S = 0.25
DEADMAN_RETRY_S = 2.0  # a heartbeat after the countdown ran out is tried this often at first (10 weight each)
LATENCY_KEEP = 20_000  # tick-to-order samples kept for the benchmark (bounded memory)
LATENCY_RECENT = 2_048  # the window status() summarises (kept sorted)

# What status()["counters"] counts (besides the streams' malformed frames and unknown events).
COUNTERS = (
    "user_stream_reconnects", "market_stream_reconnects", "resyncs", "rest_fallback_cancels",
    "listen_key_renewals", "listen_key_expired", "deadman_heartbeats", "unknown_outcomes",
    "unknown_outcomes_resolved", "reconciliations", "reconcile_repairs", "quote_pulls_confirmed",
    "stale_market_pulls", "foreign_events", "start_attempts", "rate_limited", "lease_pulls", "resync_failures",
    "owner_asks", "margin_calls", "margin_holds", "foreign_orders", "deadman_expired", "key_holds",
    "positions_beyond_cap", "user_reconnect_failures",
)

_TRANSIENT = (BinanceError, StreamError, OSError, asyncio.TimeoutError)
# Answers that no retry will change: a wrong key or signature, a symbol the exchange does not list or
# no longer trades (agents/delisting.py).
# While trading, the same refusals of the account's key (revoked, its IP not allowed, no permission for
# the action) pause quoting: every request would be refused again (8 a second, each logged).
KEY_REFUSALS = frozenset({ErrorCode.UNAUTHORIZED, ErrorCode.INVALID_SIGNATURE, ErrorCode.BAD_API_KEY_FMT,
                          ErrorCode.REJECTED_MBX_KEY})
FATAL_START_CODES = frozenset({
    ErrorCode.UNAUTHORIZED, ErrorCode.INVALID_SIGNATURE, ErrorCode.BAD_SYMBOL, ErrorCode.BAD_API_KEY_FMT,
    ErrorCode.REJECTED_MBX_KEY, ErrorCode.SYMBOL_NOT_TRADING,
    ErrorCode.POSITION_SIDE_NOT_MATCH,   # at the start: a position held in Hedge Mode (never read as flat)
})

# A measuring hook, documented in docs/architecture.md: when the book frame behind the request being
# sent in this task was read, (perf_counter_ns, thread_time_ns), set by OrderSender._send_batch for its
# own task. Nothing in the project reads it; it is for an observer below the client that wants
# tick-to-wire latency without widening the client's API (bench/agent_bench.py and journal_bench.py
# read it in an aiohttp trace hook on the client's session). The thread's CPU clock separates the
# agent's own work from time preempted. Its cost: one ContextVar.set per batch.
Tick = tuple[int, int]
TICK_READ: contextvars.ContextVar[Tick | None] = contextvars.ContextVar("mmfleet_tick_read", default=None)


@dataclass(frozen=True)
class ExchangeEndpoints:
    """Where the exchange is: REST base URL and WebSocket base URLs (market and user)."""

    rest_url: str
    ws_market_url: str
    ws_user_url: str


class Backoff:
    """Growing, jittered delays: initial, 2x, 4x ... capped; ``reset`` after a success."""

    def __init__(self, initial: float, cap: float, jitter: float = 0.2, rng: random.Random | None = None) -> None:
        self.initial = initial
        self.cap = max(cap, initial)
        self.jitter = jitter
        self.attempt = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        # the exponent capped: 2 ** 1024 overflows a float (after 1,024 tries of a long outage)
        base = min(self.cap, self.initial * (2 ** min(self.attempt, 60)))
        self.attempt += 1
        return base * (1.0 + self._rng.uniform(-self.jitter, self.jitter))

    def reset(self) -> None:
        self.attempt = 0


def outage_of(exc: BaseException, client: Any, early: int = 0) -> asyncio.Event | None:
    """What may end a retry's back-off early after ``exc``, the ``early``-th early try in a row: the first
    time, the end of the REST outage ``exc`` came of (its event, set at the exchange's first answer after
    it: ``BinanceClient.rest_back``); the second, the end of its own route's (an outage of one route while
    the others answer: openOrders alone woke a reconnect at every heartbeat, 29 tries in 30 s, and once
    the route came back nothing woke it before a minute's back-off); then nothing: its back-off is waited
    out. None too for a failure of another kind (a stream's, a refusal of the request itself)."""
    if client is None or not isinstance(exc, BinanceError):
        return None
    if early == 0:
        return client.rest_back if client.rest_failing else None
    return client.route_back(exc.route) if early == 1 else None


def outage_said(early: int, exc: BaseException) -> str:
    """How a retry's log line names what may wake it (``outage_of``)."""
    route = getattr(exc, "route", None)
    return " or once the exchange's REST answers again" if early == 0 else f" or once {route} answers again"


class MarginHold:
    """After -2019 (margin insufficient) or -2027 (the leverage's bracket full) the quoting lane's
    requests are held (``OrderSender``: all but the places that reduce the position; the risk lane
    goes on): 1 s at first, twice as long at each refusal after a hold ended, at most ``cap_s``; a
    refusal more than twice ``cap_s`` after the last starts again at 1 s. A -2027 is one side's: the
    hold is that side's (``side``) unless the other side, or the margin, is refused during it. Sending again at the next book tick would only be
    refused again (16 refusals a second on an account short of margin, before this), each counted
    against the account's order limits. A ladder that partly fits keeps what landed."""

    def __init__(self, initial_s: float = 1.0, cap_s: float = 60.0) -> None:
        self.backoff = Backoff(initial_s, cap_s, jitter=0.0)
        self.until = -math.inf
        self.last_short = -math.inf
        self.side: str | None = None   # the one side held (a -2027's), or None: both

    def short(self, now: float, side: str | None = None) -> float | None:
        """A refusal, of ``side`` alone (-2027) or of both (None: -2019): the hold started now (its
        length), or None while one holds (answers to orders sent before it; a refusal of another
        side widens the hold to both)."""
        if now < self.until:
            if side != self.side:
                self.side = None
            return None
        if now - self.last_short > 2 * self.backoff.cap:
            self.backoff.reset()
        self.last_short = now
        hold = self.backoff.next()
        self.until = now + hold
        self.side = side
        return hold

    def left(self, now: float) -> float:
        """Seconds the hold still lasts (0: none)."""
        return max(0.0, self.until - now)


class LatencyWindow:
    """Tick-to-order latencies (ns): every sample up to ``LATENCY_KEEP`` for the benchmarks, and the
    recent ``LATENCY_RECENT`` whose quantiles status shows, kept sorted as samples come and go (the
    loop publishes four snapshots a second: sorting the window for each cost 5 % of a simulated run's
    CPU, and once a second still 4 %; a sample now costs two bisections)."""

    def __init__(self) -> None:
        self.all: deque[int] = deque(maxlen=LATENCY_KEEP)
        self._recent: deque[int] = deque()
        self._sorted: list[int] = []

    def add(self, ns: int) -> None:
        self.all.append(ns)
        if len(self._recent) == LATENCY_RECENT:
            del self._sorted[bisect.bisect_left(self._sorted, self._recent.popleft())]
        self._recent.append(ns)
        bisect.insort(self._sorted, ns)

    def quantile_ms(self, q: float, now: float | None = None) -> float | None:
        """A quantile of the recent window (``now`` is accepted and unused: the window is always current)."""
        data = self._sorted
        if not data:
            return None
        return round(data[min(len(data) - 1, int(q * len(data)))] / 1e6, 4)


class FrameCounts:
    """Bad frames skipped and unknown events passed through, over every stream the agent opened: the
    streams in use are asked, the counts of those let go are kept as totals."""

    def __init__(self) -> None:
        self._streams: list[Any] = []
        self._retired = {"malformed_frames": 0, "unknown_events": 0}

    def track(self, stream: Any) -> None:
        self._streams.append(stream)

    def counts(self) -> dict[str, int]:
        out = dict(self._retired)
        for stream in tuple(self._streams):
            out["malformed_frames"] += stream.malformed
            out["unknown_events"] += stream.unknown
        return out

    def fold(self, in_use: tuple[Any, ...]) -> None:
        """Streams no longer in use: their counts go into the totals, the objects are let go (the
        newest two may still be connecting, so they stay)."""
        if len(self._streams) <= 4:
            return
        live = []
        for stream in self._streams[:-2]:
            if any(stream is s for s in in_use):
                live.append(stream)
            else:
                self._retired["malformed_frames"] += stream.malformed
                self._retired["unknown_events"] += stream.unknown
        self._streams = live + self._streams[-2:]


def quoting_said(agent: Any) -> str:
    """What lifting a block leads to, in words for its log line: quoting again, or what still stops it (a
    halted symbol's agent said "quoting resumes" on each lease regained)."""
    if agent.quoting_live():
        return "quoting resumes"
    core = agent.core
    if core is not None and core.halt_state != "running":
        return f"the symbol stays {core.halt_state}"
    return f"quoting still held ({', '.join(sorted(agent.blocks))})" if agent.blocks else "quoting still held"


def _reduces(a: Amend, o: Any) -> bool:
    """An amend that takes risk off: no larger, and smaller or further from the market."""
    if a.qty_steps > o.orig_steps:
        return False
    away = a.price_ticks < o.price_ticks if a.side == Side.BUY else a.price_ticks > o.price_ticks
    return a.qty_steps < o.orig_steps or away


def _older_epoch(client_order_id: str, epoch: int) -> bool:
    parsed = parse_client_order_id(client_order_id)
    return parsed is not None and parsed[0] < epoch


def _same_epoch(client_order_id: str, epoch: int) -> bool:
    parsed = parse_client_order_id(client_order_id)
    return parsed is not None and parsed[0] == epoch


class _ListenKeyGone(Exception):
    """The listenKey expired or was refused: a new key, a new stream, and a resync."""
