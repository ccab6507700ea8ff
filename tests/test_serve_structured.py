"""Structured output and tool calls through `edgerun serve`: a real server on a loopback port,
driven by the official `openai` client; a tiny random model whose chat template defines tools
(Qwen2.5's <tool_call> convention) and one whose template does not (SmolLM2's fallback)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import edgerun
from tests.runtime_helpers import PROFILE
from tests.serve_helpers import export_onnx, running
from tests.structured_helpers import NOTE, SCHEMA, conforms

pytest.importorskip("uvicorn")
pytest.importorskip("llguidance")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

KEY = "test-key"
# Qwen2.5's tool-calling chat template, shortened (same system prompt, call and result syntax).
HERMES_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\nYou may call one or more functions.\n<tools>"
    "{%- for tool in tools %}\n{{ tool | tojson }}{%- endfor %}\n</tools>\n"
    'For each function call, return <tool_call>\n{"name": <function-name>, "arguments":'
    " <args-json-object>}\n</tool_call><|im_end|>\n{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'tool' %}<|im_start|>user\n<tool_response>\n{{ message.content }}"
    "\n</tool_response><|im_end|>\n"
    "{%- else %}<|im_start|>{{ message.role }}\n{{ message.content }}"
    "{%- for call in message.tool_calls or [] %}\n<tool_call>\n"
    '{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}'
    "\n</tool_call>{%- endfor %}<|im_end|>\n{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"enum": ["Paris", "Oslo"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
CLOCK = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
# Room for a call of NOTE (71 tokens of the tiny tokenizer at the shortest; reserve 93 or 95)
# after the model has wandered in its arguments for a while.
MAX_CALL_TOKENS = 160


def test_the_checker_can_fail() -> None:
    good = {"mood": "calm", "ok": True, "level": 3, "tags": ["a"]}
    assert conforms(good, SCHEMA)
    assert not conforms({**good, "level": 10}, SCHEMA)
    assert not conforms({**good, "extra": 1}, SCHEMA)
    assert not conforms({**good, "tags": ["a", "c"]}, SCHEMA)


@pytest.fixture(scope="module")
def artifacts(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny llama, with a context of 2048 (room for a tool prompt), exported twice: with
    Qwen2.5's tool template, and with its own plain one."""
    root = tmp_path_factory.mktemp("structured")
    out = {}
    for name in ("tools", "plain"):
        src = root / f"{name}-src"
        shutil.copytree(tiny_llama, src)
        _edit_json(src / "config.json", max_position_embeddings=2048)
        if name == "tools":
            (src / "chat_template.jinja").unlink(missing_ok=True)
            _edit_json(src / "tokenizer_config.json", chat_template=HERMES_TEMPLATE)
        out[name] = export_onnx(src, root / name)
    return out


def _edit_json(path: Path, **values: Any) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **values}))


@pytest.fixture(scope="module")
def server(artifacts: dict[str, Path]) -> Iterator[str]:
    from edgerun.serve.server import make_server

    models = {name: edgerun.load(str(path), PROFILE) for name, path in artifacts.items()}
    srv = make_server(models, api_key=KEY, max_queue=4, max_body=64 * 1024, drain_s=5)
    with running(srv) as url:
        yield url


@pytest.fixture()
def client(server: str) -> Any:
    return openai.OpenAI(base_url=server + "/v1", api_key=KEY, timeout=60, max_retries=0)


def _schema_format() -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "mood", "schema": SCHEMA}}


def test_json_object_output_parses(client: Any) -> None:
    # Any object is an infinite language: a random model may wander inside a string until
    # max_tokens draws near; then it is steered to the end (edgerun.text.json_close).
    for seed in range(1, 7):
        choice = client.chat.completions.create(
            model="plain",
            messages=ASK,
            response_format={"type": "json_object"},
            temperature=1.0,
            seed=seed,
            max_tokens=200,
        ).choices[0]
        assert choice.finish_reason == "stop"
        assert isinstance(json.loads(choice.message.content), dict)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_json_schema_output_validates(client: Any, seed: int) -> None:
    out = client.chat.completions.create(
        model="plain",
        messages=ASK,
        response_format=_schema_format(),
        temperature=1.0,
        seed=seed,
        max_tokens=600,
    )
    assert out.choices[0].finish_reason == "stop"
    assert conforms(json.loads(out.choices[0].message.content), SCHEMA)


