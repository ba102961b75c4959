"""auto-round's entry (qconf/backends/autoround.py) and the part-folder entry it builds on
(`FolderEntry`, `cuda_visible` in qconf/backends/base.py), one small piece at a time: settings
read from a saved block, the byte count of a hand-written header, the loaded-layer checks on
small real modules, the dequantized weight against auto-round's own packing and forward, and
the folder checks on part folders written here (config.json + a tiny safetensors file). No
AutoRound quantization runs and no pipeline loads (tests/test_autoround.py does both)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from qconf.backends import REGISTRY, base
from qconf.errors import ModelSourceError, PlanError, Problem

torch = pytest.importorskip("torch")
pytest.importorskip("auto_round")
from auto_round_extension.torch.qlinear_torch_zp import QuantLinear  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from qconf.backends import autoround  # noqa: E402

SPEC = REGISTRY["auto-round"]
Entry = SPEC.entry
AWQ_REASON = (
    "auto-round 0.16.1 has no CPU kernel for AWQ packing (folders saved with sym: false): "
    "without a CUDA GPU it loads those layers with random weights"
)


def _entry(**data: Any) -> Any:
    return Entry.model_validate({"backend": "auto-round", **data})


# --- the Backend spec ---


def test_spec_fields() -> None:
    assert SPEC is autoround.AUTO_ROUND and Entry.spec is SPEC
    assert SPEC.key == "auto-round" and SPEC.quant_method == "auto-round"
    assert SPEC.load_dtypes == ("bfloat16", "float16") and SPEC.plan_dtype == "bfloat16"
    assert SPEC.can_save == {"diffusers": False}
    assert SPEC.reloads_saved is True and SPEC.saved_only is True
    assert SPEC.quantizes_on_load is False and SPEC.quantizes_where_loaded is True
    assert SPEC.params == {"diffusers": {"bits": "bits", "group_size": "group_size", "sym": "sym"}}
    assert SPEC.config_class == {"diffusers": "AutoRoundConfig"}
    assert SPEC.environment is autoround.environment and SPEC.prepare is autoround.prepare
    assert set(SPEC.measure.layers) == {"QuantLinear"}
    assert SPEC.cpu_alternative.startswith("re-save it with sym: true")
    assert Entry.defaults == {"bits": 4, "group_size": 128, "sym": True}
    assert Entry.skip_param is None and Entry.source_field == "folder"


# --- from_saved, canonical, rules, variant, cuda_reason ---

# what auto-round 0.16.1 writes for a W4A16 folder (tests/test_autoround.py saves one)
SAVED = {
    "bits": 4, "group_size": 32, "sym": True, "data_type": "int", "act_bits": 16,
    "act_data_type": None, "quant_method": "auto-round", "autoround_version": "0.16.1",
    "packing_format": "auto_round:auto_gptq", "block_name_to_quantize": "transformer_blocks",
    "iters": 0, "nsamples": 128, "seqlen": 2048, "batch_size": 8, "lr": 0.005,
    "minmax_lr": 0.005, "low_gpu_mem_usage": False, "gradient_accumulate_steps": 1,
    "enable_minmax_tuning": True, "amp": True, "dataset": "NeelNanda/pile-10k",
    "scale_dtype": "torch.float16", "disable_opt_rtn": True, "enable_quanted_input": True,
    "to_quant_block_names": None,
}  # fmt: skip


def test_from_saved_reads_the_modelled_keys_and_drops_the_record() -> None:
    assert Entry.from_saved(SAVED) == {
        "backend": "auto-round",
        "kwargs": {"bits": 4, "group_size": 32, "sym": True},
        "data_type": "int",
        "packing_format": "auto_round:auto_gptq",
    }
    assert Entry.from_saved({}) == {"backend": "auto-round", "kwargs": {}}
    # None is no value: neither a kwarg nor a layout field
    assert Entry.from_saved({"bits": None, "data_type": None, "packing_format": None}) == {
        "backend": "auto-round",
        "kwargs": {},
    }
    # act_bits at 16 or None (weight-only) is what qconf models
    for act_bits in (16, None):
        assert Entry.from_saved({"act_bits": act_bits, "act_data_type": None})["kwargs"] == {}
    entry = _entry(**Entry.from_saved(SAVED))
    assert entry.kwargs.given() == {"bits": 4, "group_size": 32, "sym": True}


def test_from_saved_keeps_unmodelled_settings_so_validation_names_them() -> None:
    saved = {"bits": 4, "act_bits": 8, "act_data_type": "fp", "extra_config": {"a": 1}}
    assert Entry.from_saved(saved)["kwargs"] == {
        "bits": 4,
        "act_bits": 8,
        "act_data_type": "fp",
        "extra_config": {"a": 1},
    }
    with pytest.raises(Exception, match="act_bits"):
        _entry(**Entry.from_saved({"act_bits": 8}))


def test_canonical_names_the_layout_only_when_not_the_default() -> None:
    assert _entry().canonical() == {"backend": "auto-round", "kwargs": {}}
    entry = _entry(kwargs={"bits": 4, "group_size": 32}, data_type="int",
                   packing_format="auto_round:auto_awq")  # fmt: skip
    assert entry.canonical() == {
        "backend": "auto-round",
        "kwargs": {"group_size": 32},
        "packing_format": "auto_round:auto_awq",
    }
    gptq = _entry(packing_format="auto_round:gptqmodel").canonical()
    assert gptq == {"backend": "auto-round", "kwargs": {}, "packing_format": "auto_round:gptqmodel"}


def test_group_size_zero_is_refused() -> None:
    assert _entry(kwargs={"group_size": 0}).check_backend_rules() == [
        Problem("kwargs.group_size", "0 inputs per group", "use -1 (one per row) or >= 1")
    ]
    for group in (-1, 1, 32, None):
        assert _entry(kwargs={"group_size": group}).check_backend_rules() == []


def test_variant_and_cuda_reason() -> None:
    assert _entry().variant() == "w4"
    assert _entry(kwargs={"bits": 2}).variant() == "w2"
    assert _entry().describe() == "auto-round w4"
    for packing in ("auto_round:auto_gptq", "auto_round", "auto_round:gptqmodel"):
        assert _entry(packing_format=packing).cuda_reason("diffusers") is None
    assert _entry(packing_format="auto_round:auto_awq").cuda_reason("diffusers") == AWQ_REASON


def test_build_passes_the_given_kwargs() -> None:
    config = _entry(kwargs={"bits": 2, "group_size": 64}).build("diffusers")
    assert type(config).__name__ == "AutoRoundConfig"
    assert (config.bits, config.group_size) == (2, 64)


# --- saved_bytes ---


def test_saved_bytes_of_a_hand_written_header() -> None:
    header = {
        "a.qweight": ((8, 32), "I32"),  # 256 x 4 = 1024
        "a.qzeros": ((2, 4), "I32"),  # 8 x 4 = 32
        "a.scales": ((2, 32), "F16"),  # 64 floats
        "a.bias": ((32,), "F32"),  # 32 floats
        "b.qweight": ((4, 16), "I32"),  # 64 x 4 = 256
        "b.g_idx": ((16,), "I64"),  # 16 x 8 = 128
        "norm.weight": ((16,), "BF16"),  # 16 floats
        "x.codes": ((10,), "U8"),  # 10
        "qweight": ((1,), "F64"),  # not a layer's .qweight: 1 float
    }
    ints = 1024 + 32 + 256 + 128 + 10
    floats = 64 + 32 + 16 + 1
    entry = _entry()
    assert entry.saved_bytes(header, 2, "diffusers") == (ints + floats * 2, 2)
    assert entry.saved_bytes(header, 4, "diffusers") == (ints + floats * 4, 2)
    assert entry.saved_bytes({}, 2, "diffusers") == (0, 0)
    with pytest.raises(ModelSourceError) as caught:
        entry.saved_bytes({"a": ((1,), "X9")}, 2, "diffusers")
    assert caught.value.problems == [
        Problem("the header", "a tensor of dtype 'X9' qconf cannot price", "re-save the file")
    ]


# --- loaded_problem ---


def _quant_linear(infeatures: int = 64, outfeatures: int = 32, bias: bool = False) -> Any:
    return QuantLinear(4, 32, infeatures, outfeatures, bias)


class Placeholder(torch.nn.Linear):
    """A float layer of auto-round's (what it builds where no kernel fits)."""


