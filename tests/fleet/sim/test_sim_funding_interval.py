"""Each symbol's funding schedule (fleet/sim/funding.py): its own interval and cap, the settlements at
their times, fundingInfo, and an interval the exchange changes."""

from __future__ import annotations

import json
from decimal import ROUND_HALF_UP, Decimal

import aiohttp
import pytest

from fleet.sim.config import SimConfigError, load_sim_config
from fleet.sim.engine import Engine
from fleet.sim.testkit import SimClient

HOUR_MS = 3_600_000
T0 = 1_800_000_000_000 - 1_800_000_000_000 % (8 * HOUR_MS) + 10 * 60_000   # 10 minutes past a settlement
HOURLY, DEFAULT = "SOLUSDT", "ETHUSDC"


def _config(**extra) -> dict:
    return {"history": False, "funding_rate_wander": 0.0, **extra,
            "symbols": [{"symbol": DEFAULT, "base_asset": "ETH", "quote_asset": "USDC", "start_price": 3000,
                         "taker_rate": 0.0},
                        {"symbol": HOURLY, "base_asset": "SOL", "quote_asset": "USDT", "start_price": 150,
                         "taker_rate": 0.0, "funding_interval_hours": 1, "funding_rate_cap": "0.02"}]}


def _engine() -> Engine:
    e = Engine(load_sim_config(_config()), seed=5, now_ms=T0)
    for symbol, amount in ((DEFAULT, "1"), (HOURLY, "-10")):
        e.set_position("main", symbol, amount, None, T0)
    return e


def _settled(e: Engine, symbol: str) -> list[int]:
    return [h["fundingTime"] for h in e.books[symbol].funding_history]


def test_each_symbol_settles_on_its_own_interval_aligned_to_the_epoch():
    e = _engine()
    e.advance(T0 + 3 * HOUR_MS)
    first_hour = T0 - T0 % HOUR_MS + HOUR_MS
    assert _settled(e, HOURLY) == [first_hour, first_hour + HOUR_MS, first_hour + 2 * HOUR_MS]
    assert _settled(e, DEFAULT) == []   # its next is 8 hours after the last, not within these 3
    fees = [i for i in e.accounts["main"].income if i["incomeType"] == "FUNDING_FEE"]
    assert [(i["symbol"], i["time"]) for i in fees] == [(HOURLY, t) for t in _settled(e, HOURLY)]
    rate = e.books[HOURLY].funding_rate
    mark = Decimal(e.books[HOURLY].funding_history[0]["markPrice"])
    assert Decimal(fees[0]["income"]) == (10 * mark * rate).quantize(Decimal("0.00000001"), ROUND_HALF_UP)   # the short receives
    premium = {b: e.premium_index(e.books[b])["nextFundingTime"] for b in (DEFAULT, HOURLY)}
    assert premium == {DEFAULT: T0 - T0 % (8 * HOUR_MS) + 8 * HOUR_MS, HOURLY: first_hour + 3 * HOUR_MS}


def test_fundinginfo_lists_only_the_symbols_with_terms_of_their_own_and_the_cap_bounds_the_rate():
    e = _engine()
    assert e.funding_info() == [{"symbol": HOURLY, "adjustedFundingRateCap": "0.02000000",
                                 "adjustedFundingRateFloor": "-0.02000000", "fundingIntervalHours": 1,
                                 "disclaimer": False, "updateTime": T0}]
    e.set_funding_rate(HOURLY, "0.05")
    assert e.books[HOURLY].funding_rate == Decimal("0.02")
    e.set_funding_rate(DEFAULT, "-0.01")   # the simulator's own bound where the symbol sets none
    assert e.books[DEFAULT].funding_rate == Decimal("-0.003")


