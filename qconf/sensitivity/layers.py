"""Layer-level sensitivity of one part: which Linear layers an option hurts most.

The proxy (`weight_errors`) needs no forward pass: it loads the part unquantized and under the
option, exactly as the library quantizes it, and compares each quantized Linear's dequantized
weight with the original. The check (`measured_layer_deviation`) quantizes one layer at a time
inside the unquantized part and measures the part's output on its first call of a real
generation. `spearman` says how well the first ranks the second; `propose_skip` turns the top
of the ranking into `quant.mapping.<part>.skip` entries that leave exactly those layers alone.

Sits above the load façade (DESIGN.md): it calls compose/validate/load/load_part/estimate and
never reaches into resolve or the backends."""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qconf.sensitivity.capture import FirstCall, entry_point, first_call, output_deviation

Option = str | Mapping[str, Any]  # a conf/backend option name, or {backend, kwargs[, skip]}


@dataclass(frozen=True)
class LayerError:
    """The proxy for one quantized Linear, and what keeping it unquantized costs."""

    rel_error: float  # ||dequant(Wq) - W||_F / ||W||_F
    bytes_unquantized: int  # the module's own tensors (weight, bias, buffers), unquantized
    bytes_quantized: int  # the same module under the option (quant state and scales included)
    skip_name: str  # the quant.mapping.<part>.skip entry that leaves this layer unquantized
    # other quantized layers that entry leaves unquantized too (quanto in diffusers matches leaf
    # names, so "to_q" covers every block's to_q); empty when the entry is exact
    also_skips: tuple[str, ...] = ()


@dataclass
class Captured:
    """The unquantized part and its first call inside a real generation of the plan's run."""

    module: Any
    call: FirstCall


# --- plans for one part -----------------------------------------------------------------------


def part_cfg(base: Sequence[str] | Any, part: str, option: Option | None = None) -> Any:
    """The composed plan of `base` (overrides, or an already composed cfg) with `part` alone
    quantized under `option` (None: nothing quantized). The base's own quant section is dropped:
    sensitivity measures one part at a time against the unquantized pipeline."""
    import qconf
    from omegaconf import DictConfig, OmegaConf, open_dict

    if isinstance(base, (list, tuple)):
        cfg = qconf.compose(list(base))
    else:
        cfg = copy.deepcopy(base) if isinstance(base, DictConfig) else OmegaConf.create(base)
    value = dict(option) if isinstance(option, Mapping) else option
    with open_dict(cfg):
        cfg.quant = {"backend": None, "kwargs": {}, "components": None, "mapping": {}}
        if value is not None:
            cfg.quant.mapping[part] = value
    return cfg


def with_skip(option: Option, names: Iterable[str]) -> dict[str, Any]:
    """`option` as a {backend, kwargs, skip} entry that also leaves `names` unquantized."""
    from qconf.paths import backend_options

    entry = dict(backend_options()[option]) if isinstance(option, str) else dict(option)
    entry["skip"] = [*dict.fromkeys([*(entry.get("skip") or []), *names])]
    return entry


def _library_backend(cfg: Any, part: str) -> tuple[str, str]:
    import qconf

    resolved = qconf.validate(cfg).resolve().components[part]
    if resolved is None:
        raise ValueError(f"the option leaves '{part}' unquantized")
    return resolved.library, resolved.backend


# --- the proxy --------------------------------------------------------------------------------


def weight_errors(base: Sequence[str] | Any, part: str, option: Option) -> dict[str, LayerError]:
    """Relative Frobenius error of every Linear weight `option` quantizes in `part`, keyed by
    module name, with its bytes either way and the skip entry that keeps it unquantized. Layers
    the library leaves alone (skip lists, fp32 keeps, shapes it rejects) are absent."""
    import qconf

    quantized_cfg = part_cfg(base, part, option)
    library, backend = _library_backend(quantized_cfg, part)
    original = qconf.load_part(part_cfg(base, part), part)
    quantized = qconf.load_part(quantized_cfg, part)
    errors = {}
    for name, module in quantized.named_modules():
        weight = getattr(module, "weight", None)
        approx = dequantized(weight) if weight is not None else None
        if approx is None:
            continue
        source = original.get_submodule(name)
        errors[name] = (_relative_error(approx, source.weight), _bytes(source), _bytes(module))
    entries = skip_entries(library, backend, errors)
    return {
        name: LayerError(error, before, after, *entries[name])
        for name, (error, before, after) in errors.items()
    }


