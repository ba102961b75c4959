"""The plan schema (pydantic v2, torch-free): shape, mutual exclusion of the two modes, kwargs
against each receiving library, parts against the real pipeline. Validators check, never mutate;
defaults are filled in resolve."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    Field,
    PrivateAttr,
    StrictBool,
    StrictInt,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from qconf.backends import REGISTRY, BackendEntry, EntryBase, StrictModel
from qconf.backends.base import FloatDType
from qconf.errors import PlanError, Problem
from qconf.plan.checks import (
    dtype_problems,
    mode_problems,
    part_problems,
    raw_name_problems,
    saved_entries,
    saved_problems,
    source_problems,
)
from qconf.plan.conftree import backend_options
from qconf.plan.interpolation import (
    ENVIRONMENT_RESOLVERS,
    EnvironmentRead,
    check_interpolation_count,
    no_environment_reads,
)
from qconf.plan.messages import PlanProblems, did_you_mean, problems_from_errors, shown_value
from qconf.plan.safety import target_problems
from qconf.source.model import ModelSource, open_source
from qconf.source.parts import PipelineParts
from qconf.source.video import MAX_FRAMES, run_problems
from qconf.trust.bounds import MAX_PLAN_DEPTH, depth
from qconf.trust.userpath import user_path

if TYPE_CHECKING:
    from qconf.plan.resolve import ResolvedPlan

BackendKey = Literal[tuple(REGISTRY)]  # type: ignore[valid-type]


def _expand_option(value: Any, info: ValidationInfo) -> Any:
    """`quant.mapping.<part>: nf4` names conf/backend/nf4.yaml; expand it to {backend, kwargs}."""
    if not isinstance(value, str):
        return value
    options = (info.context or {}).get("options") or backend_options()
    if value not in options:
        fix = did_you_mean(value, options) + f"available: {', '.join(sorted(options))}"
        raise PlanProblems([Problem("", f"unknown backend option '{value}'", fix)])
    return options[value]


MappingEntry = Annotated[BackendEntry, BeforeValidator(_expand_option)]


def _backend_name(value: Any) -> Any:
    """quant.backend is one registry key: a list or mapping there (`quant.backend=[]`) is
    refused here, before anything looks the value up by name (unhashable in a dict lookup)."""
    if value is None or isinstance(value, str):
        return value
    raise PlanProblems(
        [
            Problem(
                "",
                f"{shown_value(value)} is not a backend name",
                f"set one of: {', '.join(REGISTRY)}; or per part: quant.mapping.<part>=<option>",
            )
        ]
    )


class ModelSpec(StrictModel):
    source: str = Field(
        description="A built-in tiny pipeline (qconf list models), a local folder or a hub id."
    )
    pipeline: str | None = Field(
        None, description="Pipeline class name; read from model_index.json when null."
    )
    torch_dtype: FloatDType | None = Field(
        "bfloat16", description="Load dtype; null = library default (bfloat16 for torchao plans)."
    )
    allow_pickle: StrictBool = Field(
        False, description="Also load pickle weights (.bin/.ckpt); they can run code. Trust first."
    )
    trust_remote_code: StrictBool = Field(
        False, description="Allow parts whose code ships with the model (runs that code)."
    )
    device_map: Literal["balanced", "cuda", "cpu"] | None = Field(
        None,
        description="diffusers' pipeline device map: 'balanced' spreads parts over the visible "
        "GPUs; null = load on the CPU (move the pipeline yourself).",
    )


class QuantSpec(StrictModel):
    backend: Annotated[BackendKey | None, BeforeValidator(_backend_name)] = Field(  # type: ignore[valid-type]
        None, description="Global mode: one backend for many parts (diffusers quant_backend)."
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict, description="Global mode: the backend's kwargs (quant_kwargs)."
    )
    components: list[str] | None = Field(
        None, description="Global mode: parts to quantize; null = every weight-bearing part."
    )
    mapping: dict[str, MappingEntry | None] = Field(
        default_factory=dict,
        description="Granular mode: part -> backend option name, {backend, kwargs}, or null.",
    )

    @property
    def mode(self) -> Literal["global", "granular"]:
        return "global" if self.backend is not None and not self.mapping else "granular"

    @property
    def is_empty(self) -> bool:
        """Nothing asked for: a pre-quantized folder then loads as it was saved."""
        return self.backend is None and not self.mapping

    def global_entry(self) -> EntryBase | None:
        """The global backend and kwargs as one typed entry (valid once the plan validated)."""
        if self.backend is None:
            return None
        return REGISTRY[self.backend].entry.model_validate(
            {"backend": self.backend, "kwargs": self.kwargs}
        )

    @model_validator(mode="after")
    def _check_modes(self) -> QuantSpec:
        problems = mode_problems(self.backend, self.kwargs, self.components, self.mapping)
        if self.backend is not None:
            try:
                self.global_entry()
            except ValidationError as exc:
                problems += problems_from_errors(exc.errors(), prefix=("quant",), tag=self.backend)
        if problems:
            raise PlanProblems(problems)
        return self


MAX_RUN_IMAGES = 256  # prompts x seeds of one job (bounded work)
# what torch.Generator.manual_seed takes (strict: `run.seed=true` is not seed 1)
Seed = Annotated[StrictInt, Field(ge=-(2**63), le=2**63 - 1)]


class RunSpec(StrictModel):
    """Settings of `qconf run` (generation); ignored by the other commands. A list of prompts
    and/or seeds makes one image per (prompt, seed): what `qconf compare` puts side by side."""

    prompt: str | Annotated[list[str], Field(min_length=1)] = "a photo of a cat wearing a tiny hat"
    # strict: `run.steps=true` is not 1 step
    steps: StrictInt = Field(2, ge=1, le=1000)
    height: StrictInt = Field(32, ge=8, le=2**20)
    width: StrictInt = Field(32, ge=8, le=2**20)
    guidance_scale: float = Field(3.5, allow_inf_nan=False, ge=-1000, le=1000)
    seed: Seed | Annotated[list[Seed], Field(min_length=1)] = 0
    # Video pipelines only (checked against the pipeline): null = the pipeline's own clip for
    # `qconf run`, a few frames for compare/sensitivity/tune (qconf.source.video).
    num_frames: StrictInt | None = Field(None, ge=1, le=MAX_FRAMES)
    fps: StrictInt | None = Field(None, ge=1, le=240)

    @model_validator(mode="after")
    def _bounded(self) -> RunSpec:
        if len(self.images()) > MAX_RUN_IMAGES:
            where = "run.prompt / run.seed"
            what = f"{len(self.images())} images per job (more than {MAX_RUN_IMAGES})"
            raise PlanProblems([Problem(where, what, "give fewer prompts or seeds")])
        return self

    def images(self) -> list[tuple[str, int]]:
        """(prompt, seed) of each image a job makes, prompts outermost."""
        prompts = [self.prompt] if isinstance(self.prompt, str) else self.prompt
        seeds = [self.seed] if isinstance(self.seed, int) else self.seed
        return [(prompt, seed) for prompt in prompts for seed in seeds]


class Plan(StrictModel):
    model: ModelSpec
    quant: QuantSpec = Field(default_factory=QuantSpec)
    run: RunSpec = Field(default_factory=RunSpec)
    # The model source as validation opened it (see `validate`): later steps take it from here
    # rather than reading the folder again.
    _source: ModelSource | None = PrivateAttr(None)

    @property
    def source(self) -> ModelSource:
        """model.source resolved and checked (opened once, by validation)."""
        opened = self._source
        if opened is None or (opened.given, opened.pipeline_asked) != (
            self.model.source,
            self.model.pipeline,
        ):  # never opened, or a copy with another model (`plan.model_copy(update=...)`)
            found, problems = open_source(self.model.source, self.model.pipeline)
            if found is None:
                raise PlanError(problems)
            self._source = found
        return self._source

    def parts(self) -> PipelineParts:
        return self.source.parts

    def targets(self, parts: PipelineParts | None = None) -> dict[str, EntryBase | None]:
        """Every weight-bearing part -> the entry that quantizes it (None = left alone)."""
        weighted = (parts or self.parts()).weighted
        saved = saved_entries(weighted)
        if saved and self.quant.is_empty:
            return {name: saved.get(name) for name in weighted}
        if self.quant.mode == "global":
            entry = self.quant.global_entry()
            wanted = self.quant.components
            if wanted is None:  # like diffusers: every nn.Module part, the VAE included
                wanted = [name for name, part in weighted.items() if not part.optional]
            return {
                name: entry if name in wanted else None
                for name, part in weighted.items()
                if not part.optional or name in wanted
            }
        return {
            name: self.quant.mapping.get(name)
            for name, part in weighted.items()
            if not part.optional or name in self.quant.mapping
        }

    def resolve(self, parts: PipelineParts | None = None) -> ResolvedPlan:
        from qconf.plan.resolve import resolve

        return resolve(self, parts)

    def to_diffusers(self) -> Any:
        """diffusers' PipelineQuantizationConfig for this plan (imports diffusers)."""
        return self.resolve().to_diffusers()

    @model_validator(mode="wrap")
    @classmethod
    def _report_together(cls, data: Any, handler: Any, info: ValidationInfo) -> Plan:
        """Field errors stop pydantic before the part checks; run the name checks anyway so one
        pass reports every problem."""
        try:
            return handler(data)
        except ValidationError as exc:
            problems = problems_from_errors(exc.errors(), root=Plan)
            if isinstance(data, dict) and not any(p.where.startswith("model") for p in problems):
                problems += raw_name_problems(
                    data, lambda src, pipe: opened_source(info.context, src, pipe)
                )
            raise PlanProblems(list(dict.fromkeys(problems))) from None  # once each, in order

    @model_validator(mode="after")
    def _check_parts(self, info: ValidationInfo) -> Plan:
        source, problems = opened_source(info.context, self.model.source, self.model.pipeline)
        found = source.parts if source is not None else None
        if found is not None:
            problems += source_problems(self.model, found)
            problems += part_problems(self.quant, found)
            problems += dtype_problems(self.model, self.quant)
            problems += run_problems(self.run.num_frames, self.run.fps, found.pipeline,
                                     self.run.steps)  # fmt: skip
            if not problems:
                problems += saved_problems(self, found)
        if problems:
            raise PlanProblems(problems)
        return self


