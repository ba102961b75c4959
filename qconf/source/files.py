"""The one reader of files that come with a model (not trusted, see DESIGN's trust model):
model_index.json, each part's config.json, *.safetensors headers and .gguf files.

Every reader bounds its work (file size, JSON depth) and checks the shape of what it read before
anyone uses it; a malformed file is a ModelSourceError whose `where` is the file. Torch-free."""

from __future__ import annotations

import json
import os
import re
import struct
from pathlib import Path
from typing import Any

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


def read_gguf(file: str | Path, where: str = "") -> Any:
    """gguf's GGUFReader of `file`; a truncated or malformed file is a ModelSourceError."""
    from gguf import GGUFReader

    path = Path(file)
    try:
        with open_regular(path, f"'{file}'") as handle:
            magic = handle.read(4)
            if magic == b"GGUF":
                problem = gguf_layout_problem(handle, os.fstat(handle.fileno()).st_size)
    except OSError as exc:
        raise bad_file(where or path, f"cannot read '{file}' ({exc.strerror or exc})") from None
    if magic != b"GGUF":
        raise bad_file(where or path, f"'{file}' is not a GGUF file (no GGUF magic)")
    if problem is not None:
        raise bad_file(where or path, f"'{file}' is malformed: {problem}",
                       "re-create or re-download the .gguf file")  # fmt: skip
    try:
        return GGUFReader(str(path))
    except (ValueError, OSError, IndexError, KeyError, struct.error, OverflowError) as exc:
        raise bad_file(
            where or path,
            f"'{file}' is truncated or malformed ({type(exc).__name__}: {str(exc)[:80]})",
            "re-create or re-download the .gguf file",
        ) from None


# GGUF metadata value types (gguf's GGUFValueType): fixed sizes, 8 = string, 9 = array.
_GGUF_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_GGUF_STRING, _GGUF_ARRAY = 8, 9
MAX_GGUF_ENTRIES = 100_000  # tensors or metadata keys; a model has a few thousand
# gguf's reader builds Python objects per array element (~700 bytes each): the elements of all
# metadata arrays together are bounded (a tokenizer's vocabulary is a few hundred thousand).
MAX_GGUF_ARRAY_ITEMS = 1_000_000


def gguf_layout_problem(handle: Any, size: int) -> str | None:
    """Walk a GGUF file's header (after the magic) checking every count and length against the
    bytes the file has, before gguf's reader trusts them (it loops once per claimed element,
    so a 49-byte file claiming 2**62 array items never ends). None when the layout holds."""

    def take(count: int) -> bytes:
        if count < 0 or handle.tell() + count > size:
            raise _Short()
        return handle.read(count)

    def number(fmt: str) -> int:
        return struct.unpack(fmt, take(struct.calcsize(fmt)))[0]

    items = [0]

    def skip_value(kind: int, depth: int = 0) -> None:
        if kind in _GGUF_SIZES:
            take(_GGUF_SIZES[kind])
        elif kind == _GGUF_STRING:
            take(number("<Q"))
        elif kind == _GGUF_ARRAY and depth < 4:
            item, count = number("<I"), number("<Q")
            items[0] += count
            if items[0] > MAX_GGUF_ARRAY_ITEMS:
                raise _Bad(f"its metadata arrays hold over {MAX_GGUF_ARRAY_ITEMS:,} items")
            least = _GGUF_SIZES.get(item, 8 if item == _GGUF_STRING else 12)
            if count * least > size - handle.tell():
                raise _Short()
            if item in _GGUF_SIZES:
                take(count * least)
            else:
                for _ in range(count):
                    skip_value(item, depth + 1)
        else:
            raise _Bad(f"unknown metadata value type {kind}")

    try:
        version, tensors, keys = number("<I"), number("<Q"), number("<Q")
        if version not in (2, 3):
            return f"GGUF version {version} (qconf reads 2 and 3)"
        if tensors > MAX_GGUF_ENTRIES or keys > MAX_GGUF_ENTRIES:
            return f"it claims {tensors:,} tensors and {keys:,} metadata keys"
        for _ in range(keys):
            take(number("<Q"))  # the key
            skip_value(number("<I"))
        for _ in range(tensors):
            take(number("<Q"))  # the name
            dims = number("<I")
            if dims > 8:
                return f"a tensor with {dims} dimensions"
            take(8 * dims + 4 + 8)  # shape, type, offset
    except _Short:
        return "a count or length runs past the end of the file (truncated or forged)"
    except _Bad as exc:
        return str(exc)
    return None


class _Short(Exception):
    pass


class _Bad(Exception):
    pass
