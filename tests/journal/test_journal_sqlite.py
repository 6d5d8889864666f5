"""The journal against SQLite: a real agent on the simulator; the journal equals the exchange's record."""

from __future__ import annotations

import asyncio
import json
import logging
from decimal import Decimal

import aiohttp
import pytest
from sqlalchemy import select

from fleet.sim.testkit import SimClient
from journal.db import Target, make_engine
from journal.schema import events, fills, orders, snapshots

from .helpers import (
    SETTINGS,
    assert_equals_exchange,
    assert_split_adds_up,
    exchange_trades,
    journal_sums,
    make_agent,
    post,
    sim_state,
    stopped_as_the_exchange,
    wait_for,
)

SYMBOL = "ETHUSDC"


@pytest.fixture
def target(tmp_path):
    return Target(url=f"sqlite:///{tmp_path / 'j.sqlite'}", spool_dir=str(tmp_path / "spool"))


async def trade_a_while(sim, http, agent, symbol: str = SYMBOL) -> None:
    """Fills both ways (jumps through a frozen book's ladder), then funding settlements on the position."""
    await wait_for(lambda: agent.status()["last_book_age_s"] is not None, 15, "a first book")
    await post(sim, http, "/sim/market/freeze", {"frozen": True, "symbol": symbol})
    await wait_for(lambda: len(agent.core.store.orders) >= 4, 30, "a ladder resting")
    for pct in (-0.15, 0.3, -0.3, 0.2):
        await post(sim, http, "/sim/market/jump", {"symbol": symbol, "pct": pct})
        await asyncio.sleep(0.8)
    await post(sim, http, "/sim/funding/rate", {"symbol": symbol, "rate": "0.0004"})
    for _ in range(2):
        await post(sim, http, "/sim/funding/settle", {"symbol": symbol})
        await asyncio.sleep(0.3)


async def test_journal_equals_the_exchange_and_the_split_adds_up(sim, target, tmp_path):
    """Also: the trades are read every beat, the funding (income, 30 weight a read) at start and after
    a funding fee frame, not every beat."""
    settings = SETTINGS.model_copy(update={"backfill_interval_sec": 0.5})
    agent = make_agent(sim, target, tmp_path / "state", SYMBOL, settings=settings)
    task = asyncio.create_task(agent.run())
    backfills = agent.journal.backfills
    async with aiohttp.ClientSession() as http:
        await wait_for(lambda: agent.status()["state"] == "quoting", 15, "quoting")
        await wait_for(lambda: backfills["runs"] >= 3, 10, "three backfills")
        assert backfills["income_reads"] == 1, backfills  # the start's
        await trade_a_while(sim, http, agent)
        assert agent.core.store.fills_buy > 0 and agent.core.store.fills_sell > 0
        await wait_for(lambda: backfills["funding"] >= 2, 10, "the funding rows after their frames")
        assert backfills["income_reads"] < backfills["runs"], backfills
        _, trades, sums = await stopped_as_the_exchange(sim, http, agent, task, target, SYMBOL)
    report = sums["report"]
    assert_split_adds_up(report)
    d = report["symbols"][SYMBOL]
    assert d["fills"] == len(trades) and d["fills_without_mid"] < d["fills"]  # the stream gave the mids
    assert d["funding"] != 0
    engine = make_engine(target)
    with engine.connect() as conn:
        kinds = set(conn.execute(select(events.c.kind)).scalars())
        sent = conn.execute(select(orders).where(orders.c.event == "sent")).mappings().all()
        updates = conn.execute(select(orders.c.status).where(orders.c.event == "update")).scalars().all()
        snaps = conn.execute(select(snapshots)).mappings().all()
        stream = conn.execute(select(fills).where(fills.c.mid.is_not(None))).mappings().all()
    engine.dispose()
    # the stop's last event too (the writer closed before it was said, and counted it lost)
    assert {"ownership_acquired", "resynced", "quoting_started", "stopping", "stopped"} <= kinds, kinds
    assert agent.journal.writer.stats["dropped"] == 0, agent.journal.writer.stats
    assert sent and all(r["client_order_id"] and r["epoch"] == 1 and r["reason"] for r in sent)
    assert {"NEW", "FILLED"} <= set(updates) or {"NEW", "PARTIALLY_FILLED"} <= set(updates)
    assert snaps and all(s["symbol"] == SYMBOL for s in snaps)
    assert stream and all(r["epoch"] == 1 and r["mid"] > 0 for r in stream)
    _, key, secret = sim.accounts[0]
    assert_no_secret(target, [key, secret])


