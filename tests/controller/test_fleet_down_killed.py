"""``down --flatten`` whose controller is SIGKILLed midway, with the exchange holding every cancel-all
2 s and one agent hung (SIGSTOPped): Ray runs the down again on the restarted controller, which reads
the stored down back, keeps the flattening agents' leases, and, once each agent is gone, closes at the
exchange whatever position is left. The end is checked against the exchange's truth: every position
flat, no order, no agent."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import uuid

import pytest
import ray as ray_module
from sqlalchemy import select

from controller.controller import ControllerSettings, build_spec, find_controller, get_or_create_controller
from fleet.ops.fleet_cli import start_simulator, stop_fleet
from journal.db import make_engine, target_of
from journal.schema import events
from tests.controller.test_fleet import CONFIGS, DEMO_HARD_CAPS, Exchange, fleet_config, poll

SYMBOLS = ("ETHUSDC", "SOLUSDT")


def test_a_flatten_down_whose_controller_is_killed_midway_ends_flat(ray_cluster, tmp_path):
    name = f"dk{uuid.uuid4().hex[:6]}"
    cfg = fleet_config(name, tmp_path, symbols=[
        {"symbol": s, "account": "main", "params_file": f"symbols/{s}.yaml", "net_max_hard_cap": DEMO_HARD_CAPS.get(s)}
        for s in SYMBOLS])
    cfg, urls = start_simulator(cfg)
    spec = {**build_spec(cfg, str(CONFIGS / "fleet.demo.yaml")), "fleet": cfg.model_dump(mode="json")}
    exchange = Exchange(urls["rest_url"], cfg.accounts[0].key_file)
    controller = get_or_create_controller(cfg, ControllerSettings(stop_timeout_s=12.0))
    agent = lambda s: ray_module.get_actor(f"agent.{s}", namespace=cfg.namespace)  # noqa: E731
    status = lambda s: ray_module.get(agent(s).status.remote(), timeout=15)  # noqa: E731
    hung = None
    try:
        assert sorted(ray_module.get(controller.apply.remote(spec), timeout=120)["created"]) == sorted(SYMBOLS)
        poll(lambda: all(status(s)["state"] == "quoting" for s in SYMBOLS), 60.0, "both agents quoting")
        exchange.set_position("ETHUSDC", 0.05)
        exchange.set_position("SOLUSDT", 1.0)
        hung = status("SOLUSDT")["pid"]
        exchange.admin("/sim/fault/latency", {"ms": 2000, "path": "/fapi/v1/allOpenOrders"})
        os.kill(hung, signal.SIGSTOP)
        pid = ray_module.get(controller.__ray_call__.remote(lambda self: os.getpid()), timeout=15)
        ref = controller.down.remote(True)
        poll(lambda: status("ETHUSDC")["state"] == "stopping", 30.0, "the down stopping ETHUSDC's agent")
        os.kill(pid, signal.SIGKILL)
        result = ray_module.get(ref, timeout=180)   # run again by Ray on the restarted controller
        restarted = find_controller(cfg.namespace)
        assert ray_module.get(restarted.__ray_call__.remote(lambda self: os.getpid()), timeout=15) != pid
    finally:
        exchange.admin("/sim/fault/clear", {})
        if hung is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(hung, signal.SIGCONT)
    try:
        assert {s: exchange.position(s) for s in SYMBOLS} == {s: 0.0 for s in SYMBOLS}, result
        assert {s: exchange.open_orders(s) for s in SYMBOLS} == {s: [] for s in SYMBOLS}
        assert {s: r["position"] for s, r in result["symbols"].items()} == {s: 0.0 for s in SYMBOLS}, result
        for s in SYMBOLS:
            with pytest.raises(ValueError):
                agent(s)
        assert ray_module.get(find_controller(cfg.namespace).spec.remote(), timeout=15) is None   # forgotten
        again = ray_module.get(find_controller(cfg.namespace).down.remote(True), timeout=60)   # an operator's retry
        assert again["finished_earlier"] and again["symbols"] == result["symbols"] and again["flatten"]
        # killed once more, after the spec was forgotten: its successor still knows what the down did
        # (it answered "no agent to stop", and the command exit 0, for a down whose outcome nobody saw)
        pid = ray_module.get(find_controller(cfg.namespace).__ray_call__.remote(lambda self: os.getpid()), timeout=15)
        os.kill(pid, signal.SIGKILL)
        again = ray_module.get(find_controller(cfg.namespace).down.remote(True), timeout=60)
        assert again["finished_earlier"] and again["symbols"] == result["symbols"] and again["flatten"]
        # the record: the down, and the hung agent's position the controller closed
        engine = make_engine(target_of(cfg))
        with engine.connect() as conn:
            rows = conn.execute(select(events.c.kind, events.c.symbol, events.c.detail)
                                .where(events.c.kind.in_(("down", "position_closed")))).all()
        engine.dispose()
        closed = [json.loads(d) for k, s, d in rows if k == "position_closed" and s == "SOLUSDT"]
        assert closed and closed[-1]["after"] == 0.0 and closed[-1]["before"] > 0, rows
        downs = [json.loads(d) for k, _, d in rows if k == "down"]
        assert downs and downs[-1]["flatten"] and downs[-1]["symbols"]["SOLUSDT"]["position"] == 0.0, rows
    finally:
        stop_fleet(cfg.namespace, cfg.name)
