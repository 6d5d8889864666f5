"""Benchmark of the agent's trading core: quote-cycle latency, and requote churn vs cancel-all-and-replace.

1. One quote cycle (store snapshot, GeometricV2, RiskGuard, order diff) with 14 and 28 layers per
   side, p50/p99 in microseconds, in two states: a still book (nothing to change) and a moving one
   (the mid follows the simulator's market model between cycles, every request acknowledged at once).
2. Over a 30-minute seeded price path from ``fleet.sim.market.MarketModel`` (one cycle per
   ``quote_interval_ms``), orders sent per minute by the OrderManager against a naive
   cancel-all-and-replace baseline on the same path, and how often the live ladder was within
   tolerance of the desired one after each cycle.

Run: ``.venv/bin/python bench/core_bench.py`` (``--help`` for options).
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import sys
import time
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agents.core import AgentCore  # noqa: E402
from agents.orders import Amend, Place  # noqa: E402
from fleet.binance.events import BookTicker, MarkPrice, OrderUpdate  # noqa: E402
from fleet.binance.filters import SymbolFilters  # noqa: E402
from fleet.config import SymbolParams  # noqa: E402
from fleet.sim.market import MarketModel, MarketParams  # noqa: E402

SYMBOL = "ETHUSDC"


def filters(step: str, min_notional: str = "5") -> SymbolFilters:
    return SymbolFilters(
        SYMBOL, Decimal("0.01"), Decimal("0.01"), Decimal("1000000"), Decimal(step), Decimal(step),
        Decimal("10000"), Decimal(step), Decimal(step), Decimal("10000"), Decimal(min_notional), 200,
        Decimal("1.05"), Decimal("0.95"), "ETH", "USDC", "USDC",
    )


def params_for(layers: int) -> SymbolParams:
    """The seed's parameters; 28 layers with the earlier round's 1.185 spacing and a band that holds them."""
    if layers <= 14:
        return SymbolParams.model_validate({"grid": {"max_layers": layers}})
    return SymbolParams.model_validate(
        {"grid": {"max_layers": layers, "spacing_ratio": 1.185}, "risk": {"price_band": 0.08}}
    )


class InstantExchange:
    """Acknowledges every request at once with the stream frame Binance would send (no fills)."""

    def __init__(self, core: AgentCore) -> None:
        self.core = core
        self.t = 1
        self.oid = 0
        self.f = core.filters

    def frame(self, cid, oid, side, price_ticks, qty_steps, status, exec_type) -> OrderUpdate:
        self.t += 1
        f = self.f
        return OrderUpdate(
            self.t, self.t, SYMBOL, cid, side, "LIMIT", "GTX", f.qty_of(qty_steps), f.price_of(price_ticks),
            Decimal(0), exec_type, status, oid, Decimal(0), Decimal(0), Decimal(0), "USDC", Decimal(0),
            self.t, 0, True, False, Decimal(0),
        )

    def send(self, actions, now_ms: int) -> None:
        core = self.core
        for d in actions:
            core.on_sent(d, now_ms)
        for d in actions:
            if isinstance(d, Place):
                self.oid += 1
                ev = self.frame(d.client_order_id, self.oid, d.side, d.price_ticks, d.qty_steps, "NEW", "NEW")
            elif isinstance(d, Amend):
                ev = self.frame(d.client_order_id, d.order_id, d.side, d.price_ticks, d.qty_steps, "NEW", "AMENDMENT")
            else:
                o = core.store.orders[d.client_order_id]
                ev = self.frame(d.client_order_id, d.order_id, o.side, o.price_ticks, o.orig_steps, "CANCELED", "CANCELED")
            core.on_event(ev, now_ms)


def market_event(core: AgentCore, mid: float, t: int) -> None:
    core.on_event(BookTicker(SYMBOL, t, mid - 0.01, 1.0, mid + 0.01, 1.0, t, t), t)
    core.on_event(MarkPrice(SYMBOL, t, mid, mid, mid, 0.0001, t + 3_600_000), t)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def bench_cycle(layers: int, cycles: int, seed: int) -> dict[str, float]:
    params = params_for(layers)
    # A fine step and a low min notional, so that every one of the layers is on the book.
    core = AgentCore(SYMBOL, params, filters("0.0001", "0.1"), epoch=1)
    ex = InstantExchange(core)
    model = MarketModel(MarketParams(), random.Random(seed))
    t = 1_000
    market_event(core, model.mid, t)
    ex.send(core.quote(t), t)
    assert len(core.store.ladder_view()[0]) == layers, "the bench needs every layer on the book"
    still: list[float] = []
    moving: list[float] = []
    requests = 0
    clock = time.perf_counter_ns
    gc.disable()
    try:
        for _ in range(cycles):  # a still book: the whole cycle, nothing to change
            t += params.base.quote_interval_ms
            t0 = clock()
            acts = core.quote(t)
            still.append((clock() - t0) / 1000)
            assert not acts
        for _ in range(cycles):  # a moving book
            t += params.base.quote_interval_ms
            market_event(core, model.step(params.base.quote_interval_ms / 1000), t)
            t0 = clock()
            acts = core.quote(t)
            moving.append((clock() - t0) / 1000)
            requests += len(acts)
            ex.send(acts, t)
    finally:
        gc.enable()
    return {
        "still_p50": pct(still, 0.5), "still_p99": pct(still, 0.99),
        "moving_p50": pct(moving, 0.5), "moving_p99": pct(moving, 0.99),
        "requests_per_cycle": requests / cycles,
    }


def within_tolerance(core: AgentCore) -> bool:
    """Every desired layer has a live order within price and size tolerance."""
    lad = core.last_ladder
    mgr = core.manager
    live_bids, live_asks, _, _ = core.store.ladder_view()
    for desired, live in ((lad.bids, live_bids), (lad.asks, live_asks)):
        tols = mgr.tolerances(desired, lad.center_ticks)
        for q, tol in zip(desired, tols):
            if not any(
                abs(o.price_ticks - q.price_ticks) <= tol and abs(o.remaining_steps - q.qty_steps) <= mgr.size_tol * q.qty_steps
                for o in live
            ):
                return False
    return True


def bench_churn(minutes: float, seed: int, layers: int = 14) -> dict[str, float]:
    params = params_for(layers)
    core = AgentCore(SYMBOL, params, filters("0.001"), epoch=1)
    ex = InstantExchange(core)
    model = MarketModel(MarketParams(), random.Random(seed))
    dt_ms = params.base.quote_interval_ms
    cycles = int(minutes * 60_000 / dt_ms)
    t = 1_000
    ours = {"place": 0, "amend": 0, "cancel": 0}
    naive = 0
    live_before = 0
    in_tol = 0
    lo = hi = model.mid
    for _ in range(cycles):
        mid = model.step(dt_ms / 1000)
        lo, hi = min(lo, mid), max(hi, mid)
        t += dt_ms
        market_event(core, mid, t)
        acts = core.quote(t)
        for d in acts:
            ours["place" if isinstance(d, Place) else "amend" if isinstance(d, Amend) else "cancel"] += 1
        ex.send(acts, t)
        desired = len(core.last_ladder.bids) + len(core.last_ladder.asks)
        naive += live_before + desired  # cancel every live order, place the whole ladder again
        live_before = desired
        in_tol += within_tolerance(core)
    total = sum(ours.values())
    return {
        "cycles": cycles, "ours_per_min": total / minutes, "naive_per_min": naive / minutes,
        "ratio": total / naive, "within_tolerance": in_tol / cycles, "lo": lo, "hi": hi, **ours,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cycles", type=int, default=3000, help="quote cycles per latency measurement")
    ap.add_argument("--minutes", type=float, default=30.0, help="length of the churn price path")
    ap.add_argument("--seed", type=int, default=7, help="market model seed")
    args = ap.parse_args()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"core_bench: python {platform.python_version()} on {platform.machine()}, {os.cpu_count()} cpus,"
        f" load average {load:.2f} (timings swell under load), seed {args.seed}"
    )
    print(f"reproduce: .venv/bin/python bench/core_bench.py --cycles {args.cycles} --minutes {args.minutes:g} --seed {args.seed}")
    print("\n1. one quote cycle (snapshot + strategy + guard + order diff), microseconds")
    print(f"{'layers/side':>12} {'still p50':>10} {'still p99':>10} {'moving p50':>11} {'moving p99':>11} {'req/cycle':>10}")
    for layers in (14, 28):
        r = bench_cycle(layers, args.cycles, args.seed)
        print(
            f"{layers:>12} {r['still_p50']:>10.1f} {r['still_p99']:>10.1f} {r['moving_p50']:>11.1f}"
            f" {r['moving_p99']:>11.1f} {r['requests_per_cycle']:>10.2f}"
        )
    print(f"\n2. orders per minute over a {args.minutes:g}-minute price path (MarketModel seed {args.seed}, 14 layers)")
    r = bench_churn(args.minutes, args.seed)
    print(f"   path: {r['cycles']} cycles, mid {r['lo']:.2f} .. {r['hi']:.2f}")
    print(
        f"   order manager: {r['ours_per_min']:.1f}/min (place {r['place']}, amend {r['amend']}, cancel {r['cancel']})"
    )
    print(f"   cancel-all-and-replace: {r['naive_per_min']:.1f}/min")
    print(f"   ratio: {100 * r['ratio']:.2f} % of the baseline; live ladder within tolerance after {100 * r['within_tolerance']:.2f} % of cycles")


if __name__ == "__main__":
    main()
