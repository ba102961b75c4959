"""GGUF: pre-quantized weights from a `.gguf` file, one diffusers part at a time.

diffusers can only load GGUF through `Model.from_single_file(...)`; passing a
GGUFQuantizationConfig through PipelineQuantizationConfig fails (dtype not JSON serializable),
so qconf loads such parts itself and hands them to the pipeline as ready components."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from qconf.backends.base import Backend, FileEntry, FloatDType, KwargsBase
from qconf.backends.measure import Measure


class GGUFKwargs(KwargsBase):
    compute_dtype: FloatDType | None = Field(
        None, description="dtype the dequantized weights compute in (default: model.torch_dtype)."
    )


class GGUFEntry(FileEntry):
    backend: Literal["gguf"]
    file: str = Field(description="Path to the pre-quantized .gguf file of this part.")
    kwargs: GGUFKwargs = Field(default_factory=GGUFKwargs)

    file_suffix: ClassVar[str] = ".gguf"

    def check_file(self, where: str, part_class: str | None = None) -> None:
        from qconf.backends.gguf_file import read_gguf

        read_gguf(self.file, where)

    def file_bytes(self, dtype_size: int) -> tuple[int, str] | None:
        """Quantized GGUF tensors stay as their raw blocks; float ones are cast to the load
        dtype."""
        from gguf import GGMLQuantizationType

        from qconf.backends.gguf_file import read_gguf

        floats = {GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16}
        total = sum(
            int(t.n_elements) * dtype_size if t.tensor_type in floats else int(t.n_bytes)
            for t in read_gguf(self.file).tensors
        )
        return total, "gguf: bytes from the file's tensor table (not checked against a load)"

    def load_from_file(self, model_cls: Any, source: str, subfolder: str, dtype: Any,
                       torch_dtype: str | None) -> Any:  # fmt: skip
        # from_single_file is the route diffusers supports for GGUF
        return model_cls.from_single_file(
            self.file,
            quantization_config=self.config_for(torch_dtype),
            config=source,
            subfolder=subfolder,
            torch_dtype=dtype,
        )

    def config_for(self, model_dtype: str | None) -> Any:
        """diffusers' GGUFQuantizationConfig; weights dequantize to `compute_dtype`, else to the
        pipeline's load dtype (a different one fails at the first matmul), else diffusers'
        default."""
        import torch
        from diffusers import GGUFQuantizationConfig

        dtype = self.kwargs.compute_dtype or model_dtype
        if dtype is None:
            return GGUFQuantizationConfig()
        return GGUFQuantizationConfig(compute_dtype=getattr(torch, dtype))


def _block_numel(tensor: Any) -> int | None:
    quant_type = getattr(tensor, "quant_type", None)
    if quant_type is None:
        return None
    from gguf import GGML_QUANT_SIZES  # (weights per block, bytes per block)

    block, block_bytes = GGML_QUANT_SIZES[quant_type]
    return tensor.numel() * tensor.element_size() // block_bytes * block


GGUF = GGUFEntry.spec = Backend(
    key="gguf",
    description="GGUF pre-quantized file per part (diffusers parts, loaded with from_single_file)",
    extra="gguf",
    module="gguf",
    distribution="gguf",
    entry=GGUFEntry,
    config_class={"diffusers": "GGUFQuantizationConfig"},
    params={"diffusers": {"compute_dtype": "compute_dtype"}},
    can_save={"diffusers": False},
    quant_method="gguf",
    quantizes_on_load=False,
    measure=Measure(numel={"GGUFParameter": _block_numel}),
    # The file is already quantized: a part is read as stored, not quantized on load. Not
    # measured; the default rule is kept as an upper bound.
)
