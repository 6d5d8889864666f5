"""Typed exchange errors: one class per situation a market maker must branch on.

Every error carries Binance's ``code``, ``msg`` and the HTTP status, so logs show the exchange's own
words; :func:`error_from_payload` maps a failed response (or a failed batch entry) to its class.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from .enums import ErrorCode, error_code


class BinanceError(Exception):
    """An error answered by the exchange (or decided locally on its behalf). ``route``: the request's
    ``METHOD path``, once it was sent."""

    route: str | None = None

    def __init__(self, code: int, msg: str, http_status: int | None = None) -> None:
        super().__init__(f"[{int(code)}] {msg} (HTTP {http_status})")
        self.code: ErrorCode | int = error_code(int(code))  # an ErrorCode when the project names it
        self.msg = str(msg)
        self.http_status = http_status

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={int(self.code)}, msg={self.msg!r}, http_status={self.http_status})"

    def __reduce__(self):  # picklable across Ray / process boundaries, subclasses included
        return (_rebuild, (type(self), self.code, self.msg, self.http_status, dict(self.__dict__)))


def _rebuild(cls: type, code: int, msg: str, status: int | None, state: dict[str, Any]) -> BinanceError:
    err = BinanceError.__new__(cls)
    BinanceError.__init__(err, code, msg, status)
    err.__dict__.update(state)
    return err


class TimestampError(BinanceError):
    """-1021 (or -5028): our clock is off the exchange's; re-learn the offset and retry."""


class UnknownOrderError(BinanceError):
    """-2011 / -2013: the exchange has no such (open) order."""


class InsufficientMarginError(BinanceError):
    """-2019: not enough margin for the order."""


class ReduceOnlyRejectedError(BinanceError):
    """-2022: a reduce-only order would increase the position (or there is nothing to reduce)."""


class PostOnlyRejectedError(BinanceError):
    """-5022: a GTX (post-only) order would have crossed; it was never placed."""


class MinNotionalError(BinanceError):
    """-4164 (a new order) or -5029 (an amendment): price * quantity is below the symbol's MIN_NOTIONAL."""


class FilterRejectedError(BinanceError):
    """Precision / filter violations (-1111, -4014, -4023, -4016, -4024, ...): a bug on our side."""


# "current limit of IP(1.2.3.4) is 2400 requests per minute", "current limit is 300 orders per 10 SECOND."
_NAMED_LIMIT = re.compile(r"current limit (?:of IP\([^)]*\) )?is (?P<n>\d{1,9}) (?P<what>requests|orders) per "
                          r"(?P<per>10 SECOND|MINUTE)\b", re.IGNORECASE)


class RateLimitedError(BinanceError):
    """HTTP 429 / -1003: back off for ``retry_after`` seconds or risk a ban."""

    def __init__(self, code: int, msg: str, http_status: int | None = None, retry_after: float | None = 1.0) -> None:
        super().__init__(code, msg, http_status)
        self.said_when = retry_after is not None   # the answer's Retry-After; else the client reckons the wait
        self.retry_after = float(retry_after) if retry_after is not None else 1.0

    def named_limit(self) -> tuple[str, int] | None:
        """The limit the refusal names, as the rate budget's window and its number ("current limit of
        IP(...) is 2400 requests per minute" -> ("weight_1m", 2400), "current limit is 300 orders per 10
        SECOND" -> ("orders_10s", 300)); None when it names none, or another (fundingRate's 5 minutes)."""
        m = _NAMED_LIMIT.search(self.msg)
        if m is None:
            return None
        per, n = m["per"].upper(), int(m["n"])
        if m["what"].lower() == "requests":
            return ("weight_1m", n) if per == "MINUTE" else None
        return ("orders_10s" if per == "10 SECOND" else "orders_1m"), n

    def window_s(self) -> float:
        """The length of the window the refusal names: 10 s ("... orders per 10 SECOND"), 5 minutes
        ("... per 5 minutes": fundingRate and fundingInfo's own limit), else a minute (the IP's weight)."""
        msg = self.msg.upper()
        return 10.0 if re.search(r"\b10 SECOND", msg) else 300.0 if re.search(r"\b5 MINUTE", msg) else 60.0


class BannedError(BinanceError):
    """HTTP 418: the IP is banned until ``until_ms`` (exchange milliseconds)."""

    def __init__(self, code: int, msg: str, http_status: int | None = None, until_ms: int | None = None) -> None:
        super().__init__(code, msg, http_status)
        self.until_ms = until_ms


