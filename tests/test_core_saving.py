"""Fast, torch-free pins of `qconf --save` (qconf/loading/saving.py) with plain files in tmp_path:
the origin paths dropped from a saved folder's config files (exact text written), what a lock
marker that is not a small regular file reads as, a marker that changes between reading and
moving it aside (staged), the model folder and the folder beside DIR refused by check_can_save /
save_target (exact problems), and a failed save's own error never masked by its cleanup. And of
safe_instantiate (qconf/plan/safety.py): loaders told where to write, environment reads, trust
flags in a running Hydra app's files, other spellings of allowed objects, and names outside the
resolvable packages never imported."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

import qconf.loading.saving as saving
from qconf import PlanError
from qconf.errors import Problem
from qconf.loading.saving import (
    _drop_origin_paths,
    _save_lock,
    _take_over_if_stale,
    check_can_save,
    save_target,
)


def problems(call, *args, **kwargs) -> list[Problem]:  # noqa: ANN001
    with pytest.raises(PlanError) as caught:
        call(*args, **kwargs)
    return caught.value.problems


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def dead_pid() -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    return pid


# --- origin paths ---------------------------------------------------------------------------------


def test_origin_paths_are_dropped_from_the_saved_configs(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    vae = write(
        staging / "vae" / "config.json", '{"_name_or_path": "/home/me/m", "b": 1, "a": [2]}'
    )
    kept = {
        # no origin path: left byte for byte as the library wrote it
        "text_encoder/config.json": '{"z": 1,   "_name_or_path_x": 2}',
        # not a part's config.json: not read
        "scheduler/scheduler_config.json": '{"_name_or_path": "/home/me/m"}',
        "vae/sub/config.json": '{"_name_or_path": "/home/me/m"}',
        "config.json": '{"_name_or_path": "/home/me/m"}',
        # a config.json that is not an object
        "list/config.json": '["_name_or_path"]',
    }
    for name, text in kept.items():
        write(staging / name, text)
    _drop_origin_paths(staging)  # no model_index.json: the parts are still cleaned
    assert vae.read_text() == '{\n  "a": [\n    2\n  ],\n  "b": 1\n}\n'
    for name, text in kept.items():
        assert (staging / name).read_text() == text

    index = write(
        staging / "model_index.json", '{"_name_or_path": "/home/me/m", "_class_name": "P"}'
    )
    write(staging / "unet" / "config.json", '{"_name_or_path": "x", "c": {"y": 1, "x": 2}}')
    _drop_origin_paths(staging)
    assert index.read_text() == '{\n  "_class_name": "P"\n}\n'
    assert (staging / "unet" / "config.json").read_text() == (
        '{\n  "c": {\n    "x": 2,\n    "y": 1\n  }\n}\n'
    )
    assert vae.read_text() == '{\n  "a": [\n    2\n  ],\n  "b": 1\n}\n'


# --- lock markers ---------------------------------------------------------------------------------


def test_a_marker_that_is_a_symlink_is_stale_and_never_followed(tmp_path: Path) -> None:
    target = tmp_path / "saved"
    lock = tmp_path / ".saved.qconf-lock"
    elsewhere = write(tmp_path / "elsewhere", str(os.getpid()))  # a live pid behind the link
    lock.symlink_to(elsewhere)
    with _save_lock(target):
        assert not lock.is_symlink()
        assert lock.read_text() == str(os.getpid())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere"]
    assert elsewhere.read_text() == str(os.getpid())


def test_a_marker_over_64_bytes_is_stale(tmp_path: Path) -> None:
    target = tmp_path / "saved"
    lock = tmp_path / ".saved.qconf-lock"
    live = str(os.getpid())
    lock.write_text(live.rjust(64))  # 64 bytes: read, a live owner
    assert problems(_save_lock(target).__enter__) == [
        Problem(
            "--save",
            f"another qconf process (pid {live}) is saving into '{target}'",
            "wait for it, or pick another folder",
        )
    ]
    assert lock.read_text() == live.rjust(64)
    lock.write_text(live.rjust(65))  # 65 bytes: not read, stale
    with _save_lock(target):
        assert lock.read_text() == live
    assert list(tmp_path.iterdir()) == []


def test_a_marker_taken_over_meanwhile_is_put_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Staged race: the marker read is stale, but before it is moved aside another saver
    replaces it with its own (here: this live process). The fresh marker is put back."""
    target = tmp_path / "saved"
    lock = write(tmp_path / ".saved.qconf-lock", str(dead_pid()))
    real = saving._marker_text
    reads: list[str] = []

    def racing(marker: Path) -> str:
        text = real(marker)
        if not reads:
            lock.unlink()
            lock.write_text(str(os.getpid()))
        reads.append(text)
        return text

    monkeypatch.setattr(saving, "_marker_text", racing)
    assert problems(_take_over_if_stale, lock, target) == [
        Problem(
            "--save",
            f"another qconf process (pid {os.getpid()}) is saving into '{target}'",
            "wait for it, or pick another folder",
        )
    ]
    assert len(reads) == 2 and reads[1] == str(os.getpid())
    assert sorted(p.name for p in tmp_path.iterdir()) == [".saved.qconf-lock"]
    assert lock.read_text() == str(os.getpid())


