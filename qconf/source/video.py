"""Which pipelines make video, and their frame rules — without importing torch.

A video pipeline's VAE compresses time by a factor `step`; its latents hold (n - 1) // step + 1
frames and decode to step * (latent frames - 1) + 1, so the frame counts it really makes are
step * k + 1 (Wan, HunyuanVideo, CogVideoX: 4k + 1; LTX-Video: 8k + 1). Wan rounds other counts
itself with a warning; the others decode fewer frames than asked, silently. qconf rounds to the
nearest legal count first and says so. The defaults below are each pipeline's `__call__`
defaults (a test reads them from the installed diffusers); fps is what the model was trained at
(the models' own examples), used to write the video."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from qconf.errors import Problem

MEASURE_FRAMES = 5  # compare, sensitivity, tune: the smallest legal count >= this, unless set
MAX_FRAMES = 1025  # run.num_frames bound (bounded work): above every model's own clip length


@dataclass(frozen=True)
class VideoRule:
    default_frames: int  # `__call__`'s num_frames default (CogVideoX: transformer sample_frames)
    step: int  # the VAE's temporal compression in the released model: frames are step * k + 1
    fps: int  # frames per second the video is written at (the model's own examples)
    fps_argument: str | None = None  # the `__call__` keyword that takes the frame rate, if any
    min_steps: int = 1  # fewest denoising steps its scheduler settings can run

    def legal(self, frames: int, step: int | None = None) -> int:
        """The frame count the pipeline makes nearest to `frames` (ties go up)."""
        step = step or self.step
        return max(1, step * round_half_up((frames - 1) / step) + 1)

    def measuring(self, step: int | None = None) -> int:
        """The smallest legal count >= MEASURE_FRAMES."""
        step = step or self.step
        return step * -(-(MEASURE_FRAMES - 1) // step) + 1


def round_half_up(value: float) -> int:
    return int(value + 0.5)


VIDEO_PIPELINES: dict[str, VideoRule] = {
    "WanPipeline": VideoRule(81, 4, 16),  # Wan 2.1 and 2.2 (two experts)
    # LTX-Video's scheduler stretches its sigmas to shift_terminal=0.1, dividing by 1 - sigma of
    # the last step: with one step that is 1 - 1.0 = 0 (an IndexError in index_for_timestep)
    "LTXPipeline": VideoRule(161, 8, 25, "frame_rate", min_steps=2),
    "HunyuanVideoPipeline": VideoRule(129, 4, 15),
    "CogVideoXPipeline": VideoRule(49, 4, 8),
}
# Built-in tiny pipelines whose VAE compresses time differently from the released model's
# (their configs are not read before they are built). tests/test_video.py checks it on the load.
_TINY_STEP = {"tiny-ltx": 4}


def video_rule(pipeline: str) -> VideoRule | None:
    return VIDEO_PIPELINES.get(pipeline)


def frame_step(source: Any) -> int | None:
    """The temporal compression of `source`'s VAE (a ModelSource): from its config.json where it
    was read, else the family's; None for an image pipeline."""
    rule = video_rule(source.parts.pipeline)
    if rule is None:
        return None
    if source.given in _TINY_STEP:
        return _TINY_STEP[source.given]
    vae = source.parts.parts.get("vae")
    config = getattr(vae, "config", None) or {}
    return _step_from_config(config) or rule.step


def _step_from_config(config: dict[str, Any]) -> int | None:
    """AutoencoderKLWan: scale_factor_temporal; AutoencoderKLLTXVideo: temporal_compression_ratio
    or patch_size_t * 2 ** (temporal scaling blocks); HunyuanVideo, CogVideoX:
    temporal_compression_ratio."""
    for key in ("scale_factor_temporal", "temporal_compression_ratio"):
        value = config.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and 1 <= value <= 64:
            return int(value)
    scaling = config.get("spatio_temporal_scaling")
    patch = config.get("patch_size_t", 1)
    flags = (
        isinstance(scaling, list)
        and len(scaling) <= 6
        and all(isinstance(s, bool) for s in scaling)
    )
    if flags and isinstance(patch, int) and 1 <= patch <= 64:
        return patch * 2 ** sum(scaling)
    return None


def measuring_frames(source: Any, num_frames: int | None) -> int | None:
    """The frame count compare, sensitivity and tune generate: the user's run.num_frames, else
    the smallest legal count >= MEASURE_FRAMES; None for an image pipeline."""
    rule = video_rule(source.parts.pipeline)
    if rule is None:
        return None
    step = frame_step(source)
    return rule.legal(num_frames, step) if num_frames is not None else rule.measuring(step)


def measuring_run(plan: Any) -> Any:
    """`plan.run` with the measuring frame count filled in (unchanged for an image pipeline)."""
    frames = measuring_frames(plan.source, plan.run.num_frames)
    if frames is None or frames == plan.run.num_frames:
        return plan.run
    return plan.run.model_copy(update={"num_frames": frames})


def measuring_note(plan: Any) -> str | None:
    """'video: measured on 5 frames ...' for a video plan; None for images."""
    frames = measuring_frames(plan.source, plan.run.num_frames)
    if frames is None:
        return None
    if plan.run.num_frames is not None:
        return f"video: measured on {frames} frames (run.num_frames)"
    rule = video_rule(plan.source.parts.pipeline)
    default = rule.default_frames if rule else "?"
    return (f"video: measured on {frames} frames (the pipeline's own clip is {default}; "
            "set run.num_frames=N to measure on more)")  # fmt: skip


def run_problems(num_frames: int | None, fps: int | None, pipeline: str,
                 steps: int | None = None) -> list[Problem]:  # fmt: skip
    """run.num_frames / run.fps on a pipeline that makes images: refused (nothing would use
    them); run.steps below what a video pipeline's scheduler can run: refused."""
    rule = video_rule(pipeline)
    if rule is not None:
        if steps is not None and steps < rule.min_steps:
            return [Problem("run.steps", f"{steps} step is too few for {pipeline} (its "
                            "scheduler divides by zero on a single step)",
                            f"use run.steps={rule.min_steps} or more")]  # fmt: skip
        return []
    videos = ", ".join(VIDEO_PIPELINES)
    return [
        Problem(
            f"run.{key}",
            f"{pipeline} makes images, not video",
            f"remove run.{key} (it applies to {videos})",
        )  # fmt: skip
        for key, value in (("num_frames", num_frames), ("fps", fps))
        if value is not None
    ]
