"""The journal's pieces without an exchange: audit rows (secrets removed, token fingerprints), the
P&L split on a hand-made ledger, the spool while the database is unreachable, --since parsing."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from fleet.config import ConfigError, load_fleet_config

from journal import pnl
from journal.audit import REDACTED, config_hash, event_row, redact, token_fingerprint
from journal.cli import parse_since
from journal.db import JournalConfigError, Target, check_no_password, make_engine, migrate
from journal.schema import events
from journal.writer import JournalWriter, write_rows


def _fill(i, side, price, qty, mid, realized="0", fee="0.01"):
    return ("fills", {"ts_ms": 1000 + i, "fleet": "f", "account": "main", "symbol": "ETHUSDC", "epoch": 1,
                      "trade_id": i, "side": side, "price": price, "qty": qty, "fee": fee, "fee_asset": "USDC",
                      "maker": True, "realized_pnl": realized, "mid": mid, "mark": mid, "source": "stream"})


@pytest.mark.parametrize("url", ["postgresql://mm:pw@h/db", "postgresql://mm@h/db?password=S3cret",
                                 "postgresql://mm@h/db?sslmode=require&PassWord=S3cret",
                                 "postgresql://mm@h/db?sslpassword=S3cret",
                                 # libpq strips the key (psycopg writes "password =S3cret"); SQLAlchemy reads
                                 # everything before the last @ as user:password; libpq may expand a dbname
                                 "postgresql://mm@h/db?password%20=S3cret", "postgresql://mm:pa/S3cret@h/db",
                                 "postgresql://mm@h/db?dbname=host%3Dh%20password%3DS3cret"])
def test_a_journal_url_holding_a_password_is_refused_without_echoing_it(url, tmp_path):
    """libpq takes a password from the URL's query as well as from user:password@: both are refused,
    by the fleet config (naming where the password goes instead) and by the journal itself."""
    path = tmp_path / "fleet.yaml"
    path.write_text(json.dumps({"name": "f", "accounts": [{"name": "main"}], "journal": {"url": url},
                                "symbols": [{"symbol": "ETHUSDC", "account": "main"}]}))
    with pytest.raises(ConfigError) as err:
        load_fleet_config(path)
    assert "journal.url must not hold a password" in str(err.value) and "S3cret" not in str(err.value)
    with pytest.raises(JournalConfigError):
        check_no_password(url)
    assert "S3cret" not in json.dumps(redact({"url": url}))
    check_no_password("postgresql://mm@h/db?sslmode=require")   # other parameters pass


def test_secrets_are_removed_and_tokens_are_fingerprints(tmp_path):
    doc = {"fleet": {"accounts": [{"name": "main", "api_key_env": "K", "api_key": "AKIA-SECRET", "api_secret": "s3cr3t"}],
                     "api": {"token_env": "T", "token": "tok-123"},
                     "journal": {"url": "postgresql://u:pw@h/db", "password": "pw", "password_env": "P"}}}
    red = redact(doc)
    text = json.dumps(red)
    for secret in ("AKIA-SECRET", "s3cr3t", "tok-123", ":pw@", '"pw"'):
        assert secret not in text
    assert red["fleet"]["accounts"][0]["api_key_env"] == "K" and red["fleet"]["accounts"][0]["api_secret"] == REDACTED
    fp = token_fingerprint("tok-123")
    assert fp.startswith("sha256:") and "tok-123" not in fp and fp == token_fingerprint("tok-123")
    row = event_row("f", "kill", actor="api", symbol="ETHUSDC", reason="drill", token_fp=fp, content=doc)
    assert row["config_hash"] == config_hash(doc) and "s3cr3t" not in row["content"]
    engine = make_engine(Target(url=f"sqlite:///{tmp_path / 'j.sqlite'}"))
    migrate(engine)
    write_rows(engine, [("events", row), ("events", row)])  # idempotent by uid
    with engine.connect() as conn:
        got = conn.execute(select(events)).mappings().all()
    assert len(got) == 1 and got[0]["token_fp"] == fp and got[0]["actor"] == "api"


def test_the_split_adds_up_and_spread_is_the_edge_against_the_mid(tmp_path):
    engine = make_engine(Target(url=f"sqlite:///{tmp_path / 'j.sqlite'}"))
    migrate(engine)
    # buy 1 @ 99 (mid 100: edge +1), sell 1 @ 103 (mid 102: edge +1), realized 4; buy 2 @ 101 (mid 101.5: +1)
    write_rows(engine, [_fill(1, "BUY", "99", "1", 100.0), _fill(2, "SELL", "103", "1", 102.0, realized="4"),
                        _fill(3, "BUY", "101", "2", 101.5),
                        ("funding", {"ts_ms": 5000, "fleet": "f", "account": "main", "symbol": "ETHUSDC", "epoch": 1,
                                     "income_id": 7, "amount": "-0.5", "asset": "USDC"}),
                        ("snapshots", {"uid": "s1", "ts_ms": 9000, "fleet": "f", "account": "main", "symbol": "ETHUSDC",
                                       "epoch": 1, "position": 2.0, "mark": 104.0})])
    report = pnl.compute(engine)
    d = report["symbols"]["ETHUSDC"]
    assert d["realized"] == 4 and d["fees"] == 0.03 and d["funding"] == -0.5
    assert d["unrealized"] == 6.0  # 2 held from 101, marked at 104
    assert d["split"]["spread"] == 3.0
    assert d["total"] == 4 + 6 - 0.5 - 0.03
    s = d["split"]
    assert Decimal(str(s["spread"] + s["inventory"] + s["funding"] + s["fees"])).quantize(Decimal("1e-8")) == \
        Decimal(str(d["total"])).quantize(Decimal("1e-8"))
    since = pnl.compute(engine, since_ms=1003)  # only the last buy: its edge, and the mark's move since
    assert since["symbols"]["ETHUSDC"]["fills"] == 1 and since["symbols"]["ETHUSDC"]["split"]["spread"] == 1.0


def test_fees_in_another_asset_are_apart_and_each_accounts_position_is_its_own(tmp_path):
    """A fee paid in BNB (Binance's fee discount) is not added to USDC fees: listed apart, out of the
    total, as the agent counts it. Account a long 1 from 2000 and account b short 1 from 2100 on one
    symbol, marked at 2050: 50 + 50 unrealized, not a flat book."""
    engine = make_engine(Target(url=f"sqlite:///{tmp_path / 'j.sqlite'}"))
    migrate(engine)
    long_a = _fill(1, "BUY", "2000", "1", 2000.0, fee="0.5")
    short_b = _fill(2, "SELL", "2100", "1", 2100.0, fee="0.001")
    short_b[1].update(account="b", fee_asset="BNB")
    write_rows(engine, [long_a, short_b,
                        ("snapshots", {"uid": "s1", "ts_ms": 9000, "fleet": "f", "account": "main", "symbol": "ETHUSDC",
                                       "epoch": 1, "position": 1.0, "mark": 2050.0}),
                        ("snapshots", {"uid": "s2", "ts_ms": 9000, "fleet": "f", "account": "b", "symbol": "ETHUSDC",
                                       "epoch": 1, "position": -1.0, "mark": 2050.0})])
    d = pnl.compute(engine)["symbols"]["ETHUSDC"]
    assert d["fees"] == 0.5 and d["other_fees"] == {"BNB": 0.001} and d["fee_assets"] == ["BNB", "USDC"]
    assert d["unrealized"] == 100.0 and d["position"] == 0.0
    assert d["total"] == 100.0 - 0.5
    assert pnl.compute(engine)["fleet"]["other_fees"] == {"BNB": 0.001}
    assert pnl.compute(engine, account="b")["symbols"]["ETHUSDC"]["unrealized"] == 50.0
    # no mark, no mid (fills from the backfill only): each account's book at its own entry, no P&L invented
    bare = make_engine(Target(url=f"sqlite:///{tmp_path / 'k.sqlite'}"))
    migrate(bare)
    a2, b1 = _fill(5, "BUY", "100", "2", None), _fill(6, "SELL", "200", "1", None)
    b1[1]["account"] = "b"
    write_rows(bare, [a2, b1])
    assert pnl.compute(bare)["symbols"]["ETHUSDC"]["unrealized"] == 0.0


def test_an_unreachable_database_spools_and_replays(tmp_path):
    bad = Target(url="postgresql+psycopg://nobody@127.0.0.1:1/none", spool_dir=str(tmp_path / "spool"))
    w = JournalWriter(bad, "t", flush_interval=0.05).start()
    for i in range(10):
        w.put(_fill(i, "BUY", "1", "1", 1.0))
    assert w.flush(20)
    assert w.stats["spooled"] == 10 and w.spool_path.exists() and not w.db_up
    w.close(1)
    good = Target(url=f"sqlite:///{tmp_path / 'j.sqlite'}", spool_dir=str(tmp_path / "spool"))
    w2 = JournalWriter(good, "t", flush_interval=0.05).start()  # the same name: it finds the spool
    import time

    end = time.monotonic() + 20
    while w2.spool_path.exists() and time.monotonic() < end:
        time.sleep(0.05)
    w2.close(2)
    assert w2.stats["replayed"] == 10 and not w2.spool_path.exists()
    engine = make_engine(good)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM fills").scalar() == 10


def test_a_spool_line_cut_mid_write_loses_that_row_only_and_is_counted(tmp_path):
    """A crash or a full disk mid-append leaves half a line at the spool's end: the next append starts
    on a line of its own (it was joined to the cut one, and both were skipped at the replay, unsaid)."""
    spool = tmp_path / "spool"
    bad = Target(url="postgresql+psycopg://nobody@127.0.0.1:1/none", spool_dir=str(spool))
    w = JournalWriter(bad, "t", flush_interval=0.05).start()
    w.put(_fill(1, "BUY", "1", "1", 1.0))
    assert w.flush(20) and w.spool_path.exists()
    with open(w.spool_path, "a", encoding="utf-8") as f:   # the cut row: a crash mid-write
        f.write('{"t":"fills","r":{"ts_ms":1002,"fleet"')
    for i in (3, 4):
        w.put(_fill(i, "BUY", "1", "1", 1.0))
    assert w.flush(20)
    w.close(1)
    good = Target(url=f"sqlite:///{tmp_path / 'j.sqlite'}", spool_dir=str(spool))
    w2 = JournalWriter(good, "t", flush_interval=0.05).start()
    import time

    end = time.monotonic() + 20
    while (w2.spool_path.exists() or w2.replay_path.exists()) and time.monotonic() < end:
        time.sleep(0.05)
    holes = w2.status()["holes"]
    w2.close(2)
    assert w2.stats["replayed"] == 3 and w2.stats["dropped"] == 1
    with make_engine(good).connect() as conn:
        assert sorted(r for (r,) in conn.exec_driver_sql("SELECT trade_id FROM fills")) == [1, 3, 4]
    # the cut row may be a fill the later ones would carry the backfill's cursor past: read again by time
    assert holes["trade_ms"] <= 1001 and holes["funding"] <= 1001, holes


def test_a_replayed_spool_that_cannot_be_removed_is_counted_once_and_said_once(tmp_path, monkeypatch, caplog):
    """The replayed spool's removal refused (a read-only or foreign-owned directory): every drain after
    counted its rows and cut lines again (the snapshot's ``lost``), with an ERROR each time."""
    import time
    from pathlib import Path

    spool = tmp_path / "spool"
    bad = Target(url="postgresql+psycopg://nobody@127.0.0.1:1/none", spool_dir=str(spool))
    w = JournalWriter(bad, "t", flush_interval=0.05).start()
    w.put(_fill(1, "BUY", "1", "1", 1.0))
    assert w.flush(20)
    with open(w.spool_path, "a", encoding="utf-8") as f:   # a cut line
        f.write('{"t":"fills","r":{"ts_ms":1002,"fleet"\n')
    w.close(1)
    real_unlink = Path.unlink

    def refuse(self, missing_ok=False):
        if self.name.endswith(".replaying.jsonl"):
            raise PermissionError(13, "Permission denied", str(self))
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", refuse)
    good = Target(url=f"sqlite:///{tmp_path / 'j.sqlite'}", spool_dir=str(spool))
    w2 = JournalWriter(good, "t", flush_interval=0.05).start()
    end = time.monotonic() + 20
    while w2.stats["replayed"] == 0 and time.monotonic() < end:
        time.sleep(0.05)
    w2.put(_fill(2, "BUY", "1", "1", 1.0))
    for _ in range(5):   # drains after the replay
        assert w2.flush(20)
    w2.close(2)
    assert w2.stats["replayed"] == 1 and w2.stats["dropped"] == 1, w2.stats
    said = [r for r in caplog.records if "could not be removed" in r.getMessage()]
    assert len(said) == 1 and w2.replay_path.exists()


def test_a_sqlite_file_removed_under_the_journal_is_said_and_a_new_one_written(tmp_path, monkeypatch):
    """Its connections would write on into the removed file, unseen (the directory removed by hand):
    the writer notices, counts, makes a new file and asks for the exchange's trades and funding again."""
    import journal.writer as writer_module
    from tests.polling import poll

    monkeypatch.setattr(writer_module, "FILE_CHECK_S", 0.1)
    db = tmp_path / "db" / "j.sqlite"
    db.parent.mkdir()
    target = Target(url=f"sqlite:///{db}", spool_dir=str(tmp_path / "spool"))
    w = JournalWriter(target, "t", flush_interval=0.05).start()
    w.put(_fill(1, "BUY", "1", "1", 1.0))
    assert w.flush(20) and db.exists()
    for path in db.parent.iterdir():
        path.unlink()
    w.put(_fill(2, "BUY", "1", "1", 1.0))
    poll(lambda: w.stats["file_replaced"] == 1 and db.exists() and w.flush(5) and w.db_up, timeout=30,
         what="a new journal file")
    holes = w.status()["holes"]
    w.close(5)
    with make_engine(target).connect() as conn:
        assert sorted(r for (r,) in conn.exec_driver_sql("SELECT trade_id FROM fills")) == [2]
    assert "trade_ms" in holes and "funding" in holes


def test_a_liquidations_clearance_fee_is_a_fee_and_never_moves_the_funding_cursor(tmp_path):
    """An INSURANCE_CLEAR income row (the fee a liquidation paid to the insurance fund, agents/clearance.py)
    is kept beside the funding: in the P&L's fees (and apart as ``clearance_fees``), not in its funding; the
    funding backfill's cursor reads the FUNDING_FEE rows only, so a fee after the last settlement does not
    skip the settlements between. A row written before the column (a spool of an older version) is funding;
    a clearance row and a funding row of one tranId are both kept."""
    from journal.recorder import AgentJournal
    from journal.writer import cursors

    target = Target(url=f"sqlite:///{tmp_path / 'j.sqlite'}", spool_dir=str(tmp_path / "spool"))
    j = AgentJournal(target, fleet="f", account="main", symbol="ETHUSDC")
    income = {"symbol": "ETHUSDC", "asset": "USDC"}
    rows = [r for item in (("income", 1, {**income, "incomeType": "FUNDING_FEE", "time": 2_000, "tranId": 9,
                                          "income": "-0.5"}),
                           # Binance: a tranId is unique within an income type only
                           ("income", 1, {**income, "incomeType": "INSURANCE_CLEAR", "time": 9_000, "tranId": 9,
                                          "income": "-3.25"}),
                           ("income", 1, {**income, "incomeType": "REALIZED_PNL", "time": 9_000, "tranId": 12,
                                          "income": "5"}))
            for r in j._convert(item)]
    engine = make_engine(Target(url=f"sqlite:///{tmp_path / 'k.sqlite'}"))
    migrate(engine)
    old = ("funding", {"ts_ms": 1_000, "fleet": "f", "account": "main", "symbol": "ETHUSDC", "epoch": 1,
                       "income_id": 8, "amount": "-0.25", "asset": "USDC"})
    write_rows(engine, [_fill(1, "BUY", "99", "1", 100.0), old, *rows])
    d = pnl.compute(engine)["symbols"]["ETHUSDC"]
    assert d["funding"] == -0.75 and d["clearance_fees"] == 3.25 and d["fees"] == 3.26
    assert d["split"]["fees"] == -3.26 and d["total"] == -0.75 - 3.26 + d["unrealized"]
    assert cursors(engine, "main", "ETHUSDC") == (1, 2_000)


def test_an_exchange_row_that_is_not_a_number_is_skipped_and_the_others_written(tmp_path):
    """A userTrades or income row with "NaN" would make the journal's P&L NaN for good (rows are unique
    by their ids, a later read never corrects them): skipped, counted, logged; the batch's others stay."""
    from journal.recorder import AgentJournal

    target = Target(url=f"sqlite:///{tmp_path / 'j.sqlite'}", spool_dir=str(tmp_path / "spool"))
    j = AgentJournal(target, fleet="f", account="main", symbol="ETHUSDC")
    trade = {"time": 1_000, "id": 7, "orderId": 3, "side": "BUY", "price": "3000.5", "qty": "0.010",
             "commission": "0.006", "commissionAsset": "USDC", "maker": True, "realizedPnl": "0"}
    fee = {"incomeType": "FUNDING_FEE", "symbol": "ETHUSDC", "time": 2_000, "tranId": 9, "income": "-0.01",
           "asset": "USDC"}
    rows = [r for item in (("trade", 1, trade), ("trade", 1, {**trade, "id": 8, "price": "NaN"}),
                           ("income", 1, fee), ("income", 1, {**fee, "tranId": 10, "income": "Infinity"}))
            for r in j._convert(item)]
    assert [(kind, row.get("trade_id", row.get("income_id"))) for kind, row in rows] == [("fills", 7), ("funding", 9)]
    assert rows[0][1]["price"] == "3000.5" and rows[1][1]["amount"] == "-0.01" and j.bad_rows == 2


def test_the_fleets_figures_keep_each_quote_assets_own_beside_their_sum(tmp_path):
    """ETHUSDC's P&L is in USDC, SOLUSDT's in USDT: the fleet's line adds them 1:1 and says so, and each
    asset's own sum is kept (``by_quote``), in the JSON and in the table."""
    engine = make_engine(Target(url=f"sqlite:///{tmp_path / 'j.sqlite'}"))
    migrate(engine)
    eth = _fill(1, "SELL", "2000", "1", 2000.0, realized="3", fee="0.5")
    sol = _fill(2, "SELL", "100", "1", 100.0, realized="2", fee="0.25")
    sol[1].update(symbol="SOLUSDT", fee_asset="USDT")
    write_rows(engine, [eth, sol])
    report = pnl.compute(engine)
    by = report["by_quote"]
    assert (by["USDC"]["realized"], by["USDC"]["fees"], by["USDC"]["fills"]) == (3.0, 0.5, 1)
    assert (by["USDT"]["realized"], by["USDT"]["fees"], by["USDT"]["fills"]) == (2.0, 0.25, 1)
    assert report["fleet"]["realized"] == 5.0 and report["fleet"]["quote_assets"] == ["USDC", "USDT"]
    table = pnl.render(report)
    assert "FLEET USDC" in table and "FLEET USDT" in table and "(USDC + USDT, added 1:1)" in table, table
    one = make_engine(Target(url=f"sqlite:///{tmp_path / 'k.sqlite'}"))
    migrate(one)
    write_rows(one, [_fill(3, "BUY", "2000", "1", 2000.0)])
    assert "FLEET USDC" not in pnl.render(pnl.compute(one))   # one asset: the fleet's line is its own
    assert pnl.quote_of("ETHFDUSD") == "FDUSD" and pnl.quote_of("ETHBUSD") == "BUSD" and pnl.quote_of("X") == "?"


def test_a_replay_removes_only_the_file_it_read_not_one_another_writer_renamed_there(tmp_path):
    """Two writers of one name (the ``journal replay`` command beside a running agent): while one's
    replay of a spool waits on a slow database, the other replays the same file, removes it, spools new
    rows and renames them to the replay's path. The slow one must not remove that new file: its rows
    are then in the journal once the other replays it, none lost."""
    import threading

    from journal.writer import _append_lines

    spool = tmp_path / "spool"
    target = Target(url=f"sqlite:///{tmp_path / 'j.sqlite'}", spool_dir=str(spool))
    name = "f-ETHUSDC"
    _append_lines(spool / f"{name}.spool.jsonl", [_fill(i, "BUY", "3000", "0.01", 3000.0) for i in range(3)])
    slow = JournalWriter(target, name)
    go, writing = threading.Event(), threading.Event()
    write = slow._write

    def held(rows):   # a database that answers late
        writing.set()
        go.wait(30)
        return write(rows)

    slow._write = held
    answered: dict[str, bool] = {}
    t = threading.Thread(target=lambda: answered.setdefault("slow", slow.replay_now()))
    t.start()
    assert writing.wait(30)
    live = JournalWriter(target, name)
    assert live.replay_now() and not live.replay_path.exists()   # replayed the same file, and removed it
    _append_lines(live.spool_path, [_fill(i, "BUY", "3000", "0.01", 3000.0) for i in range(10, 15)])
    refused = live._write
    live._write = lambda rows: False   # its database away again: the new spool is renamed, not yet in
    assert not live.replay_now() and live.replay_path.exists()
    go.set()
    t.join(30)
    assert answered == {"slow": True} and live.replay_path.exists()   # the other's file left in place
    live._write = refused
    assert live.replay_now() and not live.replay_path.exists()
    with make_engine(target).connect() as conn:
        ids = [r[0] for r in conn.exec_driver_sql("SELECT trade_id FROM fills ORDER BY trade_id")]
    assert ids == [0, 1, 2, 10, 11, 12, 13, 14]
    slow.close(1)
    live.close(1)


def test_since_parsing():
    assert parse_since("90m", now_ms=10_000_000) == 10_000_000 - 90 * 60_000
    assert parse_since("1700000000000") == 1_700_000_000_000
    assert parse_since("2026-01-01T00:00") == 1_767_225_600_000
    assert parse_since(None) is None


def _count(target: Target, table: str = "fills") -> int:
    with make_engine(target).connect() as conn:
        return conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar()


def _blocked_target(tmp_path):
    """A SQLite file and a spool whose directories cannot be made while ``blocker`` is a regular file."""
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    return blocker, Target(url=f"sqlite:///{blocker / 'j.sqlite'}", spool_dir=str(blocker / "spool"))


def _wait(check, timeout=20.0):
    import time

    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, "not in time"
        time.sleep(0.05)


def test_rows_neither_the_database_nor_the_spool_takes_are_held_then_written_once_one_answers(tmp_path):
    blocker, target = _blocked_target(tmp_path)
    w = JournalWriter(target, "t", flush_interval=0.05, queue_max=1_000).start()
    for i in range(1, 11):
        w.put(_fill(i, "BUY", "1", "1", 1.0))
    _wait(lambda: w.status()["held_now"] == 10)
    assert w.stats["dropped"] == 0 and w.take_holes() == {} and "spool" in w.last_error
    blocker.unlink()   # the disk takes rows again: spooled, then replayed once the database answers
    _wait(lambda: w.status()["held_now"] == 0 and w.db_up and not w.spool_path.exists())
    w.close(5)
    assert _count(target) == 10 and w.stats["dropped"] == 0


def test_rows_lost_are_counted_and_their_fills_and_funding_leave_holes_kept_across_a_close(tmp_path):
    """Rows past ``queue_max`` are lost: counted, and the lowest trade id and funding time lost are the
    holes the next backfill reads again, kept on disk from the moment they are known until filled."""
    blocker, _ = _blocked_target(tmp_path)
    target = Target(url=f"sqlite:///{blocker / 'j.sqlite'}", spool_dir=str(tmp_path / "spool"))
    w = JournalWriter(target, "t", flush_interval=0.05, queue_max=5)
    for i in range(40, 52):   # the queue holds 5: fills 45 to 51 are lost at once
        w.put(_fill(i, "SELL", "1", "1", 1.0))
    w.put(("funding", {"ts_ms": 7_000, "fleet": "f", "account": "main", "symbol": "ETHUSDC", "epoch": 1,
                       "income_id": 3, "amount": "-0.1", "asset": "USDC"}))
    assert w.stats["dropped"] == 8 and w.status()["holes"] == {"trade": 45, "funding": 7_000}
    assert json.loads(w.holes_path.read_text()) == {"trade": 45, "funding": 7_000}   # on disk at once (a SIGKILL)
    w.start()
    assert w.flush(20) and w.stats["spooled"] == 5
    w.close(1)
    w2 = JournalWriter(target, "t", flush_interval=0.05).start()   # the next start finds the holes
    taken = w2.take_holes()
    assert taken == {"trade": 45, "funding": 7_000}
    assert w2.holes_path.exists()   # taken, not yet filled: still on disk
    w2.note_hole({"trade_ms": 9_000})   # a gap heard of meanwhile: not filled by that backfill's rows
    w2.holes_filled(taken)   # the backfill's rows handed over: forgotten once the writer put them away
    _wait(lambda: json.loads(w2.holes_path.read_text()) == {"trade_ms": 9_000})
    second = w2.take_holes()
    w2.restore_holes(second)   # that backfill failed: the hole stays, on disk too
    assert json.loads(w2.holes_path.read_text()) == {"trade_ms": 9_000}
    w2.holes_filled(w2.take_holes())
    _wait(lambda: not w2.holes_path.exists())
    w2.close(1)


def test_holes_noted_from_several_threads_at_once_are_all_on_disk(tmp_path, caplog):
    """The writer's thread and the agent's loop keep the holes on disk at the same time: each write whole,
    the file left with every hole (they shared one temp file: one renamed the other's, ENOENT, and the
    file could lack the newest hole, which a restart before the next backfill never read again); a second
    writer of the same name (a stopping agent's beside its successor's) writes through its own temp file."""
    import threading

    target = Target(url=f"sqlite:///{tmp_path / 'j.sqlite'}", spool_dir=str(tmp_path / "spool"))
    w = JournalWriter(target, "t")
    other = JournalWriter(target, "t")   # a stopping agent's writer beside its successor's: one file name
    start = threading.Barrier(5)

    def note(first: int) -> None:
        start.wait()
        for i in range(300):
            w.note_hole({"trade": 10_000 - first - 4 * i})

    def note_other() -> None:
        start.wait()
        for i in range(300):
            other.note_hole({"funding": 50_000 - i})

    threads = [threading.Thread(target=note, args=(k,)) for k in range(4)] + [threading.Thread(target=note_other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert "not kept on disk" not in caplog.text
    assert w.status()["holes"] == {"trade": 10_000 - 3 - 4 * 299}
    w.note_hole({"trade": 1})   # the last to write: the file is its holes, and no temp file is left beside it
    assert json.loads(w.holes_path.read_text()) == {"trade": 1}
    assert sorted(p.name for p in w.holes_path.parent.iterdir() if "holes" in p.name) == [w.holes_path.name]


def test_a_stopping_writer_left_without_holes_leaves_its_successors_holes_on_disk(tmp_path):
    """Two writers of one name (a stopping agent's and its successor's): the one whose backfill filled its
    holes removes the file only if it still holds what it wrote itself; the successor's holes written
    since stay on disk for a restart, and go once that writer has filled them."""
    target = Target(url=f"sqlite:///{tmp_path / 'j.sqlite'}", spool_dir=str(tmp_path / "spool"))
    stopping = JournalWriter(target, "t", flush_interval=0.05).start()
    stopping.note_hole({"trade": 5})
    successor = JournalWriter(target, "t", flush_interval=0.05).start()   # reads the file as it is
    successor.note_hole({"trade_ms": 100})
    assert json.loads(successor.holes_path.read_text()) == {"trade": 5, "trade_ms": 100}
    stopping.holes_filled(stopping.take_holes())   # its last backfill read its hole
    _wait(lambda: stopping.status()["holes"] == {})
    stopping.close(5)
    assert json.loads(successor.holes_path.read_text()) == {"trade": 5, "trade_ms": 100}   # not removed
    successor.holes_filled(successor.take_holes())
    _wait(lambda: not successor.holes_path.exists())
    successor.close(5)
    assert [p.name for p in successor.holes_path.parent.iterdir() if "holes" in p.name] == []


def test_a_close_with_the_database_locked_spools_what_is_left(tmp_path):
    """A close that cannot wait for a stalled database (another process holds the SQLite file's lock)
    puts what is left into the spool; a later writer replays it."""
    import sqlite3

    target = Target(url=f"sqlite:///{tmp_path / 'j.sqlite'}", spool_dir=str(tmp_path / "spool"))
    migrate(make_engine(target))
    lock = sqlite3.connect(tmp_path / "j.sqlite", isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        w = JournalWriter(target, "t", flush_interval=0.05).start()
        for i in range(1, 21):
            w.put(_fill(i, "BUY", "1", "1", 1.0))
        w.close(0.5)
        assert w.spool_path.exists() and w.stats["dropped"] == 0
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    w2 = JournalWriter(target, "t", flush_interval=0.05).start()
    _wait(lambda: not w2.spool_path.exists())
    w2.close(5)
    assert _count(target) == 20


def test_a_row_the_database_refuses_is_kept_apart_and_the_others_written(tmp_path):
    """Not an outage: the batch's other rows are written, the refused one kept in the rejects file."""
    target = Target(url=f"sqlite:///{tmp_path / 'j.sqlite'}", spool_dir=str(tmp_path / "spool"))
    w = JournalWriter(target, "t", flush_interval=0.05).start()
    bad = _fill(3, "BUY", "1", "1", 1.0)
    bad[1]["side"] = None   # NOT NULL
    for row in (_fill(1, "BUY", "1", "1", 1.0), _fill(2, "BUY", "1", "1", 1.0), bad, _fill(4, "SELL", "1", "1", 1.0)):
        w.put(row)
    assert w.flush(20)
    w.close(5)
    assert _count(target) == 3 and w.stats["rejected"] == 1 and not w.spool_path.exists()
    kept = [json.loads(line) for line in w.rejects_path.read_text().splitlines()]
    assert [(k["t"], k["r"]["trade_id"]) for k in kept] == [("fills", 3)]


def test_a_value_the_driver_refuses_is_a_row_problem_live_and_on_replay(tmp_path):
    """SQLite's driver raises a bare OverflowError for an integer beyond 64 bits (not a database error):
    only that row is kept apart, the batch's others are written, and a spool holding it is replayed to
    its end instead of stalling the writer for good."""
    target = Target(url=f"sqlite:///{tmp_path / 'j.sqlite'}", spool_dir=str(tmp_path / "spool"))
    bad = _fill(3, "BUY", "1", "1", 1.0)
    bad[1]["order_id"] = 2**64 - 1
    w = JournalWriter(target, "t", flush_interval=0.05).start()
    for row in (_fill(1, "BUY", "1", "1", 1.0), _fill(2, "BUY", "1", "1", 1.0), bad, _fill(4, "SELL", "1", "1", 1.0)):
        w.put(row)
    assert w.flush(20)
    w.close(5)
    assert _count(target) == 3 and w.stats["rejected"] == 1 and w.stats["dropped"] == 0
    from journal.writer import _append_lines

    spooled = Target(url=f"sqlite:///{tmp_path / 'k.sqlite'}", spool_dir=str(tmp_path / "spool2"))
    w2 = JournalWriter(spooled, "t", flush_interval=0.05)
    _append_lines(w2.spool_path, [_fill(5, "BUY", "1", "1", 1.0), bad, _fill(6, "BUY", "1", "1", 1.0)])
    w2.start()
    w2.put(_fill(7, "SELL", "1", "1", 1.0))
    _wait(lambda: not w2.spool_path.exists() and not w2.replay_path.exists() and _count(spooled) == 3)
    assert w2.flush(20)
    w2.close(5)
    assert _count(spooled) == 3 and w2.stats["rejected"] == 1


def test_the_journal_commands_refuse_bad_input_with_a_reason_and_no_traceback(tmp_path):
    """A mistyped fleet makes no empty journal and reports no zeros; a --since out of range, a --limit
    under 1, an export directory that cannot be made: each a one-line error and an exit code."""
    import subprocess
    import sys
    from pathlib import Path

    from journal.db import sqlite_path

    state = tmp_path / "state"
    target = Target(url=f"sqlite:///{sqlite_path(state, 'f')}", spool_dir=str(tmp_path / "spool"))
    w = JournalWriter(target, "t", flush_interval=0.05).start()
    w.put(_fill(1, "BUY", "3000", "0.01", 3000.0))
    forged = "drill\n2026-12-01 00:00:00.000 f          ETHUSDC   -     resume api \x1b[2J"
    w.put(("events", event_row("f", "kill", actor="api", symbol="ETHUSDC", reason=forged)))
    assert w.flush(20)
    w.close(5)
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    import sqlite3

    other = tmp_path / "other"   # another program's database at the journal's name, and an empty one
    other.mkdir()
    with sqlite3.connect(sqlite_path(other, "foreign")) as conn:
        conn.execute("CREATE TABLE fills (x INTEGER)")
    sqlite_path(other, "empty").write_bytes(b"")
    before = {p.name: p.read_bytes() for p in other.iterdir()}
    repo = Path(__file__).resolve().parents[2]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "fleet", "journal", *args], cwd=repo, capture_output=True,
                              text=True, timeout=120)

    ok = run("fills", "--state-dir", str(state), "--fleet", "f", "--json")
    assert ok.returncode == 0 and json.loads(ok.stdout)[0]["trade_id"] == 1, ok.stderr
    shown = run("events", "--state-dir", str(state), "--fleet", "f")   # a reason cannot forge a row
    assert shown.returncode == 0 and len(shown.stdout.splitlines()) == 2, shown.stdout
    assert "\x1b" not in shown.stdout and "drill\\n2026" in shown.stdout, shown.stdout
    for args, code, says in (
        (("pnl", "--state-dir", str(state), "--fleet", "nofleet"), 2, "no journal at"),
        (("pnl", "--state-dir", str(state), "--fleet", "f", "--since", "99999999999999999999d"), 2, "before 1970"),
        (("fills", "--state-dir", str(state), "--fleet", "f", "--limit", "-1"), 2, "is not 1 or more"),
        (("export", "--state-dir", str(state), "--fleet", "f", str(blocker / "out")), 1, "export failed"),
        (("pnl", "--state-dir", str(other), "--fleet", "foreign"), 2, "is not a journal (tables fills"),
        (("events", "--state-dir", str(other), "--fleet", "empty"), 2, "the database is empty"),
    ):
        r = run(*args)
        assert r.returncode == code and says in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
    assert not (state / "nofleet.journal.sqlite").exists()
    assert {p.name: p.read_bytes() for p in other.iterdir()} == before   # a read changed neither


def test_a_replay_reads_another_file_at_its_path_from_its_start(tmp_path):
    """The offset of a replay cut short belongs to its file: another writer of the name may replay that
    file and rename a new spool to the path; carried over, the offset skipped the new file's first rows."""
    import json as _json

    from journal.writer import _Replay

    path = tmp_path / "w.replay"

    def spool(tag: str, n: int) -> None:
        tmp = tmp_path / "new"
        tmp.write_text("".join(_json.dumps({"t": "events", "r": {"uid": f"{tag}{i}"}}) + "\n" for i in range(n)))
        tmp.replace(path)   # a new file (a new inode) at the path, as a rename does

    spool("a", 4)
    written: list[str] = []
    first = [True]

    def write(rows) -> bool:   # the first batch goes in, the second fails (the database went away)
        if not first[0]:
            return False
        first[0] = False
        written.extend(r["uid"] for _, r in rows)
        return True

    replay = _Replay()
    assert replay.run(path, 2, write) is False and written == ["a0", "a1"] and replay.offset > 0
    spool("b", 3)
    assert replay.run(path, 2, lambda rows: written.extend(r["uid"] for _, r in rows) or True)
    assert written == ["a0", "a1", "b0", "b1", "b2"] and replay.rows == 3


@settings(max_examples=300, deadline=None)
@given(st.tuples(*(st.decimals(min_value=-1000, max_value=1000, places=12, allow_nan=False, allow_infinity=False)
                   for _ in range(5))))
def test_the_pnl_split_adds_up_to_the_total_it_shows(values):
    """Each figure is shown to 8 decimals: the split's parts, so shown, add up to the total so shown
    (inventory is what the rounded parts leave of it), whatever the decimals of the fills' edges."""
    row = pnl.SymbolPnl("ETHUSDC")
    row.realized, row.unrealized, row.spread, row.funding, fees = values
    row.fees = abs(fees)
    d = row.as_dict()
    s = d["split"]
    assert abs(s["spread"] + s["inventory"] + s["funding"] + s["fees"] - d["total"]) < 1e-9
    assert abs(Decimal(str(s["inventory"])) - (row.trading - row.spread)) <= Decimal("0.00000002")


def test_a_fleets_spools_are_said_by_the_reads_and_replayed_by_the_command(tmp_path):
    """A fleet stopped while its database did not answer leaves spools that only its next ``up`` would
    bring in: the read commands say so (a report is not short without a word), ``journal replay`` puts
    them in now, once, and leaves another fleet's spools alone; with the database still away it says
    what is left and exits 1."""
    import subprocess
    import sys
    from pathlib import Path

    from journal.db import sqlite_path

    state = tmp_path / "state"
    spool = state / "journal-spool"
    away = Target(url="postgresql+psycopg://nobody@127.0.0.1:1/none", spool_dir=str(spool))
    for name, n in (("f-ETHUSDC", 7), ("f-cli", 1), ("g-ETHUSDC", 2), ("f-b-ETHUSDC", 3)):   # f-b: another fleet
        w = JournalWriter(away, name, flush_interval=0.05).start()
        for i in range(n):
            w.put(_fill(i, "BUY", "3000", "0.01", 3000.0) if n > 1 else
                  ("events", event_row("f", "up", actor="cli", reason="up while the database was down")))
        assert w.flush(20) and w.stats["spooled"] == n
        w.close(1)
    journal = Target(url=f"sqlite:///{sqlite_path(state, 'f')}", spool_dir=str(spool))
    w = JournalWriter(journal, "f-seed", flush_interval=0.05).start()   # the journal exists, without those rows
    w.put(_fill(100, "SELL", "3001", "0.01", 3001.0))
    assert w.flush(20)
    w.close(5)
    config = tmp_path / "fleet.yaml"
    account = {"name": "main", "api_key_env": "MMFLEET_MAIN_API_KEY", "api_secret_env": "MMFLEET_MAIN_API_SECRET"}
    config.write_text(json.dumps({"name": "f", "state_dir": str(state), "accounts": [account],
                                  "symbols": [{"symbol": "ETHUSDC", "account": "main"}]}))
    away_config = tmp_path / "away.yaml"
    away_config.write_text(json.dumps({"name": "f", "state_dir": str(state), "accounts": [account],
                                       "journal": {"url": "postgresql://nobody@127.0.0.1:1/none"},
                                       "symbols": [{"symbol": "ETHUSDC", "account": "main"}]}))
    odd = spool / "f-x\x1b[2J y.spool.jsonl"   # no writer's name (terminal escapes): neither read nor printed
    odd.write_text((spool / "g-ETHUSDC.spool.jsonl").read_text())
    repo = Path(__file__).resolve().parents[2]

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "fleet", "journal", *args], cwd=repo, capture_output=True,
                              text=True, timeout=120)

    before = run("fills", "--state-dir", str(state), "--fleet", "f", "--json")
    assert before.returncode == 0 and len(json.loads(before.stdout)) == 1, before.stderr
    assert "note: 8 rows spooled" in before.stderr and "f-ETHUSDC: 7" in before.stderr, before.stderr
    assert "g-ETHUSDC" not in before.stderr and "f-b-" not in before.stderr and "\x1b" not in before.stderr
    still = run("replay", "--config", str(away_config))
    assert still.returncode == 1 and "f-ETHUSDC: 0 rows" in still.stdout and "still spooled" in still.stdout, still
    done = run("replay", "--config", str(config))
    assert done.returncode == 0 and "f-ETHUSDC: 7 rows" in done.stdout and "f-cli: 1 rows" in done.stdout, done
    assert "f-b-" not in done.stdout and "\x1b" not in done.stdout, done.stdout
    after = run("fills", "--state-dir", str(state), "--fleet", "f", "--json")
    assert len(json.loads(after.stdout)) == 8 and "note:" not in after.stderr, after.stderr
    events_shown = run("events", "--state-dir", str(state), "--fleet", "f", "--json")
    assert [e["kind"] for e in json.loads(events_shown.stdout)] == ["up"]
    again = run("replay", "--config", str(config))
    assert again.returncode == 0 and "no spooled rows of fleet f" in again.stdout
    assert sorted(p.name for p in spool.iterdir() if p.name.endswith(".jsonl")) == sorted(
        ["g-ETHUSDC.spool.jsonl", "f-b-ETHUSDC.spool.jsonl", odd.name])
    bad = run("replay", "--config", str(tmp_path / "missing.yaml"))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr
