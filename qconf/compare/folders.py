"""Read the run folders of a sweep (what `qconf run` wrote: report.json, plan.yaml, images,
Hydra's .hydra/overrides.yaml). These folders are input like any other file: sizes and shapes
are checked, and a bad one is one line naming the file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from qconf.errors import ModelSourceError, Problem
from qconf.source.files import read_json
from qconf.trust.yamlsafe import load_yaml_file

BASELINE = "baseline"  # the folder qconf compare runs the unquantized plan into
MAX_RUNS = 1000
MAX_TEXT = 10_000  # characters of a prompt, an override, a name: labels, not documents
Count = Annotated[int, Field(ge=0, le=2**63)]
Text = Annotated[str, Field(max_length=MAX_TEXT)]
IMAGE_FILE = r"^image(-\d{3})?\.png$"  # what `qconf run` names its images


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class _Image(_Lenient):
    file: Annotated[str, Field(pattern=IMAGE_FILE)]
    prompt: Text
    seed: Annotated[int, Field(ge=-(2**63), le=2**64)]
    seconds: Annotated[float, Field(ge=0, allow_inf_nan=False)]


class _RunSection(_Lenient):
    overrides: Annotated[list[Text], Field(max_length=1000)] | None = None
    images: Annotated[list[_Image], Field(min_length=1, max_length=256)]
    seconds_per_image: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    peak_memory_bytes: Count
    peak_memory_kind: Annotated[str, Field(max_length=20)]


class _Component(_Lenient):
    backend: Annotated[str, Field(max_length=100)] | None
    bytes: Count
    bytes_unquantized: Count


class _Report(_Lenient):
    load_seconds: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    components: Annotated[dict[Annotated[str, Field(max_length=100)], _Component],
                          Field(max_length=100)]  # fmt: skip
    total_bytes: Count
    total_bytes_unquantized: Count
    run: _RunSection


@dataclass(frozen=True)
class ImageRecord:
    path: Path
    prompt: str
    seed: int
    seconds: float


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


def run_folders(sweep: Path) -> tuple[list[RunFolder], list[str]]:
    """The finished runs under `sweep` (baseline first, then jobs in number order) and the names
    of job folders without a report (failed, or still running)."""
    if not sweep.is_dir():
        raise ModelSourceError(Problem(str(sweep), "no such folder", "give a sweep folder"))
    folders = sorted((p for p in sweep.iterdir() if p.is_dir() and _is_job(p)), key=_order)
    if len(folders) > MAX_RUNS:
        raise ModelSourceError(Problem(str(sweep), f"more than {MAX_RUNS} run folders"))
    runs = [read_run(folder) for folder in folders if (folder / "report.json").is_file()]
    unfinished = [folder.name for folder in folders if not (folder / "report.json").is_file()]
    if not runs:
        raise ModelSourceError(
            Problem(
                str(sweep),
                "holds no finished `qconf run` folders (no */report.json)",
                "give the folder a `qconf compare` or `qconf run -m` wrote",
            )  # fmt: skip
        )
    return runs, unfinished


def _is_job(folder: Path) -> bool:
    """A folder Hydra made for a job (its .hydra record) or one holding a run report, named as
    qconf compare names them (baseline, or the job number)."""
    if not (folder.name == BASELINE or folder.name.isascii() and folder.name.isdigit()):
        return False
    return not folder.is_symlink() and (
        (folder / ".hydra").is_dir() or (folder / "report.json").is_file()
    )


def _order(folder: Path) -> tuple[int, int, str]:
    if folder.name == BASELINE:
        return (0, 0, "")
    if folder.name.isdigit():
        return (1, int(folder.name), "")
    return (2, 0, folder.name)


def read_run(folder: Path) -> RunFolder:
    report_file = folder / "report.json"
    try:
        report = _Report.model_validate(read_json(report_file, "report.json"))
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise ModelSourceError(
            Problem(str(report_file), f"{where}: {error['msg']}",
                    "a run folder holds the report.json `qconf run` wrote; re-run that job")
        ) from None  # fmt: skip
    images = []
    for image in report.run.images:
        path = folder / image.file
        if not path.is_file() or path.is_symlink():
            raise ModelSourceError(
                Problem(str(path), "missing (report.json lists it)", "re-run that job")
            )
        images.append(ImageRecord(path, image.prompt, image.seed, image.seconds))
    return RunFolder(
        name=folder.name,
        overrides=tuple(report.run.overrides)
        if report.run.overrides is not None
        else _overrides(folder),
        backends={name: part.backend for name, part in report.components.items()},
        part_bytes={name: part.bytes for name, part in report.components.items()},
        total_bytes=report.total_bytes,
        total_bytes_unquantized=report.total_bytes_unquantized,
        peak_memory_bytes=report.run.peak_memory_bytes,
        peak_memory_kind=report.run.peak_memory_kind,
        load_seconds=report.load_seconds,
        seconds_per_image=report.run.seconds_per_image,
        images=tuple(images),
    )


def _overrides(folder: Path) -> tuple[str, ...]:
    """The job's overrides from Hydra's record; none if the record is missing or not a list
    of strings (a label is all they are used for)."""
    record = folder / ".hydra" / "overrides.yaml"
    if not record.is_file():
        return ()
    try:
        data: Any = load_yaml_file(record)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):  # the label falls back to the name
        return ()
    if not isinstance(data, list) or not all(isinstance(i, str) and len(i) <= MAX_TEXT
                                             for i in data[:1000]) or len(data) > 1000:  # fmt: skip
        return ()
    return tuple(data)
