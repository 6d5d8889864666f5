"""Room sizes: no class over 450 lines and no function over 60 in agents/, controller/, fleet/binance/ and simulate/;
a class assembled from two or more of the project's own classes (mixins) counts their lines too.

Measured with ``ast`` (a definition's first line to its last, decorators and docstring included;
methods and nested functions count as functions). ALLOWED, the list of what was not split yet with
its size, is empty since issue 10 split the last: a new item over the limit fails. An entry may only
shrink (a listed item that grows fails) and the list may only get shorter; a stale entry is reported
as a warning.
"""

from __future__ import annotations

import ast
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("agents", "controller", "fleet/binance", "simulate")
MAX_CLASS = 450
MAX_FUNCTION = 60

# (file, qualified name) -> lines today; none may grow. Empty: issue 10 ("the house") split them all.
ALLOWED: dict[tuple[str, str], int] = {}


def measure() -> dict[tuple[str, str], tuple[str, int]]:
    """Every class and function over its limit: (file, qualified name) -> (kind, lines)."""
    found: dict[tuple[str, str], tuple[str, int]] = {}
    for root in ROOTS:
        for path in sorted((REPO / root).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            _walk(ast.parse(path.read_text(), rel), rel, "", found)
    return found


def _walk(node: ast.AST, rel: str, prefix: str, found: dict[tuple[str, str], tuple[str, int]]) -> None:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            name = prefix + child.name
            start = min([child.lineno, *(d.lineno for d in child.decorator_list)])
            lines = (child.end_lineno or child.lineno) - start + 1
            kind, limit = ("class", MAX_CLASS) if isinstance(child, ast.ClassDef) else ("function", MAX_FUNCTION)
            if lines > limit:
                found[(rel, name)] = (kind, lines)
            _walk(child, rel, name + ".", found)
        else:
            _walk(child, rel, prefix, found)


def test_no_class_or_function_over_its_limit_beyond_the_allow_list():
    found = measure()
    new = sorted(f"{rel} {name}: {kind} of {n} lines" for (rel, name), (kind, n) in found.items()
                 if (rel, name) not in ALLOWED)
    grown = sorted(f"{rel} {name}: {n} lines, allowed {ALLOWED[(rel, name)]}"
                   for (rel, name), (_, n) in found.items() if (rel, name) in ALLOWED and n > ALLOWED[(rel, name)])
    assert not new, f"over {MAX_CLASS} lines (class) or {MAX_FUNCTION} (function): split it\n" + "\n".join(new)
    assert not grown, "an allow-listed item grew: it may only shrink\n" + "\n".join(grown)
    stale = sorted(f"{rel} {name}" for rel, name in ALLOWED if (rel, name) not in found)
    if stale:
        warnings.warn("within the limits now, remove from ALLOWED: " + ", ".join(stale), stacklevel=1)


def test_the_measure_sees_a_long_function_and_a_long_class(tmp_path):
    src = "class Big:\n" + "    x = 1\n" * MAX_CLASS + "\n\ndef long():\n" + "    y = 1\n" * MAX_FUNCTION
    found: dict[tuple[str, str], tuple[str, int]] = {}
    _walk(ast.parse(src), "m.py", "", found)
    assert found == {("m.py", "Big"): ("class", MAX_CLASS + 1), ("m.py", "long"): ("function", MAX_FUNCTION + 1)}


def assembled() -> dict[str, int]:
    """Classes assembled from two or more of the project's own classes (mixins): name -> the lines of
    the class and of every such base together. A room split into mixins is still one room."""
    table: dict[str, list[tuple[int, list[str]]]] = {}
    for root in ROOTS:
        for path in sorted((REPO / root).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.ClassDef):
                    lines = (node.end_lineno or node.lineno) - node.lineno + 1
                    bases = [ast.unparse(b).rsplit(".", 1)[-1] for b in node.bases]
                    table.setdefault(node.name, []).append((lines, bases))
    own = {name: rows[0] for name, rows in table.items() if len(rows) == 1}
    return {
        name: lines + sum(own[b][0] for b in bases if b in own)
        for name, (lines, bases) in own.items() if sum(b in own for b in bases) >= 2
    }


def test_no_class_assembled_from_mixins_is_over_the_class_limit():
    big = {name: n for name, n in assembled().items() if n > MAX_CLASS}
    assert not big, f"classes whose own and mixed-in lines pass {MAX_CLASS}: compose parts instead\n{big}"
