"""Bounds on the work untrusted or mistyped input may cause: nesting depth of data (checked
iteratively, before anything walks it recursively) and of override values (Hydra's parser
recurses once per bracket)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from qconf.errors import PlanError, Problem

MAX_JSON_DEPTH = 32  # model files: torchao's serialized configs nest ~8 deep
MAX_PLAN_DEPTH = 32  # a plan is ~6 deep (quant.mapping.<part>.kwargs.quant_type.<field>)
MAX_OVERRIDE_DEPTH = 32


def depth(value: Any, stop: int = 1000) -> int:
    """Nesting depth of plain data, iteratively (no recursion limit to hit); counting ends past
    `stop` (a structure that contains itself is infinitely deep)."""
    deepest, stack = 0, [(value, 1)]
    while stack and deepest <= stop:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if isinstance(item, dict):
            stack += [(v, level + 1) for v in item.values()]
        elif isinstance(item, list):
            stack += [(v, level + 1) for v in item]
    return deepest


def check_override_depth(overrides: Sequence[str]) -> None:
    """Hydra's override parser recurses once per bracket: refuse deep values before parsing."""
    problems = []
    for text in overrides:
        level = deepest = 0
        for char in text:
            level += char in "[{"
            level -= char in "]}"
            deepest = max(deepest, level)
        if deepest > MAX_OVERRIDE_DEPTH:
            shown = text if len(text) <= 40 else text[:37] + "..."
            problems.append(
                Problem(
                    f"override '{shown}'",
                    f"value nested {deepest} levels deep (qconf reads up to {MAX_OVERRIDE_DEPTH})",
                    "a plan is a few levels deep: check the brackets",
                )
            )
    if problems:
        raise PlanError(problems)
