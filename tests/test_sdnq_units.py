"""SDNQ's entry and byte model (qconf/backends/sdnq.py) against sdnq itself, one small layer at
a time: the bytes sdnq's quantizer really allocates for codes, scales, zero points and SVD
factors (its group rule included), the size floors at which sdnq leaves a layer alone, the
cross-field rule, the saved-block reading and the import-time environment. No pipeline loads."""

from __future__ import annotations

import os
import sys
from typing import Any

import pytest

from qconf.backends import REGISTRY
from qconf.backends.bytes import Layer, Left
from qconf.errors import PlanError, Problem

torch = pytest.importorskip("torch")
sdnq = pytest.importorskip("sdnq")
from sdnq.quantizer import sdnq_quantize_layer, sdnq_quantize_layer_weight  # noqa: E402

SPEC = REGISTRY["sdnq"]


def _entry(**kwargs: Any) -> Any:
    return SPEC.entry.model_validate({"backend": "sdnq", "kwargs": kwargs})


def _real_bytes(rows: int, cols: int, dtype: Any, **kwargs: Any) -> int:
    """Bytes of the tensors sdnq's quantizer makes of one rows x cols weight."""
    weight = torch.randn(rows, cols, generator=torch.Generator().manual_seed(0)).to(dtype)
    _, tensors = sdnq_quantize_layer_weight(weight, layer_class_name="Linear", **kwargs)
    return sum(t.numel() * t.element_size() for t in tensors.values() if t is not None)


# codes of each width; a group size sdnq picks by width (0), one per row (-1), ones that divide
# the row, ones that do not (sdnq falls back to the largest count that divides it)
CASES = [
    (weights, group, svd)
    for weights in ("int8", "uint8", "int4", "uint4", "int2", "uint3", "float8_e4m3fn")
    for group, svd in (
        (0, False),
        (-1, False),
        (1, False),
        (16, False),
        (36, False),
        (40, False),
        (48, False),
        (0, True),
    )
]


@pytest.mark.parametrize(("weights", "group", "svd"), CASES)
@pytest.mark.parametrize(("rows", "cols"), [(16, 96), (8, 160), (8, 56)])
def test_layer_bytes_are_what_sdnq_allocates(
    weights: str, group: int, svd: bool, rows: int, cols: int
) -> None:
    kwargs: dict[str, Any] = {"weights_dtype": weights, "group_size": group}
    if svd:
        kwargs.update(use_svd=True, svd_rank=4)
    entry = _entry(minimum_allowed_numel=0, minimum_allowed_channel_size=0, **kwargs)
    for dtype, size in ((torch.bfloat16, 2), (torch.float32, 4)):
        estimated = SPEC.byte_model.weight_bytes(Layer(rows, cols, size), entry)
        assert estimated == _real_bytes(rows, cols, dtype, **kwargs), dtype
        assert type(estimated) is int


def test_svd_rank_is_clamped_to_the_layer() -> None:
    entry = _entry(weights_dtype="int8", use_svd=True, svd_rank=64, minimum_allowed_numel=0)
    # rank 8 (the rows): up 8x8, down 8x96, in bfloat16
    assert SPEC.byte_model.weight_bytes(Layer(8, 96, 2), entry) == 8 * 96 + 8 * 4 + 8 * 104 * 2
    assert SPEC.byte_model.weight_bytes(Layer(8, 96, 2), entry) == _real_bytes(
        8, 96, torch.bfloat16, weights_dtype="int8", use_svd=True, svd_rank=8
    )


def test_svd_rank_is_clamped_to_the_inputs_too() -> None:
    entry = _entry(weights_dtype="int8", use_svd=True, svd_rank=64, minimum_allowed_numel=0,
                   minimum_allowed_channel_size=0)  # fmt: skip
    # 96 rows of 40 inputs: rank 40
    assert SPEC.byte_model.weight_bytes(Layer(96, 40, 2), entry) == _real_bytes(
        96, 40, torch.bfloat16, weights_dtype="int8", use_svd=True, svd_rank=40
    )


