"""FleetController: the fleet's desired state turned into one named detached agent actor per symbol.

It keeps every symbol's epoch, lease and kill state in Ray's GCS key-value store (see
``controller/lease.py``), so a controller restart loses nothing; reconciles (recreates agents that
died for good, splits each account's order-rate limits among its agents); puts the whole fleet into
reduce-only while its total absolute notional is over the cap; and, when an agent does not answer a
kill in time, cancels that symbol's orders at the exchange itself, with keys read in ITS process.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import ray

from controller.lease import GcsStore, LeaseBook
from fleet.config import FleetConfig, SymbolParams, migrate_stored_hard_caps, symbol_params, validate_symbol_params
from fleet.vocabulary import KillState

log = logging.getLogger("mmfleet.controller")

CONTROLLER_NAME = "controller"
AGENT_PREFIX = "agent."
SPEC_DOC = "spec"
FLAGS_DOC = "fleet_flags"


def agent_name(symbol: str) -> str:
    return f"{AGENT_PREFIX}{symbol}"


@dataclass(frozen=True)
class ControllerSettings:
    """Timings of ownership and control; plain values so they travel as actor arguments."""

    lease_ttl_s: float = 3.0          # a lease lasts this long from the renew request
    renew_interval_s: float = 1.0     # agents renew this often
    reconcile_interval_s: float = 2.0
    kill_timeout_s: float = 3.0       # an agent that has not confirmed a halt by then: emergency path
    flatten_timeout_s: float = 15.0   # ... a flatten
    agent_call_timeout_s: float = 2.0  # status / exposure / params pushes
    stop_timeout_s: float = 25.0      # graceful stop of one agent on down/remove


# --- the applied spec (pure: built on the driver, where params files are readable) ----------------


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


def journal_record(controller: Any, kind: str, **kw: Any) -> None:
    """An operator/controller event in the trade journal (never in the way of the action itself)."""
    try:
        from journal.audit import record

        record(controller, kind, **kw)
    except Exception as exc:  # noqa: BLE001
        log.warning("journal: %s not recorded: %s", kind, _first_line(exc))


def _by(by: dict[str, Any] | None) -> dict[str, Any]:
    by = by or {}
    return {"actor": str(by.get("actor") or "ray")[:16], "token_fp": by.get("token_fp")}


def _first_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__


def _num(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _EmergencyBudget() -> Any:  # noqa: N802 - a class built lazily (the client is imported lazily)
    """The controller's budget: its own few calls only, never the IP-wide counts the agents spend.

    An emergency cancel must not queue behind the agents' quoting until the weight minute rolls
    over; if the exchange really is over the limit it answers 429, which is reported.
    """
    from fleet.binance.ratelimit import RateBudget

    class EmergencyBudget(RateBudget):
        def observe_headers(self, headers: Any, now: float | None = None) -> None:
            return None

    return EmergencyBudget()


# --- the actor -------------------------------------------------------------------------------------


@ray.remote(max_restarts=-1, max_task_retries=-1)
class FleetController:
    """One per fleet, named ``controller`` in the fleet's namespace. All methods are JSON in/out."""

    def __init__(self, fleet_name: str, namespace: str, settings: dict[str, float] | None = None) -> None:
        # No I/O that can fail here: a constructor that raises during a restart kills the actor for good.
        from agents.logging import install_log_escaping

        install_log_escaping()   # this process's mmfleet records: control characters escaped, one line each
        self.fleet_name = fleet_name
        self.namespace = namespace
        self.settings = ControllerSettings(**(settings or {}))
        self.book = LeaseBook(GcsStore(fleet_name), lease_ttl_s=self.settings.lease_ttl_s)
        self.cfg: FleetConfig | None = None
        self.params: dict[str, SymbolParams] = {}
        self.shares: dict[str, float] = {}
        self.reduce_only = False
        self.gross_notional = 0.0
        self.stopping = False
        self.started_at = time.time()
        self.reconciles = 0
        self.recreated: dict[str, int] = {}
        self.emergencies: dict[str, int] = {}
        self.last_error: str | None = None
        self.exchange_clients: dict[str, Any] = {}
        self.handles: dict[str, Any] = {}
        self.sweeps: set[asyncio.Task] = set()
        self.loaded = False
        self.reconciler: asyncio.Task | None = None
        try:
            self.reconciler = asyncio.get_running_loop().create_task(self._reconcile_forever())
        except RuntimeError as exc:  # no loop yet: the first call starts it
            self.last_error = _first_line(exc)

    # --- state --------------------------------------------------------------------------------

    def _load(self) -> None:
        """Read the applied spec and fleet flags back from the GCS (after a restart)."""
        if self.reconciler is None:  # the constructor found no running loop: start it from this call
            self.reconciler = asyncio.get_running_loop().create_task(self._reconcile_forever())
        if self.loaded:
            return
        doc = self.book.get_doc(SPEC_DOC)
        if doc is not None:
            self.cfg, self.params = parse_spec(doc, stored=True)
            self.shares = rate_shares(self.cfg)
        flags = self.book.get_doc(FLAGS_DOC) or {}
        self.reduce_only = bool(flags.get("reduce_only", False))
        self.loaded = True

    def _symbols(self) -> list[str]:
        return [e.symbol for e in self.cfg.symbols] if self.cfg else []

    def _handle(self, symbol: str, *, fresh: bool = False) -> Any | None:
        """The agent's handle, cached (a GCS lookup blocks this loop, which also serves leases)."""
        if not fresh and symbol in self.handles:
            return self.handles[symbol]
        try:
            handle = ray.get_actor(agent_name(symbol), namespace=self.namespace)
        except ValueError:
            self.handles.pop(symbol, None)
            return None
        self.handles[symbol] = handle
        return handle

    def _live_agents(self) -> set[str]:
        """Symbols whose agent actor holds its name (alive or restarting), in one GCS call."""
        names = ray.util.list_named_actors(all_namespaces=True)
        live = {a["name"][len(AGENT_PREFIX):] for a in names
                if a["namespace"] == self.namespace and a["name"].startswith(AGENT_PREFIX)}
        for symbol in list(self.handles):
            if symbol not in live:
                self.handles.pop(symbol, None)
        return live

    def _create_agent(self, symbol: str) -> Any:
        from agents.actor import AgentActor

        placement = self.cfg.agent
        handle = AgentActor.options(
            name=agent_name(symbol),
            namespace=self.namespace,
            lifetime="detached",
            get_if_exists=True,
            max_restarts=-1,
            max_task_retries=-1,
            num_cpus=placement.num_cpus,
            resources=dict(placement.resources) or None,
        ).remote(self.fleet_name, self.namespace, symbol)
        self.handles[symbol] = handle
        return handle

    async def _agent_call(self, symbol: str, method: str, *args: Any, timeout: float | None = None) -> Any:
        handle = self._handle(symbol)
        if handle is None:
            raise LookupError(f"no actor {agent_name(symbol)} in namespace {self.namespace}")
        try:
            return await asyncio.wait_for(
                getattr(handle, method).remote(*args), timeout or self.settings.agent_call_timeout_s
            )
        except ray.exceptions.ActorDiedError:
            self.handles.pop(symbol, None)  # gone for good: the reconcile loop recreates it
            raise

    # --- apply / reconcile --------------------------------------------------------------------

    async def apply(self, spec: dict[str, Any]) -> dict[str, Any]:
        """Make the fleet look like ``spec``: create, update live, remove; returns what changed."""
        self._load()
        cfg, params = parse_spec(spec)
        if cfg.name != self.fleet_name:
            raise ValueError(f"this controller runs fleet {self.fleet_name!r}, not {cfg.name!r}")
        endpoints_of(cfg)  # refuse a spec agents could not trade with, before anything changes
        old_cfg, old_params = self.cfg, dict(self.params)
        old_symbols = set(self._symbols())
        self.cfg, self.params, self.shares = cfg, params, rate_shares(cfg)
        self.stopping = False
        self.book.put_doc(SPEC_DOC, {"fleet": cfg.model_dump(mode="json"),
                                     "params": {s: p.model_dump(mode="json") for s, p in params.items()}})
        new_symbols = set(self._symbols())
        removed = sorted(old_symbols - new_symbols)
        journal_record(self, "apply", content=spec, detail={"symbols": sorted(new_symbols), "removed": removed})
        stops = await asyncio.gather(
            *(self._retire(s, flatten=False, account=old_cfg.entry(s).account) for s in removed)
        )
        created, updated, unchanged, errors = [], [], [], {}
        live = self._live_agents()
        for symbol in self._symbols():
            if symbol not in live:
                self._create_agent(symbol)
                created.append(symbol)
            elif old_cfg is None or old_params.get(symbol) != params[symbol] or old_cfg.runtime != cfg.runtime:
                updated.append(symbol)
            else:
                unchanged.append(symbol)
        pushes = await asyncio.gather(
            *(self._agent_call(s, "apply_params", params[s].model_dump(mode="json"),
                               timeout=self.settings.stop_timeout_s) for s in updated),
            return_exceptions=True,
        )
        for s, r in zip(updated, pushes):
            if isinstance(r, BaseException):
                errors[s] = _first_line(r)
        await self._push_shares()
        return {
            "fleet": self.fleet_name,
            "created": created,
            "updated": updated,
            "unchanged": unchanged,
            "removed": {s: r for s, r in zip(removed, stops)},
            "errors": errors,
            "rate_shares": self.shares,
        }

    async def _push_shares(self) -> None:
        await asyncio.gather(
            *(self._agent_call(s, "set_rate_share", share) for s, share in self.shares.items()),
            return_exceptions=True,
        )

    async def _reconcile_forever(self) -> None:
        while True:
            try:
                await self.reconcile()
            except Exception as exc:  # noqa: BLE001 - the loop must outlive any one bad pass
                self.last_error = _first_line(exc)
                log.exception("reconcile failed")
            await asyncio.sleep(self.settings.reconcile_interval_s)

    async def reconcile(self) -> dict[str, Any]:
        """One pass: recreate agents that died for good; fleet risk; returns what it did."""
        self._load()
        self.reconciles += 1
        if self.cfg is None or self.stopping:
            return {"recreated": [], "reduce_only": self.reduce_only}
        recreated = []
        live = self._live_agents()
        for symbol in self._symbols():
            if symbol not in live:
                log.warning("agent %s is gone: recreating it", agent_name(symbol))
                self._create_agent(symbol)
                self.recreated[symbol] = self.recreated.get(symbol, 0) + 1
                recreated.append(symbol)
        if recreated:
            await self._push_shares()
        await self._fleet_risk()
        return {"recreated": recreated, "reduce_only": self.reduce_only, "gross_notional": self.gross_notional}

    async def _fleet_risk(self) -> None:
        symbols = self._symbols()
        answers = await asyncio.gather(*(self._agent_call(s, "exposure") for s in symbols), return_exceptions=True)
        gross = sum(abs(_num(a.get("notional"))) for a in answers if isinstance(a, dict))
        self.gross_notional = gross
        over = gross > self.cfg.risk.max_total_notional
        if over != self.reduce_only:
            log.warning("fleet gross notional %.2f %s cap %.2f: reduce-only %s", gross,
                        "over" if over else "back under", self.cfg.risk.max_total_notional, "on" if over else "off")
            self.reduce_only = over
            self.book.put_doc(FLAGS_DOC, {"reduce_only": over})
        # Pushed every pass (idempotent) so a restarted agent learns it at once, not at its next renew.
        await asyncio.gather(*(self._agent_call(s, "set_reduce_only", self.reduce_only) for s in symbols),
                             return_exceptions=True)

    # --- leases (called by the agents) --------------------------------------------------------

    async def acquire_lease(self, symbol: str, holder: str) -> dict[str, Any]:
        self._load()
        return self.book.acquire(symbol, holder, now=time.time(), reduce_only=self.reduce_only,
                                 rate_share=self.shares.get(symbol, 1.0)).to_dict()

    async def renew_lease(self, symbol: str, holder: str, epoch: int) -> dict[str, Any]:
        self._load()
        return self.book.renew(symbol, holder, int(epoch), now=time.time(), reduce_only=self.reduce_only,
                               rate_share=self.shares.get(symbol, 1.0)).to_dict()

    async def release_lease(self, symbol: str, holder: str, epoch: int | None = None) -> bool:
        return self.book.release(symbol, holder, epoch)

    async def agent_spec(self, symbol: str) -> dict[str, Any]:
        """What ``agent.<symbol>`` trades by, fetched by the actor at every (re)start (no secrets)."""
        self._load()
        if self.cfg is None or symbol not in self.params:
            raise LookupError(f"{symbol} is not part of fleet {self.fleet_name}")
        entry = self.cfg.entry(symbol)
        return {
            "fleet_name": self.fleet_name,
            "symbol": symbol,
            "params": self.params[symbol].model_dump(mode="json"),
            "runtime": self.cfg.runtime.model_dump(mode="json"),
            "endpoints": endpoints_of(self.cfg),
            "account": self.cfg.account(entry.account).model_dump(mode="json"),
            "renew_interval_s": self.settings.renew_interval_s,
            "reduce_only": self.reduce_only,
            "rate_share": self.shares.get(symbol, 1.0),
            "journal": self.cfg.journal.model_dump(mode="json"),
        }

    # --- kill switches ------------------------------------------------------------------------

    async def kill(self, symbols: list[str] | None, mode: str = "halt", reason: str = "",
                   by: dict[str, Any] | None = None) -> dict[str, Any]:
        """Halt or flatten; per symbol the outcome, open orders confirmed at the exchange, time taken."""
        self._load()
        if mode not in ("halt", "flatten"):
            raise ValueError(f"mode must be 'halt' or 'flatten', not {mode!r}")
        targets = self._targets(symbols)
        for s in targets:  # by: who asked ({"actor": "api", "token_fp": ...}); none: over Ray (the CLI)
            journal_record(self, "kill", symbol=s, reason=reason, detail={"mode": mode}, **_by(by))
        started = time.monotonic()
        state = KillState.HALTED if mode == "halt" else KillState.FLATTENING
        # Durable first: a restart from here on comes back halted.
        seqs = {s: self.book.set_kill_state(s, state, reason).seq for s in targets}
        results = await asyncio.gather(*(self._kill_one(s, mode, reason, seqs[s]) for s in targets))
        return {
            "mode": mode,
            "reason": reason,
            "elapsed_ms": round((time.monotonic() - started) * 1000, 1),
            "symbols": dict(zip(targets, results)),
        }

    def _targets(self, symbols: list[str] | None) -> list[str]:
        known = self._symbols()
        if not symbols:
            return known
        unknown = [s for s in symbols if s not in known]
        if unknown:
            raise ValueError(f"unknown symbol(s) {', '.join(unknown)}; fleet {self.fleet_name} trades {', '.join(known)}")
        return list(dict.fromkeys(symbols))

    async def _kill_one(self, symbol: str, mode: str, reason: str, kill_seq: int) -> dict[str, Any]:
        started = time.monotonic()
        timeout = self.settings.kill_timeout_s if mode == "halt" else self.settings.flatten_timeout_s
        answer: Any = None
        problem = None
        try:
            answer = await self._agent_call(symbol, mode, reason, kill_seq, timeout=timeout)
        except asyncio.TimeoutError:
            problem = f"agent did not answer the {mode} within {timeout:g} s"
        except Exception as exc:  # noqa: BLE001 - any failure leads to the emergency path
            problem = f"agent failed the {mode}: {_first_line(exc)}"
        open_orders = answer.get("open_orders") if isinstance(answer, dict) else None
        if problem is None and open_orders == 0:
            if mode == "flatten" and _num(answer.get("position")) == 0 and answer.get("position") is not None:
                self.book.set_kill_state(symbol, KillState.HALTED, reason or "flattened")
            return {"outcome": "halted" if mode == "halt" else "flattened", "path": "agent", "open_orders": 0,
                    "position": answer.get("position"), "elapsed_ms": round((time.monotonic() - started) * 1000, 1)}
        if problem is None and isinstance(answer, dict) and answer.get("outcome") == "not_started":
            # Not trading yet (it gets the kill state with its grant): empty the book, keep its lease.
            result = await self._emergency(symbol, mode, revoke=False)
            result.update(path="controller", elapsed_ms=round((time.monotonic() - started) * 1000, 1))
            if result["outcome"] == "emergency_cancelled":
                result["outcome"] = "halted" if mode == "halt" else "flattened"
            return result
        if problem is None:
            problem = f"agent reported {open_orders!r} open orders after the {mode}"
        log.warning("%s: %s; cancelling at the exchange", symbol, problem)
        result = await self._emergency(symbol, mode)
        result.update(problem=problem, elapsed_ms=round((time.monotonic() - started) * 1000, 1))
        return result

    async def _exchange(self, account_name: str) -> Any:
        """The controller's own client for an account, keys read in this process (env or key file)."""
        client = self.exchange_clients.get(account_name)
        if client is None:
            from fleet.binance.client import BinanceClient
            from fleet.binance.credentials import load_credentials

            creds = load_credentials(self.cfg.account(account_name))
            client = BinanceClient(endpoints_of(self.cfg)["rest_url"], creds.api_key, creds.api_secret,
                                   budget=_EmergencyBudget())
            await client.open()
            self.exchange_clients[account_name] = client
        return client

    async def _emergency(self, symbol: str, mode: str, *, revoke: bool = True) -> dict[str, Any]:
        """Revoke the lease (no more renewals), cancel every order of the symbol, confirm, sweep later."""
        lease = None
        if revoke:
            self.emergencies[symbol] = self.emergencies.get(symbol, 0) + 1
            lease = self.book.revoke(symbol)
            journal_record(self, "lease_revoked", symbol=symbol, reason=f"emergency {mode}")
        try:
            client = await self._exchange(self.cfg.entry(symbol).account)
            await client.cancel_all(symbol)
            position = None
            if mode == "flatten":
                position = await self._close_position(client, symbol)
            left = len(await client.open_orders(symbol))
        except Exception as exc:  # noqa: BLE001 - reported to the operator, never swallowed
            log.error("%s: emergency cancel failed: %s", symbol, _first_line(exc))
            return {"outcome": "failed", "path": "emergency", "open_orders": None, "error": _first_line(exc)}
        if lease is not None:
            # The stuck agent's lease was promised until expires_at: sweep again once it has lapsed.
            delay = max(0.0, lease.expires_at - time.time()) + 0.2
            task = asyncio.get_running_loop().create_task(self._sweep(symbol, delay))
            self.sweeps.add(task)
            task.add_done_callback(self.sweeps.discard)
        return {"outcome": "emergency_cancelled", "path": "emergency", "open_orders": left, "position": position}

    async def _close_position(self, client: Any, symbol: str) -> float:
        from decimal import Decimal

        from fleet.binance.models import OrderRequest

        pos = await client.position(symbol)
        amount = Decimal(pos.amount)
        if amount != 0:
            side = "SELL" if amount > 0 else "BUY"
            await client.place_order(OrderRequest(symbol=symbol, side=side, order_type="MARKET",
                                                  quantity=format(abs(amount), "f"), reduce_only=True))
            amount = Decimal((await client.position(symbol)).amount)
        return float(amount)

    async def _sweep(self, symbol: str, delay: float) -> None:
        await asyncio.sleep(delay)
        try:
            client = await self._exchange(self.cfg.entry(symbol).account)
            if self.book.kill_state(symbol) != KillState.RUNNING:
                await client.cancel_all(symbol)
        except Exception as exc:  # noqa: BLE001
            log.error("%s: emergency sweep failed: %s", symbol, _first_line(exc))

    async def resume(self, symbols: list[str] | None = None, by: dict[str, Any] | None = None) -> dict[str, Any]:
        self._load()
        targets = self._targets(symbols)
        for s in targets:
            journal_record(self, "resume", symbol=s, reason=(by or {}).get("reason"), **_by(by))
        seqs = {s: self.book.set_kill_state(s, KillState.RUNNING, "resumed").seq for s in targets}
        answers = await asyncio.gather(
            *(self._agent_call(s, "resume", seqs[s], timeout=self.settings.kill_timeout_s) for s in targets),
            return_exceptions=True,
        )
        out = {}
        for s, a in zip(targets, answers):
            if isinstance(a, BaseException):
                # The state is durable: the agent picks it up at its next lease renewal.
                out[s] = {"outcome": "resumed", "agent": f"not confirmed: {_first_line(a)}"}
            else:
                out[s] = {"outcome": "resumed", "agent": a}
        return {"symbols": out}

    async def kill_states(self) -> dict[str, Any]:
        self._load()
        records = self.book.kill_records()
        out = {s: {"state": KillState.RUNNING, "reason": "", "since": 0.0} for s in self._symbols()}
        out.update({s: asdict(r) for s, r in records.items()})
        return out

    # --- views --------------------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        self._load()
        now = time.time()
        symbols = {}
        for s in self._symbols():
            lease = self.book.lease(s)
            symbols[s] = {
                "epoch": self.book.epoch(s),
                "lease_holder": lease.holder if lease else None,
                "lease_expires_in_s": round(lease.expires_at - now, 3) if lease else None,
                "lease_revoked": lease.revoked if lease else False,
                "kill_state": self.book.kill_state(s),
                "rate_share": self.shares.get(s),
                "recreated": self.recreated.get(s, 0),
                "emergencies": self.emergencies.get(s, 0),
            }
        return {
            "fleet": self.fleet_name,
            "namespace": self.namespace,
            "applied": self.cfg is not None,
            "stopping": self.stopping,
            "reduce_only": self.reduce_only,
            "gross_notional": self.gross_notional,
            "max_total_notional": self.cfg.risk.max_total_notional if self.cfg else None,
            "reconciles": self.reconciles,
            "uptime_s": round(now - self.started_at, 1),
            "last_error": self.last_error,
            "symbols": symbols,
        }

    async def spec(self) -> dict[str, Any] | None:
        self._load()
        return self.book.get_doc(SPEC_DOC)

    # --- shutdown -----------------------------------------------------------------------------

    async def _retire(self, symbol: str, flatten: bool, account: str | None = None) -> dict[str, Any]:
        """Stop one agent gracefully, confirm its book is empty at the exchange, remove the actor."""
        started = time.monotonic()
        handle = self._handle(symbol, fresh=True)
        self.handles.pop(symbol, None)
        summary: Any = None
        error = None
        if handle is not None:
            try:
                summary = await asyncio.wait_for(handle.stop.remote(flatten), self.settings.stop_timeout_s)
            except Exception as exc:  # noqa: BLE001 - fall back to the exchange below
                error = _first_line(exc)
            ray.kill(handle, no_restart=True)
        open_orders = None
        try:
            account = account or (self.cfg.entry(symbol).account if self.cfg else None)
            client = await self._exchange(account) if account else None
            if client is not None:
                if error is not None or (isinstance(summary, dict) and summary.get("open_orders")):
                    await client.cancel_all(symbol)
                open_orders = len(await client.open_orders(symbol))
                if open_orders:
                    await client.cancel_all(symbol)
                    open_orders = len(await client.open_orders(symbol))
        except Exception as exc:  # noqa: BLE001
            error = (error + "; " if error else "") + f"exchange check failed: {_first_line(exc)}"
        self.book.forget(symbol)
        return {
            "stopped": handle is not None,
            "open_orders": open_orders,
            "summary": summary if isinstance(summary, dict) else None,
            "error": error,
            "elapsed_ms": round((time.monotonic() - started) * 1000, 1),
        }

    async def down(self, flatten: bool = False) -> dict[str, Any]:
        """Stop every agent (optionally flattening), confirm 0 open orders, forget the applied spec."""
        self._load()
        self.stopping = True
        symbols = self._symbols()
        results = await asyncio.gather(*(self._retire(s, flatten) for s in symbols))
        self.book.delete_doc(SPEC_DOC)
        for task in list(self.sweeps):
            task.cancel()
        for client in self.exchange_clients.values():
            await client.close()
        self.exchange_clients.clear()
        self.cfg, self.params, self.shares = None, {}, {}
        return {"fleet": self.fleet_name, "symbols": dict(zip(symbols, results))}

    async def ping(self) -> dict[str, Any]:
        return {"fleet": self.fleet_name, "uptime_s": round(time.time() - self.started_at, 1)}


def get_or_create_controller(cfg: FleetConfig, settings: ControllerSettings | None = None) -> Any:
    """The fleet's controller (created detached if missing). Needs a Ray connection."""
    return FleetController.options(
        name=CONTROLLER_NAME,
        namespace=cfg.namespace,
        lifetime="detached",
        get_if_exists=True,
        num_cpus=0,
    ).remote(cfg.name, cfg.namespace, asdict(settings or ControllerSettings()))


def find_controller(namespace: str) -> Any | None:
    try:
        return ray.get_actor(CONTROLLER_NAME, namespace=namespace)
    except ValueError:
        return None
