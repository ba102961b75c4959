"""Layer-level sensitivity of one part: which Linear layers an option hurts most.

* `weight_errors`: the weight proxy, no forward pass. Loads the part unquantized and under the
  option exactly as the library quantizes it, and gives each quantized Linear's relative weight
  error, its bytes either way and the skip entry that keeps it unquantized.
* `measured_layer_deviation`: the check. Quantizes one layer at a time inside the unquantized
  part and measures the part's output on its first call of a real generation (one forward pass
  per layer).
* `linearized_deviation`: a first-order estimate of that measurement for every layer at once
  (one forward and a few backward passes).
* `spearman` compares rankings; `propose_skip` turns the top of one into
  `quant.mapping.<part>.skip` entries that leave exactly those layers alone.

On the tiny pipelines (random weights, every layer drawn alike) the weight proxy is nearly the
same for every layer and does not rank them (Spearman -0.37..+0.36); where a layer sits decides
its effect, which the linearized estimate sees (0.88..0.99; bench/bench_layer_proxy.py). In
bfloat16 any one-layer change moves the output by ~0.2-0.4 % through rounding alone, so int8
measurements below that are noise (tiny-wan int8: Spearman 0.23..0.47 in bfloat16, 0.94..0.99
in float32); float32 has no such floor.

Sits above the load façade (DESIGN.md): it calls compose/validate/load/load_part/estimate and
never reaches into resolve or the backends."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qconf.sensitivity.capture import (
    FirstCall,
    entry_point,
    first_call,
    first_tensor,
    output_deviation,
)

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
    """The plan (plain data) of `base` (overrides, a composed cfg or a Plan) with `part` alone
    quantized under `option` (None: nothing quantized). The base's own quant section is dropped:
    sensitivity measures one part at a time against the unquantized pipeline."""
    from qconf.plan.intake import intake

    plan = intake(overrides=list(base)) if isinstance(base, (list, tuple)) else intake(base)
    data = plan.model_dump(mode="json")
    value = dict(option) if isinstance(option, Mapping) else option
    data["quant"] = {"mapping": {part: value} if value is not None else {}}
    return data


def with_skip(option: Option, names: Iterable[str]) -> dict[str, Any]:
    """`option` as a {backend, kwargs, skip} entry that also leaves `names` unquantized."""
    from qconf.plan.conftree import backend_options

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
        approx = dequantized(module)
        if approx is None:
            continue
        source = original.get_submodule(name)
        errors[name] = (_relative_error(approx, source.weight), _bytes(source), _bytes(module))
    entries = skip_entries(library, backend, errors)
    return {
        name: LayerError(error, before, after, *entries[name])
        for name, (error, before, after) in errors.items()
    }


def dequantized(layer: Any) -> Any:
    """The float weight a quantized layer computes with; None for a plain (unquantized) one or
    a module without a weight."""
    import torch

    from qconf.loading.report import backend_measures

    measures = backend_measures()
    own_layer = measures.layers.get(type(layer).__name__)
    if own_layer is not None:  # the backend's layer holds the format (plain-tensor codes)
        return own_layer.dequantize(layer)
    weight = getattr(layer, "weight", None)
    if not isinstance(weight, torch.Tensor):
        return None
    own = measures.dequantize.get(type(weight).__name__)
    if own is not None:  # the backend's own reading (e.g. packed codes + block scales)
        return own(weight)
    if type(weight) in (torch.Tensor, torch.nn.Parameter) and weight.dtype.is_floating_point:
        return None
    if callable(getattr(weight, "dequantize", None)):  # tensor subclasses that dequantize
        return weight.dequantize()
    return None


def _relative_error(approx: Any, weight: Any) -> float:
    import torch

    exact = weight.detach().double()
    # bitsandbytes puts a diffusers part on the GPU while the unquantized one stays on the CPU
    delta = approx.detach().to(exact.device).double().reshape(exact.shape) - exact
    norm = float(torch.linalg.matrix_norm(exact))
    return float(torch.linalg.matrix_norm(delta)) / norm if norm else 0.0


def _bytes(module: Any) -> int:
    # only the module's own tensors: a Linear's weight, bias and (quanto) input/output scales
    from qconf.loading.report import tensor_bytes

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

    return [name for name in names if skipped(library, backend, name, [key])]


def propose_skip(
    errors: Mapping[str, LayerError], k: int, scores: Mapping[str, float] | None = None
) -> list[str]:
    """Skip entries for the k layers that matter most: by `scores` when given (a measured or
    linearized deviation), else by the weight proxy; ties by name. A layer that an earlier
    entry already covers (a shared leaf name) adds no entry of its own."""
    rank = scores if scores is not None else {n: e.rel_error for n, e in errors.items()}
    order = sorted((n for n in errors if n in rank), key=lambda n: (-rank[n], n))
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


def quantized_linears(module: Any) -> list[str]:
    """Names of the Linear layers of a loaded part whose weight is quantized."""
    import torch

    linears = (n for n, m in module.named_modules() if isinstance(m, torch.nn.Linear))
    return [n for n in linears if dequantized(module.get_submodule(n)) is not None]


# --- the check --------------------------------------------------------------------------------


class _Seen(Exception):
    """Raised right after the part's first call: nothing later in the generation is needed."""


