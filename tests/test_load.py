"""Real loads of the built-in tiny pipelines through qconf (no mocks of diffusers/transformers)."""

from __future__ import annotations

import pytest
import torch

import qconf
from qconf.backends import REGISTRY, known_failures_ignored
from qconf.loading.environment import cpu_runnable_options
from qconf.plan.conftree import backend_options

INT8WO_PLAN = [
    "model.source=tiny-flux",
    "quant.mapping.transformer=int8wo",
    "quant.mapping.text_encoder_2=int8wo",
]
FLUX_PARTS = ("transformer", "text_encoder", "text_encoder_2", "vae")

CPU_OPTIONS = [
    name
    for name in cpu_runnable_options()
    if REGISTRY[backend_options()[name]["backend"]].quantizes_on_load
]
# quantized on load, on CPU for transformers parts only (diffusers' quantizer wants a GPU)
BNB_OPTIONS = [
    n
    for n, o in backend_options().items()
    if set(REGISTRY[o["backend"]].needs_cuda) == {"diffusers"}
    and "transformers" in REGISTRY[o["backend"]].config_class
]


def linear_weights(module: torch.nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in module.modules() if isinstance(m, torch.nn.Linear)]


def is_torchao(tensor: torch.Tensor) -> bool:
    from torchao.utils import TorchAOBaseTensor

    return isinstance(tensor, TorchAOBaseTensor)


def is_quanto(tensor: torch.Tensor) -> bool:
    from optimum.quanto import QTensor

    return isinstance(tensor, QTensor)


def generate(pipeline) -> object:  # noqa: ANN001
    return pipeline(
        "a photo of a cat",
        num_inference_steps=2,
        height=32,
        width=32,
        generator=torch.Generator().manual_seed(0),
    ).images[0]


def test_int8wo_on_transformer_and_t5_and_generate() -> None:
    pipeline = qconf.load_pipeline(qconf.compose(INT8WO_PLAN))
    for part in ("transformer", "text_encoder_2"):
        weights = linear_weights(getattr(pipeline, part))
        assert weights and all(is_torchao(w) for w in weights), part
    for part in ("text_encoder", "vae"):
        assert not any(is_torchao(w) for w in linear_weights(getattr(pipeline, part))), part
    assert generate(pipeline).size == (32, 32)


def test_configs_equal_a_hand_written_pipeline_quantization_config() -> None:
    import diffusers
    import transformers
    from diffusers import PipelineQuantizationConfig
    from torchao.quantization import Int8WeightOnlyConfig

    ours = qconf.validate(qconf.compose(INT8WO_PLAN)).to_diffusers()
    hand = PipelineQuantizationConfig(
        quant_mapping={
            "transformer": diffusers.TorchAoConfig(Int8WeightOnlyConfig()),
            "text_encoder_2": transformers.TorchAoConfig(Int8WeightOnlyConfig()),
        }
    )
    assert ours.quant_mapping.keys() == hand.quant_mapping.keys()
    for part, config in hand.quant_mapping.items():
        assert type(ours.quant_mapping[part]) is type(config)
        assert ours.quant_mapping[part].to_dict() == config.to_dict()


def test_global_torchao_plan_on_the_transformer_loads() -> None:
    from diffusers import PipelineQuantizationConfig

    # diffusers' own global mode refuses torchao (the two libraries' signatures differ).
    with pytest.raises(ValueError, match="signatures"):
        PipelineQuantizationConfig(
            quant_backend="torchao",
            quant_kwargs={"quant_type": "int8wo"},
            components_to_quantize=["transformer"],
        )
    loaded = qconf.load(
        qconf.compose(
            [
                "quant.backend=torchao",
                "quant.kwargs.quant_type={name:Int8WeightOnlyConfig}",
                "quant.components=[transformer]",
            ]
        )
    )
    assert all(is_torchao(w) for w in linear_weights(loaded.pipeline.transformer))
    assert not any(is_torchao(w) for w in linear_weights(loaded.pipeline.text_encoder_2))
    assert loaded.resolved.mode == "global"


