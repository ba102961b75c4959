"""Forms users type, as Hydra and diffusers users expect them to work: whole-dict overrides,
--config-dir first everywhere, `qconf run` pre-checks (-cn, -m, --config-dir=DIR), plans as
files, saving knobs, adapters."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import qconf
from qconf.cli.main import main

QCONF = [sys.executable, "-m", "qconf.cli.main"]
REPO = Path(__file__).resolve().parent.parent


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*QCONF, *args], capture_output=True, text=True, cwd=cwd,
                            env=os.environ.copy(), timeout=300)  # fmt: skip
    assert "Traceback" not in result.stderr, result.stderr
    return result


def show_json(*overrides: str) -> dict:
    result = cli("show", "--json", *overrides)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def kwargs_of(plan: dict) -> dict:
    return {part: entry and entry["kwargs"] for part, entry in plan["components"].items()}


# --- whole-dict overrides replace ---


def test_whole_mapping_assignment_replaces_the_preset_mapping() -> None:
    plan = show_json("preset=flux-nf4", "model=tiny-flux", "quant.mapping={transformer:int8wo}")
    assert kwargs_of(plan) == {
        "text_encoder": None,
        "text_encoder_2": None,
        "transformer": {"quant_type": {"name": "Int8WeightOnlyConfig"}},
        "vae": None,
    }


def test_whole_kwargs_assignment_in_global_mode() -> None:
    plan = show_json(
        "quant.backend=bitsandbytes_8bit",
        "quant.kwargs={load_in_8bit:true,llm_int8_threshold:5.0}",
        "quant.components=[text_encoder]",
    )
    assert plan["components"]["text_encoder"]["kwargs"] == {
        "load_in_8bit": True,
        "llm_int8_threshold": 5.0,
    }


def test_empty_mapping_clears_a_preset() -> None:
    plan = show_json("preset=flux-int8wo", "model=tiny-flux", "quant.mapping={}")
    assert all(entry is None for entry in plan["components"].values())


# --- --config-dir first, for every command ---


@pytest.fixture()
def shadowing_dir(tmp_path: Path) -> Path:
    """A user tree whose `int8wo` option (a built-in name) is really float8."""
    (tmp_path / "backend").mkdir()
    (tmp_path / "backend" / "int8wo.yaml").write_text(
        "backend: torchao\nkwargs:\n  quant_type: {name: Float8WeightOnlyConfig}\n"
    )
    (tmp_path / "preset").mkdir()
    (tmp_path / "preset" / "flux-int8wo.yaml").write_text(
        "# @package _global_\ndefaults:\n  - /backend@quant.mapping.transformer: int8wo\n"
    )
    return tmp_path


def test_config_dir_shadows_built_ins_in_show_validate_and_list(shadowing_dir: Path) -> None:
    for args in (
        ["--config-dir", str(shadowing_dir), "quant.mapping.transformer=int8wo"],
        [f"--config-dir={shadowing_dir}", "preset=flux-int8wo", "model=tiny-flux"],
    ):
        plan = show_json(*args)
        assert plan["components"]["transformer"]["kwargs"]["quant_type"]["name"] == (
            "Float8WeightOnlyConfig"
        )
        assert plan["components"]["text_encoder_2"] is None  # the user's preset, not qconf's
    listed = cli("list", "options", "--config-dir", str(shadowing_dir))
    assert listed.returncode == 0
    row = next(line for line in listed.stdout.splitlines() if re.search(r"\bint8wo\b", line))
    assert "Float8" in row


def test_run_uses_the_config_dir_first_too(shadowing_dir: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    result = cli("run", f"--config-dir={shadowing_dir}", "quant.mapping.transformer=int8wo",
                 "run.steps=1", cwd=work)  # fmt: skip
    assert result.returncode == 0, result.stderr
    (plan_file,) = work.glob("outputs/*/*/plan.yaml")
    plan = yaml.safe_load(plan_file.read_text())
    assert plan["components"]["transformer"]["kwargs"]["quant_type"]["name"] == (
        "Float8WeightOnlyConfig"
    )


# --- qconf run pre-checks ---


def test_run_checks_every_sweep_job_before_launching_any(tmp_path: Path) -> None:
    result = cli("run", "-m", "quant.mapping.transformer=int8wo,nf5", cwd=tmp_path)
    assert result.returncode == 2
    assert "job 1 (quant.mapping.transformer=nf5)" in result.stderr
    assert "did you mean 'nf4'" in result.stderr
    assert list(tmp_path.iterdir()) == []  # job 0 never ran


def test_run_checks_the_config_named_by_cn(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "mine.yaml").write_text(
        "defaults:\n  - qconf\n  - _self_\nquant:\n  mapping:\n    tokenizer: int8wo\n"
    )
    work = tmp_path / "work"
    work.mkdir()
    result = cli("run", "--config-dir", str(conf), "-cn", "mine", cwd=work)
    assert result.returncode == 2
    assert result.stderr.startswith("error: quant.mapping.tokenizer:")
    assert list(work.iterdir()) == []


def test_a_user_error_inside_a_job_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = cli("run", "model.source=nobody/not-in-cache", "model.pipeline=FluxPipeline",
                 cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2
    assert [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert not list(tmp_path.glob("outputs/*/*/image.png"))


def test_a_sweep_runs_each_checked_job(tmp_path: Path) -> None:
    result = cli("run", "-m", "quant.mapping.transformer=int8wo,quanto-int8", "run.steps=1",
                 cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    plans = sorted(tmp_path.glob("multirun/*/*/*/plan.yaml"))
    backends = [yaml.safe_load(p.read_text())["components"]["transformer"]["backend"]
                for p in plans]  # fmt: skip
    assert backends == ["torchao", "quanto"]


# --- plans as files ---


def test_show_yaml_round_trips_through_plan_files(tmp_path: Path) -> None:
    overrides = [
        "preset=flux-int8wo",
        "model=tiny-flux",
        "quant.mapping.transformer.skip=[x_embedder]",
    ]
    shown = cli("show", "--yaml", *overrides)
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(shown.stdout)
    assert show_json("--plan", str(plan_file)) == show_json(*overrides)
    assert cli("show", "--yaml", "--plan", str(plan_file)).stdout == shown.stdout
    # the command line goes on top of the file
    changed = show_json("--plan", str(plan_file), "quant.mapping.text_encoder_2=null")
    assert changed["components"]["text_encoder_2"] is None
    assert main(["validate", "--plan", str(plan_file)]) == 0
    assert main(["estimate", "--plan", str(plan_file)]) == 0


def test_inspect_output_is_a_plan_file(tmp_path: Path) -> None:
    saved = tmp_path / "saved"
    qconf.load(qconf.compose(["quant.mapping.transformer=int8wo"]), save=saved)
    inspected = cli("inspect", str(saved))
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(inspected.stdout)
    assert main(["validate", "--plan", str(plan_file)]) == 0
    loaded = qconf.load(qconf.compose(plan_file=plan_file))
    assert type(loaded.pipeline.transformer.proj_out.weight).__name__ != "Parameter"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[1, 2]\n", "a plan file is a mapping"),
        ("modle: {source: tiny-flux}\n", "'modle': not a plan section"),
        ("quant:\n  mapping:\n    1: int8wo\n", "not a key name"),
        ("model: [a]\n", "model: must be a mapping"),
        ("model: {source: [unclosed\n", "malformed YAML"),
    ],
)
def test_bad_plan_files_are_one_line(text: str, expected: str, tmp_path: Path) -> None:
    plan_file = tmp_path / "plan.yaml"
    plan_file.write_text(text)
    result = cli("validate", "--plan", str(plan_file))
    assert result.returncode == 2 and expected in result.stderr, result.stderr


def test_a_missing_plan_file_is_one_line() -> None:
    result = cli("show", "--plan", "~nosuchuser/plan.yaml")
    assert result.returncode == 2 and result.stderr.startswith("error: --plan:")


# --- saving knobs, adapters, device maps ---


def test_max_shard_size_splits_saved_parts_and_reloads(tmp_path: Path) -> None:
    saved = tmp_path / "saved"
    result = cli("load", "quant.mapping.transformer=int8wo", "--save", str(saved),
                 "--max-shard-size", "100KB")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert (saved / "transformer" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    assert cli("load", f"model.source={saved}").returncode == 0
    bad = cli("load", "--save", str(tmp_path / "other"), "--max-shard-size", "lots")
    assert bad.returncode == 2 and "--max-shard-size" in bad.stderr
    assert not (tmp_path / "other").exists()


def test_saving_a_pipeline_with_adapters_is_refused(tmp_path: Path) -> None:
    from peft import LoraConfig

    loaded = qconf.load(qconf.compose(["quant.mapping.transformer=int8wo"]))
    loaded.pipeline.transformer.add_adapter(
        LoraConfig(r=2, lora_alpha=2, target_modules=["to_q", "to_k"])
    )
    with pytest.raises(qconf.PlanError, match="transformer: carries LoRA/peft adapters"):
        qconf.save(loaded, tmp_path / "saved")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(Path("/dev/nvidia0").exists(), reason="a GPU machine can place parts")
def test_device_map_is_validated_and_needs_a_gpu_for_balanced() -> None:
    bad = cli("validate", "model.device_map=gpu")
    assert bad.returncode == 2 and "model.device_map" in bad.stderr
    balanced = cli("validate", "model.device_map=balanced")
    assert balanced.returncode == 2 and "CUDA" in balanced.stderr
    assert cli("validate", "model.device_map=cpu").returncode == 0


# --- packaging and examples ---


def test_conf_tree_is_a_hydra_package() -> None:
    from hydra import compose, initialize_config_module

    with initialize_config_module("qconf.conf", version_base=None):
        cfg = compose("qconf", overrides=["preset=flux-nf4"])
    assert cfg.model.pipeline == "FluxPipeline"


def test_example_app_runs_its_documented_overrides(tmp_path: Path) -> None:
    script = REPO / "examples" / "hydra_app.py"
    documented = re.findall(r"^\s+python examples/hydra_app.py(.*?)(?:#.*)?$",
                            script.read_text(), flags=re.M)  # fmt: skip
    assert len(documented) >= 3
    for args in documented:
        command = [sys.executable, str(script), *args.split()]
        result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
        assert result.returncode == 0, (args, result.stderr[-2000:])
        # stdout is the app's own line; the libraries' import-time noise is not on it
        assert result.stdout.count("\n") == 1 and "transformer weight is" in result.stdout
        assert "Failed to load" not in result.stdout + result.stderr
    assert not (tmp_path / "image.png").exists()  # the image goes to Hydra's run folder
    assert len(list(tmp_path.glob("outputs/*/*/image.png"))) == len(documented)


def test_train_example_trains_saves_reloads_and_refuses_int8dq(tmp_path: Path) -> None:
    pytest.importorskip("peft")
    script = str(REPO / "examples" / "train_lora.py")
    ok = subprocess.run([sys.executable, script, "preset=flux-int8wo", "model=tiny-flux",
                         "quant.mapping.text_encoder_2=null", "train.steps=3"],
                        capture_output=True, text=True, cwd=tmp_path, timeout=300)  # fmt: skip
    assert ok.returncode == 0, ok.stderr[-3000:]
    (adapter,) = tmp_path.glob("outputs/*/*/lora/pytorch_lora_weights.safetensors")
    assert (adapter.parent.parent / "image.png").is_file()
    losses = [float(x) for x in re.findall(r"step \d+ loss ([\d.]+)", ok.stdout + ok.stderr)]
    assert len(losses) == 2 and losses[1] < losses[0]  # one fixed example: it learns
    # a per-part override is typed as on `qconf run` (no `+`, though the mapping is empty)
    refused = subprocess.run([sys.executable, script, "quant.mapping.transformer=int8dq"],
                             capture_output=True, text=True, cwd=tmp_path, timeout=300)  # fmt: skip
    assert refused.returncode == 2
    assert "cannot train LoRA on 'transformer'" in refused.stderr
    assert "Traceback" not in refused.stderr
