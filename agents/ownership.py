"""Who may trade a symbol: an epoch plus a lease, behind one small interface.

A standalone agent owns its symbol through an exclusive ``flock`` on a lock file (held for the
process's life, released by the kernel when the process dies) and a PID file naming the live owner;
the fleet's agents hold a lease from the controller instead. Both hand the agent a :class:`Grant`.
"""

from __future__ import annotations

import errno
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from fleet.vocabulary import KillState

# A standalone lock is never taken away while the process lives: its lease is effectively forever.
STANDALONE_LEASE_TTL_S = 365 * 24 * 3600.0


@dataclass(frozen=True)
class Grant:
    """The right to trade one symbol, as the owner's authority last confirmed it."""

    epoch: int  # per-symbol counter; a new incarnation gets a larger one
    lease_ttl_s: float  # the lease lasts this long from the moment the request was SENT
    kill_state: KillState  # durable, the controller's (a string is read as a KillState)
    reduce_only: bool = False  # fleet risk over its notional cap
    rate_share: float = 1.0  # this agent's share of its account's order-rate limits
    kill_reason: str = ""    # the operator's reason for the kill state, when the authority holds one
    # How long an acquire waited (a predecessor's lease to lapse, an owner not answering) before it sent
    # the request granted: the lease counts from that send, not from the first try's.
    waited_s: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "kill_state", KillState.parse(self.kill_state, "kill_state"))
        if self.epoch < 1:
            raise ValueError(f"epoch must be >= 1, not {self.epoch}")
        if self.lease_ttl_s <= 0:
            raise ValueError(f"lease_ttl_s must be positive, not {self.lease_ttl_s}")


class OwnershipRefused(Exception):
    """Someone else owns the symbol; the message says who (standalone: the PID)."""


class OwnershipLost(Exception):
    """The lease was not renewed: the agent must stop quoting at once."""


class OwnershipStateError(Exception):
    """The state directory's files cannot be used (an epoch that is not one, a directory that cannot be
    written): the agent refuses to start, saying which; it never trades on a guessed epoch, whose
    client order ids could repeat an earlier incarnation's."""


MAX_EPOCH = 10**9   # client order ids embed it: they must fit Binance's 36 characters


