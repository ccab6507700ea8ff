"""Per-architecture description for HF -> GGUF conversion, and the table that finds it.

Each architecture module (named after the HF `model_type`) defines one `Architecture` subclass
with declarative attributes; `for_model_type` finds it through `ARCHITECTURES`. The attributes
mirror what llama.cpp's convert_hf_to_gguf.py does in the matching model class.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np

from edgerun.errors import EdgerunError

# HF model_type -> module defining ARCH (one line per supported architecture).
ARCHITECTURES: dict[str, str] = {
    "llama": "edgerun.exporters.gguf.llama",
    "qwen2": "edgerun.exporters.gguf.qwen2",
}


class Architecture:
    """How one HF architecture maps onto a llama.cpp architecture."""

    model_type: ClassVar[str]
    gguf_arch: ClassVar[str]  # member name of gguf.MODEL_ARCH
    # llama.cpp LlamaModel.undo_permute: HF stores q/k rows in the rotate-half rotary layout.
    permute_qk: ClassVar[bool] = False
    # LlamaModel.set_gguf_parameters also writes vocab_size and rope.dimension_count.
    writes_vocab_and_rope_dim: ClassVar[bool] = False
    rope_scaling_types: ClassVar[tuple[str, ...]] = ("default",)
    # Tensors llama.cpp never reads (computed at load time).
    skip_suffixes: ClassVar[tuple[str, ...]] = ("rotary_emb.inv_freq",)

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.n_head: int = config["num_attention_heads"]
        self.n_kv_head: int = config.get("num_key_value_heads") or self.n_head
        self.n_layer: int = config["num_hidden_layers"]
        self.head_dim: int = config.get("head_dim") or config["hidden_size"] // self.n_head
        rope = config.get("rope_scaling") or {}
        self.rope_type: str = rope.get("rope_type", rope.get("type", "default"))
        if self.rope_type not in self.rope_scaling_types:
            raise EdgerunError(
                f"{self.model_type} rope scaling '{self.rope_type}' is not supported by the GGUF "
                "exporter",
                f"supported: {', '.join(self.rope_scaling_types)}; export to ONNX instead",
            )

    def write_hparams(self, writer: Any) -> None:
        """TextModel.set_gguf_parameters (+ LlamaModel's additions) for a dense decoder."""
        import gguf

        cfg = self.config
        writer.add_context_length(cfg["max_position_embeddings"])
        writer.add_embedding_length(cfg["hidden_size"])
        writer.add_feed_forward_length(cfg["intermediate_size"])
        writer.add_block_count(self.n_layer)
        writer.add_head_count(self.n_head)
        writer.add_head_count_kv(self.n_kv_head)
        writer.add_rope_freq_base(cfg.get("rope_theta", 10000.0))
        writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
        if cfg.get("head_dim") is not None:
            writer.add_key_length(cfg["head_dim"])
            writer.add_value_length(cfg["head_dim"])
        if self.writes_vocab_and_rope_dim:
            writer.add_vocab_size(cfg["vocab_size"])
            writer.add_rope_dimension_count(self.head_dim)
        rope = cfg.get("rope_scaling") or {}
        if self.rope_type == "linear":
            writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
            writer.add_rope_scaling_factor(rope["factor"])
        elif self.rope_type == "yarn":
            writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
            writer.add_rope_scaling_factor(rope["factor"])
            writer.add_rope_scaling_orig_ctx_len(rope["original_max_position_embeddings"])

    def transform(self, hf_name: str, data: np.ndarray) -> np.ndarray:
        """Per-tensor quirks before writing (llama: q/k permutation)."""
        if self.permute_qk and hf_name.endswith(("q_proj.weight", "q_proj.bias")):
            return permute(data, self.n_head)
        if self.permute_qk and hf_name.endswith(("k_proj.weight", "k_proj.bias")):
            return permute(data, self.n_kv_head)
        return data

    def extra_tensors(self) -> Iterator[tuple[str, np.ndarray]]:
        """Tensors llama.cpp needs that the checkpoint does not hold (llama3 rope factors)."""
        if self.rope_type == "llama3":
            yield "rope_freqs.weight", llama3_rope_factors(self.config, self.head_dim)


def permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp LlamaModel.permute: HF rotate-half row order -> GGUF interleaved pairs."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def llama3_rope_factors(config: dict[str, Any], dim: int) -> np.ndarray:
    """LlamaModel.generate_extra_tensors: per-frequency factors of llama3 rope scaling."""
    rope = config["rope_scaling"]
    base = config.get("rope_theta", 10000.0)
    factor = rope.get("factor", 8.0)
    low, high = rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_ctx = rope.get("original_max_position_embeddings", 8192)
    factors = []
    for freq in 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float32) / dim)):
        wavelen = 2 * math.pi / freq
        if wavelen < old_ctx / high:
            factors.append(1.0)
        elif wavelen > old_ctx / low:
            factors.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.asarray(factors, dtype=np.float32)


def for_model_type(config: dict[str, Any]) -> Architecture:
    """The Architecture for a config.json dict; EdgerunError listing the supported ones."""
    model_type = config.get("model_type", "?")
    if model_type not in ARCHITECTURES:
        raise EdgerunError(
            f"GGUF export does not support architecture '{model_type}'",
            f"supported: {', '.join(sorted(ARCHITECTURES))}; export to ONNX instead",
        )
    cls: type[Architecture] = importlib.import_module(ARCHITECTURES[model_type]).ARCH
    return cls(config)
