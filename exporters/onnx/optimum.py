"""HF checkpoint -> ONNX decoder with KV cache through optimum-onnx, plus saving and fp16 casting.

The fp32 export is done once per export call into the scratch directory and reused by every
ONNX format of that call (fp16 and the quantized formats start from it).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from edgerun.exporters.formats import ExportContext

from edgerun.errors import EdgerunError, require

TASK = "text-generation-with-past"
MODEL_FILE = "model.onnx"
EXTERNAL_DATA = "model.onnx_data"
TWO_GB = 2**31 - 1


# Model types optimum-onnx has no ONNX config for, exported with the config of a family whose
# decoder inputs and KV cache are laid out the same way (standard past_key_values per layer,
# position_ids, GQA head counts from the config); tests/test_families.py proves each equal to
# transformers. One line per family.
BORROWED_CONFIGS: dict[str, str] = {
    "starcoder2": "qwen2",
    "exaone4": "qwen3",
    "olmoe": "olmo2",
}


def supported_model_types() -> list[str]:
    """Model types for which optimum-onnx exports `text-generation-with-past` (with the ones
    edgerun exports through a borrowed config)."""
    import optimum.exporters.onnx.model_configs  # noqa: F401  (registers the ONNX configs)
    from optimum.exporters.tasks import TasksManager

    native = set(TasksManager.get_supported_model_type_for_task(TASK, "onnx"))
    return sorted(native | set(BORROWED_CONFIGS))


def _custom_configs(model: Any) -> dict[str, Any] | None:
    """optimum's custom_onnx_configs for a model type in BORROWED_CONFIGS, else None."""
    borrowed = BORROWED_CONFIGS.get(str(model.config.model_type))
    if borrowed is None:
        return None
    from optimum.exporters.tasks import TasksManager

    constructor = TasksManager.get_exporter_config_constructor(
        exporter="onnx", task=TASK, model_type=borrowed, library_name="transformers"
    )
    return {"model": constructor(model.config)}


def check_exportable(model_type: str) -> None:
    """EdgerunError listing the supported model types when optimum cannot export `model_type`."""
    require("optimum.exporters.onnx", "export")
    supported = supported_model_types()
    if model_type not in supported and model_type.replace("_", "-") not in supported:
        raise EdgerunError(
            f"optimum-onnx cannot export model type '{model_type}' as a decoder with KV cache",
            f"supported: {', '.join(supported)}",
        )


def fp32_export(ctx: ExportContext) -> Path:
    """Path of the fp32 decoder-with-past model.onnx in scratch, exporting it on first call."""
    out = ctx.scratch / "optimum-fp32"
    if (out / MODEL_FILE).is_file():
        return out / MODEL_FILE
    require("optimum.exporters.onnx", "export")
    from optimum.exporters.onnx import onnx_export_from_model

    tmp = ctx.scratch / "optimum-fp32.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    with ctx.stage("export (optimum, fp32)"), quiet():
        model = ctx.reference.model
        onnx_export_from_model(
            model, tmp, task=TASK, do_validation=False, custom_onnx_configs=_custom_configs(model)
        )
    tmp.rename(out)
    return out / MODEL_FILE


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
