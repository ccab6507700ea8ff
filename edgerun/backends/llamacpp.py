"""llama.cpp backend through llama-cpp-python, for GGUF files.

Uses Llama.eval() (llama_decode in n_batch chunks, KV cache kept in the llama.cpp context) and
reads the last position's logits straight from llama.cpp's buffer as a zero-copy numpy view, so
sampling is edgerun's own (edgerun.text.sampling): the same seed means the same draw on every backend.
Threads, n_batch and n_gpu_layers come from the profile; any other Llama() keyword in the
profile's options is passed through, an unknown one is an error.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np

from edgerun.backends.base import MAX_DEFAULT_CONTEXT, Artifact, Backend, Settings
from edgerun.core.errors import EdgerunError
from edgerun.text.tokenizer import Tokenizer


class LlamaCppBackend(Backend):
    """A GGUF model in a llama.cpp context."""

    name = "llamacpp"
    requires = ("llama_cpp", "gguf")
    released_bytes = 0  # address space of the model file given back after load (mapped_pages)
    amx_avoided = False  # loaded without llama.cpp's AMX buffers (llama_amx: they crash)

    @classmethod
    def accepts(cls, artifact: Artifact) -> bool:
        return artifact.family == "gguf" or artifact.model_file.suffix.lower() == ".gguf"

    def __init__(self, artifact: Artifact, settings: Settings) -> None:
        import llama_cpp

        from edgerun.backends.llama_log import install
        from edgerun.sources.gguf_header import check_causal

        install()  # llama.cpp's warnings to the debug log, not into the output
        check_causal(artifact.model_file)  # before llama.cpp: a diffusion LM fails inside it
        self._lib = llama_cpp
        kwargs = self._llama_kwargs(llama_cpp.Llama, settings)
        if not kwargs["n_ctx"]:
            kwargs["n_ctx"] = min(_trained_context(llama_cpp, artifact), MAX_DEFAULT_CONTEXT)
        from edgerun.backends.llama_amx import no_amx_buffers

        try:
            with no_amx_buffers(llama_cpp) as self.amx_avoided:
                self.llm = llama_cpp.Llama(str(artifact.model_file), **kwargs)
        except (ValueError, RuntimeError) as exc:
            raise EdgerunError(
                f"llama.cpp cannot load {artifact.model_file}: {exc}",
                "the file is corrupt, truncated or not GGUF: re-export it (edgerun verify checks hashes)",
            ) from exc
        from edgerun.backends.mapped_pages import release_loaded

        # the file pages of the tensors llama.cpp repacked into its own buffers
        self.released_bytes = release_loaded(
            artifact.model_file, kwargs, copied=not self.amx_avoided
        )
        self.threads = kwargs["n_threads"]
        self.prefix_align = _prefix_align(self.llm)
        # llama.cpp rounds n_ctx up (to 256s); hold to what was asked so backends agree
        self.context_length = min(int(self.llm.n_ctx()), settings.context or 1 << 30)
        self.vocab_size = int(self.llm.n_vocab())
        layers = int(kwargs.get("n_gpu_layers", 0))
        offload = layers != 0 and bool(llama_cpp.llama_supports_gpu_offload())
        self.providers = [f"GPU offload (n_gpu_layers={layers})", "CPU"] if offload else ["CPU"]
        if layers != 0 and not offload:
            self.fallbacks = [
                f"wanted GPU offload (n_gpu_layers={layers}), but this llama-cpp-python build is"
                " CPU-only; running CPU"
            ]

    @staticmethod
    def _llama_kwargs(llama: Any, settings: Settings) -> dict[str, Any]:
        known = set(inspect.signature(llama.__init__).parameters) - {"self", "model_path"}
        unknown = sorted(set(settings.options) - known)
        if unknown:
            raise EdgerunError(
                f"unknown llama.cpp option(s): {', '.join(unknown)}",
                "use keyword arguments of llama_cpp.Llama (n_gpu_layers, n_batch, use_mmap, ...)",
            )
        return {
            "n_ctx": settings.context,
            "n_threads": settings.threads,
            "n_threads_batch": settings.threads,
            "logits_all": False,
            "verbose": False,
            **settings.options,
        }

    def prefill(self, ids: Sequence[int], total: int) -> np.ndarray:
        self.llm.reset()
        self.llm.eval(list(ids))
        return self._logits()

    def decode(self, token_id: int) -> np.ndarray:
        self.llm.eval([token_id])
        return self._logits()

    can_verify = True

    def verify(self, ids: Sequence[int]) -> np.ndarray:
        # Llama.eval() keeps only the last position's logits unless the whole context was
        # opened with logits_all (a [n_ctx, vocab] array): one batch asking for every row.
        llm, n = self.llm, len(ids)
        if llm.n_tokens + n > llm.n_ctx() or n > llm.n_batch:
            raise EdgerunError(
                f"cannot verify {n} tokens after {llm.n_tokens} in a context of {llm.n_ctx()}",
                "ask for fewer tokens",
            )
        llm._ctx.kv_cache_seq_rm(-1, llm.n_tokens, -1)
        llm._batch.set_batch(batch=list(ids), n_past=llm.n_tokens, logits_all=True)
        llm._ctx.decode(llm._batch)
        llm.input_ids[llm.n_tokens : llm.n_tokens + n] = ids
        llm.n_tokens += n
        ptr = self._lib.llama_get_logits(llm.ctx)
        return np.ctypeslib.as_array(ptr, shape=(n, self.vocab_size))

    def rollback(self, length: int) -> None:
        if not 0 <= length <= self.llm.n_tokens:
            raise ValueError(f"cannot roll back to {length} of {self.llm.n_tokens} positions")
        self.llm.n_tokens = length
        self.llm._ctx.kv_cache_seq_rm(-1, length, -1)

    can_snapshot = True

    def snapshot(self, length: int | None = None) -> tuple[Any, int] | None:
        """Sequence 0's KV cells as llama.cpp serialises them (no logits, no scores buffer:
        Llama.save_state would also copy its n_batch x vocab scores); with `length`, the cells
        after it are first removed from the context."""
        import ctypes

        if length is not None and length < self.llm.n_tokens:
            self.rollback(length)
        lib, ctx = self._lib, self.llm.ctx
        size = int(lib.llama_state_seq_get_size(ctx, 0))
        if size == 0 or self.llm.n_tokens == 0:
            return None
        buf = (ctypes.c_uint8 * size)()
        written = int(lib.llama_state_seq_get_data(ctx, buf, size, 0))
        return ((buf, written), written) if written else None

    def resume(self, state: Any, keep: int, ids: Sequence[int], total: int) -> np.ndarray:
        if not self._holds(ids[:keep]):
            buf, size = state
            self.llm.reset()
            if not self._lib.llama_state_seq_set_data(self.llm.ctx, buf, size, 0):
                return self.prefill(ids, total)  # refused (never seen): compute it all
        # eval() removes every cell from n_tokens on, so only the kept prefix stays
        self.llm.n_tokens = keep
        self.llm.input_ids[:keep] = ids[:keep]
        self.llm.eval(list(ids[keep:]))
        return self._logits()

    def _holds(self, prefix: Sequence[int]) -> bool:
        """Whether the context's KV cache already starts with `prefix` (the conversation the
        last generation left goes on): then restoring a snapshot of it is a copy for nothing."""
        llm, n = self.llm, len(prefix)
        return 0 < n <= llm.n_tokens and bool(np.array_equal(llm.input_ids[:n], prefix))

    def _logits(self) -> np.ndarray:
        # llama.cpp may move its output buffer between decodes: fetch the pointer every time.
        ptr = self._lib.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self.vocab_size,))

    def kv_bytes_per_token(self) -> int | None:
        meta = self.llm.metadata
        arch = meta.get("general.architecture", "")
        try:
            layers = int(meta[f"{arch}.block_count"])
            heads = int(meta[f"{arch}.attention.head_count"])
            kv_heads = int(meta.get(f"{arch}.attention.head_count_kv", heads))
            head_dim = int(meta[f"{arch}.embedding_length"]) // heads
        except (KeyError, ValueError):
            return None
        return 2 * layers * kv_heads * head_dim * 2  # f16 cache

    def tokenizer(self) -> Tokenizer:
        return LlamaCppTokenizer(self.llm, self._lib)

    def close(self) -> None:
        llm = self.__dict__.pop("llm", None)
        if llm is not None:
            llm.close()


def row_block() -> int:
    """Rows of a batch that ggml's CPU matmuls take as one block on this CPU: 4 in the repacked
    x86 kernels (q4_0, q4_K, ...: a last block of 1-3 rows goes through gemv and rounds
    otherwise; measured on AVX2), 16 where its AMX (x86 amx_int8) or KleidiAI (arm64) tiles may
    run (read in their source, not measured), and 16 when the CPU flags cannot be read."""
    import platform

    from edgerun.device.machine import cpu_flags

    if platform.machine().lower() in ("aarch64", "arm64"):
        return 16
    flags = cpu_flags()
    if flags is None or not flags.isdisjoint({"amx_int8", "amx_tile"}):
        return 16
    return 4


def _prefix_align(llm: Any) -> int:
    """Backend.prefix_align: a cut at a multiple of it starts the rest's eval() chunks (n_batch)
    and llama_decode's micro-batches (n_ubatch) on the same row blocks as a cold prefill."""
    import math

    block = row_block()
    steps = (int(llm.n_batch), int(llm.context_params.n_ubatch))
    if all(step % block == 0 for step in steps):
        return block
    return math.lcm(block, *steps)  # then only a cut at a cold chunk boundary is exact


