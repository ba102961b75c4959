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
from contextlib import contextmanager
from functools import cache
from typing import Any

from qconf.backends import REGISTRY
from qconf.backends.torchao import QUANT_TYPES
from qconf.errors import PlanError, Problem

LOADERS = ("qconf.load_pipeline", "qconf.load")
# Top-level packages whose attributes may be resolved to compare against the allow-list;
# anything else is refused without importing it (an import can itself run code).
_RESOLVABLE_ROOTS = ("qconf", "diffusers", "transformers", "torchao")
_MAX_DEPTH = 100


@cache
def allowed_targets() -> frozenset[str]:
    """The canonical spellings of every callable a config may name."""
    names = {f"{library}.{cls}" for spec in REGISTRY.values() for library, cls in
             spec.config_class.items()}  # fmt: skip
    names |= {f"torchao.quantization.{name}" for name in QUANT_TYPES}
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

    data, call_args, call_kwargs = plain(cfg), plain(list(args)), plain(kwargs)
    unsafe = [
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
        for where, value in _strings({"cfg": data, "args": call_args, "kwargs": call_kwargs}, "")
        if "${" in value
    ]
    if unsafe:
        raise PlanError(unsafe)
    return instantiate(data, *call_args, **{"_convert_": "all", **call_kwargs})


def _strings(data: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(data, Mapping):
        for key, value in data.items():
            yield from _strings(value, f"{path}.{key}" if path else str(key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _strings(value, f"{path}[{i}]")
    elif isinstance(data, str):
        yield path, data


# `${a}${a}` over a chain of keys doubles the value at each step: a few dozen references can
# resolve to gigabytes. Real plans use a handful.
MAX_INTERPOLATIONS = 30


def check_interpolation_count(data: Any) -> None:
    """Refuse, before resolving, a plan with more `${...}` references than any real one has."""
    count = sum(value.count("${") for _, value in _strings(data, ""))
    if count > MAX_INTERPOLATIONS:
        raise PlanError(
            Problem("config", f"{count} interpolations (${{...}}); at most {MAX_INTERPOLATIONS}",
                    "write values instead of references")
        )  # fmt: skip


class EnvironmentRead(Exception):
    """Raised by the stand-in `oc.env` resolver while qconf resolves a plan."""

    def __init__(self, variable: str) -> None:
        super().__init__(f"reads environment variable '{variable}'")
        self.variable = variable


@contextmanager
def no_environment_reads() -> Iterator[None]:
    """While resolving a plan, `${oc.env:...}` raises instead of reading the environment:
    qconf writes resolved plans into saved folders and run folders, and a secret read from the
    environment would land there in clear."""
    from omegaconf import OmegaConf
    from omegaconf.basecontainer import BaseContainer

    names = ("oc.env", "env")
    saved = {name: BaseContainer._resolvers.get(name) for name in names}

    def refuse(key: str, default: Any = None) -> Any:
        raise EnvironmentRead(str(key))

    for name in names:
        OmegaConf.register_new_resolver(name, refuse, replace=True)
    try:
        yield
    finally:
        for name, resolver in saved.items():
            BaseContainer._resolvers.pop(name, None)
            if resolver is not None:
                BaseContainer._resolvers[name] = resolver
