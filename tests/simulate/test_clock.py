"""The simulated clock: timers fire in order at their exact due times, the clock never waits, and a
run with nothing left to wait for is reported instead of hanging."""

from __future__ import annotations

import asyncio
import time

import pytest

from simulate.clock import SimClock, SimulationStalled, run_simulated


def run(coro_fn, start: float = 0.0):
    return run_simulated(coro_fn(), start)


@pytest.mark.parametrize("delays, expected", [
    ([0.3, 0.1, 0.2], [(0.1, "b"), (0.2, "c"), (0.3, "a")]),
    ([1.0, 1.0], [(1.0, "a"), (1.0, "b")]),  # ties: in the order they were scheduled
    ([1.0] * 6, [(1.0, n) for n in "abcdef"]),    # (asyncio's own heap fires these a c f e b d)
    ([0.0, 86_400.0 * 3], [(0.0, "a"), (259_200.0, "b")]),  # beyond asyncio's longest select
])
def test_timers_fire_in_order_at_their_due_times(delays, expected):
    async def main():
        loop = asyncio.get_running_loop()
        seen = []
        done = asyncio.Event()
        for name, d in zip("abcdef", delays):
            loop.call_later(d, lambda n=name: (seen.append((loop.time(), n)), len(seen) == len(delays) and done.set()))
        await done.wait()
        return seen

    assert run(main) == expected


def test_an_hour_of_sleeps_costs_no_waiting():
    async def main():
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        ticks = 0
        while loop.time() - t0 < 3600:
            await asyncio.sleep(0.05)
            ticks += 1
        return loop.time() - t0, ticks

    wall = time.perf_counter()
    elapsed, ticks = run(main)
    assert ticks == 72_000 and elapsed == pytest.approx(3600.0)
    assert time.perf_counter() - wall < 60  # simulated, not slept (an hour of real sleeps would be 3,600 s)


def test_wait_for_times_out_on_simulated_time():
    async def main():
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.Event().wait(), 30.0)
        return loop.time() - t0

    assert run(main) == pytest.approx(30.0)


def test_sim_clock_reads_exchange_milliseconds_from_its_epoch():
    async def main():
        clock = SimClock(asyncio.get_running_loop(), 1_767_225_600_000)
        before = clock.time_ms(), clock.monotonic()
        await clock.sleep(1.234)
        return before, (clock.time_ms(), clock.monotonic())

    (ms0, mono0), (ms1, mono1) = run(main, start=100.0)
    assert ms0 == 1_767_225_600_000 and ms1 - ms0 == 1234 and mono1 - mono0 == pytest.approx(1.234)


def test_nothing_to_wait_for_is_an_error_not_a_hang():
    async def main():
        await asyncio.get_running_loop().create_future()  # nobody will ever set it

    with pytest.raises(SimulationStalled):
        run(main)
