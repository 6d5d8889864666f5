"""Faults and market events scheduled in a simulated run, from a small YAML file.

A list of events, each with a time from the run's start (``at``: seconds, or ``90s``, ``15m``,
``2h``) and what happens (``do``)::

    - {at: 2h, do: drop, target: user}              # streams cut (market | user | all)
    - {at: 3h, do: rest_fault, mode: late, count: 3, path: /fapi/v1/batchOrders}
    - {at: 4h, do: jump, symbol: ETHUSDC, pct: -2.0}
    - {at: 5h, do: freeze, symbol: ETHUSDC, seconds: 20}   # market data stops, then resumes
    - {at: 6h, do: expire_listen_key}
    - {at: 7h, do: funding_rate, symbol: ETHUSDC, rate: "0.0008"}   # null: wander again
    - {at: 8h, do: latency, ms: 300}                # REST latency from now on (0: back to the config's)
    - {at: 9h, do: delist, symbol: ETHUSDC, in: 2h}   # announced now, settled by the exchange 2 h later
    - {at: 10h, do: funding_interval, symbol: ETHUSDC, hours: 1}   # funding every hour from the next whole hour

``rest_fault`` takes the fields of the simulator's ``POST /sim/fault/rest`` (mode, count, path,
method, answer, status, delay_ms, hold_ms, entries, entry). A bad file is refused before the run
starts, naming the event and the field.
"""

from __future__ import annotations

import asyncio
import math
import re
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fleet import yamlfile
from fleet.sim.config import check_interval_hours
from fleet.sim.admin_input import text
from fleet.sim.faults import check_path, check_reach, parse_fault
from fleet.sim.local import LocalExchange

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}


MAX_LATENCY_MS = 600_000   # as the simulator's POST /sim/fault/latency
MIN_JUMP_PCT, MAX_JUMP_PCT = -99.99, 10_000.0   # as its POST /sim/market/jump
STREAMS_OPEN_S = 1.0   # the agents' streams and listen keys exist by then (their start takes milliseconds)


class ScheduleError(ValueError):
    """The schedule file is unreadable or names a bad event."""


