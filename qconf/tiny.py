"""Built-in tiny diffusers pipelines: seeded random weights, built fully offline.

They exist so that plans, backends and the CLI can be exercised end to end (load, quantize,
generate) on a laptop CPU in seconds, with no network and no multi-GB download. The weights are
random, so the images are noise; what matters is that every part has the *architecture* of the
real pipeline and that the shapes are friendly to every quantization backend.

Shape rules (why the dimensions below look the way they do):

* Every ``nn.Linear`` has ``in_features % 64 == 0`` and ``out_features % 32 == 0``. bitsandbytes
  4-bit on CPU and torchao int4 with group size 32 reject (or silently skip) layers that are not
  divisible, and quanto groups weights too. So hidden sizes are 64 (or a multiple), MLP widths
  128/256, and the UNet's first block is 64 wide because its timestep projection has
  ``in_features == block_out_channels[0]``.
* Flux: ``in_channels == 4 * vae.latent_channels`` (2x2 latent patches are packed into tokens),
  ``joint_attention_dim == T5 d_model``, ``pooled_projection_dim == CLIP hidden_size`` and
  ``sum(axes_dims_rope) == attention_head_dim``.
* SD3: the two CLIP hidden states are concatenated and zero-padded up to the T5 width, so
  ``T5 d_model (== joint_attention_dim) >= 2 * CLIP hidden_size``; ``pooled_projection_dim`` is
  the sum of the two CLIP projection dims.
* SDXL: the UNet cross-attends to both CLIP hidden states concatenated
  (``cross_attention_dim == 64 + 64``) and its add-embedding MLP takes the 6 micro-conditioning
  ids plus CLIP-G's projection (``6 * addition_time_embed_dim + projection_dim == 256``).
* Wan (``tiny-wan``: 2.1, one transformer; ``tiny-wan22``: 2.2 A14B, two experts switched at
  ``boundary_ratio``): ``text_dim == UMT5 d_model``, ``in_channels == vae z_dim``, and
  ``proj_out`` maps to ``out_channels * 1 * 2 * 2 == 64``. The VAE compresses 8x in space and 4x
  in time, so ``num_frames`` should be ``4k + 1``.
* LTX-Video: patch size 1, so ``in_channels == vae latent_channels`` (64, to keep ``proj_in``
  64 wide) and ``caption_channels == T5 d_model``; the VAE compresses 4x in space and time.

Nothing here touches the hub: configs are built from literals, tokenizers from in-memory vocabs
(no sentencepiece model file), and the result is written once to ``cache_root()/tiny/...`` and
reused. torch/diffusers/transformers are imported inside functions only, so importing this
module stays cheap and torch-free.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qconf.parts import TINY_PIPELINES

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

# Bump whenever a builder changes what it produces; old cache folders are then simply ignored.
BUILD_VERSION = 1

# name -> pipeline class lives in qconf.parts (torch-free), the one place validate reads it.

# Words that get whole-word tokens, so a typical test prompt tokenizes to a few ids rather than
# one id per character. Anything else still tokenizes (byte-level / single characters).
_WORDS: tuple[str, ...] = (
    "a", "an", "the", "of", "and", "in", "on", "with", "photo", "picture", "cat", "dog", "wearing",
    "tiny", "hat", "red", "blue", "green", "small", "big", "astronaut", "riding", "horse",
    "painting", "portrait", "city", "night", "forest", "house", "car", "high", "quality",
)  # fmt: skip

_CLIP_MAX_LENGTH = 77  # what every SD/Flux pipeline pads CLIP prompts to
_SEED = 0


# --------------------------------------------------------------------------------------------
# cache layout
# --------------------------------------------------------------------------------------------


def cache_root() -> Path:
    """Root of qconf's cache: ``$QCONF_CACHE`` if set, else ``~/.cache/qconf``."""
    env = os.environ.get("QCONF_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "qconf"


def _check_name(name: str) -> None:
    if name not in TINY_PIPELINES:
        known = ", ".join(sorted(TINY_PIPELINES))
        raise KeyError(f"unknown tiny pipeline {name!r}; known: {known}")


def tiny_pipeline_path(name: str) -> Path:
    """Folder holding ``model_index.json`` of tiny pipeline ``name``; built on first use.

    The pipeline is saved into a temporary folder next to the target and renamed into place, so
    a reader never sees a half-written folder, a failed build leaves no target behind, and two
    processes racing to build the same pipeline are both fine (the loser discards its copy; both
    copies are bit-identical anyway).
    """
    _check_name(name)
    target = cache_root() / "tiny" / f"{name}-v{BUILD_VERSION}"
    if (target / "model_index.json").is_file():
        return target
    if target.exists():
        # Only complete folders are ever renamed into place, so this is debris (e.g. someone
        # deleted files by hand). Nothing can be writing into it: clear it and rebuild.
        shutil.rmtree(target, ignore_errors=True)

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it owner-only; the cache may be shared
        pipe = build_tiny_pipeline(name)
        pipe.save_pretrained(tmp, safe_serialization=True)
        try:
            os.replace(tmp, target)
        except OSError:
            # Another process renamed its copy in first (a non-empty target cannot be replaced).
            if not (target / "model_index.json").is_file():
                raise
    finally:
        # After a successful rename `tmp` no longer exists; otherwise drop our (partial) copy.
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def build_tiny_pipeline(name: str) -> DiffusionPipeline:
    """Build tiny pipeline ``name`` in memory. Deterministic: same weights on every call."""
    _check_name(name)
    builders: dict[str, Callable[[], DiffusionPipeline]] = {
        "tiny-flux": _build_flux,
        "tiny-sd": _build_sd,
        "tiny-sd3": _build_sd3,
        "tiny-sdxl": _build_sdxl,
        "tiny-wan": _build_wan,
        "tiny-wan22": _build_wan22,
        "tiny-ltx": _build_ltx,
    }
    return builders[name]()


# --------------------------------------------------------------------------------------------
# components
# --------------------------------------------------------------------------------------------


def _seeded(factory: Callable[[], Any]) -> Any:
    """Run ``factory`` right after reseeding, so each component's init is independent of the
    others (adding or reordering a component does not change the weights of the rest)."""
    import torch

    torch.manual_seed(_SEED)
    module = factory()
    if isinstance(module, torch.nn.Module):
        module.eval()
    return module


def _clip_tokenizer() -> Any:
    """Byte-level BPE CLIP tokenizer built from an in-memory vocab.

    Vocab = the 256 byte symbols (alone and as word ends, ``x</w>``), which makes any text
    encodable, plus merges that build each word of ``_WORDS``, plus the two special tokens at
    the end, as in the real CLIP vocab.
    """
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    symbols = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for tok in symbols + [s + "</w>" for s in symbols]:
        vocab.setdefault(tok, len(vocab))
    merges: list[tuple[str, str]] = []
    for word in _WORDS:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        left = pieces[0]
        for right in pieces[1:]:
            merged = left + right
            if merged not in vocab:
                merges.append((left, right))
                vocab[merged] = len(vocab)
            left = merged
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab[special] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=_CLIP_MAX_LENGTH)