def test_json_schema_streamed_is_the_whole_reply(client: Any) -> None:
    kwargs = dict(
        model="plain", messages=ASK, response_format=_schema_format(), temperature=0, max_tokens=600
    )
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    events = list(client.chat.completions.create(**kwargs, stream=True))
    assert "".join(e.choices[0].delta.content or "" for e in events if e.choices) == whole
    assert conforms(json.loads(whole), SCHEMA)


# Strings and an array with no bound: a random model wanders inside them for as long as it may.
OPEN = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "steps": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "count": {"type": "integer"},
    },
    "required": ["title", "steps", "count"],
    "additionalProperties": False,
}


# The tiny tokenizer spells OPEN's shortest instance in 32 tokens; its reserve is 51.
@pytest.mark.parametrize("max_tokens", [120, 36])
def test_an_unbounded_schema_still_ends_within_max_tokens(client: Any, max_tokens: int) -> None:
    # as max_tokens draws near the reply is steered to its end (edgerun.text.json_close); with
    # less than the reserve from the first token on
    fmt = {"type": "json_schema", "json_schema": {"name": "open", "schema": OPEN}}
    for seed in range(1, 7):
        out = client.chat.completions.create(
            model="plain",
            messages=ASK,
            response_format=fmt,
            temperature=1.0,
            seed=seed,
            max_tokens=max_tokens,
        )
        value = json.loads(out.choices[0].message.content)
        assert set(value) == set(OPEN["required"]) and isinstance(value["count"], int)
        assert isinstance(value["title"], str) and len(value["steps"]) >= 1
        assert all(isinstance(step, str) for step in value["steps"])
        assert out.choices[0].finish_reason == "stop"
        assert out.usage.completion_tokens <= max_tokens


def test_a_completion_takes_a_schema_too(client: Any) -> None:
    out = client.completions.create(
        model="plain",
        prompt="Mood:",
        temperature=0,
        max_tokens=600,
        extra_body={"response_format": _schema_format()},
    )
    assert conforms(json.loads(out.choices[0].text), SCHEMA)


def _round_trip(client: Any, model: str, **kwargs: Any) -> tuple[Any, Any]:
    """A tool call, then the conversation with the call and its result sent back."""
    first = client.chat.completions.create(
        model=model,
        messages=ASK,
        tools=[WEATHER, CLOCK],
        temperature=0,
        max_tokens=500,
        parallel_tool_calls=False,
        **kwargs,
    )
    message = first.choices[0].message
    result = {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": "18 C, sunny"}
    history = [*ASK, message.model_dump(exclude_none=True), result]
    second = client.chat.completions.create(
        model=model, messages=history, tools=[WEATHER, CLOCK], temperature=0, max_tokens=8
    )
    return first, second


@pytest.mark.parametrize("model", ["tools", "plain"])
def test_tool_call_round_trip(client: Any, model: str) -> None:
    first, second = _round_trip(client, model, tool_choice="required")
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert len(choice.message.tool_calls) == 1  # parallel_tool_calls=False
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name in ("get_weather", "get_time")
    if call.function.name == "get_weather":
        assert json.loads(call.function.arguments)["city"] in ("Paris", "Oslo")
    assert second.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_a_named_tool_is_the_one_called(client: Any) -> None:
    choice = {"type": "function", "function": {"name": "get_time"}}
    first, _ = _round_trip(client, "tools", tool_choice=choice)
    assert [c.function.name for c in first.choices[0].message.tool_calls][0] == "get_time"
    assert json.loads(first.choices[0].message.tool_calls[0].function.arguments) == {}


def test_streamed_tool_calls(client: Any) -> None:
    events = list(
        client.chat.completions.create(
            model="tools",
            messages=ASK,
            tools=[WEATHER],
            tool_choice="required",
            parallel_tool_calls=False,
            temperature=0,
            max_tokens=500,
            stream=True,
        )
    )
    calls = [c for e in events if e.choices for c in e.choices[0].delta.tool_calls or []]
    assert calls and calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments)["city"] in ("Paris", "Oslo")
    assert [e.choices[0].finish_reason for e in events if e.choices][-1] == "tool_calls"


