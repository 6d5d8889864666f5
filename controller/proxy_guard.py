"""What Serve's HTTP proxy takes from a client's headers, guarded (the proxy's middleware).

Serve's proxy reads ``X-Request-ID`` (and its multiplexed-model and session headers) as the client
sends them: one that is not UTF-8 answered 500, logged nowhere, and its text went verbatim into Serve's
access log and the prefix of the replica's log lines (a tab or U+2028 in it, and free text: a ``/health``
line could read as a kill). A value that is not a short token of letters, digits and ``._:-`` is
dropped here, before Serve reads it; Serve then makes its own request id. Serve's own hints (a request
not cancelled when its client leaves, its timeout) are dropped whatever they say. Serve calls ``middlewares``
in its proxy (and replica) when ``RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`` names it
(``controller.handles.above_agents_env``).
"""

from __future__ import annotations

import re
from typing import Any

SAFE_VALUE = re.compile(rb"[A-Za-z0-9._:-]{1,64}")
GUARDED = frozenset({b"x_request_id", b"serve_multiplexed_model_id", b"x_session_id"})
# Serve's hints for a load balancer in front of it, never a client's to give: a request kept whatever the
# client does (``?1``: not cancelled when it disconnects, so a client can pile up requests for free) and
# its own timeout (one not UTF-8 answered 500, logged nowhere)
DROPPED = frozenset({b"x_request_disconnect_disabled", b"x_request_timeout_seconds"})


def guarded_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """``headers`` without Serve's own hints, nor a guarded one whose value is not a short safe token."""
    kept = []
    for k, v in headers:
        name = k.lower().replace(b"-", b"_")
        if name not in DROPPED and (name not in GUARDED or SAFE_VALUE.fullmatch(v)):
            kept.append((k, v))
    return kept


class ClientIdGuard:
    """A pure ASGI middleware: the request's scope with its guarded headers checked."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") in ("http", "websocket"):
            headers = list(scope.get("headers") or ())
            kept = guarded_headers(headers)
            if len(kept) != len(headers):
                scope = {**scope, "headers": kept}
        await self.app(scope, receive, send)


def middlewares() -> list[Any]:
    """Serve's proxy callback: the middlewares it wraps its HTTP app with."""
    from starlette.middleware import Middleware

    return [Middleware(ClientIdGuard)]
