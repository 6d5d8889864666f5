"""The REST client: signed requests on one keep-alive aiohttp session, typed results and errors.

Two rooms: :class:`RestCore` carries one request (charged to the rate budget, signed, sent, its answer
decoded or raised as a typed error) and keeps the session and the exchange clock's offset;
:class:`BinanceClient` builds on it one method per endpoint, with typed arguments and results.

Every request is charged to a :class:`~fleet.binance.ratelimit.RateBudget` before it is sent, with
the endpoint's documented weight (the table in :mod:`~fleet.binance.endpoints`), and the budget is
corrected from the response headers. Order requests that may have executed without an answer raise
:class:`OutcomeUnknownError`; :meth:`BinanceClient.place_order_idempotent` resolves that by
querying the client order id.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
import time
from typing import Any, Callable, Iterable, Mapping, Self, Sequence, TypeVar

import aiohttp
import orjson
from yarl import URL

from . import endpoints as ep
from .endpoints import Endpoint
from .enums import ErrorCode, PositionSide
from .errors import (
    BannedError,
    BinanceError,
    DuplicateClientOrderIdError,
    NotSentError,
    OutcomeUnknownError,
    RateLimitedError,
    ServerError,
    TimestampError,
    UnknownOrderError,
    error_from_payload,
    for_write,
)
from .filters import SymbolFilters
from .models import (
    AlgoOrderInfo,
    BookTop,
    CommissionRate,
    DepthSnapshot,
    FundingTerms,
    ModifyRequest,
    OrderInfo,
    OrderRequest,
    PositionInfo,
    PremiumIndex,
    SymbolConfig,
    exchange_decimal,
)
from .ratelimit import BOUNDARY_MARGIN_S, Cost, RateBudget, listed_limits
from .signing import AHEAD_AT_MOST_MS, AHEAD_REFUSED_MS, encode_params, sign

T = TypeVar("T")
log = logging.getLogger("fleet.binance.client")

# Asked, in the caller's context, with the endpoint, the parameters and the timestamp (ms, the exchange's
# clock as this host reckons it) a write refused -1021 is about to be signed again with: the caller's count
# of when it may still execute moves to the new signature's recvWindow before the resend can land, or it
# names why the write must not go again (NotSentError): say the caller closed its orders meanwhile, on its
# own inference, and placed others. (A write may be held on its way, not signed too early: the clock can be
# right and the resend seconds late.)
Resigning = Callable[[Endpoint, Mapping[str, Any], int], str | None]
RESIGNING: contextvars.ContextVar[Resigning | None] = contextvars.ContextVar("resigning", default=None)


class _Signing:
    """One request's signatures: the second (the resend's) is asked of ``resigned`` as it is signed."""

    __slots__ = ("first", "resigned")

    def __init__(self) -> None:
        self.first: int | None = None
        self.resigned: Resigning | None = None

    def signed(self, endpoint: Endpoint, params: Mapping[str, Any], timestamp: int) -> str | None:
        if self.first is None:
            self.first = timestamp
            return None
        return self.resigned(endpoint, params, timestamp) if self.resigned is not None else None


_SIGNING: contextvars.ContextVar[_Signing | None] = contextvars.ContextVar("signing", default=None)

BATCH_PLACE_MAX = 5
BATCH_CANCEL_MAX = 10
PAID = Cost()  # a call whose cost was taken from the budget beforehand, with others: not charged again
WEIGHT_SCARCE = 0.5  # orders go one call each once less than this share of the IP's weight is left


def _wall_ms() -> int:
    return int(time.time() * 1000)


def lost_answer(method: str, path: str, why: str, mutating: bool) -> ServerError:
    """The request was sent and its answer never came: a write's outcome is unknown."""
    what = f"{method} {path}: {why} after the request was sent"
    return OutcomeUnknownError(0, what, None) if mutating else ServerError(0, what, None)


