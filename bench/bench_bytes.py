"""Benchmark: bytes each backend option really allocates, per part of the tiny Flux pipeline.

For every backend option that runs on a CPU, the tiny Flux pipeline is loaded through qconf
with that option on the parts it suits (`quant.mapping.<part>=<option>`):

* torchao (int8wo, int8dq, float8wo, int4wo) and quanto (quanto-int8, quanto-int4,
  quanto-float8): every weight-bearing part;
* bitsandbytes (nf4, fp4, bnb-int8): text_encoder and text_encoder_2 only (on diffusers parts
  diffusers' bitsandbytes quantizer needs a GPU).

The table shows, per quantized part, the bytes of the same weights unquantized (bfloat16) and the
bytes measured after loading (qconf's LoadReport: quant state and tensor-subclass internals
included), and their ratio. If `qconf.estimate.estimate(plan)` exists, its per-part estimate and
the % error against the measurement are added; otherwise "estimate: not available" is printed.

    python bench/bench_bytes.py [--options int8wo nf4 ...]
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from _common import console, fmt_bytes, silence_libraries
from rich.table import Table

MODEL = "tiny-flux"
ALL_PARTS = "*"  # every weight-bearing part of the pipeline
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")
OPTIONS: dict[str, str | tuple[str, ...]] = {
    "int8wo": ALL_PARTS,
    "int8dq": ALL_PARTS,
    "float8wo": ALL_PARTS,
    "int4wo": ALL_PARTS,
    "quanto-int8": ALL_PARTS,
    "quanto-int4": ALL_PARTS,
    "quanto-float8": ALL_PARTS,
    "nf4": TEXT_ENCODERS,
    "fp4": TEXT_ENCODERS,
    "bnb-int8": TEXT_ENCODERS,
}
# Names an estimate result may give its per-part byte count under (the API is not written yet).
_BYTE_NAMES = ("bytes", "estimated_bytes", "bytes_estimated", "estimate", "total_bytes", "total")
_PARTS_NAMES = ("parts", "components", "per_part")

Estimator = Callable[[Any], Any]


@dataclass
class PartRow:
    """One quantized part under one option."""

    part: str
    backend: str | None
    params: int
    bytes_unquantized: int
    bytes: int
    quantized_layers: int
    layers: int
    estimate: int | None = None


@dataclass
class OptionResult:
    """The outcome of loading the pipeline with one option."""

    option: str
    parts: list[PartRow] = field(default_factory=list)
    total_bytes: int = 0
    total_unquantized: int = 0
    measured_parts: tuple[str, ...] = ()  # every part the report measured, quantized or not
    seconds: float = 0.0
    error: str | None = None
    estimate_total: int | None = None
    estimate_error: str | None = None


# --------------------------------------------------------------------------------------------
# the estimate, if qconf has one yet


def find_estimator() -> tuple[Estimator | None, str]:
    """`qconf.estimate.estimate` if importable, else None and why not."""
    try:
        module = importlib.import_module("qconf.estimate")
    except ModuleNotFoundError as exc:
        if exc.name in ("qconf.estimate", "qconf"):
            return None, "not available (no module qconf.estimate yet)"
        return None, f"not available (qconf.estimate fails to import: {exc})"
    except Exception as exc:  # a half-written module must not stop the benchmark
        return None, f"not available (qconf.estimate fails to import: {type(exc).__name__}: {exc})"
    function = getattr(module, "estimate", None)
    if not callable(function):
        return None, "not available (qconf.estimate has no estimate() function)"
    return function, "qconf.estimate.estimate(plan)"


def _as_bytes(value: Any) -> int | None:
    """A byte count out of whatever an estimate gives for a part (int, object or dict)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return int(value)
    for name in _BYTE_NAMES:
        found = value.get(name) if isinstance(value, Mapping) else getattr(value, name, None)
        if isinstance(found, (int, float)) and not isinstance(found, bool):
            return int(found)
    return None


def _as_parts(result: Any) -> Mapping[str, Any]:
    """The per-part mapping of an estimate result (a mapping itself, or under .parts etc.)."""
    for name in _PARTS_NAMES:
        found = result.get(name) if isinstance(result, Mapping) else getattr(result, name, None)
        if isinstance(found, Mapping):
            return found
    if isinstance(result, Mapping):
        return result
    to_json = getattr(result, "to_json", None)
    if callable(to_json):
        return _as_parts(to_json())
    raise TypeError(f"cannot read per-part bytes from a {type(result).__name__}")


def apply_estimate(result: OptionResult, estimator: Estimator, plan: Any) -> None:
    """Fill in the per-part and total estimate, or the reason there is none."""
    try:
        estimate = estimator(plan)
        parts = _as_parts(estimate)
    except Exception as exc:
        result.estimate_error = f"{type(exc).__name__}: {exc}"[:200]
        return
    for row in result.parts:
        row.estimate = _as_bytes(parts.get(row.part))
    total = _as_bytes(estimate) if not isinstance(estimate, Mapping) else None
    if total is None:  # sum the parts, only if the estimate covers every measured part
        values = [_as_bytes(parts.get(name)) for name in result.measured_parts]
        known = [v for v in values if v is not None]
        total = sum(known) if values and len(known) == len(values) else None
    result.estimate_total = total


