"""The reconciliation backstop's I/O: every ``reconcile_interval_sec`` the exchange's open orders (and,
every Nth time, the position) compared through :func:`agents.reconcile.reconcile_orders`, whose plan
is carried out, logged, counted and shown in status.

A part of :class:`agents.agent.SymbolAgent` (it holds the state these methods use).
"""

from __future__ import annotations

import logging

from fleet.binance.errors import (
    BinanceError,
    OutcomeUnknownError,
)
from fleet.binance.models import OrderInfo

from .reconcile import reconcile_orders
from .agent_base import BLOCK_RESYNC, BLOCK_USER_STREAM


class Reconciliation:
    """The reconciliation backstop's loop and repairs."""

    async def _reconcile_loop(self) -> None:
        """The backstop: every ``reconcile_interval_sec`` the exchange's open orders against the
        store (and, every Nth time, the position against positionRisk); differences are repaired,
        logged, counted (``mm_reconcile_discrepancies_total``) and shown in status."""
        n = 0
        while not self._stopping:
            await self._sleep_unless_stopping(self.runtime.reconcile_interval_sec)
            if self._stopping or self.core is None or self._client is None:
                return
            if BLOCK_RESYNC in self._blocks or BLOCK_USER_STREAM in self._blocks:
                continue  # a resync is the stronger repair, and is under way
            n += 1
            self._look_up_funding()  # a fee whose income rows could not be read yet
            try:
                await self._reconcile_orders()
                if n % self.runtime.reconcile_position_every == 0:
                    await self._reconcile_position()
            except BinanceError as exc:
                self.log.event("reconcile_failed", f"reconciliation skipped: {exc!r}", level=logging.WARNING)

    async def _reconcile_orders(self) -> None:
        client = self._require_client()
        core = self._require_core()
        listed_at = self._exchange_ms()
        listed = await client.open_orders(self.symbol)
        self.counters["reconciliations"] += 1
        plan = reconcile_orders(
            core.store, listed, epoch=core.epoch, listed_at_ms=listed_at,
            quoting=self._quoting_live(), may_cancel=self._lease_ok(),
        )
        for cid in plan.adopted:
            self._note_repair("untracked", cid, "open at the exchange, not counted here: adopted")
        for cid in plan.foreign:
            self._note_repair("untracked", cid, "an order not placed by mmfleet: counted, left alone")
        for cid in plan.old_epoch:
            self._note_repair("old_epoch", cid, "an earlier epoch's order still open")
        for cid in plan.lookup:
            self._note_repair("missing", cid, "counted here, not listed by the exchange: looked up")
            self._spawn(self._resolve(cid), "resolve")
        if plan.cancel:
            results = await client.batch_cancel(self.symbol, order_ids=[oid for _, oid in plan.cancel])
            for (cid, oid), res in zip(plan.cancel, results):
                if isinstance(res, OrderInfo):
                    core.on_order_info(res)
                    self._note_repair("orphan_cancelled", cid, "cancelled: no ladder of ours wants it")
                elif isinstance(res, BinanceError) and not isinstance(res, OutcomeUnknownError):
                    core.store.on_cancel_rejected(cid, res.code, oid, self._exchange_ms())

    async def _reconcile_position(self) -> None:
        """A position that differs from positionRisk twice in a row (one may be a fill in flight) is
        repaired by a resync from REST."""
        core = self._require_core()
        pos = await self._require_client().position(self.symbol, risk=True)
        if core.store.steps(pos.amount) == core.store.position_steps:
            self._position_mismatch = False
            return
        if not self._position_mismatch:
            self._position_mismatch = True
            return
        self._position_mismatch = False
        self._note_repair("position", None, f"position {core.store.position} here, {pos.amount} at the exchange: resync")
        await self._resync()

    def _note_repair(self, kind: str, client_order_id: str | None, detail: str) -> None:
        self.counters["reconcile_repairs"] += 1
        self.metrics.inc_discrepancy(kind)
        self._last_repair = {"kind": kind, "client_order_id": client_order_id, "detail": detail, "time_ms": self._exchange_ms()}
        self.log.event("reconcile_repair", f"{kind}: {detail}", level=logging.WARNING, client_order_id=client_order_id)
