"""`qconf list [backends|presets|models]`: tables from the registry and the conf tree."""

from __future__ import annotations

import argparse
from pathlib import Path

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


def run(args: argparse.Namespace) -> int:
    if args.fits is not None:
        return fits.run(args)
    out = console()
    extra = (user_path(args.config_dir, "--config-dir"),) if args.config_dir else ()
    for what in [args.what] if args.what else WHAT:
        out.print(TABLES[what](extra))
    return 0


def backends_table(extra: tuple[Path, ...]):  # noqa: ANN201 - a rich Table
    from rich.table import Table

    from qconf.backends import LIBRARIES, REGISTRY
    from qconf.loading.environment import cuda_available, installed_version
    from qconf.plan.conftree import backend_options

    options = backend_options(extra)
    has_cuda = cuda_available()
    table = Table(title="backends")
    for column in ("key", "options", "installed", "runs here on", "can save", "extra"):
        table.add_column(column)
    for key, spec in REGISTRY.items():
        version = installed_version(spec)
        names = ", ".join(n for n, o in options.items() if o.get("backend") == key) or "—"
        runs = [
            f"{lib} parts"
            for lib in LIBRARIES
            if lib in spec.params and version and (has_cuda or lib not in spec.needs_cuda)
        ]
        saves = [lib for lib in LIBRARIES if spec.can_save.get(lib)]
        add_row(
            table,
            key,
            names,
            version or "no",
            ", ".join(runs) or "—",
            ", ".join(saves) or "no",
            f"qconf[{spec.extra}]",
        )
    notes = [
        f"{key} on {lib} parts: {why}"
        for key, spec in REGISTRY.items()
        for lib, why in spec.deprecated.items()
    ]
    if notes:
        table.caption = markup("; ".join(notes))
    return table


def options_table(extra: tuple[Path, ...]):  # noqa: ANN201
    import json

    from rich.table import Table

    from qconf.plan.conftree import backend_options

    table = Table(title="backend options (quant.mapping.<part>=<option>)")
    for column in ("option", "backend", "kwargs", "LoRA trains on"):
        table.add_column(column)
    for name, option in backend_options(extra).items():
        add_row(table, name, str(option.get("backend")), json.dumps(option.get("kwargs") or {}),
                _trains_on(option))  # fmt: skip
    return table


def _trains_on(option: dict) -> str:
    """The libraries whose parts LoRA trains through under this option (qconf.loading.trainable)."""
    from pydantic import TypeAdapter, ValidationError

    from qconf.backends import LIBRARIES, BackendEntry

    try:
        entry = TypeAdapter(BackendEntry).validate_python(option)
    except ValidationError:
        return "?"
    libraries = [lib for lib in LIBRARIES if lib in entry.spec.params
                 and entry.train_reason(lib) is None]  # fmt: skip
    return ", ".join(f"{lib} parts" for lib in libraries) or "no"


def presets_table(extra: tuple[Path, ...]):  # noqa: ANN201
    from rich.table import Table

    from qconf.plan.conftree import group_options

    table = Table(title="presets (preset=<name>)")
    table.add_column("preset")
    table.add_column("description")
    for name, path in group_options("preset", extra).items():
        add_row(table, name, _comment(path))
    return table


def models_table(extra: tuple[Path, ...]):  # noqa: ANN201
    from rich.table import Table

    from qconf.plan.conftree import group_options

    table = Table(title="models (model=<name>)")
    for column in ("model", "source", "pipeline"):
        table.add_column(column)
    for name, path in group_options("model", extra).items():
        data = load_yaml_file(path)
        data = data if isinstance(data, dict) else {}
        add_row(table, name, str(data.get("source")), str(data.get("pipeline") or "from source"))
    return table


def _comment(path: Path) -> str:
    lines = [
        line.lstrip("# ").strip()
        for line in _text(path).splitlines()
        if line.startswith("#") and not line.startswith("# @package")
    ]
    return " ".join(lines)


def add_row(table, *cells: object) -> None:  # noqa: ANN001 - a rich Table
    """Every cell is text from the registry or a config file: markup and controls escaped."""
    table.add_row(*(markup(cell) for cell in cells))


TABLES = {
    "backends": backends_table,
    "options": options_table,
    "presets": presets_table,
    "models": models_table,
}


def _text(path: Path) -> str:
    """A config file's text through the bounded reader (a FIFO or device in a --config-dir is
    an error line, never a hang), undecodable bytes shown as replacement characters."""
    from qconf.trust.reading import read_regular
    from qconf.trust.yamlsafe import MAX_BYTES

    return read_regular(path, "the config file", MAX_BYTES).decode("utf-8", errors="replace")
