"""The torch-free core (schema, checks, messages, compose, safety, saving, resolve), pinned
fast: plans as dicts (no Hydra compose unless compose is under test), pipeline folders as
model_index.json + config.json files (validation never reads weights). These are the tests
`make mutate` runs against every mutant, so each assertion pins an exact value."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from qconf import PlanError
from qconf.backends import REGISTRY
from qconf.errors import ModelSourceError, Problem
from qconf.loading.saving import check_can_save, library_versions, save_pipeline, save_problems
from qconf.plan.checks import mode_problems, raw_name_problems, saved_entries
from qconf.plan.compose import compose, rewrite_overrides
from qconf.plan.conftree import backend_options
from qconf.plan.messages import did_you_mean, problems_from_errors
from qconf.plan.planfile import override_value as _override_value
from qconf.plan.resolve import ResolvedPart
from qconf.plan.safety import allowed_targets, safe_instantiate, target_problems
from qconf.plan.schema import ModelSpec, Plan, QuantSpec, RunSpec, plan_json_schema, validate

FLUX = {"source": "tiny-flux"}
FLUX_WEIGHTED = "text_encoder, text_encoder_2, transformer, vae"
BACKENDS = ", ".join(REGISTRY)  # in registry order
QUANT_TYPES = (
    "Int8WeightOnlyConfig, Int8DynamicActivationInt8WeightConfig, Float8WeightOnlyConfig, "
    "IntxWeightOnlyConfig, Int4WeightOnlyConfig, Float8DynamicActivationFloat8WeightConfig"
)
INT8WO = {"backend": "torchao", "kwargs": {"quant_type": {"name": "Int8WeightOnlyConfig"}}}
QUANTO8 = {"backend": "quanto", "kwargs": {"weights_dtype": "int8"}}
TARGET_FIX = (
    "a config may name only qconf's loaders and the quantization config classes it builds: "
    + ", ".join(sorted(allowed_targets()))
)
VALUE_FIX = " — fix the value (qconf schema)"
# quant_methods of saved folders qconf reloads
READS = ", ".join(sorted({s.quant_method for s in REGISTRY.values()
                          if any(s.can_save.values()) or s.reloads_saved}))  # fmt: skip


def lines(plan: Any, **kwargs: Any) -> list[str]:
    with pytest.raises(PlanError) as caught:
        validate(plan, **kwargs)
    return caught.value.lines


def plan(quant: dict | None = None, **model: Any) -> Plan:
    return validate({"model": {**FLUX, **model}, **({"quant": quant} if quant else {})})


FLUX_INDEX = {
    "_class_name": "FluxPipeline",
    "_diffusers_version": "0.42.1",
    "feature_extractor": [None, None],
    "image_encoder": [None, None],
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


def flux_folder(root: Path, **configs: dict) -> Path:
    """A Flux pipeline folder as validation sees it: model_index.json, config.json per part and
    (empty) weight files; `configs[part]` is merged into that part's config.json."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "model_index.json").write_text(json.dumps(FLUX_INDEX))
    for part, weights in WEIGHT_FILES.items():
        (root / part).mkdir()
        (root / part / "config.json").write_text(json.dumps(configs.get(part, {})))
        (root / part / weights).write_bytes(b"")
    return root


# --- schema: fields and defaults ----------------------------------------------------------------


def test_model_spec_defaults_are_safe() -> None:
    model = ModelSpec(source="tiny-flux")
    assert model.model_dump() == {
        "source": "tiny-flux",
        "pipeline": None,
        "torch_dtype": "bfloat16",
        "allow_pickle": False,
        "trust_remote_code": False,
        "device_map": None,
    }


def test_run_spec_defaults_and_bounds() -> None:
    assert RunSpec().model_dump() == {
        "prompt": "a photo of a cat wearing a tiny hat",
        "steps": 2,
        "height": 32,
        "width": 32,
        "guidance_scale": 3.5,
        "seed": 0,
        "num_frames": None,
        "fps": None,
    }
    RunSpec(steps=1, height=8, width=8)
    assert lines({"model": FLUX, "run": {"steps": 0, "height": 7, "width": 4}}) == [
        f"run.steps: Input should be greater than or equal to 1 (got 0){VALUE_FIX}",
        f"run.height: Input should be greater than or equal to 8 (got 7){VALUE_FIX}",
        f"run.width: Input should be greater than or equal to 8 (got 4){VALUE_FIX}",
    ]


def test_quant_spec_modes() -> None:
    empty = QuantSpec()
    assert (empty.mode, empty.is_empty, empty.global_entry()) == ("granular", True, None)
    assert (empty.kwargs, empty.components, empty.mapping) == ({}, None, {})
    global_ = QuantSpec(backend="quanto", kwargs={"weights_dtype": "int8"})
    assert (global_.mode, global_.is_empty) == ("global", False)
    assert global_.global_entry().model_dump(exclude_none=True) == QUANTO8
    granular = QuantSpec(mapping={"vae": QUANTO8})
    assert (granular.mode, granular.is_empty) == ("granular", False)
    assert QuantSpec(mapping={"vae": None}).is_empty is False


def test_plans_are_frozen_and_strict() -> None:
    with pytest.raises(Exception, match="frozen"):
        plan().model.source = "tiny-sd"  # type: ignore[misc]
    assert lines({"model": {**FLUX, "dtype": "x"}}) == [
        "model.dtype: unknown key — did you mean 'torch_dtype'? valid keys: source, pipeline, "
        "torch_dtype, allow_pickle, trust_remote_code, device_map"
    ]
    assert lines({"model": FLUX, "run": {"stepz": 3}}) == [
        "run.stepz: unknown key — did you mean 'steps'? valid keys: prompt, steps, height, width, "
        "guidance_scale, seed, num_frames, fps"
    ]
    assert lines({}) == ["model: required key is missing — set it"]
    assert lines({"model": {}}) == ["model.source: required key is missing — set it"]
    assert lines({"model": FLUX, "quant": 3}) == [
        f"quant: Input should be a valid dictionary or instance of QuantSpec (got 3){VALUE_FIX}"
    ]


def test_a_mapping_value_names_an_option_or_an_entry() -> None:
    expanded = plan({"mapping": {"vae": "int8wo", "transformer": QUANTO8, "text_encoder": None}})
    assert expanded.quant.mapping["vae"].model_dump(exclude_none=True) == INT8WO
    assert expanded.quant.mapping["transformer"].backend == "quanto"
    assert expanded.quant.mapping["text_encoder"] is None
    options = sorted(backend_options())
    assert lines({"model": FLUX, "quant": {"mapping": {"vae": "nf5"}}}) == [
        "quant.mapping.vae: unknown backend option 'nf5' — did you mean 'nf4'? available: "
        + ", ".join(options)
    ]
    assert lines({"model": FLUX, "quant": {"mapping": {"vae": "zzz"}}}) == [
        "quant.mapping.vae: unknown backend option 'zzz' — available: " + ", ".join(options)
    ]


# --- schema: which part gets which entry ---------------------------------------------------------


def test_targets_in_granular_mode_list_every_weighted_part() -> None:
    targets = plan({"mapping": {"vae": "int8wo"}}).targets()
    assert list(targets) == ["text_encoder", "text_encoder_2", "transformer", "vae"]
    assert [name for name, entry in targets.items() if entry is not None] == ["vae"]
    assert plan().targets() == dict.fromkeys(targets)


