"""`qconf tune budget=SIZE [--train] [--name NAME] [--config-dir DIR] [overrides]`: the per-part
plan with the best measured image whose estimated weights fit SIZE, written as a preset into
the config dir (`qconf run --config-dir DIR preset=NAME` then runs it)."""

from __future__ import annotations

import argparse
import re
from typing import Any

from qconf.cli.common import add_plan_arguments
from qconf.cli.measure import (
    add_measure_arguments,
    chosen,
    option_names,
    progress_bar,
    setting_from_args,
)
from qconf.errors import PlanError, Problem

DEFAULT_CONFIG_DIR = "qconf-conf"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--train", action="store_true",
                        help="only options LoRA trains through (qconf list options)")  # fmt: skip
    parser.add_argument("--name", help="the preset's name (default: tuned-<budget>)")
    parser.add_argument("--measure", type=int, default=3, metavar="N",
                        help="load and run the N best predictions (default 3)")  # fmt: skip
    parser.add_argument("--force", action="store_true", help="replace a preset of that name")
    add_measure_arguments(parser)
    add_plan_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from qconf.compare.metrics import require_libraries
    from qconf.sensitivity.parts import weight_bearing_parts
    from qconf.text import safe
    from qconf.tune import tune
    from qconf.tune.preset_file import preset_path, write_preset

    require_libraries()
    budget_text, args.overrides = _take_budget(args.overrides)
    budget = _budget(budget_text)
    if args.measure < 1:
        raise PlanError(Problem("--measure", f"{args.measure}", "measure at least 1 candidate"))
    args.config_dir = args.config_dir or DEFAULT_CONFIG_DIR
    name = args.name or f"tuned-{re.sub(r'[^A-Za-z0-9]+', '-', budget_text).strip('-').lower()}"
    if not _NAME.fullmatch(name):
        raise PlanError(Problem("--name", f"'{name}' is not a preset name",
                                "letters, digits, - and _ (e.g. flux-16gib)"))  # fmt: skip
    target = preset_path(args.config_dir, name, force=args.force)  # refused before any work
    config_dir = args.config_dir
    args.config_dir = config_dir if _has_conf(config_dir) else None
    where = setting_from_args(args)
    options = chosen(args.options, option_names(where.config_dir), "--options")
    parts = chosen(args.parts, weight_bearing_parts(where.plan), "--parts")
    with progress_bar("tuning") as progress:
        tuned = tune(where, budget, options, parts=parts, train=args.train, measured=args.measure,
                     presets=_builtin_presets(), progress=progress)  # fmt: skip
    _print(tuned)
    fresh = [c for c in tuned.cells if c.ok and not c.cached]
    runs = [c for c in tuned.candidates if not c.cached]
    print(f"measured {len(fresh)} part/option cells and ran {len(runs)} candidates "
          f"({sum(c.ok for c in tuned.cells) - len(fresh)} cells and "
          f"{len(tuned.candidates) - len(runs)} candidates from the cache)")  # fmt: skip
    written = write_preset(target, where, tuned, force=args.force)  # checked again, atomically
    print(f"wrote {safe(str(written))}: qconf run --config-dir {safe(config_dir)} preset={name}")
    return 0


def _take_budget(overrides: list[str]) -> tuple[str, list[str]]:
    budgets = [o for o in overrides if o.startswith("budget=")]
    if not budgets:
        raise PlanError(Problem("budget", "missing", "give the memory for weights: budget=16GiB"))
    return budgets[-1].split("=", 1)[1], [o for o in overrides if not o.startswith("budget=")]


def _budget(text: str) -> int:
    from qconf.estimate.presets import parse_size

    return parse_size(text, "budget")  # a PlanError naming budget=


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

    table = Table(title=f"candidates for {human_bytes(tuned.budget)} of weights, best first")
    for column in ("candidate", "plan", "weights (est.)", "predicted PSNR", "PSNR", "SSIM"):
        table.add_column(column, justify="left" if column in ("candidate", "plan") else "right")
    for c in tuned.candidates:
        plan = " ".join(f"{p}={o}" for p, o in sorted(c.mapping.items())) or "unquantized"
        scores = psnr_text(c.predicted_psnr), psnr_text(c.psnr), ssim_text(c.ssim)
        table.add_row(markup(c.label), markup(plan), human_bytes(c.bytes), *scores)
    console().print(table)
