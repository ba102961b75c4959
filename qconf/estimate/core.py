"""The estimate: every tensor of every weight-bearing part, counted as the libraries allocate it."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qconf.errors import ModelSourceError, Problem
from qconf.estimate.byte_models import (
    BYTE_MODELS,
    Layer,
    Left,
    is_target,
    skip_patterns,
    skipped,
)
from qconf.estimate.snapshots import is_shipped
from qconf.estimate.sources import (
    estimate_source,
    fp32_matcher,
    meta_model,
    safetensors_header,
)
from qconf.loading.report import PartTotals
from qconf.source.files import read_part_config
from qconf.source.limits import MAX_IMPLIED_PARAMS, check_folder, pipeline_budget


@dataclass(frozen=True)
class PartEstimate:
    part: str
    library: str
    class_name: str
    backend: str | None
    params: int
    bytes_unquantized: int  # loaded without quantization, in the load dtype (fp32 keeps kept)
    bytes: int  # loaded under the plan
    quantized_layers: int = 0
    from_weights: bool = False  # shapes from *.safetensors headers (else config.json only)
    notes: tuple[str, ...] = ()
    # peak while loading / bytes: the entry's load-peak ratio when quantized on load, else 1
    load_peak_ratio: float = 1.0

    @property
    def load_peak_bytes(self) -> int:
        return math.ceil(self.bytes * self.load_peak_ratio)

    def to_json(self) -> dict[str, int]:
        return {
            "params": self.params,
            "bytes_unquantized": self.bytes_unquantized,
            "bytes": self.bytes,
        }


@dataclass(frozen=True)
class Estimate(PartTotals):
    pipeline: str
    folder: str
    torch_dtype: str | None
    parts: dict[str, PartEstimate]

    @property
    def notes(self) -> list[str]:
        return [f"{p.part}: {note}" for p in self.parts.values() for note in p.notes]

    @property
    def load_peak_bytes(self) -> int:
        """Upper estimate of the memory needed while loading: each part's weights times its
        backend's load-peak ratio, summed (as if every part peaked at once, which bounds parts
        loaded one after another). Activations at inference come on top and are not estimated
        (they depend on resolution, frames and batch)."""
        return sum(part.load_peak_bytes for part in self.parts.values())

    @property
    def peak_rule(self) -> str:
        """The load-peak rule applied, in words (e.g. "1.1 x transformer, 1 x the rest")."""
        quantized = [p for p in self.parts.values() if p.backend]
        if not quantized:
            return "the weights: nothing is quantized on load"
        ratios = ", ".join(f"{p.load_peak_ratio} x {p.part}" for p in quantized)
        return f"{ratios} while quantizing on load, 1 x the rest"

    def to_json(self) -> dict[str, Any]:
        """The `qconf estimate --json` contract."""
        components = {name: part.to_json() for name, part in self.parts.items()}
        return {
            "components": components,
            "total_bytes": self.total_bytes,
            "load_peak_bytes": self.load_peak_bytes,
        }


# --- the estimate -----------------------------------------------------------------------------


def estimate(plan_or_resolved: Any, source_folder: str | Path | None = None) -> Estimate:
    """Estimate a plan (Plan, ResolvedPlan, or a composed config) against `source_folder`, or
    the plan's own source (a tiny pipeline, a local folder, a hub id in the local cache).
    Every weight-bearing part the folder's model_index.json lists is counted."""
    from qconf.plan.intake import intake
    from qconf.plan.resolve import ResolvedPlan

    resolved = plan_or_resolved
    if not isinstance(resolved, ResolvedPlan):
        resolved = intake(resolved).resolve()
    folder, found = estimate_source(resolved.plan, source_folder)
    check_folder(folder)  # counts, sizes and header bytes bounded before anything is built
    parts = {}
    with pipeline_budget():  # and what all parts together may build
        for name, part in found.weighted.items():
            resolved_part = resolved.components.get(name)
            entry = resolved_part.entry if resolved_part is not None else None
            parts[name] = _estimate_part(
                folder, name, part.library, part.class_name, entry, resolved.torch_dtype
            )
    return Estimate(found.pipeline, str(folder), resolved.torch_dtype, parts)


def _shape(found: tuple[int, ...] | None, tensor: Any, part_folder: Path, key: str) -> tuple:
    """The shape to count for `key`: the checkpoint's (its .safetensors header) where it has
    one, else the built module's. A checkpoint shape of another rank, with a bool, or with a
    zero where the module has a size cannot be that tensor (and a byte model divides by its
    rows): refused, as is one larger than any real tensor."""
    built = tuple(tensor.shape)
    if found is None or found == built:
        return built
    fits = len(found) == len(built) and not any(isinstance(n, bool) for n in found)
    fits = fits and all(n > 0 or m == 0 for n, m in zip(found, built, strict=True))
    if not fits or math.prod(found) > MAX_IMPLIED_PARAMS:
        raise ModelSourceError(
            Problem(
                f"{part_folder} (*.safetensors)",
                f"tensor '{key}' has shape {list(found)[:8]} in its header, which cannot be "
                f"the {list(built)} its config.json builds",
                "re-save the part, or estimate from config.json alone (move the .safetensors "
                "files away)",
            )
        )
    return found