def capture_part(base: Sequence[str] | Any, part: str) -> Captured:
    """Run the unquantized pipeline on the plan's first prompt and seed up to `part`'s first
    call and record it (inputs and output): what every one-layer variant is re-run on."""
    import torch

    import qconf
    from qconf.run.generate import generate
    from qconf.source.video import measuring_run

    cfg = part_cfg(base, part)
    pipeline = qconf.load(cfg).pipeline
    pipeline.set_progress_bar_config(disable=True)  # the stop below would leave it half drawn
    module = getattr(pipeline, part)

    def stop(*_: Any) -> None:
        raise _Seen  # forward hooks run after first_call's wrapper has recorded the call

    # Parts called through `decode` (VAEs) come last anyway and fire no forward hooks.
    handle = module.register_forward_hook(stop) if entry_point(module) == "forward" else None
    try:
        with torch.no_grad(), first_call(module, keep_inputs=True) as call:
            generate(pipeline, measuring_run(qconf.validate(cfg)))
    except _Seen:
        pass
    finally:
        if handle is not None:
            handle.remove()
    if not call.seen:
        raise ValueError(f"the pipeline never called '{part}'")
    return Captured(module, call)


def measured_layer_deviation(
    base: Sequence[str] | Any,
    part: str,
    option: Option,
    layers: Iterable[str] | None = None,
    *,
    captured: Captured | None = None,
) -> dict[str, float]:
    """Relative L2 error of `part`'s first-call output when only that layer is quantized under
    `option`, for each of `layers` (None: every layer the option quantizes). One forward pass
    per layer; `captured` (from capture_part) saves the generation across options."""
    import qconf

    captured = captured or capture_part(base, part)
    quantized = qconf.load_part(part_cfg(base, part, option), part)
    names = quantized_linears(quantized) if layers is None else list(layers)
    reference = _rerun(captured)  # the re-run, not the recorded output: same code path
    result = {}
    for name in names:
        parent_name, _, leaf = name.rpartition(".")
        parent = captured.module.get_submodule(parent_name)
        original = getattr(parent, leaf)
        # load_part places the part itself: the pipeline may sit elsewhere (model.device_map)
        setattr(parent, leaf, quantized.get_submodule(name).to(original.weight.device))
        try:
            result[name] = output_deviation(_rerun(captured), reference)["rel_error"]
        finally:
            setattr(parent, leaf, original)
    return result


def linearized_deviation(
    base: Sequence[str] | Any,
    part: str,
    option: Option,
    layers: Iterable[str] | None = None,
    *,
    captured: Captured | None = None,
    probes: int = 16,
    seed: int = 0,
) -> dict[str, float]:
    """First-order estimate of measured_layer_deviation for every layer at once, at the cost
    of one forward and `probes` backward passes (not one pass per layer). For a random probe r,
    r·(J dW x) is the gradient at the layer's output dotted with its change dW x, and its mean
    square is |J dW x|^2. Weights only: int8dq's activation rounding is not seen."""
    import math

    import torch

    import qconf

    captured = captured or capture_part(base, part)
    quantized = qconf.load_part(part_cfg(base, part, option), part)
    names = quantized_linears(quantized) if layers is None else list(layers)
    module = captured.module
    deltas = {}
    for name in names:
        weight = module.get_submodule(name).weight
        approx = dequantized(quantized.get_submodule(name)).to(weight.device)
        deltas[name] = approx.float() - weight.float()
    dots: dict[str, float] = dict.fromkeys(names, 0.0)  # r·(J dW x) of the current probe
    device = next(module.parameters()).device
    anchor = torch.zeros((), device=device, requires_grad=True)  # every layer output on the graph

    def tap(name: str) -> Any:
        def hook(_: Any, inputs: tuple[Any, ...], output: Any) -> Any:
            x, out = inputs[0].detach(), output + anchor.to(output.dtype)

            def on_grad(grad: Any) -> None:
                change = torch.nn.functional.linear(x.float(), deltas[name])
                dots[name] += float(torch.sum(grad.float() * change, dtype=torch.float64))

            out.register_hook(on_grad)
            return out

        return hook

    handles = [module.get_submodule(n).register_forward_hook(tap(n)) for n in names]
    flags = [(p, p.requires_grad) for p in module.parameters()]
    try:
        for p, _ in flags:
            p.requires_grad_(False)  # no weight gradients: only the activations' are used
        with torch.enable_grad():
            output = _main_output(
                getattr(module, entry_point(module))(*captured.call.args, **captured.call.kwargs)
            )
        generator = torch.Generator().manual_seed(seed)
        squares = dict.fromkeys(names, 0.0)
        for i in range(probes):
            probe = torch.randn(output.shape, generator=generator).to(output.device, output.dtype)
            dots.update(dict.fromkeys(names, 0.0))
            torch.autograd.grad(output, anchor, probe, retain_graph=i < probes - 1)
            for name in names:
                squares[name] += dots[name] ** 2 / probes
    finally:
        for handle in handles:
            handle.remove()
        for p, flag in flags:
            p.requires_grad_(flag)
    norm = float(torch.linalg.vector_norm(output.detach().double()))
    return {name: math.sqrt(squares[name]) / norm for name in names}


def _main_output(value: Any) -> Any:
    # first_tensor's choice (`.sample`, first element), kept on the autograd graph
    for key in ("sample", "last_hidden_state"):
        if getattr(value, key, None) is not None:
            return getattr(value, key)
    return value if hasattr(value, "dim") else _main_output(value[0])


def _rerun(captured: Captured) -> Any:
    import torch

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
    parts = sorted(plan.resolve().components)  # every weight-bearing part
    model = plan.model.model_dump(exclude_none=True)
    every = qconf.validate({"model": model, "quant": {"mapping": dict.fromkeys(parts, option)}})
    shares = estimate(every).parts
    # the first in name order on a tie (Wan 2.2's two equal experts: `transformer`)
    return max(
        parts, key=lambda p: (shares[p].bytes_unquantized - shares[p].bytes, shares[p].params)
    )
