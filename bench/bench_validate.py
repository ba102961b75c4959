"""Benchmark: how long `qconf validate` takes next to merely importing diffusers' own
quantization config.

Every command runs as a fresh subprocess of the same venv's Python (the `qconf` console script
is the one next to `sys.executable`), interleaved round by round; the script prints the medians
and the ratio validate / import (target: at most 0.067, i.e. validating a plan costs under a tenth
of what a Python script pays before it can even build a `PipelineQuantizationConfig`).

On a CPU-only machine `qconf validate preset=flux-nf4` exits 2 (bitsandbytes on the transformer
needs a GPU): it still runs the whole validate path (compose, schema, resolve, environment
checks), so it is timed as it is. The exit code of `--plan-only` is reported too.

A third row times the same path through the Python API (`python -c "import qconf; ..."`), so the
number survives a broken CLI and shows what the CLI layer itself adds.

    python bench/bench_validate.py [--runs 7] [--preset flux-nf4]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from _common import console, interleaved, median_of_ratios, timing_table, verdict
from rich.table import Table

TARGET = 0.067
CLI = "qconf validate"
API = "qconf API (python -c)"
IMPORT = "diffusers import"

# The validate path through the public API, environment checks included; exit 2 on a PlanError
# or BackendUnavailableError like the CLI.
API_SNIPPET = """
import sys, qconf
try:
    qconf.check_environment(qconf.validate(qconf.compose({overrides!r})))
except qconf.QconfError as exc:
    print(*(f"error: {{line}}" for line in exc.lines), sep="\\n", file=sys.stderr)
    sys.exit(2)
"""

Outcome = tuple[int, str]


def qconf_script() -> str:
    """The `qconf` console script installed next to this Python."""
    script = Path(sys.executable).with_name("qconf")
    if not script.exists():
        raise SystemExit(f"no qconf console script next to {sys.executable}")
    return str(script)


def run_quiet(cmd: Sequence[str]) -> subprocess.CompletedProcess[str]:
    """Run `cmd`, capturing its output (so printing does not count against it)."""
    return subprocess.run(list(cmd), capture_output=True, text=True, check=False)


def describe(result: subprocess.CompletedProcess[str]) -> Outcome:
    """Exit code and the telling output line: 'OK ...' / 'error: ...' or a traceback's last."""
    lines = [ln.strip() for ln in (result.stdout + result.stderr).splitlines() if ln.strip()]
    telling = next((ln for ln in lines if ln.startswith(("OK", "error"))), None)
    if telling is None:
        telling = "" if result.returncode == 0 or not lines else lines[-1]
    return result.returncode, telling[:160]


def commands(preset: str) -> dict[str, list[str]]:
    """The timed commands, by row name."""
    overrides = [f"preset={preset}"]
    return {
        CLI: [qconf_script(), "validate", *overrides],
        API: [sys.executable, "-c", API_SNIPPET.format(overrides=overrides)],
        IMPORT: [sys.executable, "-c", "from diffusers import PipelineQuantizationConfig"],
    }


def bench(runs: int, preset: str) -> tuple[dict[str, list[float]], dict[str, Outcome]]:
    """Time the commands interleaved; record the exit codes of each (and of --plan-only)."""
    cmds = commands(preset)
    outcomes = {name: describe(run_quiet(cmd)) for name, cmd in cmds.items()}
    plan_only = [cmds[CLI][0], "validate", "--plan-only", f"preset={preset}"]
    outcomes[f"{CLI} --plan-only"] = describe(run_quiet(plan_only))
    times = interleaved({name: (lambda c=cmd: run_quiet(c)) for name, cmd in cmds.items()}, runs)
    return times, outcomes


def render(
    times: dict[str, list[float]], outcomes: dict[str, Outcome], preset: str, runs: int
) -> None:
    """Print the timing table, the ratios and the exit codes."""
    labels = {
        CLI: f"qconf validate preset={preset}",
        API: "python -c: compose + validate + check_environment",
        IMPORT: 'python -c "from diffusers import PipelineQuantizationConfig"',
    }
    medians = {name: statistics.median(t) for name, t in times.items()}
    title = f"validate vs diffusers import ({runs} interleaved rounds)"
    table = timing_table(title, times, labels, IMPORT, "/ import")
    console.print(table)
    ratio = medians[CLI] / medians[IMPORT]
    paired = median_of_ratios(times[CLI], times[IMPORT])
    console.print(
        f"ratio qconf validate / import (median/median): [bold]{ratio:.3f}[/bold] "
        f"(target <= {TARGET:.2f}: {verdict(ratio, TARGET)}); median of paired ratios {paired:.3f}"
    )
    codes = Table(title="exit codes (0 ok, 2 user error / cannot run here, 1 bug)")
    codes.add_column("command")
    codes.add_column("exit", justify="right")
    codes.add_column("output")
    for name, (code, line) in outcomes.items():
        codes.add_row(name, str(code), line, style=None if code in (0, 2) else "red")
    console.print(codes)
    code = outcomes[CLI][0]
    if code not in (0, 2):
        console.print(
            f"[red]warning: qconf validate exited {code} (a crash, not a plan verdict): its time "
            "above is not the validate path; see the API row[/red]"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse flags, run the benchmark, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="interleaved rounds (default 7)")
    parser.add_argument("--preset", default="flux-nf4", help="preset to validate")
    args = parser.parse_args(argv)
    times, outcomes = bench(args.runs, args.preset)
    render(times, outcomes, args.preset, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
