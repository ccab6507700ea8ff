"""`edgerun serve` for apps (issue 27): prefix KV reuse across chat turns, logprobs in OpenAI's
shapes, a 400 for every field not applied, and the request log; a real server on 127.0.0.1
driven by the official `openai` client."""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import edgerun
from tests.runtime_helpers import PROFILE
from tests.serve_helpers import export_onnx, read_address, running

pytest.importorskip("uvicorn")
pytest.importorskip("sse_starlette")
pytest.importorskip("prometheus_client")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

SYSTEM = "You are a helpful assistant. " * 3  # a shared prefix of some length


@pytest.fixture(scope="module")
def artifact(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(tiny_llama, tmp_path_factory.mktemp("serve-cache") / "out")


@pytest.fixture(scope="module")
def server(artifact: Path) -> Iterator[dict[str, Any]]:
    """The artifact as 'warm' (prompt cache on), 'cold' (off) and 'tiny' (a small bound, and
    10 ms slower per token, to leave a stream mid-way)."""
    from edgerun.serve.server import make_server
    from tests.test_serve import _slowed

    models = {
        "warm": edgerun.load(str(artifact), PROFILE, prompt_cache_mb=64),
        "cold": edgerun.load(str(artifact), PROFILE, prompt_cache_mb=0),
        "tiny": edgerun.load(str(artifact), PROFILE, prompt_cache_mb=64),
    }
    _slowed(models["tiny"], 0.01)
    srv = make_server(models, max_queue=4, drain_s=5, log_format="json")
    with running(srv) as url:
        yield {"url": url, "models": models}


@pytest.fixture()
def client(server: dict[str, Any]) -> Any:
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key="x", timeout=30, max_retries=0)


def _metric(url: str, name: str, model: str) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    match = re.search(rf'^{re.escape(name)}{{model="{model}"}} (\S+)$', text, re.M)
    assert match, f"{name} missing from /metrics"
    return float(match.group(1))


def _chat(client: Any, model: str, messages: list[dict[str, str]], **kw: Any) -> Any:
    return client.chat.completions.create(
        model=model, messages=messages, max_tokens=10, temperature=0, **kw
    )


def test_follow_up_turn_reuses_the_prefix_with_the_cold_output(
    server: dict[str, Any], client: Any
) -> None:
    url = server["url"]
    hits, misses = (
        _metric(url, f"edgerun_prompt_cache_{k}_total", "warm") for k in ("hits", "misses")
    )
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hello"}]
    for turn in range(3):
        warm, cold = _chat(client, "warm", messages), _chat(client, "cold", messages)
        assert warm.choices[0].message.content == cold.choices[0].message.content
        cached = warm.usage.prompt_tokens_details.cached_tokens
        assert cold.usage.prompt_tokens_details.cached_tokens == 0
        if turn == 0:
            assert cached == 0
        else:  # the system prompt and history came back from the cache
            assert warm.usage.prompt_tokens > cached > len(SYSTEM.split())
        reply = warm.choices[0].message.content or "ok"
        messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": "More"}]
    assert _metric(url, "edgerun_prompt_cache_hits_total", "warm") == hits + 2
    assert _metric(url, "edgerun_prompt_cache_misses_total", "warm") == misses + 1
    held = _metric(url, "edgerun_prompt_cache_bytes", "warm")
    assert 0 < held <= _metric(url, "edgerun_prompt_cache_limit_bytes", "warm")
    assert _metric(url, "edgerun_prompt_cache_limit_bytes", "cold") == 0


def test_the_bound_is_honoured_by_evicting(server: dict[str, Any], client: Any) -> None:
    cache = server["models"]["tiny"].prompt_cache
    prompts = [f"{word} " * 12 for word in ("alpha", "beta", "gamma")]

    def complete(prompt: str) -> Any:
        out = client.completions.create(model="tiny", prompt=prompt, max_tokens=2, temperature=0)
        return out.usage.prompt_tokens_details.cached_tokens

    complete(prompts[0])
    cache.max_bytes = int(cache.bytes * 1.5)  # room for one snapshot of this size
    for prompt in prompts[1:]:
        assert complete(prompt) == 0
        assert len(cache) == 1 and cache.bytes <= cache.max_bytes
    held = _metric(server["url"], "edgerun_prompt_cache_bytes", "tiny")
    assert 0 < held <= cache.max_bytes
    assert complete(prompts[0]) == 0  # evicted
    assert complete(prompts[0]) > 0  # and kept again


def test_chat_logprobs_in_openai_shape(server: dict[str, Any], client: Any) -> None:
    messages = [{"role": "user", "content": "Hi"}]
    whole = _chat(client, "cold", messages, logprobs=True, top_logprobs=3)
    content = whole.choices[0].logprobs.content
    assert len(content) == whole.usage.completion_tokens > 0
    for item in content:
        assert len(item.top_logprobs) == 3 and item.logprob <= 0
        assert item.top_logprobs[0].logprob == pytest.approx(item.logprob)  # greedy: the best
        assert bytes(item.bytes).decode("utf-8", "replace") == item.token
    assert "".join(i.token for i in content) == whole.choices[0].message.content
    stream = _chat(client, "cold", messages, logprobs=True, top_logprobs=1, stream=True)
    streamed = [
        i
        for e in stream
        if e.choices and e.choices[0].logprobs
        for i in e.choices[0].logprobs.content
    ]
    assert [i.token for i in streamed] == [i.token for i in content]
    assert [round(i.logprob, 4) for i in streamed] == [round(i.logprob, 4) for i in content]
    plain = _chat(client, "cold", messages)
    assert plain.choices[0].logprobs is None


