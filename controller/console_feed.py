"""The console's live feed: one collector builds the fleet table while anyone watches, every stream pushes it.

The collector reads the GCS (the durable kill states and the leases, which agents run and their
restarts) and asks the agents (through :class:`controller.calls.ActorCalls`) every ``push_s``, and
reads fills and grinds (the agents' published expositions) every ``slow_s``; each open Server-Sent
Events stream sends the latest snapshot when it changes, or at least every ``push_s``. It never
waits on the controller: whether that answers comes from the endpoint's own watch
(:class:`controller.calls.ControllerWatch`), so with the controller busy, stopped or gone the table
still shows every symbol's kill state and lease as stored, and for an agent that does not answer,
what it last published and how old that is.
The page, the sessions and the checks are in :mod:`controller.console`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from controller.calls import ActorCalls, Answer, ControllerWatch, first_line
from controller.console import SymbolAnswers, console_snapshot, fills_and_grinds, sse_event
from controller.lease import Lease, leases_shown
from controller.views import with_figures

log = logging.getLogger("mmfleet.api")


class ConsoleFeed:
    """The latest snapshot of the fleet table, its collector and the streams that push it."""

    def __init__(self, calls: ActorCalls, fleet: str, max_total_notional: float, *,
                 kill_states: Callable[[], Awaitable[tuple[Answer, Any]]], traded: Callable[[], tuple[str, ...]],
                 leases: Callable[[tuple[str, ...]], Awaitable[dict[str, Lease]]], controller: ControllerWatch,
                 push_s: float, slow_s: float) -> None:
        self.calls = calls
        self.fleet = fleet
        self.max_total_notional = max_total_notional
        self.kill_states = kill_states    # the durable kill states, read from the GCS (they update traded)
        self.traded = traded              # the symbols the fleet trades now (as last applied)
        self.leases = leases              # the stored leases of symbols, read from the GCS
        self.controller = controller      # the endpoint's own watch of the controller
        self.push_s = push_s
        self.slow_s = slow_s
        self.latest: dict[str, Any] | None = None   # the last snapshot of the fleet table
        self.seq = 0
        self.streams: dict[int, float] = {}   # open stream -> when it last pushed
        self.fresh = asyncio.Event()          # set (and replaced) on every new snapshot
        self.collector: asyncio.Task | None = None
        self.slow: tuple[float, dict[str, dict[str, float]]] = (-math.inf, {})

    # --- streams ---

    def open_streams(self) -> dict[int, float]:
        """Streams that pushed lately (one whose client left without a goodbye ages out)."""
        cutoff = time.monotonic() - max(10.0, 5 * self.push_s)
        for sid in [s for s, t in self.streams.items() if t < cutoff]:
            self.streams.pop(sid, None)
        return self.streams

    def stream(self, signed_in: Callable[[], bool]) -> AsyncIterator[str]:
        """A new stream, registered at once (the collector starts with it): a snapshot on connect, then at
        least every push_s, until ``signed_in()`` turns false."""
        stream_id = secrets.randbits(63)
        self.streams[stream_id] = time.monotonic()
        self._ensure_collector()
        return self._events(stream_id, signed_in)

    async def _events(self, stream_id: int, signed_in: Callable[[], bool]) -> AsyncIterator[str]:
        push_s = self.push_s
        try:
            yield f"retry: {int(push_s * 2000)}\n\n"
            while True:
                self.streams[stream_id] = time.monotonic()
                if not signed_in():
                    yield sse_event("signedout", {"reason": "the session ended"})
                    return
                snap = self.latest
                if snap is None:
                    yield ": waiting for the first snapshot\n\n"
                else:
                    yield sse_event("snapshot", snap, snap["seq"])
                fresh = self.fresh
                try:
                    await asyncio.wait_for(fresh.wait(), push_s)
                except asyncio.TimeoutError:
                    pass
        finally:
            self.streams.pop(stream_id, None)

    # --- the collector ---

    def _ensure_collector(self) -> None:
        if self.collector is None or self.collector.done():
            self.collector = asyncio.get_running_loop().create_task(self._collect())

    async def _collect(self) -> None:
        """One collector for every open stream: a snapshot each push_s while anyone watches."""
        push_s = self.push_s
        while self.open_streams():
            started = time.monotonic()
            try:
                snap = await self.snapshot()
            except Exception as exc:  # noqa: BLE001 - the streams keep the last snapshot
                log.warning("console: snapshot failed: %s", first_line(exc))
            else:
                self.latest = snap
                fresh, self.fresh = self.fresh, asyncio.Event()
                fresh.set()
            await asyncio.sleep(max(0.05, push_s - (time.monotonic() - started)))
        # No await from the check above to here: a stream opening now starts a new collector.
        self.latest = None

    async def _counts(self, symbols: tuple[str, ...]) -> dict[str, dict[str, float]]:
        """Fills and grinds (from the agents' published expositions), refreshed every slow_s."""
        at, counts = self.slow
        if time.monotonic() - at < self.slow_s and set(symbols) <= set(counts):
            return counts
        pages = await self.calls.published(self.fleet, symbols)
        fresh = {s: fills_and_grinds(r.text) for s, r in pages.items()} if isinstance(pages, dict) else {}
        counts = {**{s: c for s, c in counts.items() if s in symbols}, **fresh}
        self.slow = (time.monotonic(), counts)
        return counts

    async def _stored_leases(self, symbols: tuple[str, ...]) -> dict[str, dict[str, Any]]:
        """Each symbol's lease as stored: epoch, seconds left (negative once lapsed), revoked."""
        try:
            leases = await asyncio.wait_for(self.leases(symbols), self.calls.agent_timeout_s)
        except Exception as exc:  # noqa: BLE001 - the rows show no lease, the table still renders
            why = "no answer" if isinstance(exc, asyncio.TimeoutError) else first_line(exc)
            log.warning("console: the leases were not read from the GCS: %s", why)
            return {}
        return leases_shown(leases, time.time())

    async def snapshot(self) -> dict[str, Any]:
        """The fleet table now: the durable kill states and the leases (GCS), every agent's status and
        exposure (or what it last published), and whether the controller answers (the watch)."""
        started = time.monotonic()
        kills, _ = await self.kill_states()
        symbols = self.traded()
        alive = await self.calls.alive(symbols)   # restarts, and agents not running yet answered at once
        status, exposure, counts, leases = await asyncio.gather(
            self.calls.agents("status", symbols, alive), self.calls.agents("exposure", symbols, alive),
            self._counts(symbols), self._stored_leases(symbols),
        )
        # an agent still starting (a restart's new process) answers zeros that are not the exchange's: it is
        # shown as not answering, with what it last published, and kept out of the totals (as /exposure does)
        status = {s: with_figures(a)[0] for s, a in status.items()}
        exposure = {s: with_figures(a)[0] for s, a in exposure.items()}
        last = await self.calls.last_published(
            self.fleet, tuple(s for s in symbols if not (status[s].ok and exposure[s].ok)), "console")
        now = time.time()
        restarts = alive or {}
        kill_map = (kills.mapping() or {}) if kills.ok else {}
        unkilled = self.controller.unkilled()
        answers = {}
        for sym in symbols:
            kill = kill_map.get(sym)
            answers[sym] = SymbolAnswers(
                status=status[sym].mapping(),
                status_error=status[sym].error,
                exposure=exposure[sym].mapping(),
                exposure_error=exposure[sym].error,
                counts=counts.get(sym),
                kill=kill if isinstance(kill, dict) else None,
                lease=leases.get(sym),
                restarts=restarts.get(sym),
                published_status=last[sym].shown("status", now) if sym in last else None,
                published_exposure=last[sym].shown("exposure", now) if sym in last else None,
                unkilled=unkilled.get(sym),
            )
        self.seq += 1
        watch = self.controller.view()
        return console_snapshot(
            self.fleet, symbols, answers,
            controller_error=None if self.controller.up() else (watch["error"] or "not answering"),
            kill_states_error=None if kills.ok else kills.error,
            max_total_notional=self.max_total_notional, seq=self.seq,
            collected_ms=(time.monotonic() - started) * 1000,
        )
