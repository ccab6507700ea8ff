"""Tool calling in the chat template's own convention: OpenAI `tools` rendered into the prompt,
the reply constrained to the convention's call syntax (edgerun.text.constrain), and the calls parsed
back into OpenAI's shape.

    plan = tools.prepare(model.tokenizer, messages, [weather_tool], tool_choice="auto")
    text = "".join(c.text for c in model.generate(plan.ids, grammar=plan.grammar))
    reply = plan.parse(text)          # reply.calls: [ToolCall(name, arguments JSON, id)]

A convention is data (CONVENTIONS): the text that marks it in a template, how calls are written,
and whether the template renders the tools itself. A template that defines no tool calling gets
the last entry, SmolLM2's published prompt, as a system message.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edgerun.text.constrain import Grammar, json_grammar
from edgerun.text.json_close import reserve_for
from edgerun.text.tokenizer import Tokenizer

CHOICES = ("auto", "none", "required")


@dataclass(frozen=True)
class Convention:
    """How one family writes tool calls: `opener` JSON `closer`, one call per block or
    (`as_list`) a JSON list of calls in one block; the arguments under `args_key`."""

    name: str
    marker: str | None  # text of the chat template that identifies it; None: the fallback
    opener: str
    closer: str
    as_list: bool = False
    args_key: str = "arguments"
    in_template: bool = True  # the template renders `tools`; else a system prompt is added


CONVENTIONS: tuple[Convention, ...] = (
    # Qwen2.5 / Qwen3, Hermes 2 Pro / 3, SmolLM3: <tool_call>\n{"name", "arguments"}\n</tool_call>
    Convention("hermes", "<tool_call>", "<tool_call>\n", "\n</tool_call>"),
    # Llama 3.1 / 3.2 / 3.3 custom tools: a bare {"name", "parameters"} object
    Convention(
        "llama3", "dictionary of argument name and its value", "", "", args_key="parameters"
    ),
    # SmolLM2 (model card's function-calling prompt): <tool_call>[{...}, ...]</tool_call>
    Convention("smollm2", None, "<tool_call>", "</tool_call>", as_list=True, in_template=False),
)

# SmolLM2-Instruct's function-calling system prompt, as its model card gives it.
_SYSTEM_PROMPT = (
    "You are an expert in composing functions. You are given a question and a set of possible"
    " functions. Based on the question, you will need to make one or more function/tool calls to"
    " achieve the purpose. If none of the functions can be used, point it out and refuse to"
    " answer. If the given question lacks the parameters required by the function, also point it"
    " out.\n\nYou have access to the following tools:\n<tools>{tools}</tools>\n\nThe output MUST"
    " strictly adhere to the following format, and NO other text MUST be included.\nThe example"
    " format is as follows. Please make sure the parameter type is correct.\n<tool_call>[\n"
    '{{"name": "func_name1", "arguments": {{"argument1": "value1", "argument2": "value2"}}}},\n'
    "... (more tool calls as required)\n]</tool_call>"
)


@dataclass(frozen=True)
class ToolCall:
    """One call in OpenAI's terms: the function's name, its arguments as JSON text, an id."""

    name: str
    arguments: str
    id: str = field(default_factory=lambda: "call_" + uuid.uuid4().hex[:24])

    def to_openai(self) -> dict[str, Any]:
        function = {"name": self.name, "arguments": self.arguments}
        return {"id": self.id, "type": "function", "function": function}


@dataclass(frozen=True)
class Reply:
    """A parsed reply: its text (None when it is only calls) and its tool calls."""

    content: str | None
    calls: list[ToolCall]


@dataclass(frozen=True)
class Plan:
    """What to generate for a chat with tools: prompt ids, the grammar (None: unconstrained)."""

    ids: list[int]
    grammar: Grammar | None
    convention: Convention

    def parse(self, text: str) -> Reply:
        return parse(self.convention, text)


def convention_for(template: str | None) -> Convention:
    """The convention whose marker the chat template contains; else the fallback (last)."""
    for convention in CONVENTIONS:
        if convention.marker is not None and template and convention.marker in template:
            return convention
    return CONVENTIONS[-1]


def prepare(
    tokenizer: Tokenizer,
    messages: Sequence[dict[str, Any]],
    tools: Sequence[dict[str, Any]],
    tool_choice: str | dict[str, Any] = "auto",
    parallel: bool = True,
    max_chars: int | None = None,
) -> Plan:
    """Render `messages` with `tools` (OpenAI function tools) in the template's convention and
    build the grammar for `tool_choice`: "auto" (text or calls), "required" (calls), "none"
    (no grammar) or {"type": "function", "function": {"name": ...}} (that function only)."""
    convention = convention_for(tokenizer.chat_template)
    rendered = [_message(convention, m) for m in messages]
    if convention.in_template:
        ids = tokenizer.encode_chat(rendered, max_chars=max_chars, tools=tools)
    else:
        ids = tokenizer.encode_chat(_with_system(rendered, tools), max_chars=max_chars)
    return Plan(ids, grammar(convention, tools, tool_choice, parallel), convention)


def grammar(
    convention: Convention,
    tools: Sequence[dict[str, Any]],
    tool_choice: str | dict[str, Any] = "auto",
    parallel: bool = True,
) -> Grammar | None:
    """The Lark grammar of a reply in `convention` for `tool_choice` (None for "none"). Its
    reserve fits the longest of the functions' shortest calls: a call that would run past
    max_tokens is steered to its end (edgerun.text.json_close); for "auto" once it has begun."""
    if tool_choice == "none":
        return None
    functions = [t["function"] for t in tools]
    if isinstance(tool_choice, dict):
        functions = [f for f in functions if f["name"] == tool_choice["function"]["name"]]
    calls = [_call_schema(convention, f) for f in functions]
    spelled = json_grammar(_block(convention, calls, parallel))
    body = f"{_lit(convention.opener)} {spelled} {_lit(convention.closer)}"
    if convention.as_list:
        rules = f"calls: {body}\n"
    else:
        many = ' ("\\n" call)*' if parallel else ""
        rules = f"calls: call{many}\ncall: {body}\n"
    # the model may pick any of the functions: room for the one whose shortest call is longest
    closing = len(convention.closer.encode("utf-8"))
    reserve = max((reserve_for(_block(convention, [c], parallel)) for c in calls), default=0)
    reserve += closing
    what = "the tools' grammar"
    if tool_choice == "auto":
        # Text may not begin as a call would (the first character decides which it is).
        first = (convention.opener or "{")[0]
        text = "/[^" + re.escape(first).replace("/", "\\/") + "](.|\\n)*/"
        lark = f"start: calls | TEXT\nTEXT: {text}\n{rules}"
        return Grammar(lark, what, reserve, close_after=first)
    return Grammar(f"start: calls\n{rules}", what, reserve)


def _block(convention: Convention, calls: list[dict[str, Any]], parallel: bool) -> dict[str, Any]:
    """The JSON between a call's opener and closer: one of `calls`, or a list of them."""
    call = {"anyOf": calls}
    if not convention.as_list:
        return call
    block = {"type": "array", "items": call, "minItems": 1}
    return block if parallel else {**block, "maxItems": 1}


