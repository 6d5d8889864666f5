"""A recording made from the simulator itself (in-process, on the simulated clock) replays as the
market of a simulated run: the run's mid path is the recording's, and the quoting agent gets fills."""

from __future__ import annotations

import asyncio
import bisect
import json
from pathlib import Path

from fleet.config import load_fleet_config
from fleet.sim.local import LocalExchange
from fleet.sim.recording import Recording, RecordingWriter
from simulate.clock import SimClock, run_simulated
from simulate.run import RunOptions, replay_start_ms, sim_config_for, simulate

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "fleet.demo.yaml"
CFG = load_fleet_config(CONFIG)
START = 1_767_225_600_000
MINUTES = 10
STREAM_OF = {"bookTicker": "ethusdc@bookTicker", "aggTrade": "ethusdc@aggTrade",
             "markPriceUpdate": "ethusdc@markPrice@1s"}


async def _record(directory: Path) -> list[tuple[int, float]]:
    """Record MINUTES of the demo's market; returns the recorded mids (receive time, (bid + ask) / 2)."""
    clock = SimClock(asyncio.get_running_loop(), START)
    ex = LocalExchange(clock_ms=clock.time_ms, symbols=["ETHUSDC"], seed=4,
                       config=sim_config_for(CFG, RunOptions()))
    writer = RecordingWriter(directory, ["ETHUSDC"], source="fleet.sim in-process")
    writer.start(clock.time_ms())
    mids: list[tuple[int, float]] = []

    class Sink:
        def receive(self, frames):
            for f in frames:
                now = clock.time_ms()
                writer.write(now, "ETHUSDC", STREAM_OF[f["e"]], f)
                if f["e"] == "bookTicker":
                    mids.append((now, (float(f["b"]) + float(f["a"])) / 2))

        def lost(self, reason):
            raise AssertionError(f"the recording's connection was lost: {reason}")

    ex.subscribe_market(list(STREAM_OF.values()), Sink())
    task = asyncio.create_task(ex.run())
    await asyncio.sleep(MINUTES * 60)
    task.cancel()
    writer.close(clock.time_ms())
    return mids


def test_a_recording_replays_with_the_same_mid_path_and_fills_a_quoting_agent(tmp_path):
    directory = tmp_path / "rec"
    mids = run_simulated(_record(directory))
    assert Recording(directory).manifest["end_ms"] == START + MINUTES * 60_000
    sim = {**sim_config_for(CFG, RunOptions()).model_dump(), "replay": str(directory)}
    result = simulate(CFG, CONFIG, RunOptions(hours=MINUTES / 60, seed=9, symbols=["ETHUSDC"], sim_config=sim,
                                              start_ms=replay_start_ms(directory), points=MINUTES * 60))
    sym = result.symbols[0]
    times = [t for t, _ in mids]
    checked = 0
    for t, mid in zip(sym.samples.t_ms, sym.samples.mid):
        i = bisect.bisect_right(times, t) - 1
        if i >= 0:
            # a book recorded in the very millisecond of the sample may be replayed just after it
            ok = [mids[i][1]] + ([mids[i - 1][1]] if times[i] == t and i > 0 else [])
            assert any(abs(mid - m) < 1e-9 for m in ok), (t, mid, mids[max(i - 2, 0):i + 2])
            checked += 1
    assert checked >= MINUTES * 60 - 2  # every sample after the first book
    assert sym.table["fills"] > 0 and sym.table["open_orders_after_stop"] == 0


def test_a_recording_whose_recorder_was_killed_runs_to_its_last_line_not_48_hours(tmp_path):
    import argparse

    import pytest

    from fleet.ops import simulate_cli

    directory = tmp_path / "rec"
    writer = RecordingWriter(directory, ["ETHUSDC"], source="by hand")
    writer.start(START)
    for i in range(91):
        t = START + i * 1000
        writer.write(t, "ETHUSDC", "ethusdc@bookTicker", {"e": "bookTicker", "u": i, "s": "ETHUSDC", "b": "3000.00",
                                                          "B": "1.000", "a": "3000.01", "A": "1.000", "T": t, "E": t})
    writer.flush(START + 90_000)   # then killed: no end_ms, no gzip trailer
    assert Recording(directory).manifest["end_ms"] is None
    parser = argparse.ArgumentParser()
    simulate_cli.add_arguments(parser)
    opts = simulate_cli._options(parser.parse_args(["--config", str(CONFIG), "--replay", str(directory),
                                                    "--no-progress"]))
    assert opts.hours == pytest.approx(90 / 3600) and opts.start_ms == START


def test_a_replay_of_a_symbol_the_recording_lacks_or_of_no_time_is_refused_naming_why(tmp_path):
    import argparse

    import pytest

    from fleet.ops import simulate_cli

    directory = tmp_path / "rec"
    writer = RecordingWriter(directory, ["ETHUSDC"], source="by hand")
    writer.start(START)
    writer.write(START, "ETHUSDC", "ethusdc@bookTicker", {"e": "bookTicker", "u": 1, "s": "ETHUSDC", "b": "3000.00",
                                                          "B": "1.000", "a": "3000.01", "A": "1.000", "T": START,
                                                          "E": START})
    writer.close(START)   # an end no later than its first line
    parser = argparse.ArgumentParser()
    simulate_cli.add_arguments(parser)
    with pytest.raises(ValueError, match="holds ETHUSDC, not SOLUSDT"):
        simulate_cli._options(parser.parse_args(["--config", str(CONFIG), "--replay", str(directory),
                                                 "--symbols", "SOLUSDT", "--no-progress"]))
    with pytest.raises(ValueError, match="its manifest's end .* is not after its first line"):
        simulate_cli._options(parser.parse_args(["--config", str(CONFIG), "--replay", str(directory), "--no-progress"]))
    manifest = json.loads((directory / "manifest.json").read_text())
    (directory / "manifest.json").write_text(json.dumps({**manifest, "end_ms": START + 10**12}))
    with pytest.raises(ValueError, match="its manifest's end .* is 277778 h after its first line, over 8760"):
        simulate_cli._options(parser.parse_args(["--config", str(CONFIG), "--replay", str(directory), "--no-progress"]))
    foreign = tmp_path / "foreign"   # its manifest says ETHUSDC, its lines are another symbol's: it said "no lines"
    writer = RecordingWriter(foreign, ["ETHUSDC"], source="by hand")
    writer.start(START)
    writer.write(START, "ETHUSDC", "btcusdt@bookTicker", {"e": "bookTicker", "u": 1, "s": "BTCUSDT", "b": "60000.0",
                                                          "B": "1.000", "a": "60000.1", "A": "1.000", "T": START,
                                                          "E": START})
    writer.close(START + 60_000)
    with pytest.raises(ValueError, match="holds no line of ETHUSDC it can read .*1 malformed.*the first malformed: "
                                         "line 1 of .*btcusdt@bookTicker"):
        simulate_cli._options(parser.parse_args(["--config", str(CONFIG), "--replay", str(foreign), "--no-progress"]))