class RestCore:
    """One request to Binance's REST API and its answer: the rate budget, the signature, the session,
    the exchange clock's offset, the typed errors. The endpoints are :class:`BinanceClient`'s."""

    def __init__(
        self,
        rest_url: str,
        api_key: str | None = None,
        api_secret: str | None = None,
        *,
        budget: RateBudget | None = None,
        recv_window: int = 5000,
        timeout: float = 10,
        params_in_body: bool = True,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        self.rest_url = rest_url.rstrip("/")
        self._api_key = api_key
        self._api_secret = api_secret
        self.budget = budget if budget is not None else RateBudget()
        self.recv_window = int(recv_window)
        self.timeout = float(timeout)
        self.params_in_body = params_in_body
        self.clock_ms = clock_ms or _wall_ms  # local time in ms (a simulated run injects its clock)
        self.time_offset_ms = 0  # exchange time - local time
        self.time_synced = False  # the offset learned (sync_time): the rate budget may use the exchange's clock
        self._session: aiohttp.ClientSession | None = None
        self.requests_sent = 0
        self.resync_on_skew = True  # on -1021: re-learn the clock offset and send once more
        self.clock_resyncs = 0      # -1021 answers: requests signed outside the recvWindow, then re-synced
        # Asked with the endpoint and its parameters just before an order placed or amended is
        # signed, resends included: None lets it go, a reason keeps it here (NotSentError naming the
        # reason). An agent's is its lease and its kill state (SymbolAgent.order_gate).
        self.order_gate: Callable[[Endpoint, Mapping[str, Any]], str | None] | None = None
        # The exchange's service failing: its last answer a 5xx, a 418 or 429, or none at all. An
        # outage's event, set at the first answer after it (a waiter's retry need not wait out its back-off);
        # and each route's own, set at that route's first answer after it failed so.
        self.rest_failing = False
        self.rest_back = asyncio.Event()
        self._routes_failing: dict[str, asyncio.Event] = {}
        self._own_order_limits = False   # the account's order limits read (rateLimit/order): exchangeInfo's not taken

    # -- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=64, keepalive_timeout=60, enable_cleanup_closed=True)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                json_serialize=lambda o: orjson.dumps(o).decode(),
            )
            # aiohttp resends a PUT or DELETE, unasked, when a kept-alive connection drops before the
            # answer (HTTP calls them idempotent). To Binance a modify or cancel sent twice is two
            # requests, and the first may have executed: the caller must learn that the outcome is
            # unknown, never get the second one's answer. aiohttp has no public switch for this.
            if not hasattr(self._session, "_retry_connection"):
                raise RuntimeError("aiohttp changed: cannot turn off its silent resend of PUT/DELETE")
            self._session._retry_connection = False

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            raise RuntimeError("BinanceClient is not open: use `async with BinanceClient(...)` or await open()")
        return self._session

    def follow_limits(self, rows: Any, source: str, *, account: bool = False) -> dict[str, int]:
        """The limits ``rows`` lists (Binance's ``rateLimits`` layout) given to the rate budget, which takes
        a lower one; a change is said. ``account``: the account's own order limits (rateLimit/order), after
        which the order limits exchangeInfo lists for every account are not taken. Returns them by window."""
        found = listed_limits(rows, weight=not account, orders=account or not self._own_order_limits)
        if account and found and not self._own_order_limits:
            self._own_order_limits = True
            self.budget.relisted_orders()
        self._take_limits(found, source)
        return found

    def _take_limits(self, found: dict[str, int], source: str, named: bool = False) -> None:
        changed = self.budget.set_limits(found.get("weight_1m"), found.get("orders_10s"), found.get("orders_1m"),
                                         named=named)
        if changed:
            log.warning("the exchange names other limits (%s): the rate budget follows them (%s)", source,
                        ", ".join(changed))

    # -- the request core ----------------------------------------------------------------------

    def _timestamp(self) -> int:
        return self.clock_ms() + self.time_offset_ms

    async def _request(
        self,
        endpoint: Endpoint,
        params: Mapping[str, Any] | None = None,
        *,
        cost: Cost | None = None,
        wait: bool = True,
        risk: bool = False,
    ) -> Any:
        """Send one request to ``endpoint`` (charged its table cost, or ``cost``); returns the
        decoded JSON, or raises a :class:`BinanceError` subclass.

        ``risk``: the request takes risk off (cancel, shrinking amend, reduce-only order, dead-man
        heartbeat, a look-up): it may use the rate budget's reserve, which quoting never touches.
        An endpoint that only ever takes risk off is in that lane whatever the caller says.
        """
        cost = endpoint.cost if cost is None else cost
        risk = risk or endpoint.risk or (endpoint in ep.ORDER_OPENERS and ep.places_reduce_only(endpoint, params or {}))
        if cost is not PAID:
            await self.budget.acquire(cost, wait=wait, risk=risk)
        if not endpoint.signed:
            return await self._send(endpoint, params, risk)
        signing = _Signing()
        token = _SIGNING.set(signing)
        try:
            return await self._resigning(endpoint, params, cost, wait, risk, signing)
        finally:
            _SIGNING.reset(token)

    async def _resigning(self, endpoint: Endpoint, params: Mapping[str, Any] | None, cost: Cost, wait: bool,
                         risk: bool, signing: _Signing) -> Any:
        """The request sent; refused -1021 (a signed one, unexecuted), the clock learned again and the
        request signed and sent once more, its new timestamp told to :data:`RESIGNING` as it is signed."""
        try:
            return await self._send(endpoint, params, risk)
        except TimestampError:
            if not (endpoint.signed and self.resync_on_skew):
                raise
            # -1021 means the request was refused unexecuted: re-learn the clock and send once more
            self.clock_resyncs += 1
            before = self.time_offset_ms
            await self.sync_time()
            log.warning("timestamp outside recvWindow on %s: the exchange's clock is %+d ms from ours (was %+d); "
                        "re-synced (%d so far)", endpoint, self.time_offset_ms, before, self.clock_resyncs)
            await self.budget.acquire(endpoint.cost if cost is PAID else cost, wait=wait, risk=risk)
            signing.resigned = RESIGNING.get()
            try:
                return await self._send(endpoint, params, risk)
            except TimestampError as again:
                if again.code == ErrorCode.INVALID_TIMESTAMP:   # (a -5028 is the engine's queue, not the clock)
                    log.error("timestamp refused again after re-learning the exchange's clock on %s (offset %+d "
                              "ms): %s", endpoint, self.time_offset_ms, again.msg)
                raise

    async def _send(self, endpoint: Endpoint, params: Mapping[str, Any] | None, risk: bool = False) -> Any:
        """One HTTP exchange for ``endpoint``: the request built (and signed), sent, its answer read.
        ``risk``: the request's lane (a quoting one whose order route fails holds the quoting lane)."""
        if self.order_gate is not None and endpoint in ep.ORDER_OPENERS:
            closed = self.order_gate(endpoint, params or {})
            if closed is not None:
                raise NotSentError(f"{endpoint} not sent: the order gate is closed ({closed})")
        url, body, headers = self._build(endpoint, params)
        self.requests_sent += 1
        route = f"{endpoint.method} {endpoint.path}"
        try:
            status, raw, resp_headers = await self._http(endpoint.method, endpoint.path, url, body, headers,
                                                         endpoint.mutating)
            self._serving(route, status < 500 and status not in (418, 429))
            if status < 400 and endpoint in ep.ORDER_OPENERS and endpoint not in ep.BATCH_OPENERS:
                self.budget.note_orders_answered()   # a batch's entries say it (_batch_entries)
            return self._answer(endpoint, status, raw, resp_headers)
        except BinanceError as exc:
            if exc.route is None:
                exc.route = route
                answered = exc.http_status is not None and exc.http_status != 0
                if not answered:   # no answer at all (``_http``)
                    self._serving(route, False)
                failed = not answered or exc.http_status >= 500 or exc.code == ErrorCode.DISCONNECTED
                if failed and endpoint in ep.ORDER_OPENERS and not risk and exc.code != ErrorCode.REQUEST_THROTTLED:
                    self._order_route_failing(endpoint, f"{int(exc.code)} (HTTP {exc.http_status})"
                                              if answered else "no answer")
            raise

    def _alone_is_cheaper(self, n: int, risk: bool) -> bool:
        """Whether ``n`` orders go as ``n`` single calls rather than one batch call. A batch call spends
        5 IP weight, 5 of the account's 10-second order count and 1 of its minute's; a single call no
        IP weight and 1 of each count. One order always goes alone (never dearer). Several go alone
        when the IP's weight is the budget's scarcest window and less than half of it is left, as for
        many agents behind one address: spending the account's counts instead leaves the weight to
        the agents' starts and upkeep; and when a batch's 5 of the 10-second count must wait while ``n``
        singles fit now (an account held to few orders, shared by several agents: their ladders were never
        sent, a batch never fitting their lane). Otherwise one request beats several (singles, 1 of the
        minute's count each, would bring the minute's limit near: a run that sent them whenever the
        10-second count was scarce reached 855 of 1,200)."""
        if n == 1:
            return True
        budget = self.budget
        if budget.wait_time(ep.BATCH_ORDERS, risk=risk) > 0 and budget.wait_time(ep.ORDER.times(n), risk=risk) == 0:
            return True
        room = budget.room(risk=risk)
        return min(room, key=room.__getitem__) == "weight_1m" and room["weight_1m"] < WEIGHT_SCARCE

    def _batch_entries(self, endpoint: Endpoint, data: Any, n: int, risk: bool,
                       params: Mapping[str, Any]) -> list[OrderInfo | BinanceError]:
        """A batch's answer (200), one result per order (``_batch_results``). A quoting batch of orders
        whose every entry failed on the exchange's side (-1001, or an outcome unknown: what a 5xx says of
        a whole call) holds the quoting lane as a failing route's answer does, a -1008 among them as a
        whole call's -1008 does (each quote cycle sent them again); any other entry is the route's answer."""
        entries = _batch_results(data, n)
        if endpoint not in ep.BATCH_OPENERS:
            return entries
        risk = risk or ep.places_reduce_only(endpoint, params)   # its lane, as _request chose it
        codes = [e.code for e in entries if isinstance(e, OutcomeUnknownError)
                 or isinstance(e, BinanceError) and e.code in (ErrorCode.DISCONNECTED, ErrorCode.REQUEST_THROTTLED)]
        if ErrorCode.REQUEST_THROTTLED in codes:
            log.warning("system-level protection (-1008) in a %s entry: quoting orders held %.1fs", endpoint,
                        self.budget.note_throttled())
        elif len(codes) == n and not risk:
            self._order_route_failing(endpoint, f"every entry failed, {int(codes[0])} first")
        elif len(codes) < n:
            self.budget.note_orders_answered()
        return entries

    def _order_route_failing(self, endpoint: Endpoint, what: str) -> None:
        """A quoting order's route failed (a 5xx, -1001, no answer): the quoting lane held, 1 s and doubling up
        to 8 s while the failures follow one another (``RateBudget.note_throttled``; Binance: "try again", with
        back-off); cancels and reduce-only orders go on, and their failures hold nothing."""
        hold = self.budget.note_throttled(failing=True)
        log.warning("%s failed (%s): quoting orders held %.1fs", endpoint, what, hold)

    def _serving(self, route: str, answered: bool) -> None:
        """The service's state after an exchange on ``route``: ``answered``, an answer of the API's own (a
        success, or a refusal of the request itself); otherwise a failure of the service, a new outage's
        event (the whole service's and the route's)."""
        if answered:
            if self.rest_failing:
                self.rest_failing = False
                self.rest_back.set()
            back = self._routes_failing.pop(route, None)
            if back is not None:
                back.set()
            return
        if not self.rest_failing:
            self.rest_failing = True
            self.rest_back = asyncio.Event()
        self._routes_failing.setdefault(route, asyncio.Event())

    def route_back(self, route: str | None) -> asyncio.Event | None:
        """The event set at ``route``'s first answer after its failure; None if it is not failing."""
        return self._routes_failing.get(route) if route is not None else None

    def _build(self, endpoint: Endpoint, params: Mapping[str, Any] | None) -> tuple[str, bytes | None, dict[str, str]]:
        """The URL, the body and the headers: the API key for a keyed or signed endpoint, and for a
        signed one the recvWindow, the timestamp and the signature over the encoded parameters."""
        method, path, signed, keyed = endpoint.method, endpoint.path, endpoint.signed, endpoint.keyed
        headers: dict[str, str] = {}
        fields = dict(params or {})
        if signed or keyed:
            if not self._api_key:
                raise BinanceError(ErrorCode.BAD_API_KEY_FMT, f"{method} {path} needs an API key; none configured", None)
            headers["X-MBX-APIKEY"] = self._api_key
        if signed:
            if not self._api_secret:
                raise BinanceError(ErrorCode.INVALID_SIGNATURE, f"{method} {path} needs an API secret; none configured", None)
            fields["recvWindow"] = self.recv_window
            fields["timestamp"] = stamp = self._timestamp()
            if (signing := _SIGNING.get()) is not None and (
                    why := signing.signed(endpoint, params or {}, stamp)) is not None:
                raise NotSentError(f"{endpoint} not sent again after -1021: {why}")
        encoded = encode_params(fields)
        in_body = self.params_in_body and method in ("POST", "PUT") and bool(encoded)
        if signed:
            encoded = f"{encoded}&signature={sign(self._api_secret, encoded)}"  # type: ignore[arg-type]
        url = self.rest_url + path
        body: bytes | None = None
        if in_body:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
            body = encoded.encode()
        elif encoded:
            url = f"{url}?{encoded}"
        return url, body, headers

    def _answer(self, endpoint: Endpoint, status: int, raw: bytes, resp_headers: Mapping[str, str]) -> Any:
        """The decoded answer of a success; otherwise its typed error, raised (after telling the budget
        of a 429 or a ban); a write's error that may have executed becomes an unknown outcome."""
        method, path, mutating = endpoint.method, endpoint.path, endpoint.mutating
        self.budget.observe_headers(resp_headers, server_ms=self._timestamp() if self.time_synced else None)
        payload = _decode(raw, status, method, path, mutating)
        if 200 <= status < 300 and not (isinstance(payload, dict) and _is_error_payload(payload)):
            return payload
        err = error_from_payload(payload, status, resp_headers)
        if isinstance(err, RateLimitedError):
            if not err.said_when and getattr(err, "json_answer", False) and err.code in (
                    ErrorCode.TOO_MANY_REQUESTS, ErrorCode.TOO_MANY_ORDERS):   # (a proxy's page: a short pause)
                # to the end of the window it names, on the exchange's clock (not 1 s: a
                # refused order's 429 came again at every quote until the minute ended, ten of them a ban)
                window_ms = int(err.window_s() * 1000)
                err.retry_after = (window_ms - self._timestamp() % window_ms) / 1000 + BOUNDARY_MARGIN_S
            # fundingRate and fundingInfo's own limit: the message names its 5 minutes, or the IP's weight is not spent
            own_limit = endpoint.cost.funding_reads > 0 and (err.window_s() == 300.0
                                                             or not self.budget.ip_weight_spent())
            named = err.named_limit()   # a limit lower than the budget's: the exchange changed it, unlisted yet
            self.budget.note_retry_after(err.retry_after, orders_only=err.code == ErrorCode.TOO_MANY_ORDERS,
                                         funding_only=own_limit,
                                         weight_limit=named[1] if named and named[0] == "weight_1m" else None)
            log.warning("rate limited on %s %s: backing off %.1fs", method, path, err.retry_after)
            if named is not None:   # (a ceiling over listings that do not move: RateBudget.set_limits)
                self._take_limits(dict([named]), f"a 429 on {method} {path}", named=True)
        elif err.code == ErrorCode.REQUEST_THROTTLED:
            self.budget.note_throttled()
            log.warning("system-level protection (-1008) on %s %s: quoting orders held %.1fs", method, path,
                        self.budget.throttle_pause)
        elif isinstance(err, BannedError):
            until = err.until_ms
            seconds = (until - self._timestamp()) / 1000 if until else 120.0
            self.budget.note_banned(max(seconds, 1.0))
            log.error("IP banned (418) on %s %s until %s", method, path, until)
        if not mutating and isinstance(err, OutcomeUnknownError):
            err = ServerError(err.code, err.msg, err.http_status)  # a read changes nothing: retryable
        elif mutating:
            err = for_write(err)  # a 5xx that is not a documented definite failure may have executed
        raise err

    async def _http(self, method: str, path: str, url: str, body: bytes | None, headers: dict[str, str],
                    mutating: bool) -> tuple[int, bytes, Mapping[str, str]]:
        """One HTTP exchange on the session: (status, raw body, headers). A connection that never opened
        is a :class:`ServerError` (nothing was sent); one lost after sending is an
        :class:`OutcomeUnknownError` for a write. The in-process transport replaces only this method."""
        try:
            # encoded=True: send the query exactly as signed (yarl would otherwise re-quote it)
            async with self.session.request(method, URL(url, encoded=True), data=body, headers=headers) as resp:
                return resp.status, await resp.read(), resp.headers
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            # the connection never opened: nothing reached the exchange
            raise ServerError(0, f"cannot connect for {method} {path}: {type(exc).__name__}", None) from exc
        except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
            raise lost_answer(method, path, type(exc).__name__, mutating) from exc

    # -- the exchange clock --------------------------------------------------------------------

    async def server_time(self) -> int:
        data = await self._request(ep.TIME)
        return int(data["serverTime"])

    async def sync_time(self) -> int:
        """Learn the exchange clock's offset from ours (ms) from ``/fapi/v1/time``; returns it.

        The server read its clock somewhere in the round trip, so the offset lies between ``server -
        after`` and ``server - before``. Binance refuses a timestamp more than 1000 ms ahead of its
        clock but takes one up to recvWindow behind: the offset is the lower end plus half the round
        trip, at most ``AHEAD_AT_MOST_MS``. The middle (the lower end plus half the trip, unbounded) put
        every timestamp 1,200 ms ahead when the request sat 2.4 s on its way in (a congested link):
        each refused -1021, and each re-sync learned the same (an audit)."""
        before = self.clock_ms()
        server = await self.server_time()
        after = self.clock_ms()
        self.time_offset_ms = int(round(server - after + min((after - before) / 2, AHEAD_AT_MOST_MS)))
        self.time_synced = True
        self.budget.note_server_time(self._timestamp())  # the counts just seen end with their windows
        return self.time_offset_ms


