"""The controller's own exchange route (``controller/emergency.py``) against the simulator: a cancel of
every order that the exchange fails is retried until the book is empty, and says so in the log."""

from __future__ import annotations

import logging

from controller.emergency import EmergencyDesk
from fleet.binance.client import BinanceClient
from fleet.config import FleetConfig

from tests.fleet.binance.test_client_faults import admin, fault, passive_order
from tests.fleet.binance.test_client_rest import SYMBOL


def desk_on(sim, monkeypatch) -> tuple[EmergencyDesk, str]:
    name, key, secret = sim.accounts[0]
    monkeypatch.setenv("MMFLEET_TEST_DESK_KEY", key)
    monkeypatch.setenv("MMFLEET_TEST_DESK_SECRET", secret)
    cfg = FleetConfig.model_validate({
        "name": "desk",
        "exchange": {"kind": "sim", "rest_url": sim.rest_url, "ws_market_url": sim.ws_url},
        "accounts": [{"name": name, "api_key_env": "MMFLEET_TEST_DESK_KEY",
                      "api_secret_env": "MMFLEET_TEST_DESK_SECRET"}],
        "symbols": [{"symbol": SYMBOL, "account": name}],
    })
    return EmergencyDesk(lambda: cfg), name


async def test_a_cancel_of_every_order_the_exchange_fails_is_retried_logged_and_empties_the_book(
        sim, monkeypatch, caplog):
    desk, account = desk_on(sim, monkeypatch)
    _, key, secret = sim.accounts[0]
    async with BinanceClient(sim.rest_url, key, secret, timeout=5) as own:
        await own.sync_time()
        for tag in ("desk-a", "desk-b", "desk-c"):
            await own.place_order(await passive_order(own, tag))
    state = await admin(sim, "GET", "/sim/state", params={"account": account, "symbol": SYMBOL})
    assert len(state["open_orders"]) == 3
    await fault(sim, mode="error", count=3, path="/fapi/v1/allOpenOrders", method="DELETE", status=503)
    try:
        with caplog.at_level(logging.WARNING, logger="mmfleet.controller"):
            left = await desk.cancel_until_empty(SYMBOL, account, pause_s=0.01)
    finally:
        await desk.close()
    assert left == 0
    state = await admin(sim, "GET", "/sim/state", params={"account": account, "symbol": SYMBOL})
    assert state["open_orders"] == []                      # the exchange's truth
    said = [r.getMessage() for r in caplog.records if r.name == "mmfleet.controller"]
    assert said[0].startswith(f"{SYMBOL}: cancelling every order failed (1 in a row; retried for up to 10 s): ")
    assert "-1001" in said[0] or "503" in said[0]             # the exchange's answer, named
    assert said[-1] == f"{SYMBOL}: cancelling every order went through after 3 failures"
    assert len(said) == 2                                   # the first failure and the recovery, not every retry
