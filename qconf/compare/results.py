"""What a comparison holds: one row per run with its image scores (filled by qconf.compare's
gather, read by the tables and figures; this module imports neither)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qconf.compare.folders import RunFolder

# (run name, image index) -> (PSNR, SSIM), or a video's VideoScore (qconf.compare.metrics)
Scores = dict[tuple[str, int], Any]


@dataclass
class ImageScore:
    file: str  # relative to the sweep folder
    prompt: str
    seed: int
    seconds: float
    psnr: float | None  # dB against the reference image of the same prompt and seed
    ssim: float | None
    # Videos: PSNR/SSIM above are over all frames; the worst frame's and the temporal check.
    video: str | None = None  # relative to the sweep folder
    frames: int | None = None
    worst_psnr: float | None = None
    worst_ssim: float | None = None
    temporal: float | None = None  # mean |frame-to-frame change - the reference's|, 0..1


@dataclass
class Row:
    run: RunFolder
    label: str
    images: list[ImageScore]
    psnr: float | None = None  # mean over the images the reference also has
    ssim: float | None = None
    worst_psnr: float | None = None  # videos: the worst frame of any video
    worst_ssim: float | None = None
    temporal: float | None = None  # videos: mean temporal difference from the reference
    pareto: bool = False  # no other run is both smaller and closer to the reference

    @property
    def deviation(self) -> float | None:
        """1 - mean SSIM: 0 for images identical to the reference."""
        return None if self.ssim is None else 1.0 - self.ssim


@dataclass
class Comparison:
    sweep: Path
    reference: str  # folder name of the reference run
    rows: list[Row]
    columns: list[tuple[str, int]]  # (prompt, seed) of each image column
    unfinished: list[str] = field(default_factory=list)  # job folders without a report
