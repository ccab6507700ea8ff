"""Peer: the thinnest greedy loop llama-cpp-python allows on a GGUF file.

``Llama.eval`` the prompt in one batch, then per token: llama.cpp's own greedy sampler in C on the
last logits, and ``eval`` of that one token. No EOS check, so EOS is ignored by construction.
"""

from __future__ import annotations

from typing import Any

from benchmarks.runners import Stamp
from benchmarks.workload import RowSpec

REQUIRES = {"llama_cpp": "pip install llama-cpp-python"}


class LlamaLoop:
    def __init__(self, llm: Any, path: str, threads: int) -> None:
        import llama_cpp

        self.llm = llm
        self.path = path
        self.threads = threads
        self.sampler = llama_cpp.llama_sampler_init_greedy()

    def run(self, ids: list[int], max_new: int, stamp: Stamp) -> None:
        import llama_cpp

        llm = self.llm
        llm.reset()  # n_tokens = 0: eval() drops the previous sequence from the KV cache
        llm.eval(ids)
        for i in range(max_new):
            token = llama_cpp.llama_sampler_sample(self.sampler, llm.ctx, -1)
            stamp(token)
            if i + 1 < max_new:
                llm.eval([token])

    def info(self) -> dict[str, Any]:
        import llama_cpp

        return {
            "library": f"llama-cpp-python {llama_cpp.__version__}",
            "file": self.path,
            "n_threads": self.threads,
            "n_batch": self.llm.n_batch,
            "system_info": llama_cpp.llama_print_system_info().decode(errors="replace"),
        }


def load(spec: RowSpec, threads: int, max_len: int) -> LlamaLoop:
    from llama_cpp import Llama

    assert spec.artifact is not None
    llm = Llama(
        model_path=spec.artifact,
        n_threads=threads,
        n_threads_batch=threads,
        n_ctx=max_len,
        n_batch=512,
        verbose=False,
    )
    return LlamaLoop(llm, spec.artifact, threads)