def test_targets_in_global_mode() -> None:
    every = plan({"backend": "quanto", "kwargs": {"weights_dtype": "int8"}}).targets()
    assert list(every) == ["text_encoder", "text_encoder_2", "transformer", "vae"]
    assert all(entry is not None and entry.backend == "quanto" for entry in every.values())
    some = plan({**QUANTO8, "components": ["vae"]}).targets()
    assert {name: entry is not None for name, entry in some.items()} == {
        "text_encoder": False,
        "text_encoder_2": False,
        "transformer": False,
        "vae": True,
    }


def test_optional_parts_count_only_when_named() -> None:
    hub = {"source": "someone/flux", "pipeline": "FluxPipeline"}
    parts = validate({"model": hub}).parts()
    assert parts.origin == "FluxPipeline (parts table)"
    assert parts.parts["image_encoder"].optional and not parts.parts["vae"].optional
    assert "image_encoder" not in validate({"model": hub}).targets()
    global_all = validate({"model": hub, "quant": QUANTO8}).targets()
    assert "image_encoder" not in global_all and global_all["vae"] is not None
    named = validate({"model": hub, "quant": {**QUANTO8, "components": ["image_encoder"]}})
    assert named.targets()["image_encoder"] is not None and named.targets()["vae"] is None
    mapped = validate({"model": hub, "quant": {"mapping": {"image_encoder": QUANTO8}}})
    assert mapped.targets()["image_encoder"] is not None


def test_plan_parts_problems_raise_plan_error() -> None:
    bad = Plan.model_construct(
        model=ModelSpec.model_construct(source="nobody/nothing", pipeline=None),
        quant=QuantSpec(),
    )
    with pytest.raises(PlanError, match="cannot tell the parts of 'nobody/nothing'"):
        bad.parts()


# --- schema: the mode and part rules --------------------------------------------------------------


def test_mode_problems_on_raw_data() -> None:
    assert mode_problems(None, {}, None, {}) == []
    assert mode_problems("quanto", {"a": 1}, ["vae"], {}) == []
    assert mode_problems(None, {}, None, {"vae": None}) == []
    assert [p.where for p in mode_problems("quanto", {}, ["vae"], {"vae": None})] == [
        "quant.mapping",
        "quant.components",
    ]
    assert [str(p) for p in mode_problems(None, {"a": 1}, ["vae"], {})] == [
        "quant.kwargs: set without quant.backend — set quant.backend or remove it"
    ]
    assert [str(p) for p in mode_problems(None, {}, [], {})] == [
        "quant.components: set without quant.backend — set quant.backend or remove it"
    ]


def test_global_mode_problems_point_at_quant() -> None:
    assert lines({"model": FLUX, "quant": {"kwargs": {"a": 1}}}) == [
        "quant.kwargs: set without quant.backend — set quant.backend or remove it"
    ]
    assert lines({"model": FLUX, "quant": {"components": ["vae"]}}) == [
        "quant.components: set without quant.backend — set quant.backend or remove it"
    ]
    bogus = {"backend": "torchao", "kwargs": {**INT8WO["kwargs"], "bogus": 1}}
    assert lines({"model": FLUX, "quant": bogus}) == [
        "quant.kwargs.bogus: unknown key — valid keys: quant_type, modules_to_not_convert, "
        "include_input_output_embeddings, untie_embedding_weights"
    ]
    untie = {"backend": "torchao", "kwargs": {**INT8WO["kwargs"], "untie_embedding_weights": True}}
    assert lines({"model": FLUX, "quant": {**untie, "components": ["vae", "text_encoder"]}}) == [
        "quant.kwargs.untie_embedding_weights: not accepted by diffusers's TorchAoConfig ('vae' "
        "is a diffusers part) — diffusers accepts: modules_to_not_convert, quant_type"
    ]
    assert lines({"model": FLUX, "quant": {**QUANTO8, "components": ["unet", "tokenizer"]}}) == [
        "quant.components[0]: 'unet' is not a part of FluxPipeline (built-in tiny-flux) — its "
        f"parts with weights: {FLUX_WEIGHTED}",
        "quant.components[1]: 'tokenizer' (CLIPTokenizer) has no weights to quantize — quantize "
        f"one of: {FLUX_WEIGHTED}",
    ]


def test_an_entry_rule_is_reported_once_per_entry() -> None:
    eight_bit = {"backend": "bitsandbytes_8bit", "kwargs": {"load_in_4bit": True}}
    assert lines({"model": FLUX, "quant": eight_bit}) == [
        "quant.kwargs.load_in_4bit: true, but backend bitsandbytes_8bit is 8-bit — remove it, "
        "or use backend bitsandbytes_4bit"
    ]
    skip_twice = {**INT8WO, "skip": ["a"]}
    skip_twice["kwargs"] = {**INT8WO["kwargs"], "modules_to_not_convert": ["b"]}
    assert lines({"model": FLUX, "quant": {"mapping": {"vae": skip_twice}}}) == [
        "quant.mapping.vae.kwargs.modules_to_not_convert: set together with skip; it would "
        "replace the library's default skips — list the modules under skip only"
    ]
    gguf = {"backend": "gguf", "file": "x.gguf", "skip": ["a"]}
    assert "quant.mapping.transformer.skip: gguf has no skip list — remove it" in lines(
        {"model": FLUX, "quant": {"mapping": {"transformer": gguf}}}
    )


def test_field_errors_and_part_names_are_reported_together() -> None:
    data = {
        "model": FLUX,
        "quant": {"mapping": {"unet": "int8wo", "vae": "nf5", "tokenizer": None}},
    }
    assert [line.split(":")[0] for line in lines(data)] == [
        "quant.mapping.vae",
        "quant.mapping.unet",
        "quant.mapping.tokenizer",
    ]
    both = {"model": FLUX, "quant": {"backend": "quanto", "mapping": {"unet": 3}}}
    assert [line.split(":")[0] for line in lines(both)] == [
        "quant.mapping.unet",
        "quant.mapping.unet",
        "quant.mapping",
    ]
    # A wrong model hides the part checks (the parts are then unknown).
    bad_model = {"model": {**FLUX, "torch_dtype": "x"}, "quant": {"mapping": {"unet": "int8wo"}}}
    assert lines(bad_model) == [
        "model.torch_dtype: 'x' is not allowed — expected 'float32', 'float16' or 'bfloat16'"
    ]


def test_raw_name_problems() -> None:
    assert raw_name_problems({"model": "x", "quant": {}}) == []
    assert raw_name_problems({"model": FLUX, "quant": "x"}) == []
    assert [p.where for p in raw_name_problems({"model": {"source": "a/b"}, "quant": {}})] == [
        "model.pipeline"
    ]
    odd = raw_name_problems({"model": FLUX, "quant": {"mapping": [1], "components": {}}})
    assert [p.where for p in odd] == ["quant.components"]
    found = raw_name_problems(
        {"model": FLUX, "quant": {"components": ["vae", "unet", 7], "kwargs": {"a": 1}}}
    )
    assert [str(p) for p in found] == [
        "quant.components[1]: 'unet' is not a part of FluxPipeline (built-in tiny-flux) — its "
        f"parts with weights: {FLUX_WEIGHTED}",
        "quant.components[2]: '7' is not a part of FluxPipeline (built-in tiny-flux) — its parts "
        f"with weights: {FLUX_WEIGHTED}",
        "quant.kwargs: set without quant.backend — set quant.backend or remove it",
    ]


