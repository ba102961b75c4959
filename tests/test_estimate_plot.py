"""`qconf estimate --plot` (qconf/estimate/plot.py) on a hand-made estimate: the figure that was
drawn is read back (its bars, labels and title), the written file is checked for its format and
pixel size, and its failures are one user-error line each. No model is built."""

from __future__ import annotations

import struct
import sys
from pathlib import Path
from typing import Any

import pytest

from qconf.errors import PlanError, QconfError
from qconf.estimate.core import Estimate, PartEstimate
from qconf.estimate.plot import plot

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
plt = pytest.importorskip("matplotlib.pyplot")  # imported at collection: paid once under mutmut

GIB = 2**30


def _estimate() -> Estimate:
    parts = {
        "transformer": PartEstimate(
            "transformer", "diffusers", "X", "torchao", 1, 8 * GIB, 2 * GIB
        ),
        "vae": PartEstimate("vae", "diffusers", "Y", None, 1, GIB // 2, GIB // 2),
    }
    return Estimate("FluxPipeline", "/nowhere", "bfloat16", parts)


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The figures plot() closes (it closes each one it draws)."""
    figures: list[Any] = []
    close = plt.close

    def keep(figure: Any = None) -> None:
        figures.append(figure)
        close(figure)

    monkeypatch.setattr(plt, "close", keep)
    return figures


def test_bars_labels_and_title(tmp_path: Path, drawn: list[Any]) -> None:
    target = tmp_path / "est.png"
    assert plot(_estimate(), target) == target
    assert target.is_file() and not list(tmp_path.glob(".*"))  # no temporary left
    (figure,) = drawn
    (axes,) = figure.axes
    names = ["transformer", "vae", "total"]
    assert [t.get_text() for t in axes.get_xticklabels()] == names
    assert all(t.get_rotation() == 20 for t in axes.get_xticklabels())
    assert list(axes.get_xticks()) == [0, 1, 2]
    bars = axes.patches
    assert len(bars) == 6
    before, after = bars[:3], bars[3:]
    assert [b.get_height() for b in before] == [8.0, 0.5, 8.5]
    assert [b.get_height() for b in after] == [2.0, 0.5, 2.5]
    assert [round(b.get_x() + b.get_width() / 2, 6) for b in before] == [-0.2, 0.8, 1.8]
    assert [round(b.get_x() + b.get_width() / 2, 6) for b in after] == [0.2, 1.2, 2.2]
    assert {round(b.get_width(), 6) for b in bars} == {0.4}
    legend = [t.get_text() for t in axes.get_legend().get_texts()]
    assert legend == ["unquantized (bfloat16)", "plan"]
    notes = [(t.get_text(), t.xy) for t in axes.texts]
    assert [text for text, _ in notes] == ["2.00", "0.50", "2.50"]
    assert [tuple(round(v, 6) for v in xy) for _, xy in notes] == [
        (0.2, 2.0),
        (1.2, 0.5),
        (2.2, 2.5),
    ]
    assert {(t.get_ha(), t.get_va(), t.get_fontsize()) for t in axes.texts} == {
        ("center", "bottom", 8)
    }
    assert axes.get_ylabel() == "GiB"
    assert axes.get_title() == "FluxPipeline: estimated weight memory"
    # 1.6 inches per bar pair plus 2, by 4.5 inches, at 120 dpi
    width, height = struct.unpack(">II", target.read_bytes()[16:24])
    assert (width, height) == (round((1.6 * 3 + 2) * 120), round(4.5 * 120))


def test_the_file_name_picks_the_format(tmp_path: Path, drawn: list[Any]) -> None:
    svg = plot(_estimate(), tmp_path / "est.svg")
    assert svg.read_text().lstrip().startswith("<?xml")
    bare = plot(_estimate(), tmp_path / "est")  # no suffix: PNG
    assert bare.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_format_matplotlib_cannot_write_is_one_user_error(
    tmp_path: Path, drawn: list[Any]
) -> None:
    with pytest.raises(PlanError) as caught:
        plot(_estimate(), tmp_path / "est.nope")
    (problem,) = caught.value.problems
    assert problem.where == "--plot"
    assert "nope" in problem.what and "\n" not in problem.what
    assert problem.fix == "use a .png, .svg or .pdf file name"
    assert not list(tmp_path.iterdir())  # nothing left behind
    assert len(drawn) == 1  # the figure is closed even so
    with pytest.raises(PlanError) as caught:  # the caller's name for the flag
        plot(_estimate(), tmp_path / "est.nope", where="tune --plot")
    assert caught.value.problems[0].where == "tune --plot"


def test_without_matplotlib_it_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    # one line saying what is missing (not wrapped as a failed write of the file)
    with pytest.raises(QconfError) as caught:
        plot(_estimate(), tmp_path / "est.png", where="sensitivity --plot")
    assert caught.value.lines == [
        "sensitivity --plot: matplotlib is not installed — pip install matplotlib"
    ]
    assert not list(tmp_path.iterdir())


def test_a_target_that_cannot_be_written_is_refused_at_the_callers_flag(
    tmp_path: Path, drawn: list[Any]
) -> None:
    """The target is checked before anything is drawn, and the line names the caller's flag."""
    with pytest.raises(PlanError) as caught:
        plot(_estimate(), tmp_path / "missing" / "est.png", where="tune --plot")
    (problem,) = caught.value.problems
    assert problem.where == "tune --plot"
    assert drawn == [] and not list(tmp_path.iterdir())
