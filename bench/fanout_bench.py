"""The simulator's user-stream fan-out: CPU to send one account's order frames to many connections.

Run: .venv/bin/python bench/fanout_bench.py [--conns 40] [--reps 5]

Binance sends every order event of an account to every connection on its listenKey, so with ten
symbols an account and one agent each, a kill's cancels reach every agent ten times over. This
starts the simulator in its own process (its CPU read from /proc), opens ``--conns`` user-stream
connections on one listenKey, rests 33 orders on each of 10 symbols and cancels them all at once
(one DELETE allOpenOrders per symbol), then prints the simulator's CPU for the cancels and their
frames, per frame sent, and the time until every connection had them all. The first burst of a
process is printed apart: it pays for memory touched for the first time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import websockets  # noqa: E402

from fleet.binance.client import BinanceClient  # noqa: E402
from fleet.binance.models import OrderRequest  # noqa: E402

SYMBOLS = [f"F{i:03d}USDT" for i in range(10)]
ORDERS_PER_SYMBOL = 33
UNLIMITED = "rate_limits: {weight_per_minute: 1000000000, orders_per_10s: 1000000000, orders_per_minute: 1000000000}\n"


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def run(sim: dict, pid: int, conns: int, reps: int) -> list[tuple[float, float, int]]:
    account = sim["accounts"][0]
    client = BinanceClient(sim["rest_url"], account["api_key"], account["api_secret"])
    await client.open()
    async with aiohttp.ClientSession() as http:
        info = await (await http.get(sim["rest_url"] + "/fapi/v1/exchangeInfo")).json()
        key = (await (await http.post(sim["rest_url"] + "/fapi/v1/listenKey",
                                      headers={"X-MBX-APIKEY": account["api_key"]})).json())["listenKey"]
    filters = {s["symbol"]: {f["filterType"]: f for f in s["filters"]} for s in info["symbols"]}
    received = [0] * conns

    async def read(i: int, ws: Any) -> None:
        async for _ in ws:
            received[i] += 1

    sockets = [await websockets.connect(f"{sim['ws_url']}/private/ws/{key}", compression=None, max_size=2**22)
               for _ in range(conns)]
    readers = [asyncio.create_task(read(i, ws)) for i, ws in enumerate(sockets)]

    async def rest_orders(symbol: str) -> int:
        top = await client.book_ticker(symbol)
        tick = Decimal(filters[symbol]["PRICE_FILTER"]["tickSize"])
        step = Decimal(filters[symbol]["LOT_SIZE"]["stepSize"])
        orders = []
        for k in range(ORDERS_PER_SYMBOL):
            price = (top.bid * Decimal(1 - 0.002 * (k + 1)) / tick).to_integral_value() * tick
            qty = max(step, (Decimal(200) / price / step).to_integral_value() * step)
            orders.append(OrderRequest(symbol=symbol, side="BUY", order_type="LIMIT", quantity=format(qty, "f"),
                                       price=format(price, "f"), time_in_force="GTC"))
        return sum(1 for r in await client.place_orders(orders) if not isinstance(r, Exception))

    async def all_received(n: int) -> None:
        deadline = time.monotonic() + 30
        while min(received) < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"frames not received within 30 s: {received}")
            await asyncio.sleep(0.002)

    out = []
    try:
        for _ in range(reps):
            base = min(received)
            placed = sum(await asyncio.gather(*(rest_orders(s) for s in SYMBOLS)))
            await all_received(base + placed)
            await asyncio.sleep(0.3)
            base, c0, t0 = min(received), cpu_s(pid), time.monotonic()
            await asyncio.gather(*(client.cancel_all(s) for s in SYMBOLS))
            await all_received(base + placed)
            out.append((cpu_s(pid) - c0, time.monotonic() - t0, placed * conns))
    finally:
        for task in readers:
            task.cancel()
        for ws in sockets:
            await ws.close()
        await client.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--conns", type=int, default=40, help="user-stream connections on the listenKey")
    ap.add_argument("--reps", type=int, default=5, help="bursts (the first is printed apart)")
    args = ap.parse_args()
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as cfg:
        cfg.write(UNLIMITED)
        cfg.flush()
        proc = subprocess.Popen([sys.executable, "-m", "fleet.sim", "--json", "--config", cfg.name,
                                 "--symbols", ",".join(SYMBOLS)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                cwd=ROOT)
        try:
            sim = json.loads(proc.stdout.readline())
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # never blocks it
            bursts = asyncio.run(run(sim, proc.pid, args.conns, args.reps))
        finally:
            proc.terminate()
            proc.wait(10)
    first, rest = bursts[0], bursts[1:]
    print(f"user-stream fan-out: {len(SYMBOLS) * ORDERS_PER_SYMBOL} cancels x {args.conns} connections = "
          f"{first[2]} frames a burst")
    print(f"  first burst: simulator CPU {first[0] * 1000:.0f} ms ({first[0] * 1e6 / first[2]:.1f} us a frame sent), "
          f"all received {first[1] * 1000:.0f} ms")
    if rest:
        cpu = statistics.median(r[0] for r in rest)
        wall = statistics.median(r[1] for r in rest)
        print(f"  later bursts (median of {len(rest)}): simulator CPU {cpu * 1000:.0f} ms "
              f"({cpu * 1e6 / first[2]:.1f} us a frame sent), all received {wall * 1000:.0f} ms")
    print(f"command: .venv/bin/python bench/fanout_bench.py --conns {args.conns} --reps {args.reps}")


if __name__ == "__main__":
    main()
