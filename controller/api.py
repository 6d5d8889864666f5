"""The fleet's HTTP endpoint: a Ray Serve deployment with a FastAPI ingress.

It shows the whole fleet (status, exposure, merged Prometheus metrics) and holds the kill switches.
Status and exposure go straight to the agent actors, concurrently and with a timeout, so one stuck
agent is reported instead of stalling the page; metrics are the expositions the agents publish
(``agents/publish.py``), read in one call, a stale one left off. A halt is run by the endpoint itself
(the kill state made durable in the GCS, then the agent and the exchange raced per symbol:
``controller/kill_path.py``) and the controller told afterwards, whether asked over HTTP, by the
console or by the CLI through Ray (``kill_over_ray``); a flatten and a resume go through the
controller; the kill states and the symbols traded are read from the GCS. The bearer token is read
inside the replica (env var or file), never passed as an argument, and compared in constant time.

Request bodies are taken strictly: the token is checked before a byte of the body is read, a body
over 64 KiB is a 413, the JSON is parsed without NaN, Infinity or out-of-range numbers and without
duplicate keys, and the models are strict (a boolean is ``true`` or ``false``, never ``"yes"`` or
``1``; unknown fields are refused). A 422 names the field and never echoes a long input back.

The same app serves the ops console (``/console``: sign-in session, CSRF-checked actions, the fleet
table pushed over Server-Sent Events); its pieces are in :mod:`controller.console` and
:mod:`controller.console_feed`.

The routes stay thin: the strict request bodies are :mod:`controller.bodies`, the Ray calls
:mod:`controller.calls`, the views (pure: answers in, HTTP answer out) :mod:`controller.views`.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the ingress methods' annotations
# (``Credentials``, request bodies) as objects, and Serve's wrapping hides the module they live in.

import asyncio
import hmac
import ipaddress
import logging
import math
import os
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Awaitable, Callable, TypeVar

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError
from ray import serve

from agents.logging import log_process_records, redact_in_process_logs
from controller.api_page import render_api_page
from controller.bodies import (
    ConsoleKillRequest,
    ConsoleResumeRequest,
    KillRefused,
    KillRequest,
    ResumeRequest,
    body_schema,
    known_query_only,
    parse_body,
    read_body,
    refusal,
    shown_input,
    validation_detail,
)
from controller.calls import ActorCalls, Answer, ControllerWatch, first_line
from controller.console import (
    ASSET_TYPES,
    COOKIE_NAME,
    CSRF_HEADER,
    SECURITY_HEADERS,
    SESSION_TTL_S,
    SIGNIN_MAX_BYTES,
    ConsoleSession,
    ConsoleSessions,
    SignInThrottle,
    asset,
    cookie_path,
    csrf_matches,
    render_console,
    render_signin,
    same_origin,
    signin_token,
)
from controller.console_feed import ConsoleFeed
from controller.federation import FleetView, KillLatency, SplitCache, published_scrapes, render_fleet_page, \
    unkilled_seconds
from controller.handles import HEAD_NODE_RESOURCE, above_agents_env, app_name
from controller.kill_path import READ_S, DirectKill
from controller.lane import SIGNIN, Busy, Lane
from controller.lease import NO_LEASE_SHOWN, kill_states_shown, leases_shown
from controller.views import AgentAnswers, exposure_view, kill_state_map, kill_view, status_view
from fleet.config import FleetConfig

log = logging.getLogger("mmfleet.api")
T = TypeVar("T")

CLI_VIA = "cli: "           # the log lines and journal entries of a kill asked through Ray (the CLI)
KILL_PATH_READY_S = 5.0   # how often the endpoint makes its kill path ready (controller/kill_path.py, prepare)


@dataclass(frozen=True)
class ApiSettings:
    """Timeouts of the endpoint; plain values so they travel as deployment arguments."""

    agent_timeout_s: float = 2.0        # the controller's part of a page, the published expositions and statuses
    page_wait_s: float = 1.0            # /status, /exposure and the console wait this long for each agent's answer;
                                        # a later one is shown with what it last published and how old that is
    controller_timeout_s: float = 5.0   # kill states, status
    kill_timeout_s: float = 60.0        # kill / resume (includes the controller's emergency path)
    kill_deadline_s: float = 0.3        # a flatten the controller does not answer by then (nor a ping): the endpoint's
    halt_timeout_s: float = 3.0         # an agent that has not confirmed a halt by then: the controller's emergency path
    console_session_s: float = SESSION_TTL_S   # a console sign-in lasts this long
    console_push_s: float = 1.0         # the console's table is pushed at least this often
    console_slow_s: float = 5.0         # fills and grinds (published expositions) this often
    console_max_streams: int = 16       # open console streams at once (each holds a request)


@dataclass(frozen=True)
class TokenSource:
    """Where the bearer token lives; read on every check so a rotated file takes effect at once."""

    env: str | None
    file: str | None

    def read(self) -> str | None:
        if self.file:
            try:
                token = Path(self.file).read_text().strip()
            except OSError:
                token = ""
            if token:
                redact_in_process_logs(token)
                return token
        if self.env:
            token = os.environ.get(self.env, "").strip()
            if token:
                redact_in_process_logs(token)
                return token
        return None

    def describe(self) -> str:
        where = [f"file {self.file}"] if self.file else []
        where += [f"environment variable {self.env}"] if self.env else []
        return " or ".join(where) or "nowhere (api.token_env and api.token_file are both unset)"



# --- the deployment ------------------------------------------------------------------------------

api = FastAPI(
    title="mmfleet",
    description="Exposure, status, merged metrics and kill switches of one market-making fleet.",
    version="1",
    docs_url=None,   # FastAPI's page loads its script from a CDN: controller/api_page.py instead
    redoc_url=None,
    dependencies=[Depends(known_query_only)],
)


LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})


class _Served:
    loopback_only = False   # set by the replica when its endpoint listens on loopback only
    others: Lane | None = None   # the turns of every route but the kill's and the sign-in's (``kill_lane``)
    signins: Lane | None = None   # the console's sign-in's


# The kill's own lane: Serve hands the replica every request at once (``SERVE_ONGOING``, far above any
# flood), and every route but a kill's waits its turn in the replica (``controller.lane``); a kill never
# waits behind them. With Serve's own cap (64) a flood of 200 clients (``/metrics`` without a token,
# ``/status``, wrong-token kills) held a kill 16-30 s in the proxy's queue, which is not served in order.
SERVE_ONGOING = 4096
# /pnl's since: Unix ms; one below 10^11 (1973) is most likely seconds, and is refused saying so
SECONDS_LOOK_MS = 10**11
MAX_SINCE_MS = 2**53


def _since_in_ms(since: int | None) -> None:
    if since is not None and 0 < since < SECONDS_LOOK_MS:
        raise HTTPException(422, f"since={since} is Unix milliseconds: as such it is in 1973 or before "
                                 f"(seconds? send {since * 1000})")


def _traded(pnl: dict[str, Any], symbol: str | None, known: tuple[str, ...]) -> dict[str, Any]:
    """``/pnl``'s answer for ``symbol``: a symbol the fleet traded once keeps its journal (answered); one
    it never traded is a 404 naming it."""
    if symbol and symbol not in known and not pnl.get("symbols"):
        raise HTTPException(404, f"unknown symbol {symbol}: no P&L in the journal, and this fleet trades "
                                 f"{', '.join(known)}")
    return pnl


def _client_address(request: Request) -> str:
    """The client's address as logged: Serve's proxy takes it from X-Forwarded-For, free text a client
    writes; one that is not an IP address is shown as such, quoted and cut short."""
    host = request.client.host if request.client else ""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return f"{shown_input(host[:64])!r} (not an IP address)"


@api.middleware("http")
async def kill_lane(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    if request.method == "POST" and request.url.path.rstrip("/").endswith("/kill"):   # /kill, /console/kill
        return await call_next(request)
    if _Served.others is None:
        _Served.others, _Served.signins = Lane(), Lane("the console's sign-in", **SIGNIN)
    lane = _Served.signins if request.url.path.rstrip("/").endswith("/console/signin") else _Served.others
    try:
        async with lane.turn():   # (held until the answer starts: a console's event stream holds none)
            return await call_next(request)
    except Busy as busy:
        return JSONResponse({"detail": busy.reason}, status_code=503, headers={"Retry-After": "1"})


@api.middleware("http")
async def loopback_host_only(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """An endpoint on loopback answers only requests that name a loopback host: a page of another site
    whose name its DNS points at 127.0.0.1 (rebinding) reaches the port from the operator's browser,
    but not the fleet's open pages (``/metrics``, ``/health``, the sign-in)."""
    if _Served.loopback_only:
        host = (request.headers.get("host") or "").strip().lower()
        name = host[1:host.find("]")] if host.startswith("[") else host.rsplit(":", 1)[0]
        if name not in LOOPBACK_NAMES:
            return JSONResponse({"detail": f"Host {host[:80]!r} is not this endpoint's: it serves on loopback "
                                           f"(127.0.0.1, localhost)"}, status_code=400)
    return await call_next(request)


