"""Where the journal lives and how to open it: SQLite (WAL) by default, PostgreSQL with a URL.

The password of a PostgreSQL journal is never in the config, a URL or an argument: it is read here,
from the environment variable or the file the config names, at every new connection (a password
changed in its file is taken without a restart), and handed to the driver only.

A journal's writer and its reads are bounded (:class:`Bounds`): the server ends a statement that runs
or waits for a lock too long, and a call the server does not answer at all (stopped, unreachable)
has its connections cut here, so a hung database fails a call instead of holding its thread.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import logging
import os
import socket
import threading
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url

from agents.logging import redact_in_process_logs
from fleet.config import url_holds_password

log = logging.getLogger("mmfleet.journal")
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
PG_LOCK_KEY = 0x6D6D6A6E  # advisory lock id: one migration at a time across a cluster's agents


class JournalConfigError(ValueError):
    """The journal cannot be opened as configured; the message says what to change."""


@dataclass(frozen=True)
class Bounds:
    """How long a call of the journal waits on PostgreSQL. The server ends a statement running longer
    than ``statement_s`` or waiting for a lock longer than ``lock_s`` (a table locked by maintenance, a
    statement timeout); a call the server has not answered in ``answer_s`` (a stopped server, a network
    that drops everything) has its engine's connections cut; a connection not made in ``connect_s``
    fails. SQLite's wait for another writer's lock is its busy timeout (``SQLITE_BUSY_S``)."""

    statement_s: float = 10.0
    lock_s: float = 5.0
    answer_s: float = 15.0
    connect_s: int = 5


WRITER_BOUNDS = Bounds()   # the writers' and their reads'
# a report over the whole journal (the endpoint's /pnl) may run long, but not forever on a hung server
REPORT_BOUNDS = Bounds(statement_s=60.0, lock_s=10.0, answer_s=90.0)
SQLITE_BUSY_S = 30.0
KEEPALIVE = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}


@dataclass(frozen=True)
class Target:
    """A resolved journal: its SQLAlchemy URL (no password), the password source, the spool directory."""

    url: str
    password_env: str | None = None
    password_file: str | None = None
    spool_dir: str = ".mmfleet/journal-spool"

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite")

    def describe(self) -> str:
        """For logs and errors: the URL without any password."""
        return make_url(self.url).render_as_string(hide_password=True)

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "password_env": self.password_env, "password_file": self.password_file,
                "spool_dir": self.spool_dir}


def sqlite_path(state_dir: str | os.PathLike[str], fleet: str) -> Path:
    return Path(state_dir).absolute() / f"{fleet}.journal.sqlite"


def target_of(cfg: Any, state_dir: str | os.PathLike[str] | None = None) -> Target:
    """The journal of a fleet config (``cfg.journal``), paths made absolute against ``state_dir``."""
    return target_of_settings(cfg.journal, state_dir or cfg.state_dir, cfg.name)


def target_of_settings(j: Any, state_dir: str | os.PathLike[str], fleet: str) -> Target:
    state = Path(state_dir).absolute()
    spool = str(Path(j.spool_dir).absolute()) if j.spool_dir else str(state / "journal-spool")
    if j.url:
        return Target(url=_driver_url(j.url), password_env=j.password_env, password_file=j.password_file,
                      spool_dir=spool)
    path = Path(j.path).absolute() if j.path else sqlite_path(state, fleet)
    return Target(url=f"sqlite:///{path}", spool_dir=spool)


def with_absolute_paths(cfg: Any) -> Any:
    """The fleet config with its journal's file paths absolute (processes elsewhere find the same files)."""
    j = cfg.journal
    state = Path(cfg.state_dir).absolute()
    update = {"spool_dir": str(Path(j.spool_dir).absolute()) if j.spool_dir else str(state / "journal-spool")}
    if not j.url:
        update["path"] = str(Path(j.path).absolute()) if j.path else str(sqlite_path(state, cfg.name))
    return cfg.model_copy(update={"journal": j.model_copy(update=update)})


