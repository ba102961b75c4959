"""Measure the capability table: every backend option × every weight-bearing part of the tiny
families, one part quantized at a time through qconf's load façade and run forward once on the
inputs it gets in a real generation (qconf.sensitivity.capture), next to what validate says.

    python -m qconf.sensitivity.capability_walk [--families tiny-flux,...] [--options int8wo,...]
        [--dtypes bfloat16,float16,float32] [overrides...]

prints one table per load dtype (`ok`, `FAIL`, `NaN`, `gpu` = refused: needs a CUDA GPU, `=` =
nothing quantized), the failures as `KnownFailure` rows for the backend modules, and every cell
where validate and the forward disagree (exit 1 then). tests/test_capability.py runs the same
cells in the plan's default dtype. It only measures: it calls the load façade and the capture,
and nothing in qconf imports it (validate reads the rows, never this module)."""

from __future__ import annotations

import argparse
import gc
import hashlib
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

FAMILIES = ("tiny-flux", "tiny-sd", "tiny-sd3", "tiny-sdxl", "tiny-wan", "tiny-wan22", "tiny-ltx")
Outcome = Literal["ok", "fails", "non-finite", "unchanged"]
_HASHED_BYTES = 64 * 2**20  # weights up to this size are hashed to find identical parts


@dataclass
class Family:
    """One model's unquantized first calls, captured in one generation."""

    plan: Any  # the unquantized Plan: model and dtype (and the caller's extra overrides)
    calls: dict[str, Any]  # part -> FirstCall (inputs kept)
    classes: dict[str, str]  # part -> class name
    digests: dict[str, str]  # part -> its weights' digest (equal digests: the same module)


@dataclass
class Cell:
    family: str
    part: str
    part_class: str
    option: str
    dtype: str
    refusal: str | None  # validate's first problem (None: validate says OK)
    needs_gpu: bool  # the refusal is "needs a CUDA GPU" (no forward on this machine)
    entry: Any  # the part's resolved backend entry
    device: str  # where the part computes (qconf.loading.environment.run_device)
    outcome: Outcome | None = None  # None: not run (refused for a GPU, or another refusal)
    detail: str = ""  # the error's first line
    same_as: str = ""  # "<family>/<part>": the byte-identical part whose forward this reuses
    seconds: float = 0.0

    @property
    def agrees(self) -> bool:
        """validate OK ⇒ the forward works; a known-failure refusal ⇒ it really fails."""
        if self.outcome is None:
            return self.refusal is not None
        works = self.outcome in ("ok", "unchanged")
        return works == (self.refusal is None)


def plan_overrides(family: str, dtype: str, extra: Iterable[str] = ()) -> list[str]:
    return [f"model={family}", f"model.torch_dtype={dtype}", *extra]


def capture(family: str, dtype: str, extra: Iterable[str] = ()) -> Family:
    """Load `family` unquantized and record every weight-bearing part's first call (inputs and
    output) in one generation of the plan's run."""
    import torch

    import qconf
    from qconf.quiet import no_progress_bars
    from qconf.run.generate import generate
    from qconf.sensitivity.capture import first_call
    from qconf.source.video import measuring_run

    no_progress_bars()
    plan = qconf.intake(overrides=plan_overrides(family, dtype, extra))
    with qconf.quiet():
        pipeline = qconf.load(plan).pipeline
    pipeline.set_progress_bar_config(disable=True)
    parts = list(plan.resolve().components)
    with ExitStack() as stack, torch.no_grad():
        calls = {p: stack.enter_context(first_call(getattr(pipeline, p), keep_inputs=True))
                 for p in parts}  # fmt: skip
        generate(pipeline, measuring_run(plan))  # a video on a few frames, as sensitivity does
    folder = plan.source.local_folder()
    classes = {p: plan.parts().parts[p].class_name for p in parts}
    digests = {p: _digest(folder, p) for p in parts}
    del pipeline
    gc.collect()
    return Family(plan, {p: calls[p] for p in parts if calls[p].seen}, classes, digests)


def _digest(folder: Path | None, part: str) -> str:
    """Equal for byte-identical weights (the tiny families share some parts); else the path."""
    files = sorted((folder / part).glob("*.safetensors")) if folder is not None else []
    if not files or sum(f.stat().st_size for f in files) > _HASHED_BYTES:
        return f"{folder}/{part}"
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.read_bytes())
    return digest.hexdigest()


