"""edgerun: take a Hugging Face causal LM to an edge device and tell the truth about how it runs.

Importing this package stays lean: no torch, transformers or optimum. Heavy libraries are imported
inside the functions that need them (export, pull of a GGUF file).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgerun.core.errors import EdgerunError

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    from edgerun.device.resolve import Resolved
    from edgerun.runtime.model import Model


def load(
    path: str | Path,
    profile: str | Path | Resolved | None = None,
    *,
    threads: int | None = None,
    backend: str | None = None,
    context: int | None = None,
    strict: bool = False,
    verify: bool = False,
    **options: Any,
) -> Model:
    """Load an artifact (directory, .gguf or .onnx) and pick its backend from a device profile.

    threads / context override the profile and the model; backend forces one ("onnxruntime",
    "genai", "llamacpp" or a plugin); strict turns a provider fallback into an error; verify
    hashes every file in full; other options go to the backend. Raises EdgerunError. See
    :func:`edgerun.runtime.model.load`.
    """
    from edgerun.runtime.model import load as _load

    return _load(
        path,
        profile=profile,
        threads=threads,
        backend=backend,
        context=context,
        strict=strict,
        verify=verify,
        **options,
    )


__all__ = ["EdgerunError", "__version__", "load"]
