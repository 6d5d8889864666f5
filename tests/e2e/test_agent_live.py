"""A real SymbolAgent (in this process) against the simulator over loopback: quoting, faults, stop.

Every check compares the agent with the simulator's truth (``/sim/state``, ``allOrders``); waits are
polls with a deadline, never sleeps that hope.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import re
from decimal import Decimal
from typing import Any

import aiohttp
import pytest

from agents.agent import ExchangeEndpoints, SymbolAgent
from agents.core import Actions
from agents.orders import Batch, BatchKind, OrderReason, Place
from agents.ownership import Grant, LockFileOwnership, OwnershipLost
from fleet.binance.credentials import Credentials
from fleet.binance.errors import BinanceError
from fleet.binance.events import BUY
from fleet.config import BaseParams, GridParams, GrindingParams, RuntimeParams, SymbolParams
from fleet.sim.testkit import SimClient
from tests.polling import wait_for  # noqa: F401 - the other e2e tests import it from here

SYMBOL = "ETHUSDC"
FAST = RuntimeParams(
    reconnect_backoff_initial_sec=0.3,
    reconnect_backoff_max_sec=2.0,
    deadman_heartbeat_sec=1.0,
    deadman_countdown_ms=5_000,
    market_stale_sec=600.0,  # tests freeze the market; staleness has its own test
    stop_timeout_sec=20.0,
)


# --------------------------------------------------------------------------- helpers


class Exchange:
    """The simulator's admin routes and truth, for assertions."""

    def __init__(self, sim: Any) -> None:
        self.sim = sim
        self.http = aiohttp.ClientSession()

    async def close(self) -> None:
        await self.http.close()

    async def state(self, symbol: str = SYMBOL) -> dict:
        async with self.http.get(f"{self.sim.rest_url}/sim/state", params={"account": "main", "symbol": symbol}) as r:
            assert r.status == 200
            return await r.json()

    async def post(self, path: str, body: dict) -> dict:
        async with self.http.post(f"{self.sim.rest_url}{path}", json=body) as r:
            data = await r.json()
            assert r.status == 200, data
            return data

    async def all_orders(self, symbol: str = SYMBOL) -> list[dict]:
        async with SimClient.for_sim(self.sim) as c:
            reply = await c.signed("GET", "/fapi/v1/allOrders", {"symbol": symbol, "limit": 1000})
        assert reply.status == 200, reply.json
        return reply.json


def truth_orders(state: dict) -> dict[str, dict]:
    return {o["clientOrderId"]: o for o in state["open_orders"]}


def worst_long(state: dict, symbol: str = SYMBOL) -> Decimal:
    pos = Decimal(state["positions"][symbol]["amount"])
    buys = sum(
        (Decimal(o["origQty"]) - Decimal(o["executedQty"]) for o in state["open_orders"] if o["side"] == "BUY"),
        Decimal(0),
    )
    return pos + buys


def worst_short(state: dict, symbol: str = SYMBOL) -> Decimal:
    pos = Decimal(state["positions"][symbol]["amount"])
    sells = sum(
        (Decimal(o["origQty"]) - Decimal(o["executedQty"]) for o in state["open_orders"] if o["side"] == "SELL"),
        Decimal(0),
    )
    return pos - sells


def agent_open(agent: SymbolAgent) -> dict[str, tuple[str, int]]:
    """The agent's open orders: client id -> (side, remaining steps)."""
    return {cid: (o.side, o.remaining_steps) for cid, o in agent.core.store.orders.items()}


def exchange_open(state: dict, step: Decimal) -> dict[str, tuple[str, int]]:
    return {
        o["clientOrderId"]: (o["side"], int((Decimal(o["origQty"]) - Decimal(o["executedQty"])) / step))
        for o in state["open_orders"]
    }


async def in_sync(agent: SymbolAgent, ex: Exchange) -> bool:
    """The agent's position and open orders equal the exchange's, with nothing in flight."""
    core = agent.core
    if core is None or any(o.busy for o in core.store.orders.values()):
        return False
    st = await ex.state(agent.symbol)
    step = agent.filters.step_size
    pos_ok = Decimal(st["positions"][agent.symbol]["amount"]) == core.store.position_steps * step
    return pos_ok and exchange_open(st, step) == agent_open(agent)


async def describe(agent: SymbolAgent, ex: Exchange) -> str:
    """Both sides' views, for a failure message."""
    st = await ex.state(agent.symbol)
    return (
        f"agent: pos {agent.core.store.position_steps} {agent.core.store.orders}\n"
        f"exchange: pos {st['positions'][agent.symbol]['amount']} {exchange_open(st, agent.filters.step_size)}\n"
        f"status: {agent.status()}"
    )


async def resting(agent: SymbolAgent, ex: Exchange) -> bool:
    """In sync, with a ladder on both sides."""
    return bool(await in_sync(agent, ex)) and {o.side for o in agent.core.store.orders.values()} == {"BUY", "SELL"}


def metric(agent: SymbolAgent, name: str) -> float:
    text = agent.metrics_text().decode()
    m = re.search(rf"^{name}\{{[^}}]*\}} (\S+)$", text, re.M)
    assert m, f"{name} not exposed"
    return float(m.group(1))


@pytest.fixture
async def exchange(sim):
    ex = Exchange(sim)
    yield ex
    await ex.close()


@pytest.fixture
async def make_agent(sim, tmp_path):
    """Start agents on the simulator; every one is stopped at the end."""
    running: list[tuple[SymbolAgent, asyncio.Task]] = []
    failed: set[asyncio.Task] = set()   # starts that raised: the test saw their error

    async def start(
        params: SymbolParams | None = None, runtime: RuntimeParams = FAST, symbol: str = SYMBOL,
        renew_interval_s: float = 5.0, ownership_class: type[LockFileOwnership] = LockFileOwnership,
        carried: Any = None,
    ) -> SymbolAgent:
        _, key, secret = sim.accounts[0]
        agent = SymbolAgent(
            fleet_name="t",
            symbol=symbol,
            params=params or SymbolParams(),
            runtime=runtime,
            endpoints=ExchangeEndpoints(sim.rest_url, sim.ws_url, sim.ws_url),
            credentials=Credentials(key, secret),
            ownership=ownership_class(tmp_path / "state", "t", symbol, renew_interval_s=renew_interval_s),
        )
        agent.carried = carried   # the books a previous agent of the symbol left (agents/carry.py)
        task = asyncio.create_task(agent.run())
        running.append((agent, task))
        await wait_for(lambda: task.done() or agent.status()["state"] in ("quoting", "halted"), 10, "started")
        if task.done():
            failed.add(task)
            task.result()
        await wait_for(lambda: agent.status()["last_book_age_s"] is not None, 10, "a first book update")
        return agent

    yield start
    for agent, task in running:
        await agent.stop()
        if task in failed:
            continue   # a start that failed: the test saw its error (start() raised it)
        await asyncio.wait_for(task, 25)
    # the simulator acknowledges a stream asked on the wrong route and never pushes it: none of ours was
    assert sim.stats["ws_misrouted_silent_streams"] == 0


# --------------------------------------------------------------------------- tests


async def test_starts_and_quotes_both_sides(make_agent, exchange, caplog):
    # how fast: bench/agent_bench.py and bench/fleet_bench.py print it (a 5 s bound here raced a loaded box)
    caplog.set_level(logging.INFO, logger="mmfleet.agent")
    agent = await make_agent()

    async def both_sides() -> bool:
        sides = {o["side"] for o in (await exchange.state())["open_orders"]}
        return sides == {"BUY", "SELL"}

    await wait_for(both_sides, 30.0, "bids and asks resting at the exchange")
    assert "WebSocket UserStream connected" in caplog.text
    assert metric(agent, "mm_ws_connected") == 1.0
    epoch = agent.status()["epoch"]
    assert all(cid.startswith(f"mm-{SYMBOL}-e{epoch}-") for cid in truth_orders(await exchange.state()))
    assert metric(agent, "mm_max_notional") > 0 and metric(agent, "mm_leverage") == 20   # symbolConfig read
    assert "cap_beyond_leverage" not in [getattr(r, "event", None) for r in caplog.records]


async def ladder_mismatches(agent: SymbolAgent, ex: Exchange) -> list[str]:
    """How the exchange's resting ladder differs from what the strategy wants now (empty: it matches)."""
    core = agent.core
    if not await in_sync(agent, ex):
        return ["not in sync"]
    ladder = core.last_ladder  # what the strategy proposed in the latest cycle (every 220 ms)
    if ladder is None:
        return ["no ladder yet"]
    st = await ex.state()
    f = agent.filters
    out = []
    for side, desired in (("BUY", ladder.bids), ("SELL", ladder.asks)):
        live = sorted(
            (o for o in st["open_orders"] if o["side"] == side),
            key=lambda o: Decimal(o["price"]),
            reverse=side == "BUY",
        )
        if not desired or len(live) != len(desired):
            out.append(f"{side}: {len(live)} live vs {len(desired)} desired")
            continue
        tols = core.manager.tolerances(desired, ladder.center_ticks)
        for q, o, tol in zip(desired, live, tols):
            live_ticks = f.price_ticks_exact(o["price"])
            if abs(live_ticks - q.price_ticks) > tol:
                out.append(f"{side} layer {q.layer}: {o['price']} vs {f.price_str(q.price_ticks)} (tolerance {tol} ticks)")
            live_steps = f.qty_steps_exact(o["origQty"]) - f.qty_steps_exact(o["executedQty"])
            if abs(live_steps - q.qty_steps) > agent.params.orders.size_tolerance * q.qty_steps:
                out.append(f"{side} layer {q.layer}: {live_steps} steps vs {q.qty_steps}")
    return out


async def test_live_ladder_matches_the_strategy(make_agent, exchange):
    agent = await make_agent()
    await exchange.post("/sim/market/freeze", {"frozen": True, "symbol": SYMBOL})
    last: list[str] = []

    async def matches() -> bool:
        last[:] = await ladder_mismatches(agent, exchange)
        return not last

    await wait_for(matches, 10, "the live ladder to match the strategy", explain=lambda: asyncio.sleep(0, str(last)))
    # and it keeps matching while the price walks (each move within a layer's tolerance or re-quoted)
    for pct in (0.05, -0.1):
        await exchange.post("/sim/market/jump", {"symbol": SYMBOL, "pct": pct})
        await wait_for(matches, 10, f"a match after a {pct}% move", explain=lambda: asyncio.sleep(0, str(last)))


async def test_fills_happen_and_state_equals_the_simulator(make_agent, exchange):
    agent = await make_agent()
    await exchange.post("/sim/market/freeze", {"frozen": True, "symbol": SYMBOL})
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    for pct in (-0.15, 0.3, -0.3):
        await exchange.post("/sim/market/jump", {"symbol": SYMBOL, "pct": pct})
        await wait_for(lambda: in_sync(agent, exchange), 10, f"sync after a {pct}% jump", explain=lambda: describe(agent, exchange))
    st = await exchange.state()
    store = agent.core.store
    assert store.fills_buy > 0 and store.fills_sell > 0
    assert Decimal(st["positions"][SYMBOL]["amount"]) == store.position_steps * agent.filters.step_size
    assert store.commission == pytest.approx(float(st["positions"][SYMBOL]["commission"]), abs=1e-6)
    assert store.entry_price == pytest.approx(float(st["positions"][SYMBOL]["entry_price"]), rel=1e-9)
    # unrealized P&L from the agent's entry at the exchange's mark is the exchange's figure
    mark = float(st["markets"][SYMBOL]["mark_price"])
    unrealized = store.position * (mark - store.entry_price)
    assert unrealized == pytest.approx(float(st["positions"][SYMBOL]["unrealized_pnl"]), abs=1e-6)


async def test_realized_pnl_equals_the_simulator(make_agent, exchange):
    agent = await make_agent()
    await exchange.post("/sim/market/freeze", {"frozen": True, "symbol": SYMBOL})
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    for pct in (-0.15, 0.3, -0.3):
        await exchange.post("/sim/market/jump", {"symbol": SYMBOL, "pct": pct})
        await wait_for(lambda: in_sync(agent, exchange), 10, f"sync after a {pct}% jump", explain=lambda: describe(agent, exchange))
    st = await exchange.state()
    assert agent.core.store.realized_pnl == pytest.approx(float(st["positions"][SYMBOL]["realized_pnl"]), abs=1e-6)


@pytest.mark.parametrize("pct", [-1.0, 1.0], ids=["crash-long", "squeeze-short"])
async def test_worst_case_never_exceeds_the_cap_through_a_sweep(make_agent, exchange, pct):
    params = SymbolParams(base=BaseParams(base_size=0.05))  # big layers: the cap binds within a few jumps
    agent = await make_agent(params)
    cap = Decimal(str(params.worst_cap))
    await exchange.post("/sim/market/freeze", {"frozen": True, "symbol": SYMBOL})
    samples: list[Decimal] = []  # the exchange's worst case on the side the sweep loads
    done = asyncio.Event()

    async def sample() -> None:
        while not done.is_set():
            st = await exchange.state()
            samples.append(worst_long(st) if pct < 0 else -worst_short(st))
            await asyncio.sleep(0)

    sampler = asyncio.create_task(sample())
    try:
        await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
        for _ in range(6):  # the price jumps through every resting order of one side, again and again
            await exchange.post("/sim/market/jump", {"symbol": SYMBOL, "pct": pct})
            await wait_for(lambda: in_sync(agent, exchange), 10, "re-quoted after a jump", explain=lambda: describe(agent, exchange))
    finally:
        done.set()
        await sampler
    st = await exchange.state()
    assert len(samples) > 20
    assert max(samples) <= cap, f"worst case {max(samples)} over {cap}"
    assert abs(Decimal(st["positions"][SYMBOL]["amount"])) >= cap * Decimal("0.5")  # the sweep really loaded it


