"""The start and the resync: the symbol's filters and the trading core, the user stream first (its
events buffered), the REST snapshot made the truth, older epochs' orders cancelled and confirmed
gone, the market stream, the dead-man switch armed. The resync repeats the snapshot step; one
that fails leaves quoting blocked, pulls the quotes and is tried again until it succeeds.

A part of :class:`agents.agent.SymbolAgent`; it owns the resync lock.
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import TYPE_CHECKING, Any

from fleet.binance.errors import BinanceError
from fleet.binance.models import OrderInfo

from .carry import take_in
from .core import AgentCore
from .orders import OrderReason, parse_client_order_id
from .strategy import size_problem
from .agent_base import BLOCK_RESYNC, BLOCK_USER_STREAM, Backoff, _older_epoch, outage_of, quoting_said

if TYPE_CHECKING:
    from .agent import SymbolAgent


def held_kill_state(wanted: str | None, wanted_seq: int | None, granted_seq: int, granted: str) -> str:
    """The kill state a new core starts in. A halt, flatten or resume asked while the agent started wins
    over the grant read at acquire, unless it carries a kill_seq older than the grant's: a stale command
    delivered late (a call Ray retried on the restarted actor, a resume sent before a later kill) must
    not undo the durable state. The grant itself already carries a newer direct command's state."""
    if wanted is None or (wanted_seq is not None and wanted_seq < granted_seq):
        return granted
    return wanted


