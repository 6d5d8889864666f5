"""A hung owner is fenced, not waited for.

The controller watches every symbol's lease. When one lapses without renewal, it cancels that
epoch's orders (and older ones) at the exchange at once, by client order id, never a successor's;
and it asks the agent actor, on its control group, who it is:

- no answer within ``probe_timeout_s`` (2 s: a process at Ray's niceness merely starved of CPU, e.g.
  while 50 agents start on 2 cores, still answers; an agent in ``SCHED_IDLE`` behind ordinary work may
  not, and is taken for hung: docs/architecture.md, "The cost"), or a process this host shows stopped (SIGSTOP: no need to wait),
  or the same holder whose trading loop publishes nothing after the lease expired (asked again for
  up to ``probe_timeout_s`` if it published during the lease): the owner is hung. The lease is revoked and the actor killed so that Ray recreates it
  (``ray.kill(handle, no_restart=False)``); the new process acquires a fresh, larger epoch.
- the same holder whose trading loop published after the lease expired: its renewals are late, not
  its loop (on a saturated node they queue behind the controller's own work): only the cancel; its
  lease is not revoked, so a renewal that lands resumes it at the same epoch (it re-arms the
  dead-man switch first). Still lapsed ``late_patience_s`` later, it is hung after all.
- another holder (the actor already restarted in another process): the cancel, the lease revoked and
  its holder barred; no actor: only the cancel.
- the same holder still starting (it renews from its grant on, but a start may be slowed): only the
  cancel; still lapsed ``late_patience_s`` later, it is hung after all (a start that renews nothing
  for three leases is stuck, and without this nothing would ever replace it). Stopping (a retire):
  only the cancel.

An actor Ray is already restarting (its node lost, its process dead) is not killed again.

A zombie that wakes finds its lease gone and cancels only its own epoch; a holder the fence killed,
found replaced or unseated is barred from the symbol (``LeaseBook.bar``), so it never owns it again.
After the controller's own loop stalled (stopped, overloaded, restarted), it waits one lease first,
so owners whose renewals were stuck behind it are not taken for hung.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import ray

from controller.emergency import EmergencyDesk
from controller.handles import AgentHandles
from controller.kill_path import LATE_LANDING_S
from controller.lease import Lease, LeaseBook
from fleet.text import named_line

log = logging.getLogger("mmfleet.controller")

HUNG, REPLACED, GONE, STARTING, STOPPING, LATE = "hung", "replaced", "gone", "starting", "stopping", "late"
PATIENT = (LATE, STARTING)  # alive, its renewals late: looked at again after late_patience_s, then hung
KILL_TAKES_S = 5.0         # a kill asked of Ray that has not ended the process by then is reported (a frozen node)
KILL_WATCH_EVERY_S = 1.0
KILL_AGAIN_S = 10.0        # ... and asked again this often until the process goes


@dataclass(frozen=True)
class Fenced:
    """One lapsed lease dealt with: the epoch, what the agent turned out to be, what the exchange lists after."""

    symbol: str
    epoch: int
    verdict: str
    killed: bool
    left: int | None
    error: str | None = None


def verdict_of(status: Any, holder: str, expired_at: float | None = None) -> str:
    """What a lapsed lease's actor is, from its status answer (an exception: it did not answer); a
    trading loop that published after the lease expired (``loop_published_at``, wall clock) is alive,
    its renewals merely late."""
    if isinstance(status, LookupError):
        return GONE
    if isinstance(status, BaseException) or not isinstance(status, dict):
        return HUNG
    if status.get("holder") != holder:
        return REPLACED
    if status.get("state") == "starting" or "starting" in (status.get("blocks") or ()):
        return STARTING
    if status.get("state") in ("stopping", "stopped"):
        return STOPPING
    if expired_at is not None and _published_at(status) > expired_at:
        return LATE
    return HUNG


def _published_at(status: dict[str, Any]) -> float:
    at = status.get("loop_published_at")
    return float(at) if isinstance(at, int | float) and not isinstance(at, bool) else float("-inf")


def stopped_here(holder: str) -> bool:
    """Whether the holder (``host:pid:nonce``) is a process of this host that is stopped (SIGSTOP, a tracer)."""
    host, _, rest = holder.partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("T", "t")
    except (OSError, IndexError):
        return False


def actor_info(handle: Any) -> dict[str, Any] | None:
    """The GCS's record of the actor (its state, process id, restarts; {} when it has none); None when
    the GCS did not say."""
    try:
        from ray._private import state

        return state.actors(actor_id=handle._actor_id.hex()) or {}
    except Exception:  # noqa: BLE001 - the GCS did not say
        return None


def same_process(before: dict[str, Any], now: dict[str, Any]) -> bool:
    """Whether the GCS still holds the actor ALIVE in the process it had (not restarted since)."""
    return now.get("State") == "ALIVE" and now.get("Pid") == before.get("Pid") \
        and now.get("NumRestarts") == before.get("NumRestarts")


class Fence:
    """The lapsed-lease watch of one controller (its default loop)."""

    def __init__(self, book: LeaseBook, agents: AgentHandles, desk: EmergencyDesk,
                 account_of: Callable[[str], str | None], *, probe_timeout_s: float = 2.0,
                 tick_s: float = 0.25, late_patience_s: float | None = None) -> None:
        self.book = book
        self.agents = agents
        self.desk = desk
        self.account_of = account_of
        self.probe_timeout_s = probe_timeout_s
        self.tick_s = tick_s
        # how long a live owner's lease may stay lapsed before it counts as hung (three leases)
        self.late_patience_s = 3 * book.lease_ttl_s if late_patience_s is None else late_patience_s
        self.fenced: dict[str, int] = {}        # symbol -> the last epoch fenced
        self._dealt: dict[str, tuple[int, float]] = {}  # symbol -> (epoch, expiry) of the lapse dealt with
        self.late: dict[str, float] = {}        # symbol -> when its owner was found alive, renewals late
        self.owed: dict[str, Lease] = {}        # symbol -> a hung owner's lease whose replacement failed: retried
        self.late_cancels: dict[tuple[str, int], asyncio.Future] = {}   # (symbol, epoch) -> its last cancel
        self.history: list[Fenced] = []         # the last few, for status
        self.kill_watches: dict[str, asyncio.Future] = {}   # symbol -> the watch of a kill asked of Ray
        self.unkilled: dict[str, dict[str, Any]] = {}       # symbol -> a hung agent the kill has not reached
        # the watches' reads of the GCS, on a thread of their own (a hung GCS holds each read up to a minute)
        self._gcs_reads = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fence-gcs")
        self.grace_until = time.time() + book.lease_ttl_s
        self.last_tick = time.monotonic()

    def lapsed(self, symbols: list[str], now: float) -> list[tuple[str, Lease]]:
        """Leases that lapsed unrenewed and are not fenced yet (none during a grace after a stall)."""
        gap, self.last_tick = time.monotonic() - self.last_tick, time.monotonic()
        if gap > max(1.0, 4 * self.tick_s):
            self.grace_until = max(self.grace_until, now + self.book.lease_ttl_s)
        if now < self.grace_until:
            return []
        out = []
        for symbol in symbols:
            lease = self.book.lease(symbol)
            # (a revoked lease too: a live owner acquires a new one, a hung one is fenced, also when the
            # controller that revoked it went away before it killed the actor)
            if lease is None or now < lease.expires_at:
                self.late.pop(symbol, None)  # renewed (or gone) since
                continue
            if self._dealt.get(symbol) != (lease.epoch, lease.expires_at):
                out.append((symbol, lease))  # a lapse not dealt with yet
            elif symbol in self.late and now >= self.late[symbol] + self.late_patience_s:
                out.append((symbol, lease))  # alive, but still not renewing: hung after all
        return out

    async def run(self, symbols: Callable[[], list[str]], fenced: Callable[[Fenced], None]) -> None:
        """Every ``tick_s``: the watched symbols' lapsed leases fenced, each result handed to ``fenced``."""
        while True:
            try:
                for done in await self.tick(symbols(), time.time()):
                    fenced(done)
            except Exception:  # noqa: BLE001 - the watch must outlive any one bad tick
                log.exception("fence failed")
            await asyncio.sleep(self.tick_s)

    async def tick(self, symbols: list[str], now: float) -> list[Fenced]:
        for symbol in [s for s in self.owed if s in symbols]:
            await self._replace_owed(symbol)
        return list(await asyncio.gather(*(self.fence(s, lease, now) for s, lease in self.lapsed(symbols, now))))

    async def _replace_owed(self, symbol: str) -> None:
        """A hung owner whose replacement failed (its lapse is dealt with, so never found again): tried
        every tick until it is done, or until the symbol has another owner."""
        lease = self.owed[symbol]
        current = self.book.lease(symbol)
        if current is None or current.epoch != lease.epoch:
            del self.owed[symbol]   # a successor owns it (or the symbol is gone)
            return
        try:
            killed = await self._replace(symbol, lease)
        except Exception:  # noqa: BLE001 - still owed; it was logged when it first failed
            return
        del self.owed[symbol]
        log.warning("%s: the hung agent of epoch %d replaced on a retry (killed: %s)", symbol, lease.epoch, killed)

    async def fence(self, symbol: str, lease: Lease, now: float | None = None) -> Fenced:
        again = self._dealt.get(symbol) == (lease.epoch, lease.expires_at)  # found late before
        self._dealt[symbol] = (lease.epoch, lease.expires_at)
        self.fenced[symbol] = lease.epoch
        account = self.account_of(symbol)
        cancel = asyncio.ensure_future(self._cancel(symbol, account, lease.epoch))
        status = await self._probe(symbol, lease)
        verdict = verdict_of(status, lease.holder, lease.expires_at)
        if verdict in PATIENT and again:
            verdict = HUNG  # it answers, but its lease stayed lapsed for late_patience_s
        if verdict in PATIENT:
            self.late.setdefault(symbol, time.time() if now is None else now)
        else:
            self.late.pop(symbol, None)
        killed = False
        if verdict == HUNG:
            try:
                killed = await self._replace(symbol, lease)
            except Exception as exc:  # noqa: BLE001 - the cancel goes on; the replacement is retried
                self.owed[symbol] = lease
                log.error("%s: the hung agent of epoch %d not replaced (%s): tried again every tick", symbol,
                          lease.epoch, named_line(exc))
        elif verdict == REPLACED:   # the actor runs in another process: this holder is a zombie
            self._bar(symbol, lease.holder)
            try:
                self._revoke_if(symbol, lease)
            except Exception as exc:  # noqa: BLE001 - barred, cancelled: its renewal is what is left
                log.error("%s: the lapsed lease of epoch %d not revoked: %s", symbol, lease.epoch, named_line(exc))
        left, error = await cancel
        if verdict == HUNG and left:  # what the hung owner sent before it died
            left, error = await self._cancel(symbol, account, lease.epoch)
        self._cancel_late(symbol, account, lease)
        done = Fenced(symbol, lease.epoch, verdict, killed, left, error)
        log.warning("%s: lease of epoch %d lapsed unrenewed (%s): %s", symbol, lease.epoch, verdict, done)
        self.history = [*self.history[-19:], done]
        return done

    async def unseat(self, symbol: str, requester: str) -> Fenced | None:
        """A lease held by a process that is no longer the symbol's actor: ``requester``, asking for the
        lease, is the one Ray routes ``agent.<SYMBOL>`` to, and the lease's holder is not (Ray restarted
        the actor elsewhere, its node found dead, while the old process runs on: its raylet hung, or cut
        off). That holder went on renewing, and the restarted actor waited for ever. Its lease is revoked
        (its next renewal is refused: it stops and cancels its own epoch) and its epoch's orders are
        cancelled at the exchange; None when the lease is not so held."""
        lease = self.book.lease(symbol)
        if lease is None or lease.revoked or lease.holder == requester:
            return None
        try:
            status = await self.agents.call(symbol, "status", timeout=self.probe_timeout_s)
        except Exception:  # noqa: BLE001 - no answer: nothing known, the lease stands
            return None
        if not isinstance(status, dict) or status.get("holder") != requester:
            return None
        current = self.book.lease(symbol)
        if current is None or (current.holder, current.epoch) != (lease.holder, lease.epoch):
            return None
        self.book.bar(symbol, lease.holder)   # first: it is refused when it asks again, once stopped
        self.book.revoke(symbol)
        self.fenced[symbol] = lease.epoch
        account = self.account_of(symbol)
        left, error = await self._cancel(symbol, account, lease.epoch)
        self._cancel_late(symbol, account, lease)
        done = Fenced(symbol, lease.epoch, REPLACED, False, left, error)
        log.error("%s: the lease of epoch %d is held by %s, which is no longer the symbol's actor (%s, asking "
                  "for the lease, is): revoked and its orders cancelled: %s", symbol, lease.epoch, lease.holder,
                  requester, done)
        self.history = [*self.history[-19:], done]
        return done

    async def _probe(self, symbol: str, lease: Lease) -> Any:
        """The actor's status answer (or the exception that stands for none). An owner whose trading
        loop published during the lease but not yet after its expiry is asked again, for up to
        ``probe_timeout_s``: a loop that runs publishes every 0.25 s, a frozen one never."""
        if await asyncio.to_thread(stopped_here, lease.holder):
            return TimeoutError(f"{lease.holder} is stopped")
        deadline = time.monotonic() + self.probe_timeout_s
        while True:
            try:
                status = await self.agents.call(symbol, "status", timeout=self.probe_timeout_s)
            except Exception as exc:  # noqa: BLE001 - no answer is the answer
                return exc
            if verdict_of(status, lease.holder, lease.expires_at) != HUNG or time.monotonic() >= deadline \
                    or _published_at(status) <= lease.expires_at - self.book.lease_ttl_s:
                return status
            await asyncio.sleep(0.25)

    async def _replace(self, symbol: str, lease: Lease) -> bool:
        """Revoke the hung owner's lease and kill its actor so that Ray recreates it; True once the
        kill is asked of Ray (whether it took is watched: ``_watch_kill``)."""
        self._revoke_if(symbol, lease)
        handle = self.agents.get(symbol, fresh=True)
        if handle is None:
            return False
        info = await asyncio.to_thread(actor_info, handle)
        # (no record, or the GCS did not say: killed as a live one)
        if info is not None and info.get("State", "ALIVE") != "ALIVE":
            self._bar(symbol, lease.holder)   # Ray restarts the actor: a new process, a new holder
            return False
        try:
            ray.kill(handle, no_restart=False)
        except Exception as exc:  # noqa: BLE001 - reported; the cancel still holds
            log.error("%s: could not kill the hung agent: %s", symbol, named_line(exc))
            return False
        self.agents.drop(symbol)
        self._bar(symbol, lease.holder)   # a kill that does not reach it (a frozen node): refused on waking
        if info and symbol not in self.kill_watches:
            task = asyncio.ensure_future(self._watch_kill(symbol, lease.epoch, handle, info))
            self.kill_watches[symbol] = task
            task.add_done_callback(lambda _: self.kill_watches.pop(symbol, None))
        return True

    def _revoke_if(self, symbol: str, lease: Lease) -> None:
        """The lease revoked if it is still the one fenced (not a successor's)."""
        current = self.book.lease(symbol)
        if current is not None and current.epoch == lease.epoch:
            self.book.revoke(symbol)

    def _bar(self, symbol: str, holder: str) -> None:
        """``LeaseBook.bar``; a failure said (the holder could then win a new epoch if it asks)."""
        try:
            self.book.bar(symbol, holder)
        except Exception as exc:  # noqa: BLE001 - the fence's work goes on
            log.error("%s: %s not barred from the lease (%s): it may win a new epoch if it asks", symbol, holder,
                      named_line(exc))

    async def _watch_kill(self, symbol: str, epoch: int, handle: Any, before: dict[str, Any]) -> None:
        """A kill Ray was asked for takes on a live node within a second or two: the process dies and Ray
        restarts the actor. On a frozen node (its raylet stopped with its workers) nothing acts on it
        until Ray finds the node dead or it resumes, and meanwhile the symbol has no owner that quotes.
        Said loudly, and shown in status (``unkilled``), until the actor's process changes; the kill is
        asked again every ``KILL_AGAIN_S`` (Ray's request to a raylet that does not answer may be lost,
        and the holder, barred, could not own the symbol again)."""
        start = asked = time.monotonic()
        loop = asyncio.get_running_loop()
        while True:
            now = await loop.run_in_executor(self._gcs_reads, actor_info, handle)
            if now is not None and not same_process(before, now):
                break   # (a GCS that does not answer says nothing either way: still watched)
            if now is not None and time.monotonic() - asked >= KILL_AGAIN_S:
                asked = time.monotonic()
                try:
                    ray.kill(handle, no_restart=False)
                except Exception as exc:  # noqa: BLE001 - tried again later
                    log.error("%s: the hung agent's kill not asked again: %s", symbol, named_line(exc))
            waited = time.monotonic() - start
            if now is not None and waited >= KILL_TAKES_S and symbol not in self.unkilled:
                self.unkilled[symbol] = {"epoch": epoch, "pid": before.get("Pid"),
                                         "node": (before.get("Address") or {}).get("NodeID"), "since": time.time()}
                log.error("%s: the hung agent of epoch %d (pid %s) still runs %.0f s after Ray was asked to kill "
                          "it: its node does not act on it (frozen?). Its lease is revoked and its orders cancelled; "
                          "no successor quotes until Ray finds that node dead or the node resumes", symbol, epoch,
                          before.get("Pid"), waited)
            await asyncio.sleep(KILL_WATCH_EVERY_S)
        if self.unkilled.pop(symbol, None) is not None:
            log.warning("%s: the hung agent of epoch %d is gone at last, %.0f s after its kill", symbol, epoch,
                        time.monotonic() - start)

    def _cancel_late(self, symbol: str, account: str | None, lease: Lease) -> None:
        """The epoch cancelled once more when what its owner signed just before its gate closed can no
        longer land (``LATE_LANDING_S`` past the lease's end), in the background: by client id, never a
        successor's order."""
        key = (symbol, lease.epoch)
        if account is None or key in self.late_cancels:
            return
        delay = max(0.0, lease.expires_at + LATE_LANDING_S - time.time())

        async def later() -> None:
            await asyncio.sleep(delay)
            left, _ = await self._cancel(symbol, account, lease.epoch)
            if left is not None:
                log.info("%s: epoch %d cancelled again once nothing it signed could land", symbol, lease.epoch)

        task = asyncio.ensure_future(later())
        self.late_cancels[key] = task
        task.add_done_callback(lambda _: self.late_cancels.pop(key, None))

    async def _cancel(self, symbol: str, account: str | None, epoch: int) -> tuple[int | None, str | None]:
        if account is None:
            return None, "no account for the symbol"
        try:
            return await self.desk.cancel_epoch(symbol, account, epoch), None
        except Exception as exc:  # noqa: BLE001 - reported, never raised into the watch
            log.error("%s: fencing epoch %d at the exchange failed: %s", symbol, epoch, named_line(exc))
            return None, named_line(exc)