def _trained_context(lib: Any, artifact: Artifact) -> int:
    """n_ctx_train of a GGUF with no config.json beside it: load the weights (memory-mapped, no
    context, no KV cache) just to read it."""
    import logging

    from edgerun.backends.llama_log import install

    # what Llama(verbose=False) does: llama.cpp's log goes through this logger at ERROR level
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    install()
    params = lib.llama_model_default_params()
    params.n_gpu_layers = 0
    params.use_extra_bufts = False  # nothing is computed: no repacked (or AMX) copy to make
    model = lib.llama_model_load_from_file(str(artifact.model_file).encode(), params)
    if not model:
        raise EdgerunError(
            f"llama.cpp cannot load {artifact.model_file}",
            "the file is corrupt, truncated or not GGUF: re-export it (edgerun verify checks hashes)",
        )
    try:
        return int(lib.llama_model_n_ctx_train(model)) or MAX_DEFAULT_CONTEXT
    finally:
        lib.llama_model_free(model)


class LlamaCppTokenizer(Tokenizer):
    """The tokenizer embedded in a GGUF file (used when no tokenizer.json lies next to it)."""

    def __init__(self, llm: Any, lib: Any) -> None:
        self._llm = llm
        self._vocab = vocab = lib.llama_model_get_vocab(llm.model)
        eos = {int(llm.token_eos()), int(lib.llama_vocab_eot(vocab))}
        self.eos_ids = frozenset(i for i in eos if i >= 0)
        self.chat_template = llm.metadata.get("tokenizer.chat_template")
        specials = {"bos_token": llm.token_bos(), "eos_token": llm.token_eos()}
        self.special_tokens = {
            key: self.decode([tid]) for key, tid in specials.items() if tid is not None and tid >= 0
        }

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        # special=True parses "<|im_start|>" etc. as single tokens, as HF tokenizers do.
        return list(
            self._llm.tokenize(text.encode("utf-8"), add_bos=add_special_tokens, special=True)
        )

    def llama_vocab(self) -> Any:
        return self._vocab

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        raw = self._llm.detokenize(list(ids), special=not skip_special_tokens)
        return bytes(raw).decode("utf-8", errors="replace")
