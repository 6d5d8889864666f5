"""The books carried from one agent of a symbol to the next (agents/carry.py): the record, the trades
of the gap added once whichever of frame and listing comes first, the funding booked after the
record's newest fee, and the drawdown's peak kept."""

from __future__ import annotations

import time
from decimal import Decimal as D
from types import SimpleNamespace

import pytest

from agents.carry import Carry, _add_trade, _gap_trades
from agents.store import Store
from fleet.binance.client import BinanceClient
from fleet.binance.events import BUY, SELL
from fleet.sim.testkit import SimClient
from tests.polling import wait_for

from .test_core_support import SYMBOL, account_update, eth_filters, mark, order_update, seed_params


def record(**kw) -> Carry:
    doc = dict(symbol=SYMBOL, account="main", since_ms=1_000, realized_pnl=12.5, commission=1.25, funding="-0.7",
               fills_buy=3, fills_sell=4, peak_pnl=20.0, max_drawdown_pct=2.5, trade_id=40, trade_orders=(7,),
               funding_ms=5_000, epoch=3)
    doc.update(kw)
    return Carry(**doc)


def trade_row(trade_id: int, order_id: int, realized: str, commission: str, side: str = "SELL",
              asset: str = "USDC") -> dict:
    return {"id": trade_id, "orderId": order_id, "realizedPnl": realized, "commission": commission,
            "commissionAsset": asset, "side": side, "symbol": SYMBOL}


def test_a_record_decodes_to_itself_and_a_bad_one_to_none():
    r = record()
    assert Carry.decode(r.encode()) == r
    assert Carry.decode(record(peak_pnl=None, trade_id=None, trade_orders=()).encode()).peak_pnl is None
    for bad in (b"", b"{}", b'{"symbol": 1}', record().encode().replace(b'"-0.7"', b'"x"'), b"[1]"):
        assert Carry.decode(bad) is None


def test_restored_books_add_to_the_new_agents_and_keep_the_peak():
    s = Store(SYMBOL, eth_filters(), seed_params())
    pos = s.position_book
    pos.restore(12.5, 1.25, 3, 4, 20.0, 2.5)
    s.funding.restore(D("-0.7"), 5_000)
    assert (s.realized_pnl, s.commission, s.fills_buy, s.fills_sell) == (12.5, 1.25, 3, 4)
    assert s.funding_pnl == pytest.approx(-0.7) and s.funding.total == D("-0.7")
    assert pos.peak_pnl == 20.0 and s.max_drawdown_pct == 2.5
    # the position confirmed flat at 3000: the symbol's own P&L is 12.5 - 0.7 - 1.25 = 10.55, under the peak of 20
    s.apply(account_update(0, 0.0, 10))
    s.apply(mark(3000.0, 11))
    capital = seed_params().risk.capital
    assert s.drawdown_pct() == pytest.approx((20.0 - 10.55) / (capital + 20.0) * 100)


def test_a_gap_trade_listed_before_its_frame_counts_once_and_its_frame_still_moves_the_position():
    s = Store(SYMBOL, eth_filters(), seed_params())
    s.apply(account_update(0, 0.0, 10))
    carried = record()
    assert _add_trade(s.position_book, carried, trade_row(41, 8, "2.0", "0.1", side="BUY"), "USDC") == 1
    assert _add_trade(s.position_book, carried, trade_row(41, 8, "2.0", "0.1", side="BUY"), "USDC") == 0
    assert (s.realized_pnl, s.commission, s.fills_buy) == (2.0, 0.1, 1)
    # its frame, after the snapshot: the position moves, the P&L does not again
    s.apply(order_update("x", 8, BUY, 300_000, 5, status="FILLED", cum_steps=5, last_steps=5, t=20, trade_id=41,
                         realized="2.0", commission="0.1"))
    assert s.position_steps == 5
    assert (s.realized_pnl, s.commission, s.fills_buy) == (2.0, pytest.approx(0.1), 1)   # the fill once too
    assert (s.position_book.last_trade_id, s.position_book.last_trade_orders) == (41, [8])


