"""Pre-quantized AutoRound folders (`quant_method: auto-round`): made here from tiny-flux with
AutoRound's own API (round-to-nearest, iters=0: no calibration data, ~6 s on CPU), then loaded
through qconf. auto-round cannot quantize on load; what it does silently with a folder its CPU
kernels cannot read is refused (qconf/backends/autoround.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import qconf
from qconf.estimate import estimate
from qconf.source.files import part_header
from qconf.source.tiny import tiny_pipeline_path

pytest.importorskip("auto_round")


def write_autoround_folder(path: Path, group_size: int) -> Path:
    """tiny-flux with its transformer quantized by AutoRound (W4A16, symmetric), saved as
    AutoRound saves it, then with the transformer's weights file renamed to the name diffusers
    reads (auto-round 0.16.1 writes model.safetensors)."""
    from auto_round import AutoRound
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(tiny_pipeline_path("tiny-flux"), torch_dtype=torch.bfloat16)
    rounder = AutoRound(pipe, scheme="W4A16", group_size=group_size, iters=0, device_map="cpu",
                        disable_opt_rtn=True)  # fmt: skip
    rounder.quantize_and_save(str(path), format="auto_round")
    weights = path / "transformer" / "model.safetensors"
    weights.rename(weights.with_name("diffusion_pytorch_model.safetensors"))
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Group size 32: every Linear of tiny-flux has a multiple of 32 inputs."""
    return write_autoround_folder(tmp_path_factory.mktemp("autoround") / "g32", 32)


def _plan(source: Path, *overrides: str) -> qconf.Plan:
    return qconf.validate(qconf.compose([f"model.source='{source}'", *overrides]))


def _copy_with_config(folder: Path, tmp_path: Path, **changes: object) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    config_path = copy / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config["quantization_config"].update(changes)
    config_path.write_text(json.dumps(config))
    return copy


def test_a_folder_loads_with_every_layer_quantized_and_the_estimate_is_exact(
    folder: Path,
) -> None:
    plan = _plan(folder)
    loaded = qconf.load(plan)
    module = loaded.pipeline.transformer
    header = part_header(folder / "transformer")
    saved_layers = sorted(k.removesuffix(".qweight") for k in header if k.endswith(".qweight"))
    quantized = sorted(n for n, m in module.named_modules() if hasattr(m, "qweight"))
    assert quantized == saved_layers and len(quantized) == 20
    report = loaded.report.parts["transformer"]
    assert report.quantized_layers == {"QuantLinear[int4]": 20}
    predicted = estimate(plan).parts["transformer"]
    assert (predicted.bytes, predicted.params) == (report.bytes, report.params)
    assert predicted.quantized_layers == 20
    # the codes were read: each layer computes with a weight close to the unquantized one
    # (a layer built from random numbers instead is ~1.4 away)
    from diffusers import FluxTransformer2DModel

    from qconf.backends.autoround import _dequantize

    source = FluxTransformer2DModel.from_pretrained(
        tiny_pipeline_path("tiny-flux"), subfolder="transformer", torch_dtype=torch.bfloat16
    )
    for name in quantized:
        original = source.get_submodule(name).weight.float()
        approx = _dequantize(module.get_submodule(name)).float()
        assert approx.shape == original.shape
        assert (approx - original).norm() / original.norm() < 0.2, name
    seeded = torch.Generator().manual_seed(0)
    image = loaded.pipeline("a cat", num_inference_steps=1, height=32, width=32,
                            output_type="pt", generator=seeded)  # fmt: skip
    assert torch.isfinite(image.images).all()


def test_inspect_names_the_folder_s_auto_round_settings(folder: Path) -> None:
    from qconf.loading.inspect import inspect_folder

    entry = inspect_folder(folder)["quant"]["mapping"]["transformer"]
    assert entry["backend"] == "auto-round"
    assert entry["kwargs"]["group_size"] == 32


def test_a_plan_that_would_override_the_checkpoint_is_refused(folder: Path) -> None:
    """diffusers lets a config given at load override the checkpoint's bits and group size."""
    entry = "{backend: auto-round, kwargs: {bits: 8, group_size: 32}}"
    with pytest.raises(qconf.PlanError, match="was saved as"):
        _plan(folder, f"quant.mapping.transformer={entry}")
    same = "{backend: auto-round, kwargs: {bits: 4, group_size: 32}}"
    assert _plan(folder, f"quant.mapping.transformer={same}") is not None


