"""Tables of bench_estimate_vs_measured.py: estimated vs measured bytes per part, memory while
loading, and the load peak against depth, as rich tables and as markdown."""

from __future__ import annotations

from dataclasses import dataclass

from rich.table import Table

MIB, GIB = 2**20, 2**30
TOLERANCE = 0.03


@dataclass
class Row:
    family: str
    part: str
    option: str
    estimated: int  # reduced folder
    measured: int
    full_estimated: int  # full-size snapshot
    full_extrapolated: int  # measured, extrapolated per block


@dataclass
class Peak:
    family: str
    depth: int
    option: str
    weights: int  # after the load (the load report)
    full_weights: int  # the full-size estimate of the same plan
    file_backed: int  # weights left in the mmapped safetensors pages
    anon_peak: int  # anonymous RSS above the RSS before the load, at its largest
    anon_after: int
    hwm: int  # VmHWM above the RSS before the load (mapped file pages included)
    seconds: float

    @property
    def need(self) -> float:
        """Memory in use at the peak over the weights: anonymous peak + file-backed weights."""
        return (self.anon_peak + self.file_backed) / self.weights

    @property
    def extra(self) -> int:
        return self.anon_peak + self.file_backed - self.weights


def full_size_need(peaks: list[Peak]) -> tuple[float, float, float]:
    """(fixed GiB, proportional part, ratio at full size): the extra memory of one option's
    loads at several depths fitted as fixed + proportional x weights (least squares), then
    taken at the full-size weights."""
    n = len(peaks)
    mean_w = sum(p.weights for p in peaks) / n
    mean_e = sum(p.extra for p in peaks) / n
    spread = sum((p.weights - mean_w) ** 2 for p in peaks)
    slope = sum((p.weights - mean_w) * (p.extra - mean_e) for p in peaks) / spread
    fixed = mean_e - slope * mean_w
    return fixed / GIB, slope, 1 + slope + fixed / peaks[0].full_weights


def _mark(ratio: float) -> str:
    return "" if abs(ratio - 1) <= TOLERANCE else " **off**"


BYTE_COLUMNS = [
    "family", "part", "option", "estimated MiB", "measured MiB", "est/meas",
    "full estimate GiB", "full extrapolated GiB", "est/extrap",
]  # fmt: skip
PEAK_COLUMNS = [
    "family", "option", "weights GiB", "file-backed/weights", "anon peak/weights",
    "peak/weights", "held after/weights", "VmHWM/weights", "load s",
]  # fmt: skip
WORST_COLUMNS = ["family", "part", "worst est/meas (reduced)", "worst est/extrap (full)"]


def byte_cells(row: Row) -> list[str]:
    ratio, full_ratio = row.estimated / row.measured, row.full_estimated / row.full_extrapolated
    return [
        row.family, row.part, row.option, f"{row.estimated / MIB:,.2f}",
        f"{row.measured / MIB:,.2f}", f"{ratio:.4f}{_mark(ratio)}",
        f"{row.full_estimated / GIB:,.3f}", f"{row.full_extrapolated / GIB:,.3f}",
        f"{full_ratio:.4f}{_mark(full_ratio)}",
    ]  # fmt: skip


def peak_cells(peak: Peak) -> list[str]:
    w = peak.weights
    return [
        f"{peak.family} ({peak.depth})", peak.option, f"{w / GIB:.3f}",
        f"{peak.file_backed / w:.3f}", f"{peak.anon_peak / w:.3f}", f"{peak.need:.3f}",
        f"{(peak.anon_after + peak.file_backed) / w:.3f}", f"{peak.hwm / w:.3f}",
        f"{peak.seconds:.1f}",
    ]  # fmt: skip


def scaling_cells(peaks: list[Peak]) -> tuple[list[str], list[list[str]]]:
    """Per option of the families measured at several depths: the ratio at each depth and at
    the full size."""
    groups: dict[tuple[str, str], dict[int, Peak]] = {}
    for peak in peaks:
        groups.setdefault((peak.family, peak.option), {})[peak.depth] = peak
    depths = sorted({p.depth for p in peaks})
    columns = ["family", "option", *(f"peak/weights, {d} blocks" for d in depths)]
    columns += ["fixed GiB", "proportional", "full-size weights GiB", "peak/weights, full size"]
    cells = []
    for (family, option), by_depth in groups.items():
        if len(by_depth) < 2:
            continue
        fixed, slope, full = full_size_need(list(by_depth.values()))
        cells.append(
            [
                family, option, *(f"{by_depth[d].need:.3f}" if d in by_depth else "-"
                                  for d in depths),
                f"{fixed:+.3f}", f"{slope:+.3f}", f"{by_depth[depths[0]].full_weights / GIB:.2f}",
                f"{full:.3f}",
            ]
        )  # fmt: skip
    return columns, cells


def rich_table(title: str, columns: list[str], cells: list[list[str]]) -> Table:
    table = Table(title=title)
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i < 3 else "right")
    for row in cells:
        table.add_row(*(c.replace("**off**", "[red]off[/red]") for c in row))
    return table


def markdown_table(columns: list[str], cells: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def worst(rows: list[Row]) -> list[list[str]]:
    """Per family and part: the estimate/measurement ratio furthest from 1, both comparisons."""
    keyed: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        keyed.setdefault((row.family, row.part), []).append(row)
    cells = []
    for (family, part), group in keyed.items():
        near = max(group, key=lambda r: abs(r.estimated / r.measured - 1))
        far = max(group, key=lambda r: abs(r.full_estimated / r.full_extrapolated - 1))
        cells.append(
            [
                family, part, f"{near.estimated / near.measured:.6f} ({near.option})",
                f"{far.full_estimated / far.full_extrapolated:.6f} ({far.option})",
            ]
        )  # fmt: skip
    return cells