async def test_a_book_emptied_by_another_hand_is_not_quoted_again_before_the_owner_answers(make_agent, exchange):
    """A kill makes its state durable, then its exchange route cancels every order while its route to
    the agent is still on the way. The agent, seeing its orders cancelled by another hand, asks its
    owner before quoting again, and the answer carries the kill: nothing is placed after the cancel.
    (Before, it quoted its ladder again at once, on the book the kill had just emptied, until the kill
    reached it: 13 orders in one CI-like run.)"""
    agent = await make_agent(renew_interval_s=600.0)   # no renewal but the ones the agent asks for
    await exchange.post("/sim/market/freeze", {"frozen": True, "symbol": SYMBOL})  # the ladder holds still
    for kill in (1, 2):
        await wait_for(lambda: resting(agent, exchange), 10, "a ladder resting on both sides")
        agent.ownership.record_kill_state("halted")   # the kill's durable write, the agent not told
        async with SimClient.for_sim(exchange.sim) as c:
            cancel_at = (await c.public("GET", "/fapi/v1/time")).json["serverTime"]
            assert (await c.signed("DELETE", "/fapi/v1/allOpenOrders", {"symbol": SYMBOL})).status == 200
        await wait_for(lambda: agent.status()["state"] == "halted", 10, "halted on the owner's answer")
        placed = [o for o in await exchange.all_orders() if o["time"] >= cancel_at]
        assert placed == [], (kill, placed)
        assert agent.counters["owner_asks"] == kill
        assert (await exchange.state())["open_orders"] == []
        # A direct resume changes the core, not the last grant (still "halted"): the second kill's
        # answer says what the last grant said, and must stop the quoting core all the same.
        await agent.resume()


class SlowOwner(LockFileOwnership):
    """A busy owner: a renewal reads the kill state when it arrives and answers 400 ms later."""

    read = asyncio.Event()

    async def renew(self):
        grant = await super().renew()
        SlowOwner.read.set()
        await asyncio.sleep(0.4)
        return grant


async def test_a_renewal_sent_before_a_kill_does_not_lift_the_hold_of_the_orders_it_cancelled(make_agent, exchange):
    """As above, with a renewal on its way when the kill comes: it read "running" before the kill's
    durable write and answers after the kill's exchange route cancelled the book. Only a renewal sent
    after the agent asked lifts its hold: the ladder is not placed again on the emptied book."""
    agent = await make_agent(renew_interval_s=600.0, ownership_class=SlowOwner)
    await exchange.post("/sim/market/freeze", {"frozen": True, "symbol": SYMBOL})  # the ladder holds still
    await wait_for(lambda: resting(agent, exchange), 10, "a ladder resting on both sides")
    SlowOwner.read.clear()
    renewal = asyncio.create_task(agent.timers.renew_once())   # the loop's renewal, on its way
    await asyncio.wait_for(SlowOwner.read.wait(), 5)          # ... the owner read "running"
    agent.ownership.record_kill_state("halted")               # the kill's durable write
    async with SimClient.for_sim(exchange.sim) as c:
        cancel_at = (await c.public("GET", "/fapi/v1/time")).json["serverTime"]
        assert (await c.signed("DELETE", "/fapi/v1/allOpenOrders", {"symbol": SYMBOL})).status == 200
    await renewal
    await wait_for(lambda: agent.status()["state"] == "halted", 10, "halted on the owner's answer")
    placed = [o for o in await exchange.all_orders() if o["time"] >= cancel_at]
    assert placed == [], placed
    assert (await exchange.state())["open_orders"] == []


async def longer_ladder_sent(agent: SymbolAgent) -> set[str]:
    """A longer ladder wanted (8 layers), one quote cycle decided and handed to the sender's tasks, which
    have not run yet: the client ids it places."""
    await agent.apply_params(SymbolParams(grid=GridParams(max_layers=8)))
    now = agent.exchange_ms()
    actions = agent.core.quote(now, agent.budget.orders_available())
    places = {p.client_order_id for b in actions.batches if b.kind == "place" for p in b.items}
    assert places, actions
    agent.sender.execute(actions, now, None)
    return places


async def none_placed(agent: SymbolAgent, exchange: Exchange, places: set[str]) -> None:
    seen = {o["clientOrderId"] for o in await exchange.all_orders()}
    assert not places & seen, sorted(places & seen)   # none of them reached the exchange
    assert not places & set(agent.core.store.orders)   # and none is left counted as pending


async def test_an_order_decided_before_a_halt_is_not_sent_after_it(make_agent, exchange):
    """The quote cycle decides and hands its batches to tasks; a halt that comes before they run
    keeps them here (the client's order gate asks the kill state before it signs), so nothing lands
    on the book the halt empties. Cancels still go, and the halt confirms 0."""
    agent = await make_agent(params=SymbolParams(grid=GridParams(max_layers=4)))
    await exchange.post("/sim/market/freeze", {"frozen": True, "symbol": SYMBOL})
    await wait_for(lambda: resting(agent, exchange), 10, "a short ladder resting on both sides")
    # One synchronous stretch, as a halt arriving between a cycle's decision and its sends:
    places = await longer_ladder_sent(agent)
    out = await agent.halt("drill")
    assert out["open_orders"] == 0, out
    await none_placed(agent, exchange, places)
    assert (await exchange.state())["open_orders"] == []


class HeldOwner(LockFileOwnership):
    """An owner whose renewals are answered only while ``answering`` is set (a controller busy elsewhere;
    the test that uses it makes the event on its own loop)."""

    answering: asyncio.Event

    async def renew(self):
        await HeldOwner.answering.wait()
        return await super().renew()


async def test_an_order_decided_before_another_hands_cancel_is_not_sent_while_the_owner_is_asked(
        make_agent, exchange):
    """A kill's exchange route may empty the book between a quote cycle's decision and its sends. The
    agent, seeing its orders cancelled by another hand, asks its owner; what the cycle decided before
    that stays here until the owner answers (the order gate), so nothing lands on the emptied book that
    the kill's answer would have to take off again. Its answer here says running: quoting goes on."""
    HeldOwner.answering = asyncio.Event()
    HeldOwner.answering.set()
    agent = await make_agent(params=SymbolParams(grid=GridParams(max_layers=4)), renew_interval_s=600.0,
                             ownership_class=HeldOwner)
    await exchange.post("/sim/market/freeze", {"frozen": True, "symbol": SYMBOL})
    await wait_for(lambda: resting(agent, exchange), 10, "a short ladder resting on both sides")
    HeldOwner.answering.clear()
    try:
        # One synchronous stretch, as the cancel's frame read between a cycle's decision and its sends:
        places = await longer_ladder_sent(agent)
        agent.ask_owner("drill: orders of ours cancelled by another hand")
        await wait_for(lambda: not agent.sender.sending, 10, "the decided batches settled")
        assert agent.status()["blocks"] == ["asking"]
        await none_placed(agent, exchange, places)
    finally:
        HeldOwner.answering.set()
    await wait_for(lambda: agent.status()["state"] == "quoting", 10, "quoting on the owner's answer")
    await wait_for(lambda: len(agent.core.store.orders) > 8, 10, "the longer ladder placed")


class LateOwner(LockFileOwnership):
    """A fleet's owner as a restarted agent meets it: the symbol granted only once the predecessor's lease
    lapsed (2.5 s of refusals), for the fleet's 3 s lease (the agent counts it lapsed 1 s early)."""

    async def acquire(self):
        await asyncio.sleep(2.5)
        self._grant = dataclasses.replace(await super().acquire(), lease_ttl_s=3.0, waited_s=2.5)
        return self._grant


async def test_a_lease_granted_after_a_wait_counts_from_the_request_granted(make_agent, exchange, caplog):
    """An acquire that waited for a predecessor's lease to lapse: the agent's lease counts from the
    request the owner granted, not from the first try (it read as lapsed the moment it was taken: a
    false "lease lapsed" ERROR, and quotes pulled, on every restart of a fleet's agent)."""
    caplog.set_level(logging.INFO, logger="mmfleet.agent")
    agent = await make_agent(renew_interval_s=0.3, ownership_class=LateOwner)
    await wait_for(lambda: resting(agent, exchange), 10, "a ladder resting on both sides")
    events = [getattr(r, "event", None) for r in caplog.records]
    assert "lease_lapsed" not in events and "ownership_acquired" in events
    assert agent.counters["lease_pulls"] == 0


class ShortHeldOwner(HeldOwner):
    """A held owner granting the fleet's 3 s lease: renewals held past it, the lease lapses."""

    async def acquire(self):
        self._grant = dataclasses.replace(await super().acquire(), lease_ttl_s=3.0)
        return self._grant


async def test_a_halted_agents_lease_regained_says_the_symbol_stays_halted(make_agent, exchange, caplog):
    """The lease lapses and comes back while the symbol is halted: the line says it stays halted (it
    said "quoting resumes", on a symbol that placed nothing)."""
    caplog.set_level(logging.INFO, logger="mmfleet.agent")
    HeldOwner.answering = asyncio.Event()
    HeldOwner.answering.set()
    agent = await make_agent(renew_interval_s=0.3, ownership_class=ShortHeldOwner)
    await wait_for(lambda: resting(agent, exchange), 10, "a ladder resting on both sides")
    await agent.halt("drill")
    HeldOwner.answering.clear()
    try:
        await wait_for(lambda: "lease" in agent.status()["blocks"], 10, "the lease lapsed")
    finally:
        HeldOwner.answering.set()

    def regained() -> list[str]:
        return [r.getMessage() for r in caplog.records if getattr(r, "event", None) == "lease_regained"]

    await wait_for(regained, 10, "the lease regained")
    assert regained()[-1].endswith("the symbol stays halted"), regained()
    assert (await exchange.state())["open_orders"] == []


async def test_a_clock_two_minutes_off_is_read_again_counted_and_shown(make_agent, exchange):
    """The host's clock jumps (as a bad NTP step): the exchange refuses the next signed request with
    -1021; the client reads the exchange's clock again and sends it once more. The agent keeps quoting,
    and the re-sync is counted (status, ``mm_clock_resyncs_total``) with the offset shown."""
    agent = await make_agent()
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    assert agent.status()["clock_resyncs"] == 0 and metric(agent, "mm_clock_resyncs_total") == 0
    assert agent.client is not None
    agent.client.time_offset_ms -= 120_000
    await exchange.post("/sim/market/jump", {"symbol": SYMBOL, "pct": 0.3})   # the ladder moves: signed requests
    await wait_for(lambda: agent.status()["clock_resyncs"] >= 1, 10, "the -1021 answer re-synced")
    assert metric(agent, "mm_clock_resyncs_total") >= 1
    assert abs(metric(agent, "mm_exchange_clock_offset_ms")) < 60_000
    assert abs(agent.status()["exchange_clock_offset_ms"]) < 60_000
    await wait_for(lambda: resting(agent, exchange), 10, "quoting on", explain=lambda: describe(agent, exchange))


async def test_user_stream_drop_reconnects_and_resyncs_without_duplicates(make_agent, exchange):
    agent = await make_agent()
    await exchange.post("/sim/market/freeze", {"frozen": True, "symbol": SYMBOL})
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    seen: list[float] = []

    async def watch() -> None:
        while True:
            seen.append(metric(agent, "mm_ws_connected"))
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    try:
        dropped = await exchange.post("/sim/fault/drop", {"target": "user", "account": "main"})
        assert dropped["dropped"] >= 1
        await exchange.post("/sim/market/jump", {"symbol": SYMBOL, "pct": -0.2})  # fills while it is down
        await wait_for(lambda: 0.0 in seen, 5, "mm_ws_connected 0")
        await wait_for(lambda: seen[-1] == 1.0 and seen.index(0.0) < len(seen) - 1, 10, "mm_ws_connected back to 1")
        # the fills the snapshot no longer lists are settled by their look-ups (UNRESOLVED_QUERY_MS on): no
        # time bound here, the figure is bench/'s
        await wait_for(lambda: in_sync(agent, exchange), 15, "agent equals exchange after the reconnect",
                       explain=lambda: describe(agent, exchange))
    finally:
        watcher.cancel()
    assert agent.counters["user_stream_reconnects"] >= 1
    # nothing orphaned at the exchange, nothing duplicated: the ladder is whole again
    st = await exchange.state()
    assert Decimal(st["positions"][SYMBOL]["amount"]) > 0  # bids filled while the stream was down
    assert set(truth_orders(st)) == set(agent.core.store.orders)


async def test_user_stream_down_past_grace_cancels_all_through_rest(make_agent, exchange):
    # the reconnect waits 4 s (+-20 %): the REST fallback's empty book (0.3-0.6 s after the drop) is seen before
    runtime = FAST.model_copy(update={"user_stream_grace_sec": 0.3, "reconnect_backoff_initial_sec": 4.0})
    agent = await make_agent(runtime=runtime)
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    assert metric(agent, "mm_rest_fallback_count") == 0
    await exchange.post("/sim/fault/drop", {"target": "user", "account": "main"})

    async def emptied() -> bool:
        return agent.counters["rest_fallback_cancels"] == 1 and not (await exchange.state())["open_orders"]

    await wait_for(emptied, 5, "cancel-all through REST while the stream is down")
    assert metric(agent, "mm_rest_fallback_count") >= 1
    await wait_for(lambda: agent.status()["state"] == "quoting", 15, "quoting again after reconnect")
    await wait_for(lambda: resting(agent, exchange), 10, "a whole ladder after resume", explain=lambda: describe(agent, exchange))


async def a_ladder_batch_answered_503(agent: SymbolAgent, ex: Exchange, delay_ms: int) -> set[str]:
    """The ladder pulled by a halt, then quoted again on a resume: its first batch is answered 503 and
    executes ``delay_ms`` later. Returns its orders' client ids, once the agent holds them as unknown."""
    await wait_for(lambda: resting(agent, ex), 10, "ladder resting", explain=lambda: describe(agent, ex))
    await agent.halt("test")
    await wait_for(lambda: agent.counters["quote_pulls_confirmed"] >= 1, 10, "the halt's pull over")
    await ex.post("/sim/fault/rest", {"mode": "late", "count": 1, "path": "/fapi/v1/batchOrders",
                                      "method": "POST", "answer": "503", "delay_ms": delay_ms})
    await agent.resume()
    await wait_for(lambda: any(o.unknown_ms is not None for o in agent.core.store.orders.values()), 5,
                   "the ladder's first batch answered 503, executing later")
    assert (await ex.state())["deferred"], "a place batch of unknown outcome is due to execute late"
    return {o.client_order_id for o in agent.core.store.orders.values() if o.unknown_ms is not None}


