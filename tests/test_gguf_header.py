"""The bounded GGUF header reader: crafted files are refused quickly with one-line errors."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgerun.cli import cli
from edgerun.core.errors import EdgerunError
from edgerun.sources.gguf_header import parse_header, read_header
from tests.fuzz import FUZZ, hypothesis

st = hypothesis.strategies
U64 = 1 << 64


def s(text: str | bytes, length: int | None = None) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw) if length is None else length) + raw


def kv(key: str, vtype: int, value: bytes) -> bytes:
    return s(key) + struct.pack("<I", vtype) + value


def gguf(
    kvs: list[bytes],
    tensors: tuple[bytes, ...] = (),
    n_kv: int | None = None,
    n_t: int | None = None,
    version: int = 3,
) -> bytes:
    """A GGUF header; n_kv / n_t override the counts it claims."""
    n_t = len(tensors) if n_t is None else n_t
    n_kv = len(kvs) if n_kv is None else n_kv
    return b"GGUF" + struct.pack("<IQQ", version, n_t, n_kv) + b"".join(kvs) + b"".join(tensors)


def tensor(name: str, dims: tuple[int, ...], ttype: int = 0, offset: int = 0) -> bytes:
    return (
        s(name)
        + struct.pack("<I", len(dims))
        + b"".join(struct.pack("<Q", d) for d in dims)
        + struct.pack("<IQ", ttype, offset)
    )


def pad(data: bytes, payload: int) -> bytes:
    """Align to 32 and append `payload` data bytes."""
    return data + b"\0" * (-len(data) % 32) + b"\0" * payload


GOOD = pad(
    gguf(
        [
            kv("general.architecture", 8, s("llama")),
            kv("tokenizer.ggml.eos_token_id", 4, struct.pack("<I", 2)),
            kv("tokenizer.ggml.add_bos_token", 7, b"\x00"),
            kv("tokenizer.ggml.tokens", 9, struct.pack("<IQ", 8, 2) + s("a") + s("bc")),
            kv("tokenizer.ggml.scores", 9, struct.pack("<IQ", 6, 2) + b"\0" * 8),
        ],
        (tensor("w", (4, 2), 0, 0),),
    ),
    32,
)
# 49 bytes: one key whose value is an array claiming 2^60 uint8 elements.
HUGE_ARRAY = gguf([kv("a", 9, struct.pack("<IQ", 0, 1 << 60))])

BAD = {
    "empty": b"",
    "magic only": b"GGUF",
    "truncated after the magic": b"GGUF\x03\x00\x00\x00",
    "version 1": gguf([], version=1),
    "version 99": gguf([], version=99),
    "tensor count 2^63": gguf([], n_t=1 << 63),
    "metadata count 2^64-1": gguf([], n_kv=U64 - 1),
    "metadata count one too many": gguf([kv("a", 4, b"\0" * 4)], n_kv=2),
    "key length 2^62": gguf([s("a", 1 << 62) + b"\0" * 64], n_kv=1),
    "string value length 2^62": gguf([kv("a", 8, s("x", 1 << 62))]),
    "array of 2^60 uint8": HUGE_ARRAY,
    "array of 2^40 strings": gguf([kv("a", 9, struct.pack("<IQ", 8, 1 << 40))]),
    "array of 2^40 arrays": gguf([kv("a", 9, struct.pack("<IQ", 9, 1 << 40))]),
    "string in array too long": gguf([kv("a", 9, struct.pack("<IQ", 8, 1) + s("x", 99))]),
    "arrays nested 5 deep": gguf([kv("a", 9, struct.pack("<IQ", 9, 1) * 5 + b"\0" * 64)]),
    "unknown value type": gguf([kv("a", 13, b"\0" * 8)]),
    "unknown array element type": gguf([kv("a", 9, struct.pack("<IQ", 77, 1))]),
    "truncated scalar": gguf([kv("a", 12, b"\0" * 3)]),
    "duplicate key": gguf([kv("a", 0, b"\0"), kv("a", 0, b"\0")]),
    "alignment 0": gguf([kv("general.alignment", 4, struct.pack("<I", 0))]),
    "alignment 3": gguf([kv("general.alignment", 4, struct.pack("<I", 3))]),
    "alignment a string": gguf([kv("general.alignment", 8, s("32"))]),
    "tensor with 5 dims": pad(gguf([], (tensor("w", (1, 1, 1, 1, 1)),)), 32),
    "tensor dims 2^63 each": pad(gguf([], (tensor("w", (1 << 63, 1 << 63)),)), 32),
    "tensor type 999": pad(gguf([], (tensor("w", (1,), 999),)), 32),
    "tensor beyond the file": pad(gguf([], (tensor("w", (64, 64), 0, 0),)), 32),
    "tensor offset 2^64-32": pad(gguf([], (tensor("w", (1,), 0, U64 - 32),)), 32),
    "tensor offset unaligned": pad(gguf([], (tensor("w", (1,), 0, 3),)), 32),
    "duplicate tensor name": pad(
        gguf(
            [],
            (
                tensor("w", (1,)),
                tensor("w", (1,)),
            ),
        ),
        32,
    ),
    "tensor name length 2^62": gguf([], (s("w", 1 << 62) + b"\0" * 64,)),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_crafted_header_is_one_edgerun_error(name: str) -> None:
    start = time.perf_counter()
    with pytest.raises(EdgerunError) as info:
        parse_header(BAD[name], "x.gguf")
    assert time.perf_counter() - start < 0.5
    assert str(info.value).startswith(("x.gguf is not a GGUF file", "x.gguf is a damaged GGUF"))
    assert "\n" not in str(info.value)


def test_good_header_metadata_and_tensors() -> None:
    header = parse_header(GOOD)
    assert header.version == 3
    assert header.metadata == {
        "general.architecture": "llama",
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.add_bos_token": False,
        "tokenizer.ggml.tokens": None,  # arrays are walked, not kept
        "tokenizer.ggml.scores": None,
    }
    assert header.tensors == {"w": ((4, 2), 0, 0)}


def test_big_endian_header_is_read() -> None:
    data = b"GGUF" + struct.pack(">IQQ", 3, 0, 1) + struct.pack(">Q", 1) + b"k"
    data += struct.pack(">II", 4, 7)
    assert parse_header(data).metadata == {"k": 7}


def test_file_written_by_gguf_py_is_read(tmp_path: Path) -> None:
    gguf_py = pytest.importorskip("gguf")
    import numpy as np

    path = tmp_path / "ok.gguf"
    writer = gguf_py.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_eos_token_id(5)
    writer.add_token_list(["a", "b", "c"])
    writer.add_tensor("w", np.ones((3, 8), dtype=np.float32))
    writer.add_tensor("q", np.ones((2, 64), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    header = read_header(path)
    assert header.metadata["general.architecture"] == "llama"
    assert header.metadata["tokenizer.ggml.eos_token_id"] == 5
    assert set(header.tensors) == {"w", "q"}


def test_pull_refuses_crafted_gguf_and_leaves_nothing(tmp_path: Path, edgerun_home: Path) -> None:
    bad = tmp_path / "huge.gguf"
    bad.write_bytes(HUGE_ARRAY)
    result = CliRunner().invoke(cli, ["pull", str(bad)])
    assert result.exit_code == 2
    assert result.output == (
        f"error: {bad} is a damaged GGUF file: 'a' array claims {1 << 60} entries, more than the 0"
        " bytes left hold (check the download, or re-convert the model with llama.cpp)\n"
    )
    assert list((edgerun_home / "models").glob("*")) == []


def test_huge_claimed_array_is_refused_under_low_rlimit_as(
    tmp_path: Path, edgerun_home: Path
) -> None:
    """The 49-byte file is refused in well under a second with address space capped at 1 GiB."""
    pytest.importorskip("resource")
    bad = tmp_path / "huge.gguf"
    bad.write_bytes(HUGE_ARRAY)
    assert len(HUGE_ARRAY) == 49
    script = textwrap.dedent(
        f"""
        import resource, sys, time
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        from edgerun.cli import main
        start = time.perf_counter()
        try:
            main(["pull", {str(bad)!r}])
        except SystemExit as exc:
            print(f"took {{time.perf_counter() - start:.3f}}", file=sys.stderr)
            raise
        """
    )
    env = {**os.environ, "EDGERUN_HOME": str(edgerun_home)}
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60
    )
    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, proc.stderr
    assert lines[0].startswith(f"error: {bad} is a damaged GGUF file: 'a' array claims")
    assert float(lines[-1].split()[1]) < 0.5
    assert list((edgerun_home / "models").glob("*")) == []


@FUZZ
@hypothesis.given(st.binary(max_size=256))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    _parse_or_error(b"GGUF" + data)


@FUZZ
@hypothesis.given(
    st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 255)), max_size=8),
    st.integers(0, len(GOOD)),
)
def test_fuzz_mutated_valid_header(flips: list[tuple[int, int]], cut: int) -> None:
    data = bytearray(GOOD)
    for pos, value in flips:
        data[pos] = value
    _parse_or_error(bytes(data[:cut]) if cut else bytes(data))


def _parse_or_error(data: bytes) -> None:
    start = time.perf_counter()
    try:
        parse_header(data)
    except EdgerunError as exc:
        assert "\n" not in str(exc)
    assert time.perf_counter() - start < 1.0
