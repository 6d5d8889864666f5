"""The controller's and the endpoint's pure pieces as plain code: the kill state, kill outcomes, fleet
risk, and the views the routes answer with (no Ray, no HTTP)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess

import pytest

from agents.publish import PublishedSnapshot
from controller.calls import Answer
from controller.controller import RetireOutcome, fleet_risk, reduce_only_behind, reduce_only_change
from controller.emergency import KillOutcome, Outcome
from controller.fence import stopped_here
from controller.views import NO_FIGURES_YET, AgentAnswers, exposure_view, kill_carried_out, kill_state_map, kill_view, status_view
from fleet.vocabulary import KillState
from tests.polling import poll


@pytest.mark.parametrize(
    ("value", "parsed", "read", "stopped"),
    [
        ("running", KillState.RUNNING, KillState.RUNNING, False),
        ("halted", KillState.HALTED, KillState.HALTED, True),
        ("flattening", KillState.FLATTENING, KillState.FLATTENING, True),
        ("paused", None, KillState.HALTED, False),     # unknown: refused, read as halted (fail safe)
        ("", None, KillState.HALTED, False),
        (None, None, KillState.HALTED, False),
        (["halted"], None, KillState.HALTED, False),
    ],
)
def test_kill_state_words(value, parsed, read, stopped):
    if parsed is None:
        with pytest.raises(ValueError, match="kill state must be one of"):
            KillState.parse(value)
    else:
        assert KillState.parse(value) is parsed
    assert KillState.read(value) is read
    assert KillState.stopped(value) is stopped


def test_a_kill_state_is_its_word_at_every_edge():
    assert KillState.HALTED == "halted" and f"{KillState.FLATTENING}" == "flattening"
    assert json.dumps({KillState.HALTED: KillState.RUNNING}) == '{"halted": "running"}'
    assert {"halted": 1}[KillState.HALTED] == 1


@pytest.mark.parametrize(
    ("outcome", "keys"),
    [
        (KillOutcome(Outcome.HALTED, "agent", 0, "0", 12.5),
         {"outcome": "halted", "path": "agent", "open_orders": 0, "position": "0", "elapsed_ms": 12.5}),
        (KillOutcome(Outcome.EMERGENCY_CANCELLED, "emergency", 0, None, 40.0, problem="agent did not answer"),
         {"outcome": "emergency_cancelled", "path": "emergency", "open_orders": 0, "position": None,
          "elapsed_ms": 40.0, "problem": "agent did not answer"}),
        (KillOutcome(Outcome.FAILED, "emergency", None, error="ConnectionError: refused"),
         {"outcome": "failed", "path": "emergency", "open_orders": None, "position": None,
          "error": "ConnectionError: refused"}),
    ],
)
def test_a_kill_outcome_crosses_ray_as_a_dict(outcome, keys):
    assert outcome.to_dict() == keys
    assert json.loads(json.dumps(outcome.to_dict())) == keys


def test_the_outcome_of_a_kill_carried_out():
    assert Outcome.done("halt") is Outcome.HALTED
    assert Outcome.done("flatten") is Outcome.FLATTENED


def test_fleet_risk_counts_an_agent_without_a_figure_at_its_last_known_notional():
    """An agent that times out, restarts, has not read the exchange yet or has no price keeps its
    position at the exchange: read as 0, a fleet over its cap went "back under" it."""
    symbols = ["A", "B", "C", "D", "E", "F"]
    answers = [{"notional": 600.0, "position": 0.2, "mark": 3000.0}, {"notional": -500.0, "position": -1, "mid": 500.0},
               TimeoutError("late"), {"starting": True, "notional": 0.0}, {"notional": 0.0, "position": 2.0, "mark": 0.0},
               {}]
    last = {"C": 700.0, "D": 300.0, "E": 100.0}
    risk = fleet_risk(symbols, answers, 1000.0, last)
    assert risk.notional == {"A": 600.0, "B": 500.0, "C": 700.0, "D": 300.0, "E": 100.0, "F": 0.0}
    assert risk.gross_notional == 2200.0 and risk.over and risk.unknown == ("C", "D", "E", "F")
    assert not fleet_risk(symbols[:1], answers[:1], 1000.0, {}).over
    assert fleet_risk([], [], 1000.0, last).gross_notional == 0.0


def test_reduce_only_goes_off_only_on_figures_of_the_agents_or_the_exchange():
    answers = [{"notional": 400.0, "position": 0.1, "mark": 4000.0}, TimeoutError("hung")]
    risk = fleet_risk(["A", "B"], answers, 1000.0, {"B": 900.0})   # over: B's last known figure
    assert (risk.gross_notional, risk.over) == (1300.0, True)
    change, say = reduce_only_change(risk, False, 1000.0, ())
    assert change is True and "over cap 1000.00: reduce-only on" in say
    # B's position closed meanwhile (an emergency flatten): its last figure would hold reduce-only on
    held = fleet_risk(["A", "B"], answers, 1000.0, {"B": 100.0})
    assert reduce_only_change(held, True, 1000.0, ())[0] is None and "until B give" in reduce_only_change(held, True, 1000.0, ())[1]
    assert reduce_only_change(held, True, 1000.0, ("B",)) == (None, None)   # said once
    # ... until the exchange lists B: its word counts as a figure
    listed = fleet_risk(["A", "B"], answers, 1000.0, {"B": 900.0}, {"B": 0.0})
    assert listed.unknown == () and listed.gross_notional == 400.0
    change, say = reduce_only_change(listed, True, 1000.0, ("B",))
    assert change is False and "back under cap 1000.00: reduce-only off" in say
    assert reduce_only_change(listed, False, 1000.0, ()) == (None, None)


def test_the_reduce_only_flag_is_pushed_only_to_agents_that_do_not_show_it():
    answers = [{"reduce_only": True}, {"reduce_only": False}, {"state": "starting"}, TimeoutError("no answer")]
    # A starting agent (no core yet) reads the flag with its grant; one that did not answer is told.
    assert reduce_only_behind(["A", "B", "C", "D"], answers, True) == ["B", "D"]
    assert reduce_only_behind(["A", "B"], [{"reduce_only": False}, {"reduce_only": False}], False) == []


def test_the_fence_sees_a_stopped_process_of_this_host_without_waiting_for_its_answer():
    proc = subprocess.Popen(["sleep", "60"])
    try:
        holder = f"{socket.gethostname()}:{proc.pid}:abcd1234"
        assert not stopped_here(holder)
        os.kill(proc.pid, signal.SIGSTOP)
        poll(lambda: stopped_here(holder), 10, "the process shown stopped")
        assert not stopped_here(f"another-host:{proc.pid}:abcd1234")   # not this host's to look at
        assert not stopped_here("garbage")
        os.kill(proc.pid, signal.SIGCONT)
        poll(lambda: not stopped_here(holder), 10, "the process running again")
    finally:
        proc.kill()
        proc.wait()


def test_an_agent_ray_does_not_hold_alive_is_answered_at_once_not_waited_for():
    import asyncio

    from controller.calls import ActorCalls

    calls = ActorCalls("nowhere", agent_timeout_s=30.0, controller_timeout_s=30.0)
    answers = asyncio.run(calls.agents("status", ("ETHUSDC", "BTCUSDT"), alive={}))  # no Ray call made
    assert [a.error for a in answers.values()] == [
        f"no actor agent.{s} alive in namespace nowhere (not started yet, restarting or gone)"
        for s in ("ETHUSDC", "BTCUSDT")]
    assert not any(a.ok for a in answers.values())


def test_a_retire_outcome_is_a_plain_dict():
    out = RetireOutcome(True, 0, {"open_orders": 0}, None, 3.2).to_dict()
    assert out == {"stopped": True, "open_orders": 0, "summary": {"open_orders": 0}, "error": None, "elapsed_ms": 3.2,
                   "position": None, "key_refused": False}


def test_status_view_joins_the_agents_and_the_controllers_book():
    controller = Answer(value={"fleet": "f", "reduce_only": False, "symbols": {"ETHUSDC": {"epoch": 3}}})
    agents = {"ETHUSDC": Answer(value={"state": "quoting"}, elapsed_s=0.0123),
              "BTCUSDC": Answer(error="no actor agent.BTCUSDC in namespace n", elapsed_s=0.001)}
    view = status_view(controller, AgentAnswers(agents, {"ETHUSDC": 2}))
    assert view["agents_expected"] == 2 and view["agents_up"] == 1
    assert view["agents"]["ETHUSDC"] == {"reachable": True, "answer_ms": 12.3, "state": "quoting", "restarts": 2,
                                         "lease": {"epoch": 3}}
    assert view["agents"]["BTCUSDC"]["error"].startswith("no actor")
    assert "last_published" not in view["agents"]["BTCUSDC"]
    assert view["controller"] == {"reachable": True, "fleet": "f", "reduce_only": False}
    down = status_view(Answer(error="timeout"), AgentAnswers({}))
    assert down["controller"] == {"reachable": False, "error": "timeout"}


def test_a_silent_agent_is_shown_with_what_it_last_published_and_its_age():
    last = PublishedSnapshot("BTCUSDC", "host:1:ab", 100.0, {"state": "quoting", "open_orders": 18},
                             {"notional": -250.0, "position": -0.1})
    raw = PublishedSnapshot.decode(last.encode())
    assert raw == last and PublishedSnapshot.decode(b'{"symbol": "BTCUSDC"}') is None
    agents = AgentAnswers({"ETHUSDC": Answer(value={"state": "quoting", "notional": 100.0}),
                           "BTCUSDC": Answer(error="agent.BTCUSDC.status did not answer within 2 s")},
                          last={"BTCUSDC": raw, "ETHUSDC": raw}, now=112.34)
    view = status_view(Answer(value={"symbols": {}}), agents)
    assert view["agents"]["BTCUSDC"]["reachable"] is False and view["agents_up"] == 1
    assert view["agents"]["BTCUSDC"]["last_published"] == {"state": "quoting", "open_orders": 18,
                                                           "holder": "host:1:ab", "age_s": 12.3}
    assert "last_published" not in view["agents"]["ETHUSDC"]    # it answered: its answer is shown
    exposure = exposure_view(Answer(value={}), agents, 1000.0)
    assert exposure["symbols"]["BTCUSDC"]["last_published"]["notional"] == -250.0
    assert exposure["totals"]["gross_notional"] == 100.0            # the totals: what answered, nothing older
    assert exposure["totals"]["symbols_missing"] == ["BTCUSDC"]


def test_an_agent_still_starting_is_shown_with_what_it_last_published_and_kept_out_of_the_totals():
    """A restart's new process answers before its first snapshot of the exchange: its zeros are not the
    exchange's figures (a position and 15 orders rested meanwhile), so it reads as not answering."""
    last = PublishedSnapshot("ETHUSDC", "host:1:ab", 100.0, {"state": "quoting", "open_orders": 15},
                             {"notional": -186.0, "position": -0.062})
    agents = AgentAnswers({"ETHUSDC": Answer(value={"symbol": "ETHUSDC", "state": "starting", "starting": True}),
                           "BTCUSDC": Answer(value={"starting": True, "position": 0.0, "notional": 0.0}),
                           "SOLUSDT": Answer(value={"starting": False, "position": 1.0, "notional": 150.0})},
                          last={"ETHUSDC": last}, now=102.0)
    exposure = exposure_view(Answer(value={}), agents, 1000.0)
    eth = exposure["symbols"]["ETHUSDC"]
    assert eth["reachable"] is False and eth["error"] == NO_FIGURES_YET and "position" not in eth
    assert eth["last_published"]["position"] == -0.062 and eth["last_published"]["age_s"] == 2.0
    assert exposure["totals"]["symbols_missing"] == ["BTCUSDC", "ETHUSDC"]
    assert exposure["totals"]["gross_notional"] == 150.0 and not exposure["totals"]["complete"]
    status = status_view(Answer(value={"symbols": {}}), AgentAnswers(
        {"ETHUSDC": Answer(value={"state": "starting", "open_orders": 0, "position": 0.0})},
        last={"ETHUSDC": last}, now=102.0))
    entry = status["agents"]["ETHUSDC"]
    assert (entry["reachable"], entry["state"], entry["error"]) == (False, "starting", NO_FIGURES_YET)
    assert "open_orders" not in entry and entry["last_published"]["open_orders"] == 15 and status["agents_up"] == 0


