"""Client benchmark: frame parse time (stdlib json vs orjson), sign+send per order, batch of 5 vs 5 singles.

Run: .venv/bin/python bench/client_bench.py            (starts its own simulator on loopback)
     .venv/bin/python bench/client_bench.py --parse-only
Figures are printed, never asserted; they depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fleet.binance.parse import parse_market, parse_user  # noqa: E402

BOOK = (
    '{"stream":"btcusdt@bookTicker","data":{"e":"bookTicker","u":400900217,"s":"BTCUSDT","b":"25.35190000",'
    '"B":"31.21000000","a":"25.36520000","A":"40.66000000","T":1568014460891,"E":1568014460893}}'
)
ORDER_UPDATE = (
    '{"e":"ORDER_TRADE_UPDATE","E":1776788790650,"T":1776788790649,"o":{"s":"ETHUSDC","c":"e3-b-000017",'
    '"S":"BUY","o":"LIMIT","f":"GTX","q":"0.020","p":"2313.00","ap":"2317.3","sp":"0","x":"TRADE","X":"FILLED",'
    '"i":58846010837,"l":"0.020","z":"0.020","L":"2317.30","n":"0.00926920","N":"USDC","T":1776788790649,'
    '"t":702423109,"b":"0","a":"0","m":true,"R":false,"wt":"CONTRACT_PRICE","ot":"LIMIT","ps":"BOTH","cp":false,'
    '"rp":"0","pP":false,"si":0,"ss":0,"V":"EXPIRE_MAKER","pm":"NONE","gtd":0,"er":"0"}}'
)


def p50_us(fn, frame: str, batches: int = 300, per_batch: int = 200) -> float:
    """Median over batches of the mean time per call (µs); batching hides the timer's own cost."""
    samples = []
    for _ in range(batches):
        start = time.perf_counter_ns()
        for _ in range(per_batch):
            fn(frame)
        samples.append((time.perf_counter_ns() - start) / per_batch / 1000)
    return statistics.median(samples)


def bench_parse() -> None:
    print("frame parse time per frame, p50 (µs):")
    print(f"  {'frame':<22} {'stdlib json':>12} {'orjson':>10} {'speed-up':>9}")
    for name, frame, parser in (
        ("bookTicker", BOOK, parse_market),
        ("ORDER_TRADE_UPDATE", ORDER_UPDATE, parse_user),
    ):
        std = p50_us(lambda f: parser(json.loads(f)), frame)
        orj = p50_us(lambda f: parser(orjson.loads(f)), frame)
        print(f"  {name:<22} {std:>12.2f} {orj:>10.2f} {std / orj:>8.2f}x")
    print("  (fleet.binance.parse.decode uses orjson)")


def start_sim() -> tuple[subprocess.Popen, dict]:
    """``python -m fleet sim --json`` on a free loopback port; its first stdout line describes it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleet", "sim", "--json", "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=str(Path(__file__).resolve().parents[1]),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise SystemExit("the simulator did not start (no --json line on stdout)")
    return proc, json.loads(line)


async def bench_rest(orders: int, rest_url: str, key: str, secret: str) -> None:
    from fleet.binance.client import BinanceClient
    from fleet.binance.enums import OrderType, Side, TimeInForce
    from fleet.binance.models import OrderRequest
    from fleet.binance.signing import encode_params, sign

    symbol = "ETHUSDC"
    ids = iter(range(10**9))
    params = {"symbol": symbol, "side": "BUY", "type": "LIMIT", "timeInForce": "GTX", "quantity": "0.010",
              "price": "2000.00", "newClientOrderId": "bench-1", "recvWindow": 5000, "timestamp": 1591702613943}
    sign_us = p50_us(lambda p: sign(secret, encode_params(p)), params)  # type: ignore[arg-type]
    print(f"encode+sign one order (no I/O), p50: {sign_us:.2f} µs")

    async with BinanceClient(rest_url, key, secret) as client:
        await client.sync_time()
        filters = await client.symbol_filters(symbol)
        top = await client.book_ticker(symbol)
        ticks = filters.price_ticks_floor(top.bid) - 500

        def order(i: int) -> OrderRequest:
            price = filters.price_str(ticks - (i % 150))
            return OrderRequest(symbol=symbol, side=Side.BUY, order_type=OrderType.LIMIT, quantity="0.010", price=price,
                                time_in_force=TimeInForce.GTX, client_order_id=f"bench-{next(ids)}")

        await client.cancel_all(symbol)
        for i in range(5):  # warm the connection pool
            await client.place_order(order(i))
        await client.cancel_all(symbol)
        rtts = []
        for i in range(orders):
            start = time.perf_counter()
            await client.place_order(order(i))
            rtts.append((time.perf_counter() - start) * 1e6)
            if i % 100 == 99:
                await client.cancel_all(symbol)
        await client.cancel_all(symbol)
        rtts.sort()
        print(f"sign+send+answer per order on loopback ({orders} sequential orders): "
              f"p50 {statistics.median(rtts):.0f} µs, p90 {rtts[int(len(rtts) * 0.9)]:.0f} µs")

        reps = 10
        batch_t, single_t = [], []
        for r in range(reps):
            start = time.perf_counter()
            await client.batch_place([order(r * 10 + j) for j in range(5)])
            batch_t.append(time.perf_counter() - start)
            start = time.perf_counter()
            for j in range(5):
                await client.place_order(order(r * 10 + 5 + j))
            single_t.append(time.perf_counter() - start)
            await client.cancel_all(symbol)
        b, s = statistics.median(batch_t) * 1e3, statistics.median(single_t) * 1e3
        print(f"place 5 orders: one batchOrders {b:.2f} ms vs 5 sequential singles {s:.2f} ms "
              f"(ratio singles/batch {s / b:.2f}x; median of {reps})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parse-only", action="store_true", help="skip the loopback REST figures")
    ap.add_argument("--orders", type=int, default=200, help="orders for the sign+send figure")
    args = ap.parse_args()
    print(f"# {' '.join([Path(sys.executable).name, *sys.argv])}  (python {sys.version.split()[0]})")
    bench_parse()
    if args.parse_only:
        return
    proc, info = start_sim()
    try:
        account = info["accounts"][0]
        key, secret = account["api_key"], account["api_secret"]
        asyncio.run(bench_rest(args.orders, info["rest_url"], key, secret))
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