def test_a_live_marker_is_refused_as_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Staged race: the owner read is alive, so the marker is left where it is, whatever it
    holds by then (no second read, nothing moved aside)."""
    target = tmp_path / "saved"
    lock = write(tmp_path / ".saved.qconf-lock", str(os.getpid()))
    real = saving._marker_text
    dead = str(dead_pid())

    def racing(marker: Path) -> str:
        text = real(marker)
        lock.write_text(dead)  # the owner finished and a stale marker is left
        return text

    monkeypatch.setattr(saving, "_marker_text", racing)
    assert problems(_take_over_if_stale, lock, target) == [
        Problem(
            "--save",
            f"another qconf process (pid {os.getpid()}) is saving into '{target}'",
            "wait for it, or pick another folder",
        )
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".saved.qconf-lock"]
    assert lock.read_text() == dead


def test_the_owner_is_probed_never_signalled(tmp_path: Path) -> None:
    """Checking a live owner sends it no signal (a sleeper that dies of SIGHUP survives)."""
    import signal
    import subprocess

    target = tmp_path / "saved"
    lock = tmp_path / ".saved.qconf-lock"
    live = subprocess.Popen(
        ["sleep", "60"], preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_DFL)
    )
    try:
        lock.write_text(str(live.pid))
        (problem,) = problems(_save_lock(target).__enter__)
        assert problem.what == f"another qconf process (pid {live.pid}) is saving into '{target}'"
        with pytest.raises(subprocess.TimeoutExpired):
            live.wait(timeout=0.2)
    finally:
        live.kill()
        live.wait()


def test_another_users_process_is_alive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Signalling another user's process is refused (PermissionError): it is alive. Tests run as
    root, so the refusal is staged."""
    target = tmp_path / "saved"
    lock = tmp_path / ".saved.qconf-lock"
    theirs = dead_pid()
    real = os.kill

    def kill(pid: int, sig: int) -> None:
        if pid == theirs:
            raise PermissionError(1, "Operation not permitted")
        real(pid, sig)

    monkeypatch.setattr(os, "kill", kill)
    lock.write_text(str(theirs))
    assert problems(_save_lock(target).__enter__) == [
        Problem(
            "--save",
            f"another qconf process (pid {theirs}) is saving into '{target}'",
            "wait for it, or pick another folder",
        )
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".saved.qconf-lock"]


# --- where a save may go --------------------------------------------------------------------------

