"""``python -m fleet up|apply|down|status|exposure|kill|resume|validate``: the fleet on Ray.

``up`` connects to (or starts) Ray, starts the simulator when the exchange is ``sim``, creates the
controller, applies the config, deploys the HTTP endpoint and shows a live table until
``--duration`` ends or Ctrl-C, then stops the fleet and prints a summary. The other commands talk
to a running fleet's controller and agents through Ray. Ray is imported only inside commands.

Symbols are checked against the exchange's list before anything trades: ``up`` refuses, before it
starts Ray or anything else, a symbol the exchange does not list (or lists as not trading), and a
Binance exchange it cannot reach; ``validate`` checks them when the exchange answers and says so
when it does not. The simulator would list any name it is started with (a generic spec), so for
``kind: sim`` the list is the symbols it has a real spec for: its three built-in ones (ETHUSDC,
BTCUSDT, SOLUSDT) and those its config (``exchange.sim.config``) lists under ``symbols:``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from fleet.config import FleetConfig

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_REFUSED = 3
EXIT_NOT_RUNNING = 4


class FleetCliError(Exception):
    """The command cannot do what was asked; the message says what to change. Carries an exit code."""

    def __init__(self, message: str, code: int = EXIT_CONFIG) -> None:
        super().__init__(message)
        self.code = code


class FleetAlreadyRunning(FleetCliError):
    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_REFUSED)


# --- arguments (one function for all the module's commands: the command is the parser's last word) --


def add_arguments(parser: argparse.ArgumentParser) -> None:
    command = parser.prog.split()[-1]
    if command == "validate":
        parser.add_argument("--config", required=True, help="fleet config YAML to check")
        return
    if command in ("up", "apply"):
        parser.add_argument("--config", required=True, help="fleet config YAML (e.g. configs/fleet.demo.yaml)")
    else:
        where = parser.add_mutually_exclusive_group()
        where.add_argument("--config", help="the fleet's config YAML (names the fleet)")
        where.add_argument("--fleet", help="the fleet's name (default: mmfleet)")
    default_address = "auto"
    parser.add_argument(
        "--address", default=default_address,
        help="Ray cluster: 'auto' (a running cluster, else a new local one for up) or 'local' (always new), "
        "or host:port",
    )
    if command == "up":
        parser.add_argument("--duration", type=float, default=None, help="run this many seconds, then stop")
        parser.add_argument("--detach", action="store_true", help="leave the fleet running and exit")
        parser.add_argument("--refresh", type=float, default=None,
                            help="seconds between tables (default: 1 on a terminal, 10 otherwise)")
        parser.add_argument("--quote-timeout", type=float, default=90.0,
                            help="how long to show start-up progress before reporting agents that do not quote")
    if command in ("status", "exposure"):
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    if command == "kill":
        parser.add_argument("--symbol", action="append", help="symbol to kill (repeat; default: all)")
        parser.add_argument("--flatten", action="store_true", help="also close the positions (reduce-only)")
        parser.add_argument("--reason", default="operator (CLI)", help="why; kept with the kill state")
    if command == "resume":
        parser.add_argument("--symbol", action="append", help="symbol to resume (repeat; default: all)")
    if command == "down":
        parser.add_argument("--flatten", action="store_true", help="close the positions before stopping")


# --- configuration --------------------------------------------------------------------------------


def load(config_path: str) -> tuple[Any, dict[str, Any]]:
    """The fleet config and the ``apply`` document (symbol params resolved); FleetCliError if bad."""
    from controller.controller import build_spec
    from fleet.config import ConfigError, load_fleet_config
    from journal.db import with_absolute_paths

    try:
        cfg = with_absolute_paths(load_fleet_config(config_path))  # the journal's files, wherever agents run
        spec = build_spec(cfg, config_path)
    except ConfigError as exc:
        raise FleetCliError(str(exc)) from None
    if not cfg.symbols:
        raise FleetCliError(f"invalid config {config_path}: symbols: the fleet lists no symbol")
    return cfg, spec


@dataclass(frozen=True)
class ExchangeListing:
    """The symbols an exchange lists, with their status; ``symbols`` is None when it did not answer."""

    source: str
    symbols: dict[str, str] | None
    error: str | None = None
    smallest: dict[str, Decimal] = field(default_factory=dict)   # the smallest order (LOT_SIZE) per symbol
    min_notional: dict[str, Decimal] = field(default_factory=dict)   # the smallest notional (MIN_NOTIONAL)

    def problems(self, wanted: list[str], params: dict[str, Any] | None = None) -> list[str]:
        """Each wanted symbol the exchange does not list, or lists as not trading, or whose ``params``
        could never trade on it (``fleet.config.params_refusal``: the agent would place nothing), with why."""
        from fleet.config import params_refusal

        if self.symbols is None:
            return []
        out = []
        for sym in wanted:
            status = self.symbols.get(sym)
            if status is None:
                out.append(f"{sym} is not listed by {self.source}")
            elif status != "TRADING":
                out.append(f"{sym} is listed by {self.source} but not trading (status {status})")
            elif params and sym in self.smallest and (
                    refusal := params_refusal(sym, params[sym], self.smallest[sym], self.min_notional.get(sym))):
                out.append(refusal)
        return out


EXCHANGE_INFO = "/fapi/v1/exchangeInfo"


def exchange_listing(cfg: Any, timeout: float = 10.0, *, running: bool = False) -> ExchangeListing:
    """What the fleet's exchange lists: Binance's exchangeInfo, or the simulator's own symbols.

    ``up`` starts the simulator with the fleet's symbols, and it makes up a generic contract for any
    name it is given; what counts as listed is what it has a spec for: its built-in three and the
    symbols its config lists. ``running``: the fleet is up, so its exchange (the simulator ``up``
    started, serving the symbols it was started with) answers exchangeInfo itself.
    """
    if cfg.exchange.kind == "sim" and not (running and cfg.exchange.rest_url):
        from fleet.sim.config import SimConfigError, load_sim_config

        try:
            sim = load_sim_config(cfg.exchange.sim.config)
        except SimConfigError as exc:
            raise FleetCliError(str(exc)) from None
        from fleet.sim.config import SimConfig

        specs = {spec.symbol: spec for spec in (*SimConfig().symbol_specs(), *sim.symbols)}
        listed = list(specs)
        where = cfg.exchange.sim.config or "its config (exchange.sim.config)"
        source = (f"the simulator (it lists {', '.join(listed)}: its built-in symbols plus those under "
                  f"symbols: in {where})")
        smallest = {s: sp.smallest_order for s, sp in specs.items()}
        notional = {s: Decimal(sp.min_notional) for s, sp in specs.items()}
        return ExchangeListing(source, dict.fromkeys(listed, "TRADING"), smallest=smallest, min_notional=notional)
    import urllib.error
    import urllib.request

    url = cfg.exchange.rest_url.rstrip("/") + EXCHANGE_INFO
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            info = json.loads(resp.read())
        symbols = {str(e["symbol"]): str(e.get("status", "TRADING")) for e in info["symbols"]}
        smallest = {str(e["symbol"]): max(Decimal(f["minQty"]), Decimal(f["stepSize"]))
                    for e in info["symbols"] for f in e.get("filters", []) if f.get("filterType") == "LOT_SIZE"}
        notional = _min_notionals(info["symbols"])
    except urllib.error.HTTPError as exc:
        return ExchangeListing(url, None, f"HTTP {exc.code} {exc.reason}")
    except (OSError, ValueError, KeyError, TypeError, ArithmeticError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return ExchangeListing(url, None, f"{type(exc).__name__}: {reason}")
    return ExchangeListing(f"the exchange ({url})", symbols, smallest=smallest, min_notional=notional)


def _min_notionals(symbols: list[dict[str, Any]]) -> dict[str, Decimal]:
    """Each symbol's MIN_NOTIONAL (``notional``, or ``minNotional`` as some listings name it); a symbol
    whose filter does not read has none here (its orders' notional is then the agent's to learn)."""
    out: dict[str, Decimal] = {}
    for e in symbols:
        for f in e.get("filters", []):
            if f.get("filterType") == "MIN_NOTIONAL":
                with contextlib.suppress(ArithmeticError, TypeError, ValueError):
                    value = Decimal(str(f.get("notional", f.get("minNotional"))))
                    if value.is_finite():
                        out[str(e["symbol"])] = value
    return out


def check_symbols(cfg: Any, listing: ExchangeListing, then: str = "", spec: dict[str, Any] | None = None) -> None:
    """FleetCliError naming every symbol the exchange does not list (or not as trading), or, with the
    ``apply`` document, whose parameters could never trade there (a size or bound under its smallest order)."""
    from fleet.config import SymbolParams

    params = {s: SymbolParams.model_validate(p) for s, p in spec["params"].items()} if spec else None
    problems = listing.problems([e.symbol for e in cfg.symbols], params)
    if problems:
        raise FleetCliError(f"symbols not tradable on the exchange: {'; '.join(problems)}{then}")


def _namespace(args: argparse.Namespace) -> tuple[str, str]:
    """(fleet name, namespace) named by --config or --fleet."""
    if getattr(args, "config", None):
        cfg, _ = load(args.config)
        return cfg.name, cfg.namespace
    name = getattr(args, "fleet", None) or "mmfleet"
    return name, f"mmfleet-{name}"


# --- Ray connection -------------------------------------------------------------------------------


def _ray_executable() -> str:
    beside = Path(sys.executable).with_name("ray")
    return str(beside) if beside.exists() else (shutil.which("ray") or "ray")


# A cluster this project starts on one machine listens on loopback only: with this setting Ray takes
# 127.0.0.1 as the node's address (its single-machine mode), so the GCS, raylets, workers, the
# dashboard agent and Serve bind 127.0.0.1, not the machine's network address. It must be in the
# environment before Ray is imported (Ray reads it at import) and is inherited by every process the
# cluster spawns. A cluster of several machines (`--address` of a running cluster) is not touched.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def loopback_only() -> None:
    """Make the next local cluster this process starts bind to 127.0.0.1 (see ``LOOPBACK_ENV``)."""
    if "ray" in sys.modules and os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") != "0":
        from ray._private import ray_constants

        if ray_constants.ENABLE_RAY_CLUSTER:
            raise FleetCliError(
                "Ray was imported before the loopback-only setting: set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 "
                "to start a local cluster", EXIT_FAILED)
    os.environ.update(LOOPBACK_ENV)


def _auto_address() -> str | None:
    """The address ``address="auto"`` stands for, read before Ray is imported, the way Ray's own "auto"
    finds a cluster: ``RAY_ADDRESS``, else the address ``ray start`` leaves in
    ``<tmp>/ray/ray_current_cluster``; None when neither says."""
    found = os.environ.get("RAY_ADDRESS")
    if not found:
        path = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "ray_current_cluster"
        try:
            found = path.read_text().strip()
        except OSError:
            return None
    return found or None


def _local_cluster_expected() -> bool:
    """Will ``address="auto"`` find no cluster, or one on loopback (one that ``up --detach`` started)?"""
    found = _auto_address()
    return not found or found.split(":")[0] in ("127.0.0.1", "localhost")


def loopback_wanted(address: str) -> bool:
    """Whether this driver takes the loopback-only setting before Ray is imported: it starts a local
    cluster, or joins one on loopback (``up --detach`` started it). Without the setting a driver looks
    for that cluster at the machine's network address and waits for ever (a ``kill`` that never comes)."""
    if address == "local":
        return True
    if address == "auto":
        return _local_cluster_expected()
    return address.rsplit(":", 1)[0] in ("127.0.0.1", "localhost")


