"""optimum-quanto. The two libraries spell the weight dtype differently (diffusers
`weights_dtype`, transformers `weights`); qconf uses diffusers' spelling for both."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from pydantic import Field

from qconf.backends.base import (
    Backend,
    EntryBase,
    KnownFailure,
    KwargsBase,
    Library,
    saved_names,
)
from qconf.backends.bytes import ByteModel, Layer, Left
from qconf.backends.measure import Measure


class QuantoKwargs(KwargsBase):
    weights_dtype: Literal["float8", "int8", "int4", "int2"] = Field(
        "int8", description="Weight dtype (transformers calls it `weights`)."
    )
    modules_to_not_convert: list[str] | None = Field(
        None, description="Module names left unquantized."
    )


# bench/estimate-vs-measured.md, fitted to full-size Flux.1-dev: int8 1.25, float8 1.88, int4
# 2.34, rounded up (glibc keeps quanto's freed small allocations; readings move run to run);
# int2 goes through int4's path and was not measured.
_LOAD_PEAK_RATIOS = {"int8": 1.3, "float8": 1.9, "int4": 2.4, "int2": 2.4}


class QuantoEntry(EntryBase):
    backend: Literal["quanto"]
    kwargs: QuantoKwargs = Field(default_factory=QuantoKwargs)

    @classmethod
    def from_saved(cls, saved: Mapping[str, Any]) -> dict[str, Any]:
        weights = saved.get("weights_dtype", saved.get("weights", "int8"))  # diffusers/transformers
        kwargs: dict[str, Any] = {"weights_dtype": weights}
        data: dict[str, Any] = {"backend": "quanto", "kwargs": kwargs}
        if saved.get("modules_to_not_convert"):
            data["skip"] = saved_names(saved["modules_to_not_convert"])
        return data

    def load_peak_ratio(self) -> float:
        return _LOAD_PEAK_RATIOS[self.kwargs.weights_dtype]

    def variant(self) -> str:
        return self.kwargs.weights_dtype

    def build(self, library: Library, default_skips: Sequence[str] = ()) -> Any:
        if library == "diffusers":
            from diffusers import QuantoConfig
        else:
            from transformers import QuantoConfig
        return QuantoConfig(**self.library_kwargs(library, default_skips))


def _quanto_group(cols: int) -> int | None:
    """optimum-quanto's own int4/int2 group size (QModuleMixin.__init__): 128, stepped down by
    32 until it divides in_features; per-row scales when in_features <= 128 or none fits."""
    group = 128
    if cols <= group:
        return None
    while cols % group and group > 32:
        group -= 32
    return None if cols % group else group


def _layer_bytes(layer: Layer, entry: Any) -> int | Left:
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


QUANTO = QuantoEntry.spec = Backend(
    key="quanto",
    description="optimum-quanto (int8/int4/int2/float8 weights; deprecated in diffusers)",
    extra="quanto",
    module="optimum.quanto",
    distribution="optimum-quanto",
    entry=QuantoEntry,
    config_class={"diffusers": "QuantoConfig", "transformers": "QuantoConfig"},
    params={
        "diffusers": {
            "weights_dtype": "weights_dtype",
            "modules_to_not_convert": "modules_to_not_convert",
        },
        "transformers": {
            "weights_dtype": "weights",
            "modules_to_not_convert": "modules_to_not_convert",
        },
    },
    # transformers refuses to save quanto models (STACK-FACTS).
    can_save={"diffusers": True, "transformers": False},
    trainable={"diffusers": True, "transformers": True},
    quant_method="quanto",
    withheld={
        "activations": "transformers' quanto quantizer refuses quantized activations at load "
        '("We don\'t support quantizing the activations")'
    },
    load_peak_ratio=max(_LOAD_PEAK_RATIOS.values()),  # per weights_dtype: QuantoEntry
    # Measured with python -m qconf.sensitivity.capability_walk (optimum-quanto 0.2.7, torch 2.13
    # CPU); tests/test_capability.py re-measures the bfloat16 ones.
    known_failures=(
        # The VAE's attention (decoder.mid_block.attentions.0.to_q) gets a transposed,
        # non-contiguous input; quanto sends bfloat16 inputs to torch's int8pack kernel, which
        # refuses it. float16/float32 take quanto's generic path and work.
        KnownFailure(
            "int8",
            "AutoencoderKL",
            "cpu",
            ("bfloat16",),
            "RuntimeError: _weight_int8pack_mm_cpu : A must be contiguous on the last dimension",
        ),
        # Wan's condition embedder feeds time_embedder.linear_2 a float32 input; quanto's int4
        # matmul then meets weights in the load dtype. Loaded in float32 it works.
        KnownFailure(
            "int4",
            "WanTransformer3DModel",
            "cpu",
            ("bfloat16", "float16"),
            "RuntimeError: expected m1 and m2 to have the same dtype (float32 input, "
            "int4 weights in the load dtype)",
        ),
    ),
    byte_model=ByteModel(
        _layer_bytes,
        # input/output scale scalars per quantized module: fp32 in transformers, the weight
        # dtype in diffusers
        module_extra=lambda library, size: 2 * (4 if library == "transformers" else size),
        # diffusers replaces children by their own (leaf) name only
        skipped={"diffusers": lambda name, patterns: name.rsplit(".", 1)[-1] in patterns},
    ),
    measure=Measure(layer_modules=("optimum",)),
    # diffusers' deprecation: `qconf list backends` says it once
    quiet_warnings=((FutureWarning, r"`Quanto(Config|Quantizer)` is deprecated"),),
    deprecated={
        "diffusers": "diffusers deprecates QuantoConfig (removal planned for diffusers 1.0); "
        "torchao offers the same int8/int4/float8 weights"
    },
)
