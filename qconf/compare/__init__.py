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
from pathlib import Path
from typing import Any

from qconf.compare.folders import BASELINE, ImageRecord, RunFolder, run_folders, short
from qconf.compare.results import Comparison, ImageScore, Row, Scores
from qconf.errors import ModelSourceError, PlanError, Problem

__all__ = ["Comparison", "Row", "gather", "write_outputs"]


def gather(sweep: Path) -> Comparison:
    """Read every finished run under `sweep` and score its images against the reference."""
    from qconf.compare.metrics import require_libraries

    require_libraries()
    runs, unfinished = run_folders(sweep)  # every count and size bounded, nothing decoded yet
    reference = next((run for run in runs if run.name == BASELINE), runs[0])
    scores = _score(runs, reference)
    labels = _labels(runs)
    rows = []
    for run in runs:
        images = []
        for index, image in enumerate(run.images):
            images.append(_image_score(run, image, scores.get((run.name, index))))
        rows.append(Row(run, labels[run.name], images, *_means(images), *_worst(images)))
    _mark_pareto(rows)
    columns = list(dict.fromkeys((i.prompt, i.seed) for run in runs for i in run.images))
    return Comparison(sweep, reference.name, rows, columns, unfinished)


def _image_score(run: RunFolder, image: ImageRecord, score: Any) -> ImageScore:
    from qconf.compare.metrics import VideoScore

    relative = f"{run.name}/{image.path.name}"
    found = ImageScore(relative, image.prompt, image.seed, image.seconds, None, None)
    if image.video is not None:
        found.video, found.frames = f"{run.name}/{image.video.name}", image.frames
    if isinstance(score, VideoScore):
        found.psnr, found.ssim = score.psnr, score.ssim
        found.worst_psnr, found.worst_ssim, found.temporal = (
            score.worst_psnr, score.worst_ssim, score.temporal)  # fmt: skip
    elif score is not None:
        found.psnr, found.ssim = score
    return found


def _worst(images: list[ImageScore]) -> tuple[float | None, float | None, float | None]:
    """Videos: the worst frame over all of them, and the mean temporal difference."""
    scored = [i for i in images if i.worst_psnr is not None]
    if not scored:
        return None, None, None
    return (min(i.worst_psnr for i in scored), min(i.worst_ssim for i in scored),  # type: ignore
            sum(i.temporal for i in scored) / len(scored))  # type: ignore  # fmt: skip


def _score(runs: list[RunFolder], reference: RunFolder) -> Scores:
    """Each image against the reference image of the same prompt and seed. Sizes are compared
    from the headers before anything is decoded; then one reference image and one run image
    are in memory at a time."""
    targets = {(i.prompt, i.seed): i for i in reference.images}
    pending: dict[tuple[str, int], list[tuple[str, int, ImageRecord]]] = {}
    for run in runs:
        for index, image in enumerate(run.images):
            target = targets.get((image.prompt, image.seed))
            if target is None:
                continue
            if image.size != target.size:
                raise ModelSourceError(
                    Problem(
                        str(image.path),
                        f"is {_size(image.size)}, the reference image is {_size(target.size)}",
                        "compare runs made with the same run.height and run.width",
                    )  # fmt: skip
                )
            if image.frames != target.frames:
                raise ModelSourceError(
                    Problem(str(image.video or image.path),
                            f"has {image.frames or 'no'} frames, the reference "
                            f"{target.frames or 'no'}",
                            "compare runs made with the same model and run.num_frames"),
                )  # fmt: skip
            pending.setdefault((image.prompt, image.seed), []).append((run.name, index, image))
    return {
        (name, index): score
        for key, images in pending.items()
        for (name, index), score in _score_column(targets[key], images).items()
    }


def _score_column(target: ImageRecord, images: list[tuple[str, int, ImageRecord]]) -> Scores:
    from qconf.compare.metrics import deviation, load_image, video_deviation, video_frames

    if target.video is not None and target.frames is not None:  # every frame, one at a time
        return {
            (name, index): video_deviation(
                video_frames(image.video, image.size, target.frames),  # type: ignore[arg-type]
                video_frames(target.video, target.size, target.frames),
            )
            for name, index, image in images
        }
    reference = load_image(target.real, target.size)
    return {
        (name, index): deviation(load_image(image.real, image.size), reference)
        for name, index, image in images
    }


def write_outputs(comparison: Comparison) -> list[Path]:
    """compare.md, compare.json, compare.png (the image grid) and pareto.png, written into the
    sweep folder once all four are made (a failure while reading an image or drawing leaves
    nothing new behind), each atomically; returns their paths."""
    from qconf.compare.figures import grid_png, pareto_png
    from qconf.compare.tables import json_text, markdown

    outputs = {
        "compare.md": markdown(comparison).encode("utf-8"),
        "compare.json": json_text(comparison).encode("utf-8"),
        "compare.png": grid_png(comparison),
        "pareto.png": pareto_png(comparison),
    }
    targets = [comparison.sweep / name for name in outputs]
    for target in targets:  # a folder in the way fails before the first write, not after it
        _check_target(target)
    for target, data in zip(targets, outputs.values(), strict=True):
        _write_bytes(target, data)
    return targets


def _check_target(target: Path) -> None:
    if target.is_dir():
        raise PlanError(Problem(str(target), "is a folder", "move it away, then compare again"))


def _write_bytes(target: Path, data: bytes) -> None:
    from qconf.trust.userpath import atomic_output

    # atomic_output replaces the name itself: a link planted there is replaced, not followed.
    with atomic_output(target, target.name) as temp:
        temp.write_bytes(data)


def _size(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


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
        # Hydra's own record holds the overrides as qconf rewrote them (++key=...). Cut once
        # here: the tables repeat a label in every row (a long one made gigabytes of Markdown).
        label = " ".join(o.lstrip("+") for o in varying) or f"job {run.name}"
        labels[run.name] = short(label)
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