def test_exposure_view_keeps_the_durable_kill_state_and_the_agents_own_if_it_differs():
    kill = Answer(value={"ETHUSDC": {"state": KillState.HALTED, "reason": "r", "since": 1.0}})
    agents = {"ETHUSDC": Answer(value={"notional": 100.0, "kill_state": "running"}),
              "BTCUSDC": Answer(error="late")}
    view = exposure_view(kill, AgentAnswers(agents), 1000.0)
    eth = view["symbols"]["ETHUSDC"]
    assert eth["kill_state"] == "halted" and eth["agent_kill_state"] == "running"
    assert view["symbols"]["BTCUSDC"] == {"reachable": False, "error": "late"}
    assert view["totals"]["gross_notional"] == 100.0 and not view["totals"]["complete"]
    assert view["kill_states_error"] is None
    assert exposure_view(Answer(error="down"), AgentAnswers({}), 1.0)["kill_states_error"] == "down"


def test_kill_state_map_takes_every_shape_the_controller_answers():
    assert kill_state_map({"A": "halted", "B": {"state": "running"}, "C": {"kill_state": "flattening"}, "D": 3}) == {
        "A": "halted", "B": "running", "C": "flattening"}
    assert kill_state_map({"kill_states": {"A": "halted"}}) == {"A": "halted"}
    assert kill_state_map(None) == {}


