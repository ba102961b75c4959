"""qconf: declarative, composable, validated quantization plans for diffusers pipelines.

The compose/validate path is torch-free; torch, diffusers and backends load only in resolve/load.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qconf.errors import (
    BackendUnavailableError,
    ModelSourceError,
    PlanError,
    Problem,
    QconfError,
)
from qconf.plan.compose import app_command_line, check_app_command_line, compose
from qconf.plan.intake import intake
from qconf.plan.safety import safe_instantiate
from qconf.plan.schema import Plan, validate
from qconf.quiet import quiet

if TYPE_CHECKING:
    from qconf.loading.loader import Loaded

__all__ = [
    "BackendUnavailableError",
    "Loaded",
    "ModelSourceError",
    "Plan",
    "PlanError",
    "Problem",
    "QconfError",
    "app_command_line",
    "check_app_command_line",
    "check_environment",
    "compose",
    "intake",
    "load",
    "load_part",
    "load_pipeline",
    "part_config",
    "quiet",
    "safe_instantiate",
    "save",
    "validate",
]


def load_pipeline(cfg: Any = None, **kwargs: Any) -> Any:
    """Validate `cfg`, check the environment, load the quantized pipeline (see qconf.load)."""
    from qconf.loading.loader import load_pipeline as _load

    return _load(cfg, **kwargs)


def load(cfg: Any = None, **kwargs: Any) -> Loaded:
    """Like load_pipeline, also returning the per-part report and the resolved plan."""
    from qconf.loading.loader import load as _load

    return _load(cfg, **kwargs)


def load_part(cfg: Any, part: str, *, train: bool = False) -> Any:
    """Load one part under the plan, with every check the pipeline load makes; `train=True`
    also refuses a backend that cannot pass gradients (see qconf.loading.trainable)."""
    from qconf.loading.part_loader import load_part as _load_part

    return _load_part(cfg, part, train=train)


def part_config(cfg: Any, part: str) -> Any:
    """The diffusers/transformers quantization config object the plan gives `part`."""
    from qconf.loading.part_loader import part_config as _part_config

    return _part_config(cfg, part)


def save(
    loaded: Loaded, target: Any, *, force: bool = False, max_shard_size: str | int | None = None
) -> Any:
    """Write a loaded pipeline + qconf.yaml to `target` atomically; reload with model.source.
    `max_shard_size` (e.g. "5GB") splits large parts into several safetensors files."""
    from qconf.loading.saving import save_pipeline

    return save_pipeline(loaded, target, force=force, max_shard_size=max_shard_size)


def check_environment(plan: Plan) -> None:
    """Raise BackendUnavailableError if a backend of `plan` is missing or cannot run here."""
    from qconf.loading.environment import check_environment as _check

    _check(plan.resolve())
