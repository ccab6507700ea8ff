"""qwen2 (Qwen2, Qwen2.5): llama.cpp's Qwen2Model in convert_hf_to_gguf.py.

No q/k permutation (llama.cpp runs qwen2 with NEOX-style rotary, the HF layout); q/k/v biases are
mapped by gguf-py's TensorNameMap like any other tensor.
"""

from __future__ import annotations

from edgerun.exporters.gguf.arch import Architecture


class Qwen2(Architecture):
    model_type = "qwen2"
    gguf_arch = "QWEN2"
    rope_scaling_types = ("default", "yarn")


ARCH = Qwen2
