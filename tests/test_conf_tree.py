"""Every option of every config group composes and validates; the tree ships in the wheel."""

from __future__ import annotations

from pathlib import Path

import pytest

import qconf
from qconf.plan.conftree import conf_dir

TREE = conf_dir()
OPTIONS = sorted(
    (path.parent.name, path.stem) for path in TREE.glob("*/**/*.yaml") if path.parent != TREE
)


def test_tree_has_the_groups_and_options_the_product_promises() -> None:
    names = {group: {o for g, o in OPTIONS if g == group} for group, _ in OPTIONS}
    assert {"nf4", "fp4", "bnb-int8", "int8wo", "int8dq", "float8wo", "int4wo"} <= names["backend"]
    assert {"quanto-int8", "quanto-int4", "quanto-float8"} <= names["backend"]
    assert {"tiny-flux", "tiny-sd", "tiny-sd3"} <= names["model"]
    assert {"flux-nf4", "flux-int8wo"} <= names["preset"]


@pytest.mark.parametrize(("group", "option"), OPTIONS, ids=[f"{g}={o}" for g, o in OPTIONS])
def test_every_option_composes_and_validates(group: str, option: str) -> None:
    if group == "backend":
        # a backend option is used per part; the transformer exists in tiny-flux
        overrides = [f"quant.mapping.transformer={option}"]
    else:
        overrides = [f"{group}={option}"]
    plan = qconf.validate(qconf.compose(overrides))
    resolved = plan.resolve()
    assert resolved.components, "a plan resolves to at least one weight-bearing part"
    if group == "backend":
        assert resolved.components["transformer"] is not None


def test_model_source_field_names_the_same_pipeline_as_the_group_choice() -> None:
    by_field = qconf.validate(qconf.compose(["model.source=tiny-sd"])).resolve().to_json()
    by_group = qconf.validate(qconf.compose(["model=tiny-sd"])).resolve().to_json()
    assert by_field == by_group
    assert by_field["model"]["pipeline"] == "StableDiffusionPipeline"


def test_flux_nf4_preset_quantizes_transformer_and_t5_only() -> None:
    components = (
        qconf.validate(qconf.compose(["preset=flux-nf4"])).resolve().to_json()["components"]
    )
    for part in ("transformer", "text_encoder_2"):
        assert components[part]["backend"] == "bitsandbytes_4bit"
        assert components[part]["kwargs"]["bnb_4bit_quant_type"] == "nf4"
        assert components[part]["kwargs"]["bnb_4bit_compute_dtype"] == "bfloat16"
    assert components["vae"] is None and components["text_encoder"] is None


def test_a_per_part_override_replaces_the_preset_entry() -> None:
    """No stale bitsandbytes kwargs survive a switch to torchao (dicts would merge in Hydra)."""
    plan = qconf.validate(qconf.compose(["preset=flux-nf4", "quant.mapping.transformer=int8wo"]))
    transformer = plan.resolve().to_json()["components"]["transformer"]
    assert transformer["kwargs"] == {"quant_type": {"name": "Int8WeightOnlyConfig"}}


def test_kwargs_one_level_deeper_after_choosing_an_option() -> None:
    plan = qconf.validate(
        qconf.compose(
            [
                "quant.mapping.transformer=int4wo",
                "quant.mapping.transformer.kwargs.quant_type.group_size=64",
            ]
        )
    )
    kwargs = plan.resolve().to_json()["components"]["transformer"]["kwargs"]
    assert kwargs["quant_type"] == {
        "name": "IntxWeightOnlyConfig",
        "weight_dtype": "int4",
        "group_size": 64,
    }


def test_null_leaves_a_part_unquantized() -> None:
    plan = qconf.validate(qconf.compose(["preset=flux-nf4", "quant.mapping.text_encoder_2=null"]))
    assert plan.resolve().to_json()["components"]["text_encoder_2"] is None


def test_user_config_dir_adds_presets_and_backend_options(tmp_path: Path) -> None:
    (tmp_path / "preset").mkdir()
    (tmp_path / "backend").mkdir()
    (tmp_path / "backend" / "int8-g64.yaml").write_text(
        "backend: torchao\nkwargs:\n  quant_type:\n"
        "    name: Int8WeightOnlyConfig\n    group_size: 64\n"
    )
    (tmp_path / "preset" / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - /backend@quant.mapping.transformer: int8-g64\n"
    )
    plan = qconf.validate(qconf.compose(["preset=mine"], config_dir=tmp_path))
    kwargs = plan.resolve().to_json()["components"]["transformer"]["kwargs"]
    assert kwargs["quant_type"]["group_size"] == 64
    plan = qconf.validate(
        qconf.compose(["quant.mapping.vae=int8-g64"], config_dir=tmp_path), config_dir=tmp_path
    )
    assert plan.resolve().components["vae"] is not None


def test_conf_tree_ships_in_the_wheel(tmp_path: Path) -> None:
    import subprocess
    import sys
    import zipfile

    root = Path(__file__).resolve().parents[1]
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(root),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("qconf-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for group, option in OPTIONS:
        assert f"qconf/conf/{group}/{option}.yaml" in names
    assert "qconf/conf/qconf.yaml" in names
    assert "qconf/data/pipelines.json" in names
