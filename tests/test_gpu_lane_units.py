"""The nunchaku_lite and modelopt entries (qconf/backends/nunchaku.py, modelopt.py) without a
GPU: the variant that picks their known-failure rows, the saved block read back, the config
object diffusers gets, and the one-line refusals (a plain part, an unusable library)."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

from qconf.backends import REGISTRY
from qconf.errors import PlanError, Problem

SVDQ = {"precision": "int4", "group_size": 64, "rank": 32, "targets": ["transformer_blocks.0"]}
AWQ = {"precision": "int4", "group_size": 64, "targets": ["single_transformer_blocks.0"]}


def _nunchaku(**kwargs: Any) -> Any:
    return REGISTRY["nunchaku_lite"].entry.model_validate(
        {"backend": "nunchaku_lite", "kwargs": kwargs}
    )


def _modelopt(**kwargs: Any) -> Any:
    return REGISTRY["modelopt"].entry.model_validate({"backend": "modelopt", "kwargs": kwargs})


def test_nunchaku_variant_is_nvfp4_when_any_target_list_is() -> None:
    assert _nunchaku().variant() == "int4"
    assert _nunchaku(svdq_w4a4=SVDQ).variant() == "int4"
    assert _nunchaku(svdq_w4a4={**SVDQ, "precision": "nvfp4"}).variant() == "nvfp4"
    assert _nunchaku(svdq_w4a4=SVDQ, awq_w4a16=AWQ).variant() == "int4"
    assert _nunchaku(svdq_w4a4=SVDQ, awq_w4a16={**AWQ, "precision": "nvfp4"}).variant() == "nvfp4"
    assert _nunchaku(awq_w4a16=AWQ).variant() == "int4"


def test_nunchaku_saved_block_keeps_only_what_is_set() -> None:
    saved = {"quant_method": "nunchaku_lite", "compute_dtype": "bfloat16", "svdq_w4a4": SVDQ,
             "awq_w4a16": None, "group_size": 64}  # fmt: skip
    assert REGISTRY["nunchaku_lite"].entry.from_saved(saved) == {
        "backend": "nunchaku_lite",
        "kwargs": {"compute_dtype": "bfloat16", "svdq_w4a4": SVDQ},
    }
    both = {"svdq_w4a4": SVDQ, "awq_w4a16": AWQ}
    assert REGISTRY["nunchaku_lite"].entry.from_saved(both)["kwargs"] == both


def test_nunchaku_builds_diffusers_config_with_every_kwarg() -> None:
    diffusers = pytest.importorskip("diffusers")
    entry = _nunchaku(compute_dtype="bfloat16", svdq_w4a4=SVDQ, awq_w4a16=AWQ)
    built = entry.build("diffusers")
    expected = diffusers.NunchakuLiteQuantizationConfig(
        compute_dtype="bfloat16", svdq_w4a4=SVDQ, awq_w4a16=AWQ
    )
    assert type(built) is type(expected) and vars(built) == vars(expected)
    rank_free = {**AWQ, "rank": None}  # given() drops unset fields of the target lists
    assert vars(_nunchaku(awq_w4a16=rank_free).build("diffusers"))["awq_w4a16"] == AWQ


def test_nunchaku_refuses_to_quantize_a_plain_part() -> None:
    with pytest.raises(PlanError) as caught:
        _nunchaku(svdq_w4a4=SVDQ).load_from_file(None, "src", "transformer", None, None)
    assert caught.value.problems == [
        Problem(
            "quant.mapping.transformer",
            "nunchaku_lite reads pre-quantized folders only; it cannot quantize a part",
            "point model.source at a Nunchaku Lite folder and leave quant empty",
        )
    ]


def test_modelopt_variant_and_saved_block() -> None:
    assert _modelopt(quant_type="NVFP4_FP8").variant() == "NVFP4_FP8"
    saved = {"quant_method": "modelopt", "quant_type": "FP8", "weight_only": False,
             "channel_quantize": None, "block_quantize": 128, "forward_loop": None}  # fmt: skip
    assert REGISTRY["modelopt"].entry.from_saved(saved) == {
        "backend": "modelopt",
        "kwargs": {"quant_type": "FP8", "weight_only": False, "block_quantize": 128},
    }


def test_modelopt_library_kwargs_are_diffusers_names() -> None:
    entry = REGISTRY["modelopt"].entry.model_validate(
        {
            "backend": "modelopt",
            "kwargs": {"quant_type": "INT8", "channel_quantize": -1},
            "skip": ["proj_out"],
        }  # fmt: skip
    )
    assert entry.library_kwargs("diffusers", ["norm"]) == {
        "quant_type": "INT8",
        "channel_quantize": -1,
        "modules_to_not_convert": ["norm", "proj_out"],
    }


def test_modelopt_is_unusable_with_diffusers_0_42_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib.metadata import PackageNotFoundError, version

    from qconf.backends import modelopt

    unusable = REGISTRY["modelopt"].unusable
    assert unusable is modelopt._unusable
    installed = version("diffusers")
    if installed.startswith("0.42."):
        assert unusable() == (
            f"not usable with diffusers {installed}: nvidia-modelopt 0.47 raises TypeError "
            "while the config is built, 0.43 loads the weights unquantized and then fails"
        )
    # what the verdict reads is the installed diffusers version (importlib.metadata)
    monkeypatch.setattr(modelopt, "version", lambda name: {"diffusers": "0.43.0"}[name])
    assert unusable() is None
    monkeypatch.setattr(modelopt, "version", lambda name: {"diffusers": "0.42.0"}[name])
    assert unusable().startswith("not usable with diffusers 0.42.0: ")

    def missing(name: str) -> str:
        raise PackageNotFoundError(name)

    monkeypatch.setattr(modelopt, "version", missing)
    assert unusable() is None


@pytest.mark.parametrize(
    ("kwargs", "problems"),
    [
        ({"svdq_w4a4": SVDQ, "awq_w4a16": AWQ}, []),
        ({"svdq_w4a4": {**SVDQ, "precision": "nvfp4", "group_size": 16}}, []),
        ({"svdq_w4a4": {**SVDQ, "group_size": 16}},
         [Problem("kwargs.svdq_w4a4.group_size", "16, but int4 SVDQ needs 64", "set 64")]),
        ({"svdq_w4a4": {**SVDQ, "precision": "nvfp4"}},
         [Problem("kwargs.svdq_w4a4.group_size", "64, but nvfp4 SVDQ needs 16", "set 16")]),
        ({"svdq_w4a4": {k: v for k, v in SVDQ.items() if k != "rank"}},
         [Problem("kwargs.svdq_w4a4.rank", "missing (SVDQ needs one)",
                  "set the rank the folder was made with")]),
        ({"awq_w4a16": {**AWQ, "precision": "nvfp4"}},
         [Problem("kwargs.awq_w4a16.precision", "nvfp4, but AWQ W4A16 is int4 only", "set int4")]),
        ({"svdq_w4a4": {**SVDQ, "targets": []}, "awq_w4a16": {**AWQ, "targets": []}},
         [Problem("kwargs.svdq_w4a4.targets", "is empty", "list the layers it applies to"),
          Problem("kwargs.awq_w4a16.targets", "is empty", "list the layers it applies to")]),
    ],
)  # fmt: skip
def test_nunchaku_rules_are_what_diffusers_refuses(
    kwargs: dict[str, Any], problems: list[Problem]
) -> None:
    """validate says no exactly where diffusers' config class would raise (on the GPU machine,
    after the plan was accepted)."""
    diffusers = pytest.importorskip("diffusers")
    entry = _nunchaku(**kwargs)
    assert entry.check_backend_rules() == problems
    if problems:
        with pytest.raises(ValueError, match="Nunchaku"):
            diffusers.NunchakuLiteQuantizationConfig(**kwargs)
    else:
        diffusers.NunchakuLiteQuantizationConfig(**kwargs)


def test_modelopt_build_reaches_diffusers_config_class() -> None:
    """nvidia-modelopt cannot be installed beside diffusers 0.42 (qconf/backends/modelopt.py):
    diffusers' NVIDIAModelOptConfig then stops at its own import of modelopt, which shows that
    the kwargs were built for the diffusers library and reached the class."""
    pytest.importorskip("diffusers")
    if importlib.util.find_spec("modelopt") is not None:
        pytest.skip("nvidia-modelopt is installed here")
    entry = REGISTRY["modelopt"].entry.model_validate(
        {"backend": "modelopt", "kwargs": {"quant_type": "FP8"}, "skip": ["proj_out"]}
    )
    with pytest.raises(ModuleNotFoundError, match="modelopt"):
        entry.build("diffusers", ["norm"])
