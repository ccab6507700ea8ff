"""Gemma 3 text: llama.cpp takes every 6th layer as global attention and the others as sliding
(src/models/gemma3.cpp, load_swa_pattern(6)); its converter does not write `layer_types`."""

from __future__ import annotations

from typing import Any

PATTERN = 6


def check(config: dict[str, Any]) -> str | None:
    types = config.get("layer_types")
    if not types or not config.get("sliding_window"):
        return None
    expected = [
        "full_attention" if (i + 1) % PATTERN == 0 else "sliding_attention"
        for i in range(len(types))
    ]
    if list(types) != expected:
        return f"layer_types is not llama.cpp's fixed pattern (every {PATTERN}th layer global)"
    return None
