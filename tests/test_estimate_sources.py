"""Fast checks of where the estimator finds shapes (qconf/estimate/{snapshots,sources}.py) and of
the estimate of a part (qconf/estimate/core.py) on the hand-counted tiny DDPM pipeline of
tests/tiny_family.py: config files only, one small UNet built on the meta device."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tiny_family import BF16, INT8WO, INT8WO_PEAK, PARAMS, UNET, write_ddpm

import qconf
from qconf.errors import ModelSourceError, PlanError, QconfError
from qconf.estimate import snapshots, sources
from qconf.estimate.core import estimate

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers.models.unets.unet_2d")  # at collection: once per run

FLUX = "black-forest-labs/FLUX.1-dev"
FLUX_FILES = [
    "model_index.json",
    "text_encoder/config.json",
    "text_encoder_2/config.json",
    "transformer/config.json",
    "vae/config.json",
]


def _plan(source: str | Path, **quant: Any) -> Any:
    model = {"source": str(source), "pipeline": "DDPMPipeline", "torch_dtype": "bfloat16"}
    return qconf.intake(model=model, quant=quant or None)


INT8WO_KWARGS = {"quant_type": {"name": "Int8WeightOnlyConfig"}}


# --- the shipped snapshots --------------------------------------------------------------------


def test_snapshots_are_shipped_in_qconfs_data_one_folder_a_hub_id() -> None:
    root = Path(qconf.__file__).parent / "data" / "snapshots"
    assert snapshots.snapshots_root() == root
    assert snapshots.slug(FLUX) == "black-forest-labs--FLUX.1-dev"
    assert snapshots.slug("a/b/c") == "a--b--c"
    assert snapshots.snapshot_folder(FLUX) == root / "black-forest-labs--FLUX.1-dev"
    assert snapshots.snapshot_folder("nobody/nothing") is None
    assert snapshots.snapshot_folder("SOURCES.md") is None  # a file there, no model_index.json
    found = snapshots.shipped()
    assert found[FLUX] == root / "black-forest-labs--FLUX.1-dev"
    folders = sorted(p.name for p in root.iterdir() if (p / "model_index.json").is_file())
    assert list(found) == [name.replace("--", "/") for name in folders]


def test_a_hub_id_is_split_at_its_first_double_dash_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_ddpm(tmp_path / "org--name--v2")
    (tmp_path / "no-index").mkdir()
    monkeypatch.setattr(snapshots, "snapshots_root", lambda: tmp_path)
    assert snapshots.shipped() == {"org/name--v2": tmp_path / "org--name--v2"}


def test_a_folder_is_shipped_when_it_resolves_into_the_snapshots(tmp_path: Path) -> None:
    flux = snapshots.snapshot_folder(FLUX)
    assert flux is not None
    assert snapshots.is_shipped(flux) and snapshots.is_shipped(flux / "transformer")
    assert not snapshots.is_shipped(tmp_path) and not snapshots.is_shipped(flux.parent.parent)
    (tmp_path / "link").symlink_to(flux)
    assert snapshots.is_shipped(tmp_path / "link")


@pytest.mark.parametrize(
    ("value", "offline"),
    [("1", True), ("TRUE", True), ("yes", True), ("On", True), ("0", False), ("", False),
     ("no", False)],
)  # fmt: skip
def test_hf_hub_offline_is_read_as_the_hub_reads_it(
    value: str, offline: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert snapshots._offline() is offline
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert snapshots._offline() is False


def test_the_files_an_estimate_needs_are_the_required_weighted_parts_configs() -> None:
    assert snapshots._expected_files(FLUX, None) == FLUX_FILES  # pipeline from model=flux-dev
    ddpm = snapshots._expected_files("nobody/nothing", "DDPMPipeline")
    assert ddpm == ["model_index.json", "unet/config.json"]
    assert snapshots._expected_files("nobody/nothing", None) == ["model_index.json"]
    # the plan's pipeline wins over the model option's
    assert snapshots._expected_files(FLUX, "DDPMPipeline") == ddpm


def test_offline_a_missing_snapshot_names_every_file_it_needs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError) as caught:
        snapshots.fetch_configs(FLUX)
    (problem,) = caught.value.problems
    assert problem.where == "model.source"
    assert problem.what == (
        f"'{FLUX}' has no built-in snapshot and no local copy, and its config files could not be "
        f"fetched (HF_HUB_OFFLINE is set); missing: {', '.join(FLUX_FILES)}"
    )
    assert problem.fix == (
        "go online once (only those config files are downloaded), or copy them into a local "
        "folder and pass --folder DIR"
    )


def test_online_only_the_config_files_are_fetched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    asked: list[tuple[str, Any]] = []

    def download(repo_id: str, allow_patterns: Any = None) -> str:
        asked.append((repo_id, allow_patterns))
        return str(write_ddpm(tmp_path / "fetched"))

    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    assert snapshots.fetch_configs("org/m", "DDPMPipeline") == tmp_path / "fetched"
    assert asked == [("org/m", ["model_index.json", "*/config.json"])]

    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: str(tmp_path))
    with pytest.raises(ModelSourceError) as caught:
        snapshots.fetch_configs("org/m")
    assert [(p.where, p.what, p.fix) for p in caught.value.problems] == [
        ("org/m", "has no model_index.json on the hub", "give a diffusers pipeline")
    ]

    def unreachable(*args: Any, **kwargs: Any) -> str:
        raise OSError("no route to host\nmore lines")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", unreachable)
    with pytest.raises(ModelSourceError) as caught:
        snapshots.fetch_configs("org/m", "DDPMPipeline")
    assert caught.value.problems[0].what == (
        "'org/m' has no built-in snapshot and no local copy, and its config files could not be "
        "fetched (OSError: no route to host); missing: model_index.json, unet/config.json"
    )

    def silent(*args: Any, **kwargs: Any) -> str:
        raise OSError()

    monkeypatch.setattr(huggingface_hub, "snapshot_download", silent)
    with pytest.raises(ModelSourceError, match=r"\(OSError: \); missing"):
        snapshots.fetch_configs("org/m")


# --- where an estimate reads from -------------------------------------------------------------


def test_a_plan_is_estimated_from_its_folder_or_the_one_given(tmp_path: Path) -> None:
    folder = write_ddpm(tmp_path / "ddpm")
    found_folder, parts = sources.estimate_source(_plan(folder))
    assert found_folder == folder and set(parts.weighted) == {"unet"}
    other = write_ddpm(tmp_path / "other")
    found_folder, parts = sources.estimate_source(_plan(folder), other)
    assert found_folder == other and parts.pipeline == "DDPMPipeline"


def test_a_hub_plan_is_estimated_from_its_shipped_snapshot_else_fetched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_ddpm(tmp_path / "org--ddpm")
    monkeypatch.setattr(snapshots, "snapshots_root", lambda: tmp_path)
    found_folder, parts = sources.estimate_source(_plan("org/ddpm"))
    assert found_folder == tmp_path / "org--ddpm" and set(parts.weighted) == {"unet"}
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError, match="missing: model_index.json, unet/config.json"):
        sources.estimate_source(_plan("org/elsewhere"))


def test_a_hub_plan_without_a_snapshot_reads_the_fetched_config_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    fetched = write_ddpm(tmp_path / "fetched")
    asked: list[str] = []

    def download(repo_id: str, allow_patterns: Any = None) -> str:
        asked.append(repo_id)
        return str(fetched)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", download)
    found_folder, parts = sources.estimate_source(_plan("org/fetched"))
    assert (found_folder, set(parts.weighted), asked) == (fetched, {"unet"}, ["org/fetched"])
    index = json.loads((fetched / "model_index.json").read_text())
    (fetched / "model_index.json").write_text(json.dumps({**index, "_class_name": "DDIMPipeline"}))
    with pytest.raises(PlanError) as caught:  # checked as model.source is
        sources.estimate_source(_plan("org/fetched"))
    assert caught.value.problems[0].where.startswith("model.source")


# --- building a part on the meta device -------------------------------------------------------


def test_a_part_is_built_on_the_meta_device_once_per_config_state(tmp_path: Path) -> None:
    folder = write_ddpm(tmp_path / "ddpm")
    config, model = sources.meta_model(folder, "unet", "diffusers", "UNet2DModel", torch.float32)
    assert config["block_out_channels"] == [8] and type(model).__name__ == "UNet2DModel"
    assert sum(p.numel() for p in model.parameters()) == PARAMS
    assert {p.device.type for p in model.parameters()} == {"meta"}
    again = sources.meta_model(folder, "unet", "diffusers", "UNet2DModel", torch.float32)
    assert again[1] is model  # cached
    wider = write_ddpm(tmp_path / "ddpm", {**UNET, "block_out_channels": [16]})
    _, rebuilt = sources.meta_model(wider, "unet", "diffusers", "UNet2DModel", torch.float32)
    assert rebuilt is not model and rebuilt.conv_in.weight.shape == (16, 3, 3, 3)


def test_a_part_that_cannot_be_built_says_why(tmp_path: Path) -> None:
    folder = write_ddpm(tmp_path / "ddpm")

    def problem(name: str, library: str, class_name: str) -> Any:
        with pytest.raises(ModelSourceError) as caught:
            sources.meta_model(folder, name, library, class_name, torch.float32)
        (found,) = caught.value.problems
        return found

    missing = problem("vae", "diffusers", "AutoencoderKL")
    assert (missing.where, missing.what) == (str(folder / "vae"), "has no config.json")
    assert missing.fix == "copy the part's config.json there"
    unknown = problem("unet", "diffusers", "NoSuchModel")
    assert unknown.where == str(folder / "model_index.json")
    assert unknown.what == (
        "unet: diffusers.NoSuchModel is not installed here, so it cannot be built"
    )
    assert unknown.fix == "estimate parts of diffusers and transformers classes only"
    assert "onnx.UNet2DModel is not installed" in problem("unet", "onnx", "UNet2DModel").what
    write_ddpm(folder, {**UNET, "norm_num_groups": 3})  # 8 channels in groups of 3
    bad = problem("unet", "diffusers", "UNet2DModel")
    assert bad.where == str(folder / "unet" / "config.json")
    assert bad.what.startswith("UNet2DModel cannot be built from it (")
    assert bad.fix == "fix the values in config.json (compare with the original model's)"


def test_bad_config_values_are_the_files_fault_in_one_line() -> None:
    from huggingface_hub.errors import StrictDataclassError

    path = Path("/c.json")
    assert StrictDataclassError in sources._config_errors()
    for error in (TypeError, ValueError, KeyError, AttributeError, IndexError,
                  ZeroDivisionError, OverflowError, RuntimeError):  # fmt: skip
        assert error in sources._config_errors()
    for raised, said in [(ValueError("first\nsecond"), "(ValueError: first)"),
                         (ZeroDivisionError(), "(ZeroDivisionError: )"),
                         (OverflowError("x" * 200), f"(OverflowError: {'x' * 120})")]:  # fmt: skip
        with pytest.raises(ModelSourceError) as caught, sources._config_values(path, "Cls"):
            raise raised
        assert caught.value.problems[0].what == f"Cls cannot be built from it {said}"
    with pytest.raises(MemoryError), sources._config_values(path, "Cls"):
        raise MemoryError  # not a config value: not the file's fault


def test_a_transformers_part_is_built_in_its_load_dtype(tmp_path: Path) -> None:
    config = dict(CLIP_TEXT)
    (tmp_path / "te").mkdir()
    (tmp_path / "te" / "config.json").write_text(json.dumps(config))
    found, model = sources.meta_model(
        tmp_path, "te", "transformers", "CLIPTextModel", torch.float16
    )
    assert torch.get_default_dtype() == torch.float32  # put back
    assert {p.dtype for p in model.parameters()} == {torch.float16}
    assert found["hidden_size"] == 4 and type(model.config).__name__ == "CLIPTextConfig"
    # hidden 4, inner 6, one layer: embeddings 10*4 + 5*4, q/k/v/out 4 * (16 + 4),
    # two LayerNorms 2 * 8, fc1 4*6+6, fc2 6*4+4, final LayerNorm 8
    assert sum(p.numel() for p in model.parameters()) == 60 + 80 + 16 + 30 + 28 + 8
    # no model_type: the class's own config class
    del config["model_type"]
    (tmp_path / "te" / "config.json").write_text(json.dumps(config))
    _, model = sources.meta_model(tmp_path, "te", "transformers", "CLIPTextModel", torch.bfloat16)
    assert type(model.config).__name__ == "CLIPTextConfig"
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_a_model_needing_real_values_at_build_gets_real_buffers_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Scheduled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("steps", torch.arange(4))
            self.count = int(self.steps.sum().item())  # fails on the meta device
            self.proj = torch.nn.Linear(2, 3)

    built = sources._on_meta(Scheduled)
    assert built.count == 6 and built.steps.device.type == "cpu"
    assert built.proj.weight.device.type == "meta"
    # whatever accelerate's own default says (its environment flag)
    monkeypatch.setenv("ACCELERATE_INIT_INCLUDE_BUFFERS", "1")
    assert sources._on_meta(Scheduled).steps.device.type == "cpu"
    plain = sources._on_meta(lambda: torch.nn.BatchNorm1d(3))
    assert plain.weight.device.type == "meta" and plain.running_mean.device.type == "meta"


class _Keeps:
    """The attributes fp32_matcher reads off a model."""

    _keep_in_fp32_modules: list[str] | None = ["wo", "norm*out"]
    _keep_in_fp32_modules_strict: list[str] | None = ["router"]


def test_diffusers_keeps_modules_whose_name_is_a_key_component() -> None:
    keep = sources.fp32_matcher(_Keeps(), "diffusers", torch.bfloat16)
    assert keep("blocks.0.wo.weight") and keep("wo")
    assert not keep("blocks.0.wo_x.weight") and not keep("blocks.0.router.weight")
    nothing = type("Plain", (), {"_keep_in_fp32_modules": None})()
    assert not sources.fp32_matcher(nothing, "diffusers", torch.float16)("wo.weight")


def test_transformers_keeps_by_pattern_and_by_dtype() -> None:
    fp16 = sources.fp32_matcher(_Keeps(), "transformers", torch.float16)
    assert fp16("encoder.block.0.layer.1.DenseReluDense.wo.weight")
    assert fp16("x.wox.weight")  # a pattern searched anywhere in the key
    assert fp16("final_norm_layer_out.weight")  # `*` matches anything
    assert fp16("moe.router.weight")
    assert not fp16("attention.q.weight")
    bf16 = sources.fp32_matcher(_Keeps(), "transformers", torch.bfloat16)
    assert bf16("moe.router.weight") and not bf16("block.wo.weight")
    fp32 = sources.fp32_matcher(_Keeps(), "transformers", torch.float32)
    assert fp32("moe.router.weight") is False and fp32("block.wo.weight") is False
    loose = type("Loose", (), {"_keep_in_fp32_modules": None,
                               "_keep_in_fp32_modules_strict": None})()  # fmt: skip
    assert not sources.fp32_matcher(loose, "transformers", torch.float16)("wo.weight")


# --- the estimate of a part -------------------------------------------------------------------


def test_the_tiny_unet_is_counted_as_by_hand(tmp_path: Path) -> None:
    folder = write_ddpm(tmp_path / "ddpm")
    plain = estimate(_plan(folder))
    assert (plain.pipeline, plain.folder, plain.torch_dtype) == ("DDPMPipeline", str(folder),
                                                                 "bfloat16")  # fmt: skip
    (part,) = plain.parts.values()
    assert (part.part, part.library, part.class_name, part.backend) == (
        "unet", "diffusers", "UNet2DModel", None)  # fmt: skip
    assert (part.params, part.bytes_unquantized, part.bytes) == (PARAMS, BF16, BF16)
    assert (part.quantized_layers, part.from_weights, part.notes) == (0, False, ())
    assert part.load_peak_ratio == 1.0 and plain.load_peak_bytes == BF16
    int8 = estimate(_plan(folder, mapping={"unet": "int8wo"}))
    (part,) = int8.parts.values()
    assert (part.backend, part.bytes_unquantized, part.bytes) == ("torchao", BF16, INT8WO)
    assert part.quantized_layers == 7 and part.load_peak_ratio == 1.1
    assert int8.load_peak_bytes == INT8WO_PEAK
    fp32 = estimate(qconf.intake(model={"source": str(folder), "torch_dtype": None}))
    assert fp32.parts["unet"].bytes == 4 * PARAMS and fp32.torch_dtype is None


def test_a_skip_list_leaves_its_layers_in_the_load_dtype(tmp_path: Path) -> None:
    folder = write_ddpm(tmp_path / "ddpm")
    # linear_1 (32x8) and linear_2 (32x32) stay bf16; the five time_emb_proj (8x32) are
    # quantized: 5 * 256 int8 + 40 rows * 5 instead of 2 * 1280
    skipped = {"backend": "torchao", "kwargs": {**INT8WO_KWARGS,
               "modules_to_not_convert": ["time_embedding"]}}  # fmt: skip
    (part,) = estimate(_plan(folder, mapping={"unet": skipped})).parts.values()
    assert part.bytes == BF16 - 2 * 1280 + 1280 + 40 * 5 and part.quantized_layers == 5


def test_layers_a_backend_cannot_take_are_counted_unquantized_and_said(tmp_path: Path) -> None:
    folder = write_ddpm(tmp_path / "ddpm")
    grouped = {"backend": "torchao", "kwargs": {"quant_type": {
        "name": "Int8WeightOnlyConfig", "group_size": 16}}}  # fmt: skip
    (part,) = estimate(_plan(folder, mapping={"unet": grouped})).parts.values()
    # linear_1 has 8 inputs, not a multiple of 16: left; linear_2 (32x32, 64 groups) and the
    # five 8x32 time_emb_proj (16 groups each) are quantized
    assert part.bytes == BF16 - 2 * 2304 + 2304 + (64 + 5 * 16) * 5
    assert part.quantized_layers == 6
    assert part.notes == (
        "1 layer(s) with in_features 8 not a multiple of group 16: torchao fails to load them",
    )
    wide = {"backend": "torchao", "kwargs": {"quant_type": {
        "name": "Int8WeightOnlyConfig", "group_size": 64}}}  # fmt: skip
    (part,) = estimate(_plan(folder, mapping={"unet": wide})).parts.values()
    assert part.bytes == BF16 and part.quantized_layers == 0
    assert part.notes == (  # linear_1 has 8 inputs; linear_2 and the five time_emb_proj 32
        "1 layer(s) with in_features 8 not a multiple of group 64: torchao fails to load them",
        "6 layer(s) with in_features 32 not a multiple of group 64: torchao fails to load them",
    )
    int4 = {"backend": "torchao", "kwargs": {"quant_type": {
        "name": "Int4WeightOnlyConfig", "group_size": 32}}}  # fmt: skip
    (part,) = estimate(_plan(folder, mapping={"unet": int4})).parts.values()
    # int4: linear_1 (8 inputs) is left unquantized; the rest packed two to a byte with a
    # bf16 scale and zero per group of 32: linear_2 32 groups, each time_emb_proj 8
    assert part.bytes == BF16 - 2 * 2304 + 2304 // 2 + (32 + 5 * 8) * 2 * 2
    assert part.notes == (
        "1 layer(s) with in_features 8 not a multiple of group 32: torchao leaves them unquantized",
    )


def test_a_shipped_stand_in_part_says_it_is_approximate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_ddpm(tmp_path / "org--ddpm", {**UNET, "_qconf_stand_in": "a guess"})
    monkeypatch.setattr(snapshots, "snapshots_root", lambda: tmp_path)
    (part,) = estimate(_plan("org/ddpm")).parts.values()
    assert part.notes == ("approximate: a guess",) and part.bytes == BF16
    (part,) = estimate(_plan("org/ddpm"), tmp_path / "org--ddpm").parts.values()
    assert part.notes == ("approximate: a guess",)
    write_ddpm(folder, {**UNET, "_qconf_stand_in": 3})  # only a text is a note
    (part,) = estimate(_plan("org/ddpm")).parts.values()
    assert part.notes == ()


def test_a_stand_in_note_outside_the_snapshots_is_not_believed(tmp_path: Path) -> None:
    folder = write_ddpm(tmp_path / "ddpm", {**UNET, "_qconf_stand_in": "a guess"})
    (part,) = estimate(_plan(folder)).parts.values()
    assert part.notes == ()


def test_a_part_saved_with_a_quantization_config_loads_that_not_the_plan(tmp_path: Path) -> None:
    saved = {**UNET, "quantization_config": {"quant_method": "quanto", "weights_dtype": "int8"}}
    folder = write_ddpm(tmp_path / "ddpm", saved)
    (part,) = estimate(_plan(folder)).parts.values()
    assert part.notes == (
        "config.json holds a quantization_config: the library loads that, not the plan",
    )
    # no safetensors header to read the saved bytes from: priced by the saved entry (quanto
    # int8: int8 weights, a bf16 scale per row, two bf16 module scalars a layer)
    assert part.backend == "quanto"
    assert part.bytes == BF16 - 2 * 2560 + 2560 + 104 * 2 + 7 * 2 * 2


# --- checkpoint shapes ------------------------------------------------------------------------


def _with_weights(folder: Path, tensors: dict[str, Any]) -> Path:
    from safetensors.torch import save_file

    save_file(tensors, str(folder / "unet" / "diffusion_pytorch_model.safetensors"))
    return folder


def test_checkpoint_shapes_win_over_the_config_and_are_said(tmp_path: Path) -> None:
    folder = write_ddpm(tmp_path / "ddpm")
    _with_weights(folder, {"conv_in.weight": torch.zeros(16, 3, 3, 3)})
    (part,) = estimate(_plan(folder)).parts.values()
    assert part.from_weights
    assert part.params == PARAMS + 8 * 27 and part.bytes == BF16 + 2 * 8 * 27
    assert part.notes == (
        "conv_in.weight: checkpoint shape (16, 3, 3, 3) != config's (8, 3, 3, 3)",
    )
    _with_weights(folder, {"conv_in.weight": torch.zeros(8, 3, 3, 3)})
    (part,) = estimate(_plan(folder)).parts.values()
    assert part.from_weights and part.notes == () and part.bytes == BF16


@pytest.mark.parametrize(
    "shape",
    [(8, 3, 9), (8, 3, 3, 0), (2**31, 2**31, 3, 3)],
    ids=["another-rank", "a-zero", "too-large"],
)
def test_a_checkpoint_shape_that_cannot_be_the_tensor_is_refused(
    shape: tuple[int, ...], tmp_path: Path
) -> None:
    from qconf.estimate.core import _shape

    built = torch.empty(8, 3, 3, 3, device="meta")
    with pytest.raises(ModelSourceError) as caught:
        _shape(shape, built, tmp_path / "unet", "conv_in.weight")
    (problem,) = caught.value.problems
    assert problem.where == f"{tmp_path / 'unet'} (*.safetensors)"
    assert problem.what == (
        f"tensor 'conv_in.weight' has shape {list(shape)[:8]} in its header, which cannot be "
        "the [8, 3, 3, 3] its config.json builds"
    )
    assert problem.fix == (
        "re-save the part, or estimate from config.json alone (move the .safetensors files away)"
    )


def test_checkpoint_shapes_are_taken_when_they_can_be_the_tensor(tmp_path: Path) -> None:
    from qconf.estimate.core import _shape

    built = torch.empty(8, 0, 3, device="meta")
    assert _shape(None, built, tmp_path, "k") == (8, 0, 3)
    assert _shape((8, 0, 3), built, tmp_path, "k") == (8, 0, 3)
    assert _shape((4, 0, 5), built, tmp_path, "k") == (4, 0, 5)  # a zero where the module has one
    assert _shape((1, 0, 1), built, tmp_path, "k") == (1, 0, 1)
    from qconf.source.limits import MAX_IMPLIED_PARAMS

    wide = torch.empty(8, 3, device="meta")
    assert _shape((MAX_IMPLIED_PARAMS, 1), wide, tmp_path, "k") == (MAX_IMPLIED_PARAMS, 1)
    with pytest.raises(ModelSourceError):
        _shape((MAX_IMPLIED_PARAMS + 1, 1), wide, tmp_path, "k")
    nine = torch.empty(*[2] * 9, device="meta")
    with pytest.raises(ModelSourceError, match=r"has shape \[3, 3, 3, 3, 3, 3, 3, 3\] in its"):
        _shape((3,) * 8 + (0,), nine, tmp_path, "k")
    with pytest.raises(ModelSourceError):
        _shape((True, 0, 3), built, tmp_path, "k")  # a bool is no size


def test_a_checkpoint_shape_refused_names_the_part_folder_and_tensor(tmp_path: Path) -> None:
    folder = write_ddpm(tmp_path / "ddpm")
    _with_weights(folder, {"conv_in.weight": torch.zeros(8, 3, 9)})
    with pytest.raises(ModelSourceError) as caught:
        estimate(_plan(folder))
    (problem,) = caught.value.problems
    assert problem.where == f"{folder / 'unet'} (*.safetensors)"
    assert problem.what.startswith("tensor 'conv_in.weight' has shape [8, 3, 9]")


def test_an_unknown_part_entry_and_a_bad_source_are_plan_errors(tmp_path: Path) -> None:
    with pytest.raises(QconfError):
        estimate(_plan(write_ddpm(tmp_path / "ddpm")), tmp_path / "nothing")
    with pytest.raises(PlanError):
        estimate(_plan(write_ddpm(tmp_path / "ddpm")), tmp_path / "ddpm" / "model_index.json")


CLIP_TEXT = {"model_type": "clip_text_model", "vocab_size": 10, "hidden_size": 4,
             "intermediate_size": 6, "num_hidden_layers": 1, "num_attention_heads": 2,
             "max_position_embeddings": 5, "projection_dim": 3}  # fmt: skip


def test_a_transformers_part_is_quantized_but_for_its_skip_list(tmp_path: Path) -> None:
    """The CLIP text part of test_a_transformers_part_is_built_in_its_load_dtype: 222
    parameters, 444 bytes in bf16 and its int64 position ids (5 x 8 bytes). torchao int8wo on its
    six Linear layers: q/k/v/out 4x4 (16 + 4 rows x 5 = 36 bytes, not 32), fc1 6x4 (24 + 30 = 54,
    not 48) and fc2 4x6 (24 + 20 = 44, not 48)."""
    from qconf.estimate.core import _estimate_part

    folder = write_ddpm(tmp_path / "ddpm")
    (folder / "te").mkdir()
    (folder / "te" / "config.json").write_text(json.dumps(CLIP_TEXT))

    def part(skip: list[str] | None = None, **kwargs: Any) -> Any:
        entry = {"backend": "torchao", "kwargs": {**INT8WO_KWARGS, **kwargs}, "skip": skip}
        plan = _plan(folder, mapping={"unet": entry}).resolve()
        te = plan.components["unet"].entry
        return _estimate_part(folder, "te", "transformers", "CLIPTextModel", te, "bfloat16")

    everything = part()
    assert (everything.params, everything.bytes_unquantized) == (222, 444 + 40)
    assert (everything.bytes, everything.quantized_layers) == (484 - 224 + 4 * 36 + 54 + 44, 6)
    # transformers matches a skip from the start of the name (a bare "fc1" would need the
    # parameter name to end in it)
    fc1 = part(modules_to_not_convert=["encoder.layers.0.mlp.fc1"])
    assert (fc1.bytes, fc1.quantized_layers) == (everything.bytes - 54 + 48, 5)
    skipped = part(skip=["encoder.layers.0.mlp.fc1"])  # on top of transformers' own skips
    assert (skipped.bytes, skipped.quantized_layers) == (fc1.bytes, 5)


def test_a_part_without_a_load_dtype_takes_its_backends_default(tmp_path: Path) -> None:
    from qconf.estimate.core import _estimate_part

    folder = write_ddpm(tmp_path / "ddpm")
    int8 = _plan(folder, mapping={"unet": "int8wo"}).resolve().components["unet"].entry
    found = _estimate_part(folder, "unet", "diffusers", "UNet2DModel", int8, None)
    assert found.bytes_unquantized == BF16 and found.bytes == INT8WO  # torchao: bfloat16
    plain = _estimate_part(folder, "unet", "diffusers", "UNet2DModel", None, None)
    assert plain.bytes == 4 * PARAMS and plain.load_peak_ratio == 1.0  # float32


def test_a_saved_quantization_config_without_an_entry_is_said(tmp_path: Path) -> None:
    from qconf.estimate.core import _estimate_part

    saved = {**UNET, "quantization_config": {"quant_method": "quanto", "weights_dtype": "int8"}}
    folder = write_ddpm(tmp_path / "ddpm", saved)
    found = _estimate_part(folder, "unet", "diffusers", "UNet2DModel", None, "bfloat16")
    assert (found.backend, found.bytes) == (None, BF16)
    assert found.notes == (
        "config.json holds a quantization_config: the library loads that, not the plan",
    )


def test_a_backend_without_a_byte_model_is_priced_unquantized_and_said(tmp_path: Path) -> None:
    folder = write_ddpm(tmp_path / "ddpm")
    modelopt = {"backend": "modelopt", "kwargs": {"quant_type": "FP8"}}
    (part,) = estimate(_plan(folder, mapping={"unet": modelopt})).parts.values()
    assert (part.backend, part.bytes, part.quantized_layers) == ("modelopt", BF16, 0)
    assert part.notes == ("modelopt has no byte model: priced as unquantized",)


def test_a_part_saved_pre_quantized_is_priced_from_its_header(tmp_path: Path) -> None:
    saved = {**UNET, "quantization_config": {"quant_method": "sdnq", "weights_dtype": "int8"}}
    folder = write_ddpm(tmp_path / "ddpm", saved)
    _with_weights(folder, {
        "time_embedding.linear_1.weight": torch.zeros(32, 8, dtype=torch.int8),
        "time_embedding.linear_1.scale": torch.zeros(32, 1, dtype=torch.bfloat16),
        "conv_in.weight": torch.zeros(16, 3, 3, 3, dtype=torch.bfloat16),
    })  # fmt: skip
    (part,) = estimate(_plan(folder)).parts.values()
    # sdnq reloads the int8 codes as stored and their scale in float32 (diffusers, whatever it
    # was stored in); every other
    # float in the load dtype: 256 + 32 * 4 + 16 * 27 * 2. The header's shapes are the saved
    # tensors', not the module's: no shape note, the parameters counted off the config
    assert (part.bytes, part.quantized_layers) == (256 + 128 + 864, 1)
    assert part.notes[0] == "saved pre-quantized: bytes from its safetensors header"
    assert not any("checkpoint shape" in note for note in part.notes)
    assert (part.params, part.bytes_unquantized, part.from_weights) == (PARAMS, BF16, True)


def test_the_sub_models_of_a_transformers_part_build_in_its_dtype_too(tmp_path: Path) -> None:
    text = {k: v for k, v in CLIP_TEXT.items() if k != "model_type"}
    vision = {"hidden_size": 4, "intermediate_size": 6, "num_hidden_layers": 1,
              "num_attention_heads": 2, "image_size": 4, "patch_size": 2}  # fmt: skip
    config = {"model_type": "clip", "text_config": text, "vision_config": vision,
              "projection_dim": 3}  # fmt: skip
    (tmp_path / "clip").mkdir()
    (tmp_path / "clip" / "config.json").write_text(json.dumps(config))
    _, model = sources.meta_model(tmp_path, "clip", "transformers", "CLIPModel", torch.float16)
    assert model.config.dtype == torch.float16
    assert model.config.text_config.dtype == torch.float16
    assert model.config.vision_config.dtype == torch.float16
    assert {p.dtype for p in model.parameters()} == {torch.float16}


def test_a_part_from_a_pre_quantized_file_is_priced_from_the_file(tmp_path: Path) -> None:
    """A GGUF file of float tensors alone: 10 + 6 values, each in the load dtype."""
    from qconf.backends import REGISTRY
    from qconf.estimate.core import _estimate_part

    gguf = pytest.importorskip("gguf")
    np = pytest.importorskip("numpy")
    path = tmp_path / "unet.gguf"
    writer = gguf.GGUFWriter(str(path), "flux")
    writer.add_tensor("a.weight", np.zeros(10, dtype=np.float32))
    writer.add_tensor("b.weight", np.zeros(6, dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    entry = REGISTRY["gguf"].entry.model_validate({"backend": "gguf", "file": str(path)})
    folder = write_ddpm(tmp_path / "ddpm")
    for dtype, size in (("bfloat16", 2), ("float32", 4)):
        found = _estimate_part(folder, "unet", "diffusers", "UNet2DModel", entry, dtype)
        assert found.bytes == 16 * size and found.bytes_unquantized == PARAMS * size
        assert found.notes[-1].startswith("gguf: bytes from the file's tensor table")
        assert found.quantized_layers == 0  # float tensors only
