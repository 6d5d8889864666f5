"""The journal's writer: a bounded in-memory queue drained by a background thread in batches.

``put`` is all a trading loop ever does (a deque append); rows are built, batched and written in
the writer's thread, never on the quote path. When the database does not answer, batches go to a
local spool file (JSON lines) and the writer keeps probing; once the database is back the spool is
replayed first, in order. Every row is idempotent (unique trade id, income id or uid), so a replay
that is cut short and started again, or a backfill of what the stream already gave, adds nothing twice.

Nothing is lost without a trace. Rows the spool cannot take either (a full or read-only disk) are
held in memory, up to ``queue_max``, and tried again; a close that cannot wait for a stalled database
puts what is left into the spool from the closing thread. A row that is lost all the same (the queue
or the held rows full, the spool unwritable at the close) is counted (``dropped``), logged as an ERROR
(at most once a minute), and, if it is a fill or a funding payment, leaves a *hole*: the lowest trade
id and funding time lost, which the recorder's next backfill reads again from the exchange
(``take_holes``). The holes are kept in ``<name>.holes.json`` beside the spool from the moment they
are known until the rows the backfill read for them are in the journal or the spool (a marker queued
behind them, ``holes_filled``), so neither a SIGKILL nor a backfill cut short forgets one (a disk that
refuses that small file too is said as an ERROR). A row the database refuses (a value it does not
take: not an outage) is written apart from its batch's others and kept in ``<name>.rejected.jsonl``,
counted and logged, so one bad row never stalls the journal; a batch whose every row is refused (a
read-only or failed-over database) is an outage. The spool is replayed from a file of its own
(``<name>.replaying.jsonl``), so rows spooled meanwhile are never removed with it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable, NamedTuple

from sqlalchemy import case, func, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DataError, InterfaceError, InternalError, OperationalError, SQLAlchemyError

from .db import WRITER_BOUNDS, Bounds, JournalConfigError, Target, answering, make_engine, migrate
from .schema import TABLES, fills, funding, funding_reads

log = logging.getLogger("mmfleet.journal")
SPOOL_LOOKBACK_MS = 300_000   # before a spool's first row: a cut line was written before its readable neighbours
FILE_CHECK_S = 5.0   # how often a SQLite journal's file is looked for (removed or replaced under it)
REREAD_MS = 7 * 86_400_000 - 3_600_000   # a new journal file reads the trades the exchange lists again

Row = tuple[str, dict[str, Any]]  # (table name, row)
Converter = Callable[[Any], Iterable[Row]]

RETRY_S = 1.0  # a database that did not answer is tried again this often
SAY_LOSS_S = 60.0  # rows lost are logged at most this often (each one counted)
# the database not answering or not writable (a read-only standby is an InternalError); anything else: the row
OUTAGE = (OperationalError, InterfaceError, InternalError, OSError)
# a row's own values refused: by the database (DataError), or by its driver before it (sqlite3 raises
# OverflowError for an integer beyond 64 bits, UnicodeEncodeError for a lone surrogate; neither wrapped).
# Anything else a write raises is not taken for the rows' fault: they are spooled, as in an outage.
VALUE_ERRORS = (DataError, OverflowError, UnicodeError)
ROW_ERRORS = (SQLAlchemyError, OverflowError, UnicodeError)
_FILLED = object()   # (_FILLED, holes) queued behind a backfill's rows: once they are put away, its holes are filled


def _is_filled(item: Any) -> bool:
    return type(item) is tuple and len(item) == 2 and item[0] is _FILLED


def _identity(item: Any) -> Iterable[Row]:
    return (item,)


def _insert(engine: Engine, table: Any) -> Any:
    if engine.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(table)
    if table is fills:
        # A fill the backfill wrote first gets the stream's mid and mark when the frame comes later; a
        # fill the stream wrote first takes the exchange's trade list's money when the backfill reads it
        # (a frame may lack its price, quantity, fee or realized P&L, read as 0).
        ex = stmt.excluded
        listed = ex.source == "backfill"
        return stmt.on_conflict_do_update(
            index_elements=["account", "symbol", "trade_id", "side"],
            set_={
                "mid": func.coalesce(table.c.mid, ex.mid),
                "mark": func.coalesce(table.c.mark, ex.mark),
                "client_order_id": func.coalesce(table.c.client_order_id, ex.client_order_id),
                "epoch": func.coalesce(table.c.epoch, ex.epoch),
                **{name: case((listed, getattr(ex, name)), else_=table.c[name])
                   for name in ("price", "qty", "fee", "fee_asset", "realized_pnl", "maker")},
            },
        )
    if table is funding:
        return stmt.on_conflict_do_nothing(index_elements=["account", "income_type", "income_id"])
    return stmt.on_conflict_do_nothing(index_elements=["uid"])


def _sqlite_file(url: str) -> tuple[str, int] | None:
    """A SQLite journal's file and its inode (None for another database or an in-memory one)."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if not u.drivername.startswith("sqlite") or not u.database or u.database == ":memory:":
        return None
    try:
        return u.database, os.stat(u.database).st_ino
    except OSError:
        return None


