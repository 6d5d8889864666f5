"""Chaos soak: random faults against a trading client of the simulator, the exchange's truth sampled throughout.

Only the simulator's HTTP API is used (``/sim/...`` admin routes and a signed ``allOrders``), so a test
and a bench share it; what the client under test holds is read through a :class:`Probe` of plain
callables (this module never imports the agent)::

    actions = schedule(seed, seconds=45, symbol="ETHUSDC", cap=cap, step=step)
    async with Soak(rest_url, key, secret, "ETHUSDC", cap, step, probe) as soak:
        await soak.run(actions)             # inject on time while sampling /sim/state every 50 ms
        await soak.settle(timeout=30)       # faults off; wait for the client to match the exchange
        ... stop the client ...
        report = await soak.finish()        # open orders after the stop, allOrders, the figures
    assert not report.problems(), report.explain()

The schedule (:func:`schedule`, a ``random.Random(seed)``) holds every ambiguous answer of
``/sim/fault/rest`` at least once (late with each answer, timeout included; exec_then_error with
each; error -1007; unknown; batch_short/malformed/nonjson) on a random write route (cancel-all and the
dead-man heartbeat among them), 429s, user and market
stream drops, listenKey expiry, price jumps of 0.1..0.6 %, short market freezes, outside position
moves near the cap and stream frames without fields or broken (``/sim/fault/frame``: those Binance
documents as optional, required ones, text that is not JSON); more of the same at random times fill
the rest. The sampler checks, at the
exchange:

- the cap: worst long (position + open buys) <= cap and worst short (position - open sells) >= -cap,
  except in the grace after an outside position move. The grace ends at the first sample (sent
  after the move was acknowledged) where nothing that adds beyond the cap rests (worst long <=
  max(cap, position), worst short >= min(-cap, position): fills of what rested when the position
  moved may have carried the position itself past the cap) and the exchange holds no deferred write
  sent before the move (a request answered "unknown" that may still execute: the client counted it,
  but decided it on the position before the move, and nothing can cancel an order before it lands);
  each grace must end within
  ``grace_limit`` seconds. While such a position stays beyond the cap, the bound is the position
  (it only shrinks back towards the cap: nothing may add to it);
- client order ids: each one ever seen (open orders in every sample, ``allOrders`` at the end) maps
  to exactly one orderId;
- orphans: exchange open orders the client does not track (its view read before and after each
  sample, so an order it adds or forgets while the sample is taken is not counted); orphan-seconds
  sum the count times the time since the previous sample;
- at the end: the client's open orders (and position, if the probe gives one) equal the exchange's
  with nothing in flight, and after the client stopped no order is left open at the exchange.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, Decimal
from typing import Any, Callable

import aiohttp

from fleet.sim.testkit import SimClient

__all__ = ["Action", "Probe", "Report", "Soak", "schedule", "worst_long", "worst_short", "exchange_open"]

ORDER, BATCH = "/fapi/v1/order", "/fapi/v1/batchOrders"
WRITES = [(m, p) for p in (ORDER, BATCH) for m in ("POST", "PUT", "DELETE")] + [
    ("DELETE", "/fapi/v1/allOpenOrders"), ("POST", "/fapi/v1/countdownCancelAll")]
ANSWERS = ("503", "503-nocode", "503-html", "503-text", "500", "502", "504", "-1006", "-1007", "timeout")
# batch_error: the whole batch executes and one entry answers -1001 (a 5xx for a whole call; Binance
# documents it as not executed, and an entry carries its code alone)
BATCH_MODES = ("batch_short", "batch_malformed", "batch_nonjson", "batch_error")
INTERNAL_ERROR = {"code": -1001, "msg": "Internal error; unable to process your request. Please try again."}

# extra actions beyond the one-of-each: kind family -> weight
WEIGHTS = {"late": 20, "exec_then_error": 12, "error": 6, "unknown": 4, "batch": 12, "drop": 8,
           "listenkey": 3, "jump": 20, "freeze": 5, "position": 6, "throttle": 3, "frame": 4, "429": 2}

# Stream frames sent without fields or broken (POST /sim/fault/frame): the name is the report's kind.
FRAMES: dict[str, dict[str, Any]] = {
    "no_commission": {"stream": "user", "event": "ORDER_TRADE_UPDATE", "fields": ["o.N", "o.n"]},  # Binance may
    "no_status": {"stream": "user", "event": "ORDER_TRADE_UPDATE", "fields": ["o.X"]},
    "no_position": {"stream": "user", "event": "ACCOUNT_UPDATE", "fields": ["a.P.pa"]},
    "user_garbage": {"stream": "user", "mode": "garbage"},
    "user_truncated": {"stream": "user", "mode": "truncate"},
    "order_update_lost": {"stream": "user", "mode": "drop", "event": "ORDER_TRADE_UPDATE"},   # on a live connection
    "book_lost": {"stream": "market", "mode": "drop", "event": "bookTicker"},
    "book_without_bid": {"stream": "market", "event": "bookTicker", "fields": ["b"]},
    "market_garbage": {"stream": "market", "mode": "garbage"},
}


# --------------------------------------------------------------------------- exchange arithmetic


def _clock() -> str:
    t = time.time()
    return time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t * 1000) % 1000:03d}"


def _remaining(o: dict) -> Decimal:
    return Decimal(o["origQty"]) - Decimal(o["executedQty"])


def worst_long(state: dict, symbol: str) -> Decimal:
    pos = Decimal(state["positions"][symbol]["amount"])
    return pos + sum((_remaining(o) for o in state["open_orders"] if o["side"] == "BUY"), Decimal(0))


def worst_short(state: dict, symbol: str) -> Decimal:
    pos = Decimal(state["positions"][symbol]["amount"])
    return pos - sum((_remaining(o) for o in state["open_orders"] if o["side"] == "SELL"), Decimal(0))


def exchange_open(state: dict, step: Decimal) -> dict[str, tuple[str, int]]:
    """The exchange's open orders: client id -> (side, remaining steps)."""
    return {o["clientOrderId"]: (o["side"], int(_remaining(o) / step)) for o in state["open_orders"]}


