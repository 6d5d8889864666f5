"""The agent's P&L when the user stream misses a fill: the resync after a frame skipped (or a stream
lost) sets the position from the exchange, and the trades since the gap are read from the exchange's
list (``userTrades``) for the P&L, each once. Checked against the exchange's own realized P&L
(``/sim/state``): the drawdown guard reads this figure.

An audit's figures before: a desk's close of 0.6 ETH at a 4 % loss, its ORDER_TRADE_UPDATE truncated on
the way: the agent's realized P&L -8.82 against the exchange's -72.33, its drawdown 1.00 % against
7.42 % (the 6 % band did not act).
"""

from __future__ import annotations

from decimal import Decimal

from fleet.sim.testkit import SimClient
from tests.e2e.test_agent_live import FAST, SYMBOL, describe, exchange, make_agent  # noqa: F401 - fixtures
from tests.polling import wait_for


async def _desk_close(exchange, agent, fault: dict, lost_too: str | None = None) -> dict:
    """A desk's 0.6 ETH long at a 4 % loss closed by a market sell, the frames of the close hit by ``fault``
    (and every ``lost_too`` frame of it dropped)."""
    await exchange.post("/sim/market/freeze", {"frozen": True, "symbol": SYMBOL, "mode": "price"})
    await agent.halt("a desk's hand on the symbol")
    mid = Decimal(str((await exchange.state())["markets"][SYMBOL]["mid"]))
    await exchange.post("/sim/position", {"account": "main", "symbol": SYMBOL, "amount": "0.600",
                                          "entry_price": str((mid * Decimal("1.04")).quantize(Decimal("0.01")))})
    if lost_too is not None:
        await wait_for(lambda: agent.core.store.position_steps == 600, 10, "the desk's position seen")
        await exchange.post("/sim/fault/frame", {"stream": "user", "mode": "drop", "event": lost_too, "count": 1})
    await exchange.post("/sim/fault/frame", fault)
    async with SimClient.for_sim(exchange.sim) as c:
        reply = await c.signed("POST", "/fapi/v1/order", {"symbol": SYMBOL, "side": "SELL", "type": "MARKET",
                                                          "quantity": "0.600", "newClientOrderId": "desk-close-1"})
    assert reply.status == 200, reply.json
    return (await exchange.state())["positions"][SYMBOL]


async def _booked_as_the_exchange(agent, exchange) -> bool:
    truth = (await exchange.state())["positions"][SYMBOL]
    s = agent.core.store
    return (s.position_steps == 0 and abs(Decimal(str(s.realized_pnl)) - Decimal(truth["realized_pnl"])) < Decimal("1e-6")
            and abs(Decimal(str(s.commission)) - Decimal(truth["commission"])) < Decimal("1e-6"))


async def test_a_closing_fill_whose_frame_was_cut_is_in_the_p_and_l_from_the_exchange_s_trades(make_agent, exchange):
    agent = await make_agent()
    truth = await _desk_close(exchange, agent, {"stream": "user", "mode": "truncate", "event": "ORDER_TRADE_UPDATE",
                                                "count": 2})   # (the close's NEW and its TRADE)
    assert Decimal(truth["realized_pnl"]) < -20   # a 4 % loss on 0.6 ETH
    await wait_for(lambda: _booked_as_the_exchange(agent, exchange), 20, "the close's P&L booked once",
                   explain=lambda: describe(agent, exchange))


async def test_a_closing_fill_whose_frame_lacked_its_p_and_l_fields_gets_them_from_the_exchange_s_trades(
        make_agent, exchange):
    """A frame without ``rp`` and ``n`` read them as 0: the loss was gone from the drawdown for good."""
    agent = await make_agent()
    await _desk_close(exchange, agent, {"stream": "user", "mode": "omit", "event": "ORDER_TRADE_UPDATE",
                                        "fields": ["o.rp", "o.n"], "count": 2})
    await wait_for(lambda: _booked_as_the_exchange(agent, exchange), 20, "the close's P&L booked once",
                   explain=lambda: describe(agent, exchange))


