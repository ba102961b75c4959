"""sweep.json: what a `qconf compare` sweep folder was made for (every job's typed overrides,
resolved plan and run settings, the baseline included), written before the first job starts.
Running the same command into the same folder again resumes it (finished runs are skipped, see
qconf.run.finished); a folder made for other jobs is refused. The file is read like any file
of a folder that may come from someone else: a regular file, size capped."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qconf.errors import QconfError
from qconf.trust.reading import read_regular

NAME = "sweep.json"
FORMAT = "qconf compare sweep 1"
MAX_BYTES = 16 * 2**20  # 256 runs of a few KiB of plan each


def sweep_record(launches: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """The record of a sweep: each launch (baseline, then the plans) as its jobs' entries
    ({overrides, plan, run}), normalised through JSON so it compares equal to what is read."""
    return json.loads(json.dumps({"format": FORMAT, "launches": launches}))


def read_record(folder: Path) -> dict[str, Any] | None:
    """The record in `folder`, or None when there is none, or it is not one qconf wrote."""
    path = folder / NAME
    if not path.is_file() or path.is_symlink():
        return None
    try:
        data = json.loads(read_regular(path, NAME, MAX_BYTES, follow_symlinks=False))
    except (QconfError, OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def write_record(folder: Path, record: dict[str, Any]) -> None:
    from qconf.trust.userpath import atomic_output

    with atomic_output(folder / NAME, NAME) as temp:
        temp.write_text(json.dumps(record, indent=1), encoding="utf-8")
