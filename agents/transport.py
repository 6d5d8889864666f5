"""The agent's way to the exchange, injected: the REST client and the two streams come from here.

:class:`NetworkTransport` is the real one (Binance or ``fleet.sim`` over sockets: aiohttp and
WebSockets). Another transport (e.g. the simulator's engine in the same process, on a simulated
clock) gives objects with the same methods, and the agent's code runs unchanged against it.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

from fleet.binance.client import BinanceClient
from fleet.binance.host_holds import HostHolds
from fleet.binance.ratelimit import RateBudget
from fleet.binance.streams import MarketStream, UserStream

from .agent_base import ExchangeEndpoints


class Transport(Protocol):
    def client(self, budget: RateBudget) -> BinanceClient:
        """A REST client (not yet opened) that spends ``budget``."""
        ...

    def market_stream(self, symbol: str, streams: Sequence[str], on_event: Callable[[Any, int], None]) -> MarketStream:
        ...

    def user_stream(self, listen_key: str) -> UserStream: ...


class NetworkTransport:
    """Binance's protocol over real sockets, to ``endpoints``, signed with ``credentials``."""

    def __init__(self, endpoints: ExchangeEndpoints, credentials: Any) -> None:
        self.endpoints = endpoints
        self._credentials = credentials

    def __repr__(self) -> str:  # never shows the key or the secret
        return f"NetworkTransport({self.endpoints.rest_url!r})"

    def client(self, budget: RateBudget) -> BinanceClient:
        c = self._credentials
        if budget.host is None:   # the IP's holds, shared with this host's other agents (wall clock: live)
            budget.share_host_holds(HostHolds(self.endpoints.rest_url),
                                    funding=HostHolds(self.endpoints.rest_url, kind="funding"))
        return BinanceClient(self.endpoints.rest_url, c.api_key, c.api_secret, budget=budget)

    def market_stream(self, symbol: str, streams: Sequence[str], on_event: Callable[[Any, int], None]) -> MarketStream:
        return MarketStream(self.endpoints.ws_market_url, symbol, tuple(streams), on_event=on_event)

    def user_stream(self, listen_key: str) -> UserStream:
        return UserStream(self.endpoints.ws_user_url, listen_key)
