"""The reconciliation backstop's I/O: every ``reconcile_interval_sec`` the exchange's open orders (and,
every Nth time, the position) compared through :func:`agents.reconcile.reconcile_orders`, whose plan
is carried out, logged, counted and shown in status.

A part of :class:`agents.agent.SymbolAgent`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from fleet.binance.errors import BinanceError

from .carry import retry_gap
from .core import Actions
from .orders import Cancel, OrderReason, make_batches
from .reconcile import reconcile_orders
from .agent_base import BLOCK_RESYNC, BLOCK_USER_STREAM

# a stream figure's move unexplained this long (a trade frame may follow its ACCOUNT_UPDATE by a little):
# its trades are read
UNEXPLAINED_GRACE_MS = 2_000
# Fills a REST answer told of wait this long for their trade frames: the answer comes on another road than
# the stream, which may lag it by seconds (a position frame and its trade frames come on the same one)
UNFRAMED_GRACE_MS = 10_000

if TYPE_CHECKING:
    from .agent import SymbolAgent


class Reconciler:
    """The reconciliation backstop's loop and repairs."""

    def __init__(self, agent: SymbolAgent) -> None:
        self.agent = agent
        self.last_repair: dict[str, Any] | None = None  # the last repair, for status
        self._position_mismatch = False  # the last position check disagreed (a second one resyncs)
        self._position_agreed_ms: int | None = None   # when the last position check agreed (exchange ms)

    async def loop(self) -> None:
        """The backstop: every ``reconcile_interval_sec`` the exchange's open orders against the
        store (and, every Nth time, the position against positionRisk); differences are repaired,
        logged, counted (``mm_reconcile_discrepancies_total``) and shown in status."""
        n = 0
        while not self.agent.stopping:
            await self.agent.tasks.sleep(self.agent.runtime.reconcile_interval_sec)
            if self.agent.stopping or self.agent.core is None or self.agent.client is None:
                return
            if BLOCK_RESYNC in self.agent.blocks or BLOCK_USER_STREAM in self.agent.blocks:
                continue  # a resync is the stronger repair, and is under way
            n += 1
            self.agent.user.look_up_funding()  # a fee whose income rows could not be read yet
            self._unexplained_moves()
            self.agent.user.look_up_trades()   # trades whose P&L a gap or a frame missed
            if self.agent.carry_gap is not None and not self.agent.tasks.named("carry-gap"):
                self.agent.tasks.spawn(retry_gap(self.agent), "carry-gap")   # the start's gap, its read failed
            try:
                await self._reconcile_orders()
                if n % self.agent.runtime.reconcile_position_every == 0:
                    await self._reconcile_algos()
                    await self._reconcile_position()
            except BinanceError as exc:
                self.agent.log.event("reconcile_failed", f"reconciliation skipped: {exc!r}", level=logging.WARNING)

    def _unexplained_moves(self) -> None:
        """A position the exchange moved (ACCOUNT_UPDATE) with no trade frame of its millisecond to explain
        it, a beat later: the trade frames were lost on a live connection (no error, no gap the stream
        saw), so the P&L would miss them for good; the trades from then are read (each booked once). So too
        fills a REST answer told of whose trade frames never came (``Position.unframed``)."""
        pos = self.agent.require_core().store.position_book
        if (told := pos.unframed_due(self.agent.exchange_ms(), UNFRAMED_GRACE_MS)) is not None:
            self.note_repair("trades_unseen", None, f"fills told at {told} by the exchange's answers came with no "
                                                    f"trade frame: the trades from then are read")
            self.agent.user.note_gap(told)
        t = pos.unexplained_ms
        if t is None or self.agent.exchange_ms() - t < UNEXPLAINED_GRACE_MS:
            return
        pos.unexplained_ms = None
        self.note_repair("trades_unseen", None, f"the position moved at {t} with no trade frame to explain it: "
                                                f"the trades from then are read")
        self.agent.user.note_gap(t)

    async def _reconcile_orders(self) -> None:
        client = self.agent.require_client()
        core = self.agent.require_core()
        listed_at = self.agent.exchange_ms()
        listed = await client.open_orders(self.agent.symbol)
        self.agent.counters["reconciliations"] += 1
        plan = reconcile_orders(
            core.store, listed, epoch=core.epoch, listed_at_ms=listed_at,
            quoting=self.agent.quoting_live(), may_cancel=self.agent.lease_ok(),
        )
        for cid in plan.adopted:
            self.note_repair("untracked", cid, "open at the exchange, not counted here: adopted")
        for cid in plan.foreign:
            self.note_repair("untracked", cid, "an order not placed by mmfleet: counted, left alone")
            self.agent.user.foreign_order(cid, "listed by the reconciliation", say=False)
        for cid in plan.old_epoch:
            self.note_repair("old_epoch", cid, "an earlier epoch's order still open")
        for cid in plan.lookup:
            self.note_repair("missing", cid, "counted here, not listed by the exchange: looked up")
            self.agent.tasks.spawn(self.agent.sender.resolve(cid), "resolve")
        if plan.cancel:
            # Sent as the quote cycle's cancels are: marked in the store first (so the user stream's
            # CANCELED is ours, not another hand's), journaled, an ambiguous answer cancelled again.
            cancels = [Cancel(cid, oid, OrderReason.RECONCILE) for cid, oid in plan.cancel]
            for c in cancels:
                self.note_repair("orphan_cancelled", c.client_order_id, "cancel sent: no ladder of ours wants it")
            batches = make_batches(cancels, (), (), core.store.position_steps)   # 10 a call, as the cycle's
            self.agent.sender.execute(Actions(batches), self.agent.exchange_ms(), None)

    async def _reconcile_algos(self) -> None:
        """Other hands' conditional orders (``agents/algos.py``) against ``GET openAlgoOrders``: one
        whose frame was lost or malformed is counted from here on, one that ended unseen no longer."""
        a = self.agent
        core = a.require_core()
        listed_at = a.exchange_ms()
        listed = await a.require_client().open_algo_orders(a.symbol)
        before = set(core.store.ledger.algos.open)
        core.store.sync_algos(listed, listed_at)
        after = set(core.store.ledger.algos.open)
        for algo_id in sorted(after - before):
            self.note_repair("algo_untracked", None, f"conditional order {algo_id} of another hand listed: counted")
        for algo_id in sorted(before - after):
            self.note_repair("algo_gone", None, f"conditional order {algo_id} no longer listed: not counted")

    async def _reconcile_position(self) -> None:
        """A position that differs from positionRisk twice in a row (one may be a fill in flight) is
        repaired by a resync from REST."""
        core = self.agent.require_core()
        asked_at = self.agent.exchange_ms()
        pos = await self.agent.require_client().position(self.agent.symbol, risk=True)
        if core.store.steps(pos.amount) == core.store.position_steps:
            self._position_mismatch = False
            self._position_agreed_ms = asked_at
            return
        if not self._position_mismatch:
            self._position_mismatch = True
            return
        self._position_mismatch = False
        self.note_repair("position", None, f"position {core.store.position} here, {pos.amount} at the exchange: resync")
        # the fills that moved it unseen (their trade and position frames lost on a live connection) owe their
        # P&L and fees: the trades since it last agreed are read (each booked once)
        agreed = self._position_agreed_ms
        self.agent.user.note_gap(agreed if agreed is not None else getattr(self.agent, "trades_known_ms", asked_at))
        await self.agent.starter.resync()

    def note_repair(self, kind: str, client_order_id: str | None, detail: str) -> None:
        self.agent.counters["reconcile_repairs"] += 1
        self.agent.metrics.inc_discrepancy(kind)
        self.last_repair = {"kind": kind, "client_order_id": client_order_id, "detail": detail, "time_ms": self.agent.exchange_ms()}
        self.agent.log.event("reconcile_repair", f"{kind}: {detail}", level=logging.WARNING, client_order_id=client_order_id)
