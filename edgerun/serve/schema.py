"""OpenAI request bodies checked by hand into dataclasses, and the OpenAI error shape.

No web framework here: the checks are plain Python so every bad field becomes a 400 with the
OpenAI error body (`{"error": {message, type, param, code}}`), never a 422 or a traceback.
A field the server does not apply is a 400 naming it, never silently ignored (an app that sends
`tools` must not get a plain completion back as if it had been honoured): UNSUPPORTED lists
OpenAI's fields that are not served, with why; a field neither served nor listed is unknown.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

MAX_STOP = 4  # as OpenAI
MAX_SEED = 2**63 - 1
MAX_DEPTH = 32  # of nested arrays and objects; an OpenAI body needs about 6
MAX_LOGPROBS = 5  # /v1/completions' integer logprobs, as OpenAI
MAX_TOP_LOGPROBS = 20  # /v1/chat/completions' top_logprobs, as OpenAI

# The request fields this server applies, by endpoint (top_k and ignore_eos are extensions, as
# vLLM's; `user` is recorded in the request log).
SERVED_FIELDS = frozenset(
    {"model", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stream"}
    | {"stream_options", "n", "logprobs", "ignore_eos", "user", "response_format"}
)
SERVED_CHAT = frozenset(
    {"messages", "max_completion_tokens", "top_logprobs", "tools", "tool_choice"}
    | {"parallel_tool_calls"}
)
SERVED_COMPLETION = frozenset({"prompt"})

# OpenAI request fields this server does not apply: each is a 400 naming it, with this reason,
# unless its value asks for nothing (null, or the neutral value given). Remove an entry (and
# add it to SERVED_*) when a feature starts applying it.
UNSUPPORTED: dict[str, tuple[str, tuple[Any, ...]]] = {
    "functions": ("function calls are not served", (None, [])),
    "function_call": ("function calls are not served", (None, "none")),
    "logit_bias": ("logit_bias is not applied", (None, {})),
    "presence_penalty": ("penalties are not applied", (None, 0)),
    "frequency_penalty": ("penalties are not applied", (None, 0)),
    "repetition_penalty": ("penalties are not applied", (None, 1)),
    "best_of": ("only one candidate is generated", (None, 1)),
    "echo": ("the prompt is not echoed", (None, False)),
    "suffix": ("insertion (suffix) is not served", (None, "")),
    "modalities": ("only text is served", (None, ["text"])),
    "audio": ("only text is served", (None,)),
    "prediction": ("predicted outputs are not served", (None,)),
    "reasoning_effort": ("reasoning effort is not applied", (None,)),
    "web_search_options": ("web search is not served", (None,)),
    "service_tier": ("service tiers are not served", (None, "auto", "default")),
    "store": ("completions are not stored", (None, False)),
    "metadata": ("completions are not stored", (None, {})),
    "min_p": ("min_p sampling is not applied", (None, 0)),
}


class ApiError(Exception):
    """An error answered as `{"error": {...}}` with HTTP `status`."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        # Echoed client text must stay writable as UTF-8 (a lone surrogate would turn the answer
        # into a plain-text 500).
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = (
            status,
            message,
            param and param.encode("utf-8", "backslashreplace").decode("utf-8"),
            code,
            kind,
        )

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.kind,
                "param": self.param,
                "code": self.code,
            }
        }


@dataclass
class GenerationRequest:
    """What a completion or chat request asks for; `prompt` is text or token ids, `messages`
    a chat (one of the two is set)."""

    model: str
    prompt: str | list[int] | None
    messages: list[dict[str, Any]] | None
    max_tokens: int | None
    temperature: float
    top_p: float
    seed: int | None
    stop: list[str]
    stream: bool
    include_usage: bool
    ignore_eos: bool  # an extension (as vLLM's): generate exactly max_tokens tokens
    top_k: int = 0  # an extension (as vLLM's): 0 keeps every token
    logprobs: int | None = None  # None: none; else this many alternatives per token
    user: str | None = None
    # response_format / tools (edgerun.serve.structured.Structured), set by the app
    structured: Any = None

    def options(self, max_tokens: int) -> dict[str, Any]:
        """Keyword arguments for Model.generate / Model.chat."""
        return dict(
            max_tokens=max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            seed=self.seed,
            stop=self.stop or None,
            ignore_eos=self.ignore_eos,
            logprobs=self.logprobs,
        )


