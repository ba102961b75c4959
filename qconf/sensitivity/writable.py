"""Output folders of the measuring commands (sensitivity's --out, tune's preset folder), proven
writable before any work: os.access says yes to root on a read-only or virtual file system
(/proc), where the first write would fail only after the measurements."""

from __future__ import annotations

import contextlib
from pathlib import Path

from qconf.errors import PlanError, Problem


def writable_folder(folder: str | Path, where: str) -> Path:
    """`folder`, proven writable before any work: created (with the folders above it) and a
    file made and removed in it; what this made is removed again, so a refusal or a later
    failure leaves nothing behind. A refusal is one line at `where`."""
    import tempfile

    from qconf.trust.userpath import output_folder

    path = output_folder(folder, where)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    doing = "create"
    try:
        path.mkdir(parents=True, exist_ok=True)
        doing = "write in"
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise PlanError(Problem(where, f"cannot {doing} '{path}' ({exc.strerror or exc})",
                                "pick another folder")) from None  # fmt: skip
    finally:
        made = path
        while made != existing and made != made.parent:
            with contextlib.suppress(OSError):
                made.rmdir()
            made = made.parent
    return path
