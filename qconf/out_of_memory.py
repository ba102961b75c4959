"""Running out of memory is what this tool is for: say so in one line, with what to do next,
instead of a traceback from deep inside torch."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from qconf.errors import OutOfMemory, Problem, QconfError

# torch reports a failed CPU allocation as a plain RuntimeError with this text.
_CPU_ALLOCATOR = "DefaultCPUAllocator: can't allocate memory"


def _is_out_of_memory(exc: BaseException) -> bool:
    # By name: torch.OutOfMemoryError (CUDA, MPS, XPU), without importing torch here.
    return (
        isinstance(exc, MemoryError)
        or type(exc).__name__ == "OutOfMemoryError"
        or (isinstance(exc, RuntimeError) and _CPU_ALLOCATOR in str(exc))
    )


_FIXES = {
    "loading": "compare `qconf estimate` (weights and load peak) with your memory, pick a plan "
    "that fits (`qconf list presets --fits SIZE`), quantize more parts, or spread parts over "
    "devices with model.device_map=balanced",
    "generating": "activations grow with run.height, run.width and frames: lower them, or pick "
    "a smaller plan (`qconf list presets --fits SIZE`) to leave more room",
}


@contextmanager
def out_of_memory_as_error(stage: str) -> Iterator[None]:
    """Turn an out-of-memory failure while `stage` ("loading", "generating") into one line."""
    try:
        yield
    except Exception as exc:
        if isinstance(exc, QconfError) or not _is_out_of_memory(exc):
            raise
        where = "GPU" if type(exc).__name__ == "OutOfMemoryError" else "CPU"
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise OutOfMemory(
            Problem(
                stage,
                f"ran out of {where} memory ({type(exc).__name__}: {first})",
                _FIXES[stage],
            )
        ) from None