FLUX_INDEX = {
    "_class_name": "FluxPipeline",
    "_diffusers_version": "0.42.1",
    "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "T5EncoderModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "T5TokenizerFast"],
    "transformer": ["diffusers", "FluxTransformer2DModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
WEIGHT_FILES = {
    "text_encoder": "model.safetensors",
    "text_encoder_2": "model.safetensors",
    "transformer": "diffusion_pytorch_model.safetensors",
    "vae": "diffusion_pytorch_model.safetensors",
}


def folder_plan(root: Path):  # noqa: ANN201
    """A resolved plan loading a Flux pipeline folder at `root` (configs and empty weights)."""
    from qconf.plan.schema import validate

    write(root / "model_index.json", json.dumps(FLUX_INDEX))
    for part, weights in WEIGHT_FILES.items():
        write(root / part / "config.json", "{}")
        (root / part / weights).write_bytes(b"")
    plan = {"model": {"source": str(root)}, "quant": {"mapping": {"vae": "int8wo"}}}
    return validate(plan).resolve()


def test_the_model_folder_is_never_a_save_target(tmp_path: Path) -> None:
    model = tmp_path / "models" / "flux"
    resolved = folder_plan(model)
    for target in (model, tmp_path / "models"):
        for force in (False, True):
            assert problems(check_can_save, resolved, target, force=force) == [
                Problem(
                    "--save",
                    f"'{target}' is the model folder (or holds it)",
                    "save into another folder: the original would be replaced",
                )
            ]
    # beside it or inside it is fine (an empty or new folder)
    check_can_save(resolved, tmp_path / "models" / "flux-int8", force=False)
    check_can_save(resolved, model / "saved", force=False)
    (tmp_path / "empty").mkdir()
    check_can_save(resolved, tmp_path / "empty", force=False)


def test_a_tiny_source_is_not_built_to_check_a_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tiny pipeline's folder is built (with torch) on first use: checking --save must not."""
    from qconf.plan.schema import validate
    from qconf.source.model import ModelSource

    resolved = validate({"model": {"source": "tiny-flux"}}).resolve()

    def built(self: ModelSource) -> Path:
        raise AssertionError(f"local_folder() called for {self.kind}")

    monkeypatch.setattr(ModelSource, "local_folder", built)
    check_can_save(resolved, tmp_path / "saved", force=False)


def test_the_folder_beside_dir_must_take_new_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The save is written beside DIR: the parent of DIR is checked (the nearest existing
    folder when DIR's parent is not there yet), both for permission and a read-only mount."""
    parent = tmp_path / "parent"
    (parent / "saved").mkdir(parents=True)
    refused: set[Path] = {parent}
    monkeypatch.setattr(saving, "read_only", lambda folder: Path(folder) in refused)
    expected = Problem(
        "--save",
        f"cannot write in '{parent}' (read-only or no permission)",
        "pick a folder you can write to",
    )
    assert problems(save_target, parent / "saved") == [expected]
    assert problems(save_target, parent / "new") == [expected]
    assert problems(save_target, parent / "new" / "sub") == [expected]
    refused = {parent / "saved"}  # DIR itself read-only: its parent takes the new files
    monkeypatch.setattr(saving, "read_only", lambda folder: Path(folder) in refused)
    assert save_target(parent / "saved") == parent / "saved"

    # no write permission (tests run as root, so os.access is what is staged)
    monkeypatch.setattr(saving, "read_only", lambda folder: False)
    denied = {parent}

    def access(path: object, mode: int) -> bool:
        return not (Path(path) in denied and mode & (os.W_OK | os.X_OK))

    monkeypatch.setattr(os, "access", access)
    assert problems(save_target, parent / "saved") == [expected]
    denied = set()
    assert save_target(parent / "saved") == parent / "saved"


def test_a_library_missing_from_the_can_save_table_is_not_saveable() -> None:
    """Not listed is not saveable (the schema lets no such library through today)."""
    from types import SimpleNamespace

    from qconf.backends import REGISTRY
    from qconf.loading.saving import save_problems

    part = SimpleNamespace(
        backend="torchao", library="other_lib", entry=SimpleNamespace(save_problem=lambda: None)
    )
    for mode, where in (("granular", "quant.mapping.vae"), ("global", "quant.backend")):
        resolved = SimpleNamespace(quantized={"vae": part}, mode=mode)
        assert save_problems(resolved) == [  # type: ignore[arg-type]
            Problem(
                where,
                f"{REGISTRY['torchao'].key} on 'vae' (other_lib part) cannot be saved",
                "pick a backend that saves there (qconf list backends), or drop --save",
            )
        ]


def test_a_failed_save_raises_its_own_error(tmp_path: Path) -> None:
    """Even when the staging folder is already gone, the cleanup does not mask the error."""
    import shutil

    from qconf.loading.loader import Loaded
    from qconf.loading.saving import save_pipeline
    from qconf.plan.schema import validate

    class Vanishing:
        components: dict = {}

        def save_pretrained(self, folder: Path, **kwargs: object) -> None:
            shutil.rmtree(folder)
            raise RuntimeError("the disk went away")

    resolved = validate({"model": {"source": "tiny-flux"}}).resolve()
    with pytest.raises(RuntimeError, match="^the disk went away$"):
        save_pipeline(Loaded(Vanishing(), resolved, 0.0), tmp_path / "saved")
    assert list(tmp_path.iterdir()) == []


class Pipe:
    """Stands in for a loaded pipeline: save_pretrained writes model_index.json."""

    components: dict = {}

    def save_pretrained(self, folder: Path, **kwargs: object) -> None:
        (Path(folder) / "model_index.json").write_text("{}")


def test_dir_recreated_while_it_is_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Staged race: with --force the old DIR is moved aside into a hidden folder beside it; DIR
    is written again (by someone else) before the new one is moved in. Both stay: theirs in DIR,
    the old content where the message says."""
    from qconf.loading.loader import Loaded
    from qconf.loading.saving import save_pipeline, snapshot
    from qconf.plan.schema import validate

    target = tmp_path / "saved"
    write(target / "old.txt", "old")
    listing = snapshot(target)
    real = saving._listing

    def racing(path: Path) -> list[tuple]:
        found = real(path)
        if path.parent.name.startswith(".saved.qconf-old-"):
            write(target / "theirs.txt", "t")
        return found

    monkeypatch.setattr(saving, "_listing", racing)
    resolved = validate({"model": {"source": "tiny-flux"}}).resolve()
    (problem,) = problems(
        save_pipeline, Loaded(Pipe(), resolved, 0.0), target, force=True, listing=listing
    )
    retired, saved = sorted(tmp_path.iterdir())
    assert saved == target and retired.name.startswith(f".saved.qconf-old-{os.getpid()}-")
    assert problem == Problem(
        "--save",
        f"'{target}' changed while saving; its old content is in '{retired / 'saved'}'",
        "move it back, then save again",
    )
    assert [p.name for p in retired.iterdir()] == ["saved"]
    assert [p.name for p in (retired / "saved").iterdir()] == ["old.txt"]
    assert [p.name for p in target.iterdir()] == ["theirs.txt"]


@pytest.fixture
def immutable(monkeypatch: pytest.MonkeyPatch) -> str:
    """Files named `immutable.bin` cannot be removed (staged: root removes anything else)."""
    real = os.unlink

    def unlink(path: Any, *args: Any, **kwargs: Any) -> None:
        if os.path.basename(path) == "immutable.bin":
            raise PermissionError(1, "Operation not permitted", path)
        real(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", unlink)
    return "immutable.bin"


def test_a_stale_folder_that_cannot_be_removed_is_left(tmp_path: Path, immutable: str) -> None:
    from qconf.loading.saving import _remove_stale

    stale = tmp_path / f".saved.qconf-tmp-{dead_pid()}-a"
    write(stale / immutable, "x")
    write(stale / "part" / "weights.bin", "w")
    _remove_stale(tmp_path / "saved")
    assert [p.name for p in tmp_path.iterdir()] == [stale.name]
    assert [p.name for p in stale.iterdir()] == [immutable]


def test_a_replaced_dir_that_cannot_be_removed_is_left_beside(
    tmp_path: Path, immutable: str
) -> None:
    """The new DIR is in place; the old one stays in the hidden retired folder (removed by a
    later save once this process is gone)."""
    from qconf.loading.loader import Loaded
    from qconf.loading.saving import save_pipeline
    from qconf.plan.schema import validate

    target = tmp_path / "saved"
    write(target / immutable, "x")
    write(target / "old.txt", "old")
    resolved = validate({"model": {"source": "tiny-flux"}}).resolve()
    assert save_pipeline(Loaded(Pipe(), resolved, 0.0), target, force=True) == target
    assert sorted(p.name for p in target.iterdir()) == ["model_index.json", "qconf.yaml"]
    retired, saved = sorted(tmp_path.iterdir())
    assert saved == target and retired.name.startswith(f".saved.qconf-old-{os.getpid()}-")
    assert [p.name for p in retired.iterdir()] == ["saved"]
    assert [p.name for p in (retired / "saved").iterdir()] == [immutable]


# --- safety: what a config may not do (qconf/plan/safety.py) --------------------------------------

BNB = "transformers.BitsAndBytesConfig"


def write_problem(where: str, key: str) -> Problem:
    return Problem(
        where,
        "a config file may not say where qconf writes",
        f"pass {key}=... to safe_instantiate (or call qconf.save) instead",
    )


def test_a_config_may_not_say_where_a_loader_writes() -> None:
    from qconf.plan.safety import _loader_write_problems

    loader = {"_target_": "qconf.load", "max_shard_size": "5GB", "save": "/x", "force": False}
    assert _loader_write_problems(loader) == [
        write_problem("cfg.save", "save"),
        write_problem("cfg.force", "force"),
        write_problem("cfg.max_shard_size", "max_shard_size"),
    ]
    nested = {
        "a": [1, {"x": {"_target_": "qconf.load_pipeline", "force": True, "model": {}}}],
        "b": {"_target_": "qconf.validate", "save": "/x"},  # not a loader
        "c": {"_target_": "qconf.load", "model": {"save": "/x"}},  # not beside the loader
        "save": "/x",
        "d": ({"_target_": "qconf.load", "save": "/x"},),  # plain data holds lists, not tuples
    }
    assert _loader_write_problems(nested, "p") == [write_problem("p.a[1].x.force", "force")]
    assert _loader_write_problems([{"_target_": "qconf.load", "save": 1}, {"save": 1}]) == [
        write_problem("cfg[0].save", "save")
    ]
    assert _loader_write_problems({"_target_": "qconf.load"}) == []
    assert _loader_write_problems("save") == []


def test_safe_instantiate_refuses_a_loader_told_where_to_write() -> None:
    from qconf.plan.safety import safe_instantiate

    cfg = {"pipe": {"_target_": "qconf.load_pipeline", "save": "/x", "model": {"source": "x"}}}
    assert problems(safe_instantiate, cfg) == [write_problem("cfg.pipe.save", "save")]
    # what is checked is the config (the Python caller passes save= as a keyword argument)
    assert problems(safe_instantiate, {"_target_": "qconf.load", "force": True}, x="${y}") == [
        write_problem("cfg.force", "force"),
        Problem("kwargs.x", "resolves to another interpolation (${...})", "write the value itself"),
    ]


def test_which_targets_are_loaders() -> None:
    from qconf.plan.safety import _is_loader

    assert _is_loader("qconf.load") and _is_loader("qconf.load_pipeline")
    for other in ("qconf.validate", "qconf.nothing_here", "qconf.", "os.system", "", None, 1):
        assert not _is_loader(other), other


def test_safe_instantiate_refuses_environment_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    from omegaconf import OmegaConf
    from omegaconf.errors import InterpolationKeyError

    from qconf.plan.safety import safe_instantiate

    monkeypatch.setenv("QCONF_SAVING_SECRET", "abc")
    cfg = OmegaConf.create({"_target_": BNB, "a": "${oc.env:QCONF_SAVING_SECRET}"})
    assert problems(safe_instantiate, cfg) == [
        Problem(
            "config",
            "reads environment variable 'QCONF_SAVING_SECRET'",
            "write the value itself",
        )
    ]
    # any other error resolving the config is raised as it is
    with pytest.raises(InterpolationKeyError, match="missing"):
        safe_instantiate(OmegaConf.create({"_target_": BNB, "a": "${missing}"}))


def test_safe_instantiate_in_a_running_hydra_app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trust flags the app's files turned on are refused in cfg and args (not in kwargs: the
    Python caller's own), named once each."""
    import sys

    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from qconf.plan.safety import safe_instantiate

    monkeypatch.setattr(sys, "argv", ["app"])
    write(tmp_path / "app" / "app.yaml", "x: 1\n")
    pickle = {"source": "tiny-flux", "allow_pickle": True}
    remote = {"source": "tiny-flux", "trust_remote_code": True}
    with initialize_config_dir(str(tmp_path / "app"), version_base=None):
        HydraConfig.instance().set_config(compose("app", return_hydra_config=True))
        try:
            found = problems(
                safe_instantiate,
                {"_target_": "qconf.load", "model": pickle},
                {"model": remote},
                {"model": pickle},
                extra={"model": {"source": "tiny-flux", "trust_remote_code": "yes"}},
            )
        finally:
            HydraConfig.instance().cfg = None
    assert found == [
        Problem(
            "model.allow_pickle",
            "turned on by the app's config files; it lets the model run code",
            "type model.allow_pickle=true on the command line if you trust this model",
        ),
        Problem(
            "model.trust_remote_code",
            "turned on by the app's config files; it lets the model run code",
            "type model.trust_remote_code=true on the command line if you trust this model",
        ),
    ]


def test_other_spellings_of_allowed_objects(monkeypatch: pytest.MonkeyPatch) -> None:
    """A non-canonical spelling is resolved and compared by object. The comparison is cut to the
    allowed objects that resolve without diffusers and torchao (all: tests/test_security.py)."""
    from hydra._internal.utils import _locate

    import qconf.plan.safety as safety

    light = [_locate(name) for name in sorted(safety.allowed_targets())
             if name.split(".")[0] in ("qconf", "transformers")]  # fmt: skip
    monkeypatch.setattr(safety, "_allowed_objects", lambda: light)
    other = "transformers.utils.quantization_config.BitsAndBytesConfig"
    assert safety._is_allowed_object(other)
    assert safety._is_allowed_object(_locate(BNB))
    refused = (
        "transformers.utils.quantization_config.QuantizationMethod",
        "transformers.utils.nothing_here",
        "shutil.copyfile",
        "qconf.validate",
        1,
    )
    for name in refused:
        assert not safety._is_allowed_object(name), name
    made = safety.safe_instantiate({"_target_": other, "load_in_8bit": True})
    assert isinstance(made, _locate(BNB)) and made.load_in_8bit


def test_names_outside_the_resolvable_packages_are_never_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from qconf.plan.safety import safe_instantiate

    imported = tmp_path / "imported"
    write(tmp_path / "mods" / "qconf_probe_module.py", f"open({str(imported)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path / "mods"))
    target = "qconf_probe_module.f"
    (line,) = [str(p) for p in problems(safe_instantiate, {"_target_": target})]
    assert line.startswith(f"cfg._target_: '{target}' is not allowed — a config may name")
    assert not imported.exists() and "qconf_probe_module" not in sys.modules


def test_a_config_object_counts_as_a_level_of_nesting() -> None:
    """plain's depth bound (100) counts a DictConfig or dataclass as one level, its values as the
    next: 98 lists around one are read, 99 are too deep."""
    import dataclasses

    from omegaconf import OmegaConf

    from qconf.plan.safety import plain

    @dataclasses.dataclass
    class Leaf:
        a: int = 1

    def nest(levels: int, value: object) -> object:
        for _ in range(levels):
            value = [value]
        return value

    for make in (lambda: OmegaConf.create({"a": 1}), Leaf):
        assert plain(nest(98, make())) == nest(98, {"a": 1})
        assert problems(plain, nest(99, make())) == [
            Problem("config", "nested deeper than 100 levels", "")
        ]
