"""Timing a transformers ``generate`` call: a streamer hands each new token, as it appears, to the
worker's loop through a queue (``generate`` runs in a thread, as transformers'
``TextIteratorStreamer`` does it; the thread computes with the GIL released, the loop waits)."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

from benchmarks.runners import Info, Token


def _generate(model: Any, ids: list[int], max_new: int, out: queue.Queue[Any], pad: int) -> None:
    """Greedy ``model.generate`` of exactly `max_new` tokens (min_new_tokens ignores EOS); every
    token goes to `out`, then None (or the exception that stopped it)."""
    import torch
    from transformers.generation.streamers import BaseStreamer

    class Stamper(BaseStreamer):
        def __init__(self) -> None:
            self.prompt_seen = False

        def put(self, value: Any) -> None:
            if not self.prompt_seen:  # generate() first puts the prompt itself
                self.prompt_seen = True
                return
            out.put(int(value.reshape(-1)[0]))

        def end(self) -> None:
            pass

    input_ids = torch.tensor([ids], dtype=torch.long)
    try:
        with torch.inference_mode():
            model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_new,
                min_new_tokens=max_new,
                do_sample=False,
                num_beams=1,
                streamer=Stamper(),
                pad_token_id=pad,
            )
        out.put(None)
    except Exception as exc:  # raised again in the worker's thread
        out.put(exc)


def pad_id(config: Any) -> int:
    """A pad token id for generate(): the config's pad, else its EOS, else 0."""
    for value in (getattr(config, "pad_token_id", None), getattr(config, "eos_token_id", None)):
        if isinstance(value, list):
            value = value[0] if value else None
        if value is not None:
            return int(value)
    return 0


class HFGenerateRunner:
    """A row that times ``model.generate`` of a transformers-style model."""

    def __init__(self, model: Any, info: dict[str, Any]) -> None:
        self.model = model
        self.info = Info(info)
        self.pad = pad_id(model.config)

    def generate(self, ids: list[int], max_tokens: int, **_greedy: Any) -> Iterator[Token]:
        tokens: queue.Queue[Any] = queue.Queue()
        args = (self.model, ids, max_tokens, tokens, self.pad)
        thread = threading.Thread(target=_generate, args=args, daemon=True)
        thread.start()
        while (item := tokens.get()) is not None:
            if isinstance(item, Exception):
                raise item
            yield Token(item)
        thread.join()
