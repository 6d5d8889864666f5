"""The replayed market on hand-written recordings (the format of docs/recording.md, written here
without the project's writer): the recorded queue ahead of our orders, trades through our price,
books crossing our orders, mark price and funding, holding still before and after, bad lines and
bad directories. The engine runs in-process; the sockets side is tests/fleet/sim/test_recording.py."""

from __future__ import annotations

import gzip
import io
import json
import logging
import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from fleet.sim.config import SimConfig
from fleet.sim.engine import Engine, SimApiError, render
from fleet.sim.recording import RecordingError
from fleet.sim.server import SimServer

REPO = Path(__file__).resolve().parents[3]
T0 = 1_733_000_000_000  # the recording's first receive time
NOW = 1_800_000_000_000  # the engine's start: recorded times are shifted by NOW - T0


def bt(dt: int, b: str, bq: str, a: str, aq: str, sym: str = "ETHUSDC", at: int | None = None) -> dict[str, Any]:
    """A bookTicker received ``dt`` ms into the recording, of the exchange's time ``T0 + at`` (``dt - 2``)."""
    r = T0 + dt
    t = r - 2 if at is None else T0 + at
    return {"r": r, "s": f"{sym.lower()}@bookTicker", "d": {"e": "bookTicker", "u": dt, "s": sym, "b": b, "B": bq,
                                                              "a": a, "A": aq, "T": t, "E": t + 1}}


def agg(dt: int, p: str, q: str, buyer_maker: bool, sym: str = "ETHUSDC", at: int | None = None,
        **extra: Any) -> dict[str, Any]:
    r = T0 + dt
    t = r - 2 if at is None else T0 + at
    return {"r": r, "s": f"{sym.lower()}@aggTrade", "d": {"e": "aggTrade", "E": t + 1, "s": sym, "a": dt, "p": p,
                                                            "q": q, "f": dt, "l": dt, "T": t, "m": buyer_maker,
                                                            **extra}}


def mark(dt: int, p: str, rate: str, next_funding_dt: int, sym: str = "ETHUSDC") -> dict[str, Any]:
    r = T0 + dt
    return {"r": r, "s": f"{sym.lower()}@markPrice@1s", "d": {"e": "markPriceUpdate", "E": r - 1, "s": sym, "p": p,
                                                                "i": p, "P": p, "r": rate, "T": T0 + next_funding_dt}}


def write_recording(root: Path, files: dict[str, list[list[Any]]]) -> Path:
    """{symbol: [file lines, ...]}; a line is a dict (one JSON line) or raw bytes (written as they are)."""
    root.mkdir()
    for sym, chunks in files.items():
        (root / sym).mkdir()
        for i, lines in enumerate(chunks):
            name = f"{sym}-20241130T{i:02d}0000.000Z.jsonl.gz"  # the start time only orders the files
            with gzip.open(root / sym / name, "wb") as fh:
                for line in lines:
                    fh.write(line if isinstance(line, bytes) else json.dumps(line).encode() + b"\n")
    manifest = {"format": "mmfleet.recording", "version": 1, "symbols": list(files),
                "streams": ["bookTicker", "aggTrade", "markPrice@1s"], "source": "by hand",
                "start_ms": T0, "end_ms": None}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def order(e: Engine, side: str, price: str, qty: str, cid: str) -> Any:
    return e.place_order("main", {"symbol": "ETHUSDC", "side": side, "type": "LIMIT", "timeInForce": "GTC",
                                  "price": price, "quantity": qty, "newClientOrderId": cid}, e.now_ms)


def frames(e: Engine, suffix: str) -> list[dict[str, Any]]:
    return [render(p) for kind, target, p in e.drain() if kind == "m" and target.endswith(suffix)]


