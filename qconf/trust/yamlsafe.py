"""Bounded YAML: config files are untrusted, so reading one must take bounded work.

PyYAML shares aliased nodes while parsing, but OmegaConf and every consumer copy them: a
386-byte file of nested anchors ("billion laughs") expands to billions of nodes, and a
self-referencing anchor never ends. Every YAML qconf reads — its own, a user's `--config-dir`,
a plan file, a saved folder's qconf.yaml, and the files Hydra loads while composing — goes
through `BoundedLoader`, which measures the document as it would be expanded (shared nodes
counted once per use) and refuses it past fixed limits, before anything is built from it."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

MAX_NODES = 100_000  # after alias expansion; qconf's largest config has a few hundred
MAX_DEPTH = 64
MAX_BYTES = 64 << 10  # PyYAML parses ~40 KB/s here: a file must read in seconds


class YAMLLimitError(yaml.YAMLError):
    """A YAML document too large, deep or self-referencing to read safely."""

    def __init__(self, problem: str, mark: Any = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.problem_mark = mark


def check_node(root: yaml.Node) -> None:
    """Raise YAMLLimitError if `root` expands past MAX_NODES or MAX_DEPTH, or contains itself.
    Iterative (no recursion) and linear in the number of distinct nodes."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, children_done = stack.pop()
        key = id(node)
        if depth > MAX_DEPTH:
            raise YAMLLimitError(f"nested deeper than {MAX_DEPTH} levels", node.start_mark)
        children = _children(node)
        if children_done:
            on_path.discard(key)
            sizes[key] = 1 + sum(sizes[id(child)] for child in children)
            if sizes[key] > MAX_NODES:
                raise YAMLLimitError(
                    f"expands to more than {MAX_NODES} values (anchors/aliases)", node.start_mark
                )
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise YAMLLimitError("an alias refers to a node that contains it", node.start_mark)
        on_path.add(key)
        stack.append((node, depth, True))
        stack.extend((child, depth + 1, False) for child in children if id(child) not in sizes)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def bounded(loader_class: type) -> type:
    """A subclass of a PyYAML loader class that checks each document before constructing it."""

    class BoundedLoader(loader_class):  # type: ignore[misc, valid-type]
        def __init__(self, stream: Any) -> None:
            size = len(stream) if isinstance(stream, (str, bytes)) else _file_size(stream)
            if size is not None and size > MAX_BYTES:
                name = str(getattr(stream, "name", "<string>"))
                mark = yaml.error.Mark(name, 0, 0, 0, None, None)
                raise YAMLLimitError(f"larger than {MAX_BYTES // 1024} KiB", mark)
            super().__init__(stream)

        def get_single_node(self) -> Any:
            try:
                node = super().get_single_node()
            except RecursionError:  # PyYAML's composer recurses once per nesting level
                mark = yaml.error.Mark(str(getattr(self, "name", "<string>")), 0, 0, 0, None, None)
                raise YAMLLimitError(f"nested deeper than {MAX_DEPTH} levels", mark) from None
            if node is not None:
                check_node(node)
            return node

    return BoundedLoader


def _file_size(stream: Any) -> int | None:
    """Size of a file stream; a stream that is not a regular file counts as too large (Hydra
    opened it, and reading a FIFO or device would never end)."""
    try:
        info = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return None
    return info.st_size if stat.S_ISREG(info.st_mode) else MAX_BYTES + 1


BoundedSafeLoader = bounded(yaml.SafeLoader)


def load_yaml_text(text: str) -> Any:
    """yaml.safe_load with the limits above."""
    if len(text.encode()) > MAX_BYTES:
        raise YAMLLimitError(f"larger than {MAX_BYTES // 1024} KiB")
    return yaml.load(text, Loader=BoundedSafeLoader)  # noqa: S506 - a SafeLoader subclass


def load_yaml_file(path: Path, what: str = "the YAML file") -> Any:
    """A YAML file from outside: a regular file of at most MAX_BYTES (qconf.trust.reading),
    then parsed with the limits above."""
    from qconf.trust.reading import read_regular

    return load_yaml_text(read_regular(path, what, MAX_BYTES).decode("utf-8"))


@contextmanager
def bounded_omegaconf() -> Iterator[None]:
    """Make OmegaConf.load (how Hydra reads every config file) use the bounded loader.

    OmegaConf builds its loader class per call through `omegaconf._utils.get_yaml_loader`
    (looked up at call time), so wrapping that one function covers every file Hydra reads
    while composing, wherever the search path points."""
    from omegaconf import _utils

    original = _utils.get_yaml_loader
    if getattr(original, "_qconf_bounded", False):  # already inside (nested compose)
        yield
        return

    def get_bounded_loader() -> Any:
        return bounded(original())

    get_bounded_loader._qconf_bounded = True  # type: ignore[attr-defined]
    _utils.get_yaml_loader = get_bounded_loader
    try:
        yield
    finally:
        _utils.get_yaml_loader = original
