"""Read the run folders of a sweep (what `qconf run` wrote: report.json, images, Hydra's
.hydra/overrides.yaml). A sweep folder may come from someone else (a shared drive, a download),
so it is untrusted input like any config file: every file is read through the bounded reader
(regular files only, size capped) at a path that resolves inside the sweep folder, and the whole
sweep is counted and measured (runs, images, pixels, bytes) before any image is decoded. A bad
folder is one line naming the file."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from qconf.errors import ModelSourceError, Problem
from qconf.source.files import parse_json
from qconf.source.video import MAX_FRAMES
from qconf.trust.reading import read_regular
from qconf.trust.yamlsafe import MAX_BYTES as MAX_YAML_BYTES
from qconf.trust.yamlsafe import load_yaml_text

BASELINE = "baseline"  # the folder qconf compare runs the unquantized plan into
# Bounds on a sweep folder. A real sweep has tens of runs and a few images each; every bound is
# far above that and keeps a hostile folder to seconds of reading and at most minutes of
# scoring (SSIM costs ~1.5 s and ~700 MB per 1024x1024 image on a small CPU).
MAX_ENTRIES = 10_000  # names in the sweep folder looked at, so listing a huge folder stops early
MAX_RUNS = 256  # run folders: each is a full pipeline load, a sweep is a handful to tens
MAX_PARTS = 100  # distinct part names over all runs (a pipeline has ~3-10): table columns
MAX_IMAGES = 2048  # images over all runs: rows of the per-image table, SSIM calls
MAX_TOTAL_PIXELS = 2**27  # ~128 images of 1024x1024 decoded and scored, one pair at a time
MAX_REPORT_BYTES = 4 * 2**20  # one report.json: ~5 KB for 16 images, 256 long prompts < 1 MB
MAX_REPORTS_BYTES = 32 * 2**20  # all reports together: compare.json repeats what they hold
MAX_TEXT = 10_000  # characters of a prompt, an override, a name: labels, not documents
MAX_LABEL = 300  # characters of a row label or a shown prompt, cut once where it is made
Count = Annotated[int, Field(ge=0, le=2**63)]
Text = Annotated[str, Field(max_length=MAX_TEXT)]
IMAGE_FILE = r"^image(-\d{3})?\.png$"  # what `qconf run` names its images
VIDEO_FILE = r"^video(-\d{3})?\.webp$"  # and its videos (a video pipeline's)
Frames = Annotated[int, Field(ge=1, le=MAX_FRAMES)]


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Image(_Lenient):
    file: Annotated[str, Field(pattern=IMAGE_FILE)]
    prompt: Text
    seed: Annotated[int, Field(ge=-(2**63), le=2**64)]
    seconds: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    video: Annotated[str, Field(pattern=VIDEO_FILE)] | None = None
    frames: Frames | None = None


class _RunSection(_Lenient):
    overrides: Annotated[list[Text], Field(max_length=1000)] | None = None
    images: Annotated[list[_Image], Field(min_length=1, max_length=256)]
    seconds_per_image: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    peak_memory_bytes: Count
    peak_memory_kind: Annotated[str, Field(max_length=20)]
    fps: Annotated[int, Field(ge=1, le=240)] | None = None
    seconds_per_frame: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None


class _Component(_Lenient):
    backend: Annotated[str, Field(max_length=100)] | None
    bytes: Count
    bytes_unquantized: Count


class _Report(_Lenient):
    load_seconds: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    components: Annotated[dict[Annotated[str, Field(max_length=100)], _Component],
                          Field(max_length=MAX_PARTS)]  # fmt: skip
    total_bytes: Count
    total_bytes_unquantized: Count
    run: _RunSection


@dataclass(frozen=True)
class ImageRecord:
    path: Path  # as the report lists it: <run folder>/image-000.png
    real: Path  # every link resolved (inside the sweep folder): what is opened
    prompt: str
    seed: int
    seconds: float
    size: tuple[int, int]  # (width, height) from the PNG header, checked before decoding
    video: Path | None = None  # a video pipeline's frames (resolved inside the sweep folder)
    frames: int | None = None  # how many frames the video holds (report.json)


@dataclass(frozen=True)
class RunFolder:
    """One finished job of the sweep."""

    name: str  # folder name inside the sweep folder ("baseline", "0", "1", ...)
    overrides: tuple[str, ...]  # the job's overrides, as Hydra recorded them
    backends: dict[str, str | None]  # part -> backend
    part_bytes: dict[str, int]
    total_bytes: int
    total_bytes_unquantized: int
    peak_memory_bytes: int
    peak_memory_kind: str
    load_seconds: float
    seconds_per_image: float
    images: tuple[ImageRecord, ...]
    fps: int | None = None  # videos: their frame rate
    seconds_per_frame: float | None = None


def short(text: str, limit: int = MAX_LABEL) -> str:
    """`text` cut to `limit` characters (an ellipsis marks the cut)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def run_folders(sweep: Path) -> tuple[list[RunFolder], list[str]]:
    """The finished runs under `sweep` (baseline first, then jobs in number order) and the names
    of job folders without a report (failed, or still running). Counted before read: folders,
    then reports (bytes, images, parts), then PNG headers (pixels); nothing is decoded here."""
    if not sweep.is_dir():
        raise ModelSourceError(Problem(str(sweep), "no such folder", "give a sweep folder"))
    root = sweep.resolve()  # the folder the user typed (a link they made is theirs to follow)
    folders = sorted(_job_folders(root), key=_order)
    finished = [folder for folder in folders if _entry_exists(folder / "report.json")]
    unfinished = [folder.name for folder in folders if folder not in finished]
    if not finished:
        raise ModelSourceError(
            Problem(
                str(sweep),
                "holds no finished `qconf run` folders (no */report.json)",
                "give the folder a `qconf compare` or `qconf run -m` wrote",
            )  # fmt: skip
        )
    budget = _Budget()
    reports = [(folder, _read_report(folder, root, budget)) for folder in finished]
    images = sum(len(report.run.images) for _, report in reports)
    parts = {part for _, report in reports for part in report.components}
    _check_total(sweep, images, MAX_IMAGES, "images")
    _check_total(sweep, len(parts), MAX_PARTS, "distinct part names")
    return [_run(folder, root, report, budget) for folder, report in reports], unfinished


