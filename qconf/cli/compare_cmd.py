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
from qconf.text import safe

NO_BASELINE = "--no-baseline"
# Hydra's flags that print something instead of running: one job's matter, not a comparison's.
_RUN_ONLY_FLAGS = frozenset({"--hydra-help", "--cfg", "-c", "--info", "-i", "--resolve",
                             "--shell-completion", "-sc", "--version", "--run", "-r"})  # fmt: skip
_NEW_FOLDER = "pick a new folder, or gather it: qconf compare {folder}"
_CLEAR_QUANT = ("quant.backend=null", "quant.kwargs={}", "quant.components=null",
                "quant.mapping={}")  # fmt: skip
_SWEEP_DIR = "hydra.sweep.dir"


def main(argv: list[str]) -> int:
    if {"-h", "--help"} & set(argv):
        from qconf.cli.run_help import compare_help

        print(compare_help(), end="")
        return 0
    from qconf.compare.metrics import require_libraries

    require_libraries()
    from qconf.cli.hydra_run import BEFORE_ANY_JOB, INTERRUPTED

    gather_only = len(argv) == 1 and "=" not in argv[0] and not argv[0].startswith("-")
    try:
        return _gather_and_print(Path(argv[0])) if gather_only else _run_and_gather(argv)
    except KeyboardInterrupt:  # once jobs run, _run_and_gather says what finished
        done = "the tables were not written — run it again" if gather_only else BEFORE_ANY_JOB
        print(f"interrupted: {done}", file=sys.stderr)
        return INTERRUPTED


def _run_and_gather(argv: list[str]) -> int:
    from qconf.cli.hydra_run import (
        INTERRUPTED,
        Launch,
        check_flags,
        is_hydra_override,
        launch,
        prepare,
        split_argv,
    )

    flags = split_argv(argv)[0]
    check_flags(flags, "qconf compare", frozenset({NO_BASELINE}))
    shown = next((f for f in flags if f in _RUN_ONLY_FLAGS), None)
    if shown is not None:
        fix = f"see one job's config with qconf run {shown} ... (without the sweep)"
        raise PlanError(Problem("qconf compare", f"{shown} is a flag of qconf run", fix))
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
    for item in launches:  # a video plan: a few frames unless run.num_frames says how many
        item.sweep.measuring = True
    _say_frames(sweep)
    total = sum(len(item.jobs) for item in launches)
    _check_gatherable(sweep, total)
    record = _record(launches)
    resuming = _check_resume(sweep_dir, record)
    from qconf.compare.sweepfile import write_record
    from qconf.trust.userpath import make_folder

    make_folder(sweep_dir, _SWEEP_DIR)  # every job checked: now the folder may exist
    write_record(sweep_dir, record)
    if resuming:
        print(f"resuming: {len(_finished(sweep_dir))} of {total} runs already finished in "
              f"{safe(str(sweep_dir))}", file=sys.stderr)  # fmt: skip
    try:
        with _Progress(sweep_dir, total):
            for item in launches:
                item.sweep.resume = True  # a finished run of the same plan is kept
                launch(item)
        comparison = _gather_and_print(sweep_dir, code_only=True)
    except KeyboardInterrupt:
        print(f"interrupted: {_interrupted_text(sweep_dir, total)}", file=sys.stderr)
        return INTERRUPTED
    missing = total - len(_finished(sweep_dir))
    if missing:
        again = f"hydra.sweep.dir={safe(str(sweep_dir))}"
        print(f"error: {missing} of {total} jobs did not finish (see the lines above); the "
              f"tables hold the others — once fixed, the same command with {again} runs only "
              "those", file=sys.stderr)  # fmt: skip
        return 2
    return comparison


def _say_frames(sweep: Any) -> None:
    """'video: measured on 5 frames ...' for a video model (one model per comparison)."""
    from qconf.source.video import measuring_note

    note = measuring_note(next(iter(sweep.sweep.plans.values())))
    if note is not None:
        print(safe(note), file=sys.stderr)


def _record(launches: list[Any]) -> dict[str, Any]:
    """What this command's sweep is (sweep.json): every job's typed overrides, resolved plan
    and run settings, launch by launch."""
    from qconf.compare.sweepfile import sweep_record

    return sweep_record([
        [{"overrides": item.sweep.typed[key], "plan": plan.resolve().to_json(),
          "run": plan.run.model_dump(mode="json")} for key, plan in item.sweep.plans.items()]
        for item in launches
    ])  # fmt: skip


def _check_resume(sweep_dir: Path, record: dict[str, Any]) -> bool:
    """True when `sweep_dir` holds an earlier run of this same sweep (resume it); a folder made
    for another sweep is refused (its runs would mix with these)."""
    from qconf.compare.sweepfile import read_record

    if not (sweep_dir.is_dir() and any(sweep_dir.iterdir())):
        return False
    if read_record(sweep_dir) != record:
        what = (f"'{sweep_dir}' holds another comparison (other plans, model, prompts or seeds "
                "than this command's)")  # fmt: skip
        raise PlanError(Problem(_SWEEP_DIR, what, _NEW_FOLDER.format(folder=sweep_dir)))
    return True


def _interrupted_text(sweep_dir: Path, total: int) -> str:
    """One line after a Ctrl-C: which runs finished where, and how to resume or gather."""
    from qconf.compare.folders import BASELINE

    names = [path.parent.name for path in _finished(sweep_dir)]  # baseline, then job numbers
    done = sorted(names, key=lambda n: (n != BASELINE, int(n) if n.isdigit() else 0, n))
    again = f"resume: run the same command with hydra.sweep.dir={sweep_dir}"
    if not done:
        return safe(f"none of the {total} runs finished in {sweep_dir} — {again}")
    names = ", ".join(done[:10]) + (", ..." if len(done) > 10 else "")
    return safe(f"{len(done)} of {total} runs finished in {sweep_dir} ({names}) — {again} "
                f"(the finished runs are kept, the other {total - len(done)} run), or gather "
                f"what finished: qconf compare {sweep_dir}")  # fmt: skip


def _gather_and_print(sweep_dir: Path, *, code_only: bool = False) -> int:
    from qconf.compare import gather, write_outputs
    from qconf.compare.figures import grid_note

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
    video = any(row.worst_psnr is not None for row in comparison.rows)
    for name, justify in (("plan", "left"), ("weights", "right"), ("peak", "right"),
                          ("load s", "right"), ("s/video" if video else "s/image", "right"),
                          ("PSNR", "right"), ("SSIM", "right"),
                          *((("worst frame PSNR", "right"),) if video else ()),
                          ("Pareto", "center")):  # fmt: skip
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for row in comparison.rows:
        run = row.run
        worst = (psnr_text(row.worst_psnr),) if video else ()
        table.add_row(markup(row.label), human_bytes(run.total_bytes),
                      human_bytes(run.peak_memory_bytes), f"{run.load_seconds:.2f}",
                      f"{run.seconds_per_image:.3f}", psnr_text(row.psnr), ssim_text(row.ssim),
                      *worst, "✓" if row.pareto else "")  # fmt: skip
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
    from qconf.compare.sweepfile import NAME

    if folder.exists() and any(folder.iterdir()) and not (folder / NAME).is_file():
        what = f"'{folder}' already exists and is not empty (not a `qconf compare` sweep folder)"
        raise PlanError(Problem(_SWEEP_DIR, what, _NEW_FOLDER.format(folder=folder)))
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