def _t5_tokenizer() -> Any:
    """Unigram T5 tokenizer from an in-memory ``(piece, score)`` list (no sentencepiece file).

    Whole words score higher than single characters, so known words stay one token and unknown
    ones fall back to characters instead of ``<unk>``.
    """
    import string

    from transformers import T5Tokenizer

    vocab: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(f"▁{w}", -3.0) for w in _WORDS]
    chars = string.ascii_lowercase + string.ascii_uppercase + string.digits + string.punctuation
    vocab += [(c, -8.0) for c in chars]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=512)


def _clip_text_encoder(tokenizer: Any, *, with_projection: bool) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        projection_dim=64,
        num_hidden_layers=2,
        num_attention_heads=2,  # head dim 32
        max_position_embeddings=_CLIP_MAX_LENGTH,
        hidden_act="quick_gelu",
        # Must match the tokenizer: the pooled output is taken at the first eos position.
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return _seeded(lambda: cls(config))


def _t5_text_encoder(tokenizer: Any, d_model: int) -> Any:
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=32,
        num_heads=d_model // 32,  # attention inner width == d_model
        d_ff=128,
        num_layers=2,
        feed_forward_proj="gated-gelu",  # T5 v1.1, as used by Flux and SD3
        relative_attention_num_buckets=8,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return _seeded(lambda: T5EncoderModel(config))