def validate(cfg: Any, *, config_dir: str | Path | None = None) -> Plan:
    """Check a composed config (DictConfig or dict) and return the Plan, or raise PlanError
    listing every problem. Pure: reads config files and model_index.json, never weights."""
    too_deep = PlanError(
        Problem(
            "plan",
            f"values are nested more than {MAX_PLAN_DEPTH} levels deep",
            "a plan is a few levels deep: check the nested values you wrote",
        )
    )
    if depth(cfg) > MAX_PLAN_DEPTH:  # plain containers, before anything walks them recursively
        raise too_deep
    extra = (user_path(config_dir, "--config-dir").resolve(),) if config_dir is not None else ()
    context: dict[str, Any] = {"options": backend_options(extra), "sources": {}}
    # Everything that may resolve an interpolation (converting nodes, pydantic iterating a
    # ListConfig or a generator over one) runs with only OmegaConf's pure resolvers.
    with no_environment_reads(), _outside_values_refused():
        try:
            data = _plain(cfg)
        except RecursionError:  # a container that holds itself through an OmegaConf node
            raise too_deep from None
        if depth(data) > MAX_PLAN_DEPTH:
            raise too_deep
        unsafe = target_problems(data)
        if unsafe:  # before anything else reads the config
            raise PlanError(unsafe)
        try:
            plan = Plan.model_validate(data, context=context)
        except ValidationError as exc:
            raise PlanError(problems_from_errors(exc.errors(), root=Plan)) from None
    plan._source = context["sources"].get((plan.model.source, plan.model.pipeline), (None,))[0]
    return plan


