"""What the measuring commands (sensitivity, tune) share: which options and parts to try, the
checks of every argument made before torch is imported (a typo is answered in about the time
a plan is composed), the measuring setting, a progress bar, and the one line a Ctrl-C leaves."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from qconf.errors import BackendUnavailableError, PlanError, Problem
from qconf.text import safe


def add_measure_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--options", metavar="A,B",
                        help="backend options to try (default: every option)")  # fmt: skip
    parser.add_argument(
        "--parts", metavar="A,B", help="parts to try (default: every weight-bearing part)"
    )


def require_libraries(command: str) -> None:
    """torchmetrics and matplotlib (`qconf[compare]`), found without importing them: importing
    torchmetrics imports torch, and every mistake in the arguments is answered before that."""
    from importlib.util import find_spec

    missing = [m for m in ("torchmetrics", "matplotlib") if find_spec(m) is None]
    if missing:
        what = f"needs {' and '.join(missing)}"
        raise BackendUnavailableError(Problem(command, what, "pip install 'qconf[compare]'"))


@dataclass
class Choices:
    """The arguments every measuring command checks before torch: the plan (composed and
    validated, nothing loaded), the options and parts to try."""

    config_dir: str | None
    plan: Any  # the unquantized Plan
    parts: list[str]  # every weight-bearing part of the pipeline
    options: list[str]  # to try
    tried: list[str]  # parts to try


def choices_from_args(args: argparse.Namespace) -> Choices:
    """Check --config-dir, the overrides, --options and --parts (did-you-mean), no torch."""
    from qconf.plan.intake import intake
    from qconf.sensitivity.parts import CLEAR_QUANT, weight_bearing_parts
    from qconf.trust.bounds import check_override_depth
    from qconf.trust.userpath import user_path

    config_dir = str(user_path(args.config_dir, "--config-dir")) if args.config_dir else None
    options = chosen(args.options, option_names(config_dir), "--options")
    check_override_depth(args.overrides)
    overrides = [*args.overrides, *CLEAR_QUANT]
    plan = intake(overrides=overrides, plan_file=args.plan, config_dir=config_dir)
    parts = weight_bearing_parts(plan)
    return Choices(config_dir, plan, parts, options, chosen(args.parts, parts, "--parts"))


def setting_from_args(args: argparse.Namespace, choices: Choices) -> Any:
    """The measuring setting (model fingerprint: a tiny pipeline is built here, with torch)."""
    from qconf.sensitivity.parts import setting
    from qconf.source.video import measuring_note

    where = setting(list(args.overrides), choices.config_dir, plan_file=args.plan,
                    plan=choices.plan)  # fmt: skip
    note = measuring_note(where.plan)  # a video model: measured on a few frames, said once
    if note is not None:
        print(safe(note), file=sys.stderr)
    return where


def chosen(text: str | None, known: list[str], flag: str) -> list[str]:
    from qconf.plan.messages import did_you_mean

    if not text:
        return known
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        raise PlanError(Problem(flag, f"'{text}' names nothing", f"e.g. {flag} {known[0]}"))
    unknown = [n for n in names if n not in known]
    if unknown:
        raise PlanError([Problem(flag, f"unknown '{n}'", did_you_mean(n, known) +
                                 f"known: {', '.join(known)}") for n in unknown])  # fmt: skip
    return names


def option_names(config_dir: str | None) -> list[str]:
    from qconf.plan.compose import user_config_dirs
    from qconf.plan.conftree import backend_options

    return sorted(backend_options(user_config_dirs(config_dir)))


def with_default(parser: argparse.ArgumentParser, dest: str, text: str) -> None:
    """Add `text` to the help of an argument another layer defined (e.g. --config-dir)."""
    for action in parser._actions:  # argparse has no public lookup by dest
        if action.dest == dest:
            action.help = f"{action.help} {text}" if action.help else text


@contextmanager
def interrupt_notice(command: str) -> Iterator[None]:
    """On Ctrl-C: one stderr line saying what finished (each finished measurement is in the
    cache) and that the same command resumes; then the CLI exits 130."""
    from qconf.sensitivity import cache

    before = dict(cache.WRITTEN)
    try:
        yield
    except KeyboardInterrupt:
        from qconf.text import safe

        what = cache.written_text(before) or "no new measurement"
        print(f"interrupted: qconf {command} finished {what} this run "
              f"(cached in {safe(str(cache.cache_dir()))}); run the same command again to "
              "resume from there", file=sys.stderr)  # fmt: skip
        raise
