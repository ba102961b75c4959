"""`qconf list presets --fits SIZE [--json]`: the presets that load in SIZE (their estimated peak
while loading, and so their weights, at most SIZE), smallest peak first, with unquantized bytes,
weights and peak (from the shipped snapshots); then the presets left out because of their peak
alone, each with how far over it is."""

from __future__ import annotations

import argparse
import json

from qconf.estimate.presets import size_help

FITS_HELP = size_help(
    "with `presets`: only presets that load in SIZE, i.e. whose estimated peak while loading "
    "(weights x the backend's load-peak ratio; README: Weights, peak, headroom) is at most "
    "SIZE, e.g. 16GiB; presets whose weights fit but whose peak does not are listed apart"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fits", metavar="SIZE", help=FITS_HELP)


def run(args: argparse.Namespace) -> int:
    from qconf.errors import PlanError, Problem
    from qconf.estimate.presets import estimate_presets, fitting, over_by_peak, parse_size

    if args.what not in (None, "presets"):
        raise PlanError(Problem("--fits", f"lists presets, not {args.what}",
                                f"use `qconf list presets --fits {args.fits}`"))  # fmt: skip
    budget = parse_size(args.fits, "--fits")  # refused before any preset is estimated
    estimates = estimate_presets(args.config_dir)
    fits, over = fitting(estimates, budget), over_by_peak(estimates, budget)
    unknown = [e for e in estimates if e.bytes is None]
    if args.json:
        print(json.dumps({
            "budget_bytes": budget,
            "rule": "load_peak_bytes <= budget_bytes (a preset's bytes are never above its peak)",
            "fits": [e.to_json() for e in fits],
            "over_by_peak": [{**e.to_json(), "over_by_bytes": e.load_peak_bytes - budget}
                             for e in over],
            "not_estimated": [e.to_json() for e in unknown],
        }, indent=2))  # fmt: skip
        return 0
    _print(budget, fits, over, unknown)
    known = [e for e in estimates if e.load_peak_bytes is not None]
    if not fits and known:
        from qconf.text import safe
        from qconf.units import human_bytes

        smallest = min(known, key=lambda e: (e.load_peak_bytes, e.preset))
        print(f"no preset loads in {human_bytes(budget)}: the smallest peak while loading is "
              f"{human_bytes(smallest.load_peak_bytes)} ({safe(smallest.preset)})")  # fmt: skip
    return 0


def _print(budget: int, fits: list, over: list, unknown: list) -> None:
    from rich.table import Table

    from qconf.cli.common import console
    from qconf.text import markup
    from qconf.units import human_bytes

    size = human_bytes(budget)
    out = console()
    table = Table(title=f"presets that load in {size}: peak while loading ≤ {size} (estimate)")
    for column in ("preset", "model", "unquantized", "weights", "peak while loading"):
        table.add_column(column, justify="left" if column in ("preset", "model") else "right")
    for e in fits:
        table.add_row(markup(e.preset), markup(e.source), human_bytes(e.bytes_unquantized),
                      human_bytes(e.bytes), human_bytes(e.load_peak_bytes))  # fmt: skip
    out.print(table)
    if over:
        left = Table(title=f"left out, over by peak while loading: the weights fit in {size}, "
                     "the peak while loading does not")  # fmt: skip
        for column in ("preset", "model", "weights", "peak while loading", "over by"):
            left.add_column(column, justify="left" if column in ("preset", "model") else "right")
        for e in over:
            left.add_row(markup(e.preset), markup(e.source), human_bytes(e.bytes),
                         human_bytes(e.load_peak_bytes),
                         human_bytes(e.load_peak_bytes - budget))  # fmt: skip
        out.print(left)
    out.print(
        "The peak while loading counts each part quantized on load at its weights times its "
        "backend's measured load-peak ratio (README: Weights, peak, headroom); inference needs "
        "activations on top (see `qconf estimate preset=<name>`)."
    )
    for e in unknown:
        out.print(f"not estimated: {markup(e.preset)}: {markup(e.missing)}")
