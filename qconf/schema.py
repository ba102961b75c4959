"""The plan schema (pydantic v2, torch-free): shape, mutual exclusion of the two modes, kwargs
against each receiving library, parts against the real pipeline. Validators check, never mutate;
defaults are filled in resolve."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from qconf.backends import REGISTRY, BackendEntry, EntryBase, StrictModel, entry_from_saved
from qconf.backends.base import FloatDType
from qconf.backends.torchao import QUANT_TYPES
from qconf.errors import PlanError, Problem
from qconf.parts import Part, PipelineParts, pipeline_parts
from qconf.paths import backend_options
from qconf.safety import target_problems

if TYPE_CHECKING:
    from qconf.resolve import ResolvedPlan

BackendKey = Literal[tuple(REGISTRY)]  # type: ignore[valid-type]


def _expand_option(value: Any, info: ValidationInfo) -> Any:
    """`quant.mapping.<part>: nf4` names conf/backend/nf4.yaml; expand it to {backend, kwargs}."""
    if not isinstance(value, str):
        return value
    options = (info.context or {}).get("options") or backend_options()
    if value not in options:
        raise (
            PlanProblems(
                [
                    Problem(
                        "",
                        f"unknown backend option '{value}'",
                        _did_you_mean(value, options) + f"available: {', '.join(sorted(options))}",
                    )
                ]
            )
        )
    return options[value]


MappingEntry = Annotated[BackendEntry, BeforeValidator(_expand_option)]
_ENTRY: TypeAdapter[EntryBase] = TypeAdapter(BackendEntry)


class ModelSpec(StrictModel):
    source: str = Field(
        description="A built-in tiny pipeline (qconf list models), a local folder or a hub id."
    )
    pipeline: str | None = Field(
        None, description="Pipeline class name; read from model_index.json when null."
    )
    torch_dtype: FloatDType | None = Field(
        "bfloat16", description="Load dtype; null = library default (bfloat16 for torchao plans)."
    )
    allow_pickle: bool = Field(
        False, description="Also load pickle weights (.bin/.ckpt); they can run code. Trust first."
    )
    trust_remote_code: bool = Field(
        False, description="Allow parts whose code ships with the model (runs that code)."
    )


class QuantSpec(StrictModel):
    backend: BackendKey | None = Field(  # type: ignore[valid-type]
        None, description="Global mode: one backend for many parts (diffusers quant_backend)."
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Global mode: the backend's kwargs (quant_kwargs)."
    )
    components: list[str] | None = Field(
        None, description="Global mode: parts to quantize; null = every weight-bearing part."
    )
    mapping: dict[str, MappingEntry | None] = Field(
        default_factory=dict,
        description="Granular mode: part -> backend option name, {backend, kwargs}, or null.",
    )

    @property
    def mode(self) -> Literal["global", "granular"]:
        return "global" if self.backend is not None and not self.mapping else "granular"

    @property
    def is_empty(self) -> bool:
        """Nothing asked for: a pre-quantized folder then loads as it was saved."""
        return self.backend is None and not self.mapping

    def global_entry(self) -> EntryBase | None:
        """The global backend and kwargs as one typed entry (valid once the plan validated)."""
        if self.backend is None:
            return None
        return REGISTRY[self.backend].entry.model_validate(
            {"backend": self.backend, "kwargs": self.kwargs}
        )

    @model_validator(mode="after")
    def _check_modes(self) -> QuantSpec:
        problems = _mode_problems(self.backend, self.kwargs, self.components, self.mapping)
        if self.backend is not None:
            try:
                self.global_entry()
            except ValidationError as exc:
                problems += problems_from_errors(exc.errors(), prefix=("quant",), tag=self.backend)
        if problems:
            raise PlanProblems(problems)
        return self


def _mode_problems(backend: Any, kwargs: Any, components: Any, mapping: Any) -> list[Problem]:
    """Global and granular mode are exclusive (works on raw data too)."""
    problems = []
    if backend is not None and mapping:
        problems.append(
            Problem(
                "quant.mapping",
                "set together with quant.backend; global and granular mode are exclusive",
                "use quant.backend/kwargs/components or quant.mapping, not both",
            )
        )
    if mapping and components is not None:
        problems.append(
            Problem(
                "quant.components",
                "set with quant.mapping (diffusers fails late with KeyError(None))",
                "list the parts as keys of quant.mapping and drop quant.components",
            )
        )
    if backend is None and not mapping and (kwargs or components is not None):
        key = "quant.kwargs" if kwargs else "quant.components"
        problems.append(Problem(key, "set without quant.backend", "set quant.backend or remove it"))
    return problems


class RunSpec(StrictModel):
    """Settings of `qconf run` (generation); ignored by the other commands."""

    prompt: str = "a photo of a cat wearing a tiny hat"
    steps: int = Field(2, ge=1)
    height: int = Field(32, ge=8)
    width: int = Field(32, ge=8)
    guidance_scale: float = 3.5
    seed: int = 0


class Plan(StrictModel):
    model: ModelSpec
    quant: QuantSpec = Field(default_factory=QuantSpec)
    run: RunSpec = Field(default_factory=RunSpec)

    def parts(self) -> PipelineParts:
        found, problems = pipeline_parts(self.model.source, self.model.pipeline)
        if found is None:
            raise PlanError(problems)
        return found

    def targets(self, parts: PipelineParts | None = None) -> dict[str, EntryBase | None]:
        """Every weight-bearing part -> the entry that quantizes it (None = left alone)."""
        weighted = (parts or self.parts()).weighted
        saved = saved_entries(weighted)
        if saved and self.quant.is_empty:
            return {name: saved.get(name) for name in weighted}
        if self.quant.mode == "global":
            entry = self.quant.global_entry()
            wanted = self.quant.components
            if wanted is None:  # like diffusers: every nn.Module part, the VAE included
                wanted = [name for name, part in weighted.items() if not part.optional]
            return {
                name: entry if name in wanted else None
                for name, part in weighted.items()
                if not part.optional or name in wanted
            }
        return {
            name: self.quant.mapping.get(name)
            for name, part in weighted.items()
            if not part.optional or name in self.quant.mapping
        }

    def resolve(self, parts: PipelineParts | None = None) -> ResolvedPlan:
        from qconf.resolve import resolve

        return resolve(self, parts)

    def to_diffusers(self) -> Any:
        """diffusers' PipelineQuantizationConfig for this plan (imports diffusers)."""
        return self.resolve().to_diffusers()

    @model_validator(mode="wrap")
    @classmethod
    def _report_together(cls, data: Any, handler: Any) -> Plan:
        """Field errors stop pydantic before the part checks; run the name checks anyway so one
        pass reports every problem."""
        try:
            return handler(data)
        except ValidationError as exc:
            problems = problems_from_errors(exc.errors())
            if isinstance(data, dict) and not any(p.where.startswith("model") for p in problems):
                problems += _raw_name_problems(data)
            raise PlanProblems(list(dict.fromkeys(problems))) from None  # once each, in order

    @model_validator(mode="after")
    def _check_parts(self) -> Plan:
        found, problems = pipeline_parts(self.model.source, self.model.pipeline)
        if found is not None:
            problems += _source_problems(self.model, found)
            problems += _part_problems(self.quant, found)
            if not problems:
                problems += _saved_problems(self, found)
        if problems:
            raise PlanProblems(problems)
        return self


