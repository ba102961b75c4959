"""Which parts a pipeline has and which library owns each — without importing torch.

Sources, in order: a built-in tiny pipeline name, a local folder's model_index.json, a hub id
already in the local Hugging Face cache, and finally the generated table of pipeline classes
(`model.pipeline`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from qconf.source.files import read_model_index, read_part_config
from qconf.source.table import load_table
from qconf.trust.userpath import user_path

TINY_PIPELINES: dict[str, str] = {
    "tiny-flux": "FluxPipeline",
    "tiny-sd": "StableDiffusionPipeline",
    "tiny-sd3": "StableDiffusion3Pipeline",
    "tiny-sdxl": "StableDiffusionXLPipeline",
    "tiny-wan": "WanPipeline",  # Wan 2.1: one transformer
    "tiny-wan22": "WanPipeline",  # Wan 2.2 A14B: transformer + transformer_2
    "tiny-ltx": "LTXPipeline",
}
# Optional add-ons most checkpoints do not ship (IP-Adapter image encoders, SD's safety
# checker). The table cannot know whether a hub checkpoint has them, so they are listed only when
# a plan names them; every other part of the class is taken as present.
_AUXILIARY = frozenset({"image_encoder", "feature_extractor", "safety_checker"})
# What each built-in tiny pipeline leaves out of its class's parts.
_TINY_ABSENT: dict[str, frozenset[str]] = {"tiny-wan": _AUXILIARY | {"transformer_2"}}
# Class-name endings of parts that hold no weights, for model_index.json entries whose class
# is not in the generated table.
_WEIGHTLESS_SUFFIXES = ("Tokenizer", "TokenizerFast", "Scheduler", "Processor", "FeatureExtractor")

SourceKind = Literal["tiny", "folder", "hub"]


@dataclass(frozen=True)
class Part:
    name: str
    library: str  # "diffusers" | "transformers" | another package
    class_name: str
    weights: bool  # an nn.Module with parameters (quantizable)
    optional: bool = False  # an add-on that may be absent (parts known from the table only)
    # Read from a local folder only:
    saved_quantization: dict | None = None  # config.json `quantization_config` (pre-quantized)
    pickle_only: bool = False  # weights only as .bin/.pt/.ckpt (pickle), no .safetensors
    # .safetensors files none of which has the name the library reads (a quantization tool
    # that writes a diffusers part's weights as model.safetensors): (what is there, the file
    # the library reads)
    unread_weights: tuple[str, str] | None = None
    custom_code: str | None = None  # why loading it would run code from the model folder/hub
    config: dict | None = None  # its config.json as read (bounded, checked), None: none there


@dataclass(frozen=True)
class PipelineParts:
    pipeline: str
    parts: dict[str, Part]
    origin: str  # where the part list came from, for messages
    custom_code: str | None = None  # why loading the pipeline class itself would run its code

    @property
    def weighted(self) -> dict[str, Part]:
        return {name: part for name, part in self.parts.items() if part.weights}


def source_kind(source: str) -> SourceKind:
    if source in TINY_PIPELINES:
        return "tiny"
    if source.startswith((".", "/", "~")) or user_path(source, "model.source").is_dir():
        return "folder"
    return "hub"


def tiny_parts(name: str) -> PipelineParts:
    absent = _TINY_ABSENT.get(name, _AUXILIARY)
    return parts_from_table(TINY_PIPELINES[name], f"built-in {name}", absent)


def parts_from_table(
    pipeline: str, origin: str, absent: frozenset[str] = frozenset()
) -> PipelineParts:
    table = load_table()[pipeline]
    parts = {
        name: Part(name, info["library"], info["class"], info["weights"], name in _AUXILIARY)
        for name, info in table.items()
        if name not in absent
    }
    return PipelineParts(pipeline, parts, origin)


_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
# The file name each library loads a part's weights from (sharded: <stem>-00001-of-00002,
# variant: <stem>.fp16; then .safetensors)
_WEIGHTS_STEM = {"diffusers": "diffusion_pytorch_model", "transformers": "model"}


def from_model_index(path: Path) -> PipelineParts:
    pipeline, entries, raw_class = read_model_index(path)
    known = load_table().get(pipeline, {})
    parts = {}
    for name, value in entries.items():
        if value is None:
            continue
        library, class_name = value
        info = known.get(name)
        if info is not None and info["class"] == class_name:
            weights = info["weights"]
        else:
            weights = not class_name.endswith(_WEIGHTLESS_SUFFIXES)
        parts[name] = Part(
            name, library, class_name, weights, **_folder_facts(path.parent / name, library)
        )
    return PipelineParts(
        pipeline, parts, str(path.parent), _custom_pipeline(raw_class, pipeline, path.parent)
    )


def _custom_pipeline(raw: object, pipeline: str, folder: Path) -> str | None:
    """diffusers runs a pipeline file named by `_class_name: [file, class]`, one named
    `None.py` at the top of the folder (its lookup of `custom_pipeline=None`), and looks up a
    class it does not have on the hub: all are code shipped with the model."""
    if isinstance(raw, list):
        return f"model_index.json names a pipeline file '{raw[0]}' (code shipped with the model)"
    if (folder / "None.py").exists():
        return "the folder holds None.py, which diffusers runs as the pipeline's own code"
    if pipeline not in load_table():
        return f"'{pipeline}' is not a diffusers pipeline class (it would be looked up as code)"
    return None


def _folder_facts(folder: Path, library: str) -> dict:
    """What a part's own folder says: saved quantization, weight format, custom code."""
    facts: dict = {}
    config = read_part_config(folder)
    if (folder / "config.json").is_file():
        facts["config"] = config
    if "quantization_config" in config:
        facts["saved_quantization"] = config["quantization_config"]
    if library not in ("diffusers", "transformers"):
        facts["custom_code"] = f"its class comes from '{library}', not diffusers or transformers"
    elif "auto_map" in config:
        facts["custom_code"] = "its config.json has an auto_map (code shipped with the model)"
    if folder.is_dir():
        files = [f.name for f in folder.iterdir()]
        has_pickle = any(f.endswith(_PICKLE_SUFFIXES) for f in files)
        facts["pickle_only"] = has_pickle and not any(f.endswith(".safetensors") for f in files)
        facts["unread_weights"] = unread_weights(files, library)
    return facts


def unread_weights(names: list[str], library: str) -> tuple[str, str] | None:
    """(the .safetensors files among `names`, the file `library` reads) when none of them has
    the name the library reads; None when one has, or there are none."""
    named = sorted(f for f in names if f.endswith(".safetensors"))
    stem = _WEIGHTS_STEM.get(library)
    if stem and named and not any(re.split(r"[.-]", f)[0] == stem for f in named):
        return ", ".join(named[:3]) + (", ..." if len(named) > 3 else ""), f"{stem}.safetensors"
    return None


def hub_cache_index(repo_id: str) -> Path | None:
    """model_index.json of `repo_id` in the local Hugging Face cache, without importing the hub."""
    from qconf.source.hub import hub_cache_dir  # the folder huggingface_hub would use

    snapshots = hub_cache_dir() / f"models--{repo_id.replace('/', '--')}" / "snapshots"
    found = sorted(snapshots.glob("*/model_index.json"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None
