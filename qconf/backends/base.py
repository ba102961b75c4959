"""What every backend declares. Torch-free: library objects are built lazily in `build`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from qconf.errors import Problem

Library = Literal["diffusers", "transformers"]
LIBRARIES: tuple[Library, ...] = ("diffusers", "transformers")

# dtype names as YAML spells them; converted to torch dtypes only when a config object is built.
FloatDType = Literal["float32", "float16", "bfloat16"]


class StrictModel(BaseModel):
    """Base of every schema model: unknown keys are errors, so a stale key fails loudly."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class KwargsBase(StrictModel):
    """Per-backend kwargs in qconf's spelling. `None` means "the library's default"."""

    def given(self) -> dict[str, Any]:
        """The kwargs the user actually set, JSON-able (nested models as dicts)."""
        return self.model_dump(mode="json", exclude_none=True)


class EntryBase(StrictModel):
    """One backend applied to one part (granular mode) or to many (global mode)."""

    backend: str
    kwargs: KwargsBase

    # Filled by each backend module: the registry spec this entry belongs to.
    spec: ClassVar[Backend]

    def check(self, library: Library) -> list[Problem]:
        """Problems applying this entry to a part owned by `library` (where = relative key)."""
        spec = self.spec
        params = spec.params.get(library)
        if params is None:
            owners = ", ".join(spec.params)
            return [
                Problem(
                    "backend",
                    f"{spec.key} has no {library} config class (it supports {owners} parts)",
                    "pick another backend for this part",
                )
            ]
        problems = []
        for name in self.kwargs.given():
            if name not in params:
                problems.append(
                    Problem(
                        f"kwargs.{name}",
                        f"not accepted by {library}'s {spec.config_class[library]}",
                        f"{library} accepts: {', '.join(sorted(params))}",
                    )
                )
        return problems

    def check_consistency(self) -> list[Problem]:
        """Backend-specific cross-field rules (e.g. bit width vs backend key); where = relative."""
        return []

    def library_kwargs(self, library: Library) -> dict[str, Any]:
        """kwargs in the library's own parameter names, JSON-able (what `show` prints)."""
        params = self.spec.params[library]
        return {params[k]: v for k, v in self.kwargs.given().items()}

    def cuda_reason(self, library: Library) -> str | None:
        """Why this entry needs a CUDA GPU on a `library` part, or None if it runs on CPU."""
        return self.spec.needs_cuda.get(library)

    def build(self, library: Library) -> Any:
        """The real library config object. Imports torch and the library."""
        raise NotImplementedError


@dataclass(frozen=True)
class Backend:
    """A registry entry: everything qconf knows about one quantization backend."""

    key: str  # diffusers' backend key (quant_backend), also the `backend:` value in YAML
    description: str
    extra: str  # pip extra that installs it: pip install 'qconf[<extra>]'
    module: str  # import name probed for availability
    distribution: str  # distribution name for the version
    entry: type[EntryBase]
    config_class: Mapping[Library, str]  # class name per library that has this backend
    # qconf kwarg name -> that library's __init__ parameter name
    params: Mapping[Library, Mapping[str, str]]
    # library -> why it needs CUDA there (absent = runs on CPU)
    needs_cuda: Mapping[Library, str] = field(default_factory=dict)
    can_save: Mapping[Library, bool] = field(default_factory=dict)
