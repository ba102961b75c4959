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


# --- sensitivity cache and tune output (issue 20) ---
# QCONF_CACHE may be a folder others write: its entries are untrusted data and its folders may be
# swapped for links. Tune's preset folder may change between the check and the write.

_KEY = "0123456789abcdef" * 2  # a cache key: 32 hex digits
_CELL = {"part": "transformer", "option": "int8wo", "status": "ok", "bytes": 100,
         "bytes_unquantized": 200, "part_rel_error": 0.01, "part_cosine": 0.99,
         "image_mse": 0.001, "image_psnr": 30.0, "image_ssim": 0.9}  # fmt: skip


@pytest.fixture
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("QCONF_CACHE", str(root))
    return root


def _cell_entry(**changes: object) -> str:
    import json

    return json.dumps({**_CELL, "key": _KEY, **changes})


@pytest.mark.parametrize("link", ["", "sensitivity", "sensitivity/parts-v2"])
def test_the_sensitivity_cache_is_never_read_or_written_through_a_link(
    link: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qconf.sensitivity import cache
    from qconf.sensitivity.parts import KIND, Cell

    assert KIND == "parts-v2"
    victim = tmp_path / "victim"
    victim.mkdir()
    root = tmp_path / "cache"
    linked = root / link if link else root
    linked.parent.mkdir(parents=True, exist_ok=True)
    linked.symlink_to(victim, target_is_directory=True)
    monkeypatch.setenv("QCONF_CACHE", str(root))
    with pytest.raises(qconf.PlanError, match="is a symbolic link"):  # before any work
        cache.read(KIND, _KEY, Cell)
    with pytest.raises(qconf.PlanError, match="is a symbolic link"):
        cache.write(KIND, _KEY, dict(_CELL), Cell)
    assert not list(victim.iterdir())


def test_a_cache_entry_planted_as_a_link_is_replaced_not_followed(
    own_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from qconf.sensitivity import cache
    from qconf.sensitivity.parts import KIND, Cell

    cache.write(KIND, _KEY, dict(_CELL), Cell)
    entry = cache.entry_path(KIND, _KEY)
    mine = tmp_path / "mine.json"
    mine.write_text(_cell_entry())
    entry.unlink()
    entry.symlink_to(mine)
    assert cache.read(KIND, _KEY, Cell) is None
    assert "note: " in capsys.readouterr().err
    cache.write(KIND, _KEY, dict(_CELL, bytes=5), Cell)
    assert not entry.is_symlink() and mine.read_text() == _cell_entry()
    assert cache.read(KIND, _KEY, Cell).bytes == 5
    assert [p.name for p in entry.parent.iterdir()] == [entry.name]  # no temp file left


@pytest.mark.parametrize(("content", "why"), [
    (_cell_entry(image_mse=float("nan")), "finite number"),
    (_cell_entry(image_ssim=float("inf")), "finite number"),
    (_cell_entry(image_mse=2.0), "less than or equal to 1"),
    (_cell_entry(image_psnr=-5.0), "greater than or equal to 0"),
    (_cell_entry(bytes=-1), "greater than or equal to 0"),
    (_cell_entry(bytes=2**80), "less than or equal to"),
    (_cell_entry(status="cached"), "status"),
    (_cell_entry(reason="x" * 5000), "at most 1000 characters"),
    (_cell_entry(key="f" * 32), "not written for this key"),
    (_cell_entry(key=None), "not written for this key"),
    ("[1, 2]", "not written for this key"),
    ("[" * 40 + "]" * 40, "nested"),
    ("[" * 30_000 + "]" * 30_000, "nested"),
    (" " * 2**20, "over qconf's limit"),
    ("\ufeff{", "not valid JSON"),
    ('{"key": ' + "9" * 5000 + "}", "number too long"),
])  # fmt: skip
def test_hostile_cache_entries_are_ignored_with_a_notice(
    content: str, why: str, own_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from qconf.sensitivity import cache
    from qconf.sensitivity.parts import KIND, Cell

    entry = cache.entry_path(KIND, _KEY)
    entry.parent.mkdir(parents=True)
    entry.write_text(content)
    started = time.monotonic()
    assert cache.read(KIND, _KEY, Cell) is None
    assert time.monotonic() - started < 5
    err = capsys.readouterr().err
    assert err.startswith(f"note: {entry}: ") and why in err and err.count("\n") == 1, err


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_cache_entry_that_is_not_a_file_is_ignored(
    kind: str, own_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from qconf.sensitivity import cache
    from qconf.sensitivity.parts import KIND, Cell

    entry = cache.entry_path(KIND, _KEY)
    entry.parent.mkdir(parents=True)
    os.mkfifo(entry) if kind == "fifo" else entry.mkdir()
    assert cache.read(KIND, _KEY, Cell) is None  # a FIFO would block a plain open()
    assert "not a regular file" in capsys.readouterr().err


def test_hostile_layer_rankings_are_bounded(own_cache: Path, capsys: pytest.CaptureFixture[str]
                                            ) -> None:  # fmt: skip
    import json

    from qconf.sensitivity import cache
    from qconf.sensitivity.ranking import KIND, LayerRanking

    layer = {"weight_error": 0.1, "linearized": 0.2, "measured": None, "bytes_saved": 10,
             "skip_name": "blocks.0.to_q", "also_skips": []}  # fmt: skip
    entry = cache.entry_path(KIND, _KEY)
    entry.parent.mkdir(parents=True)
    hostile = {
        "skip name that leaves its quotes": {"a": {**layer, "skip_name": "x'],quant.kwargs={}"}},
        "interpolation": {"a": {**layer, "skip_name": "${oc.env:HOME}"}},
        "NaN linearized": {"a": {**layer, "linearized": float("nan")}},
        "too many layers": {f"l{i}": layer for i in range(20_001)},
    }
    for name, layers in hostile.items():
        data = {"part": "transformer", "option": "int8wo", "layers": layers, "key": _KEY}
        entry.write_text(json.dumps(data))
        assert cache.read(KIND, _KEY, LayerRanking, cache.MAX_RANKING_BYTES) is None, name
        assert "is not a measurement qconf wrote" in capsys.readouterr().err, name


def test_a_cached_cell_the_estimator_contradicts_is_measured_again(
    own_cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import contextlib
    import dataclasses

    from qconf.sensitivity import cache
    from qconf.sensitivity import parts as sensitivity

    where = sensitivity.setting(["model=tiny-flux"])
    fresh, plan = sensitivity._runnable(where, "transformer", "int8wo")
    entry = plan.resolve().components["transformer"].entry.model_dump(mode="json")
    name = where.cell_key("transformer", entry)
    forged = {**dataclasses.asdict(fresh), "bytes": 1, "part_rel_error": 0.0,
              "part_cosine": 1.0, "image_mse": 0.0, "image_psnr": float("inf"),
              "image_ssim": 1.0}  # fmt: skip
    del forged["cached"]
    cache.write(sensitivity.KIND, name, forged)
    measured = []

    def measure(where: object, reference: object, cell: sensitivity.Cell, plan: object) -> None:
        cell.part_rel_error, cell.part_cosine, cell.image_ssim = 0.1, 0.9, 0.8
        cell.image_mse = 0.01
        cell.image_psnr = sensitivity.psnr_of(cell.image_mse)
        measured.append(cell)

    monkeypatch.setattr(sensitivity, "_reference", lambda where: contextlib.nullcontext())
    monkeypatch.setattr(sensitivity, "_measure", measure)
    (cell,) = sensitivity.measure_parts(where, ["int8wo"], ["transformer"])
    assert measured == [cell] and not cell.cached and cell.bytes == fresh.bytes > 1
    assert "the estimator says" in capsys.readouterr().err
    assert cache.read(sensitivity.KIND, name, sensitivity.Cell).bytes == fresh.bytes  # replaced


def _tuned_for(where: object, budget: int) -> object:
    from qconf.tune import Candidate, Tuned, tuned_overrides

    mapping = {"transformer": "int8wo"}
    winner = Candidate("tuned #1", mapping, tuned_overrides(where, mapping), 1, psnr=30.0,
                       ssim=0.9)  # fmt: skip
    return Tuned(budget, [], [winner])


def test_tune_leaves_out_a_prediction_its_own_estimate_puts_over_budget(
    own_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from qconf.sensitivity.parts import setting
    from qconf.tune import _predicted

    where = setting(["model=tiny-flux"])
    forged = [(0.0, 1, {"transformer": "int8wo"})]  # a size that cells forged in the cache gave
    assert _predicted(where, forged, 100_000, 1) == []
    assert "over 97.7 KiB" in capsys.readouterr().err
    (kept,) = _predicted(where, forged, 2**40, 1)
    assert kept.bytes > 100_000  # the plan's own estimate, not the forged size


def test_a_tuned_preset_over_budget_by_its_own_estimate_is_not_written(
    own_cache: Path, tmp_path: Path
) -> None:
    from qconf.sensitivity.parts import setting
    from qconf.tune.preset_file import preset_path, write_preset

    where = setting(["model=tiny-flux"])
    target = preset_path(str(tmp_path / "conf"), "mine", force=False)
    with pytest.raises(qconf.PlanError, match="own estimate is .* over the budget"):
        write_preset(target, where, _tuned_for(where, 100_000))
    assert not list((tmp_path / "conf" / "preset").iterdir())  # no temp file either
    written = write_preset(target, where, _tuned_for(where, 2**40), force=False)
    assert [p.name for p in written.parent.iterdir()] == ["mine.yaml"]
    cfg = qconf.compose(["preset=mine"], config_dir=tmp_path / "conf")
    assert cfg.quant.mapping.transformer == "int8wo"


@pytest.mark.parametrize("swapped", ["conf", "conf/preset"])
def test_a_preset_folder_that_became_a_link_after_the_check_is_refused(
    swapped: str, own_cache: Path, tmp_path: Path
) -> None:
    import shutil

    from qconf.sensitivity.parts import setting
    from qconf.tune.preset_file import preset_path, write_preset

    where = setting(["model=tiny-flux"])
    (tmp_path / "conf" / "preset").mkdir(parents=True)
    target = preset_path(str(tmp_path / "conf"), "mine", force=True)  # before the work
    victim = tmp_path / "victim"
    (victim / "preset").mkdir(parents=True)
    shutil.rmtree(tmp_path / swapped)  # meanwhile, a link takes the folder's place
    (tmp_path / swapped).symlink_to(victim / "preset" if swapped.endswith("preset") else victim)
    with pytest.raises(qconf.PlanError, match="is a symbolic link"):
        write_preset(target, where, _tuned_for(where, 2**40), force=True)
    assert not list((victim / "preset").iterdir())


def test_a_preset_that_appeared_after_the_check_is_kept_without_force(
    own_cache: Path, tmp_path: Path
) -> None:
    from qconf.sensitivity.parts import setting
    from qconf.tune.preset_file import preset_path, write_preset

    where = setting(["model=tiny-flux"])
    target = preset_path(str(tmp_path / "conf"), "mine", force=False)
    target.parent.mkdir(parents=True)
    target.write_text("theirs")
    with pytest.raises(qconf.PlanError, match="already exists"):
        write_preset(target, where, _tuned_for(where, 2**40), force=False)
    assert target.read_text() == "theirs"
    elsewhere = tmp_path / "elsewhere.yaml"
    elsewhere.write_text("theirs")
    target.unlink()
    target.symlink_to(elsewhere)  # --force replaces a file, never a link (nor what it points to)
    with pytest.raises(qconf.PlanError, match="is a symbolic link"):
        write_preset(target, where, _tuned_for(where, 2**40), force=True)
    assert elsewhere.read_text() == "theirs" and target.is_symlink()
    assert sorted(p.name for p in target.parent.iterdir()) == ["mine.yaml"]


def test_a_folder_swapped_for_a_link_during_a_write_receives_nothing(tmp_path: Path) -> None:
    from qconf.trust.userpath import real_folder, replace_in

    folder, victim, moved = tmp_path / "out", tmp_path / "victim", tmp_path / "moved"
    folder.mkdir()
    victim.mkdir()

    def swap(temp: Path) -> None:
        folder.rename(moved)
        folder.symlink_to(victim)

    refused = pytest.raises(qconf.PlanError, match="became a symbolic link")
    with real_folder(folder, [], "--out") as real, refused:
        replace_in(real, "sensitivity.json", b"{}", "--out", check=swap)
    assert not list(victim.iterdir()) and not list(moved.iterdir())


def test_tune_refuses_to_trust_a_forged_cell_end_to_end(own_cache: Path, tmp_path: Path) -> None:
    """A forged cell says the transformer under int8wo weighs 1 byte, so that a plan over the
    budget looks like it fits: tune notices, measures it again, and says no plan fits."""
    import dataclasses
    import json

    from qconf.estimate import estimate
    from qconf.sensitivity import cache
    from qconf.sensitivity import parts as sensitivity

    overrides = ["model=tiny-flux", "run.steps=1"]
    where = sensitivity.setting(overrides)
    fresh, plan = sensitivity._runnable(where, "transformer", "int8wo")
    entry = plan.resolve().components["transformer"].entry.model_dump(mode="json")
    forged = {**dataclasses.asdict(fresh), "bytes": 1, "part_rel_error": 0.0,
              "part_cosine": 1.0, "image_mse": 0.0, "image_psnr": float("inf"),
              "image_ssim": 1.0}  # fmt: skip
    del forged["cached"]
    cache.write(sensitivity.KIND, where.cell_key("transformer", entry), forged)
    # What the forged cell makes of the transformer at int8wo and the rest unquantized (every
    # built-in tiny-flux preset is over 1.7 MiB): it fits the budget, the real plan does not.
    forged_size = estimate(plan).total_bytes - fresh.bytes + 1
    budget = f"{(forged_size + 1024) / 1024:.3f}KiB"
    result = subprocess.run(
        [*QCONF, "tune", f"budget={budget}", *overrides, "--options", "int8wo", "--parts",
         "transformer", "--measure", "1", "--config-dir", "conf"],
        capture_output=True, text=True, cwd=tmp_path, env=os.environ.copy(), timeout=600,
    )  # fmt: skip
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr
    assert "no plan fits" in errors[0] and "the estimator says" in result.stderr
    assert not (tmp_path / "conf").exists()
    assert json.loads(cache.entry_path(sensitivity.KIND, where.cell_key("transformer", entry))
                      .read_text())["bytes"] == fresh.bytes  # fmt: skip


# --- adapters (issue 20) ---
# An adapter file is shared on the internet: qconf.train.load_adapter checks it whole (regular
# file, size, header, metadata, every setting against bounds, every tensor against the layers
# peft would create) before any tensor is allocated or the pipeline is touched. Each refusal is
# one qconf error line, quickly.

ADAPTER_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


@pytest.fixture(scope="module")
def adapter_pipeline(qconf_cache: Path) -> object:
    """One tiny Flux pipeline every hostile adapter is pointed at: a refusal leaves it as is."""
    pytest.importorskip("peft")
    with qconf.quiet():
        return qconf.load_pipeline(qconf.compose([]))


def _adapter_tensors(pipeline: object, rank: int = 4) -> dict[str, object]:
    """Well-formed LoRA tensors for the transformer's attention projections."""
    import torch

    tensors = {}
    for name, layer in pipeline.transformer.named_modules():
        if any(name == t or name.endswith(f".{t}") for t in ADAPTER_TARGETS):
            key = f"transformer.{name}"
            tensors[f"{key}.lora_A.weight"] = torch.zeros(rank, layer.in_features)
            tensors[f"{key}.lora_B.weight"] = torch.zeros(layer.out_features, rank)
    return tensors


def _adapter_settings(rank: int = 4) -> dict[str, object]:
    return {"transformer.r": rank, "transformer.lora_alpha": rank, "transformer.peft_type": "LORA",
            "transformer.target_modules": ADAPTER_TARGETS}  # fmt: skip


def _write_adapter(
    folder: Path, tensors: dict[str, object], settings: object = None, metadata: object = None
) -> Path:
    """A safetensors adapter file made by hand (settings: the LoRA metadata JSON's content)."""
    import json

    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    if metadata is None:
        metadata = {"format": "pt", "lora_adapter_metadata": json.dumps(settings)}
    save_file(tensors, str(folder / "pytorch_lora_weights.safetensors"), metadata=metadata)
    return folder


def _raw_adapter(folder: Path, header: object, data: bytes = b"") -> Path:
    """A safetensors file with any header, written byte by byte (save_file checks its input)."""
    import json
    import struct

    folder.mkdir(parents=True, exist_ok=True)
    text = json.dumps(header).encode()
    (folder / "pytorch_lora_weights.safetensors").write_bytes(
        struct.pack("<Q", len(text)) + text + data
    )
    return folder


def _assert_adapter_refused(pipeline: object, folder: Path, match: str) -> None:
    """One qconf error line matching `match`, quickly, with the pipeline and folder untouched."""
    import re

    import qconf.train
    from qconf.errors import QconfError

    before = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else None
    started = time.monotonic()
    with pytest.raises(QconfError) as refused:
        qconf.train.load_adapter(pipeline, folder)
    assert time.monotonic() - started < 10
    assert isinstance(refused.value, (qconf.PlanError, qconf.ModelSourceError))
    assert len(refused.value.lines) == 1 and "\n" not in str(refused.value), refused.value
    assert re.search(match, str(refused.value)), str(refused.value)
    for part in ("transformer", "text_encoder", "text_encoder_2", "vae"):
        module = getattr(pipeline, part)
        assert not getattr(module, "peft_config", None)
        assert not any("lora_" in name for name, _ in module.named_parameters())
    if before is not None:
        assert sorted(p.name for p in folder.iterdir()) == before


def test_well_formed_adapters_load_once(adapter_pipeline: object, tmp_path: Path) -> None:
    """Linear (with a rank_pattern), conv and embedding layers, shaped as peft makes them: the
    checks predict peft's own tensors, and the file's values are what the layers get."""
    import torch

    import qconf.train

    tensors = _adapter_tensors(adapter_pipeline)
    for name in [k for k in tensors if ".to_q.lora_" in k]:
        tensors[name] = tensors[name][:2] if "lora_A" in name else tensors[name][:, :2]
    conv = adapter_pipeline.vae.encoder.conv_in
    tensors["vae.encoder.conv_in.lora_A.weight"] = torch.zeros(4, conv.in_channels,
                                                              *conv.kernel_size)  # fmt: skip
    tensors["vae.encoder.conv_in.lora_B.weight"] = torch.zeros(conv.out_channels, 4, 1, 1)
    (name, embedding), = [(n, m) for n, m in adapter_pipeline.text_encoder.named_modules()
                          if n.endswith("token_embedding")]  # fmt: skip
    tensors[f"text_encoder.{name}.lora_embedding_A"] = torch.zeros(4, embedding.num_embeddings)
    tensors[f"text_encoder.{name}.lora_embedding_B"] = torch.zeros(embedding.embedding_dim, 4)
    generator = torch.Generator().manual_seed(0)
    tensors = {k: torch.randn(v.shape, generator=generator) for k, v in tensors.items()}
    settings = {**_adapter_settings(), "transformer.rank_pattern": {"to_q": 2},
                "vae.r": 4, "vae.target_modules": ["encoder.conv_in"], "text_encoder.r": 4,
                "text_encoder.target_modules": ["token_embedding"]}  # fmt: skip
    folder = _write_adapter(tmp_path / "lora", tensors, settings)
    with qconf.quiet():
        fresh = qconf.load_pipeline(qconf.compose([]))
    assert qconf.train.load_adapter(fresh, folder) == ["transformer", "vae", "text_encoder"]
    loaded = {f"{part}.{name.replace('.default', '')}": p for part in ("transformer", "vae",
              "text_encoder") for name, p in getattr(fresh, part).named_parameters()
              if "lora_" in name}  # fmt: skip
    assert loaded.keys() == tensors.keys()
    assert all(torch.equal(loaded[k].float(), v.to(loaded[k].dtype).float())
               for k, v in tensors.items())  # fmt: skip
    with pytest.raises(qconf.PlanError, match="already has a LoRA adapter"):
        qconf.train.load_adapter(fresh, folder)


HOSTILE_SETTINGS = [
    ("r", 2**21, "rank is an integer 1..1024"),
    ("r", 0, "rank is an integer"),
    ("r", -4, "rank is an integer"),
    ("r", 4.0, "rank is an integer"),
    ("r", True, "rank is an integer"),
    ("r", "4", "rank is an integer"),
    ("lora_alpha", float("nan"), "not a finite number"),
    ("lora_alpha", float("inf"), "not a finite number"),
    ("lora_alpha", -4, r"lora_alpha is in \(0, 4096\]"),
    ("lora_alpha", 0, "lora_alpha is in"),
    ("lora_alpha", 1e30, "lora_alpha is in"),
    ("lora_alpha", "4", "not a finite number"),
    ("lora_alpha", 10**400, "lora_alpha is in"),
    ("r", 10**400, "rank is an integer"),
    ("lora_dropout", -(10**400), "dropout probability"),
    ("lora_dropout", 1.5, "dropout probability"),
    ("target_modules", "(a+)+$", "never a pattern"),
    ("target_modules", "all-linear", "never a pattern"),
    ("target_modules", ["(to_q|to_qq)*x"], "patterns are not read"),
    ("target_modules", ["to_q\n"], "patterns are not read"),
    ("target_modules", ["to_q"] * 5000, "at most 4096"),
    ("target_modules", [3], "not a module name"),
    ("target_modules", None, "names no module"),
    ("target_modules", [], "names no module"),
    ("target_modules", ["norm"], "a LayerNorm; LoRA attaches to Linear"),
    ("target_modules", ["nothing_here"], '"nothing_here", which is no layer'),
    ("target_modules", ["to_q", "not_a_layer"], '"not_a_layer", which is no layer'),
    ("exclude_modules", ADAPTER_TARGETS, "leave no layer"),
    ("exclude_modules", "(a|a)*$", "never a pattern"),
    ("rank_pattern", {"(a+)+$": 8}, "patterns are not read"),
    ("rank_pattern", {"to_q": 2**21}, "rank is an integer"),
    ("rank_pattern", [1], "a mapping of at most"),
    ("alpha_pattern", {"to_q": float("nan")}, "not a finite number"),
    ("use_rslora", "yes", "not true or false"),
    ("init_lora_weights", "pissa", "true, false or"),
    ("modules_to_save", ["proj_out"], "qconf loads plain LoRA adapters"),
    ("bias", "all", "qconf loads plain LoRA adapters"),
    ("use_dora", True, "qconf loads plain LoRA adapters"),
    ("lora_bias", 1, "qconf loads plain LoRA adapters"),
    ("megatron_core", "os", "qconf loads plain LoRA adapters"),
    ("megatron_config", {}, "qconf loads plain LoRA adapters"),
    ("layer_replication", [[0, 1]], "qconf loads plain LoRA adapters"),
    ("layers_to_transform", [0], "qconf loads plain LoRA adapters"),
    ("a_field_from_the_future", {"x": 1}, "qconf loads plain LoRA adapters"),
    ("peft_type", "LOHA", "not a LoRA adapter"),
]


@pytest.mark.parametrize(("field", "value", "match"), HOSTILE_SETTINGS,
                         ids=[f"{f}={str(v)[:20]}" for f, v, _ in HOSTILE_SETTINGS])  # fmt: skip
def test_adapter_settings_out_of_bounds_are_refused(
    adapter_pipeline: object, tmp_path: Path, field: str, value: object, match: str
) -> None:
    settings = {**_adapter_settings(), f"transformer.{field}": value}
    folder = _write_adapter(tmp_path / "lora", _adapter_tensors(adapter_pipeline), settings)
    _assert_adapter_refused(adapter_pipeline, folder, f"transformer.{field}|transformer\\)")
    _assert_adapter_refused(adapter_pipeline, folder, match)


def test_adapter_rank_must_match_the_tensors(adapter_pipeline: object, tmp_path: Path) -> None:
    # Within bounds but not what the file holds: refused from the header, before peft allocates.
    folder = _write_adapter(tmp_path / "lora", _adapter_tensors(adapter_pipeline, rank=4),
                            _adapter_settings(rank=1000))  # fmt: skip
    _assert_adapter_refused(adapter_pipeline, folder, r"has shape \[4, 64\].*\[1000, 64\]")


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        ({"__class__.r": 4, "__class__.target_modules": ["to_q"]}, "'__class__'|__class__\\)"),
        ({"tokenizer.r": 4, "tokenizer.target_modules": ["to_q"]}, "not a weight-bearing part"),
        ({"scheduler.r": 4, "scheduler.target_modules": ["to_q"]}, "not a weight-bearing part"),
        ({"__dict__.r": 4, "__dict__.target_modules": ["to_q"]}, "not a weight-bearing part"),
        ({"r": 4}, "is not '<part>.<setting>'"),
        ({"a b.r": 4}, "is not '<part>.<setting>'"),
        ({f"p{i}.r": 4 for i in range(9)}, "more than 8 parts"),
        ({"transformer.r": 4}, "has no target_modules"),
        ([1, 2], "not a JSON object"),
        ("transformer", "not a JSON object"),
    ],
)
def test_adapter_part_names_come_from_the_pipeline(
    adapter_pipeline: object, tmp_path: Path, settings: object, match: str
) -> None:
    folder = _write_adapter(tmp_path / "lora", _adapter_tensors(adapter_pipeline), settings)
    _assert_adapter_refused(adapter_pipeline, folder, match)


@pytest.mark.parametrize(
    ("metadata", "match"),
    [
        ({"format": "pt"}, "no LoRA config"),
        ({"lora_adapter_metadata": "{"}, "not valid JSON"),
        ({"lora_adapter_metadata": "[" * 5000 + "]" * 5000}, "nested"),
        ({"lora_adapter_metadata": '{"transformer.r": 1' + "0" * 5000 + "}"}, "too long"),
        ({"lora_adapter_metadata": " " * (2**20 + 1)}, "over qconf's limit"),
    ],
    ids=["none", "invalid", "deep", "long-int", "huge"],
)
def test_adapter_metadata_is_read_with_bounds(
    adapter_pipeline: object, tmp_path: Path, metadata: dict[str, str], match: str
) -> None:
    folder = _write_adapter(tmp_path / "lora", _adapter_tensors(adapter_pipeline),
                            metadata=metadata)  # fmt: skip
    _assert_adapter_refused(adapter_pipeline, folder, match)


def test_adapter_metadata_that_is_not_a_mapping_is_refused(
    adapter_pipeline: object, tmp_path: Path
) -> None:
    for metadata in ([1, 2], {"lora_adapter_metadata": {"transformer.r": 4}}, "x"):
        folder = _raw_adapter(tmp_path / "lora", {"__metadata__": metadata})
        _assert_adapter_refused(adapter_pipeline, folder, "not a mapping of strings")


def test_adapter_tensors_must_be_the_lora_layers_of_the_model(
    adapter_pipeline: object, tmp_path: Path
) -> None:
    import torch

    good, settings = _adapter_tensors(adapter_pipeline), _adapter_settings()
    first = next(iter(good))
    cases = [
        ({**good, "transformer.nowhere.lora_A.weight": torch.zeros(4, 64)}, "match no LoRA layer"),
        ({k: v for k, v in good.items() if k != first}, "1 LoRA tensors are missing"),
        ({**good, "text_encoder.x.lora_A.weight": torch.zeros(1)}, "no LoRA config for it"),
        ({**good, "__class__.x.lora_A.weight": torch.zeros(1)}, "no LoRA config for it"),
        ({**good, "transformer.x\n.lora_A.weight": torch.zeros(1)}, "tensor name .* is not"),
        ({**good, "transformer.x y.lora_A.weight": torch.zeros(1)}, "tensor name .* is not"),
        ({**good, first: good[first].long()}, 'dtype "I64"'),
        ({**good, first: good[first].to(torch.float8_e4m3fn)}, 'dtype "F8_E4M3"'),
        ({**good, first: torch.full_like(good[first], float("nan"))}, "NaN or infinite"),
        ({**good, first: torch.full_like(good[first], float("inf"))}, "NaN or infinite"),
        ({**good, first: torch.zeros(4, 65)}, r"has shape \[4, 65\]"),
    ]
    for i, (tensors, match) in enumerate(cases):
        folder = _write_adapter(tmp_path / f"lora{i}", tensors, settings)
        _assert_adapter_refused(adapter_pipeline, folder, match)


def test_adapter_tensor_count_is_bounded(adapter_pipeline: object, tmp_path: Path) -> None:
    import torch

    many = {f"transformer.t{i}.lora_A.weight": torch.zeros(1) for i in range(20_001)}
    folder = _write_adapter(tmp_path / "lora", many, _adapter_settings())
    _assert_adapter_refused(adapter_pipeline, folder, "20,001 tensors, over qconf's limit")


def test_adapter_header_shapes_never_size_anything(
    adapter_pipeline: object, tmp_path: Path
) -> None:
    # A header may claim any shape over 4 bytes of data: it is compared, never allocated.
    import json

    header = {"__metadata__": {"lora_adapter_metadata": json.dumps(_adapter_settings())},
              "transformer.transformer_blocks.0.attn.to_q.lora_A.weight":
              {"dtype": "F32", "shape": [2**40, 2**40], "data_offsets": [0, 4]}}  # fmt: skip
    folder = _raw_adapter(tmp_path / "lora", header, b"\0" * 4)
    _assert_adapter_refused(adapter_pipeline, folder, "shape|missing")


def test_adapter_file_must_be_a_regular_file_under_the_cap(
    adapter_pipeline: object, tmp_path: Path
) -> None:
    from qconf.train.adapter_file import MAX_ADAPTER_BYTES

    name = "pytorch_lora_weights.safetensors"
    _assert_adapter_refused(adapter_pipeline, tmp_path / "absent", f"no {name} here")
    fifo = tmp_path / "fifo"
    fifo.mkdir()
    os.mkfifo(fifo / name)  # opening it for reading would block forever
    done: list[BaseException] = []

    def load() -> None:
        try:
            _assert_adapter_refused(adapter_pipeline, fifo, "not a regular file")
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            done.append(exc)
        else:
            done.append(None)

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(30)
    assert done == [None], done
    device = tmp_path / "device"
    device.mkdir()
    (device / name).symlink_to("/dev/zero")
    _assert_adapter_refused(adapter_pipeline, device, "not a regular file")
    folder = tmp_path / "folder"
    (folder / name).mkdir(parents=True)
    _assert_adapter_refused(adapter_pipeline, folder, "not a regular file")
    huge = tmp_path / "huge"
    huge.mkdir()
    with open(huge / name, "wb") as handle:
        handle.truncate(MAX_ADAPTER_BYTES + 1)  # sparse: no disk used
    _assert_adapter_refused(adapter_pipeline, huge, "over qconf's limit of 2,147,483,648")
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / name).write_bytes(b"\xff" * 8 + b"{}")
    _assert_adapter_refused(adapter_pipeline, truncated, "bad header length")


# --- the intake: plan files, model folders, containers (issue 20) ---


def _evil_pipeline_folder(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny-flux copy whose model_index names its own pipeline file; importing it makes the
    marker file."""
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
    index["_class_name"] = ["pipeline_evil", "EvilPipeline"]
    (folder / "model_index.json").write_text(json.dumps(index))
    return folder, marker


@pytest.mark.parametrize("command", ["validate", "show", "estimate", "sensitivity", "tune"])
def test_a_plan_file_cannot_trust_remote_code_for_any_command(
    command: str, tmp_path: Path, qconf_cache: Path
) -> None:
    folder, marker = _evil_pipeline_folder(tmp_path)
    plan = write(
        tmp_path / "plan.yaml",
        f"model:\n  source: {folder}\n  trust_remote_code: true\n  allow_pickle: true\n",
    )
    extra = ["budget=1GiB"] if command == "tune" else []
    result = run_cli(command, "--plan", str(plan), *extra, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "model.trust_remote_code" in result.stderr and "plan file" in result.stderr
    assert all(line.startswith("error: ") for line in result.stderr.strip().splitlines())
    assert not marker.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "plan.yaml"]


def _auto_map_folder(tmp_path: Path) -> tuple[Path, Path]:
    import json
    import shutil

    from qconf.source.tiny import tiny_pipeline_path

    folder = tmp_path / "model"
    shutil.copytree(tiny_pipeline_path("tiny-flux"), folder)
    marker = tmp_path / "marker"
    (folder / "text_encoder" / "evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
    )
    config_file = folder / "text_encoder" / "config.json"
    config = json.loads(config_file.read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}
    config_file.write_text(json.dumps(config))
    return folder, marker


def test_estimate_folder_applies_the_model_folder_checks(tmp_path: Path, qconf_cache: Path) -> None:
    folder, marker = _auto_map_folder(tmp_path)
    result = subprocess.run(
        [*QCONF, "estimate", "--folder", str(folder), "model=tiny-flux"],
        capture_output=True, text=True, cwd=tmp_path, input="y\ny\n", timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "--folder" in result.stderr and "auto_map" in result.stderr
    assert "Traceback" not in result.stderr
    assert not marker.exists()
    # typed, the flag is the user's own choice: then the folder is read (no prompt, no hang)
    result = run_cli("estimate", "--folder", str(folder), "model=tiny-flux",
                     "model.trust_remote_code=true", cwd=tmp_path)  # fmt: skip
    assert "auto_map" not in result.stderr


def _fifo(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("name", ["model_index.json", "transformer/config.json",
                                  "transformer/diffusion_pytorch_model.safetensors",
                                  "vae/extra.bin"])  # fmt: skip
@pytest.mark.parametrize("command", ["validate", "estimate", "load"])
def test_special_files_in_a_model_folder_end_quickly(
    name: str, command: str, tmp_path: Path, qconf_cache: Path
) -> None:
    import shutil

    from qconf.source.tiny import tiny_pipeline_path

    folder = tmp_path / "model"
    shutil.copytree(tiny_pipeline_path("tiny-flux"), folder)
    _fifo(folder / name)
    result = run_cli(command, f"model.source={folder}", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "not a regular file" in result.stderr


def test_a_fifo_in_the_hub_cache_ends_quickly(tmp_path: Path) -> None:
    snapshot = tmp_path / "hub" / "models--evil--model" / "snapshots" / "abc"
    _fifo(snapshot / "model_index.json")
    for command in ("validate", "estimate"):
        result = run_cli(command, "model.source=evil/model", cwd=tmp_path,
                         env={"HF_HUB_CACHE": str(tmp_path / "hub")})  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert "not a regular file" in result.stderr


def test_a_model_index_with_hundreds_of_parts_is_refused_before_reading_them(
    tmp_path: Path,
) -> None:
    import json

    folder = tmp_path / "model"
    folder.mkdir()
    index = {"_class_name": "FluxPipeline", "_diffusers_version": "0.42.1"}
    index.update({f"part_{i}": ["diffusers", "AutoencoderKL"] for i in range(800)})
    (folder / "model_index.json").write_text(json.dumps(index))
    result = run_cli("estimate", f"model.source={folder}", cwd=tmp_path)
    assert result.returncode == 2 and "800 parts" in result.stderr


def test_a_folder_with_too_many_entries_is_refused(tmp_path: Path, qconf_cache: Path) -> None:
    import shutil

    from qconf.source.model import MAX_FOLDER_ENTRIES
    from qconf.source.tiny import tiny_pipeline_path

    folder = tmp_path / "model"
    shutil.copytree(tiny_pipeline_path("tiny-flux"), folder)
    for i in range(MAX_FOLDER_ENTRIES + 1):
        (folder / "vae" / f"f{i}").touch()
    with pytest.raises(qconf.QconfError, match="more than"):
        qconf.intake(model={"source": str(folder)})


SECRET = "hunter2-never-on-disk"


@pytest.mark.parametrize(
    "shape",
    [
        lambda cfg: {"model": cfg.model, "quant": cfg.quant},
        lambda cfg: {"model": cfg.model, "quant": {"mapping": cfg.quant.mapping}},
        lambda cfg: {"model": OmegaConf.create({"source": "tiny-flux"}), "run": cfg.run},
        lambda cfg: cfg,
    ],
)
def test_environment_values_never_enter_a_plan_whatever_the_container(
    shape: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QCONF_SECRET", SECRET)
    cfg = OmegaConf.create(
        {
            "model": {"source": "tiny-flux", "pipeline": "${oc.env:QCONF_SECRET}"},
            "quant": {"mapping": {"transformer": "${oc.env:QCONF_SECRET}"}},
            "run": {"prompt": "${oc.env:QCONF_SECRET}"},
        }
    )
    with pytest.raises(qconf.PlanError) as caught:
        qconf.intake(shape(cfg))  # type: ignore[operator]
    assert SECRET not in str(caught.value)
    assert "oc.env" in str(caught.value)
    with pytest.raises(qconf.PlanError):
        qconf.load(model=cfg.model, quant=cfg.quant)


def test_load_as_a_hydra_target_takes_the_same_intake(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QCONF_SECRET", SECRET)
    node = OmegaConf.create({"source": "tiny-flux", "torch_dtype": "${oc.env:QCONF_SECRET}"})
    with pytest.raises(qconf.PlanError, match="oc.env"):
        qconf.load_pipeline(model=node)


def test_the_source_is_read_once_per_load(tmp_path: Path, qconf_cache: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """model_index.json and each part's config.json are read by qconf once per load."""
    import shutil

    from qconf.source import files
    from qconf.source.tiny import tiny_pipeline_path

    folder = tmp_path / "model"
    shutil.copytree(tiny_pipeline_path("tiny-flux"), folder)
    reads: list[str] = []
    original = files.read_regular

    def counting(path: Path | str, *args: object, **kwargs: object) -> bytes:
        reads.append(str(path))
        return original(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(files, "read_regular", counting)
    with qconf.quiet():
        qconf.load(model={"source": str(folder)}, quant={"mapping": {"transformer": "int8wo"}})
    assert reads.count(str(folder / "model_index.json")) == 1
    configs = [r for r in reads if r.endswith("config.json")]
    assert len(configs) == len(set(configs)), configs


# --- compare DIR (issue 20) ---
# A run folder given to `qconf compare DIR` is someone else's: every hostile shape ends in one
# `error:` line with exit code 2 (or is shown as text), quickly, and leaves no compare.* behind.


def _cmp_png(path: Path, size: tuple[int, int] = (16, 16), colour: int = 40) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (colour, 20, 30)).save(path)
    return path


def _cmp_report(images: list[dict[str, object]], overrides: list[str] | None = None,
                **changes: object) -> dict[str, object]:  # fmt: skip
    report: dict[str, object] = {
        "load_seconds": 0.5,
        "components": {
            "transformer": {"backend": "torchao", "bytes": 100, "bytes_unquantized": 200}
        },  # fmt: skip
        "total_bytes": 100,
        "total_bytes_unquantized": 200,
        "run": {
            "overrides": overrides,
            "images": images,
            "seconds_per_image": 0.1,
            "peak_memory_bytes": 1000,
            "peak_memory_kind": "rss",
        },  # fmt: skip
    }
    report.update(changes)
    return report


def _cmp_run(
    sweep: Path,
    name: str,
    overrides: list[str] | None = None,
    images: int = 1,
    size: tuple[int, int] = (16, 16),
    prompt: str = "a cat",
    **changes: object,
) -> Path:
    """A hand-made `qconf run` folder: report.json and its PNGs (no pipeline is loaded)."""
    import json

    folder = sweep / name
    listed = []
    for index in range(images):
        _cmp_png(folder / f"image-{index:03d}.png", size, colour=40 + len(name))
        listed.append({"file": f"image-{index:03d}.png", "prompt": prompt, "seed": index,
                       "seconds": 0.1})  # fmt: skip
    report = _cmp_report(listed, [f"quant.mapping.transformer=opt{name}"] if overrides is None
                         else overrides, **changes)  # fmt: skip
    (folder / "report.json").write_text(json.dumps(report))
    return folder


def _cmp_sweep(tmp_path: Path, runs: int = 2, **kwargs: object) -> Path:
    sweep = tmp_path / "sweep"
    _cmp_run(sweep, "baseline", [], **kwargs)  # type: ignore[arg-type]
    for index in range(runs):
        _cmp_run(sweep, str(index), **kwargs)  # type: ignore[arg-type]
    return sweep


def _cmp_outputs(sweep: Path) -> list[str]:
    return sorted(p.name for p in sweep.iterdir() if p.name.startswith(("compare", "pareto")))


def _cmp_refused(sweep: Path, capsys: pytest.CaptureFixture[str], *message: str) -> str:
    """`qconf compare sweep` in this process: exit 2, one error line holding `message`, in
    seconds, and no compare.* / pareto.png written."""
    capsys.readouterr()
    started = time.monotonic()
    code = main(["compare", str(sweep)])
    elapsed = time.monotonic() - started
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert all(part in err for part in message), err
    assert elapsed < 20, elapsed
    assert _cmp_outputs(sweep) == []
    return err


def _cmp_ok(sweep: Path, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    started = time.monotonic()
    code = main(["compare", str(sweep)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert time.monotonic() - started < 30
    return err


def test_compare_refuses_one_colour_image_bombs_from_the_header(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = _cmp_sweep(tmp_path, size=(4096, 4096))  # ~50 KB files, 200 MB each decoded
    assert (sweep / "0" / "image-000.png").stat().st_size < 200_000
    _cmp_refused(sweep, capsys, "is 4096x4096 pixels", "qconf compare compares images of")


def test_compare_refuses_a_png_header_past_pils_bomb_bound(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    sweep = _cmp_sweep(tmp_path)
    header = struct.pack(">IIBBBBB", 60_000, 60_000, 8, 2, 0, 0, 0)  # 3.6 G pixels claimed
    (sweep / "0" / "image-000.png").write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b"")
    )  # fmt: skip
    _cmp_refused(sweep, capsys, "image-000.png", "not a readable PNG", "DecompressionBomb")


def test_compare_bounds_the_pixels_of_the_whole_sweep_before_decoding(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from qconf.compare.folders import MAX_TOTAL_PIXELS

    sweep = tmp_path / "sweep"
    one = _cmp_png(tmp_path / "big.png", (2048, 2048)).read_bytes()  # at the per-image limit
    count = MAX_TOTAL_PIXELS // (2048 * 2048) + 1
    _cmp_run(sweep, "baseline", [], images=1)
    _cmp_run(sweep, "0", images=count)
    for index in range(count):
        (sweep / "0" / f"image-{index:03d}.png").write_bytes(one)
    _cmp_refused(sweep, capsys, "pixels, over qconf compare's limit")


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ("runs", "run folders, over qconf compare's limit"),
        ("images", "images, over"),
        ("entries", "entries"),
        ("parts", "distinct part names"),
    ],  # fmt: skip
)
def test_compare_counts_runs_images_and_entries_before_reading_images(
    shape: str, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from qconf.compare.folders import MAX_ENTRIES, MAX_IMAGES, MAX_PARTS, MAX_RUNS

    sweep = _cmp_sweep(tmp_path)
    if shape == "runs":  # folders with a report: counted before any report is read
        for index in range(MAX_RUNS + 1):
            write(sweep / str(100 + index) / "report.json", "{}")
    elif shape == "images":  # reports listing images that do not exist: never opened
        listed = [{"file": f"image-{i:03d}.png", "prompt": "p", "seed": i, "seconds": 0.1}
                  for i in range(256)]  # fmt: skip
        for index in range(MAX_IMAGES // 256 + 1):
            write(sweep / str(10 + index) / "report.json", json.dumps(_cmp_report(listed)))
    elif shape == "entries":
        for index in range(MAX_ENTRIES + 1):
            (sweep / f"junk-{index}").touch()
    else:
        for index in range(MAX_PARTS // 50 + 1):
            parts = {f"part{index}_{n}": {"backend": None, "bytes": 1, "bytes_unquantized": 1}
                     for n in range(50)}  # fmt: skip
            _cmp_run(sweep, str(10 + index), components=parts)
    _cmp_refused(sweep, capsys, message)


def test_compare_cuts_long_labels_once_and_bounds_the_markdown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    from qconf.compare.folders import MAX_LABEL

    sweep = _cmp_sweep(tmp_path, images=4, prompt="p" * 9_000)
    for index in range(2):
        _cmp_run(sweep, str(index), [f"x={'y' * 9_000}{index}"] * 50, images=4,
                 prompt="p" * 9_000)  # fmt: skip
    _cmp_ok(sweep, capsys)
    markdown = (sweep / "compare.md").read_text()
    assert len(markdown) < 60_000  # 3 runs x 6 rows x (label + prompt), each cut to 300
    runs = json.loads((sweep / "compare.json").read_text())["runs"]
    assert all(len(run["label"]) <= MAX_LABEL for run in runs)
    assert runs[1]["label"].endswith("…")


def test_compare_grid_shows_a_bounded_corner_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    from qconf.compare.figures import DPI, MAX_GRID_COLUMNS, MAX_GRID_ROWS

    sweep = _cmp_sweep(tmp_path, runs=MAX_GRID_ROWS + 2, images=MAX_GRID_COLUMNS + 3, size=(8, 8))
    err = _cmp_ok(sweep, capsys)
    assert f"the first {MAX_GRID_ROWS} of {MAX_GRID_ROWS + 3} plans" in err
    assert f"the first {MAX_GRID_COLUMNS} of {MAX_GRID_COLUMNS + 3} prompt/seed" in err
    assert "compare.png shows the first" in (sweep / "compare.md").read_text()
    with Image.open(sweep / "compare.png") as grid:
        assert grid.width <= (2.2 + 1.9 * MAX_GRID_COLUMNS) * DPI + 1
        assert grid.height <= (0.9 + 1.9 * MAX_GRID_ROWS) * DPI + 1


HOSTILE_MARKDOWN = ("_x_ __b__ *e* ~~y~~ http://evil.example www.evil.example a@b.example "
                    "<b>x</b> &lt; [l](http://u) ![i](http://i) | `c` \\| # $x$ :+1:")  # fmt: skip


def test_compare_markdown_renders_nothing_from_the_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("linkify_it")  # markdown-it's GitHub-like autolinks
    from markdown_it import MarkdownIt

    sweep = tmp_path / "sweep"
    _cmp_run(sweep, "baseline", [], prompt=HOSTILE_MARKDOWN)
    parts = {HOSTILE_MARKDOWN[:100]: {"backend": HOSTILE_MARKDOWN[:100], "bytes": 1,
                                      "bytes_unquantized": 1}}  # fmt: skip
    run = {"overrides": [HOSTILE_MARKDOWN], "seconds_per_image": 0.1, "peak_memory_bytes": 1,
           "peak_memory_kind": "*k* <i>", "images": [{"file": "image-000.png",
           "prompt": HOSTILE_MARKDOWN, "seed": 0, "seconds": 0.1}]}  # fmt: skip
    _cmp_run(sweep, "0", [HOSTILE_MARKDOWN], prompt=HOSTILE_MARKDOWN, components=parts, run=run)
    _cmp_ok(sweep, capsys)
    html = MarkdownIt("gfm-like").render((sweep / "compare.md").read_text())
    for tag in ("<a ", "<em>", "<strong>", "<s>", "<del>", "<img", "<b>", "<i>", "<h3", "<h4"):
        assert tag not in html, tag
    assert html.count("<code>") == 1  # the reference's folder name, written by qconf
    for table in html.split("<table>")[1:]:  # every row keeps its columns: no `|` got through
        head, body = table.split("</thead>")[0], table.split("<tbody>")[1].split("</tbody>")[0]
        header = head.count("<th>") + head.count("<th ")
        rows = body.split("<tr>")[1:]
        assert rows and all(row.count("<td") == header for row in rows)
    assert "http://evil.example www.evil.example a@b.example" in html  # shown as text


def test_markdown_text_escapes_every_inline_construct() -> None:
    from qconf.text import markdown_text

    assert markdown_text("_a_ ~~b~~") == "\\_a\\_ \\~\\~b\\~\\~"
    assert markdown_text("http://x www.y WWW.z a@b") == "http\\://x www\\.y WWW\\.z a\\@b"
    assert markdown_text("<b>|`c`|&amp;") == "\\<b\\>\\|\\`c\\`\\|\\&amp;"
    assert markdown_text("\x1b[31m\n") == "\\\\x1b\\[31m\\\\n"


@pytest.mark.parametrize("kind", ["report", "image", "overrides", "folder"])
def test_compare_refuses_links_out_of_the_folder(
    kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    sweep = _cmp_sweep(tmp_path)
    secret = tmp_path / "secret"
    _cmp_run(secret, "0", ["SECRET=1"], prompt="SECRET")
    write(secret / "0" / ".hydra" / "overrides.yaml", "- SECRET=1\n")
    target = {"report": ("0/report.json", secret / "0" / "report.json"),
              "image": ("0/image-000.png", secret / "0" / "image-000.png"),
              "overrides": ("0/.hydra/overrides.yaml", secret / "0" / ".hydra" / "overrides.yaml"),
              "folder": ("1", secret / "0")}[kind]  # fmt: skip
    if kind == "overrides":  # the record is read when the report has no overrides
        report = json.loads((sweep / "0" / "report.json").read_text())
        report["run"]["overrides"] = None
        (sweep / "0" / "report.json").write_text(json.dumps(report))
        (sweep / "0" / ".hydra").mkdir()
    link = sweep / target[0]
    if link.is_dir():
        import shutil

        shutil.rmtree(link)
    else:
        link.unlink(missing_ok=True)
    link.symlink_to(target[1])
    _cmp_refused(sweep, capsys, "leads outside the sweep folder through a link")


def test_compare_follows_links_that_stay_inside_the_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = _cmp_sweep(tmp_path)
    image = sweep / "1" / "image-000.png"
    image.unlink()
    image.symlink_to(sweep / "baseline" / "image-000.png")
    _cmp_ok(sweep, capsys)
    assert _cmp_outputs(sweep) == ["compare.json", "compare.md", "compare.png", "pareto.png"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize("name", ["0/report.json", "0/image-000.png"])
def test_compare_refuses_fifos_without_blocking(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = _cmp_sweep(tmp_path)
    (sweep / name).unlink()
    os.mkfifo(sweep / name)
    _cmp_refused(sweep, capsys, "not a regular file")


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("0/report.json", b" " * (4 * 2**20 + 1), "over qconf's limit"),
        ("0/report.json", b'{"load_seconds": "\xff\xfe"}', "not UTF-8"),
        ("0/report.json", b"[" * 100_000, "nested too deeply"),
        ("0/image-000.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "not a readable PNG"),
        ("0/image-000.png", b"\0" * (24 * 2**20 + 1), "over qconf's limit"),
        ("0/.hydra/overrides.yaml", b"- a\n" * 20_000, "over qconf's limit"),
    ],
    ids=["huge-report", "not-utf8", "deep-json", "garbage-png", "huge-png", "huge-overrides"],
)
def test_compare_refuses_malformed_files_in_one_line(
    name: str, content: bytes, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    sweep = _cmp_sweep(tmp_path)
    if "overrides" in name:
        report = json.loads((sweep / "0" / "report.json").read_text())
        report["run"]["overrides"] = None
        (sweep / "0" / "report.json").write_text(json.dumps(report))
    path = sweep / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(content)
    _cmp_refused(sweep, capsys, name.split("/")[-1], message)


def test_compare_shows_control_characters_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    sweep = _cmp_sweep(tmp_path)
    report = json.loads((sweep / "0" / "report.json").read_text())
    report["run"]["overrides"] = None  # the label comes from Hydra's record: not UTF-8
    report["run"]["peak_memory_kind"] = "\x1b[2J"
    report["run"]["images"][0]["prompt"] = "a \u202e cat\n"
    report["components"] = {"t\x1b": report["components"]["transformer"]}
    (sweep / "0" / "report.json").write_text(json.dumps(report))
    write(sweep / "0" / ".hydra" / "overrides.yaml", "")
    (sweep / "0" / ".hydra" / "overrides.yaml").write_bytes(b"- \xff\xfe\n")
    _cmp_ok(sweep, capsys)
    markdown = (sweep / "compare.md").read_text(encoding="utf-8")
    assert "\\\\x1b" in markdown and "\\\\u202e" in markdown
    assert not any(char in markdown for char in "\x1b\u202e")
    assert "job 0" in markdown  # the unreadable record falls back to the folder name


def test_compare_refuses_lone_surrogates_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    sweep = _cmp_sweep(tmp_path)
    report = json.loads((sweep / "0" / "report.json").read_text())
    report["components"] = {"t\ud800": report["components"]["transformer"]}
    (sweep / "0" / "report.json").write_text(json.dumps(report))
    _cmp_refused(sweep, capsys, "report.json", "valid string")


def test_compare_writes_all_outputs_or_none(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep = _cmp_sweep(tmp_path)
    (sweep / "pareto.png").mkdir()  # the last output cannot be written
    capsys.readouterr()
    assert main(["compare", str(sweep)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert _cmp_outputs(sweep) == ["pareto.png"]  # compare.md and .json were not written
    (sweep / "pareto.png").rmdir()
    outside = write(tmp_path / "yours.md", "keep")
    (sweep / "compare.md").symlink_to(outside)  # a planted link is replaced, not followed
    _cmp_ok(sweep, capsys)
    assert outside.read_text() == "keep" and not (sweep / "compare.md").is_symlink()


def test_compare_of_a_hostile_folder_runs_in_a_fresh_process_without_traceback(
    tmp_path: Path,
) -> None:
    sweep = _cmp_sweep(tmp_path, size=(4096, 4096))
    result = run_cli("compare", str(sweep), cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("error: ") and "4096x4096" in result.stderr


# --- estimate bounds and sizes (issue 20) ---


def _est_folder(tmp_path: Path, name: str = "pipe") -> Path:
    """tiny-flux as config files only: model_index.json and each part's config.json."""
    import shutil

    from qconf.source.tiny import tiny_pipeline_path

    source, folder = tiny_pipeline_path("tiny-flux"), tmp_path / name
    folder.mkdir()
    shutil.copy(source / "model_index.json", folder)
    for config in source.glob("*/config.json"):
        (folder / config.parent.name).mkdir()
        shutil.copy(config, folder / config.parent.name)
    return folder


def _est_edit(file: Path, **values: object) -> None:
    import json

    data = json.loads(file.read_text())
    data.update(values)
    file.write_text(json.dumps(data))


def _est_one_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    started = time.monotonic()
    code = main(args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert time.monotonic() - started < 30
    return lines[0]


@pytest.fixture
def _est_nothing_built(monkeypatch: pytest.MonkeyPatch) -> None:
    """The static checks refuse before any module is built."""
    from qconf.estimate import sources

    def built(*_: object) -> None:
        raise AssertionError("a module was built")

    monkeypatch.setattr(sources, "_on_meta", built)


@pytest.mark.parametrize(
    ("part", "key", "value", "said"),
    [
        ("transformer", "num_layers", 200_000, "over qconf's limit of 256"),
        ("transformer", "num_layers", True, "not a whole number"),
        ("transformer", "num_single_layers", 2.0, "not a whole number"),
        ("transformer", "joint_attention_dim", -5, "negative"),
        ("transformer", "joint_attention_dim", 10**30, "over qconf's limit"),
        ("transformer", "joint_attention_dim", 10**200, "about 10^200"),
        ("transformer", "patch_size", 0, "not a positive size"),
        ("text_encoder", "hidden_size", "768", "not a whole number"),
        ("text_encoder", "hidden_size", 1e9, "not a whole number"),
        ("text_encoder", "vocab_size", 0, "not a positive size"),
        ("text_encoder", "num_attention_heads", -1, "negative"),
        ("vae", "block_out_channels", [32, -64], "negative"),
        ("vae", "block_out_channels", [32] * 300, "lists 300 values"),
        ("text_encoder_2", "num_heads", 100_000, "over qconf's limit"),
        ("text_encoder_2", "some_seed", 2**60, "over qconf's limit"),
    ],
)
def test_estimate_refuses_config_values_before_building(
    part: str,
    key: str,
    value: object,
    said: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    _est_nothing_built: None,
) -> None:
    folder = _est_folder(tmp_path)
    _est_edit(folder / part / "config.json", **{key: value})
    line = _est_one_error(["estimate", "--folder", str(folder), "model=tiny-flux"], capsys)
    assert f"{folder / part / 'config.json'} ({key})" in line and said in line, line


def test_estimate_refuses_implied_layers_and_parameters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], _est_nothing_built: None
) -> None:
    folder = _est_folder(tmp_path)
    # each count in range, together more layers than a part builds
    _est_edit(folder / "transformer" / "config.json", num_layers=256, num_single_layers=256,
              num_refiner_layers=256)  # fmt: skip
    line = _est_one_error(["estimate", "--folder", str(folder), "model=tiny-flux"], capsys)
    assert "transformer/config.json" in line and "layer counts add up to 768" in line
    # each width in range, together a model of 1e14 parameters
    _est_edit(folder / "transformer" / "config.json", num_layers=200, num_single_layers=0,
              num_refiner_layers=0, joint_attention_dim=2**20,
              pooled_projection_dim=2**20)  # fmt: skip
    line = _est_one_error(["estimate", "--folder", str(folder), "model=tiny-flux"], capsys)
    assert "transformer/config.json" in line and "parameters" in line


def test_pipeline_layer_total_and_part_count_are_bounded(tmp_path: Path) -> None:
    from qconf.errors import ModelSourceError
    from qconf.source.limits import MAX_PARTS, check_part_count, check_pipeline_configs

    deep = {"num_hidden_layers": 200, "hidden_size": 64}
    check_pipeline_configs({f"p{i}": deep for i in range(5)}, tmp_path)  # 1000 layers
    with pytest.raises(ModelSourceError, match="add up to 1,200"):
        check_pipeline_configs({f"p{i}": deep for i in range(6)}, tmp_path)
    with pytest.raises(ModelSourceError, match="model_index.json: lists 800 parts"):
        check_part_count(800, tmp_path)
    check_part_count(MAX_PARTS, tmp_path)


def test_a_model_index_with_800_parts_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], _est_nothing_built: None
) -> None:
    folder = _est_folder(tmp_path)
    _est_edit(folder / "model_index.json",
              **{f"vae_{i}": ["diffusers", "AutoencoderKL"] for i in range(800)})  # fmt: skip
    line = _est_one_error(["estimate", "--folder", str(folder), "model=tiny-flux"], capsys)
    assert "model_index.json" in line and "800" in line


def test_every_shipped_snapshot_and_tiny_pipeline_is_within_the_bounds() -> None:
    from qconf.estimate.snapshots import shipped
    from qconf.source.limits import check_folder
    from qconf.source.tiny import tiny_pipeline_path

    for folder in shipped().values():
        check_folder(folder)
    check_folder(tiny_pipeline_path("tiny-flux"))  # config files and weights


def test_check_folder_reads_configs_through_the_bounded_reader(tmp_path: Path) -> None:
    from qconf.errors import ModelSourceError
    from qconf.source.limits import MAX_CONFIG_BYTES, check_folder

    folder = _est_folder(tmp_path)
    config = folder / "vae" / "config.json"
    config.unlink()
    os.mkfifo(config)  # a library's open() would wait for a writer forever
    with pytest.raises(ModelSourceError, match="not a regular file"):
        check_folder(folder)
    config.unlink()
    config.write_text('{"a": "' + "x" * MAX_CONFIG_BYTES + '"}')
    with pytest.raises(ModelSourceError, match="over qconf's limit"):
        check_folder(folder)


def _est_safetensors(file: Path, shape: list[int]) -> None:
    import json
    import struct

    header = {"transformer_blocks.0.attn.to_q.weight": {"dtype": "F32", "shape": shape,
                                                       "data_offsets": [0, 0]}}  # fmt: skip
    text = json.dumps(header).encode()
    file.write_bytes(struct.pack("<Q", len(text)) + text)


@pytest.mark.parametrize(("shape", "said"), [([0, 64], "cannot be"), ([64], "cannot be"),
                                             ([-1, 64], "malformed")])  # fmt: skip
def test_a_hostile_safetensors_shape_is_one_line(
    shape: list[int], said: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _est_folder(tmp_path)
    _est_safetensors(folder / "transformer" / "diffusion_pytorch_model.safetensors", shape)
    line = _est_one_error(["estimate", "--folder", str(folder), "model=tiny-flux",
                           "quant.mapping.transformer=int8wo"], capsys)  # fmt: skip
    assert "transformer" in line and said in line, line


def test_safetensors_files_and_header_bytes_are_bounded(tmp_path: Path) -> None:
    import struct

    from qconf.errors import ModelSourceError
    from qconf.source.limits import MAX_HEADER_BYTES, MAX_SHARDS, check_weight_headers

    part = tmp_path / "transformer"
    part.mkdir()
    for i in range(MAX_SHARDS + 1):
        _est_safetensors(part / f"model-{i:05d}-of-99999.safetensors", [64, 64])
    with pytest.raises(ModelSourceError, match=f"holds {MAX_SHARDS + 1} .safetensors files"):
        check_weight_headers(part)
    for file in list(part.iterdir())[2:]:
        file.unlink()
    check_weight_headers(part)
    for file in part.iterdir():  # two headers that claim 40 MiB each (read: 8 bytes)
        file.write_bytes(struct.pack("<Q", MAX_HEADER_BYTES * 5 // 8))
    with pytest.raises(ModelSourceError, match="headers hold over"):
        check_weight_headers(part)


def test_the_build_itself_is_capped_for_what_key_names_do_not_show(tmp_path: Path) -> None:
    import torch

    from qconf.errors import ModelSourceError
    from qconf.estimate.sources import meta_model
    from qconf.source.limits import pipeline_budget

    folder = _est_folder(tmp_path)
    with pipeline_budget(50), pytest.raises(ModelSourceError, match="registers over 50"):
        meta_model(folder, "vae", "diffusers", "AutoencoderKL", torch.float32)
    with pipeline_budget():  # the real one is well inside the cap
        meta_model(folder, "vae", "diffusers", "AutoencoderKL", torch.float32)


def test_a_huge_layer_count_ends_quickly_in_a_fresh_process(tmp_path: Path) -> None:
    folder = _est_folder(tmp_path)
    _est_edit(folder / "transformer" / "config.json", num_layers=200_000)
    result = run_cli("estimate", "--folder", str(folder), "model=tiny-flux", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "num_layers" in result.stderr


@pytest.mark.parametrize(
    ("text", "size"),
    [("16GiB", 16 * 2**30), ("16 gib", 16 * 2**30), ("16G", 16 * 2**30), ("16", 16 * 2**30),
     ("16GB", 16 * 10**9), ("16B", 16), ("16KB", 16_000), ("16KiB", 16_384),
     ("1.5MB", 1_500_000), ("1.9MiB", int(1.9 * 2**20)), (".5G", 2**29), ("2TB", 2 * 10**12)],
)  # fmt: skip
def test_a_size_with_a_unit_means_that_unit(text: str, size: int) -> None:
    from qconf.estimate.presets import parse_size

    assert parse_size(text) == size


@pytest.mark.parametrize(
    "text",
    ["16XB", "16iB", "16bib", "nan", "inf", "-inf", "1e400", "1e3", "", " ", "-1", "-5GiB", "0",
     "0.0GiB", "0.1B", "+1G", "1,5G", "16 G B", "٣", "9" * 30, "1" * 100],
)  # fmt: skip
def test_a_size_that_is_not_one_is_a_plan_error(text: str) -> None:
    from qconf.errors import PlanError
    from qconf.estimate.presets import parse_size

    with pytest.raises(PlanError) as caught:
        parse_size(text, "--fits")
    assert len(caught.value.lines) == 1 and caught.value.lines[0].startswith("--fits: ")
    assert len(caught.value.lines[0]) < 200


@pytest.mark.parametrize("size", ["-5GiB", "16XB", "0", "nan", "1e400", "16 B B"])
def test_fits_and_budget_refuse_a_bad_size_in_one_line(
    size: str, capsys: pytest.CaptureFixture[str]
) -> None:
    line = _est_one_error(["list", "presets", f"--fits={size}"], capsys)
    assert line.startswith("error: --fits: "), line
    pytest.importorskip("torchmetrics")
    pytest.importorskip("matplotlib")
    line = _est_one_error(["tune", f"budget={size}", "model=tiny-flux"], capsys)
    assert line.startswith("error: budget: "), line


def test_compare_refuses_a_sweep_it_could_not_gather_before_any_job(tmp_path: Path) -> None:
    result = run_cli("compare", "model=tiny-flux", "quant.mapping.transformer=int8wo,int4wo",
                     "run.height=4096", "run.width=4096", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "16,777,216 pixels per image" in result.stderr
    assert list(tmp_path.iterdir()) == []  # no job ran, no folder was made


# --- found by the attack review of the intake (issue 20) ---


@pytest.mark.parametrize("value", ['"true"', "1", "yes", "on", "1.0", "'${oc.decode:\"1\"}'"])
def test_a_file_cannot_turn_on_trust_with_a_truthy_value(value: str, tmp_path: Path) -> None:
    plan = write(
        tmp_path / "plan.yaml", f"model:\n  source: tiny-flux\n  trust_remote_code: {value}\n"
    )
    conf = tmp_path / "conf"
    write(conf / "preset" / "evil.yaml",
          f"# @package _global_\nmodel:\n  allow_pickle: {value}\n")  # fmt: skip
    for call in (
        lambda: qconf.intake(plan_file=plan),
        lambda: qconf.intake(overrides=["preset=evil"], config_dir=conf),
    ):
        with pytest.raises(qconf.PlanError, match="it lets the model run code"):
            call()


def test_typed_trust_must_be_a_boolean() -> None:
    with pytest.raises(qconf.PlanError, match="trust_remote_code"):
        qconf.intake(model={"source": "tiny-flux", "trust_remote_code": "yes"})


@pytest.fixture
def hydra_app(tmp_path: Path):  # noqa: ANN201 - a running Hydra app's composed config
    """A user's Hydra app whose config file turns trust on and says where to save."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    conf = tmp_path / "app"
    write(conf / "app.yaml", "model:\n  source: tiny-flux\n  trust_remote_code: true\n"
          "pipe:\n  _target_: qconf.load_pipeline\n  save: " + str(tmp_path / "saved") +
          "\n  model:\n    source: tiny-flux\n    trust_remote_code: true\n")  # fmt: skip
    with initialize_config_dir(str(conf), version_base=None):
        cfg = compose("app", return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        yield cfg
        HydraConfig.instance().cfg = None


def test_a_hydra_apps_config_files_cannot_turn_on_trust(hydra_app, tmp_path: Path) -> None:  # noqa: ANN001
    with pytest.raises(qconf.PlanError, match="the app's config files"):
        qconf.intake(model=hydra_app.model)
    with pytest.raises(qconf.PlanError, match="the app's config files"):
        qconf.load_pipeline(model=hydra_app.model)
    with pytest.raises(qconf.PlanError) as caught:
        qconf.safe_instantiate(hydra_app.pipe)
    assert "may not say where qconf writes" in str(caught.value)
    assert "trust_remote_code" in str(caught.value)
    assert not (tmp_path / "saved").exists()


def test_safe_instantiate_never_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QCONF_SECRET", SECRET)
    model = {"source": "tiny-flux", "pipeline": "${oc.env:QCONF_SECRET}"}
    cfg = OmegaConf.create({"_target_": "qconf.load_pipeline", "model": model})
    with pytest.raises(qconf.PlanError) as caught:
        qconf.safe_instantiate(cfg)
    assert SECRET not in str(caught.value) and "QCONF_SECRET" in str(caught.value)


@pytest.mark.parametrize(
    "shape",
    [
        lambda node: __import__("types").MappingProxyType({"mapping": {"transformer": node}}),
        lambda node: __import__("collections").UserDict({"mapping": {"transformer": node}}),
        lambda node: {"mapping": {"transformer": {"backend": "torchao", "kwargs": {
            "quant_type": {"name": "Int8WeightOnlyConfig"}}, "skip": (s for s in node.skip)}}},
    ],
)  # fmt: skip
def test_environment_values_never_enter_through_odd_containers(
    shape: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("QCONF_SECRET", SECRET)
    node = OmegaConf.create({"backend": "torchao", "kwargs": {"quant_type": {
        "name": "Int8WeightOnlyConfig"}}, "skip": ["${oc.env:QCONF_SECRET}"]})  # fmt: skip
    with pytest.raises(qconf.PlanError) as caught:
        qconf.intake(model={"source": "tiny-flux"}, quant=shape(node))  # type: ignore[operator]
    assert SECRET not in str(caught.value)


def test_an_apps_own_resolvers_do_not_run_inside_a_plan() -> None:
    OmegaConf.register_new_resolver("qconf_test_getenv", lambda name: SECRET, replace=True)
    cfg = OmegaConf.create({"model": {"source": "tiny-flux"},
                            "run": {"prompt": "${qconf_test_getenv:X}"}})  # fmt: skip
    with pytest.raises(qconf.PlanError, match="resolver 'qconf_test_getenv'"):
        qconf.intake(cfg)
    assert OmegaConf.create({"a": "${qconf_test_getenv:X}"}).a == SECRET  # restored afterwards


def test_interpolation_chains_are_bounded_before_resolving(tmp_path: Path) -> None:
    lines = ["run:", "  k0: " + "x" * 6000]
    lines += [f"  k{i}: '" + ("${run.k" + str(i - 1) + "}") * 3 + "'" for i in range(1, 10)]
    plan = write(tmp_path / "plan.yaml", "model:\n  source: tiny-flux\n" + "\n".join(lines) + "\n")
    started = time.monotonic()
    with pytest.raises(qconf.PlanError, match="would resolve to more than"):
        qconf.intake(plan_file=plan)
    assert time.monotonic() - started < 10


def _copy_tiny(tmp_path: Path) -> Path:
    import shutil

    from qconf.source.tiny import tiny_pipeline_path

    folder = tmp_path / "model"
    shutil.copytree(tiny_pipeline_path("tiny-flux"), folder)
    return folder


def test_a_weight_index_may_not_point_outside_its_folder(tmp_path: Path, qconf_cache: Path) -> None:
    import json

    folder = _copy_tiny(tmp_path)
    outside = _fifo(tmp_path / "outside.safetensors")
    weights = folder / "text_encoder" / "model.safetensors"
    from safetensors import safe_open

    with safe_open(weights, "pt") as handle:
        keys = list(handle.keys())
    weights.unlink()
    index = {"metadata": {}, "weight_map": dict.fromkeys(keys, str(outside))}
    (folder / "text_encoder" / "model.safetensors.index.json").write_text(json.dumps(index))
    for command in ("validate", "load"):
        result = run_cli(command, f"model.source={folder}", cwd=tmp_path)
        assert result.returncode == 2 and "weight_map names" in result.stderr, result.stderr


def test_kernel_files_are_refused(tmp_path: Path, qconf_cache: Path) -> None:
    folder = _copy_tiny(tmp_path)
    (folder / "vae" / "config.json").unlink()
    (folder / "vae" / "config.json").symlink_to("/proc/self/status")
    result = run_cli("validate", f"model.source={folder}", cwd=tmp_path)
    assert result.returncode == 2 and "kernel file" in result.stderr


@pytest.mark.parametrize(
    "attack",
    ["loop", "long source", "long library", "model null", "hydra null", "automodel", "none.py"],
)
def test_odd_files_and_names_end_in_one_line(
    attack: str, tmp_path: Path, qconf_cache: Path
) -> None:
    import json

    folder = _copy_tiny(tmp_path)
    args = [f"model.source={folder}"]
    index_file = folder / "model_index.json"
    index = json.loads(index_file.read_text())
    if attack == "loop":
        (folder / "junk").symlink_to(folder / "junk")
    elif attack == "long source":
        args = ["model.source=" + "a" * 300]
    elif attack == "long library":
        index["vae"] = ["l" * 300, "AutoencoderKL"]
    elif attack == "model null":
        write(tmp_path / "conf" / "preset" / "evil.yaml", "# @package _global_\nmodel: null\n")
        args = ["--config-dir", str(tmp_path / "conf"), "preset=evil"]
    elif attack == "hydra null":
        write(tmp_path / "conf" / "preset" / "evil.yaml", "# @package _global_\nhydra: null\n")
        args = ["--config-dir", str(tmp_path / "conf"), "preset=evil"]
    elif attack == "automodel":
        index["text_encoder"] = ["transformers", "AutoModel"]
        args += ["quant.mapping.text_encoder=int8wo", "quant.mapping.text_encoder.skip=[x]"]
    elif attack == "none.py":
        (folder / "None.py").write_text("import pathlib\npathlib.Path('marker').touch()\n")
    index_file.write_text(json.dumps(index))
    result = run_cli("load", *args, cwd=tmp_path)
    if attack == "loop":  # a link loop beside the parts is nothing a library reads
        assert result.returncode == 0, result.stderr
        return
    assert result.returncode == 2, result.stderr
    assert all(line.startswith("error: ") for line in result.stderr.strip().splitlines())
    assert not (tmp_path / "marker").exists()


def test_a_copied_plan_reopens_its_source(tmp_path: Path, qconf_cache: Path) -> None:
    folder = _copy_tiny(tmp_path)
    plan = qconf.intake(model={"source": "tiny-flux"})
    copy = plan.model_copy(update={"model": plan.model.model_copy(update={"source": str(folder)})})
    assert copy.source.folder == folder and plan.source.kind == "tiny"


def test_estimate_folder_named_like_a_built_in(tmp_path: Path, qconf_cache: Path) -> None:
    import shutil

    from qconf.source.tiny import tiny_pipeline_path

    shutil.copytree(tiny_pipeline_path("tiny-sd"), tmp_path / "tiny-flux")
    result = run_cli("estimate", "--folder", "tiny-flux", "model=tiny-sd", cwd=tmp_path)
    assert result.returncode == 0, result.stderr


# --- found by the attack review of the readers and writers (issue 20) ---


def test_a_gguf_file_claiming_more_than_it_holds_is_refused_at_once(tmp_path: Path) -> None:
    import struct

    from qconf.backends.gguf_file import read_gguf

    forged = tmp_path / "evil.gguf"
    key = b"k"
    forged.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1) + key
                       + struct.pack("<IIQ", 9, 0, 500_000))  # fmt: skip
    started = time.monotonic()
    with pytest.raises(qconf.ModelSourceError, match="runs past the end of the file"):
        read_gguf(forged)
    assert time.monotonic() - started < 5


def test_config_bounds_hold_for_validate_and_load_too(tmp_path: Path, qconf_cache: Path) -> None:
    import json

    folder = _copy_tiny(tmp_path)
    config_file = folder / "transformer" / "config.json"
    config = json.loads(config_file.read_text())
    config["num_single_layers"] = 5000
    config_file.write_text(json.dumps(config))
    for command in ("validate", "load"):
        result = run_cli(command, f"model.source={folder}", cwd=tmp_path)
        assert result.returncode == 2 and "num_single_layers" in result.stderr, result.stderr


def test_weight_headers_are_bounded_before_a_load(tmp_path: Path, qconf_cache: Path) -> None:
    from qconf.source.limits import MAX_SHARDS

    folder = _copy_tiny(tmp_path)
    weights = folder / "vae" / "diffusion_pytorch_model.safetensors"
    for i in range(MAX_SHARDS + 1):
        (folder / "vae" / f"x{i:04d}.safetensors").symlink_to(weights)
    result = run_cli("load", f"model.source={folder}", cwd=tmp_path)
    assert result.returncode == 2 and ".safetensors files" in result.stderr, result.stderr


def test_large_files_the_libraries_read_whole_are_refused(
    tmp_path: Path, qconf_cache: Path
) -> None:
    folder = _copy_tiny(tmp_path)
    with (folder / "tokenizer" / "chat_template.jinja").open("wb") as handle:
        handle.truncate(2**31)  # sparse: nothing on disk
    result = run_cli("validate", f"model.source={folder}", cwd=tmp_path)
    assert result.returncode == 2 and "files other than weights" in result.stderr


def test_list_reads_config_dir_files_through_the_bounded_reader(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    write(conf / "preset" / "latin.yaml", "# @package _global_\n")
    (conf / "preset" / "latin.yaml").write_bytes(b"# caf\xe9\nquant: {}\n")
    result = run_cli("list", "presets", "--config-dir", str(conf), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    _fifo(conf / "preset" / "pipe.yaml")
    result = run_cli("list", "presets", "--config-dir", str(conf), cwd=tmp_path)
    assert result.returncode == 2 and "not a regular file" in result.stderr


def test_a_planted_lock_marker_is_never_read(tmp_path: Path) -> None:
    from qconf.loading.saving import _marker_text

    assert _marker_text(_fifo(tmp_path / ".out.qconf-lock")) == ""
    (tmp_path / "zero").symlink_to("/dev/zero")
    assert _marker_text(tmp_path / "zero") == ""


def test_run_refuses_an_output_folder_it_cannot_create(tmp_path: Path) -> None:
    write(tmp_path / "cfile", "a file")
    result = run_cli("run", "model=tiny-flux", f"hydra.run.dir={tmp_path}/cfile/run", cwd=tmp_path)
    assert result.returncode == 2 and "hydra.run.dir" in result.stderr, result.stderr


@pytest.mark.parametrize("setting", ["run.seed=1180591620717411303424", "run.steps=100000",
                                     "run.guidance_scale=nan", "run.height=10000000"])  # fmt: skip
def test_run_settings_are_bounded(setting: str) -> None:
    with pytest.raises(qconf.PlanError, match=setting.split("=")[0]):
        qconf.intake(overrides=["model=tiny-flux", setting])


def test_the_tiny_cache_is_never_built_through_a_link(tmp_path: Path, monkeypatch) -> None:  # noqa: ANN001
    from qconf.source.tiny import tiny_pipeline_path

    cache = tmp_path / "cache"
    (cache).mkdir()
    (tmp_path / "elsewhere").mkdir()
    (cache / "tiny").symlink_to(tmp_path / "elsewhere")
    monkeypatch.setenv("QCONF_CACHE", str(cache))
    with pytest.raises(qconf.ModelSourceError, match="symbolic link inside qconf's cache"):
        tiny_pipeline_path("tiny-sd")
    assert not any((tmp_path / "elsewhere").iterdir())


@pytest.mark.parametrize(
    "char", ["\u061c", "\u2028", "\U000e0041", "\u180e", "\u00ad", "\U0001d173"]
)
def test_invisible_and_reordering_characters_are_escaped(char: str) -> None:
    from qconf.text import safe

    shown = safe(f"a{char}b")
    assert char not in shown and shown.startswith("a\\") and shown.endswith("b")
    assert safe("café 東京") == "café 東京"


def test_saved_folders_carry_no_path_of_this_machine(tmp_path: Path, qconf_cache: Path) -> None:
    target = tmp_path / "saved"
    with qconf.quiet():
        qconf.load(model={"source": "tiny-flux"}, quant={"mapping": {"transformer": "int8wo"}},
                   save=target)  # fmt: skip
    for config in [target / "model_index.json", *target.glob("*/config.json")]:
        assert str(qconf_cache) not in config.read_text(), config
        assert "_name_or_path" not in config.read_text(), config


def test_save_refuses_the_model_folder_itself(tmp_path: Path, qconf_cache: Path) -> None:
    folder = _copy_tiny(tmp_path)
    with pytest.raises(qconf.PlanError, match="is the model folder"):
        qconf.load(model={"source": str(folder)}, save=folder, force=True)
    assert (folder / "model_index.json").is_file()


def test_an_output_file_never_replaces_a_device_or_fifo(tmp_path: Path) -> None:
    from qconf.trust.userpath import write_text

    fifo = _fifo(tmp_path / "out.json")
    with pytest.raises(qconf.PlanError, match="not a regular file"):
        write_text(fifo, "{}", "-o")
    assert fifo.is_fifo()


# --- found by the bypass review of the fixes (issue 20) ---


@pytest.fixture
def shaped_app(tmp_path: Path):  # noqa: ANN201 - a running Hydra app whose files turn trust on
    import yaml
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    conf = tmp_path / "app"
    pickle = {"source": "tiny-flux", "allow_pickle": True}
    loader = {"_target_": "qconf.load", "model": pickle}
    app = {
        "pipes": [loader],
        "wrapped": {"inner": loader},
        "args_form": {"_target_": "qconf.load_pipeline", "_args_": [{"model": pickle}]},
        "shared": {"source": "tiny-flux", "trust_remote_code": True},
        "by_ref": {"_target_": "qconf.load", "model": "${shared}"},
        "created": {"_target_": "qconf.load",
                    "model": "${oc.create:'{source: tiny-flux, trust_remote_code: true}'}"},
        "hydra": {"overrides": {"task": ["model.allow_pickle=true"]}},
        "model": pickle,
    }  # fmt: skip
    write(conf / "app.yaml", yaml.safe_dump(app))
    with initialize_config_dir(str(conf), version_base=None):
        cfg = compose("app", return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        yield cfg
        HydraConfig.instance().cfg = None


@pytest.mark.parametrize("shape", ["pipes", "wrapped", "dict", "args_form", "by_ref", "created",
                                   "whole"])  # fmt: skip
def test_safe_instantiate_checks_trust_in_every_shape(shaped_app, shape: str) -> None:  # noqa: ANN001
    cfg = {"dict": lambda: {"p": shaped_app.pipes[0]}, "whole": lambda: shaped_app}.get(
        shape, lambda: shaped_app[shape]
    )()
    # the whole config also holds Hydra's node, whose `${now:...}` is refused first
    match = "resolver 'now'" if shape == "whole" else "it lets the model run code"
    with pytest.raises(qconf.PlanError, match=match):
        qconf.safe_instantiate(cfg)


def test_an_apps_files_cannot_fake_what_was_typed(shaped_app) -> None:  # noqa: ANN001
    with pytest.raises(qconf.PlanError, match="model.allow_pickle"):
        qconf.intake(model=shaped_app.model)


@pytest.mark.parametrize(
    "model",
    [
        "\"${oc.decode:'{source: tiny-flux, trust_remote_code: true}'}\"",
        "\"${oc.select:nowhere.x,${oc.create:'{source: tiny-flux, allow_pickle: true}'}}\"",
    ],
)
def test_a_preset_cannot_build_a_trusting_model_section(model: str, tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    write(conf / "preset" / "evil.yaml", f"# @package _global_\nmodel: {model}\n")
    with pytest.raises(qconf.PlanError, match="it lets the model run code"):
        qconf.intake(overrides=["preset=evil"], config_dir=conf)


@pytest.mark.parametrize("model", ["${nowhere.x}", "${oc.env:QCONF_UNSET_X}"])
def test_an_unresolvable_model_section_is_one_line(model: str, tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    write(conf / "preset" / "evil.yaml", f"# @package _global_\nmodel: '{model}'\n")
    result = run_cli("validate", "--config-dir", str(conf), "preset=evil", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("error: "), result.stderr


def test_references_to_whole_containers_count_every_value(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    big = "y" * 20_000
    write(conf / "preset" / "amp.yaml", "# @package _global_\nzz:\n  a:\n    big: &b " + big
          + "\n    more: [" + ", ".join(["*b"] * 60) + "]\n  b: 'x${zz.a}'\n")  # fmt: skip
    started = time.monotonic()
    with pytest.raises(qconf.PlanError, match="would resolve to more than"):
        qconf.intake(overrides=["preset=amp"], config_dir=conf)
    assert time.monotonic() - started < 10


def test_a_plan_files_aliases_cannot_expand_into_huge_overrides(tmp_path: Path) -> None:
    text = "run:\n  pad: &s " + "p" * 5000 + "\n  l1: &l1 [" + ", ".join(["*s"] * 10) + "]\n"
    plan = write(tmp_path / "plan.yaml", text + "  l2: [" + ", ".join(["*l1"] * 10) + "]\n")
    started = time.monotonic()
    with pytest.raises(qconf.PlanError, match="longer than"):
        qconf.intake(plan_file=plan)
    assert time.monotonic() - started < 10


def test_gguf_metadata_arrays_are_bounded_in_items(tmp_path: Path) -> None:
    import struct

    from qconf.backends.gguf_file import MAX_GGUF_ARRAY_ITEMS, read_gguf

    count = MAX_GGUF_ARRAY_ITEMS + 1
    forged = tmp_path / "wide.gguf"
    forged.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1) + b"k"
                       + struct.pack("<IIQ", 9, 0, count) + bytes(count))  # fmt: skip
    with pytest.raises(qconf.ModelSourceError, match="metadata arrays hold over"):
        read_gguf(forged)


def test_files_deeper_in_a_part_get_the_folder_checks(tmp_path: Path, qconf_cache: Path) -> None:
    folder = _copy_tiny(tmp_path)
    deep = folder / "tokenizer" / "additional_chat_templates"
    deep.mkdir()
    (deep / "default.jinja").symlink_to("/proc/version")
    result = run_cli("validate", f"model.source={folder}", cwd=tmp_path)
    assert result.returncode == 2 and "kernel file" in result.stderr, result.stderr


def test_the_training_example_checks_its_hydra_node_before_hydra_runs(tmp_path: Path) -> None:
    """Hydra applies callbacks, env_set and run dirs before the task: examples/train_lora.py
    checks a preset from --config-dir first, as `qconf run` does."""
    example = Path(__file__).resolve().parents[1] / "examples" / "train_lora.py"
    marker = tmp_path / "marker"
    write(tmp_path / "conf" / "preset" / "evil.yaml", "# @package _global_\nhydra:\n  callbacks:\n"
          f"    x:\n      _target_: os.makedirs\n      name: {marker}\n")  # fmt: skip
    write(tmp_path / "conf" / "preset" / "run_dir.yaml",
          f"# @package _global_\nhydra:\n  run:\n    dir: {tmp_path / 'elsewhere'}\n")  # fmt: skip
    for preset in ("evil", "run_dir"):
        result = subprocess.run(
            [sys.executable, str(example), "--config-dir", str(tmp_path / "conf"),
             f"preset={preset}", "train.steps=1"],
            capture_output=True, text=True, cwd=tmp_path, timeout=120,
        )  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("error: hydra.") and "Traceback" not in result.stderr
    assert not marker.exists() and not (tmp_path / "elsewhere").exists()
    assert not (tmp_path / "outputs").exists()
