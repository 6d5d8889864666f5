"""``python -m fleet agent``: one symbol agent on its own, without Ray, until Ctrl-C or SIGTERM.

Ownership is a lock file per fleet and symbol (a second agent is refused, naming the owner's PID);
metrics are served on ``--metrics-port``; on a signal the agent stops gracefully and prints its
final state as JSON on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_REFUSED = 3
EXIT_FAILED = 1
RUN_AFTER_STOP_S = 2.0   # the agent's run is given this long to end once its stop has


class AgentSetupError(Exception):
    """The agent cannot start as asked; the message says what to change."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="fleet config YAML (e.g. configs/fleet.demo.yaml)")
    parser.add_argument("--symbol", required=True, help="the symbol to trade, as listed in the config")
    parser.add_argument(
        "--metrics-port", type=int, default=9101, help="serve /metrics here (0 = a free port, -1 = off)"
    )
    parser.add_argument("--metrics-host", default="127.0.0.1", help="address the metrics server binds")
    parser.add_argument("--json-logs", action="store_true", help="one JSON object per log line")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING ...")
    parser.add_argument(
        "--flatten-on-stop", action="store_true", help="close the position with reduce-only orders on stop"
    )
    parser.add_argument("--rest-url", help="REST base URL (overrides the config; needed for exchange.kind=sim)")
    parser.add_argument("--ws-url", help="WebSocket base URL for market and user streams (overrides the config)")
    parser.add_argument("--ws-user-url", help="WebSocket base URL for the user stream, if it differs")
    parser.add_argument("--state-dir", help="directory of lock/PID files (default: the config's state_dir)")


def _endpoints(cfg: Any, args: argparse.Namespace) -> Any:
    from agents.agent import ExchangeEndpoints

    ex = cfg.exchange
    rest = args.rest_url or ex.rest_url
    ws_market = args.ws_url or ex.ws_market_url
    ws_user = args.ws_user_url or args.ws_url or ex.ws_user_url or ws_market
    if not rest or not ws_market:
        if ex.kind == "sim":
            raise AgentSetupError(
                "exchange.kind=sim: pass --rest-url and --ws-url of a running simulator "
                "(`python -m fleet sim --json` prints them), or set exchange.rest_url/ws_market_url"
            )
        raise AgentSetupError("exchange.rest_url and exchange.ws_market_url are required")
    for name, url in (("--rest-url", rest), ("--ws-url", ws_market), ("--ws-user-url", ws_user)):
        scheme = url.split("://", 1)[0] if "://" in url else ""
        want = ("http", "https") if name == "--rest-url" else ("ws", "wss")
        if scheme not in want:
            raise AgentSetupError(f"{name} {url!r} must start with {' or '.join(s + '://' for s in want)}")
    return ExchangeEndpoints(rest_url=rest.rstrip("/"), ws_market_url=ws_market.rstrip("/"), ws_user_url=ws_user.rstrip("/"))


def prepare(args: argparse.Namespace) -> dict[str, Any]:
    """Everything the agent needs, validated before anything connects; raises with a clear message."""
    from fleet.config import ConfigError, load_fleet_config, symbol_params

    try:
        cfg = load_fleet_config(args.config)
    except ConfigError as exc:
        raise AgentSetupError(str(exc)) from None
    symbol = args.symbol.upper()
    try:
        entry = cfg.entry(symbol)
    except KeyError:
        listed = ", ".join(e.symbol for e in cfg.symbols) or "none"
        raise AgentSetupError(f"symbol {symbol} is not in {args.config} (symbols: {listed})") from None
    try:
        params = symbol_params(cfg, symbol, args.config)
    except ConfigError as exc:
        raise AgentSetupError(str(exc)) from None
    account = cfg.account(entry.account)
    endpoints = _endpoints(cfg, args)
    runtime = cfg.runtime
    if args.flatten_on_stop and not runtime.flatten_on_stop:
        runtime = runtime.model_copy(update={"flatten_on_stop": True})
    state_dir = Path(args.state_dir or cfg.state_dir)
    return {
        "cfg": cfg,
        "symbol": symbol,
        "params": params,
        "account": account,
        "endpoints": endpoints,
        "runtime": runtime,
        "state_dir": state_dir,
    }


async def _serve_metrics(agent: Any, host: str, port: int) -> tuple[Any, int]:
    from aiohttp import web

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=agent.metrics_text(), content_type="text/plain", charset="utf-8")

    async def status(_: web.Request) -> web.Response:
        return web.json_response({"status": agent.status(), "exposure": agent.exposure()})

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/status", status)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise AgentSetupError(f"--metrics-port {port}: cannot listen on {host}:{port}: {exc.strerror}") from None
    bound = site._server.sockets[0].getsockname()[1]  # the real port when 0 was asked
    return runner, bound