class Starter:
    """The start's steps, in their safe order, and the resync from a REST snapshot."""

    def __init__(self, agent: SymbolAgent) -> None:
        self.agent = agent
        self._resync_lock = asyncio.Lock()
        self._retrying = False
        self.others_resting = 0   # another owner's orders the start found (refuse_other_owners)
        self.others_seen = False  # ... at any attempt: another owner trades the symbol, its book empty or not

    async def start(self) -> None:
        """Filters, user stream (buffering), snapshot, old epochs cancelled, market streams, dead-man."""
        a = self.agent
        client = a.require_client()
        await client.sync_time()
        a.filters = await client.symbol_filters(a.symbol)
        a.contract.at_start(a.filters)   # not TRADING: a fatal start; a delisting announced: noted
        problem = size_problem(a.params, a.filters)
        if problem:   # said, not fatal: the agent still guards what the symbol holds (validate, up, apply refuse it)
            a.log.event("size_below_minimum", problem, level=logging.ERROR)
        if a.core is None:
            self._build_core()
        # the exchange's terms, read together: the leverage's allowance (symbolConfig), the funding interval and
        # the account's order limits
        await asyncio.gather(a.contract.read_allowance(client), a.contract.read_funding(client, "start"),
                             a.contract.read_order_limits(client))
        await a.user.connect()
        await self.resync(initial=True)
        await take_in(a)   # the books a previous agent of the symbol left, and the trades since (agents/carry.py)
        await self.cancel_older_epochs()
        self.refuse_other_owners()
        await a.market.connect()
        await a.timers.heartbeat()

    def _build_core(self) -> None:
        a = self.agent
        assert a.grant is not None and a.filters is not None
        a.core = AgentCore(a.symbol, a.params, a.filters, a.grant.epoch)
        a.metrics.bind(a.core)
        state = held_kill_state(a.kill_wanted, a.kill_wanted_seq, getattr(a.ownership, "granted_seq", 0),
                                a.grant.kill_state)
        a.apply_kill_state(state, a.grant.kill_reason if state == a.grant.kill_state else "")
        reduce_only = a.reduce_only_wanted
        if reduce_only is None:
            reduce_only = bool(a.grant.reduce_only)
        a.core.set_reduce_only(reduce_only)

    async def resync(self, initial: bool = False) -> None:
        """REST snapshot (open orders, position, wallet) made the truth, then the buffered user events."""
        async with self._resync_lock:
            try:
                await self._resync_locked(initial)
            except Exception as exc:
                if not initial:   # a failed start is retried by the start itself
                    self._failed(exc)
                raise

    def _failed(self, exc: BaseException) -> None:
        """A resync that failed leaves its block: the store is not known to be the exchange's truth.
        Quotes resting on it are pulled, and a retry owns the block (the reconciler skips while it is
        set, so without one nothing would ever clear it)."""
        a = self.agent
        a.counters["resync_failures"] += 1
        a.log.event("resync_failed", f"resync failed: {exc!r}; quoting stays stopped until a snapshot is read",
                    level=logging.WARNING)
        if not self._retrying and not a.stopping:
            self._retrying = True
            a.tasks.spawn(self._retry(), "resync-retry")
        a.sender.pull_quotes("resync failed")

    async def _retry(self) -> None:
        """Resync again, with growing pauses, until one succeeds; a lost user stream's reconnect
        resyncs by itself, so the retry waits while it is lost."""
        a = self.agent
        backoff = Backoff(a.runtime.reconnect_backoff_initial_sec, a.runtime.reconnect_backoff_max_sec, rng=a.rng)
        outage, early = None, 0
        try:
            while not a.stopping and BLOCK_RESYNC in a.blocks:
                early = early + 1 if await a.tasks.sleep(backoff.next(), wake=outage) else 0   # (``outage_of``)
                if a.stopping or BLOCK_RESYNC not in a.blocks:
                    return
                if BLOCK_USER_STREAM in a.blocks or self._resync_lock.locked():
                    outage = None
                    continue
                try:
                    await self.resync()
                except Exception as exc:  # noqa: BLE001 - logged and counted by resync; try again
                    outage = outage_of(exc, a.client, early)
                    continue
                a.log.event("resync_recovered", f"resync succeeded after a failure: {quoting_said(a)}")
        finally:
            self._retrying = False

    async def _resync_locked(self, initial: bool) -> None:
        a = self.agent
        client = a.require_client()
        core = a.require_core()
        a.blocks.add(BLOCK_RESYNC)
        # The open orders first, then the position: an order that fills between the two reads is
        # then listed open and inside the position (counted twice, the safe side) instead of neither.
        listed_at = a.exchange_ms()
        before = core.store.position_steps
        # other hands' conditional orders first (agents/algos.py): one triggered between the reads is
        # then in the open orders or the position, never in none
        algos = await client.open_algo_orders(a.symbol)
        orders = await client.open_orders(a.symbol)
        position = await client.position(a.symbol)
        wallet = await self._wallet_balance()
        # The user events buffered meanwhile are applied next by the consumer, in order; the store
        # keeps per order the newest (update time, filled, stage), so the older ones change nothing.
        known, known_algos = set(core.store.orders), set(core.store.ledger.algos.open)
        core.reset_from_snapshot(position, orders, a.exchange_ms(), wallet_balance=wallet, listed_at_ms=listed_at,
                                 algo_orders=algos)
        for info in orders:
            if info.client_order_id not in known:
                a.user.foreign_listed(info)   # another hand's order resting on the symbol is said
        for algo in algos:
            if algo.algo_id not in known_algos:
                a.user.foreign_algo(algo.client_algo_id, f"{algo.order_type} {algo.side} {algo.quantity}, listed")
        if not initial:
            a.counters["resyncs"] += 1
            a.metrics.inc_rest_fallback()
        if not initial and before and core.store.position_steps != before:
            await self._liquidations_missed(client, a.user.last_lost_ms or listed_at - 60_000)
            # a settlement is not in forceOrders: the symbol's status says it (agents/delisting.py)
            a.tasks.spawn(a.contract.recheck("a user stream gap that changed the position"), "contract-recheck")
        a.blocks.discard(BLOCK_RESYNC)
        a.journal.on_resync(a, initial)
        a.log.event(
            "resynced",
            f"snapshot: position {core.store.position}, {len(orders)} open orders",
            position=core.store.position,
        )

    async def _liquidations_missed(self, client: Any, since_ms: int) -> None:
        """The snapshot shows the position changed while the stream was away: a liquidation whose
        CALCULATED frame was lost with it is in forceOrders (weight 20, read only then)."""
        a = self.agent
        try:
            rows = await client.force_orders(a.symbol, since_ms - 5_000)
        except BinanceError as exc:
            a.log.event("force_orders_unread", f"forceOrders not read after a resync: {exc!r}", level=logging.WARNING)
            return
        for r in rows:
            a.user.liquidation(int(r.get("orderId") or 0), str(r.get("clientOrderId") or ""), False,
                               f"{r.get('side')} {r.get('executedQty')} @ {r.get('avgPrice')} (seen in forceOrders)",
                               int(r.get("updateTime") or r.get("time") or 0))

    async def _wallet_balance(self) -> float | None:
        a = self.agent
        asset = a.filters.margin_asset if a.filters else ""
        try:
            rows = await a.require_client().balance()
        except BinanceError as exc:
            a.log.event("balance_unavailable", f"wallet balance not read: {exc!r}", level=logging.WARNING)
            return None
        for row in rows:
            if row.get("asset") == asset:
                try:
                    value = float(row.get("balance", row.get("walletBalance", 0)))
                except (TypeError, ValueError):
                    return None
                return value if math.isfinite(value) else None
        return None

    def refuse_other_owners(self) -> None:
        """mmfleet's orders of a later epoch, or of this one that this core never sent, rest already:
        another process trades the symbol on the account (an agent started by hand on another state
        directory, another fleet), or a predecessor whose epoch was lost (a fresh state directory) left
        them. Quoting beside them fought them (each cancelled the other's as strays, ids used twice) and
        its heartbeat kept their dead-man switch from firing; the start fails instead, said, and is tried
        again (a dead predecessor's countdown empties its book meanwhile; a stop leaves them)."""
        a = self.agent
        core = a.require_core()
        others = sorted(o.client_order_id for o in core.store.orders.values() if o.is_open and self._other(o))
        self.others_resting = len(others)
        if others:
            self.others_seen = True
            msg = (f"{len(others)} order(s) of mmfleet's with epoch {core.epoch} (this agent's) or later rest at "
                   f"the exchange, e.g. {others[0]}, though this agent placed none: another process trades "
                   f"{a.symbol} on this account, or the last agent's epoch was lost (another state directory); "
                   f"not quoting beside them")
            a.log.event("other_owner_orders", msg, level=logging.ERROR)
            raise BinanceError(0, msg, None)

    def _other(self, o: Any) -> bool:
        """An order of mmfleet's not this agent's: a later epoch's, or one of this epoch this core never
        sent (an order of this epoch it sent, a flatten's during the start say, is its own)."""
        core = self.agent.require_core()
        parsed = parse_client_order_id(o.client_order_id)
        if parsed is None or parsed[0] < core.epoch:
            return False
        if parsed[0] > core.epoch:
            return True
        mine = core.store.get(o.client_order_id)
        return mine is None or mine.reason == OrderReason.EXTERNAL

    async def others_still_rest(self) -> bool:
        """Whether another owner's orders still rest (the stop asks: a predecessor's may have gone since
        the start found them, its dead-man switch fired); True when the exchange does not answer."""
        try:
            listed = await asyncio.wait_for(self.agent.require_client().open_orders(self.agent.symbol), 2.0)
        except (BinanceError, OSError, asyncio.TimeoutError):
            return True
        self.others_resting = sum(1 for o in listed if self._other(o))   # (the stop's summary says this count)
        return self.others_resting > 0

    async def cancel_older_epochs(self) -> None:
        """Orders of an older epoch (a previous owner of this symbol) are cancelled before any quote."""
        a = self.agent
        core = a.require_core()
        client = a.require_client()
        stale: list[tuple[str, int | None]] = []
        for o in list(core.store.orders.values()):
            if _older_epoch(o.client_order_id, core.epoch):
                stale.append((o.client_order_id, o.order_id))
        if not stale:
            return
        a.log.event("old_epoch_cancel", f"cancelling {len(stale)} orders of older epochs", level=logging.WARNING)
        ids = [oid for _, oid in stale if oid is not None]
        if ids:
            results = await client.batch_cancel(a.symbol, order_ids=ids)
            for (cid, oid), res in zip([s for s in stale if s[1] is not None], results):
                if isinstance(res, OrderInfo):
                    core.on_order_info(res)
                else:
                    core.store.on_cancel_rejected(cid, res.code, oid, a.exchange_ms())
        # What the exchange still lists must be gone before quoting starts.
        left = [o for o in await client.open_orders(a.symbol) if _older_epoch(o.client_order_id, core.epoch)]
        if left:
            raise BinanceError(0, f"{len(left)} older-epoch orders still open after cancel", None)
