"""Speculative decoding without a draft model: prompt-lookup (n-gram) drafting.

When the text being generated repeats a stretch of the prompt or of itself (extracting,
rewriting, quoting, code edits), the tokens that followed the last occurrence of the current
n-gram are a good guess of what comes next. The guess ("draft") is fed to the target model with
the token just chosen in ONE forward pass (Backend.verify), which yields the target's logits
after every draft position. The generation loop then picks each next token from those logits
exactly as it would have from one-token decode steps; while its pick equals the draft, the next
row is already computed. At the first difference the KV cache is rolled back (Backend.rollback)
to the tokens actually chosen, and decoding goes on from the target's own pick.

So every token is chosen from the target's logits for the real prefix, and with temperature > 0
each token is still drawn from the target's own distribution with the same seeded draws; drafts
only decide how much work one pass does. (This is not Leviathan-style speculative sampling,
which accepts more drafts when sampling; it is exact, and "auto" keeps to greedy decoding,
where drafts are accepted most.)

Identical tokens need one more thing: that a pass over several tokens computes the same logits
as one-token steps. Quantized CPU kernels do not (a several-row product rounds differently:
ONNX Runtime's int4 MatMulNBits from 2 rows on, llama.cpp's repacked Q4_K / Q4_0 from 4, and
even 3-token passes differed at some positions), and at a near-tie a greedy pick then flips
(measured: benchmarks/results/speculative-*.json). So "auto" speculates only on a backend that
declares exact_verify (none of the built-in CPU ones); "on" speculates anyway: up to 1.5x
faster on input-grounded text, the same model's greedy choice up to such near-ties.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgerun.core.errors import EdgerunError

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from edgerun.backends.base import Backend

MODES = ("auto", "on", "off")
PROMPT_LOOKUP = "prompt-lookup"


@dataclass(frozen=True)
class DraftPolicy:
    """How drafts are made: the n-gram sizes looked up (longest first) and how many tokens
    one draft holds at most (it grows while drafts are accepted, shrinks when rejected)."""

    max_ngram: int = 3
    min_ngram: int = 2
    max_draft: int = 7
    start_draft: int = 4
    # A pass whose draft was wholly rejected cost more than the one token it gave: drafting
    # then pauses for 2, 4, 8, ... tokens (at most this many) until a draft is accepted again,
    # so text that does not repeat its context is decoded almost as plainly as without drafts.
    max_pause: int = 32


def resolve_mode(
    speculative: str | bool | None, greedy: bool, backend: Backend | None
) -> str | None:
    """Whether to speculate: "auto" for None / "auto" with greedy decoding on a backend whose
    several-token pass is bit-identical to its one-token steps (Backend.exact_verify), "on"
    for "prompt-lookup" / "on" / True, None when off (False / "off", or a backend that cannot
    verify). Raises EdgerunError for anything else."""
    can = backend is not None and backend.can_verify
    if speculative is False or speculative == "off":
        return None
    if speculative is True or speculative in ("on", PROMPT_LOOKUP):
        return "on" if can else None
    if speculative is None or speculative == "auto":
        exact = backend is not None and backend.exact_verify
        return "auto" if greedy and can and exact else None
    raise EdgerunError(
        f"unknown speculative mode {speculative!r}",
        "use 'prompt-lookup' (or 'on'), 'auto', or False ('off')",
    )


class NgramDrafter:
    """Finds the latest earlier occurrence of the history's last n tokens and proposes the
    tokens that followed it. The index is kept up to date incrementally: O(1) per token."""

    def __init__(self, history: Sequence[int], policy: DraftPolicy) -> None:
        self.policy = policy
        self.tokens: list[int] = list(history)
        # n -> {n-gram: position right after its latest occurrence that ends before the tail}
        self._index: dict[int, dict[tuple[int, ...], int]] = {
            n: {} for n in range(policy.min_ngram, policy.max_ngram + 1)
        }
        self._indexed = 0  # n-grams ending at positions < this are in the index

    def append(self, token: int) -> None:
        self.tokens.append(token)

    def propose(self, limit: int) -> list[int]:
        """Up to `limit` draft tokens to follow the history ([] when no n-gram repeats)."""
        tokens, end = self.tokens, len(self.tokens)
        for stop in range(max(self._indexed, 1), end):  # n-grams that end before the tail
            for n, index in self._index.items():
                if stop >= n:
                    index[tuple(tokens[stop - n : stop])] = stop
        self._indexed = max(self._indexed, end)
        if limit <= 0:
            return []
        for n in range(self.policy.max_ngram, self.policy.min_ngram - 1, -1):
            if end < n:
                continue
            follow = self._index[n].get(tuple(tokens[end - n :]))
            if follow is not None:
                return tokens[follow : follow + limit]
        return []


@dataclass
class SpeculationStats:
    """Drafted and accepted token counts of one generation, and the passes that verified
    (edgerun.runtime.model.GenerationStats has the same fields and is passed in its place)."""

    draft_tokens: int = 0
    accepted_tokens: int = 0
    verify_passes: int = 0


class SpeculativeDecoder:
    """Stands in for Backend.decode(token) in the generation loop: returns the logits after
    `token`, from rows already verified when the token equals the draft, else from a new pass
    over the token and a fresh draft (one decode step when there is no draft)."""

    def __init__(
        self,
        backend: Backend,
        prompt: Sequence[int],
        total: int,
        stats: SpeculationStats | Any = None,
        policy: DraftPolicy | None = None,
    ) -> None:
        self.backend = backend
        self.policy = policy or DraftPolicy()
        self.drafter = NgramDrafter(prompt, self.policy)
        self.stats = stats if stats is not None else SpeculationStats()
        self._total = total  # positions the generation may fill (prompt + max_tokens)
        self._length = len(prompt)  # positions whose tokens were really chosen
        self._pending: list[tuple[int, np.ndarray]] = []  # (draft token, logits after it)
        self._draft_len = min(self.policy.start_draft, self.policy.max_draft)
        self._accepted = 0  # of the current pass's draft
        self._misses = 0  # passes in a row whose draft was wholly rejected
        self._pause = 0  # tokens to decode plainly before the next lookup

    def __call__(self, token: int) -> np.ndarray:
        self.drafter.append(token)
        self._length += 1
        if self._pending:
            expected, row = self._pending.pop(0)
            if expected == token:
                self.stats.accepted_tokens += 1
                self._accepted += 1
                if not self._pending:  # the whole draft was accepted: draft longer next time
                    self._draft_len = min(self._draft_len + 2, self.policy.max_draft)
                    self._misses = 0
                return row
            self._rejected()
        if self._pause > 0:
            self._pause -= 1
            return self.backend.decode(token)
        # Room left: the token after the last draft must still fit in the generation's budget.
        draft = self.drafter.propose(min(self._draft_len, self._total - self._length - 1))
        if not draft:
            return self.backend.decode(token)
        rows = self.backend.verify([token, *draft])
        self.stats.draft_tokens += len(draft)
        self.stats.verify_passes += 1
        self._pending = list(zip(draft, rows[1:], strict=True))
        self._accepted = 0
        return rows[0]

    def _rejected(self) -> None:
        """The token differs from the draft: drop the rest of it from the cache, adapt."""
        self._pending.clear()
        self.backend.rollback(self._length - 1)
        self._draft_len = max(self._draft_len - 1, 1)
        if self._accepted:
            self._misses = 0
        else:
            self._misses += 1
            self._pause = min(2**self._misses, self.policy.max_pause)

    def settle(self) -> None:
        """Roll the KV cache back to the tokens really chosen (drafts left unused dropped)."""
        if self._pending:
            self._pending.clear()
            self.backend.rollback(self._length)
