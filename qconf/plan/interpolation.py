"""Interpolations in a plan (`${...}`), which qconf resolves only under bounds: the number of
references and the size they resolve to are checked before anything is resolved, and while
resolving only OmegaConf's pure resolvers run (no value from the environment or from a
resolver an app registered can enter a plan, which is written into saved and run folders)."""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from qconf.errors import PlanError, Problem


def exception_chain(exc: BaseException | None) -> Iterator[BaseException]:
    for _ in range(10):  # OmegaConf wraps a resolver's error once or twice
        if exc is None:
            return
        yield exc
        exc = exc.__cause__ or exc.__context__


def strings(data: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(path, text) of every string value in plain data."""
    return ((where, value) for where, value in _leaves(data, path) if isinstance(value, str))


# `${a}${a}` over a chain of keys doubles the value at each step: a few dozen references can
# resolve to gigabytes. Real plans use a handful.
MAX_INTERPOLATIONS = 30


def check_interpolation_count(data: Any) -> None:
    """Refuse, before resolving, a plan with more `${...}` references than any real one has."""
    count = sum(value.count("${") for _, value in strings(data))
    if count > MAX_INTERPOLATIONS:
        raise PlanError(
            Problem("config", f"{count} interpolations (${{...}}); at most {MAX_INTERPOLATIONS}",
                    "write values instead of references")
        )  # fmt: skip
    check_interpolation_size(data)


# `${a}${a}` over a chain of keys multiplies: 30 references can still make a small file resolve
# to gigabytes when each refers to the one before. The resolved size is bounded from the
# written values before anything is resolved.
MAX_RESOLVED_CHARS = 1_000_000
_REFERENCE = re.compile(r"\$\{([^${}]*)\}")


def check_interpolation_size(data: Any) -> None:
    """Refuse, before resolving, a plan whose interpolations would resolve to more than
    MAX_RESOLVED_CHARS characters (an upper bound computed from the written values; a
    reference to a whole container counts every value in it)."""
    leaves = {_dotted(path): str(value) for path, value in _leaves(data, "")}
    keys = sorted(leaves)
    sizes: dict[str, int] = {}

    def size(path: str, seen: frozenset[str]) -> int:
        if path in sizes:
            return sizes[path]
        if path in seen:  # a reference loop: OmegaConf refuses it with its own message
            return 0
        if len(seen) > 64:
            return MAX_RESOLVED_CHARS + 1
        if path not in leaves:  # a container (or nothing): every value under it, and keys
            low = bisect.bisect_left(keys, path + ".") if path else 0
            high = bisect.bisect_left(keys, path + "/") if path else len(keys)
            total = 0
            for key in keys[low:high]:
                total += size(key, seen | {path}) + len(key) + 4
                if total > MAX_RESOLVED_CHARS:
                    break
            sizes[path] = total
            return total
        value = leaves[path]
        total = len(value)
        for reference in _REFERENCE.findall(value):
            total += size(_target(path, reference), seen | {path})
            if total > MAX_RESOLVED_CHARS:
                break
        sizes[path] = total
        return total

    for path in keys:
        if size(path, frozenset()) > MAX_RESOLVED_CHARS:
            raise PlanError(
                Problem(
                    path or "config",
                    f"its interpolations (${{...}}) would resolve to more "
                    f"than {MAX_RESOLVED_CHARS:,} characters",
                    "write values instead of references",
                )  # fmt: skip
            )


def _leaves(data: Any, path: str) -> Iterator[tuple[str, Any]]:
    """(path, value) of every scalar in plain data (`a.b`, `a[0]`)."""
    if isinstance(data, Mapping):
        for key, value in data.items():
            yield from _leaves(value, f"{path}.{key}" if path else str(key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _leaves(value, f"{path}[{i}]")
    else:
        yield path, data


def _dotted(path: str) -> str:
    return re.sub(r"\[(\d+)\]", r".\1", path)


def _target(path: str, reference: str) -> str:
    """The dotted path a reference written at `path` points to (`oc.select`'s first argument;
    `.x`/`..x` relative to the key's parent)."""
    name, _, args = reference.partition(":")
    if args:
        if name.strip() != "oc.select":
            return ""  # another resolver: only its written text counts (see no_environment_reads)
        reference = args.split(",")[0]
    reference = _dotted(reference.strip())
    if not reference.startswith("."):
        return reference
    dots = len(reference) - len(reference.lstrip("."))
    parent = path.split(".")[:-dots] if dots else path.split(".")
    return ".".join([*parent, reference.lstrip(".")]).strip(".")


class EnvironmentRead(Exception):
    """Raised by the stand-in resolvers while qconf resolves a plan: `oc.env` (a value from
    the environment) or any resolver outside the plan's own pure ones."""

    def __init__(self, variable: str, resolver: str = "oc.env") -> None:
        if resolver in ENVIRONMENT_RESOLVERS:
            text = f"reads environment variable '{variable}'"
        else:
            text = f"calls resolver '{resolver}', which qconf does not run inside a plan"
        super().__init__(text)
        self.variable = variable
        self.resolver = resolver


ENVIRONMENT_RESOLVERS = ("oc.env", "env")
# Resolvers that only rearrange the plan's own values (OmegaConf's built-ins); every other one
# (oc.env, a resolver an app registered) could bring in a value from outside the plan.
PURE_RESOLVERS = frozenset({"oc.select", "oc.dict.keys", "oc.dict.values", "oc.decode",
                            "oc.create", "oc.deprecated"})  # fmt: skip


@contextmanager
def no_environment_reads() -> Iterator[None]:
    """While resolving a plan, only OmegaConf's pure resolvers run: `${oc.env:...}` (and any
    resolver an app registered) raises EnvironmentRead instead. qconf writes resolved plans
    into saved folders and run folders, and a secret read from outside the plan would land
    there in clear. Everything that may resolve a plan (converting containers, pydantic
    iterating a ListConfig) runs inside this."""
    from omegaconf import OmegaConf
    from omegaconf.basecontainer import BaseContainer

    saved = dict(BaseContainer._resolvers)
    names = set(saved) | set(ENVIRONMENT_RESOLVERS)
    for name in names - PURE_RESOLVERS:
        OmegaConf.register_new_resolver(name, _refusing(name), replace=True, use_cache=False)
    try:
        yield
    finally:
        BaseContainer._resolvers.clear()
        BaseContainer._resolvers.update(saved)


def _refusing(name: str) -> Any:
    """A resolver that refuses to run (OmegaConf reports it with the key being resolved)."""

    def refuse(*args: Any) -> Any:
        raise EnvironmentRead(str(args[0]) if args else "", name)

    return refuse
