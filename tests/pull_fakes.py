"""Fakes for `edgerun pull` of a GGUF source: a file that passes the header check, and a stand-in
for transformers' dequantization that copies a tiny checkpoint (tests/conftest.py: fake_dequantize)."""

from __future__ import annotations

from pathlib import Path


def fake_gguf(directory: Path, name: str = "fake") -> Path:
    """A minimal valid GGUF header (v3, no tensors, no metadata); `name` makes its hash differ."""
    path = directory / f"{name}.gguf"
    path.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00" * 64 + name.encode())
    return path
