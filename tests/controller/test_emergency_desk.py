"""The controller's own exchange route (``controller/emergency.py``) against the simulator: a cancel of
every order that the exchange fails is retried until the book is empty, and says so in the log; a
flatten whose close another close beat reads the position again."""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal

import aiohttp
import pytest

from controller.emergency import EmergencyDesk, Outcome
from fleet.binance.client import BinanceClient
from fleet.binance.models import OrderRequest, OrderType, Side
from fleet.config import FleetConfig

from tests.fleet.binance.test_client_faults import admin, fault, passive_order
from tests.fleet.binance.test_client_rest import SYMBOL
from tests.polling import wait_for


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


async def test_a_retires_check_cancels_the_listed_orders_when_every_cancel_all_is_refused(sim, monkeypatch):
    """An apply's retire (or a down) checks the exchange with ``confirm_empty``: through an outage of
    the cancel-all route it cancels the listed orders by the batch route, and the count is the
    exchange's listing (it raised "exchange check failed" and left them resting)."""
    desk, account = desk_on(sim, monkeypatch)
    _, key, secret = sim.accounts[0]
    async with BinanceClient(sim.rest_url, key, secret, timeout=5) as own:
        await own.sync_time()
        for tag in ("retire-a", "retire-b"):
            await own.place_order(await passive_order(own, tag))
    await fault(sim, mode="error", count=50, path="/fapi/v1/allOpenOrders", method="DELETE", status=503)
    try:
        assert await desk.confirm_empty(SYMBOL, account, cancel_first=True) == 0
    finally:
        await desk.close()
        await admin(sim, "POST", "/sim/fault/clear", {})
    state = await admin(sim, "GET", "/sim/state", params={"account": account, "symbol": SYMBOL})
    assert state["open_orders"] == []                      # the exchange's truth


async def test_a_flatten_whose_close_is_raced_reads_the_position_again_and_reports_it_flat(sim, monkeypatch):
    """The desk's reduce-only close refused -2022 because another close (the agent's own flatten) got
    there first: the position is read again, and the answer says flat, not failed."""
    desk, account = desk_on(sim, monkeypatch)
    _, key, secret = sim.accounts[0]
    raced: list[str] = []
    async with BinanceClient(sim.rest_url, key, secret, timeout=5) as own:
        await own.sync_time()
        await own.place_order(OrderRequest(symbol=SYMBOL, side=Side.BUY, order_type=OrderType.MARKET,
                                           quantity="0.010"))
        client = await desk.client(account)
        read = client.position

        async def read_then_closed_by_another(symbol: str):
            pos = await read(symbol)
            if Decimal(pos.amount) != 0 and not raced:   # between the desk's read and its order
                raced.append(pos.amount)
                await own.place_order(OrderRequest(symbol=SYMBOL, side=Side.SELL, order_type=OrderType.MARKET,
                                                   quantity=format(abs(Decimal(pos.amount)), "f"), reduce_only=True))
            return pos

        monkeypatch.setattr(client, "position", read_then_closed_by_another)
        try:
            outcome = await desk.cancel(SYMBOL, account, "flatten")
        finally:
            await desk.close()
    assert raced == [Decimal("0.010")]
    assert outcome.outcome == Outcome.EMERGENCY_CANCELLED and outcome.position == 0 and outcome.open_orders == 0
    state = await admin(sim, "GET", "/sim/state", params={"account": account, "symbol": SYMBOL})
    assert float(state["positions"][SYMBOL]["amount"]) == 0      # the exchange's truth


