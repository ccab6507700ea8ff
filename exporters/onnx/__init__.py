"""The ONNX format family: onnx-fp32, onnx-fp16, onnx-int8, onnx-int4.

The fp32 graph comes from optimum-onnx (decoder with KV cache) or, with `--builder genai`, from
onnxruntime-genai's model builder (see genai; fp16 is optimum-only). fp16 is that graph cast
by onnxruntime's float16 converter; int8 / int4 are that graph quantized weight-only to MatMulNBits
(see quant), or, for `--int8-mode dynamic`, ORT's quantize_dynamic (MatMulInteger). What tells
the formats apart is data (formats.FORMATS); builder-neutral file I/O is in files, validation runs
the artifact through runner.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgerun.core.errors import EdgerunError, require
from edgerun.exporters import families
from edgerun.exporters.formats import (
    ALGORITHMS,
    BUILDERS,
    INT4_BLOCK_SIZES,
    INT8_MODES,
    ExportContext,
    ExportOptions,
)
from edgerun.exporters.onnx import files, genai, optimum
from edgerun.exporters.onnx.formats import FORMATS, OnnxFormat, format_of
from edgerun.exporters.onnx.recipes import DEFAULT_RECIPE, get_recipe, plan_summary
from edgerun.exporters.onnx.stream import stream_export, stream_refusal
from edgerun.exporters.validate import LogitsFn

OFFERED_ALGORITHMS = ("rtn", "hqq")
# Importance-weighted rounding of MatMulNBits blocks (statistics gathered layer by layer, blocks
# rounded as the streamed writer reaches them): on SmolLM2-135M the default onnx-int4 went from
# mean KL 0.174 to 0.100 (demo checkpoint) and 0.212 to 0.139 (off-grid reference) at the same
# size and layout (benchmarks/README.md, "Fidelity"); decode 1.04x of RTN's (paired interleaved
# rounds, q4-pure asym), export 1:32 -> 8:59 wall and peak RSS 0.69 -> 1.08 GiB on a loaded
# 2-core machine. Default for 4-bit formats (onnx-int8's is unmeasured: opt-in).
IMATRIX_DEFAULT = True
# GPTQ rounding (edgerun.exporters.onnx.gptq) of the streamed 4-bit export, over the second
# moments the importance pass gathers: on SmolLM2-135M's demo checkpoint the default recipe went
# from mean KL 0.100 to 0.071 at the same 5.84 bits per weight (benchmarks/README.md,
# "Fidelity"); write stage 142 -> 773 s, peak RSS 1.08 -> 2.49 GB on a loaded 2-core machine.
# On the off-grid reference, with the default recipe's byte budget and GPTQ's damping 0.3, the
# default export scored mean KL 0.0725 at 6.25 bits per weight, under gguf-q4_k_m's 0.0831 at
# 6.27 (issue 23). Where the second moments pass importance.GRAM_LIMIT (models past ~0.2B), the
# export rounds by the weighted search alone and the manifest says so.
GPTQ_DEFAULT = True


class OnnxFamily:
    """ONNX artifacts validated through onnxruntime on the CPU execution provider."""

    prefix = "onnx"

    def formats(self) -> list[str]:
        return list(FORMATS)

    def check_options(self, fmt: str, options: ExportOptions) -> None:
        """Raise EdgerunError on an option value that cannot make `fmt` (before any work)."""
        require("onnx", "export")
        if options.builder not in BUILDERS:
            raise EdgerunError(
                f"unknown builder '{options.builder}'", f"use one of {', '.join(BUILDERS)}"
            )
        spec = format_of(fmt)
        if options.builder == "genai":
            genai.check_genai(fmt)
        if spec.bits is not None:
            _check_quant_options(spec, options)
        if spec.recipes:
            _check_recipe_options(options)

    def check_source(self, fmt: str, options: ExportOptions, config: dict[str, Any]) -> None:
        """Raise EdgerunError when the builder cannot export this architecture."""
        families.check_format(config, "onnx")
        if resolve_builder(fmt, options, config) == "genai":
            genai.check_architecture(config)
        elif options.extra.get("genai"):
            raise EdgerunError(
                f"--extra-option genai.* is for onnxruntime-genai's builder, and optimum makes"
                f" {fmt}'s graph for this model",
                "pass --builder genai, or drop the genai.* options",
            )
        else:
            optimum.check_exportable(str(config.get("model_type", "?")))

    def export(self, fmt: str, ctx: ExportContext, out_dir: Path) -> dict[str, Any]:
        """Write out_dir/model.onnx (+ external data) for `fmt`; return the manifest fields.

        The builder makes the fp32 graph; every other format is made from it by the same code."""
        spec = format_of(fmt)
        builder = resolve_builder(fmt, ctx.options, ctx.reference.config)
        refusal = streamed_refusal(spec, builder, ctx.options, ctx.checkpoint.path)
        if refusal is None:
            config = _weight_only_config(spec, ctx.options) if spec.bits else None
            quant = stream_export(
                spec, ctx, out_dir, config, lambda nodes: _plan(spec, nodes, ctx),
                lambda: _importance(ctx, config, out_dir) if config else None,
            )  # fmt: skip
            if quant is not None:
                quant["bits_summary"] = plan_summary(quant["nodes"])
        else:
            quant = self._export_from_fp32(spec, builder, ctx, out_dir)
        fields: dict[str, Any] = {
            "precision": spec.precision,
            "quant": quant,
            "builder": builder,
            "model_file": files.MODEL_FILE,
            "streamed": {"used": refusal is None, "fallback": refusal},
        }
        fields["onnx"] = files.graph_info(out_dir / files.MODEL_FILE)
        fields["libraries"] = _libraries(builder)
        return fields

    def _export_from_fp32(
        self, spec: OnnxFormat, builder: str, ctx: ExportContext, out_dir: Path
    ) -> dict[str, Any] | None:
        """The fp32 graph in scratch (made once per call), then `spec` made from it."""
        if builder == "genai":
            fp32 = genai.genai_fp32(ctx)
            genai.copy_config(fp32, out_dir)
        else:
            fp32 = optimum.fp32_export(ctx)
        if spec.from_fp32:
            return _from_fp32(spec, fp32, out_dir, ctx)
        files.copy_model(fp32, out_dir)
        return None

    def logits_fn(self, artifact_dir: Path, manifest: dict[str, Any]) -> LogitsFn:
        from edgerun.exporters.onnx.runner import onnx_logits_fn

        threads = manifest.get("threads")  # set by the pipeline from --threads during export
        return onnx_logits_fn(Path(artifact_dir) / manifest["model_file"], threads=threads)


def _from_fp32(
    spec: OnnxFormat, fp32: Path, out_dir: Path, ctx: ExportContext
) -> dict[str, Any] | None:
    """Make `spec` (cast or quantized) from the fp32 graph; return the manifest's `quant`."""
    if spec.cast_fp16:
        with ctx.stage("cast to fp16"):
            files.save_model(files.to_fp16(fp32), out_dir)
        return None
    if spec.dynamic(ctx.options.int8_mode):
        return _quantize_dynamic(fp32, out_dir, ctx)
    return _quantize_nbits(spec, fp32, out_dir, ctx)


