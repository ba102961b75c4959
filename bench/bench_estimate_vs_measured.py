"""Benchmark: `qconf estimate` against bytes measured on full-width, reduced-depth pipelines, and
the memory peak while quantizing on load (bench/estimate-vs-measured.md holds a run).

For each family (Flux.1-dev, SD3.5-large, Wan2.1-14B) the real configs of the shipped snapshot
are cut to `--depth` blocks per block list (transformer blocks, encoder layers; the VAE stays
whole) and built with seeded random weights (bench/_reduced.py). Then, for every backend option
that runs on a CPU, the folder is loaded through `qconf.load` in a fresh subprocess per option,
on every weight-bearing part: torchao and quanto for real; bitsandbytes for real on the text
encoders and, on the diffusers parts, with diffusers' GPU check patched out (rows marked
EMULATED; `--no-emulate-bnb` keeps bitsandbytes to the text encoders). Per part:

* the estimate for the reduced folder is compared with the bytes the load report measured;
* the measurement is extrapolated to the full depth (missing blocks counted as a typical
  loaded block) and compared with the estimate of the full-size model from the snapshot.

While each subprocess loads, this process samples its anonymous RSS (RssAnon, every few ms).
Weights loaded unquantized stay in the mmapped safetensors files (file pages, not anonymous
memory), so the memory in use at the peak is the anonymous peak plus those file-backed weights;
over the weights after load, that is the load-peak ratio behind each backend's
`load_peak_ratio` in qconf/backends/. The first family is also loaded at `--peak-depths`, and the
extra memory is fitted as fixed + proportional to the weights to read the ratio at full size.

    nice -n 10 python bench/bench_estimate_vs_measured.py [--families flux sd3 wan]
        [--options int8wo nf4 ...] [--workdir DIR] [--markdown bench/estimate-vs-measured.md]

About an hour on 2 cores, RSS up to about 10 GiB (mapped file pages included); `--workdir`
keeps the built folders and each load's measurement, so a rerun measures only what is missing.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import console, silence_libraries
from _memory import file_backed_bytes, reset_peak, sampled_run, status
from _reduced import block_bytes, build_reduced, extrapolate, full_depths
from _tables import (
    BYTE_COLUMNS,
    GIB,
    PEAK_COLUMNS,
    WORST_COLUMNS,
    Peak,
    Row,
    byte_cells,
    markdown_table,
    peak_cells,
    rich_table,
    scaling_cells,
    worst,
)  # fmt: skip

HERE = Path(__file__).resolve().parent
FAMILIES = {  # name: (shipped snapshot, tiny pipeline of the same class)
    "flux": ("black-forest-labs/FLUX.1-dev", "tiny-flux"),
    "sd3": ("stabilityai/stable-diffusion-3.5-large", "tiny-sd3"),
    "wan": ("Wan-AI/Wan2.1-T2V-14B-Diffusers", "tiny-wan"),
}
UNQUANTIZED = "bf16"
LOADS = {"measured": 0, "reused": 0}  # this run's loads, and those read back from --workdir


def cpu_options(emulate_bnb: bool) -> dict[str, str]:
    """{option: which parts}: torchao/quanto on every part; bitsandbytes on the text encoders,
    or on every part with `emulate_bnb` (see `pretend_gpu_for_bnb`)."""
    from qconf.loading.environment import cpu_runnable_options
    from qconf.plan.conftree import backend_options

    options = backend_options()
    chosen = {UNQUANTIZED: "none"}
    for name in cpu_runnable_options():
        if options[name]["backend"] in ("torchao", "quanto"):
            chosen[name] = "all"
    for name, option in options.items():
        if option["backend"].startswith("bitsandbytes"):
            chosen[name] = "all" if emulate_bnb else "text_encoders"
    return chosen


def pretend_gpu_for_bnb() -> None:
    """Let bitsandbytes quantize diffusers parts on a CPU. diffusers' bnb quantizers refuse to
    run without a GPU (validate_environment) and place the model on one (update_device_map),
    and qconf refuses the plan before that; bitsandbytes 0.50 itself quantizes on a CPU, into
    the layout it uses on a GPU (Params4bit: packed uint8 + fp32 absmax per 64; Int8Params:
    int8 + fp32 row scales). Rows loaded this way are marked EMULATED."""
    from diffusers.quantizers.bitsandbytes import bnb_quantizer

    import qconf.loading.environment

    for quantizer in (
        bnb_quantizer.BnB4BitDiffusersQuantizer,
        bnb_quantizer.BnB8BitDiffusersQuantizer,
    ):
        quantizer.validate_environment = lambda self, *args, **kwargs: None
        quantizer.update_device_map = lambda self, device_map: {"": "cpu"}
    qconf.loading.environment.cuda_available = lambda: True


def emulated(folder: Path, option: str, part: str) -> bool:
    """Whether `part` under `option` needs `pretend_gpu_for_bnb` on this machine."""
    from qconf.plan.conftree import backend_options
    from qconf.source.parts import from_model_index

    if option == UNQUANTIZED:
        return False
    library = from_model_index(folder / "model_index.json").parts[part].library
    return library == "diffusers" and backend_options()[option]["backend"].startswith("bitsandb")


def overrides(folder: Path, option: str, parts: list[str]) -> list[str]:
    mapping = [] if option == UNQUANTIZED else [f"quant.mapping.{p}={option}" for p in parts]
    return [f"model.source={folder}", *mapping]


# --- the subprocess: one load, measured --------------------------------------------------------


def worker(folder: Path, option: str, parts: list[str]) -> dict[str, Any]:
    import gc

    silence_libraries()
    import diffusers

    import qconf
    from qconf.loading.report import measure_part
    from qconf.source.parts import from_model_index

    with console.capture():  # torchao/quanto/bnb import noise
        import bitsandbytes  # noqa: F401
        import optimum.quanto  # noqa: F401
        import torchao  # noqa: F401
    found = from_model_index(folder / "model_index.json")
    getattr(diffusers, found.pipeline)  # lazy imports before the baseline
    if any(emulated(folder, option, part) for part in parts):
        pretend_gpu_for_bnb()
    plan = qconf.validate(qconf.compose(overrides(folder, option, parts)))
    gc.collect()
    baseline = status("RssAnon")
    rss = reset_peak()
    started = time.monotonic()
    loaded = qconf.load(plan)
    ended = time.monotonic()
    hwm = status("VmHWM") or 0
    gc.collect()
    report = loaded.report
    result: dict[str, Any] = {"parts": {}, "started": started, "ended": ended}
    for name, part in report.parts.items():
        class_name = found.parts[name].class_name

        def measure(m: Any, name: str = name, part: Any = part) -> int:
            return measure_part(name, m, part.library, part.backend, None).bytes

        result["parts"][name] = {
            "class": class_name,
            "bytes": part.bytes,
            "blocks": block_bytes(getattr(loaded.pipeline, name), class_name, measure),
        }
    modules = [getattr(loaded.pipeline, name) for name in report.parts]
    result.update(
        baseline=baseline,
        anon_after=status("RssAnon"),
        file_backed=file_backed_bytes(modules),
        hwm_over_base=hwm - rss,
        weights=report.total_bytes,
        seconds=ended - started,
    )
    return result


def run_worker(folder: Path, option: str, parts: list[str], interval: float) -> dict[str, Any]:
    """One load in a fresh interpreter, its RssAnon sampled from here; kept beside the folder
    (a rerun with the same --workdir measures only what is missing)."""
    kept = folder.parent / f"{folder.name}.{option}.{'+'.join(parts) or 'none'}.json"
    if kept.is_file():
        LOADS["reused"] += 1
        return json.loads(kept.read_text())
    LOADS["measured"] += 1
    command = [sys.executable, __file__, "--worker", str(folder), option, ",".join(parts)]
    result = sampled_run(command, HERE, interval)
    kept.write_text(json.dumps(result))
    return result


# --- tables ------------------------------------------------------------------------------------


def measure_family(
    family: str, folder: Path, snapshot: Path, options: dict[str, str], interval: float
) -> tuple[list[Row], list[Peak]]:
    import qconf
    from qconf.estimate import estimate
    from qconf.source.parts import from_model_index

    weighted = from_model_index(folder / "model_index.json").weighted
    depth = int(folder.name.rsplit("depth", 1)[1])
    rows, peaks = [], []
    for option, which in options.items():
        parts = {
            "none": [],
            "all": list(weighted),
            "text_encoders": [p for p in weighted if p.startswith("text_encoder")],
        }[which]
        console.print(f"  {folder.name} {option}: loading {', '.join(parts) or 'unquantized'}")
        real = run_worker(folder, option, parts, interval)
        plan = qconf.validate(qconf.compose(overrides(folder, option, parts)))
        reduced, full = estimate(plan), estimate(plan, snapshot)
        for name, part in real["parts"].items():
            if option != UNQUANTIZED and name not in parts:
                continue  # the same bytes as the unquantized row
            depths = full_depths(snapshot, name, part["class"])
            blocks = {path: tuple(v) for path, v in part["blocks"].items()}
            label = f"{option} EMULATED" if emulated(folder, option, name) else option
            rows.append(
                Row(
                    family, name, label, reduced.parts[name].bytes, part["bytes"],
                    full.parts[name].bytes, extrapolate(part["bytes"], blocks, depths),
                )
            )  # fmt: skip
        label = f"{option} EMULATED" if any(emulated(folder, option, p) for p in parts) else option
        peaks.append(
            Peak(
                family, depth, label, real["weights"], full.total_bytes, real["file_backed"],
                real["anon_peak"], real["anon_after"] - real["baseline"], real["hwm_over_base"],
                real["seconds"],
            )
        )  # fmt: skip
    return rows, peaks


def machine() -> str:
    import diffusers
    import torch
    import transformers

    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), platform.processor(),
    )  # fmt: skip
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB
    versions = {}
    for package in ("torchao", "optimum-quanto", "bitsandbytes"):
        versions[package] = importlib.metadata.version(package)
    return (
        f"{cpu}, {os.cpu_count()} cores, {memory:.0f} GiB RAM, {platform.platform()}; "
        f"Python {platform.python_version()}, torch {torch.__version__}, diffusers "
        f"{diffusers.__version__}, transformers {transformers.__version__}, "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="+", choices=list(FAMILIES), default=list(FAMILIES))
    parser.add_argument("--options", nargs="+", help="backend options (default: every CPU one)")
    parser.add_argument("--depth", type=int, default=2, help="blocks kept per block list")
    parser.add_argument(
        "--peak-depths", nargs="*", type=int, default=[1, 4],
        help="more depths at which the first family's load peaks are measured",
    )  # fmt: skip
    parser.add_argument(
        "--no-emulate-bnb", action="store_true",
        help="bitsandbytes on text encoders only (no diffusers part quantized on a CPU)",
    )  # fmt: skip
    parser.add_argument("--workdir", type=Path, help="keep the built folders here (reused)")
    parser.add_argument("--interval", type=float, default=0.002, help="RssAnon sampling, s")
    parser.add_argument("--markdown", type=Path, help="also write the tables there")
    args = parser.parse_args()
    silence_libraries()
    from qconf.estimate.snapshots import shipped
    from qconf.source.tiny import tiny_pipeline_path

    options = cpu_options(not args.no_emulate_bnb)
    if args.options:
        options = {k: v for k, v in options.items() if k in [UNQUANTIZED, *args.options]}
    started = time.perf_counter()
    rows: list[Row] = []
    peaks: list[Peak] = []
    runs = [(family, args.depth) for family in args.families]
    runs += [(args.families[0], d) for d in args.peak_depths if d != args.depth]
    with tempfile.TemporaryDirectory(prefix="qconf-reduced-") as scratch:
        workdir = args.workdir or Path(scratch)
        for family, depth in runs:
            hub, tiny = FAMILIES[family]
            snapshot = shipped()[hub]
            console.print(f"[bold]{family}[/bold]: {hub}, {depth} block(s) per block list")
            target = workdir / f"{family}-depth{depth}"
            folder = build_reduced(snapshot, tiny_pipeline_path(tiny), target, depth)
            family_rows, family_peaks = measure_family(
                family, folder, snapshot, options, args.interval
            )
            rows += family_rows if depth == args.depth else []
            peaks += family_peaks
    byte_rows = [byte_cells(r) for r in rows]
    main_peaks = [p for p in peaks if p.depth == args.depth]
    peak_rows = [peak_cells(p) for p in main_peaks]
    scaling_columns, scaling_rows = scaling_cells(peaks)
    console.print(rich_table("estimate vs measured bytes per part", BYTE_COLUMNS, byte_rows))
    console.print(rich_table("worst ratio per family and part", WORST_COLUMNS, worst(rows)))
    console.print(rich_table("memory while loading", PEAK_COLUMNS, peak_rows))
    console.print(rich_table("load peak against depth", scaling_columns, scaling_rows))
    off = max((abs(r.estimated / r.measured - 1) for r in rows), default=0)
    off_full = max((abs(r.full_estimated / r.full_extrapolated - 1) for r in rows), default=0)
    real = [p for p in peaks if p.option != UNQUANTIZED and "EMULATED" not in p.option]
    first = [p.need for p in real if p.family == runs[0][0]]
    summary = (
        f"{len(rows)} part rows; largest |estimate/measured - 1|: {off:.2e} (reduced), "
        f"{off_full:.2e} (full size, extrapolated). Largest peak/weights of a real load "
        f"quantizing on load: {max(first, default=0):.3f} ({runs[0][0]}, every depth), "
        f"{max((p.need for p in real), default=0):.3f} (every family). "
        f"{time.perf_counter() - started:.0f} s"
    )
    console.print(summary)
    if args.markdown:
        command = "nice -n 10 python bench/" + " ".join([Path(__file__).name, *sys.argv[1:]])
        args.markdown.write_text(
            MARKDOWN.format(
                date=datetime.date.today().isoformat(), machine=machine(), command=command,
                depth=args.depth, worst=markdown_table(WORST_COLUMNS, worst(rows)),
                bytes=markdown_table(BYTE_COLUMNS, byte_rows),
                peaks=markdown_table(PEAK_COLUMNS, peak_rows),
                scaling=markdown_table(scaling_columns, scaling_rows), summary=summary, loads=LOADS,
            )
        )  # fmt: skip
    return 0


MARKDOWN = """# Estimated vs measured bytes, full-width reduced-depth pipelines

- date: {date}
- machine: {machine}
- command: `{command}` ({loads[measured]} loads measured by this run, {loads[reused]} read back
  from earlier runs of the same command on this machine, kept in --workdir)
- {depth} blocks per block list (transformer blocks, encoder layers; the VAE whole), seeded
  random weights; bytes measured by qconf's load report; "full" = the estimate from the shipped
  snapshot next to the measurement extrapolated per block (bench/_reduced.py)

## Worst ratio per family and part

{worst}

## Every part and option

{bytes}

## Memory while loading

Anonymous RSS sampled from outside the loading process; file-backed = weights left in the
mmapped safetensors pages (an unquantized weight in its file's dtype is not copied); peak =
(anonymous peak + file-backed) / weights; held after = what the process keeps once loaded
(glibc keeps freed heap after some backends). VmHWM counts every mapped file page touched.

{peaks}

## Load peak against depth

The extra memory at the peak (peak - weights) fitted as fixed + proportional x weights over the
depths measured, then taken at the full-size weights of the same plan.

{scaling}

{summary}
"""


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        folder, option, parts = sys.argv[2:5]
        out = worker(Path(folder), option, [p for p in parts.split(",") if p])
        print(json.dumps(out))
        sys.exit(0)
    sys.exit(main())
