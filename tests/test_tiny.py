"""The built-in tiny pipelines: right class, backend-friendly shapes, deterministic, and the parts
`qconf validate` assumes for them are the parts they really have."""

from __future__ import annotations

from pathlib import Path

import pytest

from qconf.source.model import open_source
from qconf.source.parts import TINY_PIPELINES

NAMES = sorted(TINY_PIPELINES)


@pytest.mark.parametrize("name", NAMES)
def test_tiny_pipeline_class_and_shapes(name: str) -> None:
    import torch

    from qconf.source.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline(name)
    assert type(pipe).__name__ == TINY_PIPELINES[name]
    # bnb 4-bit on CPU and torchao int4 (group 32) need these; quanto groups weights too.
    misfits = [
        f"{part}.{module_name} ({module.in_features}->{module.out_features})"
        for part, component in pipe.components.items()
        if isinstance(component, torch.nn.Module)
        for module_name, module in component.named_modules()
        if isinstance(module, torch.nn.Linear)
        and (module.in_features % 64 or module.out_features % 32)
    ]
    assert not misfits


@pytest.mark.parametrize("name", NAMES)
def test_tiny_pipeline_is_deterministic(name: str) -> None:
    import torch

    from qconf.source.tiny import build_tiny_pipeline

    first, second = build_tiny_pipeline(name), build_tiny_pipeline(name)
    for part, component in first.components.items():
        if isinstance(component, torch.nn.Module):
            theirs = getattr(second, part).state_dict()
            for key, value in component.state_dict().items():
                assert torch.equal(value, theirs[key]), f"{part}.{key}"


@pytest.mark.parametrize("name", NAMES)
def test_validation_parts_are_the_saved_parts(name: str, qconf_cache: Path) -> None:
    from qconf.source.tiny import tiny_pipeline_path

    assumed_source, problems = open_source(name, None)
    saved_source, saved_problems = open_source(str(tiny_pipeline_path(name)), None)
    assert assumed_source is not None and saved_source is not None, problems + saved_problems
    assumed, saved = assumed_source.parts, saved_source.parts
    assert saved.pipeline == assumed.pipeline == TINY_PIPELINES[name]
    assert {n: p.library for n, p in saved.weighted.items()} == {
        n: p.library for n, p in assumed.weighted.items()
    }
