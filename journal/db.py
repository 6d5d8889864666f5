"""Where the journal lives and how to open it: SQLite (WAL) by default, PostgreSQL with a URL.

The password of a PostgreSQL journal is never in the config, a URL or an argument: it is read here,
from the environment variable or the file the config names, and handed to the driver only.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import URL, Engine, make_url

from agents.logging import redact_in_process_logs
from fleet.config import url_holds_password

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
PG_LOCK_KEY = 0x6D6D6A6E  # advisory lock id: one migration at a time across a cluster's agents


class JournalConfigError(ValueError):
    """The journal cannot be opened as configured; the message says what to change."""


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


def make_engine(target: Target, **kw: Any) -> Engine:
    """An engine for the target; SQLite in WAL mode with a busy timeout (several writers share the file)."""
    if target.is_sqlite:
        path = make_url(target.url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(target.url, connect_args={"timeout": 30}, **kw)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    url: URL = make_url(target.url)
    password = _password(target)
    if password:
        url = url.set(password=password)
    kw.setdefault("pool_pre_ping", True)
    return create_engine(url, connect_args={"connect_timeout": 5, "application_name": "mmfleet-journal"}, **kw)


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
    with engine.connect() as conn, _migration_lock(engine, conn):
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
        conn.commit()


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
