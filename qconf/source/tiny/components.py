"""Shared tiny components: seeded init, in-memory tokenizers, text encoders, VAEs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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
# components
# --------------------------------------------------------------------------------------------


def seeded(factory: Callable[[], Any]) -> Any:
    """Run ``factory`` right after reseeding, so each component's init is independent of the
    others (adding or reordering a component does not change the weights of the rest)."""
    import torch

    torch.manual_seed(_SEED)
    module = factory()
    if isinstance(module, torch.nn.Module):
        module.eval()
    return module


def clip_tokenizer() -> Any:
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


def t5_tokenizer() -> Any:
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


def clip_text_encoder(tokenizer: Any, *, with_projection: bool) -> Any:
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
    return seeded(lambda: cls(config))


def t5_text_encoder(tokenizer: Any, d_model: int) -> Any:
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
    return seeded(lambda: T5EncoderModel(config))


def vae(latent_channels: int, **kwargs: Any) -> Any:
    """Two-level AutoencoderKL (VAE scale factor 2). Its only Linears are the 64-wide mid-block
    attention projections; the rest are convolutions."""
    from diffusers import AutoencoderKL

    return seeded(
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
