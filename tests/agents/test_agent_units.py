"""Pieces of the agent runtime that need no exchange: back-off, endpoints, a start refused by ownership."""

from __future__ import annotations

import asyncio
import random

import pytest

from agents.agent import Backoff, ExchangeEndpoints, SymbolAgent
from agents.agent_base import MarginHold
from agents.ownership import LockFileOwnership, OwnershipRefused
from fleet.binance.credentials import Credentials
from fleet.config import RuntimeParams, SymbolParams


def test_backoff_grows_3_6_12_and_is_capped():
    b = Backoff(3.0, 20.0, jitter=0.0)
    assert [b.next() for _ in range(5)] == [3.0, 6.0, 12.0, 20.0, 20.0]
    b.reset()
    assert b.next() == 3.0


def test_backoff_stays_at_its_cap_however_long_it_lasts():
    """2 ** 1024 overflows a float: a hold or a reconnect tried that often must still answer the cap."""
    b = Backoff(1.0, 60.0, jitter=0.0)
    assert {b.next() for _ in range(3000)} >= {60.0} and b.next() == 60.0


def test_the_margin_hold_doubles_to_its_cap_and_starts_again_after_a_quiet_spell():
    hold = MarginHold(1.0, 8.0)
    now, lengths = 0.0, []
    for _ in range(6):
        length = hold.short(now)
        assert hold.short(now + 0.1) is None            # answers to orders sent before the hold
        lengths.append(length)
        now += length                                    # the next -2019 as soon as the hold ends
    assert lengths == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0] and hold.left(now - 1.0) == 1.0
    assert hold.short(now + 17.0) == 1.0                 # two caps without a -2019: from 1 s again


def test_a_hold_of_one_side_widens_to_both_when_the_other_side_or_the_margin_is_refused_during_it():
    hold = MarginHold(1.0, 8.0)
    assert hold.short(0.0, "BUY") == 1.0 and hold.side == "BUY"
    assert hold.short(0.5, "BUY") is None and hold.side == "BUY"
    assert hold.short(0.6, "SELL") is None and hold.side is None    # both sides full
    assert hold.short(1.0, "SELL") == 2.0 and hold.side == "SELL"   # a new hold: its own side
    assert hold.short(1.5, None) is None and hold.side is None      # margin short: both


def test_a_hold_of_one_side_lets_the_other_sides_places_and_amends_go():
    from agents.orders import Amend, Batch, Place
    from agents.sender import OrderSender
    from tests.agents.test_core import started

    core, _ = started()                                   # flat: no place reduces a position
    places = Batch("place", (Place("b0", "BUY", 290_000, 1), Place("s0", "SELL", 310_000, 1)))
    amends = Batch("amend", (Amend("b1", 7, "BUY", 290_100, 1), Amend("s1", 8, "SELL", 309_900, 1)))
    assert OrderSender._within_margin(core, places) is None and OrderSender._within_margin(core, amends) is None
    kept = OrderSender._within_margin(core, places, "BUY")
    assert kept is not None and [p.client_order_id for p in kept.items] == ["s0"]
    kept = OrderSender._within_margin(core, amends, "SELL")
    assert kept is not None and [a.client_order_id for a in kept.items] == ["b1"]


def test_while_short_of_margin_only_places_that_reduce_the_position_go():
    from agents.core import Actions
    from agents.orders import Batch, Cancel, Place
    from agents.sender import OrderSender
    from tests.agents.test_core import started

    core, ex = started()
    ex.send(core.quote(2_000), 2_000)
    ex.sweep("BUY")                                      # a long, and the ladder's sells resting
    sells = [Cancel(cid, o[0]) for cid, o in ex.book.items() if o[1] == "SELL"]
    ex.send(Actions((Batch("cancel", tuple(sells)),)))
    long = core.store.position_steps
    assert long >= 3 and core.store.pending_sell_steps == 0
    places = (Place("b0", "BUY", 290_000, 1), Place("s0", "SELL", 310_000, long - 1),
              Place("s1", "SELL", 310_000, 2), Place("s2", "SELL", 310_000, 1))
    kept = OrderSender._within_margin(core, Batch("place", places))
    assert kept is not None and [p.client_order_id for p in kept.items] == ["s0", "s2"]   # up to the long
    ex.send(Actions((Batch("place", (Place("s3", "SELL", 310_000, long),)),)))    # a sell resting for it all
    assert OrderSender._within_margin(core, Batch("place", places)) is None
    assert OrderSender._within_margin(core, Batch("amend", ())) is None   # the quoting lane's amends wait


def test_backoff_is_jittered_within_bounds():
    b = Backoff(3.0, 60.0, jitter=0.2, rng=random.Random(1))
    delays = [b.next() for _ in range(8)]
    for i, d in enumerate(delays):
        base = min(60.0, 3.0 * 2**i)
        assert 0.8 * base <= d <= 1.2 * base
    assert len(set(delays)) == len(delays)


def _agent(ownership) -> SymbolAgent:
    return SymbolAgent(
        fleet_name="t", symbol="ETHUSDC", params=SymbolParams(), runtime=RuntimeParams(),
        endpoints=ExchangeEndpoints("http://127.0.0.1:9", "ws://127.0.0.1:9", "ws://127.0.0.1:9"),
        credentials=Credentials("k" * 64, "s" * 64), ownership=ownership,
    )


