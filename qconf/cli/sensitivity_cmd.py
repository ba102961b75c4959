"""`qconf sensitivity [overrides]`: each weight-bearing part quantized alone under each option
that runs here, against the unquantized pipeline on the plan's prompts and seeds (run.prompt,
run.seed). Prints the table; writes sensitivity.json and the heatmap sensitivity.png to --out."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from qconf.cli.main import add_plan_arguments
from qconf.errors import PlanError, Problem


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_measure_arguments(parser)
    parser.add_argument("--layers", type=int, default=5, metavar="K",
                        help="rank the largest part's layers and propose skipping the top K "
                        "(0: parts only)")  # fmt: skip
    parser.add_argument("--out", default="sensitivity", metavar="DIR",
                        help="folder for sensitivity.json and sensitivity.png")  # fmt: skip
    add_plan_arguments(parser)


def add_measure_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--options", metavar="A,B",
                        help="backend options to try (default: every option)")  # fmt: skip
    parser.add_argument(
        "--parts", metavar="A,B", help="parts to try (default: every weight-bearing part)"
    )


def setting_from_args(args: argparse.Namespace) -> Any:
    from qconf.plan.planfile import plan_file_overrides
    from qconf.sensitivity.parts import setting
    from qconf.trust.bounds import check_override_depth
    from qconf.trust.userpath import user_path

    config_dir = str(user_path(args.config_dir, "--config-dir")) if args.config_dir else None
    check_override_depth(args.overrides)
    from_file = plan_file_overrides(args.plan) if args.plan else []
    return setting([*from_file, *args.overrides], config_dir)


def chosen(text: str | None, known: list[str], flag: str) -> list[str]:
    from qconf.errors import PlanError, Problem
    from qconf.plan.messages import did_you_mean

    if not text:
        return known
    names = list(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        raise PlanError(Problem(flag, f"'{text}' names nothing", f"e.g. {flag} {known[0]}"))
    unknown = [n for n in names if n not in known]
    if unknown:
        raise PlanError([Problem(flag, f"unknown '{n}'", did_you_mean(n, known) +
                                 f"known: {', '.join(known)}") for n in unknown])  # fmt: skip
    return names


def option_names(config_dir: str | None) -> list[str]:
    from qconf.plan.compose import user_config_dirs
    from qconf.plan.conftree import backend_options

    return sorted(backend_options(user_config_dirs(config_dir)))


@contextmanager
def progress_bar(title: str) -> Iterator[Callable[[int, int, str], None]]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from qconf.text import markup

    console = Console(stderr=True)
    with Progress(TextColumn(title), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.description}"), console=console, transient=True,
                  disable=not console.is_terminal) as bar:  # fmt: skip
        task = bar.add_task("", total=None)

        def update(done: int, total: int, label: str) -> None:
            bar.update(task, completed=done, total=total, description=markup(label))

        yield update


def run(args: argparse.Namespace) -> int:
    from qconf.compare.metrics import require_libraries
    from qconf.sensitivity.parts import measure_parts, weight_bearing_parts
    from qconf.trust.userpath import output_folder

    require_libraries()
    out = output_folder(args.out, "--out")  # before any work
    if args.layers < 0:
        raise PlanError(Problem("--layers", f"{args.layers}", "give 0 (off) or more"))
    where = setting_from_args(args)
    options = chosen(args.options, option_names(where.config_dir), "--options")
    parts = chosen(args.parts, weight_bearing_parts(where.plan), "--parts")
    with progress_bar("measuring") as progress:
        cells = measure_parts(where, options, parts, progress=progress)
        rankings = layer_rankings(where, cells, progress) if args.layers else []
    print_cells(cells)
    print_rankings(rankings, args.layers)
    written = write_outputs(cells, rankings, args.layers, out)
    from qconf.text import safe

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

    from qconf.cli.main import console
    from qconf.sensitivity.ranking import proposed_skip
    from qconf.text import markup

    if not rankings:
        return
    table = Table(title=f"layers of {markup(rankings[0].part)}: most sensitive first "
                  "(Spearman of each proxy against the measured deviation)")  # fmt: skip
    for column in ("option", "ρ weight", "ρ linearized", f"top {k}", "proposed skip"):
        table.add_column(column)
    for r in rankings:
        top, skip = ", ".join(r.order()[:k]), ", ".join(proposed_skip(r, k))
        table.add_row(markup(r.option), _rho(r.spearman_weight), _rho(r.spearman_linearized),
                      markup(top), markup(skip))  # fmt: skip
    console().print(table)


def _rho(value: float | None) -> str:
    return "—" if value is None else f"{value:+.2f}"


def print_cells(cells: list[Any]) -> None:
    from rich.table import Table

    from qconf.cli.main import console
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
    from dataclasses import asdict

    from qconf.sensitivity.heatmap import write_heatmap
    from qconf.sensitivity.ranking import proposed_skip
    from qconf.trust.userpath import make_folder, write_text

    make_folder(out, "--out")
    data = {
        "cells": [{k: v for k, v in asdict(c).items() if k != "cached"} for c in cells],
        "layers": [{**r.to_json(), "proposed_skip": proposed_skip(r, k)} for r in rankings],
    }
    json_path = write_text(out / "sensitivity.json", json.dumps(data, indent=2) + "\n", "--out")
    return [json_path, write_heatmap(cells, out / "sensitivity.png")]
