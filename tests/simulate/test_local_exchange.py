"""The in-process exchange and the agent's in-process transport: the client and streams the agent
uses, unchanged above their one replaced seam, against fleet.sim's engine and gateway on a simulated
clock. Ambiguous answers stay ambiguous; latency is modelled; connections are cut as Binance cuts them."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import orjson
import pytest

from fleet.binance.enums import OrderType, Side, TimeInForce
from fleet.binance.errors import OutcomeUnknownError
from fleet.binance.models import OrderRequest
from fleet.binance.ratelimit import THROTTLE_PAUSE_S, RateBudget
from fleet.binance.signing import sign
from fleet.binance.streams import StreamClosedError
from fleet.sim.faults import parse_fault
from fleet.sim.local import LocalExchange
from simulate.clock import SimClock, run_simulated
from simulate.transport import LocalTransport

START = 1_767_225_600_000


def run(main):
    return run_simulated(main())


async def _setup(**kwargs):
    clock = SimClock(asyncio.get_running_loop(), START)
    ex = LocalExchange(clock_ms=clock.time_ms, symbols=["ETHUSDC"], seed=3, **kwargs)
    task = asyncio.create_task(ex.run())
    _, key, secret = ex.accounts[0]
    transport = LocalTransport(ex, key, secret, clock=clock, rest_latency_ms=10.0)
    client = transport.client(RateBudget(clock=clock.monotonic))
    await client.open()
    return clock, ex, task, transport, client


def _buy(mid: Decimal, cid: str) -> OrderRequest:
    return OrderRequest(symbol="ETHUSDC", side=Side.BUY, order_type=OrderType.LIMIT, quantity="0.010",
                        price=str((mid * Decimal("0.99")).quantize(Decimal("0.01"))), time_in_force=TimeInForce.GTX,
                        client_order_id=cid)


def test_an_order_round_trip_takes_the_modelled_latency_and_its_frame_arrives():
    async def main():
        clock, ex, task, transport, client = await _setup(stream_latency_ms=5.0)
        key = await client.create_listen_key()
        user = transport.user_stream(key)
        await user.connect()
        mid = Decimal(str(ex.engine.books["ETHUSDC"].mid))
        t0 = clock.monotonic()
        info = await client.place_order(_buy(mid, "t-1"))
        rtt = clock.monotonic() - t0
        event = await asyncio.wait_for(user.__anext__(), 1.0)
        arrived = clock.monotonic() - t0
        truth = ex.engine.open_orders("main", "ETHUSDC")
        return info, rtt, event, arrived, truth

    info, rtt, event, arrived, truth = run(main)
    assert info.client_order_id == "t-1" and [o["clientOrderId"] for o in truth] == ["t-1"]
    assert rtt == pytest.approx(0.010)  # 5 ms there, 5 ms back
    assert getattr(event, "client_order_id", None) == "t-1"
    assert arrived == pytest.approx(0.005 + 0.005)  # executed 5 ms after the send, framed 5 ms later


def test_a_held_answer_is_an_unknown_outcome_and_the_order_exists():
    async def main():
        clock, ex, task, _, client = await _setup()
        ex.faults.append(parse_fault({"mode": "unknown", "count": 1, "path": "/fapi/v1/order"}))
        ex.faults.append(parse_fault({"mode": "error", "answer": "timeout", "hold_ms": 700, "count": 1,
                                      "path": "/fapi/v1/order"}))
        mid = Decimal(str(ex.engine.books["ETHUSDC"].mid))
        outcomes = []
        for cid in ("t-unknown", "t-timeout"):
            if outcomes:   # the first one's 503 held the quoting lane (``BinanceClient._order_route_failing``)
                await clock.sleep(THROTTLE_PAUSE_S)
            t0 = clock.monotonic()
            try:
                await client.place_order(_buy(mid, cid))
                outcomes.append(("answered", 0.0))
            except OutcomeUnknownError:
                outcomes.append(("unknown", clock.monotonic() - t0))
        truth = sorted(o["clientOrderId"] for o in ex.engine.open_orders("main", "ETHUSDC"))
        return outcomes, truth

    outcomes, truth = run(main)
    assert outcomes[0][0] == "unknown" and outcomes[1][0] == "unknown"
    assert outcomes[1][1] == pytest.approx(0.005 + 0.7)  # held, then the connection closed
    assert truth == ["t-unknown"]  # the first executed; the timeout's error mode never reached the engine


def test_streams_are_cut_at_the_exchange_lifetime_and_by_a_drop():
    async def main():
        clock, ex, task, transport, client = await _setup(config={"ws_max_lifetime_s": 600})
        events = []
        market = transport.market_stream("ETHUSDC", ("bookTicker",), lambda e, t: events.append(e))
        await market.connect()
        t0 = clock.monotonic()
        with pytest.raises(StreamClosedError):
            async for _ in market:
                pass
        cut_after = clock.monotonic() - t0
        again = transport.market_stream("ETHUSDC", ("bookTicker",), lambda e, t: None)
        await again.connect()
        await asyncio.sleep(1.0)
        dropped = ex.drop("market")
        with pytest.raises(StreamClosedError):
            async for _ in again:
                pass
        return len(events), cut_after, dropped, market.frames

    n, cut_after, dropped, frames = run(main)
    assert cut_after == pytest.approx(600.0, abs=0.01) and dropped == 1
    assert n == frames > 1000  # every frame parsed into an event (bookTicker every 50 ms step that moved)


def test_a_listen_key_the_exchange_does_not_know_is_refused():
    async def main():
        _, _, task, transport, _ = await _setup()
        stream = transport.user_stream("no-such-key")
        with pytest.raises(StreamClosedError, match="listenKey does not exist"):
            await stream.connect()
    
    run(main)


def test_the_market_moves_to_a_request_s_time_before_the_request_runs():
    """No frame the exchange sends after an answer carries an earlier time than the answer: a fill of
    a just-placed order (from a market step or a replayed trade due before the request arrived) is
    stamped no earlier than the order itself. Requests arrive here with market steps still due."""
    now = [START]
    ex = LocalExchange(clock_ms=lambda: now[0], symbols=["ETHUSDC"], seed=5,
                       config={"market": {"volatility": 3.0, "jump_rate_per_hour": 400.0}})
    frames: list[dict] = []
    ex.on_user_frame = lambda account, frame: frames.append(frame)
    _, key, secret = ex.accounts[0]
    book = ex.engine.books["ETHUSDC"]
    answered: dict[str, int] = {}
    for i in range(60):
        now[0] += 310  # six market steps due and not yet run
        side = "BUY" if i % 2 else "SELL"
        price = book.best_bid() if side == "BUY" else book.best_ask()
        query = (f"symbol=ETHUSDC&side={side}&type=LIMIT&timeInForce=GTX&quantity=0.010"
                 f"&price={book.price_str(price)}&newClientOrderId=t-{i}&timestamp={now[0]}")
        answer = ex.request("POST", "/fapi/v1/order", f"{query}&signature={sign(secret, query)}", b"", key)
        body = orjson.loads(answer.body)
        if answer.status == 400 and body["code"] == -5022:
            continue  # the market moved through the price while the request travelled: post-only refused
        assert answer.status == 200, body
        answered[f"t-{i}"] = body["updateTime"]
    now[0] += 5_000
    ex.engine.advance(now[0])
    ex._flush()
    updates = [f["o"] for f in frames if f.get("e") == "ORDER_TRADE_UPDATE"]
    fills = [o for o in updates if o["x"] == "TRADE"]
    assert fills, "the market never reached an order: the check says nothing"
    assert all(o["T"] >= answered[o["c"]] for o in updates), [
        (o["c"], o["x"], o["T"], answered[o["c"]]) for o in updates if o["T"] < answered[o["c"]]]
    times = [f["E"] for f in frames]
    assert times == sorted(times)