_SAVED_METHODS = {spec.quant_method for spec in REGISTRY.values()}


def saved_entries(parts: Mapping[str, Part]) -> dict[str, EntryBase]:
    """Entries of the parts a folder holds pre-quantized (their config.json says how)."""
    entries = {}
    for name, part in parts.items():
        if part.saved_quantization is None:
            continue
        data = entry_from_saved(part.saved_quantization)
        if data is None:
            method = part.saved_quantization.get("quant_method")
            raise PlanProblems(
                [
                    Problem(
                        "model.source",
                        f"part '{name}' was saved with quant_method '{method}', which qconf "
                        "does not model",
                        f"qconf reads: {', '.join(sorted(_SAVED_METHODS))}",
                    )
                ]
            )
        try:
            entries[name] = _ENTRY.validate_python(data)
        except ValidationError as exc:
            raise PlanProblems(
                [
                    Problem(f"model.source ({name}/config.json)", p.what, p.fix)
                    for p in problems_from_errors(exc.errors())
                ]
            ) from None
    return entries


def _source_problems(model: ModelSpec, found: PipelineParts) -> list[Problem]:
    """Refuse to run code from a model folder unless the user opted in."""
    problems = []
    for name, part in found.parts.items():
        if part.custom_code and not model.trust_remote_code:
            problems.append(
                Problem(
                    "model.source",
                    f"part '{name}' needs custom code: {part.custom_code}",
                    "set model.trust_remote_code=true only if you trust this model's code",
                )
            )
        if part.weights and part.pickle_only and not model.allow_pickle:
            problems.append(
                Problem(
                    "model.source",
                    f"part '{name}' has only pickle weights (.bin/.pt/.ckpt), which can run code",
                    "convert them to .safetensors, or set model.allow_pickle=true to trust them",
                )
            )
    return problems


