"""llama (SmolLM2, Llama 3.x, TinyLlama): llama.cpp's LlamaModel in convert_hf_to_gguf.py."""

from __future__ import annotations

from edgerun.exporters.gguf.arch import Architecture


class Llama(Architecture):
    model_type = "llama"
    gguf_arch = "LLAMA"
    permute_qk = True
    writes_vocab_and_rope_dim = True
    rope_scaling_types = ("default", "linear", "llama3")


ARCH = Llama
