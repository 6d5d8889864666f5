"""Simulated-clock benchmark: how fast the whole agent runs on the simulated clock, against the live
runtime's own cost per decision measured in the same run.

1. live: one SymbolAgent (default parameters) against the simulator in its own process over sockets
   for --live-seconds of wall time; the agent process's CPU seconds per quote cycle.
2. simulated: the same agent code on the simulated clock against the in-process exchange (default
   simulator market, default parameters) for --hours simulated hours on this one process; simulated
   hours per wall second and per CPU second, events per second, and the CPU per quote cycle, whose
   ratio to the live one says what the simulated clock costs per decision (the exchange included).

Run: .venv/bin/python bench/simulate_bench.py --hours 2 --live-seconds 30
     .venv/bin/python bench/simulate_bench.py --hours 48        (the issue's 48 h, one core)
Figures are printed, never asserted; they depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from agent_bench import start_sim  # noqa: E402

from agents.agent import ExchangeEndpoints, SymbolAgent  # noqa: E402
from fleet.binance.credentials import Credentials  # noqa: E402
from fleet.config import RuntimeParams, SymbolParams, load_fleet_config  # noqa: E402
from simulate.run import LocalLease, RunOptions, simulate  # noqa: E402

SYMBOL = "ETHUSDC"
FLEET = f"""
name: bench
exchange: {{kind: sim}}
accounts: [{{name: main, api_key_env: MMFLEET_BENCH_KEY, api_secret_env: MMFLEET_BENCH_SECRET}}]
symbols: [{{symbol: {SYMBOL}, account: main}}]
"""


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def live(seconds: float, seed: int, workdir: Path) -> dict:
    """The live runtime over sockets; the simulator runs in its own process (not in this CPU figure)."""
    proc, info = start_sim(0.8, 50, seed, workdir)
    try:
        agent = SymbolAgent(fleet_name="bench", symbol=SYMBOL, params=SymbolParams(), runtime=RuntimeParams(),
                            endpoints=ExchangeEndpoints(info["rest_url"], info["ws_url"], info["ws_url"]),
                            credentials=Credentials(info["accounts"][0]["api_key"], info["accounts"][0]["api_secret"]),
                            ownership=LocalLease(), logger=logging.getLogger("bench.quiet"), rng=random.Random(seed))
        task = asyncio.create_task(agent.run())
        while agent.core is None or agent.status()["state"] != "quoting":
            await asyncio.sleep(0.05)
        cycles0, cpu0, wall0 = agent.core.cycles, cpu_s(), time.perf_counter()
        await asyncio.sleep(seconds)
        cycles, cpu, wall = agent.core.cycles - cycles0, cpu_s() - cpu0, time.perf_counter() - wall0
        await agent.stop()
        await asyncio.wait_for(task, 30)
    finally:
        proc.terminate()
        proc.wait(10)
    return {"cycles": cycles, "cpu_s": cpu, "wall_s": wall, "cpu_per_cycle_us": 1e6 * cpu / max(cycles, 1)}


def simulated(hours: float, seed: int, workdir: Path) -> dict:
    path = workdir / "fleet.yaml"
    path.write_text(FLEET)
    cfg = load_fleet_config(path)
    cpu0, wall0 = cpu_s(), time.perf_counter()
    result = simulate(cfg, path, RunOptions(hours=hours, seed=seed, points=2000))
    cpu, wall = cpu_s() - cpu0, time.perf_counter() - wall0
    t = result.symbols[0].table
    return {"hours": hours, "wall_s": wall, "cpu_s": cpu, "events": result.events, "cycles": t["quote_cycles"],
            "amends_per_min": t["amends_per_min"], "fills": t["fills"],
            "cpu_per_cycle_us": 1e6 * cpu / max(t["quote_cycles"], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hours", type=float, default=2.0, help="simulated hours (default 2)")
    ap.add_argument("--live-seconds", type=float, default=30.0, help="wall seconds of the live run (default 30)")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    logging.getLogger("bench.quiet").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        lv = asyncio.run(live(args.live_seconds, args.seed, Path(tmp)))
        sm = simulated(args.hours, args.seed, Path(tmp))
    per_wall = sm["hours"] / sm["wall_s"]
    per_cpu = sm["hours"] / sm["cpu_s"]
    print(f"command: .venv/bin/python bench/simulate_bench.py --hours {args.hours:g} --live-seconds "
          f"{args.live_seconds:g} --seed {args.seed}")
    print(f"live runtime over sockets: {lv['cycles']} quote cycles in {lv['wall_s']:.1f} s, agent CPU "
          f"{lv['cpu_s']:.2f} s = {lv['cpu_per_cycle_us']:.0f} us per cycle")
    print(f"simulated clock: {sm['hours']:g} h in {sm['wall_s']:.1f} s wall, {sm['cpu_s']:.1f} s CPU; "
          f"{per_wall:.3f} simulated h per wall s ({3600 * per_wall:.0f}x real time), {per_cpu:.3f} per CPU s")
    print(f"  events {sm['events']:,} = {sm['events'] / sm['wall_s']:,.0f}/s; quote cycles {sm['cycles']:,}; "
          f"amends {sm['amends_per_min']:.0f}/min; fills {sm['fills']}")
    print(f"  CPU per quote cycle (agent + in-process exchange): {sm['cpu_per_cycle_us']:.0f} us = "
          f"{sm['cpu_per_cycle_us'] / lv['cpu_per_cycle_us']:.2f}x the live agent's alone")
    print(f"  48 simulated hours at this pace: {48 / per_wall:.0f} s wall ({48 / per_cpu:.0f} s CPU); goal 120 s")


if __name__ == "__main__":
    main()