async def test_a_position_above_the_markets_max_qty_is_closed_in_pieces_and_the_odd_rest_by_a_limit(
        sim_factory, monkeypatch):
    """ETHUSDC with MARKET orders on a 0.01 step of at most 0.05 each: a long of 0.123 is closed by three
    MARKET orders (0.04 each: one of 0.123 is refused -4005) and an IOC limit of the 0.003 off the step."""
    from tests.e2e.test_agent_exchange_limits import ETH_COARSE_MARKET

    sim = await sim_factory(config={"symbols": [ETH_COARSE_MARKET]}, symbols=["ETHUSDC"])
    desk, account = desk_on(sim, monkeypatch)
    await admin(sim, "POST", "/sim/position", {"account": account, "symbol": "ETHUSDC", "amount": "0.123"})
    try:
        before, after = await desk.close_position("ETHUSDC", account)
    finally:
        await desk.close()
    assert (before, after) == (0.123, 0.0)
    state = await admin(sim, "GET", "/sim/state", params={"account": account, "symbol": "ETHUSDC"})
    assert Decimal(state["positions"]["ETHUSDC"]["amount"]) == 0      # the exchange's truth


async def test_a_close_after_the_exchange_lowered_its_largest_market_order_reads_the_filters_again(
        sim, monkeypatch, caplog):
    """The desk read ETHUSDC's filters for a close; the exchange then lowers MARKET_LOT_SIZE's maxQty (it
    announces such updates) under the next position to close: the close, cut to the filters read before,
    was refused -4005 and raised, and so was every close after it (they were read once per process). A
    filter's refusal reads them again and the close goes in pieces of the new maximum."""
    desk, account = desk_on(sim, monkeypatch)
    try:
        await admin(sim, "POST", "/sim/position", {"account": account, "symbol": SYMBOL, "amount": "0.050"})
        assert await desk.close_position(SYMBOL, account) == (0.05, 0.0)   # the filters read, before the change
        await admin(sim, "POST", "/sim/filters", {"symbol": SYMBOL, "market_max_qty": "0.020"})
        await admin(sim, "POST", "/sim/position", {"account": account, "symbol": SYMBOL, "amount": "-0.050"})
        with caplog.at_level(logging.INFO, logger="mmfleet.controller"):
            assert await desk.close_position(SYMBOL, account) == (-0.05, 0.0)
    finally:
        await desk.close()
    state = await admin(sim, "GET", "/sim/state", params={"account": account, "symbol": SYMBOL})
    assert Decimal(state["positions"][SYMBOL]["amount"]) == 0      # the exchange's truth
    said = [r.getMessage() for r in caplog.records if "-4005" in r.getMessage()]
    assert len(said) == 1 and "read again" in said[0], said


async def test_the_ips_hold_another_process_was_told_of_holds_the_desks_cancels_and_is_said(
        sim, monkeypatch, tmp_path):
    """An agent of this host took the exchange's 429 on the IP's weight and shared the hold: the desk's
    cancels were sent into it (each refused all the same, and a 429 after a 429 brings the ban that stops
    every agent's cancels too), and a kill answered tens of seconds later without a word of why. The
    desk's budget keeps the host's holds as the agents' do, and ``held`` says what holds its cancels."""
    from fleet.binance.host_holds import HostHolds

    monkeypatch.setenv("MMFLEET_HOST_HOLDS_DIR", str(tmp_path / "holds"))
    desk, account = desk_on(sim, monkeypatch)
    _, key, secret = sim.accounts[0]
    try:
        async with BinanceClient(sim.rest_url, key, secret, timeout=5) as own:
            await own.sync_time()
            await own.place_order(await passive_order(own, "held-a"))
        await desk.warm({account})
        assert desk.held(account) is None
        HostHolds(sim.rest_url).hold(1.5, "429")   # another process of the host, told of a 429
        await wait_for(lambda: desk.held(account) is not None, 1, "the hold read (the file at most every 50 ms)")
        said = desk.held(account)
        assert said is not None and "the IP's hold another process of this host was told of (429)" in said, said
        loop = asyncio.get_running_loop()
        began = loop.time()
        assert await desk.cancel_until_empty(SYMBOL, account, pause_s=0.01) == 0
        assert loop.time() - began >= 1.3   # sent once the hold ended, not into it
    finally:
        await desk.close()
    state = await admin(sim, "GET", "/sim/state", params={"account": account, "symbol": SYMBOL})
    assert state["open_orders"] == []                      # the exchange's truth


