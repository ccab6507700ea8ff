"""`--builder genai`: onnxruntime-genai's model builder (fused attention, rotary and norms) writes
the ONNX graph and the genai_config.json that lets the runtime pick the onnxruntime-genai backend.

Only the text decoders the builder handles on the CPU execution provider are offered: fp32 and int4
(MatMulNBits, RTN, embeddings shared with the lm_head when tied).
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
from pathlib import Path
from typing import Any

from edgerun.exporters.formats import ExportContext

from edgerun.errors import EdgerunError, require

# Architectures (config.json "architectures"[0]) the 0.11 builder turns into a text decoder.
GENAI_ARCHITECTURES = (
    "GemmaForCausalLM",
    "Gemma2ForCausalLM",
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
GENAI_PRECISIONS = {"onnx-fp32": "fp32", "onnx-int4": "int4"}
GENAI_CONFIG = "genai_config.json"


def check_genai(fmt: str) -> None:
    """EdgerunError unless the genai builder is installed and makes `fmt` for the CPU EP."""
    require("onnxruntime_genai", "genai")
    if fmt not in GENAI_PRECISIONS:
        raise EdgerunError(
            f"--builder genai cannot make {fmt} for the CPU execution provider",
            f"use it for {', '.join(GENAI_PRECISIONS)}, or --builder optimum",
        )


def check_architecture(config: dict[str, Any]) -> None:
    """EdgerunError listing the supported architectures when the builder cannot build this one."""
    arch = (config.get("architectures") or ["?"])[0]
    if arch not in GENAI_ARCHITECTURES:
        raise EdgerunError(
            f"onnxruntime-genai's builder does not support {arch}",
            f"supported: {', '.join(GENAI_ARCHITECTURES)}; or use --builder optimum",
        )


def genai_export(fmt: str, ctx: ExportContext, out_dir: Path) -> dict[str, Any]:
    """Build `fmt` with onnxruntime_genai.models.builder.create_model into out_dir."""
    from onnxruntime_genai.models.builder import create_model

    opts = ctx.options
    precision = GENAI_PRECISIONS[fmt]
    tied = bool(ctx.reference.config.get("tie_word_embeddings", False))
    extra: dict[str, Any] = {"hf_remote": False, "hf_token": "false"}
    quant = None
    if precision == "int4":
        extra.update(
            int4_block_size=opts.block_size,
            int4_accuracy_level=opts.accuracy_level,
            int4_is_symmetric=opts.symmetric,
            int4_algo_config="rtn",  # the builder shares tied embeddings only with rtn / k_quant
            shared_embeddings=tied,
        )
        quant = {
            "method": "MatMulNBits",
            "bits": 4,
            "block_size": opts.block_size,
            "symmetric": opts.symmetric,
            "accuracy_level": opts.accuracy_level,
            "algorithm": "rtn",
            "embedding": {"block_size": opts.block_size, "shared_with_lm_head": tied},
            "lm_head": "rtn",
        }
    cache = ctx.scratch / "genai-cache"
    build = ctx.scratch / f"genai-{fmt}"
    shutil.rmtree(build, ignore_errors=True)
    with ctx.stage(f"build ({fmt}, onnxruntime-genai)"), _capture() as log:
        try:
            create_model(
                "model", str(ctx.checkpoint.path), str(build), precision, "cpu", str(cache), **extra
            )
        except Exception as exc:  # the builder raises bare Exceptions and NotImplementedErrors
            tail = (log.getvalue().strip().splitlines() or [str(exc)])[-1]
            raise EdgerunError(
                f"onnxruntime-genai's builder failed on {fmt}: {exc or tail}",
                "use --builder optimum",
            ) from exc
    if precision == "int4" and tied and opts.symmetric:
        _drop_missing_zero_points(build / "model.onnx")
    for item in build.iterdir():
        if item.name.startswith("model.onnx") or item.name == GENAI_CONFIG:
            shutil.move(str(item), out_dir / item.name)
    return {"precision": precision, "quant": quant, "builder": "genai", "model_file": "model.onnx"}


def _drop_missing_zero_points(model_file: Path) -> None:
    """Work around a builder bug (0.11): with symmetric int4 and shared embeddings, its
    GatherBlockQuantized still names `lm_head.MatMul.weight_zp`, which the symmetric lm_head
    quantization never makes, and onnxruntime refuses the graph. zero_points is optional there
    (absent: symmetric, as for MatMulNBits), so the dangling name is dropped."""
    import onnx

    model = onnx.load(str(model_file), load_external_data=False)
    graph = model.graph
    known = {i.name for i in graph.initializer} | {i.name for i in graph.input}
    known |= {o for n in graph.node for o in n.output} | {""}  # "": an omitted optional input
    dangling = [
        node
        for node in graph.node
        if node.op_type == "GatherBlockQuantized"
        and len(node.input) > 3
        and node.input[3] not in known
    ]
    for node in dangling:
        del node.input[3]
    if dangling:
        onnx.save(model, str(model_file))


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
