"""HMAC-SHA256 request signing, over exactly the bytes that go on the wire.

Binance signs ``totalParams`` = query string followed directly (no ``&``) by the request body, so
the client encodes parameters once, signs that string, and sends that same string.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from typing import Any, Mapping
from urllib.parse import quote

# Binance refuses a request signed more than this far ahead of its clock (-1021 "1000ms ahead"), so a
# request it accepted was read no earlier than its timestamp less this, however far this host's
# estimate of the exchange's clock has drifted or was learned wrong (half an uneven round trip).
AHEAD_REFUSED_MS = 1_000
# The clock's offset is learned no further ahead than this (``RestCore.sync_time``): half of it left
# for the host's clock to drift before the next re-sync.
AHEAD_AT_MOST_MS = AHEAD_REFUSED_MS // 2

# Values made only of these characters are the same before and after percent-encoding.
_PLAIN = re.compile(r"^[A-Za-z0-9._~-]*$")


def encode_params(params: Mapping[str, Any]) -> str:
    """URL-encode ``params`` in their given order; lists/dicts become compact JSON (batch endpoints)."""
    parts = []
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, (list, tuple, dict)):
            text = json.dumps(value, separators=(",", ":"))
        elif isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, float):
            raise TypeError(f"parameter {key!r} is a float ({value!r}); send a decimal string")
        else:
            text = str(value)
        if not _PLAIN.fullmatch(text):
            text = quote(text, safe="")
        parts.append(f"{key}={text}")
    return "&".join(parts)


def sign(secret: str, total_params: str) -> str:
    """Hex HMAC-SHA256 of ``total_params`` keyed with the API secret."""
    return hmac.new(secret.encode("utf-8"), total_params.encode("utf-8"), hashlib.sha256).hexdigest()


def signed_payload(secret: str, query: str, body: str = "") -> tuple[str, str]:
    """Append ``signature`` as the last parameter of whichever part carries the parameters.

    Returns the (query, body) pair to send: the signature goes at the end of the body when there
    is one, else at the end of the query string.
    """
    signature = sign(secret, query + body)
    if body:
        return query, f"{body}&signature={signature}"
    return (f"{query}&signature={signature}" if query else f"signature={signature}"), body
