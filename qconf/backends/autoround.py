"""AutoRound (Intel, PyPI `auto-round`; diffusers' `auto-round` method): folders quantized
ahead of time with AutoRound's own API (GPTQ-style packing: int32 `qweight` codes, `qzeros`,
a `scales` row per group), reloaded from a saved folder whose config.json says so. diffusers
cannot quantize with it on load.

What the library does silently, measured with auto-round 0.16.1 and diffusers 0.42.1 on tiny-flux
(tests/test_autoround.py), and what qconf does about it:
- a layer no kernel of auto-round's accepts here (AWQ packing on CPU; inputs that are not a
  multiple of the group size or of 32) is built as a float placeholder (`FakeActQuantLinear`)
  whose weights are random: diffusers only warns that the codes were not used. qconf refuses
  the load in one line (`loaded_problem`), and refuses AWQ packing without a CUDA GPU before it;
- a float32 load fails after the weights are read (auto-round's kernels compute in float16 or
  bfloat16 and it casts the model): refused at validate (`load_dtypes`);
- a config passed at load overrides the checkpoint's bits and group size: qconf never passes one
  for a saved part, and a plan that says otherwise than the folder is refused (plan checks);
- peft cannot train its layers, and qconf does not re-save them."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field, StrictBool, StrictInt

from qconf.backends.base import Backend, FolderEntry, KwargsBase, Library
from qconf.backends.bytes import SAFETENSORS_FLOATS, stored_size
from qconf.backends.measure import LayerMeasure, Measure
from qconf.errors import Problem

# Packing formats of the weight-only integer layouts (auto_round.inference.backend): GPTQ
# (`auto_round:auto_gptq`, a zero point stored minus one), GPTQ without that offset, and AWQ.
AutoRoundPacking = Literal[
    "auto_round:auto_gptq", "auto_round", "auto_round:gptqmodel", "auto_round:auto_awq"
]
# auto-round 0.16.1 has torch (CPU) kernels for the GPTQ layouts only
_CUDA_ONLY_PACKING = {
    "auto_round:auto_awq": "auto-round 0.16.1 has no CPU kernel for AWQ packing (folders saved "
    "with sym: false): without a CUDA GPU it loads those layers with random weights"
}


class AutoRoundKwargs(KwargsBase):
    bits: StrictInt | None = Field(None, ge=2, le=8, description="Bits per weight code (4).")
    group_size: StrictInt | None = Field(
        None, ge=-1, description="Inputs per scale group (128; -1: one group per row)."
    )
    sym: StrictBool | None = Field(None, description="Symmetric codes, or with zero points (true).")


# diffusers' AutoRoundConfig defaults, as a saved config.json spells them
_DEFAULTS: dict[str, Any] = {"bits": 4, "group_size": 128, "sym": True}
_LAYOUT = ("data_type", "packing_format")  # entry fields read from the folder
# What a saved config.json of auto-round 0.16.1 holds besides the layout: written for the
# record (the version, which blocks were tuned and how), none changes what is loaded.
_RECORD_ONLY = frozenset(
    {
        "quant_method", "autoround_version", "block_name_to_quantize", "to_quant_block_names",
        "enable_quanted_input", "iters", "nsamples", "seqlen", "batch_size", "lr", "minmax_lr",
        "low_gpu_mem_usage", "gradient_accumulate_steps", "enable_minmax_tuning", "amp",
        "dataset", "scale_dtype", "disable_opt_rtn",
    }
)  # fmt: skip
# Settings that change how the weights are stored or computed, at the value qconf models
# (weight-only integer codes): a folder saved with another value is refused at validate.
_MODELLED_SETTINGS: dict[str, Any] = {"act_bits": 16, "act_data_type": None}


class AutoRoundEntry(FolderEntry):
    backend: Literal["auto-round"]
    kwargs: AutoRoundKwargs = Field(default_factory=AutoRoundKwargs)
    # How the folder stores its codes, as its config.json says (diffusers' AutoRoundConfig
    # takes neither as a parameter: auto-round reads them from the checkpoint)
    data_type: Literal["int"] = Field("int", description="Code type (integer codes only).")
    packing_format: AutoRoundPacking = Field(
        "auto_round:auto_gptq", description="How the codes are packed."
    )

    skip_param: ClassVar[str | None] = None
    defaults: ClassVar[Mapping[str, Any]] = _DEFAULTS

    def check_backend_rules(self) -> list[Problem]:
        problems = super().check_backend_rules()
        if self.kwargs.group_size == 0:
            problems.append(
                Problem("kwargs.group_size", "0 inputs per group", "use -1 (one per row) or >= 1")
            )
        return problems

    def canonical(self) -> dict[str, Any]:
        """With the folder's layout where it is not the default (a plan saying otherwise than
        the folder is refused, and `inspect` prints it)."""
        data = super().canonical()
        fields = type(self).model_fields
        data.update({k: getattr(self, k) for k in _LAYOUT if getattr(self, k) != fields[k].default})
        return data

    def variant(self) -> str:
        return f"w{self.kwargs.bits or _DEFAULTS['bits']}"

    def cuda_reason(self, library: Library) -> str | None:
        return _CUDA_ONLY_PACKING.get(self.packing_format)

    @classmethod
    def from_saved(cls, saved: Mapping[str, Any]) -> dict[str, Any]:
        kwargs = {k: saved[k] for k in AutoRoundKwargs.model_fields if saved.get(k) is not None}
        layout = {k: saved[k] for k in _LAYOUT if saved.get(k) is not None}
        for name, value in saved.items():
            if name in AutoRoundKwargs.model_fields or name in _LAYOUT or name in _RECORD_ONLY:
                continue
            # a setting qconf does not model (activation quantization, per-layer overrides, a
            # tampered file): kept at a value other than the modelled one, so that validation
            # names it
            if name not in _MODELLED_SETTINGS or value not in (_MODELLED_SETTINGS[name], None):
                kwargs[name] = value
        return {"backend": "auto-round", "kwargs": kwargs, **layout}

    def saved_bytes(
        self, header: Mapping[str, tuple[tuple[int, ...], str]], dtype_size: int, library: Library
    ) -> tuple[int, int] | None:
        """A saved part as its reload allocates it (measured, tests/test_autoround.py): integer
        tensors (codes, zero points) as stored, every float tensor (scales included) in the
        load dtype."""
        total = layers = 0
        for name, (shape, dtype) in header.items():
            layers += name.endswith(".qweight")
            size = dtype_size if dtype in SAFETENSORS_FLOATS else stored_size(dtype, "the header")
            total += math.prod(shape) * size
        return total, layers

    def loaded_problem(
        self, model: Any, header: Mapping[str, tuple[tuple[int, ...], str]] | None = None
    ) -> str | None:
        """The layers holding codes after the load must be the ones the checkpoint stores codes
        for. auto-round builds a layer no kernel here accepts as a float placeholder with random
        weights (diffusers only warns that the codes went unused), and a layer its config names
        but the checkpoint stores as floats with all-zero codes."""
        if header is None and self.folder is not None:
            header = self._header()
        loaded = {n for n, m in model.named_modules() if getattr(m, "qweight", None) is not None}
        placeholders = sorted(
            name
            for name, module in model.named_modules()
            if type(module).__module__.startswith("auto_round") and name not in loaded
        )
        if placeholders:
            return (
                f"auto-round found no kernel here for {len(placeholders)} layer(s) (e.g. "
                f"'{placeholders[0]}') and built them with random weights instead of the saved "
                "codes"
            )
        if header is None:
            return None
        stored = {k.removesuffix(".qweight") for k in header if k.endswith(".qweight")}
        extra = sorted(loaded - stored)
        if extra:
            return (
                f"{len(extra)} layer(s) (e.g. '{extra[0]}') loaded as quantized with no codes "
                "in the checkpoint: their weights are zero (its block_name_to_quantize names "
                "layers the checkpoint stores as floats)"
            )
        if stored - loaded:
            missing = sorted(stored - loaded)
            return (
                f"{len(missing)} layer(s) with codes in the checkpoint (e.g. '{missing[0]}') did "
                "not load quantized"
            )
        return None

    def build(self, library: Library, default_skips: Sequence[str] = ()) -> Any:
        from diffusers import AutoRoundConfig

        return AutoRoundConfig(**self.kwargs.given())


def _weight_numel(module: Any) -> int:
    return int(module.infeatures) * int(module.outfeatures)


def _dequantize(module: Any) -> Any:
    """The float weight the layer computes with (out x in): its forward of the identity, less
    the bias (auto-round's layers dequantize inside forward and keep no float weight)."""
    import torch

    eye = torch.eye(module.infeatures, dtype=module.scales.dtype, device=module.qweight.device)
    with torch.no_grad():
        out = module(eye)
    if module.bias is not None:
        out = out - module.bias
    return out.T.contiguous()


def environment() -> dict[str, str]:
    """auto-round sets its logger's level from AR_LOG_LEVEL once, at import (after qconf's quiet
    settings): its kernel choice and "Better backend is found, pip install auto-round-lib" at
    every load are not about the user's plan (shown with QCONF_VERBOSE)."""
    return {} if os.environ.get("QCONF_VERBOSE", "") not in ("", "0") else {"AR_LOG_LEVEL": "ERROR"}


def prepare(train: bool) -> None:
    """Before a reload: the environment auto-round reads at import (diffusers imports it then)."""
    for name, value in environment().items():
        os.environ.setdefault(name, value)


_LAYER = LayerMeasure(
    weight_numel=_weight_numel,
    state=("qzeros", "scales", "g_idx"),
    dequantize=_dequantize,
    kind=lambda module: f"int{module.bits}",
    codes="qweight",
)

AUTO_ROUND = AutoRoundEntry.spec = Backend(
    key="auto-round",
    description="AutoRound pre-quantized folders (GPTQ-packed int2..int8 weights)",
    extra="autoround",
    module="auto_round",
    distribution="auto-round",
    entry=AutoRoundEntry,
    config_class={"diffusers": "AutoRoundConfig"},
    params={"diffusers": {name: name for name in AutoRoundKwargs.model_fields}},
    withheld={"backend": "auto-round picks the kernel for the device itself (auto)"},
    can_save={"diffusers": False},
    reloads_saved=True,
    saved_only=True,
    quant_method="auto-round",
    quantizes_on_load=False,
    # auto-round picks its kernels for the device the weights load to (a CUDA-only packing
    # loads as random-weight placeholders on the CPU)
    quantizes_where_loaded=True,
    plan_dtype="bfloat16",
    load_dtypes=("bfloat16", "float16"),
    measure=Measure(layers={"QuantLinear": _LAYER}),
    cpu_alternative="re-save it with sym: true and a group size that divides every layer's "
    "inputs (what auto-round's CPU kernels read), or quantize the unquantized model with an "
    "option (int4wo, sdnq-uint4)",
    environment=environment,
    prepare=prepare,
)
