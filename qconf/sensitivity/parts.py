"""Part-level sensitivity: each weight-bearing part quantized alone under each option that can
run here, against the unquantized pipeline on the plan's prompts and seeds. Two measures per
cell: the part's own output on its first call (same inputs as unquantized, see capture.py) and
the end image (PSNR/SSIM, the compare metrics). Cached per cell (cache.py)."""

from __future__ import annotations

import gc
import math
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Literal

from qconf.errors import PlanError, Problem, QconfError
from qconf.quiet import no_progress_bars
from qconf.sensitivity import cache
from qconf.sensitivity.cache import (
    ByteCount,
    Mse,
    Name,
    NonNegative,
    Psnr,
    Similarity,
    Text,
)
from qconf.source.video import measuring_run

CLEAR_QUANT = ["quant.backend=null", "quant.kwargs={}", "quant.components=null",
               "quant.mapping={}"]  # fmt: skip
KIND = "parts-v2"  # cache folder; bump when the measurement or the entry's format changes


@dataclass
class Cell:
    """One part under one option, every other part unquantized. The annotations bound what a
    cached cell may hold (read back from a folder others may write, see cache.py)."""

    part: Name
    option: Name
    status: Literal["ok", "not here", "failed"]  # "not here": cannot run here; "failed": broke
    reason: Text = ""
    bytes: ByteCount = 0  # estimated weights of the part under the option
    bytes_unquantized: ByteCount = 0
    part_rel_error: NonNegative | None = None  # the part's first-call output vs unquantized
    part_cosine: Similarity | None = None
    image_mse: Mse | None = None  # mean over images, pixels in 0..1
    image_psnr: Psnr | None = None
    image_ssim: Similarity | None = None
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class Setting:
    """What every measurement of one sensitivity run shares."""

    overrides: list[str]  # the user's typed ones (quantization is cleared after them)
    config_dir: str | None
    plan: Any  # the unquantized Plan
    fingerprint: dict[str, Any]
    versions: dict[str, str | None]
    plan_file: str | None = None  # the user's --plan, kept apart from the typed overrides

    def plan_of(self, overrides: list[str]) -> Any:
        """The checked Plan of `overrides` on top of the plan file (through the intake)."""
        from qconf.plan.intake import intake

        return intake(overrides=overrides, plan_file=self.plan_file, config_dir=self.config_dir)

    def composed(self, overrides: list[str]) -> Any:
        """The composed DictConfig of `overrides` on top of the plan file (see `take`)."""
        from qconf.plan.intake import compose_plan

        return compose_plan(overrides, plan_file=self.plan_file, config_dir=self.config_dir)

    def cfg(self, *extra: str) -> Any:
        """The user's plan, quantization cleared, then `extra` (a checked Plan)."""
        return self.plan_of([*self.overrides, *CLEAR_QUANT, *extra])

    def cell_key(self, part: str, entry: Any) -> str:
        return cache.key(kind=KIND, model=self.fingerprint, part=part, entry=entry,
                         run=measuring_run(self.plan).model_dump(mode="json"),
                         dtype=self.plan.model.torch_dtype, versions=self.versions)  # fmt: skip


def setting(
    overrides: list[str],
    config_dir: str | None = None,
    *,
    plan_file: str | None = None,
    plan: Any = None,
) -> Setting:
    """`plan`: the unquantized Plan of these arguments when the caller has it already."""
    from qconf.plan.intake import intake

    if plan is None:
        overrides_ = [*overrides, *CLEAR_QUANT]
        plan = intake(overrides=overrides_, plan_file=plan_file, config_dir=config_dir)
    folder = plan.source.local_folder()
    fingerprint = cache.model_fingerprint(plan.model.source, folder)
    return Setting(
        list(overrides), config_dir, plan, fingerprint, cache.library_versions(), plan_file
    )


def weight_bearing_parts(plan: Any) -> list[str]:
    return list(plan.resolve().components)


