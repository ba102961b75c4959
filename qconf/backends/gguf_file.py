"""GGUF files: gguf's reader, after a walk of the header that checks every count and length
against the bytes the file has (gguf's reader trusts them). Torch-free."""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any

from qconf.errors import ModelSourceError
from qconf.trust.reading import bad_file, open_regular


def read_gguf(file: str | Path, where: str = "") -> Any:
    """gguf's GGUFReader of `file`; a truncated or malformed file is a ModelSourceError."""
    from gguf import GGUFReader

    path = Path(file)
    try:
        with open_regular(path, f"'{file}'") as handle:
            magic = handle.read(4)
            if magic == b"GGUF":
                problem = gguf_layout_problem(handle, os.fstat(handle.fileno()).st_size)
    except ModelSourceError as exc:  # open_regular's refusal (missing, not a regular file)
        raise bad_file(where or path, exc.problems[0].what, exc.problems[0].fix) from None
    except OSError as exc:  # a read that fails midway
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