def test_kill_view_confirms_only_when_every_symbol_has_no_open_order():
    both = {"durable": True, "durable_ms": 3.5, "symbols": {"A": {"open_orders": 0}, "B": {"open_orders": 0}}}
    assert kill_view("halt", "r", 0.0125, both) == {"mode": "halt", "reason": "r", "elapsed_ms": 12.5, "durable": True,
                                                   "durable_ms": 3.5, "confirmed": True, "symbols": both["symbols"]}
    assert not kill_view("halt", "r", 0.0, {"symbols": {"A": {"open_orders": 0}, "B": {"open_orders": None}}})["confirmed"]
    assert not kill_view("halt", "r", 0.0, {"symbols": {}})["confirmed"]
    assert not kill_view("halt", "r", 0.0, None)["confirmed"]


def test_a_flatten_is_confirmed_only_with_every_position_flat_too():
    flat = {"open_orders": 0, "position": "0.000"}
    assert kill_view("flatten", "r", 0.0, {"symbols": {"A": flat, "B": flat}})["confirmed"]
    # the orders gone but a position left (an emergency cancel whose close failed), or none reported
    for left in ({"open_orders": 0, "position": "-3.2"}, {"open_orders": 0, "position": None}, {"open_orders": 0}):
        assert not kill_view("flatten", "r", 0.0, {"symbols": {"A": flat, "B": left}})["confirmed"], left
        assert kill_carried_out("halt", left)   # a halt asks for no close
    assert not kill_carried_out("flatten", {"open_orders": 1, "position": "0"})


