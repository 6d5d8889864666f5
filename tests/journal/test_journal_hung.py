"""A journal whose PostgreSQL does not answer, or answers but takes no rows, against a real server:
a table locked, the server stopped (SIGSTOP), a database that refuses writes, a password changed or
its file missing. Each time the journal says it once, spools, never holds its caller (an agent's
exit, the controller's close of a position), and is up again once a row went in."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import signal
import subprocess
import threading
import time
import tracemalloc
import uuid
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import psycopg
import pytest
import yaml

from journal.db import Bounds, Target, make_engine
from journal.writer import JournalWriter, cursors

from .helpers import post, wait_for
from .pg import PgServer
from .test_journal_postgres import REPO, SYMBOL, _epoch_quoting, _spawn, pg_target

SMALL = Bounds(statement_s=1.0, lock_s=0.5, answer_s=2.0, connect_s=2)


def event(uid: str) -> tuple[str, dict]:
    return ("events", {"uid": uid, "ts_ms": int(time.time() * 1000), "fleet": "hung", "account": "main",
                       "symbol": SYMBOL, "epoch": 1, "kind": "probe", "actor": "test", "reason": None, "detail": None})


def admin(server: PgServer, db: str = "postgres") -> psycopg.Connection:
    return psycopg.connect(host="127.0.0.1", port=server.port, user=server.user, password=server.password,
                           dbname=db, autocommit=True, connect_timeout=5)


def rows_in(target: Target, table: str = "events") -> int:
    engine = make_engine(target)
    try:
        with engine.connect() as conn:
            return int(conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar() or 0)
    finally:
        engine.dispose()


def said(caplog: pytest.LogCaptureFixture, words: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "mmfleet.journal" and words in r.getMessage()]


def until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.05)


@contextlib.contextmanager
def locked(server: PgServer, db: str, table: str):
    """``table`` locked ACCESS EXCLUSIVE (as VACUUM FULL or a stuck migration does) until the block ends."""
    conn = admin(server, db)
    conn.autocommit = False
    conn.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
    try:
        yield
    finally:
        conn.rollback()
        conn.close()


@pytest.fixture
def role_db(pg_server, tmp_path):
    """A role of its own (its password in a file, so that it can change) owning a fresh database."""
    name = "j" + uuid.uuid4().hex[:12]
    password = "Pw-" + secrets.token_hex(12)
    with admin(pg_server) as conn:
        conn.execute(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
        conn.execute(f"CREATE DATABASE {name} OWNER {name}")
    pwfile = tmp_path / "journal-password"
    pwfile.write_text(password + "\n")
    target = Target(url=f"postgresql+psycopg://{name}@127.0.0.1:{pg_server.port}/{name}", password_file=str(pwfile),
                    spool_dir=str(tmp_path / "spool"))
    return SimpleNamespace(name=name, password=password, pwfile=pwfile, target=target)


def test_a_locked_table_is_a_database_not_answering_said_once_spooled_and_recovered(pg_server, role_db, caplog):
    """A write that waits on a lock fails at the lock timeout: the database is down (said once, db_up 0,
    the rows spooled, not piled up in memory), and up again, said once, when the lock goes."""
    caplog.set_level(logging.INFO, "mmfleet.journal")
    w = JournalWriter(role_db.target, "locked", flush_interval=0.05, bounds=SMALL).start()
    try:
        w.put(event("first"))
        assert w.flush(30) and w.db_up
        with locked(pg_server, role_db.name, "events"):
            for i in range(30):
                w.put(event(f"r{i}"))
                time.sleep(0.1)
            until(lambda: not w.db_up and w.spool_path.exists() and w.queued == 0, 5, "down and spooled")
            assert len(said(caplog, "not answering")) == 1 and not said(caplog, "answers again")
            assert "lock timeout" in (w.last_error or "")
        until(lambda: w.db_up and not w.spool_path.exists() and not w.replay_path.exists(), 15, "replayed")
        assert len(said(caplog, "answers again")) == 1
    finally:
        w.close(5)
    assert rows_in(role_db.target) == 31 and w.stats["dropped"] == 0


@pytest.fixture
def own_pg():
    """A server of this test's own: stopping it must not stop the session's."""
    server = PgServer()
    server.start()
    try:
        yield server
    finally:
        server.cleanup()


def _signal_server(server: PgServer, sig: int) -> None:
    pid = int((server.data / "postmaster.pid").read_text().split()[0])
    kids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    for p in [pid, *map(int, kids)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, sig)


def test_a_stopped_server_fails_the_write_and_the_cursor_read_in_bounded_time(own_pg, tmp_path, monkeypatch, caplog):
    """A server that does not answer at all (SIGSTOP: no statement timeout runs, the kernel still acks)
    has its connections cut after ``answer_s``: the write fails (down, spooled), so does the backfill's
    cursor read; once it runs again the spool is replayed."""
    caplog.set_level(logging.INFO, "mmfleet.journal")
    monkeypatch.setenv("MMFLEET_JOURNAL_PASSWORD", own_pg.password)
    target = pg_target(own_pg.url, tmp_path)
    w = JournalWriter(target, "stopped", flush_interval=0.05, bounds=SMALL).start()
    try:
        w.put(event("first"))
        assert w.flush(30) and w.db_up
        engine = w.engine()
        _signal_server(own_pg, signal.SIGSTOP)
        try:
            w.put(event("while-stopped"))
            until(lambda: not w.db_up and w.spool_path.exists(), SMALL.answer_s + 3, "down and spooled")
            assert len(said(caplog, "not answering")) == 1
            started = time.monotonic()
            with pytest.raises(Exception):
                cursors(engine, "main", SYMBOL)
            assert time.monotonic() - started < SMALL.answer_s + 1.5
        finally:
            _signal_server(own_pg, signal.SIGCONT)
        until(lambda: w.db_up and not w.spool_path.exists() and not w.replay_path.exists(), 20, "replayed")
    finally:
        w.close(5)
    assert rows_in(target) == 2
    # the endpoint's P&L report on the stopped server fails in bounded time too (it held its thread)
    from journal.pnl import bounded_report

    _signal_server(own_pg, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(Exception):
            bounded_report(target, SMALL, symbols=[SYMBOL])
        assert time.monotonic() - started < SMALL.answer_s + SMALL.connect_s + 1.5
    finally:
        _signal_server(own_pg, signal.SIGCONT)
    assert bounded_report(target, SMALL, symbols=[SYMBOL])["symbols"] is not None


def test_a_slow_transaction_whose_statements_each_answer_is_not_cut(own_pg, tmp_path, monkeypatch, caplog):
    """Each insert takes 1.3 s (a trigger), within the 2 s a statement may run, the batch's two more than
    the 2 s a call may go unanswered: the watcher counted the whole block and cut a healthy server's
    connection at every try, the journal down for good. Each statement now has its own time."""
    caplog.set_level(logging.INFO, "mmfleet.journal")
    monkeypatch.setenv("MMFLEET_JOURNAL_PASSWORD", own_pg.password)
    target = pg_target(own_pg.url, tmp_path)
    bounds = Bounds(statement_s=2.0, lock_s=1.0, answer_s=2.0, connect_s=2)
    w = JournalWriter(target, "slow", flush_interval=0.05, bounds=bounds).start()
    try:
        w.put(event("first"))
        assert w.flush(30) and w.db_up   # the tables made
        with admin(own_pg, own_pg.url.rsplit("/", 1)[1].split("?")[0]) as conn:
            conn.execute("CREATE FUNCTION slow() RETURNS trigger LANGUAGE plpgsql AS "
                         "$$ BEGIN PERFORM pg_sleep(1.3); RETURN NEW; END $$")
            conn.execute("CREATE TRIGGER slow_events BEFORE INSERT ON events FOR EACH ROW EXECUTE FUNCTION slow()")
            conn.execute("CREATE TRIGGER slow_funding BEFORE INSERT ON funding FOR EACH ROW EXECUTE FUNCTION slow()")
        w.put(event("slow"))
        w.put(("funding", {"ts_ms": int(time.time() * 1000), "fleet": "f", "account": "main", "symbol": SYMBOL,
                           "epoch": 1, "income_id": 1, "amount": "0.1", "asset": "USDC"}))
        assert w.flush(30) and w.db_up and w.stats["db_errors"] == 0
    finally:
        w.close(5)
    assert rows_in(target) == 2 and rows_in(target, "funding") == 1
    assert not said(caplog, "did not answer")


class _Desk:
    """The exchange as ``close_left`` sees it: a position left by a flatten, closed with one fill."""

    async def close_position(self, symbol, account):
        return 0.5, 0.0

    async def trades_since(self, symbol, account, since, newest):
        return [{"id": 77, "orderId": 5, "symbol": symbol, "side": "SELL", "price": "3000.5", "qty": "0.5",
                 "commission": "0.6", "commissionAsset": "USDC", "realizedPnl": "1.5", "maker": False,
                 "time": int(time.time() * 1000)}]


async def test_the_controllers_close_of_a_position_is_not_held_by_a_hung_journal(pg_server, role_db, tmp_path, caplog):
    """``down --flatten``'s close of what a flatten left: with the journal's fills table locked, the read
    of its newest fill is given up after ``CURSOR_WAIT_S`` (said), the closing fill is read from the
    lookback and journaled all the same once the lock goes."""
    from controller.controller import close_left
    from fleet.config import JournalConfig
    from journal.audit import CURSOR_WAIT_S, AuditLog

    caplog.set_level(logging.INFO)
    cfg = SimpleNamespace(name="hung", state_dir=str(tmp_path / "state"), journal=JournalConfig(
        url=role_db.target.url.replace("+psycopg", ""), password_file=str(role_db.pwfile),
        spool_dir=role_db.target.spool_dir))
    ctl = SimpleNamespace(cfg=cfg, desk=_Desk())
    ctl._journal_audit = audit = AuditLog(cfg, "controller")
    try:
        audit.record("probe", actor="test")
        assert await asyncio.to_thread(audit.writer.flush, 30) and audit.writer.db_up
        with locked(pg_server, role_db.name, "fills"):
            started = time.monotonic()
            left = await asyncio.wait_for(close_left(ctl, SYMBOL, "main", {"exchange_position": 0.5}), 20)
            assert left == 0.0 and time.monotonic() - started < CURSOR_WAIT_S + 2
            assert any("newest fill" in r.getMessage() and "not read" in r.getMessage() for r in caplog.records)
            started = time.monotonic()   # the next symbol's close: not waiting on a read still unanswered
            await asyncio.wait_for(close_left(ctl, "BTCUSDT", "main", {"exchange_position": 0.5}), 20)
            assert time.monotonic() - started < 1.0
        until(lambda: audit.writer.db_up and not audit.writer.spool_path.exists() and audit.writer.queued == 0,
              20, "the closing fill written")
    finally:
        audit.close(5)
    assert rows_in(role_db.target, "fills") == 2


async def test_a_sigtermed_agent_exits_while_its_journal_table_is_locked(sim, pg_server, pg_db, tmp_path):
    """``python -m fleet agent`` stopped by SIGTERM while the journal's fills table is locked (its writer
    and its backfill's cursor read waiting on it) exits in seconds, not when the lock goes."""
    data = yaml.safe_load((REPO / "configs" / "fleet.demo.yaml").read_text())
    for sym in data["symbols"]:
        sym["params_file"] = str(REPO / "configs" / sym["params_file"])
    data["runtime"] = {"deadman_heartbeat_sec": 1, "deadman_countdown_ms": 30000}
    data["state_dir"] = str(tmp_path / "state")
    data["journal"] = {"url": pg_db, "flush_interval_sec": 0.1, "backfill_interval_sec": 2,
                       "spool_dir": str(tmp_path / "spool")}
    config = tmp_path / "fleet.yaml"
    config.write_text(yaml.safe_dump(data))
    env = {"MMFLEET_JOURNAL_PASSWORD": os.environ["MMFLEET_JOURNAL_PASSWORD"]}
    lock = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with locked(pg_server, pg_db.rsplit("/", 1)[1], "fills"):
            lock.set()
            release.wait(90)

    async with aiohttp.ClientSession() as http:
        agent = await _spawn(sim, config, env, tmp_path / "agent.log")
        holder = threading.Thread(target=hold, daemon=True)
        try:
            await wait_for(lambda: _epoch_quoting(sim, http, 1), 30, "the agent quoting")
            await asyncio.sleep(1.0)
            holder.start()
            assert await asyncio.to_thread(lock.wait, 10)
            await post(sim, http, "/sim/market/jump", {"symbol": SYMBOL, "pct": -0.2})
            await asyncio.sleep(3.0)   # a fill's write and a backfill's cursor read wait on the lock
            agent.send_signal(signal.SIGTERM)
            started = time.monotonic()
            await asyncio.wait_for(agent.communicate(), 30)
            took = time.monotonic() - started
        finally:
            release.set()
            if agent.returncode is None:
                agent.kill()
                await agent.wait()
    assert agent.returncode == 0 and took < 20, (agent.returncode, took)


