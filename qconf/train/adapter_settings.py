"""One part's LoraConfig from an adapter file's metadata, which is not trusted (see
qconf.train.adapter_file): each setting qconf passes to peft is checked against bounds; every
other LoraConfig field must hold peft's default. Names in it are plain module names, never
patterns. Torch-free."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path
from typing import Any

from qconf.errors import PlanError, Problem

MAX_TARGETS = 4096  # diffusers lists one full module name per layer when it infers targets
MAX_PATTERNS = 512  # rank_pattern / alpha_pattern entries (peft tries each, per layer, by regex)
MAX_NAME = 256  # characters in a module name; tensor names: twice that
MAX_RANK = 1024  # published LoRAs use ranks 4..256
MAX_ALPHA = 4 * MAX_RANK  # alpha is usually rank or 2 x rank

# A module name as named_modules() spells it. No regex metacharacter but '.', so peft's own
# matching (suffix, or a regex built around the name) stays linear: never a file's regex.
_MODULE = re.compile(r"[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)*")
_SINGLE = re.compile(r"[A-Za-z0-9_]+")  # a string target: peft fullmatches it, i.e. equality


# LoraConfig fields qconf passes on, each checked below. Every other field must keep peft's
# default: modules_to_save would overwrite whole modules, bias="all" base biases, megatron_core
# names a module peft imports, init_lora_weights="pissa" & co. rewrite base weights, DoRA and
# layer_replication allocate beyond the file's tensors.
USED = ("r", "lora_alpha", "lora_dropout", "target_modules", "exclude_modules", "rank_pattern",
        "alpha_pattern", "use_rslora", "init_lora_weights")  # fmt: skip
# Written by peft/diffusers for information; read by no one here.
_IGNORED = ("task_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision",
            "inference_mode")  # fmt: skip


def shown(value: Any, limit: int = 60) -> str:
    """A value from the file for one message line: escaped (no newline or control character
    reaches the terminal) and cut short."""
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_FIX = "use a plain LoRA adapter, as qconf.train.save_adapter writes"


def refuse(where: str, what: str, fix: str = _FIX) -> PlanError:
    return PlanError(Problem(where, what, fix))


def lora_settings(fields: dict[str, Any], path: Path, part: str) -> dict[str, Any]:
    """LoraConfig keyword arguments from one part's metadata fields: the USED fields checked
    (r and lora_alpha filled in from peft's defaults when absent), informational ones dropped,
    any other field refused unless it holds peft's default."""
    defaults = _lora_defaults()
    settings: dict[str, Any] = {"r": defaults["r"], "lora_alpha": defaults["lora_alpha"]}
    for field, value in fields.items():
        here = f"{path} ({part}.{field})"
        if field in USED:
            settings[field] = _CHECKS[field](value, here)
        elif field == "peft_type":
            if value != "LORA":
                raise refuse(here, f"is {shown(value)}: not a LoRA adapter")
        elif field not in _IGNORED and not _is_default(value, defaults.get(field, _ABSENT)):
            raise refuse(here, f"is {shown(value)}; qconf loads plain LoRA adapters, whose "
                         f"settings are {', '.join(USED)}")  # fmt: skip
    if "target_modules" not in settings:
        raise refuse(f"{path} ({part})", "has no target_modules")
    return settings


_ABSENT = object()


def _lora_defaults() -> dict[str, Any]:
    from peft import LoraConfig

    defaults = {}
    for field in dataclasses.fields(LoraConfig):
        if field.default is not dataclasses.MISSING:
            defaults[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            defaults[field.name] = field.default_factory()
    return defaults


def _is_default(value: Any, default: Any) -> bool:
    """The same type and value as peft's default (1 is not True, a list is not a tuple). A
    field this peft does not know (a newer or older peft wrote it) passes only when unset."""
    if default is _ABSENT:
        return value is None or value is False or value in ("", [], {})
    return type(value) is type(default) and value == default


def _number(value: Any, where: str, what: str) -> float:
    # An int is finite (and math.isfinite overflows on one of 400 digits): compared as it is.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, float) or not math.isfinite(value):
        raise refuse(where, f"is {shown(value)}, not a finite number ({what})")
    return value


def _rank(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_RANK:
        raise refuse(where, f"is {shown(value)}; a LoRA rank is an integer 1..{MAX_RANK}")
    return value


def _alpha(value: Any, where: str) -> float:
    alpha = _number(value, where, f"lora_alpha is in (0, {MAX_ALPHA}]")
    if not 0 < alpha <= MAX_ALPHA:
        raise refuse(where, f"is {shown(value)}; lora_alpha is in (0, {MAX_ALPHA}]")
    return alpha


def _dropout(value: Any, where: str) -> float:
    dropout = _number(value, where, "a dropout probability is in [0, 1)")
    if not 0 <= dropout < 1:
        raise refuse(where, f"is {shown(value)}; a dropout probability is in [0, 1)")
    return dropout


def _names(value: Any, where: str) -> str | list[str] | None:
    """target_modules / exclude_modules: a list of module names (peft: a name or a dotted
    suffix of one), or one name without dots (peft fullmatches a string: equality)."""
    if value is None or (isinstance(value, str) and _SINGLE.fullmatch(value)):
        return value
    if not isinstance(value, list) or len(value) > MAX_TARGETS:
        raise refuse(where, f"is {shown(value)}; qconf reads a list of at most {MAX_TARGETS} "
                     "module names, never a pattern")  # fmt: skip
    for name in value:
        if not isinstance(name, str) or len(name) > MAX_NAME or not _MODULE.fullmatch(name):
            raise refuse(where, f"holds {shown(name)}, not a module name (such as to_q or "
                         "attn.to_out.0); patterns are not read")  # fmt: skip
    return value


def _targets(value: Any, where: str) -> str | list[str]:
    names = _names(value, where)
    if not names:
        raise refuse(where, "names no module")
    return names


def _pattern(check: Any) -> Any:
    def checked(value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict) or len(value) > MAX_PATTERNS:
            raise refuse(where, f"is {shown(value)}; qconf reads a mapping of at most "
                         f"{MAX_PATTERNS} module names to values")  # fmt: skip
        for name, item in value.items():
            if len(name) > MAX_NAME or not _MODULE.fullmatch(name):
                raise refuse(where, f"key {shown(name)} is not a module name; patterns are "
                             "not read")  # fmt: skip
            check(item, where)
        return value

    return checked


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise refuse(where, f"is {shown(value)}, not true or false")
    return value


def _init(value: Any, where: str) -> bool | str:
    # The file's weights replace the init, but pissa, olora, loftq, eva, corda... rewrite the
    # base weights or run SVDs over them: never from a file.
    if not isinstance(value, bool) and value != "gaussian":
        raise refuse(where, f'is {shown(value)}; qconf reads true, false or "gaussian"')
    return value


_CHECKS = {
    "r": _rank,
    "lora_alpha": _alpha,
    "lora_dropout": _dropout,
    "target_modules": _targets,
    "exclude_modules": _names,
    "rank_pattern": _pattern(_rank),
    "alpha_pattern": _pattern(_alpha),
    "use_rslora": _flag,
    "init_lora_weights": _init,
}
