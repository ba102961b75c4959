"""What a real load of the tiny Flux pipeline measures (qconf.loading.report), per part and per
CPU option, against the estimator and against a plain load, where the two agree exactly: params,
bytes, layer types and counts, and the JSON report. tests/test_estimate.py compares every model
within 3 %; on tiny-flux the byte models are exact, so any change to a byte model, a dtype rule
of the report or a layer label shows here."""

from __future__ import annotations

import contextlib
import importlib
from typing import Any

import pytest

import qconf
from qconf.backends import REGISTRY, known_failures_ignored
from qconf.plan.conftree import backend_options

pytest.importorskip("torch")
# Imported at collection, not at the first load: `make mutate` forks one child per mutant from
# a process that has collected this file, so these imports (seconds) are paid once per run, not
# once per mutant.
for _name in ("diffusers.pipelines.flux.pipeline_flux", "transformers.models.clip.modeling_clip",
              "transformers.models.t5.modeling_t5", "torchao.quantization", "optimum.quanto",
              "bitsandbytes"):  # fmt: skip
    with contextlib.suppress(ImportError):  # the cases that need it skip
        importlib.import_module(_name)

MODEL = "tiny-flux"
DIFFUSERS_PART, TRANSFORMERS_PART = "transformer", "text_encoder"
# option -> (parts it quantizes, the layer label every quantized layer gets). bitsandbytes and
# quanto-int4 go on the text encoder only: bitsandbytes needs a GPU for diffusers parts, and
# quanto int4 on the transformer spends ~30 s packing for tinygemm on its first load.
CASES: dict[str, tuple[tuple[str, ...], str]] = {
    "int8wo": ((DIFFUSERS_PART, TRANSFORMERS_PART), "Linear[Int8Tensor]"),
    "int8dq": ((DIFFUSERS_PART, TRANSFORMERS_PART), "Linear[Int8Tensor]"),
    "float8wo": ((DIFFUSERS_PART, TRANSFORMERS_PART), "Linear[Float8Tensor]"),
    "int4wo": ((DIFFUSERS_PART, TRANSFORMERS_PART), "Linear[IntxUnpackedToInt8Tensor]"),
    "quanto-int8": ((DIFFUSERS_PART, TRANSFORMERS_PART), "QLinear[WeightQBytesTensor]"),
    "quanto-float8": ((DIFFUSERS_PART, TRANSFORMERS_PART), "QLinear[WeightQBytesTensor]"),
    "quanto-int4": ((TRANSFORMERS_PART,), "QLinear[WeightQBitsTensor]"),
    "nf4": ((TRANSFORMERS_PART,), "Linear4bit[Params4bit]"),
    "fp4": ((TRANSFORMERS_PART,), "Linear4bit[Params4bit]"),
    "bnb-int8": ((TRANSFORMERS_PART,), "Linear8bitLt[Int8Params]"),
    "nf4-double-quant": ((TRANSFORMERS_PART,), "Linear4bit[Params4bit]"),
}
# Cases that are not a conf/backend option: the option they extend and the kwargs they add.
VARIANTS = {"nf4-double-quant": ("nf4", {"bnb_4bit_use_double_quant": True})}


def _entry(case: str) -> dict[str, Any]:
    option, extra = VARIANTS.get(case, (case, {}))
    data = backend_options()[option]
    return {**data, "kwargs": {**data["kwargs"], **extra}}


# Linear layers each library hands the backend on tiny-flux (every one: no default skip hits)
LINEARS = {DIFFUSERS_PART: 30, TRANSFORMERS_PART: 12}
LOAD_DTYPE_SIZE = 2  # bfloat16: every option here loads in it (torchao's plan dtype, or set)


def _load(mapping: dict[str, Any]) -> tuple[Any, Any]:
    from qconf.estimate import estimate

    model = {"source": MODEL, "torch_dtype": "bfloat16"}
    plan = qconf.intake(model=model, quant={"mapping": mapping})
    with known_failures_ignored():
        loaded = qconf.load(plan)
    return loaded.report, estimate(plan)


@pytest.fixture(scope="module")
def plain() -> Any:
    report, _ = _load({})
    return report


def test_plain_load_matches_the_estimate_exactly(plain: Any) -> None:
    from qconf.estimate import estimate

    est = estimate(qconf.intake(model={"source": MODEL, "torch_dtype": "bfloat16"}))
    assert set(plain.parts) == set(est.parts)
    for name, part in plain.parts.items():
        guess = est.parts[name]
        assert (part.params, part.bytes, part.bytes_unquantized) == (
            guess.params,
            guess.bytes,
            guess.bytes_unquantized,
        ), name
        assert part.bytes == part.bytes_unquantized, name
        assert part.quantized_layers == {} and guess.quantized_layers == 0, name
        assert part.backend is None and part.layers > 0, name
    assert plain.torch_dtype == "bfloat16"
    data = plain.to_json()
    assert data["total_bytes"] == sum(p.bytes for p in plain.parts.values())
    assert data["total_bytes_unquantized"] == data["total_bytes"]
    assert data["components"][DIFFUSERS_PART]["library"] == "diffusers"
    assert data["components"][TRANSFORMERS_PART]["library"] == "transformers"


