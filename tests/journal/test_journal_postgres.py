"""The journal against a real PostgreSQL server (started by the tests): one schema with SQLite, the
database stopped for 20 s while the agent trades (spooled, replayed), and an agent process SIGKILLed
mid-trade then restarted (backfilled): each time the journal equals the exchange's record."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
import sys
import time
from pathlib import Path

import aiohttp
import pytest
import yaml
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from journal.db import Target, make_engine, migrate, target_from_args
from journal.schema import metadata

from .helpers import (
    assert_equals_exchange,
    assert_split_adds_up,
    exchange_trades,
    journal_sums,
    make_agent,
    post,
    sim_state,
    wait_for,
)
from .test_journal_sqlite import assert_no_secret, trade_a_while

REPO = Path(__file__).resolve().parents[2]
SYMBOL = "ETHUSDC"
DB_DOWN_S = 20.0


def pg_target(url: str, tmp_path: Path) -> Target:
    t = target_from_args(url, None)
    return Target(url=t.url, password_env="MMFLEET_JOURNAL_PASSWORD", spool_dir=str(tmp_path / "spool"))


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_the_migrations_are_the_schema(backend, request, tmp_path):
    """Alembic's head and the tables the code declares are the same, on both databases."""
    if backend == "postgres":
        target = pg_target(request.getfixturevalue("pg_db"), tmp_path)
    else:
        target = Target(url=f"sqlite:///{tmp_path / 'j.sqlite'}")
    engine = make_engine(target)
    migrate(engine)
    migrate(engine)  # idempotent
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"version_table": "journal_version"})
        assert compare_metadata(ctx, metadata) == []
    engine.dispose()


def test_a_row_postgresql_refuses_is_kept_apart_and_never_stalls_the_journal(pg_db, tmp_path):
    """A value PostgreSQL does not take (too long for its column; SQLite takes anything) is not an
    outage: that row goes to the rejects file, every other row is written, the writer goes on."""
    import json

    from journal.writer import JournalWriter

    target = pg_target(pg_db, tmp_path)
    w = JournalWriter(target, "poison", flush_interval=0.05).start()
    order = {"ts_ms": 1, "fleet": "f", "account": "main", "symbol": SYMBOL, "epoch": 1, "event": "update",
             "order_type": "TRAILING_STOP_MARKET", "side": "SELL", "status": "NEW"}
    for i in range(10):
        row = {**order, "uid": f"u{i}"}
        if i == 4:
            row["order_type"] = "X" * 40
        w.put(("orders", row))
    assert w.flush(30)
    w.close(5)
    assert w.stats["rejected"] == 1 and w.db_up and not w.spool_path.exists()
    with make_engine(target).connect() as conn:
        kept = conn.exec_driver_sql("SELECT count(*) FROM orders WHERE fleet = 'f'").scalar()
    assert kept == 9
    (rejected,) = [json.loads(line) for line in w.rejects_path.read_text().splitlines()]
    assert rejected["r"]["uid"] == "u4"


def test_a_nul_in_a_reason_is_written_escaped_not_taken_for_an_outage(pg_db, tmp_path):
    """PostgreSQL's text holds no NUL: a kill of two symbols whose reason carries one (the API takes any
    string) wrote two rows it refused, which read as an outage, spooled and were refused again at every
    replay, the journal stalled for good. Such a value is written with the NUL shown as \\u0000."""
    from journal.audit import event_row
    from journal.writer import JournalWriter

    target = pg_target(pg_db, tmp_path)
    w = JournalWriter(target, "nul", flush_interval=0.05).start()
    for sym in ("ETHUSDC", "BTCUSDT"):
        w.put(("events", event_row("f", "kill", actor="api", symbol=sym, reason="drill\x00two")))
    w.put(("events", event_row("f", "resume", actor="api", symbol="ETHUSDC", reason="after")))
    assert w.flush(30)
    w.close(5)
    assert w.db_up and w.stats["db_errors"] == 0 and w.stats["rejected"] == 0 and not w.spool_path.exists()
    with make_engine(target).connect() as conn:
        reasons = sorted(r for (r,) in conn.exec_driver_sql("SELECT reason FROM events WHERE fleet = 'f'"))
    assert reasons == ["after", "drill\\u0000two", "drill\\u0000two"]


