"""AgentJournal: the sink an agent records through (orders, fills, funding, snapshots, its events),
and the backfill that makes the journal equal to the exchange's record after any gap.

Hooks only append to the writer's queue; rows are built in the writer's thread. The recorder's own
task on the agent's loop takes a snapshot every ``snapshot_interval_sec`` and backfills the trades
every ``backfill_interval_sec``; the funding (income, 30 weight a read against userTrades' 5) at every
start unless the journal's last read on record (table ``funding_reads``) began after the last settlement
the exchange lists had its rows listed (``_start_read_wanted``: half of a start's weight), at a resync
unless no settlement can have come since the last read (``_settled_since_read``: a stream gap of every
symbol of the fleet would otherwise cost 30 weight each), after a funding fee frame
of this symbol (not once the agent's own cross-margin look-up has handed the fee's row over:
``on_income_rows``), on stop, and otherwise every ``funding_backfill_interval_sec``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from typing import Any, Iterable

from agents.carry import take_journal_income
from agents.logging import redact_known
from fleet.binance.models import exchange_decimal

from .db import Target, in_own_thread
from .sink import JournalSink
from .writer import JournalWriter, Row, cursors, last_funding_read

log = logging.getLogger("mmfleet.journal")

PAGE = 1000  # userTrades and income rows per request (Binance's maximum)
INCOME_TYPES = ("FUNDING_FEE", "INSURANCE_CLEAR")   # the income the journal keeps (table funding)
FUNDING_DELAYS = (2.0, 10.0, 30.0)  # an income record may trail the funding frame
FUNDING_MATCH_MS = 5_000  # an income row this close to a fee frame's time is that fee's
FUNDING_TRAIL_MS = 60_000  # a settlement's income rows are listed by then (they trail its frames by seconds)
SCHEDULE_FRESH_MS = 5_000  # the mark frames (every second) said the next settlement this recently
START_DB_WAIT_S = 10.0  # the start's backfill waits this long at most for the database (the last read on record)

# Agent events kept in the audit trail (others are operational noise for the log only).
AUDITED = frozenset({
    "ownership_acquired", "ownership_lost", "lease_lapsed", "lease_regained", "kill_state", "halted",
    "resumed", "params_applied", "reconcile_repair", "resynced", "quoting_started", "stopping", "stopped",
    "start_fatal", "outcome_unknown", "outcome_resolved", "user_stream_lost", "market_stale", "market_lag",
    "old_epoch_cancel", "funding_booked", "asking_owner",
    # what the exchange did to the account or the symbol, and what the agent made of it
    "liquidated", "deleveraged", "margin_call", "margin_short", "settled", "symbol_not_trading",
    "delisting_scheduled", "delisting_exit", "delisting_cancelled", "cap_beyond_leverage", "funding_interval",
    "hedge_mode",
})
# what may have cost the user stream a fill: its trades are read again from a while before (``gap``)
# the agent's own findings that the stream missed fills: they are the journal's too (a trade frame lost on a
# live connection, found by the position's unexplained move: its id would sit behind the journal's cursor)
GAP_EVENTS = frozenset({"user_stream_lost", "user_event_failed", "trades_backfilled"})
GAP_LOOKBACK_MS = 300_000   # the stream's silence detection, a lost frame's age and the clocks, with room
GAP_READ_EVERY_S = 30.0   # a run of gaps reads the exchange's trades at most this often (5 weight a page)
TRADES_WINDOW_MS = 7 * 86_400_000 - 60_000   # userTrades answers a startTime within its last 7 days
ORDER_REASON_EVENTS = {"drawdown": "drawdown_cut", "grind": "grind", "grind_reentry": "grind_reentry",
                       "flatten": "flatten_order"}


def _uid() -> str:
    return uuid.uuid4().hex


def _now_ms() -> int:
    return int(time.time() * 1000)


def _s(v: Any) -> str | None:
    return None if v is None else format(v, "f") if not isinstance(v, str) else v


class AgentJournal(JournalSink):
    enabled = True

    def __init__(self, target: Target, *, fleet: str, account: str, symbol: str, settings: Any = None,
                 writer: JournalWriter | None = None) -> None:
        from fleet.config import JournalConfig

        self.settings = settings or JournalConfig()
        self.fleet, self.account, self.symbol = fleet, account, symbol
        s = self.settings
        self.writer = writer or JournalWriter(
            target, f"{fleet}-{symbol}", convert=self._convert, queue_max=s.queue_max, batch_max=s.batch_max,
            flush_interval=s.flush_interval_sec)
        self._scope = {"fleet": fleet, "account": account, "symbol": symbol}
        self._task: asyncio.Task | None = None
        self._backfill_task: asyncio.Task | None = None
        self._backfill_again = False
        self._funding_wanted = False  # the next backfill reads income too
        self._agent: Any = None
        self._trade_cursor: int | None = None  # newest trade id known to be handed to the writer
        self._funding_cursor: int | None = None
        self._fee_seen_ms: int | None = None  # the newest fee row the agent's own look-up handed over
        self.backfills = {"runs": 0, "trades": 0, "funding": 0, "income_reads": 0, "income_spared": 0, "errors": 0}
        self._funding_read_ms: int | None = None   # when the last funding read that succeeded began (exchange time)
        self._start_check: float | None = None   # the start's funding read not yet decided: since (monotonic)
        self._db_read_known = False   # the journal's last funding read on record looked up (or not to be had)
        self._record: Any = None   # that read (writer.FundingRead), adopted
        self._db_fund: int | None = None   # the newest fee the database held when that read was looked up
        self.bad_rows = 0   # the exchange's trade or income rows that did not read: skipped, each logged
        self._reading: dict[str, int] = {}   # where the backfill under way reads from (a hole if it fails)
        self._user_stream: Any = None   # the user stream last looked at, and its malformed frames then
        self._user_malformed = 0
        self._gap_read_at = -GAP_READ_EVERY_S   # when a gap last asked for a backfill (monotonic)

    # ------------------------------------------------------------------ wiring

    def attach(self, agent: Any) -> "AgentJournal":
        """Become ``agent.journal``, hear its named events, start the writer."""
        self._agent = agent
        agent.journal = self
        agent.log.listener = lambda event, msg, fields: self.on_log_event(agent, event, msg, fields)
        agent.metrics.bind_journal(self.writer.status)
        self.writer.start()
        return self

    def status(self) -> dict[str, Any]:
        return {**self.writer.status(), "backfills": dict(self.backfills)}

    # ------------------------------------------------------------------ hooks (agent's loop)

    def on_sent(self, agent: Any, batch: Any) -> None:
        self.writer.put(("sent", _now_ms(), _epoch(agent), batch, agent.filters))

    def on_results(self, agent: Any, batch: Any, results: list[Any]) -> None:
        self.writer.put(("answer", _now_ms(), _epoch(agent), batch, results))

    def on_user_event(self, agent: Any, ev: Any) -> None:
        from fleet.binance.events import FundingFee, OrderUpdate

        if isinstance(ev, OrderUpdate):
            store = agent.core.store if agent.core is not None else None
            mid = store.mid if store is not None else None
            mark = store.mark if store is not None else None
            self.writer.put(("update", _epoch(agent), ev, mid or None, mark or None))
            if ev.trade_fields_missing:   # the trade as the exchange lists it replaces what the frame lacked
                self.gap(ev.update_time or ev.transaction_time or ev.event_time)
        elif isinstance(ev, FundingFee):
            if ev.symbol is not None and ev.symbol != self.symbol:
                return  # another symbol's fee
            store = agent.core.store if agent.core is not None else None
            if ev.symbol is None and store is not None and store.position_steps == 0:
                return  # a cross-margin fee frame while this symbol is flat: no fee of ours in it
            self._spawn_funding_backfill(ev.transaction_time)

    def on_income_rows(self, agent: Any, rows: list[dict[str, Any]]) -> None:
        # Written (idempotent by income id), and noted for the fee frame's pending reads only: the
        # journal's own cursor stays, so its next read still covers any gap before these rows.
        epoch = _epoch(agent)
        for r in rows:
            if r.get("incomeType") == "INSURANCE_CLEAR" and r.get("symbol") == self.symbol:
                self.writer.put(("income", epoch, r))   # a liquidation's clearance fee (agents/clearance.py)
            elif r.get("incomeType") == "FUNDING_FEE" and r.get("symbol") == self.symbol:
                self.writer.put(("income", epoch, r))
                self.backfills["funding"] += 1
                with contextlib.suppress(KeyError, TypeError, ValueError):
                    self._fee_seen_ms = _max(self._fee_seen_ms, int(r["time"]))

    def on_log_event(self, agent: Any, event: str, msg: str, fields: dict[str, Any]) -> None:
        if event in GAP_EVENTS:
            self.gap(agent.exchange_ms())
        kind = event
        if event == "order_placed":
            reason = (msg or "").split(":", 1)[0]
            kind = ORDER_REASON_EVENTS.get(reason, "")
            if not kind:
                return
        elif event not in AUDITED:
            return
        # as the log shows them: a listen key in a stream's URL (the classic layout) is not kept
        detail = {k: redact_known(v) if isinstance(v, str) else v for k, v in fields.items()
                  if k not in ("symbol", "epoch")}
        self.event(kind, reason=redact_known(msg), epoch=_epoch(agent), detail=detail or None)

    def on_resync(self, agent: Any, initial: bool) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._loop(agent))
        if initial:   # its funding read asks whether a settlement came since the last read on record
            if self._funding_read_ms is None:
                self._start_check = time.monotonic()
            self.request_backfill(funding=True)
            return
        # back after a gap: its fills are read again, from before it began
        lost = getattr(getattr(agent, "user", None), "last_lost_ms", None)
        self.writer.note_hole({"trade_ms": (lost or agent.exchange_ms()) - GAP_LOOKBACK_MS})
        funding = self._settled_since_read(agent)
        if not funding:
            self.backfills["income_spared"] += 1
        self.request_backfill(funding=funding)

    async def _adopt_record(self, agent: Any, wait: bool) -> None:
        """The journal's last funding read on record (this fleet's, not in the future), looked up once the
        database answers (it does once the writer's first rows went in; ``wait``: up to
        ``START_DB_WAIT_S`` from the start), with the newest fee the database holds: reads go on from its
        cursor. Found only after a read went ahead without it (from the lookback, the database late), the
        fees from its cursor on are a hole, read by the next backfill (they were passed over for good)."""
        while not self._db_read_known:
            engine = self.writer.engine()
            if engine is not None:
                try:
                    rec, self._db_fund = await asyncio.wrap_future(in_own_thread(
                        lambda: (last_funding_read(engine, self.fleet, self.account, self.symbol),
                                 cursors(engine, self.account, self.symbol)[1])))
                    if rec is not None and rec.ts_ms <= agent.exchange_ms():
                        if self._funding_read_ms is None:
                            self._record = rec
                            self._funding_read_ms, self._funding_cursor = rec.ts_ms, rec.cursor_ms
                        elif self._funding_cursor is None or rec.cursor_ms < self._funding_cursor:
                            self.writer.note_hole({"funding": rec.cursor_ms})
                except Exception as exc:  # noqa: BLE001 - the start reads
                    log.warning("journal %s: the last funding read on record not read: %r", self.symbol, exc)
                self._db_read_known = True
            elif not wait or time.monotonic() - (self._start_check or 0.0) >= START_DB_WAIT_S:
                return   # not answering: the start reads (from the lookback), a later backfill looks again
            else:
                await asyncio.sleep(0.2)

    async def _start_read_wanted(self, agent: Any, db_fund: int | None) -> bool:
        """The start's backfill, its trades read: whether it reads the funding too. Not when the journal's
        last read on record began ``FUNDING_TRAIL_MS`` after the last settlement the exchange lists
        (fundingRate's history: not the weight's budget, its own 500 a 5 minutes; 30 weight spared), and
        the database holds no fee past that read's cursor (one it did not see): every fee since its
        cursor was listed then, none has come since. Anything unknown reads."""
        rec = self._record
        if rec is None or (db_fund is not None and db_fund > rec.cursor_ms):
            return True
        try:
            since = await agent.client.funding_times(self.symbol, rec.ts_ms - FUNDING_TRAIL_MS)
        except Exception as exc:  # noqa: BLE001 - the start reads
            log.warning("journal %s: the settlements since the last funding read not listed (%r): read", self.symbol,
                        exc)
            return True
        if since:
            return True
        self.backfills["income_spared"] += 1
        log.info("journal %s: funding not read at the start: no settlement since the last read on record",
                 self.symbol)
        return False

    def _settled_since_read(self, agent: Any) -> bool:
        """Whether a settlement's fee may be missing from the last funding read. Not when the mark frames,
        fresh, still say the next settlement ahead that they already said ``FUNDING_TRAIL_MS`` before that
        read began: every settlement before it was listed by then, and none has come since. Anything
        unknown (no read yet, no frame, a silent stream, a schedule just moved) reads."""
        core, read = agent.core, self._funding_read_ms
        if core is None or read is None:
            return True
        book, now = core.store.funding, agent.exchange_ms()
        nxt, seen = book.next_funding_ms, book.next_seen_ms
        return not (nxt and seen and now < nxt and seen <= read - FUNDING_TRAIL_MS
                    and now - book.said_ms <= SCHEDULE_FRESH_MS)

    async def on_stop(self, agent: Any, within_s: float = 5.0) -> None:
        end = time.monotonic() + within_s
        self._start_check = None   # the stop's read is made whatever the start's would have been
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        if self._backfill_task is not None and not self._backfill_task.done():
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(asyncio.shield(self._backfill_task), min(2.0, within_s / 2))
        try:
            await asyncio.wait_for(self.backfill(agent, funding=True), max(0.1, min(3.0, end - time.monotonic())))
        except asyncio.TimeoutError:   # cut (a slow exchange at the stop's end): its fills read again by the next
            self.writer.note_hole({"trade_ms": agent.exchange_ms() - GAP_LOOKBACK_MS})
        except Exception:  # noqa: BLE001 - the holes it took are kept (restored) for the next agent
            pass
        holes = self.writer.status().get("holes")
        if holes:   # kept on disk: the symbol's next agent reads them (a retired symbol's stay short)
            log.warning("journal %s: stopped before the fills and funding lost on the way were read again from "
                        "the exchange (from %s); kept for the symbol's next agent", self.symbol, holes)
        with contextlib.suppress(Exception):
            self.snapshot(agent)

    async def close(self) -> None:
        # on a daemon thread, as the cursor's read: a database that does not answer never holds the exit
        await asyncio.wrap_future(in_own_thread(self.writer.close, 2.5))

    # ------------------------------------------------------------------ records built here

    def event(self, kind: str, *, reason: str | None = None, epoch: int | None = None,
              detail: Any = None, actor: str = "agent") -> None:
        import json

        row = {"uid": _uid(), "ts_ms": _now_ms(), "fleet": self.fleet, "account": self.account,
               "symbol": self.symbol, "epoch": epoch, "kind": kind[:40], "actor": actor, "reason": reason,
               "detail": json.dumps(detail, default=str, sort_keys=True) if detail is not None else None}
        self.writer.put(("row", "events", row))

    def snapshot(self, agent: Any) -> None:
        if agent.core is None:
            return
        ex = agent.exposure()
        row = {"uid": _uid(), "ts_ms": _now_ms(), **self._scope, "epoch": _epoch(agent),
               "position": float(ex.get("position") or 0.0), "entry_price": ex.get("entry_price"),
               "mark": ex.get("mark") or None, "mid": ex.get("mid") or None,
               "realized_pnl": ex.get("realized_pnl"), "unrealized_pnl": ex.get("unrealized_pnl"),
               "funding": ex.get("funding_pnl"), "commission": ex.get("commission"),
               "wallet": getattr(agent.core.store, "wallet_balance", None),
               "open_orders": ex.get("open_orders"), "state": agent.status().get("state")}
        if not isinstance(row["wallet"], (int, float)):
            row["wallet"] = None
        self.writer.put(("row", "snapshots", row))

    def gap(self, at_ms: int) -> None:
        """The user stream may have lost fills around ``at_ms`` (lost, a frame skipped): the trades since
        ``GAP_LOOKBACK_MS`` before it are read again by the next backfill, a hole kept on disk until
        then, whatever the stream writes meanwhile (its newer fills would move the journal's cursor
        past the gap)."""
        self.writer.note_hole({"trade_ms": at_ms - GAP_LOOKBACK_MS})
        now = time.monotonic()
        if now - self._gap_read_at >= GAP_READ_EVERY_S:   # at most this often; the hole waits for the next
            self._gap_read_at = now
            self.request_backfill()

    def _user_frames_skipped(self, agent: Any) -> bool:
        """Whether the user stream skipped a malformed frame since the last look (a fill may be in it)."""
        stream = getattr(getattr(agent, "user", None), "stream", None)
        old, before = self._user_stream, self._user_malformed
        skipped = old is not None and int(getattr(old, "malformed", 0)) > before   # (the one a swap replaced too)
        if stream is not old:
            before = 0   # a new stream counts from 0
        now = int(getattr(stream, "malformed", 0)) if stream is not None else 0
        self._user_stream, self._user_malformed = stream, now
        return skipped or (stream is not old and now > before)

    # ------------------------------------------------------------------ background work (agent's loop)

    async def _loop(self, agent: Any) -> None:
        s = self.settings
        next_snap = time.monotonic() + s.snapshot_interval_sec
        next_fill = time.monotonic() + s.backfill_interval_sec
        next_funding = time.monotonic() + s.funding_backfill_interval_sec
        while True:
            await asyncio.sleep(min(1.0, s.snapshot_interval_sec))
            now = time.monotonic()
            if self._user_frames_skipped(agent):
                self.gap(agent.exchange_ms())
            if now >= next_snap:
                next_snap = now + s.snapshot_interval_sec
                self.snapshot(agent)
            if now >= next_fill or (self._backfill_again and (self._backfill_task is None or self._backfill_task.done())):
                next_fill = now + s.backfill_interval_sec
                funding = now >= next_funding
                if funding:
                    next_funding = now + s.funding_backfill_interval_sec
                self.request_backfill(funding=funding)

    def request_backfill(self, funding: bool = False) -> None:
        """Backfill soon, off the caller's path; one at a time (a request during one runs after it).
        ``funding``: read income too."""
        agent = self._agent
        if agent is None:
            return
        self._funding_wanted = self._funding_wanted or funding
        if self._backfill_task is not None and not self._backfill_task.done():
            self._backfill_again = True
            return
        self._backfill_again = False
        self._backfill_task = asyncio.ensure_future(self._backfill_logged(agent))

    def _spawn_funding_backfill(self, t: int) -> None:
        """Read the fee of the frame at ``t`` from income, a few times as its record may trail the
        frame; no more once a row that recent is in (read here, or by the agent's own look-up)."""
        async def later() -> None:
            for delay in FUNDING_DELAYS:
                await asyncio.sleep(delay)
                seen = _max(self._fee_seen_ms, self._funding_cursor)
                if seen is not None and seen >= t - FUNDING_MATCH_MS:
                    return
                self.request_backfill(funding=True)
        task = asyncio.ensure_future(later())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def _backfill_logged(self, agent: Any) -> None:
        funding, self._funding_wanted = self._funding_wanted, False
        try:
            await self.backfill(agent, funding=funding)
        except Exception as exc:  # noqa: BLE001 - the next beat tries again
            self._funding_wanted = self._funding_wanted or funding
            self.backfills["errors"] += 1
            log.warning("journal %s: backfill failed: %r", self.symbol, exc)

    async def backfill(self, agent: Any, funding: bool = True) -> tuple[int, int]:
        """What the journal lacks since its last record, and from the lowest fill and funding lost on
        the way to it (the writer's holes), from userTrades and (``funding``, or a funding hole) income
        (FUNDING_FEE)."""
        if agent.client is None:
            return (0, 0)
        holes = self.writer.take_holes()
        self._reading = {}
        try:
            got = await self._backfill(agent, funding or "funding" in holes, holes)
        except BaseException:
            self.writer.restore_holes(holes)   # read again by the next backfill
            # and from where this one was to read: stream fills written meanwhile would move the cursor past it
            self.writer.note_hole(self._reading)
            raise
        if holes:
            log.warning("journal %s: fills and funding lost on the way to the journal read again from the "
                        "exchange (from %s): %d trades, %d funding rows", self.symbol, holes, *got)
            self.writer.holes_filled(holes)   # forgotten once the rows read are put away
        return got

    async def _backfill(self, agent: Any, funding: bool, holes: dict[str, int]) -> tuple[int, int]:
        client = agent.client
        engine = self.writer.engine()
        db_trade = db_fund = None
        if engine is not None:
            try:   # bounded (the engine's bounds), on a thread of its own: never the process's exit held
                db_trade, db_fund = await asyncio.wrap_future(in_own_thread(cursors, engine, self.account, self.symbol))
            except Exception as exc:  # noqa: BLE001 - the memory cursors (or the lookback) then
                log.warning("journal %s: cursor not read: %r", self.symbol, exc)
        trade_cur = _max(db_trade, self._trade_cursor)
        if "trade" in holes:   # from the lowest trade lost (ids grow per symbol)
            trade_cur = holes["trade"] - 1 if trade_cur is None else min(trade_cur, holes["trade"] - 1)
        lookback_ms = int(self.settings.backfill_lookback_hours * 3_600_000)
        epoch = _epoch(agent)
        n_trades = await self._trades_since(client, epoch, holes["trade_ms"], agent.exchange_ms()) \
            if "trade_ms" in holes else 0
        start = None if trade_cur is not None else agent.exchange_ms() - lookback_ms
        from_id = None if trade_cur is None else trade_cur + 1
        self._reading["trade" if from_id is not None else "trade_ms"] = from_id if from_id is not None else start
        while True:
            rows = await client.user_trades(self.symbol, start_time=start, from_id=from_id, limit=PAGE)
            fresh = [r for r in rows if trade_cur is None or int(r["id"]) > trade_cur]
            for r in fresh:
                self.writer.put(("trade", epoch, r))
            n_trades += len(fresh)
            if rows:
                top = max(int(r["id"]) for r in rows)
                trade_cur = _max(trade_cur, top)
            if len(rows) < PAGE:
                break
            start, from_id = None, trade_cur + 1  # type: ignore[operator]
        self._trade_cursor = _max(self._trade_cursor, trade_cur)
        self._reading.pop("trade", None)
        self._reading.pop("trade_ms", None)
        n_fund = await self._funding_part(agent, epoch, db_fund, lookback_ms, holes) if funding else 0
        if "funding" in holes:   # a clearance fee lost on the way left a funding hole too
            n_fund += await self._clearance_since(client, epoch, holes["funding"])
        self.backfills["runs"] += 1
        self.backfills["trades"] += n_trades
        self.backfills["funding"] += n_fund
        return n_trades, n_fund

    async def _funding_part(self, agent: Any, epoch: int | None, db_fund: int | None, lookback_ms: int,
                            holes: dict[str, int]) -> int:
        """The backfill's funding, its trades read (their cursor read at once: the stream's fills written
        meanwhile would move it past the trades to read): from the last read's cursor (on record, looked
        up once the database answers), a hole's time, or the database's newest fee; at the start only if
        a settlement may have come since the last read on record (``_start_read_wanted``)."""
        if not self._db_read_known:
            await self._adopt_record(agent, wait=self._start_check is not None)
        # its own read's cursor once it has one: the database's newest fee may be a row the agent's own
        # look-up handed over (``on_income_rows``), past a fee whose frame was lost and no read has seen
        fund_cur = self._funding_cursor if self._funding_cursor is not None else db_fund
        if "funding" in holes:
            fund_cur = holes["funding"] if fund_cur is None else min(fund_cur, holes["funding"])
        if self._start_check is not None:
            wanted = "funding" in holes or await self._start_read_wanted(agent, _max(db_fund, self._db_fund))
            self._start_check = None
            if not wanted:
                return 0
        return await self._backfill_funding(agent.client, epoch, fund_cur, lookback_ms, agent)

    async def _backfill_funding(self, client: Any, epoch: int | None, fund_cur: int | None, lookback_ms: int,
                                agent: Any) -> int:
        """The FUNDING_FEE income rows since ``fund_cur`` (or the lookback), paged; how many."""
        n_fund, found = 0, []
        began = agent.exchange_ms()
        start_ms = fund_cur if fund_cur is not None else began - lookback_ms
        first = start_ms
        self._reading["funding"] = start_ms
        while True:
            self.backfills["income_reads"] += 1
            rows = await client.income(self.symbol, "FUNDING_FEE", start_time=start_ms, limit=PAGE)
            for r in rows:
                self.writer.put(("income", epoch, r))
            found += rows
            n_fund += len(rows)
            if rows:
                fund_cur = _max(fund_cur, max(int(r["time"]) for r in rows))
            if len(rows) < PAGE or fund_cur is None or fund_cur <= start_ms:
                break
            start_ms = fund_cur
        take_journal_income(agent, found, began)   # and to the agent's books, those they wait for
        # read from here on (none found: from where this read began to look, not from nothing: the
        # database's newest fee may be a later one the agent's look-up handed over)
        self._funding_cursor = _max(self._funding_cursor, fund_cur if fund_cur is not None else first)
        self._funding_read_ms = _max(self._funding_read_ms, began)
        self._reading.pop("funding", None)
        # on record, behind the rows it read: a later start between the same settlements need not read again
        self.writer.put(("row", "funding_reads", {"uid": _uid(), "ts_ms": began, **self._scope, "epoch": epoch,
                                                  "cursor_ms": self._funding_cursor}))
        return n_fund

    async def _clearance_since(self, client: Any, epoch: int | None, start_ms: int) -> int:
        """The INSURANCE_CLEAR income rows (liquidation clearance fees) from a hole's time; how many."""
        self.backfills["income_reads"] += 1
        rows = await client.income(self.symbol, "INSURANCE_CLEAR", start_time=start_ms, limit=PAGE)
        for r in rows:
            self.writer.put(("income", epoch, r))
        return len(rows)

    async def _trades_since(self, client: Any, epoch: int | None, start_ms: int, agent_ms: int) -> int:
        """Every trade from ``start_ms`` (a gap's hole), paged by id; those the journal has already are
        not written twice (unique by trade id and side)."""
        n = 0
        oldest = agent_ms - TRADES_WINDOW_MS
        if start_ms < oldest:   # beyond what the exchange answers: read from its oldest
            log.warning("journal %s: a gap from %d is older than userTrades answers; read from %d", self.symbol,
                        start_ms, oldest)
            start_ms = oldest
        start, from_id = start_ms, None
        self._reading["trade_ms"] = start_ms
        while True:
            rows = await client.user_trades(self.symbol, start_time=start, from_id=from_id, limit=PAGE)
            for r in rows:
                self.writer.put(("trade", epoch, r))
            n += len(rows)
            if len(rows) < PAGE:
                break
            top = max(int(r["id"]) for r in rows)
            self._trade_cursor = _max(self._trade_cursor, top)
            start, from_id = None, top + 1
        self._reading.pop("trade_ms", None)
        return n

    # ------------------------------------------------------------------ the writer's thread

    def _convert(self, item: tuple) -> Iterable[Row]:
        kind = item[0]
        if kind == "row":
            return ((item[1], item[2]),)
        if kind == "sent":
            return self._sent_rows(*item[1:])
        if kind == "answer":
            return self._answer_rows(*item[1:])
        if kind == "update":
            return self._update_rows(*item[1:])
        if kind in ("trade", "income"):   # the exchange's rows, as read: one that does not read is skipped
            try:
                return (self._trade_row(item[1], item[2]),) if kind == "trade" else self._income_rows(item[1], item[2])
            except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
                self.bad_rows += 1
                log.warning("journal %s-%s: an exchange %s row that does not read is skipped: %r", self._scope["fleet"],
                            self.symbol, kind, exc)
        return ()

    def _sent_rows(self, ts: int, epoch: int | None, batch: Any, filters: Any) -> list[Row]:
        out = []
        for d in batch.items:
            price_ticks = getattr(d, "price_ticks", None)
            qty_steps = getattr(d, "qty_steps", None)
            out.append(("orders", {
                "uid": _uid(), "ts_ms": ts, **self._scope, "epoch": epoch, "client_order_id": d.client_order_id,
                "order_id": getattr(d, "order_id", None), "event": "sent", "request": batch.kind,
                "side": getattr(d, "side", None), "order_type": getattr(d, "order_type", "LIMIT" if batch.kind == "amend" else None),
                "price": filters.price_str(price_ticks) if filters is not None and price_ticks else None,
                "qty": filters.qty_str(qty_steps) if filters is not None and qty_steps else None,
                "reason": getattr(d, "reason", "ladder"),
            }))
        return out

    def _answer_rows(self, ts: int, epoch: int | None, batch: Any, results: list[Any]) -> list[Row]:
        from fleet.binance.errors import BinanceError, OutcomeUnknownError
        from fleet.binance.models import OrderInfo

        out = []
        for d, res in zip(batch.items, results):
            row = {"uid": _uid(), "ts_ms": ts, **self._scope, "epoch": epoch, "client_order_id": d.client_order_id,
                   "order_id": getattr(d, "order_id", None), "request": batch.kind, "side": getattr(d, "side", None),
                   "reason": getattr(d, "reason", "ladder")}
            if isinstance(res, OrderInfo):
                row.update(event="answer", order_id=res.order_id, status=res.status, order_type=res.type,
                           price=_s(res.price), qty=_s(res.orig_qty))
            elif isinstance(res, OutcomeUnknownError):
                row.update(event="unknown", detail=f"{res.code}: {res.msg}"[:500])
            elif isinstance(res, BinanceError):
                row.update(event="rejected", detail=f"{res.code}: {res.msg}"[:500])
            else:
                continue
            out.append(("orders", row))
        return out

    def _update_rows(self, epoch: int | None, ev: Any, mid: float | None, mark: float | None) -> list[Row]:
        out: list[Row] = [("orders", {
            "uid": _uid(), "ts_ms": ev.transaction_time or ev.event_time, **self._scope, "epoch": epoch,
            "client_order_id": ev.client_order_id, "order_id": ev.order_id, "event": "update", "request": None,
            "side": ev.side, "order_type": ev.order_type, "price": _s(ev.price), "qty": _s(ev.orig_qty),
            "status": ev.status, "reason": None,
            "detail": f"{ev.exec_type} filled {_s(ev.cum_filled_qty)}" + (f" expire {ev.expire_reason}" if ev.exec_type == "EXPIRED" else ""),
        })]
        # a fill: a trade, or the exchange's own order's (CALCULATED: a liquidation's or an ADL's, no fee), as
        # the agent books them (the backfill reads from the newest trade held: one missed here stayed missed)
        if ev.exec_type in ("TRADE", "CALCULATED") and ev.trade_id:
            out.append(("fills", {
                "ts_ms": ev.update_time or ev.transaction_time, **self._scope, "epoch": epoch, "trade_id": int(ev.trade_id),
                "order_id": ev.order_id, "client_order_id": ev.client_order_id, "side": ev.side,
                "price": _s(ev.last_filled_price), "qty": _s(ev.last_filled_qty), "fee": _s(ev.commission),
                "fee_asset": ev.commission_asset or None, "maker": bool(ev.is_maker),
                # the exchange's own order's fill (at a bankruptcy price) is no quote's: its mid would count
                # its loss as spread given up; without one it is inventory's (journal/pnl.py)
                "realized_pnl": _s(ev.realized_pnl), "mid": mid if ev.exec_type == "TRADE" else None, "mark": mark,
                "source": "stream",
            }))
        return out

    def _trade_row(self, epoch: int | None, r: dict[str, Any]) -> Row:
        return trade_row(self._scope, r)

    def _income_rows(self, epoch: int | None, r: dict[str, Any]) -> list[Row]:
        kind = r.get("incomeType")
        if kind not in INCOME_TYPES or r.get("symbol") not in (self.symbol, None, ""):
            return []
        return [("funding", {
            "ts_ms": int(r["time"]), **self._scope, "epoch": epoch, "income_id": int(r["tranId"]),
            "amount": _money(r["income"]), "asset": r.get("asset"), "income_type": kind,
        })]


def trade_row(scope: dict[str, Any], r: dict[str, Any]) -> Row:
    """A fills row from one of the exchange's userTrades rows (``scope``: fleet, account, symbol)."""
    return ("fills", {
        "ts_ms": int(r["time"]), **scope, "epoch": None, "trade_id": int(r["id"]),
        "order_id": int(r["orderId"]) if r.get("orderId") is not None else None, "client_order_id": None,
        "side": str(r["side"]), "price": _money(r["price"]), "qty": _money(r["qty"]),
        "fee": _money(r.get("commission")), "fee_asset": r.get("commissionAsset"),
        "maker": bool(r.get("maker")), "realized_pnl": _money(r.get("realizedPnl")),
        "mid": None, "mark": None, "source": "backfill",
    })


def _money(value: Any) -> str:
    """An amount of an exchange row as the exchange wrote it (absent: "0"); "NaN" or "Infinity" is a
    ValueError: a P&L summed over it would be NaN for good (rows are unique by their ids)."""
    return str(exchange_decimal(value))


def _epoch(agent: Any) -> int | None:
    grant = getattr(agent, "grant", None)
    return getattr(grant, "epoch", None)


def _max(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


def attach_journal(agent: Any, target: Target, *, fleet: str, account: str, symbol: str,
                   settings: Any = None) -> AgentJournal:
    """Give ``agent`` a journal (``agent.journal``); the agent runs as before if the database is down."""
    return AgentJournal(target, fleet=fleet, account=account, symbol=symbol, settings=settings).attach(agent)


def attach_from_spec(agent: Any, spec: dict[str, Any], fleet: str, state_dir: str = ".mmfleet") -> AgentJournal | None:
    """For the Ray actor: the journal the controller's agent spec describes (``spec["journal"]``)."""
    from fleet.config import JournalConfig

    from .db import target_of_settings

    doc = spec.get("journal")
    if doc is None:
        return None
    settings = JournalConfig.model_validate(doc)
    if not settings.enabled:
        return None
    return attach_journal(agent, target_of_settings(settings, state_dir, fleet), fleet=fleet,
                          account=spec["account"]["name"], symbol=spec["symbol"], settings=settings)