def _saved_problems(plan: Plan, found: PipelineParts) -> list[Problem]:
    """A plan for a pre-quantized folder must say what was saved (or nothing at all)."""
    saved = saved_entries(found.weighted)
    if not saved or plan.quant.is_empty:
        return []
    problems = []
    for name, entry in plan.targets(found).items():
        planned = entry.canonical() if entry is not None else None
        stored = saved[name].canonical() if name in saved else None
        if planned != stored:
            where = f"quant.mapping.{name}" if plan.quant.mode == "granular" else "quant"
            problems.append(
                Problem(
                    where,
                    f"plan says {_short(planned)} but {found.origin}/{name} was saved as "
                    f"{_short(stored)}",
                    "drop quant.* to load the folder as saved, or quantize the original model",
                )
            )
    return problems


def _short(entry: dict | None) -> str:
    import json

    return "unquantized" if entry is None else json.dumps(entry, separators=(",", ":"))


def _raw_name_problems(data: dict) -> list[Problem]:
    """Unknown/weightless part names, from unvalidated data (used when fields failed)."""
    model, quant = data.get("model"), data.get("quant")
    if not isinstance(model, dict) or not isinstance(quant, dict):
        return []
    found, problems = pipeline_parts(str(model.get("source")), model.get("pipeline"))
    if found is None:
        return problems
    mapping = quant.get("mapping") if isinstance(quant.get("mapping"), dict) else {}
    components = quant.get("components") if isinstance(quant.get("components"), list) else []
    named = {name: f"quant.mapping.{name}" for name in mapping}
    named.update({str(n): f"quant.components[{i}]" for i, n in enumerate(components)})
    problems = [p for name, where in named.items() if (p := _name_problem(name, where, found))]
    return problems + _mode_problems(
        quant.get("backend"), quant.get("kwargs"), quant.get("components"), mapping
    )


def _name_problem(name: str, where: str, found: PipelineParts) -> Problem | None:
    weighted = sorted(found.weighted)
    part = found.parts.get(name)
    if part is None:
        return Problem(
            where,
            f"'{name}' is not a part of {found.pipeline} ({found.origin})",
            _did_you_mean(name, weighted) + f"its parts with weights: {', '.join(weighted)}",
        )
    if not part.weights:
        return Problem(
            where,
            f"'{name}' ({part.class_name}) has no weights to quantize",
            f"quantize one of: {', '.join(weighted)}",
        )
    return None


def _part_problems(quant: QuantSpec, found: PipelineParts) -> list[Problem]:
    named: dict[str, tuple[str, EntryBase | None]] = {}
    if quant.mode == "global":
        entry = quant.global_entry()
        if quant.components is None:
            named = {n: ("quant", entry) for n, p in found.weighted.items() if not p.optional}
        for i, name in enumerate(quant.components or []):
            named[name] = (f"quant.components[{i}]", entry)
    else:
        for name, entry in quant.mapping.items():
            named[name] = (f"quant.mapping.{name}", entry)
    problems = []
    for name, (where, entry) in named.items():
        part = found.parts.get(name)
        name_problem = _name_problem(name, where, found)
        if name_problem is not None:
            problems.append(name_problem)
        elif part is not None and entry is not None:
            entry_where = where if quant.mode == "granular" else "quant"
            for problem in entry.check(part.library):  # type: ignore[arg-type]
                detail = f"{problem.what} ('{name}' is a {part.library} part)"
                problems.append(Problem(f"{entry_where}.{problem.where}", detail, problem.fix))
    # Cross-field rules of an entry, once per entry (a global entry serves many parts).
    entries = {where: entry for where, entry in named.values() if entry is not None}
    for where, entry in entries.items():
        where = where if quant.mode == "granular" else "quant"
        problems += [
            Problem(f"{where}.{p.where}", p.what, p.fix) for p in entry.check_consistency()
        ]
    return problems


