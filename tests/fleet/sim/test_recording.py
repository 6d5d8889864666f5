"""Record from a running simulator over loopback (``python -m simulate.record``), then replay it.

The recording (one per module, ~18 s, a market connection cut once midway) comes from a simulator
whose ETHUSDC touch is 4 USDC wide (a quoting agent rests inside it, so the recorded trades go
through its orders) and whose BTCUSDT is the usual one-tick book. The replay runs in an engine
(exact: the published books and trades are the recorded ones at the recorded times) and in a second
SimServer on loopback, where a real SymbolAgent quotes ETHUSDC and gets fills, while a second
recorder shows BTCUSDT replayed frame for frame.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import logging
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from fleet.sim.config import SimConfig
from fleet.sim.engine import Engine, render
from fleet.sim.recording import FILE_RE, REORDER_MS, ReadStats, Recording, RecordingError
from fleet.sim.thread import SimThread
from simulate.record import Options, main, record, stream_urls
from tests.e2e.test_agent_live import describe, exchange, in_sync, make_agent  # noqa: F401 - fixtures
from tests.polling import poll, wait_for

REPO = Path(__file__).resolve().parents[3]
RECORD_S = 18
SYMBOLS = ["ETHUSDC", "BTCUSDT"]
ETH_WIDE = {"symbol": "ETHUSDC", "base_asset": "ETH", "quote_asset": "USDC", "tick_size": "0.01",
            "step_size": "0.001", "min_notional": "5", "start_price": 3000.0, "spread_ticks": 400}


def _admin(sim: SimThread, path: str, body: dict | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    with urllib.request.urlopen(urllib.request.Request(sim.rest_url + path, data=data), timeout=10) as r:
        return json.load(r)


@pytest.fixture(scope="module")
def recording(tmp_path_factory) -> tuple[Path, str]:
    """A recording of ~18 s of ETHUSDC and BTCUSDT, rolled every 6 s, its connections cut once."""
    out = tmp_path_factory.mktemp("recording") / "rec"
    with SimThread(symbols=SYMBOLS, seed=11, host="127.0.0.1", port=0, config={"symbols": [ETH_WIDE]}) as sim:
        proc = subprocess.Popen([sys.executable, "-m", "simulate.record", "--symbols", ",".join(SYMBOLS),
                                 "--out", str(out), "--minutes", str(RECORD_S / 60), "--ws-url", sim.ws_url,
                                 "--roll-minutes", "0.1"], cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        try:
            poll(lambda: sim.server.stats["ws_frames_sent"] >= 100, 30, "the recorder receiving frames")
            assert _admin(sim, "/sim/fault/drop", {"target": "market"})["dropped"] == 2   # /public and /market
            stdout, stderr = proc.communicate(timeout=RECORD_S + 60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, stderr
    return out, stdout + stderr


def read_lines(directory: Path) -> list[dict[str, Any]]:
    """Every line of every file, by the documented format alone."""
    lines = []
    for path in sorted(directory.glob("*/*.jsonl.gz")):
        with gzip.open(path, "rb") as fh:
            lines += [json.loads(raw) for raw in fh]
    return lines


def book_path(items: list[tuple[int, str, str, str, str]]) -> list[tuple[int, str, str, str, str]]:
    """(time, bid, bid size, ask, ask size), consecutive repeats of one book dropped (a connection
    cut may lose the frames between two equal books; the engine publishes a book only when it changes)."""
    out: list[tuple[int, str, str, str, str]] = []
    for item in items:
        if not out or out[-1][1:] != item[1:]:
            out.append(item)
    return out


def same_in_time(published: list[tuple[Any, ...]], recorded: list[tuple[Any, ...]]) -> bool:
    """The same frames in the same order, each published at its receive time or, when the exchange's
    own times put it before a frame received ahead of it, less than REORDER_MS earlier."""
    return [p[1:] for p in published] == [r[1:] for r in recorded] and all(
        r[0] - REORDER_MS <= p[0] <= r[0] for p, r in zip(published, recorded))


def recorded_books(lines: list[dict[str, Any]], symbol: str) -> list[tuple[int, str, str, str, str]]:
    return book_path([(x["r"], x["d"]["b"], x["d"]["B"], x["d"]["a"], x["d"]["A"]) for x in lines
                      if x["s"] == f"{symbol.lower()}@bookTicker"])


def test_the_recording_holds_rolled_files_per_symbol_and_a_manifest(recording):
    out, log_text = recording
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "mmfleet.recording" and manifest["version"] == 1
    assert manifest["symbols"] == SYMBOLS and manifest["streams"] == ["bookTicker", "aggTrade", "markPrice@1s"]
    assert manifest["source"].startswith("ws://127.0.0.1:") and manifest["urls"][0].startswith(manifest["source"])
    assert manifest["end_ms"] - manifest["start_ms"] >= RECORD_S * 1000 - 500
    assert manifest["reconnects"] == 2 and manifest["malformed_frames"] == 0   # each route reconnected once
    assert "reconnecting in" in log_text and "recorded" in log_text
    lines = read_lines(out)
    assert len(lines) == manifest["frames"]
    for symbol in SYMBOLS:
        files = sorted(p.name for p in (out / symbol).iterdir())
        assert len(files) >= 3 and all(FILE_RE.match(f)["symbol"] == symbol for f in files)  # rolled every 6 s
        assert [f"{symbol}/{f}" for f in files] == manifest["files"][symbol]
        mine = [x for x in lines if x["s"].startswith(symbol.lower() + "@")]
        for stream in ("bookTicker", "aggTrade", "markPrice@1s"):
            n = sum(1 for x in mine if x["s"] == f"{symbol.lower()}@{stream}")
            assert n == manifest["lines"][symbol][stream] and n > 0, (symbol, stream)
        assert all(x["d"]["s"] == symbol for x in mine)
    times = [x["r"] for x in sorted(lines, key=lambda x: x["r"])]
    assert times[0] >= manifest["start_ms"] and times[-1] <= manifest["end_ms"]
    merged = [line[0] for line in Recording(out).events(SYMBOLS, ReadStats())]
    # the reader merges the files and symbols in time order: the receive time, or earlier by less than
    # REORDER_MS for a line the exchange's own times put before one received ahead of it
    assert merged == sorted(merged) and len(merged) == len(times)
    assert all(r - REORDER_MS <= m <= r for m, r in zip(merged, times))


def test_an_engine_replays_the_recorded_books_trades_and_marks_at_their_times(recording):
    out, _ = recording
    lines = read_lines(out)
    start = min(x["r"] for x in lines)
    now = start + 3_600_000  # the engine starts an hour later: every recorded time moves by that
    e = Engine(SimConfig(replay=str(out)), now_ms=now)
    e.watch(*(f"{s.lower()}@{k}" for s in SYMBOLS for k in ("bookTicker", "aggTrade", "markPrice@1s")))
    e.advance(now + max(x["r"] for x in lines) - start)
    assert e.replay.done and e.replay.view()["malformed"] == 0
    shift = now - start
    published = [(target, render(p)) for kind, target, p in e.drain() if kind == "m"]
    for symbol in SYMBOLS:
        low = symbol.lower()
        books = book_path([(f["E"] - shift, f["b"], f["B"], f["a"], f["A"]) for t, f in published
                           if t == f"{low}@bookTicker"])
        assert same_in_time(books, recorded_books(lines, symbol))
        trades = [(f["T"] - shift, f["p"], f["q"], f["m"]) for t, f in published if t == f"{low}@aggTrade"]
        assert same_in_time(trades, [(x["r"], x["d"]["p"], x["d"]["q"], x["d"]["m"]) for x in lines
                                     if x["s"] == f"{low}@aggTrade"])
        marks = [(f["E"] - shift, f["p"]) for t, f in published if t == f"{low}@markPrice@1s"]
        assert same_in_time(marks, [(x["r"], x["d"]["p"]) for x in lines if x["s"] == f"{low}@markPrice@1s"])


@pytest.fixture
async def sim(sim_factory, recording):
    """The recording replayed on loopback (the e2e fixtures' ``sim``): it starts when the server does."""
    return await sim_factory(symbols=SYMBOLS, config={"replay": str(recording[0])})


async def test_a_quoting_agent_gets_fills_on_the_replayed_market(recording, sim, make_agent, exchange, tmp_path):
    stop = asyncio.Event()  # BTCUSDT (no agent) recorded again from the replaying simulator
    again = asyncio.create_task(record(Options(("BTCUSDT",), tmp_path / "again", ws_url=sim.ws_url), stop))
    agent = await make_agent()

    async def filled() -> Any:
        st = await exchange.state()
        return st["counters"]["trades"] > 0 and agent.core.store.fills_buy + agent.core.store.fills_sell > 0

    await wait_for(filled, RECORD_S + 10, "fills of the agent's orders from recorded trades")
    await wait_for(lambda: sim.engine.replay.done, RECORD_S + 20, "the end of the replay")
    await wait_for(lambda: in_sync(agent, exchange), 20, "the agent in step with the exchange",
                   explain=lambda: describe(agent, exchange))
    st = await exchange.state()
    assert st["replay"]["done"] and st["markets"]["ETHUSDC"]["regime"] == "replay"
    async with exchange.http.post(f"{sim.rest_url}/sim/market/jump", json={"symbol": "ETHUSDC", "pct": 1}) as r:
        assert r.status == 400 and "replays a recording" in (await r.json())["error"]
    stop.set()
    await again
    # the untraded symbol's books over the socket: a stretch of the recording's, each shortly after its time
    replayed = recorded_books(read_lines(tmp_path / "again"), "BTCUSDT")
    original = recorded_books(read_lines(recording[0]), "BTCUSDT")
    keys = [b[1:] for b in original]
    first = keys.index(replayed[0][1:])
    assert [b[1:] for b in replayed] == keys[first:first + len(replayed)] and len(replayed) > 20
    assert replayed[-1][1:] == keys[-1]  # to the recording's end
    lags = [r[0] - (o[0] + sim.engine.replay.shift_ms) for r, o in zip(replayed, original[first:])]
    assert min(lags) >= 0 and max(lags) < 2000, lags


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGHUP])   # (a closed terminal cut the files short)
async def test_the_recorder_stops_cleanly_on_sigint_keeping_its_buffered_tail(sim_factory, tmp_path, sig):
    sim = await sim_factory(symbols=SYMBOLS)
    out = tmp_path / "rec"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulate.record", "--symbols", "ETHUSDC", "--out", str(out), "--ws-url",
        sim.ws_url, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        await wait_for(lambda: sim.stats["ws_frames_sent"] >= 20, 30, "frames sent to the recorder")
        proc.send_signal(sig)  # within the first 5 s: nothing flushed to the file yet
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, stderr.decode()
    manifest = json.loads((out / "manifest.json").read_text())
    stats = ReadStats()
    lines = list(Recording(out).lines("ETHUSDC", stats))
    assert not any(stats.view().values()), stats.view()
    assert manifest["end_ms"] is not None and len(lines) == manifest["frames"] > 0
    assert b"recorded" in stdout


