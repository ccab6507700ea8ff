"""The shared sampler: greedy, temperature, top-k, top-p, seeds; and stop-string streaming."""

from __future__ import annotations

import re

import numpy as np
import pytest

from edgerun.core.errors import EdgerunError
from edgerun.runtime.model import _Stops
from edgerun.text.sampling import Sampler, SamplingParams, _nucleus


def _logits(probs: list[float]) -> np.ndarray:
    return np.log(np.asarray(probs, np.float64)).astype(np.float32)


def test_greedy_is_argmax_and_ignores_the_seed() -> None:
    logits = np.array([0.1, 2.0, -1.0, 1.9], np.float32)
    assert Sampler(SamplingParams())(logits) == 1
    assert Sampler(SamplingParams(temperature=0.0, seed=5))(logits) == 1
    assert Sampler(SamplingParams(temperature=5.0, top_k=1, seed=3))(logits) == 1


def test_same_seed_same_draws_other_seed_other_draws() -> None:
    logits = np.zeros(1000, np.float32)
    a = Sampler(SamplingParams(temperature=1.0, seed=11))
    b = Sampler(SamplingParams(temperature=1.0, seed=11))
    c = Sampler(SamplingParams(temperature=1.0, seed=12))
    seq_a = [a(logits) for _ in range(50)]
    assert seq_a == [b(logits) for _ in range(50)]
    assert seq_a != [c(logits) for _ in range(50)]


def test_temperature_one_follows_the_softmax() -> None:
    probs = [0.5, 0.3, 0.15, 0.05]
    sampler = Sampler(SamplingParams(temperature=1.0, seed=0))
    counts = np.bincount([sampler(_logits(probs)) for _ in range(20000)], minlength=4) / 20000
    assert np.allclose(counts, probs, atol=0.015)


def test_low_temperature_sharpens() -> None:
    sampler = Sampler(SamplingParams(temperature=0.1, seed=0))
    draws = [sampler(_logits([0.4, 0.35, 0.25])) for _ in range(2000)]
    assert draws.count(0) / len(draws) > 0.75


def test_top_k_only_draws_from_the_k_best() -> None:
    logits = np.arange(100, dtype=np.float32) / 10  # token 99 is the most likely
    sampler = Sampler(SamplingParams(temperature=1.0, top_k=3, seed=0))
    assert set(sampler(logits) for _ in range(500)) == {97, 98, 99}


@pytest.mark.parametrize(
    ("top_p", "kept"), [(0.45, {0}), (0.75, {0, 1}), (0.85, {0, 1, 2}), (1.0, {0, 1, 2, 3})]
)
def test_top_p_keeps_the_smallest_set_reaching_p(top_p: float, kept: set[int]) -> None:
    sampler = Sampler(SamplingParams(temperature=1.0, top_p=top_p, seed=0))
    ids, _ = sampler.candidates(_logits([0.5, 0.3, 0.15, 0.05]))
    assert set(ids.tolist()) == kept
    assert set(sampler(_logits([0.5, 0.3, 0.15, 0.05])) for _ in range(400)) == kept


@pytest.mark.parametrize("sharpness", [0.5, 3.0, 30.0])
def test_nucleus_prefilter_equals_a_full_sort(sharpness: float) -> None:
    rng = np.random.default_rng(0)
    probs = np.exp(rng.standard_normal(49152) * sharpness)
    ids, kept = _nucleus(np.arange(len(probs)), probs, 0.9)
    order = np.argsort(-probs, kind="stable")
    cut = int(np.searchsorted(np.cumsum(probs[order]), 0.9 * probs.sum())) + 1
    assert ids.tolist() == order[:cut].tolist()
    assert np.array_equal(kept, probs[order[:cut]])


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (SamplingParams(temperature=-0.1), "temperature must be >= 0"),
        (SamplingParams(top_k=-1), "top_k must be >= 0"),
        (SamplingParams(top_p=0.0), "top_p must be in (0, 1]"),
        (SamplingParams(top_p=1.5), "top_p must be in (0, 1]"),
        (SamplingParams(temperature=float("nan")), "temperature must be >= 0"),
    ],
)
def test_bad_parameters_are_errors(params: SamplingParams, message: str) -> None:
    with pytest.raises(EdgerunError, match=re.escape(message)):
        Sampler(params)


def test_stop_strings_hold_back_a_possible_prefix() -> None:
    stops = _Stops(["User:"])
    assert stops.feed("Hello ") == ("Hello ", False)
    assert stops.feed("Us") == ("", False)  # could be the start of "User:"
    assert stops.feed("ed it. ") == ("Used it. ", False)  # it was not
    assert stops.feed("U") == ("", False)
    assert stops.feed("ser: more") == ("", True)
    assert stops.flush() == ""


def test_stop_string_inside_one_chunk_and_stop_ids() -> None:
    stops = _Stops(["\n\n", 7, "END"])
    assert stops.ids == frozenset({7})
    assert stops.feed("one\n\ntwo") == ("one", True)
    held = _Stops("END")
    assert held.feed("the E") == ("the ", False)
    assert held.flush() == "E"
