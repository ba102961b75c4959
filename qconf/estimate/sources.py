"""Where the shapes come from: the part's module built on the meta device from config.json,
exact shapes from *.safetensors headers (a pre-quantized file's own header: its backend entry's
`file_bytes`). Nothing is allocated and
no tensor data is read."""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from qconf.errors import ModelSourceError, Problem
from qconf.estimate.snapshots import is_shipped
from qconf.quiet import config_notices_off
from qconf.source.files import part_header, read_part_config
from qconf.source.limits import check_part_config, counted_build
from qconf.source.parts import PipelineParts, from_model_index


def estimate_source(plan: Any, folder: str | Path | None = None) -> tuple[Path, PipelineParts]:
    """The pipeline folder to read shapes from and its parts: `folder` (`--folder`, checked by
    the intake as model.source is), else the plan's own source as validation opened it (a tiny
    pipeline's cache folder, a local folder, a hub snapshot in the local cache), else the
    config-only snapshot qconf ships, else (with network) the hub id's config files alone."""
    from qconf.plan.intake import take_folder

    if folder is not None:
        source = take_folder(plan, folder)
        return source.folder, source.parts  # type: ignore[return-value]
    local = plan.source.local_folder()
    if local is not None:
        return local, plan.source.parts
    from qconf.estimate.snapshots import fetch_configs, snapshot_folder

    shipped = snapshot_folder(plan.model.source)
    if shipped is not None:
        return shipped, from_model_index(shipped / "model_index.json")
    fetched = fetch_configs(plan.model.source, plan.model.pipeline)
    return fetched, take_folder(plan, fetched, "model.source").parts


def meta_model(folder: Path, name: str, library: str, class_name: str, dtype: Any) -> Any:
    """(config dict, module on the meta device), built as the library builds it before loading:
    diffusers in fp32 (weights are cast while loading), transformers under its load dtype.
    Cached per (folder, part, dtype) and config file state: callers only read the module."""
    config_file = folder / name / "config.json"
    stamp = config_file.stat().st_mtime_ns if config_file.is_file() else None
    return _meta_model(folder.resolve(), name, library, class_name, dtype, stamp)


# Enough for every part of every shipped snapshot under two dtypes: a run over all presets
# builds each (model, part, dtype) once and reuses it for every preset of that model.
@functools.lru_cache(maxsize=128)
def _meta_model(
    folder: Path, name: str, library: str, class_name: str, dtype: Any, stamp: int | None
) -> Any:
    if not (folder / name / "config.json").is_file():
        raise ModelSourceError(
            Problem(str(folder / name), "has no config.json", "copy the part's config.json there")
        )
    file = folder / name / "config.json"
    # shape, size and depth checked before a library reads the file; its counts and sizes
    # bounded before anything is built (a part built without estimate()'s folder check too)
    checked = read_part_config(folder / name)
    check_part_config(checked, file)
    module = _library_module(library)
    cls = getattr(module, class_name, None) if module is not None else None
    if cls is None:
        raise ModelSourceError(
            Problem(
                str(folder / "model_index.json"),
                f"{name}: {library}.{class_name} is not installed here, so it cannot be built",
                "estimate parts of diffusers and transformers classes only",
            )
        )
    # Notices about config keys (a key the class no longer takes) are about the user's file,
    # except in qconf's own snapshots, which keep the hub's keys verbatim.
    quiet = config_notices_off() if is_shipped(folder) else contextlib.nullcontext()
    with _config_values(file, class_name), quiet, counted_build(file):
        # Built from the dict qconf read and checked, never from the file again: no swap in
        # between, and an `auto_map` in it is never resolved (no remote-code prompt).
        if library == "diffusers":
            config = dict(checked)
            return config, _on_meta(lambda: cls.from_config(config))
        model_type = checked.get("model_type")
        known = isinstance(model_type, str) and model_type in module.CONFIG_MAPPING
        config_class = module.CONFIG_MAPPING[model_type] if known else cls.config_class
        return _transformers_meta(cls, config_class.from_dict(dict(checked)), dtype)


@contextlib.contextmanager
def _config_values(file: Path, class_name: str) -> Iterator[None]:
    """A config.json of the right shape can still hold values the model cannot be built with
    (a string where a size goes): that is the file's fault, said as such."""
    try:
        yield
    except _config_errors() as exc:
        raise ModelSourceError(
            Problem(
                str(file),
                f"{class_name} cannot be built from it ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:120] if str(exc) else ''})",
                "fix the values in config.json (compare with the original model's)",
            )
        ) from None


def _config_errors() -> tuple[type[Exception], ...]:
    """What building a model from bad config values raises."""
    errors: tuple[type[Exception], ...] = (
        TypeError, ValueError, KeyError, AttributeError, IndexError, ZeroDivisionError,
        OverflowError,  # a size too large for a C long
        RuntimeError,  # torch refusing a size (a negative dimension)
    )  # fmt: skip
    try:  # transformers' strict config fields (an int field given a string) raise this
        from huggingface_hub.errors import StrictDataclassError
    except ImportError:
        return errors
    return (*errors, StrictDataclassError)


def _transformers_meta(cls: Any, config: Any, dtype: Any) -> Any:
    import torch

    for sub in [config, *(getattr(config, key, None) for key in config.sub_configs)]:
        if sub is not None:  # as from_pretrained does: sub-models build in the same dtype
            sub.dtype = dtype
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return config.to_dict(), _on_meta(lambda: cls(config))
    finally:
        torch.set_default_dtype(default)


def _library_module(library: str) -> Any:
    if library == "diffusers":
        import diffusers

        return diffusers
    if library == "transformers":
        import transformers

        return transformers
    return None


def _on_meta(build: Callable[[], Any]) -> Any:
    """Build with every tensor on the meta device; a model whose __init__ needs real values
    (e.g. `.item()` on a schedule) gets real buffers instead, its parameters still on meta."""
    import torch

    try:
        with torch.device("meta"):
            return build()
    except (RuntimeError, NotImplementedError):
        from accelerate import init_empty_weights

        with init_empty_weights(include_buffers=False):
            return build()


def fp32_matcher(model: Any, library: str, dtype: Any) -> Callable[[str], bool]:
    """Which parameters a library keeps in fp32 (`_keep_in_fp32_modules`)."""
    import torch

    if library == "diffusers":  # any dtype; a module name equal to one component of the key
        keep = set(type(model)._keep_in_fp32_modules or [])
        return lambda key: bool(keep.intersection(key.split(".")))
    # transformers: `_keep_in_fp32_modules` only in fp16, `..._strict` in fp16 and bf16, each a
    # pattern searched anywhere in the key (core_model_loading's dtype plan)
    keep = list(model._keep_in_fp32_modules or []) if dtype == torch.float16 else []
    if dtype in (torch.float16, torch.bfloat16):
        keep += list(model._keep_in_fp32_modules_strict or [])
    if not keep:
        return lambda key: False
    pattern = re.compile("|".join(k.replace("*", ".*") for k in keep))
    return lambda key: pattern.search(key) is not None


def safetensors_header(part_folder: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """{tensor: (shape, dtype)} from the part's *.safetensors headers; no tensor data is read."""
    return part_header(part_folder)
