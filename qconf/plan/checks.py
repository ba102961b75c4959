"""Cross-field checks of a plan against the pipeline it names (torch-free). Each returns
problems; none changes anything. The schema calls these, so its models (ModelSpec, QuantSpec,
Plan) are typed `Any` here: this module never imports the schema back."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import TypeAdapter, ValidationError

from qconf.backends import REGISTRY, BackendEntry, EntryBase, entry_from_saved
from qconf.errors import PlanError, Problem
from qconf.plan.messages import did_you_mean, problems_from_errors
from qconf.source.model import open_source
from qconf.source.parts import Part, PipelineParts

_ENTRY: TypeAdapter[EntryBase] = TypeAdapter(BackendEntry)


def mode_problems(backend: Any, kwargs: Any, components: Any, mapping: Any) -> list[Problem]:
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


def raw_name_problems(
    data: dict, open_source: Callable[[str, Any], Any] = open_source
) -> list[Problem]:
    """Unknown/weightless part names, from unvalidated data (used when fields failed).
    `open_source(source, pipeline)` gives (ModelSource | None, problems)."""
    model, quant = data.get("model"), data.get("quant")
    if not isinstance(model, dict) or not isinstance(quant, dict):
        return []
    pipeline = model.get("pipeline")
    source, problems = open_source(
        str(model.get("source")), pipeline if isinstance(pipeline, str) else None
    )
    if source is None:
        return problems
    found = source.parts
    mapping = quant.get("mapping") if isinstance(quant.get("mapping"), dict) else {}
    components = quant.get("components") if isinstance(quant.get("components"), list) else []
    named = {name: f"quant.mapping.{name}" for name in mapping if isinstance(name, str)}
    named.update({str(n): f"quant.components[{i}]" for i, n in enumerate(components)})
    problems = [p for name, where in named.items() if (p := _name_problem(name, where, found))]
    return problems + mode_problems(
        quant.get("backend"), quant.get("kwargs"), quant.get("components"), mapping
    )


def _name_problem(name: str, where: str, found: PipelineParts) -> Problem | None:
    weighted = sorted(found.weighted)
    part = found.parts.get(name)
    if part is None:
        return Problem(
            where,
            f"'{name}' is not a part of {found.pipeline} ({found.origin})",
            did_you_mean(name, weighted) + f"its parts with weights: {', '.join(weighted)}",
        )
    if not part.weights:
        return Problem(
            where,
            f"'{name}' ({part.class_name}) has no weights to quantize",
            f"quantize one of: {', '.join(weighted)}",
        )
    return None


def part_problems(quant: Any, found: PipelineParts) -> list[Problem]:
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
    entries = {
        where if quant.mode == "granular" else "quant": entry
        for where, entry in named.values()
        if entry is not None
    }
    for where, entry in entries.items():
        problems += [
            Problem(f"{where}.{p.where}", p.what, p.fix) for p in entry.check_consistency()
        ]
    return problems


def dtype_problems(model: Any, quant: Any) -> list[Problem]:
    """A GGUF part (the one backend with compute_dtype) computes in its compute_dtype, the rest
    of the pipeline in model.torch_dtype: two dtypes fail at the first matmul between them."""
    problems = []
    for name, entry in quant.mapping.items():
        dtype = getattr(getattr(entry, "kwargs", None), "compute_dtype", None)
        if dtype and model.torch_dtype and dtype != model.torch_dtype:
            problems.append(
                Problem(
                    f"quant.mapping.{name}.kwargs.compute_dtype",
                    f"{dtype}, but model.torch_dtype is {model.torch_dtype}",
                    "drop compute_dtype (it follows model.torch_dtype) or make them equal",
                )
            )
    return problems


def source_problems(model: Any, found: PipelineParts) -> list[Problem]:
    """Refuse to run code from a model folder unless the user opted in."""
    problems = []
    if found.custom_code and not model.trust_remote_code:
        problems.append(
            Problem(
                "model.source",
                f"the pipeline needs custom code: {found.custom_code}",
                "set model.trust_remote_code=true only if you trust this model's code",
            )
        )
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
        if part.weights and part.unread_weights and not part.pickle_only:
            found, wanted = part.unread_weights
            problems.append(
                Problem(
                    f"model.source ({name}/)",
                    f"its weights are in {found}, which {part.library} does not read (it reads "
                    f"{wanted})",
                    f"rename the file to {wanted}",
                )
            )
    return problems


_SAVED_METHODS = {
    s.quant_method for s in REGISTRY.values() if any(s.can_save.values()) or s.reloads_saved
}


def saved_entries(parts: Mapping[str, Part]) -> dict[str, EntryBase]:
    """Entries of the parts a folder holds pre-quantized (their config.json says how). A block
    qconf cannot read is a PlanError naming the part's config.json."""
    entries = {}
    for name, part in parts.items():
        if part.saved_quantization is not None:
            entries[name] = entry = _saved_entry(name, part.saved_quantization)
            if part.library in ("diffusers", "transformers") and (
                part.library not in entry.spec.config_class
            ):
                libraries = " and ".join(entry.spec.config_class)
                raise PlanError(
                    Problem(
                        f"model.source ({name}/config.json)",
                        f"part '{name}' ({part.library}) says quant_method "
                        f"'{entry.spec.quant_method}', which qconf reads on {libraries} parts only",
                        "load the unquantized model and quantize it with a plan",
                    )
                )
    return entries


