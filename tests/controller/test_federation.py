"""The fleet page merges agents' expositions: labelled by symbol, one HELP/TYPE per family, and honest
about agents that did not answer. Agents' pages are rendered here by prometheus_client itself."""

from __future__ import annotations

import re
from collections import Counter as Tally

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from controller.federation import (
    KILL_LATENCY_BUCKETS,
    SEED_METRIC_NAMES,
    AgentScrape,
    FleetView,
    KillLatency,
    render_fleet_page,
    unkilled_seconds,
)

SYMBOLS = ("ETHUSDC", "BTCUSDT", "SOLUSDT")


def agent_exposition(symbol: str, *, worst_long: float = 0.1, grinds: int = 2, label: bool = True) -> str:
    """An agent's own registry as prometheus_client renders it (with ``_created`` series)."""
    reg = CollectorRegistry()
    names = ("symbol",) if label else ()
    lv = (symbol,) if label else ()

    def g(name: str, value: float) -> None:
        m = Gauge(name, f"{name} help", names, registry=reg)
        (m.labels(*lv) if label else m).set(value)

    g("mm_worst_case_long", worst_long)
    g("mm_worst_case_short", 0.05)
    g("mm_dynamic_decay_factor", 0.9)
    g("mm_funding_pnl_acc", -1.25)
    g("mm_predicted_funding_rate", 0.0001)
    grind = Counter("mm_grind_count", "grinds done", names, registry=reg)
    (grind.labels(*lv) if label else grind).inc(grinds)
    g("mm_grind_active", 0)
    g("mm_grind_cost_saved", 3.5)
    g("mm_price_stddev_30m", 0.002)
    g("mm_quote_suppressed", 0)
    g("mm_ws_connected", 1)
    g("mm_rest_fallback_count", 0)
    lat = Histogram("mm_order_ack_seconds", "order ack latency", names, buckets=(0.01, 0.1, 1.0), registry=reg)
    (lat.labels(*lv) if label else lat).observe(0.05)
    return generate_latest(reg).decode()


def view(**kw) -> FleetView:
    return FleetView(fleet="demo", symbols=SYMBOLS, **kw)


def parse(body: bytes) -> list:
    return list(text_string_to_metric_families(body.decode()))


def samples_by_symbol(body: bytes) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for fam in parse(body):
        for s in fam.samples:
            if "symbol" in s.labels:
                out.setdefault(s.labels["symbol"], set()).add(s.name)
    return out


def test_merged_page_parses_and_has_the_twelve_seed_names_for_every_symbol():
    scrapes = [AgentScrape(sym, agent_exposition(sym)) for sym in SYMBOLS]
    page = render_fleet_page(view(), scrapes)
    by_symbol = samples_by_symbol(page.body)
    for sym in SYMBOLS:
        missing = [n for n in SEED_METRIC_NAMES if n not in by_symbol[sym]]
        assert missing == [], f"{sym} lacks {missing}"
    assert page.dropped == ()


def test_one_help_and_type_per_family_and_no_created_series():
    scrapes = [AgentScrape(sym, agent_exposition(sym)) for sym in SYMBOLS]
    text = render_fleet_page(view(), scrapes).body.decode()
    helps = Tally(re.findall(r"^# HELP (\S+)", text, re.M))
    types = Tally(re.findall(r"^# TYPE (\S+)", text, re.M))
    assert helps and all(n == 1 for n in helps.values()), helps
    assert all(n == 1 for n in types.values()), types
    assert "_created" not in text
    assert "# TYPE mm_grind_count_total counter" in text
    for sym in SYMBOLS:
        assert f'mm_grind_count_total{{fleet="demo",symbol="{sym}"}} 2.0' in text


