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
from typing import TYPE_CHECKING

from qconf.errors import ModelSourceError, Problem
from qconf.source.parts import TINY_PIPELINES
from qconf.trust.userpath import user_path

if TYPE_CHECKING:
    from diffusers import DiffusionPipeline

# Bump whenever a builder changes what it produces; old cache folders are then simply ignored.
BUILD_VERSION = 1


# --------------------------------------------------------------------------------------------
# cache layout
# --------------------------------------------------------------------------------------------


def cache_root() -> Path:
    """Root of qconf's cache: ``$QCONF_CACHE`` if set, else ``~/.cache/qconf``."""
    env = os.environ.get("QCONF_CACHE")
    return user_path(env, "QCONF_CACHE") if env else Path.home() / ".cache" / "qconf"


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
    for link in (target.parent, target):  # the cache may be shared: never written through one
        if link.is_symlink():
            raise ModelSourceError(
                Problem(
                    str(link),
                    "is a symbolic link inside qconf's cache",
                    "remove it; qconf builds the tiny pipeline again",
                )  # fmt: skip
            )
    if (target / "model_index.json").is_file():
        return target
    if target.exists():
        # Only complete folders are ever renamed into place, so this is debris (e.g. someone
        # deleted files by hand). Nothing can be writing into it: clear it and rebuild.
        shutil.rmtree(target, ignore_errors=True)

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    except OSError as exc:
        raise _cache_error(name, target.parent, exc) from None
    try:
        tmp.chmod(0o755)  # mkdtemp makes it owner-only; the cache may be shared
        pipe = build_tiny_pipeline(name)
        try:
            from transformers.utils import logging as transformers_logging

            # A tiny folder is written in a blink: no "Writing model shards" bar for it.
            bars = transformers_logging.is_progress_bar_enabled()
            transformers_logging.disable_progress_bar()
            try:
                pipe.save_pretrained(tmp, safe_serialization=True)
            finally:
                if bars:
                    transformers_logging.enable_progress_bar()
            os.replace(tmp, target)
        except OSError as exc:
            # Another process renamed its copy in first (a non-empty target cannot be replaced).
            if not (target / "model_index.json").is_file():
                raise _cache_error(name, target.parent, exc) from None
    finally:
        # After a successful rename `tmp` no longer exists; otherwise drop our (partial) copy.
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _cache_error(name: str, folder: Path, exc: OSError) -> ModelSourceError:
    return ModelSourceError(
        Problem(
            "QCONF_CACHE" if os.environ.get("QCONF_CACHE") else str(cache_root()),
            f"cannot build {name} in '{folder}' ({exc.strerror or exc})",
            "set QCONF_CACHE to a folder you can write to",
        )
    )


def build_tiny_pipeline(name: str) -> DiffusionPipeline:
    """Build tiny pipeline ``name`` in memory. Deterministic: same weights on every call."""
    _check_name(name)
    from qconf.source.tiny.image import build_flux, build_sd, build_sd3, build_sdxl
    from qconf.source.tiny.video import build_ltx, build_wan, build_wan22

    builders: dict[str, Callable[[], DiffusionPipeline]] = {
        "tiny-flux": build_flux,
        "tiny-sd": build_sd,
        "tiny-sd3": build_sd3,
        "tiny-sdxl": build_sdxl,
        "tiny-wan": build_wan,
        "tiny-wan22": build_wan22,
        "tiny-ltx": build_ltx,
    }
    return builders[name]()
