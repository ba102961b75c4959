"""`qconf estimate --plot`: a bar chart per part, unquantized vs the plan."""

from __future__ import annotations

from pathlib import Path

from qconf.errors import ModelSourceError, Problem
from qconf.estimate.core import Estimate


def plot(result: Estimate, path: str | Path) -> Path:
    """Bar chart per part, unquantized vs the plan, in GiB (matplotlib, Agg backend)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ModelSourceError(
            Problem("--plot", "matplotlib is not installed", "pip install matplotlib")
        ) from None
    names = [*result.parts, "total"]
    before = [p.bytes_unquantized / 2**30 for p in result.parts.values()]
    after = [p.bytes / 2**30 for p in result.parts.values()]
    before.append(result.total_bytes_unquantized / 2**30)
    after.append(result.total_bytes / 2**30)
    figure, axes = plt.subplots(figsize=(1.6 * len(names) + 2, 4.5))
    xs = range(len(names))
    axes.bar([x - 0.2 for x in xs], before, 0.4, label=f"unquantized ({result.torch_dtype})")
    axes.bar([x + 0.2 for x in xs], after, 0.4, label="plan")
    for x, value in zip(xs, after, strict=True):
        axes.annotate(f"{value:.2f}", (x + 0.2, value), ha="center", va="bottom", fontsize=8)
    axes.set_xticks(list(xs), names, rotation=20)
    axes.set_ylabel("GiB")
    axes.set_title(f"{result.pipeline}: estimated weight memory")
    axes.legend()
    figure.tight_layout()
    target = Path(path)
    figure.savefig(target, dpi=120)
    plt.close(figure)
    return target
