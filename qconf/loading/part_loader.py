"""One part under a plan, for scripts that load parts one by one (training scripts do).

`load_part(cfg, "transformer")` runs every check the pipeline load runs — validation, the
environment, safetensors-only and no remote code unless the plan says so, and with
`train=True` the trainable check — then loads only that part with its quantization config.
`part_config(cfg, "transformer")` gives the library config object for scripts that call
`from_pretrained` themselves."""

from __future__ import annotations

from typing import Any

from qconf.backends import REGISTRY
from qconf.errors import ModelSourceError, PlanError, Problem
from qconf.loading.load_checks import check_folder
from qconf.loading.loader import (
    _transformers_default_skips,
    default_dtype_kept,
    load_file_parts,
    load_safety,
)
from qconf.loading.trainable import check_trainable
from qconf.plan.intake import intake
from qconf.plan.resolve import ResolvedPlan


def part_config(cfg: Any, part: str) -> Any:
    """The diffusers/transformers quantization config object for `part` (None: unquantized)."""
    plan = intake(cfg)
    resolved = plan.resolve()
    _check_part(resolved, part)
    resolved_part = resolved.components[part]
    if resolved_part is None:
        return None
    from qconf.loading.environment import check_environment

    check_environment(resolved)
    check_folder(resolved, plan.source.local_folder())
    skips = _transformers_default_skips(resolved, plan.source.load_path())
    return resolved_part.build(skips.get(part, ()))


def load_part(cfg: Any, part: str, *, train: bool = False) -> Any:
    """Load only `part` of the plan's model, quantized as the plan says."""
    plan = intake(cfg)
    resolved = plan.resolve()
    _check_part(resolved, part)
    from qconf.loading.environment import check_environment, prepare_backends, while_loading

    check_environment(resolved)
    if train:
        check_trainable(resolved, [part])
    prepare_backends(resolved, train)
    check_folder(resolved, plan.source.local_folder())
    source = plan.source.load_path()

    import torch

    dtype = getattr(torch, resolved.torch_dtype) if resolved.torch_dtype else None
    resolved_part = resolved.components[part]
    saved = resolved.parts.parts[part].saved_quantization is not None
    if (
        resolved_part is not None
        and not REGISTRY[resolved_part.backend].quantizes_on_load
        and not saved  # a saved part: the library reads its config.json
    ):
        only = ResolvedPlan(plan, resolved.parts, {part: resolved_part})
        with while_loading(only):
            return load_file_parts(only, source, dtype)[part]
    skips = _transformers_default_skips(resolved, source)
    config = resolved_part.build(skips.get(part, ())) if resolved_part is not None else None
    info = resolved.parts.parts[part]
    model_class = _part_class(info.library, info.class_name)
    dtype_key = "torch_dtype" if info.library == "diffusers" else "dtype"
    try:
        with while_loading(resolved), default_dtype_kept():
            return model_class.from_pretrained(
                source,
                subfolder=part,
                quantization_config=config,
                **{dtype_key: dtype},
                **load_safety(plan),
            )
    except (OSError, ValueError) as exc:  # see qconf.loading.loader.load
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelSourceError(
            Problem(f"model.source ({part})", f"cannot load '{plan.model.source}': {first}",
                    "use a local folder, a model in the Hugging Face cache, or a tiny-* model")
        ) from None  # fmt: skip


def _check_part(resolved: ResolvedPlan, part: str) -> None:
    if part not in resolved.components:
        raise PlanError(
            Problem(
                f"part '{part}'",
                f"not a weight-bearing part of {resolved.parts.pipeline}",
                f"use one of: {', '.join(sorted(resolved.components))}",
            )
        )


def _part_class(library: str, class_name: str) -> Any:
    import diffusers
    import transformers

    module = diffusers if library == "diffusers" else transformers
    if not hasattr(module, class_name):
        raise PlanError(
            Problem("model.source", f"'{class_name}' is not a {library} class",
                    "load_part loads diffusers and transformers classes only")
        )  # fmt: skip
    return getattr(module, class_name)
