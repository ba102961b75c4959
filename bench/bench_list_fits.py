"""Benchmark: `qconf list presets --fits 12GiB` next to `python -c "import torch, diffusers"`.

Every command runs as a fresh subprocess of this venv's Python, interleaved round by round, and
the script prints medians and the ratio listing / import (target: at most 1.5).

- cold: an empty QCONF_CACHE for every call. The built-in presets come from the estimates
  shipped in the wheel (qconf/data/preset_estimates.json, valid for this conf tree, these
  snapshots and these library versions), so nothing is computed and torch is not imported.
- warm: a QCONF_CACHE filled by one earlier call.
- --config-dir, cold / warm: a user tree with one preset of its own (the built-in ones still come
  from the shipped file): cold computes that one preset (torch, diffusers and the model classes
  are imported), warm reads it from QCONF_CACHE.
- with --full, once: a user tree that stands in for a built-in backend option, so every preset is
  estimated afresh (the worst case: nothing stored applies).

    python bench/bench_list_fits.py [--runs 5] [--size 12GiB] [--full]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from _common import console, interleaved, median_of_ratios, timing_table, verdict

TARGET = 1.5
IMPORT = "import torch, diffusers"
COLD, WARM = "list --fits, cold cache", "list --fits, warm cache"
USER_COLD, USER_WARM = "... --config-dir, cold cache", "... --config-dir, warm cache"
USER_PRESET = """# @package _global_
# a user's own preset: SDXL with the UNet in int8wo
defaults:
  - override /model: sdxl
quant:
  mapping:
    unet: int8wo
"""


def qconf_script() -> str:
    script = Path(sys.executable).with_name("qconf")
    if not script.exists():
        raise SystemExit(f"no qconf console script next to {sys.executable}")
    return str(script)


def run(cmd: Sequence[str], cache: Path | None = None) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if cache is not None:
        env["QCONF_CACHE"] = str(cache)
    result = subprocess.run(list(cmd), capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited {result.returncode}:\n{result.stderr[-2000:]}")


class Fresh:
    """Each call in an empty QCONF_CACHE of its own (made and removed outside the command,
    but inside the timing: a mkdtemp and an rmtree of a few files, well under a millisecond)."""

    def __init__(self, root: Path, cmd: list[str]) -> None:
        self.root, self.cmd = root, cmd

    def __call__(self) -> None:
        cache = Path(tempfile.mkdtemp(dir=self.root))
        try:
            run(self.cmd, cache)
        finally:
            shutil.rmtree(cache, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--size", default="12GiB", help="the --fits size (default 12GiB)")
    parser.add_argument("--full", action="store_true", help="also time one full recomputation")
    args = parser.parse_args(argv)
    listing = [qconf_script(), "list", "presets", "--fits", args.size]
    with tempfile.TemporaryDirectory(prefix="bench-fits-") as tmp:
        root = Path(tmp)
        tree = root / "conf"
        (tree / "preset").mkdir(parents=True)
        (tree / "preset" / "my-sdxl.yaml").write_text(USER_PRESET)
        user = [*listing, "--config-dir", str(tree)]
        warm = root / "warm"
        run(listing, warm)  # fill the warm caches once
        run(user, warm)
        actions = {
            IMPORT: lambda: run([sys.executable, "-c", "import torch, diffusers"]),
            COLD: Fresh(root, listing),
            WARM: lambda: run(listing, warm),
            USER_COLD: Fresh(root, user),
            USER_WARM: lambda: run(user, warm),
        }
        times = interleaved(actions, args.runs)
        full = _full(root, listing) if args.full else None
    labels = {name: name for name in times}
    labels[COLD] = f"qconf list presets --fits {args.size} (empty QCONF_CACHE)"
    labels[WARM] = f"qconf list presets --fits {args.size} (QCONF_CACHE filled)"
    title = f"list presets --fits vs importing torch + diffusers ({args.runs} interleaved rounds)"
    console.print(timing_table(title, times, labels, IMPORT, "/ import"))
    base = statistics.median(times[IMPORT])
    for name in (COLD, WARM, USER_COLD, USER_WARM):
        ratio = statistics.median(times[name]) / base
        paired = median_of_ratios(times[name], times[IMPORT])
        console.print(
            f"{name} / import: [bold]{ratio:.2f}[/bold] (target <= {TARGET}: "
            f"{verdict(ratio, TARGET)}); median of paired ratios {paired:.2f}"
        )
    if full is not None:
        console.print(
            f"every preset estimated afresh (a --config-dir standing in for a built-in option), "
            f"once: {full:.1f} s = {full / base:.1f} x the import"
        )
    return 0


def _full(root: Path, listing: list[str]) -> float:
    """One listing where nothing stored applies: the user tree replaces conf/backend/nf4.yaml
    with a copy of itself, so every built-in preset is estimated again."""
    tree = root / "shadow"
    (tree / "backend").mkdir(parents=True)
    from qconf.plan.conftree import conf_dir

    shutil.copy(conf_dir() / "backend" / "nf4.yaml", tree / "backend" / "nf4.yaml")
    cache = Path(tempfile.mkdtemp(dir=root))
    started = time.perf_counter()
    run([*listing, "--config-dir", str(tree)], cache)
    return time.perf_counter() - started


if __name__ == "__main__":
    sys.exit(main())
