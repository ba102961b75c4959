"""`qconf estimate`: parameters and bytes per part, unquantized and under the plan, from config
files alone (or safetensors headers); allocates no weight."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from qconf.cli.common import (
    TRAIN_HELP,
    add_plan_arguments,
    add_train_argument,
    plan_from_args,
    train_parts,
)
from qconf.text import safe

DEFAULT_RANK = 4  # estimate's LoRA rank when --rank is not given


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the JSON contract")
    parser.add_argument("--plot", metavar="FILE.png", help="also draw a bar chart per part")
    parser.add_argument(
        "--folder",
        metavar="DIR",
        help="pipeline folder with model_index.json and each part's config.json to read instead "
        "of model.source (e.g. for a hub id with no local copy)",
    )
    add_train_argument(parser, f"{TRAIN_HELP}: also estimate the adapter weights, gradients "
                       "and AdamW states on top of the frozen base")  # fmt: skip
    parser.add_argument("--rank", type=int, help=f"LoRA rank for --train (default {DEFAULT_RANK})")
    add_plan_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from qconf.estimate import estimate, plot
    from qconf.trust.userpath import user_path

    folder = user_path(args.folder, "--folder") if args.folder else None
    plan = plan_from_args(args)
    train_parts = _train_parts(plan, args)  # refused before torch is imported
    result = estimate(plan, folder)
    rank = DEFAULT_RANK if args.rank is None else args.rank
    training = _training(plan, train_parts, rank, folder)
    if args.plot:
        plot(result, args.plot)
    if args.json:
        data = result.to_json()
        if training is not None:
            data["train"] = {name: lora.to_json() for name, lora in training.items()}
            data["train_total_bytes"] = result.total_bytes + sum(
                lora.total_bytes for lora in training.values()
            )
        print(json.dumps(data, indent=2))
        return 0
    print_estimate(result)
    if training is not None:
        for name, lora in training.items():
            print(f"LoRA r={lora.rank} on {safe(name)}: {lora.layers} layers, {lora.params:,} "
                  f"trainable params, {_gib(lora.total_bytes)} for weights + gradients + AdamW "
                  "states (activations not included)")  # fmt: skip
    for note in result.notes:
        print(f"note: {safe(note)}", file=sys.stderr)
    if args.plot:
        print(f"plot written to {safe(args.plot)}")
    return 0


def print_estimate(result: Any) -> None:
    from qconf.cli.tables import BytesRow, print_bytes_table

    rows = (
        BytesRow(
            name,
            part.backend,
            str(part.quantized_layers) if part.backend else "",
            part.params,
            part.bytes_unquantized,
            part.bytes,
        )
        for name, part in result.parts.items()
    )
    title = f"{result.pipeline} from {result.folder} — estimate, torch_dtype={result.torch_dtype}"
    print_bytes_table(title, rows, "plan")
    print_peak(result)


def print_peak(result: Any) -> None:
    from qconf.cli.tables import human_bytes
    from qconf.source.video import video_rule

    rule = video_rule(result.pipeline)
    grows = (f"a video's grow with run.num_frames (this pipeline's own clip is "
             f"{rule.default_frames} frames), resolution and batch" if rule is not None
             else "they grow with resolution and batch")  # fmt: skip
    print(
        f"weights after load {human_bytes(result.total_bytes)}; peak while loading about "
        f"{human_bytes(result.load_peak_bytes)} ({result.peak_rule}); inference needs "
        f"activations on top (not estimated: {grows})"
    )


def _train_parts(plan: Any, args: argparse.Namespace) -> list[str] | None:
    """The parts of `--train` after the torch-free checks (rank, part names, trainable)."""
    from qconf.errors import PlanError, Problem

    if args.train is None:
        if args.rank is not None:  # it would be ignored: say so rather than drop it
            raise PlanError(Problem("--rank", "given without --train",
                                    "add --train [PARTS], or drop --rank"))  # fmt: skip
        return None
    from qconf.train.adapter_settings import MAX_RANK  # what an adapter file may hold

    if args.rank is not None and not 1 <= args.rank <= MAX_RANK:
        raise PlanError(Problem("--rank", f"{args.rank} is not a LoRA rank (1..{MAX_RANK})",
                                "use 4..64"))  # fmt: skip
    return train_parts(args.train, plan.resolve(), need_parts=True)


def _training(plan: Any, parts: list[str] | None, rank: int, folder: Any) -> Any:
    if parts is None:
        return None
    from qconf.estimate.training import lora_estimate

    return lora_estimate(plan, parts, rank=rank, folder=folder)


def _gib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n < 2**30 else f"{n / 2**30:.2f} GiB"
