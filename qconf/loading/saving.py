"""Save a quantized pipeline once, reload it later: `qconf load ... --save DIR`.

The pipeline is written with safetensors into a hidden temporary folder beside DIR, with
qconf.yaml (the resolved plan and library versions) next to model_index.json, and only then
moved into place: a failure or a kill midway leaves no DIR (at most a hidden .DIR.qconf-tmp-*)."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Protocol

from qconf.backends import REGISTRY
from qconf.errors import PlanError, Problem
from qconf.plan.resolve import ResolvedPlan
from qconf.trust.userpath import read_only, user_path


class Loaded(Protocol):
    """What saving needs of qconf.loading.loader.Loaded (saving never imports the loader back)."""

    pipeline: Any
    resolved: ResolvedPlan


PLAN_FILE = "qconf.yaml"
_VERSIONED = ("qconf", "torch", "diffusers", "transformers", "accelerate", "safetensors")


def save_problems(resolved: ResolvedPlan) -> list[Problem]:
    """Parts whose backend cannot be saved (capability table in the registry)."""
    problems = []
    for name, part in resolved.quantized.items():
        spec = REGISTRY[part.backend]
        where = f"quant.mapping.{name}" if resolved.mode == "granular" else "quant.backend"
        variant = part.entry.save_problem()
        if not spec.can_save.get(part.library, False):  # type: ignore[call-overload]
            problems.append(
                Problem(
                    where,
                    f"{spec.key} on '{name}' ({part.library} part) cannot be saved",
                    "pick a backend that saves there (qconf list backends), or drop --save",
                )
            )
        elif variant is not None:
            problems.append(Problem(where, *variant))
    return problems


def check_can_save(resolved: ResolvedPlan, target: str | Path, *, force: bool) -> None:
    """Refuse before quantizing: an unsaveable plan, a target qconf never replaces, or a
    non-empty DIR without force. (Checked again when the folder is moved into place.)"""
    problems = save_problems(resolved)
    try:
        path = save_target(target)
    except PlanError as exc:
        problems += exc.problems
    else:
        source = (
            resolved.plan.source.local_folder() if resolved.plan.source.kind != "tiny" else None
        )
        if source is not None and (path == source.resolve() or path in source.resolve().parents):
            problems.append(
                Problem(
                    "--save",
                    f"'{target}' is the model folder (or holds it)",
                    "save into another folder: the original would be replaced",
                )  # fmt: skip
            )
        elif path.is_dir() and any(path.iterdir()) and not force:
            problems.append(
                Problem(
                    "--save", f"'{target}' exists and is not empty", "pass --force to replace it"
                )
            )
    if problems:
        raise PlanError(problems)


def save_target(target: str | Path) -> Path:
    """The absolute DIR for `--save`, or PlanError for targets never replaced, even with
    --force: '', '.', '~', '/', the working folder or a folder holding it, your home or a
    folder holding it, a symlink, a file, or a path under a file."""
    text = str(target)
    where = "--save"
    if not text.strip():
        raise PlanError(Problem(where, "empty path", "name the folder to save into"))
    expanded = user_path(text, where)
    path = Path(os.path.abspath(expanded))  # absolute, symlinks not followed
    if path.is_symlink():
        raise PlanError(
            Problem(where, f"'{text}' is a symlink", "save into a real folder (never followed)")
        )
    real = path.resolve()
    protected = {Path.cwd().resolve(), Path.home().resolve(), Path(real.anchor)}
    if any(real == p or real in p.parents for p in protected):
        raise PlanError(
            Problem(
                where,
                f"'{text}' is the working folder, your home, the root or a folder holding them",
                "save into a new sub-folder, e.g. --save outputs/quantized",
            )
        )
    if real.exists() and not real.is_dir():
        raise PlanError(Problem(where, f"'{text}' is a file", "give a folder path"))
    existing = next(p for p in (real, *real.parents) if p.exists())
    if not existing.is_dir():
        raise PlanError(Problem(where, f"'{existing}' is a file, not a folder", "fix the path"))
    # the save is written beside DIR and renamed onto it: that folder must take new files
    beside = real.parent if real.parent.exists() else existing
    if not os.access(beside, os.W_OK | os.X_OK) or read_only(beside):
        raise PlanError(Problem(where, f"cannot write in '{beside}' (read-only or no permission)",
                                "pick a folder you can write to"))  # fmt: skip
    return real


def check_shard_size(value: str | int | None) -> int | None:
    """Bytes per saved weight file: an int is bytes, a string is read as every size qconf
    reads (qconf.units.parse_size: `5GB`, `500MiB`; a bare number is GiB); None leaves the
    libraries' default."""
    from qconf.units import parse_size

    if value is None or isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if not isinstance(value, str):
        raise PlanError(Problem("--max-shard-size", f"{value!r} is not a size",
                                "write e.g. 5GB or 500MiB"))  # fmt: skip
    return parse_size(value, "--max-shard-size")


