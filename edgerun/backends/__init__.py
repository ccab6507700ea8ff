"""Runtime backends (ONNX Runtime, onnxruntime-genai, llama.cpp) behind one interface."""

from __future__ import annotations

from edgerun.backends.base import Artifact, Backend, Settings
from edgerun.backends.registry import backend_names, backends_for, get_backend

__all__ = ["Artifact", "Backend", "Settings", "backend_names", "backends_for", "get_backend"]