async def test_fills_and_funding_lost_on_the_way_are_read_again_and_the_journal_ends_equal(sim, tmp_path):
    """The database down and the spool's disk refusing rows while the agent trades, the writer's queue
    small: rows are lost, counted, and the fills and funding among them read again from the exchange
    (from the lowest lost), so the journal still ends equal to the exchange's record."""
    blocker = tmp_path / "blocker"
    blocker.write_text("")   # neither the SQLite file's directory nor the spool's can be made
    target = Target(url=f"sqlite:///{blocker / 'j.sqlite'}", spool_dir=str(blocker / "spool"))
    settings = SETTINGS.model_copy(update={"queue_max": 100, "backfill_interval_sec": 1.0})
    agent = make_agent(sim, target, tmp_path / "state", SYMBOL, settings=settings)
    task = asyncio.create_task(agent.run())
    writer = agent.journal.writer
    async with aiohttp.ClientSession() as http:
        await wait_for(lambda: agent.status()["state"] == "quoting", 15, "quoting")
        await trade_a_while(sim, http, agent)
        await wait_for(lambda: writer.stats["dropped"] > 0 and "trade" in writer.status()["holes"], 20,
                       "fills lost on the way to the journal")
        blocker.unlink()   # the disk and the database take rows again
        await wait_for(lambda: writer.db_up and not writer.status()["holes"], 20, "the holes read again")
        await stopped_as_the_exchange(sim, http, agent, task, target, SYMBOL)


# A sweep's fill frames spoiled on the way: two skipped as garbage, three without their trade id,
# price, realized P&L and fee (each read as 0), or two never sent
FILL_FRAME_FAULTS = {"garbage": {"mode": "garbage", "count": 2},
                     "omit": {"mode": "omit", "fields": ["o.t", "o.L", "o.rp", "o.n", "o.N"], "count": 3},
                     "drop": {"mode": "drop", "count": 2}}   # lost on a live connection: no error at all


@pytest.mark.parametrize("fault", sorted(FILL_FRAME_FAULTS))
async def test_fills_whose_frames_were_spoiled_are_read_again_though_later_fills_came_first(
        sim, target, tmp_path, fault):
    """Fill frames of a sweep skipped (garbage) or lacking their trade fields; the sweep's later fills
    come as frames and are written at once, ahead of the journal's cursor. The trades of that time are
    read again from the exchange (a hole from before them), not passed over by a backfill that starts
    after the newest fill written, and the exchange's figures replace the frames' zeros: the journal
    ends equal to the exchange's record, each fill at its price and quantity."""
    settings = SETTINGS.model_copy(update={"backfill_interval_sec": 3600.0})   # only the gap's backfill
    agent = make_agent(sim, target, tmp_path / "state", SYMBOL, settings=settings)
    task = asyncio.create_task(agent.run())
    async with aiohttp.ClientSession() as http:
        await wait_for(lambda: agent.status()["state"] == "quoting", 15, "quoting")
        await wait_for(lambda: agent.status()["last_book_age_s"] is not None, 15, "a first book")
        await post(sim, http, "/sim/market/freeze", {"frozen": True, "symbol": SYMBOL})
        await wait_for(lambda: len(agent.core.store.orders) >= 6, 30, "a ladder resting")
        journal = agent.journal   # the start's backfill over (its funding read waits for the schedule)
        await wait_for(lambda: journal._start_check is None and journal._backfill_task.done(), 20, "the start's backfill")
        runs = agent.journal.backfills["runs"]
        await post(sim, http, "/sim/fault/frame", {"stream": "user", "event": "ORDER_TRADE_UPDATE", "account": "main",
                                                   "symbol": SYMBOL, **FILL_FRAME_FAULTS[fault]})
        await post(sim, http, "/sim/market/jump", {"symbol": SYMBOL, "pct": -0.35})   # a sweep of several bids
        if fault == "garbage":
            await wait_for(lambda: agent.status()["counters"]["malformed_frames"] == 2, 10, "the two frames skipped")
        await wait_for(lambda: agent.journal.backfills["runs"] > runs and not agent.journal.writer.status()["holes"],
                       15, "the trades read again", explain=lambda: asyncio.sleep(0, f"{agent.journal.backfills} "
                       f"{agent.journal.writer.status()} {agent.journal._user_malformed} {id(agent.user.stream)}"))
        await agent.stop()
        await asyncio.wait_for(task, 30)
        state = await sim_state(sim, http, SYMBOL)
    trades = await exchange_trades(sim, SYMBOL)
    assert len(trades) >= 3
    assert_equals_exchange(state, journal_sums(target, SYMBOL), SYMBOL, trades)
    with make_engine(target).connect() as conn:
        rows = {(r.trade_id, r.side): (Decimal(r.price), Decimal(r.qty)) for r in conn.execute(select(fills))}
    assert rows == {(int(t["id"]), t["side"]): (Decimal(t["price"]), Decimal(t["qty"])) for t in trades}


