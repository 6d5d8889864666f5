"""``python -m fleet record``: record Binance's public market streams to a recording directory.

    python -m fleet record --symbols ETHUSDC,BTCUSDT --out DIR [--minutes N] [--ws-url URL]

Per symbol it records bookTicker, aggTrade and markPrice@1s (combined streams, on the 2026 split
layout: /public for books, /market for the rest), each frame's data object with
its local receive time, into gzip JSON-lines files rolled every ``--roll-minutes`` (default 60), plus
a manifest; the format is docs/recording.md. Binance cuts every connection after 24 h: a cut
connection, or one silent for 15 s (markPrice@1s comes every second; 120 s for books alone), is
reopened with back-off (0.5 s doubling to 30 s) and counted. A malformed frame is logged, counted and
skipped. SIGINT/SIGTERM or the end of ``--minutes`` stop it cleanly: the files are closed (nothing
buffered is lost) and the manifest gets its end time. A frame the disk refuses (full, a size limit)
stops it with exit code 1, the error in the manifest. Bad arguments: a message naming the argument
and exit code 2.

The simulator replays a recording as its market: ``python -m fleet sim --replay DIR``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlsplit

import orjson
import websockets
from websockets.asyncio.client import connect

from fleet.binance.streams import market_urls
from fleet.sim.recording import STREAMS, SYMBOL_RE, RecordingError, RecordingWriter

log = logging.getLogger("simulate.record")

BINANCE_WS = "wss://fstream.binance.com"  # the production market streams (binance-usdm.md section 1)
STREAMS_PER_CONNECTION = 100  # well under Binance's 1024 streams per connection, and a short URL
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
LOG_MALFORMED = 10  # malformed frames logged one by one; then every 1,000th
# A connection that carries markPrice@1s hears something every second; one of books only may be quiet
# longer on a calm symbol. Silent past these, it is taken as dead (a server that still answers pings
# but stopped sending) and reopened.
SILENT_MARK_S = 15.0
SILENT_BOOKS_S = 120.0


class UsageError(ValueError):
    """A bad command-line argument; the message names it."""


@dataclass(frozen=True)
class Options:
    symbols: tuple[str, ...]
    out: Path
    minutes: float | None = None
    ws_url: str = BINANCE_WS
    roll_minutes: float = 60.0
    silent_s: float | None = None   # None: SILENT_MARK_S or SILENT_BOOKS_S, by what the connection carries
    unheard_s: float = SILENT_MARK_S * 2   # a symbol with no markPrice frame by then is said (_unheard)


@dataclass
class Counts:
    frames: int = 0
    malformed: int = 0
    reconnects: int = 0
    silent: int = 0   # reconnects because a connection went quiet
    per_url: dict[str, int] = field(default_factory=dict)


class WriteFailed(RecordingError):
    """The disk refused a frame (full, a file-size limit, an I/O error): recording stops, loudly."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--symbols", required=True, help="comma-separated symbols, e.g. ETHUSDC,BTCUSDT")
    parser.add_argument("--out", required=True, help="the recording directory to create (new or empty)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="stop after this many minutes (default: until Ctrl-C / SIGTERM)")
    parser.add_argument("--ws-url", default=BINANCE_WS,
                        help=f"market stream base URL (default {BINANCE_WS}; a simulator's ws://127.0.0.1:PORT)")
    parser.add_argument("--roll-minutes", type=float, default=60.0,
                        help="start a new file per symbol every this many minutes (UTC-aligned; default 60)")
    parser.add_argument("--log-level", default="INFO")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def options_from(args: argparse.Namespace) -> Options:
    """Checked options; a :class:`UsageError` names the bad argument."""
    names = [s.strip().upper() for s in str(args.symbols).split(",") if s.strip()]
    if not names:
        raise UsageError("--symbols: give at least one symbol, e.g. ETHUSDC,BTCUSDT")
    bad = [n for n in names if not SYMBOL_RE.fullmatch(n)]
    if bad:
        raise UsageError(f"--symbols: {', '.join(bad)} is not a symbol (letters and digits, e.g. ETHUSDC)")
    if len(set(names)) != len(names):
        raise UsageError("--symbols: a symbol is named twice")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out: {out} exists and is not an empty directory; record into a new one")
    if args.minutes is not None and not args.minutes > 0:
        raise UsageError(f"--minutes must be positive, got {args.minutes:g}")
    if not 1 <= args.roll_minutes * 60 <= 7 * 86_400:
        raise UsageError(f"--roll-minutes must be from 1 s (1/60) to a week, got {args.roll_minutes:g}")
    try:
        parts = urlsplit(args.ws_url)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:   # a port out of 0-65535 or not a number, a bracket not closed
        parts, port_ok = urlsplit(""), False
    if parts.scheme not in ("ws", "wss") or not parts.hostname or not port_ok:
        raise UsageError(f"--ws-url must be a ws:// or wss:// URL with a host (and a port of 1-65535), "
                         f"got {args.ws_url[:200]!r}")
    if parts.path.strip("/") or parts.query or parts.fragment:   # (/ws: every frame refused, 0 recorded, exit 0)
        raise UsageError(f"--ws-url is the host's base URL, without a path or a query (the recorder adds "
                         f"/public/stream and /market/stream), got {args.ws_url[:200]!r}")
    if str(args.log_level).upper() not in LOG_LEVELS:
        raise UsageError(f"--log-level must be one of {', '.join(LOG_LEVELS)}")
    return Options(tuple(names), out, args.minutes, args.ws_url.rstrip("/"), args.roll_minutes)


def stream_urls(opts: Options) -> list[str]:
    """The combined-stream URLs, on the 2026 split paths (/public for books, /market for the rest)."""
    names = [f"{s.lower()}@{k}" for s in opts.symbols for k in STREAMS]
    urls: list[str] = []
    for i in range(0, len(names), STREAMS_PER_CONNECTION):
        urls += market_urls(opts.ws_url, names[i:i + STREAMS_PER_CONNECTION])
    return urls


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class _Sink:
    """Frames off the sockets into the writer: checked, counted, malformed ones logged and skipped."""

    def __init__(self, writer: RecordingWriter, symbols: Sequence[str], counts: Counts) -> None:
        self.writer = writer
        self.symbols = {s.lower(): s for s in symbols}
        self.kinds = set(STREAMS)
        self.counts = counts
        self.open: set[Any] = set()   # the connections open now

    def frame(self, raw: str | bytes, url: str) -> None:
        r = _now_ms()
        why = None
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            msg, why = None, f"not JSON ({exc})"
        if why is None:
            stream = msg.get("stream") if type(msg) is dict else None
            data = msg.get("data") if type(msg) is dict else None
            sym, _, kind = stream.partition("@") if type(stream) is str else ("", "", "")
            if type(data) is not dict or sym not in self.symbols or kind not in self.kinds:
                why = "not a combined-stream frame of a recorded stream ({\"stream\": ..., \"data\": {...}})"
        if why is None and data.get("s", self.symbols[sym]) != self.symbols[sym]:
            why = f"the data of {stream!r} is of symbol {data.get('s')!r}"
        if why is not None:
            self._malformed(why, raw)
            return
        try:
            self.writer.write(r, self.symbols[sym], stream, data)
        except OSError as exc:   # not a lost connection: every later frame would be lost the same way
            raise WriteFailed(f"cannot write the recording in {self.writer.directory}: {exc}; recording stops "
                              f"(the files up to the last flush are readable)") from exc
        self.counts.frames += 1
        self.counts.per_url[url] = self.counts.per_url.get(url, 0) + 1

    def _malformed(self, why: str, raw: str | bytes) -> None:
        self.counts.malformed += 1
        n = self.counts.malformed
        if n <= LOG_MALFORMED or n % 1000 == 0:
            text = raw if isinstance(raw, str) else raw.decode("utf-8", "backslashreplace")
            log.warning("record: malformed frame %d skipped: %s: %r", n, why, text[:200])


async def _pump(url: str, sink: _Sink, stop: asyncio.Event, silent_s: float | None = None) -> None:
    """One connection's frames into the sink, reopened with back-off whenever it ends or goes silent,
    until ``stop``. A frame the disk refuses ends it (:class:`WriteFailed`)."""
    backoff = BACKOFF_FIRST_S
    silent_s = silent_s or (SILENT_MARK_S if "markPrice" in url else SILENT_BOOKS_S)
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        opened = None
        try:
            async with connect(url, open_timeout=10, ping_interval=20, ping_timeout=20, max_size=1 << 22,
                               close_timeout=2) as ws:
                opened = loop.time()
                sink.open.add(ws)   # (closed with 1000 at the stop; a cancel closed it 1011 "internal error")
                log.info("record: connected %s", url)
                while True:
                    try:
                        raw = await asyncio.wait_for(ws.recv(), silent_s)
                    except asyncio.TimeoutError:
                        sink.counts.silent += 1
                        why = f"no frame for {silent_s:g} s"
                        break
                    sink.frame(raw, url)
                    backoff = BACKOFF_FIRST_S
        except websockets.exceptions.ConnectionClosed as exc:
            why = (f"closed by the server ({exc.rcvd.code})" if exc.rcvd else
                   f"failed here ({exc.sent.code} {exc.sent.reason})" if exc.sent else "closed (no close frame)")
        except (OSError, asyncio.TimeoutError, websockets.exceptions.WebSocketException) as exc:
            why = f"{type(exc).__name__}: {exc}"
        finally:
            if opened is not None:
                sink.open.discard(ws)
        if stop.is_set():
            return
        if opened is not None and loop.time() - opened >= silent_s:
            backoff = BACKOFF_FIRST_S   # a connection that opened and lived was no failure (a quiet market's
            # silence doubled the wait each time: 8 s later, 29 trades made meanwhile were never recorded)
        sink.counts.reconnects += 1
        log.warning("record: %s lost (%s); reconnecting in %.1f s", url, why, backoff)
        try:
            await asyncio.wait_for(stop.wait(), backoff)
        except asyncio.TimeoutError:
            pass
        backoff = min(backoff * 2, BACKOFF_MAX_S)


async def _unheard(writer: RecordingWriter, stop: asyncio.Event, after_s: float = SILENT_MARK_S * 2) -> None:
    """A symbol with no markPrice frame (one a second) ``after_s`` into the run is said once, a WARNING:
    a misspelt or unlisted symbol's streams are accepted and silent, as on Binance, and its connection
    kept alive by the other symbols' frames (it recorded nothing, said only in the summary)."""
    try:
        await asyncio.wait_for(stop.wait(), after_s)
        return
    except asyncio.TimeoutError:
        pass
    for symbol, kinds in writer.manifest["lines"].items():
        if not kinds.get("markPrice@1s"):
            log.warning("record: no markPrice frame of %s in %.0f s: a symbol the exchange does not list (or "
                        "misspelt)? its streams stay silent", symbol, after_s)
    await stop.wait()   # (a task of the recording: one that ended stopped it, 30 s into every run)


async def _flusher(writer: RecordingWriter, stop: asyncio.Event) -> None:
    """The files flushed every ``flush_ms`` even when no frame comes (a burst, then quiet): a recorder
    killed then loses at most that much."""
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), max(writer.next_flush_ms - _now_ms(), 50) / 1000)
        except asyncio.TimeoutError:
            now = _now_ms()
            if now >= writer.next_flush_ms:
                try:
                    writer.flush(now)
                except OSError as exc:
                    raise WriteFailed(f"cannot write the recording in {writer.directory}: {exc}; recording stops "
                                      f"(the files up to the last flush are readable)") from exc


