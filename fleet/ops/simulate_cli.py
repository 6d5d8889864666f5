"""``python -m fleet simulate``: days of the fleet's own agents in minutes, on a simulated clock.

    python -m fleet simulate --config configs/fleet.demo.yaml --symbols ETHUSDC --hours 48 --seed 7 \\
        [--schedule faults.yaml] [--report out.html] [--json out.json]
    python -m fleet simulate --config ... --hours 24 --sweep size_decay_k=3.8,4.1 base_size=0.007,0.008 \\
        [--objective pnl_total | --minimize worst_long_above_share] [--address RAY_ADDRESS]

Prints the seed's tuning table per symbol and the tuning rules that apply; a sweep prints one row
per combination, best first, after running them as Ray tasks (a loopback-only local cluster unless
``--address`` names a running one). Exit codes: 0 done, 2 bad arguments or config.
"""

from __future__ import annotations

import argparse
import os
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

EXIT_BAD = 2
MAX_HOURS = 8760


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="fleet config YAML (its symbols and their params)")
    parser.add_argument("--symbols", help="comma-separated symbols of the config (default: all of them)")
    parser.add_argument("--hours", type=float, help="simulated hours (default 48; with --replay the recording's span)")
    parser.add_argument("--seed", type=int, default=7, help="the run's seed: the same seed prints the same table")
    parser.add_argument("--sim-config", help="simulator YAML (market model, funding); default: the fleet "
                                             "config's simulator config, else the simulator's defaults")
    parser.add_argument("--replay", help="a recording directory (python -m fleet record) to replay as the market")
    parser.add_argument("--schedule", help="YAML list of faults and market events (see simulate/schedule.py)")
    parser.add_argument("--rest-latency-ms", type=float, default=2.0, help="a REST round trip (default 2)")
    parser.add_argument("--stream-latency-ms", type=float, default=1.0, help="engine -> agent frame delay (default 1)")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a parameter for this run (e.g. size_decay_k=4.1); repeatable")
    parser.add_argument("--sweep", nargs="+", metavar="NAME=V1,V2", help="run the grid of these values as Ray tasks")
    parser.add_argument("--objective", default="pnl_total", help="table key a sweep is sorted by (default pnl_total)")
    parser.add_argument("--minimize", action="store_true", help="sort the sweep ascending (e.g. a worst-case share)")
    parser.add_argument("--address", default="local", help="Ray address for a sweep (default: a local cluster)")
    parser.add_argument("--report", help="write the HTML report here (one self-contained offline file)")
    parser.add_argument("--json", help="write the full result (tables and series) as JSON here")
    parser.add_argument("--points", type=int, default=20_000, help="series rows kept per symbol (default 20,000)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    parser.add_argument("--verbose", action="store_true", help="the agents' log on stderr (normally counted only)")


def _options(args: argparse.Namespace) -> Any:
    from simulate.run import RunOptions
    from simulate.schedule import load_schedule

    sim_config: Any = args.sim_config
    start: dict[str, Any] = {}
    hours = args.hours
    symbols = [s.strip().upper() for s in args.symbols.split(",") if s.strip()] if args.symbols is not None else None
    if symbols == []:
        raise ValueError("--symbols names no symbol (e.g. --symbols ETHUSDC,BTCUSDT; without it, every symbol of "
                         "the config)")
    if args.replay:
        from fleet.sim.config import load_sim_config
        from fleet.sim.recording import Recording
        from simulate.run import replay_start_ms

        first = start["start_ms"] = replay_start_ms(args.replay, symbols)  # the recorded times, unchanged
        rec = Recording(args.replay)
        last = rec.manifest.get("end_ms")
        if not isinstance(last, int):   # the recorder was killed: the recording ends with its last line
            ends = [t for t in (rec.last_ms(s) for s in symbols or rec.symbols) if t is not None]
            last = max(ends) if ends else None
        if isinstance(last, int) and last <= first:
            raise ValueError(f"--replay {args.replay}: its manifest's end ({last}) is not after its first line "
                             f"({first})")
        if hours is None and isinstance(last, int):
            hours = (last - first) / 3_600_000.0
            if hours > MAX_HOURS:
                raise ValueError(f"--replay {args.replay}: its manifest's end ({last}) is {hours:.0f} h after its "
                                 f"first line, over {MAX_HOURS} (a year): give --hours, or mend the manifest's end_ms")
        elif isinstance(last, int) and hours is not None and hours * 3_600_000 > last - first:
            print(f"simulate: note: --hours {hours:g} runs past the recording's {(last - first) / 3_600_000:.3g} h: "
                  f"the market stands still after it", file=sys.stderr)
        base = load_sim_config(args.sim_config, replay=str(Path(args.replay).resolve())) if args.sim_config else None
        sim_config = {**(base.model_dump() if base is not None else {}), "replay": str(Path(args.replay).resolve())}
    hours = 48.0 if hours is None else hours
    if not 0 < hours <= MAX_HOURS:
        raise ValueError(f"--hours must be above 0 and at most {MAX_HOURS} (a year), not {hours:g}")
    for flag, value in (("--rest-latency-ms", args.rest_latency_ms), ("--stream-latency-ms", args.stream_latency_ms)):
        if not 0 <= value <= 60_000:
            raise ValueError(f"{flag} must be from 0 to 60000 ms, not {value:g}")
    if args.points < 2:
        raise ValueError(f"--points must be at least 2, not {args.points}")
    args.hours = hours
    return RunOptions(
        **start, hours=hours, seed=args.seed,
        symbols=symbols,
        rest_latency_ms=args.rest_latency_ms, stream_latency_ms=args.stream_latency_ms, sim_config=sim_config,
        schedule=load_schedule(args.schedule) if args.schedule else [], points=args.points,
        progress=None if args.no_progress else _progress_bar(args.hours))


def _progress_bar(hours: float) -> Any:
    tty = sys.stderr.isatty()

    def show(done_h: float, wall_s: float) -> None:
        share = min(done_h / hours, 1.0)
        if not tty and round(share * 100) % 10:
            return
        bar = "#" * int(share * 30)
        end = "\n" if not tty or share >= 1.0 else ""
        sys.stderr.write(f"\r[{bar:<30}] {done_h:7.2f} / {hours:g} simulated h  {wall_s:6.1f} s wall{end}")
        sys.stderr.flush()

    return show


def run(args: argparse.Namespace) -> int:
    from fleet.config import ConfigError, load_fleet_config, params_refusal, symbol_params
    from fleet.sim.config import BUILT_IN_SPECS, SimConfigError
    from simulate.run import sim_config_for
    from simulate.params import OverrideError, parse_sweep
    from simulate.params import apply as apply_overrides
    from simulate.schedule import ScheduleError, check_routes, check_run
    from simulate.sweep import OBJECTIVES

    try:
        cfg = load_fleet_config(args.config)
        opts = _options(args)
        symbols = opts.symbols or [s.symbol for s in cfg.symbols]
        unknown = [s for s in symbols if s not in {e.symbol for e in cfg.symbols}]
        if unknown:
            raise ValueError(f"{unknown[0]} is not in the fleet config {args.config}")
        sim_cfg = sim_config_for(cfg, opts)
        check_run(opts.schedule, symbols, opts.hours, [a.name for a in cfg.accounts], bool(sim_cfg.replay))
        if any(ev.do in ("rest_fault", "latency") for ev in opts.schedule):   # (before a sweep's Ray tasks start)
            from fleet.sim.config import SimConfig
            from fleet.sim.local import LocalExchange

            check_routes(opts.schedule, LocalExchange(clock_ms=lambda: opts.start_ms, symbols=symbols[:1],
                                                      config=SimConfig(history=False)).routes)
        overrides = parse_sweep(args.set, single=True)[0] if args.set else {}
        combos = parse_sweep(args.sweep) if args.sweep else []
        both = sorted(set(overrides) & set(combos[0])) if combos else []
        if both:
            raise ValueError(f"{both[0]} is given by --set and --sweep: give it in one of them")
        strange = [s for s in symbols if not sim_cfg.replay and not sim_cfg.knows(s)]
        if strange:
            raise ValueError(f"{strange[0]} has no contract in the simulator (built in: {', '.join(BUILT_IN_SPECS)}): "
                             f"give its spec (tick_size, step_size, start_price, ...) under symbols: in --sim-config")
        specs = {sp.symbol: sp for sp in sim_cfg.symbol_specs(symbols)}
        for combo in combos or [{}]:   # every combination checked before a run (a sweep's Ray tasks) starts
            for symbol in symbols:
                p = apply_overrides(cfg, symbol, symbol_params(cfg, symbol, args.config), {**overrides, **combo})
                spec = specs[symbol]
                refusal = params_refusal(symbol, p, spec.smallest_order, Decimal(spec.min_notional))
                if refusal:
                    raise ValueError(refusal)
        if combos and args.objective not in OBJECTIVES:
            raise ValueError(f"--objective {args.objective[:40]!r} is not a figure of the table: one of "
                             f"{', '.join(sorted(OBJECTIVES))}")
        for name in ("report", "json"):
            writable(getattr(args, name), f"--{name}")
    except (ConfigError, OverrideError, ScheduleError, SimConfigError, ValueError) as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return EXIT_BAD
    try:
        if combos:
            return _sweep(args, opts, [{**overrides, **c} for c in combos])
        return _single(args, cfg, opts, overrides)
    except (ConfigError, OverrideError, ValueError, KeyError) as exc:
        print(f"simulate: {exc}", file=sys.stderr)
        return EXIT_BAD
    except RuntimeError as exc:   # a part of the run that ended before it (an agent's fatal start, say)
        print(f"simulate: {exc}", file=sys.stderr)
        return 1


def _single(args: argparse.Namespace, cfg: Any, opts: Any, overrides: dict[str, Any]) -> int:
    from simulate.run import simulate
    from simulate.table import format_table

    result = simulate(cfg, args.config, opts, overrides, verbose=args.verbose)
    print(format_table(result))
    if result.log_tail and not args.verbose:
        print("\nthe agents' last warnings (--verbose shows their whole log):")
        print("\n".join(f"  {line}" for line in result.log_tail))
    print(f"\n{result.hours:g} simulated hours in {result.wall_s:.1f} s wall "
          f"({result.hours / max(result.wall_s, 1e-9):.2f} simulated h/s, {result.events:,} events)")
    _write(args, result)
    return 0


def _sweep(args: argparse.Namespace, opts: Any, combos: list[dict[str, Any]]) -> int:
    from fleet.ops.fleet_cli import connect
    from simulate.sweep import rank, run_sweep, sweep_table

    connect(args.address, "mmfleet-simulate", start_local=True, hint="")
    print(f"sweep: {len(combos)} combinations of {opts.hours:g} simulated hours as Ray tasks", file=sys.stderr)
    done: list[Any] = []
    results = run_sweep(args.config, opts, combos,
                        on_done=lambda r: (done.append(r), print(f"  done {len(done)}/{len(combos)}: {r.overrides}",
                                                                 file=sys.stderr)))
    ranked = rank(results, args.objective, args.minimize)
    print(sweep_table(ranked, args.objective))
    _write(args, ranked[0])
    return 0


def writable(path: str | None, flag: str) -> None:
    """A file the run's output can be written to, checked before hours of simulation are spent."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"{flag} {path}: is a directory, not a file")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise ValueError(f"{flag} {path}: its directory {parent} does not exist")
    if not os.access(parent, os.W_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise ValueError(f"{flag} {path}: not writable")


def _write(args: argparse.Namespace, result: Any) -> None:
    if args.report:
        from simulate.report import write_report

        path = write_report(result, args.report)
        print(f"report: {path}")
    if args.json:
        import orjson

        Path(args.json).write_bytes(orjson.dumps(result.to_dict(), option=orjson.OPT_SERIALIZE_NUMPY))
        print(f"json: {args.json}")
