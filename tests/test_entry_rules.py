"""The shared entry rules of qconf/backends/base.py, per backend, without torch: which library a
backend has no config class for, which kwargs a library's config class does not take, skip vs
the library's own skip kwarg, the words messages use for an entry, and saved module-name lists."""

from __future__ import annotations

from typing import Any

import pytest

from qconf.backends import REGISTRY
from qconf.backends.base import saved_names
from qconf.errors import Problem


def _entry(data: dict[str, Any]) -> Any:
    return REGISTRY[data["backend"]].entry.model_validate(data)


def test_a_backend_without_a_config_class_for_the_library() -> None:
    gguf = _entry({"backend": "gguf", "file": "part.gguf"})
    assert gguf.check("transformers") == [
        Problem(
            "backend",
            "gguf has no transformers config class (it supports diffusers parts)",
            "pick another backend for this part",
        )
    ]
    assert gguf.check("diffusers") == []


def test_kwargs_the_librarys_config_class_does_not_take() -> None:
    torchao = _entry({"backend": "torchao", "kwargs": {
        "quant_type": {"name": "Int8WeightOnlyConfig"},
        "untie_embedding_weights": True, "include_input_output_embeddings": True}})  # fmt: skip
    assert torchao.check("transformers") == []
    # transformers' TorchAoConfig has the embedding flags, diffusers' does not
    fix = "diffusers accepts: modules_to_not_convert, quant_type"
    assert torchao.check("diffusers") == [
        Problem("kwargs.include_input_output_embeddings",
                "not accepted by diffusers's TorchAoConfig", fix),
        Problem("kwargs.untie_embedding_weights", "not accepted by diffusers's TorchAoConfig", fix),
    ]  # fmt: skip


def test_skip_and_the_librarys_own_skip_kwarg() -> None:
    both = _entry({"backend": "quanto", "kwargs": {"modules_to_not_convert": ["a"]},
                   "skip": ["b"]})  # fmt: skip
    assert both.check_consistency() == [
        Problem(
            "kwargs.modules_to_not_convert",
            "set together with skip; it would replace the library's default skips",
            "list the modules under skip only",
        )
    ]
    bnb = _entry({"backend": "bitsandbytes_8bit", "kwargs": {"llm_int8_skip_modules": ["a"]},
                  "skip": ["b"]})  # fmt: skip
    assert [p.where for p in bnb.check_consistency()] == ["kwargs.llm_int8_skip_modules"]
    gguf = _entry({"backend": "gguf", "file": "part.gguf", "skip": ["b"]})
    assert Problem("skip", "gguf has no skip list", "remove it") in gguf.check_consistency()
    assert _entry({"backend": "quanto", "skip": ["b"]}).check_consistency() == []
    assert (
        _entry(
            {"backend": "quanto", "kwargs": {"modules_to_not_convert": ["a"]}}
        ).check_consistency()
        == []
    )  # noqa: E501


def test_entry_words_for_messages() -> None:
    quanto = _entry({"backend": "quanto", "kwargs": {"weights_dtype": "int4"}})
    assert quanto.describe() == "quanto int4"
    nf4 = _entry({"backend": "bitsandbytes_4bit"})
    assert nf4.describe() == "bitsandbytes_4bit"  # one variant: no trailing space
    int8 = _entry({"backend": "bitsandbytes_8bit"})
    assert int8.train_reason("transformers") is None
    assert int8.train_reason("diffusers") == (
        "bitsandbytes_8bit on diffusers parts does not pass gradients in qconf's tests"
    )
    assert int8.cuda_reason("transformers") is None
    assert int8.cuda_reason("diffusers") == REGISTRY["bitsandbytes_8bit"].needs_cuda["diffusers"]
    assert int8.load_peak_ratio() == REGISTRY["bitsandbytes_8bit"].load_peak_ratio
    assert int8.save_problem() is None and int8.file_bytes(2) is None


def test_library_kwargs_put_skip_after_the_library_defaults() -> None:
    entry = _entry({"backend": "quanto", "skip": ["b", "a", "b"]})
    # transformers spells quanto's weight dtype `weights` (its default int8 is always passed)
    assert entry.library_kwargs("transformers", ["a", "z"]) == {
        "weights": "int8",
        "modules_to_not_convert": ["a", "z", "b"],
    }
    assert _entry({"backend": "quanto"}).library_kwargs("diffusers", ["a"]) == {
        "weights_dtype": "int8"
    }