# --------------------------------------------------------------------------- the schedule


@dataclass(frozen=True)
class Action:
    """One thing done to the exchange ``at`` seconds after the soak starts."""

    at: float
    kind: str  # the figure it counts under: "late/503", "drop/user", "jump", "freeze", "position", ...
    path: str  # the admin route
    body: dict[str, Any]

    def __str__(self) -> str:
        return f"{self.at:7.2f}s {self.kind:<22} {self.path} {json.dumps(self.body, separators=(',', ':'))}"


def rest_kind(body: dict[str, Any]) -> str:
    """The figure a /sim/fault/rest body counts under (also for the faults the exchange lists as pending)."""
    mode = body["mode"]
    if mode == "batch_malformed" and body.get("entry") == INTERNAL_ERROR:
        return "batch_error"
    if mode in ("late", "exec_then_error", "error"):
        return f"{mode}/{body.get('answer') or ('-1001' if mode == 'error' else '503')}"
    return mode


def schedule(seed: int, seconds: float, symbol: str, cap: float, step: Decimal | str, account: str = "main",
             mean_gap: float = 0.5, freeze_s: tuple[float, float] = (1.5, 3.0),
             position_gap_s: float = 6.0) -> list[Action]:
    """A random fault schedule over ``seconds``: every kind at least once, then about one action per
    ``mean_gap`` seconds. Freezes never overlap (each is followed by its ``unfreeze``) and outside
    position moves are ``position_gap_s`` apart (a clash becomes a price jump)."""
    rng = random.Random(seed)
    step = Decimal(str(step))
    families: list[tuple[str, Any]] = [("late", a) for a in ANSWERS] + [("exec_then_error", a) for a in ANSWERS]
    families += [("error", "-1007"), ("error", "503-unavailable"), ("error", "-5028"), ("unknown", None),
                 ("throttle", None), ("429", None)]
    families += [("batch", m) for m in BATCH_MODES]
    families += [("drop", "user"), ("drop", "market"), ("listenkey", None), ("jump", None), ("freeze", None),
                 ("position", None)]
    families += [("frame", name) for name in FRAMES]
    extra = max(0, int(seconds / mean_gap) - len(families))
    names = list(WEIGHTS)
    for fam in rng.choices(names, weights=[WEIGHTS[n] for n in names], k=extra):
        families.append((fam, None))
    rng.shuffle(families)
    times = sorted(rng.uniform(0.3, max(0.5, seconds - 0.5)) for _ in families)

    def route() -> tuple[str, str]:
        return rng.choice(WRITES)

    out: list[Action] = []
    frozen_until = -math.inf
    last_move = -math.inf
    for at, (fam, arg) in zip(times, families):
        at = round(at, 3)
        if fam == "freeze" and at < frozen_until + 0.5:
            fam = "jump"
        if fam == "position" and at - last_move < position_gap_s:
            fam = "jump"
        if fam == "late":
            method, path = route()
            answer = arg or rng.choice(ANSWERS)
            body = {"mode": "late", "answer": answer, "delay_ms": rng.randint(100, 1200), "path": path,
                    "method": method, "count": 1}
            if answer == "timeout":
                body["hold_ms"] = rng.randint(200, 900)
            out.append(Action(at, rest_kind(body), "/sim/fault/rest", body))
        elif fam == "exec_then_error":
            method, path = route()
            answer = arg or rng.choice(ANSWERS)
            body = {"mode": "exec_then_error", "answer": answer, "path": path, "method": method, "count": 1}
            if answer == "timeout":
                body["hold_ms"] = rng.randint(200, 900)
            out.append(Action(at, rest_kind(body), "/sim/fault/rest", body))
        elif fam == "429":   # the exchange's rate limit answered (Retry-After 1 s, no ban)
            out.append(Action(at, "429", "/sim/fault/rest", {"mode": "429", "count": rng.randint(1, 3)}))
        elif fam == "throttle":   # the exchange's system-level protection: new orders refused (-1008)
            body = {"mode": "throttle", "count": rng.randint(1, 4)}
            out.append(Action(at, "throttle", "/sim/fault/rest", body))
        elif fam in ("error", "unknown"):
            method, path = route()
            body = {"mode": fam, "path": path, "method": method, "count": 1}
            if fam == "error":
                body["answer"] = arg or "-1007"
            out.append(Action(at, rest_kind(body), "/sim/fault/rest", body))
        elif fam == "batch":
            mode = arg or rng.choice(BATCH_MODES)
            body = {"mode": mode, "path": BATCH, "method": rng.choice(("POST", "PUT", "DELETE")), "count": 1}
            if mode == "batch_short":
                body["entries"] = [rng.choice((-1, 0, 1))]
            if mode == "batch_error":
                body.update(mode="batch_malformed", entry=INTERNAL_ERROR, entries=[rng.choice((-1, 0, 1))])
            out.append(Action(at, mode, "/sim/fault/rest", body))
        elif fam == "drop":
            target = arg or rng.choice(("user", "market"))
            body = {"target": target, "account": account} if target == "user" else {"target": target}  # a market
            out.append(Action(at, f"drop/{target}", "/sim/fault/drop", body))  # connection has no account
        elif fam == "frame":
            name = arg or rng.choice(list(FRAMES))
            body = {**FRAMES[name], "count": rng.randint(1, 3)}
            if body["stream"] == "market":
                body["symbol"] = symbol
            else:
                body["account"] = account
            out.append(Action(at, f"frame/{name}", "/sim/fault/frame", body))
        elif fam == "listenkey":
            out.append(Action(at, "listenkey_expire", "/sim/listenkey/expire", {"account": account}))
        elif fam == "jump":
            pct = round(rng.choice((-1, 1)) * rng.uniform(0.1, 0.6), 3)
            out.append(Action(at, "jump", "/sim/market/jump", {"symbol": symbol, "pct": pct}))
        elif fam == "freeze":
            hold = round(rng.uniform(*freeze_s), 3)
            out.append(Action(at, "freeze", "/sim/market/freeze", {"frozen": True, "symbol": symbol, "mode": "data"}))
            out.append(Action(round(at + hold, 3), "unfreeze", "/sim/market/freeze",
                              {"frozen": False, "symbol": symbol, "mode": "data"}))
            frozen_until = at + hold
        elif fam == "position":
            size = Decimal(str(rng.uniform(0.8, 1.0) * cap)).quantize(step, rounding=ROUND_DOWN)
            amount = size if rng.random() < 0.5 else -size
            out.append(Action(at, "position", "/sim/position", {"account": account, "symbol": symbol,
                                                                "amount": str(amount)}))
            last_move = at
    out.sort(key=lambda a: a.at)
    return out