async def test_every_request_sent_has_its_answer_in_the_journal(sim, target, tmp_path):
    """Whole calls refused (a definite -1001 on amends) or of unknown outcome (a 503 on places and
    cancels) are journaled per order, as a batch's answers are: each request journaled as sent has
    its answer, rejection or unknown outcome after it."""
    agent = make_agent(sim, target, tmp_path / "state", SYMBOL)
    task = asyncio.create_task(agent.run())
    async with aiohttp.ClientSession() as http:
        await wait_for(lambda: agent.status()["state"] == "quoting", 15, "quoting")
        await wait_for(lambda: len(agent.core.store.orders) >= 4, 30, "a ladder resting")
        await post(sim, http, "/sim/fault/rest", {"mode": "error", "count": 2, "path": "/fapi/v1/", "method": "PUT"})
        await post(sim, http, "/sim/fault/rest", {"mode": "unknown", "count": 2, "path": "/fapi/v1/batchOrders"})
        for pct in (0.2, -0.2, 0.2):
            await post(sim, http, "/sim/market/jump", {"symbol": SYMBOL, "pct": pct})
            await asyncio.sleep(0.5)
        await wait_for(lambda: not sim.faults, 10, "the faults used")
        await agent.stop()
        await asyncio.wait_for(task, 30)
    engine = make_engine(target)
    with engine.connect() as conn:
        rows = conn.execute(select(orders.c.client_order_id, orders.c.request, orders.c.event, orders.c.detail)
                            .where(orders.c.event.in_(("sent", "answer", "rejected", "unknown")))).all()
    engine.dispose()
    sent: dict[tuple[str, str], int] = {}
    answered: dict[tuple[str, str], int] = {}
    for cid, request, event, _ in rows:
        book = sent if event == "sent" else answered
        book[(cid, request)] = book.get((cid, request), 0) + 1
    assert sent and sent == answered, {k: (n, answered.get(k, 0)) for k, n in sent.items() if answered.get(k) != n}
    details = {d for *_, e, d in rows if e == "rejected"} | {d for *_, e, d in rows if e == "unknown"}
    assert any(d and d.startswith("-1001") for d in details), details   # the refused amends are there


def assert_no_secret(target: Target, secrets: list[str]) -> None:
    engine = make_engine(target)
    with engine.connect() as conn:
        for table in ("orders", "fills", "funding", "snapshots", "events"):
            for row in conn.exec_driver_sql(f"SELECT * FROM {table}").all():
                text = json.dumps([str(v) for v in row])
                for s in secrets:
                    assert s not in text, f"a secret in the journal's {table}"
    engine.dispose()


