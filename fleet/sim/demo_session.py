"""A scripted quoting session on the simulator, without Ray: ``python -m fleet.sim.demo_session``.

It speaks only the wire protocol (signed REST, user stream, bookTicker), as the fleet does, and prints
what a market maker on the simulator sees: quotes placed and replaced, fills, fees, funding, P&L.
(``make demo`` runs the real fleet; this is the quick look at the exchange alone.)
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any

import aiohttp

from fleet.sim.server import SimServer
from fleet.sim.testkit import SimClient

SYMBOLS = {"ETHUSDC": (Decimal("0.01"), "0.020"), "BTCUSDT": (Decimal("0.10"), "0.002"),
           "SOLUSDT": (Decimal("0.01"), "0.50")}
HALF_SPREAD_BPS = Decimal("1.5")


def _quote_prices(bid: Decimal, ask: Decimal, tick: Decimal) -> tuple[str, str]:
    mid = (bid + ask) / 2
    off = mid * HALF_SPREAD_BPS / Decimal(10000)
    buy = ((mid - off) / tick).to_integral_value(ROUND_FLOOR) * tick
    sell = ((mid + off) / tick).to_integral_value(ROUND_CEILING) * tick
    return str(min(buy, bid)), str(max(sell, ask))


async def _funding_symbol(rest: SimClient, t: int, asset: str, amount: str) -> str:
    """A cross FUNDING_FEE frame names no symbol (as on Binance): find it in the income history."""
    income = (await rest.signed("GET", "/fapi/v1/income", {"incomeType": "FUNDING_FEE", "startTime": t,
                                                          "endTime": t})).json
    for rec in income:
        if rec["asset"] == asset and rec["income"] == amount:
            return rec["symbol"]
    return "?"


async def _session(seconds: float, seed: int) -> dict[str, Any]:
    config = {"funding_interval_s": 5.0, "market": {"volatility": 1.5}}
    async with SimServer(symbols=list(SYMBOLS), seed=seed, config=config) as sim, \
            SimClient.for_sim(sim) as rest, aiohttp.ClientSession() as http:
        print(f"simulator up: REST {sim.rest_url}  WS {sim.ws_url}  (seed {seed}, funding every 5 s)")
        key = (await rest.keyed("POST", "/fapi/v1/listenKey")).json["listenKey"]
        user = await http.ws_connect(f"{sim.ws_url}/private/ws/{key}")
        streams = "/".join(f"{s.lower()}@bookTicker" for s in SYMBOLS)
        market = await http.ws_connect(f"{sim.ws_url}/public/stream?streams={streams}")
        touch: dict[str, tuple[Decimal, Decimal]] = {}
        counts: Counter[str] = Counter()
        funding: dict[str, Decimal] = {}

        async def read_market() -> None:
            async for msg in market:
                f = json.loads(msg.data)["data"]
                touch[f["s"]] = (Decimal(f["b"]), Decimal(f["a"]))

        async def read_user() -> None:
            async for msg in user:
                f = json.loads(msg.data)
                if f["e"] == "ORDER_TRADE_UPDATE" and f["o"]["x"] == "TRADE":
                    o = f["o"]
                    counts["fills"] += 1
                    print(f"  fill  {o['s']:8} {o['S']:4} {o['l']} @ {o['L']} ({'maker' if o['m'] else 'taker'}, "
                          f"fee {o['n']} {o['N']})")
                elif f["e"] == "ACCOUNT_UPDATE" and f["a"]["m"] == "FUNDING_FEE":
                    b = f["a"]["B"][0]
                    counts["funding_settlements"] += 1
                    symbol = f["a"].get("S") or await _funding_symbol(rest, f["E"], b["a"], b["bc"])
                    funding[symbol] = funding.get(symbol, Decimal(0)) + Decimal(b["bc"])
                    print(f"  funding {symbol:8} {b['bc']} {b['a']}")

        tasks = [asyncio.create_task(read_market()), asyncio.create_task(read_user())]
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for symbol, (tick, qty) in SYMBOLS.items():
                if symbol not in touch:
                    continue
                await rest.signed("DELETE", "/fapi/v1/allOpenOrders", {"symbol": symbol})
                buy, sell = _quote_prices(*touch[symbol], tick)
                batch = [{"symbol": symbol, "side": side, "type": "LIMIT", "timeInForce": "GTX", "price": px,
                          "quantity": qty} for side, px in (("BUY", buy), ("SELL", sell))]
                r = await rest.signed("POST", "/fapi/v1/batchOrders", {"batchOrders": json.dumps(batch)})
                for item in r.json:
                    counts["quotes_placed" if "orderId" in item else "quotes_rejected"] += 1
            await rest.signed("POST", "/fapi/v1/countdownCancelAll", {"symbol": "ETHUSDC", "countdownTime": 5000})
            await asyncio.sleep(1.0)
        for symbol in SYMBOLS:
            await rest.signed("DELETE", "/fapi/v1/allOpenOrders", {"symbol": symbol})
        for t in tasks:
            t.cancel()
        positions = (await rest.signed("GET", "/fapi/v2/positionRisk")).json
        balances = (await rest.signed("GET", "/fapi/v2/balance")).json
        states = {s: await rest.state(symbol=s) for s in SYMBOLS}
        await user.close()
        await market.close()
        return {"counts": counts, "funding": funding, "positions": positions, "balances": balances,
                "states": states}


def run_session(seconds: float = 20.0, seed: int = 7) -> int:
    print(f"mmfleet demo: a scripted {seconds:g} s quoting session on fleet.sim (the fleet replaces it later)")
    result = asyncio.run(_session(seconds, seed))
    c = result["counts"]
    print("\nsession summary")
    print(f"  quotes placed {c['quotes_placed']}, rejected (post-only would cross) {c['quotes_rejected']}, "
          f"fills {c['fills']}, funding settlements {c['funding_settlements']}")
    for p in result["positions"]:
        st = result["states"][p["symbol"]]["positions"][p["symbol"]]
        print(f"  {p['symbol']:8} position {p['positionAmt']:>8} entry {p['entryPrice']:>14} "
              f"uPnL {p['unRealizedProfit']:>12} realized {st['realized_pnl']:>12} fees {st['commission']:>11} "
              f"funding {st['funding']:>11}")
    for b in result["balances"]:
        print(f"  wallet {b['asset']}: {b['balance']} (started at 100000)")
    return 0


if __name__ == "__main__":  # python -m fleet.sim.demo_session: the protocol-level demo without Ray
    raise SystemExit(run_session())
