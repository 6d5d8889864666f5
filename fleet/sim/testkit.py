"""A tiny signed REST + admin client for tests that check the simulator itself (not the fleet's client).

It signs exactly as Binance documents (HMAC-SHA256 over query string + body) and exposes raw status,
JSON and headers, so tests can assert error codes and rate-limit headers. ``wait_state`` polls
``/sim/state`` until a condition holds or a deadline passes: tests never sleep and hope.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlencode

import aiohttp
import yarl


@dataclass(frozen=True)
class Reply:
    status: int
    json: Any
    headers: dict[str, str]


def sign(secret: str, payload: str) -> str:
    return hmac.new(secret.encode(), payload.encode(), hashlib.sha256).hexdigest()


class SimClient:
    """``async with SimClient(sim.rest_url, key, secret) as c: await c.signed("POST", "/fapi/v1/order", {...})``"""

    def __init__(self, rest_url: str, api_key: str = "", api_secret: str = "") -> None:
        self.rest_url = rest_url.rstrip("/")
        self.api_key = api_key
        self.api_secret = api_secret
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def for_sim(cls, sim: Any, account: int = 0) -> "SimClient":
        _, key, secret = sim.accounts[account]
        return cls(sim.rest_url, key, secret)

    async def __aenter__(self) -> "SimClient":
        self._session = aiohttp.ClientSession()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        return self._session

    async def _do(self, method: str, path: str, query: str, body: str, headers: dict[str, str]) -> Reply:
        url = yarl.URL(self.rest_url + path + ("?" + query if query else ""), encoded=True)
        if body:
            headers = {**headers, "Content-Type": "application/x-www-form-urlencoded"}
        async with self.session.request(method, url, data=body or None, headers=headers) as resp:
            try:
                data = await resp.json(content_type=None)
            except ValueError:
                data = await resp.text()
            return Reply(resp.status, data, dict(resp.headers))

    async def public(self, method: str, path: str, params: dict[str, Any] | None = None) -> Reply:
        return await self._do(method, path, urlencode(params or {}), "", {})

    async def keyed(self, method: str, path: str, params: dict[str, Any] | None = None) -> Reply:
        return await self._do(method, path, urlencode(params or {}), "", {"X-MBX-APIKEY": self.api_key})

    async def signed(self, method: str, path: str, params: dict[str, Any] | None = None, *,
                     in_body: bool = False, timestamp: int | None = None, secret: str | None = None,
                     api_key: str | None = None) -> Reply:
        p = dict(params or {})
        p.setdefault("timestamp", timestamp if timestamp is not None else int(time.time() * 1000))
        payload = urlencode(p)
        payload += "&signature=" + sign(secret if secret is not None else self.api_secret, payload)
        headers = {"X-MBX-APIKEY": api_key if api_key is not None else self.api_key}
        if in_body:
            return await self._do(method, path, "", payload, headers)
        return await self._do(method, path, payload, "", headers)

    async def signed_raw(self, method: str, path: str, query: str) -> Reply:
        """A signed request whose query is ``query`` as given (a name may repeat), the timestamp added."""
        payload = f"{query}&timestamp={int(time.time() * 1000)}"
        payload += "&signature=" + sign(self.api_secret, payload)
        return await self._do(method, path, payload, "", {"X-MBX-APIKEY": self.api_key})

    async def admin(self, method: str, path: str, body: dict[str, Any] | None = None,
                    params: dict[str, Any] | None = None) -> Any:
        url = self.rest_url + path
        async with self.session.request(method, url, json=body if method != "GET" else None,
                                        params=params) as resp:
            data = await resp.json(content_type=None)
            if resp.status != 200:
                raise AssertionError(f"admin {method} {path} -> {resp.status}: {data}")
            return data

    async def state(self, account: str = "main", symbol: str | None = None) -> dict[str, Any]:
        params = {"account": account}
        if symbol:
            params["symbol"] = symbol
        return await self.admin("GET", "/sim/state", params=params)

    async def wait_state(self, predicate: Callable[[dict[str, Any]], bool], account: str = "main",
                         symbol: str | None = None, timeout: float = 10.0) -> dict[str, Any]:
        """Poll /sim/state until ``predicate(state)`` holds; AssertionError with the last state if not."""
        deadline = time.monotonic() + timeout
        st = await self.state(account, symbol)
        while not predicate(st):
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout}s; last state: {st}")
            await asyncio.sleep(0.02)
            st = await self.state(account, symbol)
        return st


class ManualClock:
    """A clock a test moves by hand (``clock.now += 60_000``): ``SimServer(clock=ManualClock())``.

    It starts one second into the current wall-clock minute, so rate-limit windows never roll over
    mid-test; signed requests must then carry ``timestamp=clock.now``.
    """

    def __init__(self) -> None:
        self.now = (int(time.time() * 1000) // 60_000) * 60_000 + 1_000

    def __call__(self) -> int:
        return self.now


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll a plain condition with a deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        await asyncio.sleep(0.01)
