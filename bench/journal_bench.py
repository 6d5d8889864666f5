"""Journal benchmark: rows per second the writer sustains into SQLite and PostgreSQL, and the agent's
tick-to-order latency with the journal on and off, in the same run.

1. Writer throughput: fill rows handed to a JournalWriter as fast as a loop can, until all are
   committed (batches of ``batch_max`` in one transaction each): SQLite (WAL, a temporary file) and
   PostgreSQL (a server started here, initdb into a temporary directory, as the test suite does;
   or ``--pg-url`` with the password in MMFLEET_JOURNAL_PASSWORD).
2. Tick-to-order: one agent on the simulator (its own process) in a fast market; the measured window
   alternates journal off / on / off / on (the same agent, the sink swapped between windows), so
   both see the same market, machine load and connection. Tick-to-order is book frame read off the
   socket -> order request written to the socket (aiohttp's trace hook), as bench/agent_bench.py.

Run: .venv/bin/python bench/journal_bench.py [--rows 100000] [--seconds 40]
Figures are printed, never asserted; they depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.agent import TICK_READ, ExchangeEndpoints, SymbolAgent  # noqa: E402
from agents.ownership import LockFileOwnership  # noqa: E402
from bench.agent_bench import SYMBOL, pct, start_sim  # noqa: E402
from fleet.binance.credentials import Credentials  # noqa: E402
from fleet.config import JournalConfig, RuntimeParams, SymbolParams  # noqa: E402
from journal.db import Target, make_engine, migrate  # noqa: E402
from journal.recorder import AgentJournal  # noqa: E402
from journal.sink import NULL_SINK  # noqa: E402
from journal.writer import JournalWriter  # noqa: E402


def fill_row(i: int) -> tuple[str, dict]:
    return ("fills", {"ts_ms": 1_700_000_000_000 + i, "fleet": "bench", "account": "main", "symbol": SYMBOL,
                      "epoch": 1, "trade_id": i, "order_id": i // 3, "client_order_id": f"mm-ETHUSDC-e1-{i}",
                      "side": "BUY" if i % 2 else "SELL", "price": "3001.25", "qty": "0.004", "fee": "0.00240100",
                      "fee_asset": "USDC", "maker": True, "realized_pnl": "0.01200000", "mid": 3001.3,
                      "mark": 3001.31, "source": "stream"})


def writer_rate(target: Target, rows: int, batch_max: int) -> tuple[float, float]:
    engine = make_engine(target)
    migrate(engine)
    engine.dispose()
    w = JournalWriter(target, "bench", queue_max=rows + 1, batch_max=batch_max, flush_interval=0.05).start()
    t0 = time.perf_counter()
    for i in range(rows):
        w.put(fill_row(i))
    put_s = time.perf_counter() - t0
    assert w.flush(600), "the writer did not finish"
    total = time.perf_counter() - t0
    written = w.stats["written"]
    w.close()
    assert written == rows, (written, rows)
    return rows / total, put_s / rows * 1e9


async def latency(args: argparse.Namespace, workdir: Path) -> dict[str, list[int]]:
    sim, info = start_sim(args.volatility, args.step_ms, args.seed, workdir)
    out: dict[str, list[int]] = {"off": [], "on": []}
    try:
        acct = info["accounts"][0]
        agent = SymbolAgent(
            fleet_name="bench", symbol=SYMBOL, params=SymbolParams(), runtime=RuntimeParams(market_stale_sec=30.0),
            endpoints=ExchangeEndpoints(info["rest_url"], info["ws_url"], info["ws_url"]),
            credentials=Credentials(acct["api_key"], acct["api_secret"]),
            ownership=LockFileOwnership(workdir, "bench", SYMBOL),
        )
        target = Target(url=f"sqlite:///{workdir / 'latency.journal.sqlite'}", spool_dir=str(workdir / "spool"))
        journal = AgentJournal(target, fleet="bench", account="main", symbol=SYMBOL,
                               settings=JournalConfig(snapshot_interval_sec=1.0)).attach(agent)
        task = asyncio.create_task(agent.run())
        while agent.status()["state"] != "quoting":
            if task.done():
                task.result()
            await asyncio.sleep(0.05)
        wire: list[int] = []

        async def on_headers_sent(session, ctx, params) -> None:
            tick = TICK_READ.get()
            if tick is not None:
                wire.append(time.perf_counter_ns() - tick[0])

        trace = aiohttp.TraceConfig()
        trace.on_request_headers_sent.append(on_headers_sent)
        trace.freeze()
        agent.client.session._trace_configs.append(trace)
        await asyncio.sleep(args.warmup)
        window = args.seconds / 4
        for mode in ("off", "on", "off", "on"):
            if mode == "on":
                agent.journal = journal
                agent.log.listener = lambda e, m, f: journal.on_log_event(agent, e, m, f)
            else:
                agent.journal = NULL_SINK
                agent.log.listener = None
            wire.clear()
            await asyncio.sleep(window)
            out[mode] += wire
        agent.journal = journal
        rows = journal.writer.stats
        await agent.stop()
        await task
        out["journal_rows"] = [rows["written"]]  # type: ignore[list-item]
    finally:
        sim.terminate()
        sim.wait(10)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows per database for the throughput test")
    parser.add_argument("--batch", type=int, default=500, help="rows per transaction (journal.batch_max)")
    parser.add_argument("--pg-url", help="an existing PostgreSQL (password in MMFLEET_JOURNAL_PASSWORD)")
    parser.add_argument("--no-pg", action="store_true", help="skip PostgreSQL")
    parser.add_argument("--seconds", type=float, default=40.0, help="latency window (four alternating parts)")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--volatility", type=float, default=8.0)
    parser.add_argument("--step-ms", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    workdir = Path(tempfile.mkdtemp(prefix="journal-bench-"))

    print(f"journal benchmark: {args.rows} fill rows per database, batches of {args.batch}")
    rate, put_ns = writer_rate(Target(url=f"sqlite:///{workdir / 'rate.sqlite'}", spool_dir=str(workdir / "s1")),
                               args.rows, args.batch)
    print(f"  SQLite (WAL)     {rate:10.0f} rows/s sustained   (put: {put_ns:.0f} ns a row on the caller's side)")
    if not args.no_pg:
        server = None
        try:
            if args.pg_url:
                url = args.pg_url
            else:
                from tests.journal.pg import PgServer

                server = PgServer()
                server.start()
                os.environ["MMFLEET_JOURNAL_PASSWORD"] = server.password
                url = server.url
            from journal.db import target_from_args

            t = target_from_args(url, None)
            target = Target(url=t.url, password_env="MMFLEET_JOURNAL_PASSWORD", spool_dir=str(workdir / "s2"))
            rate, put_ns = writer_rate(target, args.rows, args.batch)
            print(f"  PostgreSQL       {rate:10.0f} rows/s sustained   (loopback; put: {put_ns:.0f} ns a row)")
        except Exception as exc:  # noqa: BLE001 - say why, keep going
            print(f"  PostgreSQL       not measured: {exc}")
        finally:
            if server is not None:
                server.cleanup()

    lat = asyncio.run(latency(args, workdir))
    print(f"  tick-to-order (frame read -> request on the socket), {args.seconds:.0f} s alternating off/on/off/on, "
          f"volatility {args.volatility}, book step {args.step_ms} ms:")
    for mode in ("off", "on"):
        d = lat[mode]
        print(f"      journal {mode:<3}  {len(d):6d} requests   p50 {pct(d, 0.5):.3f} ms   p99 {pct(d, 0.99):.3f} ms   "
              f"p99.9 {pct(d, 0.999):.3f} ms")
    print(f"  rows the agent's journal wrote meanwhile: {lat['journal_rows'][0]}")
    print(f"  load average at the end {os.getloadavg()[0]:.2f} (2 cores shared; tails follow it)")
    print(f"  reproduce: python bench/journal_bench.py {' '.join(sys.argv[1:])}".rstrip())


if __name__ == "__main__":
    main()
