"""``python -m fleet <command>``: the one entry point for the simulator, a single agent and the fleet.

Each command lives in the module that owns it; this file only parses arguments and dispatches, so
that ``python -m fleet sim`` does not pay for importing Ray.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module, function, help). The module exposes ``add_arguments(parser)`` and the function.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "sim": ("fleet.sim.__main__", "run", "run the Binance-compatible exchange simulator"),
    "demo": ("fleet.ops.demo", "run", "the demo: the fleet on the built-in simulator"),
    "agent": ("fleet.ops.agent_cli", "run", "run one symbol agent standalone (no Ray) until Ctrl-C"),
    "up": ("fleet.ops.fleet_cli", "up", "start the fleet on Ray (simulator, controller, agents, endpoint)"),
    "apply": ("fleet.ops.fleet_cli", "apply", "apply a changed config to the running fleet, live"),
    "down": ("fleet.ops.fleet_cli", "down", "stop the fleet: 0 open orders, no agents, no endpoint"),
    "status": ("fleet.ops.fleet_cli", "status", "the fleet's agents: state, epoch, lease, kill state"),
    "exposure": ("fleet.ops.fleet_cli", "exposure", "per symbol position, worst case vs cap, P&L"),
    "kill": ("fleet.ops.fleet_cli", "kill", "halt (or --flatten) symbols or the whole fleet"),
    "resume": ("fleet.ops.fleet_cli", "resume", "resume halted symbols"),
    "validate": ("fleet.ops.fleet_cli", "validate", "check a fleet config without starting anything"),
    "journal": ("journal.cli", "run", "the trade journal: pnl, fills, events, export, replay"),
    "simulate": ("fleet.ops.simulate_cli", "run", "days of the agents in minutes on a simulated clock; sweeps"),
    "record": ("simulate.record", "run", "record Binance's market streams (bookTicker, aggTrade, markPrice) to a directory"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fleet", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, func, help_text) in COMMANDS.items():
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_text, description=help_text)
        mod.add_arguments(p)
        p.set_defaults(_module=module, _func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    func = getattr(importlib.import_module(args._module), args._func)
    return int(func(args) or 0)
