"""The load report's measuring (qconf/loading/report.py) on small modules quantized by the
libraries themselves, no pipeline load: logical parameters, unquantized bytes in the load dtype,
real bytes, layer labels and the count of weight-bearing modules, each computed here from the
layers' shapes; and the report's JSON contract."""

from __future__ import annotations

import importlib

import pytest

from qconf.loading.report import LoadReport, PartReport, measure_part

torch = pytest.importorskip("torch")
for _name in ("torchao.quantization", "optimum.quanto", "bitsandbytes"):  # paid at collection
    try:
        importlib.import_module(_name)
    except ImportError:
        pytest.skip(f"{_name} not installed", allow_module_level=True)


def _storage(tensor: torch.Tensor) -> int:
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is None or type(tensor) in (torch.Tensor, torch.nn.Parameter):
        return tensor.numel() * tensor.element_size()
    names, _ = flatten()
    return sum(_storage(getattr(tensor, name)) for name in names)


class _Part(torch.nn.Module):
    """A Linear torchao quantizes, one it leaves (it has no name on the filter), a norm and an
    integer buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.quantized = torch.nn.Linear(64, 32)
        self.plain = torch.nn.Linear(64, 8, bias=False)
        self.norm = torch.nn.LayerNorm(8)
        self.register_buffer("ids", torch.arange(5))


def _torchao_part() -> _Part:
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    torch.manual_seed(0)
    part = _Part().to(torch.bfloat16)
    quantize_(part, Int8WeightOnlyConfig(), filter_fn=lambda m, fqn: fqn == "quantized")
    return part


@pytest.mark.parametrize(("load_dtype", "size"), [(torch.bfloat16, 2), (torch.float32, 4)])
def test_measure_part_with_a_torchao_layer(load_dtype: torch.dtype, size: int) -> None:
    part = _torchao_part()
    weight = part.quantized.weight
    report = measure_part("transformer", part, "diffusers", "torchao", load_dtype)
    assert report.part == "transformer" and report.library == "diffusers"
    assert report.backend == "torchao"
    assert report.params == 64 * 32 + 32 + 64 * 8 + 8 + 8
    # the quantized weight counts in the load dtype; plain float tensors in their own dtype
    # (bfloat16 here), the int64 buffer in its own
    plain_floats = 32 + 64 * 8 + 8 + 8
    assert report.bytes_unquantized == 64 * 32 * size + plain_floats * 2 + 5 * 8
    assert report.bytes == _storage(weight) + plain_floats * 2 + 5 * 8
    assert report.quantized_layers == {f"Linear[{type(weight).__name__}]": 1}
    assert report.layers == 3  # quantized, plain and norm hold a weight


def test_measure_part_without_a_load_dtype_keeps_each_tensors_dtype() -> None:
    part = _torchao_part()
    report = measure_part("x", part, "transformers", None, None)
    assert report.backend is None and report.library == "transformers"
    assert report.bytes_unquantized == (64 * 32 + 32 + 64 * 8 + 8 + 8) * 2 + 5 * 8


def test_a_packed_weight_without_a_load_dtype_counts_as_float32() -> None:
    """bitsandbytes' Params4bit is uint8 storage: with no load dtype to price it in, the
    unquantized weights are float32."""
    import bitsandbytes as bnb

    layer = bnb.nn.Linear4bit(64, 16, bias=False, quant_type="nf4")
    torch.manual_seed(0)
    layer.weight = bnb.nn.Params4bit(torch.randn(16, 64), requires_grad=False, quant_type="nf4")
    layer = layer.to("cpu")
    report = measure_part("te", torch.nn.Sequential(layer), "transformers", "bitsandbytes_4bit",
                          None)  # fmt: skip
    assert report.params == 16 * 64
    assert report.bytes_unquantized == 16 * 64 * 4
    assert report.quantized_layers == {"Linear4bit[Params4bit]": 1}
    assert report.layers == 1


def test_a_quantizing_module_with_a_plain_weight_is_labelled() -> None:
    """quanto swaps in QLinear before it freezes the weights: the layer counts as quantized and
    is labelled with its plain weight's class."""
    from optimum import quanto

    model = torch.nn.Sequential(torch.nn.Linear(32, 16), torch.nn.Linear(16, 4))
    quanto.quantize(model, weights=quanto.qint8, exclude=["1"])  # not frozen: plain weights
    report = measure_part("p", model, "diffusers", "quanto", torch.float32)
    assert report.quantized_layers == {"QLinear[Parameter]": 1}
    assert report.layers == 2
    quanto.freeze(model)
    frozen = measure_part("p", model, "diffusers", "quanto", torch.float32)
    label = f"QLinear[{type(model[0].weight).__name__}]"
    assert label != "QLinear[Parameter]" and frozen.quantized_layers == {label: 1}


def test_load_report_json() -> None:
    parts = {
        "transformer": PartReport(
            "transformer", "diffusers", "torchao", 10, 40, 12, {"L[T]": 2}, 3
        ),
        "vae": PartReport("vae", "diffusers", None, 5, 20, 20, {}, 1),
    }
    report = LoadReport("FluxPipeline", "bfloat16", 1.23456, parts)
    assert report.to_json() == {
        "pipeline": "FluxPipeline",
        "torch_dtype": "bfloat16",
        "load_seconds": 1.235,
        "components": {
            "transformer": {
                "part": "transformer",
                "library": "diffusers",
                "backend": "torchao",
                "params": 10,
                "bytes_unquantized": 40,
                "bytes": 12,
                "quantized_layers": {"L[T]": 2},
                "layers": 3,
            },
            "vae": {
                "part": "vae",
                "library": "diffusers",
                "backend": None,
                "params": 5,
                "bytes_unquantized": 20,
                "bytes": 20,
                "quantized_layers": {},
                "layers": 1,
            },
        },  # fmt: skip
        "total_bytes": 32,
        "total_bytes_unquantized": 60,
    }


def test_a_layer_module_holding_its_codes_outside_weight_is_measured() -> None:
    """auto-round's QuantLinear: int32 codes in `qweight`, zero points and scales as state, the
    bias a float16 buffer; counted by hand (64 x 64, 4 bits, groups of 32)."""
    qlinear = pytest.importorskip("auto_round_extension.torch.qlinear_torch_zp")
    part = torch.nn.Sequential(qlinear.QuantLinear(4, 32, 64, 64, bias=True),
                               torch.nn.Linear(64, 32))  # fmt: skip
    report = measure_part("transformer", part, "diffusers", "auto-round", torch.bfloat16)
    # codes stand for 4096 weights (bf16 unquantized), bias 64; the Linear 2048 + 32 in fp32
    assert report.params == 4096 + 64 + 2048 + 32
    assert report.bytes_unquantized == 4096 * 2 + 64 * 2 + (2048 + 32) * 4
    # qweight 8 x 64 int32, qzeros 2 x 8 int32, scales 2 x 64 fp16, bias 64 fp16, the Linear
    assert report.bytes == 8 * 64 * 4 + 2 * 8 * 4 + 2 * 64 * 2 + 64 * 2 + (2048 + 32) * 4
    assert report.quantized_layers == {"QuantLinear[int4]": 1}
    assert report.layers == 2
    without_dtype = measure_part("transformer", part, "diffusers", "auto-round", None)
    assert without_dtype.bytes_unquantized == 4096 * 4 + 64 * 2 + (2048 + 32) * 4
