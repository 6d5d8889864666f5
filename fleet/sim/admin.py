"""The /sim admin routes (faults and truth; documented in :mod:`fleet.sim.server`). Mixed into SimServer."""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Callable

from aiohttp import web

from fleet.sim.config import SimConfig
from fleet.sim.engine import Engine, SimApiError
from fleet.sim.admin_input import LATEST_MS, REQUIRED, YEAR_MS, decimal, flag, integer, loads, number, only, text
from fleet.sim.ratelimit import RateLimiter
from fleet.sim.faults import (Deferred, FrameFault, Held, RestFault, check_frame_reach, check_path, check_reach,
                              parse_fault, parse_frame_fault)

__all__ = ["AdminRoutes", "RestFault"]


LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})


def _host_name(host: str) -> str:
    """The name of a Host header (``[::1]:8900`` -> ``::1``, ``localhost:8900`` -> ``localhost``)."""
    host = host.strip().lower()
    return host[1:host.find("]")] if host.startswith("[") else host.rsplit(":", 1)[0]


class AdminRoutes:
    """JSON in, JSON out; bad input is a 400 naming the problem."""

    engine: Engine
    config: SimConfig
    clock: Callable[[], int]
    stats: dict[str, int]
    faults: list[RestFault]
    frame_faults: list[FrameFault]
    deferred: list[Deferred]
    held: list[Held]
    latency: tuple[int, str | None]
    routes: frozenset[tuple[str, str]]
    limiter: RateLimiter
    conns: set[Any]
    host: str

    async def _admin(self, request: web.Request) -> web.Response:
        path = request.path
        if self.host in LOOPBACK_NAMES and _host_name(request.headers.get("Host", "")) not in LOOPBACK_NAMES:
            # a page whose name its DNS points at 127.0.0.1 (rebinding) reaches the port from a browser on
            # this machine: it may read the accounts' keys or inject faults through no admin route
            return self._json(400, {"error": "the simulator's admin routes answer only requests naming a loopback "
                                             "host (127.0.0.1, localhost)"})
        body: dict[str, Any] = {}
        if request.method == "POST":
            raw = await request.read()
            if raw:
                try:
                    body = loads(raw)
                except ValueError as exc:
                    return self._json(400, {"error": f"body is not JSON: {exc}"})
                if not isinstance(body, dict):
                    return self._json(400, {"error": "body must be a JSON object"})
        try:
            result = await self._admin_route(request.method, path, body, request.query)
        except SimApiError as exc:
            return self._json(400, {"error": exc.msg, "code": exc.code})
        except (KeyError, ValueError, TypeError) as exc:
            return self._json(400, {"error": f"bad admin request: {exc!s}"})
        if result is None:
            return self._json(404, {"error": f"no admin route {request.method} {path}"})
        self._flush()
        return self._json(200, result)

    async def _admin_route(self, method: str, path: str, body: dict[str, Any], query: Any) -> Any:
        e = self.engine
        now = self.clock()
        e.advance(now)  # as for a REST request: what this does is stamped after every step due before it
        if method == "GET" and path == "/sim/state":
            st = e.state(query.get("account", "main"), query.get("symbol"))
            st["connections"] = {"market": sum(1 for c in self.conns if c.subs or (c.silent and not c.is_user)),
                                 "user": sum(1 for c in self.conns if c.is_user), "total": len(self.conns)}
            st["faults_pending"] = [vars(f) for f in self.faults]
            st["frame_faults_pending"] = [vars(f) for f in self.frame_faults]
            st["deferred"] = [d.view() for d in self.deferred]
            st["held"] = [h.view() for h in self.held]
            st["server"] = dict(self.stats)
            st["weight_by_route"] = dict(self.weight_by_route)
            return st
        if method == "GET" and path == "/sim/accounts":
            return [{"name": n, "api_key": k, "api_secret": s} for n, k, s in self.accounts]
        if method != "POST":
            return None
        if path == "/sim/fault/rest":
            fault = parse_fault(body)
            check_reach(fault, self.routes)
            self.faults.append(fault)
            return {"ok": True, "pending": len(self.faults)}
        if path == "/sim/fault/frame":
            self.frame_faults.append(check_frame_reach(parse_frame_fault(body), e.accounts, e.books))
            return {"ok": True, "pending": len(self.frame_faults)}
        if path == "/sim/limits":
            return self._set_limits(body, path)
        if path == "/sim/fault/latency":
            only(body, path, "ms", "path")
            ms = integer(body, "ms", 0, 0, 600_000)
            check_path(text(body, "path"), self.routes)
            self.latency = (ms, text(body, "path"))
            return {"ok": True}
        if path in ("/sim/fault/clear", "/sim/countdown/check"):
            only(body, path)
        if path == "/sim/fault/clear":
            self.faults.clear()
            self.frame_faults.clear()
            self.latency = (self.config.rest_latency_ms, None)  # back to the configured latency
            return {"ok": True}
        if path == "/sim/fault/drop":
            only(body, path, "target", "route", "account")
            text(body, "account")
            target = body.get("target", "all")
            if target not in ("market", "user", "api", "all"):
                raise ValueError("target must be market, user, api or all")
            route = body.get("route")
            if route not in (None, "public", "market", "legacy"):
                raise ValueError("route must be public, market or legacy (the unrouted /ws and /stream)")
            account = body.get("account")
            n = 0
            for c in list(self.conns):
                is_api = c.path_kind == "api"
                is_user = c.is_user
                is_market = not is_api and (bool(c.subs or c.silent) or not is_user)
                if target != "all" and not {"user": is_user, "market": is_market, "api": is_api}[target]:
                    continue
                if route is not None and c.path_kind != route:
                    continue
                if account and account not in c.accounts:
                    continue
                await self._close_conn(c, abort=True)
                n += 1
            return {"dropped": n}
        return self._market_route(path, body, now)

    def _market_route(self, path: str, body: dict[str, Any], now: int) -> Any:
        """The routes that move the market, positions and contracts: every field read and checked first."""
        e = self.engine
        big = Decimal(10) ** 12
        if path == "/sim/listenkey/expire":
            only(body, path, "account")
            return {"listenKey": e.expire_listen_key(text(body, "account", "main"), now)}
        if path == "/sim/market/freeze":
            only(body, path, "symbol", "frozen", "mode")
            return {"symbols": e.set_frozen(text(body, "symbol"), flag(body, "frozen", True),
                                            text(body, "mode", "data"))}
        if path == "/sim/filters":
            return self._filters(body, path)
        if path == "/sim/market/jump":
            only(body, path, "symbol", "pct")
            return {"mid": e.jump(text(body, "symbol", REQUIRED), number(body, "pct", REQUIRED, -99.99, 10_000.0), now)}
        if path == "/sim/funding/rate":
            only(body, path, "symbol", "rate")
            b = e.book(text(body, "symbol", REQUIRED))
            e.set_funding_rate(b.symbol, decimal(body, "rate", None, Decimal(-1), Decimal(1)))
            return {"ok": True, "rate": f"{b.funding_rate:.8f}", "pinned": b.rate_pinned}
        if path == "/sim/funding/interval":
            only(body, path, "symbol", "hours", "next_ms")
            return e.set_funding_interval(text(body, "symbol", REQUIRED), integer(body, "hours", REQUIRED, 1, 24), now,
                                          integer(body, "next_ms", None, now + 1, LATEST_MS))
        if path == "/sim/funding/settle":
            only(body, path, "symbol")
            return {"charged": e.settle_funding(now, text(body, "symbol"))}
        if path == "/sim/position":
            only(body, path, "account", "symbol", "amount", "entry_price")
            e.set_position(text(body, "account", "main"), text(body, "symbol", REQUIRED),
                           decimal(body, "amount", REQUIRED, -big, big),
                           decimal(body, "entry_price", None, Decimal("1e-12"), big), now)
            return {"ok": True}
        if path == "/sim/adl":
            only(body, path, "account", "symbol", "qty")
            return e.deleverage(text(body, "account", "main"), text(body, "symbol", REQUIRED),
                                decimal(body, "qty", None, Decimal(0), big), now)
        if path == "/sim/delist":
            only(body, path, "symbol", "at_ms", "in_s")
            at_ms = integer(body, "at_ms", None, now + 1, LATEST_MS)
            if at_ms is None:
                at_ms = now + int(number(body, "in_s", REQUIRED, 0.001, 10 * YEAR_MS / 1000) * 1000)
            return e.schedule_delisting(text(body, "symbol", REQUIRED), at_ms, now)
        if path == "/sim/brackets":
            only(body, path, "symbol", "brackets")
            rows = body.get("brackets")
            if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
                raise ValueError("brackets must be a non-empty list of {notional_cap, initial_leverage, "
                                 "maint_margin_ratio}")
            table = []
            for r in rows:
                only(r, "a bracket", "notional_cap", "initial_leverage", "maint_margin_ratio")
                table.append((decimal(r, "notional_cap", REQUIRED, Decimal(1), Decimal(10) ** 15),
                              integer(r, "initial_leverage", REQUIRED, 1, 125),
                              decimal(r, "maint_margin_ratio", REQUIRED, Decimal(0), Decimal(1))))
            return e.set_brackets(text(body, "symbol", REQUIRED), table, now)
        if path == "/sim/countdown/check":
            e.advance(now)
            return {"ok": True}
        return None

    def _set_limits(self, body: dict[str, Any], path: str) -> dict[str, Any]:
        """The exchange changes its limits (an announcement, or one account's own order limits): the
        modifications an order may take, the IP's weight a minute, the order limits; exchangeInfo and
        rateLimit/order list them, requests are judged by them from now on. Checked before anything changes."""
        only(body, path, "max_modifies_per_order", "weight_per_minute", "orders_per_10s", "orders_per_minute",
             "account", "own")
        e, limiter = self.engine, self.limiter
        modifies = integer(body, "max_modifies_per_order", None, 1, 1_000_000)
        changes = {name: integer(body, name, None, 1, 10**9)
                   for name in ("weight_per_minute", "orders_per_10s", "orders_per_minute")}
        changes = {k: v for k, v in changes.items() if v is not None}
        account = text(body, "account")
        own = flag(body, "own", True)   # false: the account is held to the exchange's order limits again
        if account is not None:
            if account not in e.accounts:
                raise ValueError(f"account {account!r} is not one of the simulator's ({', '.join(e.accounts)})")
            if "weight_per_minute" in changes or modifies is not None:
                raise ValueError("an account has only its own order limits (orders_per_10s, orders_per_minute)")
        if not own and (account is None or changes):
            raise ValueError("own: false takes an account and no limit (its own order limits are dropped)")
        if modifies is not None:
            e.max_modifies = modifies
        if not own:
            limiter.drop_own(account)
        if changes:
            limiter.change(account, **changes)
        per_10s, per_minute = limiter.order_limits(account)
        return {"max_modifies_per_order": e.max_modifies, "weight_per_minute": limiter.limits.weight_per_minute,
                "orders_per_10s": per_10s, "orders_per_minute": per_minute}

    def _filters(self, body: dict[str, Any], path: str) -> dict[str, Any]:
        """The exchange changes a symbol's filters, as it announces (a coarser tick, a new minimum
        notional, order quantity limits, the largest MARKET order): exchangeInfo lists them, new orders and
        amendments meet them (-4014, -4164, -5029, -4004, -4005), what rests stays. Every field checked
        before anything changes."""
        only(body, path, "symbol", "tick_size", "min_notional", "min_qty", "max_qty", "market_max_qty")
        b = self.engine.book(text(body, "symbol", REQUIRED))
        big = Decimal(10) ** 12
        tick = decimal(body, "tick_size", None, b.tick, b.tick * 10_000)
        notional = decimal(body, "min_notional", None, Decimal(0), big)
        min_qty = decimal(body, "min_qty", None, b.step, big)
        max_qty = decimal(body, "max_qty", None, b.step, big)
        market_max = decimal(body, "market_max_qty", None, b.market_step, big)
        if tick is None and notional is None and min_qty is None and max_qty is None and market_max is None:
            raise ValueError("give at least one of tick_size, min_notional, min_qty, max_qty, market_max_qty")
        multiple = Decimal(tick) / b.tick if tick is not None else Decimal(b.tick_multiple)
        if multiple != multiple.to_integral_value():
            raise ValueError(f"tick_size must be a whole multiple of {b.symbol}'s {b.tick:f}")
        lo, hi = Decimal(min_qty or b.min_qty), Decimal(max_qty or b.max_qty)
        for name, value in (("min_qty", lo), ("max_qty", hi)):
            if value % b.step:
                raise ValueError(f"{name} must be a whole multiple of {b.symbol}'s step {b.step:f}")
        if lo > hi:
            raise ValueError(f"min_qty {lo:f} is above max_qty {hi:f}")
        market_hi = Decimal(market_max or b.market_max_set)
        if market_max is not None:
            market_lo = Decimal(b.spec.market_min_qty) if b.spec.market_min_qty else lo   # (as set_filters takes it)
            if market_hi % b.market_step:
                raise ValueError(f"market_max_qty must be a whole multiple of {b.symbol}'s market step "
                                 f"{b.market_step:f}")
            if market_hi < market_lo:
                raise ValueError(f"market_max_qty {market_hi:f} is below the market minQty {market_lo:f}")
        b.tick_multiple = int(multiple)   # orders off the new grid refused -4014, exchangeInfo lists it
        b.set_filters(lo, hi, Decimal(notional or b.min_notional), market_hi)
        return {"symbol": b.symbol, "tick_size": f"{b.tick * b.tick_multiple:f}", "min_notional": f"{b.min_notional:f}",
                "min_qty": f"{b.min_qty:f}", "max_qty": f"{b.max_qty:f}", "market_max_qty": f"{b.market_max_qty:f}"}
