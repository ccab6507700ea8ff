"""SmolLM3: llama.cpp skips rotary embeddings on every 4th layer (src/models/smollm3.cpp,
n_no_rope_layer_step = 4) whatever the checkpoint's `no_rope_layers` says."""

from __future__ import annotations

from typing import Any

STEP = 4


def check(config: dict[str, Any]) -> str | None:
    layers = config.get("no_rope_layers")
    if layers is None:
        return None
    expected = [int((i + 1) % STEP != 0) for i in range(len(layers))]
    if list(layers) != expected:
        return f"no_rope_layers is not llama.cpp's fixed NoPE step of {STEP}"
    return None