def test_every_series_carries_the_symbol_of_the_agent_it_came_from():
    # An agent that forgot its symbol label still gets one, from the actor it was fetched from.
    scrapes = [AgentScrape(sym, agent_exposition(sym, worst_long=i / 10, label=False)) for i, sym in enumerate(SYMBOLS)]
    fams = {f.name: f for f in parse(render_fleet_page(view(), scrapes).body)}
    worst = {s.labels["symbol"]: s.value for s in fams["mm_worst_case_long"].samples}
    assert worst == {"ETHUSDC": 0.0, "BTCUSDT": 0.1, "SOLUSDT": 0.2}
    for fam in fams.values():
        if fam.name.startswith("mm_"):
            assert all("symbol" in s.labels for s in fam.samples), fam.name


def test_agent_histograms_keep_buckets_count_and_sum_per_symbol():
    scrapes = [AgentScrape(sym, agent_exposition(sym)) for sym in SYMBOLS]
    fams = {f.name: f for f in parse(render_fleet_page(view(), scrapes).body)}
    hist = fams["mm_order_ack_seconds"]
    assert hist.type == "histogram"
    eth = [s for s in hist.samples if s.labels["symbol"] == "ETHUSDC"]
    assert {s.name for s in eth} == {
        "mm_order_ack_seconds_bucket",
        "mm_order_ack_seconds_count",
        "mm_order_ack_seconds_sum",
    }
    assert {s.labels.get("le") for s in eth if s.name.endswith("_bucket")} == {"0.01", "0.1", "1.0", "+Inf"}


def test_an_agent_whose_exposition_is_stale_or_missing_is_reported_down_not_hidden():
    scrapes = [
        AgentScrape("ETHUSDC", agent_exposition("ETHUSDC"), age_s=1.5),
        AgentScrape("BTCUSDT", None, error="exposition 20 s old (over 15 s)", age_s=20.0),
    ]  # SOLUSDT never published one
    fams = {f.name: f for f in parse(render_fleet_page(view(), scrapes).body)}
    up = {s.labels["symbol"]: s.value for s in fams["mmfleet_agent_up"].samples}
    assert up == {"ETHUSDC": 1.0, "BTCUSDT": 0.0, "SOLUSDT": 0.0}
    assert fams["mmfleet_agents_up"].samples[0].value == 1.0
    assert fams["mmfleet_agents_expected"].samples[0].value == 3.0
    assert {s.labels["symbol"] for s in fams["mm_worst_case_long"].samples} == {"ETHUSDC"}
    ages = {s.labels["symbol"]: s.value for s in fams["mmfleet_agent_exposition_age_seconds"].samples}
    assert ages == {"ETHUSDC": 1.5, "BTCUSDT": 20.0}  # the stale one's age shows how stale


def test_a_broken_exposition_is_dropped_and_named_while_the_rest_still_merges():
    broken = agent_exposition("BTCUSDT") + 'mm_worst_case_long{symbol="BTCUSDT" 1\n'
    scrapes = [AgentScrape("ETHUSDC", agent_exposition("ETHUSDC")), AgentScrape("BTCUSDT", broken)]
    page = render_fleet_page(view(), scrapes)
    assert len(page.dropped) == 1 and page.dropped[0].startswith("BTCUSDT: unparseable exposition")
    by_symbol = samples_by_symbol(page.body)
    assert "mm_worst_case_long" in by_symbol["ETHUSDC"]
    assert "mm_worst_case_long" not in by_symbol.get("BTCUSDT", set())


def test_a_family_whose_type_disagrees_across_agents_is_dropped_for_the_late_agent():
    odd = CollectorRegistry()
    Counter("mm_worst_case_long", "wrong type", ["symbol"], registry=odd).labels("BTCUSDT").inc()
    scrapes = [
        AgentScrape("ETHUSDC", agent_exposition("ETHUSDC")),
        AgentScrape("BTCUSDT", generate_latest(odd).decode()),
    ]
    page = render_fleet_page(view(), scrapes)
    assert page.dropped == ("BTCUSDT: family mm_worst_case_long is a counter, the fleet page has it as gauge",)
    fams = {f.name: f for f in parse(page.body)}
    assert fams["mm_worst_case_long"].type == "gauge"


