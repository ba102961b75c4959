"""Structure, measured from the code: import circles between qconf's modules (every import,
lazy ones inside functions and TYPE_CHECKING ones included), command modules importing other
command modules, imports that go up the layer order, and, for one real load of a tiny-flux
folder, how often qconf's readers open model_index.json and each config.json and how many calls
go from a lower layer back up into a higher one.

    python bench/bench_structure.py
"""

from __future__ import annotations

import ast
import collections
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "qconf"
# The layer order the package tree shows (README "Layout"); the façade (qconf/__init__) is the
# public API the capabilities call, so it counts as the top.
LAYERS = {"errors": 0, "text": 0, "units": 0, "data": 0, "trust": 1, "source": 2,
          "backends": 3, "quiet": 4, "plan": 4, "loading": 5, "run": 6, "estimate": 6, "train": 7,
          "compare": 7, "sensitivity": 7, "tune": 8, "cli": 9}  # fmt: skip


def modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        name = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def import_edges(found: dict[str, Path]) -> dict[str, set[str]]:
    def owner(name: str) -> str:
        while name and name not in found:
            name = name.rpartition(".")[0]
        return name

    edges: dict[str, set[str]] = {name: set() for name in found}
    for name, path in found.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            for target in targets:
                if target.startswith("qconf") and owner(target) and owner(target) != name:
                    edges[name].add(owner(target))
    return edges


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in edges[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for node in edges:
        if node not in index:
            visit(node)
    return found


def layer(name: str) -> int | None:
    parts = name.split(".")
    if parts[0] != "qconf":
        return None
    return LAYERS.get(parts[1], 9) if len(parts) > 1 else 9


def load_walk() -> tuple[collections.Counter, collections.Counter]:
    """(reads per file, climbs) during one load of a tiny-flux copy."""
    import shutil
    import tempfile

    import qconf
    from qconf.source import files
    from qconf.source.tiny import tiny_pipeline_path

    folder = Path(tempfile.mkdtemp()) / "model"
    shutil.copytree(tiny_pipeline_path("tiny-flux"), folder)
    reads: collections.Counter = collections.Counter()
    original = files.read_regular

    def counting(path, *args, **kwargs):  # noqa: ANN001, ANN202
        reads[str(Path(path).relative_to(folder)) if str(path).startswith(str(folder)) else
              str(path)] += 1  # fmt: skip
        return original(path, *args, **kwargs)

    files.read_regular = counting
    climbs: collections.Counter = collections.Counter()

    def profile(frame, event, arg):  # noqa: ANN001, ANN202
        if event != "call" or frame.f_back is None:
            return
        callee, caller = (
            frame.f_globals.get("__name__", ""),
            frame.f_back.f_globals.get("__name__", ""),
        )
        low, high = layer(caller), layer(callee)
        if low is not None and high is not None and high > low:
            climbs[f"{caller} -> {callee}.{frame.f_code.co_name}"] += 1

    plan = {"model": {"source": str(folder)}, "quant": {"mapping": {"transformer": "int8wo"}}}
    with qconf.quiet():
        sys.setprofile(profile)
        try:
            qconf.load(**plan)
        finally:
            sys.setprofile(None)
            files.read_regular = original
    shutil.rmtree(folder.parent, ignore_errors=True)
    return reads, climbs


def main() -> int:
    found = modules()
    edges = import_edges(found)
    loops = circles(edges)
    commands = {n for n in found if n.startswith("qconf.cli.") and n.endswith("_cmd")}
    command_imports = sorted(f"{a} -> {b}" for a in commands for b in edges[a] if b in commands)
    upward = sorted(
        f"{a} -> {b}"
        for a in found
        for b in edges[a]
        if b != "qconf" and (layer(b) or 0) > (layer(a) or 0)
    )
    flat = [n for n in found if n.count(".") == 1 and found[n].name != "__init__.py"]
    print(f"modules: {len(found)}, flat in qconf/: {len(flat)} ({', '.join(sorted(flat))})")
    print(f"import circles: {len(loops)}", *(" <-> ".join(c) for c in loops), sep="\n  ")
    print(f"command -> command imports: {len(command_imports)}", *command_imports, sep="\n  ")
    print(f"imports up the layer order (façade excluded): {len(upward)}", *upward, sep="\n  ")
    reads, climbs = load_walk()
    print("one load of a tiny-flux folder (int8wo on the transformer):")
    configs = ", ".join(f"{k} {v}x" for k, v in sorted(reads.items()) if k.endswith("config.json"))
    print(f"  model_index.json read {reads.get('model_index.json', 0)}x; config.json: {configs}")
    print(f"  calls from a lower layer up into a higher one: {sum(climbs.values())}",
          *(f"{n}x {k}" for k, n in climbs.most_common()), sep="\n    ")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
