"""The tuned plan as a preset file in the user's config dir: `preset/<name>.yaml`, a delta on
top of qconf's defaults like the built-in presets (the model as the user chose it, then the
mapping), so `qconf run --config-dir DIR preset=<name>` loads exactly what tune measured."""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import yaml

from qconf.errors import PlanError, Problem
from qconf.trust.userpath import write_text

# Only what a command line may turn on (see the README's Safety section); a file may not.
_TYPED_ONLY = ("model.allow_pickle", "model.trust_remote_code")


def preset_path(config_dir: str, name: str, *, force: bool) -> Path:
    """Where the preset goes; refused before any work if it exists (unless force)."""
    from qconf.trust.userpath import output_folder

    target = output_folder(config_dir, "--config-dir") / "preset" / f"{name}.yaml"
    output_folder(target.parent, "--config-dir")
    if target.parent.is_symlink():
        raise PlanError(Problem(str(target.parent), "is a symbolic link", "pick another folder"))
    if target.exists() and not force:
        raise PlanError(Problem(str(target), "already exists",
                                "pick another --name, or add --force to replace it"))  # fmt: skip
    return target


def write_preset(target: Path, where: Any, tuned: Any) -> Path:
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
    data: dict[str, Any] = {}
    if defaults:
        data["defaults"] = defaults
    if model:
        data["model"] = model
    data["quant"] = {"mapping": mapping}
    text = "\n".join(lines) + "\n" + yaml.safe_dump(data, sort_keys=False)
    from qconf.trust.userpath import make_folder

    make_folder(target.parent, "--config-dir")
    return write_text(target, text, "--name")


def _model_delta(where: Any) -> tuple[list[Any], dict[str, Any]]:
    """`override /model: X` if the user picked a model option, and the model keys they set."""
    defaults: list[Any] = []
    model: dict[str, Any] = {}
    for override in where.overrides:
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
