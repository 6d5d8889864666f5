"""The simulator in the caller's process, on the caller's event loop and clock: no sockets.

:class:`LocalExchange` is :class:`~fleet.sim.server.SimServer` without aiohttp: the same engine, the
same REST gateway (routes, weights, rate limits, signatures, injected faults, late writes) and the
same stream rules (canonical names, which user frames reach which listenKey, a connection cut after
``ws_max_lifetime_s``), driven by whatever clock the loop runs on. On a simulated clock
(``simulate.clock.VirtualTimeLoop``) a day of the exchange costs only the work done in it.

Latency is modelled, not real: a REST request reaches the gateway ``rest_latency_ms / 2`` after it is
sent and its answer returns as long after (the client's side waits both), and each frame reaches a
subscriber ``stream_latency_ms`` after the engine produced it. Frames are handed over as the decoded
JSON objects the wire would carry (the client parses them with its own parser).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Protocol

from fleet.sim.config import SimConfig, load_sim_config
from fleet.sim.engine import Engine
from fleet.sim.frames import render
from fleet.sim.gateway import Answer, ExchangeGateway
from fleet.sim.streams import canonical_stream, unlisted_stream

__all__ = ["LocalExchange", "Sink", "Subscription", "SubscriptionRefused"]

log = logging.getLogger("fleet.sim")


class SubscriptionRefused(Exception):
    """The exchange refused the stream (an unknown stream name, a listenKey that does not exist)."""


class Sink(Protocol):
    def receive(self, frames: list[Any]) -> None:
        """Decoded frames, in order, as they arrive."""

    def lost(self, reason: str) -> None:
        """The connection is gone (dropped, cut, closed by the exchange); nothing more arrives."""


class Subscription:
    """One stream connection: market streams or one listenKey, and where its frames go."""

    __slots__ = ("sink", "streams", "listen_key", "account", "opened_ms", "closed")

    def __init__(self, sink: Sink, streams: tuple[str, ...], listen_key: str | None, account: str | None,
                 opened_ms: int) -> None:
        self.sink = sink
        self.streams = streams  # canonical market stream names
        self.listen_key = listen_key
        self.account = account
        self.opened_ms = opened_ms
        self.closed = False


class LocalExchange(ExchangeGateway):
    """``fleet.sim`` in-process. Start :meth:`run` as a task; talk to it with :meth:`request`,
    :meth:`subscribe_market` and :meth:`subscribe_user`; :meth:`drop` is the stream-drop fault."""

    def __init__(self, *, clock_ms: Callable[[], int], symbols: list[str] | None = None, seed: int = 7,
                 config: SimConfig | dict[str, Any] | str | None = None, stream_latency_ms: float = 1.0,
                 credentials: dict[str, tuple[str, str]] | None = None) -> None:
        cfg = load_sim_config(config)
        self.clock = clock_ms
        self._init_gateway(cfg, Engine(cfg, seed=seed, now_ms=clock_ms(), symbols=symbols,
                                       credentials=credentials))
        self.symbols_lower = {b.lower for b in self.engine.books.values()}
        self.stream_latency_s = max(0.0, stream_latency_ms) / 1000.0
        self._market: dict[str, list[Subscription]] = {}
        self._user: dict[str, list[Subscription]] = {}
        self.subscriptions: list[Subscription] = []
        self.frames_delivered = 0
        self.opened = {"market": 0, "user": 0}  # connections accepted so far
        # an observer of every user frame (account, frame), listened to or not; None = nobody watches
        self.on_user_frame: Callable[[str, dict[str, Any]], None] | None = None

    @property
    def accounts(self) -> list[tuple[str, str, str]]:
        return [(a.name, a.api_key, a.api_secret) for a in self.engine.accounts.values()]

    # -- the clock ----------------------------------------------------------------------------------

    async def run(self) -> None:
        """Drive the engine: every market step, dead-man deadline, listenKey expiry and late write at its
        own time; cut connections older than ``ws_max_lifetime_s`` (Binance's 24 h)."""
        engine = self.engine
        lifetime_ms = int(self.config.ws_max_lifetime_s * 1000)
        while True:
            now = self.clock()
            engine.advance(now)
            if self.deferred:
                self._run_deferred(now)
            self._flush()
            if self.subscriptions and now - self.subscriptions[0].opened_ms >= lifetime_ms:
                self._cut_old(now, lifetime_ms)
            due = engine.next_step_ms
            if engine._deadline < due:
                due = engine._deadline
            if self.deferred and self.deferred[0].due_ms < due:
                due = self.deferred[0].due_ms
            if self.subscriptions:
                due = min(due, self.subscriptions[0].opened_ms + lifetime_ms)
            await asyncio.sleep(max(due - now, 0) / 1000.0)

    def _cut_old(self, now: int, lifetime_ms: int) -> None:
        for sub in list(self.subscriptions):
            if now - sub.opened_ms >= lifetime_ms:
                self._close(sub, "connection lifetime reached (code 1000)")

    # -- REST ---------------------------------------------------------------------------------------

    def request(self, method: str, path: str, raw_query: str, raw_body: bytes, api_key: str | None) -> Answer:
        """One request arriving now (the caller has waited the way there)."""
        return self.handle(method, path, raw_query, raw_body, api_key, "127.0.0.1", self.clock())

    # -- streams ------------------------------------------------------------------------------------

    def subscribe_market(self, names: list[str], sink: Sink) -> Subscription:
        canon: list[str] = []
        for name in names:
            c = canonical_stream(name, self.symbols_lower) or unlisted_stream(name)   # unlisted: silent
            if c is None:
                raise SubscriptionRefused(f"Invalid stream name: {name}")
            canon.append(c[0])
        sub = Subscription(sink, tuple(canon), None, None, self.clock())
        for c in canon:
            self._market.setdefault(c, []).append(sub)
        self.engine.set_interest(set(self._market))
        self.subscriptions.append(sub)
        self.opened["market"] += 1
        return sub

    def subscribe_user(self, listen_key: str, sink: Sink) -> Subscription:
        acct = self.engine.account_of_listen_key(listen_key)
        if acct is None:
            raise SubscriptionRefused("This listenKey does not exist.")
        sub = Subscription(sink, (), listen_key, acct.name, self.clock())
        self._user.setdefault(acct.name, []).append(sub)
        self.subscriptions.append(sub)
        self.opened["user"] += 1
        return sub

    def close(self, sub: Subscription) -> None:
        """The client closes its connection."""
        self._forget(sub)

    def drop(self, target: str = "all", account: str | None = None) -> int:
        """Abort matching connections (the /sim/fault/drop fault): ``market``, ``user`` or ``all``."""
        if target not in ("market", "user", "all"):
            raise ValueError("target must be market, user or all")
        n = 0
        for sub in list(self.subscriptions):
            is_user = sub.listen_key is not None
            if (target == "user" and not is_user) or (target == "market" and is_user):
                continue
            if account and sub.account != account:
                continue
            self._close(sub, "connection reset (no close frame)")
            n += 1
        return n

    def _close(self, sub: Subscription, reason: str) -> None:
        self._forget(sub)
        asyncio.get_running_loop().call_later(self.stream_latency_s, sub.sink.lost, reason)

    def _forget(self, sub: Subscription) -> None:
        if sub.closed:
            return
        sub.closed = True
        self.subscriptions.remove(sub)
        for c in sub.streams:
            subs = self._market.get(c)
            if subs is not None and sub in subs:
                subs.remove(sub)
                if not subs:
                    del self._market[c]
        if sub.streams:
            self.engine.set_interest(set(self._market))
        if sub.account is not None and sub in self._user.get(sub.account, ()):
            self._user[sub.account].remove(sub)

    def _flush(self) -> None:
        out = self.engine.drain()
        if not out:
            return
        batches: dict[Subscription, list[Any]] = {}
        observe = self.on_user_frame
        for kind, target, payload in out:
            if kind == "m":
                subs = self._market.get(target)
                if subs:
                    frame = render(payload)
                    for sub in subs:
                        batches.setdefault(sub, []).append(frame)
            elif observe is not None or self._user.get(target):
                frame = render(payload)
                if observe is not None:
                    observe(target, frame)
                if self._user.get(target):
                    self._route_user(target, frame, batches)
        if batches:
            later = asyncio.get_running_loop().call_later
            for sub, frames in batches.items():
                self.frames_delivered += len(frames)
                later(self.stream_latency_s, _hand, sub, frames)

    def _route_user(self, account: str, frame: dict[str, Any], batches: dict[Subscription, list[Any]]) -> None:
        current = self.engine.accounts[account].listen_key
        expired = frame.get("e") == "listenKeyExpired"
        for sub in self._user[account]:
            if (sub.listen_key == frame["listenKey"]) if expired else (sub.listen_key == current):
                batches.setdefault(sub, []).append(frame)


def _hand(sub: Subscription, frames: list[Any]) -> None:
    if not sub.closed:
        sub.sink.receive(frames)
