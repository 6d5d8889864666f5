"""What an agent shows: its status and exposure as plain data, and the immutable snapshot of both
that the trading loop publishes (``SymbolAgent.publish``) for readers on other threads.

The builders read the agent's fields (on its loop); a :class:`Snapshot` is built whole and then only
replaced, never changed, so a reader holding one sees a consistent picture.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fleet.binance.events import BUY, SELL
from fleet.vocabulary import KillState

if TYPE_CHECKING:
    from .agent import SymbolAgent


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Status and exposure as of ``at`` (the agent's monotonic clock); never mutated after publishing."""

    at: float
    status: dict[str, Any]
    exposure: dict[str, Any]


def build_status(agent: SymbolAgent) -> dict[str, Any]:
    """JSON-serialisable state: lifecycle, epoch, streams, staleness, counters."""
    now = agent.clock.monotonic()
    core = agent.core
    return {
        "symbol": agent.symbol,
        "fleet": agent.fleet_name,
        "state": agent.state(),
        "stopping": agent.stopping and not agent.stopped,
        "epoch": agent.grant.epoch if agent.grant else None,
        "ownership_lost": agent.lease.lost,
        "kill_state": core.halt_state if core else (agent.grant.kill_state if agent.grant else KillState.RUNNING),
        "halt_reason": core.guard.halt_reason if core else "",   # why halted or flattening ("" when running)
        "settles_at_ms": agent.contract.settles_at_ms,   # a delisting the exchange announced (None: none)
        "funding_interval_s": core.store.funding.interval_ms // 1000 if core else None,   # as fundingInfo lists it
        "blocks": sorted(agent.blocks),
        "exchange_holds": agent.budget.holds(),   # the exchange refusing our orders for now (429, 418, -1008)
        "user_stream_connected": agent.user.connected,
        "market_stream_connected": agent.market.connected,
        "last_book_age_s": round(now - agent.market.last_book, 3) if agent.market.last_book else None,
        "lease_left_s": None if (left := agent.lease.left(now)) is None else round(left, 3),
        "open_orders": len(core.store.orders) if core else 0,
        "requests_in_flight": len(agent.sender.sending),
        "position": core.store.position if core else 0.0,
        "uptime_s": round(now - agent.started_mono, 3),
        "tick_to_order_p50_ms": agent.latency.quantile_ms(0.5, now),
        "tick_to_order_p99_ms": agent.latency.quantile_ms(0.99, now),
        "rate_share": agent.budget.share,
        "exchange_clock_offset_ms": agent.offset_ms(),   # the exchange's clock minus this host's
        "clock_resyncs": agent.client.clock_resyncs if agent.client is not None else 0,   # -1021 answers
        "rate_budget_waits": list(agent.budget.waiting.values()),  # requests held for room over 1 s: what for
        "last_reconcile_repair": agent.reconciler.last_repair,
        # the books carried from the last agent lack the gap after them until these are read (agents/carry.py)
        "books_gap_unread": list(agent.carry_gap.parts) if agent.carry_gap is not None else [],
        "journal": _journal(agent.journal.status()),
        "counters": {
            **agent.counters, **agent.frames.counts(),
            "cap_cancels": core.cap_cancels if core else 0, "cancel_retries": core.cancel_retries if core else 0,
            "quote_cycles": core.cycles if core else 0, "places_sent": core.orders_sent["place"] if core else 0,
        },
    }

def _journal(st: dict[str, Any] | None) -> dict[str, Any] | None:
    """The trade journal's writer, in short: answering, waiting, lost, refused, the holes to read again."""
    if st is None:
        return None
    return {"db_up": st.get("db_up"), "waiting": int(st.get("queued") or 0) + int(st.get("held_now") or 0),
            "lost": st.get("dropped"), "rejected": st.get("rejected"), "spool": st.get("spool"),
            "holes": st.get("holes"), "last_error": st.get("last_error"), "last_error_at": st.get("last_error_at")}


