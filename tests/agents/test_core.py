"""AgentCore: the seed's worst-case acceptance, halt / flatten / reduce-only modes, drawdown TWAP,
batches and budget, restarts with older-epoch orders."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pytest

from agents.core import AgentCore
from agents.ledger import CANCEL_RETRY_MS
from agents.orders import Amend, Cancel, OrderReason, Place, parse_client_order_id
from fleet.binance.events import BUY, SELL

from .test_core_support import (
    SYMBOL,
    account_update,
    book,
    eth_filters,
    mark,
    order_info,
    order_update,
    position_info,
    seed_params,
)


class Acker:
    """Answers each request the way the exchange would (NEW / AMENDMENT / CANCELED frames) and keeps
    the exchange-side book, so tests can check exposure as the exchange sees it."""

    def __init__(self, core: AgentCore) -> None:
        self.core = core
        self.t = 100_000
        self.oid = 0
        self.book: dict[str, list] = {}  # cid -> [oid, side, price, orig, cum]
        self.position = 0
        self.step = core.filters.step_size

    def send(self, actions, now_ms: int | None = None) -> None:
        core = self.core
        now = self.t if now_ms is None else now_ms
        for d in actions:
            core.on_sent(d, now)
        for d in actions:
            self.t += 1
            if isinstance(d, Place):
                self.oid += 1
                self.book[d.client_order_id] = [self.oid, d.side, d.price_ticks, d.qty_steps, 0]
                core.on_event(order_update(d.client_order_id, self.oid, d.side, d.price_ticks, d.qty_steps, t=self.t,
                                           order_type=d.order_type, reduce_only=d.reduce_only, step=self.step), self.t)
                if d.order_type == "MARKET":
                    self.fill(d.client_order_id)
            elif isinstance(d, Amend):
                o = self.book[d.client_order_id]
                o[2], o[3] = d.price_ticks, d.qty_steps
                core.on_event(order_update(d.client_order_id, o[0], o[1], o[2], o[3], exec_type="AMENDMENT",
                                           status="PARTIALLY_FILLED" if o[4] else "NEW", cum_steps=o[4], t=self.t,
                                           step=self.step), self.t)
            else:
                o = self.book.pop(d.client_order_id)
                core.on_event(order_update(d.client_order_id, o[0], o[1], o[2], o[3], status="CANCELED",
                                           cum_steps=o[4], t=self.t, step=self.step), self.t)

    def fill(self, cid: str) -> None:
        o = self.book.pop(cid)
        q = o[3] - o[4]
        self.t += 1
        self.position += q if o[1] == BUY else -q
        self.core.on_event(order_update(cid, o[0], o[1], o[2], o[3], status="FILLED", cum_steps=o[3], last_steps=q,
                                        t=self.t, trade_id=self.t, step=self.step), self.t)

    def sweep(self, side: str) -> int:
        cids = [c for c, o in self.book.items() if o[1] == side]
        for c in cids:
            self.fill(c)
        return len(cids)

    def exchange_worst_long(self) -> int:
        return self.position + sum(o[3] - o[4] for o in self.book.values() if o[1] == BUY)


def fine_filters():
    return replace(eth_filters("0.1"), step_size=Decimal("0.0001"), min_qty=Decimal("0.0001"))


def started(params=None, filters=None, epoch: int = 3, mid: float = 3000.0) -> tuple[AgentCore, Acker]:
    core = AgentCore(SYMBOL, params or seed_params(), filters or eth_filters(), epoch)
    core.on_event(book(mid, t=1_000), 1_000)
    core.on_event(mark(mid, t=1_000), 1_000)
    return core, Acker(core)


# --- the seed's acceptance --------------------------------------------------------------------


@pytest.mark.parametrize("base_size", [0.007, 0.05])
def test_with_30_buy_layers_resting_worst_case_long_never_exceeds_0_23(base_size):
    """30 layers per side on a fine step; every bid is swept again and again while the core requotes."""
    params = seed_params(base={"base_size": base_size}, grid={"max_layers": 30, "spacing_ratio": 1.1})
    core, ex = started(params, fine_filters())
    cap = 2300  # 0.23 in steps of 0.0001
    most_resting = 0
    t = 2_000
    for _ in range(40):
        t += 220
        ex.send(core.quote(t), t)
        resting = sum(1 for o in ex.book.values() if o[1] == BUY)
        most_resting = max(most_resting, resting)
        assert core.store.worst_long_steps <= cap
        assert ex.exchange_worst_long() <= cap
        ex.sweep(BUY)
        assert ex.exchange_worst_long() <= cap
        core.on_event(account_update(ex.position, 3000.0, t=ex.t, step=ex.step), ex.t)
    if base_size == 0.007:
        assert most_resting == 30  # the seed's sizes: all 30 layers rest at first
        assert ex.position > 0.8 * cap  # ... and the decay slows the approach to the cap
    else:
        assert ex.position > 0.9 * cap  # large sizes: driven to the cap, and held there
        assert core.last_ladder.buy_suppressed


def test_resting_orders_of_an_older_epoch_count_toward_the_cap():
    params = seed_params(worst_case={"size_decay_k": 0.0})
    core, ex = started(params, epoch=4)
    old = [order_info(f"mm-ETHUSDC-e3-{n}", 500 + n, BUY, 290_000 - n, 10, t=900) for n in range(1, 31)]
    assert all(parse_client_order_id(o.client_order_id) == (3, n) for n, o in enumerate(old, 1))
    core.reset_from_snapshot(position_info(0, 0.0, 900), old, now_ms=1_000)
    assert core.store.pending_buy_steps == 300
    acts = core.quote(2_000)
    assert not [d for d in acts if isinstance(d, Place) and d.side == BUY]
    assert core.last_ladder.buy_suppressed
    assert not [d for d in acts if isinstance(d, Cancel)]  # another epoch's orders: the runtime cancels them


def test_orders_the_ladder_may_not_touch_are_cancelled_once_the_worst_case_is_beyond_the_cap():
    """Sells whose amends were answered "unknown" (busy: the ladder leaves them alone) and a position
    moved from outside to just inside the short cap: they now add beyond it, so they go at once."""
    core, ex = started()
    ex.send(core.quote(2_000))
    asks = [o for o in core.store.orders.values() if o.side == SELL]
    assert len(asks) >= 2
    for o in asks[:2]:
        core.on_sent(Amend(o.client_order_id, o.order_id, SELL, o.price_ticks + 1, o.orig_steps, o.layer), 2_100)
        core.on_outcome_unknown(Amend(o.client_order_id, o.order_id, SELL, o.price_ticks + 1, o.orig_steps, o.layer), 2_101)
    cap = core.guard.cap_steps
    core.on_event(account_update(-(cap - 2), 3000.0, t=2_200), 2_200)
    assert core.store.position_steps - core.store.pending_sell_steps < -cap
    acts = core.quote(2_400)
    cancelled = {d.client_order_id for d in acts if isinstance(d, Cancel)}
    assert {o.client_order_id for o in asks[:2]} & cancelled  # the untouchable ones first
    ex.send(acts)
    assert core.store.position_steps - core.store.pending_sell_steps >= -cap
    assert core.cap_cancels > 0


def test_a_cancel_answered_ambiguously_is_sent_again_not_waited_for():
    """Quotes pulled, the cancel of every bid answered "timeout" (it may or may not take, even
    later); then a position moved from outside to near the long cap. The bids still rest, adding
    beyond the cap: their cancel goes again once CANCEL_RETRY_MS has passed, in the quote cycle and
    in the cap-only path alike, instead of after the look-up a recvWindow later (about 6 s)."""
    core, ex = started()
    ex.send(core.quote(2_000))
    bids = {cid for cid, o in core.store.orders.items() if o.side == BUY}
    pulled = [d for d in core.cancel_all(in_flight=True) if d.client_order_id in bids]
    for d in pulled:
        core.on_sent(d, 2_100)
    for d in pulled:
        core.on_outcome_unknown(d, 2_400)  # answered "timeout" 300 ms later; the bids still rest at the exchange
    cap = core.guard.cap_steps
    core.on_event(account_update(cap - 2, 3000.0, t=2_450), 2_450)
    assert core.store.worst_long_steps > cap

    early = 2_100 + CANCEL_RETRY_MS - 1
    assert not {d.client_order_id for d in core.enforce_cap(early) if isinstance(d, Cancel)} & bids
    assert not {d.client_order_id for d in core.quote(early) if isinstance(d, Cancel)} & bids

    due = 2_100 + CANCEL_RETRY_MS
    again = [d for d in core.enforce_cap(due) if isinstance(d, Cancel)]
    assert {d.client_order_id for d in again} == bids
    assert {d.reason for d in again} == {OrderReason.RECANCEL}
    again = [d for d in core.quote(due) if isinstance(d, Cancel) and d.client_order_id in bids]
    assert {d.client_order_id for d in again} == bids  # each once, not also as a cap cancel
    assert len(again) == len(bids)
    ex.send(again, due)
    assert core.store.worst_long_steps <= cap
    assert not [o for o in ex.book.values() if o[1] == BUY]

    # a retry answered ambiguously again waits its own CANCEL_RETRY_MS; a cancel merely in flight is not resent
    core2, ex2 = started()
    ex2.send(core2.quote(2_000))
    d = next(iter(core2.cancel_all()))
    core2.on_sent(d, 2_100)
    assert not [x for x in core2.cancel_all(now_ms=9_000) if x.client_order_id == d.client_order_id]
    core2.on_outcome_unknown(d, 2_200)
    core2.on_sent(d, 2_700)  # the retry
    core2.on_outcome_unknown(d, 2_800)
    assert not [x for x in core2.cancel_all(now_ms=2_700 + CANCEL_RETRY_MS - 1) if x.client_order_id == d.client_order_id]
    assert [x for x in core2.cancel_all(now_ms=2_700 + CANCEL_RETRY_MS) if x.client_order_id == d.client_order_id]
    # a retry refused (429, or the local budget) goes again at the next cycle, once (not also as a halt cancel)
    core2.on_sent(d, 3_300)
    core2.on_rejected(d, -1003, 3_310)
    core2.halt("operator")
    assert [x.client_order_id for x in core2.quote(3_320)].count(d.client_order_id) == 1
    # "unknown order": nothing left to cancel, no more retries
    core2.on_sent(d, 3_320)
    core2.on_rejected(d, -2011, 3_330)
    assert not [x for x in core2.cancel_all(now_ms=9_000) if x.client_order_id == d.client_order_id]


# --- modes ------------------------------------------------------------------------------------


def test_halt_cancels_the_ladder_quotes_nothing_and_resume_quotes_again():
    core, ex = started()
    ex.send(core.quote(2_000))
    assert len(core.store.orders) > 0
    core.halt("operator")
    acts = core.quote(2_220)
    assert acts and all(isinstance(d, Cancel) for d in acts)
    assert {d.client_order_id for d in acts} == set(core.store.orders)
    ex.send(acts)
    assert not core.store.orders
    assert not core.quote(2_440)
    core.resume()
    assert any(isinstance(d, Place) for d in core.quote(2_660))


def test_flatten_cancels_everything_and_sends_one_reduce_only_market_order():
    core, ex = started()
    core.on_event(account_update(-20, 3000.0, t=1_500, wallet="1000"), 1_500)
    ex.position = -20
    ex.send(core.quote(2_000))
    assert core.store.orders
    core.flatten()
    acts = core.quote(2_220)
    kinds = [b.kind for b in acts.batches]
    assert kinds[0] == "cancel"
    market = [d for d in acts if isinstance(d, Place)]
    assert len(market) == 1
    m = market[0]
    assert m.order_type == "MARKET" and m.reduce_only and m.side == BUY and m.qty_steps == 20 and m.reason == "flatten"
    assert {d.client_order_id for d in acts if isinstance(d, Cancel)} == set(core.store.orders)
    for d in acts:
        core.on_sent(d, 2_220)
    assert not [d for d in core.quote(2_440) if isinstance(d, Place)]  # one flatten order at a time


def test_a_flatten_market_order_answered_unknown_lets_another_go_beside_it_up_to_two():
    """Its look-up is a recvWindow away, more than a stop's flatten has: another reduce-only market order goes
    (the second to execute meets a smaller position and cannot turn it); not beside two such, nor beside one
    the exchange acknowledged (it has landed) or one in flight with no answer yet."""
    core, ex = started()
    core.on_event(account_update(-20, 3000.0, t=1_500, wallet="1000"), 1_500)
    ex.position = -20
    core.flatten()

    def flattens(now: int) -> list[Place]:
        return [d for d in core.quote(now) if isinstance(d, Place) and d.reason == "flatten"]

    [first] = flattens(2_000)
    core.on_sent(first, 2_000)
    assert not flattens(2_100)                           # in flight, no answer yet
    core.store.on_outcome_unknown(first.client_order_id, 2_200)
    [second] = flattens(2_300)
    assert second.qty_steps == 20 and second.reduce_only
    core.on_sent(second, 2_300)
    core.store.on_outcome_unknown(second.client_order_id, 2_400)
    assert not flattens(2_500)                           # two unknown side by side: no third
    core.store.apply(order_update(second.client_order_id, 9, BUY, 0, 20, t=2_600, order_type="MARKET"))
    assert not flattens(2_700)                           # acknowledged: it has landed, its fill is coming


def test_fleet_reduce_only_mode_quotes_only_the_reducing_side_within_the_position():
    core, ex = started(seed_params(base={"base_size": 0.05}, worst_case={"size_decay_k": 0.0}))
    core.on_event(account_update(30, 3000.0, t=1_500), 1_500)
    ex.send(core.quote(2_000))
    core.set_reduce_only(True)
    acts = core.quote(2_220)
    cancelled = {d.client_order_id for d in acts if isinstance(d, Cancel)}
    assert {o.client_order_id for o in core.store.orders.values() if o.side == BUY} <= cancelled
    assert not [d for d in acts if isinstance(d, Place) and d.side == BUY]
    ex.send(acts)
    sells = [o for o in core.store.orders.values() if o.side == SELL]
    assert sum(o.pending_steps() for o in sells) <= 30
    assert not [o for o in core.store.orders.values() if o.side == BUY]


def test_drawdown_bands_run_a_twap_of_reduce_only_slices_through_the_guard():
    core, ex = started()
    core.on_event(account_update(200, 3000.0, t=1_500, wallet="1000"), 1_500)
    ex.position = 200
    core.on_event(mark(3000.0, t=1_600), 1_600)  # peak equity 1000
    core.on_event(mark(2700.0, t=2_000), 2_000)  # -60 USDC: 6 % drawdown
    assert core.store.drawdown_pct() == pytest.approx(6.0)
    due = []
    for t in (2_000, 2_500, 3_200, 4_400, 5_600, 9_000):
        acts = core.quote(t)
        slices = [d for d in acts if isinstance(d, Place) and d.reason == "drawdown"]
        due.append((t, [d.qty_steps for d in slices]))
        for d in slices:
            assert d.order_type == "MARKET" and d.reduce_only and d.side == SELL
        ex.send(acts, t)
        core.on_event(account_update(ex.position, 3000.0, t=ex.t), ex.t)
    assert due == [(2_000, [13]), (2_500, []), (3_200, [13]), (4_400, [12]), (5_600, [12]), (9_000, [])]
    assert ex.position == 150  # reduced by 25 %


def _drawdown_started(filters=None):
    core, ex = started(filters=filters)
    core.on_event(account_update(200, 3000.0, t=1_500, wallet="1000"), 1_500)
    ex.position = 200
    core.on_event(mark(3000.0, t=1_600), 1_600)  # peak equity 1000
    core.on_event(mark(2700.0, t=2_000), 2_000)  # -60 USDC: 6 % drawdown
    return core, ex


def _run_slices(core, ex, times):
    due = []
    for t in times:
        acts = core.quote(t)
        due.append((t, [d.qty_steps for d in acts if isinstance(d, Place) and d.reason == "drawdown"]))
        ex.send(acts, t)
        core.on_event(account_update(ex.position, 3000.0, t=ex.t), ex.t)
    return due


def test_twap_slices_made_overdue_by_a_gap_are_spaced_again_not_sent_in_one_burst():
    core, ex = _drawdown_started()
    assert _run_slices(core, ex, [2_000]) == [(2_000, [13])]
    # a block (stream loss, lease check...): no quote cycle runs while slices fall due at 3 200, 4 400, 5 600
    due = _run_slices(core, ex, [8_000, 8_220, 9_000, 9_200, 10_300, 10_400, 15_000])
    assert due == [(8_000, [13]), (8_220, []), (9_000, []), (9_200, [12]), (10_300, []), (10_400, [12]), (15_000, [])]
    assert ex.position == 150  # still the whole 25 %


def test_a_twap_slice_the_guard_refuses_is_tried_again_at_the_next_slice_time():
    core, ex = _drawdown_started()
    guard = core.guard
    real = guard.check_place
    refuse = {"left": 1}

    def flaky(p, extra_buy=0, extra_sell=0):
        if p.reason == "drawdown" and refuse["left"]:
            refuse["left"] -= 1
            return guard._refuse("no_reference_price")
        return real(p, extra_buy, extra_sell)

    guard.check_place = flaky
    due = _run_slices(core, ex, [2_000, 2_500, 3_200, 4_400, 5_600, 6_800, 9_000])
    assert due == [(2_000, []), (2_500, []), (3_200, [13]), (4_400, [13]), (5_600, [12]), (6_800, [12]), (9_000, [])]
    assert ex.position == 150 and core.twap_dropped == 0


def _market_filters():
    # LOT step 0.001; MARKET_LOT_SIZE: step 0.01 (10 LOT steps), minQty 0.02, maxQty 0.05
    return replace(eth_filters(), market_step_size=Decimal("0.01"), market_min_qty=Decimal("0.02"),
                   market_max_qty=Decimal("0.05"))


def test_flatten_sizes_market_orders_by_market_lot_size_and_splits_above_its_max_qty():
    core, ex = started(filters=_market_filters())
    core.on_event(account_update(-123, 3000.0, t=1_500, wallet="1000"), 1_500)
    core.flatten()
    places = [d for d in core.quote(2_000) if isinstance(d, Place)]
    market = [d for d in places if d.order_type == "MARKET"]
    assert [d.qty_steps for d in market] == [40, 40, 40]  # 0.12 on the 0.01 step, at most 0.05 each
    assert all(d.reduce_only and d.side == BUY and d.reason == "flatten" for d in market)
    assert all(Decimal(core.filters.qty_str(d.qty_steps)) % Decimal("0.01") == 0 for d in market)
    rest = [d for d in places if d.order_type == "LIMIT"]  # 0.003 left: under one market step
    assert [(d.qty_steps, d.time_in_force, d.reduce_only, d.side) for d in rest] == [(3, "IOC", True, BUY)]
    assert rest[0].price_ticks == core.filters.price_ticks_ceil(3000.0 * 1.025)


def test_drawdown_slices_are_market_orders_on_the_market_step_within_its_max_qty():
    core, ex = started(filters=_market_filters())
    core.on_event(account_update(2_004, 3000.0, t=1_500, wallet="1000"), 1_500)
    core.on_event(mark(3000.0, t=1_600), 1_600)
    core.on_event(mark(2970.0, t=2_000), 2_000)  # -60.12 USDC: the 6 % band
    assert 6.0 <= core.store.drawdown_pct() < 11.0
    assert [sl.qty_steps for sl in core.twap] == [130, 130, 120, 120]  # 25 % of 2.004 -> 0.50, on 0.01
    first = [d for d in core.quote(2_000) if isinstance(d, Place) and d.reason == "drawdown"]
    assert [d.qty_steps for d in first] == [50, 40, 40]  # 0.13 split under maxQty 0.05, each on 0.01
    assert all(d.order_type == "MARKET" and d.reduce_only and d.side == SELL for d in first)


def test_a_flatten_above_the_max_order_notional_goes_in_pieces_under_it():
    """A reduce-only MARKET order worth more than ``max_order_notional`` is refused by the guard at every
    cycle: the flatten splits so that each piece passes (0.123 at 3000 with 100 a piece: 0.033 at most)."""
    core, ex = started(params=seed_params(risk={"max_order_notional": 100.0}))
    core.on_event(account_update(123, 3000.0, t=1_500, wallet="1000"), 1_500)
    ex.position = 123
    core.flatten()
    market = [d for d in core.quote(2_000) if isinstance(d, Place) and d.order_type == "MARKET"]
    assert [d.qty_steps for d in market] == [31, 31, 31, 30]
    assert all(3000.0 * d.qty_steps * 0.001 <= 100.0 and d.reduce_only and d.side == SELL for d in market)
    ex.send(market, 2_000)
    assert ex.position == 0 and core.guard.refusals.get("max_notional", 0) == 0


def test_a_drawdown_slice_the_budget_did_not_send_goes_back_in_the_plan():
    """A slice refused on its way out (a 429 on the IP's weight holds even the risk lane) would end the
    band's reduction: it goes back at the head of the plan, due at the next slice time."""
    core, ex = _drawdown_started()
    first = [d for d in core.quote(2_000) if isinstance(d, Place) and d.reason == "drawdown"]
    assert [d.qty_steps for d in first] == [13]
    for d in first:
        core.on_sent(d, 2_000)
        core.on_not_sent(d)
        assert core.slice_back(d)
    assert core.twap_requeued == 1 and core.twap[0].qty_steps == 13 and core.twap[0].due_ms == 2_000 + 1_200
    due = _run_slices(core, ex, [2_500, 3_200, 4_400, 5_600, 6_800, 9_000])
    assert due == [(2_500, []), (3_200, [13]), (4_400, [13]), (5_600, [12]), (6_800, [12]), (9_000, [])]
    assert ex.position == 150   # the whole 25 %, none of it lost
    # a slice of a plan that a deeper band replaced meanwhile is not put back: the new plan is sized on
    # the position as it was, that slice unsent
    core, ex = _drawdown_started()
    first = [d for d in core.quote(2_000) if isinstance(d, Place) and d.reason == "drawdown"]
    core.on_event(mark(2400.0, t=2_100), 2_100)   # -120 USDC in all: the 11 % band, a new plan
    assert len(core.twap) == 4 and not core.slice_back(first[0]) and core.twap_requeued == 0


# --- requests ---------------------------------------------------------------------------------


def test_a_long_position_sends_its_reducing_requests_first():
    core, ex = started()
    core.on_event(account_update(20, 3000.0, t=1_500), 1_500)
    acts = core.quote(2_000)
    sides = [d.side for d in acts]
    assert sides[: sides.index(BUY)] and set(sides[: sides.index(BUY)]) == {SELL}
    assert all(len(b.items) <= 5 for b in acts.batches if b.kind != "cancel")


def test_when_the_rate_budget_is_short_the_inner_layers_are_sent():
    core, ex = started()
    acts = core.quote(2_000, budget=4)
    assert sorted(d.layer for d in acts) == [0, 0, 1, 1]


def test_cancel_all_cancels_every_acknowledged_order_in_batches_of_ten():
    core, ex = started(seed_params(grid={"max_layers": 14}), fine_filters())
    ex.send(core.quote(2_000))
    n = len(core.store.orders)
    acts = core.cancel_all()
    assert len(acts) == n and n > 10
    assert [len(b.items) for b in acts.batches][0] == 10 and all(b.kind == "cancel" for b in acts.batches)


def test_should_quote_on_the_interval_or_a_move_of_half_the_inner_spread():
    core, ex = started()
    core.quote(2_000)
    assert not core.should_quote(2_100)
    assert core.should_quote(2_220)
    core.on_event(book(3000.0 * (1 + 0.00065 * 0.5) + 0.01, t=2_150), 2_150)
    assert core.should_quote(2_150)


def test_a_rejected_post_only_order_is_simply_placed_again_next_cycle():
    core, ex = started()
    acts = core.quote(2_000)
    first = next(iter(acts))
    for d in acts:
        core.on_sent(d, 2_000)
    core.on_rejected(first, -5022, 2_001)
    again = [d for d in core.quote(2_220) if isinstance(d, Place)]
    assert [(d.side, d.layer) for d in again] == [(first.side, first.layer)]
    assert again[0].client_order_id != first.client_order_id
    assert core.store.rejects == {-5022: 1}


def test_an_amend_refused_with_5026_is_not_sent_again_the_order_is_cancelled_and_replaced():
    core, ex = started()
    ex.send(core.quote(2_000))
    core.on_event(book(3001.0, t=2_100), 2_100)
    core.on_event(mark(3001.0, t=2_100), 2_100)
    amends = [d for d in core.quote(2_220) if isinstance(d, Amend)]
    assert amends
    for d in amends:
        core.on_sent(d, 2_220)
        core.on_rejected(d, -5026, 2_221)  # what the runtime does with the exchange's BinanceError
    blocked = {d.client_order_id for d in amends}
    assert all(core.store.orders[c].amend_blocked for c in blocked)
    acts = core.quote(2_440)
    assert not blocked & {d.client_order_id for d in acts if isinstance(d, Amend)}
    assert blocked <= {d.client_order_id for d in acts if isinstance(d, Cancel)}
    ex.send(acts, 2_440)
    assert not blocked & set(core.store.orders)
    assert len([d for d in acts if isinstance(d, Place)]) >= len(blocked)


def test_status_is_plain_data():
    core, ex = started()
    ex.send(core.quote(2_000))
    st = core.status()
    assert st["symbol"] == SYMBOL and st["halt_state"] == "running" and st["open_orders"] == len(core.store.orders)
    assert st["worst_long"] == pytest.approx(core.store.worst_long)


def test_filters_of_another_symbol_are_refused_with_a_clear_error():
    with pytest.raises(ValueError, match="BTCUSDT"):
        AgentCore("BTCUSDT", seed_params(), eth_filters(), epoch=1)


def test_new_parameters_apply_live_and_keep_orders_position_halt_state_and_grind_history():
    core, ex = started()
    core.on_event(account_update(20, 3000.0, t=1_500), 1_500)
    ex.send(core.quote(2_000))
    open_before = set(core.store.orders)
    core.grinding.count_total = 5
    core.set_reduce_only(True)
    core.apply_params(seed_params(base={"base_size": 0.01}, grid={"max_layers": 5}, worst_case={"multiplier": 1.1}))
    assert set(core.store.orders) == open_before and core.store.position_steps == 20
    assert core.guard.reduce_only_mode and core.grinding.count_total == 5
    assert core.guard.cap_steps == 220 and core.strategy.layers == 5
    core.set_reduce_only(False)
    ex.send(core.quote(2_220))
    assert len(core.store.ladder_view()[0]) <= 5 and len(core.store.ladder_view()[1]) <= 5


def test_a_request_that_never_left_is_undone_without_counting_a_rejection():
    core, ex = started()
    ex.send(core.quote(2_000))
    acts = core.quote(2_220)  # nothing to do on a still book
    assert not acts
    core.on_event(book(3003.0, t=2_300), 2_300)
    acts = core.quote(2_440)
    assert acts
    before = dict(core.orders_sent)
    pending = (core.store.pending_buy_steps, core.store.pending_sell_steps)
    for d in acts:
        core.on_sent(d, 2_440)
    for d in acts:
        core.on_not_sent(d)
    assert core.orders_sent == before and core.store.rejects == {}
    assert (core.store.pending_buy_steps, core.store.pending_sell_steps) == pending
    assert not any(o.busy for o in core.store.orders.values())


def test_a_wallet_transfer_out_does_not_cut_a_symbol_whose_own_pnl_has_not_moved():
    from fleet.binance.events import AccountUpdate, BalanceUpdate

    core, ex = started()
    core.on_event(account_update(200, 3000.0, t=1_500, wallet="1000"), 1_500)
    core.on_event(mark(3000.0, t=1_600), 1_600)
    transfer = AccountUpdate(1_700, 1_700, "WITHDRAW", (BalanceUpdate("USDC", Decimal("300"), Decimal("300"), Decimal("-700")),), ())
    core.on_event(transfer, 1_700)
    core.on_event(mark(3000.0, t=1_800), 1_800)
    assert core.store.drawdown_pct() == 0.0 and core.twap == []
    assert not [d for d in core.quote(2_000) if isinstance(d, Place) and d.reason == "drawdown"]


def _big_ladder_long(position_steps: int):
    """Long, with a ladder large enough to reach the cap on the ask side (0.05 a layer, 30 layers)."""
    params = seed_params(base={"base_size": 0.05}, grid={"max_layers": 30, "spacing_ratio": 1.1, "layer_size_decay": 1.0},
                         worst_case={"size_decay_k": 0.0})
    filters = replace(fine_filters(), market_step_size=Decimal("0.0001"), market_min_qty=Decimal("0.0001"))
    core, ex = started(params=params, filters=filters)
    ex.step = Decimal("0.0001")
    core.on_event(account_update(position_steps, 3000.0, t=1_500, wallet="1000", step=ex.step), 1_500)
    ex.position = position_steps
    ex.send(core.quote(1_600), 1_600)
    assert ex.position - sum(o[3] - o[4] for o in ex.book.values() if o[1] == SELL) == -core.guard.cap_steps
    return core, ex


def _exchange_worst_short(ex) -> int:
    return ex.position - sum(o[3] - o[4] for o in ex.book.values() if o[1] == SELL)


def test_a_drawdown_slice_makes_room_among_the_asks_in_its_own_cycle():
    """Asks resting at the cap, long: a reduce-only slice filled first leaves them on a smaller position,
    and filled they would take it past -cap. The cycle that sends the slice cancels as many of the
    outermost asks (the next cycle did, a quote interval later)."""
    core, ex = _big_ladder_long(2000)
    core.on_event(mark(3000.0, t=1_700), 1_700)   # peak equity
    core.on_event(mark(2700.0, t=2_000), 2_000)   # a 6 % drawdown: the first band's slices
    acts = core.quote(2_000)
    slices = [d for d in acts if isinstance(d, Place) and d.reason == "drawdown"]
    assert slices and all(d.side == SELL and d.reduce_only for d in slices)
    cap_cancels = [d for d in acts if isinstance(d, Cancel) and d.reason == "cap"]
    assert sum(ex.book[c.client_order_id][3] for c in cap_cancels) >= sum(d.qty_steps for d in slices)
    ex.send(acts, 2_000)                            # the slice filled; what rests may all fill next
    assert _exchange_worst_short(ex) >= -core.guard.cap_steps


def test_a_grind_that_would_take_the_other_side_past_the_cap_is_not_sent():
    """A grind is a choice: with the asks at the cap, its reduce-only sell, filled first, would leave
    them resting on a smaller position, past -cap if they filled. It waits instead."""
    core, ex = _big_ladder_long(1800)
    t = 1_600
    for k in range(75):   # 12 quiet minutes: the grind's volatility window
        t += 10_000
        core.on_event(book(3000.0 + (k % 2) * 0.01, t=t), t)
        core.on_event(mark(3000.0, t=t), t)
    core.grinding.next_check_ms = None
    refused = core.guard.refusals.get("worst_case_short", 0)
    acts = core.quote(t + 220)
    assert not [d for d in acts if isinstance(d, Place) and d.reason == "grind"]
    assert core.guard.refusals.get("worst_case_short", 0) == refused + 1   # counted, as every refusal


def test_the_room_a_drawdown_slice_makes_counts_the_asks_its_own_cycle_places():
    """Two outer asks gone (cancelled by another hand), then a drawdown: the cycle places asks again and
    sends a slice. The room is made for both, not for the slice alone."""
    core, ex = _big_ladder_long(2000)
    outer = sorted((c for c, o in ex.book.items() if o[1] == SELL), key=lambda c: -ex.book[c][2])[:2]
    for cid in outer:
        oid, side, price, qty, cum = ex.book.pop(cid)
        ex.t += 1
        core.on_event(order_update(cid, oid, side, price, qty, status="CANCELED", t=ex.t, step=ex.step), ex.t)
    core.on_event(mark(3000.0, t=1_700), 1_700)
    core.on_event(book(2700.0, t=2_000), 2_000)
    core.on_event(mark(2700.0, t=2_000), 2_000)
    acts = core.quote(2_000)
    assert [d for d in acts if isinstance(d, Place) and d.reason == "drawdown"]
    assert [d for d in acts if isinstance(d, Place) and d.side == SELL and not d.reduce_only]   # asks placed again
    ex.send(acts, 2_000)
    assert _exchange_worst_short(ex) >= -core.guard.cap_steps


def test_a_drawdown_slice_makes_room_among_asks_the_same_cycle_amends():
    """The mid fell with the mark: the cycle that sends the slice also re-prices every ask (amends), and
    an ask being amended was never a candidate for the room, so none was made (past -cap by 125 steps
    once the slice and the asks filled). The outermost amended asks are cancelled instead."""
    core, ex = _big_ladder_long(2000)
    core.on_event(mark(3000.0, t=1_700), 1_700)
    core.on_event(book(2700.0, t=2_000), 2_000)
    core.on_event(mark(2700.0, t=2_000), 2_000)
    acts = core.quote(2_000)
    assert [d for d in acts if isinstance(d, Place) and d.reason == "drawdown"]
    assert [d for d in acts if isinstance(d, Amend) and d.side == SELL]   # the asks re-priced
    cancelled = {d.client_order_id for d in acts if isinstance(d, Cancel)}
    assert cancelled and not [d for d in acts if isinstance(d, Amend) and d.client_order_id in cancelled]
    ex.send(acts, 2_000)
    assert _exchange_worst_short(ex) >= -core.guard.cap_steps
