"""The cap holds at the exchange under every ambiguous answer Binance gives (one drill per fault mode).

A real agent quotes on the simulator; the simulator answers some of its writes ambiguously (executed
late, executed then answered 5xx, -1006/-1007, a short or broken batch answer, a dropped
connection). Sampled every 50 ms at the exchange (``/sim/state``): the worst long and worst short
never pass the cap, and once the reconcile interval has passed the agent counts exactly the orders
the exchange holds (0 orphans) and the exchange's position.
"""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest

from fleet.config import BaseParams, GridParams, RuntimeParams, SymbolParams, WorstCaseParams

from .test_agent_live import (  # noqa: F401 - fixtures
    SYMBOL,
    Exchange,
    describe,
    exchange,
    in_sync,
    make_agent,
    metric,
    resting,
    wait_for,
    worst_long,
    worst_short,
)

RUNTIME = RuntimeParams(
    reconnect_backoff_initial_sec=0.3,
    reconnect_backoff_max_sec=2.0,
    deadman_heartbeat_sec=1.0,
    deadman_countdown_ms=8_000,
    market_stale_sec=600.0,
    stop_timeout_sec=20.0,
    reconcile_interval_sec=1.0,
    reconcile_position_every=2,
)
BATCH, ORDER = "/fapi/v1/batchOrders", "/fapi/v1/order"
# a ladder that fills each side up to the cap (no size decay), as a book near its cap does
AT_THE_CAP = SymbolParams(base=BaseParams(net_max=0.05), worst_case=WorstCaseParams(size_decay_k=0.0))


class CapWatch:
    """Samples the exchange's worst case every 50 ms in the background; remembers the extremes."""

    def __init__(self, ex: Exchange) -> None:
        self.ex = ex
        self.max_long = Decimal("-Infinity")
        self.min_short = Decimal("Infinity")
        self.samples = 0
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> "CapWatch":
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            st = await self.ex.state()
            self.max_long = max(self.max_long, worst_long(st))
            self.min_short = min(self.min_short, worst_short(st))
            self.samples += 1
            await asyncio.sleep(0.05)


async def fire_until_used(ex: Exchange, faults: list[dict[str, Any]], timeout: float = 20.0) -> None:
    """Inject ``faults``, then move the price until the agent has written enough to use them all."""
    for f in faults:
        await ex.post("/sim/fault/rest", f)
    pct = 0.25

    async def used() -> bool:
        nonlocal pct
        st = await ex.state()
        if not st["faults_pending"]:
            return True
        pct = -pct
        await ex.post("/sim/market/jump", {"symbol": SYMBOL, "pct": pct})
        return False

    await wait_for(used, timeout, f"the agent's writes to use up {faults}", interval=0.3)


async def settled(agent: Any, ex: Exchange, timeout: float = 20.0) -> None:
    """Within the window + reconcile interval: the agent counts what the exchange holds, exactly."""
    async def quiet_and_in_sync() -> bool:
        return agent.status()["requests_in_flight"] == 0 and await in_sync(agent, ex)

    await wait_for(quiet_and_in_sync, timeout, "agent and exchange in sync (no orphans)",
                   explain=lambda: describe(agent, ex))


def assert_cap(watch: CapWatch, cap: float) -> None:
    assert watch.samples > 0
    assert watch.max_long <= Decimal(str(cap)), f"worst long {watch.max_long} beyond the cap {cap}"
    assert watch.min_short >= -Decimal(str(cap)), f"worst short {watch.min_short} beyond the cap {cap}"


