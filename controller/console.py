"""The ops console of the fleet endpoint: sign-in sessions, CSRF and Origin checks, the pages, and
the live fleet table it pushes over Server-Sent Events.

The console is served by the same FastAPI app as the API (``/console`` under the fleet's route
prefix) and signs in with the same API token, which never travels in a URL and is never stored by
the browser: the sign-in form POSTs it once, and the app answers with a random session id in an
HttpOnly, SameSite=Strict cookie scoped to the console's path, with an expiry. The replica maps the
id (kept only as a hash) to the session; a keyed digest of the token it was signed in with ends the
session as soon as the token file is rotated. Every console POST needs the cookie, the session's
CSRF token in the ``X-CSRF-Token`` header and a same-origin ``Origin``.

Everything here is plain functions and small classes; the routes live on the deployment class in
:mod:`controller.api`. The page's script and style are files of this package (``console_assets``):
no CDN, no build step, nothing fetched from anywhere but the app.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import math
import re
import secrets
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from string import Template
from typing import Any, Callable
from urllib.parse import parse_qs

from fleet.vocabulary import KillState

_WORD = re.compile(r"[a-z_]{1,32}")
COOKIE_NAME = "mmfleet_console"
CSRF_HEADER = "X-CSRF-Token"
SESSION_TTL_S = 8 * 3600.0     # a working day; sign in again after it
MAX_SESSIONS = 256             # the oldest session goes first beyond this
SIGNIN_MAX_BYTES = 4096        # a sign-in form is one short field
SIGNIN_FAILURES = 10           # wrong tokens per client and minute before sign-in answers 429
SIGNIN_WINDOW_S = 60.0
SIGNIN_FAILURES_ALL = 100      # wrong tokens of all clients together a minute: a client's address comes
                               # from X-Forwarded-For behind a proxy on loopback, which a client can vary
# A token at least this long (the generated one has 43 characters, 256 random bits) cannot be guessed
# however many tries a hold lets through: the right one signs in even while sign-ins are held, so
# nobody can lock the desk out of the console by sending wrong tokens. A shorter token, one a desk
# chose, is held like any other while the hold lasts.
STRONG_TOKEN_CHARS = 32

ASSETS_DIR = Path(__file__).resolve().with_name("console_assets")
ASSET_TYPES = {
    "console.css": "text/css; charset=utf-8",
    "console.js": "text/javascript; charset=utf-8",
}

# The pages load nothing from anywhere but the app, run no inline script and cannot be framed.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # same-origin, not no-referrer: under no-referrer a browser sends "Origin: null" with a form POST
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


# --- sessions ------------------------------------------------------------------------------------


@dataclass
class ConsoleSession:
    csrf: str
    expires_at: float          # on the sessions' clock
    token_digest: bytes        # keyed digest of the token signed in with (never the token)

    def expires_in(self, now: float) -> float:
        return max(0.0, self.expires_at - now)


class ConsoleSessions:
    """Sessions of this replica: hash of the session id -> session. A restart signs everyone out."""

    def __init__(self, ttl_s: float = SESSION_TTL_S, max_sessions: int = MAX_SESSIONS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = float(ttl_s)
        self.max_sessions = max_sessions
        self.clock = clock
        self._key = secrets.token_bytes(32)     # keys the token digests; lives and dies with the replica
        self._by_hash: dict[bytes, ConsoleSession] = {}

    def _digest(self, token: str) -> bytes:
        return hmac.new(self._key, token.encode(), hashlib.sha256).digest()

    @staticmethod
    def _id_hash(session_id: str) -> bytes:
        return hashlib.sha256(session_id.encode()).digest()

    def create(self, token: str) -> tuple[str, ConsoleSession]:
        """A new session for a caller who presented ``token`` (already checked); its id for the cookie."""
        self._expire()
        while len(self._by_hash) >= self.max_sessions:
            self._by_hash.pop(next(iter(self._by_hash)))
        session_id = secrets.token_urlsafe(32)
        session = ConsoleSession(
            csrf=secrets.token_urlsafe(32), expires_at=self.clock() + self.ttl_s, token_digest=self._digest(token)
        )
        self._by_hash[self._id_hash(session_id)] = session
        return session_id, session

    def get(self, session_id: str | None, token: str | None) -> ConsoleSession | None:
        """The live session of ``session_id``, if it has not expired and the token has not changed."""
        if not session_id or token is None or len(session_id) > 128:
            return None
        key = self._id_hash(session_id)
        session = self._by_hash.get(key)
        if session is None:
            return None
        if self.clock() >= session.expires_at or not hmac.compare_digest(session.token_digest, self._digest(token)):
            self._by_hash.pop(key, None)
            return None
        return session

    def drop(self, session_id: str | None) -> bool:
        if not session_id:
            return False
        return self._by_hash.pop(self._id_hash(session_id), None) is not None

    def _expire(self) -> None:
        now = self.clock()
        for key in [k for k, s in self._by_hash.items() if now >= s.expires_at]:
            del self._by_hash[key]

    def __len__(self) -> int:
        self._expire()
        return len(self._by_hash)


class SignInThrottle:
    """Wrong tokens per client: beyond ``limit`` in ``window_s`` sign-in answers 429 until they age out;
    and beyond ``limit_all`` of all clients together (the address a client claims can change at will)."""

    ALL = "\x00all"   # no address reads so

    def __init__(self, limit: int = SIGNIN_FAILURES, window_s: float = SIGNIN_WINDOW_S,
                 clock: Callable[[], float] = time.monotonic, limit_all: int = SIGNIN_FAILURES_ALL) -> None:
        self.limit, self.window_s, self.clock, self.limit_all = limit, window_s, clock, limit_all
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, client: str) -> deque[float]:
        now = self.clock()
        q = self._failures.setdefault(client, deque())
        while q and now - q[0] >= self.window_s:
            q.popleft()
        return q

    def retry_after(self, client: str) -> float | None:
        """Seconds until ``client`` may try again, or None when it may now."""
        waits = [self._wait(key, limit) for key, limit in ((client, self.limit), (self.ALL, self.limit_all))]
        return max((w for w in waits if w is not None), default=None)

    def _wait(self, key: str, limit: int) -> float | None:
        q = self._recent(key)
        if len(q) < limit:
            if not q:
                self._failures.pop(key, None)
            return None
        return max(1.0, self.window_s - (self.clock() - q[-limit]))

    def attempt(self, client: str) -> float | None:
        """A sign-in begins: the seconds to wait when ``client`` is held, else None and the attempt is
        counted as a failure at once (before its body is read: parallel attempts cannot all pass the
        check), given back by :meth:`refund` when its token is right."""
        wait = self.retry_after(client)
        if wait is None:
            self.failed(client)
        return wait

    def judge(self, client: str, wait: float | None, expected: str | None, given: str | None) -> int:
        """The answer to a sign-in counted by :meth:`attempt` (``wait``: its hold): 200 the right token,
        403 a wrong one, 429 held, 503 no token configured. While held, only a strong token
        (``STRONG_TOKEN_CHARS``) that is right gets in: nobody can lock the desk out by sending wrong
        tokens, and a short one cannot be guessed past the hold."""
        if expected is None:
            if wait is None:
                self.refund(client)
            return 503
        right = given is not None and hmac.compare_digest(given.encode(), expected.encode())
        if wait is not None and not (right and len(expected) >= STRONG_TOKEN_CHARS):
            return 429
        if not right:
            return 403
        if wait is None:
            self.refund(client)
        return 200

    def refund(self, client: str) -> None:
        for key in (client, self.ALL):
            q = self._failures.get(key)
            if q:
                q.pop()

    def failed(self, client: str) -> None:
        if len(self._failures) > 10_000:        # a flood of clients: forget the quiet ones
            for c in [c for c in self._failures if not self._recent(c)]:
                self._failures.pop(c, None)
        now = self.clock()
        self._recent(client).append(now)
        self._recent(self.ALL).append(now)


# --- request checks ------------------------------------------------------------------------------


def expected_origin(scheme: str, host: str | None) -> str | None:
    return f"{scheme}://{host}".lower() if host else None


def same_origin(origin: str | None, fetch_site: str | None, scheme: str, host: str | None) -> str | None:
    """Why a state-changing browser request is refused as cross-site, or None when it is same-origin.

    ``Origin`` must be there and name this very origin (scheme, host and port as the browser
    addressed the app); ``Sec-Fetch-Site``, when the browser sends it, must say same-origin.
    """
    want = expected_origin(scheme, host)
    if not origin or origin == "null":
        return "the Origin header is missing: console actions are taken from the console page"
    if want is None or origin.lower().rstrip("/") != want:
        return "cross-origin request refused"
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        return "cross-site request refused"
    return None


def csrf_matches(session: ConsoleSession, presented: str | None) -> bool:
    return bool(presented) and hmac.compare_digest(session.csrf.encode(), presented.encode())


def signin_token(raw: bytes) -> str | None:
    """The token of a URL-encoded sign-in form, or None when the form holds none."""
    try:
        fields = parse_qs(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False, max_num_fields=8)
    except (UnicodeDecodeError, ValueError):
        return None
    values = fields.get("token") or []
    token = values[0].strip() if len(values) == 1 else ""
    return token or None


def cookie_path(root_path: str) -> str:
    """The console's path under the fleet's route prefix: the cookie goes nowhere else."""
    return (root_path or "").rstrip("/") + "/console"


# --- pages ---------------------------------------------------------------------------------------


def asset(name: str) -> bytes | None:
    """A static file of the console, or None for anything not in the fixed list."""
    if name not in ASSET_TYPES:
        return None
    return (ASSETS_DIR / name).read_bytes()


def _template(name: str) -> Template:
    return Template((ASSETS_DIR / name).read_text())


def _asset_version() -> str:
    """Changes with the assets, so a browser never runs a stale script against a newer app."""
    h = hashlib.sha256()
    for name in sorted(ASSET_TYPES):
        h.update((ASSETS_DIR / name).read_bytes())
    return h.hexdigest()[:12]


def render_signin(fleet: str, base: str, message: str = "") -> str:
    e = html.escape
    return _template("signin.html").substitute(
        fleet=e(fleet), base=e(base), version=_asset_version(),
        message=f'<p class="error" role="alert">{e(message)}</p>' if message else "",
    )


def render_console(fleet: str, base: str, csrf: str, symbols: tuple[str, ...], expires_in_s: float) -> str:
    e = html.escape
    return _template("console.html").substitute(
        fleet=e(fleet), base=e(base), csrf=e(csrf), version=_asset_version(),
        symbols=e(json.dumps(list(symbols))), expires_in=str(int(expires_in_s)),
    )


# --- the live table ------------------------------------------------------------------------------

_COUNT_LINE = re.compile(r"^(mm_fills_total|mm_grind_count_total)(?:\{[^}]*\})?\s+(\S+)", re.M)


def fills_and_grinds(exposition: str) -> dict[str, float]:
    """Fills (both sides) and grinds fired, from one agent's Prometheus page."""
    out = {"fills": 0.0, "grinds": 0.0}
    for name, value in _COUNT_LINE.findall(exposition or ""):
        try:
            v = float(value)
        except ValueError:
            continue
        if math.isfinite(v):
            out["fills" if name == "mm_fills_total" else "grinds"] += v
    return out


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _clean(value: Any, depth: int = 0) -> Any:
    """JSON-safe: no NaN or Infinity, plain containers, short strings."""
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str):
        return value if len(value) <= 300 else value[:300] + "..."
    if depth > 4:
        return str(value)[:300]
    if isinstance(value, dict):
        return {str(k): _clean(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v, depth + 1) for v in value]
    return str(value)[:300]