Placeholder.__module__ = "auto_round.inference.convert_model"


def _header_for(*layers: str) -> dict[str, tuple[tuple[int, ...], str]]:
    header: dict[str, tuple[tuple[int, ...], str]] = {"norm.weight": ((4,), "BF16")}
    for name in layers:
        header[f"{name}.qweight"] = ((8, 32), "I32")
        header[f"{name}.scales"] = ((2, 32), "F16")
    return header


def test_loaded_problem_names_placeholders() -> None:
    model = torch.nn.ModuleDict(
        {"a": _quant_linear(), "b": Placeholder(4, 4), "c": Placeholder(4, 4),
         "plain": torch.nn.Linear(4, 4)}
    )  # fmt: skip
    assert QuantLinear.__module__.startswith("auto_round")
    expected = (
        "auto-round found no kernel here for 2 layer(s) (e.g. 'b') and built them with random "
        "weights instead of the saved codes"
    )
    assert _entry().loaded_problem(model) == expected
    assert _entry().loaded_problem(model, _header_for("a")) == expected
    # a layer of auto-round's that holds codes is no placeholder, nor is torch's own Linear
    fine = torch.nn.ModuleDict({"a": _quant_linear(), "plain": torch.nn.Linear(4, 4)})
    assert _entry().loaded_problem(fine) is None
    assert _entry().loaded_problem(fine, _header_for("a")) is None


