"""The plan of a command line: `--config-dir` (a user path) and Hydra overrides, composed and
validated. Shared by the commands that take a plan (validate, show, estimate, load)."""

from __future__ import annotations

import argparse
from typing import Any


def plan_from_args(args: argparse.Namespace) -> Any:
    """The validated Plan of `args.overrides` under `args.config_dir`."""
    from qconf.compose import compose
    from qconf.schema import validate
    from qconf.userpath import user_path

    config_dir = user_path(args.config_dir, "--config-dir") if args.config_dir else None
    return validate(compose(args.overrides, config_dir=config_dir), config_dir=config_dir)
