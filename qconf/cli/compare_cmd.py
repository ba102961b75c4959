"""`qconf compare [flags] OVERRIDES...`: run several plans on the same prompts and seeds as a
Hydra multirun of `qconf run` (any launcher: basic, joblib, submitit), plus the unquantized
baseline, then gather the run folders into tables and pictures. `qconf compare DIR` gathers an
existing multirun folder without running anything.

    qconf compare model=tiny-flux quant.mapping.transformer=int8wo,int4wo 'run.seed=[0,1]'
"""

from __future__ import annotations

import sys
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

from qconf.errors import PlanError, Problem

USAGE = """usage: qconf compare [--config-dir DIR] [-cn NAME] [--plan FILE] [--no-baseline]
                     OVERRIDES...      (a sweep: preset=a,b quant.mapping.vae=int8wo,null)
       qconf compare DIR              (gather a multirun folder that already ran)

Runs every plan of the sweep, plus the unquantized baseline, on the same prompts and seeds
(run.prompt / run.seed: one value or a list, e.g. 'run.seed=[0,1]'), as a Hydra multirun:
hydra/launcher=joblib or submitit_local/submitit_slurm pick the launcher. Writes compare.md,
compare.json, compare.png (image grid) and pareto.png into the sweep folder.
  --no-baseline   skip the unquantized run (when it cannot fit); the first plan is the reference
"""
NO_BASELINE = "--no-baseline"
_CLEAR_QUANT = ("quant.backend=null", "quant.kwargs={}", "quant.components=null",
                "quant.mapping={}")  # fmt: skip
_SWEEP_DIR = "hydra.sweep.dir"


def main(argv: list[str]) -> int:
    if {"-h", "--help"} & set(argv):
        print(USAGE, end="")
        return 0
    from qconf.compare.metrics import require_libraries

    require_libraries()
    if len(argv) == 1 and "=" not in argv[0] and not argv[0].startswith("-"):
        return _gather_and_print(Path(argv[0]))
    return _run_and_gather(argv)


def _run_and_gather(argv: list[str]) -> int:
    from qconf.cli.hydra_run import Launch, is_hydra_override, launch, prepare, split_argv

    baseline = NO_BASELINE not in argv
    argv = [a for a in argv if a != NO_BASELINE and a not in ("-m", "--multirun")]
    if not any("=" in a and not a.startswith("-") for a in argv):
        fix = "give a sweep, e.g. quant.mapping.transformer=int8wo,int4wo"
        raise PlanError(Problem("qconf compare", "no plans given", fix))
    sweep_dir, extra = _sweep_dir(argv)
    sweep = prepare(["-m", *argv], extra_overrides=extra, quiet=True)
    _check_one_model_and_run(sweep)
    launches: list[Launch] = []
    if baseline:  # the first plan with quantization cleared: same model, prompts and seeds
        flags, overrides = split_argv(argv)
        hydra_overrides = [o for o in overrides if is_hydra_override(o)]
        launches.append(
            prepare(
                ["-m", *flags, *sweep.jobs[0], *hydra_overrides],
                extra_overrides=(*_CLEAR_QUANT, *extra, "hydra.sweep.subdir=baseline"),
                quiet=True,
            )  # fmt: skip
        )
    launches.append(sweep)
    total = sum(len(item.jobs) for item in launches)
    _check_gatherable(sweep, total)
    from qconf.trust.userpath import make_folder

    make_folder(sweep_dir, _SWEEP_DIR)  # every job checked: now the folder may exist
    with _Progress(sweep_dir, total):
        for item in launches:
            launch(item)
    comparison = _gather_and_print(sweep_dir, code_only=True)
    missing = total - len(_finished(sweep_dir))
    if missing:
        print(f"error: {missing} of {total} jobs did not finish (see the lines above); the "
              "tables hold the others", file=sys.stderr)  # fmt: skip
        return 2
    return comparison


def _gather_and_print(sweep_dir: Path, *, code_only: bool = False) -> int:
    from qconf.compare import gather, write_outputs
    from qconf.compare.figures import grid_note
    from qconf.text import safe

    comparison = gather(sweep_dir)
    written = write_outputs(comparison)
    _print_table(comparison)
    print("wrote " + ", ".join(safe(str(path)) for path in written))
    if grid_note(comparison):  # a large sweep: the picture shows a corner, the tables all
        print(f"note: {grid_note(comparison)}", file=sys.stderr)
    if comparison.unfinished and not code_only:
        names = ", ".join(safe(n) for n in comparison.unfinished)
        print(f"note: job folders without report.json (skipped): {names}", file=sys.stderr)
    return 0


def _print_table(comparison: Any) -> None:
    from rich.table import Table

    from qconf.cli.common import console
    from qconf.compare.tables import psnr_text, ssim_text
    from qconf.text import markup
    from qconf.units import human_bytes

    table = Table(title=f"reference: {markup(comparison.reference)}")
    for name, justify in (("plan", "left"), ("weights", "right"), ("peak", "right"),
                          ("load s", "right"), ("s/image", "right"), ("PSNR", "right"),
                          ("SSIM", "right"), ("Pareto", "center")):  # fmt: skip
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in comparison.rows:
        run = row.run
        table.add_row(markup(row.label), human_bytes(run.total_bytes),
                      human_bytes(run.peak_memory_bytes), f"{run.load_seconds:.2f}",
                      f"{run.seconds_per_image:.3f}", psnr_text(row.psnr), ssim_text(row.ssim),
                      "✓" if row.pareto else "")  # fmt: skip
    console().print(table)


