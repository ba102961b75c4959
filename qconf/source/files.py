"""The one reader of files that come with a model (not trusted, see DESIGN's trust model):
model_index.json, each part's config.json and *.safetensors headers (.gguf files:
qconf/backends/gguf_file.py).

Every reader bounds its work (file size, JSON depth) and checks the shape of what it read before
anyone uses it; a malformed file is a ModelSourceError whose `where` is the file. Torch-free."""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path
from typing import Any

from qconf.errors import ModelSourceError
from qconf.trust.bounds import MAX_JSON_DEPTH, depth
from qconf.trust.reading import bad_file, open_regular, read_regular

MAX_CONFIG_BYTES = 2 * 2**20  # model_index.json / config.json: kilobytes in every real model
MAX_JSON_BYTES = 16 * 2**20  # configs are kilobytes; a safetensors header of a big model ~10 MB
LIBRARIES = ("diffusers", "transformers")
_MODULE = re.compile(r"(?=.{1,100}$)[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_CLASS = re.compile(r"[A-Z][A-Za-z0-9_]{0,99}")
_PART = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}")


def _type_name(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", type(None): "null"}.get(
        type(value), f"a {type(value).__name__}"
    )


def parse_json(
    text: str | bytes, where: Path | str, what: str, max_bytes: int = MAX_JSON_BYTES
) -> Any:
    """JSON from untrusted text: bounded size and depth; invalid JSON names line and column."""
    if len(text) > max_bytes:
        raise bad_file(where, f"{what} is {len(text):,} bytes, over qconf's limit")
    try:
        data = json.loads(text)
    except RecursionError:
        raise bad_file(where, f"{what} is nested too deeply") from None
    except UnicodeDecodeError:
        raise bad_file(where, f"{what} is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise bad_file(
            where, f"{what} is not valid JSON ({exc.msg} at line {exc.lineno} col {exc.colno})"
        ) from None
    except ValueError:  # an integer longer than Python converts (sys.int_info digits limit)
        raise bad_file(where, f"{what} holds a number too long to read") from None
    if depth(data) > MAX_JSON_DEPTH:
        raise bad_file(where, f"{what} is nested more than {MAX_JSON_DEPTH} levels deep")
    return data


def read_json(
    path: Path, what: str = "the file", max_bytes: int = MAX_JSON_BYTES
) -> dict[str, Any]:
    """A JSON object (mapping) from `path`, size and depth bounded."""
    text = read_regular(path, what, max_bytes)
    data = parse_json(text, path, what, max_bytes)
    if not isinstance(data, dict):
        raise bad_file(path, f"{what} holds {_type_name(data)}, expected a JSON object")
    return data


MAX_PARTS = 64  # a pipeline has a handful; each part costs a config read and a meta build


def read_model_index(path: Path) -> tuple[str, dict[str, tuple[str, str] | None], Any]:
    """(pipeline class, {part: (library, class) or None for an absent part}, `_class_name` as
    written) of model_index.json, every entry checked: a part is a [library, class] pair of
    names, or [null, null]."""
    index = read_json(path, "model_index.json", MAX_CONFIG_BYTES)
    listed = sum(isinstance(v, list) and not k.startswith("_") for k, v in index.items())
    if listed > MAX_PARTS:
        raise bad_file(path, f"lists {listed} parts (a pipeline has at most {MAX_PARTS})",
                       "point model.source at a diffusers pipeline folder")  # fmt: skip
    raw_class = index.get("_class_name")
    folder = path.parent
    pipeline = index.get("_class_name", "DiffusionPipeline")
    if (
        isinstance(pipeline, list)
        and len(pipeline) == 2
        and all(isinstance(p, str) for p in pipeline)
    ):
        pipeline = pipeline[-1]  # ["pipeline.py", "MyPipeline"]: a custom pipeline file
    if not isinstance(pipeline, str) or not _CLASS.fullmatch(pipeline):
        raise bad_file(
            path,
            f"_class_name is {_shown(pipeline)}, not a pipeline class name",
            'set it to the pipeline class, e.g. "FluxPipeline"',
        )
    parts: dict[str, tuple[str, str] | None] = {}
    for name, value in index.items():
        if name.startswith("_") or not isinstance(value, list):
            continue  # private keys and pipeline settings (e.g. requires_safety_checker: true)
        if value in ([None, None], [None]):
            parts[name] = None
            continue
        where = f"{path} ({name})"
        pair = len(value) == 2 and all(isinstance(v, str) for v in value)
        if not _PART.fullmatch(name) or not pair:
            raise bad_file(
                where,
                f"entry is {_shown(value)}, expected [library, class]",
                'write e.g. ["diffusers", "AutoencoderKL"], or [null, null] for an absent part',
            )
        library, class_name = value
        custom = _MODULE.fullmatch(library) is not None and (
            (folder / name / f"{library}.py").is_file() or (folder / f"{library}.py").is_file()
        )
        if not _MODULE.fullmatch(library) or (library not in LIBRARIES and not custom):
            raise bad_file(
                where,
                f"unknown library '{library}'",
                "parts come from diffusers or transformers (or a <library>.py shipped in the "
                "folder)",
            )
        if not _CLASS.fullmatch(class_name):
            raise bad_file(where, f"'{class_name}' is not a class name", "name the part's class")
        parts[name] = (library, class_name)
    return pipeline, parts, raw_class


