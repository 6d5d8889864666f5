"""Chaos bench: the randomized fault soak of tests/e2e/test_agent_soak.py, for longer.

One SymbolAgent quotes against a simulator (its own process) while fleet.sim.chaos fires every
ambiguous REST answer, stream drops, listenKey expiry, price jumps, market freezes and outside
position moves at random times (random.Random(seed)); /sim/state is sampled every 50 ms.

Prints the faults injected by kind, the exchange's worst case as a fraction of the cap (outside the
grace after an outside position move, and overall), orphan-seconds, the agent's reconcile repairs
(counter and mm_reconcile_discrepancies_total by kind), unknown outcomes, duplicate client order
ids, open orders after the stop, and the command that reproduces the run. The agent's log is kept
in a file (its path is printed). Figures are printed, never asserted.

Run: .venv/bin/python bench/chaos_bench.py                    (2 minutes, seed 1)
     .venv/bin/python bench/chaos_bench.py --minutes 10 --seed 7 --symbol ETHUSDC
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.agent import ExchangeEndpoints, SymbolAgent  # noqa: E402
from agents.ownership import LockFileOwnership  # noqa: E402
from fleet.binance.credentials import Credentials  # noqa: E402
from fleet.config import RuntimeParams, SymbolParams  # noqa: E402
from fleet.sim.chaos import Probe, Soak, schedule  # noqa: E402

# as in tests/e2e/test_agent_soak.py: reconcile every second, a dead-man countdown of a few seconds,
# market data stale after 1 s (a freeze pulls the quotes)
RUNTIME = RuntimeParams(
    reconnect_backoff_initial_sec=0.3,
    reconnect_backoff_max_sec=2.0,
    deadman_heartbeat_sec=1.0,
    deadman_countdown_ms=5_000,
    market_stale_sec=1.0,
    stop_timeout_sec=20.0,
    reconcile_interval_sec=1.0,
    reconcile_position_every=2,
)


def start_sim(symbol: str, seed: int) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleet", "sim", "--json", "--symbols", symbol, "--seed", str(seed)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=str(Path(__file__).resolve().parents[1]),
    )
    line = proc.stdout.readline()
    if not line:
        raise SystemExit("the simulator did not start")
    return proc, json.loads(line)


def discrepancies(agent: SymbolAgent) -> dict[str, float]:
    text = agent.metrics_text().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("mm_reconcile_discrepancies_total{"):
            m = re.search(r'kind="([^"]+)".*\}\s+(\S+)$', line)
            if m:
                out[m.group(1)] = float(m.group(2))
    return out


async def _books_against_the_exchange(soak, agent, symbol: str, wait_s: float = 20.0) -> tuple[str, bool]:
    """The agent's realized P&L and commission against the exchange's (its trades' and a liquidation's
    clearance fee), once a trade read the faults called for had its time: (the figures, equal)."""
    t0 = time.monotonic()
    while True:
        truth = (await soak.state())["positions"][symbol]
        s = agent.core.store
        theirs = (Decimal(truth["realized_pnl"]), Decimal(truth["commission"]) + Decimal(truth["clearance_fee"]))
        ours = (Decimal(repr(s.realized_pnl)), Decimal(repr(s.commission)))
        equal = all(abs(a - b) < Decimal("1e-6") for a, b in zip(ours, theirs))
        if equal or time.monotonic() - t0 > wait_s:
            took = f"equal after {time.monotonic() - t0:.1f} s" if equal else f"NOT equal after {wait_s:.0f} s"
            return (f"realized {ours[0]:.6f} / {theirs[0]:.6f}, commission {ours[1]:.6f} / {theirs[1]:.6f} ({took})",
                    equal)
        await asyncio.sleep(0.5)


async def run(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="chaos-bench-"))
    logfile = workdir / "agent.log"
    handler = logging.FileHandler(logfile)
    handler.setFormatter(logging.Formatter("%(asctime)s.%(msecs)03d %(levelname)s %(name)s %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logging.getLogger("aiohttp").setLevel(logging.WARNING)
    sim, info = start_sim(args.symbol, args.seed)
    wall0 = time.monotonic()
    try:
        acct = info["accounts"][0]
        agent = SymbolAgent(
            fleet_name="chaos",
            symbol=args.symbol,
            params=SymbolParams(),
            runtime=RUNTIME,
            endpoints=ExchangeEndpoints(info["rest_url"], info["ws_url"], info["ws_url"]),
            credentials=Credentials(acct["api_key"], acct["api_secret"]),
            ownership=LockFileOwnership(workdir, "chaos", args.symbol),
        )
        task = asyncio.create_task(agent.run())
        while agent.status()["state"] != "quoting":
            if task.done():
                task.result()
            await asyncio.sleep(0.05)
        seconds = args.minutes * 60.0
        step = agent.filters.step_size
        cap = agent.params.worst_cap
        actions = schedule(args.seed, seconds, args.symbol, cap, step)
        probe = Probe(
            orders=lambda: {cid: (o.side, o.remaining_steps) for cid, o in agent.core.store.orders.items()},
            in_flight=lambda: agent.status()["requests_in_flight"],
            position_steps=lambda: agent.core.store.position_steps,
        )
        async with Soak(info["rest_url"], acct["api_key"], acct["api_secret"], args.symbol, cap, step, probe,
                        grace_limit=5.0, seed=args.seed) as soak:
            await soak.run(actions, seconds)
            await soak.settle(timeout=60.0)
            books = await _books_against_the_exchange(soak, agent, args.symbol)
            status = agent.status()
            found = discrepancies(agent)
            summary = await agent.stop()
            await task
            report = await soak.finish()
    finally:
        sim.terminate()
        sim.wait(10)
        root.removeHandler(handler)
        handler.close()

    counters = summary["counters"]
    cmd = "python bench/chaos_bench.py " + " ".join(sys.argv[1:])
    print(f"chaos bench: {args.symbol}, {report.seconds:.0f} s of random faults, seed {args.seed}, "
          f"cap {report.cap.normalize()} each side; {time.monotonic() - wall0:.0f} s wall time in all")
    for line in report.lines():
        print(line)
    print(f"  reconcile repairs           {counters['reconcile_repairs']} (status counter); "
          f"mm_reconcile_discrepancies_total: " + ", ".join(f"{k} {v:.0f}" for k, v in found.items()))
    print(f"  unknown outcomes            {counters['unknown_outcomes']} ({counters['unknown_outcomes_resolved']} "
          f"resolved by a look-up)")
    print(f"  agent                       {counters['reconciliations']} reconciliations, {counters['resyncs']} resyncs, "
          f"{counters['user_stream_reconnects']} user / {counters['market_stream_reconnects']} market stream "
          f"reconnects, {counters['listen_key_expired']} listenKey expiries, {counters['stale_market_pulls']} "
          f"stale-market pulls, {counters['quote_pulls_confirmed']} pulls confirmed")
    print(f"  in flight when settled      {status['requests_in_flight']}; stop: {summary['exchange_open_orders']} "
          f"open orders by the agent's count, took {summary['stop_elapsed_ms']} ms")
    actions_file = workdir / "actions.log"
    actions_file.write_text(report.explain() + "\n")
    problems = report.problems()
    print(f"  P&L booked / the exchange's {books[0]}")
    if not books[1]:
        problems.append(f"the agent's P&L is not the exchange's: {books[0]}")
    print(f"  problems                    {'none' if not problems else len(problems)}")
    for p in problems:
        print(f"    - {p[:600]}")
    print(f"  agent log, actions done     {logfile}, {actions_file}")
    print(f"  reproduce: {cmd.strip()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=2.0, help="how long the faults fire")
    parser.add_argument("--seed", type=int, default=1, help="fault schedule and simulator market seed")
    parser.add_argument("--symbol", default="ETHUSDC")
    args = parser.parse_args()
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