def _check_recipe_options(options: ExportOptions) -> None:
    """A known recipe, or one positive target (not both); targets search RTN plans."""
    targets = [t for t in (options.target_kl, options.target_ppl_ratio) if t is not None]
    if not targets:
        get_recipe(options.recipe or DEFAULT_RECIPE)
        return
    if len(targets) > 1 or options.recipe is not None:
        raise EdgerunError(
            "give one of --recipe, --target-kl and --target-ppl-ratio",
            "a target chooses the recipe itself",
        )
    if options.target_kl is not None and not 0 < options.target_kl < 10:
        raise EdgerunError(
            f"--target-kl {options.target_kl} is out of range", "use a mean KL such as 0.05"
        )
    if options.target_ppl_ratio is not None and not 1 < options.target_ppl_ratio < 10:
        raise EdgerunError(
            f"--target-ppl-ratio {options.target_ppl_ratio} is out of range",
            "use a ratio above 1, such as 1.05",
        )
    if options.algorithm != "rtn":
        raise EdgerunError(
            f"a quality target searches RTN plans; --algorithm {options.algorithm} is not one",
            "drop --algorithm, or use --recipe",
        )
    if options.no_validate:
        raise EdgerunError(
            "a quality target is checked by validation, which --no-validate skips",
            "drop --no-validate",
        )