def test_recorded_trades_fill_our_orders_behind_the_recorded_queue_and_through_our_price(tmp_path):
    rec = write_recording(tmp_path / "rec", {
        "ETHUSDC": [[bt(0, "3000.00", "2.000", "3000.01", "2.000"),
                     agg(1000, "3000.00", "1.500", True),  # eats 1.5 of the 2.0 ahead of our bid
                     bt(2000, "3000.00", "0.300", "3000.01", "2.000"),  # the queue ahead shrinks to 0.3
                     agg(3000, "3000.00", "0.500", True),  # 0.3 ahead, then 0.2 of ours
                     agg(4000, "2999.99", "0.300", True),  # through our price: the rest of ours, 0.3
                     bt(5000, "3000.05", "1.000", "3000.06", "1.000"),  # the book goes through our ask
                     agg(6000, "3000.09", "0.010", False)]],  # a buy through our second ask: 0.010 of it
        "BTCUSDT": [[bt(500, "60000.0", "1.000", "60000.1", "1.000", "BTCUSDT")]]})
    e = Engine(SimConfig(replay=str(rec)), now_ms=NOW)
    e.watch("ethusdc@aggTrade")
    assert list(e.books) == ["ETHUSDC", "BTCUSDT"] and e.replay.shift_ms == NOW - T0
    assert e.book_ticker(e.books["BTCUSDT"])["bidPrice"] == "60000.0"  # its first book, before its time
    e.advance(NOW)
    bid = order(e, "BUY", "3000.00", "0.500", "b1")
    ask = order(e, "SELL", "3000.04", "0.100", "a1")  # behind the touch: synthetic depth ahead
    assert bid.ahead == 2000 and ask.ahead > 0
    e.advance(NOW + 1000)
    assert bid.filled == 0 and bid.ahead == 500
    e.advance(NOW + 2000)
    assert bid.ahead == 300
    e.advance(NOW + 3000)
    assert (bid.filled, bid.status, bid.ahead) == (200, "PARTIALLY_FILLED", 0)
    e.advance(NOW + 4000)
    assert bid.status == "FILLED" and bid.filled == 500
    e.advance(NOW + 5000)
    assert ask.status == "FILLED"  # the recorded bid 3000.05 went through our ask at 3000.04
    ask2 = order(e, "SELL", "3000.08", "0.050", "a2")
    e.advance(NOW + 6000)
    assert (ask2.status, ask2.filled) == ("PARTIALLY_FILLED", 10)   # no more than the taker's own size
    trades = [(t.side, t.price, t.qty, t.maker, t.time - NOW) for t in e.accounts["main"].trades]
    assert trades == [("BUY", "3000.00", "0.200", True, 3000), ("BUY", "3000.00", "0.300", True, 4000),
                      ("SELL", "3000.04", "0.100", True, 5000), ("SELL", "3000.08", "0.010", True, 6000)]
    st = e.state("main", "ETHUSDC")
    assert st["positions"]["ETHUSDC"]["amount"] == "0.390"
    published = [(f["p"], f["q"], f["m"], f["T"] - NOW) for f in frames(e, "@aggTrade")]
    assert ("3000.00", "1.500", True, 1000) in published and ("2999.99", "0.300", True, 4000) in published
    assert ("3000.09", "0.010", False, 6000) in published  # every recorded trade, at its recorded time


def test_a_trade_received_after_the_book_it_changed_is_matched_before_that_book(tmp_path):
    # Binance sends books over /public and trades over /market, aggTrade every 100 ms: the book a taker
    # changed (2.000 -> 0.500 at 3000.00) is often received first; by the exchange's times it came after
    rec = write_recording(tmp_path / "rec", {"ETHUSDC": [[
        bt(0, "3000.00", "2.000", "3000.01", "2.000"),
        bt(1005, "3000.00", "0.500", "3000.01", "2.000", at=1000),
        agg(1080, "3000.00", "1.500", True, at=1000),   # the taker of that book: ate 1.5 of the 2.0 ahead
        agg(1090, "3000.00", "1.500", True, at=1000, a=1080)]]})   # the same trade twice (a copied line)
    e = Engine(SimConfig(replay=str(rec)), now_ms=NOW)
    e.advance(NOW)
    bid = order(e, "BUY", "3000.00", "0.500", "b1")
    e.advance(NOW + 1005)   # both applied when the book was received, the trade first
    assert (bid.filled, bid.ahead) == (0, 500)   # still 0.5 behind: the trade was not counted twice
    e.advance(NOW + 3000)
    assert (bid.filled, bid.ahead) == (0, 500) and e.replay.view()["duplicates"] == 1


