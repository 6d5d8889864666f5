"""Parameter overrides for a run or a sweep: ``size_decay_k=4.1`` or ``worst_case.size_decay_k=4.1``.

A short name is a field that occurs once in :class:`fleet.config.SymbolParams`; a dotted path names
any field. The result is validated like a params file (including the hard cap on ``net_max``).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

from fleet.config import FleetConfig, SymbolParams, validate_symbol_params

MAX_COMBINATIONS = 1_000   # one simulated run each: a grid larger than this is a typo, not a plan


class OverrideError(ValueError):
    """An override names no parameter, an ambiguous one, or a value that is not a number."""


def _leaves() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for section, info in SymbolParams.model_fields.items():
        model = info.annotation
        for name in getattr(model, "model_fields", {}):
            out.setdefault(name, []).append(f"{section}.{name}")
    return out


def resolve(name: str) -> str:
    """The dotted path of a parameter named by a short or a dotted name."""
    leaves = _leaves()
    if "." in name:
        if name not in {p for paths in leaves.values() for p in paths}:
            raise OverrideError(f"no parameter {name!r} in the symbol params")
        return name
    paths = leaves.get(name)
    if not paths:
        raise OverrideError(f"no parameter {name!r} in the symbol params (e.g. size_decay_k, base_size)")
    if len(paths) > 1:
        raise OverrideError(f"{name!r} is ambiguous: say which of {', '.join(paths)}")
    return paths[0]


def _number(text: str, name: str) -> float | int:
    try:
        return int(text) if text.lstrip("+-").isdigit() else float(text)
    except ValueError:
        raise OverrideError(f"{name}: {text!r} is not a number") from None


def parse_sweep(specs: list[str], single: bool = False) -> list[dict[str, Any]]:
    """``["size_decay_k=3.8,4.1", "base_size=0.007,0.008"]`` -> the grid's combinations (dotted paths);
    ``single``: one value a name (``--set``)."""
    axes: list[tuple[str, list[float | int]]] = []
    for spec in specs:
        name, sep, values = spec.partition("=")
        shown = spec if len(spec) <= 60 else spec[:60] + "..."
        if not sep or not values.strip():
            raise OverrideError(f"{shown!r}: write name=value[,value...]")
        path = resolve(name.strip())
        if path in (a for a, _ in axes):
            raise OverrideError(f"{shown!r}: {path} is given twice")
        items = [v.strip() for v in values.split(",")]
        if not all(items):
            raise OverrideError(f"{shown!r}: an empty value in the list")
        if single and len(items) > 1:
            raise OverrideError(f"{shown!r}: --set takes one value (a grid of values is --sweep)")
        numbers = [_number(v, path) for v in items]
        twice = next((v for i, v in enumerate(numbers) if v in numbers[:i]), None)
        if twice is not None:
            raise OverrideError(f"{shown!r}: {path} lists {twice} twice (its runs would be the same)")
        axes.append((path, numbers))
    combos = math.prod(len(v) for _, v in axes)
    if combos > MAX_COMBINATIONS:
        raise OverrideError(f"the sweep makes {combos:,} combinations, over {MAX_COMBINATIONS:,}: sweep fewer values "
                            f"(or in several sweeps)")
    return [dict(zip([a for a, _ in axes], combo)) for combo in itertools.product(*(v for _, v in axes))]


def apply(cfg: FleetConfig, symbol: str, params: SymbolParams, overrides: dict[str, Any]) -> SymbolParams:
    """``params`` with the overrides (dotted paths) set, validated and checked against the hard cap."""
    if not overrides:
        return params
    data = params.model_dump()
    for path, value in overrides.items():
        section, name = resolve(path).split(".")
        data[section][name] = value
    return validate_symbol_params(cfg, symbol, data, where=f"{symbol} with {overrides}")
