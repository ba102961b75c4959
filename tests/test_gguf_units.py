"""The GGUF entry (qconf/backends/gguf.py) without a load: which `file` values validation refuses,
and the bytes a GGUF file stands for, from a small file written here with the gguf library
(quantized blocks as stored, float tensors in the load dtype)."""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Sequence
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


# --- the header walk before gguf's reader (qconf/backends/gguf_file.py) ---
# GGUF layout (gguf's spec, version 3): magic, u32 version, u64 tensor count, u64 key count; each
# key is a u64-length name, a u32 value type and the value; each tensor a u64-length name, a u32
# dimension count, a u64 per dimension, a u32 type and a u64 offset.


def _string(text: bytes) -> bytes:
    return struct.pack("<Q", len(text)) + text


def _header(keys: Sequence[bytes] = (), tensors: Sequence[bytes] = (), version: int = 3) -> bytes:
    head = struct.pack("<IQQ", version, len(tensors), len(keys))
    return b"GGUF" + head + b"".join(keys) + b"".join(tensors)


def _key(value_type: int, value: bytes) -> bytes:
    return _string(b"k") + struct.pack("<I", value_type) + value


def _tensor(dims: int) -> bytes:
    return _string(b"t") + struct.pack("<I", dims) + struct.pack("<Q", 1) * dims + bytes(12)


def _problem(data: bytes) -> str | None:
    from qconf.backends.gguf_file import gguf_layout_problem

    handle = io.BytesIO(data)
    assert handle.read(4) == b"GGUF"
    return gguf_layout_problem(handle, len(data))


SHORT = "a count or length runs past the end of the file (truncated or forged)"


def test_header_walk_accepts_every_value_kind() -> None:
    # fixed sizes (gguf's GGUFValueType): u8 i8 u16 i16 u32 i32 f32 bool u64 i64 f64
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    keys = [_key(kind, bytes(size)) for kind, size in sizes.items()]
    keys.append(_key(8, _string(b"text")))
    keys.append(_key(9, struct.pack("<IQ", 4, 3) + bytes(12)))  # three u32
    keys.append(_key(9, struct.pack("<IQ", 8, 2) + _string(b"a") + _string(b"bc")))  # strings
    nested = struct.pack("<IQ", 9, 1) + struct.pack("<IQ", 0, 2) + bytes(2)  # [[u8, u8]]
    keys.append(_key(9, nested))
    for version in (2, 3):
        assert _problem(_header(keys, [_tensor(2), _tensor(8)], version=version)) is None
    # empty strings and arrays (nothing to take), and arrays whose items exactly fill the file:
    # a string item takes 8 bytes at least (its length), an array item 12 (type and count)
    assert _problem(_header([_key(8, _string(b""))])) is None
    assert _problem(_header([_key(9, struct.pack("<IQ", 0, 0))])) is None
    assert _problem(_header([_key(9, struct.pack("<IQ", 8, 2) + bytes(16))])) is None
    assert _problem(_header([_key(9, struct.pack("<IQ", 9, 1) + struct.pack("<IQ", 0, 0))])) is None
    # each fixed size is exact: one byte less is past the end
    for kind, size in sizes.items():
        assert _problem(_header([_key(kind, bytes(size - 1))])) == SHORT, kind