# MMFLEET_CONNECT_TIMEOUT_S: the wait for a running cluster's GCS to answer (0: Ray's own, a minute and more)
CONNECT_TIMEOUT_S = 30.0
KILL_HINT = "The fleet endpoint's POST /kill does not: its exchange route empties the books without the GCS."


def connect_timeout() -> float:
    raw = os.environ.get("MMFLEET_CONNECT_TIMEOUT_S")
    if raw is None:
        return CONNECT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise FleetCliError(f"MMFLEET_CONNECT_TIMEOUT_S must be a number of seconds, 0 for no bound, got {raw!r}")
    return value


@contextlib.contextmanager
def bounded_connect(address: str, hint: str = KILL_HINT) -> Any:
    """Ray's connect to a cluster whose GCS is down or hung retries for a minute and more, saying only
    Ray's own warnings; past :func:`connect_timeout` this process says what it waited for (and ``hint``)
    and ends (``EXIT_NOT_RUNNING``; Ray's connect cannot be interrupted)."""
    limit = connect_timeout()
    if not limit:
        yield
        return
    where = (_auto_address() or "auto") if address == "auto" else address

    def give_up() -> None:
        sys.stdout.flush()
        sys.stderr.write(f"the Ray cluster at {where} did not answer within {limit:g} s (its GCS down or hung?): "
                         f"this command goes through it. {hint}".rstrip() + "\n")
        sys.stderr.flush()
        os._exit(EXIT_NOT_RUNNING)

    timer = threading.Timer(limit, give_up)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def connect(address: str, namespace: str, *, start_local: bool, detach: bool = False, hint: str = KILL_HINT) -> bool:
    """Connect this driver to Ray; returns True if it started a cluster that ends with the driver. A
    running cluster that does not answer ends the process past :func:`connect_timeout` (``hint`` said)."""
    import logging

    if loopback_wanted(address):
        loopback_only()
    import ray

    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # keep the table readable
    if ray.is_initialized():
        return False
    quiet = {"log_to_driver": False, "logging_level": "ERROR", "namespace": namespace}
    if address not in ("auto", "local"):
        with bounded_connect(address, hint):
            ray.init(address=address, **quiet)
        return False
    if address == "auto":
        try:
            with bounded_connect("auto", hint):
                ray.init(address="auto", **quiet)
            return False
        except ConnectionError:
            if not start_local:
                raise FleetCliError("no running Ray cluster found (is the fleet up?)", EXIT_NOT_RUNNING) from None
    if detach:
        # A cluster that outlives this driver: `ray start --head`, then connect to it.
        from fleet.ops.ports import free_port

        port = free_port()
        cmd = [_ray_executable(), "start", "--head", f"--port={port}", "--include-dashboard=false",
               "--disable-usage-stats", "--node-ip-address=127.0.0.1"]
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **LOOPBACK_ENV})
        if done.returncode != 0:
            raise FleetCliError(f"`{' '.join(cmd)}` failed:\n{done.stderr.strip()[-2000:]}", EXIT_FAILED)
        print(f"started a Ray cluster at 127.0.0.1:{port} (it stays up; `ray stop` ends it)", flush=True)
        ray.init(address=f"127.0.0.1:{port}", **quiet)
        return False
    ray.init(address="local", include_dashboard=False, **quiet)
    return True


