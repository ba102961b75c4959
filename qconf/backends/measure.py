"""How the report and the sensitivity walk read a loaded layer of one backend, keyed by the
class name of the tensor the backend puts in place of a weight, or of the layer module it puts
in place of a Linear (no import of the library unless such a tensor or layer is met). Each
backend module fills its own `Measure` (`Backend.measure`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class LayerMeasure:
    """A backend whose quantized layers are modules of its own holding plain tensors (codes,
    scales): the tensors alone cannot say what they stand for."""

    weight_numel: Callable[[Any], int]  # module -> weights its `weight` codes stand for
    state: tuple[str, ...]  # its tensors that are quant state (real bytes only, no weights)
    dequantize: Callable[[Any], Any]  # module -> the float weight it computes with
    kind: Callable[[Any], str] | None = None  # module -> its format, for the report's label
    codes: str = "weight"  # the module's tensor holding the codes (auto-round: `qweight`)


@dataclass(frozen=True)
class Measure:
    # tensor class -> weights it stands for (packed or block formats store fewer elements)
    numel: Mapping[str, Callable[[Any], int | None]] = field(default_factory=dict)
    # tensor class -> bytes of quant state kept beside the tensor's own storage
    state_bytes: Mapping[str, Callable[[Any], int]] = field(default_factory=dict)
    # tensor class -> the float weight it stands for (None: it still is the float weight)
    dequantize: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)
    # top-level packages of the modules the backend swaps in for quantized layers (their
    # layers count as quantized even when the weight is a plain tensor)
    layer_modules: tuple[str, ...] = ()
    # layer class -> how to read it (backends whose layer, not tensor, carries the format)
    layers: Mapping[str, LayerMeasure] = field(default_factory=dict)
