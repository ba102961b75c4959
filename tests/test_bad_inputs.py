"""Wrong input of every kind ends in `error: <where>: <what> — <fix>` lines and exit code 2: no
traceback, nothing half-written. The CLI runs in-process (qconf.cli.main.main)."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from qconf.backends import REGISTRY
from qconf.cli.main import main
from qconf.source.tiny import tiny_pipeline_path

LINE = re.compile(r"^error: \S.*?: .+ — .+$")


class _CurrentStderr:
    """Writes to whatever sys.stderr is now (a test's capture)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


@pytest.fixture(autouse=True)
def _library_logs_to_this_test() -> None:
    """diffusers/transformers bind their log handler to the sys.stderr of the test that first
    imported them (an earlier test's capture, closed by now)."""
    for name in ("diffusers", "transformers"):
        for handler in logging.getLogger(name).handlers:
            if type(handler) is logging.StreamHandler:
                handler.stream = _CurrentStderr()
                handler.flush = handler.stream.flush  # diffusers binds the old stream's flush


def fails(capsys: pytest.CaptureFixture[str], *args: str) -> list[str]:
    """Run `qconf args...`; assert exit 2, only well-formed error lines, no traceback."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert "Traceback" not in out + err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors, err
    for line in errors:
        assert LINE.match(line), line
    return errors


@pytest.fixture
def flux(tmp_path: Path, qconf_cache: Path) -> Path:
    """A writable copy of tiny-flux."""
    folder = tmp_path / "flux"
    shutil.copytree(tiny_pipeline_path("tiny-flux"), folder)
    return folder


def _write(path: Path, data: object) -> None:
    path.write_text(data if isinstance(data, str) else json.dumps(data))


def _set_index(folder: Path, **entries: object) -> None:
    index = json.loads((folder / "model_index.json").read_text())
    index.update(entries)
    _write(folder / "model_index.json", index)


# --- 1. malformed model folders -----------------------------------------------------------------

READERS = [
    ["validate", "--plan-only"],
    ["show"],
    ["estimate"],
]

BAD_INDEX = {
    "list": ([["diffusers", "AutoencoderKL"]], "holds a list, expected a JSON object"),
    "invalid json": ('{"_class_name": "FluxPipeline",', "is not valid JSON"),
    "deep json": ("[" * 100_000 + "]" * 100_000, "nested"),
    "class entry a string": ({"_class_name": "FluxPipeline", "vae": "AutoencoderKL"}, None),
    "class entry 3-list": (
        {"_class_name": "FluxPipeline", "vae": ["diffusers", "AutoencoderKL", "x"]},
        "expected [library, class]",
    ),
    "class entry numbers": ({"_class_name": "FluxPipeline", "vae": [1, 2]}, "[library, class]"),
    "os.system": ({"_class_name": "FluxPipeline", "vae": ["os", "system"]}, "unknown library 'os'"),
    "class lowercase": (
        {"_class_name": "FluxPipeline", "vae": ["diffusers", "system"]},
        "'system' is not a class name",
    ),
    "pipeline name": ({"_class_name": {"a": 1}}, "_class_name is"),
}


@pytest.mark.parametrize("command", READERS, ids=lambda c: c[0])
@pytest.mark.parametrize("case", sorted(BAD_INDEX))
def test_malformed_model_index(capsys, flux: Path, command: list[str], case: str) -> None:
    data, expected = BAD_INDEX[case]
    _write(flux / "model_index.json", data)
    if case == "class entry a string":  # a pipeline setting, not a part: the part is just absent
        return
    errors = fails(capsys, *command, f"model.source={flux}")
    assert any(str(flux / "model_index.json") in e and expected in e for e in errors), errors


@pytest.mark.parametrize("command", [*READERS, ["inspect"]], ids=lambda c: c[0])
@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ([1, 2], "holds a list"),
        ("{nope", "is not valid JSON"),
        ("[" * 5000 + "]" * 5000, "nested"),
        ('{"a":' * 40 + "1" + "}" * 40, "nested more than 32 levels deep"),
        ({"quantization_config": [1]}, "quantization_config is a list"),
    ],
)
def test_malformed_part_config(capsys, flux: Path, command, data, expected) -> None:
    _write(flux / "transformer" / "config.json", data)
    args = [*command, flux] if command == ["inspect"] else [*command, f"model.source={flux}"]
    errors = fails(capsys, *args)
    assert any(str(flux / "transformer" / "config.json") in e and expected in e for e in errors)


def test_inspect_malformed_model_index(capsys, flux: Path) -> None:
    _write(flux / "model_index.json", "[]")
    assert fails(capsys, "inspect", flux) == [
        f"error: {flux / 'model_index.json'}: model_index.json holds a list, expected a JSON "
        "object — fix or replace the file"
    ]


def test_config_values_a_model_cannot_be_built_with(capsys, flux: Path) -> None:
    config = json.loads((flux / "transformer" / "config.json").read_text())
    config["num_layers"] = "many"
    _write(flux / "transformer" / "config.json", config)
    errors = fails(capsys, "estimate", f"model.source={flux}")
    assert "config.json (num_layers): is 'many', not a whole number" in errors[0]


def _truncate(file: Path, keep: int) -> None:
    data = file.read_bytes()
    file.write_bytes(data[:keep] if keep >= 0 else data[:keep])


@pytest.mark.parametrize("command", [["estimate"], ["load"]])
@pytest.mark.parametrize("keep", [4, 100, -100], ids=["no-header", "cut-header", "cut-data"])
def test_truncated_safetensors(capsys, flux: Path, command: list[str], keep: int) -> None:
    weights = flux / "transformer" / "diffusion_pytorch_model.safetensors"
    _truncate(weights, keep)
    errors = fails(capsys, *command, f"model.source={flux}")
    assert errors[0].startswith(f"error: {weights}: ")


def test_unknown_class_of_an_installed_library_fails_before_loading(capsys, flux: Path) -> None:
    _set_index(flux, vae=["diffusers", "NoSuchAutoencoder"])
    errors = fails(capsys, "load", f"model.source={flux}")
    assert "has no class 'NoSuchAutoencoder'" in errors[0]


# --- 5. checkpoints that lack weights -----------------------------------------------------------


def test_a_missing_weight_fails_the_load_naming_part_and_count(capsys, flux: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights = flux / "transformer" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    del state["norm_out.linear.weight"]
    save_file(state, weights)
    errors = fails(capsys, "load", f"model.source={flux}", "quant.mapping.transformer=int8wo")
    assert errors == [
        "error: model.source (transformer): 1 weight(s) missing from the checkpoint would be "
        "left uninitialised: norm_out.linear.weight — re-download or re-save the model; its "
        "weight files do not match its config.json"
    ]


def test_a_missing_weight_of_a_transformers_part_fails_too(capsys, flux: Path) -> None:
    from safetensors.torch import load_file, save_file

    weights = flux / "text_encoder" / "model.safetensors"
    state = load_file(weights)
    removed = [k for k in state if k.endswith("layer_norm1.bias")]
    for key in removed:
        del state[key]
    save_file(state, weights)
    errors = fails(capsys, "load", f"model.source={flux}")
    assert errors[0].startswith(
        f"error: model.source (text_encoder): {len(removed)} weight(s) missing"
    )


def test_safetensors_header_reader_matches_safetensors(flux: Path) -> None:
    from safetensors import safe_open

    from qconf.source.files import safetensors_header

    file = flux / "transformer" / "diffusion_pytorch_model.safetensors"
    with safe_open(str(file), framework="pt") as handle:
        expected = {
            k: (tuple(handle.get_slice(k).get_shape()), handle.get_slice(k).get_dtype())
            for k in handle.keys()  # noqa: SIM118
        }
    assert safetensors_header(file) == expected


def test_safetensors_header_length_past_the_end(tmp_path: Path) -> None:
    from qconf.errors import ModelSourceError
    from qconf.source.files import safetensors_header

    file = tmp_path / "x.safetensors"
    file.write_bytes(struct.pack("<Q", 10**9) + b"{}")
    with pytest.raises(ModelSourceError, match="bad header length"):
        safetensors_header(file)
    assert os.path.exists(file)


# --- 3. paths: ~user, unwritable outputs, the cache -----------------------------------------

NO_USER = "~qconf-no-such-user/x"


@pytest.mark.parametrize(
    ("args", "where"),
    [
        (["validate", f"model.source='{NO_USER}'"], "model.source"),
        (["show", f"model.source='{NO_USER}'"], "model.source"),
        (["estimate", "--folder", NO_USER], "--folder"),
        (["estimate", "--plot", f"{NO_USER}.png"], "--plot"),
        (["schema", "-o", f"{NO_USER}.json"], "--output"),
        (["inspect", NO_USER], "inspect"),
        (["validate", "--config-dir", NO_USER], "--config-dir"),
        (["list", "options", "--config-dir", NO_USER], "--config-dir"),
        (["load", "--save", NO_USER], "--save"),
        (["validate", f"quant.mapping.transformer={{backend:gguf,file:'{NO_USER}.gguf'}}"], "file"),
    ],
    ids=lambda v: v if isinstance(v, str) else v[0],
)
def test_unknown_user_in_a_path(capsys, qconf_cache: Path, args: list[str], where: str) -> None:
    errors = fails(capsys, *args)
    assert any("no user 'qconf-no-such-user'" in e and where in e for e in errors), errors


def _outputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    (tmp_path / "a-folder.png").mkdir()
    (tmp_path / "a-folder.json").mkdir()
    return {
        "missing folder": (tmp_path / "nope" / "out", "does not exist"),
        "a folder": (tmp_path / "a-folder", "is a folder"),
        "not writable": (Path("/proc/out"), "cannot write in '/proc'"),
    }


@pytest.mark.parametrize("case", ["missing folder", "a folder", "not writable"])
@pytest.mark.parametrize(("flag", "suffix"), [("-o", ".json"), ("--plot", ".png")])
def test_unwritable_outputs(capsys, tmp_path: Path, qconf_cache, case, flag, suffix) -> None:
    path, expected = _outputs(tmp_path)[case]
    target = f"{path}{suffix}"
    before = sorted(tmp_path.rglob("*"))
    command = ["schema"] if flag == "-o" else ["estimate"]
    errors = fails(capsys, *command, flag, target)
    assert expected in errors[0], errors
    assert sorted(tmp_path.rglob("*")) == before  # nothing half-written


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_read_only_folder_output(capsys, tmp_path: Path) -> None:
    tmp_path.chmod(0o500)
    try:
        errors = fails(capsys, "schema", "-o", tmp_path / "schema.json")
    finally:
        tmp_path.chmod(0o700)
    assert "permission denied" in errors[0]
    assert not list(tmp_path.iterdir())


def test_outputs_are_written_whole(capsys, tmp_path: Path, qconf_cache) -> None:
    assert main(["schema", "-o", str(tmp_path / "s.json")]) == 0
    assert main(["estimate", "--plot", str(tmp_path / "p.png")]) == 0
    capsys.readouterr()
    assert json.loads((tmp_path / "s.json").read_text())["title"] == "qconf plan"
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.png", "s.json"]  # no temp files


def test_a_failing_write_leaves_nothing(tmp_path: Path) -> None:
    from qconf.trust.userpath import atomic_output

    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError), atomic_output(target, "-o") as temp:
        temp.write_text("half")
        raise RuntimeError("killed")
    assert not list(tmp_path.iterdir())


def test_plot_with_an_unknown_extension(capsys, tmp_path: Path, qconf_cache) -> None:
    errors = fails(capsys, "estimate", "--plot", tmp_path / "plot.nope")
    assert errors[0].startswith("error: --plot: ")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("cache", ["/proc/qconf-cache", "~qconf-no-such-user/cache"])
def test_unwritable_cache(capsys, monkeypatch, tmp_path: Path, cache: str) -> None:
    monkeypatch.setenv("QCONF_CACHE", cache)
    errors = fails(capsys, "load", "model.source=tiny-sd")
    assert errors[0].startswith("error: QCONF_CACHE: ")


# --- 7. messages --------------------------------------------------------------------------------


def test_missing_backend_lists_the_backends(capsys) -> None:
    errors = fails(capsys, "validate", "quant.mapping.transformer={kwargs:{}}")
    assert errors == [
        "error: quant.mapping.transformer.backend: missing — set backend: one of "
        + ", ".join(REGISTRY)
    ]
    errors = fails(
        capsys, "validate", "quant.mapping.transformer={backend:torchao,kwargs:{quant_type:{}}}"
    )
    assert "set name: one of Int8WeightOnlyConfig, " in errors[0]


def test_a_wrong_value_is_quoted_short_never_the_plan(capsys) -> None:
    errors = fails(capsys, "validate", "model.source={a:1}")
    assert errors == [
        "error: model.source: Input should be a valid string (got a mapping) — fix the value "
        "(qconf schema)"
    ]


def test_list_shows_extras_in_brackets(capsys) -> None:
    assert main(["list", "backends"]) == 0
    out = capsys.readouterr().out
    assert "qconf[torchao]" in out and "qconf[quanto]" in out


def test_user_strings_are_printed_with_controls_escaped(capsys, tmp_path: Path) -> None:
    from qconf.text import markup, safe

    assert safe("a\x1b[31mb\nc\x9b") == "a\\x1b[31mb\\nc\\x9b"
    assert markup("qconf[torchao]\x07") == "qconf\\[torchao]\\x07"
    options = tmp_path / "backend"
    options.mkdir()
    (options / "evil.yaml").write_text('backend: torchao\nkwargs: {note: "[bold]x\\e[2J"}\n')
    assert main(["list", "options", "--config-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and '"[bold]x' in out  # json.dumps escaped it; rich kept the [
    assert (
        main(["validate", "--plan-only", "model.source='a\x1b[2Jb'", "model.pipeline=FluxPipeline"])
        == 0
    )
    out = capsys.readouterr().out
    assert "\x1b" not in out and "a\\x1b[2Jb" in out


# --- 2. saved quantization_config blocks of unusual shapes ----------------------------------

_INT8 = {"default": {"_type": "Int8WeightOnlyConfig", "_data": {}}}
SAVED = {
    "not a mapping": ("int8", "quantization_config is a string, expected a JSON object"),
    "no quant_method": ({"bits": 8}, "quantization_config has no quant_method"),
    "quant_method a list": ({"quant_method": ["torchao"]}, "has no quant_method"),
    "unknown quant_method": ({"quant_method": "awq"}, "saved with quant_method 'awq'"),
    "gguf": ({"quant_method": "gguf"}, "cannot be reloaded from a saved folder"),
    "skip list a number": (
        {"quant_method": "quanto", "weights_dtype": "int8", "modules_to_not_convert": 5},
        "skip",
    ),
    "skip list a string": (
        {"quant_method": "torchao", "quant_type": _INT8, "modules_to_not_convert": "proj_out"},
        "skip",
    ),
    "weights dtype a number": ({"quant_method": "quanto", "weights_dtype": 8}, "weights_dtype"),
    "quant_type a number": ({"quant_method": "torchao", "quant_type": 5}, "quant type '5'"),
    "granularity data a number": (
        {
            "quant_method": "torchao",
            "quant_type": {
                "default": {
                    "_type": "Int8WeightOnlyConfig",
                    "_data": {"granularity": {"_type": "PerGroup", "_data": 5}},
                }
            },
        },
        "wrong shape",
    ),
}


@pytest.mark.parametrize("command", [["inspect"], ["validate", "--plan-only"], ["load"]])
@pytest.mark.parametrize("case", sorted(SAVED))
def test_saved_quantization_config_shapes(capsys, flux: Path, command, case: str) -> None:
    block, expected = SAVED[case]
    config_file = flux / "transformer" / "config.json"
    config = json.loads(config_file.read_text())
    config["quantization_config"] = block
    _write(config_file, config)
    args = [*command, flux] if command == ["inspect"] else [*command, f"model.source={flux}"]
    errors = fails(capsys, *args)
    assert len(errors) == 1 and expected in errors[0], errors
    assert "transformer" in errors[0].split(": ")[1]


# --- 6. GGUF parts follow model.torch_dtype ----------------------------------------------------


@pytest.fixture(scope="module")
def transformer_gguf(tmp_path_factory: pytest.TempPathFactory, qconf_cache: Path) -> Path:
    from safetensors.torch import load_file
    from test_save import write_gguf

    weights = (
        tiny_pipeline_path("tiny-flux") / "transformer" / "diffusion_pytorch_model.safetensors"
    )
    path = tmp_path_factory.mktemp("gguf") / "transformer.gguf"
    write_gguf(load_file(weights), path)
    return path


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_gguf_part_computes_in_the_model_dtype(transformer_gguf: Path, dtype: str) -> None:
    import qconf

    entry = f"quant.mapping.transformer={{backend:gguf,file:'{transformer_gguf}'}}"
    loaded = qconf.load(qconf.compose([entry, f"model.torch_dtype={dtype}"]))
    assert str(loaded.pipeline.transformer.proj_out.compute_dtype) == f"torch.{dtype}"
    image = loaded.pipeline("a cat", num_inference_steps=1, height=32, width=32).images[0]
    assert image.size == (32, 32)


def test_gguf_compute_dtype_must_match_the_model_dtype(capsys, transformer_gguf: Path) -> None:
    entry = (
        f"quant.mapping.transformer={{backend:gguf,file:'{transformer_gguf}',"
        "kwargs:{compute_dtype:float16}}"
    )
    errors = fails(capsys, "validate", entry, "model.torch_dtype=bfloat16")
    assert errors == [
        "error: quant.mapping.transformer.kwargs.compute_dtype: float16, but model.torch_dtype is "
        "bfloat16 — drop compute_dtype (it follows model.torch_dtype) or make them equal"
    ]


@pytest.mark.parametrize("command", ["estimate", "load"])
@pytest.mark.parametrize("keep", [3, 200, -64], ids=["no-magic", "cut-header", "cut-data"])
def test_truncated_gguf(capsys, tmp_path, transformer_gguf: Path, command: str, keep) -> None:
    cut = tmp_path / "cut.gguf"
    data = transformer_gguf.read_bytes()
    cut.write_bytes(data[:keep])
    errors = fails(capsys, command, f"quant.mapping.transformer={{backend:gguf,file:'{cut}'}}")
    assert str(cut) in errors[0]


# --- 4. integer keys, deep nesting ------------------------------------------------------------


def _user_conf(tmp_path: Path, name: str, text: str) -> Path:
    (tmp_path / "preset").mkdir(exist_ok=True)
    (tmp_path / "preset" / f"{name}.yaml").write_text("# @package _global_\n" + text)
    return tmp_path


def test_integer_yaml_key_in_the_mapping(capsys, tmp_path: Path) -> None:
    conf = _user_conf(tmp_path, "intkey", "quant:\n  mapping:\n    1: int8wo\n")
    assert fails(capsys, "validate", "--config-dir", conf, "preset=intkey") == [
        "error: quant.mapping.1: key 1 is a number, not a name — name the part (e.g. "
        "transformer); quote keys that look like numbers"
    ]


def test_integer_key_from_python() -> None:
    import qconf

    with pytest.raises(qconf.PlanError, match=r"quant.mapping.1: key 1 is a number"):
        qconf.validate({"model": {"source": "tiny-flux"}, "quant": {"mapping": {1: "int8wo"}}})


@pytest.mark.parametrize("depth", [40, 3000])
def test_deep_override_values(capsys, depth: int) -> None:
    errors = fails(capsys, "validate", "quant.kwargs.x=" + "[" * depth + "]" * depth)
    assert f"value nested {depth} levels deep" in errors[0]


def test_deep_yaml_file(capsys, tmp_path: Path) -> None:
    conf = _user_conf(tmp_path, "deep", "quant:\n  kwargs:\n    x: " + "[" * 3000 + "]" * 3000)
    line = fails(capsys, "validate", "--config-dir", conf, "preset=deep")[0]
    assert line.startswith("error: ") and "deep.yaml" in line and "nested deeper than" in line


def test_deep_plan_from_python() -> None:
    import qconf

    deep: object = 1
    for _ in range(5000):
        deep = {"a": deep}
    cyclic: dict = {}
    cyclic["a"] = cyclic
    for value in (deep, cyclic):
        plan = {"model": {"source": "tiny-flux"}, "quant": {"backend": "torchao", "kwargs": value}}
        with pytest.raises(qconf.PlanError, match="nested more than 32 levels"):
            qconf.validate(plan)


# --- 8. noise -----------------------------------------------------------------------------------


def test_cli_load_prints_no_known_library_noise(qconf_cache: Path) -> None:
    import subprocess

    args = ["load", "quant.mapping.transformer=quanto-int8", "quant.mapping.text_encoder=nf4"]
    result = subprocess.run(
        [sys.executable, "-m", "qconf.cli.main", *args, "--json"],
        capture_output=True,
        text=True,
        env={**os.environ, "QCONF_VERBOSE": ""},
    )
    assert result.returncode == 0, result.stderr
    for noise in ("Warning", "deprecated", "kernels", "_C_", "Enum subclass", "torchvision"):
        assert noise not in result.stderr, result.stderr


def test_quiet_filters_known_noise_only_inside() -> None:
    import warnings

    import qconf

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with qconf.quiet():
            warnings.warn("`QuantoConfig` is deprecated and will go", FutureWarning, stacklevel=1)
            warnings.warn("a real problem", UserWarning, stacklevel=1)
            assert logging.getLogger("torchao").level == logging.ERROR
        warnings.warn("`QuantoConfig` is deprecated and will go", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == [
        "a real problem",
        "`QuantoConfig` is deprecated and will go",
    ]


def test_list_backends_notes_the_quanto_deprecation_once(capsys) -> None:
    assert main(["list", "backends"]) == 0
    out = capsys.readouterr().out
    assert out.count("deprecates QuantoConfig") == 1


def test_running_out_of_memory_is_one_line(tmp_path: Path) -> None:
    """A real allocation failure (a 1e6 x 1e6 image on tiny-flux asks torch for terabytes):
    one line naming the stage and what to change, exit 2, no job folder left behind."""
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "qconf.cli.main", "run", "model=tiny-flux",
         "run.height=1000000", "run.width=1000000", f"hydra.run.dir={out}"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2, result.stderr
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert errors[0].startswith("error: generating: ran out of CPU memory"), errors
    assert "run.height" in errors[0]
    assert not out.exists()


def test_out_of_memory_while_loading_names_the_estimate() -> None:
    import torch

    from qconf.errors import OutOfMemory
    from qconf.loading.out_of_memory import out_of_memory_as_error

    with pytest.raises(OutOfMemory) as caught, out_of_memory_as_error("loading"):
        torch.empty(2**60, dtype=torch.uint8)  # a real failed allocation, not a stand-in
    (line,) = caught.value.lines
    assert line.startswith("loading: ran out of CPU memory") and "qconf estimate" in line
    with pytest.raises(ValueError), out_of_memory_as_error("loading"):
        raise ValueError("not about memory: passes through unchanged")


def test_out_of_memory_is_found_through_wrapping_errors() -> None:
    """diffusers wraps a MemoryError raised while reading a checkpoint in an OSError; MPS and
    kernel CUDA errors are plain RuntimeErrors. All are out of memory; an illegal access is not."""
    from qconf.loading.out_of_memory import out_of_memory_problem

    try:
        try:
            raise MemoryError()
        except MemoryError as inner:
            raise OSError("Unable to load weights from checkpoint file") from inner
    except OSError as wrapped:
        problem = out_of_memory_problem(wrapped, "loading")
    assert problem is not None and problem.what == "ran out of CPU memory (MemoryError)"
    mps = out_of_memory_problem(RuntimeError("MPS backend out of memory (MPS allocated: 9 GB)"))
    assert mps is not None and "GPU" in mps.what
    assert out_of_memory_problem(RuntimeError("CUDA error: an illegal memory access")) is None


def test_the_python_api_raises_torchs_own_out_of_memory_error(tmp_path: Path) -> None:
    """A caller can catch torch's error to fall back (offloading, a smaller plan): qconf.load
    does not replace it. Here the 'model folder' is a real tiny pipeline whose VAE config asks
    for a layer too large to allocate."""
    import torch

    import qconf

    folder = tmp_path / "huge-vae"
    shutil.copytree(tiny_pipeline_path("tiny-flux"), folder)
    config_file = folder / "vae" / "config.json"
    config = json.loads(config_file.read_text())
    config["block_out_channels"] = [2**18] * len(config["block_out_channels"])
    config_file.write_text(json.dumps(config))
    default = torch.get_default_dtype()
    with pytest.raises((MemoryError, RuntimeError)) as caught:
        qconf.load({"model": {"source": str(folder), "torch_dtype": "bfloat16"}})
    assert not isinstance(caught.value, qconf.QconfError), caught.value
    # diffusers leaves its load dtype as torch's default when building fails; qconf restores it
    assert torch.get_default_dtype() == default
    assert "can't allocate memory" in str(caught.value) or isinstance(caught.value, MemoryError)
