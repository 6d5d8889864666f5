"""One simulated run: the agents' own code against the in-process exchange on a simulated clock.

Per symbol a :class:`~agents.agent.SymbolAgent` (core, gate, watchdog, reconciliation, lease and
dead-man timing, grinding and drawdown, all unchanged) runs with an injected
:class:`~simulate.clock.SimClock` and :class:`~simulate.transport.LocalTransport`; the exchange is
:class:`fleet.sim.local.LocalExchange` on the same :class:`~simulate.clock.VirtualTimeLoop`. Nothing
waits on the wall clock, so a run costs only its work, and a seed gives the same numbers every time
(the engine's, the agents' back-off jitter and the loop's order are all seeded or deterministic).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from agents.agent import SymbolAgent
from agents.agent_base import ExchangeEndpoints
from agents.ownership import Grant
from fleet.config import FleetConfig, symbol_params
from fleet.sim.config import SimConfig, load_sim_config
from fleet.sim.local import LocalExchange
from fleet.vocabulary import KillState
from simulate import params as overrides_of
from simulate.clock import SimClock, run_simulated
from simulate.observe import SymbolWatch
from simulate.result import RunResult
from simulate.schedule import Event, ScheduleError, check_routes, play
from simulate.transport import SIM_URL, LocalTransport

START_MS = 1_767_225_600_000  # 2026-01-01 00:00:00 UTC: funding at 00/08/16 falls on whole hours of the run
IP = "127.0.0.1"
# the agent's own counters a run's table shows (how often its fault handling acted)
AGENT_COUNTERS = ("user_stream_reconnects", "market_stream_reconnects", "resyncs", "unknown_outcomes",
                  "unknown_outcomes_resolved", "listen_key_expired", "stale_market_pulls", "reconcile_repairs",
                  "owner_asks", "margin_holds", "margin_calls")


@dataclass
class RunOptions:
    """What to run and how the exchange is modelled."""

    hours: float = 48.0
    seed: int = 7
    symbols: list[str] | None = None  # None: every symbol of the fleet config
    rest_latency_ms: float = 2.0  # a REST round trip (half each way)
    stream_latency_ms: float = 1.0  # a frame from the engine to the agent
    sim_config: SimConfig | dict[str, Any] | str | None = None  # None: the fleet config's simulator's
    schedule: list[Event] = field(default_factory=list)
    start_ms: int = START_MS
    points: int = 20_000  # rows of the series kept per symbol (the table uses every second)
    progress: Callable[[float, float], None] | None = None  # (simulated hours done, wall seconds)


class LocalLease:
    """The fleet's lease, in-process: an epoch per acquire, renewed every second for three (as the
    controller's defaults); the renewals run on the agent's own timer like live ones."""

    renew_interval_s = 1.0

    def __init__(self, ttl_s: float = 3.0) -> None:
        self.ttl_s = ttl_s
        self.epoch = 0

    async def acquire(self) -> Grant:
        self.epoch += 1
        return Grant(epoch=self.epoch, lease_ttl_s=self.ttl_s, kill_state=KillState.RUNNING)

    async def renew(self) -> Grant:
        return Grant(epoch=self.epoch, lease_ttl_s=self.ttl_s, kill_state=KillState.RUNNING)

    async def release(self) -> None:
        return None


class LogCount(logging.Handler):
    """Counts the agents' warnings and errors (the run's log is quiet) and keeps the last few."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts = {"WARNING": 0, "ERROR": 0, "CRITICAL": 0}
        self.last: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[record.levelname] = self.counts.get(record.levelname, 0) + 1
        self.last = (self.last + [f"{record.levelname} {record.getMessage()[:300]}"])[-20:]


def replay_start_ms(directory: str | Path, symbols: list[str] | None = None) -> int:
    """The first line of a recording (of ``symbols``): a run that starts its clock there replays the
    recorded times unchanged (funding at the recorded hours)."""
    from fleet.sim.recording import ReadStats, Recording

    rec = Recording(directory)
    missing = [s for s in symbols or [] if s not in rec.symbols]
    if missing:
        raise ValueError(f"replay: the recording {directory} holds {', '.join(rec.symbols) or 'no symbol'}, "
                         f"not {', '.join(missing)}")
    stats = ReadStats(quiet=True)
    for line in rec.events(symbols or rec.symbols, stats):
        return line[0]
    skipped = ", ".join(f"{n:,} {k.replace('_', ' ')}" for k, n in stats.view().items() if n)
    raise ValueError(f"replay: the recording {directory} holds no line of {', '.join(symbols or rec.symbols)} "
                     f"it can read" + (f" (skipped: {skipped})" if skipped else "")
                     + (f"; the first malformed: {stats.first_bad[:200]}" if stats.first_bad else ""))


