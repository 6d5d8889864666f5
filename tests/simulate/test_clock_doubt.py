"""The worst case held at the exchange while this host's estimate of the exchange's clock is wrong.

A latency spike that falls on the way in only (a congested uplink) makes a clock re-sync (after
-5028, "outside of the ME recvWindow") learn an offset ahead by half the spike; the exchange refuses
a timestamp only 1,000 ms ahead, so nothing corrects it. A position figure dated by that estimate took
fills made just after the exchange's read for fills inside it: they left the position and the pending
orders alike, and the ladder was sized against a position short of the exchange's by them (an audit
measured the exchange's worst case long at 2.6 times the cap). Checked on the engine's own accounts at
every order event the exchange emits, not on the run's once-a-second samples.
"""

from __future__ import annotations

from pathlib import Path

from fleet.config import load_fleet_config
from simulate import run as run_mod
from simulate.run import RunOptions, simulate
from simulate.schedule import load_schedule

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "fleet.demo.yaml"
SYMBOL = "ETHUSDC"
# a ladder big enough to reach the cap (0.23 ETH), as a desk raising base_size would have
BIG_LADDER = {"base.base_size": 0.03, "worst_case.size_decay_k": 0.1}


def _exchange_worst(engine, account: str, symbol: str) -> tuple[int, int]:
    """Long and short worst case in steps at the exchange: the position and every open order that
    is not reduce-only (other hands' conditional orders: none in this run)."""
    acct = engine.accounts[account]
    pos = acct.positions.get(symbol)
    steps = int(pos.amount) if pos is not None else 0
    buys = sum(o.orig - o.filled for o in acct.open.values() if o.symbol == symbol and o.sign > 0 and not o.reduce_only)
    sells = sum(o.orig - o.filled for o in acct.open.values() if o.symbol == symbol and o.sign < 0 and not o.reduce_only)
    return steps + buys, sells - steps


def test_a_clock_learned_ahead_by_an_uneven_round_trip_keeps_every_fill_in_the_position(monkeypatch):
    seen: list[tuple[int, int]] = []
    observe = run_mod._observe

    def watching(ex, watches):   # the run's own observer, and a look at the engine after each order event
        observe(ex, watches)
        inner = ex.on_user_frame

        def on_user_frame(account, frame):
            inner(account, frame)
            seen.append(_exchange_worst(ex.engine, account, SYMBOL))

        ex.on_user_frame = on_user_frame

    monkeypatch.setattr(run_mod, "_observe", watching)
    schedule = load_schedule([
        {"at": 34.716, "do": "funding_rate", "symbol": SYMBOL, "rate": "-0.003"},
        {"at": 50.487, "do": "drop", "target": "all"},
        {"at": 54.823, "do": "drop", "target": "all"},
        {"at": 68.856, "do": "drop", "target": "all"},
        {"at": 70.675, "do": "latency", "ms": 400},   # requests reach the exchange 400 ms late, answers do not
        {"at": 76.929, "do": "rest_fault", "mode": "error", "count": 5, "path": "/fapi/v1/order", "method": "POST",
         "answer": "-5028"},   # each one re-syncs the clock through the slow way in: +200 ms learned
        {"at": 76.934, "do": "jump", "symbol": SYMBOL, "pct": 2.341},
        {"at": 96.055, "do": "drop", "target": "all"},
        {"at": 111.82, "do": "drop", "target": "user"},
        {"at": 112.212, "do": "jump", "symbol": SYMBOL, "pct": 1.103},
        {"at": 114.433, "do": "latency", "ms": 0},
    ])
    cfg = load_fleet_config(CONFIG)
    result = simulate(cfg, CONFIG, RunOptions(hours=0.032, seed=2, symbols=[SYMBOL], schedule=schedule),
                      BIG_LADDER)
    t = result.symbols[0].table
    cap_steps = round(result.symbols[0].cap / 0.001)
    assert t["fills"] > 20 and t["open_orders_after_stop"] == 0 and len(seen) > 1_000
    assert max(long for long, _ in seen) == cap_steps   # the ladder reached the cap: the test can fail
    assert max(max(long, short) for long, short in seen) <= cap_steps