@dataclass
class SymbolAnswers:
    """What one collection round learnt about one symbol."""

    status: dict[str, Any] | None = None
    status_error: str | None = None
    exposure: dict[str, Any] | None = None
    exposure_error: str | None = None
    counts: dict[str, float] | None = None
    kill: dict[str, Any] | None = None        # the durable kill record (GCS)
    lease: dict[str, Any] | None = None       # the stored lease (GCS): epoch, lease_expires_in_s, lease_revoked
    restarts: int | None = None
    published_status: dict[str, Any] | None = None     # what a silent agent last published, with its age_s
    published_exposure: dict[str, Any] | None = None
    unkilled: dict[str, Any] | None = None    # a hung agent outliving Ray's kill (the controller's: epoch, pid, since)


def _unkilled(found: dict[str, Any] | None, now: float) -> dict[str, Any] | None:
    """The hung agent Ray's kill has not reached, as numbers only: its epoch, pid and seconds since."""
    if not found:
        return None
    since = _finite(found.get("since"))
    return {"epoch": _int(found.get("epoch")), "pid": _int(found.get("pid")),
            "for_s": round(max(0.0, now - since), 1) if since is not None else None}


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def console_row(symbol: str, a: SymbolAnswers) -> dict[str, Any]:
    """One row of the fleet table from the agent's status and exposure (those it last published when it
    does not answer, with their age), the durable kill state and the stored lease."""
    silent = a.status is None or a.exposure is None
    st, ex = a.status or a.published_status or {}, a.exposure or a.published_exposure or {}
    published_age = (a.published_status or a.published_exposure or {}).get("age_s") if silent else None
    kill = a.kill or {}
    lease = a.lease or {}
    parts = [_finite(ex.get(k)) for k in ("realized_pnl", "unrealized_pnl", "funding_pnl")]
    commission = _finite(ex.get("commission")) or 0.0
    pnl = sum(p for p in parts if p is not None) - commission if any(p is not None for p in parts) else None
    error = a.status_error or a.exposure_error
    return _clean({
        "symbol": symbol,
        "reachable": a.status is not None and a.status_error is None,
        "error": error,
        "state": "unreachable" if a.status_error else st.get("state"),
        "published_age_s": _finite(published_age),   # the figures are what it last published, this old
        "epoch": st.get("epoch", ex.get("epoch", lease.get("epoch"))),
        "position": _finite(ex.get("position", st.get("position"))),
        "mark": _finite(ex.get("mark")),
        "notional": _finite(ex.get("notional")),
        "worst_long": _finite(ex.get("worst_long")),
        "worst_short": _finite(ex.get("worst_short")),
        "cap": _finite(ex.get("cap")),
        "pnl": pnl,
        "realized_pnl": _finite(ex.get("realized_pnl")),
        "unrealized_pnl": _finite(ex.get("unrealized_pnl")),
        "funding_pnl": _finite(ex.get("funding_pnl")),
        "commission": _finite(ex.get("commission")),
        "fills": (a.counts or {}).get("fills"),
        "grinds": (a.counts or {}).get("grinds"),
        "open_orders": st.get("open_orders", ex.get("open_orders")),
        "user_stream": st.get("user_stream_connected"),
        "market_stream": st.get("market_stream_connected"),
        "book_age_s": _finite(st.get("last_book_age_s")),
        "reduce_only": ex.get("reduce_only"),
        # The durable record's; without it (the GCS not read) the agent's own, if it answered (never what
        # it last published: that may predate the kill).
        "kill_state": kill.get("state") or (a.exposure or {}).get("kill_state") or (a.status or {}).get("kill_state"),
        "kill_reason": kill.get("reason") or "",
        "kill_since": _finite(kill.get("since")),
        "agent_kill_state": (a.status or {}).get("kill_state"),
        # why the agent is halted or flattening: a halt of its own (a liquidation) while the durable
        # record says running is shown as the agent's
        "agent_halt_reason": (a.status or {}).get("halt_reason") or "",
        "settles_at_ms": _finite(st.get("settles_at_ms")),   # the exchange's announced delisting, if any
        # the exchange refusing its orders for now (a 429, a 418 ban, -1008): plain words only
        "exchange_holds": [h for h in st.get("exchange_holds") or () if isinstance(h, str) and _WORD.fullmatch(h)],
        "funding_interval_s": _finite(st.get("funding_interval_s")),   # the symbol's, as fundingInfo lists it
        # the books carried from the last agent lack what the exchange booked after them until these are read
        "books_gap_unread": [w for w in st.get("books_gap_unread") or () if isinstance(w, str) and _WORD.fullmatch(w)],
        "last_reconcile_repair": st.get("last_reconcile_repair"),
        "reconcile_repairs": (st.get("counters") or {}).get("reconcile_repairs"),
        "restarts": a.restarts,
        "lease_epoch": lease.get("epoch"),
        "lease_expires_in_s": _finite(lease.get("lease_expires_in_s")),
        "lease_revoked": lease.get("lease_revoked"),
        "unkilled": _unkilled(a.unkilled, time.time()),   # its hung agent outliving Ray's kill: no successor quotes
    })