def _file_changed(file: tuple[str, int] | None) -> str | None:
    """Whether a SQLite journal's file was "removed" or "replaced" since it was opened (None: neither)."""
    if file is None:
        return None
    path, inode = file
    try:
        return None if os.stat(path).st_ino == inode else "replaced"
    except FileNotFoundError:
        return "removed"


def write_rows(engine: Engine, rows: list[Row]) -> int:
    """Insert rows (grouped by table, order kept within a table) in one transaction; returns the count."""
    by_table: dict[str, list[dict[str, Any]]] = {}
    for name, row in rows:
        by_table.setdefault(name, []).append(row)
    with answering(engine), engine.begin() as conn:
        for name, items in by_table.items():
            table = TABLES[name]
            cols = [(c.name, _default(c)) for c in table.columns if c.name != "id"]
            conn.execute(_insert(engine, table), [{c: _storable(r.get(c, d)) for c, d in cols} for r in items])
    return len(rows)


def _default(column: Any) -> Any:
    """A column's own default for a row without it (a row spooled before the column was added)."""
    default = column.default
    return default.arg if default is not None and default.is_scalar else None


def _storable(value: Any) -> Any:
    """A NUL character shown as ``\\u0000``: PostgreSQL's text holds none (a kill reason may carry one),
    and a row refused for it would be refused again at every replay."""
    return value.replace("\x00", "\\u0000") if isinstance(value, str) and "\x00" in value else value


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
        bounds: Bounds = WRITER_BOUNDS,
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
        self.bounds = bounds
        self._down_since: float | None = None
        self._trying = False   # this drain writes to the database (up, or down and answering a probe)
        self._replaying = _Replay()
        self._next_try = 0.0
        self.stats = {"written": 0, "spooled": 0, "replayed": 0, "dropped": 0, "db_errors": 0, "batches": 0,
                      "held": 0, "rejected": 0, "file_replaced": 0}
        self._file: tuple[str, int] | None = None   # a SQLite journal's path and inode, once open
        self._file_checked = 0.0
        self._last_error: str | None = None
        self.last_error_at: float | None = None   # when (Unix s): an error long past is not the state now
        self.holes_path = self.spool_path.with_name(f"{_safe(name)}.holes.json")
        self.rejects_path = self.spool_path.with_name(f"{_safe(name)}.rejected.jsonl")
        self.replay_path = self.spool_path.with_name(f"{_safe(name)}.replaying.jsonl")
        self._closed = False
        self._held: deque[Row] = deque()       # rows neither the database nor the spool took: tried again
        self._in_flight: list[Row] = []        # the batch the thread is writing or spooling
        self._lock = threading.Lock()
        self._holes_file = threading.Lock()   # the holes' file written by one thread at a time (_keep_holes)
        self._holes: dict[str, int] = _read_holes(self.holes_path)   # "trade": lowest id lost, "funding": time
        self._holes_seen = _text_of(self.holes_path)   # the holes file as this writer last read or wrote it
        self._out: dict[str, int] = {}   # holes a backfill took, until its rows are put away
        self._loss_said = 0.0

    # ------------------------------------------------------------------ the caller's side

    def start(self) -> "JournalWriter":
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"journal-{self.name}", daemon=True)
            self._thread.start()
        return self

    def put(self, item: Any) -> bool:
        """Hand one item over (O(1), never blocks); False when the queue is full: the item is lost,
        counted and said, its fill or funding a hole the next backfill reads again."""
        q = self._q
        if len(q) >= self.queue_max or self._closed:
            self._lose(self._converted(item), "the writer has closed" if self._closed
                       else f"the queue is full ({self.queue_max} items)")
            return False
        q.append(item)
        if len(q) >= self.batch_max:
            self._wake.set()
        return True

    @property
    def last_error(self) -> str | None:
        """The writer's last error (the database's, the spool's), kept after it recovers, with its time."""
        return self._last_error

    @last_error.setter
    def last_error(self, error: str | None) -> None:
        self._last_error, self.last_error_at = error, time.time()

    @property
    def db_up(self) -> bool:
        return self._down_since is None and self._engine is not None

    @property
    def queued(self) -> int:
        return len(self._q)

    def status(self) -> dict[str, Any]:
        with self._lock:
            holes = dict(self._holes)
        return {**self.stats, "queued": len(self._q), "held_now": len(self._held), "db_up": self.db_up,
                "target": self.target.describe(), "spool": str(self.spool_path) if self.spool_path.exists() else None,
                "holes": holes, "last_error": self.last_error, "last_error_at": self.last_error_at}

    # ------------------------------------------------------------------ rows lost, and the holes they leave

    def take_holes(self) -> dict[str, int]:
        """The lowest trade id and funding time lost (the backfill reads from there), with any a backfill
        took before without filling them; kept on disk until :meth:`holes_filled`'s marker is put away,
        given back with :meth:`restore_holes` if the backfill fails."""
        with self._lock:
            _merge_holes(self._out, self._holes)
            self._holes = {}
            return dict(self._out)

    def restore_holes(self, holes: dict[str, int]) -> None:
        with self._lock:
            _merge_holes(self._holes, holes)
        self._keep_holes()

    def note_hole(self, holes: dict[str, int]) -> None:
        """Fills or funding the journal may lack without a row lost here (a user stream gap, a backfill
        that failed before its read): ``trade`` (the lowest trade id), ``trade_ms`` (the time trades
        are read again from), ``funding`` (time); kept on disk until a backfill has read them."""
        if not holes:
            return
        with self._lock:
            grew = any(self._holes.get(k, v + 1) > v for k, v in holes.items())
            _merge_holes(self._holes, holes)
        if grew:
            self._keep_holes()

    def holes_filled(self, holes: dict[str, int]) -> None:
        """A backfill handed over the rows for the holes it took (``holes``): once the writer has put
        them away (a marker queued behind them), those holes are forgotten, on disk too; holes another
        backfill took meanwhile stay until their own marker."""
        self._q.append((_FILLED, dict(holes)))
        self._wake.set()

    def _filled(self, holes: dict[str, int]) -> None:
        with self._lock:
            for k, v in holes.items():
                if self._out.get(k) == v:
                    del self._out[k]
        self._keep_holes()

    def _keep_holes(self) -> None:
        """The holes known and taken, on disk (atomically), or the file gone when there are none. One
        write at a time, each of the holes as they are when it begins: the writer's thread and the
        agent's loop wrote one temp file together, one renamed the other's (ENOENT), and the file could
        be left without the newest hole. The temp file is this writer's own: a stopping agent's writer and
        its successor's, of one name, may write at once; and a writer left without holes removes the file
        only if it still holds what this writer read or wrote (not a successor's holes)."""
        with self._holes_file:
            with self._lock:
                holes = dict(self._holes)
                _merge_holes(holes, self._out)
            tmp = self.holes_path.with_name(f".{self.holes_path.name}.{os.getpid()}.{id(self):x}.tmp")
            try:
                if not holes:
                    if self._holes_seen is not None and _text_of(self.holes_path) == self._holes_seen:
                        self.holes_path.unlink(missing_ok=True)
                    self._holes_seen = None
                    return
                self.holes_path.parent.mkdir(parents=True, exist_ok=True)
                text = json.dumps(holes)
                tmp.write_text(text)
                os.replace(tmp, self.holes_path)
                self._holes_seen = text
            except OSError as exc:
                with contextlib.suppress(OSError):
                    tmp.unlink(missing_ok=True)
                log.error("journal %s: holes %s not kept on disk (%s): a restart before the next backfill would "
                          "not know of them", self.name, holes, exc)

    def _lose(self, rows: list[Row], why: str) -> None:
        """Rows that will not be written: counted, said (at most once a minute), holes noted."""
        with self._lock:
            self.stats["dropped"] += len(rows)
            new = _holes_of(rows)
            grew = any(self._holes.get(k, v + 1) > v for k, v in new.items())
            _merge_holes(self._holes, new)
            holes = dict(self._holes)
        if grew:
            self._keep_holes()
        now = time.monotonic()
        if now - self._loss_said >= SAY_LOSS_S:
            self._loss_said = now
            log.error("journal %s: %d rows lost so far (%s); fills and funding from %s are read again from the "
                      "exchange by the next backfill, the other rows are gone", self.name, self.stats["dropped"], why,
                      holes or "nothing")

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything handed over so far is written (or spooled); True if done in time."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if not self._q and not self._held and self._idle.is_set():
                return True
            self._wake.set()
            time.sleep(0.01)
        return False

    def replay_now(self) -> bool:
        """The name's spool put into the database on the caller's thread, for a process that writes
        nothing of its own (``python -m fleet journal replay``); True when what it read is all in (a live
        writer of the name may have spooled more since). Beside such a writer every row is idempotent, and
        a replay removes only the file it read."""
        if not self.spool_path.exists() and not self.replay_path.exists():
            return True
        self._trying = self._ensure_db()
        return self._trying and self._replay()

    def close(self, timeout: float = 10.0) -> None:
        """Write what is handed over (``timeout`` at most), then stop the thread. A database that does not
        answer in time: what is left (queued, held, the batch in flight) goes to the spool from here,
        and the holes of anything lost are persisted for the next start."""
        done = self.flush(timeout)
        self._closing = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(0.0 if not done else timeout)
        if not done or self._held or (self._thread is not None and self._thread.is_alive()):
            self._spool_what_is_left()
        self._closed = True   # a row handed over from now on is lost, and counted
        if self._engine is not None and (self._thread is None or not self._thread.is_alive()):
            self._engine.dispose()

    def _spool_what_is_left(self) -> None:
        rows = list(self._in_flight) + list(self._held)
        self._held.clear()
        while self._q:
            try:
                item = self._q.popleft()
            except IndexError:   # the thread took the last one meanwhile
                break
            if not _is_filled(item):   # (its holes stay on disk: the next start reads them again)
                rows.extend(self._converted(item))
        if not rows:
            return
        try:
            self._spool(rows)
            log.warning("journal %s: database %s did not answer before the close: %d rows spooled to %s",
                        self.name, self.target.describe(), len(rows), self.spool_path)
        except OSError as exc:
            self._lose(rows, f"closing with the database and the spool unavailable: {exc}")

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
                self.last_error = _line(exc)
                log.error("journal %s: writer error: %s", self.name, self.last_error)
                self._idle.set()

    def _drain(self) -> None:
        if not self._q and not self._held and not self.spool_path.exists() and not self.replay_path.exists():
            return
        self._idle.clear()
        try:
            self._trying = self._ensure_db()
            if self._trying and (self.replay_path.exists() or self.spool_path.exists()):
                self._replay()
            if self._held and not self._put_away(list(self._held), held=True):
                return   # neither the database nor the spool takes rows: the queue waits its turn
            while self._q:
                items = []
                q = self._q
                while q and len(items) < self.batch_max:
                    items.append(q.popleft())
                rows: list[Row] = []
                filled: Any = False
                for item in items:
                    if _is_filled(item):
                        filled = item[1]
                    else:
                        rows.extend(self._converted(item))
                if rows and not self._put_away(rows):
                    return   # (held: a marker among them is dropped, its holes stay on disk)
                if filled is not False:
                    self._filled(filled)
        finally:
            self._in_flight = []
            self._idle.set()

    def _converted(self, item: Any) -> list[Row]:
        """An item's rows; one that cannot be built (a value no row takes) is counted, kept apart and said,
        never the end of its batch."""
        try:
            return self.convert(item)
        except Exception as exc:  # noqa: BLE001 - one bad item must not take its batch's others with it
            self.stats["rejected"] += 1
            self.last_error = _line(exc)
            log.error("journal %s: a %s item could not be made a row (%s); kept in %s", self.name,
                      item[0] if isinstance(item, tuple) and item else type(item).__name__, self.last_error,
                      self.rejects_path)
            with contextlib.suppress(OSError, ValueError, TypeError):
                _append_lines(self.rejects_path, [("unconverted", {"item": repr(item)[:4000]})])
            return []

    def _put_away(self, rows: list[Row], held: bool = False) -> bool:
        """Rows into the database, else the spool, else held in memory (False: nothing takes rows now)."""
        self._in_flight = rows
        if self._trying and self._write(rows):
            self.stats["written"] += len(rows)
        else:
            try:
                self._spool(rows)
            except OSError as exc:
                if not held:
                    self._hold(rows, exc)
                return False
        if held:
            self._held.clear()
        return True

    def _hold(self, rows: list[Row], exc: OSError) -> None:
        """Rows the spool did not take either: kept in memory to try again, up to ``queue_max``."""
        self.last_error = f"spool {self.spool_path}: {exc}"
        self._held.extend(rows)
        self.stats["held"] += len(rows)
        over = len(self._held) - self.queue_max
        if over > 0:
            self._lose([self._held.popleft() for _ in range(over)], f"the spool does not take rows: {exc}")
        elif time.monotonic() - self._loss_said >= SAY_LOSS_S:
            self._loss_said = time.monotonic()
            log.error("journal %s: neither the database nor the spool takes rows (%s): %d held in memory",
                      self.name, exc, len(self._held))

    def _ensure_db(self) -> bool:
        """Whether this drain writes to the database: it is up, or it was down and answers a probe now.
        It is up again only once a write went in (:meth:`_answered`): one that answers a probe but
        refuses writes (a table locked, a full disk) stays down, said once, its rows spooled."""
        now = time.monotonic()
        if self.db_up:
            if now - self._file_checked >= FILE_CHECK_S:
                self._file_checked = now
                self._check_file()
            return self.db_up
        if now < self._next_try:
            return False
        self._next_try = now + RETRY_S
        try:
            if self._engine is None:
                self._engine = _opened(self.target, self.bounds)
            else:
                with answering(self._engine), self._engine.connect() as conn:
                    conn.exec_driver_sql("SELECT 1")
        except (SQLAlchemyError, OSError, JournalConfigError) as exc:   # (a password file not there yet)
            self._note_down(exc)
            return False
        self._file = _sqlite_file(self.target.url)
        return True

    def _answered(self) -> None:
        """A write went in: a database that was down is up again, said once."""
        if self._down_since is not None:
            log.warning("journal %s: database %s answers again after %.1f s", self.name, self.target.describe(),
                        time.monotonic() - self._down_since)
            self._down_since = None

    def _check_file(self) -> None:
        """A SQLite journal whose file was removed or replaced under it (its connections would write on
        into the removed file, unseen): said, counted, and a new file made; the trades and funding of
        the days the exchange lists are read into it again (orders, answers and events of the old file
        are not)."""
        what = _file_changed(self._file)
        if what is None:
            return
        path = self._file[0]   # type: ignore[index]
        self.stats["file_replaced"] += 1
        log.error("journal %s: the database file %s was %s under the journal: writing to a new one; the rows "
                  "before are in the old file only, the exchange's trades and funding of the last 7 days are "
                  "read again", self.name, path, what)
        if self._engine is not None:
            self._engine.dispose()
        self._engine, self._file, self._next_try = None, None, 0.0
        self._note_down(FileNotFoundError(path))
        since = int(time.time() * 1000) - REREAD_MS
        self.note_hole({"trade_ms": since, "funding": since})

    def _write(self, rows: list[Row]) -> bool:
        try:
            write_rows(self._engine, rows)  # type: ignore[arg-type]
            self.stats["batches"] += 1
            self._answered()
            return True
        except OUTAGE as exc:
            self._note_down(exc)
            return False
        except ROW_ERRORS:   # a row the database (or its driver) does not take (too long, not null ...): not an outage
            return self._write_each(rows)
        except Exception as exc:  # noqa: BLE001 - not the rows' fault as far as is known: spooled, kept, said
            self._note_down(exc)
            return False

    def _write_each(self, rows: list[Row]) -> bool:
        """The batch row by row: those refused are kept apart (``<name>.rejected.jsonl``) and said; a batch
        whose every row is refused is the database's state, not the rows': an outage."""
        refused: list[tuple[Row, Exception]] = []
        for row in rows:
            try:
                write_rows(self._engine, [row])  # type: ignore[arg-type]
            except OUTAGE as exc:
                self._note_down(exc)
                return False
            except ROW_ERRORS as exc:
                refused.append((row, exc))
            except Exception as exc:  # noqa: BLE001 - as in _write: spooled, kept
                self._note_down(exc)
                return False
        # every row refused: the database's state (a table missing), not the rows', unless each row's
        # own values were refused (DataError, or the driver's: a value too long or out of range)
        if len(rows) > 1 and len(refused) == len(rows) and not all(isinstance(e, VALUE_ERRORS) for _, e in refused):
            self._note_down(refused[0][1])
            return False
        for row, exc in refused:
            self.stats["rejected"] += 1
            self.last_error = _line(exc)
            log.error("journal %s: the database refused a %s row (%s); kept in %s", self.name, row[0],
                      self.last_error, self.rejects_path)
            with contextlib.suppress(OSError):
                _append_lines(self.rejects_path, [row])
        self.stats["batches"] += 1
        self._answered()
        return True

    def _note_down(self, exc: BaseException) -> None:
        self.stats["db_errors"] += 1
        self.last_error = _line(exc)
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning("journal %s: database %s not answering (%s); spooling to %s", self.name,
                        self.target.describe(), self.last_error, self.spool_path)
        self._trying = False   # the rest of this drain is spooled
        self._next_try = time.monotonic() + RETRY_S

    def _spool(self, rows: list[Row]) -> None:
        _append_lines(self.spool_path, rows)
        self.stats["spooled"] += len(rows)

    def _replay(self) -> bool:
        """The spool, in order, a batch at a time from where the last try stopped, never all of it in
        memory; from a file of its own (rows spooled meanwhile go to a new spool, replayed next), which
        goes once all of it is in (a replay cut by a restart starts it again: rows are idempotent). True
        once the file read is all in. Another writer of the name (a stopping agent and its successor, the
        ``journal replay`` command) may replay the same file: only the file read is removed, never one
        another writer renamed there meanwhile (its rows would be lost)."""
        if not self.replay_path.exists():
            try:
                os.replace(self.spool_path, self.replay_path)
            except FileNotFoundError:
                return True
            self._replaying = _Replay()
        done = self._replaying
        try:
            if not done.run(self.replay_path, self.batch_max, self._write):
                return False   # from the batch refused, at the next try
        except FileNotFoundError:   # another writer of the name replayed it and removed it
            self._replaying = _Replay()
            return True
        if not done.counted:
            done.counted = True
            self._replayed(done)
        # the file goes last: a crash before this replays it again (its rows are idempotent), a crash
        # after it no longer loses the hole of its cut rows (noted after the file went, it was lost)
        try:
            if _stat_identity(os.stat(self.replay_path)) == done.file:
                self.replay_path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:   # counted once, said once; tried again at the next drain
            if not done.unlink_said:
                done.unlink_said = True
                log.error("journal %s: the replayed spool %s could not be removed: %r", self.name, self.replay_path,
                          exc)
            return True
        self._replaying = _Replay()
        return True

    def _replayed(self, done: "_Replay") -> None:
        """A spool's replay is in: its rows and the lines that did not read counted, their hole noted."""
        if done.cut:
            with self._lock:
                self.stats["dropped"] += done.cut
            # fills and funding among them: read again from the exchange from the spool's first time on
            # (later rows would move the backfill's cursor past them)
            if done.first_ms is not None:
                since = done.first_ms - SPOOL_LOOKBACK_MS
                self.note_hole({"trade_ms": since, "funding": since})
            log.error("journal %s: %d spooled rows were unreadable (cut mid-write by a crash or a full disk), "
                      "skipped; fills and funding %s", self.name, done.cut,
                      "from the spool's first time on are read again from the exchange" if done.first_ms is not None
                      else "among them are read again by the backfill only if later ones did not move its cursor")
        self.stats["replayed"] += done.rows
        log.info("journal %s: %d spooled rows replayed into %s", self.name, done.rows, self.target.describe())


