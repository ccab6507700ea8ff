"""Checkpoints llama.cpp's converter would get wrong, found before any work.

One module per HF `model_type`, with either or both of:

- `check(config) -> str | None`: None when llama.cpp runs the checkpoint as transformers does,
  else the reason it is refused;
- `fix(config) -> dict[str, Any]`: config.json keys the converter is given in place of the
  checkpoint's (empty: none), where transformers reads a knob one way and the converter another.
  The converter reads a view of the checkpoint with them (edgerun.exporters.gguf.convert); the
  checkpoint itself is never changed.

`MODULES` finds them; a family without a quirk has no module.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from edgerun.core.errors import EdgerunError

# HF model_type -> its quirk module; one line per quirk.
MODULES: dict[str, str] = {
    "gemma3_text": "edgerun.exporters.gguf.quirks.gemma3_text",
    "smollm3": "edgerun.exporters.gguf.quirks.smollm3",
    "phi": "edgerun.exporters.gguf.quirks.phi",
    "falcon": "edgerun.exporters.gguf.quirks.falcon",
}


def _module(config: dict[str, Any]) -> ModuleType | None:
    name = MODULES.get(str(config.get("model_type")))
    return None if name is None else importlib.import_module(name)


def check(config: dict[str, Any]) -> None:
    """EdgerunError naming the knob when llama.cpp would run this checkpoint wrongly."""
    module = _module(config)
    if module is None or not hasattr(module, "check"):
        return
    reason = module.check(config)
    if reason is not None:
        raise EdgerunError(
            f"GGUF export of this {config['model_type']} checkpoint would run wrongly in"
            f" llama.cpp: {reason}",
            "export to ONNX instead",
        )


def config_fixes(config: dict[str, Any]) -> dict[str, Any]:
    """The config.json keys llama.cpp's converter is given in place of the checkpoint's ({}:
    the checkpoint's config is right for it)."""
    module = _module(config)
    if module is None or not hasattr(module, "fix"):
        return {}
    fixes: dict[str, Any] = module.fix(config)
    return fixes
