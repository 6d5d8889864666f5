"""The applied spec, pure: built on the driver (where params files are readable), checked, and read.

``apply`` takes the fleet config plus every symbol's resolved parameters; the controller keeps it
in the GCS and derives each agent's rate share and the exchange endpoints from it.
"""

from __future__ import annotations

from typing import Any

from fleet.config import FleetConfig, SymbolParams, migrate_stored_hard_caps, symbol_params, validate_symbol_params

SPEC_DOC = "spec"  # the applied spec's document in the fleet's GCS key-value store (the controller writes it)
LAST_DOWN_DOC = "last_down"   # what the last down did, written before the spec is forgotten (its retry reads it)

def build_spec(cfg: FleetConfig, config_path: str | None = None) -> dict[str, Any]:
    """The document ``apply`` takes: the fleet config plus every symbol's resolved parameters."""
    params = {}
    for entry in cfg.symbols:
        if config_path is not None:
            params[entry.symbol] = symbol_params(cfg, entry.symbol, config_path).model_dump(mode="json")
        else:
            params[entry.symbol] = validate_symbol_params(cfg, entry.symbol, entry.params).model_dump(mode="json")
    return {"fleet": cfg.model_dump(mode="json"), "params": params}


def parse_spec(spec: dict[str, Any], *, stored: bool = False) -> tuple[FleetConfig, dict[str, SymbolParams]]:
    """Validate an ``apply`` document (or a bare fleet config); raise ValueError naming what is wrong.

    Every symbol's net_max is checked against the hard cap the fleet config (or code) holds for it;
    params that set the cap themselves are refused. ``stored``: a spec read back from the GCS, which
    may predate that rule (its caps are moved to the fleet entries, then checked the same way).
    """
    if not isinstance(spec, dict):
        raise ValueError(f"apply takes a mapping, not {type(spec).__name__}")
    fleet_doc = spec.get("fleet", spec) if "fleet" in spec else spec
    raw_params = spec.get("params", {}) if "fleet" in spec else {}
    if stored:
        migrate_stored_hard_caps(fleet_doc, raw_params)
    cfg = FleetConfig.model_validate(fleet_doc)
    params = {}
    for entry in cfg.symbols:
        params[entry.symbol] = validate_symbol_params(cfg, entry.symbol, raw_params.get(entry.symbol, entry.params))
    unknown = set(raw_params) - set(params)
    if unknown:
        raise ValueError(f"params given for symbols not in the fleet: {', '.join(sorted(unknown))}")
    return cfg, params


def rate_shares(cfg: FleetConfig) -> dict[str, float]:
    """Each agent's share of its account's order-rate limits: the account's share split evenly."""
    counts: dict[str, int] = {}
    for e in cfg.symbols:
        counts[e.account] = counts.get(e.account, 0) + 1
    return {e.symbol: cfg.account(e.account).rate_share / counts[e.account] for e in cfg.symbols}


def endpoints_of(cfg: FleetConfig) -> dict[str, str]:
    ex = cfg.exchange
    if not ex.rest_url or not ex.ws_market_url:
        raise ValueError(
            "exchange.rest_url and exchange.ws_market_url are needed to run agents "
            "(for exchange.kind=sim, `up` fills them in from the simulator it starts)"
        )
    return {
        "rest_url": ex.rest_url.rstrip("/"),
        "ws_market_url": ex.ws_market_url.rstrip("/"),
        "ws_user_url": (ex.ws_user_url or ex.ws_market_url).rstrip("/"),
    }



def credentials_basis(cfg: FleetConfig, account: str) -> tuple[dict[str, Any], str]:
    """Where an account's client reads its keys and whom it asks: its key sources (not its rate share,
    pushed live) and the exchange's REST URL ("" when the config has none yet). Raises KeyError for an
    account ``cfg`` does not name."""
    return (cfg.account(account).model_dump(mode="json", exclude={"rate_share"}),
            (cfg.exchange.rest_url or "").rstrip("/"))


def agent_basis(cfg: FleetConfig, symbol: str) -> dict[str, Any]:
    """What an agent is built with at its start and cannot take live (its parameters and rate share are
    pushed): an apply that changes any of it for a symbol makes its agent anew. Part of ``agent_spec``."""
    account = cfg.account(cfg.entry(symbol).account)
    return {
        "runtime": cfg.runtime.model_dump(mode="json"),
        "endpoints": endpoints_of(cfg),
        "account": account.model_dump(mode="json"),
        "journal": cfg.journal.model_dump(mode="json"),
        "metrics_publish_s": cfg.api.metrics_publish_s,
        "cpu_class": cfg.agent.cpu_class,
    }


# The journal's file locations are made absolute from the directory the command runs in (``up`` and
# ``apply`` from two directories differ): not a reason to stop every agent, taken at its next start.
_LOCAL_PATHS = ("path", "spool_dir")


def basis_changed(old: FleetConfig, new: FleetConfig, symbol: str) -> bool:
    """Whether ``symbol``'s agent must be made anew to trade by ``new`` (its rate share aside)."""
    before, after = agent_basis(old, symbol), agent_basis(new, symbol)
    for basis in (before, after):
        basis["account"].pop("rate_share", None)
        for key in _LOCAL_PATHS:
            basis["journal"].pop(key, None)
    return before != after
