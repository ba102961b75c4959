"""Fast pins of the plan core for `make mutate`: the cross-field checks (qconf/plan/checks.py)
called directly on Part/PipelineParts built in memory (saved quantization blocks, unread weight
files, saved-only backends), the schema's helpers, the message helpers, compose's
app_command_line and resolve's accessors. Each assertion pins an exact Problem or value, so a
mutant that changes a string, a condition or an argument fails here in milliseconds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from qconf import PlanError
from qconf.errors import Problem
from qconf.plan.checks import raw_name_problems, saved_entries, saved_problems, source_problems
from qconf.plan.schema import ModelSpec, validate
from qconf.source.parts import Part, PipelineParts

FLUX = {"source": "tiny-flux"}
SVDQ = {"precision": "int4", "group_size": 64, "rank": 32, "targets": ["transformer_blocks.0"]}
NUNCHAKU = {"backend": "nunchaku_lite", "kwargs": {"svdq_w4a4": SVDQ}}
AUTO_ROUND = {"backend": "auto-round", "kwargs": {"bits": 4, "group_size": 32}}
SAVED_FIX = "compare it with a config.json {} writes, or re-save the model"
TRUST_FIX = "set model.trust_remote_code=true only if you trust this model's code"


def problems(call: Any) -> list[Problem]:
    with pytest.raises(PlanError) as caught:
        call()
    return caught.value.problems


def saved_part(library: str, block: dict) -> dict[str, Part]:
    return {"x": Part("x", library, "SomeModel", True, saved_quantization=block)}


def flux_folder(root: Path, **configs: dict) -> Path:
    """A Flux pipeline folder as validation sees it (as in tests/test_core.py)."""
    index = {
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
    root.mkdir(parents=True)
    (root / "model_index.json").write_text(json.dumps(index))
    for part, weights in (
        ("text_encoder", "model.safetensors"),
        ("text_encoder_2", "model.safetensors"),
        ("transformer", "diffusion_pytorch_model.safetensors"),
        ("vae", "diffusion_pytorch_model.safetensors"),
    ):
        (root / part).mkdir()
        (root / part / "config.json").write_text(json.dumps(configs.get(part, {})))
        (root / part / weights).write_bytes(b"")
    return root


# --- checks: saved quantization blocks ----------------------------------------------------------


def test_a_saved_method_that_cannot_be_reloaded_and_has_no_file() -> None:
    assert problems(
        lambda: saved_entries(saved_part("diffusers", {"quant_method": "modelopt"}))
    ) == [
        Problem(
            "model.source (x/config.json)",
            "part 'x' says quant_method 'modelopt', which cannot be reloaded from a saved folder",
            "load the unquantized model and quantize it with a plan",
        )
    ]


def test_a_saved_block_of_the_wrong_shape() -> None:
    block = {"quant_method": "torchao", "quant_type": {"default": 5}}
    assert problems(lambda: saved_entries(saved_part("diffusers", block))) == [
        Problem(
            "model.source (x/config.json)",
            "quantization_config has a field of the wrong shape (AttributeError: 'int' object "
            "has no attribute 'get')",
            SAVED_FIX.format("torchao"),
        )
    ]


def test_a_wrong_shape_is_said_in_80_characters(monkeypatch: pytest.MonkeyPatch) -> None:
    import qconf.plan.checks

    def from_saved(saved: dict) -> dict:
        raise ValueError("0123456789" * 9)

    monkeypatch.setattr(qconf.plan.checks, "entry_from_saved", from_saved)
    (problem,) = problems(lambda: saved_entries(saved_part("diffusers", {"quant_method": "sdnq"})))
    assert problem.what == (
        f"quantization_config has a field of the wrong shape (ValueError: {'0123456789' * 8})"
    )


def test_a_saved_block_breaking_the_backend_rules() -> None:
    block = {"quant_method": "auto-round", "bits": 4, "group_size": 0}
    assert problems(lambda: saved_entries(saved_part("diffusers", block))) == [
        Problem(
            "model.source (x/config.json)",
            "quantization_config → kwargs.group_size: 0 inputs per group",
            SAVED_FIX.format("auto-round"),
        )
    ]
    bad = {"quant_method": "nunchaku_lite", "svdq_w4a4": {**SVDQ, "group_size": 16, "targets": []}}
    where = "model.source (x/config.json)"
    assert problems(lambda: saved_entries(saved_part("diffusers", bad))) == [
        Problem(
            where,
            "quantization_config → kwargs.svdq_w4a4.targets: is empty",
            SAVED_FIX.format("nunchaku_lite"),
        ),
        Problem(
            where,
            "quantization_config → kwargs.svdq_w4a4.group_size: 16, but int4 SVDQ needs 64",
            SAVED_FIX.format("nunchaku_lite"),
        ),
    ]


def test_a_saved_method_read_on_diffusers_parts_only() -> None:
    block = {"quant_method": "auto-round", "bits": 4, "group_size": 32}
    assert problems(lambda: saved_entries(saved_part("transformers", block))) == [
        Problem(
            "model.source (x/config.json)",
            "part 'x' (transformers) says quant_method 'auto-round', which qconf reads on "
            "diffusers parts only",
            "load the unquantized model and quantize it with a plan",
        )
    ]
    # a part of another library is not refused here (its own check says what it is)
    (entry,) = saved_entries(saved_part("my_lib", block)).values()
    assert entry.canonical() == {"backend": "auto-round", "kwargs": {"group_size": 32}}
    (entry,) = saved_entries(saved_part("diffusers", block)).values()
    assert entry.spec.key == "auto-round"
    quanto = {"quant_method": "quanto", "weights": "int8"}
    assert list(saved_entries(saved_part("transformers", quanto))) == ["x"]


# --- checks: backends that only read saved folders ----------------------------------------------


def test_a_saved_only_backend_on_a_plain_part() -> None:
    def refused(quant: dict) -> list[Problem]:
        return problems(lambda: validate({"model": FLUX, "quant": quant}))

    what = "{} reads pre-quantized folders only; 'transformer' of built-in tiny-flux is not one"
    assert refused({"mapping": {"transformer": NUNCHAKU}}) == [
        Problem(
            "quant.mapping.transformer",
            what.format("nunchaku_lite"),
            "point model.source at a folder saved with nunchaku_lite and leave quant empty",
        )
    ]
    assert refused({**NUNCHAKU, "components": ["transformer"]}) == [
        Problem(
            "quant",
            what.format("nunchaku_lite"),
            "point model.source at a folder saved with nunchaku_lite and leave quant empty",
        )
    ]
    assert refused({"mapping": {"transformer": AUTO_ROUND}}) == [
        Problem(
            "quant.mapping.transformer",
            what.format("auto-round"),
            "point model.source at a folder saved with auto-round and leave quant empty, or "
            "name the part's own folder: {backend: auto-round, folder: ...}",
        )
    ]


def test_a_saved_only_backend_naming_its_own_folder(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    entry = {**AUTO_ROUND, "folder": str(tmp_path)}
    plan = validate({"model": FLUX, "quant": {"mapping": {"transformer": entry}}})
    assert plan.targets()["transformer"].own_source() == str(tmp_path)


def test_a_saved_only_backend_on_its_saved_part(tmp_path: Path) -> None:
    block = {"quant_method": "nunchaku_lite", "svdq_w4a4": SVDQ}
    folder = flux_folder(tmp_path / "flux", transformer={"quantization_config": block})
    model = {"source": str(folder)}
    plan = validate({"model": model, "quant": {"mapping": {"transformer": NUNCHAKU}}})
    found = plan.parts()
    assert saved_problems(plan, found) == []
    assert list(saved_entries(found.weighted)) == ["transformer"]
    as_saved = validate({"model": model})
    assert saved_problems(as_saved, found) == []
    assert as_saved.targets()["transformer"].canonical() == NUNCHAKU


# --- checks: source problems and raw names ------------------------------------------------------


def test_weights_in_a_file_the_library_does_not_read() -> None:
    unread = ("model.safetensors", "diffusion_pytorch_model.safetensors")
    parts = {
        "a": Part("a", "diffusers", "C", True, unread_weights=unread),
        "b": Part("b", "diffusers", "C", True, pickle_only=True, unread_weights=unread),
        "c": Part("c", "diffusers", "C", False, unread_weights=unread),
        "d": Part("d", "transformers", "C", True),
    }
    found = PipelineParts("P", parts, "o")
    assert source_problems(ModelSpec(source="x", allow_pickle=True), found) == [
        Problem(
            "model.source (a/)",
            "its weights are in model.safetensors, which diffusers does not read (it reads "
            "diffusion_pytorch_model.safetensors)",
            "rename the file to diffusion_pytorch_model.safetensors",
        )
    ]
    assert source_problems(ModelSpec(source="x"), found)[1] == Problem(
        "model.source",
        "part 'b' has only pickle weights (.bin/.pt/.ckpt), which can run code",
        "convert them to .safetensors, or set model.allow_pickle=true to trust them",
    )


def test_source_problems_for_custom_code() -> None:
    parts = {"a": Part("a", "my_lib", "C", True, custom_code="its class comes from 'my_lib'")}
    found = PipelineParts("P", parts, "o", custom_code="a pipeline file")
    assert source_problems(ModelSpec(source="x"), found) == [
        Problem("model.source", "the pipeline needs custom code: a pipeline file", TRUST_FIX),
        Problem(
            "model.source", "part 'a' needs custom code: its class comes from 'my_lib'", TRUST_FIX
        ),
    ]
    assert source_problems(ModelSpec(source="x", trust_remote_code=True), found) == []


def test_raw_name_problems_pass_only_a_string_pipeline() -> None:
    asked: list[tuple[str, Any]] = []

    def open_source(source: str, pipeline: Any) -> tuple[None, list[Problem]]:
        asked.append((source, pipeline))
        return None, [Problem("model.source", "x", "y")]

    data = {"model": {"source": "tiny-flux", "pipeline": 5}, "quant": {}}
    assert raw_name_problems(data, open_source) == [Problem("model.source", "x", "y")]
    data = {"model": {"source": "tiny-flux", "pipeline": "FluxPipeline"}, "quant": {}}
    assert raw_name_problems(data, open_source) == [Problem("model.source", "x", "y")]
    assert asked == [("tiny-flux", None), ("tiny-flux", "FluxPipeline")]


# --- schema ---------------------------------------------------------------------------------------

BACKEND_FIX = (
    "set one of: bitsandbytes_4bit, bitsandbytes_8bit, torchao, quanto, sdnq, gguf, bfl, "
    "nunchaku_lite, modelopt, auto-round; or per part: quant.mapping.<part>=<option>"
)
CONF_FIX = "set the value (e.g. model=tiny-flux)"
OUTSIDE_FIX = (
    "plans are written into saved and run folders, so qconf never resolves {}; put the value "
    "itself on the command line"
)


def test_a_backend_name_that_is_not_a_string() -> None:
    assert problems(lambda: validate({"model": FLUX, "quant": {"backend": []}})) == [
        Problem("quant.backend", "[] is not a backend name", BACKEND_FIX)
    ]
    assert problems(lambda: validate({"model": FLUX, "quant": {"backend": {"a": 1}}})) == [
        Problem("quant.backend", "a mapping is not a backend name", BACKEND_FIX)
    ]
    assert validate({"model": FLUX, "quant": {"backend": None}}).quant.backend is None


def test_omegaconf_values_that_cannot_be_read() -> None:
    from omegaconf import OmegaConf

    def refused(source: str) -> list[Problem]:
        return problems(lambda: validate(OmegaConf.create({"model": {"source": source}})))

    assert refused("???") == [Problem("model.source", "Missing mandatory value: source", CONF_FIX)]
    assert refused("${nope}") == [
        Problem("model.source", "Interpolation key 'nope' not found", CONF_FIX)
    ]
    assert refused("${oc.decode:'[1'}") == [
        Problem(
            "model.source",
            "GrammarParseError raised while resolving interpolation: missing BRACKET_CLOSE at "
            "'<EOF>'",
            CONF_FIX,
        )
    ]
    nested = OmegaConf.create({"model": {"source": "tiny-flux"}, "run": {"prompt": "${x.y}"}})
    assert problems(lambda: validate({"model": nested.model, "run": nested.run})) == [
        Problem("run.prompt", "Interpolation key 'x.y' not found", CONF_FIX)
    ]
    ok = validate(OmegaConf.create({"model": {"source": "tiny-flux"}, "run": {"steps": 3}}))
    assert (ok.model.source, ok.run.steps) == ("tiny-flux", 3)


def test_environment_reads_and_app_resolvers_are_refused() -> None:
    from omegaconf import OmegaConf

    def refused(source: str) -> list[Problem]:
        return problems(lambda: validate(OmegaConf.create({"model": {"source": source}})))

    assert refused("${oc.env:HOME}") == [
        Problem(
            "model.source",
            "reads environment variable 'HOME' (${oc.env:...})",
            OUTSIDE_FIX.format("environment variables"),
        )
    ]
    assert refused("${env:HOME}") == [  # the legacy name is an environment read too
        Problem(
            "model.source",
            "reads environment variable 'HOME' (${oc.env:...})",
            OUTSIDE_FIX.format("environment variables"),
        )
    ]
    OmegaConf.register_new_resolver("qconf_test_resolver", lambda: "x", replace=True)
    try:
        assert refused("${qconf_test_resolver:}") == [
            Problem(
                "model.source",
                "calls resolver 'qconf_test_resolver', which qconf does not run inside a plan "
                "(${qconf_test_resolver:...})",
                OUTSIDE_FIX.format("resolvers an app registered"),
            )
        ]
    finally:
        OmegaConf.clear_resolver("qconf_test_resolver")


def test_omegaconf_values_too_deep_once_resolved() -> None:
    from omegaconf import OmegaConf

    def wrapped(value: Any, levels: int) -> Any:
        for _ in range(levels):
            value = {"a": value}
        return value

    # 25 interpolations (at most 30 are read), each 20 levels above the next: shallow as
    # written, a stack overflow once resolved
    run = {f"x{i}": wrapped(f"${{run.x{i + 1}}}", 20) for i in range(25)}
    cfg = OmegaConf.create({"model": FLUX, "run": {**run, "x25": 1}})
    assert problems(lambda: validate(cfg)) == [
        Problem("plan", "values are nested too deeply", "check the nested values")
    ]
    # written 35 levels deep in a DictConfig (whose own depth reads as 1): refused once plain
    deep = OmegaConf.create({"model": FLUX, "run": wrapped(1, 35)})
    assert problems(lambda: validate(deep)) == [
        Problem(
            "plan",
            "values are nested more than 32 levels deep",
            "a plan is a few levels deep: check the nested values you wrote",
        )
    ]


def test_opened_source_opens_each_source_once_per_context() -> None:
    from qconf.plan.schema import opened_source

    context: dict[str, Any] = {"options": {}}
    first = opened_source(context, "tiny-flux", None)
    assert (first[0].given, first[0].pipeline_asked, first[1]) == ("tiny-flux", None, [])
    assert context["sources"] == {("tiny-flux", None): first}
    assert opened_source(context, "tiny-flux", None) is first
    other = opened_source(context, "tiny-flux", "FluxPipeline")
    assert other is not first and other[0].pipeline_asked == "FluxPipeline"
    assert list(context["sources"]) == [("tiny-flux", None), ("tiny-flux", "FluxPipeline")]
    assert opened_source(None, "tiny-flux", None) is not first


def test_validate_keeps_the_source_it_opened() -> None:
    plan = validate({"model": FLUX})
    assert plan._source is not None
    assert (plan._source.given, plan._source.kind, plan._source.pipeline_asked) == (
        "tiny-flux",
        "tiny",
        None,
    )
    assert plan.source is plan._source
    asked = validate({"model": {**FLUX, "pipeline": "FluxPipeline"}})
    assert asked._source is not None and asked._source.pipeline_asked == "FluxPipeline"
    again = validate(plan)
    assert again == plan and again._source is not None


def test_run_images_are_prompts_times_seeds() -> None:
    from qconf.plan.schema import RunSpec

    assert RunSpec().images() == [("a photo of a cat wearing a tiny hat", 0)]
    assert RunSpec(prompt=["a", "b"], seed=[1, 2]).images() == [
        ("a", 1),
        ("a", 2),
        ("b", 1),
        ("b", 2),
    ]
    assert RunSpec(prompt="p", seed=[3, 4]).images() == [("p", 3), ("p", 4)]
    assert RunSpec(prompt=["p", "q"], seed=5).images() == [("p", 5), ("q", 5)]


# --- messages -------------------------------------------------------------------------------------

SCHEMA_FIX = "fix the value (qconf schema)"


def test_a_union_error_is_said_once_per_field() -> None:
    def refused(run: dict) -> list[Problem]:
        return problems(lambda: validate({"model": FLUX, "run": run}))

    # run.seed is int | list[int] (constrained ints): one error, at run.seed itself
    assert refused({"seed": "x"}) == [
        Problem("run.seed", "Input should be a valid integer (got 'x')", SCHEMA_FIX)
    ]
    # the member that got furthest is kept
    assert refused({"seed": [1, "x"]}) == [
        Problem("run.seed.1", "Input should be a valid integer (got 'x')", SCHEMA_FIX)
    ]
    # two union fields and a plain one, each said once, in pydantic's order
    assert refused({"prompt": 5, "seed": "x", "steps": 0}) == [
        Problem("run.prompt", "Input should be a valid string (got 5)", SCHEMA_FIX),
        Problem("run.steps", "Input should be greater than or equal to 1 (got 0)", SCHEMA_FIX),
        Problem("run.seed", "Input should be a valid integer (got 'x')", SCHEMA_FIX),
    ]


def test_a_withheld_library_kwarg_says_why() -> None:
    why = (
        "not offered: transformers' quanto quantizer refuses quantized activations at load "
        '("We don\'t support quantizing the activations")'
    )
    kwargs = {"weights_dtype": "int8", "activations": "int8"}
    mapping = {"mapping": {"vae": {"backend": "quanto", "kwargs": kwargs}}}
    assert problems(lambda: validate({"model": FLUX, "quant": mapping})) == [
        Problem("quant.mapping.vae.kwargs.activations", why, "remove it")
    ]
    quant = {"backend": "quanto", "kwargs": kwargs}
    assert problems(lambda: validate({"model": FLUX, "quant": quant})) == [
        Problem("quant.kwargs.activations", why, "remove it")
    ]


# --- compose: a Hydra app's own command line ----------------------------------------------------

# An app's own conf tree over qconf's (as examples/conf/train.yaml, which `make mutate` does not
# copy): its file sets hydra.run.dir, which the app's tree makes trusted (a --config-dir's may
# not), and it has a backend option of its own.
APP_TRAIN = """defaults:
  - qconf
  - _self_

