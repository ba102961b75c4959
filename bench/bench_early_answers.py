"""Benchmark: how fast `qconf compare` / `qconf run` answer a mistake, next to what merely
importing torch and diffusers costs (`python -c "import torch, diffusers"`).

Timed, each a fresh subprocess of this venv's Python, interleaved round by round:
- a typo in a compare argument (`quant.mapping.transformr=...`, a part that does not exist),
- a typo in a compare flag (`--no-baselin`),
- `qconf run preset=sd3-int8wo` offline with an empty hub cache (the model is not downloaded).
Each must exit 2 with one line; the target is at most half the import (issue 21: "a typo answered
in well under half the time `import torch, diffusers` takes"). Nothing is asserted: the script
prints medians and ratios measured in this one run.

    python bench/bench_early_answers.py [--runs 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence

from _common import console, interleaved, timing_table, verdict

TARGET = 0.5
IMPORT = "import torch, diffusers"
QCONF = [sys.executable, "-m", "qconf.cli.main"]
COMMANDS = {
    "compare typo": [*QCONF, "compare", "quant.mapping.transformr=int8wo,int4wo"],
    "compare flag typo": [*QCONF, "compare", "--no-baselin", "quant.mapping.transformer=int8wo"],
    "run offline hub model": [*QCONF, "run", "preset=sd3-int8wo"],
    IMPORT: [sys.executable, "-c", "import torch, diffusers"],
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="interleaved rounds (default 5)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        # Offline with an empty hub cache, in an empty folder (a run folder would show there).
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": os.path.join(work, "hub")}

        def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
            return subprocess.run(cmd, capture_output=True, text=True, cwd=work, env=env)

        for name, cmd in COMMANDS.items():
            result = run(cmd)
            lines = result.stderr.strip().splitlines()
            if name != IMPORT:
                console.print(f"{name}: exit {result.returncode}, {len(lines)} line(s): "
                              f"{lines[0][:110] if lines else ''}")  # fmt: skip
        times = interleaved({name: (lambda c=cmd: run(c)) for name, cmd in COMMANDS.items()},
                            args.runs)  # fmt: skip
        left = [name for name in os.listdir(work) if name != "hub"]
    labels = {name: " ".join(cmd[3:] if cmd[0] == sys.executable and cmd[1] == "-m" else cmd[1:])
              for name, cmd in COMMANDS.items()}  # fmt: skip
    console.print(timing_table(f"early answers vs {IMPORT} ({args.runs} interleaved rounds)",
                               times, labels, IMPORT, "/ import"))  # fmt: skip
    base = statistics.median(times[IMPORT])
    for name in COMMANDS:
        if name != IMPORT:
            ratio = statistics.median(times[name]) / base
            console.print(f"{name} / import: [bold]{ratio:.3f}[/bold] "
                          f"(target <= {TARGET}: {verdict(ratio, TARGET)})")  # fmt: skip
    console.print(f"left in the working folder: {left or 'nothing'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