def test_size_floors_are_sdnqs() -> None:
    """sdnq leaves a Linear alone under 32 inputs or 16,384 weights (its defaults), and takes one
    at the bound: the byte model says which, and why."""
    layer_bytes = SPEC.byte_model.weight_bytes
    default = _entry()
    assert layer_bytes(Layer(1024, 31, 2), default) == Left("fewer than 32 inputs")
    assert layer_bytes(Layer(511, 32, 2), default) == Left("fewer than 16384 weights")
    assert layer_bytes(Layer(512, 32, 2), default) == 512 * 32 + 512 * 4
    small = _entry(minimum_allowed_numel=100, minimum_allowed_channel_size=10)
    assert layer_bytes(Layer(9, 10, 2), small) == Left("fewer than 100 weights")
    assert layer_bytes(Layer(10, 9, 2), small) == Left("fewer than 10 inputs")
    assert layer_bytes(Layer(10, 10, 2), small) == 100 + 10 * 4
    from sdnq.utils import check_quant_is_allowed

    config = sdnq.SDNQConfig(weights_dtype="int8")
    for cols, rows, quantized in ((31, 1024, False), (32, 511, False), (32, 512, True)):
        weight = torch.zeros(rows, cols, dtype=torch.bfloat16)
        assert check_quant_is_allowed("Linear", weight, config) is quantized, (rows, cols)


def test_codes_that_do_not_fill_whole_bytes_fail_the_load() -> None:
    entry = _entry(weights_dtype="uint3", minimum_allowed_numel=0, minimum_allowed_channel_size=0)
    assert SPEC.byte_model.weight_bytes(Layer(3, 33, 2), entry) == Left(
        "99 weights do not pack into 3-bit bytes", fails=True
    )


def test_svd_settings_need_use_svd() -> None:
    fix = "add use_svd: true"
    rank = Problem("kwargs.svd_rank", "set without use_svd: true", fix)
    assert _entry(svd_rank=8).check_backend_rules() == [rank]
    assert _entry(svd_rank=8, svd_steps=2).check_backend_rules() == [rank]
    steps = Problem("kwargs.svd_steps", "set without use_svd: true", fix)
    assert _entry(svd_steps=2).check_backend_rules() == [steps]
    assert _entry(svd_steps=2, use_svd=False).check_backend_rules() == [steps]
    assert _entry(svd_rank=8, svd_steps=2, use_svd=True).check_backend_rules() == []
    assert _entry().check_backend_rules() == []


def test_variant_and_settings_fall_back_to_sdnqs_defaults() -> None:
    assert _entry().variant() == "int8"
    assert _entry(weights_dtype="uint4", use_svd=True).variant() == "uint4+svd"
    assert _entry(use_svd=False).variant() == "int8"
    defaults = sdnq.SDNQConfig()
    for name in ("group_size", "svd_rank", "svd_steps", "minimum_allowed_numel"):
        assert _entry().setting(name) == getattr(defaults, name), name
    assert _entry(svd_rank=7, use_svd=True).setting("svd_rank") == 7


def test_saved_block_reads_back_what_qconf_models() -> None:
    saved = {
        "quant_method": "sdnq",
        "weights_dtype": "uint4",
        "group_size": 32,
        "use_svd": False,
        "svd_rank": 32,
        "svd_steps": 8,
        "scale_dtype": None,
        "use_hadamard": False,
        "quant_conv": "none",
        "modules_to_not_convert": ("proj_out", "norm"),
        "sdnq_version": "0.2.8",
    }
    assert SPEC.entry.from_saved(saved) == {
        "backend": "sdnq",
        "kwargs": {"weights_dtype": "uint4", "group_size": 32, "use_svd": False},
        "skip": ["proj_out", "norm"],
    }
    svd = {"weights_dtype": "int8", "use_svd": True, "svd_rank": 16, "svd_steps": None}
    assert SPEC.entry.from_saved(svd) == {
        "backend": "sdnq", "kwargs": {"weights_dtype": "int8", "use_svd": True, "svd_rank": 16}
    }  # fmt: skip
    # a setting qconf does not model, away from sdnq's default: kept for validation to refuse
    odd = SPEC.entry.from_saved({"use_hadamard": True, "scale_dtype": "float16"})
    assert odd == {"backend": "sdnq", "kwargs": {"use_hadamard": True, "scale_dtype": "float16"}}
    assert SPEC.entry.from_saved({"modules_to_not_convert": []}) == {
        "backend": "sdnq", "kwargs": {}
    }  # fmt: skip