async def drill(make_agent, exchange, faults: list[dict[str, Any]], position: str | None = None) -> Any:
    agent = await make_agent(runtime=RUNTIME)
    cap = Decimal(str(agent.params.worst_cap))
    if position is not None:
        # a position moved from outside, near the cap: the agent first takes back what now adds too much
        await exchange.post("/sim/position", {"account": "main", "symbol": SYMBOL, "amount": position})

        async def within_cap() -> bool:
            st = await exchange.state()
            return worst_long(st) <= cap and worst_short(st) >= -cap

        await wait_for(within_cap, 10, "the ladder inside the cap after the position moved")
    await settled(agent, exchange)
    async with CapWatch(exchange) as watch:
        await fire_until_used(exchange, faults)
        await settled(agent, exchange)
    assert_cap(watch, agent.params.worst_cap)
    # In step once more, nothing in flight (the agent quotes on: a one-shot comparison could catch an
    # order sent since, not yet at the exchange; a ghost order would never let this pass)
    await settled(agent, exchange)
    return agent


@pytest.mark.parametrize("answer", ["503", "503-nocode", "500", "502", "-1006", "-1007"])
async def test_a_batch_answered_at_once_and_executed_later_is_counted_not_orphaned(make_agent, exchange, answer):
    agent = await drill(make_agent, exchange, [
        {"mode": "late", "answer": answer, "delay_ms": 400, "path": BATCH, "count": 3},
    ], position="0.19")
    assert agent.status()["counters"]["unknown_outcomes"] > 0


@pytest.mark.parametrize("answer", ["500", "-1006", "504", "503-html", "503-text"])
async def test_a_write_executed_then_answered_with_an_error_is_counted(make_agent, exchange, answer):
    agent = await drill(make_agent, exchange, [
        {"mode": "exec_then_error", "answer": answer, "path": BATCH, "count": 2},
        {"mode": "exec_then_error", "answer": answer, "path": ORDER, "count": 2},
    ], position="-0.19")
    assert agent.status()["counters"]["unknown_outcomes"] > 0


async def test_service_unavailable_is_a_definite_failure_and_nothing_waits_on_it(make_agent, exchange):
    """503 "Service Unavailable." (Binance: a 100 % failure, safe to retry) to new orders: no outcome left
    unknown. (An amendment reads any 5xx as of unknown outcome and looks it up: ``sender.amend_answer``.)"""
    agent = await drill(make_agent, exchange, [{"mode": "error", "answer": "503-unavailable", "path": BATCH,
                                                "method": "POST", "count": 3}])
    assert agent.status()["counters"]["unknown_outcomes"] == 0


async def test_minus_5028_is_a_definite_rejection_sent_again_and_nothing_waits_on_it(make_agent, exchange):
    """-5028 (outside the matching engine's recvWindow): nothing executed; the client learns the clock
    again and resends, and no outcome is left unknown."""
    agent = await drill(make_agent, exchange, [{"mode": "error", "answer": "-5028", "path": BATCH, "count": 2},
                                               {"mode": "error", "answer": "-5028", "path": ORDER, "count": 2}])
    assert agent.status()["counters"]["unknown_outcomes"] == 0


async def test_minus_1007_without_execution_is_settled_by_a_lookup_past_the_window(make_agent, exchange):
    agent = await drill(make_agent, exchange, [{"mode": "error", "answer": "-1007", "path": BATCH, "count": 2}])
    assert agent.status()["counters"]["unknown_outcomes_resolved"] > 0


@pytest.mark.parametrize("mode", ["batch_short", "batch_malformed", "batch_nonjson"])
async def test_a_short_or_broken_batch_answer_leaves_no_orphan(make_agent, exchange, mode):
    agent = await drill(make_agent, exchange, [{"mode": mode, "count": 2}], position="0.15")
    assert agent.status()["counters"]["unknown_outcomes"] > 0


async def test_a_connection_dropped_after_the_write_leaves_no_orphan(make_agent, exchange):
    agent = await drill(make_agent, exchange, [
        {"mode": "late", "answer": "timeout", "hold_ms": 300, "delay_ms": 200, "path": BATCH, "method": "POST",
         "count": 2},
    ])
    assert agent.status()["counters"]["unknown_outcomes"] > 0


