"""``python -m fleet journal pnl|fills|events|export|replay``: read the trade journal.

Every command takes ``--state-dir D`` (the SQLite journal under a fleet's state directory, the
default ``.mmfleet``) or ``--url postgresql://user@host/db`` (the password from
``MMFLEET_JOURNAL_PASSWORD`` or the file named by ``MMFLEET_JOURNAL_PASSWORD_FILE``, never an
argument), ``--json`` for scripts, ``--since`` (``2026-05-01T12:00``, epoch milliseconds, or an age
such as ``90m``, ``6h``, ``2d``) and ``--symbol`` (repeatable); each says on stderr when rows the
fleet's processes spooled while the database did not answer are waiting (in the state directory's
``journal-spool``). ``replay --config F`` puts the fleet's spools into its journal now (a fleet
stopped during an outage would bring them in only at its next ``up``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from datetime import datetime, timezone
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="journal_command", required=True, metavar="SUBCOMMAND")
    for name, help_text in (
        ("pnl", "P&L per symbol and for the fleet, and its split: spread, inventory, funding, fees"),
        ("fills", "the fills, newest last"),
        ("events", "the audit trail: up, apply, kill, resume, leases, drawdown cuts, grinds, repairs"),
        ("export", "every table to a directory as CSV or Parquet"),
    ):
        p = sub.add_parser(name, help=help_text, description=help_text)
        where = p.add_mutually_exclusive_group()
        where.add_argument("--state-dir", help="a fleet's state directory with its SQLite journal (default .mmfleet)")
        where.add_argument("--url", help="a PostgreSQL journal: postgresql://user@host[:port]/db (no password)")
        p.add_argument("--fleet", help="the fleet (needed when a state directory or database holds several)")
        p.add_argument("--since", help="from this time: ISO date/time (UTC), epoch ms, or an age like 90m, 6h, 2d")
        p.add_argument("--symbol", action="append", help="only this symbol (repeatable)")
        p.add_argument("--json", action="store_true", help="JSON for scripts")
        if name in ("fills", "events"):
            p.add_argument("--limit", type=_positive, default=200, help="at most this many rows, the newest (default 200)")
        if name == "export":
            p.add_argument("--format", choices=("csv", "parquet"), default="csv")
            p.add_argument("dir", help="the directory to write one file per table into")
    text = ("put the rows the fleet's processes spooled while its journal's database did not answer into it "
            "now (safe while the fleet runs)")
    p = sub.add_parser("replay", help=text, description=text)
    p.add_argument("--config", required=True, help="the fleet's config (its journal and state directory)")


MAX_MS = 253_402_300_799_999   # 9999-12-31T23:59:59.999Z: later is not a time a journal holds


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} is not 1 or more")
    return n


def parse_since(text: str | None, now_ms: int | None = None) -> int | None:
    if not text:
        return None
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if m:
        mult = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}[m.group(2)]
        return _in_range(now_ms - int(float(m.group(1)) * mult), text)
    if re.fullmatch(r"\d{10,}", text.strip()):
        return _in_range(int(text), text)
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"--since {text!r}: not a time (ISO date/time, epoch ms, or 90m/6h/2d)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return _in_range(int(dt.timestamp() * 1000), text)


def _in_range(ms: int, text: str) -> int:
    if not 0 <= ms <= MAX_MS:
        raise ValueError(f"--since {text!r}: before 1970 or after 9999")
    return ms


def _engine(args: argparse.Namespace) -> Any:
    from pathlib import Path

    from sqlalchemy.engine import make_url

    from .db import JournalConfigError, make_engine, migrate, target_from_args

    target = target_from_args(args.url, args.state_dir, None if args.url else args.fleet)
    path = make_url(target.url).database or ""
    if target.is_sqlite:   # a read makes no journal where there is none (a fleet name mistyped)
        if not Path(path).exists():
            raise JournalConfigError(f"no journal at {path}: check --state-dir and --fleet")
        _check_is_journal(target, _sqlite_tables(path))   # read-only: the engine's connection writes (its mode)
    engine = make_engine(target)
    try:
        if not target.is_sqlite:
            _check_is_journal(target, _tables(engine))
        migrate(engine)  # a journal of an older version is brought up to date
    except BaseException:
        engine.dispose()
        raise
    return engine


def _sqlite_tables(path: str) -> set[str]:
    import sqlite3
    from pathlib import Path

    conn = sqlite3.connect(f"{Path(path).absolute().as_uri()}?mode=ro", uri=True, timeout=5)
    try:
        return {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()


def _tables(engine: Any) -> set[str]:
    from sqlalchemy import inspect

    from .db import answering

    with answering(engine), engine.connect() as conn:
        return set(inspect(conn).get_table_names())


def _check_is_journal(target: Any, tables: set[str]) -> None:
    """A read turns no database that is not a journal (an empty one, another program's) into one."""
    from sqlalchemy.engine import make_url

    from .db import JournalConfigError
    from .schema import VERSION_TABLE

    if VERSION_TABLE in tables:
        return
    where = make_url(target.url).render_as_string(hide_password=True)
    if not tables:
        raise JournalConfigError(f"no journal at {where} (the database is empty): check the location")
    shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
    raise JournalConfigError(f"{where} is not a journal (tables {shown}, no {VERSION_TABLE}): left as it is")


def _ms(ts: int | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _rows(engine: Any, table: Any, args: argparse.Namespace, since: int | None, limit: int | None) -> list[dict]:
    from sqlalchemy import select

    q = select(table)
    if since is not None:
        q = q.where(table.c.ts_ms >= since)
    if args.symbol:
        q = q.where(table.c.symbol.in_([s.upper() for s in args.symbol]))
    if args.fleet:
        q = q.where(table.c.fleet == args.fleet)
    q = q.order_by(table.c.ts_ms.desc(), table.c.id.desc())
    if limit:
        q = q.limit(limit)
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(q).mappings()]
    rows.reverse()
    return rows


def cmd_pnl(args: argparse.Namespace, engine: Any, since: int | None) -> int:
    from . import pnl

    report = pnl.compute(engine, since_ms=since, symbols=[s.upper() for s in args.symbol] if args.symbol else None,
                         fleet=args.fleet)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    else:
        print(pnl.render(report))
    return EXIT_OK


def cmd_fills(args: argparse.Namespace, engine: Any, since: int | None) -> int:
    from .schema import fills

    rows = _rows(engine, fills, args, since, args.limit)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return EXIT_OK
    print(f"{'TIME (UTC)':<23} {'SYMBOL':<9} {'TRADE':>8} {'SIDE':<4} {'PRICE':>12} {'QTY':>10} {'FEE':>11} "
          f"{'M/T':<3} {'REALIZED':>11} {'MID':>12} {'EPOCH':>5} SRC")
    for r in rows:
        mid = f"{r['mid']:.4f}" if r["mid"] is not None else "-"
        print(f"{_ms(r['ts_ms']):<23} {r['symbol']:<9} {r['trade_id']:>8} {r['side']:<4} {r['price']:>12} {r['qty']:>10} "
              f"{r['fee']:>11} {'M' if r['maker'] else 'T':<3} {r['realized_pnl']:>11} {mid:>12} "
              f"{r['epoch'] if r['epoch'] is not None else '-':>5} {r['source']}")
    return EXIT_OK


def cmd_events(args: argparse.Namespace, engine: Any, since: int | None) -> int:
    from .schema import events

    rows = _rows(engine, events, args, since, args.limit)
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return EXIT_OK
    from agents.logging import escape_controls

    print(f"{'TIME (UTC)':<23} {'FLEET':<10} {'SYMBOL':<9} {'EPOCH':>5} {'KIND':<20} {'BY':<10} {'TOKEN':<12} REASON")
    for r in rows:   # a reason is anyone's text: one row, one line, no terminal escapes
        by = escape_controls(str(r["actor"]))
        print(f"{_ms(r['ts_ms']):<23} {r['fleet']:<10} {r['symbol'] or '*':<9} "
              f"{r['epoch'] if r['epoch'] is not None else '-':>5} {r['kind']:<20} {by:<10} {r['token_fp'] or '':<12} "
              f"{escape_controls((r['reason'] or '')[:120])}"
              + (f"  config {r['config_hash'][:12]}" if r["config_hash"] else ""))
    return EXIT_OK


def cmd_export(args: argparse.Namespace, engine: Any, since: int | None) -> int:
    from .export import export

    written = export(engine, args.dir, fmt=args.format, since_ms=since,
                     symbols=[s.upper() for s in args.symbol] if args.symbol else None, fleet=args.fleet)
    if args.json:
        print(json.dumps(written, indent=2, sort_keys=True))
    else:
        for name, info in written.items():
            print(f"{info['rows']:>8} rows  {info['path']}")
    return EXIT_OK


def _said(exc: BaseException) -> str:
    """An error's type and first line (no traceback; a database URL's password is never in it)."""
    lines = str(exc).splitlines()
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"


def cmd_replay(args: argparse.Namespace) -> int:
    """The fleet's spools into its journal: one line per writer's name, exit 1 if any is left."""
    from fleet.config import ConfigError, load_fleet_config

    from .db import target_of
    from .spools import replay

    try:
        cfg = load_fleet_config(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    target = target_of(cfg)
    try:
        done = replay(target, cfg.name)
    except Exception as exc:  # noqa: BLE001 - a spool directory not readable, a database gone: said, no trace
        print(f"error: replay failed: {_said(exc)}", file=sys.stderr)
        return EXIT_FAILED
    if not done:
        print(f"no spooled rows of fleet {cfg.name} in {target.spool_dir}")
    for r in done:
        cut = f", {r.unreadable} unreadable lines skipped" if r.unreadable else ""
        print(f"{r.name}: {r.rows} rows into {target.describe()}{cut}"
              + (f"; the rest still spooled: {r.error}" if r.error else ""))
    return EXIT_FAILED if any(r.error for r in done) else EXIT_OK


def _say_waiting(args: argparse.Namespace) -> None:
    """A note on stderr when the fleet's processes spooled rows this journal does not hold yet."""
    from pathlib import Path

    from .spools import waiting

    spool_dir = Path(args.state_dir or ".mmfleet") / "journal-spool"
    rows = waiting(spool_dir, args.fleet)
    if rows:
        names = ", ".join(f"{n}: {k}" for n, k in rows.items())
        print(f"note: {sum(rows.values())} rows spooled while the journal's database did not answer wait in "
              f"{spool_dir} ({names}): not in what follows until `python -m fleet journal replay --config F` "
              "or the fleet's next up", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from .db import JournalConfigError

    if args.journal_command == "replay":
        return cmd_replay(args)
    _say_waiting(args)
    try:
        since = parse_since(args.since)
        engine = _engine(args)
    except (ValueError, JournalConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except Exception as exc:  # noqa: BLE001 - a database that does not answer: say which (no password)
        print(f"error: the journal did not open: {_said(exc)}", file=sys.stderr)
        return EXIT_FAILED
    try:
        return {"pnl": cmd_pnl, "fills": cmd_fills, "events": cmd_events, "export": cmd_export}[
            args.journal_command](args, engine, since)
    except (OSError, SQLAlchemyError) as exc:   # a directory not made, a database gone meanwhile: said, no trace
        print(f"error: {args.journal_command} failed: {_said(exc)}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        engine.dispose()
