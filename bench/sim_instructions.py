"""Instructions per millisecond of the simulator's engine under the fleet's workload, counted by valgrind
(load-proof, where the wall clock of ``bench/sim_bench.py`` swings by a tenth from one run to the next).

The workload is ``bench/sim_bench.py``'s: three symbols with the fleet's streams (bookTicker,
markPrice@1s, aggTrade), the clock advanced 10 ms at a time, and every 100 ms per symbol a quote
replaced (a cancel and a new post-only order). Each figure is (instructions of N2 ms - those of N1 ms)
/ (N2 - N1), so start-up and imports cancel out.

Give several trees (``git worktree add /tmp/before <commit>``) to compare commits in one run; the
ratios are against the first. Needs valgrind (Debian's ``valgrind``).

Run: ``.venv/bin/python bench/sim_instructions.py --tree /tmp/before --tree .`` (about a minute per tree).
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from core_instructions import valgrind_instructions  # noqa: E402

SYMBOLS = ["ETHUSDC", "BTCUSDT", "SOLUSDT"]
STREAMS = ("@bookTicker", "@markPrice@1s", "@aggTrade")


def run_engine(tree: str, ticks: int) -> None:
    """The measured program: ``ticks`` 10 ms advances of ``tree``'s engine, a quote replaced per symbol
    every 10 ticks."""
    sys.path.insert(0, tree)
    from fleet.sim.config import SimConfig
    from fleet.sim.engine import Engine, SimApiError

    e = Engine(SimConfig(), seed=7, now_ms=1_800_000_000_000, symbols=SYMBOLS)
    e.watch(*(b.lower + s for b in e.books.values() for s in STREAMS))
    now = e.now_ms
    live: dict[str, int | None] = dict.fromkeys(SYMBOLS)
    for tick in range(ticks):
        now += 10
        e.advance(now)
        if tick % 10 == 0:
            for sym in SYMBOLS:
                b = e.books[sym]
                if live[sym] is not None:
                    try:
                        e.cancel_order("main", {"symbol": sym, "orderId": str(live[sym])}, now)
                    except SimApiError:   # filled meanwhile
                        pass
                price = b.best_bid() - 5
                steps = int(b.min_notional_units // (price * b.notional_mult)) + 1
                r = e.new_order("main", {"symbol": sym, "side": "BUY", "type": "LIMIT", "timeInForce": "GTX",
                                         "price": b.price_str(price), "quantity": b.qty_str(steps)}, now)
                live[sym] = r["orderId"]
        e.drain()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--run":
        run_engine(sys.argv[2], int(sys.argv[3]))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", action="append", help="a source tree to measure (repeat; default: this one)")
    ap.add_argument("--ticks", type=int, nargs=2, default=[3000, 9000], metavar=("N1", "N2"))
    args = ap.parse_args()
    trees = [str(Path(t).resolve()) for t in (args.tree or [str(Path(__file__).resolve().parents[1])])]
    n1, n2 = args.ticks
    print(f"reproduce: .venv/bin/python bench/sim_instructions.py {' '.join('--tree ' + t for t in trees)} "
          f"--ticks {n1} {n2}")
    print(f"python {platform.python_version()}, {platform.machine()}; instructions per simulated ms "
          f"({(n2 - n1) * 10} ms of 3 symbols)")
    base = None
    for tree in trees:
        per = (valgrind_instructions(__file__, [tree, str(n2)], tree)
               - valgrind_instructions(__file__, [tree, str(n1)], tree)) / ((n2 - n1) * 10)
        base = base or per
        print(f"  {per / 1000:8.2f} k ({per / base:.3f})  {tree}")


if __name__ == "__main__":
    main()