@api.get("/docs", include_in_schema=False)
async def api_docs() -> HTMLResponse:
    """The API reference: plain HTML from the OpenAPI document, nothing loaded from anywhere."""
    return HTMLResponse(render_api_page(api.openapi()), headers=SECURITY_HEADERS)
_bearer = HTTPBearer(auto_error=False, description="the fleet API token")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


@api.exception_handler(RequestValidationError)
async def _validation_failed(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's own validation errors (query, headers) without long inputs echoed back."""
    return JSONResponse(status_code=422, content={"detail": validation_detail(list(exc.errors()))})


async def stored_book(read_leases: Callable[[tuple[str, ...]], Awaitable[dict[str, Any]]],
                      read_kill_states: Callable[[], Awaitable[tuple[Answer, dict[str, str]]]],
                      symbols: tuple[str, ...], timeout_s: float) -> Answer:
    """Each symbol's lease and durable kill state as the GCS holds them: ``/status`` shows them when the
    controller does not answer (one asynchronous read each). Either read failing is an error."""
    started = time.monotonic()
    try:
        leases, (kill, kill_states) = await asyncio.wait_for(
            asyncio.gather(read_leases(symbols), read_kill_states()), timeout_s)
    except Exception as exc:  # noqa: BLE001 - the page says why it shows no lease
        why = "no answer" if isinstance(exc, asyncio.TimeoutError) else first_line(exc)
        return Answer(error=f"the leases were not read from the GCS: {why}", elapsed_s=time.monotonic() - started)
    if not kill.ok:
        return Answer(error=kill.error, elapsed_s=time.monotonic() - started)
    shown = leases_shown(leases, time.time())
    book = {s: {**shown.get(s, {"epoch": None, **NO_LEASE_SHOWN}),
                **({"kill_state": kill_states[s]} if s in kill_states else {})} for s in symbols}
    return Answer(value=book, elapsed_s=time.monotonic() - started)


def _serve_grpc_on_node_address() -> None:
    """Ray Serve (2.60) starts each replica's inter-deployment gRPC server on ``[::]``, every interface,
    whatever the node's address: on a loopback cluster the endpoint's replica, which holds the accounts'
    keys for the kill path and unpickles what that port receives, listened on the network. Its proxy
    reaches it at the replica's node address, so it is bound there (127.0.0.1 on a loopback cluster).
    Runs in the replica before Serve starts that server; ``tests/controller/test_api_fleet.py`` checks
    that nothing of the fleet listens beyond loopback, so a Ray that changes this is noticed."""
    import ray
    from ray.serve._private import replica

    bind = replica.add_port_to_grpc_server
    if getattr(bind, "_mmfleet_node_address", False):
        return
    node = ray.util.get_node_ip_address()

    def on_node_address(server: Any, address: str) -> int:
        if address.startswith("[::]:"):
            address = f"{node}:{address[5:]}" if ":" not in node else f"[{node}]:{address[5:]}"
        return bind(server, address)

    on_node_address._mmfleet_node_address = True  # type: ignore[attr-defined]
    replica.add_port_to_grpc_server = on_node_address


@serve.deployment(num_replicas=1, max_ongoing_requests=SERVE_ONGOING, ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class FleetApi:
    """One replica per fleet; everything it knows comes from the controller and the agents."""

    def __init__(self, fleet_config: dict[str, Any], namespace: str, settings: dict[str, float]):
        self.cfg = FleetConfig.model_validate(fleet_config)
        self.namespace = namespace
        self.settings = ApiSettings(**settings)
        self.symbols: tuple[str, ...] = tuple(e.symbol for e in self.cfg.symbols)
        self.known: tuple[str, ...] = self.symbols   # the symbols traded as last read (applied spec, controller)
        self.tokens = TokenSource(self.cfg.api.token_env, self.cfg.api.token_file)
        self.calls = ActorCalls(namespace, self.settings.agent_timeout_s, self.settings.controller_timeout_s,
                                self.settings.page_wait_s)
        self.kill_latency = KillLatency()
        self.splits = SplitCache(self.cfg.name)     # each agent's exposition, split once per version
        self.metrics_down: dict[str, str | None] = {}   # agents left off /metrics, and why
        # Its own kill routes (durable state in the GCS, keys read in this process): every halt, and a
        # flatten the controller does not take up within kill_deadline_s.
        self.direct = DirectKill(self.cfg, self.calls, self.settings.halt_timeout_s)
        self.behind: set[asyncio.Future] = set()   # its loops: the kill path kept ready, the controller's watch
        self.sessions = ConsoleSessions(ttl_s=self.settings.console_session_s)
        self.signin_throttle = SignInThrottle()
        self.controller = ControllerWatch(self.calls, self.settings.agent_timeout_s)   # /metrics' controller_up
        self.feed = ConsoleFeed(self.calls, self.cfg.name, self.cfg.risk.max_total_notional,
                                kill_states=self._durable_kill_states, traded=lambda: self.known,
                                leases=self.direct.book.aleases, controller=self.controller,
                                push_s=self.settings.console_push_s, slow_s=self.settings.console_slow_s)
        log_process_records()   # timed lines; a kill reason with a newline cannot forge one
        _serve_grpc_on_node_address()
        if self.cfg.api.host.strip("[]").lower() in LOOPBACK_NAMES:
            _Served.loopback_only = True
        self.kill_path: dict[str, Any] = {}   # what DirectKill.prepare last found ready, and when
        try:   # the kill path kept ready: modules imported, exchange clients open, agents' handles found
            loop = asyncio.get_running_loop()
            for work in (self._keep_kill_path_ready(), self.controller.run()):
                task = loop.create_task(work)
                self.behind.add(task)
                task.add_done_callback(self.behind.discard)
        except RuntimeError:   # no loop running here: the first kill opens them, a scrape pings
            pass
        if self.tokens.read() is None:
            log.warning("no API token found in %s: protected endpoints answer 503", self.tokens.describe())

    # --- auth ---

    def _authorize(self, creds: HTTPAuthorizationCredentials | None) -> None:
        expected = self.tokens.read()
        if expected is None:
            raise HTTPException(503, f"API token not configured: expected in {self.tokens.describe()}")
        if creds is None or not creds.credentials:
            raise HTTPException(
                401, "missing bearer token: send 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        if not hmac.compare_digest(creds.credentials.encode(), expected.encode()):
            raise HTTPException(403, "invalid API token")

    # --- symbols ---

    def _traded(self, controller_symbols: Any) -> tuple[str, ...]:
        """The symbols the fleet trades now: as last read (the applied spec in the GCS, or the controller's
        status), else the deployed config's.

        ``apply`` may add or remove symbols after the endpoint was deployed; the last list read wins, and
        is remembered for validating kill and resume requests.
        """
        if isinstance(controller_symbols, dict) and controller_symbols:
            self.known = tuple(dict.fromkeys(str(s) for s in controller_symbols))
        return self.known

    def _check_symbols(self, symbols: list[str] | None) -> list[str] | None:
        if symbols is None:
            return None
        unknown = list(dict.fromkeys(s for s in symbols if s not in self.known))
        if unknown:   # named, but never a long input echoed back whole
            named = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            raise HTTPException(404, f"unknown symbol(s): {named}; this fleet trades {', '.join(self.known)}")
        return list(dict.fromkeys(symbols))

    async def _durable_kill_states(self) -> tuple[Answer, dict[str, str]]:
        """The durable kill states of the fleet as last applied, read by this endpoint from the GCS, where
        the controller and the kill route write them (one asynchronous read each for the applied spec and
        the records): ``/exposure`` and ``GET /kill`` show them with the controller busy, stopped or gone.
        The traded symbols follow the applied fleet."""
        started = time.monotonic()

        async def read() -> dict[str, Any]:
            symbols = [e.symbol for e in (await self.direct.refresh()).symbols]
            return kill_states_shown(symbols, await self.direct.book.akill_records(symbols))

        try:
            value = await asyncio.wait_for(read(), self.settings.agent_timeout_s)
        except Exception as exc:  # noqa: BLE001 - the page says why it has no kill states
            why = "no answer" if isinstance(exc, asyncio.TimeoutError) else first_line(exc)
            return Answer(error=f"the kill states were not read from the GCS: {why}",
                          elapsed_s=time.monotonic() - started), {}
        self._traded(value)
        return Answer(value=value, elapsed_s=time.monotonic() - started), kill_state_map(value)

    async def _ask_agents(self, method: str, symbols: tuple[str, ...]) -> tuple[dict[str, int] | None, dict[str, Answer]]:
        """Which of the symbols' agents Ray holds alive (with their restarts), and each one's answer to
        ``method``; an agent not running yet is answered at once, not waited for."""
        alive = await self.calls.alive(symbols)
        return alive, await self.calls.agents(method, symbols, alive)

    async def _with_agents(self, controller: Awaitable[T], method: str) -> tuple[T, AgentAnswers]:
        """A page's controller part (which updates the traded symbols) and every traded agent's answer
        to ``method``, asked at once: the page waits for the slower of the two, not their sum. The agents
        of the symbols known before are asked first; any the controller's answer adds, after it. For the
        agents without an answer, what they last published (one GCS read)."""
        head, (alive, agents) = await asyncio.gather(controller, self._ask_agents(method, self.known))
        symbols = self.known   # as the controller's answer left them (another page may change them meanwhile)
        if added := tuple(s for s in symbols if s not in agents):
            more_alive, more = await self._ask_agents(method, added)
            alive = None if alive is None or more_alive is None else {**alive, **more_alive}
            agents.update(more)
        agents = {s: agents[s] for s in symbols}
        silent = tuple(s for s, a in agents.items() if not a.ok)
        last = await self.calls.last_published(self.cfg.name, silent, method)
        return head, AgentAnswers(agents, alive or {}, last, time.time())

    # --- endpoints: views ---

    @api.get("/health", summary="liveness of the endpoint (open)")
    async def health(self) -> dict[str, Any]:
        # Whether a token was found (never the token): protected endpoints answer 503 without one.
        return {
            "ok": True,
            "fleet": self.cfg.name,
            "symbols": len(self.known),
            "token_configured": self.tokens.read() is not None,
            "kill_path": self._kill_path_view(),
            "controller": self.controller.view(),
        }

    def _kill_path_view(self) -> dict[str, Any]:
        """How ready a kill is: agents whose handles are found, accounts whose exchange clients are open."""
        ready = dict(self.kill_path)
        at = ready.pop("at", None)
        return {**ready, "checked_s_ago": round(time.time() - at, 1) if at is not None else None,
                "gcs_error": self.direct.refresh_error}   # the applied spec's last read failed: why

    @api.get("/status", summary="per agent: state, epoch, lease, streams, book age, restarts")
    async def status(self, creds: Credentials) -> dict[str, Any]:
        self._authorize(creds)
        async def controller() -> Answer:
            answer = await self.calls.controller("status", timeout=self.settings.agent_timeout_s)
            self._traded((answer.mapping() or {}).get("symbols", {}))
            return answer

        # the GCS's leases are read meanwhile: shown if the controller does not answer
        (ctl, agents), stored = await asyncio.gather(self._with_agents(controller(), "status"),
                                                     stored_book(self.direct.book.aleases, self._durable_kill_states,
                                                                 self.known, self.settings.agent_timeout_s))
        return {"fleet": self.cfg.name, "namespace": self.namespace, **status_view(ctl, agents, stored)}

    @api.get("/exposure", summary="per symbol position, notional, worst case vs cap, P&L; fleet totals")
    async def exposure(self, creds: Credentials) -> dict[str, Any]:
        self._authorize(creds)
        (kill, _), agents = await self._with_agents(self._durable_kill_states(), "exposure")
        return {"fleet": self.cfg.name, **exposure_view(kill, agents, self.cfg.risk.max_total_notional)}

    @api.get("/metrics", summary="every agent's metrics merged, plus fleet series (Prometheus text)")
    async def metrics(self, creds: Credentials) -> Response:
        if self.cfg.api.metrics_require_auth:
            self._authorize(creds)
        started = time.monotonic()
        symbols = self.known  # as of the applied fleet last read; the kill states below update it
        if self.controller.seen is None:   # the watch has not answered yet (a scrape right after a deploy)
            await self.controller.ping()
        # The agents' own expositions are published (agents/publish.py), not asked for one by one; the
        # kill states read from the GCS and the controller's liveness from its watch: nothing here waits
        # on the controller.
        (_, kill_states), published, restarts = await asyncio.gather(
            self._durable_kill_states(), self.calls.published(self.cfg.name, symbols), self.calls.restarts(symbols))
        scrapes = published_scrapes(symbols, published, now=time.time(), stale_s=self.cfg.api.metrics_stale_s)
        view = FleetView(fleet=self.cfg.name, symbols=symbols, kill_states=kill_states, restarts=restarts,
                         kill_latency=self.kill_latency, controller_up=self.controller.up(),
                         unkilled=unkilled_seconds(self.controller.unkilled(), now=time.time()))
        # Off the event loop, so a kill is not queued behind it; a page is split again only when it changed.
        page = await asyncio.to_thread(render_fleet_page, view, scrapes, self.splits.split)
        for problem in page.dropped:
            log.warning("metrics: %s", problem)
        self._note_down({s.symbol: s.error for s in scrapes if not s.answered})
        log.debug("metrics page built in %.1f ms", (time.monotonic() - started) * 1000)
        return Response(content=page.body, media_type=CONTENT_TYPE_LATEST)

    def _note_down(self, down: dict[str, str | None]) -> None:
        """Log an agent's exposition going missing or stale, and coming back (not every scrape)."""
        for sym in sorted(down.keys() - self.metrics_down.keys()):
            log.warning("metrics: %s left off the page: %s", sym, down[sym])
        for sym in sorted(self.metrics_down.keys() - down.keys()):
            log.warning("metrics: %s back on the page", sym)
        self.metrics_down = down

    @api.get("/kill", summary="durable kill state per symbol (read from the GCS: the controller is not asked)")
    async def kill_states(self, creds: Credentials) -> dict[str, Any]:
        self._authorize(creds)
        kill, _ = await self._durable_kill_states()
        if not kill.ok:
            raise HTTPException(503, kill.error)
        return {"fleet": self.cfg.name, "kill_states": kill.value}

    @api.get("/pnl", summary="P&L per symbol and fleet from the trade journal, split into spread, inventory, funding, fees")
    async def pnl(self, creds: Credentials,
                  since: Annotated[int | None, Query(ge=0, le=MAX_SINCE_MS, description="Unix ms")] = None,
                  symbol: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9]{2,30}$")] = None) -> dict[str, Any]:
        self._authorize(creds)
        from journal.db import target_of
        from journal.pnl import bounded_report

        _since_in_ms(since)
        wanted = symbol.upper() if symbol else None

        def report() -> dict[str, Any]:
            return bounded_report(target_of(self.cfg), since_ms=since, symbols=[wanted] if wanted else None,
                                  fleet=self.cfg.name)

        try:
            answer = {"fleet": self.cfg.name, **await asyncio.to_thread(report)}
        except Exception as exc:  # noqa: BLE001 - a journal that does not answer is a 503, never a stack trace
            raise HTTPException(503, f"journal not readable: {first_line(exc)}") from None
        return _traded(answer, wanted, self.known)

    # --- endpoints: kill and resume ---
    # The body is not a FastAPI parameter: FastAPI would read and validate it before the token check.

    async def _body(self, request: Request, model: type[BaseModel]) -> Any:
        """The request's body as ``model``; call only after :meth:`_authorize`."""
        return parse_body(await read_body(request), model)

    @api.post("/kill", summary="halt or flatten symbols; answers once 0 open orders are confirmed",
              openapi_extra=body_schema(KillRequest))
    async def kill(self, request: Request, creds: Credentials) -> dict[str, Any]:
        self._authorize(creds)
        body: KillRequest = await self._body(request, KillRequest)
        return await self._kill(body)

    async def kill_over_ray(self, symbols: list[str] | None, mode: str, reason: str) -> dict[str, Any]:
        """The CLI's kill (``python -m fleet kill``), called through Ray by whoever may reach the cluster (no
        HTTP, no token): the same path as ``POST /kill`` (a halt waits on no controller). A request refused
        as asked raises :class:`KillRefused` with the reason, nothing done; a failure, ``RuntimeError``."""
        try:
            body = ConsoleKillRequest(symbols=symbols or None, all=not symbols, mode=mode, reason=reason)
        except ValidationError as exc:
            raise KillRefused(refusal(exc)) from None
        try:
            return await self._kill(body, via=CLI_VIA)
        except HTTPException as exc:
            if exc.status_code in (404, 422):
                raise KillRefused(str(exc.detail)) from None
            raise RuntimeError(f"HTTP {exc.status_code}: {exc.detail}") from None

    async def _kill(self, body: KillRequest, via: str = "") -> dict[str, Any]:
        started = time.monotonic()
        # the fleet as applied: a symbol added since the deploy is known (not waited for with the GCS down)
        await self.direct.refresh(self.direct.gcs_wait(READ_S))
        self._traded({s: None for s in self.direct.symbols()})
        symbols = self._check_symbols(body.symbols)
        log.warning("%skill %s of %s requested: %s", via, body.mode, symbols or "all symbols", body.reason)
        result = await self.direct.routed(symbols or list(self.known), body.mode, body.reason, started,
                                          self._journal_by(via), kill_timeout_s=self.settings.kill_timeout_s,
                                          kill_deadline_s=self.settings.kill_deadline_s)
        elapsed = time.monotonic() - started
        view = kill_view(body.mode, body.reason, elapsed, result)
        self.kill_latency = self.kill_latency.observe(elapsed, confirmed=view["confirmed"])
        log.warning("%skill %s done in %.1f ms%s", via, body.mode, elapsed * 1000,
                    "" if view["confirmed"] else ", NOT confirmed at the exchange for every symbol")
        return view

    async def _keep_kill_path_ready(self) -> None:
        """Every ``KILL_PATH_READY_S``: the fleet as applied, its exchange clients and its agents'
        handles ready for a kill (an agent created since, a restarted endpoint, an ``apply``)."""
        failures = 0
        while True:
            try:
                ready = await self.direct.prepare(time.monotonic())
                self.kill_path = {**ready, "at": time.time()}
                failures = 0
            except Exception as exc:  # noqa: BLE001 - a kill opens what is missing, and reports it
                failures += 1
                if failures in (1, 10) or failures % 100 == 0:
                    log.warning("kill path not made ready (%d in a row): %s", failures, first_line(exc))
            await asyncio.sleep(KILL_PATH_READY_S)

    def _journal_by(self, via: str) -> dict[str, Any]:
        """Who asked, for the journal's audit trail: the API or the console, and a fingerprint of the token."""
        from journal.audit import token_fingerprint

        if via == CLI_VIA:   # through Ray: no token was used
            return {"actor": "cli", "token_fp": None}
        return {"actor": "console" if via else "api", "token_fp": token_fingerprint(self.tokens.read())}

    @api.post("/resume", summary="resume halted symbols", openapi_extra=body_schema(ResumeRequest))
    async def resume(self, request: Request, creds: Credentials) -> dict[str, Any]:
        self._authorize(creds)
        body: ResumeRequest = await self._body(request, ResumeRequest)
        return await self._resume(body)

    async def _resume(self, body: ResumeRequest | ConsoleResumeRequest, via: str = "") -> dict[str, Any]:
        await self.direct.refresh(self.direct.gcs_wait(READ_S))   # as a kill does: a symbol added since is known
        self._traded({s: None for s in self.direct.symbols()})
        symbols = self._check_symbols(body.symbols)
        started = time.monotonic()
        log.warning("%sresume of %s requested: %s", via, symbols or "all symbols", body.reason or "(no reason)")
        asked_at = time.time()   # a resume run after this call gave up (Ray retries it) is not carried out
        result = await self.calls.from_controller("resume", symbols, {**self._journal_by(via), "reason": body.reason},
                                                  asked_at, asked_at + self.settings.kill_timeout_s,
                                                  timeout=self.settings.kill_timeout_s)
        per_symbol = result.get("symbols", {}) if isinstance(result, dict) else {}
        return {"elapsed_ms": round((time.monotonic() - started) * 1000, 1), "symbols": per_symbol}

    # --- the ops console ---------------------------------------------------------------------
    # A browser page on the same app and token (see controller/console.py): the token is POSTed once
    # by the sign-in form and never leaves the replica; the browser holds a random session id in an
    # HttpOnly, SameSite=Strict cookie scoped to the console's path. Console POSTs need the cookie,
    # the session's CSRF token in a header and a same-origin Origin; the bearer API is unchanged.

    @staticmethod
    def _console_base(request: Request) -> str:
        return cookie_path(request.scope.get("root_path", ""))

    @staticmethod
    def _scheme(request: Request) -> str:
        forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
        return forwarded if forwarded in ("http", "https") else request.url.scheme

    def _cross_site(self, request: Request) -> str | None:
        return same_origin(request.headers.get("origin"), request.headers.get("sec-fetch-site"),
                           self._scheme(request), request.headers.get("host"))

    def _console_session(self, request: Request) -> ConsoleSession:
        token = self.tokens.read()
        if token is None:
            raise HTTPException(503, f"API token not configured: expected in {self.tokens.describe()}")
        session = self.sessions.get(request.cookies.get(COOKIE_NAME), token)
        if session is None:
            raise HTTPException(401, "not signed in to the console (or the session has expired)")
        return session

    def _console_action_allowed(self, request: Request) -> ConsoleSession:
        """Session cookie, same-origin Origin and the session's CSRF token, before a byte of the body."""
        session = self._console_session(request)
        why = self._cross_site(request)
        if why:
            raise HTTPException(403, why)
        if not csrf_matches(session, request.headers.get(CSRF_HEADER)):
            raise HTTPException(403, f"missing or wrong {CSRF_HEADER} header: reload the console")
        return session

    def _page(self, body: str, status: int = 200, headers: dict[str, str] | None = None) -> HTMLResponse:
        return HTMLResponse(body, status_code=status, headers={**SECURITY_HEADERS, **(headers or {})})

    @api.get("/console", include_in_schema=False)
    async def console(self, request: Request) -> Response:
        base = self._console_base(request)
        token = self.tokens.read()
        if token is None:
            return self._page(render_signin(self.cfg.name, base, "No API token is configured for this fleet."), 503)
        session = self.sessions.get(request.cookies.get(COOKIE_NAME), token)
        if session is None:
            return self._page(render_signin(self.cfg.name, base))
        return self._page(render_console(self.cfg.name, base, session.csrf, self.known,
                                         session.expires_in(self.sessions.clock())))

    @api.get("/console/assets/{name}", include_in_schema=False)
    async def console_asset(self, name: str, v: str | None = None) -> Response:   # v: the page's cache-buster
        body = asset(name)
        if body is None:
            raise HTTPException(404, "no such console asset")
        return Response(body, media_type=ASSET_TYPES[name],
                        headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"})

    @api.post("/console/signin", include_in_schema=False)
    async def console_signin(self, request: Request) -> Response:
        base = self._console_base(request)
        why = self._cross_site(request)
        if why:
            return self._page(render_signin(self.cfg.name, base, f"Sign-in refused: {why}."), 403)
        client = _client_address(request)
        wait = self.signin_throttle.attempt(client)   # counted now, given back if the token is right
        raw = await read_body(request, SIGNIN_MAX_BYTES, form=True)
        expected = self.tokens.read()
        verdict = self.signin_throttle.judge(client, wait, expected, signin_token(raw))
        if verdict != 200 or expected is None:
            if verdict == 403:
                log.warning("console: sign-in with a wrong token from %s", client)
            text = {429: f"Too many wrong tokens: try again in {wait or 0:.0f} s.", 403: "Wrong token.",
                    503: "No API token is configured for this fleet."}[verdict]
            return self._page(render_signin(self.cfg.name, base, text), verdict,
                              {"Retry-After": str(math.ceil(wait or 1))} if verdict == 429 else None)
        session_id, _ = self.sessions.create(expected)
        log.info("console: signed in from %s (%d sessions)", client, len(self.sessions))
        # 303: the browser follows with a GET, so a reload never posts the form again.
        response = RedirectResponse(base, status_code=303, headers=SECURITY_HEADERS)
        ttl = int(self.sessions.ttl_s)
        response.set_cookie(COOKIE_NAME, session_id, max_age=ttl, expires=ttl, path=base,
                            secure=self._scheme(request) == "https", httponly=True, samesite="strict")
        return response

    @api.post("/console/signout", include_in_schema=False)
    async def console_signout(self, request: Request) -> Response:
        base = self._console_base(request)
        why = self._cross_site(request)
        if why:
            raise HTTPException(403, why)
        session_id = request.cookies.get(COOKIE_NAME)
        token = self.tokens.read()
        session = self.sessions.get(session_id, token) if token else None
        if session is not None:
            if not csrf_matches(session, request.headers.get(CSRF_HEADER)):
                raise HTTPException(403, f"missing or wrong {CSRF_HEADER} header: reload the console")
            self.sessions.drop(session_id)
            log.info("console: signed out (%d sessions)", len(self.sessions))
        response = JSONResponse({"signed_out": True}, headers={"Cache-Control": "no-store"})
        response.delete_cookie(COOKIE_NAME, path=base, secure=self._scheme(request) == "https",
                               httponly=True, samesite="strict")
        return response

    @api.get("/console/session", include_in_schema=False)
    async def console_session(self, request: Request) -> dict[str, Any]:
        session = self._console_session(request)
        return {"signed_in": True, "fleet": self.cfg.name,
                "expires_in_s": round(session.expires_in(self.sessions.clock()))}

    @api.post("/console/kill", include_in_schema=False)
    async def console_kill(self, request: Request) -> dict[str, Any]:
        self._console_action_allowed(request)
        body: ConsoleKillRequest = await self._body(request, ConsoleKillRequest)
        return await self._kill(body, via="console: ")

    @api.post("/console/resume", include_in_schema=False)
    async def console_resume(self, request: Request) -> dict[str, Any]:
        self._console_action_allowed(request)
        body: ConsoleResumeRequest = await self._body(request, ConsoleResumeRequest)
        return await self._resume(body, via="console: ")

    @api.get("/console/events", include_in_schema=False)
    async def console_events(self, request: Request) -> Response:
        """The fleet table as Server-Sent Events: a snapshot on connect, then at least every push_s."""
        self._console_session(request)
        session_id = request.cookies.get(COOKIE_NAME)
        if len(self.feed.open_streams()) >= self.settings.console_max_streams:
            raise HTTPException(429, "too many console streams open", headers={"Retry-After": "5"})
        events = self.feed.stream(lambda: self.sessions.get(session_id, self.tokens.read()) is not None)
        return StreamingResponse(events, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


# --- deploying -----------------------------------------------------------------------------------


def _resolved(cfg: FleetConfig) -> FleetConfig:
    """Make a relative token file absolute, so the replica finds it whatever its working directory."""
    if cfg.api.token_file and not os.path.isabs(cfg.api.token_file):
        api_cfg = cfg.api.model_copy(update={"token_file": os.path.abspath(cfg.api.token_file)})
        return cfg.model_copy(update={"api": api_cfg})
    return cfg


def ensure_api_token(fleet_cfg: FleetConfig) -> tuple[FleetConfig, str]:
    """Make sure the endpoint will find a token; return the config to deploy and where the token is.

    An existing token (file or environment variable) is used as is; otherwise a new one is written,
    readable by this user only, to ``api.token_file`` or ``<state_dir>/<fleet>.api.token``.
    """
    api_cfg = fleet_cfg.api
    if not api_cfg.token_file and api_cfg.token_env and os.environ.get(api_cfg.token_env, "").strip():
        return fleet_cfg, f"environment variable {api_cfg.token_env}"
    path = Path(api_cfg.token_file or Path(fleet_cfg.state_dir) / f"{fleet_cfg.name}.api.token").absolute()
    if not path.exists() or not path.read_text().strip():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    cfg = fleet_cfg.model_copy(update={"api": api_cfg.model_copy(update={"token_file": str(path)})})
    return cfg, f"file {path}"


def deploy(
    fleet_cfg: FleetConfig,
    *,
    namespace: str | None = None,
    route_prefix: str = "/",
    settings: ApiSettings = ApiSettings(),
) -> str:
    """Deploy (or update) the fleet's endpoint on the connected Ray cluster; return its base URL.

    Serve's HTTP options are cluster-wide and fixed by the first start; when Serve already runs,
    the URL returned is where it really listens. Call again after ``apply`` with the new config.
    """
    import ray
    from ray.serve.context import _get_global_client

    if not ray.is_initialized():
        raise RuntimeError("deploy() needs a Ray connection: call ray.init(...) first")
    cfg = _resolved(fleet_cfg)
    ns = namespace or cfg.namespace
    # Serve's controller, and the HTTP proxy it starts, above the agents for CPU (a kill's request passes
    # the proxy); only when this call starts Serve.
    serve.start(proxy_location="HeadOnly", http_options={"host": cfg.api.host, "port": cfg.api.port},
                controller_options={"runtime_env": above_agents_env()})
    app = FleetApi.options(
        ray_actor_options={"num_cpus": 0, "resources": {HEAD_NODE_RESOURCE: 0.001},
                           "runtime_env": above_agents_env()},
    ).bind(cfg.model_dump(mode="json"), ns, asdict(settings))
    serve.run(app, name=app_name(cfg.name), route_prefix=route_prefix)
    http = _get_global_client().http_config
    if (http.host, http.port) != (cfg.api.host, cfg.api.port):
        log.warning(
            "Serve already listens on %s:%s (config asks %s:%s); using it",
            http.host, http.port, cfg.api.host, cfg.api.port,
        )
    host = "127.0.0.1" if http.host in ("0.0.0.0", "") else http.host
    url = f"http://{host}:{http.port}{route_prefix.rstrip('/')}"
    _warn_without_token(url, cfg)
    return url


def _warn_without_token(url: str, cfg: FleetConfig) -> None:
    """The replica reads the token in its own process: say so at once if it found none there."""
    import json
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/health", timeout=10) as resp:
            health = json.loads(resp.read())
    except (OSError, ValueError) as exc:
        log.warning("could not check the endpoint at %s/health: %s", url, exc)
        return
    if not health.get("token_configured"):
        where = TokenSource(cfg.api.token_env, cfg.api.token_file).describe()
        log.warning(
            "the endpoint found no API token in its own process (looked in %s); protected endpoints "
            "answer 503. An environment variable must be set where Ray was started on the head node.",
            where,
        )


def undeploy(fleet_cfg: FleetConfig, *, namespace: str | None = None) -> None:
    """Remove the fleet's endpoint; idempotent. Serve itself stays up for other fleets."""
    import ray

    if not ray.is_initialized():
        raise RuntimeError("undeploy() needs a Ray connection: call ray.init(...) first")
    if app_name(fleet_cfg.name) in serve.status().applications:
        serve.delete(app_name(fleet_cfg.name))


def is_deployed(fleet_cfg: FleetConfig) -> bool:
    """Whether the fleet's endpoint is deployed on the connected cluster."""
    return app_name(fleet_cfg.name) in serve.status().applications
