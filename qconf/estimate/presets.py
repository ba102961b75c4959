"""Every preset's estimated weights, from the config-only snapshots shipped in the wheel.

Deterministic on purpose (no hub cache, no network): `qconf list presets --fits` and the README's
memory column give the same figures on every machine. A preset whose model has no snapshot
reports what is missing instead of a number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

GIB = 2**30
_UNITS = {"": GIB, "b": 1, "k": 2**10, "m": 2**20, "g": GIB, "t": 2**40}
_DECIMAL = {"kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}


@dataclass(frozen=True)
class PresetEstimate:
    preset: str
    source: str
    bytes_unquantized: int | None  # None: no snapshot for the model
    bytes: int | None
    load_peak_bytes: int | None
    missing: str | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "preset": self.preset,
            "model": self.source,
            "bytes_unquantized": self.bytes_unquantized,
            "bytes": self.bytes,
            "load_peak_bytes": self.load_peak_bytes,
            **({"missing": self.missing} if self.missing else {}),
        }


def parse_size(text: str) -> int:
    """'16GiB', '16 GiB', '16G', '16' (GiB) -> bytes; '16GB' is decimal (16e9). ValueError."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = match.group(2).lower() if match else ""
    if match is None or (unit.rstrip("ib") not in _UNITS and unit not in _DECIMAL):
        raise ValueError(f"'{text}' is not a size: write e.g. 16GiB, 24G, 12000MiB or 16GB")
    value = float(match.group(1))
    scale = (
        _DECIMAL[unit] if unit in _DECIMAL else _UNITS[unit.removesuffix("ib").removesuffix("b")]
    )
    if not value * scale < 2**63:  # also inf: a digit string too long for a float
        raise ValueError(f"'{text}' is larger than any machine's memory")
    return int(value * scale)


def estimate_preset(name: str, config_dir: str | Path | None = None) -> PresetEstimate:
    """Compose `preset=<name>` and estimate it against its model's shipped snapshot."""
    from qconf.errors import QconfError
    from qconf.estimate.core import estimate
    from qconf.estimate.snapshots import slug, snapshot_folder
    from qconf.plan.compose import compose
    from qconf.plan.schema import validate
    from qconf.source.parts import source_kind

    try:  # one broken preset of a user's --config-dir must not hide the others
        plan = validate(compose([f"preset={name}"], config_dir=config_dir), config_dir=config_dir)
    except QconfError as exc:
        return PresetEstimate(name, "?", None, None, None, exc.lines[0])
    source = plan.model.source
    folder = snapshot_folder(source) if source_kind(source) == "hub" else None
    if folder is None:
        why = f"no config snapshot of {source} in qconf/data/snapshots/{slug(source)}"
        return PresetEstimate(name, source, None, None, None, why)
    try:
        result = estimate(plan, folder)
    except QconfError as exc:
        return PresetEstimate(name, source, None, None, None, exc.lines[0])
    return PresetEstimate(
        name, source, result.total_bytes_unquantized, result.total_bytes, result.load_peak_bytes
    )


def estimate_presets(config_dir: str | Path | None = None) -> list[PresetEstimate]:
    from qconf.estimate.preset_table import preset_names

    return [estimate_preset(name, config_dir) for name in preset_names(config_dir)]


def fitting(estimates: list[PresetEstimate], budget: int) -> list[PresetEstimate]:
    """Presets whose estimated weights fit in `budget` bytes, smallest first."""
    fits = [e for e in estimates if e.bytes is not None and e.bytes <= budget]
    return sorted(fits, key=lambda e: (e.bytes, e.preset))
