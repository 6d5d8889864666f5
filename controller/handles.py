"""The controller's handles on its agent actors: looked up once, created when missing, called with a timeout.

A GCS lookup blocks the controller's loop (which also serves the leases), so handles are cached and
dropped only when an actor is gone for good; the reconcile pass recreates it.

The agents are created by the fleet's spawner (``agent-spawner``, a small detached actor the driver
creates next to the controller), not by the controller: the controller runs above the agents for
CPU (``above_agents_env``), an actor inherits its creator's ``runtime_env``, and an agent must take
none (see ``above_agents_env``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ray

from fleet.config import AgentPlacement

log = logging.getLogger("mmfleet.controller")

AGENT_PREFIX = "agent."
SPAWNER_NAME = "agent-spawner"
# Ray's resource of the head node: the controller, the agents' spawner and the endpoint ask for a sliver
# of it, so they run on the head, never on a trader node (a trader node's raylet hung, Ray restarted a
# controller there elsewhere while the first went on fencing: two controllers, a healthy agent killed)
HEAD_NODE_RESOURCE = "node:__internal_head__"
SPAWN_TIMEOUT_S = 10.0  # the spawner's answer for a batch of agents (one GCS lookup and one creation each)


def app_name(fleet_name: str) -> str:
    """The Serve application name of a fleet's endpoint."""
    return f"fleet-api-{fleet_name}"


def agent_name(symbol: str) -> str:
    return f"{AGENT_PREFIX}{symbol}"


