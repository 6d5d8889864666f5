"""Property test of the core against an order-lifecycle oracle: acks, rejects, partial and full fills,
cancels, amendments, duplicates, reordering and sweeps that fill every layer at once.

The oracle (``Venue``) is the test's model of what the exchange has: it decides each request's fate
and produces the same typed events the client would parse, which reach the core late, twice or out
of order. After every step: pending sizes equal the sum over open orders; the exchange-side worst
case stays inside the cap; replaying the delivered events twice or shuffled within each order's
history gives the same state.
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from agents.core import AgentCore
from agents.orders import Amend, Place
from agents.store import Store
from fleet.binance.events import BUY, SELL, OrderUpdate

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

# Sizes large enough that the ladder alone reaches the cap: every cycle presses against the guard.
PARAMS = seed_params(base={"base_size": 0.05}, worst_case={"size_decay_k": 0.5}, grid={"max_layers": 12})
FILTERS = eth_filters(min_notional="1")
CAP = 230  # 0.20 * 1.15 in steps of 0.001


class VenueOrder:
    __slots__ = ("cid", "oid", "side", "price", "orig", "cum", "status", "reduce_only", "otype", "notional")

    def __init__(self, cid, oid, side, price, orig, reduce_only, otype):
        self.cid, self.oid, self.side, self.price, self.orig = cid, oid, side, price, orig
        self.cum, self.status, self.reduce_only, self.otype = 0, "NEW", reduce_only, otype
        self.notional = 0  # sum of fill ticks x steps, for the average price

    @property
    def open(self) -> bool:
        return self.status in ("NEW", "PARTIALLY_FILLED")


class CoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.core = AgentCore(SYMBOL, PARAMS, FILTERS, epoch=7)
        self.t = 10_000
        self.mid_ticks = 300_000
        self.orders: dict[str, VenueOrder] = {}
        self.next_oid = 1
        self.position = 0
        self.reduced_by_buys = self.reduced_by_sells = 0  # reduce-only fills (exempt from the cap)
        self.inflight: list = []
        self.outbox: list[OrderUpdate] = []
        self.delivered: list[OrderUpdate] = []
        self._market()

    # -- helpers -------------------------------------------------------------------------------

    def tick(self) -> int:
        self.t += 1
        return self.t

    def _market(self) -> None:
        t = self.tick()
        mid = self.mid_ticks / 100
        self.core.on_event(book(mid, t=t), t)
        self.core.on_event(mark(mid, t=t), t)

    def _event(self, o: VenueOrder, exec_type: str, last: int = 0, fill_ticks: int | None = None) -> None:
        t = self.tick()
        avg = (self.notional_avg(o)) if o.cum else 0
        self.outbox.append(
            order_update(o.cid, o.oid, o.side, o.price, o.orig, status=o.status, exec_type=exec_type, cum_steps=o.cum,
                         last_steps=last, fill_ticks=fill_ticks, avg_ticks=avg, t=t, trade_id=t if last else 0,
                         order_type=o.otype, reduce_only=o.reduce_only)
        )

    @staticmethod
    def notional_avg(o: VenueOrder) -> int:
        return round(o.notional / o.cum) if o.cum else 0

    def _info(self, o: VenueOrder):
        return order_info(o.cid, o.oid, o.side, o.price, o.orig, status=o.status, executed_steps=o.cum,
                          avg_ticks=self.notional_avg(o), t=self.t, order_type=o.otype)

    def _fill(self, o: VenueOrder, q: int) -> None:
        px = o.price if o.otype == "LIMIT" else self.mid_ticks
        o.cum += q
        o.notional += q * px
        o.status = "FILLED" if o.cum == o.orig else "PARTIALLY_FILLED"
        self.position += q if o.side == BUY else -q
        if o.reduce_only:
            if o.side == BUY:
                self.reduced_by_buys += q
            else:
                self.reduced_by_sells += q
        self._event(o, "TRADE", last=q, fill_ticks=px)

    def deliver(self, ev: OrderUpdate) -> None:
        self.core.on_event(ev, ev.update_time)
        self.delivered.append(ev)

    # -- rules ---------------------------------------------------------------------------------

    @rule(move=st.integers(-600, 600))
    def quote_cycle(self, move: int) -> None:
        """The mid moves by up to +-0.2 %, the core quotes, the runtime sends everything."""
        self.mid_ticks = min(306_000, max(294_000, self.mid_ticks + move))
        self._market()
        now = self.tick()
        acts = self.core.quote(now)
        for d in acts:
            self.core.on_sent(d, now)
            self.inflight.append(d)

    @precondition(lambda self: self.inflight)
    @rule(pick=st.integers(0, 63), accept=st.booleans(), rest_ack=st.booleans())
    def exchange_answers(self, pick: int, accept: bool, rest_ack: bool) -> None:
        d = self.inflight.pop(pick % len(self.inflight))
        if isinstance(d, Place):
            if not accept:
                self.core.on_rejected(d, -5022, self.t)
                return
            reducible = max(0, -self.position if d.side == BUY else self.position)
            if d.reduce_only and reducible == 0:
                self.core.on_rejected(d, -2022, self.t)  # "ReduceOnly Order is rejected."
                return
            o = VenueOrder(d.client_order_id, self.next_oid, d.side, d.price_ticks, d.qty_steps, d.reduce_only, d.order_type)
            self.next_oid += 1
            self.orders[o.cid] = o
            self._event(o, "NEW")
            if d.order_type == "MARKET":
                # A reduce-only market order fills at most the position; the rest expires.
                self._fill(o, min(o.orig, reducible) if d.reduce_only else o.orig)
                if o.open:
                    o.status = "EXPIRED"
                    self._event(o, "EXPIRED")
        elif isinstance(d, Amend):
            o = self.orders.get(d.client_order_id)
            if o is None or not o.open:
                self.core.on_rejected(d, -2013, self.t)
                return
            if (d.price_ticks, d.qty_steps) == (o.price, o.orig):
                self.core.on_rejected(d, -5027, self.t)   # "No need to modify the order."
                return
            if not accept:
                self.core.on_rejected(d, -4016, self.t)   # a price filter's refusal: the order stays as it was
                return
            if d.qty_steps <= o.cum:
                o.status = "CANCELED"
                self._event(o, "CANCELED")
            else:
                o.price, o.orig = d.price_ticks, d.qty_steps
                self._event(o, "AMENDMENT")
        else:
            o = self.orders.get(d.client_order_id)
            if o is None or not o.open:
                self.core.on_rejected(d, -2011, self.t)
                return
            o.status = "CANCELED"
            self._event(o, "CANCELED")
        if rest_ack:
            self.core.on_order_info(self._info(self.orders[d.client_order_id]))

    @precondition(lambda self: any(o.open for o in self.orders.values()))
    @rule(pick=st.integers(0, 63), full=st.booleans())
    def fill(self, pick: int, full: bool) -> None:
        live = [o for o in self.orders.values() if o.open]
        o = live[pick % len(live)]
        rem = o.orig - o.cum
        self._fill(o, rem if full else max(1, rem // 2))

    @precondition(lambda self: any(o.open for o in self.orders.values()))
    @rule(side=st.sampled_from([BUY, SELL, None]))
    def sweep(self, side) -> None:
        """Every resting layer of a side (or of both) fills at once."""
        for o in list(self.orders.values()):
            if o.open and side in (None, o.side):
                self._fill(o, o.orig - o.cum)

    @precondition(lambda self: self.outbox)
    @rule(pick=st.integers(0, 63))
    def deliver_one(self, pick: int) -> None:
        """Any undelivered event, in any order (reordering within and across orders)."""
        self.deliver(self.outbox.pop(pick % len(self.outbox)))

    @precondition(lambda self: self.outbox)
    @rule()
    def deliver_all(self) -> None:
        while self.outbox:
            self.deliver(self.outbox.pop(0))

    @precondition(lambda self: self.delivered)
    @rule(pick=st.integers(0, 63))
    def duplicate(self, pick: int) -> None:
        ev = self.delivered[pick % len(self.delivered)]
        self.core.on_event(ev, self.t)

    @rule()
    def account_update(self) -> None:
        """The exchange's position figure (it already holds fills still on their way)."""
        t = self.tick()
        self.core.on_event(account_update(self.position, self.mid_ticks / 100, t=t), t)

    @rule(mode=st.sampled_from(["halt", "flatten", "resume", "reduce_only", "all_clear"]))
    def operator(self, mode: str) -> None:
        """Kill switches and the fleet's reduce-only mode, at any moment."""
        if mode == "halt":
            self.core.halt("test")
        elif mode == "flatten":
            self.core.flatten("test")
        elif mode == "resume":
            self.core.resume()
        else:
            self.core.set_reduce_only(mode == "reduce_only")

    @rule()
    def resync(self) -> None:
        """A REST snapshot (open orders + position) replaces what the store knows; frames still on
        their way arrive afterwards, as they do when the user stream was buffered across a resync."""
        t = self.tick()
        snapshot = [self._info(o) for o in self.orders.values() if o.open]
        self.core.reset_from_snapshot(position_info(self.position, self.mid_ticks / 100, t), snapshot, t)

    @rule()
    def settle(self) -> None:
        """Everything answered and delivered: the store must then agree with the exchange exactly."""
        while self.inflight:
            self.exchange_answers(0, True, False)
        self.deliver_all()
        s = self.core.store
        venue_open = {o.cid: o.orig - o.cum for o in self.orders.values() if o.open}
        store_open = {o.client_order_id: o.remaining_steps for o in s.orders.values()}
        assert venue_open == store_open
        assert s.position_steps == self.position

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def pending_equals_the_sum_over_open_orders(self) -> None:
        s = self.core.store
        assert (s.pending_buy_steps, s.pending_sell_steps) == s.recompute_pending()
        assert s.pending_buy_steps >= 0 and s.pending_sell_steps >= 0

    @invariant()
    def exchange_side_worst_case_stays_inside_the_cap(self) -> None:
        """As the exchange sees it, position + open buys <= cap and position - open sells >= -cap,
        except when reducing (DESIGN rule 3): a reduce-only fill moves the position toward zero,
        which may push the other side's resting orders past the cap; those fills are allowed for."""
        buys = sum(o.orig - o.cum for o in self.orders.values() if o.open and o.side == BUY and not o.reduce_only)
        sells = sum(o.orig - o.cum for o in self.orders.values() if o.open and o.side == SELL and not o.reduce_only)
        assert self.position + buys <= CAP + self.reduced_by_buys or buys == 0
        assert self.position - sells >= -CAP - self.reduced_by_sells or sells == 0

    @invariant()
    def replay_twice_or_shuffled_within_each_order_gives_the_same_state(self) -> None:
        if not self.delivered or len(self.delivered) % 7:
            return  # every seventh delivery is plenty (the replays cost more than the step)
        ref = state_of(replay(self.delivered))
        assert state_of(replay([e for ev in self.delivered for e in (ev, ev)])) == ref
        rng = random.Random(len(self.delivered))
        assert state_of(replay(shuffle_within_orders(self.delivered, rng))) == ref


