"""Prompt-lookup speculative decoding (edgerun.runtime.speculative) on the tiny fixtures: the same tokens
as plain decoding on every backend that can verify, the KV cache rolled back correctly when
drafts are rejected, and the acceptance counts reported."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

import edgerun
from edgerun.core.errors import EdgerunError
from edgerun.runtime.speculative import DraftPolicy, NgramDrafter, SpeculativeDecoder
from tests.runtime_helpers import PROFILE, export_artifact

# (artifact label, format, builder, backend): optimum's graph has the ping-pong KV buffers that
# rollback repacks; genai's the shared buffer; llama.cpp its own cache.
CASES = [
    ("optimum", "onnx-fp32", "optimum", "onnxruntime"),
    ("genai", "onnx-fp32", "genai", "onnxruntime"),
    ("gguf", "gguf-f32", "auto", "llamacpp"),
]
LIBRARIES = {"onnxruntime": "onnxruntime", "llamacpp": "llama_cpp"}
# A prompt whose second half repeats its first: n-gram lookups find drafts from the start.
PROMPT = [5, 17, 99, 23, 240, 61, 8, 77, 130, 45, 19, 3] * 3


@pytest.fixture(scope="module")
def artifacts(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("speculative")
    return {
        label: export_artifact(tiny_llama, fmt, root / label, builder=builder)
        for label, fmt, builder, backend in CASES
        if importlib.util.find_spec(LIBRARIES[backend])
    }


def _load(artifacts: dict[str, Path], label: str, backend: str) -> edgerun.Model:
    if label not in artifacts:
        pytest.skip(f"{backend} is not installed")
    return edgerun.load(artifacts[label], PROFILE, backend=backend)


@pytest.mark.parametrize(("label", "fmt", "builder", "backend"), CASES)
def test_greedy_tokens_equal_plain_decoding(
    label: str, fmt: str, builder: str, backend: str, artifacts: dict[str, Path]
) -> None:
    with _load(artifacts, label, backend) as m:
        for prompt in (PROMPT, PROMPT[:7], list(range(30, 90))):
            plain = [c.token_id for c in m.generate(prompt, 40, ignore_eos=True, speculative=False)]
            assert m.last_stats.speculative is None and m.last_stats.draft_tokens == 0
            spec = [
                c.token_id
                for c in m.generate(prompt, 40, ignore_eos=True, speculative="prompt-lookup")
            ]
            assert spec == plain, (label, len(prompt))
            stats = m.last_stats
            assert stats.speculative == "prompt-lookup"
            assert stats.generated_tokens == 40
        # the repeating prompt gives drafts; a random model takes some and refuses others
        list(m.generate(PROMPT, 40, ignore_eos=True, speculative="on"))
        s = m.last_stats
        assert s.draft_tokens > 0 and s.verify_passes > 0
        assert 0 <= s.accepted_tokens <= s.draft_tokens
        assert s.acceptance_rate == s.accepted_tokens / s.draft_tokens
        assert s.to_json()["acceptance_rate"] == s.acceptance_rate


@pytest.mark.parametrize(("label", "fmt", "builder", "backend"), CASES)
def test_rollback_after_rejected_drafts_restores_the_cache(
    label: str, fmt: str, builder: str, backend: str, artifacts: dict[str, Path]
) -> None:
    """Drafts that are all wrong, then a rollback: the next logits equal plain decoding's."""
    with _load(artifacts, label, backend) as m:
        b = m._backend
        assert b is not None and b.can_verify
        prompt, total = PROMPT[:10], 40
        b.prefill(prompt, total)
        expected = [np.array(b.decode(t)) for t in (11, 12, 13, 14)]
        b.prefill(prompt, total)
        rows = np.array(b.verify([11, 200, 201, 202, 203]))  # 11 right, the rest rejected
        np.testing.assert_allclose(rows[0], expected[0], rtol=1e-4, atol=1e-4)
        b.rollback(len(prompt) + 1)
        np.testing.assert_allclose(b.decode(12), expected[1], rtol=1e-4, atol=1e-4)
        rows = np.array(b.verify([13, 14]))  # a draft after the rollback, both right
        np.testing.assert_allclose(rows, expected[2:], rtol=1e-4, atol=1e-4)
        with pytest.raises(ValueError):
            b.rollback(total + 5)


@pytest.mark.parametrize(("label", "fmt", "builder", "backend"), CASES)
def test_forced_rejections_keep_tokens_and_count(
    label: str, fmt: str, builder: str, backend: str, artifacts: dict[str, Path]
) -> None:
    """A drafter that is right at odd steps and wrong at even ones: every wrong draft is
    rolled back, the tokens stay those of plain decoding, the counts add up."""
    with _load(artifacts, label, backend) as m:
        plain = [c.token_id for c in m.generate(PROMPT[:9], 30, ignore_eos=True, speculative=False)]
        b = m._backend
        assert b is not None
        logits = b.prefill(PROMPT[:9], 9 + 30)
        decoder = SpeculativeDecoder(b, PROMPT[:9], 9 + 30)
        calls = iter(range(1000))

        def propose(limit: int) -> list[int]:
            done = len(decoder.drafter.tokens) - 9
            right = plain[done : done + min(3, limit)]
            return right if next(calls) % 2 else [t + 1 for t in right]

        decoder.drafter.propose = propose  # type: ignore[method-assign]
        got = [int(np.argmax(logits))]
        while len(got) < 30:
            got.append(int(np.argmax(decoder(got[-1]))))
        assert got == plain
        s = decoder.stats
        assert s.verify_passes > 4 and s.draft_tokens > s.accepted_tokens > 0


