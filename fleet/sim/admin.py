"""The /sim admin routes (faults and truth; documented in :mod:`fleet.sim.server`). Mixed into SimServer."""

from __future__ import annotations

import json
from typing import Any, Callable

from aiohttp import web

from fleet.sim.config import SimConfig
from fleet.sim.engine import Engine, SimApiError
from fleet.sim.faults import Deferred, FrameFault, Held, RestFault, parse_fault, parse_frame_fault

__all__ = ["AdminRoutes", "RestFault"]


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
    conns: set[Any]

    async def _admin(self, request: web.Request) -> web.Response:
        path = request.path
        body: dict[str, Any] = {}
        if request.method == "POST":
            raw = await request.read()
            if raw:
                try:
                    body = json.loads(raw)
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
            self.faults.append(parse_fault(body))
            return {"ok": True, "pending": len(self.faults)}
        if path == "/sim/fault/frame":
            self.frame_faults.append(parse_frame_fault(body))
            return {"ok": True, "pending": len(self.frame_faults)}
        if path == "/sim/limits":
            if "max_modifies_per_order" in body:
                n = int(body["max_modifies_per_order"])
                if n < 1:
                    raise ValueError("max_modifies_per_order must be >= 1")
                e.max_modifies = n
            return {"max_modifies_per_order": e.max_modifies}
        if path == "/sim/fault/latency":
            ms = int(body.get("ms", 0))
            if ms < 0:
                raise ValueError("ms must be >= 0")
            self.latency = (ms, body.get("path"))
            return {"ok": True}
        if path == "/sim/fault/clear":
            self.faults.clear()
            self.frame_faults.clear()
            self.latency = (self.config.rest_latency_ms, None)  # back to the configured latency
            return {"ok": True}
        if path == "/sim/fault/drop":
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
        if path == "/sim/listenkey/expire":
            return {"listenKey": e.expire_listen_key(body.get("account", "main"), now)}
        if path == "/sim/market/freeze":
            return {"symbols": e.set_frozen(body.get("symbol"), bool(body.get("frozen", True)),
                                            str(body.get("mode", "data")))}
        if path == "/sim/market/jump":
            return {"mid": e.jump(body["symbol"], float(body["pct"]), now)}
        if path == "/sim/funding/rate":
            b = e.book(body["symbol"])
            e.set_funding_rate(b.symbol, body.get("rate"))
            return {"ok": True, "rate": f"{b.funding_rate:.8f}", "pinned": b.rate_pinned}
        if path == "/sim/funding/interval":
            return e.set_funding_interval(body["symbol"], body["hours"], now, body.get("next_ms"))
        if path == "/sim/funding/settle":
            return {"charged": e.settle_funding(now, body.get("symbol"))}
        if path == "/sim/position":
            e.set_position(body.get("account", "main"), body["symbol"], str(body["amount"]),
                           None if body.get("entry_price") is None else str(body["entry_price"]), now)
            return {"ok": True}
        if path == "/sim/adl":
            return e.deleverage(body.get("account", "main"), body["symbol"],
                                None if body.get("qty") is None else str(body["qty"]), now)
        if path == "/sim/delist":
            at_ms = int(body["at_ms"]) if "at_ms" in body else now + int(float(body["in_s"]) * 1000)
            return e.schedule_delisting(body["symbol"], at_ms, now)
        if path == "/sim/brackets":
            rows = [(str(r["notional_cap"]), int(r["initial_leverage"]), str(r["maint_margin_ratio"]))
                    for r in body["brackets"]]
            return e.set_brackets(body["symbol"], rows, now)
        if path == "/sim/countdown/check":
            e.advance(now)
            return {"ok": True}
        return None
