"""A GGUF file's metadata and tensor table, read in one pass over the header.

gguf-py's GGUFReader builds a numpy memmap view for every part of every field; for a file whose
tokenizer holds ~100k strings (SmolLM2's vocabulary and merges) that is ~4 s of the ~7 s an engine
takes to start on a CPU, paid by every engine, server and test. Here the header is parsed with
`struct` straight from the mapped file (a few tens of ms); tensor data stays a memmap view into the
file, shaped as GGUFReader shapes it, so gguf.quants.dequantize takes it unchanged.
Layout (GGUF v2/v3, little-endian): magic, version, tensor and key counts, the key/value fields,
the tensor infos, then the tensor data at the file's alignment."""
from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import quant_shape_to_byte_shape

_MAGIC = b"GGUF"
_STRING, _ARRAY = 8, 9
# GGUF value type -> struct format (scalars)
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_NUMPY = {"B": np.uint8, "b": np.int8, "H": np.uint16, "h": np.int16, "I": np.uint32, "i": np.int32,
          "f": np.float32, "?": np.bool_, "Q": np.uint64, "q": np.int64, "d": np.float64}
# Unquantized tensor types: their data is a typed array; the others are bytes per row.
_PLAIN = {GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16,
          GGMLQuantizationType.F64: np.float64, GGMLQuantizationType.I8: np.int8,
          GGMLQuantizationType.I16: np.int16, GGMLQuantizationType.I32: np.int32,
          GGMLQuantizationType.I64: np.int64}


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    tensor_type: GGMLQuantizationType
    shape: tuple[int, ...]   # GGUF order: the fastest-varying dimension first
    data: np.ndarray         # a read-only view into the file


class _Cursor:
    def __init__(self, buf: mmap.mmap, path: str) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def scalar(self, fmt: str) -> Any:
        (value,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        n = self.scalar("Q")
        raw = self.buf[self.pos:self.pos + n]
        if len(raw) < n:
            raise ValueError(f"{self.path}: truncated GGUF header")
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, count = self.scalar("I"), self.scalar("Q")
            if etype in _SCALARS:  # numbers: one frombuffer
                fmt = _SCALARS[etype]
                arr = np.frombuffer(self.buf, dtype=np.dtype(_NUMPY[fmt]).newbyteorder("<"),
                                    count=count, offset=self.pos)
                self.pos += arr.nbytes
                return arr.tolist()
            return [self.value(etype) for _ in range(count)]
        if vtype not in _SCALARS:
            raise ValueError(f"{self.path}: unknown GGUF value type {vtype}")
        return self.scalar(_SCALARS[vtype])


class GGUFFile:
    """`fields`: key -> Python value (lists for arrays); `tensors`: in file order."""

    def __init__(self, path: str) -> None:
        self.path = path
        with open(path, "rb") as f:  # the header is parsed in place, from the file's pages
            header = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        if header[:4] != _MAGIC:
            raise ValueError(f"{path} is not a GGUF file (bad magic)")
        try:
            self._parse(_Cursor(header, path))
        except struct.error:
            raise ValueError(f"{path}: truncated GGUF header") from None

    def _parse(self, cur: _Cursor) -> None:
        path = self.path
        cur.pos = 4
        version = cur.scalar("I")
        if version not in (2, 3):
            raise ValueError(f"{path}: GGUF version {version} is not supported (2 and 3 are; "
                             "big-endian files are not)")
        num_tensors, num_fields = cur.scalar("Q"), cur.scalar("Q")
        self.fields: dict[str, Any] = {}
        for _ in range(num_fields):
            key = cur.string()
            self.fields[key] = cur.value(cur.scalar("I"))
        infos = []
        for _ in range(num_tensors):
            name = cur.string()
            dims = tuple(cur.scalar("Q") for _ in range(cur.scalar("I")))
            infos.append((name, GGMLQuantizationType(cur.scalar("I")), dims, cur.scalar("Q")))
        alignment = int(self.fields.get("general.alignment", 32))
        data_start = -(-cur.pos // alignment) * alignment
        memmap = np.memmap(path, dtype=np.uint8, mode="r")
        self.tensors = [GGUFTensor(name, qtype, dims, _tensor_view(memmap, data_start + offset, qtype, dims))
                        for name, qtype, dims, offset in infos]


def _tensor_view(memmap: np.ndarray, offset: int, qtype: GGMLQuantizationType,
                 dims: tuple[int, ...]) -> np.ndarray:
    shape = tuple(reversed(dims))  # numpy order: the slowest-varying dimension first
    num_elements = int(np.prod(dims))
    if qtype in _PLAIN:
        dtype = np.dtype(_PLAIN[qtype])
        return memmap[offset:offset + num_elements * dtype.itemsize].view(dtype).reshape(shape)
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    num_bytes = num_elements * type_size // block_size
    return memmap[offset:offset + num_bytes].reshape(quant_shape_to_byte_shape(shape, qtype))
