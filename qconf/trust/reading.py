"""The one way qconf opens a file that comes from outside (model folders, plan and config
files, run folders, caches, adapters): regular files only, checked on the open descriptor (a
FIFO, socket or device would block or never end, and a swap between a check and the open
cannot slip one in), with a size cap before anything is read. A refusal is one error line
naming the file."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qconf.errors import ModelSourceError, Problem


def bad_file(path: Path | str, what: str, fix: str = "") -> ModelSourceError:
    """The error for a file from outside that qconf will not read: `where` is the file."""
    return ModelSourceError(Problem(str(path), what, fix or "fix or replace the file"))


@contextlib.contextmanager
def open_regular(
    path: Path | str, what: str, max_bytes: int | None = None, *, follow_symlinks: bool = True
) -> Iterator[Any]:
    """A binary handle on `path` only if it is a regular file (a FIFO, socket or device would
    block or never end), checked on the open descriptor (no swap in between) and, with
    `max_bytes`, no larger than that. Every file from outside qconf is opened through here."""
    if on_pseudo_filesystem(path):
        raise bad_file(path, f"{what} is a kernel file (/proc, /sys, /dev), not a regular file",
                       "replace it with a plain file")  # fmt: skip
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise bad_file(
            path, f"cannot read {what} ({exc.strerror or exc})", "check the path"
        ) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise bad_file(
                path,
                f"{what} is not a regular file (a folder, FIFO, socket or device)",
                "replace it with a plain file",
            )
        if max_bytes is not None and info.st_size > max_bytes:
            raise bad_file(path, f"{what} is {info.st_size:,} bytes, over qconf's limit of "
                           f"{max_bytes:,}")  # fmt: skip
        os.set_blocking(fd, True)
        handle = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with handle:
        yield handle


# Files there say they are regular yet block or never end (/proc/kmsg, /sys/.../trigger).
_PSEUDO_ROOTS = ("/proc", "/sys", "/dev")


def on_pseudo_filesystem(path: Path | str) -> bool:
    try:
        real = os.path.realpath(path)
    except (OSError, ValueError):
        return False  # open() reports it
    return any(real == root or real.startswith(root + os.sep) for root in _PSEUDO_ROOTS)


def read_regular(
    path: Path | str, what: str, max_bytes: int, *, follow_symlinks: bool = True
) -> bytes:
    """All bytes of a regular file of at most `max_bytes` (see open_regular)."""
    with open_regular(path, what, max_bytes, follow_symlinks=follow_symlinks) as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:  # grew after the check
        raise bad_file(path, f"{what} is over qconf's limit of {max_bytes:,} bytes")
    return data
