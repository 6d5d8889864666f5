"""The controller's own hands at the exchange: cancel a symbol's orders when its agent cannot.

When an agent does not confirm a kill in time (or is not trading yet), the controller cancels that
symbol's orders itself, optionally closes the position with a reduce-only MARKET order, confirms
the book is empty, and sweeps once more after the stuck agent's lease has lapsed. It also confirms an
empty book when an agent is retired. Keys are read in the controller's process (env or key file),
never passed to it. The results are frozen; :meth:`KillOutcome.to_dict` makes the Ray answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from controller.spec import credentials_basis, endpoints_of
from fleet.config import AccountConfig, FleetConfig
from fleet.text import named_line

log = logging.getLogger("mmfleet.controller")

NOTIONAL_READ_S = 30.0   # a symbol's position read for the fleet's cap at most this often (5 weight a read)
REFUSED_CLOSE_PAUSE_S = 0.05  # after a close refused -2022 (another close got there first), before reading again
CLOSE_LATER_S = 30.0   # a client out of use (its account changed or retired) is closed this long after
HELD_SAID_S = 1.0   # a kill's answer says what held its cancels back when they had to wait this long or more


class Outcome(StrEnum):
    """What a kill did to one symbol."""

    HALTED = "halted"                            # the agent (or the controller for an idle agent) halted it
    FLATTENED = "flattened"                      # ... flattened it
    EMERGENCY_CANCELLED = "emergency_cancelled"  # the controller cancelled at the exchange itself
    FAILED = "failed"                            # the emergency cancel failed: see error

    @classmethod
    def done(cls, mode: str) -> Outcome:
        """The outcome of a kill of ``mode`` (halt or flatten) carried out."""
        return cls.HALTED if mode == "halt" else cls.FLATTENED


def flat_position(position: Any) -> bool:
    """An answer's position says flat (0); a missing or unreadable one does not."""
    try:
        return position is not None and float(position) == 0
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class KillOutcome:
    """One symbol's answer to a kill: what happened, by which path, what the exchange lists after."""

    outcome: Outcome
    path: str                       # agent | controller | emergency
    open_orders: int | None         # confirmed at the exchange (None: unknown)
    position: Any = None
    elapsed_ms: float | None = None
    problem: str | None = None      # why the emergency path was taken
    error: str | None = None        # why the emergency cancel failed
    first: str | None = None        # the route that saw 0 open orders first: agent | exchange
    confirmed_ms: float | None = None  # ms from the kill's start until the exchange listed 0 (by that route)
    held: str | None = None         # what held the cancels back as the kill began (the exchange's 429 on the IP)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"outcome": self.outcome.value, "path": self.path, "open_orders": self.open_orders,
                               "position": self.position}
        for key in ("elapsed_ms", "problem", "error", "first", "confirmed_ms", "held"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out


async def _close_after(client: Any, delay: float, retired: set[Any]) -> None:
    try:
        await asyncio.sleep(delay)
    finally:   # (the desk's close cancels the wait, and closes what a wait cancelled unstarted left)
        retired.discard(client)
        with contextlib.suppress(Exception):
            await client.close()


def refuse_banned(client: Any) -> None:
    """A 418 ban of the IP (the desk's own, or one another process of the host was told of) raised at once:
    a request would wait it out in the budget (up to two minutes), and a kill's other route (an agent on
    another node) must not wait behind it."""
    from fleet.binance.errors import BannedError

    left = client.budget.ban_left()
    if left > 0:
        raise BannedError(-1003, f"the IP is banned for {left:.0f} s more: nothing is sent into the ban", 418)


def with_hold(outcome: KillOutcome, held: str | None) -> KillOutcome:
    """``outcome``, saying what held its cancels back (``EmergencyDesk.held``) if anything did."""
    return outcome if held is None or outcome.held is not None else replace(outcome, held=held)


def _emergency_budget(rest_url: str) -> Any:
    """The controller's budget: its own few calls only, never the IP-wide counts the agents spend.

    An emergency cancel must not queue behind the agents' quoting until the weight minute rolls
    over; if the exchange really is over the limit it answers 429, which is reported. The exchange's
    429 or ban on the IP, which another process of the host was told of, holds it as it holds the
    agents (``HostHolds``): a cancel sent into it is refused all the same, and a 429 sent after a
    429 brings the ban (418) that stops every agent's cancels and heartbeats too.
    """
    from fleet.binance.host_holds import HostHolds
    from fleet.binance.ratelimit import RateBudget

    budget = RateBudget(exchange_counts=False)
    budget.share_host_holds(HostHolds(rest_url), funding=HostHolds(rest_url, kind="funding"))
    return budget


class EmergencyDesk:
    """The controller's exchange clients (one per account) and what it does with them."""

    def __init__(self, config: Callable[[], FleetConfig | None],
                 retiring: Callable[[], dict[str, dict[str, Any]]] = dict) -> None:
        self.config = config          # the fleet config applied now
        self.retiring = retiring      # accounts only retires reach (owed.retire_account): key -> how
        self.clients: dict[str, Any] = {}
        self.bases: dict[str, tuple[dict[str, Any], str]] = {}   # what each client was opened with
        self.retired: set[Any] = set()   # clients out of use, not closed yet
        self.opening: dict[str, asyncio.Future] = {}   # one client per account, even when asked at once
        self.sweeps: set[asyncio.Task] = set()
        self.filters: dict[str, Any] = {}   # SymbolFilters by symbol, for a close cut to them
        self.notionals: dict[str, tuple[float, float]] = {}   # symbol -> (read at, gross notional listed)

    def _basis(self, account_name: str) -> tuple[dict[str, Any], str]:
        """How an account is reached now: its key sources and the exchange's REST URL (KeyError: unknown)."""
        doc = self.retiring().get(account_name) if "#" in account_name else None
        if doc is not None:
            return doc["account"], doc["rest_url"]
        cfg = self.config()
        if cfg is None:
            raise KeyError(account_name)
        return credentials_basis(cfg, account_name)

    async def client(self, account_name: str) -> Any:
        """The controller's own client for an account, keys read in this process (env or key file); opened
        again once an apply changed the account's key sources or the exchange's URL. An account the
        config no longer names keeps the client it had (a late sweep reaches it as it was)."""
        client = self.clients.get(account_name)
        if client is not None:
            try:
                basis = self._basis(account_name)
            except KeyError:
                return client
            if self.bases.get(account_name) == basis or not basis[1]:   # (no URL to reopen with)
                return client
            self._close_later(account_name)
        opening = self.opening.get(account_name)
        if opening is None:
            opening = self.opening[account_name] = asyncio.ensure_future(self._open(account_name))
        try:
            return await asyncio.shield(opening)
        finally:
            if opening.done():
                self.opening.pop(account_name, None)

    async def _open(self, account_name: str) -> Any:
        from agents.logging import redact_in_process_logs
        from fleet.binance.client import BinanceClient
        from fleet.binance.credentials import load_credentials

        basis = self._basis(account_name)
        creds = load_credentials(AccountConfig.model_validate(basis[0]))
        redact_in_process_logs(creds.api_key, creds.api_secret)
        if not basis[1]:
            endpoints_of(self.config())   # type: ignore[arg-type]  # raises, naming what is missing
        client = BinanceClient(basis[1], creds.api_key, creds.api_secret, budget=_emergency_budget(basis[1]))
        await client.open()
        self.clients[account_name], self.bases[account_name] = client, basis
        return client

    def held(self, account: str) -> str | None:
        """What holds the account's requests back now, in words, when it is at least ``HELD_SAID_S``: the
        exchange's 429 or ban on the IP, the client's own or one another process of the host was told of
        (read from the host's holds when the client is not open, or open on an address an apply changed).
        Read as a kill begins, so that its answer says why it waited; None when nothing holds them."""
        from fleet.binance import endpoints as ep
        from fleet.binance.host_holds import HostHolds

        try:
            url = self._basis(account)[1]
        except KeyError:
            url = None
        client = self.clients.get(account)
        if client is not None and (url is None or self.bases.get(account, (None, None))[1] == url):
            cost = ep.CANCEL_ALL.cost
            if client.budget.wait_time(cost, risk=True) < HELD_SAID_S:
                return None
            return f"the exchange held this host's IP as the kill began: {client.budget.why_wait(cost, risk=True)}"
        if not url:
            return None
        host = HostHolds(url)
        left = host.left()
        return (f"the exchange held this host's IP as the kill began: {host.what or 'a hold'} another process of "
                f"this host was told of (room in {left:.1f} s)") if left >= HELD_SAID_S else None

    def _close_later(self, account_name: str) -> None:
        """The account's client out of use, closed ``CLOSE_LATER_S`` on: a request on it may be under way."""
        client = self.clients.pop(account_name, None)
        self.bases.pop(account_name, None)
        if client is not None:
            self.retired.add(client)
            task = asyncio.ensure_future(_close_after(client, CLOSE_LATER_S, self.retired))
            self.sweeps.add(task)
            task.add_done_callback(self.sweeps.discard)

    async def drop(self, accounts: Iterable[str]) -> None:
        """Close the clients of ``accounts`` (no longer reached so, or not at all), once what runs on them ended."""
        for name in list(accounts):
            self._close_later(name)

    async def warm(self, accounts: set[str]) -> None:
        """Open the accounts' clients ahead of a route that will need them (failures: the route reports)."""
        await asyncio.gather(*(self.client(a) for a in accounts if a not in self.clients), return_exceptions=True)

    async def verify(self, account: str, symbols: list[str]) -> int:
        """The kill's own confirmation tried ahead of a kill: one signed look-up of each symbol's open
        orders, all at once (``GET /fapi/v1/openOrders``, weight 1 each, the risk lane). It proves what a
        ping cannot (the key, its permissions, the signature, the clock within ``recvWindow``, no ban)
        and holds open as many connections as a kill of these symbols sends at once (a kill on new
        connections paid both sides' handshakes: some 150 ms of a first kill at 50 symbols here).
        How many were answered; the first failure is raised."""
        client = await self.client(account)
        refuse_banned(client)
        answers = await asyncio.gather(*(client.open_orders(s) for s in symbols), return_exceptions=True)
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
        return len(answers)

    async def statuses(self, account: str) -> dict[str, str]:
        """Every symbol the exchange lists, with its status (exchangeInfo, weight 1)."""
        info = await (await self.client(account)).exchange_info()
        return {e["symbol"]: str(e.get("status", "")) for e in info.get("symbols", ())
                if isinstance(e, dict) and isinstance(e.get("symbol"), str)}

    async def cancel(self, symbol: str, account: str, mode: str) -> KillOutcome:
        """Cancel every order of the symbol (and close it for a flatten); confirm what the exchange lists."""
        try:
            client = await self.client(account)
            refuse_banned(client)
            await client.cancel_all(symbol)
            position = None
            if mode == "flatten":
                _, position = await self._close_position(client, symbol)
            left = len(await client.open_orders(symbol))
        except Exception as exc:  # noqa: BLE001 - reported to the operator, never swallowed
            log.error("%s: emergency cancel failed: %s", symbol, named_line(exc))
            return KillOutcome(Outcome.FAILED, "emergency", None, error=named_line(exc))
        return KillOutcome(Outcome.EMERGENCY_CANCELLED, "emergency", left, position)

    async def cancel_until_empty(self, symbol: str, account: str, *, within_s: float = 10.0,
                                 pause_s: float = 0.05) -> int:
        """Cancel every order of the symbol, repeated until the exchange lists none (or ``within_s``
        passed: what it lists then). Both requests are in the budget's risk lane. A failing attempt is
        retried (after the exchange's ``Retry-After`` when it gave one) and logged, the first and every
        20th; the last failure is raised at the deadline, and a ban at once (retrying lengthens it)."""
        from fleet.binance.errors import BannedError

        client = await self.client(account)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within_s
        failures = 0
        while True:
            try:
                refuse_banned(client)
                await client.cancel_all(symbol)
                left = len(await client.open_orders(symbol))
            except BannedError:
                raise
            except Exception as exc:  # noqa: BLE001 - retried until the deadline, logged, then raised
                failures += 1
                if failures == 1 or failures % 20 == 0:
                    log.warning("%s: cancelling every order failed (%d in a row; retried for up to %g s): %s",
                                symbol, failures, within_s, named_line(exc))
                await _cancel_listed(client, symbol, exc)
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(min(max(pause_s, float(getattr(exc, "retry_after", 0.0))),
                                        max(pause_s, deadline - loop.time())))
                continue
            if failures:
                log.warning("%s: cancelling every order went through after %d failures", symbol, failures)
                failures = 0
            if left == 0 or loop.time() > deadline:
                return left
            await asyncio.sleep(pause_s)

    async def sweep(self, symbol: str, account: str) -> None:
        """One cancel of every order of the symbol (risk lane), unchecked: see ``sweep_until_halted``."""
        client = await self.client(account)
        refuse_banned(client)
        await client.cancel_all(symbol)

    async def cancel_epoch(self, symbol: str, account: str, epoch: int, *, within_s: float = 5.0,
                           pause_s: float = 0.1) -> int:
        """Cancel the symbol's orders of ``epoch`` and older (by client order id; never a successor's),
        repeated until the exchange lists none of them; how many it still lists then."""
        from agents.orders import parse_client_order_id

        def fenced(order: Any) -> bool:
            parsed = parse_client_order_id(order.client_order_id)
            return parsed is not None and parsed[0] <= epoch

        client = await self.client(account)
        deadline = asyncio.get_running_loop().time() + within_s
        while True:
            try:
                refuse_banned(client)
                ids = [o.client_order_id for o in await client.open_orders(symbol) if fenced(o)]
                if ids:
                    await client.batch_cancel(symbol, client_order_ids=ids)
                    ids = [o.client_order_id for o in await client.open_orders(symbol) if fenced(o)]
            except Exception:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                ids = ["?"]
            if not ids or asyncio.get_running_loop().time() > deadline:
                return len(ids)
            await asyncio.sleep(pause_s)

    async def _close_position(self, client: Any, symbol: str, attempts: int = 3) -> tuple[float, float]:
        """Close the symbol's position with reduce-only orders cut to its filters (``closing_orders``,
        read only for a position to close); the position before and what the exchange lists after.
        Refused -2022 (the position closed or turned meanwhile: the agent's own flatten may race this
        one), the position is read again and closed again if still open; refused for a filter (the
        exchange lowered its largest MARKET order since they were read: -4005), the filters are read again."""
        from decimal import Decimal

        from fleet.binance.errors import FilterRejectedError, ReduceOnlyRejectedError

        refuse_banned(client)
        position = await client.position(symbol)
        before = float(position.amount)
        if not before:
            return 0.0, 0.0
        filters = await self._filters(client, symbol)
        refused, reread = 0, False
        for _ in range(attempts):
            if Decimal(position.amount) == 0:
                break
            try:
                for order in closing_orders(symbol, filters, Decimal(position.amount), Decimal(position.mark_price)):
                    await client.place_order(order)
            except ReduceOnlyRejectedError:
                refused += 1
                log.info("%s: the closing order was refused (-2022): the position changed meanwhile; read again",
                         symbol)
                await asyncio.sleep(REFUSED_CLOSE_PAUSE_S)   # the other close's fill settling
            except FilterRejectedError as exc:
                if reread or self.filters.pop(symbol, None) is None:
                    raise   # read for this close: the filters are not what the exchange refused
                reread = True
                log.warning("%s: a closing order was refused (%s): the filters are read again", symbol,
                            named_line(exc))
                filters = await self._filters(client, symbol)
            position = await client.position(symbol)
        amount = Decimal(position.amount)
        if amount != 0 and refused:
            log.warning("%s: the position is still %s after %d closing orders refused -2022", symbol, amount, refused)
        return before, float(amount)

    async def _filters(self, client: Any, symbol: str) -> Any:
        """The symbol's filters, read once (exchangeInfo is the heaviest answer a kill would read per
        symbol); None if they cannot be read now: the close then goes as one MARKET order, as before."""
        if symbol not in self.filters:
            try:
                self.filters[symbol] = await client.symbol_filters(symbol)
            except Exception as exc:  # noqa: BLE001 - the close goes on without them
                log.warning("%s: filters not read (%s): the close goes as one order", symbol, named_line(exc))
                return None
        return self.filters[symbol]

    async def notional(self, symbol: str, account: str, max_age_s: float = NOTIONAL_READ_S) -> float:
        """The symbol's gross notional as the exchange lists it (positionRisk, weight 5), read again at
        most every ``max_age_s``: the fleet's cap for an agent that gives no figure of its own."""
        now = asyncio.get_running_loop().time()
        seen = self.notionals.get(symbol)
        if seen is None or now - seen[0] >= max_age_s:
            pos = await (await self.client(account)).position(symbol)
            seen = self.notionals[symbol] = (now, abs(float(pos.amount) * float(pos.mark_price)))
        return seen[1]

    async def close_position(self, symbol: str, account: str) -> tuple[float, float]:
        """A flatten's last resort: the symbol's position read, and closed with reduce-only orders unless
        flat; the position before and what the exchange lists after."""
        return await self._close_position(await self.client(account), symbol)

    async def trades_since(self, symbol: str, account: str, start_ms: int, after_id: int | None = None) -> list[dict[str, Any]]:
        """The account's fills of the symbol after trade ``after_id``, else since ``start_ms`` (userTrades,
        weight 5 a page of 1,000)."""
        client = await self.client(account)
        out: list[dict[str, Any]] = []
        while True:
            page = await (client.user_trades(symbol, start_time=start_ms, limit=1000) if after_id is None else
                          client.user_trades(symbol, from_id=after_id + 1, limit=1000))
            out += page
            if len(page) < 1000:
                return out
            after_id = max(int(t["id"]) for t in page)

    def sweep_later(self, symbol: str, account: str, delay: float, still_stopped: Callable[[], Awaitable[bool]]) -> None:
        """Cancel the symbol's orders again after ``delay`` s, if it is still halted or flattening then."""
        task = asyncio.get_running_loop().create_task(self._sweep(symbol, account, delay, still_stopped))
        self.sweeps.add(task)
        task.add_done_callback(self.sweeps.discard)

    async def _sweep(self, symbol: str, account: str, delay: float, still_stopped: Callable[[], Awaitable[bool]]) -> None:
        await asyncio.sleep(delay)
        try:
            client = await self.client(account)
            if await still_stopped():
                await client.cancel_all(symbol)
        except Exception as exc:  # noqa: BLE001
            log.error("%s: emergency sweep failed: %s", symbol, named_line(exc))

    async def confirm_empty(self, symbol: str, account: str, *, cancel_first: bool) -> int:
        """Open orders of the symbol left at the exchange, after cancelling them (twice if need be); 0 for
        a symbol the exchange does not know (-1121: nothing can rest there, an agent made by hand for it)."""
        from fleet.binance.enums import ErrorCode
        from fleet.binance.errors import BinanceError

        try:
            return await self._confirm_empty(symbol, account, cancel_first=cancel_first)
        except BinanceError as exc:
            if exc.code != ErrorCode.BAD_SYMBOL:
                raise
            log.warning("%s: not a symbol the exchange knows (%s): no order of it can rest", symbol, named_line(exc))
            return 0

    async def _confirm_empty(self, symbol: str, account: str, *, cancel_first: bool) -> int:
        client = await self.client(account)
        if cancel_first:
            await _cancel_every(client, symbol)
        open_orders = len(await client.open_orders(symbol))
        if open_orders:
            await _cancel_every(client, symbol)
            open_orders = len(await client.open_orders(symbol))
        return open_orders

    async def close(self) -> None:
        """Cancel pending sweeps and close every client (the fleet is going down)."""
        tasks = list(self.sweeps)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)   # (a client out of use is closed as its wait ends)
        for client in [*self.clients.values(), *self.retired]:
            await client.close()
        self.clients.clear()
        self.bases.clear()
        self.retired.clear()