def test_construction_does_no_io_and_reports_starting(tmp_path):
    agent = _agent(LockFileOwnership(tmp_path, "t", "ETHUSDC"))
    st = agent.status()
    assert st["state"] == "starting" and st["epoch"] is None
    assert not list(tmp_path.iterdir())  # nothing locked yet
    ex = agent.exposure()
    assert ex["position"] == 0.0 and ex["cap"] == pytest.approx(0.23)
    assert b"mm_ws_connected" in agent.metrics_text()
    text = repr(st) + repr(ex) + agent.metrics_text().decode()
    assert "k" * 64 not in text and "s" * 64 not in text


async def test_run_refused_when_another_owns_the_symbol(tmp_path):
    owner = LockFileOwnership(tmp_path, "t", "ETHUSDC")
    await owner.acquire()
    agent = _agent(LockFileOwnership(tmp_path, "t", "ETHUSDC"))
    with pytest.raises(OwnershipRefused, match="PID"):
        await agent.run()
    await owner.release()


async def test_stop_before_run_is_clean_and_idempotent(tmp_path):
    agent = _agent(LockFileOwnership(tmp_path, "t", "ETHUSDC"))
    first = await agent.stop()
    assert first["state"] == "stopped"
    assert await agent.stop() == first
    await agent.run()  # returns at once: it was stopped


def test_the_latency_windows_quantiles_are_those_of_its_last_samples_sorted():
    import random

    from agents.agent_base import LATENCY_RECENT, LatencyWindow

    window, rng, samples = LatencyWindow(), random.Random(5), []
    assert window.quantile_ms(0.5) is None
    for n in range(LATENCY_RECENT * 2 + 17):
        ns = rng.choice([rng.randrange(10**5, 10**8), 3_000_000])   # repeats too: eviction by value
        window.add(ns)
        samples.append(ns)
        if n % 97 == 0 or n > LATENCY_RECENT * 2:
            recent = sorted(samples[-LATENCY_RECENT:])
            for q in (0.0, 0.5, 0.99):
                assert window.quantile_ms(q) == round(recent[min(len(recent) - 1, int(q * len(recent)))] / 1e6, 4)
    assert len(window.all) == len(samples)


def test_an_actor_waits_after_a_start_no_retry_changes_and_sooner_for_a_symbol_not_trading_yet():
    from agents.actor import FATAL_RETRY_S, NOT_TRADING_RETRY_S, _retry_after
    from fleet.binance.enums import ErrorCode
    from fleet.binance.errors import BinanceError

    assert _retry_after(BinanceError(ErrorCode.SYMBOL_NOT_TRADING, "ETHUSDC is PENDING_TRADING", None)) == \
        NOT_TRADING_RETRY_S == 30
    assert _retry_after(BinanceError(ErrorCode.REJECTED_MBX_KEY, "Invalid API-key", 401)) == FATAL_RETRY_S == 300
    assert _retry_after(BinanceError(ErrorCode.UNKNOWN, "unknown", 503)) is None   # the usual back-off
    assert _retry_after(OSError("connection refused")) is None


async def test_a_user_stream_a_planned_swap_replaced_is_read_to_its_end():
    """Frames the old user stream had read when a planned swap put the new one in place (a fill,
    another hand's order: sent before the new connection was subscribed) are applied, over real
    sockets; before, the consumer left the old stream with them unread."""
    import asyncio
    import types

    from agents.user_feed import UserFeed
    from fleet.binance.streams import UserStream
    from tests.fleet.binance.test_client_parse import ORDER_NEW
    from tests.fleet.binance.test_client_stream_frames import FrameServer

    frames = [ORDER_NEW.replace('"c":"web_abc"', f'"c":"web_{i}"') for i in range(3)]
    async with FrameServer(lambda path: iter(frames if "old" in path else ())) as srv:
        old, new = UserStream(srv.url, "old", idle_timeout=10), UserStream(srv.url, "new", idle_timeout=10)
        await old.__aenter__()
        await new.__aenter__()
        for _ in range(500):   # the old connection has read all three
            if old.frames >= 3:
                break
            await asyncio.sleep(0.01)
        feed = UserFeed.__new__(UserFeed)   # the feed's consumer alone: the agent's counters, its handler
        feed.agent, feed._new_key = types.SimpleNamespace(counters={"listen_key_expired": 0}), asyncio.Event()
        applied: list = []
        feed.on_event = applied.append
        feed.stream = new                   # the swap: the new stream in place, the old one closed
        await old.close()
        await asyncio.wait_for(feed._consume(old), 10)
        await new.close()
    assert [e.client_order_id for e in applied] == ["web_0", "web_1", "web_2"]


async def test_the_stop_ends_a_task_that_swallowed_its_cancellation(tmp_path, caplog):
    """``asyncio.wait_for`` on Python 3.11 returns an inner call's result when it finished as the
    cancellation came, and the cancellation is lost: the lease's renewal loop went on renewing and the
    stop waited for it until the controller gave up. The stop cancels again what has not ended."""
    agent = _agent(LockFileOwnership(tmp_path, "t", "ETHUSDC"))
    swallowed: list[int] = []

    async def renewing() -> None:
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if not swallowed:   # the first cancellation lost, as wait_for's race loses it
                    swallowed.append(1)
                    continue
                raise

    agent.tasks.spawn(renewing(), "renew")
    await asyncio.sleep(0)
    await asyncio.wait_for(agent.tasks.cancel_all(set()), 10.0)   # the old code waited for ever
    assert swallowed == [1] and agent.tasks.named("renew") == []
    assert not [r for r in caplog.records if "tasks_not_ended" in r.getMessage() or "still running" in r.getMessage()]
