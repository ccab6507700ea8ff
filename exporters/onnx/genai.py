"""`--builder genai`: onnxruntime-genai's model builder (fused attention, rotary and norms) writes
the ONNX graph and the genai_config.json that lets the runtime pick the onnxruntime-genai backend.

The builder makes the fp32 graph; onnx-int8 and onnx-int4 are that graph quantized by edgerun
(quant: MatMulNBits, the embedding shared with the lm_head when tied), the same code and
numbers as for optimum's graph. (The builder's own int4 cannot share a tied embedding with the
MLAS quantizer's symmetric blocks, and its RTN path rounds symmetric scales less well: on
SmolLM2-135M, PPL ratio 1.50 against 1.32.) Only the text decoders the builder handles on the CPU
execution provider are offered.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
from pathlib import Path
from typing import Any

from edgerun.core.errors import EdgerunError, require
from edgerun.exporters.formats import ExportContext
from edgerun.exporters.onnx.files import MODEL_FILE
from edgerun.exporters.onnx.formats import FORMATS
from edgerun.sources.remote_code import no_remote_code

# Architectures (config.json "architectures"[0]) the 0.11 builder turns into a text decoder.
GENAI_ARCHITECTURES = (
    "GemmaForCausalLM",
    "Gemma2ForCausalLM",
    "Gemma3ForCausalLM",
    "GraniteForCausalLM",
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "NemotronForCausalLM",
    "OlmoForCausalLM",
    "PhiForCausalLM",
    "Phi3ForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "SmolLM3ForCausalLM",
)
# The formats made from the builder's fp32 graph: fp32 as built, int8 / int4 quantized by edgerun
# (quant) exactly as it quantizes optimum's graph.
GENAI_FORMATS = tuple(f.name for f in FORMATS.values() if f.genai)
GENAI_CONFIG = "genai_config.json"


def check_genai(fmt: str) -> None:
    """EdgerunError unless the genai builder is installed and its graph serves `fmt`."""
    require("onnxruntime_genai", "genai")
    if fmt not in GENAI_FORMATS:
        raise EdgerunError(
            f"--builder genai does not make {fmt}",
            f"use it for {', '.join(GENAI_FORMATS)}, or --builder optimum",
        )


def check_architecture(config: dict[str, Any]) -> None:
    """EdgerunError listing the supported architectures when the builder cannot build this one."""
    arch = (config.get("architectures") or ["?"])[0]
    if arch not in GENAI_ARCHITECTURES:
        raise EdgerunError(
            f"onnxruntime-genai's builder does not support {arch}",
            f"supported: {', '.join(GENAI_ARCHITECTURES)}; or use --builder optimum",
        )


def genai_fp32(ctx: ExportContext) -> Path:
    """Path of the builder's fp32 model.onnx in scratch (beside its genai_config.json), building
    it on first call. The embedding stays tied to the lm_head when the checkpoint ties them."""
    build = ctx.scratch / "genai-fp32"
    if (build / MODEL_FILE).is_file():
        return build / MODEL_FILE
    tmp = ctx.scratch / "genai-fp32.partial"
    with ctx.stage("build (fp32, onnxruntime-genai)"):
        run_builder(ctx, tmp)
    tmp.rename(build)
    return build / MODEL_FILE


def run_builder(ctx: ExportContext, out: Path) -> None:
    """Run the builder (fp32, CPU) on the checkpoint into `out` (emptied first): the graph, its
    genai_config.json and the tokenizer files. Its output is captured; EdgerunError on failure."""
    from onnxruntime_genai.models.builder import create_model

    from edgerun.exporters.onnx.genai_rope import original_context_fixed

    shutil.rmtree(out, ignore_errors=True)
    cache = ctx.scratch / "genai-cache"
    from edgerun.exporters.extra_options import genai_options

    # --extra-option genai.KEY=VALUE first: what edgerun sets (no remote code, no token) wins
    extra = {**genai_options(ctx.options.extra), "hf_remote": False, "hf_token": "false"}
    with _capture() as log, no_remote_code(), original_context_fixed():
        try:
            create_model(
                "model", str(ctx.checkpoint.path), str(out), "fp32", "cpu", str(cache), **extra
            )
        except (
            EdgerunError
        ):  # a model's own code refused (edgerun.sources.remote_code), or edgerun's
            raise
        except Exception as exc:  # the builder raises bare Exceptions and NotImplementedErrors
            tail = (log.getvalue().strip().splitlines() or [str(exc)])[-1]
            raise EdgerunError(
                f"onnxruntime-genai's builder failed: {exc or tail}", "use --builder optimum"
            ) from exc


def copy_config(fp32: Path, out_dir: Path) -> None:
    """Copy the builder's genai_config.json, which lets the runtime pick the onnxruntime-genai
    backend, from beside the fp32 graph into out_dir."""
    shutil.copyfile(fp32.with_name(GENAI_CONFIG), out_dir / GENAI_CONFIG)


@contextlib.contextmanager
def _capture() -> Any:
    """The builder prints progress (print() and tqdm bars): keep it off the terminal, but keep it
    for error messages. onnx_ir, which the builder uses, logs warnings about intermediate graphs
    (e.g. the shared int4 embedding referenced before it is declared) through handlers that hold
    the original stderr: those go into the same buffer; the finished graph is validated by running it."""
    buffer = io.StringIO()
    ir_logger = logging.getLogger("onnx_ir")
    handler = logging.StreamHandler(buffer)
    propagate = ir_logger.propagate
    ir_logger.addHandler(handler)
    ir_logger.propagate = False
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            yield buffer
    finally:
        ir_logger.removeHandler(handler)
        ir_logger.propagate = propagate
