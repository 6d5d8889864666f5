"""Agent benchmark: one SymbolAgent against the simulator in a fast-moving market.

Prints tick-to-order latency (book frame read off the socket -> order request written to the socket,
p50/p99/p99.9), the agent's CPU share of one core at ~50 book updates per second, its resident
memory, and the orders per minute it sends against the account's limits.

Run: .venv/bin/python bench/agent_bench.py                 (30 s; starts its own simulator process)
     .venv/bin/python bench/agent_bench.py --seconds 60 --volatility 8
The simulator runs in its own process, so the CPU figure is the agent's alone. Figures are printed,
never asserted; they depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.agent import TICK_READ, ExchangeEndpoints, SymbolAgent  # noqa: E402
from agents.ownership import LockFileOwnership  # noqa: E402
from fleet.binance.credentials import Credentials  # noqa: E402
from fleet.config import RuntimeParams, SymbolParams  # noqa: E402

SYMBOL = "ETHUSDC"


def start_sim(volatility: float, step_ms: int, seed: int, workdir: Path) -> tuple[subprocess.Popen, dict]:
    cfg = workdir / "sim.yaml"
    cfg.write_text(json.dumps({"step_ms": step_ms, "market": {"volatility": volatility, "start_price": 3000.0}}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleet", "sim", "--json", "--symbols", SYMBOL, "--config", str(cfg), "--seed", str(seed)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=str(Path(__file__).resolve().parents[1]),
    )
    line = proc.stdout.readline()
    if not line:
        raise SystemExit("the simulator did not start")
    return proc, json.loads(line)


async def sim_counters(rest_url: str) -> dict:
    """The exchange's own count of this account's order actions (placed, amended, cancelled ...)."""
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{rest_url}/sim/state", params={"account": "main", "symbol": SYMBOL}) as r:
            return (await r.json())["counters"]


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pct(data: list[int], q: float) -> float:
    if not data:
        return float("nan")
    s = sorted(data)
    return s[min(len(s) - 1, int(q * len(s)))] / 1e6


async def run(args: argparse.Namespace) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="agent-bench-"))
    sim, info = start_sim(args.volatility, args.step_ms, args.seed, workdir)
    try:
        acct = info["accounts"][0]
        agent = SymbolAgent(
            fleet_name="bench",
            symbol=SYMBOL,
            params=SymbolParams(),
            runtime=RuntimeParams(market_stale_sec=30.0),
            endpoints=ExchangeEndpoints(info["rest_url"], info["ws_url"], info["ws_url"]),
            credentials=Credentials(acct["api_key"], acct["api_secret"]),
            ownership=LockFileOwnership(workdir, "bench", SYMBOL),
        )
        task = asyncio.create_task(agent.run())
        while agent.status()["state"] != "quoting":
            if task.done():
                task.result()
            await asyncio.sleep(0.05)

        # tick -> wire: aiohttp's trace hook fires once the request headers are written to the socket
        to_wire: list[int] = []
        to_wire_cpu: list[int] = []  # the agent thread's own CPU time over the same span

        async def on_headers_sent(session, ctx, params) -> None:
            tick = TICK_READ.get()
            if tick is not None:
                to_wire.append(time.perf_counter_ns() - tick[0])
                to_wire_cpu.append(time.thread_time_ns() - tick[1])

        # the exchange's own order counters, from X-MBX-ORDER-COUNT-* on every answer (peak per window)
        peak = {"X-MBX-ORDER-COUNT-10S": 0, "X-MBX-ORDER-COUNT-1M": 0, "X-MBX-USED-WEIGHT-1M": 0}

        async def on_request_end(session, ctx, params) -> None:
            for name in peak:
                raw = params.response.headers.get(name)
                if raw is not None and raw.isdigit():
                    peak[name] = max(peak[name], int(raw))

        trace = aiohttp.TraceConfig()
        trace.on_request_headers_sent.append(on_headers_sent)
        trace.on_request_end.append(on_request_end)
        trace.freeze()
        agent.client.session._trace_configs.append(trace)  # bench-only hook on the client's session

        await asyncio.sleep(args.warmup)
        if args.gc_freeze:  # as the Ray actor does once its agent quotes (agents/actor.py)
            gc.collect()
            gc.freeze()
        agent.latencies_ns.clear()
        to_wire.clear()
        to_wire_cpu.clear()
        for name in peak:
            peak[name] = 0
        gc_pauses: list[int] = []
        gc_full: list[bool] = []
        gc_started = [0]

        def on_gc(phase: str, info: dict) -> None:
            if phase == "start":
                gc_started[0] = time.perf_counter_ns()
            else:
                gc_pauses.append(time.perf_counter_ns() - gc_started[0])
                gc_full.append(info.get("generation") == 2)

        gc.callbacks.append(on_gc)
        core = agent.core
        sent0 = dict(core.orders_sent)
        counters0 = await sim_counters(info["rest_url"])
        refused0 = agent.budget.refused
        books0 = agent.market.stream.events if agent.market.stream else 0
        cpu0 = time.process_time()
        wall0 = time.monotonic()
        await asyncio.sleep(args.seconds)
        wall = time.monotonic() - wall0
        cpu = time.process_time() - cpu0
        books = (agent.market.stream.events if agent.market.stream else 0) - books0
        sent = {k: core.orders_sent[k] - sent0[k] for k in sent0}
        counters1 = await sim_counters(info["rest_url"])
        at_exchange = {k: counters1.get(k, 0) - counters0.get(k, 0) for k in counters1}
        refused = agent.budget.refused - refused0
        handoff = list(agent.latencies_ns)
        wire = list(to_wire)
        wire_cpu = list(to_wire_cpu)
        rss = rss_mb()
        gc.callbacks.remove(on_gc)
        summary = await agent.stop()
        await task
    finally:
        sim.terminate()
        sim.wait(10)

    per_min = 60.0 / wall
    # what reached the exchange and counts against the account's ORDERS limits: new orders and amends
    orders = at_exchange.get("orders_placed", 0) + at_exchange.get("orders_amended", 0)
    limits = agent.budget.limits
    cmd = "python bench/agent_bench.py " + " ".join(sys.argv[1:])
    print(f"agent benchmark: {SYMBOL}, {wall:.0f} s after {args.warmup:.0f} s warm-up, sim volatility "
          f"{args.volatility} (annualised), book step {args.step_ms} ms")
    print(f"  market events received      {books / wall:8.1f} /s (bookTicker + markPrice)")
    print(f"  tick-to-order (frame read -> request written to the socket), {len(wire)} book-triggered requests:")
    print(f"      p50 {pct(wire, 0.50):.3f} ms   p99 {pct(wire, 0.99):.3f} ms   p99.9 {pct(wire, 0.999):.3f} ms")
    print(f"  the same span on the agent thread's CPU clock (excludes time the OS gave to other processes):")
    print(f"      p50 {pct(wire_cpu, 0.50):.3f} ms   p99 {pct(wire_cpu, 0.99):.3f} ms   p99.9 {pct(wire_cpu, 0.999):.3f} ms")
    print(f"  tick-to-handoff (frame read -> request handed to the client), {len(handoff)} samples:")
    print(f"      p50 {pct(handoff, 0.50):.3f} ms   p99 {pct(handoff, 0.99):.3f} ms   p99.9 {pct(handoff, 0.999):.3f} ms")
    print(f"  CPU                         {100 * cpu / wall:8.2f} % of one core")
    full = [p for p, f in zip(gc_pauses, gc_full) if f]
    print(f"  garbage collections         {len(gc_pauses):8d}  longest {max(gc_pauses, default=0) / 1e6:.2f} ms, "
          f"{sum(gc_pauses) / 1e6:.1f} ms in all; full ones {len(full)}, longest {max(full, default=0) / 1e6:.2f} ms "
          f"({'after gc.freeze()' if args.gc_freeze else 'no gc.freeze()'})")
    print(f"  load average at the end     {os.getloadavg()[0]:8.2f} (2 cores shared; the tail latencies follow it)")
    print(f"  resident memory             {rss:8.1f} MB")
    print(f"  decided by the core         {sent['place'] * per_min:8.0f} places/min  {sent['amend'] * per_min:6.0f} amends/min  "
          f"{sent['cancel'] * per_min:6.0f} cancels/min  ({refused * per_min:.0f} requests/min held back by the rate budget)")
    print(f"  accepted by the exchange    {at_exchange.get('orders_placed', 0) * per_min:8.0f} placed/min  "
          f"{at_exchange.get('orders_amended', 0) * per_min:6.0f} amended/min  "
          f"{at_exchange.get('orders_cancelled', 0) * per_min:6.0f} cancelled/min")
    print(f"  order counters as the exchange reports them (peak over the run; a batch of 5 counts 5 on the")
    print(f"  10-s counter and 1 on the 1-min one): 10 s {peak['X-MBX-ORDER-COUNT-10S']:4d} of 300   "
          f"1 min {peak['X-MBX-ORDER-COUNT-1M']:4d} of 1200   weight 1 min {peak['X-MBX-USED-WEIGHT-1M']:4d} of 2400")
    print(f"  (the rate budget keeps this agent under {limits['orders_10s']}/10 s and {limits['orders_1m']}/min; "
          f"{orders * per_min:.0f} new orders + amends a minute reached the book)")
    print(f"  stopped: {summary['exchange_open_orders']} open orders left, stop took {summary['stop_elapsed_ms']} ms")
    print(f"  reproduce: {cmd.strip()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--volatility", type=float, default=8.0, help="simulator annualised volatility")
    parser.add_argument("--step-ms", type=int, default=20, help="simulator book step: 20 ms = 50 updates/s")
    parser.add_argument("--seed", type=int, default=7, help="simulator market seed")
    parser.add_argument("--gc-freeze", action=argparse.BooleanOptionalAction, default=True,
                        help="move what exists after the warm-up out of the collector's reach, as the actor does")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