def closing_orders(symbol: str, filters: Any, amount: Any, mark: Any) -> list[Any]:
    """Reduce-only orders that close ``amount`` (signed, long > 0) within the symbol's filters: MARKET
    orders on MARKET_LOT_SIZE's step, split evenly below its maxQty; what is left under one market
    step or its minQty as an IOC LIMIT (LOT_SIZE's grid) halfway from the mark to PERCENT_PRICE's
    edge, so it crosses the book and stays inside the band. Nothing for a remainder under LOT_SIZE's
    minQty, or without a mark. Without filters (not read), one MARKET order of the whole position."""
    from decimal import Decimal

    from fleet.binance.models import OrderRequest

    side = "SELL" if amount > 0 else "BUY"
    if filters is None:   # not read: the whole position in one order
        return [OrderRequest(symbol=symbol, side=side, order_type="MARKET", quantity=format(abs(amount), "f"),
                             reduce_only=True)]
    steps = filters.qty_steps_floor(abs(amount))
    pieces = filters.market_split(steps)
    orders = [OrderRequest(symbol=symbol, side=side, order_type="MARKET", quantity=filters.qty_str(q),
                           reduce_only=True) for q in pieces]
    rest = steps - sum(pieces)
    if rest > 0 and rest >= filters.min_qty_steps() and mark > 0:
        half = Decimal(2)
        if side == "SELL":
            down = filters.multiplier_down
            ticks = filters.price_ticks_floor(mark * (1 - ((1 - down) / half if 0 < down < 1 else Decimal("0.01"))))
        else:
            up = filters.multiplier_up
            ticks = filters.price_ticks_ceil(mark * (1 + ((up - 1) / half if up > 1 else Decimal("0.01"))))
        if ticks > 0:
            orders.append(OrderRequest(symbol=symbol, side=side, order_type="LIMIT", time_in_force="IOC",
                                       price=filters.price_str(ticks), quantity=filters.qty_str(rest),
                                       reduce_only=True))
    return orders


async def _cancel_every(client: Any, symbol: str) -> None:
    """Cancel-all; one the exchange refuses (a 5xx, an answer of unknown outcome) is followed by the
    listed orders cancelled by the batch route, and what is left is the caller's listing to say."""
    try:
        await client.cancel_all(symbol)
    except Exception as exc:  # noqa: BLE001 - only the refusals _cancel_listed takes are swallowed
        if not await _cancel_listed(client, symbol, exc):
            raise


async def _cancel_listed(client: Any, symbol: str, refused: BaseException) -> bool:
    """After a cancel-all the exchange refused (a 5xx or an unknown outcome; not a ban, a rate limit or a
    key): the listed orders cancelled by the batch route, another door of the exchange. True if tried."""
    from fleet.binance.errors import OutcomeUnknownError, ServerError

    if not isinstance(refused, (ServerError, OutcomeUnknownError)):
        return False
    try:
        await client.cancel_listed(symbol)
    except Exception as exc:  # noqa: BLE001 - the caller's listing says what is left
        log.warning("%s: cancelling the listed orders after a refused cancel-all failed too: %s", symbol,
                    named_line(exc))
    return True
