"""`qconf show [--json]`: every weight-bearing part with backend, library, config class, kwargs."""

from __future__ import annotations

import argparse
import json

from qconf.cli.common import add_plan_arguments, console, plan_from_args
from qconf.text import markup


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the JSON contract")
    parser.add_argument(
        "--yaml", action="store_true", help="print the plan as a plan file (for --plan FILE)"
    )
    add_plan_arguments(parser)


def run(args: argparse.Namespace) -> int:

    plan = plan_from_args(args)
    if args.yaml:
        import yaml

        from qconf.plan.planfile import plan_file_data

        print(yaml.safe_dump(plan_file_data(plan), sort_keys=False), end="")
        return 0
    resolved = plan.resolve()
    if args.json:
        print(json.dumps(resolved.to_json(), indent=2))
        return 0
    from rich.table import Table

    model = resolved.to_json()["model"]
    table = Table(
        title=markup(
            f"{model['pipeline']} from {model['source']} — {resolved.mode} mode, "
            f"torch_dtype={model['torch_dtype']}"
        )
    )
    for column in ("part", "library", "backend", "config class", "kwargs"):
        table.add_column(column)
    for name, part in resolved.components.items():
        library = resolved.parts.parts[name].library
        if part is None:
            cells = (name, library, "—", "—", "unquantized")
        else:
            kwargs = json.dumps(part.kwargs, separators=(", ", ": "))
            file = getattr(part.entry, "file", None)
            kwargs = f"file: {file}, {kwargs}" if file else kwargs
            cells = (name, library, part.backend, part.config_class, kwargs)
        table.add_row(*(markup(cell) for cell in cells))
    console().print(table)
    return 0
