"""What a checked adapter file must hold for one part of the pipeline: the LoRA tensors peft
will create, named and shaped, computed from the part's layers and the file's (checked)
settings without building anything. The file's tensors must be exactly these, so what peft
allocates is what the size-capped file holds, never what a number in its metadata asks for."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from qconf.train.adapter_settings import refuse, shown

_FIX = "load it onto a pipeline of the model it was made for"


def _suffixes(name: str) -> Iterator[str]:
    """The name and each dotted suffix of it: peft's list matching (`key == t or
    key.endswith('.' + t)`) is membership of one of these, so no file string is ever a regex."""
    yield name
    for i, char in enumerate(name):
        if char == ".":
            yield name[i + 1 :]


def _matched(name: str, names: str | list[str] | None, wanted: set[str]) -> set[str]:
    """The entries of `names` that pick the module `name`, as peft matches them."""
    if names is None:
        return set()
    if isinstance(names, str):  # a string has no dots (checked): peft's fullmatch is equality
        return {names} if name == names else set()
    return wanted.intersection(_suffixes(name))


def targeted_layers(module: Any, settings: dict[str, Any], where: str) -> Iterator[tuple[str, Any]]:
    """(name, layer) of every layer peft's matching picks for these settings. Every target
    must pick a layer (as add_lora demands): a list of names the model does not have is not an
    adapter for it, and peft's own matching then works on no more names than the model has."""
    targets, excludes = settings["target_modules"], settings.get("exclude_modules")
    wanted = set(targets) if isinstance(targets, list) else {targets}
    unwanted = set(excludes) if isinstance(excludes, list) else set()
    used: set[str] = set()
    for name, layer in module.named_modules():
        picked = _matched(name, targets, wanted) if name else set()
        used |= picked
        if picked and not _matched(name, excludes, unwanted):
            yield name, layer
    unused = sorted(wanted - used)
    if unused:
        raise refuse(where, f"target_modules name {shown(unused[0])}, which is no layer of "
                     f"{type(module).__name__}", _FIX)  # fmt: skip


def _rank_of(name: str, settings: dict[str, Any]) -> int:
    """peft's per-layer rank: the first rank_pattern key that names the layer (peft builds a
    regex around each key; keys are checked module names, so it runs in linear time)."""
    pattern = settings.get("rank_pattern") or {}
    if not pattern:
        return settings["r"]
    from peft.utils.other import get_pattern_key

    return pattern.get(get_pattern_key(list(pattern), name), settings["r"])


def lora_shapes(name: str, layer: Any, rank: int, where: str) -> dict[str, tuple[int, ...]]:
    """{state-dict key: shape} of the LoRA weights peft creates on one layer (peft's
    LoraLayer.update_layer for Linear, _ConvNd and Embedding)."""
    from torch import nn

    if isinstance(layer, nn.Linear):  # quantized linears (torchao, quanto, bnb) are Linears
        return {f"{name}.lora_A.weight": (rank, layer.in_features),
                f"{name}.lora_B.weight": (layer.out_features, rank)}  # fmt: skip
    if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        if rank % layer.groups:
            raise refuse(where, f"rank {rank} of conv layer '{name}' is not divisible by its "
                         f"{layer.groups} groups (peft needs that)")  # fmt: skip
        ones = (1,) * len(layer.kernel_size)
        return {
            f"{name}.lora_A.weight": (rank, layer.in_channels, *layer.kernel_size),
            f"{name}.lora_B.weight": (layer.out_channels, rank // layer.groups, *ones),
        }
    if isinstance(layer, nn.Embedding):
        return {f"{name}.lora_embedding_A": (rank, layer.num_embeddings),
                f"{name}.lora_embedding_B": (layer.embedding_dim, rank)}  # fmt: skip
    raise refuse(where, f"target_modules pick '{name}', a {type(layer).__name__}; LoRA attaches "
                 "to Linear, Conv and Embedding layers", _FIX)  # fmt: skip


def expected_tensors(module: Any, settings: dict[str, Any], where: str) -> dict[str, Any]:
    expected: dict[str, tuple[int, ...]] = {}
    for name, layer in targeted_layers(module, settings, where):
        expected.update(lora_shapes(name, layer, _rank_of(name, settings), where))
    if not expected:  # peft refuses an adapter on no layer
        raise refuse(where, "exclude_modules leave no layer for the adapter", _FIX)
    return expected


def check_tensors(
    expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], path: Path, part: str
) -> None:
    """The file's tensors for `part` are exactly the ones peft will create, shape for shape."""
    where, fix = f"{path} ({part})", _FIX
    extra = sorted(found.keys() - expected.keys())
    if extra:
        raise refuse(where, f"{len(extra)} tensors match no LoRA layer of the part (e.g. "
                     f"{shown(extra[0])})", fix)  # fmt: skip
    missing = sorted(expected.keys() - found.keys())
    if missing:
        raise refuse(where, f"{len(missing)} LoRA tensors are missing (e.g. {shown(missing[0])})")
    for key, shape in expected.items():
        if found[key] != shape:
            raise refuse(where, f"tensor '{key}' has shape {list(found[key])}; the settings and "
                         f"the model make it {list(shape)}", fix)  # fmt: skip
