"""The export format families by name prefix ("onnx-int4" is the onnx family's), each the module
exposing its FAMILY (edgerun.exporters.formats loads them). Kept in the lean base layer so that
profiles can check format names without importing the exporters. One line per family.
"""

from __future__ import annotations

# family prefix -> module exposing FAMILY
FAMILY_MODULES: dict[str, str] = {
    "onnx": "edgerun.exporters.onnx",
    "gguf": "edgerun.exporters.gguf",
}