def test_a_database_turned_read_only_is_an_outage_not_a_flood_of_refused_rows(pg_server, pg_db, tmp_path):
    """A failover to a read-only standby refuses every row (an InternalError): the rows spool and are
    replayed once it takes writes again, none is kept apart as refused."""
    import psycopg

    from journal.writer import JournalWriter

    target = pg_target(pg_db, tmp_path)
    name = pg_db.rsplit("/", 1)[1]
    admin = psycopg.connect(host="127.0.0.1", port=pg_server.port, user=pg_server.user,
                            password=pg_server.password, dbname="postgres", autocommit=True)
    w = JournalWriter(target, "ro", flush_interval=0.05).start()
    row = {"ts_ms": 1, "fleet": "f", "account": "main", "symbol": SYMBOL, "epoch": 1, "event": "update",
           "order_type": "LIMIT", "side": "SELL", "status": "NEW"}
    try:
        w.put(("orders", {**row, "uid": "first"}))
        assert w.flush(30) and w.db_up
        admin.execute(f"ALTER DATABASE {name} SET default_transaction_read_only = on")
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        for i in range(5):
            w.put(("orders", {**row, "uid": f"ro{i}"}))
        wait_deadline = time.monotonic() + 30
        while not w.spool_path.exists() and time.monotonic() < wait_deadline:
            time.sleep(0.05)
        assert w.spool_path.exists() and not w.db_up and w.stats["rejected"] == 0
        admin.execute(f"ALTER DATABASE {name} SET default_transaction_read_only = off")
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        wait_deadline = time.monotonic() + 30
        while (w.spool_path.exists() or w.replay_path.exists()) and time.monotonic() < wait_deadline:
            time.sleep(0.05)
    finally:
        w.close(5)
        admin.close()
    with make_engine(target).connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM orders WHERE fleet = 'f'").scalar() == 6
    assert w.stats["rejected"] == 0 and w.stats["dropped"] == 0


def test_a_password_in_the_url_is_refused():
    from journal.db import JournalConfigError

    with pytest.raises(JournalConfigError):
        target_from_args("postgresql://u:hunter2@127.0.0.1/db", None)
    from fleet.config import JournalConfig

    with pytest.raises(ValueError, match="password"):
        JournalConfig(url="postgresql://u:hunter2@127.0.0.1/db")


async def test_database_down_for_20s_while_trading_loses_nothing(sim, pg_server, pg_db, tmp_path):
    target = pg_target(pg_db, tmp_path)
    agent = make_agent(sim, target, tmp_path / "state", SYMBOL)
    task = asyncio.create_task(agent.run())
    writer = agent.journal.writer
    async with aiohttp.ClientSession() as http:
        await wait_for(lambda: agent.status()["state"] == "quoting", 20, "quoting")
        await wait_for(lambda: writer.stats["written"] > 0, 10, "rows written to PostgreSQL")
        await post(sim, http, "/sim/market/freeze", {"frozen": True, "symbol": SYMBOL})
        await wait_for(lambda: len(agent.core.store.orders) >= 4, 30, "a ladder resting")
        await asyncio.get_running_loop().run_in_executor(None, pg_server.stop)
        down_at = time.monotonic()
        fills_before = agent.core.store.fills_buy + agent.core.store.fills_sell
        for pct in (-0.15, 0.3, -0.3):
            await post(sim, http, "/sim/market/jump", {"symbol": SYMBOL, "pct": pct})
            await asyncio.sleep(1.0)
        await post(sim, http, "/sim/funding/rate", {"symbol": SYMBOL, "rate": "0.0004"})
        await post(sim, http, "/sim/funding/settle", {"symbol": SYMBOL})
        assert agent.status()["state"] == "quoting", "the agent keeps trading while the journal is down"
        assert agent.core.store.fills_buy + agent.core.store.fills_sell > fills_before
        await wait_for(lambda: writer.stats["spooled"] > 0, 10, "rows spooled while the database is down")
        await asyncio.sleep(max(0.0, DB_DOWN_S - (time.monotonic() - down_at)))
        await asyncio.get_running_loop().run_in_executor(None, pg_server.start)
        await wait_for(lambda: writer.stats["replayed"] > 0, 20, "the spool replayed")
        await post(sim, http, "/sim/market/jump", {"symbol": SYMBOL, "pct": 0.2})
        await post(sim, http, "/sim/funding/settle", {"symbol": SYMBOL})
        await asyncio.sleep(1.0)
        await agent.stop()
        await asyncio.wait_for(task, 30)
        state = await sim_state(sim, http, SYMBOL)
    assert not writer.spool_path.exists()
    trades = await exchange_trades(sim, SYMBOL)
    sums = journal_sums(target, SYMBOL)
    assert_equals_exchange(state, sums, SYMBOL, trades)
    assert_split_adds_up(sums["report"])
    _, key, secret = sim.accounts[0]
    assert_no_secret(target, [key, secret, os.environ["MMFLEET_JOURNAL_PASSWORD"]])