# --------------------------------------------------------------------------- the soak


@dataclass
class Probe:
    """What the client under test holds, read without I/O.

    orders: client id -> (side, remaining steps) of every order it counts as open or possibly open;
    in_flight: requests still awaiting an answer; position_steps: its position in steps (optional).
    """

    orders: Callable[[], dict[str, tuple[str, int]]]
    in_flight: Callable[[], int]
    position_steps: Callable[[], int] | None = None


RECV_WINDOW_MS = 5_000  # the client's recvWindow: a deferred write's expiry less this is when it was sent

@dataclass
class Grace:
    since: float  # monotonic time the move was sent
    armed: float | None = None  # monotonic time the exchange acknowledged it
    armed_ms: int | None = None  # the same moment on the exchange's (wall) clock
    ended: float | None = None
    trace: list[str] = field(default_factory=list)  # the samples taken in it, one line each

    @property
    def seconds(self) -> float:
        return (self.ended if self.ended is not None else time.monotonic()) - self.since


@dataclass
class Report:
    seed: int | None
    symbol: str
    cap: Decimal
    seconds: float = 0.0  # the soak's wall time (faults injected)
    samples: int = 0
    injected: Counter = field(default_factory=Counter)  # kind -> count
    unused: Counter = field(default_factory=Counter)  # REST faults still pending at the end; drops of nothing
    max_frac: float = -math.inf  # max worst case / cap outside the graces
    max_frac_all: float = -math.inf  # ... overall
    graces: list[float] = field(default_factory=list)  # seconds each outside move left orders adding beyond the cap
    grace_traces: list[list[str]] = field(default_factory=list)  # the samples in each grace that ended
    beyond_seconds: float = 0.0  # after a grace: time the position an outside move left stayed beyond the cap
    grace_limit: float = 5.0
    violations: list[str] = field(default_factory=list)
    orphan_seconds: float = 0.0
    longest_orphan: tuple[str, float] = ("", 0.0)  # client id, seconds it stayed untracked at the exchange
    duplicates: dict[str, list[int]] = field(default_factory=dict)  # client id -> its orderIds
    ids_seen: int = 0
    settled: bool | None = None
    settle_seconds: float = 0.0
    settle_detail: str = ""
    open_after_stop: int | None = None
    late_outcomes: dict[str, int] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)  # actions done, with the exchange's answer when not plain

    def problems(self) -> list[str]:
        out = []
        if self.samples == 0:
            out.append("no sample taken")
        if self.violations:
            out.append(f"{len(self.violations)} samples beyond the cap outside a grace (about "
                       f"{len(self.violations) * self.seconds / max(1, self.samples):.1f} s), the first {self.violations[0]}")
        long_graces = [g for g in self.graces if g > self.grace_limit]
        if long_graces:
            out.append(f"outside-move grace over {self.grace_limit}s: {[round(g, 2) for g in long_graces]}")
        if self.duplicates:
            out.append(f"client order ids used for more than one order: {dict(list(self.duplicates.items())[:10])}")
        if self.settled is False:
            out.append(f"not settled after the faults stopped (orphans or in flight): {self.settle_detail}")
        if self.open_after_stop:
            out.append(f"{self.open_after_stop} open orders at the exchange after the stop")
        return out

    def explain(self) -> str:
        head = f"seed {self.seed}: " + "; ".join(self.problems())
        out = head + "\nactions:\n" + "\n".join(self.log)
        if self.violations:
            out += "\nsamples beyond the cap:\n" + "\n".join(self.violations[:40])
        for g, trace in zip(self.graces, self.grace_traces):
            if g > self.grace_limit:
                out += f"\nsamples in a {g:.2f} s grace:\n" + "\n".join(trace)
        return out

    def lines(self) -> list[str]:
        frac = lambda x: "n/a" if not math.isfinite(x) else f"{x:.3f}"  # noqa: E731
        kinds = ", ".join(f"{k} {n}" + (f" ({self.unused[k]} unused)" if self.unused.get(k) else "")
                          for k, n in sorted(self.injected.items()))
        return [
            f"  faults injected             {sum(self.injected.values())} ({kinds})",
            f"  late writes at the exchange executed {self.late_outcomes.get('late_executed', 0)}, "
            f"expired {self.late_outcomes.get('late_expired', 0)}, rejected {self.late_outcomes.get('late_rejected', 0)}",
            f"  samples of /sim/state       {self.samples} ({self.seconds / max(1, self.samples) * 1000:.0f} ms apart)",
            f"  max worst case / cap        {frac(self.max_frac)} outside the outside-move grace, "
            f"{frac(self.max_frac_all)} overall (cap {self.cap.normalize()})",
            f"  outside-move graces         {len(self.graces)}, longest {max(self.graces, default=0):.2f} s; then the "
            f"position itself beyond the cap for {self.beyond_seconds:.1f} s (nothing adding allowed)",
            f"  cap violations              {len(self.violations)}",
            f"  orphan-seconds              {self.orphan_seconds:.2f} (longest {self.longest_orphan[1]:.2f} s"
            + (f": {self.longest_orphan[0]})" if self.longest_orphan[0] else ")"),
            f"  duplicate client order ids  {len(self.duplicates)} of {self.ids_seen}",
            f"  settled after the faults    {'yes' if self.settled else 'NO'} in {self.settle_seconds:.1f} s",
            f"  open orders after stop      {self.open_after_stop}",
        ]


