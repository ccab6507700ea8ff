"""What the ARM lane compares between the host and an emulated arm64 CPU: tokens through the
library API (edgerun.load + generate) and the teacher-forced next-token logits of the same
sequence through the ONNX Runtime backend (the runtime path: prefill, then decode per token).
The tokens are drawn at temperature 1 with a fixed seed (the tiny random model's greedy output
repeats one token), so they only agree when the logits do.

Lean imports only (edgerun, numpy, onnxruntime): this file runs on the host (tests/arm/host.py)
and inside the emulated arm64 venv (tests/arm/check.py), which has no torch and no tests package.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

PROMPT = "The capital of France is"
NEW_TOKENS = 12
SEED = 7
# One thread on both sides: the numbers compared are the kernels', not the thread split's.
THREADS = 1


def greedy_tokens(artifact: Path, profile: str | None) -> tuple[list[int], list[int], str]:
    """(prompt ids, NEW_TOKENS sampled ids, profile id used) through edgerun.load + generate;
    profile None auto-detects, as `edgerun run` does."""
    import edgerun

    with edgerun.load(artifact, profile, threads=THREADS) as model:
        chunks = model.generate(
            PROMPT, max_tokens=NEW_TOKENS, temperature=1.0, seed=SEED, ignore_eos=True
        )
        tokens = [c.token_id for c in chunks if c.token_id is not None]
        return model.tokenizer.encode(PROMPT), tokens, str(model.info.profile_id)


def forced_logits(artifact: Path, prompt: list[int], tokens: list[int]) -> tuple[Any, float]:
    """([len(tokens), vocab] logits after the prompt and after each token but the last, seconds
    spent decoding), from the ONNX Runtime backend on the CPU execution provider."""
    import numpy as np

    from edgerun.backends.base import Settings, resolve_artifact
    from edgerun.backends.ort import OrtBackend

    backend = OrtBackend(resolve_artifact(artifact), Settings(threads=THREADS))
    try:
        rows = [np.array(backend.prefill(prompt, len(prompt) + len(tokens)), np.float32)]
        start = time.perf_counter()
        for token in tokens[:-1]:
            rows.append(np.array(backend.decode(token), np.float32))
        return np.stack(rows), time.perf_counter() - start
    finally:
        backend.close()


def measure(artifact: Path, profile: str | None = None) -> dict[str, Any]:
    """Tokens, logits and decode time of one artifact, JSON-ready."""
    prompt, tokens, used = greedy_tokens(artifact, profile)
    logits, seconds = forced_logits(artifact, prompt, tokens)
    return {
        "profile": used,
        "prompt": prompt,
        "tokens": tokens,
        "logits": logits.tolist(),
        "decode_s": round(seconds, 4),
    }


def compare(device: dict[str, Any], host: dict[str, Any]) -> dict[str, Any]:
    """Tokens equal?, the largest absolute logit difference, and the largest relative to the
    host's logit range (what "within ~5%" means below)."""
    import numpy as np

    a, b = np.asarray(device["logits"]), np.asarray(host["logits"])
    if a.shape != b.shape:
        return {"tokens_equal": False, "max_abs": float("inf"), "max_rel": float("inf")}
    diff = float(np.abs(a - b).max())
    spread = float(b.max() - b.min()) or 1.0
    return {
        "tokens_equal": device["tokens"] == host["tokens"],
        "max_abs": diff,
        "max_rel": diff / spread,
    }
