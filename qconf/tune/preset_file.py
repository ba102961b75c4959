"""The tuned plan as a preset file in the user's config dir: `preset/<name>.yaml`, a delta on
top of qconf's defaults like the built-in presets (the model as the user chose it, then the
mapping), so `qconf run --config-dir DIR preset=<name>` loads exactly what tune measured.

The config dir is checked before the work and again when writing: the file is written into the
real `preset` folder (no symbolic link followed from the config dir's own name down, a link
swapped in meanwhile refused), as a temp file that becomes the preset only once the preset it
is composes, validates and is estimated within the budget."""

from __future__ import annotations

import datetime
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from qconf.errors import PlanError, Problem

# Only what a command line may turn on (see the README's Safety section); a file may not.
_TYPED_ONLY = ("model.allow_pickle", "model.trust_remote_code")
WHERE = "--config-dir"


def preset_path(config_dir: str, name: str, *, force: bool) -> Path:
    """Where the preset goes; refused before any work if it exists (unless force), or if the
    config dir, its preset folder or the file is a symbolic link."""
    from qconf.sensitivity.writable import writable_folder
    from qconf.trust.userpath import output_folder

    target = output_folder(config_dir, WHERE) / "preset" / f"{name}.yaml"
    writable_folder(target.parent, WHERE)
    for path in (target.parent.parent, target.parent, target):
        if path.is_symlink():
            fix = "qconf writes only into real folders: pick another"
            raise PlanError(Problem(str(path), "is a symbolic link", fix))
    if target.exists() and not force:
        raise PlanError(Problem(str(target), "already exists",
                                "pick another --name, or add --force to replace it"))  # fmt: skip
    return target


def write_preset(target: Path, where: Any, tuned: Any, *, force: bool = True) -> Path:
    """Write the winner as `target` (from `preset_path`), all or nothing; refused (nothing
    written) if a folder on the way became a symbolic link, if `target` appeared meanwhile
    (unless force), or if the written preset's own estimate is over the budget."""
    from qconf.trust.userpath import real_folder, replace_in

    text = preset_text(where, tuned)
    config_dir = target.parent.parent
    check = partial(check_budget, config_dir=config_dir, typed=_typed_only(where),
                    budget=tuned.budget)  # fmt: skip
    with real_folder(config_dir, [target.parent.name], WHERE) as folder:
        return replace_in(folder, target.name, text.encode(), WHERE, overwrite=force,
                          replace_link=False, check=check)  # fmt: skip


def check_budget(temp: Path, *, config_dir: Path, typed: list[str], budget: int) -> None:
    """The preset file `temp` (in `config_dir`/preset), composed, validated and estimated as
    `qconf run --config-dir DIR preset=NAME` would: a PlanError if over `budget`. Tune chose
    it from cached measurements, which anyone who can write the cache could have forged."""
    from qconf.estimate import estimate
    from qconf.plan.intake import intake
    from qconf.units import human_bytes

    preset = temp.name.removesuffix(".yaml")
    plan = intake(overrides=[f"preset={preset}", *typed], config_dir=config_dir)
    size = estimate(plan).total_bytes
    if size > budget:
        what = (f"the tuned preset's own estimate is {human_bytes(size)}, over the budget; "
                "nothing written (a cached measurement does not match this model)")  # fmt: skip
        fix = "point QCONF_CACHE at a folder only you write, or empty its sensitivity/ folder"
        raise PlanError(Problem(f"budget={human_bytes(budget)}", what, fix))


def _typed_only(where: Any) -> list[str]:
    """The user's overrides that only a command line may give (kept out of the file)."""
    return [o for o in where.overrides if o.split("=", 1)[0].lstrip("+~") in _TYPED_ONLY]


def preset_text(where: Any, tuned: Any) -> str:
    from qconf.units import human_bytes

    winner = tuned.winner
    defaults, model = _model_delta(where)
    mapping = _mapping(winner)
    lines = [
        "# @package _global_",
        f"# Tuned by `qconf tune` on {datetime.date.today()} for {human_bytes(tuned.budget)} of "
        f"weights: {winner.label}, estimated {human_bytes(winner.bytes)}; measured PSNR "
        f"{winner.psnr:.2f} dB, SSIM {winner.ssim:.4f} against the unquantized pipeline on "
        "run.prompt / run.seed.",
    ]
    for part, kept in sorted(winner.extra.get("kept", {}).items()):
        # the skip entries match the library's way (quanto: leaf names), checked on the load
        lines.append(f"# The skip list keeps {len(kept)} layers of {part} unquantized: "
                     f"{', '.join(kept)}.")  # fmt: skip
    data: dict[str, Any] = {}
    if defaults:
        data["defaults"] = defaults
    if model:
        data["model"] = model
    data["quant"] = {"mapping": mapping}
    return "\n".join(lines) + "\n" + yaml.safe_dump(data, sort_keys=False)


def _model_delta(where: Any) -> tuple[list[Any], dict[str, Any]]:
    """`override /model: X` if the user picked a model option, and the model keys they set
    (typed, or in their --plan file; the values are the validated plan's)."""
    from qconf.plan.planfile import plan_file_overrides

    defaults: list[Any] = []
    model: dict[str, Any] = {}
    from_file = plan_file_overrides(where.plan_file) if where.plan_file else []
    for override in [*from_file, *where.overrides]:
        key = override.split("=", 1)[0].lstrip("+~")
        if key == "model":
            defaults = [{"override /model": override.split("=", 1)[1]}]
        elif key.startswith("model.") and key not in _TYPED_ONLY:
            field = key.split(".", 1)[1]
            model[field] = getattr(where.plan.model, field, None)
    return defaults, model


def _mapping(winner: Any) -> dict[str, Any]:
    """Option names; a built-in preset's own entries where no option file has them; the option
    with its skip list where tune kept layers unquantized."""
    from qconf.sensitivity.layers import with_skip

    entries = winner.extra.get("entries", {})
    skips = winner.extra.get("skip", {})
    mapping: dict[str, Any] = {}
    for part, option in sorted(winner.mapping.items()):
        if part in skips:
            mapping[part] = with_skip(option, skips[part])
        else:
            mapping[part] = entries[part] if option == "custom" else option
    return mapping
