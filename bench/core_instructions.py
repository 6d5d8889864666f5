"""Instructions per quote cycle of the agent's trading core, counted by valgrind (load-proof).

Wall-clock figures of a 15-80 us cycle swing by half on this shared machine from one run to the
next; instruction counts do not. Each figure is (instructions of N2 cycles - those of N1 cycles) /
(N2 - N1), so start-up and imports cancel out. Two cycles are counted, on the set-up of
``bench/core_bench.py`` (fine step, every layer on the book):

- still: one ``AgentCore.quote`` on an unchanged book (nothing to send);
- moving: a book frame from the simulator's market model, ``quote``, and the exchange's
  acknowledgement frames of what it sent (``on_sent``, ``on_event``): the core's whole work per tick.

Give several trees (``git worktree add /tmp/before <commit>``) to compare commits in one run; the
ratios are against the first. Needs valgrind (Debian's ``valgrind``).

Run: ``.venv/bin/python bench/core_instructions.py --tree /tmp/before --tree .`` (about 25 s per
figure).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import subprocess
import sys
from pathlib import Path


def run_cycles(tree: str, layers: int, n: int, mode: str) -> None:
    """The measured program: set up one core from ``tree``'s own code and run ``n`` cycles."""
    sys.path.insert(0, tree)
    import importlib.util

    spec = importlib.util.spec_from_file_location("core_bench", os.path.join(tree, "bench", "core_bench.py"))
    assert spec is not None and spec.loader is not None
    cb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cb)
    from agents.core import AgentCore

    params = cb.params_for(layers)
    core = AgentCore(cb.SYMBOL, params, cb.filters("0.0001", "0.1"), epoch=1)
    ex = cb.InstantExchange(core)
    model = cb.MarketModel(cb.MarketParams(), random.Random(7))
    t = 1_000
    cb.market_event(core, model.mid, t)
    ex.send(core.quote(t), t)
    step_s = params.base.quote_interval_ms / 1000
    for _ in range(n):
        t += params.base.quote_interval_ms
        if mode == "still":
            core.quote(t)
        else:
            cb.market_event(core, model.step(step_s), t)
            ex.send(core.quote(t), t)


def valgrind_instructions(script: str, args: list[str], tree: str) -> int:
    """Instructions of ``python script --run ARGS`` with ``tree`` first on the path, counted by valgrind."""
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, script, "--run", *args]
    env = {**os.environ, "PYTHONPATH": tree, "PYTHONHASHSEED": "0"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True).stderr
    m = re.search(r"Collected : (\d+)", out)
    if m is None:
        raise RuntimeError(f"no instruction count in valgrind's output:\n{out[-2000:]}")
    return int(m.group(1))


def instructions(tree: str, layers: int, n: int, mode: str) -> int:
    return valgrind_instructions(__file__, [tree, str(layers), str(n), mode], tree)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--run":
        tree, layers, n, mode = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
        run_cycles(tree, layers, n, mode)
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", action="append", help="a source tree to measure (repeat; default: this one)")
    ap.add_argument("--layers", type=int, nargs="+", default=[14, 28])
    ap.add_argument("--cycles", type=int, nargs=2, default=[200, 1200], metavar=("N1", "N2"))
    args = ap.parse_args()
    trees = [str(Path(t).resolve()) for t in (args.tree or [str(Path(__file__).resolve().parents[1])])]
    n1, n2 = args.cycles
    print(f"reproduce: .venv/bin/python bench/core_instructions.py {' '.join('--tree ' + t for t in trees)} "
          f"--layers {' '.join(map(str, args.layers))} --cycles {n1} {n2}")
    print(f"python {platform.python_version()}, {platform.machine()}; instructions per cycle ({n2} - {n1} cycles)")
    for layers in args.layers:
        for mode in ("still", "moving"):
            base = None
            cells = []
            for tree in trees:
                per = (instructions(tree, layers, n2, mode) - instructions(tree, layers, n1, mode)) / (n2 - n1)
                base = base or per
                cells.append(f"{per / 1000:9.1f} k ({per / base:.3f})")
            print(f"  {layers:2d} layers {mode:6s} " + "  ".join(cells))
    if len(trees) > 1:
        print("  columns: " + ", ".join(trees))


if __name__ == "__main__":
    main()
