"""Which callables a config may name, and which values it may read from the environment.

Config files are untrusted (README, "Safety"). Hydra resolves a `_target_` by importing its
module and walking attributes, so a prefix check is no check (`qconf.source.tiny.shutil.copyfile` is
`shutil.copyfile`). A `_target_` is allowed only if it is *exactly* one of the objects below:
the config classes qconf builds (from the backend registry) and qconf's public loaders.

qconf itself never instantiates a plan; a user's Hydra app that does should go through
`safe_instantiate`, which checks every container shape Python can pass and then instantiates
exactly what it checked."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from functools import cache
from typing import Any

from qconf.backends import REGISTRY
from qconf.errors import PlanError, Problem
from qconf.plan.interpolation import (
    EnvironmentRead,
    exception_chain,
    no_environment_reads,
    strings,
)
from qconf.plan.trust import app_trust_problems

LOADERS = ("qconf.load_pipeline", "qconf.load")
# Top-level packages whose attributes may be resolved to compare against the allow-list;
# anything else is refused without importing it (an import can itself run code).
_RESOLVABLE_ROOTS = (
    "qconf",
    "diffusers",
    "transformers",
    *dict.fromkeys(t.split(".")[0] for s in REGISTRY.values() for t in s.config_targets),
    *dict.fromkeys(m.split(".")[0] for s in REGISTRY.values() for m in s.config_module.values()),
)
_MAX_DEPTH = 100


@cache
def allowed_targets() -> frozenset[str]:
    """The canonical spellings of every callable a config may name."""
    names = {spec.config_path(library) for spec in REGISTRY.values() for library in
             spec.config_class}  # fmt: skip
    names |= {target for spec in REGISTRY.values() for target in spec.config_targets}
    return frozenset(names | set(LOADERS))


def target_problems(data: Any, path: str = "") -> list[Problem]:
    """`_target_`s in plain data that are not canonical allow-listed names (torch-free)."""
    return [
        _refusal(where, target)
        for where, target in _targets(data, path)
        if not (isinstance(target, str) and target in allowed_targets())
    ]


def _refusal(where: str, target: Any) -> Problem:
    shown = target if isinstance(target, str) else type(target).__name__
    return Problem(
        f"{where}._target_" if where else "_target_",
        f"'{shown}' is not allowed",
        "a config may name only qconf's loaders and the quantization config classes it builds: "
        + ", ".join(sorted(allowed_targets())),
    )


def _targets(data: Any, path: str, depth: int = 0) -> Iterator[tuple[str, Any]]:
    if depth > _MAX_DEPTH:
        raise PlanError(Problem(path or "config", f"nested deeper than {_MAX_DEPTH} levels", ""))
    if isinstance(data, Mapping):
        for key, value in data.items():
            if key == "_target_":
                yield path, value
            else:
                yield from _targets(value, f"{path}.{key}" if path else str(key), depth + 1)
    elif isinstance(data, (list, tuple, set, frozenset)):
        for i, value in enumerate(data):
            yield from _targets(value, f"{path}[{i}]", depth + 1)


def plain(data: Any, depth: int = 0) -> Any:
    """Every container shape a Python user can pass (DictConfig, ListConfig, dataclass
    instances and configs, mappings, tuples, sets), as plain dicts and lists, resolved."""
    from omegaconf import OmegaConf

    if depth > _MAX_DEPTH:
        raise PlanError(Problem("config", f"nested deeper than {_MAX_DEPTH} levels", ""))
    if OmegaConf.is_config(data):
        return plain(OmegaConf.to_container(data, resolve=True), depth + 1)
    if dataclasses.is_dataclass(data) and not isinstance(data, type):
        return plain(OmegaConf.to_container(OmegaConf.structured(data), resolve=True), depth + 1)
    if isinstance(data, Mapping):
        return {key: plain(value, depth + 1) for key, value in data.items()}
    if isinstance(data, (list, tuple, set, frozenset)):
        return [plain(value, depth + 1) for value in data]
    return data


def _is_allowed_object(target: Any) -> bool:
    """A non-canonical spelling (or a callable object) that is one of the allowed objects."""
    if isinstance(target, str):
        if target.split(".", 1)[0] not in _RESOLVABLE_ROOTS:
            return False
        from hydra._internal.utils import _locate

        try:
            target = _locate(target)
        except Exception:  # an unknown name is simply not allowed
            return False
    return any(target is obj for obj in _allowed_objects())


def _allowed_objects() -> list[Any]:
    from hydra._internal.utils import _locate

    return [_locate(name) for name in sorted(allowed_targets())]


def safe_instantiate(cfg: Any, *args: Any, **kwargs: Any) -> Any:
    """hydra.utils.instantiate, after checking every `_target_` (in `cfg`, `args` and `kwargs`)
    by the exact object it resolves to. What is checked is what gets instantiated."""
    from hydra.utils import instantiate

    try:
        with no_environment_reads():
            data, call_args, call_kwargs = plain(cfg), plain(list(args)), plain(kwargs)
    except Exception as exc:
        read = next((e for e in exception_chain(exc) if isinstance(e, EnvironmentRead)), None)
        if read is None:
            raise
        raise PlanError(Problem("config", str(read), "write the value itself")) from None
    unsafe = app_trust_problems({"cfg": data, "args": call_args}, "the app's config files")
    unsafe += _loader_write_problems(data)
    unsafe += [
        _refusal(where, target)
        for where, target in _targets({"cfg": data, "args": call_args, "kwargs": call_kwargs}, "")
        if not (isinstance(target, str) and target in allowed_targets())
        and not _is_allowed_object(target)
    ]
    # instantiate resolves interpolations again: a value that resolved to `${...}` (oc.create,
    # oc.decode, an escaped string) would build a new, unchecked config there.
    unsafe += [
        Problem(
            where or "config",
            "resolves to another interpolation (${...})",
            "write the value itself",
        )  # fmt: skip
        for where, value in strings({"cfg": data, "args": call_args, "kwargs": call_kwargs}, "")
        if "${" in value
    ]
    if unsafe:
        raise PlanError(unsafe)
    return instantiate(data, *call_args, **{"_convert_": "all", **call_kwargs})


# What a loader call may do besides loading: write. Only the Python caller says where.
_WRITE_KEYS = ("save", "force", "max_shard_size")


def _loader_write_problems(data: Any, path: str = "cfg") -> list[Problem]:
    """`save:`/`force:` beside a loader `_target_` in a config: a file may not set where qconf
    writes (pass them as keyword arguments to safe_instantiate, or call qconf.save)."""
    problems = []
    if isinstance(data, Mapping):
        if data.get("_target_") in LOADERS or _is_loader(data.get("_target_")):
            problems += [
                Problem(f"{path}.{key}", "a config file may not say where qconf writes",
                        f"pass {key}=... to safe_instantiate (or call qconf.save) instead")
                for key in _WRITE_KEYS if key in data
            ]  # fmt: skip
        for key, value in data.items():
            problems += _loader_write_problems(value, f"{path}.{key}")
    elif isinstance(data, list):
        for i, value in enumerate(data):
            problems += _loader_write_problems(value, f"{path}[{i}]")
    return problems


def _is_loader(target: Any) -> bool:
    if not isinstance(target, str) or not target.startswith("qconf."):
        return False  # (not "qconf…": a module `qconfx` would be imported to compare)
    from hydra._internal.utils import _locate

    try:
        found = _locate(target)
    except Exception:  # not a name that resolves: target_problems says so
        return False
    return any(found is _locate(name) for name in LOADERS)