def test_the_reader_moves_no_line_more_than_a_second_and_reads_ids_that_start_again(tmp_path):
    from fleet.sim.recording import REORDER_MS, ReadStats, Recording

    books = [bt(dt, "3000.00", "1.000", "3000.01", "1.000") for dt in range(0, 20_000, 100)]
    for b in books:
        b["d"]["u"] += 400_000_000   # Binance's update ids are large
    books[0]["d"]["T"] += 3_600_000   # one book stamped an hour ahead: it holds nothing back for long
    late = [agg(dt + 5_000, "3000.00", "0.001", True, at=dt) for dt in range(0, 15_000, 1_000)]   # 5 s late
    reset = [{**b, "d": {**b["d"], "u": i}} for i, b in enumerate(
        bt(dt, "3000.00", "1.000", "3000.02", "1.000") for dt in range(20_000, 21_000, 100))]   # ids again from 0
    rec = write_recording(tmp_path / "rec", {"ETHUSDC": [sorted(books + late, key=lambda x: x["r"]) + reset]})
    stats = ReadStats()
    lines = list(Recording(rec).lines("ETHUSDC", stats))
    assert len(lines) == len(books) + len(late) + len(reset) and stats.duplicates == 0
    times = [line[0] for line in lines]
    received = {(line[1], line[3].get("a", line[3].get("u")), line[3]["T"]): line for line in lines}
    assert times == sorted(times)
    for x in books + late + reset:
        kind = "aggTrade" if x["d"]["e"] == "aggTrade" else "bookTicker"
        line = received[(kind, x["d"].get("a", x["d"].get("u")), x["d"]["T"])]
        assert x["r"] - REORDER_MS <= line[0] <= x["r"]


def test_a_recorded_taker_fills_our_better_prices_with_no_more_than_its_own_size(tmp_path):
    rec = write_recording(tmp_path / "rec", {"ETHUSDC": [[
        bt(0, "3000.00", "2.000", "3000.10", "2.000"),
        agg(1000, "3000.00", "0.001", True),   # a tiny sell at the recorded touch, under our three better bids
        agg(2000, "3000.00", "1.000", True, nq="0.200"),   # 0.8 of it against RPI orders the book never shows
        bt(3000, "3000.12", "0.004", "3000.13", "2.000")]]})   # a book through our asks, 0.004 at its touch
    e = Engine(SimConfig(replay=str(rec)), now_ms=NOW)
    e.advance(NOW)
    bids = [order(e, "BUY", p, "1.000", f"b{i}") for i, p in enumerate(("3000.03", "3000.02", "3000.01"))]
    touch = order(e, "BUY", "3000.00", "0.500", "t1")
    asks = [order(e, "SELL", p, "0.003", f"a{i}") for i, p in enumerate(("3000.11", "3000.12"))]
    e.advance(NOW + 1000)
    assert [b.filled for b in bids] == [1, 0, 0]   # the best first, and only the taker's 0.001
    e.advance(NOW + 2000)
    assert [b.filled for b in bids] == [201, 0, 0]   # the visible 0.200 ("nq"), not the whole 1.000
    assert (touch.filled, touch.ahead) == (0, 2000)
    e.advance(NOW + 3000)
    assert [a.filled for a in asks] == [3, 1]   # the recorded 0.004 at the crossing touch, our best first