def measure_parts(
    where: Setting,
    options: list[str],
    parts: list[str] | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> list[Cell]:
    """Every (part, option) cell: from the cache, else measured (one reference load)."""
    parts = parts or weight_bearing_parts(where.plan)
    cells: list[Cell] = []
    todo: list[tuple[Cell, Any, str]] = []
    for part in parts:
        for option in options:
            cell, plan = _runnable(where, part, option)
            if plan is None:
                cells.append(cell)
                continue
            entry = plan.resolve().components[part].entry.model_dump(mode="json")
            name = where.cell_key(part, entry)
            hit = cache.read(KIND, name, Cell)
            mismatch = None if hit is None else _mismatch(hit, cell)
            if hit is not None and mismatch is None:
                hit.cached = True
                cells.append(hit)
                continue
            if mismatch is not None:
                cache.notice(KIND, name, mismatch)
            cells.append(cell)
            todo.append((cell, plan, name))
    if all(c.status == "not here" for c in cells):
        raise PlanError(nothing_runs(cells))
    if not todo:
        return cells
    with _reference(where) as reference:
        for done, (cell, plan, name) in enumerate(todo):
            if progress is not None:
                progress(done, len(todo), f"{cell.part} {cell.option}")
            _measure(where, reference, cell, plan)
            entry = {k: v for k, v in asdict(cell).items() if k != "cached"}
            cache.write(KIND, name, entry, Cell)
        if progress is not None:
            progress(len(todo), len(todo), "")
    return cells


def nothing_runs(cells: list[Cell]) -> Problem:
    """One line: no option asked for can run on any part asked for, on this machine."""
    reasons = list(dict.fromkeys(f"{c.option} on {c.part}: {c.reason}" for c in cells))
    shown = "; ".join(reasons[:2]) + (f"; and {len(reasons) - 2} more" if len(reasons) > 2 else "")
    return Problem("--options", f"nothing to measure: no option runs here ({shown})",
                   "pick options that run on this machine (qconf list options), or --parts "
                   "they run on")  # fmt: skip


def _mismatch(hit: Cell, fresh: Cell) -> str | None:
    """Why a cached cell cannot be this cell, or None. Its bytes must be what the estimator says
    now (tune adds them up against the budget), an `ok` cell must hold every measure, and its
    PSNR must be its MSE's (tune ranks by the MSE, tables show the PSNR)."""
    if (hit.part, hit.option) != (fresh.part, fresh.option):
        return f"is for {hit.part}={hit.option}, not {fresh.part}={fresh.option}"
    if (hit.bytes, hit.bytes_unquantized) != (fresh.bytes, fresh.bytes_unquantized):
        return (f"says {hit.bytes:,} of {hit.bytes_unquantized:,} bytes; the estimator says "
                f"{fresh.bytes:,} of {fresh.bytes_unquantized:,}")  # fmt: skip
    if hit.status == "not here":  # decided afresh on each run, never cached
        return "says the option cannot run here"
    if not hit.ok:
        return None
    measures = (hit.part_rel_error, hit.part_cosine, hit.image_mse, hit.image_psnr,
                hit.image_ssim)  # fmt: skip
    if any(value is None for value in measures):
        return "is marked ok but lacks a measure"
    if not math.isclose(psnr_of(hit.image_mse or 0.0), hit.image_psnr or 0.0, rel_tol=1e-9):
        return "holds a PSNR that is not its MSE's"
    return None


def _runnable(where: Setting, part: str, option: str) -> tuple[Cell, Any]:
    """The cell and its plan, or a `not here` cell (with why) and None."""
    import qconf
    from qconf.estimate import estimate

    cell = Cell(part, option, "ok")
    try:
        plan = where.cfg(f"quant.mapping.{part}={option}")
        qconf.check_environment(plan)
        estimated = estimate(plan).parts[part]
    except QconfError as exc:
        cell.status, cell.reason = "not here", exc.problems[0].what
        return cell, None
    cell.bytes, cell.bytes_unquantized = estimated.bytes, estimated.bytes_unquantized
    return cell, plan


@dataclass
class _Reference:
    pipeline: Any
    outputs: dict[str, Any]  # part -> first-call output
    images: list[Any]  # tensors [1, 3, H, W] in 0..1


@contextmanager
def _reference(where: Setting) -> Iterator[_Reference]:
    import qconf
    from qconf.compare.metrics import generated_tensor
    from qconf.run.generate import generate
    from qconf.sensitivity.capture import first_call

    no_progress_bars()
    with qconf.quiet():
        loaded = qconf.load(where.cfg())
    pipeline = loaded.pipeline
    pipeline.set_progress_bar_config(disable=True)
    with ExitStack() as stack:
        records = {p: stack.enter_context(first_call(getattr(pipeline, p)))
                   for p in weight_bearing_parts(where.plan)}  # fmt: skip
        images = [generated_tensor(g) for g in generate(pipeline, measuring_run(where.plan))]
    try:
        yield _Reference(pipeline, {p: r.output for p, r in records.items()}, images)
    finally:
        del pipeline, loaded
        gc.collect()


def _measure(where: Setting, reference: _Reference, cell: Cell, plan: Any) -> None:
    import qconf
    from qconf.compare.metrics import deviation, generated_tensor
    from qconf.run.generate import generate
    from qconf.sensitivity.capture import first_call, output_deviation

    pipeline = reference.pipeline
    original = getattr(pipeline, cell.part)
    try:
        with qconf.quiet():
            module = qconf.load_part(plan, cell.part)
        _to_device(module, original)
        setattr(pipeline, cell.part, module)
        with first_call(module) as record:
            images = [generated_tensor(g) for g in generate(pipeline, measuring_run(where.plan))]
    except (RuntimeError, ValueError, TypeError, NotImplementedError) as exc:
        cell.status = "failed"
        cell.reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
        return
    finally:
        setattr(pipeline, cell.part, original)
        gc.collect()
    part = output_deviation(record.output, reference.outputs[cell.part])
    cell.part_rel_error, cell.part_cosine = part["rel_error"], part["cosine"]
    scores = [deviation(image, ref) for image, ref in zip(images, reference.images, strict=True)]
    mses = [0.0 if math.isinf(psnr) else 10 ** (-psnr / 10) for psnr, _ in scores]
    cell.image_mse = sum(mses) / len(mses)
    cell.image_psnr = psnr_of(cell.image_mse)
    cell.image_ssim = sum(ssim for _, ssim in scores) / len(scores)
    if _non_finite(cell):  # NaN ranks nothing, and the cache would refuse the entry
        cell.status, cell.reason = "failed", "non-finite output (NaN or inf) under this option"
        cell.part_rel_error = cell.part_cosine = cell.image_mse = None
        cell.image_psnr = cell.image_ssim = None


def _non_finite(cell: Cell) -> bool:
    """A measure that is NaN or infinite (PSNR may be inf: identical images)."""
    values = (cell.part_rel_error, cell.part_cosine, cell.image_mse, cell.image_ssim)
    psnr = cell.image_psnr
    return any(not math.isfinite(v) for v in values if v is not None) or (
        psnr is not None and math.isnan(psnr)
    )


def psnr_of(mse: float) -> float:
    """PSNR in dB of a mean squared error on pixels in 0..1 (inf for 0)."""
    return math.inf if mse <= 0 else -10 * math.log10(mse)


def _to_device(module: Any, like: Any) -> None:
    """Put the quantized part where the part it replaces lives (a GPU pipeline)."""
    target = next((p.device for p in like.parameters()), None)
    current = next((p.device for p in module.parameters()), None)
    if target is not None and current is not None and target != current:
        module.to(target)