async def test_a_ban_another_process_was_told_of_is_raised_at_once_not_waited_out(sim, monkeypatch, tmp_path):
    """The host's IP banned (418), as another process of the host was told: the desk's cancel raises the ban
    at once, naming it (its budget would wait it out, up to two minutes, and a flatten's agent route was
    asked only after its exchange route), and ``held`` says so, its client open or not."""
    from fleet.binance.errors import BannedError
    from fleet.binance.host_holds import HostHolds

    monkeypatch.setenv("MMFLEET_HOST_HOLDS_DIR", str(tmp_path / "holds"))
    desk, account = desk_on(sim, monkeypatch)
    try:
        HostHolds(sim.rest_url).hold(30.0, "418 ban")
        said = desk.held(account)   # (no client open yet: the host's holds read)
        assert said is not None and "418 ban" in said, said
        loop = asyncio.get_running_loop()
        began = loop.time()
        with pytest.raises(BannedError, match="banned for"):
            await desk.cancel_until_empty(SYMBOL, account, pause_s=0.01)
        assert loop.time() - began < 5.0   # not waited out (30 s)
        assert "418 ban" in (desk.held(account) or "")   # its client open now
    finally:
        await desk.close()


async def test_the_notional_the_exchange_lists_is_read_at_most_every_30s(sim, monkeypatch):
    """The fleet's cap for an agent that gives no figure: the exchange's position times its mark, one
    positionRisk (5 weight) a symbol at most every NOTIONAL_READ_S."""
    desk, account = desk_on(sim, monkeypatch)
    await admin(sim, "POST", "/sim/position", {"account": account, "symbol": SYMBOL, "amount": "-0.200"})
    try:
        first = await desk.notional(SYMBOL, account)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{sim.rest_url}/fapi/v1/premiumIndex", params={"symbol": SYMBOL}) as r:
                mark = float((await r.json())["markPrice"])
        assert first == pytest.approx(0.2 * mark, rel=5e-3)   # (the mark moves between the two reads)
        await admin(sim, "POST", "/sim/position", {"account": account, "symbol": SYMBOL, "amount": "0"})
        assert await desk.notional(SYMBOL, account) == first            # within 30 s: not read again
        assert await desk.notional(SYMBOL, account, max_age_s=0) == 0.0   # read again: flat
    finally:
        await desk.close()


async def test_the_fence_cancels_its_epoch_again_once_what_the_hung_owner_signed_can_no_longer_land(
        sim, monkeypatch):
    """A hung owner's order answered 503 before its gate closed executes after the fence's cancel (here
    1.5 s after it): the fence cancels the epoch once more when nothing it signed can land any more
    (``LATE_LANDING_S`` past its lease's end), instead of leaving that order to the successor's start
    or the dead-man switch."""
    import asyncio
    import time

    import dataclasses

    from controller.fence import Fence
    from controller.lease import LeaseBook, MemoryStore
    from controller.kill_path import LATE_LANDING_S
    from tests.controller.test_kill_paths import StatusOnly

    desk, account = desk_on(sim, monkeypatch)
    book = LeaseBook(MemoryStore(), lease_ttl_s=3.0)
    now = time.time()
    book.acquire(SYMBOL, "h1", now=now - 3.0 - LATE_LANDING_S + 3.0)   # lapsed: its late cancel is 3 s away
    lease = book.lease(SYMBOL)
    cid = f"mm-{SYMBOL}-e{lease.epoch}-1"
    _, key, secret = sim.accounts[0]
    await fault(sim, mode="late", count=1, path="/fapi/v1/order", method="POST", answer="503", delay_ms=1500)
    async with BinanceClient(sim.rest_url, key, secret, timeout=5) as own:
        await own.sync_time()
        order = await passive_order(own, "late")
        with pytest.raises(Exception):   # answered 503: it executes 1.5 s later
            await own.place_order(dataclasses.replace(order, client_order_id=cid))
    hung = StatusOnly({"holder": "h0", "state": "quoting"})   # not the lease's holder: no answer for it
    fence = Fence(book, agents=hung, desk=desk, account_of=lambda s: account, probe_timeout_s=0.1)  # type: ignore[arg-type]
    fence.grace_until = 0.0
    try:
        [done] = await fence.tick([SYMBOL], time.time())
        assert done.left == 0 and not done.error                       # nothing rested yet
        landed = time.monotonic() + 10
        while time.monotonic() < landed:                               # the late order lands ...
            st = await admin(sim, "GET", "/sim/state", params={"account": account, "symbol": SYMBOL})
            if st["server"]["late_executed"] == 1:
                break
            await asyncio.sleep(0.05)
        assert st["server"]["late_executed"] == 1
        await asyncio.wait_for(asyncio.gather(*fence.late_cancels.values()), 15)   # ... the late cancel
        st = await admin(sim, "GET", "/sim/state", params={"account": account, "symbol": SYMBOL})
        assert [o["clientOrderId"] for o in st["open_orders"]] == []
    finally:
        await desk.close()