async def self_trade(sim, symbol: str = SYMBOL) -> int:
    """The account's sell that meets its own resting buy, asking for no self-trade prevention (Binance's
    default, EXPIRE_MAKER, would expire the buy instead); returns the trade's id."""
    async with SimClient.for_sim(sim) as c:
        book = (await c.public("GET", "/fapi/v1/depth", {"symbol": symbol, "limit": 20})).json
        price = book["bids"][3][0]
        buy = await c.signed("POST", "/fapi/v1/order", {"symbol": symbol, "side": "BUY", "type": "LIMIT",
                                                         "timeInForce": "GTC", "price": price, "quantity": "0.010"})
        assert buy.status == 200, buy.json
        book = (await c.public("GET", "/fapi/v1/depth", {"symbol": symbol, "limit": 20})).json
        through = sum(Decimal(q) for p, q in book["bids"] if Decimal(p) >= Decimal(price))
        sell = await c.signed("POST", "/fapi/v1/order", {"symbol": symbol, "side": "SELL", "type": "LIMIT",
                                                          "timeInForce": "IOC", "price": price,
                                                          "quantity": str(through), "selfTradePreventionMode": "NONE"})
        assert sell.status == 200, sell.json
        mine = (await c.signed("GET", "/fapi/v1/userTrades", {"symbol": symbol, "orderId": buy.json["orderId"]})).json
    assert len(mine) == 1 and mine[0]["qty"] == "0.010", mine
    return int(mine[0]["id"])


async def test_a_self_trade_is_journaled_on_both_sides(sim, target, tmp_path):
    """Both sides of a self-trade are the account's fills under the trade's one id, as on Binance (the
    id is the public tape's): the journal keeps both. Keyed by the trade id alone, it kept one, and its
    realized P&L and fees no longer added up to the exchange's."""
    async with aiohttp.ClientSession() as http:
        await post(sim, http, "/sim/market/freeze", {"frozen": True, "symbol": SYMBOL})
        trade_id = await self_trade(sim)
        agent = make_agent(sim, target, tmp_path / "state", SYMBOL)
        task = asyncio.create_task(agent.run())
        await wait_for(lambda: agent.journal.backfills["runs"] >= 1, 20, "a backfill")
        await agent.stop()
        await asyncio.wait_for(task, 30)
        state = await sim_state(sim, http, SYMBOL)
    trades = await exchange_trades(sim, SYMBOL)
    assert sorted(t["side"] for t in trades if int(t["id"]) == trade_id) == ["BUY", "SELL"]
    sums = journal_sums(target, SYMBOL)
    assert (trade_id, "BUY") in sums["fills"] and (trade_id, "SELL") in sums["fills"]
    assert_equals_exchange(state, sums, SYMBOL, trades)


async def test_an_empty_journal_is_backfilled_from_the_exchange(sim, target, tmp_path):
    """Trades made while no journal listened: the next start fills them in, once each."""
    async with aiohttp.ClientSession() as http:
        from journal.sink import NULL_SINK

        first = make_agent(sim, target, tmp_path / "state", SYMBOL)
        first.journal.writer.close(1.0)
        first.journal = NULL_SINK  # this incarnation records nothing
        first.log.listener = None
        task = asyncio.create_task(first.run())
        await wait_for(lambda: first.status()["state"] == "quoting", 15, "quoting")
        await trade_a_while(sim, http, first)
        await first.stop()
        await asyncio.wait_for(task, 30)
        second = make_agent(sim, target, tmp_path / "state", SYMBOL)
        task = asyncio.create_task(second.run())
        await wait_for(lambda: second.status()["state"] in ("quoting", "halted"), 15, "the second start")
        await wait_for(lambda: second.journal.backfills["runs"] >= 1, 10, "a backfill")
        _, _, sums = await stopped_as_the_exchange(sim, http, second, task, target, SYMBOL)
    assert_split_adds_up(sums["report"])


