"""What LoRA training adds on top of the frozen quantized base, from config files alone.

For each trained part: the adapter's parameters (rank x (in + out) for every Linear whose name
ends with a target), and their bytes four times over — the weights, their gradients and AdamW's
two moment buffers — in the dtype peft gives them (the part's load dtype: diffusers' and
transformers' `add_adapter` keep the base layer's floating dtype). Activations saved for the
backward pass come on top and are not estimated (they depend on resolution and batch)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qconf.errors import PlanError, Problem

COPIES = {"weights": 1, "gradients": 1, "adamw_states": 2}


@dataclass(frozen=True)
class LoraEstimate:
    part: str
    rank: int
    layers: int  # Linear layers that get an adapter
    params: int
    dtype_bytes: int

    @property
    def bytes(self) -> dict[str, int]:
        return {what: n * self.params * self.dtype_bytes for what, n in COPIES.items()}

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes.values())

    def to_json(self) -> dict[str, Any]:
        return {"rank": self.rank, "layers": self.layers, "lora_params": self.params,
                **{f"{k}_bytes": v for k, v in self.bytes.items()},
                "total_bytes": self.total_bytes}  # fmt: skip


def lora_estimate(
    plan: Any,
    parts: Sequence[str],
    *,
    rank: int = 4,
    targets: Sequence[str] | None = None,
    folder: str | Path | None = None,
) -> dict[str, LoraEstimate]:
    """LoRA on `parts` of the plan's model (see module docstring)."""
    import torch

    from qconf.estimate.sources import estimate_source, meta_model
    from qconf.loading.trainable import DEFAULT_TARGETS
    from qconf.source.limits import check_folder, pipeline_budget

    resolved = plan.resolve()
    root, found = estimate_source(plan, folder)
    check_folder(root)  # counts, sizes and header bytes bounded before anything is built
    dtype = getattr(torch, resolved.torch_dtype or "float32")
    result = {}
    with pipeline_budget():  # what all trained parts together may build
        for name in parts:
            part = found.weighted.get(name)
            if part is None:
                known = ", ".join(found.weighted)
                raise PlanError(Problem(f"--train {name}", f"not a weight-bearing part of "
                                        f"{found.pipeline}", f"use one of: {known}"))  # fmt: skip
            _, module = meta_model(root, name, part.library, part.class_name, dtype)
            suffixes = tuple(targets or DEFAULT_TARGETS[part.library])
            layers = [m for n, m in module.named_modules() if isinstance(m, torch.nn.Linear)
                      and any(n == s or n.endswith(f".{s}") for s in suffixes)]  # fmt: skip
            params = sum(rank * (m.in_features + m.out_features) for m in layers)
            result[name] = LoraEstimate(name, rank, len(layers), params, dtype.itemsize)
    return result
