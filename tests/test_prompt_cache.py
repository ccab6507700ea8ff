"""Prefix KV reuse (edgerun.runtime.kvcache) through the library on both backends: a prompt that
extends an earlier generation restores its KV cache and decodes exactly what a cold run does,
also on quantized kernels (only prefill positions are kept, cut to the backend's prefix_align);
the byte bound holds and evicts; logprobs come back in the chunks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgerun
from edgerun.core.errors import EdgerunError
from edgerun.runtime.kvcache import KvSnapshot, PrefixCache
from tests.runtime_helpers import PROFILE, export_artifact

FORMATS = {"onnxruntime": "onnx-fp32", "llamacpp": "gguf-f32"}
QUANTIZED = {"onnxruntime": "onnx-int4", "llamacpp": "gguf-q4_k_m"}


def _export(formats: dict[str, str], request: pytest.FixtureRequest, tiny: Path, tmp: Any) -> Path:
    if request.param == "llamacpp":
        pytest.importorskip("llama_cpp")
    out = tmp.mktemp(f"cache-{formats[request.param]}")
    return export_artifact(tiny, formats[request.param], out)


@pytest.fixture(scope="module", params=sorted(FORMATS))
def artifact(request: pytest.FixtureRequest, tiny_llama: Path, tmp_path_factory: Any) -> Path:
    return _export(FORMATS, request, tiny_llama, tmp_path_factory)


@pytest.fixture(scope="module", params=sorted(QUANTIZED))
def quantized(request: pytest.FixtureRequest, tiny_wide_llama: Path, tmp_path_factory: Any) -> Path:
    return _export(QUANTIZED, request, tiny_wide_llama, tmp_path_factory)


def _cut(artifact: Path, n: int) -> int:
    """n reused positions as the backend's prefix_align cuts them (llama.cpp: its row block,
    the default n_batch being a multiple of it; ORT: 1)."""
    from edgerun.backends.llamacpp import row_block

    block = row_block()
    return n // block * block if "gguf" in artifact.name else n


def _prompt(seed: int, n: int) -> list[int]:
    return [int(t) for t in np.random.default_rng(seed).integers(3, 200, n)]


def _greedy(model: edgerun.Model, ids: list[int], n: int = 12, **kw: Any) -> list[int]:
    chunks = model.generate(ids, max_tokens=n, ignore_eos=True, **kw)
    return [c.token_id for c in chunks if c.token_id is not None]


def test_follow_up_reuses_the_prefix_and_matches_a_cold_run(artifact: Path) -> None:
    first = _prompt(1, 70)
    with edgerun.load(artifact, PROFILE, prompt_cache_mb=64) as warm:
        reply = _greedy(warm, first)
        assert warm.last_stats.cached_tokens == 0
        follow = [*first, *reply, *_prompt(2, 9)]  # the next turn: history + a new message
        warm_out = _greedy(warm, follow)
        stats = warm.last_stats
        cache = warm.prompt_cache
        assert cache is not None and cache.stats.hits == 1 and cache.stats.misses == 1
        # the prompt came back from the cache; the reply, decoded a token at a time, is
        # computed again in a batch with the new message, as a cold run computes it
        assert stats.cached_tokens == _cut(artifact, len(first))
        # a branch off the middle of the history keeps only the shared part
        branch = [*first[:50], *_prompt(3, 5)]
        warm_branch = _greedy(warm, branch)
        assert warm.last_stats.cached_tokens == _cut(artifact, 50)
    with edgerun.load(artifact, PROFILE, prompt_cache_mb=0) as cold:
        assert cold.prompt_cache is None
        assert _greedy(cold, follow) == warm_out
        assert _greedy(cold, branch) == warm_branch
        assert cold.last_stats.cached_tokens == 0


def _scored(model: edgerun.Model, ids: list[int]) -> list[tuple[int, float]]:
    chunks = model.generate(ids, max_tokens=12, ignore_eos=True, logprobs=0)
    return [(c.token_id, c.logprobs.logprob) for c in chunks if c.token_id and c.logprobs]


def test_a_follow_up_scores_as_a_cold_run_on_quantized_kernels(quantized: Path) -> None:
    """int4 / q4_K kernels round a one-token decode step otherwise than a batched prefill: a
    warm turn must still give a cold turn's tokens and log-probabilities, bit for bit."""
    first = _prompt(4, 70)
    with edgerun.load(quantized, PROFILE, prompt_cache_mb=64) as warm:
        reply = _greedy(warm, first)
        follow = [*first, *reply, *_prompt(5, 9)]
        warm_out = _scored(warm, follow)
        cached = warm.last_stats.cached_tokens
    with edgerun.load(quantized, PROFILE, prompt_cache_mb=0) as cold:
        assert _scored(cold, follow) == warm_out
    assert cached == _cut(quantized, len(first))