def test_saved_bytes_price_codes_scales_and_floats() -> None:
    header = {
        "blk.weight": ((64, 96), "I8"),  # codes of a quantized layer (it has a scale)
        "blk.scale": ((64, 1), "F16"),
        "blk.zero_point": ((64, 1), "BF16"),
        "blk.svd_up": ((64, 4), "F32"),
        "blk.bias": ((64,), "BF16"),  # not quant state: a float in the load dtype
        "norm.weight": ((96,), "F32"),  # an unquantized layer
        "pos.ids": ((10,), "I64"),  # not a float: as stored
    }
    floats = 64 + 96
    state = 64 + 64 + 256
    assert SPEC.entry.model_validate({"backend": "sdnq"}).saved_bytes(header, 2, "diffusers") == (
        64 * 96 + state * 4 + floats * 2 + 80,
        1,
    )
    transformers = 64 * 96 + 64 * 2 + 64 * 2 + 256 * 4 + floats * 2 + 80
    entry = _entry()
    assert entry.saved_bytes(header, 2, "transformers") == (transformers, 1)
    assert entry.saved_bytes(header, 4, "transformers") == (transformers + floats * 2, 1)


def test_saved_bytes_keep_float8_codes_of_nested_layers() -> None:
    header = {
        "blocks.0.attn.to_q.weight": ((64, 96), "F8_E4M3"),
        "blocks.0.attn.to_q.scale": ((64, 1), "F32"),
        "blocks.0.norm.weight": ((96,), "F32"),
    }
    assert _entry().saved_bytes(header, 2, "diffusers") == (64 * 96 + 64 * 4 + 96 * 2, 1)


@pytest.mark.parametrize(
    "header",
    [
        {"a.weight": ((4,), "X9"), "a.scale": ((1,), "F32")},
        {"a.weight": ((4,), "I8"), "a.scale": ((1,), "X9")},
        {"b.weight": ((4,), "X9")},
    ],
)
def test_saved_bytes_refuse_a_dtype_qconf_cannot_price(header: dict[str, Any]) -> None:
    from qconf.errors import ModelSourceError

    with pytest.raises(ModelSourceError) as caught:
        _entry().saved_bytes(header, 2, "transformers")
    (problem,) = caught.value.problems
    assert problem.where in ("the part's safetensors header", "the header")
    assert problem.what == "a tensor of dtype 'X9' qconf cannot price"


def test_build_hands_sdnq_a_fresh_skip_list_each_time() -> None:
    entry = SPEC.entry.model_validate({"backend": "sdnq", "skip": ["proj_out"]})
    first, second = entry.build("diffusers", ["norm"]), entry.build("diffusers", ["norm"])
    assert type(first) is sdnq.SDNQConfig
    assert sorted(first.modules_to_not_convert) == ["norm", "proj_out"]  # sdnq dedupes via a set
    assert first.modules_to_not_convert is not second.modules_to_not_convert
    plain = _entry().build("transformers")
    assert plain.modules_to_not_convert == [] and plain.weights_dtype == "int8"


def test_environment_is_what_qconf_needs_from_sdnq(monkeypatch: pytest.MonkeyPatch) -> None:
    from qconf.backends import sdnq as backend

    assert not torch.cuda.is_available()  # the CPU test machine
    assert backend.environment() == {
        "SDNQ_INFERENCE_CONTEXT": "enable_grad",
        "SDNQ_USE_TORCH_COMPILE": "0",
    }
    assert SPEC.environment is backend.environment
    from qconf.backends import base

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert base.cuda_visible() is True
    assert "SDNQ_USE_TORCH_COMPILE" not in backend.environment()
    # without torch imported, a CUDA driver's device file decides
    monkeypatch.delitem(sys.modules, "torch")
    assert base.CUDA_DEVICE_FILE == "/dev/nvidia0"
    assert base.cuda_visible() is os.path.exists("/dev/nvidia0")


def test_sdnq_is_imported_with_qconfs_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from qconf.backends.sdnq import import_sdnq

    monkeypatch.delenv("SDNQ_USE_TORCH_COMPILE", raising=False)
    monkeypatch.setenv("SDNQ_INFERENCE_CONTEXT", "the user's")
    assert import_sdnq() is sdnq  # already imported: its settings are read, nothing is set
    assert "SDNQ_USE_TORCH_COMPILE" not in os.environ
    monkeypatch.delitem(sys.modules, "sdnq")  # restored after the test
    import_sdnq()
    assert os.environ["SDNQ_USE_TORCH_COMPILE"] == "0"
    assert os.environ["SDNQ_INFERENCE_CONTEXT"] == "the user's"  # a user's setting is kept