async def test_orders_landing_after_the_rest_fallback_cancel_are_cancelled_while_the_stream_is_down(
        make_agent, exchange):
    """A batch answered 503 and executed 1.5 s later lands after the REST fallback's cancel-all, with
    the user stream still down (its reconnect waits ~10 s): unseen by the stream, it must not rest
    until the reconnect. The fallback keeps re-listing and cancelling until nothing of ours may land."""
    runtime = FAST.model_copy(update={"user_stream_grace_sec": 0.3, "reconnect_backoff_initial_sec": 10.0,
                                      "reconnect_backoff_max_sec": 10.0})
    agent = await make_agent(runtime=runtime)
    late = await a_ladder_batch_answered_503(agent, exchange, delay_ms=1500)
    await exchange.post("/sim/fault/drop", {"target": "user", "account": "main"})

    async def late_ones_cancelled() -> bool:
        st = await exchange.state()
        if st["deferred"] or st["open_orders"]:
            return False
        done = {o["clientOrderId"]: o["status"] for o in await exchange.all_orders()}
        return all(done.get(cid) == "CANCELED" for cid in late)

    await wait_for(late_ones_cancelled, 6, "the late batch cancelled while the user stream is still down",
                   explain=lambda: describe(agent, exchange))
    assert not agent.user.connected and agent.counters["rest_fallback_cancels"] == 1
    await wait_for(lambda: agent.status()["state"] == "quoting", 20, "quoting again after the reconnect")
    await wait_for(lambda: resting(agent, exchange), 10, "a whole ladder after resume", explain=lambda: describe(agent, exchange))


async def test_the_rest_fallbacks_cancel_landing_after_the_reconnect_is_ours_not_another_hands(
        make_agent, exchange):
    """The REST fallback's cancels are answered 503 and executed 4 s later, after the user stream came
    back and the resync listed the orders open: their CANCELED frames are the agent's own cancels, not
    another hand's (read so, quoting was held and the owner asked, a false alarm)."""
    runtime = FAST.model_copy(update={"user_stream_grace_sec": 0.3, "reconnect_backoff_initial_sec": 1.5,
                                      "reconnect_backoff_max_sec": 1.5})
    agent = await make_agent(runtime=runtime)
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    ladder = {o["clientOrderId"] for o in (await exchange.state())["open_orders"]}
    await exchange.post("/sim/fault/rest", {"mode": "late", "count": 20, "method": "DELETE", "answer": "503",
                                            "delay_ms": 4000})
    await exchange.post("/sim/fault/drop", {"target": "user", "account": "main"})

    async def held() -> bool:
        return any(d["method"] == "DELETE" for d in (await exchange.state())["deferred"])

    await wait_for(held, 5, "the REST fallback's cancels sent, held by the exchange")
    await wait_for(lambda: agent.counters["resyncs"] >= 1, 10, "the user stream back and resynced")
    await exchange.post("/sim/fault/clear", {})
    assert await held(), "the fallback's cancels still held when the stream came back: they land after it"

    async def cancels_landed() -> bool:
        return not (await exchange.state())["deferred"] and await in_sync(agent, exchange)

    await wait_for(cancels_landed, 10, "the late cancels executed and their frames applied",
                   explain=lambda: describe(agent, exchange))
    cancelled = {o["clientOrderId"] for o in await exchange.all_orders() if o["status"] == "CANCELED"}
    assert ladder & cancelled, "the fallback cancelled the ladder"
    assert agent.counters["owner_asks"] == 0, "the fallback's own cancels were read as another hand's"
    await wait_for(lambda: resting(agent, exchange), 10, "a whole ladder again", explain=lambda: describe(agent, exchange))


async def test_after_a_rest_outage_the_user_stream_comes_back_at_the_first_answer_not_after_its_back_off(
        make_agent, exchange):
    """Every REST answer a 503 with the user stream lost: each reconnect fails on its listenKey and the
    back-off grows (3 s, 6 s, then 12 s +-20 %). Once REST answers again, the reconnect goes at the
    agent's next answer (its dead-man heartbeat beats every second), not after the 12 s (a long outage
    grew it to a minute: agents sat unquoting that long after the exchange came back)."""
    runtime = FAST.model_copy(update={"user_stream_grace_sec": 0.3, "reconnect_backoff_initial_sec": 3.0,
                                      "reconnect_backoff_max_sec": 60.0})
    agent = await make_agent(runtime=runtime)
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    await exchange.post("/sim/fault/rest", {"mode": "error", "count": 100_000, "answer": "503"})
    await exchange.post("/sim/fault/drop", {"target": "user", "account": "main"})
    await wait_for(lambda: agent.counters["user_reconnect_failures"] >= 2, 15, "two reconnects failed in the outage")
    await exchange.post("/sim/fault/clear", {})
    await wait_for(lambda: agent.user.connected, 6, "the user stream back before the 12 s back-off ends")
    assert agent.counters["user_reconnect_failures"] == 2
    await wait_for(lambda: resting(agent, exchange), 10, "a whole ladder again", explain=lambda: describe(agent, exchange))


async def test_an_outage_of_one_route_wakes_a_reconnect_at_its_own_end_not_at_every_answer(
        make_agent, exchange, caplog):
    """Every openOrders answered 503 while the rest of REST answers (the heartbeat among them, every
    second): each reconnect fails at its resync. The end of an outage woke a reconnect early, and the
    heartbeat's answer said so at once: the reconnect went at every heartbeat (29 tries in 30 s, a
    review). Now the first early try after a failure waits for any answer, the second for that route's
    own, then the whole back-off; and once the route answers again (the quote pull lists the orders on
    it), the reconnect goes then, not after a back-off grown to a minute (up to 51 s, a hostile run)."""
    caplog.set_level(logging.INFO, logger="mmfleet.agent")
    route_said = "or once GET /fapi/v1/openOrders answers again"
    runtime = FAST.model_copy(update={"user_stream_grace_sec": 0.3, "reconnect_backoff_initial_sec": 1.0,
                                      "reconnect_backoff_max_sec": 60.0})
    agent = await make_agent(runtime=runtime)
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    await exchange.post("/sim/fault/rest", {"mode": "error", "count": 100_000, "answer": "503",
                                            "path": "/fapi/v1/openOrders", "method": "GET"})
    await exchange.post("/sim/fault/drop", {"target": "user", "account": "main"})

    def failed() -> list[logging.LogRecord]:
        return [r for r in caplog.records if getattr(r, "event", None) == "user_reconnect_failed"]

    await wait_for(lambda: sum(route_said in r.getMessage() for r in failed()) >= 2, 40,
                   "two reconnects failed waiting for the route's own end")
    await exchange.post("/sim/fault/clear", {})
    cleared = failed()
    for this, after in zip(cleared, cleared[1:]):
        if route_said in this.getMessage():   # the route never answered meanwhile: the whole back-off waited
            delay = float(re.search(r"next try in ([0-9.]+)s", this.getMessage()).group(1))   # (to 0.1 s)
            assert after.created - this.created >= delay - 0.05, (this.getMessage(), after.created - this.created)
    last = float(re.search(r"next try in ([0-9.]+)s", cleared[-1].getMessage()).group(1))
    assert last >= 12.0   # 16 s +-20 %: the back-off the route's end cuts short
    await wait_for(lambda: agent.user.connected, 10, "the user stream back once openOrders answers again")
    assert len(failed()) == len(cleared)
    await wait_for(lambda: resting(agent, exchange), 30, "a whole ladder again", explain=lambda: describe(agent, exchange))


async def test_listen_key_expired_is_recovered_without_duplicates(make_agent, exchange):
    agent = await make_agent()
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    before = {o["clientOrderId"] for o in (await exchange.state())["open_orders"]}
    expired = await exchange.post("/sim/listenkey/expire", {"account": "main"})
    assert expired["listenKey"]
    await wait_for(lambda: agent.counters["listen_key_expired"] >= 1, 5, "listenKeyExpired seen")
    await wait_for(lambda: agent.status()["state"] == "quoting", 10, "quoting on a new key")
    await exchange.post("/sim/market/jump", {"symbol": SYMBOL, "pct": 0.2})
    await wait_for(lambda: in_sync(agent, exchange), 10, "in sync on the new key", explain=lambda: describe(agent, exchange))
    st = await exchange.state()
    assert st["listen_key_active"]
    assert set(truth_orders(st)) == set(agent.core.store.orders)
    assert before  # there was a ladder to lose


async def test_orders_decided_before_the_lease_lapsed_are_not_sent_after(make_agent, exchange):
    """A decision made while the lease held, the lease lapsing before the send (the process stopped
    or starved between the two): nothing of it reaches the exchange, and the store does not wait for it."""
    agent = await make_agent()
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    await agent.halt("test")
    core = agent.core
    core.resume()   # the decision, the sends spawned, the lapse: with no await in between
    now_ms = agent.exchange_ms()
    actions = core.quote(now_ms, agent.budget.orders_available())
    decided = {d.client_order_id for b in actions.batches if b.kind == "place" for d in b.items}
    assert decided, "a resumed core with no orders places a ladder"
    agent.sender.execute(actions, now_ms, None)
    agent.lease.valid_until = -math.inf
    await wait_for(lambda: not agent.sender.inflight, 5, "the send tasks done")
    seen = {o["clientOrderId"] for o in await exchange.all_orders()}
    assert not decided & seen, "an order decided under the lapsed lease reached the exchange"
    assert not decided & set(core.store.orders), "the store still counts orders that were never sent"


async def test_a_failed_resync_is_tried_again_until_quoting_resumes(make_agent, exchange):
    """The reconciler's repair (a resync from REST) meeting a 503: quoting stays stopped while the
    store is not known to be the truth, and a retry, not a later repair, brings it back (the
    reconciler skips while a resync is owed, so nothing else would)."""
    agent = await make_agent()
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    await exchange.post("/sim/fault/rest", {"mode": "error", "count": 2, "path": "/fapi/v3/positionRisk", "status": 503})
    with pytest.raises(BinanceError):
        await agent.starter.resync()   # what the reconciler calls on a position that differs twice
    assert agent.status()["state"] == "resyncing"
    await wait_for(lambda: agent.counters["resync_failures"] >= 2, 10, "the retry meeting the second 503")
    await wait_for(lambda: agent.status()["state"] == "quoting", 15, "quoting after a resync succeeded")
    await exchange.post("/sim/market/jump", {"symbol": SYMBOL, "pct": 0.2})
    await wait_for(lambda: resting(agent, exchange), 10, "a whole ladder in sync with the exchange",
                   explain=lambda: describe(agent, exchange))
    assert agent.counters["resync_failures"] == 2 and agent.counters["resyncs"] >= 1


@pytest.mark.parametrize("mode", ["unknown", "error"])
async def test_order_entry_faults_never_duplicate_orders(make_agent, exchange, mode):
    agent = await make_agent()
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    for path in ("/fapi/v1/order", "/fapi/v1/batchOrders"):
        await exchange.post("/sim/fault/rest", {"mode": mode, "count": 3, "path": path, "status": 503})
    for pct in (0.3, -0.3, 0.3):  # moves that make the agent amend, cancel and place
        await exchange.post("/sim/market/jump", {"symbol": SYMBOL, "pct": pct})
        await asyncio.sleep(0)
    await wait_for(lambda: not (exchange.sim.faults), 10, "all faults consumed")

    async def agreed() -> dict | None:   # one state read for both checks: the agent quotes on meanwhile
        if not await in_sync(agent, exchange):
            return None
        st = await exchange.state()
        return st if set(truth_orders(st)) == set(agent.core.store.orders) else None

    st = await wait_for(agreed, 15, "in sync after the faults", explain=lambda: describe(agent, exchange))
    orders = st["open_orders"]
    prices = [(o["side"], o["price"]) for o in orders]
    assert len(prices) == len(set(prices)), "two resting orders at one price: a duplicate"
    if mode == "unknown":
        assert agent.counters["unknown_outcomes_resolved"] >= 1
    # every order the exchange ever saw from us is one the agent knew
    known = set(agent.core.store.orders) | set(agent.core.store.closed)
    assert {o["clientOrderId"] for o in await exchange.all_orders()} <= known


async def test_stale_market_pulls_quotes_until_fresh(make_agent, exchange):
    agent = await make_agent(runtime=FAST.model_copy(update={"market_stale_sec": 1.0}))
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    await exchange.post("/sim/market/freeze", {"frozen": True, "symbol": SYMBOL})

    async def pulled() -> bool:
        return "market_stale" in agent.status()["blocks"] and not (await exchange.state())["open_orders"]

    await wait_for(pulled, 10, "quotes pulled on a stale book")
    await exchange.post("/sim/market/freeze", {"frozen": False, "symbol": SYMBOL})
    await wait_for(lambda: resting(agent, exchange), 10, "quoting again once fresh", explain=lambda: describe(agent, exchange))
    assert agent.counters["stale_market_pulls"] >= 1


async def test_a_loop_that_fails_is_logged_its_quotes_pulled_and_it_starts_again(make_agent, exchange, caplog):
    """No loop dies silently: a reconciliation that raises what it never expects ends its task; the
    agent logs it, pulls its quotes at the exchange, starts the loop again, and quotes again."""
    caplog.set_level(logging.INFO, logger="mmfleet.agent")
    agent = await make_agent(runtime=FAST.model_copy(update={"reconcile_interval_sec": 0.3}))
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    await exchange.post("/sim/market/freeze", {"frozen": True, "symbol": SYMBOL})  # the ladder then holds still
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting on the frozen book")
    cancelled = {o["clientOrderId"] for o in await exchange.all_orders() if o["status"] == "CANCELED"}
    resting_ids = set(truth_orders(await exchange.state()))
    reconciler = agent.reconciler
    original = reconciler._reconcile_orders
    failures: list[str] = []

    async def fails_once() -> None:
        if not failures:
            failures.append("raised")
            raise RuntimeError("injected: a reconciliation meets what it never expected")
        await original()

    reconciler._reconcile_orders = fails_once  # type: ignore[method-assign]
    await wait_for(lambda: failures, 5, "the injected failure")
    after = agent.counters["reconciliations"]
    await wait_for(lambda: agent.counters["reconciliations"] >= after + 2, 5, "the reconciliation loop at work again")
    assert "task reconcile failed" in caplog.text and "injected" in caplog.text

    async def pulled() -> bool:  # every order of the ladder, not only some
        now_cancelled = {o["clientOrderId"] for o in await exchange.all_orders() if o["status"] == "CANCELED"}
        return resting_ids <= now_cancelled - cancelled

    await wait_for(pulled, 5, "the resting ladder cancelled at the exchange")
    await wait_for(lambda: resting(agent, exchange), 10, "quoting again", explain=lambda: describe(agent, exchange))


