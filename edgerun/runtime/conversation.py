"""A multi-turn chat on one Model: the history is re-sent each turn (rendered with the chat
template) and the prompt cache (edgerun.runtime.kvcache) restores what earlier turns already computed,
so a turn costs its new message, not the whole conversation. `edgerun run ART` with no prompt
drives one from stdin."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from edgerun.core.errors import EdgerunError
from edgerun.runtime.model import Chunk, Model


class Conversation:
    """The messages of one chat with `model`; `system` opens it when given."""

    def __init__(self, model: Model, system: str | None = None) -> None:
        self.model = model
        self.system = system
        self.messages: list[dict[str, str]] = []
        self.reset()

    def reset(self) -> None:
        """Forget every turn (the system message stays)."""
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def say(self, text: str, max_tokens: int = 128, **options: Any) -> Iterator[Chunk]:
        """Stream the reply to the user message `text`; it joins the history once complete.
        The oldest turns are dropped while the conversation would not fit the context. Raises
        EdgerunError when even the new message alone does not fit."""
        self.messages.append({"role": "user", "content": text})
        self._fit(max_tokens)
        reply: list[str] = []
        for chunk in self.model.chat(self.messages, max_tokens=max_tokens, **options):
            reply.append(chunk.text)
            yield chunk
        self.messages.append({"role": "assistant", "content": "".join(reply)})

    def _fit(self, max_tokens: int) -> None:
        first = 1 if self.system else 0
        tokenizer, room = self.model.tokenizer, self.model.context_length - max_tokens
        while len(tokenizer.encode_chat(self.messages)) > room:
            if len(self.messages) - first <= 1:
                self.messages.pop()
                raise EdgerunError(
                    "the message does not fit the context with --max-tokens room to reply",
                    "send a shorter message, lower --max-tokens or pass a larger --context",
                )
            del self.messages[first : first + 2]  # the oldest user message and its reply