def test_training_is_refused_after_sdnq_was_imported_with_no_grad(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    SPEC.prepare(True)  # imported by qconf's environment: enable_grad
    monkeypatch.setattr(sdnq.common, "inference_context", torch.no_grad)
    SPEC.prepare(False)  # inference does not care
    with pytest.raises(PlanError) as caught:
        SPEC.prepare(True)
    assert caught.value.problems == [
        Problem(
            "SDNQ_INFERENCE_CONTEXT",
            "sdnq was imported before qconf with its no_grad forward: LoRA adapters before a "
            "quantized layer would get no gradient",
            "set SDNQ_INFERENCE_CONTEXT=enable_grad before anything imports sdnq",
        )
    ]


def test_loads_are_seeded_and_the_callers_random_state_restored() -> None:
    torch.manual_seed(123)
    expected_after = torch.rand(3)
    torch.manual_seed(123)
    with SPEC.during_load():
        first = torch.rand(3)
    with SPEC.during_load():
        second = torch.rand(3)
    assert torch.equal(first, second)
    torch.manual_seed(0)
    assert torch.equal(first, torch.rand(3))  # seed 0
    torch.manual_seed(123)
    with SPEC.during_load():
        torch.rand(5)
    assert torch.equal(torch.rand(3), expected_after)


def test_targets_and_skips_follow_sdnqs_rules() -> None:
    class Wider(torch.nn.Linear):
        pass

    target = SPEC.byte_model.is_target
    assert target(torch.nn.Linear(2, 2), "diffusers", None)
    assert not target(Wider(2, 2), "diffusers", None)  # sdnq matches the class name exactly
    assert not target(torch.nn.Conv2d(2, 2, 1), "transformers", None)
    skipped = SPEC.byte_model.skipped["diffusers"]
    assert skipped("blocks.0.proj_out", ["proj_out"])
    assert not skipped("blocks.0.proj", ["proj_out"])
    assert SPEC.byte_model.skipped["transformers"] is skipped


def test_a_quantized_layer_is_read_as_sdnq_stores_it() -> None:
    linear = torch.nn.Linear(96, 64)
    original = linear.weight.detach().clone()  # sdnq replaces the weight in place
    config = sdnq.SDNQConfig(weights_dtype="uint4")
    layer, _ = sdnq_quantize_layer(linear, config, param_name="x.weight")
    measure = SPEC.measure.layers["SDNQLinear"]
    assert measure.weight_numel(layer) == 64 * 96
    assert measure.kind(layer) == "uint4"
    dequantized = measure.dequantize(layer)
    assert dequantized.shape == (64, 96)
    error = (dequantized.float() - original).abs().max()
    assert 0 < error < original.abs().max() / 4  # 4-bit codes: close, not equal
    assert set(SPEC.measure.layers) == {"SDNQLinear", "SDNQConv1d", "SDNQConv2d"}


def test_final_skip_list_is_what_sdnqs_quantizer_adds() -> None:
    """What sdnq's quantizer adds to the skips before a load (the model's fp32 keeps; sdnq's
    per-architecture keys, or its common ones for a class it has none for; in transformers also
    the keys transformers keeps out), from sdnq's and transformers' own tables."""
    from sdnq.common import common_skip_keys
    from transformers import CLIPTextConfig, CLIPTextModel
    from transformers.quantizers.base import get_keys_to_not_convert

    class Toy(torch.nn.Module):
        _keep_in_fp32_modules = ["kept"]

        def __init__(self) -> None:
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)

    adjust = SPEC.byte_model.adjust_patterns
    entry = _entry()
    toy = adjust(Toy(), "diffusers", entry, ["mine"])
    assert sorted(toy) == sorted({"mine", "kept", *common_skip_keys})
    sizes = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1}
    clip = CLIPTextModel(CLIPTextConfig(**sizes, num_attention_heads=4, vocab_size=99))
    expected = {"mine", *common_skip_keys, *get_keys_to_not_convert(clip)}
    expected |= set(clip._keep_in_fp32_modules or [])
    assert sorted(adjust(clip, "transformers", entry, ["mine"])) == sorted(expected)
    assert entry.build("diffusers").modules_to_not_convert == []  # the entry's own is untouched
    # a class sdnq has keys for gets those instead of the common ones
    from diffusers import FluxTransformer2DModel
    from sdnq.common import module_skip_keys_dict

    from qconf.source.tiny import tiny_pipeline_path

    flux_config = FluxTransformer2DModel.load_config(
        tiny_pipeline_path("tiny-flux"), subfolder="transformer"
    )
    flux = FluxTransformer2DModel.from_config(flux_config)
    expected = {"mine", *module_skip_keys_dict["FluxTransformer2DModel"][0]}
    expected |= set(flux._keep_in_fp32_modules or [])
    assert sorted(adjust(flux, "diffusers", entry, ["mine"])) == sorted(expected)
