"""Fleet figures on the simulator: 1, 10, 30, 50 symbols on one local Ray cluster.

Per fleet size: time from `up` until every agent quotes at the exchange, and where it went (per agent:
Ray's process spawn, the actor constructed, the agent's modules imported, spec, lease, start done,
first orders; the CPU seconds each step cost the agent's process); how the endpoint (/status,
/exposure over HTTP) and the controller (a Ray ping) answered while the agents started; RSS per agent
process; CPU of the whole fleet (agents, controller, simulator) while quoting; HTTP kill latency
p50/p99 from the request to the answer confirming 0 open orders at the exchange for every symbol
(and, per kill, the slowest symbol's time until the exchange listed 0 and which route got there
first: the agent or the exchange directly; the CPU each kind of process spent meanwhile, and the
host's steal; orders that landed after the answer, and when the endpoint's sweep took them); the same kill with the controller process stopped
(SIGSTOP: the endpoint's own routes), and a `/metrics` scrape then; recovery after SIGKILL of one
agent until it quotes again (and older-epoch / duplicate orders then); recovery after SIGSTOP of
one agent beyond its lease (until its orders are gone, until a successor quotes); `/metrics` scrape time, scrapes 5.5 s apart so that every
agent has published a new exposition in between (as for a Prometheus scraping every 15 s). Reproduce:
`RAY_AUTH_MODE=disabled .venv/bin/python bench/fleet_bench.py` (options: --sizes 1,10 --kills 5
--stopped-kills 3). Ten symbols per simulated account, so each agent gets a tenth of its account's
order limits; the simulator allows 10x Binance's IP weight for the shared loopback IP.
"""

from __future__ import annotations

import argparse
import compileall
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import requests
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"  # the local cluster listens on loopback only (before Ray is imported)

from agents.orders import parse_client_order_id  # noqa: E402
from controller.controller import ControllerSettings, build_spec, find_controller  # noqa: E402
from fleet.config import FleetConfig  # noqa: E402
from fleet.ops.fleet_cli import start_fleet, stop_fleet  # noqa: E402
from fleet.ops.ports import free_port  # noqa: E402

SYMBOLS_PER_ACCOUNT = 10
# A generic simulator symbol trades at ~100 with min notional 5. Every agent behind one IP shares
# Binance's 2400 weight/min (the agents' budgets read the IP-wide X-MBX-USED-WEIGHT-1M), so the bench
# quotes calmly: a 1.5 s cycle and a wider tolerance before amending.
NET_MAX_HARD_CAP = 2.5  # held by the fleet config, never by the symbol's params
PARAMS = {
    "base": {"base_size": 0.1, "net_max": 2.0, "quote_interval_ms": 1500,
             "requote_move_fraction": 1.0},
    "grid": {"max_layers": 5},
    "orders": {"tolerance_ticks": 10},
}


def top_routes(now: dict[str, int], before: dict[str, int], n: int = 6) -> str:
    """The routes that spent the most IP weight between two readings, and the total."""
    spent = {route: w - before.get(route, 0) for route, w in now.items()}
    spent = {route: w for route, w in spent.items() if w > 0}
    top = sorted(spent.items(), key=lambda kv: -kv[1])[:n]
    return f"{sum(spent.values())} in all: " + ", ".join(f"{route} {w}" for route, w in top)


def wait(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.1,
         what_else: Callable[[], Any] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            got = check()
        except Exception:  # noqa: BLE001 - actors restarting
            got = None
        if got:
            return got
        time.sleep(interval)
    raise Unmeasured(f"timed out after {timeout:g} s: {what}: {what_else() if what_else else ''}")


# Below this IP weight a minute (as the exchange reports it) a restarted agent's start reads (some 35)
# fit the agents' quoting lane, 75 % of 95 % of Binance's 2,400 = 1,710.
IP_CALM = 1600.0


class Unmeasured(Exception):
    """A wait that did not see its condition, or a kill not confirmed: the rest of that fleet size is
    reported as not measured (with why), and the bench goes on with the next size."""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * (len(ordered) - 1)))))]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# Other processes by what their command line holds (Ray workers title themselves ray::<class>).
ROLE_MARKS = (("ServeReplica", "endpoint"), ("ProxyActor", "serve"), ("ServeController", "serve"),
              ("raylet", "raylet"), ("gcs_server", "gcs"))


def steal_seconds() -> float:
    """CPU seconds the hypervisor gave this machine's CPUs to others so far (/proc/stat ``steal``)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK")


def cpu_by_role(known: dict[int, str]) -> dict[str, float]:
    """CPU seconds so far of every process of this machine, summed by role: ``known`` pids by theirs,
    the rest by their command line (``ROLE_MARKS``), else ``other`` (the bench itself among them); and
    ``steal (host)``, the time the hypervisor ran something else on this machine's CPUs."""
    out: dict[str, float] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        pid = int(proc.name)
        try:
            role = known.get(pid)
            if role is None:
                cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
                role = next((r for mark, r in ROLE_MARKS if mark in cmd), "other")
            out[role] = out.get(role, 0.0) + cpu_seconds(pid)
        except OSError:   # gone meanwhile
            continue
    out["steal (host)"] = steal_seconds()
    return out


