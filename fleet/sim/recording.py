"""Recordings of Binance's public market streams: the files' format, the writer and the reader.

The format is documented in docs/recording.md. A recording is a directory::

    manifest.json                                   what, where from, when (format version 1)
    ETHUSDC/ETHUSDC-20261201T130000.123Z.jsonl.gz   one symbol's frames from that receive time on
    ETHUSDC/ETHUSDC-20261201T140000.004Z.jsonl.gz   rolled at each whole roll period (UTC)
    BTCUSDT/...

Each line is one frame: ``{"r": <receive time, ms since the epoch>, "s": <stream name>, "d": <the
frame's raw data object>}``. ``r`` never decreases within a recording. The reader yields one
symbol's lines in file order, or every symbol's merged by receive time (``heapq.merge``); a line it
cannot read is logged (the file, the line, why), counted and skipped, and so is a file cut short.

No sockets here: the recorder (``simulate/record.py``) owns the connections, the replay
(:mod:`fleet.sim.replay`) the engine. Standard library and ``orjson`` only.
"""

from __future__ import annotations

import errno
import gzip
import heapq
import itertools
import logging
import os
import re
import zlib
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Iterable, Iterator

import orjson

from fleet.sim.config import SimConfigError

log = logging.getLogger("fleet.sim.recording")

FORMAT = "mmfleet.recording"
VERSION = 1
MANIFEST = "manifest.json"
HOUR_MS = 3_600_000
STREAMS = ("bookTicker", "aggTrade", "markPrice@1s")  # what the recorder records, per symbol
BOOK, TRADE, MARK = "bookTicker", "aggTrade", "markPrice"
KINDS = {"bookTicker": BOOK, "aggTrade": TRADE, "markPrice@1s": MARK, "markPrice": MARK}
SYMBOL_RE = re.compile(r"^[A-Z0-9]{2,30}$")
FILE_RE = re.compile(r"^(?P<symbol>[A-Z0-9]{2,30})-(?P<start>\d{8}T\d{6}\.\d{3}Z)\.jsonl\.gz$")
LOGGED_PER_RECORDING = 20  # malformed lines logged one by one; past that, counted only
GAP_MS = 60_000  # a symbol's lines this far apart are a gap the replay's book holds still through: said
# How far (receive ms) a frame may arrive after one that follows it on the exchange's clock: books come
# over /public, trades over /market, and aggTrade is pushed every 100 ms, so the book a trade changed is
# often received first. The reader puts a symbol's lines back in the exchange's order within this.
REORDER_MS = 1_000
MAX_ID_RANGES = 64   # id ranges of a kind the reader keeps (each restart of the exchange's ids starts one)
# A line received this much later after its event than the lines around it was not received then (a
# receive time stepped ahead on one line: every later line was held at it, the market frozen for the
# rest of the replay, and a killed recorder's recording ran to it): skipped as malformed
RECEIVE_STEP_MS = 60_000
_RANK = {TRADE: 0, MARK: 1, BOOK: 2}  # at one exchange time: the trade, then the book it changed

# One line as read: (receive ms, kind, SYMBOL, raw data object, file, line number)
Line = tuple[int, str, str, dict[str, Any], Path, int]


class RecordingError(SimConfigError):
    """A recording that cannot be replayed or written; the message names the path and what is wrong."""


def file_name(symbol: str, start_ms: int) -> str:
    """``ETHUSDC-20261201T130000.123Z.jsonl.gz``: the symbol and its first line's receive time (UTC)."""
    t = datetime.fromtimestamp(start_ms / 1000, tz=timezone.utc)
    return f"{symbol}-{t:%Y%m%dT%H%M%S}.{start_ms % 1000:03d}Z.jsonl.gz"


def write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    """Replace ``manifest.json`` atomically (a reader never sees half of one)."""
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2) + b"\n")
    os.replace(tmp, directory / MANIFEST)


# -- writing ------------------------------------------------------------------------------------


class _SymbolFile:
    """One symbol's open gzip file and when it rolls."""

    __slots__ = ("path", "fh", "ends_ms", "lines")

    def __init__(self, path: Path, ends_ms: int) -> None:
        self.path = path
        self.fh: IO[bytes] = gzip.open(path, "wb", compresslevel=6)
        self.ends_ms = ends_ms
        self.lines = 0