async def test_a_delisting_and_its_settlement_are_in_the_journal(sim, target, tmp_path):
    """What the exchange did is recorded with what the agent made of it: a delisting announced, the
    flatten ahead of it (its orders and fills), the symbol closed; the journal still equals the
    exchange's record."""
    agent = make_agent(sim, target, tmp_path / "state", SYMBOL)   # the default lead: 30 min, so at once
    task = asyncio.create_task(agent.run())
    async with aiohttp.ClientSession() as http:
        await wait_for(lambda: agent.status()["state"] == "quoting", 15, "quoting")
        await wait_for(lambda: len(agent.core.store.orders) >= 4, 30, "a ladder resting")
        await post(sim, http, "/sim/position", {"account": "main", "symbol": SYMBOL, "amount": "0.05"})
        await wait_for(lambda: agent.core.store.position == 0.05, 10, "the position seen")
        await post(sim, http, "/sim/delist", {"symbol": SYMBOL, "in_s": 4})

        async def closed_and_flat() -> bool:
            st = await sim_state(sim, http, SYMBOL)
            return st["markets"][SYMBOL]["status"] == "CLOSE" and st["positions"][SYMBOL]["amount"] == "0.000"

        await wait_for(closed_and_flat, 15, "flattened ahead, then settled and closed")
        await wait_for(lambda: agent.status()["state"] == "halted", 10, "halted once closed")
        state, _, _ = await stopped_as_the_exchange(sim, http, agent, task, target, SYMBOL)
    assert state["counters"]["settled"] == 0   # the flatten came first
    engine = make_engine(target)
    with engine.connect() as conn:
        kinds = list(conn.execute(select(events.c.kind).order_by(events.c.id)).scalars())
        flatten_sent = conn.execute(select(orders).where((orders.c.event == "sent") & (orders.c.reason == "flatten"))
                                    ).mappings().all()
    engine.dispose()
    for kind in ("delisting_scheduled", "delisting_exit", "symbol_not_trading"):
        assert kind in kinds, kinds
    assert kinds.index("delisting_scheduled") < kinds.index("delisting_exit") < kinds.index("symbol_not_trading")
    assert flatten_sent and all(r["side"] == "SELL" for r in flatten_sent)


async def test_an_auto_deleveraging_fill_is_in_the_journal_though_later_fills_came_after_it(sim, target, tmp_path):
    """The exchange closes part of the position by ADL (its fill's execution type CALCULATED, as a
    liquidation's): the journal kept fills of execution type TRADE only, and its backfill reads from the
    newest trade it holds, so once later fills came the ADL's was never read: the journal's realized P&L
    and position off the exchange's for good. It equals the exchange's record now."""
    agent = make_agent(sim, target, tmp_path / "state", SYMBOL)
    task = asyncio.create_task(agent.run())
    async with aiohttp.ClientSession() as http:
        await wait_for(lambda: agent.status()["state"] == "quoting", 15, "quoting")
        await post(sim, http, "/sim/position", {"account": "main", "symbol": SYMBOL, "amount": "0.05"})
        await wait_for(lambda: agent.core.store.position == 0.05, 10, "the position seen")
        await post(sim, http, "/sim/adl", {"symbol": SYMBOL, "qty": "0.02"})
        await wait_for(lambda: agent.core.store.deleveraged == 1, 10, "the ADL booked by the agent")
        await trade_a_while(sim, http, agent)   # later fills, of later trade ids
        await stopped_as_the_exchange(sim, http, agent, task, target, SYMBOL)
    with make_engine(target).connect() as conn:
        adl = conn.execute(select(fills).where(fills.c.client_order_id.like("adl_autoclose%"))).mappings().all()
    # the exchange's own order, at its price: no quote's, so no spread given up (inventory's, journal/pnl.py)
    assert len(adl) == 1 and adl[0]["mid"] is None and adl[0]["source"] == "stream", adl