async def test_a_disk_that_refuses_a_frame_stops_the_recorder_loudly_with_a_final_manifest(sim_factory, tmp_path):
    sim = await sim_factory(symbols=SYMBOLS)
    out = tmp_path / "rec"
    limit = ("import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (3000, 3000)); "
             "from simulate.record import main; sys.exit(main(sys.argv[1:]))")   # files of at most 3,000 bytes
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", limit, "--symbols", "ETHUSDC,BTCUSDT", "--out", str(out), "--ws-url", sim.ws_url,
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 60)   # it stops by itself
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    err = stderr.decode()
    assert proc.returncode == 1 and "record: error: cannot write the recording" in err, err
    assert "reconnecting" not in err   # not taken for a lost connection
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["end_ms"] is not None and "cannot write" in manifest["error"] and manifest["frames"] > 0


async def test_a_burst_then_quiet_is_on_disk_within_the_flush_period_for_a_recorder_killed(tmp_path):
    from websockets.asyncio.server import serve

    async def burst(ws: Any) -> None:   # 30 books at once, then nothing (pings still answered)
        if ws.request.path.startswith("/public"):
            for i in range(30):
                await ws.send(json.dumps({"stream": "ethusdc@bookTicker", "data": {
                    "e": "bookTicker", "u": i, "s": "ETHUSDC", "b": "3000.00", "B": "1.000", "a": "3000.01",
                    "A": "1.000", "T": 1, "E": 1}}))
        await ws.wait_closed()

    async with serve(burst, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        out = tmp_path / "rec"
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "simulate.record", "--symbols", "ETHUSDC", "--out", str(out), "--ws-url",
            f"ws://127.0.0.1:{port}", cwd=REPO, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        try:
            def on_disk() -> int:
                try:
                    return len(list(Recording(out).lines("ETHUSDC", ReadStats(quiet=True))))
                except Exception:   # noqa: BLE001 - not written yet
                    return 0
            await wait_for(lambda: on_disk() == 30, 20, "the burst flushed while nothing more came")
        finally:
            proc.kill()   # SIGKILL: no close, no trailer
            await proc.wait()
    assert on_disk() == 30


async def test_a_connection_that_goes_silent_is_reopened_and_counted(tmp_path, caplog):
    """Reopened at once each time: a connection that opened and lived its silence was no failure (the
    wait doubled at each silence, 8 s after a quiet spell, and the trades made meanwhile were lost);
    closed at the stop with a normal close (a cancelled task closed it 1011, 'internal error')."""
    from websockets.asyncio.server import serve

    opened: list[str] = []
    closed: list[int | None] = []

    async def mute(ws: Any) -> None:   # accepts, answers pings, never sends a frame
        opened.append(ws.request.path)
        await ws.wait_closed()
        closed.append(ws.close_code)

    caplog.set_level(logging.WARNING, logger="simulate.record")

    async with serve(mute, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        stop = asyncio.Event()
        task = asyncio.create_task(record(Options(("ETHUSDC",), tmp_path / "rec", ws_url=f"ws://127.0.0.1:{port}",
                                                  silent_s=0.5), stop))
        await wait_for(lambda: len(opened) >= 6, 20, "the silent connections reopened")
        stop.set()
        manifest = await task
    assert manifest["silent_reconnects"] >= 4 and manifest["frames"] == 0
    assert {p.split("?")[0] for p in opened} == {"/public/stream", "/market/stream"}
    waits = [r.getMessage().rsplit("reconnecting in ", 1)[1] for r in caplog.records if "reconnecting in" in r.getMessage()]
    assert len(waits) >= 4 and set(waits) == {"0.5 s"}, waits
    await wait_for(lambda: len(closed) == len(opened), 10, "every connection closed")
    assert closed[-2:] == [1000, 1000], closed


@pytest.mark.parametrize("argv, says", [
    (["--symbols", "ETH-USDC", "--out", "{new}"], "--symbols: ETH-USDC is not a symbol"),
    (["--symbols", "ETHUSDC,ETHUSDC", "--out", "{new}"], "--symbols: a symbol is named twice"),
    (["--symbols", "ETHUSDC", "--out", "{full}"], "exists and is not an empty directory"),
    (["--symbols", "ETHUSDC", "--out", "{new}", "--minutes", "0"], "--minutes must be positive"),
    (["--symbols", "ETHUSDC", "--out", "{new}", "--ws-url", "https://fapi.binance.com"], "--ws-url must be a ws://"),
    (["--symbols", "ETHUSDC"], "the following arguments are required: --out"),
])
def test_bad_arguments_name_the_argument_and_exit_2(argv, says, tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    argv = [a.format(new=tmp_path / "new", full=tmp_path / "full") for a in argv]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_the_recorder_uses_binances_2026_split_layout_by_default():
    urls = stream_urls(Options(("ETHUSDC", "BTCUSDT"), Path("unused")))
    assert urls == ["wss://fstream.binance.com/market/stream?streams=ethusdc@aggTrade/ethusdc@markPrice@1s/"
                    "btcusdt@aggTrade/btcusdt@markPrice@1s",
                    "wss://fstream.binance.com/public/stream?streams=ethusdc@bookTicker/btcusdt@bookTicker"]


@pytest.mark.parametrize("extra, said", [
    (["--out", "/proc/mmfleet-no"], "cannot record into /proc/mmfleet-no"),
    (["--roll-minutes", "inf"], "--roll-minutes must be from 1 s"),
    (["--ws-url", "ws://127.0.0.1:99999"], "--ws-url must be a ws:// or wss:// URL"),
    (["--ws-url", "ws://[::1"], "--ws-url must be a ws:// or wss:// URL"),   # (a traceback)
    (["--ws-url", "ws://127.0.0.1:1/ws"], "without a path or a query"),   # (every frame refused, exit 0)
    (["--log-level", "BOGUS"], "--log-level must be one of"),
])
def test_the_recorder_refuses_what_it_cannot_use_in_one_line(tmp_path, capsys, extra, said):
    from simulate import record as rec

    parser = argparse.ArgumentParser()
    rec.add_arguments(parser)
    args = parser.parse_args(["--symbols", "ETHUSDC", "--out", str(tmp_path / "r"), "--minutes", "0.01",
                              "--ws-url", "ws://127.0.0.1:1", *extra])
    assert rec.run(args) in (1, 2)
    assert said in capsys.readouterr().err


async def test_a_recording_removed_while_it_is_written_stops_the_recorder_loudly(sim_factory, tmp_path):
    """The directory removed mid-run: every frame went to files no longer anywhere, with no word, until
    the next roll (an hour) or a signal; then only the manifest's error was said."""
    import shutil

    sim = await sim_factory(symbols=SYMBOLS)
    out = tmp_path / "rec"
    stop = asyncio.Event()
    task = asyncio.create_task(record(Options(("ETHUSDC",), out, ws_url=sim.ws_url), stop))
    await wait_for(lambda: sim.stats["ws_frames_sent"] >= 20, 30, "frames sent to the recorder")
    shutil.rmtree(out)
    try:
        with pytest.raises(RecordingError, match="was removed while it was written.*; and cannot write"):
            await asyncio.wait_for(task, 20)   # at the next flush (5 s)
    finally:
        stop.set()


async def test_a_symbol_the_exchange_does_not_list_is_said_while_the_recorder_runs(sim_factory, tmp_path, caplog):
    """Its streams are accepted and silent (as on Binance), its connection kept alive by the other
    symbol's frames: it recorded nothing and said so only in the final summary's zeros."""
    sim = await sim_factory(symbols=SYMBOLS)
    caplog.set_level(logging.WARNING, logger="simulate.record")
    stop = asyncio.Event()
    task = asyncio.create_task(record(Options(("ETHUSDC", "ETHUSTD"), tmp_path / "rec", ws_url=sim.ws_url,
                                              unheard_s=3.0), stop))
    said = await wait_for(lambda: [r.getMessage() for r in caplog.records if "no markPrice frame" in r.getMessage()],
                          30, "the unheard symbol said")
    sent = sim.stats["ws_frames_sent"]
    await wait_for(lambda: sim.stats["ws_frames_sent"] > sent + 20, 30, "frames sent after the warning")
    assert not task.done()   # still recording (the warning's task ending stopped it, 30 s into every run)
    stop.set()
    manifest = await task
    assert len(said) == 1 and "ETHUSTD" in said[0] and manifest["frames"] > sent
