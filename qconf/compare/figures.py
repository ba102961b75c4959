"""The comparison's pictures, drawn with matplotlib (headless Agg backend): the image grid
(rows = plans, columns = prompt and seed) and memory against deviation with the Pareto front."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qconf.trust.userpath import atomic_output

if TYPE_CHECKING:
    from qconf.compare import Comparison

CELL_INCHES = 1.9
LABEL_WIDTH = 28  # characters per line of a row label
LABEL_CHARS = 300  # a label is a few lines under its picture; the tables keep the full text


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display needed; also on machines with one
    import matplotlib.pyplot as plt

    return plt


def label_text(text: str, width: int = LABEL_WIDTH) -> str:
    """User text as a plain label: control characters escaped, cut to `LABEL_CHARS` (wrapping
    thousands of characters takes matplotlib seconds), wrapped."""
    from qconf.text import safe

    text = safe(text)
    if len(text) > LABEL_CHARS:
        text = text[: LABEL_CHARS - 1] + "…"
    return textwrap.fill(text, width) or " "


def write_grid(comparison: Comparison, target: Path) -> Path:
    from qconf.compare.metrics import load_image

    plt = pyplot()
    columns = comparison.columns
    rows = comparison.rows
    figure, axes = plt.subplots(
        len(rows), len(columns), squeeze=False,
        figsize=(2.2 + CELL_INCHES * len(columns), 0.6 + CELL_INCHES * len(rows)),
    )  # fmt: skip
    for r, row in enumerate(rows):
        by_column = {(i.prompt, i.seed): i for i in row.images}
        files = {(i.prompt, i.seed): i.path for i in row.run.images}
        for c, column in enumerate(columns):
            axis = axes[r][c]
            axis.set_xticks([])
            axis.set_yticks([])
            if r == 0:
                title = f"{label_text(column[0], 24)}\nseed {column[1]}"
                axis.set_title(title, fontsize=7, parse_math=False)
            if c == 0:
                axis.set_ylabel(label_text(row.label), fontsize=7, rotation=0, ha="right",
                                va="center", parse_math=False)  # fmt: skip
            score = by_column.get(column)
            if score is None:
                axis.text(0.5, 0.5, "—", ha="center", va="center", parse_math=False)
                continue
            pixels = load_image(files[column])[0].permute(1, 2, 0).numpy()
            axis.imshow(pixels, interpolation="nearest")
            if row.run.name != comparison.reference and score.psnr is not None:
                axis.set_xlabel(f"PSNR {score.psnr:.1f}  SSIM {score.ssim:.3f}", fontsize=6,
                                parse_math=False)  # fmt: skip
    figure.tight_layout()
    return save_figure(figure, target, "compare.png")


def write_pareto(comparison: Comparison, target: Path) -> Path:
    plt = pyplot()
    scored = [row for row in comparison.rows if row.deviation is not None]
    key_inches = 0.12 * (len(scored) + 1)  # the key under the plot: folder -> plan
    figure, axis = plt.subplots(figsize=(7, 4.5 + key_inches))
    figure.subplots_adjust(left=0.14, right=0.97, top=0.93,
                           bottom=(0.6 + key_inches) / (4.5 + key_inches))  # fmt: skip
    scale, unit = _byte_unit(max((row.run.total_bytes for row in scored), default=1))
    for row in scored:
        x, y = row.run.total_bytes / scale, row.deviation
        axis.scatter([x], [y], color="tab:red" if row.pareto else "tab:gray", zorder=3)
        axis.annotate(label_text(row.run.name, 12), (x, y), fontsize=7, xytext=(4, 4),
                      textcoords="offset points", parse_math=False)  # fmt: skip
    key = "\n".join(label_text(f"{row.run.name}: {row.label}", 90) for row in scored)
    figure.text(0.01, 0.01, key, fontsize=6, va="bottom", family="monospace", parse_math=False)
    front = sorted((row for row in scored if row.pareto), key=lambda row: row.run.total_bytes)
    if front:
        axis.step([row.run.total_bytes / scale for row in front],
                  [row.deviation for row in front], where="post", color="tab:red",
                  label="Pareto front", zorder=2)  # fmt: skip
        axis.legend(fontsize=7)
    axis.set_xlabel(f"weights after load ({unit})")
    axis.set_ylabel("deviation from the reference (1 - SSIM)")
    axis.set_title("memory vs deviation", fontsize=9)
    axis.grid(alpha=0.3)
    return save_figure(figure, target, "pareto.png")


def _byte_unit(largest: int) -> tuple[int, str]:
    for scale, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if largest >= scale:
            return scale, unit
    return 1, "B"


def save_figure(figure: Any, target: Path, where: str) -> Path:
    import matplotlib.pyplot as plt

    try:
        with atomic_output(target, where) as temp:
            figure.savefig(temp, dpi=110, format="png")
    finally:
        plt.close(figure)
    return target
