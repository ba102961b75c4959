"""The torch-free security code of the core, pinned fast for `make mutate`: compose's checks of
files (hydra node, trust flags, whole-dict overrides, override sizes), safety's exact allow-list,
environment and interpolation guards, and saving's target, lock and listing rules."""

from __future__ import annotations

import dataclasses
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from qconf import PlanError
from qconf.errors import Problem
from qconf.loading.saving import (
    _listing,
    _remove_stale,
    _save_lock,
    adapter_problems,
    check_shard_size,
    save_target,
    snapshot,
)
from qconf.plan.compose import (
    MAX_OVERRIDE_CHARS,
    check_override_sizes,
    compose,
    rewrite_overrides,
    user_config_dirs,
)
from qconf.plan.interpolation import (
    MAX_INTERPOLATIONS,
    EnvironmentRead,
    check_interpolation_count,
    no_environment_reads,
)
from qconf.plan.safety import plain, safe_instantiate, target_problems

BNB = "transformers.BitsAndBytesConfig"


def problems(call, *args, **kwargs) -> list[str]:  # noqa: ANN001
    with pytest.raises(PlanError) as caught:
        call(*args, **kwargs)
    return caught.value.lines


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# --- compose: what files may not do -------------------------------------------------------------


def test_files_cannot_turn_on_trust_flags(tmp_path: Path) -> None:
    def refused(flag: str) -> str:
        return (
            f"{flag}: turned on by a config or plan file; it lets the model run code — type "
            f"{flag}=true on the command line if you trust this model"
        )

    conf = tmp_path / "conf"
    write(conf / "preset" / "evil.yaml", "# @package _global_\nmodel:\n  allow_pickle: true\n")
    pickle = ["preset=evil"]
    assert problems(compose, pickle, config_dir=conf) == [refused("model.allow_pickle")]
    assert problems(compose, [*pickle, "model.trust_remote_code=true"], config_dir=conf) == [
        refused("model.allow_pickle")
    ]
    assert compose([*pickle, "model.allow_pickle=true"], config_dir=conf).model.allow_pickle
    plan = write(
        tmp_path / "plan.yaml", "model:\n  allow_pickle: true\n  trust_remote_code: true\n"
    )
    assert problems(compose, [], plan_file=plan) == [
        refused("model.allow_pickle"),
        refused("model.trust_remote_code"),
    ]
    assert problems(compose, ["model.allow_pickle=true"], plan_file=plan) == [
        refused("model.trust_remote_code")
    ]


def test_a_config_without_a_model_section_has_no_trust_flags(tmp_path: Path) -> None:
    write(tmp_path / "mine.yaml", "x: 1\n")
    assert dict(compose([], config_dir=tmp_path, config_name="mine")) == {"x": 1}


