"""The BFL entry (qconf/backends/bfl.py) without a pipeline: the layout checks of a file written
here with safetensors, the bytes its header stands for (hand-counted), the config object, what a
load must make of the file (diffusers' own BFL layers), and one real from_single_file load of
tiny-flux's transformer quantized with diffusers' fp8r quantizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from qconf.backends import REGISTRY
from qconf.errors import ModelSourceError, PlanError, Problem

torch = pytest.importorskip("torch")
from diffusers.quantizers.bfl.utils import (  # noqa: E402
    BFLFP8RLinear,
    BFLNVFP4Linear,
    quantize_fp8r,
    quantize_nvfp4,
)
from safetensors.torch import save_file  # noqa: E402

SPEC = REGISTRY["bfl"]
FIX = "re-export the file"


def _entry(file: Path | str, **kwargs: Any) -> Any:
    return SPEC.entry.model_validate({"backend": "bfl", "file": str(file), "kwargs": kwargs})


def _fp8r(rows: int = 64, cols: int = 96) -> dict[str, Any]:
    return {
        "weight": torch.zeros(rows, cols, dtype=torch.float8_e4m3fn),
        "weight_scale": torch.ones(rows),
        "bias": torch.zeros(rows, dtype=torch.bfloat16),
    }


def _nvfp4(rows: int = 64, cols: int = 96) -> dict[str, Any]:
    return {"weight": torch.zeros(rows, cols // 2, dtype=torch.uint8),
            "weight_scale": torch.ones(rows, cols // 16, dtype=torch.float8_e4m3fn),
            "weight_scale_2": torch.tensor(1.0), "input_scale": torch.tensor(1.0)}  # fmt: skip


def _file(tmp_path: Path, layers: dict[str, dict[str, Any]], **plain: Any) -> Path:
    tensors = {f"{prefix}.{n}": t for prefix, layer in layers.items() for n, t in layer.items()}
    path = tmp_path / "part.safetensors"
    save_file({**tensors, **plain}, str(path))
    return path


def _refusal(path: Path) -> Problem:
    with pytest.raises(PlanError) as caught:
        _entry(path).check_file("quant.mapping.transformer.file")
    (problem,) = caught.value.problems
    assert problem.where == "quant.mapping.transformer.file"
    return problem


def test_check_file_takes_the_fp8r_and_nvfp4_layouts(tmp_path: Path) -> None:
    path = _file(tmp_path, {"a": _fp8r(), "b": _nvfp4()}, norm=torch.ones(4))
    _entry(path).check_file("here")
    plain = _file(tmp_path, {}, norm=torch.ones(4))
    assert _refusal(plain) == Problem(
        "quant.mapping.transformer.file",
        f"'{plain}' has no weight_scale tensors: not an fp8r or nvfp4 checkpoint",
        "give a BFL fp8r/nvfp4 file, or load a plain checkpoint with an option",
    )


@pytest.mark.parametrize(
    ("layer", "what"),
    [
        ({**_fp8r(), "weight": torch.zeros(64, 96, dtype=torch.bfloat16)},
         "a.weight is BF16, the fp8r layout needs F8_E4M3"),
        ({**_nvfp4(), "weight": torch.zeros(64, 96, dtype=torch.float8_e4m3fn)},
         "a.weight is F8_E4M3, the nvfp4 layout needs U8"),
        ({k: v for k, v in _fp8r().items() if k != "weight"},
         "a.weight is missing, the fp8r layout needs F8_E4M3"),
        ({k: v for k, v in _nvfp4().items() if k != "input_scale"},
         "a has weight_scale_2 but no input_scale (nvfp4 needs both)"),
    ],
)  # fmt: skip
def test_check_file_names_the_layer_that_breaks_its_layout(
    tmp_path: Path, layer: dict[str, Any], what: str
) -> None:
    path = _file(tmp_path, {"ok": _fp8r(), "a": layer})
    assert _refusal(path) == Problem("quant.mapping.transformer.file", f"'{path}': {what}", FIX)


def test_file_bytes_refuse_a_dtype_qconf_cannot_price(tmp_path: Path) -> None:
    path = _file(tmp_path, {"a": _fp8r()}, odd=torch.zeros(2, dtype=torch.float8_e5m2fnuz))
    with pytest.raises(ModelSourceError) as caught:
        _entry(path).file_bytes(2)
    (problem,) = caught.value.problems
    assert problem.where == str(path) and "qconf cannot price" in problem.what


def test_file_bytes_keep_quantized_tensors_as_stored(tmp_path: Path) -> None:
    path = _file(tmp_path, {"a": _fp8r(), "b": _nvfp4()}, norm=torch.ones(4),
                 ids=torch.zeros(3, dtype=torch.int64))  # fmt: skip
    # fp8r: 64x96 fp8 codes and 64 fp32 scales as stored, its bf16 bias in the load dtype;
    # nvfp4: 64x48 packed bytes, 64x6 fp8 scales, two fp32 scalars; the fp32 norm in the load
    # dtype; int64 ids as stored
    stored = 64 * 96 + 64 * 4 + 64 * 48 + 64 * 6 + 2 * 4 + 3 * 8
    for dtype_size in (2, 4):
        total, note = _entry(path).file_bytes(dtype_size)
        assert total == stored + (64 + 4) * dtype_size
        assert note == "bfl: bytes from the file's safetensors header"


def test_config_computes_in_the_kwarg_else_the_model_dtype() -> None:
    from diffusers import BFLQuantizationConfig

    def same(built: Any, expected: Any) -> None:
        assert type(built) is BFLQuantizationConfig and vars(built) == vars(expected)

    entry = _entry("part.safetensors", compute_dtype="float16")
    same(entry.config_for("bfloat16"), BFLQuantizationConfig(compute_dtype=torch.float16))
    same(entry.build("diffusers"), BFLQuantizationConfig(compute_dtype=torch.float16))
    plain = _entry("part.safetensors")
    same(plain.config_for("float32"), BFLQuantizationConfig(compute_dtype=torch.float32))
    same(plain.config_for(None), BFLQuantizationConfig())
    assert plain.variant() == "checkpoint" and plain.describe() == "bfl checkpoint"


class _Loaded(torch.nn.Module):
    def __init__(self, *layers: torch.nn.Module) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(layers)


def test_loaded_problem_counts_and_measures_the_quantized_layers(tmp_path: Path) -> None:
    path = _file(tmp_path, {"blocks.0": _fp8r(), "blocks.1": _nvfp4()})
    entry = _entry(path)
    assert entry.loaded_problem(_Loaded(BFLFP8RLinear(96, 64), BFLNVFP4Linear(96, 64))) is None
    fewer = _Loaded(BFLFP8RLinear(96, 64), torch.nn.Linear(96, 64))
    assert entry.loaded_problem(fewer) == (
        "2 layers of the file are quantized, 1 are after the load into _Loaded (diffusers "
        "dequantized the others)"
    )
    # the model's fp32 keeps are dequantized on purpose
    kept = _Loaded(BFLFP8RLinear(96, 64), torch.nn.Linear(96, 64))
    kept._keep_in_fp32_modules = ["1"]
    assert entry.loaded_problem(kept) is None
    wrong_scale = BFLFP8RLinear(96, 64)
    wrong_scale.weight_scale = torch.nn.Parameter(torch.ones(3), requires_grad=False)
    assert entry.loaded_problem(_Loaded(wrong_scale, BFLNVFP4Linear(96, 64))) == (
        "a layer of 64x96 has weight [64, 96] and weight_scale [3]"
    )
    # shapes are whole numbers of bytes and blocks: 33 inputs pack into 16 bytes a row, and
    # one 34-input row has 2 scale blocks
    odd = BFLNVFP4Linear(33, 16)
    odd.weight_scale = torch.nn.Parameter(torch.ones(33, dtype=torch.float8_e4m3fn), False)
    assert tuple(odd.weight.shape) == (16, 16)
    assert entry.loaded_problem(_Loaded(BFLFP8RLinear(96, 64), odd)) is None
    row = BFLNVFP4Linear(34, 1)
    assert (tuple(row.weight.shape), row.weight_scale.numel()) == ((1, 17), 2)
    assert entry.loaded_problem(_Loaded(BFLFP8RLinear(96, 64), row)) is None
    wrong_codes = BFLNVFP4Linear(96, 64)
    wrong_codes.weight = torch.nn.Parameter(torch.zeros(64, 96, dtype=torch.uint8), False)
    assert entry.loaded_problem(_Loaded(BFLFP8RLinear(96, 64), wrong_codes)) == (
        "a layer of 64x96 has weight [64, 96] and weight_scale [64, 6]"
    )


def test_a_loaded_layer_is_read_as_the_file_stores_it() -> None:
    weight = torch.randn(64, 96, generator=torch.Generator().manual_seed(0))
    fp8r = BFLFP8RLinear(96, 64)
    fp8r.weight.data, fp8r.weight_scale.data = quantize_fp8r(weight)
    nvfp4 = BFLNVFP4Linear(96, 64)
    codes, scale, scale_2 = quantize_nvfp4(weight)
    nvfp4.weight.data, nvfp4.weight_scale.data, nvfp4.weight_scale_2.data = codes, scale, scale_2
    for layer, kind, tolerance in ((fp8r, "fp8r", 0.1), (nvfp4, "nvfp4", 0.5)):
        measure = SPEC.measure.layers[type(layer).__name__]
        assert measure.weight_numel(layer) == 64 * 96
        assert measure.kind(layer) == kind
        error = (measure.dequantize(layer).float() - weight).abs().max()
        assert 0 < error < tolerance * weight.abs().max(), kind
        assert measure.state == ("weight_scale", "weight_scale_2", "input_scale")


def test_load_from_file_loads_the_part_and_refuses_another_models_file(tmp_path: Path) -> None:
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import load_file

    from qconf.source.tiny import tiny_pipeline_path

    source = tiny_pipeline_path("tiny-flux")
    weights = load_file(source / "transformer" / "diffusion_pytorch_model.safetensors")
    tensors: dict[str, Any] = {}
    linears = 0
    for name, value in weights.items():
        if name.endswith(".weight") and value.ndim == 2:
            tensors[name], tensors[f"{name}_scale"] = quantize_fp8r(value.float())
            linears += 1
        else:
            tensors[name] = value
    path = tmp_path / "transformer.safetensors"
    save_file(tensors, str(path))
    entry = _entry(path)
    model = entry.load_from_file(
        FluxTransformer2DModel, str(source), "transformer", torch.float16, "float16"
    )
    layers = [m for m in model.modules() if type(m).__name__ == "BFLFP8RLinear"]
    assert len(layers) == linears
    assert {m.compute_dtype for m in layers} == {torch.float16}  # not BFL's default bfloat16
    assert model.norm_out.linear.bias.dtype == torch.float16
    assert (
        model.config.num_layers
        == FluxTransformer2DModel.load_config(source, subfolder="transformer")["num_layers"]
    )
    other = tmp_path / "other.safetensors"
    save_file({"x.weight": torch.zeros(4, 4, dtype=torch.float8_e4m3fn),
               "x.weight_scale": torch.ones(4)}, str(other))  # fmt: skip
    with pytest.raises(ModelSourceError) as caught:
        _entry(other).load_from_file(
            FluxTransformer2DModel, str(source), "transformer", torch.bfloat16, None
        )
    fix = "give this part's fp8r/nvfp4 file (diffusers' or BFL's tensor names)"
    # diffusers reads it as BFL's original layout and fails inside that conversion
    assert caught.value.problems == [
        Problem(
            "quant.mapping.transformer.file",
            f"'{other}' does not load as FluxTransformer2DModel: IndexError: list index out of "
            "range",
            fix,
        )
    ]
    # a weight of the wrong shape loads; the check after the load names it
    rows, cols = tensors["x_embedder.weight"].shape
    tensors["x_embedder.weight"] = tensors["x_embedder.weight"][:3, :3].contiguous()
    save_file(tensors, str(path))
    with pytest.raises(ModelSourceError) as caught:
        entry.load_from_file(FluxTransformer2DModel, str(source), "transformer", None, None)
    assert caught.value.problems == [
        Problem(
            "quant.mapping.transformer.file",
            f"'{path}': a layer of {rows}x{cols} has weight [3, 3] and weight_scale [{rows}]",
            fix,
        )
    ]
