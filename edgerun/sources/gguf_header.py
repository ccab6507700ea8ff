"""A bounded reader of GGUF headers: metadata key/values and tensor infos.

GGUF files come from the internet, so every count and length in the header is checked against
the bytes that are left in the file *before* anything is read or allocated: a 49-byte file that
claims a 2^60-element array is refused at once instead of exhausting memory. edgerun runs this on
every GGUF before handing it to transformers or gguf-py.

What is checked: magic, version (2 or 3, either byte order), every string length and array count
against the remaining bytes (times the smallest size one element can take), array nesting depth,
value and tensor types, tensor dimensions (at most 4, product without overflow), duplicate keys and
tensor names, and that each tensor's data (at least 1 bit per weight) lies inside the file. Not
checked: the exact byte size of quantized tensors, or that the weights are sensible numbers.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgerun.core.errors import EdgerunError

MAGIC = b"GGUF"
VERSIONS = (2, 3)
MAX_DIMS = 4  # GGML_MAX_DIMS
MAX_ARRAY_DEPTH = 4  # gguf-py and llama.cpp never write nested arrays; allow a little
MAX_TENSOR_TYPE = 63  # ggml type ids are small integers (39 in 2025); anything far above is junk
DEFAULT_ALIGNMENT = 32

# GGUF value type id -> struct format (little-endian) of the scalar; 8 string, 9 array.
SCALARS = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
STRING, ARRAY = 8, 9
# Smallest number of bytes one element of each type takes: what a claimed count is checked with.
MIN_SIZE = {**{t: struct.calcsize(f) for t, f in SCALARS.items()}, STRING: 8, ARRAY: 12}
TENSOR_INFO_MIN = 8 + 4 + 4 + 8  # empty name, n_dims, type, offset
KV_MIN = 8 + 4 + 1  # empty key, value type, smallest value
_NOT_GGUF = "bad magic or truncated"


@dataclass
class GGUFHeader:
    """What a GGUF header holds: version, scalar metadata (arrays are skipped) and tensor infos."""

    version: int
    metadata: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, tuple[tuple[int, ...], int, int]] = field(default_factory=dict)
    data_offset: int = 0


class _Bad(Exception):
    """The header is damaged; the message says where."""


class _Cursor:
    """Reads from a buffer, checking every length against what is left before reading."""

    def __init__(self, buf: bytes | mmap.mmap, endian: str) -> None:
        self.buf, self.pos, self.end, self.endian = buf, 0, len(buf), endian

    def left(self) -> int:
        return self.end - self.pos

    def need(self, n: int, what: str) -> None:
        if n < 0 or n > self.left():
            raise _Bad(f"{what} needs {n} bytes but only {self.left()} are left (truncated?)")

    def scalar(self, fmt: str, what: str) -> Any:
        size = struct.calcsize(fmt)
        self.need(size, what)
        (value,) = struct.unpack_from(self.endian + fmt, self.buf, self.pos)
        self.pos += size
        return value

    def count(self, min_size: int, what: str, unit: str = "entries") -> int:
        """A uint64 count whose elements (at least `min_size` bytes each) must fit in the file."""
        n: int = self.scalar("Q", what)
        if n * min_size > self.left():
            raise _Bad(f"{what} claims {n} {unit}, more than the {self.left()} bytes left hold")
        return n

    def string(self, what: str) -> str:
        n = self.count(1, what, "bytes")
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def skip_strings(self, n: int, what: str) -> None:
        for _ in range(n):
            length: int = self.scalar("Q", what)
            self.need(length, what)
            self.pos += length


def _value(cur: _Cursor, vtype: int, key: str, depth: int = 0) -> Any:
    """One metadata value; arrays are walked and skipped (None), scalars and strings returned."""
    if vtype in SCALARS:
        return cur.scalar(SCALARS[vtype], key)
    if vtype == STRING:
        return cur.string(key)
    if vtype != ARRAY:
        raise _Bad(f"{key}: unknown value type {vtype}")
    if depth >= MAX_ARRAY_DEPTH:
        raise _Bad(f"{key}: arrays nested deeper than {MAX_ARRAY_DEPTH}")
    etype: int = cur.scalar("I", f"{key} array type")
    if etype not in MIN_SIZE:
        raise _Bad(f"{key}: unknown array element type {etype}")
    n = cur.count(MIN_SIZE[etype], f"{key!r} array")
    if etype in SCALARS:
        cur.pos += n * MIN_SIZE[etype]  # fits: count() checked it
    elif etype == STRING:
        cur.skip_strings(n, f"{key} array string")
    else:
        for _ in range(n):
            _value(cur, ARRAY, key, depth + 1)
    return None


def _tensor_info(cur: _Cursor, i: int) -> tuple[str, tuple[int, ...], int, int]:
    name = cur.string(f"tensor {i} name")
    n_dims: int = cur.scalar("I", f"tensor {name!r} dims")
    if n_dims > MAX_DIMS:
        raise _Bad(f"tensor {name!r} has {n_dims} dimensions (at most {MAX_DIMS})")
    dims = tuple(cur.scalar("Q", f"tensor {name!r} shape") for _ in range(n_dims))
    ttype: int = cur.scalar("I", f"tensor {name!r} type")
    if ttype > MAX_TENSOR_TYPE:
        raise _Bad(f"tensor {name!r} has unknown type {ttype}")
    offset: int = cur.scalar("Q", f"tensor {name!r} offset")
    return name, dims, ttype, offset


def _parse(buf: bytes | mmap.mmap) -> GGUFHeader:
    if len(buf) < 24 or bytes(buf[:4]) != MAGIC:
        raise _Bad(_NOT_GGUF)
    endian = "<"
    version = struct.unpack_from("<I", buf, 4)[0]
    if version not in VERSIONS and struct.unpack_from(">I", buf, 4)[0] in VERSIONS:
        endian = ">"
        version = struct.unpack_from(">I", buf, 4)[0]
    if version not in VERSIONS:
        raise _Bad(f"unsupported GGUF version {version} (edgerun reads 2 and 3)")
    cur = _Cursor(buf, endian)
    cur.pos = 8
    n_tensors = cur.count(TENSOR_INFO_MIN, "tensor count")
    n_kv = cur.count(KV_MIN, "metadata count")
    header = GGUFHeader(version)
    for _ in range(n_kv):
        key = cur.string("metadata key")
        if key in header.metadata:
            raise _Bad(f"duplicate metadata key {key!r}")
        header.metadata[key] = _value(cur, cur.scalar("I", f"{key} type"), key)
    for i in range(n_tensors):
        name, dims, ttype, offset = _tensor_info(cur, i)
        if name in header.tensors:
            raise _Bad(f"duplicate tensor name {name!r}")
        header.tensors[name] = (dims, ttype, offset)
    _check_data(header, cur)
    return header


def _check_data(header: GGUFHeader, cur: _Cursor) -> None:
    """Alignment, offsets, and that every tensor's data (>= 1 bit per weight) fits the file."""
    align = header.metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    sane = isinstance(align, int) and not isinstance(align, bool) and 1 <= align <= 1 << 20
    if not sane or align & (align - 1):
        raise _Bad(f"general.alignment {align!r} is not a sane alignment")
    header.data_offset = -(-cur.pos // align) * align
    data_bytes = max(cur.end - header.data_offset, 0)
    for name, (dims, _ttype, offset) in header.tensors.items():
        elements = 1
        for d in dims:
            elements *= d
        if offset % align:
            raise _Bad(f"tensor {name!r} offset {offset} is not a multiple of {align}")
        if offset + -(-elements // 8) > data_bytes:
            raise _Bad(
                f"tensor {name!r} ({'x'.join(map(str, dims)) or 'scalar'} at offset {offset})"
                f" does not fit in the {data_bytes} data bytes of the file"
            )


def parse_header(buf: bytes | mmap.mmap, source: str = "GGUF data") -> GGUFHeader:
    """Parse and bound-check a GGUF header held in `buf` (bytes, or an mmap of the whole file).

    `source` names the file in errors. Raises EdgerunError naming the first problem."""
    try:
        return _parse(buf)
    except _Bad as exc:
        if str(exc) == _NOT_GGUF:
            raise EdgerunError(
                f"{source} is not a GGUF file (bad magic or truncated)",
                "check the download; a GGUF file starts with the bytes 'GGUF'",
            ) from None
        raise EdgerunError(
            f"{source} is a damaged GGUF file: {exc}",
            "check the download, or re-convert the model with llama.cpp",
        ) from None


def read_header(path: Path) -> GGUFHeader:
    """Read and check the header of the GGUF file at `path` without trusting any length in it.

    Memory use is bounded by the mmap of the file (pages are read on demand); time is linear in
    the header size. Raises EdgerunError naming the first problem."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            if fh.seek(0, 2) < 24:
                return parse_header(b"", str(path))  # raises: too short to be GGUF
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                return parse_header(buf, str(path))
    except OSError as exc:
        raise EdgerunError(f"cannot read {path}: {exc.strerror or exc}", "check the path") from exc


# llama.cpp architectures that keep no KV cache (llama_model::create_memory makes none, llama.cpp
# as vendored by llama-cpp-python 0.3.36): encoders and diffusion LMs (dream, llada, llada-moe,
# rnd1), which do not generate token by token; llama-cpp-python fails on them with an assertion.
NO_KV_CACHE = frozenset(
    {
        "bert", "modern-bert", "nomic-bert", "nomic-bert-moe", "neo-bert", "jina-bert-v2",
        "jina-bert-v3", "eurobert", "wavtokenizer-dec", "gemma-embedding",
        "dream", "llada", "llada-moe", "rnd1",
    }
)  # fmt: skip


def check_causal(path: Path) -> None:
    """EdgerunError when the GGUF at `path` holds a model that cannot generate text token by
    token: an architecture llama.cpp keeps no KV cache for (NO_KV_CACHE), or one whose
    `<arch>.attention.causal` is false. Read from the header before llama.cpp loads anything; a
    header that does not parse is left to llama.cpp's own load to refuse."""
    try:
        metadata = read_header(path).metadata
    except EdgerunError:
        return
    arch = metadata.get("general.architecture")
    causal = metadata.get(f"{arch}.attention.causal")
    if arch in NO_KV_CACHE or (causal is not None and not causal):
        why = "no KV cache in llama.cpp" if arch in NO_KV_CACHE else "its attention is not causal"
        raise EdgerunError(
            f"{path} holds a {str(arch)[:40]!r} model, which does not generate text token by"
            f" token ({why}: a diffusion LM or an encoder)",
            "edgerun runs causal language models; use a GGUF of one",
        )
