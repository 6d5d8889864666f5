"""A live parameter change: every part of the core keeps its state (``with_params``), only its
configuration changes.

A busy core (open, in-flight, amending, ambiguous and unresolved orders, fills, an unplaced trade of
the figure's millisecond, a position figure, a price window, a funding prediction, a booked fee and a
fee look-up due, a drawdown peak, guard, grinding and drawdown history) is compared field by field
before and after ``AgentCore.apply_params``; then the kept state is shown at work under the new
parameters.
"""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from agents.core import AgentCore
from agents.ledger import LiveOrder
from agents.orders import Amend, Cancel, Place
from fleet.binance.events import BUY, SELL, AlgoUpdate

from .test_core_support import (
    SYMBOL,
    account_update,
    book,
    eth_filters,
    funding_fee,
    mark,
    order_update,
    seed_params,
)

NEW_PARAMS = dict(
    grid={"max_layers": 5},
    worst_case={"multiplier": 1.1},
    funding={"predict_alpha": 0.5, "predict_sample_sec": 30.0},
    orders={"tolerance_ticks": 4},
    grinding={"interval_sec": 30.0},
    drawdown={"drawdown_bands": [5.0, 10.0, 15.0]},
)


def busy_core() -> AgentCore:
    core = AgentCore(SYMBOL, seed_params(), eth_filters(), epoch=1)
    for k in range(121):  # two minutes of book and mark frames: a price window and a prediction
        t = k * 1_000
        core.on_event(book(3000.0 + (k % 7) * 0.3, t=t), t)
        if k % 60 == 0:
            core.on_event(mark(3000.0, t=t, rate=0.0001 * (k // 60 + 1)), t)
    core.on_event(account_update(20, 3000.0, t=130_000, wallet="1000"), 130_000)
    acts = list(core.quote(131_000))
    places = [d for d in acts if isinstance(d, Place)]
    for d in places:
        core.on_sent(d, 131_000)
    acked = places[:-1]  # the last one stays in flight
    for oid, p in enumerate(acked, start=1):
        core.on_event(order_update(p.client_order_id, oid, p.side, p.price_ticks, p.qty_steps, t=132_000), 132_000)
    bid, ask = next(p for p in acked if p.side == BUY), next(p for p in acked if p.side == SELL)
    # a partial fill (commission, realized P&L), booked once by its trade id
    core.on_event(order_update(bid.client_order_id, 1 + acked.index(bid), BUY, bid.price_ticks, bid.qty_steps, status="PARTIALLY_FILLED",
                               cum_steps=1, last_steps=1, t=133_000, trade_id=7, commission="0.01", realized="0.5"), 133_000)
    # an amendment in flight, an ambiguous answer, an unknown-order cancel, a rejection
    others = [p for p in acked if p not in (bid, ask)]
    a = others[0]
    core.on_sent(Amend(a.client_order_id, 1 + acked.index(a), a.side, a.price_ticks + 1, a.qty_steps + 2, a.layer), 135_000)
    u = others[1]
    core.on_outcome_unknown(Cancel(u.client_order_id, 1 + acked.index(u), "ladder"), 135_000)
    c = others[2]
    core.on_sent(Cancel(c.client_order_id, 1 + acked.index(c), "ladder"), 135_000)
    core.on_rejected(Cancel(c.client_order_id, 1 + acked.index(c), "ladder"), -2011, 135_100)
    core.on_sent(Place("mm-ETHUSDC-e1-999", BUY, 290_000, 3, "GTX", False, "LIMIT", "ladder", 9), 135_200)
    core.on_rejected(Place("mm-ETHUSDC-e1-999", BUY, 290_000, 3, "GTX", False, "LIMIT", "ladder", 9), -5022, 135_300)
    # funding: a fee naming the symbol (booked), one naming none while a position is held (looked up)
    core.on_event(funding_fee("-0.25", t=136_000), 136_000)
    core.on_event(funding_fee("-0.5", t=137_000, symbol=None), 137_000)
    core.on_event(mark(2990.0, t=138_000, rate=0.0004), 138_000)  # a loss: a drawdown below the peak
    # another hand's conditional order waiting, and one whose triggered order the ledger has not heard of yet
    core.on_event(AlgoUpdate(138_500, 138_500, SYMBOL, 41, "desk-stop", BUY, "STOP_MARKET", D("0.004"), "NEW",
                             False, False), 138_500)
    core.on_event(AlgoUpdate(138_600, 138_600, SYMBOL, 42, "desk-tp", SELL, "TAKE_PROFIT_MARKET", D("0.003"),
                             "TRIGGERED", True, False, 8_000), 138_600)
    # a figure, then a trade of its millisecond it does not account for: unplaced (the last user frame)
    core.on_event(account_update(21, 3000.0, t=139_000), 139_000)
    oid_ask = acked.index(ask) + 1
    core.on_event(order_update(ask.client_order_id, oid_ask, SELL, ask.price_ticks, ask.qty_steps,
                               status="PARTIALLY_FILLED", cum_steps=1, last_steps=1, t=139_000, trade_id=8), 139_000)
    core.on_event(book(3000.0, t=200_000, update_id=999_999), 200_000)
    core.store.apply(book(3000.0, t=1, update_id=1))  # stale: counted
    # guard, grinding and drawdown history
    core.set_reduce_only(True)
    core.guard.check_place(Place("x", BUY, 300_000, 10**6, "GTX", False, "LIMIT", "ladder"))
    core.grinding.count_total, core.grinding.cost_saved, core.grinding.last_skip = 3, 1.5, "range"
    core.grinding.times.extend((100_000, 120_000))
    core.drawdown.acted, core.drawdown.last_action_ms, core.drawdown.plans = 1, 90_000, 2
    return core


def order_state(o: LiveOrder) -> tuple:
    return tuple(getattr(o, f) for f in LiveOrder.__slots__)


def observed(core: AgentCore) -> dict:
    """Everything a reader of the core can see of its state (configuration aside)."""
    s, g, e, d = core.store, core.guard, core.grinding, core.drawdown
    return {
        "orders": {cid: order_state(o) for cid, o in s.orders.items()},
        "closed": {cid: order_state(o) for cid, o in s.closed.items()},
        "pending": (s.pending_buy_steps, s.pending_sell_steps, s.recompute_pending()),
        "position": (s.position_steps, s.entry_price, s.position_time, s.position_confirmed),
        "unplaced": list(s.position_book.unplaced),
        "pnl": (s.realized_pnl, s.commission, s.fills_buy, s.fills_sell, s.unrealized_pnl(), s.pnl(), s.equity()),
        "drawdown": (s.drawdown_pct(), s.peak_equity, s.max_drawdown_pct),
        "market": (s.bid, s.ask, s.mid, s.mark, s.last_market_ms),
        "window": (s.price_stddev_30m(), s.price_window_span_ms(), s.market.window_samples),
        "funding": (s.funding_rate_estimate, s.predicted_funding, s.funding_pnl, s.funding_lookup_start()),
        "counters": (dict(s.rejects), s.stale_updates, s.foreign_events, s.wallet_balance),
        "algos": (dict(s.ledger.algos.open), s.ledger.algos.buy_steps, s.ledger.algos.sell_steps),
        "guard": (g.state, g.halt_reason, g.reduce_only_mode, dict(g.refusals), g.approved),
        "grinding": (list(e.times), e.next_check_ms, e.count_total, e.cost_saved, e.active, e.last_skip),
        "drawdown_bands": (d.acted, d.last_action_ms, d.plans),
        "core": (core.ids.seq, list(core.twap), core.twap_dropped, dict(core.orders_sent), core.cycles),
    }


def test_the_busy_core_has_something_in_every_part():
    st = observed(busy_core())
    assert set(st["algos"][0]) == {41, 42} and st["algos"][1:] == (4, 3)
    assert st["unplaced"] and list(st["closed"]) == ["mm-ETHUSDC-e1-999"] and len(st["orders"]) >= 5
    assert st["pending"][0] > 0 and st["position"][0] == 21 and st["pnl"][0] == 0.5 and st["pnl"][1] == 0.01
    assert st["drawdown"][0] > 0 and st["window"][2] > 100 and st["funding"][2] == -0.25
    assert st["funding"][3] is not None and st["counters"][0] == {-2011: 1, -5022: 1} and st["counters"][1] == 1
    assert st["guard"][2] and st["guard"][3] and st["grinding"][2] == 3 and st["drawdown_bands"][0] == 1
    orders = busy_core().store.orders.values()
    assert any(o.status == "PENDING_NEW" for o in orders) and any(o.amend_orig_steps for o in orders)
    assert any(o.unknown_ms for o in orders) and any(o.unresolved_ms for o in orders)


def test_a_live_parameter_change_keeps_every_parts_observable_state():
    core = busy_core()
    before = observed(core)
    core.apply_params(seed_params(**NEW_PARAMS))
    assert observed(core) == before
    assert core.guard.store is core.store  # the guard reads the store handed over
    assert core.guard.cap_steps == 220 and core.strategy.layers == 5 and core.manager.tol_ticks == 4
    assert core.grinding.interval_ms == 30_000 and core.drawdown.bands == (5.0, 10.0, 15.0)


@pytest.mark.parametrize("part", ["store", "ledger", "position_book", "market", "funding", "guard", "grinding",
                                  "drawdown", "manager"])
def test_every_field_of_every_part_crosses_a_parameter_change(part):
    """Field by field, not a list kept by hand: a field added tomorrow is carried too. Only the
    fields the parameters configure (and the parts a facade holds) may be new objects."""
    configured = {
        "store": {"params", "ledger", "position_book", "market", "funding"},
        "position_book": {"capital"},
        "funding": {"_sample_ms", "_alpha"},
        "guard": {"store", "cap_steps", "band", "max_notional", "notional_unit", "tick"},
        "grinding": {"p", "trigger_steps", "interval_ms", "min_gap_ms", "min_window_ms"},
        "drawdown": {"bands", "fractions", "slices", "interval_ms", "cooldown_ms", "acted"},
        "manager": {"tol_ticks", "tol_fraction", "size_tol"},
    }.get(part, set())

    def get(core: AgentCore):
        if part in ("ledger", "position_book", "market", "funding"):
            return getattr(core.store, part)
        return getattr(core, part)

    core = busy_core()
    old = dict(vars(get(core)))
    core.apply_params(seed_params(**NEW_PARAMS))
    new = vars(get(core))
    assert new.keys() == old.keys()
    assert [k for k in old if k not in configured and new[k] is not old[k]] == []


def test_the_kept_state_works_on_under_the_new_parameters():
    core = busy_core()
    s = core.store
    pending = (s.pending_buy_steps, s.pending_sell_steps)
    core.apply_params(seed_params(**NEW_PARAMS))
    s = core.store
    # the trade ids are kept: a duplicated fill is not booked again
    bid = next(o for o in s.orders.values() if o.side == BUY and o.filled_steps == 1)
    dup = order_update(bid.client_order_id, bid.order_id, BUY, bid.price_ticks, bid.orig_steps,
                       status="PARTIALLY_FILLED", cum_steps=1, last_steps=1, t=133_000, trade_id=7, realized="0.5")
    assert not core.on_event(dup, 210_000) and s.position_steps == 21 and s.realized_pnl == 0.5
    # the unplaced trade is settled by a frame of a later millisecond: its fill stops counting
    core.on_event(account_update(20, 3000.0, t=211_000), 211_000)
    assert s.position_book.unplaced == [] and s.pending_sell_steps == pending[1] - 1
    assert (s.pending_buy_steps, s.pending_sell_steps) == s.recompute_pending()
    # the prediction goes on with the new weight (0.5) from where it was
    prev = s.predicted_funding
    core.on_event(mark(3000.0, t=240_000, rate=0.0010), 240_000)
    assert s.predicted_funding == pytest.approx(0.5 * 0.0010 + 0.5 * prev)
    # the same funding fee frame is still known; the look-up due is answered by its income row
    assert not s.apply(funding_fee("-0.25", t=136_000))
    assert s.on_funding_income([{"symbol": SYMBOL, "incomeType": "FUNDING_FEE", "income": "-0.5", "asset": "USDC",
                                 "time": 137_000, "tranId": 1}]) == 1
    assert s.funding_pnl == -0.75 and s.funding_lookup_start() is None


def test_a_new_capital_moves_the_equity_and_keeps_the_peak_pnl():
    core = busy_core()
    eq, peak, dd_pnl = core.store.equity(), core.store.peak_equity, core.store.pnl()
    core.apply_params(seed_params(risk={"capital": 2000.0}))
    assert core.store.equity() == pytest.approx(eq + 1000.0) and core.store.peak_equity == pytest.approx(peak + 1000.0)
    assert core.store.pnl() == dd_pnl and core.guard.max_notional == 5000.0
    assert D(str(core.store.position)) == D("0.021")