def test_the_work_an_apply_or_a_down_owes_reads_back_as_stored():
    from controller.owed import PendingApply

    owed = PendingApply({"SOLUSDT": "main", "XRPUSDT": None}, ["ETHUSDC"], down=True)
    assert PendingApply.from_doc(json.loads(json.dumps(owed.to_doc()))) == owed
    keyed = PendingApply({"SOLUSDT": "main#0a1b2c3d4e"}, [],
                         accounts={"main#0a1b2c3d4e": {"account": {"name": "main", "key_file": "/k"}, "rest_url": "u"}})
    assert PendingApply.from_doc(json.loads(json.dumps(keyed.to_doc()))) == keyed
    assert not PendingApply({}, []) and PendingApply({}, [], down=False)   # a down without a flatten is owed too
    assert PendingApply.from_doc(None) == PendingApply({}, []) == PendingApply.from_doc("garbage")


def test_the_controllers_close_is_cut_to_the_symbols_filters():
    """A flatten's last resort at the exchange: MARKET orders on MARKET_LOT_SIZE's step and under its
    maxQty (one order of the whole position is refused -4005 above it), the rest under one market step
    as a reduce-only IOC limit inside PERCENT_PRICE's band."""
    from decimal import Decimal

    from controller.emergency import closing_orders
    from fleet.binance.filters import SymbolFilters
    from tests.fleet.binance.test_filters import LIVE_BTCUSDT

    entry = {**LIVE_BTCUSDT, "filters": [
        *(f for f in LIVE_BTCUSDT["filters"] if f["filterType"] != "MARKET_LOT_SIZE"),
        {"filterType": "MARKET_LOT_SIZE", "minQty": "0.02", "maxQty": "1.5", "stepSize": "0.01"}]}
    f = SymbolFilters.from_exchange_info(entry)
    long = closing_orders("BTCUSDT", f, Decimal("4.009"), Decimal("60000"))
    assert [(o.side, o.order_type, o.quantity, o.reduce_only) for o in long[:3]] == [
        ("SELL", "MARKET", "1.340", True), ("SELL", "MARKET", "1.330", True), ("SELL", "MARKET", "1.330", True)]
    rest = long[3]
    assert (rest.order_type, rest.time_in_force, rest.quantity, rest.reduce_only) == ("LIMIT", "IOC", "0.009", True)
    assert Decimal(rest.price) == Decimal("58500.0")   # halfway to multiplierDown 0.95: crosses, inside the band
    short = closing_orders("BTCUSDT", f, Decimal("-0.015"), Decimal("60000"))   # under the market's minQty
    assert [(o.side, o.order_type, o.quantity, o.price) for o in short] == [("BUY", "LIMIT", "0.015", "61500.0")]
    assert closing_orders("BTCUSDT", f, Decimal("0.0005"), Decimal("60000")) == []   # under LOT_SIZE's step