def target_from_args(url: str | None, state_dir: str | None, fleet: str | None = None) -> Target:
    """``--url`` or ``--state-dir`` of the journal commands (the password still from the environment)."""
    if url:
        check_no_password(url)
        return Target(url=_driver_url(url), password_env="MMFLEET_JOURNAL_PASSWORD",
                      password_file=os.environ.get("MMFLEET_JOURNAL_PASSWORD_FILE"))
    state = Path(state_dir or ".mmfleet").absolute()
    if fleet is None:
        found = sorted(p for p in state.glob("*.journal.sqlite") if p.name.count(".") == 2)
        if not found:
            raise JournalConfigError(f"no journal in {state} (*.journal.sqlite); pass --state-dir or --url")
        if len(found) > 1:
            names = ", ".join(p.name for p in found)
            raise JournalConfigError(f"several journals in {state} ({names}): pass --fleet")
        return Target(url=f"sqlite:///{found[0]}")
    return Target(url=f"sqlite:///{sqlite_path(state, fleet)}")


def check_no_password(url: str) -> None:
    try:
        u = make_url(url)
        if u.password or url_holds_password(url):
            raise JournalConfigError("the journal URL must not hold a password: set MMFLEET_JOURNAL_PASSWORD "
                                     "(or journal.password_env / journal.password_file)")
    except JournalConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - a malformed URL
        raise JournalConfigError(f"not a database URL: {type(exc).__name__}") from None


def _driver_url(url: str) -> str:
    check_no_password(url)
    u = make_url(url)
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    return u.render_as_string(hide_password=False)


def _password(target: Target) -> str | None:
    """The journal's password (from its file, else its variable), redacted from this process's log lines."""
    password = None
    if target.password_file:
        try:
            password = Path(target.password_file).expanduser().read_text().strip() or None
        except OSError as exc:
            raise JournalConfigError(f"journal password file {target.password_file}: {exc.strerror}") from None
    elif target.password_env:
        password = os.environ.get(target.password_env) or None
    if password:
        redact_in_process_logs(password)
    return password


def make_engine(target: Target, bounds: Bounds | None = None, **kw: Any) -> Engine:
    """An engine for the target; SQLite in WAL mode with a busy timeout (several writers share the file).
    PostgreSQL: the password read at every new connection (a missing file is a JournalConfigError, here
    and at a connection), TCP keepalives, and with ``bounds`` the server's statement and lock timeouts
    and the cut of a call the server does not answer (:func:`answering`)."""
    if target.is_sqlite:
        return _sqlite_engine(target, **kw)
    _password(target)   # a password file that cannot be read is said at once
    args: dict[str, Any] = {"connect_timeout": (bounds or WRITER_BOUNDS).connect_s,
                            "application_name": "mmfleet-journal", **KEEPALIVE}
    if bounds is not None:
        args["options"] = (f"-c statement_timeout={int(bounds.statement_s * 1000)} "
                           f"-c lock_timeout={int(bounds.lock_s * 1000)}")
        args["tcp_user_timeout"] = int(bounds.answer_s * 1000)
    kw.setdefault("pool_pre_ping", True)
    engine = create_engine(make_url(target.url), connect_args=args, **kw)

    @event.listens_for(engine, "do_connect")
    def _with_password(_dialect: Any, _record: Any, _cargs: Any, cparams: dict[str, Any]) -> None:
        cparams.pop("password", None)
        password = _password(target)
        if password:
            cparams["password"] = password

    if bounds is not None:
        _watch_connections(engine, bounds.answer_s)
    return engine


def _sqlite_engine(target: Target, **kw: Any) -> Engine:
    path = make_url(target.url).database
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(target.url, connect_args={"timeout": SQLITE_BUSY_S}, **kw)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_S * 1000)}")
        cur.close()

    return engine


# ---------------------------------------------------------------------- a server that does not answer

