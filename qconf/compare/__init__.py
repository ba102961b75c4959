"""Compare the runs of a sweep: bytes, peak memory, speed, and image deviation from a reference
(the unquantized baseline when the sweep has one, else its first job) on the same prompts and
seeds. Only gathers finished run folders (see DESIGN.md: a sweep is a Hydra multirun of `run`),
so every launcher works and an existing multirun folder can be re-read; gathering the same
folder twice gives the same tables.

    comparison = gather(Path("multirun/2026-11-25/10-00-00"))
    written = write_outputs(comparison)   # compare.md, compare.json, compare.png, pareto.png
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qconf.compare.folders import BASELINE, RunFolder, run_folders
from qconf.errors import ModelSourceError, Problem

__all__ = ["Comparison", "Row", "gather", "write_outputs"]


@dataclass
class ImageScore:
    file: str  # relative to the sweep folder
    prompt: str
    seed: int
    seconds: float
    psnr: float | None  # dB against the reference image of the same prompt and seed
    ssim: float | None


@dataclass
class Row:
    run: RunFolder
    label: str
    images: list[ImageScore]
    psnr: float | None = None  # mean over the images the reference also has
    ssim: float | None = None
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

    def to_json(self) -> dict[str, Any]:
        from qconf.compare.tables import comparison_json

        return comparison_json(self)


def gather(sweep: Path) -> Comparison:
    """Read every finished run under `sweep` and score its images against the reference."""
    from qconf.compare.metrics import deviation, load_image, require_libraries

    require_libraries()
    runs, unfinished = run_folders(sweep)
    reference = next((run for run in runs if run.name == BASELINE), runs[0])
    reference_images = {(i.prompt, i.seed): load_image(i.path) for i in reference.images}
    labels = _labels(runs)
    rows = []
    for run in runs:
        scores = []
        for image in run.images:
            target = reference_images.get((image.prompt, image.seed))
            psnr = ssim = None
            if target is not None:
                pixels = load_image(image.path)
                if pixels.shape != target.shape:
                    raise ModelSourceError(
                        Problem(
                            str(image.path),
                            f"is {_size(pixels)}, the reference image is {_size(target)}",
                            "compare runs made with the same run.height and run.width",
                        )  # fmt: skip
                    )
                psnr, ssim = deviation(pixels, target)
            relative = f"{run.name}/{image.path.name}"
            scores.append(ImageScore(relative, image.prompt, image.seed, image.seconds, psnr, ssim))
        rows.append(Row(run, labels[run.name], scores, *_means(scores)))
    _mark_pareto(rows)
    columns = list(dict.fromkeys((i.prompt, i.seed) for run in runs for i in run.images))
    return Comparison(sweep, reference.name, rows, columns, unfinished)


def write_outputs(comparison: Comparison) -> list[Path]:
    """compare.md, compare.json, compare.png (the image grid) and pareto.png, each written
    atomically into the sweep folder; returns their paths."""
    from qconf.compare.figures import write_grid, write_pareto
    from qconf.compare.tables import write_json, write_markdown

    sweep = comparison.sweep
    return [
        write_markdown(comparison, sweep / "compare.md"),
        write_json(comparison, sweep / "compare.json"),
        write_grid(comparison, sweep / "compare.png"),
        write_pareto(comparison, sweep / "pareto.png"),
    ]


def _size(pixels: Any) -> str:
    return f"{pixels.shape[-1]}x{pixels.shape[-2]}"


def _means(scores: list[ImageScore]) -> tuple[float | None, float | None]:
    scored = [s for s in scores if s.psnr is not None and s.ssim is not None]
    if not scored:
        return None, None
    psnrs = [s.psnr for s in scored if s.psnr is not None]
    # Any identical image makes the mean PSNR infinite; that only happens for the reference.
    psnr = math.inf if any(math.isinf(p) for p in psnrs) else sum(psnrs) / len(psnrs)
    return psnr, sum(s.ssim for s in scored if s.ssim is not None) / len(scored)


def _labels(runs: list[RunFolder]) -> dict[str, str]:
    """What tells the jobs apart: the overrides not shared by every job (the swept ones); for a
    single job, those that make its plan (preset, quant)."""
    jobs = [run for run in runs if run.name != BASELINE]
    shared = set.intersection(*(set(run.overrides) for run in jobs)) if len(jobs) > 1 else set()
    labels = {}
    for run in runs:
        if run.name == BASELINE:
            labels[run.name] = "baseline (unquantized)"
            continue
        varying = [o for o in run.overrides if o not in shared]
        if len(jobs) == 1:
            varying = [o for o in varying if _plan_key(o)] or varying
        # Hydra's own record holds the overrides as qconf rewrote them (++key=...).
        labels[run.name] = " ".join(o.lstrip("+") for o in varying) or f"job {run.name}"
    return labels


def _plan_key(override: str) -> bool:
    return override.lstrip("+~").startswith(("preset", "quant"))


def _mark_pareto(rows: list[Row]) -> None:
    """Minimise (total bytes, deviation): a row is on the front if no other row is at least as
    good on both and better on one."""
    scored = [row for row in rows if row.deviation is not None]
    for row in scored:
        row.pareto = not any(
            other.run.total_bytes <= row.run.total_bytes
            and other.deviation <= row.deviation  # type: ignore[operator]
            and (
                other.run.total_bytes < row.run.total_bytes or other.deviation < row.deviation  # type: ignore[operator]
            )
            for other in scored
        )
