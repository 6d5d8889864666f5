"""The spools a fleet's processes left while the journal's database did not answer.

Each writer (an agent's symbol, the controller, the CLI) spools to ``<name>.spool.jsonl`` and replays
its own spool when it next writes, so a fleet stopped during an outage (``down``) leaves rows that
only its next ``up`` brings in. ``python -m fleet journal replay`` brings them in now; the read
commands say when rows are waiting, so a report is never short without a word.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .db import Target
from .writer import JournalWriter, _safe

SUFFIXES = (".spool.jsonl", ".replaying.jsonl")


@dataclass(frozen=True)
class Replayed:
    """One name's spool brought in: rows written, lines that did not read, and the error if not all went."""

    name: str
    rows: int
    unreadable: int
    error: str | None = None


def of_fleet(name: str, fleet: str | None) -> bool:
    """Whether a writer's name is one of the fleet's (any fleet's with ``fleet`` None): ``<fleet>-<who>``,
    ``who`` a symbol, ``controller`` or ``cli`` (never with a ``-``: fleet ``demo`` is not ``demo-b``'s).
    A name a writer would not have written as it is (odd characters) is no writer's."""
    if _safe(name) != name:
        return False
    if fleet is None:
        return "-" in name
    prefix = f"{_safe(fleet)}-"
    return name.startswith(prefix) and name[len(prefix):].isalnum()


def waiting(spool_dir: str | Path, fleet: str | None) -> dict[str, int]:
    """The fleet's spooled rows not yet in the database, per writer's name (all fleets' with ``fleet``
    None); a directory that does not exist holds none."""
    out: dict[str, int] = {}
    try:
        files = sorted(Path(spool_dir).iterdir())
    except OSError:
        return out
    for path in files:
        name = next((path.name[:-len(s)] for s in SUFFIXES if path.name.endswith(s)), None)
        if name is None or not of_fleet(name, fleet):
            continue
        try:
            with open(path, "rb") as f:
                lines = sum(1 for line in f if line.strip())
        except OSError:
            continue
        if lines:
            out[name] = out.get(name, 0) + lines
    return out


PASSES = 3   # a name's spools replayed at most this often in one command (a live writer may spool more)


def replay(target: Target, fleet: str) -> list[Replayed]:
    """Every spool of the fleet under the target's spool directory put into its database, one writer's
    name at a time (beside a running fleet too: its rows are idempotent, and a replay removes only the
    file it read)."""
    done = []
    for name in waiting(target.spool_dir, fleet):
        writer = JournalWriter(target, name)
        try:
            for _ in range(PASSES):
                ok = writer.replay_now()
                if not ok or not (writer.spool_path.exists() or writer.replay_path.exists()):
                    break
        finally:
            writer.close(1.0)
        error = None if ok else (writer.last_error or "the database did not take the rows")
        done.append(Replayed(name, writer.stats["replayed"], writer.stats["dropped"], error))
    return done