class DuplicateClientOrderIdError(BinanceError):
    """-4116: an open order already has this client order id (an earlier send landed)."""


class OutcomeUnknownError(BinanceError):
    """The request was sent but its outcome is unknown: it may have executed, even after the answer.

    Binance's ambiguous answers to a write: HTTP 503 "Unknown error", -1000 (with 500 or 503),
    -1006, -1007, a 502/504 from a gateway, a timeout after sending, an unparseable or short batch
    answer. The caller keeps the request counted until a stream frame or a lookup (spaced past the
    request's recvWindow, after which the matching engine refuses it) settles it; resending blindly
    may double the order.
    """


class InvalidListenKeyError(BinanceError):
    """-1125: the listenKey does not exist (expired or closed); create a new one."""


class ServerError(BinanceError):
    """Other 5xx: the exchange failed to process the request; safe to retry with back-off."""


class NotSentError(BinanceError):
    """Refused here, before sending: nothing reached the exchange."""

    def __init__(self, msg: str) -> None:
        super().__init__(0, msg, None)

    def __reduce__(self):
        return (type(self), (self.msg,))


class BudgetExhaustedError(NotSentError):
    """Refused locally by the rate budget: nothing was sent."""

    def __init__(self, msg: str, wait_s: float = 0.0) -> None:
        super().__init__(msg)
        self.wait_s = float(wait_s)

    def __reduce__(self):
        return (BudgetExhaustedError, (self.msg, self.wait_s))


_BY_CODE: dict[int, type[BinanceError]] = {
    ErrorCode.INVALID_TIMESTAMP: TimestampError,
    ErrorCode.ME_INVALID_TIMESTAMP: TimestampError,
    ErrorCode.CANCEL_REJECTED: UnknownOrderError,
    ErrorCode.NO_SUCH_ORDER: UnknownOrderError,
    ErrorCode.MARGIN_NOT_SUFFICIEN: InsufficientMarginError,
    ErrorCode.REDUCE_ONLY_REJECT: ReduceOnlyRejectedError,
    ErrorCode.GTX_ORDER_REJECT: PostOnlyRejectedError,
    ErrorCode.MIN_NOTIONAL: MinNotionalError,
    ErrorCode.MODIFICATION_MIN_NOTIONAL: MinNotionalError,
    ErrorCode.BAD_PRECISION: FilterRejectedError,
    ErrorCode.FILTER_FAILURE: FilterRejectedError,
    ErrorCode.QTY_LESS_THAN_ZERO: FilterRejectedError,
    ErrorCode.QTY_LESS_THAN_MIN_QTY: FilterRejectedError,
    ErrorCode.QTY_GREATER_THAN_MAX_QTY: FilterRejectedError,
    ErrorCode.PRICE_LESS_THAN_MIN_PRICE: FilterRejectedError,
    ErrorCode.PRICE_NOT_INCREASED_BY_TICK_SIZE: FilterRejectedError,
    ErrorCode.PRICE_HIGHTER_THAN_MULTIPLIER_UP: FilterRejectedError,
    ErrorCode.QTY_NOT_INCREASED_BY_STEP_SIZE: FilterRejectedError,
    ErrorCode.PRICE_LOWER_THAN_MULTIPLIER_DOWN: FilterRejectedError,
    ErrorCode.TOO_MANY_REQUESTS: RateLimitedError,
    ErrorCode.INVALID_LISTEN_KEY: InvalidListenKeyError,
    ErrorCode.DUPLICATED_CLIENT_ORDER_ID: DuplicateClientOrderIdError,
    ErrorCode.UNKNOWN: OutcomeUnknownError,  # "execution status unknown" (seen with HTTP 500 and 503)
    ErrorCode.UNEXPECTED_RESP: OutcomeUnknownError,  # "Execution status unknown."
    ErrorCode.TIMEOUT: OutcomeUnknownError,  # "Send status unknown; execution status unknown."
}

# The codes whose execution status Binance calls unknown.
OUTCOME_UNKNOWN_CODES = frozenset({ErrorCode.UNKNOWN, ErrorCode.UNEXPECTED_RESP, ErrorCode.TIMEOUT})

