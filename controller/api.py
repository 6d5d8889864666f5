"""The fleet's HTTP endpoint: a Ray Serve deployment with a FastAPI ingress.

It shows the whole fleet (status, exposure, merged Prometheus metrics) and holds the kill switches.
Reads go straight to the agent actors, concurrently and with a timeout, so one stuck agent is
reported instead of stalling the page; kill, resume and kill state go through the controller, which
owns the durable kill state. The bearer token is read inside the replica (env var or file), never
passed as an argument, and compared in constant time.

Request bodies are taken strictly: the token is checked before a byte of the body is read, a body
over 64 KiB is a 413, the JSON is parsed without NaN, Infinity or out-of-range numbers and without
duplicate keys, and the models are strict (a boolean is ``true`` or ``false``, never ``"yes"`` or
``1``; unknown fields are refused). A 422 names the field and never echoes a long input back.

The same app serves the ops console (``/console``: sign-in session, CSRF-checked actions, the fleet
table pushed over Server-Sent Events); its pieces are in :mod:`controller.console`.
"""

# No ``from __future__ import annotations`` here: FastAPI reads the ingress methods' annotations
# (``Credentials``, request bodies) as objects, and Serve's wrapping hides the module they live in.

import asyncio
import hmac
import json
import logging
import math
import os
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, model_validator
from ray import serve

from agents.logging import install_log_escaping
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
    SymbolAnswers,
    asset,
    console_snapshot,
    cookie_path,
    csrf_matches,
    fills_and_grinds,
    render_console,
    render_signin,
    same_origin,
    signin_token,
    sse_event,
)
from controller.controller import AGENT_PREFIX, CONTROLLER_NAME
from controller.federation import AgentScrape, FleetView, KillLatency, render_fleet_page
from fleet.config import FleetConfig

log = logging.getLogger("mmfleet.api")

HEAD_NODE_RESOURCE = "node:__internal_head__"


def app_name(fleet_name: str) -> str:
    """The Serve application name of a fleet's endpoint."""
    return f"fleet-api-{fleet_name}"


@dataclass(frozen=True)
class ApiSettings:
    """Timeouts of the endpoint; plain values so they travel as deployment arguments."""

    agent_timeout_s: float = 2.0        # status / exposure / metrics per agent
    controller_timeout_s: float = 5.0   # kill states, status
    kill_timeout_s: float = 60.0        # kill / resume (includes the controller's emergency path)
    console_session_s: float = SESSION_TTL_S   # a console sign-in lasts this long
    console_push_s: float = 1.0         # the console's table is pushed at least this often
    console_slow_s: float = 5.0         # fills, grinds and restarts (metrics pages, GCS) this often
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
                return token
        if self.env:
            token = os.environ.get(self.env, "").strip()
            if token:
                return token
        return None

    def describe(self) -> str:
        where = [f"file {self.file}"] if self.file else []
        where += [f"environment variable {self.env}"] if self.env else []
        return " or ".join(where) or "nowhere (api.token_env and api.token_file are both unset)"


@dataclass(frozen=True)
class Answer:
    """One actor's answer to one call, or why there is none."""

    value: Any = None
    error: str | None = None
    elapsed_s: float = 0.0
    refused: bool = False   # the actor answered by refusing the arguments (ValueError, LookupError)
    raised: bool = False    # the actor answered by failing otherwise

    @property
    def ok(self) -> bool:
        return self.error is None


# --- request bodies ------------------------------------------------------------------------------

Symbol = Annotated[str, StringConstraints(pattern=r"^[A-Z0-9]{2,30}$")]


class _Selection(BaseModel):
    # strict: ``all`` is true or false, never "yes", "true", 1 or 1.0 (a mistyped resume must not resume all)
    model_config = ConfigDict(strict=True, extra="forbid")

    symbols: list[Symbol] | None = Field(
        None, max_length=1000, description="symbols to act on, e.g. [\"ETHUSDC\"]"
    )
    all: bool = Field(False, description="act on every symbol of the fleet")

    @model_validator(mode="after")
    def _one_selection(self) -> "_Selection":
        if self.all and self.symbols:
            raise ValueError("give either symbols or all=true, not both")
        if not self.all and not self.symbols:
            raise ValueError("give symbols (a non-empty list) or all=true")
        return self


