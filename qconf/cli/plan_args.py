"""The plan of a command line: `--config-dir` (a user path) and Hydra overrides, composed and
validated. Shared by the commands that take a plan (validate, show, estimate, load); `run` applies
the same checks in compose."""

from __future__ import annotations

import argparse
from typing import Any

from qconf.errors import PlanError, Problem
from qconf.trust.bounds import check_override_depth


def plan_from_args(args: argparse.Namespace) -> Any:
    """The validated Plan of `args.overrides` on top of `args.plan` under `args.config_dir`."""
    from qconf.plan.compose import compose
    from qconf.plan.schema import validate
    from qconf.trust.userpath import user_path

    config_dir = user_path(args.config_dir, "--config-dir") if args.config_dir else None
    check_override_depth(args.overrides)
    try:
        cfg = compose(args.overrides, config_dir=config_dir, plan_file=args.plan)
    except RecursionError:  # a config file nested deeper than YAML/OmegaConf can walk
        raise PlanError(
            Problem(
                "config",
                "a config file nests values too deeply to read",
                "check the files of --config-dir (a plan is a few levels deep)",
            )
        ) from None
    return validate(cfg, config_dir=config_dir)