def dequantized(weight: Any) -> Any:
    """The float weight a quantized tensor stands for; None for a plain (unquantized) one."""
    import torch

    kind = type(weight).__name__
    if kind == "Params4bit":  # bitsandbytes 4-bit: packed codes + blockwise absmax
        import bitsandbytes.functional as bnb

        return bnb.dequantize_4bit(weight.data, weight.quant_state)
    if kind == "Int8Params":  # bitsandbytes LLM.int8: int8 rows (CB) + a scale per row (SCB)
        import bitsandbytes.functional as bnb

        if weight.SCB is None:  # has_fp16_weight: still the float weight
            return None
        return bnb.int8_vectorwise_dequant(weight.data, weight.SCB)
    if type(weight) in (torch.Tensor, torch.nn.Parameter) and weight.dtype.is_floating_point:
        return None
    if callable(getattr(weight, "dequantize", None)):  # torchao subclasses, quanto QTensors
        return weight.dequantize()
    return None


def _relative_error(approx: Any, weight: Any) -> float:
    import torch

    exact = weight.detach().double()
    delta = approx.detach().double().reshape(exact.shape) - exact
    norm = float(torch.linalg.matrix_norm(exact))
    return float(torch.linalg.matrix_norm(delta)) / norm if norm else 0.0


def _bytes(module: Any) -> int:
    # only the module's own tensors: a Linear's weight, bias and (quanto) input/output scales
    from qconf.report import tensor_bytes

    tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
    return sum(tensor_bytes(t) for t in tensors if t is not None)


# --- skip entries -----------------------------------------------------------------------------


def skip_entries(
    library: str, backend: str, layers: Iterable[str]
) -> dict[str, tuple[str, tuple[str, ...]]]:
    """For each quantized layer, the skip entry that covers it and as few others as the
    library's matching allows, and those others. Tried in order: the module name (exact almost
    everywhere), `<name>.weight` (diffusers+torchao match substrings, so a plain name also hits
    `single_<name>`, but a full parameter name only itself), the leaf name (diffusers+quanto
    compare child names only)."""
    names = sorted(layers)
    result = {}
    for name in names:
        candidates = [name, f"{name}.weight", name.rsplit(".", 1)[-1]]
        covers = {key: _covered(library, backend, key, names) for key in candidates}
        usable = [key for key in candidates if name in covers[key]]
        if not usable:
            raise ValueError(f"no skip entry leaves '{name}' unquantized ({library}, {backend})")
        best = min(usable, key=lambda key: len(covers[key]))  # first of the smallest covers
        result[name] = (best, tuple(n for n in covers[best] if n != name))
    return result


def _covered(library: str, backend: str, key: str, names: Sequence[str]) -> list[str]:
    """The layers among `names` that skip entry `key` leaves unquantized."""
    from qconf.estimate.byte_models import skipped

    def hit(name: str) -> bool:
        # diffusers' torchao quantizer also skips a parameter whose full name equals the key
        exact = library == "diffusers" and backend == "torchao" and key == f"{name}.weight"
        return exact or skipped(library, backend, name, [key])

    return [name for name in names if hit(name)]


def propose_skip(errors: Mapping[str, LayerError], k: int) -> list[str]:
    """Skip entries for the k layers with the largest proxy error (ties by name). A layer that
    an earlier entry already covers (a shared leaf name) adds no entry of its own."""
    order = sorted(errors, key=lambda name: (-errors[name].rel_error, name))
    chosen: list[str] = []
    covered: set[str] = set()
    for name in order:
        if len(chosen) == k:
            break
        if name in covered:
            continue
        error = errors[name]
        chosen.append(error.skip_name)
        covered.update((name, *error.also_skips))
    return chosen


