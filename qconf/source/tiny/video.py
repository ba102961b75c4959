"""Tiny video pipelines: Wan 2.1, Wan 2.2 (two experts), LTX-Video."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from qconf.source.tiny.components import (
    seeded,
    t5_text_encoder,
    t5_tokenizer,
)

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline


def _umt5_text_encoder(tokenizer: Any, d_model: int) -> Any:
    """UMT5 encoder (Wan's text encoder): T5 v1.1 layout with per-layer position buckets."""
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=32,
        num_heads=d_model // 32,
        d_ff=128,
        num_layers=2,
        feed_forward_proj="gated-gelu",
        relative_attention_num_buckets=8,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return seeded(lambda: UMT5EncoderModel(config))


def _wan_transformer() -> Any:
    from diffusers import WanTransformer3DModel

    return seeded(
        lambda: WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=32,  # inner dim 64; rope splits 32 into t/h/w = 12/10/10
            in_channels=16,  # == vae z_dim
            out_channels=16,  # proj_out: 64 -> 16 * 1 * 2 * 2 = 64
            text_dim=64,  # == UMT5 d_model
            freq_dim=256,
            ffn_dim=128,
            num_layers=1,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            rope_max_seq_len=32,
        )
    )


def _wan_pipeline(*, two_experts: bool) -> DiffusionPipeline:
    from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanPipeline

    tokenizer = t5_tokenizer()  # UMT5 uses the same Unigram scheme as T5
    # Three 2x spatial downsamples (8x, as the real VAE), two of them temporal too (4x);
    # its attention uses 1x1 convolutions, so the VAE holds no Linear at all.
    vae = seeded(
        lambda: AutoencoderKLWan(
            base_dim=16,
            z_dim=16,
            dim_mult=[1, 1, 1, 1],
            num_res_blocks=1,
            temperal_downsample=[False, True, True],
        )
    )
    return WanPipeline(
        tokenizer=tokenizer,
        text_encoder=_umt5_text_encoder(tokenizer, d_model=64),
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        transformer=_wan_transformer(),
        # Wan 2.2 A14B: a high-noise expert (transformer) for t >= boundary_ratio * 1000 and a
        # low-noise expert (transformer_2) below it. Same seed, so the two start identical.
        transformer_2=_wan_transformer() if two_experts else None,
        boundary_ratio=0.875 if two_experts else None,
    )


def build_wan() -> DiffusionPipeline:
    return _wan_pipeline(two_experts=False)


def build_wan22() -> DiffusionPipeline:
    return _wan_pipeline(two_experts=True)


def build_ltx() -> DiffusionPipeline:
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )

    tokenizer = t5_tokenizer()
    transformer = seeded(
        lambda: LTXVideoTransformer3DModel(
            in_channels=64,  # == vae latent_channels (patch 1): proj_in is a 64-wide Linear
            out_channels=64,
            patch_size=1,
            patch_size_t=1,
            num_attention_heads=2,
            attention_head_dim=32,  # inner dim 64
            cross_attention_dim=64,  # == inner dim (captions are projected to it)
            num_layers=1,
            caption_channels=64,  # == T5 d_model
        )
    )
    # 4x spatial and 4x temporal compression (two scaling blocks); convolutions only.
    vae = seeded(
        lambda: AutoencoderKLLTXVideo(
            in_channels=3,
            out_channels=3,
            latent_channels=64,
            block_out_channels=(16, 16, 16, 16),
            decoder_block_out_channels=(16, 16, 16, 16),
            layers_per_block=(1, 1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1, 1),
            spatio_temporal_scaling=(True, True, False, False),
            decoder_spatio_temporal_scaling=(True, True, False, False),
            decoder_inject_noise=(False, False, False, False, False),
            upsample_residual=(False, False, False, False),
            upsample_factor=(1, 1, 1, 1),
            timestep_conditioning=False,
            patch_size=1,
            patch_size_t=1,
            encoder_causal=True,
            decoder_causal=False,
        )
    )
    return LTXPipeline(
        # LTX-Video's own scheduler settings (resolution-dependent shift).
        scheduler=FlowMatchEulerDiscreteScheduler(
            use_dynamic_shifting=True,
            base_shift=0.95,
            max_shift=2.05,
            base_image_seq_len=1024,
            max_image_seq_len=4096,
            shift_terminal=0.1,
        ),
        vae=vae,
        text_encoder=t5_text_encoder(tokenizer, d_model=64),
        tokenizer=tokenizer,
        transformer=transformer,
    )
