"""`qconf list [backends|options|presets|models] [--json]`: tables from the registry and the conf
tree; `--json` prints the same rows as one JSON object keyed by what was listed."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qconf.cli import fits
from qconf.cli.common import console
from qconf.text import markup
from qconf.trust.userpath import user_path
from qconf.trust.yamlsafe import load_yaml_file

WHAT = ("backends", "options", "presets", "models")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("what", nargs="?", choices=WHAT, help="what to list (default: all)")
    parser.add_argument("--config-dir", help="a folder of your own config groups")
    fits.add_arguments(parser)
    parser.add_argument(
        "--json",
        action="store_true",
        help="print JSON instead of tables: {<what>: [{<column>: value}, ...]} (with --fits: "
        "budget_bytes, fits, over_by_peak, not_estimated)",
    )


def run(args: argparse.Namespace) -> int:
    if args.fits is not None:
        return fits.run(args)
    extra = (user_path(args.config_dir, "--config-dir"),) if args.config_dir else ()
    listings = {what: LISTINGS[what](extra) for what in ([args.what] if args.what else WHAT)}
    if args.json:
        print(
            json.dumps({w: listing.rows for w, listing in listings.items()}, indent=2, default=str)
        )
        return 0
    out = console()
    for listing in listings.values():
        out.print(listing.table())
    return 0


@dataclass(frozen=True)
class Column:
    key: str  # the JSON key
    header: str  # the table's
    cell: Callable[[Any], str] | None = None  # how the table shows the value (default: _cell)


@dataclass
class Listing:
    """One `qconf list` form: the rows as data (the JSON) and how a table shows them."""

    title: str
    columns: tuple[Column, ...]
    rows: list[dict[str, Any]] = field(default_factory=list)
    caption: str | None = None

    def add(self, *values: Any) -> None:
        self.rows.append({c.key: v for c, v in zip(self.columns, values, strict=True)})

    def table(self):  # noqa: ANN201 - a rich Table
        """Every cell is text from the registry or a config file: markup and controls escaped."""
        from rich.table import Table

        table = Table(title=markup(self.title))
        for column in self.columns:
            table.add_column(markup(column.header))
        for row in self.rows:
            table.add_row(*(markup((c.cell or _cell)(row[c.key])) for c in self.columns))
        if self.caption:
            table.caption = markup(self.caption)
        return table


def _cell(value: Any) -> str:
    if value is None or value == []:
        return "—"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, default=str)
    return str(value)


def _or_no(value: Any) -> str:
    return _cell(value) if value else "no"


def backends_listing(extra: tuple[Path, ...]) -> Listing:
    from qconf.backends import LIBRARIES, REGISTRY
    from qconf.loading.environment import cuda_available, installed_version
    from qconf.plan.conftree import backend_options

    options = backend_options(extra)
    has_cuda = cuda_available()
    listing = Listing("backends", (
        Column("key", "key"), Column("options", "options"),
        Column("installed", "installed", _or_no),
        Column("runs_here_on", "runs here on", _parts),
        Column("can_save", "can save", lambda libs: _parts(libs) if libs else "no"),
        Column("extra", "extra"),
    ))  # fmt: skip
    for key, spec in REGISTRY.items():
        version = installed_version(spec)
        runs = [
            lib
            for lib in LIBRARIES
            if lib in spec.params and version and (has_cuda or lib not in spec.needs_cuda)
        ]
        listing.add(
            key,
            [n for n, o in options.items() if o.get("backend") == key],
            version,
            runs,
            [lib for lib in LIBRARIES if spec.can_save.get(lib)],
            f"qconf[{spec.extra}]",
        )
    notes = [
        f"{key} on {lib} parts: {why}"
        for key, spec in REGISTRY.items()
        for lib, why in spec.deprecated.items()
    ]
    notes += [f"{key}: {why}" for key, spec in REGISTRY.items() if (why := _unusable(spec))]
    listing.caption = "; ".join(notes) or None
    return listing


def _unusable(spec: Any) -> str | None:
    return spec.unusable() if spec.unusable is not None else None


def options_listing(extra: tuple[Path, ...]) -> Listing:
    from qconf.plan.conftree import backend_options

    listing = Listing("backend options (quant.mapping.<part>=<option>)", (
        Column("option", "option"), Column("backend", "backend"), Column("kwargs", "kwargs"),
        Column("lora_trains_on", "LoRA trains on", _trains_cell),
    ))  # fmt: skip
    for name, option in backend_options(extra).items():
        listing.add(name, option.get("backend"), option.get("kwargs") or {}, _trains_on(option))
    return listing


def _trains_cell(value: list[str] | None) -> str:
    return "?" if value is None else _parts(value) if value else "no"


def _parts(libraries: list[str]) -> str:
    """Libraries as the table says them: "diffusers parts, transformers parts"."""
    return ", ".join(f"{lib} parts" for lib in libraries) or "—"


def _trains_on(option: dict) -> list[str] | None:
    """The libraries whose parts LoRA trains through under this option (qconf.loading.trainable);
    None when the option itself is not valid."""
    from pydantic import TypeAdapter, ValidationError

    from qconf.backends import LIBRARIES, BackendEntry

    try:
        entry = TypeAdapter(BackendEntry).validate_python(option)
    except ValidationError:
        return None
    return [lib for lib in LIBRARIES if lib in entry.spec.params
            and entry.train_reason(lib) is None]  # fmt: skip


def presets_listing(extra: tuple[Path, ...]) -> Listing:
    from qconf.plan.conftree import group_options

    columns = (Column("preset", "preset"), Column("description", "description"))
    listing = Listing("presets (preset=<name>)", columns)
    for name, path in group_options("preset", extra).items():
        listing.add(name, _comment(path))
    return listing


def models_listing(extra: tuple[Path, ...]) -> Listing:
    from qconf.plan.conftree import group_options

    listing = Listing("models (model=<name>)", (
        Column("model", "model"), Column("source", "source"),
        Column("pipeline", "pipeline", lambda p: _cell(p or "from source")),
    ))  # fmt: skip
    for name, path in group_options("model", extra).items():
        data = load_yaml_file(path)
        data = data if isinstance(data, dict) else {}
        listing.add(name, _scalar(data.get("source")), _scalar(data.get("pipeline")))
    return listing


def _scalar(value: Any) -> Any:
    """A value from a config file as JSON can carry it (a file may hold anything)."""
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


def _comment(path: Path) -> str:
    lines = [
        line.lstrip("# ").strip()
        for line in _text(path).splitlines()
        if line.startswith("#") and not line.startswith("# @package")
    ]
    return " ".join(lines)


LISTINGS: dict[str, Callable[[tuple[Path, ...]], Listing]] = {
    "backends": backends_listing,
    "options": options_listing,
    "presets": presets_listing,
    "models": models_listing,
}


def _text(path: Path) -> str:
    """A config file's text through the bounded reader (a FIFO or device in a --config-dir is
    an error line, never a hang), undecodable bytes shown as replacement characters."""
    from qconf.trust.reading import read_regular
    from qconf.trust.yamlsafe import MAX_BYTES

    return read_regular(path, "the config file", MAX_BYTES).decode("utf-8", errors="replace")