def test_fleet_series_count_halted_symbols_and_restarts():
    v = view(
        kill_states={"ETHUSDC": "halted", "BTCUSDT": "running", "SOLUSDT": "flattening"},
        restarts={"ETHUSDC": 2, "BTCUSDT": 0, "SOLUSDT": 1},
    )
    fams = {f.name: f for f in parse(render_fleet_page(v, []).body)}
    assert fams["mmfleet_agents_halted"].samples[0].value == 2.0
    halted = {s.labels["symbol"]: (s.labels["kill_state"], s.value) for s in fams["mmfleet_symbol_halted"].samples}
    assert halted == {"ETHUSDC": ("halted", 1.0), "BTCUSDT": ("running", 0.0), "SOLUSDT": ("flattening", 1.0)}
    restarts = {s.labels["symbol"]: s.value for s in fams["mmfleet_agent_restarts"].samples}
    assert restarts == {"ETHUSDC": 2.0, "BTCUSDT": 0.0, "SOLUSDT": 1.0}


def test_a_hung_agent_outliving_its_kill_is_a_series_while_the_controller_answers():
    """The controller's fence names a hung agent Ray's kill has not reached (a frozen node): its seconds
    since, per symbol, 0 for the others; nothing while the controller does not answer (not known)."""
    now = 1_000.0
    named = {"ETHUSDC": {"epoch": 3, "pid": 4242, "node": "ab", "since": 940.0}, "BTCUSDT": {"since": "x"}}
    assert unkilled_seconds(named, now) == {"ETHUSDC": 60.0}
    fams = {f.name: f for f in parse(render_fleet_page(view(unkilled=unkilled_seconds(named, now)), []).body)}
    shown = {s.labels["symbol"]: s.value for s in fams["mmfleet_agent_unkilled_seconds"].samples}
    assert shown == {"ETHUSDC": 60.0, "BTCUSDT": 0.0, "SOLUSDT": 0.0}
    down = {f.name: f for f in parse(render_fleet_page(view(controller_up=False, unkilled={}), []).body)}
    assert "mmfleet_agent_unkilled_seconds" not in down or not down["mmfleet_agent_unkilled_seconds"].samples


def test_kill_latency_histogram_is_cumulative():
    lat = KillLatency().observe(0.04).observe(0.2).observe(3.0)
    fams = {f.name: f for f in parse(render_fleet_page(view(kill_latency=lat), []).body)}
    hist = fams["mmfleet_kill_latency_seconds"]
    buckets = {s.labels["le"]: s.value for s in hist.samples if s.name.endswith("_bucket")}
    assert buckets["0.025"] == 0 and buckets["0.05"] == 1 and buckets["0.25"] == 2
    assert buckets["2.5"] == 2 and buckets["5.0"] == 3 and buckets["+Inf"] == 3
    assert len(buckets) == len(KILL_LATENCY_BUCKETS) + 1
    count = next(s.value for s in hist.samples if s.name.endswith("_count"))
    total = next(s.value for s in hist.samples if s.name.endswith("_sum"))
    assert count == 3 and total == pytest.approx(3.24)
    assert next(s.value for s in fams["mmfleet_kills_unconfirmed"].samples) == 0


def test_a_kill_not_confirmed_is_counted_apart_not_in_the_latency():
    """The histogram's kills are the ones confirmed with 0 open orders: one answered without that (an
    exchange that kept refusing, a symbol not reached) is a counter of its own, for an alert."""
    lat = KillLatency().observe(0.04).observe(9.0, confirmed=False)
    fams = {f.name: f for f in parse(render_fleet_page(view(kill_latency=lat), []).body)}
    count = next(s.value for s in fams["mmfleet_kill_latency_seconds"].samples if s.name.endswith("_count"))
    assert count == 1
    (sample,) = fams["mmfleet_kills_unconfirmed"].samples
    assert (sample.name, sample.value) == ("mmfleet_kills_unconfirmed_total", 1)


