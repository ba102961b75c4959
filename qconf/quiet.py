"""`qconf.quiet()`: silence library noise that says nothing about your plan.

The stack prints a lot at import and load time that is harmless here (see STACK-FACTS):
torchao's CUDA `.so` files failing to load on CPU torch, torch pytree enum notices,
bitsandbytes looking for the optional `kernels` package, diffusers' optional torchao tensor
import, transformers' torchvision fallback, and diffusers' deprecation of its quanto classes
(qconf reports that once, in `qconf list backends`). Everything else (real warnings, missing
weights, load reports) still shows.

    with qconf.quiet():
        loaded = qconf.load(cfg)

The command line is quiet by default; `--verbose` (or QCONF_VERBOSE=1) shows everything."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator

# logger -> level below which its records are dropped
LOGGERS: dict[str, int] = {
    "torch.utils._pytree": logging.ERROR,  # "... is an Enum subclass ... register_constant()"
    "torchao": logging.ERROR,  # "Failed to load .../_C_cutlass_90a.abi3.so"
    "bitsandbytes.backends.cpu.ops": logging.ERROR,  # "pip install kernels" (optional CPU kernel)
    "diffusers.quantizers.torchao.torchao_quantizer": logging.ERROR,  # "Unable to import `torchao`"
    "transformers.utils.import_utils": logging.ERROR,  # "requires torchvision (not installed)"
}
# (category, message regex) of warnings.warn calls that are known and harmless
WARNINGS: list[tuple[type[Warning], str]] = [
    (FutureWarning, r"`Quanto(Config|Quantizer)` is deprecated"),  # diffusers; see list backends
    (DeprecationWarning, r"`torch\.jit\.script_method` is deprecated"),
    (FutureWarning, r"`FluxPosEmbed` is deprecated"),  # diffusers' own Chroma module imports it
]
# Loggers that comment on a config.json's keys (a key the class no longer takes, RoPE spelling).
# Hub configs carry such keys (Qwen-Image's `pooled_projection_dim`); an estimate built from a
# shipped snapshot would print them as if they were about the user's plan.
CONFIG_LOGGERS = (
    "diffusers.configuration_utils",
    "transformers.configuration_utils",
    "transformers.modeling_rope_utils",
)


def verbose() -> bool:
    return os.environ.get("QCONF_VERBOSE", "") not in ("", "0")


def silence() -> None:
    """Filter the known noise for the rest of the process (what the CLI does)."""
    if verbose():
        return
    for name, level in LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    for category, pattern in WARNINGS:
        warnings.filterwarnings("ignore", message=pattern, category=category)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Filter the known noise inside the `with` block; logger levels and warning filters are
    restored afterwards."""
    loggers = {name: logging.getLogger(name) for name in LOGGERS}
    levels = {name: logger.level for name, logger in loggers.items()}
    with warnings.catch_warnings():
        silence()
        try:
            yield
        finally:
            for name, logger in loggers.items():
                logger.setLevel(levels[name])


@contextlib.contextmanager
def config_notices_off() -> Iterator[None]:
    """Drop the config loggers' notices below ERROR inside the block (not with --verbose)."""
    loggers = [logging.getLogger(name) for name in CONFIG_LOGGERS]
    levels = [logger.level for logger in loggers]
    if not verbose():
        for logger in loggers:
            logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def no_progress_bars() -> None:
    """diffusers' and transformers' progress bars off, for commands that show one bar of their
    own over many loads (compare, sensitivity, tune)."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