async def record(opts: Options, stop: asyncio.Event | None = None) -> dict[str, Any]:
    """Record until ``stop`` is set or ``opts.minutes`` pass; returns the final manifest."""
    stop = stop or asyncio.Event()
    urls = stream_urls(opts)
    writer = RecordingWriter(opts.out, opts.symbols, source=opts.ws_url, urls=urls,
                             roll_ms=int(opts.roll_minutes * 60_000))
    writer.start(_now_ms())
    counts = Counts()
    sink = _Sink(writer, opts.symbols, counts)
    tasks = [asyncio.create_task(_pump(u, sink, stop, opts.silent_s)) for u in urls]
    tasks.append(asyncio.create_task(_flusher(writer, stop)))
    tasks.append(asyncio.create_task(_unheard(writer, stop, opts.unheard_s)))
    stopped = asyncio.create_task(stop.wait())
    log.info("record: %s into %s (%d connection(s))", ", ".join(opts.symbols), opts.out, len(urls))
    failed: BaseException | None = None
    try:
        await asyncio.wait([stopped, *tasks], timeout=None if opts.minutes is None else opts.minutes * 60,
                           return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.set()
        with contextlib.suppress(asyncio.TimeoutError):   # a normal close (1000), 2 s at most each
            await asyncio.wait_for(asyncio.gather(*(w.close() for w in sink.open), return_exceptions=True), 3)
        for t in (stopped, *tasks):
            t.cancel()
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                failed = failed or result
        extra = {"frames": counts.frames, "malformed_frames": counts.malformed, "reconnects": counts.reconnects,
                 "silent_reconnects": counts.silent}
        if failed is not None:
            extra["error"] = str(failed)
        try:
            manifest = writer.close(_now_ms(), **extra)
        except RecordingError as exc:   # (the manifest too: both said, the first cause first)
            if failed is None:
                raise
            raise RecordingError(f"{failed}; and {exc}") from exc
    if failed is not None:
        raise failed if isinstance(failed, RecordingError) else RecordingError(f"record: {failed!r}")
    if manifest.get("unfinished"):   # the disk refused a file's last lines on the way out
        raise WriteFailed(f"cannot finish {'; '.join(manifest['unfinished'])}: its lines since the last flush "
                          f"are lost")
    return manifest


def _summary(manifest: dict[str, Any]) -> str:
    per = "; ".join(f"{s} " + ", ".join(f"{k} {n}" for k, n in kinds.items())
                    for s, kinds in manifest["lines"].items())
    secs = (manifest["end_ms"] - manifest["start_ms"]) / 1000
    return (f"recorded {manifest['frames']} frames in {secs:.1f} s ({per}); malformed frames skipped: "
            f"{manifest['malformed_frames']}; reconnects: {manifest['reconnects']} "
            f"({manifest['silent_reconnects']} after a silence)")


async def _main(opts: Options) -> dict[str, Any]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):   # (a closed terminal: files finished, not cut)
        if sig != signal.SIGHUP or signal.getsignal(sig) is not signal.SIG_IGN:   # (under nohup: recording on)
            loop.add_signal_handler(sig, stop.set)
    return await record(opts, stop)


def run(args: argparse.Namespace) -> int:
    """The command (``python -m fleet record``): 0 when stopped cleanly, 2 on a bad argument."""
    try:
        opts = options_from(args)
    except UsageError as exc:
        print(f"record: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        manifest = asyncio.run(_main(opts))
    except RecordingError as exc:
        print(f"record: error: {exc}", file=sys.stderr)
        return 1
    print(_summary(manifest), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fleet record", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        options_from(args)
    except UsageError as exc:
        parser.error(str(exc))  # exit code 2, with the usage line
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