def _check_quant_options(spec: OnnxFormat, options: ExportOptions) -> None:
    if options.block_size is not None and options.block_size not in INT4_BLOCK_SIZES:
        raise EdgerunError(
            f"block size {options.block_size} is not a power of two in 16-256",
            f"use one of {', '.join(map(str, INT4_BLOCK_SIZES))}",
        )
    if not 0 <= options.accuracy_level <= 4:
        raise EdgerunError(
            f"accuracy level {options.accuracy_level} is out of range",
            "use 0 (unset) or 1-4 (fp32, fp16, bf16, int8 compute)",
        )
    if options.algorithm not in ALGORITHMS:
        raise EdgerunError(f"unknown algorithm '{options.algorithm}'", "use rtn or hqq")
    if options.algorithm not in OFFERED_ALGORITHMS:
        raise EdgerunError(
            f"algorithm '{options.algorithm}' needs a calibration data reader, which edgerun "
            "does not provide",
            "use rtn (default) or hqq",
        )
    if options.gptq and (options.imatrix is False or options.algorithm != "rtn"):
        raise EdgerunError(
            "--gptq rounds with the importance statistics' second moments (RTN layout)",
            "drop --no-imatrix / --algorithm, or drop --gptq",
        )
    if options.algorithm == "hqq" and options.symmetric is True:
        raise EdgerunError("HQQ quantizes asymmetrically only", "drop --symmetric, or use rtn")
    if spec.bits == 8 and options.algorithm == "hqq" and not spec.dynamic(options.int8_mode):
        raise EdgerunError(
            "HQQ's 8-bit MatMulNBits has float zero points, which onnxruntime's CPU kernel rejects",
            f"use --algorithm rtn for {spec.name}",
        )
    if spec.int8_modes and options.int8_mode not in INT8_MODES:
        raise EdgerunError(
            f"unknown int8 mode '{options.int8_mode}'", f"use one of {', '.join(INT8_MODES)}"
        )


def _quantize_nbits(
    spec: OnnxFormat, fp32: Path, out_dir: Path, ctx: ExportContext
) -> dict[str, Any]:
    import onnx

    from edgerun.exporters.onnx.quant import quantize_weight_only

    config = _weight_only_config(spec, ctx.options)
    # the plan first, from the node names alone: its calibration may hold the PyTorch model,
    # which should not sit beside the loaded graph
    plan, recipe = _plan(spec, _matmul_nodes(fp32), ctx)
    model = onnx.load(fp32)
    name = f", recipe {recipe['name']}" if recipe else ""
    stage = f"quantize ({spec.name}, MatMulNBits {config.bits}-bit, {config.algorithm}{name})"
    importance = _importance(ctx, config, out_dir)
    with ctx.stage(stage) as detail, files.quiet():
        model, quant = quantize_weight_only(model, config, plan, detail)
        if importance is not None:
            quant["importance"] = _reround(model, fp32, *importance, detail)
        files.save_model(model, out_dir)
    if recipe is not None:
        quant["recipe"] = recipe
    quant["bits_summary"] = plan_summary(quant["nodes"])
    return quant


def _weight_only_config(spec: OnnxFormat, opts: ExportOptions) -> Any:
    """The MatMulNBits parameters of a quantized format under these options."""
    from edgerun.exporters.onnx.quant import WeightOnlyConfig

    assert spec.bits is not None  # only quantized formats come here
    return WeightOnlyConfig(
        bits=spec.bits,
        block_size=resolve_block_size(opts, spec),
        symmetric=resolve_symmetric(opts, spec.name),
        accuracy_level=opts.accuracy_level,
        algorithm=opts.algorithm,
    )