async def test_a_batch_executed_then_answered_with_a_definite_failure_counts_again_from_its_frames(
        make_agent, exchange):
    """-1001 ("Internal error; unable to process your request"), which the agent reads as refused, after the
    batch executed: the orders' frames and the listing are the exchange's truth, and they count again (they
    rested uncounted beside the ladder placed in their stead: the worst case 0.073 of a 0.0575 cap)."""
    agent = await drill(make_agent, exchange, [
        {"mode": "exec_then_error", "answer": "-1001", "path": BATCH, "method": "POST", "count": 2},
    ], position="0.15")
    assert agent.core.store.rejects.get(-1001, 0) > 0


async def test_a_place_refused_minus_1021_after_a_resync_closed_it_is_not_sent_again(make_agent, exchange):
    """The first ladder's batches held 9 s on their way (past their 5 s recvWindow); a resync 6 s after they
    went finds none of them listed and closes them, and the ladder is placed again. The held batches then
    meet -1021, and the client re-signs and resends them: they went again and rested beside the new ladder
    (the worst case 1.9x the cap at the exchange). Closed here since, they are not sent again."""
    await exchange.post("/sim/fault/latency", {"ms": 9000, "path": BATCH})
    agent = await make_agent(runtime=RUNTIME, params=AT_THE_CAP)
    await exchange.post("/sim/market/freeze", {"frozen": True, "symbol": SYMBOL})

    async def held() -> bool:
        return len((await exchange.state())["held"]) >= 2

    await wait_for(held, 10, "the first ladder's batches held on their way")
    await exchange.post("/sim/fault/latency", {"ms": 0})   # later requests go through (the held keep their delay)
    first = [o for o in agent.core.store.orders.values() if o.status == "PENDING_NEW"]
    sent_ms = min(o.sent_ms for o in first)
    async with CapWatch(exchange) as watch:
        await wait_for(lambda: agent.exchange_ms() - sent_ms > 6_100, 10, "past the first window")
        await agent.starter.resync()
        assert all(o.status == "MISSING" for o in first)

        async def answered() -> bool:
            return not (await exchange.state())["held"] and agent.client.clock_resyncs > 0

        await wait_for(answered, 15, "the held batches answered -1021")
        await settled(agent, exchange)
    assert_cap(watch, agent.params.worst_cap)
    placed = {o["clientOrderId"] for o in await exchange.all_orders()}
    assert not {o.client_order_id for o in first} & placed, "a held order was sent again after its resync"


@pytest.mark.parametrize("answer", ["-1007", "503"])
async def test_a_stop_whose_flatten_order_is_answered_unknown_and_never_executed_still_flattens(
        make_agent, exchange, answer):
    """The stop's reduce-only market order is answered "unknown" and was not executed: another goes beside
    it (reduce-only: the second to execute meets a smaller position), as its look-up is a recvWindow away,
    more than a stop's flatten has (10 s here). The stop waited on the first until its time ran out, the
    position left open."""
    agent = await make_agent(runtime=RUNTIME.model_copy(update={"stop_timeout_sec": 10.0}))
    await exchange.post("/sim/position", {"account": "main", "symbol": SYMBOL, "amount": "0.05"})
    await wait_for(lambda: agent.core.store.position_steps == 50, 10, "the position seen")
    await settled(agent, exchange)
    await exchange.post("/sim/fault/rest", {"mode": "error", "answer": answer, "path": ORDER, "method": "POST",
                                            "count": 1})
    summary = await agent.stop(flatten=True)
    st = await exchange.state()
    assert not st["faults_pending"], "the flatten order never met the fault"
    assert Decimal(st["positions"][SYMBOL]["amount"]) == 0 and st["open_orders"] == []
    assert summary["flattened"] and summary["counters"]["unknown_outcomes"] >= 1, summary


async def test_late_amends_keep_the_larger_size_counted(make_agent, exchange):
    await drill(make_agent, exchange, [
        {"mode": "late", "answer": "503", "delay_ms": 600, "path": "/fapi/v1/", "method": "PUT", "count": 2},
    ], position="0.2")