def test_header_walk_refuses_what_gguf_would_trust() -> None:
    assert _problem(_header(version=1)) == "GGUF version 1 (qconf reads 2 and 3)"
    assert _problem(_header(version=4)) == "GGUF version 4 (qconf reads 2 and 3)"
    assert _problem(_header([_key(13, b"")])) == "unknown metadata value type 13"
    assert _problem(_header([], [_tensor(9)])) == "a tensor with 9 dimensions"
    assert _problem(_header([_key(8, struct.pack("<Q", 5) + b"abcd")])) == SHORT
    assert _problem(_header([], [_tensor(2)[:-1]])) == SHORT
    # an array claiming more items than bytes left: refused before a loop over them
    assert _problem(_header([_key(9, struct.pack("<IQ", 4, 3) + bytes(11))])) == SHORT
    assert _problem(_header([_key(9, struct.pack("<IQ", 8, 2) + bytes(15))])) == SHORT
    # an unknown item type counts 12 bytes per item at least (an array's own head): too few
    # bytes for that is short before any item is read
    assert _problem(_header([_key(9, struct.pack("<IQ", 9, 2) + bytes(23))])) == SHORT
    assert _problem(_header([_key(9, struct.pack("<IQ", 13, 2) + bytes(16))])) == SHORT
    assert _problem(_header([_key(9, struct.pack("<IQ", 13, 2) + bytes(24))])) == (
        "unknown metadata value type 13"
    )
    # counts and types are unsigned: the largest ones are refused as such, not read as -1
    top32, top64 = 2**32 - 1, 2**64 - 1
    assert _problem(_header(version=top32)) == f"GGUF version {top32} (qconf reads 2 and 3)"
    assert _problem(b"GGUF" + struct.pack("<IQQ", 3, top64, 0)) == (
        f"it claims {top64:,} tensors and 0 metadata keys"
    )
    assert _problem(b"GGUF" + struct.pack("<IQQ", 3, 0, top64)) == (
        f"it claims 0 tensors and {top64:,} metadata keys"
    )
    assert _problem(_header([_key(top32, bytes(8))])) == f"unknown metadata value type {top32}"
    array_of_unknown = struct.pack("<IQ", top32, 1) + bytes(12)
    assert _problem(_header([_key(9, array_of_unknown)])) == f"unknown metadata value type {top32}"
    endless = struct.pack("<IQ", 0, top64) + bytes(8)
    assert _problem(_header([_key(9, endless)])) == "its metadata arrays hold over 1,000,000 items"
    wide = _string(b"t") + struct.pack("<I", top32) + bytes(64)
    assert _problem(_header([], [wide])) == f"a tensor with {top32} dimensions"
    # arrays nest four deep at most
    deep = struct.pack("<IQ", 0, 1) + bytes(1)
    for _ in range(3):
        deep = struct.pack("<IQ", 9, 1) + deep
    assert _problem(_header([_key(9, deep)])) is None
    too_deep = struct.pack("<IQ", 9, 1) + deep
    assert _problem(_header([_key(9, too_deep)])) == "unknown metadata value type 9"


def test_header_walk_bounds_entries_and_array_items() -> None:
    from qconf.backends.gguf_file import MAX_GGUF_ARRAY_ITEMS, MAX_GGUF_ENTRIES

    assert MAX_GGUF_ENTRIES == 100_000 and MAX_GGUF_ARRAY_ITEMS == 1_000_000
    many = b"GGUF" + struct.pack("<IQQ", 3, 100_001, 0)
    assert _problem(many) == "it claims 100,001 tensors and 0 metadata keys"
    many_keys = b"GGUF" + struct.pack("<IQQ", 3, 0, 100_001)
    assert _problem(many_keys) == "it claims 0 tensors and 100,001 metadata keys"
    # exactly the bound is walked (and here found short)
    assert _problem(b"GGUF" + struct.pack("<IQQ", 3, 100_000, 100_000)) == SHORT
    # items of all arrays together: the bound itself passes, one more is refused
    half = _key(9, struct.pack("<IQ", 0, 500_000) + bytes(500_000))
    assert _problem(_header([half, half])) is None
    over = _key(9, struct.pack("<IQ", 0, 1) + bytes(1))
    assert _problem(_header([half, half, over])) == "its metadata arrays hold over 1,000,000 items"


def test_read_gguf_refusals_name_the_file(tmp_path: Path) -> None:
    from qconf.backends.gguf_file import read_gguf
    from qconf.errors import ModelSourceError

    def refusal(data: bytes | None, where: str = "") -> Problem:
        path = tmp_path / "part.gguf"
        if data is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(data)
        with pytest.raises(ModelSourceError) as caught:
            read_gguf(path, where) if where else read_gguf(path)
        (problem,) = caught.value.problems
        return problem

    path = tmp_path / "part.gguf"
    fix = "re-create or re-download the .gguf file"
    assert refusal(b"GGML" + bytes(20)) == Problem(
        str(path), f"'{path}' is not a GGUF file (no GGUF magic)", "fix or replace the file"
    )
    assert refusal(_header(version=1), "quant.mapping.transformer.file") == Problem(
        "quant.mapping.transformer.file",
        f"'{path}' is malformed: GGUF version 1 (qconf reads 2 and 3)",
        fix,
    )
    # open_regular's own refusal, said once, at `where`
    assert refusal(None, "here") == Problem(
        "here", f"cannot read '{path}' (No such file or directory)", "check the path"
    )
    # the layout holds but a tensor's type is none gguf knows: gguf's own error, in one line
    broken = _string(b"t") + struct.pack("<IQIQ", 1, 32, 99, 0)
    problem = refusal(_header([], [broken]))
    assert problem.where == str(path) and problem.fix == fix
    assert problem.what == (
        f"'{path}' is truncated or malformed (ValueError: np.uint32(99) is not a valid "
        "GGMLQuantizationType)"
    )
    # gguf's message is cut at 80 characters
    name = b"blk." + b"x" * 100
    twice = _string(name) + struct.pack("<IQIQ", 1, 32, 0, 0)
    long = refusal(_header([], [twice, twice]) + bytes(32 + 32 * 4))  # alignment, data
    said = f"Found duplicated tensor with name {name.decode()}"[:80]
    assert long.what == f"'{path}' is truncated or malformed (ValueError: {said})"