def streamed_refusal(
    spec: OnnxFormat, builder: str, options: ExportOptions, checkpoint: Path
) -> str | None:
    """Why `spec` is made the old way (from the fp32 graph) rather than streamed; None: streamed.
    The export and the memory estimate (exporters/memory.py) both ask here."""
    from edgerun.exporters.extra_options import edgerun_flag

    if not edgerun_flag(options.extra, "onnx_stream", True):
        return "streaming turned off (--extra-option edgerun.onnx_stream=false)"
    if spec.dynamic(options.int8_mode):
        return "dynamic int8 (quantize_dynamic) quantizes the whole fp32 graph"
    return stream_refusal(spec, builder, options.algorithm, checkpoint)


def _plan(
    spec: OnnxFormat, nodes: list[str], ctx: ExportContext
) -> tuple[dict[str, int] | None, dict[str, Any] | None]:
    """(node name -> bits, the manifest's recipe record) of a format that takes recipes."""
    if not spec.recipes:
        return None, None
    return _int4_plan(nodes, _weight_only_config(spec, ctx.options), ctx)


def _matmul_nodes(path: Path) -> list[str]:
    """Names of the MatMul nodes of a graph, read without its external weights."""
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type == "MatMul"]


def _int4_plan(
    nodes: list[str], config: Any, ctx: ExportContext
) -> tuple[dict[str, int], dict[str, Any]]:
    """The per-node bits of onnx-int4: the named recipe's, or the target search's."""
    opts = ctx.options
    if opts.target_kl is None and opts.target_ppl_ratio is None:
        recipe = get_recipe(opts.recipe or DEFAULT_RECIPE)
        if recipe.budget is None:
            return recipe.plan(nodes), {"name": recipe.name, "description": recipe.description}
        from edgerun.exporters.onnx.target import budget_plan

        with ctx.stage(f"calibrate (recipe {recipe.name}: per-layer sensitivity)") as detail:
            return budget_plan(ctx, nodes, config, recipe, detail)
    from edgerun.exporters.onnx.target import search_plan

    importance = _statistics(ctx, config)  # before the search: its probes round with them
    with ctx.stage("calibrate (per-layer sensitivity, then the smallest plan for the target)"):
        return search_plan(ctx, nodes, config, importance)


def uses_imatrix(options: ExportOptions, config: Any) -> bool:
    """Whether MatMulNBits blocks get importance-weighted rounding: --imatrix / --no-imatrix,
    else IMATRIX_DEFAULT for 4-bit formats (onnx-int8's is unmeasured); only RTN is re-rounded
    (HQQ has its own search)."""
    if options.imatrix is None:
        return IMATRIX_DEFAULT and config.algorithm == "rtn" and config.bits == 4
    return options.imatrix and config.algorithm == "rtn"


def uses_gptq(options: ExportOptions, config: Any) -> bool:
    """Whether 4-bit MatMulNBits blocks are rounded by GPTQ: --gptq / --no-gptq, else
    GPTQ_DEFAULT; only where the importance statistics are used (it builds on them)."""
    wanted = GPTQ_DEFAULT if options.gptq is None else options.gptq
    return bool(wanted) and config.bits == 4 and uses_imatrix(options, config)


def format_uses_imatrix(fmt: str, options: ExportOptions) -> bool:
    """Whether the ONNX format `fmt` is quantized with the importance statistics."""
    spec = format_of(fmt)
    if spec.bits is None or spec.dynamic(options.int8_mode):
        return False
    return uses_imatrix(options, _weight_only_config(spec, options))


def _statistics(ctx: ExportContext, config: Any) -> Any:
    """The export's importance statistics (with second moments where GPTQ is on), measured
    once and loaded from the scratch directory afterwards; None when unused."""
    if not uses_imatrix(ctx.options, config):
        return None
    from edgerun.exporters.importance import gather

    return gather(ctx, grams=uses_gptq(ctx.options, config))


def _importance(
    ctx: ExportContext, config: Any, out_dir: Path
) -> tuple[Any, dict[str, Any]] | None:
    """(the export's importance statistics, their manifest note; copied into the artifact), or
    None when unused."""
    found = _statistics(ctx, config)
    if found is None:
        return None
    from edgerun.exporters.importance import attach

    return found, attach(ctx, out_dir)