def test_a_gcs_that_lost_its_last_lease_writes_grants_no_early_lease_and_no_epoch_twice():
    """A GCS failover that lost the last writes (the lease and epoch keys gone, or older): the
    controller's own copy is newer, and an acquire takes the newer of the two. Before, a successor was
    granted while the predecessor's lease was live here, and the epoch it had was granted again."""
    from controller.lease import LeaseBook, MemoryStore, WriteThroughStore

    gcs = MemoryStore()
    book = LeaseBook(WriteThroughStore(gcs, ("lease/", "epoch/")), lease_ttl_s=3.0)
    first = book.acquire("X", "h1", now=1000.0)
    assert first.granted and first.epoch == 1
    for key in ("lease/X", "epoch/X"):
        gcs.delete(key)                        # the failover lost them; the controller's memory holds them
    early = book.acquire("X", "h2", now=1001.0)
    assert not early.granted and early.owner == "h1"
    assert gcs.get("lease/X") is not None and gcs.get("epoch/X") == "1"   # written again
    again = book.acquire("X", "h2", now=1002.0)   # the refusal's fresh read did not replace the memory
    assert not again.granted and again.owner == "h1"
    later = book.acquire("X", "h2", now=1004.0)
    assert later.granted and later.epoch == 2


def _spec(accounts: dict[str, str], symbols: dict[str, str], **extra):
    from controller.spec import parse_spec

    return parse_spec({"fleet": {
        "name": "f", "exchange": {"kind": "sim", "rest_url": "http://127.0.0.1:1", "ws_market_url": "ws://127.0.0.1:1"},
        "accounts": [{"name": n, "key_file": k} for n, k in accounts.items()],
        "symbols": [{"symbol": s, "account": a} for s, a in symbols.items()], **extra}})


