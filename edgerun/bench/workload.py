"""The benchmark workload: what every artifact is asked to do, and the synthetic prompts."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from edgerun.core.errors import EdgerunError

# Plain English words: encoded they give ordinary token ids (no special tokens), whatever the
# tokenizer. The prompt is random words from a fixed seed, cut to exactly N token ids.
_WORDS = [
    "the",
    "model",
    "runs",
    "on",
    "a",
    "small",
    "device",
    "and",
    "reads",
    "every",
    "token",
    "of",
    "the",
    "prompt",
    "before",
    "it",
    "writes",
    "an",
    "answer",
    "memory",
    "bandwidth",
    "decides",
    "how",
    "fast",
    "each",
    "new",
    "word",
    "comes",
    "out",
    "while",
    "the",
    "cores",
    "wait",
    "for",
    "weights",
    "to",
    "stream",
    "from",
    "main",
    "memory",
    "into",
    "cache",
    "quantized",
    "matrices",
    "make",
    "that",
    "stream",
    "shorter",
    "at",
    "some",
    "cost",
    "in",
    "accuracy",
    "which",
    "the",
    "validation",
    "measures",
    "against",
    "the",
    "reference",
    "energy",
    "per",
    "token",
    "is",
    "what",
    "a",
    "battery",
    "cares",
    "about",
    "latency",
    "is",
    "what",
    "a",
    "person",
    "waiting",
    "sees",
]


class TextEncoder(Protocol):
    def encode(self, text: str) -> list[int]: ...


@dataclass
class Workload:
    """Same for every artifact in a run. Raises EdgerunError on bad values (see `check`)."""

    prompt_tokens: list[int] = field(default_factory=lambda: [128, 512])
    gen_tokens: int = 128
    reps: int = 5
    warmup: int = 1
    threads: int | None = None
    profile: str | None = None
    ctx: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Reject values that cannot make a meaningful measurement."""
        if self.reps < 1:
            raise EdgerunError(f"--reps must be at least 1, got {self.reps}", "use --reps 5")
        if self.warmup < 0:
            raise EdgerunError(f"--warmup must be 0 or more, got {self.warmup}")
        if self.gen_tokens < 2:
            raise EdgerunError(
                f"--gen-tokens must be at least 2 (decode speed needs two tokens), got {self.gen_tokens}"
            )
        if not self.prompt_tokens or min(self.prompt_tokens) < 1:
            raise EdgerunError(
                f"--prompt-tokens must be positive, got {self.prompt_tokens}",
                "e.g. --prompt-tokens 128,512",
            )
        if self.threads is not None and self.threads < 1:
            raise EdgerunError(f"--threads must be at least 1, got {self.threads}")

    def check_context(self, context_length: int | None, artifact: str) -> None:
        """Raise if the longest prompt plus the generated tokens do not fit the context."""
        limit = self.ctx or context_length
        if limit is None:
            return
        if self.ctx and context_length and self.ctx > context_length:
            raise EdgerunError(
                f"--ctx {self.ctx} is larger than {artifact}'s context of {context_length} tokens",
                f"use --ctx {context_length} or less",
            )
        need = max(self.prompt_tokens) + self.gen_tokens
        if need > limit:
            raise EdgerunError(
                f"--prompt-tokens {max(self.prompt_tokens)} + --gen-tokens {self.gen_tokens} = {need} "
                f"tokens exceed the context of {limit} for {artifact}",
                f"use prompts of at most {limit - self.gen_tokens} tokens",
            )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def synthetic_prompt(tokenizer: TextEncoder, n_tokens: int, seed: int = 0) -> list[int]:
    """Exactly `n_tokens` token ids of seeded random English words (same ids on every run)."""
    rng = random.Random(f"edgerun-bench-{seed}")
    ids: list[int] = []
    while len(ids) < n_tokens:
        words = " ".join(rng.choice(_WORDS) for _ in range(max(64, n_tokens)))
        ids.extend(tokenizer.encode(" " + words if ids else words.capitalize()))
    return ids[:n_tokens]