# --- the fleet's pieces ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RunningFleet:
    """What ``start_fleet`` brought up: the config as applied, where the endpoint and token are."""

    cfg: Any
    api_url: str
    token_where: str
    sim_urls: dict[str, str] | None
    applied: dict[str, Any]

    @property
    def namespace(self) -> str:
        return self.cfg.namespace

    @property
    def symbols(self) -> list[str]:
        return [e.symbol for e in self.cfg.symbols]


def fleet_running(namespace: str) -> bool:
    """A controller with an applied spec lives in the namespace."""
    import ray

    from controller.controller import find_controller

    ctl = find_controller(namespace)
    if ctl is None:
        return False
    try:
        return ray.get(ctl.spec.remote(), timeout=30) is not None
    except Exception:  # noqa: BLE001 - a controller that cannot answer still holds the name
        return True


def start_simulator(cfg: Any) -> tuple[Any, dict[str, str]]:
    """The simulator as a detached actor; each account's keys in a 0600 file under state_dir."""
    import ray

    from controller.handles import above_agents_env, named_actor
    from fleet.ops.simhost import SIM_ACTOR, SimHost, sim_key_file, write_sim_keys

    key_files = {a.name: str(write_sim_keys(sim_key_file(cfg.state_dir, cfg.name, a.name))) for a in cfg.accounts}
    sim_cfg = cfg.exchange.sim
    config_path = str(Path(sim_cfg.config).absolute()) if sim_cfg.config else None
    if (old := named_actor(SIM_ACTOR, cfg.namespace)) is not None:
        ray.kill(old)  # left over from a fleet that was not brought down
    host = SimHost.options(name=SIM_ACTOR, namespace=cfg.namespace, lifetime="detached",
                           runtime_env=above_agents_env()).remote(
        [e.symbol for e in cfg.symbols], sim_cfg.seed, sim_cfg.host, sim_cfg.port, key_files, config_path
    )
    urls = ray.get(host.start.remote(), timeout=60)
    accounts = tuple(
        a.model_copy(update={"key_file": key_files[a.name], "api_key_env": None, "api_secret_env": None})
        for a in cfg.accounts
    )
    exchange = cfg.exchange.model_copy(
        update={"rest_url": urls["rest_url"], "ws_market_url": urls["ws_url"], "ws_user_url": urls["ws_url"]}
    )
    return cfg.model_copy(update={"exchange": exchange, "accounts": accounts}), urls


def stop_simulator(namespace: str) -> None:
    import ray

    from controller.handles import named_actor
    from fleet.ops.simhost import SIM_ACTOR

    host = named_actor(SIM_ACTOR, namespace)
    if host is None:
        return
    try:
        ray.get(host.stop.remote(), timeout=20)
    finally:
        ray.kill(host)


def start_fleet(cfg: Any, spec: dict[str, Any], *, controller_settings: Any = None,
                route_prefix: str = "/") -> RunningFleet:
    """Simulator (if any), controller, endpoint, then the agents. Needs a Ray connection; refuses a running fleet.

    The endpoint is deployed before the agents are created: Ray starts worker processes a few at a
    time (as many as the node has CPUs), so Serve's own actors created after 50 agents would wait
    behind all of them (at 50 symbols Serve's proxy missed its start deadline), and the endpoint
    answers /status and /kill while the agents start.
    """
    import ray

    from controller.api import deploy, ensure_api_token
    from controller.controller import get_or_create_controller

    if fleet_running(cfg.namespace):
        raise FleetAlreadyRunning(
            f"fleet {cfg.name!r} is already running (controller in Ray namespace {cfg.namespace}). "
            f"To change it, apply the new config: python -m fleet apply --config <file>; "
            f"to restart it: python -m fleet down --fleet {cfg.name}, then up again."
        )
    sim_urls = None
    if cfg.exchange.kind == "sim":
        cfg, sim_urls = start_simulator(cfg)
    spec = {**spec, "fleet": cfg.model_dump(mode="json")}
    controller = get_or_create_controller(cfg, controller_settings)
    api_cfg, token_where = ensure_api_token(cfg)
    api_url = deploy(api_cfg, route_prefix=route_prefix)
    applied = ray.get(controller.apply.remote(spec), timeout=120)
    return RunningFleet(cfg=api_cfg, api_url=api_url, token_where=token_where, sim_urls=sim_urls, applied=applied)