def test_a_float32_load_is_refused_before_any_weight_is_read(folder: Path) -> None:
    """auto-round casts the model to float32 after the load and diffusers raises."""
    with pytest.raises(qconf.QconfError, match="computes in bfloat16 or float16 only"):
        qconf.load(qconf.compose([f"model.source='{folder}'", "model.torch_dtype=float32"]))


def test_awq_packing_needs_a_cuda_gpu(folder: Path, tmp_path: Path) -> None:
    """Without a CUDA GPU auto-round 0.16.1 has no kernel for AWQ-packed (asymmetric) folders
    and builds their layers with random weights."""
    awq = _copy_with_config(folder, tmp_path, sym=False, packing_format="auto_round:auto_awq")
    with pytest.raises(qconf.QconfError, match="needs a CUDA GPU.*AWQ packing"):
        qconf.load(qconf.compose([f"model.source='{awq}'"]))


def test_layers_without_a_kernel_here_are_refused_not_loaded_random(tmp_path: Path) -> None:
    """Group size 128 does not divide tiny-flux's 64-input layers: auto-round builds them as
    float placeholders with random weights, and diffusers only warns."""
    folder = write_autoround_folder(tmp_path / "g128", 128)
    with pytest.raises(qconf.QconfError, match="random weights instead of the saved codes"):
        qconf.load(qconf.compose([f"model.source='{folder}'"]))


def test_weights_under_a_name_diffusers_does_not_read_are_refused_at_validate(
    folder: Path, tmp_path: Path
) -> None:
    copy = _copy_with_config(folder, tmp_path)
    weights = copy / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.rename(weights.with_name("model.safetensors"))
    with pytest.raises(qconf.PlanError, match="rename the file to diffusion_pytorch_model"):
        _plan(copy)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"act_bits": 4}, "act_bits"),
        ({"data_type": "mx_fp"}, "data_type"),
        ({"packing_format": "auto_round:llm_compressor"}, "packing_format"),
    ],  # fmt: skip
)
def test_a_saved_setting_qconf_does_not_model_is_refused(
    folder: Path, tmp_path: Path, change: dict, named: str
) -> None:
    copy = _copy_with_config(folder, tmp_path, **change)
    with pytest.raises(qconf.PlanError, match=named):
        _plan(copy)


def test_it_cannot_be_trained_or_re_saved(folder: Path, tmp_path: Path) -> None:
    plan = _plan(folder)
    with pytest.raises(qconf.QconfError, match="auto-round"):
        qconf.load(plan, train=True)
    with pytest.raises(qconf.QconfError, match="auto-round"):
        qconf.load(plan, save=tmp_path / "saved")
    assert not (tmp_path / "saved").exists()


def _part_folder(folder: Path, tmp_path: Path) -> Path:
    """The saved transformer alone, as a transformer-only repository ships it."""
    part = tmp_path / "transformer-int4"
    shutil.copytree(folder / "transformer", part)
    return part


def test_a_part_folder_named_in_the_plan_loads_into_that_part(folder: Path, tmp_path: Path) -> None:
    part = _part_folder(folder, tmp_path)
    plan = qconf.validate(
        qconf.compose([f"quant.mapping.transformer={{backend: auto-round, folder: '{part}'}}"])
    )
    assert plan.resolve().to_json()["components"]["transformer"]["folder"] == str(part)
    loaded = qconf.load(plan)
    report = loaded.report.parts["transformer"]
    assert report.quantized_layers == {"QuantLinear[int4]": 20}
    predicted = estimate(plan).parts["transformer"]
    assert (predicted.bytes, predicted.quantized_layers) == (report.bytes, 20)
    # the rest of the pipeline is tiny-flux's, unquantized
    assert loaded.report.parts["text_encoder"].quantized_layers == {}


