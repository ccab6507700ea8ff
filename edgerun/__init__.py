"""edgerun: take a Hugging Face causal LM to an edge device and tell the truth about how it runs.

Importing this package stays lean: no torch, transformers or optimum. Heavy libraries are imported
inside the functions that need them (export, pull of a GGUF file).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from edgerun.model import Model


def load(path: str, profile: str | None = None, **options: Any) -> Model:
    """Load an artifact (directory, .gguf or .onnx) and pick its backend from a device profile.

    See :func:`edgerun.model.load` for the arguments.
    """
    from edgerun.model import load as _load

    return _load(path, profile=profile, **options)


__all__ = ["__version__", "load"]
