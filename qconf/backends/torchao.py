"""torchao: quant types are named in YAML (`quant_type: {name: ..., <fields>}`) and turned into
torchao config objects only at resolve time (string quant types are gone from both libraries)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, Literal

from pydantic import Field

from qconf.backends.base import Backend, EntryBase, KwargsBase, Library, StrictModel


class _QuantType(StrictModel):
    # Why this quant type cannot run on a CPU (None = it can).
    cuda_reason: ClassVar[str | None] = None
    # Whether a model quantized with it can be saved and reloaded.
    can_save: ClassVar[bool] = True

    def to_torchao(self) -> Any:
        raise NotImplementedError


class Int8WeightOnly(_QuantType):
    """int8 weights, one scale per output row (or per group), activations unchanged."""

    name: Literal["Int8WeightOnlyConfig"]
    group_size: int | None = Field(None, gt=0, description="Group size; null = per row.")

    def to_torchao(self) -> Any:
        from torchao.quantization import Int8WeightOnlyConfig

        return Int8WeightOnlyConfig(**self.model_dump(exclude={"name"}, exclude_none=True))


class Int8DynamicActivationInt8Weight(_QuantType):
    """int8 weights and dynamically quantized int8 activations."""

    name: Literal["Int8DynamicActivationInt8WeightConfig"]

    def to_torchao(self) -> Any:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig

        return Int8DynamicActivationInt8WeightConfig()


class Float8WeightOnly(_QuantType):
    """float8 weights, one scale per output row."""

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


class Int4WeightOnly(_QuantType):
    """int4 weights with tinygemm kernels (CUDA only; use IntxWeightOnlyConfig on CPU)."""

    name: Literal["Int4WeightOnlyConfig"]
    group_size: Literal[32, 64, 128, 256] | None = Field(None, description="Default 128.")
    cuda_reason: ClassVar[str | None] = "torchao Int4WeightOnlyConfig needs CUDA kernels"

    def to_torchao(self) -> Any:
        from torchao.quantization import Int4WeightOnlyConfig

        return Int4WeightOnlyConfig(**self.model_dump(exclude={"name"}, exclude_none=True))


class Float8DynamicActivationFloat8Weight(_QuantType):
    """float8 weights and activations (needs a GPU with compute capability >= 8.9)."""

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


class TorchaoEntry(EntryBase):
    backend: Literal["torchao"]
    kwargs: TorchaoKwargs

    def cuda_reason(self, library: Library) -> str | None:
        return self.kwargs.quant_type.cuda_reason

    def build(self, library: Library, default_skips: Sequence[str] = ()) -> Any:
        if library == "diffusers":
            from diffusers import TorchAoConfig
        else:
            from transformers import TorchAoConfig
        kwargs = self.library_kwargs(library, default_skips)
        kwargs["quant_type"] = self.kwargs.quant_type.to_torchao()
        return TorchAoConfig(**kwargs)


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
)
