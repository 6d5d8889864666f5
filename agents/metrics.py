"""The agent's metrics: its own CollectorRegistry, every series labelled ``symbol``.

A custom collector reads the core's numbers at scrape time, so the hot path pays nothing and no
``_created`` series appear (without touching prometheus_client's process-wide switches). The seed's
twelve names come out exactly as written: ``mm_grind_count_total`` is a counter (prometheus_client
adds ``_total``), ``mm_rest_fallback_count`` a gauge (a counter could not keep that name).
"""

from __future__ import annotations

import bisect
from typing import TYPE_CHECKING, Any, Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from fleet.binance.ratelimit import HOLDS
from fleet.vocabulary import KillState

if TYPE_CHECKING:
    from fleet.binance.ratelimit import RateBudget

    from .core import AgentCore

SEED_METRICS = (
    "mm_worst_case_long",
    "mm_worst_case_short",
    "mm_dynamic_decay_factor",
    "mm_funding_pnl_acc",
    "mm_predicted_funding_rate",
    "mm_grind_count_total",
    "mm_grind_active",
    "mm_grind_cost_saved",
    "mm_price_stddev_30m",
    "mm_quote_suppressed",
    "mm_ws_connected",
    "mm_rest_fallback_count",
)

# Tick (market event received) to order (request handed to the client), in seconds.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
# What the reconciliation backstop finds (agents/reconcile.py): an open order the store did not count
# (adopted), one of ours it then sends a cancel for (orphan), one the store counted that the exchange no
# longer lists (missing: looked up), an older epoch's order, and a position that differs.
RECONCILE_KINDS = ("untracked", "orphan_cancelled", "missing", "old_epoch", "position")
# The rate budget's windows (fleet/binance/ratelimit.py): IP weight per minute, account orders per 10 s and 1 min.
RATE_WINDOWS = ("weight_1m", "orders_10s", "orders_1m")