# Answers to a write that Binance documents as a definite failure (nothing executed; may be resent):
# -1008 (throttled), and 503 "Service Unavailable." / "Internal error; unable to process your request."
_DEFINITE_FAILURE_CODES = frozenset({ErrorCode.REQUEST_THROTTLED})
_DEFINITE_FAILURE_MSGS = ("service unavailable", "internal error; unable to process")

# Binance's wording for a 503 whose execution status is unknown (the order may exist).
_UNKNOWN_503 = "unknown error"


def _retry_after(headers: Mapping[str, str] | None) -> float | None:
    """The answer's Retry-After in seconds; None when it has none (Binance documents a 429 for too many
    orders without one, and the header is not documented for fapi at all)."""
    if not headers:
        return None
    raw = headers.get("Retry-After") or headers.get("retry-after")
    try:
        return max(0.0, float(raw)) if raw is not None else None
    except ValueError:
        return None


def _ban_until(msg: str) -> int | None:
    # "... banned until 1746327239762. ..."
    marker = "banned until "
    pos = msg.find(marker)
    if pos < 0:
        return None
    digits = ""
    for ch in msg[pos + len(marker):]:
        if not ch.isdigit():
            break
        digits += ch
    return int(digits) if digits else None


def error_from_payload(
    payload: Any, http_status: int | None, headers: Mapping[str, str] | None = None
) -> BinanceError:
    """Map one error answer (``{"code": -2011, "msg": ...}`` or anything else) to its class."""
    if isinstance(payload, Mapping):
        code = payload.get("code", 0)
        msg = str(payload.get("msg", ""))
        try:
            code = int(code)
        except (TypeError, ValueError):
            code = 0
    else:
        code, msg = 0, str(payload)[:300] if payload is not None else ""
    err = _classify(code, msg, http_status, headers)
    err.json_answer = isinstance(payload, Mapping)   # Binance answers in JSON; a proxy's page or text does not
    return err


def _classify(code: int, msg: str, http_status: int | None, headers: Mapping[str, str] | None) -> BinanceError:
    if http_status == 418:
        return BannedError(code or ErrorCode.TOO_MANY_REQUESTS, msg, 418, until_ms=_ban_until(msg))
    if http_status == 429:
        return RateLimitedError(code or ErrorCode.TOO_MANY_REQUESTS, msg, 429, retry_after=_retry_after(headers))
    if http_status == 408:
        # the gateway timed out waiting for the backend: the request may have been executed
        return OutcomeUnknownError(code, msg or "HTTP 408", 408)
    if http_status is not None and http_status >= 500:
        if code == ErrorCode.REQUEST_THROTTLED:
            return ServerError(code, msg, http_status)
        if http_status == 503 and _UNKNOWN_503 in msg.lower():
            return OutcomeUnknownError(code, msg, http_status)
        if code in OUTCOME_UNKNOWN_CODES:
            return OutcomeUnknownError(code, msg, http_status)
        if http_status in (502, 504) and code == 0:
            # a gateway gave up waiting for the backend: the request may have been executed
            return OutcomeUnknownError(code, msg or f"HTTP {http_status}", http_status)
        return ServerError(code, msg, http_status)
    cls = _BY_CODE.get(code, BinanceError)
    if cls is RateLimitedError:
        return RateLimitedError(code, msg, http_status, retry_after=_retry_after(headers))
    return cls(code, msg, http_status)


def is_definite_failure(err: BinanceError) -> bool:
    """A 5xx answer Binance documents as "not executed" (safe to treat a write as never sent)."""
    if err.code in _DEFINITE_FAILURE_CODES:
        return True
    # Binance's own JSON answer and message, whole: not a proxy's page or text that says the same words
    # (an HTML "503 Service Unavailable", or the bare text, in front of the API says nothing of whether
    # the request was executed)
    if not getattr(err, "json_answer", True):
        return False
    return err.msg.strip().lower().startswith(_DEFINITE_FAILURE_MSGS)


def for_write(err: BinanceError) -> BinanceError:
    """How a write must read ``err``: any 5xx that is not a documented definite failure may have
    executed (Binance: "execution status unknown"), so it becomes :class:`OutcomeUnknownError`."""
    if isinstance(err, ServerError) and err.http_status is not None and err.http_status >= 500:
        if not is_definite_failure(err):
            return OutcomeUnknownError(err.code, err.msg, err.http_status)
    return err