def test_a_gap_trade_whose_frame_came_first_is_not_added_again_nor_one_inside_the_record():
    s = Store(SYMBOL, eth_filters(), seed_params())
    s.apply(account_update(0, 0.0, 10))
    s.apply(order_update("x", 9, SELL, 300_000, 5, status="FILLED", cum_steps=5, last_steps=5, t=20, trade_id=42,
                         realized="-1.5", commission="0.2"))
    carried = record()
    pos = s.position_book
    assert _add_trade(pos, carried, trade_row(42, 9, "-1.5", "0.2"), "USDC") == 0   # booked from its frame
    assert _add_trade(pos, carried, trade_row(40, 7, "5", "1"), "USDC") == 0        # in the record
    assert _add_trade(pos, carried, trade_row(39, 6, "5", "1"), "USDC") == 0        # older than the record
    assert _add_trade(pos, carried, trade_row(40, 11, "0.5", "0.05", asset="BNB"), "USDC") == 1  # its other side
    assert s.realized_pnl == pytest.approx(-1.5 + 0.5)
    assert s.commission == pytest.approx(0.2)    # a fee in another asset is not the margin asset's
    assert (pos.last_trade_id, pos.last_trade_orders) == (42, [9])


def test_the_newest_trade_booked_is_marked_with_every_order_of_it():
    s = Store(SYMBOL, eth_filters(), seed_params())
    s.apply(account_update(0, 0.0, 10))
    for oid, side in ((1, BUY), (2, SELL)):   # a self-trade: both sides under one id
        s.apply(order_update(f"c{oid}", oid, side, 300_000, 5, status="FILLED", cum_steps=5, last_steps=5, t=20,
                             trade_id=77))
    assert (s.position_book.last_trade_id, s.position_book.last_trade_orders) == (77, [1, 2])


def test_funding_of_the_gap_is_booked_once_after_the_record():
    s = Store(SYMBOL, eth_filters(), seed_params())
    s.funding.restore(D("-0.7"), 5_000)
    rows = [{"symbol": SYMBOL, "incomeType": "FUNDING_FEE", "income": "-0.3", "asset": "USDC", "time": 20_000,
             "tranId": 3}]
    assert s.funding.on_income(rows, SYMBOL, "USDC") == 1
    assert s.funding.on_income(rows, SYMBOL, "USDC") == 0
    assert s.funding.total == D("-1.0") and s.funding.last_fee_ms == 20_000


def test_books_taken_in_name_the_records_newest_trade_though_this_agent_books_none():
    """A successor that trades nothing (halted, quiet) still publishes the trade its books end at: the
    next one reads the exchange from there, not from the run's start (which would count it all twice)."""
    s = Store(SYMBOL, eth_filters(), seed_params())
    s.position_book.restore(12.5, 1.25, 3, 4, 20.0, 2.5, 40, (7, 9))
    assert (s.position_book.last_trade_id, s.position_book.last_trade_orders) == (40, [7, 9])
    assert _add_trade(s.position_book, record(trade_orders=(7, 9)), trade_row(40, 9, "5", "1"), "USDC") == 0
    assert _add_trade(s.position_book, record(trade_orders=(7, 9)), trade_row(43, 12, "1", "0.1"), "USDC") == 1
    assert (s.position_book.last_trade_id, s.position_book.last_trade_orders) == (43, [12])


def test_income_rows_inside_the_carried_books_are_never_booked_again():
    """A cross-margin fee frame names no symbol: the agent reads the income a minute back, which holds
    fees the carried total already has, and the row of a fee booked from its frame a moment after the
    frame's time; a fee that is neither is booked, however soon after the carried one."""
    s = Store(SYMBOL, eth_filters(), seed_params())
    s.funding.restore(D("-0.7"), 5_000, ((5_000, "-0.3"),))
    rows = [{"symbol": SYMBOL, "incomeType": "FUNDING_FEE", "income": income, "asset": "USDC", "time": t,
             "tranId": tran} for income, t, tran in (("-0.4", 4_990, 1), ("-0.3", 5_004, 2), ("-0.2", 8_000, 3),
                                                      ("-0.1", 65_000, 4))]
    assert s.funding.on_income(rows, SYMBOL, "USDC") == 2
    assert s.funding.total == D("-1.0")