def test_an_apply_makes_anew_the_agents_whose_account_keys_exchange_or_runtime_it_changes():
    """What an agent reads once at its start (its account and keys, the exchange, the runtime) cannot be
    pushed: its agent is retired where it traded and created again; parameters alone are pushed live."""
    from controller.owed import PendingApply, plan_apply

    none = PendingApply({}, [])
    old, old_params = _spec({"main": "/a", "alt": "/b"}, {"ETHUSDC": "main", "SOLUSDT": "main", "XRPUSDT": "main"})
    live = {"ETHUSDC", "SOLUSDT", "XRPUSDT"}
    # SOLUSDT moves to alt; XRPUSDT is removed; ETHUSDC stays
    cfg, params = _spec({"main": "/a", "alt": "/b"}, {"ETHUSDC": "main", "SOLUSDT": "alt"})
    plan = plan_apply(old, old_params, cfg, params, none, live)
    assert plan.retire == {"SOLUSDT": "main", "XRPUSDT": "main"} and plan.accounts == {}
    assert plan.restarted == ["SOLUSDT"] and plan.unchanged == ["ETHUSDC"] and plan.updated == []
    # main's keys change (same name): its agents are retired by a key of their own, as main was
    cfg, params = _spec({"main": "/c", "alt": "/b"}, {"ETHUSDC": "main", "SOLUSDT": "main", "XRPUSDT": "main"})
    plan = plan_apply(old, old_params, cfg, params, none, live)
    (key,) = set(plan.retire.values())
    assert key.startswith("main#") and plan.accounts[key] == {"account": {"name": "main", "api_key_env": None,
                                                                          "api_secret_env": None, "key_file": "/a"},
                                                              "rest_url": "http://127.0.0.1:1"}
    assert plan.restarted == ["ETHUSDC", "SOLUSDT", "XRPUSDT"]
    # the account removed with its symbol: the retire still reaches it
    cfg, params = _spec({"alt": "/b"}, {"ETHUSDC": "alt"})
    plan = plan_apply(old, old_params, cfg, params, none, live)
    assert set(plan.retire) == live and all(a.startswith("main#") for a in plan.retire.values())
    # a runtime change restarts every agent running; one not running is created by the new spec anyway
    cfg, params = _spec({"main": "/a", "alt": "/b"}, {"ETHUSDC": "main", "SOLUSDT": "main", "XRPUSDT": "main"},
                        runtime={"deadman_countdown_ms": 60000})
    plan = plan_apply(old, old_params, cfg, params, none, live - {"XRPUSDT"})
    assert plan.restarted == ["ETHUSDC", "SOLUSDT"] and plan.retire == {"ETHUSDC": "main", "SOLUSDT": "main"}
    # a rate share or a parameter: pushed live, nobody restarted
    cfg, params = _spec({"main": "/a", "alt": "/b"}, {"ETHUSDC": "main", "SOLUSDT": "main", "XRPUSDT": "main"})
    cfg = cfg.model_copy(update={"accounts": [a.model_copy(update={"rate_share": 0.5}) for a in cfg.accounts]})
    p = params["ETHUSDC"]
    params = {**params, "ETHUSDC": p.model_copy(update={"base": p.base.model_copy(update={"base_size": 0.02})})}
    plan = plan_apply(old, old_params, cfg, params, none, live)
    assert plan.retire == {} and plan.updated == ["ETHUSDC"] and plan.unchanged == ["SOLUSDT", "XRPUSDT"]