def test_a_crossing_touch_that_stays_is_taken_once_then_only_what_it_grows_by(tmp_path):
    rec = write_recording(tmp_path / "rec", {"ETHUSDC": [[
        bt(0, "3000.00", "2.000", "3000.10", "2.000"),
        bt(1000, "3000.00", "1.000", "3000.04", "0.004"),   # through our bid at 3000.05
        bt(1100, "3000.00", "1.100", "3000.04", "0.004"),   # only the bid side moves: the same 0.004
        bt(1200, "3000.00", "1.200", "3000.04", "0.006"),   # 0.002 more offered there
        bt(1300, "3000.00", "1.300", "3000.03", "0.001")]]})   # a new touch
    e = Engine(SimConfig(replay=str(rec)), now_ms=NOW)
    e.advance(NOW)
    bid = order(e, "BUY", "3000.05", "1.000", "b1")
    fills = []
    for dt in (1000, 1100, 1200, 1300):
        e.advance(NOW + dt)
        fills.append(bid.filled)
    assert fills == [4, 4, 6, 7]


def test_marks_funding_and_the_book_hold_still_before_and_after_the_recording(tmp_path):
    rec = write_recording(tmp_path / "rec", {"ETHUSDC": [
        [mark(0, "2999.50000000", "0.00010000", 8000), bt(100, "3000.00", "1.000", "3000.02", "1.000")],
        [mark(1000, "3000.50000000", "0.00020000", 8000), bt(2000, "3001.00", "1.000", "3001.02", "1.000"),
         mark(9000, "3001.00000000", "0.00030000", 8000 + 8 * 3600_000)]]})
    e = Engine(SimConfig(replay=str(rec)), now_ms=NOW)
    e.watch("ethusdc@bookTicker", "ethusdc@markPrice@1s")
    b = e.books["ETHUSDC"]
    assert (b.mark, b.funding_rate, e.next_funding_ms) == (2999.5, Decimal("0.00010000"), NOW + 8000)
    e.set_position("main", "ETHUSDC", "0.400", "3000", NOW)
    e.advance(NOW + 50)  # between the first line and the first book: that book, held still
    assert e.book_ticker(b)["bidPrice"] == "3000.00"
    assert e.replay.next_event_ms == e.next_step_ms == NOW + 100  # a sleeping clock wakes for the next line
    e.advance(NOW + 7999)
    assert (b.mark, b.funding_rate) == (3000.5, Decimal("0.00020000"))
    assert [f["p"] for f in frames(e, "@markPrice@1s")] == ["2999.50000000", "3000.50000000"]
    assert e.state("main", "ETHUSDC")["positions"]["ETHUSDC"]["funding"] == "0.00000000"
    e.advance(NOW + 8000)  # the recorded next funding time: -0.4 x 3000.5 x 0.0002
    assert e.state("main", "ETHUSDC")["positions"]["ETHUSDC"]["funding"] == "-0.24004000"
    assert b.funding_history[-1]["fundingTime"] == NOW + 8000
    e.advance(NOW + 9000)
    assert e.next_funding_ms == NOW + 8000 + 8 * 3600_000 and e.replay.done
    e.drain()
    e.advance(NOW + 3600_000)  # after the last line: the book and the mark hold still, silent
    assert e.drain() == [] and e.book_ticker(b)["bidPrice"] == "3001.00" and b.mark == 3001.0
    assert e.next_step_ms == NOW + 3600_000 + e.step_ms  # done: it still wakes every step, for what comes
    assert e.state("main", "ETHUSDC")["replay"]["lines_applied"] == 5


