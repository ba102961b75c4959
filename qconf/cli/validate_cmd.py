"""`qconf validate`: the plan, then whether its backends can run here. Never imports torch."""

from __future__ import annotations

import argparse

from qconf.cli.common import add_plan_arguments, plan_from_args
from qconf.text import safe


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--plan-only",
        action="store_true",
        help="skip the environment checks (installed backends, GPU), e.g. a GPU plan on CI",
    )
    parser.add_argument(
        "--train",
        action="store_true",
        help="the plan is for LoRA training: refuse backends that cannot pass gradients",
    )
    parser.add_argument(
        "--train-parts", metavar="PARTS", help="with --train: check only these parts (a,b)"
    )
    add_plan_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from qconf.loading.environment import check_environment

    plan = plan_from_args(args)
    resolved = plan.resolve()
    if not args.plan_only:
        check_environment(resolved)
    if args.train or args.train_parts:
        from qconf.loading.trainable import check_trainable

        parts = [p for p in (args.train_parts or "").split(",") if p]
        check_trainable(resolved, parts or None)
    quantized = ", ".join(f"{name}={p.backend}" for name, p in resolved.quantized.items())
    print(
        safe(
            f"OK: {resolved.parts.pipeline} from {plan.model.source}, {resolved.mode} mode, "
            f"quantized: {quantized or 'nothing'}"
        )
    )
    return 0
