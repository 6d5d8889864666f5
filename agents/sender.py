"""The order flow: a quote cycle's decisions sent (pending before the first await, split by rate-budget
lane), their answers applied (an ambiguous answer kept counted), look-ups by client id, and quote pulls
that repeat until the exchange lists none of this epoch's orders.

A part of :class:`agents.agent.SymbolAgent`; it owns the requests in flight, the look-ups and the pull.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import TYPE_CHECKING, Any, Awaitable, Mapping

from fleet.binance.client import RESIGNING, BinanceClient
from fleet.binance.endpoints import Endpoint, amended_orders, placed_client_ids
from fleet.binance.enums import ErrorCode, OrderType, TimeInForce
from fleet.binance.errors import (
    BinanceError,
    FilterRejectedError,
    MinNotionalError,
    NotSentError,
    OutcomeUnknownError,
    RateLimitedError,
    ServerError,
    UnknownOrderError,
)
from fleet.binance.models import ModifyRequest, OrderInfo, OrderRequest

from .core import Actions, AgentCore
from .orders import Amend, Batch, Cancel, Place
from .agent_base import (IN_FLIGHT_QUERY_MS, KEY_REFUSALS, LOOKUP_MARGIN_MS, PULL_REPEAT_S, TICK_READ,
                         UNRESOLVED_QUERY_MS, MarginHold, Tick, _reduces, _same_epoch)

if TYPE_CHECKING:
    from .agent import SymbolAgent
    from .ledger import LiveOrder


# Rejections the quote cycle expects now and then (a post-only order that would take, a cancel of an
# order already gone, an amend with nothing to change): counted, not logged as warnings.
QUIET_REJECTIONS = frozenset({
    ErrorCode.GTX_ORDER_REJECT, ErrorCode.CANCEL_REJECTED, ErrorCode.NO_SUCH_ORDER, ErrorCode.SAME_ORDER,
    ErrorCode.MARGIN_NOT_SUFFICIEN, ErrorCode.MAX_LEVERAGE_RATIO,   # said once per hold (``SymbolAgent.margin_short``)
    ErrorCode.SYMBOL_NOT_TRADING, ErrorCode.AMEND_NOT_TRADING,   # said once: it halts the symbol (agents/delisting.py)
})
# The symbol is not trading: an order refused -4108, an amendment -5024
NOT_TRADING = frozenset({ErrorCode.SYMBOL_NOT_TRADING, ErrorCode.AMEND_NOT_TRADING})
# Refusals of exposure the account cannot add now: no margin for it (-2019), or the position and the
# orders on its side at the most the leverage's bracket allows (-2027). Both hold the quoting lane.
MARGIN_REFUSALS = frozenset({ErrorCode.MARGIN_NOT_SUFFICIEN, ErrorCode.MAX_LEVERAGE_RATIO})


# Refusals a change of the symbol's filters brings (Binance announces new ticks, steps, quantity limits and
# minimum notionals): exchangeInfo is read again (``ContractWatch.filters_refused``). A raised MIN_NOTIONAL
# refused every small layer -4164 (an amendment -5029) at every quote, for good, before it was one.
FILTER_REFUSALS = (FilterRejectedError, MinNotionalError)


# The codes a whole call answers with a 5xx that Binance documents as not executed. A batch's entry carries
# its code alone (the call itself answered 200), so its refusal is known by the code.
SERVER_REFUSALS = frozenset({ErrorCode.DISCONNECTED, ErrorCode.REQUEST_THROTTLED})


def amend_answer(res: Any) -> Any:
    """How an amendment reads its answer: a 5xx, even one Binance documents as not executed (-1001 "Internal
    error; unable to process your request", 503 "Service Unavailable."), is of unknown outcome, the order
    counted at the larger size until its frame or a look-up settles it (an amendment is never sent again
    as such: the cost is one look-up). Read as refused, an amendment the exchange applied all the same
    lost its growth, and beside a fill of its millisecond (one key: time, filled quantity) its AMENDMENT
    frame and the listing were stale for good, the order undercounted until it filled again. A batch's
    entry answered -1001 or -1008 reads so too. A new order so refused is adopted by its frame or the
    listing (``ledger._reopens``)."""
    if isinstance(res, OutcomeUnknownError) or not isinstance(res, BinanceError):
        return res
    if (isinstance(res, ServerError) and res.http_status is not None and res.http_status >= 500) \
            or res.code in SERVER_REFUSALS:
        return OutcomeUnknownError(res.code, res.msg, res.http_status)
    return res


class OrderSender:
    """Decisions sent, answers applied, look-ups and quote pulls."""

    def __init__(self, agent: SymbolAgent) -> None:
        self.agent = agent
        self.inflight: set[asyncio.Task] = set()
        self.sending: dict[str, int] = {}  # client order id -> requests about it still awaiting an answer
        self._lookups: dict[str, float] = {}
        self._pull_task: asyncio.Task | None = None
        self.margin_hold = MarginHold()   # after -2019: the quoting lane waits (``_within_margin``)
        self.key_hold = MarginHold(initial_s=5.0, cap_s=60.0)   # the same back-off, for a refused key

    def quote(self, now_ms: int, tick: Tick | None) -> None:
        """One quote cycle: decide synchronously, count as pending, send concurrently."""
        core = self.agent.core
        if core is None or not self.agent.lease_ok():
            return
        actions = core.quote(now_ms, self.agent.budget.orders_available())
        if actions:
            self.execute(actions, now_ms, tick)

    def pull_quotes(self, why: str) -> int:
        """Cancel every order of ours, in flight ones included (by client id), and keep at it until
        the exchange lists none of this epoch's (a late-landing request is caught on a later round).
        How many cancels were sent now."""
        core = self.agent.core
        if core is None:
            return 0
        now_ms = self.agent.exchange_ms()
        actions = core.cancel_all(in_flight=True, now_ms=now_ms)
        if actions:
            self.agent.log.event("quotes_pulled", f"pulling {len(actions)} orders: {why}")
            self.execute(actions, now_ms, None)
        self.keep_pulling(why)
        return len(actions)

    def keep_pulling(self, why: str) -> None:
        """Until quoting is live again, re-list and cancel what of ours rests or lands late."""
        if self.agent.stopping:
            return
        if self._pull_task is None or self._pull_task.done():
            self._pull_task = asyncio.ensure_future(self._pull_until_clear(why))
            self.inflight.add(self._pull_task)
            self._pull_task.add_done_callback(self.inflight.discard)

    async def _pull_until_clear(self, why: str) -> None:
        """Re-list and cancel until no order of this epoch rests and none may still land, or until
        quoting is live again (the ladder then owns its orders)."""
        client = self.agent.client
        core = self.agent.core
        if client is None or core is None:
            return
        delay, longest = PULL_REPEAT_S
        while not self.agent.stopping and not self.agent.quoting_live():
            await self.agent.clock.sleep(delay)
            delay = min(longest, delay * 2)
            if self.agent.stopping or self.agent.quoting_live():
                return
            try:
                listed = await client.open_orders(self.agent.symbol)
            except Exception as exc:  # noqa: BLE001 - the pull must outlive any one answer
                level = logging.WARNING if isinstance(exc, BinanceError) else logging.ERROR
                self.agent.log.event("pull_list_failed", f"open orders not listed: {exc!r}", level=level)
                continue
            if self.agent.stopping or self.agent.quoting_live():   # live again meanwhile: the ladder is its own
                return
            mine = [o for o in listed if _same_epoch(o.client_order_id, core.epoch)]
            for info in mine:
                if core.store.adopt(info):
                    self.agent.reconciler.note_repair("untracked", info.client_order_id, "listed while quotes were pulled")
            now_ms = self.agent.exchange_ms()
            actions = core.cancel_all(in_flight=True, now_ms=now_ms)
            if actions:
                self.execute(actions, now_ms, None)
            landing = self._may_still_land()
            if not mine and not landing:
                self.agent.counters["quote_pulls_confirmed"] += 1
                self.agent.log.event("quotes_pulled_confirmed", f"no order of epoch {core.epoch} rests ({why})")
                return

    def _may_still_land(self) -> list[str]:
        """Client ids of ours that the exchange may yet accept: unacknowledged and inside their window
        (or of unknown outcome: its look-up settles it)."""
        return [o.client_order_id for o, inside in self._unacknowledged() if inside or o.unknown_ms is not None]

    def may_yet_rest(self) -> list[str]:
        """Client ids of our new orders that the exchange may still accept and rest, whatever it answered:
        not acknowledged, sent inside their window, and of a kind that rests (not a market order, not
        IOC or FOK). A stop outwaits them, cancelling whatever lands."""
        return [
            o.client_order_id for o, inside in self._unacknowledged()
            if inside and o.order_type != OrderType.MARKET and o.time_in_force not in (TimeInForce.IOC, TimeInForce.FOK)
        ]

    def _unacknowledged(self) -> list[tuple[LiveOrder, bool]]:
        """Our new orders the exchange has not acknowledged, each with whether it is inside its window."""
        core = self.agent.core
        if core is None:
            return []
        now = self.agent.exchange_ms()
        window = self.window_ms()
        return [(o, now - o.sent_ms < window) for o in core.store.orders.values() if o.status == "PENDING_NEW"]

    def window_ms(self) -> int:
        """How long after sending a request may still execute: its recvWindow, plus a margin."""
        recv = self.agent.client.recv_window if self.agent.client is not None else 5_000
        return int(recv) + LOOKUP_MARGIN_MS

    def execute(self, actions: Actions, now_ms: int, tick: Tick | None) -> None:
        core = self.agent.require_core()
        for batch in actions.batches:
            if not self.agent.lease_ok():
                if batch.kind != "cancel":
                    continue
                # A lapsed lease may have a successor whose orders the store learned from the
                # account's user stream: cancel only this epoch's own.
                own = tuple(d for d in batch.items if _same_epoch(d.client_order_id, core.epoch))
                if not own:
                    continue
                if len(own) != len(batch.items):
                    batch = Batch(batch.kind, own)
            for part, risk in self._lanes(batch):
                if not risk and self.margin_hold.left(self.agent.clock.monotonic()):
                    part = self._within_margin(core, part, self.margin_hold.side)
                    if part is None:
                        continue
                self.agent.journal.on_sent(self.agent, part)
                sending = self.sending
                for d in part.items:
                    core.on_sent(d, now_ms)
                    sending[d.client_order_id] = sending.get(d.client_order_id, 0) + 1
                task = asyncio.ensure_future(self._send_batch(part, tick, risk))
                self.inflight.add(task)
                task.add_done_callback(lambda t, items=part.items: self._sent(t, items))

    def _lanes(self, batch: Batch) -> list[tuple[Batch, bool]]:
        """Split a batch by rate-budget lane: what takes risk off (cancels, reduce-only orders,
        amends that shrink an order or move it away from the market) may use the reserve."""
        if batch.kind == "cancel":
            return [(batch, True)]
        if batch.kind == "place":
            return [(batch, all(p.reduce_only for p in batch.items))]  # type: ignore[union-attr]
        orders = self.agent.require_core().store.orders
        risk, other = [], []
        for a in batch.items:
            o = orders.get(a.client_order_id)
            (risk if o is not None and _reduces(a, o) else other).append(a)  # type: ignore[arg-type]
        out = []
        if risk:
            out.append((Batch(batch.kind, tuple(risk)), True))
        if other:
            out.append((Batch(batch.kind, tuple(other)), False))
        return out

    @staticmethod
    def _within_margin(core: AgentCore, part: Batch, held_side: str | None = None) -> Batch | None:
        """While the account is short of margin (``MarginHold``), of the quoting lane only the places
        that reduce the position go (up to its size, less what rests on that side): they take no
        margin. The rest waits, what the exchange would refuse again (-2019): places that add exposure,
        amends towards the market or larger. A hold of one side (``held_side``, a -2027) lets the
        other side's places and amends go too."""
        if part.kind != "place":
            keep = [d for d in part.items if held_side and d.side != held_side]   # type: ignore[union-attr]
            return Batch(part.kind, tuple(keep)) if keep else None
        s = core.store
        pos = s.position_steps
        reducing = "SELL" if pos > 0 else "BUY"
        room = abs(pos) - (s.pending_sell_steps if pos > 0 else s.pending_buy_steps)
        keep = []
        for p in part.items:
            if held_side and p.side != held_side:   # type: ignore[union-attr]
                keep.append(p)
            elif pos and p.side == reducing and p.qty_steps <= room:   # type: ignore[union-attr]
                keep.append(p)
                room -= p.qty_steps   # type: ignore[union-attr]
        return Batch(part.kind, tuple(keep)) if keep else None

    def _sent(self, task: asyncio.Task, items: tuple[Any, ...]) -> None:
        self.inflight.discard(task)
        sending = self.sending
        for d in items:
            n = sending.get(d.client_order_id, 0) - 1
            if n > 0:
                sending[d.client_order_id] = n
            else:
                sending.pop(d.client_order_id, None)
        if not task.cancelled() and task.exception() is not None and not self.agent.stopping:
            self.agent.log.event("send_failed", f"sending failed: {task.exception()!r}", level=logging.ERROR)

    async def _send_batch(self, batch: Batch, tick: Tick | None, risk: bool = False) -> None:
        """Send one batch and apply its answers: a failure of the whole call to every item of it, the
        answers of a batch call (an order or a rejection each, in order) one by one."""
        client = self.agent.require_client()
        core = self.agent.require_core()
        TICK_READ.set(tick)  # this task's own context
        offset = client.time_offset_ms

        def resigned(endpoint: Endpoint, params: Mapping[str, Any], at_ms: int) -> str | None:
            """A write refused -1021 (held on its way, or our clock behind), about to go again signed with
            timestamp ``at_ms``: the exchange may take it until that signature's window closes."""
            nonlocal offset
            offset = client.time_offset_ms
            if batch.kind == "amend":   # (each order by its id and the client id the batch knows it by)
                cids = {d.order_id: d.client_order_id for d in batch.items}
                return core.store.on_amend_resigned([(oid, cid or cids.get(oid)) for oid, cid
                                                     in amended_orders(endpoint, params)], at_ms)
            return core.store.on_resigned(placed_client_ids(endpoint, params), at_ms)

        told = RESIGNING.set(resigned)
        failed: BinanceError | None = None
        try:
            results = await self._send_requests(client, batch, tick, risk)
            if batch.kind == "amend":
                results = [amend_answer(r) for r in results]
        except BinanceError as exc:
            failed = amend_answer(exc) if batch.kind == "amend" else exc
        finally:   # the clock learned again meanwhile (another request's -1021): it was signed when our
            RESIGNING.reset(told)                # clock said less than it says now
            if batch.kind == "place" and client.time_offset_ms > offset:
                core.store.on_signed_later([d.client_order_id for d in batch.items], client.time_offset_ms - offset)
        if failed is not None:   # (after the reset: what it spawns, a halt's pull, must not inherit ``resigned``)
            self._batch_failed(core, batch, failed)
            return
        self.agent.journal.on_results(self.agent, batch, results)
        self._apply_results(core, batch, results)

    async def _send_requests(self, client: BinanceClient, batch: Batch, tick: Tick | None, risk: bool) -> list[Any]:
        """The batch's one call (a single order or a batch call; cancels by id and by client id); the
        tick-to-order latency is marked once the requests are built, before the send's first await."""
        items = batch.items
        if batch.kind == "place":
            reqs = [self._order_request(p) for p in items]  # type: ignore[arg-type]
            self._mark_latency(tick)
            return await client.place_orders(reqs, wait=False, risk=risk)
        if batch.kind == "amend":
            mods = [self._modify_request(a) for a in items]  # type: ignore[arg-type]
            self._mark_latency(tick)
            return await client.modify_orders(mods, wait=False, risk=risk)
        return await self._cancel_items(items)  # type: ignore[arg-type]

    def _batch_failed(self, core: AgentCore, batch: Batch, exc: BinanceError) -> None:
        """The whole call failed: of unknown outcome (kept counted), refused here by the budget or the
        agent's order gate (lease, kill state; nothing sent), or rejected (429 pauses the budget).
        Journaled per item, as a batch's answers are: no request sent is left without its answer in
        the record."""
        items = batch.items
        self.agent.journal.on_results(self.agent, batch, [exc] * len(items))
        if isinstance(exc, OutcomeUnknownError):
            self._outcome_unknown(batch.kind, items, exc)
        elif isinstance(exc, NotSentError):
            for d in items:
                core.on_not_sent(d)  # refused here (budget, order gate), nothing left: not an exchange rejection
            self.agent.log.event("not_sent", f"{batch.kind} x{len(items)} not sent: {exc.msg}", level=logging.DEBUG)
            self._slices_back(core, items, exc.msg)
        elif isinstance(exc, RateLimitedError):
            self.agent.counters["rate_limited"] += 1
            for d in items:
                core.on_rejected(d, exc.code, self.agent.exchange_ms())
            self.agent.log.event("rate_limited", f"429: pausing {exc.retry_after}s", level=logging.WARNING)
            self._slices_back(core, items, f"429, {exc.retry_after}s")
        else:
            for d in items:
                core.on_rejected(d, exc.code, self.agent.exchange_ms())
            if exc.code in KEY_REFUSALS:
                self.agent.key_refused(exc.code)
            elif exc.code in MARGIN_REFUSALS:
                sides = {getattr(d, "side", None) for d in items}
                self.agent.margin_short(exc.code, sides.pop() if len(sides) == 1 else None)
            elif exc.code in NOT_TRADING:
                self.agent.contract.refused(exc.code)
            elif exc.code == ErrorCode.POSITION_SIDE_NOT_MATCH and batch.kind == "place":   # an amend's -4061: its side
                self.agent.contract.position_mode_refused()
            else:
                if isinstance(exc, FILTER_REFUSALS):   # the exchange may have changed the filters
                    self.agent.contract.filters_refused(exc.code)
                self.agent.log.event("request_failed", f"{batch.kind} x{len(items)}: {exc!r}", level=logging.WARNING)

    def _slices_back(self, core: AgentCore, items: Any, why: str) -> None:
        """Drawdown slices that did not reach the exchange go back in the plan (said the first time, then
        every 20th: a long rate limit puts them back at every slice time)."""
        back = sum(core.slice_back(d) for d in items)
        before = core.twap_requeued - back
        if back and (before == 0 or before // 20 != core.twap_requeued // 20):
            self.agent.log.event("drawdown_slice_back", f"{back} drawdown slice(s) not sent ({why}): back in the "
                                 f"plan for the next slice time ({core.twap_requeued} so far)", level=logging.WARNING)

    def _apply_results(self, core: AgentCore, batch: Batch, results: list[Any]) -> None:
        """One answer per item: an order to the core, a rejection to the core (logged unless quiet),
        the ambiguous ones kept counted until a look-up settles them."""
        items = batch.items
        unknown = [d for d, res in zip(items, results) if isinstance(res, OutcomeUnknownError)]
        if unknown:
            first = next(r for r in results if isinstance(r, OutcomeUnknownError))
            self._outcome_unknown(batch.kind, tuple(unknown), first)
        for d, res in zip(items, results):
            if isinstance(res, OrderInfo):
                core.on_order_info(res)
                if isinstance(d, Place) and d.reason != "ladder":
                    self.agent.log.event(
                        "order_placed", f"{d.reason}: {d.side} {res.orig_qty} {d.order_type} -> {res.status}",
                        client_order_id=res.client_order_id, order_id=res.order_id,
                    )
            elif isinstance(res, OutcomeUnknownError):
                continue
            elif isinstance(res, NotSentError):  # refused here (budget, order gate), nothing sent
                core.on_not_sent(d)
                self._slices_back(core, (d,), res.msg)
            elif isinstance(res, RateLimitedError):  # a single call of several, refused by a 429
                self.agent.counters["rate_limited"] += 1
                core.on_rejected(d, res.code, self.agent.exchange_ms())
                self.agent.log.event("rate_limited", f"429: pausing {res.retry_after}s", level=logging.WARNING,
                                     client_order_id=d.client_order_id)
                self._slices_back(core, (d,), f"429, {res.retry_after}s")
            elif isinstance(res, BinanceError):
                core.on_rejected(d, res.code, self.agent.exchange_ms())
                if res.code in KEY_REFUSALS:
                    self.agent.key_refused(res.code)   # said once a hold
                    continue
                if res.code in MARGIN_REFUSALS:
                    self.agent.margin_short(res.code, getattr(d, "side", None))
                elif res.code in NOT_TRADING:
                    self.agent.contract.refused(res.code)
                elif res.code == ErrorCode.POSITION_SIDE_NOT_MATCH and batch.kind == "place":
                    self.agent.contract.position_mode_refused()   # said once: it halts the symbol
                    continue
                elif isinstance(res, FILTER_REFUSALS):   # the exchange may have changed the filters
                    self.agent.contract.filters_refused(res.code)
                if res.code not in QUIET_REJECTIONS:
                    self.agent.log.event(
                        "order_rejected", f"{batch.kind} refused: {res!r}", level=logging.WARNING,
                        client_order_id=d.client_order_id,
                    )

    def _outcome_unknown(self, kind: str, items: tuple[Any, ...], exc: BinanceError) -> None:
        """Ambiguous answers: the requests may have executed (even later). They stay counted, and
        a look-up once their recvWindow has passed settles them (the watchdog starts it)."""
        core = self.agent.require_core()
        now = self.agent.exchange_ms()
        for d in items:
            core.on_outcome_unknown(d, now)
        self.agent.counters["unknown_outcomes"] += len(items)
        self.agent.metrics.inc_unknown_outcome(len(items))
        self.agent.log.event(
            "outcome_unknown",
            f"{kind} x{len(items)}: {exc.msg or exc!r} (HTTP {exc.http_status}); kept counted until settled",
            level=logging.WARNING,
            client_order_id=items[0].client_order_id if items else None,
        )

    async def _try(self, aw: Awaitable[OrderInfo]) -> OrderInfo | BinanceError:
        # One send: a request of unknown outcome is looked up later by client id, never resent here;
        # if it did not land, the next quote cycle decides again, after its lease check.
        try:
            return await aw
        except (OutcomeUnknownError, NotSentError, RateLimitedError):
            raise
        except BinanceError as exc:
            return exc

    async def _cancel_items(self, items: tuple[Cancel, ...]) -> list[OrderInfo | BinanceError]:
        client = self.agent.require_client()
        by_id = [c for c in items if c.order_id is not None]
        by_cid = [c for c in items if c.order_id is None]
        out: dict[str, OrderInfo | BinanceError] = {}
        if len(by_id) == 1 and not by_cid:
            c = by_id[0]
            out[c.client_order_id] = await self._try(client.cancel_order(self.agent.symbol, order_id=c.order_id))
        elif by_id:
            res = await client.batch_cancel(self.agent.symbol, order_ids=[c.order_id for c in by_id])  # type: ignore[misc]
            out.update({c.client_order_id: r for c, r in zip(by_id, res)})
        if by_cid:
            res = await client.batch_cancel(self.agent.symbol, client_order_ids=[c.client_order_id for c in by_cid])
            out.update({c.client_order_id: r for c, r in zip(by_cid, res)})
        return [out[c.client_order_id] for c in items]

    async def resolve(self, client_order_id: str) -> None:
        """Look an order up by client order id (never resend); the store decides what the answer
        proves (``Store.on_lookup``: before the request's window has passed, "not found" proves nothing)."""
        core = self.agent.core
        if core is None or self.agent.client is None:
            return
        try:
            info: OrderInfo | None = await self.agent.client.query_order(self.agent.symbol, client_order_id=client_order_id)
        except UnknownOrderError:
            info = None
        except BinanceError as exc:
            self.agent.log.event("resolve_failed", f"lookup failed: {exc!r}; will retry", level=logging.WARNING, client_order_id=client_order_id)
            return
        verdict = core.store.on_lookup(client_order_id, info, self.agent.exchange_ms(), self.window_ms())
        if verdict == "pending":
            return
        self.agent.counters["unknown_outcomes_resolved"] += 1
        level = logging.WARNING if verdict == "gone" else logging.INFO
        detail = {
            "found": f"found at the exchange: {info.status if info else '?'}",
            "never_placed": "not at the exchange past its recvWindow: never placed",
            "gone": "the exchange has no record of it: closed",
        }[verdict]
        self.agent.log.event("outcome_resolved", detail, level=level, client_order_id=client_order_id)

    def start_lookups(self, core: AgentCore, now: float) -> None:
        """Look up, by client id, orders whose request went unanswered, that the exchange called
        unknown, or whose answer was ambiguous and whose recvWindow has now passed."""
        ex_now = self.agent.exchange_ms()
        window = self.window_ms()
        due = (
            (core.store.stale_in_flight(ex_now, IN_FLIGHT_QUERY_MS), IN_FLIGHT_QUERY_MS),
            (core.store.unresolved_orders(ex_now, UNRESOLVED_QUERY_MS), UNRESOLVED_QUERY_MS),
            (core.store.due_lookups(ex_now, window), UNRESOLVED_QUERY_MS),
        )
        for orders, spacing_ms in due:
            for o in orders:
                if o.client_order_id in self.sending:
                    continue  # its request is still out: its answer (or its resolution) will tell
                last = self._lookups.get(o.client_order_id, -math.inf)
                if now - last >= spacing_ms / 1000:
                    self._lookups[o.client_order_id] = now
                    self.agent.tasks.spawn(self.resolve(o.client_order_id), "resolve")
        if len(self._lookups) > 1000:
            self._lookups = {k: v for k, v in self._lookups.items() if k in core.store.orders}

    def _order_request(self, p: Place) -> OrderRequest:
        f = self.agent.filters
        assert f is not None
        if p.order_type == OrderType.MARKET:
            return OrderRequest(
                symbol=self.agent.symbol, side=p.side, order_type=OrderType.MARKET, quantity=f.qty_str(p.qty_steps),
                reduce_only=p.reduce_only, client_order_id=p.client_order_id,
            )
        return OrderRequest(
            symbol=self.agent.symbol, side=p.side, order_type=OrderType.LIMIT, quantity=f.qty_str(p.qty_steps),
            price=f.price_str(p.price_ticks), time_in_force=p.time_in_force or TimeInForce.GTC,
            reduce_only=p.reduce_only, client_order_id=p.client_order_id,
        )

    def _modify_request(self, a: Amend) -> ModifyRequest:
        f = self.agent.filters
        assert f is not None
        return ModifyRequest(
            symbol=self.agent.symbol, side=a.side, quantity=f.qty_str(a.qty_steps), price=f.price_str(a.price_ticks),
            order_id=a.order_id, client_order_id=None if a.order_id is not None else a.client_order_id,
        )

    def _mark_latency(self, tick: Tick | None) -> None:
        if tick is None:
            return
        dt = time.perf_counter_ns() - tick[0]
        self.agent.latency.add(dt)
        self.agent.metrics.observe_tick_to_order(dt / 1e9)
