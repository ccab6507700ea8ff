"""HF -> ONNX / GGUF exporters with validation against the reference model.

`export(source, formats, out_dir, **options)` is the library entry point (see pipeline.py);
formats.py holds the format-family registry. Importing this package stays light: no torch.
"""

from __future__ import annotations

from typing import Any

__all__ = ["export", "ExportResult", "ExportOptions", "all_formats"]


def __getattr__(name: str) -> Any:
    if name in ("export", "ExportResult"):
        from edgerun.exporters import pipeline

        return getattr(pipeline, name)
    if name in ("ExportOptions", "all_formats"):
        from edgerun.exporters import formats

        return getattr(formats, name)
    raise AttributeError(name)