class BinanceClient(RestCore):
    """Binance USD-M futures REST (``/fapi``), the same against production, testnet and ``fleet.sim``.

    Use as ``async with BinanceClient(url, key, secret) as client:``; one aiohttp session is kept for the
    client's life. ``wait=True`` on order calls waits for rate budget; ``wait=False`` raises
    :class:`BudgetExhaustedError` instead (nothing sent)."""

    # The v2 paths, set on the client once the exchange answers 404 on the v3 ones.
    _position_v2 = False
    _account_v2 = False
    _no_algo_service = False   # set once GET openAlgoOrders answers 404

    def __repr__(self) -> str:  # never shows the key or the secret
        return f"BinanceClient({self.rest_url!r}, signed={self._api_secret is not None})"

    @property
    def position_api(self) -> str:
        """``"v3"`` until the exchange answers 404 on /fapi/v3/positionRisk, then ``"v2"``."""
        return "v2" if self._position_v2 else "v3"

    # -- market data ---------------------------------------------------------------------------

    async def ping(self) -> None:
        await self._request(ep.PING)

    async def exchange_info(self) -> dict[str, Any]:
        """exchangeInfo; the rate budget follows its ``rateLimits`` (:meth:`follow_limits`)."""
        info = await self._request(ep.EXCHANGE_INFO)
        self.follow_limits(info.get("rateLimits") if isinstance(info, dict) else None, "exchangeInfo")
        return info

    async def order_rate_limits(self) -> dict[str, int]:
        """GET /fapi/v1/rateLimit/order: the account's own order limits, which the rate budget follows."""
        return self.follow_limits(await self._request(ep.ORDER_RATE_LIMIT), "rateLimit/order", account=True)

    async def symbol_filters(self, symbol: str) -> SymbolFilters:
        info = await self.exchange_info()
        for entry in info.get("symbols", ()):
            if entry.get("symbol") == symbol:
                return SymbolFilters.from_exchange_info(entry)
        raise BinanceError(ErrorCode.BAD_SYMBOL, f"Invalid symbol: {symbol!r} is not in exchangeInfo", None)

    async def depth(self, symbol: str, limit: int = 100) -> DepthSnapshot:
        data = await self._request(ep.DEPTH, {"symbol": symbol, "limit": limit}, cost=ep.depth_cost(limit))
        return DepthSnapshot(
            last_update_id=int(data["lastUpdateId"]),
            event_time=int(data.get("E", 0)),
            transaction_time=int(data.get("T", 0)),
            bids=tuple((exchange_decimal(p), exchange_decimal(q)) for p, q in data["bids"]),
            asks=tuple((exchange_decimal(p), exchange_decimal(q)) for p, q in data["asks"]),
        )

    async def book_ticker(self, symbol: str) -> BookTop:
        data = await self._request(ep.BOOK_TICKER, {"symbol": symbol})
        return BookTop(
            symbol=data["symbol"],
            bid=exchange_decimal(data["bidPrice"]),
            bid_qty=exchange_decimal(data["bidQty"]),
            ask=exchange_decimal(data["askPrice"]),
            ask_qty=exchange_decimal(data["askQty"]),
            time=int(data.get("time", 0)),
        )

    async def premium_index(self, symbol: str) -> PremiumIndex:
        data = await self._request(ep.PREMIUM_INDEX, {"symbol": symbol})
        return PremiumIndex(
            symbol=data["symbol"],
            mark_price=exchange_decimal(data["markPrice"]),
            index_price=exchange_decimal(data.get("indexPrice")),
            estimated_settle_price=exchange_decimal(data.get("estimatedSettlePrice")),
            last_funding_rate=exchange_decimal(data.get("lastFundingRate")),
            interest_rate=exchange_decimal(data.get("interestRate")),
            next_funding_time=int(data.get("nextFundingTime", 0)),
            time=int(data.get("time", 0)),
        )

    # -- orders --------------------------------------------------------------------------------

    async def place_order(self, order: OrderRequest, *, wait: bool = True, risk: bool = False) -> OrderInfo:
        data = await self._request(ep.NEW_ORDER, order.to_params(), wait=wait, risk=risk)
        return _write_answer(data)

    async def place_order_idempotent(
        self, order: OrderRequest, *, wait: bool = True, attempts: int = 3, backoff_s: float = 0.2
    ) -> OrderInfo:
        """Place ``order``; if the outcome is unknown, find it by client order id before any resend.

        The order is sent again (same client order id) only when the exchange says that id does
        not exist; a duplicate-id answer means an earlier send landed, and that order is returned.
        """
        if not order.client_order_id:
            raise ValueError("place_order_idempotent needs an OrderRequest with client_order_id")
        last: BinanceError | None = None
        for attempt in range(attempts):
            try:
                return await self.place_order(order, wait=wait)
            except OutcomeUnknownError as exc:
                last = exc
                log.warning("order %s outcome unknown (%s); querying by client id", order.client_order_id, exc.msg)
            except DuplicateClientOrderIdError as exc:
                last = exc  # an earlier send landed: look it up
            # give a request still in flight time to land before asking whether it did
            await asyncio.sleep(backoff_s * (2**attempt))
            found = await self._find_by_client_id(order.symbol, order.client_order_id, backoff_s)
            if found is not None:
                return found
        assert last is not None
        raise last

    async def _find_by_client_id(self, symbol: str, client_order_id: str, backoff_s: float) -> OrderInfo | None:
        """The order with this id, or None once the exchange says it does not exist."""
        for attempt in range(5):
            try:
                return await self.query_order(symbol, client_order_id=client_order_id)
            except UnknownOrderError:
                return None
            except (ServerError, OutcomeUnknownError) as exc:
                log.warning("query of %s failed (%s); retrying", client_order_id, exc.msg)
                await asyncio.sleep(backoff_s * (2**attempt))
        raise OutcomeUnknownError(0, f"could not learn whether order {client_order_id} exists", None)

    async def modify_order(self, modify: ModifyRequest, *, wait: bool = True, risk: bool = False) -> OrderInfo:
        data = await self._request(ep.MODIFY_ORDER, modify.to_params(), wait=wait, risk=risk)
        return _write_answer(data)

    async def cancel_order(
        self, symbol: str, order_id: int | None = None, client_order_id: str | None = None
    ) -> OrderInfo:
        params = _order_ref(symbol, order_id, client_order_id)
        data = await self._request(ep.CANCEL_ORDER, params)
        return _write_answer(data)

    async def query_order(
        self, symbol: str, order_id: int | None = None, client_order_id: str | None = None
    ) -> OrderInfo:
        params = _order_ref(symbol, order_id, client_order_id)
        data = await self._request(ep.QUERY_ORDER, params)
        return _read_one(data, OrderInfo.from_api, "GET order")

    async def open_orders(self, symbol: str) -> list[OrderInfo]:
        data = await self._request(ep.OPEN_ORDERS, {"symbol": symbol})
        return _read_rows(data, OrderInfo.from_api, "GET openOrders")

    async def open_algo_orders(self, symbol: str) -> list[AlgoOrderInfo]:
        """The symbol's conditional orders waiting in the Algo Service (``openOrders`` lists none).
        An exchange that answers 404 has no Algo Service, so no such orders: none, and not asked again."""
        if self._no_algo_service:
            return []
        try:
            data = await self._request(ep.OPEN_ALGO_ORDERS, {"symbol": symbol})
        except BinanceError as exc:
            if exc.http_status != 404:
                raise
            log.info("GET openAlgoOrders answered 404: no Algo Service, so no conditional orders to count")
            self._no_algo_service = True
            return []
        return _read_rows(data, AlgoOrderInfo.from_api, "GET openAlgoOrders")

    async def batch_place(
        self, orders: Sequence[OrderRequest], *, wait: bool = True, risk: bool = False
    ) -> list[OrderInfo | BinanceError]:
        """Place ``orders`` 5 per request; results follow input order, rejections in place.

        A failure of the whole first request (budget, 429, 5xx, unknown outcome) is raised, as for a
        single order; once a request has gone through, a later request's failure is put in place of
        each of its orders instead, so the caller still learns what the earlier requests placed.
        """
        return await self._in_chunks(
            orders, BATCH_PLACE_MAX, ep.BATCH_PLACE, lambda chunk: {"batchOrders": [o.to_params() for o in chunk]}, wait, risk
        )

    async def batch_modify(
        self, modifies: Sequence[ModifyRequest], *, wait: bool = True, risk: bool = False
    ) -> list[OrderInfo | BinanceError]:
        """Modify orders 5 per request; results and failures as in :meth:`batch_place`."""

        return await self._in_chunks(
            modifies, BATCH_PLACE_MAX, ep.BATCH_MODIFY, lambda chunk: {"batchOrders": [_batch_modify_entry(m) for m in chunk]},
            wait, risk,
        )

    async def place_orders(
        self, orders: Sequence[OrderRequest], *, wait: bool = True, risk: bool = False
    ) -> list[OrderInfo | BinanceError]:
        """Place ``orders``, 5 at a time, each group as one batch call or as one call per order (see
        :meth:`_alone_is_cheaper`); results and failures as in :meth:`batch_place`, a single call's
        rejection or failure in its order's place."""
        return await self._write_many(
            orders, ep.NEW_ORDER, ep.BATCH_PLACE, OrderRequest.to_params,
            lambda chunk: {"batchOrders": [o.to_params() for o in chunk]}, wait, risk,
        )

    async def modify_orders(
        self, modifies: Sequence[ModifyRequest], *, wait: bool = True, risk: bool = False
    ) -> list[OrderInfo | BinanceError]:
        """Modify orders as :meth:`place_orders` places them."""
        return await self._write_many(
            modifies, ep.MODIFY_ORDER, ep.BATCH_MODIFY, ModifyRequest.to_params,
            lambda chunk: {"batchOrders": [_batch_modify_entry(m) for m in chunk]}, wait, risk,
        )

    async def _write_many(self, items, single: Endpoint, batch: Endpoint, one, many, wait: bool,
                          risk: bool) -> list[OrderInfo | BinanceError]:
        results: list[OrderInfo | BinanceError] = []
        for index, chunk in enumerate(_chunks(items, BATCH_PLACE_MAX)):
            try:
                if self._alone_is_cheaper(len(chunk), risk):
                    results.extend(await self._each_alone(single, [one(x) for x in chunk], wait, risk))
                else:
                    params = many(chunk)
                    data = await self._request(batch, params, wait=wait, risk=risk)
                    results.extend(self._batch_entries(batch, data, len(chunk), risk, params))
            except BinanceError as exc:
                if index == 0:
                    raise
                results.extend([exc] * len(chunk))
        return results

    async def _each_alone(self, endpoint: Endpoint, params: list[dict[str, Any]], wait: bool,
                          risk: bool) -> list[OrderInfo | BinanceError]:
        """One call per order, concurrently, their cost taken from the budget at once (so that none
        goes unless all may); each call's answer, rejection or failure in its place."""
        await self.budget.acquire(endpoint.cost.times(len(params)), wait=wait, risk=risk)

        async def call(p: dict[str, Any]) -> OrderInfo | BinanceError:
            try:
                return _write_answer(await self._request(endpoint, p, cost=PAID, wait=wait, risk=risk))
            except BinanceError as exc:
                return exc
            except Exception as exc:  # noqa: BLE001 - sent or not (a session closing): unknown, looked up later
                return OutcomeUnknownError(0, f"{type(exc).__name__}: {str(exc)[:120]}", None)

        if len(params) == 1:
            return [await call(params[0])]  # in this task: no hop through the event loop
        return list(await asyncio.gather(*(call(p) for p in params)))

    async def batch_cancel(
        self,
        symbol: str,
        order_ids: Iterable[int] | None = None,
        client_order_ids: Iterable[str] | None = None,
    ) -> list[OrderInfo | BinanceError]:
        """Cancel by ids, 10 per request; results and failures as in :meth:`batch_place`."""
        if (order_ids is None) == (client_order_ids is None):
            raise ValueError("batch_cancel needs exactly one of order_ids or client_order_ids")
        ids: list[Any] = [int(i) for i in order_ids] if order_ids is not None else [str(c) for c in client_order_ids or ()]
        key = "orderIdList" if order_ids is not None else "origClientOrderIdList"
        return await self._in_chunks(
            ids, BATCH_CANCEL_MAX, ep.BATCH_CANCEL, lambda chunk: {"symbol": symbol, key: list(chunk)}, True
        )

    async def cancel_listed(self, symbol: str, keep: Callable[[OrderInfo], bool] | None = None) -> int:
        """The symbol's listed open orders (those ``keep`` takes) cancelled through the batch route, ten a
        request: another door of the exchange when it refuses a cancel-all. Every request is sent, one
        failing or not (a 503 on one says nothing of the next); the first failure is raised after. How
        many were asked."""
        ids = [o.order_id for o in await self.open_orders(symbol) if keep is None or keep(o)]
        failed: list[BinanceError] = []
        for chunk in _chunks(ids, BATCH_CANCEL_MAX):
            try:
                await self.batch_cancel(symbol, order_ids=chunk)
            except BinanceError as exc:
                failed.append(exc)
        if failed:
            raise failed[0]
        return len(ids)

    async def _in_chunks(self, items, size, endpoint: Endpoint, build, wait, risk=False) -> list[OrderInfo | BinanceError]:
        results: list[OrderInfo | BinanceError] = []
        for index, chunk in enumerate(_chunks(items, size)):
            try:
                params = build(chunk)
                data = await self._request(endpoint, params, wait=wait, risk=risk)
            except BinanceError as exc:
                if index == 0:
                    raise
                results.extend([exc] * len(chunk))
                continue
            results.extend(self._batch_entries(endpoint, data, len(chunk), risk, params))
        return results

    async def cancel_all(self, symbol: str) -> dict[str, Any]:
        return await self._request(ep.CANCEL_ALL, {"symbol": symbol})

    async def countdown_cancel_all(self, symbol: str, countdown_ms: int) -> dict[str, Any]:
        """Arm (or with 0, disarm) the exchange's dead-man switch for ``symbol``."""
        if countdown_ms < 0:
            raise ValueError(f"countdown_ms must be >= 0, got {countdown_ms}")
        return await self._request(ep.COUNTDOWN_CANCEL_ALL, {"symbol": symbol, "countdownTime": int(countdown_ms)})

    # -- account -------------------------------------------------------------------------------

    async def position(self, symbol: str, *, risk: bool = False) -> PositionInfo:
        """The one-way position of ``symbol`` (v3 positionRisk; v2 if the v3 path is missing), with
        ``as_of``, this host's estimate of the exchange time it was sent, and ``read_after``, an
        exchange time no later than the exchange's read: see :meth:`_read_no_earlier_than`.
        ``risk``: read to take risk off (flatten, stop, reconcile): the budget's reserve lane."""
        if not self._position_v2:
            clock0, offset0 = self.clock_ms(), self.time_offset_ms
            try:
                data = await self._request(ep.POSITION_RISK_V3, {"symbol": symbol}, risk=risk)
            except BinanceError as exc:
                if exc.http_status != 404:
                    raise
                log.info("v3 positionRisk not available; using v2")
                self._position_v2 = True
            else:
                return _pick_position(data, symbol, clock0 + offset0, self._read_no_earlier_than(clock0, offset0))
        clock0, offset0 = self.clock_ms(), self.time_offset_ms
        data = await self._request(ep.POSITION_RISK_V2, {"symbol": symbol}, risk=risk)
        return _pick_position(data, symbol, clock0 + offset0, self._read_no_earlier_than(clock0, offset0))

    def _read_no_earlier_than(self, clock0: int, offset0: int) -> int:
        """The earliest exchange time at which a signed read sent after this host's ``clock0`` (with
        the offset then ``offset0``) and accepted can have been read: its timestamp less
        ``AHEAD_REFUSED_MS``. The timestamp itself is only this host's estimate, which an uneven round
        trip at the last clock sync may have set up to a second ahead unnoticed: a figure dated by it
        would take fills made just after the read for fills inside it (lost from the position). Of a
        request re-signed after a re-sync, the lower of the two offsets."""
        return clock0 + min(offset0, self.time_offset_ms) - AHEAD_REFUSED_MS

    async def account(self) -> dict[str, Any]:
        if not self._account_v2:
            try:
                return await self._request(ep.ACCOUNT_V3)
            except BinanceError as exc:
                if exc.http_status != 404:
                    raise
                self._account_v2 = True
        return await self._request(ep.ACCOUNT_V2)

    async def balance(self) -> list[dict[str, Any]]:
        if not self._account_v2:
            try:
                return await self._request(ep.BALANCE_V3)
            except BinanceError as exc:
                if exc.http_status != 404:
                    raise
                self._account_v2 = True
        return await self._request(ep.BALANCE_V2)

    async def income(
        self,
        symbol: str | None = None,
        income_type: str | None = None,
        start_time: int | None = None,
        end_time: int | None = None,
        limit: int | None = None,
        *,
        wait: bool = True,
    ) -> list[dict[str, Any]]:
        """Income records (``wait=False``: BudgetExhaustedError at once when the budget has no room)."""
        given = {"symbol": symbol, "incomeType": income_type, "startTime": start_time, "endTime": end_time,
                 "limit": limit}
        return await self._request(ep.INCOME, {k: v for k, v in given.items() if v is not None}, wait=wait)

    async def force_orders(self, symbol: str, start_time: int) -> list[dict[str, Any]]:
        """GET /fapi/v1/forceOrders: the account's liquidation and auto-deleveraging orders of
        ``symbol`` since ``start_time`` (at most 7 days back; both kinds, no ``autoCloseType``), in the
        risk lane: read to know whether the exchange closed a position."""
        data = await self._request(ep.FORCE_ORDERS, {"symbol": symbol, "startTime": start_time}, risk=True)
        return [r for r in data if isinstance(r, dict)] if isinstance(data, list) else []

    async def user_trades(
        self,
        symbol: str,
        start_time: int | None = None,
        end_time: int | None = None,
        from_id: int | None = None,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """GET /fapi/v1/userTrades: the account's fills of a symbol, oldest first (``fromId`` pages on)."""
        params = {"symbol": symbol, "startTime": start_time, "endTime": end_time, "fromId": from_id, "limit": limit}
        params = {k: v for k, v in params.items() if v is not None}
        return await self._request(ep.USER_TRADES, params)

    async def commission_rate(self, symbol: str) -> CommissionRate:
        data = await self._request(ep.COMMISSION_RATE, {"symbol": symbol})
        return CommissionRate(
            symbol=data["symbol"],
            maker=exchange_decimal(data["makerCommissionRate"]),
            taker=exchange_decimal(data["takerCommissionRate"]),
        )

    async def symbol_config(self, symbol: str) -> SymbolConfig:
        """The account's margin type and leverage for ``symbol``, and the notional its bracket allows."""
        data = await self._request(ep.SYMBOL_CONFIG, {"symbol": symbol})
        for row in data if isinstance(data, list) else [data]:
            if isinstance(row, dict) and row.get("symbol") == symbol:
                return SymbolConfig(symbol=symbol, margin_type=str(row.get("marginType", "")),
                                    leverage=int(row["leverage"]), max_notional=exchange_decimal(row["maxNotionalValue"]))
        raise BinanceError(ErrorCode.BAD_SYMBOL, f"symbolConfig has no row for {symbol!r}", None)

    async def funding_terms(self, symbol: str) -> FundingTerms | None:
        """The symbol's own funding interval, cap and floor (fundingInfo); None: it has none, it settles
        every 8 hours. A row whose interval is not a positive whole number of hours is a ValueError."""
        data = await self._request(ep.FUNDING_INFO, wait=False)   # (no room: the caller reads again later)
        for row in data if isinstance(data, list) else ():
            if isinstance(row, dict) and row.get("symbol") == symbol:
                hours = row.get("fundingIntervalHours")
                if type(hours) is not int or hours <= 0:
                    raise ValueError(f"fundingInfo's fundingIntervalHours for {symbol} is {hours!r}")
                return FundingTerms(symbol=symbol, interval_hours=hours,
                                    cap=exchange_decimal(row.get("adjustedFundingRateCap", "0")),
                                    floor=exchange_decimal(row.get("adjustedFundingRateFloor", "0")))
        return None

    async def funding_times(self, symbol: str, start_ms: int, limit: int = 1) -> list[int]:
        """The times of the symbol's settlements from ``start_ms`` on (fundingRate's history, oldest first,
        at most ``limit``). A row without a whole ``fundingTime`` is a ValueError."""
        data = await self._request(ep.FUNDING_RATE, {"symbol": symbol, "startTime": int(start_ms), "limit": limit},
                                   wait=False)
        if not isinstance(data, list):
            raise ValueError(f"fundingRate answered {type(data).__name__}, not a list")
        times = []
        for row in data:
            t = row.get("fundingTime") if isinstance(row, dict) else None
            if type(t) is not int:
                raise ValueError(f"fundingRate's row has no fundingTime: {row!r:.200}")
            times.append(t)
        return times

    async def set_leverage(self, symbol: str, leverage: int) -> dict[str, Any]:
        if not 1 <= int(leverage) <= 125:
            raise ValueError(f"leverage must be 1..125, got {leverage}")
        return await self._request(ep.LEVERAGE, {"symbol": symbol, "leverage": int(leverage)})

    # -- listenKey (API key only, no signature) ------------------------------------------------

    async def create_listen_key(self) -> str:
        data = await self._request(ep.LISTEN_KEY_CREATE)
        return str(data["listenKey"])

    async def keepalive_listen_key(self) -> str | None:
        """Extend the listenKey by 60 min; :class:`InvalidListenKeyError` if it has expired."""
        data = await self._request(ep.LISTEN_KEY_KEEPALIVE)
        return data.get("listenKey") if isinstance(data, dict) else None

    async def close_listen_key(self) -> None:
        await self._request(ep.LISTEN_KEY_CLOSE)


# -- helpers ---------------------------------------------------------------------------------------


def _decode(raw: bytes, status: int, method: str, path: str, mutating: bool) -> Any:
    """The answer's JSON; a body that is not JSON comes back as its text (the start of it), except that a
    success status without JSON (a proxy's page?) is an error: for a write we cannot tell what happened."""
    try:
        return orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        text = raw[:300].decode("utf-8", "replace")
    if 200 <= status < 300:
        what = f"{method} {path}: HTTP {status} with a non-JSON body: {text[:100]!r}"
        raise (OutcomeUnknownError if mutating else ServerError)(0, what, status)
    return text


def _is_error_payload(payload: Mapping[str, Any]) -> bool:
    # {"code":200,"msg":"..."} is Binance's success reply for some endpoints
    code = payload.get("code")
    return isinstance(code, int) and code < 0 and "msg" in payload and len(payload) <= 3


def _order_ref(symbol: str, order_id: int | None, client_order_id: str | None) -> dict[str, Any]:
    if order_id is None and not client_order_id:
        raise ValueError("need order_id or client_order_id")
    params: dict[str, Any] = {"symbol": symbol}
    if order_id is not None:
        params["orderId"] = int(order_id)
    else:
        params["origClientOrderId"] = client_order_id
    return params


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _batch_modify_entry(m: ModifyRequest) -> dict[str, Any]:
    params: dict[str, Any] = m.to_params()
    if m.order_id is not None:
        params["orderId"] = int(m.order_id)
    return params


def _write_answer(data: Any) -> OrderInfo:
    """The order a write answered with; an answer that is no order leaves the outcome unknown."""
    try:
        return OrderInfo.from_api(data)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise OutcomeUnknownError(0, f"unreadable order answer ({type(exc).__name__}): {str(data)[:120]}", 200) from exc


def _batch_results(data: Any, expected: int) -> list[OrderInfo | BinanceError]:
    """One result per order, in order. A short answer (or not a list) may hide executed orders:
    each order of it is then of unknown outcome; so is an entry that is neither an order nor an error."""
    if not isinstance(data, list) or len(data) != expected:
        got = len(data) if isinstance(data, list) else type(data).__name__
        raise OutcomeUnknownError(0, f"batch answer has {got} entries, expected {expected}", 200)
    out: list[OrderInfo | BinanceError] = []
    for entry in data:
        if isinstance(entry, dict) and "orderId" not in entry and "code" in entry:
            out.append(for_write(error_from_payload(entry, 400)))
            continue
        try:
            out.append(OrderInfo.from_api(entry))
        except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
            out.append(OutcomeUnknownError(0, f"malformed batch entry ({type(exc).__name__}): {str(entry)[:120]}", 200))
    return out


def _read_rows(data: Any, parse: Callable[[Any], T], what: str) -> list[T]:
    """A read's list answer, each row parsed. Anything else (a 200 with no body, an object, a row that
    does not parse) is a :class:`ServerError`: a read changes nothing and is tried again, where taking
    it for an empty list would make a position flat or the open orders none."""
    if not isinstance(data, list):
        raise ServerError(0, f"{what}: HTTP 200 without a list ({type(data).__name__})", 200)
    return [_read_one(row, parse, what) for row in data]


def _read_one(data: Any, parse: Callable[[Any], T], what: str) -> T:
    """A read's one object (an answer, or a row of one), parsed; one that does not parse is a
    :class:`ServerError` (tried again)."""
    try:
        return parse(data)
    except (KeyError, TypeError, ValueError, AttributeError, ArithmeticError) as exc:
        raise ServerError(0, f"{what}: unreadable ({type(exc).__name__}): {str(exc)[:120]}", 200) from exc


def _nonzero(amount: Any) -> bool:
    try:
        return float(amount) != 0.0
    except (TypeError, ValueError):
        return True   # unreadable: not known to be flat


def _pick_position(data: Any, symbol: str, as_of: int = 0, read_after: int = 0) -> PositionInfo:
    """The symbol's one-way row, with the request's times (:class:`PositionInfo`): a figure without a
    time of its own (flat: v3 omits the symbol) is as of the request."""
    listed = _read_rows(data, lambda r: (r["symbol"], r.get("positionSide", PositionSide.BOTH), r), "GET positionRisk")
    rows = [r for sym, side, r in listed if sym == symbol and side == PositionSide.BOTH]
    hedged = {side: r.get("positionAmt") for sym, side, r in listed if sym == symbol and side != PositionSide.BOTH}
    if not rows and any(_nonzero(amount) for amount in hedged.values()):
        # Hedge Mode: a LONG and a SHORT row, no one-way row. Read as flat, a flatten said "flat" over 0.5
        # held (an audit); mmfleet reads and trades one-way positions only.
        raise BinanceError(ErrorCode.POSITION_SIDE_NOT_MATCH, f"the account is in Hedge Mode: positionRisk lists "
                           f"{symbol} by position side ({', '.join(f'{k} {v}' for k, v in sorted(hedged.items()))}), "
                           f"no one-way row: switch it to one-way mode (dualSidePosition=false)", 200)
    if not rows:
        return PositionInfo.flat(symbol, as_of, read_after)  # v3 lists only symbols with a position or open orders
    try:
        info = PositionInfo.from_api(rows[0])
    except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
        raise ServerError(0, f"GET positionRisk: unreadable row ({type(exc).__name__}): {str(rows[0])[:120]}", 200) from exc
    return dataclasses.replace(info, as_of=as_of, read_after=read_after)
