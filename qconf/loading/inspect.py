"""Rebuild the plan of any saved diffusers pipeline from its parts' config.json
`quantization_config` blocks — qconf-saved or not. Torch-free."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qconf.errors import ModelSourceError, PlanError, Problem
from qconf.plan.checks import saved_entries
from qconf.source.model import open_source
from qconf.source.parts import PipelineParts
from qconf.trust.userpath import user_path


def inspect_folder(folder: str | Path) -> dict[str, Any]:
    """The plan (as plain data) that produced the pipeline saved in `folder`."""
    path = user_path(folder, "inspect")
    if not (path / "model_index.json").is_file():
        raise ModelSourceError(
            Problem(
                str(folder), "no model_index.json here", "give a saved diffusers pipeline folder"
            )
        )
    source, problems = open_source(str(path), None)
    if source is None:
        raise PlanError(problems)
    found = source.parts
    entries = saved_entries(found.weighted)
    return {
        "model": {"source": str(folder), "pipeline": found.pipeline, "torch_dtype": _dtype(found)},
        "quant": {"mapping": {name: entry.canonical() for name, entry in entries.items()}},
    }


def _dtype(found: PipelineParts) -> str | None:
    """transformers records the load dtype in config.json; diffusers does not."""
    for name in sorted(found.parts):
        data = found.parts[name].config or {}
        dtype = data.get("dtype") or data.get("torch_dtype")
        if dtype in ("float32", "float16", "bfloat16"):
            return dtype
    return None
