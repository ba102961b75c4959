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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_measure_arguments(parser)
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
    from qconf.bounds import check_override_depth
    from qconf.planfile import plan_file_overrides
    from qconf.sensitivity.parts import setting
    from qconf.userpath import user_path

    config_dir = str(user_path(args.config_dir, "--config-dir")) if args.config_dir else None
    check_override_depth(args.overrides)
    from_file = plan_file_overrides(args.plan) if args.plan else []
    return setting([*from_file, *args.overrides], config_dir)


def chosen(text: str | None, known: list[str], flag: str) -> list[str]:
    from qconf.errors import PlanError, Problem
    from qconf.messages import did_you_mean

    if not text:
        return known
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise PlanError([Problem(flag, f"unknown '{n}'", did_you_mean(n, known) +
                                 f"known: {', '.join(known)}") for n in unknown])  # fmt: skip
    return names


def option_names(config_dir: str | None) -> list[str]:
    from qconf.compose import user_config_dirs
    from qconf.paths import backend_options

    return sorted(backend_options(user_config_dirs(config_dir)))


@contextmanager
def progress_bar(title: str) -> Iterator[Callable[[int, int, str], None]]:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from qconf.cli.text import markup

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

    require_libraries()
    where = setting_from_args(args)
    options = chosen(args.options, option_names(where.config_dir), "--options")
    parts = chosen(args.parts, weight_bearing_parts(where.plan), "--parts")
    with progress_bar("measuring") as progress:
        cells = measure_parts(where, options, parts, progress=progress)
    print_cells(cells)
    out = Path(args.out)
    written = write_outputs(cells, out)
    from qconf.cli.text import safe

    print("wrote " + ", ".join(safe(str(p)) for p in written))
    return 0


def print_cells(cells: list[Any]) -> None:
    from rich.table import Table

    from qconf.cli.main import console
    from qconf.cli.text import markup
    from qconf.compare.tables import psnr_text, ssim_text
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


def write_outputs(cells: list[Any], out: Path) -> list[Path]:
    from dataclasses import asdict

    from qconf.sensitivity.heatmap import write_heatmap
    from qconf.userpath import user_path, write_text

    out = user_path(str(out), "--out")
    out.mkdir(parents=True, exist_ok=True)
    data = {"cells": [{k: v for k, v in asdict(c).items() if k != "cached"} for c in cells]}
    json_path = write_text(out / "sensitivity.json", json.dumps(data, indent=2) + "\n", "--out")
    return [json_path, write_heatmap(cells, out / "sensitivity.png")]