class _Connections:
    """An engine's PostgreSQL connections, each with a socket of its own onto the same connection (a
    duplicate taken when it opened, closed with it: shutting it down never reaches a socket that
    reused the connection's descriptor), to cut the one a late call waits on."""

    def __init__(self, where: str, answer_s: float) -> None:
        self.where = where
        self.answer_s = answer_s
        self.cuts = 0
        self.socks: set[socket.socket] = set()   # every open connection's (guarded by the GIL's set ops)

    def cut(self, sock: socket.socket | None, say: bool) -> None:
        """The late call's connection shut down (every one of the engine's when the call holds none yet:
        a check before its checkout, the pool's ping): the call blocked on it fails at once (the driver
        reads the end of the stream) and the pool replaces it. Said once a call."""
        self.cuts += 1
        if say:
            log.warning("journal: database %s did not answer a call in %.0f s: its connection cut", self.where,
                        self.answer_s)
        for each in [sock] if sock is not None else list(self.socks):
            with contextlib.suppress(OSError):   # closed meanwhile
                each.shutdown(socket.SHUT_RDWR)


_WATCHED: weakref.WeakKeyDictionary[Engine, _Connections] = weakref.WeakKeyDictionary()
_SOCK = "journal_watch_sock"   # a pooled connection's duplicate socket, in its record's info


def _watch_connections(engine: Engine, answer_s: float) -> None:
    conns = _WATCHED[engine] = _Connections(engine.url.render_as_string(hide_password=True), answer_s)

    def _opened(dbapi_conn: Any, record: Any) -> None:
        with contextlib.suppress(OSError, AttributeError, ValueError):
            record.info[_SOCK] = sock = socket.socket(fileno=os.dup(dbapi_conn.fileno()))
            conns.socks.add(sock)
            with contextlib.suppress(TypeError):   # closed with its connection, whatever the pool does
                weakref.finalize(dbapi_conn, _forget_sock, conns.socks, sock)

    # before the dialect's own first queries (its first_connect): a server that hangs there is cut too
    event.listen(engine, "connect", _opened, insert=True)

    @event.listens_for(engine, "close")
    def _closed(_dbapi_conn: Any, record: Any) -> None:
        sock = record.info.pop(_SOCK, None)
        if sock is not None:
            _forget_sock(conns.socks, sock)

    @event.listens_for(engine, "checkout")
    def _taken(_dbapi_conn: Any, record: Any, _proxy: Any) -> None:
        call = _calls().get(id(conns))
        if call is not None:
            call.sock = record.info.get(_SOCK)
            call.deadline = time.monotonic() + conns.answer_s

    @event.listens_for(engine, "before_cursor_execute")
    def _statement(*_args: Any) -> None:   # each statement has its own time to answer, not the block's
        call = _calls().get(id(conns))
        if call is not None:
            call.deadline = time.monotonic() + conns.answer_s


def _forget_sock(socks: set[socket.socket], sock: socket.socket) -> None:
    socks.discard(sock)
    sock.close()


class _Call:
    """A block of calls on one engine in one thread (``answering``): its deadline (each checkout and
    statement starts it again), the socket of the connection it holds, whether its cut was said."""

    __slots__ = ("conns", "deadline", "sock", "said")

    def __init__(self, conns: _Connections) -> None:
        self.conns = conns
        self.deadline = time.monotonic() + conns.answer_s
        self.sock: socket.socket | None = None
        self.said = False


_LOCAL = threading.local()


def _calls() -> dict[int, _Call]:
    """This thread's calls in flight, by engine."""
    calls = getattr(_LOCAL, "calls", None)
    if calls is None:
        calls = _LOCAL.calls = {}
    return calls


class _Watch:
    """The process's one watcher of calls in flight: a daemon thread that looks a few times a second
    and cuts the connection of a call past its deadline, again each ``answer_s`` until the call ends (a
    new connection the pool made for it may hang too: a proxy in front of a stopped server)."""

    TICK_S = 0.25

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: set[_Call] = set()
        self._thread: threading.Thread | None = None

    def arm(self, call: _Call) -> None:
        with self._lock:
            self._armed.add(call)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="journal-answer-watch", daemon=True)
                self._thread.start()

    def disarm(self, call: _Call) -> None:
        with self._lock:
            self._armed.discard(call)

    def _run(self) -> None:
        while True:
            time.sleep(self.TICK_S)
            now = time.monotonic()
            with self._lock:
                late = [c for c in self._armed if c.deadline <= now]
                for call in late:
                    call.deadline = now + call.conns.answer_s
            for call in late:
                call.conns.cut(call.sock, say=not call.said)
                call.said = True


