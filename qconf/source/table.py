"""A torch-free table of the parts of every pipeline class in the installed diffusers.

`qconf validate preset=flux-nf4` must know FluxPipeline's parts without importing diffusers (5+ s).
The table is generated from diffusers (`python -m qconf.source.table`) into
qconf/data/pipelines.json and kept honest by a test that regenerates it."""

from __future__ import annotations

import inspect
import json
import sys
import types
import typing
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

TABLE_FILE = "pipelines.json"


@cache
def load_table() -> dict[str, dict[str, dict[str, Any]]]:
    """{pipeline class: {part: {"library", "class", "weights", "optional"}}}."""
    text = resources.files("qconf.data").joinpath(TABLE_FILE).read_text()
    return json.loads(text)["pipelines"]


def _component_class(annotation: Any) -> type | None:
    """The first class in an annotation like `X`, `X | None`, `Union[X, Y]`."""
    if isinstance(annotation, type):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _component_class(arg)
            if found is not None and found is not type(None):
                return found
    return None


def _library_of(cls: type) -> str:
    root = cls.__module__.split(".")[0]
    return root if root in ("diffusers", "transformers") else "other"


def generate() -> dict[str, Any]:
    """Inspect every pipeline class of the installed diffusers (imports torch and diffusers)."""
    import diffusers
    import torch

    pipelines: dict[str, dict[str, dict[str, Any]]] = {}
    for name in sorted(dir(diffusers)):
        if not name.endswith("Pipeline") or name == "DiffusionPipeline":
            continue
        try:
            pipeline_cls = getattr(diffusers, name)
            signature = inspect.signature(pipeline_cls.__init__)
        except Exception:  # a pipeline whose optional dependency is missing here
            continue
        optional = set(getattr(pipeline_cls, "_optional_components", []) or [])
        parts = {}
        for param in list(signature.parameters.values())[1:]:
            cls = _component_class(param.annotation)
            if cls is None or cls.__module__.split(".")[0] not in ("diffusers", "transformers"):
                continue  # plain config values (bools, ints) are not parts
            parts[param.name] = {
                "library": _library_of(cls),
                "class": cls.__name__,
                "weights": issubclass(cls, torch.nn.Module),
                "optional": param.name in optional or param.default is not inspect.Parameter.empty,
            }
        pipelines[name] = parts
    return {"diffusers_version": diffusers.__version__, "pipelines": pipelines}


def main() -> None:
    target = Path(__file__).resolve().parents[1] / "data" / TABLE_FILE
    target.write_text(json.dumps(generate(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {target}", file=sys.stderr)


if __name__ == "__main__":
    main()
