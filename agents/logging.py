"""Structured agent logs: every line carries symbol, epoch and event, and can never carry a secret.

The agent logs through :class:`AgentLog`, which stamps the context fields; the handler built by
:func:`configure_logging` formats text or one JSON object per line, and its :class:`SecretFilter`
rewrites every record (message, arguments and extra fields) before any formatter sees it.

No log line can be forged from outside: every record the project writes (loggers under ``mmfleet``)
has its control characters escaped (``\\n``, ``\\r``, ``\\x1b`` ...), whatever handler formats it, once
:func:`install_log_escaping` ran in the process (:func:`configure_logging`, the endpoint and the
controller call it). The text formatter escapes every field it prints as well.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import weakref
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

REDACTED = "***"

# Wire shapes that hold a secret whatever its value: HMAC signatures, API key headers, secret-named
# keys in query strings, JSON or reprs. Keys the filter was told about are redacted verbatim too.
_PATTERNS = (
    re.compile(r"(?i)(signature=)[0-9a-f]{16,}"),
    re.compile(r"(?i)(x-mbx-apikey['\"]?\s*[:=]\s*['\"]?)[^'\"\s,}]+"),
    re.compile(r"(?i)((?:api[_-]?secret|secret[_-]?key|api[_-]?key|apikey|secret|listen[_-]?key)['\"]?\s*[:=]\s*['\"]?)[^'\"\s,}&)]+"),
    re.compile(r"(?i)(/ws/)[A-Za-z0-9]{32,}"),
)

# C0 controls (newline, carriage return, ESC of ANSI sequences ...), DEL, C1 controls (NEL ...),
# Unicode's line and paragraph separators, and its invisible format marks that reorder or hide what a
# reader sees (bidirectional overrides and isolates, zero-width characters, the byte-order mark): each
# printed as an escape, so one record is one line and reads as it was written.
_INVISIBLE = (0x061C, 0x180E, *range(0x200B, 0x2010), *range(0x202A, 0x202F), *range(0x2060, 0x2070), 0xFEFF)
_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}
_ESCAPES.update({c: f"\\u{c:04x}" for c in (0x2028, 0x2029, *_INVISIBLE)})
_ESCAPES.update({0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"})
_ESCAPE_TABLE = str.maketrans(_ESCAPES)
_CONTROL = re.compile("[" + "".join(re.escape(chr(c)) for c in sorted(_ESCAPES)) + "]")


def redact_shapes(text: str) -> str:
    """``text`` with secret-shaped parts (signatures, key headers, listen keys in a URL ...) redacted:
    what the log's filter does, for text that goes elsewhere (the journal's events)."""
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text


def escape_controls(text: str) -> str:
    """``text`` with every control character written as an escape (``\\n``, ``\\x1b`` ...): one line."""
    return text.translate(_ESCAPE_TABLE) if _CONTROL.search(text) else text


PROJECT_LOGGER = "mmfleet"


class _EscapedMessage:
    """Mixed into the project's log records: the formatted message comes out escaped, one line."""

    def getMessage(self) -> str:  # noqa: N802 - logging's name
        return escape_controls(super().getMessage())  # type: ignore[misc]


_escaped_classes: dict[type, type] = {}


def _escaped_class(cls: type) -> type:
    out = _escaped_classes.get(cls)
    if out is None:
        out = _escaped_classes[cls] = type(f"Escaped{cls.__name__}", (_EscapedMessage, cls), {})
    return out


def _is_project(name: str) -> bool:
    return name == PROJECT_LOGGER or name.startswith(PROJECT_LOGGER + ".")