def test_a_row_paired_with_a_carried_frame_is_inside_the_next_record():
    """Three agents: the first books a fee's frame and dies; the second pairs the fee's row (a moment after
    the frame's time) with the carried frame; the third must not book that row again."""
    first = Store(SYMBOL, eth_filters(), seed_params())
    assert first.funding.on_fee(1_000, D("-0.5"))
    row = [{"symbol": SYMBOL, "incomeType": "FUNDING_FEE", "income": "-0.5", "asset": "USDC", "time": 1_003,
            "tranId": 9}]
    books = (first.funding.total, first.funding.last_fee_ms, tuple(first.funding.unpaired_frames()))
    for _ in range(2):
        nxt = Store(SYMBOL, eth_filters(), seed_params())
        nxt.funding.restore(*books)
        assert nxt.funding.on_income(row, SYMBOL, "USDC") == 0
        assert nxt.funding.total == D("-0.5")
        books = (nxt.funding.total, nxt.funding.last_fee_ms, tuple(nxt.funding.unpaired_frames()))


def test_a_carried_frame_is_paired_with_its_own_row_not_with_the_next_fee():
    """The carried frame's own row (its time inside the record) takes it: a second fee of the same amount
    a few seconds later (the simulator settles on demand) is booked."""
    s = Store(SYMBOL, eth_filters(), seed_params())
    s.funding.restore(D("-0.5"), 1_000, ((1_000, "-0.5"),))
    rows = [{"symbol": SYMBOL, "incomeType": "FUNDING_FEE", "income": "-0.5", "asset": "USDC", "time": t,
             "tranId": tran} for t, tran in ((1_000, 1), (4_000, 2))]
    assert s.funding.on_income(rows, SYMBOL, "USDC") == 1
    assert s.funding.total == D("-1.0")


def test_the_record_names_the_fees_booked_from_frames_whose_rows_were_not_seen():
    s = Store(SYMBOL, eth_filters(), seed_params())
    for t, amount in ((1_000, "-0.1"), (9_000, "-0.2"), (9_001, "-0.3")):
        assert s.funding.on_fee(t, D(amount))
    s.funding.on_income([{"symbol": SYMBOL, "incomeType": "FUNDING_FEE", "income": "-0.3", "asset": "USDC",
                          "time": 9_001, "tranId": 5}], SYMBOL, "USDC")
    assert s.funding.unpaired_frames() == [(9_000, "-0.2")]
    rec = record(fee_frames=tuple(s.funding.unpaired_frames()))
    assert Carry.decode(rec.encode()) == rec


async def _two_trades(sim) -> tuple[str, str, Store]:
    """A buy and a sell at the market on the simulator's account; its key, secret and a fresh store."""
    async with SimClient.for_sim(sim) as c:
        for side in ("BUY", "SELL"):
            r = await c.signed("POST", "/fapi/v1/order", {"symbol": SYMBOL, "side": side, "type": "MARKET",
                                                          "quantity": "0.010"})
            assert r.status == 200, r.json
    _, key, secret = sim.accounts[0]
    return key, secret, Store(SYMBOL, eth_filters(), seed_params())


async def test_a_gap_older_than_a_week_is_read_a_week_at_a_time_up_to_now(sim):
    """A record of an agent that never traded, ten days old: userTrades answers a startTime alone with
    the week after it (nothing there), so the gap is read a week at a time, up to the trades made now."""
    key, secret, store = await _two_trades(sim)
    async with BinanceClient(sim.rest_url, key, secret) as client:
        now_ms = int(time.time() * 1000)
        agent = SimpleNamespace(symbol=SYMBOL, require_client=lambda: client,
                                require_core=lambda: SimpleNamespace(store=store), exchange_ms=lambda: now_ms)
        carried = record(since_ms=now_ms - 10 * 86_400_000, trade_id=None, trade_orders=())
        assert await _gap_trades(agent, carried) == 2
    assert (store.fills_buy, store.fills_sell) == (1, 1)


async def test_a_stream_gap_just_after_a_restart_reads_no_trade_the_carried_books_hold(sim):
    """The last agent's trades are in the carried figures, not among the keys: a gap of this agent's
    stream 2 minutes after its start read them again from 5 minutes before it and booked them twice
    (realized -20 read as -40). The read starts no earlier than this agent's take-in."""
    from agents.carry import backfill_trades

    key, secret, store = await _two_trades(sim)   # the last agent's trades, in its record
    async with BinanceClient(sim.rest_url, key, secret) as client:
        now_ms = int(time.time() * 1000) + 1_000
        agent = SimpleNamespace(symbol=SYMBOL, require_client=lambda: client, trades_known_ms=now_ms,
                                require_core=lambda: SimpleNamespace(store=store), exchange_ms=lambda: now_ms)
        assert await backfill_trades(agent, now_ms - 300_000) == 0
    assert (store.fills_buy, store.fills_sell, store.realized_pnl) == (0, 0, 0.0)


