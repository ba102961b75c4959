"""Save once, reload later; inspect any saved pipeline; refuse what could run foreign code."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import qconf
from qconf.loading.inspect import inspect_folder
from qconf.source.tiny import tiny_pipeline_path

FLUX_PARTS = ("transformer", "text_encoder", "text_encoder_2", "vae")


def flat(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every stored tensor behind a parameter: subclass inner tensors and bnb quant state."""
    flatten = getattr(tensor, "__tensor_flatten__", None)
    if flatten is not None and type(tensor).__name__ not in ("Parameter", "Tensor"):
        names, _ = flatten()
        return [inner for name in names for inner in flat(getattr(tensor, name))]
    stored = [tensor.data if isinstance(tensor, torch.nn.Parameter) else tensor]
    state = getattr(tensor, "quant_state", None)
    if state is not None:
        stored += [state.absmax, state.code]
    if getattr(tensor, "SCB", None) is not None:
        stored.append(tensor.SCB)
    return stored


def assert_same_tensors(first, second, parts) -> None:  # noqa: ANN001
    for part in parts:
        a = dict(getattr(first, part).named_parameters())
        b = dict(getattr(second, part).named_parameters())
        assert a.keys() == b.keys(), part
        for name in a:
            left, right = flat(a[name]), flat(b[name])
            assert [type(t) for t in left] == [type(t) for t in right], (part, name)
            assert all(torch.equal(x, y) for x, y in zip(left, right, strict=True)), (part, name)
            assert type(a[name]) is type(b[name]), (part, name)


PLANS = {
    "torchao-int8-everywhere": [f"quant.mapping.{p}=int8wo" for p in FLUX_PARTS],
    "torchao-int4-everywhere": [f"quant.mapping.{p}=int4wo" for p in FLUX_PARTS],
    "quanto-on-diffusers-parts": [
        "quant.mapping.transformer=quanto-int8",
        "quant.mapping.vae=quanto-float8",
    ],
    "bnb-on-text-encoders": [
        "quant.mapping.text_encoder=nf4",
        "quant.mapping.text_encoder_2=bnb-int8",
    ],
}


@pytest.mark.parametrize("overrides", PLANS.values(), ids=PLANS.keys())
def test_save_then_reload_gives_identical_tensors_and_plan(
    overrides: list[str], tmp_path: Path
) -> None:
    target = tmp_path / "saved"
    original = qconf.load(qconf.compose(overrides), save=target)
    assert (target / "model_index.json").is_file() and (target / "qconf.yaml").is_file()
    reloaded = qconf.load(qconf.compose([f"model.source={target}"]))
    assert_same_tensors(original.pipeline, reloaded.pipeline, FLUX_PARTS)
    assert reloaded.resolved.to_json()["components"] == original.resolved.to_json()["components"]
    # the same plan stated explicitly agrees with the folder too
    qconf.validate(qconf.compose([f"model.source={target}", *overrides]))
    record = json.loads(
        json.dumps(__import__("yaml").safe_load((target / "qconf.yaml").read_text()))
    )
    assert record["plan"]["components"] == original.resolved.to_json()["components"]
    assert "diffusers" in record["versions"] and "torch" in record["versions"]


def test_quanto_int4_reloads_to_the_same_values_in_another_layout(tmp_path: Path) -> None:
    """quanto packs int4 for its CPU tinygemm kernel when it quantizes, but reloads the generic
    packing (separate scale and shift): the stored tensors differ, the weights they encode
    do not."""
    target = tmp_path / "saved"
    original = qconf.load(qconf.compose(["quant.mapping.transformer=quanto-int4"]), save=target)
    reloaded = qconf.load(qconf.compose([f"model.source={target}"]))
    first = dict(original.pipeline.transformer.named_parameters())
    second = dict(reloaded.pipeline.transformer.named_parameters())
    for name, weight in first.items():
        if hasattr(weight, "dequantize"):
            assert torch.equal(weight.dequantize(), second[name].dequantize()), name
        else:
            assert torch.equal(weight, second[name]), name


@pytest.mark.gpu
def test_save_then_reload_bnb_on_the_transformer_on_gpu(tmp_path: Path) -> None:
    target = tmp_path / "saved"
    overrides = ["preset=flux-nf4", "model=tiny-flux"]
    original = qconf.load(qconf.compose(overrides), save=target)
    reloaded = qconf.load(qconf.compose([f"model.source={target}"]))
    assert_same_tensors(original.pipeline, reloaded.pipeline, ("transformer", "text_encoder_2"))


