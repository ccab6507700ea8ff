"""The ONNX formats as data (edgerun.exporters.onnx.formats): the facts the family reads instead
of comparing format names, pinned to what the names used to decide."""

from __future__ import annotations

import pytest

from edgerun.core.errors import EdgerunError
from edgerun.exporters.formats import ExportOptions
from edgerun.exporters.onnx import FAMILY, resolve_symmetric
from edgerun.exporters.onnx.formats import FORMATS, format_of
from edgerun.exporters.onnx.genai import GENAI_FORMATS


def test_formats_in_listing_order_with_their_precisions() -> None:
    assert FAMILY.formats() == ["onnx-fp32", "onnx-fp16", "onnx-int8", "onnx-int4"]
    assert {f.name: f.precision for f in FORMATS.values()} == {
        "onnx-fp32": "fp32",
        "onnx-fp16": "fp16",
        "onnx-int8": "int8",
        "onnx-int4": "int4",
    }


def test_how_each_format_is_made() -> None:
    assert [f.name for f in FORMATS.values() if not f.from_fp32] == ["onnx-fp32"]
    assert [f.name for f in FORMATS.values() if f.cast_fp16] == ["onnx-fp16"]
    assert {f.name: f.bits for f in FORMATS.values() if f.bits} == {"onnx-int8": 8, "onnx-int4": 4}
    assert GENAI_FORMATS == ("onnx-fp32", "onnx-int8", "onnx-int4")
    assert [f.name for f in FORMATS.values() if f.recipes] == ["onnx-int4"]
    assert [f.name for f in FORMATS.values() if f.dynamic("dynamic")] == ["onnx-int8"]
    assert not any(f.dynamic("weight-only") for f in FORMATS.values())


@pytest.mark.parametrize(
    ("fmt", "algorithm", "symmetric"),
    [("onnx-int4", "rtn", False), ("onnx-int8", "rtn", True), ("onnx-int8", "hqq", False)],
)
def test_default_zero_points(fmt: str, algorithm: str, symmetric: bool) -> None:
    assert resolve_symmetric(ExportOptions(algorithm=algorithm), fmt) is symmetric


def test_unknown_format_names_the_onnx_formats() -> None:
    with pytest.raises(EdgerunError, match="unknown ONNX format 'onnx-int2'") as err:
        format_of("onnx-int2")
    assert "onnx-fp32, onnx-fp16, onnx-int8, onnx-int4" in str(err.value.hint)