def test_a_changed_password_is_read_again_from_its_file(pg_server, role_db, caplog):
    """The role's password altered and its file updated, the old sessions ended: the journal connects
    with the new one, without a restart; neither password is in any log line or the writer's status."""
    caplog.set_level(logging.DEBUG)
    w = JournalWriter(role_db.target, "rotated", flush_interval=0.05).start()
    new = "Rotated-" + secrets.token_hex(12)
    try:
        w.put(event("before"))
        assert w.flush(30) and w.db_up
        with admin(pg_server) as conn:
            conn.execute(f"ALTER ROLE {role_db.name} PASSWORD '{new}'")
            role_db.pwfile.write_text(new + "\n")
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (role_db.name,))
        for i in range(5):
            w.put(event(f"after{i}"))
        assert w.flush(15)
        until(lambda: w.db_up and not w.spool_path.exists() and not w.replay_path.exists(), 15,
              "written with the new password")
        status = json.dumps(w.status())
    finally:
        w.close(5)
    assert rows_in(role_db.target) == 6
    text = "\n".join(r.getMessage() for r in caplog.records) + status
    assert role_db.password not in text and new not in text


def test_a_database_refusing_writes_stays_down_until_a_write_goes_in(pg_server, pg_db, tmp_path, caplog):
    """A database that answers ``SELECT 1`` but takes no row (read-only here; a lock or a full disk alike)
    is down from its first refusal to the first row it takes: db_up reads 0 all along, "answers again"
    is said once, at the end, not at every probe."""
    caplog.set_level(logging.INFO, "mmfleet.journal")
    target = pg_target(pg_db, tmp_path)
    name = pg_db.rsplit("/", 1)[1]
    w = JournalWriter(target, "refusing", flush_interval=0.05).start()
    try:
        w.put(event("first"))
        assert w.flush(30) and w.db_up
        with admin(pg_server) as conn:
            _read_only(conn, name, True)
            w.put(event("refused"))
            until(lambda: not w.db_up, 10, "down")
            ups = []
            for i in range(80):   # 4 s: four probes that answer
                if i % 4 == 0:
                    w.put(event(f"r{i}"))
                ups.append(w.db_up)
                time.sleep(0.05)
            assert not any(ups) and w.stats["db_errors"] >= 3
            assert not said(caplog, "answers again") and len(said(caplog, "not answering")) == 1
            _read_only(conn, name, False)
        until(lambda: w.db_up and not w.spool_path.exists() and not w.replay_path.exists(), 15, "replayed")
    finally:
        w.close(5)
    assert len(said(caplog, "answers again")) == 1 and rows_in(target) == 22


