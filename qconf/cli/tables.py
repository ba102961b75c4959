"""The per-part bytes table shared by `qconf load` (measured) and `qconf estimate` (computed)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from qconf.cli.common import console
from qconf.text import markup
from qconf.units import human_bytes


@dataclass(frozen=True)
class BytesRow:
    part: str
    backend: str | None
    layers: str  # what got quantized, e.g. "30× Linear[Int8Tensor]"
    params: int
    bytes_unquantized: int
    bytes: int


def print_bytes_table(title: str, rows: Iterable[BytesRow], bytes_column: str) -> None:
    from rich.table import Table

    rows = list(rows)
    table = Table(title=markup(title))
    for column in ("part", "backend", "quantized layers", "params", "unquantized", bytes_column):
        table.add_column(column, justify="right" if column == "params" else "left")
    table.add_column("ratio", justify="right")
    for row in rows:
        table.add_row(
            markup(row.part),
            markup(row.backend or "—"),
            markup(row.layers or "—"),
            f"{row.params:,}",
            human_bytes(row.bytes_unquantized),
            human_bytes(row.bytes),
            _ratio(row.bytes, row.bytes_unquantized),
        )
    before, after = sum(r.bytes_unquantized for r in rows), sum(r.bytes for r in rows)
    params = sum(r.params for r in rows)
    table.add_row(
        "total", "", "", f"{params:,}", human_bytes(before), human_bytes(after),
        _ratio(after, before), style="bold",
    )  # fmt: skip
    console().print(table)


def _ratio(after: int, before: int) -> str:
    return f"{after / before:.2f}" if before else "—"


def print_report(report: Any) -> None:
    rows = (
        BytesRow(
            name,
            part.backend,
            ", ".join(f"{n}× {kind}" for kind, n in part.quantized_layers.items()),
            part.params,
            part.bytes_unquantized,
            part.bytes,
        )
        for name, part in report.parts.items()
    )
    title = (
        f"{report.pipeline} loaded in {report.load_seconds:.2f} s "
        f"(torch_dtype={report.torch_dtype})"
    )
    print_bytes_table(title, rows, "loaded")