async def test_an_amendment_executed_then_answered_minus_1001_is_counted_until_settled(make_agent, exchange):
    """-1001 ("Internal error; unable to process your request"; Binance: not executed) after the exchange applied
    the amendment: read as refused, the order counted its old size while the exchange held the new one, and
    beside a fill of the same millisecond its frame and the listing were stale for good. An amendment reads
    any 5xx as of unknown outcome: the larger size counts until its frame or a look-up settles it; the cap
    holds at the exchange and the agent ends counting what the exchange holds."""
    agent = await drill(make_agent, exchange, [
        {"mode": "exec_then_error", "answer": "-1001", "path": "/fapi/v1/", "method": "PUT", "count": 3},
    ], position="0.2")
    assert agent.status()["counters"]["unknown_outcomes"] >= 3
    assert agent.core.store.rejects.get(-1001, 0) == 0


async def test_a_batch_amendments_entry_answered_minus_1001_after_it_was_applied_is_counted_until_settled(
        make_agent, exchange):
    """The batch call answered 200, an entry -1001 where the exchange applied that amendment: the entry carries
    the code alone, no 5xx, and was read as refused (the growth dropped, as a whole call's 5xx was before).
    It reads as of unknown outcome; the cap holds at the exchange and the agent ends counting what it holds."""
    entry = {"code": -1001, "msg": "Internal error; unable to process your request. Please try again."}
    agent = await drill(make_agent, exchange, [
        {"mode": "batch_malformed", "entry": entry, "entries": [0], "path": BATCH, "method": "PUT", "count": 3},
    ], position="0.2")
    assert agent.status()["counters"]["unknown_outcomes"] >= 3
    assert agent.core.store.rejects.get(-1001, 0) == 0


async def test_market_data_lost_with_late_cancels_leaves_none_of_ours_resting(make_agent, exchange):
    """Quotes pulled on stale data, the cancels answered 500 and executed late, new orders in flight:
    the agent says "paused", and keeps at it until the exchange lists none of its orders."""
    runtime = RUNTIME.model_copy(update={"market_stale_sec": 1.0})
    agent = await make_agent(runtime=runtime)
    await settled(agent, exchange)
    await exchange.post("/sim/fault/rest", {"mode": "late", "answer": "500", "delay_ms": 800, "path": "/fapi/v1/",
                                            "method": "DELETE", "count": 3})
    await exchange.post("/sim/market/freeze", {"frozen": True, "symbol": SYMBOL})
    try:
        await wait_for(lambda: agent.status()["state"] == "paused", 5, "paused on stale market data")

        async def none_rest() -> bool:
            return not (await exchange.state())["open_orders"]

        await wait_for(none_rest, 15, "no order of ours resting at the exchange")
        assert agent.status()["state"] == "paused" and "market_stale" in agent.status()["blocks"]
        await wait_for(lambda: agent.status()["counters"]["quote_pulls_confirmed"] >= 1, 15, "the pull confirmed")
    finally:
        await exchange.post("/sim/market/freeze", {"frozen": False, "symbol": SYMBOL})
    await wait_for(lambda: agent.status()["state"] == "quoting", 10, "quoting again")
    await settled(agent, exchange)


async def test_a_pull_whose_cancel_is_answered_unknown_is_sent_again_not_left_to_a_lookup(make_agent, exchange):
    """Quotes pulled on stale data, the cancel answered -1007 (status unknown) and not executed: the
    orders still rest. The agent cancels them again (a cancel is idempotent) instead of leaving them
    resting until a look-up a recvWindow later settles the first cancel's fate."""
    runtime = RUNTIME.model_copy(update={"market_stale_sec": 1.0})
    agent = await make_agent(runtime=runtime)
    # "quoting" comes before the first ladder lands: in sync with an empty book is not yet quoting
    await wait_for(lambda: resting(agent, exchange), 10, "a ladder resting on both sides")
    await settled(agent, exchange)
    assert (await exchange.state())["open_orders"]
    await exchange.post("/sim/fault/rest", {"mode": "error", "answer": "-1007", "path": "/fapi/v1/",
                                            "method": "DELETE", "count": 1})
    await exchange.post("/sim/market/freeze", {"frozen": True, "symbol": SYMBOL})
    try:
        async def none_rest() -> bool:
            return not (await exchange.state())["open_orders"]

        await wait_for(none_rest, 15, "no order of ours resting at the exchange", explain=lambda: describe(agent, exchange))
        st = await exchange.state()
        assert not st["faults_pending"], "the pull's cancel never met the fault"
        counters = agent.status()["counters"]
        assert counters["unknown_outcomes"] > 0 and counters["cancel_retries"] > 0, counters
        assert counters["unknown_outcomes_resolved"] == 0, "the orders went by a look-up, not by cancelling again"
    finally:
        await exchange.post("/sim/market/freeze", {"frozen": False, "symbol": SYMBOL})
    await wait_for(lambda: agent.status()["state"] == "quoting", 10, "quoting again")
    await settled(agent, exchange)


