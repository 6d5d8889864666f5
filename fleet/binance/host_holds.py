"""The IP's holds, shared by every process of this host that talks to one exchange.

Binance counts request weight per IP, answers a request beyond it 429 with ``Retry-After``, and bans an
IP that goes on sending after 429s (418, from 2 minutes to 3 days): a ban stops every cancel and
heartbeat of every agent on the host. Each agent's rate budget learns of a 429 or a ban from its own
answers only, so with many agents on a host each sent on into the hold and took its own 429 (the
simulator bans after 10, as a desk's 50 agents would be). Now the first process told of a hold writes
it here, and every budget of the host reads it before it sends: a 429's ``Retry-After`` or the end of
the minute its weight is spent, and a 418's ban.

One small file per exchange address (its host and port: the processes of a host reach it from one
IP), under ``$MMFLEET_HOST_HOLDS_DIR``, else ``$XDG_RUNTIME_DIR/mmfleet`` (else ``/dev/shm/mmfleet-<uid>``,
else the temporary directory),
mode 0600 in a 0700 directory. It holds a wall-clock time and a word, never a key. Written by
replacing the file (a reader sees the old hold or the new one, never half of one); read by its
identity at most every ``CHECK_EVERY_S``. A hold only ever lengthens what is there. A file that does
not read is no hold (said once): a hold shared is a courtesy between the host's processes, each of
which keeps the holds its own answers told it. The simulated clock's runs share nothing: their time
is not the wall's.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

log = logging.getLogger("fleet.binance.host_holds")

CHECK_EVERY_S = 0.05   # the file's identity is checked at most this often (a stat)
LONGEST_HOLD_S = 3 * 86_400.0   # Binance's longest ban: a time further ahead is not a hold


def holds_directory() -> Path:
    """Where this user's processes share their holds: ``MMFLEET_HOST_HOLDS_DIR`` when set (a directory
    several containers of one host mount, say), else as the module says."""
    chosen = os.environ.get("MMFLEET_HOST_HOLDS_DIR")
    if chosen:
        return Path(chosen)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "mmfleet"
    base = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()
    return Path(base) / f"mmfleet-{os.getuid()}"


class HostHolds:
    """The holds of one exchange address for this host: ``hold`` writes one, ``left`` reads what is left."""

    def __init__(self, rest_url: str, directory: Path | None = None, *,
                 wall: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic) -> None:
        parts = urlsplit(rest_url)
        address = f"{(parts.hostname or '').lower()}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
        self.directory = directory if directory is not None else holds_directory()
        self.path = self.directory / f"ip-{hashlib.sha256(address.encode()).hexdigest()[:16]}.hold"
        self._wall, self._monotonic = wall, monotonic
        self._checked = -math.inf
        self._identity: tuple[int, int] | None = None
        self._until = 0.0   # wall time the hold ends (0: none)
        self.what = ""
        self._said_unreadable = False
        self.written = 0   # holds this process wrote

    def __repr__(self) -> str:
        return f"HostHolds({str(self.path)!r})"

    def left(self) -> float:
        """Seconds the host's IP is held for still (0: not held)."""
        now = self._monotonic()
        if now - self._checked >= CHECK_EVERY_S:
            self._checked = now
            self._read()
        return max(0.0, self._until - self._wall())

    def hold(self, seconds: float, what: str) -> None:
        """Hold the host's IP for ``seconds`` from now (``what``: a word, for the others' logs), unless a
        longer hold is there already. A file that cannot be written is said; the caller's own hold stands."""
        if not 0 < seconds <= LONGEST_HOLD_S:
            return
        self._read()
        until = self._wall() + seconds
        if until <= self._until:
            return
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".hold-", dir=self.directory)
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump({"until": until, "what": what}, f)
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            log.warning("the IP's hold of %.1f s (%s) not shared with this host's other processes: %r",
                        seconds, what, exc)
            return
        self._until, self.what = until, what
        self.written += 1

    def _read(self) -> None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._identity, self._until = None, 0.0
            return
        except OSError:
            return
        identity = (st.st_ino, st.st_mtime_ns)
        if identity == self._identity:
            return
        self._identity = identity
        try:
            doc = json.loads(self.path.read_text())
            until, what = float(doc["until"]), str(doc["what"])[:40]
            if not math.isfinite(until) or until - self._wall() > LONGEST_HOLD_S:
                raise ValueError(f"a hold until {until!r} is not a time within {LONGEST_HOLD_S:.0f} s")
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            if not self._said_unreadable:
                self._said_unreadable = True
                log.warning("the host's IP hold file %s does not read, taken as no hold: %r", self.path, exc)
            self._until = 0.0
            return
        self._until, self.what = until, what
