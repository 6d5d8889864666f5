"""``python -m fleet demo``: the fleet on the built-in simulator for about two minutes, then a summary.

It is ``python -m fleet up --config configs/fleet.demo.yaml --duration 120`` on a private local Ray
cluster (three symbols, one simulated account, the HTTP endpoint on 127.0.0.1:8000).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "fleet.demo.yaml"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=str(DEMO_CONFIG), help="fleet config (default: the demo fleet)")
    parser.add_argument("--duration", type=float, default=120.0, help="seconds the fleet runs before the summary")
    parser.add_argument("--address", default="local", help="Ray: 'local' (a private cluster, default) or 'auto'")
    parser.add_argument("--refresh", type=float, default=None, help="seconds between tables")


def run(args: Any) -> int:
    from fleet.ops.fleet_cli import up

    code = up(argparse.Namespace(config=args.config, duration=args.duration, address=args.address, detach=False,
                                 refresh=args.refresh, quote_timeout=90.0))
    print_journal_pnl(args.config)
    return code


def print_journal_pnl(config: str) -> None:
    """The demo's last word: the P&L split per symbol, read back from the trade journal."""
    try:
        from fleet.config import load_fleet_config
        from journal import pnl
        from journal.db import make_engine, target_of

        cfg = load_fleet_config(config)
        if not cfg.journal.enabled:
            return
        target = target_of(cfg)
        engine = make_engine(target)
        try:
            report = pnl.compute(engine, fleet=cfg.name)
        finally:
            engine.dispose()
        print(f"\njournal {target.describe()}")
        print(pnl.render(report), flush=True)
    except Exception as exc:  # noqa: BLE001 - the demo's own summary has been printed already
        print(f"journal: no P&L report ({type(exc).__name__}: {exc})")