def _read_only(conn: psycopg.Connection, name: str, on: bool) -> None:
    conn.execute(f"ALTER DATABASE {name} SET default_transaction_read_only = {'on' if on else 'off'}")
    conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))


def test_a_long_spool_is_replayed_a_batch_at_a_time_never_all_read_at_every_try(pg_server, pg_db, tmp_path):
    """A spool of 20,000 rows while the database refuses writes: each try reads one batch from where
    the last stopped, not the whole file (memory stays that of a batch); then every row goes in once."""
    target = pg_target(pg_db, tmp_path)
    name = pg_db.rsplit("/", 1)[1]
    n = 20_000
    w = JournalWriter(target, "long", flush_interval=0.05).start()
    try:
        w.put(event("first"))
        assert w.flush(30) and w.db_up
        with admin(pg_server) as conn:
            _read_only(conn, name, True)
            w.put(event("refused"))
            until(lambda: not w.db_up and w.spool_path.exists(), 10, "down")
            _spool_events(w.spool_path, n)
            tracemalloc.start()
            try:
                tries = w.stats["db_errors"]
                until(lambda: w.stats["db_errors"] >= tries + 3, 15, "three tries refused")
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert peak < 12 * 2**20, f"{peak / 2**20:.1f} MiB at the peak: the whole spool read"
            _read_only(conn, name, False)
        until(lambda: not w.spool_path.exists() and not w.replay_path.exists(), 60, "replayed")
    finally:
        w.close(5)
    assert rows_in(target) == n + 2 and w.stats["replayed"] == n + 1