def test_saved_names_keep_anything_but_a_list_for_validation() -> None:
    assert saved_names(("a", "b")) == ["a", "b"]
    assert saved_names(["a"]) == ["a"]
    assert saved_names("abc") == "abc"  # not three names: validation reports the string
    assert saved_names(None) is None


def test_known_failure_rows_match_variant_class_device_and_dtype() -> None:
    """The quanto rows (qconf/backends/quanto.py, measured on CPU): int8 on AutoencoderKL in
    bfloat16, int4 on WanTransformer3DModel in bfloat16 and float16."""
    from qconf.backends.capabilities import known_failure, known_failures_ignored, works_in

    int8 = _entry({"backend": "quanto", "kwargs": {"weights_dtype": "int8"}})
    int4 = _entry({"backend": "quanto", "kwargs": {"weights_dtype": "int4"}})
    row = known_failure(int8, "AutoencoderKL", "cpu", "bfloat16")
    assert row is not None and row.variant == "int8" and row.part_class == "AutoencoderKL"
    assert known_failure(int8, "AutoencoderKL", "cpu", "float16") is None
    assert known_failure(int8, "AutoencoderKL", "cuda", "bfloat16") is None
    assert known_failure(int8, "FluxTransformer2DModel", "cpu", "bfloat16") is None
    assert known_failure(int4, "AutoencoderKL", "cpu", "bfloat16") is None
    assert known_failure(int8, "AutoencoderKL", "cpu", None) is None  # nothing measured
    wan = known_failure(int4, "WanTransformer3DModel", "cpu", "float16")
    assert wan is not None and works_in(wan) == ["float32"]
    assert works_in(row) == ["float16", "float32"]
    with known_failures_ignored():
        assert known_failure(int8, "AutoencoderKL", "cpu", "bfloat16") is None
    assert known_failure(int8, "AutoencoderKL", "cpu", "bfloat16") == row  # restored after


def test_a_library_the_backend_never_trained_on_is_refused_for_training() -> None:
    # gguf claims nothing trainable: no library may default to "trains"
    gguf = _entry({"backend": "gguf", "file": "part.gguf"})
    assert REGISTRY["gguf"].trainable == {}
    assert gguf.train_reason("diffusers") == (
        "gguf on diffusers parts does not pass gradients in qconf's tests"
    )


def test_a_row_on_a_device_without_measured_dtypes_works_in_none() -> None:
    from qconf.backends.base import KnownFailure
    from qconf.backends.capabilities import MEASURED_DTYPES, works_in

    assert "cuda" not in MEASURED_DTYPES
    assert works_in(KnownFailure("int8", "AutoencoderKL", "cuda", ("bfloat16",), "x")) == []


def test_library_environment_is_set_as_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """sdnq's import-time settings (qconf/backends/sdnq.py environment()): set where unset, a
    user's own value kept."""
    import os

    from qconf.backends import set_library_environment

    monkeypatch.delenv("SDNQ_INFERENCE_CONTEXT", raising=False)
    set_library_environment()
    assert os.environ["SDNQ_INFERENCE_CONTEXT"] == "enable_grad"
    monkeypatch.setenv("SDNQ_INFERENCE_CONTEXT", "no_grad")
    set_library_environment()
    assert os.environ["SDNQ_INFERENCE_CONTEXT"] == "no_grad"


def test_a_saved_block_is_read_by_the_backend_its_method_names() -> None:
    from qconf.backends import entry_from_saved

    assert entry_from_saved({"quant_method": "Quanto", "weights": "int4"}) == {
        "backend": "quanto", "kwargs": {"weights_dtype": "int4"}
    }  # fmt: skip
    assert entry_from_saved({"quant_method": "gguf_v2"}) is None
    assert entry_from_saved({"weights": "int4"}) is None
    assert entry_from_saved({"quant_method": ["quanto"]}) is None
    assert entry_from_saved({"quant_method": ""}) is None  # bfl's key is "bfl", none is ""