def test_the_exchange_moves_a_symbol_to_another_interval_from_the_next_whole_multiple():
    e = _engine()
    e.watch("ethusdc@markPrice@1s")
    now = T0 + 2 * HOUR_MS + 5 * 60_000   # 2 h 15 min past a settlement of 8 hours
    e.advance(now)
    e.drain()
    answer = e.set_funding_interval(DEFAULT, 4, now)
    next_at = now - now % (4 * HOUR_MS) + 4 * HOUR_MS
    assert answer == {"symbol": DEFAULT, "fundingIntervalHours": 4, "nextFundingTime": next_at}
    assert e.premium_index(e.books[DEFAULT])["nextFundingTime"] == next_at and next_at % (8 * HOUR_MS)
    assert [r["symbol"] for r in e.funding_info()] == [DEFAULT, HOURLY]
    e.advance(now + 2_000)
    marks = [p for k, s, p in e.drain_rendered() if k == "m" and s == "ethusdc@markPrice@1s"]
    assert marks and {m["T"] for m in marks} == {next_at}   # the next mark frame says it
    e.advance(next_at + 4 * HOUR_MS)
    assert _settled(e, DEFAULT) == [next_at, next_at + 4 * HOUR_MS]
    for hours, next_ms in ((5, None), (0, None), (4, e.now_ms)):   # nothing changes
        with pytest.raises(ValueError):
            e.set_funding_interval(DEFAULT, hours, e.now_ms, next_ms)
    assert e.books[DEFAULT].funding_interval_ms == 4 * HOUR_MS


def test_a_change_at_the_very_time_of_a_settlement_makes_that_settlement_first():
    e = _engine()
    due = e.books[DEFAULT].next_funding_ms
    e.advance(due - 1)   # the engine has not yet reached the settlement's step
    e.set_funding_interval(DEFAULT, 4, due)
    assert _settled(e, DEFAULT) == [due]
    assert e.books[DEFAULT].next_funding_ms == due + 4 * HOUR_MS


@pytest.mark.parametrize("field, value", [("funding_interval_hours", 5), ("funding_interval_hours", 0),
                                          ("funding_rate_cap", "1.5"), ("funding_rate_cap", "abc"),
                                          ("funding_rate_cap", "1e-10")])
def test_a_symbol_with_an_impossible_funding_term_refuses_to_start_naming_it(field, value):
    cfg = _config()
    cfg["symbols"][1][field] = value
    with pytest.raises(SimConfigError, match=field):
        load_sim_config(cfg)


@pytest.mark.asyncio
async def test_over_loopback_fundinginfo_the_mark_frames_and_a_change_by_the_admin(sim_factory):
    sim = await sim_factory(symbols=[DEFAULT, HOURLY], config=_config())
    async with SimClient.for_sim(sim) as c, aiohttp.ClientSession() as s:
        listed = (await c.public("GET", "/fapi/v1/fundingInfo")).json
        assert [(r["symbol"], r["fundingIntervalHours"]) for r in listed] == [(HOURLY, 1)]
        premium = (await c.public("GET", "/fapi/v1/premiumIndex", {"symbol": HOURLY})).json
        assert premium["nextFundingTime"] % HOUR_MS == 0
        ws = await s.ws_connect(f"{sim.ws_url}/market/stream?streams=ethusdc@markPrice@1s")
        before = json.loads((await ws.receive(timeout=10)).data)["data"]["T"]
        assert before % (8 * HOUR_MS) == 0
        now = (await c.public("GET", "/fapi/v1/time")).json["serverTime"]
        at = now + 600_000
        changed = await c.admin("POST", "/sim/funding/interval", {"symbol": DEFAULT, "hours": 2, "next_ms": at})
        assert changed == {"symbol": DEFAULT, "fundingIntervalHours": 2, "nextFundingTime": at}
        while (frame := json.loads((await ws.receive(timeout=10)).data)["data"])["T"] == before:
            pass
        assert frame["T"] == at
        listed = (await c.public("GET", "/fapi/v1/fundingInfo")).json
        assert [(r["symbol"], r["fundingIntervalHours"]) for r in listed] == [(DEFAULT, 2), (HOURLY, 1)]
        pinned = await c.admin("POST", "/sim/funding/rate", {"symbol": HOURLY, "rate": "0.05"})
        assert pinned == {"ok": True, "rate": "0.02000000", "pinned": True}   # the cap, said
        for bad in ({"symbol": DEFAULT, "hours": 3.5}, {"symbol": DEFAULT, "hours": 2, "next_ms": now - 1},
                    {"symbol": "NOPEUSDT", "hours": 2}, {"symbol": DEFAULT}):
            async with s.post(f"{sim.rest_url}/sim/funding/interval", json=bad) as resp:
                assert resp.status == 400, bad
                assert (await resp.json())
        state = await c.state()
        assert state["markets"][DEFAULT]["next_funding_time"] == at
        assert state["markets"][DEFAULT]["funding_interval_ms"] == 2 * HOUR_MS
        await ws.close()
