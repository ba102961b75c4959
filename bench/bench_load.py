"""Benchmark: what loading through qconf costs over the same hand-written diffusers call.

Both contenders load the built-in tiny Flux pipeline with torchao int8 weight-only on the
transformer and on the T5 text encoder (text_encoder_2), in bfloat16, in this process:

* qconf:  `qconf.load_pipeline(qconf.compose([...overrides...]))`, so its time includes
  compose, validate, resolve, the environment checks and the per-part report;
* direct: `DiffusionPipeline.from_pretrained(tiny_path, quantization_config=
  PipelineQuantizationConfig(quant_mapping={...}), dtype=torch.bfloat16)`, the config objects
  built inside the timed call too.

A third contender, `qconf.load_pipeline(cfg)` with `cfg` composed once beforehand, shows how much
of the difference is Hydra's compose. Each is warmed up (imports, the tiny pipeline's cache),
then all are timed interleaved round by round, torch on one thread by default (see --threads);
the script prints medians and the ratio qconf / direct (target: at most 1.03), then a breakdown
of qconf's own steps.

    python bench/bench_load.py [--runs 15] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable, Sequence
from typing import Any

from _common import (
    console,
    interleaved,
    median_of_ratios,
    silence_libraries,
    time_once,
    timing_table,
    verdict,
)
from rich.table import Table

TARGET = 1.03
OVERRIDES = [
    "model.source=tiny-flux",
    "quant.mapping.transformer=int8wo",
    "quant.mapping.text_encoder_2=int8wo",
]
QCONF = "qconf"
PRECOMPOSED = "qconf, pre-composed"
DIRECT = "direct"
LABELS = {
    QCONF: "qconf.load_pipeline(qconf.compose(...))  (incl. compose + validate)",
    PRECOMPOSED: "qconf.load_pipeline(cfg), cfg composed beforehand",
    DIRECT: "DiffusionPipeline.from_pretrained(..., PipelineQuantizationConfig)",
}


def qconf_load() -> Any:
    """The pipeline through qconf: compose + validate + resolve + checks + load + report."""
    import qconf

    return qconf.load_pipeline(qconf.compose(OVERRIDES))


def precomposed_loader() -> Callable[[], Any]:
    """qconf's load from a config composed once, outside the timing."""
    import qconf

    cfg = qconf.compose(OVERRIDES)
    return lambda: qconf.load_pipeline(cfg)


def direct_loader() -> Callable[[], Any]:
    """A function doing the same load by hand with diffusers (path looked up once, untimed)."""
    import diffusers
    import torch
    import transformers
    from torchao.quantization import Int8WeightOnlyConfig

    from qconf.source.tiny import tiny_pipeline_path

    path = str(tiny_pipeline_path("tiny-flux"))

    def load() -> Any:
        mapping = {
            "transformer": diffusers.TorchAoConfig(Int8WeightOnlyConfig()),
            "text_encoder_2": transformers.TorchAoConfig(Int8WeightOnlyConfig()),
        }
        return diffusers.DiffusionPipeline.from_pretrained(
            path,
            quantization_config=diffusers.PipelineQuantizationConfig(quant_mapping=mapping),
            dtype=torch.bfloat16,
        )

    return load


def quantized_layers(pipe: Any) -> dict[str, int]:
    """Number of layers per part whose weight is a quantized tensor subclass."""
    counts: dict[str, int] = {}
    for part in ("transformer", "text_encoder_2", "text_encoder", "vae"):
        for module in getattr(pipe, part).modules():
            weight = getattr(module, "weight", None)
            if weight is not None and type(weight).__name__ not in ("Parameter", "Tensor"):
                counts[part] = counts.get(part, 0) + 1
    return counts


def check_same(a: Any, b: Any) -> str:
    """A one-line sanity check that both loads quantized the same layers."""
    qa, qb = quantized_layers(a), quantized_layers(b)
    same = "same" if qa == qb else "[red]DIFFERENT[/red]"
    return f"quantized layers per part: qconf {qa}, direct {qb} ({same})"


def breakdown(runs: int) -> dict[str, float]:
    """Median seconds of qconf's own steps before from_pretrained (each timed on its own)."""
    import qconf

    cfg = qconf.compose(OVERRIDES)
    plan = qconf.validate(cfg)
    steps: dict[str, Callable[[], object]] = {
        "qconf.compose(overrides)": lambda: qconf.compose(OVERRIDES),
        "qconf.validate(cfg)": lambda: qconf.validate(cfg),
        "plan.resolve()": plan.resolve,
        "qconf.check_environment(plan)": lambda: qconf.check_environment(plan),
    }
    return {name: statistics.median(time_once(f) for _ in range(runs)) for name, f in steps.items()}


def bench(runs: int, threads: int) -> tuple[dict[str, list[float]], dict[str, float], str]:
    """Warm up every loader, then time them interleaved; then time qconf's steps."""
    silence_libraries()
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    direct = direct_loader()
    precomposed = precomposed_loader()
    sanity = check_same(qconf_load(), direct())  # warm-up of each, and a sanity check
    for action in (qconf_load, precomposed, direct, precomposed):
        action()
    actions = {QCONF: qconf_load, PRECOMPOSED: precomposed, DIRECT: direct}
    times = interleaved(actions, runs)
    return times, breakdown(max(runs, 5)), sanity


def render(times: dict[str, list[float]], steps: dict[str, float], sanity: str, runs: int) -> None:
    """Print the timing table, the ratio and the breakdown."""
    medians = {name: statistics.median(t) for name, t in times.items()}
    title = f"load tiny-flux, int8wo on transformer + text_encoder_2 ({runs} rounds)"
    table = timing_table(title, times, LABELS, DIRECT, "/ direct", unit="ms")
    console.print(table)
    ratio = medians[QCONF] / medians[DIRECT]
    paired = median_of_ratios(times[QCONF], times[DIRECT])
    console.print(
        f"ratio qconf / direct (median/median): [bold]{ratio:.3f}[/bold] "
        f"(target <= {TARGET:.2f}: {verdict(ratio, TARGET)}); median of paired ratios {paired:.3f}"
    )
    console.print(
        "note: qconf's time includes compose + validate + resolve + environment checks + the "
        "per-part report; direct's includes building the config objects. The tiny pipeline "
        "loads in tens of ms, so any fixed cost weighs far more here than on a real model.",
        style="dim",
    )
    console.print(sanity, style="dim")
    steps_table = Table(title="qconf's steps before from_pretrained (median, each on its own)")
    steps_table.add_column("step")
    steps_table.add_column("ms", justify="right")
    steps_table.add_column("% of direct load", justify="right")
    for name, seconds in steps.items():
        steps_table.add_row(name, f"{seconds * 1e3:.1f}", f"{100 * seconds / medians[DIRECT]:.1f}")
    console.print(steps_table)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse flags, run the benchmark, print the tables."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=15, help="interleaved rounds (default 15)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads for every contender (default 1: on a small shared machine "
        "busy cores make multi-threaded kernels stall; 0 = torch's default)",
    )
    args = parser.parse_args(argv)
    times, steps, sanity = bench(args.runs, args.threads)
    render(times, steps, sanity, args.runs)
    console.print(f"torch threads: {args.threads or 'torch default'}", style="dim")
    return 0


if __name__ == "__main__":
    sys.exit(main())
