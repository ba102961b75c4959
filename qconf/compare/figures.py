"""The comparison's pictures, drawn with matplotlib (headless Agg backend): the image grid
(rows = plans, columns = prompt and seed) and memory against deviation with the Pareto front."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qconf.compare.folders import MAX_LABEL
from qconf.trust.userpath import atomic_output

if TYPE_CHECKING:
    from qconf.compare.results import Comparison, Row

CELL_INCHES = 1.9
DPI = 110
LABEL_WIDTH = 28  # characters per line of a row label
LABEL_CHARS = MAX_LABEL  # a label is a few lines beside its picture
# The grid shows the first plans and prompt/seed columns only: a sweep folder's size must not
# set the picture's (107,250 pixels wide took 67 s); compare.md and compare.json list them all.
MAX_GRID_ROWS = 12
MAX_GRID_COLUMNS = 8
MAX_KEY_LINES = 40  # lines of pareto.png's key (folder -> plan)


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


def grid_shape(comparison: Comparison) -> tuple[int, int]:
    """(plans, prompt/seed columns) compare.png shows."""
    return min(len(comparison.rows), MAX_GRID_ROWS), min(len(comparison.columns), MAX_GRID_COLUMNS)


def grid_note(comparison: Comparison) -> str:
    """What the grid leaves out, in words ('' when it shows everything)."""
    rows, columns = grid_shape(comparison)
    cut = []
    if rows < len(comparison.rows):
        cut.append(f"the first {rows} of {len(comparison.rows)} plans")
    if columns < len(comparison.columns):
        cut.append(f"the first {columns} of {len(comparison.columns)} prompt/seed columns")
    return f"compare.png shows {' and '.join(cut)}" if cut else ""


def grid_png(comparison: Comparison) -> bytes:
    """The image grid as PNG bytes: at most MAX_GRID_ROWS x MAX_GRID_COLUMNS cells, each image
    shrunk to a thumbnail as it is read (one decoded image in memory at a time)."""
    plt = pyplot()
    shown_rows, shown_columns = grid_shape(comparison)
    rows, columns = comparison.rows[:shown_rows], comparison.columns[:shown_columns]
    note = grid_note(comparison)
    height = 0.6 + CELL_INCHES * len(rows) + (0.3 if note else 0.0)
    # A video's cell shows three frames side by side: three times as wide.
    wide = 3 if any(image.video is not None for row in rows for image in row.run.images) else 1
    width = 2.2 + CELL_INCHES * wide * len(columns)
    figure, axes = plt.subplots(len(rows), len(columns), squeeze=False, figsize=(width, height))
    for r, row in enumerate(rows):
        for c, column in enumerate(columns):
            _grid_cell(axes[r][c], comparison, row, column, first=(r == 0, c == 0))
    if note:
        figure.suptitle(note + " (compare.md lists all)", fontsize=7)
    figure.tight_layout()
    return figure_png(figure)


def _grid_cell(axis: Any, comparison: Comparison, row: Row, column: tuple[str, int],
               first: tuple[bool, bool]) -> None:  # fmt: skip
    axis.set_xticks([])
    axis.set_yticks([])
    if first[0]:
        axis.set_title(f"{label_text(column[0], 24)}\nseed {column[1]}", fontsize=7,
                       parse_math=False)  # fmt: skip
    if first[1]:
        axis.set_ylabel(label_text(row.label), fontsize=7, rotation=0, ha="right",
                        va="center", parse_math=False)  # fmt: skip
    score = next((i for i in row.images if (i.prompt, i.seed) == column), None)
    record = next((i for i in row.run.images if (i.prompt, i.seed) == column), None)
    if score is None or record is None:
        axis.text(0.5, 0.5, "—", ha="center", va="center", parse_math=False)
        return
    axis.imshow(_picture(record), interpolation="nearest")
    if row.run.name != comparison.reference and score.psnr is not None:
        axis.set_xlabel(f"PSNR {score.psnr:.1f}  SSIM {score.ssim:.3f}", fontsize=6,
                        parse_math=False)  # fmt: skip


def _picture(record: Any) -> Any:
    """An image's thumbnail; a video's first, middle and last frames side by side."""
    import numpy as np

    from qconf.compare.metrics import thumbnail, video_thumbnails

    if record.video is None or record.frames is None:
        return thumbnail(record.real, record.size)
    frames = video_thumbnails(record.video, record.size, record.frames)
    gap = np.full((frames[0].shape[0], 2, 3), 255, dtype=np.uint8)  # a white line between
    return np.hstack([part for frame in frames for part in (frame, gap)][:-1])


def pareto_png(comparison: Comparison) -> bytes:
    """Weights against deviation, the Pareto front marked; the key lists MAX_KEY_LINES plans."""
    plt = pyplot()
    scored = [row for row in comparison.rows if row.deviation is not None]
    key = [label_text(f"{row.run.name}: {row.label}", 90) for row in scored[:MAX_KEY_LINES]]
    if len(scored) > MAX_KEY_LINES:
        key.append(f"... and {len(scored) - MAX_KEY_LINES} more (compare.md lists all)")
    key_text = "\n".join(key)
    key_inches = 0.12 * (key_text.count("\n") + 2)  # the key under the plot: folder -> plan
    figure, axis = plt.subplots(figsize=(7, 4.5 + key_inches))
    figure.subplots_adjust(left=0.14, right=0.97, top=0.93,
                           bottom=(0.6 + key_inches) / (4.5 + key_inches))  # fmt: skip
    scale, unit = _byte_unit(max((row.run.total_bytes for row in scored), default=1))
    for row in scored:
        x, y = row.run.total_bytes / scale, row.deviation
        axis.scatter([x], [y], color="tab:red" if row.pareto else "tab:gray", zorder=3)
        axis.annotate(label_text(row.run.name, 12), (x, y), fontsize=7, xytext=(4, 4),
                      textcoords="offset points", parse_math=False)  # fmt: skip
    figure.text(0.01, 0.01, key_text, fontsize=6, va="bottom", family="monospace", parse_math=False)
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
    return figure_png(figure)


def _byte_unit(largest: int) -> tuple[int, str]:
    for scale, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if largest >= scale:
            return scale, unit
    return 1, "B"


def save_figure(figure: Any, target: Path, where: str) -> Path:
    import matplotlib.pyplot as plt

    try:
        with atomic_output(target, where) as temp:
            figure.savefig(temp, dpi=DPI, format="png")
    finally:
        plt.close(figure)
    return target


def figure_png(figure: Any) -> bytes:
    """The figure as PNG bytes (written later, with the other outputs, once all are drawn)."""
    import io

    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    try:
        figure.savefig(buffer, dpi=DPI, format="png")
    finally:
        plt.close(figure)
    return buffer.getvalue()
