"""Start and stop benchmark: what an agent's start costs the IP, and how long its stop takes against an
exchange that answers nothing.

Prints the IP weight (the exchange's X-MBX-USED-WEIGHT-1M) a fresh simulator has counted once an agent
with a journal quotes on a frozen market and its start's backfill is over: a first start (no funding
read on record) and a restart on the same journal between two settlements (the income read, 30 weight,
spared), against the IP's 2,400 a minute times a fleet's size; then the stop's time with every REST
answer held a minute, against ``stop_timeout_sec``.

Run: .venv/bin/python bench/start_stop_bench.py [--stop-timeout 20]
Each part runs on a simulator process of its own (its weight counted from 0). Figures are printed,
never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.agent import ExchangeEndpoints, SymbolAgent  # noqa: E402
from agents.ownership import LockFileOwnership  # noqa: E402
from fleet.binance.credentials import Credentials  # noqa: E402
from fleet.config import IP_WEIGHT_PER_MIN, JournalConfig, RuntimeParams, SymbolParams  # noqa: E402
from journal.db import Target  # noqa: E402
from journal.recorder import attach_journal  # noqa: E402

SYMBOL = "ETHUSDC"
REPO = Path(__file__).resolve().parents[1]


def start_sim() -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen([sys.executable, "-m", "fleet", "sim", "--json", "--symbols", SYMBOL],
                            stdout=subprocess.PIPE, text=True, cwd=str(REPO))
    line = proc.stdout.readline() if proc.stdout is not None else ""
    if not line:
        raise SystemExit("the simulator did not start")
    return proc, json.loads(line)


async def admin(http: aiohttp.ClientSession, info: dict, path: str, body: dict) -> None:
    async with http.post(f"{info['rest_url']}{path}", json=body) as r:
        if r.status != 200:
            raise SystemExit(f"{path}: {r.status} {await r.text()}")


async def used_weight(http: aiohttp.ClientSession, info: dict) -> int:
    async with http.get(f"{info['rest_url']}/fapi/v1/time") as r:
        return int(r.headers["X-MBX-USED-WEIGHT-1M"]) - 1   # less this read's own


def make_agent(info: dict, workdir: Path, stop_timeout: float) -> SymbolAgent:
    acct = info["accounts"][0]
    agent = SymbolAgent(
        fleet_name="bench", symbol=SYMBOL, params=SymbolParams(),
        runtime=RuntimeParams(market_stale_sec=600.0, stop_timeout_sec=stop_timeout),
        endpoints=ExchangeEndpoints(info["rest_url"], info["ws_url"], info["ws_url"]),
        credentials=Credentials(acct["api_key"], acct["api_secret"]),
        ownership=LockFileOwnership(workdir / "state", "bench", SYMBOL),
    )
    target = Target(url=f"sqlite:///{workdir / 'journal.sqlite'}", spool_dir=str(workdir / "spool"))
    attach_journal(agent, target, fleet="bench", account="main", symbol=SYMBOL, settings=JournalConfig())
    return agent


async def until(check, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            raise SystemExit(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def one_start(workdir: Path, silent_stop: bool, stop_timeout: float) -> dict:
    """A fresh simulator, the agent started on the journal of ``workdir``: the weight once its start is
    over, and the stop's time (with every answer held a minute when ``silent_stop``)."""
    sim, info = start_sim()
    try:
        async with aiohttp.ClientSession() as http:
            await admin(http, info, "/sim/market/freeze", {"frozen": True, "symbol": SYMBOL})   # one ladder, no amends
            agent = make_agent(info, workdir, stop_timeout)
            task = asyncio.create_task(agent.run())
            journal = agent.journal
            await until(lambda: agent.status()["state"] == "quoting" or task.done(), 30, "quoting")
            await until(lambda: journal._start_check is None and journal._backfill_task is not None
                        and journal._backfill_task.done(), 30, "the start's backfill")
            weight = await used_weight(http, info)
            reads = journal.backfills["income_reads"]
            if silent_stop:
                await admin(http, info, "/sim/fault/latency", {"ms": 60_000})
            t0 = time.monotonic()
            summary = await agent.stop()
            stop_s = time.monotonic() - t0
            await asyncio.wait_for(task, 60)
        return {"weight": weight, "income_reads": reads, "stop_s": stop_s, "stop_elapsed_ms": summary["stop_elapsed_ms"]}
    finally:
        sim.terminate()
        sim.wait(10)


async def run(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="start-stop-bench-"))
    first = await one_start(workdir, False, args.stop_timeout)
    again = await one_start(workdir, True, args.stop_timeout)
    print(f"start weight, first start (no funding read on record): {first['weight']} "
          f"({first['income_reads']} income reads); 50 symbols: {first['weight'] * 50} of {IP_WEIGHT_PER_MIN}/min")
    print(f"start weight, restart between settlements: {again['weight']} ({again['income_reads']} income reads); "
          f"50 symbols: {again['weight'] * 50} of {IP_WEIGHT_PER_MIN}/min")
    print(f"stop against an exchange that answers nothing: {again['stop_s']:.2f} s wall "
          f"(stop_elapsed_ms {again['stop_elapsed_ms']}) of stop_timeout_sec {args.stop_timeout:g}")
    print("command: .venv/bin/python bench/start_stop_bench.py --stop-timeout", f"{args.stop_timeout:g}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stop-timeout", type=float, default=20.0, help="the agent's stop_timeout_sec")
    asyncio.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
