"""Benchmark: what a 5-frame tiny-wan video costs next to a tiny-flux image (issue 22: "a 5-frame
tiny-wan run costs less than 2.5x a tiny-flux image run, measured in one run").

Each round runs, interleaved, in fresh subprocesses of this venv's Python:
- `qconf run model=tiny-wan quant.mapping.transformer=int8wo run.num_frames=5`
- `qconf run model=tiny-flux quant.mapping.transformer=int8wo`
and reads two costs: the command's wall time (start to exit: imports, load, generation,
writing) and the generation alone (report.json's `seconds_per_image`, the pipeline call).
Before run.num_frames, tiny-wan rendered Wan's own 81 frames (~50 s here). Nothing is asserted:
the script prints medians and the ratios measured in this one run.

    python bench/bench_video.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from _common import console, verdict

TARGET = 2.5
QCONF = [sys.executable, "-m", "qconf.cli.main", "run"]
COMMANDS = {
    "tiny-wan, 5 frames": [
        *QCONF,
        "model=tiny-wan",
        "quant.mapping.transformer=int8wo",
        "run.num_frames=5",
    ],  # fmt: skip
    "tiny-flux, 1 image": [*QCONF, "model=tiny-flux", "quant.mapping.transformer=int8wo"],
}


def run_once(cmd: list[str], work: Path, index: int) -> tuple[float, float]:
    """(wall seconds of the command, seconds of the pipeline call from report.json)."""
    out = work / f"run-{index}"
    started = time.perf_counter()
    result = subprocess.run([*cmd, f"hydra.run.dir={out}"], capture_output=True, text=True,
                            cwd=work, check=False)  # fmt: skip
    wall = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[3:])} failed:\n{result.stderr[-2000:]}")
    report = json.loads((out / "report.json").read_text())
    return wall, report["run"]["seconds_per_image"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="interleaved rounds (default 3)")
    args = parser.parse_args(argv)
    walls: dict[str, list[float]] = {name: [] for name in COMMANDS}
    calls: dict[str, list[float]] = {name: [] for name in COMMANDS}
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        index = 0
        for _ in range(args.runs + 1):  # the first round builds the tiny pipelines: not timed
            for name, cmd in COMMANDS.items():
                index += 1
                wall, call = run_once(cmd, work, index)
                if index > len(COMMANDS):
                    walls[name].append(wall)
                    calls[name].append(call)
    for name in COMMANDS:
        wall, call = statistics.median(walls[name]), statistics.median(calls[name])
        console.print(f"{name}: command {wall:.2f} s, pipeline call {call:.3f} s "
                      f"(medians of {args.runs})")  # fmt: skip
    wan, flux = COMMANDS
    wall_ratio = statistics.median(walls[wan]) / statistics.median(walls[flux])
    call_ratio = statistics.median(calls[wan]) / statistics.median(calls[flux])
    console.print(f"tiny-wan 5 frames / tiny-flux image, whole run: [bold]{wall_ratio:.2f}x[/bold] "
                  f"(target < {TARGET}: {verdict(wall_ratio, TARGET)})")  # fmt: skip
    console.print(f"tiny-wan 5 frames / tiny-flux image, pipeline call alone: "
                  f"[bold]{call_ratio:.2f}x[/bold]")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