class Soak:
    """Injects a schedule, samples the exchange, checks; see the module docstring."""

    def __init__(self, rest_url: str, api_key: str, api_secret: str, symbol: str, cap: float | Decimal,
                 step: Decimal | str, probe: Probe | None = None, *, account: str = "main", interval: float = 0.05,
                 grace_limit: float = 5.0, seed: int | None = None) -> None:
        self.rest_url = rest_url.rstrip("/")
        self.client = SimClient(rest_url, api_key, api_secret)
        self.symbol = symbol
        self.account = account
        self.step = Decimal(str(step))
        # the cap in whole steps, as the client's float cap means it (0.22999999999999998 is 230 steps of 0.001)
        self.cap = (Decimal(str(cap)) / self.step + Decimal("1e-9")).to_integral_value(ROUND_DOWN) * self.step
        self.probe = probe
        self.interval = interval
        self.report = Report(seed, symbol, self.cap, grace_limit=grace_limit)
        self.ids: dict[str, set[int]] = defaultdict(set)
        self._grace: Grace | None = None
        self._allow = (self.cap, -self.cap)  # worst long may reach hi, worst short lo
        self._orphan_since: dict[str, float] = {}
        self._sampler: asyncio.Task | None = None
        self._t0 = time.monotonic()
        self._http: aiohttp.ClientSession | None = None
        self.last_state: dict | None = None

    async def __aenter__(self) -> "Soak":
        self._http = aiohttp.ClientSession()
        self._sampler = asyncio.create_task(self._sample_loop())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stop_sampler()
        await self.client.close()
        if self._http is not None:
            await self._http.close()

    # ------------------------------------------------------------------ admin I/O

    async def state(self) -> dict:
        assert self._http is not None
        async with self._http.get(f"{self.rest_url}/sim/state",
                                  params={"account": self.account, "symbol": self.symbol}) as r:
            if r.status != 200:
                raise AssertionError(f"/sim/state -> {r.status}: {await r.text()}")
            return await r.json()

    async def post(self, path: str, body: dict) -> Any:
        assert self._http is not None
        async with self._http.post(f"{self.rest_url}{path}", json=body) as r:
            data = await r.json(content_type=None)
            if r.status != 200:
                raise AssertionError(f"POST {path} {body} -> {r.status}: {data}")
            return data

    def _t(self) -> float:
        return time.monotonic() - self._t0

    # ------------------------------------------------------------------ sampling

    async def _sample_loop(self) -> None:
        nxt = time.monotonic()
        prev = None
        while True:
            start = time.monotonic()
            before = self.probe.orders() if self.probe else None
            st = await self.state()
            after = self.probe.orders() if self.probe else None
            gap = self.interval if prev is None else start - prev
            prev = start
            self._check(st, start, gap, before, after)
            nxt += self.interval
            await asyncio.sleep(max(0.0, nxt - time.monotonic()))
            if nxt < time.monotonic() - 1.0:  # fell far behind (a loaded machine): do not burst to catch up
                nxt = time.monotonic()

    def _check(self, st: dict, sent: float, gap: float, before: dict | None, after: dict | None) -> None:
        self.last_state = st
        r = self.report
        r.samples += 1
        pos = Decimal(st["positions"][self.symbol]["amount"])
        wl, ws = worst_long(st, self.symbol), worst_short(st, self.symbol)
        frac = float(max(wl, -ws) / self.cap)
        r.max_frac_all = max(r.max_frac_all, frac)
        g = self._grace
        if g is not None and g.ended is None:
            # the grace ends once nothing that adds beyond the cap rests: fills of what rested when the
            # position moved may have carried the position itself past the cap, where only fills the
            # other way bring it back
            hi, lo = max(self.cap, pos), min(-self.cap, pos)
            if len(g.trace) < 400:
                g.trace.append(f"{_clock()} pos {pos} worst {ws}..{wl} open " + " ".join(
                    f"{o['side'][0]}{o['origQty']}@{o['price']}" for o in st["open_orders"])
                    + (f" deferred {len(st['deferred'])}" if st["deferred"] else ""))
            earlier = [d for d in st.get("deferred") or ()  # written before the move, may still execute
                       if g.armed_ms is not None and d["expires_ms"] - RECV_WINDOW_MS <= g.armed_ms]
            if g.armed is not None and sent >= g.armed and wl <= hi and ws >= lo and not earlier:
                self._end_grace(sent)
                self._allow = (hi, lo)
            else:  # within the grace: exempt
                self._ids_and_orphans(st, sent, gap, before, after)
                return
        # outside a grace: the cap, or the position an outside move left beyond it while that lasts
        # (it only shrinks back towards the cap: nothing may add to it)
        hi, lo = self._allow
        hi, lo = max(self.cap, min(hi, pos)), min(-self.cap, max(lo, pos))
        self._allow = (hi, lo)
        if hi > self.cap or lo < -self.cap:
            r.beyond_seconds += gap
        else:
            r.max_frac = max(r.max_frac, frac)
        if wl > hi or ws < lo:
            r.violations.append(
                f"at {sent - self._t0:.2f}s ({_clock()}): worst long {wl}, worst short {ws}, allowed {lo}..{hi} "
                f"(cap {self.cap}); position {pos}; open "
                f"{sorted((o['side'], o['price'], o['origQty'], o['executedQty'], o['clientOrderId']) for o in st['open_orders'])}"
                f"; deferred {st.get('deferred')}")
        self._ids_and_orphans(st, sent, gap, before, after)

    def _ids_and_orphans(self, st: dict, sent: float, gap: float, before: dict | None, after: dict | None) -> None:
        r = self.report
        for o in st["open_orders"]:
            self.ids[o["clientOrderId"]].add(int(o["orderId"]))
        if before is not None and after is not None:
            tracked = before.keys() | after.keys()
            untracked = [o["clientOrderId"] for o in st["open_orders"] if o["clientOrderId"] not in tracked]
            r.orphan_seconds += len(untracked) * gap
            now = sent
            for cid in untracked:
                since = self._orphan_since.setdefault(cid, now)
                if now - since + gap > r.longest_orphan[1]:
                    r.longest_orphan = (cid, now - since + gap)
            for cid in list(self._orphan_since):
                if cid not in untracked:
                    del self._orphan_since[cid]

    def _end_grace(self, when: float) -> None:
        g = self._grace
        if g is not None and g.ended is None:
            g.ended = when
            self.report.graces.append(g.seconds)
            self.report.grace_traces.append(g.trace)

    async def _stop_sampler(self) -> None:
        if self._sampler is not None:
            self._sampler.cancel()
            await asyncio.gather(self._sampler, return_exceptions=True)
            self._sampler = None

    def _sampler_alive(self) -> None:
        if self._sampler is not None and self._sampler.done():
            self._sampler.result()  # raise what stopped it

    # ------------------------------------------------------------------ the run

    async def run(self, actions: list[Action], seconds: float | None = None) -> None:
        """Do each action on time (relative to now); return once ``seconds`` (default: the last
        action) have passed. The sampler runs throughout."""
        start = time.monotonic()
        self._t0 = start
        end = start + (seconds if seconds is not None else (actions[-1].at if actions else 0.0))
        for a in actions:
            await asyncio.sleep(max(0.0, start + a.at - time.monotonic()))
            self._sampler_alive()
            await self.do(a)
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        self._sampler_alive()
        self.report.seconds = time.monotonic() - start

    async def do(self, a: Action) -> Any:
        if a.kind == "position":
            self._end_grace(time.monotonic())  # superseded by this move
            self._grace = Grace(time.monotonic())
        reply = await self.post(a.path, a.body)
        if a.kind == "position":
            assert self._grace is not None
            self._grace.armed = time.monotonic()
            self._grace.armed_ms = int(time.time() * 1000)
        if a.kind != "unfreeze":
            self.report.injected[a.kind] += 1
        if isinstance(reply, dict) and reply.get("dropped") == 0:
            self.report.unused[a.kind] += 1  # no such connection at that moment (already reconnecting)
        note = "" if reply in ({"ok": True}, ) or (isinstance(reply, dict) and "pending" in reply) else f" -> {reply}"
        self.report.log.append(f"{a} (done at {self._t():.2f}s, {_clock()}){note}")
        return reply

    async def settle(self, timeout: float = 30.0) -> bool:
        """Faults off (REST faults cleared, market unfrozen); then wait until the probe's open orders
        (and position) equal the exchange's with nothing in flight. False, with the detail, if not."""
        st = await self.state()
        for f in st["faults_pending"]:
            self.report.unused[rest_kind(f)] += 1
        for f in st.get("frame_faults_pending", ()):
            self.report.unused[next((f"frame/{n}" for n, b in FRAMES.items()
                                     if all(f.get(k) == v for k, v in b.items())), "frame")] += 1
        await self.post("/sim/fault/clear", {})
        await self.post("/sim/market/freeze", {"frozen": False, "symbol": self.symbol, "mode": "data"})
        t0 = time.monotonic()
        ok = False
        detail = ""
        while time.monotonic() - t0 < timeout:
            self._sampler_alive()
            if self.probe is None:
                ok = True
                break
            st = await self.state()
            ours = self.probe.orders()
            theirs = exchange_open(st, self.step)
            pos_ok = True
            if self.probe.position_steps is not None:
                pos_ok = Decimal(st["positions"][self.symbol]["amount"]) == self.probe.position_steps() * self.step
            flying = self.probe.in_flight()
            if ours == theirs and pos_ok and flying == 0 and not st["deferred"]:
                ok = True
                break
            detail = (f"exchange {theirs} position {st['positions'][self.symbol]['amount']}; client {ours} "
                      f"position steps {self.probe.position_steps() if self.probe.position_steps else None}; "
                      f"in flight {flying}; deferred {st['deferred']}")
            await asyncio.sleep(0.1)
        self.report.settled = ok
        self.report.settle_seconds = time.monotonic() - t0
        self.report.settle_detail = detail if not ok else ""
        self._end_grace(time.monotonic())
        self.report.late_outcomes = {k: v for k, v in st["server"].items() if k.startswith("late_")}
        return ok

    async def finish(self, stopped_within: float = 5.0) -> Report:
        """After the client stopped: its orders left open at the exchange (once no late write is
        pending), every client id's orderIds from allOrders; the report."""
        await self._stop_sampler()
        deadline = time.monotonic() + stopped_within
        st = await self.state()
        while st["deferred"] and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            st = await self.state()
        self.report.open_after_stop = len(st["open_orders"])
        for o in st["open_orders"]:
            self.ids[o["clientOrderId"]].add(int(o["orderId"]))
        for o in await self.all_orders():
            self.ids[o["clientOrderId"]].add(int(o["orderId"]))
        self.report.ids_seen = len(self.ids)
        self.report.duplicates = {cid: sorted(ids) for cid, ids in self.ids.items() if len(ids) > 1}
        return self.report

    async def all_orders(self) -> list[dict]:
        """Every order the exchange remembers for the symbol (paged back by time, 1000 at a time)."""
        seen: dict[int, dict] = {}
        end: int | None = None
        while True:
            params: dict[str, Any] = {"symbol": self.symbol, "limit": 1000}
            if end is not None:
                params["endTime"] = end
            reply = await self.client.signed("GET", "/fapi/v1/allOrders", params)
            if reply.status != 200:
                raise AssertionError(f"allOrders -> {reply.status}: {reply.json}")
            rows = reply.json
            for o in rows:
                seen[int(o["orderId"])] = o
            if len(rows) < 1000:
                break
            oldest = min(int(o["time"]) for o in rows)
            if end is not None and oldest >= end:
                break  # 1000 orders in one millisecond: nothing older is reachable this way
            end = oldest
        return list(seen.values())
