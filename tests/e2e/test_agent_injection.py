"""The agent's clock and transport are injected: it reads time and reaches the exchange only through them."""

from __future__ import annotations

import asyncio

from agents.agent import ExchangeEndpoints, SymbolAgent
from agents.clock import WallClock
from agents.ownership import LockFileOwnership
from agents.transport import NetworkTransport
from fleet.binance.credentials import Credentials
from fleet.config import SymbolParams

from .test_agent_live import FAST, SYMBOL, wait_for


class ShiftedClock(WallClock):
    """The wall clock, plus an offset the test moves."""

    def __init__(self) -> None:
        self.offset_s = 0.0

    def monotonic(self) -> float:
        return super().monotonic() + self.offset_s


class CountingTransport(NetworkTransport):
    """The real sockets, counting what the agent asked for."""

    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.asked = {"client": 0, "market": 0, "user": 0}

    def client(self, budget):
        self.asked["client"] += 1
        return super().client(budget)

    def market_stream(self, symbol, streams, on_event):
        self.asked["market"] += 1
        return super().market_stream(symbol, streams, on_event)

    def user_stream(self, listen_key):
        self.asked["user"] += 1
        return super().user_stream(listen_key)


async def test_the_agent_uses_the_injected_clock_and_transport(sim, tmp_path):
    _, key, secret = sim.accounts[0]
    endpoints = ExchangeEndpoints(sim.rest_url, sim.ws_url, sim.ws_url)
    transport = CountingTransport(endpoints, Credentials(key, secret))
    clock = ShiftedClock()
    agent = SymbolAgent(
        fleet_name="t", symbol=SYMBOL, params=SymbolParams(), runtime=FAST, endpoints=endpoints,
        credentials=None, ownership=LockFileOwnership(tmp_path / "state", "t", SYMBOL), clock=clock,
        transport=transport,
    )
    task = asyncio.create_task(agent.run())
    try:
        await wait_for(lambda: agent.status()["state"] == "quoting" and agent.status()["open_orders"] > 0, 15,
                       "quoting through the injected transport")
        assert transport.asked["client"] == 1 and transport.asked["market"] >= 1 and transport.asked["user"] >= 1
        assert "secret" not in repr(transport).lower() and secret not in repr(transport)
        before = agent.status()["uptime_s"]
        clock.offset_s += 1000.0  # the agent's own clock moves; the wall clock does not
        assert agent.status()["uptime_s"] >= before + 1000.0
    finally:
        await agent.stop()
        await asyncio.wait_for(task, 25)
