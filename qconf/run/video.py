"""A video pipeline's call settings (frames, frame rate) and its video file.

The video is written as an animated WebP, lossless, with Pillow (already a dependency of
diffusers): it plays in every current browser (Chrome, Firefox, Safari 14+, Edge, and inline in
a Markdown `![](video.webp)`), needs no system ffmpeg and no new package, and being lossless it
holds exactly the frames the pipeline made, so `qconf compare` scores the frames themselves,
not an encoder's approximation (an H.264 mp4 would be lossy and need imageio-ffmpeg or PyAV)."""

from __future__ import annotations

import io
from typing import Any

from qconf.source.video import VideoRule, video_rule

VIDEO_FORMAT = "webp"  # animated, lossless


def rule_of(pipeline: Any) -> VideoRule | None:
    return video_rule(type(pipeline).__name__)


def pipeline_step(pipeline: Any, rule: VideoRule) -> int:
    """The loaded pipeline's own temporal compression (what its frame rule really is)."""
    for name in ("vae_scale_factor_temporal", "vae_temporal_compression_ratio"):
        value = getattr(pipeline, name, None)
        if isinstance(value, int) and value >= 1:
            return value
    return rule.step


def video_call(pipeline: Any, run: Any) -> tuple[dict[str, Any], list[str]]:
    """The keywords that set frames and frame rate on `pipeline`'s call ({} for an image
    pipeline, and for run.num_frames null: the pipeline's own clip), and notes for the user (a
    count the pipeline cannot make, rounded)."""
    rule = rule_of(pipeline)
    if rule is None:
        return {}, []
    kwargs: dict[str, Any] = {}
    notes = []
    if run.num_frames is not None:
        step = pipeline_step(pipeline, rule)
        frames = rule.legal(run.num_frames, step)
        if frames != run.num_frames:
            notes.append(f"run.num_frames={run.num_frames} made {frames} frames: "
                         f"{type(pipeline).__name__} makes {step}k+1 frames")  # fmt: skip
        kwargs["num_frames"] = frames
    if rule.fps_argument is not None and run.fps is not None:
        kwargs[rule.fps_argument] = run.fps  # LTX conditions on the frame rate
    return kwargs, notes


def fps_of(pipeline: Any, run: Any) -> int | None:
    rule = rule_of(pipeline)
    if rule is None:
        return None
    return run.fps if run.fps is not None else rule.fps


def frame_milliseconds(fps: int) -> int:
    return max(1, round(1000 / fps))


def encode_video(frames: list[Any], fps: int) -> bytes:
    """Animated lossless WebP of `frames` (PIL images). libwebp merges a frame identical to the
    one before into a longer one; reading back by duration restores the count."""
    buffer = io.BytesIO()
    frames[0].save(buffer, format="WEBP", save_all=True, append_images=frames[1:],
                   duration=frame_milliseconds(fps), loop=0, lossless=True, method=0)  # fmt: skip
    return buffer.getvalue()
