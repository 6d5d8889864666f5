"""The endpoint's API reference page (``/docs``), rendered here from its OpenAPI document.

FastAPI's interactive page loads its script and style from a CDN and asks for the token in the page:
a script from a third party in the page where an operator types the fleet's kill-switch token. This
one is plain HTML made on the server, under the console's content policy (nothing loaded from
anywhere, no script), and shows how to call each route with ``curl`` instead.
"""

from __future__ import annotations

import html
import json
from typing import Any

_METHODS = ("get", "post", "put", "delete")


def _schema_name(schema: dict[str, Any]) -> str:
    ref = schema.get("$ref", "")
    return ref.rsplit("/", 1)[-1] if ref else schema.get("type", "object")


def _operation(path: str, method: str, op: dict[str, Any], schemas: dict[str, Any]) -> str:
    e = html.escape
    auth = bool(op.get("security"))
    parts = [f"<h2><code>{e(method.upper())} {e(path)}</code>{' (token)' if auth else ''}</h2>"]
    if op.get("summary"):
        parts.append(f"<p><b>{e(op['summary'])}</b></p>")
    if op.get("description"):
        parts.append(f"<pre>{e(op['description'])}</pre>")
    params = op.get("parameters") or []
    if params:
        rows = "".join(f"<li><code>{e(p.get('name', ''))}</code> ({e(p.get('in', ''))}"
                       f"{', required' if p.get('required') else ''}): {e(p.get('description', ''))}</li>"
                       for p in params)
        parts.append(f"<p>Parameters:</p><ul>{rows}</ul>")
    body = (op.get("requestBody") or {}).get("content", {}).get("application/json", {}).get("schema")
    if body:
        name = _schema_name(body)
        shown = schemas.get(name, body)
        parts.append(f"<p>JSON body <code>{e(name)}</code>:</p><pre>{e(json.dumps(shown, indent=2))}</pre>")
    curl = f"curl -s{' -X ' + method.upper() if method != 'get' else ''}"
    if auth:
        curl += ' -H "Authorization: Bearer $(cat TOKEN_FILE)"'
    if body:
        curl += " -H 'Content-Type: application/json' -d '{...}'"
    parts.append(f"<pre>{e(curl)} http://HOST:PORT{e(path)}</pre>")
    return "\n".join(parts)


def render_api_page(spec: dict[str, Any]) -> str:
    """The reference page of an OpenAPI document: every route, its parameters, body and a curl line."""
    e = html.escape
    info = spec.get("info", {})
    schemas = spec.get("components", {}).get("schemas", {})
    ops = [_operation(path, m, item[m], schemas)
           for path, item in sorted(spec.get("paths", {}).items()) for m in _METHODS if m in item]
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{e(info.get('title', 'API'))}</title>"
            f"</head><body><h1>{e(info.get('title', 'API'))} {e(str(info.get('version', '')))}</h1>"
            f"<p>{e(info.get('description', ''))}</p><p>The machine-readable document: "
            f"<a href='openapi.json'>openapi.json</a>. Routes marked (token) need "
            f"<code>Authorization: Bearer &lt;token&gt;</code>, the token from the file <code>up</code> "
            f"prints.</p>\n" + "\n".join(ops) + "</body></html>")