def build_exposure(agent: SymbolAgent) -> dict[str, Any]:
    """JSON-serialisable exposure: position, mark, notional, pending, worst case, cap, P&L, kill state."""
    core = agent.core
    cap = agent.params.worst_cap
    if core is None:
        return {
            "symbol": agent.symbol, "starting": True, "position": 0.0, "mark": 0.0, "notional": 0.0, "pending_buy": 0.0,
            "pending_sell": 0.0, "worst_long": 0.0, "worst_short": 0.0, "cap": cap, "realized_pnl": 0.0,
            "unrealized_pnl": 0.0, "funding_pnl": 0.0, "kill_state": agent.grant.kill_state if agent.grant else KillState.RUNNING,
            "open_orders": 0, "conditional_orders": 0, "epoch": agent.grant.epoch if agent.grant else None,
        }
    s = core.store
    price = s.mark or s.mid
    return {
        "symbol": agent.symbol,
        "starting": not agent.started,   # before its first snapshot of the exchange: not its figures yet
        "epoch": core.epoch,
        "position": s.position,
        "entry_price": s.entry_price,
        "mark": s.mark,
        "mid": s.mid,
        "notional": s.position * price,
        "pending_buy": s.pending_buy_size(),
        "pending_sell": s.pending_sell_size(),
        "worst_long": s.worst_long,
        "worst_short": s.worst_short,
        "cap": cap,
        "realized_pnl": s.realized_pnl,
        "unrealized_pnl": s.unrealized_pnl(),
        "funding_pnl": s.funding_pnl,
        "commission": s.commission,
        "pnl_since_ms": agent.books_since_ms,   # the P&L counts from here (exchange ms): the run's first agent
        "drawdown_pct": s.drawdown_pct(),   # below the peak of the symbol's own equity, carried across restarts
        "max_drawdown_pct": s.max_drawdown_pct,
        "kill_state": core.halt_state,
        "reduce_only": core.guard.reduce_only_mode,
        "open_orders": len(s.orders),
        "conditional_orders": len(s.ledger.algos.open),   # other hands' (the Algo Service), in the pending too
    }


async def above_cap(agent: SymbolAgent, wait_s: float) -> dict | None:
    """None once the worst case (the position with every order resting or unconfirmed, as the exchange
    may fill them) is within the cap; waited for up to ``wait_s`` while orders of the side over it are
    to be cancelled (new parameters: a lower cap, the next quote cycle). Else what is over and why:
    orders not cancelled yet, or the position itself (which cancels do not reduce: grinding and the
    drawdown rules do)."""
    end = agent.clock.monotonic() + wait_s
    while agent.core is not None:
        s, cap = agent.core.store, agent.core.guard.cap_steps
        over = {side for side, beyond in ((BUY, s.worst_long_steps > cap), (SELL, -s.worst_short_steps > cap))
                if beyond}
        if not over:
            return None
        mine = any(_own_pending(s.ledger, side) for side in over)   # the agent cancels those
        others = any((s.ledger.pending_buy_steps if side == BUY else s.ledger.pending_sell_steps)
                     > _own_pending(s.ledger, side) for side in over)   # another hand's (it leaves them)
        if not mine or agent.clock.monotonic() >= end:
            why = "orders not cancelled yet" if mine else "another hand's orders" if others else "the position itself"
            return {"worst_long": s.worst_long, "worst_short": s.worst_short, "cap": agent.params.worst_cap,
                    "why": why}
        await agent.clock.sleep(0.1)
    return None


def _own_pending(ledger: Any, side: str) -> int:
    """Steps of mmfleet's own orders of ``side`` counted in the worst case (any epoch's)."""
    from .orders import parse_client_order_id

    return sum(o.pending_steps() for o in ledger.orders.values()
               if o.side == side and parse_client_order_id(o.client_order_id) is not None)