@dataclass
class _Budget:
    """What the whole sweep may still read: report bytes, then decoded image pixels."""

    report_bytes: int = MAX_REPORTS_BYTES
    pixels: int = MAX_TOTAL_PIXELS


def _check_total(sweep: Path, count: int, limit: int, what: str) -> None:
    if count > limit:
        raise ModelSourceError(Problem(str(sweep), f"its runs hold {count:,} {what}, over "
                                       f"qconf compare's limit of {limit:,}",
                                       "compare fewer runs, prompts or seeds at a time, or "
                                       "smaller images"))  # fmt: skip


def _job_folders(root: Path) -> list[Path]:
    """The job folders in `root`, looking at no more than MAX_ENTRIES names (a folder of
    millions of files would take minutes to list) and keeping no more than MAX_RUNS."""
    folders = [root / name for name in _names(root) if _job_name(name)]
    folders = [folder for folder in folders if folder.is_dir() and _is_job(folder)]
    if len(folders) > MAX_RUNS:
        raise ModelSourceError(Problem(str(root), f"holds {len(folders):,} run folders, over "
                                       f"qconf compare's limit of {MAX_RUNS}",
                                       "compare fewer runs at a time"))  # fmt: skip
    return folders


def _names(root: Path) -> list[str]:
    names: list[str] = []
    try:
        with os.scandir(root) as entries:
            for entry in entries:
                names.append(entry.name)
                if len(names) > MAX_ENTRIES:
                    break
    except OSError as exc:
        raise ModelSourceError(Problem(str(root), f"cannot list it ({exc.strerror or exc})",
                                       "give a folder you can read")) from None  # fmt: skip
    if len(names) > MAX_ENTRIES:
        raise ModelSourceError(Problem(str(root), f"holds more than {MAX_ENTRIES:,} entries",
                                       "give the sweep folder itself"))  # fmt: skip
    return names


def _job_name(name: str) -> bool:
    """Named as qconf compare names them: baseline, or the job number."""
    return name == BASELINE or (name.isascii() and name.isdigit())


def _is_job(folder: Path) -> bool:
    """A folder Hydra made for a job (its .hydra record) or one holding a run report."""
    return (folder / ".hydra").is_dir() or _entry_exists(folder / "report.json")


def _entry_exists(path: Path) -> bool:
    """Something is there, a dangling or escaping link too: it is then refused when read,
    instead of the job being silently counted as unfinished."""
    return os.path.lexists(path)


def _order(folder: Path) -> tuple[int, int]:
    return (0, 0) if folder.name == BASELINE else (1, int(folder.name))


