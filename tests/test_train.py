"""LoRA on a quantized base, for real: every trainable claim in the registry is measured.

For each backend option that runs on this machine, on a diffusers part (tiny Flux transformer)
and a transformers part (tiny T5): 5 AdamW steps on a fixed batch. An option *trains* when the
loss falls, every LoRA matrix gets a non-zero gradient, the gradient reaches the layer input
(earlier layers would learn too), and the base weights stay bit-identical and quantized. The
registry's claim (`train_reason`) must equal what is measured, both ways."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import qconf
import qconf.train
from qconf.backends import EntryBase
from qconf.plan.conftree import backend_options

pytest.importorskip("peft")

PARTS = {"diffusers": "transformer", "transformers": "text_encoder_2"}


def _entry(option: str) -> EntryBase:
    from pydantic import TypeAdapter

    from qconf.backends import BackendEntry

    return TypeAdapter(BackendEntry).validate_python(backend_options()[option])


def _runnable(library: str) -> list[str]:
    # With a GPU visible, the CUDA-only options (bitsandbytes on diffusers parts) are measured too.
    gpu = torch.cuda.is_available()
    return sorted(o for o in backend_options() if (gpu or _entry(o).cuda_reason(library) is None)
                  and library in _entry(o).spec.params)  # fmt: skip


CASES = [(library, option) for library in PARTS for option in _runnable(library)]


def _inner(tensor: Any) -> list[torch.Tensor]:
    """A weight as plain tensors (tensor subclasses by their inner data) to compare bits."""
    plain = type(tensor) in (torch.Tensor, torch.nn.Parameter)
    if hasattr(tensor, "__tensor_flatten__") and not plain:
        names, _ = tensor.__tensor_flatten__()
        return [t for name in names for t in _inner(getattr(tensor, name))]
    return [tensor.detach().clone()]


def _inputs(module: Any, library: str) -> tuple[dict[str, Any], torch.Tensor]:
    """A fixed batch; returns the model kwargs and the tensor whose gradient shows that the
    gradient flows back through the whole part. On the part's device: bitsandbytes places a
    part on the GPU when one is visible."""
    kwargs, first = _cpu_inputs(module, library)
    device = next(module.parameters()).device
    first_on_device = first.detach().to(device).requires_grad_(True)
    moved = {k: first_on_device if v is first else v.to(device) if torch.is_tensor(v) else v
             for k, v in kwargs.items()}  # fmt: skip
    return moved, first_on_device


def _cpu_inputs(module: Any, library: str) -> tuple[dict[str, Any], torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    dtype = torch.bfloat16
    if library == "diffusers":
        config = module.config
        hidden = torch.randn(1, 16, config.in_channels, generator=generator, dtype=dtype)
        kwargs = {
            "hidden_states": hidden.requires_grad_(True),
            "encoder_hidden_states": torch.randn(
                1, 8, config.joint_attention_dim, generator=generator, dtype=dtype
            ),  # fmt: skip
            "pooled_projections": torch.randn(
                1, config.pooled_projection_dim, generator=generator, dtype=dtype
            ),  # fmt: skip
            "timestep": torch.tensor([0.5]),
            "img_ids": torch.zeros(16, 3),
            "txt_ids": torch.zeros(8, 3),
            "guidance": torch.tensor([3.5]) if config.guidance_embeds else None,
            "return_dict": False,
        }
        return kwargs, hidden
    embeds = torch.randn(1, 8, module.config.d_model, generator=generator, dtype=dtype)
    return {"inputs_embeds": embeds.requires_grad_(True)}, embeds


def _output(module: Any, library: str, kwargs: dict[str, Any]) -> torch.Tensor:
    out = module(**kwargs)
    return (out[0] if library == "diffusers" else out.last_hidden_state).float()


def train_five_steps(module: Any, library: str) -> dict[str, Any]:
    """What training measures (see module docstring)."""
    torch.manual_seed(0)
    qconf.train.add_lora(module, rank=4)
    params = qconf.train.lora_parameters(module)
    kwargs, first_input = _inputs(module, library)
    with torch.no_grad():
        target = torch.randn_like(_output(module, library, kwargs))
    # After the first forward: bitsandbytes' CPU path repacks 4-bit weights on first use (a new
    # layout of the same values, not training).
    base = {n: _inner(p) for n, p in module.named_parameters() if "lora_" not in n}
    optimizer = torch.optim.AdamW(params, lr=1e-2)
    losses, got_grad = [], {id(p): False for p in params}
    try:
        for _ in range(5):
            optimizer.zero_grad()
            first_input.grad = None
            loss = torch.nn.functional.mse_loss(_output(module, library, kwargs), target)
            loss.backward()
            for p in params:  # lora_A's gradient is 0 until lora_B leaves its zero init
                got_grad[id(p)] |= p.grad is not None and bool(p.grad.abs().sum() > 0)
            optimizer.step()
            losses.append(loss.item())
    except RuntimeError as exc:  # e.g. "element 0 of tensors does not require grad"
        return {"trains": False, "why": str(exc).splitlines()[0]}
    input_grad = first_input.grad is not None and bool(first_input.grad.abs().sum() > 0)
    unchanged = all(
        len(before) == len(after := _inner(p)) and all(map(torch.equal, before, after))
        for n, p in module.named_parameters() if n in base for before in [base[n]]
    )  # fmt: skip
    return {
        "trains": losses[-1] < losses[0] and all(got_grad.values()) and input_grad and unchanged,
        "why": f"losses={losses} all_grads={all(got_grad.values())} input_grad={input_grad} "
        f"base_unchanged={unchanged}",
        "unchanged": unchanged,
    }


@pytest.mark.parametrize(("library", "option"), CASES, ids=[f"{lib}-{o}" for lib, o in CASES])
def test_trainable_claim_matches_real_training(
    library: str, option: str, qconf_cache: Path
) -> None:
    part = PARTS[library]
    cfg = qconf.compose([f"quant.mapping.{part}={option}"])
    module = qconf.load_part(cfg, part)
    quantized = {type(p).__name__ for p in module.parameters()} - {"Parameter"}
    claimed = _entry(option).train_reason(library) is None
    measured = train_five_steps(module, library)
    assert measured["trains"] == claimed, (option, library, measured["why"])
    if claimed:
        assert quantized <= {type(p).__name__ for p in module.parameters()}  # still quantized
    else:
        with pytest.raises(qconf.PlanError, match=f"cannot train LoRA on '{part}'"):
            qconf.load_part(cfg, part, train=True)


def _on_gpu(pipeline: Any) -> Any:
    """One device for the whole pipeline: bitsandbytes puts its parts on the GPU when one is
    visible, the other parts stay on the CPU."""
    return pipeline.to("cuda") if torch.cuda.is_available() else pipeline


TRAINABLE_ON_TRANSFORMER = [o for lib, o in CASES if lib == "diffusers"
                            and _entry(o).train_reason("diffusers") is None]  # fmt: skip


@pytest.mark.parametrize("option", TRAINABLE_ON_TRANSFORMER)
def test_adapter_reloads_onto_a_fresh_pipeline_of_the_same_plan(
    option: str, tmp_path: Path, qconf_cache: Path
) -> None:
    cfg = qconf.compose([f"quant.mapping.transformer={option}"])

    def image(pipeline: Any) -> torch.Tensor:
        return pipeline("a cat", num_inference_steps=1, height=32, width=32, output_type="pt",
                        generator=torch.Generator().manual_seed(0)).images  # fmt: skip

    pipeline = _on_gpu(qconf.load_pipeline(cfg))
    before_lora = image(pipeline)
    qconf.train.add_lora(pipeline.transformer, rank=4)
    with torch.no_grad():
        for p in qconf.train.lora_parameters(pipeline.transformer):
            p.normal_(0, 0.3, generator=torch.Generator(p.device).manual_seed(1))
    adapted = image(pipeline)
    assert not torch.equal(adapted, before_lora)  # the adapter does something
    qconf.train.save_adapter(pipeline, tmp_path / "lora", {"transformer": pipeline.transformer})
    assert [p.name for p in (tmp_path / "lora").iterdir()] == [qconf.train.ADAPTER_FILE]
    fresh = _on_gpu(qconf.load_pipeline(cfg))
    assert qconf.train.load_adapter(fresh, tmp_path / "lora") == ["transformer"]
    assert torch.equal(image(fresh), adapted)


def test_a_plan_for_training_refuses_int8dq_before_loading(qconf_cache: Path) -> None:
    cfg = qconf.compose(["quant.mapping.transformer=int8dq", "quant.mapping.text_encoder_2=int8wo"])
    with pytest.raises(qconf.PlanError, match="Int8DynamicActivationInt8WeightConfig"):
        qconf.load(cfg, train=["transformer"])
    assert qconf.load_part(cfg, "text_encoder_2", train=True) is not None
    from qconf.cli.main import main

    assert main(["validate", "--train", "quant.mapping.transformer=int8dq"]) == 2
    assert main(["validate", "--train", "quant.mapping.transformer=int8wo"]) == 0


def test_load_part_refuses_what_load_refuses(tmp_path: Path) -> None:
    with pytest.raises(qconf.PlanError, match="not a weight-bearing part"):
        qconf.load_part(qconf.compose(), "tokenizer")
    with pytest.raises(qconf.PlanError, match="did you mean"):
        qconf.load_part(qconf.compose(["quant.mapping.transformer=int8w"]), "transformer")


@pytest.mark.parametrize("part", ["transformer", "text_encoder_2"])
def test_training_estimate_matches_one_real_optimizer_step(part: str, qconf_cache: Path) -> None:
    from qconf.estimate.training import lora_estimate

    cfg = qconf.compose(["preset=flux-int8wo", "model=tiny-flux"])
    plan = qconf.validate(cfg)
    estimated = lora_estimate(plan, [part], rank=8)[part]
    module = qconf.load_part(cfg, part, train=True)
    library = "diffusers" if part == "transformer" else "transformers"
    qconf.train.add_lora(module, rank=8)
    params = qconf.train.lora_parameters(module)
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    kwargs, _ = _inputs(module, library)
    _output(module, library, kwargs).square().mean().backward()
    optimizer.step()
    state = [t for s in optimizer.state.values() for t in s.values() if t.dim() > 0]
    measured = sum(
        t.numel() * t.element_size() for t in [*params, *(p.grad for p in params), *state]
    )
    assert estimated.params == sum(p.numel() for p in params)
    assert abs(estimated.total_bytes - measured) <= 0.03 * measured


def test_estimate_train_cli_refuses_untrainable_parts() -> None:
    from qconf.cli.main import main

    assert main(["estimate", "model=tiny-flux", "--train", "transformer", "--rank", "8"]) == 0
    assert main(["estimate", "quant.mapping.transformer=int8dq", "--train", "transformer"]) == 2
    assert main(["estimate", "--train", "tokenizer"]) == 2
