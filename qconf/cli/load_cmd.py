"""`qconf load`: load the quantized pipeline and print the measured per-part report."""

from __future__ import annotations

import argparse
import json

from qconf.cli.common import add_plan_arguments, plan_from_args
from qconf.cli.tables import print_report
from qconf.errors import PlanError, Problem
from qconf.text import safe
from qconf.units import parse_size, size_help


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--save", metavar="DIR", help="save the quantized pipeline to DIR")
    parser.add_argument("--force", action="store_true", help="replace a non-empty --save DIR")
    parser.add_argument(
        "--max-shard-size",
        metavar="SIZE",
        help=size_help(
            "with --save: split saved weights into files of at most SIZE, e.g. 5GB "
            "(default: the libraries' own)"
        ),  # fmt: skip
    )
    add_plan_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from qconf.loading.loader import load
    from qconf.loading.out_of_memory import out_of_memory_as_error
    from qconf.trust.userpath import user_path

    if args.max_shard_size is not None and args.save is None:
        raise PlanError(Problem("--max-shard-size", "given without --save",
                                "add --save DIR, or drop --max-shard-size"))  # fmt: skip
    shard = parse_size(args.max_shard_size, "--max-shard-size") if args.max_shard_size else None
    plan = plan_from_args(args)
    save = user_path(args.save, "--save") if args.save is not None else None
    with out_of_memory_as_error("loading"):
        loaded = load(plan, save=save, force=args.force, max_shard_size=shard)
    if args.json:
        print(json.dumps(loaded.report.to_json(), indent=2))
    else:
        print_report(loaded.report)
    if args.save is not None:
        print(f"saved to {safe(args.save)} (reload with model.source={safe(args.save)})")
    return 0