def skipped_layers(errors: Mapping[str, LayerError], names: Iterable[str]) -> set[str]:
    """The layers of `errors` that skip entries `names` leave unquantized (to price a list)."""
    wanted = set(names)
    return {
        layer
        for name, error in errors.items()
        if error.skip_name in wanted
        for layer in (name, *error.also_skips)
    }


def unquantized_linears(module: Any) -> set[str]:
    """Names of the Linear layers of a loaded part whose weight is not quantized."""
    import torch

    return {
        name
        for name, child in module.named_modules()
        if isinstance(child, torch.nn.Linear) and dequantized(child.weight) is None
    }


# --- the check --------------------------------------------------------------------------------


def capture_part(base: Sequence[str] | Any, part: str) -> Captured:
    """Run the unquantized pipeline on the plan's prompts and seeds and record `part`'s first
    call (inputs and output): the inputs every one-layer variant is then re-run on."""
    import qconf
    import torch
    from qconf.generate import generate

    cfg = part_cfg(base, part)
    pipeline = qconf.load(cfg).pipeline
    module = getattr(pipeline, part)
    with torch.no_grad(), first_call(module, keep_inputs=True) as call:
        generate(pipeline, qconf.validate(cfg).run)
    if not call.seen:
        raise ValueError(f"the pipeline never called '{part}'")
    return Captured(module, call)


def measured_layer_deviation(
    base: Sequence[str] | Any,
    part: str,
    option: Option,
    layers: Iterable[str],
    *,
    captured: Captured | None = None,
) -> dict[str, float]:
    """Relative L2 error of `part`'s first-call output when only that layer is quantized under
    `option`, for each of `layers`. `captured` (from capture_part) saves the generation when the
    same base is checked under several options."""
    import qconf

    captured = captured or capture_part(base, part)
    quantized = qconf.load_part(part_cfg(base, part, option), part)
    reference = _rerun(captured)  # the re-run, not the recorded output: same code path
    result = {}
    for name in layers:
        parent_name, _, leaf = name.rpartition(".")
        parent = captured.module.get_submodule(parent_name)
        original = getattr(parent, leaf)
        setattr(parent, leaf, quantized.get_submodule(name))
        try:
            result[name] = output_deviation(_rerun(captured), reference)["rel_error"]
        finally:
            setattr(parent, leaf, original)
    return result


def _rerun(captured: Captured) -> Any:
    import torch

    from qconf.sensitivity.capture import first_tensor

    call = getattr(captured.module, entry_point(captured.module))
    with torch.no_grad():
        return first_tensor(call(*captured.call.args, **captured.call.kwargs))


# --- ranking and choosing the part ------------------------------------------------------------


def spearman(x: Mapping[str, float], y: Mapping[str, float]) -> float:
    """Spearman rank correlation of two per-layer measures over their common keys (nan when
    fewer than two are shared)."""
    import torch
    from torchmetrics.functional import spearman_corrcoef

    keys = sorted(set(x) & set(y))
    if len(keys) < 2:
        return float("nan")
    a = torch.tensor([float(x[k]) for k in keys], dtype=torch.float64)
    b = torch.tensor([float(y[k]) for k in keys], dtype=torch.float64)
    return float(spearman_corrcoef(a, b))


def largest_part(plan: Any, option: str = "int8wo") -> str:
    """The part where layer-level choices matter most: the one whose Linear layers `option`
    would shrink by the most bytes (by the estimator, nothing loaded). Counting parameters
    instead would pick a tiny pipeline's VAE, whose weights are mostly convolutions."""
    import qconf
    from qconf.estimate import estimate

    plan = plan if isinstance(plan, qconf.Plan) else qconf.validate(plan)
    parts = sorted(estimate(plan).parts)
    model = plan.model.model_dump(exclude_none=True)
    every = qconf.validate({"model": model, "quant": {"mapping": dict.fromkeys(parts, option)}})
    shares = estimate(every).parts
    return max(
        parts,
        key=lambda p: (shares[p].bytes_unquantized - shares[p].bytes, shares[p].params, p),
    )