def install_log_escaping() -> None:
    """Make every record of the project's loggers escape control characters in its message.

    Process-wide and idempotent: it wraps logging's record factory, so the message stays one line
    whatever handler and formatter print it (Ray's, Serve's, logging's last resort or ours).
    Records of other loggers are left as they are.
    """
    previous = logging.getLogRecordFactory()
    if getattr(previous, "_mmfleet_escaping", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if _is_project(record.name) and not isinstance(record, _EscapedMessage):
            record.__class__ = _escaped_class(type(record))
        return record

    factory._mmfleet_escaping = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


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
        return redact_shapes(text)

    def _clean(self, value: Any) -> Any:
        if isinstance(value, (int, float, bool)) or value is None:
            return value
        return escape_controls(self.redact(value if isinstance(value, str) else str(value)))

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError) as exc:  # a bad format string must not drop the line
            message = f"{record.msg!r} (unformattable args: {exc})"
        record.msg = escape_controls(self.redact(message))
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
        tail = " ".join(f"{escape_controls(str(k))}={escape_controls(str(v))}" for k, v in fields.items())
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        line = f"{stamp} {record.levelname:<5} {escape_controls(tag)}{escape_controls(record.getMessage())}" + (
            f" {tail}" if tail else ""
        )
        if record.exc_text:
            # A traceback keeps its lines, each indented and escaped: none can pass for a record.
            line += "".join("\n    " + escape_controls(ln) for ln in record.exc_text.splitlines())
        return line


class AgentLog(logging.LoggerAdapter):
    """The agent's logger: stamps ``symbol`` and the current ``epoch`` on every line."""

    def __init__(self, logger: logging.Logger, symbol: str) -> None:
        super().__init__(logger, {"symbol": symbol})
        self.epoch: int | None = None
        self.listener: Any = None  # called with (event, msg, fields) for every named event (the journal)

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = dict(self.extra or {})
        if self.epoch is not None:
            extra["epoch"] = self.epoch
        extra.update(kwargs.get("extra") or {})
        kwargs["extra"] = extra
        return msg, kwargs

    def event(self, event: str, msg: str | None = None, *, level: int = logging.INFO, **fields: Any) -> None:
        """Log a named event (``order_placed``, ``user_stream_lost`` ...) with its fields."""
        if self.listener is not None:
            self.listener(event, msg or event, fields)
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
    install_log_escaping()
    handler = logging.StreamHandler(stream or sys.stderr)
    secret_filter = SecretFilter(secrets)
    _FILTERS.add(secret_filter)
    handler.addFilter(secret_filter)
    handler.setFormatter(JsonFormatter() if json_logs else TextFormatter())
    for name in logger_names:
        lg = logging.getLogger(name)
        lg.addHandler(handler)
        lg.setLevel(level)
    return handler, secret_filter


_PROCESS_FILTER: SecretFilter | None = None
_FILTERS: weakref.WeakSet[SecretFilter] = weakref.WeakSet()   # every redacting handler's, in this process


def log_process_records(level: int | str = logging.INFO) -> SecretFilter:
    """The project's records in a process that has no handler of its own (the endpoint's replica, the
    controller): one redacting text handler on stderr (the Ray worker's ``.err`` file) with the time,
    the level and the logger, from INFO; without it Python's last resort printed warnings as bare text
    and dropped the rest (a kill's audit lines without a time, sign-ins not at all). Idempotent."""
    global _PROCESS_FILTER
    if _PROCESS_FILTER is None:
        _, _PROCESS_FILTER = configure_logging(level=level, logger_names=(PROJECT_LOGGER,))
    return _PROCESS_FILTER


def redact_in_process_logs(*values: str) -> None:
    """Secrets this process has read (an account's keys, the API token, the journal's password),
    redacted from its log lines from now on, by every redacting handler it has."""
    for secret_filter in list(_FILTERS):
        secret_filter.add_secrets([v for v in values if v])


def redact_known(text: str) -> str:
    """``text`` with every secret this process has registered, and every secret shape, redacted: what
    its log lines would show (for records kept elsewhere, e.g. the journal's events)."""
    for secret_filter in list(_FILTERS):
        text = secret_filter.redact(text)
    return redact_shapes(text)


def scrub(mapping: Mapping[str, Any], secret_filter: SecretFilter) -> dict[str, Any]:
    """A copy of a flat mapping with every string value redacted (for dicts shown to people)."""
    return {k: secret_filter.redact(v) if isinstance(v, str) else v for k, v in mapping.items()}