def stop_fleet(namespace: str, fleet_name: str, *, flatten: bool = False) -> dict[str, Any]:
    """``down``: agents stopped with 0 open orders confirmed, endpoint removed, controller and simulator gone."""
    import ray

    from controller.controller import find_controller, forget_last_down, remove_controller

    result: dict[str, Any] = {"fleet": fleet_name, "symbols": {}}
    ctl = find_controller(namespace)
    if ctl is not None:
        result = ray.get(ctl.down.remote(flatten), timeout=300)
    remove_controller(namespace)   # and the agents' spawner
    try:   # its caller has the outcome: a later controller of the name must not answer it
        forget_last_down(fleet_name)
    except Exception as exc:  # noqa: BLE001 - the rest of the down goes on; said
        from fleet.text import named_line

        print(f"the down's stored outcome not removed ({named_line(exc)}): a later down of {fleet_name!r} with no "
              "agent may answer it", file=sys.stderr)
    _undeploy(fleet_name)
    stop_simulator(namespace)
    return result


def _undeploy(fleet_name: str) -> None:
    from ray import serve

    from controller.handles import app_name

    try:
        if app_name(fleet_name) in serve.status().applications:
            serve.delete(app_name(fleet_name))
    except Exception as exc:  # noqa: BLE001 - Serve not running: nothing to remove
        if "serve" not in str(exc).lower() and "controller" not in str(exc).lower():
            raise


# --- reading the fleet ---------------------------------------------------------------------------


def _gather(namespace: str, symbols: list[str], method: str, timeout: float = 5.0) -> dict[str, Any]:
    """Each agent's answer to ``method`` (or an error string), asked concurrently."""
    import ray

    from controller.handles import agent_name, named_actor

    refs = {}
    out: dict[str, Any] = {}
    for s in symbols:
        if (agent := named_actor(agent_name(s), namespace)) is None:
            out[s] = "no actor"
        else:
            refs[s] = getattr(agent, method).remote()
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout)
    ready_set = set(ready)
    for s, ref in refs.items():
        if ref not in ready_set:
            out[s] = f"no answer within {timeout:g} s"
            continue
        try:
            out[s] = ray.get(ref)
        except Exception as exc:  # noqa: BLE001 - shown in the table
            out[s] = f"{type(exc).__name__}"
    return out


def _counters(metrics_text: Any) -> dict[str, float]:
    """Fills and grinds from an agent's exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {"fills": 0.0, "grinds": 0.0}
    if not isinstance(metrics_text, str) or not metrics_text:
        return out
    try:
        for fam in text_string_to_metric_families(metrics_text):
            for s in fam.samples:
                if s.name == "mm_fills_total":
                    out["fills"] += s.value
                elif s.name == "mm_grind_count_total":
                    out["grinds"] += s.value
    except ValueError:
        pass  # a malformed page shows zero counts; /metrics reports it properly
    return out


def snapshot(namespace: str, symbols: list[str]) -> dict[str, dict[str, Any]]:
    """Per symbol: status, exposure and counters as the table shows them."""
    status = _gather(namespace, symbols, "status")
    expo = _gather(namespace, symbols, "exposure")
    metrics = _gather(namespace, symbols, "metrics")
    rows = {}
    for s in symbols:
        st = status.get(s) if isinstance(status.get(s), dict) else {}
        ex = expo.get(s) if isinstance(expo.get(s), dict) else {}
        err = next((v for v in (status.get(s), expo.get(s)) if isinstance(v, str)), None)
        rows[s] = {"status": st, "exposure": ex, **_counters(metrics.get(s)), "error": err}
    return rows


def _f(value: Any, digits: int = 4) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "-"
    return "-" if not math.isfinite(v) else f"{v:.{digits}f}"


def net_pnl(exposure: dict[str, Any]) -> float:
    """A symbol's P&L as the journal and the console count it: realized + unrealized + funding - fees."""
    parts = ("realized_pnl", "unrealized_pnl", "funding_pnl")
    return sum(float(exposure.get(k) or 0.0) for k in parts) - float(exposure.get("commission") or 0.0)


def render_table(rows: dict[str, dict[str, Any]]) -> str:
    """The live table: per symbol position, worst case vs cap, P&L net of fees, fills, grinds, kill state."""
    head = f"{'SYMBOL':<10} {'STATE':<10} {'EPOCH':>5} {'POSITION':>10} {'WORST L/S vs CAP':>24} " \
           f"{'PNL':>10} {'FILLS':>6} {'GRINDS':>6} {'KILL':<10}"
    lines = [head]
    total_pnl = 0.0
    for sym, row in rows.items():
        st, ex = row["status"], row["exposure"]
        if row.get("error") and not st:
            lines.append(f"{sym:<10} {'?':<10} {row['error']}")
            continue
        pnl = net_pnl(ex)
        total_pnl += pnl
        worst = f"{_f(ex.get('worst_long'), 3)}/{_f(ex.get('worst_short'), 3)} vs {_f(ex.get('cap'), 3)}"
        lines.append(
            f"{sym:<10} {str(st.get('state', '?')):<10} {str(st.get('epoch') or '-'):>5} "
            f"{_f(ex.get('position')):>10} {worst:>24} {_f(pnl, 2):>10} {int(row['fills']):>6} "
            f"{int(row['grinds']):>6} {str(ex.get('kill_state') or st.get('kill_state') or '-'):<10}"
        )
    quoting = sum(1 for r in rows.values() if r["status"].get("state") == "quoting")
    lines.append(f"agents quoting {quoting}/{len(rows)}   fleet P&L {total_pnl:.2f}")
    return "\n".join(lines)


def wait_quoting(namespace: str, symbols: list[str], timeout: float, out: TextIO | None = None) -> dict[str, str]:
    """Poll until every agent quotes (or the timeout); returns each symbol's last state."""
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        states = {s: (v.get("state") if isinstance(v, dict) else str(v))
                  for s, v in _gather(namespace, symbols, "status").items()}
        n = sum(1 for v in states.values() if v == "quoting")
        line = f"starting agents: {n}/{len(symbols)} quoting " + " ".join(f"{s}={v}" for s, v in states.items())
        if out is not None and line != last:
            print(line, file=out, flush=True)
            last = line
        if n == len(symbols) or time.monotonic() >= deadline:
            return states
        time.sleep(0.5)


