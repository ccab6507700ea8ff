"""`edgerun serve` under hostile clients and hostile artifacts (issue 21, items 6-9): floods of
idle sockets, half-sent requests, oversized prompts, chat templates that would never end,
bodies that are not Unicode or nest without end, foreign Host names and content types. Real
uvicorn on 127.0.0.1; every loop is bounded."""

from __future__ import annotations

import json
import logging
import os
import re
import resource
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import edgerun
from edgerun.core.errors import EdgerunError
from edgerun.text.tokenizer import Tokenizer
from tests.runtime_helpers import PROFILE
from tests.serve_helpers import export_onnx, read_address, running

pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

JSON = {"Content-Type": "application/json"}
HOSTILE = "hostile"  # the served model whose chat template each test sets


@pytest.fixture(scope="module")
def artifact(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_onnx(tiny_llama, tmp_path_factory.mktemp("serve-trust") / "out")


@pytest.fixture(scope="module")
def server(artifact: Path) -> Iterator[dict[str, Any]]:
    """A keyless server on loopback with short client deadlines; 'hostile' is a second copy of
    the model whose chat template the tests replace."""
    from edgerun.serve.guard import Limits
    from edgerun.serve.server import make_server

    models = {name: edgerun.load(str(artifact), PROFILE) for name in (artifact.name, HOSTILE)}
    limits = Limits(header_timeout_s=1.0, body_timeout_s=1.0)
    with running(make_server(models, max_body=64 * 1024, limits=limits)) as url:
        yield {"url": url, "name": artifact.name, "models": models}


def _post(url: str, body: Any, headers: dict[str, str] | None = None) -> Any:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(
        url, content=content, headers=JSON if headers is None else headers, timeout=30
    )


def _closed_within(sock: socket.socket, timeout: float) -> bytes | None:
    """What the server sent before closing `sock` within `timeout` s; None if it stayed open."""
    sock.settimeout(0.2)
    got, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            part = sock.recv(4096)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return got
        if not part:
            return got
        got += part
    return None


# Item 6: one client must not freeze the server.


def test_half_sent_requests_are_closed(server: dict[str, Any]) -> None:
    port = int(server["url"].rsplit(":", 1)[1])
    partial_headers = b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    partial_body = (
        b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"model": '
    )
    for request in (b"", partial_headers, partial_body):
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(request)
            answer = _closed_within(sock, 6)
        assert answer is not None, f"the server kept {request[:30]!r}... open"
        if request is partial_body:
            assert answer.startswith(b"HTTP/1.1 408") and b"request_timeout" in answer, answer


def test_a_prompt_too_long_for_the_context_is_refused_untokenized(
    server: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from edgerun.serve.engine import prompt_byte_limit

    model = server["models"][server["name"]]
    calls: list[int] = []
    encode = model.tokenizer.encode
    monkeypatch.setattr(model.tokenizer, "encode", lambda t, **kw: calls.append(1) or encode(t))
    limit = prompt_byte_limit(model.context_length)
    for path, body in (
        ("/v1/completions", {"prompt": "x" * (limit + 1)}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "é" * limit}]}),
    ):
        r = _post(server["url"] + path, {"model": server["name"], "max_tokens": 1, **body})
        error = r.json()["error"]
        assert r.status_code == 400 and error["code"] == "context_length_exceeded", r.text
        assert f"at most {limit} bytes" in error["message"]
    assert calls == []


def test_long_text_encodes_as_the_plain_call(artifact: Path) -> None:
    from edgerun.text.tokenizer import _LONG_TEXT, HFTokenizer

    tok = HFTokenizer(artifact)
    text = "Hello, world! 東京 " * (_LONG_TEXT // 8)
    assert len(text) > _LONG_TEXT
    assert tok.encode(text) == list(tok._tok.encode(text).ids)


_FLOOD_CLI = """
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, ({files}, {files}))
from edgerun.cli import main
main(sys.argv[1:])
"""


def test_a_flood_of_idle_sockets_leaves_the_server_answering(artifact: Path) -> None:
    files, flood = 160, 300  # the server may open 160 files; 300 sockets connect and wait
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < flood + 64:
        pytest.skip(f"this test needs {flood + 64} open files; the limit is {soft}")
    cmd = [sys.executable, "-c", _FLOOD_CLI.format(files=files), "serve", str(artifact)]
    cmd += ["--port", "0", "--profile", PROFILE, "--drain-timeout", "1"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ})
    sockets: list[socket.socket] = []
    try:
        url = re.search(r"http://127\.0\.0\.1:(\d+)", read_address(proc, 60))
        assert url, "no address"
        for i in range(flood):
            sock = socket.create_connection(("127.0.0.1", int(url.group(1))), timeout=5)
            sock.sendall(b"GET /health HTTP/1.1\r\n" if i % 2 else b"")
            sockets.append(sock)
        health = httpx.get(url.group(0) + "/health", timeout=10)
        assert health.status_code == 200
        closed = sum(_closed_within(s, 0.05) is not None for s in sockets)
        assert closed >= flood - files // 2, closed  # the oldest idle ones made room
    finally:
        for sock in sockets:
            sock.close()
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if "connection" in line.lower()]
    # once per kind, never per connection: the connection cap's warning, and (when the burst
    # also reaches the open-file limit first, which depends on timing) accept()'s one line
    kinds = ["flooding", "cannot accept connections"]
    assert any("flooding" in line for line in lines) and len(lines) <= len(kinds), lines
    assert all(sum(kind in line for line in lines) <= 1 for kind in kinds), lines


