"""Peer: the thinnest greedy loop llama-cpp-python allows on a GGUF file.

``Llama.eval`` the prompt in one batch, then per token: llama.cpp's own greedy sampler in C on the
last logits, and ``eval`` of that one token. No EOS check, so EOS is ignored by construction.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from benchmarks.runners import Info, Token

REQUIRES = {"llama_cpp": "pip install llama-cpp-python"}


class LlamaLoop:
    def __init__(self, llm: Any, path: str, threads: int) -> None:
        import llama_cpp

        self.llm = llm
        self.sampler = llama_cpp.llama_sampler_init_greedy()
        self.info = Info({
            "library": f"llama-cpp-python {llama_cpp.__version__}",
            "file": path,
            "n_threads": threads,
            "n_batch": llm.n_batch,
            "system_info": llama_cpp.llama_print_system_info().decode(errors="replace"),
        })  # fmt: skip

    def generate(self, ids: list[int], max_tokens: int, **_greedy: Any) -> Iterator[Token]:
        import llama_cpp

        llm = self.llm
        llm.reset()  # n_tokens = 0: eval() drops the previous sequence from the KV cache
        llm.eval(ids)
        for i in range(max_tokens):
            token = llama_cpp.llama_sampler_sample(self.sampler, llm.ctx, -1)
            yield Token(token)
            if i + 1 < max_tokens:
                llm.eval([token])


def load(
    path: str, profile: str | None = None, threads: int | None = None, context: int | None = None
) -> LlamaLoop:
    from llama_cpp import Llama

    threads = threads or 2
    llm = Llama(
        model_path=path,
        n_threads=threads,
        n_threads_batch=threads,
        n_ctx=context or 0,
        n_batch=512,
        verbose=False,
    )
    return LlamaLoop(llm, path, threads)
