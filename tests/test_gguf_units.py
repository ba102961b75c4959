"""The GGUF entry (qconf/backends/gguf.py) without a load: which `file` values validation refuses,
and the bytes a GGUF file stands for, from a small file written here with the gguf library
(quantized blocks as stored, float tensors in the load dtype)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from qconf.backends import REGISTRY
from qconf.errors import Problem

gguf = pytest.importorskip("gguf")
np = pytest.importorskip("numpy")


def _entry(file: str) -> Any:
    return REGISTRY["gguf"].entry.model_validate({"backend": "gguf", "file": file})


def test_file_must_be_an_existing_gguf_file(tmp_path: Path) -> None:
    real = tmp_path / "part.gguf"
    real.write_bytes(b"")
    assert _entry(str(real)).check_backend_rules() == []
    (tmp_path / "part.bin").write_bytes(b"")
    for file in [str(tmp_path / "part.bin"), str(tmp_path / "missing.gguf"), str(tmp_path)]:
        assert _entry(file).check_backend_rules() == [
            Problem("file", f"'{file}' is not a .gguf file", "give the path of one")
        ]
    # what user_path refuses, said at `file`
    assert _entry("").check_backend_rules() == [Problem("file", "empty path", "give a path")]
    (nul,) = _entry("a\0.gguf").check_backend_rules()
    assert (nul.where, nul.what) == ("file", "the path contains a NUL byte")


def test_file_bytes_are_blocks_as_stored_and_floats_in_the_load_dtype(tmp_path: Path) -> None:
    path = tmp_path / "part.gguf"
    writer = gguf.GGUFWriter(str(path), "flux")
    weights = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    q8 = gguf.quants.quantize(weights, gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("blk.weight", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("blk.bias", np.zeros(8, dtype=np.float32))
    writer.add_tensor("norm.scale", np.zeros(16, dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    # Q8_0: blocks of 32 weights in 34 bytes (an fp16 scale and 32 int8)
    quantized = 8 * 64 // 32 * 34
    for dtype_size in (2, 4):
        total, note = _entry(str(path)).file_bytes(dtype_size)
        assert total == quantized + (8 + 16) * dtype_size
        assert note.startswith("gguf: bytes from the file's tensor table")
    assert _entry(str(path)).load_peak_ratio() == REGISTRY["gguf"].load_peak_ratio