def _reround(
    model: Any, fp32: Path, importance: Any, note: dict[str, Any], detail: Callable[[str], None]
) -> dict[str, Any]:
    """Re-round the MatMulNBits blocks with the importance statistics, showing `reround 3/74`
    as each node's statistics are asked for."""
    from edgerun.exporters.onnx.rounding import reround
    from edgerun.exporters.onnx.weighted import fp32_weights

    total = sum(n.op_type == "MatMulNBits" for n in model.graph.node)
    done = [0]

    def for_node(name: str) -> Any:
        done[0] += 1
        detail(f"reround {done[0]}/{total}")
        return importance.for_node(name)

    return {**note, "rounding": reround(model, fp32_weights(fp32), for_node)}


def _quantize_dynamic(fp32: Path, out_dir: Path, ctx: ExportContext) -> dict[str, Any]:
    """ORT dynamic quantization: int8 MatMulInteger with activations quantized at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with ctx.stage("quantize (onnx-int8, dynamic MatMulInteger)"), files.quiet():
        quantize_dynamic(
            fp32,
            out_dir / files.MODEL_FILE,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
            use_external_data_format=files.has_external_data(fp32),
        )
    return {"method": "dynamic", "bits": 8, "weight_type": "QInt8", "op": "MatMulInteger"}


def resolve_block_size(options: ExportOptions, spec: OnnxFormat) -> int:
    """--block-size, or when not given: the onnx-int4 recipe's block size (a quality target
    searches block-32 plans), else 32."""
    if options.block_size is not None:
        return options.block_size
    targeted = options.target_kl is not None or options.target_ppl_ratio is not None
    if spec.recipes and not targeted:
        return get_recipe(options.recipe or DEFAULT_RECIPE).block_size or 32
    return 32


def resolve_symmetric(options: ExportOptions, fmt: str) -> bool:
    """--symmetric / --asymmetric, or when neither is given: asymmetric for onnx-int4 and for
    HQQ, symmetric for onnx-int8 RTN. On SmolLM2-135M with the default recipe q4-mixed,
    asymmetric blocks (uint8 zero points: still MatMulNBits' integer path) were more faithful on
    both references (mean KL 0.174 / 0.212 against 0.182 / 0.229 symmetric) for 0.15 more bits
    per weight and 3-6% of decode speed (0.95 / 0.92 of all-4-bit symmetric RTN against 0.98 /
    0.98, paired interleaved rounds; benchmarks/README.md, "Fidelity"). For all-4-bit RTN alone
    symmetric had the better PPL ratio (1.32 against 1.40) on the demo checkpoint only."""
    if options.symmetric is not None:
        return options.symmetric
    return options.algorithm != "hqq" and format_of(fmt).symmetric


def resolve_builder(fmt: str, options: ExportOptions, config: dict[str, Any]) -> str:
    """The builder of the fp32 graph `fmt` is made from. "auto" picks onnxruntime-genai's builder
    for onnx-fp32, onnx-int8 and onnx-int4 when it is installed and its graph is proven equal to
    transformers for the family (edgerun.exporters.families, tested per family): its fused graph
    (GroupQueryAttention, rotary, skip-norms) decodes faster at the same validation numbers. On
    SmolLM2-135M, 2 threads, edgerun's loop, medians of 5 interleaved runs: fp32 38.4 against
    25.8 tok/s for optimum's graph (PPL ratio 1.000 both); int8 66.7 against 37.3; int4 9.9 ms
    of onnxruntime time per token against 15.8 ms. fp16 uses optimum."""
    if options.builder != "auto":
        return options.builder
    arch = (config.get("architectures") or ["?"])[0]
    genai_fits = (
        format_of(fmt).genai
        and arch in genai.GENAI_ARCHITECTURES
        and families.genai_proven(config)
        and importlib.util.find_spec("onnxruntime_genai") is not None
    )
    return "genai" if genai_fits else "optimum"


def _libraries(builder: str) -> dict[str, str | None]:
    from edgerun.core.versions import versions

    names = ["onnx", "onnxruntime", "optimum", "optimum-onnx", "torch", "transformers"]
    if builder == "genai":
        names.append("onnxruntime-genai")
    return versions(names)


FAMILY = OnnxFamily()