@pytest.mark.parametrize("fault", [None, "exec_then_error"])
async def test_reconciliation_adopts_and_cancels_an_order_the_agent_never_heard_of(make_agent, exchange, sim, fault):
    """With ``exec_then_error`` the reconciliation's cancel executes and is answered 5xx: its CANCELED
    frame comes with no answer to settle it first, and must still be read as the agent's own cancel
    (before, it was read as another hand's, and quoting was held to ask the owner)."""
    from fleet.sim.testkit import SimClient

    # a short ladder, far below the cap: the order below takes no ladder order's room
    agent = await make_agent(runtime=RUNTIME, params=SymbolParams(grid=GridParams(max_layers=2)))
    await settled(agent, exchange)
    if fault is not None:   # the ladder holds still: the one DELETE to come is the reconciliation's
        await exchange.post("/sim/market/freeze", {"frozen": True, "symbol": SYMBOL})
        await exchange.post("/sim/fault/rest", {"mode": fault, "path": "/fapi/v1/", "method": "DELETE", "count": 1})
    # an order of this epoch the agent did not place (its record lost): the agent counts it from its
    # frame or the listing, and cancels it, since no ladder of its wants it
    assert agent.status()["counters"]["owner_asks"] == 0
    cid = f"mm-{SYMBOL}-e{agent.core.epoch}-999999"
    async with SimClient.for_sim(sim) as c:
        bid = Decimal((await c.public("GET", "/fapi/v1/ticker/bookTicker", {"symbol": SYMBOL})).json["bidPrice"])
        params = {"symbol": SYMBOL, "side": "BUY", "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.010",
                  "price": str((bid * Decimal("0.97")).quantize(Decimal("0.01"))), "newClientOrderId": cid}
        reply = await c.signed("POST", ORDER, params)
        assert reply.status == 200, reply.json

    async def gone() -> bool:
        return cid not in {o["clientOrderId"] for o in (await exchange.state())["open_orders"]}

    await wait_for(gone, 10, "the untracked order cancelled by the reconciliation")
    status = agent.status()
    assert status["counters"]["reconcile_repairs"] >= 1
    assert status["last_reconcile_repair"]["kind"] in ("untracked", "orphan_cancelled")
    # its own cancel, marked as sent before it went: not read as another hand's, so no owner asked
    assert status["counters"]["owner_asks"] == 0, status["counters"]
    if fault is not None:
        assert not (await exchange.state())["faults_pending"], "the reconciliation's cancel never met the fault"
        assert status["counters"]["unknown_outcomes"] >= 1, status["counters"]
        await exchange.post("/sim/market/freeze", {"frozen": False, "symbol": SYMBOL})
    await settled(agent, exchange)


