"""runtime/loader/gguf_file.py reads what gguf-py's GGUFReader (the reference) reads: every field's
value and every tensor's name, type, shape and data, on the bundled model (Q4_1, a tokenizer of
~100k strings) and on a file written with every value type and plain and quantized tensors."""
from __future__ import annotations

import gguf
import numpy as np
import pytest

from sgl.runtime.loader.bundled import bundled_model_path
from sgl.runtime.loader.gguf_file import GGUFFile


def _assert_same_as_reference(path: str) -> None:
    ours, ref = GGUFFile(path), gguf.GGUFReader(path)
    assert list(ours.fields) == [k for k in ref.fields if not k.startswith("GGUF.")]
    for key, value in ours.fields.items():
        assert value == ref.fields[key].contents(), key
    assert len(ours.tensors) == len(ref.tensors)
    for a, b in zip(ours.tensors, ref.tensors):
        assert (a.name, a.tensor_type, a.shape) == (b.name, b.tensor_type, tuple(int(d) for d in b.shape))
        assert a.data.dtype == b.data.dtype and a.data.shape == b.data.shape
        assert np.array_equal(a.data, b.data), a.name


def test_bundled_model_reads_as_gguf_py_reads_it():
    _assert_same_as_reference(bundled_model_path())


def test_every_value_type_and_tensor_kind(tmp_path):
    path = str(tmp_path / "t.gguf")
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_uint8("k.u8", 7)
    writer.add_int8("k.i8", -7)
    writer.add_uint16("k.u16", 65000)
    writer.add_int16("k.i16", -300)
    writer.add_uint32("k.u32", 4_000_000_000)
    writer.add_int32("k.i32", -5)
    writer.add_float32("k.f32", 0.25)
    writer.add_uint64("k.u64", 2**40)
    writer.add_int64("k.i64", -(2**40))
    writer.add_float64("k.f64", 1e-300)
    writer.add_bool("k.bool", True)
    writer.add_string("k.str", "héllo\tworld")
    writer.add_array("k.ints", [1, 2, 3])
    writer.add_array("k.floats", [0.5, -1.5])
    writer.add_array("k.strs", ["a", "", "ünïcode"])
    writer.add_array("k.empty", [])
    rng = np.random.default_rng(0)
    writer.add_tensor("f32", rng.standard_normal((3, 5)).astype(np.float32))
    writer.add_tensor("f16", rng.standard_normal((2, 4, 8)).astype(np.float16))
    q8 = gguf.quants.quantize(rng.standard_normal((4, 64)).astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("q8", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    _assert_same_as_reference(path)
    assert GGUFFile(path).fields["k.strs"] == ["a", "", "ünïcode"]


def test_not_a_gguf_file_is_an_error(tmp_path):
    path = tmp_path / "x.gguf"
    path.write_bytes(b"GGML" + bytes(60))
    with pytest.raises(ValueError, match="not a GGUF file"):
        GGUFFile(str(path))


def test_truncated_header_is_an_error(tmp_path):
    path = tmp_path / "cut.gguf"
    with open(bundled_model_path(), "rb") as f:
        path.write_bytes(f.read(4096))  # inside the vocabulary's strings
    with pytest.raises(ValueError, match="truncated"):
        GGUFFile(str(path))