# Item 7: chat templates are bounded in time and output.

HOSTILE_TEMPLATES = {
    "repeat": "{{ 'ab' * 100000000 }}",
    "nested ranges": "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}"
    "{% endfor %}",
    "doubling": "{% set ns = namespace(s='ab') %}{% for i in range(40) %}"
    "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}",
    "macro doubling": "{% macro d(s, n) %}{{ d(s ~ s, n - 1) if n else s|length }}{% endmacro %}"
    "{{ d('ab', 40) }}",
    "power": "{{ 7 ** 100000000 }}",
    "center": "{{ 'a'|center(999999999) }}",
    "format width": "{{ '{:>999999999}'.format(1) }}",
    "percent width": "{{ '%999999999d' % 1 }}",
    "ljust": "{{ 'a'.ljust(999999999) }}",
    "output": "{% for m in range(100000) %}{{ 'x' * 1000 }}{% endfor %}",
    "lipsum": "{{ lipsum(100000) }}",
}


class _TemplateOnly(Tokenizer):
    """A tokenizer that only renders templates: the library path of `run --chat` and chat()."""

    def __init__(self, template: str) -> None:
        self.chat_template = template

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [len(text)]

    def decode(self, ids: Any, skip_special_tokens: bool = False) -> str:
        return ""


@pytest.fixture
def quick_templates(monkeypatch: pytest.MonkeyPatch) -> None:
    """Templates get 0.5 s instead of the default (to keep the tests short)."""
    from edgerun.text import chat_template

    monkeypatch.setattr(chat_template, "TIME_S", 0.5)


@pytest.mark.parametrize("name", HOSTILE_TEMPLATES)
def test_hostile_chat_template_is_one_error(name: str, quick_templates: None) -> None:
    start = time.monotonic()
    with pytest.raises(EdgerunError, match="chat template") as error:
        _TemplateOnly(HOSTILE_TEMPLATES[name]).apply_chat_template(
            [{"role": "user", "content": "hi"}]
        )
    assert time.monotonic() - start < 30  # a bound on the test, not a speed claim
    assert "\n" not in str(error.value)


REAL_TEMPLATE = (  # what real templates use: namespace, loop, tojson, filters, str methods
    "{% set ns = namespace(system='') %}{% for m in messages %}{% if m['role'] == 'system' %}"
    "{% set ns.system = m['content']|trim %}{% endif %}{% endfor %}"
    "{{ bos_token }}{% if ns.system %}[SYS {{ ns.system|tojson }}]{% endif %}"
    "{% for i in range(messages|length) %}{% set m = messages[i] %}"
    "{% if m.role != 'system' %}<{{ m.role|upper }} n={{ loop.index }}/{{ loop.length }}>"
    "{{ m.content.strip() if m.content.startswith(' ') else m.content }}"
    "{{ '%s' % '' }}{% if not loop.last %}\n{% endif %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '=' * 3 }}{% endif %}"
)


def test_a_real_template_renders_as_in_transformers_sandbox() -> None:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    messages = [
        {"role": "system", "content": " Be brief. "},
        {"role": "user", "content": " Hi"},
        {"role": "assistant", "content": "Hello 東京"},
    ]
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = lambda x: json.dumps(x, ensure_ascii=False)
    variables = {"add_generation_prompt": True, "bos_token": "<s>"}
    expected = env.from_string(REAL_TEMPLATE).render(messages=messages, **variables)
    tok = _TemplateOnly(REAL_TEMPLATE)
    tok.special_tokens = {"bos_token": "<s>"}
    assert tok.apply_chat_template(messages) == expected
    assert expected.startswith('<s>[SYS "Be brief."]<USER n=2/3>Hi') and expected.endswith("===")