def adapter_problems(pipeline: Any) -> list[Problem]:
    """Parts carrying LoRA/peft adapters: saving them as base weights would write peft-style
    keys that reload as randomly initialised layers."""
    problems = []
    for name, part in getattr(pipeline, "components", {}).items():
        if getattr(part, "peft_config", None) or getattr(part, "_hf_peft_config_loaded", False):
            problems.append(
                Problem(
                    name,
                    "carries LoRA/peft adapters; qconf.save writes base pipelines only",
                    "save the adapters with pipeline.save_lora_weights(...) (or the part's "
                    "save_lora_adapter) and the base with qconf.save before adding them",
                )
            )
    return problems


def save_pipeline(
    loaded: Loaded,
    target: str | Path,
    *,
    force: bool = False,
    max_shard_size: str | int | None = None,
    listing: list[tuple] | None = None,
) -> Path:
    """Write the loaded pipeline + qconf.yaml to `target`, atomically (see module docstring).
    `listing` (from `snapshot`, taken when the save was first checked) is what --force may
    replace; anything added later survives."""
    import yaml

    check_can_save(loaded.resolved, target, force=force)
    max_shard_size = check_shard_size(max_shard_size)
    adapters = adapter_problems(loaded.pipeline)
    if adapters:
        raise PlanError(adapters)
    path = save_target(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    listing = snapshot(target) if listing is None else listing
    with _save_lock(path):
        _remove_stale(path)
        staging = Path(
            tempfile.mkdtemp(dir=path.parent, prefix=f"{_hidden(path)}tmp-{os.getpid()}-")
        )
        try:
            loaded.pipeline.save_pretrained(
                staging, safe_serialization=True, max_shard_size=max_shard_size
            )
            _drop_origin_paths(staging)
            record = {"versions": library_versions(), "plan": loaded.resolved.to_json()}
            (staging / PLAN_FILE).write_text(yaml.safe_dump(record, sort_keys=False))
            _move_into_place(staging, path, target, force=force, listing=listing)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return path


def _drop_origin_paths(staging: Path) -> None:
    """diffusers/transformers record where each part was loaded from (`_name_or_path`): a path
    on this machine (from QCONF_CACHE, the home folder) has no place in a folder meant to be
    shared, and the reload does not need it."""
    import json

    for config in [staging / "model_index.json", *sorted(staging.glob("*/config.json"))]:
        if not config.is_file():
            continue
        data = json.loads(config.read_text())
        if isinstance(data, dict) and "_name_or_path" in data:
            del data["_name_or_path"]
            config.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _hidden(path: Path) -> str:
    return f".{path.name}.qconf-"


@contextmanager
def _save_lock(path: Path) -> Iterator[None]:
    """One save into DIR at a time: a marker beside DIR holding the saver's pid, created with
    its content in one step (link(2) of a written file fails if the marker exists). A marker
    whose process is gone is stale and taken over."""
    lock = path.parent / f"{_hidden(path)}lock"
    mine = path.parent / f"{_hidden(path)}lock-{os.getpid()}-{threading.get_ident()}"
    try:
        mine.write_text(str(os.getpid()))
    except OSError as exc:  # a read-only file system, a folder we may not write in
        raise PlanError(Problem("--save", f"cannot write in '{path.parent}' ({exc.strerror})",
                                "pick a folder you can write to")) from None  # fmt: skip
    try:
        for _ in range(3):
            try:
                os.link(mine, lock)
                break
            except FileExistsError:
                _take_over_if_stale(lock, path)
        else:
            raise PlanError(Problem("--save", f"cannot lock '{lock}'", "remove it if stale"))
    finally:
        mine.unlink(missing_ok=True)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _marker_text(marker: Path) -> str:
    """A lock marker's text; anything but a small regular file (a FIFO, a link to a device)
    reads as no owner, so it is moved aside like a stale marker, never read."""
    from qconf.errors import QconfError
    from qconf.trust.reading import read_regular

    try:
        return read_regular(marker, "the lock file", 64, follow_symlinks=False).decode(
            "utf-8", errors="replace"
        )
    except (QconfError, OSError):
        return ""


def _take_over_if_stale(lock: Path, path: Path) -> None:
    owner = _pid_in(_marker_text(lock))
    if owner is None or not _alive(owner):
        # Move the stale marker aside (only one process can), then check it was the stale one.
        aside = lock.with_name(f"{lock.name}-stale-{os.getpid()}-{threading.get_ident()}")
        try:
            os.rename(lock, aside)
        except FileNotFoundError:
            return
        moved = _pid_in(_marker_text(aside))
        if moved is None or not _alive(moved):
            aside.unlink(missing_ok=True)
            return
        try:  # we moved a fresh marker: put it back
            os.link(aside, lock)
        finally:
            aside.unlink(missing_ok=True)
        owner = moved
    raise PlanError(
        Problem("--save", f"another qconf process (pid {owner}) is saving into '{path}'",
                "wait for it, or pick another folder")
    )  # fmt: skip


def _pid_in(text: str) -> int | None:
    return int(text) if text.strip().isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _remove_stale(path: Path) -> None:
    """Temp folders of earlier saves into DIR whose process died (killed mid-save)."""
    prefix = _hidden(path)
    for kind in ("tmp", "old"):
        for stale in path.parent.glob(f"{prefix}{kind}-*"):
            pid = _pid_in(stale.name[len(prefix) + len(kind) + 1 :].split("-", 1)[0])
            if stale.is_dir() and not stale.is_symlink() and pid is not None and not _alive(pid):
                shutil.rmtree(stale, ignore_errors=True)


def _move_into_place(
    staging: Path, path: Path, target: str | Path, *, force: bool, listing: list[tuple]
) -> None:
    """rename(2) onto DIR succeeds only if DIR is absent or empty *at that instant*: anything
    written into DIR meanwhile survives and the save fails. With force, the old DIR is first
    moved aside (and deleted once the new one is in place) — if it is still what it was when
    the save started (`listing`); what someone wrote into it meanwhile is never deleted."""
    if path.is_symlink():  # replaced by a symlink since the check
        raise PlanError(Problem("--save", f"'{target}' became a symlink", "nothing was written"))
    if force and path.is_dir() and any(path.iterdir()):
        _replace(staging, path, target, listing)
        return
    try:
        os.rename(staging, path)
    except OSError as exc:
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
            raise PlanError(
                Problem(
                    "--save",
                    f"'{target}' was written to by someone else while saving; left as it is",
                    "pass --force to replace it, or pick another folder",
                )
            ) from None
        raise


def _replace(staging: Path, path: Path, target: str | Path, listing: list[tuple]) -> None:
    retired = Path(tempfile.mkdtemp(dir=path.parent, prefix=f"{_hidden(path)}old-{os.getpid()}-"))
    old = retired / path.name
    os.rename(path, old)  # from here on, nobody can write into the old DIR by its name
    changed = _listing(old) != listing
    if not changed:
        try:
            os.rename(staging, path)
        except OSError:
            changed = True  # DIR was created again meanwhile
        else:
            shutil.rmtree(retired, ignore_errors=True)
            return
    try:
        os.rename(old, path)
        retired.rmdir()
    except OSError:
        raise PlanError(
            Problem("--save", f"'{target}' changed while saving; its old content is in '{old}'",
                    "move it back, then save again")
        ) from None  # fmt: skip
    raise PlanError(
        Problem("--save", f"'{target}' changed while saving; left as it is",
                "save again (with --force to replace it)")
    )  # fmt: skip


def snapshot(target: str | Path) -> list[tuple]:
    """What --force would replace in DIR, as of now."""
    return _listing(save_target(target))


def _listing(path: Path) -> list[tuple]:
    """What DIR holds (names, sizes, modification times), to tell whether it changed."""
    if not path.is_dir():
        return []
    entries = []
    for root, dirs, files in os.walk(path):
        for name in sorted(dirs + files):
            stat = os.lstat(os.path.join(root, name))
            entries.append((os.path.relpath(os.path.join(root, name), path), stat.st_size,
                            stat.st_mtime_ns, stat.st_mode))  # fmt: skip
    return sorted(entries)


def library_versions() -> dict[str, str]:
    names = [*_VERSIONED, *(spec.distribution for spec in REGISTRY.values())]
    versions: dict[str, Any] = {}
    for name in dict.fromkeys(names):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions
