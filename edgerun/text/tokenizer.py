"""Tokenizers for the runtime: Hugging Face tokenizer.json through the `tokenizers` library, chat
templates through edgerun.text.chat_template (a bounded jinja2 sandbox), and UTF-8-safe streaming
detokenization. No transformers import: this is what runs on the device.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edgerun.core.errors import EdgerunError
from edgerun.core.home import read_json_object
from edgerun.text import chat_template

# Prompt tokens kept as left context when streaming, so decoders that strip a leading space
# (SentencePiece "▁") or merge bytes across tokens see the same text as a full decode.
_STREAM_CONTEXT = 5
# Characters past which encoding runs without the GIL (below, the plain call is as quick).
_LONG_TEXT = 16 * 1024


class Tokenizer(ABC):
    """What the runtime needs from a tokenizer; one subclass per tokenizer source."""

    eos_ids: frozenset[int] = frozenset()
    chat_template: str | None = None
    special_tokens: dict[str, str] = {}

    @abstractmethod
    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`; `add_special_tokens` adds BOS etc. as the model's tokenizer does."""

    @abstractmethod
    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids`."""

    def hf_json(self) -> str | None:
        """The tokenizer as tokenizer.json text, when it is one (for edgerun.text.constrain)."""
        return None

    def llama_vocab(self) -> Any:
        """llama.cpp's vocabulary handle, when the tokenizer is a GGUF file's (edgerun.text.constrain)."""
        return None

    def apply_chat_template(
        self,
        messages: Sequence[dict[str, Any]],
        add_generation_prompt: bool = True,
        max_chars: int | None = None,
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> str:
        """Render `messages` ([{role, content}]) with the model's chat template, bounded in time
        and in output size (`max_chars`, default chat_template.MAX_CHARS); `tools` (OpenAI tool
        objects) are given to templates that define tool calling. EdgerunError on any failure
        of the template."""
        if not self.chat_template:
            raise EdgerunError(
                "this model has no chat template",
                "pass a plain prompt to Model.generate() instead of Model.chat()",
                cli_hint="pass a plain prompt without --chat",
            )
        variables = {"add_generation_prompt": add_generation_prompt, **self.special_tokens}
        if tools:
            variables["tools"] = list(tools)
        return chat_template.render(self.chat_template, messages, variables, max_chars=max_chars)

    def encode_chat(
        self,
        messages: Sequence[dict[str, Any]],
        max_chars: int | None = None,
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> list[int]:
        """Token ids of the rendered chat, special tokens parsed from the template text."""
        text = self.apply_chat_template(messages, max_chars=max_chars, tools=tools)
        return self.encode(text, add_special_tokens=False)

    def stream(self, context: Sequence[int] = ()) -> DetokenizeStream:
        """A streaming detokenizer seeded with the last few ids of `context` (the prompt)."""
        return DetokenizeStream(
            lambda ids: self.decode(ids, skip_special_tokens=True), context[-_STREAM_CONTEXT:]
        )


class DetokenizeStream:
    """Incremental detokenization: push one id, get the new text (possibly "").

    Text is released only when it no longer ends in U+FFFD, so a multi-byte character split over
    several byte-level tokens comes out whole. The diff against a short left context keeps
    leading-space handling identical to decoding the whole sequence.
    """

    def __init__(self, decode: Callable[[list[int]], str], context: Sequence[int] = ()) -> None:
        self._decode = decode
        self._ids = list(context)
        self._prefix = 0
        self._read = len(self._ids)

    def push(self, token_id: int) -> str:
        """Add `token_id`; return the text that became final."""
        self._ids.append(token_id)
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        """Text still held back at the end, without the U+FFFD of a character whose bytes were
        cut off (e.g. by max_tokens): the stream never ends in a half character."""
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return after[len(before) :].rstrip("\ufffd") if len(after) > len(before) else ""


class HFTokenizer(Tokenizer):
    """A Hugging Face fast tokenizer directory: tokenizer.json (+ tokenizer_config.json,
    chat_template.jinja, generation_config.json / config.json for the end-of-sequence ids)."""

    def __init__(self, directory: Path) -> None:
        from tokenizers import Tokenizer as _Tok

        directory = Path(directory)
        path = directory / "tokenizer.json"
        try:
            self._tok = _Tok.from_file(str(path))
        except Exception as exc:
            raise EdgerunError(
                f"cannot read the tokenizer {path}: {exc}", "re-export the artifact"
            ) from exc
        config = read_json_object(directory / "tokenizer_config.json")
        self.special_tokens = _special_tokens(config)
        template_file = directory / "chat_template.jinja"
        template = config.get("chat_template")
        if template_file.is_file():
            template = template_file.read_text(encoding="utf-8")
        if isinstance(template, list):  # named templates: [{name, template}]
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        self.chat_template = template
        self.eos_ids = frozenset(self._eos_ids(directory, config))

    def _eos_ids(self, directory: Path, config: dict[str, Any]) -> list[int]:
        # Same precedence as transformers' generate(): generation_config, then the model config,
        # then the tokenizer's eos_token.
        for name in ("generation_config.json", "config.json"):
            eos = read_json_object(directory / name).get("eos_token_id")
            if eos is not None:
                return [eos] if isinstance(eos, int) else [int(e) for e in eos]
        token = self.special_tokens.get("eos_token")
        tid = self._tok.token_to_id(token) if token else None
        return [tid] if tid is not None else []

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        if len(text) > _LONG_TEXT and hasattr(self._tok, "encode_batch_fast"):
            # encode() holds the GIL for much of its run (a served 1 MiB prompt stalled every
            # other request for seconds); encode_batch_fast releases it and skips the offsets.
            encoded = self._tok.encode_batch_fast([text], add_special_tokens=add_special_tokens)
            return list(encoded[0].ids)
        return list(self._tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return str(self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens))

    @property
    def vocab_size(self) -> int:
        return int(self._tok.get_vocab_size(with_added_tokens=True))

    def hf_json(self) -> str:
        return str(self._tok.to_str())


def _special_tokens(config: dict[str, Any]) -> dict[str, str]:
    """bos_token, eos_token, ... as plain strings (the config may hold AddedToken dicts)."""
    out = {}
    for key in ("bos_token", "eos_token", "unk_token", "pad_token"):
        value = config.get(key)
        if isinstance(value, dict):
            value = value.get("content")
        if isinstance(value, str):
            out[key] = value
    return out
