"""Drawdown reduction against the simulator: a band crossed takes its fraction of the position off at the
exchange in reduce-only MARKET slices, also when the exchange answers a slice 429 (the budget then
holds every lane, the risk lane too, for the Retry-After: the slice goes back in the plan)."""

from __future__ import annotations

from decimal import Decimal

from .test_agent_live import SYMBOL, describe, exchange, make_agent, wait_for  # noqa: F401 - fixtures


async def test_a_drawdown_band_takes_its_fraction_off_at_the_exchange_through_a_429(make_agent, exchange):
    await exchange.post("/sim/position", {"account": "main", "symbol": SYMBOL, "amount": "1.000"})
    agent = await make_agent()
    await agent.halt("drawdown drill")   # no ladder: every order sent from now on is the drawdown's
    since = max((o["time"] for o in await exchange.all_orders()), default=0)
    await exchange.post("/sim/fault/rest", {"mode": "429", "path": "/fapi/v1/order", "method": "POST", "count": 1})
    await exchange.post("/sim/market/jump", {"symbol": SYMBOL, "pct": -2.5})   # 1 ETH: -75 of 1,000, band 6 %

    async def reduced() -> bool:
        return Decimal((await exchange.state())["positions"][SYMBOL]["amount"]) <= Decimal("0.750")

    await wait_for(reduced, 30, "a quarter of the long sold", explain=lambda: describe(agent, exchange))
    assert agent.core.twap_requeued >= 1   # the slice answered 429 went back in the plan
    sent = [o for o in await exchange.all_orders() if o["time"] > since]
    assert sent and all(o["type"] == "MARKET" and o["side"] == "SELL" and o["reduceOnly"] in (True, "true")
                        for o in sent), sent
    sold = sum(Decimal(o["executedQty"]) for o in sent)
    position = Decimal((await exchange.state())["positions"][SYMBOL]["amount"])
    assert sold >= Decimal("0.250") and position == Decimal("1.000") - sold   # the exchange's truth
