"""HF checkpoint -> ONNX decoder with KV cache through optimum-onnx.

The fp32 export is done once per export call into the scratch directory and reused by every
ONNX format of that call (fp16 and the quantized formats start from it). Saving, copying and
casting the graph are builder-neutral: edgerun.exporters.onnx.files.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from edgerun.core.errors import EdgerunError, require
from edgerun.exporters.formats import ExportContext
from edgerun.exporters.onnx.files import MODEL_FILE, quiet
from edgerun.sources.remote_code import no_remote_code

TASK = "text-generation-with-past"


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
    # A custom config is used as given: optimum's own decoder path adds use_past_in_inputs
    # (optimum.exporters.utils.get_decoder_models_for_export); without it the graph takes no
    # past_key_values and the runtime cannot decode with a cache.
    return {"model": constructor(model.config, use_past_in_inputs=True)}


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
    with (
        ctx.stage("export (optimum, fp32)"),
        quiet(),
        no_remote_code(),
        ctx.reference.whole() as model,
    ):
        onnx_export_from_model(
            model, tmp, task=TASK, do_validation=False, custom_onnx_configs=_custom_configs(model)
        )
    tmp.rename(out)
    return out / MODEL_FILE
