"""LoRA on a quantized base: adapters added the way diffusers documents (`add_adapter` with a
peft `LoraConfig`), saved in diffusers' LoRA format, reloaded onto a pipeline of the same plan.

Sits above the load façade (`qconf.load`, `qconf.load_part`): it never reaches into resolve or
the backends. Needs peft: `pip install 'qconf[train]'`.

    part = qconf.load_part(cfg, "transformer", train=True)   # refuses int8dq & co. first
    qconf.train.add_lora(part, rank=4)
    ... your training loop over qconf.train.lora_parameters(part) ...
    qconf.train.save_adapter(pipeline_class_or_pipeline, "lora/", {"transformer": part})
    qconf.train.load_adapter(fresh_pipeline, "lora/")
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from qconf.errors import BackendUnavailableError, PlanError, Problem
from qconf.loading.trainable import DEFAULT_TARGETS
from qconf.train.adapter_file import (
    ADAPTER_FILE,
    AdapterFile,
    load_tensors,
    read_adapter,
)
from qconf.train.adapter_layers import check_tensors, expected_tensors
from qconf.train.adapter_settings import refuse, shown

__all__ = ["ADAPTER_FILE", "DEFAULT_TARGETS", "add_lora", "attach_adapter", "load_adapter",
           "lora_parameters", "save_adapter"]  # fmt: skip


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise BackendUnavailableError(
            Problem("train", "LoRA needs the package peft, not installed",
                    "pip install 'qconf[train]'")
        ) from None  # fmt: skip
    return peft


def add_lora(
    module: Any,
    *,
    rank: int = 4,
    alpha: float | None = None,
    targets: Sequence[str] | None = None,
    dropout: float = 0.0,
) -> Any:
    """Add a LoRA adapter to a loaded part (diffusers or transformers model) and freeze the
    base. `targets` are module-name suffixes (default: the attention projections present)."""
    peft = _peft()
    if not isinstance(rank, int) or rank < 1:
        raise PlanError(Problem("train.rank", f"{rank!r} is not a positive integer", "use 4..64"))
    names = [name for name, _ in module.named_modules()]
    if targets is None:
        library = "diffusers" if type(module).__module__.startswith("diffusers") else "transformers"
        targets = [t for t in DEFAULT_TARGETS[library] if any(n.endswith(f".{t}") for n in names)]
    missing = [t for t in targets if not any(n == t or n.endswith(f".{t}") for n in names)]
    if missing or not targets:
        raise PlanError(
            Problem("train.targets", f"no module named {missing or list(targets)} in "
                    f"{type(module).__name__}", "name module suffixes such as to_q, to_k")
        )  # fmt: skip
    config = peft.LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else rank,
        lora_dropout=dropout,
        target_modules=list(targets),
        init_lora_weights="gaussian",
    )
    module.requires_grad_(False)
    attach_adapter(module, config)
    return config


def attach_adapter(module: Any, config: Any) -> None:
    """diffusers models: `add_adapter`, as diffusers documents. transformers models: peft's
    `inject_adapter_in_model` (what `add_adapter` does inside, minus transformers' check for a
    peft release newer than any published one)."""
    if type(module).__module__.startswith("diffusers"):
        module.add_adapter(config)
        return
    from peft import inject_adapter_in_model

    inject_adapter_in_model(config, module, adapter_name="default")
    module.peft_config = {"default": config}


def lora_parameters(module: Any) -> list[Any]:
    """The adapter weights: what the optimizer trains (everything else stays frozen)."""
    return [p for name, p in module.named_parameters() if "lora_" in name and p.requires_grad]


def save_adapter(pipeline: Any, directory: str | Path, parts: Mapping[str, Any]) -> Path:
    """Write the adapters of `parts` ({part name: module}) with the pipeline class's own
    `save_lora_weights` (diffusers' format and file name), atomically."""
    _peft()
    from peft.utils import get_peft_model_state_dict

    pipeline_class = pipeline if isinstance(pipeline, type) else type(pipeline)
    loadable = getattr(pipeline_class, "_lora_loadable_modules", [])
    kwargs: dict[str, Any] = {}
    for name, module in parts.items():
        if name not in loadable:
            raise PlanError(
                Problem(f"train part '{name}'", f"{pipeline_class.__name__} loads LoRA only on "
                        f"{', '.join(loadable)}", "train one of those")
            )  # fmt: skip
        if not getattr(module, "peft_config", None):
            raise PlanError(Problem(f"train part '{name}'", "has no adapter", "call add_lora"))
        kwargs[f"{name}_lora_layers"] = get_peft_model_state_dict(module)
        kwargs[f"{name}_lora_adapter_metadata"] = module.peft_config["default"].to_dict()
    target = Path(directory).expanduser()
    target.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target, prefix=".qconf-lora-"))
    try:
        pipeline_class.save_lora_weights(staging, **kwargs)
        os.replace(staging / ADAPTER_FILE, target / ADAPTER_FILE)
    finally:
        for leftover in staging.iterdir():
            leftover.unlink()
        staging.rmdir()
    return target / ADAPTER_FILE


