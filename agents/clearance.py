"""A liquidation's clearance fee, booked as the exchange charged it.

After it closes a liquidated position Binance charges what margin is left, at most the symbol's
``liquidationFee`` (1.25 %) of the notional, to its insurance fund: income ``INSURANCE_CLEAR``. No trade
frame carries that fee, and the ACCOUNT_UPDATE that says it (``m`` ``INSURANCE_CLEAR``, the fee as the
balance's ``bc``) names no symbol on a cross account, where every cross symbol of the margin asset is
liquidated at once. So after a liquidation of its symbol the agent reads the symbol's INSURANCE_CLEAR
income rows (``GET /fapi/v1/income``, weight 30), a few times as the record may trail the frame, and
books each once by its ``tranId`` into the commission: the symbol's P&L and drawdown, ``/exposure``,
``mm_commission``, the carried books and the journal (its P&L counts it among the fees) then hold what
the liquidation cost. The read starts no earlier than this agent's take-in, as the trades' does: a fee
before it is inside the carried books.
"""

from __future__ import annotations

import logging
import math
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any

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
            rows = await agent.require_client().income(agent.symbol, CLEARANCE, start_time=start, limit=1000)
        except BinanceError as exc:
            agent.log.event("clearance_fee_unread", f"the liquidation's clearance fee not read: {exc!r}",
                            level=logging.WARNING)
            continue
        agent.journal.on_income_rows(agent, rows)
        store = agent.require_core().store
        fees = [fee for fee in (_book(agent, store.position_book, r) for r in rows) if fee is not None]
        if fees:
            store.track_equity()
            agent.log.event("clearance_fee_booked", f"the liquidation's clearance fee {sum(fees)} booked in the "
                            f"commission (income {CLEARANCE}), commission now {store.commission:.8f}",
                            level=logging.WARNING)
            return
    agent.log.event("clearance_fee_none", f"no {CLEARANCE} income listed since {start}: the liquidation left "
                    f"no margin to charge")


def _book(agent: SymbolAgent, book: Any, row: dict[str, Any]) -> Decimal | None:
    """One income row: its fee booked once (``Position.book_clearance``), or None (another symbol's or
    type's, booked already, or a row that does not read: said)."""
    if row.get("incomeType") != CLEARANCE or row.get("symbol") != agent.symbol:
        return None
    try:
        fee = -Decimal(str(row["income"]))
        tran_id = int(row["tranId"])
        if not math.isfinite(fee):
            raise ValueError("not a finite amount")
    except (KeyError, TypeError, ValueError, InvalidOperation) as exc:
        agent.log.event("bad_income_row", f"an {CLEARANCE} income row that does not read, skipped: {exc!r}",
                        level=logging.WARNING)
        return None
    return fee if book.book_clearance(tran_id, float(fee)) else None
