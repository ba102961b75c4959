"""`qconf run`: the main job, a Hydra app (run folders, -m multirun, sweepers work as usual).

Loads the pipeline with the plan, generates one image (settings under `run:`), and writes
image.png, plan.yaml (the resolved plan) and report.json into Hydra's output folder; a video
pipeline also writes its frames as video.webp (image.png is the first frame)."""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qconf.cli.common import BUG, USER_ERROR, report_bug
from qconf.errors import PlanError, Problem, QconfError
from qconf.plan.compose import (
    CONFIG_NAME,
    SEARCH_OVERRIDES,
    check_override_sizes,
    primary_dir,
    rewrite_overrides,
    secondary_dirs,
    user_config_dirs,
)
from qconf.plan.hydra_node import is_hydra_override as is_hydra_key
from qconf.plan.planfile import plan_file_overrides
from qconf.quiet import no_progress_bars
from qconf.text import safe
from qconf.trust.userpath import atomic_output
from qconf.trust.yamlsafe import bounded_omegaconf

# Hydra flags that take a value (everything else starting with '-' is a switch).
_VALUE_FLAGS = {"--config-dir", "-cd", "--config-name", "-cn", "--config-path", "-cp", "--cfg",
                "-c", "--package", "-p", "--info", "-i", "--experimental-rerun",
                "--shell-completion", "-sc", "--plan"}  # fmt: skip
_HELP_FLAGS = {"-h", "--help", "--hydra-help", "--info", "-i", "--cfg", "-c",
               "--shell-completion", "-sc"}  # fmt: skip
PICKLE_FLAG = "--trust-pickled-config"
# Every flag Hydra's app parser knows, and qconf's own: anything else is a typo, answered in one
# line before anything is composed (Hydra would print its usage page after the checks).
_SWITCHES = {"--help", "-h", "--hydra-help", "--version", "--resolve", "--run", "-r",
             "--multirun", "-m", PICKLE_FLAG}  # fmt: skip
KNOWN_FLAGS = _SWITCHES | _VALUE_FLAGS
MAX_JOBS = 1000  # a sweep is checked job by job before any starts


@dataclass
class _Sweep:
    """What the pre-check found: every job's overrides (as Hydra will name them) -> its plan."""

    config_dir: str | None
    config_name: str
    plan_file: str | None = None
    plans: dict[tuple[str, ...], Any] = field(default_factory=dict)
    typed: dict[tuple[str, ...], list[str]] = field(default_factory=dict)  # as the user typed
    failed: list[str] = field(default_factory=list)
    bugs: list[str] = field(default_factory=list)  # jobs that ended in a bug (exit 1)
    quiet: bool = False  # jobs print no per-part report (`qconf compare` prints one table)
    resume: bool = False  # skip a job whose folder already holds its finished run (compare)
    measuring: bool = False  # compare: video on a few frames unless run.num_frames is set
    multirun: bool = False
    # What happened in this process (jobs a launcher runs elsewhere are not seen here): the
    # folders of finished jobs, and of the job a Ctrl-C stopped.
    finished: list[str] = field(default_factory=list)
    interrupted: str | None = None


@dataclass
class Launch:
    """A checked `qconf run` command line, ready for Hydra."""

    hydra_argv: list[str]
    config_path: Path
    sweep: _Sweep
    jobs: list[list[str]]  # each job's typed overrides (one job without -m)


def main(argv: list[str]) -> int:
    try:
        checked = prepare(argv)
    except KeyboardInterrupt:
        print(f"interrupted: {BEFORE_ANY_JOB}", file=sys.stderr)
        return INTERRUPTED
    try:
        return launch(checked)
    except KeyboardInterrupt:
        print(f"interrupted: {interrupted_text(checked.sweep)}", file=sys.stderr)
        return INTERRUPTED


INTERRUPTED = 130  # the shell's code for a Ctrl-C
BEFORE_ANY_JOB = "while the plans were checked, before any job started; nothing was written"