def test_ngram_drafter_proposes_what_followed_the_latest_match() -> None:
    d = NgramDrafter([1, 2, 3, 4, 9, 1, 2, 3, 5, 6, 7], DraftPolicy(max_ngram=3, min_ngram=2))
    assert d.propose(4) == []  # "6 7" never occurred before
    for t in (1, 2):
        d.append(t)
    assert d.propose(3) == [3, 5, 6]  # the latest "1 2" came before "3 5 6"
    d.append(3)
    assert d.propose(2) == [5, 6]  # the trigram "1 2 3" wins over the shorter matches
    assert d.propose(0) == []


def test_bad_mode_is_one_line_error(artifacts: dict[str, Path]) -> None:
    with _load(artifacts, "optimum", "onnxruntime") as m:
        with pytest.raises(EdgerunError, match="unknown speculative mode 'sometimes'"):
            m.generate(PROMPT, 4, speculative="sometimes")
        # sampling: auto leaves it off, "on" turns it on (and the draws stay the plain ones)
        sampled = dict(max_tokens=20, temperature=0.9, seed=3, ignore_eos=True)
        plain = [c.token_id for c in m.generate(PROMPT, **sampled)]
        assert m.last_stats.speculative is None
        spec = [c.token_id for c in m.generate(PROMPT, speculative="on", **sampled)]
        assert m.last_stats.speculative == "prompt-lookup" and spec == plain


def test_run_reports_acceptance_and_off_turns_it_off(artifacts: dict[str, Path]) -> None:
    from click.testing import CliRunner

    from edgerun.cli import cli

    if "optimum" not in artifacts:
        pytest.skip("onnxruntime is not installed")
    prompt = " ".join(str(t) for t in PROMPT)  # repeated words: the text repeats itself
    base = ["run", str(artifacts["optimum"]), prompt, "--profile", PROFILE, "-n", "24"]
    outs = {}
    for mode in ("on", "off"):
        result = CliRunner().invoke(cli, [*base, "--ignore-eos", "--speculative", mode])
        assert result.exit_code == 0, result.output
        outs[mode] = result
    assert outs["on"].stdout == outs["off"].stdout
    line_on, line_off = outs["on"].stderr.splitlines()[-1], outs["off"].stderr.splitlines()[-1]
    assert re.search(r"; prompt-lookup drafts accepted \d+/[1-9]\d* \(\d+%\)$", line_on), line_on
    assert line_off.endswith("finish length")
    bad = CliRunner().invoke(cli, [*base, "--speculative", "maybe"])
    assert bad.exit_code == 2 and "'maybe' is not one of 'auto', 'on', 'off'" in bad.output


def test_serve_metrics_report_the_acceptance_rate(artifacts: dict[str, Path]) -> None:
    openai = pytest.importorskip("openai")
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("uvicorn")
    from edgerun.serve.server import make_server
    from tests.serve_helpers import running

    if "optimum" not in artifacts:
        pytest.skip("onnxruntime is not installed")
    path = artifacts["optimum"]
    with edgerun.load(path, PROFILE, speculative="off") as m:
        plain = "".join(c.text for c in m.generate(PROMPT, 24, ignore_eos=True))
    models = {"spec": edgerun.load(path, PROFILE, speculative="on")}
    with running(make_server(models, max_queue=2, drain_s=5)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", timeout=30, max_retries=0)
        out = client.completions.create(
            model="spec",
            prompt=PROMPT,
            max_tokens=24,
            temperature=0,
            extra_body={"ignore_eos": True},
        )
        assert out.choices[0].text == plain
        stats = models["spec"].last_stats
        assert stats.draft_tokens > 0
        text = httpx.get(url + "/metrics", timeout=10).text

    def metric(name: str) -> float:
        match = re.search(rf'^{name}{{model="spec"}} (\S+)$', text, re.M)
        assert match, name
        return float(match.group(1))

    assert metric("edgerun_draft_tokens_total") == stats.draft_tokens
    assert metric("edgerun_draft_tokens_accepted_total") == stats.accepted_tokens
    ratio = metric("edgerun_draft_acceptance_ratio")
    assert ratio == pytest.approx(stats.accepted_tokens / stats.draft_tokens)


def test_load_refuses_a_bad_mode_before_loading(tmp_path: Path) -> None:
    with pytest.raises(EdgerunError, match="unknown speculative mode 'yes'"):
        edgerun.load(tmp_path / "missing", PROFILE, speculative="yes")


@pytest.mark.parametrize(("label", "fmt", "builder", "backend"), CASES)
def test_auto_speculates_only_where_verify_is_exact(
    label: str, fmt: str, builder: str, backend: str, artifacts: dict[str, Path]
) -> None:
    with _load(artifacts, label, backend) as m:
        assert m._backend is not None and not m._backend.exact_verify
        plain = [c.token_id for c in m.generate(PROMPT, 30, ignore_eos=True, speculative=False)]
        auto = [c.token_id for c in m.generate(PROMPT, 30, ignore_eos=True)]  # the default
        assert auto == plain and m.last_stats.speculative is None
        m._backend.exact_verify = True  # a backend that declares bit-identical passes
        auto = [c.token_id for c in m.generate(PROMPT, 30, ignore_eos=True)]
        assert auto == plain and m.last_stats.speculative == "prompt-lookup"
        list(m.generate(PROMPT, 5, temperature=0.7, seed=1))  # sampling: auto stays off
        assert m.last_stats.speculative is None
