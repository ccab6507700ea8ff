"""The shared validation metrics and gate, on synthetic logits (no model needed)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from edgerun.core.errors import EdgerunError
from edgerun.exporters.validate import (
    MIN_EVAL_TOKENS,
    Reference,
    Thresholds,
    log_softmax,
    windows,
)

VOCAB = 50


def _table(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 3, size=(VOCAB, VOCAB)).astype(np.float32)


def _bigram(table: np.ndarray):
    """A LogitsFn whose next-token logits depend on the current token only."""
    return lambda ids: table[ids]


def _ids(n: int = 600) -> list[int]:
    return list(np.random.default_rng(1).integers(0, VOCAB, size=n))


def test_windows_are_non_overlapping_and_keep_a_long_enough_tail() -> None:
    chunks = windows(range(10), 4)
    assert [c.tolist() for c in chunks] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [c.tolist() for c in windows(range(9), 4)] == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_log_softmax_normalises_in_float64() -> None:
    out = log_softmax(np.array([[1000.0, 1000.0], [0.0, math.log(3.0)]], dtype=np.float32))
    assert out.dtype == np.float64
    np.testing.assert_allclose(np.exp(out).sum(-1), [1.0, 1.0])
    np.testing.assert_allclose(out[1], np.log([0.25, 0.75]))


def test_identical_model_scores_perfectly() -> None:
    table = _table()
    ref = Reference(_bigram(table), _ids(), "text", window=100)
    v = ref.score(_bigram(table))
    assert v.tokens == 600 - 6  # six windows of 100, one prediction fewer each
    assert v.ppl == pytest.approx(v.ppl_ref)
    assert v.ppl_ratio == pytest.approx(1.0)
    assert v.mean_kl == pytest.approx(0.0, abs=1e-12)
    assert v.top1_agreement == 1.0
    assert v.passed and v.reasons == []


def test_perplexity_is_exp_of_mean_nll() -> None:
    table = _table()
    ids = _ids(300)
    ref = Reference(_bigram(table), ids, "t", window=300)
    lp = log_softmax(table[np.array(ids[:-1])])
    nll = -lp[np.arange(299), np.array(ids[1:])].mean()
    assert ref.score(_bigram(table)).ppl_ref == pytest.approx(math.exp(nll))


def test_more_noise_scores_worse_and_strict_gate_fails() -> None:
    table = _table()
    ref = Reference(_bigram(table), _ids(), "text")
    rng = np.random.default_rng(2)
    small = ref.score(_bigram(table + rng.normal(0, 0.3, table.shape).astype(np.float32)))
    large = ref.score(_bigram(table + rng.normal(0, 3.0, table.shape).astype(np.float32)))
    assert 0 < small.mean_kl < large.mean_kl
    assert small.top1_agreement > large.top1_agreement
    strict = Thresholds(max_ppl_ratio=0.5, max_mean_kl=1e-6, min_top1_agreement=0.9999)
    failed = ref.score(_bigram(table + 0.5 * rng.normal(size=table.shape)), strict)
    assert not failed.passed
    assert len(failed.reasons) == 3
    assert failed.thresholds == {
        "max_ppl_ratio": 0.5,
        "max_mean_kl": 1e-6,
        "min_top1_agreement": 0.9999,
    }


def test_gate_treats_nan_as_failure() -> None:
    reasons = Thresholds().check(float("nan"), 0.0, 1.0)
    assert reasons == [f"PPL ratio nan > {Thresholds().max_ppl_ratio}"]


def test_garbage_model_overflowing_perplexity_fails_without_inf() -> None:
    table = _table()
    ref = Reference(_bigram(table), _ids(), "text")
    garbage = ref.score(lambda ids: -1e4 * table[ids])  # confidently wrong everywhere
    assert not garbage.passed
    assert math.isfinite(garbage.ppl) and garbage.ppl_ratio > 1e3


def test_eval_text_shorter_than_minimum_is_refused() -> None:
    with pytest.raises(EdgerunError, match=f"needs at least {MIN_EVAL_TOKENS}"):
        Reference(_bigram(_table()), _ids(MIN_EVAL_TOKENS - 1), "short")


def test_vocabulary_mismatch_is_an_error() -> None:
    ref = Reference(_bigram(_table()), _ids(), "text")
    with pytest.raises(EdgerunError, match="vocabulary"):
        ref.score(lambda ids: np.zeros((len(ids), VOCAB + 1), np.float32))


def test_text_hash_is_recorded() -> None:
    import hashlib

    v = Reference(_bigram(_table()), _ids(), "héllo").score(_bigram(_table()))
    assert v.eval_text_sha256 == hashlib.sha256("héllo".encode()).hexdigest()
    assert set(v.to_json()) >= {
        "ppl_ref",
        "ppl",
        "ppl_ratio",
        "mean_kl",
        "top1_agreement",
        "tokens",
        "eval_text_sha256",
        "thresholds",
        "passed",
    }


@pytest.mark.parametrize(
    ("precision", "ratio"),
    [
        ("fp32", 1.02),
        ("fp16", 1.02),
        ("bf16", 1.02),
        ("int8", 1.05),
        ("q8_0", 1.05),
        ("q6_k", 1.25),
        ("q5_k_m", 1.25),
        ("int4", 1.35),  # edgerun's own int4 recipes: INT4_GATE
        ("q4_k_m", 1.5),
        ("iq3_m", 1.5),
        ("q2_k", 1.5),
    ],
)
def test_gate_tightens_with_bit_width(precision: str, ratio: float) -> None:
    assert Thresholds.for_precision(precision).max_ppl_ratio == ratio


def test_int4_gate_refuses_all_4_bit_rtn_and_passes_the_default_recipe_on_both_references() -> None:
    gate = Thresholds.for_precision("int4")
    # SmolLM2-135M: q4-pure sym / asym on the demo checkpoint and on the off-grid reference
    assert gate.check(1.316, 0.376, 0.628) and gate.check(1.401, 0.374, 0.608)
    assert gate.check(1.616, 0.527, 0.582) and gate.check(1.534, 0.445, 0.595)
    # the default q4-mixed (asymmetric) and its symmetric variant on both ("Fidelity")
    assert gate.check(1.186, 0.174, 0.725) == [] and gate.check(1.222, 0.212, 0.693) == []
    assert gate.check(1.173, 0.182, 0.721) == [] and gate.check(1.233, 0.229, 0.701) == []
    # llama.cpp's q4_0 off grid (0.429) still passes its own class gate
    assert Thresholds.for_precision("q4_0").check(1.443, 0.429, 0.646) == []


def test_dynamic_int8_refused_by_the_8bit_gate_with_margin() -> None:
    # SmolLM2 on a VNNI CPU: dynamic int8 measured at PPL ratio 1.708, KL 0.556, top-1 0.576.
    reasons = Thresholds.for_precision("int8").check(1.708, 0.556, 0.576)
    assert len(reasons) == 3
    assert Thresholds.for_precision("int8").check(1.006, 0.0042, 0.960) == []


def _flat(seed: int) -> np.ndarray:
    """A nearly flat next-token table (a random-weight checkpoint): top-2 margins << 1 nat."""
    return np.random.default_rng(seed).normal(0, 0.01, size=(VOCAB, VOCAB)).astype(np.float32)


def test_a_flat_reference_does_not_gate_on_top1_noise() -> None:
    """Two near-uniform models agree on the top token by chance only (~1/VOCAB), yet their KL
    is tiny: the gate checks KL and PPL ratio, and reports top-1 as not gated."""
    ref = Reference(_bigram(_flat(0)), _ids(), "text")
    v = ref.score(_bigram(_flat(1)), Thresholds())
    assert v.top1_agreement < 0.2 and v.mean_kl < 1e-3
    assert (v.confident_tokens, v.top1_confident, v.top1_gated) == (0, None, "none")
    assert v.passed and v.reasons == []


def _half_flat() -> np.ndarray:
    """Flat rows, except a confident one (margin 5 nats) for every 5th token."""
    table = _flat(0)
    for token in range(0, VOCAB, 5):
        table[token, (token * 7) % VOCAB] = 5.0
    return table


def test_a_mostly_flat_reference_gates_top1_on_its_confident_positions() -> None:
    table = _half_flat()
    ref = Reference(_bigram(table), _ids(), "text")
    keeps = table.copy()
    keeps[[t for t in range(VOCAB) if t % 5]] = _flat(1)[[t for t in range(VOCAB) if t % 5]]
    v = ref.score(_bigram(keeps), Thresholds())
    assert v.top1_gated == "confident" and v.top1_confident == 1.0
    assert 0 < v.confident_tokens < 0.25 * v.tokens
    assert v.top1_agreement < 0.5 and v.passed
    flips = table.copy()
    flips[:, :] = flips[:, ::-1]  # the confident rows now peak elsewhere
    failed = ref.score(_bigram(flips), Thresholds(max_ppl_ratio=1e9, max_mean_kl=1e9))
    assert failed.reasons == ["top-1 agreement (confident positions) 0.000 < 0.5"]


def test_a_confident_reference_keeps_the_calibrated_top1_gate() -> None:
    """A reference like SmolLM2's (most positions confident): top-1 over every position, as
    the thresholds were calibrated."""
    table = _table()
    ref = Reference(_bigram(table), _ids(), "text")
    noisy = table + np.random.default_rng(2).normal(0, 3.0, table.shape).astype(np.float32)
    v = ref.score(
        _bigram(noisy), Thresholds(max_ppl_ratio=1e9, max_mean_kl=1e9, min_top1_agreement=0.9)
    )
    assert v.confident_tokens >= 0.25 * v.tokens and v.top1_gated == "all"
    assert v.reasons == [f"top-1 agreement {v.top1_agreement:.3f} < 0.9"]
    assert v.top1_confident is not None and v.top1_confident > v.top1_agreement


def _mapped_rss(path: Path) -> int:
    """Resident bytes of this process's mappings of `path` (/proc/self/smaps)."""
    total, current = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split()
        if fields and "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
            current = fields[-1] == str(path)
        elif current and fields[:1] == ["Rss:"]:
            total += int(fields[1]) * 1024
    return total


@pytest.mark.skipif(not Path("/proc/self/smaps").is_file(), reason="Linux /proc")
def test_a_logprob_file_reads_back_what_was_written_and_keeps_no_pages_mapped(
    tmp_path: Path,
) -> None:
    """Written and read window by window, the reference's log-probs leave none of the file's pages
    in the process: mapped, 0.98 GB of them counted through the Qwen2.5-1.5B shape's calibration."""
    from edgerun.exporters.validate import LogprobFile

    rng = np.random.default_rng(0)
    rows, vocab = [300, 300, 120], 2048  # 5.8 MB
    path = tmp_path / "reference-logprobs.npy"
    store = LogprobFile(path, rows, vocab)
    written = [rng.standard_normal((n, vocab)).astype(np.float32) for n in rows]
    for i, values in enumerate(written):
        store[i] = values
    assert _mapped_rss(path) < 64 * 1024  # was the whole 5.8 MB
    for i, values in enumerate(written):
        np.testing.assert_array_equal(store[i], values)
    assert _mapped_rss(path) < 64 * 1024
    assert len(store) == 3
