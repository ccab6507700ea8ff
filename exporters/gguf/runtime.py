"""Running a GGUF in llama.cpp (llama-cpp-python) for validation and tokenizer checks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgerun.core.errors import EdgerunError, require
from edgerun.exporters.gguf.quantize import quiet_llama
from edgerun.exporters.validate import LogitsFn


def load(path: Path, **kwargs: Any) -> Any:
    """llama_cpp.Llama for `path`, quiet; EdgerunError naming the extra if not installed."""
    require("llama_cpp", "gguf")
    import llama_cpp

    from edgerun.sources.gguf_header import check_causal

    if not kwargs.get("vocab_only"):
        check_causal(path)  # before llama.cpp: a diffusion LM fails inside it
    from edgerun.backends.llama_amx import no_amx_buffers

    quiet_llama()
    try:
        with no_amx_buffers(llama_cpp) as avoided:
            llm = llama_cpp.Llama(model_path=str(path), verbose=False, **kwargs)
    except ValueError as exc:  # llama-cpp-python's "Failed to load model from file"
        raise EdgerunError(
            f"llama.cpp cannot load {path}: {exc}",
            "re-export the artifact; set EDGERUN_LLAMA_VERBOSE=1 to see llama.cpp's log",
        ) from exc
    from edgerun.backends.mapped_pages import release_loaded

    # the file pages of the tensors llama.cpp repacked
    release_loaded(path, kwargs, copied=not avoided)
    return llm


def tokenize(path: Path, text: str, special: bool = False) -> list[int]:
    """llama.cpp's tokenization of `text` with the GGUF's vocabulary, no BOS added."""
    llm = load(path, vocab_only=True)
    ids: list[int] = llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)
    return ids


def logits_fn(path: Path, threads: int | None = None) -> LogitsFn:
    """A LogitsFn evaluating one window in llama.cpp: token ids -> logits [len, vocab] float32.

    The context is sized on the first window and re-created if a longer one comes.
    """
    state: dict[str, Any] = {"llm": None, "n_ctx": 0}

    def logits(ids: np.ndarray) -> np.ndarray:
        n = len(ids)
        if n > state["n_ctx"]:
            state["llm"] = None  # free the previous context before allocating a larger one
            state["llm"] = load(
                path, logits_all=True, n_ctx=n, n_batch=n, n_ubatch=n, n_threads=threads
            )
            state["n_ctx"] = n
        llm = state["llm"]
        llm.reset()
        llm.eval([int(t) for t in ids])
        return np.array(llm.scores[:n], dtype=np.float32)

    return logits


def tokenizer_parity(path: Path, hf_tokenizer: Any, text: str, label: str) -> dict[str, Any]:
    """Whether llama.cpp, with the GGUF's vocabulary, tokenizes `text` exactly as the HF tokenizer
    does (no special tokens added either side); where not, the first difference: its token
    index, the next few ids of each, and the text there."""
    hf: list[int] = hf_tokenizer(text, add_special_tokens=False)["input_ids"]
    runtime = tokenize(path, text)
    parity: dict[str, Any] = {
        "text": label,
        "hf_tokens": len(hf),
        "llama_cpp_tokens": len(runtime),
        "identical": hf == runtime,
        "first_difference": None,
    }
    if hf != runtime:
        at = next(
            (i for i, (a, b) in enumerate(zip(hf, runtime, strict=False)) if a != b),
            min(len(hf), len(runtime)),
        )
        offset = len(hf_tokenizer.decode(hf[:at]))
        parity["first_difference"] = {
            "token_index": at,
            "hf": hf[at : at + 4],
            "llama_cpp": runtime[at : at + 4],
            "text": text[max(0, offset - 10) : offset + 20],
        }
    return parity