def _spool_events(path: Path, n: int) -> None:
    with open(path, "a") as f:
        for i in range(n):
            table, row = event(f"s{i}")
            f.write(json.dumps({"t": table, "r": row}, separators=(",", ":")) + "\n")


def test_a_missing_password_file_is_said_once_spooled_and_its_recovery_said(role_db, caplog):
    """The password file not there (yet): the database counts as not answering, said once with the
    file's name (no ERROR every second), the rows spooled; once the file is there, the rows go in and
    the recovery is said."""
    caplog.set_level(logging.INFO, "mmfleet.journal")
    role_db.pwfile.unlink()
    w = JournalWriter(role_db.target, "nofile", flush_interval=0.05).start()
    try:
        for i in range(30):   # 3 s: three tries
            w.put(event(f"r{i}"))
            time.sleep(0.1)
        until(lambda: w.spool_path.exists() and w.queued == 0, 5, "spooled")
        down = said(caplog, "not answering")
        assert len(down) == 1 and str(role_db.pwfile) in down[0].getMessage() and not w.db_up
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        role_db.pwfile.write_text(role_db.password + "\n")
        until(lambda: w.db_up and not w.spool_path.exists() and not w.replay_path.exists(), 15, "replayed")
    finally:
        w.close(5)
    assert len(said(caplog, "answers again")) == 1 and rows_in(role_db.target) == 30
    assert role_db.password not in "\n".join(r.getMessage() for r in caplog.records)


