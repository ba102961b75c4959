"""Every path a user gives (model.source, --folder, --config-dir, -o, --plot, QCONF_CACHE) goes
through `user_path`; every file qconf writes for a user goes through `atomic_output`, so that a
failed or interrupted write leaves nothing half-written behind."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from qconf.errors import PlanError, Problem

MAX_NAME_BYTES = 255  # NAME_MAX and PATH_MAX on Linux
MAX_PATH_BYTES = 4096


def user_path(text: str | os.PathLike[str], where: str) -> Path:
    """`text` as a Path, `~` and `~user` expanded; an unknown user or a NUL byte is a PlanError
    at `where` (Path.expanduser would raise RuntimeError, open() ValueError)."""
    raw = os.fspath(text)
    if not raw:
        raise PlanError(Problem(where, "empty path", "give a path"))
    if "\0" in raw:
        raise PlanError(Problem(where, "the path contains a NUL byte", "give a plain path"))
    longest = max((len(os.fsencode(part)) for part in raw.split(os.sep)), default=0)
    if len(os.fsencode(raw)) > MAX_PATH_BYTES or longest > MAX_NAME_BYTES:
        raise PlanError(
            Problem(where, f"'{raw[:40]}...' is longer than a path can be here",
                    f"at most {MAX_NAME_BYTES} bytes per name and {MAX_PATH_BYTES} in all")
        )  # fmt: skip
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
    if (path.exists() or path.is_symlink()) and not path.is_file():
        # a device, FIFO or socket (/dev/null): replacing it would remove a system file
        raise PlanError(Problem(where, f"'{path}' is not a regular file", "give a file path"))
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
    if not os.access(existing, os.W_OK | os.X_OK) or read_only(existing):
        raise PlanError(Problem(where, f"cannot write in '{existing}' (permission denied)",
                                "pick another folder"))  # fmt: skip
    return path


def read_only(folder: Path) -> bool:
    """On a file system mounted read-only (os.access says yes to root there)."""
    try:
        return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)
    except OSError:
        return False


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
        import tempfile  # here: its import (random, hashlib) is not free on validate's path

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


# --- writing into folders others may write too (a shared QCONF_CACHE, a config dir) -----------
# `atomic_output` follows symbolic links in the target's path: right for a path the user typed,
# wrong for a folder someone else can change between qconf's check and its write (a link swapped
# in meanwhile would receive the file). `real_folder` opens every component from the named
# folder down without following links and keeps the descriptor; `replace_in` writes through it.

_NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_FOLDER_FLAGS = os.O_RDONLY | _DIRECTORY | _NO_FOLLOW | _CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NO_FOLLOW | _CLOEXEC


@dataclass
class RealFolder:
    """An open folder reached without following a symbolic link at or below `path`'s own name."""

    path: Path  # as named (absolute); shown in messages and used by `still_there`
    fd: int
    chain: list[tuple[Path, int, int]]  # every component opened: (path, st_dev, st_ino)

    def still_there(self, where: str) -> None:
        """Refuse if any component's path no longer leads to the folder opened (a link or
        another folder was put in its place meanwhile)."""
        for path, device, inode in self.chain:
            try:
                info = os.lstat(path)
            except OSError as exc:
                raise _folder_problem(path, where, f"disappeared ({exc.strerror})") from None
            if stat.S_ISLNK(info.st_mode):
                raise _folder_problem(path, where, "became a symbolic link")
            if (info.st_dev, info.st_ino) != (device, inode):
                raise _folder_problem(path, where, "was replaced by another folder")


