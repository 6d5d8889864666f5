"""A randomized fault soak: one agent quotes ETHUSDC while every ambiguous answer, stream drops,
listenKey expiry, price jumps, market freezes and outside position moves fire at random times.

The schedule comes from ``random.Random(SEED)`` (:func:`fleet.sim.chaos.schedule`); a failure names
the seed and lists what was done when. Sampled every 50 ms at the exchange (``/sim/state``): the cap
holds outside the grace after an outside position move, and each such grace ends within a few
seconds; no client order id ever names two orders; once the faults stop the agent counts exactly
the exchange's open orders and position with nothing in flight, and its realized P&L and commission
are the exchange's (order updates lost, cut or spoiled on the way included); after ``stop`` none is
left open.
About 55 s of faults; some 60 s of wall time in all.
"""

from __future__ import annotations

import time
from decimal import ROUND_DOWN, Decimal
from typing import Any

import pytest

from fleet.config import RuntimeParams
from fleet.sim.chaos import Probe, Soak, schedule

from .test_agent_live import (  # noqa: F401 - fixtures
    SYMBOL,
    describe,
    exchange,
    in_sync,
    make_agent,
    wait_for,
    worst_short,
)

SEED = 20260
SOAK_SECONDS = 55.0
RUNTIME = RuntimeParams(
    reconnect_backoff_initial_sec=0.3,
    reconnect_backoff_max_sec=2.0,
    deadman_heartbeat_sec=1.0,
    deadman_countdown_ms=5_000,
    market_stale_sec=1.0,  # a freeze of 1.5-3 s pulls the quotes
    stop_timeout_sec=20.0,
    reconcile_interval_sec=1.0,
    reconcile_position_every=2,
)


def probe_of(agent: Any) -> Probe:
    return Probe(
        orders=lambda: {cid: (o.side, o.remaining_steps) for cid, o in agent.core.store.orders.items()},
        in_flight=lambda: agent.status()["requests_in_flight"],
        position_steps=lambda: agent.core.store.position_steps,
    )


async def test_random_faults_never_breach_the_cap_nor_orphan_nor_reuse_an_id(make_agent, sim):
    t0 = time.monotonic()
    agent = await make_agent(runtime=RUNTIME)
    await wait_for(lambda: agent.status()["state"] == "quoting", 10, "quoting")
    step = agent.filters.step_size
    actions = schedule(SEED, SOAK_SECONDS, SYMBOL, agent.params.worst_cap, step)
    _, key, secret = sim.accounts[0]
    async with Soak(sim.rest_url, key, secret, SYMBOL, agent.params.worst_cap, step, probe_of(agent),
                    grace_limit=3.0, seed=SEED) as soak:
        await soak.run(actions, SOAK_SECONDS)
        await soak.settle(timeout=30.0)

        async def books_equal() -> bool:   # every fill's P&L booked once, lost frames and all
            truth = (await soak.state())["positions"][SYMBOL]
            s = agent.core.store
            return (abs(Decimal(repr(s.realized_pnl)) - Decimal(truth["realized_pnl"])) < Decimal("1e-6") and
                    abs(Decimal(repr(s.commission)) - Decimal(truth["commission"]) - Decimal(truth["clearance_fee"]))
                    < Decimal("1e-6"))

        async def books() -> str:
            truth = (await soak.state())["positions"][SYMBOL]
            s = agent.core.store
            return (f"agent realized {s.realized_pnl} commission {s.commission}; exchange realized "
                    f"{truth['realized_pnl']} commission {truth['commission']} + {truth['clearance_fee']}")

        await wait_for(books_equal, 20, "the agent's realized P&L and commission the exchange's", explain=books)
        summary = await agent.stop()
        report = await soak.finish()
    print(f"soak seed {SEED}: {time.monotonic() - t0:.1f} s wall time")
    print("\n".join(report.lines()))
    assert not report.problems(), report.explain()
    assert summary["exchange_open_orders"] == 0, summary
    # every kind of fault fired, and the answers were really ambiguous to the agent
    assert {"late/timeout", "exec_then_error/-1007", "error/-1007", "batch_nonjson", "position", "freeze",
            "drop/user", "drop/market", "listenkey_expire", "throttle", "frame/no_status",
            "frame/user_garbage", "frame/market_garbage", "frame/order_update_lost", "429"} <= set(report.injected)
    counters = summary["counters"]
    assert counters["unknown_outcomes"] > 0 and counters["stale_market_pulls"] > 0, counters
    assert counters["malformed_frames"] > 0, counters
    assert report.graces, "no outside position move took effect"


async def test_an_order_with_an_unsettled_amend_is_pulled_once_it_adds_beyond_the_cap(make_agent, exchange):
    """The soak's minimal case (seed 1 of bench/chaos_bench.py at 13.6 s): sells whose amends were
    answered -1007 (not executed) rest; the position moves from outside to 2 steps inside the short
    cap; the sells now add beyond it and must go within a few seconds, not after recvWindow."""
    agent = await make_agent(runtime=RUNTIME)
    await wait_for(lambda: in_sync(agent, exchange), 10, "in sync", explain=lambda: describe(agent, exchange))
    step = agent.filters.step_size
    cap = (Decimal(str(agent.params.worst_cap)) / step + Decimal("1e-9")).to_integral_value(ROUND_DOWN) * step
    await exchange.post("/sim/fault/rest", {"mode": "error", "answer": "-1007", "path": "/fapi/v1/", "method": "PUT",
                                            "count": 3})

    def unsettled_sells() -> list:
        return [o for o in agent.core.store.orders.values() if o.side == "SELL" and o.busy and o.status == "NEW"]

    async def amended() -> bool:  # small moves until the agent's amends of resting sells met the faults
        if len(unsettled_sells()) >= 2:
            return True
        await exchange.post("/sim/market/jump", {"symbol": SYMBOL, "pct": 0.03})
        return False

    await wait_for(amended, 10, "sells with an unsettled amend", interval=0.3)
    moved = time.monotonic()
    await exchange.post("/sim/position", {"account": "main", "symbol": SYMBOL, "amount": str(-(cap - 2 * step))})

    async def inside() -> bool:
        return worst_short(await exchange.state()) >= -cap

    await wait_for(inside, 10, "worst short back inside the cap", explain=lambda: describe(agent, exchange))
    assert time.monotonic() - moved < 3.0, f"sells adding beyond the cap rested {time.monotonic() - moved:.1f} s"
