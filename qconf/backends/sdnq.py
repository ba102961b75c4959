"""SDNQ (SD.Next's quantization engine, PyPI `sdnq`): weights quantized on load into plain
tensors (codes, a float32 scale per group, a zero point for unsigned codes, optional SVD
factors) held by sdnq's own layer classes (`sdnq.layers.SDNQLinear`).

diffusers' `SDNQConfig` is a factory returning `sdnq.SDNQConfig`, which both libraries take;
transformers learns the `sdnq` method only when sdnq has been imported. What the library does
silently, qconf handles here (each covered by tests/test_sdnq.py):
- it reads its settings from the environment once, at import: torch.compile on CPU costs
  12–18 s per config at the first forward, and its quantized forward runs under no_grad, so
  LoRA adapters before a quantized layer get no gradient. `prepare` sets both before import;
- a saved text encoder loaded in a process that has not imported sdnq loads the int8 codes as
  weights, and still runs: `prepare` runs before every load, reloads included;
- `scale_dtype`/`zero_point_dtype` are dropped when a saved folder is reloaded (the second-level
  scales go missing), and unknown kwargs are dropped on the floor: qconf offers typed kwargs only
  (`withheld` says why the two are not offered);
- layers under `minimum_allowed_numel` weights or `minimum_allowed_channel_size` inputs stay
  unquantized (16,384 / 32 by default): the estimate and report say so per layer."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field, StrictInt

from qconf.backends.base import Backend, EntryBase, KwargsBase, Library, saved_names
from qconf.backends.bytes import (
    SAFETENSORS_FLOATS,
    ByteModel,
    Layer,
    Left,
    stored_size,
)
from qconf.backends.measure import LayerMeasure, Measure
from qconf.errors import PlanError, Problem

# Code widths sdnq stores (sdnq.common.dtype_dict): bits, unsigned (asymmetric: a zero point
# beside the scale). Packed widths store numel * bits / 8 bytes.
_WEIGHT_DTYPES: dict[str, tuple[int, bool]] = {
    **{f"int{b}": (b, False) for b in (8, 7, 6, 5, 4, 3, 2)},
    **{f"uint{b}": (b, True) for b in (8, 7, 6, 5, 4, 3, 2)},
    "float8_e4m3fn": (8, False),
    "float8_e5m2": (8, False),
}
SdnqWeightsDtype = Literal[
    "int8", "int7", "int6", "int5", "int4", "int3", "int2",
    "uint8", "uint7", "uint6", "uint5", "uint4", "uint3", "uint2",
    "float8_e4m3fn", "float8_e5m2",
]  # fmt: skip


class SdnqKwargs(KwargsBase):
    weights_dtype: SdnqWeightsDtype = Field("int8", description="Code type of the weights.")
    group_size: StrictInt | None = Field(
        None,
        ge=-1,
        description="Inputs per scale group: 0 picks by width (sdnq's default), -1 one per row.",
    )
    use_svd: bool | None = Field(
        None, description="SVDQuant: keep a low-rank float part beside the codes."
    )
    # bounded: each quantized layer keeps rank x (rows + cols) floats
    svd_rank: StrictInt | None = Field(
        None, ge=1, le=1024, description="Rank of the SVD part (default 32)."
    )
    svd_steps: StrictInt | None = Field(
        None, ge=1, le=100, description="Power iterations of the SVD (8)."
    )
    minimum_allowed_numel: StrictInt | None = Field(
        None, ge=0, description="Layers with fewer weights stay unquantized (default 16384)."
    )
    minimum_allowed_channel_size: StrictInt | None = Field(
        None, ge=0, description="Layers with fewer inputs stay unquantized (default 32)."
    )
    modules_to_not_convert: list[str] | None = Field(
        None, description="Module names left unquantized."
    )


# sdnq.SDNQConfig's defaults (0.2.8) for the kwargs qconf offers.
_DEFAULTS: dict[str, Any] = {
    "weights_dtype": "int8",
    "group_size": 0,
    "use_svd": False,
    "svd_rank": 32,
    "svd_steps": 8,
    "minimum_allowed_numel": 16384,
    "minimum_allowed_channel_size": 32,
}
_PARAMS = {name: name for name in SdnqKwargs.model_fields}


class SdnqEntry(EntryBase):
    backend: Literal["sdnq"]
    kwargs: SdnqKwargs = Field(default_factory=SdnqKwargs)

    defaults: ClassVar[Mapping[str, Any]] = _DEFAULTS

    def check_backend_rules(self) -> list[Problem]:
        given = self.kwargs.given()
        if not self.kwargs.use_svd and ("svd_rank" in given or "svd_steps" in given):
            name = "svd_rank" if "svd_rank" in given else "svd_steps"
            return [Problem(f"kwargs.{name}", "set without use_svd: true", "add use_svd: true")]
        return []

    def setting(self, name: str) -> Any:
        value = getattr(self.kwargs, name)
        return _DEFAULTS[name] if value is None else value

    def variant(self) -> str:
        return self.setting("weights_dtype") + ("+svd" if self.setting("use_svd") else "")

    @classmethod
    def from_saved(cls, saved: Mapping[str, Any]) -> dict[str, Any]:
        kwargs = {k: saved[k] for k in _DEFAULTS if k in saved and saved[k] is not None}
        if not kwargs.get("use_svd"):
            kwargs.pop("svd_rank", None)
            kwargs.pop("svd_steps", None)
        data: dict[str, Any] = {"backend": "sdnq", "kwargs": kwargs}
        if saved.get("modules_to_not_convert"):
            data["skip"] = saved_names(saved["modules_to_not_convert"])
        # a setting qconf does not model, saved away from sdnq's default (a folder another tool
        # made, or a tampered one): kept, so that validation names it and says why
        for name, default in _SAVED_DEFAULTS.items():
            if name in saved and saved[name] not in (default, "none"):
                data["kwargs"][name] = saved[name]
        return data

    def saved_bytes(
        self, header: Mapping[str, tuple[tuple[int, ...], str]], dtype_size: int, library: Library
    ) -> tuple[int, int] | None:
        """A saved sdnq part as its reload allocates it (measured against reloads,
        tests/test_sdnq.py): codes as stored; their scales, zero points and SVD factors in
        float32 in a diffusers part (diffusers casts them to the load dtype, then sdnq's
        dequantize_fp32 back up), as stored in a transformers part; every other float tensor in
        the load dtype."""
        total = layers = 0
        for name, (shape, dtype) in header.items():
            module, _, local = name.rpartition(".")
            quantized_layer = f"{module}.scale" in header
            layers += quantized_layer and local == "weight"
            if quantized_layer and local == "weight":
                size = stored_size(dtype, "the part's safetensors header")  # the codes
            elif quantized_layer and local in _LAYER.state:
                size = 4 if library == "diffusers" else stored_size(dtype, "the header")
            elif dtype in SAFETENSORS_FLOATS:
                size = dtype_size
            else:
                size = stored_size(dtype, "the part's safetensors header")
            total += math.prod(shape) * size
        return total, layers

    def build(self, library: Library, default_skips: Sequence[str] = ()) -> Any:
        sdnq = import_sdnq()
        kwargs = self.library_kwargs(library, default_skips)
        # sdnq appends its own skips to this list in place: never share it between loads
        kwargs["modules_to_not_convert"] = list(kwargs.get("modules_to_not_convert") or [])
        return sdnq.SDNQConfig(**kwargs)


# sdnq.SDNQConfig's defaults (0.2.8) for the settings qconf does not offer that change how the
# weights are stored or computed: a saved folder with another value is refused at validate.
_SAVED_DEFAULTS: dict[str, Any] = {
    "scale_dtype": None,
    "zero_point_dtype": None,
    "quantized_matmul_dtype": None,
    "use_quantized_matmul": False,
    "use_quantized_matmul_conv": False,
    "use_hadamard": False,
    "use_codebook": False,
    "use_codebook_scale": False,
    "use_dynamic_quantization": False,
    "quant_conv": False,
    "quant_embedding": False,
    "dequantize_fp32": True,
    "is_training": False,
}
# sdnq.SDNQConfig parameters qconf does not offer -> why (the line a plan that sets one gets).
# A saved folder's other settings are read by sdnq itself from its config.json.
_WITHHELD: dict[str, str] = {
    "scale_dtype": "sdnq 0.2.8 drops the second-level scales (scale_2) when a saved folder is "
    "reloaded: the weights come back wrong",
    "zero_point_dtype": "sdnq 0.2.8 drops zero_point_scale when a saved folder is reloaded: the "
    "weights come back wrong",
    **dict.fromkeys(
        (
            "use_quantized_matmul",
            "use_quantized_matmul_conv",
            "quantized_matmul_dtype",
            "modules_to_not_use_matmul",
        ),
        "quantized matmul kernels are not measured by qconf yet (same bytes, other kernels)",
    ),  # fmt: skip
    **dict.fromkeys(
        (
            "use_hadamard",
            "hadamard_group_size",
            "use_codebook",
            "use_codebook_scale",
            "codebook_steps",
            "use_dynamic_quantization",
            "dynamic_loss_threshold",
            "use_static_quantization",
            "use_stochastic_rounding",
            "dequantize_fp32",
        ),
        "a layout qconf's estimate and report do not model yet",
    ),  # fmt: skip
    **dict.fromkeys(
        ("quant_conv", "quant_embedding"),
        "qconf models sdnq on Linear layers only (convolutions and embeddings stay as loaded)",
    ),
    **dict.fromkeys(
        ("modules_dtype_dict", "modules_quant_config"),
        "per-module settings: give each part its own option under quant.mapping instead",
    ),
    **dict.fromkeys(
        ("is_training", "use_grad_ckpt"),
        "sdnq's own full-weight training; qconf trains LoRA adapters (--train)",
    ),
    **dict.fromkeys(
        ("quantization_device", "return_device", "non_blocking"),
        "qconf places parts itself (model.device_map)",
    ),
    "add_skip_keys": "sdnq's per-architecture skips are always applied (the estimate models them)",
    "sdnq_version": "written by sdnq when it saves",
}


def environment() -> dict[str, str]:
    """What sdnq reads once, at import, set the way qconf needs it."""
    # gradients through the quantized forward (LoRA); with no tensor that needs one
    # (inference) no graph is built
    wanted = {"SDNQ_INFERENCE_CONTEXT": "enable_grad"}
    if not _has_cuda():  # torch.compile costs 12-18 s per config on CPU and saves little
        wanted["SDNQ_USE_TORCH_COMPILE"] = "0"
    return wanted


# The NVIDIA driver's first device node: a CUDA GPU is there (checked without importing torch).
_CUDA_DEVICE_FILE = "/dev/nvidia0"


def _has_cuda() -> bool:
    if "torch" in sys.modules:
        return bool(sys.modules["torch"].cuda.is_available())
    return os.path.exists(_CUDA_DEVICE_FILE)


def import_sdnq() -> Any:
    """sdnq, imported with qconf's environment (a setting the user made is kept)."""
    if "sdnq" not in sys.modules:
        for name, value in environment().items():
            os.environ.setdefault(name, value)
    import sdnq

    return sdnq