class RecordingWriter:
    """Writes one recording: ``start()``, ``write()`` per frame, ``close()`` (which must run: it writes
    the gzip trailers and the final manifest). ``flush_ms``: a killed recorder loses at most this much."""

    def __init__(self, directory: str | Path, symbols: Iterable[str], *, source: str, urls: Iterable[str] = (),
                 streams: Iterable[str] = STREAMS, roll_ms: int = HOUR_MS, flush_ms: int = 5_000) -> None:
        if roll_ms < 1000:
            raise RecordingError(f"roll period must be at least 1 s, got {roll_ms} ms")
        self.directory = Path(directory)
        self.symbols = list(symbols)
        self.streams = list(streams)
        self.roll_ms = roll_ms
        self.flush_ms = flush_ms
        self.manifest: dict[str, Any] = {
            "format": FORMAT, "version": VERSION, "symbols": self.symbols, "streams": self.streams,
            "source": source, "urls": list(urls), "roll_ms": roll_ms, "start_ms": None, "end_ms": None,
            "lines": {s: {k: 0 for k in self.streams} for s in self.symbols}, "files": {s: [] for s in self.symbols}}
        self._open: dict[str, _SymbolFile] = {}
        self._last_r = 0
        self._next_flush = 0

    def start(self, now_ms: int) -> None:
        """Create the directory (it must be new or empty) and the first manifest (``end_ms`` null)."""
        d = self.directory
        if d.exists() and not d.is_dir():
            raise RecordingError(f"{d} is a file, not a directory")
        if d.is_dir() and any(d.iterdir()):
            raise RecordingError(f"{d} is not empty: record into a new directory")
        try:
            d.mkdir(parents=True, exist_ok=True)
            for s in self.symbols:
                (d / s).mkdir(exist_ok=True)
            self.manifest["start_ms"] = now_ms
            write_manifest(d, self.manifest)
        except OSError as exc:
            raise RecordingError(f"cannot record into {d}: {exc.strerror or type(exc).__name__}") from None
        self._next_flush = now_ms + self.flush_ms

    def write(self, r: int, symbol: str, stream: str, data: dict[str, Any]) -> None:
        """One frame of ``symbol`` received at ``r`` (held at the last time if the wall clock stepped back)."""
        if r < self._last_r:
            r = self._last_r
        self._last_r = r
        f = self._open.get(symbol)
        if f is None or r >= f.ends_ms:
            f = self._roll(symbol, r)
        f.fh.write(orjson.dumps({"r": r, "s": stream, "d": data}) + b"\n")
        f.lines += 1
        counts = self.manifest["lines"][symbol]
        kind = stream.partition("@")[2]
        counts[kind] = counts.get(kind, 0) + 1
        if r >= self._next_flush:
            self.flush(r)

    def _roll(self, symbol: str, r: int) -> _SymbolFile:
        old = self._open.pop(symbol, None)
        if old is not None:
            old.fh.close()
        name = file_name(symbol, r)
        f = _SymbolFile(self.directory / symbol / name, r - r % self.roll_ms + self.roll_ms)
        self._open[symbol] = f
        self.manifest["files"][symbol].append(f"{symbol}/{name}")
        write_manifest(self.directory, self.manifest)
        return f

    @property
    def next_flush_ms(self) -> int:
        return self._next_flush

    def flush(self, now_ms: int) -> None:
        """Push the compressed lines so far to the files (a sync flush: readable if the process dies). A
        file no longer in its directory (the recording removed meanwhile) is an OSError: every frame since
        went nowhere, and every later one would."""
        for f in self._open.values():
            f.fh.flush()
            if os.fstat(f.fh.fileobj.fileno()).st_nlink == 0:   # type: ignore[attr-defined]
                raise FileNotFoundError(errno.ENOENT, f"{f.path} was removed while it was written")
        self._next_flush = now_ms + self.flush_ms

    def close(self, end_ms: int, **extra: Any) -> dict[str, Any]:
        """Close every file (gzip trailer included) and write the final manifest with ``end_ms``. A file
        the disk refuses to finish is named in the manifest's ``unfinished`` (its lines up to the last
        flush stay readable); a manifest it refuses is a :class:`RecordingError`."""
        unfinished = []
        for f in self._open.values():
            try:
                f.fh.close()
            except OSError as exc:
                unfinished.append(f"{f.path.relative_to(self.directory)}: {exc}")
                log.error("recording: cannot finish %s: %s", f.path, exc)
        self._open.clear()
        self.manifest["end_ms"] = end_ms
        self.manifest.update(extra)
        if unfinished:
            self.manifest["unfinished"] = unfinished
        try:
            write_manifest(self.directory, self.manifest)
        except OSError as exc:
            raise RecordingError(f"cannot write {self.directory / MANIFEST}: {exc}") from exc
        return self.manifest


# -- reading ------------------------------------------------------------------------------------


