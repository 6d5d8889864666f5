"""A liquidation's clearance fee, booked as the exchange charged it.

After it closes a liquidated position Binance charges what margin is left, at most the symbol's
``liquidationFee`` (1.25 %) of the notional, to its insurance fund: income ``INSURANCE_CLEAR``. No trade
frame carries that fee, and the ACCOUNT_UPDATE that says it (``m`` ``INSURANCE_CLEAR``, the fee as the
balance's ``bc``) names no symbol on a cross account, where every cross symbol of the margin asset is
liquidated at once. So after a liquidation of its symbol the agent reads the symbol's INSURANCE_CLEAR
income rows (``GET /fapi/v1/income``, weight 30), a few times as the record may trail the frame, and
books each once by its ``tranId`` into the commission: the symbol's P&L and drawdown, ``/exposure``,
``mm_commission``, the carried books and the journal (its P&L counts it among the fees) then hold what
the liquidation cost. The read starts no earlier than this agent's take-in, as the trades' does: the
take-in reads the fees after the carried record's newest one (``gap_clearance``), the record carries
its newest fee's time.
"""

from __future__ import annotations

import logging
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING

from fleet.binance.errors import BinanceError

if TYPE_CHECKING:
    from .agent import SymbolAgent

CLEARANCE = "INSURANCE_CLEAR"
CLEARANCE_DELAYS = (1.0, 5.0, 30.0)   # the tries' waits: the income record may trail the liquidation
CLEARANCE_LOOKBACK_MS = 5_000         # read from this long before the liquidation's time


async def book_clearance_fees(agent: SymbolAgent, liquidated_ms: int) -> None:
    """Read and book the clearance fee of the liquidation at ``liquidated_ms`` (exchange time); said
    as a WARNING with the amount, or as an INFO when no try found one (no margin was left to charge)."""
    start = max(liquidated_ms - CLEARANCE_LOOKBACK_MS, getattr(agent, "trades_known_ms", 0))
    for delay in CLEARANCE_DELAYS:
        await agent.tasks.sleep(delay)
        if agent.stopping or agent.core is None:
            return
        try:
            listed, fees = await _read_and_book(agent, start)
        except BinanceError as exc:
            agent.log.event("clearance_fee_unread", f"the liquidation's clearance fee not read: {exc!r}",
                            level=logging.WARNING)
            continue
        if fees:
            agent.log.event("clearance_fee_booked", f"the liquidation's clearance fee {sum(fees)} booked in the "
                            f"commission (income {CLEARANCE}), commission now "
                            f"{agent.require_core().store.commission:.8f}", level=logging.WARNING)
        if listed:   # booked now, or already (another liquidation's read, the take-in's)
            return
    agent.log.event("clearance_fee_none", f"no {CLEARANCE} income listed since {start}: the liquidation left "
                    f"no margin to charge")


async def gap_clearance(agent: SymbolAgent, after_ms: int) -> int:
    """At the take-in (agents/carry.py): the clearance fees after the carried record's newest one, booked
    once (a position the dead-man switch left behind may be liquidated between two agents, unseen by
    either); how many. Weight 30."""
    _, fees = await _read_and_book(agent, after_ms + 1)
    if fees:
        agent.log.event("clearance_fee_booked", f"a liquidation's clearance fee {sum(fees)} since the last agent's "
                        f"books booked in the commission (income {CLEARANCE})", level=logging.WARNING)
    return len(fees)


async def _read_and_book(agent: SymbolAgent, start: int) -> tuple[int, list[Decimal]]:
    """The symbol's INSURANCE_CLEAR rows from ``start``, handed to the journal and booked once each:
    (how many rows are listed, the fees booked now)."""
    rows = await agent.require_client().income(agent.symbol, CLEARANCE, start_time=start, limit=1000)
    agent.journal.on_income_rows(agent, rows)
    store = agent.require_core().store   # (read after the await: new parameters replace the store)
    listed, fees = 0, []
    for r in rows:
        if r.get("incomeType") != CLEARANCE or r.get("symbol") != agent.symbol:
            continue
        try:
            fee, tran_id, t = -Decimal(str(r["income"])), int(r["tranId"]), int(r["time"])
            if not fee.is_finite():
                raise ValueError("not a finite amount")
        except (KeyError, TypeError, ValueError, InvalidOperation) as exc:
            agent.log.event("bad_income_row", f"an {CLEARANCE} income row that does not read, skipped: {exc!r}",
                            level=logging.WARNING)
            continue
        listed += 1
        if store.position_book.book_clearance(tran_id, float(fee), t):
            fees.append(fee)
    if fees:
        store.track_equity()
    return listed, fees
