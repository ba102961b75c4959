"""`qconf schema`: JSON Schema of a plan file, for YAML language servers."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", "-o", help="write to this file instead of stdout")


def run(args: argparse.Namespace) -> int:
    from qconf.plan.schema import plan_json_schema

    text = json.dumps(plan_json_schema(), indent=2)
    if args.output:
        from qconf.trust.userpath import write_text

        write_text(args.output, text + "\n", "--output")
    else:
        print(text)
    return 0
