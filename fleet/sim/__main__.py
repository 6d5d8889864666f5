"""``python -m fleet sim``: run the exchange simulator until Ctrl-C / SIGTERM.

Prints the REST and WS URLs and each account's key and secret (``--json``: one JSON line, for
scripts), once the port is accepting connections. ``--replay DIR`` (or ``replay: DIR`` in the
config) replays a recording (``python -m fleet record``, docs/recording.md) as the market instead of
the model, its first line at the simulator's start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import re
import signal
import sys
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to bind (default: a free port)")
    parser.add_argument("--symbols", default=None,
                        help="comma-separated symbols (unknown names get a generic spec); default: the "
                             "config's symbols, else ETHUSDC,BTCUSDT,SOLUSDT")
    parser.add_argument("--seed", type=int, default=7, help="seed of the market model")
    parser.add_argument("--config", default=None, help="simulator YAML (market, funding, limits, accounts)")
    parser.add_argument("--replay", default=None, metavar="DIR",
                        help="replay this recording (python -m fleet record; docs/recording.md) as the market "
                             "instead of the model: recorded books, trades and marks, shifted to start now; "
                             "the symbols default to the recording's")
    parser.add_argument("--accounts", default=None,
                        help="comma-separated account names (default: the config's, else 'main'); "
                             "each starts with 100,000 USDT and 100,000 USDC")
    parser.add_argument("--api-key", default=None, help="fix the first account's API key")
    parser.add_argument("--api-secret", default=None, help="fix the first account's API secret")
    parser.add_argument("--funding-interval", type=float, default=None,
                        help="funding interval in seconds (default 8 h, aligned to 00/08/16 UTC)")
    parser.add_argument("--legacy-paths", choices=("public", "all"), default=None,
                        help="what the unrouted /ws and /stream paths deliver: 'public' (the /public streams only, books and trades, "
                             "as Binance since 2026-04-23; the default) or 'all' (as the testnet)")
    parser.add_argument("--json", action="store_true", help="print one JSON line when ready")
    parser.add_argument("--log-level", default="WARNING", help=f"one of {', '.join(LEVELS)} (default WARNING)")


LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _symbols(raw: str | None) -> list[str] | None:
    if raw is None:
        return None
    names = [s.strip().upper() for s in raw.split(",") if s.strip()]
    if not names:
        raise SystemExit("--symbols: give at least one symbol, e.g. ETHUSDC,BTCUSDT")
    bad = [n for n in names if not re.fullmatch(r"[A-Z0-9]{2,30}", n)]
    if bad:
        raise SystemExit(f"--symbols: {bad[0][:40]!r} is not a symbol (2-30 letters and digits, e.g. ETHUSDC)")
    return names


async def _serve(args: argparse.Namespace) -> None:
    from fleet.sim.config import ACCOUNT_NAME, API_KEY, MAX_FUNDING_INTERVAL_S, SimConfigError, load_sim_config
    from fleet.sim.server import SimServer

    if args.api_key is not None and not re.fullmatch(API_KEY, args.api_key):   # (the key is not echoed)
        raise SystemExit(f"--api-key: 1-256 printable characters without spaces or control characters "
                         f"({len(args.api_key)} given, not shown)")

    try:
        config = load_sim_config(args.config, replay=args.replay)
    except SimConfigError as exc:
        raise SystemExit(f"sim: {exc}") from None
    if args.accounts:
        from fleet.sim.config import AccountSpec

        names = [n.strip() for n in args.accounts.split(",") if n.strip()]
        bad = [n for n in names if not re.fullmatch(ACCOUNT_NAME, n)]
        if bad:
            raise SystemExit(f"--accounts: {bad[0][:60]!r} is not an account name (1-40 letters, digits, _ . or -)")
        accounts = tuple(AccountSpec(name=n) for n in names)
        if not accounts or len(set(names)) != len(names):
            raise SystemExit("--accounts: give distinct names, e.g. main,hedge")
        config = config.model_copy(update={"accounts": accounts})
    if args.legacy_paths is not None:
        config = config.model_copy(update={"legacy_paths": args.legacy_paths})
    if args.funding_interval is not None:
        if not (math.isfinite(args.funding_interval) and 1 <= args.funding_interval <= MAX_FUNDING_INTERVAL_S):
            raise SystemExit(f"--funding-interval: seconds, from 1 to a week ({MAX_FUNDING_INTERVAL_S:.0f})")
        config = config.model_copy(update={"funding_interval_s": args.funding_interval})
    try:
        sim = SimServer(symbols=_symbols(args.symbols), seed=args.seed, host=args.host, port=args.port,
                        config=config, api_key=args.api_key, api_secret=args.api_secret)
    except SimConfigError as exc:  # a recording that cannot be replayed (RecordingError)
        raise SystemExit(f"sim: {exc}") from None
    try:
        await sim.start()
    except (OSError, OverflowError) as exc:   # the port taken, out of range, the host unknown
        raise SystemExit(f"sim: cannot listen on {args.host}:{args.port}: {exc}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # before announcing readiness: a quick Ctrl-C still stops cleanly
        loop.add_signal_handler(sig, stop.set)
    accounts = [{"name": n, "api_key": k, "api_secret": s} for n, k, s in sim.accounts]
    if args.json:
        print(json.dumps({"rest_url": sim.rest_url, "ws_url": sim.ws_url, "accounts": accounts}), flush=True)
    else:
        print(f"fleet.sim serving {', '.join(sim.engine.books)}", flush=True)
        print(f"  REST {sim.rest_url}\n  WS   {sim.ws_url}", flush=True)
        for a in accounts:
            print(f"  account {a['name']}: api_key={a['api_key']} api_secret={a['api_secret']}", flush=True)
        print("  Ctrl-C stops it.", flush=True)
    try:
        await stop.wait()
    finally:
        await sim.stop()


def run(args: Any) -> int:
    level = str(args.log_level).upper()
    if level not in LEVELS:
        raise SystemExit(f"--log-level: {str(args.log_level)[:40]!r} is not a level (one of {', '.join(LEVELS)})")
    logging.basicConfig(level=getattr(logging, level),
                        stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(_serve(args))
    except KeyboardInterrupt:  # Ctrl-C while starting up
        pass
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="python -m fleet.sim")
    add_arguments(p)
    raise SystemExit(run(p.parse_args()))
