"""Known-failing combinations: a backend variant on a part class, on a device, in a load dtype.

Each backend module lists its own rows (`Backend.known_failures`, `KnownFailure` in base.py),
measured by `python -m qconf.sensitivity.capability_walk` (every option × every weight-bearing
part of the tiny families, one real forward each; bench/capability-table.md) and kept honest by
tests/test_capability.py, which checks both ways that validate's verdict and a real forward
agree. Torch-free: validate looks rows up
by the part's class name (model_index.json or the pipeline table) and never imports torch."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from qconf.backends.base import Device, EntryBase, KnownFailure

# Load dtypes the walk measured on CPU: a row names those of them the combination fails in, so a
# dtype listed here and absent from a row is measured to work.
MEASURED_DTYPES: dict[Device, tuple[str, ...]] = {"cpu": ("bfloat16", "float16", "float32")}

_IGNORED: ContextVar[bool] = ContextVar("qconf_known_failures_ignored", default=False)


@contextmanager
def known_failures_ignored() -> Iterator[None]:
    """Load without the known-failure refusal: what the capability walk does to measure."""
    token = _IGNORED.set(True)
    try:
        yield
    finally:
        _IGNORED.reset(token)


def known_failure(
    entry: EntryBase, part_class: str, device: Device, dtype: str | None
) -> KnownFailure | None:
    """The row saying `entry` fails on a `part_class` part on `device` in load dtype `dtype`, or
    None. A None dtype (the library's default) matches no row: nothing was measured for it."""
    if _IGNORED.get() or dtype is None:
        return None
    variant = entry.variant()
    for row in entry.spec.known_failures:
        if (row.variant, row.part_class, row.device) == (variant, part_class, device) and (
            dtype in row.dtypes
        ):
            return row
    return None


def works_in(row: KnownFailure) -> list[str]:
    """Load dtypes measured to work for the row's combination (for the fix line)."""
    return [d for d in MEASURED_DTYPES.get(row.device, ()) if d not in row.dtypes]
