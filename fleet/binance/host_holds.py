"""The IP's holds, shared by every process of this host that talks to one exchange.

Binance counts request weight per IP, answers a request beyond it 429 with ``Retry-After``, and bans an
IP that goes on sending after 429s (418, from 2 minutes to 3 days): a ban stops every cancel and
heartbeat of every agent on the host. Each agent's rate budget learns of a 429 or a ban from its own
answers only, so with many agents on a host each sent on into the hold and took its own 429 (the
simulator bans after 10, as a desk's 50 agents would be). Now the first process told of a hold writes
it here, and every budget of the host reads it before it sends: a 429's ``Retry-After`` or the end of
the minute its weight is spent, and a 418's ban.

One small file per exchange address (its host and port: the processes of a host reach it from one
IP), in ``$MMFLEET_HOST_HOLDS_DIR``, else ``/dev/shm/mmfleet-<uid>`` (else the temporary directory's):
the same for every process of the user whatever its session (containers of one host share it only
through a directory they all mount, named by the variable). The directory must be the user's own and
writable by nobody else, and a hold file a regular file of the user's: anything else (another user's
directory planted at the name, a link, a pipe) shares nothing, said once. A file holds the hold's end
on the wall clock, its length, a word and the IP's limit a 429 named (the others' budgets take it: each took
a 429 of its own to learn it), never a key. Writers take the directory's lock file
(``flock``) around read, compare and replace, so a hold only ever lengthens what is there (a 429's
second never replaces a ban); a reader sees the old hold or the new one, never half of one. Read by
the file's identity at most every ``CHECK_EVERY_S``; what is left is at most the hold's length (a wall
clock stepped back does not lengthen it). A file that does not read is no hold (said once): a hold
shared is a courtesy between the host's processes, each of which keeps the holds its own answers
told it. A simulated run shares nothing: its time is not the wall's. fundingRate and fundingInfo's own
limit (500 a 5 minutes per IP) has a file of its own (``kind="funding"``): a 429 on it holds those two.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import math
import os
import stat
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import urlsplit

log = logging.getLogger("fleet.binance.host_holds")

CHECK_EVERY_S = 0.05   # the file's identity is checked at most this often (a stat)
LONGEST_HOLD_S = 3 * 86_400.0   # Binance's longest ban: a longer hold is not one
MAX_FILE_BYTES = 4096


def holds_directory() -> Path:
    """Where this user's processes share their holds: ``MMFLEET_HOST_HOLDS_DIR`` when set, else a name
    of the user's in ``/dev/shm`` (the temporary directory without it)."""
    chosen = os.environ.get("MMFLEET_HOST_HOLDS_DIR")
    if chosen:
        return Path(chosen)
    base = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    return Path(base) / f"mmfleet-{os.getuid()}"


class UnsafeHolds(Exception):
    """The directory or the file is not the user's own: nothing is shared through it."""


