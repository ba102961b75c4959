"""Save a quantized pipeline once, reload it later: `qconf load ... --save DIR`.

The pipeline is written with safetensors into a hidden temporary folder beside DIR, with
qconf.yaml (the resolved plan and library versions) next to model_index.json, and only then
moved into place: a failure or a kill midway leaves no DIR (at most a hidden .DIR.qconf-tmp-*)."""

from __future__ import annotations

import os
import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qconf.backends import REGISTRY
from qconf.errors import PlanError, Problem
from qconf.resolve import ResolvedPlan

if TYPE_CHECKING:
    from qconf.loader import Loaded

PLAN_FILE = "qconf.yaml"
_VERSIONED = ("qconf", "torch", "diffusers", "transformers", "accelerate", "safetensors")


def save_problems(resolved: ResolvedPlan) -> list[Problem]:
    """Parts whose backend cannot be saved (capability table in the registry)."""
    problems = []
    for name, part in resolved.quantized.items():
        spec = REGISTRY[part.backend]
        where = f"quant.mapping.{name}" if resolved.mode == "granular" else "quant.backend"
        quant_type = getattr(part.entry.kwargs, "quant_type", None)
        if not spec.can_save.get(part.library, False):  # type: ignore[call-overload]
            problems.append(
                Problem(
                    where,
                    f"{spec.key} on '{name}' ({part.library} part) cannot be saved",
                    "pick a backend that saves there (qconf list backends), or drop --save",
                )
            )
        elif quant_type is not None and not quant_type.can_save:
            problems.append(
                Problem(where, f"torchao {quant_type.name} cannot be saved", "drop --save")
            )
    return problems


def check_can_save(resolved: ResolvedPlan, target: str | Path, *, force: bool) -> None:
    """Refuse before quantizing: an unsaveable plan, or a non-empty DIR without force."""
    problems = save_problems(resolved)
    path = Path(target).expanduser()
    if path.exists() and not path.is_dir():
        problems.append(Problem("--save", f"'{target}' is a file", "give a folder path"))
    elif path.is_dir() and any(path.iterdir()) and not force:
        problems.append(
            Problem("--save", f"'{target}' exists and is not empty", "pass --force to replace it")
        )
    if problems:
        raise PlanError(problems)


def save_pipeline(loaded: Loaded, target: str | Path, *, force: bool = False) -> Path:
    """Write the loaded pipeline + qconf.yaml to `target`, atomically (see module docstring)."""
    import yaml

    check_can_save(loaded.resolved, target, force=force)
    path = Path(target).expanduser().resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.qconf-tmp-"))
    try:
        loaded.pipeline.save_pretrained(staging, safe_serialization=True)
        record = {"versions": library_versions(), "plan": loaded.resolved.to_json()}
        (staging / PLAN_FILE).write_text(yaml.safe_dump(record, sort_keys=False))
        _move_into_place(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def _move_into_place(staging: Path, path: Path) -> None:
    if not path.exists():
        os.rename(staging, path)
        return
    retired = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.qconf-old-"))
    os.rename(path, retired / path.name)
    os.rename(staging, path)
    shutil.rmtree(retired, ignore_errors=True)


def library_versions() -> dict[str, str]:
    names = [*_VERSIONED, *(spec.distribution for spec in REGISTRY.values())]
    versions: dict[str, Any] = {}
    for name in dict.fromkeys(names):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions
