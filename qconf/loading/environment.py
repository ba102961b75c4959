"""Environment checks (package installed, GPU present) — separate from pure validation.
Torch-free unless torch is already imported, so `qconf validate` stays fast."""

from __future__ import annotations

import os
import sys
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec
from pathlib import Path

from qconf.backends import CPU_ALTERNATIVE, REGISTRY, Backend
from qconf.errors import BackendUnavailableError, Problem
from qconf.plan.resolve import ResolvedPlan


def is_installed(spec: Backend) -> bool:
    """Whether the backend's package can be imported (found, not imported)."""
    return _importable(spec.module)


@cache
def _importable(module: str) -> bool:
    try:
        return find_spec(module.split(".")[0]) is not None and find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def installed_version(spec: Backend) -> str | None:
    """The backend's package version, or None when it is not installed (does not import it)."""
    if not is_installed(spec):
        return None
    try:
        return version(spec.distribution)
    except PackageNotFoundError:
        return None


def cuda_available() -> bool:
    """torch's answer when torch is loaded; otherwise whether an NVIDIA GPU is visible."""
    if "torch" in sys.modules:
        return bool(sys.modules["torch"].cuda.is_available())
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return False
    gpus = Path("/proc/driver/nvidia/gpus")
    return (gpus.is_dir() and any(gpus.iterdir())) or Path("/dev/nvidia0").exists()


def environment_problems(resolved: ResolvedPlan) -> list[Problem]:
    problems: list[Problem] = []
    missing: set[str] = set()
    has_cuda: bool | None = None
    for name, part in resolved.quantized.items():
        where = f"quant.mapping.{name}" if resolved.mode == "granular" else "quant.backend"
        spec = REGISTRY[part.backend]
        if not is_installed(spec):
            if spec.key not in missing:
                missing.add(spec.key)
                problems.append(
                    Problem(
                        where,
                        f"backend {spec.key} needs the package {spec.distribution}, not installed",
                        f"pip install 'qconf[{spec.extra}]'",
                    )
                )
            continue
        reason = part.entry.cuda_reason(part.library)  # type: ignore[arg-type]
        if reason is None:
            continue
        if has_cuda is None:
            has_cuda = cuda_available()
        on_gpu = resolved.plan.model.device_map in ("balanced", "cuda")
        if has_cuda and spec.key == "torchao" and not on_gpu:
            # torchao quantizes where the weights are loaded; without a device map that is the
            # CPU, where CUDA-only kernels fail deep inside the load.
            problems.append(
                Problem(
                    where,
                    f"{spec.key} on '{name}' quantizes where the weights load, and without a "
                    f"device map they load on the CPU: {reason}",
                    "add model.device_map=cuda",
                )
            )
        if not has_cuda:
            problems.append(
                Problem(
                    where,
                    f"{spec.key} on '{name}' ({part.library} part) needs a CUDA GPU and none is "
                    f"visible: {reason}",
                    CPU_ALTERNATIVE,
                )
            )
    device_map = resolved.plan.model.device_map
    if device_map in ("balanced", "cuda") and not (has_cuda or cuda_available()):
        problems.append(
            Problem(
                "model.device_map",
                f"'{device_map}' places parts on CUDA GPUs and none is visible",
                "drop model.device_map (or set it to cpu) on this machine",
            )
        )
    return problems


def check_environment(resolved: ResolvedPlan) -> None:
    problems = environment_problems(resolved)
    if problems:
        raise BackendUnavailableError(problems)


def cpu_runnable_options(extra_dirs: tuple[Path, ...] = ()) -> list[str]:
    """Backend options that need no CUDA GPU on any part (torch-free)."""
    from pydantic import TypeAdapter

    from qconf.backends import LIBRARIES, BackendEntry
    from qconf.plan.conftree import backend_options

    entries = TypeAdapter(BackendEntry)
    runnable = []
    for name, option in backend_options(extra_dirs).items():
        entry = entries.validate_python(option)
        if all(entry.cuda_reason(library) is None for library in LIBRARIES):
            runnable.append(name)
    return runnable