class HostHolds:
    """The holds of one exchange address for this host: ``hold`` writes one, ``left`` reads what is left."""

    def __init__(self, rest_url: str, directory: Path | None = None, *, kind: str = "",
                 wall: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic) -> None:
        parts = urlsplit(rest_url)
        address = f"{(parts.hostname or '').lower()}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
        self.directory = directory if directory is not None else holds_directory()
        name = f"ip-{hashlib.sha256(address.encode()).hexdigest()[:16]}" + (f"-{kind}" if kind else "")
        self.path = self.directory / f"{name}.hold"
        self._lock_path = self.directory / f"{name}.lock"
        self._wall, self._monotonic = wall, monotonic
        self._mutex = threading.Lock()   # the metrics scrape reads from another thread
        self._checked = -math.inf
        self._identity: tuple[int, int] | None = None
        self._until = 0.0   # wall time the hold ends (0: none)
        self._length = 0.0  # how long it was when written
        self.what = ""
        self.weight_limit: int | None = None   # the IP's limit a 429 named with the hold, if it named one
        self._said: set[str] = set()
        self.written = 0   # holds this process wrote

    def __repr__(self) -> str:
        return f"HostHolds({str(self.path)!r})"

    def left(self) -> float:
        """Seconds the host's IP is held for still (0: not held)."""
        with self._mutex:
            now = self._monotonic()
            if now - self._checked >= CHECK_EVERY_S:
                self._checked = now
                self._read()
            return self._left()

    def hold(self, seconds: float, what: str, weight_limit: int | None = None) -> None:
        """Hold the host's IP for ``seconds`` from now (``what``: a word, for the others' logs; ``weight_limit``:
        the IP's limit the 429 named, which the others' budgets take), unless a longer hold is there
        already. A hold that cannot be shared is said; the caller's own stands."""
        if not 0 < seconds <= LONGEST_HOLD_S:
            return
        with self._mutex:
            try:
                self._check_directory(create=True)
                with self._locked():
                    self._read()
                    if seconds <= self._left():
                        return
                    self._replace(seconds, what, weight_limit)
            except (OSError, UnsafeHolds) as exc:
                self._say("write", f"the IP's hold of {seconds:.1f} s ({what}) not shared with this host's "
                                   f"other processes: {exc}")
                return
            self.written += 1

    # -- the file ------------------------------------------------------------------------------------

    def _left(self) -> float:
        return max(0.0, min(self._until - self._wall(), self._length))

    def _replace(self, seconds: float, what: str, weight_limit: int | None) -> None:
        until = self._wall() + seconds
        fd, tmp = tempfile.mkstemp(prefix=".hold-", dir=self.directory)   # mode 0600
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"until": until, "for": seconds, "what": what, "limit": weight_limit}, f)
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._identity = None
        self._until, self._length, self.what, self.weight_limit = until, seconds, what, weight_limit

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o600)
        try:
            _own_regular(os.fstat(fd), self._lock_path)
            fcntl.flock(fd, fcntl.LOCK_EX)   # held for a read and a rename: microseconds
            yield
        finally:
            os.close(fd)   # (closing releases the lock)

    def _check_directory(self, create: bool = False) -> None:
        if create:
            with contextlib.suppress(FileExistsError):
                os.mkdir(self.directory, 0o700)
        st = os.lstat(self.directory)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
            raise UnsafeHolds(f"{self.directory} is not a directory of this user's that only it may write")

    def _read(self) -> None:
        """The hold in the file, if its identity changed since the last read."""
        try:
            st = os.stat(self.path, follow_symlinks=False)
        except FileNotFoundError:
            self._identity, self._until, self._length, self.weight_limit = None, 0.0, 0.0, None
            return
        except OSError as exc:
            self._say("read", f"the host's IP hold file {self.path} not read, taken as no hold: {exc!r}")
            self._until = self._length = 0.0
            self.weight_limit = None
            return
        identity = (st.st_ino, st.st_mtime_ns)
        if identity == self._identity:
            return
        self._identity = identity
        try:
            self._check_directory()
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as f:
                _own_regular(os.fstat(f.fileno()), self.path)
                doc = json.loads(f.read(MAX_FILE_BYTES))
            until, length, what = float(doc["until"]), float(doc["for"]), str(doc["what"])[:40]
            if not (math.isfinite(until) and 0 < length <= LONGEST_HOLD_S):
                raise ValueError(f"a hold until {until!r} for {length!r} s is not one")
            limit = doc.get("limit")
            if limit is not None and not (type(limit) is int and 1 <= limit <= 10**9):
                raise ValueError(f"a weight limit of {limit!r} is not one")
        except (OSError, UnsafeHolds, ValueError, TypeError, KeyError, AttributeError) as exc:
            self._say("read", f"the host's IP hold file {self.path} does not read, taken as no hold: {exc!r}")
            self._until = self._length = 0.0
            self.weight_limit = None
            return
        self._until, self._length, self.what, self.weight_limit = until, length, what, limit

    def _say(self, kind: str, message: str) -> None:
        if kind not in self._said:
            self._said.add(kind)
            log.warning("%s", message)


def _own_regular(st: os.stat_result, path: Path) -> None:
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
        raise UnsafeHolds(f"{path} is not a regular file of this user's")