def _saved_entry(name: str, saved: Mapping[str, Any]) -> EntryBase:
    where = f"model.source ({name}/config.json)"
    method = str(saved.get("quant_method"))
    spec = next((s for s in REGISTRY.values() if s.quant_method == method.lower()), None)
    if spec is None:
        raise PlanError(
            Problem(
                where,
                f"part '{name}' was saved with quant_method '{method}', which qconf does not model",
                f"qconf reads: {', '.join(sorted(_SAVED_METHODS))}",
            )
        )
    if not (any(spec.can_save.values()) or spec.reloads_saved):
        raise PlanError(
            Problem(
                where,
                f"part '{name}' says quant_method '{method}', which cannot be reloaded from a "
                "saved folder",
                f"load the original file with quant.mapping.{name}={{backend: {spec.key}, "
                "file: ...}"
                if "file" in spec.entry.model_fields
                else "load the unquantized model and quantize it with a plan",
            )
        )
    fix = f"compare it with a config.json {spec.key} writes, or re-save the model"
    try:
        entry = _ENTRY.validate_python(entry_from_saved(dict(saved)))
    except ValidationError as exc:
        raise PlanError(
            [
                Problem(where, f"quantization_config → {p.where}: {p.what}", fix)
                for p in problems_from_errors(exc.errors())
            ]
        ) from None
    except (TypeError, KeyError, AttributeError, ValueError, IndexError) as exc:
        raise PlanError(
            Problem(
                where,
                f"quantization_config has a field of the wrong shape ({type(exc).__name__}: "
                f"{str(exc)[:80]})",
                fix,
            )
        ) from None
    rules = entry.check_backend_rules()  # the settings a plan's entry must also keep
    if rules:
        raise PlanError(
            [Problem(where, f"quantization_config → {p.where}: {p.what}", fix) for p in rules]
        )
    return entry


def saved_problems(plan: Any, found: PipelineParts) -> list[Problem]:
    """A plan for a pre-quantized folder must say what was saved (or nothing at all); a backend
    that only reads saved folders cannot quantize a plain part."""
    saved = saved_entries(found.weighted)
    problems = []
    if not plan.quant.is_empty:
        for name, entry in plan.targets(found).items():
            if (
                entry is not None
                and entry.spec.saved_only
                and name not in saved
                and entry.own_source() is None
            ):
                where = f"quant.mapping.{name}" if plan.quant.mode == "granular" else "quant"
                problems.append(
                    Problem(
                        where,
                        f"{entry.spec.key} reads pre-quantized folders only; '{name}' of "
                        f"{found.origin} is not one",
                        f"point model.source at a folder saved with {entry.spec.key} and leave "
                        "quant empty"
                        + (
                            f", or name the part's own folder: {{backend: {entry.spec.key}, "
                            "folder: ...}"
                            if entry.source_field == "folder"
                            else ""
                        ),
                    )
                )
    if not saved or plan.quant.is_empty:
        return problems
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
    return "unquantized" if entry is None else json.dumps(entry, separators=(",", ":"))