async def test_an_account_changed_by_an_apply_is_reached_anew_and_a_retire_reaches_it_as_it_was(
        sim_factory, monkeypatch):
    """An apply points account ``main`` at other keys: the desk's cached client is not the account's any
    more and is opened again with the new keys; the orders the retired agent left under the old keys
    are reached through the retire's own key (owed.retire_account), not through what ``main`` means now."""
    from controller.owed import retire_account

    sim = await sim_factory(config={"accounts": [{"name": "main"}, {"name": "alt"}]})
    (_, key_a, secret_a), (_, key_b, secret_b) = sim.accounts[0], sim.accounts[1]
    for var, value in (("K_A", key_a), ("S_A", secret_a), ("K_B", key_b), ("S_B", secret_b)):
        monkeypatch.setenv(f"MMFLEET_TEST_{var}", value)

    def config(suffix: str) -> FleetConfig:
        return FleetConfig.model_validate({
            "name": "desk", "exchange": {"kind": "sim", "rest_url": sim.rest_url, "ws_market_url": sim.ws_url},
            "accounts": [{"name": "main", "api_key_env": f"MMFLEET_TEST_K_{suffix}",
                          "api_secret_env": f"MMFLEET_TEST_S_{suffix}"}],
            "symbols": [{"symbol": SYMBOL, "account": "main"}]})

    before, after = config("A"), config("B")
    applied = [before]
    retiring: dict = {}
    desk = EmergencyDesk(lambda: applied[0], lambda: retiring)
    async with BinanceClient(sim.rest_url, key_a, secret_a, timeout=5) as a, \
            BinanceClient(sim.rest_url, key_b, secret_b, timeout=5) as b:
        for own, tag in ((a, "left-a"), (b, "left-b")):
            await own.sync_time()
            await own.place_order(await passive_order(own, tag))

        async def seen(account: str) -> list[str]:
            listed = [o.client_order_id for o in await (await desk.client(account)).open_orders(SYMBOL)]
            return [tag for tag in ("left-a", "left-b") if any(f"-{tag}-" in c for c in listed)]

        try:
            assert await seen("main") == ["left-a"]
            applied[0] = after
            assert await seen("main") == ["left-b"]   # opened again, with B's keys
            key, doc = retire_account(before, after, "main")
            assert key is not None and key.startswith("main#") and doc is not None
            assert "MMFLEET_TEST_K_A" in str(doc) and key_a not in str(doc)   # key sources, never the keys
            retiring[key] = doc
            assert await desk.confirm_empty(SYMBOL, "main", cancel_first=True) == 0    # now B's
            assert await desk.confirm_empty(SYMBOL, key, cancel_first=True) == 0       # A's, as it was
        finally:
            await desk.close()
    for account in ("main", "alt"):
        state = await admin(sim, "GET", "/sim/state", params={"account": account, "symbol": SYMBOL})
        assert state["open_orders"] == [], account                  # the exchange's truth, both accounts


