"""A quirk of onnxruntime-genai's builder (0.11): it looks for `original_max_position_embeddings`
inside `rope_scaling` with `hasattr`, which never finds a dict key, so a checkpoint that keeps it
there (Llama 3.x's "llama3" scaling, YaRN) is built as if its original context were its full one.
Under llama3 scaling that moves which frequencies are slowed down: on Llama-3.2's shape
(original 8192, full 131072, factor 32) 10 of the 32 rotary frequencies differ from
transformers' (by up to 32x), and the tiny test checkpoint's logits were off by 0.83.

`original_context_fixed` corrects the builder's `original_context_length` from the dict, before
its rope set-up reads it (transformers' value, so the graph's caches equal transformers'); the
builder's class is patched only while the context is open.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


def original_context(config: Any) -> int | None:
    """`rope_scaling["original_max_position_embeddings"]` of a transformers config (None: absent)."""
    rope = getattr(config, "rope_scaling", None)
    if isinstance(rope, dict) and isinstance(rope.get("original_max_position_embeddings"), int):
        return int(rope["original_max_position_embeddings"])
    return None


@contextlib.contextmanager
def original_context_fixed() -> Iterator[None]:
    """While open, the builder's rope set-up uses the original context from `rope_scaling`."""
    from onnxruntime_genai.models import builder as builder_module

    base = builder_module.Model
    saved = base.make_rope_init

    def make_rope_init(model: Any, config: Any) -> Any:
        if getattr(config, "original_max_position_embeddings", None) is None:
            value = original_context(config)
            if value is not None:
                model.original_context_length = value
        return saved(model, config)

    base.make_rope_init = make_rope_init
    try:
        yield
    finally:
        base.make_rope_init = saved
