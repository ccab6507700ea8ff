"""Falcon in its original architecture (`new_decoder_architecture: false`, Falcon-7B): transformers
runs it with one KV head when `multi_query` is true and one per attention head otherwise, whatever
`num_kv_heads` says (modeling_falcon.py, FalconAttention), and FalconConfig.save_pretrained writes
`num_kv_heads` equal to the head count when none was given. llama.cpp's converter takes
`num_kv_heads` (else `n_head_kv`, else 1) as the count and splits the fused qkv weight by it
(conversion/falcon.py), failing with a reshape error: it is given transformers' count."""

from __future__ import annotations

from typing import Any


def fix(config: dict[str, Any]) -> dict[str, Any]:
    if config.get("new_decoder_architecture"):
        return {}  # the new architecture's num_kv_heads is what both read
    heads = config.get("num_attention_heads", config.get("n_head"))
    kv_heads = 1 if config.get("multi_query", True) else heads
    read = config.get("num_kv_heads")
    if read is None:
        read = config.get("n_head_kv", 1)
    return {} if kv_heads is None or read == kv_heads else {"num_kv_heads": kv_heads}