async def test_grinding_sends_the_market_order_and_the_reentry(make_agent, exchange):
    await exchange.post("/sim/position", {"account": "main", "symbol": SYMBOL, "amount": "0.180"})
    params = SymbolParams(grinding=GrindingParams(min_window_sec=0))  # ranging is judged at once
    agent = await make_agent(params)
    await wait_for(lambda: metric(agent, "mm_grind_count_total") >= 1, 10, "a grind")

    async def reentry_sent() -> list[dict]:
        orders = await exchange.all_orders()
        market = [o for o in orders if o["type"] == "MARKET" and o["side"] == "SELL" and o["status"] == "FILLED"]
        if not market:
            return []
        filled = Decimal(market[0]["executedQty"])
        reentry = [
            o for o in orders
            if o["type"] == "LIMIT" and o["side"] == "BUY" and o["timeInForce"] == "GTX"
            and Decimal(o["origQty"]) == filled * Decimal("2.1").quantize(Decimal("0.1")) // agent.filters.step_size * agent.filters.step_size
        ]
        return [market[0], *reentry[:1]] if reentry else []

    found = await wait_for(reentry_sent, 10, "the grind's market sell and its re-entry buy at the exchange")
    market, reentry = found
    assert market["reduceOnly"] is True or market["reduceOnly"] == "true"
    assert Decimal(market["executedQty"]) > 0
    mid = agent.core.store.mid
    assert float(reentry["price"]) < mid  # rests below mid, reentry_spread_bps away
    assert metric(agent, "mm_grind_count_total") >= 1


async def test_funding_pnl_equals_the_simulators_funding_fees(make_agent, exchange):
    await exchange.post("/sim/position", {"account": "main", "symbol": SYMBOL, "amount": "0.100"})
    agent = await make_agent()
    await exchange.post("/sim/funding/rate", {"symbol": SYMBOL, "rate": "0.0005"})

    async def equal() -> bool:
        funding = float((await exchange.state())["positions"][SYMBOL]["funding"])
        return funding != 0 and metric(agent, "mm_funding_pnl_acc") == pytest.approx(funding, abs=1e-8)

    for i in range(3):  # three settlements, each booked before the next (as 8 hours apart would be)
        charged = await exchange.post("/sim/funding/settle", {"symbol": SYMBOL})
        assert charged["charged"]
        await wait_for(equal, 10, f"mm_funding_pnl_acc equal to the simulator's FUNDING_FEE sum after {i + 1}")
    assert metric(agent, "mm_funding_pnl_acc") < 0  # longs pay a positive rate


async def test_graceful_stop_with_flatten_leaves_nothing_within_20s(make_agent, exchange):
    await exchange.post("/sim/position", {"account": "main", "symbol": SYMBOL, "amount": "0.050"})
    agent = await make_agent()
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    summary = await agent.stop(flatten=True)
    st = await exchange.state()
    assert st["open_orders"] == []
    assert Decimal(st["positions"][SYMBOL]["amount"]) == 0
    assert summary["state"] == "stopped"
    assert summary["exchange_open_orders"] == 0 and summary["exchange_position"] == 0.0
    assert summary["stop_elapsed_ms"] <= 20_000
    assert st["positions"][SYMBOL]["countdown_deadline_ms"] in (None, 0)  # dead-man switch disarmed
    assert await agent.stop() == summary  # idempotent


async def test_a_stop_whose_cancel_all_the_exchange_refuses_cancels_the_listed_orders(make_agent, exchange):
    """The exchange answers every DELETE allOpenOrders 503 through the stop: the stop cancels the listed
    orders by the batch route instead, and disarms the dead-man switch only once the book is empty (the
    ladder rested on, unowned and with the switch off, after an apply that removed the symbol)."""
    # a countdown longer than the stop (FAST's 5 s would fire inside it and empty the book itself)
    agent = await make_agent(runtime=FAST.model_copy(update={"deadman_countdown_ms": 120_000, "stop_timeout_sec": 6.0}))
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    await exchange.post("/sim/fault/rest", {"mode": "error", "count": 500, "path": "/fapi/v1/allOpenOrders",
                                            "method": "DELETE", "status": 503})
    summary = await agent.stop()
    st = await exchange.state()
    assert st["open_orders"] == [] and summary["exchange_open_orders"] == 0
    assert st["positions"][SYMBOL]["countdown_deadline_ms"] in (None, 0)   # empty for good: disarmed


async def test_a_stop_that_cannot_cancel_leaves_the_dead_mans_switch_armed(make_agent, exchange, caplog):
    """Neither the cancel-all nor the batch cancel goes through: the orders left are the dead-man switch's
    to cancel, so it stays armed (it was disarmed, leaving them resting for good), and the stop says so."""
    caplog.set_level(logging.INFO, logger="mmfleet.agent")
    # a countdown longer than the stop (FAST's 5 s would fire inside it and empty the book itself)
    agent = await make_agent(runtime=FAST.model_copy(update={"deadman_countdown_ms": 120_000, "stop_timeout_sec": 6.0}))
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    for path in ("/fapi/v1/allOpenOrders", "/fapi/v1/batchOrders", "/fapi/v1/order"):
        await exchange.post("/sim/fault/rest", {"mode": "error", "count": 500, "path": path, "method": "DELETE",
                                                "status": 503})
    summary = await agent.stop()
    st = await exchange.state()
    assert st["open_orders"] and summary["exchange_open_orders"] == len(st["open_orders"])
    assert st["positions"][SYMBOL]["countdown_deadline_ms"], st["positions"][SYMBOL]   # still armed
    assert [r for r in caplog.records if getattr(r, "event", None) == "stop_left_orders"]
    await exchange.post("/sim/fault/clear", {})


async def test_a_stop_against_an_exchange_that_answers_nothing_ends_within_its_timeout(make_agent, exchange, caplog):
    """Every REST answer held a minute: the graceful part, the forced cancel-all, the exchange's view and the
    journal's last read each wait only what is left of ``stop_timeout_sec`` (against a stopped exchange they
    added up to 26.5 s of a 20 s timeout, past a container's grace), and the orders left are said to be the
    dead-man switch's, which stays armed."""
    caplog.set_level(logging.INFO, logger="mmfleet.agent")
    runtime = FAST.model_copy(update={"deadman_countdown_ms": 120_000, "stop_timeout_sec": 8.0})
    agent = await make_agent(runtime=runtime)
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    await exchange.post("/sim/fault/latency", {"ms": 60_000})
    summary = await agent.stop()
    st = await exchange.state()
    assert summary["stop_elapsed_ms"] <= runtime.stop_timeout_sec * 1000, summary["stop_elapsed_ms"]
    assert summary["exchange_open_orders"] is None and st["open_orders"]   # not read, and left resting
    assert st["positions"][SYMBOL]["countdown_deadline_ms"], st["positions"][SYMBOL]   # still armed
    assert [r for r in caplog.records if getattr(r, "event", None) == "stop_slow"]
    await exchange.post("/sim/fault/clear", {})


@pytest.mark.parametrize("flatten", [False, True])
async def test_a_stop_outwaits_new_orders_answered_503_that_execute_after_it_emptied_the_book(make_agent, exchange,
                                                                                              flatten):
    """A ladder's batch answered 503 and executed 4 s later: a stop right after the answer empties the
    book before they land. It must cancel them when they do, and not leave the exchange, dead-man switch
    disarmed, with a ladder nobody manages; a flatten's stop too (it waited 2.5 s for them)."""
    agent = await make_agent()
    late = await a_ladder_batch_answered_503(agent, exchange, delay_ms=4000)
    summary = await agent.stop(flatten=flatten)
    st = await exchange.state()
    assert st["deferred"] == [] and st["server"]["late_executed"] == 1   # landed during the stop
    assert st["open_orders"] == [], st["open_orders"]
    done = {o["clientOrderId"]: o["status"] for o in await exchange.all_orders()}
    # cancelled (or, the market having moved in 4 s, refused as crossing, or filled): none left open
    assert not {cid: done[cid] for cid in late if done.get(cid) in ("NEW", "PARTIALLY_FILLED")}
    assert summary["exchange_open_orders"] == 0
    assert st["positions"][SYMBOL]["countdown_deadline_ms"] in (None, 0)  # disarmed once nothing may land


async def test_a_stop_outwaits_a_503_whose_request_was_signed_again_after_a_minus_1021(make_agent, exchange):
    """An order decided while our clock ran two minutes behind: refused -1021, signed again with the
    offset learned anew, answered 503, executed 2 s later. On the exchange's clock it may land until
    the second signature's window closes, long after the one its decision time gives: the stop waits."""
    agent = await make_agent()
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    await exchange.post("/sim/market/freeze", {"symbol": SYMBOL, "mode": "price"})   # the ladder stays as it is
    await exchange.post("/sim/fault/rest", {"mode": "late", "count": 1, "path": "/fapi/v1/order",
                                            "method": "POST", "answer": "503", "delay_ms": 2000})
    core = agent.core
    far = agent.filters.price_ticks_floor(core.store.mid_price() * 0.9)
    place = Place(core.ids.next(), BUY, far, agent.filters.qty_steps_exact("0.010"), reason=OrderReason.LADDER)
    agent.client.time_offset_ms -= 120_000   # no await from here to the send: its first signature is stale
    agent.sender.execute(Actions(batches=(Batch(BatchKind.PLACE, (place,)),)), agent.exchange_ms(), None)
    await wait_for(lambda: core.store.orders[place.client_order_id].unknown_ms is not None, 5,
                   "refused -1021, sent again, answered 503 and executing later")
    assert abs(agent.client.time_offset_ms) < 5_000 and (await exchange.state())["deferred"]
    await agent.stop()
    st = await exchange.state()
    assert st["deferred"] == [] and st["server"]["late_executed"] == 1   # landed during the stop
    assert st["open_orders"] == [], st["open_orders"]


async def test_a_stop_outwaits_an_order_signed_again_after_a_minus_1021_and_still_on_its_way(make_agent, exchange):
    """As above, but the stop comes while the order signed again is still on its way (a slow exchange):
    its window is counted from the second signature before it is sent, not once it is answered, so the
    stop does not take it for one that can no longer land, end, and leave it resting with no dead-man."""
    agent = await make_agent()
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    await exchange.post("/sim/market/freeze", {"symbol": SYMBOL, "mode": "price"})   # the ladder stays as it is
    await exchange.post("/sim/fault/latency", {"ms": 3000, "path": "/fapi/v1/order"})   # inside recvWindow
    core = agent.core
    far = agent.filters.price_ticks_floor(core.store.mid_price() * 0.9)
    place = Place(core.ids.next(), BUY, far, agent.filters.qty_steps_exact("0.010"), reason=OrderReason.LADDER)
    cid = place.client_order_id

    async def held_since(after_ms: int) -> int | None:   # when the exchange got it, while it holds it
        arrived = [h["arrived_ms"] for h in (await exchange.state())["held"] if h["newClientOrderId"] == cid]
        return arrived[0] if arrived and arrived[0] > after_ms else None

    agent.client.time_offset_ms -= 120_000   # no await from here to the send: its first signature is stale
    agent.sender.execute(Actions(batches=(Batch(BatchKind.PLACE, (place,)),)), agent.exchange_ms(), None)
    first = await wait_for(lambda: held_since(0), 10, "the order's first signature on its way")
    await wait_for(lambda: held_since(first), 10, "refused -1021, signed again and on its way")
    summary = await agent.stop()   # while the exchange still holds it

    async def landed() -> bool:
        async with SimClient.for_sim(exchange.sim) as c:
            return (await c.signed("GET", "/fapi/v1/order", {"symbol": SYMBOL, "origClientOrderId": cid})).status == 200

    await wait_for(landed, 15, "the order signed again landed at the exchange")
    await exchange.post("/sim/fault/clear", {})
    st = await exchange.state()
    assert [o["clientOrderId"] for o in st["open_orders"]] == [] and summary["exchange_open_orders"] == 0, st
    assert st["positions"][SYMBOL]["countdown_deadline_ms"] in (None, 0)


async def test_an_order_another_tool_rests_on_the_symbol_is_said_counted_and_cancelled_by_the_stop(
        make_agent, exchange, caplog):
    """One owner per symbol: an order placed by another hand on the same account and symbol is counted
    in the worst case (the exchange counts it), left alone while quoting, said once as a WARNING (the
    agent's ladder may shrink to nothing under it), and cancelled by the stop with everything else."""
    caplog.set_level(logging.INFO, logger="mmfleet.agent")
    mid = Decimal((await exchange.state())["markets"][SYMBOL]["mark_price"])

    async def another_hand(cid: str, side: str, pct: float) -> None:
        async with SimClient.for_sim(exchange.sim) as c:
            placed = await c.signed("POST", "/fapi/v1/order", {
                "symbol": SYMBOL, "side": side, "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.050",
                "price": f"{mid * Decimal(str(1 + pct)):.2f}", "newClientOrderId": cid})
            assert placed.status == 200, placed.json

    await another_hand("desk-manual-0", "SELL", 0.05)   # resting before the start: listed by its snapshot
    agent = await make_agent()
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    assert agent.counters["foreign_orders"] == 1
    await another_hand("desk-manual-1", "BUY", -0.05)
    await wait_for(lambda: agent.counters["foreign_orders"] == 2, 5, "the other hand's order seen on the user stream")
    said = [r for r in caplog.records if getattr(r, "event", None) == "foreign_order"]
    # said once (a grid bot beside the agent would flood the log), each counted
    assert len(said) == 1 and said[0].levelno == logging.WARNING and "'desk-manual-0'" in said[0].getMessage()

    async def counted() -> bool:
        st = await exchange.state()
        bids = sum(Decimal(o["origQty"]) - Decimal(o["executedQty"]) for o in st["open_orders"] if o["side"] == "BUY")
        return Decimal(str(agent.exposure()["pending_buy"])) == bids and bids >= Decimal("0.050")

    await wait_for(counted, 10, "its 0.050 counted in the agent's pending bids as at the exchange")
    assert {"desk-manual-0", "desk-manual-1"} <= {o["clientOrderId"] for o in (await exchange.state())["open_orders"]}
    await agent.stop()
    assert (await exchange.state())["open_orders"] == []


