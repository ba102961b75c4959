"""Parts read from a pre-quantized file named in the plan (`{backend: bfl, file: ...}`): the
file is made here from tiny-flux's transformer with diffusers' own fp8r/nvfp4 quantizers, then
loaded through qconf. The estimate comes from the file's header and must equal the load."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import qconf
from qconf.estimate import estimate
from qconf.source.tiny import tiny_pipeline_path

SCHEMES = ("fp8r", "nvfp4")


def write_bfl_file(scheme: str, path: Path) -> int:
    """tiny-flux's transformer in BFL's `scheme` layout (diffusers' tensor names); returns how
    many Linear layers it quantized."""
    from diffusers import FluxTransformer2DModel
    from diffusers.quantizers.bfl.utils import quantize_fp8r, quantize_nvfp4
    from safetensors.torch import save_file

    model = FluxTransformer2DModel.from_pretrained(
        tiny_pipeline_path("tiny-flux"), subfolder="transformer", torch_dtype=torch.bfloat16
    )
    tensors: dict[str, torch.Tensor] = {}
    quantized = 0
    for name, module in model.named_modules():
        for local, value in module.named_parameters(recurse=False):
            key = f"{name}.{local}" if name else local
            if not (isinstance(module, torch.nn.Linear) and local == "weight"):
                tensors[key] = value.detach().contiguous()
                continue
            quantized += 1
            if scheme == "fp8r":
                tensors[key], tensors[f"{key}_scale"] = quantize_fp8r(value.float())
            else:
                weight, scale, scale_2 = quantize_nvfp4(value.float())
                tensors.update({key: weight, f"{key}_scale": scale, f"{key}_scale_2": scale_2})
                tensors[f"{name}.input_scale"] = torch.tensor(1.0)
    save_file(tensors, str(path))
    return quantized


@pytest.fixture(scope="module", params=SCHEMES)
def bfl_file(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp("bfl") / f"transformer-{request.param}.safetensors"
    return path, write_bfl_file(request.param, path)


def test_a_bfl_file_loads_with_every_linear_quantized_and_the_estimate_is_exact(
    bfl_file: tuple[Path, int],
) -> None:
    path, layers = bfl_file
    plan = qconf.validate(
        qconf.compose([f"quant.mapping.transformer={{backend: bfl, file: '{path}'}}"])
    )
    loaded = qconf.load(plan)
    module = loaded.pipeline.transformer
    kinds = {type(m).__name__ for m in module.modules() if isinstance(m, torch.nn.Linear)}
    assert kinds <= {"BFLFP8RLinear", "BFLNVFP4Linear"} and kinds, kinds
    report = loaded.report.parts["transformer"]
    assert sum(report.quantized_layers.values()) == layers
    predicted = estimate(plan).parts["transformer"]
    assert predicted.bytes == report.bytes
    assert predicted.params == report.params
    # it computes: one denoising step gives a finite image
    seeded = torch.Generator().manual_seed(0)
    image = loaded.pipeline("a cat", num_inference_steps=1, height=32, width=32,
                            output_type="pt", generator=seeded)  # fmt: skip
    assert torch.isfinite(image.images).all()


def test_a_file_that_is_not_bfl_is_one_line_before_loading(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    plain = tmp_path / "plain.safetensors"
    save_file({"a.weight": torch.zeros(2, 2)}, str(plain))
    with pytest.raises(qconf.QconfError, match="no weight_scale tensors"):
        qconf.load(qconf.compose([f"quant.mapping.transformer={{backend: bfl, file: '{plain}'}}"]))


def test_a_missing_or_wrong_file_is_a_plan_error(tmp_path: Path) -> None:
    with pytest.raises(qconf.PlanError, match="is not a .safetensors file"):
        qconf.validate(
            qconf.compose(
                [f"quant.mapping.transformer={{backend: bfl, file: '{tmp_path}/x.gguf'}}"]
            )
        )


def test_bfl_parts_cannot_be_saved(tmp_path: Path, bfl_file: tuple[Path, int]) -> None:
    path, _ = bfl_file
    with pytest.raises(qconf.QconfError, match="bfl"):
        qconf.load(
            qconf.compose([f"quant.mapping.transformer={{backend: bfl, file: '{path}'}}"]),
            save=tmp_path / "saved",
        )
    assert not (tmp_path / "saved").exists()


def test_a_file_for_another_model_or_with_wrong_shapes_is_one_line(tmp_path: Path) -> None:
    """diffusers converts a file whose keys do not match as BFL's original layout and fails
    deep inside; a weight of the wrong shape loads and fails at the first forward."""
    from safetensors.torch import load_file, save_file

    source = tmp_path / "ok.safetensors"
    write_bfl_file("fp8r", source)
    tensors = load_file(str(source))
    missing = dict(tensors)
    missing.pop("x_embedder.weight")
    missing.pop("x_embedder.weight_scale")
    wrong = dict(tensors)
    wrong["x_embedder.weight"] = tensors["x_embedder.weight"][:3, :3].contiguous()
    for name, data, expected in (("missing", missing, "does not load as"),
                                 ("wrong", wrong, r"has weight \[3, 3\]")):  # fmt: skip
        path = tmp_path / f"{name}.safetensors"
        save_file(data, str(path))
        cfg = qconf.compose([f"quant.mapping.transformer={{backend: bfl, file: '{path}'}}"])
        with pytest.raises(qconf.QconfError, match=expected) as caught:
            qconf.load(cfg)
        assert len(str(caught.value).splitlines()) == 1


def test_a_broken_file_is_refused_by_validate(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from qconf.cli.main import main

    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    entry = f"{{backend: bfl, file: '{junk}'}}"
    assert main(["validate", f"quant.mapping.transformer={entry}"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "not a complete safetensors file" in error[0]