def prepare(train: bool) -> None:
    """Before any load or reload touching sdnq: import it with qconf's environment, so that
    transformers knows the method; refuse training when sdnq was imported earlier with its
    default no_grad forward."""
    import torch

    sdnq = import_sdnq()
    if train and sdnq.common.inference_context is torch.no_grad:
        raise PlanError(
            Problem(
                "SDNQ_INFERENCE_CONTEXT",
                "sdnq was imported before qconf with its no_grad forward: LoRA adapters before "
                "a quantized layer would get no gradient",
                "set SDNQ_INFERENCE_CONTEXT=enable_grad before anything imports sdnq",
            )
        )


@contextlib.contextmanager
def _seeded() -> Iterator[None]:
    """SVDQuant starts from torch.svd_lowrank, which draws random numbers: with a fixed seed
    (and the caller's random state restored after) two loads of one plan give the same weights."""
    import torch

    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        torch.manual_seed(0)
        yield


def _groups(cols: int, group_size: int, bits: int, svd: bool) -> int:
    """Scale groups per row of a Linear (sdnq.quantizer.sdnq_quantize_layer_weight)."""
    if group_size == 0:
        group_size = 2 ** (1 + bits + 1 + (1 if svd else 0))
    if group_size <= 0 or group_size >= cols:
        return 1
    count = cols // group_size
    while count * group_size != cols:  # the largest count that divides the row
        count -= 1
        if count <= 1:
            return 1
        group_size = cols // count
    return count


