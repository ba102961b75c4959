"""Wrong plans raise qconf.PlanError naming every problem; the texts are pinned."""

from __future__ import annotations

import pytest

import qconf
from qconf import PlanError
from qconf.backends import REGISTRY


def problems(overrides: list[str]) -> list[str]:
    with pytest.raises(PlanError) as caught:
        qconf.validate(qconf.compose(overrides))
    return caught.value.lines


def test_both_modes_are_exclusive() -> None:
    assert problems(["quant.backend=torchao", "quant.mapping.vae=int8wo"]) == [
        "quant.mapping: set together with quant.backend; global and granular mode are exclusive"
        " — use quant.backend/kwargs/components or quant.mapping, not both",
        "quant.kwargs.quant_type: required key is missing — set it",
    ]


def test_mapping_with_components_is_an_error() -> None:
    assert problems(["quant.mapping.vae=int8wo", "quant.components=[vae]"]) == [
        "quant.components: set with quant.mapping (diffusers fails late with KeyError(None))"
        " — list the parts as keys of quant.mapping and drop quant.components"
    ]


def test_unknown_backend_lists_the_available_ones() -> None:
    assert problems(["quant.mapping.transformer={backend:nope}"]) == [
        "quant.mapping.transformer.backend: unknown backend 'nope' — available: "
        + ", ".join(REGISTRY)
    ]
    assert problems(["quant.backend=nf4"]) == [
        "quant.backend: unknown backend 'nf4' — 'nf4' is a backend option: use "
        "quant.mapping.<part>=nf4. available: " + ", ".join(REGISTRY)
    ]


def test_unknown_option_suggests_the_close_one() -> None:
    (line,) = problems(["quant.mapping.transformer=nf5"])
    assert line.startswith(
        "quant.mapping.transformer: unknown backend option 'nf5' — did you mean 'nf4'? available:"
    )


def test_unknown_kwarg_did_you_mean() -> None:
    (line,) = problems(
        ["quant.mapping.transformer=nf4", "quant.mapping.transformer.kwargs.compute_dtype=bfloat16"]
    )
    assert line.startswith(
        "quant.mapping.transformer.kwargs.compute_dtype: unknown key — "
        "did you mean 'bnb_4bit_compute_dtype'? valid keys: load_in_4bit,"
    )


def test_unknown_and_weightless_parts_list_the_real_parts() -> None:
    assert problems(["quant.mapping.unet=int8wo", "quant.mapping.tokenizer=int8wo"]) == [
        "quant.mapping.unet: 'unet' is not a part of FluxPipeline (built-in tiny-flux) — "
        "its parts with weights: text_encoder, text_encoder_2, transformer, vae",
        "quant.mapping.tokenizer: 'tokenizer' (CLIPTokenizer) has no weights to quantize — "
        "quantize one of: text_encoder, text_encoder_2, transformer, vae",
    ]


def test_eight_bit_key_with_four_bit_kwargs() -> None:
    assert problems(
        [
            "quant.backend=bitsandbytes_8bit",
            "quant.kwargs.load_in_4bit=true",
            "quant.kwargs.bnb_4bit_quant_type=nf4",
        ]
    ) == [
        "quant.kwargs.load_in_4bit: true, but backend bitsandbytes_8bit is 8-bit — remove it, "
        "or use backend bitsandbytes_4bit",
        "quant.kwargs.bnb_4bit_quant_type: is a 4-bit setting but the backend is "
        "bitsandbytes_8bit — use backend bitsandbytes_4bit (e.g. option nf4) or drop it",
    ]


def test_four_bit_key_with_load_in_8bit() -> None:
    (line,) = problems(
        ["quant.mapping.text_encoder={backend:bitsandbytes_4bit,kwargs:{load_in_8bit:true}}"]
    )
    assert line == (
        "quant.mapping.text_encoder.kwargs.load_in_8bit: true, but backend bitsandbytes_4bit is "
        "4-bit — remove it, or use backend bitsandbytes_8bit"
    )


def test_kwargs_checked_against_the_receiving_library() -> None:
    (line,) = problems(
        [
            "quant.mapping.vae={backend:torchao,kwargs:{quant_type:{name:Int8WeightOnlyConfig},"
            "include_input_output_embeddings:true}}"
        ]
    )
    assert line == (
        "quant.mapping.vae.kwargs.include_input_output_embeddings: not accepted by diffusers's "
        "TorchAoConfig ('vae' is a diffusers part) — diffusers accepts: modules_to_not_convert, "
        "quant_type"
    )
    # ... and the same kwarg on a transformers part is fine.
    qconf.validate(
        qconf.compose(
            [
                "quant.mapping.text_encoder={backend:torchao,kwargs:{quant_type:"
                "{name:Int8WeightOnlyConfig},include_input_output_embeddings:true}}"
            ]
        )
    )