@pytest.mark.parametrize("name", ["repeat", "nested ranges"])
def test_serve_answers_a_hostile_template_with_400(
    server: dict[str, Any], name: str, quick_templates: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    hostile = server["models"][HOSTILE].tokenizer
    monkeypatch.setattr(hostile, "chat_template", HOSTILE_TEMPLATES[name])
    body = {"model": HOSTILE, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    r = _post(server["url"] + "/v1/chat/completions", body)
    assert r.status_code == 400, r.text
    assert "chat template" in r.json()["error"]["message"]
    assert httpx.get(server["url"] + "/health", timeout=10).status_code == 200


# Item 8: every bad body is a 4xx JSON error, never a traceback.

LONE = "\\ud800"
BAD_BODIES = [
    ("/v1/completions", '{"model": "' + LONE + '", "prompt": "hi"}', "model"),
    ("/v1/completions", '{"model": "$M", "prompt": "a' + LONE + 'b"}', "prompt"),
    (
        "/v1/chat/completions",
        '{"model": "$M", "messages": [{"role": "user", "content": "' + LONE + '"}]}',
        "messages[0].content",
    ),
    ("/v1/completions", '{"model": "$M", "prompt": "hi", "x' + LONE + '": 1}', None),
    (
        "/v1/completions",
        '{"model": "$M", "prompt": "hi", "x": ' + "[" * 30_000 + "]" * 30_000 + "}",
        None,
    ),
    ("/v1/completions", '{"model": "$M", "prompt": "hi", "x": ' + "[" * 40 + "]" * 40 + "}", None),
]


@pytest.mark.parametrize(("path", "body", "param"), BAD_BODIES)
def test_bad_bodies_are_4xx_json_without_a_traceback(
    server: dict[str, Any],
    path: str,
    body: str,
    param: str | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    r = _post(server["url"] + path, body.replace("$M", server["name"]).encode())
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if param is not None:
        assert error["param"] == param
    assert not [rec for rec in caplog.records if rec.exc_info or rec.levelno >= logging.ERROR]


# Item 9: Host names, content types, empty keys, redirects.


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("evil.example", 400),
        ("evil.example:$P", 400),
        ("localhost:1", 400),
        ("localhost:$P", 200),
        ("127.0.0.1:$P", 200),
        ("[::1]:$P", 200),
        ("localhost", 200),
    ],
)
def test_only_loopback_host_names_are_answered(
    server: dict[str, Any], host: str, status: int
) -> None:
    port = server["url"].rsplit(":", 1)[1]
    r = httpx.get(server["url"] + "/v1/models", headers={"Host": host.replace("$P", port)})
    assert r.status_code == status, r.text
    if status == 400:
        assert r.json()["error"]["code"] == "invalid_host"


def test_allowed_hosts_and_any(artifact: Path) -> None:
    from edgerun.serve.server import allowed_hosts_for

    assert allowed_hosts_for("127.0.0.1", ["box.lan"]) == [
        "localhost",
        "127.0.0.1",
        "[::1]",
        "box.lan",
    ]
    assert allowed_hosts_for("0.0.0.0") == ["*"]
    assert allowed_hosts_for("192.168.1.5", ["box.lan:8000"]) == ["box.lan:8000"]


@pytest.mark.parametrize("media", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_non_json_content_types_get_415(server: dict[str, Any], media: str | None) -> None:
    body = {"model": server["name"], "prompt": "hi", "max_tokens": 1}
    r = _post(server["url"] + "/v1/completions", body, {"Content-Type": media} if media else {})
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
    ok = _post(
        server["url"] + "/v1/completions", body, {"Content-Type": "application/json; charset=utf-8"}
    )
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("key", ["", " ", "two words", "\tkey"])
def test_an_empty_or_blank_api_key_is_refused(key: str) -> None:
    from edgerun.serve.server import make_server

    with pytest.raises(EdgerunError, match="API key"):
        make_server({}, api_key=key)


def test_no_redirect_echoes_the_host(server: dict[str, Any]) -> None:
    port = server["url"].rsplit(":", 1)[1]
    for path in ("/v1/models/", "/health/"):
        r = httpx.get(server["url"] + path, headers={"Host": f"localhost:{port}"})
        assert r.status_code == 404 and "location" not in r.headers, r.headers
        assert r.json()["error"]["message"]
