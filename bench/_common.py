"""Shared helpers for the benchmarks: paired, interleaved timing and quiet heavy imports.

The machine the benchmarks run on is noisy (2 cores, other jobs), so every benchmark times its
two contenders in pairs, alternating which one goes first, and compares medians measured in the
same run. Nothing here asserts on time: the scripts print numbers and ratios only.
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console

# Piped output (run_all, CI logs) would otherwise be cut at 80 columns and wrap the tables.
console = Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 140)


def median_of_ratios(times_a: list[float], times_b: list[float]) -> float:
    """Median over rounds of a_i / b_i: robust to slow drift of the machine's speed."""
    return statistics.median(a / b for a, b in zip(times_a, times_b, strict=True))


def time_once(action: Callable[[], object]) -> float:
    """Seconds one call of `action` takes (garbage collected first, outside the timing)."""
    gc.collect()
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def interleaved(
    actions: dict[str, Callable[[], object]], runs: int, progress: bool = True
) -> dict[str, list[float]]:
    """Time every action `runs` times, round by round; the order rotates each round (a b c,
    b c a, ...) so that a trend in the machine's speed hits all of them equally."""
    names = list(actions)
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(runs):
        shift = i % len(names)
        for name in names[shift:] + names[:shift]:
            times[name].append(time_once(actions[name]))
        if progress:
            done = ", ".join(f"{name} {times[name][-1]:.3f} s" for name in names)
            console.print(f"  round {i + 1}/{runs}: {done}", style="dim")
    return times


@contextlib.contextmanager
def quiet_imports() -> Iterator[None]:
    """Swallow the harmless import noise of the stack (torchao's CUDA .so messages, torch pytree
    enum warnings, bitsandbytes/diffusers notices) while heavy modules are first imported."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        try:
            with (
                contextlib.redirect_stderr(io.StringIO()),
                contextlib.redirect_stdout(io.StringIO()),
            ):
                yield
        finally:
            logging.disable(logging.NOTSET)


def silence_libraries() -> None:
    """Import torch/diffusers/transformers quietly, turn off their progress bars and set their
    loggers to errors only, so the benchmark tables are readable."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    warnings.filterwarnings("ignore")
    with quiet_imports():
        import diffusers
        import torch  # noqa: F401
        import transformers

        with contextlib.suppress(ImportError):
            import torchao  # noqa: F401
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("torch").setLevel(logging.ERROR)


def fmt_bytes(n: float | None) -> str:
    """Bytes in KiB with one decimal (the tiny pipelines are KiB-sized); '-' for None."""
    if n is None:
        return "-"
    return f"{n / 1024:,.1f} KiB"


def timing_table(
    title: str,
    times: dict[str, list[float]],
    labels: dict[str, str],
    baseline: str,
    ratio_column: str,
    unit: str = "s",
) -> Any:
    """Median/min/max per contender and its median over the baseline's (a rich Table)."""
    from rich.table import Table

    scale = {"s": 1.0, "ms": 1e3}[unit]
    medians = {name: statistics.median(t) for name, t in times.items()}
    table = Table(title=title)
    first = "command" if unit == "s" else "loader"
    for column in (first, f"median {unit}", f"min {unit}", f"max {unit}", ratio_column):
        table.add_column(column, justify="left" if column == first else "right")
    digits = 3 if unit == "s" else 1
    for name, values in times.items():
        table.add_row(
            labels[name],
            f"{medians[name] * scale:.{digits}f}",
            f"{min(values) * scale:.{digits}f}",
            f"{max(values) * scale:.{digits}f}",
            f"{medians[name] / medians[baseline]:.3f}",
        )
    return table


def verdict(value: float, target: float) -> str:
    """A coloured 'meets'/'misses' marker for a ratio that should be at most `target`."""
    return "[green]meets[/green]" if value <= target else "[red]misses[/red]"
