"""Full-width, reduced-depth pipelines: the real configs of a shipped snapshot with every block
list cut to `depth` blocks, seeded random weights saved as safetensors, and the per-block bytes
that extrapolate a measurement back to the full depth.

A folder is the tiny pipeline of the same class for what carries no weights (model_index.json,
scheduler, tokenizers) and, for every weight-bearing part, the snapshot's config.json with its
depth keys lowered, built in bfloat16 and written with `save_pretrained`.
"""

from __future__ import annotations

import gc
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class BlockList:
    """One nn.ModuleList of identical blocks: where it is, the config key of its length, and
    which of its blocks is typical (`typical`: T5 keeps the relative attention bias in block 0
    only, SD3's last block is context_pre_only)."""

    path: str
    key: str
    typical: int = 0


_T5 = (BlockList("encoder.block", "num_layers", typical=-1),)
BLOCKS: dict[str, tuple[BlockList, ...]] = {
    "FluxTransformer2DModel": (
        BlockList("transformer_blocks", "num_layers"),
        BlockList("single_transformer_blocks", "num_single_layers"),
    ),
    "SD3Transformer2DModel": (BlockList("transformer_blocks", "num_layers"),),
    "WanTransformer3DModel": (BlockList("blocks", "num_layers"),),
    "CLIPTextModel": (BlockList("encoder.layers", "num_hidden_layers"),),
    "CLIPTextModelWithProjection": (BlockList("text_model.encoder.layers", "num_hidden_layers"),),
    "T5EncoderModel": _T5,
    "UMT5EncoderModel": _T5,
}


def full_depths(snapshot: Path, part: str, class_name: str) -> dict[str, int]:
    """{block list path: number of blocks} of the full-size part, from the snapshot's config."""
    config = json.loads((snapshot / part / "config.json").read_text())
    return {b.path: config[b.key] for b in BLOCKS.get(class_name, ())}


def build_reduced(snapshot: Path, tiny: Path, target: Path, depth: int) -> Path:
    """Write the reduced-depth pipeline folder `target` (reused when already complete)."""
    done = target / ".complete"
    if done.is_file():
        return target
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    index = json.loads((tiny / "model_index.json").read_text())
    snapshot_index = json.loads((snapshot / "model_index.json").read_text())
    for name, value in index.items():
        if name.startswith("_") or not isinstance(value, list) or value[0] is None:
            continue
        if name in snapshot_index and (snapshot / name / "config.json").is_file():
            assert snapshot_index[name] == value, (name, snapshot_index[name], value)
            _build_part(snapshot / name, target / name, value[0], value[1], depth)
        else:  # scheduler, tokenizers: no weights
            shutil.copytree(tiny / name, target / name)
    shutil.copy(tiny / "model_index.json", target)
    done.write_text("")
    return target


def _build_part(source: Path, target: Path, library: str, class_name: str, depth: int) -> None:
    import torch

    config = json.loads((source / "config.json").read_text())
    config.pop("_qconf_source", None)
    for block in BLOCKS.get(class_name, ()):
        config[block.key] = min(depth, config[block.key])
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        model = _construct(library, class_name, config, target)
    finally:
        torch.set_default_dtype(default)
    model.to(torch.bfloat16).save_pretrained(target)
    del model
    gc.collect()


def _construct(library: str, class_name: str, config: dict[str, Any], target: Path) -> Any:
    if library == "diffusers":
        import diffusers

        return getattr(diffusers, class_name).from_config(config)
    import transformers

    target.mkdir(parents=True)
    (target / "config.json").write_text(json.dumps(config))
    return getattr(transformers, class_name)(transformers.AutoConfig.from_pretrained(target))


def block_bytes(module: Any, class_name: str, measure: Any) -> dict[str, tuple[int, int]]:
    """{block list path: (blocks loaded, bytes of the typical block)}; `measure(module)` gives
    a module's real bytes."""
    result = {}
    for block in BLOCKS.get(class_name, ()):
        blocks = module.get_submodule(block.path)
        result[block.path] = (len(blocks), measure(blocks[block.typical]))
    return result


def extrapolate(measured: int, blocks: dict[str, tuple[int, int]], full: dict[str, int]) -> int:
    """Bytes of the full-depth part: what was measured plus the missing blocks, each as the
    typical block."""
    return measured + sum(typical * (full[path] - n) for path, (n, typical) in blocks.items())