_WATCH = _Watch()


@contextlib.contextmanager
def answering(engine: Engine) -> Iterator[None]:
    """The block's calls on ``engine`` fail (the connection it waits on cut) if the server has not
    answered one in the engine's ``answer_s``; nothing for an engine made without bounds, or SQLite's."""
    conns = _WATCHED.get(engine)
    if conns is None:
        yield
        return
    calls = _calls()
    outer = calls.get(id(conns))
    call = calls[id(conns)] = _Call(conns)
    _WATCH.arm(call)
    try:
        yield
    finally:
        _WATCH.disarm(call)
        if outer is None:
            calls.pop(id(conns), None)
        else:
            calls[id(conns)] = outer


def in_own_thread(fn: Callable[..., Any], *args: Any) -> concurrent.futures.Future:
    """``fn(*args)`` on a daemon thread of its own: a call the database holds never holds its caller's
    exit (``asyncio.run`` waits for its default executor's threads; a process, not for a daemon's)."""
    fut: concurrent.futures.Future = concurrent.futures.Future()

    def run() -> None:
        if not fut.set_running_or_notify_cancel():
            return
        try:
            fut.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            fut.set_exception(exc)

    threading.Thread(target=run, name=f"journal-{getattr(fn, '__name__', 'call')}", daemon=True).start()
    return fut


@contextlib.contextmanager
def _migration_lock(engine: Engine, conn: Any) -> Iterator[None]:
    if engine.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": PG_LOCK_KEY})
        conn.commit()
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": PG_LOCK_KEY})
            conn.commit()
        return
    path = make_url(str(engine.url)).database
    if not path or path == ":memory:":
        yield
        return
    with open(f"{path}.migrate.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def migrate(engine: Engine, revision: str = "head") -> None:
    """Create or upgrade the journal's schema with Alembic (one process at a time)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if _at_revision(engine, cfg, revision):   # the usual start: nothing to run, and nothing unbounded
        return
    unbounded = engine.dialect.name == "postgresql"   # a migration's DDL may run long; a lock's wait stays bounded
    with engine.connect() as conn:
        try:
            with _migration_lock(engine, conn):
                if unbounded:
                    conn.exec_driver_sql("SET statement_timeout = 0")
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
                conn.commit()
        finally:
            if unbounded:   # never back to the pool without its statement timeout
                conn.invalidate()


def _at_revision(engine: Engine, cfg: Any, revision: str) -> bool:
    """The schema is at ``revision`` already: read within the engine's bounds (a server stopped as the
    writer starts fails this read, not holds the thread: only the DDL of a migration runs unbounded)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from journal.schema import VERSION_TABLE

    wanted = set(ScriptDirectory.from_config(cfg).get_heads()) if revision == "head" else {revision}
    with answering(engine), engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
        return set(context.get_current_heads()) == wanted


def open_journal_db(target: Target, *, create: bool = True) -> Engine:
    engine = make_engine(target)
    if create:
        migrate(engine)
    return engine


def archive_sim_journal(cfg: Any) -> Path | None:
    """Before ``up`` starts a fresh simulator: its trade and income ids start again, so the SQLite
    journal of the previous one is moved aside (``<fleet>.journal.<time>.sqlite``), never mixed in."""
    import time

    if cfg.journal.url:
        return None
    target = target_of(cfg)
    path = Path(make_url(target.url).database or "")
    if not path.is_file():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = path.with_name(path.name.replace(".journal.sqlite", f".journal.{stamp}.sqlite"))
    for suffix in ("", "-wal", "-shm"):
        src = Path(str(path) + suffix)
        if src.exists():
            src.rename(str(dest) + suffix)
    return dest
