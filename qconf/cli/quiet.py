"""Silence import-time noise of the stack that says nothing about the user's plan (listed in
STACK-FACTS: torchao's CUDA .so files on CPU torch, torch pytree enum notices, diffusers'
optional torchao tensor import, transformers' torchvision fallback). Real warnings still show."""

from __future__ import annotations

import logging

_NOISY = {
    "torch.utils._pytree": logging.ERROR,  # "... is an Enum subclass ... register_constant()"
    "torchao": logging.ERROR,  # "Failed to load .../_C_cutlass_90a.abi3.so"
    "diffusers.quantizers.torchao.torchao_quantizer": logging.ERROR,  # "Unable to import `torchao`"
    "transformers.utils.import_utils": logging.ERROR,  # "requires torchvision (not installed)"
}


def quiet_library_noise() -> None:
    for name, level in _NOISY.items():
        logging.getLogger(name).setLevel(level)