def verdict(family: Family, part: str, option: str) -> tuple[str | None, bool, Any, str]:
    """What `qconf validate` says about `part` alone under `option`: its first problem (None:
    OK), whether that is "needs a CUDA GPU", the part's entry and the device it computes on."""
    import qconf
    from qconf.loading.environment import cuda_available, run_device
    from qconf.sensitivity.layers import part_cfg

    resolved = qconf.validate(part_cfg(family.plan, part, option)).resolve()
    quantized = resolved.components[part]
    assert quantized is not None, f"{option} leaves {part} unquantized"
    try:
        qconf.check_environment(resolved.plan)
    except qconf.QconfError as exc:
        gpu = quantized.entry.cuda_reason(quantized.library) is not None and not cuda_available()
        return str(exc.problems[0]), gpu, quantized.entry, run_device(resolved)
    return None, False, quantized.entry, run_device(resolved)


def forward(family: Family, part: str, option: str) -> tuple[Outcome, str]:
    """Load `part` alone under `option` (known failures not refused: this measures them) and run
    its first call again. A part whose weights the option leaves as they were ("unchanged",
    e.g. a VAE without Linear layers) is not run: its forward is the one the capture ran."""
    import torch

    import qconf
    from qconf.backends.capabilities import known_failures_ignored
    from qconf.sensitivity.capture import entry_point, first_tensor
    from qconf.sensitivity.layers import part_cfg

    call = family.calls[part]
    try:
        with known_failures_ignored(), qconf.quiet():
            module = qconf.load_part(part_cfg(family.plan, part, option), part)
        if not _quantized(module):
            return "unchanged", "nothing quantized"
        # bitsandbytes places a diffusers part on the GPU whatever the pipeline's device
        device = next(module.parameters()).device
        args, kwargs = _moved(call.args, device), _moved(call.kwargs, device)
        with torch.no_grad(), qconf.quiet():
            output = first_tensor(getattr(module, entry_point(module))(*args, **kwargs))
    except Exception as exc:  # any error is the measurement
        return "fails", f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
    finally:
        gc.collect()
    if not bool(torch.isfinite(output).all()):
        return "non-finite", "NaN or inf in the output"
    return "ok", ""


def _moved(value: Any, device: Any) -> Any:
    """Captured inputs on `device` (tensors inside tuples, lists and dicts too)."""
    if hasattr(value, "to") and hasattr(value, "device"):
        return value.to(device)
    if isinstance(value, dict):
        return {k: _moved(v, device) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_moved(v, device) for v in value)
    return value


def _quantized(module: Any) -> bool:
    """Whether any weight is not a plain float tensor any more (a quantized tensor subclass or
    a library's parameter class), or a layer holds codes its backend reads (float8 codes are
    floating point too: sdnq's float8, bfl's fp8r)."""
    import torch

    from qconf.sensitivity.layers import quantized_linears

    plain = (torch.Tensor, torch.nn.Parameter)
    changed = any(
        type(p) not in plain or not p.dtype.is_floating_point or p.dtype.itemsize == 1
        for p in module.parameters()
    )
    return changed or bool(quantized_linears(module))


def walk(
    families: Iterable[str],
    options: Iterable[str],
    dtypes: Iterable[str],
    extra: Iterable[str] = (),
    on_cell: Callable[[Cell], None] | None = None,
    captured: dict[tuple[str, str], Family] | None = None,
) -> list[Cell]:
    """Every (family, part, option, dtype) cell; a part byte-identical to one already measured
    (same weights, same option and dtype) takes that outcome without a second forward."""
    cells: list[Cell] = []
    done: dict[tuple[str, str, str], Cell] = {}
    captured = {} if captured is None else captured
    options, extra = list(options), list(extra)
    for dtype in dtypes:
        for name in families:
            key = (name, dtype)
            if key not in captured:
                captured[key] = capture(name, dtype, extra)
            family = captured[key]
            for part, option in ((p, o) for p in family.calls for o in options):
                cell = measure(family, name, part, option, dtype, done)
                cells.append(cell)
                if on_cell is not None:
                    on_cell(cell)
    return cells


