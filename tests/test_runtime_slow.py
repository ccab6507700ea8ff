"""End to end on the real SmolLM2-135M-Instruct: every backend's fp32 / f16 artifact gives the
same first 16 greedy tokens as transformers on "The capital of France is"."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import pytest

import edgerun
from tests.runtime_helpers import PROFILE, export_artifact, torch_greedy, torch_model

pytestmark = pytest.mark.slow
PROMPT = "The capital of France is"
# (format, builder, backend); skipped when the backend's library is missing. The genai builder's
# graph runs both in onnxruntime-genai and in edgerun's own ORT loop.
ARTIFACTS = [
    ("onnx-fp32", "optimum", "onnxruntime"),
    ("gguf-f16", None, "llamacpp"),
    ("onnx-fp32", "genai", "genai"),
    ("onnx-fp32", "genai", "onnxruntime"),
]
MODULES = {"onnxruntime": "onnxruntime", "llamacpp": "llama_cpp", "genai": "onnxruntime_genai"}


@pytest.fixture(scope="module")
def reference(smollm2_dir: Path) -> list[int]:
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(smollm2_dir / "tokenizer.json")).encode(PROMPT).ids
    return torch_greedy(torch_model(smollm2_dir), ids, 16)


@pytest.fixture(scope="module")
def exported(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Export on first use, shared by the tests of one module."""
    cache: dict[tuple[str, str | None], Path] = {}
    root = tmp_path_factory.mktemp("smollm2-artifacts")

    def get(fmt: str, builder: str | None) -> Path:
        if (fmt, builder) not in cache:
            options = {"builder": builder} if builder else {}
            out = root / f"{fmt}-{builder}"
            cache[fmt, builder] = export_artifact(smollm2_dir, fmt, out, **options)
        return cache[fmt, builder]

    return get


@pytest.mark.parametrize(
    ("fmt", "builder", "backend"), ARTIFACTS, ids=[f"{a[0]}-{a[1]}-{a[2]}" for a in ARTIFACTS]
)
def test_first_16_greedy_tokens_equal_transformers(
    fmt: str,
    builder: str | None,
    backend: str,
    exported: Callable[..., Path],
    reference: list[int],
) -> None:
    if importlib.util.find_spec(MODULES[backend]) is None:
        pytest.skip(f"{backend} is not installed")
    with edgerun.load(exported(fmt, builder), PROFILE, backend=backend) as m:
        assert m.info.backend == backend
        got = [c.token_id for c in m.generate(PROMPT, max_tokens=16)]
        assert got == reference
        assert m.tokenizer.decode(got).startswith(" Paris")


def test_q4_1_gguf_says_paris(smollm2_dir: Path, reference: list[int]) -> None:
    """The demo Q4_1 file: llama.cpp multiplies Q4_1 weights with 8-bit-quantized activations,
    so its greedy path leaves the fp32 reference's after a few tokens; the answer must hold."""
    pytest.importorskip("llama_cpp")
    gguf = smollm2_dir.parent.parent / "downloads" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not gguf.is_file():
        pytest.skip(f"{gguf} is not there")
    with edgerun.load(gguf, PROFILE) as m:
        assert m.info.backend == "llamacpp"
        got = [c.token_id for c in m.generate(PROMPT, max_tokens=16)]
        assert got[:5] == reference[:5]
        assert m.tokenizer.decode(got).startswith(" Paris.")
