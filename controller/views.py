"""The endpoint's views, pure: the answers of the controller and the agents in, the HTTP answer out.

The routes of :mod:`controller.api` gather the answers (:mod:`controller.calls`) and hand them here;
nothing in this module awaits or calls Ray, so each view is tested as plain code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from controller.calls import Answer
from controller.emergency import flat_position

_SUMMED = ("notional", "realized_pnl", "unrealized_pnl", "funding_pnl", "commission")


def fleet_totals(per_symbol: dict[str, dict[str, Any]], max_total_notional: float) -> dict[str, Any]:
    """Fleet sums over the symbols that answered; ``complete`` says whether all did."""
    answered = [e for e in per_symbol.values() if e.get("reachable")]
    totals: dict[str, Any] = {}
    for key in _SUMMED:
        totals[key] = sum(_num(e.get(key)) for e in answered)
    gross = sum(abs(_num(e.get("notional"))) for e in answered)
    totals["net_notional"] = totals.pop("notional")
    totals["gross_notional"] = gross
    totals["total_pnl"] = totals["realized_pnl"] + totals["unrealized_pnl"] + totals["funding_pnl"]
    totals["net_pnl"] = totals["total_pnl"] - totals["commission"]
    totals["max_total_notional"] = max_total_notional
    totals["notional_used"] = gross / max_total_notional if max_total_notional else None
    totals["symbols_answered"] = len(answered)
    totals["symbols_missing"] = sorted(s for s, e in per_symbol.items() if not e.get("reachable"))
    totals["complete"] = not totals["symbols_missing"]
    return totals


def _num(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return 0.0
    return out if math.isfinite(out) else 0.0


def kill_state_map(value: Any) -> dict[str, str]:
    """The controller's kill states as ``{symbol: state}``, whatever detail it adds per symbol."""
    if not isinstance(value, dict):
        return {}
    source = value.get("kill_states", value) if isinstance(value.get("kill_states"), dict) else value
    out = {}
    for sym, state in source.items():
        if isinstance(state, str):
            out[sym] = state
        elif isinstance(state, dict):
            st = state.get("state") or state.get("kill_state")
            if isinstance(st, str):
                out[sym] = st
    return out



def controller_book(controller: Answer) -> dict[str, Any]:
    """The per-symbol part of the controller's status (epoch, lease, kill state), or {} without one."""
    value = controller.mapping()
    return value.get("symbols", {}) if value is not None else {}


@dataclass(frozen=True)
class AgentAnswers:
    """The agents' answers to one page's call, Ray's restart counts of those alive, and for those that
    did not answer what they last published (``agents/publish.py`` snapshots) as of ``now`` (wall clock)."""

    answers: dict[str, Answer]
    restarts: dict[str, int] = field(default_factory=dict)
    last: dict[str, Any] = field(default_factory=dict)
    now: float = 0.0

    def last_published(self, symbol: str, part: str) -> dict[str, Any] | None:
        """What the silent agent of ``symbol`` last published of ``part``, with its age; None without one."""
        snap = self.last.get(symbol)
        return None if snap is None else snap.shown(part, self.now)


NO_FIGURES_YET = "starting: no figures of the exchange yet"


def with_figures(ans: Answer) -> tuple[Answer, bool]:
    """An agent still starting (a new process, a restart, before its first snapshot of the exchange)
    answers, but its figures are not the exchange's: it is shown as not answering, with what it last
    published, and kept out of the totals. Returns the answer to show, and whether it was starting."""
    value = ans.mapping()
    if value is not None and (value.get("starting") or value.get("state") == "starting"):
        return replace(ans, value=None, error=NO_FIGURES_YET), True
    return ans, False


