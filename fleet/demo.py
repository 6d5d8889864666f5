"""``python -m fleet demo``: a short scripted session on the built-in simulator (until the fleet lands)."""

from __future__ import annotations

import argparse
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=20.0, help="how long the scripted session runs")
    parser.add_argument("--seed", type=int, default=7)


def run(args: Any) -> int:
    from fleet.sim.demo_session import run_session

    return run_session(seconds=args.seconds, seed=args.seed)