@runtime_checkable
class Ownership(Protocol):
    renew_interval_s: float

    async def acquire(self) -> Grant: ...

    async def renew(self) -> Grant: ...

    async def release(self) -> None: ...


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_atomic(path: Path, text: str) -> None:
    """Write through a temp file and rename, so a crash never leaves a half-written counter."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class LockFileOwnership:
    """Standalone ownership: ``<state_dir>/<fleet>.<SYMBOL>.lock`` flocked for the process's life.

    Alongside it: ``.pid`` holds the live owner's PID, ``.epoch`` counts incarnations (bumped on
    every acquire, under the lock), ``.kill`` keeps a halt durable across restarts.
    """

    def __init__(
        self, state_dir: str | os.PathLike[str], fleet_name: str, symbol: str, *, renew_interval_s: float = 5.0
    ) -> None:
        self.state_dir = Path(state_dir)
        self.fleet_name = fleet_name
        self.symbol = symbol
        self.renew_interval_s = renew_interval_s
        stem = f"{fleet_name}.{symbol}"
        self.lock_path = self.state_dir / f"{stem}.lock"
        self.pid_path = self.state_dir / f"{stem}.pid"
        self.epoch_path = self.state_dir / f"{stem}.epoch"
        self.kill_path = self.state_dir / f"{stem}.kill"
        self.carry_path = self.state_dir / f"{stem}.carry"   # the books, for the next incarnation (agents/carry.py)
        self._fd: int | None = None
        self._grant: Grant | None = None

    # -- the protocol --------------------------------------------------------------------------

    def lock(self) -> None:
        """Take the lock now, without starting an incarnation (no epoch is spent): a process checks
        that it may own the symbol before it binds ports; :meth:`acquire` then grants the epoch."""
        if self._fd is None:
            try:
                self.state_dir.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:   # a file where the directory goes, a directory at the lock's path, read-only
                raise OwnershipStateError(f"{self.fleet_name}/{self.symbol}: the state directory {self.state_dir} "
                                          f"cannot hold the lock file {self.lock_path.name}: "
                                          f"{exc.strerror or type(exc).__name__}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise
                raise OwnershipRefused(self._who_owns()) from None
            os.set_inheritable(fd, False)
            self._fd = fd
            try:
                self._write_pid(fd)
            except BaseException as exc:
                self._unlock()
                if isinstance(exc, OSError):
                    raise OwnershipStateError(f"{self.fleet_name}/{self.symbol}: the state directory {self.state_dir} "
                                              f"cannot be written: {exc.strerror or type(exc).__name__}") from None
                raise

    def _write_pid(self, fd: int) -> None:
        pid = os.getpid()
        # The lock file itself also records the PID: readable even if the .pid file was removed.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{pid}\n".encode(), 0)
        write_atomic(self.pid_path, f"{pid}\n")

    async def acquire(self) -> Grant:
        """Take the lock at once or raise :class:`OwnershipRefused` naming the owner's PID.

        Every acquire is a new incarnation with a fresh, larger epoch, also when this object already
        holds the lock (client order ids embed the epoch and must never repeat); ``renew`` keeps it.
        """
        self.lock()
        fd = self._fd
        assert fd is not None
        try:
            try:
                self._write_pid(fd)
                epoch = self._read_epoch() + 1
                write_atomic(self.epoch_path, f"{epoch}\n")
            except OSError as exc:
                raise OwnershipStateError(f"{self.fleet_name}/{self.symbol}: the state directory {self.state_dir} "
                                          f"cannot be written: {exc.strerror or type(exc).__name__}") from None
            self._grant = Grant(epoch=epoch, lease_ttl_s=STANDALONE_LEASE_TTL_S, kill_state=self.kill_state())
        except BaseException:
            self._grant = None
            self._unlock()
            raise
        return self._grant

    async def renew(self) -> Grant:
        """Confirm the lock is still ours: the lock file at its path is the one this process holds
        locked (one removed, or replaced, may be locked by another process); the PID file, only what
        it says, is written again if it went (a clean-up removed it: the agent stopped quoting)."""
        if self._fd is None or self._grant is None:
            raise OwnershipLost(f"{self.symbol}: not acquired (or already released)")
        try:
            held = os.fstat(self._fd)
            at_path = os.stat(self.lock_path)
            same = (held.st_dev, held.st_ino) == (at_path.st_dev, at_path.st_ino)
        except FileNotFoundError:
            same = False
        if not same:
            raise OwnershipLost(f"{self.symbol}: the lock file {self.lock_path} is no longer the one this process "
                                f"locked (removed or replaced): another process may own the symbol")
        owner = self._read_int(self.pid_path)
        if owner != os.getpid():
            if owner and _pid_alive(owner):
                raise OwnershipLost(f"{self.symbol}: PID file {self.pid_path} names {owner}, a live process, not "
                                    f"this process {os.getpid()}")
            write_atomic(self.pid_path, f"{os.getpid()}\n")
        kill_state = self.kill_state()
        if kill_state != self._grant.kill_state:
            self._grant = Grant(
                epoch=self._grant.epoch,
                lease_ttl_s=self._grant.lease_ttl_s,
                kill_state=kill_state,
                reduce_only=self._grant.reduce_only,
                rate_share=self._grant.rate_share,
            )
        return self._grant

    async def release(self) -> None:
        """Remove the PID file and drop the lock; safe to call twice."""
        if self._fd is None:
            return
        try:
            if self._read_int(self.pid_path) == os.getpid():
                self.pid_path.unlink(missing_ok=True)
        finally:
            self._unlock()
        self._grant = None

    # -- durable kill state (standalone's stand-in for the controller's) -------------------------

    def kill_state(self) -> KillState:
        try:
            state = self.kill_path.read_text().strip()
        except FileNotFoundError:
            return KillState.RUNNING
        return KillState.read(state)  # unreadable: fail safe (halted)

    def record_kill_state(self, state: str) -> None:
        state = KillState.parse(state)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if state is KillState.RUNNING:
            self.kill_path.unlink(missing_ok=True)
        else:
            write_atomic(self.kill_path, f"{state}\n")

    # -- helpers -------------------------------------------------------------------------------

    def describe(self) -> dict[str, object]:
        return {"kind": "lockfile", "lock": str(self.lock_path), "pid": os.getpid() if self._fd else None}

    def _who_owns(self) -> str:
        pid = self._read_int(self.pid_path) or self._read_int(self.lock_path)
        if pid and _pid_alive(pid):
            who = f"PID {pid}"
        elif pid:
            who = f"PID {pid} (recorded; the lock is still held, perhaps by a child it left behind)"
        else:
            who = "a process that has not yet written its PID"
        return (
            f"{self.fleet_name}/{self.symbol} is already owned by {who}: "
            f"lock {self.lock_path} is held; stop that agent first"
        )

    def _read_epoch(self) -> int:
        """The last incarnation's epoch (0: none yet, no file); a file that does not hold one is refused,
        never read as 0: the next epoch would start again at 1 and repeat earlier client order ids."""
        try:
            raw = self.epoch_path.read_bytes()
        except FileNotFoundError:
            return 0
        text = raw.decode("ascii", "replace").strip()
        if text.isdigit() and 0 < int(text) < MAX_EPOCH:
            return int(text)
        shown = repr(text[:20]) + ("..." if len(text) > 20 else "")
        raise OwnershipStateError(
            f"{self.fleet_name}/{self.symbol}: the epoch file {self.epoch_path} holds {shown}, not an epoch (a "
            f"whole number from 1 to {MAX_EPOCH - 1}): write the last epoch this symbol's agents used (the e<N> of "
            f"their client order ids) plus one, or more; a guess could repeat earlier order ids")

    @staticmethod
    def _read_int(path: Path) -> int:
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            return 0
        try:
            return int(text.splitlines()[0]) if text else 0
        except ValueError:
            return 0

    def _unlock(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)