def test_a_part_folder_is_checked_like_a_saved_one(folder: Path, tmp_path: Path) -> None:
    part = _part_folder(folder, tmp_path)

    def refused(entry: str, match: str) -> None:
        with pytest.raises(qconf.QconfError, match=match) as caught:
            qconf.load(qconf.compose([f"quant.mapping.transformer={entry}"]))
        assert len(str(caught.value).splitlines()) == 1

    refused(f"{{backend: auto-round, folder: '{part}', kwargs: {{bits: 8}}}}", "saved with")
    refused(f"{{backend: auto-round, folder: '{tmp_path}'}}", "not a part folder")
    config = json.loads((part / "config.json").read_text())
    config["quantization_config"].update(sym=False, packing_format="auto_round:auto_awq")
    (part / "config.json").write_text(json.dumps(config))
    refused(f"{{backend: auto-round, folder: '{part}'}}", "needs a CUDA GPU")
    config["quantization_config"]["quant_method"] = "sdnq"
    (part / "config.json").write_text(json.dumps(config))
    refused(f"{{backend: auto-round, folder: '{part}'}}", "says quant_method 'sdnq'")


def test_layers_the_config_names_but_the_checkpoint_stores_as_floats_are_refused(
    folder: Path, tmp_path: Path
) -> None:
    """auto-round converts every Linear under block_name_to_quantize; one the checkpoint holds
    as floats keeps all-zero codes (the float weight goes unused) and the load succeeds."""
    blocks = "transformer_blocks.0,single_transformer_blocks.0,x_embedder,proj_out"
    copy = _copy_with_config(folder, tmp_path, block_name_to_quantize=blocks)
    with pytest.raises(qconf.QconfError, match="no codes in the checkpoint") as caught:
        qconf.load(qconf.compose([f"model.source='{copy}'"]))
    assert len(str(caught.value).splitlines()) == 1
    part = _part_folder(copy, tmp_path)
    with pytest.raises(qconf.QconfError, match="no codes in the checkpoint"):
        qconf.load(
            qconf.compose([f"quant.mapping.transformer={{backend: auto-round, folder: '{part}'}}"])
        )


@pytest.mark.parametrize(
    ("change", "named"),
    [({"group_size": 0}, "group_size: 0 inputs"), ({"sym": "false"}, "sym")],
)
def test_settings_the_library_would_crash_on_are_refused_at_validate(
    folder: Path, tmp_path: Path, change: dict, named: str
) -> None:
    copy = _copy_with_config(folder, tmp_path, **change)
    with pytest.raises(qconf.PlanError, match=named):
        _plan(copy)
    part = _part_folder(copy, tmp_path)
    assert named in _refused_by_validate(f"{{backend: auto-round, folder: '{part}'}}")


def _refused_by_validate(entry: str, part: str = "transformer") -> str:
    """`qconf validate` (which checks named files and folders) on a mapping entry: its line."""
    import contextlib
    import io

    from qconf.cli.main import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert main(["validate", f"quant.mapping.{part}={entry}"]) == 2
    lines = err.getvalue().strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_a_part_folder_must_hold_this_part_in_safetensors(folder: Path, tmp_path: Path) -> None:
    part = _part_folder(folder, tmp_path)
    entry = f"{{backend: auto-round, folder: '{part}'}}"
    assert "holds a FluxTransformer2DModel; this part is" in _refused_by_validate(entry, "vae")
    weights = part / "diffusion_pytorch_model.safetensors"
    weights.rename(part / "diffusion_pytorch_model.bin")
    assert "holds no .safetensors weights" in _refused_by_validate(entry)


def test_inspect_prints_the_packing_so_its_plan_keeps_the_cuda_check(
    folder: Path, tmp_path: Path
) -> None:
    """A plan written from `inspect` of an AWQ folder must not pass as GPTQ on a CPU."""
    from qconf.loading.inspect import inspect_folder

    awq = _copy_with_config(folder, tmp_path, sym=False, packing_format="auto_round:auto_awq")
    entry = inspect_folder(awq)["quant"]["mapping"]["transformer"]
    assert entry["packing_format"] == "auto_round:auto_awq"
    bare = "{backend: auto-round, kwargs: {group_size: 32, sym: false}}"
    with pytest.raises(qconf.QconfError, match="was saved as"):
        _plan(awq, f"quant.mapping.transformer={bare}")


def test_a_text_encoder_saying_auto_round_is_refused(folder: Path, tmp_path: Path) -> None:
    """qconf reads auto-round on diffusers parts only (transformers' path is not measured)."""
    copy = _copy_with_config(folder, tmp_path)
    config_path = copy / "text_encoder" / "config.json"
    config = json.loads(config_path.read_text())
    config["quantization_config"] = {"quant_method": "auto-round", "bits": 4, "group_size": 32}
    config_path.write_text(json.dumps(config))
    with pytest.raises(qconf.PlanError, match="reads on diffusers parts only"):
        _plan(copy)
