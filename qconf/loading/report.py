"""Measure what a load really allocated, per part: real bytes (quantization state and the inner
tensors of tensor subclasses included), the bytes the same weights take unquantized, and which
layer types the weights became."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from functools import cache
from typing import Any

from qconf.backends.measure import Measure

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
    """Real bytes of a tensor: inner tensors of subclasses and the quant state a backend keeps
    beside its packed weights (each backend's `Measure.state_bytes`)."""
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is not None and type(tensor).__name__ not in _PLAIN_TENSOR_TYPES:
        names, _ = flatten()
        return sum(tensor_bytes(getattr(tensor, name)) for name in names)
    total = tensor.numel() * tensor.element_size()
    state = backend_measures().state_bytes.get(type(tensor).__name__)
    return total + (state(tensor) if state is not None else 0)


def logical_numel(tensor: Any) -> int:
    """Weights the tensor stands for (block and packed formats store fewer elements)."""
    count = backend_measures().numel.get(type(tensor).__name__)
    numel = count(tensor) if count is not None else None
    return tensor.numel() if numel is None else numel


@cache
def backend_measures() -> Measure:
    """Every backend's measures in one (tensor class names do not collide across backends)."""
    from qconf.backends import REGISTRY

    specs = [spec.measure for spec in REGISTRY.values()]
    return Measure(
        numel={k: v for m in specs for k, v in m.numel.items()},
        state_bytes={k: v for m in specs for k, v in m.state_bytes.items()},
        dequantize={k: v for m in specs for k, v in m.dequantize.items()},
        layer_modules=tuple(dict.fromkeys(root for m in specs for root in m.layer_modules)),
        layers={k: v for m in specs for k, v in m.layers.items()},
    )


def measure_part(
    name: str, module: Any, library: str, backend: str | None, load_dtype: Any
) -> PartReport:
    import torch

    params = unquantized = real = 0
    for owner, local, tensor in _tensors(module):
        layer = backend_measures().layers.get(type(owner).__name__)
        if layer is not None and local in layer.state:  # quant state: bytes, not weights
            real += tensor_bytes(tensor)
            continue
        if layer is not None and local == layer.codes:  # codes standing for the float weight
            numel, is_quantized = layer.weight_numel(owner), True
        else:
            numel = logical_numel(tensor)
            is_quantized = numel != tensor.numel() or _tensor_label(tensor) is not None
        dtype = tensor.dtype
        if is_quantized or not dtype.is_floating_point:
            dtype = load_dtype if (is_quantized and load_dtype is not None) else dtype
        if is_quantized and not dtype.is_floating_point:
            dtype = torch.float32
        # a backend's own layer may hold its codes and bias as buffers, not parameters
        if isinstance(tensor, torch.nn.Parameter) or layer is not None:
            params += numel
        unquantized += numel * dtype.itemsize
        real += tensor_bytes(tensor)
    layers: Counter[str] = Counter()
    with_weight = 0
    layer_measures = backend_measures().layers
    for module_part in module.modules():
        own = layer_measures.get(type(module_part).__name__)
        weight = getattr(module_part, own.codes if own is not None else "weight", None)
        if not isinstance(weight, torch.Tensor):
            continue
        with_weight += 1
        label = _layer_label(module_part, weight)
        if label is not None:
            layers[label] += 1
    return PartReport(
        name, library, backend, params, unquantized, real, dict(sorted(layers.items())), with_weight
    )


def _tensors(module: Any) -> list[tuple[Any, str, Any]]:
    """(owning module, local name, tensor) of every parameter and buffer, each tensor once."""
    seen: set[int] = set()
    found = []
    for owner in module.modules():
        for local, tensor in [*owner._parameters.items(), *owner._buffers.items()]:
            if tensor is not None and id(tensor) not in seen:
                seen.add(id(tensor))
                found.append((owner, local, tensor))
    return found


def _tensor_label(tensor: Any) -> str | None:
    kind = type(tensor).__name__
    return None if kind in _PLAIN_TENSOR_TYPES else kind


def _layer_label(module: Any, weight: Any) -> str | None:
    """'Linear4bit[Params4bit]', 'Linear[Int8Tensor]', 'SDNQLinear[uint4]', ... or None for an
    unquantized layer."""
    module_kind = type(module).__name__
    tensor_kind = _tensor_label(weight)
    measures = backend_measures()
    quantizing_module = (
        type(module).__module__.split(".")[0] in measures.layer_modules
        or type(module).__name__ in measures.layers
    )
    if tensor_kind is None and not quantizing_module:
        return None
    layer = measures.layers.get(module_kind)
    if layer is not None:  # plain-tensor codes: the layer says the format
        kind = layer.kind(module) if layer.kind else str(weight.dtype).removeprefix("torch.")
        return f"{module_kind}[{kind}]"
    return f"{module_kind}[{tensor_kind or type(weight).__name__}]"
