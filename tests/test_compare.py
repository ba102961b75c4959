"""`qconf compare`: a sweep of real `qconf run` jobs on the tiny Flux pipeline plus the
unquantized baseline, gathered into tables and pictures; launchers basic, joblib and submitit
(local); gathering an existing folder; sweeps refused before any job starts."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
QCONF = [sys.executable, "-m", "qconf.cli.main"]
PLANS = "quant.mapping.transformer=int8wo,int4wo,quanto-int8"


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*QCONF, *args], capture_output=True, text=True, cwd=cwd,
                            env=os.environ.copy(), timeout=600)  # fmt: skip
    assert "Traceback" not in result.stderr, result.stderr
    return result


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three plans and the baseline, two seeds each (one run shared by the tests below)."""
    work = tmp_path_factory.mktemp("compare")
    result = cli("compare", "model=tiny-flux", PLANS, "run.seed=[0,1]", "run.steps=1",
                 "hydra.sweep.dir=sweep", cwd=work)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return work / "sweep"


def table(sweep: Path) -> dict:
    return json.loads((sweep / "compare.json").read_text())


def runs_by_label(sweep: Path) -> dict[str, dict]:
    return {run["label"]: run for run in table(sweep)["runs"]}


def test_compare_writes_runs_tables_and_pictures(compared: Path) -> None:
    for name in ("compare.md", "compare.json", "compare.png", "pareto.png", "multirun.yaml"):
        assert (compared / name).is_file(), name
    for folder in ("baseline", "0", "1", "2"):
        files = {p.name for p in (compared / folder).iterdir()}
        assert {"plan.yaml", "report.json", "image-000.png", "image-001.png"} <= files
    runs = runs_by_label(compared)
    assert list(runs) == [
        "baseline (unquantized)",
        "quant.mapping.transformer=int8wo",
        "quant.mapping.transformer=int4wo",
        "quant.mapping.transformer=quanto-int8",
    ]
    # The grid: one row per plan, one column per seed, labels beside them (wider than tall/4).
    with Image.open(compared / "compare.png") as grid:
        assert grid.width > 300 and grid.height > 4 * 150
        assert len(set(grid.convert("L").getdata())) > 50  # pictures, not a blank canvas
    markdown = (compared / "compare.md").read_text()
    assert "| quant.mapping.transformer=int4wo | 1 |" in markdown
    assert markdown.count("| baseline (unquantized) |") == 4  # summary, parts, 2 images


def test_baseline_against_itself_is_identical_and_4bit_deviates_more(compared: Path) -> None:
    runs = runs_by_label(compared)
    baseline = runs["baseline (unquantized)"]
    assert baseline["psnr"] == math.inf and baseline["ssim"] == 1.0
    assert all(image["psnr"] == math.inf for image in baseline["images"])
    int8 = runs["quant.mapping.transformer=int8wo"]
    int4 = runs["quant.mapping.transformer=int4wo"]
    assert math.isfinite(int8["psnr"]) and int8["ssim"] < 1.0
    for seed in (0, 1):  # on the same seed, 4-bit is further from the baseline than int8
        four, eight = (next(i for i in r["images"] if i["seed"] == seed) for r in (int4, int8))
        assert four["psnr"] < eight["psnr"] and four["ssim"] < eight["ssim"]
    assert baseline["pareto"]  # nothing is closer to itself
    assert not int4["pareto"]  # int4wo (1 byte a weight + scales) is bigger and worse than int8


def test_numbers_in_the_table_equal_the_run_reports(compared: Path) -> None:
    for run in table(compared)["runs"]:
        report = json.loads((compared / run["folder"] / "report.json").read_text())
        assert run["total_bytes"] == report["total_bytes"]
        assert run["bytes"] == {n: c["bytes"] for n, c in report["components"].items()}
        assert run["backends"] == {n: c["backend"] for n, c in report["components"].items()}
        assert run["load_seconds"] == report["load_seconds"]
        assert run["seconds_per_image"] == report["run"]["seconds_per_image"]
        assert run["peak_memory_bytes"] == report["run"]["peak_memory_bytes"] > 0
        assert run["peak_memory_kind"] == "rss"
        assert [i["seconds"] for i in run["images"]] == [
            i["seconds"] for i in report["run"]["images"]
        ]
    quantized = runs_by_label(compared)["quant.mapping.transformer=int8wo"]
    assert quantized["bytes"]["transformer"] < table(compared)["runs"][0]["bytes"]["transformer"]


