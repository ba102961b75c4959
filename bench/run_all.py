"""Run every qconf benchmark and print their tables: validate speed, load overhead, bytes.

Each benchmark runs as its own subprocess of this Python (fresh imports, no state shared between
them), its output shown as it comes. `--quick` uses few runs (a smoke run, ratios rougher).

    python bench/run_all.py [--quick] [--only validate load bytes estimate]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from _common import console
from rich.rule import Rule
from rich.table import Table

HERE = Path(__file__).resolve().parent
BENCHES: dict[str, tuple[str, list[str], list[str]]] = {
    # name: (script, full-run flags, --quick flags)
    "structure": ("bench_structure.py", [], []),
    "validate": ("bench_validate.py", [], ["--runs", "3"]),
    "load": ("bench_load.py", [], ["--runs", "5"]),
    "bytes": ("bench_bytes.py", [], []),
    "estimate": ("bench_estimate_full_width.py", [], []),
    "video": ("bench_video.py", [], ["--runs", "1"]),
    "layer-proxy": (
        "bench_layer_proxy.py",
        [],
        ["--families", "tiny-flux", "--dtypes", "bfloat16"],
    ),
}


def run_bench(name: str, quick: bool) -> tuple[int, float]:
    """Run one benchmark script; its exit code and wall seconds."""
    script, full, fast = BENCHES[name]
    cmd = [sys.executable, str(HERE / script), *(fast if quick else full)]
    console.print(Rule(f"[bold]{name}[/bold]: {' '.join(Path(c).name for c in cmd[1:])}"))
    started = time.perf_counter()
    code = subprocess.run(cmd, check=False).returncode
    return code, time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: run the chosen benchmarks in order, then a summary."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="few runs per benchmark")
    parser.add_argument(
        "--only", nargs="+", choices=list(BENCHES), default=list(BENCHES), help="benchmarks to run"
    )
    args = parser.parse_args(argv)
    outcomes = {name: run_bench(name, args.quick) for name in args.only}
    summary = Table(title="benchmarks" + (" (--quick)" if args.quick else ""))
    summary.add_column("benchmark")
    summary.add_column("exit", justify="right")
    summary.add_column("wall s", justify="right")
    for name, (code, seconds) in outcomes.items():
        summary.add_row(name, str(code), f"{seconds:.1f}", style=None if code == 0 else "red")
    console.print(Rule())
    console.print(summary)
    return next((1 for code, _ in outcomes.values() if code), 0)


if __name__ == "__main__":
    sys.exit(main())
