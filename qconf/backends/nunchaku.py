"""Nunchaku Lite (diffusers' `nunchaku_lite`): pre-quantized SVDQuant W4A4 / AWQ W4A16 folders
(made with diffuse-compressor), reloaded from a saved folder whose config.json says so.
diffusers loads them only on a CUDA GPU (Turing or newer for int4, Blackwell for nvfp4, never
Hopper) with the Hugging Face `kernels` package; qconf checks the plan on any machine and says
so in one line where that GPU is missing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field

from qconf.backends.base import Backend, EntryBase, FloatDType, KwargsBase, Library, StrictModel
from qconf.errors import PlanError, Problem


class NunchakuTargets(StrictModel):
    precision: Literal["int4", "nvfp4"]
    group_size: int = Field(ge=1)
    rank: int | None = Field(None, ge=1)
    targets: list[str]


class NunchakuKwargs(KwargsBase):
    compute_dtype: FloatDType | None = Field(None, description="Runtime dtype (bfloat16).")
    svdq_w4a4: NunchakuTargets | None = Field(None, description="SVDQ W4A4 layers.")
    awq_w4a16: NunchakuTargets | None = Field(None, description="AWQ W4A16 layers.")


class NunchakuEntry(EntryBase):
    backend: Literal["nunchaku_lite"]
    kwargs: NunchakuKwargs = Field(default_factory=NunchakuKwargs)

    skip_param: ClassVar[str | None] = None

    def check_backend_rules(self) -> list[Problem]:
        """What diffusers' NunchakuLiteQuantizationConfig refuses when it is built (on the GPU
        machine, after validate said yes): said at validate instead."""
        svdq, awq = self.kwargs.svdq_w4a4, self.kwargs.awq_w4a16
        problems = [
            Problem(f"kwargs.{name}.targets", "is empty", "list the layers it applies to")
            for name, section in (("svdq_w4a4", svdq), ("awq_w4a16", awq))
            if section is not None and not section.targets
        ]
        if svdq is not None:
            group = 16 if svdq.precision == "nvfp4" else 64
            if svdq.group_size != group:
                what = f"{svdq.group_size}, but {svdq.precision} SVDQ needs {group}"
                problems.append(Problem("kwargs.svdq_w4a4.group_size", what, f"set {group}"))
            if svdq.rank is None:
                problems.append(Problem("kwargs.svdq_w4a4.rank", "missing (SVDQ needs one)",
                                        "set the rank the folder was made with"))  # fmt: skip
        if awq is not None and awq.precision != "int4":
            what = f"{awq.precision}, but AWQ W4A16 is int4 only"
            problems.append(Problem("kwargs.awq_w4a16.precision", what, "set int4"))
        return problems

    def variant(self) -> str:
        kinds = (self.kwargs.svdq_w4a4, self.kwargs.awq_w4a16)
        return "nvfp4" if any(k is not None and k.precision == "nvfp4" for k in kinds) else "int4"

    @classmethod
    def from_saved(cls, saved: Mapping[str, Any]) -> dict[str, Any]:
        kwargs = {k: saved[k] for k in ("compute_dtype", "svdq_w4a4", "awq_w4a16") if saved.get(k)}
        return {"backend": "nunchaku_lite", "kwargs": kwargs}

    def build(self, library: Library, default_skips: Sequence[str] = ()) -> Any:
        from diffusers import NunchakuLiteQuantizationConfig

        return NunchakuLiteQuantizationConfig(**self.kwargs.given())

    def load_from_file(self, model_cls: Any, source: str, subfolder: str, dtype: Any,
                       torch_dtype: str | None) -> Any:  # fmt: skip
        raise PlanError(
            Problem(
                f"quant.mapping.{subfolder}",
                "nunchaku_lite reads pre-quantized folders only; it cannot quantize a part",
                "point model.source at a Nunchaku Lite folder and leave quant empty",
            )
        )


NUNCHAKU_LITE = NunchakuEntry.spec = Backend(
    key="nunchaku_lite",
    description="Nunchaku Lite pre-quantized folders (SVDQuant W4A4 / AWQ W4A16; CUDA only)",
    extra="nunchaku",
    module="kernels",
    distribution="kernels",
    entry=NunchakuEntry,
    config_class={"diffusers": "NunchakuLiteQuantizationConfig"},
    params={
        "diffusers": {
            "compute_dtype": "compute_dtype",
            "svdq_w4a4": "svdq_w4a4",
            "awq_w4a16": "awq_w4a16",
        }
    },  # fmt: skip
    needs_cuda={
        "diffusers": "diffusers' nunchaku_lite loader needs a CUDA GPU (Turing or newer for int4, "
        "Blackwell for nvfp4; Hopper is refused)"
    },
    can_save={"diffusers": False},
    reloads_saved=True,
    saved_only=True,
    quant_method="nunchaku_lite",
    quantizes_on_load=False,
    cpu_alternative="on CPU load the unquantized model with an option (int8wo, sdnq-uint4)",
)