def measure(
    family: Family,
    name: str,
    part: str,
    option: str,
    dtype: str,
    done: dict[tuple[str, str, str], Cell],
) -> Cell:
    """One cell: validate's verdict, and a forward unless validate refused for want of a GPU."""
    started = time.perf_counter()
    cell = Cell(name, part, family.classes[part], option, dtype, *verdict(family, part, option))
    if cell.needs_gpu:
        return cell
    same = done.get((family.digests[part], option, dtype))
    if same is not None:
        cell.outcome, cell.detail = same.outcome, same.detail
        cell.same_as = f"{same.family}/{same.part}"
    else:
        cell.outcome, cell.detail = forward(family, part, option)
        done[(family.digests[part], option, dtype)] = cell
    cell.seconds = time.perf_counter() - started
    return cell


def table(cells: list[Cell], options: list[str]) -> Iterator[str]:
    """One text table per dtype: rows `family/part (Class)`, a column per option; `!` marks a
    cell where validate and the forward disagree."""
    marks = {"ok": "ok", "fails": "FAIL", "non-finite": "NaN", "unchanged": "=", None: "gpu"}
    for dtype in dict.fromkeys(c.dtype for c in cells):
        rows: dict[str, dict[str, str]] = {}
        for c in (c for c in cells if c.dtype == dtype):
            mark = marks[c.outcome] if c.needs_gpu or c.outcome else "refused"
            rows.setdefault(f"{c.family}/{c.part} ({c.part_class})", {})[c.option] = mark + (
                "" if c.agrees else "!"
            )
        width = max(map(len, rows), default=10)
        yield f"\n{dtype}\n" + " " * width + "  " + " ".join(f"{o:>13}" for o in options)
        for label, marks_of in rows.items():
            yield f"{label:<{width}}  " + " ".join(f"{marks_of.get(o, ''):>13}" for o in options)


def failure_rows(cells: list[Cell]) -> list[str]:
    """The measured failures as KnownFailure rows, one per (backend, variant, class, device)."""
    rows: dict[tuple[str, str, str, str], tuple[set[str], str]] = {}
    for c in cells:
        if c.outcome in ("fails", "non-finite"):
            key = (c.entry.backend, c.entry.variant(), c.part_class, c.device)
            rows.setdefault(key, (set(), c.detail))[0].add(c.dtype)
    return [
        f'{backend}: KnownFailure("{variant}", "{part_class}", "{device}", '
        f"{tuple(sorted(dtypes))}, {reason!r})"
        for (backend, variant, part_class, device), (dtypes, reason) in rows.items()
    ]


def main(argv: list[str] | None = None) -> int:
    from qconf.plan.conftree import backend_options

    parser = argparse.ArgumentParser(prog="python -m qconf.sensitivity.capability_walk")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--options", default=",".join(sorted(backend_options())))
    parser.add_argument("--dtypes", default="bfloat16", help="e.g. bfloat16,float16,float32")
    parser.add_argument("overrides", nargs="*", help="added to every plan (model.device_map=...)")
    args = parser.parse_args(argv)
    options = args.options.split(",")
    started = time.perf_counter()

    def progress(cell: Cell) -> None:
        state = cell.outcome or "refused"
        same = f" (as {cell.same_as})" if cell.same_as else ""
        print(f"{cell.dtype} {cell.family}/{cell.part} {cell.option}: {state} {cell.detail}"
              f"{same} ({cell.seconds:.1f} s)", file=sys.stderr, flush=True)  # fmt: skip

    cells = walk(args.families.split(","), options, args.dtypes.split(","), args.overrides,
                 progress)  # fmt: skip
    print("\n".join(table(cells, options)))
    print("\nmeasured failures (rows for qconf/backends/<backend>.py known_failures):")
    print("\n".join(failure_rows(cells)) or "none")
    disagree = [c for c in cells if not c.agrees]
    for c in disagree:
        print(f"DISAGREE {c.dtype} {c.family}/{c.part} {c.option}: validate "
              f"{c.refusal or 'OK'}; forward {c.outcome} {c.detail}")  # fmt: skip
    print(f"\n{len(cells)} cells in {time.perf_counter() - started:.0f} s, "
          f"{len(disagree)} disagreements")  # fmt: skip
    return 1 if disagree else 0


if __name__ == "__main__":
    sys.exit(main())
