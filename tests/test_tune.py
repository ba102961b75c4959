"""`qconf sensitivity` and `qconf tune` on the tiny pipelines, for real: parts quantized alone and
measured, the cache reused, the tuned preset written, loaded and run, and judged with
`qconf compare` against the built-in presets that fit the same budget."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

QCONF = [sys.executable, "-m", "qconf.cli.main"]
FAST = ["run.steps=1"]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*QCONF, *args], capture_output=True, text=True, cwd=cwd,
                            env=os.environ.copy(), timeout=900)  # fmt: skip
    assert "Traceback" not in result.stderr, result.stderr
    return result


def test_sensitivity_measures_each_part_alone_and_caches(tmp_path: Path) -> None:
    args = ["sensitivity", "model=tiny-flux", *FAST, "--options", "int8wo,int4wo,nf4",
            "--parts", "transformer,text_encoder_2", "--out", "out"]  # fmt: skip
    first = cli(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    cells = json.loads((tmp_path / "out" / "sensitivity.json").read_text())["cells"]
    by = {(c["part"], c["option"]): c for c in cells}
    assert len(cells) == 6
    # bitsandbytes cannot run on the diffusers transformer without a GPU; on T5 it runs on CPU.
    assert by[("transformer", "nf4")]["status"] == "not here"
    assert by[("text_encoder_2", "nf4")]["status"] == "ok"
    for part in ("transformer", "text_encoder_2"):
        eight, four = by[(part, "int8wo")], by[(part, "int4wo")]
        assert 0 < eight["part_rel_error"] < four["part_rel_error"]  # the part's own output
        assert eight["part_cosine"] > four["part_cosine"]
        assert math.isfinite(eight["image_psnr"]) and eight["image_ssim"] < 1.0
        assert eight["bytes"] < eight["bytes_unquantized"]
    transformer = by[("transformer", "int4wo")]
    assert transformer["image_psnr"] < by[("transformer", "int8wo")]["image_psnr"]
    assert (tmp_path / "out" / "sensitivity.png").stat().st_size > 5000
    # Layer level, for the largest part: the linearized proxy ranks the measured deviation.
    layers = json.loads((tmp_path / "out" / "sensitivity.json").read_text())["layers"]
    assert [r["option"] for r in layers] == ["int8wo", "int4wo"]
    for ranking in layers:
        assert ranking["part"] == "transformer" and len(ranking["layers"]) == 30
        assert ranking["spearman_linearized"] > 0.8  # measured 0.98 on 8 layers (bench: 0.9+)
        assert len(ranking["proposed_skip"]) == 5
    again = cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("cached") == 5  # every cell that ran, none measured again
    assert json.loads((tmp_path / "out" / "sensitivity.json").read_text())["cells"] == cells


@pytest.mark.parametrize(("model", "budget", "family"), [
    ("tiny-flux", "1.9MiB", ["flux-int8wo", "flux-quanto-int8", "flux-float8wo"]),
    ("tiny-sd3", "2.45MiB", ["sd3-int8wo", "sd3-quanto-int8", "sd35-int8wo", "sd35-float8wo"]),
])  # fmt: skip
def test_tuned_preset_fits_runs_and_beats_the_fitting_presets(
    tmp_path: Path, model: str, budget: str, family: list[str]
) -> None:
    options = "int8wo,int4wo,quanto-int8,quanto-int4"
    tuned = cli("tune", f"budget={budget}", f"model={model}", *FAST, "--options", options,
                "--name", "mine", "--config-dir", "conf", cwd=tmp_path)  # fmt: skip
    assert tuned.returncode == 0, tuned.stderr
    preset = tmp_path / "conf" / "preset" / "mine.yaml"
    text = preset.read_text()
    assert text.startswith("# @package _global_\n# Tuned by `qconf tune`")
    # Fits by the estimator, as a preset of the user's config dir.
    estimate = cli("estimate", "--json", "--config-dir", "conf", "preset=mine", cwd=tmp_path)
    assert estimate.returncode == 0, estimate.stderr
    assert json.loads(estimate.stdout)["total_bytes"] <= _bytes(budget)
    # Measured independently: compare the tuned preset with the family's presets that fit.
    fitting = [p for p in family if _fits(p, model, budget, tmp_path)]
    assert fitting, "the test budget should let some built-in preset fit"
    compared = cli("compare", "--config-dir", "conf", f"model={model}", *FAST,
                   "preset=" + ",".join(["mine", *fitting]), "hydra.sweep.dir=cmp",
                   cwd=tmp_path)  # fmt: skip
    assert compared.returncode == 0, compared.stderr
    runs = {r["label"]: r for r in json.loads((tmp_path / "cmp" / "compare.json").read_text())
            ["runs"]}  # fmt: skip
    mine = runs["preset=mine"]
    assert mine["total_bytes"] <= _bytes(budget)  # measured after load too
    for name in fitting:
        assert mine["psnr"] >= runs[f"preset={name}"]["psnr"] - 1e-9, name
    # Re-running reuses the cache: nothing measured again, the same preset written.
    again = cli("tune", f"budget={budget}", f"model={model}", *FAST, "--options", options,
                "--name", "mine", "--config-dir", "conf", "--force", cwd=tmp_path)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "measured 0 part/option cells and ran 0 candidates" in again.stdout
    assert preset.read_text() == text


def test_a_budget_that_cannot_be_met_is_one_line(tmp_path: Path) -> None:
    result = cli("tune", "budget=100KiB", "model=tiny-flux", *FAST, "--options", "int8wo",
                 "--parts", "transformer", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "no plan fits; the smallest is" in result.stderr
    assert "quant.mapping.transformer=int8wo" in result.stderr
    assert not (tmp_path / "qconf-conf").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["model=tiny-flux"], "budget: missing"),
    (["budget=lots"], "is not a size"),
    (["budget=1GiB", "--name", "../evil"], "is not a preset name"),
    (["budget=1GiB", "--options", "int9wo"], "did you mean 'int8wo'"),
])  # fmt: skip
def test_tune_mistakes_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    result = cli("tune", *args, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert result.stderr.startswith("error: ")


def test_train_allows_only_trainable_options(tmp_path: Path) -> None:
    result = cli("tune", "budget=2.0MiB", "model=tiny-flux", *FAST, "--train", "--options",
                 "int8wo,int8dq", "--parts", "transformer", "--name", "t", "--measure", "1",
                 cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = yaml.safe_load((tmp_path / "qconf-conf" / "preset" / "t.yaml").read_text())
    assert "int8dq" not in data["quant"]["mapping"].values()  # cuts the gradient on diffusers
    validated = cli("validate", "--train", "--config-dir", "qconf-conf", "preset=t",
                    cwd=tmp_path)  # fmt: skip
    assert validated.returncode == 0, validated.stderr


def _bytes(text: str) -> int:
    from qconf.estimate.presets import parse_size

    return parse_size(text)


def _fits(preset: str, model: str, budget: str, cwd: Path) -> bool:
    result = cli("estimate", "--json", f"preset={preset}", f"model={model}", cwd=cwd)
    return result.returncode == 0 and json.loads(result.stdout)["total_bytes"] <= _bytes(budget)


@pytest.mark.gpu
def test_sensitivity_on_a_gpu_measures_bitsandbytes_on_the_transformer(tmp_path: Path) -> None:
    result = cli("sensitivity", "model=tiny-flux", "model.device_map=cuda", *FAST, "--options",
                 "nf4,int8wo", "--parts", "transformer", "--out", "out", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / "out" / "sensitivity.json").read_text())
    cells = {c["option"]: c for c in data["cells"]}
    assert cells["nf4"]["status"] == "ok" and cells["int8wo"]["status"] == "ok"
    assert cells["nf4"]["part_rel_error"] > cells["int8wo"]["part_rel_error"] > 0
    assert {r["option"] for r in data["layers"]} == {"nf4", "int8wo"}
