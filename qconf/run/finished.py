"""Whether a run folder already holds a finished job of a given plan: what lets an interrupted
`qconf compare` resume (a job is skipped only when its folder is complete and made by the same
plan and overrides; anything else is run again). The folder is read like any untrusted one:
regular files only, size capped, names checked. Torch-free."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import yaml

from qconf.errors import QconfError
from qconf.trust.reading import read_regular

MAX_REPORT_BYTES = 4 * 2**20  # as qconf.compare.folders reads a report
_IMAGE = re.compile(r"^image(-\d{3})?\.png$")  # what `qconf run` names its images
_VIDEO = re.compile(r"^video(-\d{3})?\.webp$")  # and a video pipeline's videos


def plan_text(resolved_json: dict[str, Any]) -> str:
    """plan.yaml as `qconf run` writes it."""
    return yaml.safe_dump(resolved_json, sort_keys=False)


def finished_run(folder: Path, plan_yaml: str, overrides: list[str], images: int) -> bool:
    """True when `folder` holds report.json, plan.yaml equal to `plan_yaml`, the job's typed
    `overrides` in the report, and every one of its `images` images listed and present."""
    try:
        report = json.loads(_read(folder / "report.json", MAX_REPORT_BYTES))
        if _read(folder / "plan.yaml", MAX_REPORT_BYTES) != plan_yaml:
            return False
    except (QconfError, OSError, ValueError):  # missing, unreadable, not JSON/UTF-8
        return False
    run = report.get("run") if isinstance(report, dict) else None
    if not isinstance(run, dict) or run.get("overrides") != overrides:
        return False
    listed = run.get("images")
    if not isinstance(listed, list) or len(listed) != images:
        return False
    if not all(isinstance(item, dict) for item in listed):
        return False
    videos = [item["video"] for item in listed if "video" in item]
    return all(_written(folder, item.get("file"), _IMAGE) for item in listed) and all(
        _written(folder, video, _VIDEO) for video in videos
    )


def _written(folder: Path, name: Any, pattern: re.Pattern[str]) -> bool:
    return isinstance(name, str) and bool(pattern.match(name)) and _regular(folder / name)


def _read(path: Path, limit: int) -> str:
    if not _regular(path):
        raise OSError(f"{path} is not a regular file")
    return read_regular(path, path.name, limit, follow_symlinks=False).decode("utf-8")


def _regular(path: Path) -> bool:
    """A regular file itself, not a link (qconf run never writes links)."""
    return os.path.isfile(path) and not os.path.islink(path)
