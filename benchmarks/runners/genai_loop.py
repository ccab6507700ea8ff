"""Peer: onnxruntime-genai's own generation loop on its own int4 build of the model.

Prompt ids go in through ``append_tokens`` (which runs the prompt), then ``generate_next_token``
once per token. ``min_length`` = ``max_length`` = prompt + new tokens, so EOS cannot end it early.
"""

from __future__ import annotations

import json
from typing import Any

from benchmarks.runners import Stamp
from benchmarks.workload import RowSpec

REQUIRES = {"onnxruntime_genai": "pip install onnxruntime-genai"}


class GenaiLoop:
    def __init__(self, model: Any, path: str, threads: int) -> None:
        self.model = model
        self.path = path
        self.threads = threads

    def run(self, ids: list[int], max_new: int, stamp: Stamp) -> None:
        import onnxruntime_genai as og

        params = og.GeneratorParams(self.model)
        total = len(ids) + max_new
        params.set_search_options(do_sample=False, max_length=total, min_length=total)
        generator = og.Generator(self.model, params)
        generator.append_tokens(ids)
        for _ in range(max_new):
            if generator.is_done():
                break
            generator.generate_next_token()
            stamp(int(generator.get_next_tokens()[0]))

    def info(self) -> dict[str, Any]:
        import onnxruntime_genai as og

        return {
            "library": f"onnxruntime-genai {og.__version__}",
            "dir": self.path,
            "intra_op_num_threads": self.threads,
        }


def load(spec: RowSpec, threads: int, max_len: int) -> GenaiLoop:
    import onnxruntime_genai as og

    assert spec.artifact is not None
    config = og.Config(spec.artifact)
    options = {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
    config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
    return GenaiLoop(og.Model(config), spec.artifact, threads)
