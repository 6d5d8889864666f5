"""A symbol that settles funding every 4 hours, then every hour: the agent reads its interval from
fundingInfo at the start and again once the exchange moves it, and its quotes' funding shift scales
the rate to 8 hours, as the exchange's resting orders show."""

from __future__ import annotations

import logging
from decimal import Decimal

import pytest

from agents import delisting
from fleet.config import SymbolParams
from fleet.sim.config import default_symbol_spec

from .test_agent_live import SYMBOL, exchange, make_agent, metric, wait_for  # noqa: F401 - fixtures

RATE = Decimal("0.0002")   # per interval, pinned: longs pay


@pytest.fixture
async def sim(sim_factory):
    spec = default_symbol_spec(SYMBOL).model_dump() | {"funding_interval_hours": 4, "funding_rate_cap": "0.02"}
    return await sim_factory(symbols=[SYMBOL], config={"symbols": [spec]})


def _top_bid_over_mid(state: dict) -> float:
    """Our highest bid at the exchange over the market's mid, in one snapshot."""
    bids = [Decimal(o["price"]) for o in state["open_orders"] if o["side"] == "BUY"]
    assert bids, "bids rest"
    return float(max(bids)) / float(state["markets"][SYMBOL]["mid"])


async def test_the_funding_shift_follows_the_interval_the_exchange_lists_and_moves(make_agent, exchange, caplog,
                                                                                    monkeypatch):
    """The read after the move fails once (-1001): it is read again (here after 0.5 s; a minute live)."""
    caplog.set_level(logging.INFO, logger="mmfleet.agent")
    monkeypatch.setattr(delisting, "FUNDING_REREAD_GAP_MS", 500)
    await exchange.post("/sim/funding/rate", {"symbol": SYMBOL, "rate": str(RATE)})
    params = SymbolParams()
    agent = await make_agent(params=params)
    assert metric(agent, "mm_funding_interval_seconds") == 4 * 3600
    assert agent.status()["funding_interval_s"] == 4 * 3600
    said = [r for r in caplog.records if getattr(r, "event", None) == "funding_interval"]
    assert len(said) == 1 and said[0].levelno == logging.INFO and "every 4 h" in said[0].getMessage()
    s = params.funding.sensitivity
    hourly_center = 1 - s * float(RATE) * 8   # over the mid, once the symbol settles every hour
    await wait_for(lambda: agent.core.store.predicted_funding == float(RATE), 10, "the rate predicted")
    before = _top_bid_over_mid(await exchange.state())
    assert before > hourly_center   # the inner bid sits above where the hourly center will be

    await exchange.post("/sim/fault/rest", {"mode": "error", "count": 1, "path": "/fapi/v1/fundingInfo"})
    now = (await exchange.state())["time"]
    moved = await exchange.post("/sim/funding/interval", {"symbol": SYMBOL, "hours": 1, "next_ms": now + 600_000})
    assert moved["fundingIntervalHours"] == 1
    await wait_for(lambda: metric(agent, "mm_funding_interval_seconds") == 3600, 10, "the new interval read")
    assert [r for r in caplog.records if getattr(r, "event", None) == "funding_info_unread"], "the failed read said"
    said = [r for r in caplog.records if getattr(r, "event", None) == "funding_interval"]
    assert len(said) == 2 and said[1].levelno == logging.WARNING and "every 1 h" in said[1].getMessage()

    margin = 1 + params.base.min_spread / 2

    async def bids_below() -> bool:   # the exchange's truth: every bid of ours rests below the hourly center
        return _top_bid_over_mid(await exchange.state()) < hourly_center * margin
    await wait_for(bids_below, 10, "our bids at the exchange below the hourly center")
