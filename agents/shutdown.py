"""Halting and stopping: cancel-all confirmed at the exchange (fenced to this epoch once the lease has
lapsed), reduce-only flattening until the exchange reports flat, and the ordered stop (cancel until no
order of ours may still land, flatten, disarm the dead-man switch while the lease holds, close, release).

A part of :class:`agents.agent.SymbolAgent`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Callable

from fleet.binance.client import BinanceClient
from fleet.binance.errors import BinanceError

from .agent_base import BLOCK_STOPPING, FATAL_START_CODES, _older_epoch, _same_epoch
from .core import flatten_in_flight
from .orders import OrderReason, parse_client_order_id

LANDING_POLL_S = 0.5  # the stop's cancel-all round while an order of ours may still land
# Of ``stop_timeout_sec``, what the graceful part leaves to the steps after it (a quarter of a shorter
# one), so that a stop against an exchange that answers nothing still ends within it: a forced cancel-all
# (1.5 s, first), the exchange's view and the journal's last read together (what is left, 0.3 s at least),
# the sockets' close (1 s), the release.
STOP_RESERVE_S = 4.5
LANDING_FLOOR_S = 2.5  # the flatten's stop outwaits what may still land this long at least

if TYPE_CHECKING:
    from .agent import SymbolAgent


class Shutdown:
    """Cancel-all confirmed, flatten until flat, and the ordered stop."""

    def __init__(self, agent: SymbolAgent) -> None:
        self.agent = agent
        self._task: asyncio.Task | None = None
        self.summary: dict | None = None
        self.graceful_until = 0.0   # when the graceful part of the stop must have ended (monotonic)
        self.deadline = 0.0         # when the whole stop must have ended (monotonic)
        self.left_open = -1         # open orders the exchange listed at the last confirmed cancel (-1: unknown)

    async def cancel_all_confirmed(self, deadline_s: float, until: Callable[[], bool] | None = None) -> int:
        """Cancel-all at the exchange, then poll open orders until none (or the deadline, or ``until()``:
        a halt superseded by a resume must not cancel the quotes that follow it); returns the count."""
        client = self.agent.client
        if client is None or self.agent.core is None:
            return 0
        end = self.agent.clock.monotonic() + deadline_s
        superseded = until or (lambda: False)
        n = -1
        while not superseded():
            try:
                # Fenced cleanup: once the lease has lapsed a new owner may be quoting this symbol,
                # so a symbol-wide cancel could hit its orders; cancel only the ones we placed.
                try:
                    fenced = await self.cancel_fenced(client)
                except BinanceError as exc:
                    if exc.code in FATAL_START_CODES:
                        raise
                    # the exchange refused the cancel-all (a 5xx, an unknown answer): the orders listed,
                    # cancelled ten at a time by the batch route, another door of the exchange
                    self.agent.log.event("cancel_all_failed", f"cancel-all: {exc!r}; cancelling the listed orders",
                                         level=logging.WARNING)
                    try:
                        fenced = await self._cancel_listed(client)
                    except BinanceError as exc2:   # still listed below: the count is known, not -1
                        if exc2.code in FATAL_START_CODES:
                            raise
                        self.agent.log.event("cancel_all_failed", f"batch cancel: {exc2!r}", level=logging.WARNING)
                        fenced = not self.agent.lease_ok()
                listed = await client.open_orders(self.agent.symbol)
                if fenced:
                    listed = [o for o in listed if self._fenced_ours(o.client_order_id)]
                for info in listed:
                    self.agent.core.store.adopt(info)  # counted, even if the store had closed it on inference
                n = len(listed)
            except BinanceError as exc:
                self.agent.log.event("cancel_all_failed", f"cancel-all: {exc!r}", level=logging.WARNING)
                if exc.code in FATAL_START_CODES:
                    break  # a wrong key or signature: no retry will get through
            if n == 0 or self.agent.clock.monotonic() >= end:
                break
            await self.agent.clock.sleep(0.2)
        self.left_open = n   # the exchange's last listing (-1: none answered)
        return n if n >= 0 else len(self.agent.core.store.orders)

    async def _cancel_listed(self, client: BinanceClient) -> bool:
        """The symbol's listed orders (this epoch's only once the lease lapsed: True) cancelled by the
        batch route (ten a request)."""
        fenced = not self.agent.lease_ok()
        await client.cancel_listed(self.agent.symbol,
                                   keep=(lambda o: self._fenced_ours(o.client_order_id)) if fenced else None)
        return fenced

    def _ours_of_this_epoch(self, client_order_id: str) -> bool:
        """An order of this epoch, this agent's: all of them, unless another process may share the epoch
        (ownership lost, or the start found another's orders of it: a state directory removed, or shared
        by mistake); then only those this core sent. Such an owner's stop cancelled, and counted, the next
        agent's book as its own."""
        core = self.agent.core
        if core is None:
            return True
        shared = self.agent.ownership_lost or self.agent.starter.others_seen
        if not shared:
            return True
        sent = core.store.get(client_order_id)
        return sent is not None and sent.reason != OrderReason.EXTERNAL

    def _fenced_ours(self, client_order_id: str) -> bool:
        """What a fenced cancel (the lease lapsed) may touch: this epoch's orders that are this agent's."""
        epoch = self.agent.require_core().epoch
        return _same_epoch(client_order_id, epoch) and self._ours_of_this_epoch(client_order_id)

    async def cancel_until_none_may_land(self, deadline_s: float) -> list[str]:
        """Cancel-all confirmed, again every ``LANDING_POLL_S`` while an order of ours may still land and
        rest: a place answered 503, or not at all, may execute until its recvWindow closes, after the
        book was emptied. Returns the client ids that might still land at the deadline (none: the book
        is empty for good)."""
        a = self.agent
        end = a.clock.monotonic() + deadline_s
        while True:
            landing = a.sender.may_yet_rest()   # before the round: whatever lands later, lands inside it
            await self.cancel_all_confirmed(deadline_s=max(0.0, end - a.clock.monotonic()))   # one round at least
            if not landing or a.clock.monotonic() + LANDING_POLL_S >= end:
                return landing
            await a.clock.sleep(LANDING_POLL_S)

    async def cancel_fenced(self, client: BinanceClient) -> bool:
        """Cancel-all while the lease holds; once it lapsed, only this epoch's orders (True then).

        A lapsed lease may have a successor quoting this symbol, whose orders a symbol-wide cancel would hit.
        """
        if self.agent.lease_ok():
            await client.cancel_all(self.agent.symbol)
            return False
        core = self.agent.require_core()   # the store also tracks other epochs' orders (they are exposure)
        mine = [o.order_id for o in core.store.open_orders()
                if o.order_id is not None and self._fenced_ours(o.client_order_id)]
        if mine:
            await client.batch_cancel(self.agent.symbol, order_ids=mine)
        return True

    async def flatten_confirmed(self, deadline_s: float, until: Callable[[], bool] | None = None) -> float:
        """Reduce-only market orders through the guard until the exchange reports flat (or the deadline,
        or ``until()``)."""
        client = self.agent.client
        core = self.agent.core
        if client is None or core is None or self.agent.filters is None:
            return 0.0
        end = self.agent.clock.monotonic() + deadline_s
        superseded = until or (lambda: False)
        while not superseded():
            try:
                listed_at = self.agent.exchange_ms()
                listed = await client.open_orders(self.agent.symbol)   # before the position: see Starter.resync
                pos = await client.position(self.agent.symbol, risk=True)
            except BinanceError as exc:
                self.agent.log.event("flatten_failed", f"position read failed: {exc!r}", level=logging.WARNING)
                pos = None
            if superseded():   # resumed while it read: the core quotes again, and the ladder is its own
                break
            if pos is not None:
                # the exchange's word on what is left to close (the stream may lag behind a market fill)
                core.reset_from_snapshot(pos, listed, self.agent.exchange_ms(), listed_at_ms=listed_at)
                if pos.amount == 0:
                    return 0.0
                # a flatten order of unknown outcome is looked up past its window (in a stop the watchdog,
                # which looks up, is gone): one never placed counts no more, and the next goes
                self.agent.sender.start_lookups(core, self.agent.clock.monotonic())
                if not flatten_in_flight(core.store) and self.agent.lease_ok():
                    actions = core.quote(self.agent.clock.time_ms() + self.agent.offset_ms(), None)
                    if actions:
                        self.agent.sender.execute(actions, self.agent.clock.time_ms() + self.agent.offset_ms(), None)
                        await self._wait_inflight(2.0)
            if self.agent.clock.monotonic() >= end:
                return float(pos.amount) if pos is not None else core.store.position
            await self.agent.clock.sleep(0.25)
        return core.store.position

    async def stop(self, flatten: bool) -> dict:
        """The ordered stop, once: later calls wait for the first one's summary."""
        if self._task is None:
            self._task = asyncio.ensure_future(self._stop(flatten))
        return await asyncio.shield(self._task)

    async def _stop(self, flatten: bool) -> dict:
        a = self.agent
        t0 = a.clock.monotonic()
        a.stopping = True
        a.tasks.wake_sleepers()
        a.blocks.add(BLOCK_STOPPING)
        a.log.event("stopping", f"stopping (flatten={flatten})")
        graceful = max(1.0, a.runtime.stop_timeout_sec - min(STOP_RESERVE_S, a.runtime.stop_timeout_sec / 4))
        self.graceful_until = t0 + graceful
        self.deadline = t0 + max(a.runtime.stop_timeout_sec, graceful)
        try:
            await asyncio.wait_for(self._stop_trading(flatten), timeout=graceful)
        except asyncio.TimeoutError:
            a.log.event("stop_slow", "graceful stop ran out of time: forcing cancel-all", level=logging.ERROR)
            if a.client is not None and a.lease_ok():
                try:
                    await asyncio.wait_for(a.client.cancel_all(a.symbol), self._within(1.5, keep=1.0))
                except (BinanceError, OSError, asyncio.TimeoutError) as exc:  # the dead-man switch is the last net
                    a.log.event("stop_cancel_failed", f"forced cancel-all failed: {exc!r}", level=logging.ERROR)
        await a.tasks.cancel_all(a.sender.inflight)
        # what the exchange says is left, and the journal's last backfill and snapshot (client open), at once
        view, _ = await asyncio.gather(self._exchange_view(self._within(3.0, keep=1.0)),
                                       a.journal.on_stop(a, self._within(5.5, keep=1.0)), return_exceptions=True)
        open_n, own_n, position = view if isinstance(view, tuple) else (None, None, None)
        await a.close_streams()
        if a.client is not None:
            await a.client.close()
        try:
            await a.ownership.release()
        except Exception as exc:  # noqa: BLE001 - the lease then runs out on its own; say so
            a.log.event("release_failed", f"ownership not released: {exc!r}", level=logging.WARNING)
        a.stopped = True
        summary = {
            **a.status(),
            "exposure": a.exposure(),
            "exchange_open_orders": open_n,
            # this epoch's and older epochs' orders still listed (None: not read, though the agent had reached
            # the exchange, and its last confirmed cancel did not list 0); a later epoch's (a successor's,
            # another owner's) and another hand's are not the stop's to take
            "exchange_own_orders": (0 if a.grant is None or a.client is None
                                    else own_n if own_n is not None else 0 if self.left_open == 0 else None),
            "exchange_position": position,
            "other_owner_orders": a.starter.others_resting if not a.started else 0,   # another's, left as they are
            "flattened": bool(flatten) and position == 0,   # the exchange says flat (None: not read)
            "stop_elapsed_ms": int((a.clock.monotonic() - t0) * 1000),
        }
        if open_n is not None:
            summary["open_orders"] = open_n  # the exchange's count, not the store's last view
        if position is not None:
            summary["position"] = position
        self.summary = summary
        a.publish()
        a.log.event("stopped", f"stopped in {summary['stop_elapsed_ms']} ms: {open_n} open orders, position {position}")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(a.journal.close(), 3.0)   # after every event of the stop, "stopped" too
        a.done()
        return summary

    def _within(self, cap_s: float, keep: float = 0.0) -> float:
        """A later step's timeout: at most ``cap_s``, and what is left of the stop's deadline once ``keep``
        is set aside for the steps after it (0.3 s at least: each is tried)."""
        return max(0.3, min(cap_s, self.deadline - self.agent.clock.monotonic() - keep))

    async def _exchange_view(self, timeout_s: float) -> tuple[int | None, int | None, float | None]:
        """What the exchange says is left: open orders, this epoch's and older epochs' among them, and the
        position (None where it did not answer), both read at once within ``timeout_s``."""
        client = self.agent.client
        if client is None:
            return None, None, None
        symbol = self.agent.symbol
        listed, risk = await asyncio.gather(asyncio.wait_for(client.open_orders(symbol), timeout_s),
                                            asyncio.wait_for(client.position(symbol, risk=True), timeout_s),
                                            return_exceptions=True)
        open_n = own_n = position = None
        with contextlib.suppress(Exception):
            if isinstance(listed, list):
                epoch = self.agent.grant.epoch if self.agent.grant is not None else 0
                own_n = sum(1 for o in listed if (p := parse_client_order_id(o.client_order_id)) is not None
                            and (p[0] < epoch or p[0] == epoch and self._ours_of_this_epoch(o.client_order_id)))
                open_n = len(listed)
        if not isinstance(risk, BaseException):
            with contextlib.suppress(Exception):
                position = float(risk.amount)
        return open_n, own_n, position

    async def _stop_trading(self, flatten: bool) -> None:
        a = self.agent
        for task in a.tasks.named("quote", "watchdog"):
            task.cancel()
        await self._wait_inflight(2.0)
        if a.client is None or a.core is None:
            await self._cancel_before_core()   # the older epochs' orders the start was to cancel
            return
        if not a.started and a.starter.others_resting and await a.starter.others_still_rest():
            a.log.event("stop_during_start", "stopped while another owner's orders rest (the start refused to quote "
                        "beside them): they are left to it", level=logging.WARNING)
            if flatten:
                a.log.event("flatten_unfinished", "the stop does not flatten: another owner trades the symbol on this "
                            "account (its orders rest), the position is its too", level=logging.ERROR)
            return
        if not a.started and a.starter.others_seen:
            # its orders gone for a moment (pulled, halted), not the owner: a cancel-all would reach what it
            # places next, and disarming the dead-man switch would take the switch it relies on
            a.log.event("stop_during_start", "stopped while another owner trades the symbol (the start saw its "
                        "orders): only the older epochs' orders are cancelled, its dead-man switch left armed",
                        level=logging.WARNING)
            await self._cancel_before_core()
            return
        if not a.started and a.grant is not None:
            a.log.event("stop_during_start", "stopped while starting: cancelling whatever rests", level=logging.WARNING)
        budget = a.runtime.stop_timeout_sec
        if flatten and a.lease_ok():   # risk off first: what may still land is outwaited after the flatten
            # the cancel and the flatten share what the graceful part has left once the landing's wait and
            # the disarm (LANDING_FLOOR_S + 0.5 s) are set aside: they fit in it, whatever the exchange's pace
            share = max(1.0, (self.graceful_until - a.clock.monotonic() - LANDING_FLOOR_S - 0.5) / 2)
            await self.cancel_all_confirmed(deadline_s=min(budget / 3, share))
            a.core.flatten("stop")
            left = await self.flatten_confirmed(deadline_s=min(budget / 3, share))
            if left:
                a.log.event("flatten_unfinished", f"the stop's flatten left a position of {left} "
                            f"({'the lease lapsed' if not a.lease_ok() else 'out of time'})", level=logging.ERROR)
            # as long as without a flatten, within what the stop has left: an order answered ambiguously
            # may land for its recvWindow (5 s) and more, and rested after a `down --flatten` (2.5 s)
            left_s = self.graceful_until - a.clock.monotonic() - 0.5
            landing = await self.cancel_until_none_may_land(deadline_s=max(LANDING_FLOOR_S, min(budget / 3, left_s)))
        else:
            if flatten:
                a.log.event("flatten_unfinished", "the stop does not flatten: the lease has lapsed (a successor "
                            "may own the symbol)", level=logging.ERROR)
            landing = await self.cancel_until_none_may_land(deadline_s=budget / 3)
        if landing:
            then = ("the dead-man switch stays armed" if a.lease_ok()
                    else "the lease lapsed: its successor's reconciliation cancels an earlier epoch's order")
            a.log.event("stop_landing", f"{len(landing)} order(s) may still land at the exchange after the stop "
                        f"(answered ambiguously, inside their recvWindow): {then}", level=logging.WARNING)
        elif self.left_open != 0:   # still listed, or never listed: the dead-man switch is what cancels them
            left = "an unknown number of" if self.left_open < 0 else str(self.left_open)
            a.log.event("stop_left_orders", f"{left} order(s) still open at the exchange after the stop's cancels: "
                        f"the dead-man switch stays armed and cancels them when its countdown runs out",
                        level=logging.ERROR)
        elif a.lease_ok():  # a lapsed lease may have a successor whose dead-man switch this would disarm
            try:
                await a.client.countdown_cancel_all(a.symbol, 0)  # disarm the dead-man switch
            except BinanceError as exc:  # still armed: it fires on an already emptied book
                a.log.event("deadman_disarm_failed", f"dead-man switch not disarmed: {exc!r}", level=logging.WARNING)

    async def _cancel_before_core(self) -> None:
        """A stop while the start had not yet read the symbol: no order of this agent rests, but a
        predecessor's (an older epoch) may, which the start was to cancel; they go (only those: what
        else rests is not known to be anyone's of ours), and what is left is counted."""
        a = self.agent
        if a.client is None or a.grant is None or not a.lease_ok():
            return
        a.log.event("stop_during_start", "stopped while starting: cancelling the older epochs' orders",
                    level=logging.WARNING)
        epoch = a.grant.epoch
        try:
            await a.client.cancel_listed(a.symbol, keep=lambda o: _older_epoch(o.client_order_id, epoch))
            listed = await a.client.open_orders(a.symbol)
            self.left_open = sum(1 for o in listed if _older_epoch(o.client_order_id, epoch))
        except (BinanceError, OSError, asyncio.TimeoutError) as exc:
            a.log.event("stop_cancel_failed", f"the older epochs' orders not cancelled: {exc!r}", level=logging.ERROR)
            return
        if self.left_open:
            a.log.event("stop_left_orders", f"{self.left_open} older-epoch order(s) still open at the exchange after "
                        f"the stop: their dead-man switch cancels them when its countdown runs out",
                        level=logging.ERROR)

    async def _wait_inflight(self, timeout: float) -> None:
        inflight = self.agent.sender.inflight
        if inflight:
            await asyncio.wait(list(inflight), timeout=timeout)
