"""Peer: onnxruntime-genai's own generation loop on its own int4 build of the model.

Prompt ids go in through ``append_tokens`` (which runs the prompt), then ``generate_next_token``
once per token. ``min_length`` = ``max_length`` = prompt + new tokens, so EOS cannot end it early.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from benchmarks.runners import Info, Token

REQUIRES = {"onnxruntime_genai": "pip install onnxruntime-genai"}


class GenaiLoop:
    def __init__(self, model: Any, path: str, threads: int) -> None:
        import onnxruntime_genai as og

        self.model = model
        self.info = Info({
            "library": f"onnxruntime-genai {og.__version__}",
            "dir": path,
            "intra_op_num_threads": threads,
        })  # fmt: skip

    def generate(self, ids: list[int], max_tokens: int, **_greedy: Any) -> Iterator[Token]:
        import onnxruntime_genai as og

        params = og.GeneratorParams(self.model)
        total = len(ids) + max_tokens
        params.set_search_options(do_sample=False, max_length=total, min_length=total)
        generator = og.Generator(self.model, params)
        generator.append_tokens(ids)
        for _ in range(max_tokens):
            if generator.is_done():
                break
            generator.generate_next_token()
            yield Token(int(generator.get_next_tokens()[0]))


def load(
    path: str, profile: str | None = None, threads: int | None = None, context: int | None = None
) -> GenaiLoop:
    import onnxruntime_genai as og

    threads = threads or 2
    config = og.Config(path)
    options = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
    config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
    return GenaiLoop(og.Model(config), path, threads)