def test_a_malformed_line_is_counted_and_skipped_with_a_clear_log(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    good = [bt(dt, "3000.00", "1.000", f"3000.{dt // 1000:02d}", "1.000") for dt in range(1000, 6000, 1000)]
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb") as gz:  # a recorder killed after a flush
        gz.write(json.dumps(good[3]).encode() + b"\n")
        gz.flush()
        flushed = buf.tell()
        gz.write(json.dumps(good[4]).encode() + b"\n")
    rec = write_recording(tmp_path / "rec", {"ETHUSDC": [
        [bt(0, "3000.00", "1.000", "3000.01", "1.000"), b"{not json\n", good[0],
         bt(1500, "3000.005", "1.000", "3000.02", "1.000"), good[1],
         {**bt(2500, "90000.0", "1.000", "90000.1", "1.000"), "d": {**bt(2500, "90000.0", "1.000", "90000.1",
                                                                     "1.000")["d"], "s": "BTCUSDT"}},
         good[2]], []]})
    (rec / "ETHUSDC" / "ETHUSDC-20241130T010000.000Z.jsonl.gz").write_bytes(buf.getvalue()[:flushed + 3])
    e = Engine(SimConfig(replay=str(rec)), now_ms=NOW)
    e.advance(NOW + 10_000)
    view = e.replay.view()
    assert (view["malformed"], view["cut_short"]) == (3, 1)
    assert view["lines_applied"] == 4 + 1   # the good lines (the one off the tick was counted applied too)
    assert e.book_ticker(e.books["ETHUSDC"])["askPrice"] == "3000.04"  # the good lines, the cut file's first
    logs = [r.getMessage() for r in caplog.records]
    first = rec / "ETHUSDC" / "ETHUSDC-20241130T000000.000Z.jsonl.gz"
    assert any(f"line 2 of {first}: not JSON" in m for m in logs), logs
    assert any(f"line 4 of {first}" in m and "'3000.005'" in m and "tick 0.01" in m for m in logs), logs
    assert any("is cut short after line" in m for m in logs), logs
    assert any(f"line 6 of {first}" in m and "of symbol 'BTCUSDT'" in m for m in logs), logs   # another's data


def test_a_mark_frame_with_a_rate_or_next_funding_time_that_is_not_one_is_counted_and_skipped(tmp_path, caplog):
    """A recorded funding rate of 500 % an interval, a rate that is not a number, a next funding time
    in 1970 or not a time: each such frame is malformed, counted and skipped (its mark too), not applied
    as the market's funding nor passed over with the rate of the frame before."""
    caplog.set_level(logging.WARNING)
    bad_rate, junk_rate, nan_rate = mark(2000, "3001.00000000", "5.0", 8000), mark(3000, "3002.0", "x", 8000), \
        mark(3500, "3002.5", "NaN", 8000)
    past, junk_t = mark(4000, "3003.0", "0.0002", 8000), mark(5000, "3004.0", "0.0002", 8000)
    past["d"]["T"], junk_t["d"]["T"] = 1, "soon"
    rec = write_recording(tmp_path / "rec", {"ETHUSDC": [[
        mark(0, "3000.00000000", "0.00010000", 8000), bt(100, "3000.00", "1.000", "3000.02", "1.000"),
        bad_rate, junk_rate, nan_rate, past, junk_t, mark(6000, "3005.00000000", "0.00030000", 8000)]]})
    e = Engine(SimConfig(replay=str(rec)), now_ms=NOW)
    e.watch("ethusdc@markPrice@1s")
    b = e.books["ETHUSDC"]
    e.advance(NOW + 5500)
    assert (b.mark, b.funding_rate, e.next_funding_ms) == (3000.0, Decimal("0.00010000"), NOW + 8000)
    e.advance(NOW + 6000)
    assert (b.mark, b.funding_rate) == (3005.0, Decimal("0.00030000"))
    assert [f["p"] for f in frames(e, "@markPrice@1s")] == ["3000.00000000", "3005.00000000"]
    assert e.replay.view()["malformed"] == 5
    logs = " ".join(r.getMessage() for r in caplog.records)
    for said in ("r='5.0' is not a funding rate", "r='x'", "r='NaN'", "T=1 is not a next funding time",
                 "T='soon'"):
        assert said in logs, (said, logs)


def test_gaps_missing_and_empty_files_are_said_and_counted(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    rec = write_recording(tmp_path / "rec", {"ETHUSDC": [
        [bt(0, "3000.00", "1.000", "3000.01", "1.000"), bt(1000, "3000.00", "1.000", "3000.02", "1.000")],
        [],   # a file without a line
        [bt(301_000, "3000.00", "1.000", "3000.03", "1.000")]]})   # five minutes later
    manifest = json.loads((rec / "manifest.json").read_text())
    listed = sorted(f"ETHUSDC/{p.name}" for p in (rec / "ETHUSDC").iterdir())
    manifest["files"] = {"ETHUSDC": [*listed, "ETHUSDC/ETHUSDC-20241130T030000.000Z.jsonl.gz"]}   # one deleted
    (rec / "manifest.json").write_text(json.dumps(manifest))
    e = Engine(SimConfig(replay=str(rec)), now_ms=NOW)
    e.advance(NOW + 400_000)
    view = e.replay.view()
    assert (view["gaps"], view["empty_files"], view["missing_files"]) == (1, 1, 1)
    logs = " | ".join(r.getMessage() for r in caplog.records)
    assert "300 s without a line" in logs and "holds no readable line" in logs and "which is not there" in logs
    from simulate.table import replay_line
    assert "1 gaps" in replay_line(view) and "1 missing files" in replay_line(view)


def test_a_missing_or_foreign_directory_or_symbol_is_a_clear_error(tmp_path):
    with pytest.raises(RecordingError, match=r"no recording at .*nope \(the directory does not exist\)"):
        Engine(SimConfig(replay=str(tmp_path / "nope")))
    with pytest.raises(RecordingError, match=r"no recording at .*nope"):
        SimServer(config={"replay": str(tmp_path / "nope")})
    (tmp_path / "empty").mkdir()
    with pytest.raises(RecordingError, match="holds no manifest.json: not a recording"):
        Engine(SimConfig(replay=str(tmp_path / "empty")))
    rec = write_recording(tmp_path / "rec", {"ETHUSDC": [[bt(0, "3000.00", "1.000", "3000.01", "1.000")]]})
    with pytest.raises(RecordingError, match=r"SOLUSDT not in the recording .* \(it holds ETHUSDC\)"):
        Engine(SimConfig(replay=str(rec)), symbols=["SOLUSDT"])
    manifest = json.loads((rec / "manifest.json").read_text())
    (rec / "manifest.json").write_text(json.dumps({**manifest, "end_ms": "soon"}))   # (read as a killed recorder's)
    with pytest.raises(RecordingError, match=r"'end_ms' must be a time in ms \(an integer\) or null, got 'soon'"):
        Engine(SimConfig(replay=str(rec)))
    (rec / "manifest.json").write_text(json.dumps(manifest))
    coarse = {"symbol": "ETHUSDC", "base_asset": "ETH", "quote_asset": "USDC", "tick_size": "0.10"}
    with pytest.raises(RecordingError, match=r"recorded a='3000.01' .*tick_size 0.10"):
        Engine(SimConfig(replay=str(rec), symbols=[coarse]))
    proc = subprocess.run([sys.executable, "-m", "fleet.sim", "--replay", str(tmp_path / "nope")], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "no recording at" in proc.stderr and "nope" in proc.stderr


def test_a_recorded_symbol_settling_every_4_hours_is_listed_so_and_its_interval_is_not_changed(tmp_path):
    """The step of the recorded next funding times after a settlement is the symbol's interval: it
    settles on it past the recording's last time, and fundingInfo lists it as Binance's does."""
    h4 = 4 * 3600_000
    rec = write_recording(tmp_path / "rec", {"ETHUSDC": [
        [mark(0, "3000.00000000", "0.00010000", 8000), bt(100, "3000.00", "1.000", "3000.02", "1.000")],
        [mark(9000, "3000.00000000", "0.00010000", 8000 + h4)]]})
    e = Engine(SimConfig(replay=str(rec)), now_ms=NOW)
    assert e.funding_info() == []
    e.set_position("main", "ETHUSDC", "0.400", "3000", NOW)
    e.advance(NOW + 9000)
    b = e.books["ETHUSDC"]
    assert b.funding_interval_ms == h4 and [r["fundingIntervalHours"] for r in e.funding_info()] == [4]
    e.advance(NOW + 8000 + 2 * h4)
    assert [h["fundingTime"] - NOW for h in b.funding_history[-3:]] == [8000, 8000 + h4, 8000 + 2 * h4]
    with pytest.raises(ValueError, match="recording"):
        e.set_funding_interval("ETHUSDC", 1, e.now_ms)


def test_the_replayed_market_refuses_a_jump(tmp_path):
    rec = write_recording(tmp_path / "rec", {"ETHUSDC": [[bt(0, "3000.00", "1.000", "3000.01", "1.000")]]})
    e = Engine(SimConfig(replay=str(rec)), now_ms=NOW)
    with pytest.raises(SimApiError, match="replays a recording"):
        e.jump("ETHUSDC", 1.0, NOW)
    assert e.book_ticker(e.books["ETHUSDC"])["bidPrice"] == "3000.00"


def test_a_replayed_market_pushes_kline_streams_every_250_ms_and_each_closed_candle_once(tmp_path):
    rec = write_recording(tmp_path / "rec", {"ETHUSDC": [
        [mark(0, "3000.00000000", "0.00010000", 8000), bt(100, "3000.00", "1.000", "3000.02", "1.000"),
         agg(200, "3000.02", "0.500", False), agg(300, "3000.00", "0.250", True),
         bt(61_000, "3001.00", "1.000", "3001.02", "1.000")]]})
    e = Engine(SimConfig(replay=str(rec)), now_ms=NOW)
    e.watch("ethusdc@kline_1m")
    e.advance(NOW + 1000)
    opens = frames(e, "@kline_1m")
    assert 4 <= len(opens) <= 5 and all(f["k"]["t"] == NOW and f["k"]["x"] is False for f in opens)
    assert opens[-1]["k"]["n"] == 2 and opens[-1]["k"]["v"] == "0.750"   # the recorded trades
    e.advance(NOW + 61_500)
    closed = [f for f in frames(e, "@kline_1m") if f["k"]["x"]]
    assert [(f["k"]["t"], f["k"]["n"]) for f in closed] == [(NOW, 2)]


def test_a_receive_time_stepped_ahead_on_one_line_is_skipped_not_followed(tmp_path):
    """One line's receive time a year ahead of its event: every later line was held at it (out of
    order), the market stood still for the rest of the replay, and a killed recorder's recording (no
    end in its manifest) ran to it. It is malformed; a stall of the recorder (lines late, one after
    another) and an event time off on one line are not."""
    from fleet.sim.recording import ReadStats, Recording

    books = [bt(dt, "3000.00", "1.000", f"3000.{1 + dt // 1000:02d}", "1.000") for dt in range(0, 20_000, 500)]
    books[10]["r"] += 365 * 86_400_000
    books[20]["d"]["T"] += 3_600_000                      # an event time an hour ahead on one line
    for b in books[30:]:                                   # the recorder stalled 90 s: later lines came late
        b["r"] += 90_000
    rec = write_recording(tmp_path / "rec", {"ETHUSDC": [books]})
    stats = ReadStats()
    lines = list(Recording(rec).lines("ETHUSDC", stats))
    assert stats.malformed == 1 and stats.out_of_order < len(books) // 4
    assert len(lines) == len(books) - 1 - stats.duplicates   # (the hour-ahead book is put after later ones)
    assert Recording(rec).last_ms("ETHUSDC") == books[-1]["r"]
    e = Engine(SimConfig(replay=str(rec)), now_ms=NOW)
    e.advance(NOW + 120_000)
    assert e.book_ticker(e.books["ETHUSDC"])["askPrice"] == "3000.20"   # the market went on to the last line


def test_ids_that_start_again_inside_the_range_read_are_read_when_their_events_are_later(tmp_path):
    """A simulator restarted on its port numbers its frames from the same start: the recorder wrote
    them all, and the reader dropped them as read already (92 of 331). Ids in the range read, at a
    later exchange time, start a new range; a copied file (the same ids at the same times) is still
    skipped."""
    from fleet.sim.recording import ReadStats, Recording

    before = [bt(dt, "3000.00", "1.000", "3000.01", "1.000") for dt in range(0, 5_000, 100)]
    after = [bt(dt, "3000.00", "1.000", "3000.02", "1.000") for dt in range(8_000, 12_000, 100)]
    for i, b in enumerate(before + after):
        b["d"]["u"] = 1_000_000 + i % len(before)   # the same ids again after the restart
    copies = before[:20] + before[-20:]   # a copy of lines from before the restart (below and above its ids)
    rec = write_recording(tmp_path / "rec", {"ETHUSDC": [before + after, copies]})
    stats = ReadStats()
    lines = list(Recording(rec).lines("ETHUSDC", stats))
    assert len(lines) == len(before) + len(after) and stats.duplicates == len(copies)


def test_a_silent_end_a_lost_mark_stream_and_the_recorder_s_own_losses_are_said(tmp_path):
    """The recorder ran 75 s past its last line, and its /market connection (marks, trades) was lost 67 s
    while books came: the replay said 'nothing skipped, no gap over a minute'. Nor did it say the
    reconnects and unreadable frames the recorder counted in its manifest."""
    from fleet.sim.recording import ReadStats, Recording
    from simulate.table import replay_line

    books = [bt(dt, "3000.00", "1.000", "3000.01", "1.000") for dt in range(0, 100_000, 1_000)]
    marks = [mark(dt, "3000.00", "0.0001", 3_600_000) for dt in range(0, 10_000, 1_000)]
    marks += [mark(dt, "3000.00", "0.0001", 3_600_000) for dt in range(80_000, 100_000, 1_000)]
    rec = write_recording(tmp_path / "rec", {"ETHUSDC": [sorted(books + marks, key=lambda x: x["r"])]})
    manifest = json.loads((rec / "manifest.json").read_text())
    (rec / "manifest.json").write_text(json.dumps({**manifest, "end_ms": T0 + 99_000 + 75_000, "reconnects": 2,
                                                   "malformed_frames": 3}))
    stats = ReadStats()
    list(Recording(rec).lines("ETHUSDC", stats))
    assert stats.gaps == 2   # the marks' 70 s, the end's 75 s
    e = Engine(SimConfig(replay=str(rec)), now_ms=NOW)
    e.advance(NOW + 200_000)
    said = replay_line(e.replay.view())
    assert "2 gaps" in said and "2 recorder reconnects" in said and "3 recorder malformed" in said, said


def test_a_manifest_ending_before_its_first_line_is_refused_as_fleet_simulate_refuses_it(tmp_path):
    rec = write_recording(tmp_path / "rec", {"ETHUSDC": [[bt(0, "3000.00", "1.000", "3000.01", "1.000"),
                                                          bt(500, "3000.00", "1.000", "3000.01", "2.000")]]})
    manifest = json.loads((rec / "manifest.json").read_text())
    (rec / "manifest.json").write_text(json.dumps({**manifest, "end_ms": T0 - 1}))
    with pytest.raises(RecordingError, match=rf"its manifest's end \({T0 - 1}\) is not after its first line \({T0}\)"):
        Engine(SimConfig(replay=str(rec)))
    proc = subprocess.run([sys.executable, "-m", "fleet", "sim", "--json", "--replay", str(rec)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stdout == "" and "is not after its first line" in proc.stderr, proc.stderr
    (rec / "manifest.json").write_text(json.dumps({**manifest, "end_ms": T0 + 500}))
    assert Engine(SimConfig(replay=str(rec))).replay is not None