def _die_with_parent() -> None:
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)


async def _spawn(sim, config: Path, env_extra: dict, log: Path) -> asyncio.subprocess.Process:
    _, key, secret = sim.accounts[0]
    env = {**os.environ, "MMFLEET_MAIN_API_KEY": key, "MMFLEET_MAIN_API_SECRET": secret, **env_extra}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "fleet", "agent", "--config", str(config), "--symbol", SYMBOL,
        "--rest-url", sim.rest_url, "--ws-url", sim.ws_url, "--metrics-port", "-1", "--json-logs",
        stdout=asyncio.subprocess.PIPE, stderr=open(log, "ab"), env=env, cwd=str(REPO),
        preexec_fn=_die_with_parent,
    )


async def _epoch_quoting(sim, http, epoch: int, both: bool = True) -> bool:
    orders = (await sim_state(sim, http, SYMBOL))["open_orders"]
    sides = {o["side"] for o in orders if f"-e{epoch}-" in o["clientOrderId"]}
    return sides == {"BUY", "SELL"} if both else bool(sides)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_sigkill_mid_trade_then_restart_backfills_to_the_exchanges_record(sim, backend, request, tmp_path):
    data = yaml.safe_load((REPO / "configs" / "fleet.demo.yaml").read_text())
    for sym in data["symbols"]:
        sym["params_file"] = str(REPO / "configs" / sym["params_file"])
    data["runtime"] = {"deadman_heartbeat_sec": 1, "deadman_countdown_ms": 30000}
    data["state_dir"] = str(tmp_path / "state")
    env_extra: dict = {}
    if backend == "postgres":
        url = request.getfixturevalue("pg_db")
        data["journal"] = {"url": url, "flush_interval_sec": 0.1}
        env_extra["MMFLEET_JOURNAL_PASSWORD"] = os.environ["MMFLEET_JOURNAL_PASSWORD"]
        target = pg_target(url, tmp_path)
    else:
        data["journal"] = {"flush_interval_sec": 0.1}
        target = Target(url=f"sqlite:///{tmp_path / 'state' / 'demo.journal.sqlite'}")
    config = tmp_path / "fleet.yaml"
    config.write_text(yaml.safe_dump(data))
    async with aiohttp.ClientSession() as http:
        first = await _spawn(sim, config, env_extra, tmp_path / "agent1.log")
        try:
            await wait_for(lambda: _epoch_quoting(sim, http, 1), 30, "the first agent quoting")
            await post(sim, http, "/sim/market/freeze", {"frozen": True, "symbol": SYMBOL})
            for pct in (-0.15, 0.3):
                await post(sim, http, "/sim/market/jump", {"symbol": SYMBOL, "pct": pct})
                await asyncio.sleep(1.0)
            first.send_signal(signal.SIGKILL)  # mid-trade: what it had queued is lost with it
            await first.wait()
            # its orders rest until the countdown: they fill with no agent alive to see it
            await post(sim, http, "/sim/market/jump", {"symbol": SYMBOL, "pct": -0.35})
            await post(sim, http, "/sim/funding/rate", {"symbol": SYMBOL, "rate": "0.0004"})
            await post(sim, http, "/sim/funding/settle", {"symbol": SYMBOL})
            await post(sim, http, "/sim/market/freeze", {"frozen": False, "symbol": SYMBOL})  # books again
            second = await _spawn(sim, config, env_extra, tmp_path / "agent2.log")
            await wait_for(lambda: _epoch_quoting(sim, http, 2, both=False), 30, "the restarted agent quoting")
            await post(sim, http, "/sim/market/jump", {"symbol": SYMBOL, "pct": 0.25})
            await asyncio.sleep(1.0)
            second.send_signal(signal.SIGTERM)
            out, _ = await asyncio.wait_for(second.communicate(), 40)
            assert second.returncode == 0, out.decode()[-2000:]
        finally:
            for p in (first,):
                if p.returncode is None:
                    p.kill()
        state = await sim_state(sim, http, SYMBOL)
    trades = await exchange_trades(sim, SYMBOL)
    assert trades
    sums = journal_sums(target, SYMBOL)
    assert_equals_exchange(state, sums, SYMBOL, trades)
    assert_split_adds_up(sums["report"])
    assert sums["funding"] != 0