async def test_a_fee_the_journal_read_while_the_agents_own_reads_failed_is_in_the_agents_books(
        sim, target, tmp_path, monkeypatch, caplog):
    """A settlement on a cross position (its fee frame names no symbol: the fee is read from income): the
    agent's look-up and the journal each read the rows. The agent's tries failed (the exchange erring;
    live, its budget without room at once under a lowered limit) while the journal's read went through
    later: the journal (``/pnl``) had the fee, the agent's books (``/exposure``, ``/metrics``) not until its
    next try 30 s on, or for good. The journal's read books it in the agent's books too (once)."""
    from agents import carry

    caplog.set_level(logging.INFO, logger="mmfleet.agent")
    monkeypatch.setattr(carry, "FUNDING_READ_PAUSES_S", (0.0, 0.2, 0.4, 120.0))   # (its last try far off)
    settings = SETTINGS.model_copy(update={"backfill_interval_sec": 0.5})
    agent = make_agent(sim, target, tmp_path / "state", SYMBOL, settings=settings)
    task = asyncio.create_task(agent.run())
    async with aiohttp.ClientSession() as http:
        await wait_for(lambda: agent.status()["state"] == "quoting", 15, "quoting")
        await post(sim, http, "/sim/position", {"account": "main", "symbol": SYMBOL, "amount": "0.05"})
        await wait_for(lambda: agent.core.store.position == 0.05, 10, "the position seen")
        await post(sim, http, "/sim/fault/rest", {"mode": "error", "count": 100_000, "path": "/fapi/v1/income",
                                                  "method": "GET"})
        await post(sim, http, "/sim/funding/rate", {"symbol": SYMBOL, "rate": "0.0004"})
        await post(sim, http, "/sim/funding/settle", {"symbol": SYMBOL})
        await wait_for(lambda: len([r for r in caplog.records
                                    if getattr(r, "event", None) == "funding_income_unavailable"]) >= 3,
                       10, "the agent's three tries failed")
        await post(sim, http, "/sim/fault/clear", {})
        truth = Decimal((await sim_state(sim, http, SYMBOL))["positions"][SYMBOL]["funding"])
        assert truth != 0
        await wait_for(lambda: agent.core.store.funding.total == truth, 20, "the fee in the agent's books",
                       explain=lambda: f"{agent.core.store.funding.total} against {truth}")
        await agent.stop()
        await asyncio.wait_for(task, 30)
    assert journal_sums(target, SYMBOL)["funding"] == truth   # and in the journal, once


async def test_a_resync_reads_the_funding_again_only_if_a_settlement_may_have_come_since_the_last_read(
        sim, target, tmp_path, monkeypatch):
    """A resync reads income (30 weight) only when a settlement may be missing from the journal's last
    read: a gap of every symbol's stream would otherwise cost the fleet 30 weight a symbol at once. A
    settlement inside a gap, its fee frame lost, is still read at the resync, and the journal's funding
    equals the exchange's."""
    from journal import recorder

    monkeypatch.setattr(recorder, "FUNDING_TRAIL_MS", 300)   # the listing's trail (60 s) shortened for the test
    settings = SETTINGS.model_copy(update={"backfill_interval_sec": 3600.0})   # no beat's read in between
    agent = make_agent(sim, target, tmp_path / "state", SYMBOL, settings=settings)
    task = asyncio.create_task(agent.run())
    journal = agent.journal
    backfills = journal.backfills

    def idle() -> bool:
        return (journal._backfill_task is not None and journal._backfill_task.done() and not journal._backfill_again
                and not journal._funding_wanted)

    async def resync(what: str) -> None:
        reads, spared = backfills["income_reads"], backfills["income_spared"]
        await post(sim, http, "/sim/fault/drop", {"target": "user", "account": "main"})
        await wait_for(lambda: backfills["income_reads"] > reads or backfills["income_spared"] > spared, 20, what)
        await wait_for(idle, 20, "the resync's backfill done")

    async with aiohttp.ClientSession() as http:
        await wait_for(lambda: agent.status()["state"] == "quoting", 15, "quoting")
        await post(sim, http, "/sim/position", {"account": "main", "symbol": SYMBOL, "amount": "0.05"})
        await wait_for(lambda: agent.core.store.position >= 0.04, 10, "the position seen")
        book = agent.core.store.funding
        # the first resync's read begins a trail after the schedule was first said, so it counts for the second
        await wait_for(lambda: book.next_seen_ms > 0 and agent.exchange_ms() > book.next_seen_ms + 300 and idle(), 10,
                       "the next settlement said a trail ago")
        await resync("the first resync")   # reads unless the start's read began well after the schedule was said
        reads = backfills["income_reads"]
        assert reads in (1, 2) and backfills["income_spared"] == 2 - reads, backfills
        await resync("the second resync")   # nothing settled since the last read: spared
        assert backfills["income_reads"] == reads and backfills["income_spared"] == 3 - reads, backfills
        # a settlement whose fee frame is lost on a live connection, then a gap's resync
        await post(sim, http, "/sim/fault/frame", {"stream": "user", "event": "ACCOUNT_UPDATE", "account": "main",
                                                   "reason": "FUNDING_FEE", "mode": "drop"})
        async with SimClient.for_sim(sim) as c:
            now = (await c.public("GET", "/fapi/v1/time", {})).json["serverTime"]
        await post(sim, http, "/sim/funding/interval", {"symbol": SYMBOL, "hours": 1, "next_ms": now + 1500})
        await wait_for(lambda: not sim.frame_faults and agent.core.store.funding.next_funding_ms > now + 1500, 10,
                       "the settlement, its fee frame dropped, and the next one said")
        assert backfills["funding"] == 0, backfills   # the journal has no row of it yet
        await resync("the third resync")
        assert backfills["income_reads"] == reads + 1 and backfills["funding"] == 1, backfills
        await agent.stop()
        await asyncio.wait_for(task, 30)
        state = await sim_state(sim, http, SYMBOL)
    assert journal_sums(target, SYMBOL)["funding"] == Decimal(state["positions"][SYMBOL]["funding"]) != 0