def interrupted_text(sweep: _Sweep) -> str:
    """What a Ctrl-C left (one line): the jobs that finished, the one it stopped, what next."""
    from qconf.text import safe

    stopped = ""
    if sweep.interrupted is not None:
        left = "its partial files are there" if Path(sweep.interrupted).exists() else "removed"
        stopped = f"the job in {sweep.interrupted} did not finish ({left})"
    if not sweep.multirun:
        return safe((stopped or "the run did not start") + " — run the command again")
    done = sweep.finished
    if not done:
        # Jobs a launcher runs in its own processes (joblib, submitit) are not seen from here.
        what = "; ".join(filter(None, ["no job finished in this process", stopped]))
        return safe(what + " — run the command again")
    folder = str(Path(done[0]).parent)
    names = ", ".join(Path(d).name for d in done[:10]) + (", ..." if len(done) > 10 else "")
    what = "; ".join(filter(None, [f"{len(done)} job(s) finished in {folder} ({names})", stopped]))
    return safe(f"{what} — gather them: qconf compare {folder}; run the command again for the rest")


def prepare(argv: list[str], *, extra_overrides: tuple[str, ...] = (), quiet: bool = False
            ) -> Launch:  # fmt: skip
    """Parse a `qconf run` command line and check every job's plan (PlanError if any fails).
    `extra_overrides` come after the typed ones (qconf compare's baseline, its sweep dir)."""
    flags, overrides = split_argv(argv)
    check_flags(flags)
    overrides = [*overrides, *extra_overrides]
    config_dir = _take(flags, "--config-dir", "-cd")
    config_name = _take(flags, "--config-name", "-cn") or CONFIG_NAME
    plan_file = _take(flags, "--plan")
    _refuse_unsupported(flags)
    check_override_sizes(overrides)
    _check_output_dirs(overrides)
    user_dirs = user_config_dirs(config_dir)
    # Hydra composes each job from the plan file's overrides, then the typed ones; qconf's
    # checks keep them apart (a file may not turn on what only typing may).
    from_file = plan_file_overrides(plan_file) if plan_file is not None else []
    rewritten = rewrite_overrides([*from_file, *overrides], user_dirs)
    multirun = bool({"-m", "--multirun"} & set(flags))
    sweep = _Sweep(config_dir, config_name, plan_file, quiet=quiet, multirun=multirun)
    jobs: list[list[str]] = []
    if not _HELP_FLAGS & set(flags):
        # Every job's plan is checked before Hydra starts: a user error exits 2 with no run
        # folder, and a sweep never dies halfway on a plan it could have refused up front.
        jobs = _preflight(overrides, rewritten, multirun=multirun, sweep=sweep)
    search = [item for d in secondary_dirs(user_dirs) for item in ("--config-dir", str(d))]
    hydra_argv = [*flags, *search, *_logs_to_stderr(rewritten), *rewritten, *SEARCH_OVERRIDES]
    return Launch(hydra_argv, primary_dir(user_dirs), sweep, jobs)


# stdout carries qconf's own output (reports, paths): Hydra's console handlers write to stderr
# instead (the run folder's qconf.log keeps every line; qconf.cli.quiet shows a library's repeated
# message once). Given on Hydra's command line by qconf itself, like SEARCH_OVERRIDES, so that a
# config of your own that leaves qconf's primary config out is not told it changed logging.
_STDERR_CONSOLES = (
    "hydra.job_logging.handlers.console.stream=ext://sys.stderr",
    "hydra.hydra_logging.handlers.console.stream=ext://sys.stderr",
)


def _logs_to_stderr(rewritten: list[str]) -> list[str]:
    """The console redirections, except for a logging config the command line picks or sets
    itself (`hydra/job_logging=disabled` has no console handler to redirect)."""
    typed = {override.lstrip("+~").split("=", 1)[0] for override in rewritten}
    kept = []
    for redirect in _STDERR_CONSOLES:
        config = redirect.split(".")[1]  # job_logging | hydra_logging
        if not any(key == f"hydra/{config}" or key.startswith(f"hydra.{config}") for key in typed):
            kept.append(redirect)
    return kept