def test_loaded_problem_compares_the_coded_layers_with_the_header() -> None:
    model = torch.nn.ModuleDict({"a": _quant_linear(), "b": _quant_linear(), "z": _quant_linear()})
    assert _entry().loaded_problem(model, _header_for("a", "b", "z")) is None
    assert _entry().loaded_problem(model, _header_for("z")) == (
        "2 layer(s) (e.g. 'a') loaded as quantized with no codes in the checkpoint: their "
        "weights are zero (its block_name_to_quantize names layers the checkpoint stores as "
        "floats)"
    )
    assert _entry().loaded_problem(model, _header_for("a", "b", "z", "y", "x")) == (
        "2 layer(s) with codes in the checkpoint (e.g. 'x') did not load quantized"
    )
    # a module whose qweight is None holds no codes (and an auto-round one is a placeholder)
    model["b"] = torch.nn.Linear(4, 4)
    model["b"].qweight = None
    assert _entry().loaded_problem(model, _header_for("a", "z")) is None


def test_loaded_problem_reads_the_named_folders_header(tmp_path: Path) -> None:
    folder = _folder(tmp_path, tensors={"a.qweight": torch.zeros(8, 32, dtype=torch.int32)})
    model = torch.nn.ModuleDict({"a": _quant_linear(), "b": _quant_linear()})
    entry = _entry(folder=str(folder))
    assert entry.loaded_problem(model).startswith("1 layer(s) (e.g. 'b') loaded as quantized")
    assert entry.loaded_problem(torch.nn.ModuleDict({"a": _quant_linear()})) is None
    # a header given is the one judged
    assert entry.loaded_problem(model, _header_for("a", "b")) is None


# --- _dequantize, the layer measure ---


def _packed(bias: bool) -> tuple[Any, Any]:
    """A QuantLinear packed by auto-round from a weight its codes hold exactly (scales of few
    bits, zero points 1..15: GPTQ packing stores zero - 1), and that weight."""
    gen = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (32, 64), generator=gen)
    scales = torch.tensor([0.125, 0.25, 0.5, 0.375])[torch.randint(0, 4, (32, 2), generator=gen)]
    zeros = torch.randint(1, 16, (32, 2), generator=gen)
    weight = (codes - zeros.repeat_interleave(32, 1)) * scales.repeat_interleave(32, 1)
    linear = torch.nn.Linear(64, 32, bias=bias)
    linear.weight.data = weight
    if bias:
        linear.bias.data = torch.arange(32, dtype=torch.float32) / 8
    layer = _quant_linear(bias=bias)
    layer.pack(linear, scales, zeros)
    return layer, weight


def test_dequantize_gives_the_packed_weight() -> None:
    layer, weight = _packed(bias=False)
    got = autoround._dequantize(layer)
    assert got.dtype == torch.float16 and got.shape == (32, 64) and got.is_contiguous()
    assert torch.equal(got.float(), weight)