def status_view(controller: Answer, agents: AgentAnswers, stored: Answer | None = None) -> dict[str, Any]:
    """``/status`` without the fleet's name: per agent its answer (or error, and what it last published),
    restarts and lease; the controller. The leases and kill states are the controller's, or, when it does
    not answer, those ``stored`` in the GCS (``leases_from`` says which)."""
    book = controller_book(controller)
    leases_from = "controller" if controller.ok else None
    if not controller.ok and stored is not None and stored.ok:
        book, leases_from = stored.value, "gcs"
    per_symbol = {}
    for sym, answer in agents.answers.items():
        ans, starting = with_figures(answer)
        entry: dict[str, Any] = {"reachable": ans.ok, "answer_ms": round(ans.elapsed_s * 1000, 1)}
        entry.update(ans.mapping() or {})
        if starting:
            entry["state"] = "starting"
        if not ans.ok:
            entry["error"] = ans.error
            if (last := agents.last_published(sym, "status")) is not None:
                entry["last_published"] = last
        if sym in agents.restarts:
            entry["restarts"] = agents.restarts[sym]
        if sym in book:
            entry["lease"] = book[sym]          # epoch, holder, expiry, kill state per the controller
        per_symbol[sym] = entry
    value = controller.mapping()
    summary = (
        {"reachable": True, **{k: v for k, v in value.items() if k != "symbols"}}
        if value is not None
        else {"reachable": False, "error": controller.error or "unexpected answer"}
    )
    return {
        "agents_expected": len(agents.answers),
        "agents_up": sum(1 for e in per_symbol.values() if e["reachable"]),
        "agents": per_symbol,
        "controller": summary,
        "leases_from": leases_from,
        "leases_error": stored.error if stored is not None and not stored.ok else None,
    }


def exposure_view(kill: Answer, agents: AgentAnswers, max_total_notional: float) -> dict[str, Any]:
    """``/exposure`` without the fleet's name: per symbol the agent's figures (or why there are none, and
    what it last published: not in the totals) and the durable kill state."""
    kill_states = kill_state_map(kill.value) if kill.ok else {}
    per_symbol = {}
    for sym, answer in agents.answers.items():
        ans, _ = with_figures(answer)
        entry: dict[str, Any] = {"reachable": ans.ok}
        if ans.ok and isinstance(ans.value, dict):
            entry.update(ans.value)
        elif not ans.ok:
            entry["error"] = ans.error
            if (last := agents.last_published(sym, "exposure")) is not None:
                entry["last_published"] = last
        if sym in kill_states:
            # The controller's state is the durable one; the agent's view is kept if it differs.
            if "kill_state" in entry and entry["kill_state"] != kill_states[sym]:
                entry["agent_kill_state"] = entry["kill_state"]
            entry["kill_state"] = kill_states[sym]
        per_symbol[sym] = entry
    return {
        "symbols": per_symbol,
        "totals": fleet_totals(per_symbol, max_total_notional),
        "kill_states_error": None if kill.ok else kill.error,
    }


def kill_carried_out(mode: str, entry: Any) -> bool:
    """One symbol's kill answer says it was done as asked: 0 open orders confirmed at the exchange, and
    for a flatten also the position reported flat (a flatten whose orders are gone but whose position is
    still open, or unknown, is not done)."""
    if not isinstance(entry, dict) or entry.get("open_orders") != 0:
        return False
    return mode != "flatten" or flat_position(entry.get("position"))


def kill_view(mode: str, reason: str, elapsed_s: float, result: Any) -> dict[str, Any]:
    """``/kill``'s answer: the controller's per-symbol outcomes and whether every one was carried out
    (0 open orders confirmed; a flatten also flat)."""
    per_symbol = result.get("symbols", {}) if isinstance(result, dict) else {}
    return {
        "mode": mode,
        "reason": reason,
        "elapsed_ms": round(elapsed_s * 1000, 1),
        # the kill states written to the GCS by then (false: not in time, the GCS down; the write goes on)
        "durable": result.get("durable") if isinstance(result, dict) else None,
        "durable_ms": result.get("durable_ms") if isinstance(result, dict) else None,
        # every symbol confirmed with 0 open orders at the exchange (a flatten: and its position flat)
        "confirmed": bool(per_symbol) and all(kill_carried_out(mode, v) for v in per_symbol.values()),
        "symbols": per_symbol,
    }