async def hand_order(exchange: Exchange, cid: str, side: str, pct: float) -> None:
    """A plain GTC limit of 0.050 placed by another hand (the desk, another tool), ``pct`` off the mark."""
    mid = Decimal((await exchange.state())["markets"][SYMBOL]["mark_price"])
    async with SimClient.for_sim(exchange.sim) as c:
        placed = await c.signed("POST", "/fapi/v1/order", {
            "symbol": SYMBOL, "side": side, "type": "LIMIT", "timeInForce": "GTC", "quantity": "0.050",
            "price": f"{mid * Decimal(str(1 + pct)):.2f}", "newClientOrderId": cid})
        assert placed.status == 200, placed.json


async def test_another_hands_orders_outlive_the_agents_halt_a_stale_pull_and_a_user_stream_outage(
        make_agent, exchange):
    """The desk halts the agent to work the symbol by hand, and another tool rests orders beside it:
    their orders are counted and left alone by the halted quote cycles, a stale book's pull and a user
    stream outage's REST fallback (each cancelled every order of the symbol, the desk's again and
    again while halted); only a kill's or a stop's symbol-wide cancel-all takes them."""
    runtime = FAST.model_copy(update={"market_stale_sec": 1.0, "user_stream_grace_sec": 0.3,
                                      "reconnect_backoff_initial_sec": 4.0})   # the fallback's book seen before it
    agent = await make_agent(runtime=runtime)
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))

    async def resting_ids() -> set[str]:
        return {o["clientOrderId"] for o in (await exchange.state())["open_orders"]}

    async def only_hands_rest(hands: set[str]) -> bool:
        return await resting_ids() == hands

    await agent.halt("the desk trades it by hand")
    await hand_order(exchange, "desk-hand-1", "BUY", -0.05)
    cycles = agent.core.cycles
    await wait_for(lambda: agent.core.cycles >= cycles + 5, 10, "five halted quote cycles")
    assert await resting_ids() == {"desk-hand-1"}
    await agent.resume()
    await wait_for(lambda: resting(agent, exchange), 10, "quoting again", explain=lambda: describe(agent, exchange))
    await hand_order(exchange, "tool-hand-2", "SELL", 0.05)
    hands = {"desk-hand-1", "tool-hand-2"}
    await wait_for(lambda: agent.counters["foreign_orders"] == 2, 5, "the tool's order seen on the user stream")
    await exchange.post("/sim/market/freeze", {"frozen": True, "symbol": SYMBOL})
    await wait_for(lambda: only_hands_rest(hands), 10, "the agent's quotes pulled on a stale book, the hands' left")
    assert "market_stale" in agent.status()["blocks"]
    await exchange.post("/sim/market/freeze", {"frozen": False, "symbol": SYMBOL})
    await wait_for(lambda: resting(agent, exchange), 10, "quoting again once fresh", explain=lambda: describe(agent, exchange))
    await exchange.post("/sim/fault/drop", {"target": "user", "account": "main"})
    await wait_for(lambda: agent.counters["rest_fallback_cancels"] == 1, 5, "the REST fallback of the outage")
    await wait_for(lambda: only_hands_rest(hands), 5, "the agent's orders cancelled through REST, the hands' left")
    await wait_for(lambda: agent.status()["state"] == "quoting", 15, "quoting again after the reconnect")
    assert hands <= await resting_ids()
    await agent.stop()
    assert await resting_ids() == set()   # the stop's symbol-wide cancel-all (documented) takes them


async def test_another_hands_conditional_orders_count_in_the_worst_case_until_they_reach_the_book(
        make_agent, exchange):
    """Binance keeps STOP and TAKE_PROFIT orders in its Algo Service, outside the book: openOrders does
    not list them. Another hand's stop on the symbol counts in the worst case (read at the start from
    openAlgoOrders, then from ALGO_UPDATE frames), so the ladder's bids make room for it; once it
    triggers, its fill is in the position and the position plus the bids still fit the cap at the
    exchange. A stop leaves the other hand's conditional orders, as the exchange's cancel-all does."""
    params = SymbolParams(base=BaseParams(base_size=0.05))   # big layers: the stop takes most of the room
    cap = Decimal(str(params.worst_cap))
    mid = Decimal((await exchange.state())["markets"][SYMBOL]["mark_price"])
    stop_qty = (cap * Decimal("0.6")).quantize(Decimal("0.001"))

    async def stop_order(side: str, qty: Decimal, pct: float) -> int:
        async with SimClient.for_sim(exchange.sim) as c:
            placed = await c.signed("POST", "/fapi/v1/algoOrder", {
                "algoType": "CONDITIONAL", "symbol": SYMBOL, "side": side, "type": "STOP_MARKET",
                "quantity": str(qty), "triggerPrice": f"{mid * Decimal(str(1 + pct)):.2f}"})
            assert placed.status == 200, placed.json
            return int(placed.json["algoId"])

    def algos(st: dict, side: str) -> Decimal:
        return sum((Decimal(a["quantity"]) for a in st["open_algo_orders"] if a["side"] == side), Decimal(0))

    buy_stop = await stop_order("BUY", stop_qty, 0.004)   # waiting before the start: listed by the snapshot
    agent = await make_agent(params)
    await exchange.post("/sim/market/freeze", {"frozen": True, "symbol": SYMBOL})
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    assert agent.counters["foreign_orders"] == 1
    await stop_order("SELL", Decimal("0.020"), -0.05)   # placed while it quotes: its ALGO_UPDATE frame

    async def counted() -> bool:
        st = await exchange.state()
        if not await in_sync(agent, exchange):
            return False
        ex = agent.exposure()
        return Decimal(str(ex["worst_long"])) == worst_long(st) + algos(st, "BUY") \
            and Decimal(str(ex["worst_short"])) == worst_short(st) - algos(st, "SELL")

    await wait_for(counted, 10, "both stops counted as the exchange holds them", explain=lambda: describe(agent, exchange))
    st = await exchange.state()
    assert worst_long(st) + algos(st, "BUY") <= cap, "the bids did not make room for the stop"
    assert agent.counters["foreign_orders"] == 2 and agent.exposure()["conditional_orders"] == 2
    await exchange.post("/sim/market/freeze", {"frozen": False, "symbol": SYMBOL})   # a frozen market triggers none
    await exchange.post("/sim/market/jump", {"symbol": SYMBOL, "pct": 0.6})   # the BUY stop triggers: bought

    async def triggered() -> bool:
        return algos(await exchange.state(), "BUY") == 0 and await in_sync(agent, exchange)

    await wait_for(triggered, 10, "sync after the trigger", explain=lambda: describe(agent, exchange))
    await exchange.post("/sim/market/freeze", {"frozen": True, "symbol": SYMBOL})
    await wait_for(lambda: in_sync(agent, exchange), 10, "sync, frozen", explain=lambda: describe(agent, exchange))
    st = await exchange.state()
    assert not agent.core.store.ledger.algos.open.keys() - {a["algoId"] for a in st["open_algo_orders"]}
    async with SimClient.for_sim(exchange.sim) as c:
        done = (await c.signed("GET", "/fapi/v1/algoOrder", {"algoId": str(buy_stop)})).json
    assert done["algoStatus"] == "FINISHED" and Decimal(done["actualQty"]) == stop_qty, done
    assert worst_long(st) <= cap and Decimal(str(agent.exposure()["worst_long"])) == worst_long(st)
    await agent.stop()
    st = await exchange.state()
    assert st["open_orders"] == [] and algos(st, "SELL") == Decimal("0.020")


async def test_a_conditional_order_whose_frame_was_lost_is_counted_from_the_exchange(make_agent, exchange):
    """Its ALGO_UPDATE arrives as garbage (logged, counted, skipped): the resync the skipped frame owes
    (or the reconciliation's listing, whichever reads first) counts it from openAlgoOrders; once
    cancelled it stops counting."""
    agent = await make_agent(runtime=FAST.model_copy(update={"reconcile_interval_sec": 0.2, "reconcile_position_every": 2}))
    await exchange.post("/sim/market/freeze", {"frozen": True, "symbol": SYMBOL})
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    await exchange.post("/sim/fault/frame", {"stream": "user", "mode": "garbage", "event": "ALGO_UPDATE", "count": 1})
    mid = Decimal((await exchange.state())["markets"][SYMBOL]["mark_price"])
    async with SimClient.for_sim(exchange.sim) as c:
        placed = await c.signed("POST", "/fapi/v1/algoOrder", {
            "algoType": "CONDITIONAL", "symbol": SYMBOL, "side": "SELL", "type": "STOP_MARKET", "quantity": "0.030",
            "triggerPrice": f"{mid * Decimal('0.9'):.2f}"})
        assert placed.status == 200, placed.json
    algo_id = int(placed.json["algoId"])
    await wait_for(lambda: algo_id in agent.core.store.ledger.algos.open, 10, "counted from the exchange's listing")
    assert agent.status()["counters"]["malformed_frames"] == 1
    assert Decimal(str(agent.exposure()["worst_short"])) <= worst_short(await exchange.state()) - Decimal("0.030")
    async with SimClient.for_sim(exchange.sim) as c:
        assert (await c.signed("DELETE", "/fapi/v1/algoOrder", {"algoId": str(algo_id)})).status == 200
    await wait_for(lambda: not agent.core.store.ledger.algos.open, 10, "its CANCELED frame: no longer counted")


async def test_a_position_change_whose_frame_was_skipped_is_read_at_once_not_at_the_reconciliation(
        make_agent, exchange):
    """Another hand's position change, its ACCOUNT_UPDATE cut on the way (skipped as malformed): the
    skipped frame owes a resync, which reads the position at once; the reconciliation's position check
    (here every 60 s) is not waited for, while the ladder is sized against the old position."""
    slow_check = FAST.model_copy(update={"reconcile_interval_sec": 30.0, "reconcile_position_every": 2})
    agent = await make_agent(runtime=slow_check)
    await exchange.post("/sim/market/freeze", {"frozen": True, "symbol": SYMBOL})
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    resyncs = agent.counters["resyncs"]
    await exchange.post("/sim/fault/frame", {"stream": "user", "mode": "truncate", "event": "ACCOUNT_UPDATE",
                                             "count": 1})
    await exchange.post("/sim/position", {"account": "main", "symbol": SYMBOL, "amount": "-0.150"})
    await wait_for(lambda: agent.core.store.position_steps == -150, 10, "the position read again",
                   explain=lambda: describe(agent, exchange))
    assert agent.status()["counters"]["malformed_frames"] == 1 and agent.counters["resyncs"] > resyncs


async def test_a_user_event_that_cannot_be_applied_is_counted_said_and_repaired_by_a_resync(
        make_agent, exchange, caplog, monkeypatch):
    """The parser refuses what it can tell is wrong; an event it passes that the store still cannot take
    (here the core made to fail on the first fill, the one way to reach it with a parser that holds)
    must not end the user stream's loop, which would pull every quote and start over: it is counted
    with the malformed frames, said, and the store is read again from the exchange."""
    caplog.set_level(logging.INFO, logger="mmfleet.agent")
    agent = await make_agent()
    await exchange.post("/sim/market/freeze", {"frozen": True, "symbol": SYMBOL})
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    core, resyncs, failed = agent.core, agent.counters["resyncs"], []
    applied = core.on_event

    def fails_once(ev, now_ms):
        if not failed and getattr(ev, "exec_type", None) == "TRADE":
            failed.append(ev)
            raise ArithmeticError("a value the store cannot take")
        return applied(ev, now_ms)

    monkeypatch.setattr(core, "on_event", fails_once)
    await exchange.post("/sim/market/jump", {"symbol": SYMBOL, "pct": -0.3})   # bids fill
    await wait_for(lambda: agent.counters["resyncs"] > resyncs, 10, "a resync after the event that failed")
    await wait_for(lambda: in_sync(agent, exchange), 10, "the store the exchange's truth again",
                   explain=lambda: describe(agent, exchange))
    assert failed and agent.status()["counters"]["malformed_frames"] == 1
    said = [r for r in caplog.records if getattr(r, "event", None) == "user_event_failed"]
    assert len(said) == 1 and said[0].levelno == logging.ERROR and "ArithmeticError" in said[0].getMessage()
    assert not [r for r in caplog.records if getattr(r, "event", None) == "task_failed"]
    assert agent.status()["state"] == "quoting"


async def test_halt_resume_flatten_calls(make_agent, exchange, tmp_path):
    await exchange.post("/sim/position", {"account": "main", "symbol": SYMBOL, "amount": "-0.040"})
    agent = await make_agent()
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    halted = await agent.halt("test")
    assert halted["open_orders"] == 0
    assert (await exchange.state())["open_orders"] == []
    assert agent.status()["state"] == "halted"
    assert (tmp_path / "state" / "t.ETHUSDC.kill").read_text().strip() == "halted"  # durable
    resumed = await agent.resume()
    assert resumed["kill_state"] == "running"
    await wait_for(lambda: resting(agent, exchange), 10, "quoting after resume", explain=lambda: describe(agent, exchange))
    flat = await agent.flatten("test")
    assert flat["open_orders"] == 0 and flat["position"] == 0.0
    st = await exchange.state()
    assert Decimal(st["positions"][SYMBOL]["amount"]) == 0 and st["open_orders"] == []
    exposure = agent.exposure()
    assert exposure["kill_state"] == "flattening" and exposure["position"] == 0.0


async def test_a_halted_symbol_flattened_between_two_halted_grants_ends_halted(make_agent, exchange):
    """A halted symbol is flattened by a direct command; once flat, its owner writes it halted (the
    controller does so after every flatten done). The agent's grants before and after both say halted:
    it takes the halt all the same, and shows what the owner keeps (it read flattening for good, its
    status and metrics against the kill state every other view showed)."""
    await exchange.post("/sim/position", {"account": "main", "symbol": SYMBOL, "amount": "0.040"})
    agent = await make_agent(renew_interval_s=600.0)   # no renewal but the test's
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    agent.ownership.record_kill_state("halted")
    await agent.timers.renew_once()
    assert agent.status()["kill_state"] == "halted"
    out = await agent.flatten("drill")
    assert out["position"] == 0.0 and agent.status()["kill_state"] == "flattening", out
    agent.ownership.record_kill_state("halted")   # the owner's write once the flatten is done
    await agent.timers.renew_once()
    assert agent.status()["kill_state"] == "halted" and agent.exposure()["kill_state"] == "halted"
    assert Decimal((await exchange.state())["positions"][SYMBOL]["amount"]) == 0


