"""What a part sees and returns inside a real generation: its first call's inputs and output.

When only one part is quantized, every part upstream of it is unchanged, so its first call gets
exactly the inputs it gets unquantized: the denoiser its seeded starting latents, timestep and
text embeddings; a text encoder its token ids; the VAE the final latents (through `decode`).
Comparing first-call outputs therefore measures that part's own error, on the user's model,
prompts and seeds, with no hand-made inputs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

ENTRY_POINTS = ("decode", "forward")  # VAEs are called through decode in text-to-image


@dataclass
class FirstCall:
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    output: Any = None  # the first tensor of what it returned (detached, float32, on CPU)
    seen: bool = False


def entry_point(module: Any) -> str:
    """The method the pipeline calls: `decode` for autoencoders, else `forward`."""
    return "decode" if callable(getattr(module, "decode", None)) else "forward"


@contextmanager
def first_call(module: Any, keep_inputs: bool = False) -> Iterator[FirstCall]:
    """Record the first call of `module` (its entry point) while the block runs."""
    record = FirstCall()
    name = entry_point(module)
    original = getattr(module, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        if not record.seen:
            record.seen = True
            record.output = first_tensor(result)
            if keep_inputs:
                record.args, record.kwargs = _detached(args), _detached(kwargs)
        return result

    setattr(module, name, wrapper)  # an instance attribute: the class is left alone
    try:
        yield record
    finally:
        delattr(module, name)


def first_tensor(value: Any) -> Any:
    """The main tensor of a model output: `.sample`, `last_hidden_state`, or the first element."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().float().cpu()
    for key in ("sample", "last_hidden_state"):
        inner = getattr(value, key, None)
        if isinstance(inner, torch.Tensor):
            return inner.detach().float().cpu()
    if isinstance(value, (tuple, list)) and value:
        return first_tensor(value[0])
    if hasattr(value, "to_tuple"):
        return first_tensor(value.to_tuple())
    raise TypeError(f"no tensor in a {type(value).__name__}")


def _detached(value: Any) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_detached(v) for v in value)
    return value


def output_deviation(output: Any, reference: Any) -> dict[str, float]:
    """Relative L2 error and cosine similarity of a part's output against the reference's."""
    import torch

    a, b = output.flatten().double(), reference.flatten().double()
    norm = float(torch.linalg.vector_norm(b))
    error = float(torch.linalg.vector_norm(a - b))
    cosine = float(torch.nn.functional.cosine_similarity(a, b, dim=0))
    return {"rel_error": error / norm if norm else error, "cosine": cosine}
