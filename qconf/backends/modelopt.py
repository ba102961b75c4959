"""NVIDIA ModelOpt (diffusers' `NVIDIAModelOptConfig`, package nvidia-modelopt): FP8/INT8/INT4/
NF4/NVFP4 weights, optionally activations, quantized on load with CUDA kernels.

Not usable with diffusers 0.42.1 (measured 2026-12 for qconf issue 23, CPU and GPU alike):
nvidia-modelopt 0.47 raises TypeError while diffusers builds the config, and 0.43 loads the
weights unquantized and then fails. The plan is checked; the load is refused in one line with
that reason instead of failing inside the libraries."""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Any, Literal

from pydantic import Field

from qconf.backends.base import Backend, EntryBase, KwargsBase, Library

_KINDS = ("FP8", "INT8", "INT4", "NF4", "NVFP4")
ModelOptQuantType = Literal[
    "FP8", "INT8", "INT4", "NF4", "NVFP4",
    "FP8_FP8", "INT8_INT8", "INT4_FP8", "NF4_FP8", "NVFP4_FP8", "NVFP4_NVFP4",
]  # fmt: skip


class ModelOptKwargs(KwargsBase):
    quant_type: ModelOptQuantType = Field(
        description="Weight type, or weight_activation (FP8_FP8): diffusers' quant_type."
    )
    weight_only: bool | None = Field(None, description="Quantize weights only (default true).")
    channel_quantize: int | None = Field(None, description="Axis of per-channel scales.")
    block_quantize: int | None = Field(None, ge=1, description="Block size of block scales.")
    modules_to_not_convert: list[str] | None = Field(None, description="Modules left alone.")


class ModelOptEntry(EntryBase):
    backend: Literal["modelopt"]
    kwargs: ModelOptKwargs

    def variant(self) -> str:
        return self.kwargs.quant_type

    @classmethod
    def from_saved(cls, saved: Any) -> dict[str, Any]:
        kwargs = {k: saved[k] for k in ModelOptKwargs.model_fields if saved.get(k) is not None}
        return {"backend": "modelopt", "kwargs": kwargs}

    def build(self, library: Library, default_skips: Sequence[str] = ()) -> Any:
        from diffusers import NVIDIAModelOptConfig

        return NVIDIAModelOptConfig(**self.library_kwargs(library, default_skips))


def _unusable() -> str | None:
    try:
        diffusers = version("diffusers")
    except PackageNotFoundError:
        return None
    if diffusers.startswith("0.42."):
        return (
            f"not usable with diffusers {diffusers}: nvidia-modelopt 0.47 raises TypeError "
            "while the config is built, 0.43 loads the weights unquantized and then fails"
        )
    return None


_PARAMS = {name: name for name in ModelOptKwargs.model_fields}

MODELOPT = ModelOptEntry.spec = Backend(
    key="modelopt",
    description="NVIDIA ModelOpt FP8/INT8/INT4/NF4/NVFP4 (CUDA; not usable with diffusers 0.42)",
    extra="modelopt",
    module="modelopt",
    distribution="nvidia-modelopt",
    entry=ModelOptEntry,
    config_class={"diffusers": "NVIDIAModelOptConfig"},
    params={"diffusers": _PARAMS},
    withheld={
        "forward_loop": "a Python calibration callable: not expressible in a plan file",
        "modelopt_config": "a raw ModelOpt config: use quant_type and the block/channel settings",
        "algorithm": "calibration algorithms other than max are not checked by qconf",
        "scale_channel_quantize": "double quantization of the scales is not modelled by qconf",
        "scale_block_quantize": "double quantization of the scales is not modelled by qconf",
        "disable_conv_quantization": "qconf plans quantize Linear layers only",
    },
    needs_cuda={"diffusers": "ModelOpt quantizes with CUDA kernels"},
    can_save={"diffusers": False},
    quant_method="modelopt",
    unusable=_unusable,
    cpu_alternative="for FP8 or INT8 weights use float8wo, int8wo or sdnq-float8/sdnq-int8",
)
