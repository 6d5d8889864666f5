"""Request bodies of the fleet's endpoint, taken strictly.

The token is checked before a byte of the body is read (the routes call :func:`read_body` after
their check, never through a FastAPI body parameter); a body over 64 KiB is a 413, the JSON is
parsed without NaN, Infinity or out-of-range numbers and without duplicate keys, and the models are
strict (a boolean is ``true`` or ``false``, never ``"yes"`` or ``1``; unknown fields are refused).
A 422 names the field and never echoes a long input back.
"""

# No ``from __future__ import annotations``: the models' annotations are read by pydantic and FastAPI.

import asyncio
from collections import Counter
import json
import math
from typing import Annotated, Any, Literal
import unicodedata

from fastapi import HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator

from fleet.text import first_line

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


# spaces, line and paragraph separators, control and format characters, lone surrogates; not unassigned
# ones (an emoji newer than this interpreter's Unicode tables) nor private-use ones: those may show a glyph
_SHOWS_NOTHING = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf", "Cs"})


def _reason_given(reason: str) -> str:
    """A reason that shows something: not only spaces, line breaks, control or format characters (a
    zero-width space, a NUL: kept and shown as nothing)."""
    if all(unicodedata.category(c) in _SHOWS_NOTHING for c in reason):
        raise ValueError("give a reason that shows something: it is kept with the kill state and logged")
    return reason


class KillRequest(_Selection):
    """A kill: its reason must say something, wherever it comes from (HTTP, the console, the CLI)."""

    mode: Literal["halt", "flatten"] = Field("halt", description="halt: cancel all orders; flatten: also close")
    reason: str = Field(min_length=1, max_length=500, description="why; kept with the kill state and logged")

    @field_validator("reason")
    @classmethod
    def _reason(cls, reason: str) -> str:
        return _reason_given(reason)


class ResumeRequest(_Selection):
    reason: str = Field("", max_length=500)


class ConsoleKillRequest(KillRequest):
    """A kill from the console or the CLI."""


class ConsoleResumeRequest(_Selection):
    """A resume from the console: a reason is required, as for a kill."""

    reason: str = Field(min_length=1, max_length=500, description="why; logged")

    @field_validator("reason")
    @classmethod
    def _reason(cls, reason: str) -> str:
        return _reason_given(reason)


MAX_BODY_BYTES = 64 * 1024   # a kill or resume body is a few hundred bytes
# A body not there by then is a 408: a client that sends its headers and then nothing (or a byte now and
# then) would otherwise hold its turn of the endpoint's lane (``controller.lane``) for good
BODY_WAIT_S = 10.0
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


MAX_INT_DIGITS = 20   # no field takes a longer integer (Python's own refusal gave the client its advice)


def _int(text: str) -> int:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        raise ValueError(f"an integer of {digits} digits: no field takes more than {MAX_INT_DIGITS}")
    return int(text)


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


def _encodable(text: str) -> str:
    """``text`` as an answer can carry it: a lone surrogate (JSON allows ``"\\ud800"``; UTF-8 has no
    encoding for it) shown escaped, so a 422 that echoes it is not a 500."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _shown_loc(loc: Any) -> list[Any]:
    return [_encodable(x) if isinstance(x, str) else x for x in loc]


def shown_input(value: Any) -> Any:
    """What a 422 may echo of an input: short values as they are, long ones trimmed or described."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)   # a JSON answer holds no NaN
    if isinstance(value, int):
        return value if abs(value) < 10**18 else f"<integer of {len(str(abs(value)))} digits>"
    if isinstance(value, str):
        value = _encodable(value)
        return value if len(value) <= INPUT_SHOWN else value[:INPUT_SHOWN] + f"... ({len(value)} characters)"
    if isinstance(value, dict | list):
        try:
            if len(json.dumps(value, allow_nan=False)) <= INPUT_SHOWN:
                json.dumps(value, allow_nan=False, ensure_ascii=False).encode("utf-8")   # no lone surrogate
                return value
        except (TypeError, ValueError):   # UnicodeEncodeError is a ValueError
            pass
        return f"<object with {len(value)} keys>" if isinstance(value, dict) else f"<array of {len(value)} items>"
    return shown_input(str(value))