def parse(convention: Convention, text: str) -> Reply:
    """The calls written in `text` in `convention`; text that holds none (or a call cut off by
    max_tokens inside its JSON) comes back whole as content. A call whose JSON is whole but
    whose closing tag was cut is a call."""
    found: list[dict[str, Any]] = []
    head = text
    if convention.opener:
        opener, closer = convention.opener.strip(), convention.closer.strip()
        blocks = re.findall(re.escape(opener) + r"(.*?)" + re.escape(closer), text, re.S)
        head = text.split(opener, 1)[0]
        last = text.rfind(opener)
        if last >= 0 and closer not in text[last:]:  # max_tokens cut the closing tag only:
            tail = text[last + len(opener) :].rstrip()  # a whole call is still a call
            cut = next((n for n in range(len(closer) - 1, 0, -1) if tail.endswith(closer[:n])), 0)
            tail = tail[: len(tail) - cut]  # the start of the closing tag written
            if not isinstance(_json(tail), str):
                blocks.append(tail)
    else:
        blocks, head = [text.strip().removeprefix("<|python_tag|>")], ""
    for block in blocks:
        value = _json(block)
        items = value if isinstance(value, list) else [value]
        found += [i for i in items if isinstance(i, dict) and isinstance(i.get("name"), str)]
    calls = [_tool_call(convention, item) for item in found]
    if not calls or None in calls:
        return Reply(text, [])
    return Reply(head.strip() or None, [c for c in calls if c is not None])


def _tool_call(convention: Convention, item: dict[str, Any]) -> ToolCall | None:
    args = item.get(convention.args_key, item.get("arguments", item.get("parameters", {})))
    if not isinstance(args, dict):
        return None
    return ToolCall(item["name"], json.dumps(args, ensure_ascii=False))


def _call_schema(convention: Convention, function: dict[str, Any]) -> dict[str, Any]:
    params = function.get("parameters") or {"type": "object", "properties": {}}
    if "properties" in params and "additionalProperties" not in params:
        params = {**params, "additionalProperties": False}  # the declared parameters only
    return {
        "type": "object",
        "properties": {"name": {"const": function["name"]}, convention.args_key: params},
        "required": ["name", convention.args_key],
        "additionalProperties": False,
    }


def _message(convention: Convention, message: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI message as chat templates take it: tool-call arguments as objects (HF's
    convention); for a template without tools, calls and results written out as text."""
    calls = message.get("tool_calls") or []
    if convention.in_template:
        if not calls:
            return message
        fixed = [
            {**c, "function": {**c["function"], "arguments": _json(c["function"]["arguments"])}}
            for c in calls
        ]
        return {**message, "tool_calls": fixed}
    if message.get("role") == "tool":
        return {
            "role": "user",
            "content": f"<tool_response>\n{message['content']}\n</tool_response>",
        }
    if not calls:
        return message
    items = [
        {"name": c["function"]["name"], "arguments": _json(c["function"]["arguments"])}
        for c in calls
    ]
    text = convention.opener + json.dumps(items, ensure_ascii=False) + convention.closer
    content = message.get("content") or ""
    return {"role": message["role"], "content": (content + "\n" if content else "") + text}


def _with_system(
    messages: list[dict[str, Any]], tools: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    listed = json.dumps([t["function"] for t in tools], ensure_ascii=False)
    prompt = _SYSTEM_PROMPT.format(tools=listed)
    if messages and messages[0].get("role") == "system":
        first = messages[0]
        return [{**first, "content": f"{first.get('content') or ''}\n\n{prompt}"}, *messages[1:]]
    return [{"role": "system", "content": prompt}, *messages]


def _json(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def _lit(text: str) -> str:
    """A Lark string literal (JSON's escapes are Lark's); an empty one is left out."""
    return json.dumps(text) if text else ""