class KillRequest(_Selection):
    mode: Literal["halt", "flatten"] = Field("halt", description="halt: cancel all orders; flatten: also close")
    reason: str = Field(min_length=1, max_length=500, description="why; kept with the kill state and logged")


class ResumeRequest(_Selection):
    reason: str = Field("", max_length=500)


def _reason_given(reason: str) -> str:
    if not reason.strip():
        raise ValueError("give a reason: it is kept with the kill state and logged")
    return reason


class ConsoleKillRequest(KillRequest):
    """A kill from the console: the reason must say something."""

    @model_validator(mode="after")
    def _reason(self) -> "ConsoleKillRequest":
        _reason_given(self.reason)
        return self


class ConsoleResumeRequest(_Selection):
    """A resume from the console: a reason is required, as for a kill."""

    reason: str = Field(min_length=1, max_length=500, description="why; logged")

    @model_validator(mode="after")
    def _reason(self) -> "ConsoleResumeRequest":
        _reason_given(self.reason)
        return self


MAX_BODY_BYTES = 64 * 1024   # a kill or resume body is a few hundred bytes
INPUT_SHOWN = 80             # characters of an offending input a 422 shows


class _NonFinite:
    """A NaN, an Infinity or a number too large for a float, as written in the body."""

    def __init__(self, text: str) -> None:
        self.text = text


class _DuplicateKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _float_or_flag(text: str) -> Any:
    value = float(text)
    return value if math.isfinite(value) else _NonFinite(text)


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def _non_finite(value: Any) -> tuple[tuple[Any, ...], str] | None:
    """Where the first non-finite number of a parsed body is, and how it was written."""
    todo: list[tuple[tuple[Any, ...], Any]] = [((), value)]
    while todo:
        loc, v = todo.pop()
        if isinstance(v, _NonFinite):
            return loc, v.text
        if isinstance(v, dict):
            todo.extend(((*loc, k), x) for k, x in reversed(v.items()))
        elif isinstance(v, list):
            todo.extend(((*loc, i), x) for i, x in reversed(list(enumerate(v))))
    return None


def shown_input(value: Any) -> Any:
    """What a 422 may echo of an input: short values as they are, long ones trimmed or described."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)   # a JSON answer holds no NaN
    if isinstance(value, int):
        return value if abs(value) < 10**18 else f"<integer of {len(str(abs(value)))} digits>"
    if isinstance(value, str):
        return value if len(value) <= INPUT_SHOWN else value[:INPUT_SHOWN] + f"... ({len(value)} characters)"
    if isinstance(value, dict | list):
        try:
            if len(json.dumps(value, allow_nan=False)) <= INPUT_SHOWN:
                return value
        except (TypeError, ValueError):
            pass
        return f"<object with {len(value)} keys>" if isinstance(value, dict) else f"<array of {len(value)} items>"
    return shown_input(str(value))


def _problem(kind: str, loc: tuple[Any, ...], msg: str, value: Any = None) -> dict[str, Any]:
    return {"type": kind, "loc": ["body", *loc], "msg": msg, "input": shown_input(value)}


def validation_detail(errors: list[dict[str, Any]], prefix: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """Pydantic's errors as a 422 lists them: type, field, message and a trimmed input (no context)."""
    return [
        {"type": e.get("type"), "loc": [*prefix, *e.get("loc", ())], "msg": e.get("msg"),
         "input": shown_input(e.get("input"))}
        for e in errors
    ]


