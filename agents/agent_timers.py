"""The agent's timers: the quote loop, the dead-man heartbeat and its re-arm, lease renewal, and the
watchdog, whose decisions come from :func:`agents.watchdog.watch` and are carried out here.

A part of :class:`agents.agent.SymbolAgent` (it holds the state these methods use).
"""

from __future__ import annotations

import logging

from fleet.binance.errors import BinanceError

from .ownership import OwnershipLost
from .watchdog import Act, Seen, Timing, watch
from .agent_base import BLOCK_LEASE, BLOCK_MARKET_STALE, BLOCK_STARTING, WATCHDOG_S


class Timers:
    """The quote loop, the dead-man switch, lease renewal and the watchdog."""

    async def _quote_loop(self) -> None:
        interval = self.params.base.quote_interval_ms / 1000.0
        while not self._stopping:
            await self.clock.sleep(interval)
            core = self.core
            if core is None:
                continue
            if self._blocks:
                if BLOCK_STARTING not in self._blocks and self._lease_ok():
                    # no quoting, but what adds beyond the cap still goes at once (a cancel is always safe)
                    now_ms = self._exchange_ms()
                    actions = core.enforce_cap(now_ms)
                    if actions:
                        self._execute(actions, now_ms, None)
                continue
            now_ms = self.clock.time_ms() + self._offset()
            if core.should_quote(now_ms):
                self._quote(now_ms, None)
            interval = self.params.base.quote_interval_ms / 1000.0

    async def _deadman_loop(self) -> None:
        while not self._stopping:
            await self._sleep_unless_stopping(self.runtime.deadman_heartbeat_sec)
            if self._stopping:
                return
            if not self._lease_ok():
                continue  # a lapsed lease: let the exchange's countdown cancel
            try:
                await self._heartbeat()
            except BinanceError as exc:
                self.log.event("deadman_failed", f"dead-man heartbeat failed: {exc!r}", level=logging.WARNING)

    async def _rearm_then_unblock(self) -> None:
        """The lease is back: arm the dead-man switch first, then let quoting resume."""
        try:
            if self._stopping:
                return  # the stop disarms; arming now could outlive it
            await self._heartbeat()
        except BinanceError as exc:  # still blocked: the watchdog tries again on its next tick
            self.log.event("deadman_failed", f"dead-man re-arm failed: {exc!r}", level=logging.WARNING)
            return
        finally:
            self._rearming = False
        if self._lease_ok() and not self._lease.lost:
            self._blocks.discard(BLOCK_LEASE)
            self.log.event("lease_regained", "lease valid again: dead-man switch re-armed, quoting resumes")

    async def _heartbeat(self) -> None:
        await self._require_client().countdown_cancel_all(self.symbol, self.runtime.deadman_countdown_ms)
        self.counters["deadman_heartbeats"] += 1

    async def _renew_loop(self) -> None:
        own = self._ownership
        while not self._stopping and not self._lease.lost:
            await self._sleep_unless_stopping(own.renew_interval_s)
            if self._stopping:
                return
            send = self.clock.monotonic()
            try:
                grant = await own.renew()
            except OwnershipLost as exc:
                self._on_ownership_lost(str(exc))
                return
            except Exception as exc:  # noqa: BLE001 - the lease check decides; keep trying
                self.log.event("renew_failed", f"ownership renew failed: {exc!r}", level=logging.WARNING)
                continue
            self._take_grant(grant, send)

    async def _watchdog_loop(self) -> None:
        """Every ``WATCHDOG_S``: the watchdog's actions (``agents/watchdog.py``), then look-ups."""
        timing = Timing(self.runtime.market_stale_sec, self.runtime.user_stream_grace_sec,
                        self.runtime.stream_max_lifetime_sec)
        while not self._stopping:
            await self.clock.sleep(WATCHDOG_S)
            now = self.clock.monotonic()
            for act in watch(self._seen(now), timing):
                self._carry_out(act, now)
            core = self.core
            if core is not None:
                self._start_lookups(core, now)
                if len(self._lookups) > 1000:
                    self._lookups = {k: v for k, v in self._lookups.items() if k in core.store.orders}
            if len(self._streams) > 4:
                self._fold_streams()
            self.publish()  # the snapshot other threads read (at most WATCHDOG_S old)

    def _seen(self, now: float) -> Seen:
        return Seen(
            now=now, lease_ok=self._lease_ok(), lease_blocked=BLOCK_LEASE in self._blocks,
            ownership_lost=self._lease.lost, rearming=self._rearming, last_book=self._last_book_mono,
            market_opened=self._market_stream_opened, market_connected=self._market_connected and self._market is not None,
            market_stale_blocked=BLOCK_MARKET_STALE in self._blocks, user_lost_at=self._user_lost_at,
            user_opened=self._user_stream_opened, user_connected=self._user_connected,
        )

    def _carry_out(self, act: Act, now: float) -> None:
        if act is Act.LEASE_LAPSED:
            self._blocks.add(BLOCK_LEASE)
            self.log.event("lease_lapsed", "lease lapsed: quoting stopped", level=logging.ERROR)
        elif act is Act.REARM:
            self._rearming = True
            self._spawn(self._rearm_then_unblock(), "deadman-rearm")
        elif act is Act.SWAP_MARKET:
            silent = now - max(self._last_book_mono or 0.0, self._market_stream_opened)
            self._market_stream_opened = now
            self.log.event("market_swap", f"market stream reconnected (no book for {silent:.0f} s, or its lifetime)",
                           level=logging.WARNING)
            self._spawn(self._connect_market(), "market-swap")
        elif act is Act.MARKET_STALE:
            self._blocks.add(BLOCK_MARKET_STALE)
            self.counters["stale_market_pulls"] += 1
            self.log.event("market_stale", "no book update: quotes pulled", level=logging.WARNING)
            self._pull_quotes("market_stale")
        elif act is Act.MARKET_FRESH:
            self._blocks.discard(BLOCK_MARKET_STALE)
        elif act is Act.REST_FALLBACK:
            self._user_lost_at = None
            self._spawn(self._rest_fallback_cancel(), "rest-fallback")
        elif act is Act.SWAP_USER:
            self._user_stream_opened = now
            self._spawn(self._planned_user_swap(), "user-swap")
