"""Reading a LoRA adapter file, which is not trusted (adapters are shared on the internet; see
DESIGN's trust model).

The file must be a regular file under a size cap. Its safetensors header and LoRA metadata are
read with bounded work, and every number, name and setting in them is checked here, before any
tensor is allocated or any peft object is built. A refusal is one ModelSourceError or PlanError
line naming the file (and the part and setting); the settings' checks are in
qconf.train.adapter_settings, the match against the model's layers in
qconf.train.adapter_layers. Torch-free except `load_tensors`."""

from __future__ import annotations

import dataclasses
import re
import struct
from pathlib import Path
from typing import Any

from qconf.errors import ModelSourceError, Problem
from qconf.source.files import MAX_JSON_BYTES, parse_json, safetensors_header
from qconf.train.adapter_settings import MAX_NAME, lora_settings, refuse, shown
from qconf.trust.reading import open_regular, read_regular

ADAPTER_FILE = "pytorch_lora_weights.safetensors"  # diffusers' LoRA weight name
METADATA_KEY = "lora_adapter_metadata"  # diffusers' key for the per-part LoraConfigs

# Bounds. Real adapters sit far inside them; each one caps what a hostile file can make us do.
MAX_ADAPTER_BYTES = 2 * 2**30  # the largest published Flux/SDXL LoRAs are ~1.3 GB
MAX_METADATA_BYTES = 2**20  # diffusers' JSON: ~2 KB a part, ~200 KB with one name per layer
MAX_TENSORS = 20_000  # LoRA on every linear layer of SDXL's UNet + both text encoders: ~5,000
MAX_PARTS = 8  # diffusers pipelines have at most 6 weight-bearing parts
DTYPES = ("F32", "F16", "BF16")  # what peft's LoRA weights are; anything else is not a LoRA

_PART = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_TENSOR = re.compile(r"[A-Za-z0-9_]+(?:\.[A-Za-z0-9_]+)+")


@dataclasses.dataclass(frozen=True)
class AdapterFile:
    """What a checked adapter file holds: per part, the LoraConfig keyword arguments; per
    tensor, (shape, safetensors dtype). No tensor data is read until `load_tensors`."""

    path: Path
    settings: dict[str, dict[str, Any]]
    tensors: dict[str, tuple[tuple[int, ...], str]]

    def tensors_of(self, part: str) -> dict[str, tuple[int, ...]]:
        """{name inside the part: shape} of the part's tensors (named '<part>.<name>')."""
        prefix = f"{part}."
        return {k[len(prefix) :]: v[0] for k, v in self.tensors.items() if k.startswith(prefix)}


def adapter_path(directory: str | Path) -> Path:
    path = Path(directory).expanduser()
    path = path / ADAPTER_FILE if path.is_dir() else path
    if not path.exists():
        raise ModelSourceError(Problem(str(directory), f"no {ADAPTER_FILE} here",
                                       "give the folder save_adapter wrote"))  # fmt: skip
    return path


def read_adapter(directory: str | Path) -> AdapterFile:
    """The adapter file of `directory` (or the file itself), checked (see module docstring)."""
    path = adapter_path(directory)
    flat = _lora_metadata(path)
    by_part = _split_by_part(flat, path)
    tensors = safetensors_header(path)  # the header only; entries checked against the size
    _check_tensor_table(tensors, path)
    settings = {part: lora_settings(fields, path, part) for part, fields in by_part.items()}
    return AdapterFile(path, settings, tensors)


def _lora_metadata(path: Path) -> dict[str, Any]:
    """The parsed JSON of the header's `__metadata__[lora_adapter_metadata]`; the open also
    refuses anything but a regular file of at most MAX_ADAPTER_BYTES."""
    with open_regular(path, "the adapter file", MAX_ADAPTER_BYTES) as handle:
        head = handle.read(8)
        length = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        if not 2 <= length <= MAX_JSON_BYTES:
            raise ModelSourceError(Problem(str(path), "is not a safetensors file (bad header "
                                           "length)", "save the adapter again"))  # fmt: skip
        text = handle.read(length)
    header = parse_json(text, path, "the safetensors header")
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise refuse(str(path), "its safetensors metadata is not a mapping of strings")
    lora = metadata.get(METADATA_KEY)
    if not lora:
        raise refuse(str(path), "no LoRA config in the file's metadata")
    if len(lora) > MAX_METADATA_BYTES:
        raise refuse(str(path), f"LoRA metadata is {len(lora):,} characters, over qconf's "
                     f"limit of {MAX_METADATA_BYTES:,}")  # fmt: skip
    flat = parse_json(lora, path, "the LoRA metadata")
    if not isinstance(flat, dict):
        raise refuse(str(path), f"LoRA metadata is {shown(flat, 30)}, not a JSON object")
    return flat


def _split_by_part(flat: dict[str, Any], path: Path) -> dict[str, dict[str, Any]]:
    """diffusers stores each part's LoraConfig flattened as '<part>.<field>' in one JSON."""
    by_part: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        part, _, field = key.partition(".")
        if not _PART.fullmatch(part) or not field:
            raise refuse(str(path), f"LoRA metadata key {shown(key)} is not '<part>.<setting>'")
        if part not in by_part and len(by_part) == MAX_PARTS:
            raise refuse(str(path), f"LoRA metadata names more than {MAX_PARTS} parts")
        by_part.setdefault(part, {})[field] = value
    return by_part


def _check_tensor_table(tensors: dict[str, tuple[tuple[int, ...], str]], path: Path) -> None:
    if len(tensors) > MAX_TENSORS:
        raise refuse(str(path), f"holds {len(tensors):,} tensors, over qconf's limit of "
                     f"{MAX_TENSORS:,} for an adapter")  # fmt: skip
    for name, (_, dtype) in tensors.items():
        if len(name) > 2 * MAX_NAME or not _TENSOR.fullmatch(name):
            raise refuse(str(path), f"tensor name {shown(name)} is not '<part>.<module>."
                         "lora_...'")  # fmt: skip
        if dtype not in DTYPES:
            raise refuse(str(path), f"tensor '{name}' has dtype {shown(dtype)}; LoRA weights "
                         f"are {', '.join(DTYPES)}")  # fmt: skip


# --- the tensors --------------------------------------------------------------------------------

_TORCH_DTYPES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}


def load_tensors(adapter: AdapterFile) -> dict[str, Any]:
    """The file's tensors, read once more through the regular-file reader: they must be the
    ones the checked header listed (the file may have been replaced since) and finite."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = adapter.path
    data = read_regular(path, "the adapter file", MAX_ADAPTER_BYTES)
    try:
        tensors = load(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise ModelSourceError(Problem(str(path), f"unreadable adapter file ({shown(str(exc))})",
                                       "save the adapter again")) from None  # fmt: skip
    del data
    found = {k: (tuple(t.shape), str(t.dtype).removeprefix("torch.")) for k, t in tensors.items()}
    listed = {k: (shape, _TORCH_DTYPES[dtype]) for k, (shape, dtype) in adapter.tensors.items()}
    if found != listed:
        raise ModelSourceError(Problem(str(path), "changed while it was read",
                                       "load it again once nothing writes it"))  # fmt: skip
    for name, tensor in tensors.items():
        if not bool(torch.isfinite(tensor).all()):
            raise refuse(str(path), f"tensor '{name}' holds NaN or infinite values")
    return tensors
