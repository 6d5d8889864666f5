"""The spools a fleet's processes left while the journal's database did not answer.

Each writer (an agent's symbol, the controller, the CLI) spools to ``<name>.spool.jsonl`` and replays
its own spool when it next writes, so a fleet stopped during an outage (``down``) leaves rows that
only its next ``up`` brings in. ``python -m fleet journal replay`` brings them in now; the read
commands say when rows are waiting, so a report is never short without a word.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from .db import Target
from .writer import JournalWriter, _safe

log = logging.getLogger("mmfleet.journal")
SUFFIXES = (".spool.jsonl", ".replaying.jsonl")


@dataclass(frozen=True)
class Replayed:
    """One name's spool brought in: rows written, lines that did not read, and the error if not all went."""

    name: str
    rows: int
    unreadable: int
    error: str | None = None


def waiting(spool_dir: str | Path, fleet: str | None) -> dict[str, int]:
    """The fleet's spooled rows not yet in the database, per writer's name (all fleets' with ``fleet``
    None); a directory that does not exist holds none."""
    out: dict[str, int] = {}
    prefix = f"{_safe(fleet)}-" if fleet else ""
    try:
        files = sorted(Path(spool_dir).iterdir())
    except OSError:
        return out
    for path in files:
        name = next((path.name[:-len(s)] for s in SUFFIXES if path.name.endswith(s)), None)
        if name is None or not name.startswith(prefix):
            continue
        try:
            with open(path, "rb") as f:
                lines = sum(1 for line in f if line.strip())
        except OSError:
            continue
        if lines:
            out[name] = out.get(name, 0) + lines
    return out


def replay(target: Target, fleet: str) -> list[Replayed]:
    """Every spool of the fleet under the target's spool directory put into its database, one writer's
    name at a time (safe while the fleet runs: its rows are idempotent)."""
    done = []
    for name in waiting(target.spool_dir, fleet):
        writer = JournalWriter(target, name)
        try:
            left = not writer.replay_now()
        finally:
            writer.close(1.0)
        error = (writer.last_error or "the database did not take the rows") if left else None
        done.append(Replayed(name, writer.stats["replayed"], writer.stats["dropped"], error))
    return done
