"""The structured-output fields of an OpenAI request: `response_format` (json_object,
json_schema) and `tools` / `tool_choice` / `parallel_tool_calls`, checked into a Structured
(ApiError 400 naming the field otherwise; a schema that cannot be compiled is a 400 saying why,
before the request waits for its model)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from edgerun.core.errors import EdgerunError
from edgerun.serve.schema import ApiError, GenerationRequest
from edgerun.text import constrain, tools
from edgerun.text.tokenizer import Tokenizer

MAX_TOOLS = 128  # as OpenAI
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")  # OpenAI's rule for function names
FIELDS = ("response_format", "tools", "tool_choice", "parallel_tool_calls")


@dataclass
class Structured:
    """What a request asks of the output: a grammar (response_format), or tools to call."""

    grammar: constrain.Grammar | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] = "auto"
    parallel: bool = True

    @property
    def calls_tools(self) -> bool:
        """Whether the reply is parsed for tool calls (tools given, tool_choice not "none")."""
        return bool(self.tools) and self.tool_choice != "none"


def parse_structured(body: dict[str, Any], chat: bool) -> Structured | None:
    """The structured-output fields of `body` (None when it has none); raise ApiError."""
    if not any(body.get(key) is not None for key in FIELDS):
        return None
    out = Structured(grammar=_response_format(body.get("response_format")))
    tools = body.get("tools")
    if tools is not None:
        if not chat:
            raise ApiError(400, "'tools' are served on /v1/chat/completions only", "tools")
        out.tools = _tools(tools)
    choice = body.get("tool_choice")
    if choice is not None:
        out.tool_choice = _tool_choice(choice, out.tools)
    parallel = body.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise ApiError(400, "'parallel_tool_calls' must be a boolean", "parallel_tool_calls")
    out.parallel = parallel is not False
    if out.calls_tools and out.grammar is not None:
        raise ApiError(
            400,
            "'response_format' and 'tools' together are not served: send tool_choice 'none'"
            " or leave out response_format",
            "response_format",
        )
    return out


def _response_format(value: Any) -> constrain.Grammar | None:
    param = "response_format"
    if value is None:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise ApiError(400, "'response_format' must be an object with a string 'type'", param)
    kind = value["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return constrain.json_object()
    if kind != "json_schema":
        raise ApiError(
            400,
            f"response_format type '{kind}' is not served: use 'text', 'json_object' or"
            " 'json_schema'",
            param + ".type",
        )
    spec = value.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
        raise ApiError(
            400,
            "response_format 'json_schema' needs 'json_schema': {'name': ..., 'schema': {...}}",
            param + ".json_schema",
        )
    name = str(spec.get("name") or "the JSON schema")
    grammar = constrain.json_schema(spec.get("schema", {}), f"the JSON schema '{name}'")
    _compiles(grammar, param + ".json_schema.schema")
    return grammar


def _tools(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise ApiError(400, "'tools' must be a non-empty list", "tools")
    if len(value) > MAX_TOOLS:
        raise ApiError(400, f"'tools' takes at most {MAX_TOOLS} tools, got {len(value)}", "tools")
    out: list[dict[str, Any]] = []
    for i, tool in enumerate(value):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise ApiError(400, f"'{where}' must be a tool of type 'function'", where)
        function = tool.get("function")
        if not isinstance(function, dict) or not _NAME.fullmatch(str(function.get("name", ""))):
            raise ApiError(
                400,
                f"'{where}.function.name' must be 1-64 letters, digits, '_' or '-'",
                f"{where}.function.name",
            )
        params = function.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise ApiError(400, f"'{where}.function.parameters' must be an object", where)
        if params is not None:
            _compiles(constrain.json_schema(params, f"the parameters of {function['name']}"), where)
        out.append({"type": "function", "function": function})
    names = [str(t["function"]["name"]) for t in value]
    if len(set(names)) != len(names):
        raise ApiError(400, "'tools' names a function twice", "tools")
    return out


def _tool_choice(value: Any, given: list[dict[str, Any]] | None) -> str | dict[str, Any]:
    param = "tool_choice"
    if given is None:
        raise ApiError(400, "'tool_choice' is only allowed when 'tools' are given", param)
    if isinstance(value, str):
        if value not in tools.CHOICES:
            raise ApiError(
                400,
                f"tool_choice '{value}' is not served: use 'auto', 'none', 'required' or"
                " {'type': 'function', 'function': {'name': ...}}",
                param,
            )
        return value
    function = value.get("function") if isinstance(value, dict) else None
    if not isinstance(function, dict) or value.get("type") != "function":
        raise ApiError(
            400,
            "this tool_choice is not served: use 'auto', 'none', 'required' or"
            " {'type': 'function', 'function': {'name': ...}}",
            param,
        )
    names = [t["function"]["name"] for t in given]
    if function.get("name") not in names:
        raise ApiError(
            400,
            f"tool_choice names the function '{function.get('name')}', which is not in 'tools'",
            param,
        )
    return {"type": "function", "function": {"name": function["name"]}}


def _compiles(grammar: constrain.Grammar, param: str) -> None:
    try:
        constrain.check(grammar)
    except EdgerunError as exc:
        raise ApiError(400, str(exc), param, "invalid_schema") from None


def prompt(
    tokenizer: Tokenizer, request: GenerationRequest, max_chars: int
) -> tuple[list[int], constrain.Grammar | None]:
    """The chat's prompt ids (tools rendered in the template's convention) and the grammar."""
    wanted = request.structured
    assert request.messages is not None
    if wanted is None or not wanted.tools:
        grammar = wanted.grammar if wanted is not None else None
        return tokenizer.encode_chat(request.messages, max_chars=max_chars), grammar
    plan = tools.prepare(
        tokenizer, request.messages, wanted.tools, wanted.tool_choice, wanted.parallel, max_chars
    )
    return plan.ids, plan.grammar or wanted.grammar


def reply(text: str, request: GenerationRequest, tokenizer: Tokenizer) -> dict[str, Any] | None:
    """The assistant message of `text` with its tool calls in OpenAI's shape, when the request
    gave tools and the text holds calls; None otherwise (the text is the content)."""
    wanted = request.structured
    if wanted is None or not wanted.calls_tools:
        return None
    parsed = tools.parse(tools.convention_for(tokenizer.chat_template), text)
    if not parsed.calls:
        return None
    calls = [call.to_openai() for call in parsed.calls]
    return {"role": "assistant", "content": parsed.content, "tool_calls": calls}