async def test_system_throttling_refuses_the_quotes_yet_a_flatten_goes_through(make_agent, exchange):
    """Binance's -1008 ("Request throttled by system-level protection. Reduce-only/close-position orders
    are exempt."): nothing refused is counted, the cap holds, the flatten's reduce-only orders pass
    while the throttle lasts, and the agent quotes again once it ends."""
    agent = await drill(make_agent, exchange, [], position="0.030")
    cap = agent.params.worst_cap
    async with CapWatch(exchange) as watch:
        await exchange.post("/sim/fault/rest", {"mode": "throttle", "count": 1_000_000})
        pct = 0.25

        async def refused_some() -> bool:
            nonlocal pct
            if (await exchange.state())["server"]["throttled"] >= 5:
                return True
            pct = -pct
            await exchange.post("/sim/market/jump", {"symbol": SYMBOL, "pct": pct})
            return False

        await wait_for(refused_some, 20, "the agent's new orders refused with -1008", interval=0.3)
        await wait_for(lambda: "throttled" in agent.status()["exchange_holds"], 5, "status() says the exchange throttles")
        await settled(agent, exchange)   # a refused order is not counted: nothing to settle
        flat = await agent.flatten("drill")
        st = await exchange.state()
        assert flat["position"] == 0.0 and Decimal(st["positions"][SYMBOL]["amount"]) == 0
        assert st["faults_pending"], "the flatten went through while the throttle still held"
        assert metric(agent, "mm_throttled_total") == st["server"]["throttled"]   # each one heard, and held
    assert_cap(watch, cap)
    await exchange.post("/sim/fault/clear", {})
    await agent.resume()
    await wait_for(lambda: resting(agent, exchange), 15, "quoting again once the throttle ended",
                   explain=lambda: describe(agent, exchange))
    await wait_for(lambda: agent.status()["exchange_holds"] == [], 10, "no hold shown once quoting is back")


FRAME_FAULTS = [
    # Binance: N and n "will not push if no commission": such frames are whole frames, not malformed
    ({"stream": "user", "event": "ORDER_TRADE_UPDATE", "fields": ["o.N", "o.n"], "count": 10}, 0),
    ({"stream": "user", "event": "ORDER_TRADE_UPDATE", "fields": ["o.z", "o.l", "o.T"], "count": 3}, 0),
    # a frame without the order's status, or broken: skipped, counted, the reconciliation repairs
    ({"stream": "user", "event": "ORDER_TRADE_UPDATE", "fields": ["o.X"], "count": 3}, 3),
    ({"stream": "user", "mode": "garbage", "count": 2}, 2),
    ({"stream": "user", "mode": "truncate", "count": 2}, 2),
    ({"stream": "market", "event": "bookTicker", "symbol": SYMBOL, "fields": ["b"], "count": 3}, 3),
    ({"stream": "market", "event": "bookTicker", "symbol": SYMBOL, "mode": "garbage", "count": 2}, 2),
]


async def test_frames_without_fields_or_broken_are_skipped_and_counted_and_the_cap_holds(make_agent, exchange):
    """The simulator sends frames without fields (those Binance documents as optional, and required
    ones) and frames that do not parse, on the user and the market stream: the agent parses the first,
    logs, counts and skips the others, never holds more than its cap at the exchange, and ends counting
    exactly what the exchange holds."""
    agent = await make_agent(runtime=RUNTIME)
    await exchange.post("/sim/position", {"account": "main", "symbol": SYMBOL, "amount": "0.15"})
    await settled(agent, exchange)
    before = agent.status()["counters"]["malformed_frames"]
    async with CapWatch(exchange) as watch:
        for fault, _ in FRAME_FAULTS:
            await exchange.post("/sim/fault/frame", fault)
        pct = 0.25

        async def used() -> bool:
            nonlocal pct
            if not (await exchange.state())["frame_faults_pending"]:
                return True
            pct = -pct
            await exchange.post("/sim/market/jump", {"symbol": SYMBOL, "pct": pct})
            return False

        await wait_for(used, 30, "the frame faults used up", interval=0.3)
        await settled(agent, exchange)
    assert_cap(watch, agent.params.worst_cap)
    skipped = agent.status()["counters"]["malformed_frames"] - before
    assert skipped == sum(n for _, n in FRAME_FAULTS), skipped
    assert metric(agent, "mm_malformed_frames_total") == agent.status()["counters"]["malformed_frames"]