def _layer_bytes(layer: Layer, entry: Any) -> int | Left:
    if layer.cols < entry.setting("minimum_allowed_channel_size"):
        return Left(f"fewer than {entry.setting('minimum_allowed_channel_size')} inputs")
    if layer.numel < entry.setting("minimum_allowed_numel"):
        return Left(f"fewer than {entry.setting('minimum_allowed_numel')} weights")
    bits, unsigned = _WEIGHT_DTYPES[entry.setting("weights_dtype")]
    if layer.numel * bits % 8:
        return Left(f"{layer.numel} weights do not pack into {bits}-bit bytes", fails=True)
    # torch.svd_lowrank gives at most min(rows, cols) components, whatever rank is asked
    rank = min(entry.setting("svd_rank"), layer.rows, layer.cols)
    svd = bool(entry.setting("use_svd"))
    groups = layer.rows * _groups(layer.cols, entry.setting("group_size"), bits, svd)
    total = layer.numel * bits // 8 + groups * 4 * (2 if unsigned else 1)  # float32 scales
    if svd:  # up (rows x rank) and down (rank x cols) in the load dtype
        total += rank * (layer.rows + layer.cols) * layer.dtype_size
    return total


def _is_target(module: Any, library: str, entry: Any) -> bool:
    # sdnq matches the class name exactly (sdnq.common.linear_types), not subclasses
    return type(module).__name__ == "Linear"


