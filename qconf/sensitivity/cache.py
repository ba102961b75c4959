"""Measurements on disk, one JSON file each, keyed by everything that changes the number: the
model (source, and for a folder the size and time of its files), the part, the option's
resolved entry, the run settings (prompts, seeds, steps, size) and the library versions. An
interrupted run keeps what it finished; a re-run measures only what is missing."""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from qconf.errors import PlanError, Problem, QconfError
from qconf.source.files import read_json
from qconf.trust.userpath import write_text

VERSIONED = ("torch", "diffusers", "transformers", "torchao", "optimum-quanto", "bitsandbytes")


def cache_dir() -> Path:
    from qconf.source.tiny import cache_root

    return cache_root() / "sensitivity"


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in VERSIONED:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions


def model_fingerprint(source: str, folder: Path | None) -> dict[str, Any]:
    """The source, and for a local folder every file's relative path, size and mtime (weights
    re-saved under the same name give a new key)."""
    files: list[tuple[str, int, int]] = []
    if folder is not None and folder.is_dir():
        for path in sorted(folder.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                stat = path.stat()
                files.append((str(path.relative_to(folder)), stat.st_size, stat.st_mtime_ns))
    return {"source": source, "files": files}


def key(**fields: Any) -> str:
    text = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def read(kind: str, name: str, shape: Any) -> Any | None:
    """The entry as `shape` (a dataclass or pydantic model, checked by pydantic), or None:
    missing, broken or from another version of qconf, it is measured again."""
    from pydantic import TypeAdapter, ValidationError

    path = cache_dir() / kind / f"{name}.json"
    if not path.is_file():
        return None
    try:
        return TypeAdapter(shape).validate_python(read_json(path, "a cached measurement"))
    except (QconfError, ValidationError, TypeError):
        return None


def write(kind: str, name: str, data: dict[str, Any]) -> None:
    folder = cache_dir() / kind
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PlanError(Problem("QCONF_CACHE", f"cannot create '{folder}' ({exc.strerror})",
                                "point QCONF_CACHE at a writable folder")) from None  # fmt: skip
    write_text(folder / f"{name}.json", json.dumps(data, indent=1, sort_keys=True), "QCONF_CACHE")
