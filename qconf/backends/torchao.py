"""torchao: quant types are named in YAML (`quant_type: {name: ..., <fields>}`) and turned into
torchao config objects only at resolve time (string quant types are gone from both libraries)."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from qconf.backends.base import Backend, EntryBase, KwargsBase, Library, StrictModel, saved_names
from qconf.backends.bytes import ByteModel, Layer, Left, groups, transformers_skipped
from qconf.errors import PlanError, Problem


class _QuantType(StrictModel):
    # Why this quant type cannot run on a CPU (None = it can).
    cuda_reason: ClassVar[str | None] = None
    # Whether a model quantized with it can be saved and reloaded.
    can_save: ClassVar[bool] = True
    # Libraries whose parts LoRA trains through it on (measured in test_train.py), and why not
    # on the others.
    trains_on: ClassVar[frozenset[str]] = frozenset({"diffusers", "transformers"})
    train_reason: ClassVar[str] = ""
    # Field values equal to torchao's defaults (dropped when comparing plans).
    defaults: ClassVar[Mapping[str, Any]] = {}
    # Peak while quantizing on load / weights after load. bench/estimate-vs-measured.md, fitted
    # to full-size Flux.1-dev on CPU: int8wo 1.08, int8dq 1.09, float8wo 1.24, int4wo (intx)
    # 1.31, rounded up; the CUDA-only types were not measured and take the largest.
    load_peak_ratio: ClassVar[float] = 1.35

    def to_torchao(self) -> Any:
        raise NotImplementedError

    @classmethod
    def fields_from_saved(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        """qconf fields from torchao's serialized config (`_data` of config_to_dict)."""
        return {}

    def canonical(self) -> dict[str, Any]:
        fields = self.model_dump(exclude_none=True)
        return {k: v for k, v in fields.items() if self.defaults.get(k, ...) != v}


def _saved_value(value: Any) -> Any:
    """torchao serializes dtypes and enums as {"_type": ..., "_data": value}."""
    return value.get("_data") if isinstance(value, Mapping) else value


def _saved_group_size(data: Mapping[str, Any]) -> dict[str, Any]:
    granularity = data.get("granularity")
    if isinstance(granularity, Mapping) and granularity.get("_type") == "PerGroup":
        return {"group_size": granularity["_data"]["group_size"]}
    return {"group_size": data["group_size"]} if data.get("group_size") else {}