def parse_body(raw: bytes, model: type[BaseModel]) -> Any:
    """``model`` from a JSON body, strictly; HTTPException(422) naming the field otherwise."""
    if not raw.strip():
        raise HTTPException(422, [_problem("missing", (), "Field required: send a JSON object")])
    try:
        data = json.loads(
            raw,
            parse_constant=_NonFinite,         # NaN, Infinity, -Infinity
            parse_float=_float_or_flag,        # 1e999 and the like
            object_pairs_hook=_object,
        )
    except _DuplicateKey as exc:
        raise HTTPException(
            422, [_problem("duplicate_key", (exc.key,), "duplicate key: give each field once")]
        ) from None
    except json.JSONDecodeError as exc:
        raise HTTPException(
            422, [_problem("json_invalid", (exc.pos,), f"JSON decode error: {exc.msg}")]
        ) from None
    except (ValueError, RecursionError) as exc:   # bad encoding, huge integers, deep nesting
        raise HTTPException(422, [_problem("json_invalid", (), f"JSON decode error: {_first_line(exc)}")]) from None
    bad = _non_finite(data)
    if bad is not None:
        loc, text = bad
        raise HTTPException(
            422, [_problem("finite_number", loc, "Input should be a finite number (no NaN, Infinity or "
                           "numbers beyond a float's range)", text)]
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise HTTPException(
            422, validation_detail(exc.errors(include_url=False, include_context=False), ("body",))
        ) from None


def body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body of an endpoint that reads its body itself (after the token check)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


async def read_body(request: Request, limit: int = MAX_BODY_BYTES, *, form: bool = False) -> bytes:
    """The body, at most ``limit`` bytes (413 beyond, without reading the rest); JSON or no content type
    (``form``: a URL-encoded form, as the console's sign-in sends it)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if form:
        if ctype != "application/x-www-form-urlencoded":
            raise HTTPException(415, "send the sign-in form as application/x-www-form-urlencoded")
    elif ctype and ctype != "application/json" and not ctype.endswith("+json"):
        raise HTTPException(415, f"send the body as application/json, not {shown_input(ctype)}")
    declared = request.headers.get("content-length")
    if declared is not None:
        declared = declared.strip()
        if not (declared.isascii() and declared.isdigit()):
            raise HTTPException(400, "invalid Content-Length header")
        if int(declared) > limit:
            raise HTTPException(413, f"request body of {int(declared)} bytes is over the limit of {limit} bytes")
    size = 0
    chunks = []
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPException(413, f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


# --- pure helpers --------------------------------------------------------------------------------
# Defined before the deployment class: Serve captures the class (and the globals it uses) when it is
# decorated, so anything the replica calls must already exist at that point.

_SUMMED = ("notional", "realized_pnl", "unrealized_pnl", "funding_pnl", "commission")


def fleet_totals(per_symbol: dict[str, dict[str, Any]], max_total_notional: float) -> dict[str, Any]:
    """Fleet sums over the symbols that answered; ``complete`` says whether all did."""
    answered = [e for e in per_symbol.values() if e.get("reachable")]
    totals: dict[str, Any] = {}
    for key in _SUMMED:
        totals[key] = sum(_num(e.get(key)) for e in answered)
    gross = sum(abs(_num(e.get("notional"))) for e in answered)
    totals["net_notional"] = totals.pop("notional")
    totals["gross_notional"] = gross
    totals["total_pnl"] = totals["realized_pnl"] + totals["unrealized_pnl"] + totals["funding_pnl"]
    totals["net_pnl"] = totals["total_pnl"] - totals["commission"]
    totals["max_total_notional"] = max_total_notional
    totals["notional_used"] = gross / max_total_notional if max_total_notional else None
    totals["symbols_answered"] = len(answered)
    totals["symbols_missing"] = sorted(s for s, e in per_symbol.items() if not e.get("reachable"))
    totals["complete"] = not totals["symbols_missing"]
    return totals


def _num(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return 0.0
    return out if math.isfinite(out) else 0.0


def _kill_state_map(value: Any) -> dict[str, str]:
    """The controller's kill states as ``{symbol: state}``, whatever detail it adds per symbol."""
    if not isinstance(value, dict):
        return {}
    source = value.get("kill_states", value) if isinstance(value.get("kill_states"), dict) else value
    out = {}
    for sym, state in source.items():
        if isinstance(state, str):
            out[sym] = state
        elif isinstance(state, dict):
            st = state.get("state") or state.get("kill_state")
            if isinstance(st, str):
                out[sym] = st
    return out


def _as_text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes | bytearray) else str(value)


def _first_line(exc: BaseException) -> str:
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]


# --- the deployment ------------------------------------------------------------------------------

api = FastAPI(
    title="mmfleet",
    description="Exposure, status, merged metrics and kill switches of one market-making fleet.",
    version="1",
)
_bearer = HTTPBearer(auto_error=False, description="the fleet API token")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


