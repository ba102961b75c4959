"""The guards that hold at load time, on sources whose files validation does not inspect.

Validation reads a local folder's or hub-cache snapshot's files (pickle-only parts, custom
code); the built-in tiny pipelines are known from the parts table, and some hub layouts pass the
folder checks. There the load itself must still refuse pickles and foreign code, and `--save`
must refuse before any weight is read. Every test here loads for real (no mocks of diffusers or
transformers) from a poisoned tiny cache or a hub cache built offline in a tmp folder."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

import qconf
from qconf.backends.torchao import QUANT_TYPES
from qconf.errors import ModelSourceError
from qconf.source.tiny import BUILD_VERSION, tiny_pipeline_path

SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def clean(qconf_cache: Path) -> dict[str, Path]:
    """Untouched tiny pipelines, built once for the module."""
    return {name: tiny_pipeline_path(name) for name in ("tiny-sd", "tiny-flux")}


def poisoned_tiny(
    name: str, clean: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """A private qconf cache holding a copy of tiny pipeline `name`, for the test to tamper with.
    `model.source=<name>` then loads this copy (validation knows it from the parts table)."""
    cache = tmp_path / "qconf-cache"
    folder = cache / "tiny" / f"{name}-v{BUILD_VERSION}"
    shutil.copytree(clean[name], folder)
    monkeypatch.setenv("QCONF_CACHE", str(cache))
    assert tiny_pipeline_path(name) == folder
    return folder


def hub_snapshot(repo: str, source: Path) -> Path:
    """`repo` in the tests' hub cache (see conftest) as the hub leaves it: refs/main → snapshot."""
    root = Path(os.environ["HF_HUB_CACHE"]) / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / SNAPSHOT
    shutil.copytree(source, snapshot)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(SNAPSHOT)
    return snapshot


def as_pickle(weights: Path, name: str) -> None:
    """Replace a .safetensors file by the same tensors as a torch pickle called `name`."""
    from safetensors.torch import load_file

    torch.save(load_file(weights), weights.parent / name)
    weights.unlink()


def pickle_name(weights: Path) -> str:
    return (
        "pytorch_model.bin"
        if weights.name == "model.safetensors"
        else "diffusion_pytorch_model.bin"
    )


# --- pickles: use_safetensors=True unless model.allow_pickle -----------------------------------


