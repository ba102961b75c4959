"""The one front door: whatever a caller gives (typed overrides, a plan file, a config dir, a
composed DictConfig, a dict, `model=`/`quant=` keywords, a Plan) becomes one checked Plan whose
model source was resolved and checked once (`plan.source`). Every command and API entry takes
its plan here; nothing else composes a plan or opens a model source.

Trust: typed overrides and Python arguments are the caller's own; a plan file is a file and is
always kept apart from them (composed before them, never allowed to turn on what only typing
may, see qconf.plan.compose). Values from the environment never enter a plan, whatever the
container (a DictConfig node inside a plain dict included)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qconf.errors import PlanError, Problem
from qconf.plan.checks import source_problems
from qconf.plan.schema import Plan, validate
from qconf.plan.trust import COMPOSED_FLAG, app_trust_problems
from qconf.source.model import ModelSource, open_source
from qconf.trust.userpath import user_path

_FIELDS = ("model", "quant", "run")


def intake(
    cfg: Any = None,
    *,
    overrides: Sequence[str] = (),
    plan_file: str | Path | None = None,
    config_dir: str | Path | None = None,
    app_config: bool = False,
    **fields: Any,
) -> Plan:
    """The checked Plan of what the caller gave:
    - `cfg`: a Plan (returned as it is), a composed DictConfig or a plain dict;
    - or `model=`, `quant=`, `run=` nodes (a Hydra `_target_` call passes these);
    - or nothing: composed from qconf's tree, `config_dir`, `plan_file` and `overrides`.
    `app_config`: `cfg` may be a user's whole Hydra app config; its plan sections are taken
    and its other keys left to the app (see `plan_sections`)."""
    fields = {key: value for key, value in fields.items() if value is not None}
    if app_config and cfg is not None and not isinstance(cfg, Plan):
        cfg = plan_sections(cfg)
    if isinstance(cfg, Plan):
        if overrides or plan_file is not None or fields:
            raise PlanError(Problem("plan", "a Plan was given together with overrides",
                                    "compose them first, or pass one of them"))  # fmt: skip
        return cfg
    unknown = sorted(set(fields) - set(_FIELDS))
    if unknown:
        raise PlanError(
            Problem(
                ", ".join(unknown),
                "not a plan section",
                f"pass {', '.join(_FIELDS)} (or a composed cfg)",
            )
        )
    if cfg is None and fields:
        if "model" not in fields:
            raise PlanError(Problem("model", "missing", "pass model={'source': ...}"))
        cfg = fields
    elif cfg is None:
        cfg = compose_plan(overrides, plan_file=plan_file, config_dir=config_dir)
    elif overrides or plan_file is not None or fields:
        raise PlanError(Problem("plan", "a composed config was given together with overrides",
                                "compose the overrides into it, or pass one of them"))  # fmt: skip
    plan = validate(cfg, config_dir=config_dir)
    if _holds_app_config(cfg):
        problems = app_trust_problems({"model": plan.model.model_dump()}, "the app's config files")
        if problems:
            raise PlanError(problems)
    return plan


def plan_sections(cfg: Any) -> Any:
    """The plan sections (model, quant, run) of a bigger app config, e.g. a Hydra app whose
    config also holds `out:`, `mode:` or `models:`. A key that is a section misspelt (`qaunt`,
    `modle`, `Quant`, `quamt`) is refused rather than ignored, so a typo cannot load an
    unquantized pipeline."""
    from collections.abc import Mapping

    if not isinstance(cfg, Mapping):
        return cfg  # the schema says what is wrong with it
    keys = [str(key) for key in cfg]
    others = [key for key in keys if key not in _FIELDS]
    if not others:
        return cfg
    problems = [
        Problem(
            key,
            f"looks like the plan section '{close[0]}' misspelt",
            f"rename it to {close[0]}, or pass the plan yourself: "
            "qconf.load_pipeline(model=cfg.model, quant=cfg.quant)",
        )  # fmt: skip
        for key in others
        if (close := [section for section in _FIELDS if _misspelt(key, section)])
    ]
    if problems:
        raise PlanError(problems)
    if "model" not in keys:
        raise PlanError(
            Problem(
                "model",
                f"missing from the app config (it has {', '.join(sorted(keys)[:8])})",
                "give the plan's node: qconf.load_pipeline(cfg.<node>), or "
                "qconf.load_pipeline(model=..., quant=...)",
            )
        )
    return {key: cfg[key] for key in _FIELDS if key in keys}


def _misspelt(key: str, section: str) -> bool:
    """`key` is `section` with letters swapped (`qaunt`), in other case (`Model`) or with one
    letter wrong (`quamt`); a word of its own (`mode`, `models`, `runs`) is not."""
    key = key.lower()
    if key == section:
        return True  # only the case differs
    if len(key) != len(section) or len(key) < 4:
        return False
    wrong = sum(a != b for a, b in zip(key, section, strict=True))
    return sorted(key) == sorted(section) or wrong == 1


def _holds_app_config(value: Any, depth: int = 0) -> bool:
    """Whether `value` holds a config node a user's Hydra app composed (not qconf.compose,
    which checks its trust flags itself): see qconf.plan.compose.app_trust_problems."""
    from collections.abc import Mapping

    if type(value).__module__.startswith("omegaconf"):
        return not value._get_flag(COMPOSED_FLAG)
    if depth > 8:
        return False
    if isinstance(value, Mapping):
        return any(_holds_app_config(v, depth + 1) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_holds_app_config(v, depth + 1) for v in value)
    return False


def compose_plan(
    overrides: Sequence[str] = (),
    *,
    plan_file: str | Path | None = None,
    config_dir: str | Path | None = None,
    config_name: str | None = None,
) -> Any:
    """The composed DictConfig `intake` validates (for callers that need the mapping as the files
    wrote it, before the schema reads it): a plan file, if any, composed before `overrides`
    and never trusted like them."""
    from qconf.plan.compose import CONFIG_NAME, compose

    return compose(
        overrides,
        config_dir=config_dir,
        config_name=config_name or CONFIG_NAME,
        plan_file=plan_file,
    )


def take_folder(plan: Plan, folder: str | Path, where: str = "--folder") -> ModelSource:
    """Another folder standing in for the plan's model source (`estimate --folder`), opened
    and checked exactly as validation checks `model.source` (custom code, auto_map, pickles,
    special files, sizes), under the plan's own trust flags."""
    path = user_path(folder, where)
    if not path.is_dir():
        raise PlanError(Problem(where, f"'{folder}' is not a folder", "give a pipeline folder"))
    # absolute: a folder named like a built-in (`tiny-flux`) or a hub id is still this folder
    source, problems = open_source(os.path.abspath(path), plan.model.pipeline)
    if source is None:
        raise PlanError([Problem(f"{where} ({p.where})", p.what, p.fix) for p in problems])
    problems = source_problems(plan.model, source.parts)
    if problems:
        raise PlanError([Problem(f"{where} ({p.where})", p.what, p.fix) for p in problems])
    return source