def _sweep_dir(argv: list[str]) -> tuple[Path, tuple[str, ...]]:
    """The sweep folder (typed hydra.sweep.dir, or Hydra's default pattern made literal so both
    launches share it) and the override that gives it to Hydra: always the absolute, expanded
    path, so Hydra writes where qconf gathers. It must be new or empty: a folder that already
    holds runs would mix two comparisons."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from qconf.trust.userpath import output_folder

    typed = [a for a in argv if a.split("=", 1)[0].lstrip("+") == _SWEEP_DIR]
    plain = Problem(_SWEEP_DIR, "qconf compare needs a plain folder name",
                    "e.g. hydra.sweep.dir=compare/flux")  # fmt: skip
    if typed:
        text = typed[-1].split("=", 1)[1]
        try:
            value = OverridesParser.create().parse_override(f"{_SWEEP_DIR}={text}").value()
        except HydraException:
            value = text if text.startswith("~") else None  # Hydra's grammar has no `~`
        if not isinstance(value, str) or not value or "${" in value:
            raise PlanError(plain)
    else:
        value = str(Path("multirun") / datetime.now().strftime("%Y-%m-%d/%H-%M-%S"))
    folder = output_folder(value, _SWEEP_DIR).absolute()
    if "'" in str(folder) or "\\" in str(folder):
        raise PlanError(plain)
    if folder.exists() and any(folder.iterdir()):
        fix = f"pick a new folder, or gather it: qconf compare {folder}"
        raise PlanError(Problem(_SWEEP_DIR, f"'{folder}' already exists and is not empty", fix))
    return folder, (f"{_SWEEP_DIR}='{folder}'",)


def _check_one_model_and_run(sweep: Any) -> None:
    plans = list(sweep.sweep.plans.values())
    models = {plan.model.model_dump_json() for plan in plans}
    runs = {plan.run.model_dump_json() for plan in plans}
    problems = []
    if len(models) > 1:
        sources = sorted({plan.model.source for plan in plans})
        what = f"the sweep loads different models ({', '.join(sources)})"
        problems.append(Problem("model", what, "compare one model's plans per run"))
    if len(runs) > 1:
        what = "the jobs differ in run settings (prompt, seed, size...)"
        fix = ("give several prompts or seeds as one list, e.g. 'run.seed=[0,1]' "
               "(run.seed=0,1 would sweep them as separate plans)")  # fmt: skip
        problems.append(Problem("run", what, fix))
    if problems:
        raise PlanError(problems)


def _check_gatherable(sweep: Any, jobs: int) -> None:
    """What the jobs will write stays inside the bounds `qconf compare DIR` reads with
    (qconf.compare.folders, .metrics): refused before the first job, not after the last."""
    from qconf.compare.folders import MAX_IMAGES, MAX_RUNS, MAX_TOTAL_PIXELS
    from qconf.compare.metrics import MAX_PIXELS

    run = next(iter(sweep.sweep.plans.values())).run  # one run setting for all (checked)
    pixels = run.height * run.width
    images = jobs * len(run.images())
    problems = [
        Problem("qconf compare", f"the sweep makes {count:,} {what}, over the {limit:,} it "
                "can compare", "sweep fewer plans, prompts or seeds, or smaller images")
        for count, limit, what in ((jobs, MAX_RUNS, "runs"), (images, MAX_IMAGES, "images"),
                                   (pixels, MAX_PIXELS, "pixels per image"),
                                   (images * pixels, MAX_TOTAL_PIXELS, "pixels in all"))
        if count > limit
    ]  # fmt: skip
    if problems:
        raise PlanError(problems)


def _finished(sweep_dir: Path) -> list[Path]:
    return list(sweep_dir.glob("*/report.json")) if sweep_dir.is_dir() else []


class _Progress:
    """A progress bar over the sweep's jobs, counting finished run folders (report.json is a
    job's last write), so it follows jobs in other processes and on other machines too."""

    def __init__(self, sweep_dir: Path, total: int) -> None:
        self.sweep_dir = sweep_dir
        self.total = total
        self.stop = threading.Event()

    def __enter__(self) -> _Progress:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        console = Console(stderr=True)  # a bar only on a terminal: logs stay clean
        columns = ("comparing", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        self.progress = Progress(
            *columns,
            console=console,
            redirect_stdout=False,
            redirect_stderr=False,
            disable=not console.is_terminal,
        )
        self.task = self.progress.add_task("jobs", total=self.total)
        self.progress.start()
        self.thread = threading.Thread(target=self._poll, daemon=True)
        self.thread.start()
        return self

    def _poll(self) -> None:
        while not self.stop.wait(0.5):
            self.progress.update(self.task, completed=len(_finished(self.sweep_dir)))

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.progress.update(self.task, completed=len(_finished(self.sweep_dir)))
        self.progress.stop()