async def test_a_resume_while_a_flatten_waits_on_the_exchange_ends_the_flatten(make_agent, exchange):
    """A flatten halts, waits for the exchange to list the book empty, then closes the position. A resume
    that comes during the wait is the later command: the flatten answers superseded and sends no close,
    and the agent quotes again (it once carried on and left the symbol flattening over the resume)."""
    await exchange.post("/sim/position", {"account": "main", "symbol": SYMBOL, "amount": "0.040"})
    agent = await make_agent()
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    await exchange.post("/sim/fault/latency", {"ms": 1500, "path": "/fapi/v1/openOrders"})
    flatten = asyncio.ensure_future(agent.flatten("drill"))
    await wait_for(lambda: agent.status()["state"] == "halted", 5, "the flatten's halt")
    resumed = await agent.resume()
    assert resumed["kill_state"] == "running"
    await exchange.post("/sim/fault/clear", {})
    out = await asyncio.wait_for(flatten, 20)
    assert out == {"outcome": "superseded", "open_orders": None, "position": 0.04}, out   # nothing closed
    assert agent.status()["kill_state"] == "running" and agent.exposure()["kill_state"] == "running"
    await wait_for(lambda: resting(agent, exchange), 10, "quoting after the resume", explain=lambda: describe(agent, exchange))
    assert [o for o in await exchange.all_orders() if o["type"] == "MARKET"] == []   # no close was sent


async def test_a_resume_after_a_flattens_close_filled_answers_the_position_flat(make_agent, exchange):
    """A flatten whose close filled, resumed before its last read of the position: the answer says
    superseded, with the position the books hold then (flat). It said superseded alone, and a desk read a
    flatten that had closed the position as one that had not."""
    await exchange.post("/sim/position", {"account": "main", "symbol": SYMBOL, "amount": "0.040"})
    agent = await make_agent()
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    await exchange.post("/sim/fault/latency", {"ms": 1500, "path": "/fapi/v3/positionRisk"})   # each read 1.5 s
    flatten = asyncio.ensure_future(agent.flatten("drill"))

    async def closed() -> bool:
        return Decimal((await exchange.state())["positions"][SYMBOL]["amount"]) == 0

    await wait_for(closed, 10, "the flatten's close filled")
    await wait_for(lambda: agent.core.store.position == 0, 5, "the close's fill in the books")
    await agent.resume()   # while the flatten reads the position again
    await exchange.post("/sim/fault/clear", {})
    out = await asyncio.wait_for(flatten, 20)
    assert out == {"outcome": "superseded", "open_orders": None, "position": 0.0}, out


async def test_a_recorded_halt_survives_a_restart(make_agent, exchange, tmp_path):
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    (state_dir / "t.ETHUSDC.kill").write_text("halted\n")
    agent = await make_agent()
    assert agent.status()["kill_state"] == "halted"
    await wait_for(lambda: agent.core.cycles >= 5, 10, "a few quote cycles")
    assert (await exchange.state())["open_orders"] == []  # halted: nothing quoted
    await agent.resume()
    await wait_for(lambda: resting(agent, exchange), 10, "quoting after resume", explain=lambda: describe(agent, exchange))
    assert not (state_dir / "t.ETHUSDC.kill").exists()


async def test_params_apply_live_without_restart(make_agent, exchange):
    agent = await make_agent()
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    epoch = agent.status()["epoch"]
    narrow = SymbolParams.model_validate({"grid": {"max_layers": 2}})
    await agent.apply_params(narrow)

    async def two_layers() -> bool:
        st = await exchange.state()
        sides = [o["side"] for o in st["open_orders"]]
        return sides.count("BUY") == 2 and sides.count("SELL") == 2 and await in_sync(agent, exchange)

    await wait_for(two_layers, 10, "two layers a side", explain=lambda: describe(agent, exchange))
    assert agent.status()["epoch"] == epoch


class ControlledLease:
    """A lease the test controls (the fleet's LeaseOwnership talks to the controller; this one to the test)."""

    renew_interval_s = 0.2

    def __init__(self, ttl: float = 2.0) -> None:
        self.ttl = ttl
        self.lost = False
        self.hang = asyncio.Event()
        self.hang.set()
        self.released = False

    def _grant(self) -> Grant:
        return Grant(epoch=1, lease_ttl_s=self.ttl, kill_state="running")

    async def acquire(self) -> Grant:
        return self._grant()

    async def renew(self) -> Grant:
        if self.lost:
            raise OwnershipLost("revoked by the test")
        await self.hang.wait()
        return self._grant()

    async def release(self) -> None:
        self.released = True


# a short dead-man countdown: these tests wait for the exchange to cancel on its own
LEASED = FAST.model_copy(update={"deadman_heartbeat_sec": 0.5, "deadman_countdown_ms": 2_500})


@contextlib.asynccontextmanager
async def quoting_on_lease(sim: Any, exchange: Exchange, lease: "ControlledLease", **runtime: Any) -> Any:
    """An agent on ``lease`` with these runtime settings over ``LEASED``'s, quoting with a ladder
    resting; stopped after."""
    _, key, secret = sim.accounts[0]
    runtime = LEASED.model_copy(update=runtime)
    agent = SymbolAgent(
        fleet_name="t", symbol=SYMBOL, params=SymbolParams(), runtime=runtime,
        endpoints=ExchangeEndpoints(sim.rest_url, sim.ws_url, sim.ws_url),
        credentials=Credentials(key, secret), ownership=lease,
    )
    task = asyncio.create_task(agent.run())
    try:
        await wait_for(lambda: agent.status()["state"] == "quoting", 10, "quoting")
        await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
        yield agent
    finally:
        await agent.stop()
        await asyncio.wait_for(task, 25)


@pytest.fixture
async def leased_agent(sim):
    made: list[tuple[SymbolAgent, asyncio.Task]] = []

    async def start(lease: ControlledLease) -> SymbolAgent:
        _, key, secret = sim.accounts[0]
        agent = SymbolAgent(
            fleet_name="t", symbol=SYMBOL, params=SymbolParams(), runtime=LEASED,
            endpoints=ExchangeEndpoints(sim.rest_url, sim.ws_url, sim.ws_url),
            credentials=Credentials(key, secret), ownership=lease,
        )
        made.append((agent, asyncio.create_task(agent.run())))
        await wait_for(lambda: agent.status()["state"] == "quoting", 10, "quoting")
        return agent

    yield start
    for agent, task in made:
        await agent.stop()
        await asyncio.wait_for(task, 25)


async def orders_after(exchange: Exchange, t_ms: int) -> list[dict]:
    return [o for o in await exchange.all_orders() if o["time"] > t_ms]


async def test_ownership_lost_stops_quoting_and_the_dead_man_switch_cancels(leased_agent, exchange):
    lease = ControlledLease()
    agent = await leased_agent(lease)
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    lease.lost = True
    await wait_for(lambda: agent.status()["state"] == "halted", 5, "halted on a lost lease")
    lost_at = (await exchange.state())["time"]
    await exchange.post("/sim/market/jump", {"symbol": SYMBOL, "pct": 0.5})  # would make a live agent requote

    async def all_cancelled() -> bool:
        return not (await exchange.state())["open_orders"]

    await wait_for(all_cancelled, LEASED.deadman_countdown_ms / 1000 + 3, "the exchange's countdown cancelling")
    assert await orders_after(exchange, lost_at + 50) == []  # nothing new once the lease was gone
    assert "lease" in agent.status()["blocks"]
    assert agent.ownership_lost and agent.status()["ownership_lost"]


async def test_lapsed_lease_pulls_out_then_resumes_when_renewed(leased_agent, exchange):
    lease = ControlledLease(ttl=2.0)
    agent = await leased_agent(lease)
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    lease.hang.clear()  # the controller stops answering
    await wait_for(lambda: "lease" in agent.status()["blocks"], 5, "quoting blocked when the lease lapses")
    lapsed_at = (await exchange.state())["time"]

    async def all_cancelled() -> bool:
        return not (await exchange.state())["open_orders"]

    await wait_for(all_cancelled, LEASED.deadman_countdown_ms / 1000 + 3, "the exchange's countdown cancelling")
    assert await orders_after(exchange, lapsed_at + 50) == []
    lease.hang.set()
    await wait_for(lambda: resting(agent, exchange), 10, "quoting again once renewed", explain=lambda: describe(agent, exchange))


async def test_a_lease_lapsed_past_lease_pull_sec_pulls_this_epochs_quotes_and_spares_a_successors(sim, exchange):
    """The controller (or the GCS) unreachable: after ``lease_pull_sec`` the agent cancels its own epoch's
    quotes itself (the dead-man countdown, 60 s here, has not fired), and a successor's order stays."""
    lease = ControlledLease(ttl=2.0)
    async with quoting_on_lease(sim, exchange, lease, deadman_countdown_ms=60_000, lease_pull_sec=1.0) as agent:
        ours = {o["clientOrderId"] for o in (await exchange.state())["open_orders"]}
        lease.hang.clear()  # the controller stops answering
        await wait_for(lambda: "lease" in agent.status()["blocks"], 5, "quoting blocked when the lease lapses")
        successor_id = await successor_takes_over(agent, exchange)

        async def only_the_successors() -> bool:
            return [o["clientOrderId"] for o in (await exchange.state())["open_orders"]] == [successor_id]

        await wait_for(only_the_successors, 10, "this epoch's quotes pulled, the successor's order kept")
        assert agent.counters["lease_pulls"] == 1 and ours
        assert "lease" in agent.status()["blocks"]
        lease.hang.set()
        await wait_for(lambda: resting(agent, exchange), 10, "quoting again once renewed",
                       explain=lambda: describe(agent, exchange))


async def test_while_a_lease_lapses_the_quotes_the_ladder_would_move_are_cancelled_and_none_placed(sim, exchange):
    """A lapsed lease holds quoting until it is renewed or ``lease_pull_sec`` (60 s here) pulls the quotes;
    meanwhile the market moves 2 %: the quotes the ladder would re-price (here the bids, left behind) are
    cancelled at once, this epoch's own (nobody may re-price them, and a moving market picks such quotes
    off: a hostile run's head freeze saw fills on quotes left for the 10 s), nothing is placed or amended,
    and the quotes are not pulled whole."""
    lease = ControlledLease(ttl=2.0)
    async with quoting_on_lease(sim, exchange, lease, deadman_countdown_ms=60_000, lease_pull_sec=60.0) as agent:
        await exchange.post("/sim/market/freeze", {"symbol": SYMBOL, "mode": "price"})
        await wait_for(lambda: resting(agent, exchange), 10, "ladder resting on the held price",
                       explain=lambda: describe(agent, exchange))
        before = {o["clientOrderId"]: o for o in (await exchange.state())["open_orders"]}
        lease.hang.clear()  # the controller stops answering
        await wait_for(lambda: "lease" in agent.status()["blocks"], 5, "quoting blocked when the lease lapses")
        lapsed_at = (await exchange.state())["time"]
        seq = agent.core.ids.seq
        assert set(before) == {o["clientOrderId"] for o in (await exchange.state())["open_orders"]}
        await exchange.post("/sim/market/jump", {"symbol": SYMBOL, "pct": 2.0})
        bids = {cid for cid, o in before.items() if o["side"] == "BUY"}

        async def bids_gone() -> bool:
            return not bids & {o["clientOrderId"] for o in (await exchange.state())["open_orders"]}

        await wait_for(bids_gone, 10, "the bids the ladder would move up cancelled",
                       explain=lambda: describe(agent, exchange))
        statuses = {o["clientOrderId"]: o["status"] for o in await exchange.all_orders()}
        assert {statuses[cid] for cid in bids} == {"CANCELED"}
        assert await orders_after(exchange, lapsed_at + 50) == []   # nothing placed
        resting_now = (await exchange.state())["open_orders"]
        assert all(o["price"] == before[o["clientOrderId"]]["price"] for o in resting_now)   # nor amended
        assert agent.core.ids.seq == seq   # no client ids spent on what was not sent
        assert agent.counters["lease_pulls"] == 0 and "lease" in agent.status()["blocks"]
        lease.hang.set()
        await wait_for(lambda: resting(agent, exchange), 10, "quoting again once renewed",
                       explain=lambda: describe(agent, exchange))


async def successor_takes_over(agent: SymbolAgent, exchange: Exchange) -> str:
    """An epoch-2 owner arms its own dead-man switch and rests one order far from the touch."""
    successor_id = "mm-ETHUSDC-e2-1"
    price = f"{agent.core.store.mid_price() * 0.9:.2f}"
    async with SimClient.for_sim(exchange.sim) as c:
        armed = await c.signed("POST", "/fapi/v1/countdownCancelAll", {"symbol": SYMBOL, "countdownTime": 60_000})
        assert armed.status == 200, armed.json
        placed = await c.signed("POST", "/fapi/v1/order", {
            "symbol": SYMBOL, "side": "BUY", "type": "LIMIT", "timeInForce": "GTX", "quantity": "0.010",
            "price": price, "newClientOrderId": successor_id,
        })
        assert placed.status == 200, placed.json
    return successor_id


async def test_a_stop_after_the_lease_lapsed_never_touches_a_successors_orders(leased_agent, exchange):
    lease = ControlledLease(ttl=2.0)
    agent = await leased_agent(lease)
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    lease.hang.clear()  # the controller stops answering: this agent is now a zombie
    await wait_for(lambda: "lease" in agent.status()["blocks"], 5, "quoting blocked when the lease lapses")
    # The successor (epoch 2) arms its own dead-man switch and rests an order on the symbol.
    successor_id = await successor_takes_over(agent, exchange)
    await agent.stop()  # the zombie's cleanup: fenced to its own orders
    st = await exchange.state()
    assert [o["clientOrderId"] for o in st["open_orders"]] == [successor_id]


