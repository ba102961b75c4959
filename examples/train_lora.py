"""LoRA on a quantized base, as a Hydra app around a qconf plan (Flux-family pipelines).

    python examples/train_lora.py                                   # tiny-flux, bf16 base
    python examples/train_lora.py preset=flux-int8wo model=tiny-flux train.rank=8
    python examples/train_lora.py quant.mapping.transformer=quanto-int8   # a part, as on qconf run

The plan is checked for training before any weight is read (a backend that cannot pass
gradients, like int8dq on the transformer, is refused), the quantized pipeline is loaded, a
LoRA adapter is trained on `train.part` with a flow-matching loss on one fixed latent, saved in
diffusers' LoRA format to `<run folder>/lora/`, then reloaded onto a fresh pipeline of the same
plan, which writes `image.png`. Needs `pip install 'qconf[train]'` (peft).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from tqdm.auto import tqdm

import qconf
import qconf.train
from qconf.text import safe

log = logging.getLogger(__name__)


def plan_of(cfg: DictConfig) -> qconf.Plan:
    """The qconf part of the app config (model:, quant:, run:), through qconf's intake: checked
    like any `qconf` command's plan, with no value read from the environment."""
    return qconf.intake(model=cfg.model, quant=cfg.quant, run=cfg.run)


def flow_matching_batch(pipeline, settings: DictConfig) -> dict:  # noqa: ANN001
    """One fixed training example: a random 'image' latent, its noise and timestep, the
    prompt's embeddings (a real script draws these per step from a dataset)."""
    generator = torch.Generator().manual_seed(settings.seed)
    dtype = pipeline.transformer.dtype
    with torch.no_grad():
        prompt_embeds, pooled, text_ids = pipeline.encode_prompt(settings.prompt, prompt_2=None)
    channels = pipeline.transformer.config.in_channels // 4
    latents, image_ids = pipeline.prepare_latents(
        1, channels, settings.size, settings.size, dtype, "cpu", generator
    )
    noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype)
    t = torch.rand(1, generator=generator)  # one fixed timestep: the loss shows learning
    return {"latents": latents, "image_ids": image_ids, "prompt_embeds": prompt_embeds.to(dtype),
            "pooled": pooled.to(dtype), "text_ids": text_ids, "noise": noise, "t": t}  # fmt: skip


def flow_matching_loss(transformer, batch: dict) -> torch.Tensor:  # noqa: ANN001
    """Rectified flow: x_t = (1 - t) x0 + t noise, the model predicts noise - x0."""
    x0, noise, t = batch["latents"], batch["noise"], batch["t"]
    noisy = ((1 - t) * x0.float() + t * noise.float()).to(x0.dtype)
    guidance = torch.tensor([3.5]) if transformer.config.guidance_embeds else None
    prediction = transformer(
        hidden_states=noisy, timestep=t, guidance=guidance,
        pooled_projections=batch["pooled"], encoder_hidden_states=batch["prompt_embeds"],
        txt_ids=batch["text_ids"], img_ids=batch["image_ids"], return_dict=False,
    )[0]  # fmt: skip
    return torch.nn.functional.mse_loss(prediction.float(), (noise - x0).float())


@hydra.main(config_path="conf", config_name="train", version_base=None)
def main(cfg: DictConfig) -> None:
    try:
        train(cfg)
    except qconf.QconfError as exc:  # the user's plan or settings: one line each, exit 2
        for line in exc.lines:
            print(f"error: {safe(line)}", file=sys.stderr)
        raise SystemExit(2) from None


def train(cfg: DictConfig) -> None:
    settings = cfg.train
    plan = plan_of(cfg)
    out = Path(HydraConfig.get().runtime.output_dir)
    torch.manual_seed(settings.seed)
    with qconf.quiet():
        loaded = qconf.load(plan, train=[settings.part])  # refuses untrainable backends first
    pipeline = loaded.pipeline
    part = getattr(pipeline, settings.part)
    qconf.train.add_lora(part, rank=settings.rank, alpha=settings.alpha,
                         targets=list(settings.targets))  # fmt: skip
    params = qconf.train.lora_parameters(part)
    log.info("training %d LoRA weights on %s (%s)", sum(p.numel() for p in params),
             settings.part, type(next(part.parameters())).__name__)  # fmt: skip
    optimizer = torch.optim.AdamW(params, lr=settings.lr)
    batch = flow_matching_batch(pipeline, settings)
    progress = tqdm(range(settings.steps), desc="LoRA steps", file=sys.stderr)
    for step in progress:
        optimizer.zero_grad()
        loss = flow_matching_loss(part, batch)
        loss.backward()
        optimizer.step()
        progress.set_postfix(loss=f"{loss.item():.4f}")
        if step in (0, settings.steps - 1):
            log.info("step %d loss %.4f", step, loss.item())
    adapter = qconf.train.save_adapter(pipeline, out / settings.adapter_dir, {settings.part: part})
    log.info("saved %s", adapter)

    with qconf.quiet():
        fresh = qconf.load_pipeline(plan)  # the same plan, quantized again
    qconf.train.load_adapter(fresh, adapter.parent)
    generator = torch.Generator().manual_seed(0)
    size = settings.size
    image = fresh(settings.prompt, num_inference_steps=plan.run.steps, height=size, width=size,
                  generator=generator).images[0]  # fmt: skip
    image.save(out / "image.png")
    print(f"wrote {out / settings.adapter_dir / qconf.train.ADAPTER_FILE} and {out / 'image.png'}")


if __name__ == "__main__":
    # Hydra applies the composed `hydra:` node (callbacks, env_set, run dir) before main() runs:
    # a preset from --config-dir is checked first, as `qconf run` checks it; per-part overrides
    # (quant.mapping.<part>=<option>) are rewritten as `qconf run` rewrites them.
    try:
        sys.argv[1:] = qconf.app_command_line(Path(__file__).parent / "conf", "train", sys.argv[1:])
    except qconf.QconfError as exc:
        print(*(f"error: {safe(line)}" for line in exc.lines), sep="\n", file=sys.stderr)
        sys.exit(2)
    main()
