"""Every preset's estimated weights, from the config-only snapshots shipped in the wheel.

Deterministic on purpose (no hub cache, no network): `qconf list presets --fits` and the README's
memory column give the same figures on every machine. A preset whose model has no snapshot
reports what is missing instead of a number.
"""

from __future__ import annotations

from pathlib import Path

from qconf.estimate.preset_estimate import PresetEstimate

# sizes are read in one place for every command (units.py); kept importable from here
from qconf.units import GIB, MAX_SIZE, SIZE_RULE, UNITS, parse_size, size_help  # noqa: F401


def estimate_preset(name: str, config_dir: str | Path | None = None) -> PresetEstimate:
    """Compose `preset=<name>` and estimate it against its model's shipped snapshot."""
    from qconf.errors import QconfError
    from qconf.estimate.core import estimate
    from qconf.estimate.snapshots import slug, snapshot_folder
    from qconf.plan.intake import intake
    from qconf.source.parts import source_kind

    try:  # one broken preset of a user's --config-dir must not hide the others
        plan = intake(overrides=[f"preset={name}"], config_dir=config_dir)
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


def preset_names(config_dir: str | Path | None = None) -> list[str]:
    """Every preset option, built-in and (with `config_dir`) the user's, sorted."""
    from qconf.plan.conftree import group_options
    from qconf.trust.userpath import user_path

    extra = (user_path(config_dir, "--config-dir").resolve(),) if config_dir is not None else ()
    return sorted(group_options("preset", extra))


def estimate_presets(
    config_dir: str | Path | None = None, *, cached: bool = True
) -> list[PresetEstimate]:
    """Every preset's estimate, sorted by name. With `cached`, estimates stored under the same
    inputs (qconf.estimate.preset_cache) are reused and the new ones stored; a preset that
    cannot be estimated is estimated again on every call, so its reason is always today's."""
    names = preset_names(config_dir)
    if not cached:
        return [estimate_preset(name, config_dir) for name in names]
    from qconf.estimate.preset_cache import cached_estimates

    return cached_estimates(names, config_dir, estimate_preset)


def fitting(estimates: list[PresetEstimate], budget: int) -> list[PresetEstimate]:
    """Presets that load in `budget` bytes (their peak while loading, and so their weights,
    at most that), smallest peak first."""
    fits = [e for e in estimates if e.loads_in(budget)]
    return sorted(fits, key=lambda e: (e.load_peak_bytes, e.bytes, e.preset))


def over_by_peak(estimates: list[PresetEstimate], budget: int) -> list[PresetEstimate]:
    """Presets whose weights fit `budget` but whose peak while loading does not (left out of
    `fitting`, and said so), smallest peak first."""
    over = [e for e in estimates if e.over_by_peak(budget)]
    return sorted(over, key=lambda e: (e.load_peak_bytes, e.bytes, e.preset))


def main(argv: list[str] | None = None) -> int:
    """`python -m qconf.estimate.presets --write`: estimate every built-in preset afresh and
    write the shipped estimates (qconf.estimate.preset_cache)."""
    import argparse

    from qconf.estimate.preset_cache import SHIPPED, write_shipped

    parser = argparse.ArgumentParser(
        prog="python -m qconf.estimate.presets",
        description="Estimate every built-in preset afresh and write the shipped estimates.",
    )
    parser.add_argument("--write", action="store_true", help=f"write qconf/data/{SHIPPED}")
    args = parser.parse_args(argv)
    if not args.write:
        parser.print_help()
        return 0
    print(f"wrote {write_shipped(estimate_presets(cached=False))}")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