class _Batch(NamedTuple):
    """Rows of a spool read in one go, the lines among them that did not read, and where they end."""

    rows: list[Row]
    cut: int
    first_ms: int | None
    offset: int


class _Replay:
    """How far a spool's replay is: the offset in its file up to which its rows are in, how many, the
    lines that did not read (cut mid-write) and the earliest time of those that did."""

    def __init__(self) -> None:
        self.start(None)

    def start(self, file: tuple[int, int, int] | None) -> None:
        """From the start of ``file`` (device, inode and change time, which a rename sets: the file the
        offset is in, even where a freed inode's number was taken again)."""
        self.offset = 0
        self.rows = 0
        self.cut = 0
        self.counted = False   # its rows and cut lines counted (once, though its file's removal failed)
        self.unlink_said = False   # that removal's failure said (once)
        self.first_ms: int | None = None
        self.file = file

    def run(self, path: Path, n: int, write: Callable[[list[Row]], bool]) -> bool:
        """The rows from the offset on, ``n`` at a time, each batch written before the next is read;
        False once a write fails (the offset at that batch). Another file at the path (another writer of
        the name replayed it and renamed a new spool there) is read from its start: an offset carried
        over would skip its first rows, unsaid."""
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if self.file != _stat_identity(st):
                self.start(_stat_identity(st))
            while True:
                batch = self.next_batch(f, n)
                if batch.offset == self.offset:
                    return True
                if batch.rows and not write(batch.rows):
                    return False
                self.took(batch)

    def next_batch(self, f: Any, n: int) -> _Batch:
        """Up to ``n`` rows from the offset on (the offset unchanged: the end of the file)."""
        f.seek(self.offset)
        rows: list[Row] = []
        cut = 0
        first: int | None = None
        while len(rows) < n:
            line = f.readline()
            if not line:
                break
            line = line.decode("utf-8", "replace").strip()
            if not line:
                continue
            try:
                doc = json.loads(line)
                rows.append((doc["t"], doc["r"]))
            except (ValueError, KeyError, TypeError):
                cut += 1   # a line cut by a crash (or a full disk) mid-write
                continue
            ts = doc["r"].get("ts_ms") if isinstance(doc["r"], dict) else None
            if isinstance(ts, int) and (first is None or ts < first):
                first = ts
        return _Batch(rows, cut, first, f.tell())

    def took(self, batch: _Batch) -> None:
        self.offset = batch.offset
        self.rows += len(batch.rows)
        self.cut += batch.cut
        if batch.first_ms is not None and (self.first_ms is None or batch.first_ms < self.first_ms):
            self.first_ms = batch.first_ms


