"""Black Forest Labs' pre-quantized checkpoints (`fp8r`, `nvfp4`): one .safetensors file per
part, read with `from_single_file` as diffusers supports them (its `from_pretrained` path fails
on them). Every Linear whose weight comes with a `weight_scale` loads as diffusers'
BFLFP8RLinear / BFLNVFP4Linear; on a CPU they dequantize in every forward (the fused FP8/NVFP4
kernels need a recent NVIDIA GPU)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from qconf.backends.base import Backend, FileEntry, FloatDType, KwargsBase
from qconf.backends.bytes import SAFETENSORS_FLOATS, stored_size
from qconf.backends.measure import LayerMeasure, Measure
from qconf.errors import ModelSourceError, PlanError, Problem

_SCALES = ("weight_scale", "weight_scale_2", "input_scale")


class BFLKwargs(KwargsBase):
    compute_dtype: FloatDType | None = Field(
        None, description="dtype of the activations and unquantized layers (default bfloat16)."
    )


class BFLEntry(FileEntry):
    backend: Literal["bfl"]
    file: str = Field(description="Path to the part's fp8r or nvfp4 .safetensors file.")
    kwargs: BFLKwargs = Field(default_factory=BFLKwargs)

    file_suffix: ClassVar[str] = ".safetensors"

    def variant(self) -> str:
        return "checkpoint"

    def config_for(self, model_dtype: str | None) -> Any:
        import torch
        from diffusers import BFLQuantizationConfig

        dtype = self.kwargs.compute_dtype or model_dtype
        return BFLQuantizationConfig(compute_dtype=getattr(torch, dtype) if dtype else None)

    def _header(self) -> dict[str, tuple[tuple[int, ...], str]]:
        from qconf.source.files import safetensors_header

        return safetensors_header(Path(self.file).expanduser())

    def check_file(self, where: str, part_class: str | None = None) -> None:
        """The layout diffusers' BFLQuantizer expects, before anything loads."""
        header = self._header()
        prefixes = [k.removesuffix(".weight_scale") for k in header if k.endswith(".weight_scale")]
        if not prefixes:
            raise PlanError(
                Problem(
                    where,
                    f"'{self.file}' has no weight_scale tensors: not an fp8r or nvfp4 checkpoint",
                    "give a BFL fp8r/nvfp4 file, or load a plain checkpoint with an option",
                )
            )
        for prefix in prefixes:
            nvfp4 = f"{prefix}.weight_scale_2" in header
            expected = "U8" if nvfp4 else "F8_E4M3"
            found = header.get(f"{prefix}.weight", ((), "missing"))[1]
            missing_input = nvfp4 and f"{prefix}.input_scale" not in header
            if found != expected or missing_input:
                what = (
                    f"{prefix}.weight is {found}, the {'nvfp4' if nvfp4 else 'fp8r'} layout "
                    f"needs {expected}"
                    if found != expected
                    else f"{prefix} has weight_scale_2 but no input_scale (nvfp4 needs both)"
                )
                raise PlanError(Problem(where, f"'{self.file}': {what}", "re-export the file"))

    def file_bytes(self, dtype_size: int) -> tuple[int, str] | None:
        """Quantized weights and their scales as stored; other floats in the load dtype."""
        header = self._header()
        total = 0
        for name, (shape, dtype) in header.items():
            numel = math.prod(shape)
            stored = name.endswith(_SCALES) or f"{name}_scale" in header
            cast = dtype in SAFETENSORS_FLOATS and not stored  # loads in the load dtype
            size = dtype_size if cast else stored_size(dtype, self.file)
            total += numel * size
        return total, "bfl: bytes from the file's safetensors header"

    def load_from_file(self, model_cls: Any, source: str, subfolder: str, dtype: Any,
                       torch_dtype: str | None) -> Any:  # fmt: skip
        where = f"quant.mapping.{subfolder}.file"
        fix = "give this part's fp8r/nvfp4 file (diffusers' or BFL's tensor names)"
        try:
            model = model_cls.from_single_file(
                self.file,
                quantization_config=self.config_for(torch_dtype),
                config=source,
                subfolder=subfolder,
                torch_dtype=dtype,
            )
        except (IndexError, KeyError, RuntimeError, ValueError) as exc:
            # diffusers converts any file whose keys do not match the model as BFL's original
            # layout, and fails deep inside that conversion on a file for another model
            first = (str(exc).strip().splitlines() or [""])[0][:160]
            what = f"'{self.file}' does not load as {model_cls.__name__}"
            problem = Problem(where, f"{what}: {type(exc).__name__}: {first}", fix)
            raise ModelSourceError(problem) from None
        problem = self.loaded_problem(model)
        if problem is not None:
            raise ModelSourceError(Problem(where, f"'{self.file}': {problem}", fix))
        return model

    def loaded_problem(
        self, model: Any, header: Mapping[str, tuple[tuple[int, ...], str]] | None = None
    ) -> str | None:
        """What the load made of the file's quantized layers, checked against the file: every
        layer quantized, each with the shapes its layout needs (diffusers checks neither)."""
        # diffusers dequantizes the layers of the model's fp32 keeps (BFLQuantizer)
        keep = set(getattr(model, "_keep_in_fp32_modules", None) or [])
        expected = sum(
            1
            for key in self._header()
            if key.endswith(".weight_scale") and not keep & set(key.split("."))
        )
        layers = [m for m in model.modules() if type(m).__name__ in _LAYER_CLASSES]
        if len(layers) != expected:
            return (
                f"{expected} layers of the file are quantized, {len(layers)} are after the "
                f"load into {type(model).__name__} (diffusers dequantized the others)"
            )
        for layer in layers:
            rows, cols = layer.out_features, layer.in_features
            nvfp4 = type(layer).__name__ == "BFLNVFP4Linear"
            weight = (rows, cols // 2) if nvfp4 else (rows, cols)
            scale = rows * cols // 16 if nvfp4 else rows
            if tuple(layer.weight.shape) != weight or layer.weight_scale.numel() != scale:
                return (
                    f"a layer of {rows}x{cols} has weight {list(layer.weight.shape)} and "
                    f"weight_scale {list(layer.weight_scale.shape)}"
                )
        return None


def _dequantize(module: Any) -> Any:
    from diffusers.quantizers.bfl.utils import dequantize_fp8r, dequantize_nvfp4

    if type(module).__name__ == "BFLNVFP4Linear":
        return dequantize_nvfp4(module.weight, module.weight_scale, module.weight_scale_2)
    return dequantize_fp8r(module.weight, module.weight_scale)


_LAYER_CLASSES = ("BFLFP8RLinear", "BFLNVFP4Linear")
_LAYER = LayerMeasure(
    weight_numel=lambda module: module.in_features * module.out_features,
    state=_SCALES,
    dequantize=_dequantize,
    kind=lambda module: "nvfp4" if type(module).__name__ == "BFLNVFP4Linear" else "fp8r",
)

BFL = BFLEntry.spec = Backend(
    key="bfl",
    description="Black Forest Labs fp8r/nvfp4 pre-quantized file per part (from_single_file)",
    extra="bfl",
    module="diffusers.quantizers.bfl",
    distribution="diffusers",
    entry=BFLEntry,
    config_class={"diffusers": "BFLQuantizationConfig"},
    params={"diffusers": {"compute_dtype": "compute_dtype"}},
    can_save={"diffusers": False},  # BFLQuantizer.is_serializable is False
    quant_method="bfl",
    quantizes_on_load=False,
    plan_dtype="bfloat16",  # BFLQuantizer's compute dtype when none is given
    measure=Measure(layers=dict.fromkeys(_LAYER_CLASSES, _LAYER)),
    # Read as stored, not quantized on load; not measured, the default kept as an upper bound.
)
