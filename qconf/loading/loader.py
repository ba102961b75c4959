"""Load the real pipeline: validate → resolve → environment checks (all before any weight is
read) → DiffusionPipeline.from_pretrained(quantization_config=..., torch_dtype=...) → report."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from qconf.backends import REGISTRY
from qconf.errors import ModelSourceError, Problem
from qconf.loading.report import LoadReport, measure_part
from qconf.loading.trainable import check_trainable
from qconf.plan.intake import intake
from qconf.plan.resolve import ResolvedPlan
from qconf.plan.schema import Plan
from qconf.quiet import quiet


@dataclass
class Loaded:
    pipeline: Any
    resolved: ResolvedPlan
    load_seconds: float

    @cached_property
    def report(self) -> LoadReport:
        """Measured per part on first use (load_pipeline callers do not pay for it)."""
        return _report(self.pipeline, self.resolved, self.load_seconds)


def load(
    cfg: Any = None,
    *,
    model: Any = None,
    quant: Any = None,
    save: str | Path | None = None,
    force: bool = False,
    max_shard_size: str | int | None = None,
    train: bool | Sequence[str] = False,
    **extra: Any,
) -> Loaded:
    """Load with a composed config, or with `model=`/`quant=` nodes (as a Hydra `_target_`).
    `save=DIR` then writes the quantized pipeline there (see qconf.loading.saving);
    `train=True` (or a list of parts) first refuses backends that cannot pass gradients
    (qconf.loading.trainable)."""
    # `cfg` may be a user's whole Hydra app config: its model/quant/run sections are the plan
    plan = intake(cfg, model=model, quant=quant, app_config=True, **extra)
    # the known harmless import-time noise of the backends (qconf.quiet) is not about the plan
    with quiet():
        return _load(plan, save=save, force=force, max_shard_size=max_shard_size, train=train)


def _load(plan: Plan, *, save: str | Path | None, force: bool,
          max_shard_size: str | int | None, train: bool | Sequence[str]) -> Loaded:  # fmt: skip
    resolved = plan.resolve()
    from qconf.loading.environment import check_environment, prepare_backends, while_loading

    check_environment(resolved)
    if train:  # True: every quantized part; or the names of the parts that will be trained
        check_trainable(resolved, None if train is True else list(train))
    prepare_backends(resolved, train)
    if save is not None:
        from qconf.loading.saving import check_can_save, check_shard_size, snapshot

        check_can_save(resolved, save, force=force)  # before any weight is read
        check_shard_size(max_shard_size)
        listing = snapshot(save)
    source = plan.source.load_path()

    import torch
    from diffusers import DiffusionPipeline

    from qconf.loading.load_checks import check_folder, missing_key_problems, missing_keys
    from qconf.loading.out_of_memory import out_of_memory_cause
    from qconf.source.files import part_header

    check_folder(resolved, plan.source.local_folder())
    dtype = getattr(torch, resolved.torch_dtype) if resolved.torch_dtype else None
    started = time.perf_counter()
    with while_loading(resolved), default_dtype_kept():
        ready_parts = load_file_parts(resolved, source, dtype)
    config = resolved.to_diffusers(_transformers_default_skips(resolved, source))
    safety = load_safety(plan)
    if plan.model.device_map is not None:
        safety["device_map"] = plan.model.device_map
    try:
        with missing_keys() as missing, while_loading(resolved), default_dtype_kept():
            pipeline = DiffusionPipeline.from_pretrained(
                source, quantization_config=config, dtype=dtype, **safety, **ready_parts
            )
    except (OSError, ValueError) as exc:
        # OSError: missing files, hub unreachable (offline), not in the cache; ValueError:
        # diffusers refusing what the folder holds (a class it cannot load, a bad index)
        if out_of_memory_cause(exc) is not None:  # diffusers wraps a failed read in OSError
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelSourceError(
            Problem(
                "model.source",
                f"cannot load '{plan.model.source}': {first}",
                "use a local folder, a model already in the Hugging Face cache, or a tiny-* model",
            )
        ) from None
    # a file part: the pipeline may recast what it loaded; a saved part: the library may have
    # loaded it otherwise than saved (weights it then leaves unset are that problem, said once)
    saved = [n for n in resolved.quantized if resolved.parts.parts[n].saved_quantization]
    folder = plan.source.local_folder()
    problems, misloaded = [], set()
    for name in [*ready_parts, *saved]:
        entry = resolved.quantized[name].entry
        header = part_header(folder / name) if name in saved and folder is not None else None
        problem = entry.loaded_problem(getattr(pipeline, name), header)
        if problem is not None:
            where = f"quant.mapping.{name}" if name in ready_parts else f"model.source ({name})"
            problems.append(Problem(where, problem, entry.loaded_fix()))
            misloaded.add(name)
    problems += [
        p
        for p in missing_key_problems(pipeline, resolved.parts, missing)
        if p.where.removeprefix("model.source (").removesuffix(")") not in misloaded
    ]
    if problems:
        raise ModelSourceError(problems)
    loaded = Loaded(pipeline, resolved, time.perf_counter() - started)
    if save is not None:
        from qconf.loading.saving import save_pipeline

        save_pipeline(loaded, save, force=force, max_shard_size=max_shard_size, listing=listing)
    return loaded


@contextlib.contextmanager
def default_dtype_kept() -> Iterator[None]:
    """torch's default dtype as it was, also after a load that failed: diffusers sets it to the
    load dtype while building a model and does not restore it when building raises (an
    out-of-memory error a caller catches would leave every later tensor in bf16)."""
    import torch

    before = torch.get_default_dtype()
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def load_safety(plan: Plan) -> dict[str, Any]:
    """Weights from safetensors only unless the user trusts pickles; never run the model's code
    unless asked (both are refused earlier, at validation, for local folders)."""
    safety: dict[str, Any] = {"use_safetensors": None if plan.model.allow_pickle else True}
    if plan.model.trust_remote_code:
        safety["trust_remote_code"] = True
    return safety


def load_pipeline(cfg: Any = None, *, model: Any = None, quant: Any = None, **extra: Any) -> Any:
    """The quantized pipeline (see `load` for the report)."""
    return load(cfg, model=model, quant=quant, **extra).pipeline


def _transformers_default_skips(resolved: ResolvedPlan, source: str) -> dict[str, list[str]]:
    """What transformers would leave unquantized by itself (e.g. output embeddings) for parts
    with a `skip` list: transformers drops these defaults once a skip list is given, and qconf's
    `skip` promises to extend them. diffusers keeps no such defaults, so its parts need none.
    The model is built on the meta device: no weight is read or allocated."""
    import torch
    import transformers
    from transformers import AutoConfig
    from transformers.quantizers.base import get_keys_to_not_convert

    skips = {}
    for name, part in resolved.quantized.items():
        if part.library != "transformers" or part.entry.skip is None:
            continue
        info = resolved.parts.parts[name]
        model_cls = getattr(transformers, info.class_name)
        if info.config is not None:  # as the source read it (no second read of the file)
            config = model_cls.config_class.from_dict(dict(info.config))
        else:
            config = AutoConfig.from_pretrained(source, subfolder=name)
        with torch.device("meta"):
            model = model_cls(config)
        skips[name] = sorted(get_keys_to_not_convert(model))
    return skips


def load_file_parts(resolved: ResolvedPlan, source: str, dtype: Any) -> dict[str, Any]:
    """Parts read from a pre-quantized file their entry names (e.g. GGUF), loaded the way the
    backend says, handed to the pipeline as ready components."""
    import diffusers

    ready = {}
    for name, part in resolved.quantized.items():
        saved = resolved.parts.parts[name].saved_quantization is not None
        if REGISTRY[part.backend].quantizes_on_load or saved:  # saved: the library reads it
            continue
        model_cls = getattr(diffusers, resolved.parts.parts[name].class_name)
        ready[name] = part.entry.load_from_file(
            model_cls, source, name, dtype, resolved.torch_dtype
        )
    return ready


def _report(pipeline: Any, resolved: ResolvedPlan, seconds: float) -> LoadReport:
    import torch

    dtype = getattr(torch, resolved.torch_dtype) if resolved.torch_dtype else None
    parts = {}
    for name in resolved.components:
        module = getattr(pipeline, name, None)
        if module is None:
            continue
        part = resolved.components[name]
        library = resolved.parts.parts[name].library
        parts[name] = measure_part(name, module, library, part and part.backend, dtype)
    return LoadReport(resolved.parts.pipeline, resolved.torch_dtype, seconds, parts)
