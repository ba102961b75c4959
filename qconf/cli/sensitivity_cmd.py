"""`qconf sensitivity [overrides]`: each weight-bearing part quantized alone under each option
that runs here, against the unquantized pipeline on the plan's prompts and seeds (run.prompt,
run.seed). Prints the table; writes sensitivity.json and the heatmap sensitivity.png to --out."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from qconf.cli.common import add_plan_arguments
from qconf.cli.measure import (
    add_measure_arguments,
    choices_from_args,
    interrupt_notice,
    require_libraries,
    setting_from_args,
)
from qconf.cli.progress import progress_bar
from qconf.errors import PlanError, Problem

COMMAND = "qconf sensitivity"
DEFAULT_LAYERS = 5
DEFAULT_OUT = "sensitivity"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_measure_arguments(parser)
    parser.add_argument("--layers", type=int, default=DEFAULT_LAYERS, metavar="K",
                        help="rank the largest part's layers and propose skipping the top K "
                        f"(0: parts only; default {DEFAULT_LAYERS})")  # fmt: skip
    parser.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                        help="folder for sensitivity.json and sensitivity.png "
                        f"(default {DEFAULT_OUT}/)")  # fmt: skip
    add_plan_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from qconf.sensitivity.writable import writable_folder

    # Every argument is checked before torch is imported (a typo costs no import).
    require_libraries(COMMAND)
    if args.layers < 0:
        raise PlanError(Problem("--layers", f"{args.layers}", "give 0 (off) or more"))
    out = writable_folder(args.out, "--out")
    choices = choices_from_args(args)
    with interrupt_notice("sensitivity"):
        return _measure(args, choices, out)


def _measure(args: argparse.Namespace, choices: Any, out: Path) -> int:
    from qconf.sensitivity.parts import measure_parts
    from qconf.text import safe

    where = setting_from_args(args, choices)
    with progress_bar("measuring") as progress:
        cells = measure_parts(where, choices.options, choices.tried, progress=progress)
        rankings = layer_rankings(where, cells, progress) if args.layers else []
    print_cells(cells)
    print_rankings(rankings, args.layers)
    written = write_outputs(cells, rankings, args.layers, out)
    print("wrote " + ", ".join(safe(str(p)) for p in written))
    return 0


def layer_rankings(where: Any, cells: list[Any], progress: Any) -> list[Any]:
    """The largest part's layers under every option that ran on it."""
    from qconf.sensitivity.layers import largest_part
    from qconf.sensitivity.ranking import rank_layers

    part = largest_part(where.plan)
    options = [c.option for c in cells if c.part == part and c.ok]
    rankings = []
    for done, option in enumerate(options):
        progress(done, len(options), f"layers of {part}: {option}")
        rankings.append(rank_layers(where, part, option))
    return rankings


def print_rankings(rankings: list[Any], k: int) -> None:
    from rich.table import Table

    from qconf.cli.common import console
    from qconf.sensitivity.ranking import proposed_skip, skip_keeps
    from qconf.text import markup
    from qconf.units import human_bytes

    if not rankings:
        return
    table = Table(title=f"layers of {markup(rankings[0].part)}: most sensitive first "
                  "(Spearman of each proxy against the measured deviation)")  # fmt: skip
    for column in ("option", "ρ weight", "ρ linearized", f"top {k}", "proposed skip",
                   "the skip keeps unquantized"):  # fmt: skip
        table.add_column(column)
    for r in rankings:
        names = proposed_skip(r, k)
        kept, extra = skip_keeps(r, names)
        top, skip = ", ".join(r.order()[:k]), ", ".join(names)
        keeps = f"{len(kept)} layers, +{human_bytes(extra)}"
        if len(kept) > len(names):  # a leaf-name entry (quanto) matches every namesake
            keeps += ": " + ", ".join(kept)
        table.add_row(markup(r.option), _rho(r.spearman_weight), _rho(r.spearman_linearized),
                      markup(top), markup(skip), markup(keeps))  # fmt: skip
    console().print(table)


def _rho(value: float | None) -> str:
    return "—" if value is None else f"{value:+.2f}"


def print_cells(cells: list[Any]) -> None:
    from rich.table import Table

    from qconf.cli.common import console
    from qconf.compare.tables import psnr_text, ssim_text
    from qconf.text import markup
    from qconf.units import human_bytes

    table = Table(title="each part quantized alone, against the unquantized pipeline")
    for name in ("part", "option", "weights", "part error", "part cosine", "image PSNR",
                 "image SSIM", "note"):  # fmt: skip
        table.add_column(name, justify="left" if name in ("part", "option", "note") else "right")
    for c in cells:
        if not c.ok:
            table.add_row(markup(c.part), markup(c.option), "", "", "", "", "",
                          markup(f"{c.status}: {c.reason}"[:90]))  # fmt: skip
            continue
        table.add_row(markup(c.part), markup(c.option), human_bytes(c.bytes),
                      f"{c.part_rel_error:.4f}", f"{c.part_cosine:.5f}", psnr_text(c.image_psnr),
                      ssim_text(c.image_ssim), "cached" if c.cached else "")  # fmt: skip
    console().print(table)


def write_outputs(cells: list[Any], rankings: list[Any], k: int, out: Path) -> list[Path]:
    """sensitivity.json and sensitivity.png, each written whole into the real --out folder (a
    symbolic link put there after the check before the work is refused, not followed)."""
    from dataclasses import asdict

    from qconf.sensitivity.heatmap import heatmap_png
    from qconf.sensitivity.ranking import proposed_skip, skip_keeps
    from qconf.trust.userpath import real_folder, replace_in

    layers = []
    for r in rankings:
        names = proposed_skip(r, k)
        kept, extra = skip_keeps(r, names)
        layers.append({**r.to_json(), "proposed_skip": names, "proposed_skip_keeps": kept,
                       "proposed_skip_bytes": extra})  # fmt: skip
    data = {
        "cells": [{k: v for k, v in asdict(c).items() if k != "cached"} for c in cells],
        "layers": layers,
    }
    text = json.dumps(data, indent=2) + "\n"
    png = heatmap_png(cells)
    with real_folder(out, [], "--out") as folder:
        written = [replace_in(folder, "sensitivity.json", text.encode(), "--out")]
        written.append(replace_in(folder, "sensitivity.png", png, "--out"))
    return [out / p.name for p in written]
