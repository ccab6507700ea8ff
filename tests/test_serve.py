"""`edgerun serve`: a real uvicorn server on a loopback port, driven by the official `openai`
client and by raw HTTP for every bad input; queue, load, disconnect and SIGTERM behaviour."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
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

KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_QUEUE = 4
SLOW_S = 0.01  # per decoded token of the "slow" model


@pytest.fixture(scope="module")
def artifact(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(tiny_llama, tmp_path_factory.mktemp("serve") / "out")


def _slowed(model: Any, delay: float) -> None:
    """Make every decode step of `model` take `delay` longer (to watch a generation mid-way)."""
    backend = model._backend
    decode = backend.decode

    def slow_decode(token: int) -> Any:
        time.sleep(delay)
        return decode(token)

    backend.decode = slow_decode


@pytest.fixture(scope="module")
def server(artifact: Path) -> Iterator[dict[str, Any]]:
    """The artifact served twice on a free loopback port: under its name, and slowed as 'slow'."""
    from edgerun.serve.server import make_server

    models = {
        artifact.name: edgerun.load(str(artifact), PROFILE),
        "slow": edgerun.load(str(artifact), PROFILE),
    }
    _slowed(models["slow"], SLOW_S)
    srv = make_server(models, api_key=KEY, max_queue=MAX_QUEUE, max_body=64 * 1024, drain_s=5)
    with running(srv) as url:
        yield {"url": url, "name": artifact.name, "models": models}


@pytest.fixture()
def client(server: dict[str, Any]) -> Any:
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key=KEY, timeout=30, max_retries=0)


def _library(artifact: Path, prompt: Any, chat: bool = False, **kw: Any) -> tuple[str, Any]:
    with edgerun.load(str(artifact), PROFILE) as m:
        chunks = m.chat(prompt, **kw) if chat else m.generate(prompt, **kw)
        return "".join(c.text for c in chunks), m.last_stats


def _metric(url: str, name: str, model: str | None = None) -> float:
    text = httpx.get(url + "/metrics", timeout=10).text
    label = f'{{model="{model}"}}' if model else ""
    match = re.search(rf"^{re.escape(name + label)} (\S+)$", text, re.M)
    return float(match.group(1)) if match else 0.0


def test_lists_models_and_health(server: dict[str, Any], client: Any) -> None:
    assert [m.id for m in client.models.list()] == [server["name"], "slow"]
    health = httpx.get(server["url"] + "/health", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_completion_is_the_library_output(
    server: dict[str, Any], client: Any, artifact: Path
) -> None:
    out = client.completions.create(
        model=server["name"],
        prompt="The quick",
        max_tokens=8,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    text, stats = _library(artifact, "The quick", max_tokens=8, ignore_eos=True)
    assert out.object == "text_completion" and out.choices[0].text == text
    assert out.choices[0].finish_reason == "length"
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (stats.prompt_tokens, 8)
    assert out.usage.total_tokens == stats.prompt_tokens + 8


def test_chat_whole_and_streamed(server: dict[str, Any], client: Any, artifact: Path) -> None:
    messages = [{"role": "user", "content": "Hello there"}]
    text, stats = _library(artifact, messages, chat=True, max_tokens=12)
    whole = client.chat.completions.create(
        model=server["name"], messages=messages, max_tokens=12, temperature=0
    )
    assert whole.choices[0].message.role == "assistant"
    assert whole.choices[0].message.content == text
    assert whole.usage.completion_tokens == stats.generated_tokens
    stream = client.chat.completions.create(
        model=server["name"],
        messages=messages,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    events = list(stream)
    assert events[0].choices[0].delta.role == "assistant"
    assert "".join(e.choices[0].delta.content or "" for e in events if e.choices) == text
    assert [e.choices[0].finish_reason for e in events if e.choices][-1] in ("stop", "length")
    assert events[-1].usage.completion_tokens == stats.generated_tokens
    assert events[-1].usage.prompt_tokens == stats.prompt_tokens


def test_seed_reproduces_the_sampled_text(
    server: dict[str, Any], client: Any, artifact: Path
) -> None:
    def sample(seed: int) -> str:
        out = client.completions.create(
            model=server["name"],
            prompt="Once",
            max_tokens=16,
            temperature=0.9,
            top_p=0.95,
            seed=seed,
            extra_body={"ignore_eos": True},
        )
        return str(out.choices[0].text)

    first = sample(11)
    assert sample(11) == first
    kw: dict[str, Any] = dict(max_tokens=16, temperature=0.9, top_p=0.95, seed=11, ignore_eos=True)
    assert _library(artifact, "Once", **kw)[0] == first


def test_stop_string_ends_the_text(server: dict[str, Any], client: Any, artifact: Path) -> None:
    full, _ = _library(artifact, "The quick", max_tokens=24, ignore_eos=True)
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    assert stop.strip(), full
    out = client.completions.create(
        model=server["name"],
        prompt="The quick",
        max_tokens=24,
        temperature=0,
        stop=[stop],
        extra_body={"ignore_eos": True},
    )
    assert out.choices[0].text == full[: full.index(stop)]
    assert out.choices[0].finish_reason == "stop"


LONG = "word " * 400
BAD_INPUTS = [
    ("/v1/chat/completions", b"{not json", 400, None),
    ("/v1/chat/completions", b"[1, 2]", 400, None),
    (
        "/v1/chat/completions",
        {"model": "nope", "messages": [{"role": "user", "content": "hi"}]},
        404,
        "model",
    ),
    ("/v1/chat/completions", {"model": "$M"}, 400, "messages"),
    ("/v1/chat/completions", {"model": "$M", "messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"model": "$M", "messages": "hi"}, 400, "messages"),
    (
        "/v1/chat/completions",
        {"model": "$M", "messages": [{"role": "user", "content": 3}]},
        400,
        "messages[0].content",
    ),
    (
        "/v1/chat/completions",
        {"model": "$M", "messages": [{"role": "user", "content": LONG}]},
        400,
        "messages",
    ),
    ("/v1/completions", {"model": "$M"}, 400, "prompt"),
    ("/v1/completions", {"model": "$M", "prompt": LONG, "max_tokens": 4}, 400, "prompt"),
    ("/v1/completions", {"model": "$M", "prompt": "hi", "max_tokens": 10**9}, 400, "prompt"),
    ("/v1/completions", {"model": "$M", "prompt": "hi", "max_tokens": -1}, 400, "max_tokens"),
    ("/v1/completions", {"model": "$M", "prompt": "hi", "max_tokens": 0}, 400, "max_tokens"),
    ("/v1/completions", {"model": "$M", "prompt": "hi", "max_tokens": "5"}, 400, "max_tokens"),
    ("/v1/completions", {"model": "$M", "prompt": "hi", "temperature": "hot"}, 400, "temperature"),
    ("/v1/completions", {"model": "$M", "prompt": "hi", "temperature": True}, 400, "temperature"),
    ("/v1/completions", {"model": "$M", "prompt": "hi", "temperature": 5}, 400, "temperature"),
    ("/v1/completions", {"model": "$M", "prompt": "hi", "top_p": 0}, 400, "top_p"),
    ("/v1/completions", {"model": "$M", "prompt": "hi", "seed": -1}, 400, "seed"),
    ("/v1/completions", {"model": "$M", "prompt": "hi", "stop": [1]}, 400, "stop"),
    ("/v1/completions", {"model": "$M", "prompt": "hi", "n": 2}, 400, "n"),
    ("/v1/completions", {"model": "$M", "prompt": "hi", "stream": "yes"}, 400, "stream"),
    ("/v1/completions", {"model": 7, "prompt": "hi"}, 400, "model"),
    ("/v1/completions", {"model": "$M", "prompt": [10**9]}, 400, None),
    ("/v1/completions", {"model": "$M", "prompt": "x" * 70_000}, 413, None),
]


@pytest.mark.parametrize(("path", "body", "status", "param"), BAD_INPUTS)
def test_bad_input_gets_an_openai_error(
    server: dict[str, Any], path: str, body: Any, status: int, param: str | None
) -> None:
    if isinstance(body, dict):
        body = json.dumps(body).replace("$M", server["name"]).encode()
    headers = {**AUTH, "Content-Type": "application/json"}
    r = httpx.post(server["url"] + path, content=body, headers=headers, timeout=30)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["message"] and error["type"] and error["param"] == param
    if b"word word" in body:
        assert error["code"] == "context_length_exceeded" and " by " in error["message"]


def test_unknown_routes_methods_and_keys(server: dict[str, Any]) -> None:
    url = server["url"]
    assert httpx.get(url + "/v1/nothing", headers=AUTH, timeout=10).status_code == 404
    assert httpx.get(url + "/v1/completions", headers=AUTH, timeout=10).status_code == 405
    wrong = ("Bearer wrong", KEY, "Bearer", f"Basic {KEY}", f"Bearer {KEY}x")
    for headers in ({}, *({"Authorization": value} for value in wrong)):
        r = httpx.get(url + "/v1/models", headers=headers, timeout=10)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(url + "/health", timeout=10).status_code == 200


async def _stream(client: Any, url: str, body: dict[str, Any]) -> tuple[int, Any]:
    """(status, completion tokens from usage, or the error body); [DONE] must end a 200."""
    async with client.stream("POST", url, json=body, headers=AUTH) as r:
        if r.status_code != 200:
            return r.status_code, json.loads(await r.aread())
        lines = [line async for line in r.aiter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return 200, json.loads(lines[-2][6:])["usage"]["completion_tokens"]


def test_load_every_request_completes_or_gets_429(server: dict[str, Any]) -> None:
    n, tokens = 24, 16
    body = {
        "model": server["name"],
        "prompt": "Load",
        "max_tokens": tokens,
        "stream": True,
        "ignore_eos": True,
        "stream_options": {"include_usage": True},
    }

    async def burst() -> list[tuple[int, Any]]:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=n)) as c:
            url = server["url"] + "/v1/completions"
            return await asyncio.wait_for(
                asyncio.gather(*(_stream(c, url, body) for _ in range(n))), 60
            )

    results = asyncio.run(burst())
    done = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] == 429]
    assert len(done) + len(refused) == n, results
    assert all(count == tokens for _, count in done)
    assert all(err["error"]["code"] == "queue_full" for _, err in refused)
    assert len(done) >= 1 + MAX_QUEUE
    assert httpx.get(server["url"] + "/health", timeout=10).status_code == 200
    assert _metric(server["url"], "edgerun_queue_depth", server["name"]) == 0
    assert _metric(server["url"], "edgerun_running", server["name"]) == 0
    text = httpx.get(server["url"] + "/metrics", timeout=10).text
    assert 'edgerun_requests_total{endpoint="completions",status="429"}' in text or not refused


def test_disconnect_cancels_the_generation(server: dict[str, Any]) -> None:
    url, before = server["url"], _metric(server["url"], "edgerun_completion_tokens_total", "slow")
    body = {"model": "slow", "prompt": "Go", "max_tokens": 200, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", url + "/v1/completions", json=body, headers=AUTH, timeout=30) as r:
        seen = 0
        for line in r.iter_lines():
            seen += line.startswith("data: ")
            if seen == 3:
                break
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not _metric(
        url, "edgerun_generations_cancelled_total", "slow"
    ):
        time.sleep(0.05)
    assert _metric(url, "edgerun_generations_cancelled_total", "slow") == 1
    generated = _metric(url, "edgerun_completion_tokens_total", "slow") - before
    assert generated < 3 + 20  # stopped within a few tokens, not after 200 (2 s)
    assert _metric(url, "edgerun_running", "slow") == 0


def test_disconnect_cancels_a_whole_completion(server: dict[str, Any]) -> None:
    url, name = server["url"], "slow"
    before = _metric(url, "edgerun_generations_cancelled_total", name)
    tokens = _metric(url, "edgerun_completion_tokens_total", name)
    body = {"model": name, "prompt": "Go", "max_tokens": 200, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(url + "/v1/completions", json=body, headers=AUTH, timeout=0.3)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and _metric(url, "edgerun_running", name):
        time.sleep(0.05)
    assert _metric(url, "edgerun_generations_cancelled_total", name) == before + 1
    assert _metric(url, "edgerun_completion_tokens_total", name) - tokens < 0.3 / SLOW_S + 20


_SLOW_CLI = """
import sys, time
from edgerun.backends.ort import OrtBackend
decode = OrtBackend.decode
OrtBackend.decode = lambda self, t: (time.sleep({delay}), decode(self, t))[1]
from edgerun.cli import main
main(sys.argv[1:])
"""


def test_sigterm_drains_the_running_stream(artifact: Path) -> None:
    cmd = [
        sys.executable,
        "-c",
        _SLOW_CLI.format(delay=SLOW_S),
        "serve",
        str(artifact),
        "--port",
        "0",
        "--profile",
        PROFILE,
        "--drain-timeout",
        "10",
    ]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ})
    try:
        line = read_address(proc, 30)
        url = re.search(r"http://127\.0\.0\.1:\d+", line)
        assert url, line
        base, name, results = url.group(0), artifact.name, {}
        body = {
            "model": name,
            "prompt": "Go",
            "max_tokens": 100,
            "stream": True,
            "ignore_eos": True,
            "stream_options": {"include_usage": True},
        }

        def call(key: str) -> None:
            async def one() -> tuple[int, Any]:
                async with httpx.AsyncClient(timeout=30) as c:
                    return await _stream(c, base + "/v1/completions", body)

            results[key] = asyncio.run(one())

        threads = [threading.Thread(target=call, args=(k,)) for k in ("running", "queued")]
        for t in threads:
            t.start()
            time.sleep(0.2)
        deadline = time.monotonic() + 10
        while _metric(base, "edgerun_queue_depth", name) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(timeout=20)
        assert proc.wait(timeout=20) == 0
        assert results["running"] == (200, 100)
        assert results["queued"][0] == 503
        assert results["queued"][1]["error"]["code"] == "shutting_down"
        rest = proc.stderr.read() if proc.stderr else ""
        assert "stopped" in rest and "Traceback" not in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