def _vae(latent_channels: int, **kwargs: Any) -> Any:
    """Two-level AutoencoderKL (VAE scale factor 2). Its only Linears are the 64-wide mid-block
    attention projections; the rest are convolutions."""
    from diffusers import AutoencoderKL

    return _seeded(
        lambda: AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(32, 64),
            layers_per_block=1,
            latent_channels=latent_channels,
            norm_num_groups=32,
            sample_size=32,
            **kwargs,
        )
    )


# --------------------------------------------------------------------------------------------
# pipelines
# --------------------------------------------------------------------------------------------


def _build_flux() -> DiffusionPipeline:
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tokenizer, tokenizer_2 = _clip_tokenizer(), _t5_tokenizer()
    transformer = _seeded(
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
        vae=_vae(
            16,
            use_quant_conv=False,
            use_post_quant_conv=False,
            scaling_factor=0.3611,
            shift_factor=0.1159,
        ),
        text_encoder=_clip_text_encoder(tokenizer, with_projection=False),
        tokenizer=tokenizer,
        text_encoder_2=_t5_text_encoder(tokenizer_2, d_model=64),
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )


def _build_sd3() -> DiffusionPipeline:
    from diffusers import (
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )

    tokenizer, tokenizer_3 = _clip_tokenizer(), _t5_tokenizer()
    transformer = _seeded(
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
        vae=_vae(
            16,
            use_quant_conv=False,
            use_post_quant_conv=False,
            scaling_factor=1.5305,
            shift_factor=0.0609,
        ),
        text_encoder=_clip_text_encoder(tokenizer, with_projection=True),
        tokenizer=tokenizer,
        text_encoder_2=_clip_text_encoder(tokenizer, with_projection=True),
        tokenizer_2=_clip_tokenizer(),
        text_encoder_3=_t5_text_encoder(tokenizer_3, d_model=128),
        tokenizer_3=tokenizer_3,
        transformer=transformer,
    )


def _build_sd() -> DiffusionPipeline:
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    tokenizer = _clip_tokenizer()
    unet = _seeded(
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
        vae=_vae(4, scaling_factor=0.18215),
        text_encoder=_clip_text_encoder(tokenizer, with_projection=False),
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


def _build_sdxl() -> DiffusionPipeline:
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    tokenizer, tokenizer_2 = _clip_tokenizer(), _clip_tokenizer()
    unet = _seeded(
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
        vae=_vae(4, scaling_factor=0.13025),
        text_encoder=_clip_text_encoder(tokenizer, with_projection=False),
        text_encoder_2=_clip_text_encoder(tokenizer_2, with_projection=True),
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
    return _seeded(lambda: UMT5EncoderModel(config))


def _wan_transformer() -> Any:
    from diffusers import WanTransformer3DModel

    return _seeded(
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

    tokenizer = _t5_tokenizer()  # UMT5 uses the same Unigram scheme as T5
    # Three 2x spatial downsamples (8x, as the real VAE), two of them temporal too (4x);
    # its attention uses 1x1 convolutions, so the VAE holds no Linear at all.
    vae = _seeded(
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


def _build_wan() -> DiffusionPipeline:
    return _wan_pipeline(two_experts=False)


def _build_wan22() -> DiffusionPipeline:
    return _wan_pipeline(two_experts=True)


def _build_ltx() -> DiffusionPipeline:
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )

    tokenizer = _t5_tokenizer()
    transformer = _seeded(
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
    vae = _seeded(
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
        text_encoder=_t5_text_encoder(tokenizer, d_model=64),
        tokenizer=tokenizer,
        transformer=transformer,
    )
