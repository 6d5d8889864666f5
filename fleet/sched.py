"""The CPU class a process runs in: Linux's ``SCHED_IDLE`` for the agents when ``agent.cpu_class``
asks for it (``background``, or ``auto`` on the controller's node), and for a sweep's runs.

Ray starts every worker at niceness 15 and the fleet's kill path (the endpoint, Serve's proxy, the
controller, a hosted simulator) at 0. Niceness shares the CPU by weight, but it does not decide who
runs *now*: the scheduler (EEVDF, Linux 6.6 on) lets the running task finish its slice (some 1.4 ms
here) before a task that wakes up gets the core, whatever their niceness. With 50 agents quoting on
2 cores the endpoint's and the simulator's event loops waited about 1.3 ms after every wake-up: some
300 ms of a kill's 550 ms (``/proc/<pid>/task/*/schedstat`` over the kills of a 50-symbol fleet). A
``SCHED_IDLE`` task is preempted at once by any ordinary one that wakes, and runs whenever no
ordinary task wants the core, so a quiet node gives the agents all it has and a kill takes the
core the moment it needs it: the same kills confirmed 0 at the exchange after 109-195 ms instead of
345-598 ms. The cost: any ordinary process busy on the node (a build, another job's worker) comes
first; an agent starved past its lease is fenced, its orders cancelled (the safe side).

Linux only; elsewhere, or where the system refuses, the process stays as it was and says why.
"""

from __future__ import annotations

import os


def wanted_class(cpu_class: str, node: str | None, controller_node: str | None) -> str:
    """``background`` or ``normal``: what ``agent.cpu_class`` asks of an agent on ``node``."""
    if cpu_class == "auto":
        return "background" if node and node == controller_node else "normal"
    return "background" if cpu_class == "background" else "normal"


def run_in_background(passes: int = 3) -> str:
    """Move every thread of this process into ``SCHED_IDLE`` (threads started later inherit it from
    the thread that starts them; the listing is read again, up to ``passes`` times, for one started
    meanwhile by a thread not yet moved). What was done, for the log and the agent's status."""
    setter = getattr(os, "sched_setscheduler", None)
    getter = getattr(os, "sched_getscheduler", None)
    policy = getattr(os, "SCHED_IDLE", None)
    if setter is None or getter is None or policy is None:
        return "normal (SCHED_IDLE is not available on this system)"
    moved: set[int] = set()
    refused: OSError | None = None
    for _ in range(passes):
        try:
            threads = [int(t) for t in os.listdir("/proc/self/task")]
        except OSError as exc:
            return f"normal (no /proc/self/task to list this process's threads: {exc})"
        left = 0
        for tid in threads:
            try:
                if getter(tid) == policy:
                    moved.add(tid)
                    continue
                left += 1
                setter(tid, policy, os.sched_param(0))
                moved.add(tid)
            except ProcessLookupError:   # the thread ended meanwhile
                continue
            except OSError as exc:
                refused = exc
        if not left or refused is not None:
            break
    if refused is not None and not moved:
        return f"normal (SCHED_IDLE refused: {refused})"
    return f"SCHED_IDLE ({len(moved)} threads)" + ("" if refused is None else f"; some refused: {refused}")