def test_an_agent_family_named_like_a_fleet_series_cannot_break_the_page():
    rogue = CollectorRegistry()
    Gauge("mmfleet_agent_up", "rogue", ["symbol"], registry=rogue).labels("ETHUSDC").set(5)
    page = render_fleet_page(view(), [AgentScrape("ETHUSDC", generate_latest(rogue).decode())])
    assert page.dropped == ("agents' family mmfleet_agent_up clashes with a fleet series",)
    fams = {f.name: f for f in parse(page.body)}
    assert {s.labels["symbol"]: s.value for s in fams["mmfleet_agent_up"].samples}["ETHUSDC"] == 1.0


# --- the line merge and the published expositions ------------------------------------------------


def merged_samples(body: bytes) -> set[tuple[str, tuple[tuple[str, str], ...], float]]:
    return {(s.name, tuple(sorted(s.labels.items())), s.value) for f in parse(body) for s in f.samples}


def test_the_line_merge_gives_what_parsing_every_page_would_for_a_real_agent():
    from agents.metrics import AgentMetrics
    from fleet.binance.ratelimit import RateBudget
    from tests.agents.test_metrics import active_core

    texts = {}
    for sym in SYMBOLS:
        metrics = AgentMetrics(sym, active_core())
        metrics.bind_budget(RateBudget())
        metrics.observe_tick_to_order(0.002)
        texts[sym] = metrics.render().decode()
    page = render_fleet_page(view(), [AgentScrape(sym, text) for sym, text in texts.items()])
    assert page.dropped == ()
    want = set()
    for sym, text in texts.items():   # each agent's page parsed by prometheus_client, relabelled
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                want.add((s.name, tuple(sorted({**s.labels, "fleet": "demo", "symbol": sym}.items())), s.value))
    got = {x for x in merged_samples(page.body) if not x[0].startswith("mmfleet_")}
    assert got == want


def test_odd_but_valid_lines_are_kept_and_relabelled():
    text = (
        "# HELP mm_odd odd labels\n# TYPE mm_odd gauge\n"
        'mm_odd{reason="a}b, \\"quoted\\"",symbol="WRONG"} 1.5 1700000000000\n'
        "mm_odd{} +Inf\n"
        "# TYPE mm_bare counter\n"
        "mm_bare 3\n"
    )
    page = render_fleet_page(view(), [AgentScrape("ETHUSDC", text)])
    assert page.dropped == ()
    fams = {f.name: f for f in parse(page.body)}
    odd = sorted((s.labels.get("reason", ""), s.labels["symbol"], s.value) for s in fams["mm_odd"].samples)
    assert odd == [("", "ETHUSDC", float("inf")), ('a}b, "quoted"', "ETHUSDC", 1.5)]
    assert [(s.name, s.labels, s.value) for s in fams["mm_bare"].samples] == [
        ("mm_bare_total", {"fleet": "demo", "symbol": "ETHUSDC"}, 3.0)]
    assert "# TYPE mm_bare_total counter" in page.body.decode()


@pytest.mark.parametrize("bad", ["mm_x{symbol=\"A\"} one\n", "mm_x{symbol=\"A\" 1\n", "1mm_x 1\n", "mm_x\n"])
def test_a_line_that_is_not_a_sample_drops_the_whole_page_of_that_agent(bad):
    text = agent_exposition("BTCUSDT") + bad
    page = render_fleet_page(view(), [AgentScrape("ETHUSDC", agent_exposition("ETHUSDC")), AgentScrape("BTCUSDT", text)])
    assert len(page.dropped) == 1 and page.dropped[0].startswith("BTCUSDT: unparseable exposition (line ")
    assert not {n for n in samples_by_symbol(page.body)["BTCUSDT"] if n.startswith("mm_")}


