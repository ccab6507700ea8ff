"""The streamed ONNX export: onnxruntime-genai's builder graph, written (and quantized) tensor by
tensor from the memory-mapped checkpoint, never whole in memory and never as an fp32 file.

The builder builds its graph as usual, but from a model whose parameters are the mapped
safetensors (edgerun.exporters.onnx.mapped) instead of the whole model loaded in fp32, and it
does not write it: the graph is handed back, its MatMuls turned into MatMulNBits over weights
quantized when they are written (lazyquant), and written by onnx_ir into one external data file,
one tensor at a time; the checkpoint's pages are dropped between tensors. Peak memory is about
the largest weight in fp32 plus the packed qkv weights the builder concatenates, not the model.

What it does not cover goes the old way (the fp32 graph, then quant on it), and the manifest says
why (`stream_refusal`): the optimum builder, HQQ, dynamic int8, onnx-fp16, weights not in
safetensors.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgerun.exporters.formats import ExportContext
from edgerun.exporters.onnx import genai
from edgerun.exporters.onnx.files import EXTERNAL_DATA, MODEL_FILE
from edgerun.exporters.onnx.formats import OnnxFormat
from edgerun.exporters.onnx.quant import WeightOnlyConfig

if TYPE_CHECKING:  # pragma: no cover
    from edgerun.exporters.importance import Importance

PlanFn = Callable[[list[str]], tuple[dict[str, int] | None, dict[str, Any] | None]]
# the export's importance statistics and their manifest note (copied into the artifact), or None
ImportanceFn = Callable[[], "tuple[Importance, dict[str, Any]] | None"]


def stream_refusal(spec: OnnxFormat, builder: str, algorithm: str, checkpoint: Path) -> str | None:
    """Why the streamed export cannot make `spec` here (None: it can)."""
    from edgerun.exporters.onnx.mapped import weight_files

    if builder != "genai":
        return f"the {builder} builder traces the whole model"
    if not spec.genai:
        return f"{spec.name} is made from optimum's fp32 graph"
    if spec.bits is not None and algorithm != "rtn":
        return f"{algorithm} quantizes the whole fp32 graph (the streamed export is RTN)"
    if weight_files(checkpoint) is None:
        return "the checkpoint's weights are not safetensors"
    return None


def stream_export(
    spec: OnnxFormat,
    ctx: ExportContext,
    out_dir: Path,
    config: WeightOnlyConfig | None,
    plan_fn: PlanFn,
    importance_fn: ImportanceFn = lambda: None,
) -> dict[str, Any] | None:
    """Write out_dir/model.onnx (+ model.onnx_data, genai_config.json) for `spec` straight from
    the mapped checkpoint; return the manifest's `quant` (None for onnx-fp32). The blocks are
    rounded with the importance statistics `importance_fn` gives (after the plan, whose
    calibration may have measured them), as each weight is written."""
    from edgerun.exporters.importance import grams_of
    from edgerun.exporters.onnx.lazyquant import quantize_lazily
    from edgerun.exporters.onnx.mapped import MappedWeights, mapped_model, weight_files
    from edgerun.exporters.onnx.rounding import Tally

    weights = MappedWeights(weight_files(ctx.checkpoint.path) or [])
    build = ctx.scratch / f"genai-stream-{spec.name}"
    stage = f"build ({spec.name} graph, onnxruntime-genai, weights mapped)"
    with (
        ctx.stage(stage),
        _builder_hooks(lambda: mapped_model(ctx.checkpoint.path, weights)) as built,
    ):
        genai.run_builder(ctx, build)
    model = built[0]
    # the pages the builder read stay mapped into this process until released: 172 MB of the
    # Qwen2.5-1.5B shape's checkpoint, counted in every later stage's peak (the calibration's
    # Fisher pass reads the checkpoint through its own handles); they are read again when written
    weights.release()
    quant, found, tally, grams = None, None, None, None
    if config is not None:
        nodes = [n.name for n in model.graph if n.op_type == "MatMul"]
        plan, recipe = plan_fn(nodes)
        found = importance_fn()
        tally = Tally() if found is not None else None
        grams = grams_of(ctx) if found is not None else None  # measured when GPTQ is on
        quant = quantize_lazily(model, config, plan, found and found[0], tally, grams)
        if recipe is not None:
            quant["recipe"] = recipe
    rounding = "importance-weighted" if tally else "rtn"
    rounding = "gptq" if grams is not None else rounding
    what = f"MatMulNBits {config.bits}-bit, {rounding}" if config else "fp32"
    with ctx.stage(f"write ({spec.name}, {what}, tensor by tensor)") as detail:
        write_streamed(model, out_dir, weights.release, detail)
    genai.copy_config(build / MODEL_FILE, out_dir)
    if quant is not None and found is not None and tally is not None:
        quant["importance"] = {**found[1], "rounding": tally.note()}
    return quant


@contextlib.contextmanager
def _builder_hooks(load: Callable[[], Any]) -> Iterator[list[Any]]:
    """While open, the builder loads its weights with `load` and hands its graph back (into the
    yielded list) instead of saving it. The builder has no option for either; its base class is
    patched for the duration and restored (the class the builder module imported: it imports its
    builders as a top-level package `builders`, another module than onnxruntime_genai's)."""
    from onnxruntime_genai.models import builder as builder_module

    base = builder_module
    built: list[Any] = []
    saved = base.Model.load_weights, base.Model.save_model

    def save(builder: Any, out_dir: str) -> None:
        built.append(builder.model)

    base.Model.load_weights = lambda builder, input_path: load()
    base.Model.save_model = save
    try:
        yield built
    finally:
        base.Model.load_weights, base.Model.save_model = saved


def write_streamed(
    model: Any, out_dir: Path, between: Callable[[], None], detail: Callable[[str], None]
) -> Path:
    """Save the onnx_ir model as out_dir/model.onnx with every weight in model.onnx_data, one
    tensor at a time; each lazy tensor is dropped once written; `between` runs before each."""
    import onnx_ir as ir

    for value in model.graph.initializers.values():
        if isinstance(value.const_value, ir.LazyTensor):
            value.const_value = _once(value.const_value)
    model.graph.sort()

    def progress(tensor: Any, info: Any) -> None:
        between()
        if info.index % 16 == 0 or info.index + 1 == info.total:
            detail(f"tensor {info.index + 1}/{info.total}")

    path = out_dir / MODEL_FILE
    ir.save(model, path, external_data=EXTERNAL_DATA, size_threshold_bytes=1024, callback=progress)
    between()
    return path


def _once(lazy: Any) -> Any:
    """A lazy tensor that evaluates `lazy` and forgets it: the builder's lazy casts keep the fp32
    tensor they made, which over every weight would be the whole model in fp32."""
    import onnx_ir as ir

    holder, name = [lazy.raw], lazy.name

    def evaluate() -> Any:
        if not holder:
            raise RuntimeError(f"tensor {name} was read twice")
        return holder.pop()()

    return ir.LazyTensor(evaluate, dtype=lazy.dtype, shape=lazy.shape, name=name)
