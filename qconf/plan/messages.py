"""Turn pydantic's errors into one line each (where — what — fix), with did-you-mean."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from qconf.backends import REGISTRY
from qconf.errors import Problem, QconfError
from qconf.plan.conftree import backend_options


class PlanProblems(ValueError):
    """Carries a validator's problems through pydantic (found again in `ctx.error`)."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


# Discriminator values of tagged unions: pydantic puts them in error locations.
# Tagged unions inside a backend's kwargs: discriminator -> (what a tag names, {tag: model}).
_NESTED: dict[str, tuple[str, dict[str, Any]]] = {}
for _spec in REGISTRY.values():
    for _field, (_label, _models) in _spec.nested_tags.items():
        _NESTED.setdefault(_field, (_label, {}))[1].update(_models)
_TAGGED: dict[str, type[BaseModel]] = {
    **{key: spec.entry for key, spec in REGISTRY.items()},
    **{tag: model for _, models in _NESTED.values() for tag, model in models.items()},
}


def did_you_mean(name: str, candidates: Any) -> str:
    candidates = list(candidates)
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    close = close or [c for c in candidates if c.endswith(name) or name.endswith(c)][:1]
    return f"did you mean '{close[0]}'? " if close else ""


_KINDS = {int: "a number", float: "a number", bool: "a boolean", type(None): "null"}


def _tags(field: str) -> str:
    """The values a tagged union accepts (pydantic leaves them out when the tag is missing)."""
    return ", ".join(_NESTED[field][1] if field in _NESTED else REGISTRY)


# (kwargs model, library kwarg) -> why qconf does not offer it (Backend.withheld)
_WITHHELD: dict[tuple[Any, str], str] = {
    (spec.entry.model_fields["kwargs"].annotation, name): why
    for spec in REGISTRY.values()
    for name, why in spec.withheld.items()
}


def _model_at(
    loc: tuple[Any, ...], tag: str | None, root: type[BaseModel] | None
) -> type[BaseModel] | None:
    """The model whose field the last element of `loc` names (for did-you-mean)."""
    cls: type[BaseModel] | None = _TAGGED[tag] if tag else root
    for element in loc:
        if isinstance(element, str) and element in _TAGGED:
            cls = _TAGGED[element]
        elif cls is not None and element in cls.model_fields:
            annotation = cls.model_fields[element].annotation
            is_model = isinstance(annotation, type) and issubclass(annotation, BaseModel)
            cls = annotation if is_model else None
    return cls


_UNION_MEMBER = re.compile(r"(str|int|float|bool|constrained-\w+|list\[[\w-]+\])")


def _one_per_union(errors: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """A value that fits no member of a union (`run.seed: int | list[int]`) gets one error per
    member from pydantic; keep the member that got furthest (the longest location), without the
    member's name in the location."""
    chosen: dict[tuple[Any, ...], Mapping[str, Any]] = {}
    order: list[tuple[Any, ...]] = []
    for error in errors:
        loc = tuple(error["loc"])
        cut = next((i for i, e in enumerate(loc) if i and isinstance(e, str)
                    and _UNION_MEMBER.fullmatch(e)), None)  # fmt: skip
        if cut is None:
            key: tuple[Any, ...] = ("#", len(order))
            error_here = error
        else:
            key = loc[:cut]
            error_here = {**error, "loc": loc[:cut] + loc[cut + 1 :]}
            if key in chosen and len(chosen[key]["loc"]) >= len(error_here["loc"]):
                continue
        if key not in chosen:
            order.append(key)
        chosen[key] = error_here
    return [chosen[key] for key in order]


def problems_from_errors(
    errors: list[Mapping[str, Any]],
    prefix: tuple[Any, ...] = (),
    tag: str | None = None,
    root: type[BaseModel] | None = None,
) -> list[Problem]:
    """One Problem per pydantic error; `root` is the validated model (for valid-key lists)."""
    problems: list[Problem] = []
    for error in _one_per_union(errors):
        loc = tuple(error["loc"])
        path = ".".join(str(e) for e in prefix + loc if not (isinstance(e, str) and e in _TAGGED))
        path = path.replace(".[", "[")
        kind, ctx = error["type"], error.get("ctx") or {}
        if kind == "value_error" and isinstance(ctx.get("error"), (PlanProblems, QconfError)):
            for p in ctx["error"].problems:
                where = (
                    p.where
                    if p.where.startswith(("quant", "model")) or not path
                    else (f"{path}.{p.where}" if p.where else path)
                )
                problems.append(Problem(where, p.what, p.fix))
            continue
        problems.append(_one_problem(kind, ctx, error, path, loc, tag, root))
    return problems


def _one_problem(
    kind: str,
    ctx: dict,
    error: Mapping[str, Any],
    path: str,
    loc: tuple,
    tag: str | None,
    root: type[BaseModel] | None,
) -> Problem:
    value = error.get("input")
    if loc and loc[-1] == "[key]":  # a mapping key of the wrong type (YAML `1: int8wo`)
        return Problem(
            path.removesuffix(".[key]").removesuffix("[key]"),
            f"key {shown_value(value)} is {_KINDS.get(type(value), 'not a string')}, not a name",
            "name the part (e.g. transformer); quote keys that look like numbers",
        )
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1], tag, root)
        fields = list(model.model_fields) if model else []
        why = _WITHHELD.get((model, str(loc[-1])))
        if why is not None:  # a library kwarg qconf refuses on purpose
            return Problem(path, f"not offered: {why}", "remove it")
        hint = did_you_mean(str(loc[-1]), fields)
        return Problem(
            path,
            "unknown key",
            hint + (f"valid keys: {', '.join(fields)}" if fields else "remove it"),
        )
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        field = ctx.get("discriminator", "").strip("'")
        expected = ctx.get("expected_tags", "").replace("'", "") or _tags(field)
        where = f"{path}.{field}" if path else field
        if kind == "union_tag_not_found":
            return Problem(where, "missing", f"set {field}: one of {expected}")
        found = ctx.get("tag")
        hint = did_you_mean(str(found), expected.split(", "))
        if field == "backend" and found in backend_options():
            hint = f"'{found}' is a backend option: write the part's value as just {found}. "
        what = f"unknown {_NESTED[field][0] if field in _NESTED else field}"
        return Problem(where, f"{what} '{found}'", hint + f"available: {expected}")
    if kind == "literal_error" and loc and loc[-1] == "backend":
        hint = (
            f"'{value}' is a backend option: use quant.mapping.<part>={value}. "
            if value in backend_options()
            else did_you_mean(str(value), REGISTRY)
        )
        return Problem(
            path, f"unknown backend '{value}'", hint + f"available: {', '.join(REGISTRY)}"
        )
    if kind == "literal_error":
        return Problem(path, f"'{value}' is not allowed", f"expected {ctx.get('expected')}")
    if kind == "missing":
        return Problem(path, "required key is missing", "set it")
    message = str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return Problem(
        path or "plan", f"{message} (got {shown_value(value)})", "fix the value (qconf schema)"
    )


def shown_value(value: Any, limit: int = 60) -> str:
    """A value as an error line quotes it: short (never a dump of the whole plan)."""
    if isinstance(value, dict):
        return "a mapping" if value else "{}"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