class AgentMetrics:
    """One agent's metric set. The runtime reports stream health and latency; the rest is read from the core."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, symbol: str, core: "AgentCore | None" = None) -> None:
        self.symbol = symbol
        self.core = core
        self.budget: "RateBudget | None" = None
        self.journal_status: Callable[[], dict[str, Any]] | None = None   # the trade journal's writer, if any
        self.exchange_clock: Callable[[], tuple[int, int]] | None = None  # (offset ms, -1021 re-syncs)
        self.frame_counts: Callable[[], dict[str, int]] | None = None   # the streams' skipped frames
        self.ws_connected = False
        self.rest_fallback_count = 0
        self.unknown_outcomes = 0  # requests answered ambiguously (execution status unknown)
        self.margin_calls = 0  # MARGIN_CALL frames naming this symbol
        self.delisting_at_s = 0.0  # the exchange's announced settlement time (Unix s; agents/delisting.py)
        self.leverage = 0  # the account's leverage for the symbol, and the notional it allows a side (symbolConfig)
        self.max_notional = 0.0
        self.reconcile_discrepancies: dict[str, int] = {}  # by kind, found by the reconciliation backstop
        self._lat_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self._lat_sum = 0.0
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    # ------------------------------------------------------------------ what the runtime reports

    def bind(self, core: "AgentCore") -> None:
        """Read from this core from now on (a new core after a restart of the runtime)."""
        self.core = core

    def bind_budget(self, budget: "RateBudget") -> None:
        """Show this rate budget's windows (read-only) in the exposition."""
        self.budget = budget

    def bind_journal(self, status: Callable[[], dict[str, Any]]) -> None:
        """Show the trade journal's writer (``JournalWriter.status``, read-only) in the exposition."""
        self.journal_status = status

    def bind_exchange_clock(self, read: Callable[[], tuple[int, int]]) -> None:
        """Show the exchange clock's offset from this host's and the -1021 re-syncs (read-only)."""
        self.exchange_clock = read

    def bind_frames(self, counts: Callable[[], dict[str, int]]) -> None:
        """Show the streams' frames skipped as malformed and events of unknown types (read-only)."""
        self.frame_counts = counts

    def set_ws_connected(self, connected: bool) -> None:
        self.ws_connected = bool(connected)

    def inc_rest_fallback(self, n: int = 1) -> None:
        """A resync from REST (reconnect, gap, unknown order state)."""
        self.rest_fallback_count += n

    def inc_unknown_outcome(self, n: int = 1) -> None:
        self.unknown_outcomes += n

    def inc_margin_call(self) -> None:
        self.margin_calls += 1

    def inc_discrepancy(self, kind: str, n: int = 1) -> None:
        """A difference between the exchange and the store, found and repaired by reconciliation."""
        self.reconcile_discrepancies[kind] = self.reconcile_discrepancies.get(kind, 0) + n

    def observe_tick_to_order(self, seconds: float) -> None:
        self._lat_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self._lat_sum += seconds

    def render(self) -> bytes:
        """The Prometheus text exposition of this agent's registry."""
        return generate_latest(self.registry)

    # ------------------------------------------------------------------ collector protocol

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield from self._runtime_families()
        if self.budget is not None:
            yield from self._budget_families()
        if self.journal_status is not None:
            yield from self._journal_families(self.journal_status())
        if self.core is None:
            yield from self._unbound_families()
            return
        yield from self._seed_families(self.core)
        yield from self._position_families(self.core)
        yield from self._count_families(self.core)

    def _gauge(self, name: str, doc: str, value: float) -> GaugeMetricFamily:
        g = GaugeMetricFamily(name, doc, labels=["symbol"])
        g.add_metric([self.symbol], float(value))
        return g

    def _runtime_families(self) -> Iterator[Metric]:
        """What the runtime counts: the user stream, resyncs, tick-to-order, unknown outcomes, repairs."""
        sym = [self.symbol]
        gauge = self._gauge
        yield gauge("mm_ws_connected", "1 while the user data stream is connected", 1 if self.ws_connected else 0)
        yield gauge("mm_rest_fallback_count", "resyncs of orders and position from REST", self.rest_fallback_count)
        h = HistogramMetricFamily(
            "mm_tick_to_order_seconds", "from a market event to the order request leaving the core", labels=["symbol"]
        )
        cum = 0
        buckets = []
        for bound, n in zip(LATENCY_BUCKETS, self._lat_counts):
            cum += n
            buckets.append((repr(bound), cum))
        buckets.append(("+Inf", cum + self._lat_counts[-1]))
        h.add_metric(sym, buckets, self._lat_sum)
        yield h
        yield _counter("mm_unknown_outcomes", "requests answered with execution status unknown", sym, self.unknown_outcomes)
        yield _counter("mm_margin_calls", "the exchange's MARGIN_CALL frames naming this symbol", sym, self.margin_calls)
        frames = self.frame_counts() if self.frame_counts is not None else {}
        yield _counter("mm_malformed_frames", "stream frames that did not parse or lacked a field the agent needs "
                       "(logged and skipped; the reconciliation repairs what they carried)", sym,
                       frames.get("malformed_frames", 0))
        yield _counter("mm_unknown_events", "stream events of a type the agent does not know (skipped)", sym,
                       frames.get("unknown_events", 0))
        offset, resyncs = self.exchange_clock() if self.exchange_clock is not None else (0, 0)
        yield gauge("mm_exchange_clock_offset_ms", "the exchange's clock minus this host's, as last learned from "
                    "/fapi/v1/time (signed requests carry the host's clock plus it)", offset)
        yield _counter("mm_clock_resyncs", "signed requests refused for a timestamp outside the recvWindow (-1021), "
                       "each followed by a new reading of the exchange's clock", sym, resyncs)
        yield gauge("mm_delisting_timestamp_seconds", "the exchange's announced settlement (delisting) time of the "
                    "symbol, Unix seconds; 0 while none is announced", self.delisting_at_s)
        yield gauge("mm_leverage", "the account's leverage for the symbol, read at the start (0: unread)", self.leverage)
        yield gauge("mm_max_notional", "the notional the leverage's bracket allows one side (maxNotionalValue, quote "
                    "currency), read at the start; 0: unread", self.max_notional)
        rec = CounterMetricFamily(
            "mm_reconcile_discrepancies", "differences the reconciliation found and repaired, by kind", labels=["symbol", "kind"]
        )
        for kind in RECONCILE_KINDS:
            rec.add_metric([self.symbol, kind], float(self.reconcile_discrepancies.get(kind, 0)))
        yield rec

    def _unbound_families(self) -> Iterator[Metric]:
        """The seed's metrics at zero while no core is bound yet (none may be missing from a page)."""
        for name in SEED_METRICS:
            if name in ("mm_ws_connected", "mm_rest_fallback_count"):
                continue
            if name == "mm_grind_count_total":
                c = CounterMetricFamily("mm_grind_count", "grinds fired", labels=["symbol"])
                c.add_metric([self.symbol], 0.0)
                yield c
            else:
                yield self._gauge(name, "no core bound yet", 0.0)

    def _seed_families(self, core: AgentCore) -> Iterator[Metric]:
        """The seed's metrics from the core: worst cases and cap, decay, funding, grinding, volatility."""
        gauge = self._gauge
        s = core.store
        lad = core.last_ladder
        eng = core.grinding
        yield gauge("mm_worst_case_long", "position + pending buys (base units)", s.worst_long)
        yield gauge("mm_worst_case_short", "position - pending sells (base units)", s.worst_short)
        cap_doc = "net_max * worst_case.multiplier: the bound on each side's worst case"
        yield gauge("mm_worst_case_cap", cap_doc, core.params.worst_cap)
        yield gauge(
            "mm_dynamic_decay_factor",
            "exp(-|worst| / net_max * size_decay_k) of the last ladder (stronger side)",
            lad.decay_factor if lad is not None else 1.0,
        )
        yield gauge("mm_funding_pnl_acc", "funding P&L summed from FUNDING_FEE balance changes", s.funding_pnl)
        yield gauge("mm_predicted_funding_rate", "EMA prediction of the next funding rate", s.predicted_funding)
        if s.funding.interval_read:   # not the 8 h guess of a start: a series 8 h, then 1 h, reads as a change
            yield gauge("mm_funding_interval_seconds", "the symbol's funding interval as the exchange lists it (the "
                        "quotes' funding shift scales the predicted rate to 8 hours)", s.funding.interval_ms / 1000)
        c = CounterMetricFamily("mm_grind_count", "grinds fired", labels=["symbol"])
        c.add_metric([self.symbol], float(eng.count_total))
        yield c
        yield gauge("mm_grind_active", "1 while a grind awaits its fill and re-entry", 1 if eng.active else 0)
        yield gauge("mm_grind_cost_saved", "estimated quote-currency saving of all grinds", eng.cost_saved)
        yield gauge("mm_price_stddev_30m", "relative stddev (stddev / mean) of 30 minutes of mids", s.price_stddev_30m())
        yield gauge(
            "mm_quote_suppressed", "1 when a side stopped at the worst-case cap", 1 if lad is not None and lad.suppressed else 0
        )

    def _position_families(self, core: AgentCore) -> Iterator[Metric]:
        """Beyond the seed: position, pending sizes, prices, P&L, drawdown, halt state, reduce-only."""
        gauge = self._gauge
        s = core.store
        yield gauge("mm_position", "signed position (base units)", s.position)
        yield gauge("mm_entry_price", "average entry price", s.entry_price)
        yield gauge("mm_pending_buy", "remaining size of open and in-flight buys", s.pending_buy_size())
        yield gauge("mm_pending_sell", "remaining size of open and in-flight sells", s.pending_sell_size())
        yield gauge("mm_open_orders", "open and in-flight orders", len(s.orders))
        yield gauge("mm_mid_price", "book mid", s.mid)
        yield gauge("mm_mark_price", "mark price", s.mark)
        yield gauge("mm_realized_pnl", "realized P&L from fills (quote currency)", s.realized_pnl)
        yield gauge("mm_unrealized_pnl", "unrealized P&L at mark", s.unrealized_pnl())
        yield gauge("mm_commission", "commission paid (quote currency)", s.commission)
        # reads only: the peak moves with the store's inputs, never with a scrape
        yield gauge("mm_equity", "risk.capital + the symbol's own P&L (realized, funding, commission, unrealized)", s.equity())
        yield gauge("mm_drawdown_pct", "percent below the symbol's peak equity", s.drawdown_pct())
        bands = GaugeMetricFamily(
            "mm_drawdown_band_pct", "drawdown (percent) at which band N reduces the position", labels=["symbol", "band"]
        )
        for i, band in enumerate(core.drawdown.bands, start=1):
            bands.add_metric([self.symbol, str(i)], float(band))
        yield bands
        state = GaugeMetricFamily("mm_halt_state", "1 for the current halt state", labels=["symbol", "state"])
        for st in KillState:
            state.add_metric([self.symbol, st.value], 1.0 if core.guard.state == st else 0.0)
        yield state
        yield gauge("mm_reduce_only", "1 while the fleet holds this symbol reduce-only", 1 if core.guard.reduce_only_mode else 0)

    def _count_families(self, core: AgentCore) -> Iterator[Metric]:
        """Counters: fills, requests sent, rejections, guard refusals, quote cycles, skipped frames."""
        sym = [self.symbol]
        s = core.store
        fills = CounterMetricFamily("mm_fills", "fills booked", labels=["symbol", "side"])
        fills.add_metric([self.symbol, "BUY"], float(s.fills_buy))
        fills.add_metric([self.symbol, "SELL"], float(s.fills_sell))
        yield fills
        sent = CounterMetricFamily("mm_orders_sent", "requests sent, by action", labels=["symbol", "action"])
        for action, n in core.orders_sent.items():
            sent.add_metric([self.symbol, action], float(n))
        yield sent
        rej = CounterMetricFamily("mm_rejects", "exchange rejections, by error code", labels=["symbol", "code"])
        for code, n in sorted(s.rejects.items()):
            rej.add_metric([self.symbol, str(code)], float(n))
        yield rej
        ref = CounterMetricFamily("mm_guard_refusals", "orders the RiskGuard refused, by reason", labels=["symbol", "reason"])
        for reason, n in sorted(core.guard.refusals.items()):
            ref.add_metric([self.symbol, reason], float(n))
        yield ref
        yield _counter("mm_quote_cycles", "quote cycles run", sym, core.cycles)
        yield _counter("mm_drawdown_slices_requeued", "drawdown slices put back in the plan: not sent (rate "
                       "budget, order gate) or answered 429", sym, core.twap_requeued)
        yield _counter("mm_drawdown_slices_dropped", "drawdown slices given up after the guard refused them "
                       "5 times", sym, core.twap_dropped)
        yield _counter("mm_stale_frames", "duplicate or older exchange frames skipped", sym, s.stale_updates)
        yield _counter("mm_foreign_frames", "frames for another symbol skipped", sym, s.foreign_events)
        yield _counter("mm_liquidations", "fills of the exchange's liquidation orders (each halts the symbol)", sym,
                       s.liquidations)
        yield _counter("mm_deleveraged", "fills of the exchange's auto-deleveraging (ADL) orders", sym, s.deleveraged)
        yield _counter("mm_settled", "fills of the exchange's settlement orders (a delisting; each halts the symbol)",
                       sym, s.settled)

    def _journal_families(self, st: dict[str, Any]) -> Iterator[Metric]:
        """The trade journal's writer: the database answering, rows waiting, lost, refused, spooled."""
        sym = [self.symbol]
        yield self._gauge("mm_journal_db_up", "1 while the journal's database takes rows", 1 if st.get("db_up") else 0)
        yield self._gauge("mm_journal_rows_waiting", "rows queued or held in memory, not yet in the journal",
                          int(st.get("queued") or 0) + int(st.get("held_now") or 0))
        yield _counter("mm_journal_rows_lost", "rows lost on the way to the journal (fills and funding are read "
                       "again from the exchange; other rows are gone)", sym, st.get("dropped") or 0)
        yield _counter("mm_journal_rows_rejected", "rows the database refused, kept in the rejects file", sym,
                       st.get("rejected") or 0)
        yield _counter("mm_journal_rows_spooled", "rows written to the local spool while the database was down", sym,
                       st.get("spooled") or 0)

    def _budget_families(self) -> Iterator[Metric]:
        """The rate budget's windows: this agent's share, and the exchange's count against Binance's limit."""
        budget = self.budget
        assert budget is not None
        usage = budget.usage()
        docs = {
            "mm_rate_budget_used": "spent in the budget's sliding window (weight or orders)",
            "mm_rate_budget_limit": "the agent's share of the window's limit, after the safety margin",
            "mm_rate_budget_used_ratio": "used / limit of the agent's share (1 = no room left)",
            "mm_rate_budget_quoting_limit": "the part of the share quoting may use (the rest is kept for cancels "
                                            "and reduce-only orders)",
            "mm_rate_exchange_used": "the exchange's count for the account or IP: last reported plus spent since",
            "mm_rate_exchange_limit": "Binance's limit for the window",
        }
        fams = {name: GaugeMetricFamily(name, doc, labels=["symbol", "window"]) for name, doc in docs.items()}
        for window in RATE_WINDOWS:
            u = usage[window]
            lv = [self.symbol, window]
            fams["mm_rate_budget_used"].add_metric(lv, float(u.used))
            fams["mm_rate_budget_limit"].add_metric(lv, float(u.limit))
            fams["mm_rate_budget_used_ratio"].add_metric(lv, u.used / u.limit if u.limit > 0 else 0.0)
            fams["mm_rate_budget_quoting_limit"].add_metric(lv, float(u.quoting_limit))
            fams["mm_rate_exchange_used"].add_metric(lv, float(u.exchange_used))
            fams["mm_rate_exchange_limit"].add_metric(lv, float(u.exchange_limit))
        yield from fams.values()
        sym = [self.symbol]
        yield _counter("mm_rate_limited", "429 answers (Retry-After) the budget waited out", sym, budget.rate_limited)
        yield _counter("mm_throttled", "-1008 answers (the exchange's system-level protection): quoting held 1 s",
                       sym, budget.throttled)
        yield _counter("mm_rate_budget_refused", "requests the budget refused for want of room", sym, budget.refused)
        yield _counter("mm_banned", "418 answers: the IP banned, nothing goes out until the ban ends", sym, budget.banned)
        blocked = GaugeMetricFamily("mm_rate_blocked_seconds", "seconds left of a pause in which nothing goes out, "
                                    "cancels and the dead-man heartbeat included (a 429 on the IP's weight, a 418)",
                                    labels=["symbol"])
        blocked.add_metric(sym, budget.blocked_for())
        yield blocked
        held = set(budget.holds())
        hold = GaugeMetricFamily("mm_exchange_hold", "1 while this hold keeps the agent's orders back (the status's "
                                 "exchange_holds): an agent 'quoting' with nothing going out says why",
                                 labels=["symbol", "hold"])
        for name in HOLDS:
            hold.add_metric([self.symbol, name], 1.0 if name in held else 0.0)
        yield hold


def _counter(name: str, doc: str, labels: list[str], value: float) -> CounterMetricFamily:
    c = CounterMetricFamily(name, doc, labels=["symbol"])
    c.add_metric(labels, float(value))
    return c
