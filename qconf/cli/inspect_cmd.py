"""`qconf inspect DIR`: the plan of a saved pipeline (qconf-saved or plain diffusers)."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="a saved pipeline folder (with model_index.json)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of YAML")


def run(args: argparse.Namespace) -> int:
    import yaml

    from qconf.loading.inspect import inspect_folder

    plan = inspect_folder(args.folder)
    print(
        json.dumps(plan, indent=2) if args.json else yaml.safe_dump(plan, sort_keys=False), end=""
    )
    return 0
