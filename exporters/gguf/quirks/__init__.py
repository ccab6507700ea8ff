"""Checkpoints llama.cpp would convert and then run wrongly, refused before any work.

One module per HF `model_type`, each with `check(config) -> str | None`: None when llama.cpp runs
the checkpoint as transformers does, else the reason. `MODULES` finds them; a family without a
quirk has no module.
"""

from __future__ import annotations

import importlib
from typing import Any

from edgerun.errors import EdgerunError

# HF model_type -> module with check(config); one line per quirk.
MODULES: dict[str, str] = {
    "gemma3_text": "edgerun.exporters.gguf.quirks.gemma3_text",
    "smollm3": "edgerun.exporters.gguf.quirks.smollm3",
    "phi": "edgerun.exporters.gguf.quirks.phi",
}


def check(config: dict[str, Any]) -> None:
    """EdgerunError naming the knob when llama.cpp would run this checkpoint wrongly."""
    model_type = str(config.get("model_type"))
    if model_type not in MODULES:
        return
    reason = importlib.import_module(MODULES[model_type]).check(config)
    if reason is not None:
        raise EdgerunError(
            f"GGUF export of this {model_type} checkpoint would run wrongly in llama.cpp: {reason}",
            "export to ONNX instead",
        )