def render_summary(result: dict[str, Any], rows: dict[str, dict[str, Any]], elapsed_s: float) -> str:
    lines = [f"fleet {result.get('fleet')} stopped after {elapsed_s:.0f} s"]
    lines.append(f"{'SYMBOL':<10} {'OPEN ORDERS@EXCH':>16} {'POSITION':>10} {'REALIZED':>10} {'UNREALIZED':>10} "
                 f"{'FUNDING':>9} {'FEES':>8} {'FILLS':>6} {'GRINDS':>6}")
    total = 0.0
    for sym, res in (result.get("symbols") or {}).items():
        row = rows.get(sym, {"exposure": {}, "fills": 0, "grinds": 0})
        summary = res.get("summary") or {}
        ex = summary.get("exposure") or row["exposure"]
        pos = summary.get("exchange_position", ex.get("position"))
        realized, unreal, funding, fees = (float(ex.get(k) or 0.0)
                                           for k in ("realized_pnl", "unrealized_pnl", "funding_pnl", "commission"))
        total += net_pnl(ex)
        lines.append(f"{sym:<10} {str(res.get('open_orders')):>16} {_f(pos):>10} {_f(realized, 2):>10} "
                     f"{_f(unreal, 2):>10} {_f(funding, 2):>9} {_f(fees, 2):>8} {int(row['fills']):>6} "
                     f"{int(row['grinds']):>6}"
                     + (f"  ({res['error']})" if res.get("error") else ""))
    lines.append(f"fleet P&L {total:.2f} (net of fees)")
    return "\n".join(lines)


# --- commands -------------------------------------------------------------------------------------


def cmd_validate(args: argparse.Namespace) -> int:
    cfg, spec = load(args.config)
    from controller.controller import rate_shares

    shares = rate_shares(cfg)
    print(f"{args.config}: fleet {cfg.name!r}, exchange {cfg.exchange.kind}, {len(cfg.symbols)} symbols "
          f"({', '.join(spec['params'])}), accounts {', '.join(a.name for a in cfg.accounts)}")
    for e in cfg.symbols:
        p = spec["params"][e.symbol]
        print(f"  {e.symbol:<10} account={e.account} net_max={p['base']['net_max']} "
              f"worst_cap={p['base']['net_max'] * p['worst_case']['multiplier']:.4f} rate_share={shares[e.symbol]:.3f}")
    for line in upkeep_lines(cfg):
        print(line)
    from fleet.binance.credentials import CredentialsError, load_credentials

    for account in cfg.accounts:
        if cfg.exchange.kind == "sim":
            continue  # up writes the simulator's keys itself
        try:
            load_credentials(account)
        except CredentialsError as exc:
            print(f"  note: {exc} in this shell; the processes that trade (agents, controller) need them")
    listing = exchange_listing(cfg)
    if listing.symbols is None:
        print(f"  note: exchange not reachable ({listing.source}: {listing.error}): symbols NOT checked "
              f"against its exchangeInfo; up checks them before it starts anything")
    else:
        check_symbols(cfg, listing, spec=spec)
        print(f"  symbols: all {len(cfg.symbols)} listed by {listing.source}, each one's sizes and bounds tradable")
    print("ok")
    return EXIT_OK


