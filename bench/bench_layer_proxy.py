"""Benchmark: does a cheap per-layer proxy rank the layers the way measurement does?

For each tiny pipeline (its largest part, by qconf.sensitivity.layers.largest_part) and each
backend option, every Linear the option quantizes gets:

* the weight proxy: ||dequant(Wq) - W||_F / ||W||_F (`weight_errors`, no forward pass);
* the linearized deviation: a first-order estimate of the part's output change when only that
  layer is quantized (`linearized_deviation`, one forward + `--probes` backward passes);
* the measured deviation: the part's output relative error with only that layer quantized,
  re-run on its first-call inputs from a real generation (`measured_layer_deviation`).

The first table gives Spearman's rank correlation of each proxy with the measurement, per
family x option x load dtype (a range when several run seeds are given), the second the five
layers with the largest measured deviation. Nothing is asserted; numbers are printed.

    python bench/bench_layer_proxy.py [--families tiny-flux ...] [--options int8wo ...]
                                      [--dtypes bfloat16 float32] [--seeds 0 1 2] [--probes 16]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass

from _common import console, silence_libraries
from rich.table import Table

FAMILIES = ("tiny-flux", "tiny-sd3", "tiny-wan")
OPTIONS = ("int8wo", "int4wo", "quanto-int8")
DTYPES = ("bfloat16", "float32")  # the plans' default, and one without bf16's rounding floor


@dataclass
class Result:
    family: str
    part: str
    option: str
    dtype: str
    layers: int
    rho_weights: list[float]  # one per run seed
    rho_linearized: list[float]
    measured: dict[str, float]  # of the first seed
    linearized: dict[str, float]
    weights: dict[str, float]
    skip: dict[str, str]
    seconds_measured: float
    seconds_linearized: float


def run_one(
    family: str, option: str, dtype: str, seeds: Sequence[int], probes: int
) -> Result | str:
    """Every layer's three numbers for one family x option x dtype; an error text if it fails."""
    import qconf
    from qconf.sensitivity import layers as L

    plan = qconf.validate(qconf.compose([f"model={family}"]))
    part = L.largest_part(plan)
    base = [f"model={family}", "run.steps=1", f"model.torch_dtype={dtype}"]
    try:
        errors = L.weight_errors(base, part, option)
    except Exception as exc:  # an option that cannot run here: reported, not fatal
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:100]}"
    weights = {name: e.rel_error for name, e in errors.items()}
    rho_w, rho_l, first = [], [], None
    t_measured = t_linearized = 0.0
    for seed in seeds:
        captured = L.capture_part([*base, f"run.seed={seed}"], part)
        started = time.perf_counter()
        measured = L.measured_layer_deviation(base, part, option, errors, captured=captured)
        t_measured += time.perf_counter() - started
        started = time.perf_counter()
        linear = L.linearized_deviation(
            base, part, option, errors, captured=captured, probes=probes
        )
        t_linearized += time.perf_counter() - started
        rho_w.append(L.spearman(weights, measured))
        rho_l.append(L.spearman(linear, measured))
        first = first or (measured, linear)
    assert first is not None
    return Result(
        family, part, option, dtype, len(errors), rho_w, rho_l, *first, weights,
        {name: e.skip_name for name, e in errors.items()},
        t_measured / len(seeds), t_linearized / len(seeds),
    )  # fmt: skip


def _rho(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:+.3f}"
    return f"{min(values):+.3f} .. {max(values):+.3f}"


def spearman_table(results: list[Result], failures: dict[str, str], seeds: Sequence[int]) -> Table:
    seeds_text = ", ".join(map(str, seeds))
    table = Table(
        title=f"Spearman of each proxy with the measured deviation (run seeds {seeds_text})"
    )
    columns = ("family", "part", "option", "dtype", "layers", "rho weight proxy",
               "rho linearized", "measured min .. max", "s measured", "s linearized")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column in ("family", "part") else "right")
    for r in results:
        low, high = min(r.measured.values()), max(r.measured.values())
        table.add_row(
            r.family, r.part, r.option, r.dtype, str(r.layers), _rho(r.rho_weights),
            _rho(r.rho_linearized), f"{low:.2g} .. {high:.2g}",
            f"{r.seconds_measured:.1f}", f"{r.seconds_linearized:.1f}",
        )  # fmt: skip
    for key, why in failures.items():
        table.add_row(*key.split("|"), "-", "-", f"[yellow]{why}[/yellow]", "", "", "", "")
    return table


def top_table(results: list[Result], dtype: str, k: int = 5) -> Table:
    table = Table(title=f"Top {k} layers by measured deviation ({dtype})")
    numbers = ("measured", "linearized", "weight err")
    for column in ("family", "option", "layer", *numbers, "skip entry"):
        table.add_column(column, justify="right" if column in numbers else "left")
    for r in (r for r in results if r.dtype == dtype):
        top = sorted(r.measured, key=lambda n: (-r.measured[n], n))[:k]
        for i, name in enumerate(top):
            table.add_row(
                r.family if i == 0 else "", r.option if i == 0 else "", name,
                f"{r.measured[name]:.4f}", f"{r.linearized[name]:.4f}",
                f"{r.weights[name]:.4f}", r.skip[name],
            )  # fmt: skip
        table.add_section()
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES))
    parser.add_argument("--options", nargs="+", default=list(OPTIONS))
    parser.add_argument("--dtypes", nargs="+", default=list(DTYPES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--probes", type=int, default=16)
    args = parser.parse_args(argv)
    silence_libraries()
    results: list[Result] = []
    failures: dict[str, str] = {}
    for family in args.families:
        for dtype in args.dtypes:
            for option in args.options:
                started = time.perf_counter()
                outcome = run_one(family, option, dtype, args.seeds, args.probes)
                console.print(
                    f"  {family} {option} {dtype}: {time.perf_counter() - started:.1f} s",
                    style="dim",
                )
                if isinstance(outcome, str):
                    failures[f"{family}|?|{option}|{dtype}"] = outcome
                else:
                    results.append(outcome)
    console.print(spearman_table(results, failures, args.seeds))
    for dtype in args.dtypes:
        console.print(top_table(results, dtype))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