@pytest.mark.parametrize("case", sorted(CASES))
def test_load_report_matches_estimate_exactly(case: str, plain: Any) -> None:
    parts, label = CASES[case]
    backend = _entry(case)["backend"]
    pytest.importorskip(REGISTRY[backend].module)
    report, est = _load(dict.fromkeys(parts, _entry(case)))
    byte_model = REGISTRY[backend].byte_model
    assert byte_model is not None
    assert set(report.parts) == set(plain.parts)
    for name, part in report.parts.items():
        guess, before = est.parts[name], plain.parts[name]
        # the same weights: logical parameter count and weight-bearing modules are kept
        assert part.params == guess.params == before.params, name
        assert part.layers == before.layers, name
        assert part.bytes == guess.bytes, name
        if name not in parts:
            assert part.backend is None and part.quantized_layers == {}, name
            assert part.bytes == part.bytes_unquantized == before.bytes, name
            continue
        assert part.backend == backend, name
        assert part.library == ("diffusers" if name == DIFFUSERS_PART else "transformers")
        assert part.quantized_layers == {label: LINEARS[name]}, name
        assert guess.quantized_layers == LINEARS[name], name
        assert part.bytes < before.bytes, name
        # the report counts unquantized bytes in the load dtype, plus the scale scalars a
        # quantized module may keep as plain buffers (quanto's input/output scales)
        extra = byte_model.module_extra(part.library, LOAD_DTYPE_SIZE) * LINEARS[name]
        if backend != "quanto":
            assert extra == 0
        assert part.bytes_unquantized == guess.bytes_unquantized + extra == before.bytes + extra
    assert report.to_json()["total_bytes"] == est.total_bytes


def test_per_layer_bytes_of_a_real_load() -> None:
    """tensor_bytes of each quantized weight equals the byte model's figure for that layer."""
    import torch

    from qconf.backends.bytes import Layer
    from qconf.loading.report import logical_numel, tensor_bytes

    option = "int4wo"  # group scales and zero points in the load dtype: every term counts
    plan = qconf.intake(overrides=[f"model={MODEL}", f"quant.mapping.{TRANSFORMERS_PART}={option}"])
    with known_failures_ignored():
        pipe = qconf.load_pipeline(plan)
    entry = plan.resolve().quantized[TRANSFORMERS_PART].entry
    byte_model = REGISTRY[entry.backend].byte_model
    seen = 0
    for module in getattr(pipe, TRANSFORMERS_PART).modules():
        if type(module) is not torch.nn.Linear:
            continue
        weight = module.weight
        rows, cols = module.out_features, module.in_features
        assert logical_numel(weight) == rows * cols
        layer = Layer(rows, cols, LOAD_DTYPE_SIZE, "bfloat16")
        assert tensor_bytes(weight) == byte_model.weight_bytes(layer, entry)
        seen += 1
    assert seen == LINEARS[TRANSFORMERS_PART]


# float16 loads: T5's `wo` stays float32 (transformers' _keep_in_fp32_modules), which torchao
# still quantizes and quanto/bitsandbytes skip; the VAE's Linear layers are diffusers targets
# among convolutions. option -> (parts, quantized layers per part)
FP16_CASES: dict[str, dict[str, int]] = {
    "int8wo": {"text_encoder_2": 14, "vae": 8},
    "int4wo": {"text_encoder_2": 14, "vae": 8},
    "quanto-int8": {"text_encoder_2": 12, "vae": 8},
    "quanto-int4": {"text_encoder_2": 12},
    "nf4": {"text_encoder_2": 12},
    "bnb-int8": {"text_encoder_2": 12},
}


@pytest.mark.parametrize("option", sorted(FP16_CASES))
def test_float16_load_with_fp32_keeps_matches_estimate_exactly(option: str) -> None:
    from qconf.estimate import estimate

    pytest.importorskip(REGISTRY[backend_options()[option]["backend"]].module)
    counts = FP16_CASES[option]
    plan = qconf.intake(
        model={"source": MODEL, "torch_dtype": "float16"},
        quant={"mapping": dict.fromkeys(counts, option)},
    )
    with known_failures_ignored():
        report = qconf.load(plan).report
    est = estimate(plan)
    for name, part in report.parts.items():
        guess = est.parts[name]
        assert (part.params, part.bytes) == (guess.params, guess.bytes), name
        assert sum(part.quantized_layers.values()) == guess.quantized_layers, name
        assert guess.quantized_layers == counts.get(name, 0), name