def test_a_part_name_close_to_a_real_one() -> None:
    assert lines({"model": FLUX, "quant": {"mapping": {"transfomer": "int8wo"}}}) == [
        "quant.mapping.transfomer: 'transfomer' is not a part of FluxPipeline (built-in "
        "tiny-flux) — did you mean 'transformer'? its parts with weights: " + FLUX_WEIGHTED
    ]


def test_pipeline_class_checks() -> None:
    assert lines({"model": {**FLUX, "pipeline": "NopePipeline"}}) == [
        "model.pipeline: unknown pipeline class 'NopePipeline' — use a class name of the "
        "installed diffusers (e.g. FluxPipeline) or null"
    ]
    assert plan(pipeline="FluxPipeline").model.pipeline == "FluxPipeline"
    assert lines({"model": {"source": "a/b"}}) == [
        "model.pipeline: cannot tell the parts of 'a/b': not a folder, not in the local cache — "
        "set model.pipeline (e.g. FluxPipeline), or pick a model= option or a folder"
    ]


# --- checks: what a folder says ------------------------------------------------------------------


def test_a_plain_folder_validates(tmp_path: Path) -> None:
    folder = flux_folder(tmp_path / "flux")
    parts = validate({"model": {"source": str(folder)}}).parts()
    assert (parts.pipeline, parts.origin) == ("FluxPipeline", str(folder))
    assert sorted(parts.weighted) == FLUX_WEIGHTED.split(", ")


