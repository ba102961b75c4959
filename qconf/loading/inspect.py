"""Rebuild the plan of any saved diffusers pipeline from its parts' config.json
`quantization_config` blocks — qconf-saved or not. Torch-free."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qconf.errors import ModelSourceError, PlanError, Problem
from qconf.plan.checks import saved_entries
from qconf.source.files import read_part_config
from qconf.source.parts import pipeline_parts
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
    found, problems = pipeline_parts(str(path), None)
    if found is None:
        raise PlanError(problems)
    entries = saved_entries(found.weighted)
    return {
        "model": {"source": str(folder), "pipeline": found.pipeline, "torch_dtype": _dtype(path)},
        "quant": {"mapping": {name: entry.canonical() for name, entry in entries.items()}},
    }


def _dtype(folder: Path) -> str | None:
    """transformers records the load dtype in config.json; diffusers does not."""
    for config in sorted(folder.glob("*/config.json")):
        data = read_part_config(config.parent)
        dtype = data.get("dtype") or data.get("torch_dtype")
        if dtype in ("float32", "float16", "bfloat16"):
            return dtype
    return None
