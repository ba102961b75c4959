"""The backend registry: the single source for the schema's tagged union, `qconf list`,
the JSON Schema, error messages and test parametrization. Adding a backend = one module here,
one YAML under conf/backend/, one extra in pyproject.toml."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from qconf.backends.autoround import AUTO_ROUND
from qconf.backends.base import LIBRARIES, Backend, EntryBase, KnownFailure, Library, StrictModel
from qconf.backends.bfl import BFL
from qconf.backends.bitsandbytes import BNB_4BIT, BNB_8BIT
from qconf.backends.capabilities import known_failure, known_failures_ignored
from qconf.backends.gguf import GGUF
from qconf.backends.modelopt import MODELOPT
from qconf.backends.nunchaku import NUNCHAKU_LITE
from qconf.backends.quanto import QUANTO
from qconf.backends.sdnq import SDNQ
from qconf.backends.torchao import TORCHAO

REGISTRY: dict[str, Backend] = {
    b.key: b
    for b in (
        BNB_4BIT,
        BNB_8BIT,
        TORCHAO,
        QUANTO,
        SDNQ,
        GGUF,
        BFL,
        NUNCHAKU_LITE,
        MODELOPT,
        AUTO_ROUND,
    )  # fmt: skip
}

BackendEntry = Annotated[
    BNB_4BIT.entry
    | BNB_8BIT.entry
    | TORCHAO.entry
    | QUANTO.entry
    | SDNQ.entry
    | GGUF.entry
    | BFL.entry
    | NUNCHAKU_LITE.entry
    | MODELOPT.entry
    | AUTO_ROUND.entry,
    Field(discriminator="backend"),
]

__all__ = [
    "LIBRARIES",
    "REGISTRY",
    "Backend",
    "BackendEntry",
    "EntryBase",
    "KnownFailure",
    "Library",
    "StrictModel",
    "entry_from_saved",
    "known_failure",
    "known_failures_ignored",
    "set_library_environment",
]


def set_library_environment() -> None:
    """Set, as defaults, the environment each backend's library reads at import (for code that
    imports a backend library before qconf does)."""
    import os

    for spec in REGISTRY.values():
        for name, value in (spec.environment() if spec.environment else {}).items():
            os.environ.setdefault(name, value)


def entry_from_saved(saved: dict) -> dict | None:
    """Entry data for a saved `quantization_config` block, or None for an unknown method."""
    method = saved.get("quant_method")
    if not isinstance(method, str):  # absent or not a name: no backend's
        return None
    for spec in REGISTRY.values():
        if spec.quant_method == method.lower():
            return spec.entry.from_saved(saved)
    return None