def test_completion_logprobs_in_openai_shape(client: Any) -> None:
    out = client.completions.create(
        model="cold",
        prompt="The quick",
        max_tokens=6,
        temperature=0,
        logprobs=2,
        extra_body={"ignore_eos": True},
    )
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == 6
    assert "".join(lp.tokens) == out.choices[0].text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(6)]
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert 1 <= len(top) <= 2 and top[token] == pytest.approx(value)


UNSERVED = [
    ({"functions": [{"name": "f"}]}, "functions"),  # the deprecated form of tools
    ({"echo": True}, "echo"),
    ({"logit_bias": {"5": 10}}, "logit_bias"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"frequency_penalty": 1}, "frequency_penalty"),
    ({"top_logprobs": 2}, "top_logprobs"),  # without logprobs: true
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"prompt": "hi"}, "prompt"),  # a completions field
    ({"frobnicate": 1}, "frobnicate"),
]


@pytest.mark.parametrize(("extra", "param"), UNSERVED)
def test_a_field_not_applied_is_a_400_naming_it(
    client: Any, extra: dict[str, Any], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        _chat(client, "cold", [{"role": "user", "content": "hi"}], extra_body=extra)
    assert caught.value.body["param"] == param
    assert param in caught.value.body["message"]


def test_neutral_values_and_completion_fields(client: Any) -> None:
    ok = _chat(
        client,
        "cold",
        [{"role": "user", "content": "hi"}],
        presence_penalty=0,
        frequency_penalty=0,
        n=1,
        user="app-1",
        extra_body={"logit_bias": {}, "top_k": 5},
    )
    assert ok.choices[0].message.role == "assistant"
    for extra, param in (
        ({"echo": True}, "echo"),
        ({"suffix": "end"}, "suffix"),
        ({"messages": []}, "messages"),
    ):
        with pytest.raises(openai.BadRequestError) as caught:
            client.completions.create(model="cold", prompt="hi", max_tokens=2, extra_body=extra)
        assert caught.value.body["param"] == param
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="cold", prompt="hi", max_tokens=2, logprobs=6)


def test_request_log_has_one_line_per_request(
    server: dict[str, Any], client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="edgerun.serve.requests"):
        done = _chat(client, "cold", [{"role": "user", "content": "hi"}], user="u1")
        list(_chat(client, "cold", [{"role": "user", "content": "hi"}], stream=True))
        with pytest.raises(openai.BadRequestError):
            _chat(client, "cold", [{"role": "user", "content": "hi"}], extra_body={"tools": [{}]})
    lines = [
        json.loads(r.getMessage()) for r in caplog.records if r.name == "edgerun.serve.requests"
    ]
    assert len(lines) == 3
    first, streamed, refused = lines
    assert first["id"] == done.id and first["model"] == "cold" and first["status"] == 200
    assert first["prompt_tokens"] == done.usage.prompt_tokens
    assert first["output_tokens"] == done.usage.completion_tokens
    assert first["ttft_ms"] > 0 and first["finish"] in ("stop", "length") and first["user"] == "u1"
    assert streamed["status"] == 200 and streamed["output_tokens"] > 0
    assert refused["status"] == 400 and refused["output_tokens"] == 0 and refused["ttft_ms"] is None


def test_request_log_text_format() -> None:
    from edgerun.serve import reqlog
    from edgerun.serve.engine import Outcome

    outcome = Outcome(
        12, 4, "length", {"ttft_s": 0.0123, "decode_tok_s": 88.04, "cached_tokens": 8}
    )
    line = reqlog.format_line(reqlog.fields("cmpl-1", "m", 200, outcome, "a b"), "text")
    assert line == (
        "id=cmpl-1 model=m status=200 prompt_tokens=12 cached_tokens=8 output_tokens=4"
        " ttft_ms=12.3 tok_s=88.0 finish=length user='a b'"
    )
    refused = reqlog.format_line(reqlog.fields("x", None, 400), "text")
    assert refused.startswith("id=x model=- status=400 prompt_tokens=0") and "ttft_ms=-" in refused


def test_serve_cli_logs_json_lines_and_bounds_the_cache(artifact: Path) -> None:
    cmd = [sys.executable, "-m", "edgerun", "serve", str(artifact), "--port", "0"]
    cmd += ["--profile", PROFILE, "--log-format", "json", "--prompt-cache-mb", "0.5"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    try:
        found = re.search(r"http://127\.0\.0\.1:\d+", read_address(proc, 60))
        assert found
        url, name = found.group(0), artifact.name
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", timeout=30, max_retries=0)
        done = client.completions.create(model=name, prompt="Hello", max_tokens=3, temperature=0)
        assert _metric(url, "edgerun_prompt_cache_limit_bytes", name) == 0.5 * 2**20
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        rest = proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    lines = [json.loads(line) for line in rest.splitlines() if line.startswith("{")]
    assert [(r["id"], r["status"], r["output_tokens"]) for r in lines] == [(done.id, 200, 3)]
    assert "Traceback" not in rest


def test_a_stream_the_client_leaves_is_logged_as_499(
    server: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    import time

    body = {
        "model": "tiny",
        "prompt": "Go",
        "max_tokens": 200,
        "stream": True,
        "ignore_eos": True,
    }
    with caplog.at_level(logging.INFO, logger="edgerun.serve.requests"):
        with httpx.stream("POST", server["url"] + "/v1/completions", json=body, timeout=30) as r:
            assert next(r.iter_lines()).startswith("data: ")
        deadline = time.monotonic() + 20
        while not caplog.records and time.monotonic() < deadline:
            time.sleep(0.05)
    (record,) = [json.loads(r.getMessage()) for r in caplog.records]
    assert record["status"] == 499 and record["finish"] is None