def inside(path: Path, root: Path, what: str) -> Path:
    """`path` with every link resolved, refused unless it stays inside `root` (resolved): a
    link in a shared folder must not make qconf read, and copy into compare.md, a file of
    yours elsewhere."""
    real = Path(os.path.realpath(path))
    if real != root and root not in real.parents:
        raise ModelSourceError(Problem(str(path), f"{what} leads outside the sweep folder "
                                       f"through a link (to '{real}')",
                                       "a run folder holds the files `qconf run` wrote; "
                                       "copy them in instead of linking"))  # fmt: skip
    return real


def _run(folder: Path, root: Path, report: _Report, budget: _Budget) -> RunFolder:
    images = []
    for image in report.run.images:
        path = folder / image.file
        if not _entry_exists(path):
            raise ModelSourceError(
                Problem(str(path), "missing (report.json lists it)", "re-run that job")
            )
        images.append(_image_record(path, root, image))
        # A video is scored frame by frame: every frame counts as an image decoded.
        budget.pixels -= images[-1].size[0] * images[-1].size[1] * (image.frames or 1)
        if budget.pixels < 0:  # stop at the first header past the limit
            _check_total(root, MAX_TOTAL_PIXELS - budget.pixels, MAX_TOTAL_PIXELS, "pixels")
    return RunFolder(
        name=folder.name,
        overrides=tuple(report.run.overrides)
        if report.run.overrides is not None
        else _overrides(folder, root),
        backends={name: part.backend for name, part in report.components.items()},
        part_bytes={name: part.bytes for name, part in report.components.items()},
        total_bytes=report.total_bytes,
        total_bytes_unquantized=report.total_bytes_unquantized,
        peak_memory_bytes=report.run.peak_memory_bytes,
        peak_memory_kind=report.run.peak_memory_kind,
        load_seconds=report.load_seconds,
        seconds_per_image=report.run.seconds_per_image,
        images=tuple(images),
        fps=report.run.fps,
        seconds_per_frame=report.run.seconds_per_frame,
    )


def _read_report(folder: Path, root: Path, budget: _Budget) -> _Report:
    report_file = folder / "report.json"
    real = inside(report_file, root, "report.json")
    data = read_regular(real, "report.json", MAX_REPORT_BYTES, follow_symlinks=False)
    budget.report_bytes -= len(data)
    if budget.report_bytes < 0:
        raise ModelSourceError(Problem(str(report_file), "the sweep's report.json files "
                                       f"together are over {MAX_REPORTS_BYTES // 2**20} MiB",
                                       "compare fewer runs at a time"))  # fmt: skip
    parsed = parse_json(data, report_file, "report.json")
    try:
        return _Report.model_validate(parsed)
    except ValidationError as exc:
        error = exc.errors()[0]
        # The location can hold a key from the file: cut, so the error stays one short line.
        where = short(".".join(str(part) for part in error["loc"]), 120)
        raise ModelSourceError(
            Problem(str(report_file), f"{where}: {error['msg']}",
                    "a run folder holds the report.json `qconf run` wrote; re-run that job")
        ) from None  # fmt: skip


def _image_record(path: Path, root: Path, image: _Image) -> ImageRecord:
    from qconf.compare.metrics import image_size

    real = inside(path, root, "the image")
    video = None
    if image.video is not None:
        if image.frames is None:
            raise ModelSourceError(Problem(str(path.parent / "report.json"), f"lists "
                                           f"{image.video} without its frame count",
                                           "re-run that job"))  # fmt: skip
        video_path = path.parent / image.video
        if not _entry_exists(video_path):
            raise ModelSourceError(
                Problem(str(video_path), "missing (report.json lists it)", "re-run that job")
            )
        video = inside(video_path, root, "the video")
    size = image_size(real)
    return ImageRecord(path, real, image.prompt, image.seed, image.seconds, size, video,
                       image.frames if video is not None else None)  # fmt: skip


def _overrides(folder: Path, root: Path) -> tuple[str, ...]:
    """The job's overrides from Hydra's record; none if the record is missing, not UTF-8 YAML,
    or not a list of strings (a label is all they are used for). A record that is a link out of
    the sweep, not a regular file or over the YAML size limit is refused like any file."""
    record = folder / ".hydra" / "overrides.yaml"
    if not _entry_exists(record):
        return ()
    real = inside(record, root, "overrides.yaml")
    data = read_regular(real, "overrides.yaml", MAX_YAML_BYTES, follow_symlinks=False)
    try:
        value: Any = load_yaml_text(data.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError):  # the label falls back to the folder name
        return ()
    if not isinstance(value, list) or len(value) > 1000:
        return ()
    if not all(isinstance(item, str) and len(item) <= MAX_TEXT for item in value):
        return ()
    return tuple(value)
