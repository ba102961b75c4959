"""What a backend tells the estimator: bytes of one quantized layer and which layers it takes.

Each backend module builds its own `ByteModel` (`Backend.byte_model`); qconf.estimate asks the
registry and never names a backend. Torch-free at import: `linear_only` imports torch lazily."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# safetensors dtype names -> bytes per element (a header's tensors, priced as stored)
SAFETENSORS_SIZES = {"F8_E4M3": 1, "F8_E5M2": 1, "U8": 1, "I8": 1, "BOOL": 1, "F16": 2,
                     "BF16": 2, "I16": 2, "U16": 2, "F32": 4, "I32": 4, "U32": 4, "F64": 8,
                     "I64": 8, "U64": 8}  # fmt: skip
SAFETENSORS_FLOATS = {"F16", "BF16", "F32", "F64"}


def stored_size(dtype: str, file: str) -> int:
    """Bytes per element of a safetensors dtype; another name is a forged or newer header."""
    size = SAFETENSORS_SIZES.get(dtype)
    if size is None:
        from qconf.errors import ModelSourceError, Problem

        raise ModelSourceError(
            Problem(file, f"a tensor of dtype '{dtype}' qconf cannot price", "re-save the file")
        )
    return size


@dataclass(frozen=True)
class Layer:
    """One weight a backend quantizes: `rows` output rows of `cols` inputs each."""

    rows: int
    cols: int
    dtype_size: int  # bytes per element of its unquantized dtype (some scales are in it)
    dtype: str = ""  # that dtype's name ("bfloat16"): some layouts depend on it

    @property
    def numel(self) -> int:
        return self.rows * self.cols


@dataclass(frozen=True)
class Left:
    """A layer the backend leaves in its unquantized dtype: skipped silently, or (`fails`) the
    library stops the load on it."""

    reason: str
    fails: bool = False


def groups(layer: Layer, group_size: int | None, fails: bool = True) -> int | Left:
    """Scale groups of a row-wise (None) or grouped scheme. in_features must be a multiple of
    the group, else the layer fails to load (`fails`) or stays unquantized."""
    if group_size is None:
        return layer.rows
    if layer.cols % group_size:
        return Left(f"in_features {layer.cols} not a multiple of group {group_size}", fails)
    return layer.rows * layer.cols // group_size


def linear_only(module: Any, library: str, entry: Any) -> bool:
    """Most integrations hand the backend every nn.Linear (subclasses included)."""
    import torch

    return isinstance(module, torch.nn.Linear)


def leaf_or_dotted(name: str, patterns: list[str]) -> bool:
    """diffusers' usual skip match: the leaf name, or a key naming the module or a parent."""
    leaf = name.rsplit(".", 1)[-1]
    return leaf in patterns or any(f"{key}." in name or key == name for key in patterns)


def transformers_skipped(name: str, patterns: list[str]) -> bool:
    """transformers' skip match on the module name."""
    from transformers.quantizers.quantizers_utils import should_convert_module

    return not should_convert_module(name, patterns)


def _no_change(model: Any, library: str, entry: Any, patterns: list[str]) -> list[str]:
    return patterns


@dataclass(frozen=True)
class ByteModel:
    """What a backend allocates for one quantized layer, and which layers it quantizes."""

    # (layer, the part's entry) -> bytes of the quantized weight, quant state included
    weight_bytes: Callable[[Layer, Any], int | Left]  # Left: stays unquantized
    # Buffers each quantized module gains (quanto's input/output scale scalars).
    # (library, weight dtype size) -> bytes.
    module_extra: Callable[[str, int], int] = lambda library, size: 0
    # Load dtype when the plan sets none, per library (the quantizers' update_torch_dtype).
    default_dtype: dict[str, str] = field(default_factory=dict)
    # (module, library, entry) -> whether the integration hands this module to the backend
    is_target: Callable[[Any, str, Any], bool] = linear_only
    # (name, final skip patterns) -> skipped, per library; absent library: the usual rule
    skipped: dict[str, Callable[[str, list[str]], bool]] = field(default_factory=dict)
    # (model, library, entry, patterns) -> the final patterns (e.g. entries that un-skip some)
    adjust_patterns: Callable[[Any, str, Any, list[str]], list[str]] = _no_change

    def is_skipped(self, library: str, name: str, patterns: list[str]) -> bool:
        rule = self.skipped.get(library)
        if rule is not None:
            return rule(name, patterns)
        if library == "transformers":
            return transformers_skipped(name, patterns)
        return leaf_or_dotted(name, patterns)