async def test_a_symbol_added_to_a_fleet_halted_as_a_whole_starts_halted():
    from types import SimpleNamespace

    from controller.lease import LeaseBook, MemoryStore
    from controller.owed import hold_added

    book = LeaseBook(MemoryStore(), lease_ttl_s=3.0)
    ctl = SimpleNamespace(book=book)
    await book.set_kill_states(["ETHUSDC"], KillState.HALTED, "desk drill", now=1000.0)
    # one symbol still running: the fleet is not halted as a whole, the new one trades
    assert await hold_added(ctl, ["ETHUSDC", "BTCUSDT"], ["SOLUSDT"]) == []   # type: ignore[arg-type]
    assert "SOLUSDT" not in await book.akill_records(["SOLUSDT"])
    await book.set_kill_states(["BTCUSDT"], KillState.FLATTENING, "desk drill", now=1000.0)
    assert await hold_added(ctl, ["ETHUSDC", "BTCUSDT"], ["SOLUSDT"]) == ["SOLUSDT"]   # type: ignore[arg-type]
    record = (await book.akill_records(["SOLUSDT"]))["SOLUSDT"]
    assert record.state == KillState.HALTED and "added while the fleet was halted (desk drill)" in record.reason
    assert await hold_added(ctl, [], ["XRPUSDT"]) == []   # type: ignore[arg-type]   # a first apply: nothing to follow


def test_a_retire_still_owed_keeps_its_account_and_the_journals_file_locations_restart_nobody():
    from controller.owed import PendingApply, down_accounts, plan_apply

    old, old_params = _spec({"main": "/a"}, {"ETHUSDC": "main", "SOLUSDT": "main"})
    live = {"ETHUSDC", "SOLUSDT"}
    # an apply that changed main's keys was cut short: SOLUSDT's retire is owed by main as it was (/a) ...
    owed = PendingApply({"SOLUSDT": "main#0a1b2c3d4e"}, [], accounts={"main#0a1b2c3d4e": {"account": {}, "rest_url": "u"}})
    cfg, params = _spec({"main": "/c"}, {"ETHUSDC": "main"})
    plan = plan_apply(old, old_params, cfg, params, owed, live)
    # ... and keeps that key when the next apply removes the symbol too
    assert plan.retire["SOLUSDT"] == "main#0a1b2c3d4e" and "main#0a1b2c3d4e" in plan.accounts
    # the journal's files made absolute from another directory (apply run elsewhere than up): nobody restarted
    moved = old.model_copy(update={"journal": old.journal.model_copy(update={"path": "/elsewhere/j.sqlite",
                                                                           "spool_dir": "/elsewhere/spool"})})
    assert plan_apply(old, old_params, moved, old_params, PendingApply({}, []), live).restarted == []
    # a down: the owed retire's account first, the spec's besides where it differs
    accounts, also = down_accounts({"XRPUSDT": None}, {"SOLUSDT": "main"}, {"SOLUSDT": "alt", "ETHUSDC": "main"})
    assert accounts == {"XRPUSDT": None, "SOLUSDT": "main", "ETHUSDC": "main"} and also == {"SOLUSDT": "alt"}