def sim_config_for(cfg: FleetConfig, opts: RunOptions) -> SimConfig:
    if opts.sim_config is not None:
        return load_sim_config(opts.sim_config)
    if cfg.exchange.kind == "sim" and cfg.exchange.sim.config:
        return load_sim_config(cfg.exchange.sim.config)
    return SimConfig()


def simulate(cfg: FleetConfig, config_path: str | Path, opts: RunOptions,
             overrides: dict[str, Any] | None = None, *, verbose: bool = False) -> RunResult:
    """Run ``opts.hours`` simulated hours; returns the table and series of every symbol."""
    return run_simulated(_simulate(cfg, Path(config_path), opts, overrides or {}, verbose))


async def _simulate(cfg: FleetConfig, config_path: Path, opts: RunOptions, overrides: dict[str, Any],
                    verbose: bool) -> RunResult:
    wall0 = time.perf_counter()
    clock = SimClock(asyncio.get_running_loop(), opts.start_ms)
    symbols = [s.upper() for s in opts.symbols] if opts.symbols else [e.symbol for e in cfg.symbols]
    ex = LocalExchange(clock_ms=clock.time_ms, symbols=symbols, seed=opts.seed, config=sim_config_for(cfg, opts),
                       stream_latency_ms=opts.stream_latency_ms)
    check_routes(opts.schedule, ex.routes)   # (before a timer runs: refused, not left pending unseen)
    logs = LogCount()
    logger = _quiet_logger(logs, verbose)
    every = max(1, math.ceil(opts.hours * 3600.0 / max(opts.points, 1)))
    agents, watches = _agents(cfg, config_path, opts, overrides, ex, clock, logger, every)
    _observe(ex, watches)
    start = clock.monotonic()
    living = [asyncio.create_task(ex.run(), name="exchange")]
    living += [asyncio.create_task(a.run(), name=f"agent {a.symbol}") for a in agents]
    living.append(asyncio.create_task(_play_to_the_end(opts.schedule, ex, clock, start), name="schedule"))
    tasks = living + [asyncio.create_task(_sample(ex, clock, agents, watches), name="sampler")]
    if opts.progress is not None:
        tasks.append(asyncio.create_task(_progress(opts, clock, start, wall0), name="progress"))
    ended, _ = await asyncio.wait(living, timeout=opts.hours * 3600.0, return_when=asyncio.FIRST_COMPLETED)
    for a in agents:
        await a.stop()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for t in ended:  # nothing of the run may end before it: an agent or the exchange that did is a failure
        exc = None if t.cancelled() else t.exception()
        if isinstance(exc, ScheduleError):   # an event that failed: said as such
            raise exc
        raise RuntimeError(f"the simulated run's {t.get_name()} ended after "
                           f"{(clock.monotonic() - start) / 3600.0:.3f} simulated h: {exc!r}") from exc
    results = [w.result(opts.hours, ex.engine, a.core.grinding.count_total if a.core else 0,
                        float(a.core.grinding.cost_saved) if a.core else 0.0) for a, w in zip(agents, watches)]
    for r, a, w in zip(results, agents, watches):
        r.table["open_orders_after_stop"] = len(ex.engine.open_orders(w.account, a.symbol))
        for name in AGENT_COUNTERS:
            r.table[name] = a.counters.get(name, 0)
        r.table["liquidations"] = a.core.store.liquidations if a.core else 0
        r.table["quote_cycles"] = a.core.cycles if a.core else 0
        # the limiter's own most (each second's look missed a fixed window's last second: 403 for 406)
        r.table["orders_10s_max"], r.table["orders_1m_max"], r.table["weight_1m_max"] = ex.limiter.peaks(IP, w.account)
    for r in results:
        r.table["stream_connections"] = ex.opened["market"] + ex.opened["user"]
        r.table["warnings_logged"] = logs.counts["WARNING"]
        r.table["errors_logged"] = logs.counts["ERROR"] + logs.counts["CRITICAL"]
    events = ex.engine.events_emitted + ex.stats["rest_requests"] + ex.engine._step_count
    return RunResult(opts.seed, opts.hours, dict(overrides), results, events, time.perf_counter() - wall0,
                     list(logs.last), ex.engine.replay.view() if ex.engine.replay is not None else None)