def test_folder_code_and_pickles_are_refused_unless_trusted(tmp_path: Path) -> None:
    folder = flux_folder(tmp_path / "flux", text_encoder={"auto_map": {"AutoModel": "m.M"}})
    (folder / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    (folder / "vae" / "diffusion_pytorch_model.bin").write_bytes(b"")
    (folder / "tokenizer").mkdir()
    (folder / "tokenizer" / "x.bin").write_bytes(b"")  # weightless part: not a weight pickle
    index = json.loads((folder / "model_index.json").read_text())
    index["transformer"] = ["my_lib", "MyTransformer"]
    (folder / "model_index.json").write_text(json.dumps(index))
    model = {"source": str(folder)}
    # A library that is neither diffusers, transformers nor shipped code: refused at read time.
    with pytest.raises(ModelSourceError) as unknown:
        validate({"model": model})
    assert str(unknown.value) == (
        f"{folder}/model_index.json (transformer): unknown library 'my_lib' — parts come from "
        "diffusers or transformers (or a <library>.py shipped in the folder)"
    )
    (folder / "transformer" / "my_lib.py").write_text("")  # shipped code: custom, flagged
    assert lines({"model": model}) == [
        "model.source: part 'text_encoder' needs custom code: its config.json has an auto_map "
        "(code shipped with the model) — set model.trust_remote_code=true only if you trust "
        "this model's code",
        "model.source: part 'transformer' needs custom code: its class comes from 'my_lib', not "
        "diffusers or transformers — set model.trust_remote_code=true only if you trust this "
        "model's code",
        "model.source: part 'vae' has only pickle weights (.bin/.pt/.ckpt), which can run code "
        "— convert them to .safetensors, or set model.allow_pickle=true to trust them",
    ]
    assert [line.split(":")[1] for line in lines({"model": {**model, "allow_pickle": True}})] == [
        " part 'text_encoder' needs custom code",
        " part 'transformer' needs custom code",
    ]
    assert lines({"model": {**model, "trust_remote_code": True}}) == [
        "model.source: part 'vae' has only pickle weights (.bin/.pt/.ckpt), which can run code "
        "— convert them to .safetensors, or set model.allow_pickle=true to trust them"
    ]
    validate({"model": {**model, "trust_remote_code": True, "allow_pickle": True}})


SAVED_NF4 = {
    "quant_method": "bitsandbytes",
    "load_in_4bit": True,
    "bnb_4bit_quant_type": "nf4",
    "bnb_4bit_compute_dtype": "bfloat16",
}


def test_a_pre_quantized_folder_loads_as_saved(tmp_path: Path) -> None:
    folder = flux_folder(tmp_path / "flux", text_encoder={"quantization_config": SAVED_NF4})
    model = {"source": str(folder)}
    as_saved = validate({"model": model})
    targets = as_saved.targets()
    assert [name for name, entry in targets.items() if entry is not None] == ["text_encoder"]
    assert targets["text_encoder"].backend == "bitsandbytes_4bit"
    resolved = as_saved.resolve()
    assert list(resolved.quantized) == ["text_encoder"]
    same = {"text_encoder": "nf4"}
    validate({"model": model, "quant": {"mapping": same}})
    (line,) = lines({"model": model, "quant": {"mapping": {**same, "vae": "int8wo"}}})
    assert line.startswith(
        'quant.mapping.vae: plan says {"backend":"torchao","kwargs":{"quant_type":'
        '{"name":"Int8WeightOnlyConfig"}}} '
    )
    assert line.endswith(
        f"but {folder}/vae was saved as unquantized — drop quant.* to load the folder as saved, "
        "or quantize the original model"
    )
    (line,) = lines({"model": model, "quant": {"mapping": {"text_encoder": None}}})
    assert line.startswith(
        f"quant.mapping.text_encoder: plan says unquantized but {folder}/text_encoder was saved "
        'as {"'
    )
    (line,) = lines({"model": model, "quant": {**QUANTO8, "components": ["text_encoder"]}})
    assert line.startswith('quant: plan says {"backend":"quanto"')


def test_a_folder_saved_with_an_unknown_method(tmp_path: Path) -> None:
    unknown = flux_folder(tmp_path / "a", vae={"quantization_config": {"quant_method": "magic"}})
    assert lines({"model": {"source": str(unknown)}}) == [
        "model.source (vae/config.json): part 'vae' was saved with quant_method 'magic', which "
        f"qconf does not model — qconf reads: {READS}"
    ]
    broken = {"quant_method": "quanto", "weights_dtype": "int9"}
    invalid = flux_folder(tmp_path / "b", vae={"quantization_config": broken})
    (line,) = lines({"model": {"source": str(invalid)}})
    assert line == (
        "model.source (vae/config.json): quantization_config → kwargs.weights_dtype: 'int9' is "
        "not allowed — compare it with a config.json quanto writes, or re-save the model"
    )
    assert saved_entries({}) == {}


# --- messages ------------------------------------------------------------------------------------


def test_did_you_mean() -> None:
    assert did_you_mean("nf5", ["nf4", "fp4"]) == "did you mean 'nf4'? "
    assert did_you_mean("encoder", ["text_encoder", "vae"]) == "did you mean 'text_encoder'? "
    assert did_you_mean("text_encoder_2x", ["text_encoder_2"]) == "did you mean 'text_encoder_2'? "
    assert did_you_mean("zzz", ["nf4"]) == ""
    assert did_you_mean("zzz", iter([])) == ""


def test_tagged_union_messages() -> None:
    def one(entry: Any) -> str:
        (line,) = lines({"model": FLUX, "quant": {"mapping": {"vae": entry}}})
        return line

    assert (
        one({"kwargs": {}})
        == f"quant.mapping.vae.backend: missing — set backend: one of {BACKENDS}"
    )
    assert one({"backend": "int8wo"}) == (
        "quant.mapping.vae.backend: unknown backend 'int8wo' — 'int8wo' is a backend option: "
        f"write the part's value as just int8wo. available: {BACKENDS}"
    )
    assert one({"backend": "torchaoo"}) == (
        "quant.mapping.vae.backend: unknown backend 'torchaoo' — did you mean 'torchao'? "
        f"available: {BACKENDS}"
    )
    assert one({"backend": "torchao", "kwargs": {"quant_type": {}}}) == (
        f"quant.mapping.vae.kwargs.quant_type.name: missing — set name: one of {QUANT_TYPES}"
    )
    assert one(
        {"backend": "torchao", "kwargs": {"quant_type": {"name": "Int8WeightOnlyConfg"}}}
    ) == (
        "quant.mapping.vae.kwargs.quant_type.name: unknown torchao quant type "
        "'Int8WeightOnlyConfg' — did you mean 'Int8WeightOnlyConfig'? available: " + QUANT_TYPES
    )
    group_zero = {"name": "Int8WeightOnlyConfig", "group_size": 0}
    assert one({"backend": "torchao", "kwargs": {"quant_type": group_zero}}) == (
        "quant.mapping.vae.kwargs.quant_type.group_size: Input should be greater than 0 (got 0)"
        + VALUE_FIX
    )
    assert (
        one({"backend": "quanto", "kwargs": {"weights_dtype": "int8", "x": 1}})
        == "quant.mapping.vae.kwargs.x: unknown key — valid keys: weights_dtype, "
        "modules_to_not_convert"
    )


def test_global_backend_messages() -> None:
    assert lines({"model": FLUX, "quant": {"backend": "torchaoo"}}) == [
        f"quant.backend: unknown backend 'torchaoo' — did you mean 'torchao'? available: {BACKENDS}"
    ]
    assert lines({"model": FLUX, "quant": {"backend": "int8wo"}}) == [
        "quant.backend: unknown backend 'int8wo' — 'int8wo' is a backend option: use "
        f"quant.mapping.<part>=int8wo. available: {BACKENDS}"
    ]
    assert lines({"model": FLUX, "quant": {"mapping": [1]}}) == [
        f"quant.mapping: Input should be a valid dictionary (got [1]){VALUE_FIX}"
    ]


def test_problems_from_errors_paths() -> None:
    errors = [
        {"type": "missing", "loc": ("quant", "mapping", "vae", "torchao", "kwargs"), "msg": ""},
        {"type": "missing", "loc": ("a", 0, "b"), "msg": ""},
        {"type": "weird", "loc": (), "msg": "strange", "input": 5},
        {"type": "extra_forbidden", "loc": ("nowhere", "x"), "msg": ""},
    ]
    assert [str(p) for p in problems_from_errors(errors, prefix=("p",))] == [
        "p.quant.mapping.vae.kwargs: required key is missing — set it",
        "p.a.0.b: required key is missing — set it",
        f"p: strange (got 5){VALUE_FIX}",
        "p.nowhere.x: unknown key — remove it",
    ]
    extra = [{"type": "extra_forbidden", "loc": ("kwargs", "wieghts_dtype"), "msg": ""}]
    (problem,) = problems_from_errors(extra, tag="quanto")
    assert problem.fix.startswith("did you mean 'weights_dtype'? valid keys: weights_dtype")
    (problem,) = problems_from_errors([{"type": "literal_error", "loc": ("x",), "input": 1}])
    assert str(problem) == "x: '1' is not allowed — expected None"


# --- compose -------------------------------------------------------------------------------------


def test_override_values_are_written_in_hydra_grammar() -> None:
    value = {"a": [1, 2.5, None, True, False], "b": {}, "c": "it's \\ x"}
    assert _override_value(value) == "{a:[1,2.5,null,true,false],b:{},c:'it\\'s \\\\ x'}"


def test_rewrite_overrides() -> None:
    int8wo = "{backend:'torchao',kwargs:{quant_type:{name:'Int8WeightOnlyConfig'}}}"
    assert rewrite_overrides(
        [
            "quant.mapping.vae=int8wo",
            "quant.mapping.vae={backend:quanto,kwargs:{weights_dtype:int8}}",
            "quant.mapping.vae.kwargs.a=int8wo",
            "quant.kwargs.x=2",
            "~quant.mapping.vae",
            "model=tiny-sd",
            "quant.mapping.vae=null",
            "+quant.mapping.vae=nf5",
            "quant.mapping.vae@foo=1",
            "quant.components=[vae]",
        ]
    ) == [
        "++quant.mapping.vae=null",
        f"++quant.mapping.vae={int8wo}",
        "++quant.mapping.vae=null",
        "++quant.mapping.vae={backend:'quanto',kwargs:{weights_dtype:'int8'}}",
        "++quant.mapping.vae.kwargs.a=int8wo",
        "++quant.kwargs.x=2",
        "~quant.mapping.vae",
        "model=tiny-sd",
        "++quant.mapping.vae=null",
        "++quant.mapping.vae=nf5",
        "quant.mapping.vae@foo=1",
        "quant.components=[vae]",
    ]


def test_compose_errors_are_one_line_each(tmp_path: Path) -> None:
    def problem(*overrides: str, **kwargs: Any) -> list[str]:
        with pytest.raises(PlanError) as caught:
            compose(list(overrides), **kwargs)
        return caught.value.lines

    assert problem("model.source=tiny-flux", "quant.mapping.vae=[[[") == [
        "override 'quant.mapping.vae=[[[': bad override syntax (no viable alternative at input "
        "'[[[') — write key=value, +key=value, ~key or group=option; quote values with spaces"
    ]
    (line,) = problem("model=tiny-fluxx")
    assert line.startswith(
        "override 'model=tiny-fluxx': unknown model 'tiny-fluxx' — did you mean 'tiny-flux'? "
        "available: auraflow, chroma,"
    )
    assert line.endswith(", wan21, wan22 (qconf list models)")
    (line,) = problem("preset=zzz")
    assert line.startswith("override 'preset=zzz': unknown preset 'zzz' — available: ")
    assert problem("run.stepz=1") == [
        "override 'run.stepz=1': no key 'run.stepz' in the plan — check the spelling "
        "(`qconf show` prints every key); prefix + to add a new key"
    ]
    assert problem("model=null") == [
        "config: Config group override must be a string or a list. Got NoneType — check the "
        "overrides and config files"
    ]
    assert problem("model.source=x", config_dir=tmp_path / "none") == [
        f"--config-dir: '{tmp_path / 'none'}' is not a folder — pass a folder"
    ]
    (tmp_path / "preset").mkdir()
    (tmp_path / "preset" / "bad.yaml").write_text("a: [1\nb: 2\n")
    (line,) = problem("preset=bad", config_dir=tmp_path)
    assert line.startswith(f"{tmp_path / 'preset' / 'bad.yaml'}:")
    assert "malformed YAML" in line and line.endswith(" — fix the file")
    assert problem("model.source=x", config_name="nope") == [
        "config: Cannot find primary config 'nope'. Check that it's in your config search path. "
        "— check --config-name/--config-dir"
    ]


def test_compose_replaces_a_preset_entry_and_adds_user_options(tmp_path: Path) -> None:
    (tmp_path / "backend").mkdir()
    (tmp_path / "backend" / "mine.yaml").write_text(
        "backend: quanto\nkwargs:\n  weights_dtype: int4\n"
    )
    cfg = compose(
        ["preset=flux-nf4", "quant.mapping.transformer=mine", "quant.mapping.vae=null"],
        config_dir=tmp_path,
    )
    assert dict(cfg.quant.mapping.transformer) == {
        "backend": "quanto",
        "kwargs": {"weights_dtype": "int4"},
    }
    assert cfg.quant.mapping.vae is None
    validate(cfg, config_dir=tmp_path)


def test_validate_reads_dictconfigs_and_plans() -> None:
    cfg = compose(["quant.mapping.vae=int8wo"])
    first = validate(cfg)
    assert validate(first) == first
    assert first.model.source == "tiny-flux"
    from omegaconf import OmegaConf

    missing = OmegaConf.create({"model": {"source": "???"}})
    assert lines(missing) == [
        "model.source: Missing mandatory value: source — set the value (e.g. model=tiny-flux)"
    ]


# --- safety --------------------------------------------------------------------------------------


def test_targets_are_checked_everywhere_before_validation() -> None:
    data = {
        "model": FLUX,
        "quant": {"mapping": {"vae": {"_target_": "os.system"}}},
        "x": [
            {"_target_": "qconf.errors.Problem"},
            {"y": {"_target_": 3}},
            {"_target_": "qconf.load"},
        ],
        "_target_": "builtins.eval",
    }
    assert lines(data) == [
        f"quant.mapping.vae._target_: 'os.system' is not allowed — {TARGET_FIX}",
        f"x[0]._target_: 'qconf.errors.Problem' is not allowed — {TARGET_FIX}",
        f"x[1].y._target_: 'int' is not allowed — {TARGET_FIX}",
        f"_target_: 'builtins.eval' is not allowed — {TARGET_FIX}",
    ]
    for allowed in (
        "qconf.load",
        "qconf.load_pipeline",
        "diffusers.TorchAoConfig",
        "transformers.BitsAndBytesConfig",
        "torchao.quantization.Int8WeightOnlyConfig",
    ):
        assert target_problems({"_target_": allowed}) == []
    for refused in (
        "qconf.x",
        "diffusers.x",
        "transformers.x",
        "torchao.quantization.x",
        "torchao.utils.x",
        "qconfx.load",
        "qconf.load.x",
        "qconf.errors.Problem",
    ):
        assert target_problems({"_target_": refused}) != []


def test_safe_instantiate() -> None:
    from omegaconf import OmegaConf

    bnb = "transformers.BitsAndBytesConfig"
    made = safe_instantiate({"_target_": bnb, "load_in_8bit": True})
    assert type(made).__name__ == "BitsAndBytesConfig"
    assert (made.load_in_8bit, made.load_in_4bit) == (True, False)
    cfg = OmegaConf.create({"_target_": bnb, "llm_int8_skip_modules": ["a"]})
    made = safe_instantiate(cfg, load_in_4bit=True)
    assert made.load_in_4bit is True
    assert made.llm_int8_skip_modules == ["a"] and type(made.llm_int8_skip_modules) is list
    with pytest.raises(PlanError) as caught:
        safe_instantiate({"a": {"_target_": "os.system", "_args_": ["true"]}})
    assert caught.value.lines == [f"cfg.a._target_: 'os.system' is not allowed — {TARGET_FIX}"]
    with pytest.raises(PlanError) as caught:
        safe_instantiate({"_target_": "qconf.errors.Problem", "where": "a", "what": "b"})
    assert caught.value.lines == [
        f"cfg._target_: 'qconf.errors.Problem' is not allowed — {TARGET_FIX}"
    ]


# --- resolve -------------------------------------------------------------------------------------


def test_resolved_parts_and_json() -> None:
    resolved = plan(
        {"mapping": {"text_encoder": {**INT8WO, "skip": ["fc1"]}, "vae": QUANTO8}},
        torch_dtype=None,
    ).resolve()
    assert list(resolved.components) == ["text_encoder", "text_encoder_2", "transformer", "vae"]
    assert list(resolved.quantized) == ["text_encoder", "vae"]
    part = resolved.quantized["text_encoder"]
    assert isinstance(part, ResolvedPart)
    assert (part.backend, part.library, part.config_class) == (
        "torchao",
        "transformers",
        "TorchAoConfig",
    )
    assert part.kwargs == {
        "quant_type": {"name": "Int8WeightOnlyConfig"},
        "modules_to_not_convert": ["fc1"],
    }
    assert resolved.mode == "granular"
    assert resolved.torch_dtype == "bfloat16"
    assert resolved.to_json() == {
        "mode": "granular",
        "model": {
            "source": "tiny-flux",
            "pipeline": "FluxPipeline",
            "torch_dtype": "bfloat16",
            "allow_pickle": False,
            "trust_remote_code": False,
            "device_map": None,
        },
        "components": {
            "text_encoder": {
                "backend": "torchao",
                "library": "transformers",
                "config_class": "TorchAoConfig",
                "kwargs": part.kwargs,
            },
            "text_encoder_2": None,
            "transformer": None,
            "vae": {
                "backend": "quanto",
                "library": "diffusers",
                "config_class": "QuantoConfig",
                "kwargs": {"weights_dtype": "int8"},
            },
        },
    }


def test_load_dtype() -> None:
    def dtype(quant: dict | None, torch_dtype: str | None) -> str | None:
        return plan(quant, torch_dtype=torch_dtype).resolve().torch_dtype

    assert dtype({"mapping": {"vae": "int8wo"}}, None) == "bfloat16"
    assert dtype({"mapping": {"vae": "int8wo", "transformer": QUANTO8}}, None) == "bfloat16"
    assert dtype({"backend": "torchao", "kwargs": INT8WO["kwargs"]}, None) == "bfloat16"
    assert dtype({"mapping": {"vae": QUANTO8, "transformer": None}}, None) is None
    assert dtype(None, None) is None
    assert dtype({"mapping": {"vae": "int8wo"}}, "float16") == "float16"
    assert dtype(None, "float32") == "float32"
    assert plan({**QUANTO8}).resolve().mode == "global"


# --- saving (the checks; the real save is in test_save.py) ----------------------------------------


def test_save_problems() -> None:
    fine = plan({"mapping": {"transformer": QUANTO8, "text_encoder": "nf4", "vae": "int8wo"}})
    assert save_problems(fine.resolve()) == []
    unsaveable = plan(
        {"mapping": {"text_encoder": QUANTO8, "text_encoder_2": QUANTO8, "vae": "int4wo-gpu"}}
    )
    assert [str(p) for p in save_problems(unsaveable.resolve())] == [
        "quant.mapping.text_encoder: quanto on 'text_encoder' (transformers part) cannot be "
        "saved — pick a backend that saves there (qconf list backends), or drop --save",
        "quant.mapping.text_encoder_2: quanto on 'text_encoder_2' (transformers part) cannot be "
        "saved — pick a backend that saves there (qconf list backends), or drop --save",
    ]
    global_ = plan({**QUANTO8, "components": ["text_encoder"]})
    assert [p.where for p in save_problems(global_.resolve())] == ["quant.backend"]


def test_save_problems_for_quant_types_that_cannot_be_saved(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from qconf.backends.torchao import Int8WeightOnly

    monkeypatch.setattr(Int8WeightOnly, "can_save", False)
    resolved = plan({"mapping": {"vae": "int8wo"}}).resolve()
    assert [str(p) for p in save_problems(resolved)] == [
        "quant.mapping.vae: torchao Int8WeightOnlyConfig cannot be saved — drop --save"
    ]


def test_check_can_save(tmp_path: Path) -> None:
    resolved = plan({"mapping": {"vae": "int8wo"}}).resolve()
    check_can_save(resolved, tmp_path / "new", force=False)
    (tmp_path / "empty").mkdir()
    check_can_save(resolved, tmp_path / "empty", force=False)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(PlanError) as caught:
        check_can_save(resolved, tmp_path / "full", force=False)
    assert caught.value.lines == [
        f"--save: '{tmp_path / 'full'}' exists and is not empty — pass --force to replace it"
    ]
    check_can_save(resolved, tmp_path / "full", force=True)
    (tmp_path / "file").write_text("x")
    for force in (False, True):
        with pytest.raises(PlanError) as caught:
            check_can_save(resolved, tmp_path / "file", force=force)
        assert caught.value.lines == [
            f"--save: '{tmp_path / 'file'}' is a file — give a folder path"
        ]
    unsaveable = plan({"mapping": {"text_encoder": QUANTO8}}).resolve()
    with pytest.raises(PlanError) as caught:
        check_can_save(unsaveable, tmp_path / "file", force=False)
    assert [line.split(":")[0] for line in caught.value.lines] == [
        "quant.mapping.text_encoder",
        "--save",
    ]


class FakePipeline:
    """Stands in for a loaded pipeline: save_pretrained writes what it is told to."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.calls: list[dict] = []

    def save_pretrained(self, folder: Path, **kwargs: Any) -> None:
        self.calls.append(kwargs)
        (Path(folder) / "model_index.json").write_text("{}")
        if self.fail:
            raise RuntimeError("disk full")


def test_save_pipeline_writes_atomically(tmp_path: Path) -> None:
    import yaml

    from qconf.loading.loader import Loaded

    resolved = plan({"mapping": {"vae": "int8wo"}}).resolve()
    pipeline = FakePipeline()
    target = tmp_path / "out" / "saved"
    assert save_pipeline(Loaded(pipeline, resolved, 0.0), target) == target.resolve()
    assert pipeline.calls == [{"safe_serialization": True, "max_shard_size": None}]
    assert sorted(p.name for p in target.iterdir()) == ["model_index.json", "qconf.yaml"]
    record = yaml.safe_load((target / "qconf.yaml").read_text())
    assert list(record) == ["versions", "plan"]
    assert record["plan"] == resolved.to_json()
    assert record["versions"] == library_versions()
    # Replacing needs force; afterwards only the new folder is left.
    (target / "old.txt").write_text("old")
    with pytest.raises(PlanError, match="exists and is not empty"):
        save_pipeline(Loaded(FakePipeline(), resolved, 0.0), target)
    save_pipeline(Loaded(FakePipeline(), resolved, 0.0), target, force=True)
    assert sorted(p.name for p in target.iterdir()) == ["model_index.json", "qconf.yaml"]
    assert [p.name for p in target.parent.iterdir()] == ["saved"]
    # A failing save leaves the target as it was and nothing beside it.
    with pytest.raises(RuntimeError, match="disk full"):
        save_pipeline(Loaded(FakePipeline(fail=True), resolved, 0.0), target, force=True)
    assert sorted(p.name for p in target.iterdir()) == ["model_index.json", "qconf.yaml"]
    assert [p.name for p in target.parent.iterdir()] == ["saved"]


def test_library_versions() -> None:
    from importlib.metadata import version

    versions = library_versions()
    assert list(versions)[:6] == [
        "qconf",
        "torch",
        "diffusers",
        "transformers",
        "accelerate",
        "safetensors",
    ]
    assert versions["qconf"] == version("qconf")
    assert {"torchao", "bitsandbytes", "optimum-quanto", "gguf"} <= set(versions)
    assert len(versions) == len(set(versions))


# --- the JSON Schema -----------------------------------------------------------------------------


def test_plan_json_schema() -> None:
    schema = plan_json_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["title"] == "qconf plan"
    quant = schema["$defs"]["QuantSpec"]
    assert quant["allOf"] == [
        {
            "if": {"properties": {"backend": {"const": key}}, "required": ["backend"]},
            "then": {"properties": {"kwargs": {"$ref": f"#/$defs/{ref}"}}},
        }
        for key, ref in [
            (key, spec.entry.model_fields["kwargs"].annotation.__name__)
            for key, spec in REGISTRY.items()
        ]
    ]
    values = quant["properties"]["mapping"]["additionalProperties"]["anyOf"]
    assert values[0] == {
        "type": "string",
        "enum": sorted(backend_options()),
        "description": "a backend option",
    }
    assert len(values) == 3 and values[2] == {"type": "null"}


# --- corners the tests above leave (each found by `make mutate`) ---------------------------------


def test_user_backend_options_expand_only_with_their_config_dir(tmp_path: Path) -> None:
    (tmp_path / "backend").mkdir()
    (tmp_path / "backend" / "mine.yaml").write_text(
        "backend: quanto\nkwargs: {weights_dtype: int4}\n"
    )
    data = {"model": FLUX, "quant": {"mapping": {"vae": "mine"}}}
    assert validate(data, config_dir=tmp_path).quant.mapping["vae"].backend == "quanto"
    (line,) = lines(data)
    assert line.startswith("quant.mapping.vae: unknown backend option 'mine' — available: ")


def test_interpolations_are_resolved_before_validation() -> None:
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"model": FLUX, "run": {"prompt": "${model.source}"}})
    assert validate(cfg).run.prompt == "tiny-flux"


def test_a_plan_resolves_against_the_parts_it_is_given(tmp_path: Path) -> None:
    folder = flux_folder(tmp_path / "flux", text_encoder={"quantization_config": SAVED_NF4})
    from qconf.source.model import open_source

    saved_parts = open_source(str(folder), None)[0].parts
    resolved = plan().resolve(saved_parts)
    assert list(resolved.quantized) == ["text_encoder"]
    assert resolved.parts is saved_parts
    assert plan().resolve().quantized == {}


def test_raw_name_problems_use_the_pipeline_class() -> None:
    hub = {"source": "a/b", "pipeline": "FluxPipeline"}
    (problem,) = raw_name_problems({"model": hub, "quant": {"mapping": {"unet": None}}})
    assert str(problem).startswith(
        "quant.mapping.unet: 'unet' is not a part of FluxPipeline (FluxPipeline (parts table))"
    )


def test_a_global_entry_rule_is_reported_once_for_many_components() -> None:
    eight_bit = {"backend": "bitsandbytes_8bit", "kwargs": {"load_in_4bit": True}}
    quant = {**eight_bit, "components": ["text_encoder", "text_encoder_2"]}
    assert [line.split(":")[0] for line in lines({"model": FLUX, "quant": quant})] == [
        "quant.kwargs.load_in_4bit"
    ]


def test_safe_instantiate_checks_dictconfigs_after_resolving_them() -> None:
    from omegaconf import OmegaConf

    evil = OmegaConf.create({"_target_": "os.system", "_args_": ["true"]})
    with pytest.raises(PlanError, match="'os.system' is not allowed"):
        safe_instantiate(evil)
    hidden = OmegaConf.create({"t": "os.system", "x": {"_target_": "${t}", "_args_": ["true"]}})
    with pytest.raises(PlanError) as caught:
        safe_instantiate(hidden.x)
    assert caught.value.lines == [f"cfg._target_: 'os.system' is not allowed — {TARGET_FIX}"]
    allowed = OmegaConf.create(
        {"t": "transformers.BitsAndBytesConfig", "x": {"_target_": "${t}", "load_in_8bit": True}}
    )
    assert safe_instantiate(allowed.x).load_in_8bit is True


def test_plan_problems_carry_their_problems() -> None:
    from qconf.plan.messages import PlanProblems

    error = PlanProblems([Problem("a", "b", "c"), Problem("", "d")])
    assert str(error) == "a: b — c; d"
    assert error.problems == [Problem("a", "b", "c"), Problem("", "d")]


def test_did_you_mean_by_suffix() -> None:
    assert (
        did_you_mean("2", ["text_encoder", "text_encoder_2"]) == "did you mean 'text_encoder_2'? "
    )
    assert did_you_mean("the_big_vae", ["vae", "x"]) == "did you mean 'vae'? "


def test_problems_from_errors_corners() -> None:
    from qconf.plan.messages import PlanProblems

    def nested(*problems: Problem, loc: tuple = ("quant", "mapping", "vae")) -> dict:
        return {
            "type": "value_error",
            "loc": loc,
            "msg": "",
            "ctx": {"error": PlanProblems(list(problems))},
        }

    found = problems_from_errors(
        [
            nested(
                Problem("file", "bad", "fix"), Problem("", "whole"), Problem("model.source", "m")
            ),
            nested(Problem("x", "top"), loc=()),
            {
                "type": "value_error",
                "loc": ("y",),
                "msg": "Value error, boom",
                "input": 1,
                "ctx": {"error": ValueError("boom")},
            },
            {"type": "missing", "loc": ("a", "[0]"), "msg": ""},
            {
                "type": "union_tag_not_found",
                "loc": (),
                "msg": "",
                "ctx": {"discriminator": "'backend'"},
            },
            {"type": "weird", "loc": ("z",), "msg": "odd", "input": None},
        ]
    )
    assert found == [
        Problem("quant.mapping.vae.file", "bad", "fix"),
        Problem("quant.mapping.vae", "whole", ""),
        Problem("model.source", "m", ""),
        Problem("x", "top", ""),
        Problem("y", "boom (got 1)", "fix the value (qconf schema)"),
        Problem("a[0]", "required key is missing", "set it"),
        Problem("backend", "missing", f"set backend: one of {BACKENDS}"),
        Problem("z", "odd (got None)", "fix the value (qconf schema)"),
    ]


def test_composed_configs_are_open_for_new_keys() -> None:
    cfg = compose(["quant.mapping.vae=int8wo"])
    cfg.model.extra = 1  # not in struct mode: validation, not OmegaConf, reports unknown keys
    assert lines(cfg)[0].startswith("model.extra: unknown key")


def test_override_values_with_equals_signs_are_kept_whole() -> None:
    assert rewrite_overrides(["quant.kwargs.x='a=b'", "quant.mapping.vae.kwargs.y='c=d'"]) == [
        "++quant.kwargs.x='a=b'",
        "++quant.mapping.vae.kwargs.y='c=d'",
    ]


def test_compose_problem_helpers() -> None:
    import yaml

    from qconf.plan.compose import _composition_problem, _first_line, _parse_problem, _yaml_problem

    assert _first_line(ValueError()) == "ValueError"
    assert _first_line(ValueError("  one\ntwo")) == "one"
    exc = ValueError("x")
    assert _parse_problem(["a=1", "b=2"], exc).where == "override '?'"
    assert _parse_problem(["a=1"], exc).where == "override 'a=1'"
    assert _parse_problem(["a=1", "b=[[", "c=[["], exc).where == "override 'b=[['"
    with pytest.raises(yaml.YAMLError) as caught:
        yaml.safe_load("a: 1\nb: [1\nc: 2\n")
    assert str(_yaml_problem(caught.value)) == (
        "<unicode string>:3: malformed YAML: expected ',' or ']', but got ':' — fix the file"
    )
    assert str(_yaml_problem(yaml.YAMLError("plain"))) == (
        "config file: malformed YAML: plain — fix the file"
    )
    problem = _composition_problem([], ValueError("Could not override 'a.b'. No match"))
    assert problem.where == "override 'a.b'"


def test_save_pipeline_stages_beside_the_target(tmp_path: Path) -> None:
    from qconf.loading.loader import Loaded

    staged: list[Path] = []

    class Recorder(FakePipeline):
        def save_pretrained(self, folder: Path, **kwargs: Any) -> None:
            staged.append(Path(folder))
            super().save_pretrained(folder, **kwargs)

    target = tmp_path / "a" / "b" / "saved"
    resolved = plan({"mapping": {"vae": "int8wo"}}).resolve()
    save_pipeline(Loaded(Recorder(), resolved, 0.0), target)
    (folder,) = staged
    assert folder.parent == target.parent.resolve()
    assert folder.name.startswith(".saved.qconf-tmp-")
    assert (target / "qconf.yaml").is_file()


def test_library_versions_skip_what_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    import qconf.loading.saving

    monkeypatch.setattr(
        qconf.loading.saving, "_VERSIONED", ("qconf", "no-such-distribution", "torch")
    )
    assert list(library_versions())[:2] == ["qconf", "torch"]


# --- checks: dtypes, folder code, saved configs ---------------------------------------------------


def test_gguf_compute_dtype_must_match_the_model_dtype(tmp_path: Path) -> None:
    from qconf.plan.checks import dtype_problems

    file = tmp_path / "t.gguf"
    file.write_bytes(b"")
    gguf = {"backend": "gguf", "file": str(file), "kwargs": {"compute_dtype": "float16"}}
    quant = QuantSpec(mapping={"transformer": gguf, "vae": QUANTO8})
    assert [str(p) for p in dtype_problems(ModelSpec(source="tiny-flux"), quant)] == [
        "quant.mapping.transformer.kwargs.compute_dtype: float16, but model.torch_dtype is "
        "bfloat16 — drop compute_dtype (it follows model.torch_dtype) or make them equal"
    ]
    assert dtype_problems(ModelSpec(source="x", torch_dtype="float16"), quant) == []
    assert dtype_problems(ModelSpec(source="x", torch_dtype=None), quant) == []
    same = QuantSpec(mapping={"transformer": {**gguf, "kwargs": {}}})
    assert dtype_problems(ModelSpec(source="x"), same) == []
    assert lines({"model": FLUX, "quant": {"mapping": {"transformer": gguf}}}) == [
        "quant.mapping.transformer.kwargs.compute_dtype: float16, but model.torch_dtype is "
        "bfloat16 — drop compute_dtype (it follows model.torch_dtype) or make them equal"
    ]


def test_a_custom_pipeline_class_needs_trust(tmp_path: Path) -> None:
    folder = flux_folder(tmp_path / "flux")
    index = {**FLUX_INDEX, "_class_name": ["pipeline.py", "MyPipeline"]}
    (folder / "model_index.json").write_text(json.dumps(index))
    model = {"source": str(folder)}
    assert lines({"model": model}) == [
        "model.source: the pipeline needs custom code: model_index.json names a pipeline file "
        "'pipeline.py' (code shipped with the model) — set model.trust_remote_code=true only if "
        "you trust this model's code"
    ]
    validate({"model": {**model, "trust_remote_code": True}})


def test_saved_configs_that_cannot_be_read(tmp_path: Path) -> None:
    from qconf.plan.checks import saved_entries

    gguf = flux_folder(tmp_path / "a", vae={"quantization_config": {"quant_method": "gguf"}})
    assert lines({"model": {"source": str(gguf)}}) == [
        "model.source (vae/config.json): part 'vae' says quant_method 'gguf', which cannot be "
        "reloaded from a saved folder — load the original file with "
        "quant.mapping.vae={backend: gguf, file: ...}"
    ]
    upper = {**SAVED_NF4, "quant_method": "BITSANDBYTES"}
    shouting = flux_folder(tmp_path / "b", vae={"quantization_config": upper})
    assert validate({"model": {"source": str(shouting)}}).targets()["vae"].backend == (
        "bitsandbytes_4bit"
    )
    assert saved_entries({}) == {}


def test_mapping_keys_of_the_wrong_type_and_shown_values() -> None:
    from qconf.plan.messages import shown_value

    fix = "name the part (e.g. transformer); quote keys that look like numbers"
    for value, kind in ((1, "a number"), (1.5, "a number"), (True, "a boolean"), (None, "null"),
                        (b"x", "not a string")):  # fmt: skip
        key = {"type": "x", "loc": ("quant", "mapping", "[key]"), "msg": "", "input": value}
        assert problems_from_errors([key]) == [
            Problem("quant.mapping", f"key {value!r} is {kind}, not a name", fix)
        ]
    top = {"type": "x", "loc": ("[key]",), "msg": "", "input": 1}
    assert problems_from_errors([top]) == [Problem("", "key 1 is a number, not a name", fix)]
    assert lines({"model": FLUX, "quant": {"mapping": {1: "int8wo"}}}) == [
        f"quant.mapping.1: key 1 is a number, not a name — {fix}"
    ]
    assert lines({"model": FLUX, "run": {"prompt": {"a": 1}}}) == [
        f"run.prompt: Input should be a valid string (got a mapping){VALUE_FIX}"
    ]
    assert lines({"model": FLUX, "run": {"prompt": {}}}) == [
        f"run.prompt: Input should be a valid string (got {{}}){VALUE_FIX}"
    ]
    assert shown_value("a" * 58) == repr("a" * 58)
    assert shown_value("a" * 59) == "'" + "a" * 56 + "..."
    assert shown_value(list(range(30))) == repr(list(range(30)))[:57] + "..."
    assert shown_value("abcdef", limit=5) == "'a..."
    assert shown_value("ab", limit=4) == "'ab'"


def test_plans_never_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from omegaconf import OmegaConf

    from qconf.plan.interpolation import EnvironmentRead
    from qconf.plan.schema import _environment_read

    monkeypatch.setenv("QCONF_CORE_SECRET", "abc")
    cfg = OmegaConf.create({"model": {"source": "${oc.env:QCONF_CORE_SECRET}"}})
    assert lines(cfg) == [
        "model.source: reads environment variable 'QCONF_CORE_SECRET' (${oc.env:...}) — plans "
        "are written into saved and run folders, so qconf never resolves environment variables; "
        "put the value itself on the command line"
    ]
    read = EnvironmentRead("X")
    outer = ValueError("outer")
    outer.__context__ = read
    assert _environment_read(read) is read and _environment_read(outer) is read
    chained: BaseException = read
    for _ in range(9):
        wrapper = ValueError()
        wrapper.__cause__ = chained
        chained = wrapper
    assert _environment_read(chained) is read
    wrapper = ValueError()
    wrapper.__cause__ = chained
    assert _environment_read(wrapper) is None
    assert _environment_read(ValueError()) is None and _environment_read(None) is None
    both = ValueError()
    both.__cause__, both.__context__ = read, ValueError()
    assert _environment_read(both) is read


def test_missing_options_and_yaml_causes() -> None:
    import yaml

    from qconf.plan.compose import _missing_option_problem, _yaml_cause

    message = "Could not find 'flavour/sweet'\nAvailable options in 'flavour':\n\tsour\n\tsweat\n"
    assert str(_missing_option_problem(message)) == (
        "override 'flavour=sweet': unknown flavour 'sweet' — did you mean 'sweat'? available: "
        "sour, sweat"
    )
    assert str(_missing_option_problem("Could not find 'model/zzz'\n")) == (
        "override 'model=zzz': unknown model 'zzz' — available: none (qconf list models)"
    )
    assert str(_missing_option_problem("Cannot find primary config 'x'\nmore")) == (
        "config: Cannot find primary config 'x' — check --config-name/--config-dir"
    )
    error = yaml.YAMLError("bad")
    chain: BaseException = error
    for depth in range(5):
        wrapper = ValueError(depth)
        wrapper.__cause__ = chain
        chain = wrapper
    assert _yaml_cause(chain) is None  # five wrappers: given up
    assert _yaml_cause(chain.__cause__) is error
    context = ValueError()
    context.__context__ = error
    assert _yaml_cause(context) is error
    both = ValueError()
    both.__cause__, both.__context__ = error, ValueError()
    assert _yaml_cause(both) is error
    assert _yaml_cause(ValueError()) is None


def test_problems_from_errors_without_the_usual_context() -> None:
    assertion = {"type": "assertion_error", "loc": (), "msg": "Assertion failed, x", "input": 1}
    assert problems_from_errors([assertion]) == [
        Problem("plan", "x (got 1)", "fix the value (qconf schema)")
    ]
    bare = {"type": "union_tag_not_found", "loc": (), "msg": "", "ctx": {}}
    assert problems_from_errors([bare]) == [Problem("", "missing", f"set : one of {BACKENDS}")]
    tags = {"discriminator": "'backend'", "tag": "ab", "expected_tags": "'a', 'b'"}
    invalid = {"type": "union_tag_invalid", "loc": ("x",), "msg": "", "ctx": tags}
    assert problems_from_errors([invalid]) == [
        Problem("x.backend", "unknown backend 'ab'", "did you mean 'b'? available: a, b")
    ]


def test_validate_bounds_and_config_dir() -> None:
    from omegaconf import OmegaConf

    deep: dict = {"x": 1}
    for _ in range(29):
        deep = {"a": deep}
    assert lines({"model": FLUX, "run": deep})[0].startswith("run.a: unknown key")  # 32 deep
    assert lines({"model": FLUX, "run": {"a": deep}}) == [
        "plan: values are nested more than 32 levels deep — a plan is a few levels deep: check "
        "the nested values you wrote"
    ]
    assert lines({"model": FLUX}, config_dir="~nosuchuserqq/x") == [
        "--config-dir: '~nosuchuserqq/x': no user 'nosuchuserqq' on this machine — write the "
        "full path, or ~/... for your own home"
    ]
    bomb = OmegaConf.create({"model": FLUX, "run": {"prompt": "${model.source}" * 31}})
    assert lines(bomb) == [
        "config: 31 interpolations (${...}); at most 30 — write values instead of references"
    ]
    loop = OmegaConf.create({"model": {"source": "${model.x}", "x": "${model.source}"}})
    assert lines(loop) == [
        "model.source: Recursive interpolation detected — set the value (e.g. model=tiny-flux)"
    ]