class Int8WeightOnly(_QuantType):
    """int8 weights, one scale per output row (or per group), activations unchanged."""

    load_peak_ratio: ClassVar[float] = 1.1
    name: Literal["Int8WeightOnlyConfig"]
    group_size: int | None = Field(None, gt=0, description="Group size; null = per row.")

    def to_torchao(self) -> Any:
        from torchao.quantization import Int8WeightOnlyConfig
        from torchao.quantization.granularity import PerGroup

        if self.group_size is None:
            return Int8WeightOnlyConfig()
        # torchao 0.18 asserts on the old group_size argument; groups are a granularity now.
        return Int8WeightOnlyConfig(granularity=PerGroup(self.group_size))

    @classmethod
    def fields_from_saved(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        return _saved_group_size(data)


class Int8DynamicActivationInt8Weight(_QuantType):
    """int8 weights and dynamically quantized int8 activations."""

    trains_on: ClassVar[frozenset[str]] = frozenset({"transformers"})
    train_reason: ClassVar[str] = (
        "on diffusers parts the dynamic int8 activations cut the gradient (nothing before the "
        "layer learns)"
    )
    load_peak_ratio: ClassVar[float] = 1.1
    name: Literal["Int8DynamicActivationInt8WeightConfig"]

    def to_torchao(self) -> Any:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig

        return Int8DynamicActivationInt8WeightConfig()


class Float8WeightOnly(_QuantType):
    """float8 weights, one scale per output row."""

    load_peak_ratio: ClassVar[float] = 1.25
    name: Literal["Float8WeightOnlyConfig"]
    weight_dtype: Literal["float8_e4m3fn", "float8_e5m2"] | None = Field(
        None, description="float8 format of the weights (default float8_e4m3fn)."
    )

    def to_torchao(self) -> Any:
        import torch
        from torchao.quantization import Float8WeightOnlyConfig

        if self.weight_dtype is None:
            return Float8WeightOnlyConfig()
        return Float8WeightOnlyConfig(weight_dtype=getattr(torch, self.weight_dtype))

    defaults: ClassVar[Mapping[str, Any]] = {"weight_dtype": "float8_e4m3fn"}

    @classmethod
    def fields_from_saved(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        dtype = _saved_value(data.get("weight_dtype"))
        return {"weight_dtype": dtype.removeprefix("torch.")} if dtype else {}


class IntxWeightOnly(_QuantType):
    """1..8-bit integer weights; the int4 form that runs and saves on CPU."""

    name: Literal["IntxWeightOnlyConfig"]
    weight_dtype: Literal["int1", "int2", "int3", "int4", "int5", "int6", "int7", "int8"] | None = (
        Field(None, description="Integer width of the weights (default int8).")
    )
    group_size: int | None = Field(
        None, gt=0, description="Weights per scale along a row; null = one scale per row."
    )

    def to_torchao(self) -> Any:
        import torch
        from torchao.quantization import IntxWeightOnlyConfig
        from torchao.quantization.granularity import PerGroup

        kwargs: dict[str, Any] = {}
        if self.weight_dtype is not None:
            kwargs["weight_dtype"] = getattr(torch, self.weight_dtype)
        if self.group_size is not None:
            kwargs["granularity"] = PerGroup(self.group_size)
        return IntxWeightOnlyConfig(**kwargs)

    defaults: ClassVar[Mapping[str, Any]] = {"weight_dtype": "int8"}

    @classmethod
    def fields_from_saved(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        dtype = _saved_value(data.get("weight_dtype"))
        fields = {"weight_dtype": dtype.removeprefix("torch.")} if dtype else {}
        return fields | _saved_group_size(data)


class Int4WeightOnly(_QuantType):
    """Packed int4 weights (two per byte) for CUDA kernels; on CPU use IntxWeightOnlyConfig."""

    trains_on: ClassVar[frozenset[str]] = frozenset()
    train_reason: ClassVar[str] = "packed int4 (CUDA): not shown to pass gradients in qconf's tests"
    name: Literal["Int4WeightOnlyConfig"]
    group_size: Literal[32, 64, 128, 256] | None = Field(None, description="Default 128.")
    packing_format: Literal["tile_packed_to_4d", "plain", "preshuffled", "plain_int32"] | None = (
        Field(
            None,
            description="tile_packed_to_4d: torch's built-in tinygemm CUDA kernel; plain "
            "(torchao's default) and preshuffled need the mslk package.",
        )
    )
    cuda_reason: ClassVar[str | None] = "torchao Int4WeightOnlyConfig has CUDA kernels only"
    defaults: ClassVar[Mapping[str, Any]] = {"group_size": 128, "packing_format": "plain"}

    def to_torchao(self) -> Any:
        from torchao.quantization import Int4WeightOnlyConfig

        kwargs: dict[str, Any] = {}
        if self.group_size is not None:
            kwargs["group_size"] = self.group_size
        if self.packing_format is not None:
            kwargs["int4_packing_format"] = self.packing_format
        return Int4WeightOnlyConfig(**kwargs)

    @classmethod
    def fields_from_saved(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        packing = _saved_value(data.get("int4_packing_format"))
        fields = {"packing_format": str(packing).lower()} if packing else {}
        return fields | _saved_group_size(data)


class Float8DynamicActivationFloat8Weight(_QuantType):
    """float8 weights and activations (needs a GPU with compute capability >= 8.9)."""

    trains_on: ClassVar[frozenset[str]] = frozenset()
    train_reason: ClassVar[str] = "dynamic float8 activations: not shown to pass gradients"
    name: Literal["Float8DynamicActivationFloat8WeightConfig"]
    granularity: Literal["per_tensor", "per_row"] | None = Field(
        None, description="Scale granularity (default per_tensor)."
    )
    cuda_reason: ClassVar[str | None] = (
        "torchao float8 dynamic activation needs a GPU with compute capability >= 8.9"
    )

    def to_torchao(self) -> Any:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig
        from torchao.quantization.granularity import PerRow, PerTensor

        if self.granularity is None:
            return Float8DynamicActivationFloat8WeightConfig()
        granularity = PerRow() if self.granularity == "per_row" else PerTensor()
        return Float8DynamicActivationFloat8WeightConfig(granularity=granularity)

    defaults: ClassVar[Mapping[str, Any]] = {"granularity": "per_tensor"}

    @classmethod
    def fields_from_saved(cls, data: Mapping[str, Any]) -> dict[str, Any]:
        granularity = data.get("granularity")
        if isinstance(granularity, list):
            granularity = granularity[-1]  # [activation, weight]
        kind = granularity.get("_type") if isinstance(granularity, Mapping) else None
        return {"granularity": "per_row"} if kind == "PerRow" else {}


TorchaoQuantType = Annotated[
    Int8WeightOnly
    | Int8DynamicActivationInt8Weight
    | Float8WeightOnly
    | IntxWeightOnly
    | Int4WeightOnly
    | Float8DynamicActivationFloat8Weight,
    Field(discriminator="name"),
]


class TorchaoKwargs(KwargsBase):
    quant_type: TorchaoQuantType = Field(
        description="torchao config: class name plus its fields (name: Int8WeightOnlyConfig)."
    )
    modules_to_not_convert: list[str] | None = Field(
        None, description="Module names left unquantized."
    )
    include_input_output_embeddings: bool | None = Field(
        None, description="transformers parts only: quantize embeddings too."
    )
    untie_embedding_weights: bool | None = Field(
        None, description="transformers parts only: untie input/output embeddings."
    )


_COMMON = {"quant_type": "quant_type", "modules_to_not_convert": "modules_to_not_convert"}
_TRANSFORMERS_ONLY = ("include_input_output_embeddings", "untie_embedding_weights")


QUANT_TYPES: dict[str, type[_QuantType]] = {
    member.model_fields["name"].annotation.__args__[0]: member  # type: ignore[union-attr]
    for member in TorchaoQuantType.__origin__.__args__  # type: ignore[attr-defined]
}


class TorchaoEntry(EntryBase):
    backend: Literal["torchao"]
    kwargs: TorchaoKwargs

    defaults: ClassVar[Mapping[str, Any]] = {
        "include_input_output_embeddings": False,
        "untie_embedding_weights": False,
    }

    def canonical(self) -> dict[str, Any]:
        data = super().canonical()
        data["kwargs"]["quant_type"] = self.kwargs.quant_type.canonical()
        return data

    def load_peak_ratio(self) -> float:
        return self.kwargs.quant_type.load_peak_ratio

    @classmethod
    def from_saved(cls, saved: Mapping[str, Any]) -> dict[str, Any]:
        quant_type = saved.get("quant_type") or {}
        inner = quant_type.get("default", quant_type) if isinstance(quant_type, Mapping) else {}
        name = inner.get("_type", str(quant_type))
        known = QUANT_TYPES.get(name)
        fields = known.fields_from_saved(inner.get("_data") or {}) if known else {}
        kwargs: dict[str, Any] = {"quant_type": {"name": name, **fields}}
        for flag in _TRANSFORMERS_ONLY:
            if saved.get(flag):
                kwargs[flag] = True
        data: dict[str, Any] = {"backend": "torchao", "kwargs": kwargs}
        if saved.get("modules_to_not_convert"):
            data["skip"] = saved_names(saved["modules_to_not_convert"])
        return data

    def cuda_reason(self, library: Library) -> str | None:
        return self.kwargs.quant_type.cuda_reason

    def variant(self) -> str:
        return self.kwargs.quant_type.name

    def train_reason(self, library: Library) -> str | None:
        quant_type = self.kwargs.quant_type
        if library in quant_type.trains_on:
            return None
        return f"torchao {quant_type.name}: {quant_type.train_reason}"

    def save_problem(self) -> tuple[str, str] | None:
        if self.kwargs.quant_type.can_save:
            return None
        return f"torchao {self.kwargs.quant_type.name} cannot be saved", "drop --save"

    def build(self, library: Library, default_skips: Sequence[str] = ()) -> Any:
        if library == "diffusers":
            from diffusers import TorchAoConfig
        else:
            from transformers import TorchAoConfig
        kwargs = self.library_kwargs(library, default_skips)
        kwargs["quant_type"] = self.kwargs.quant_type.to_torchao()
        return TorchAoConfig(**kwargs)


def _layer_bytes(layer: Layer, entry: Any) -> int | Left:
    quant_type = entry.kwargs.quant_type
    name, group = quant_type.name, getattr(quant_type, "group_size", None)
    # IntxWeightOnly and Int8 configs assert in_features % group == 0 (the load fails, in
    # diffusers and transformers alike); Int4WeightOnlyConfig logs and leaves the layer alone.
    if name in ("Int8WeightOnlyConfig", "Int8DynamicActivationInt8WeightConfig"):
        count = groups(layer, group)  # Int8Tensor: int8 + fp32 scale + int8 zero point
        return count if isinstance(count, Left) else layer.numel + count * (4 + 1)
    if name == "Float8WeightOnlyConfig":  # Float8Tensor: float8 + fp32 scale per row
        return layer.numel + 4 * layer.rows
    if name == "Float8DynamicActivationFloat8WeightConfig":
        return layer.numel + 4 * (layer.rows if quant_type.granularity == "per_row" else 1)
    if name == "IntxWeightOnlyConfig":
        # IntxUnpackedToInt8Tensor: any width is stored one int8 per weight (no packing), with a
        # scale in the weight's dtype and an int8 zero point per group (per row without one).
        count = groups(layer, group)
        return count if isinstance(count, Left) else layer.numel + count * (layer.dtype_size + 1)
    if name == "Int4WeightOnlyConfig":  # Int4Tensor (CUDA): packed int4, scale + zero per group
        count = groups(layer, group or 128, fails=False)
        if isinstance(count, Left):
            return count
        return math.ceil(layer.numel / 2) + count * 2 * layer.dtype_size
    raise PlanError(Problem("quant", f"no byte model for torchao {name}", "add one to estimate"))


def _diffusers_skipped(name: str, patterns: list[str]) -> bool:
    # substring test on the parameter name, or the exact name
    param = f"{name}.weight"
    return any(f"{key}." in param or key == param for key in patterns)


def _transformers_skipped(name: str, patterns: list[str]) -> bool:
    # torchao checks the parameter name, so a bare suffix like "wo" never matches there
    return transformers_skipped(f"{name}.weight", patterns)


def _adjust_patterns(model: Any, library: str, entry: Any, patterns: list[str]) -> list[str]:
    # transformers' include_input_output_embeddings un-skips the output embedding (a Linear) but
    # its quantize_ call keeps torchao's Linear-only filter, so nn.Embedding weights stay
    # unquantized unless the quant type is an FqnToConfig.
    if library != "transformers" or not entry.kwargs.include_input_output_embeddings:
        return patterns
    embeddings = {id(model.get_input_embeddings()), id(model.get_output_embeddings())}
    names = {n for n, m in model.named_modules() if id(m) in embeddings}
    return [p for p in patterns if p not in names]


TORCHAO = TorchaoEntry.spec = Backend(
    key="torchao",
    description="torchao (int8/float8/intx weight-only, dynamic int8)",
    extra="torchao",
    module="torchao",
    distribution="torchao",
    entry=TorchaoEntry,
    config_class={"diffusers": "TorchAoConfig", "transformers": "TorchAoConfig"},
    params={
        "diffusers": _COMMON,
        "transformers": {**_COMMON, **{name: name for name in _TRANSFORMERS_ONLY}},
    },
    can_save={"diffusers": True, "transformers": True},
    trainable={"diffusers": True, "transformers": True},  # per quant type: train_reason
    quant_method="torchao",
    load_peak_ratio=_QuantType.load_peak_ratio,  # the largest; per quant type: TorchaoEntry
    byte_model=ByteModel(
        _layer_bytes,
        default_dtype={"diffusers": "bfloat16"},
        skipped={"diffusers": _diffusers_skipped, "transformers": _transformers_skipped},
        adjust_patterns=_adjust_patterns,
    ),
    # With None diffusers forces bf16 on the quantized diffusers parts only, and float8/int4
    # then fail on a dtype mismatch.
    plan_dtype="bfloat16",
    # Without a device map the weights load on the CPU, where CUDA-only kernels fail deep
    # inside the load.
    quantizes_where_loaded=True,
    quiet_loggers={
        "torchao": logging.ERROR,  # "Failed to load .../_C_cutlass_90a.abi3.so"
        "torchao.kernel.intmm": logging.ERROR,  # "Detected no triton" (CPU torch has none)
        "diffusers.quantizers.torchao.torchao_quantizer": logging.ERROR,  # "Unable to import"
    },
    nested_tags={"name": ("torchao quant type", QUANT_TYPES)},
    config_targets=tuple(f"torchao.quantization.{name}" for name in QUANT_TYPES),
)