async def test_a_liquidation_between_two_agents_has_its_clearance_fee_booked_once_by_the_next(sim_factory):
    """The last agent was killed; the dead-man switch emptied its book but its position stayed, and the
    exchange liquidated it before the next agent started (no agent saw the CALCULATED frame nor looked in
    forceOrders). The next one's take-in books the trade from userTrades and the clearance fee from
    income (it was lost: up to 1.25 % of the notional), once; the record carries the fee's time."""
    from agents.clearance import gap_clearance

    sim = await sim_factory(symbols=[SYMBOL])
    async with SimClient.for_sim(sim) as c:
        await c.signed("POST", "/fapi/v1/marginType", {"symbol": SYMBOL, "marginType": "ISOLATED"})
        await c.signed("POST", "/fapi/v1/leverage", {"symbol": SYMBOL, "leverage": "125"})
        await c.admin("POST", "/sim/market/freeze", {"frozen": True, "symbol": SYMBOL, "mode": "price"})
        await c.admin("POST", "/sim/position", {"account": "main", "symbol": SYMBOL, "amount": "0.1"})
        since_ms = (await c.state())["time"]
        # 125x isolated: margin 0.8 % of the notional, maintenance 0.4 %: a fall of 0.6 % liquidates with 0.2 %
        # of the notional left, the clearance fee
        await c.admin("POST", "/sim/market/jump", {"symbol": SYMBOL, "pct": -0.6})

        async def liquidated():
            return (await c.state())["counters"]["liquidations"] == 1

        await wait_for(liquidated, 10, "the position liquidated")
        fee = D((await c.state())["positions"][SYMBOL]["clearance_fee"])
    assert fee > 0
    _, key, secret = sim.accounts[0]
    store = Store(SYMBOL, eth_filters(), seed_params())
    journaled: list = []
    async with BinanceClient(sim.rest_url, key, secret) as client:
        agent = SimpleNamespace(symbol=SYMBOL, require_client=lambda: client,
                                require_core=lambda: SimpleNamespace(store=store),
                                journal=SimpleNamespace(on_income_rows=lambda a, rows: journaled.extend(rows)),
                                log=SimpleNamespace(event=lambda *a, **k: None))
        assert await gap_clearance(agent, since_ms) == 1
        assert abs(D(repr(store.commission)) - fee) < D("1e-9")
        assert await gap_clearance(agent, since_ms) == 0   # read again: booked once
        assert abs(D(repr(store.commission)) - fee) < D("1e-9")
    assert [r["incomeType"] for r in journaled] == ["INSURANCE_CLEAR"] * 2
    assert store.position_book.clearance_ms > since_ms
    carried = record(clearance_ms=store.position_book.clearance_ms)
    assert Carry.decode(carried.encode()).clearance_ms == store.position_book.clearance_ms


async def test_a_funding_read_that_found_every_fee_ends_without_pausing_for_the_next_try():
    """The income look-up tries at 0, 2, 10 and 30 s; one that succeeded at the third try paused 30 s more
    before it ended, and a fee asked for meanwhile (a look-up only starts when none runs) waited for it:
    booked 24 s after its settlement in a hostile run. A read that leaves nothing to look up ends now."""
    from agents.carry import book_funding_income
    from fleet.binance.errors import ServerError

    class Store:
        funding_pnl = 0.0

        def __init__(self) -> None:
            self.due = True

        def funding_lookup_start(self):
            return 1_000 if self.due else None

        def on_funding_income(self, rows, read_at_ms):
            self.due = False
            return len(rows)

    slept: list[float] = []
    answers = [ServerError(-1001, "down", 503), ServerError(-1001, "down", 503), [{"tranId": 1}]]

    async def income(*a, **k):
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    async def sleep(delay):
        slept.append(delay)

    core = SimpleNamespace(store=Store())
    agent = SimpleNamespace(symbol=SYMBOL, core=core, stopping=False, exchange_ms=lambda: 2_000,
                            tasks=SimpleNamespace(sleep=sleep), require_client=lambda: SimpleNamespace(income=income),
                            journal=SimpleNamespace(on_income_rows=lambda a, rows: None),
                            log=SimpleNamespace(event=lambda *a, **k: None))
    await book_funding_income(agent)
    assert slept == [0.0, 2.0, 10.0] and not core.store.due   # (it went on to sleep 30 s more)
