"""``python -m fleet demo``: the fleet on the built-in simulator for about two minutes, then a summary.

It is ``python -m fleet up --config configs/fleet.demo.yaml --duration 120`` on a private local Ray
cluster (three symbols, one simulated account, the HTTP endpoint on 127.0.0.1:8000).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "fleet.demo.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=str(DEMO_CONFIG), help="fleet config (default: the demo fleet)")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds the fleet runs before the summary")
    parser.add_argument("--address", default="local", help="Ray: 'local' (a private cluster, default) or 'auto'")
    parser.add_argument("--refresh", type=float, default=None, help="seconds between tables")


def run(args: Any) -> int:
    from fleet.fleet_cli import up

    return up(argparse.Namespace(config=args.config, duration=args.duration, address=args.address, detach=False,
                                 refresh=args.refresh, quote_timeout=90.0))
