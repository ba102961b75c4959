"""bitsandbytes 4-bit (NF4/FP4) and 8-bit (LLM.int8()). Same config class in both libraries."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field

from qconf.backends.base import Backend, EntryBase, FloatDType, KwargsBase, Library, saved_names
from qconf.backends.bytes import ByteModel, Layer, linear_only
from qconf.backends.measure import Measure
from qconf.errors import Problem

_CUDA_REASON = (
    "diffusers' bitsandbytes quantizer refuses to load a diffusers part without a GPU "
    "('No GPU found. A GPU is needed for quantization.')"
)


class BitsAndBytesKwargs(KwargsBase):
    load_in_4bit: bool | None = Field(None, description="Set by the backend key; must agree.")
    load_in_8bit: bool | None = Field(None, description="Set by the backend key; must agree.")
    llm_int8_threshold: float | None = Field(None, description="Outlier threshold (8-bit).")
    llm_int8_skip_modules: list[str] | None = Field(
        None, description="Modules left unquantized (replaces the library's default list)."
    )
    llm_int8_enable_fp32_cpu_offload: bool | None = Field(
        None, description="Keep offloaded parts in fp32 on CPU (8-bit)."
    )
    llm_int8_has_fp16_weight: bool | None = Field(None, description="Keep fp16 main weights.")
    bnb_4bit_compute_dtype: FloatDType | None = Field(
        None, description="dtype of 4-bit matmuls (bfloat16 for Flux-class models)."
    )
    bnb_4bit_quant_type: Literal["nf4", "fp4"] | None = Field(
        None, description="4-bit data type: nf4 (NormalFloat) or fp4."
    )
    bnb_4bit_use_double_quant: bool | None = Field(
        None, description="Quantize the absmax constants too (saves ~0.4 bit/param)."
    )
    bnb_4bit_quant_storage: Literal["uint8", "float16", "bfloat16", "float32"] | None = Field(
        None, description="Storage dtype of packed 4-bit weights."
    )


_PARAMS = {name: name for name in BitsAndBytesKwargs.model_fields}
_DTYPE_KWARGS = ("bnb_4bit_compute_dtype", "bnb_4bit_quant_storage")


class _BitsAndBytesEntry(EntryBase):
    kwargs: BitsAndBytesKwargs = Field(default_factory=BitsAndBytesKwargs)
    bits: ClassVar[int]
    skip_param: ClassVar[str | None] = "llm_int8_skip_modules"
    defaults: ClassVar[Mapping[str, Any]] = {
        "llm_int8_threshold": 6.0,
        "llm_int8_enable_fp32_cpu_offload": False,
        "llm_int8_has_fp16_weight": False,
        "bnb_4bit_compute_dtype": "float32",
        "bnb_4bit_quant_type": "fp4",
        "bnb_4bit_use_double_quant": False,
        "bnb_4bit_quant_storage": "uint8",
    }

    @classmethod
    def from_saved(cls, saved: Mapping[str, Any]) -> dict[str, Any]:
        four_bit = bool(saved.get("load_in_4bit"))
        kwargs = {
            k: v
            for k, v in saved.items()
            if k in BitsAndBytesKwargs.model_fields
            and k not in ("load_in_4bit", "load_in_8bit", "llm_int8_skip_modules")
            and (four_bit or not k.startswith("bnb_4bit_"))
            and cls.defaults.get(k, ...) != v
        }
        data = {"backend": f"bitsandbytes_{4 if four_bit else 8}bit", "kwargs": kwargs}
        if saved.get("llm_int8_skip_modules"):
            data["skip"] = saved_names(saved["llm_int8_skip_modules"])
        return data

    def check_backend_rules(self) -> list[Problem]:
        given = self.kwargs.given()
        problems = []
        wrong_flag = "load_in_8bit" if self.bits == 4 else "load_in_4bit"
        if given.get(wrong_flag):
            problems.append(
                Problem(
                    f"kwargs.{wrong_flag}",
                    f"true, but backend {self.spec.key} is {self.bits}-bit",
                    f"remove it, or use backend bitsandbytes_{12 - self.bits}bit",
                )
            )
        if given.get(f"load_in_{self.bits}bit") is False:
            problems.append(
                Problem(
                    f"kwargs.load_in_{self.bits}bit",
                    f"false contradicts backend {self.spec.key}",
                    "remove it (the backend key sets it)",
                )
            )
        if self.bits == 8:
            four_bit = [k for k in given if k.startswith("bnb_4bit_")]
            for name in four_bit:
                problems.append(
                    Problem(
                        f"kwargs.{name}",
                        "is a 4-bit setting but the backend is bitsandbytes_8bit",
                        "use backend bitsandbytes_4bit (e.g. option nf4) or drop it",
                    )
                )
        return problems

    def library_kwargs(self, library: Library, default_skips: Sequence[str] = ()) -> dict[str, Any]:
        flag = {4: {"load_in_4bit": True}, 8: {"load_in_8bit": True}}[self.bits]
        return {**flag, **super().library_kwargs(library, default_skips)}

    def build(self, library: Library, default_skips: Sequence[str] = ()) -> Any:
        import torch

        if library == "diffusers":
            from diffusers import BitsAndBytesConfig
        else:
            from transformers import BitsAndBytesConfig
        kwargs = self.library_kwargs(library, default_skips)
        for name in _DTYPE_KWARGS:
            if name in kwargs:
                kwargs[name] = getattr(torch, kwargs[name])
        return BitsAndBytesConfig(**kwargs)


class BitsAndBytes4bitEntry(_BitsAndBytesEntry):
    backend: Literal["bitsandbytes_4bit"]
    bits: ClassVar[int] = 4


class BitsAndBytes8bitEntry(_BitsAndBytesEntry):
    backend: Literal["bitsandbytes_8bit"]
    bits: ClassVar[int] = 8


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


def _is_target(module: Any, library: str, entry: Any) -> bool:
    if library == "transformers":
        import torch

        # replace_with_bnb_linear: exact nn.Linear (not subclasses) and GPT-2 style Conv1D
        return type(module) is torch.nn.Linear or type(module).__name__ == "Conv1D"
    return linear_only(module, library, entry)


def _quant_state_bytes(state: Any) -> int:
    total = 0
    for name in ("absmax", "code", "offset"):
        value = getattr(state, name, None)
        if value is not None and hasattr(value, "element_size"):
            total += value.numel() * value.element_size()
    nested = getattr(state, "state2", None)
    return total + (_quant_state_bytes(nested) if nested is not None else 0)


def _packed_numel(tensor: Any) -> int | None:
    state = getattr(tensor, "quant_state", None)
    if state is None or getattr(state, "shape", None) is None:
        return None
    return math.prod(state.shape)


def _dequantize_4bit(weight: Any) -> Any:  # packed codes + blockwise absmax
    import bitsandbytes.functional as bnb

    return bnb.dequantize_4bit(weight.data, weight.quant_state)


def _dequantize_8bit(weight: Any) -> Any:  # LLM.int8: int8 rows (CB) + a scale per row (SCB)
    import bitsandbytes.functional as bnb

    if weight.SCB is None:  # has_fp16_weight: still the float weight
        return None
    return bnb.int8_vectorwise_dequant(weight.data, weight.SCB)


def _scb_bytes(tensor: Any) -> int:
    scb = getattr(tensor, "SCB", None)
    return 0 if scb is None else scb.numel() * scb.element_size()


def _state_bytes(tensor: Any) -> int:
    state = getattr(tensor, "quant_state", None)
    return (0 if state is None else _quant_state_bytes(state)) + _scb_bytes(tensor)


# Params4bit keeps its quant state (absmax, nested absmax, code) beside the packed codes;
# Int8Params its row scales (SCB).
_MEASURE = Measure(
    numel={"Params4bit": _packed_numel},
    state_bytes={"Params4bit": _state_bytes, "Int8Params": _state_bytes},
    dequantize={"Params4bit": _dequantize_4bit, "Int8Params": _dequantize_8bit},
    layer_modules=("bitsandbytes",),
)


# What the two registry entries share. Module-level data, not a function run at import: a
# function called while the module imports runs before any test can switch a mutant of it on.
_SHARED: dict[str, Any] = dict(
    extra="bnb",
    module="bitsandbytes",
    distribution="bitsandbytes",
    config_class={"diffusers": "BitsAndBytesConfig", "transformers": "BitsAndBytesConfig"},
    params={"diffusers": _PARAMS, "transformers": _PARAMS},
    # the backend key sets them (build); the kwargs may only repeat it
    withheld={
        "load_in_4bit": "set by the backend key (bitsandbytes_4bit)",
        "load_in_8bit": "set by the backend key (bitsandbytes_8bit)",
    },
    needs_cuda={"diffusers": _CUDA_REASON},
    can_save={"diffusers": True, "transformers": True},
    quant_method="bitsandbytes",
    # bench/estimate-vs-measured.md, fitted to full-size Flux.1-dev: text encoders on the
    # real CPU path 1.03-1.06; diffusers parts (emulated on CPU) nf4 1.09, 8-bit 1.09,
    # fp4 1.18. Loads on a GPU were not measured.
    load_peak_ratio=1.2,
    measure=_MEASURE,
    # "pip install kernels" (an optional CPU kernel)
    quiet_loggers={"bitsandbytes.backends.cpu.ops": logging.ERROR},
)

# Measured with tests/test_train.py on an H200 (2026-11-25): LoRA through 8-bit layers of the
# Flux transformer gets NaN gradients from the second step on (lr 1e-2 and 1e-3); nf4/fp4 train.
BNB_4BIT = BitsAndBytes4bitEntry.spec = Backend(
    key="bitsandbytes_4bit",
    description="bitsandbytes 4-bit (NF4/FP4)",
    entry=BitsAndBytes4bitEntry,
    trainable={"diffusers": True, "transformers": True},  # QLoRA
    byte_model=ByteModel(_bnb_4bit, default_dtype={"diffusers": "float16"}, is_target=_is_target),
    **_SHARED,
)
BNB_8BIT = BitsAndBytes8bitEntry.spec = Backend(
    key="bitsandbytes_8bit",
    description="bitsandbytes 8-bit (LLM.int8())",
    entry=BitsAndBytes8bitEntry,
    trainable={"diffusers": False, "transformers": True},  # QLoRA
    byte_model=ByteModel(_bnb_8bit, default_dtype={"diffusers": "float16"}, is_target=_is_target),
    **_SHARED,
)