async def test_an_apply_may_not_stop_an_agent_whose_flatten_has_not_made_it_flat(sim, monkeypatch):
    """A stop would cut the flatten short and leave the position to nobody: refused, naming the symbol,
    while the exchange holds a position; once it is flat (a flatten answered before it was done, or a
    delisting's exit, stay "flattening"), the apply goes on. A halted symbol may always go."""
    from types import SimpleNamespace

    from controller.lease import LeaseBook, MemoryStore
    from controller.owed import refuse_flattening
    from fleet.vocabulary import KillState

    desk, account = desk_on(sim, monkeypatch)
    book = LeaseBook(MemoryStore(), lease_ttl_s=3.0)
    await book.set_kill_states([SYMBOL], KillState.FLATTENING, "drill", now=1000.0)
    await book.set_kill_states(["BTCUSDT"], KillState.HALTED, "drill", now=1000.0)
    ctl = SimpleNamespace(book=book, desk=desk, _account_of=lambda s: account)
    try:
        await admin(sim, "POST", "/sim/position", {"account": account, "symbol": SYMBOL, "amount": "0.05"})
        with pytest.raises(ValueError, match=f"{SYMBOL} being flattened, not flat at the exchange: nothing applied"):
            await refuse_flattening(ctl, ["BTCUSDT", SYMBOL])   # type: ignore[arg-type]
        await admin(sim, "POST", "/sim/position", {"account": account, "symbol": SYMBOL, "amount": "0"})
        await refuse_flattening(ctl, ["BTCUSDT", SYMBOL])   # type: ignore[arg-type]
    finally:
        await desk.close()


async def test_a_down_clears_the_other_account_of_a_restart_cut_short_flattening_it_too(sim, monkeypatch):
    """A down whose symbol's retire is still owed on one account empties the spec's account besides; with
    a flatten, it closes the position there too (the agent made anew may have traded there)."""
    from controller.owed import empty_also

    desk, account = desk_on(sim, monkeypatch)
    _, key, secret = sim.accounts[0]
    async with BinanceClient(sim.rest_url, key, secret, timeout=5) as own:
        await own.sync_time()
        await own.place_order(await passive_order(own, "made-anew"))
    await admin(sim, "POST", "/sim/position", {"account": account, "symbol": SYMBOL, "amount": "0.05"})
    try:
        await empty_also(desk, {SYMBOL: account}, lambda symbol, acct, _: desk.close_position(symbol, acct))
    finally:
        await desk.close()
    state = await admin(sim, "GET", "/sim/state", params={"account": account, "symbol": SYMBOL})
    assert state["open_orders"] == [] and float(state["positions"][SYMBOL]["amount"]) == 0.0


async def test_an_old_book_whose_key_is_refused_is_written_off_said_one_the_exchange_fails_stays_owed(
        sim, monkeypatch, caplog):
    """An owed old book (a symbol made anew elsewhere) on an account whose key the exchange refuses
    (-2015: the old key revoked after a rotation) is written off as an ERROR: it was tried every 10 s for
    good and kept every later apply owing. One the exchange merely fails (a 5xx) stays owed."""
    from controller.owed import empty_books

    desk, account = desk_on(sim, monkeypatch)
    try:
        await fault(sim, mode="error", answer="-2015", count=100, path="/fapi/v1/allOpenOrders")
        with caplog.at_level(logging.WARNING, logger="mmfleet.controller"):
            assert await empty_books(desk, [(SYMBOL, account)]) == []
        said = [r for r in caplog.records if r.name == "mmfleet.controller"]
        assert said[-1].levelno == logging.ERROR and "written off" in said[-1].getMessage()
        await admin(sim, "POST", "/sim/fault/clear", {})
        await fault(sim, mode="error", count=100, path="/fapi/v1/", status=503)
        assert await empty_books(desk, [(SYMBOL, account)]) == [(SYMBOL, account)]
    finally:
        await desk.close()
        await admin(sim, "POST", "/sim/fault/clear", {})
