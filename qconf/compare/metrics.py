"""Image deviation from a reference: PSNR and SSIM from torchmetrics (maintained, tested code,
the same definitions everyone quotes), on the images as saved (8-bit PNG, RGB, range 0..1)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from qconf.errors import BackendUnavailableError, ModelSourceError, Problem
from qconf.trust.reading import open_regular

SSIM_KERNEL = 11  # torchmetrics' default Gaussian window; smaller images use an odd size that fits
# Per image: SSIM needs ~700 bytes and ~1.5 us of a small CPU per pixel, so 2048x2048 is ~3 GB
# and seconds; qconf's runs make 32x32 (tiny) to 1024x1024 (Flux, SD3) images.
MAX_SIDE = 2048  # of a square image; a 4096x1024 one has as many pixels
MAX_PIXELS = MAX_SIDE * MAX_SIDE
MIN_SIDE = 8  # the smallest run.height / run.width
# An 8-bit RGBA PNG at MAX_PIXELS stored uncompressed is 16 MiB; more is not an image qconf wrote
# (and PIL walks every chunk before the pixels).
MAX_IMAGE_BYTES = 24 * 2**20
THUMBNAIL = 256  # pixels, the longer side of an image in the grid (a cell is ~210 pixels)
T = TypeVar("T")


def require_libraries() -> None:
    """torchmetrics and matplotlib come with `qconf[compare]`; say so before any work. Found,
    not imported: torchmetrics imports torch, and a typo must be answered before that."""
    from importlib.util import find_spec

    missing = []
    for module in ("torchmetrics", "matplotlib"):
        try:
            if find_spec(module) is None:
                missing.append(module)
        except (ImportError, ValueError):
            missing.append(module)
    if missing:
        raise BackendUnavailableError(
            Problem(
                "qconf compare", f"needs {' and '.join(missing)}", "pip install 'qconf[compare]'"
            )  # fmt: skip
        )


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG, read from its header alone and checked against the limits."""
    return _with_png(path, None, lambda image: image.size)


def load_image(path: Path, size: tuple[int, int] | None = None) -> Any:
    """A PNG as a float tensor [1, 3, H, W] in 0..1; with `size`, it must still be that size
    (the file may have been replaced since its header was counted)."""
    return _with_png(path, size, image_tensor)


def thumbnail(path: Path, size: tuple[int, int] | None = None) -> Any:
    """A PNG as an RGB uint8 array at most THUMBNAIL pixels a side, for the grid."""
    import numpy as np

    def shrink(image: Any) -> Any:
        rgb = image.convert("RGB")
        rgb.thumbnail((THUMBNAIL, THUMBNAIL))
        return np.asarray(rgb)

    return _with_png(path, size, shrink)


def _with_png(path: Path, size: tuple[int, int] | None, action: Callable[[Any], T]) -> T:
    """`action` on the PNG at `path`, opened through the bounded reader (a regular file, not a
    link, at most MAX_IMAGE_BYTES) and checked on its header before anything is decoded: PIL's
    Image.open reads only the header, and a tiny PNG can decode to gigabytes."""
    from PIL import Image

    with open_regular(path, "the image", MAX_IMAGE_BYTES, follow_symlinks=False) as handle:
        try:
            with warnings.catch_warnings():  # PIL's own bomb bound: an error, not a warning line
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(handle, formats=["PNG"]) as image:
                    _check_size(path, image.size, size)
                    return action(image)
        except (ModelSourceError, MemoryError):  # ours, or the machine's: not the file's
            raise
        except Exception as exc:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError,
            # EOFError, struct.error, zlib.error... on a malformed file: all mean "not a PNG"
            what = f"not a readable PNG ({type(exc).__name__}: {str(exc)[:100]})"
            raise ModelSourceError(Problem(str(path), what, "re-run that job")) from None


def _check_size(path: Path, found: tuple[int, int], expected: tuple[int, int] | None) -> None:
    width, height = found
    if width * height > MAX_PIXELS or min(width, height) < MIN_SIDE:
        fix = (f"qconf compare compares images of {MIN_SIDE}x{MIN_SIDE} to {MAX_PIXELS:,} "
               f"pixels ({MAX_SIDE}x{MAX_SIDE})")  # fmt: skip
        raise ModelSourceError(Problem(str(path), f"is {width}x{height} pixels", fix))
    if expected is not None and found != expected:
        raise ModelSourceError(Problem(str(path), "changed while qconf compare read it",
                                       "run qconf compare again"))  # fmt: skip


def image_tensor(image: Any) -> Any:
    """A PIL image as a float tensor [1, 3, H, W] in 0..1."""
    import numpy as np
    import torch

    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)


def deviation(image: Any, reference: Any) -> tuple[float, float]:
    """(PSNR in dB, SSIM) of `image` against `reference`; identical images give (inf, 1.0)."""
    from torchmetrics.functional.image import (
        peak_signal_noise_ratio,
        structural_similarity_index_measure,
    )

    side = min(image.shape[-2:])
    kernel = min(SSIM_KERNEL, side if side % 2 else side - 1)
    psnr = float(peak_signal_noise_ratio(image, reference, data_range=1.0))
    ssim = float(
        structural_similarity_index_measure(image, reference, data_range=1.0, kernel_size=kernel)
    )
    return psnr, ssim