def upkeep_lines(cfg: FleetConfig) -> list[str]:
    """What the agents' upkeep costs of one IP's weight, and a warning when, sharing one address,
    it would leave the budgets no room to quote."""
    from fleet.config import BUDGET_QUOTE_BELOW, IP_WEIGHT_PER_MIN

    each = cfg.upkeep_weight_per_min()
    total = each * len(cfg.symbols)
    room = IP_WEIGHT_PER_MIN * BUDGET_QUOTE_BELOW
    lines = [f"  upkeep weight: {each:.1f} a minute per agent, {total:.0f} for {len(cfg.symbols)} of one IP's "
             f"{IP_WEIGHT_PER_MIN} (quoting holds above {room:.0f})"]
    if total > room:
        fit = int(room // each)
        lines.append(f"  WARNING: sharing one IP address, these agents' upkeep alone passes {room:.0f} a minute: "
                     f"none could quote. Run at most {fit} per address (agents on several nodes), or lengthen "
                     f"runtime.deadman_heartbeat_sec / runtime.reconcile_interval_sec")
    return lines


def cmd_up(args: argparse.Namespace, out: TextIO = sys.stdout) -> int:
    cfg, spec = load(args.config)
    # Before anything starts (Ray included): every symbol must be one the exchange lists.
    listing = exchange_listing(cfg)
    if listing.symbols is None:
        raise FleetCliError(f"cannot check the symbols against the exchange ({listing.source}: {listing.error}); "
                            f"nothing started", EXIT_FAILED)
    check_symbols(cfg, listing, "; nothing started", spec)
    started_at = time.monotonic()
    owns_cluster = connect(args.address, cfg.namespace, start_local=True, detach=args.detach)
    import ray

    fleet = None
    try:
        if cfg.exchange.kind == "sim" and not fleet_running(cfg.namespace):
            from journal.db import archive_sim_journal

            archive_sim_journal(cfg)  # a new simulator is a new exchange: its trade ids start again
        fleet = start_fleet(cfg, spec)
        from journal.audit import record_once

        record_once(cfg, "up", actor="cli", content=spec, detail={"symbols": fleet.symbols})  # the audit trail
        import logging

        logging.getLogger("ray.serve").setLevel(logging.WARNING)  # Serve resets it when it starts
        print(f"fleet {cfg.name}: {len(fleet.symbols)} agents in Ray namespace {fleet.namespace}", file=out)
        for line in upkeep_lines(cfg):
            print(line.strip(), file=out)
        if fleet.sim_urls:
            print(f"simulator: {fleet.sim_urls['rest_url']} (keys in {cfg.state_dir}, mode 0600)", file=out)
        print(f"endpoint: {fleet.api_url}  (docs {fleet.api_url}/docs); token in {fleet.token_where}", file=out,
              flush=True)
        states = wait_quoting(fleet.namespace, fleet.symbols, args.quote_timeout, out)
        idle = {s: v for s, v in states.items() if v != "quoting"}
        if idle:
            print(f"WARNING: not quoting after {args.quote_timeout:g} s: "
                  + " ".join(f"{s}={v}" for s, v in idle.items()) + f" (python -m fleet status --fleet {cfg.name})",
                  file=out, flush=True)
        if args.detach:
            print(f"detached: the fleet keeps running. Stop it with: python -m fleet down --fleet {cfg.name}",
                  file=out, flush=True)
            return EXIT_FAILED if idle else EXIT_OK
        refresh = args.refresh or (1.0 if out.isatty() else 10.0)
        end = None if args.duration is None else started_at + args.duration
        rows: dict[str, Any] = {}
        try:
            while end is None or time.monotonic() < end:
                rows = snapshot(fleet.namespace, fleet.symbols)
                table = render_table(rows)
                if out.isatty():
                    out.write("\x1b[H\x1b[2J")
                print(time.strftime("%H:%M:%S ") + f"fleet {cfg.name}", file=out)
                print(table, file=out, flush=True)
                pause = refresh if end is None else max(0.0, min(refresh, end - time.monotonic()))
                time.sleep(pause)
        except KeyboardInterrupt:
            print("\nCtrl-C: stopping the fleet", file=out, flush=True)
        rows = snapshot(fleet.namespace, fleet.symbols) or rows
        result = stop_fleet(fleet.namespace, cfg.name, flatten=cfg.runtime.flatten_on_stop)
        print(render_summary(result, rows, time.monotonic() - started_at), file=out, flush=True)
        left = [s for s, r in result.get("symbols", {}).items() if r.get("open_orders") != 0]
        if left:
            print(f"WARNING: open orders not confirmed 0 at the exchange for {', '.join(left)}", file=out)
            return EXIT_FAILED
        return EXIT_OK
    except BaseException:
        if fleet is None and not args.detach:
            # A half-started fleet (e.g. the endpoint failed) is not left behind.
            try:
                if not isinstance(sys.exc_info()[1], FleetAlreadyRunning):
                    stop_fleet(cfg.namespace, cfg.name)
            except Exception as exc:  # noqa: BLE001 - report the original failure
                print(f"cleanup after a failed up also failed: {exc}", file=sys.stderr)
        raise
    finally:
        if owns_cluster:
            ray.shutdown()


def cmd_apply(args: argparse.Namespace) -> int:
    cfg, spec = load(args.config)
    connect(args.address, cfg.namespace, start_local=False)
    import ray

    from controller.api import deploy, ensure_api_token
    from controller.controller import find_controller

    ctl = find_controller(cfg.namespace)
    if ctl is None or ray.get(ctl.spec.remote(), timeout=30) is None:
        raise FleetCliError(f"fleet {cfg.name!r} is not running: start it with python -m fleet up --config {args.config}",
                            EXIT_NOT_RUNNING)
    current = ray.get(ctl.spec.remote(), timeout=30)
    running_cfg = current["fleet"]
    if cfg.exchange.kind == "sim":
        # Keep the running simulator's URLs and key files: they are not in the file.
        from fleet.config import FleetConfig

        live = FleetConfig.model_validate(running_cfg)
        cfg = cfg.model_copy(update={"exchange": live.exchange, "accounts": live.accounts})
    # As `up` does: every symbol must be one the running exchange lists, or nothing changes.
    listing = exchange_listing(cfg, running=True)
    if listing.symbols is None:
        raise FleetCliError(f"cannot check the symbols against the exchange ({listing.source}: {listing.error}); "
                            f"nothing applied", EXIT_FAILED)
    check_symbols(cfg, listing, "; nothing applied", spec)
    result = ray.get(ctl.apply.remote({**spec, "fleet": cfg.model_dump(mode="json")}), timeout=300)
    api_cfg, _ = ensure_api_token(cfg)
    deploy(api_cfg)
    print(json.dumps(result, indent=2, sort_keys=True))
    retired_badly = [s for part in ("removed", "restarted") for s, r in (result.get(part) or {}).items()
                     if isinstance(r, dict) and r.get("error")]
    for key, when in (("unconfirmed", "by this apply"), ("still_owed", "since an earlier apply")):
        if result.get(key):   # orders left at the exchange: the controller tries again every 10 s
            print(f"open orders not confirmed cancelled at the exchange {when}: {', '.join(result[key])} "
                  f"(the controller tries again every 10 s)", file=sys.stderr)
    for symbol, over in (result.get("above_cap") or {}).items():
        print(f"{symbol}: above its cap after the apply ({over.get('why')}): worst long {over.get('worst_long')}, "
              f"short {over.get('worst_short')}, cap {over.get('cap')}", file=sys.stderr)
    return EXIT_OK if not (result.get("errors") or retired_badly or result.get("unconfirmed")) else EXIT_FAILED


def _controller(args: argparse.Namespace) -> tuple[Any, str, str]:
    name, ns = _namespace(args)
    connect(args.address, ns, start_local=False)
    from controller.controller import find_controller

    ctl = find_controller(ns)
    if ctl is None:
        raise FleetCliError(f"fleet {name!r} is not running (no controller in Ray namespace {ns})", EXIT_NOT_RUNNING)
    return ctl, name, ns


def cmd_down(args: argparse.Namespace) -> int:
    name, ns = _namespace(args)
    connect(args.address, ns, start_local=False)
    result = stop_fleet(ns, name, flatten=args.flatten)
    print(json.dumps(result, indent=2, sort_keys=True, default=str))
    symbols = result.get("symbols", {})
    if result.get("finished_earlier"):
        print("this fleet's down had already finished (its controller finished it after a restart): "
              "what it did is shown", file=sys.stderr)
    elif not symbols:
        print(f"fleet {name!r} had no agent to stop", file=sys.stderr)
    if args.flatten and result.get("flatten") is False:
        print("the down that finished did not flatten: positions were left as they were", file=sys.stderr)
        return EXIT_FAILED
    left = [s for s, r in symbols.items() if r.get("open_orders") not in (0,)]
    open_positions = [f"{s} {r.get('position')}" for s, r in symbols.items()
                      if args.flatten and r.get("position") not in (0, 0.0)]
    if left:
        print(f"open orders may be left at the exchange (or were not confirmed) for: {', '.join(left)}",
              file=sys.stderr)
    if open_positions:
        print(f"not flat at the exchange (or not confirmed): {', '.join(open_positions)}", file=sys.stderr)
    failed = {s: r["error"] for s, r in symbols.items() if r.get("error")}
    for symbol, error in failed.items():   # a stop that timed out, an agent not killed, a check that failed
        print(f"{symbol}: {error}", file=sys.stderr)
    return EXIT_OK if not (left or open_positions or failed) else EXIT_FAILED


STATUS_WAIT_S = 5.0   # the controller's status; past this, what the GCS holds is shown instead


def stored_status(fleet_name: str) -> dict[str, Any]:
    """The controller's status as the GCS holds it, without the controller: the fleet as last applied and
    per symbol its epoch, stored lease and durable kill state."""
    from controller.lease import NO_LEASE_SHOWN, GcsStore, LeaseBook
    from controller.spec import SPEC_DOC, parse_spec
    from fleet.text import first_line

    book = LeaseBook(GcsStore(fleet_name))
    try:
        doc = book.get_doc(SPEC_DOC)
        if doc is None:
            raise FleetCliError(f"fleet {fleet_name!r}: no applied spec in the GCS (was it ever applied?)",
                                EXIT_NOT_RUNNING)
        cfg, _ = parse_spec(doc, stored=True)
        now = time.time()
        symbols = {}
        for e in cfg.symbols:
            lease = book.lease(e.symbol)
            symbols[e.symbol] = {"epoch": book.epoch(e.symbol), **(lease.shown(now) if lease else NO_LEASE_SHOWN),
                                 "kill_state": str(book.kill_state(e.symbol)), "rate_share": None}
    except FleetCliError:
        raise
    except Exception as exc:  # noqa: BLE001 - the GCS did not answer, or holds what cannot be read
        raise FleetCliError(f"fleet {fleet_name!r}: the GCS's record was not read: {first_line(exc)}",
                            EXIT_FAILED) from None
    return {"fleet": fleet_name, "reduce_only": None, "gross_notional": None,
            "max_total_notional": cfg.risk.max_total_notional, "symbols": symbols}


def _fleet_status(args: argparse.Namespace) -> tuple[dict[str, Any], str, str]:
    """(the controller's status, fleet name, namespace); when the controller does not answer within
    ``STATUS_WAIT_S`` (stopped, busy), the status the GCS holds, marked ``answered: false`` with why."""
    import ray

    from fleet.text import first_line

    ctl, name, ns = _controller(args)
    try:
        return {**ray.get(ctl.status.remote(), timeout=STATUS_WAIT_S), "answered": True}, name, ns
    except ray.exceptions.RayError as exc:
        why = f"no answer within {STATUS_WAIT_S:g} s" if isinstance(exc, ray.exceptions.GetTimeoutError) \
            else first_line(getattr(exc, "cause", None) or exc)
    print(f"the controller does not answer ({why}); kill states and leases as the GCS holds them", file=sys.stderr)
    return {**stored_status(name), "answered": False, "error": why}, name, ns


def cmd_status(args: argparse.Namespace) -> int:
    status, name, ns = _fleet_status(args)
    symbols = list(status.get("symbols", {}))
    agents = _gather(ns, symbols, "status")
    if args.json:
        print(json.dumps({"controller": status, "agents": agents}, indent=2, sort_keys=True, default=str))
        return EXIT_OK
    if status["answered"]:
        print(f"fleet {name}: reduce_only={status['reduce_only']} gross notional {status['gross_notional']:.2f} "
              f"/ cap {status['max_total_notional']}")
    else:
        print(f"fleet {name}: the controller does not answer ({status['error']}); as stored")
    print(f"{'SYMBOL':<10} {'STATE':<10} {'EPOCH':>5} {'LEASE LEFT':>10} {'KILL':<10} {'SHARE':>6} {'BOOK AGE':>8}")
    for s, c in status["symbols"].items():
        a = agents.get(s) if isinstance(agents.get(s), dict) else {"state": agents.get(s)}
        print(f"{s:<10} {str(a.get('state')):<10} {c['epoch']:>5} {_f(c['lease_expires_in_s'], 2):>10} "
              f"{c['kill_state']:<10} {_f(c['rate_share'], 3):>6} {_f(a.get('last_book_age_s'), 2):>8}")
    return EXIT_OK


def cmd_exposure(args: argparse.Namespace) -> int:
    status, _, ns = _fleet_status(args)
    rows = snapshot(ns, list(status.get("symbols", {})))
    if args.json:
        print(json.dumps({s: r["exposure"] for s, r in rows.items()}, indent=2, sort_keys=True, default=str))
    else:
        print(render_table(rows))
    return EXIT_OK


HALT_WAIT_S = 15.0       # the endpoint's answer to a halt (it answers once 0 is confirmed, within a second or so)
HALT_RACE_S = 2.0        # ... past this the controller's halt runs beside it (a replica restarting, hung)
FLATTEN_WAIT_S = 90.0    # ... to a flatten (the controller's, up to its 60 s kill timeout, or the endpoint's own)
CONTROLLER_KILL_WAIT_S = 120.0
CLI_BY = {"actor": "cli", "token_fp": None}   # the journal's "who asked" of a kill through Ray


def _endpoint_kill(fleet_name: str, symbols: list[str] | None, mode: str, reason: str) -> dict[str, Any] | None:
    """The kill asked of the fleet's endpoint through Ray (the path of ``POST /kill``: the kill state made
    durable, then the agent and the exchange raced per symbol, no controller waited on for a halt).
    None when the fleet has no endpoint, or a halt was not answered (said on stderr): the controller's
    kill then, a halt written twice being harmless. A flatten is never asked twice (one flattener): one
    not answered is an error. A request refused as asked raises FleetCliError with the reason."""
    from ray import serve

    from controller.bodies import KillRefused
    from controller.handles import app_name
    from fleet.text import first_line

    try:
        handle = serve.get_app_handle(app_name(fleet_name))
    except Exception as exc:  # noqa: BLE001 - no Serve, or no such application: the controller's kill
        print(f"no endpoint for fleet {fleet_name!r} ({first_line(exc)}); asking the controller", file=sys.stderr)
        return None
    wait_s = HALT_WAIT_S if mode == "halt" else FLATTEN_WAIT_S
    try:
        return handle.kill_over_ray.remote(symbols, mode, reason).result(timeout_s=wait_s)
    except KillRefused as exc:   # an unknown symbol, an empty reason: nothing was done
        raise FleetCliError(first_line(getattr(exc, "cause", None) or exc)) from None
    except Exception as exc:  # noqa: BLE001 - no answer in time, its replica gone, a failure of its own
        why = f"no answer within {wait_s:g} s" if isinstance(exc, TimeoutError) \
            else first_line(getattr(exc, "cause", None) or exc)
    if mode == "halt":
        print(f"the endpoint did not carry out the halt ({why}); asking the controller", file=sys.stderr)
        return None
    raise FleetCliError(f"the endpoint did not carry out the flatten ({why}); it may still be doing so, and a "
                        f"second flattener is never started: check python -m fleet status", EXIT_FAILED)


def _controller_kill(args: argparse.Namespace, symbols: list[str] | None, mode: str) -> dict[str, Any]:
    import ray

    ctl, _, _ = _controller(args)
    try:
        asked_at = time.time()   # its kill state's since: a resume asked after it stands, whenever it runs
        return {**ray.get(ctl.kill.remote(symbols, mode, args.reason, CLI_BY, asked_at),
                          timeout=CONTROLLER_KILL_WAIT_S), "via": "controller"}
    except ray.exceptions.RayTaskError as exc:
        raise FleetCliError(str(exc.cause if hasattr(exc, "cause") else exc)) from None
    except ray.exceptions.GetTimeoutError:
        raise FleetCliError(f"the controller did not answer the kill within {CONTROLLER_KILL_WAIT_S:g} s; "
                            f"its state is unknown: check python -m fleet status", EXIT_FAILED) from None


def _race_halt(args: argparse.Namespace, name: str, symbols: list[str] | None) -> dict[str, Any]:
    """A halt through the endpoint; if it has not answered within ``HALT_RACE_S`` (its replica restarting
    or hung), the controller's halt runs beside it and the first answer is taken: a halt carried out
    twice is harmless. Each runs on a daemon thread, so one that never answers does not hold the exit."""
    import queue
    import threading

    answers: queue.Queue = queue.Queue()

    def run(route: str, call: Any) -> None:
        try:
            answers.put((route, call(), None))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            answers.put((route, None, exc))

    def start(route: str, call: Any) -> None:
        threading.Thread(target=run, args=(route, call), name=f"kill-{route}", daemon=True).start()

    start("endpoint", lambda: _endpoint_kill(name, symbols, "halt", args.reason))
    pending, controller_asked, failure = {"endpoint"}, False, None
    while pending:
        try:
            route, result, exc = answers.get(timeout=None if controller_asked else HALT_RACE_S)
        except queue.Empty:   # the endpoint is slow: the controller's halt beside it
            print(f"the endpoint has not answered the halt within {HALT_RACE_S:g} s; asking the controller too",
                  file=sys.stderr)
        else:
            pending.discard(route)
            if exc is None and result is not None:
                return {**result, "via": "endpoint"} if route == "endpoint" else result
            if route == "endpoint" and isinstance(exc, FleetCliError) and not controller_asked:
                raise exc   # refused as asked (an unknown symbol, an empty reason): nothing was done
            failure = exc or failure
        if not controller_asked:   # slow, no endpoint, or its halt not carried out
            start("controller", lambda: _controller_kill(args, symbols, "halt"))
            pending.add("controller")
            controller_asked = True
    raise failure if failure is not None else FleetCliError("the halt was carried out by neither the endpoint "
                                                            "nor the controller", EXIT_FAILED)


def cmd_kill(args: argparse.Namespace) -> int:
    """Through the fleet's endpoint, which waits on no controller for a halt; through the controller when
    the fleet has no endpoint or a halt is not answered."""
    import ray

    name, ns = _namespace(args)
    connect(args.address, ns, start_local=False)
    mode = "flatten" if args.flatten else "halt"
    symbols = [s.strip().upper() for s in args.symbol] if args.symbol else None
    if mode == "halt":
        result = _race_halt(args, name, symbols)
    else:
        result = _endpoint_kill(name, symbols, mode, args.reason)
        result = {**result, "via": "endpoint"} if result is not None else _controller_kill(args, symbols, mode)
    print(json.dumps(result, indent=2, sort_keys=True, default=str))
    from controller.views import kill_carried_out

    bad = [s for s, r in result["symbols"].items() if not kill_carried_out(mode, r)]
    return EXIT_OK if result["symbols"] and not bad else EXIT_FAILED


def cmd_resume(args: argparse.Namespace) -> int:
    import ray

    ctl, _, _ = _controller(args)
    try:
        asked_at = time.time()   # past the wait below the controller does not carry it out (see its resume)
        result = ray.get(ctl.resume.remote(args.symbol, None, asked_at, asked_at + 60), timeout=60)
    except ray.exceptions.RayTaskError as exc:
        raise FleetCliError(str(exc.cause if hasattr(exc, "cause") else exc)) from None
    except ray.exceptions.GetTimeoutError:
        raise FleetCliError("the controller did not answer the resume within 60 s (a resume needs it: it "
                            "grants the leases); the symbols stay as they were (it does not carry out a resume it reaches later)",
                            EXIT_FAILED) from None
    print(json.dumps(result, indent=2, sort_keys=True, default=str))
    outcomes = {v.get("outcome") for v in (result.get("symbols") or {}).values()} if isinstance(result, dict) else set()
    return EXIT_OK if outcomes <= {"resumed"} else EXIT_FAILED   # superseded by a later kill, or expired


def _guard(func: Any, args: argparse.Namespace) -> int:
    if loopback_wanted(getattr(args, "address", "auto")):   # before anything imports Ray
        loopback_only()
    from agents.logging import install_log_escaping

    install_log_escaping()   # the CLI's own mmfleet records: one line each, control characters escaped
    try:
        return func(args)
    except FleetCliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code


def up(args: argparse.Namespace) -> int:
    return _guard(cmd_up, args)


def apply(args: argparse.Namespace) -> int:
    return _guard(cmd_apply, args)


def down(args: argparse.Namespace) -> int:
    return _guard(cmd_down, args)


def status(args: argparse.Namespace) -> int:
    return _guard(cmd_status, args)


def exposure(args: argparse.Namespace) -> int:
    return _guard(cmd_exposure, args)


def kill(args: argparse.Namespace) -> int:
    return _guard(cmd_kill, args)


def resume(args: argparse.Namespace) -> int:
    return _guard(cmd_resume, args)


def validate(args: argparse.Namespace) -> int:
    return _guard(cmd_validate, args)