def launch(checked: Launch) -> int:
    code = _hydra_run(checked.hydra_argv, checked.config_path, checked.sweep)
    if checked.sweep.bugs:
        return BUG
    return USER_ERROR if checked.sweep.failed else code


def split_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    flags: list[str] = []
    overrides: list[str] = []
    items = iter(argv)
    for item in items:
        if item.startswith("-") and "=" in item and item.split("=", 1)[0] in _VALUE_FLAGS:
            flags += item.split("=", 1)  # --config-dir=DIR
        elif item.startswith("-") and "=" not in item:
            flags.append(item)
            if item in _VALUE_FLAGS:
                flags.append(next(items, ""))
        else:
            overrides.append(item)
    return flags, overrides


def check_flags(flags: list[str], command: str = "qconf run", extra: frozenset[str] = frozenset()
                ) -> None:  # fmt: skip
    """Refuse a flag neither Hydra nor qconf knows (a typo), naming the closest one."""
    import difflib

    known = KNOWN_FLAGS | extra
    items = iter(flags)
    for flag in items:
        if flag in _VALUE_FLAGS:
            value = next(items, None)
            if flag in ("--cfg", "-c") and value not in ("job", "hydra", "all"):
                what = f"{flag} takes job, hydra or all (got '{value}')"
                raise PlanError(Problem(command, what, f"e.g. {command} --cfg job OVERRIDES"))
            continue
        if flag not in known:
            close = difflib.get_close_matches(flag, sorted(known), n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'? " if close else ""
            names = ", ".join(sorted(f for f in known if f.startswith("--")))
            raise PlanError(Problem(command, f"unknown flag '{flag}'",
                                    f"{hint}flags: {names}; see {command} --help"))  # fmt: skip


def _take(flags: list[str], *names: str) -> str | None:
    """Remove a flag and its value from `flags`; the value (last one wins, as in Hydra)."""
    value = None
    while any(name in flags[:-1] for name in names):
        i = next(i for i, flag in enumerate(flags[:-1]) if flag in names)
        value = flags[i + 1]
        del flags[i : i + 2]
    return value


def _check_output_dirs(overrides: list[str]) -> None:
    """A typed run or sweep folder Hydra cannot create is one line now, not a traceback from
    Hydra after the plan was checked (a file in the path, a read-only folder)."""
    from qconf.trust.userpath import output_folder

    for text in overrides:
        key, _, value = text.partition("=")
        if key.lstrip("+") in ("hydra.run.dir", "hydra.sweep.dir") and value and "${" not in value:
            output_folder(value.strip("'\""), key.lstrip("+"))


def _refuse_unsupported(flags: list[str]) -> None:
    if "--config-path" in flags or "-cp" in flags:
        raise PlanError(
            Problem("--config-path", "not supported by qconf run", "use --config-dir DIR")
        )
    if "--experimental-rerun" in flags and PICKLE_FLAG not in flags:
        raise PlanError(
            Problem(
                "--experimental-rerun",
                "loads a pickled config file, and unpickling can run any code",
                f"re-run with the overrides in .hydra/overrides.yaml, or add {PICKLE_FLAG} "
                "if you made that file yourself",
            )
        )
    if PICKLE_FLAG in flags:
        flags.remove(PICKLE_FLAG)


def _preflight(overrides: list[str], rewritten: list[str], *, multirun: bool,
               sweep: _Sweep) -> list[list[str]]:  # fmt: skip
    from qconf.loading.environment import check_environment
    from qconf.plan.intake import compose_plan, intake

    jobs = _jobs(overrides, multirun)
    hydra_jobs = _jobs(rewritten, multirun)
    if len(jobs) != len(hydra_jobs):  # a plan file cannot sweep; this is a bug if reached
        raise RuntimeError("sweep split differs between typed and rewritten overrides")
    hydra_overrides = [o for o in overrides if is_hydra_override(o)]
    found: dict[Problem, list[int]] = {}  # each problem -> the jobs that have it
    unavailable: dict[str, Problem] = {}  # model source -> why it cannot load: said once
    for number, (job, hydra_job) in enumerate(zip(jobs, hydra_jobs, strict=True)):
        try:
            cfg = compose_plan(
                [*job, *hydra_overrides],
                config_dir=sweep.config_dir,
                config_name=sweep.config_name,
                plan_file=sweep.plan_file,
            )
            plan = intake(cfg, config_dir=sweep.config_dir)
            check_environment(plan.resolve())
            _check_available(plan.source, unavailable)
        except QconfError as exc:
            for problem in exc.problems:
                found.setdefault(problem, []).append(number)
            continue
        sweep.plans[_task_key(hydra_job)] = plan
        sweep.typed[_task_key(hydra_job)] = job
    if found or unavailable:
        problems = [_in_jobs(p, numbers, jobs) for p, numbers in found.items()]
        raise PlanError([*unavailable.values(), *problems])
    return jobs


def _in_jobs(problem: Problem, numbers: list[int], jobs: list[list[str]]) -> Problem:
    """A problem named once with the jobs it is in: none for one job or for every job of the
    sweep (a typo in a key), the job's overrides for one job of several, else the numbers."""
    if len(numbers) == len(jobs):
        return problem
    if len(numbers) == 1:
        prefix = f"job {numbers[0]} ({' '.join(jobs[numbers[0]])}): "
    else:
        prefix = f"jobs {', '.join(map(str, numbers))}: "
    return Problem(prefix + problem.where, problem.what, problem.fix)


def _check_available(source: Any, unavailable: dict[str, Problem]) -> None:
    """A hub model that is not downloaded and cannot be (offline): one line per model for the
    whole sweep, before Hydra makes any run folder."""
    if source.given in unavailable:
        return
    try:
        source.check_available()
    except QconfError as exc:
        unavailable[source.given] = exc.problems[0]


def _jobs(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The override list of each job, split as Hydra's basic sweeper splits a sweep."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    task = [o for o in overrides if not is_hydra_override(o)]
    if not multirun:
        return [task]
    try:
        parsed = OverridesParser.create().parse_overrides(task)
        count = 1
        for override in parsed:
            if override.is_sweep_override():
                count *= _sweep_length(override)
        if count > MAX_JOBS:
            raise PlanError(Problem("-m", f"the sweep has {count:,} jobs (more than {MAX_JOBS})",
                                    "sweep fewer values, or run it in parts"))  # fmt: skip
        return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
    except HydraException as exc:
        raise PlanError(
            Problem("override", f"cannot expand the sweep ({_first_line(exc)})",
                    "list the values: key=a,b or key=range(0,4); glob() is not supported")
        ) from None  # fmt: skip


def _sweep_length(override: Any) -> int:
    from hydra.core.override_parser.types import RangeSweep

    value = override.value()
    if isinstance(value, RangeSweep):
        start, stop, step = value.start or 0, value.stop, value.step or 1
        return max(0, int((stop - start) / step) + (1 if (stop - start) % step else 0))
    return len(list(override.sweep_iterator()))


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def is_hydra_override(override: str) -> bool:
    """An override of Hydra's own node (hydra.*, hydra/launcher=...), not of the plan."""
    return is_hydra_key(override.lstrip("+~").split("=", 1)[0])


def _task_key(overrides: list[str]) -> tuple[str, ...]:
    return tuple(o for o in overrides if not is_hydra_override(o))


def _hydra_run(argv: list[str], config_path: Path, sweep: _Sweep) -> int:
    import hydra

    def job(cfg: Any) -> None:
        generate(cfg, sweep)

    task: Callable[[], None] = hydra.main(
        config_path=str(config_path), config_name=sweep.config_name, version_base=None
    )(job)
    saved = sys.argv
    sys.argv = ["qconf run", *argv]
    try:
        with bounded_omegaconf():
            task()
    except SystemExit as exc:  # Hydra exits on its own errors (after printing them)
        return int(exc.code or 0) if isinstance(exc.code, int) else 1
    finally:
        sys.argv = saved
    return 0


def generate(cfg: Any, sweep: _Sweep) -> None:
    """One Hydra job: load, generate, write the three files atomically. A user error (say, a
    hub model not in the cache) is one line on stderr and exit 2, with no half-written job
    folder left behind."""
    from hydra.core.hydra_config import HydraConfig

    from qconf.cli.quiet import quiet_library_noise

    quiet_library_noise()  # again: launchers run jobs in fresh processes (joblib, submitit)
    hydra_cfg = HydraConfig.get()
    out = Path(hydra_cfg.runtime.output_dir)
    task = list(hydra_cfg.overrides.task)
    try:
        # The plan checked before launch; launchers in other processes get the same mapping
        # (pickled with this function). Never recomposed from Hydra's view of the job.
        plan = sweep.plans.get(_task_key(task))
        if plan is None:
            unchecked = Problem("hydra.overrides.task", "this job was not checked before launch",
                                "run it without sweeper plugins that add jobs")  # fmt: skip
            raise PlanError(unchecked)
        typed = sweep.typed.get(_task_key(task), [])
        if not (sweep.resume and _already_finished(plan, out, typed)):
            _generate(plan, out, typed, quiet=sweep.quiet, measuring=sweep.measuring)
        sweep.finished.append(str(out))
    except QconfError as exc:
        for line in exc.lines:
            print(f"error: {safe(line)}", file=sys.stderr)
        sweep.failed.append(" ".join(task))
        _remove_job_folder(out)
    except KeyboardInterrupt:
        sweep.interrupted = str(out)
        _remove_job_folder(out)
        raise
    except Exception:  # a bug: qconf's own report (not Hydra's), and no half-made job folder
        report_bug()
        sweep.bugs.append(" ".join(task))
        _remove_job_folder(out)


def _already_finished(plan: Any, out: Path, typed: list[str]) -> bool:
    """The job's folder holds its finished run, from the same plan and overrides (a resumed
    `qconf compare`): nothing to load or generate again."""
    from qconf.run.finished import finished_run, plan_text

    return finished_run(out, plan_text(plan.resolve().to_json()), typed, len(plan.run.images()))


def _generate(plan: Any, out: Path, overrides: list[str], *, quiet: bool = False,
              measuring: bool = False) -> None:  # fmt: skip
    from qconf.cli.tables import print_report
    from qconf.loading.loader import load
    from qconf.loading.out_of_memory import out_of_memory_as_error
    from qconf.run.finished import plan_text
    from qconf.run.generate import generate, measure_peak
    from qconf.run.video import encode_video
    from qconf.source.video import measuring_run

    if quiet:  # qconf compare shows one progress bar over the sweep instead
        no_progress_bars()
    with measure_peak() as peak:
        with out_of_memory_as_error("loading"):
            loaded = load(plan)
        loaded.pipeline.set_progress_bar_config(disable=True)  # qconf's bar instead
        with out_of_memory_as_error("generating"), _steps_bar(quiet) as on_step:
            run_spec = measuring_run(plan) if measuring else plan.run
            images = generate(loaded.pipeline, run_spec, on_step)
    peak_bytes, peak_kind = peak.on(loaded.pipeline.device)
    names = image_names(len(images))
    videos = video_names(len(images))
    for name, video, generated in zip(names, videos, images, strict=True):
        _write_atomic(out / name, lambda f, g=generated: g.image.save(f, format="PNG"))
        if generated.frames is not None:
            data = encode_video(generated.frames, generated.fps or 1)
            _write_atomic(out / video, lambda f, d=data: f.write(d))
    plan_yaml = plan_text(loaded.resolved.to_json())
    _write_atomic(out / "plan.yaml", lambda f: f.write(plan_yaml.encode()))
    run = {
        "overrides": overrides,  # the job's, as typed (Hydra records qconf's rewritten form)
        "images": [
            {
                "file": name,
                "prompt": g.prompt,
                "seed": g.seed,
                "seconds": round(g.seconds, 4),
                **({"video": video, "frames": len(g.frames)} if g.frames is not None else {}),
            }
            for name, video, g in zip(names, videos, images, strict=True)
        ],  # fmt: skip
        "seconds_per_image": round(sum(g.seconds for g in images) / len(images), 4),
        "peak_memory_bytes": peak_bytes,
        "peak_memory_kind": peak_kind,
        **_video_fields(images),
    }
    report_text = json.dumps({**loaded.report.to_json(), "run": run}, indent=2)
    # report.json last: its presence marks a finished job (compare's progress counts it).
    _write_atomic(out / "report.json", lambda f: f.write(report_text.encode()))
    if not quiet:
        print_report(loaded.report)
        first = out / (videos[0] if images[0].frames is not None else names[0])
        print(f"wrote {safe(str(first))}{' ...' if len(names) > 1 else ''}, "
              f"{'image.png, ' if images[0].frames is not None and len(names) == 1 else ''}"
              "plan.yaml, report.json")  # fmt: skip


def _video_fields(images: list[Any]) -> dict[str, Any]:
    """report.json's video facts: frames per video, frame rate, seconds per frame, format."""
    from qconf.run.video import VIDEO_FORMAT

    first = images[0]
    if first.frames is None:
        return {}
    frames = sum(len(g.frames) for g in images)
    return {"frames": len(first.frames), "fps": first.fps, "video_format": VIDEO_FORMAT,
            "seconds_per_frame": round(sum(g.seconds for g in images) / frames, 4)}  # fmt: skip


@contextlib.contextmanager
def _steps_bar(quiet: bool) -> Iterator[Any]:
    """qconf's bar over the denoising steps (on a terminal); none for compare's jobs, which
    show one bar over the sweep."""
    if quiet:
        yield None
        return
    from qconf.cli.progress import progress_bar

    with progress_bar("generating") as update:
        yield update


def image_names(count: int) -> list[str]:
    """image.png for one image; image-000.png, image-001.png ... for several."""
    return ["image.png"] if count == 1 else [f"image-{i:03d}.png" for i in range(count)]


def video_names(count: int) -> list[str]:
    """video.webp for one video; video-000.webp ... for several (beside image-000.png ...)."""
    return ["video.webp"] if count == 1 else [f"video-{i:03d}.webp" for i in range(count)]


def _remove_job_folder(out: Path) -> None:
    """Remove a failed job's folder if it holds only what Hydra put there (.hydra, the log)."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    own = {hydra_cfg.output_subdir, f"{hydra_cfg.job.name}.log"}
    if out.is_dir() and {p.name for p in out.iterdir()} <= own:
        shutil.rmtree(out, ignore_errors=True)
        _remove_empty_parents(out)


_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _remove_empty_parents(out: Path) -> None:
    """The date folder and outputs/ or multirun/ Hydra made for the job by its default pattern
    (outputs/<date>/<time>), when the removed job folder was all they held: a failed run
    leaves nothing behind. A folder the user named is left alone."""
    cwd = Path.cwd()
    for parent in out.parents:
        if parent == cwd or cwd not in parent.parents:
            return
        if not (_DATE.match(parent.name) or parent.name in ("outputs", "multirun")):
            return
        try:
            parent.rmdir()  # only when empty
        except OSError:
            return


def _write_atomic(target: Path, write: Callable[[Any], None]) -> None:
    """Write through a temporary file that replaces `target` (permissions from the umask)."""
    with atomic_output(target, "qconf run") as temp, open(temp, "wb") as handle:
        write(handle)
