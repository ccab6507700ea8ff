"""The workload (model, threads, prompt lengths, new tokens, repetitions) and the rows that run it.

Every row is fed the same prompt token ids, so tokenization is outside every measurement and
every row does the same work. The ids come from ``prompt.txt`` tokenized with the model's own
``tokenizer.json``, cycled to the exact length, starting at an offset drawn from a fixed seed.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import ROOT

PROMPT_TEXT = ROOT / "prompt.txt"


@dataclass
class Workload:
    """W1 by default: SmolLM2-135M-Instruct, 2 threads, greedy, 128/512-token prompts, 128 new."""

    model: str = "smollm2-135m"
    threads: int = 2
    prompt_tokens: list[int] = field(default_factory=lambda: [128, 512])
    gen_tokens: int = 128
    reps: int = 5
    warmup: int = 1
    seed: int = 1234
    settle_s: float = 0.3  # pause between measurements, so the previous row's threads go idle

    @classmethod
    def quick(cls, model: str = "smollm2-135m", threads: int = 2) -> Workload:
        """The smoke-test workload: one repetition, a 32-token prompt, 16 new tokens."""
        return cls(model=model, threads=threads, prompt_tokens=[32], gen_tokens=16, reps=1)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RowSpec:
    """One row of the table: who runs what.

    kind: "peer" or "edgerun"; runner: module name under benchmarks.runners; fmt: what the
    artifact is ("q4_1 gguf", "onnx-int4", ...); artifact: the file or directory the runner loads
    (None until prepared); skip: why the row cannot run (None when it can).
    """

    name: str
    kind: str
    runner: str
    fmt: str
    artifact: str | None = None
    skip: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RowSpec:
        return cls(**data)


def prompt_ids(tokenizer_json: Path, length: int, seed: int, text: Path = PROMPT_TEXT) -> list[int]:
    """Exactly `length` token ids of `text` (cycled), starting at a seeded offset."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    base = tok.encode(text.read_text(encoding="utf-8"), add_special_tokens=False).ids
    if not base:
        raise ValueError(f"{text} tokenizes to nothing")
    start = random.Random(seed).randrange(len(base))
    return [base[(start + i) % len(base)] for i in range(length)]


def ids_digest(ids: list[int]) -> str:
    """A short fingerprint of a prompt, recorded so runs can be checked to use the same ids."""
    return hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]


def select(rows: list[RowSpec], only: str | None) -> list[RowSpec]:
    """Rows whose name or kind contains any comma-separated term of `only` (case-insensitive)."""
    if not only:
        return rows
    terms = [t.strip().lower() for t in only.split(",") if t.strip()]
    return [r for r in rows if any(t in r.name.lower() or t == r.kind for t in terms)]