class ReadStats:
    """What a reader skipped: malformed lines, lines out of time order, files cut short, other streams,
    frames read twice (a trade id or a book update id not after the last one)."""

    def __init__(self, quiet: bool = False) -> None:
        self.malformed = 0
        self.out_of_order = 0
        self.cut_short = 0
        self.ignored = 0
        self.duplicates = 0
        self.gaps = 0
        self.missing_files = 0
        self.empty_files = 0
        self.quiet = quiet
        self._said = 0
        self.first_bad: str | None = None   # the first malformed line and why (an error naming what is wrong)

    def say(self, what: str, *args: Any) -> None:
        """A gap, a missing or an empty file: logged (the first 20 of a reading), counted by the caller."""
        self._said += 1
        if not self.quiet and self._said <= LOGGED_PER_RECORDING:
            log.warning("recording: " + what, *args)

    def duplicate(self, path: Path, lineno: int, why: str) -> None:
        self.duplicates += 1
        if not self.quiet and self.duplicates <= LOGGED_PER_RECORDING:
            log.warning("recording: skipped line %d of %s, read already: %s", lineno, path, why)

    def bad(self, path: Path, lineno: int, why: str) -> None:
        self.malformed += 1
        if self.first_bad is None:
            self.first_bad = f"line {lineno} of {path.name if isinstance(path, Path) else path}: {why}"
        if self.quiet:
            return
        if self.malformed <= LOGGED_PER_RECORDING:
            log.warning("recording: skipped malformed line %d of %s: %s", lineno, path, why)
            if self.malformed == LOGGED_PER_RECORDING:
                log.warning("recording: %d malformed lines so far; further ones are counted only", self.malformed)

    def view(self) -> dict[str, int]:
        return {"malformed": self.malformed, "out_of_order": self.out_of_order, "cut_short": self.cut_short,
                "ignored": self.ignored, "duplicates": self.duplicates, "gaps": self.gaps,
                "missing_files": self.missing_files, "empty_files": self.empty_files}


