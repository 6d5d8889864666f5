"""A free loopback port for a server started a little later (the Serve proxy, Prometheus, a Ray head).

Picked below the kernel's ephemeral range (``/proc/sys/net/ipv4/ip_local_port_range``, 32768-60999
here): a port the kernel handed out for ``bind(0)`` may be handed out again, before the server
binds it, to any process that binds port 0 meanwhile. Seen in ``make test``: a Ray worker's gRPC
server took the port chosen for the Serve proxy 4 s before the proxy tried to bind it. Used by the
tests, the benchmarks and ``up --detach`` (its Ray head's port).
"""

from __future__ import annotations

import random
import socket

LOW, HIGH = 20_000, 32_000   # below the ephemeral range, above Ray's worker ports (10002-19999)


def free_port() -> int:
    """A port in ``LOW``-``HIGH`` that nothing listens on now (tried at random)."""
    for _ in range(200):
        port = random.randint(LOW, HIGH)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free loopback port between {LOW} and {HIGH} after 200 tries")