# An agent's start-up steps as its actor records them (agents/actor.py PHASES), each from the previous.
PHASES = ("process", "actor_init", "imported", "spec", "built", "owned", "started", "quoting")
STEP_NAMES = {"process": "spawn", "actor_init": "ray worker", "imported": "imports", "spec": "spec",
              "built": "build", "owned": "lease", "started": "start", "quoting": "first orders"}
METRICS_SCRAPES, METRICS_GAP_S = 6, 5.5   # every agent publishes a new exposition between two scrapes


class StartWatch:
    """While the agents start: /status and /exposure over HTTP, a Ray ping of the controller and its status
    (what /status asks it), in turn."""

    def __init__(self, bench: "Bench") -> None:
        self.bench = bench
        self.times: dict[str, list[float]] = {"status": [], "exposure": [], "controller": [], "controller_status": []}
        self.failed: dict[str, int] = dict.fromkeys(self.times, 0)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name="start-watch", daemon=True)

    def _run(self) -> None:
        ctl = find_controller(self.bench.cfg.namespace)
        while not self.done.is_set():
            for what, ask in (("status", lambda: self.bench.http("GET", "/status").raise_for_status()),
                              ("exposure", lambda: self.bench.http("GET", "/exposure").raise_for_status()),
                              ("controller", lambda: self.bench.ray.get(ctl.ping.remote(), timeout=30)),
                              ("controller_status", lambda: self.bench.ray.get(ctl.status.remote(), timeout=30))):
                t = time.monotonic()
                try:
                    ask()
                    self.times[what].append(time.monotonic() - t)
                except Exception:  # noqa: BLE001 - counted: the endpoint or controller did not answer
                    self.failed[what] += 1
            self.done.wait(1.0)

    def __enter__(self) -> "StartWatch":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.done.set()
        self.thread.join(timeout=60)

    def figures(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for what, times in self.times.items():
            if times:
                out[f"start_{what}_p50_ms"] = pct(times, 0.5) * 1000
                out[f"start_{what}_max_ms"] = max(times) * 1000
            out[f"start_{what}_n"] = f"{len(times)} ok/{self.failed[what]} failed"
        return out


def start_phases(statuses: dict[str, dict[str, Any]], t0_wall: float) -> dict[str, Any]:
    """Per step: when agents reached it (s after `up`, p50 and the last) and what it took them (wall and
    CPU seconds of the agent's process, p50 and max)."""
    out: dict[str, Any] = {}
    rows = [(st.get("phases") or {}, st.get("phase_cpu") or {}) for st in statuses.values()]
    rows = [(w, c) for w, c in rows if all(k in w for k in PHASES)]
    out["phase_agents"] = len(rows)
    if not rows:
        return out
    for prev, k in zip(PHASES, PHASES[1:]):
        wall = [w[k] - w[prev] for w, _ in rows]
        cpu = [c.get(k, 0.0) - c.get(prev, 0.0) for _, c in rows]
        reached = [w[k] - t0_wall for w, _ in rows]
        out[f"phase_{k}"] = (pct(reached, 0.5), max(reached), pct(wall, 0.5), max(wall), pct(cpu, 0.5), max(cpu))
    spawned = [w["process"] - t0_wall for w, _ in rows]
    out["phase_process"] = (pct(spawned, 0.5), max(spawned), 0.0, 0.0, 0.0, 0.0)
    out["phase_cpu_total_p50"] = pct([c["quoting"] for _, c in rows], 0.5)
    return out


class Bench:
    def __init__(self, ray: Any, n: int, state_dir: str) -> None:
        self.ray = ray
        self.symbols = [f"B{i:03d}USDT" for i in range(n)]
        self.lagging: dict[str, Any] = {}
        self.late: list[tuple[int, float]] = []  # per kill with late landings: (orders, ms until all gone)
        self.durable: list[float] = []  # per kill: ms from the request until every kill state was durable
        self.roles: dict[int, str] = {}   # pid -> agent / simulator / controller, once the fleet is up
        self.kill_cpu: dict[str, list[float]] = {}   # per role, per kill: CPU ms spent until the answer
        name = f"bench{n}x{uuid.uuid4().hex[:4]}"
        # One simulated account per SYMBOLS_PER_ACCOUNT symbols (orders are limited per account, and
        # each agent gets its account's limits / its agents); the loopback IP gets 10x Binance's weight.
        sim_config = Path(state_dir) / "bench-sim.yaml"
        sim_config.write_text(yaml.safe_dump({"rate_limits": {"weight_per_minute": 24000}}))
        accounts = [f"acct{i}" for i in range((n + SYMBOLS_PER_ACCOUNT - 1) // SYMBOLS_PER_ACCOUNT)]
        self.cfg = FleetConfig.model_validate({
            "name": name,
            "exchange": {"kind": "sim", "sim": {"seed": 3, "config": str(sim_config)}},
            "accounts": [{"name": a, "key_file": "/unused"} for a in accounts],
            "symbols": [{"symbol": s, "account": accounts[i // SYMBOLS_PER_ACCOUNT], "params": PARAMS,
                         "net_max_hard_cap": NET_MAX_HARD_CAP}
                        for i, s in enumerate(self.symbols)],
            "api": {"host": "127.0.0.1", "port": free_port(), "token_env": None},
            # The fleet on one machine: agents in the background CPU class, the kill path above them
            # (docs/architecture.md, "Niceness shares the CPU by weight"); nothing else runs here.
            "agent": {"num_cpus": 0.01, "cpu_class": "background"},
            # Every agent on this one loopback IP shares Binance's 2,400 weight per minute (the agents'
            # budgets read the IP-wide count the exchange reports and hold quoting below 75 % of it,
            # 1,800). With the defaults an agent spends 47.5 a minute before it quotes (countdownCancelAll
            # every 30 s: 20; openOrders every 5 s: 12; positionRisk every 6th: 10; the journal's
            # userTrades every 60 s: 5, income hourly and after funding: 0.5): 1,425 at 30 agents,
            # 2,375 at 50, so after a kill 50 could not all quote again. Here: 18 a minute (heartbeat 60 s with a 180 s countdown: 10; openOrders every
            # 20 s: 3; positionRisk every 3rd: 5; no journal), 900 at 50.
            "runtime": {"deadman_heartbeat_sec": 60, "deadman_countdown_ms": 180000,
                        "reconcile_interval_sec": 20.0, "reconcile_position_every": 3},
            "journal": {"enabled": False},
            "state_dir": state_dir,
        })

    def state(self, account: str) -> dict[str, Any]:
        r = requests.get(f"{self.sim}/sim/state", params={"account": account}, timeout=30)
        r.raise_for_status()
        return r.json()

    def weight_by_route(self) -> dict[str, int]:
        """The IP weight the simulator has charged since it started, per route (every client)."""
        return self.state(self.cfg.accounts[0].name)["weight_by_route"]

    def open_by_symbol(self) -> dict[str, list[dict[str, Any]]]:
        out: dict[str, list[dict[str, Any]]] = {s: [] for s in self.symbols}
        for account in self.cfg.accounts:
            for o in self.state(account.name)["open_orders"]:
                out.setdefault(o["symbol"], []).append(o)
        return out

    def agent(self, symbol: str) -> Any:
        return self.ray.get_actor(f"agent.{symbol}", namespace=self.cfg.namespace)

    def statuses(self) -> dict[str, dict[str, Any]]:
        refs = {s: self.agent(s).status.remote() for s in self.symbols}
        return {s: self.ray.get(r, timeout=30) for s, r in refs.items()}

    def all_quoting(self) -> bool:
        st = self.statuses()
        book = self.open_by_symbol()
        self.lagging = {s: (st[s]["state"], st[s].get("blocks"), len(book[s]), st[s].get("open_orders"), st[s].get("epoch"), st[s].get("kill_state"), st[s].get("counters"))
                        for s in self.symbols if not (st[s]["state"] == "quoting" and book[s])}
        return not self.lagging

    def settle(self, what: str, problems: list[str], timeout: float = 150) -> bool:
        """Wait until every agent quotes; past ``timeout`` note who does not (and why) and go on."""
        try:
            wait(self.all_quoting, timeout, what, interval=0.5, what_else=self.explain)
            return True
        except Unmeasured as exc:
            problems.append(f"{len(self.lagging)} of {len(self.symbols)} not quoting {timeout:g} s after: {what}")
            print(f"   {str(exc)[:3000]}", flush=True)
            return False

    def ip_weight(self) -> float | None:
        """The IP-wide weight of the last minute as the exchange last reported it to the agents (the most seen)."""
        from agents.publish import read_published

        seen = []
        for rec in read_published(self.cfg.name, self.symbols).values():
            for ln in rec.text.splitlines():
                if ln.startswith("mm_rate_exchange_used{") and 'window="weight_1m"' in ln:
                    seen.append(float(ln.rsplit(" ", 1)[1]))
        return max(seen) if seen else None

    def calm_ip(self, below: float = IP_CALM, timeout: float = 75.0) -> float:
        """Seconds waited until the IP's weight of the minute, as the agents last heard it, is below
        ``below``: a restarted agent's start reads wait (rightly) for the exchange's minute to end
        while the IP is past its budget's quoting lane, and the recovery measured would be that wait."""
        t = time.monotonic()
        wait(lambda: (w := self.ip_weight()) is not None and w < below, timeout,
             f"the IP's weight of the minute below {below:g}", interval=1.0,
             what_else=lambda: f"last seen {self.ip_weight()}")
        return time.monotonic() - t

    def explain(self) -> str:
        """The lagging agents, with what their published expositions say about quoting (on a timeout)."""
        from agents.publish import read_published

        wanted = ("mm_quote_suppressed", "mm_reduce_only", "mm_halt_state", "mm_rate_budget_used_ratio",
                  "mm_rate_budget_refused_total", "mm_worst_case_long", "mm_worst_case_short", "mm_worst_case_cap",
                  "mm_position", "mm_guard_refusals", "mm_quote_cycles", "mm_drawdown_pct", "mm_rejects",
                  "mm_rate_exchange_used")
        try:
            published = read_published(self.cfg.name, list(self.lagging))
        except Exception as exc:  # noqa: BLE001 - the explanation is best effort
            return f"{self.lagging} (expositions not read: {exc})"
        lines = [f"{self.lagging}"]
        for sym, rec in published.items():
            keep = [ln for ln in rec.text.splitlines() if ln.startswith(wanted) and not ln.endswith(" 0.0")]
            lines.append(f"{sym} ({time.time() - rec.at:.0f} s old): " + "; ".join(keep))
        return "\n".join(lines)

    def http(self, method: str, path: str, **kw: Any) -> requests.Response:
        return requests.request(method, f"{self.url}{path}", headers={"Authorization": f"Bearer {self.token}"},
                                timeout=120, **kw)

    def kill_once(self, what: str) -> tuple[float, float, dict[str, int]]:
        """POST /kill for every symbol; (HTTP latency s, slowest symbol's confirmed-0 ms, first routes)."""
        cpu0 = cpu_by_role(self.roles)
        t, t_wall_ms = time.monotonic(), time.time() * 1000
        r = self.http("POST", "/kill", json={"all": True, "mode": "halt", "reason": "bench"})
        latency = time.monotonic() - t
        cpu = cpu_by_role(self.roles)
        spent = {role: 1000 * (c - cpu0.get(role, 0.0)) for role, c in cpu.items()}
        for role, ms in spent.items():
            if what == "kill":   # the figures of the kills with the controller running
                self.kill_cpu.setdefault(role, []).append(ms)
        body = r.json()
        per = body.get("symbols", {}).values()
        firsts: dict[str, int] = {}
        for v in per:
            key = f"{v.get('by', 'controller')}:{v.get('first') or v.get('path')}"
            firsts[key] = firsts.get(key, 0) + 1
        confirmed = max((v.get("confirmed_ms") or 0.0 for v in per), default=0.0)
        self.durable.append(body.get("durable_ms") or 0.0)
        print(f"   {what} {latency * 1000:.0f} ms, kill states durable at {body.get('durable_ms')} ms, slowest 0 at "
              f"{confirmed:.0f} ms ({firsts}); CPU ms meanwhile: "
              + ", ".join(f"{role} {ms:.0f}" for role, ms in sorted(spent.items(), key=lambda kv: -kv[1]) if ms > 0),
              flush=True)
        if not body.get("confirmed"):
            raise Unmeasured(f"kill not confirmed at the exchange: {str(body)[:1000]}")
        self.late_landings(t, t_wall_ms)
        return latency, confirmed, firsts

    def late_landings(self, t: float, t_wall_ms: float) -> None:
        """Orders resting after the answer confirmed 0: a request an agent sent before it heard the
        halt, landed after the exchange route's cancel. The endpoint sweeps the symbol every 0.5 s
        until the agent answers; recorded with when each was placed and when the sweep took it."""
        resting = [o for orders in self.open_by_symbol().values() for o in orders]
        if not resting:
            return
        seen = "; ".join(f"{o['symbol']} {o['clientOrderId']} placed {o['time'] - t_wall_ms:+.0f} ms"
                         for o in resting[:5])
        wait(lambda: not any(self.open_by_symbol().values()), 10, "late-landing orders swept", interval=0.05,
             what_else=lambda: seen)
        gone_ms = (time.monotonic() - t) * 1000
        self.late.append((len(resting), gone_ms))
        print(f"   late landings after the answer: {len(resting)} ({seen}); all gone {gone_ms:.0f} ms after the "
              f"kill was sent", flush=True)

    def stopped_controller_kills(self, n: int, problems: list[str]) -> tuple[list[float], list[float], list[float]]:
        """Kills with the controller process stopped (the endpoint runs a halt itself; the controller,
        thawed, only journals it); each resumed once the controller runs again. Also a ``/metrics``
        scrape after each kill, the controller still stopped: (kill s, confirmed-0 ms, scrape s)."""
        ctl = find_controller(self.cfg.namespace)
        pid = self.ray.get(ctl.__ray_call__.remote(lambda s: os.getpid()))
        latencies, confirmed, scrapes = [], [], []
        for _ in range(n):
            self.settle("quoting before a kill with the controller stopped", problems)
            os.kill(pid, signal.SIGSTOP)
            try:
                lat, conf, _ = self.kill_once("kill, controller stopped:")
                t = time.monotonic()
                self.http("GET", "/metrics").raise_for_status()
                scrapes.append(time.monotonic() - t)
            finally:
                os.kill(pid, signal.SIGCONT)
            latencies.append(lat)
            confirmed.append(conf)
            self.http("POST", "/resume", json={"all": True}).raise_for_status()
        return latencies, confirmed, scrapes

    def hung_agent(self, victim: str, problems: list[str]) -> tuple[float, float]:
        """SIGSTOP one agent beyond its lease: (s until its orders are gone, s until a successor quotes)."""
        if not self.settle("quoting before the SIGSTOP", problems):
            raise Unmeasured("recovery after SIGSTOP: the fleet did not quote again first")
        before = self.ray.get(self.agent(victim).status.remote(), timeout=30)
        os.kill(before["pid"], signal.SIGSTOP)
        t = time.monotonic()
        try:
            wait(lambda: not self.open_by_symbol()[victim], 60, "the hung agent's orders gone", interval=0.05)
            gone = time.monotonic() - t

            def successor() -> bool:
                st = self.ray.get(self.agent(victim).status.remote(), timeout=10)
                orders = self.open_by_symbol()[victim]
                return (st["pid"] != before["pid"] and (st.get("epoch") or 0) > before["epoch"]
                        and st["state"] == "quoting" and bool(orders))

            wait(successor, 120, "a successor quoting")
            return gone, time.monotonic() - t
        finally:
            try:
                os.kill(before["pid"], signal.SIGCONT)
            except ProcessLookupError:
                pass

    def run(self, kills: int, stopped_kills: int = 3) -> dict[str, Any]:
        out: dict[str, Any] = {"symbols": len(self.symbols)}
        problems: list[str] = []
        out["problems"] = problems
        try:
            self._run(out, problems, kills, stopped_kills)
        except Unmeasured as exc:
            problems.append(f"not measured further: {str(exc)[:300]}")
        return out

    def _run(self, out: dict[str, Any], problems: list[str], kills: int, stopped_kills: int) -> None:
        t0, t0_wall = time.monotonic(), time.time()
        running = start_fleet(self.cfg, build_spec(self.cfg), controller_settings=ControllerSettings(),
                              route_prefix=f"/{self.cfg.name}")
        out["start_fleet_s"] = time.monotonic() - t0  # simulator, controller, endpoint, agents created
        self.sim = running.sim_urls["rest_url"]
        self.url = running.api_url
        self.token = Path(running.cfg.api.token_file).read_text().strip()
        try:
            with StartWatch(self) as watch:
                wait(self.all_quoting, 120 + 4 * len(self.symbols), "every agent quoting", interval=0.5,
                     what_else=self.explain)
                out["time_to_quote_s"] = time.monotonic() - t0
            out.update(watch.figures())
            statuses = self.statuses()
            out.update(start_phases(statuses, t0_wall))
            ctl_status = self.ray.get(find_controller(self.cfg.namespace).status.remote(), timeout=30)
            out["start_fenced"] = sum(1 for v in ctl_status["symbols"].values() if v.get("fenced_epoch"))
            out["start_epoch_gt1"] = sum(1 for v in ctl_status["symbols"].values() if (v.get("epoch") or 0) > 1)
            print(f"   started: {out}", flush=True)

            pids = [st["pid"] for st in self.statuses().values()]
            rss = [rss_mib(p) for p in pids]
            out["rss_mib_mean"], out["rss_mib_max"] = statistics.mean(rss), max(rss)
            ctl_pid = self.ray.get(find_controller(self.cfg.namespace).__ray_call__.remote(lambda s: os.getpid()))
            sim_pid = self.ray.get(self.ray.get_actor("sim", namespace=self.cfg.namespace).__ray_call__.remote(
                lambda s: os.getpid()))
            procs = pids + [ctl_pid, sim_pid]
            self.roles = {**{p: "agents" for p in pids}, ctl_pid: "controller", sim_pid: "simulator"}
            c0, w0, roles0 = sum(cpu_seconds(p) for p in procs), time.monotonic(), cpu_by_role(self.roles)
            time.sleep(10.0)  # a measurement window, not a wait for a condition
            window = time.monotonic() - w0
            out["fleet_cpu_cores"] = (sum(cpu_seconds(p) for p in procs) - c0) / window
            spent = {role: 1000 * (c - roles0.get(role, 0.0)) / window for role, c in cpu_by_role(self.roles).items()}
            out["quoting_cpu_ms_per_s"] = ", ".join(f"{role} {ms:.0f}" for role, ms in
                                                   sorted(spent.items(), key=lambda kv: -kv[1]) if ms >= 0.5)

            scrapes = []
            for i in range(METRICS_SCRAPES):
                if i:
                    time.sleep(METRICS_GAP_S)  # every agent publishes anew meanwhile: no page split twice
                t = time.monotonic()
                r = self.http("GET", "/metrics")
                r.raise_for_status()
                scrapes.append(time.monotonic() - t)
            out["metrics_p50_ms"], out["metrics_max_ms"] = pct(scrapes, 0.5) * 1000, max(scrapes) * 1000
            out["metrics_bytes"] = len(r.content)
            up = [ln for ln in r.text.splitlines() if ln.startswith("mmfleet_agents_up{")]
            out["metrics_agents_up"] = up[0].rsplit(" ", 1)[1] if up else "?"

            out["ip_weight_1m_after_start"] = self.ip_weight()
            weight_before_kills = self.weight_by_route()
            out["weight_start"] = top_routes(weight_before_kills, {})
            latencies, confirmed, firsts = [], [], {}
            for _ in range(kills):
                self.settle("quoting before a kill", problems)   # a book not full again still gets killed
                lat, conf, first = self.kill_once("kill")
                latencies.append(lat)
                confirmed.append(conf)
                for k, v in first.items():
                    firsts[k] = firsts.get(k, 0) + v
                self.http("POST", "/resume", json={"all": True}).raise_for_status()
            out["kill_p50_ms"], out["kill_p99_ms"] = pct(latencies, 0.5) * 1000, pct(latencies, 0.99) * 1000
            out["kill_zero_p50_ms"], out["kill_zero_p99_ms"] = pct(confirmed, 0.5), pct(confirmed, 0.99)
            out["kill_durable_p50_ms"], out["kill_durable_p99_ms"] = pct(self.durable, 0.5), pct(self.durable, 0.99)
            out["kill_first_routes"] = " ".join(f"{k}={v}" for k, v in sorted(firsts.items()))
            out["kill_cpu_ms"] = ", ".join(f"{role} {statistics.median(ms):.0f}" for role, ms in
                                           sorted(self.kill_cpu.items(), key=lambda kv: -statistics.median(kv[1])))
            out["kills"] = len(latencies)
            out["ip_weight_1m_after_kills"] = self.ip_weight()
            out["weight_kills"] = top_routes(self.weight_by_route(), weight_before_kills)
            if stopped_kills:
                lat, conf, scrapes = self.stopped_controller_kills(stopped_kills, problems)
                out["stopped_kill_p50_ms"], out["stopped_kill_p99_ms"] = pct(lat, 0.5) * 1000, pct(lat, 0.99) * 1000
                out["stopped_kill_zero_p99_ms"] = pct(conf, 0.99)
                out["stopped_metrics_max_ms"] = max(scrapes) * 1000
            out["late_landings"] = ", ".join(f"{n} gone by {ms:.0f} ms" for n, ms in self.late) or "none"

            if not self.settle("quoting before the SIGKILL", problems):
                raise Unmeasured("recovery after SIGKILL and SIGSTOP: the fleet did not quote again first")
            out["recovery_ip_wait_s"] = self.calm_ip()
            victim = self.symbols[0]
            before = self.agent(victim).status.remote()
            before = self.ray.get(before)
            t = time.monotonic()
            os.kill(before["pid"], signal.SIGKILL)

            def back() -> Any:
                st = self.ray.get(self.agent(victim).status.remote(), timeout=10)
                orders = self.open_by_symbol()[victim]
                return (st, orders) if st["pid"] != before["pid"] and st["state"] == "quoting" and orders else None

            def victim_now() -> str:
                """What the restarted agent says of itself, and the IP's weight (a timeout's why)."""
                try:
                    st = self.ray.get(self.agent(victim).status.remote(), timeout=10)
                except Exception as exc:  # noqa: BLE001 - still restarting
                    return f"no status ({exc!r:.200}); IP weight of the last minute {self.ip_weight()}"
                keep = ("rate_budget_waits", "last_error", "state", "blocks", "epoch", "pid", "phases", "counters")
                return f"IP weight of the last minute {self.ip_weight()}; { {k: st.get(k) for k in keep} }"

            st, orders = wait(back, 60, "the killed agent quoting again", what_else=victim_now)
            out["recovery_s"] = time.monotonic() - t
            ids = [o["clientOrderId"] for o in orders]
            older = [o for o in orders if (parse_client_order_id(o["clientOrderId"]) or (0,))[0] != st["epoch"]]
            out["recovery_old_epoch_orders"] = len(older)
            out["recovery_duplicate_ids"] = len(ids) - len(set(ids))

            hung = self.symbols[1] if len(self.symbols) > 1 else victim
            out["hung_ip_wait_s"] = self.calm_ip()   # the successor's start reads would wait for the IP's minute
            out["hung_orders_gone_s"], out["hung_successor_s"] = self.hung_agent(hung, problems)
        finally:
            stop_fleet(self.cfg.namespace, self.cfg.name)


def metrics_page(ray: Any, n: int, state_dir: str, scrapes: int = 12) -> dict[str, Any]:
    """The endpoint's ``/metrics`` alone for ``n`` symbols: one real agent's exposition published for each
    of them (its numbers changed before every scrape, so no page is split twice), placeholder actors
    named like agents (Ray's restart counts), no controller (its kill states answered at once)."""
    from agents.publish import PublishedExposition, publish
    from controller.api import deploy, ensure_api_token, undeploy

    one = Bench(ray, 1, state_dir)
    running = start_fleet(one.cfg, build_spec(one.cfg), route_prefix=f"/{one.cfg.name}")
    one.sim, one.url = running.sim_urls["rest_url"], running.api_url
    one.token = Path(running.cfg.api.token_file).read_text().strip()
    try:
        wait(one.all_quoting, 120, "one agent quoting", interval=0.5)
        text = one.ray.get(one.agent(one.symbols[0]).metrics.remote(), timeout=30)
    finally:
        stop_fleet(one.cfg.namespace, one.cfg.name)

    @ray.remote(num_cpus=0)
    class Placeholder:
        def ping(self) -> bool:
            return True

    many = Bench(ray, n, state_dir)
    actors = [Placeholder.options(name=f"agent.{s}", namespace=many.cfg.namespace, lifetime="detached").remote()
              for s in many.symbols]
    ray.get([a.ping.remote() for a in actors], timeout=300)
    api_cfg, _ = ensure_api_token(many.cfg)
    many.url, many.token = deploy(api_cfg, route_prefix=f"/{many.cfg.name}"), Path(api_cfg.api.token_file).read_text().strip()
    times, size = [], 0
    try:
        for i in range(scrapes):
            for s in many.symbols:
                page = text.replace(one.symbols[0], s).replace(" 0.0\n", f" {i}.0\n")
                publish(many.cfg.name, PublishedExposition(s, "bench:0:x", time.time(), page))
            t = time.monotonic()
            r = many.http("GET", "/metrics")
            r.raise_for_status()
            times.append(time.monotonic() - t)
            size = len(r.content)
    finally:
        undeploy(api_cfg)
        for a in actors:
            ray.kill(a)
    return {"symbols": n, "page_p50_ms": pct(times, 0.5) * 1000, "page_max_ms": max(times) * 1000,
            "page_bytes": size, "exposition_lines": text.count("\n")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,10,30,50", help="fleet sizes (symbols)")
    parser.add_argument("--kills", type=int, default=5, help="kill/resume cycles per size")
    parser.add_argument("--stopped-kills", type=int, default=3,
                        help="kill/resume cycles per size with the controller process stopped (SIGSTOP)")
    parser.add_argument("--metrics-page", type=int, default=0, metavar="N",
                        help="instead: the endpoint's /metrics alone for N symbols (one real agent's exposition "
                             "published for each, new before every scrape; no fleet running)")
    args = parser.parse_args()
    import ray

    # The project's modules compiled ahead, as `make` does: where PYTHONDONTWRITEBYTECODE is set every
    # agent process would compile them again at import (0.055 CPU-s each here).
    for package in ("agents", "controller", "fleet", "journal", "simulate"):
        compileall.compile_dir(str(Path(__file__).resolve().parents[1] / package), quiet=2)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    if args.metrics_page:
        with tempfile.TemporaryDirectory() as state_dir:
            r = metrics_page(ray, args.metrics_page, state_dir)
        ray.shutdown()
        print(f"/metrics of the endpoint alone, {r['symbols']} published expositions of {r['exposition_lines']} lines, "
              f"each new at every scrape: p50 {r['page_p50_ms']:.0f} ms, max {r['page_max_ms']:.0f} ms, "
              f"{r['page_bytes']} bytes (load average {os.getloadavg()[0]:.1f})")
        print(f"command: RAY_AUTH_MODE=disabled .venv/bin/python bench/fleet_bench.py --metrics-page {args.metrics_page}")
        return 0
    results = []
    with tempfile.TemporaryDirectory() as state_dir:
        for n in [int(x) for x in args.sizes.split(",") if x]:
            print(f"== {n} symbols", flush=True)
            res = Bench(ray, n, state_dir).run(args.kills, args.stopped_kills)
            print("   " + ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in res.items()),
                  flush=True)
            results.append(res)
    ray.shutdown()
    print(f"\nfleet bench ({os.cpu_count()} cores, local Ray cluster, simulator on loopback; "
          f"load average at the end {os.getloadavg()[0]:.1f})")
    print(f"{'symbols':>7} {'to quote s':>10} {'RSS/agent MiB':>13} {'fleet CPU':>9} {'kill HTTP p50/p99 ms':>20} "
          f"{'0 p50/p99 ms':>12} {'ctl-stopped HTTP p50/p99, 0 p99 ms':>34} {'recovery s':>10} {'old/dup':>7} "
          f"{'hung gone/successor s':>21} {'/metrics p50/max ms':>19}")

    def f(r: dict[str, Any], *keys: str, fmt: str = ".0f", sep: str = "/") -> str:
        return sep.join(format(r[k], fmt) if isinstance(r.get(k), int | float) else "-" for k in keys)

    for r in results:
        print(f"{r['symbols']:>7} {f(r, 'time_to_quote_s', fmt='.1f'):>10} {f(r, 'rss_mib_mean'):>13} "
              f"{f(r, 'fleet_cpu_cores', fmt='.2f'):>9} {f(r, 'kill_p50_ms', 'kill_p99_ms'):>20} "
              f"{f(r, 'kill_zero_p50_ms', 'kill_zero_p99_ms'):>12} "
              f"{f(r, 'stopped_kill_p50_ms', 'stopped_kill_p99_ms') + ', ' + f(r, 'stopped_kill_zero_p99_ms'):>34} "
              f"{f(r, 'recovery_s', fmt='.2f'):>10} {f(r, 'recovery_old_epoch_orders', 'recovery_duplicate_ids'):>7} "
              f"{f(r, 'hung_orders_gone_s', 'hung_successor_s', fmt='.2f'):>21} {f(r, 'metrics_p50_ms', 'metrics_max_ms'):>19}")
        if "kill_first_routes" in r:
            print(f"{'':>7} kill: kill states durable p50/p99 {f(r, 'kill_durable_p50_ms', 'kill_durable_p99_ms')} ms; "
                  f"first route to 0 per symbol {r['kill_first_routes']}; IP weight of the last minute "
                  f"after the start {r.get('ip_weight_1m_after_start')}, after the kills {r.get('ip_weight_1m_after_kills')}; "
                  f"orders landed after an answer confirmed 0 (kills with any): {r.get('late_landings')}; "
                  f"before the SIGKILL and the SIGSTOP, waited {f(r, 'recovery_ip_wait_s', fmt='.1f')} and "
                  f"{f(r, 'hung_ip_wait_s', fmt='.1f')} s for the IP's weight of the minute to fall below {IP_CALM:g}")
            print(f"{'':>7} CPU ms per second by each kind of process while every agent quotes, before the kills: "
                  f"{r.get('quoting_cpu_ms_per_s')}")
            print(f"{'':>7} CPU ms spent by each kind of process from a kill's request to its answer, median of the "
                  f"kills (the machine has {os.cpu_count()} cores): {r.get('kill_cpu_ms')}")
            print(f"{'':>7} /metrics with the controller stopped: max {f(r, 'stopped_metrics_max_ms')} ms")
            print(f"{'':>7} IP weight by route, up to the kills: {r.get('weight_start')}; "
                  f"the {r.get('kills')} kills and resumes: {r.get('weight_kills')}")
        steps = ", ".join(f"{STEP_NAMES[k]} {r[f'phase_{k}'][2]:.1f}/{r[f'phase_{k}'][3]:.1f} s "
                          f"(CPU {r[f'phase_{k}'][4]:.2f}/{r[f'phase_{k}'][5]:.2f})"
                          for k in PHASES[1:] if f"phase_{k}" in r)
        if steps:
            print(f"{'':>7} start: simulator+controller+endpoint+agents created {r['start_fleet_s']:.1f} s; "
                  f"processes spawned by {r['phase_process'][1]:.1f} s (p50 {r['phase_process'][0]:.1f}); "
                  f"first orders by {r['phase_quoting'][1]:.1f} s (p50 {r['phase_quoting'][0]:.1f}); "
                  f"fenced {r['start_fenced']}, epoch > 1 {r['start_epoch_gt1']}")
            print(f"{'':>7} start, per agent p50/max wall s (CPU s of its process): {steps}; "
                  f"CPU until quoting p50 {r['phase_cpu_total_p50']:.2f} s")
        during = ", ".join(f"{w} p50 {r[f'start_{w}_p50_ms']:.0f} / max {r[f'start_{w}_max_ms']:.0f} ms "
                           f"({r[f'start_{w}_n']})" for w in ("status", "exposure", "controller", "controller_status")
                           if f"start_{w}_p50_ms" in r)
        if during:
            print(f"{'':>7} while starting: HTTP {during}")
        for problem in r.get("problems", ()):
            print(f"{'':>7} NOT AS PLANNED: {problem}")
    print("command: RAY_AUTH_MODE=disabled .venv/bin/python bench/fleet_bench.py "
          f"--sizes {args.sizes} --kills {args.kills} --stopped-kills {args.stopped_kills}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