def test_llama_cpp_restores_only_when_its_context_holds_another_conversation(
    artifact: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if "gguf" not in artifact.name:
        pytest.skip("llama.cpp's state restore")
    import llama_cpp

    restores: list[int] = []
    real = llama_cpp.llama_state_seq_set_data

    def counted(*args: Any) -> Any:
        restores.append(1)
        return real(*args)

    monkeypatch.setattr(llama_cpp, "llama_state_seq_set_data", counted)
    first, other = _prompt(20, 70), _prompt(21, 70)
    with edgerun.load(artifact, PROFILE, prompt_cache_mb=64) as warm:
        reply = _greedy(warm, first)
        follow = [*first, *reply, *_prompt(22, 6)]
        out = [_greedy(warm, follow)]  # the conversation goes on: its KV cache is in place
        assert warm.last_stats.cached_tokens == _cut(artifact, 70) and not restores
        _greedy(warm, other)  # another conversation takes the context
        out.append(_greedy(warm, follow))  # so this turn comes back from the snapshot
        assert (
            warm.last_stats.cached_tokens == _cut(artifact, len(follow) - 1) and len(restores) == 1
        )
    with edgerun.load(artifact, PROFILE, prompt_cache_mb=0) as cold:
        assert out == [_greedy(cold, follow)] * 2


def test_the_byte_bound_evicts_the_least_recent(artifact: Path) -> None:
    with edgerun.load(artifact, PROFILE, prompt_cache_mb=64) as model:
        _greedy(model, _prompt(10, 70), n=2)
        cache = model.prompt_cache
        assert cache is not None and len(cache) == 1
        one = cache.bytes
        assert one > 0
        cache.max_bytes = int(one * 2.5)  # room for two snapshots of this size
        for seed in (11, 12, 13):
            _greedy(model, _prompt(seed, 70), n=2)
            assert cache.bytes <= cache.max_bytes
        assert len(cache) == 2 and cache.stats.evictions == 2
        _greedy(model, _prompt(10, 70), n=2)  # the first prompt was evicted: a miss
        assert model.last_stats.cached_tokens == 0
        _greedy(model, _prompt(13, 70), n=2)  # the newest is still there
        assert model.last_stats.cached_tokens == _cut(artifact, 69)  # the last token is fed


def test_logprobs_are_the_model_distribution(artifact: Path) -> None:
    with edgerun.load(artifact, PROFILE, prompt_cache_mb=0) as model:
        chunks = [c for c in model.generate(_prompt(5, 12), max_tokens=4, logprobs=3) if c.token_id]
        for chunk in chunks:
            lp = chunk.logprobs
            assert lp is not None and len(lp.top) == 3
            assert lp.top[0][0] == chunk.token_id  # greedy picks the most likely
            assert lp.logprob == pytest.approx(lp.top[0][1])
            assert [v for _, v in lp.top] == sorted((v for _, v in lp.top), reverse=True)
            assert lp.logprob <= 0
        plain = list(model.generate(_prompt(5, 12), max_tokens=4))
        assert all(c.logprobs is None for c in plain)
        with pytest.raises(EdgerunError, match="logprobs must be between 0 and 20"):
            model.generate([5, 6], logprobs=21)
    with pytest.raises(EdgerunError, match="prompt_cache_mb must be 0 or more"):
        edgerun.load(artifact, PROFILE, prompt_cache_mb=-1)


def test_cache_keeps_longest_prefix_and_replaces_what_it_extends() -> None:
    cache = PrefixCache(100)
    cache.put(KvSnapshot((1, 2, 3, 4, 5), "a", 40))
    cache.put(KvSnapshot((1, 2, 3, 4, 5, 6, 7), "b", 40))  # extends "a": replaces it
    assert len(cache) == 1 and cache.bytes == 40
    cache.put(KvSnapshot((9, 9, 9, 9, 9), "c", 40))
    hit = cache.match([1, 2, 3, 4, 5, 6, 8, 8])
    assert hit is not None and hit[0] == 6 and hit[1].state == "b"
    # the whole prompt is cached: the last token is still fed, for its logits
    hit = cache.match([9, 9, 9, 9, 9])
    assert hit is not None and hit[0] == 4
    assert cache.match([1, 2, 7, 7, 7, 7]) is None  # 2 shared tokens: below MIN_REUSE
    assert not cache.put(KvSnapshot((5,), "too big", 101))
    cache.put(KvSnapshot((4, 4, 4, 4), "d", 40))  # evicts "b", the least recently used
    assert {s.state for s in cache._entries.values()} == {"c", "d"}
    assert cache.stats.evictions == 1 and cache.bytes == 80


def test_a_match_is_cut_to_the_backends_alignment() -> None:
    cache = PrefixCache(100)
    cache.put(KvSnapshot(tuple(range(10, 30)), "a", 10))
    hit = cache.match([*range(10, 27), 1, 2], align=8)  # 17 shared
    assert hit is not None and hit[0] == 16
    assert cache.match([*range(10, 17), 5], align=8) is None  # 7 shared: none is kept
    assert cache.stats.hits == 1 and cache.stats.misses == 1


def test_run_without_a_prompt_is_a_chat_that_reuses_the_conversation(
    artifact: Path, tiny_llama: Path
) -> None:
    from click.testing import CliRunner

    from edgerun.cli import cli

    system = "Be brief and plain. " * 5  # more than llama.cpp's prefix_align (at most 16)
    args = ["run", str(artifact), "--profile", PROFILE, "-n", "6", "--system", system]
    result = CliRunner().invoke(
        cli, args, input="hello\n\nmore please\n/reset\nagain\n/exit\nlost\n"
    )
    assert result.exit_code == 0, result.output
    stats = [line for line in result.stderr.splitlines() if line.startswith("[")]
    assert len(stats) == 3  # three turns; the blank line is skipped, "lost" comes after /exit
    assert "cached" not in stats[0]
    cached = int(stats[1].split("(")[1].split()[0])  # "prompt N tok (M cached)"
    assert cached >= 32
    assert "(conversation forgotten)" in result.stderr
    with edgerun.load(artifact, PROFILE, prompt_cache_mb=0) as model:
        from edgerun.runtime.conversation import Conversation

        talk = Conversation(model, system)
        first = "".join(c.text for c in talk.say("hello", max_tokens=6))
        second = "".join(c.text for c in talk.say("more please", max_tokens=6))
    # the cached turn answered what a cold model answers (a reply may hold line breaks)
    assert result.stdout.startswith(f"{first}\n{second}\n")


def test_onnx_prefill_in_bounded_passes_equals_one_pass(
    quantized: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long prompt is prefilled in passes whose logits fit PREFILL_LOGITS_BYTES (one pass of
    4,000 tokens held 2.4 GB of logits for a 151,936-token vocabulary): on the int4 kernels the
    last logits and every cached position equal one pass's, bit for bit; no pass is a single
    token (a 1-token remainder joins the pass before it)."""
    if "gguf" in quantized.name:
        pytest.skip("llama.cpp prefills in n_batch chunks of its own")
    from edgerun.backends import ort

    ids = _prompt(6, 61)
    results = []
    for budget in (1 << 40, 1):  # one pass; then passes of 2 tokens (61 = 29 x 2 + 3)
        monkeypatch.setattr(ort, "PREFILL_LOGITS_BYTES", budget)
        with edgerun.load(quantized, PROFILE, prompt_cache_mb=0) as model:
            backend = model._backend
            assert backend is not None
            calls: list[int] = []
            run_many = backend._run_many
            counted = lambda i, c=calls, r=run_many: c.append(len(i)) or r(i)  # noqa: E731
            monkeypatch.setattr(backend, "_run_many", counted)
            last = np.array(backend.prefill(ids, len(ids) + 4))
            taken = backend.snapshot()
            assert taken is not None
            results.append((last, np.array(taken[0]), calls))
    (one, kv_one, calls_one), (many, kv_many, calls_many) = results
    assert calls_one == [61] and calls_many == [2] * 29 + [3]
    assert np.array_equal(one, many) and np.array_equal(kv_one, kv_many)
