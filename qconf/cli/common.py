"""What the subcommands share (each command module imports only this layer of cli/, never
another command): the plan arguments and their intake, the console, the exit code of a user
error."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from qconf.errors import PlanError, Problem
from qconf.trust.bounds import check_override_depth

USER_ERROR = 2
BUG = 1


def report_bug() -> int:
    """Anything not qconf's own error is a bug (exit 1, never 2: a user is not told their input
    was wrong when it was qconf): the traceback being handled, then what to report."""
    import traceback

    traceback.print_exc()
    print("error: this is a bug in qconf, not a mistake in your input — please report it with "
          "the command you typed and the traceback above (qconf --verbose shows library "
          "warnings too)", file=sys.stderr)  # fmt: skip
    return BUG


# `--train [PARTS]` is one shape in every command: the parts that get a LoRA adapter (a,b), or
# alone every part the plan quantizes.
EVERY_QUANTIZED_PART = "*"
TRAIN_HELP = (
    "the plan is for LoRA training on these parts (a,b); alone: on every part the plan "
    "quantizes (default: no training)"
)


def add_train_argument(parser: argparse.ArgumentParser, help_text: str = TRAIN_HELP) -> None:
    parser.add_argument("--train", nargs="?", const=EVERY_QUANTIZED_PART, metavar="PARTS",
                        help=help_text)  # fmt: skip


def bare_flags_kept_bare(argv: list[str], flags: Sequence[str] = ("--train",)) -> list[str]:
    """`--train preset=x`: a flag whose value is optional must not swallow the override after
    it (argparse would take it as the value): it becomes `--train=*` (every quantized part)."""
    result = []
    for i, item in enumerate(argv):
        following = argv[i + 1] if i + 1 < len(argv) else None
        swallows = following is not None and ("=" in following or following[:1] in "~+")
        result.append(f"{item}={EVERY_QUANTIZED_PART}" if item in flags and swallows else item)
    return result


def train_parts(value: str | None, resolved: Any, *, need_parts: bool = False) -> list[str] | None:
    """The parts `--train` names (None: not training), checked for training (torch-free).
    `need_parts`: a bare `--train` on a plan that quantizes nothing is refused (there is
    nothing to estimate); for a check alone it passes (a bf16 base trains)."""
    if value is None:
        return None
    from qconf.loading.trainable import check_trainable

    if value == EVERY_QUANTIZED_PART:
        parts = list(resolved.quantized)
        if not parts and need_parts:
            raise PlanError(Problem("--train", "the plan quantizes no part",
                                    "name the parts to train: --train transformer"))  # fmt: skip
    else:
        parts = [p.strip() for p in value.split(",") if p.strip()]
        if not parts:
            raise PlanError(Problem("--train", "names no part", "e.g. --train transformer"))
    check_trainable(resolved, parts)
    return parts


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config-dir", help="a folder of your own config groups, searched before qconf's"
    )
    parser.add_argument(
        "--plan", metavar="FILE", help="a plan file (as `qconf show --yaml` prints it)"
    )
    parser.add_argument(
        "overrides", nargs="*", help="Hydra overrides: key=value, +key=value, ~key, group=option"
    )


def console():  # noqa: ANN201 - a rich Console
    """Wide output when piped (rich would wrap at 80 columns and cut names)."""
    from rich.console import Console

    return Console(soft_wrap=False, width=None if sys.stdout.isatty() else 160)


def plan_from_args(args: argparse.Namespace) -> Any:
    """The checked Plan of `args.overrides` (typed) and `args.plan` (a file, kept apart) under
    `args.config_dir`, through the intake."""
    from qconf.plan.intake import intake

    check_override_depth(args.overrides)
    try:
        return intake(overrides=args.overrides, plan_file=args.plan, config_dir=args.config_dir)
    except RecursionError:  # a config file nested deeper than YAML/OmegaConf can walk
        raise PlanError(
            Problem(
                "config",
                "a config file nests values too deeply to read",
                "check the files of --config-dir (a plan is a few levels deep)",
            )
        ) from None
