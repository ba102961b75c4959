"""Running out of memory is what this tool is for: on the command line it is one line with what
to do next, instead of a traceback from deep inside torch. The Python API raises torch's own
error unchanged (callers catch `torch.OutOfMemoryError` to fall back to offloading); the CLI
converts it with `out_of_memory_problem`.

What cannot be reported: a process the kernel's OOM killer ends (exit 137) prints nothing."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

from qconf.errors import OutOfMemory, Problem

Stage = Literal["loading", "generating", "running"]

# torch reports some allocation failures as plain RuntimeErrors: the CPU allocator, MPS
# ("MPS backend out of memory"), and CUDA errors raised by kernels ("CUDA error: out of memory").
_TEXT = re.compile(r"DefaultCPUAllocator: can't allocate memory|\bout of memory\b", re.IGNORECASE)

_FIXES: dict[Stage, str] = {
    "loading": "compare `qconf estimate` (weights and load peak) with your memory, pick a plan "
    "that fits (`qconf list presets --fits SIZE`), quantize more parts, or spread parts over "
    "devices with model.device_map=balanced",
    "generating": "activations grow with run.height, run.width and, for a video pipeline, "
    "run.num_frames (null makes the model's whole clip, e.g. 81 frames for Wan): lower them "
    "(e.g. run.num_frames=5), or pick a smaller plan (`qconf list presets --fits SIZE`) to "
    "leave more room",
    "running": "check the plan's weights and load peak with `qconf estimate`, and pick a plan "
    "that fits (`qconf list presets --fits SIZE`)",
}


def out_of_memory_cause(exc: BaseException) -> BaseException | None:
    """The out-of-memory error in `exc`'s chain (diffusers wraps one raised while reading a
    checkpoint in an OSError), or None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if (
            isinstance(current, MemoryError)
            or type(current).__name__ == "OutOfMemoryError"  # torch's, without importing torch
            or (isinstance(current, RuntimeError) and _TEXT.search(str(current)))
        ):
            return current
        current = current.__cause__ or current.__context__
    return None


def out_of_memory_problem(exc: BaseException, stage: Stage = "running") -> Problem | None:
    """One line for an out-of-memory failure while `stage`, or None if `exc` is not one."""
    cause = out_of_memory_cause(exc)
    if cause is None:
        return None
    text = str(cause).strip()
    gpu = type(cause).__name__ == "OutOfMemoryError" or re.search(r"CUDA|MPS|XPU|HIP", text)
    found = type(cause).__name__ + (f": {text.splitlines()[0][:300]}" if text else "")
    return Problem(stage, f"ran out of {'GPU' if gpu else 'CPU'} memory ({found})", _FIXES[stage])


@contextmanager
def out_of_memory_as_error(stage: Stage) -> Iterator[None]:
    """For command-line code: an out-of-memory failure inside becomes `OutOfMemory` (one line,
    exit 2); everything else passes through unchanged."""
    try:
        yield
    except Exception as exc:
        problem = out_of_memory_problem(exc, stage)
        if problem is None:
            raise
        raise OutOfMemory(problem) from exc
