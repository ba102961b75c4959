"""`qconf.quiet()`: silence library noise that says nothing about your plan.

The stack prints a lot at import and load time that is harmless here (see STACK-FACTS):
torchao's CUDA `.so` files failing to load on CPU torch, torch pytree enum notices,
bitsandbytes looking for the optional `kernels` package, diffusers' optional torchao tensor
import, transformers' torchvision fallback, and diffusers' deprecation of its quanto classes
(qconf reports that once, in `qconf list backends`). Everything else (real warnings, missing
weights, load reports) still shows.

    with qconf.quiet():
        loaded = qconf.load(cfg)

The command line is quiet by default; `--verbose` (or QCONF_VERBOSE=1) shows everything. On the
command line library log records never reach stdout (it carries qconf's own output, which users
pipe), and a message a library repeats (bitsandbytes warns once per layer) is shown once."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterable, Iterator

from qconf.backends import REGISTRY

# logger -> level below which its records are dropped
LOGGERS: dict[str, int] = {
    "torch.utils._pytree": logging.ERROR,  # "... is an Enum subclass ... register_constant()"
    "transformers.utils.import_utils": logging.ERROR,  # "requires torchvision (not installed)"
    # each backend's own noise: Backend.quiet_loggers
    **{name: level for spec in REGISTRY.values() for name, level in spec.quiet_loggers.items()},
}
# (category, message regex) of warnings.warn calls that are known and harmless
WARNINGS: list[tuple[type[Warning], str]] = [
    (DeprecationWarning, r"`torch\.jit\.script_method` is deprecated"),
    (FutureWarning, r"`FluxPosEmbed` is deprecated"),  # diffusers' own Chroma module imports it
    *(warning for spec in REGISTRY.values() for warning in spec.quiet_warnings),
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
def _levels_restored(names: Iterable[str]) -> Iterator[None]:
    """The named loggers' levels as they were when the block ends, however it ends."""
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Filter the known noise inside the `with` block; logger levels and warning filters are
    restored afterwards."""
    with warnings.catch_warnings(), _levels_restored(LOGGERS):
        silence()
        yield


@contextlib.contextmanager
def config_notices_off() -> Iterator[None]:
    """Drop the config loggers' notices below ERROR inside the block (not with --verbose)."""
    with _levels_restored(CONFIG_LOGGERS):
        if not verbose():
            for name in CONFIG_LOGGERS:
                logging.getLogger(name).setLevel(logging.ERROR)
        yield


def no_progress_bars() -> None:
    """diffusers' and transformers' progress bars off, for commands that show one bar of their
    own over many loads (compare, sensitivity, tune)."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()


class OncePerMessage(logging.Filter):
    """Each distinct (logger, level, message) passes once per process: a library that warns
    once per layer (bitsandbytes' "MatMul8bitLt: inputs will be cast", once per Linear) says it
    once. qconf's own records always pass."""

    MAX_REMEMBERED = 10_000  # a library that logs unique lines forever cannot grow this

    def __init__(self, name: str = "") -> None:
        super().__init__(name)
        self._seen: set[tuple[str, int, str]] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == "qconf" or record.name.startswith("qconf."):
            return True
        key = (record.name, record.levelno, record.getMessage()[:1000])
        if key in self._seen:
            return False
        if len(self._seen) < self.MAX_REMEMBERED:
            self._seen.add(key)
        return True


class EscapedFormatter(logging.Formatter):
    """Library messages can carry user strings (paths, prompts, model ids): control characters
    are escaped before they reach the terminal, as everything qconf prints."""

    def format(self, record: logging.LogRecord) -> str:
        from qconf.text import safe

        return safe(super().format(record))


def library_logs_to_stderr() -> None:
    """Point every console handler of the root logger at stderr (Hydra's job logging writes to
    stdout), each distinct library message once (not with --verbose); with no handler at all,
    add one (WARNING and up, as Python's own last resort)."""
    root = logging.getLogger()
    consoles = [
        h
        for h in root.handlers
        if isinstance(h, logging.StreamHandler)
        and not isinstance(h, logging.FileHandler)
        and getattr(h, "stream", None) in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
    ]
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(EscapedFormatter("%(levelname)s %(name)s: %(message)s"))
        handler.setLevel(logging.WARNING)
        root.addHandler(handler)
        consoles = [handler]
    for handler in consoles:
        if handler.stream in (sys.stdout, sys.__stdout__):
            handler.setStream(sys.stderr)
        if not isinstance(handler.formatter, EscapedFormatter):
            fmt = handler.formatter._fmt if handler.formatter else None
            handler.setFormatter(EscapedFormatter(fmt))
        if not verbose() and not any(isinstance(f, OncePerMessage) for f in handler.filters):
            handler.addFilter(OncePerMessage())
