"""The symbol's contract as the exchange announces it: a delisting ahead, or a symbol that trades no more.

Binance delists USD-M perpetuals with notice: the symbol's ``deliveryDate`` (exchangeInfo; pushed by
``!contractInfo`` as ``dt``) becomes the settlement time, where it is a far 2100 date for a perpetual
that is staying. At that time the exchange cancels the symbol's orders and closes every position at its
settlement price by its own orders (``settlement_autoclose-``), and the symbol's status leaves
``TRADING``; after it, every order is refused -4108. A market maker must not be the one holding a
position into a settlement price it does not choose:

- an announced settlement is said once (WARNING event ``delisting_scheduled``, the gauge
  ``mm_delisting_timestamp_seconds``, alert ``MmDelistingScheduled``); exchangeInfo is read again
  after the market stream was lost, for a frame lost with it;
- ``runtime.delisting_exit_lead_sec`` before it, the agent flattens the symbol as an operator's flatten
  does (quotes cancelled, the position closed by reduce-only orders), and the kill state FLATTENING is
  carried to the controller, so it is durable and a restarted agent does not quote again (a lead of 0
  leaves the position to the exchange's settlement);
- a status other than ``TRADING`` (at the start, or pushed), an order refused -4108, or a settlement
  fill (the exchange closed the position itself) halts the symbol (ERROR event ``symbol_not_trading``
  or ``settled``) until an operator resumes it; a start on a symbol that is not ``TRADING`` fails.

The exchange's terms for the account are read at the start too: ``GET /fapi/v1/symbolConfig`` (weight
5) gives the leverage and the notional its bracket allows one side (``maxNotionalValue``; the position
and the orders resting on that side count, much as the worst case does). A worst-case cap worth more
than that at the mark cannot be reached: the exchange refuses -2027 first and the sender holds that
side (``MarginHold``). Said once as the WARNING event ``cap_beyond_leverage``, and shown
(``mm_max_notional``, ``mm_leverage``; alert ``MmCapBeyondLeverage``). A start does not fail for it, nor
for a symbolConfig the exchange does not answer. New brackets (``!contractInfo`` with ``bks``) or a
leverage changed (``ACCOUNT_CONFIG_UPDATE`` naming the symbol) read it again.

So is the symbol's funding interval: ``GET /fapi/v1/fundingInfo`` lists the symbols that do not settle
every 8 hours, and the quotes' funding shift scales the predicted rate to 8 hours by it
(agents/funding.py). The exchange moves a symbol to another interval with little notice; a mark
frame's next settlement time that is not the last one plus the interval reads it again (at most once
a minute, and again while the schedule moves by another interval than the one listed, or after a read
that failed), as does an hourly check (a change that did not move the next settlement time); a change
is said (event ``funding_interval``: INFO at the start, WARNING after; ``mm_funding_interval_seconds``).

And the account's position mode: the agent quotes in One-way Mode (no position side). An account another
tool left in Hedge Mode refuses every such order -4061: the first refusal halts the symbol (ERROR event
``hedge_mode``, the halt made durable) until an operator has switched the account and resumes.

A part of :class:`agents.agent.SymbolAgent`.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone
from decimal import Decimal
from typing import TYPE_CHECKING

from fleet.binance.enums import PERPETUAL_DELIVERY_MS, ErrorCode
from fleet.binance.errors import BinanceError
from fleet.binance.client import BinanceClient
from fleet.binance.filters import GRID_FIELDS, LIMIT_FIELDS, SymbolFilters
from fleet.binance.models import SymbolConfig
from fleet.vocabulary import KillState

from .funding import HOUR_MS

if TYPE_CHECKING:
    from .agent import SymbolAgent

TRADING = "TRADING"
FUNDING_REREAD_GAP_MS = 60_000   # fundingInfo read again after the schedule moved, at most this often
FILTERS_RECHECK_S = 30.0   # exchangeInfo read again after an order refused for a filter, at most this often
FILTERS_RETRY_S = 2.0      # ... or this soon after a read that failed (a stop's flatten has seconds, not 30),
                           # doubling with each failure in a row up to FILTERS_RECHECK_S
FUNDING_REREAD_EVERY_MS = 3_600_000   # and at least this often: a change that did not move the next time
ORDER_LIMITS_RETRY_S = 60.0   # rateLimit/order read again this long after a read that failed, and the limits
                              # (rateLimit/order, exchangeInfo) this often while the budget follows lower ones


def _utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


class ContractWatch:
    """Delisting and symbol status: what the exchange says of the contract, and what the agent does."""

    def __init__(self, agent: SymbolAgent) -> None:
        self.agent = agent
        self.settles_at_ms: int | None = None   # the announced settlement time, if any
        self.exiting = False                    # the flatten ahead of it has begun
        self.not_trading: str | None = None     # why the symbol was halted as no longer trading
        self.allowance: SymbolConfig | None = None   # the leverage and its maxNotionalValue, read at the start
        self._allowance_said = False
        self._funding_read_ms = -FUNDING_REREAD_GAP_MS   # exchange ms of the last read the schedule asked for
        self._funding_checked_ms = 0                     # exchange ms of the last read of any kind
        self._filters_checked = -FILTERS_RECHECK_S       # (monotonic) the last read after a filter refusal
        self._reads_failed = 0                           # exchangeInfo reads failed in a row
        self._info_read = agent.clock.monotonic()        # (monotonic) the last exchangeInfo read (the start's)
        self._limits_failed: float | None = None         # (monotonic) the last rateLimit/order read, if it failed
        self._limits_read = agent.clock.monotonic()      # (monotonic) the last read of the limits
        self._orders_read = agent.clock.monotonic()      # (monotonic) the last rateLimit/order read begun
        self.stopping_for: asyncio.Future | None = None  # the stop of an agent whose filters changed

    def at_start(self, filters: SymbolFilters) -> None:
        """exchangeInfo at the start: a symbol that is not TRADING refuses the start (BinanceError
        -4108, fatal); an announced settlement is noted."""
        if filters.status != TRADING:
            raise BinanceError(ErrorCode.SYMBOL_NOT_TRADING,
                               f"{filters.symbol} is {filters.status} on the exchange, not TRADING: nothing to quote",
                               None)
        self.seen(filters.status, filters.delivery_ms, "exchangeInfo")

    async def read_allowance(self, client: BinanceClient) -> None:
        """symbolConfig at the start: the leverage and the notional it allows a side, on /metrics."""
        a = self.agent
        try:
            cfg = await client.symbol_config(a.symbol)
        except Exception as exc:  # noqa: BLE001 - informative only: the exchange's -2027 still holds
            a.log.event("symbol_config_unread", f"symbolConfig not read: {exc!r}", level=logging.WARNING)
            return
        self.allowance = cfg
        a.metrics.leverage, a.metrics.max_notional = cfg.leverage, float(cfg.max_notional)

    async def read_order_limits(self, client: BinanceClient) -> None:
        """rateLimit/order (weight 1), at the start and with each periodic exchangeInfo read: the account's
        own order limits, which the rate budget follows (exchangeInfo gives the IP's weight); an account
        held to fewer orders than Binance's default would otherwise meet 429s, then an IP ban. One that
        failed is read again ``ORDER_LIMITS_RETRY_S`` later (``check``)."""
        try:
            await client.order_rate_limits()
        except Exception as exc:  # noqa: BLE001 - the budget keeps the limits it has meanwhile
            self._limits_failed = self.agent.clock.monotonic()
            self.agent.log.event("order_limits_unread", f"rateLimit/order not read: {exc!r}; read again in "
                                 f"{ORDER_LIMITS_RETRY_S:.0f} s", level=logging.WARNING)
            return
        self._limits_failed = None

    async def read_funding(self, client: BinanceClient, why: str) -> None:
        """fundingInfo: the symbol's funding interval (8 hours when it is not listed), into the funding
        book; a change is said. An unanswered read keeps the interval known (8 hours at the start)."""
        a = self.agent
        self._funding_checked_ms = a.exchange_ms()
        try:
            terms = await client.funding_terms(a.symbol)
        except Exception as exc:  # noqa: BLE001 - read again a minute on (the watchdog's check)
            a.log.event("funding_info_unread", f"fundingInfo not read ({why}): {exc!r}", level=logging.WARNING)
            if a.core is not None:
                a.core.store.funding.schedule_moved = True
            return
        if a.core is None:
            return
        funding = a.core.store.funding
        hours = terms.interval_hours if terms is not None else 8
        funding.interval_read = True
        if funding.set_interval(hours * HOUR_MS):
            a.log.event("funding_interval", f"{a.symbol} settles funding every {hours} h ({why}): the quotes' "
                        f"funding shift takes the predicted rate x{8 / hours:g}",
                        level=logging.INFO if why == "start" else logging.WARNING)
        if funding.unexplained():   # the schedule moved by another interval than the one listed: not yet listed?
            funding.schedule_moved = True

    def allowance_changed(self, why: str) -> None:
        """New brackets, or a leverage changed: symbolConfig read again, the cap checked again."""
        a = self.agent
        client = a.client
        if client is None or a.stopping:
            return
        self._allowance_said, self.allowance = False, None   # checked again once read again
        a.log.event("allowance_changed", f"{why}: symbolConfig read again")
        a.tasks.spawn(self.read_allowance(client), "symbol-config")

    def check_allowance(self) -> None:
        """Once a mark is known: the worst-case cap against the leverage's allowance, said once if over."""
        a, cfg = self.agent, self.allowance
        if self._allowance_said or cfg is None or a.core is None or a.core.store.mark <= 0:
            return
        self._allowance_said = True
        cap = Decimal(str(a.params.worst_cap))
        notional = cap * Decimal(str(a.core.store.mark))
        if notional > cfg.max_notional:
            a.log.event("cap_beyond_leverage",
                        f"the worst-case cap {cap} is {notional:.2f} of notional at the mark, more than the "
                        f"{cfg.max_notional} the exchange allows a side at {cfg.leverage}x (maxNotionalValue): "
                        "its -2027 refusals will hold quoting before the cap; lower the leverage or the cap",
                        level=logging.WARNING)

    def seen(self, status: str, delivery_ms: int, source: str) -> None:
        """The contract's status and deliveryDate, from exchangeInfo or a ``!contractInfo`` frame."""
        a = self.agent
        if status != TRADING:
            self.halt(f"the exchange lists {a.symbol} as {status} ({source})", "symbol_not_trading")
            return
        if delivery_ms >= PERPETUAL_DELIVERY_MS:
            if self.settles_at_ms is not None:   # the exchange took the settlement back
                self.settles_at_ms = None
                a.metrics.delisting_at_s = 0.0
                a.log.event("delisting_cancelled", f"the exchange no longer settles {a.symbol} ({source})"
                            f"{': a flatten it caused stays until an operator resumes' if self.exiting else ''}",
                            level=logging.WARNING)
                self.exiting = False
            return
        if delivery_ms == self.settles_at_ms:
            return
        self.settles_at_ms = delivery_ms
        a.metrics.delisting_at_s = delivery_ms / 1000
        lead = a.runtime.delisting_exit_lead_sec
        then = (f"the agent flattens it {lead:.0f} s before" if lead > 0 else
                "delisting_exit_lead_sec is 0: the exchange's settlement will close the position")
        a.log.event("delisting_scheduled", f"the exchange settles {a.symbol} at {_utc(delivery_ms)} ({source}): {then}",
                    level=logging.WARNING)

    async def recheck(self, gap: str) -> None:
        """After a ``gap`` in what the streams told: a ``!contractInfo`` frame (an announcement comes
        once) or a settlement's fill (not in forceOrders) may have gone with it. exchangeInfo (weight 1)
        says what they said."""
        a = self.agent
        self._info_read = a.clock.monotonic()
        try:
            filters = await a.require_client().symbol_filters(a.symbol)
        except Exception as exc:  # noqa: BLE001 - the next gap, or the next start, reads it again
            a.log.event("contract_recheck_failed", f"exchangeInfo after {gap}: {exc!r}", level=logging.WARNING)
            # the next filter refusal reads again soon (counted from this read's start)
            retry = min(FILTERS_RECHECK_S, FILTERS_RETRY_S * 2 ** self._reads_failed)
            self._reads_failed += 1
            self._filters_checked = min(self._filters_checked, self._info_read - FILTERS_RECHECK_S + retry)
            return
        self._reads_failed = 0
        self.seen(filters.status, filters.delivery_ms, f"exchangeInfo after {gap}")
        self.filters_seen(filters)

    def filters_refused(self, code: int) -> None:
        """An order or amend refused for a filter (-4014 off the tick, -4023 off the step, ...): the
        exchange may have changed them (it announces tick size changes); exchangeInfo is read again, at
        most every ``FILTERS_RECHECK_S``, or ``FILTERS_RETRY_S`` from the start of a read that failed,
        doubling with each failure in a row (a stop's flatten refused -4005 on a lowered maximum gave up,
        the one read it asked for lost). (Every amend was refused -4014 and the stale ladder filled.)"""
        now = self.agent.clock.monotonic()
        if now - self._filters_checked >= FILTERS_RECHECK_S:
            self._filters_checked = now
            self.agent.tasks.spawn(self.recheck(f"an order refused {code}"), "contract-recheck")

    def filters_seen(self, filters: SymbolFilters) -> None:
        """Filters that differ from the ones the agent trades on. New limits on the same grid (``LIMIT_FIELDS``:
        the largest orders, the price range) are taken at once: a lowered largest MARKET order refused every
        piece of a flatten -4005 until it gave up with the position open. A new grid (``GRID_FIELDS``) stops
        this incarnation (its orders cancelled) and the next one starts on it (the actor starts over; the
        agent's core keeps its grid in the filters' units, so they are taken at a start)."""
        a = self.agent
        known = a.core.filters if a.core is not None else a.filters   # the grid it trades on
        if known is None:
            return
        changed = [f"{f} {getattr(known, f)} -> {getattr(filters, f)}" for f in GRID_FIELDS + LIMIT_FIELDS
                   if getattr(known, f) != getattr(filters, f)]
        if not changed:
            return
        if filters.same_grid(known):
            if a.core is not None:
                a.core.take_limits(filters)
            a.filters = filters
            a.log.event("filters_taken", f"the exchange changed {a.symbol}'s limits ({', '.join(changed)}): orders "
                        "are cut to them from now on", level=logging.WARNING)
            return
        if self.stopping_for is not None or a.stopping:
            return
        a.log.event("filters_changed", f"the exchange changed {a.symbol}'s filters ({', '.join(changed)}): this "
                    "agent stops, its orders cancelled, to start again on them", level=logging.ERROR)
        self.stopping_for = asyncio.ensure_future(a.stop())

    def check(self, now_ms: int) -> None:
        """From the watchdog loop: the allowance against the cap; exchangeInfo and rateLimit/order read again
        every ``exchange_info_reread_sec`` (rateLimit/order a minute after a read that failed); within the
        lead of an announced settlement, flatten, once."""
        self.check_allowance()
        a = self.agent
        now = a.clock.monotonic()
        periodic = a.client is not None and now - self._info_read >= a.runtime.exchange_info_reread_sec
        if periodic and not a.tasks.named("contract-recheck"):
            self._info_read = now
            a.tasks.spawn(self.recheck("the periodic check"), "contract-recheck")
        failed = self._limits_failed is not None and now - self._limits_failed >= ORDER_LIMITS_RETRY_S
        # lowered limits (a 429 named them, or the exchange lists them) read again every minute, each where it
        # is listed: they may be back (an account's 30 a 10 s raised again was kept 14 minutes, its agents
        # starved meanwhile)
        lowered = a.client.budget.lowered if a.client is not None and now - self._limits_read >= \
            ORDER_LIMITS_RETRY_S else frozenset()
        if "weight_1m" in lowered and not periodic and not a.tasks.named("contract-recheck"):
            self._limits_read = now
            a.tasks.spawn(self.recheck("a lowered rate limit"), "contract-recheck")
        orders_lowered = bool(lowered & {"orders_10s", "orders_1m"})
        due = now - self._orders_read >= a.runtime.exchange_info_reread_sec   # (a lowered weight's reads aside)
        if a.client is not None and (due or failed or orders_lowered) and not a.tasks.named("order-limits"):
            self._limits_failed, self._limits_read, self._orders_read = None, now, now   # (failed: set again if so)
            a.tasks.spawn(self.read_order_limits(a.client), "order-limits")
        funding = a.core.store.funding if a.core is not None else None
        if funding is not None and a.client is not None:
            if funding.schedule_moved and now_ms - self._funding_read_ms >= FUNDING_REREAD_GAP_MS:
                funding.schedule_moved, self._funding_read_ms = False, now_ms
                a.tasks.spawn(self.read_funding(a.client, "its next funding time moved"), "funding-info")
            elif now_ms - self._funding_checked_ms >= FUNDING_REREAD_EVERY_MS:
                self._funding_checked_ms = now_ms
                a.tasks.spawn(self.read_funding(a.client, "the hourly check"), "funding-info")
        at, lead = self.settles_at_ms, a.runtime.delisting_exit_lead_sec
        if at is None or self.exiting or a.core is None or lead <= 0 or now_ms < at - lead * 1000 or self.closed():
            return
        self.exiting = True
        reason = f"delisting: the exchange settles {a.symbol} at {_utc(at)}"
        a.log.event("delisting_exit", f"{reason}: flattening now", level=logging.WARNING)
        a.carry_kill_state(KillState.FLATTENING, reason)
        a.tasks.spawn(a.flatten(reason), "delisting-exit")

    def refused(self, code: int) -> None:
        """An order refused -4108, or an amendment -5024 (the symbol is settling, closed or not yet trading)."""
        self.halt(f"an order refused {code}: {self.agent.symbol} is not trading on the exchange", "symbol_not_trading")

    def position_mode_refused(self) -> None:
        """An order refused -4061: the account is in Hedge Mode (another tool set it, for every symbol), so
        every order of the agent's (one-way: no position side) will be. Halted, said once a halt, until an
        operator has switched the account to one-way mode and resumes."""
        a = self.agent
        if a.core is None or a.core.halt_state != KillState.RUNNING:
            return   # halted already: the rest of a batch's refusals, or a flatten's
        why = "the account is in Hedge Mode (dualSidePosition): every order without a position side is refused -4061"
        a.log.event("hedge_mode", f"{why}; switch the account to one-way mode (POST /fapi/v1/positionSide/dual "
                                  "dualSidePosition=false, with no position or open order) and resume: halted",
                    level=logging.ERROR)
        a.halt_by_exchange(why, "hedge-mode-halt")

    def settled(self, what: str, client_order_id: str, order_id: int) -> None:
        """The exchange's settlement order closed (part of) the position: the symbol trades no more."""
        a = self.agent
        a.log.event("settled", f"settled by the exchange: {what} ({client_order_id}); position "
                               f"{a.core.store.position if a.core else '?'}", level=logging.ERROR,
                    client_order_id=client_order_id, order_id=order_id)
        self.halt(f"{a.symbol} settled by the exchange", None)

    def closed(self) -> bool:
        """Halted because the exchange no longer trades the symbol (until an operator resumes it)."""
        core = self.agent.core
        return self.not_trading is not None and core is not None and core.halt_state != KillState.RUNNING

    def halt(self, why: str, event: str | None) -> None:
        if self.closed():
            return   # halted for it already: the rest of a batch's refusals, the CLOSE after SETTLING
        self.not_trading = why
        if event is not None:
            self.agent.log.event(event, f"{why}: halted until resumed", level=logging.ERROR)
        self.agent.halt_by_exchange(why, "not-trading-halt")