def test_a_plan_that_disagrees_with_the_saved_folder_shows_both(tmp_path: Path) -> None:
    target = tmp_path / "saved"
    qconf.load(qconf.compose(["quant.mapping.transformer=int8wo"]), save=target)
    with pytest.raises(qconf.PlanError) as caught:
        qconf.validate(
            qconf.compose([f"model.source={target}", "quant.mapping.transformer=int4wo"])
        )
    (line,) = caught.value.lines
    assert line.startswith("quant.mapping.transformer: plan says ")
    assert '"IntxWeightOnlyConfig"' in line and '"Int8WeightOnlyConfig"' in line
    assert "was saved as" in line


def test_unsaveable_plan_is_refused_before_loading(tmp_path: Path) -> None:
    with pytest.raises(qconf.PlanError, match="quanto on 'text_encoder' .* cannot be saved"):
        qconf.load(qconf.compose(["quant.mapping.text_encoder=quanto-int8"]), save=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_non_empty_target_needs_force(tmp_path: Path) -> None:
    target = tmp_path / "saved"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    plan = qconf.compose(["quant.mapping.transformer=int8wo"])
    with pytest.raises(qconf.PlanError, match="exists and is not empty"):
        qconf.load(plan, save=target)
    assert (target / "keep.txt").read_text() == "mine"
    qconf.load(plan, save=target, force=True)
    assert not (target / "keep.txt").exists() and (target / "model_index.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["saved"]  # no leftovers beside it


KILL_MIDWAY = """
import os, signal, sys
import qconf
from qconf.loading.saving import save_pipeline
loaded = qconf.load(qconf.compose(["quant.mapping.transformer=int8wo"]))
real = loaded.pipeline.save_pretrained
def save_then_die(*args, **kwargs):
    real(*args, **kwargs)               # every file written ...
    os.kill(os.getpid(), signal.SIGKILL)  # ... and killed before the move into place
loaded.pipeline.save_pretrained = save_then_die
save_pipeline(loaded, sys.argv[1])
"""


def test_killing_the_save_midway_leaves_no_dir(tmp_path: Path) -> None:
    target = tmp_path / "saved"
    result = subprocess.run([sys.executable, "-c", KILL_MIDWAY, str(target)], capture_output=True)
    assert result.returncode == -9
    assert not target.exists()


def test_a_failing_save_leaves_nothing(tmp_path: Path) -> None:
    loaded = qconf.load(qconf.compose(["quant.mapping.transformer=int8wo"]))

    def broken(*args, **kwargs):  # noqa: ANN002, ANN003
        raise OSError("disk full")

    loaded.pipeline.save_pretrained = broken
    with pytest.raises(OSError, match="disk full"):
        qconf.save(loaded, tmp_path / "saved")
    assert list(tmp_path.iterdir()) == []


def test_inspect_a_pipeline_saved_by_plain_diffusers(tmp_path: Path) -> None:
    import diffusers
    import transformers
    from diffusers import DiffusionPipeline, PipelineQuantizationConfig
    from torchao.quantization import Int8WeightOnlyConfig

    hand = PipelineQuantizationConfig(
        quant_mapping={
            "transformer": diffusers.TorchAoConfig(Int8WeightOnlyConfig()),
            "text_encoder": transformers.BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
            ),
            "vae": diffusers.QuantoConfig(weights_dtype="int8"),
        }
    )
    pipeline = DiffusionPipeline.from_pretrained(
        tiny_pipeline_path("tiny-flux"), quantization_config=hand, dtype=torch.bfloat16
    )
    pipeline.save_pretrained(tmp_path / "plain")
    inspected = inspect_folder(tmp_path / "plain")
    same = qconf.validate(
        qconf.compose(
            [
                "quant.mapping.transformer=int8wo",
                "quant.mapping.text_encoder=nf4",
                "quant.mapping.vae=quanto-int8",
            ]
        )
    )
    assert inspected["quant"]["mapping"] == {
        name: entry.canonical() for name, entry in same.quant.mapping.items()
    }
    assert inspected["model"]["pipeline"] == "FluxPipeline"
    # the inspected plan is itself a valid plan for the folder
    qconf.validate(inspected)
    result = subprocess.run(
        [sys.executable, "-m", "qconf.cli.main", "inspect", "--json", str(tmp_path / "plain")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and json.loads(result.stdout) == json.loads(json.dumps(inspected))


def test_target_os_system_in_a_config_file_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    (tmp_path / "preset").mkdir()
    (tmp_path / "preset" / "evil.yaml").write_text(
        "# @package _global_\nquant:\n  mapping:\n    vae:\n"
        f"      _target_: os.system\n      _args_: ['touch {marker}']\n"
    )
    for command in ("validate", "show", "load"):
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "qconf.cli.main",
                command,
                "--config-dir",
                str(tmp_path),
                "preset=evil",
            ],
            capture_output=True,
            text=True,
        )
        assert result.returncode == 2, result.stderr
        assert "quant.mapping.vae._target_: 'os.system' is not allowed" in result.stderr
    with pytest.raises(qconf.PlanError, match="'os.system' is not allowed"):
        qconf.safe_instantiate({"_target_": "os.system", "_args_": [f"touch {marker}"]})
    assert not marker.exists()


def test_pickle_only_weights_are_refused_unless_allowed(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    folder = tmp_path / "bin-only"
    shutil.copytree(tiny_pipeline_path("tiny-sd"), folder)
    for weights in folder.glob("*/*.safetensors"):  # the same weights, as pickles
        name = (
            "pytorch_model.bin"
            if weights.name == "model.safetensors"
            else ("diffusion_pytorch_model.bin")
        )
        torch.save(load_file(weights), weights.parent / name)
        weights.unlink()
    with pytest.raises(qconf.PlanError) as caught:
        qconf.validate(qconf.compose([f"model.source={folder}"]))
    assert caught.value.lines[0] == (
        "model.source: part 'text_encoder' has only pickle weights (.bin/.pt/.ckpt), which can run "
        "code — convert them to .safetensors, or set model.allow_pickle=true to trust them"
    )
    loaded = qconf.load(qconf.compose([f"model.source={folder}", "model.allow_pickle=true"]))
    assert loaded.pipeline.unet is not None


def test_custom_code_is_refused_unless_trusted(tmp_path: Path) -> None:
    folder = tmp_path / "custom"
    shutil.copytree(tiny_pipeline_path("tiny-flux"), folder)
    config_file = folder / "text_encoder" / "config.json"
    config = json.loads(config_file.read_text())
    config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    config_file.write_text(json.dumps(config))
    with pytest.raises(qconf.PlanError) as caught:
        qconf.validate(qconf.compose([f"model.source={folder}"]))
    assert caught.value.lines == [
        "model.source: part 'text_encoder' needs custom code: its config.json has an auto_map "
        "(code shipped with the model) — set model.trust_remote_code=true only if you trust "
        "this model's code"
    ]
    qconf.validate(qconf.compose([f"model.source={folder}", "model.trust_remote_code=true"]))


def write_gguf(state_dict: dict[str, torch.Tensor], path: Path) -> int:
    """A GGUF file with the part's own (diffusers) tensor names: Q8_0 where rows allow it."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch="qconf-test")
    quantized = 0
    for name, tensor in state_dict.items():
        array = tensor.float().numpy()
        if tensor.ndim == 2 and tensor.shape[1] % 32 == 0:
            data = gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(
                name, data, raw_shape=data.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0
            )
            quantized += 1
        else:
            writer.add_tensor(name, array.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return quantized


def test_a_part_from_a_gguf_file_loads_with_from_single_file(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    weights = (
        tiny_pipeline_path("tiny-flux") / "transformer" / "diffusion_pytorch_model.safetensors"
    )
    gguf_file = tmp_path / "transformer.gguf"
    assert write_gguf(load_file(weights), gguf_file) == 30
    loaded = qconf.load(
        qconf.compose(
            [
                f"quant.mapping.transformer={{backend:gguf,file:'{gguf_file}'}}",
                "quant.mapping.vae=int8wo",
            ]
        )
    )
    report = loaded.report.parts["transformer"]
    assert report.quantized_layers == {"GGUFLinear[GGUFParameter]": 30}
    assert report.params == sum(p.numel() for p in load_file(weights).values())
    assert report.bytes < report.bytes_unquantized
    assert loaded.report.parts["vae"].backend == "torchao"  # the other parts load normally
    from qconf.estimate import estimate

    assert estimate(loaded.resolved.plan).parts["transformer"].bytes == report.bytes
    image = loaded.pipeline("a cat", num_inference_steps=2, height=32, width=32).images[0]
    assert image.size == (32, 32)
    with pytest.raises(qconf.PlanError, match="gguf on 'transformer' .* cannot be saved"):
        qconf.load(loaded.resolved.plan, save=tmp_path / "saved")
