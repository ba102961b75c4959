"""`qconf validate`: the plan, then whether its backends can run here. Never imports torch."""

from __future__ import annotations

import argparse

from qconf.cli.common import (
    TRAIN_HELP,
    add_plan_arguments,
    add_train_argument,
    plan_from_args,
    train_parts,
)
from qconf.text import safe


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--plan-only",
        action="store_true",
        help="skip the environment checks (installed backends, GPU), e.g. a GPU plan on CI",
    )
    add_train_argument(parser, f"{TRAIN_HELP}: refuse backends that cannot pass gradients")
    # the earlier spelling of `--train PARTS`, still read
    parser.add_argument("--train-parts", metavar="PARTS", help=argparse.SUPPRESS)
    add_plan_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from qconf.loading.environment import check_environment

    plan = plan_from_args(args)
    resolved = plan.resolve()
    if not args.plan_only:
        check_environment(resolved)
    train_parts(args.train_parts or args.train, resolved)
    quantized = ", ".join(f"{name}={p.backend}" for name, p in resolved.quantized.items())
    print(
        safe(
            f"OK: {resolved.parts.pipeline} from {plan.model.source}, {resolved.mode} mode, "
            f"quantized: {quantized or 'nothing'}"
        )
    )
    return 0