def console_snapshot(fleet: str, symbols: tuple[str, ...], answers: dict[str, SymbolAnswers], *,
                     controller_error: str | None, max_total_notional: float, seq: int,
                     collected_ms: float, kill_states_error: str | None = None) -> dict[str, Any]:
    """The fleet table; the totals count the agents that answered (a silent one's last published
    figures are shown in its row, not added up)."""
    rows = [console_row(s, answers.get(s, SymbolAnswers())) for s in symbols]
    answered = [r for r in rows if r["reachable"] and r["published_age_s"] is None]
    gross = sum(abs(r["notional"] or 0.0) for r in answered)
    return _clean({
        "fleet": fleet,
        "seq": seq,
        "time_ms": int(time.time() * 1000),
        "collected_ms": round(collected_ms, 1),
        "controller_error": controller_error,       # the endpoint's watch: why the controller does not answer
        "kill_states_error": kill_states_error,     # why the durable kill states were not read (rows: the agents' own)
        "rows": rows,
        "totals": {
            "symbols": len(rows),
            "answered": len(answered),
            "halted": sum(1 for r in rows if KillState.stopped(r["kill_state"])
                          or KillState.stopped(r.get("agent_kill_state"))),
            "pnl": sum(r["pnl"] or 0.0 for r in answered),
            "gross_notional": gross,
            "max_total_notional": max_total_notional,
            "open_orders": sum(r["open_orders"] or 0 for r in answered),
        },
    })


def sse_event(event: str, data: Any, event_id: int | None = None) -> str:
    """One Server-Sent Event; the JSON is on one line, so it is one ``data:`` field."""
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'), allow_nan=False)}\n\n"