train:
  rank: 4

hydra:
  searchpath: [pkg://qconf.conf]
  run:
    dir: outputs/train
"""
MINE = "backend: quanto\nkwargs:\n  weights_dtype: int4\n"
APP_OTHER = "steps: 2\npipe:\n  model:\n    source: tiny-flux\n"
QUANTO_INT8 = [
    "++quant.mapping.transformer=null",
    "++quant.mapping.transformer={backend:'quanto',kwargs:{weights_dtype:'int8'}}",
]
PLUGIN_FIX = "pick one by name: hydra/launcher=basic|joblib|submitit_local|submitit_slurm"
JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"


@pytest.fixture(scope="module")
def app_conf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    conf = tmp_path_factory.mktemp("app") / "conf"
    conf.mkdir()
    (conf / "train.yaml").write_text(APP_TRAIN)
    (conf / "app.yaml").write_text(APP_OTHER)
    (conf / "backend").mkdir()
    (conf / "backend" / "mine.yaml").write_text(MINE)
    return conf


@pytest.fixture
def app_line(app_conf: Path) -> Any:
    from qconf.plan.compose import app_command_line

    def line(argv: list[str], config_name: str = "train") -> list[str]:
        return app_command_line(app_conf, config_name, argv)

    return line


def user_launcher_dir(root: Path) -> Path:
    """A --config-dir whose preset picks a launcher option defined in the dir itself."""
    (root / "preset").mkdir(parents=True)
    (root / "hydra" / "launcher").mkdir(parents=True)
    (root / "preset" / "par.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /hydra/launcher: mine\n"
    )
    (root / "hydra" / "launcher" / "mine.yaml").write_text(f"_target_: {JOBLIB}\nn_jobs: 2\n")
    return root


def test_the_app_command_line_rewrites_per_part_overrides(app_line: Any) -> None:
    # the app's own file sets hydra.run.dir: trusted, as the app's tree is
    assert app_line(["quant.mapping.transformer=quanto-int8", "train.rank=8"]) == [
        *QUANTO_INT8,
        "train.rank=8",
    ]
    assert app_line(["steps=3"], "app") == ["steps=3"]
    # an option of the app's own tree expands as qconf's do
    assert app_line(["quant.mapping.vae=mine"]) == [
        "++quant.mapping.vae=null",
        "++quant.mapping.vae={backend:'quanto',kwargs:{weights_dtype:'int4'}}",
    ]
    assert problems(lambda: app_line(["train.rank=2", "run.nokey=1"])) == [
        Problem(
            "override 'run.nokey=1'",
            "no key 'run.nokey' in the plan",
            "check the spelling (`qconf show` prints every key); prefix + to add a new key",
        )
    ]


def test_the_app_config_dir_is_named_in_its_problems() -> None:
    from qconf.plan.compose import app_command_line

    assert problems(lambda: app_command_line("~nosuchuserqq/conf", "train", [])) == [
        Problem(
            "the app's config dir",
            "'~nosuchuserqq/conf': no user 'nosuchuserqq' on this machine",
            "write the full path, or ~/... for your own home",
        )
    ]


def test_the_app_command_line_keeps_hydra_flags_in_front(app_line: Any) -> None:
    assert app_line(["-cn", "app", "steps=3"], "nosuch") == ["-cn", "app", "steps=3"]
    assert app_line(["--config-name", "app", "steps=3"], "nosuch") == [
        "--config-name",
        "app",
        "steps=3",
    ]
    argv = ["--cfg", "job", "-m", "quant.mapping.transformer=quanto-int8", "-p", "x"]
    assert app_line([*argv, "--experimental-rerun", "y", "-c", "all", "--package", "z"]) == [
        "--cfg",
        "job",
        "-m",
        "-p",
        "x",
        "--experimental-rerun",
        "y",
        "-c",
        "all",
        "--package",
        "z",
        *QUANTO_INT8,
    ]
    # a flag with nothing after it is kept as a flag
    assert app_line(["train.rank=8", "--config-dir"]) == ["--config-dir", "train.rank=8"]
    assert app_line(["train.rank=8", "-cn"]) == ["-cn", "train.rank=8"]
    assert app_line(["train.rank=8", "--cfg"]) == ["--cfg", "train.rank=8"]
    assert app_line(["-m", "-cn", "app", "steps=3"], "nosuch") == ["-m", "-cn", "app", "steps=3"]


def test_the_app_command_line_reads_the_users_config_dir(app_line: Any, tmp_path: Path) -> None:
    user = user_launcher_dir(tmp_path / "c=1")  # a path with "=" in it
    refused = [
        Problem(
            "hydra.launcher._target_",
            f"'{JOBLIB}' comes from a config file, not from an installed Hydra plugin that qconf "
            "runs",
            PLUGIN_FIX,
        )
    ]
    assert problems(lambda: app_line([f"--config-dir={user}", "preset=par"])) == refused
    assert problems(lambda: app_line(["-cd", str(user), "preset=par"])) == refused
    assert problems(lambda: app_line(["--config-dir", str(user), "preset=par"])) == refused
    (missing,) = problems(lambda: app_line(["preset=par"]))
    assert (missing.where, missing.what) == ("override 'preset=par'", "unknown preset 'par'")
    assert problems(lambda: app_line(["-cd", str(user), "hydra/launcher=mine"])) == [
        Problem(
            "override 'hydra/launcher=mine'",
            "names a Hydra option found only in a config file (its settings would run as Hydra's "
            "own)",
            "use one from qconf or an installed Hydra plugin, e.g. "
            "hydra/launcher=basic|joblib|submitit_local|submitit_slurm",
        )
    ]
    assert app_line(["-cd", str(user), "train.rank=2"]) == ["-cd", str(user), "train.rank=2"]
    assert app_line(["-m", "-cd", str(user), "steps=3"], "app") == [
        "-m",
        "-cd",
        str(user),
        "steps=3",
    ]
    assert app_line([f"--config-dir={user}", "train.rank=2"]) == [
        f"--config-dir={user}",
        "train.rank=2",
    ]


def test_the_app_command_line_checks(app_conf: Path, app_line: Any) -> None:
    from qconf.plan.compose import check_app_command_line

    assert check_app_command_line(app_conf, "train", ["train.rank=8"]) is None
    bad = [
        Problem(
            "override 'hydra.job.name=bad name!'",
            "bad override syntax (token recognition error at: '!')",
            "write key=value, +key=value, ~key or group=option; quote values with spaces",
        )
    ]
    assert problems(lambda: app_line(["hydra.job.name=bad name!"])) == bad
    assert problems(lambda: check_app_command_line(app_conf, "train", ["x=bad name!"]))[0].what == (
        "bad override syntax (token recognition error at: '!')"
    )
    assert problems(lambda: app_line(["steps=3"], "nosuch")) == [
        Problem(
            "config",
            "Cannot find primary config 'nosuch'. Check that it's in your config search path.",
            "check --config-name/--config-dir",
        )
    ]


def test_a_composed_config_is_marked_and_open() -> None:
    from omegaconf import OmegaConf

    from qconf.plan.compose import compose
    from qconf.plan.trust import COMPOSED_FLAG

    cfg = compose(["model=tiny-flux"])
    assert cfg._get_flag(COMPOSED_FLAG) is True
    assert OmegaConf.is_struct(cfg) is False
    assert "hydra" not in cfg


# --- resolve --------------------------------------------------------------------------------------


def test_a_part_read_from_its_own_file_names_it_in_json(tmp_path: Path) -> None:
    file = tmp_path / "t.gguf"
    file.write_bytes(b"")
    gguf = {"backend": "gguf", "file": str(file)}
    plan = validate({"model": FLUX, "quant": {"mapping": {"transformer": gguf, "vae": "int8wo"}}})
    resolved = plan.resolve()
    components = resolved.to_json()["components"]
    assert components == {
        "text_encoder": None,
        "text_encoder_2": None,
        "transformer": {
            "backend": "gguf",
            "library": "diffusers",
            "config_class": "GGUFQuantizationConfig",
            "kwargs": {},
            "file": str(file),
        },
        "vae": {
            "backend": "torchao",
            "library": "diffusers",
            "config_class": "TorchAoConfig",
            "kwargs": {"quant_type": {"name": "Int8WeightOnlyConfig"}},
        },
    }
    only_file = validate({"model": FLUX, "quant": {"mapping": {"transformer": gguf}}})
    assert only_file.resolve().quant_mapping() == {}  # a part read from its file builds nothing


def test_parts_saved_pre_quantized_build_no_config(tmp_path: Path) -> None:
    block = {"quant_method": "bitsandbytes", "load_in_4bit": True, "bnb_4bit_quant_type": "nf4"}
    folder = flux_folder(tmp_path / "flux", vae={"quantization_config": block})
    resolved = validate({"model": {"source": str(folder)}}).resolve()
    assert list(resolved.quantized) == ["vae"]
    assert resolved.quant_mapping() == {}


def test_a_defaults_chain_too_deep_for_hydra(tmp_path: Path) -> None:
    from qconf.plan.compose import compose

    (tmp_path / "preset").mkdir()
    for i in range(600):  # each preset's defaults name the next: Hydra recurses once per file
        (tmp_path / "preset" / f"p{i}.yaml").write_text(
            f"# @package _global_\ndefaults:\n  - /preset/p{i + 1}\n"
        )
    (tmp_path / "preset" / "p600.yaml").write_text("# @package _global_\n{}\n")
    assert problems(lambda: compose(["preset=p0"], config_dir=tmp_path)) == [
        Problem("config", "nested too deeply", "flatten the value or the file")
    ]
