"""Structured agent logs: every line carries symbol, epoch and event, and can never carry a secret.

The agent logs through :class:`AgentLog`, which stamps the context fields; the handler built by
:func:`configure_logging` formats text or one JSON object per line, and its :class:`SecretFilter`
rewrites every record (message, arguments and extra fields) before any formatter sees it.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

# Fields the agent puts on records; formatters print them when present.
CONTEXT_FIELDS = ("symbol", "epoch", "event", "client_order_id", "order_id", "side", "state")

REDACTED = "***"

# Wire shapes that hold a secret whatever its value: HMAC signatures, API key headers, secret-named
# keys in query strings, JSON or reprs. Keys the filter was told about are redacted verbatim too.
_PATTERNS = (
    re.compile(r"(?i)(signature=)[0-9a-f]{16,}"),
    re.compile(r"(?i)(x-mbx-apikey['\"]?\s*[:=]\s*['\"]?)[^'\"\s,}]+"),
    re.compile(r"(?i)((?:api[_-]?secret|secret[_-]?key|api[_-]?key|apikey|secret|listen[_-]?key)['\"]?\s*[:=]\s*['\"]?)[^'\"\s,}&)]+"),
    re.compile(r"(?i)(/ws/)[A-Za-z0-9]{32,}"),
)

_STD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class SecretFilter(logging.Filter):
    """Redacts known secret values and secret-shaped text from every record that passes."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets: set[str] = set()
        self.add_secrets(secrets)

    def add_secrets(self, secrets: Iterable[str]) -> None:
        # Very short values would redact ordinary words; real keys are long.
        self._secrets.update(s for s in secrets if s and len(s) >= 8)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        for pattern in _PATTERNS:
            text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
        return text

    def _clean(self, value: Any) -> Any:
        if isinstance(value, (int, float, bool)) or value is None:
            return value
        return self.redact(value if isinstance(value, str) else str(value))

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError) as exc:  # a bad format string must not drop the line
            message = f"{record.msg!r} (unformattable args: {exc})"
        record.msg = self.redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        record.exc_info = None
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        for key, value in list(record.__dict__.items()):
            if key not in _STD_ATTRS:
                record.__dict__[key] = self._clean(value)
        return True


def _extra_fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in record.__dict__.items() if k not in _STD_ATTRS and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, then the context and extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(_extra_fields(record))
        if record.exc_text:
            out["exc"] = record.exc_text
        return json.dumps(out, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """``time LEVEL [SYMBOL e<epoch>] msg key=value ...`` for people reading a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        fields = _extra_fields(record)
        tag = ""
        if "symbol" in fields:
            tag = f"[{fields.pop('symbol')}"
            if "epoch" in fields:
                tag += f" e{fields.pop('epoch')}"
            tag += "] "
        fields.pop("event", None)
        tail = " ".join(f"{k}={v}" for k, v in fields.items())
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        line = f"{stamp} {record.levelname:<5} {tag}{record.getMessage()}" + (f" {tail}" if tail else "")
        if record.exc_text:
            line += "\n" + record.exc_text
        return line


class AgentLog(logging.LoggerAdapter):
    """The agent's logger: stamps ``symbol`` and the current ``epoch`` on every line."""

    def __init__(self, logger: logging.Logger, symbol: str) -> None:
        super().__init__(logger, {"symbol": symbol})
        self.epoch: int | None = None

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = dict(self.extra or {})
        if self.epoch is not None:
            extra["epoch"] = self.epoch
        extra.update(kwargs.get("extra") or {})
        kwargs["extra"] = extra
        return msg, kwargs

    def event(self, event: str, msg: str | None = None, *, level: int = logging.INFO, **fields: Any) -> None:
        """Log a named event (``order_placed``, ``user_stream_lost`` ...) with its fields."""
        if not self.isEnabledFor(level):
            return
        fields = {k: v for k, v in fields.items() if v is not None}
        self.log(level, msg or event, extra={"event": event, **fields})


def configure_logging(
    *,
    json_logs: bool = False,
    level: int | str = logging.INFO,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
    logger_names: Iterable[str] = ("",),
) -> tuple[logging.Handler, SecretFilter]:
    """Attach one redacting handler to the named loggers (default: root); return it and its filter."""
    handler = logging.StreamHandler(stream or sys.stderr)
    secret_filter = SecretFilter(secrets)
    handler.addFilter(secret_filter)
    handler.setFormatter(JsonFormatter() if json_logs else TextFormatter())
    for name in logger_names:
        lg = logging.getLogger(name)
        lg.addHandler(handler)
        lg.setLevel(level)
    return handler, secret_filter


def scrub(mapping: Mapping[str, Any], secret_filter: SecretFilter) -> dict[str, Any]:
    """A copy of a flat mapping with every string value redacted (for dicts shown to people)."""
    return {k: secret_filter.redact(v) if isinstance(v, str) else v for k, v in mapping.items()}
