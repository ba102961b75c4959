"""Plan × pipeline parts → one library config per part (diffusers or transformers). The schema
calls this module (Plan.resolve), so the Plan is typed `Any` here: no import back."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from qconf.backends import REGISTRY, EntryBase
from qconf.source.parts import PipelineParts


@dataclass(frozen=True)
class ResolvedPart:
    entry: EntryBase
    library: str

    @property
    def backend(self) -> str:
        return self.entry.backend

    @property
    def config_class(self) -> str:
        return REGISTRY[self.backend].config_class[self.library]  # type: ignore[index]

    @property
    def kwargs(self) -> dict[str, Any]:
        return self.entry.library_kwargs(self.library)  # type: ignore[arg-type]

    def build(self, default_skips: Sequence[str] = ()) -> Any:
        """The real library config object (imports torch and the library)."""
        return self.entry.build(self.library, default_skips)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ResolvedPlan:
    plan: Any  # the qconf.plan.schema.Plan
    parts: PipelineParts
    components: dict[str, ResolvedPart | None]  # every weight-bearing part; None = unquantized

    @property
    def mode(self) -> str:
        return self.plan.quant.mode

    @property
    def torch_dtype(self) -> str | None:
        """Load dtype: the plan's, else the first one a backend of the plan needs when unset
        (`Backend.plan_dtype`), else None (the library's default)."""
        if self.plan.model.torch_dtype is not None:
            return self.plan.model.torch_dtype
        needed = (REGISTRY[p.backend].plan_dtype for p in self.components.values() if p)
        return next((dtype for dtype in needed if dtype is not None), None)

    @property
    def quantized(self) -> dict[str, ResolvedPart]:
        return {name: part for name, part in self.components.items() if part is not None}

    def to_json(self) -> dict[str, Any]:
        """The `qconf show --json` contract (see README)."""
        model = self.plan.model.model_dump(mode="json")
        model.update(pipeline=self.parts.pipeline, torch_dtype=self.torch_dtype)
        return {
            "mode": self.mode,
            "model": model,
            "components": {
                name: None
                if part is None
                else {
                    "backend": part.backend,
                    "library": part.library,
                    "config_class": part.config_class,
                    "kwargs": part.kwargs,
                    # a part read from a pre-quantized file or folder names it
                    **(
                        {part.entry.source_field: part.entry.own_source()}
                        if part.entry.own_source()
                        else {}
                    ),
                }
                for name, part in self.components.items()
            },
        }

    def quant_mapping(self, default_skips: Mapping[str, Sequence[str]] = {}) -> dict[str, Any]:  # noqa: B006 - read only
        """{part: library config object} for PipelineQuantizationConfig(quant_mapping=...).
        `default_skips[part]`: what the library would skip by itself, which `skip` extends.
        Parts read from a pre-quantized file are absent (qconf.loading.loader), and so
        are parts saved pre-quantized (their config.json already says how)."""
        return {
            name: part.build(default_skips.get(name, ()))
            for name, part in self.quantized.items()
            if REGISTRY[part.backend].quantizes_on_load
            and self.parts.parts[name].saved_quantization is None
        }

    def to_diffusers(self, default_skips: Mapping[str, Sequence[str]] = {}) -> Any:  # noqa: B006
        """diffusers' PipelineQuantizationConfig, always in granular form (diffusers' own
        global mode refuses most backends), or None when nothing is quantized."""
        from diffusers import PipelineQuantizationConfig

        mapping = self.quant_mapping(default_skips)
        return PipelineQuantizationConfig(quant_mapping=mapping) if mapping else None


def resolve(plan: Any, parts: PipelineParts | None = None) -> ResolvedPlan:
    """Resolve against `parts` (e.g. the real model_index.json at load) or the plan's source."""
    parts = parts or plan.parts()
    components: dict[str, ResolvedPart | None] = {}
    for name, entry in plan.targets(parts).items():
        part = parts.parts[name]
        components[name] = None if entry is None else ResolvedPart(entry, part.library)
    return ResolvedPlan(plan, parts, components)