def read_part_config(folder: Path) -> dict[str, Any]:
    """A part's config.json ({} when the part has none), with `quantization_config` checked."""
    path = folder / "config.json"
    if not path.is_file():
        return {}
    config = read_json(path, "config.json", MAX_CONFIG_BYTES)
    if "quantization_config" in config:
        block = config["quantization_config"]
        method = block.get("quant_method") if isinstance(block, dict) else None
        if not isinstance(block, dict):
            raise bad_file(
                path, f"quantization_config is {_type_name(block)}, expected a JSON object"
            )
        if not isinstance(method, str) or not method:
            raise bad_file(
                path,
                f"quantization_config has no quant_method (found {_shown(method)})",
                'set "quant_method" (e.g. "torchao"), or remove the block for an unquantized part',
            )
    return config


def _shown(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- weights ----------------------------------------------------------------------------------


def safetensors_header(file: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """{tensor: (shape, dtype)} of one .safetensors file, checked against the file's size (a
    truncated file is an error naming it). Reads the header only."""
    try:
        with open_regular(file, "the safetensors file") as handle:
            size = os.fstat(handle.fileno()).st_size
            head = handle.read(8)
            length = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
            if length < 2 or 8 + length > size or length > MAX_JSON_BYTES:
                raise bad_file(file, "is not a complete safetensors file (bad header length)")
            text = handle.read(length)
    except ModelSourceError:  # already says what is wrong with the file
        raise
    except OSError as exc:
        raise bad_file(file, f"cannot read it ({exc.strerror or exc})") from None
    header = parse_json(text, file, "the safetensors header")
    if not isinstance(header, dict):
        raise bad_file(file, "is not a safetensors file (its header is not a JSON object)")
    data_size = size - 8 - length
    tensors: dict[str, tuple[tuple[int, ...], str]] = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        shape = info.get("shape") if isinstance(info, dict) else None
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        dtype = info.get("dtype") if isinstance(info, dict) else None
        ints = isinstance(shape, list) and all(isinstance(n, int) and n >= 0 for n in shape)
        span = isinstance(offsets, list) and len(offsets) == 2
        span = span and all(isinstance(n, int) for n in offsets) and 0 <= offsets[0] <= offsets[1]
        if not (ints and span and isinstance(dtype, str)):
            raise bad_file(file, f"is not a valid safetensors file (entry '{key}' is malformed)")
        if offsets[1] > data_size:
            raise bad_file(
                file,
                f"is truncated: tensor '{key}' ends past the end of the file",
                "re-download it",
            )
        tensors[key] = (tuple(shape), dtype)
    return tensors


def part_safetensors(part_folder: Path) -> list[Path]:
    """The weight files a library reads: variant files (model.fp16.safetensors) only when no
    plain file exists."""
    files = sorted(part_folder.glob("*.safetensors"))
    plain = [f for f in files if re.fullmatch(r"[^.]+(-\d+-of-\d+)?\.safetensors", f.name)]
    return plain or files


def part_header(part_folder: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    header: dict[str, tuple[tuple[int, ...], str]] = {}
    for file in part_safetensors(part_folder):
        header.update(safetensors_header(file))
    return header
