"""An agent's Prometheus exposition, published where the fleet's endpoint reads it.

Every agent renders its own exposition on its trading loop every ``metrics_publish_s`` (and once as
soon as it has started) and puts it into Ray's GCS key-value store, in the fleet's namespace, under
``metrics/<SYMBOL>``, stamped with the wall-clock time it was rendered and the holder that rendered
it. The endpoint's ``/metrics`` reads all of them in one call instead of asking 50 agents one by one
at scrape time; an exposition older than ``metrics_stale_s`` is dropped (its agent counts as down),
so a stopped, hung or dead agent does not look alive.

With it goes the agent's last status and exposure (``snapshot/<SYMBOL>``): a page that asks the agents
(``/status``, ``/exposure``) shows, for one that did not answer in time (starting on a saturated node,
hung, restarting), what it last published and how old that is, instead of nothing.

Only the records and the store calls live here (floor 2: the actor writes, the endpoint reads; agents
never import the controller). The calls are Ray's private ``internal_kv`` API, as ``controller/lease.py``
uses it; they block, so callers on an event loop run them in a thread.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

KEY_PREFIX = "metrics/"
SNAPSHOT_PREFIX = "snapshot/"


def kv_namespace(fleet_name: str) -> str:
    """The fleet's namespace in the GCS key-value store (the lease book's too)."""
    return f"mmfleet/{fleet_name}"


def exposition_key(symbol: str) -> str:
    return f"{KEY_PREFIX}{symbol}"


def snapshot_key(symbol: str) -> str:
    return f"{SNAPSHOT_PREFIX}{symbol}"


@dataclass(frozen=True)
class PublishedExposition:
    """One agent's exposition as published: who rendered it, when (wall clock, seconds), the text."""

    symbol: str
    holder: str
    at: float
    text: str

    def encode(self) -> bytes:
        return json.dumps({"symbol": self.symbol, "holder": self.holder, "at": self.at, "text": self.text}).encode()

    @classmethod
    def decode(cls, raw: bytes | str) -> PublishedExposition | None:
        """The record, or None when it is not one (never raises)."""
        try:
            doc = json.loads(raw)
            return cls(str(doc["symbol"]), str(doc["holder"]), float(doc["at"]), str(doc["text"]))
        except (ValueError, TypeError, KeyError):
            return None

    def age_s(self, now: float) -> float:
        return max(0.0, now - self.at)


@dataclass(frozen=True)
class PublishedSnapshot:
    """One agent's status and exposure as published: who, when (wall clock, seconds), the two documents."""

    symbol: str
    holder: str
    at: float
    status: dict[str, Any]
    exposure: dict[str, Any]

    def encode(self) -> bytes:
        return json.dumps({"symbol": self.symbol, "holder": self.holder, "at": self.at, "status": self.status,
                           "exposure": self.exposure}, default=str).encode()

    @classmethod
    def decode(cls, raw: bytes | str) -> PublishedSnapshot | None:
        """The record, or None when it is not one (never raises)."""
        try:
            doc = json.loads(raw)
            status, exposure = doc["status"], doc["exposure"]
            if not isinstance(status, dict) or not isinstance(exposure, dict):
                return None
            return cls(str(doc["symbol"]), str(doc["holder"]), float(doc["at"]), status, exposure)
        except (ValueError, TypeError, KeyError):
            return None

    def shown(self, part: str, now: float) -> dict[str, Any]:
        """``part`` ("status" or "exposure") as a page shows it: with the holder and its age in seconds."""
        return {**getattr(self, part), "holder": self.holder, "age_s": round(max(0.0, now - self.at), 1)}


def publish(fleet_name: str, record: PublishedExposition, snapshot: PublishedSnapshot | None = None) -> None:
    """Put the record into the GCS key-value store (blocking; needs a Ray connection)."""
    from ray.experimental import internal_kv

    internal_kv._internal_kv_put(exposition_key(record.symbol), record.encode(), overwrite=True,
                                 namespace=kv_namespace(fleet_name))
    if snapshot is not None:
        internal_kv._internal_kv_put(snapshot_key(snapshot.symbol), snapshot.encode(), overwrite=True,
                                     namespace=kv_namespace(fleet_name))


def _records(fleet_name: str, symbols: list[str] | tuple[str, ...], prefix: str, decode: Any) -> dict[str, Any]:
    """The records of ``symbols`` under ``prefix`` (one GCS call; blocking): those that decode and name
    their own symbol; a symbol without one is absent."""
    from ray.experimental import internal_kv

    if not symbols:
        return {}
    namespace = kv_namespace(fleet_name).encode()
    keys = [f"{prefix}{s}".encode() for s in symbols]
    client: Any = internal_kv.global_gcs_client
    multi_get = getattr(client, "internal_kv_multi_get", None)
    if multi_get is not None:
        raw = multi_get(keys, namespace)
    else:  # an older Ray without the multi-get: one call per key
        raw = {k: v for k in keys if (v := client.internal_kv_get(k, namespace)) is not None}
    out = {}
    for key, value in raw.items():
        record = decode(value)
        symbol = key.decode()[len(prefix):]
        if record is not None and record.symbol == symbol:
            out[symbol] = record
    return out


def read_published(fleet_name: str, symbols: list[str] | tuple[str, ...]) -> dict[str, PublishedExposition]:
    """The published expositions of ``symbols`` (one GCS call; blocking); a symbol without one is absent."""
    return _records(fleet_name, symbols, KEY_PREFIX, PublishedExposition.decode)


def read_snapshots(fleet_name: str, symbols: list[str] | tuple[str, ...]) -> dict[str, PublishedSnapshot]:
    """The published status and exposure of ``symbols`` (one GCS call; blocking); a symbol without one is absent."""
    return _records(fleet_name, symbols, SNAPSHOT_PREFIX, PublishedSnapshot.decode)


def forget_published(fleet_name: str, symbol: str) -> None:
    """Remove a symbol's exposition, snapshot and carried books (the symbol left the fleet); blocking."""
    from ray.experimental import internal_kv

    from .carry import carry_key

    for key in (exposition_key(symbol), snapshot_key(symbol), carry_key(symbol)):
        internal_kv._internal_kv_del(key, namespace=kv_namespace(fleet_name))
