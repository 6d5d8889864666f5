"""YAML files read strictly: the configs, the simulator's config, a schedule, a key file.

``yaml.safe_load`` keeps the last of a key given twice in one mapping: a second ``risk:`` block
silently replaced the first (the fleet's notional cap went from 20,000 to 1,000,000) and a second
``net_max`` the first. Here a repeated key is an error naming its line. An error says what is wrong
and where (line, column), never the text of the line: a config's line may hold a secret. A file that
is not UTF-8, is nested too deeply to read, is over ``MAX_BYTES`` or whose aliases would add more than
``MAX_NODES`` values (a few hundred bytes of anchors can stand for gigabytes) is refused the same way.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

MAX_BYTES = 8 << 20   # a config is kilobytes; /dev/zero or a stray log is not a config
KEY_SHOWN = 40        # characters of a repeated key named in an error
MAX_NODES = 100_000   # values a document's aliases may add (a 50-symbol fleet config has ~5,000 in all)
_COUNTED_TO = 10**12   # an expansion is counted up to this (a cycle: at once), never to its end


class YamlFileError(ValueError):
    """A file that cannot be read as YAML. The message is a predicate ("is not valid YAML: ... (line 3,
    column 1)"), said after the file's name by the caller; never the line's text."""


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key repeated in one mapping (a merge ``<<`` may still be overridden).

    The check runs on a mapping's own keys before its merges are flattened into it (PyYAML rewrites an
    anchored mapping in place when another merges it: its own keys then look repeated), once a node."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._checked: set[int] = set()

    def construct_document(self, node: yaml.Node) -> Any:
        expanded, written = _expanded_size(node)
        if expanded - written > MAX_NODES:   # (a long file without aliases is its own size: the byte cap's)
            raise yaml.constructor.ConstructorError(
                None, None, f"its aliases add over {MAX_NODES:,} values to it: not a config", node.start_mark)
        return super().construct_document(node)

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        if id(node) not in self._checked:
            self._checked.add(id(node))
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    repeated = key in seen
                    seen.add(key)
                except TypeError:   # an unhashable key: SafeLoader's own error follows
                    continue
                if repeated:
                    shown = str(key) if len(str(key)) <= KEY_SHOWN else str(key)[:KEY_SHOWN] + "..."
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {shown!r} given twice in one mapping (the second would replace the "
                                    f"first)", key_node.start_mark)
        super().flatten_mapping(node)


def _expanded_size(root: yaml.Node) -> tuple[int, int]:
    """How many values the document stands for with every alias expanded, and how many it writes (each
    node once: linear in the file; a cycle, which expands to no end, counts past any bound)."""
    sizes: dict[int, int] = {}
    busy: set[int] = set()

    def size(node: yaml.Node) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in busy:
            return _COUNTED_TO
        busy.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            total += sum(size(child) for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            total += sum(size(k) + size(v) for k, v in node.value)
        busy.discard(key)
        sizes[key] = total = min(total, _COUNTED_TO)
        return total

    expanded = size(root)
    return expanded, len(sizes)


def describe(exc: yaml.YAMLError) -> str:
    """What PyYAML found and where, without the snippet of the line it prints (it may hold a secret),
    and with any long quoted text of the file (an alias's or a tag's name) shown by its length only."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        what = exc.problem or exc.context or "malformed YAML"
        if "given twice" not in what:
            what = re.sub(r"'([^']{13,})'", lambda m: f"<{len(m.group(1))} characters>", what)
        return f"{what} (line {mark.line + 1}, column {mark.column + 1})" if mark else what
    if isinstance(exc, yaml.reader.ReaderError):
        return f"a character YAML does not allow (at offset {exc.position})"
    return type(exc).__name__


def loads(text: str) -> Any:
    """``text`` as YAML, strictly (a repeated key refused); :class:`YamlFileError` saying why and where."""
    try:
        return yaml.load(text, Loader=_StrictLoader)   # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise YamlFileError(f"is not valid YAML: {describe(exc)}") from None
    except RecursionError:
        raise YamlFileError("is nested too deeply to read") from None
    except (ValueError, TypeError, AttributeError, OverflowError) as exc:   # a scalar a tag cannot make
        # (2024-13-01 read as a date; !!int on a word): the value itself is never repeated
        raise YamlFileError(f"is not valid YAML: a value YAML cannot read as its type ({type(exc).__name__})") \
            from None


def read(path: str | Path) -> Any:
    """The YAML file at ``path`` (UTF-8, at most ``MAX_BYTES``); :class:`YamlFileError` without the
    file's name, which the caller's message puts before it."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise YamlFileError(f"cannot be read: {exc.strerror or type(exc).__name__}") from None
    if len(raw) > MAX_BYTES:
        raise YamlFileError(f"is over {MAX_BYTES >> 20} MiB: not a config")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise YamlFileError(f"is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})") from None
    return loads(text)