def test_a_file_cannot_feed_overrides_to_hydra(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    write(
        conf / "preset" / "evil.yaml",
        "# @package _global_\nhydra:\n  overrides:\n    task: ['model.trust_remote_code=true']\n",
    )
    assert problems(compose, ["preset=evil"], config_dir=conf) == [
        "hydra.overrides: set by a config file; Hydra would apply them as command-line overrides "
        "— remove hydra.overrides from the file"
    ]


def test_a_file_cannot_set_the_hydra_node_but_the_command_line_may(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    write(conf / "preset" / "evil.yaml", "# @package _global_\nhydra:\n  run:\n    dir: /tmp/x\n")
    (line,) = problems(compose, ["preset=evil"], config_dir=conf)
    assert line.startswith("hydra.run.dir: ")
    cfg = compose(["hydra.run.dir=out", "+hydra.job.env_set.X=1", "run.seed=3"])
    assert "hydra" not in cfg and cfg.run.seed == 3
    cfg.new_key = 1  # open for new keys once composed
    assert cfg.new_key == 1


def test_a_launcher_defined_only_in_a_config_dir_is_refused(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    write(conf / "hydra" / "launcher" / "evil.yaml", "_target_: os.system\n")
    lines = problems(compose, ["hydra/launcher=evil"], config_dir=conf)
    assert lines
    for line in lines:
        assert line.endswith(
            ": names a Hydra option found only in a config file (its settings would run as "
            "Hydra's own) — use one from qconf or an installed Hydra plugin, e.g. "
            "hydra/launcher=basic|joblib|submitit_local|submitit_slurm"
        )


def test_a_documented_launcher_picked_by_a_file_is_allowed(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    write(
        conf / "preset" / "par.yaml",
        "# @package _global_\ndefaults:\n  - override /hydra/launcher: joblib\n"
        "hydra:\n  launcher:\n    n_jobs: 2\n",
    )
    assert compose(["preset=par"], config_dir=conf).model.source


def test_override_sizes() -> None:
    check_override_sizes(["x" * MAX_OVERRIDE_CHARS])
    long = "run.prompt=" + "y" * MAX_OVERRIDE_CHARS
    assert problems(check_override_sizes, ["a=1", long]) == [
        f"override '{long[:40]}...': longer than 10,000 characters — put large values in a "
        "plan file (--plan)"
    ]
    assert problems(compose, [long])[0].startswith("override 'run.prompt=yyy")


def test_config_dir_must_be_a_folder(tmp_path: Path) -> None:
    assert problems(user_config_dirs, "~nosuchuserqq/x") == [
        "--config-dir: '~nosuchuserqq/x': no user 'nosuchuserqq' on this machine — write the "
        "full path, or ~/... for your own home"
    ]
    assert user_config_dirs(None) == ()
    assert user_config_dirs(tmp_path) == (tmp_path.resolve(),)
    file = write(tmp_path / "f.yaml", "")
    assert problems(user_config_dirs, file) == [
        f"--config-dir: '{file}' is not a folder — pass a folder"
    ]


def test_whole_dict_overrides_replace_the_dict() -> None:
    int8wo = "{backend:'torchao',kwargs:{quant_type:{name:'Int8WeightOnlyConfig'}}}"
    assert rewrite_overrides(["quant.mapping={vae: int8wo, transformer: null}"]) == [
        "++quant.mapping=null",
        f"++quant.mapping={{vae:{int8wo},transformer:null}}",
    ]
    assert rewrite_overrides(["quant.mapping={vae: {backend: quanto}}"]) == [
        "++quant.mapping=null",
        "++quant.mapping={vae:{backend:'quanto'}}",
    ]
    assert rewrite_overrides(["quant.kwargs={int8wo: 1}"]) == [
        "++quant.kwargs=null",
        "++quant.kwargs={int8wo:1}",
    ]
    assert rewrite_overrides(["run.seed=1", "quant.kwargs={a: 1}", "run.steps=2"]) == [
        "run.seed=1",
        "++quant.kwargs=null",
        "++quant.kwargs={a:1}",
        "run.steps=2",
    ]
    assert rewrite_overrides(["quant.mapping=null"]) == ["++quant.mapping=null"]
    assert rewrite_overrides(["quant.kwargs='a=b'"]) == ["++quant.kwargs='a=b'"]
    assert rewrite_overrides(["~quant.mapping"]) == ["~quant.mapping"]
    assert rewrite_overrides(["quant.mapping@x={a: 1}"]) == ["quant.mapping@x={a: 1}"]
    cfg = compose(["preset=flux-nf4", "quant.mapping={vae: int8wo}"])
    assert list(cfg.quant.mapping) == ["vae"]
    assert cfg.quant.mapping.vae.backend == "torchao"


def test_compose_problems_for_bad_files(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    write(conf / "preset" / "bad.yaml", "a: [1\n")
    (line,) = problems(compose, ["preset=bad"], config_dir=conf)
    assert line.startswith(f"{conf / 'preset' / 'bad.yaml'}:") or "malformed YAML" in line
    assert "malformed YAML" in line and line.endswith("— fix the file")


# --- safety ---------------------------------------------------------------------------------------


def test_safe_instantiate_checks_args_and_kwargs() -> None:
    evil = {"_target_": "os.system"}
    lines = problems(safe_instantiate, {"_target_": BNB}, evil, extra=evil)
    assert [line.split(" — ")[0] for line in lines] == [
        "args[0]._target_: 'os.system' is not allowed",
        "kwargs.extra._target_: 'os.system' is not allowed",
    ]


def test_safe_instantiate_accepts_other_spellings_of_allowed_objects() -> None:
    # (other spellings of allowed objects import torch to compare: tests/test_security.py)
    for refused in ("transformers.nothing_here", "shutil.copyfile", "qconfx.load"):
        (line,) = problems(safe_instantiate, {"_target_": refused})
        assert line.startswith(f"cfg._target_: '{refused}' is not allowed — a config may name")


def test_safe_instantiate_refuses_values_that_resolve_to_interpolations() -> None:
    cfg = OmegaConf.create({"_target_": BNB, "a": "\\${oc.create:{}}", "b": ["x", "\\${y}"]})
    assert problems(safe_instantiate, cfg) == [
        "cfg.a: resolves to another interpolation (${...}) — write the value itself",
        "cfg.b[1]: resolves to another interpolation (${...}) — write the value itself",
    ]
    assert problems(safe_instantiate, {"_target_": BNB}, "${x}") == [
        "args[0]: resolves to another interpolation (${...}) — write the value itself"
    ]
    assert safe_instantiate({"_target_": BNB, "llm_int8_skip_modules": ["$", "{x}"]})


def test_plain_reads_every_container_shape() -> None:
    @dataclasses.dataclass
    class Shape:
        a: int = 1
        b: tuple = (1, 2)

    assert plain(Shape()) == {"a": 1, "b": [1, 2]}
    assert plain({"x": (1, {2}), "y": frozenset()}) == {"x": [1, [2]], "y": []}
    assert plain(OmegaConf.create({"a": 1, "b": "${a}"})) == {"a": 1, "b": 1}
    assert plain(Shape) is Shape  # a class is not an instance
    deep: object = 1
    for _ in range(101):
        deep = [deep]
    assert problems(plain, deep) == ["config: nested deeper than 100 levels"]
    target_deep: object = {"_target_": "os.system"}
    for _ in range(101):
        target_deep = {"k": target_deep}
    (line,) = problems(target_problems, target_deep)
    assert line.endswith(": nested deeper than 100 levels")
    assert line.startswith("k.k.k")
    (line,) = problems(target_problems, deep)
    assert line == "[0]" * 101 + ": nested deeper than 100 levels"


def test_targets_in_tuples_and_sets() -> None:
    assert [p.where for p in target_problems(({"_target_": "os.system"},), "p")] == [
        "p[0]._target_"
    ]
    assert target_problems({"a": "_target_", "_target_": "qconf.load"}) == []


def test_interpolation_count() -> None:
    ok = {"a": ["${x}" * MAX_INTERPOLATIONS]}
    check_interpolation_count(ok)
    too_many = {"a": ["${x}" * 20], "b": {"c": "${y}" * 11}}
    assert problems(check_interpolation_count, too_many) == [
        "config: 31 interpolations (${...}); at most 30 — write values instead of references"
    ]


def test_environment_reads_are_refused_then_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QCONF_CORE_SECRET", "abc")
    cfg = OmegaConf.create({"a": "${oc.env:QCONF_CORE_SECRET}", "b": "${oc.env:X,default}"})
    with no_environment_reads():
        with pytest.raises(Exception) as caught:
            _ = cfg.a
        found = caught.value
        while not isinstance(found, EnvironmentRead):
            found = found.__cause__ or found.__context__
        assert found.variable == "QCONF_CORE_SECRET"
        assert str(found) == "reads environment variable 'QCONF_CORE_SECRET'"
        with pytest.raises(Exception, match="reads environment variable 'X'"):
            _ = cfg.b
    assert cfg.a == "abc" and cfg.b == "default"
    from omegaconf.basecontainer import BaseContainer

    assert "env" not in BaseContainer._resolvers  # not registered before: not left behind


# --- saving: targets, lock, listing ---------------------------------------------------------------

PROTECTED = (
    "is the working folder, your home, the root or a folder holding them — save into a new "
    "sub-folder, e.g. --save outputs/quantized"
)


def test_save_target_protects_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "home" / "work"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for target in (".", "..", "~", "/", str(work), str(tmp_path)):
        assert problems(save_target, target) == [f"--save: '{target}' {PROTECTED}"]
    assert problems(save_target, "a\0b") == [
        "--save: the path contains a NUL byte — give a plain path"
    ]
    for blank in ("", "  "):
        assert problems(save_target, blank) == ["--save: empty path — name the folder to save into"]
    assert save_target("out/x") == work / "out" / "x"
    assert save_target(tmp_path / "other") == tmp_path / "other"
    (work / "link").symlink_to(tmp_path)
    assert problems(save_target, "link") == [
        "--save: 'link' is a symlink — save into a real folder (never followed)"
    ]
    write(work / "file", "x")
    assert problems(save_target, "file") == ["--save: 'file' is a file — give a folder path"]
    assert problems(save_target, "file/sub/dir") == [
        f"--save: '{work / 'file'}' is a file, not a folder — fix the path"
    ]


def test_shard_sizes() -> None:
    # read as every size qconf reads (qconf.units.parse_size): an int is bytes
    expected = {None: None, 1: 1, "5GB": 5 * 10**9, "500 MB": 500 * 10**6,
                "1.5gib": 3 * 2**29, " 10KiB ": 10 * 2**10, "5": 5 * 2**30}  # fmt: skip
    for given, size in expected.items():
        assert check_shard_size(given) == size
    for bad in (0, -1, True, 1.5):
        assert problems(check_shard_size, bad) == [
            f"--max-shard-size: {bad!r} is not a size — write e.g. 5GB or 500MiB"
        ]
    for bad in ("GB", "5 PB", "-5GB", "0B"):
        (line,) = problems(check_shard_size, bad)
        assert line.startswith(f"--max-shard-size: {bad!r} is ")


def test_adapter_problems() -> None:
    class Part:
        def __init__(self, **attrs: object) -> None:
            self.__dict__.update(attrs)

    class Pipe:
        components = {
            "a": Part(peft_config={"x": 1}),
            "b": Part(_hf_peft_config_loaded=True),
            "c": Part(peft_config={}, _hf_peft_config_loaded=False),
            "d": None,
        }

    assert [str(p) for p in adapter_problems(Pipe())] == [
        f"{name}: carries LoRA/peft adapters; qconf.save writes base pipelines only — save the "
        "adapters with pipeline.save_lora_weights(...) (or the part's save_lora_adapter) and the "
        "base with qconf.save before adding them"
        for name in ("a", "b")
    ]
    assert adapter_problems(object()) == []


def dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


def test_the_save_lock(tmp_path: Path) -> None:
    target = tmp_path / "saved"
    lock = tmp_path / ".saved.qconf-lock"
    with _save_lock(target):
        assert lock.read_text() == str(os.getpid())
        assert sorted(p.name for p in tmp_path.iterdir()) == [".saved.qconf-lock"]
        assert problems(_save_lock(target).__enter__) == [
            f"--save: another qconf process (pid {os.getpid()}) is saving into '{target}' — "
            "wait for it, or pick another folder"
        ]
    assert list(tmp_path.iterdir()) == []
    for stale in (str(dead_pid()), "not a pid", ""):
        lock.write_text(stale)
        with _save_lock(target):
            assert lock.read_text() == str(os.getpid())
        assert list(tmp_path.iterdir()) == []
    lock.write_bytes(b"\xff\xfe")  # not even text: stale
    with _save_lock(target):
        assert lock.read_text() == str(os.getpid())
    live = subprocess.Popen(["sleep", "60"])
    try:
        lock.write_text(str(live.pid))  # another live process
        (line,) = problems(_save_lock(target).__enter__)
        assert line.startswith(f"--save: another qconf process (pid {live.pid}) is saving")
        assert lock.read_text() == str(live.pid)
        assert sorted(p.name for p in tmp_path.iterdir()) == [".saved.qconf-lock"]
    finally:
        live.kill()
        live.wait()


def test_stale_temp_folders_are_removed(tmp_path: Path) -> None:
    dead, alive = dead_pid(), os.getpid()
    names = [
        f".saved.qconf-tmp-{dead}-a",
        f".saved.qconf-old-{dead}-b",
        f".saved.qconf-tmp-{dead}-x-y",
        f".saved.qconf-tmp-{alive}-c",
        ".saved.qconf-tmp-notapid-d",
        f".other.qconf-tmp-{dead}-e",
    ]
    for name in names:
        (tmp_path / name).mkdir()
    write(tmp_path / f".saved.qconf-tmp-{dead}-file", "")
    _remove_stale(tmp_path / "saved")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*names[3:], f".saved.qconf-tmp-{dead}-file"]
    )


def test_listing_and_snapshot(tmp_path: Path) -> None:
    target = tmp_path / "saved"
    assert snapshot(target) == [] and _listing(write(tmp_path / "f", "x")) == []
    write(target / "b" / "c.txt", "abc")
    write(target / "a.txt", "a")
    found = snapshot(target)
    assert [entry[:2] for entry in found] == [("a.txt", 1), ("b", found[1][1]), ("b/c.txt", 3)]
    stat = os.lstat(target / "b" / "c.txt")
    assert found[2][2:] == (stat.st_mtime_ns, stat.st_mode)
    assert found == _listing(target)
    os.utime(target / "a.txt", ns=(1, 1))
    assert snapshot(target) != found


class Pipe:
    """Stands in for a loaded pipeline; `during` runs inside save_pretrained."""

    def __init__(self, during=None, **attrs: object) -> None:  # noqa: ANN001
        self.during = during
        self.calls: list[dict] = []
        self.components = attrs

    def save_pretrained(self, folder: Path, **kwargs: object) -> None:
        self.calls.append(kwargs)
        (Path(folder) / "model_index.json").write_text("{}")
        if self.during:
            self.during()


def loaded(pipe: Pipe):  # noqa: ANN201
    from qconf.loading.loader import Loaded
    from qconf.plan.schema import validate

    resolved = validate({"model": {"source": "tiny-flux"}, "quant": {"mapping": {"vae": "int8wo"}}})
    return Loaded(pipe, resolved.resolve(), 0.0)


def test_save_pipeline_refusals_and_races(tmp_path: Path) -> None:
    from qconf.loading.saving import save_pipeline

    target = tmp_path / "saved"
    pipe = Pipe()
    save_pipeline(loaded(pipe), target, max_shard_size="5GB")
    assert pipe.calls == [{"safe_serialization": True, "max_shard_size": 5 * 10**9}]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved"]
    assert problems(save_pipeline, loaded(Pipe()), tmp_path / "x", max_shard_size="5 PB") == [
        "--max-shard-size: '5 PB' is not a size — write e.g. 16GiB, 24G, 12000MiB or 16GB "
        "(a bare number is GiB)"
    ]
    (line,) = problems(
        save_pipeline,
        loaded(Pipe(text_encoder=SimpleNamespace(peft_config={1: 2}))),
        tmp_path / "y",
    )
    assert line.startswith("text_encoder: carries LoRA/peft adapters")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved"]

    # someone writes into an absent DIR while saving: their file survives, the save fails
    other = tmp_path / "other"
    theirs = lambda: write(other / "theirs.txt", "t")  # noqa: E731
    assert problems(save_pipeline, loaded(Pipe(theirs)), other) == [
        f"--save: '{other}' was written to by someone else while saving; left as it is — pass "
        "--force to replace it, or pick another folder"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "saved"]
    assert [p.name for p in other.iterdir()] == ["theirs.txt"]

    # with force, a DIR that changed since the check is left as it is
    listing = snapshot(other)
    more = lambda: write(other / "more.txt", "m")  # noqa: E731
    assert problems(save_pipeline, loaded(Pipe(more)), other, force=True, listing=listing) == [
        f"--save: '{other}' changed while saving; left as it is — save again (with --force to "
        "replace it)"
    ]
    assert sorted(p.name for p in other.iterdir()) == ["more.txt", "theirs.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "saved"]
    # ... also when it changed between the check (listing) and the save
    listing = snapshot(other)
    write(other / "late.txt", "l")
    (line,) = problems(save_pipeline, loaded(Pipe()), other, force=True, listing=listing)
    assert line.startswith(f"--save: '{other}' changed while saving; left as it is")
    (other / "late.txt").unlink()
    save_pipeline(loaded(Pipe()), other, force=True)
    assert sorted(p.name for p in other.iterdir()) == ["model_index.json", "qconf.yaml"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other", "saved"]

    # DIR replaced by a symlink after the check
    def swap() -> None:
        os.rename(other, tmp_path / "moved")
        other.symlink_to(tmp_path / "moved")

    assert problems(save_pipeline, loaded(Pipe(swap)), other, force=True) == [
        f"--save: '{other}' became a symlink — nothing was written"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["moved", "other", "saved"]


def test_depth_bounds_are_exact() -> None:
    def nest(levels: int, wrap) -> object:  # noqa: ANN001
        value: object = 1
        for _ in range(levels):
            value = wrap(value)
        return value

    too_deep = [Problem("config", "nested deeper than 100 levels", "")]
    for wrap in (lambda v: [v], lambda v: {"k": v}):
        assert plain(nest(100, wrap)) == nest(100, wrap)
        with pytest.raises(PlanError) as caught:
            plain(nest(101, wrap))
        assert caught.value.problems == too_deep

    @dataclasses.dataclass
    class Deep:
        a: str = "x"
        b: str = "${a}"

    assert plain(Deep()) == {"a": "x", "b": "x"}
    assert plain([Deep()]) == [{"a": "x", "b": "x"}]
    assert target_problems(nest(100, lambda v: {"k": v})) == []
    with pytest.raises(PlanError) as caught:
        target_problems(nest(101, lambda v: {"": v}))
    assert caught.value.problems == too_deep
    assert target_problems(nest(99, lambda v: {"k": v}), "p") == []
    with pytest.raises(PlanError) as caught:
        target_problems(nest(101, lambda v: [v]))
    assert caught.value.problems == [Problem("[0]" * 101, "nested deeper than 100 levels", "")]


def test_safe_instantiate_passes_args_and_checks_kwargs() -> None:
    made = safe_instantiate({"_target_": BNB}, True)
    assert (made.load_in_8bit, made.load_in_4bit) == (True, False)
    assert problems(safe_instantiate, {"_target_": BNB}, x="${y}") == [
        "kwargs.x: resolves to another interpolation (${...}) — write the value itself"
    ]


def test_validate_composes_once_without_a_users_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every file composed is qconf's own: the hydra-node comparison needs no second compose
    (it is what made validate slow); with a --config-dir it runs (tests/test_security.py)."""
    import qconf.plan.compose as compose_module

    calls = []
    monkeypatch.setattr(compose_module, "_trusted_hydra", lambda *a: calls.append(a))
    compose_module.compose(["preset=flux-int8wo", "model=tiny-flux", "hydra.job.name=x"])
    assert calls == []
