"""`qconf load`: load the quantized pipeline and print the measured per-part report."""

from __future__ import annotations

import argparse
import json
from typing import Any

from qconf.cli.main import add_plan_arguments, console


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument("--save", metavar="DIR", help="save the quantized pipeline to DIR")
    parser.add_argument("--force", action="store_true", help="replace a non-empty --save DIR")
    add_plan_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from qconf.compose import compose
    from qconf.loader import load
    from qconf.schema import validate

    plan = validate(compose(args.overrides, config_dir=args.config_dir), config_dir=args.config_dir)
    loaded = load(plan, save=args.save, force=args.force)
    if args.json:
        print(json.dumps(loaded.report.to_json(), indent=2))
    else:
        print_report(loaded.report)
    if args.save:
        print(f"saved to {args.save} (reload with model.source={args.save})")
    return 0


def print_report(report: Any) -> None:
    from rich.table import Table

    table = Table(
        title=f"{report.pipeline} loaded in {report.load_seconds:.2f} s "
        f"(torch_dtype={report.torch_dtype})"
    )
    for column in (
        "part",
        "backend",
        "quantized layers",
        "params",
        "unquantized",
        "loaded",
        "ratio",
    ):
        table.add_column(column, justify="right" if column in ("params", "ratio") else "left")
    for name, part in report.parts.items():
        layers = ", ".join(f"{n}× {kind}" for kind, n in part.quantized_layers.items()) or "—"
        table.add_row(
            name,
            part.backend or "—",
            layers,
            f"{part.params:,}",
            human_bytes(part.bytes_unquantized),
            human_bytes(part.bytes),
            f"{part.bytes / part.bytes_unquantized:.2f}" if part.bytes_unquantized else "—",
        )
    ratio = report.total_bytes / report.total_bytes_unquantized
    table.add_row(
        "total", "", "", "", human_bytes(report.total_bytes_unquantized),
        human_bytes(report.total_bytes), f"{ratio:.2f}", style="bold",
    )  # fmt: skip
    console().print(table)


def human_bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} GiB"