@contextlib.contextmanager
def real_folder(
    root: str | os.PathLike[str], below: Sequence[str], where: str, *, create: bool = True
) -> Iterator[RealFolder]:
    """`root/below[0]/...` opened component by component with O_NOFOLLOW, each relative to the
    descriptor of the one before (created when missing if `create`): a symbolic link at `root`'s
    own name or below it is a PlanError at `where`. The path above `root` is the user's and is
    followed. The descriptor is closed on exit."""
    top = Path(os.path.abspath(user_path(root, where)))
    if create:
        make_folder(top.parent, where)
    names = [top.name, *below] if top.name else list(below)
    try:
        fd = os.open(top.parent, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
    except OSError as exc:
        raise _folder_problem(top.parent, where, f"cannot be opened ({exc.strerror})") from None
    path, chain = top.parent, []
    try:
        for name in names:
            path = path / name
            child = _open_child(fd, name, path, where, create=create)
            os.close(fd)
            fd = child
            info = os.fstat(fd)
            chain.append((path, info.st_dev, info.st_ino))
        yield RealFolder(path, fd, chain)
    finally:
        os.close(fd)


def _open_child(parent: int, name: str, path: Path, where: str, *, create: bool) -> int:
    if create:
        try:
            os.mkdir(name, 0o777, dir_fd=parent)
        except FileExistsError:
            pass  # a folder, a file or a link: opening it below tells which
        except OSError as exc:
            raise _folder_problem(path, where, f"cannot be created ({exc.strerror})") from None
    try:
        return os.open(name, _FOLDER_FLAGS, dir_fd=parent)
    except OSError as exc:
        raise _folder_problem(path, where, _why_not_a_folder(parent, name, exc)) from None


def _why_not_a_folder(parent: int, name: str, exc: OSError) -> str:
    try:
        info = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except OSError:
        return f"cannot be opened ({exc.strerror})"
    if stat.S_ISLNK(info.st_mode):
        return "is a symbolic link (qconf writes only into real folders)"
    if not stat.S_ISDIR(info.st_mode):
        return "is not a folder"
    return f"cannot be opened ({exc.strerror})"


def _folder_problem(path: Path, where: str, what: str) -> PlanError:
    return PlanError(Problem(where, f"'{path}' {what}", "remove it or pick another folder"))


def replace_in(
    folder: RealFolder,
    name: str,
    data: bytes,
    where: str,
    *,
    overwrite: bool = True,
    replace_link: bool = True,
    check: Callable[[Path], None] | None = None,
) -> Path:
    """Write `data` as `folder/name`, all or nothing: into a new hidden temp file created in the
    real folder through its descriptor (`.<stem>.tmp-<random><suffix>`, so a preset stays a
    preset), then `check(temp path)` (may raise: nothing is written), the folder's path checked
    again, then renamed onto `name`. The rename replaces a link at `name` instead of following
    it; `replace_link=False` refuses one, `overwrite=False` refuses any existing `name`."""
    target = folder.path / name
    stem, suffix = os.path.splitext(name)
    temp = f".{stem}.tmp-{os.urandom(6).hex()}{suffix}"
    try:
        handle = os.open(temp, _NEW_FILE_FLAGS, 0o666, dir_fd=folder.fd)  # umask applies
    except OSError as exc:
        raise PlanError(Problem(where, f"cannot write in '{folder.path}' ({exc.strerror})",
                                "pick another folder")) from None  # fmt: skip
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        if check is not None:
            check(folder.path / temp)
        folder.still_there(where)
        _refuse_existing(folder, name, target, where, overwrite=overwrite, links=replace_link)
        _move(folder, temp, name, target, where, overwrite=overwrite)
    except OSError as exc:
        raise PlanError(Problem(where, f"cannot write '{target}' ({exc.strerror or exc})",
                                "pick another folder")) from None  # fmt: skip
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp, dir_fd=folder.fd)
    return target


def _refuse_existing(
    folder: RealFolder, name: str, target: Path, where: str, *, overwrite: bool, links: bool
) -> None:
    try:
        info = os.stat(name, dir_fd=folder.fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode) and not links:
        raise PlanError(Problem(where, f"'{target}' is a symbolic link",
                                "remove it or pick another name"))  # fmt: skip
    if stat.S_ISDIR(info.st_mode):
        raise PlanError(Problem(where, f"'{target}' is a folder", "pick another name"))
    if not overwrite:
        raise _exists(target, where)


def _move(folder: RealFolder, temp: str, name: str, target: Path, where: str, *,
          overwrite: bool) -> None:  # fmt: skip
    fd = folder.fd
    if overwrite:
        os.replace(temp, name, src_dir_fd=fd, dst_dir_fd=fd)  # never follows a link at `name`
        return
    try:  # link(2) fails if `name` exists, however recently it appeared: no replace by accident
        os.link(temp, name, src_dir_fd=fd, dst_dir_fd=fd, follow_symlinks=False)
    except FileExistsError:
        raise _exists(target, where) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        os.replace(temp, name, src_dir_fd=fd, dst_dir_fd=fd)  # no hard links here: checked above


def _exists(target: Path, where: str) -> PlanError:
    return PlanError(Problem(where, f"'{target}' already exists",
                             "pick another name, or add --force to replace it"))  # fmt: skip
