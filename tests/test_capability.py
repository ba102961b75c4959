"""validate OK ⇒ the part runs here; validate refuses a known failure ⇒ the part really fails.

Every backend option × every weight-bearing part of the tiny families: the part alone quantized
through qconf's load façade and run forward once on the inputs it gets in a real generation
(the capability table's rows live in qconf/backends/<backend>.py `known_failures`; the walk that
measures them is qconf.sensitivity.capability_walk, which these tests share). bitsandbytes on
diffusers parts and the CUDA-only options are refused here for want of a GPU: no forward."""

from __future__ import annotations

import subprocess
import sys

import pytest

import qconf
from qconf.backends import REGISTRY, known_failure
from qconf.cli.main import main
from qconf.plan.conftree import backend_options
from qconf.sensitivity.capability_walk import FAMILIES, Cell, Family, capture, measure

OPTIONS = sorted(backend_options())
DTYPE = "bfloat16"  # the plan's default load dtype (the walk measures the others)


class Walked:
    """Cells measured so far in this module: a part whose weights equal one already measured
    (the tiny families share encoders and VAEs) reuses that forward."""

    def __init__(self) -> None:
        self.done: dict[tuple[str, str, str], Cell] = {}
        self.cells: dict[str, list[Cell]] = {}

    def family(self, name: str) -> list[Cell]:
        if name not in self.cells:
            family: Family = capture(name, DTYPE)
            self.cells[name] = [measure(family, name, part, option, DTYPE, self.done)
                                for part in family.calls for option in OPTIONS]  # fmt: skip
        return self.cells[name]


@pytest.fixture(scope="module")
def walked() -> Walked:
    return Walked()


@pytest.mark.parametrize("family", FAMILIES)
def test_validate_and_a_real_forward_agree(walked: Walked, family: str) -> None:
    cells = walked.family(family)
    plan = qconf.intake(overrides=[f"model={family}"])
    assert {c.part for c in cells} == set(plan.resolve().components)  # every part was called
    disagree = [
        f"{c.part} ({c.part_class}) {c.option}: validate says {c.refusal or 'OK'}, "
        f"the forward {c.outcome}: {c.detail}"
        for c in cells
        if not c.agrees
    ]
    assert not disagree, "\n".join(disagree)
    for c in cells:  # a known failure is refused in one line naming the part's class
        if known_failure(c.entry, c.part_class, c.device, DTYPE) is not None:  # type: ignore[arg-type]
            assert c.refusal is not None and "\n" not in c.refusal, c
            assert f"({c.part_class}) fails on {c.device.upper()}" in c.refusal, c.refusal


def test_every_cpu_row_of_the_table_is_measured(walked: Walked) -> None:
    """Each row for this dtype was hit by a cell that failed for real (no stale rows), and
    nothing runs that the refusals would have hidden (both ways, table-wide)."""
    cells = [c for name in FAMILIES for c in walked.family(name)]
    hit = {
        row
        for c in cells
        if (row := known_failure(c.entry, c.part_class, "cpu", DTYPE)) is not None
        and c.outcome in ("fails", "non-finite")
    }
    rows = {
        row
        for spec in REGISTRY.values()
        for row in spec.known_failures
        if row.device == "cpu" and DTYPE in row.dtypes
    }
    assert rows and rows <= hit, rows - hit
    assert sum(c.outcome == "ok" for c in cells) > 100  # the other direction is exercised too


def test_known_failure_is_one_line_with_a_working_alternative(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["validate", "quant.mapping.vae=quanto-int8"]) == 2
    out, err = capsys.readouterr()
    assert err.splitlines() == [
        "error: quant.mapping.vae: quanto-int8 on 'vae' (AutoencoderKL) fails on CPU in "
        "bfloat16: RuntimeError: _weight_int8pack_mm_cpu : A must be contiguous on the last "
        "dimension — use quanto-float8, quanto-int4, float8wo (they run on AutoencoderKL "
        "here), or set model.torch_dtype=float16 or float32"
    ]
    assert main(["validate", "quant.mapping.vae=quanto-float8"]) == 0  # the alternative
    assert main(["validate", "quant.mapping.vae=quanto-int8", "model.torch_dtype=float32"]) == 0


def test_global_mode_names_the_part_and_how_to_leave_it_out() -> None:
    plan = qconf.validate(qconf.compose(["quant.backend=quanto"]))
    with pytest.raises(qconf.BackendUnavailableError) as caught:
        qconf.check_environment(plan)
    (line,) = caught.value.lines
    assert line.startswith("quant.backend: quanto int8 on 'vae' (AutoencoderKL) fails on CPU")
    assert "leave 'vae' out of quant.components" in line
    components = "quant.components=[transformer,text_encoder,text_encoder_2]"
    qconf.check_environment(qconf.validate(qconf.compose(["quant.backend=quanto", components])))


def test_the_refusal_needs_no_torch() -> None:
    code = (
        "import sys\nfrom qconf.cli.main import main\n"
        "rc = main(['validate', 'quant.mapping.vae=quanto-int8'])\n"
        "print(rc, {'torch', 'diffusers', 'transformers'} & set(sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.split() == ["2", "set()"], result
    assert "fails on CPU" in result.stderr


def test_what_was_not_measured_is_not_refused() -> None:
    """Rows match by class name, device and load dtype: the library's default dtype (None)
    and CUDA match none (nothing measured there)."""
    entry = qconf.validate(qconf.compose(["quant.mapping.vae=quanto-int8"])).quant.mapping["vae"]
    assert known_failure(entry, "AutoencoderKL", "cpu", "bfloat16") is not None
    assert known_failure(entry, "AutoencoderKL", "cpu", None) is None
    assert known_failure(entry, "AutoencoderKL", "cuda", "bfloat16") is None
    assert known_failure(entry, "UNet2DConditionModel", "cpu", "bfloat16") is None
