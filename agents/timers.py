"""The agent's timers: the quote loop, the dead-man heartbeat and its re-arm, lease renewal, and the
watchdog, whose decisions come from :func:`agents.watchdog.watch` and are carried out here.

A part of :class:`agents.agent.SymbolAgent`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from fleet.binance.errors import BinanceError

from .ownership import OwnershipLost
from .watchdog import Act, Seen, Timing, watch
from .agent_base import (BLOCK_DEADMAN, BLOCK_LEASE, BLOCK_MARKET_STALE, BLOCK_STARTING, DEADMAN_RETRY_S,
                         WATCHDOG_S, Backoff, quoting_said)

if TYPE_CHECKING:
    from .agent import SymbolAgent


class Timers:
    """The quote loop, the dead-man switch, lease renewal and the watchdog."""

    def __init__(self, agent: SymbolAgent) -> None:
        self.agent = agent
        self._rearming = False  # a dead-man re-arm is under way before the lease block is lifted
        # re-arms failed in a row: each next one waits longer (10 weight a try)
        self.rearm_backoff = Backoff(DEADMAN_RETRY_S, agent.runtime.deadman_heartbeat_sec, jitter=0.0)
        self._lapsed_at: float | None = None  # when the watchdog first saw the lease block (its clock)
        self._lapse_pulled = False
        self._beyond_cap = False   # the position alone beyond the cap, as last said
        self.armed_at: float | None = None  # when the last heartbeat that the exchange took was sent (monotonic)
        # One renewal at a time: answers taken in the order they were asked, so that an older one (its
        # kill state read before a kill's write) never lands after a newer one and undoes the kill.
        self._renewing = asyncio.Lock()

    async def quote_loop(self) -> None:
        """Every ``quote_interval_ms``: a quote cycle if nothing blocks and the core wants one; while
        blocked, only the cancels of what adds beyond the cap (a cancel is always safe), and while a
        lapsed lease alone blocks (the market fresh, the quotes not yet pulled) also of the quotes the
        ladder would move (``stale_quotes``)."""
        a = self.agent
        while not a.stopping:
            await a.clock.sleep(a.params.base.quote_interval_ms / 1000.0)
            core = a.core
            if core is None:
                continue
            if a.blocks:
                now_ms, actions = a.exchange_ms(), None
                if BLOCK_STARTING not in a.blocks and a.lease_ok():
                    actions = core.enforce_cap(now_ms)
                elif a.blocks == {BLOCK_LEASE} and not self._lapse_pulled and not a.lease.lost:
                    actions = core.enforce_cap(now_ms, stale=True)
                if actions:
                    a.sender.execute(actions, now_ms, None)
                continue
            now_ms = a.clock.time_ms() + a.offset_ms()
            if core.should_quote(now_ms):
                a.sender.quote(now_ms, None)

    async def deadman_loop(self) -> None:
        while not self.agent.stopping:
            await self.agent.tasks.sleep(self.agent.runtime.deadman_heartbeat_sec)
            if self.agent.stopping:
                return
            if not self.agent.lease_ok():
                continue  # a lapsed lease: let the exchange's countdown cancel
            try:
                await self.heartbeat()
            except BinanceError as exc:
                self.agent.log.event("deadman_failed", f"dead-man heartbeat failed: {exc!r}", level=logging.WARNING)

    async def _heartbeat_until_armed(self) -> None:
        """The countdown ran out (``deadman`` blocks quoting): a heartbeat now, then every
        ``DEADMAN_RETRY_S`` doubling up to the heartbeat's interval, until one is taken."""
        a = self.agent
        backoff = Backoff(DEADMAN_RETRY_S, a.runtime.deadman_heartbeat_sec, jitter=0.0)
        while BLOCK_DEADMAN in a.blocks and not a.stopping:
            wait = backoff.next()
            if a.lease_ok():
                try:
                    await self.heartbeat()   # (unblocks)
                    return
                except BinanceError as exc:
                    a.log.event("deadman_failed", f"dead-man heartbeat failed (next in {wait:g} s): {exc!r}",
                                level=logging.WARNING)
            await a.tasks.sleep(wait)

    async def _rearm_then_unblock(self) -> None:
        """The lease is back: arm the dead-man switch first, then let quoting resume."""
        try:
            if self.agent.stopping:
                return  # the stop disarms; arming now could outlive it
            left = self.countdown_left()
            if left is None or left < 2 * self.agent.runtime.deadman_heartbeat_sec:
                await self.heartbeat()
            else:   # a short lapse: the countdown armed before it still outlasts two heartbeats
                self.agent.log.event("deadman_still_armed", f"dead-man switch still armed ({left:.0f} s left)")
        except BinanceError as exc:  # still blocked: the watchdog tries again once the back-off is over
            wait = self.rearm_backoff.next()
            self.agent.log.event("deadman_failed", f"dead-man re-arm failed ({self.rearm_backoff.attempt} in a "
                                 f"row; next in {wait:g} s): {exc!r}", level=logging.WARNING)
            # (10 weight a try: it was tried every watchdog tick, 0.25 s); over at once if the heartbeat
            # loop armed the switch meanwhile
            until = self.agent.clock.monotonic() + wait
            while self.agent.clock.monotonic() < until and not self.agent.stopping:
                if (left := self.countdown_left()) is not None and left >= 2 * self.agent.runtime.deadman_heartbeat_sec:
                    break
                await self.agent.tasks.sleep(WATCHDOG_S)
            return
        finally:
            self._rearming = False
        self.rearm_backoff.reset()
        if self.agent.lease_ok() and not self.agent.lease.lost:
            self.agent.blocks.discard(BLOCK_LEASE)
            self.agent.log.event("lease_regained",
                                 f"lease valid again: dead-man switch re-armed, {quoting_said(self.agent)}")

    async def heartbeat(self) -> None:
        sent = self.agent.clock.monotonic()
        await self.agent.require_client().countdown_cancel_all(self.agent.symbol, self.agent.runtime.deadman_countdown_ms)
        self.armed_at = sent
        self.agent.counters["deadman_heartbeats"] += 1
        if BLOCK_DEADMAN in self.agent.blocks:
            self.agent.blocks.discard(BLOCK_DEADMAN)
            self.agent.log.event("deadman_rearmed", f"dead-man switch armed again: {quoting_said(self.agent)}",
                                 level=logging.WARNING)

    def countdown_left(self) -> float | None:
        """Seconds the exchange's countdown has left at least (counted from the heartbeat's sending);
        None before the first. A lease that lapses for a moment needs no re-arm (10 IP weight): at 50
        symbols, re-arms after the start's lease blips used up the IP's minute and held the last starts
        for some 60 s."""
        if self.armed_at is None:
            return None
        return self.agent.runtime.deadman_countdown_ms / 1000 - (self.agent.clock.monotonic() - self.armed_at)

    async def renew_loop(self) -> None:
        """Renewals until the lease is lost or the stop ends (it cancels this loop before it releases):
        the stop works under the lease (a symbol-wide cancel-all, the flatten, the dead-man switch's
        disarming), and on a slow exchange it outlasts the lease's ttl."""
        a = self.agent
        interval = a.ownership.renew_interval_s
        while not a.lease.lost:
            if a.stopping:
                await a.clock.sleep(interval)   # (``tasks.sleep`` returns at once during the stop)
            else:
                await a.tasks.sleep(interval)
            await self.renew_once()

    async def renew_once(self) -> None:
        """One renewal: its grant taken (a kill state the owner holds with it), or the lease's clock
        left to decide (a failure), or ownership lost (a refusal)."""
        async with self._renewing:
            send = self.agent.clock.monotonic()
            try:
                grant = await self.agent.ownership.renew()
            except OwnershipLost as exc:
                self.agent.on_ownership_lost(str(exc))
                return
            except Exception as exc:  # noqa: BLE001 - the lease check decides; keep trying
                self.agent.log.event("renew_failed", f"ownership renew failed: {exc!r}", level=logging.WARNING)
                return
            self.agent.take_grant(grant, send)

    async def watchdog_loop(self) -> None:
        """Every ``WATCHDOG_S``: the watchdog's actions (``agents/watchdog.py``), then look-ups."""
        a = self.agent
        timing = Timing(a.runtime.market_stale_sec, a.runtime.user_stream_grace_sec, a.runtime.stream_max_lifetime_sec,
                        a.runtime.lease_pull_sec)
        while not a.stopping:
            await a.clock.sleep(WATCHDOG_S)
            now = a.clock.monotonic()
            for act in watch(self._seen(now), timing):
                self._carry_out(act, now)
            if a.core is not None:
                a.sender.start_lookups(a.core, now)
                a.contract.check(a.exchange_ms())
                self._say_position_beyond_cap(a.core)
            a.frames.fold((a.market.stream, a.user.stream))
            a.publish()  # the snapshot other threads read (at most WATCHDOG_S old)

    def _say_position_beyond_cap(self, core: Any) -> None:
        """The position alone beyond the cap (another hand's trade or adjustment, the position the agent
        started on): said as it goes beyond, with the cap (only orders that reduce it then pass the
        guard), and as it comes back within. It was said nowhere but in the worst-case metrics."""
        beyond = abs(core.store.position_steps) > core.guard.cap_steps
        if beyond == self._beyond_cap:
            return
        self._beyond_cap = beyond
        a = self.agent
        if beyond:
            a.counters["positions_beyond_cap"] += 1
            a.log.event("position_beyond_cap", f"position {core.store.position} beyond the cap of "
                        f"{a.params.worst_cap} by itself: only orders that reduce it are sent", level=logging.WARNING)
        else:
            a.log.event("position_within_cap", f"position {core.store.position} within the cap of "
                        f"{a.params.worst_cap} again")

    def _seen(self, now: float) -> Seen:
        a, market, user = self.agent, self.agent.market, self.agent.user
        if BLOCK_LEASE not in a.blocks:   # the lease holds: no lapse under way
            self._lapsed_at, self._lapse_pulled = None, False
        elif self._lapsed_at is None:     # blocked by ownership lost, or a lapse this is the first look at
            self._lapsed_at = now
        return Seen(
            now=now, lease_ok=a.lease_ok(), lease_blocked=BLOCK_LEASE in a.blocks,
            ownership_lost=a.lease.lost, rearming=self._rearming, last_book=market.last_book,
            lease_lapsed_at=self._lapsed_at, lease_pulled=self._lapse_pulled,
            market_opened=market.opened_at, market_connected=market.connected and market.stream is not None,
            market_stale_blocked=BLOCK_MARKET_STALE in a.blocks, user_lost_at=user.lost_at,
            user_opened=user.opened_at, user_connected=user.connected, last_mark=market.last_mark,
            deadman_left=self.countdown_left() if a.started and not a.stopping else None,
            deadman_blocked=BLOCK_DEADMAN in a.blocks,
        )

    def _carry_out(self, act: Act, now: float) -> None:
        a = self.agent
        if act is Act.LEASE_LAPSED:
            a.blocks.add(BLOCK_LEASE)
            self.rearm_backoff.reset()   # a new lapse: its re-arm starts without a wait
            self._lapsed_at, self._lapse_pulled = now, False   # a lapse begins
            a.log.event("lease_lapsed", "lease lapsed: quoting stopped", level=logging.ERROR)
        elif act is Act.LEASE_PULL:
            self._lapse_pulled = True
            a.counters["lease_pulls"] += 1
            a.sender.pull_quotes(f"lease lapsed {now - (self._lapsed_at or now):.0f} s ago")
        elif act is Act.REARM:
            self._rearming = True
            a.tasks.spawn(self._rearm_then_unblock(), "deadman-rearm")
        elif act is Act.SWAP_MARKET:
            if not a.contract.closed():   # a symbol the exchange trades no more has no book to wait for
                a.market.swap(now)
        elif act is Act.MARKET_STALE:
            a.blocks.add(BLOCK_MARKET_STALE)
            a.counters["stale_market_pulls"] += 1
            a.log.event("market_stale", "no book update: quotes pulled", level=logging.WARNING)
            a.sender.pull_quotes("market_stale")
        elif act is Act.MARKET_FRESH:
            a.blocks.discard(BLOCK_MARKET_STALE)
        elif act is Act.REST_FALLBACK:
            a.user.fall_back()
        elif act is Act.SWAP_USER:
            a.user.swap(now)
        elif act is Act.DEADMAN_EXPIRED:
            a.blocks.add(BLOCK_DEADMAN)
            a.counters["deadman_expired"] += 1
            a.log.event("deadman_expired", "the dead-man countdown ran out with no heartbeat taken: quotes "
                        "pulled, quoting stops until one is taken", level=logging.ERROR)
            a.sender.pull_quotes("deadman_expired")
            a.tasks.spawn(self._heartbeat_until_armed(), "deadman-retry")
