"""Measure what a load really allocated, per part: real bytes (quantization state and the inner
tensors of tensor subclasses included), the bytes the same weights take unquantized, and which
layer types the weights became."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

_PLAIN_TENSOR_TYPES = ("Parameter", "Tensor")


@dataclass
class PartReport:
    part: str
    library: str
    backend: str | None
    params: int  # logical parameter count
    bytes_unquantized: int  # the same parameters in their unquantized dtype
    bytes: int  # what is really allocated, quant state included
    quantized_layers: dict[str, int] = field(default_factory=dict)  # "Linear[Int8Tensor]": n
    layers: int = 0  # modules holding a weight


class PartTotals:
    """Pipeline totals over `parts` (each with .bytes and .bytes_unquantized); shared by the
    measured LoadReport and the computed Estimate."""

    parts: dict[str, Any]

    @property
    def total_bytes(self) -> int:
        return sum(p.bytes for p in self.parts.values())

    @property
    def total_bytes_unquantized(self) -> int:
        return sum(p.bytes_unquantized for p in self.parts.values())


@dataclass
class LoadReport(PartTotals):
    pipeline: str
    torch_dtype: str | None
    load_seconds: float
    parts: dict[str, PartReport]

    def to_json(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "torch_dtype": self.torch_dtype,
            "load_seconds": round(self.load_seconds, 3),
            "components": {name: asdict(p) for name, p in self.parts.items()},
            "total_bytes": self.total_bytes,
            "total_bytes_unquantized": self.total_bytes_unquantized,
        }


def tensor_bytes(tensor: Any) -> int:
    """Real bytes of a tensor: inner tensors of subclasses (torchao, quanto) and the quant state
    bitsandbytes keeps beside its packed weights (absmax, nested absmax, code, SCB)."""
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is not None and type(tensor).__name__ not in _PLAIN_TENSOR_TYPES:
        names, _ = flatten()
        return sum(tensor_bytes(getattr(tensor, name)) for name in names)
    total = tensor.numel() * tensor.element_size()
    state = getattr(tensor, "quant_state", None)
    if state is not None:
        total += _quant_state_bytes(state)
    scb = getattr(tensor, "SCB", None)
    if scb is not None:
        total += scb.numel() * scb.element_size()
    return total


def _quant_state_bytes(state: Any) -> int:
    total = 0
    for name in ("absmax", "code", "offset"):
        value = getattr(state, name, None)
        if value is not None and hasattr(value, "element_size"):
            total += value.numel() * value.element_size()
    nested = getattr(state, "state2", None)
    return total + (_quant_state_bytes(nested) if nested is not None else 0)


def logical_numel(tensor: Any) -> int:
    quant_type = getattr(tensor, "quant_type", None)
    if type(tensor).__name__ == "GGUFParameter" and quant_type is not None:
        from gguf import GGML_QUANT_SIZES  # (weights per block, bytes per block)

        block, block_bytes = GGML_QUANT_SIZES[quant_type]
        return tensor.numel() * tensor.element_size() // block_bytes * block
    state = getattr(tensor, "quant_state", None)
    if state is not None and getattr(state, "shape", None) is not None:  # packed 4-bit
        numel = 1
        for dim in state.shape:
            numel *= dim
        return numel
    return tensor.numel()


def measure_part(
    name: str, module: Any, library: str, backend: str | None, load_dtype: Any
) -> PartReport:
    import torch

    params = unquantized = real = 0
    tensors = list(module.named_parameters()) + list(module.named_buffers())
    for _, tensor in tensors:
        numel = logical_numel(tensor)
        is_quantized = numel != tensor.numel() or _tensor_label(tensor) is not None
        dtype = tensor.dtype
        if is_quantized or not dtype.is_floating_point:
            dtype = load_dtype if (is_quantized and load_dtype is not None) else dtype
        if is_quantized and not dtype.is_floating_point:
            dtype = torch.float32
        if isinstance(tensor, torch.nn.Parameter):
            params += numel
        unquantized += numel * dtype.itemsize
        real += tensor_bytes(tensor)
    layers: Counter[str] = Counter()
    with_weight = 0
    for module_part in module.modules():
        weight = getattr(module_part, "weight", None)
        if not isinstance(weight, torch.Tensor):
            continue
        with_weight += 1
        label = _layer_label(module_part, weight)
        if label is not None:
            layers[label] += 1
    return PartReport(
        name, library, backend, params, unquantized, real, dict(sorted(layers.items())), with_weight
    )


def _tensor_label(tensor: Any) -> str | None:
    kind = type(tensor).__name__
    return None if kind in _PLAIN_TENSOR_TYPES else kind


def _layer_label(module: Any, weight: Any) -> str | None:
    """'Linear4bit[Params4bit]', 'Linear[Int8Tensor]', ... or None for an unquantized layer."""
    module_kind = type(module).__name__
    tensor_kind = _tensor_label(weight)
    quantizing_module = type(module).__module__.split(".")[0] in ("bitsandbytes", "optimum")
    if tensor_kind is None and not quantizing_module:
        return None
    return f"{module_kind}[{tensor_kind or type(weight).__name__}]"