def above_agents_env() -> dict[str, Any]:
    """The ``runtime_env`` of a process that must not wait behind the agents for CPU: the endpoint
    (Serve's controller, its HTTP proxy, the replica), the controller and a hosted simulator. The
    raylet starts it at niceness 0, its own (``RAY_worker_niceness``), and every other worker, so
    every agent, at Ray's default 15: on a node the agents saturate, a kill, a lease renewal and a
    page still get their CPU turns first. The agents take none: a worker with one costs twice the CPU
    to start (0.31 -> 0.60 s measured here; 50 agents all quoting 43 -> 58 s), and since an actor
    inherits its creator's ``runtime_env``, the spawner, which has none, creates them. Nothing secret
    goes here (it is visible cluster-wide). Serve's proxy also guards what it takes from a client's
    headers (``controller.proxy_guard``)."""
    return {"env_vars": {"RAY_worker_niceness": "0",
                         "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "controller.proxy_guard.middlewares"}}


def create_agents(fleet_name: str, namespace: str, symbols: list[str], placement: AgentPlacement) -> dict[str, Any]:
    """Detached ``agent.<SYMBOL>`` actors (or the ones already holding the names); their handles."""
    from agents.actor import AgentActor

    return {symbol: AgentActor.options(
        name=agent_name(symbol),
        namespace=namespace,
        lifetime="detached",
        get_if_exists=True,
        max_restarts=-1,
        max_task_retries=-1,
        num_cpus=placement.num_cpus,
        resources=dict(placement.resources) or None,
    ).remote(fleet_name, namespace, symbol) for symbol in symbols}


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class AgentSpawner:
    """Creates a fleet's agents for its controller, from a process without a ``runtime_env`` (at the
    agents' niceness, like them)."""

    def create(self, fleet_name: str, namespace: str, symbols: list[str], placement: dict[str, Any]) -> dict[str, Any]:
        return create_agents(fleet_name, namespace, symbols, AgentPlacement(**placement))

    def pid(self) -> int:
        return os.getpid()


def get_or_create_spawner(namespace: str) -> Any:
    """The fleet's spawner (created detached if missing), by a process that must have no ``runtime_env``
    (a driver): its agents would inherit it."""
    return AgentSpawner.options(name=SPAWNER_NAME, namespace=namespace, lifetime="detached",
                                get_if_exists=True, resources={HEAD_NODE_RESOURCE: 0.001}).remote()


def named_actor(name: str, namespace: str) -> Any | None:
    """The handle of the named actor, or None when there is no such actor (one GCS call)."""
    try:
        return ray.get_actor(name, namespace=namespace)
    except ValueError:
        return None


def find_spawner(namespace: str) -> Any | None:
    return named_actor(SPAWNER_NAME, namespace)


class AgentHandles:
    """``agent.<SYMBOL>`` actors of one fleet's namespace."""

    def __init__(self, fleet_name: str, namespace: str, call_timeout_s: float) -> None:
        self.fleet_name = fleet_name
        self.namespace = namespace
        self.call_timeout_s = call_timeout_s
        self.cache: dict[str, Any] = {}
        self._lookups = ThreadPoolExecutor(2, thread_name_prefix="agent-lookup")   # (call's; not the loop's pool)
        self.spawner: Any | None = None
        self.unspawned = 0   # agents this process created itself, without a spawner

    def get(self, symbol: str, *, fresh: bool = False) -> Any | None:
        """The agent's handle, cached (``fresh``: asked of the GCS again); None when there is no such actor."""
        if not fresh and symbol in self.cache:
            return self.cache[symbol]
        handle = named_actor(agent_name(symbol), self.namespace)
        if handle is None:
            self.cache.pop(symbol, None)
        else:
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

    async def create(self, symbols: list[str], placement: AgentPlacement) -> None:
        """Detached ``agent.<SYMBOL>`` actors for ``symbols`` (those already holding their names kept),
        created by the fleet's spawner. Without one that answers within ``SPAWN_TIMEOUT_S`` (a fleet
        deployed by hand; its spawner killed for good, restarting or stuck) this process creates them
        itself, logged as an error: they then inherit its ``runtime_env`` (run at its niceness, level
        with the endpoint, and start at twice the CPU). The spawner is looked up again next time."""
        if not symbols:
            return
        if self.spawner is None:
            self.spawner = await asyncio.to_thread(find_spawner, self.namespace)
        why = f"no {SPAWNER_NAME} actor in namespace {self.namespace}"
        if self.spawner is not None:
            ref = self.spawner.create.remote(self.fleet_name, self.namespace, symbols, placement.model_dump())
            try:
                self.cache.update(await asyncio.wait_for(ref, SPAWN_TIMEOUT_S))
                return
            except (ray.exceptions.RayActorError, asyncio.TimeoutError) as exc:
                why = f"{SPAWNER_NAME} did not answer ({type(exc).__name__})"
                self.spawner = None
                try:
                    ray.cancel(ref)   # if still queued; a late run finds the agents by name (get_if_exists)
                except Exception:  # noqa: BLE001 - best effort: creating an existing agent again is harmless
                    pass
        self.unspawned += len(symbols)
        log.error("%s: the controller creates %s itself, so they inherit its runtime_env (niceness 0, a costlier "
                  "start); `up` deploys the fleet with a spawner", why, ", ".join(agent_name(s) for s in symbols))
        self.cache.update(create_agents(self.fleet_name, self.namespace, symbols, placement))

    async def call(self, symbol: str, method: str, *args: Any, timeout: float | None = None) -> Any:
        """``agent.<SYMBOL>.method(*args)``; LookupError without such an actor, TimeoutError past ``timeout``
        (a handle not cached yet is looked up in a lookup thread, within it: a lookup waits on the GCS, up
        to 60 s while it is hung, and on the loop it held a kill's route to the exchange; kept only while
        the call still waits for it)."""
        timeout = timeout or self.call_timeout_s
        started = time.monotonic()
        handle = self.cache.get(symbol)
        if handle is None:
            loop = asyncio.get_running_loop()
            found = loop.run_in_executor(self._lookups, named_actor, agent_name(symbol), self.namespace)
            handle = await asyncio.wait_for(found, timeout)
            if handle is not None:
                self.cache[symbol] = handle
        if handle is None:
            raise LookupError(f"no actor {agent_name(symbol)} in namespace {self.namespace}")
        try:
            return await asyncio.wait_for(getattr(handle, method).remote(*args),
                                          max(timeout - (time.monotonic() - started), 0.001))
        except ray.exceptions.ActorDiedError:
            self.cache.pop(symbol, None)  # gone for good: the reconcile loop recreates it
            raise
