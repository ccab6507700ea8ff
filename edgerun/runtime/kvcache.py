"""Prefix KV reuse: a cache of KV-cache snapshots keyed by the tokens they hold, bounded in bytes.

A chat turn re-sends the whole conversation; most of it (system prompt, history) was already
processed by the previous turn. After each generation the model stores a snapshot of its KV cache;
the next prompt that shares a prefix with a stored one restores it, keeps the shared positions and
feeds only the rest. The snapshot holds the prompt's positions only, cut to the backend's
prefix_align (edgerun.backends.base.Backend): the reply's were computed one token at a time, which
quantized kernels round otherwise than the batched prefill of a cold request, so reusing them
would change the next reply; re-fed with the new turn, they cost a short batch. Snapshots are copies owned by this cache
(backends expose them through Backend.snapshot / Backend.resume), so the bound counts every
byte they hold; the least recently used go first. Unbounded prompt caches are what pushed
llama.cpp-based servers to gigabytes of resident memory (issue 27): here the bound is a number
the caller chooses, by default what the profile's memory budget leaves after weights and the
model's own KV cache, at most DEFAULT_MAX_BYTES.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_MAX_BYTES = 256 * 2**20
# A shorter shared prefix is not worth a restore: feeding a few tokens costs about as much.
MIN_REUSE = 4


@dataclass(frozen=True)
class KvSnapshot:
    """A backend's KV cache for `tokens` (state is the backend's own copy), `nbytes` large."""

    tokens: tuple[int, ...]
    state: Any
    nbytes: int


@dataclass
class CacheStats:
    """Counts since the cache was made: lookups that reused a prefix, ones that did not,
    snapshots evicted for room, prompt tokens not recomputed."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    reused_tokens: int = 0


class PrefixCache:
    """LRU snapshots whose bytes never exceed `max_bytes` (a snapshot larger than that is not
    kept). Used by one generation at a time (edgerun.runtime.model.Model holds one)."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be 0 or more, got {max_bytes}")
        self.max_bytes = max_bytes
        self.stats = CacheStats()
        self._entries: OrderedDict[tuple[int, ...], KvSnapshot] = OrderedDict()
        self._bytes = 0

    @property
    def bytes(self) -> int:
        """Bytes held by the snapshots now."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)

    def match(self, ids: Sequence[int], align: int = 1) -> tuple[int, KvSnapshot] | None:
        """The snapshot sharing the longest prefix with `ids` and how many of its positions to
        keep (at most len(ids) - 1: the last prompt token is always fed, for its logits; a
        multiple of `align`, Backend.prefix_align), or None when no snapshot shares MIN_REUSE
        tokens. Counts a hit or a miss."""
        best: tuple[int, KvSnapshot] | None = None
        query = np.asarray(ids, np.int64)
        for snap in self._entries.values():
            keep = min(_common_prefix(query, snap.tokens), len(ids) - 1) // align * align
            if keep >= MIN_REUSE and (best is None or keep > best[0]):
                best = (keep, snap)
        if best is None:
            self.stats.misses += 1
            return None
        self._entries.move_to_end(best[1].tokens)
        self.stats.hits += 1
        self.stats.reused_tokens += best[0]
        return best

    def put(self, snap: KvSnapshot) -> bool:
        """Keep `snap` as the most recent entry, evicting the least recent ones to stay within
        max_bytes; a snapshot whose tokens extend a stored one replaces it (it serves every
        prefix the shorter one did). Returns False when `snap` alone exceeds the bound."""
        if snap.nbytes > self.max_bytes:
            return False
        for key in [k for k in self._entries if snap.tokens[: len(k)] == k]:
            self._drop(key)
        while self._entries and self._bytes + snap.nbytes > self.max_bytes:
            self._drop(next(iter(self._entries)))
            self.stats.evictions += 1
        self._entries[snap.tokens] = snap
        self._bytes += snap.nbytes
        return True

    def clear(self) -> None:
        """Drop every snapshot."""
        self._entries.clear()
        self._bytes = 0

    def _drop(self, key: tuple[int, ...]) -> None:
        self._bytes -= self._entries.pop(key).nbytes


def _common_prefix(query: np.ndarray, tokens: tuple[int, ...]) -> int:
    n = min(len(query), len(tokens))
    diff = np.flatnonzero(query[:n] != np.asarray(tokens[:n], np.int64))
    return int(diff[0]) if diff.size else n


def default_cache_bytes(room: int | None) -> int:
    """The default bound: DEFAULT_MAX_BYTES, or less when the memory budget leaves only `room`
    bytes after weights, the context's KV cache and the runtime (None: no budget known)."""
    if room is None:
        return DEFAULT_MAX_BYTES
    return max(0, min(DEFAULT_MAX_BYTES, room))


def make_cache(megabytes: float | None, room: int | None) -> PrefixCache | None:
    """The cache `load(prompt_cache_mb=...)` asks for: None for 0 MB (off), the default bound
    for None."""
    bound = default_cache_bytes(room) if megabytes is None else int(megabytes * 2**20)
    return PrefixCache(bound) if bound > 0 else None
