"""Measurements on disk, one JSON file each, keyed by everything that changes the number: the
model (source, and for a folder the size and time of its files), the part, the option's
resolved entry, the run settings (prompts, seeds, steps, size) and the library versions. An
interrupted run keeps what it finished; a re-run measures only what is missing.

The cache may be a folder others write too (QCONF_CACHE on a shared disk), so it is data from
outside qconf, like a model folder: an entry is read only if it is a regular file under a size
cap, parsed with bounded depth, validated by pydantic (shape, names, finite values in range),
and it must name the key it was written for; anything else is ignored with a notice and
measured again. qconf opens entries by key and never lists a folder, so the number of files
there costs nothing. Writing goes only into the real cache folder: no component from
QCONF_CACHE's own name down may be a symbolic link, each is opened without following one, and
an entry is a temp file in that folder renamed onto its name."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from qconf.backends import REGISTRY
from qconf.errors import PlanError, Problem, QconfError

# torch, the two libraries, and every backend's distribution (the registry's)
VERSIONED = (
    "torch",
    "diffusers",
    "transformers",
    *dict.fromkeys(spec.distribution for spec in REGISTRY.values()),
)
WHERE = "QCONF_CACHE"
WHAT = "a cached measurement"
MAX_ENTRY_BYTES = 64 * 2**10  # a cell or a score is < 1 KiB
MAX_RANKING_BYTES = 8 * 2**20  # a layer ranking: ~250 bytes a layer, MAX_LAYERS of them
MAX_LAYERS = 20_000  # a 14B video transformer has ~1,000 Linear layers
MAX_BYTES = 2**50  # 1 PiB of weights: more is a forged number, not a model

# Value types of cached measurements: pydantic refuses NaN, out-of-range and oversized values.
Finite = Annotated[float, Field(allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]
Psnr = Annotated[float, Field(ge=0)]  # dB of an MSE on pixels in 0..1; inf: identical images
Similarity = Annotated[float, Field(ge=-1.001, le=1.001, allow_inf_nan=False)]  # cosine, SSIM
Mse = Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)]  # pixels in 0..1
ByteCount = Annotated[int, Field(ge=0, le=MAX_BYTES)]
ByteDelta = Annotated[int, Field(ge=-MAX_BYTES, le=MAX_BYTES)]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$", max_length=128)]
# module paths ("transformer_blocks.0.attn.to_q"); they become Hydra override values (skip lists),
# so no quotes, brackets, `$` or spaces
LayerName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$", max_length=300)]
Text = Annotated[str, Field(max_length=1000)]

# Entries written by this process, per kind: what a Ctrl-C leaves behind (see cli/measure.py).
WRITTEN: dict[str, int] = {}
_LABELS = {"parts": "part/option cells", "layers": "layer rankings", "tune": "candidate runs"}


def written_text(since: dict[str, int]) -> str:
    """'3 part/option cells, 1 layer rankings': entries written since the counts `since`."""
    done = {k: n - since.get(k, 0) for k, n in WRITTEN.items()}
    return ", ".join(f"{n} {_LABELS.get(k.split('-')[0], k)}" for k, n in done.items() if n)


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
                stat_ = path.stat()
                files.append((str(path.relative_to(folder)), stat_.st_size, stat_.st_mtime_ns))
    return {"source": source, "files": files}


def key(**fields: Any) -> str:
    text = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def entry_path(kind: str, name: str) -> Path:
    return cache_dir() / kind / f"{name}.json"


def read(kind: str, name: str, shape: Any, max_bytes: int = MAX_ENTRY_BYTES) -> Any | None:
    """The entry as `shape` (a dataclass or pydantic model, checked by pydantic), or None:
    missing, or (with a notice) unreadable, malformed, out of range or written for another key;
    it is measured again. A symbolic link for the cache folder is a PlanError, before any
    work: the measurement would be written there."""
    from pydantic import TypeAdapter, ValidationError

    from qconf.source.files import parse_json
    from qconf.trust.reading import read_regular

    path = entry_path(kind, name)
    if not _folders_present(kind) or not _entry_present(path):
        return None
    try:
        # follow_symlinks=False: a link planted as an entry is refused on open. The folders
        # above were checked just before; one swapped in between can only pick which file is
        # read, which is no more than writing a forged entry, and every entry is validated.
        text = read_regular(path, WHAT, max_bytes, follow_symlinks=False)
        data = parse_json(text, path, WHAT)
        if not isinstance(data, dict) or data.pop("key", None) != name:
            notice(kind, name, "was not written for this key (copied or forged)")
            return None
        return TypeAdapter(shape).validate_python(data)
    except QconfError as exc:
        notice(kind, name, exc.problems[0].what)
    except ValidationError as exc:
        first = exc.errors()[0]
        at = ".".join(str(p) for p in first["loc"][:4])
        notice(kind, name, f"is not a measurement qconf wrote ({at}: {first['msg']})")
    except (TypeError, ValueError) as exc:  # a shape pydantic cannot even start on
        notice(kind, name, f"is not a measurement qconf wrote ({type(exc).__name__})")
    return None


def notice(kind: str, name: str, why: str) -> None:
    """One stderr line: this entry is not used (it is measured again and replaced)."""
    from qconf.text import safe

    print(f"note: {safe(str(entry_path(kind, name)))}: {safe(why)} — measured again",
          file=sys.stderr)  # fmt: skip


def write(kind: str, name: str, data: dict[str, Any], shape: Any = None) -> None:
    """Write the entry (with its key) into the real cache folder, atomically; a symbolic link
    for the cache folder or one below it is a PlanError. With `shape`, an entry `read` would
    refuse (a NaN from an option that broke the part) is not written: it is measured again."""
    from pydantic import TypeAdapter, ValidationError

    from qconf.source.tiny import cache_root
    from qconf.trust.userpath import real_folder, replace_in

    if shape is not None:
        try:
            TypeAdapter(shape).validate_python(data)
        except ValidationError:
            return
    payload = json.dumps({**data, "key": name}, indent=1, sort_keys=True).encode()
    with real_folder(cache_root(), ["sensitivity", kind], WHERE) as folder:
        replace_in(folder, f"{name}.json", payload, WHERE)  # replaces a link at the name
    WRITTEN[kind] = WRITTEN.get(kind, 0) + 1


def _folders_present(kind: str) -> bool:
    """False if a cache folder is missing (nothing cached yet); a PlanError if one is a symbolic
    link or not a folder (checked from QCONF_CACHE's own name down, before any work)."""
    from qconf.source.tiny import cache_root

    root = cache_root()
    for folder in (root, root / "sensitivity", root / "sensitivity" / kind):
        try:
            info = os.lstat(folder)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise _cache_problem(folder, f"cannot be read ({exc.strerror})") from None
        if stat.S_ISLNK(info.st_mode):
            raise _cache_problem(folder, "is a symbolic link (qconf writes only into real folders)")
        if not stat.S_ISDIR(info.st_mode):
            raise _cache_problem(folder, "is not a folder")
    return True


def _entry_present(path: Path) -> bool:
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError:
        return True  # let the reader say why
    return True


def _cache_problem(folder: Path, what: str) -> PlanError:
    fix = "remove it, or point QCONF_CACHE at a folder only you write"
    return PlanError(Problem(WHERE, f"'{folder}' {what}", fix))
