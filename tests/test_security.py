"""The README's safety promises, attacked the way a hostile preset author would.

"Code did not run" is checked with a marker file: every payload would create it, so its absence
after the command is the proof. Every command must also end quickly with exit 0 or 2, no
traceback, and leave nothing outside the folders it is allowed to write."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import qconf
from qconf.cli.main import main
from qconf.trust.yamlsafe import load_yaml_text

QCONF = [sys.executable, "-m", "qconf.cli.main"]


def run_cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    started = time.monotonic()
    result = subprocess.run(
        [*QCONF, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        timeout=120,
    )
    assert time.monotonic() - started < 60
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    return result


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- _target_: exact objects, every container shape ---

BYPASSES = [
    "qconf.source.tiny.shutil.copyfile",  # prefix looks fine, resolves to shutil.copyfile
    "qconf.cli.main.main",
    "transformers.dynamic_module_utils.get_class_from_dynamic_module",
    "diffusers.utils.dynamic_modules_utils.get_class_from_dynamic_module",
    "os.system",
    "builtins.exec",
    "subprocess.call",
]


@pytest.mark.parametrize("target", BYPASSES)
def test_safe_instantiate_refuses_anything_but_the_exact_allowed_objects(
    target: str, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    with pytest.raises(qconf.PlanError, match="is not allowed"):
        qconf.safe_instantiate({"_target_": target, "_args_": [f"touch {marker}"]})
    assert not marker.exists()


@dataclasses.dataclass
class Node:
    _target_: str = "os.system"


SHAPES = [
    pytest.param(lambda t: ({"a": ({"_target_": t},)}, (), {}), id="inside-a-tuple"),
    pytest.param(lambda t: ({"a": OmegaConf.create({"_target_": t})}, (), {}), id="dictconfig"),
    pytest.param(lambda t: (OmegaConf.create({"a": [{"_target_": t}]}), (), {}), id="listconfig"),
    pytest.param(lambda t: ({"a": Node(_target_=t)}, (), {}), id="dataclass-instance"),
    pytest.param(lambda t: (Node(_target_=t), (), {}), id="dataclass-config"),
    pytest.param(
        lambda t: ({"_target_": "qconf.load_pipeline"}, (), {"model": {"_target_": t}}),
        id="kwargs",
    ),
    pytest.param(
        lambda t: ({"_target_": "qconf.load_pipeline"}, ({"_target_": t},), {}), id="args"
    ),
    pytest.param(
        lambda t: ({"a": frozenset([("_target_", t)]), "b": {"_target_": t}}, (), {}),
        id="nested-set",
    ),  # fmt: skip
]


@pytest.mark.parametrize("shape", SHAPES)
def test_safe_instantiate_walks_every_container_shape(shape, tmp_path: Path) -> None:  # noqa: ANN001
    cfg, args, kwargs = shape("os.system")
    with pytest.raises(qconf.PlanError, match="'os.system' is not allowed"):
        qconf.safe_instantiate(cfg, *args, **kwargs)


def test_safe_instantiate_builds_allowed_objects_by_any_spelling() -> None:
    from transformers import BitsAndBytesConfig

    canonical = qconf.safe_instantiate(
        {"_target_": "transformers.BitsAndBytesConfig", "load_in_8bit": True}
    )
    long_name = qconf.safe_instantiate(
        {
            "_target_": "transformers.utils.quantization_config.BitsAndBytesConfig",
            "load_in_8bit": True,
        }
    )
    assert type(canonical) is BitsAndBytesConfig and type(long_name) is BitsAndBytesConfig
    assert canonical.load_in_8bit and long_name.load_in_8bit


def test_validate_refuses_non_canonical_targets_without_importing_them() -> None:
    for target in ["qconf.source.tiny.shutil.copyfile", "evil_module_never_imported.run"]:
        with pytest.raises(qconf.PlanError, match="is not allowed"):
            qconf.validate({"model": {"source": "tiny-flux", "extra": {"_target_": target}}})
    assert "evil_module_never_imported" not in sys.modules


# --- the hydra: node ---

HYDRA_ATTACKS = {
    "callback": "hydra:\n  callbacks:\n    x:\n      _target_: os.system\n"
    "      _args_: ['touch {marker}']\n",
    "launcher": "hydra:\n  launcher:\n    _target_: os.system\n",
    "sweeper": "hydra:\n  sweeper:\n    _target_: os.system\n",
    "logging-factory": "hydra:\n  job_logging:\n    handlers:\n      console:\n"
    "        (): os.system\n",
    "logging-class": "hydra:\n  job_logging:\n    handlers:\n      console:\n"
    "        class: os.system\n",
    "logging-file": "hydra:\n  job_logging:\n    handlers:\n      file:\n"
    "        filename: {marker}\n",
    "env-set": "hydra:\n  job:\n    env_set:\n      QCONF_CACHE: {marker}\n",
    "run-dir": "hydra:\n  run:\n    dir: {marker}\n",
    "sweep-dir": "hydra:\n  sweep:\n    dir: {marker}\n",
    "job-name": "hydra:\n  job:\n    name: ../../{marker}\n",
    "joblib-temp-folder": "defaults:\n  - override /hydra/launcher: joblib\n"
    "hydra:\n  launcher:\n    temp_folder: {marker}\n",
}


@pytest.mark.parametrize("attack", sorted(HYDRA_ATTACKS))
def test_a_preset_cannot_set_the_hydra_node(attack: str, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    conf = tmp_path / "conf"
    body = HYDRA_ATTACKS[attack].format(marker=marker)
    write(conf / "preset" / "evil.yaml", "# @package _global_\n" + body)
    work = tmp_path / "work"
    work.mkdir()
    for command in ("validate", "run"):
        result = run_cli(command, "--config-dir", str(conf), "preset=evil", cwd=work)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert result.stderr.startswith("error: hydra."), result.stderr
    assert not marker.exists()
    assert list(work.iterdir()) == []  # no run folder


def test_a_launcher_defined_in_a_config_dir_is_refused(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    marker = tmp_path / "marker"
    write(conf / "hydra" / "launcher" / "evil.yaml", "_target_: os.system\n")
    for args in (["hydra/launcher=evil"], ["-m", "hydra/launcher=evil", "run.seed=1,2"]):
        result = run_cli("run", "--config-dir", str(conf), *args, cwd=tmp_path)
        assert result.returncode == 2 and "found only in a config file" in result.stderr
    assert not marker.exists()


def test_a_primary_config_cannot_extend_the_search_path(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    write(
        conf / "mine.yaml",
        "defaults:\n  - qconf\n  - _self_\nhydra:\n  searchpath: [pkg://evil_pkg_marker]\n",
    )
    result = run_cli("validate", "--plan-only", "--config-dir", str(conf), "-cn", "mine",
                     cwd=tmp_path)  # fmt: skip
    assert result.returncode in (0, 2)
    assert "evil_pkg_marker" not in result.stdout


def test_the_command_line_may_set_the_hydra_node(tmp_path: Path) -> None:
    assert main(["validate", "--plan-only", "+hydra.job.env_set.X=1", "hydra.run.dir=out"]) == 0


def test_a_file_may_pick_a_documented_launcher_with_work_shaping_parameters(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    write(
        conf / "preset" / "par.yaml",
        "# @package _global_\ndefaults:\n  - override /hydra/launcher: joblib\n"
        "hydra:\n  launcher:\n    n_jobs: 2\n",
    )
    assert main(["validate", "--plan-only", "--config-dir", str(conf), "preset=par"]) == 0


def test_experimental_rerun_of_a_pickled_config_is_refused(tmp_path: Path) -> None:
    import pickle

    marker = tmp_path / "marker"

    class Payload:
        def __reduce__(self):  # noqa: ANN204
            return (os.system, (f"touch {marker}",))

    pickled = tmp_path / "config.pickle"
    pickled.write_bytes(pickle.dumps(Payload()))
    result = run_cli("run", "--experimental-rerun", str(pickled), cwd=tmp_path)
    assert result.returncode == 2 and "--trust-pickled-config" in result.stderr
    assert not marker.exists()


# --- the environment is never written to disk ---


@pytest.mark.parametrize(
    "value",
    [
        "${oc.env:QCONF_TEST_SECRET}",
        "x${oc.env:QCONF_TEST_SECRET,d}",
        "${oc.env: QCONF_TEST_SECRET}",
    ],
)
def test_environment_values_are_refused_not_written(value: str, tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    write(conf / "preset" / "leak.yaml", f"# @package _global_\nrun:\n  prompt: '{value}'\n")
    out = tmp_path / "saved"
    env = {"QCONF_TEST_SECRET": "hunter2-secret"}
    for args in (
        ["validate", "--config-dir", str(conf), "preset=leak"],
        ["run", "--config-dir", str(conf), "preset=leak"],
        ["load", f"model.source={value}", "--save", str(out)],
    ):
        result = run_cli(*args, cwd=tmp_path, env=env)
        assert result.returncode == 2, result.stderr
        assert "environment variable" in result.stderr
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert all("hunter2" not in p.read_text(errors="replace") for p in written)
    assert not out.exists()


def test_environment_resolver_is_restored_after_validation(monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setenv("QCONF_TEST_SECRET", "abc")
    with pytest.raises(qconf.PlanError):
        qconf.validate(qconf.compose(["run.prompt=${oc.env:QCONF_TEST_SECRET}"]))
    assert OmegaConf.create({"a": "${oc.env:QCONF_TEST_SECRET}"}).a == "abc"


# --- bounded work on hostile YAML ---


def billion_laughs() -> str:
    text = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        text += f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]\n"
    return text


HOSTILE_YAML = {
    "billion-laughs": billion_laughs(),
    "self-reference": "a: &a [*a]\n",
    "deep": "a: " + "[" * 5000 + "]" * 5000 + "\n",
    "deep-map": "a: " + "{b: " * 3000 + "1" + "}" * 3000 + "\n",
}


@pytest.mark.parametrize("name", sorted(HOSTILE_YAML))
def test_hostile_yaml_ends_quickly_with_one_line(name: str, tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    write(conf / "preset" / "bomb.yaml", "# @package _global_\n" + HOSTILE_YAML[name])
    write(conf / "backend" / "bomb.yaml", HOSTILE_YAML[name])
    for args in (["validate", "preset=bomb"], ["show", "quant.mapping.transformer=bomb"],
                 ["run", "preset=bomb"]):  # fmt: skip
        result = run_cli(args[0], "--config-dir", str(conf), *args[1:], cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("error: "), result.stderr


def test_ordinary_yaml_with_anchors_still_reads() -> None:
    assert load_yaml_text("a: &x {b: 1}\nc: *x\n") == {"a": {"b": 1}, "c": {"b": 1}}


# --- terminal output ---


def test_control_characters_in_user_strings_are_escaped(tmp_path: Path) -> None:
    result = run_cli("validate", "quant.mapping.evil\x1b[2J=int8wo", cwd=tmp_path)
    assert result.returncode == 2
    assert "\x1b" not in result.stderr and "\\x1b" in result.stderr


# --- --save ---

LOAD = ["load", "quant.mapping.transformer=int8wo", "--save"]


@pytest.mark.parametrize("target", ["", ".", "~", "/", ".."])
def test_save_never_replaces_protected_folders_even_with_force(target: str, tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "keep.txt").parent.mkdir()
    (work / "keep.txt").write_text("user data")
    result = run_cli(*LOAD, target, "--force", cwd=work, env={"HOME": str(work)})
    assert result.returncode == 2, result.stderr
    assert (work / "keep.txt").read_text() == "user data"


def test_save_refuses_a_symlink_even_with_force(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "keep.txt").write_text("user data")
    (tmp_path / "link").symlink_to(real)
    result = run_cli(*LOAD, "link", "--force", cwd=tmp_path)
    assert result.returncode == 2 and "symlink" in result.stderr
    assert (real / "keep.txt").read_text() == "user data"
    assert (tmp_path / "link").is_symlink()


def test_a_file_written_into_dir_during_the_save_survives(tmp_path: Path) -> None:
    loaded = qconf.load(qconf.compose(["quant.mapping.transformer=int8wo"]))
    target = tmp_path / "saved"
    real_save = loaded.pipeline.save_pretrained

    def save_while_someone_writes(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
        real_save(*args, **kwargs)
        target.mkdir(exist_ok=True)
        (target / "theirs.txt").write_text("written meanwhile")

    loaded.pipeline.save_pretrained = save_while_someone_writes
    with pytest.raises(qconf.PlanError, match="written to by someone else"):
        qconf.save(loaded, target)
    assert [p.name for p in target.iterdir()] == ["theirs.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved"]  # no temp or lock left


def test_two_concurrent_saves_never_both_succeed(tmp_path: Path) -> None:
    loaded = qconf.load(qconf.compose(["quant.mapping.transformer=int8wo"]))
    target = tmp_path / "saved"
    outcomes: list[str] = []

    def save() -> None:
        try:
            qconf.save(loaded, target)
            outcomes.append("ok")
        except qconf.PlanError as exc:
            outcomes.append(str(exc))

    threads = [threading.Thread(target=save) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("ok") == 1, outcomes
    assert (target / "qconf.yaml").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved"]


def test_stale_temp_folders_of_a_killed_save_are_cleaned(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    stale = tmp_path / f".saved.qconf-tmp-{dead}-abc"
    stale.mkdir()
    (tmp_path / ".saved.qconf-lock").write_text(dead)
    someone_elses = tmp_path / ".saved.qconf-tmp-notapid"
    someone_elses.mkdir()
    loaded = qconf.load(qconf.compose(["quant.mapping.transformer=int8wo"]))
    qconf.save(loaded, tmp_path / "saved")
    assert not stale.exists() and not (tmp_path / ".saved.qconf-lock").exists()
    assert someone_elses.exists()


def test_force_replaces_only_the_named_folder(tmp_path: Path) -> None:
    target = tmp_path / "saved"
    target.mkdir()
    (target / "old.txt").write_text("old")
    (tmp_path / "sibling.txt").write_text("keep")
    loaded = qconf.load(qconf.compose(["quant.mapping.transformer=int8wo"]))
    qconf.save(loaded, target, force=True)
    assert (target / "qconf.yaml").is_file() and not (target / "old.txt").exists()
    assert (tmp_path / "sibling.txt").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved", "sibling.txt"]


# --- found by the attack review ---


def test_a_preset_cannot_feed_overrides_to_hydra(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    marker = tmp_path / "marker"
    write(
        conf / "preset" / "evil.yaml",
        "# @package _global_\nhydra:\n  overrides:\n"
        f"    hydra: ['+hydra.job.env_set.X=1', 'hydra.sweep.subdir=../../{marker}']\n"
        "    task: ['model.trust_remote_code=true']\n",
    )
    for args in (["validate"], ["run"], ["run", "-m"]):
        result = run_cli(*args, "--config-dir", str(conf), "preset=evil", "run.seed=1,2"
                         if "-m" in args else "run.seed=1", cwd=tmp_path)  # fmt: skip
        assert result.returncode == 2 and "hydra.overrides" in result.stderr, result.stderr
    assert not marker.exists() and not (tmp_path / "multirun").exists()


@pytest.mark.parametrize("flag", ["model.trust_remote_code", "model.allow_pickle"])
def test_files_cannot_turn_on_code_running_flags(flag: str, tmp_path: Path) -> None:
    section, key = flag.split(".")
    conf = tmp_path / "conf"
    write(conf / "preset" / "evil.yaml", f"# @package _global_\n{section}:\n  {key}: true\n")
    write(conf / "model" / "evil.yaml", f"source: tiny-flux\n{key}: true\n")
    plan = write(tmp_path / "plan.yaml", f"{section}:\n  {key}: true\n")
    for args in (["--config-dir", str(conf), "preset=evil"], ["--config-dir", str(conf),
                 "model=evil"], ["--plan", str(plan)]):  # fmt: skip
        for command in ("validate", "run"):
            result = run_cli(command, *args, cwd=tmp_path)
            assert result.returncode == 2 and f"{flag}: turned on by a config" in result.stderr
    # typed, it is the user's choice
    assert main(["validate", "--plan-only", "--plan", str(plan), f"{flag}=true"]) == 0


def test_launcher_parameters_from_files_are_plain_words(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    write(
        conf / "preset" / "evil.yaml",
        "# @package _global_\ndefaults:\n  - override /hydra/launcher: submitit_slurm\n"
        'hydra:\n  launcher:\n    comment: "x\\ntouch /tmp/marker #"\n',
    )
    result = run_cli("validate", "--plan-only", "--config-dir", str(conf), "preset=evil",
                     cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2 and "hydra.launcher.comment" in result.stderr
    write(
        conf / "preset" / "ok.yaml",
        "# @package _global_\ndefaults:\n  - override /hydra/launcher: submitit_slurm\n"
        "hydra:\n  launcher:\n    partition: gpu-a100\n    mem_gb: 64\n",
    )
    assert main(["validate", "--plan-only", "--config-dir", str(conf), "preset=ok"]) == 0


def test_safe_instantiate_refuses_interpolations_that_build_configs(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    payload = f"{{_target_: pathlib.Path.touch, self: {marker}}}"
    for value in (f'${{oc.create:"{payload}"}}', f"${{oc.create:{payload}}}",
                  f"\\${{oc.create:{payload}}}"):  # fmt: skip
        with pytest.raises(qconf.PlanError):
            qconf.safe_instantiate(OmegaConf.create({"x": value}))
    assert not marker.exists()


def test_interpolation_bombs_are_refused_before_resolving(tmp_path: Path) -> None:
    lines = ["# @package _global_", "run:", "  l0: x"]
    lines += [f"  l{i}: ${{run.l{i - 1}}}${{run.l{i - 1}}}" for i in range(1, 41)]
    lines.append("  prompt: ${run.l40}")
    write(tmp_path / "conf" / "preset" / "bomb.yaml", "\n".join(lines) + "\n")
    result = run_cli("validate", "--config-dir", str(tmp_path / "conf"), "preset=bomb",
                     cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2 and "interpolations" in result.stderr


def test_large_yaml_is_refused_before_parsing(tmp_path: Path) -> None:
    big = "x: [" + ",".join(["0"] * 200_000) + "]\n"
    write(tmp_path / "conf" / "preset" / "big.yaml", "# @package _global_\n" + big)
    write(tmp_path / "conf" / "backend" / "big.yaml", big)
    for args in (["validate", "preset=big"], ["validate"], ["list", "backends"]):
        result = run_cli(args[0], "--config-dir", str(tmp_path / "conf"), *args[1:], cwd=tmp_path)
        assert result.returncode in (0, 2), result.stderr
    assert "larger than 64 KiB" in run_cli("validate", "--config-dir", str(tmp_path / "conf"),
                                          "preset=big", cwd=tmp_path).stderr  # fmt: skip


@pytest.mark.parametrize(
    "args",
    [
        ["-m", "preset=glob(*)"],
        ["-m", "run.seed=range(0,100000000)"],
        ["+x=[" + ",".join(["0"] * 60_000) + "]"],
    ],  # fmt: skip
    ids=["glob", "huge-range", "huge-value"],
)
def test_hostile_command_lines_end_quickly(args: list[str], tmp_path: Path) -> None:
    result = run_cli("run", *args, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("error: ")


def test_force_never_deletes_what_was_written_during_the_save(tmp_path: Path) -> None:
    target = tmp_path / "saved"
    target.mkdir()
    (target / "old.txt").write_text("old")
    cfg = qconf.compose(["quant.mapping.transformer=int8wo"])
    from qconf.loading.saving import snapshot

    listing = snapshot(target)
    loaded = qconf.load(cfg)
    (target / "theirs.txt").write_text("written after the check")
    with pytest.raises(qconf.PlanError, match="changed while saving"):
        from qconf.loading.saving import save_pipeline

        save_pipeline(loaded, target, force=True, listing=listing)
    assert sorted(p.name for p in target.iterdir()) == ["old.txt", "theirs.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved"]


def test_a_model_folder_with_its_own_pipeline_file_is_refused(tmp_path: Path) -> None:
    import json
    import shutil

    from qconf.source.tiny import tiny_pipeline_path

    folder = tmp_path / "model"
    shutil.copytree(tiny_pipeline_path("tiny-flux"), folder)
    marker = tmp_path / "marker"
    (folder / "pipeline_evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
        "from diffusers import FluxPipeline as EvilPipeline\n"
    )
    index = json.loads((folder / "model_index.json").read_text())
    for name in (["pipeline_evil", "EvilPipeline"], ["pipeline_evil", "FluxPipeline"]):
        index["_class_name"] = name
        (folder / "model_index.json").write_text(json.dumps(index))
        for command in ("validate", "load"):
            result = run_cli(command, f"model.source={folder}", cwd=tmp_path)
            assert result.returncode == 2 and "needs custom code" in result.stderr
    assert not marker.exists()
