"""Turn pydantic's errors into one line each (where — what — fix), with did-you-mean."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

from qconf.backends import REGISTRY
from qconf.backends.torchao import QUANT_TYPES
from qconf.errors import Problem
from qconf.paths import backend_options


class PlanProblems(ValueError):
    """Carries a validator's problems through pydantic (found again in `ctx.error`)."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


# Discriminator values of tagged unions: pydantic puts them in error locations.
_TAGGED: dict[str, type[BaseModel]] = {
    **{key: spec.entry for key, spec in REGISTRY.items()},
    **QUANT_TYPES,
}


def did_you_mean(name: str, candidates: Any) -> str:
    candidates = list(candidates)
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    close = close or [c for c in candidates if c.endswith(name) or name.endswith(c)][:1]
    return f"did you mean '{close[0]}'? " if close else ""


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


def problems_from_errors(
    errors: list[Mapping[str, Any]],
    prefix: tuple[Any, ...] = (),
    tag: str | None = None,
    root: type[BaseModel] | None = None,
) -> list[Problem]:
    """One Problem per pydantic error; `root` is the validated model (for valid-key lists)."""
    problems: list[Problem] = []
    for error in errors:
        loc = tuple(error["loc"])
        path = ".".join(str(e) for e in prefix + loc if not (isinstance(e, str) and e in _TAGGED))
        path = path.replace(".[", "[")
        kind, ctx = error["type"], error.get("ctx") or {}
        if kind == "value_error" and isinstance(ctx.get("error"), PlanProblems):
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
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1], tag, root)
        fields = list(model.model_fields) if model else []
        hint = did_you_mean(str(loc[-1]), fields)
        return Problem(
            path,
            "unknown key",
            hint + (f"valid keys: {', '.join(fields)}" if fields else "remove it"),
        )
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        field = ctx.get("discriminator", "").strip("'")
        expected = ctx.get("expected_tags", "").replace("'", "")
        if not expected:  # pydantic gives no tags when the key is missing
            expected = ", ".join(REGISTRY if field == "backend" else QUANT_TYPES)
        where = f"{path}.{field}" if path else field
        if kind == "union_tag_not_found":
            return Problem(where, "missing", f"set {field}: one of {expected}")
        found = ctx.get("tag")
        hint = did_you_mean(str(found), expected.split(", "))
        if field == "backend" and found in backend_options():
            hint = f"'{found}' is a backend option: write the part's value as just {found}. "
        what = "unknown torchao quant type" if field == "name" else f"unknown {field}"
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
    return Problem(path, f"{error['msg']} (got {value!r})", "")