async def _main(prep: dict[str, Any], args: argparse.Namespace, log: logging.Logger, secret_filter: Any) -> dict:
    from agents.agent import SymbolAgent
    from agents.ownership import LockFileOwnership
    from fleet.binance.credentials import load_credentials

    symbol = prep["symbol"]
    cfg = prep["cfg"]
    try:
        credentials = load_credentials(prep["account"])
    except Exception as exc:  # the loader's message names the env var / file; never the value
        raise AgentSetupError(f"account {prep['account'].name}: {exc}") from None
    secret_filter.add_secrets(_secret_values(credentials))

    ownership = LockFileOwnership(prep["state_dir"], cfg.name, symbol)
    ownership.lock()  # fail fast (and before binding ports) when another agent owns it; no epoch spent
    agent = SymbolAgent(
        fleet_name=cfg.name,
        symbol=symbol,
        params=prep["params"],
        runtime=prep["runtime"],
        endpoints=prep["endpoints"],
        credentials=credentials,
        ownership=ownership,
        logger=log,
    )
    if cfg.journal.enabled:  # the trade journal (SQLite under state_dir, or the configured PostgreSQL)
        from journal.db import target_of
        from journal.recorder import attach_journal

        attach_journal(agent, target_of(cfg, prep["state_dir"]), fleet=cfg.name, account=prep["account"].name,
                       symbol=symbol, settings=cfg.journal)
    agent.account_name = prep["account"].name
    agent.carried = _carried(ownership, symbol, log)
    carrying = asyncio.ensure_future(_keep_carry(agent, ownership, log))
    runner = None
    loop = asyncio.get_running_loop()
    try:
        if args.metrics_port >= 0:
            runner, port = await _serve_metrics(agent, args.metrics_host, args.metrics_port)
            log.info("metrics on http://%s:%d/metrics", args.metrics_host, port, extra={"event": "metrics_serving", "symbol": symbol, "port": port})
        stop_task: list[asyncio.Task] = []

        def on_signal(signame: str) -> None:
            if stop_task:
                log.warning("%s again: still stopping", signame, extra={"symbol": symbol})
                return
            log.info("%s: stopping", signame, extra={"event": "signal", "symbol": symbol})
            stop_task.append(asyncio.ensure_future(agent.stop(flatten=prep["runtime"].flatten_on_stop)))

        for sig in (signal.SIGINT, signal.SIGTERM):   # (until the very end: a signal during the clean-up is said)
            loop.add_signal_handler(sig, on_signal, sig.name)
        summary = await _run_until_stopped(agent, stop_task, log, prep["runtime"].flatten_on_stop)
        if agent.contract.stopping_for is not None:   # a supervisor starts it again, on the exchange's new filters
            summary = {**summary, "restart_needed": "the exchange changed the symbol's filters"}
        return summary
    finally:
        carrying.cancel()   # (the books since its last write: the next agent reads the trades after its newest)
        with contextlib.suppress(BaseException):
            await carrying
        if runner is not None:
            await runner.cleanup()
        await ownership.release()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


CARRY_EVERY_S = 5.0   # the books written to the state directory this often


def _carried(ownership: Any, symbol: str, log: logging.Logger) -> Any:
    """The books the symbol's last standalone agent left in the state directory (None: none, or said)."""
    from agents.carry import read_carry_file

    record, why = read_carry_file(ownership.carry_path, symbol)
    if why:
        log.warning("the last agent's books not read, they start at 0: %s", why, extra={"symbol": symbol})
    return record


async def _keep_carry(agent: Any, ownership: Any, log: logging.Logger) -> None:
    while True:
        await asyncio.sleep(CARRY_EVERY_S)
        await _save_carry(agent, ownership, log)


async def _save_carry(agent: Any, ownership: Any, log: logging.Logger) -> None:
    """The agent's books written for its successor, only while this process still holds the lock at its
    path (a directory removed and made again under it belongs to the agent started there)."""
    from agents.carry import carry_of, write_carry_file
    from agents.ownership import OwnershipLost

    try:
        carry = carry_of(agent)
        if carry is None or agent.ownership_lost:
            return
        await ownership.renew()
        await asyncio.to_thread(write_carry_file, ownership.carry_path, carry)   # (its fsync off the trading loop)
    except OwnershipLost:
        return
    except Exception as exc:  # noqa: BLE001 - the next beat tries again
        log.warning("the books not written for the next agent: %r", exc, extra={"symbol": agent.symbol})