def _stat_identity(st: os.stat_result) -> tuple[int, int, int]:
    """A file as a replay knows it: device, inode and change time (which a rename sets)."""
    return st.st_dev, st.st_ino, st.st_ctime_ns


def _opened(target: Target, bounds: Bounds) -> Engine:
    """A new engine on the journal, its schema made or upgraded (the engine disposed if that fails)."""
    engine = make_engine(target, bounds)
    try:
        migrate(engine)
    except BaseException:
        engine.dispose()
        raise
    return engine


def _line(exc: BaseException) -> str:
    text = str(exc).splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


def _append_lines(path: Path, rows: list[Row]) -> None:
    """Rows appended to a JSON-lines file and synced (OSError: not written). A file whose last line was
    cut mid-write (a crash, a full disk) gets its line ended first, so that the cut row alone is lost,
    not also the first one appended after it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = "".join(json.dumps({"t": name, "r": row}, separators=(",", ":"), default=str) + "\n"
                   for name, row in rows).encode("utf-8", "backslashreplace")
    with open(path, "a+b") as f:   # every write goes to the end, whatever was read
        if f.seek(0, os.SEEK_END) > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                data = b"\n" + data
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _holes_of(rows: list[Row]) -> dict[str, int]:
    """The lowest trade id and funding time among ``rows``."""
    out: dict[str, int] = {}
    for name, row in rows:
        key, value = ("trade", row.get("trade_id")) if name == "fills" else \
            ("funding", row.get("ts_ms")) if name == "funding" else (None, None)
        if key is not None and isinstance(value, int):
            _merge_holes(out, {key: value})
    return out


def _merge_holes(into: dict[str, int], more: dict[str, int]) -> None:
    for key, value in more.items():
        into[key] = min(into.get(key, value), value)


def _read_holes(path: Path) -> dict[str, int]:
    """The holes a close persisted ({} when none, or unreadable: said)."""
    try:
        doc = json.loads(path.read_text())
        return {k: int(v) for k, v in doc.items() if k in ("trade", "trade_ms", "funding")}
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        log.error("journal: holes file %s unreadable (%r): ignored", path, exc)
        return {}


def _text_of(path: Path) -> str | None:
    """A small file's text; None when it is not there or cannot be read."""
    try:
        return path.read_text()
    except (OSError, ValueError):
        return None


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def cursors(engine: Engine, account: str, symbol: str) -> tuple[int | None, int | None]:
    """The newest trade id and funding time the journal holds for an account's symbol (bounded as the
    engine's writes are)."""
    with answering(engine), engine.connect() as conn:
        trade = conn.execute(
            select(func.max(fills.c.trade_id)).where(fills.c.account == account, fills.c.symbol == symbol)
        ).scalar()
        fund = conn.execute(
            select(func.max(funding.c.ts_ms)).where(funding.c.account == account, funding.c.symbol == symbol,
                                                    funding.c.income_type == "FUNDING_FEE")
        ).scalar()
    return (int(trade) if trade is not None else None, int(fund) if fund is not None else None)


class FundingRead(NamedTuple):
    """A funding read on record: when it began, and the cursor it left."""

    ts_ms: int
    cursor_ms: int


def last_funding_read(engine: Engine, fleet: str, account: str, symbol: str) -> FundingRead | None:
    """The journal's newest funding read of a fleet's symbol on an account (None: none on record)."""
    c = funding_reads.c
    with answering(engine), engine.connect() as conn:
        row = conn.execute(
            select(c.ts_ms, c.cursor_ms)
            .where(c.fleet == fleet, c.account == account, c.symbol == symbol)
            .order_by(c.ts_ms.desc()).limit(1)
        ).first()
    return FundingRead(int(row[0]), int(row[1])) if row is not None else None
