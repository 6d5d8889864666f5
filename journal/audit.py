"""Operator and controller events in the journal: up, apply (config hash and content, secrets
removed), kill and resume (reason, who, a fingerprint of the token: never the token), lease changes.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import re
import time
import uuid
from typing import Any

from fleet.config import url_holds_password

log = logging.getLogger("mmfleet.journal")
CURSOR_WAIT_S = 3.0   # the controller's read of a symbol's newest fill: a journal slower than this is not waited for

# Keys whose values are secrets wherever they appear; *_env / *_file name where a secret lives (kept).
_SECRET_KEY = re.compile(r"(secret|password|passwd|token|api_key|apikey|private_key|credential)", re.I)
_WHERE_KEY = re.compile(r"(_env|_file|_where|_configured)$", re.I)
REDACTED = "<redacted>"
_URL_SECRET_PARAM = re.compile(r"([?&](?:ssl)?password=)[^&#]*", re.I)   # a query's secret (the config refuses it)


def token_fingerprint(token: str | None) -> str | None:
    """Which token acted, without the token: the first 12 hex digits of its SHA-256."""
    if not token:
        return None
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()[:12]


def redact(doc: Any) -> Any:
    """A copy of a config document with every secret value replaced (names of env vars and files kept)."""
    if isinstance(doc, dict):
        out = {}
        for k, v in doc.items():
            if isinstance(k, str) and _SECRET_KEY.search(k) and not _WHERE_KEY.search(k) and v not in (None, ""):
                out[k] = REDACTED if not isinstance(v, (dict, list)) else redact(v)
            else:
                out[k] = redact(v)
        return out
    if isinstance(doc, list):
        return [redact(v) for v in doc]
    if isinstance(doc, str) and "://" in doc:
        # a URL with user:password@ -> user@, and ?password=... -> ?password=***; one the config's rule
        # still finds a password in (?password%20=..., a user part with a /) -> only its scheme
        doc = re.sub(r"(://[^/:@]+):[^/@]*@", r"\1@", doc) if "@" in doc else doc
        doc = _URL_SECRET_PARAM.sub(rf"\1{REDACTED}", doc)
        left = doc.replace(f"password={REDACTED}", "")
        return f"{doc.partition('://')[0]}://{REDACTED}" if url_holds_password(left) else doc
    return doc


def config_hash(doc: Any) -> str:
    return hashlib.sha256(json.dumps(redact(doc), sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def event_row(fleet: str, kind: str, *, actor: str, symbol: str | None = None, account: str | None = None,
              epoch: int | None = None, reason: str | None = None, token_fp: str | None = None,
              content: Any = None, detail: Any = None) -> dict[str, Any]:
    return {
        "uid": uuid.uuid4().hex, "ts_ms": int(time.time() * 1000), "fleet": fleet, "account": account,
        "symbol": symbol, "epoch": epoch, "kind": kind[:40], "actor": actor[:16], "reason": reason,
        "token_fp": token_fp, "config_hash": config_hash(content) if content is not None else None,
        "content": json.dumps(redact(content), sort_keys=True, default=str) if content is not None else None,
        "detail": json.dumps(redact(detail), sort_keys=True, default=str) if detail is not None else None,
    }


class AuditLog:
    """A process's writer of operator events (the controller's, or a CLI's for one event)."""

    def __init__(self, cfg: Any, name: str) -> None:
        from .db import target_of
        from .writer import JournalWriter

        self.fleet = cfg.name
        self.writer = JournalWriter(target_of(cfg), f"{cfg.name}-{name}").start()
        self._read: concurrent.futures.Future | None = None   # the last read of the journal

    def record(self, kind: str, **kw: Any) -> None:
        try:
            self.writer.put(("events", event_row(self.fleet, kind, **kw)))
        except Exception as exc:  # noqa: BLE001 - the audit trail never stops an operator's action
            log.warning("journal: %s event not recorded: %r", kind, exc)

    def trades(self, symbol: str, account: str, trades: list[dict[str, Any]]) -> None:
        """The exchange's userTrades rows of a symbol, as fills (the controller's own closing orders)."""
        from .recorder import trade_row

        scope = {"fleet": self.fleet, "account": account, "symbol": symbol}
        for r in trades:
            try:
                self.writer.put(trade_row(scope, r))
            except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
                log.warning("journal: an exchange trade row of %s that does not read is skipped: %r", symbol, exc)

    def trade_cursor(self, account: str, symbol: str) -> int | None:
        """The newest trade id the journal holds for the symbol (None: none, or the database not up);
        TimeoutError if it does not answer in ``CURSOR_WAIT_S``, or at once while the last read has not
        answered yet (a read ends on its own thread, bounded as the writer's are): the caller goes on
        without it."""
        from .db import in_own_thread
        from .writer import cursors

        engine = self.writer.engine()
        if engine is None:
            return None
        if self._read is not None and not self._read.done():
            raise TimeoutError("the journal has not answered its last read yet")
        self._read = read = in_own_thread(cursors, engine, account, symbol)
        try:
            return read.result(CURSOR_WAIT_S)[0]
        except concurrent.futures.TimeoutError:
            raise TimeoutError(f"the journal did not answer in {CURSOR_WAIT_S:.0f} s") from None

    def close(self, timeout: float = 5.0) -> None:
        self.writer.close(timeout)


def controller_audit(controller: Any) -> AuditLog | None:
    """The controller's audit log (made once its fleet config is known; None if the journal is off)."""
    cfg = getattr(controller, "cfg", None)
    if cfg is None or not cfg.journal.enabled:
        return None
    audit = getattr(controller, "_journal_audit", None)
    if audit is None:
        try:
            audit = AuditLog(cfg, "controller")
        except Exception as exc:  # noqa: BLE001
            log.warning("journal: no audit log: %r", exc)
            return None
        controller._journal_audit = audit
    return audit


def record(controller: Any, kind: str, **kw: Any) -> None:
    audit = controller_audit(controller)
    if audit is not None:
        kw.setdefault("actor", "controller")
        audit.record(kind, **kw)


def trade_cursor(controller: Any, symbol: str, account: str) -> int | None:
    audit = controller_audit(controller)
    return audit.trade_cursor(account, symbol) if audit is not None else None


def record_trades(controller: Any, symbol: str, account: str, trades: list[dict[str, Any]]) -> None:
    audit = controller_audit(controller)
    if audit is not None:
        audit.trades(symbol, account, trades)


def record_once(cfg: Any, kind: str, **kw: Any) -> None:
    """For a CLI: one event, written before returning (spooled if the database is down)."""
    if not cfg.journal.enabled:
        return
    audit = AuditLog(cfg, "cli")
    audit.record(kind, **kw)
    audit.close()
