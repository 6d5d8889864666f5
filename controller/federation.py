"""Merging the agents' Prometheus expositions into the fleet's one ``/metrics`` page.

Each agent renders its own registry; the Serve endpoint fetches them all and this module, pure and
I/O-free, turns them into a single page: every series labelled by symbol, one HELP/TYPE per family,
counters keep ``_total``, ``_created`` series are dropped, and fleet series say which agents answered.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from prometheus_client import generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from agents.metrics import SEED_METRICS
from fleet.vocabulary import KillState

# The seed's twelve metric names (SEED-EN, requirement 10): none may disappear from the page.
SEED_METRIC_NAMES: tuple[str, ...] = SEED_METRICS

# Upper bounds (seconds) of the kill-latency histogram: the aim is p99 under 250 ms at 50 symbols.
KILL_LATENCY_BUCKETS: tuple[float, ...] = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

_SYMBOL_LABEL = "symbol"


@dataclass(frozen=True)
class AgentScrape:
    """One agent's answer to a metrics request: its exposition, or why there is none."""

    symbol: str
    exposition: str | None
    error: str | None = None
    elapsed_s: float = 0.0

    @property
    def answered(self) -> bool:
        return self.exposition is not None and self.error is None


@dataclass(frozen=True)
class KillLatency:
    """Cumulative histogram of kill latencies seen by this endpoint; immutable, ``observe`` returns a new one."""

    bucket_counts: tuple[int, ...] = (0,) * len(KILL_LATENCY_BUCKETS)
    count: int = 0
    total_s: float = 0.0

    def observe(self, seconds: float) -> KillLatency:
        counts = tuple(
            c + (1 if seconds <= bound else 0) for c, bound in zip(self.bucket_counts, KILL_LATENCY_BUCKETS)
        )
        return KillLatency(counts, self.count + 1, self.total_s + seconds)


@dataclass(frozen=True)
class FleetView:
    """What the fleet series describe besides the agents' own metrics."""

    fleet: str
    symbols: tuple[str, ...]                      # the symbols the fleet is configured to trade
    kill_states: Mapping[str, str] = field(default_factory=dict)
    restarts: Mapping[str, int] = field(default_factory=dict)
    kill_latency: KillLatency = KillLatency()
    controller_up: bool = True


@dataclass(frozen=True)
class MergedPage:
    """The merged exposition plus what was left out of it and why (for logs and tests)."""

    body: bytes
    dropped: tuple[str, ...]


def _parse(scrape: AgentScrape) -> list[Metric]:
    """Parse the whole exposition first, so that a page broken half-way contributes nothing."""
    return list(text_string_to_metric_families(scrape.exposition or ""))


def _counter_sample_name(family: Metric, sample_name: str) -> str:
    """Counters are exposed as ``<family>_total``; a bare sample is normalised to that."""
    if family.type == "counter" and sample_name == family.name:
        return family.name + "_total"
    return sample_name


def _is_created(family: Metric, sample_name: str) -> bool:
    return sample_name == family.name + "_created"


def _created_family_names(families: Iterable[Metric]) -> set[str]:
    """Families that are only the ``_created`` timestamps of a counter, histogram or summary."""
    fams = list(families)
    owners = {f.name for f in fams if f.type in ("counter", "histogram", "summary")}
    return {f.name for f in fams if f.name.endswith("_created") and f.name[: -len("_created")] in owners}


def merge_expositions(scrapes: Iterable[AgentScrape]) -> tuple[list[Metric], list[str]]:
    """Merge agents' families; return the families and a list of what was dropped and why.

    The first agent to describe a family fixes its HELP and TYPE; a later agent whose family has
    another type is dropped for that family (reported), so the page always parses.
    """
    merged: dict[str, Metric] = {}
    dropped: list[str] = []
    for scrape in scrapes:
        if not scrape.answered:
            continue
        try:
            families = _parse(scrape)
        except (ValueError, IndexError, TypeError) as exc:
            dropped.append(f"{scrape.symbol}: unparseable exposition ({_first_line(exc)})")
            continue
        created = _created_family_names(families)
        for fam in families:
            if fam.name in created:
                continue
            out = merged.get(fam.name)
            if out is None:
                out = merged[fam.name] = Metric(fam.name, fam.documentation, fam.type)
            elif out.type != fam.type:
                dropped.append(
                    f"{scrape.symbol}: family {fam.name} is a {fam.type}, the fleet page has it as {out.type}"
                )
                continue
            for s in fam.samples:
                if _is_created(fam, s.name):
                    continue
                labels = {**s.labels, _SYMBOL_LABEL: scrape.symbol}
                out.add_sample(_counter_sample_name(fam, s.name), labels, s.value, s.timestamp, s.exemplar)
    return list(merged.values()), dropped