async def test_a_fee_whose_frame_was_lost_is_read_though_the_agents_own_look_up_wrote_a_later_one(
        sim, target, tmp_path, monkeypatch):
    """A settlement's fee frame lost; the next settlement's frame (a cross account's, naming no symbol)
    has the agent read that fee's income row itself and hand it to the journal. The journal's next
    read started from the newest fee in its database, that handed-over row, and passed over the lost
    fee for good. It now reads from its own last read."""
    from agents import funding as agent_funding

    # the agent's look-up reads a minute before the fee frame; shortened, so the two settlements a second
    # apart stand for two settlements an interval apart
    monkeypatch.setattr(agent_funding, "FUNDING_LOOKBACK_MS", 200)
    settings = SETTINGS.model_copy(update={"backfill_interval_sec": 3600.0})
    agent = make_agent(sim, target, tmp_path / "state", SYMBOL, settings=settings)
    task = asyncio.create_task(agent.run())
    journal = agent.journal

    def idle() -> bool:
        return (journal._backfill_task is not None and journal._backfill_task.done() and not journal._backfill_again
                and not journal._funding_wanted)

    async with aiohttp.ClientSession() as http, SimClient.for_sim(sim) as c:
        await wait_for(lambda: agent.status()["state"] == "quoting", 15, "quoting")
        await post(sim, http, "/sim/position", {"account": "main", "symbol": SYMBOL, "amount": "0.05"})
        await wait_for(lambda: agent.core.store.position >= 0.04 and idle(), 10, "the position seen")
        await post(sim, http, "/sim/fault/frame", {"stream": "user", "event": "ACCOUNT_UPDATE", "account": "main",
                                                   "reason": "FUNDING_FEE", "mode": "drop"})
        first = (await post(sim, http, "/sim/funding/settle", {"symbol": SYMBOL}))["charged"]
        assert first and not sim.frame_faults

        async def later() -> bool:
            return (await c.public("GET", "/fapi/v1/time", {})).json["serverTime"] > first_ms + 1000

        first_ms = (await c.public("GET", "/fapi/v1/time", {})).json["serverTime"]
        await wait_for(later, 10, "a second on the exchange's clock")
        await post(sim, http, "/sim/funding/settle", {"symbol": SYMBOL})
        await wait_for(lambda: journal.backfills["funding"] >= 1, 10, "the agent's own look-up handing the row over")
        await wait_for(lambda: journal.writer.flush(5), 10, "the handed row written")
        journal.request_backfill(funding=True)   # the journal's next funding read (hourly, or a resync's)
        await wait_for(idle, 20, "the funding read done")
        await agent.stop()
        await asyncio.wait_for(task, 30)
        state = await sim_state(sim, http, SYMBOL)
    assert journal_sums(target, SYMBOL)["funding"] == Decimal(state["positions"][SYMBOL]["funding"]) != 0