class Recording:
    """A recording directory opened for reading: its manifest checked, its files found per symbol."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = d = Path(directory)
        if not d.exists():
            raise RecordingError(f"replay: no recording at {d} (the directory does not exist)")
        if not d.is_dir():
            raise RecordingError(f"replay: {d} is a file; give the recording's directory")
        manifest_path = d / MANIFEST
        try:
            self.manifest = orjson.loads(manifest_path.read_bytes())
        except FileNotFoundError:
            raise RecordingError(f"replay: {d} holds no {MANIFEST}: not a recording (docs/recording.md)") from None
        except (OSError, orjson.JSONDecodeError) as exc:
            raise RecordingError(f"replay: cannot read {manifest_path}: {exc}") from exc
        self.symbols = self._check_manifest(manifest_path)

    def _check_manifest(self, path: Path) -> list[str]:
        m = self.manifest
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise RecordingError(f"replay: {path} is not a recording manifest (format must be {FORMAT!r})")
        if m.get("version") != VERSION:
            raise RecordingError(f"replay: {path} has format version {m.get('version')!r}; this simulator "
                                 f"reads version {VERSION}")
        symbols = m.get("symbols")
        if not isinstance(symbols, list) or not symbols or not all(
                isinstance(s, str) and SYMBOL_RE.fullmatch(s) for s in symbols):
            raise RecordingError(f"replay: {path}: 'symbols' must be a non-empty list of symbols like ETHUSDC, "
                                 f"got {symbols!r}")
        for key in ("start_ms", "end_ms"):   # (an end not a time read as a killed recorder's: none)
            value = m.get(key)
            if value is not None and (type(value) is not int or value < 0):
                raise RecordingError(f"replay: {path}: {key!r} must be a time in ms (an integer) or null, "
                                     f"got {str(value)[:40]!r}")
        return list(symbols)

    def files(self, symbol: str) -> list[Path]:
        """The symbol's files in time order (their names sort by start time)."""
        folder = self.directory / symbol
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.iterdir() if (m := FILE_RE.fullmatch(p.name)) and m["symbol"] == symbol)

    def last_ms(self, symbol: str) -> int | None:
        """The receive time of the symbol's last readable line (its last file that holds one), or None:
        how long a recording whose recorder was killed (no ``end_ms``) runs."""
        prefix = symbol.lower() + "@"
        for path in reversed(self.files(symbol)):
            last = None
            quiet = ReadStats(quiet=True)
            for line in _plausible(_read_file(path, prefix, symbol, quiet), quiet):
                last = line[0] if last is None or line[0] > last else last
            if last is not None:
                return last
        return None

    def lines(self, symbol: str, stats: ReadStats) -> Iterator[Line]:
        """One symbol's readable lines in the exchange's order (:func:`_exchange_order`), each frame once
        (:func:`_once`); ``r`` never decreases."""
        return _once(_exchange_order(self._received(symbol, stats)), stats)

    def _received(self, symbol: str, stats: ReadStats) -> Iterator[Line]:
        """One symbol's readable lines, file after file; ``r`` held at the last value if it steps back.
        A file the manifest lists that is not there, a file without a line and a gap of over a minute
        between two lines are logged and counted (the replay's book holds still through them)."""
        last = 0
        prefix = symbol.lower() + "@"
        files = self.files(symbol)
        listed = self.manifest.get("files")
        if isinstance(listed, dict) and isinstance(listed.get(symbol), list):
            for name in listed[symbol]:
                if isinstance(name, str) and not (self.directory / name).is_file():
                    stats.missing_files += 1
                    stats.say("%s lists %s, which is not there", MANIFEST, self.directory / name)
        held = {path: 0 for path in files}   # each file's lines let through
        last_mark = 0   # markPrice@1s, a frame a second: its /market connection lost while books came
        for line in _plausible((x for path in files for x in _read_file(path, prefix, symbol, stats)), stats):
            held[line[4]] += 1
            if line[0] < last:
                stats.out_of_order += 1
                line = (last, *line[1:])
            elif last and line[0] - last > GAP_MS:
                stats.gaps += 1
                stats.say("%s: %.0f s without a line before line %d of %s", symbol, (line[0] - last) / 1000,
                          line[5], line[4])
                last_mark = line[0]
            if line[1] == MARK:
                if last_mark and line[0] - last_mark > GAP_MS:
                    stats.gaps += 1
                    stats.say("%s: %.0f s without a markPrice line before line %d of %s", symbol,
                              (line[0] - last_mark) / 1000, line[5], line[4])
                last_mark = line[0]
            last = line[0]
            yield line
        end = self.manifest.get("end_ms")
        if type(end) is int and last and end - last > GAP_MS:   # (the recorder ran on, receiving nothing)
            stats.gaps += 1
            stats.say("%s: %.0f s without a line before the recording's end", symbol, (end - last) / 1000)
        for path in files:
            if held[path] == 0:
                stats.empty_files += 1
                stats.say("%s holds no readable line of %s", path, symbol)

    def events(self, symbols: Iterable[str], stats: ReadStats) -> Iterator[Line]:
        """Every symbol's lines merged in receive-time order (ties: the order of ``symbols``)."""
        return heapq.merge(*(self.lines(s, stats) for s in symbols), key=lambda line: line[0])


def _exchange_ms(line: Line) -> int | None:
    """The exchange's time of a line's event: a trade's or a book change's transaction time ``T`` (else
    its event time ``E``), a mark's ``E`` (its ``T`` is the next funding time)."""
    d = line[3]
    t = d.get("E") if line[1] == MARK else d.get("T", d.get("E"))
    return t if type(t) is int else None


def _exchange_order(lines: Iterator[Line], window_ms: int = REORDER_MS) -> Iterator[Line]:
    """Lines received in order, put back in the exchange's: by the event's exchange time (a trade before
    the book of the same time, which it changed), a line without one where it was received. Once the
    oldest line held was received ``window_ms`` before the line just read, it goes, with every line
    held that the exchange's times put before it, each at the oldest held line's receive time (so a
    trade comes before the book it changed, at the time that book was received; no line moves more
    than ``window_ms`` earlier, and receive times stay in order). A line later than that by the
    exchange's times comes where it was received."""
    heap: list[tuple[int, int, int, Line]] = []
    pending: deque[tuple[int, int]] = deque()   # (seq, r) of lines held, in receive order
    gone: set[int] = set()
    key, seq = 0, 0

    def release_through(front: int) -> Iterator[Line]:
        at = pending[0][1]
        while True:
            _, _, n, line = heapq.heappop(heap)
            gone.add(n)
            yield (at, *line[1:]) if at < line[0] else line
            if n == front:
                break
        while pending and pending[0][0] in gone:
            gone.discard(pending.popleft()[0])

    for line in lines:
        while pending and pending[0][1] + window_ms < line[0]:
            yield from release_through(pending[0][0])
        t = _exchange_ms(line)
        key = t if t is not None else key
        heapq.heappush(heap, (key, _RANK[line[1]], seq, line))
        pending.append((seq, line[0]))
        seq += 1
    while pending:
        yield from release_through(pending[0][0])


