"""A warm `edgerun serve` (prompt cache on) answers a multi-turn greedy chat exactly as cold
requests do, on quantized artifacts of both backends, through the official openai client on
127.0.0.1: same tokens and bit-identical log-probabilities (issue 27). The quantized kernels
round a one-token decode step differently from a batched prefill, so a cache that reused the
previous reply's decoded KV positions gave other logits (and on SmolLM2, other replies) than a
cold request, which computes the whole history in a batch."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import edgerun
from tests.runtime_helpers import PROFILE, export_artifact
from tests.serve_helpers import running

pytest.importorskip("uvicorn")
pytest.importorskip("sse_starlette")
openai = pytest.importorskip("openai")

FORMATS = {"onnx": "onnx-int4", "gguf": "gguf-q4_k_m"}
# what serves each by default: onnx-int4 is a genai-builder graph, which the ORT loop (with the
# prompt cache) runs before onnxruntime-genai in every profile's order and in registration order
BACKENDS = {"onnx": "onnxruntime", "gguf": "llamacpp"}
# ~100 tokens shared (the tiny model has 256 positions), more than llama.cpp's prefix_align (at most 16)
SYSTEM = "You answer questions about edge devices, briefly and in plain words. " * 2
USER_TURNS = ["Hello there", "Tell me more about it", "And then what"]


@pytest.fixture(scope="module", params=sorted(FORMATS))
def server(
    request: pytest.FixtureRequest,
    tiny_wide_llama: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    """One server with the artifact twice: "warm" (prompt cache on) and "cold" (off)."""
    from edgerun.serve.server import make_server

    if request.param == "gguf":
        pytest.importorskip("llama_cpp")
    out = tmp_path_factory.mktemp(f"exact-{request.param}")
    artifact = str(export_artifact(tiny_wide_llama, FORMATS[request.param], out))
    models = {
        "warm": edgerun.load(artifact, PROFILE, prompt_cache_mb=64),
        "cold": edgerun.load(artifact, PROFILE, prompt_cache_mb=0),
    }
    with running(make_server(models, max_queue=4, drain_s=5)) as url:
        yield {"url": url, "format": request.param, "warm": models["warm"]}


def _turn(client: Any, model: str, messages: list[dict[str, str]]) -> tuple[Any, list[Any]]:
    out = client.chat.completions.create(
        model=model, messages=messages, max_tokens=12, temperature=0, logprobs=True
    )
    scored = [(t.token, t.logprob) for t in out.choices[0].logprobs.content]
    return out, scored


def test_warm_greedy_chat_equals_cold_requests(server: dict[str, Any]) -> None:
    warm_model = server["warm"]
    assert warm_model.info.backend == BACKENDS[server["format"]]
    assert warm_model.prompt_cache is not None
    url = server["url"] + "/v1"
    client = openai.OpenAI(base_url=url, api_key="x", timeout=60, max_retries=0)
    messages = [{"role": "system", "content": SYSTEM}]
    cached = []
    for text in USER_TURNS:
        messages.append({"role": "user", "content": text})
        warm, warm_scored = _turn(client, "warm", messages)
        cold, cold_scored = _turn(client, "cold", messages)
        assert warm.choices[0].message.content == cold.choices[0].message.content
        assert warm_scored == cold_scored  # the same floats: the same KV cache
        assert warm.usage.prompt_tokens == cold.usage.prompt_tokens
        cached.append(warm.usage.prompt_tokens_details.cached_tokens)
        messages.append({"role": "assistant", "content": warm.choices[0].message.content or ""})
    # the system prompt and history were restored, not recomputed, from the second turn on
    assert cached[0] == 0 and all(n >= 32 for n in cached[1:])