async def test_rate_limit_answer_is_obeyed_and_recovered(make_agent, exchange):
    agent = await make_agent()
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    for path in ("/fapi/v1/order", "/fapi/v1/batchOrders"):
        await exchange.post("/sim/fault/rest", {"mode": "429", "count": 1, "path": path})
    await exchange.post("/sim/market/jump", {"symbol": SYMBOL, "pct": 0.4})
    await wait_for(lambda: agent.budget.rate_limited >= 1, 10, "a 429 seen by the client")
    await wait_for(lambda: not exchange.sim.faults, 10, "both 429s consumed")
    await wait_for(lambda: resting(agent, exchange), 10, "quoting again after Retry-After", explain=lambda: describe(agent, exchange))
    st = await exchange.state()
    assert set(truth_orders(st)) == set(agent.core.store.orders)
    assert agent.status()["state"] == "quoting"


async def test_planned_stream_reconnects_leave_no_gap(make_agent, exchange):
    agent = await make_agent(runtime=FAST.model_copy(update={"stream_max_lifetime_sec": 1.0}))
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    first_user = agent.user.stream
    await wait_for(lambda: agent.user.stream is not first_user and agent.user.stream is not None, 5, "a planned user-stream swap")
    await exchange.post("/sim/market/jump", {"symbol": SYMBOL, "pct": -0.2})  # fills across the swaps
    await wait_for(lambda: in_sync(agent, exchange), 10, "in sync across swaps", explain=lambda: describe(agent, exchange))
    assert agent.counters["resyncs"] == 0 and agent.counters["user_stream_reconnects"] == 0
    assert metric(agent, "mm_ws_connected") == 1.0
    assert agent.status()["state"] == "quoting"


async def test_clock_skew_is_relearned_on_minus_1021(make_agent, exchange):
    agent = await make_agent()
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    agent.client.time_offset_ms -= 120_000  # our clock now looks two minutes late to the exchange
    await exchange.post("/sim/market/jump", {"symbol": SYMBOL, "pct": 0.3})
    await wait_for(lambda: abs(agent.client.time_offset_ms) < 5_000, 10, "the offset relearned from /fapi/v1/time")
    await wait_for(lambda: resting(agent, exchange), 10, "quoting on", explain=lambda: describe(agent, exchange))
    assert agent.status()["state"] == "quoting"


@pytest.mark.parametrize("route", [None, "market", "public"])
async def test_market_stream_drop_pulls_quotes_and_reconnects(make_agent, exchange, route):
    """Both market connections, or one route alone (the book's or the marks'): the stream ends, says
    which route, and a new one comes."""
    agent = await make_agent()
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    first = agent.market.stream
    dropped = await exchange.post("/sim/fault/drop", {"target": "market", "route": route})
    assert dropped["dropped"] == (2 if route is None else 1)
    await wait_for(lambda: agent.counters["market_stream_reconnects"] >= 1, 5, "the loss noticed")
    await wait_for(lambda: agent.market.stream is not None and agent.market.stream is not first, 10, "a new market stream")
    await wait_for(lambda: resting(agent, exchange), 10, "quoting again", explain=lambda: describe(agent, exchange))
    assert metric(agent, "mm_ws_connected") == 1.0  # the user stream was never touched
    if route is not None:
        assert first.close_reason.startswith(f"/{route}/"), first.close_reason


async def test_agents_sharing_an_account_keep_to_their_own_symbol(make_agent, exchange):
    eth = await make_agent(symbol="ETHUSDC")
    btc = await make_agent(symbol="BTCUSDT")
    for agent in (eth, btc):
        await wait_for(lambda: resting(agent, exchange), 10, f"{agent.symbol} resting", explain=lambda: describe(agent, exchange))
    assert all(o.client_order_id.startswith("mm-ETHUSDC-") for o in eth.core.store.orders.values())
    assert all(o.client_order_id.startswith("mm-BTCUSDT-") for o in btc.core.store.orders.values())
    await eth.stop()  # cancels ETH only, and leaves the account's one listenKey alive for BTC
    assert (await exchange.state("ETHUSDC"))["open_orders"] == []
    st = await exchange.state("BTCUSDT")
    assert st["open_orders"] and st["listen_key_active"]
    await exchange.post("/sim/market/jump", {"symbol": "BTCUSDT", "pct": -0.3})  # BTC fills reach the BTC agent
    await wait_for(lambda: in_sync(btc, exchange), 10, "BTC in sync", explain=lambda: describe(btc, exchange))
    assert Decimal((await exchange.state("BTCUSDT"))["positions"]["BTCUSDT"]["amount"]) > 0
    assert btc.status()["user_stream_connected"] and btc.counters["user_stream_reconnects"] == 0


async def test_start_is_retried_until_the_exchange_answers(sim_factory, tmp_path):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    key, secret = "k" * 64, "s" * 64
    url = f"127.0.0.1:{port}"
    agent = SymbolAgent(
        fleet_name="t", symbol=SYMBOL, params=SymbolParams(), runtime=FAST,
        endpoints=ExchangeEndpoints(f"http://{url}", f"ws://{url}", f"ws://{url}"),
        credentials=Credentials(key, secret), ownership=LockFileOwnership(tmp_path, "t", SYMBOL),
    )
    task = asyncio.create_task(agent.run())
    try:
        await wait_for(lambda: agent.counters["start_attempts"] >= 2, 10, "a second start attempt")
        assert agent.status()["state"] == "starting"
        await sim_factory(port=port, api_key=key, api_secret=secret)  # the exchange comes up
        await wait_for(lambda: agent.status()["state"] == "quoting", 15, "quoting once the exchange answers")
    finally:
        await agent.stop()
        await asyncio.wait_for(task, 25)


async def test_a_long_silent_market_stream_is_replaced(make_agent, exchange):
    agent = await make_agent(runtime=FAST.model_copy(update={"market_stale_sec": 1.0}))
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    first = agent.market.stream
    await exchange.post("/sim/market/freeze", {"frozen": True, "symbol": SYMBOL})  # silence, connection open
    await wait_for(lambda: agent.market.stream is not first and agent.market.stream is not None, 10, "a fresh market stream")
    second = agent.market.stream
    await exchange.post("/sim/market/freeze", {"frozen": False, "symbol": SYMBOL})
    await wait_for(lambda: resting(agent, exchange), 10, "quoting once books flow", explain=lambda: describe(agent, exchange))
    assert agent.market.stream is second  # one replacement per silent spell, not a reconnect storm


async def test_a_halt_asked_while_starting_holds_once_started(sim, exchange, tmp_path):
    _, key, secret = sim.accounts[0]
    agent = SymbolAgent(
        fleet_name="t", symbol=SYMBOL, params=SymbolParams(), runtime=FAST,
        endpoints=ExchangeEndpoints(sim.rest_url, sim.ws_url, sim.ws_url),
        credentials=Credentials(key, secret), ownership=ControlledLease(),  # its grant says "running"
    )
    halted = await agent.halt("before start")  # e.g. the controller's kill arriving early
    assert halted["open_orders"] == 0
    task = asyncio.create_task(agent.run())
    try:
        await wait_for(lambda: agent.core is not None and agent.core.cycles >= 5, 10, "a few quote cycles")
        assert agent.status()["state"] == "halted"
        assert (await exchange.state())["open_orders"] == []
    finally:
        await agent.stop()
        await asyncio.wait_for(task, 25)


async def test_rest_fallback_after_the_lease_lapsed_never_touches_a_successors_orders(sim, exchange):
    # A zombie (lease lapsed, controller silent) whose user stream then stays down past the grace:
    # its REST fallback must cancel only its own orders, not the symbol's (a successor's among them).
    lease = ControlledLease(ttl=2.0)
    async with quoting_on_lease(sim, exchange, lease, user_stream_grace_sec=0.3,
                                reconnect_backoff_initial_sec=3.0) as agent:
        lease.hang.clear()
        await wait_for(lambda: "lease" in agent.status()["blocks"], 5, "quoting blocked when the lease lapses")
        successor_id = await successor_takes_over(agent, exchange)
        await exchange.post("/sim/fault/drop", {"target": "user", "account": "main"})
        await wait_for(lambda: agent.counters["rest_fallback_cancels"] >= 1, 5, "the REST fallback after the grace")
        st = await exchange.state()
        assert [o["clientOrderId"] for o in st["open_orders"]] == [successor_id]


async def test_a_failed_dead_man_disarm_at_stop_is_loud(make_agent, exchange, caplog):
    agent = await make_agent()
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    await exchange.post(
        "/sim/fault/rest", {"mode": "error", "count": 100, "path": "/fapi/v1/countdownCancelAll", "status": 400}
    )
    try:
        summary = await agent.stop()
    finally:
        await exchange.post("/sim/fault/clear", {})
    assert summary["open_orders"] == 0
    failed = [r for r in caplog.records if getattr(r, "event", None) == "deadman_disarm_failed"]
    assert len(failed) == 1 and failed[0].levelno >= logging.WARNING, [r.getMessage() for r in caplog.records]


async def test_pulling_quotes_after_the_lease_lapsed_never_touches_a_successors_orders(leased_agent, exchange):
    # The zombie's store learns the successor's orders from the account's user stream; a quote pull
    # (here: its market stream drops) must cancel only its own.
    lease = ControlledLease(ttl=2.0)
    agent = await leased_agent(lease)
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    lease.hang.clear()
    await wait_for(lambda: "lease" in agent.status()["blocks"], 5, "quoting blocked when the lease lapses")
    successor_id = await successor_takes_over(agent, exchange)
    await wait_for(lambda: successor_id in agent.core.store.orders, 5, "the successor's order seen on the user stream")
    await exchange.post("/sim/fault/drop", {"target": "market"})
    await wait_for(lambda: agent.counters["market_stream_reconnects"] >= 1, 5, "the market stream loss noticed")
    await wait_for(lambda: not agent.sender.inflight, 10, "the pull's cancels answered")
    st = await exchange.state()
    assert successor_id in [o["clientOrderId"] for o in st["open_orders"]]


async def test_a_lapse_shorter_than_the_countdown_resumes_quoting_without_a_rearm(sim, exchange):
    # countdownCancelAll weighs 10: a lease back after a moment, the countdown armed before it still
    # outlasting two heartbeats, is not re-armed; the exchange keeps that countdown.
    lease = ControlledLease(ttl=2.0)
    countdowns = sim.engine.accounts["main"].countdowns
    # the heartbeat's own beat (every 20 s) falls well after the lapse (its 5 s used to fall in it under load)
    async with quoting_on_lease(sim, exchange, lease, deadman_heartbeat_sec=20.0, deadman_countdown_ms=60_000) as agent:
        beats = agent.counters["deadman_heartbeats"]
        lease.hang.clear()
        await wait_for(lambda: "lease" in agent.status()["blocks"], 5, "quoting blocked when the lease lapses")
        lease.hang.set()
        await wait_for(lambda: "lease" not in agent.status()["blocks"], 5, "quoting again once renewed")
        assert agent.counters["deadman_heartbeats"] == beats and SYMBOL in countdowns
        assert 50 < agent.timers.countdown_left() < 60


async def test_the_dead_man_switch_is_rearmed_before_quoting_resumes_after_a_lapse(sim, exchange):
    # A lapse long enough for the exchange's countdown to fire leaves the symbol unarmed; the first
    # order after the renewal must already rest under a fresh countdown (rule 6).
    lease = ControlledLease(ttl=2.0)
    countdowns = sim.engine.accounts["main"].countdowns
    async with quoting_on_lease(sim, exchange, lease, deadman_heartbeat_sec=3.0, deadman_countdown_ms=3_500) as agent:
        lease.hang.clear()
        await wait_for(lambda: "lease" in agent.status()["blocks"], 5, "quoting blocked when the lease lapses")
        await wait_for(lambda: SYMBOL not in countdowns, 10, "the exchange's countdown fired")
        renewed_at = (await exchange.state())["time"]
        lease.hang.set()
        armed_at_first_order: list[bool] = []

        async def first_new_order() -> bool:
            if await orders_after(exchange, renewed_at):
                armed_at_first_order.append(SYMBOL in countdowns)
                return True
            return False

        await wait_for(first_new_order, 10, "quoting again once renewed")
        assert armed_at_first_order == [True]


async def test_a_refused_dead_man_re_arm_is_tried_again_with_a_back_off(sim, exchange):
    # The lease back, the re-arm refused: tried again after 2 s, 4 s ... (10 weight a try), not at every
    # watchdog tick (37 tries in 10 s before); quoting waits for it all the same.
    lease = ControlledLease(ttl=2.0)
    async with quoting_on_lease(sim, exchange, lease, deadman_heartbeat_sec=3.0, deadman_countdown_ms=3_500) as agent:
        lease.hang.clear()
        await wait_for(lambda: "lease" in agent.status()["blocks"], 5, "quoting blocked when the lease lapses")
        await exchange.post("/sim/fault/rest", {"mode": "error", "count": 1000, "path": "/fapi/v1/countdownCancelAll"})
        lease.hang.set()
        await wait_for(lambda: agent.timers.rearm_backoff.attempt >= 3, 20, "three re-arms refused")
        tries = 1000 - (await exchange.state())["faults_pending"][0]["count"]
        assert tries <= 8, tries   # 3 re-arms in about 6 s, and the heartbeat loop's own tries (every 3 s)
        assert "lease" in agent.status()["blocks"]
        await exchange.post("/sim/fault/clear", {})
        await wait_for(lambda: "lease" not in agent.status()["blocks"], 15, "quoting again once re-armed")


async def test_no_order_rests_without_the_dead_man_switch_armed_when_its_heartbeats_fail(make_agent, exchange):
    """The heartbeats refused (a ban, 5xx on countdownCancelAll) past the countdown: the exchange's
    switch fires and cancels the ladder. The agent then stops quoting (``deadman`` blocks) instead of
    placing it again with no switch armed, and quotes again once a heartbeat is taken. Sampled at the
    exchange every 50 ms: open orders only while the countdown is armed."""
    agent = await make_agent(runtime=FAST.model_copy(update={"deadman_countdown_ms": 3_000}))
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    unprotected: list[tuple[int, int]] = []
    fired = False

    async def sample() -> None:
        nonlocal fired
        while True:
            st = await exchange.state()
            armed = st["positions"][SYMBOL]["countdown_deadline_ms"]
            fired = fired or armed in (None, 0)
            if st["open_orders"] and not (armed and armed > st["time"]):
                unprotected.append((st["time"], len(st["open_orders"])))
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    try:
        await exchange.post("/sim/fault/rest", {"mode": "error", "count": 1000, "path": "/fapi/v1/countdownCancelAll"})
        await wait_for(lambda: agent.status()["state"] == "paused" and agent.counters["deadman_expired"] == 1, 10,
                       "the countdown ran out: quoting stopped")
        assert fired or not (await exchange.state())["open_orders"]
        for pct in (0.3, -0.3):   # the market moves: nothing is quoted meanwhile
            await exchange.post("/sim/market/jump", {"symbol": SYMBOL, "pct": pct})
            await asyncio.sleep(0.5)
        assert (await exchange.state())["open_orders"] == []
        await exchange.post("/sim/fault/clear", {})
        await wait_for(lambda: resting(agent, exchange), 15, "quoting again once a heartbeat is taken",
                       explain=lambda: describe(agent, exchange))
    finally:
        sampler.cancel()
        await asyncio.gather(sampler, return_exceptions=True)
    assert not unprotected, unprotected[:5]