def _quiet_logger(counter: LogCount, verbose: bool) -> logging.Logger:
    logger = logging.getLogger("mmfleet.simulate.agent")
    logger.handlers = [counter] + ([logging.StreamHandler(sys.stderr)] if verbose else [])
    logger.setLevel(logging.INFO if verbose else logging.WARNING)
    logger.propagate = False
    return logger


def _agents(cfg: FleetConfig, config_path: Path, opts: RunOptions, overrides: dict[str, Any], ex: LocalExchange,
            clock: SimClock, logger: logging.Logger, every: int) -> tuple[list[SymbolAgent], list[SymbolWatch]]:
    agents, watches = [], []
    keys = {name: (key, secret) for name, key, secret in ex.accounts}
    entries = {e.symbol: e for e in cfg.symbols}
    for symbol in (b.symbol for b in ex.engine.books.values()):
        entry = entries.get(symbol)
        if entry is None:
            raise ValueError(f"{symbol} is not in the fleet config {config_path}")
        if entry.account not in keys:
            raise ValueError(f"{symbol}: the simulator has no account {entry.account!r} (its accounts: {sorted(keys)})")
        params = overrides_of.apply(cfg, symbol, symbol_params(cfg, symbol, config_path), overrides)
        key, secret = keys[entry.account]
        agents.append(SymbolAgent(
            fleet_name=cfg.name, symbol=symbol, params=params, runtime=cfg.runtime,
            endpoints=ExchangeEndpoints(SIM_URL, SIM_URL, SIM_URL), credentials=None, ownership=LocalLease(),
            logger=logger, clock=clock, rng=random.Random(f"{opts.seed}:{symbol}:agent"),
            transport=LocalTransport(ex, key, secret, clock=clock, rest_latency_ms=opts.rest_latency_ms)))
        watches.append(SymbolWatch(symbol, entry.account, params.worst_cap, params.model_dump(), every,
                                   start_ms=clock.time_ms()))
    return agents, watches


def _observe(ex: LocalExchange, watches: list[SymbolWatch]) -> None:
    by_symbol = {(w.account, w.symbol): w for w in watches}

    def on_fill(b: Any, o: Any, qty: int, price: int, maker: bool, t: int, commission: Any, realized: Any) -> None:
        w = by_symbol.get((o.account, b.symbol))
        if w is not None:
            w.on_fill(b, o, qty, price, maker, commission)

    def on_user_frame(account: str, frame: dict[str, Any]) -> None:
        if frame.get("e") == "ORDER_TRADE_UPDATE":
            o = frame["o"]
            w = by_symbol.get((account, o.get("s")))
            if w is not None:
                w.on_order_frame(o, frame.get("T", 0))

    ex.engine.on_fill = on_fill
    ex.on_user_frame = on_user_frame


async def _play_to_the_end(events: list[Any], ex: LocalExchange, clock: SimClock, start: float) -> None:
    """The schedule, then nothing until the run ends: an event that fails ends the run (named)."""
    await play(events, ex, clock, start)
    await asyncio.get_running_loop().create_future()


async def _sample(ex: LocalExchange, clock: SimClock, agents: list[SymbolAgent], watches: list[SymbolWatch]) -> None:
    limiter = ex.limiter
    while True:
        await asyncio.sleep(1.0)
        now = clock.time_ms()
        weight = limiter.used_weight(IP, now)
        for a, w in zip(agents, watches):
            w.sample(now, a, ex.engine, limiter.order_counts(w.account, now), weight)


async def _progress(opts: RunOptions, clock: SimClock, start: float, wall0: float) -> None:
    step = max(opts.hours * 3600.0 / 100.0, 1.0)
    assert opts.progress is not None
    while True:
        await asyncio.sleep(step)
        opts.progress((clock.monotonic() - start) / 3600.0, time.perf_counter() - wall0)
