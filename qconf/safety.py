"""Which `_target_`s a config may name. qconf itself never instantiates a plan; a user's Hydra
app that does should go through `safe_instantiate`, so that a config file cannot make it call
`os.system` or any other function outside the allow-list."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from qconf.errors import PlanError, Problem

ALLOWED_TARGET_PREFIXES = ("qconf.", "diffusers.", "transformers.", "torchao.quantization.")


def target_problems(data: Any, path: str = "") -> list[Problem]:
    return [
        Problem(
            f"{where}._target_" if where else "_target_",
            f"'{target}' is not allowed",
            "qconf instantiates only "
            + ", ".join(p.rstrip(".") for p in ALLOWED_TARGET_PREFIXES)
            + " objects",
        )
        for where, target in _targets(data, path)
        if not (isinstance(target, str) and target.startswith(ALLOWED_TARGET_PREFIXES))
    ]


def _targets(data: Any, path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(data, dict):
        for key, value in data.items():
            if key == "_target_":
                yield path, value
            else:
                yield from _targets(value, f"{path}.{key}" if path else str(key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from _targets(value, f"{path}[{i}]")


def safe_instantiate(cfg: Any, **kwargs: Any) -> Any:
    """hydra.utils.instantiate, after checking every `_target_` against the allow-list."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    data = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg
    problems = target_problems(data)
    if problems:
        raise PlanError(problems)
    return instantiate(data, **{"_convert_": "all", **kwargs})