def test_dtype_strings_are_checked() -> None:
    assert problems(
        [
            "quant.mapping.text_encoder=nf4",
            "quant.mapping.text_encoder.kwargs.bnb_4bit_compute_dtype=bf16",
        ]
    ) == [
        "quant.mapping.text_encoder.kwargs.bnb_4bit_compute_dtype: 'bf16' is not allowed — "
        "expected 'float32', 'float16' or 'bfloat16'"
    ]
    assert problems(["model.torch_dtype=fp16"]) == [
        "model.torch_dtype: 'fp16' is not allowed — expected 'float32', 'float16' or 'bfloat16'"
    ]


def test_torchao_quant_type_by_name() -> None:
    (line,) = problems(["quant.mapping.vae={backend:torchao,kwargs:{quant_type:{name:Int9}}}"])
    assert line.startswith(
        "quant.mapping.vae.kwargs.quant_type.name: unknown torchao quant type 'Int9' — available: "
        "Int8WeightOnlyConfig,"
    )


def test_all_problems_of_a_plan_are_reported_together() -> None:
    lines = problems(
        [
            "quant.mapping.transformer=nf5",
            "quant.mapping.foo=int8wo",
            "quant.mapping.tokenizer_2=int8wo",
            "quant.components=[vae]",
        ]
    )
    assert [line.split(":")[0] for line in lines] == [
        "quant.mapping.transformer",
        "quant.mapping.foo",
        "quant.mapping.tokenizer_2",
        "quant.components",
    ]


def test_model_pipeline_disagreeing_with_the_source() -> None:
    assert problems(["model=tiny-sd", "model.pipeline=FluxPipeline"]) == [
        "model.pipeline: 'FluxPipeline' but built-in tiny-sd is a StableDiffusionPipeline — "
        "set model.pipeline=StableDiffusionPipeline or null"
    ]


def test_a_folder_without_model_index(tmp_path) -> None:
    assert problems([f"model.source={tmp_path}"]) == [
        f"model.source: '{tmp_path}' has no model_index.json — point model.source at a "
        "diffusers pipeline folder (save_pretrained output)"
    ]


def test_hub_id_needs_a_pipeline_class_offline() -> None:
    (line,) = problems(["model.source=someone/some-model"])
    assert line.startswith("model.pipeline: cannot tell the parts of 'someone/some-model'")


def test_unknown_top_level_key_from_a_dict() -> None:
    with pytest.raises(PlanError) as caught:
        qconf.validate({"model": {"source": "tiny-flux"}, "quantization": {}})
    assert caught.value.lines == ["quantization: unknown key — valid keys: model, quant, run"]


def test_plan_error_is_a_value_error_and_a_qconf_error() -> None:
    assert issubclass(PlanError, ValueError) and issubclass(PlanError, qconf.QconfError)
    assert issubclass(qconf.BackendUnavailableError, ImportError)


def test_skip_with_the_raw_library_knob_is_an_error() -> None:
    assert problems(
        [
            "quant.mapping.vae=int8wo",
            "quant.mapping.vae.skip=[decoder]",
            "quant.mapping.vae.kwargs.modules_to_not_convert=[encoder]",
        ]
    ) == [
        "quant.mapping.vae.kwargs.modules_to_not_convert: set together with skip; it would "
        "replace the library's default skips — list the modules under skip only"
    ]


def test_skip_is_shown_under_the_library_knob() -> None:
    plan = qconf.validate(
        qconf.compose(["quant.mapping.text_encoder=nf4", "quant.mapping.text_encoder.skip=[fc1]"])
    )
    kwargs = plan.resolve().to_json()["components"]["text_encoder"]["kwargs"]
    assert kwargs["llm_int8_skip_modules"] == ["fc1"]


def test_gguf_entry_needs_a_gguf_file(tmp_path) -> None:
    missing = tmp_path / "transformer.gguf"
    assert problems([f"quant.mapping.transformer={{backend:gguf,file:'{missing}'}}"]) == [
        f"quant.mapping.transformer.file: '{missing}' is not a .gguf file — give the path of one"
    ]


def test_missing_backend_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a machine without optimum-quanto: the registry's import name is not found."""
    import dataclasses

    from qconf.backends import REGISTRY

    missing = dataclasses.replace(REGISTRY["quanto"], module="no_such_quanto_package")
    monkeypatch.setitem(REGISTRY, "quanto", missing)
    plan = qconf.validate(qconf.compose(["quant.mapping.vae=quanto-int8"]))
    with pytest.raises(qconf.BackendUnavailableError) as caught:
        qconf.check_environment(plan)
    assert caught.value.lines == [
        "quant.mapping.vae: backend quanto needs the package optimum-quanto, not installed — "
        "pip install 'qconf[quanto]'"
    ]
