"""The exact config object each backend option hands to its library, through the public resolve
path (intake -> resolve -> build / to_diffusers), and the saved-config round trip (canonical,
from_saved, inspect). The expected objects are built here straight from the libraries, so a
kwarg qconf forgets to pass, a dtype it converts wrongly or a default it changes shows up as an
unequal attribute. No pipeline is loaded: only config objects are built (torch, no weights)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import qconf
from qconf.backends import REGISTRY
from qconf.plan.conftree import backend_options

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
torchao_quant = pytest.importorskip("torchao.quantization")
sdnq = pytest.importorskip("sdnq")
from torchao.quantization.granularity import PerGroup, PerRow, PerTensor  # noqa: E402

# tiny-flux: a diffusers part (transformer) and a transformers part (text_encoder, CLIP)
DIFFUSERS_PART, TRANSFORMERS_PART = "transformer", "text_encoder"
LIBRARY_OF = {DIFFUSERS_PART: "diffusers", TRANSFORMERS_PART: "transformers"}


def _ao(library: str, quant_type: Any, **kwargs: Any) -> Any:
    module = diffusers if library == "diffusers" else transformers
    return module.TorchAoConfig(quant_type=quant_type, **kwargs)


def _bnb(library: str, **kwargs: Any) -> Any:
    module = diffusers if library == "diffusers" else transformers
    return module.BitsAndBytesConfig(**kwargs)


def _quanto(library: str, weights: str, **kwargs: Any) -> Any:
    if library == "diffusers":
        return diffusers.QuantoConfig(weights_dtype=weights, **kwargs)
    return transformers.QuantoConfig(weights=weights, **kwargs)


# option (conf/backend/<option>.yaml) -> library -> the config object it must build
EXPECTED: dict[str, Callable[[str], Any]] = {
    "int8wo": lambda lib: _ao(lib, torchao_quant.Int8WeightOnlyConfig()),
    "int8dq": lambda lib: _ao(lib, torchao_quant.Int8DynamicActivationInt8WeightConfig()),
    "float8wo": lambda lib: _ao(lib, torchao_quant.Float8WeightOnlyConfig()),
    "int4wo": lambda lib: _ao(
        lib,
        torchao_quant.IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32)),
    ),
    "int4wo-gpu": lambda lib: _ao(
        lib,
        torchao_quant.Int4WeightOnlyConfig(group_size=128, int4_packing_format="tile_packed_to_4d"),
    ),
    "nf4": lambda lib: _bnb(
        lib, load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
    ),
    "fp4": lambda lib: _bnb(
        lib, load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_compute_dtype=torch.bfloat16
    ),
    "bnb-int8": lambda lib: _bnb(lib, load_in_8bit=True),
    "quanto-int8": lambda lib: _quanto(lib, "int8"),
    "quanto-int4": lambda lib: _quanto(lib, "int4"),
    "quanto-float8": lambda lib: _quanto(lib, "float8"),
    # one sdnq class for both libraries (diffusers' SDNQConfig is a factory returning it)
    "sdnq-int8": lambda lib: sdnq.SDNQConfig(weights_dtype="int8"),
    "sdnq-uint4": lambda lib: sdnq.SDNQConfig(weights_dtype="uint4"),
    "sdnq-float8": lambda lib: sdnq.SDNQConfig(weights_dtype="float8_e4m3fn"),
    "sdnq-uint4-svd": lambda lib: sdnq.SDNQConfig(weights_dtype="uint4", use_svd=True),
}


def _same(built: Any, expected: Any) -> None:
    """Same class and every attribute equal (torchao configs are dataclasses: equal by field)."""
    assert type(built) is type(expected)
    assert vars(built) == vars(expected)
    # the attributes a library reads are the ones it serializes; dtypes must be torch dtypes
    for name, value in vars(built).items():
        assert type(value) is type(vars(expected)[name]), name


def _ao_entry(name: str, **fields: Any) -> dict[str, Any]:
    return {"backend": "torchao", "kwargs": {"quant_type": {"name": name, **fields}}}


def _resolve(mapping: dict[str, Any]) -> Any:
    plan = qconf.intake(model={"source": "tiny-flux"}, quant={"mapping": mapping})
    return plan.resolve()


def test_every_option_has_an_expected_config() -> None:
    assert set(EXPECTED) == set(backend_options())


@pytest.mark.parametrize("option", sorted(EXPECTED))
def test_option_builds_the_exact_library_config(option: str) -> None:
    resolved = _resolve({part: option for part in LIBRARY_OF})
    for part, library in LIBRARY_OF.items():
        entry = resolved.quantized[part]
        assert entry.library == library
        built = entry.build()
        _same(built, EXPECTED[option](library))
        assert type(built).__name__ == entry.config_class
    # what diffusers receives for the whole pipeline
    pipeline = resolved.to_diffusers()
    assert type(pipeline) is diffusers.PipelineQuantizationConfig
    assert set(pipeline.quant_mapping) == set(LIBRARY_OF)
    for part, library in LIBRARY_OF.items():
        _same(pipeline.quant_mapping[part], EXPECTED[option](library))


# Every kwarg set to a non-default value, per backend and library.
BNB_4BIT_ALL = {
    "bnb_4bit_quant_type": "nf4",
    "bnb_4bit_compute_dtype": "float16",
    "bnb_4bit_use_double_quant": True,
    "bnb_4bit_quant_storage": "bfloat16",
    "llm_int8_threshold": 5.0,
    "llm_int8_enable_fp32_cpu_offload": True,
    "llm_int8_has_fp16_weight": True,
}
BNB_8BIT_ALL = {
    "llm_int8_threshold": 4.0,
    "llm_int8_enable_fp32_cpu_offload": True,
    "llm_int8_has_fp16_weight": True,
}

FULL_CASES: list[tuple[str, dict[str, Any], Callable[[str], Any]]] = [
    (
        "bnb4-all",
        {"backend": "bitsandbytes_4bit", "kwargs": BNB_4BIT_ALL},
        lambda lib: _bnb(
            lib,
            load_in_4bit=True,
            **{
                **BNB_4BIT_ALL,
                "bnb_4bit_compute_dtype": torch.float16,
                "bnb_4bit_quant_storage": torch.bfloat16,
            },
        ),
    ),
    (
        "bnb8-all",
        {"backend": "bitsandbytes_8bit", "kwargs": BNB_8BIT_ALL},
        lambda lib: _bnb(lib, load_in_8bit=True, **BNB_8BIT_ALL),
    ),
    (
        "bnb4-defaults",
        {"backend": "bitsandbytes_4bit"},
        lambda lib: _bnb(lib, load_in_4bit=True),
    ),
    (
        "int8wo-group",
        _ao_entry("Int8WeightOnlyConfig", group_size=64),
        lambda lib: _ao(lib, torchao_quant.Int8WeightOnlyConfig(granularity=PerGroup(64))),
    ),
    (
        "float8wo-e5m2",
        _ao_entry("Float8WeightOnlyConfig", weight_dtype="float8_e5m2"),
        lambda lib: _ao(lib, torchao_quant.Float8WeightOnlyConfig(weight_dtype=torch.float8_e5m2)),
    ),
    (
        "intx-int2-group16",
        _ao_entry("IntxWeightOnlyConfig", weight_dtype="int2", group_size=16),
        lambda lib: _ao(
            lib,
            torchao_quant.IntxWeightOnlyConfig(weight_dtype=torch.int2, granularity=PerGroup(16)),
        ),
    ),
    (
        "intx-defaults",
        _ao_entry("IntxWeightOnlyConfig"),
        lambda lib: _ao(lib, torchao_quant.IntxWeightOnlyConfig()),
    ),
    (
        "int4-plain-int32-64",
        _ao_entry("Int4WeightOnlyConfig", group_size=64, packing_format="plain_int32"),
        lambda lib: _ao(
            lib,
            torchao_quant.Int4WeightOnlyConfig(group_size=64, int4_packing_format="plain_int32"),
        ),
    ),
    (
        "int4-defaults",
        _ao_entry("Int4WeightOnlyConfig"),
        lambda lib: _ao(lib, torchao_quant.Int4WeightOnlyConfig()),
    ),
    (
        "float8dq-per-row",
        _ao_entry("Float8DynamicActivationFloat8WeightConfig", granularity="per_row"),
        lambda lib: _ao(
            lib, torchao_quant.Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
        ),
    ),
    (
        "float8dq-per-tensor",
        _ao_entry("Float8DynamicActivationFloat8WeightConfig", granularity="per_tensor"),
        lambda lib: _ao(
            lib, torchao_quant.Float8DynamicActivationFloat8WeightConfig(granularity=PerTensor())
        ),
    ),
    (
        "float8dq-defaults",
        _ao_entry("Float8DynamicActivationFloat8WeightConfig"),
        lambda lib: _ao(lib, torchao_quant.Float8DynamicActivationFloat8WeightConfig()),
    ),
    (
        "quanto-int2",
        {"backend": "quanto", "kwargs": {"weights_dtype": "int2"}},
        lambda lib: _quanto(lib, "int2"),
    ),
    (
        "quanto-default",
        {"backend": "quanto"},
        lambda lib: _quanto(lib, "int8"),
    ),
]


@pytest.mark.parametrize(
    ("entry", "expected"), [c[1:] for c in FULL_CASES], ids=[c[0] for c in FULL_CASES]
)
def test_every_kwarg_reaches_the_library(entry: dict[str, Any], expected: Any) -> None:
    resolved = _resolve({part: entry for part in LIBRARY_OF})
    for part, library in LIBRARY_OF.items():
        _same(resolved.quantized[part].build(), expected(library))


def test_transformers_only_torchao_flags_reach_transformers() -> None:
    flags = {"include_input_output_embeddings": True, "untie_embedding_weights": True}
    entry = {"backend": "torchao", "kwargs": {"quant_type": {"name": "Int8WeightOnlyConfig"},
                                              **flags}}  # fmt: skip
    resolved = _resolve({TRANSFORMERS_PART: entry})
    built = resolved.quantized[TRANSFORMERS_PART].build()
    _same(built, _ao("transformers", torchao_quant.Int8WeightOnlyConfig(), **flags))
    assert resolved.quantized[TRANSFORMERS_PART].kwargs == {
        "quant_type": {"name": "Int8WeightOnlyConfig"},
        **flags,
    }


SKIP_CASES = {
    "torchao": ("int8wo", "modules_to_not_convert"),
    "quanto": ("quanto-int8", "modules_to_not_convert"),
    "bitsandbytes_4bit": ("nf4", "llm_int8_skip_modules"),
    "bitsandbytes_8bit": ("bnb-int8", "llm_int8_skip_modules"),
}


@pytest.mark.parametrize("backend", sorted(SKIP_CASES))
def test_skip_extends_the_library_default_skips(backend: str) -> None:
    option, param = SKIP_CASES[backend]
    entry = {**backend_options()[option], "skip": ["b", "a", "lib_default"]}
    resolved = _resolve({part: entry for part in LIBRARY_OF})
    defaults = {part: ["lib_default", "z"] for part in LIBRARY_OF}
    mapping = resolved.to_diffusers(defaults).quant_mapping
    for part in LIBRARY_OF:
        # library defaults first, then the plan's, each once, order kept
        assert getattr(mapping[part], param) == ["lib_default", "z", "b", "a"]
        assert resolved.quantized[part].kwargs[param] == ["b", "a", "lib_default"]
    # without a skip, qconf adds nothing: the library keeps its own default
    plain = _resolve({part: option for part in LIBRARY_OF}).to_diffusers(defaults)
    for part in LIBRARY_OF:
        assert getattr(plain.quant_mapping[part], param) is None


def test_show_kwargs_are_the_library_names() -> None:
    resolved = _resolve({part: "quanto-int4" for part in LIBRARY_OF})
    assert resolved.quantized[DIFFUSERS_PART].kwargs == {"weights_dtype": "int4"}
    assert resolved.quantized[TRANSFORMERS_PART].kwargs == {"weights": "int4"}
    nf4 = _resolve({part: "nf4" for part in LIBRARY_OF}).quantized[TRANSFORMERS_PART].kwargs
    assert nf4 == {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_compute_dtype": "bfloat16",
    }
    int8 = _resolve({part: "bnb-int8" for part in LIBRARY_OF}).quantized[DIFFUSERS_PART].kwargs
    assert int8 == {"load_in_8bit": True}


# --- GGUF: diffusers only, built from the file at load ----------------------------------------


@pytest.mark.parametrize(
    ("compute_dtype", "model_dtype", "expected"),
    [
        ("float16", "bfloat16", "float16"),  # the plan's compute dtype wins
        (None, "bfloat16", "bfloat16"),  # else the pipeline's load dtype
        ("float32", None, "float32"),
        (None, None, None),  # else diffusers' default
    ],
)
def test_gguf_compute_dtype(compute_dtype: str | None, model_dtype: str | None,
                            expected: str | None) -> None:  # fmt: skip
    pytest.importorskip("gguf")
    kwargs = {} if compute_dtype is None else {"compute_dtype": compute_dtype}
    entry = REGISTRY["gguf"].entry.model_validate(
        {"backend": "gguf", "file": "part.gguf", "kwargs": kwargs}
    )
    built = entry.config_for(model_dtype)
    want = (
        diffusers.GGUFQuantizationConfig()
        if expected is None
        else diffusers.GGUFQuantizationConfig(compute_dtype=getattr(torch, expected))
    )
    _same(built, want)
    if model_dtype is None:
        _same(entry.build("diffusers"), want)


# --- round trips: the saved config.json block -> from_saved -> canonical ----------------------

ROUND_TRIP = [
    *((option, backend_options()[option]) for option in sorted(EXPECTED)),
    *((name, entry) for name, entry, _ in FULL_CASES),
]


def _entry(data: dict[str, Any]) -> Any:
    return REGISTRY[data["backend"]].entry.model_validate(data)


def _saved_block(built: Any) -> dict[str, Any]:
    """What save_pretrained writes as `quantization_config` (through JSON, as on disk)."""
    return json.loads(json.dumps(built.to_dict(), default=str))


@pytest.mark.parametrize(
    ("name", "data"), ROUND_TRIP, ids=[f"{n}-{i}" for i, (n, _) in enumerate(ROUND_TRIP)]
)
@pytest.mark.parametrize("library", ["diffusers", "transformers"])
def test_saved_config_reads_back_as_the_same_plan(name: str, data: dict[str, Any],
                                                  library: str) -> None:  # fmt: skip
    entry = _entry({**data, "skip": ["x.proj", "a"]} if data["backend"] != "gguf" else data)
    saved = _saved_block(entry.build(library))
    back = _entry(type(entry).from_saved(saved))
    assert back.canonical() == entry.canonical()


def test_canonical_drops_library_defaults_only() -> None:
    nf4 = _entry(backend_options()["nf4"])
    assert nf4.canonical() == {
        "backend": "bitsandbytes_4bit",
        "kwargs": {"bnb_4bit_quant_type": "nf4", "bnb_4bit_compute_dtype": "bfloat16"},
    }
    fp4 = _entry(backend_options()["fp4"])  # fp4 is bitsandbytes' default quant type
    assert fp4.canonical() == {
        "backend": "bitsandbytes_4bit",
        "kwargs": {"bnb_4bit_compute_dtype": "bfloat16"},
    }
    every_default = _entry(
        {
            "backend": "bitsandbytes_4bit",
            "kwargs": {
                "llm_int8_threshold": 6.0,
                "llm_int8_enable_fp32_cpu_offload": False,
                "llm_int8_has_fp16_weight": False,
                "bnb_4bit_compute_dtype": "float32",
                "bnb_4bit_quant_type": "fp4",
                "bnb_4bit_use_double_quant": False,
                "bnb_4bit_quant_storage": "uint8",
            },
            "skip": ["b", "a"],
        }
    )
    assert every_default.canonical() == {
        "backend": "bitsandbytes_4bit",
        "kwargs": {},
        "skip": ["a", "b"],
    }
    int4 = _entry(backend_options()["int4wo-gpu"])
    assert int4.canonical()["kwargs"] == {
        "quant_type": {"name": "Int4WeightOnlyConfig", "packing_format": "tile_packed_to_4d"}
    }
    intx = _entry(backend_options()["int4wo"])
    assert intx.canonical()["kwargs"] == {
        "quant_type": {"name": "IntxWeightOnlyConfig", "weight_dtype": "int4", "group_size": 32}
    }
    intx8 = _entry(_ao_entry("IntxWeightOnlyConfig", weight_dtype="int8"))
    assert intx8.canonical()["kwargs"] == {"quant_type": {"name": "IntxWeightOnlyConfig"}}
    f8 = _entry(_ao_entry("Float8WeightOnlyConfig", weight_dtype="float8_e4m3fn"))
    assert f8.canonical()["kwargs"] == {"quant_type": {"name": "Float8WeightOnlyConfig"}}
    f8dq = _entry(_ao_entry("Float8DynamicActivationFloat8WeightConfig", granularity="per_tensor"))
    assert f8dq.canonical()["kwargs"] == {
        "quant_type": {"name": "Float8DynamicActivationFloat8WeightConfig"}
    }
    flags = _entry({"backend": "torchao", "kwargs": {
        "quant_type": {"name": "Int8WeightOnlyConfig"},
        "include_input_output_embeddings": False, "untie_embedding_weights": True}})  # fmt: skip
    assert flags.canonical()["kwargs"] == {
        "quant_type": {"name": "Int8WeightOnlyConfig"},
        "untie_embedding_weights": True,
    }
    quanto = _entry({"backend": "quanto", "kwargs": {"weights_dtype": "int8"}})
    assert quanto.canonical() == {"backend": "quanto", "kwargs": {"weights_dtype": "int8"}}


def test_8bit_from_saved_ignores_4bit_fields() -> None:
    saved = _saved_block(_entry({"backend": "bitsandbytes_8bit"}).build("transformers"))
    saved["bnb_4bit_quant_type"] = "nf4"  # a 4-bit field a saved 8-bit block may still carry
    assert _entry(REGISTRY["bitsandbytes_8bit"].entry.from_saved(saved)).canonical() == {
        "backend": "bitsandbytes_8bit",
        "kwargs": {},
    }


# --- inspect: a saved folder's config.json blocks become the plan again ------------------------


def _saved_folder(folder: Path, configs: dict[str, dict[str, Any]]) -> Path:
    """tiny-flux's config files (no weights) with `configs[part]` merged into a part's config.json
    (no load dtype recorded unless given)."""
    from qconf.source.tiny import tiny_pipeline_path

    source = tiny_pipeline_path("tiny-flux")
    shutil.copy(source / "model_index.json", folder)
    for config in source.glob("*/config.json"):
        (folder / config.parent.name).mkdir()
        data = json.loads(config.read_text())
        data.pop("torch_dtype", None)
        data.pop("dtype", None)
        data.update(configs.get(config.parent.name, {}))
        (folder / config.parent.name / "config.json").write_text(json.dumps(data))
    return folder


def test_inspect_reads_back_each_part(tmp_path: Path) -> None:
    from qconf.loading.inspect import inspect_folder

    plans = {
        "transformer": ("diffusers", backend_options()["int4wo"]),
        "text_encoder": ("transformers", backend_options()["nf4"]),
        "text_encoder_2": (
            "transformers",
            {"backend": "quanto", "kwargs": {"weights_dtype": "int4"}},
        ),  # fmt: skip
    }
    configs = {
        part: {"quantization_config": _saved_block(_entry(data).build(library))}
        for part, (library, data) in plans.items()
    }
    configs["text_encoder"]["torch_dtype"] = "float16"
    found = inspect_folder(_saved_folder(tmp_path, configs))
    assert found["model"] == {
        "source": str(tmp_path),
        "pipeline": "FluxPipeline",
        "torch_dtype": "float16",
    }
    assert found["quant"]["mapping"] == {
        part: _entry(data).canonical() for part, (_, data) in plans.items()
    }


@pytest.mark.parametrize(
    ("configs", "expected"),
    [
        ({"text_encoder": {"dtype": "float32"}}, "float32"),
        ({"text_encoder": {"dtype": "float16"}}, "float16"),
        ({"text_encoder": {"dtype": "bfloat16"}}, "bfloat16"),
        ({"text_encoder_2": {"torch_dtype": "float32"}}, "float32"),
        ({"text_encoder_2": {"torch_dtype": "bfloat16"}}, "bfloat16"),
        # transformers' newer key wins over the old one
        ({"text_encoder": {"dtype": "bfloat16", "torch_dtype": "float16"}}, "bfloat16"),
        # parts in name order: the first that records a float dtype
        ({"text_encoder": {"dtype": "float16"}, "text_encoder_2": {"dtype": "float32"}}, "float16"),
        ({"text_encoder": {"dtype": "int8"}, "text_encoder_2": {"dtype": "float32"}}, "float32"),
        ({"text_encoder": {"torch_dtype": "auto"}}, None),
        ({}, None),
    ],
)
def test_inspect_reads_the_recorded_load_dtype(
    tmp_path: Path, configs: dict[str, dict[str, Any]], expected: str | None
) -> None:
    from qconf.loading.inspect import inspect_folder

    found = inspect_folder(_saved_folder(tmp_path, configs))
    assert found["model"]["torch_dtype"] == expected
    assert found["quant"]["mapping"] == {}


def test_inspect_refuses_a_folder_that_is_not_a_pipeline(tmp_path: Path) -> None:
    from qconf.errors import ModelSourceError, PlanError, Problem
    from qconf.loading.inspect import inspect_folder

    with pytest.raises(ModelSourceError) as caught:
        inspect_folder(tmp_path)
    assert caught.value.problems == [
        Problem(str(tmp_path), "no model_index.json here", "give a saved diffusers pipeline folder")
    ]
    with pytest.raises(PlanError) as caught_empty:
        inspect_folder("")
    assert caught_empty.value.problems[0].where == "inspect"


def test_transformers_only_flags_read_back_from_a_saved_block() -> None:
    data = _ao_entry("Int8WeightOnlyConfig")
    data["kwargs"] |= {"include_input_output_embeddings": True, "untie_embedding_weights": True}
    entry = _entry({**data, "skip": ["lm_head"]})
    back = type(entry).from_saved(_saved_block(entry.build("transformers")))
    assert back == {**data, "skip": ["lm_head"]}
    plain = _entry(_ao_entry("Int8WeightOnlyConfig"))
    assert type(plain).from_saved(_saved_block(plain.build("transformers"))) == _ao_entry(
        "Int8WeightOnlyConfig"
    )


def test_quanto_saved_block_without_a_weight_dtype_is_int8() -> None:
    quanto = REGISTRY["quanto"].entry
    assert quanto.from_saved({"quant_method": "quanto"}) == {
        "backend": "quanto",
        "kwargs": {"weights_dtype": "int8"},
    }
    assert quanto.from_saved({"weights": "int2", "modules_to_not_convert": ("a", "b")}) == {
        "backend": "quanto",
        "kwargs": {"weights_dtype": "int2"},
        "skip": ["a", "b"],
    }