async def test_a_closing_fill_whose_frames_were_lost_on_a_live_connection_is_in_the_p_and_l(make_agent, exchange):
    """A desk's buy, its frames seen; its close's ORDER_TRADE_UPDATE frames never came (mode drop: no
    error, no cut connection), its ACCOUNT_UPDATE did. The position moved without a trade the agent saw:
    the trades are read at the reconciliation's beat, and the P&L is the exchange's."""
    agent = await make_agent()
    await exchange.post("/sim/market/freeze", {"frozen": True, "symbol": SYMBOL, "mode": "price"})
    await agent.halt("a desk's hand on the symbol")
    pos = agent.core.store.position_book

    async def desk(side: str, cid: str) -> None:
        async with SimClient.for_sim(exchange.sim) as c:
            reply = await c.signed("POST", "/fapi/v1/order", {"symbol": SYMBOL, "side": side, "type": "MARKET",
                                                              "quantity": "0.050", "newClientOrderId": cid})
        assert reply.status == 200, reply.json

    await desk("BUY", "desk-open-1")
    await wait_for(lambda: pos.position_steps == 50 and pos.unexplained_ms is None, 10, "the desk's buy seen")
    repairs = agent.status()["counters"]["reconcile_repairs"]
    await exchange.post("/sim/fault/frame", {"stream": "user", "mode": "drop", "event": "ORDER_TRADE_UPDATE",
                                             "count": 2})   # (the close's NEW and its TRADE)
    await desk("SELL", "desk-close-1")
    await wait_for(lambda: _booked_as_the_exchange(agent, exchange), 20, "the close's P&L booked once",
                   explain=lambda: describe(agent, exchange))
    assert agent.status()["last_reconcile_repair"]["kind"] == "trades_unseen"
    assert agent.status()["counters"]["reconcile_repairs"] == repairs + 1


async def _p_and_l_as_the_exchange(agent, exchange) -> bool:
    truth = (await exchange.state())["positions"][SYMBOL]
    s = agent.core.store
    return (Decimal(truth["commission"]) > 0
            and abs(Decimal(str(s.realized_pnl)) - Decimal(truth["realized_pnl"])) < Decimal("1e-6")
            and abs(Decimal(str(s.commission)) - Decimal(truth["commission"])) < Decimal("1e-6"))


async def test_a_fill_whose_trade_and_position_frames_were_lost_is_in_the_p_and_l_by_the_position_check(
        make_agent, exchange):
    """A desk's close whose ORDER_TRADE_UPDATE and ACCOUNT_UPDATE frames never came (a live connection, no
    error): nothing but the position check sees it, and its resync sets the position; the P&L and fees
    of the close are read from the exchange's trades (since the position last agreed)."""
    agent = await make_agent(runtime=FAST.model_copy(update={"reconcile_interval_sec": 0.5,
                                                             "reconcile_position_every": 2}))
    await _desk_close(exchange, agent, {"stream": "user", "mode": "drop", "event": "ORDER_TRADE_UPDATE",
                                        "count": 2}, lost_too="ACCOUNT_UPDATE")
    await wait_for(lambda: _booked_as_the_exchange(agent, exchange), 20, "the close's P&L booked once",
                   explain=lambda: describe(agent, exchange))


async def test_a_ladder_fill_whose_frames_were_lost_is_in_the_p_and_l_once_a_look_up_finds_it(make_agent, exchange):
    """The ladder's bids filled by a jump, their trade and position frames lost on a live connection: the
    reconciliation misses the orders from the exchange's list and looks them up (FILLED). Those fills no
    frame told of owe their P&L: the trades from then are read, without waiting on the position check
    (made rare here). (A hostile run: 5 fills so lost, the agent's realized P&L short by 5.5 USDC and
    its fees by 0.07 for the rest of the run, the position check's resync having taken the fills as
    known.)"""
    agent = await make_agent(runtime=FAST.model_copy(update={"reconcile_interval_sec": 0.5,
                                                             "reconcile_position_every": 10_000}))
    await wait_for(lambda: sum(o.side == "BUY" and o.is_open for o in agent.core.store.orders.values()) >= 2, 15,
                   "bids resting")
    await exchange.post("/sim/fault/frame", {"stream": "user", "mode": "drop", "event": "ORDER_TRADE_UPDATE",
                                             "count": 40})
    await exchange.post("/sim/fault/frame", {"stream": "user", "mode": "drop", "event": "ACCOUNT_UPDATE",
                                             "count": 40})
    await exchange.post("/sim/market/jump", {"symbol": SYMBOL, "pct": -1.5})
    await exchange.post("/sim/market/freeze", {"frozen": True, "symbol": SYMBOL, "mode": "price"})
    await wait_for(lambda: _p_and_l_as_the_exchange(agent, exchange), 30, "the ladder's fills booked",
                   explain=lambda: describe(agent, exchange))
    assert agent.status()["counters"]["reconcile_repairs"] > 0
    beats = agent.counters["reconciliations"]
    await wait_for(lambda: agent.counters["reconciliations"] >= beats + 4, 10, "four reconciliation beats more")
    assert await _p_and_l_as_the_exchange(agent, exchange), "booked once, not again by a later read"