def _estimate_part(
    folder: Path, name: str, library: str, class_name: str, entry: Any, plan_dtype: str | None
) -> PartEstimate:
    import torch

    model_bytes = BYTE_MODELS.get(entry.backend) if entry is not None else None
    dtype_name = plan_dtype or (model_bytes.default_dtype.get(library) if model_bytes else None)
    load_dtype = getattr(torch, dtype_name or "float32")
    config, model = meta_model(folder, name, library, class_name, load_dtype)
    keep_fp32 = fp32_matcher(model, library, load_dtype)
    header = safetensors_header(folder / name)
    notes: list[str] = []
    if is_shipped(folder):  # a shipped part whose exact config is not public says so
        stand_in = read_part_config(folder / name).get("_qconf_stand_in")
        if isinstance(stand_in, str):
            notes.append(f"approximate: {stand_in}")
    if entry is not None and model_bytes is None and entry.spec.quantizes_on_load:
        notes.append(f"{entry.backend} has no byte model: priced as unquantized")
    saved = None
    if isinstance(config, dict) and config.get("quantization_config"):
        # a part saved pre-quantized: its header says what loads, where its backend can read it
        saved = (
            entry.saved_bytes(header, load_dtype.itemsize, library) if entry is not None else None
        )
        notes.append(
            "config.json holds a quantization_config: the library loads that, not the plan"
            if saved is None
            else "saved pre-quantized: bytes from its safetensors header"
        )
    patterns = skip_patterns(model, library, entry) if model_bytes else []
    params = unquantized = planned = quantized = 0
    left: Counter[Left] = Counter()
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        persistent = set(module._parameters) | (
            set(module._buffers) - module._non_persistent_buffers_set
        )
        target = model_bytes is not None and is_target(module, library, entry)
        target = target and not skipped(library, entry.backend, module_name, patterns)
        tensors = [*module._parameters.items(), *module._buffers.items()]
        for local, tensor in tensors:
            if tensor is None or id(tensor) in seen:
                continue
            seen.add(id(tensor))
            full = f"{module_name}.{local}" if module_name else local
            found = header[full][0] if full in header and saved is None else None
            shape = _shape(found, tensor, folder / name, full)
            if shape != tuple(tensor.shape):
                notes.append(f"{full}: checkpoint shape {shape} != config's {tuple(tensor.shape)}")
            numel = math.prod(shape)
            dtype = tensor.dtype
            if dtype.is_floating_point and local in persistent:
                if keep_fp32(full):
                    dtype = torch.float32
                elif library == "diffusers":  # cast while loading; transformers built the
                    dtype = load_dtype  # module in the load dtype and keeps explicit dtypes
            size = numel * dtype.itemsize
            params += numel if local in module._parameters else 0
            unquantized += size
            if target and local == "weight" and model_bytes is not None:
                rows = shape[1] if type(module).__name__ == "Conv1D" else shape[0]
                # Scales follow the dtype the weight has when it is quantized: in transformers
                # that is after the fp32 keeps (a T5 `wo` torchao quantizes in fp16), while
                # diffusers' quanto quantizes children of its fp32 modules in the load dtype.
                scale_dtype = dtype if library == "transformers" else load_dtype
                scale_size = scale_dtype.itemsize
                layer = Layer(rows, numel // rows, scale_size, str(scale_dtype).split(".")[-1])
                real = model_bytes.weight_bytes(layer, entry)
                if not isinstance(real, Left):
                    planned += real + model_bytes.module_extra(library, scale_size)
                    quantized += 1
                    continue
                left[real] += 1
            planned += size
    for why, count in left.items():
        outcome = "fails to load them" if why.fails else "leaves them unquantized"
        notes.append(f"{count} layer(s) with {why.reason}: {entry.backend} {outcome}")
    if saved is not None:
        planned, quantized = saved
    from_file = entry.file_bytes(load_dtype.itemsize) if entry is not None else None
    if from_file is not None:  # a pre-quantized file: its header says what loads
        planned, note = from_file
        notes.append(note)
        layers = entry.file_layers()
        quantized = layers if layers is not None else quantized
    return PartEstimate(
        name, library, class_name, entry.backend if entry else None, params, unquantized,
        planned, quantized, bool(header), tuple(notes),
        entry.load_peak_ratio() if entry is not None else 1.0,
    )  # fmt: skip