def test_pickle_weights_in_the_tiny_cache_are_not_loaded(
    clean: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = poisoned_tiny("tiny-sd", clean, tmp_path, monkeypatch)
    for weights in folder.glob("*/*.safetensors"):
        as_pickle(weights, pickle_name(weights))
    assert not list(folder.glob("*/*.safetensors"))
    plan = qconf.compose(["model.source=tiny-sd"])
    qconf.validate(plan)  # the parts table: validation cannot see the files
    with pytest.raises(ModelSourceError, match=r"no file named .*\.safetensors"):
        qconf.load(plan)
    # The same folder loads once the user trusts pickles: the refusal above is the guard's.
    loaded = qconf.load(qconf.compose(["model.source=tiny-sd", "model.allow_pickle=true"]))
    assert loaded.pipeline.unet is not None


def test_pickle_weights_beside_a_variant_in_the_hub_cache_are_not_loaded(
    clean: dict[str, Path],
) -> None:
    """A hub repo with `pytorch_model.bin` and only an fp16 variant in safetensors: the folder
    check sees a .safetensors file and passes; the load must not fall back to the pickle."""
    snapshot = hub_snapshot("org/bin-and-fp16", clean["tiny-sd"])
    weights = snapshot / "text_encoder" / "model.safetensors"
    shutil.copy(weights, weights.parent / "model.fp16.safetensors")
    as_pickle(weights, "pytorch_model.bin")
    plan = qconf.compose(["model.source=org/bin-and-fp16"])
    assert qconf.validate(plan).parts().origin == str(snapshot)
    with pytest.raises(ModelSourceError, match="no file named model.safetensors"):
        qconf.load(plan)
    loaded = qconf.load(qconf.compose(["model.source=org/bin-and-fp16", "model.allow_pickle=true"]))
    assert loaded.pipeline.text_encoder is not None


# --- foreign code: trust_remote_code only when the user sets it --------------------------------

EVIL_MODULE = """\
import pathlib
pathlib.Path({marker!r}).write_text("ran")
from {library} import {base}
class {name}({base}):
    pass
"""


def test_custom_part_code_in_the_tiny_cache_does_not_run(
    clean: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = poisoned_tiny("tiny-sd", clean, tmp_path, monkeypatch)
    marker = tmp_path / "custom-code-ran"
    index = json.loads((folder / "model_index.json").read_text())
    index["text_encoder"] = ["evil_encoder", "EvilEncoder"]
    (folder / "model_index.json").write_text(json.dumps(index))
    (folder / "text_encoder" / "evil_encoder.py").write_text(
        EVIL_MODULE.format(
            marker=str(marker), library="transformers", base="CLIPTextModel", name="EvilEncoder"
        )
    )
    plan = qconf.compose(["model.source=tiny-sd"])
    qconf.validate(plan)
    with pytest.raises(qconf.ModelSourceError, match="evil_encoder"):
        qconf.load(plan)
    # qconf never writes code into its cache: trust does not make a changed cache loadable
    with pytest.raises(qconf.ModelSourceError, match="the cached tiny pipeline was changed"):
        qconf.load(qconf.compose(["model.source=tiny-sd", "model.trust_remote_code=true"]))
    assert not marker.exists()
    # Loaded as a trusted folder, the same code does run: the folder really carries code.
    qconf.load(qconf.compose([f"model.source={folder}", "model.trust_remote_code=true"]))
    assert marker.read_text() == "ran"


def test_custom_pipeline_code_in_the_hub_cache_does_not_run(
    clean: dict[str, Path], tmp_path: Path
) -> None:
    """model_index.json naming a pipeline file of the repo (`_class_name: [file, class]`):
    diffusers would import the file; qconf refuses unless trust_remote_code is typed."""
    snapshot = hub_snapshot("org/custom-pipeline", clean["tiny-sd"])
    marker = tmp_path / "pipeline-code-ran"
    index = json.loads((snapshot / "model_index.json").read_text())
    index["_class_name"] = ["pipeline_evil", "EvilPipeline"]
    (snapshot / "model_index.json").write_text(json.dumps(index))
    (snapshot / "pipeline_evil.py").write_text(
        EVIL_MODULE.format(
            marker=str(marker),
            library="diffusers",
            base="StableDiffusionPipeline",
            name="EvilPipeline",
        )
    )
    plan = qconf.compose(["model.source=org/custom-pipeline"])
    with pytest.raises(qconf.PlanError, match="the pipeline needs custom code"):
        qconf.validate(plan)  # refused before loading (the load-time guard is tested above)
    with pytest.raises(qconf.PlanError, match="needs custom code"):
        qconf.load(plan)
    assert not marker.exists()
    qconf.load(qconf.compose(["model.source=org/custom-pipeline", "model.trust_remote_code=true"]))
    assert marker.read_text() == "ran"


# --- --save refuses before any weight is read ----------------------------------------------------


@pytest.fixture
def unreadable_flux(
    clean: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """tiny-flux whose weight files are garbage: any load that reads a weight fails."""
    folder = poisoned_tiny("tiny-flux", clean, tmp_path, monkeypatch)
    for weights in folder.glob("*/*.safetensors"):
        weights.write_bytes(b"\xff" * 64)
    with pytest.raises(Exception) as caught:  # noqa: PT011 - whatever reading garbage raises
        qconf.load(qconf.compose(["quant.mapping.transformer=int8wo"]))
    assert not isinstance(caught.value, qconf.PlanError)
    return folder


def test_save_refuses_an_unsaveable_plan_before_reading_weights(
    unreadable_flux: Path, tmp_path: Path
) -> None:
    target = tmp_path / "saved"
    with pytest.raises(qconf.PlanError, match="quanto on 'text_encoder' .* cannot be saved"):
        qconf.load(qconf.compose(["quant.mapping.text_encoder=quanto-int8"]), save=target)
    assert not target.exists()


def test_save_refuses_a_non_empty_target_before_reading_weights(
    unreadable_flux: Path, tmp_path: Path
) -> None:
    target = tmp_path / "saved"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(qconf.PlanError, match="exists and is not empty"):
        qconf.load(qconf.compose(["quant.mapping.transformer=int8wo"]), save=target)
    assert [p.name for p in target.iterdir()] == ["keep.txt"]


# --- torchao plans load in bfloat16 unless the user sets a dtype --------------------------------


def test_torchao_plans_default_the_load_dtype_to_bfloat16() -> None:
    def dtype(*overrides: str) -> str | None:
        resolved = qconf.validate(qconf.compose(["model.torch_dtype=null", *overrides])).resolve()
        assert resolved.to_json()["model"]["torch_dtype"] == resolved.torch_dtype
        return resolved.torch_dtype

    assert dtype("quant.mapping.transformer=int8wo") == "bfloat16"
    assert dtype("quant.mapping.text_encoder_2=float8wo") == "bfloat16"
    assert dtype(
        "quant.backend=torchao", "quant.kwargs.quant_type={name:Int8WeightOnlyConfig}"
    ) == ("bfloat16")
    assert dtype("quant.mapping.transformer=quanto-int8") is None
    assert dtype() is None
    assert dtype("model.torch_dtype=float16", "quant.mapping.transformer=int8wo") == "float16"


def test_a_torchao_plan_without_a_dtype_loads_every_part_in_bfloat16() -> None:
    loaded = qconf.load(
        qconf.compose(["model.torch_dtype=null", "quant.mapping.transformer=float8wo"])
    )
    assert loaded.resolved.torch_dtype == "bfloat16"
    for part in ("text_encoder", "text_encoder_2", "vae"):  # unquantized parts too
        assert getattr(loaded.pipeline, part).dtype == torch.bfloat16, part
    image = loaded.pipeline(
        "a cat", num_inference_steps=2, height=32, width=32, generator=torch.manual_seed(0)
    ).images[0]
    assert image.size == (32, 32)


# --- torchao quant types: unknown fields are errors ----------------------------------------------


@pytest.mark.parametrize("name", sorted(QUANT_TYPES))
def test_unknown_quant_type_field_is_an_error(name: str) -> None:
    quant_type = {"name": name, "group_sise": 64}
    entry = {"backend": "torchao", "kwargs": {"quant_type": quant_type}}
    plans = {
        "quant.mapping.transformer.kwargs.quant_type.group_sise": {
            "mapping": {"transformer": entry}
        },
        "quant.kwargs.quant_type.group_sise": {**entry, "components": ["transformer"]},
    }
    for where, quant in plans.items():
        with pytest.raises(qconf.PlanError) as caught:
            qconf.validate({"model": {"source": "tiny-flux"}, "quant": quant})
        (line,) = caught.value.lines
        assert line.startswith(f"{where}: unknown key — "), line
        fields = ", ".join(QUANT_TYPES[name].model_fields)
        assert line.endswith(f"valid keys: {fields}"), line
        if "group_size" in QUANT_TYPES[name].model_fields:
            assert "did you mean 'group_size'?" in line
