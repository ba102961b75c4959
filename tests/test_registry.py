"""The torch-free registry tells the truth about the real libraries' config classes."""

from __future__ import annotations

import inspect

import pytest

from qconf.backends import REGISTRY
from qconf.loading.environment import installed_version


# Library parameters qconf sets from the backend key rather than from user kwargs, and ones it
# does not offer because the library refuses them at load time.
def library_class(dotted: str) -> type:
    import importlib

    module, name = dotted.rsplit(".", 1)
    return getattr(importlib.import_module(module), name)


CASES = [(key, lib) for key, spec in REGISTRY.items() for lib in spec.params]


@pytest.mark.parametrize(("key", "library"), CASES, ids=[f"{k}-{lib}" for k, lib in CASES])
def test_params_match_the_library_config_class(key: str, library: str) -> None:
    spec = REGISTRY[key]
    cls = library_class(spec.config_path(library))
    real = set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
    mapped = set(spec.params[library].values())
    assert mapped <= real, f"qconf maps to parameters {cls} does not have: {mapped - real}"
    # every parameter not offered says why (the line a plan that sets it gets)
    assert real - mapped <= set(spec.withheld), f"{cls} parameters with no reason: {real - mapped}"


def test_every_backend_is_installed_in_the_dev_environment() -> None:
    """...that can run on this machine's kind: the GPU-lane formats (CUDA on every library they
    support) and the ones the installed libraries cannot run are checked without their package."""
    for spec in REGISTRY.values():
        gpu_lane = set(spec.needs_cuda) == set(spec.params)
        unusable = spec.unusable is not None and spec.unusable() is not None
        assert installed_version(spec) or gpu_lane or unusable, spec.key


@pytest.mark.parametrize("key", list(REGISTRY))
def test_kwargs_models_forbid_unknown_keys(key: str) -> None:
    kwargs_model = REGISTRY[key].entry.model_fields["kwargs"].annotation
    assert kwargs_model.model_config.get("extra") == "forbid"
    assert REGISTRY[key].entry.model_config.get("extra") == "forbid"


def test_torchao_quant_types_build_real_torchao_configs() -> None:
    import torch
    from torchao.quantization import IntxWeightOnlyConfig
    from torchao.quantization.granularity import PerGroup

    from qconf.backends.torchao import IntxWeightOnly

    built = IntxWeightOnly(
        name="IntxWeightOnlyConfig", weight_dtype="int4", group_size=32
    ).to_torchao()
    expected = IntxWeightOnlyConfig(weight_dtype=torch.int4, granularity=PerGroup(32))
    assert built == expected