def test_dequantize_computes_where_the_codes_are() -> None:
    # on the meta device (no data): the identity must be made there too, or the forward fails
    layer = _quant_linear(bias=True).to("meta")
    got = autoround._dequantize(layer)
    assert got.device.type == "meta" and got.shape == (32, 64) and got.dtype == torch.float16


def test_dequantize_drops_the_bias() -> None:
    layer, weight = _packed(bias=True)
    got = autoround._dequantize(layer)
    assert got.shape == (32, 64)
    # the bias (0..3.875) added and taken off again in float16: off by rounding only
    assert (got.float() - weight).abs().max() < 0.02
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(1)).half()
    assert torch.allclose((x @ got.T + layer.bias).float(), layer(x).float(), atol=0.1)


def test_the_layer_measure() -> None:
    layer, _ = _packed(bias=False)
    measure = SPEC.measure.layers["QuantLinear"]
    assert measure.weight_numel(layer) == 64 * 32
    assert type(measure.weight_numel(layer)) is int
    assert measure.kind(layer) == "int4"
    assert measure.codes == "qweight" and measure.state == ("qzeros", "scales", "g_idx")
    assert measure.dequantize is autoround._dequantize


# --- environment and prepare ---


def test_environment_quiets_auto_round_unless_verbose(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QCONF_VERBOSE", raising=False)
    assert autoround.environment() == {"AR_LOG_LEVEL": "ERROR"}
    for quiet in ("", "0"):
        monkeypatch.setenv("QCONF_VERBOSE", quiet)
        assert autoround.environment() == {"AR_LOG_LEVEL": "ERROR"}
    for verbose in ("1", "yes"):
        monkeypatch.setenv("QCONF_VERBOSE", verbose)
        assert autoround.environment() == {}


def test_prepare_sets_the_environment_as_a_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QCONF_VERBOSE", raising=False)
    monkeypatch.delenv("AR_LOG_LEVEL", raising=False)
    autoround.prepare(False)
    assert os.environ["AR_LOG_LEVEL"] == "ERROR"
    monkeypatch.setenv("AR_LOG_LEVEL", "DEBUG")  # the user's own
    autoround.prepare(True)
    assert os.environ["AR_LOG_LEVEL"] == "DEBUG"
    monkeypatch.delenv("AR_LOG_LEVEL")
    monkeypatch.setenv("QCONF_VERBOSE", "1")
    autoround.prepare(False)
    assert "AR_LOG_LEVEL" not in os.environ


# --- FolderEntry: part folders written here ---

QUANT = {"quant_method": "auto-round", "bits": 4, "group_size": 32, "sym": True,
         "packing_format": "auto_round:auto_gptq", "data_type": "int"}  # fmt: skip


def _folder(
    tmp_path: Path,
    config: dict[str, Any] | None = None,
    tensors: dict[str, Any] | None = None,
    weights: str = "diffusion_pytorch_model.safetensors",
    name: str = "part",
) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    if config is None:
        config = {"_class_name": "FluxTransformer2DModel", "quantization_config": dict(QUANT)}
    (folder / "config.json").write_text(json.dumps(config))
    if tensors is None:
        tensors = {"a.qweight": torch.zeros(8, 32, dtype=torch.int32)}
    if weights:
        save_file(tensors, str(folder / weights))
    return folder


def _refusal(entry: Any, part_class: str | None = "FluxTransformer2DModel") -> Problem:
    with pytest.raises(PlanError) as caught:
        entry.folder_settings("quant.mapping.transformer", part_class)
    [problem] = caught.value.problems
    assert problem.where == "quant.mapping.transformer"
    return problem


def test_check_backend_rules_of_the_folder(tmp_path: Path) -> None:
    assert _entry().check_backend_rules() == []
    folder = _folder(tmp_path)
    assert _entry(folder=str(folder)).check_backend_rules() == []
    no_config = tmp_path / "empty"
    no_config.mkdir()
    missing = tmp_path / "missing"
    for path in (no_config, missing, folder / "config.json"):
        assert _entry(folder=str(path)).check_backend_rules() == [
            Problem("folder", f"'{path}' is not a part folder (no config.json in it)",
                    "give the folder holding the part's config.json")
        ]  # fmt: skip
    # user_path's refusal, said at `folder`
    assert _entry(folder="a\0b").check_backend_rules() == [
        Problem("folder", "the path contains a NUL byte", "give a plain path")
    ]
    # the entry's own rules come after the folder's
    problems = _entry(folder=str(missing), kwargs={"group_size": 0}).check_backend_rules()
    assert [p.where for p in problems] == ["folder", "kwargs.group_size"]


def test_folder_settings_reads_the_folder(tmp_path: Path) -> None:
    assert _entry().folder_settings("here") is None
    folder = _folder(tmp_path)
    saved = _entry(folder=str(folder)).folder_settings("here", "FluxTransformer2DModel")
    assert type(saved) is Entry
    assert saved.kwargs.given() == {"bits": 4, "group_size": 32, "sym": True}
    assert saved.folder is None and saved.packing_format == "auto_round:auto_gptq"
    # no part class to check against; kwargs that say what the folder says
    same = _entry(folder=str(folder), kwargs={"bits": 4, "group_size": 32, "sym": True})
    assert same.folder_settings("here") == saved
    # a kwarg the folder leaves at the library default
    defaults = _folder(tmp_path, {"quantization_config": {"quant_method": "auto-round"}},
                       name="defaults")  # fmt: skip
    plan = _entry(folder=str(defaults), kwargs={"bits": 4, "group_size": 128, "sym": True})
    assert plan.folder_settings("here").kwargs.given() == {}


def test_folder_settings_refuses_a_file_or_nothing(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    for path, what in ((folder / "config.json", "a file"), (tmp_path / "nope", "not there")):
        problem = _refusal(_entry(folder=str(path)))
        assert problem == Problem("quant.mapping.transformer", f"'{path}' is {what}",
                                  "give a part folder (config.json + weights)")  # fmt: skip
    with pytest.raises(PlanError) as caught:
        _entry(folder="a\0b").folder_settings("here")
    assert caught.value.problems == [
        Problem("here", "the path contains a NUL byte", "give a plain path")
    ]


def test_folder_settings_refuses_weights_it_cannot_read(tmp_path: Path) -> None:
    bare = _folder(tmp_path, weights="", name="bare")
    assert _refusal(_entry(folder=str(bare))) == Problem(
        "quant.mapping.transformer", f"'{bare}' holds no .safetensors weights",
        "give a folder with .safetensors weights",
    )  # fmt: skip
    misnamed = _folder(tmp_path, weights="model.safetensors", name="misnamed")
    assert _refusal(_entry(folder=str(misnamed))) == Problem(
        "quant.mapping.transformer",
        f"'{misnamed}' has its weights in model.safetensors, which diffusers does not read",
        "rename the file to diffusion_pytorch_model.safetensors",
    )
    # a header that says more than qconf reads is the header check's refusal
    huge = _folder(tmp_path, name="huge")
    weights = huge / "diffusion_pytorch_model.safetensors"
    weights.write_bytes((1 << 40).to_bytes(8, "little") + weights.read_bytes()[8:])
    with pytest.raises(ModelSourceError, match="headers hold over"):
        _entry(folder=str(huge)).folder_settings("here")
    # config.json sizes are checked too
    big = _folder(tmp_path, {"quantization_config": dict(QUANT), "num_layers": 10**9},
                  name="big")  # fmt: skip
    with pytest.raises(ModelSourceError) as caught:
        _entry(folder=str(big)).folder_settings("here")
    [problem] = caught.value.problems
    assert problem.where == f"{big / 'config.json'} (num_layers)"
    assert problem.what == "is 1,000,000,000, over qconf's limit of 256 for a count"


def test_folder_settings_refuses_another_method_or_none(tmp_path: Path) -> None:
    fix = "give a part folder saved with auto-round"
    plain = _folder(tmp_path, {"_class_name": "FluxTransformer2DModel"}, name="plain")
    assert _refusal(_entry(folder=str(plain))) == Problem(
        "quant.mapping.transformer",
        f"'{plain}' is not saved pre-quantized (no quantization_config)", fix,
    )  # fmt: skip
    other = _folder(tmp_path, {"quantization_config": {"quant_method": "gptq" * 20}}, name="o")
    assert _refusal(_entry(folder=str(other))) == Problem(
        "quant.mapping.transformer",
        f"'{other}' says quant_method {('gptq' * 10)!r}, not auto-round", fix,
    )  # fmt: skip


def test_folder_settings_refuses_custom_code_and_another_class(tmp_path: Path) -> None:
    coded = _folder(tmp_path, {"quantization_config": dict(QUANT), "auto_map": {"a": "b.C"},
                               "_class_name": "FluxTransformer2DModel"}, name="coded")  # fmt: skip
    assert _refusal(_entry(folder=str(coded))) == Problem(
        "quant.mapping.transformer",
        f"'{coded}/config.json' has an auto_map (code shipped with the model)",
        "give a folder without custom code",
    )
    long = "X" * 100
    vae = _folder(tmp_path, {"quantization_config": dict(QUANT), "_class_name": long}, name="v")
    assert _refusal(_entry(folder=str(vae))) == Problem(
        "quant.mapping.transformer",
        f"'{vae}' holds a {'X' * 60}; this part is FluxTransformer2DModel",
        "give the folder of a FluxTransformer2DModel part",
    )
    # no class in the folder is another class too; no part class given checks none
    classless = _folder(tmp_path, {"quantization_config": dict(QUANT)}, name="classless")
    assert "holds a None;" in _refusal(_entry(folder=str(classless))).what
    assert _entry(folder=str(classless)).folder_settings("here", None) is not None


def test_folder_settings_refuses_settings_qconf_does_not_model(tmp_path: Path) -> None:
    fix = "give a part folder saved with auto-round"
    acts = _folder(tmp_path, {"quantization_config": {**QUANT, "act_bits": 8},
                              "_class_name": "FluxTransformer2DModel"}, name="acts")  # fmt: skip
    problem = _refusal(_entry(folder=str(acts)))
    # pydantic's first three lines (the count, where, what), on one line; not its link
    error = ("1 validation error for AutoRoundEntry kwargs.act_bits   Extra inputs are not "
             "permitted [type=extra_forbidden, input_value=8, input_type=int]")  # fmt: skip
    assert problem == Problem(
        "quant.mapping.transformer",
        f"'{acts}' has quantization settings qconf does not model: {error}", fix,
    )  # fmt: skip
    # at most 160 characters of it
    key = "k" * 100
    long = _folder(tmp_path, {"quantization_config": {**QUANT, key: 8}}, name="long")
    error = f"1 validation error for AutoRoundEntry kwargs.{key}   Extra inputs are not permitted"
    assert _refusal(_entry(folder=str(long)), None).what == (
        f"'{long}' has quantization settings qconf does not model: {error[:160]}"
    )
    bits = _folder(tmp_path, {"quantization_config": {**QUANT, "bits": 16}}, name="bits")
    assert "bits" in _refusal(_entry(folder=str(bits)), None).what
    zero = _folder(tmp_path, {"quantization_config": {**QUANT, "group_size": 0}}, name="zero")
    assert _refusal(_entry(folder=str(zero)), None) == Problem(
        "quant.mapping.transformer",
        f"'{zero}' says quantization_config.kwargs.group_size: 0 inputs per group", fix,
    )  # fmt: skip


def test_folder_settings_refuses_kwargs_that_differ_from_the_folder(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    entry = _entry(folder=str(folder), kwargs={"bits": 2, "group_size": 32, "sym": False})
    assert _refusal(entry) == Problem(
        "quant.mapping.transformer",
        "the plan says {'bits': 2, 'sym': False}, the folder was saved with "
        "{'bits': 4, 'sym': True}",
        "drop those kwargs: the folder says how it loads",
    )
    defaults = _folder(tmp_path, {"quantization_config": {"quant_method": "auto-round"}},
                       name="defaults")  # fmt: skip
    problem = _refusal(_entry(folder=str(defaults), kwargs={"group_size": 32}), None)
    assert problem.what == "the plan says {'group_size': 32}, the folder was saved with " + str(
        {"group_size": 128}
    )


def test_check_file_refuses_awq_without_a_cuda_gpu(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    awq = _folder(tmp_path, {"quantization_config": {**QUANT, "sym": False,
                             "packing_format": "auto_round:auto_awq"}}, name="awq")  # fmt: skip
    gptq = _folder(tmp_path, name="gptq")
    monkeypatch.setattr(base, "cuda_visible", lambda: False)
    _entry().check_file("here")  # no folder: nothing to check
    _entry(folder=str(gptq)).check_file("here", "FluxTransformer2DModel")
    with pytest.raises(PlanError) as caught:
        _entry(folder=str(awq)).check_file("quant.mapping.transformer")
    assert caught.value.problems == [
        Problem("quant.mapping.transformer",
                f"'{awq}' needs a CUDA GPU and none is visible: {AWQ_REASON}",
                SPEC.cpu_alternative)
    ]  # fmt: skip
    # the folder's checks come first, said where the caller says
    with pytest.raises(PlanError) as caught:
        _entry(folder=str(awq)).check_file("here", "FluxTransformer2DModel")
    assert [p.where for p in caught.value.problems] == ["here"]
    assert "holds a None" in caught.value.problems[0].what
    monkeypatch.setattr(base, "cuda_visible", lambda: True)
    _entry(folder=str(awq)).check_file("here")


def test_file_bytes_and_layers_from_the_folders_header(tmp_path: Path) -> None:
    assert _entry().file_bytes(2) is None and _entry().file_layers() is None
    tensors = {
        "a.qweight": torch.zeros(8, 32, dtype=torch.int32),  # 1024 bytes
        "a.scales": torch.zeros(2, 32, dtype=torch.float16),  # 64 floats
        "b.qweight": torch.zeros(4, 8, dtype=torch.int32),  # 128 bytes
        "norm": torch.zeros(10, dtype=torch.float32),  # 10 floats
    }
    entry = _entry(folder=str(_folder(tmp_path, tensors=tensors)))
    note = "auto-round: bytes from the folder's safetensors header"
    assert entry.file_bytes(2) == (1024 + 128 + 74 * 2, note)
    assert entry.file_bytes(4) == (1024 + 128 + 74 * 4, note)
    assert entry.file_layers() == 2
    assert entry.own_source() == entry.folder and _entry().own_source() is None
    assert entry.loaded_fix() == SPEC.cpu_alternative


def test_file_bytes_of_a_folder_path_qconf_refuses() -> None:
    for folder, what in (("a\0b", "the path contains a NUL byte"), ("", "empty path")):
        with pytest.raises(PlanError) as caught:
            _entry(folder=folder).file_bytes(2)
        assert [(p.where, p.what) for p in caught.value.problems] == [("folder", what)]


def test_folder_entry_asks_for_the_diffusers_library(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A part folder is a diffusers part: its CUDA reason and bytes are asked for diffusers."""
    asked: list[str] = []

    class Asking(Entry):  # type: ignore[misc, valid-type]
        def cuda_reason(self, library: Any) -> str | None:
            asked.append(library)
            return None

        def saved_bytes(self, header: Any, dtype_size: int, library: Any) -> Any:
            asked.append(library)
            return super().saved_bytes(header, dtype_size, library)

    entry = Asking.model_validate({"backend": "auto-round", "folder": str(_folder(tmp_path))})
    monkeypatch.setattr(base, "cuda_visible", lambda: False)
    entry.check_file("here")
    assert entry.file_bytes(2) is not None and entry.file_layers() == 1
    assert asked == ["diffusers"] * 3


def test_the_default_loaded_fix() -> None:
    entry = REGISTRY["quanto"].entry.model_validate({"backend": "quanto"})
    assert entry.loaded_fix() == (
        "quantize this part with an option instead (this pipeline does not keep it)"
    )


def test_header_reads_every_weight_file(tmp_path: Path) -> None:
    folder = _folder(tmp_path, tensors={"a.qweight": torch.zeros(2, 2, dtype=torch.int32)})
    assert _entry(folder=str(folder))._header() == {"a.qweight": ((2, 2), "I32")}


# --- load_from_file: a tiny real diffusers model ---


def _tiny_model_folder(tmp_path: Path, safe: bool = True) -> Path:
    from diffusers import UNet1DModel

    model = UNet1DModel(block_out_channels=(8,), down_block_types=("DownBlock1DNoSkip",),
                        up_block_types=(), mid_block_type="MidResTemporalBlock1D",
                        out_block_type=None, in_channels=2, out_channels=2,
                        extra_in_channels=0, layers_per_block=1)  # fmt: skip
    folder = tmp_path / ("tiny-" + "d" * 120)  # a path long enough to cut the message at
    model.save_pretrained(folder, safe_serialization=safe)
    return folder


def _load_refusal(entry: Any, model_cls: Any) -> Problem:
    from diffusers.utils import logging as diffusers_logging

    level = diffusers_logging.get_verbosity()
    with pytest.raises(ModelSourceError) as caught:
        entry.load_from_file(model_cls, "src", "transformer", torch.bfloat16, None)
    assert diffusers_logging.get_verbosity() == level
    [problem] = caught.value.problems
    assert problem.where == "quant.mapping.transformer.folder"
    assert problem.fix == "give a transformer folder"
    return problem


def test_load_from_file_reads_the_folder(tmp_path: Path) -> None:
    from diffusers import UNet1DModel
    from diffusers.utils import logging as diffusers_logging

    folder = _tiny_model_folder(tmp_path)
    level = diffusers_logging.get_verbosity()
    model = _entry(folder=str(folder)).load_from_file(
        UNet1DModel, "src", "transformer", torch.bfloat16, "bfloat16"
    )
    assert type(model) is UNet1DModel
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert diffusers_logging.get_verbosity() == level
    (folder / "config.json").write_text("{not json")
    said = f"It looks like the config file at '{folder}/config.json' is not a valid JSON file."
    assert len(said) > 160
    assert _load_refusal(_entry(folder=str(folder)), UNet1DModel).what == (
        f"'{folder}' does not load as UNet1DModel: {said[:160]}"
    )


def test_load_from_file_reads_no_pickles(tmp_path: Path) -> None:
    from diffusers import UNet1DModel

    folder = _tiny_model_folder(tmp_path, safe=False)
    assert (folder / "diffusion_pytorch_model.bin").is_file()
    problem = _load_refusal(_entry(folder=str(folder)), UNet1DModel)
    assert problem.what.startswith(f"'{folder}' does not load as UNet1DModel: ")
    assert "diffusion_pytorch_model.safetensors" in problem.what


class Silent:
    """A part class whose load fails with no message."""

    @classmethod
    def from_pretrained(cls, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("  ")


def test_load_from_file_says_an_empty_error_as_empty(tmp_path: Path) -> None:
    assert _load_refusal(_entry(folder="f"), Silent).what == "'f' does not load as Silent: "
    with pytest.raises(PlanError) as caught:
        _entry(folder="").load_from_file(Silent, "src", "vae", torch.bfloat16, None)
    assert caught.value.problems == [
        Problem("quant.mapping.vae.folder", "empty path", "give a path")
    ]


# --- cuda_visible ---


def test_cuda_visible(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: 1)
    assert base.cuda_visible() is True
    monkeypatch.setattr(torch.cuda, "is_available", lambda: 0)
    assert base.cuda_visible() is False
    # without torch imported, the NVIDIA driver's device file decides
    monkeypatch.delitem(sys.modules, "torch")
    assert base.CUDA_DEVICE_FILE == "/dev/nvidia0"
    device = tmp_path / "nvidia0"
    monkeypatch.setattr(base, "CUDA_DEVICE_FILE", str(device))
    assert base.cuda_visible() is False
    device.touch()
    assert base.cuda_visible() is True


def test_an_estimate_counts_the_folders_coded_layers(tmp_path: Path) -> None:
    """A part from an auto-round folder: bytes and quantized layers from its header (two coded
    layers here), not from the plan priced on tiny-flux's 20 Linear layers."""
    import qconf
    from qconf.estimate.core import estimate
    from qconf.source.tiny import tiny_pipeline_path

    config = json.loads(
        (tiny_pipeline_path("tiny-flux") / "transformer" / "config.json").read_text()
    )
    tensors = {
        "a.qweight": torch.zeros(8, 32, dtype=torch.int32),  # 1024 bytes
        "b.qweight": torch.zeros(8, 32, dtype=torch.int32),  # 1024 bytes
        "a.scales": torch.zeros(2, 32, dtype=torch.float16),  # 64 floats, 128 bytes in bf16
    }
    folder = _folder(tmp_path, {**config, "quantization_config": dict(QUANT)}, tensors)
    entry = {"backend": "auto-round", "folder": str(folder)}
    plan = qconf.intake(
        model={"source": "tiny-flux", "torch_dtype": "bfloat16"},
        quant={"mapping": {"transformer": entry}},
    )
    part = estimate(plan).parts["transformer"]
    assert (part.bytes, part.quantized_layers, part.from_weights) == (2176, 2, True)
    assert part.notes == ("auto-round: bytes from the folder's safetensors header",)