def _problem(kind: str, loc: tuple[Any, ...], msg: str, value: Any = None) -> dict[str, Any]:
    return {"type": kind, "loc": ["body", *_shown_loc(loc)], "msg": msg, "input": shown_input(value)}


def validation_detail(errors: list[dict[str, Any]], prefix: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    """Pydantic's errors as a 422 lists them: type, field, message and a trimmed input (no context)."""
    return [
        {"type": e.get("type"), "loc": [*prefix, *_shown_loc(e.get("loc", ()))], "msg": e.get("msg"),
         "input": shown_input(e.get("input"))}
        for e in errors
    ]


class KillRefused(ValueError):
    """A kill refused as asked (an unknown symbol, a field out of its range): the reason says what to
    change, and nothing was done. Raised to a caller over Ray (the CLI), which prints it."""


def refusal(exc: ValidationError) -> str:
    """A model's errors in one line: ``field: message; ...``."""
    parts = []
    for d in validation_detail(list(exc.errors())):
        where = ".".join(str(x) for x in d["loc"][1:])
        parts.append(f"{where}: {d['msg']}" if where else d["msg"])
    return "; ".join(parts)


def parse_body(raw: bytes, model: type[BaseModel]) -> Any:
    """``model`` from a JSON body, strictly; HTTPException(422) naming the field otherwise."""
    if not raw.strip():
        raise HTTPException(422, [_problem("missing", (), "Field required: send a JSON object")])
    try:
        text = raw.decode("utf-8")   # JSON on the wire is UTF-8 (RFC 8259); json.loads would guess UTF-16/32
    except UnicodeDecodeError as exc:
        raise HTTPException(422, [_problem("json_invalid", (exc.start,), "the body is not UTF-8")]) from None
    try:
        data = json.loads(
            text,
            parse_constant=_NonFinite,         # NaN, Infinity, -Infinity
            parse_float=_float_or_flag,        # 1e999 and the like
            parse_int=_int,                    # 5,000 digits and the like
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
        raise HTTPException(422, [_problem("json_invalid", (), f"JSON decode error: {first_line(exc)}")]) from None
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
        declared = declared.strip().lstrip("0") or "0"
        if not (declared.isascii() and declared.isdigit()):
            raise HTTPException(400, "invalid Content-Length header")
        if len(declared) > 19 or int(declared) > limit:   # (int() refuses over 4,300 digits: judged by length first)
            raise HTTPException(413, f"request body of {declared if len(declared) <= 19 else 'over 10^19'} bytes is "
                                     f"over the limit of {limit} bytes")
    size = 0
    chunks = []
    try:
        async with asyncio.timeout(BODY_WAIT_S) as wait:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise HTTPException(413, f"request body is over the limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        if not wait.expired():
            raise
        raise HTTPException(408, f"the request body did not arrive within {BODY_WAIT_S:g} s "
                                 f"({size} bytes came)") from None
    return b"".join(chunks)


def known_query_only(request: Request) -> None:
    """A query parameter the route does not take is a 422 naming it: ``/pnl?symbl=ETHUSDC`` (a typo)
    would otherwise answer for the whole fleet, and ``/exposure?symbol=X`` for every symbol."""
    dependant = getattr(request.scope.get("route"), "dependant", None)
    if dependant is None or not request.query_params:
        return
    given = Counter(k for k, _ in request.query_params.multi_items())
    repeated = [(k, n) for k, n in given.items() if n > 1]
    if repeated:   # (the last one would win in silence: /pnl?symbol=A&symbol=B answered for B alone)
        name, times = repeated[0]
        raise HTTPException(422, f"query parameter {shown_input(name)!r} given {times} times; give each once")
    taken = _query_names(dependant) - {"self"}   # (Ray Serve's ingress leaves its methods' self listed)
    unknown = [k for k in dict.fromkeys(request.query_params.keys()) if k not in taken]
    if unknown:
        named = ", ".join(repr(shown_input(k)) for k in unknown[:5]) + (
            f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        takes = ", ".join(sorted(taken)) or "none"
        raise HTTPException(422, f"unknown query parameter(s) {named}; this route takes: {takes}")


def _query_names(dependant: Any) -> set[str]:
    """The query parameters a route takes, its dependencies' included."""
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names