def test_gathering_the_folder_again_gives_the_same_tables(compared: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(compared, copy)
    before_json = (copy / "compare.json").read_text()
    before_md = (copy / "compare.md").read_text()
    for name in ("compare.json", "compare.md", "compare.png", "pareto.png"):
        (copy / name).unlink()
    result = cli("compare", str(copy), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (copy / "compare.json").read_text() == before_json
    assert (copy / "compare.md").read_text() == before_md
    assert (copy / "compare.png").is_file() and (copy / "pareto.png").is_file()


def test_gather_refuses_a_broken_run_folder_in_one_line(compared: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(compared, copy)
    report = copy / "1" / "report.json"
    data = json.loads(report.read_text())
    data["run"]["images"][0]["file"] = "../../etc/passwd"
    report.write_text(json.dumps(data))
    result = cli("compare", str(copy), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "report.json" in result.stderr
    missing = cli("compare", str(tmp_path / "nowhere"), cwd=tmp_path)
    assert missing.returncode == 2 and "no such folder" in missing.stderr


# --- launchers ---


def test_joblib_launcher_runs_two_plans_in_parallel(tmp_path: Path) -> None:
    result = cli("compare", "--no-baseline", "model=tiny-flux",
                 "quant.mapping.transformer=int8wo,int4wo", "run.steps=1",
                 "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweep.dir=sweep",
                 cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    runs = table(tmp_path / "sweep")["runs"]
    assert [run["folder"] for run in runs] == ["0", "1"]
    assert table(tmp_path / "sweep")["reference"] == "0"  # no baseline: the first plan
    assert runs[0]["psnr"] == math.inf and math.isfinite(runs[1]["psnr"])


def test_submitit_local_runs_the_example_cluster_config(tmp_path: Path) -> None:
    result = cli("compare", "--no-baseline", "--config-dir", str(REPO / "examples" / "sweep"),
                 "-cn", "cluster", "model=tiny-flux", "quant.mapping.transformer=int8wo,int4wo",
                 "run.steps=1", "hydra.sweep.dir=sweep", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    sweep = tmp_path / "sweep"
    assert (sweep / ".submitit").is_dir()  # submitit ran the jobs, in their own processes
    assert [run["folder"] for run in table(sweep)["runs"]] == ["0", "1"]


def test_the_cluster_config_switches_to_slurm_with_the_two_documented_lines(
    tmp_path: Path,
) -> None:
    text = (REPO / "examples" / "sweep" / "cluster.yaml").read_text()
    slurm = text.replace("hydra/launcher: submitit_local", "hydra/launcher: submitit_slurm")
    slurm = slurm.replace("gpus_per_node: 0", "gpus_per_node: 1")
    changed = [a for a, b in zip(text.splitlines(), slurm.splitlines(), strict=True) if a != b]
    assert len(changed) == 2
    (tmp_path / "cluster.yaml").write_text(slurm)
    result = cli("run", "--config-dir", str(tmp_path), "-cn", "cluster", "--cfg", "hydra",
                 cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "SlurmLauncher" in result.stdout and "gpus_per_node: 1" in result.stdout


# --- refused before any job starts ---


def test_a_plan_that_fails_validation_stops_the_sweep_before_any_job(tmp_path: Path) -> None:
    result = cli("compare", "model=tiny-flux", "quant.mapping.transformer=int8wo,nf5",
                 "hydra/launcher=joblib", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: job 1 (model=tiny-flux quant.mapping.transformer=nf5)")
    assert list(tmp_path.iterdir()) == []  # no job, not even the baseline, ran


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["model=tiny-flux,tiny-sd3", "quant.mapping.vae=int8wo"], "different models"),
        (["quant.mapping.transformer=int8wo", "run.seed=0,1"], "run.seed=[0,1]"),
        (["--no-baseline"], "no plans given"),
        (["quant.mapping.transformer=int8wo", "hydra.sweep.dir=${now:%H}"], "plain folder"),
    ],
)
def test_sweeps_compare_cannot_use_are_one_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = cli("compare", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and result.stderr.startswith("error: ")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_already_holds_runs_is_not_reused(compared: Path) -> None:
    result = cli("compare", "quant.mapping.transformer=int8wo", f"hydra.sweep.dir={compared}",
                 cwd=compared.parent)  # fmt: skip
    assert result.returncode == 2 and "already exists and is not empty" in result.stderr


@pytest.mark.gpu
def test_compare_on_a_gpu_reports_cuda_peaks_and_4bit_deviates_more(tmp_path: Path) -> None:
    result = cli("compare", "model=tiny-flux", "model.device_map=cuda",
                 "quant.mapping.transformer=nf4,int8wo", "run.steps=2", "hydra.sweep.dir=sweep",
                 cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    runs = runs_by_label(tmp_path / "sweep")
    assert {run["peak_memory_kind"] for run in runs.values()} == {"cuda"}
    assert all(run["peak_memory_bytes"] > 0 for run in runs.values())
    nf4, int8 = (runs[f"quant.mapping.transformer={o}"] for o in ("nf4", "int8wo"))
    assert nf4["backends"]["transformer"] == "bitsandbytes_4bit"
    assert nf4["psnr"] < int8["psnr"]
    assert nf4["bytes"]["transformer"] < int8["bytes"]["transformer"]


def test_picture_labels_are_escaped_and_bounded() -> None:
    from qconf.compare.figures import LABEL_CHARS, label_text

    long = label_text("quant.mapping.transformer=int8wo " * 1000)
    assert len(long.replace("\n", "")) <= LABEL_CHARS and long.endswith("…")
    assert "\\x1b" in label_text("\x1b[31mred") and "\x1b" not in label_text("\x1b[31mred")
    assert label_text("") == " "
