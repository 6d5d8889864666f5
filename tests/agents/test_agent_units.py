"""Pieces of the agent runtime that need no exchange: back-off, endpoints, a start refused by ownership."""

from __future__ import annotations

import random

import pytest

from agents.agent import Backoff, ExchangeEndpoints, SymbolAgent
from agents.ownership import LockFileOwnership, OwnershipRefused
from fleet.binance.credentials import Credentials
from fleet.config import RuntimeParams, SymbolParams


def test_backoff_grows_3_6_12_and_is_capped():
    b = Backoff(3.0, 20.0, jitter=0.0)
    assert [b.next() for _ in range(5)] == [3.0, 6.0, 12.0, 20.0, 20.0]
    b.reset()
    assert b.next() == 3.0


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
