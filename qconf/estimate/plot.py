"""`qconf estimate --plot`: a bar chart per part, unquantized vs the plan."""

from __future__ import annotations

from pathlib import Path

from qconf.errors import PlanError, Problem
from qconf.estimate.core import Estimate
from qconf.trust.userpath import atomic_output, user_path


def plot(result: Estimate, path: str | Path, where: str = "--plot") -> Path:
    """Bar chart per part, unquantized vs the plan, in GiB (matplotlib, Agg backend), written
    atomically (nothing is left behind if it fails)."""
    with atomic_output(path, where) as temp:  # the target is checked before drawing
        _draw(result, temp, user_path(path, where).suffix.lstrip(".") or "png", where)
    return user_path(path, where)


def _draw(result: Estimate, target: Path, file_format: str, where: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # a PlanError: an OSError would read as a failed write of the file
        raise PlanError(
            Problem(where, "matplotlib is not installed", "pip install matplotlib")
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
    try:
        figure.savefig(target, dpi=120, format=file_format)
    except ValueError as exc:  # an extension matplotlib cannot write
        raise PlanError(
            Problem(where, str(exc).splitlines()[0], "use a .png, .svg or .pdf file name")
        ) from None
    finally:
        plt.close(figure)