def test_block_numel_counts_the_weights_the_blocks_stand_for() -> None:
    torch = pytest.importorskip("torch")
    from diffusers.quantizers.gguf.utils import GGUFParameter

    numel = REGISTRY["gguf"].measure.numel["GGUFParameter"]
    weights = np.random.default_rng(0).standard_normal((4, 96)).astype(np.float32)
    for kind, (block, block_bytes) in [
        ("Q8_0", (32, 34)),
        ("Q4_0", (32, 18)),
        ("Q5_1", (32, 24)),
    ]:
        quant_type = getattr(gguf.GGMLQuantizationType, kind)
        codes = gguf.quants.quantize(np.resize(weights, (4, block * 2)), quant_type)
        parameter = GGUFParameter(torch.from_numpy(codes), quant_type=quant_type)
        assert codes.nbytes == 4 * 2 * block_bytes  # two blocks a row, as gguf stores them
        assert numel(parameter) == 4 * 2 * block
        assert type(numel(parameter)) is int
    # a block format over 2-byte elements: bf16 blocks hold one weight in 2 bytes
    bf16 = GGUFParameter(torch.zeros(4, 8, dtype=torch.bfloat16),
                         quant_type=gguf.GGMLQuantizationType.BF16)  # fmt: skip
    assert gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.BF16] == (1, 2)
    assert numel(bf16) == 32
    assert numel(torch.zeros(3, 5)) is None  # a float tensor carries no quant type


def test_load_from_file_reads_the_part_with_from_single_file(tmp_path: Path) -> None:
    """One real from_single_file load of tiny-flux's transformer written as GGUF (Q8_0 where a
    row splits into 32-weight blocks): the config from the pipeline folder, the load dtype, the
    compute dtype, every block-able Linear left quantized."""
    torch = pytest.importorskip("torch")
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import load_file

    from qconf.source.tiny import tiny_pipeline_path

    source = tiny_pipeline_path("tiny-flux")
    weights = load_file(source / "transformer" / "diffusion_pytorch_model.safetensors")
    path = tmp_path / "transformer.gguf"
    writer = gguf.GGUFWriter(str(path), arch="qconf-test")
    blocked = set()
    for name, tensor in weights.items():
        array = tensor.float().numpy()
        if tensor.ndim == 2 and tensor.shape[1] % 32 == 0:
            kind = gguf.GGMLQuantizationType.Q8_0
            data = gguf.quants.quantize(array, kind)
            writer.add_tensor(name, data, raw_shape=data.shape, raw_dtype=kind)
            blocked.add(name)
        else:
            writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    entry = _entry(str(path))
    model = entry.load_from_file(
        FluxTransformer2DModel, str(source), "transformer", torch.float16, "float16"
    )
    assert type(model) is FluxTransformer2DModel
    expected = json.loads((source / "transformer" / "config.json").read_text())
    assert model.config.num_layers == expected["num_layers"]
    assert model.config.attention_head_dim == expected["attention_head_dim"]
    state = model.state_dict()
    assert {n for n, t in state.items() if type(t).__name__ == "GGUFParameter"} == blocked
    assert {t.dtype for n, t in state.items() if n not in blocked} == {torch.float16}
    layers = [m for m in model.modules() if type(m).__name__ == "GGUFLinear"]
    assert len(layers) == len(blocked) and {m.compute_dtype for m in layers} == {torch.float16}


def test_check_file_refuses_a_malformed_file_at_where(tmp_path: Path) -> None:
    from qconf.errors import ModelSourceError

    path = tmp_path / "part.gguf"
    path.write_bytes(_header())  # a well-formed file with no tensors
    _entry(str(path)).check_file("quant.mapping.transformer.file")
    path.write_bytes(_header(version=1))
    with pytest.raises(ModelSourceError) as caught:
        _entry(str(path)).check_file("quant.mapping.transformer.file")
    assert caught.value.problems[0].where == "quant.mapping.transformer.file"
    assert caught.value.problems[0].what.endswith("GGUF version 1 (qconf reads 2 and 3)")