def parse_json(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object of text that is valid Unicode, at most MAX_DEPTH deep;
    ApiError 400 otherwise."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}") from exc
    except RecursionError:
        raise ApiError(400, f"the request body nests deeper than {MAX_DEPTH} levels") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    _check_tree(body)
    return body


def _check_tree(body: dict[str, Any]) -> None:
    """Refuse nesting past MAX_DEPTH and strings holding a lone surrogate ("\\ud800" is valid
    JSON but no character: it can be neither tokenized nor written back as UTF-8)."""
    stack: list[tuple[Any, str, int]] = [(body, "", 1)]
    while stack:
        value, path, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ApiError(400, f"the request body nests deeper than {MAX_DEPTH} levels", path)
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            where = f"{path}[{key}]" if isinstance(key, int) else _join(path, key)
            if not _is_unicode(key) or (isinstance(item, str) and not _is_unicode(item)):
                raise ApiError(
                    400,
                    "the request body holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is"
                    " no character",
                    where if _is_unicode(where) else None,
                )
            if isinstance(item, (dict, list)):
                stack.append((item, where, depth + 1))


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _is_unicode(text: str | int) -> bool:
    if not isinstance(text, str):
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _typed(body: dict[str, Any], key: str, kinds: tuple[type, ...], what: str) -> Any:
    value = body.get(key)
    # bool is an int subclass in Python, never a number in the API.
    is_bool = isinstance(value, bool) and bool not in kinds
    if value is not None and (is_bool or not isinstance(value, kinds)):
        raise ApiError(400, f"'{key}' must be {what}, got {json.dumps(value)[:60]}", key)
    return value