def test_backend_with_empty_mapping_is_global_and_quantizes() -> None:
    """diffusers quantizes nothing for quant_backend + quant_mapping={}; qconf quantizes."""
    # quanto int8 on the VAE is refused on CPU (it loads, then decoding fails: test_capability)
    with known_failures_ignored():
        loaded = qconf.load(
            qconf.compose(
                ["quant.backend=quanto", "quant.kwargs.weights_dtype=int8", "quant.mapping={}"]
            )
        )
    for part in FLUX_PARTS:
        assert any(is_quanto(w) for w in linear_weights(getattr(loaded.pipeline, part))), part


@pytest.mark.parametrize("option", CPU_OPTIONS)
def test_cpu_backends_load_on_every_part_of_tiny_flux(option: str) -> None:
    """Every part really quantized: the layers the load reports quantized are the ones the
    estimator predicts from the backend's own rules (skip lists, size floors, fp32 keeps), and
    the weights of those layers are no longer the plain floats the unquantized load has."""
    from qconf.estimate import estimate
    from qconf.loading.report import _layer_label

    plan = qconf.validate(qconf.compose([f"quant.mapping.{part}={option}" for part in FLUX_PARTS]))
    with known_failures_ignored():  # the load works; see test_quanto_int8_vae_fails_...
        loaded = qconf.load(plan)
    predicted = estimate(plan).parts
    for part in FLUX_PARTS:
        module = getattr(loaded.pipeline, part)
        quantized = [m for m in module.modules() if isinstance(m, torch.nn.Linear)
                     and _layer_label(m, m.weight) is not None]  # fmt: skip
        assert len(quantized) == predicted[part].quantized_layers, part
        for layer in quantized:  # codes or a tensor subclass, never a plain float weight
            weight = layer.weight
            assert type(weight) not in (torch.Tensor, torch.nn.Parameter) or (
                not weight.dtype.is_floating_point or weight.dtype.itemsize == 1
            ), part
    assert predicted["transformer"].quantized_layers > 0


@pytest.mark.xfail(raises=RuntimeError, strict=True, reason="optimum-quanto CPU int8 kernel")
def test_quanto_int8_vae_fails_at_inference_on_cpu() -> None:
    """The VAE's attention feeds quanto's int8 CPU matmul (torch._weight_int8pack_mm) a
    non-contiguous input: 'A must be contiguous on the last dimension'. Loading works; decoding
    fails. Pinned so that we notice when optimum-quanto fixes it."""
    if torch.cuda.is_available():
        pytest.skip("CPU-only behaviour")
    with pytest.raises(qconf.BackendUnavailableError, match="A must be contiguous"):
        qconf.load_pipeline(qconf.compose(["quant.mapping.vae=quanto-int8"]))  # refused
    with known_failures_ignored():
        pipeline = qconf.load_pipeline(qconf.compose(["quant.mapping.vae=quanto-int8"]))
    generate(pipeline)


@pytest.mark.parametrize("option", BNB_OPTIONS)
def test_bitsandbytes_loads_on_text_encoders(option: str) -> None:
    import bitsandbytes as bnb

    overrides = [f"quant.mapping.{part}={option}" for part in ("text_encoder", "text_encoder_2")]
    loaded = qconf.load(qconf.compose(overrides))
    layer = bnb.nn.Linear8bitLt if option == "bnb-int8" else bnb.nn.Linear4bit
    for part in ("text_encoder", "text_encoder_2"):
        module = getattr(loaded.pipeline, part)
        assert any(isinstance(m, layer) for m in module.modules()), part
        report = loaded.report.parts[part]
        assert report.bytes < report.bytes_unquantized
    assert generate(loaded.pipeline).size == (32, 32)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU error only exists without a GPU")