def test_the_split_cache_splits_a_page_again_only_when_its_text_changed(monkeypatch):
    import controller.federation as federation

    cache, calls, real = federation.SplitCache("demo"), [], federation.split_exposition

    def counting(symbol: str, text: str, fleet: str | None = None):
        calls.append(symbol)
        return real(symbol, text, fleet)

    monkeypatch.setattr(federation, "split_exposition", counting)
    first = [AgentScrape(s, agent_exposition(s)) for s in SYMBOLS]
    render_fleet_page(view(), first, cache.split)
    render_fleet_page(view(), first, cache.split)
    assert sorted(calls) == sorted(SYMBOLS)
    changed = [AgentScrape("ETHUSDC", agent_exposition("ETHUSDC", worst_long=0.7)), *first[1:]]
    page = render_fleet_page(view(), changed, cache.split)
    assert sorted(calls) == sorted([*SYMBOLS, "ETHUSDC"])
    worst = {s.labels["symbol"]: s.value for f in parse(page.body) if f.name == "mm_worst_case_long" for s in f.samples}
    assert worst["ETHUSDC"] == 0.7
    broken = [AgentScrape("ETHUSDC", "garbage line\n")]
    for _ in range(2):   # a broken page stays dropped, and is not split again either
        assert render_fleet_page(view(), broken, cache.split).dropped[0].startswith("ETHUSDC: unparseable")
    assert calls.count("ETHUSDC") == 3


def test_published_expositions_past_the_bound_are_left_off_with_their_age():
    from agents.publish import PublishedExposition
    from controller.federation import published_scrapes

    published = {
        "ETHUSDC": PublishedExposition("ETHUSDC", "h:1:a", 95.0, agent_exposition("ETHUSDC")),
        "BTCUSDT": PublishedExposition("BTCUSDT", "h:2:b", 70.0, agent_exposition("BTCUSDT")),
    }
    scrapes = {s.symbol: s for s in published_scrapes(SYMBOLS, published, now=100.0, stale_s=15.0)}
    assert scrapes["ETHUSDC"].answered and scrapes["ETHUSDC"].age_s == 5.0
    assert not scrapes["BTCUSDT"].answered and scrapes["BTCUSDT"].age_s == 30.0
    assert scrapes["BTCUSDT"].error == "exposition 30.0 s old (over 15 s)"
    assert scrapes["SOLUSDT"].error == "no exposition published" and scrapes["SOLUSDT"].age_s is None
    unread = published_scrapes(SYMBOLS, "the published expositions were not readable: boom", now=100.0, stale_s=15.0)
    assert {s.error for s in unread} == {"the published expositions were not readable: boom"}


def test_a_published_record_round_trips_and_garbage_is_no_record():
    from agents.publish import PublishedExposition

    rec = PublishedExposition("ETHUSDC", "host:12:ab", 1700000000.25, agent_exposition("ETHUSDC"))
    assert PublishedExposition.decode(rec.encode()) == rec
    assert rec.age_s(1700000001.0) == 0.75 and rec.age_s(0.0) == 0.0
    for garbage in (b"", b"{}", b"[1]", b'{"symbol": "X", "holder": "h", "at": "soon", "text": ""}'):
        assert PublishedExposition.decode(garbage) is None


def test_every_series_of_the_page_names_its_fleet():
    """A central Prometheus federating several fleets tells their series apart by ``fleet``."""
    scrapes = [AgentScrape(s, agent_exposition(s)) for s in SYMBOLS]
    page = render_fleet_page(view(restarts={"ETHUSDC": 1}, kill_states={"ETHUSDC": "halted"},
                                  kill_latency=KillLatency().observe(0.1)), scrapes)
    samples = [s for f in parse(page.body) for s in f.samples]
    assert samples and {s.labels.get("fleet") for s in samples} == {"demo"}, \
        sorted({s.name for s in samples if s.labels.get("fleet") != "demo"})
