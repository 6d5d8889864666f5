"""The controller's handles on its agent actors: looked up once, created when missing, called with a timeout.

A GCS lookup blocks the controller's loop (which also serves the leases), so handles are cached and
dropped only when an actor is gone for good; the reconcile pass recreates it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import ray

from fleet.config import AgentPlacement

AGENT_PREFIX = "agent."


def agent_name(symbol: str) -> str:
    return f"{AGENT_PREFIX}{symbol}"


def above_agents_env() -> dict[str, Any]:
    """The ``runtime_env`` of a process that must not wait behind the agents for CPU: the endpoint
    (Serve's controller, its HTTP proxy, the replica) and a hosted simulator. The raylet starts it at
    niceness 0, its own (``RAY_worker_niceness``), and every other worker, so every agent, at Ray's
    default 15: on a node the agents saturate, a kill still gets its CPU turns first. The controller
    and the agents take none: an actor inherits its creator's ``runtime_env``, and a worker with one
    costs twice the CPU to start (0.31 -> 0.60 s measured here; 50 agents all quoting 43 -> 58 s).
    Nothing secret goes here (it is visible cluster-wide)."""
    return {"env_vars": {"RAY_worker_niceness": "0"}}


class AgentHandles:
    """``agent.<SYMBOL>`` actors of one fleet's namespace."""

    def __init__(self, fleet_name: str, namespace: str, call_timeout_s: float) -> None:
        self.fleet_name = fleet_name
        self.namespace = namespace
        self.call_timeout_s = call_timeout_s
        self.cache: dict[str, Any] = {}

    def get(self, symbol: str, *, fresh: bool = False) -> Any | None:
        """The agent's handle, cached (``fresh``: asked of the GCS again); None when there is no such actor."""
        if not fresh and symbol in self.cache:
            return self.cache[symbol]
        try:
            handle = ray.get_actor(agent_name(symbol), namespace=self.namespace)
        except ValueError:
            self.cache.pop(symbol, None)
            return None
        self.cache[symbol] = handle
        return handle

    def drop(self, symbol: str) -> None:
        self.cache.pop(symbol, None)

    def live(self) -> set[str]:
        """Symbols whose agent actor holds its name (alive or restarting), in one GCS call."""
        names = ray.util.list_named_actors(all_namespaces=True)
        live = {a["name"][len(AGENT_PREFIX):] for a in names
                if a["namespace"] == self.namespace and a["name"].startswith(AGENT_PREFIX)}
        for symbol in list(self.cache):
            if symbol not in live:
                self.cache.pop(symbol, None)
        return live

    def create(self, symbol: str, placement: AgentPlacement) -> Any:
        """A detached ``agent.<SYMBOL>`` actor (or the one that already holds the name)."""
        from agents.actor import AgentActor

        handle = AgentActor.options(
            name=agent_name(symbol),
            namespace=self.namespace,
            lifetime="detached",
            get_if_exists=True,
            max_restarts=-1,
            max_task_retries=-1,
            num_cpus=placement.num_cpus,
            resources=dict(placement.resources) or None,
        ).remote(self.fleet_name, self.namespace, symbol)
        self.cache[symbol] = handle
        return handle

    async def call(self, symbol: str, method: str, *args: Any, timeout: float | None = None) -> Any:
        """``agent.<SYMBOL>.method(*args)``; LookupError without such an actor, TimeoutError past ``timeout``."""
        handle = self.get(symbol)
        if handle is None:
            raise LookupError(f"no actor {agent_name(symbol)} in namespace {self.namespace}")
        try:
            return await asyncio.wait_for(getattr(handle, method).remote(*args), timeout or self.call_timeout_s)
        except ray.exceptions.ActorDiedError:
            self.cache.pop(symbol, None)  # gone for good: the reconcile loop recreates it
            raise