def test_a_retire_the_exchange_did_not_confirm_stays_owed_with_its_accounts_key():
    from controller.owed import PendingApply, plan_apply, still_owed

    def outcome(open_orders):
        return RetireOutcome(True, open_orders, None, None if open_orders == 0 else "refused", 1.0)

    # ETHUSDC made anew on its own account; BTCUSDT moved from main to alt; the rest removed
    cfg, params = _spec({"main": "/a", "alt": "/b"}, {"ETHUSDC": "main", "BTCUSDT": "alt"})
    retire = {"SOLUSDT": "main#0a1b2c3d4e", "XRPUSDT": "main", "ADAUSDT": "main", "ETHUSDC": "main",
              "DOGEUSDT": None, "BTCUSDT": "main"}
    accounts = {"main#0a1b2c3d4e": {"account": {}, "rest_url": "u"}, "gone#ffffffffff": {"account": {}, "rest_url": "v"}}
    # SOLUSDT's check failed (None) and XRPUSDT's listed 2: owed; ADAUSDT confirmed empty; ETHUSDC's new agent
    # cancels the old epoch's orders on its account at its start; DOGEUSDT has no account to look at (the
    # dead-man switch's); BTCUSDT's old book on main is nobody's: emptied at the exchange only
    left = still_owed(retire, [outcome(None), outcome(2), outcome(0), outcome(None), outcome(None), outcome(1)],
                      cfg, accounts)
    assert left.retire == {"SOLUSDT": "main#0a1b2c3d4e", "XRPUSDT": "main"} and left.push == []
    assert left.books == [("BTCUSDT", "main")] and left.tried == ["SOLUSDT", "XRPUSDT"]
    assert left.accounts == {"main#0a1b2c3d4e": {"account": {}, "rest_url": "u"}} and left.down is None
    assert PendingApply.from_doc(left.to_doc()) == left   # stored with the spec, read back after a restart
    assert not still_owed(retire, [outcome(0)] * 6, cfg, accounts)
    # a check the exchange refused the old key for (revoked after a rotation): written off, not tried for good
    revoked = RetireOutcome(True, None, None, "exchange check failed: [-2015]", 1.0, key_refused=True)
    assert not still_owed({"XRPUSDT": "main", "BTCUSDT": "main"}, [revoked, revoked], cfg, accounts)
    # a later apply that changes main's keys: the owed ones named plainly are reached as main was
    changed, changed_params = _spec({"main": "/c", "alt": "/b"}, {"ETHUSDC": "main", "BTCUSDT": "alt"})
    plan = plan_apply(cfg, params, changed, changed_params, left, {"ETHUSDC", "BTCUSDT"})
    assert plan.retire["XRPUSDT"].startswith("main#") and plan.books == [("BTCUSDT", plan.retire["XRPUSDT"])]
    assert plan.retire["SOLUSDT"] == "main#0a1b2c3d4e" and set(plan.accounts) == {"main#0a1b2c3d4e", plan.retire["XRPUSDT"]}


def test_a_symbol_moved_twice_owes_both_old_books():
    """BTCUSDT moved main -> alt, main's book unconfirmed; then alt -> third, alt's unconfirmed too: both
    old books stay owed (keyed by symbol, the second replaced the first and main's was written off)."""
    from controller.owed import still_owed

    refused = RetireOutcome(True, None, None, "refused", 1.0)
    cfg, _ = _spec({"main": "/a", "alt": "/b", "third": "/c"}, {"BTCUSDT": "third"})
    left = still_owed({"BTCUSDT": "alt"}, [refused], cfg, {}, [("BTCUSDT", "main")])
    assert left.books == [("BTCUSDT", "main"), ("BTCUSDT", "alt")]


def test_owed_books_stored_as_a_mapping_by_an_earlier_controller_are_read():
    """9180285 stored the owed books as a mapping of symbol to account: a controller reading that doc
    back raised (every call of it: the kill switches too)."""
    from controller.owed import PendingApply

    doc = {"retire": {}, "push": [], "books": {"BTCUSDT": "main", "OP": "alt"}}
    assert PendingApply.from_doc(doc).books == [("BTCUSDT", "main"), ("OP", "alt")]
    assert PendingApply.from_doc({**doc, "books": [["BTCUSDT", "main"], "garbage"]}).books == [("BTCUSDT", "main")]


def test_the_clis_wait_for_a_running_cluster_is_read_from_the_environment(monkeypatch):
    """MMFLEET_CONNECT_TIMEOUT_S bounds a command's connect to a running cluster (0: Ray's own wait); a
    value that is not a number of seconds is refused naming it."""
    from fleet.ops.fleet_cli import CONNECT_TIMEOUT_S, FleetCliError, connect_timeout

    monkeypatch.delenv("MMFLEET_CONNECT_TIMEOUT_S", raising=False)
    assert connect_timeout() == CONNECT_TIMEOUT_S == 30.0
    for raw, seconds in (("5", 5.0), ("0.5", 0.5), ("0", 0.0)):
        monkeypatch.setenv("MMFLEET_CONNECT_TIMEOUT_S", raw)
        assert connect_timeout() == seconds
    for bad in ("soon", "-1", "inf", "nan", ""):
        monkeypatch.setenv("MMFLEET_CONNECT_TIMEOUT_S", bad)
        with pytest.raises(FleetCliError, match="MMFLEET_CONNECT_TIMEOUT_S"):
            connect_timeout()
