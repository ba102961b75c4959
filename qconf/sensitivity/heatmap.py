"""The sensitivity heatmap: parts x options, coloured by the end image's PSNR against the
unquantized pipeline (darker = further), each cell labelled; options that cannot run here or
failed are marked."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from qconf.compare.figures import label_text, pyplot, save_figure


def write_heatmap(cells: list[Any], target: Path) -> Path:
    return save_figure(_figure(cells), target, "sensitivity.png")


def heatmap_png(cells: list[Any]) -> bytes:
    """The heatmap as PNG bytes, for a writer that writes through a folder descriptor."""
    import io

    plt = pyplot()
    figure = _figure(cells)
    try:
        buffer = io.BytesIO()
        figure.savefig(buffer, dpi=110, format="png")
    finally:
        plt.close(figure)
    return buffer.getvalue()


def _figure(cells: list[Any]) -> Any:
    import numpy as np

    plt = pyplot()
    parts = list(dict.fromkeys(c.part for c in cells))
    options = list(dict.fromkeys(c.option for c in cells))
    grid = np.full((len(parts), len(options)), np.nan)
    labels = [["" for _ in options] for _ in parts]
    for c in cells:
        r, k = parts.index(c.part), options.index(c.option)
        if c.ok and c.image_psnr is not None:
            grid[r, k] = min(c.image_psnr, 99.0) if not math.isinf(c.image_psnr) else 99.0
            labels[r][k] = f"{c.image_psnr:.1f}"
        else:
            labels[r][k] = "n/a" if c.status == "not here" else "fails"
    figure, axis = plt.subplots(figsize=(1.2 + 0.9 * len(options), 1.0 + 0.5 * len(parts)))
    image = axis.imshow(np.ma.masked_invalid(grid), cmap="viridis", aspect="auto")
    axis.set_xticks(range(len(options)), [label_text(o, 14) for o in options], rotation=45,
                    ha="right", fontsize=7)  # fmt: skip
    axis.set_yticks(range(len(parts)), [label_text(p, 20) for p in parts], fontsize=7)
    for r in range(len(parts)):
        for k in range(len(options)):
            axis.text(k, r, labels[r][k], ha="center", va="center", fontsize=6, color="white"
                      if not np.isnan(grid[r, k]) else "gray", parse_math=False)  # fmt: skip
    figure.colorbar(image, ax=axis, label="image PSNR (dB)")
    axis.set_title("each part quantized alone", fontsize=9)
    figure.tight_layout()
    return figure
