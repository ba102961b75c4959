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

import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from qconf.errors import BackendUnavailableError, ModelSourceError, PlanError, Problem

__all__ = ["ADAPTER_FILE", "DEFAULT_TARGETS", "add_lora", "attach_adapter", "load_adapter",
           "lora_parameters", "save_adapter"]  # fmt: skip

ADAPTER_FILE = "pytorch_lora_weights.safetensors"  # diffusers' LoRA weight name
# Attention projections: what diffusers' LoRA training scripts target by default.
DEFAULT_TARGETS = {
    "diffusers": ("to_q", "to_k", "to_v", "to_out.0"),
    "transformers": ("q", "k", "v", "o", "q_proj", "k_proj", "v_proj", "out_proj"),
}
_MAX_METADATA = 1 << 20


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

    Goes through peft directly (`add_adapter` + `set_peft_model_state_dict`), which works on
    every trainable backend: diffusers' `load_lora_weights` reads `<name>.weight` keys of the
    base layers first, and quanto's layers keep theirs under other names."""
    _peft()
    from peft import LoraConfig
    from peft.utils import set_peft_model_state_dict
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(directory).expanduser()
    path = path / ADAPTER_FILE if path.is_dir() else path
    if not path.is_file():
        raise ModelSourceError(Problem(str(directory), f"no {ADAPTER_FILE} here",
                                       "give the folder save_adapter wrote"))  # fmt: skip
    try:
        with safe_open(str(path), "pt") as handle:
            metadata = (handle.metadata() or {}).get("lora_adapter_metadata", "")
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ModelSourceError(Problem(str(path), f"unreadable adapter file ({exc})",
                                       "save the adapter again")) from None  # fmt: skip
    configs = _configs_by_part(metadata, path)
    loaded = []
    for part, config in configs.items():
        module = getattr(pipeline, part, None)
        if module is None:
            raise PlanError(Problem(str(path), f"has an adapter for '{part}', which "
                                    f"{type(pipeline).__name__} does not have", ""))  # fmt: skip
        prefix = f"{part}."
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            attach_adapter(module, LoraConfig(**config))
        except (TypeError, ValueError) as exc:
            problem = Problem(str(path), f"adapter config for '{part}' is not a LoRA config "
                              f"({exc})", "save the adapter again")  # fmt: skip
            raise PlanError(problem) from None
        result = set_peft_model_state_dict(module, state)
        unexpected = getattr(result, "unexpected_keys", None) or []
        if unexpected:
            raise PlanError(Problem(str(path), f"{len(unexpected)} adapter weights for '{part}' "
                                    "match no layer", "load it onto the same model"))  # fmt: skip
        loaded.append(part)
    return loaded


def _configs_by_part(metadata: str, path: Path) -> dict[str, dict[str, Any]]:
    """diffusers stores each part's LoraConfig flattened as '<part>.<field>' in one JSON."""
    if not metadata or len(metadata) > _MAX_METADATA:
        raise ModelSourceError(Problem(str(path), "no LoRA config in the file's metadata",
                                       "save it with qconf.train.save_adapter"))  # fmt: skip
    try:
        flat = json.loads(metadata)
    except (json.JSONDecodeError, RecursionError):
        flat = None
    if not isinstance(flat, dict):
        raise ModelSourceError(Problem(str(path), "malformed LoRA metadata", "save it again"))
    configs: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        part, _, field = str(key).partition(".")
        if field:
            configs.setdefault(part, {})[field] = value
    from peft import LoraConfig

    known = set(LoraConfig.__dataclass_fields__)
    return {part: {k: v for k, v in cfg.items() if k in known and k != "peft_type"}
            for part, cfg in configs.items()}  # fmt: skip
