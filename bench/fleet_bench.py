"""Fleet figures on the simulator: 1, 10, 30, 50 symbols on one local Ray cluster.

Per fleet size: time from `up` until every agent quotes at the exchange; RSS per agent process; CPU
of the whole fleet (agents, controller, simulator) while quoting; HTTP kill latency p50/p99 from
the request to the answer confirming 0 open orders at the exchange for every symbol (and, per kill,
the slowest symbol's time until the exchange listed 0 and which route got there first: the agent or
the exchange directly); the same kill with the controller process stopped (SIGSTOP: the endpoint's
own routes); recovery after SIGKILL of one agent until it quotes again (and older-epoch / duplicate
orders then); recovery after SIGSTOP of one agent beyond its lease (until its orders are gone, until a
successor quotes); `/metrics` scrape time. Reproduce: `RAY_AUTH_MODE=disabled .venv/bin/python
bench/fleet_bench.py` (options: --sizes 1,10 --kills 5 --stopped-kills 3). Ten symbols per simulated account, so each agent gets a tenth of
its account's order limits; the simulator allows 10x Binance's IP weight for the shared loopback IP.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import statistics
import sys
import tempfile
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
from controller.lease import GcsStore, LeaseBook  # noqa: E402
from fleet.config import FleetConfig  # noqa: E402
from fleet.ops.fleet_cli import start_fleet, stop_fleet  # noqa: E402

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    raise SystemExit(f"timed out after {timeout:g} s: {what}: {what_else() if what_else else ''}")


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


class Bench:
    def __init__(self, ray: Any, n: int, state_dir: str) -> None:
        self.ray = ray
        self.symbols = [f"B{i:03d}USDT" for i in range(n)]
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
            "agent": {"num_cpus": 0.01},
            # countdownCancelAll costs 10 weight: every 10 s for 50 agents would be 3000 of the IP's
            # 2400 weight per minute. A 30 s heartbeat (120 s countdown) leaves room to trade.
            "runtime": {"deadman_heartbeat_sec": 30, "deadman_countdown_ms": 120000},
            "state_dir": state_dir,
        })

    def state(self, account: str) -> dict[str, Any]:
        r = requests.get(f"{self.sim}/sim/state", params={"account": account}, timeout=30)
        r.raise_for_status()
        return r.json()

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

    def http(self, method: str, path: str, **kw: Any) -> requests.Response:
        return requests.request(method, f"{self.url}{path}", headers={"Authorization": f"Bearer {self.token}"},
                                timeout=120, **kw)

    def kill_once(self, what: str) -> tuple[float, float, dict[str, int]]:
        """POST /kill for every symbol; (HTTP latency s, slowest symbol's confirmed-0 ms, first routes)."""
        t = time.monotonic()
        r = self.http("POST", "/kill", json={"all": True, "mode": "halt", "reason": "bench"})
        latency = time.monotonic() - t
        body = r.json()
        per = body.get("symbols", {}).values()
        firsts: dict[str, int] = {}
        for v in per:
            key = f"{v.get('by', 'controller')}:{v.get('first') or v.get('path')}"
            firsts[key] = firsts.get(key, 0) + 1
        confirmed = max((v.get("confirmed_ms") or 0.0 for v in per), default=0.0)
        print(f"   {what} {latency * 1000:.0f} ms, slowest 0 at {confirmed:.0f} ms ({firsts})", flush=True)
        if not body.get("confirmed") or any(self.open_by_symbol().values()):
            raise SystemExit(f"kill not confirmed at the exchange: {body}")
        return latency, confirmed, firsts

    def stopped_controller_kills(self, n: int) -> tuple[list[float], list[float]]:
        """Kills with the controller process stopped; resumed once it has caught up with each."""
        ctl = find_controller(self.cfg.namespace)
        pid = self.ray.get(ctl.__ray_call__.remote(lambda s: os.getpid()))
        book = LeaseBook(GcsStore(self.cfg.name))
        latencies, confirmed = [], []
        for _ in range(n):
            wait(self.all_quoting, 150, "quoting before a kill", what_else=lambda: self.lagging)
            os.kill(pid, signal.SIGSTOP)
            try:
                lat, conf, _ = self.kill_once("kill, controller stopped:")
                seqs = {s: book.kill_seq(s) for s in self.symbols}
            finally:
                os.kill(pid, signal.SIGCONT)
            latencies.append(lat)
            confirmed.append(conf)
            wait(lambda: all(book.kill_seq(s) > seqs[s] for s in self.symbols), 60, "the controller's own kill")
            self.http("POST", "/resume", json={"all": True}).raise_for_status()
        return latencies, confirmed

    def hung_agent(self, victim: str) -> tuple[float, float]:
        """SIGSTOP one agent beyond its lease: (s until its orders are gone, s until a successor quotes)."""
        wait(self.all_quoting, 150, "quoting before the SIGSTOP", what_else=lambda: self.lagging)
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
        t0 = time.monotonic()
        running = start_fleet(self.cfg, build_spec(self.cfg), controller_settings=ControllerSettings(),
                              route_prefix=f"/{self.cfg.name}")
        self.sim = running.sim_urls["rest_url"]
        self.url = running.api_url
        self.token = Path(running.cfg.api.token_file).read_text().strip()
        try:
            wait(self.all_quoting, 120 + 4 * len(self.symbols), "every agent quoting")
            out["time_to_quote_s"] = time.monotonic() - t0

            pids = [st["pid"] for st in self.statuses().values()]
            rss = [rss_mib(p) for p in pids]
            out["rss_mib_mean"], out["rss_mib_max"] = statistics.mean(rss), max(rss)
            ctl_pid = self.ray.get(find_controller(self.cfg.namespace).__ray_call__.remote(lambda s: os.getpid()))
            sim_pid = self.ray.get(self.ray.get_actor("sim", namespace=self.cfg.namespace).__ray_call__.remote(
                lambda s: os.getpid()))
            procs = pids + [ctl_pid, sim_pid]
            c0, w0 = sum(cpu_seconds(p) for p in procs), time.monotonic()
            time.sleep(10.0)  # a measurement window, not a wait for a condition
            out["fleet_cpu_cores"] = (sum(cpu_seconds(p) for p in procs) - c0) / (time.monotonic() - w0)

            scrapes = []
            for _ in range(10):
                t = time.monotonic()
                r = self.http("GET", "/metrics")
                r.raise_for_status()
                scrapes.append(time.monotonic() - t)
            out["metrics_p50_ms"], out["metrics_max_ms"] = pct(scrapes, 0.5) * 1000, max(scrapes) * 1000
            out["metrics_bytes"] = len(r.content)

            latencies, confirmed, firsts = [], [], {}
            for _ in range(kills):
                wait(self.all_quoting, 150, "quoting before a kill", what_else=lambda: self.lagging)
                lat, conf, first = self.kill_once("kill")
                latencies.append(lat)
                confirmed.append(conf)
                for k, v in first.items():
                    firsts[k] = firsts.get(k, 0) + v
                self.http("POST", "/resume", json={"all": True}).raise_for_status()
            out["kill_p50_ms"], out["kill_p99_ms"] = pct(latencies, 0.5) * 1000, pct(latencies, 0.99) * 1000
            out["kill_zero_p50_ms"], out["kill_zero_p99_ms"] = pct(confirmed, 0.5), pct(confirmed, 0.99)
            out["kill_first_routes"] = " ".join(f"{k}={v}" for k, v in sorted(firsts.items()))
            out["kills"] = len(latencies)
            if stopped_kills:
                lat, conf = self.stopped_controller_kills(stopped_kills)
                out["stopped_kill_p50_ms"], out["stopped_kill_p99_ms"] = pct(lat, 0.5) * 1000, pct(lat, 0.99) * 1000
                out["stopped_kill_zero_p99_ms"] = pct(conf, 0.99)

            wait(self.all_quoting, 150, "quoting before the SIGKILL", what_else=lambda: self.lagging)
            victim = self.symbols[0]
            before = self.agent(victim).status.remote()
            before = self.ray.get(before)
            t = time.monotonic()
            os.kill(before["pid"], signal.SIGKILL)

            def back() -> Any:
                st = self.ray.get(self.agent(victim).status.remote(), timeout=10)
                orders = self.open_by_symbol()[victim]
                return (st, orders) if st["pid"] != before["pid"] and st["state"] == "quoting" and orders else None

            st, orders = wait(back, 60, "the killed agent quoting again")
            out["recovery_s"] = time.monotonic() - t
            ids = [o["clientOrderId"] for o in orders]
            older = [o for o in orders if (parse_client_order_id(o["clientOrderId"]) or (0,))[0] != st["epoch"]]
            out["recovery_old_epoch_orders"] = len(older)
            out["recovery_duplicate_ids"] = len(ids) - len(set(ids))

            hung = self.symbols[1] if len(self.symbols) > 1 else victim
            out["hung_orders_gone_s"], out["hung_successor_s"] = self.hung_agent(hung)
        finally:
            stop_fleet(self.cfg.namespace, self.cfg.name)
        return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,10,30,50", help="fleet sizes (symbols)")
    parser.add_argument("--kills", type=int, default=5, help="kill/resume cycles per size")
    parser.add_argument("--stopped-kills", type=int, default=3,
                        help="kill/resume cycles per size with the controller process stopped (SIGSTOP)")
    args = parser.parse_args()
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    results = []
    with tempfile.TemporaryDirectory() as state_dir:
        for n in [int(x) for x in args.sizes.split(",") if x]:
            print(f"== {n} symbols", flush=True)
            res = Bench(ray, n, state_dir).run(args.kills, args.stopped_kills)
            print("   " + ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in res.items()),
                  flush=True)
            results.append(res)
    ray.shutdown()
    print(f"\nfleet bench ({os.cpu_count()} cores, local Ray cluster, simulator on loopback)")
    print(f"{'symbols':>7} {'to quote s':>10} {'RSS/agent MiB':>13} {'fleet CPU':>9} {'kill p50 ms':>11} "
          f"{'kill p99 ms':>11} {'0 p99 ms':>8} {'ctl-stopped p50/p99 ms':>22} {'recovery s':>10} {'old/dup':>7} "
          f"{'hung gone/successor s':>21} {'/metrics ms':>11}")
    for r in results:
        stopped = (f"{r['stopped_kill_p50_ms']:.0f}/{r['stopped_kill_p99_ms']:.0f}" if "stopped_kill_p50_ms" in r
                   else "-")
        print(f"{r['symbols']:>7} {r['time_to_quote_s']:>10.1f} {r['rss_mib_mean']:>13.0f} {r['fleet_cpu_cores']:>9.2f} "
              f"{r['kill_p50_ms']:>11.0f} {r['kill_p99_ms']:>11.0f} {r['kill_zero_p99_ms']:>8.0f} {stopped:>22} "
              f"{r['recovery_s']:>10.2f} {r['recovery_old_epoch_orders']}/{r['recovery_duplicate_ids']:<5} "
              f"{r['hung_orders_gone_s']:>10.2f}/{r['hung_successor_s']:<10.2f} {r['metrics_p50_ms']:>11.0f}")
        print(f"{'':>7} kill: first route to 0 per symbol {r['kill_first_routes']}")
    print("command: RAY_AUTH_MODE=disabled .venv/bin/python bench/fleet_bench.py "
          f"--sizes {args.sizes} --kills {args.kills} --stopped-kills {args.stopped_kills}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