def _number(body: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = _typed(body, key, (int, float), "a number")
    if value is None:
        return default
    if not low <= value <= high:
        raise ApiError(400, f"'{key}' must be between {low:g} and {high:g}, got {value}", key)
    return float(value)


def _top_p(body: dict[str, Any]) -> float:
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p == 0:
        raise ApiError(400, "'top_p' must be above 0 (use temperature 0 for greedy)", "top_p")
    return top_p


def _stop(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise ApiError(400, "'stop' must be a string or a list of strings", "stop")
    if len(items) > MAX_STOP:
        raise ApiError(400, f"'stop' takes at most {MAX_STOP} strings, got {len(items)}", "stop")
    return [s for s in items if s]


def _max_tokens(body: dict[str, Any], chat: bool) -> int | None:
    key = "max_completion_tokens" if chat and "max_completion_tokens" in body else "max_tokens"
    value = _typed(body, key, (int,), "an integer")
    if value is not None and value < 1:
        raise ApiError(400, f"'{key}' must be at least 1, got {value}", key)
    return value


def _prompt(body: dict[str, Any]) -> str | list[int]:
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]  # a batch of one
    if isinstance(prompt, str) and prompt:
        return prompt
    if (
        isinstance(prompt, list)
        and prompt
        and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    ):
        return list(prompt)
    if prompt is None:
        raise ApiError(400, "'prompt' is required", "prompt")
    raise ApiError(
        400, "'prompt' must be a non-empty string or list of token ids (one prompt)", "prompt"
    )


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if messages is None:
        raise ApiError(400, "'messages' is required", "messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list", "messages")
    out = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ApiError(400, f"'{where}' must be an object with a string 'role'", where)
        content = message.get("content")
        if isinstance(content, list):  # content parts: only text is served
            if not all(isinstance(p, dict) and p.get("type") == "text" for p in content):
                raise ApiError(400, f"'{where}.content' may hold only text parts", where)
            content = "".join(str(p.get("text", "")) for p in content)
        calls = _tool_calls(message, where)
        if content is None and (calls or message["role"] == "tool"):
            content = ""  # an assistant's tool calls, or an empty tool result
        if not isinstance(content, str):
            raise ApiError(400, f"'{where}.content' must be a string", f"{where}.content")
        out.append({"role": message["role"], "content": content, **calls})
        if isinstance(message.get("tool_call_id"), str):
            out[-1]["tool_call_id"] = message["tool_call_id"]
    return out


def check_fields(body: dict[str, Any], chat: bool) -> None:
    """ApiError 400 naming the first field the server would not apply (UNSUPPORTED with a
    value that asks for something, one of the other endpoint's, or an unknown one)."""
    served = SERVED_FIELDS | (SERVED_CHAT if chat else SERVED_COMPLETION)
    endpoint = "/v1/chat/completions" if chat else "/v1/completions"
    for key, value in body.items():
        if key in served:
            continue
        if key in UNSUPPORTED:
            reason, neutral = UNSUPPORTED[key]
            if any(value == n and type(value) is type(n) for n in neutral):
                continue
            raise ApiError(
                400, f"'{key}' is not supported here: {reason}", key, "unsupported_field"
            )
        known = key in SERVED_CHAT | SERVED_COMPLETION
        what = f"not a field of {endpoint}" if known else "an unknown field"
        raise ApiError(400, f"'{key}' is {what}", key, "unsupported_field")


def _logprobs(body: dict[str, Any], chat: bool) -> int | None:
    """How many alternatives per token to return (None: no logprobs): chat's boolean logprobs
    with top_logprobs, or completions' integer logprobs."""
    if not chat:
        value = _typed(body, "logprobs", (int,), "an integer")
        if value is not None and not 0 <= value <= MAX_LOGPROBS:
            raise ApiError(
                400, f"'logprobs' must be between 0 and {MAX_LOGPROBS}, got {value}", "logprobs"
            )
        return value
    wanted = _typed(body, "logprobs", (bool,), "a boolean")
    top = _typed(body, "top_logprobs", (int,), "an integer")
    if top is not None and not 0 <= top <= MAX_TOP_LOGPROBS:
        raise ApiError(
            400,
            f"'top_logprobs' must be between 0 and {MAX_TOP_LOGPROBS}, got {top}",
            "top_logprobs",
        )
    if top is not None and not wanted:
        raise ApiError(400, "'top_logprobs' needs 'logprobs': true", "top_logprobs")
    return (top or 0) if wanted else None


def _tool_calls(message: dict[str, Any], where: str) -> dict[str, Any]:
    """{"tool_calls": [...]} of an assistant message that has them (each a function call with
    a string name and string arguments), else {}."""
    calls = message.get("tool_calls")
    if calls is None:
        return {}
    ok = isinstance(calls, list) and all(
        isinstance(c, dict)
        and isinstance(c.get("function"), dict)
        and isinstance(c["function"].get("name"), str)
        and isinstance(c["function"].get("arguments"), str)
        for c in calls
    )
    if not ok:
        raise ApiError(
            400,
            f"'{where}.tool_calls' must be a list of {{'id', 'type': 'function', 'function':"
            " {'name', 'arguments'}} with string name and arguments",
            f"{where}.tool_calls",
        )
    return {"tool_calls": calls} if calls else {}


def parse_request(body: dict[str, Any], chat: bool) -> GenerationRequest:
    """Check a /v1/completions (`chat` False) or /v1/chat/completions body; raise ApiError."""
    check_fields(body, chat)
    model = _typed(body, "model", (str,), "a string")
    if not model:
        raise ApiError(400, "'model' is required", "model")
    n = _typed(body, "n", (int,), "an integer")
    if n not in (None, 1):
        raise ApiError(400, f"only n=1 is served, got n={n}", "n")
    seed = _typed(body, "seed", (int,), "an integer")
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise ApiError(400, f"'seed' must be between 0 and 2^63-1, got {seed}", "seed")
    stream_options = _typed(body, "stream_options", (dict,), "an object") or {}
    return GenerationRequest(
        model=model,
        prompt=None if chat else _prompt(body),
        messages=_messages(body) if chat else None,
        max_tokens=_max_tokens(body, chat),
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),  # OpenAI's default, not greedy
        top_p=_top_p(body),
        seed=seed,
        stop=_stop(body),
        stream=bool(_typed(body, "stream", (bool,), "a boolean")),
        include_usage=bool(stream_options.get("include_usage")),
        ignore_eos=bool(_typed(body, "ignore_eos", (bool,), "a boolean")),
        top_k=_top_k(body),
        logprobs=_logprobs(body, chat),
        user=_typed(body, "user", (str,), "a string"),
    )


def _top_k(body: dict[str, Any]) -> int:
    value = _typed(body, "top_k", (int,), "an integer")
    if value is not None and value < -1:
        raise ApiError(400, f"'top_k' must be 0 or -1 (off) or more, got {value}", "top_k")
    return max(value or 0, 0)
