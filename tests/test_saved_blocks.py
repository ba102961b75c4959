"""Saved `quantization_config` blocks in the spellings the libraries' writers do not produce
today but a config.json may still hold (a dtype written with str(), a torchao config without
diffusers' "default" wrapper, granularity as one object or an [activation, weight] pair), read
by each entry's `from_saved`; and bitsandbytes' library defaults dropped on the way in. The
blocks the installed libraries do write are round-tripped in tests/test_backend_configs.py."""

from __future__ import annotations

from typing import Any

import pytest

from qconf.backends import REGISTRY, entry_from_saved
from qconf.backends.torchao import (
    Float8DynamicActivationFloat8Weight,
    Float8WeightOnly,
    Int4WeightOnly,
    IntxWeightOnly,
)


def _dtype(name: str) -> dict[str, Any]:
    return {"_type": "torch.dtype", "_data": name}


@pytest.mark.parametrize(
    ("data", "fields"),
    [
        ({"weight_dtype": _dtype("float8_e5m2")}, {"weight_dtype": "float8_e5m2"}),
        ({"weight_dtype": "torch.float8_e5m2"}, {"weight_dtype": "float8_e5m2"}),  # str(dtype)
        ({"weight_dtype": _dtype("torch.float8_e4m3fn")}, {"weight_dtype": "float8_e4m3fn"}),
        ({"weight_dtype": None}, {}),
        ({}, {}),
    ],
)
def test_float8_weight_dtype(data: dict[str, Any], fields: dict[str, Any]) -> None:
    assert Float8WeightOnly.fields_from_saved(data) == fields


@pytest.mark.parametrize(
    ("data", "fields"),
    [
        ({"weight_dtype": "torch.int4"}, {"weight_dtype": "int4"}),
        (
            {"weight_dtype": _dtype("int2"), "group_size": 64},
            {"weight_dtype": "int2", "group_size": 64},
        ),  # fmt: skip
        ({"granularity": {"_type": "PerGroup", "_data": {"group_size": 16}}}, {"group_size": 16}),
        ({"granularity": {"_type": "PerAxis", "_data": {"axis": 0}}}, {}),
        ({"group_size": None, "weight_dtype": None}, {}),
    ],
)
def test_intx_fields(data: dict[str, Any], fields: dict[str, Any]) -> None:
    assert IntxWeightOnly.fields_from_saved(data) == fields


def test_int4_packing_format_is_lowered() -> None:
    saved = {"int4_packing_format": {"_type": "Int4PackingFormat", "_data": "TILE_PACKED_TO_4D"}}
    assert Int4WeightOnly.fields_from_saved(saved) == {"packing_format": "tile_packed_to_4d"}
    assert Int4WeightOnly.fields_from_saved({"int4_packing_format": "PLAIN"}) == {
        "packing_format": "plain"
    }
    assert Int4WeightOnly.fields_from_saved({"group_size": 64}) == {"group_size": 64}
    assert Int4WeightOnly.fields_from_saved({}) == {}


@pytest.mark.parametrize(
    ("granularity", "fields"),
    [
        ([{"_type": "PerTensor"}, {"_type": "PerRow"}], {"granularity": "per_row"}),  # weight last
        ([{"_type": "PerRow"}, {"_type": "PerTensor"}], {}),
        (
            [{"_type": "PerTensor"}, {"_type": "PerTensor"}, {"_type": "PerRow"}],
            {"granularity": "per_row"},
        ),  # fmt: skip
        ({"_type": "PerRow"}, {"granularity": "per_row"}),
        ({"_type": "PerTensor"}, {}),
        ("PerRow", {}),  # not torchao's serialized form
        (None, {}),
    ],
)
def test_float8_dynamic_granularity(granularity: Any, fields: dict[str, Any]) -> None:
    assert Float8DynamicActivationFloat8Weight.fields_from_saved({"granularity": granularity}) == (
        fields
    )


def test_torchao_block_without_the_default_wrapper() -> None:
    entry = REGISTRY["torchao"].entry
    block = {"_type": "Float8WeightOnlyConfig", "_data": {"weight_dtype": _dtype("float8_e5m2")}}
    quant_type = {"name": "Float8WeightOnlyConfig", "weight_dtype": "float8_e5m2"}
    want = {"backend": "torchao", "kwargs": {"quant_type": quant_type}}
    assert entry.from_saved({"quant_type": block}) == want
    assert entry.from_saved({"quant_type": {"default": block}}) == want
    # no _data: the quant type's defaults
    assert entry.from_saved({"quant_type": {"_type": "Int8WeightOnlyConfig"}}) == {
        "backend": "torchao",
        "kwargs": {"quant_type": {"name": "Int8WeightOnlyConfig"}},
    }


def test_torchao_block_naming_an_unknown_or_string_quant_type() -> None:
    """The name is kept as found, so validation says which quant type is not offered."""
    entry = REGISTRY["torchao"].entry
    assert entry.from_saved({"quant_type": "int8_weight_only"}) == {
        "backend": "torchao",
        "kwargs": {"quant_type": {"name": "int8_weight_only"}},
    }
    assert entry.from_saved({"quant_type": {"default": {"_type": "FutureConfig",
                                                        "_data": {"x": 1}}}}) == {
        "backend": "torchao",
        "kwargs": {"quant_type": {"name": "FutureConfig"}},
    }  # fmt: skip
    saved = {"quant_type": "x", "include_input_output_embeddings": False,
             "untie_embedding_weights": True, "modules_to_not_convert": []}  # fmt: skip
    flags = entry.from_saved(saved)
    assert flags == {"backend": "torchao", "kwargs": {"quant_type": {"name": "x"},
                                                      "untie_embedding_weights": True}}  # fmt: skip


def test_bitsandbytes_library_defaults_are_dropped_on_read() -> None:
    """A saved block spells out every field; the defaults are not what the plan set."""
    saved = {
        "quant_method": "bitsandbytes",
        "load_in_4bit": True,
        "load_in_8bit": False,
        "llm_int8_threshold": 6.0,
        "llm_int8_skip_modules": None,
        "llm_int8_enable_fp32_cpu_offload": False,
        "llm_int8_has_fp16_weight": False,
        "bnb_4bit_compute_dtype": "float32",
        "bnb_4bit_quant_type": "nf4",
        "bnb_4bit_use_double_quant": False,
        "bnb_4bit_quant_storage": "uint8",
    }
    assert entry_from_saved(saved) == {
        "backend": "bitsandbytes_4bit",
        "kwargs": {"bnb_4bit_quant_type": "nf4"},
    }
    eight = {**saved, "load_in_4bit": False, "load_in_8bit": True, "llm_int8_threshold": 5.0}
    assert entry_from_saved(eight) == {
        "backend": "bitsandbytes_8bit",
        "kwargs": {"llm_int8_threshold": 5.0},
    }
    assert entry_from_saved({"quant_method": "BitsAndBytes", "load_in_8bit": True,
                             "llm_int8_skip_modules": ("a",)}) == {
        "backend": "bitsandbytes_8bit", "kwargs": {}, "skip": ["a"]}  # fmt: skip
    assert entry_from_saved({"quant_method": "unknown"}) is None
    assert entry_from_saved({}) is None