def opened_source(
    context: dict[str, Any] | None, source: str, pipeline: str | None
) -> tuple[ModelSource | None, list[Problem]]:
    """open_source, once per validation: the checks of one plan share what it read."""
    sources = (context or {}).setdefault("sources", {})
    key = (source, pipeline)
    if key not in sources:
        sources[key] = open_source(source, pipeline)
    return sources[key]


def _plain(cfg: Any) -> Any:
    """Plain data of `cfg`, every OmegaConf node in it (at the top or nested in dicts, lists and
    tuples, e.g. `{"model": cfg.model}`) converted with environment reads refused: the plan is
    written into saved and run folders."""
    if isinstance(cfg, Plan):
        return cfg.model_dump(mode="json")
    if type(cfg).__module__.startswith("omegaconf"):
        return _container(cfg)
    if isinstance(cfg, Mapping):  # dict, MappingProxyType, UserDict, ...
        return {key: _plain(value) for key, value in cfg.items()}
    if isinstance(cfg, Iterable) and not isinstance(cfg, (str, bytes, bytearray)):
        return [_plain(value) for value in cfg]  # lists, tuples, sets, generators
    return cfg


def _container(cfg: Any) -> Any:
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    check_interpolation_count(OmegaConf.to_container(cfg, resolve=False))
    try:
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except RecursionError:
        raise PlanError(
            Problem("plan", "values are nested too deeply", "check the nested values")
        ) from None
    except OmegaConfBaseException as exc:
        key = str(getattr(exc, "full_key", None) or "config")
        cause = _environment_read(exc)
        if cause is not None:
            raise PlanError(_outside_value(key, cause)) from None
        raise PlanError(
            Problem(key, str(exc).splitlines()[0], "set the value (e.g. model=tiny-flux)")
        ) from None