async def _run_until_quoting_then_stop(sim, target, state_dir, settings=SETTINGS) -> dict:
    """One agent on the journal: started, quoting, its start's backfill done, stopped; its backfills."""
    agent = make_agent(sim, target, state_dir, SYMBOL, settings=settings)
    task = asyncio.create_task(agent.run())
    journal = agent.journal
    await wait_for(lambda: agent.status()["state"] == "quoting", 15, "quoting")
    await wait_for(lambda: journal._start_check is None and journal._backfill_task.done(), 20, "the start's backfill")
    started = dict(journal.backfills)
    await agent.stop()
    await asyncio.wait_for(task, 30)
    return started


async def test_a_start_between_two_settlements_after_a_read_that_had_the_last_one_reads_no_funding(
        sim, target, tmp_path):
    """The journal's last funding read on record (the previous agent's stop) began after the settlement
    before the next one the mark frames say: the next agent's start does not read income again (30
    weight, half of a start's; 1,500 of the IP's 2,400 a minute for a 50-symbol fleet's start)."""
    async with aiohttp.ClientSession() as http:
        async with SimClient.for_sim(sim) as c:
            now = (await c.public("GET", "/fapi/v1/time", {})).json["serverTime"]
        # the last settlement 4 h ago, the next in 4 h (not the 00/08/16 UTC one a run near it would straddle)
        await post(sim, http, "/sim/funding/interval", {"symbol": SYMBOL, "hours": 8, "next_ms": now + 4 * 3_600_000})
        await post(sim, http, "/sim/position", {"account": "main", "symbol": SYMBOL, "amount": "0.05"})
        first = await _run_until_quoting_then_stop(sim, target, tmp_path / "state")
        assert first["income_reads"] == 1 and first["income_spared"] == 0, first   # none on record: read
        second = await _run_until_quoting_then_stop(sim, target, tmp_path / "state")
        assert second["income_reads"] == 0 and second["income_spared"] == 1, second
        state = await sim_state(sim, http, SYMBOL)
    assert journal_sums(target, SYMBOL)["funding"] == Decimal(state["positions"][SYMBOL]["funding"])


async def test_a_settlement_while_no_agent_ran_is_read_at_the_next_start(sim, target, tmp_path):
    """A settlement on the position while no agent ran (after the last read on record): the next start
    reads the funding, and the journal's equals the exchange's."""
    async with aiohttp.ClientSession() as http:
        await post(sim, http, "/sim/position", {"account": "main", "symbol": SYMBOL, "amount": "0.05"})
        await _run_until_quoting_then_stop(sim, target, tmp_path / "state")
        async with SimClient.for_sim(sim) as c:
            now = (await c.public("GET", "/fapi/v1/time", {})).json["serverTime"]
        await post(sim, http, "/sim/funding/interval", {"symbol": SYMBOL, "hours": 1, "next_ms": now + 500})

        async def settled() -> bool:
            return Decimal((await sim_state(sim, http, SYMBOL))["positions"][SYMBOL]["funding"]) != 0

        await wait_for(settled, 10, "the settlement charged while no agent runs")
        second = await _run_until_quoting_then_stop(sim, target, tmp_path / "state")
        assert second["income_reads"] >= 1 and second["income_spared"] == 0 and second["funding"] == 1, second
        state = await sim_state(sim, http, SYMBOL)
    assert journal_sums(target, SYMBOL)["funding"] == Decimal(state["positions"][SYMBOL]["funding"]) != 0
