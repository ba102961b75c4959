"""Benchmark: `qconf estimate` per part against bytes measured on full-width, reduced-depth
parts of the nine families whose snapshots were added without a measurement (AuraFlow, Chroma,
CogVideoX, FLUX.2, HiDream, HunyuanVideo, LTX-Video, Qwen-Image, Sana); bench/estimate-parts.md
holds a run.

For every weight-bearing part of each family's shipped snapshot, the part's config has every
repeated block list cut to `--depth` blocks (num_layers, num_hidden_layers, num_single_layers,
text_config/vision_config depths, ...; embeddings, vocabularies and VAEs stay whole), is built in
bfloat16 with seeded random weights and written with `save_pretrained` into a folder whose
model_index.json is the snapshot's. Then, for every option that runs on a CPU (torchao and quanto
on every part, bitsandbytes on the transformers parts), only that part is loaded through
`qconf.load_part` and its bytes measured as the load report measures them; the estimate of the
same plan on the same folder (and on a config-only twin of it) is compared with that.

Parts whose config equals one already verified by bench_estimate_vs_measured.py (Flux.1-dev,
SD3.5 Large, Wan 2.1), or one earlier in this run, get a cheap check only (bf16 + int8wo).

    nice -n 10 python bench/bench_estimate_parts.py [--families qwen sana ...]
        [--options int8wo nf4 ...] [--depth 1] [--workdir DIR] [--budget-minutes 60]
        [--markdown bench/estimate-parts.md]

One worker subprocess per family loads its parts one after another (gc between loads); every
measured row is kept in `--workdir`, so a rerun measures only what is missing, and a worker that
dies marks the row it was on as failed and the rest go on in a fresh one. The core options
(bf16, int8wo, int4wo, nf4, quanto-int8) run for every family first, then the rest while the
budget lasts.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import console, silence_libraries
from _reduced import _construct
from _tables import MIB, markdown_table, rich_table

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # this checkout's qconf, in the workers too (cwd: bench/)
FAMILIES = {
    "auraflow": "fal/AuraFlow-v0.3",
    "chroma": "lodestones/Chroma1-HD",
    "cogvideox": "THUDM/CogVideoX-5b",
    "flux2": "black-forest-labs/FLUX.2-dev",
    "hidream": "HiDream-ai/HiDream-I1-Full",
    "hunyuanvideo": "hunyuanvideo-community/HunyuanVideo",
    "ltx": "Lightricks/LTX-Video",
    "qwenimage": "Qwen/Qwen-Image",
    "sana": "Efficient-Large-Model/Sana_1600M_1024px_BF16_diffusers",
}
VERIFIED = (  # the snapshots bench_estimate_vs_measured.py measured
    "black-forest-labs/FLUX.1-dev",
    "stabilityai/stable-diffusion-3.5-large",
    "Wan-AI/Wan2.1-T2V-14B-Diffusers",
)
UNQUANTIZED = "bf16"
CORE = (UNQUANTIZED, "int8wo", "int4wo", "nf4", "quanto-int8")
CHEAP = (UNQUANTIZED, "int8wo")
# Config keys holding the length of a repeated block list (at the top or in a *_config dict).
DEPTH_KEYS = (
    "num_layers", "num_hidden_layers", "num_single_layers", "num_mmdit_layers",
    "num_single_dit_layers", "num_refiner_layers", "approximator_layers", "depth",
)  # fmt: skip
TOLERANCE = 0.03
COLUMNS = ["family", "part", "class", "option", "estimated MiB", "measured MiB", "est/meas"]


# --- reduced parts -----------------------------------------------------------------------------


def reduce_config(config: dict[str, Any], depth: int) -> dict[str, Any]:
    """The config with every block-list length cut to `depth` (per-layer lists cut with it)."""
    config = {k: v for k, v in config.items() if not k.startswith("_qconf")}
    for key in DEPTH_KEYS:
        if isinstance(config.get(key), int) and not isinstance(config[key], bool):
            config[key] = min(depth, config[key])
    layers = config.get("num_hidden_layers")
    if isinstance(config.get("layer_types"), list) and isinstance(layers, int):
        config["layer_types"] = config["layer_types"][:layers]
    for key, value in config.items():
        if key.endswith("_config") and isinstance(value, dict) and key != "quantization_config":
            config[key] = reduce_config(value, depth)
    return config


def canonical(config: dict[str, Any]) -> str:
    return json.dumps({k: v for k, v in config.items() if not k.startswith("_")}, sort_keys=True)


def prepare(hub: str, target: Path, depth: int) -> dict[str, dict[str, Any]]:
    """Write the reduced folder's model_index.json and every part's reduced config.json (the
    weights come later, per part, in the worker), plus a config-only twin `<target>.configs`.
    Returns {part: {library, class, config}}."""
    from qconf.estimate.snapshots import shipped
    from qconf.source.parts import from_model_index

    snapshot = shipped()[hub]
    found = from_model_index(snapshot / "model_index.json")
    parts = {}
    for folder in (target, target.with_name(target.name + ".configs")):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "model_index.json").write_text((snapshot / "model_index.json").read_text())
    for name, part in found.weighted.items():
        original = json.loads((snapshot / name / "config.json").read_text())
        vae = part.class_name.startswith("Autoencoder")
        config = {k: v for k, v in original.items() if not k.startswith("_qconf")}
        config = config if vae else reduce_config(config, depth)
        parts[name] = {"library": part.library, "class": part.class_name, "config": config}
        twin = target.with_name(target.name + ".configs") / name
        twin.mkdir(exist_ok=True)
        (twin / "config.json").write_text(json.dumps(config, indent=1))
        if not (target / name / ".complete").is_file():
            (target / name).mkdir(exist_ok=True)
            (target / name / "config.json").write_text(json.dumps(config, indent=1))
    return parts


def build_part(folder: Path, name: str, library: str, class_name: str) -> None:
    """Seeded random bfloat16 weights for the part whose reduced config.json is in place."""
    import shutil

    import torch

    done = folder / name / ".complete"
    if done.is_file():
        return
    config = json.loads((folder / name / "config.json").read_text())
    shutil.rmtree(folder / name)
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = _construct(library, class_name, config, folder / name)
    finally:
        torch.set_default_dtype(default)
    model.to(torch.bfloat16).save_pretrained(folder / name)
    del model
    gc.collect()
    done.write_text("")


# --- the worker: one family, its (part, option) rows one after another ------------------------


def plan_for(folder: Path, part: str, option: str) -> Any:
    import qconf

    mapping = {} if option == UNQUANTIZED else {part: option}
    return qconf.validate(
        {
            "model": {"source": str(folder), "torch_dtype": "bfloat16"},
            "quant": {"mapping": mapping},
        }
    )


def diagnose(module: Any, folder: Path, part: str, library: str, class_name: str) -> list[str]:
    """Where a loaded module differs from the meta model the estimator counts: tensors present
    in only one of them, and the loaded bytes per tensor type and dtype."""
    import torch

    from qconf.estimate.sources import meta_model
    from qconf.loading.report import tensor_bytes

    _, meta = meta_model(folder, part, library, class_name, torch.bfloat16)
    loaded = dict([*module.named_parameters(), *module.named_buffers()])
    counted = dict([*meta.named_parameters(), *meta.named_buffers()])
    lines = []
    for name in sorted(set(loaded) - set(counted))[:8]:
        t = loaded[name]
        lines.append(f"only loaded: {name} {type(t).__name__} {t.dtype} {tuple(t.shape)}")
    for name in sorted(set(counted) - set(loaded))[:8]:
        lines.append(f"only counted: {name} {tuple(counted[name].shape)}")
    kinds: dict[str, list[int]] = {}
    for t in loaded.values():
        key = f"{type(t).__name__}/{t.dtype}"
        kinds.setdefault(key, [0, 0])
        kinds[key][0] += 1
        kinds[key][1] += tensor_bytes(t)
    lines += [f"loaded {k}: {n} tensors, {b:,} B" for k, (n, b) in sorted(kinds.items())]
    return lines


def measure_row(folder: Path, part: str, info: dict[str, Any], option: str) -> dict[str, Any]:
    import qconf
    from qconf.estimate import estimate
    from qconf.loading.report import measure_part

    plan = plan_for(folder, part, option)
    twin = folder.with_name(folder.name + ".configs")
    guess = estimate(plan, folder).parts[part]
    row: dict[str, Any] = {
        "estimated": guess.bytes,
        "estimated_config": estimate(plan, twin).parts[part].bytes,
        "quantized_layers": guess.quantized_layers,
        "notes": list(guess.notes),
    }
    started = time.monotonic()
    try:
        module = qconf.load_part(plan, part)
    except Exception as exc:  # the row says why, the grid goes on
        text = str(exc).strip().splitlines()
        row["error"] = f"{type(exc).__name__}: {text[0][:200] if text else ''}"
        return row
    row["seconds"] = time.monotonic() - started
    backend = None if option == UNQUANTIZED else guess.backend
    report = measure_part(part, module, info["library"], backend, None)
    row["measured"] = report.bytes
    row["layers"] = report.quantized_layers
    if report.bytes != guess.bytes:
        row["diag"] = diagnose(module, folder, part, info["library"], info["class"])
    del module
    gc.collect()
    return row


def worker(folder: Path, tasks: list[tuple[str, str]], results: Path, deadline: float) -> None:
    silence_libraries()
    with console.capture():  # torchao/quanto/bnb import noise
        import bitsandbytes  # noqa: F401
        import optimum.quanto  # noqa: F401
        import torchao  # noqa: F401
    parts = json.loads((folder / "parts.json").read_text())
    progress = results.with_suffix(".current")
    for part, option in tasks:
        if time.time() > deadline:
            break
        progress.write_text(f"{part}|{option}")
        info = parts[part]
        try:
            build_part(folder, part, info["library"], info["class"])
        except Exception as exc:
            row = {"error": f"build: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
        else:
            row = measure_row(folder, part, info, option)
        kept = json.loads(results.read_text()) if results.is_file() else {}
        kept[f"{part}|{option}"] = row
        results.write_text(json.dumps(kept, indent=1))
        print(f"{part} {option}: {short(row)}", flush=True)
    progress.unlink(missing_ok=True)


def short(row: dict[str, Any]) -> str:
    if "error" in row:
        return f"failed: {row['error']}"
    return f"{row['estimated']:,} / {row['measured']:,} = {row['estimated'] / row['measured']:.6f}"


def run_family(folder: Path, tasks: list[tuple[str, str]], deadline: float) -> None:
    """Measure `tasks` in worker subprocesses; a worker that dies fails its current row only."""
    results = folder / "results.json"
    while True:
        kept = json.loads(results.read_text()) if results.is_file() else {}
        todo = [(p, o) for p, o in tasks if f"{p}|{o}" not in kept]
        if not todo or time.time() > deadline:
            return
        spec = json.dumps(todo)
        command = [sys.executable, __file__, "--worker", str(folder), spec, str(deadline)]
        process = subprocess.run(command, cwd=HERE, stderr=subprocess.PIPE, text=True)
        if process.returncode == 0:
            continue
        current = results.with_suffix(".current")
        where = current.read_text() if current.is_file() else None
        tail = [line for line in process.stderr.strip().splitlines() if line.strip()]
        why = f"worker died (rc {process.returncode}): {tail[-1][:200] if tail else ''}"
        console.print(f"  {where}: {why}")
        if where is None:
            return
        kept = json.loads(results.read_text()) if results.is_file() else {}
        kept[where] = {"error": why}
        results.write_text(json.dumps(kept, indent=1))
        current.unlink()


# --- main --------------------------------------------------------------------------------------


def options_for(library: str, all_options: dict[str, str]) -> list[str]:
    return [o for o, b in all_options.items() if library == "transformers" or b != "bitsandbytes"]


def cpu_options() -> dict[str, str]:
    """{option: backend family} of every option that loads on a CPU (bf16 = unquantized)."""
    from qconf.loading.environment import cpu_runnable_options
    from qconf.plan.conftree import backend_options

    options = backend_options()
    chosen = {UNQUANTIZED: "none"}
    for name in cpu_runnable_options():
        chosen[name] = options[name]["backend"]
    for name, option in options.items():
        if option["backend"].startswith("bitsandbytes"):
            chosen[name] = "bitsandbytes"
    return chosen


def verified_configs() -> dict[str, str]:
    """{canonical config: 'hub id/part'} of the parts bench_estimate_vs_measured.py verified."""
    from qconf.estimate.snapshots import shipped

    known = {}
    for hub in VERIFIED:
        snapshot = shipped()[hub]
        for config in sorted(snapshot.glob("*/config.json")):
            text = canonical(json.loads(config.read_text()))
            known.setdefault(text, f"{hub}/{config.parent.name}")
    return known


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="+", choices=list(FAMILIES), default=list(FAMILIES))
    parser.add_argument("--options", nargs="+", help="backend options (default: every CPU one)")
    parser.add_argument("--depth", type=int, default=1, help="blocks kept per block list")
    parser.add_argument("--workdir", type=Path, help="keep built folders and rows here (reused)")
    parser.add_argument("--budget-minutes", type=float, default=60.0)
    parser.add_argument("--markdown", type=Path, help="also write the table there")
    args = parser.parse_args()
    silence_libraries()
    started = time.time()
    deadline = started + 60 * args.budget_minutes
    options = cpu_options()
    if args.options:
        options = {k: v for k, v in options.items() if k in [UNQUANTIZED, *args.options]}
    verified = verified_configs()
    seen: dict[str, str] = {}
    scratch = tempfile.TemporaryDirectory(prefix="qconf-parts-")
    workdir = args.workdir or Path(scratch.name)
    plan: dict[str, dict[str, list[str]]] = {}  # family: {part: options}
    labels: dict[tuple[str, str], str] = {}
    for family in args.families:
        folder = workdir / f"{family}-depth{args.depth}"
        parts = prepare(FAMILIES[family], folder, args.depth)
        (folder / "parts.json").write_text(json.dumps(parts))
        plan[family] = {}
        for name, info in parts.items():
            original = canonical(json.loads((folder.with_name(folder.name + ".configs") / name
                                             / "config.json").read_text()))  # fmt: skip
            same = verified.get(_full_config(FAMILIES[family], name)) or seen.get(original)
            seen.setdefault(original, f"{family}/{name}")
            wanted = options_for(info["library"], options)
            if same is not None:
                wanted = [o for o in wanted if o in CHEAP]
                labels[(family, name)] = f"same config as {same}"
            plan[family][name] = wanted
    # core options for every family first, then the rest while the budget lasts
    for stage in ("core", "rest"):
        for family, parts in plan.items():
            folder = workdir / f"{family}-depth{args.depth}"
            tasks = [
                (p, o)
                for p, opts in parts.items()
                for o in opts
                if (o in CORE) == (stage == "core")
            ]
            console.print(f"[bold]{family}[/bold] ({stage}): {len(tasks)} rows")
            run_family(folder, tasks, deadline)
    rows, skipped = collect(workdir, args.depth, plan)
    cells = [cells_of(r) for r in rows]
    console.print(rich_table("estimate vs measured bytes per part (reduced depth)", COLUMNS, cells))
    measured = [r for r in rows if "measured" in r]
    worst = max(measured, key=lambda r: abs(r["estimated"] / r["measured"] - 1), default=None)
    off = abs(worst["estimated"] / worst["measured"] - 1) if worst else 0.0
    config_only = sum(r["estimated"] != r["estimated_config"] for r in measured)
    failed = [r for r in rows if "error" in r]
    summary = (
        f"{len(rows)} rows, {len(measured)} measured, {len(failed)} failed, {len(skipped)} "
        f"skipped (budget); largest |estimate/measured - 1|: {off:.2e}"
        + (f" ({worst['family']} {worst['part']} {worst['option']})" if worst and off else "")
        + f"; estimate from config only != from the weights' headers in {config_only} rows; "
        f"{time.time() - started:.0f} s"
    )
    console.print(summary)
    if skipped:
        console.print("skipped: " + ", ".join(skipped))
    if args.markdown:
        write_markdown(args, rows, cells, summary, skipped, labels)
    scratch.cleanup()
    return 0


def _full_config(hub: str, part: str) -> str:
    from qconf.estimate.snapshots import shipped

    return canonical(json.loads((shipped()[hub] / part / "config.json").read_text()))


def collect(
    workdir: Path, depth: int, plan: dict[str, dict[str, list[str]]]
) -> tuple[list[dict[str, Any]], list[str]]:
    """The kept rows, their estimates computed again here (an estimator change shows without
    loading again), and the rows the budget left out."""
    from qconf.estimate import estimate

    rows, skipped = [], []
    for family, parts in plan.items():
        folder = workdir / f"{family}-depth{depth}"
        results = folder / "results.json"
        kept = json.loads(results.read_text()) if results.is_file() else {}
        info = json.loads((folder / "parts.json").read_text())
        for part, options in parts.items():
            for option in options:
                row = kept.get(f"{part}|{option}")
                if row is None:
                    skipped.append(f"{family}/{part}/{option}")
                    continue
                if "estimated" in row:
                    twin = folder.with_name(folder.name + ".configs")
                    guess = estimate(plan_for(folder, part, option), folder).parts[part]
                    row["estimated"], row["notes"] = guess.bytes, list(guess.notes)
                    row["estimated_config"] = (
                        estimate(plan_for(twin, part, option)).parts[part].bytes
                    )
                rows.append(
                    {"family": family, "part": part, "class": info[part]["class"],
                     "option": option, **row}
                )  # fmt: skip
    return rows, skipped


def cells_of(row: dict[str, Any]) -> list[str]:
    head = [row["family"], row["part"], row["class"], row["option"]]
    if "error" in row:
        estimated = f"{row['estimated'] / MIB:,.2f}" if "estimated" in row else "-"
        foreseen = any("fails to load" in note for note in row.get("notes", ()))
        said = " (the estimate's note says it fails)" if foreseen else ""
        return [*head, estimated, f"failed: {row['error']}{said}", "-"]
    ratio = row["estimated"] / row["measured"]
    mark = "" if abs(ratio - 1) <= TOLERANCE else " **off**"
    return [
        *head, f"{row['estimated'] / MIB:,.2f}", f"{row['measured'] / MIB:,.2f}",
        f"{ratio:.4f}{mark}" + ("" if row["estimated"] == row["measured"] else " (not exact)"),
    ]  # fmt: skip


def write_markdown(
    args: Any, rows: list[dict[str, Any]], cells: list[list[str]], summary: str,
    skipped: list[str], labels: dict[tuple[str, str], str],
) -> None:  # fmt: skip
    from bench_estimate_vs_measured import machine

    notes = ""  # the hand-written notes below the marker survive a rerun
    if args.markdown.is_file() and "<!-- notes -->" in args.markdown.read_text():
        notes = args.markdown.read_text().split("<!-- notes -->", 1)[1]
    command = "nice -n 10 python bench/" + " ".join([Path(__file__).name, *sys.argv[1:]])
    same = "\n".join(f"* {f}/{p}: {why} (cheap check only)" for (f, p), why in labels.items())
    args.markdown.write_text(
        MARKDOWN.format(
            date=datetime.date.today().isoformat(), machine=machine(), command=command,
            depth=args.depth, table=markdown_table(COLUMNS, cells), summary=summary,
            same=same or "none", skipped=", ".join(skipped) or "none", notes=notes.strip(),
        )
    )  # fmt: skip


MARKDOWN = """# Estimate vs measured bytes per part: the nine newer families

Generated by `{command}` on {date}; {machine}.

Each weight-bearing part of the shipped snapshot, with every block list cut to {depth} block(s)
(embeddings, vocabularies and VAEs whole), built with seeded random bfloat16 weights, then loaded
alone through `qconf.load_part` per option (torchao and quanto on every part, bitsandbytes on
the transformers parts) and measured as the load report measures; "estimated" is
`qconf.estimate.estimate(plan, folder).parts[part].bytes` on the same folder.

{summary}

Parts with a config already verified (cheap check only):

{same}

Skipped (time budget): {skipped}

{table}

<!-- notes -->
{notes}
"""


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        folder, spec, deadline = sys.argv[2:5]
        tasks = [tuple(t) for t in json.loads(spec)]
        worker(Path(folder), tasks, Path(folder) / "results.json", float(deadline))  # type: ignore[arg-type]
        sys.exit(0)
    sys.exit(main())