@api.exception_handler(RequestValidationError)
async def _validation_failed(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's own validation errors (query, headers) without long inputs echoed back."""
    return JSONResponse(status_code=422, content={"detail": validation_detail(list(exc.errors()))})


@serve.deployment(num_replicas=1, max_ongoing_requests=64, ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class FleetApi:
    """One replica per fleet; everything it knows comes from the controller and the agents."""

    def __init__(self, fleet_config: dict[str, Any], namespace: str, settings: dict[str, float]):
        self.cfg = FleetConfig.model_validate(fleet_config)
        self.namespace = namespace
        self.settings = ApiSettings(**settings)
        self.symbols: tuple[str, ...] = tuple(e.symbol for e in self.cfg.symbols)
        self.known: tuple[str, ...] = self.symbols   # last symbol list the controller reported
        self.tokens = TokenSource(self.cfg.api.token_env, self.cfg.api.token_file)
        self.handles: dict[str, Any] = {}       # actor name -> handle, dropped when the actor is gone
        self.kill_latency = KillLatency()
        self.sessions = ConsoleSessions(ttl_s=self.settings.console_session_s)
        self.signin_throttle = SignInThrottle()
        self.console_latest: dict[str, Any] | None = None   # the last snapshot of the fleet table
        self.console_seq = 0
        self.console_streams: dict[int, float] = {}   # open stream -> when it last pushed
        self.console_fresh = asyncio.Event()          # set (and replaced) on every new snapshot
        self.console_collector: asyncio.Task | None = None
        self.console_slow: tuple[float, dict[str, dict[str, float]], dict[str, int]] = (-math.inf, {}, {})
        install_log_escaping()   # a kill reason with a newline cannot forge a log line
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

    # --- actor calls ---

    def _handle(self, name: str) -> Any:
        import ray

        handle = self.handles.get(name)
        if handle is None:
            handle = ray.get_actor(name, namespace=self.namespace)   # ValueError when absent
            self.handles[name] = handle
        return handle

    async def _call(self, name: str, method: str, timeout: float, *args: Any) -> Answer:
        """Call ``name.method(*args)``; every failure becomes an :class:`Answer` saying what went wrong."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        started = time.monotonic()

        def failed(msg: str, refused: bool = False, raised: bool = False) -> Answer:
            return Answer(error=msg, elapsed_s=time.monotonic() - started, refused=refused, raised=raised)

        try:
            handle = self._handle(name)
        except ValueError:
            return failed(f"no actor {name} in namespace {self.namespace}")
        try:
            ref = getattr(handle, method).remote(*args)
            value = await asyncio.wait_for(ref, timeout)
        except asyncio.TimeoutError:
            return failed(f"{name}.{method} did not answer within {timeout:g} s")
        except RayActorError as exc:
            self.handles.pop(name, None)
            return failed(f"{name} is unavailable: {_first_line(exc)}")
        except RayTaskError as exc:
            cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else exc
            if isinstance(cause, ValueError | LookupError):
                return failed(f"{name}.{method} refused: {_first_line(cause)}", refused=True)
            return failed(f"{name}.{method} failed: {type(cause).__name__}: {_first_line(cause)}", raised=True)
        except ray.exceptions.RayError as exc:
            return failed(f"{name}.{method} failed: {_first_line(exc)}")
        except Exception as exc:  # noqa: BLE001 - an agent's own error is reported, not raised
            return failed(f"{name}.{method} failed: {type(exc).__name__}: {_first_line(exc)}")
        return Answer(value=value, elapsed_s=time.monotonic() - started)

    async def _ask_agents(self, method: str, symbols: tuple[str, ...]) -> dict[str, Answer]:
        answers = await asyncio.gather(
            *(self._call(AGENT_PREFIX + s, method, self.settings.agent_timeout_s) for s in symbols)
        )
        return dict(zip(symbols, answers))

    async def _ask_controller(self, method: str, *args: Any, timeout: float | None = None) -> Answer:
        return await self._call(CONTROLLER_NAME, method, timeout or self.settings.controller_timeout_s, *args)

    async def _from_controller(self, method: str, *args: Any, timeout: float | None = None) -> Any:
        ans = await self._ask_controller(method, *args, timeout=timeout)
        if ans.refused:
            raise HTTPException(422, f"the fleet controller refused: {ans.error}")
        if ans.raised:
            raise HTTPException(502, f"the fleet controller failed: {ans.error}")
        if not ans.ok:
            raise HTTPException(503, f"fleet controller not reachable: {ans.error}")
        return ans.value

    def _traded(self, controller_symbols: Any) -> tuple[str, ...]:
        """The symbols the fleet trades now: the controller's applied list, else the deployed config's.

        ``apply`` may add or remove symbols after the endpoint was deployed; what the controller
        reports wins, and is remembered for validating kill and resume requests.
        """
        if isinstance(controller_symbols, dict) and controller_symbols:
            self.known = tuple(dict.fromkeys(str(s) for s in controller_symbols))
        return self.known

    async def _restarts(self, symbols: tuple[str, ...]) -> dict[str, int]:
        """Restart counts as Ray's GCS records them (the agents themselves cannot know)."""
        ids = {}
        for sym in symbols:
            try:
                ids[sym] = self._handle(AGENT_PREFIX + sym)._actor_id.hex()
            except ValueError:
                continue
        if not ids:
            return {}

        def lookup() -> dict[str, int]:
            from ray._private import state

            alive = state.actors(actor_state_name="ALIVE")   # one GCS call for the whole fleet
            return {
                sym: int(alive[actor_id].get("NumRestarts", 0)) for sym, actor_id in ids.items() if actor_id in alive
            }

        try:
            return await asyncio.wait_for(asyncio.to_thread(lookup), self.settings.agent_timeout_s)
        except Exception as exc:  # noqa: BLE001 - restarts are informative; the page still renders
            log.warning("restart counts unavailable: %s", _first_line(exc))
            return {}

    def _check_symbols(self, symbols: list[str] | None) -> list[str] | None:
        if symbols is None:
            return None
        unknown = [s for s in symbols if s not in self.known]
        if unknown:
            raise HTTPException(
                404, f"unknown symbol(s): {', '.join(unknown)}; this fleet trades {', '.join(self.known)}"
            )
        return list(dict.fromkeys(symbols))

    # --- endpoints ---

    @api.get("/health", summary="liveness of the endpoint (open)")
    async def health(self) -> dict[str, Any]:
        # Whether a token was found (never the token): protected endpoints answer 503 without one.
        return {
            "ok": True,
            "fleet": self.cfg.name,
            "symbols": len(self.known),
            "token_configured": self.tokens.read() is not None,
        }

    @api.get("/status", summary="per agent: state, epoch, lease, streams, book age, restarts")
    async def status(self, creds: Credentials) -> dict[str, Any]:
        self._authorize(creds)
        controller = await self._ask_controller("status", timeout=self.settings.agent_timeout_s)
        book = controller.value.get("symbols", {}) if controller.ok and isinstance(controller.value, dict) else {}
        symbols = self._traded(book)
        agents = await self._ask_agents("status", symbols)
        restarts = await self._restarts(symbols)
        per_symbol = {}
        for sym, ans in agents.items():
            entry: dict[str, Any] = {"reachable": ans.ok, "answer_ms": round(ans.elapsed_s * 1000, 1)}
            entry.update(ans.value if ans.ok and isinstance(ans.value, dict) else {})
            if not ans.ok:
                entry["error"] = ans.error
            if sym in restarts:
                entry["restarts"] = restarts[sym]
            if sym in book:
                entry["lease"] = book[sym]          # epoch, holder, expiry, kill state per the controller
            per_symbol[sym] = entry
        summary = (
            {"reachable": True, **{k: v for k, v in controller.value.items() if k != "symbols"}}
            if controller.ok and isinstance(controller.value, dict)
            else {"reachable": False, "error": controller.error or "unexpected answer"}
        )
        return {
            "fleet": self.cfg.name,
            "namespace": self.namespace,
            "agents_expected": len(symbols),
            "agents_up": sum(1 for a in agents.values() if a.ok),
            "agents": per_symbol,
            "controller": summary,
        }

    @api.get("/exposure", summary="per symbol position, notional, worst case vs cap, P&L; fleet totals")
    async def exposure(self, creds: Credentials) -> dict[str, Any]:
        self._authorize(creds)
        kill = await self._ask_controller("kill_states", timeout=self.settings.agent_timeout_s)
        kill_states = _kill_state_map(kill.value) if kill.ok else {}
        agents = await self._ask_agents("exposure", self._traded(kill_states))
        per_symbol = {}
        for sym, ans in agents.items():
            entry: dict[str, Any] = {"reachable": ans.ok}
            if ans.ok and isinstance(ans.value, dict):
                entry.update(ans.value)
            elif not ans.ok:
                entry["error"] = ans.error
            if sym in kill_states:
                # The controller's state is the durable one; the agent's view is kept if it differs.
                if "kill_state" in entry and entry["kill_state"] != kill_states[sym]:
                    entry["agent_kill_state"] = entry["kill_state"]
                entry["kill_state"] = kill_states[sym]
            per_symbol[sym] = entry
        return {
            "fleet": self.cfg.name,
            "symbols": per_symbol,
            "totals": fleet_totals(per_symbol, self.cfg.risk.max_total_notional),
            "kill_states_error": None if kill.ok else kill.error,
        }

    @api.get("/metrics", summary="every agent's metrics merged, plus fleet series (Prometheus text)")
    async def metrics(self, creds: Credentials) -> Response:
        if self.cfg.api.metrics_require_auth:
            self._authorize(creds)
        started = time.monotonic()
        kill = await self._ask_controller("kill_states", timeout=self.settings.agent_timeout_s)
        kill_states = _kill_state_map(kill.value) if kill.ok else {}
        symbols = self._traded(kill_states)
        agents, restarts = await asyncio.gather(self._ask_agents("metrics", symbols), self._restarts(symbols))
        scrapes = [
            AgentScrape(
                symbol=sym,
                exposition=_as_text(ans.value) if ans.ok else None,
                error=ans.error,
                elapsed_s=ans.elapsed_s,
            )
            for sym, ans in agents.items()
        ]
        view = FleetView(
            fleet=self.cfg.name,
            symbols=symbols,
            kill_states=kill_states,
            restarts=restarts,
            kill_latency=self.kill_latency,
            controller_up=kill.ok,
        )
        # Parsing 50 pages takes tens of ms: off the event loop, so a kill is not queued behind it.
        page = await asyncio.to_thread(render_fleet_page, view, scrapes)
        for problem in page.dropped:
            log.warning("metrics: %s", problem)
        for s in scrapes:
            if not s.answered:
                log.warning("metrics: %s did not answer: %s", s.symbol, s.error)
        log.debug("metrics page built in %.1f ms", (time.monotonic() - started) * 1000)
        return Response(content=page.body, media_type=CONTENT_TYPE_LATEST)

    @api.get("/kill", summary="kill state per symbol (from the controller)")
    async def kill_states(self, creds: Credentials) -> dict[str, Any]:
        self._authorize(creds)
        return {"fleet": self.cfg.name, "kill_states": await self._from_controller("kill_states")}

    async def _body(self, request: Request, model: type[BaseModel]) -> Any:
        """The request's body as ``model``; call only after :meth:`_authorize`."""
        return parse_body(await read_body(request), model)

    # The body is not a FastAPI parameter: FastAPI would read and validate it before the token check.

    @api.post("/kill", summary="halt or flatten symbols; answers once 0 open orders are confirmed",
              openapi_extra=body_schema(KillRequest))
    async def kill(self, request: Request, creds: Credentials) -> dict[str, Any]:
        self._authorize(creds)
        body: KillRequest = await self._body(request, KillRequest)
        return await self._kill(body)

    async def _kill(self, body: KillRequest, via: str = "") -> dict[str, Any]:
        symbols = self._check_symbols(body.symbols)
        started = time.monotonic()
        log.warning("%skill %s of %s requested: %s", via, body.mode, symbols or "all symbols", body.reason)
        result = await self._from_controller(
            "kill", symbols, body.mode, body.reason, self._journal_by(via), timeout=self.settings.kill_timeout_s
        )
        elapsed = time.monotonic() - started
        self.kill_latency = self.kill_latency.observe(elapsed)
        log.warning("%skill %s done in %.1f ms", via, body.mode, elapsed * 1000)
        per_symbol = result.get("symbols", {}) if isinstance(result, dict) else {}
        return {
            "mode": body.mode,
            "reason": body.reason,
            "elapsed_ms": round(elapsed * 1000, 1),
            # every symbol confirmed with 0 open orders at the exchange
            "confirmed": bool(per_symbol) and all(v.get("open_orders") == 0 for v in per_symbol.values()),
            "symbols": per_symbol,
        }

    def _journal_by(self, via: str) -> dict[str, Any]:
        """Who asked, for the journal's audit trail: the API or the console, and a fingerprint of the token."""
        from journal.audit import token_fingerprint

        return {"actor": "console" if via else "api", "token_fp": token_fingerprint(self.tokens.read())}

    @api.get("/pnl", summary="P&L per symbol and fleet from the trade journal, split into spread, inventory, funding, fees")
    async def pnl(self, creds: Credentials, since: int | None = None, symbol: str | None = None) -> dict[str, Any]:
        self._authorize(creds)
        from journal.db import make_engine, target_of
        from journal.pnl import compute

        def report() -> dict[str, Any]:
            engine = make_engine(target_of(self.cfg))
            try:
                return compute(engine, since_ms=since, symbols=[symbol.upper()] if symbol else None, fleet=self.cfg.name)
            finally:
                engine.dispose()

        try:
            return {"fleet": self.cfg.name, **await asyncio.to_thread(report)}
        except Exception as exc:  # noqa: BLE001 - a journal that does not answer is a 503, never a stack trace
            raise HTTPException(503, f"journal not readable: {_first_line(exc)}") from None

    @api.post("/resume", summary="resume halted symbols", openapi_extra=body_schema(ResumeRequest))
    async def resume(self, request: Request, creds: Credentials) -> dict[str, Any]:
        self._authorize(creds)
        body: ResumeRequest = await self._body(request, ResumeRequest)
        return await self._resume(body)

    async def _resume(self, body: ResumeRequest | ConsoleResumeRequest, via: str = "") -> dict[str, Any]:
        symbols = self._check_symbols(body.symbols)
        started = time.monotonic()
        log.warning("%sresume of %s requested: %s", via, symbols or "all symbols", body.reason or "(no reason)")
        result = await self._from_controller("resume", symbols, {**self._journal_by(via), "reason": body.reason},
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
    async def console_asset(self, name: str) -> Response:
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
        client = request.client.host if request.client else "unknown"
        wait = self.signin_throttle.retry_after(client)
        if wait is not None:
            return self._page(render_signin(self.cfg.name, base, f"Too many wrong tokens: try again in {wait:.0f} s."),
                              429, {"Retry-After": str(math.ceil(wait))})
        raw = await read_body(request, SIGNIN_MAX_BYTES, form=True)
        expected = self.tokens.read()
        if expected is None:
            return self._page(render_signin(self.cfg.name, base, "No API token is configured for this fleet."), 503)
        given = signin_token(raw)
        if given is None or not hmac.compare_digest(given.encode(), expected.encode()):
            self.signin_throttle.failed(client)
            log.warning("console: sign-in with a wrong token from %s", client)
            return self._page(render_signin(self.cfg.name, base, "Wrong token."), 403)
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
        if len(self._console_open_streams()) >= self.settings.console_max_streams:
            raise HTTPException(429, "too many console streams open", headers={"Retry-After": "5"})
        stream_id = secrets.randbits(63)
        self.console_streams[stream_id] = time.monotonic()
        self._console_ensure_collector()
        push_s = self.settings.console_push_s

        async def events() -> Any:
            try:
                yield f"retry: {int(push_s * 2000)}\n\n"
                while True:
                    self.console_streams[stream_id] = time.monotonic()
                    if self.sessions.get(session_id, self.tokens.read()) is None:
                        yield sse_event("signedout", {"reason": "the session ended"})
                        return
                    snap = self.console_latest
                    if snap is None:
                        yield ": waiting for the first snapshot\n\n"
                    else:
                        yield sse_event("snapshot", snap, snap["seq"])
                    fresh = self.console_fresh
                    try:
                        await asyncio.wait_for(fresh.wait(), push_s)
                    except asyncio.TimeoutError:
                        pass
            finally:
                self.console_streams.pop(stream_id, None)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    def _console_open_streams(self) -> dict[int, float]:
        """Streams that pushed lately (one whose client left without a goodbye ages out)."""
        cutoff = time.monotonic() - max(10.0, 5 * self.settings.console_push_s)
        for sid in [s for s, t in self.console_streams.items() if t < cutoff]:
            self.console_streams.pop(sid, None)
        return self.console_streams

    def _console_ensure_collector(self) -> None:
        if self.console_collector is None or self.console_collector.done():
            self.console_collector = asyncio.get_running_loop().create_task(self._console_collect())

    async def _console_collect(self) -> None:
        """One collector for every open stream: a snapshot each push_s while anyone watches."""
        push_s = self.settings.console_push_s
        while self._console_open_streams():
            started = time.monotonic()
            try:
                snap = await self._console_snapshot()
            except Exception as exc:  # noqa: BLE001 - the streams keep the last snapshot
                log.warning("console: snapshot failed: %s", _first_line(exc))
            else:
                self.console_latest = snap
                fresh, self.console_fresh = self.console_fresh, asyncio.Event()
                fresh.set()
            await asyncio.sleep(max(0.05, push_s - (time.monotonic() - started)))
        # No await from the check above to here: a stream opening now starts a new collector.
        self.console_latest = None

    async def _console_counts(self, symbols: tuple[str, ...]) -> tuple[dict[str, dict[str, float]], dict[str, int]]:
        """Fills and grinds (from the agents' metrics pages) and restarts, refreshed every console_slow_s."""
        at, counts, restarts = self.console_slow
        if time.monotonic() - at < self.settings.console_slow_s and set(symbols) <= set(counts):
            return counts, restarts
        pages, restarts = await asyncio.gather(self._ask_agents("metrics", symbols), self._restarts(symbols))
        fresh = {s: fills_and_grinds(_as_text(a.value)) for s, a in pages.items() if a.ok}
        counts = {**{s: c for s, c in counts.items() if s in symbols}, **fresh}
        self.console_slow = (time.monotonic(), counts, restarts)
        return counts, restarts

    async def _console_snapshot(self) -> dict[str, Any]:
        started = time.monotonic()
        timeout = self.settings.agent_timeout_s
        ctrl, kills = await asyncio.gather(
            self._ask_controller("status", timeout=timeout), self._ask_controller("kill_states", timeout=timeout)
        )
        book = ctrl.value.get("symbols", {}) if ctrl.ok and isinstance(ctrl.value, dict) else {}
        symbols = self._traded(book)
        status, exposure, (counts, restarts) = await asyncio.gather(
            self._ask_agents("status", symbols), self._ask_agents("exposure", symbols), self._console_counts(symbols)
        )
        kill_map = kills.value if kills.ok and isinstance(kills.value, dict) else {}
        answers = {}
        for sym in symbols:
            st, ex = status[sym], exposure[sym]
            kill = kill_map.get(sym)
            answers[sym] = SymbolAnswers(
                status=st.value if st.ok and isinstance(st.value, dict) else None,
                status_error=st.error,
                exposure=ex.value if ex.ok and isinstance(ex.value, dict) else None,
                exposure_error=ex.error,
                counts=counts.get(sym),
                kill=kill if isinstance(kill, dict) else ({"state": kill} if isinstance(kill, str) else None),
                lease=book.get(sym) if isinstance(book.get(sym), dict) else None,
                restarts=restarts.get(sym),
            )
        self.console_seq += 1
        problem = None if ctrl.ok and kills.ok else (ctrl.error or kills.error or "unexpected answer")
        return console_snapshot(
            self.cfg.name, symbols, answers, controller_error=problem,
            max_total_notional=self.cfg.risk.max_total_notional, seq=self.console_seq,
            collected_ms=(time.monotonic() - started) * 1000,
        )


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
    serve.start(proxy_location="HeadOnly", http_options={"host": cfg.api.host, "port": cfg.api.port})
    app = FleetApi.options(
        ray_actor_options={"num_cpus": 0, "resources": {HEAD_NODE_RESOURCE: 0.001}},
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
