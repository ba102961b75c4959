"""What the subcommands share (each command module imports only this layer of cli/, never
another command): the plan arguments and their intake, the console, the exit code of a user
error."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from qconf.errors import PlanError, Problem
from qconf.trust.bounds import check_override_depth

USER_ERROR = 2


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
