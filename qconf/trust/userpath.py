"""Every path a user gives (model.source, --folder, --config-dir, -o, --plot, QCONF_CACHE) goes
through `user_path`; every file qconf writes for a user goes through `atomic_output`, so that a
failed or interrupted write leaves nothing half-written behind."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from qconf.errors import PlanError, Problem


def user_path(text: str | os.PathLike[str], where: str) -> Path:
    """`text` as a Path, `~` and `~user` expanded; an unknown user or a NUL byte is a PlanError
    at `where` (Path.expanduser would raise RuntimeError, open() ValueError)."""
    raw = os.fspath(text)
    if not raw:
        raise PlanError(Problem(where, "empty path", "give a path"))
    if "\0" in raw:
        raise PlanError(Problem(where, "the path contains a NUL byte", "give a plain path"))
    expanded = os.path.expanduser(raw)
    if expanded.startswith("~"):
        user = expanded[1:].split(os.sep, 1)[0]
        what = f"no user '{user}' on this machine" if user else "no home folder is known"
        raise PlanError(
            Problem(where, f"'{raw}': {what}", "write the full path, or ~/... for your own home")
        )
    return Path(expanded)


def _writable_target(path: Path, where: str) -> None:
    if path.is_dir():
        raise PlanError(Problem(where, f"'{path}' is a folder", "give a file name inside it"))
    parent = path.parent
    if not parent.is_dir():
        raise PlanError(
            Problem(
                where, f"folder '{parent}' does not exist", f"create it first: mkdir -p {parent}"
            )
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PlanError(
            Problem(where, f"cannot write in '{parent}' (permission denied)", "pick another path")
        )


def output_folder(folder: str | os.PathLike[str], where: str) -> Path:
    """A folder qconf will create (if needed) and write into, checked before any work: it is a
    folder or can become one (its nearest existing ancestor is a writable folder)."""
    path = user_path(folder, where)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.is_symlink() or not existing.is_dir():
        raise PlanError(Problem(where, f"'{existing}' is not a folder", "pick another folder"))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PlanError(Problem(where, f"cannot write in '{existing}' (permission denied)",
                                "pick another folder"))  # fmt: skip
    return path


def make_folder(folder: Path, where: str) -> Path:
    """mkdir -p, any failure as one line at `where`."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PlanError(Problem(where, f"cannot create '{folder}' ({exc.strerror or exc})",
                                "pick another folder")) from None  # fmt: skip
    return folder


@contextlib.contextmanager
def atomic_output(target: str | os.PathLike[str], where: str) -> Iterator[Path]:
    """Yield a temporary file beside `target`; on success it replaces `target` atomically, on any
    failure it is removed. Problems with the target are PlanErrors at `where`."""
    path = user_path(target, where)
    _writable_target(path, where)
    try:
        handle, name = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent
        )
    except OSError as exc:
        raise PlanError(
            Problem(where, f"cannot write in '{path.parent}' ({exc.strerror})", "pick another path")
        ) from None
    os.close(handle)
    temp = Path(name)
    try:
        yield temp
        os.chmod(temp, 0o666 & ~_umask())
        os.replace(temp, path)
    except OSError as exc:
        raise PlanError(
            Problem(where, f"cannot write '{path}' ({exc.strerror or exc})", "pick another path")
        ) from None
    finally:
        temp.unlink(missing_ok=True)


def write_text(target: str | os.PathLike[str], text: str, where: str) -> Path:
    """Write `text` to `target` atomically (see atomic_output); returns the expanded path."""
    with atomic_output(target, where) as temp:
        temp.write_text(text, encoding="utf-8")
    return user_path(target, where)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
