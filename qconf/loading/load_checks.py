"""Checks around the real load (imports torch and the libraries; used by qconf.loading.loader only).

Before: a local model folder's weight files are complete (safetensors headers against file
sizes), its GGUF files parse, and the classes it names exist in the installed libraries.
After: weights missing from a part's checkpoint. diffusers leaves such parameters on the meta
device and transformers fills them with fresh random values; both only log it. qconf looks for
meta parameters and records transformers' own missing-key list (after its renames, tied weights
and ignore lists), and fails the load naming the part and the count."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qconf.errors import ModelSourceError, Problem
from qconf.source.files import part_header
from qconf.source.limits import check_weight_headers
from qconf.source.parts import PipelineParts


def check_folder(resolved: Any, folder: Path | None) -> None:
    """Refuse before loading: truncated weights, broken pre-quantized files, classes not
    installed."""
    for name, part in resolved.quantized.items():
        where = f"quant.mapping.{name}.{part.entry.source_field}"
        part.entry.check_file(where, resolved.parts.parts[name].class_name)
    if folder is None or not (folder / "model_index.json").is_file():
        return
    if resolved.plan.source.kind != "tiny":  # qconf builds those itself from the table
        _check_classes(resolved.parts)
    for name in resolved.parts.weighted:
        own = resolved.components.get(name)
        # a part read from its own file or folder (a saved part is read from this folder)
        from_file = own is not None and own.entry.own_source() is not None
        if (folder / name).is_dir() and not from_file:
            check_weight_headers(folder / name)  # how much there is to parse, first
            part_header(folder / name)


def _check_classes(parts: PipelineParts) -> None:
    import diffusers
    import transformers

    libraries = {"diffusers": diffusers, "transformers": transformers}
    custom = parts.custom_code or any(p.library not in libraries for p in parts.parts.values())
    if not custom and getattr(diffusers, parts.pipeline, None) is None:
        raise ModelSourceError(
            Problem(
                f"{parts.origin}/model_index.json",
                f"pipeline class '{parts.pipeline}' is not in diffusers {diffusers.__version__}",
                "upgrade diffusers, or fix _class_name",
            )
        )
    bases = {"diffusers": diffusers.ModelMixin, "transformers": transformers.PreTrainedModel}
    for name, part in parts.parts.items():
        module = libraries.get(part.library)
        found = getattr(module, part.class_name, None) if module is not None else None
        if part.weights and isinstance(found, type) and not issubclass(found, bases[part.library]):
            raise ModelSourceError(
                Problem(
                    f"{parts.origin}/model_index.json ({name})",
                    f"'{part.class_name}' is not a {part.library} model class",
                    f"name the part's model class (a {bases[part.library].__name__})",
                )
            )
        if module is not None and found is None:
            raise ModelSourceError(
                Problem(
                    f"{parts.origin}/model_index.json ({name})",
                    f"{part.library} {module.__version__} has no class '{part.class_name}'",
                    f"fix the entry, or upgrade {part.library}",
                )
            )


@contextlib.contextmanager
def missing_keys() -> Iterator[dict[int, list[str]]]:
    """{id(model): keys transformers found missing from the checkpoint}, for loads inside.
    (diffusers needs no hook: it leaves missing parameters on the meta device; its own
    missing-key list also names keys a pre-quantized quanto checkpoint stores differently.)"""
    from transformers import PreTrainedModel

    found: dict[int, list[str]] = {}
    original = PreTrainedModel.__dict__.get("_finalize_model_loading")
    if not isinstance(original, staticmethod):  # transformers changed; test_bad_inputs says so
        yield found
        return

    @functools.wraps(original.__func__)
    def finalize(model: Any, load_config: Any, loading_info: Any) -> Any:
        info = original.__func__(model, load_config, loading_info)
        found[id(model)] = sorted(info.missing_keys)
        return info

    PreTrainedModel._finalize_model_loading = staticmethod(finalize)
    try:
        yield found
    finally:
        PreTrainedModel._finalize_model_loading = original


def missing_key_problems(pipeline: Any, parts: Any, found: dict[int, list[str]]) -> list[Problem]:
    """One problem per part whose checkpoint lacked parameters (or left them on meta)."""
    problems = []
    for name in parts.weighted:
        module = getattr(pipeline, name, None)
        if module is None or not hasattr(module, "named_parameters"):
            continue
        keys = set(found.get(id(module), []))
        keys |= {key for key, p in module.named_parameters() if _on_meta(p)}
        if keys:
            shown = ", ".join(sorted(keys)[:3]) + (", ..." if len(keys) > 3 else "")
            problems.append(
                Problem(
                    f"model.source ({name})",
                    f"{len(keys)} weight(s) missing from the checkpoint would be left "
                    f"uninitialised: {shown}",
                    "re-download or re-save the model; its weight files do not match its "
                    "config.json",
                )
            )
    return problems


def _on_meta(tensor: Any) -> bool:
    """No data behind it. A tensor subclass (quanto's QBytesTensor) may report the meta device
    for its wrapper while its inner tensors hold the data: look inside."""
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is None:
        return tensor.device.type == "meta"
    return any(_on_meta(getattr(tensor, name)) for name in flatten()[0])
