"""Builder-neutral ONNX file I/O: copy, save (external data over 2 GB), cast to fp16, read the
graph's facts for the manifest, and quiet the libraries' logging, for the graphs of either builder
(optimum-onnx's and onnxruntime-genai's).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

MODEL_FILE = "model.onnx"
EXTERNAL_DATA = "model.onnx_data"
TWO_GB = 2**31 - 1


def _model_files(model_file: Path) -> list[Path]:
    """model.onnx and the external data files beside it (optimum's model.onnx_data, the genai
    builder's model.onnx.data)."""
    return [p for p in model_file.parent.iterdir() if p.name.startswith(MODEL_FILE)]


def copy_model(src: Path, out_dir: Path) -> None:
    """Copy model.onnx and its external data files (if any) into out_dir."""
    for item in _model_files(src):
        shutil.copyfile(item, out_dir / item.name)


def has_external_data(model_file: Path) -> bool:
    """Whether model_file keeps weights beside it."""
    return any(p.name != MODEL_FILE for p in _model_files(model_file))


def save_model(model: Any, out_dir: Path) -> Path:
    """Save an onnx.ModelProto as out_dir/model.onnx; weights go to external data over 2 GB."""
    import onnx

    path = out_dir / MODEL_FILE
    weights = sum(len(t.raw_data) for t in model.graph.initializer)
    external = weights > TWO_GB - (64 << 20)  # protobuf's limit, with room for the graph itself
    onnx.save_model(
        model,
        path,
        save_as_external_data=external,
        all_tensors_to_one_file=True,
        location=EXTERNAL_DATA,
        size_threshold=1024,
    )
    return path


def to_fp16(src: Path) -> Any:
    """Load an fp32 model and cast it to fp16 with onnxruntime.transformers' converter; inputs and
    outputs become fp16 too (KV cache and logits), ops without fp16 kernels stay fp32 behind casts."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(src)
    with quiet():
        return convert_float_to_float16(model, keep_io_types=False, disable_shape_infer=True)


def graph_info(path: Path) -> dict[str, Any]:
    """Opset, IR version, custom domains and whether weights lie in external data."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    return {
        "opset": opsets.get("ai.onnx"),
        "ir_version": model.ir_version,
        "domains": opsets,
        "external_data": any(path.parent.glob(MODEL_FILE + "_*")),
        "io_dtype": _io_dtype(model),
    }


def _io_dtype(model: Any) -> str:
    from onnx import TensorProto

    for out in model.graph.output:
        if out.name == "logits":
            return TensorProto.DataType.Name(out.type.tensor_type.elem_type).lower()
    return "unknown"


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the INFO/WARNING chatter of optimum, transformers and onnxruntime.quantization
    (which logs on the root logger) during a step; errors still show."""
    import warnings

    names = ("", "optimum", "transformers", "torch.onnx", "onnxruntime", "neural_compressor")
    levels = {name: logging.getLogger(name).level for name in names}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name in names:
                logging.getLogger(name).setLevel(logging.ERROR)
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