class PlanProblems(ValueError):
    """Carries a validator's problems through pydantic (found again in `ctx.error`)."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        super().__init__("; ".join(str(p) for p in problems))


# --- turning pydantic errors into one line each --------------------------------------------

_TAGGED: dict[str, type[StrictModel]] = {
    **{key: spec.entry for key, spec in REGISTRY.items()},
    **QUANT_TYPES,
}


def _did_you_mean(name: str, candidates: Any) -> str:
    candidates = list(candidates)
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    close = close or [c for c in candidates if c.endswith(name) or name.endswith(c)][:1]
    return f"did you mean '{close[0]}'? " if close else ""


def _model_at(loc: tuple[Any, ...], tag: str | None) -> type[StrictModel] | None:
    """The model whose field the last element of `loc` names (for did-you-mean)."""
    cls: type[StrictModel] | None = _TAGGED[tag] if tag else Plan
    for element in loc:
        if isinstance(element, str) and element in _TAGGED:
            cls = _TAGGED[element]
        elif cls is not None and element in cls.model_fields:
            annotation = cls.model_fields[element].annotation
            is_model = isinstance(annotation, type) and issubclass(annotation, StrictModel)
            cls = annotation if is_model else None
    return cls


def problems_from_errors(
    errors: list[Mapping[str, Any]], prefix: tuple[Any, ...] = (), tag: str | None = None
) -> list[Problem]:
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
        problems.append(_one_problem(kind, ctx, error, path, loc, tag))
    return problems


def _one_problem(
    kind: str, ctx: dict, error: Mapping[str, Any], path: str, loc: tuple, tag: str | None
) -> Problem:
    value = error.get("input")
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1], tag)
        fields = list(model.model_fields) if model else []
        hint = _did_you_mean(str(loc[-1]), fields)
        return Problem(
            path,
            "unknown key",
            hint + (f"valid keys: {', '.join(fields)}" if fields else "remove it"),
        )
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        field = ctx.get("discriminator", "").strip("'")
        expected = ctx.get("expected_tags", "").replace("'", "")
        where = f"{path}.{field}" if path else field
        if kind == "union_tag_not_found":
            return Problem(where, "missing", f"set {field}: one of {expected}")
        found = ctx.get("tag")
        hint = _did_you_mean(str(found), expected.split(", "))
        if field == "backend" and found in backend_options():
            hint = f"'{found}' is a backend option: write the part's value as just {found}. "
        what = "unknown torchao quant type" if field == "name" else f"unknown {field}"
        return Problem(where, f"{what} '{found}'", hint + f"available: {expected}")
    if kind == "literal_error" and loc and loc[-1] == "backend":
        hint = (
            f"'{value}' is a backend option: use quant.mapping.<part>={value}. "
            if value in backend_options()
            else _did_you_mean(str(value), REGISTRY)
        )
        return Problem(
            path, f"unknown backend '{value}'", hint + f"available: {', '.join(REGISTRY)}"
        )
    if kind == "literal_error":
        return Problem(path, f"'{value}' is not allowed", f"expected {ctx.get('expected')}")
    if kind == "missing":
        return Problem(path, "required key is missing", "set it")
    return Problem(path, f"{error['msg']} (got {value!r})", "")


def validate(cfg: Any, *, config_dir: str | Path | None = None) -> Plan:
    """Check a composed config (DictConfig or dict) and return the Plan, or raise PlanError
    listing every problem. Pure: reads config files and model_index.json, never weights."""
    data = _plain(cfg)
    unsafe = target_problems(data)
    if unsafe:  # before anything else reads the config
        raise PlanError(unsafe)
    extra = (Path(config_dir).expanduser().resolve(),) if config_dir is not None else ()
    try:
        return Plan.model_validate(data, context={"options": backend_options(extra)})
    except ValidationError as exc:
        raise PlanError(problems_from_errors(exc.errors())) from None
    except PlanProblems as exc:  # raised by Plan's wrap validator
        raise PlanError(exc.problems) from None


def _plain(cfg: Any) -> Any:
    if isinstance(cfg, Plan):
        return cfg.model_dump(mode="json")
    if type(cfg).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf
        from omegaconf.errors import OmegaConfBaseException

        try:
            return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        except OmegaConfBaseException as exc:
            key = getattr(exc, "full_key", None) or "config"
            raise PlanError(
                Problem(str(key), str(exc).splitlines()[0], "set the value (e.g. model=tiny-flux)")
            ) from None
    return cfg


def plan_json_schema() -> dict[str, Any]:
    """JSON Schema of a plan. Global mode's `quant.kwargs` is typed per backend with if/then,
    since pydantic only knows it as a dict (its backend sits beside it, not inside it)."""
    schema = Plan.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "qconf plan"
    defs = schema["$defs"]
    quant = defs["QuantSpec"]
    quant["allOf"] = []
    for key, spec in REGISTRY.items():
        kwargs_model = spec.entry.model_fields["kwargs"].annotation
        name = kwargs_model.__name__
        if name not in defs:
            continue
        quant["allOf"].append(
            {
                "if": {"properties": {"backend": {"const": key}}, "required": ["backend"]},
                "then": {"properties": {"kwargs": {"$ref": f"#/$defs/{name}"}}},
            }
        )
    mapping_values = quant["properties"]["mapping"]["additionalProperties"]
    option_names = sorted(backend_options())
    mapping_values["anyOf"].insert(
        0, {"type": "string", "enum": option_names, "description": "a backend option"}
    )
    return schema