def _once(lines: Iterator[Line], stats: ReadStats) -> Iterator[Line]:
    """Each frame once: a trade whose aggregate id ``a``, or a book whose update id ``u``, falls in a
    range of ids already read, its event no later than the latest of that range, is a frame read twice
    (a file copied, a line repeated) and is skipped, counted. An id below the current range, or in a
    range with a later event, starts a new one (the exchange's ids started again: a simulator restarted
    on the port numbered its frames from the same start, and they were dropped as read): read. The
    ranges before stay known (a copy of lines from before the restart is still a copy)."""
    seen: dict[str, list[list[int]]] = {}   # per kind, ranges [low, high, latest exchange time], newest last
    for line in lines:
        kind = line[1]
        if kind != MARK:
            name = "a" if kind == TRADE else "u"
            ident = line[3].get(name)
            if type(ident) is int:
                at = _exchange_ms(line)
                ranges = seen.setdefault(kind, [])
                if any(lo <= ident <= hi and (at is None or at <= latest) for lo, hi, latest in ranges):
                    stats.duplicate(line[4], line[5], f"{kind} {name}={ident} was read already")
                    continue
                cur = ranges[-1] if ranges else None
                if cur is not None and ident > cur[1]:
                    cur[1] = ident
                    cur[2] = max(cur[2], at) if at is not None else cur[2]
                else:   # the first, or ids started again
                    ranges.append([ident, ident, at if at is not None else -1])
                    del ranges[:-MAX_ID_RANGES]
        yield line


def _plausible(lines: Iterable[Line], stats: ReadStats) -> Iterator[Line]:
    """The lines but one whose receive time stepped ahead of its event by over :data:`RECEIVE_STEP_MS`
    against both the line before and the line after it (the last line: the one before), skipped as
    malformed. A stall of the recorder (many lines late) or an event time off on one line is not it."""
    before: int | None = None         # the lag (receive less exchange time) of the last line let through
    held: tuple[Line, int | None] | None = None

    def stepped(lag: int | None, after: int | None) -> bool:
        return (lag is not None and before is not None and lag - before > RECEIVE_STEP_MS
                and (after is None or lag - after > RECEIVE_STEP_MS))

    for line in itertools.chain(lines, (None,)):   # (None: the end, the last line judged by the one before)
        at = None if line is None else _exchange_ms(line)
        lag = None if at is None else line[0] - at   # type: ignore[index]
        if held is not None:
            h, h_lag = held
            if (line is None or lag is not None) and stepped(h_lag, lag):
                stats.bad(h[4], h[5], f"received at {h[0]}, {(h_lag - before) / 1000:,.0f} s later after its "   # type: ignore[operator]
                                      f"event than the lines around it: not a receive time")
            else:
                before = h_lag if h_lag is not None else before
                yield h
        held = None if line is None else (line, lag)


def _read_file(path: Path, prefix: str, symbol: str, stats: ReadStats) -> Iterator[Line]:
    lineno = 0
    try:
        with gzip.open(path, "rb") as fh:
            for raw in fh:
                lineno += 1
                line = _parse_line(raw, path, lineno, prefix, symbol, stats)
                if line is not None:
                    yield line
    except (EOFError, OSError, zlib.error) as exc:  # killed mid-write, or not gzip at all
        stats.cut_short += 1
        if not stats.quiet:
            log.warning("recording: %s is cut short after line %d (%s); its remaining lines are skipped",
                        path, lineno, exc)


def _parse_line(raw: bytes, path: Path, lineno: int, prefix: str, symbol: str, stats: ReadStats) -> Line | None:
    if not raw.strip():
        return None
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        stats.bad(path, lineno, f"not JSON ({exc})")
        return None
    if type(obj) is not dict:
        stats.bad(path, lineno, "not a JSON object")
        return None
    r, stream, data = obj.get("r"), obj.get("s"), obj.get("d")
    if type(r) is not int or r < 0:
        stats.bad(path, lineno, f"'r' must be the receive time in ms (an integer), got {r!r}")
        return None
    if type(stream) is not str or type(data) is not dict:
        stats.bad(path, lineno, "'s' must be the stream name and 'd' the frame's data object")
        return None
    if not stream.startswith(prefix):
        stats.bad(path, lineno, f"stream {stream!r} is not one of {symbol}'s")
        return None
    kind = KINDS.get(stream[len(prefix):])
    if kind is None:
        stats.ignored += 1  # another stream (depth, kline...): not replayed
        return None
    if data.get("s", symbol) != symbol:
        stats.bad(path, lineno, f"the frame of {stream!r} is of symbol {data.get('s')!r}")
        return None
    return r, kind, symbol, data, path, lineno
