"""Image deviation from a reference: PSNR and SSIM from torchmetrics (maintained, tested code,
the same definitions everyone quotes), on the images as saved (8-bit PNG, RGB, range 0..1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qconf.errors import BackendUnavailableError, ModelSourceError, Problem

SSIM_KERNEL = 11  # torchmetrics' default Gaussian window; smaller images use an odd size that fits
MAX_PIXELS = 4096 * 4096  # per image: qconf's runs are far smaller; decoding is width x height x 12
MIN_SIDE = 8  # the smallest run.height / run.width


def require_libraries() -> None:
    """torchmetrics and matplotlib come with `qconf[compare]`; say so before any work."""
    missing = []
    for module in ("torchmetrics", "matplotlib"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise BackendUnavailableError(
            Problem(
                "qconf compare", f"needs {' and '.join(missing)}", "pip install 'qconf[compare]'"
            )  # fmt: skip
        )


def load_image(path: Path) -> Any:
    """A PNG as a float tensor [1, 3, H, W] in 0..1."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path, formats=["PNG"]) as image:
            width, height = image.size
            if width * height > MAX_PIXELS or min(width, height) < MIN_SIDE:
                raise ModelSourceError(Problem(str(path), f"is {width}x{height} pixels",
                                               f"qconf compares images of {MIN_SIDE} to "
                                               f"{MAX_PIXELS} pixels"))  # fmt: skip
            return image_tensor(image)
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise ModelSourceError(Problem(str(path), f"not a readable PNG ({exc})")) from None


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
