"""`qconf sensitivity` and `qconf tune` on the tiny pipelines, for real: parts quantized alone and
measured, the cache reused, the tuned preset written, loaded and run, and judged with
`qconf compare` against the built-in presets that fit the same budget and keep to the options.

The commands run in this process (qconf.cli.main.main, the code `qconf` runs) so each pays no
import of torch; `compare` is a Hydra app and runs as its own process. Each measuring command
runs once per module (fixtures) and several tests read its results; the session's QCONF_CACHE
shares the measured cells between them (the tune and train runs reuse sensitivity's)."""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

import qconf
from qconf.cli.main import main

FAST = ["run.steps=1"]
FLUX = ["model=tiny-flux", *FAST]


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def cli(*args: str, cwd: Path) -> Result:
    """`qconf ARGS` in `cwd`, in this process."""
    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(cwd)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            code = main(list(args))
    finally:
        os.chdir(here)
    return Result(code, out.getvalue(), err.getvalue())


def process(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "qconf.cli.main", *args], capture_output=True,
                            text=True, cwd=cwd, env=os.environ.copy(), timeout=900)  # fmt: skip
    assert "Traceback" not in result.stderr, result.stderr
    return result


def one_error_line(result: Result, message: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and message in lines[0], result.stderr


# --- sensitivity ------------------------------------------------------------------------------

SENSITIVITY = ["sensitivity", *FLUX, "--options", "int8wo,int4wo,nf4", "--parts",
               "transformer,text_encoder_2", "--out", "out"]  # fmt: skip


@pytest.fixture(scope="module")
def sensitivity(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Result, Result]:
    """The command run twice in one folder: measured, then every cell from the cache."""
    folder = tmp_path_factory.mktemp("sensitivity")
    first = cli(*SENSITIVITY, cwd=folder)
    data = (folder / "out" / "sensitivity.json").read_text() if first.returncode == 0 else ""
    again = cli(*SENSITIVITY, cwd=folder)
    (folder / "first.json").write_text(data)
    return folder, first, again


def test_sensitivity_measures_each_part_alone(sensitivity: tuple[Path, Result, Result]) -> None:
    folder, first, _ = sensitivity
    assert first.returncode == 0, first.stderr
    cells = json.loads((folder / "first.json").read_text())["cells"]
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
    assert (folder / "out" / "sensitivity.png").stat().st_size > 5000


def test_sensitivity_ranks_the_largest_parts_layers(
    sensitivity: tuple[Path, Result, Result],
) -> None:
    folder, first, _ = sensitivity
    assert first.returncode == 0, first.stderr
    layers = json.loads((folder / "first.json").read_text())["layers"]
    assert [r["option"] for r in layers] == ["int8wo", "int4wo"]
    for ranking in layers:
        assert ranking["part"] == "transformer" and len(ranking["layers"]) == 30
        assert ranking["spearman_linearized"] > 0.8  # measured 0.98 on 8 layers (bench: 0.9+)
        # torchao in diffusers: one full-name entry keeps one layer; the bytes are theirs
        assert len(ranking["proposed_skip"]) == len(ranking["proposed_skip_keeps"]) == 5
        kept = ranking["proposed_skip_keeps"]
        assert ranking["proposed_skip_bytes"] == sum(
            ranking["layers"][n]["bytes_saved"] for n in kept
        )
    assert "the skip keeps unquantized" in first.stdout


def test_sensitivity_again_measures_nothing(sensitivity: tuple[Path, Result, Result]) -> None:
    folder, _, again = sensitivity
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("cached") == 5  # every cell that ran, none measured again
    cells = json.loads((folder / "first.json").read_text())["cells"]
    assert json.loads((folder / "out" / "sensitivity.json").read_text())["cells"] == cells


def test_sensitivity_with_nothing_runnable_is_one_line(tmp_path: Path) -> None:
    result = cli("sensitivity", *FLUX, "--options", "nf4", "--parts", "transformer", "--out",
                 "out", cwd=tmp_path)  # fmt: skip
    one_error_line(result, "nothing to measure: no option runs here (nf4 on transformer")
    assert not (tmp_path / "out").exists()


def test_ctrl_c_says_what_finished_and_the_same_command_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qconf.sensitivity import parts

    monkeypatch.setenv("QCONF_CACHE", str(tmp_path / "cache"))  # nothing measured yet
    real, calls = parts._measure, []

    def second_is_interrupted(*args: object) -> None:
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a Ctrl-C in the middle of the second cell
        real(*args)  # type: ignore[arg-type]

    args = ["sensitivity", *FLUX, "--options", "int8wo,quanto-int8", "--parts",
            "text_encoder", "--layers", "0", "--out", "out"]  # fmt: skip
    monkeypatch.setattr(parts, "_measure", second_is_interrupted)
    stopped = cli(*args, cwd=tmp_path)
    assert stopped.returncode == 130
    lines = [line for line in stopped.stderr.splitlines() if line.startswith("interrupted: ")]
    assert len(lines) == 1, stopped.stderr
    assert lines[0].startswith("interrupted: qconf sensitivity finished 1 part/option cells")
    assert "run the same command again to resume" in lines[0]
    monkeypatch.setattr(parts, "_measure", real)
    resumed = cli(*args, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.count("cached") == 1  # the finished cell; only the other is measured


# --- tune -------------------------------------------------------------------------------------

OPTIONS = "int8wo,int4wo,quanto-int8,quanto-int4"
# model, budget, the parts the family's presets quantize, the presets inside OPTIONS, and one
# that fits but uses an option outside them (not a candidate).
MODELS = {
    "tiny-flux": ("1.9MiB", "transformer,text_encoder_2", ["flux-int8wo", "flux-quanto-int8"],
                  "flux-float8wo"),
    "tiny-sd3": ("2.45MiB", "transformer,text_encoder_3",
                 ["sd3-int8wo", "sd3-quanto-int8", "sd35-int8wo"], "sd35-float8wo"),
}  # fmt: skip


@dataclass
class Tuned:
    folder: Path
    model: str
    first: Result
    again: Result
    preset_text: str


@pytest.fixture(scope="module", params=sorted(MODELS))
def tuned(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Tuned:
    model = request.param
    budget, parts, _, _ = MODELS[model]
    folder = tmp_path_factory.mktemp(f"tune-{model}")
    args = ["tune", "--budget", budget, f"model={model}", *FAST, "--options", OPTIONS,
            "--parts", parts, "--measure", "2", "--name", "mine",
            "--config-dir", "conf"]  # fmt: skip
    first = cli(*args, cwd=folder)
    preset = folder / "conf" / "preset" / "mine.yaml"
    text = preset.read_text() if preset.exists() else ""
    again = cli(*args, "--force", cwd=folder)
    return Tuned(folder, model, first, again, text)


def test_tuned_preset_fits_and_keeps_to_the_options(tuned: Tuned) -> None:
    assert tuned.first.returncode == 0, tuned.first.stderr
    budget, parts, _, outside = MODELS[tuned.model]
    assert tuned.preset_text.startswith("# @package _global_\n# Tuned by `qconf tune`")
    mapping = yaml.safe_load(tuned.preset_text)["quant"]["mapping"]
    assert set(mapping) <= set(parts.split(","))
    assert all(isinstance(v, dict) or v in OPTIONS.split(",") for v in mapping.values())
    # A fitting preset that uses another option is named as left out, never a candidate.
    assert f"{outside} (float8wo on transformer, not in --options)" in tuned.first.stderr
    assert f"preset {outside}" not in tuned.first.stdout
    assert "predicted" not in tuned.first.stdout  # no forecast column (bench_tune_order.py)
    # Fits by the estimator, as a preset of the user's config dir.
    estimate = cli("estimate", "--json", "--config-dir", "conf", "preset=mine", cwd=tuned.folder)
    assert estimate.returncode == 0, estimate.stderr
    assert json.loads(estimate.stdout)["total_bytes"] <= _bytes(budget)


def test_tuned_preset_runs_and_beats_the_fitting_presets(tuned: Tuned) -> None:
    assert tuned.first.returncode == 0, tuned.first.stderr
    budget, _, family, _ = MODELS[tuned.model]
    fitting = [p for p in family if _fits(p, tuned.model, budget)]
    assert fitting, "the test budget should let some built-in preset fit"
    # Measured independently: compare the tuned preset with the family's presets that fit.
    compared = process("compare", "--config-dir", "conf", f"model={tuned.model}", *FAST,
                       "preset=" + ",".join(["mine", *fitting]), "hydra.sweep.dir=cmp",
                       cwd=tuned.folder)  # fmt: skip
    assert compared.returncode == 0, compared.stderr
    runs = {r["label"]: r for r in json.loads((tuned.folder / "cmp" / "compare.json")
                                              .read_text())["runs"]}  # fmt: skip
    mine = runs["preset=mine"]
    assert mine["total_bytes"] <= _bytes(budget)  # measured after load too
    for name in fitting:
        assert mine["psnr"] >= runs[f"preset={name}"]["psnr"] - 1e-9, name


def test_tune_again_reuses_the_cache(tuned: Tuned) -> None:
    assert tuned.again.returncode == 0, tuned.again.stderr
    assert "measured 0 part/option cells and ran 0 candidates" in tuned.again.stdout
    assert (tuned.folder / "conf" / "preset" / "mine.yaml").read_text() == tuned.preset_text


def test_a_budget_that_cannot_be_met_is_one_line(tmp_path: Path) -> None:
    result = cli("tune", "budget=100KiB", *FLUX, "--options", "int8wo", "--parts",
                 "transformer", cwd=tmp_path)  # fmt: skip
    one_error_line(result, "no plan fits; the smallest is")
    assert "quant.mapping.transformer=int8wo" in result.stderr
    assert not (tmp_path / "qconf-conf").exists()


def test_tune_with_nothing_runnable_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    # bitsandbytes needs a GPU for the diffusers transformer; flux-quanto-int8 (and every other
    # preset quantizing parts or options outside these) is no way out
    result = cli("tune", "--budget", "64GiB", *FLUX, "--options", "nf4", "--parts",
                 "transformer", cwd=tmp_path)  # fmt: skip
    one_error_line(result, "nothing to measure: no option runs here")
    assert not (tmp_path / "qconf-conf").exists()


@pytest.mark.parametrize(("args", "message"), [
    (["model=tiny-flux"], "--budget: missing"),
    (["budget=lots"], "is not a size"),
    (["--budget", "1G", "budget=2G"], "given 2 times"),
    (["budget=1GiB", "--name", "../evil"], "is not a preset name"),
    (["budget=1GiB", "--options", "int9wo"], "did you mean 'int8wo'"),
    (["--budget", "1GiB", "--parts", "transformr"], "did you mean 'transformer'"),
    (["--train", "budget=1GiB", "--train", "transformr"], "did you mean 'transformer'"),
    (["--budget", "1GiB", "--config-dir", "/proc/qconf"], "cannot create"),
])  # fmt: skip
def test_tune_mistakes_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    one_error_line(cli("tune", *args, cwd=tmp_path), message)


def test_mistakes_are_answered_before_torch_is_imported(tmp_path: Path) -> None:
    code = (
        "import sys\nfrom qconf.cli.main import main\n"
        "codes = [main(['tune', '--budget', '1GiB', '--options', 'int9wo']),\n"
        "         main(['tune', 'budget=1GiB', '--parts', 'vea']),\n"
        "         main(['sensitivity', '--out', '/proc/qconf']),\n"
        "         main(['sensitivity', '--options', 'nf5'])]\n"
        "assert codes == [2, 2, 2, 2], codes\n"
        "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=tmp_path, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("error: ") == 4


@pytest.mark.parametrize("command", [["sensitivity"], ["tune", "--budget", "1GiB"]])
def test_a_missing_library_names_the_command_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    import importlib.util

    real = importlib.util.find_spec

    def without_torchmetrics(name: str, *args: object) -> object:
        return None if name == "torchmetrics" else real(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", without_torchmetrics)
    result = cli(*command, cwd=tmp_path)
    one_error_line(result, f"qconf {command[0]}: needs torchmetrics")
    assert "pip install 'qconf[compare]'" in result.stderr


def test_train_parts_get_only_trainable_options(tmp_path: Path) -> None:
    result = cli("tune", "--budget", "2.0MiB", *FLUX, "--train", "transformer", "--options",
                 "int8wo,int8dq", "--parts", "transformer", "--name", "t", "--measure", "1",
                 cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    from qconf.plan.conftree import backend_options

    data = yaml.safe_load((tmp_path / "qconf-conf" / "preset" / "t.yaml").read_text())
    entries = [v if isinstance(v, str) else {k: x for k, x in v.items() if k != "skip"}
               for v in data["quant"]["mapping"].values()]  # fmt: skip
    assert entries and "int8dq" not in entries  # cuts the gradient on diffusers
    assert backend_options()["int8dq"] not in entries
    validated = cli("validate", "--train", "transformer", "--config-dir", "qconf-conf",
                    "preset=t", cwd=tmp_path)  # fmt: skip
    assert validated.returncode == 0, validated.stderr


def _bytes(text: str) -> int:
    from qconf.estimate.presets import parse_size

    return parse_size(text)


def _fits(preset: str, model: str, budget: str) -> bool:
    from qconf.estimate import estimate

    plan = qconf.validate(qconf.compose([f"preset={preset}", f"model={model}"]))
    return estimate(plan).total_bytes <= _bytes(budget)


@pytest.mark.gpu
def test_sensitivity_on_a_gpu_measures_bitsandbytes_on_the_transformer(tmp_path: Path) -> None:
    result = process("sensitivity", "model=tiny-flux", "model.device_map=cuda", *FAST,
                     "--options", "nf4,int8wo", "--parts", "transformer", "--out", "out",
                     cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / "out" / "sensitivity.json").read_text())
    cells = {c["option"]: c for c in data["cells"]}
    assert cells["nf4"]["status"] == "ok" and cells["int8wo"]["status"] == "ok"
    assert cells["nf4"]["part_rel_error"] > cells["int8wo"]["part_rel_error"] > 0
    assert {r["option"] for r in data["layers"]} == {"nf4", "int8wo"}