async def test_a_funding_fee_whose_frame_was_lost_is_in_the_p_and_l_from_the_exchange_s_income(make_agent, exchange,
                                                                                              monkeypatch):
    """A settlement while the agent holds a position, its FUNDING_FEE frame lost (a user stream cut across
    the settlement loses it the same way): the agent's funding stayed 0 against the exchange's for good.
    The mark frames moving on to the next settlement with no fee of its time booked now look up the
    income rows, booked once by tranId: the funding P&L is the exchange's."""
    from agents import funding

    monkeypatch.setattr(funding, "FEE_FRAME_GRACE_MS", 2_000)   # (20 s live: the frame's own delay, with room)
    agent = await make_agent()
    await exchange.post("/sim/position", {"account": "main", "symbol": SYMBOL, "amount": "0.050"})
    await wait_for(lambda: agent.core.store.position_steps == 50, 10, "the position seen")
    await exchange.post("/sim/fault/frame", {"stream": "user", "event": "ACCOUNT_UPDATE", "account": "main",
                                             "reason": "FUNDING_FEE", "mode": "drop"})
    now = (await exchange.state())["time"]
    await exchange.post("/sim/funding/interval", {"symbol": SYMBOL, "hours": 1, "next_ms": now + 1500})

    async def funding_as_the_exchange() -> bool:
        truth = Decimal((await exchange.state())["positions"][SYMBOL]["funding"])
        return truth != 0 and abs(Decimal(str(agent.core.store.funding_pnl)) - truth) < Decimal("1e-8")

    await wait_for(funding_as_the_exchange, 30, "the lost fee booked from the income rows",
                   explain=lambda: describe(agent, exchange))
    assert not exchange.sim.frame_faults   # (the fee frame was the one dropped)


async def test_the_gap_after_carried_books_whose_read_failed_at_the_start_is_read_again(make_agent, exchange,
                                                                                       monkeypatch):
    """A restarted agent takes in the books its predecessor left and reads what the exchange booked after
    them (trades, funding); that read failed (the exchange answering errors at the start), the start went on
    without the gap and never read it again: the agent's realized P&L, commission and funding (``/exposure``,
    ``/metrics``) off the exchange's for good. Now the gap is read again at the reconciliation's beats, each
    part once, and the books end as the exchange's."""
    from agents import carry

    monkeypatch.setattr(carry, "GAP_RETRY_S", (0.5, 2.0))   # (10 s doubling to 5 minutes live)
    since = (await exchange.state())["time"]
    record = carry.Carry(symbol=SYMBOL, account="", since_ms=since, realized_pnl=0.0, commission=0.0, funding="0",
                         fills_buy=0, fills_sell=0, peak_pnl=None, max_drawdown_pct=0.0, trade_id=None,
                         trade_orders=(), funding_ms=since, epoch=1, exchange=exchange.sim.rest_url.rstrip("/"))
    async with SimClient.for_sim(exchange.sim) as c:   # between the two agents: a desk's trades and a settlement
        for side, qty in (("BUY", "0.100"), ("SELL", "0.040")):
            reply = await c.signed("POST", "/fapi/v1/order", {"symbol": SYMBOL, "side": side, "type": "MARKET",
                                                              "quantity": qty})
            assert reply.status == 200, reply.json
    await exchange.post("/sim/funding/rate", {"symbol": SYMBOL, "rate": "0.0005"})
    await exchange.post("/sim/funding/settle", {"symbol": SYMBOL})
    truth = (await exchange.state())["positions"][SYMBOL]
    assert Decimal(truth["realized_pnl"]) != 0 and Decimal(truth["funding"]) != 0
    await exchange.post("/sim/fault/rest", {"mode": "error", "count": 2, "path": "/fapi/v1/userTrades",
                                            "method": "GET"})
    agent = await make_agent(carried=record)
    assert agent.status()["books_gap_unread"] == ["trades", "funding", "clearance"]
    published = carry.carry_of(agent)   # meanwhile the record taken in: the next agent reads the gap from it
    assert (published.since_ms, published.trade_id, published.funding_ms, published.realized_pnl) == (
        record.since_ms, record.trade_id, record.funding_ms, record.realized_pnl)

    async def booked_as_the_exchange() -> bool:
        truth = (await exchange.state())["positions"][SYMBOL]
        s = agent.core.store
        return (abs(Decimal(repr(s.realized_pnl)) - Decimal(truth["realized_pnl"])) < Decimal("1e-8")
                and abs(Decimal(repr(s.commission)) - Decimal(truth["commission"])) < Decimal("1e-8")
                and s.funding.total == Decimal(truth["funding"]))

    await wait_for(booked_as_the_exchange, 30, "the gap read again, booked once",
                   explain=lambda: describe(agent, exchange))
    assert agent.status()["books_gap_unread"] == [] and agent.carry_gap is None
    assert carry.carry_of(agent).trade_id is not None   # its own books now, whole
