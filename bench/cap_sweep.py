"""The worst case at the exchange under dense random faults, on the simulated clock.

Each run draws a fault schedule from its own seed (about one event every 4 s / density: ambiguous and
late answers on every order route, errors, batches answered short or unreadable, price jumps just
after a fault, stream drops, listenKey expiries, latency spikes on the way in, freezes, funding
swings), runs the agent's own code against the in-process exchange with a ladder big enough to reach
the cap, and checks the exchange's own accounts after every order event it emits: the position plus
every open order that is not reduce-only, per side, against the cap; no two open orders with one
client id; nothing open after the stop. It prints one line a run and the worst excess found.

Run: .venv/bin/python bench/cap_sweep.py --runs 8 --minutes 18 --seed 1
     .venv/bin/python bench/cap_sweep.py --runs 4 --default-params      (the demo's own ladder)
Figures are printed, never asserted. A violation prints the run's schedule as YAML to replay it
(``python -m fleet simulate --schedule F --seed N --set ...``).
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fleet.config import load_fleet_config  # noqa: E402
from simulate import run as run_mod  # noqa: E402
from simulate.run import RunOptions, simulate  # noqa: E402
from simulate.schedule import load_schedule  # noqa: E402

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "fleet.demo.yaml"
SYMBOL = "ETHUSDC"
BIG_LADDER = {"base.base_size": 0.03, "worst_case.size_decay_k": 0.1}
ROUTES = [("POST", "/fapi/v1/order"), ("PUT", "/fapi/v1/order"), ("DELETE", "/fapi/v1/order"),
          ("POST", "/fapi/v1/batchOrders"), ("PUT", "/fapi/v1/batchOrders"), ("DELETE", "/fapi/v1/batchOrders"),
          ("DELETE", "/fapi/v1/allOpenOrders")]
AMBIGUOUS = ["503", "500", "502", "504", "503-html", "-1006", "-1007", "timeout"]


def draw_schedule(rng: random.Random, minutes: float, density: float) -> list[dict[str, Any]]:
    """A dense fault schedule over ``minutes`` (the first and last 30 s quiet)."""
    events: list[dict[str, Any]] = []
    t, end, slow = 30.0, minutes * 60 - 30, False
    while True:
        t += rng.expovariate(density / 4.0)
        if t >= end:
            break
        at, k = round(t, 3), rng.random()
        if k < 0.55:
            method, path = rng.choice(ROUTES)
            mode = rng.choice(["unknown", "exec_then_error", "late", "error", "batch_short", "batch_malformed"])
            if mode.startswith("batch"):
                method, path = rng.choice([r for r in ROUTES if r[1].endswith("batchOrders")])
            fault = {"at": at, "do": "rest_fault", "mode": mode, "count": rng.choice([1, 1, 2, 3, 5]), "path": path,
                     "method": method}
            if mode in ("exec_then_error", "late"):
                fault["answer"] = rng.choice(AMBIGUOUS)
                if fault["answer"] == "timeout":
                    fault["hold_ms"] = rng.choice([200, 2000, 6000])
            if mode == "late":
                fault["delay_ms"] = rng.choice([50, 300, 1000, 3000, 6000])
            if mode == "error":
                fault["answer"] = rng.choice(["-1001", "503-unavailable", "-5028"])
            events.append(fault)
            if rng.random() < 0.5:   # the market moves while the answer is in doubt
                events.append({"at": round(at + rng.choice([0.005, 0.1, 0.5]), 3), "do": "jump", "symbol": SYMBOL,
                               "pct": round(rng.choice([-1, 1]) * rng.uniform(0.3, 2.5), 3)})
        elif k < 0.65:
            events.append({"at": at, "do": "drop", "target": rng.choice(["user", "market", "all"])})
        elif k < 0.72:
            events.append({"at": at, "do": "expire_listen_key"})
        elif k < 0.80:
            events.append({"at": at, "do": "latency", "ms": 0 if slow else rng.choice([100, 400, 1500, 3000])})
            slow = not slow
        elif k < 0.85:
            events.append({"at": at, "do": "freeze", "symbol": SYMBOL, "seconds": rng.choice([3, 10, 25])})
        elif k < 0.88:
            events.append({"at": at, "do": "funding_rate", "symbol": SYMBOL,
                           "rate": rng.choice(["0.003", "-0.003", None])})
        else:
            events.append({"at": at, "do": "jump", "symbol": SYMBOL,
                           "pct": round(rng.choice([-1, 1]) * rng.uniform(0.3, 3.0), 3)})
    if slow:
        events.append({"at": round(end, 3), "do": "latency", "ms": 0})
    return events


def exchange_worst(engine: Any, account: str) -> tuple[int, int, int]:
    """Long and short worst case in steps at the exchange, and how many client ids are open twice."""
    acct = engine.accounts[account]
    pos = acct.positions.get(SYMBOL)
    steps = int(pos.amount) if pos is not None else 0
    mine = [o for o in acct.open.values() if o.symbol == SYMBOL]
    buys = sum(o.orig - o.filled for o in mine if o.sign > 0 and not o.reduce_only)
    sells = sum(o.orig - o.filled for o in mine if o.sign < 0 and not o.reduce_only)
    return steps + buys, sells - steps, len(mine) - len({o.client_id for o in mine})


def one_run(seed: int, minutes: float, density: float, overrides: dict[str, Any]) -> dict[str, Any]:
    events = draw_schedule(random.Random(f"cap-sweep:{seed}"), minutes, density)
    seen: list[tuple[int, int, int]] = []
    observe = run_mod._observe

    def watching(ex: Any, watches: Any) -> None:
        observe(ex, watches)
        inner = ex.on_user_frame

        def on_user_frame(account: str, frame: dict[str, Any]) -> None:
            inner(account, frame)
            seen.append(exchange_worst(ex.engine, account))

        ex.on_user_frame = on_user_frame

    run_mod._observe = watching
    try:
        cfg = load_fleet_config(CONFIG)
        t0 = time.process_time()
        result = simulate(cfg, CONFIG, RunOptions(hours=minutes / 60, seed=seed, symbols=[SYMBOL],
                                                  schedule=load_schedule(events)), overrides)
        cpu = time.process_time() - t0
    finally:
        run_mod._observe = observe
    sym = result.symbols[0]
    cap = round(sym.cap / 0.001)
    worst = max((max(lo, sh) for lo, sh, _ in seen), default=0)
    return {"seed": seed, "events": len(events), "cap": cap, "long": max((s[0] for s in seen), default=0),
            "short": max((s[1] for s in seen), default=0), "excess": max(worst - cap, 0),
            "over": sum(1 for lo, sh, _ in seen if max(lo, sh) > cap), "twice": max((s[2] for s in seen), default=0),
            "after": sym.table["open_orders_after_stop"], "fills": sym.table["fills"],
            "unknown": sym.table["unknown_outcomes"], "checks": len(seen), "cpu_s": cpu, "schedule": events}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--minutes", type=float, default=18.0, help="simulated minutes a run")
    ap.add_argument("--seed", type=int, default=1, help="the first run's seed (schedule and market)")
    ap.add_argument("--density", type=float, default=1.5, help="events per 4 simulated seconds")
    ap.add_argument("--default-params", action="store_true", help="the demo's own ladder (rarely near the cap)")
    args = ap.parse_args()
    logging.getLogger("fleet").setLevel(logging.ERROR)   # the client's re-sync warnings; the agents' are counted
    overrides = {} if args.default_params else BIG_LADDER
    print(f"# {' '.join(sys.argv)}  (ladder: {overrides or 'the demo config'})")
    bad = []
    for seed in range(args.seed, args.seed + args.runs):
        r = one_run(seed, args.minutes, args.density, overrides)
        print(f"seed {seed:4d}: {r['events']:4d} faults, {r['unknown']:5d} unknown outcomes, {r['fills']:5d} fills, "
              f"worst long/short {r['long']}/{r['short']} of cap {r['cap']} steps, over the cap at {r['over']} of "
              f"{r['checks']:,} checks (excess {r['excess']}), client ids open twice {r['twice']}, "
              f"open after stop {r['after']}, {r['cpu_s']:.1f} CPU-s", flush=True)
        if r["over"] or r["twice"] or r["after"]:
            bad.append(r)
    print(f"runs {args.runs}, with a violation {len(bad)}, largest excess "
          f"{max((r['excess'] for r in bad), default=0)} steps")
    for r in bad:
        print(f"--- seed {r['seed']}: its schedule\n{yaml.safe_dump(r['schedule'], sort_keys=False)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
