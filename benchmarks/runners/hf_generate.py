"""Timing a transformers ``generate`` call: a streamer that stamps each new token as it appears."""

from __future__ import annotations

from typing import Any

from benchmarks.runners import Stamp


def generate(model: Any, ids: list[int], max_new: int, stamp: Stamp, pad_token_id: int) -> None:
    """Greedy ``model.generate`` of exactly `max_new` tokens (min_new_tokens ignores EOS)."""
    import torch
    from transformers.generation.streamers import BaseStreamer

    class Stamper(BaseStreamer):
        def __init__(self) -> None:
            self.prompt_seen = False

        def put(self, value: Any) -> None:
            if not self.prompt_seen:  # generate() first puts the prompt itself
                self.prompt_seen = True
                return
            stamp(int(value.reshape(-1)[0]))

        def end(self) -> None:
            pass

    input_ids = torch.tensor([ids], dtype=torch.long)
    with torch.inference_mode():
        model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new,
            min_new_tokens=max_new,
            do_sample=False,
            num_beams=1,
            streamer=Stamper(),
            pad_token_id=pad_token_id,
        )


def pad_id(config: Any) -> int:
    """A pad token id for generate(): the config's pad, else its EOS, else 0."""
    for value in (getattr(config, "pad_token_id", None), getattr(config, "eos_token_id", None)):
        if isinstance(value, list):
            value = value[0] if value else None
        if value is not None:
            return int(value)
    return 0


class HFGenerateRunner:
    """A row that times ``model.generate`` of a transformers-style model; subclasses add info()."""

    def __init__(self, model: Any, path: str, threads: int) -> None:
        self.model = model
        self.path = path
        self.threads = threads
        self.pad = pad_id(model.config)

    def run(self, ids: list[int], max_new: int, stamp: Stamp) -> None:
        generate(self.model, ids, max_new, stamp, self.pad)
