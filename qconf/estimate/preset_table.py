"""The presets as a markdown table, for the README.

Each preset is composed, validated and resolved exactly as `qconf show preset=<name>` does it, so
the table cannot drift from what the presets really do. A part's backend option is recovered by
matching its composed entry against conf/backend/*.yaml; kwargs a preset changes on top of an
option are shown next to it (e.g. `nf4` (bnb_4bit_compute_dtype=float16)). The memory column is
`qconf estimate` run on the model's config snapshot shipped in the wheel (meta device, nothing
allocated), taken from the stored estimates where they hold for this tree (qconf.estimate.
preset_cache: the shipped file, else QCONF_CACHE); only a fresh estimate imports torch.

`python -m qconf.estimate.preset_table` prints the table; the README keeps a copy between the
`<!-- presets:start -->` and `<!-- presets:end -->` lines, checked by tests/test_presets.py, and
`python -m qconf.estimate.preset_table --write README.md` refreshes that copy in place.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from qconf.estimate.presets import GIB, PresetEstimate, estimate_preset, estimate_presets
from qconf.plan.conftree import backend_options
from qconf.plan.intake import compose_plan, intake
from qconf.trust.userpath import user_path

START_MARKER = "<!-- presets:start -->"
END_MARKER = "<!-- presets:end -->"

_HEADER = (
    "| Preset | Model | Pipeline | Quantized parts (backend option) "
    "| Weights GiB: bf16/fp16 → plan |",
    "|---|---|---|---|---|",
)


def preset_row(
    name: str, config_dir: str | Path | None = None, memory: bool | PresetEstimate = True
) -> str:
    """One table row: compose, validate and resolve `preset=<name>` (raises PlanError); with
    `memory`, the estimate's weights column (True: estimated now, which imports torch; or the
    preset's estimate), else that cell is left empty."""
    from omegaconf import OmegaConf

    cfg = compose_plan([f"preset={name}"], config_dir=config_dir)
    plan = intake(cfg, config_dir=config_dir)
    resolved = plan.resolve()
    # The composed mapping still holds each part's {backend, kwargs} as the preset wrote it,
    # before the schema fills in library defaults: that is what matches conf/backend options.
    mapping = OmegaConf.to_container(cfg.quant.mapping, resolve=True) or {}
    extra = (user_path(config_dir, "--config-dir").resolve(),) if config_dir is not None else ()
    options = backend_options(extra)
    quantized = ", ".join(
        f"{part}: {_option_label(mapping.get(part), resolved_part.backend, options)}"
        for part, resolved_part in resolved.quantized.items()
    )
    return (
        f"| `{name}` | `{plan.model.source}` | {resolved.parts.pipeline} | "
        f"{quantized or 'nothing'} | {_memory(name, config_dir, memory) if memory else ''} |"
    )


def _memory(name: str, config_dir: str | Path | None, found: bool | PresetEstimate) -> str:
    """Estimated weights from the shipped config snapshot (qconf.estimate)."""
    if not isinstance(found, PresetEstimate):
        found = estimate_preset(name, config_dir)
    if found.bytes is None or found.bytes_unquantized is None:
        return "no snapshot"
    return f"{found.bytes_unquantized / GIB:.1f} → **{found.bytes / GIB:.1f}**"


def markdown_table(config_dir: str | Path | None = None) -> str:
    """All presets, one row each, as a markdown table (no trailing newline)."""
    estimates = estimate_presets(config_dir)  # stored ones where they hold, else computed
    rows = [preset_row(e.preset, config_dir, memory=e) for e in estimates]
    return "\n".join([*_HEADER, *rows])


def _option_label(entry: Any, backend: str, options: dict[str, dict]) -> str:
    """The backend option an entry came from, plus what the preset changed on top of it
    (kwargs, and entry-level keys such as `skip`)."""
    if isinstance(entry, str):  # written as a bare option name
        return f"`{entry}`"
    if not isinstance(entry, dict):  # global mode: no per-part entry to name
        return f"`{backend}`"
    kwargs = dict(entry.get("kwargs") or {})
    extras = {k: v for k, v in entry.items() if k not in ("backend", "kwargs") and v is not None}
    best: tuple[str, dict[str, Any]] | None = None
    for name, option in sorted(options.items()):
        if option.get("backend") != entry.get("backend"):
            continue
        base = dict(option.get("kwargs") or {})
        if any(key not in kwargs for key in base):
            continue  # the preset removed a key: not a delta of this option
        changed = {key: value for key, value in kwargs.items() if base.get(key) != value}
        if best is None or len(changed) < len(best[1]):
            best = (name, changed)
    name, changed = best if best is not None else (backend, kwargs)
    changed = {**changed, **extras}
    return f"`{name}` ({_format_kwargs(changed)})" if changed else f"`{name}`"


def _format_kwargs(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{key}={_format_value(value)}" for key, value in kwargs.items())


def _format_value(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + _format_kwargs(value) + "}"
    return str(value)


def readme_section(readme: str) -> str | None:
    """The text between the preset markers of a README, or None when a marker is missing."""
    start, end = readme.find(START_MARKER), readme.find(END_MARKER)
    if start < 0 or end < start:
        return None
    return readme[start + len(START_MARKER) : end].strip("\n")


def replace_section(readme: str, table: str) -> str:
    """`readme` with the text between the preset markers replaced by `table`."""
    if readme_section(readme) is None:
        raise ValueError(f"no {START_MARKER} ... {END_MARKER} lines to write between")
    start = readme.find(START_MARKER) + len(START_MARKER)
    end = readme.find(END_MARKER)
    return f"{readme[:start]}\n{table}\n{readme[end:]}"


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m qconf.estimate.preset_table", description="The presets as a markdown table."
    )
    parser.add_argument(
        "--write",
        metavar="README",
        help=f"replace the text between {START_MARKER} and {END_MARKER} in this file",
    )
    args = parser.parse_args(argv)
    table = markdown_table()
    if args.write is None:
        print(table)
        return 0
    path = Path(args.write)
    try:
        path.write_text(replace_section(path.read_text(), table))
    except (OSError, ValueError) as exc:
        print(f"error: {path}: {exc}", file=sys.stderr)
        return 2
    print(f"wrote the preset table ({table.count(chr(10)) - 1} presets) into {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