async def _run_until_stopped(agent: Any, stop_task: list[asyncio.Task], log: logging.Logger, flatten: bool) -> dict:
    """The agent's run until its stop's summary: the stop a signal asked for (``stop_task``), or one for
    ownership lost (the lock file removed or taken), or one after the run ended by itself."""
    symbol = agent.symbol
    run = asyncio.ensure_future(agent.run())
    while not run.done():
        await asyncio.wait({run}, timeout=0.25)
        if agent.ownership_lost and not stop_task:
            log.error("ownership of %s lost: stopping (cancelling this agent's own orders only)", symbol,
                      extra={"event": "stopping_unowned", "symbol": symbol})
            stop_task.append(asyncio.ensure_future(agent.stop()))
        if stop_task and stop_task[0].done() and not run.done():
            # stopped: a start still waiting (on the rate budget's hold of the IP's minute, say) is not
            # waited for; the process lingered up to a minute past a supervisor's grace
            await asyncio.wait({run}, timeout=RUN_AFTER_STOP_S)
            if not run.done():
                log.warning("stopped while the start still waited (on the rate budget, say): not waited for",
                            extra={"event": "start_abandoned", "symbol": symbol})
            run.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run
    if not run.cancelled():
        run.result()
    if not stop_task:   # the run ended by itself: its stop, still under the signal handlers
        stop_task.append(asyncio.ensure_future(agent.stop(flatten=flatten)))
    return await stop_task[0]


def _secret_values(credentials: Any) -> list[str]:
    values = []
    for attr in ("api_key", "api_secret", "secret", "key", "private_key"):
        v = getattr(credentials, attr, None)
        if isinstance(v, str):
            values.append(v)
        elif isinstance(v, (bytes, bytearray)):
            values.append(bytes(v).decode("utf-8", "replace"))
    return values


def run(args: argparse.Namespace) -> int:
    from agents.logging import configure_logging
    from agents.ownership import OwnershipRefused, OwnershipStateError
    from fleet.binance.errors import BinanceError

    if args.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        print("error: --log-level must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL", file=sys.stderr)
        return EXIT_CONFIG
    if not -1 <= args.metrics_port <= 65535:
        print(f"error: --metrics-port must be from 0 to 65535 (-1: off), not {args.metrics_port}", file=sys.stderr)
        return EXIT_CONFIG
    _, secret_filter = configure_logging(json_logs=args.json_logs, level=args.log_level.upper())
    log = logging.getLogger("mmfleet.agent")
    try:
        prep = prepare(args)
    except AgentSetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        summary = asyncio.run(_main(prep, args, log, secret_filter))
    except OwnershipRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except (AgentSetupError, OwnershipStateError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except BinanceError as exc:  # refused for good at start (bad key, unknown symbol)
        print(f"error: the exchange refused the agent's start: {exc}", file=sys.stderr)
        return EXIT_FAILED
    for sig in (signal.SIGINT, signal.SIGTERM):   # stopped: a second Ctrl-C now would only turn its exit into -2
        signal.signal(sig, signal.SIG_IGN)
    print(json.dumps(summary, indent=2, sort_keys=True, default=str), flush=True)
    if summary.get("other_owner_orders"):
        print(f"error: this agent never quoted: {summary['other_owner_orders']} order(s) of mmfleet's that it did not "
              f"place rest at the exchange for {prep['symbol']} (another agent on another state directory, or the "
              f"last agent's epoch lost); left as they are", file=sys.stderr)
        return EXIT_FAILED
    if summary.get("ownership_lost"):
        print(f"error: this agent lost its ownership of {prep['symbol']} (its lock file was removed or taken over) "
              f"and stopped", file=sys.stderr)
        return EXIT_FAILED
    left = summary.get("exchange_own_orders", 0)
    if left != 0:   # (the stop's ERROR said why; a supervisor reads the exit)
        print(f"error: {'an unknown number of' if left is None else left} order(s) of this agent's epoch or an "
              f"older one still rest at the exchange for {prep['symbol']} after the stop (the dead-man switch, "
              f"armed by their agent, cancels them when its countdown runs out)", file=sys.stderr)
        return EXIT_FAILED
    if prep["runtime"].flatten_on_stop and not summary.get("flattened"):
        print(f"error: the stop's flatten of {prep['symbol']} did not finish: the exchange lists a position of "
              f"{summary.get('exchange_position')}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK if summary.get("state") == "stopped" and not summary.get("restart_needed") else EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(prog="python -m fleet agent")
    add_arguments(parser)
    raise SystemExit(run(parser.parse_args()))
