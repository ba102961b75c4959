"""Each registry entry's facts (qconf/backends/*: the `Backend(...)` of every module) checked
against their sources: the pip extra against pyproject.toml, the import and distribution names
against the installed packages, `quant_method` against what the library's own config object
says, the default load dtype against the library's quantizer, the CUDA refusal and the silenced
warnings and loggers against the library's text and modules. Cheap (config objects only), so in
the `make mutate` selection."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import re
import warnings
from pathlib import Path
from typing import Any

import pytest

from qconf.backends import REGISTRY
from qconf.plan.conftree import backend_options

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parent.parent


def _extras() -> dict[str, list[str]]:
    """extra -> the requirements pip installs for it, from qconf's installed metadata (what
    `pip install 'qconf[<extra>]'` really does)."""
    extras: dict[str, list[str]] = {}
    for line in importlib.metadata.requires("qconf") or []:
        found = re.search(r"""; extra == "([^"]+)"$""", line)
        if found:
            extras.setdefault(found.group(1), []).append(line.split(";")[0].strip())
    return extras


EXTRAS = _extras()


def _some_entry(key: str) -> Any:
    """An entry of backend `key`: the first conf/backend option that uses it."""
    spec = REGISTRY[key]
    for data in backend_options().values():
        if data["backend"] == key:
            return spec.entry.model_validate(data)
    data = {"backend": key}
    if "file" in spec.entry.model_fields:  # a pre-quantized file (gguf): never read here
        data["file"] = "part.gguf"
    return spec.entry.model_validate(data)


def _built(key: str, library: str) -> Any:
    entry = _some_entry(key)
    if hasattr(entry, "config_for"):  # a pre-quantized file: its config needs no file
        return entry.config_for(None)
    return entry.build(library)


def _runs_here(spec: Any) -> bool:
    """Not a GPU-lane format (CUDA on every library it has) nor unusable with the installed
    libraries: those are checked without their package (tests/test_gpu_lanes.py)."""
    gpu_lane = set(spec.needs_cuda) == set(spec.params)
    return not gpu_lane and (spec.unusable is None or spec.unusable() is None)


@pytest.mark.parametrize("key", sorted(REGISTRY))
def test_extra_installs_the_distribution_that_provides_the_module(key: str) -> None:
    spec = REGISTRY[key]
    requirements = EXTRAS[spec.extra]
    names = [re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0] for r in requirements]
    assert spec.distribution in names, (spec.extra, requirements)
    if not _runs_here(spec):  # not installed in the dev environment, not in qconf[all]
        assert spec.extra not in EXTRAS["all"][0]
        return
    assert importlib.util.find_spec(spec.module) is not None
    providers = importlib.metadata.packages_distributions()[spec.module.split(".")[0]]
    assert spec.distribution in providers
    assert importlib.metadata.version(spec.distribution)
    assert spec.extra in EXTRAS["all"][0]  # qconf[all] installs every backend


@pytest.mark.parametrize(
    ("key", "library"),
    [(key, library) for key, spec in sorted(REGISTRY.items()) for library in spec.config_class],
)
def test_config_class_and_quant_method_are_the_librarys(key: str, library: str) -> None:
    spec = REGISTRY[key]
    if not _runs_here(spec):  # no option or saved folder to build one from: checked by name
        module_name, _, name = spec.config_path(library).rpartition(".")
        assert hasattr(importlib.import_module(module_name), name)
        return
    built = _built(key, library)
    module_name, _, name = spec.config_path(library).rpartition(".")
    assert type(built) is getattr(importlib.import_module(module_name), name)
    method = built.quant_method
    assert getattr(method, "value", method) == spec.quant_method


@pytest.mark.parametrize("key", sorted(k for k, s in REGISTRY.items() if s.byte_model))
def test_default_load_dtype_is_the_quantizers(key: str) -> None:
    """The load dtype a quantizer forces when the plan gives none (diffusers' bitsandbytes:
    float16, its torchao: bfloat16); the byte models must price the same dtype."""
    from diffusers.quantizers import DiffusersAutoQuantizer
    from transformers.quantizers import AutoHfQuantizer

    # the estimator falls back to float32 (the libraries' own default) where a model names none
    expected = {}
    quantizer = DiffusersAutoQuantizer.from_config(_built(key, "diffusers"))
    forced = quantizer.update_torch_dtype(None)
    if forced not in (None, torch.float32):
        expected["diffusers"] = str(forced).removeprefix("torch.")
    hf_quantizer = AutoHfQuantizer.from_config(_built(key, "transformers"))
    update = getattr(hf_quantizer, "update_dtype", None) or hf_quantizer.update_torch_dtype
    forced = update(None)
    if forced not in (None, torch.float32):
        expected["transformers"] = str(forced).removeprefix("torch.")
    byte_model = REGISTRY[key].byte_model
    assert byte_model is not None
    assert byte_model.default_dtype == expected


def test_cuda_reasons_quote_the_library() -> None:
    from diffusers.quantizers.bitsandbytes import bnb_quantizer

    source = inspect.getsource(bnb_quantizer)
    for key in ("bitsandbytes_4bit", "bitsandbytes_8bit"):
        reasons = REGISTRY[key].needs_cuda
        assert set(reasons) == {"diffusers"}  # transformers quantizes on a CPU
        quoted = re.findall(r"\('(.+)'\)", reasons["diffusers"])
        assert quoted and all(q in source for q in quoted), reasons
    for key in ("torchao", "quanto", "gguf"):
        assert REGISTRY[key].needs_cuda == {}, key


@pytest.mark.parametrize("key", sorted(REGISTRY))
def test_quiet_loggers_and_warnings_name_real_ones(key: str) -> None:
    spec = REGISTRY[key]
    for logger, level in spec.quiet_loggers.items():
        assert importlib.util.find_spec(logger) is not None, logger  # a module's own logger
        assert level > 30, logger  # drops warnings and below only
    for category, pattern in spec.quiet_warnings:
        assert issubclass(category, Warning)
        re.compile(pattern)


def test_quanto_deprecation_warning_is_the_one_diffusers_gives() -> None:
    spec = REGISTRY["quanto"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _built("quanto", "diffusers")
    messages = [(w.category, str(w.message)) for w in caught]
    for category, pattern in spec.quiet_warnings:
        assert any(
            issubclass(found, category) and re.search(pattern, text) for found, text in messages
        ), messages
    assert set(spec.deprecated) == {"diffusers"}
    assert "QuantoConfig" in spec.deprecated["diffusers"]


def test_what_each_library_can_save_and_train() -> None:
    """README: `--save` refuses quanto on transformers parts and GGUF; "Known limits": LoRA
    through bitsandbytes 8-bit layers of a diffusers part gets NaN gradients; every other pair
    saves and trains (tests/test_save.py and tests/test_train.py measure them)."""
    for key, spec in REGISTRY.items():
        for library in spec.config_class:
            if not _runs_here(spec) or not spec.quantizes_on_load:
                # a file, a folder another tool wrote, or a format that cannot run here: qconf
                # neither saves it nor claims LoRA through it
                assert not spec.can_save.get(library) and not spec.trainable.get(library), key
                continue
            saves = not (key == "quanto" and library == "transformers") and key != "gguf"
            assert spec.can_save.get(library, False) is saves, (key, library)
            if key == "gguf":  # not claimed either way: a GGUF part is never trained on
                continue
            trains = not (key == "bitsandbytes_8bit" and library == "diffusers")
            assert spec.trainable.get(library, False) is trains, (key, library)
