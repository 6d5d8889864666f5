"""The series the alert rules and the dashboard read besides the seed's: the worst-case cap, the
drawdown bands and the rate budget's windows (RateBudget.usage, read-only)."""

from __future__ import annotations

from agents.metrics import RATE_WINDOWS, AgentMetrics
from fleet.binance.ratelimit import HOLDS, Cost, RateBudget

from .test_core_support import SYMBOL
from .test_metrics import active_core, samples


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_the_cap_and_the_drawdown_bands_come_from_the_symbols_params():
    core = active_core()
    got = samples(AgentMetrics(SYMBOL, core).render())
    assert got[("mm_worst_case_cap", (("symbol", SYMBOL),))] == core.params.worst_cap
    bands = {dict(labels)["band"]: v for (name, labels), v in got.items() if name == "mm_drawdown_band_pct"}
    assert bands == {str(i): b for i, b in enumerate(core.params.drawdown.drawdown_bands, start=1)}


def test_budget_usage_counts_the_sliding_windows_without_changing_them():
    clock = Clock()
    budget = RateBudget(share=0.5, clock=clock)
    assert budget.try_charge(Cost(weight=5, orders_10s=1, orders_1m=1)) == 0
    clock.t += 4
    assert budget.try_charge(Cost(weight=1, orders_10s=1, orders_1m=1)) == 0
    u = budget.usage()
    assert (u["orders_10s"].used, u["orders_1m"].used, u["weight_1m"].used) == (2, 2, 6)
    assert u["orders_10s"].limit == budget.limits["orders_10s"] and u["orders_10s"].exchange_limit == 300
    assert u["weight_1m"].exchange_limit == 2400 and u["orders_1m"].exchange_limit == 1200
    assert u["orders_10s"].exchange_used == 2          # no report yet: at least what we spent
    budget.observe_headers({"X-MBX-ORDER-COUNT-10S": "40"})
    assert budget.usage()["orders_10s"].exchange_used == 40
    clock.t += 7                                        # the first charge left the 10 s window
    assert budget.usage()["orders_10s"].used == 1
    assert budget.usage(clock.t - 7)["orders_10s"].used == 2   # a read pruned nothing


def test_the_budget_windows_are_exposed_once_bound():
    clock = Clock()
    budget = RateBudget(share=1.0, clock=clock)
    budget.try_charge(Cost(weight=1, orders_10s=57, orders_1m=57))
    m = AgentMetrics(SYMBOL, active_core())
    assert not any(name.startswith("mm_rate_") for (name, _) in samples(m.render()))
    m.bind_budget(budget)
    got = samples(m.render())
    for window in RATE_WINDOWS:
        key = (("symbol", SYMBOL), ("window", window))
        used, limit = got[("mm_rate_budget_used", key)], got[("mm_rate_budget_limit", key)]
        assert got[("mm_rate_budget_used_ratio", key)] == used / limit
        assert ("mm_rate_exchange_limit", key) in got and ("mm_rate_exchange_used", key) in got
    assert got[("mm_rate_budget_used_ratio", (("symbol", SYMBOL), ("window", "orders_10s")))] == 57 / 285
    assert got[("mm_rate_limited_total", (("symbol", SYMBOL),))] == 0
    assert got[("mm_rate_budget_refused_total", (("symbol", SYMBOL),))] == 0


def test_a_ban_or_a_429_on_the_ips_weight_shows_how_long_every_request_is_held():
    """MmRequestsBlocked reads mm_rate_blocked_seconds: a 418 (or a 429 on the IP's weight) holds cancels
    and the dead-man heartbeat too; an order-count 429 (-1015) holds new orders only and is not in it."""
    clock = Clock()
    budget = RateBudget(share=1.0, clock=clock)
    m = AgentMetrics(SYMBOL, active_core())
    m.bind_budget(budget)
    sym = (("symbol", SYMBOL),)
    got = samples(m.render())
    assert (got[("mm_rate_blocked_seconds", sym)], got[("mm_banned_total", sym)]) == (0, 0)
    budget.note_retry_after(30.0, orders_only=True)
    assert samples(m.render())[("mm_rate_blocked_seconds", sym)] == 0
    budget.note_banned(120.0)
    clock.t += 20
    got = samples(m.render())
    assert (got[("mm_rate_blocked_seconds", sym)], got[("mm_banned_total", sym)]) == (100.0, 1)


def test_each_hold_the_status_names_is_its_own_series():
    """mm_exchange_hold says on a dashboard what the status's exchange_holds says: an agent "quoting"
    with nothing going out shows which hold keeps its orders back, every hold a series at 0 or 1."""
    clock = Clock()
    budget = RateBudget(share=1.0, clock=clock)
    m = AgentMetrics(SYMBOL, active_core())
    m.bind_budget(budget)

    def shown() -> set[str]:
        got = samples(m.render())
        values = {h: got[("mm_exchange_hold", (("hold", h), ("symbol", SYMBOL)))] for h in HOLDS}
        assert set(values.values()) <= {0.0, 1.0}, values
        return {h for h, v in values.items() if v == 1.0}

    assert shown() == set() and budget.holds() == []
    budget.note_throttled()
    assert shown() == {"throttled"} == set(budget.holds())
    budget.note_retry_after(30.0, orders_only=True)
    assert shown() == {"throttled", "orders_limited"} == set(budget.holds())
    clock.t += 31
    budget.note_banned(60.0)
    assert shown() == {"rate_limited"} == set(budget.holds())
    clock.t += 61
    assert shown() == set()
