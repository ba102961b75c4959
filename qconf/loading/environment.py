"""Environment checks (package installed, GPU present) — separate from pure validation.
Torch-free unless torch is already imported, so `qconf validate` stays fast."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator, Sequence
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from importlib.util import find_spec
from pathlib import Path

from qconf.backends import (
    REGISTRY,
    Backend,
    EntryBase,
    KnownFailure,
    known_failure,
)
from qconf.errors import BackendUnavailableError, Problem, QconfError
from qconf.plan.resolve import ResolvedPart, ResolvedPlan


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
        why_not = spec.unusable() if spec.unusable is not None else None
        if why_not is not None:
            if spec.key not in missing:
                missing.add(spec.key)
                problems.append(Problem(where, f"{spec.key} is {why_not}", spec.cpu_alternative))
            continue
        saved = resolved.parts.parts[name].saved_quantization is not None
        if not spec.quantizes_on_load and not saved and is_installed(spec):
            try:  # a file the entry names: broken or of another layout, before anything loads
                part.entry.check_file(
                    f"{where}.{part.entry.source_field}", resolved.parts.parts[name].class_name
                )
            except QconfError as exc:
                problems += exc.problems
                continue
        reason = part.entry.cuda_reason(part.library)  # type: ignore[arg-type]
        if reason is not None and has_cuda is None:
            has_cuda = cuda_available()
        # without the GPU it needs, installing the package would not help: say that instead
        if not is_installed(spec) and (reason is None or has_cuda):
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
        dtype = resolved.torch_dtype
        if spec.load_dtypes and dtype not in (None, *spec.load_dtypes):
            problems.append(
                Problem(
                    "model.torch_dtype",
                    f"{dtype}, but {spec.key} on '{name}' computes in "
                    f"{' or '.join(spec.load_dtypes)} only (it fails after the weights are read)",
                    f"set model.torch_dtype={spec.load_dtypes[0]}",
                )
            )
            continue
        if reason is None:
            problems += _known_failure_problems(resolved, name, part, where)
            continue
        if has_cuda is None:
            has_cuda = cuda_available()
        on_gpu = resolved.plan.model.device_map in ("balanced", "cuda")
        if has_cuda and spec.quantizes_where_loaded and not on_gpu:
            # without a device map the weights load on the CPU, where CUDA-only kernels fail
            # deep inside the load
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
                    spec.cpu_alternative,
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


def run_device(resolved: ResolvedPlan) -> str:
    """Where the parts compute: diffusers' device map puts them on CUDA; otherwise the pipeline
    stays on the CPU (qconf never moves it)."""
    return "cuda" if resolved.plan.model.device_map in ("balanced", "cuda") else "cpu"


def _known_failure_problems(
    resolved: ResolvedPlan, name: str, part: ResolvedPart, where: str
) -> list[Problem]:
    """A measured failure of this entry on this part's class, here (qconf.backends.capabilities)."""
    class_name = resolved.parts.parts[name].class_name
    device = run_device(resolved)
    row = known_failure(part.entry, class_name, device, resolved.torch_dtype)  # type: ignore[arg-type]
    if row is None:
        return []
    named = (resolved.mode == "granular" and _option_name(part.entry)) or part.entry.describe()
    what = (
        f"{named} on '{name}' ({class_name}) fails on {device.upper()} in {resolved.torch_dtype}: "
        f"{row.reason}"
    )
    return [Problem(where, what, _alternatives(resolved, name, part, row))]


def _alternatives(resolved: ResolvedPlan, name: str, part: ResolvedPart, row: KnownFailure) -> str:
    """The fix line: options measured to work on this part's class here (same backend first),
    and the load dtypes the failing one works in."""
    from qconf.backends.capabilities import works_in

    class_name = resolved.parts.parts[name].class_name
    device = run_device(resolved)
    working = [
        option
        for option, entry in _option_entries().items()
        if not entry.check(part.library)  # type: ignore[arg-type]
        and (device == "cuda" or entry.cuda_reason(part.library) is None)  # type: ignore[arg-type]
        and known_failure(entry, class_name, device, resolved.torch_dtype) is None  # type: ignore[arg-type]
    ]
    working.sort(key=lambda option: _option_entries()[option].backend != part.backend)
    fixes = []
    if working:
        where = "" if resolved.mode == "granular" else f" for '{name}' in quant.mapping"
        fixes.append(f"use {', '.join(working[:3])}{where} (they run on {class_name} here)")
    dtypes = works_in(row)
    if dtypes:
        fixes.append(f"set model.torch_dtype={' or '.join(dtypes)}")
    if resolved.mode == "global":
        fixes.append(f"leave '{name}' out of quant.components")
    return ", or ".join(fixes) or f"leave '{name}' unquantized"


def _option_name(entry: EntryBase) -> str | None:
    """The conf/backend option that is exactly this entry, if any (for messages)."""
    wanted = entry.canonical()
    return next((o for o, e in _option_entries().items() if e.canonical() == wanted), None)


@cache
def _option_entries() -> dict[str, EntryBase]:
    from pydantic import TypeAdapter, ValidationError

    from qconf.backends import BackendEntry
    from qconf.plan.conftree import backend_options

    adapter: TypeAdapter[EntryBase] = TypeAdapter(BackendEntry)
    entries = {}
    for option, data in backend_options().items():
        try:
            entries[option] = adapter.validate_python(data)
        except ValidationError:  # a broken option file is reported where a plan names it
            continue
    return entries


def check_environment(resolved: ResolvedPlan) -> None:
    problems = environment_problems(resolved)
    if problems:
        raise BackendUnavailableError(problems)


def prepare_backends(resolved: ResolvedPlan, train: bool | Sequence[str] = False) -> None:
    """Before a load: what each backend in play (planned, or saved in the folder) needs first,
    e.g. importing a library that registers itself with transformers (Backend.prepare)."""
    for spec in _specs_in_play(resolved):
        if spec.prepare is not None:
            spec.prepare(bool(train))


@contextlib.contextmanager
def while_loading(resolved: ResolvedPlan) -> Iterator[None]:
    """The state each backend in play needs while the weights load (Backend.during_load)."""
    with contextlib.ExitStack() as stack:
        for spec in _specs_in_play(resolved):
            if spec.during_load is not None:
                stack.enter_context(spec.during_load())
        yield


def _specs_in_play(resolved: ResolvedPlan) -> list[Backend]:
    return [REGISTRY[key] for key in dict.fromkeys(p.backend for p in resolved.quantized.values())]


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
