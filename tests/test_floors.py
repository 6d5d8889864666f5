"""The floors of docs/architecture.md hold: import-linter's contracts (.importlinter) over the tree,
and the same contracts fail on a copy of the tree with one forbidden import added."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).parent / "lint-imports"
PACKAGES = ("fleet", "agents", "controller", "journal")


def lint(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT), "--config", str(root / ".importlinter"), "--no-cache"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)


def test_every_contract_is_kept():
    done = lint(REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_a_forbidden_import_breaks_its_contract(tmp_path):
    for name in PACKAGES:
        shutil.copytree(REPO / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / ".importlinter", tmp_path / ".importlinter")
    store = tmp_path / "agents" / "store.py"
    store.write_text(store.read_text() + "\n\ndef _peek():\n    import ray  # the pure core reaching for Ray\n")
    done = lint(tmp_path)
    assert done.returncode != 0, done.stdout
    assert "agents.store is not allowed to import ray" in done.stdout
    assert "The pure core imports no runtime" in done.stdout
