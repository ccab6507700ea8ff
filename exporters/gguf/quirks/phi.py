"""Phi (1, 1.5, 2): llama.cpp's converter writes the feed-forward width as 4 x hidden_size
(conversion/phi.py), true of every released phi checkpoint; another width fails to load."""

from __future__ import annotations

from typing import Any


def check(config: dict[str, Any]) -> str | None:
    hidden, width = config.get("hidden_size"), config.get("intermediate_size")
    if hidden and width and width != 4 * hidden:
        return f"intermediate_size {width} is not 4 x hidden_size ({4 * hidden}), which llama.cpp assumes"
    return None