def _skipped(name: str, patterns: list[str]) -> bool:
    from sdnq.utils import check_param_name_in

    return check_param_name_in(f"{name}.weight", patterns) is not None


def _adjust_patterns(model: Any, library: str, entry: Any, patterns: list[str]) -> list[str]:
    """The final skip list: what sdnq's quantizer adds before the load
    (SDNQQuantizer._process_model_before_weight_loading), computed without touching `model`."""
    import_sdnq()
    from sdnq.utils import add_module_skip_keys

    config = entry.build(library)
    config.modules_to_not_convert = [*patterns, *(type(model)._keep_in_fp32_modules or [])]
    if library == "transformers":  # the quantizer's get_modules_to_not_convert(add_default_skips)
        from transformers.quantizers.base import get_keys_to_not_convert

        config.modules_to_not_convert.extend(get_keys_to_not_convert(model))
    _, config = add_module_skip_keys(model, config)
    return list(config.modules_to_not_convert)


def _weight_numel(module: Any) -> int:
    return math.prod(module.sdnq_dequantizer.original_shape)


def _dequantize(module: Any) -> Any:
    from sdnq.utils import get_sdnq_params

    return module.sdnq_dequantizer(**get_sdnq_params(module))


_LAYER = LayerMeasure(
    weight_numel=_weight_numel,
    state=(
        "scale",
        "scale_2",
        "scale_zero_point",
        "zero_point",
        "zero_point_scale",
        "zero_point_2",
        "svd_up",
        "svd_down",
    ),  # fmt: skip
    dequantize=_dequantize,
    kind=lambda module: module.sdnq_dequantizer.weights_dtype,
)

SDNQ = SdnqEntry.spec = Backend(
    key="sdnq",
    description="SDNQ (SD.Next): int8..int2 / uint8..uint2 / float8 codes, optional SVD",
    extra="sdnq",
    module="sdnq",
    distribution="sdnq",
    entry=SdnqEntry,
    config_class={"diffusers": "SDNQConfig", "transformers": "SDNQConfig"},
    # diffusers.SDNQConfig is a factory returning this class; transformers has none of its own
    config_module={"diffusers": "sdnq", "transformers": "sdnq"},
    params={"diffusers": _PARAMS, "transformers": _PARAMS},
    can_save={"diffusers": True, "transformers": True},
    trainable={"diffusers": True, "transformers": True},
    quant_method="sdnq",
    byte_model=ByteModel(
        _layer_bytes,
        is_target=_is_target,
        skipped={"diffusers": _skipped, "transformers": _skipped},
        adjust_patterns=_adjust_patterns,
    ),
    measure=Measure(layers={f"SDNQ{kind}": _LAYER for kind in ("Linear", "Conv1d", "Conv2d")}),
    environment=environment,
    prepare=prepare,
    during_load=_seeded,
    withheld=_WITHHELD,
    quiet_loggers={"sdnq": logging.ERROR},  # "OpenVINO MM kernels are not available"
)