# A lossless animated WebP of qconf run: 32x32 x 5 frames is ~13 KB; 1024x1024 x 129 frames of
# real video a few hundred MB at most. More is not a video qconf wrote.
MAX_VIDEO_BYTES = 512 * 2**20


def video_frames(path: Path, size: tuple[int, int], frames: int) -> Iterator[Any]:
    """The frames of a video `qconf run` wrote, one float tensor [1, 3, H, W] at a time (one
    decoded frame in memory), exactly `frames` of them at `size`: libwebp stores a frame equal
    to the one before as a longer one, so each stored frame counts for its duration."""
    from PIL import Image

    with open_regular(path, "the video", MAX_VIDEO_BYTES, follow_symlinks=False) as handle:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(handle, formats=["WEBP"]) as video:
                    _check_size(path, video.size, size)
                    if getattr(video, "n_frames", 1) > frames:
                        raise ModelSourceError(Problem(str(path), f"holds more than the {frames} "
                                                       "frames report.json lists",
                                                       "re-run that job"))  # fmt: skip
                    count = 0
                    for tensor in _expanded(video, frames):
                        count += 1
                        if count <= frames:
                            yield tensor
                    if count != frames:
                        raise ModelSourceError(Problem(str(path), f"holds {count} frames, "
                                                       f"report.json lists {frames}",
                                                       "re-run that job"))  # fmt: skip
        except (ModelSourceError, MemoryError):
            raise
        except Exception as exc:  # noqa: BLE001 - as in _with_png: a malformed file
            what = f"not a readable WebP video ({type(exc).__name__}: {str(exc)[:100]})"
            raise ModelSourceError(Problem(str(path), what, "re-run that job")) from None


def _expanded(video: Any, frames: int) -> Iterator[Any]:
    """Each stored frame as a tensor, repeated for as many frames as its duration spans (a
    frame's duration is known once it is decoded: a first pass reads them)."""
    from PIL import ImageSequence

    durations = [_duration(frame) for frame in ImageSequence.Iterator(video)]
    unit = sum(durations) / frames if sum(durations) else 0
    for frame, duration in zip(ImageSequence.Iterator(video), durations, strict=True):
        tensor = image_tensor(frame)
        for _ in range(max(1, round(duration / unit)) if unit else 1):
            yield tensor


def _duration(frame: Any) -> int:
    frame.load()
    duration = frame.info.get("duration")
    return duration if isinstance(duration, int | float) and duration >= 0 else 0


def video_thumbnails(path: Path, size: tuple[int, int], frames: int) -> list[Any]:
    """The first, middle and last frames (one if the video has one) as grid thumbnails."""
    import numpy as np

    wanted = sorted({0, (frames - 1) // 2, frames - 1})
    shown = []
    for index, frame in enumerate(video_frames(path, size, frames)):
        if index in wanted:
            rgb = (frame[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            shown.append(_shrunk(rgb))
    return shown


def _shrunk(rgb: Any) -> Any:
    import numpy as np
    from PIL import Image

    image = Image.fromarray(rgb)
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    return np.asarray(image)


@dataclass
class VideoScore:
    psnr: float  # over all frames (of their mean squared error)
    ssim: float
    worst_psnr: float  # the worst frame
    worst_ssim: float
    temporal: float  # mean |frame-to-frame change - the reference's| (0..1): 0 = same motion


def video_deviation(frames: Iterator[Any], reference: Iterator[Any]) -> VideoScore:
    """Each frame against the reference's frame of the same index, and how far the change from
    one frame to the next departs from the reference's (flicker a per-frame score misses)."""
    scores = []
    motion = []
    before: tuple[Any, Any] | None = None
    for frame, target in zip(frames, reference, strict=True):
        scores.append(deviation(frame, target))
        if before is not None:
            change, reference_change = frame - before[0], target - before[1]
            motion.append(float((change - reference_change).abs().mean()))
        before = (frame, target)
    psnrs = [psnr for psnr, _ in scores]
    ssims = [ssim for _, ssim in scores]
    # The video's PSNR: of the mean squared error over its frames (inf only if all are equal).
    mse = sum(0.0 if math.isinf(p) else 10 ** (-p / 10) for p in psnrs) / len(psnrs)
    psnr = math.inf if mse == 0 else -10 * math.log10(mse)
    temporal = sum(motion) / len(motion) if motion else 0.0
    return VideoScore(psnr, sum(ssims) / len(ssims), min(psnrs), min(ssims), temporal)


def generated_tensor(generated: Any) -> Any:
    """What a generation made, as one tensor [N, 3, H, W]: its frames for a video (PSNR over
    the batch is that of the mean squared error over frames), else the image."""
    import torch

    if generated.frames is None:
        return image_tensor(generated.image)
    return torch.cat([image_tensor(frame) for frame in generated.frames])
