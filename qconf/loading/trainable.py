"""Which parts of a plan LoRA can train through: a check made before any weight is read.

A training run needs gradients to flow through every frozen quantized layer between the loss
and the adapters. Whether a backend passes them is a registry capability per library
(`Backend.trainable`, torchao per quant type), each claim exercised for real in test_train.py.
Torch-free."""

from __future__ import annotations

from collections.abc import Iterable

from qconf.errors import PlanError, Problem
from qconf.plan.resolve import ResolvedPlan

# Attention projections: what diffusers' LoRA training scripts target by default.
DEFAULT_TARGETS = {
    "diffusers": ("to_q", "to_k", "to_v", "to_out.0"),
    "transformers": ("q", "k", "v", "o", "q_proj", "k_proj", "v_proj", "out_proj"),
}


def train_problems(resolved: ResolvedPlan, parts: Iterable[str] | None = None) -> list[Problem]:
    """Problems training with `parts` (default: every quantized part) under this plan."""
    names = list(resolved.quantized) if parts is None else list(parts)
    problems = []
    for name in names:
        if name not in resolved.components:
            problems.append(
                Problem(
                    f"train part '{name}'",
                    f"not a weight-bearing part of {resolved.parts.pipeline}",
                    f"train one of: {', '.join(sorted(resolved.components))}",
                )
            )
            continue
        part = resolved.components[name]
        if part is None:
            continue
        reason = part.entry.train_reason(part.library)  # type: ignore[arg-type]
        if reason is not None:
            where = f"quant.mapping.{name}" if resolved.mode == "granular" else "quant.backend"
            problems.append(
                Problem(
                    where,
                    f"cannot train LoRA on '{name}': {reason}",
                    "pick a trainable option (qconf list options, column 'LoRA trains on'), "
                    "e.g. int8wo, nf4 (GPU) or quanto-int8",
                )
            )
    return problems


def check_trainable(resolved: ResolvedPlan, parts: Iterable[str] | None = None) -> None:
    problems = train_problems(resolved, parts)
    if problems:
        raise PlanError(problems)
