"""The estimator's view of the registry: each backend's byte model and layer rules.

Every backend module owns its `ByteModel` (qconf/backends/bytes.py): what one quantized layer
costs and which layers its library integrations hand it, matched the way each integration
(diffusers or transformers) really matches them. Numbers read off real loads (see
tests/test_estimate.py). Nothing here names a backend."""

from __future__ import annotations

from typing import Any

from qconf.backends import REGISTRY
from qconf.backends.bytes import ByteModel, Layer, Left

__all__ = ["BYTE_MODELS", "ByteModel", "Layer", "Left", "is_target", "skip_patterns", "skipped"]

BYTE_MODELS: dict[str, ByteModel] = {
    key: spec.byte_model for key, spec in REGISTRY.items() if spec.byte_model is not None
}


def is_target(module: Any, library: str, entry: Any) -> bool:
    """Whether `library` hands `module` to the entry's backend (skip lists aside)."""
    return BYTE_MODELS[entry.backend].is_target(module, library, entry)


def skipped(library: str, backend: str, name: str, patterns: list[str]) -> bool:
    """Whether module `name` is on the skip list, matched the way each integration matches."""
    return BYTE_MODELS[backend].is_skipped(library, name, patterns)


def skip_patterns(model: Any, library: str, entry: Any) -> list[str]:
    """The library's final modules_to_not_convert for this part."""
    param = entry.skip_param
    model_bytes = BYTE_MODELS[entry.backend]
    if library == "diffusers":
        given = entry.library_kwargs(library).get(param) or []
        patterns = [*given, *(type(model)._keep_in_fp32_modules or [])]
        return model_bytes.adjust_patterns(model, library, entry, patterns)
    from transformers.quantizers.base import get_keys_to_not_convert

    defaults = sorted(get_keys_to_not_convert(model))
    given = entry.library_kwargs(library, defaults).get(param)
    patterns = list(defaults if given is None else given)
    patterns += list(model._keep_in_fp32_modules or [])
    return model_bytes.adjust_patterns(model, library, entry, patterns)