def replay(events) -> Store:
    s = Store(SYMBOL, FILTERS, PARAMS)
    for ev in events:
        s.apply(ev)
    return s


def state_of(s: Store):
    """Orders, position and pending. Realized P&L is left out: average-cost accounting depends on the
    order in which fills of *different* orders arrive, which a shuffle is allowed to change."""
    orders = {cid: (o.status, o.filled_steps, o.orig_steps, o.price_ticks) for cid, o in {**s.closed, **s.orders}.items()}
    return orders, s.position_steps, s.pending_buy_steps, s.pending_sell_steps


def shuffle_within_orders(events, rng: random.Random):
    slots: dict[str, list[int]] = {}
    for i, ev in enumerate(events):
        slots.setdefault(ev.client_order_id, []).append(i)
    out = list(events)
    for idx in slots.values():
        mine = [events[i] for i in idx]
        rng.shuffle(mine)
        for i, ev in zip(idx, mine):
            out[i] = ev
    return out


CoreMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=80, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestCoreStateMachine = CoreMachine.TestCase


def random_walk(seed: int, steps: int = 120) -> None:
    """The same rules and invariants driven by a seeded random walk: long, varied histories (many
    orders, deep reordering) that complement hypothesis' shrinkable but shorter runs."""
    rng = random.Random(seed)
    m = CoreMachine()
    for _ in range(steps):
        r = rng.random()
        has_open = any(o.open for o in m.orders.values())
        if r < 0.25:
            m.quote_cycle(rng.randint(-600, 600))
        elif r < 0.5 and m.inflight:
            m.exchange_answers(rng.randrange(1 << 20), rng.random() < 0.85, rng.random() < 0.5)
        elif r < 0.6 and has_open:
            m.fill(rng.randrange(1 << 20), rng.random() < 0.5)
        elif r < 0.63 and has_open:
            m.sweep(rng.choice([BUY, SELL, None]))
        elif r < 0.8 and m.outbox:
            m.deliver_one(rng.randrange(1 << 20))
        elif r < 0.85 and m.delivered:
            m.duplicate(rng.randrange(1 << 20))
        elif r < 0.87:
            m.account_update()
        elif r < 0.88:
            m.operator(rng.choice(["halt", "flatten", "resume", "resume", "reduce_only", "all_clear", "all_clear"]))
        elif r < 0.91:
            m.resync()
        elif r < 0.95:
            m.settle()
        m.pending_equals_the_sum_over_open_orders()
        m.exchange_side_worst_case_stays_inside_the_cap()
        m.replay_twice_or_shuffled_within_each_order_gives_the_same_state()
    m.settle()


def test_core_invariants_hold_over_seeded_random_walks():
    for seed in range(250):
        random_walk(seed)
