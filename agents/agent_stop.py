"""Halting and stopping: cancel-all confirmed at the exchange (fenced to this epoch once the lease has
lapsed), reduce-only flattening until the exchange reports flat, and the ordered stop (cancel, flatten,
disarm the dead-man switch while the lease holds, close, release).

A part of :class:`agents.agent.SymbolAgent` (it holds the state these methods use).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from fleet.binance.client import BinanceClient
from fleet.binance.errors import BinanceError

from .orders import Cancel
from .agent_base import BLOCK_STOPPING, FATAL_START_CODES, _same_epoch


class Shutdown:
    """Cancel-all confirmed, flatten until flat, and the ordered stop."""

    async def _cancel_all_confirmed(self, deadline_s: float) -> int:
        """Cancel-all at the exchange, then poll open orders until none (or the deadline); returns the count."""
        client = self._client
        if client is None or self.core is None:
            return 0
        end = self.clock.monotonic() + deadline_s
        n = -1
        while True:
            try:
                # Fenced cleanup: once the lease has lapsed a new owner may be quoting this symbol,
                # so a symbol-wide cancel could hit its orders; cancel only the ones we placed.
                fenced = await self._cancel_fenced(client)
                listed = await client.open_orders(self.symbol)
                if fenced:
                    listed = [o for o in listed if _same_epoch(o.client_order_id, self.core.epoch)]
                for info in listed:
                    self.core.store.adopt(info)  # counted, even if the store had closed it on inference
                n = len(listed)
            except BinanceError as exc:
                self.log.event("cancel_all_failed", f"cancel-all: {exc!r}", level=logging.WARNING)
                if exc.code in FATAL_START_CODES:
                    break  # a wrong key or signature: no retry will get through
            if n == 0 or self.clock.monotonic() >= end:
                break
            await self.clock.sleep(0.2)
        return n if n >= 0 else len(self.core.store.orders)

    async def _cancel_fenced(self, client: BinanceClient) -> bool:
        """Cancel-all while the lease holds; once it lapsed, only this epoch's orders (True then).

        A lapsed lease may have a successor quoting this symbol, whose orders a symbol-wide cancel would hit.
        """
        if self._lease_ok():
            await client.cancel_all(self.symbol)
            return False
        core = self._require_core()
        epoch = core.epoch  # the store also tracks other epochs' orders (they are exposure)
        mine = [
            o.order_id for o in core.store.open_orders()
            if o.order_id is not None and _same_epoch(o.client_order_id, epoch)
        ]
        if mine:
            await client.batch_cancel(self.symbol, order_ids=mine)
        return True

    async def _flatten_confirmed(self, deadline_s: float) -> float:
        """Reduce-only market orders through the guard until the exchange reports flat (or the deadline)."""
        client = self._client
        core = self.core
        if client is None or core is None or self.filters is None:
            return 0.0
        end = self.clock.monotonic() + deadline_s
        while True:
            try:
                pos = await client.position(self.symbol, risk=True)
                listed = await client.open_orders(self.symbol)
            except BinanceError as exc:
                self.log.event("flatten_failed", f"position read failed: {exc!r}", level=logging.WARNING)
                pos = None
            if pos is not None:
                # the exchange's word on what is left to close (the stream may lag behind a market fill)
                core.reset_from_snapshot(pos, listed, self._exchange_ms())
                if pos.amount == 0:
                    return 0.0
                if not any(o.reason == "flatten" for o in core.store.orders.values()) and self._lease_ok():
                    actions = core.quote(self.clock.time_ms() + self._offset(), None)
                    if actions:
                        self._execute(actions, self.clock.time_ms() + self._offset(), None)
                        await self._wait_inflight(2.0)
            if self.clock.monotonic() >= end:
                return float(pos.amount) if pos is not None else core.store.position
            await self.clock.sleep(0.25)

    async def _stop(self, flatten: bool) -> dict:
        t0 = self.clock.monotonic()
        self._stopping = True
        for sleep in list(self._sleepers):  # the timers' loops see the stop now, not at their next beat
            sleep.cancel()
        self._blocks.add(BLOCK_STOPPING)
        self.log.event("stopping", f"stopping (flatten={flatten})")
        budget = self.runtime.stop_timeout_sec
        open_n = None
        position = None
        try:
            await asyncio.wait_for(self._stop_trading(flatten, t0), timeout=max(1.0, budget - 2.0))
        except asyncio.TimeoutError:
            self.log.event("stop_slow", "graceful stop ran out of time: forcing cancel-all", level=logging.ERROR)
            if self._client is not None and self._lease_ok():
                try:
                    await asyncio.wait_for(self._client.cancel_all(self.symbol), 1.5)
                except (BinanceError, OSError, asyncio.TimeoutError) as exc:  # the dead-man switch is the last net
                    self.log.event("stop_cancel_failed", f"forced cancel-all failed: {exc!r}", level=logging.ERROR)
        if self._client is not None:
            with contextlib.suppress(Exception):
                open_n = len(await asyncio.wait_for(self._client.open_orders(self.symbol), 1.5))
            with contextlib.suppress(Exception):
                position = float((await asyncio.wait_for(self._client.position(self.symbol, risk=True), 1.5)).amount)
        for task in self._tasks:
            task.cancel()
        for task in list(self._inflight):
            task.cancel()
        await asyncio.gather(*self._tasks, *self._inflight, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.journal.on_stop(self), 8.0)  # last backfill and flush; client open
        await self._close_streams()
        if self._client is not None:
            await self._client.close()
        try:
            await self._ownership.release()
        except Exception as exc:  # noqa: BLE001 - the lease then runs out on its own; say so
            self.log.event("release_failed", f"ownership not released: {exc!r}", level=logging.WARNING)
        self._stopped = True
        summary = {
            **self.status(),
            "exposure": self.exposure(),
            "exchange_open_orders": open_n,
            "exchange_position": position,
            "flattened": bool(flatten),
            "stop_elapsed_ms": int((self.clock.monotonic() - t0) * 1000),
        }
        if open_n is not None:
            summary["open_orders"] = open_n  # the exchange's count, not the store's last view
        if position is not None:
            summary["position"] = position
        self._stop_summary = summary
        self.publish()
        self.log.event("stopped", f"stopped in {summary['stop_elapsed_ms']} ms: {open_n} open orders, position {position}")
        if self._done is not None:
            self._done.set()
        return summary

    async def _stop_trading(self, flatten: bool, t0: float) -> None:
        for task in self._tasks:
            if task.get_name() in ("quote", "watchdog"):
                task.cancel()
        await self._wait_inflight(2.0)
        if self._client is None or self.core is None:
            return  # nothing of ours can be resting: the start never got as far as the symbol
        if not self._started and self.grant is not None:
            self.log.event("stop_during_start", "stopped while starting: cancelling whatever rests", level=logging.WARNING)
        budget = self.runtime.stop_timeout_sec
        await self._cancel_all_confirmed(deadline_s=budget / 3)
        if flatten and self._lease_ok():
            self.core.flatten("stop")
            await self._flatten_confirmed(deadline_s=budget / 3)
            await self._cancel_all_confirmed(deadline_s=2.0)
        if self._lease_ok():  # a lapsed lease may have a successor whose dead-man switch this would disarm
            try:
                await self._client.countdown_cancel_all(self.symbol, 0)  # disarm the dead-man switch
            except BinanceError as exc:  # still armed: it fires on an already emptied book
                self.log.event(
                    "deadman_disarm_failed", f"dead-man switch not disarmed: {exc!r}", level=logging.WARNING
                )

    async def _wait_inflight(self, timeout: float) -> None:
        if self._inflight:
            await asyncio.wait(list(self._inflight), timeout=timeout)
