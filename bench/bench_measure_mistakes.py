"""Benchmark: how fast `qconf tune` and `qconf sensitivity` answer a mistake in their arguments,
next to `python -c "import torch, diffusers"` (what every answer cost before the checks moved in
front of torch). Each command is a fresh subprocess of this venv's Python, interleaved round by
round; the script prints medians and each command's ratio to the import (the issue asks for
"well under half"). Every command must exit 2 (a user error), or the script stops.

    python bench/bench_measure_mistakes.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence

from _common import console, interleaved, median_of_ratios, timing_table, verdict

TARGET = 0.5
IMPORT = "import torch, diffusers"
MISTAKES = {
    "tune --options typo": ["tune", "--budget", "1GiB", "--options", "int9wo"],
    "tune --parts typo": ["tune", "--budget", "1GiB", "--parts", "transformr"],
    "tune --budget typo": ["tune", "--budget", "lots", "model=tiny-flux"],
    "sensitivity --out unwritable": ["sensitivity", "--out", "/proc/qconf-out"],
}


def run(cmd: Sequence[str], cwd: str, code: int) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(list(cmd), capture_output=True, text=True, env=env, cwd=cwd)
    if result.returncode != code:
        raise SystemExit(f"{' '.join(cmd)}: exit {result.returncode}\n{result.stderr}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    cwd = tempfile.mkdtemp(prefix="qconf-bench-mistakes-")
    qconf = [sys.executable, "-m", "qconf.cli.main"]
    actions = {"import": lambda: run([sys.executable, "-c", IMPORT], cwd, 0)}
    for label, argv in MISTAKES.items():
        actions[label] = lambda argv=argv: run([*qconf, *argv], cwd, 2)
    times = interleaved(actions, args.runs)
    labels = {"import": f'python -c "{IMPORT}"', **{k: f"qconf {k}" for k in MISTAKES}}
    console.print(timing_table("a mistake's answer vs importing torch + diffusers", times,
                               labels, "import", "/ import"))  # fmt: skip
    for label in MISTAKES:
        ratio = median_of_ratios(times[label], times["import"])
        median = statistics.median(times[label])
        console.print(f"{label}: median of per-round ratios {ratio:.3f} (target <= {TARGET}) "
                      f"{verdict(ratio, TARGET)}; median {median:.2f} s")  # fmt: skip


if __name__ == "__main__":
    main()
