"""Simulator benchmark: engine events/s in-process, new-order REST round trip, user-stream event latency.

Run: .venv/bin/python bench/sim_bench.py [--seconds 5] [--orders 400]

Engine events, counted per CPU second in-process: what goes in (order commands: new and cancel; one
market step of one symbol: the mid moves, synthetic takers trade, resting orders may fill) plus what
comes out (each frame queued for a client: ORDER_TRADE_UPDATE, TRADE_LITE, ACCOUNT_UPDATE, bookTicker,
depth, markPrice, aggTrade). Each part is printed on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402

from fleet.sim.config import SimConfig  # noqa: E402
from fleet.sim.engine import Engine, SimApiError  # noqa: E402
from fleet.sim.server import SimServer  # noqa: E402
from fleet.sim.testkit import SimClient  # noqa: E402

SYMBOLS = ["ETHUSDC", "BTCUSDT", "SOLUSDT"]
# latency runs measure speed, not the order-rate limits (those are tested in tests/fleet/sim/test_sim_faults.py)
UNLIMITED = {"rate_limits": {"weight_per_minute": 10**9, "orders_per_10s": 10**9, "orders_per_minute": 10**9}}


FLEET_STREAMS = ("@bookTicker", "@markPrice@1s", "@aggTrade")  # what the fleet's agents subscribe to


def engine_events_per_second(seconds: float, streams: tuple[str, ...] = FLEET_STREAMS) -> dict[str, float]:
    """Drive the engine in accelerated time with a quoting workload. Rates are per CPU second (the
    machine is shared): frames out, order commands in (new + cancel), symbol market steps."""
    e = Engine(SimConfig(), seed=7, now_ms=1_800_000_000_000, symbols=SYMBOLS)
    e.watch(*(b.lower + s for b in e.books.values() for s in streams))
    now = e.now_ms
    live: dict[str, list[int]] = {s: [] for s in SYMBOLS}
    n = 0
    commands = 0
    wall0 = time.perf_counter()
    cpu0 = time.process_time()
    deadline = wall0 + seconds
    tick = 0
    while time.perf_counter() < deadline:
        for _ in range(50):
            now += 10
            tick += 1
            e.advance(now)
            if tick % 10:
                e.drain()
                continue
            for sym in SYMBOLS:  # every 100 ms per symbol: replace a quote (10 orders/s, the fleet's pace)
                b = e.books[sym]
                ids = live[sym]
                # a market maker's cycle: replace the oldest quote on each side (cancel + new)
                if len(ids) >= 8:
                    oid = ids.pop(0)
                    commands += 1
                    try:
                        e.cancel("main", {"symbol": sym, "orderId": str(oid)}, now)
                    except SimApiError:
                        pass
                side = "BUY" if n % 2 == 0 else "SELL"
                off = int(b.mid / b.tick_f * (2 + n % 9) / 10_000) + 1  # quotes 2 to 10 bps from the touch
                price = b.best_bid() - off if side == "BUY" else b.best_ask() + off
                qty = max(1, int(60.0 / (price * b.tick_f) / b.step_f) + 1)
                commands += 1
                try:
                    o = e.place_order("main", {"symbol": sym, "side": side, "type": "LIMIT", "timeInForce": "GTX",
                                               "price": b.price_str(price), "quantity": b.qty_str(qty)}, now)
                    ids.append(o.order_id)
                except SimApiError:
                    pass
                n += 1
            e.drain()
    cpu = time.process_time() - cpu0
    sim_s = (now - 1_800_000_000_000) / 1000.0
    steps = sim_s * 1000 / e.step_ms * len(SYMBOLS)
    return {"frames": e.events_emitted / cpu, "commands": commands / cpu, "steps": steps / cpu,
            "total": (e.events_emitted + commands + steps) / cpu, "cpu": cpu, "speedup": sim_s / cpu}


def market_model_half_hour() -> str:
    """30 simulated minutes of ETHUSDC's mid at 50 ms steps: speed and the character of the path."""
    import math
    import random

    from fleet.sim.market import MarketModel, MarketParams

    model = MarketModel(MarketParams(start_price=3000.0), random.Random(7))
    steps = 30 * 60 * 20
    t0 = time.process_time()
    mids = [model.step(0.05) for _ in range(steps)]
    cpu = time.process_time() - t0
    regimes: dict[str, int] = {}
    model = MarketModel(MarketParams(start_price=3000.0), random.Random(7))
    for _ in range(steps):
        model.step(0.05)
        regimes[model.regime] = regimes.get(model.regime, 0) + 1
    rets = [math.log(b / a) for a, b in zip(mids[::20], mids[20::20])]  # 1 s returns
    vol = statistics.pstdev(rets) * math.sqrt(365 * 24 * 3600)
    share = ", ".join(f"{k} {v / steps:.0%}" for k, v in sorted(regimes.items()))
    return (f"market model: 30 simulated minutes (36,000 steps) in {cpu * 1000:.0f} ms CPU; ETHUSDC "
            f"{mids[0]:.2f} -> {mids[-1]:.2f}, range {min(mids):.2f}-{max(mids):.2f}, "
            f"realised vol {vol:.0%}/yr; regimes: {share}")