def fleet_families(view: FleetView, scrapes: Iterable[AgentScrape]) -> list[Metric]:
    """The fleet's own series: agents up, halted, restarts, scrape health, kill latency."""
    by_symbol = {s.symbol: s for s in scrapes}
    symbols = sorted(set(view.symbols) | set(by_symbol))
    expected, up_total, up, scrape_s = _agent_families(view, by_symbol, symbols)
    halted_total, halted = _halted_families(view, symbols)

    restarts = _gauge("mmfleet_agent_restarts", "Times Ray restarted the symbol's agent actor.")
    for sym in symbols:
        if sym in view.restarts:
            restarts.add_sample("mmfleet_agent_restarts", {_SYMBOL_LABEL: sym}, float(view.restarts[sym]))

    controller = _gauge("mmfleet_controller_up", "1 if the fleet controller answered.")
    controller.add_sample("mmfleet_controller_up", {"fleet": view.fleet}, 1.0 if view.controller_up else 0.0)

    latency = _kill_latency_family(view.kill_latency)
    return [expected, up_total, up, scrape_s, halted_total, halted, restarts, controller, latency]


def _gauge(name: str, doc: str) -> Metric:
    return Metric(name, doc, "gauge")


def _agent_families(view: FleetView, by_symbol: Mapping[str, AgentScrape], symbols: list[str]) -> list[Metric]:
    """Agents expected and up (fleet), up and scrape time per symbol."""
    expected = _gauge("mmfleet_agents_expected", "Symbols the fleet is configured to trade.")
    expected.add_sample("mmfleet_agents_expected", {"fleet": view.fleet}, float(len(view.symbols)))

    up_total = _gauge("mmfleet_agents_up", "Agents that answered the metrics request.")
    up_total.add_sample(
        "mmfleet_agents_up", {"fleet": view.fleet}, float(sum(1 for s in by_symbol.values() if s.answered))
    )

    up = _gauge("mmfleet_agent_up", "1 if the symbol's agent answered the metrics request, else 0.")
    scrape_s = _gauge("mmfleet_agent_scrape_seconds", "Time the symbol's agent took to answer (or time waited).")
    for sym in symbols:
        s = by_symbol.get(sym)
        # fleet too: the symbols of one fleet, for dashboards' and alerts' selectors
        up.add_sample(
            "mmfleet_agent_up", {_SYMBOL_LABEL: sym, "fleet": view.fleet}, 1.0 if s is not None and s.answered else 0.0
        )
        if s is not None:
            scrape_s.add_sample("mmfleet_agent_scrape_seconds", {_SYMBOL_LABEL: sym}, s.elapsed_s)
    return [expected, up_total, up, scrape_s]


def _halted_families(view: FleetView, symbols: list[str]) -> list[Metric]:
    """Symbols halted or flattening by kill switch: the fleet's count and one series per symbol."""
    halted_total = _gauge("mmfleet_agents_halted", "Symbols halted or flattening by kill switch.")
    halted_total.add_sample(
        "mmfleet_agents_halted",
        {"fleet": view.fleet},
        float(sum(1 for sym in view.symbols if KillState.stopped(view.kill_states.get(sym)))),
    )
    halted = _gauge("mmfleet_symbol_halted", "1 if the symbol is halted or flattening by kill switch.")
    for sym in symbols:
        if sym in view.kill_states:
            halted.add_sample(
                "mmfleet_symbol_halted",
                {_SYMBOL_LABEL: sym, "kill_state": view.kill_states[sym]},
                1.0 if KillState.stopped(view.kill_states[sym]) else 0.0,
            )
    return [halted_total, halted]


def _kill_latency_family(lat: KillLatency) -> Metric:
    latency = Metric(
        "mmfleet_kill_latency_seconds",
        "HTTP kill latency: request to every symbol confirmed with 0 open orders at the exchange.",
        "histogram",
    )
    for bound, count in zip(KILL_LATENCY_BUCKETS, lat.bucket_counts):
        latency.add_sample("mmfleet_kill_latency_seconds_bucket", {"le": _le(bound)}, float(count))
    latency.add_sample("mmfleet_kill_latency_seconds_bucket", {"le": "+Inf"}, float(lat.count))
    latency.add_sample("mmfleet_kill_latency_seconds_count", {}, float(lat.count))
    latency.add_sample("mmfleet_kill_latency_seconds_sum", {}, lat.total_s)
    return latency


def render_fleet_page(view: FleetView, scrapes: Iterable[AgentScrape]) -> MergedPage:
    """The whole ``/metrics`` page: fleet series first, then every agent family merged."""
    scrapes = list(scrapes)
    agent_families, dropped = merge_expositions(scrapes)
    fleet = fleet_families(view, scrapes)
    reserved = {f.name for f in fleet}
    for fam in agent_families:
        if fam.name in reserved:
            dropped.append(f"agents' family {fam.name} clashes with a fleet series")
    families = fleet + [f for f in agent_families if f.name not in reserved]
    return MergedPage(generate_latest(_StaticCollector(tuple(families))), tuple(dropped))


@dataclass(frozen=True, eq=False)
class _StaticCollector:
    """Hands prepared families to ``generate_latest``, which only needs something with ``collect``."""

    families: tuple[Metric, ...]

    def collect(self) -> Iterable[Metric]:
        return iter(self.families)


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]
