"""`qconf tune --budget SIZE [--train [PARTS]] [--name NAME] [--config-dir DIR] [overrides]`: the
per-part plan with the best measured image whose estimated weights fit SIZE, written as a
preset into the config dir (`qconf run --config-dir DIR preset=NAME` then runs it).
`budget=SIZE` among the overrides is the same as `--budget SIZE`."""

from __future__ import annotations

import argparse
import re
from typing import Any

from qconf.cli.common import EVERY_QUANTIZED_PART, add_plan_arguments, add_train_argument
from qconf.cli.measure import (
    add_measure_arguments,
    choices_from_args,
    chosen,
    interrupt_notice,
    require_libraries,
    setting_from_args,
    with_default,
)
from qconf.cli.progress import progress_bar
from qconf.errors import PlanError, Problem

COMMAND = "qconf tune"
DEFAULT_CONFIG_DIR = "qconf-conf"
DEFAULT_MEASURE = 3
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from qconf.units import size_help

    what = "memory for the weights, e.g. --budget 16GiB (or `budget=16GiB`)"
    parser.add_argument("--budget", metavar="SIZE", help=size_help(what))
    add_train_argument(parser, "the parts (a,b) that will be LoRA-trained get only options LoRA "
                       "trains through (qconf list options); alone: every part the plan "
                       "quantizes (default: no training)")  # fmt: skip
    parser.add_argument("--name", help="the preset's name (default: tuned-<budget>)")
    parser.add_argument("--measure", type=int, default=DEFAULT_MEASURE, metavar="N",
                        help="load and run the N best plans of the search "
                        f"(default {DEFAULT_MEASURE})")  # fmt: skip
    parser.add_argument("--force", action="store_true", help="replace a preset of that name")
    add_measure_arguments(parser)
    add_plan_arguments(parser)
    where = f"(tune writes the preset there; default {DEFAULT_CONFIG_DIR}/)"
    with_default(parser, "config_dir", where)


def run(args: argparse.Namespace) -> int:
    from qconf.tune.preset_file import preset_path
    from qconf.units import parse_size

    # Every argument is checked before torch is imported (a typo costs no import).
    require_libraries(COMMAND)
    budget_text, where_given = _take_budget(args)
    budget = parse_size(budget_text, where_given)
    if args.measure < 1:
        raise PlanError(Problem("--measure", f"{args.measure}", "measure at least 1 candidate"))
    name = args.name or f"tuned-{re.sub(r'[^A-Za-z0-9]+', '-', budget_text).strip('-').lower()}"
    if not _NAME.fullmatch(name):
        raise PlanError(Problem("--name", f"'{name}' is not a preset name",
                                "letters, digits, - and _ (e.g. flux-16gib)"))  # fmt: skip
    config_dir = args.config_dir or DEFAULT_CONFIG_DIR
    target = preset_path(config_dir, name, force=args.force)  # refused before any work
    args.config_dir = config_dir if _has_conf(config_dir) else None
    choices = choices_from_args(args)
    train = _train_parts(args.train, choices.parts)
    with interrupt_notice("tune"):
        return _tune(args, choices, budget, train, target, config_dir, name)


def _tune(args: argparse.Namespace, choices: Any, budget: int, train: list[str] | None,
          target: Any, config_dir: str, name: str) -> int:  # fmt: skip
    from qconf.text import safe
    from qconf.tune import tune
    from qconf.tune.preset_file import write_preset

    where = setting_from_args(args, choices)
    with progress_bar("tuning") as progress:
        tuned = tune(where, budget, choices.options, parts=choices.tried, train=train,
                     measured=args.measure, presets=_builtin_presets(),
                     progress=progress)  # fmt: skip
    _print(tuned)
    fresh = [c for c in tuned.cells if c.ok and not c.cached]
    runs = [c for c in tuned.candidates if not c.cached]
    print(f"measured {len(fresh)} part/option cells and ran {len(runs)} candidates "
          f"({sum(c.ok for c in tuned.cells) - len(fresh)} cells and "
          f"{len(tuned.candidates) - len(runs)} candidates from the cache)")  # fmt: skip
    written = write_preset(target, where, tuned, force=args.force)  # checked again, atomically
    print(f"wrote {safe(str(written))}: qconf run --config-dir {safe(config_dir)} preset={name}")
    return 0


def _train_parts(text: str | None, parts: list[str]) -> list[str] | None:
    """The parts to be trained (checked against the pipeline's), [] for every quantized part,
    None for no training."""
    if text is None:
        return None
    return [] if text == EVERY_QUANTIZED_PART else chosen(text, parts, "--train")


def _take_budget(args: argparse.Namespace) -> tuple[str, str]:
    """The budget text and the name it was given under; `budget=` leaves the overrides."""
    given = [o.split("=", 1)[1] for o in args.overrides if o.startswith("budget=")]
    args.overrides = [o for o in args.overrides if not o.startswith("budget=")]
    if args.budget is not None:
        given.insert(0, args.budget)
    if not given:
        raise PlanError(Problem("--budget", "missing",
                                "give the memory for the weights: --budget 16GiB"))  # fmt: skip
    if len(set(given)) > 1:
        raise PlanError(Problem("--budget", f"given {len(given)} times ({', '.join(given)})",
                                "give one budget"))  # fmt: skip
    return given[0], "--budget" if args.budget is not None else "budget"


def _has_conf(folder: str) -> bool:
    from pathlib import Path

    return Path(folder).expanduser().is_dir()


def _builtin_presets() -> list[str]:
    from qconf.plan.conftree import group_options

    return sorted(group_options("preset"))


def _print(tuned: Any) -> None:
    from rich.table import Table

    from qconf.cli.common import console
    from qconf.compare.tables import psnr_text, ssim_text
    from qconf.text import markup
    from qconf.units import human_bytes

    table = Table(title=f"candidates for {human_bytes(tuned.budget)} of weights, best measured "
                  "first (PSNR/SSIM against the unquantized pipeline)")  # fmt: skip
    for column in ("candidate", "plan", "weights (est.)", "PSNR", "SSIM"):
        table.add_column(column, justify="left" if column in ("candidate", "plan") else "right")
    for c in tuned.candidates:
        plan = " ".join(f"{p}={o}" for p, o in sorted(c.mapping.items())) or "unquantized"
        table.add_row(markup(c.label), markup(plan), human_bytes(c.bytes), psnr_text(c.psnr),
                      ssim_text(c.ssim))  # fmt: skip
    console().print(table)
