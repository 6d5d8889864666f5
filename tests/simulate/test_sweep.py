"""A sweep on a local Ray cluster equals the same runs made one by one in this process, and the
sweep's command prints one row per combination, sorted by the objective."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from fleet.config import load_fleet_config
from simulate.params import parse_sweep
from simulate.run import RunOptions, simulate
from simulate.sweep import rank, run_sweep

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "fleet.demo.yaml"


def test_a_sweep_of_four_on_ray_equals_four_serial_runs(ray_cluster):
    combos = parse_sweep(["size_decay_k=3.8,4.1", "base_size=0.007,0.008"])
    assert combos == [{"worst_case.size_decay_k": k, "base.base_size": b}
                      for k in (3.8, 4.1) for b in (0.007, 0.008)]
    opts = RunOptions(hours=3 / 60.0, seed=11, symbols=["ETHUSDC"], points=500)
    swept = run_sweep(str(CONFIG), opts, combos)
    cfg = load_fleet_config(CONFIG)
    serial = [simulate(cfg, CONFIG, opts, combo) for combo in combos]
    assert [r.overrides for r in swept] == combos
    for a, b in zip(swept, serial):
        assert a.symbols[0].table == b.symbols[0].table
        assert a.symbols[0].samples == b.symbols[0].samples
        assert a.symbols[0].params == b.symbols[0].params
    assert len({r.symbols[0].table["pnl_total"] for r in serial}) > 1  # the parameters made a difference
    best = rank(swept, "pnl_total")
    assert [r.symbols[0].table["pnl_total"] for r in best] == sorted((r.symbols[0].table["pnl_total"] for r in swept),
                                                                     reverse=True)


def test_bad_sweep_and_override_arguments_are_refused_naming_the_problem():
    for args, message in ([["--sweep", "no_such_param=1,2"], "no parameter 'no_such_param'"],
                          [["--sweep", "size_decay_k=fast"], "is not a number"],
                          [["--set", "grid.size_decay_k=4"], "no parameter 'grid.size_decay_k'"],
                          [["--set", "interval_sec=3"], "under the 30 s floor"],
                          [["--hours", "-1"], "--hours must be above 0"],
                          [["--set", "net_max=5"], "exceeds the hard cap"],
                          [["--symbols", "ETHUSDC,DOGEUSDT"], "DOGEUSDT is not in the fleet config"],
                          [["--schedule", "/no/such/file.yaml"], "file.yaml cannot be read"]):
        done = subprocess.run([sys.executable, "-m", "fleet", "simulate", "--config", str(CONFIG), "--symbols",
                               "ETHUSDC", "--hours", "0.01", *args], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr, (args, done.stderr)
