"""Per-backend byte models and the rules that pick the layers each backend quantizes.

BYTE_MODELS[registry key] says what one quantized layer costs; `is_target`, `skipped` and
`skip_patterns` say which layers a library hands to the backend, matched the way each
integration (diffusers or transformers) really matches them. Numbers read off real loads with
torchao 0.18, bitsandbytes 0.50.2 and optimum-quanto 0.2.7 (see tests/test_estimate.py)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from qconf.errors import PlanError, Problem


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


def _groups(layer: Layer, group_size: int | None, fails: bool = True) -> int | Left:
    """Scale groups of a row-wise (None) or grouped scheme. in_features must be a multiple of
    the group: IntxWeightOnly and Int8 configs assert it (the load fails, in diffusers and
    transformers alike); Int4WeightOnlyConfig logs and leaves the layer unquantized."""
    if group_size is None:
        return layer.rows
    if layer.cols % group_size:
        return Left(f"in_features {layer.cols} not a multiple of group {group_size}", fails)
    return layer.rows * layer.cols // group_size


def _bnb_4bit(layer: Layer, entry: Any) -> int:
    # Params4bit: two 4-bit codes per byte, whatever bnb_4bit_quant_storage says; one fp32 absmax
    # per 64 weights and the 16-entry fp32 NF4/FP4 code table, both kept per layer. Double
    # quant stores absmax as uint8 plus their mean (fp32), one fp32 absmax per 256 blocks and the
    # 256-entry fp32 dynamic code (so it only pays off for layers above ~64k weights).
    blocks = math.ceil(layer.numel / 64)
    base = math.ceil(layer.numel / 2) + 16 * 4
    if entry.kwargs.bnb_4bit_use_double_quant:
        return base + blocks + 4 + 4 * math.ceil(blocks / 256) + 256 * 4
    return base + 4 * blocks


def _bnb_8bit(layer: Layer, entry: Any) -> int:
    if entry.kwargs.llm_int8_has_fp16_weight:  # weights stay in the load dtype until the matmul
        return layer.numel * layer.dtype_size
    return layer.numel + 4 * layer.rows  # int8 weights + fp32 row scales (SCB)


def _torchao(layer: Layer, entry: Any) -> int | Left:
    quant_type = entry.kwargs.quant_type
    name, group = quant_type.name, getattr(quant_type, "group_size", None)
    if name in ("Int8WeightOnlyConfig", "Int8DynamicActivationInt8WeightConfig"):
        groups = _groups(layer, group)  # Int8Tensor: int8 + fp32 scale + int8 zero point
        return groups if isinstance(groups, Left) else layer.numel + groups * (4 + 1)
    if name == "Float8WeightOnlyConfig":  # Float8Tensor: float8 + fp32 scale per row
        return layer.numel + 4 * layer.rows
    if name == "Float8DynamicActivationFloat8WeightConfig":
        return layer.numel + 4 * (layer.rows if quant_type.granularity == "per_row" else 1)
    if name == "IntxWeightOnlyConfig":
        # IntxUnpackedToInt8Tensor: any width is stored one int8 per weight (no packing), with a
        # scale in the weight's dtype and an int8 zero point per group (per row without one).
        groups = _groups(layer, group)
        return groups if isinstance(groups, Left) else layer.numel + groups * (layer.dtype_size + 1)
    if name == "Int4WeightOnlyConfig":  # Int4Tensor (CUDA): packed int4, scale + zero per group
        groups = _groups(layer, group or 128, fails=False)
        if isinstance(groups, Left):
            return groups
        return math.ceil(layer.numel / 2) + groups * 2 * layer.dtype_size
    raise PlanError(Problem("quant", f"no byte model for torchao {name}", "add one to estimate"))


def _quanto_group(cols: int) -> int | None:
    """optimum-quanto's own int4/int2 group size (QModuleMixin.__init__): 128, stepped down by
    32 until it divides in_features; per-row scales when in_features <= 128 or none fits."""
    group = 128
    if cols <= group:
        return None
    while cols % group and group > 32:
        group -= 32
    return None if cols % group else group


def _quanto(layer: Layer, entry: Any) -> int | Left:
    weights = entry.kwargs.weights_dtype
    if weights in ("int8", "float8"):  # one byte per weight + a row scale in the weight dtype
        return layer.numel + layer.rows * layer.dtype_size
    bits = 4 if weights == "int4" else 2
    group = _quanto_group(layer.cols)
    if bits == 4 and group == 128 and layer.dtype == "bfloat16" and layer.rows % 16:
        # WeightQBitsTensor.create hands bf16 int4 weights in groups of 128 to tinygemm, whose
        # CPU packing (torch._convert_weight_to_int4pack_for_cpu) needs out_features % 16 == 0;
        # the same bytes as below when it packs.
        return Left(f"out_features {layer.rows} not a multiple of 16 (int4 packing)", fails=True)
    scales = layer.numel // group if group else layer.rows
    packed = math.ceil(layer.rows * bits / 8) * layer.cols  # packed along the rows
    return packed + 2 * scales * layer.dtype_size  # scale and shift, both in the weight dtype


@dataclass(frozen=True)
class ByteModel:
    """What a backend allocates for one quantized layer (which layers: `is_target`, `skipped`)."""

    # (layer, the part's entry) -> bytes of the quantized weight, quant state included
    weight_bytes: Callable[[Layer, Any], int | Left]  # Left: stays unquantized
    # Buffers each quantized module gains: quanto's input/output scale scalars (fp32 in
    # transformers, the weight dtype in diffusers). (library, weight dtype size) -> bytes.
    module_extra: Callable[[str, int], int] = lambda library, size: 0
    # Load dtype when the plan sets none, per library (the quantizers' update_torch_dtype).
    default_dtype: dict[str, str] = field(default_factory=dict)


BYTE_MODELS: dict[str, ByteModel] = {
    "bitsandbytes_4bit": ByteModel(_bnb_4bit, default_dtype={"diffusers": "float16"}),
    "bitsandbytes_8bit": ByteModel(_bnb_8bit, default_dtype={"diffusers": "float16"}),
    "torchao": ByteModel(_torchao, default_dtype={"diffusers": "bfloat16"}),
    "quanto": ByteModel(
        _quanto, lambda library, size: 2 * (4 if library == "transformers" else size)
    ),
}


# --- which layers a library hands to the backend ----------------------------------------------


def is_target(module: Any, library: str, entry: Any) -> bool:
    import torch

    if library == "transformers" and entry.backend.startswith("bitsandbytes"):
        # replace_with_bnb_linear: exact nn.Linear (not subclasses) and GPT-2 style Conv1D
        return type(module) is torch.nn.Linear or type(module).__name__ == "Conv1D"
    # torchao: Linear only. transformers' include_input_output_embeddings un-skips the output
    # embedding (a Linear) but its quantize_ call keeps torchao's Linear-only filter, so
    # nn.Embedding weights stay unquantized unless the quant type is an FqnToConfig.
    return isinstance(module, torch.nn.Linear)


def skipped(library: str, backend: str, name: str, patterns: list[str]) -> bool:
    """Whether module `name` is on the skip list, matched the way each integration matches."""
    leaf = name.rsplit(".", 1)[-1]
    if library == "transformers":
        from transformers.quantizers.quantizers_utils import should_convert_module

        # torchao checks the parameter name, so a bare suffix like "wo" never matches there
        full = f"{name}.weight" if backend == "torchao" else name
        return not should_convert_module(full, patterns)
    if backend == "quanto":  # diffusers replaces children by their own (leaf) name only
        return leaf in patterns
    if backend == "torchao":  # substring test on the parameter name, or the exact name
        param = f"{name}.weight"
        return any(f"{key}." in param or key == param for key in patterns)
    return leaf in patterns or any(f"{key}." in name or key == name for key in patterns)


def skip_patterns(model: Any, library: str, entry: Any) -> list[str]:
    """The library's final modules_to_not_convert for this part."""
    param = entry.skip_param
    if library == "diffusers":
        given = entry.library_kwargs(library).get(param) or []
        return [*given, *(type(model)._keep_in_fp32_modules or [])]
    from transformers.quantizers.base import get_keys_to_not_convert

    defaults = sorted(get_keys_to_not_convert(model))
    given = entry.library_kwargs(library, defaults).get(param)
    patterns = list(defaults if given is None else given)
    patterns += list(model._keep_in_fp32_modules or [])
    if entry.backend == "torchao" and entry.kwargs.include_input_output_embeddings:
        embeddings = {id(model.get_input_embeddings()), id(model.get_output_embeddings())}
        names = {n for n, m in model.named_modules() if id(m) in embeddings}
        patterns = [p for p in patterns if p not in names]
    return patterns