@pytest.mark.parametrize("model", ["tools", "plain"])
@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "save_note"}}]
)
def test_a_tool_call_short_of_max_tokens_is_still_whole(
    client: Any, model: str, choice: Any
) -> None:
    # as with a JSON schema, a call drawing near max_tokens is steered to its end (the reserve
    # of the tool's parameters, edgerun.text.json_close); "auto": tests/test_constrain.py
    params = NOTE["function"]["parameters"]
    for seed in range(1, 5):
        out = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Note down what to buy."}],
            tools=[NOTE, WEATHER] if isinstance(choice, dict) else [NOTE],
            tool_choice=choice,
            parallel_tool_calls=False,
            temperature=1.0,
            seed=seed,
            max_tokens=MAX_CALL_TOKENS,
        )
        message = out.choices[0].message
        assert out.choices[0].finish_reason == "tool_calls", message.content
        assert [c.function.name for c in message.tool_calls] == ["save_note"]
        assert conforms(json.loads(message.tool_calls[0].function.arguments), params)
        assert out.usage.completion_tokens <= MAX_CALL_TOKENS


def test_the_template_gets_the_tools_and_the_result(artifacts: dict[str, Path]) -> None:
    from edgerun.text import tools

    function = {"name": "get_weather", "arguments": '{"city": "Oslo"}'}
    call = {"id": "c1", "type": "function", "function": function}
    history: list[dict[str, Any]] = [
        *ASK,
        {"role": "assistant", "content": "", "tool_calls": [call]},
    ]
    history.append({"role": "tool", "tool_call_id": "c1", "content": "18 C"})
    for name, convention in (("tools", "hermes"), ("plain", "smollm2")):
        with edgerun.load(str(artifacts[name]), PROFILE) as model:
            plan = tools.prepare(model.tokenizer, history, [WEATHER])
            text = model.tokenizer.decode(plan.ids)
        assert plan.convention.name == convention
        assert '"get_weather"' in text and "<tools>" in text
        assert "<tool_response>\n18 C\n</tool_response>" in text
        assert '"arguments": {"city": "Oslo"}' in text  # an object, not a JSON string in a string


def _post(server: str, body: dict[str, Any]) -> Any:
    headers = {"Authorization": f"Bearer {KEY}"}
    return httpx.post(server + "/v1/chat/completions", json=body, headers=headers, timeout=30)


@pytest.mark.parametrize(
    ("extra", "param", "words"),
    [
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "objekt"}}}},
            "response_format.json_schema.schema",
            "Invalid type: objekt",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"schema": {"pattern": "("}}}},
            "response_format.json_schema.schema",
            "regex",
        ),
        ({"response_format": {"type": "xml"}}, "response_format.type", "'xml' is not served"),
        # keywords llguidance does not enforce are refused by name, never ignored
        *[
            (
                {"response_format": {"type": "json_schema", "json_schema": {"schema": schema}}},
                "response_format.json_schema.schema",
                words,
            )
            for schema, words in [
                ({"type": "array", "uniqueItems": True}, "uniqueItems"),
                ({"not": {"type": "string"}}, "not"),
                ({"type": "object", "if": {}, "then": {}}, '"if", "then"'),
                ({"type": "string", "format": "shoe-size"}, "Unknown format: shoe-size"),
                ({"type": "object", "required": [[1]]}, "Expected string for 'required'"),
            ]
        ],
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice", "'sometimes'"),
        (
            {"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "x"}}},
            "tool_choice",
            "'x', which is not in 'tools'",
        ),
        ({"tools": [WEATHER], "tool_choice": {"type": "allowed_tools"}}, "tool_choice", "not served"),
        ({"tool_choice": "auto"}, "tool_choice", "only allowed when 'tools'"),
        ({"tools": [{"type": "function", "function": {"name": "a b"}}]}, "tools[0].function.name", "letters"),
        (
            {"tools": [{**WEATHER, "function": {"name": "f", "parameters": {"type": "objekt"}}}]},
            "tools[0]",
            "the parameters of f cannot be compiled",
        ),
    ],
)  # fmt: skip
def test_bad_structured_fields_are_400s(
    server: str, extra: dict[str, Any], param: str, words: str
) -> None:
    response = _post(server, {"model": "plain", "messages": ASK, **extra})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"], error


def test_tools_on_a_completion_are_a_400(server: str) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"model": "plain", "prompt": "hi", "tools": [WEATHER]}
    response = httpx.post(server + "/v1/completions", json=body, headers=headers, timeout=30)
    assert response.status_code == 400 and response.json()["error"]["param"] == "tools"
