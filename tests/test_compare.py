"""`qconf compare`: a sweep of real `qconf run` jobs on the tiny Flux pipeline plus the
unquantized baseline, gathered into tables and pictures; launchers basic, joblib and submitit
(local); Ctrl-C and resuming the sweep folder; gathering an existing folder; sweeps refused
before any job starts (and before torch is imported).

One real sweep serves most tests (module fixture): it is interrupted as its third job starts
and then resumed with the joblib launcher, which runs the two remaining plans in parallel."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image
from qconf_driver import TORCH_FREE, errors
from qconf_driver import qconf as cli

REPO = Path(__file__).resolve().parent.parent
PLANS = "quant.mapping.transformer=int8wo,int4wo,quanto-int8"
SWEEP = ["compare", "model=tiny-flux", PLANS, "run.seed=[0,1]", "run.steps=1",
         "hydra.sweep.dir=sweep"]  # fmt: skip


@dataclass
class Sweep:
    folder: Path
    interrupted: subprocess.CompletedProcess[str]  # Ctrl-C as the third job (plan 1) started
    after_interrupt: dict[str, int]  # run folder -> report.json mtime (ns), before resuming
    resumed: subprocess.CompletedProcess[str]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    """Three plans and the baseline, two seeds each: interrupted as plan 1 starts (baseline and
    plan 0 finished), then the same command again, with the joblib launcher running the two
    remaining plans in parallel (a launcher is not part of what the sweep is)."""
    work = tmp_path_factory.mktemp("compare")
    interrupted = cli(*SWEEP, cwd=work, interrupt=3)
    folder = work / "sweep"
    finished = {p.parent.name: p.stat().st_mtime_ns for p in folder.glob("*/report.json")}
    resumed = cli(*SWEEP, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", cwd=work)
    assert resumed.returncode == 0, resumed.stderr
    return Sweep(folder, interrupted, finished, resumed)


@pytest.fixture(scope="module")
def compared(sweep: Sweep) -> Path:
    return sweep.folder


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


# --- Ctrl-C and resume ---


def test_ctrl_c_says_which_runs_finished_and_how_to_resume_or_gather(sweep: Sweep) -> None:
    assert sweep.interrupted.returncode == 130
    [line] = errors(sweep.interrupted)
    folder = sweep.folder
    assert line == (
        f"interrupted: 2 of 4 runs finished in {folder} (baseline, 0) — resume: run the same "
        f"command with hydra.sweep.dir={folder} (the finished runs are kept, the other 2 run), "
        f"or gather what finished: qconf compare {folder}"
    )
    assert sorted(sweep.after_interrupt) == ["0", "baseline"]


def test_the_same_command_again_resumes_and_runs_only_what_did_not_finish(sweep: Sweep) -> None:
    assert f"resuming: 2 of 4 runs already finished in {sweep.folder}" in errors(sweep.resumed)
    for name, mtime in sweep.after_interrupt.items():  # kept as they were, not run again
        assert (sweep.folder / name / "report.json").stat().st_mtime_ns == mtime
    assert "Joblib.Parallel(n_jobs=2" in sweep.resumed.stderr  # the rest ran in parallel
    assert json.loads((sweep.folder / "sweep.json").read_text())["launches"][1][2]["overrides"] \
        == ["model=tiny-flux", "quant.mapping.transformer=quanto-int8", "run.seed=[0,1]",
            "run.steps=1"]  # fmt: skip


def test_a_run_folder_counts_as_finished_only_when_complete_and_of_the_same_plan(
    compared: Path, tmp_path: Path
) -> None:
    from qconf.run.finished import finished_run

    run = tmp_path / "run"
    shutil.copytree(compared / "0", run)
    plan = (run / "plan.yaml").read_text()
    overrides = json.loads((run / "report.json").read_text())["run"]["overrides"]
    assert finished_run(run, plan, overrides, 2)
    assert not finished_run(run, plan.replace("torchao", "quanto"), overrides, 2)  # other plan
    assert not finished_run(run, plan, [*overrides, "run.steps=2"], 2)
    assert not finished_run(run, plan, overrides, 3)  # another number of prompts x seeds
    (run / "image-001.png").unlink()
    assert not finished_run(run, plan, overrides, 2)
    assert not finished_run(tmp_path / "nowhere", plan, overrides, 2)


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


def test_submitit_local_runs_the_example_cluster_config(tmp_path: Path) -> None:
    result = cli("compare", "--no-baseline", "--config-dir", str(REPO / "examples" / "sweep"),
                 "-cn", "cluster", "model=tiny-flux", "quant.mapping.transformer=int8wo,int4wo",
                 "run.steps=1", "hydra.sweep.dir=sweep", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    sweep = tmp_path / "sweep"
    assert (sweep / ".submitit").is_dir()  # submitit ran the jobs, in their own processes
    runs = table(sweep)["runs"]
    assert [run["folder"] for run in runs] == ["0", "1"]
    assert table(sweep)["reference"] == "0"  # no baseline: the first plan
    assert runs[0]["psnr"] == math.inf and math.isfinite(runs[1]["psnr"])


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
    assert TORCH_FREE in result.stdout  # answered before the imports a run needs


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["model=tiny-flux,tiny-sd3", "quant.mapping.vae=int8wo"], "different models"),
        (["quant.mapping.transformer=int8wo", "run.seed=0,1"], "run.seed=[0,1]"),
        (["--no-baseline"], "no plans given"),
        (["quant.mapping.transformer=int8wo", "hydra.sweep.dir=${now:%H}"], "plain folder"),
        (
            ["quant.mapping.transformr=int8wo,int4wo"],
            "quant.mapping.transformr: 'transformr' is not a part",
        ),  # every job has it: said once, without a job prefix
    ],
)
def test_sweeps_compare_cannot_use_are_one_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = cli("compare", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert message in result.stderr and result.stderr.startswith("error: ")
    assert len(errors(result)) == 1
    assert list(tmp_path.iterdir()) == []
    assert TORCH_FREE in result.stdout


def test_a_folder_of_another_sweep_is_not_reused(compared: Path, tmp_path: Path) -> None:
    before = (compared / "sweep.json").read_bytes()
    result = cli("compare", "model=tiny-flux", "quant.mapping.transformer=int8wo",
                 "run.seed=[0,1]", "run.steps=1", f"hydra.sweep.dir={compared}",
                 cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2 and TORCH_FREE in result.stdout
    [line] = errors(result)
    assert f"'{compared}' holds another comparison" in line
    assert f"gather it: qconf compare {compared}" in line
    assert (compared / "sweep.json").read_bytes() == before
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("not a sweep")
    result = cli("compare", "quant.mapping.transformer=int8wo", f"hydra.sweep.dir={mine}",
                 cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2 and "not a `qconf compare` sweep folder" in result.stderr
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]


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
