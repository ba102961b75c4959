"""The comparison as JSON (the machine contract: exact numbers, as in each run's report.json)
and as Markdown (for people: sizes in binary units, rounded metrics)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qconf.compare.folders import short
from qconf.text import markdown_text
from qconf.trust.userpath import write_text
from qconf.units import human_bytes

if TYPE_CHECKING:
    from qconf.compare.results import Comparison, Row


def comparison_json(comparison: Comparison) -> dict[str, Any]:
    """PSNR of identical images is Infinity (Python's json reads it back as inf)."""
    return {
        "reference": comparison.reference,
        "columns": [{"prompt": prompt, "seed": seed} for prompt, seed in comparison.columns],
        "runs": [_row_json(row) for row in comparison.rows],
        "unfinished": comparison.unfinished,
    }


def _row_json(row: Row) -> dict[str, Any]:
    run = row.run
    return {
        "folder": run.name,
        "label": row.label,
        "overrides": list(run.overrides),
        "backends": run.backends,
        "bytes": run.part_bytes,
        "total_bytes": run.total_bytes,
        "total_bytes_unquantized": run.total_bytes_unquantized,
        "peak_memory_bytes": run.peak_memory_bytes,
        "peak_memory_kind": run.peak_memory_kind,
        "load_seconds": run.load_seconds,
        "seconds_per_image": run.seconds_per_image,
        "psnr": row.psnr,
        "ssim": row.ssim,
        **(
            {
                "fps": run.fps,
                "seconds_per_frame": run.seconds_per_frame,
                "worst_frame_psnr": row.worst_psnr,
                "worst_frame_ssim": row.worst_ssim,
                "temporal_difference": row.temporal,
            }
            if _is_video(row)
            else {}
        ),  # fmt: skip
        "pareto": row.pareto,
        "images": [vars(image) for image in row.images],
    }


def json_text(comparison: Comparison) -> str:
    return json.dumps(comparison_json(comparison), indent=2) + "\n"


def write_json(comparison: Comparison, target: Path) -> Path:
    return write_text(target, json_text(comparison), "compare.json")


def write_markdown(comparison: Comparison, target: Path) -> Path:
    return write_text(target, markdown(comparison), "compare.md")


def markdown(comparison: Comparison) -> str:
    """Every string from the sweep folder (labels, prompts, part and backend names, memory
    kinds) goes through `_cell`: nothing a shared folder holds renders as Markdown."""
    from qconf.compare.figures import grid_note

    reference = next(r for r in comparison.rows if r.run.name == comparison.reference)
    kinds = sorted({row.run.peak_memory_kind for row in comparison.rows})
    note = grid_note(comparison)
    lines = [
        "# qconf compare",
        "",
        # Folder names are "baseline" or digits (folders.py reads no others): safe in code.
        f"Reference: {_cell(reference.label)} (folder `{reference.run.name}`). PSNR "
        "(dB) and SSIM against it on the same prompts and seeds, mean over images; ∞ = "
        f"identical. Peak memory: {', '.join(_cell(_PEAK_KINDS.get(k, k)) for k in kinds)}."
        + (f" {note}." if note else ""),
        "",
        "| plan | folder | weights | peak memory | load s | s / image | PSNR | SSIM | Pareto |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | :---: |",
    ]
    for row in comparison.rows:
        run = row.run
        lines.append(
            f"| {_cell(row.label)} | {_cell(run.name)} | {human_bytes(run.total_bytes)} "
            f"| {human_bytes(run.peak_memory_bytes)} | {run.load_seconds:.2f} "
            f"| {run.seconds_per_image:.3f} | {psnr_text(row.psnr)} | {ssim_text(row.ssim)} "
            f"| {'✓' if row.pareto else ''} |"
        )
    parts = list(dict.fromkeys(p for row in comparison.rows for p in row.run.part_bytes))
    lines += ["", "## Weights per part", "",
              "| plan | " + " | ".join(_cell(p) for p in parts) + " | total |",
              "| --- |" + " ---: |" * (len(parts) + 1)]  # fmt: skip
    for row in comparison.rows:
        sizes = [_part(row.run, part) for part in parts]
        lines.append(f"| {_cell(row.label)} | {' | '.join(sizes)} | "
                     f"{human_bytes(row.run.total_bytes)} |")  # fmt: skip
    lines += ["", "## Per image", "", "| plan | prompt | seed | s | PSNR | SSIM |",
              "| --- | --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    for row in comparison.rows:
        for image in row.images:
            lines.append(
                f"| {_cell(row.label)} | {_cell(short(image.prompt))} | {image.seed} "
                f"| {image.seconds:.3f} | {psnr_text(image.psnr)} | {ssim_text(image.ssim)} |"
            )
    if any(_is_video(row) for row in comparison.rows):
        lines += _video_lines(comparison)
    if comparison.unfinished:
        lines += ["", f"Unfinished job folders (no report.json): "
                  f"{', '.join(_cell(n) for n in comparison.unfinished)}."]  # fmt: skip
    return "\n".join(lines) + "\n"


def _is_video(row: Row) -> bool:
    return any(image.video is not None for image in row.images)


def _video_lines(comparison: Comparison) -> list[str]:
    """Per video: frames, its worst frame against the reference's, the temporal check, and a
    link (a relative path inside the sweep folder: the file names are qconf's own)."""
    lines = ["", "## Videos", "",
             "PSNR/SSIM above are over every frame. Worst frame: the frame furthest from the "
             "reference's. Temporal: mean absolute difference between the frame-to-frame change "
             "and the reference's (0 = moves as the reference does; pixel values 0..1).", "",
             "| plan | prompt | seed | frames | s / frame | worst PSNR | worst SSIM | temporal "
             "| video |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]  # fmt: skip
    for row in comparison.rows:
        for image in row.images:
            if image.video is None:
                continue
            per_frame = image.seconds / image.frames if image.frames else 0.0
            temporal = "—" if image.temporal is None else f"{image.temporal:.4f}"
            lines.append(
                f"| {_cell(row.label)} | {_cell(short(image.prompt))} | {image.seed} "
                f"| {image.frames} | {per_frame:.3f} | {psnr_text(image.worst_psnr)} "
                f"| {ssim_text(image.worst_ssim)} | {temporal} | [{image.video}]({image.video}) |"
            )
    return lines


_PEAK_KINDS = {
    "cuda": "CUDA allocator peak",
    "rss": "peak resident memory of the job's process",
    "rss-process": "peak resident memory of the whole process (not reset per job)",
}


def _part(run: Any, part: str) -> str:
    if part not in run.part_bytes:
        return "—"
    backend = run.backends.get(part)
    size = human_bytes(run.part_bytes[part])
    return f"{size} ({_cell(backend)})" if backend else size


def psnr_text(value: float | None) -> str:
    if value is None:
        return "—"
    return "∞" if math.isinf(value) else f"{value:.2f}"


def ssim_text(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def _cell(text: Any) -> str:
    """Text for a Markdown table cell: one line, nothing rendered as markup (see
    qconf.text.markdown_text)."""
    return markdown_text(text)
