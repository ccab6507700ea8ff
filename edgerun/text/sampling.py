"""Next-token selection shared by every backend that hands back logits.

Greedy when temperature is 0; otherwise temperature, then top-k, then top-p (nucleus), then one
draw from a seeded ``numpy.random.Generator``. The same logits and seed always give the same token,
whichever backend produced the logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgerun.core.errors import EdgerunError

# Nucleus sampling first sorts only the most probable few hundred / thousand candidates; when they
# already hold top_p of the mass the result is exact, otherwise it falls back to a full sort.
_NUCLEUS_PREFILTER = (256, 4096)


@dataclass(frozen=True)
class SamplingParams:
    """How to pick the next token. `seed` None draws fresh OS entropy."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def check(self) -> None:
        """Raise EdgerunError for out-of-range values."""
        if not 0 <= self.temperature < float("inf"):
            raise EdgerunError(
                f"temperature must be >= 0 and finite, got {self.temperature}",
                "use 0 for greedy decoding",
            )
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise EdgerunError(
                f"seed must be between 0 and 2^63-1, got {self.seed}",
                "pass seed=0 or more",
                cli_hint="pass --seed 0 or more",
            )
        if self.top_k < 0:
            raise EdgerunError(f"top_k must be >= 0, got {self.top_k}", "use 0 to disable top-k")
        if not 0 < self.top_p <= 1:
            raise EdgerunError(
                f"top_p must be in (0, 1], got {self.top_p}", "use 1.0 to disable top-p"
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


class Sampler:
    """Callable that turns a 1-D logits vector into a token id."""

    def __init__(self, params: SamplingParams) -> None:
        params.check()
        self.params = params
        self.rng = np.random.default_rng(params.seed)

    def __call__(self, logits: np.ndarray) -> int:
        """Pick the next token id from `logits` (shape [vocab], any float dtype)."""
        if self.params.greedy:
            return int(logits.argmax())
        ids, probs = self.candidates(logits)
        # One uniform draw against the cumulative distribution: cheaper than rng.choice.
        cdf = np.cumsum(probs)
        pick = int(np.searchsorted(cdf, self.rng.random() * cdf[-1], side="right"))
        return int(ids[min(pick, len(ids) - 1)])

    def candidates(self, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(token ids, unnormalised probabilities) left after temperature, top-k and top-p,
        in a canonical order (by id, or by probability then id after top-p)."""
        p = self.params
        vocab = logits.shape[-1]
        if 0 < p.top_k < vocab:
            # Sorted by id so the draw does not depend on argpartition's internal order.
            ids = np.sort(np.argpartition(-logits, p.top_k - 1)[: p.top_k])
            scaled = logits[ids].astype(np.float64) / p.temperature
        else:
            ids = np.arange(vocab)
            scaled = logits.astype(np.float64) / p.temperature
        probs = np.exp(scaled - scaled.max())
        if p.top_p < 1.0:
            ids, probs = _nucleus(ids, probs, p.top_p)
        return ids, probs


def _nucleus(ids: np.ndarray, probs: np.ndarray, top_p: float) -> tuple[np.ndarray, np.ndarray]:
    """Keep the smallest most-probable set whose mass reaches `top_p`; `ids` come sorted, so a
    stable sort breaks probability ties by id."""
    target = top_p * probs.sum()
    for size in _NUCLEUS_PREFILTER:
        if size < len(ids):
            head = np.sort(np.argpartition(-probs, size - 1)[:size])
            if probs[head].sum() >= target:
                ids, probs = ids[head], probs[head]
                break
    order = np.argsort(-probs, kind="stable")
    ids, probs = ids[order], probs[order]
    cut = int(np.searchsorted(np.cumsum(probs), target, side="left")) + 1
    return ids[:cut], probs[:cut]