@contextmanager
def _outside_values_refused() -> Iterator[None]:
    """A refused resolver (see no_environment_reads) as one PlanError naming the key, however
    OmegaConf or pydantic wrapped it."""
    try:
        yield
    except PlanError:
        raise
    except Exception as exc:
        cause = _environment_read(exc)
        if cause is None:
            raise
        raise PlanError(
            _outside_value(str(getattr(exc, "full_key", "") or "config"), cause)
        ) from None


def _outside_value(key: str, cause: EnvironmentRead) -> Problem:
    environment = cause.resolver in ENVIRONMENT_RESOLVERS
    shown = "${oc.env:...}" if environment else f"${{{cause.resolver}:...}}"
    return Problem(
        key,
        f"{cause} ({shown})",
        "plans are written into saved and run folders, so qconf never resolves "
        + ("environment variables" if environment else "resolvers an app registered")
        + "; put the value itself on the command line",
    )


def _environment_read(exc: BaseException | None) -> EnvironmentRead | None:
    seen = 0
    while exc is not None and seen < 10:  # OmegaConf wraps a resolver's error once or twice
        if isinstance(exc, EnvironmentRead):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def plan_json_schema() -> dict[str, Any]:
    """JSON Schema of a plan. Global mode's `quant.kwargs` is typed per backend with if/then,
    since pydantic only knows it as a dict (its backend sits beside it, not inside it)."""
    schema = Plan.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "qconf plan"
    defs = schema["$defs"]
    quant = defs["QuantSpec"]
    quant["allOf"] = []
    for key, spec in REGISTRY.items():
        kwargs_model = spec.entry.model_fields["kwargs"].annotation
        name = kwargs_model.__name__
        if name not in defs:
            continue
        quant["allOf"].append(
            {
                "if": {"properties": {"backend": {"const": key}}, "required": ["backend"]},
                "then": {"properties": {"kwargs": {"$ref": f"#/$defs/{name}"}}},
            }
        )
    mapping_values = quant["properties"]["mapping"]["additionalProperties"]
    option_names = sorted(backend_options())
    mapping_values["anyOf"].insert(
        0, {"type": "string", "enum": option_names, "description": "a backend option"}
    )
    return schema