def parse_duration(value: Any) -> float:
    """Seconds from ``90``, ``"90s"``, ``"15m"``, ``"2h"``, ``"1d"``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(f"{value!r} is not a duration (e.g. 90, 90s, 15m, 2h)")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


class Event(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    at: float = Field(..., ge=0, description="seconds from the run's start")
    do: Literal["drop", "rest_fault", "jump", "freeze", "expire_listen_key", "funding_rate", "latency", "delist",
                "funding_interval"]

    @field_validator("at", mode="before")
    @classmethod
    def _duration(cls, v: Any) -> float:
        return parse_duration(v)

    @property
    def args(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def load_schedule(source: str | Path | list[Any] | None) -> list[Event]:
    """Events sorted by time; :class:`ScheduleError` naming the bad event and field."""
    if source is None:
        return []
    data: Any = source
    if isinstance(source, (str, Path)):
        try:
            data = yamlfile.read(source) or []
        except yamlfile.YamlFileError as exc:
            raise ScheduleError(f"schedule {source} {exc}") from None
    if not isinstance(data, list):
        raise ScheduleError("a schedule is a list of events ({at: 2h, do: drop, target: user}, ...)")
    events = []
    for i, item in enumerate(data):
        try:
            ev = Event.model_validate(item)
            _check(ev)
        except ValidationError as exc:
            err = exc.errors()[0]
            field = ".".join(str(p) for p in err["loc"]) or "(event)"
            raise ScheduleError(f"schedule event {i}: {field}: {err['msg']}") from None
        except KeyError as exc:
            raise ScheduleError(f"schedule event {i}: {item.get('do')} needs {exc.args[0]}") from None
        except (ValueError, TypeError) as exc:   # (the event not echoed: aliases may make it huge)
            raise ScheduleError(f"schedule event {i}: {exc}") from None
        events.append(ev)
    return sorted(events, key=lambda e: e.at)


# the fields each kind takes (besides at and do): a misspelt one is refused, not silently defaulted
FIELDS: dict[str, frozenset[str]] = {
    "drop": frozenset({"target", "account"}), "rest_fault": frozenset(),   # (parse_fault names its own)
    "jump": frozenset({"symbol", "pct"}), "freeze": frozenset({"symbol", "seconds", "mode"}),
    "expire_listen_key": frozenset({"account"}), "funding_rate": frozenset({"symbol", "rate"}),
    "latency": frozenset({"ms", "path"}), "delist": frozenset({"symbol", "in"}),
    "funding_interval": frozenset({"symbol", "hours"}),
}


def _finite(value: Any, name: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{name} must be a number") from None
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number")
    if not math.isfinite(x):
        raise ValueError(f"{name} must be a finite number")
    return x


def _check(ev: Event) -> None:
    a = ev.args
    unknown = sorted(set(a) - FIELDS[ev.do]) if ev.do != "rest_fault" else []
    if unknown:
        raise ValueError(f"{ev.do} takes {', '.join(sorted(FIELDS[ev.do])) or 'no fields'}, not {unknown[0][:40]!r}")
    if ev.do == "rest_fault":
        parse_fault(a)
    elif ev.do == "drop" and a.get("target", "all") not in ("market", "user", "all"):
        raise ValueError("target must be market, user or all")
    elif ev.do == "jump" and not MIN_JUMP_PCT <= _finite(a["pct"], "pct") <= MAX_JUMP_PCT:
        raise ValueError(f"pct must be from {MIN_JUMP_PCT:g} to {MAX_JUMP_PCT:g} (the simulator's own bounds on a jump)")
    elif ev.do == "freeze" and not 0 < parse_duration(a.get("seconds", 10)) < math.inf:
        raise ValueError("seconds must be a positive duration")
    elif ev.do == "freeze" and a.get("mode", "data") not in ("data", "price"):
        raise ValueError("mode must be data (the market and its streams stop) or price (the mid holds still)")
    elif ev.do == "latency":
        ms = _finite(a.get("ms", 0), "ms")
        if not 0 <= ms <= MAX_LATENCY_MS or ms != int(ms):
            raise ValueError(f"ms must be a whole number of milliseconds from 0 to {MAX_LATENCY_MS} (0: back to the "
                             f"config's)")
        text(a, "path")
    elif ev.do == "delist" and parse_duration(a.get("in", "1h")) <= 0:
        raise ValueError("in must be a duration after the announcement")
    elif ev.do == "funding_interval":
        check_interval_hours(a.get("hours"))
    elif ev.do == "funding_rate" and a.get("rate") is not None:
        try:
            finite = Decimal(str(a["rate"])).is_finite()
        except ArithmeticError:
            finite = False
        if not finite:
            raise ValueError("rate must be a finite decimal, or null to wander again")


def check_run(events: list[Event], symbols: list[str], hours: float, accounts: list[str] | None = None,
              replay: bool = False) -> None:
    """The events against the run they are for: a symbol it trades, an account it has, a time within it
    (an event after the end would silently never happen), a market that can take it (a replayed one
    moves by its recording alone)."""
    for i, ev in enumerate(events):
        a = ev.args
        if replay and ev.do in ("jump", "funding_interval"):
            raise ScheduleError(f"schedule event {i} ({ev.do}): the run replays a recording, whose market and "
                                f"funding times are the recording's")
        if ev.do in ("drop", "expire_listen_key") and ev.at < STREAMS_OPEN_S:   # (it reached nothing, said nothing)
            raise ScheduleError(f"schedule event {i} ({ev.do}) at {ev.at:g} s comes before the agents' streams and "
                                f"listen keys exist: give {STREAMS_OPEN_S:g} s or later")
        if ev.do == "expire_listen_key" and accounts is not None and "account" not in a and "main" not in accounts:
            raise ScheduleError(f"schedule event {i} ({ev.do}): name the account (the run has no account 'main': "
                                f"{', '.join(accounts)})")
        if "symbol" in FIELDS[ev.do] and str(a.get("symbol", "")).upper() not in symbols:
            raise ScheduleError(f"schedule event {i} ({ev.do}): symbol {str(a.get('symbol'))[:40]!r} is not one of "
                                f"the run's ({', '.join(symbols)})")
        if accounts is not None and a.get("account") is not None and a["account"] not in accounts:
            raise ScheduleError(f"schedule event {i} ({ev.do}): account {str(a['account'])[:40]!r} is not one of "
                                f"the run's ({', '.join(accounts)})")
        if ev.at > hours * 3600.0:
            raise ScheduleError(f"schedule event {i} ({ev.do}) at {ev.at:g} s is after the run's end "
                                f"({hours:g} h)")


def check_routes(events: list[Event], routes: Any) -> None:
    """Each REST fault and latency against the exchange's routes: one no route takes (a misspelt path or
    method, a mode for writes on a read) would wait unseen for good, the run's table not the schedule's."""
    for i, ev in enumerate(events):
        try:
            if ev.do == "rest_fault":
                check_reach(parse_fault(ev.args), routes)
            elif ev.do == "latency":
                check_path(ev.args.get("path"), routes)
        except ValueError as exc:
            raise ScheduleError(f"schedule event {i} ({ev.do}): {exc}") from None


def _symbol(ex: LocalExchange, args: dict[str, Any]) -> str:
    return ex.engine.book(args.get("symbol")).symbol


def apply(ev: Event, ex: LocalExchange, now_ms: int) -> None:
    """Carry out one event on the in-process exchange now."""
    a = ev.args
    e = ex.engine
    if ev.do == "drop":
        ex.drop(a.get("target", "all"), a.get("account"))
    elif ev.do == "rest_fault":
        ex.faults.append(parse_fault(a))
    elif ev.do == "jump":
        e.jump(_symbol(ex, a), float(a["pct"]), now_ms)
    elif ev.do == "freeze":
        symbol = _symbol(ex, a)
        e.set_frozen(symbol, True, str(a.get("mode", "data")))
        asyncio.get_running_loop().call_later(parse_duration(a.get("seconds", 10)), e.set_frozen, symbol, False,
                                              str(a.get("mode", "data")))
    elif ev.do == "expire_listen_key":
        e.expire_listen_key(a.get("account", "main"), now_ms)
    elif ev.do == "funding_rate":
        e.set_funding_rate(_symbol(ex, a), a.get("rate"))
    elif ev.do == "latency":
        ms = int(a.get("ms", 0))
        ex.latency = (ms, a.get("path")) if ms else (ex.config.rest_latency_ms, None)
    elif ev.do == "delist":
        e.schedule_delisting(_symbol(ex, a), now_ms + int(parse_duration(a.get("in", "1h")) * 1000), now_ms)
    elif ev.do == "funding_interval":
        e.set_funding_interval(_symbol(ex, a), a["hours"], now_ms)
    ex._flush()


async def play(events: list[Event], ex: LocalExchange, clock: Any, start: float) -> None:
    """Carry out each event at its time (the run's clock, seconds from ``start``); one that fails is a
    :class:`ScheduleError` naming it (the run fails: its table would not be the schedule's)."""
    for i, ev in enumerate(events):
        wait = start + ev.at - clock.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        try:
            apply(ev, ex, clock.time_ms())
        except Exception as exc:  # noqa: BLE001 - any failure of an event ends the run, named
            raise ScheduleError(f"schedule event {i} ({ev.do} at {ev.at:g} s) failed: {type(exc).__name__}: "
                                f"{str(exc)[:300]}") from exc