async def test_a_key_the_exchange_refuses_while_trading_pauses_quoting_said_once_then_tried_again(
        make_agent, exchange, caplog):
    """The account's key refused -2015 on every request (revoked, the IP taken off its list): the agent
    went on saying "quoting" and sent ~8 refused requests a second, each a WARNING. Now its quoting
    pauses (``key_refused``) for a hold, said once as an ERROR, then the key is tried again: once the
    exchange takes it, the ladder rests again."""
    caplog.set_level(logging.INFO, logger="mmfleet.agent")
    agent = await make_agent()
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    await exchange.post("/sim/market/freeze", {"frozen": True, "symbol": SYMBOL})   # a ladder that holds still
    await exchange.post("/sim/fault/rest", {"mode": "error", "answer": "-2015", "count": 100_000})
    await exchange.post("/sim/market/freeze", {"frozen": False, "symbol": SYMBOL})  # its next amend is refused
    await wait_for(lambda: agent.status()["state"] == "paused" and "key_refused" in agent.status()["blocks"], 10,
                   "quoting paused on the refused key")
    said = [r for r in caplog.records if getattr(r, "event", None) == "key_refused"]
    assert len(said) == 1 and said[0].levelno == logging.ERROR and "-2015" in said[0].getMessage()
    assert agent.counters["key_holds"] == 1
    await exchange.post("/sim/fault/clear", {})
    await wait_for(lambda: agent.status()["state"] == "quoting", 15, "quoting again once the key is taken")
    await wait_for(lambda: resting(agent, exchange), 10, "a whole ladder again", explain=lambda: describe(agent, exchange))
    refused = [r for r in caplog.records if getattr(r, "event", None) in ("order_rejected", "request_failed")
               and "-2015" in r.getMessage()]
    assert refused == [], [r.getMessage() for r in refused]   # said as key_refused, not one WARNING a request


async def test_a_position_beyond_the_cap_by_itself_is_said_as_it_goes_beyond_and_back(make_agent, exchange, caplog):
    """Another hand's adjustment takes the position past the cap: the agent sends only orders that
    reduce it (the guard), and now says so once (it was said nowhere but in the worst-case metrics)."""
    caplog.set_level(logging.INFO, logger="mmfleet.agent")
    agent = await make_agent()
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    cap = agent.params.worst_cap
    await exchange.post("/sim/position", {"account": "main", "symbol": SYMBOL, "amount": str(round(cap * 2, 3))})

    def said(event: str) -> list[logging.LogRecord]:
        return [r for r in caplog.records if getattr(r, "event", None) == event]

    await wait_for(lambda: said("position_beyond_cap"), 10, "the position beyond the cap said")
    assert said("position_beyond_cap")[0].levelno == logging.WARNING and agent.counters["positions_beyond_cap"] == 1

    async def only_sells_rest() -> bool:
        return all(o["side"] == "SELL" for o in (await exchange.state())["open_orders"])

    await wait_for(only_sells_rest, 10, "only orders that reduce the long rest")
    await exchange.post("/sim/position", {"account": "main", "symbol": SYMBOL, "amount": "0"})
    await wait_for(lambda: said("position_within_cap"), 10, "back within the cap, said")
    assert len(said("position_beyond_cap")) == 1


async def test_a_tick_the_exchange_coarsens_stops_the_agent_to_start_again_on_it(make_agent, exchange, caplog):
    """The exchange coarsens ETHUSDC's tick (0.01 -> 0.05; Binance announces such changes): every amend
    and place off the new grid was refused -4014 for good, the stale ladder resting and filling while
    the agent said "quoting". A filter refusal reads exchangeInfo again; the changed filters stop this
    agent (its orders cancelled), and the one started after it quotes on the new tick."""
    caplog.set_level(logging.INFO, logger="mmfleet.agent")
    agent = await make_agent()
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    await exchange.post("/sim/filters", {"symbol": SYMBOL, "tick_size": "0.05"})
    await wait_for(lambda: agent.stopped, 30, "the agent stopped on the changed filters")
    said = [r for r in caplog.records if getattr(r, "event", None) == "filters_changed"]
    assert len(said) == 1 and said[0].levelno == logging.ERROR and "tick_size 0.01 -> 0.05" in said[0].getMessage()
    assert (await exchange.state())["open_orders"] == []
    again = await make_agent()
    await wait_for(lambda: resting(again, exchange), 15, "the next agent's ladder resting",
                   explain=lambda: describe(again, exchange))
    prices = [Decimal(o["price"]) for o in (await exchange.state())["open_orders"]]
    assert prices and all(p % Decimal("0.05") == 0 for p in prices), prices


async def test_a_minimum_notional_the_exchange_raises_stops_the_agent_to_start_again_on_it(make_agent, exchange, caplog):
    """The exchange raises ETHUSDC's MIN_NOTIONAL above the ladder's smallest layers (Binance announces
    such updates): their amendments were refused -5029 and new ones -4164 at every quote, for good, the
    refusal not read as a change of the filters. Now it reads exchangeInfo again: this agent stops (its
    orders cancelled), and the one started after it quotes every order at the new minimum or above."""
    caplog.set_level(logging.INFO, logger="mmfleet.agent")
    agent = await make_agent()
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    notionals = sorted(Decimal(o["price"]) * Decimal(o["origQty"]) for o in (await exchange.state())["open_orders"])
    raised = ((notionals[0] + notionals[-1]) / 2).to_integral_value()
    assert notionals[0] < raised <= notionals[-1] <= Decimal(str(agent.params.risk.max_order_notional))
    await exchange.post("/sim/filters", {"symbol": SYMBOL, "min_notional": str(raised)})
    await wait_for(lambda: agent.stopped, 30, "the agent stopped on the changed filters")
    said = [r for r in caplog.records if getattr(r, "event", None) == "filters_changed"]
    assert len(said) == 1 and said[0].levelno == logging.ERROR and f"-> {raised}" in said[0].getMessage()
    assert (await exchange.state())["open_orders"] == []
    again = await make_agent()
    await wait_for(lambda: resting(again, exchange), 15, "the next agent's ladder resting",
                   explain=lambda: describe(again, exchange))
    orders = (await exchange.state())["open_orders"]
    assert orders and all(Decimal(o["price"]) * Decimal(o["origQty"]) >= raised for o in orders), orders


async def test_a_filter_the_exchange_changes_with_no_order_refused_is_read_at_the_periodic_check(
        make_agent, exchange, caplog):
    """The exchange lowers ETHUSDC's MIN_NOTIONAL (a raised one, lowered again; the ladder's dropped layers
    came back only at a restart): no order is refused for it, so only the periodic exchangeInfo read
    (``exchange_info_reread_sec``) sees it; the agent stops to start again on it."""
    caplog.set_level(logging.INFO, logger="mmfleet.agent")
    agent = await make_agent(runtime=FAST.model_copy(update={"exchange_info_reread_sec": 1.0}))
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    before = agent.filters.min_notional
    await exchange.post("/sim/filters", {"symbol": SYMBOL, "min_notional": str(before / 5)})
    await wait_for(lambda: agent.stopped, 30, "the agent stopped on the changed filters")
    said = [r for r in caplog.records if getattr(r, "event", None) == "filters_changed"]
    assert len(said) == 1 and f"min_notional {before} -> {before / 5}" in said[0].getMessage(), said
    assert (await exchange.state())["open_orders"] == []


async def test_failing_order_routes_hold_the_quoting_lane_with_a_growing_back_off(make_agent, exchange, caplog):
    """Every order route answers -1001 ("Internal error; unable to process your request. Please try
    again."; HTTP 503) while the market moves: every quote cycle sent its orders again, four a second
    through a hostile run's outage, until the rate budget ran out. Now each failure holds the quoting
    lane 1 s, twice as long at each one after (up to 8 s); cancels go on; quoting resumes once it clears."""
    caplog.set_level(logging.WARNING, logger="fleet.binance.client")
    agent = await make_agent()
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    for method in ("POST", "PUT"):
        for path in ("/fapi/v1/order", "/fapi/v1/batchOrders"):
            await exchange.post("/sim/fault/rest", {"mode": "error", "count": 100_000, "answer": "-1001",
                                                    "path": path, "method": method})

    def holds() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "quoting orders held" in r.getMessage()]

    async def moving() -> bool:   # the market moves, so the ladder wants new orders
        await exchange.post("/sim/market/jump", {"symbol": SYMBOL, "pct": 0.3})
        return any("quoting orders held 8.0s" in r.getMessage() for r in holds())

    await wait_for(moving, 40, "the hold grown to 8 s", interval=0.5)
    said = holds()
    waits = [float(re.search(r"held ([0-9.]+)s", r.getMessage()).group(1)) for r in said]
    assert waits[0] == 1.0 and 2.0 in waits and 4.0 in waits, waits
    first, last = said[0].created, next(r.created for r in said if "held 8.0s" in r.getMessage())
    assert last - first >= 6.9, (last - first, waits)   # 1 + 2 + 4 s held before the fourth failure
    await exchange.post("/sim/fault/clear", {})
    await wait_for(lambda: resting(agent, exchange), 20, "quoting again once the routes answer",
                   explain=lambda: describe(agent, exchange))


@pytest.mark.parametrize("read_fails", [False, True], ids=["read", "first-read-fails"])
async def test_a_stops_flatten_meets_the_largest_market_order_the_exchange_lowered(
        make_agent, exchange, caplog, read_fails):
    """The exchange lowers ETHUSDC's largest MARKET order (MARKET_LOT_SIZE maxQty; Binance announces such
    updates) under the position while the agent runs, then the agent stops with a flatten: its reduce-only
    MARKET order, cut to the maximum it started on, was refused -4005 at every try until the stop gave up
    with the position open (the limits were not among the filters compared). The refusal reads
    exchangeInfo again; the new limits are taken at once (the grid unchanged) and the flatten goes in pieces.
    A read that fails is made again at a refusal 2 s on (not 30 s: the stop had given up by then)."""
    caplog.set_level(logging.INFO, logger="mmfleet.agent")
    await exchange.post("/sim/position", {"account": "main", "symbol": SYMBOL, "amount": "0.050"})
    agent = await make_agent()
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    assert agent.filters.market_max_qty > Decimal("0.050")
    await exchange.post("/sim/filters", {"symbol": SYMBOL, "market_max_qty": "0.020"})
    if read_fails:
        await exchange.post("/sim/fault/rest", {"mode": "error", "count": 1, "path": "/fapi/v1/exchangeInfo"})
    summary = await agent.stop(flatten=True)
    st = await exchange.state()
    assert Decimal(st["positions"][SYMBOL]["amount"]) == 0 and st["open_orders"] == [], summary
    assert summary["flattened"] is True and summary["exchange_position"] == 0.0
    said = [r.getMessage() for r in caplog.records if getattr(r, "event", None) == "filters_taken"]
    assert len(said) == 1 and "market_max_qty" in said[0] and "-> 0.020" in said[0], said


async def test_a_largest_order_the_exchange_lowers_is_taken_at_once_and_a_kills_flatten_meets_it(
        make_agent, exchange, caplog):
    """MARKET_LOT_SIZE's and LOT_SIZE's maxQty lowered while the agent quotes: the periodic exchangeInfo read
    sees them and the agent takes them at once, quoting on (no restart: its grid is the same). Its ladder is
    cut to the new LOT_SIZE maximum (a layer above it was refused -4005 at every quote), and a kill's
    flatten goes in MARKET pieces of the new maximum (cut to the old one, every piece was refused -4005,
    and the filters' change stopped the agent in the middle of the flatten)."""
    caplog.set_level(logging.INFO, logger="mmfleet.agent")
    await exchange.post("/sim/position", {"account": "main", "symbol": SYMBOL, "amount": "0.050"})
    agent = await make_agent(runtime=FAST.model_copy(update={"exchange_info_reread_sec": 1.0}))
    await wait_for(lambda: resting(agent, exchange), 10, "ladder resting", explain=lambda: describe(agent, exchange))
    sizes = sorted({Decimal(o["origQty"]) for o in (await exchange.state())["open_orders"]})
    assert len(sizes) >= 2, sizes
    lot_max = sizes[-2]   # under the largest layer
    before = agent.filters.max_qty
    await exchange.post("/sim/filters", {"symbol": SYMBOL, "market_max_qty": "0.020", "max_qty": str(lot_max)})

    def taken() -> list[str]:
        return [r.getMessage() for r in caplog.records if getattr(r, "event", None) == "filters_taken"]

    await wait_for(taken, 10, "the new limits taken")
    assert f"max_qty {before} -> {lot_max}" in taken()[0] and "market_max_qty" in taken()[0], taken()

    async def cut() -> bool:   # the ladder re-quoted within the new LOT_SIZE maximum
        orders = (await exchange.state())["open_orders"]
        return bool(orders) and all(Decimal(o["origQty"]) <= lot_max for o in orders)

    await exchange.post("/sim/market/jump", {"symbol": SYMBOL, "pct": 0.5})   # the ladder moves: new orders
    await wait_for(cut, 15, "the ladder within the new maximum", explain=lambda: describe(agent, exchange))
    assert not agent.stopped
    await agent.flatten("a kill drill")
    st = await exchange.state()
    assert Decimal(st["positions"][SYMBOL]["amount"]) == 0, st["positions"][SYMBOL]
    assert not any(getattr(r, "event", None) == "filters_changed" for r in caplog.records)