class _MuteProxy:
    """A TCP relay on loopback in front of the server that, once ``mute`` is set, still lets connections
    log in but passes no answer after their first ReadyForQuery: a pooler in front of a stopped server."""

    def __init__(self, port: int) -> None:
        import socket

        self.port, self.mute = port, threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> int:
        return self.listener.getsockname()[1]

    def _accept(self) -> None:
        import socket

        while True:
            client, _ = self.listener.accept()
            server = socket.create_connection(("127.0.0.1", self.port))
            threading.Thread(target=self._relay, args=(client, server), daemon=True).start()

    def _relay(self, client: Any, server: Any) -> None:
        import select
        import struct

        ready, pending = False, b""
        with client, server:
            while True:
                for sock in select.select([client, server], [], [], 0.2)[0]:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if sock is client:
                        server.sendall(data)
                        continue
                    pending += data
                    out = b""
                    while len(pending) >= 5 and len(pending) >= 1 + struct.unpack("!I", pending[1:5])[0]:
                        size = 1 + struct.unpack("!I", pending[1:5])[0]
                        message, pending = pending[:size], pending[size:]
                        if not (self.mute.is_set() and ready):
                            out += message
                            ready = ready or message[:1] == b"Z"
                    if out:
                        client.sendall(out)


def test_a_call_whose_new_connection_hangs_too_is_cut_again(pg_server, pg_db, tmp_path):
    """A pooler in front of a stopped server takes connections but answers nothing: once the watcher cut
    the call's connection, the pool's ping made a new one and the call went on there, unwatched, held for
    good. The watcher cuts the call again each ``answer_s`` until it ends."""
    from journal.db import _WATCHED, migrate
    from journal.writer import write_rows

    proxy = _MuteProxy(pg_server.port)
    # (no SSL or GSS negotiation: their one-byte answers are not messages the relay reads)
    target = pg_target(pg_db.replace(f":{pg_server.port}/", f":{proxy.address}/") + "?sslmode=disable&gssencmode=disable",
                       tmp_path)
    plain = make_engine(target)
    migrate(plain)
    plain.dispose()
    engine = make_engine(target, Bounds(statement_s=2.0, lock_s=1.0, answer_s=2.0, connect_s=2))
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT 1")   # a connection in the pool
    proxy.mute.set()
    done = threading.Event()
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            write_rows(engine, [event("muted")])
        except BaseException as exc:  # noqa: BLE001 - the outcome looked at below
            outcome.append(exc)
        done.set()

    threading.Thread(target=call, daemon=True).start()
    assert done.wait(12), f"the call still held after 12 s ({_WATCHED[engine].cuts} cuts)"
    assert outcome and _WATCHED[engine].cuts >= 2
    engine.dispose()


def test_a_new_engines_first_connection_is_watched_too(pg_server, pg_db, tmp_path):
    """Behind a pooler whose server stopped, a new engine's first connection logs in and its dialect's
    first queries get no answer: its socket was taken after them, so nothing could be cut and the
    writer's start (or a /pnl report) was held for good."""
    from journal.db import _WATCHED, _at_revision, migrate

    proxy = _MuteProxy(pg_server.port)
    target = pg_target(pg_db.replace(f":{pg_server.port}/", f":{proxy.address}/") + "?sslmode=disable&gssencmode=disable",
                       tmp_path)
    plain = make_engine(target)
    migrate(plain)   # the schema at its head: a second migrate reads so, within bounds, and runs nothing
    plain.dispose()
    proxy.mute.set()
    engine = make_engine(target, Bounds(statement_s=2.0, lock_s=1.0, answer_s=2.0, connect_s=2))
    done = threading.Event()

    def start() -> None:
        with contextlib.suppress(Exception):
            migrate(engine)
        done.set()

    threading.Thread(target=start, daemon=True).start()
    assert done.wait(12), f"the first connection still held after 12 s ({_WATCHED[engine].cuts} cuts)"
    engine.dispose()
    proxy.mute.clear()
    direct = make_engine(pg_target(pg_db, tmp_path))
    from alembic.config import Config

    from journal.db import MIGRATIONS

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    assert _at_revision(direct, cfg, "head")   # (it read alembic's default table, never the journal's)
    direct.dispose()