# --------------------------------------------------------------------------------------------
# loading


def overrides_for(option: str, parts: Sequence[str]) -> list[str]:
    """Hydra overrides putting `option` on `parts` of the tiny Flux pipeline."""
    return [f"model.source={MODEL}", *(f"quant.mapping.{part}={option}" for part in parts)]


def weight_parts() -> list[str]:
    """The weight-bearing parts of the tiny Flux pipeline (from an unquantized plan)."""
    import qconf

    resolved = qconf.validate(qconf.compose([f"model.source={MODEL}"])).resolve()
    return list(resolved.components)


def load_option(option: str, parts: Sequence[str], estimator: Estimator | None) -> OptionResult:
    """Load the pipeline with `option` on `parts`; measure (and estimate) bytes per part."""
    import qconf

    result = OptionResult(option)
    try:
        cfg = qconf.compose(overrides_for(option, parts))
        plan = qconf.validate(cfg)
        started = time.perf_counter()
        loaded = qconf.load(plan)
        result.seconds = time.perf_counter() - started
    except Exception as exc:  # one failing backend must not hide the others
        lines = getattr(exc, "lines", None) or [f"{type(exc).__name__}: {exc}"]
        result.error = "; ".join(str(line) for line in lines)[:300]
        return result
    report = loaded.report
    result.total_bytes = report.total_bytes
    result.total_unquantized = report.total_bytes_unquantized
    result.measured_parts = tuple(report.parts)
    for name in parts:
        part = report.parts.get(name)
        if part is None:
            continue
        result.parts.append(
            PartRow(
                name,
                part.backend,
                part.params,
                part.bytes_unquantized,
                part.bytes,
                sum(part.quantized_layers.values()),
                part.layers,
            )
        )
    if estimator is not None:
        apply_estimate(result, estimator, plan)
    return result


# --------------------------------------------------------------------------------------------
# output


def _pct_error(estimate: int | None, measured: int) -> str:
    if estimate is None or not measured:
        return "-"
    error = 100 * (estimate - measured) / measured
    style = "green" if abs(error) <= 5 else "yellow" if abs(error) <= 15 else "red"
    return f"[{style}]{error:+.1f}%[/{style}]"


def render(results: list[OptionResult], estimate_status: str, with_estimate: bool) -> None:
    """One table: option x part, bytes unquantized vs measured (and estimated)."""
    table = Table(title=f"bytes per part, {MODEL} (bfloat16 load), measured after loading")
    columns = [
        "option",
        "part",
        "backend",
        "params",
        "unquantized",
        "measured",
        "ratio",
        "q-layers",
    ]
    if with_estimate:
        columns += ["estimate", "error"]
    for column in columns:
        table.add_column(
            column, justify="left" if column in ("option", "part", "backend") else "right"
        )
    for result in results:
        if result.error is not None:
            table.add_row(result.option, "-", "[red]failed (below)[/red]")
            table.add_section()
            continue
        for i, row in enumerate(result.parts):
            cells = [
                result.option if i == 0 else "",
                row.part,
                row.backend or "-",
                f"{row.params:,}",
                fmt_bytes(row.bytes_unquantized),
                fmt_bytes(row.bytes),
                f"{row.bytes / row.bytes_unquantized:.3f}" if row.bytes_unquantized else "-",
                f"{row.quantized_layers}/{row.layers}",
            ]
            if with_estimate:
                cells += [fmt_bytes(row.estimate), _pct_error(row.estimate, row.bytes)]
            table.add_row(*cells)
        total = [
            "",
            "[dim]pipeline total[/dim]",
            "",
            "",
            fmt_bytes(result.total_unquantized),
            fmt_bytes(result.total_bytes),
            f"{result.total_bytes / result.total_unquantized:.3f}",
            "",
        ]
        if with_estimate:
            total += [
                fmt_bytes(result.estimate_total),
                _pct_error(result.estimate_total, result.total_bytes),
            ]
        table.add_row(*total, style="dim")
        table.add_section()
    console.print(table)
    for result in results:
        if result.error is not None:
            console.print(f"[red]{result.option}: load failed: {result.error}[/red]")
        if result.estimate_error is not None:
            console.print(f"[red]{result.option}: estimate failed: {result.estimate_error}[/red]")
    console.print(f"estimate: {estimate_status}")
    console.print(
        "ratio = measured / unquantized for the quantized parts; q-layers = layers with quantized "
        "weights / layers with a weight. Non-Linear layers (norms, embeddings, convs) stay bf16.",
        style="dim",
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse flags, load every option, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--options",
        nargs="+",
        choices=list(OPTIONS),
        default=list(OPTIONS),
        metavar="OPTION",
        help=f"backend options to run (default: all of {', '.join(OPTIONS)})",
    )
    args = parser.parse_args(argv)
    silence_libraries()
    estimator, status = find_estimator()
    all_parts = weight_parts()
    results = []
    for option in args.options:
        targets = OPTIONS[option]
        parts = all_parts if targets == ALL_PARTS else [p for p in targets if p in all_parts]
        console.print(f"  loading {MODEL} with {option} on {', '.join(parts)}", style="dim")
        results.append(load_option(option, parts, estimator))
    render(results, status, estimator is not None)
    return 1 if all(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
