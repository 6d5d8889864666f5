"""docs/architecture.md stays true to the tree: every file it names exists (a path where it gives
one, else a file of that name somewhere in the project), so a newcomer can open each."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "architecture.md"
SKIP = {".venv", ".git", "__pycache__", "node_modules", ".hypothesis", ".pytest_cache"}
NAMED = re.compile(r"`([A-Za-z0-9_./-]+\.(?:py|md|yaml|yml|toml|sh|json|sql|ini|cfg))`")


def project_files() -> set[str]:
    return {
        str(p.relative_to(REPO)) for p in REPO.rglob("*")
        if p.is_file() and not SKIP & set(p.relative_to(REPO).parts)
    }


def test_every_file_the_architecture_document_names_exists():
    files = project_files()
    names = {Path(f).name for f in files}
    named = set(NAMED.findall(DOC.read_text()))
    assert len(named) > 40, "the document names the files it describes"

    def exists(n: str) -> bool:
        if "/" in n:  # a path: from the project's root, or the tail of one (``sim/engine.py``)
            return n in files or any(f.endswith("/" + n) for f in files)
        return n in names

    missing = sorted(n for n in named if not exists(n))
    assert not missing, f"docs/architecture.md names files the tree does not have: {missing}"