def test_bitsandbytes_on_the_transformer_is_a_clear_cpu_error() -> None:
    with pytest.raises(qconf.BackendUnavailableError) as caught:
        qconf.load(qconf.compose(["preset=flux-nf4", "model=tiny-flux"]))
    (line,) = caught.value.lines
    assert line.startswith(
        "quant.mapping.transformer: bitsandbytes_4bit on 'transformer' (diffusers part) needs a "
        "CUDA GPU and none is visible"
    )
    assert line.endswith("on CPU use a torchao option (int8wo, int4wo) or quanto-int8/quanto-int4")


@pytest.mark.gpu
def test_bitsandbytes_nf4_on_the_transformer_on_gpu() -> None:
    import bitsandbytes as bnb

    loaded = qconf.load(qconf.compose(["preset=flux-nf4", "model=tiny-flux"]))
    pipeline = loaded.pipeline.to("cuda")
    for part in ("transformer", "text_encoder_2"):
        module = getattr(pipeline, part)
        assert any(isinstance(m, bnb.nn.Linear4bit) for m in module.modules()), part
    assert generate(pipeline).size == (32, 32)


def test_load_pipeline_as_a_hydra_target() -> None:
    from hydra.utils import instantiate

    pipeline = instantiate(
        {
            "_target_": "qconf.load_pipeline",
            "model": {"source": "tiny-flux"},
            "quant": {"mapping": {"transformer": "int4wo"}},
        },
        _convert_="all",
    )
    assert all(is_torchao(w) for w in linear_weights(pipeline.transformer))


def test_skip_extends_the_library_default_skips() -> None:
    import bitsandbytes as bnb
    from transformers.quantizers.base import get_keys_to_not_convert

    loaded = qconf.load(
        qconf.compose(
            [
                "quant.mapping.text_encoder=nf4",
                "quant.mapping.text_encoder.skip=[encoder.layers.0.mlp]",
                "quant.mapping.transformer=int8wo",
                "quant.mapping.transformer.skip=[proj_out]",
            ]
        )
    )
    text_encoder = loaded.pipeline.text_encoder
    applied = text_encoder.config.quantization_config.llm_int8_skip_modules
    assert set(get_keys_to_not_convert(text_encoder)) | {"encoder.layers.0.mlp"} <= set(applied)
    plain = [
        name
        for name, module in text_encoder.named_modules()
        if isinstance(module, torch.nn.Linear) and not isinstance(module, bnb.nn.Linear4bit)
    ]
    assert plain == ["encoder.layers.0.mlp.fc1", "encoder.layers.0.mlp.fc2"]
    transformer = loaded.pipeline.transformer
    assert not is_torchao(transformer.proj_out.weight)
    assert is_torchao(transformer.x_embedder.weight)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU error only exists without a GPU")
def test_packed_int4_needs_a_gpu_and_says_so() -> None:
    plan = qconf.validate(qconf.compose(["preset=flux-int4wo", "model=tiny-flux"]))
    with pytest.raises(qconf.BackendUnavailableError) as caught:
        qconf.check_environment(plan)
    assert caught.value.lines[0].startswith(
        "quant.mapping.text_encoder_2: torchao on 'text_encoder_2' (transformers part) needs a "
        "CUDA GPU and none is visible: torchao Int4WeightOnlyConfig has CUDA kernels only"
    )


@pytest.mark.gpu
def test_packed_int4_loads_on_gpu() -> None:
    """torchao 0.18 pads packed int4 inputs to a multiple of 1024 (int4_tile_packed_to_4d_tensor),
    so the tiny T5's 128-wide layers take more bytes than bf16: only the types are checked."""
    overrides = ["model=tiny-sd3", "quant.mapping.text_encoder_3=int4wo-gpu"]
    with pytest.raises(qconf.BackendUnavailableError, match="add model.device_map=cuda"):
        qconf.load(qconf.compose(overrides))  # it would quantize on the CPU and fail there
    loaded = qconf.load(qconf.compose([*overrides, "model.device_map=cuda"]))
    weights = linear_weights(loaded.pipeline.text_encoder_3)
    assert weights and all(is_torchao(w) and w.device.type == "cuda" for w in weights)
