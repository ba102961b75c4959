"""Tiny image pipelines: Flux, SD3, SD 1.x, SDXL."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qconf.source.tiny.components import (
    clip_text_encoder,
    clip_tokenizer,
    seeded,
    t5_text_encoder,
    t5_tokenizer,
    vae,
)

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline


def build_flux() -> DiffusionPipeline:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tokenizer, tokenizer_2 = clip_tokenizer(), t5_tokenizer()
    transformer = seeded(
        lambda: FluxTransformer2DModel(
            patch_size=1,
            in_channels=64,  # 4 * 16 latent channels (2x2 patches packed)
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=32,
            num_attention_heads=2,  # inner dim 64
            joint_attention_dim=64,  # == T5 d_model
            pooled_projection_dim=64,  # == CLIP hidden_size
            guidance_embeds=True,  # FLUX.1-dev style (guidance_scale is an input)
            axes_dims_rope=(8, 12, 12),  # sums to attention_head_dim
        )
    )
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(
            shift=3.0,
            use_dynamic_shifting=True,
            base_shift=0.5,
            max_shift=1.15,
            base_image_seq_len=256,
            max_image_seq_len=4096,
        ),
        vae=_flow_vae(scaling_factor=0.3611, shift_factor=0.1159),
        text_encoder=clip_text_encoder(tokenizer, with_projection=False),
        tokenizer=tokenizer,
        text_encoder_2=t5_text_encoder(tokenizer_2, d_model=64),
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )


def _flow_vae(scaling_factor: float, shift_factor: float) -> Any:
    """The 16-channel VAE of Flux and SD3 (no quant convs); they differ in latent statistics."""
    return vae(
        16,
        use_quant_conv=False,
        use_post_quant_conv=False,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
    )


def build_sd3() -> DiffusionPipeline:
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    tokenizer, tokenizer_3 = clip_tokenizer(), t5_tokenizer()
    transformer = seeded(
        lambda: SD3Transformer2DModel(
            sample_size=16,  # latent size of the default 32x32 image
            patch_size=2,
            in_channels=16,
            out_channels=16,
            num_layers=2,
            attention_head_dim=32,
            num_attention_heads=2,  # inner dim 64
            joint_attention_dim=128,  # == T5 d_model >= 2 * CLIP hidden_size
            caption_projection_dim=64,
            pooled_projection_dim=128,  # 2 CLIP projections of 64, concatenated
            pos_embed_max_size=32,
        )
    )
    # Both CLIP encoders are built from the same seed, hence identical; harmless for a test model.
    return StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_flow_vae(scaling_factor=1.5305, shift_factor=0.0609),
        text_encoder=clip_text_encoder(tokenizer, with_projection=True),
        tokenizer=tokenizer,
        text_encoder_2=clip_text_encoder(tokenizer, with_projection=True),
        tokenizer_2=clip_tokenizer(),
        text_encoder_3=t5_text_encoder(tokenizer_3, d_model=128),
        tokenizer_3=tokenizer_3,
        transformer=transformer,
    )


def build_sd() -> DiffusionPipeline:
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    tokenizer = clip_tokenizer()
    unet = seeded(
        lambda: UNet2DConditionModel(
            sample_size=16,  # latent size of the default 32x32 image
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            # 64 wide from the start: the timestep MLP's in_features is block_out_channels[0].
            block_out_channels=(64, 64),
            layers_per_block=1,
            norm_num_groups=32,
            cross_attention_dim=64,  # == CLIP hidden_size
            attention_head_dim=2,  # (diffusers' legacy name for the head *count*) head dim 32
        )
    )
    return StableDiffusionPipeline(
        vae=vae(4, scaling_factor=0.18215),
        text_encoder=clip_text_encoder(tokenizer, with_projection=False),
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
        ),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_sdxl() -> DiffusionPipeline:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    tokenizer, tokenizer_2 = clip_tokenizer(), clip_tokenizer()
    unet = seeded(
        lambda: UNet2DConditionModel(
            sample_size=16,  # latent size of the default 32x32 image
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(64, 64),  # timestep MLP in_features == block_out_channels[0]
            layers_per_block=1,
            norm_num_groups=32,
            attention_head_dim=2,  # head count (legacy name): head dim 32
            use_linear_projection=True,  # as SDXL: Linear proj_in/proj_out, not 1x1 convs
            cross_attention_dim=128,  # both CLIP hidden states (64 + 64), concatenated
            addition_embed_type="text_time",
            addition_time_embed_dim=32,
            # 6 micro-conditioning ids x 32 + CLIP-G projection (64): the add-embedding MLP's
            # in_features, checked by the pipeline against its text_encoder_2.
            projection_class_embeddings_input_dim=6 * 32 + 64,
        )
    )
    return StableDiffusionXLPipeline(
        vae=vae(4, scaling_factor=0.13025),
        text_encoder=clip_text_encoder(tokenizer, with_projection=False),
        text_encoder_2=clip_text_encoder(tokenizer_2, with_projection=True),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            steps_offset=1,
            timestep_spacing="leading",
        ),
        add_watermarker=False,  # needs the invisible-watermark package; noise has nothing to mark
    )