async def rest_and_stream_latency(orders: int) -> tuple[list[float], list[float]]:
    """New-order round trips over loopback, and order acceptance -> user-stream frame received."""
    async with SimServer(symbols=SYMBOLS, seed=7, config=UNLIMITED) as sim, SimClient.for_sim(sim) as c, \
            aiohttp.ClientSession() as s:
        key = (await c.keyed("POST", "/fapi/v1/listenKey")).json["listenKey"]
        ws = await s.ws_connect(f"{sim.ws_url}/private/ws/{key}")
        await c.admin("POST", "/sim/market/freeze", {})
        bid = float((await c.public("GET", "/fapi/v1/ticker/bookTicker", {"symbol": "ETHUSDC"})).json["bidPrice"])
        rtts: list[float] = []
        stream: list[float] = []
        received: dict[str, float] = {}
        accepted: dict[str, float] = {}
        engine_new_order = sim.engine.new_order

        def timed_new_order(account, params, now, test=False):  # the server runs in this process: same clock
            result = engine_new_order(account, params, now, test)
            accepted[params.get("newClientOrderId", "")] = time.perf_counter()
            return result

        sim.engine.new_order = timed_new_order  # type: ignore[method-assign]

        async def reader() -> None:
            async for msg in ws:
                f = json.loads(msg.data)
                if f.get("e") == "ORDER_TRADE_UPDATE" and f["o"]["x"] == "NEW":
                    received[f["o"]["c"]] = time.perf_counter()

        task = asyncio.create_task(reader())
        for i in range(orders):
            cid = f"bench-{i}"
            price = f"{bid * 0.98 - (i % 50) * 0.01:.2f}"
            t0 = time.perf_counter()
            r = await c.signed("POST", "/fapi/v1/order", {"symbol": "ETHUSDC", "side": "BUY", "type": "LIMIT",
                                                          "timeInForce": "GTX", "price": price, "quantity": "0.010",
                                                          "newClientOrderId": cid})
            t1 = time.perf_counter()
            assert r.status == 200, r.json
            rtts.append((t1 - t0) * 1000)
            deadline = time.perf_counter() + 5
            while cid not in received and time.perf_counter() < deadline:
                await asyncio.sleep(0)
            if cid in received and cid in accepted:
                stream.append((received[cid] - accepted[cid]) * 1000)
            if i % 100 == 99:
                await c.signed("DELETE", "/fapi/v1/allOpenOrders", {"symbol": "ETHUSDC"})
        task.cancel()
        await ws.close()
        return rtts, stream


async def countdown_lateness(rounds: int) -> list[float]:
    """countdownCancelAll: ms from the armed deadline to the CANCELED frame reaching the client."""
    async with SimServer(symbols=SYMBOLS, seed=7, config=UNLIMITED) as sim, SimClient.for_sim(sim) as c, \
            aiohttp.ClientSession() as s:
        key = (await c.keyed("POST", "/fapi/v1/listenKey")).json["listenKey"]
        ws = await s.ws_connect(f"{sim.ws_url}/private/ws/{key}")
        bid = float((await c.public("GET", "/fapi/v1/ticker/bookTicker", {"symbol": "ETHUSDC"})).json["bidPrice"])
        late: list[float] = []
        for i in range(rounds):
            await c.signed("POST", "/fapi/v1/order", {"symbol": "ETHUSDC", "side": "BUY", "type": "LIMIT",
                                                      "timeInForce": "GTC", "price": f"{bid * 0.98:.2f}",
                                                      "quantity": "0.010", "newClientOrderId": f"cd-{i}"})
            await c.signed("POST", "/fapi/v1/countdownCancelAll", {"symbol": "ETHUSDC", "countdownTime": 100})
            deadline = (await c.state(symbol="ETHUSDC"))["positions"]["ETHUSDC"]["countdown_deadline_ms"]
            while True:
                f = json.loads((await ws.receive(timeout=10)).data)
                if f.get("e") == "ORDER_TRADE_UPDATE" and f["o"]["x"] == "CANCELED" and f["o"]["c"] == f"cd-{i}":
                    late.append(time.time() * 1000 - deadline)
                    break
        await ws.close()
        return late


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0, help="wall seconds of the in-process engine run")
    ap.add_argument("--orders", type=int, default=400, help="orders for the REST / stream latency run")
    args = ap.parse_args()
    for label, streams in (("fleet streams (bookTicker, markPrice@1s, aggTrade)", FLEET_STREAMS),
                           ("plus depth5@100ms", FLEET_STREAMS + ("@depth5@100ms",))):
        r = engine_events_per_second(args.seconds, streams)
        print(f"engine, {label}: {r['total']:,.0f} engine events/s in-process = {r['frames']:,.0f} frames out "
              f"+ {r['commands']:,.0f} order commands in + {r['steps']:,.0f} symbol market steps; "
              f"{r['speedup']:,.0f}x real time (3 symbols, 10 quote replacements/s each, {r['cpu']:.1f} CPU s)")
    print(market_model_half_hour())
    rtts, stream = asyncio.run(rest_and_stream_latency(args.orders))
    print(f"new order REST round trip (loopback, {len(rtts)} orders): p50 {statistics.median(rtts):.2f} ms, "
          f"p99 {pct(rtts, 0.99):.2f} ms")
    if stream:
        print(f"user-stream NEW frame, engine acceptance -> client received: p50 {statistics.median(stream):.2f} ms, "
              f"p99 {pct(stream, 0.99):.2f} ms")
    late = asyncio.run(countdown_lateness(max(10, args.orders // 10)))
    print(f"countdownCancelAll: CANCELED frame received after the deadline ({len(late)} rounds): "
          f"p50 {statistics.median(late):.2f} ms, p99 {pct(late, 0.99):.2f} ms")
    print("reproduce: .venv/bin/python bench/sim_bench.py "
          f"--seconds {args.seconds:g} --orders {args.orders}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
