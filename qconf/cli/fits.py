"""`qconf list presets --fits SIZE [--json]`: the presets whose estimated weights fit in SIZE,
smallest first, each with its unquantized -> quantized bytes (from the shipped snapshots)."""

from __future__ import annotations

import argparse
import json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fits",
        metavar="SIZE",
        help="with `presets`: only presets whose estimated weights fit in SIZE, e.g. 16GiB "
        "(KiB/MiB/GiB and K/M/G are powers of 1024, KB/MB/GB powers of 1000, B bytes; a bare "
        "number is GiB)",
    )
    parser.add_argument("--json", action="store_true", help="with --fits: print JSON")


def run(args: argparse.Namespace) -> int:
    from qconf.cli.tables import human_bytes
    from qconf.errors import PlanError, Problem
    from qconf.estimate.presets import estimate_presets, fitting, parse_size

    if args.what not in (None, "presets"):
        raise PlanError(Problem("--fits", f"lists presets, not {args.what}",
                                f"use `qconf list presets --fits {args.fits}`"))  # fmt: skip
    budget = parse_size(args.fits, "--fits")  # refused before any preset is estimated
    estimates = estimate_presets(args.config_dir)
    fits = fitting(estimates, budget)
    unknown = [e for e in estimates if e.bytes is None]
    if args.json:
        print(json.dumps({
            "budget_bytes": budget,
            "fits": [e.to_json() for e in fits],
            "not_estimated": [e.to_json() for e in unknown],
        }, indent=2))  # fmt: skip
        return 0
    from rich.table import Table

    from qconf.cli.common import console
    from qconf.text import markup

    table = Table(title=f"presets whose weights fit in {human_bytes(budget)} (estimate)")
    for column in ("preset", "model", "unquantized", "plan", "peak while loading"):
        table.add_column(column, justify="left" if column in ("preset", "model") else "right")
    for e in fits:
        table.add_row(markup(e.preset), markup(e.source), human_bytes(e.bytes_unquantized),
                      human_bytes(e.bytes), human_bytes(e.load_peak_bytes))  # fmt: skip
    out = console()
    out.print(table)
    out.print(
        "The peak while loading counts each part quantized on load at its weights times its "
        "backend's measured load-peak ratio (README: Weights, peak, headroom); inference needs "
        "activations on top (see `qconf estimate preset=<name>`)."
    )
    for e in unknown:
        out.print(f"not estimated: {markup(e.preset)}: {markup(e.missing)}")
    return 0