def load_adapter(pipeline: Any, directory: str | Path) -> list[str]:
    """Load adapters saved by `save_adapter` (or diffusers' `save_lora_weights`) onto the parts
    of a pipeline loaded with the same plan; returns the parts that received one.

    The file is not trusted (see qconf.train.adapter_file): it is checked whole, against the
    pipeline's own parts and layers, and its tensors read, before any part is touched; a
    refusal is one PlanError/ModelSourceError line. Goes through peft directly (`add_adapter` +
    `set_peft_model_state_dict`), which works on every trainable backend: diffusers'
    `load_lora_weights` reads `<name>.weight` keys of the base layers first, and quanto's
    layers keep theirs under other names."""
    _peft()
    adapter = read_adapter(directory)
    parts = _weight_bearing_parts(pipeline)
    modules = {part: _part_for(adapter, parts, part, pipeline) for part in adapter.settings}
    stray = sorted({k.partition(".")[0] for k in adapter.tensors} - modules.keys())
    if stray:
        raise refuse(str(adapter.path), f"has tensors for '{stray[0]}' but no LoRA config for it")
    for part, module in modules.items():
        expected = expected_tensors(module, adapter.settings[part], f"{adapter.path} ({part})")
        check_tensors(expected, adapter.tensors_of(part), adapter.path, part)
    tensors = load_tensors(adapter)
    for part, module in modules.items():
        prefix = f"{part}."
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        _attach_checked(module, adapter.settings[part], state, f"{adapter.path} ({part})")
    return list(modules)


def _weight_bearing_parts(pipeline: Any) -> dict[str, Any]:
    """{name: module} of the pipeline's own parts that hold weights: the only names an adapter
    file may use (never a getattr of a name from the file)."""
    from torch import nn

    try:
        components = dict(pipeline.components)
    except (AttributeError, ValueError, TypeError):  # not a DiffusionPipeline, or a custom one
        components = {}
    return {name: part for name, part in components.items() if isinstance(part, nn.Module)}


def _part_for(adapter: AdapterFile, parts: dict[str, Any], part: str, pipeline: Any) -> Any:
    where = f"{adapter.path} ({part})"
    if part not in parts:
        raise refuse(where, f"is not a weight-bearing part of {type(pipeline).__name__} "
                     f"(parts: {', '.join(parts) or 'none'})", "load it onto the pipeline it "
                     "was made for")  # fmt: skip
    module = parts[part]
    if getattr(module, "peft_config", None):
        raise refuse(where, "the pipeline's part already has a LoRA adapter",
                     "load the adapter onto a freshly loaded pipeline")  # fmt: skip
    return module


def _attach_checked(
    module: Any, settings: dict[str, Any], state: dict[str, Any], where: str
) -> None:
    """Add the adapter and load its weights. Everything was checked, so a failure here is peft
    disagreeing with qconf's reading of the file: still one line, never a traceback."""
    from peft import LoraConfig
    from peft.utils import set_peft_model_state_dict

    try:
        attach_adapter(module, LoraConfig(**settings))
        result = set_peft_model_state_dict(module, state)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise refuse(where, f"peft could not load the adapter ({shown(str(exc), 120)})",
                     "reload the pipeline; save the adapter again") from None  # fmt: skip
    unexpected = getattr(result, "unexpected_keys", None) or []
    if unexpected:
        raise refuse(where, f"{len(unexpected)} adapter weights match no layer",
                     "reload the pipeline; load the adapter onto the same model")  # fmt: skip
