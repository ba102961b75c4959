"""One job's generation (what `qconf run` does after the load): one image (or video) per
(prompt, seed) of `run:`, each timed, and the job's peak memory — CUDA's allocator peak on a
GPU, the process's resident-set peak on CPU.
Sits above the load façade: it gets a loaded pipeline."""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


@dataclass
class Generated:
    image: Any  # PIL.Image (a video's first frame)
    prompt: str
    seed: int
    seconds: float
    frames: list[Any] | None = None  # a video's frames (PIL images); None: an image pipeline
    fps: int | None = None  # a video's frame rate


@dataclass
class Peak:
    """Peak memory over a `with measure_peak() as peak:` block, both kinds where there are."""

    cuda_bytes: int | None = None  # torch.cuda.max_memory_allocated (None: no CUDA)
    rss_bytes: int = 0
    rss_kind: str = "rss"  # "rss": VmHWM reset at the start; "rss-process": lifetime maximum

    def on(self, device: Any) -> tuple[int, str]:
        """(bytes, kind) for a pipeline on `device`: CUDA's peak when it ran on a GPU."""
        if getattr(device, "type", None) == "cuda" and self.cuda_bytes is not None:
            return self.cuda_bytes, "cuda"
        return self.rss_bytes, self.rss_kind


@contextmanager
def measure_peak() -> Iterator[Peak]:
    """CUDA's allocator peak (reset first), and the resident-set high-water mark, reset through
    /proc/self/clear_refs (Linux); where that cannot be reset, the process's lifetime maximum
    (ru_maxrss), labelled `rss-process` so nobody reads it as the job's own."""
    import torch

    peak = Peak()
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    peak.rss_kind = "rss" if _reset_rss_peak() else "rss-process"
    try:
        yield peak
    finally:
        if cuda:
            peak.cuda_bytes = int(torch.cuda.max_memory_allocated())
        if peak.rss_kind == "rss":
            peak.rss_bytes = _rss_peak()
        else:
            scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
            peak.rss_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _reset_rss_peak() -> bool:
    try:
        _CLEAR_REFS.write_text("5")  # "5": reset the peak RSS (Linux >= 4.0)
        return _rss_peak() > 0
    except OSError:
        return False


def _rss_peak() -> int:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    return 0


def generate(pipeline: Any, run: Any, on_step: StepCallback | None = None) -> list[Generated]:
    """One image per (prompt, seed) of `run` (a RunSpec), in that order. A video pipeline makes
    run.num_frames frames (its own clip when null; a count it cannot make is rounded to the
    nearest it can, with a note on stderr); `image` is then the first frame, so a comparison
    still has one picture per prompt and seed. `on_step` hears (steps done, steps in all,
    label) after each denoising step, where the pipeline reports steps
    (`callback_on_step_end`)."""
    import torch

    from qconf.run.video import fps_of, video_call
    from qconf.text import safe

    device = getattr(pipeline, "device", torch.device("cpu"))
    video, notes = video_call(pipeline, run)
    for note in notes:
        print(f"note: {safe(note)}", file=sys.stderr)
    results = []
    jobs = list(run.images())
    total = len(jobs) * run.steps
    for index, (prompt, seed) in enumerate(jobs):
        steps = _step_reporter(pipeline, on_step, index * run.steps, total,
                               f"image {index + 1}/{len(jobs)}")  # fmt: skip
        # A CPU generator on every device: the same seed gives the same starting noise on CPU
        # and GPU, so runs on different machines stay comparable.
        generator = torch.Generator().manual_seed(seed)
        start = time.perf_counter()
        output = pipeline(
            prompt=prompt,
            num_inference_steps=run.steps,
            height=run.height,
            width=run.width,
            guidance_scale=run.guidance_scale,
            generator=generator,
            **video,
            **steps,
        )
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        frames = _frames(output)
        picture = frames[0] if frames is not None else _picture(output.images[0])
        results.append(Generated(picture, prompt, seed, seconds, frames, fps_of(pipeline, run)))
    return results


StepCallback = Callable[[int, int, str], None]


def _step_reporter(pipeline: Any, on_step: StepCallback | None, before: int, total: int,
                   label: str) -> dict[str, Any]:  # fmt: skip
    """The pipeline keyword that reports each finished step to `on_step` (none if the pipeline
    takes no step callback)."""
    import inspect

    if on_step is None or "callback_on_step_end" not in inspect.signature(pipeline).parameters:
        return {}

    def step_end(_pipe: Any, step: int, _timestep: Any, _tensors: dict[str, Any]) -> dict:
        on_step(before + step + 1, total, label)
        return {}  # nothing replaced: the pipeline keeps its own latents

    return {"callback_on_step_end": step_end}


def _frames(output: Any) -> list[Any] | None:
    """A video output's frames of its first (only) video as PIL images; None for images.
    Pipelines give a list of PIL images (LTX, HunyuanVideo, CogVideoX) or an array of frames
    in 0..1 (Wan's default output type)."""
    if getattr(output, "images", None) is not None:
        return None
    return [_picture(frame) for frame in output.frames[0]]


def _picture(picture: Any) -> Any:
    import numpy as np
    from PIL import Image

    if isinstance(picture, Image.Image):
        return picture
    array = np.asarray(picture)
    if array.dtype != np.uint8:
        array = (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)
    return Image.fromarray(array)
