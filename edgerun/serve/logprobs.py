"""Token log-probabilities (edgerun.runtime.model.TokenLogprobs) in OpenAI's two shapes: chat's
`{"content": [{token, logprob, bytes, top_logprobs}]}` and completions' parallel lists
`{tokens, token_logprobs, top_logprobs, text_offset}`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edgerun.runtime.model import Chunk
from edgerun.text.tokenizer import Tokenizer


def _token(tokenizer: Tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id])


def _entry(tokenizer: Tokenizer, token_id: int, logprob: float) -> dict[str, Any]:
    text = _token(tokenizer, token_id)
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


def chat_logprobs(tokenizer: Tokenizer, chunks: Sequence[Chunk]) -> dict[str, Any]:
    """choice.logprobs of a chat completion (or of one streamed delta) for `chunks`."""
    content = []
    for chunk in chunks:
        if chunk.logprobs is None or chunk.token_id is None:
            continue
        item = _entry(tokenizer, chunk.token_id, chunk.logprobs.logprob)
        item["top_logprobs"] = [_entry(tokenizer, i, lp) for i, lp in chunk.logprobs.top]
        content.append(item)
    return {"content": content, "refusal": None}


class CompletionLogprobs:
    """choice.logprobs of a text completion; keeps the text offset across streamed deltas."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.offset = 0

    def __call__(self, chunks: Sequence[Chunk]) -> dict[str, Any]:
        out: dict[str, list[Any]] = {
            "tokens": [],
            "token_logprobs": [],
            "top_logprobs": [],
            "text_offset": [],
        }
        for chunk in chunks:
            if chunk.logprobs is None or chunk.token_id is None:
                continue
            text = _token(self.tokenizer, chunk.token_id)
            out["tokens"].append(text)
            out["token_logprobs"].append(chunk.logprobs.logprob)
            top = {_token(self.tokenizer, i): lp for i, lp in reversed(chunk.logprobs.top)}
            out["top_logprobs"].append(dict(reversed(top.items())))
            out["text_offset"].append(self.offset)
            self.offset += len(text)
        return out
