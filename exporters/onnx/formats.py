"""The ONNX formats as data: one entry per format, holding the facts the family's code reads
(precision, weight bits, how the format is made from the fp32 graph, which options it takes)
instead of comparing format names.

Every format is made from one fp32 graph (optimum-onnx's or onnxruntime-genai's builder's):
onnx-fp32 is that graph as built, onnx-fp16 that graph cast, onnx-int8 / onnx-int4 that graph
quantized weight-only (MatMulNBits) by edgerun.exporters.onnx.quant.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgerun.core.errors import EdgerunError


@dataclass(frozen=True)
class OnnxFormat:
    """One ONNX export format."""

    name: str
    precision: str  # the manifest's "precision"
    bits: int | None = None  # MatMulNBits weight bits; None: a float format
    cast_fp16: bool = False  # made by onnxruntime's float16 converter (optimum's graph only)
    genai: bool = False  # onnxruntime-genai's builder's fp32 graph can serve it
    # zero points when neither --symmetric nor --asymmetric is given (HQQ is always asymmetric);
    # why int4 defaults to asymmetric: edgerun.exporters.onnx.resolve_symmetric
    symmetric: bool = True
    recipes: bool = False  # takes --recipe / --target-kl / --target-ppl-ratio (mixed int4/int8)
    int8_modes: bool = False  # takes --int8-mode (weight-only MatMulNBits, or dynamic)

    @property
    def from_fp32(self) -> bool:
        """Made from the fp32 graph (cast or quantized), not copied as built."""
        return self.cast_fp16 or self.bits is not None

    def dynamic(self, int8_mode: str) -> bool:
        """Quantized by ORT's quantize_dynamic (MatMulInteger) under this --int8-mode."""
        return self.int8_modes and int8_mode == "dynamic"


# In the order `edgerun export --list` shows them.
FORMATS: dict[str, OnnxFormat] = {
    f.name: f
    for f in (
        OnnxFormat("onnx-fp32", "fp32", genai=True),
        OnnxFormat("onnx-fp16", "fp16", cast_fp16=True),
        OnnxFormat("onnx-int8", "int8", bits=8, genai=True, int8_modes=True),
        OnnxFormat("onnx-int4", "int4", bits=4, genai=True, symmetric=False, recipes=True),
    )
}


def format_of(name: str) -> OnnxFormat:
    """The ONNX format called `name`; EdgerunError listing the ONNX formats otherwise."""
    try:
        return FORMATS[name]
    except KeyError:
        raise EdgerunError(
            f"unknown ONNX format '{name}'", f"available: {', '.join(FORMATS)}"
        ) from None
