"""The journal's writer: a bounded in-memory queue drained by a background thread in batches.

``put`` is all a trading loop ever does (a deque append); rows are built, batched and written in
the writer's thread, never on the quote path. When the database does not answer, batches go to a
local spool file (JSON lines) and the writer keeps probing; once the database is back the spool is
replayed first, in order. Every row is idempotent (unique trade id, income id or uid), so a replay
that is cut short and started again, or a backfill of what the stream already gave, adds nothing twice.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable

from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from .db import Target, make_engine, migrate
from .schema import TABLES, fills, funding

log = logging.getLogger("mmfleet.journal")

Row = tuple[str, dict[str, Any]]  # (table name, row)
Converter = Callable[[Any], Iterable[Row]]

RETRY_S = 1.0  # a database that did not answer is tried again this often


def _identity(item: Any) -> Iterable[Row]:
    return (item,)


def _insert(engine: Engine, table: Any) -> Any:
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(table)
    if table is fills:
        # A fill the backfill wrote first gets the stream's mid and mark when the frame comes later.
        ex = stmt.excluded
        return stmt.on_conflict_do_update(
            index_elements=["account", "symbol", "trade_id", "side"],
            set_={
                "mid": func.coalesce(table.c.mid, ex.mid),
                "mark": func.coalesce(table.c.mark, ex.mark),
                "client_order_id": func.coalesce(table.c.client_order_id, ex.client_order_id),
                "epoch": func.coalesce(table.c.epoch, ex.epoch),
            },
        )
    if table is funding:
        return stmt.on_conflict_do_nothing(index_elements=["account", "income_id"])
    return stmt.on_conflict_do_nothing(index_elements=["uid"])


def write_rows(engine: Engine, rows: list[Row]) -> int:
    """Insert rows (grouped by table, order kept within a table) in one transaction; returns the count."""
    by_table: dict[str, list[dict[str, Any]]] = {}
    for name, row in rows:
        by_table.setdefault(name, []).append(row)
    with engine.begin() as conn:
        for name, items in by_table.items():
            table = TABLES[name]
            cols = [c.name for c in table.columns if c.name != "id"]
            conn.execute(_insert(engine, table), [{c: r.get(c) for c in cols} for r in items])
    return len(rows)


class JournalWriter:
    """One per process and journal user (an agent, the controller). Thread-safe ``put``."""

    def __init__(
        self,
        target: Target,
        name: str,
        *,
        convert: Converter = _identity,
        queue_max: int = 100_000,
        batch_max: int = 500,
        flush_interval: float = 0.2,
        engine: Engine | None = None,
    ) -> None:
        self.target = target
        self.name = name
        self.convert = convert
        self.queue_max = queue_max
        self.batch_max = batch_max
        self.flush_interval = flush_interval
        self.spool_path = Path(target.spool_dir) / f"{_safe(name)}.spool.jsonl"
        self._q: deque[Any] = deque()
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._engine = engine
        self._down_since: float | None = None
        self._next_try = 0.0
        self.stats = {"written": 0, "spooled": 0, "replayed": 0, "dropped": 0, "db_errors": 0, "batches": 0}
        self.last_error: str | None = None

    # ------------------------------------------------------------------ the caller's side

    def start(self) -> "JournalWriter":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"journal-{self.name}", daemon=True)
            self._thread.start()
        return self

    def put(self, item: Any) -> bool:
        """Hand one item over (O(1), never blocks); False when the queue is full (the item is counted
        as dropped: fills and funding come back with the next backfill from the exchange)."""
        q = self._q
        if len(q) >= self.queue_max:
            self.stats["dropped"] += 1
            return False
        q.append(item)
        if len(q) >= self.batch_max:
            self._wake.set()
        return True

    @property
    def db_up(self) -> bool:
        return self._down_since is None and self._engine is not None

    @property
    def queued(self) -> int:
        return len(self._q)

    def status(self) -> dict[str, Any]:
        return {**self.stats, "queued": len(self._q), "db_up": self.db_up, "target": self.target.describe(),
                "spool": str(self.spool_path) if self.spool_path.exists() else None, "last_error": self.last_error}

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything handed over so far is written (or spooled); True if done in time."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not self._q and self._idle.is_set():
                return True
            self._wake.set()
            time.sleep(0.01)
        return False

    def close(self, timeout: float = 10.0) -> None:
        self.flush(timeout)
        self._closing = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self._engine is not None:
            self._engine.dispose()

    def engine(self) -> Engine | None:
        """The writer's engine once the database answered (for reads such as the backfill cursor)."""
        return self._engine if self.db_up else None

    # ------------------------------------------------------------------ the writer's thread

    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_interval)
            self._wake.clear()
            if self._closing and not self._q:
                return
            try:
                self._drain()
            except Exception as exc:  # noqa: BLE001 - the thread must outlive any one bad batch
                self.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                log.error("journal %s: writer error: %s", self.name, self.last_error)
                self._idle.set()

    def _drain(self) -> None:
        if not self._q and not self.spool_path.exists():
            return
        self._idle.clear()
        try:
            self._ensure_db()
            if self.db_up and self.spool_path.exists():
                self._replay()
            while self._q:
                items = []
                q = self._q
                while q and len(items) < self.batch_max:
                    items.append(q.popleft())
                rows: list[Row] = []
                for item in items:
                    rows.extend(self.convert(item))
                if not rows:
                    continue
                if self.db_up and self._write(rows):
                    self.stats["written"] += len(rows)
                else:
                    self._spool(rows)
        finally:
            self._idle.set()

    def _ensure_db(self) -> None:
        now = time.monotonic()
        if self.db_up:
            return
        if now < self._next_try:
            return
        self._next_try = now + RETRY_S
        try:
            if self._engine is None:
                engine = make_engine(self.target)
                migrate(engine)
                self._engine = engine
            else:
                with self._engine.connect() as conn:
                    conn.exec_driver_sql("SELECT 1")
        except (SQLAlchemyError, OSError) as exc:
            self._note_down(exc)
            return
        if self._down_since is not None:
            log.warning("journal %s: database %s answers again after %.1f s", self.name, self.target.describe(),
                        now - self._down_since)
        self._down_since = None

    def _write(self, rows: list[Row]) -> bool:
        try:
            write_rows(self._engine, rows)  # type: ignore[arg-type]
            self.stats["batches"] += 1
            return True
        except (OperationalError, DBAPIError, OSError) as exc:
            self._note_down(exc)
            return False

    def _note_down(self, exc: BaseException) -> None:
        self.stats["db_errors"] += 1
        self.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("journal %s: database %s not answering (%s); spooling to %s", self.name,
                        self.target.describe(), self.last_error, self.spool_path)
        self._next_try = time.monotonic() + RETRY_S

    def _spool(self, rows: list[Row]) -> None:
        self.spool_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.spool_path, "a", encoding="utf-8") as f:
            for name, row in rows:
                f.write(json.dumps({"t": name, "r": row}, separators=(",", ":"), default=str) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.stats["spooled"] += len(rows)

    def _replay(self) -> None:
        """The spool, in order, in batches; the file goes once all of it is in (a cut replay repeats)."""
        rows: list[Row] = []
        with open(self.spool_path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                try:
                    doc = json.loads(line)
                except ValueError:
                    continue  # a line cut by a crash mid-write
                rows.append((doc["t"], doc["r"]))
        for i in range(0, len(rows), self.batch_max):
            if not self._write(rows[i:i + self.batch_max]):
                return
        self.spool_path.unlink(missing_ok=True)
        self.stats["replayed"] += len(rows)
        log.info("journal %s: %d spooled rows replayed into %s", self.name, len(rows), self.target.describe())


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def cursors(engine: Engine, account: str, symbol: str) -> tuple[int | None, int | None]:
    """The newest trade id and funding time the journal holds for an account's symbol."""
    with engine.connect() as conn:
        trade = conn.execute(
            select(func.max(fills.c.trade_id)).where(fills.c.account == account, fills.c.symbol == symbol)
        ).scalar()
        fund = conn.execute(
            select(func.max(funding.c.ts_ms)).where(funding.c.account == account, funding.c.symbol == symbol)
        ).scalar()
    return (int(trade) if trade is not None else None, int(fund) if fund is not None else None)
