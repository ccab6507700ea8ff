"""A model of fixed, known speed for benchmarks/lab_overhead.py: it sleeps instead of computing,
so what the benchmark measures is lab mode's cost, not the model's.

An artifact is a directory with a valid edgerun manifest (its files listed with their real
sha256, so a lab device's arrival check passes) and a ``fixed_speed`` block of timings; the
loader for `edgerun bench` / `lab bench` is LOADER."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgerun.core.manifest import file_entries, read_manifest, write_manifest

LOADER = "benchmarks.fixed_speed:load"


def make_artifact(path: Path, payload: bytes, decode_s: float = 0.004) -> Path:
    """Write an artifact whose model.bin is `payload` and whose decode takes `decode_s`/token."""
    path.mkdir(parents=True)
    (path / "model.bin").write_bytes(payload)
    manifest = {
        "format": "fixed-speed",
        "family": "onnx",
        "precision": "int4",
        "model_file": "model.bin",
        "context_length": 1024,
        "files": file_entries(path),
        "fixed_speed": {"decode_s": decode_s, "prefill_s_per_token": 1e-4},
    }
    write_manifest(path, manifest)
    return path


class _Tokenizer:
    def encode(self, text: str) -> list[int]:
        return [ord(c) % 251 + 3 for c in text]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(i) for i in ids)


@dataclass
class _Chunk:
    token_id: int
    text: str


class FixedSpeedModel:
    """Generates "x" at the artifact's fixed speed."""

    def __init__(self, path: str) -> None:
        self.timing: dict[str, float] = read_manifest(Path(path))["fixed_speed"]
        self.tokenizer = _Tokenizer()
        self.context_length = 1024

    def generate(self, prompt_ids: list[int], max_tokens: int, **_: Any) -> Iterator[_Chunk]:
        time.sleep(self.timing["prefill_s_per_token"] * len(prompt_ids))
        for i in range(max_tokens):
            if i:
                time.sleep(self.timing["decode_s"])
            yield _Chunk(i, "x")


def load(path: str, profile: str | None = None, **_: Any) -> FixedSpeedModel:
    """The `edgerun.load`-shaped loader of fixed-speed artifacts."""
    return FixedSpeedModel(path)
