"""Two live processes for one symbol: a zombie that still holds an old epoch (cut off from the
controller, still running) and the new owner the controller starts. After the fence (the zombie's
lease lapsing at the controller) the exchange must accept no order of the old epoch, and the new
owner must have cancelled every old-epoch order before quoting. Checked in the simulator's order
history (signed allOrders)."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from typing import Any

import ray as ray_module

from agents.orders import parse_client_order_id
from controller.controller import ControllerSettings, build_spec, get_or_create_controller
from agents.lease_client import LeaseOwnership
from fleet.ops.fleet_cli import start_simulator, stop_fleet
from tests.controller.test_fleet import CONFIGS, Exchange, fleet_config, poll

TTL_S = 3.0


class PartitionedLease(LeaseOwnership):
    """The zombie's lease client: once ``cut``, renewals never return (a network partition)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cut = False
        self.last_renewed_at = 0.0  # wall clock when the controller last answered yes

    async def acquire(self):
        grant = await super().acquire()
        self.last_renewed_at = time.time()
        return grant

    async def renew(self):
        if self.cut:
            await asyncio.Event().wait()
        grant = await super().renew()
        self.last_renewed_at = time.time()
        return grant


class Zombie:
    """A SymbolAgent on its own event loop in a thread of the test process."""

    def __init__(self, cfg: Any, spec: dict[str, Any], controller: Any) -> None:
        from agents.agent import ExchangeEndpoints, SymbolAgent
        from fleet.binance.credentials import load_credentials
        from fleet.config import SymbolParams

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="zombie", daemon=True)
        self.thread.start()
        self.lease = PartitionedLease(controller, "ETHUSDC", f"zombie-{uuid.uuid4().hex[:6]}")
        ex = cfg.exchange

        async def build() -> Any:
            return SymbolAgent(
                fleet_name=cfg.name, symbol="ETHUSDC", params=SymbolParams.model_validate(spec["params"]["ETHUSDC"]),
                runtime=cfg.runtime,
                endpoints=ExchangeEndpoints(rest_url=ex.rest_url, ws_market_url=ex.ws_market_url, ws_user_url=ex.ws_user_url),
                credentials=load_credentials(cfg.account("main")), ownership=self.lease,
            )

        self.agent = asyncio.run_coroutine_threadsafe(build(), self.loop).result(10)
        self.run = asyncio.run_coroutine_threadsafe(self.agent.run(), self.loop)

    def status(self) -> dict[str, Any]:
        return asyncio.run_coroutine_threadsafe(self._status(), self.loop).result(10)

    async def _status(self) -> dict[str, Any]:
        return self.agent.status()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.agent.stop(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def _epoch(order: dict[str, Any]) -> int | None:
    parsed = parse_client_order_id(order["clientOrderId"])
    return parsed[0] if parsed else None


def test_a_zombie_with_an_old_epoch_gets_no_order_accepted_after_the_fence(ray_cluster, tmp_path):
    name = f"zb{uuid.uuid4().hex[:6]}"
    cfg = fleet_config(name, tmp_path, symbols=[{"symbol": "ETHUSDC", "account": "main",
                                                 "params_file": "symbols/ETHUSDC.yaml"}])
    cfg, urls = start_simulator(cfg)
    spec = {**build_spec(cfg, str(CONFIGS / "fleet.demo.yaml")), "fleet": cfg.model_dump(mode="json")}
    exchange = Exchange(urls["rest_url"], cfg.accounts[0].key_file)
    controller = get_or_create_controller(cfg, ControllerSettings(lease_ttl_s=TTL_S))
    zombie = Zombie(cfg, spec, controller)
    try:
        poll(lambda: any(_epoch(o) == 1 for o in exchange.open_orders("ETHUSDC")), 30.0, "the zombie quoting at epoch 1")
        zombie.lease.cut = True  # partitioned from the controller, still alive and connected to the exchange
        applied = ray_module.get(controller.apply.remote(spec), timeout=60)
        assert applied["created"] == ["ETHUSDC"]

        def new_owner_quoting() -> list[dict[str, Any]] | None:
            orders = exchange.open_orders("ETHUSDC")
            return orders if orders and all(_epoch(o) == 2 for o in orders) else None

        poll(new_owner_quoting, 40.0, "the new owner quoting at epoch 2 with no epoch-1 order left")
        fence_ms = int((zombie.lease.last_renewed_at + TTL_S) * 1000)  # the zombie's lease lapsed by then
        history = exchange.all_orders("ETHUSDC")
        old = [o for o in history if _epoch(o) == 1]
        assert old, "the zombie placed orders before the partition"
        accepted_after_fence = [o for o in old if o["time"] > fence_ms]
        assert accepted_after_fence == []
        assert all(o["status"] not in ("NEW", "PARTIALLY_FILLED") for o in old)
        assert "lease" in zombie.status()["blocks"]  # the zombie knows it must not quote
    finally:
        stop_fleet(cfg.namespace, cfg.name)
        zombie.stop()
